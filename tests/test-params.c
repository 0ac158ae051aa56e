/* Unit tests for job parameter validation (daemon/common/params.c): a
 * hand-written table with parameters of every type, required and optional;
 * a valid base request that each test changes one member of; good and bad
 * values of every type (checking the error code, the parameter named and a
 * word of the reason); unknown and missing parameters; limits; malformed
 * tables (-EPROTO); and gh_params_lookup()'s type matching. */
#include <stdarg.h>
#include <stddef.h>
#include <setjmp.h>
#include <cmocka.h>
#include <errno.h>
#include <fcntl.h>
#include <json-c/json.h>
#include <math.h>
#include <stdint.h>
#include <stdio.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <sys/uio.h>
#include <unistd.h>

#include "common/base64.h"
#include "common/params.h"
#include "common/util.h"
#include "fdcount.h"

static const char table_text[] =
        "["
        "{\"name\":\"prompt\",\"type\":\"string\",\"help\":\"h\",\"required\":true,\"max_length\":16},"
        "{\"name\":\"negative\",\"type\":\"string\",\"help\":\"h\",\"required\":false,\"max_length\":8,\"default\":\"\"},"
        "{\"name\":\"steps\",\"type\":\"int\",\"help\":\"h\",\"required\":false,\"min\":1,\"max\":100,\"default\":20},"
        "{\"name\":\"seed\",\"type\":\"int\",\"help\":\"h\",\"required\":true,\"min\":-5,\"max\":9223372036854775807},"
        "{\"name\":\"cfg\",\"type\":\"float\",\"help\":\"h\",\"required\":false,\"min\":0.5,\"max\":30.0,\"default\":7.5},"
        "{\"name\":\"strength\",\"type\":\"float\",\"help\":\"h\",\"required\":false,\"min\":0,\"max\":1,\"default\":1},"
        "{\"name\":\"sampler\",\"type\":\"enum\",\"help\":\"h\",\"required\":false,"
        "\"choices\":[\"euler\",\"euler-a\",\"dpm_2m\"],\"default\":\"euler\"},"
        "{\"name\":\"mode\",\"type\":\"enum\",\"help\":\"h\",\"required\":true,\"choices\":[\"fast\",\"best\"]},"
        "{\"name\":\"tiling\",\"type\":\"bool\",\"help\":\"h\",\"required\":false,\"default\":false},"
        "{\"name\":\"hires\",\"type\":\"bool\",\"help\":\"h\",\"required\":true},"
        "{\"name\":\"model\",\"type\":\"model\",\"help\":\"h\",\"required\":true},"
        "{\"name\":\"vae\",\"type\":\"model\",\"help\":\"h\",\"required\":false},"
        "{\"name\":\"init\",\"type\":\"image\",\"help\":\"h\",\"required\":false},"
        "{\"name\":\"mask\",\"type\":\"image\",\"help\":\"h\",\"required\":true}"
        "]";
#define TABLE_SIZE 14

/* Every required parameter, valid; one fd. */
static const char base_text[] =
        "{\"prompt\":\"a cat\",\"seed\":1,\"mode\":\"fast\",\"hires\":true,\"model\":\"sd15\","
        "\"mask\":{\"fd\":0,\"width\":64,\"height\":64,\"format\":\"rgb8\"}}";

static json_object *table;
static char param[128], reason[512];

static json_object *parse(const char *text) {
        json_object *o = json_tokener_parse(text);

        if (strcmp(text, "null") != 0)
                assert_non_null(o);
        return o;
}

static void assert_reason(const char *substr) {
        if (!strstr(reason, substr))
                fail_msg("reason \"%s\" does not mention \"%s\"", reason, substr);
}

/* The fds and memfds of the last validation (closed by the next one). */
static gh_params_images images;

static int validate_fds(json_object *t, json_object *req, const int *fds, size_t n_fds, json_object **ret) {
        gh_params_images_close(&images);
        images = (gh_params_images) {.fds = fds, .n_fds = n_fds};
        strcpy(param, "(unset)");
        strcpy(reason, "(unset)");
        return gh_params_validate(t, req, &images, ret, param, sizeof(param), reason, sizeof(reason));
}

/* |n_fds| fds of which only the number is known. */
static int validate_with(json_object *t, json_object *req, size_t n_fds, json_object **ret) {
        return validate_fds(t, req, NULL, n_fds, ret);
}

static int validate(json_object *req, size_t n_fds, json_object **ret) {
        return validate_with(table, req, n_fds, ret);
}

/* The base request with |name| set to |value| (taken; may be NULL for a
 * JSON null). */
static json_object *request_with(const char *name, json_object *value) {
        json_object *req = parse(base_text);

        json_object_object_add(req, name, value);
        return req;
}

static void expect_bad_obj(const char *name, json_object *value, size_t n_fds, const char *substr) {
        json_object *req = request_with(name, value), *n = NULL;

        assert_int_equal(validate(req, n_fds, &n), -EINVAL);
        assert_null(n);
        assert_string_equal(param, name);
        assert_reason(substr);
        json_object_put(req);
}

static void expect_bad(const char *name, const char *value, const char *substr) {
        expect_bad_obj(name, parse(value), 1, substr);
}

/* Validates the base request with |name| = |value|; returns the normalized
 * object (the caller puts it) and its member |name| in *ret. */
static json_object *expect_good_obj(const char *name, json_object *value, size_t n_fds, json_object **ret) {
        json_object *req = request_with(name, value), *n = NULL;

        if (validate(req, n_fds, &n) != 0)
                fail_msg("%s: %s", param, reason);
        assert_non_null(n);
        assert_int_equal(json_object_object_length(n), TABLE_SIZE);
        assert_true(json_object_object_get_ex(n, name, ret));
        json_object_put(req);
        return n;
}

static json_object *expect_good(const char *name, const char *value, json_object **ret) {
        return expect_good_obj(name, parse(value), 1, ret);
}

static int setup(void **state) {
        table = json_tokener_parse(table_text);
        return table ? 0 : -1;
}

static int teardown(void **state) {
        gh_params_images_close(&images);
        json_object_put(table);
        return 0;
}

/* ---- good requests ---- */

static void test_defaults(void **state) {
        json_object *req = parse(base_text), *n = NULL, *v;

        assert_int_equal(validate(req, 1, &n), 0);
        assert_int_equal(json_object_object_length(n), TABLE_SIZE);
        /* In table order. */
        const char *order[TABLE_SIZE] = {"prompt", "negative", "steps", "seed", "cfg", "strength", "sampler",
                                         "mode", "tiling", "hires", "model", "vae", "init", "mask"};
        size_t i = 0;
        json_object_object_foreach(n, key, val)
                assert_string_equal(key, order[i++]);

        assert_string_equal(json_object_get_string(json_object_object_get(n, "prompt")), "a cat");
        assert_string_equal(json_object_get_string(json_object_object_get(n, "negative")), "");
        v = json_object_object_get(n, "steps");
        assert_true(json_object_is_type(v, json_type_int));
        assert_int_equal(json_object_get_int64(v), 20);
        v = json_object_object_get(n, "cfg");
        assert_true(json_object_is_type(v, json_type_double));
        assert_true(json_object_get_double(v) == 7.5);
        v = json_object_object_get(n, "strength"); /* an int default becomes a double */
        assert_true(json_object_is_type(v, json_type_double));
        assert_true(json_object_get_double(v) == 1.0);
        assert_string_equal(json_object_get_string(json_object_object_get(n, "sampler")), "euler");
        assert_true(json_object_is_type(json_object_object_get(n, "tiling"), json_type_boolean));
        assert_false(json_object_get_boolean(json_object_object_get(n, "tiling")));
        assert_true(json_object_get_boolean(json_object_object_get(n, "hires")));
        /* Optional images and models without a value are null. */
        assert_true(json_object_object_get_ex(n, "vae", &v));
        assert_null(v);
        assert_true(json_object_object_get_ex(n, "init", &v));
        assert_null(v);
        /* The image is copied, not shared with the request. */
        v = json_object_object_get(n, "mask");
        assert_true(v != json_object_object_get(req, "mask"));
        assert_true(json_object_equal(v, json_object_object_get(req, "mask")));
        json_object_put(req);
        json_object_put(n);
}

static void test_good_values(void **state) {
        json_object *n, *v;
        char m[GH_MODEL_NAME_MAX], buf[GH_MODEL_NAME_MAX + 3];

        n = expect_good("steps", "1", &v);
        assert_int_equal(json_object_get_int64(v), 1);
        json_object_put(n);
        n = expect_good("steps", "100", &v);
        assert_int_equal(json_object_get_int64(v), 100);
        json_object_put(n);
        n = expect_good("seed", "-5", &v);
        assert_int_equal(json_object_get_int64(v), -5);
        json_object_put(n);
        n = expect_good("seed", "9223372036854775807", &v);
        assert_true(json_object_get_int64(v) == INT64_MAX);
        json_object_put(n);

        n = expect_good("cfg", "0.5", &v);
        assert_true(json_object_get_double(v) == 0.5);
        json_object_put(n);
        n = expect_good("cfg", "30", &v); /* an integer for a float */
        assert_true(json_object_is_type(v, json_type_double));
        assert_true(json_object_get_double(v) == 30.0);
        json_object_put(n);
        n = expect_good("strength", "0", &v);
        assert_true(json_object_is_type(v, json_type_double) && json_object_get_double(v) == 0.0);
        json_object_put(n);

        n = expect_good("prompt", "\"0123456789abcdef\"", &v); /* 16 bytes: max_length */
        assert_int_equal(json_object_get_string_len(v), 16);
        json_object_put(n);
        n = expect_good("prompt", "\"h\\u00e9llo \\ud83d\\ude00\"", &v); /* UTF-8, 11 bytes */
        assert_string_equal(json_object_get_string(v), "h\xc3\xa9llo \xf0\x9f\x98\x80");
        json_object_put(n);
        n = expect_good("negative", "\"\"", &v);
        assert_string_equal(json_object_get_string(v), "");
        json_object_put(n);

        n = expect_good("sampler", "\"euler-a\"", &v);
        assert_string_equal(json_object_get_string(v), "euler-a");
        json_object_put(n);
        n = expect_good("mode", "\"best\"", &v);
        assert_string_equal(json_object_get_string(v), "best");
        json_object_put(n);

        n = expect_good("tiling", "true", &v);
        assert_true(json_object_get_boolean(v));
        json_object_put(n);
        n = expect_good("hires", "false", &v);
        assert_false(json_object_get_boolean(v));
        json_object_put(n);

        n = expect_good("model", "\"SD-1.5_x\"", &v);
        assert_string_equal(json_object_get_string(v), "SD-1.5_x");
        json_object_put(n);
        memset(m, 'v', sizeof(m));
        snprintf(buf, sizeof(buf), "\"%.*s\"", GH_MODEL_NAME_MAX, m);
        n = expect_good("vae", buf, &v);
        assert_int_equal(json_object_get_string_len(v), GH_MODEL_NAME_MAX);
        json_object_put(n);

        n = expect_good_obj("init", parse("{\"format\":\"rgba8\",\"height\":1,\"width\":16384,\"fd\":1}"), 2, &v);
        assert_int_equal(json_object_get_int64(json_object_object_get(v, "fd")), 1);
        assert_int_equal(json_object_get_int64(json_object_object_get(v, "width")), 16384);
        assert_int_equal(json_object_get_int64(json_object_object_get(v, "height")), 1);
        assert_string_equal(json_object_get_string(json_object_object_get(v, "format")), "rgba8");
        assert_int_equal(json_object_object_length(v), 4);
        json_object_put(n);
}

/* ---- bad values ---- */

static void test_bad_int(void **state) {
        expect_bad("steps", "\"5\"", "expected an integer");
        expect_bad("steps", "5.0", "expected an integer");
        expect_bad("steps", "5.5", "expected an integer");
        expect_bad("steps", "true", "expected an integer");
        expect_bad("steps", "null", "expected an integer");
        expect_bad("steps", "[5]", "expected an integer");
        expect_bad("steps", "0", "out of range 1..100");
        expect_bad("steps", "101", "out of range 1..100");
        expect_bad("steps", "-9223372036854775808", "out of range");
        expect_bad("seed", "-6", "out of range -5..9223372036854775807");
        expect_bad("seed", "9223372036854775808", "out of range");
        expect_bad("seed", "18446744073709551615", "out of range");
        expect_bad("seed", "1e3", "expected an integer");
}

static void test_bad_float(void **state) {
        expect_bad("cfg", "\"7\"", "expected a number");
        expect_bad("cfg", "true", "expected a number");
        expect_bad("cfg", "null", "expected a number");
        expect_bad("cfg", "{}", "expected a number");
        expect_bad("cfg", "0.49", "out of range");
        expect_bad("cfg", "30.000001", "out of range");
        expect_bad("cfg", "0", "out of range");
        expect_bad("strength", "-1e-300", "out of range");
        expect_bad_obj("cfg", json_object_new_double(NAN), 1, "finite");
        expect_bad_obj("cfg", json_object_new_double(INFINITY), 1, "finite");
        expect_bad_obj("cfg", json_object_new_double(-INFINITY), 1, "finite");
}

static void test_bad_string(void **state) {
        expect_bad("prompt", "\"0123456789abcdefg\"", "17 bytes");
        expect_bad("negative", "\"\\u00e9\\u00e9\\u00e9\\u00e9\\u00e9\"", "longer than the 8"); /* 10 bytes */
        expect_bad("prompt", "123", "expected a string");
        expect_bad("prompt", "null", "expected a string");
        expect_bad("prompt", "[\"a\"]", "expected a string");
        expect_bad("prompt", "\"a\\u0000b\"", "NUL");
        expect_bad("prompt", "\"\\u0000\"", "NUL");
        /* Bytes json-c takes without JSON_TOKENER_VALIDATE_UTF8. */
        expect_bad_obj("prompt", json_object_new_string_len("\xff", 1), 1, "UTF-8");
        expect_bad_obj("prompt", json_object_new_string_len("\xc0\xaf", 2), 1, "UTF-8");     /* overlong */
        expect_bad_obj("prompt", json_object_new_string_len("\xed\xa0\x80", 3), 1, "UTF-8"); /* surrogate */
        expect_bad_obj("prompt", json_object_new_string_len("a\xe2\x82", 3), 1, "UTF-8");    /* cut short */
        expect_bad_obj("prompt", json_object_new_string_len("\xf4\x90\x80\x80", 4), 1, "UTF-8"); /* > U+10FFFF */
}

static void test_bad_enum(void **state) {
        expect_bad("sampler", "\"Euler\"", "not one of: euler, euler-a, dpm_2m");
        expect_bad("sampler", "\"\"", "not one of");
        expect_bad("mode", "\"fast \"", "not one of: fast, best");
        expect_bad("mode", "1", "expected a string, one of: fast, best");
        expect_bad("mode", "null", "expected a string");
        expect_bad("mode", "\"fast\\u0000x\"", "NUL");
        /* Request text in the reason is escaped. */
        expect_bad("mode", "\"a\\nb\\\"c\"", "\"a\\x0ab\\\"c\"");
}

static void test_bad_bool(void **state) {
        expect_bad("tiling", "1", "expected a boolean");
        expect_bad("tiling", "0", "expected a boolean");
        expect_bad("tiling", "\"true\"", "expected a boolean");
        expect_bad("hires", "null", "expected a boolean");
}

static void test_bad_model(void **state) {
        char m[300], name[310];

        expect_bad("model", "\"../x\"", "not a valid model name");
        expect_bad("model", "\".hidden\"", "not a valid model name");
        expect_bad("model", "\"-rf\"", "not a valid model name");
        expect_bad("model", "\"\"", "not a valid model name");
        expect_bad("model", "\"a/b\"", "not a valid model name");
        expect_bad("vae", "\"a b\"", "not a valid model name");
        expect_bad("vae", "\"caf\\u00e9\"", "not a valid model name");
        expect_bad("vae", "\"sd\\u0000x\"", "NUL");
        expect_bad("model", "5", "expected a model name");
        expect_bad("vae", "null", "expected a model name");
        memset(m, 'm', sizeof(m));
        snprintf(name, sizeof(name), "\"%.*s\"", GH_MODEL_NAME_MAX + 1, m);
        expect_bad("model", name, "not a valid model name");
        snprintf(name, sizeof(name), "\"%.*s\"", 256, m);
        expect_bad("model", name, "not a valid model name");
}

static void test_model_name_rule(void **state) {
        assert_true(gh_model_name_valid("sd15", 4));
        assert_true(gh_model_name_valid("a.b-c_D9", 8));
        assert_true(gh_model_name_valid("x..", 3));
        assert_false(gh_model_name_valid("..", 2));
        assert_false(gh_model_name_valid(".x", 2));
        assert_false(gh_model_name_valid("-x", 2));
        assert_false(gh_model_name_valid("", 0));
        assert_false(gh_model_name_valid(NULL, 0));
        assert_false(gh_model_name_valid("a\0b", 3));
        assert_false(gh_model_name_valid("a+b", 3));
}

static void image_text(char *buf, size_t size, const char *fd, const char *width, const char *height,
                       const char *format) {
        snprintf(buf, size, "{\"fd\":%s,\"width\":%s,\"height\":%s,\"format\":%s}", fd, width, height, format);
}

static void test_bad_image(void **state) {
        char v[256];

        image_text(v, sizeof(v), "1", "64", "64", "\"rgb8\"");
        expect_bad("mask", v, "\"fd\"");
        expect_bad_obj("init", parse(v), 1, "(1 sent)");
        image_text(v, sizeof(v), "0", "64", "64", "\"rgb8\"");
        expect_bad_obj("mask", parse(v), 0, "(0 sent)");
        image_text(v, sizeof(v), "-1", "64", "64", "\"rgb8\"");
        expect_bad("mask", v, "\"fd\"");
        image_text(v, sizeof(v), "\"0\"", "64", "64", "\"rgb8\"");
        expect_bad("mask", v, "\"fd\"");
        image_text(v, sizeof(v), "0", "0", "64", "\"rgb8\"");
        expect_bad("mask", v, "\"width\" must be an integer 1..16384");
        image_text(v, sizeof(v), "0", "16385", "64", "\"rgb8\"");
        expect_bad("mask", v, "\"width\" must be an integer 1..16384");
        image_text(v, sizeof(v), "0", "64.0", "64", "\"rgb8\"");
        expect_bad("mask", v, "\"width\"");
        image_text(v, sizeof(v), "0", "64", "0", "\"rgb8\"");
        expect_bad("mask", v, "\"height\"");
        image_text(v, sizeof(v), "0", "64", "16385", "\"rgb8\"");
        expect_bad("mask", v, "\"height\"");
        image_text(v, sizeof(v), "0", "64", "64", "\"bgr8\"");
        expect_bad("mask", v, "\"format\" must be \"rgb8\", \"rgba8\" or \"png\"");
        image_text(v, sizeof(v), "0", "64", "64", "\"rgb8\\u0000\"");
        expect_bad("mask", v, "\"format\"");
        image_text(v, sizeof(v), "0", "64", "64", "3");
        expect_bad("mask", v, "\"format\"");
        image_text(v, sizeof(v), "0", "64", "64", "null");
        expect_bad("mask", v, "\"format\"");

        expect_bad("mask", "{\"width\":64,\"height\":64,\"format\":\"rgb8\"}", "no \"fd\"");
        expect_bad("mask", "{\"fd\":0,\"height\":64,\"format\":\"rgb8\"}", "no \"width\"");
        expect_bad("mask", "{\"fd\":0,\"width\":64,\"format\":\"rgb8\"}", "no \"height\"");
        expect_bad("mask", "{\"fd\":0,\"width\":64,\"height\":64}", "\"format\"");
        expect_bad("mask", "{\"fd\":0,\"width\":64,\"height\":64,\"format\":\"rgb8\",\"depth\":8}",
                   "unknown image key \"depth\"");
        expect_bad("mask", "{}", "no \"fd\"");
        expect_bad("mask", "\"/tmp/x.png\"", "expected an image");
        expect_bad("mask", "0", "expected an image");
        expect_bad("mask", "null", "expected an image");
        expect_bad("init", "[0,64,64,\"rgb8\"]", "expected an image");
}

/* ---- images sent inline, PNG files ---- */

/* |n| bytes as a JSON string of base64 (a new object). */
static json_object *base64_of(const void *bytes, size_t n) {
        char *text = malloc(gh_base64_encoded_len(n) + 1);

        assert_non_null(text);
        gh_base64_encode(bytes, n, text);
        json_object *o = json_object_new_string(text);
        free(text);
        return o;
}

static uint32_t crc32_of(const uint8_t *p, size_t n) {
        uint32_t c = 0xffffffffu;

        for (size_t i = 0; i < n; i++) {
                c ^= p[i];
                for (int k = 0; k < 8; k++)
                        c = c & 1 ? 0xedb88320u ^ (c >> 1) : c >> 1;
        }
        return c ^ 0xffffffffu;
}

static void put_be32(uint8_t *p, uint32_t v) {
        p[0] = (uint8_t) (v >> 24);
        p[1] = (uint8_t) (v >> 16);
        p[2] = (uint8_t) (v >> 8);
        p[3] = (uint8_t) v;
}

/* The first bytes of a PNG file: signature and IHDR (with its CRC), then
 * |extra| bytes of an IDAT chunk the daemon does not read. Returns the
 * length written to |buf| (64 bytes). */
static size_t png_head(uint8_t *buf, uint32_t width, uint32_t height, uint8_t depth, uint8_t color_type,
                       uint8_t interlace, size_t extra) {
        static const uint8_t sig[8] = {0x89, 'P', 'N', 'G', '\r', '\n', 0x1a, '\n'};

        memcpy(buf, sig, 8);
        put_be32(buf + 8, 13);
        memcpy(buf + 12, "IHDR", 4);
        put_be32(buf + 16, width);
        put_be32(buf + 20, height);
        buf[24] = depth;
        buf[25] = color_type;
        buf[26] = buf[27] = 0;
        buf[28] = interlace;
        put_be32(buf + 29, crc32_of(buf + 12, 17));
        memcpy(buf + 33, "\0\0\0\0IDAT", 8);
        memset(buf + 41, 0x5a, extra > 23 ? 23 : extra);
        return 33 + (extra > 31 ? 31 : extra);
}

static json_object *image_obj(const char *key, json_object *source, int64_t width, int64_t height,
                              const char *format) {
        json_object *o = json_object_new_object();

        json_object_object_add(o, key, source);
        if (width)
                json_object_object_add(o, "width", json_object_new_int64(width));
        if (height)
                json_object_object_add(o, "height", json_object_new_int64(height));
        if (format)
                json_object_object_add(o, "format", json_object_new_string(format));
        return o;
}

/* The inline PNG whose head png_head() writes, as the "mask" of the base
 * request; expects a -EINVAL naming "mask" with |substr|, and no memfd
 * left. */
static void expect_bad_png(const uint8_t *png, size_t n, int64_t width, int64_t height, const char *substr) {
        gh_params_images_close(&images);
        int before = gh_test_count_open_fds();

        expect_bad_obj("mask", image_obj("data", base64_of(png, n), width, height, "png"), 1, substr);
        assert_int_equal(images.n_made, 0);
        assert_int_equal(gh_test_count_open_fds(), before);
}

/* |fd| is a sealed memfd, close-on-exec, holding exactly |bytes|. */
static void assert_memfd_holds(int fd, const void *bytes, size_t n) {
        uint8_t got[128];
        struct stat st;

        assert_true(n <= sizeof(got));
        assert_int_equal(fstat(fd, &st), 0);
        assert_int_equal(st.st_size, n);
        assert_int_equal(fcntl(fd, F_GET_SEALS), F_SEAL_SHRINK | F_SEAL_GROW | F_SEAL_WRITE | F_SEAL_SEAL);
        assert_true(fcntl(fd, F_GETFD) & FD_CLOEXEC);
        assert_int_equal(pread(fd, got, sizeof(got), 0), (ssize_t) n);
        assert_memory_equal(got, bytes, n);
}

static void test_inline_raw(void **state) {
        uint8_t px[16];
        json_object *n, *v;

        for (size_t i = 0; i < sizeof(px); i++)
                px[i] = (uint8_t) (i * 37 + 1);
        /* The memfds come after the request's fds: here one was sent. */
        n = expect_good_obj("mask", image_obj("data", base64_of(px, 12), 2, 2, "rgb8"), 1, &v);
        assert_string_equal(json_object_to_json_string_ext(v, JSON_C_TO_STRING_PLAIN),
                            "{\"fd\":1,\"width\":2,\"height\":2,\"format\":\"rgb8\"}");
        assert_int_equal(images.n_made, 1);
        assert_memfd_holds(images.made[0], px, 12);
        json_object_put(n);
        /* Two of them, rgba8, none sent with the request. */
        json_object *req = request_with("mask", image_obj("data", base64_of(px, 16), 1, 4, "rgba8"));
        json_object_object_add(req, "init", image_obj("data", base64_of(px, 3), 1, 1, "rgb8"));
        assert_int_equal(validate(req, 0, &n), 0);
        assert_int_equal(images.n_made, 2);
        assert_int_equal(json_object_get_int(json_object_object_get(json_object_object_get(n, "init"), "fd")), 0);
        assert_int_equal(json_object_get_int(json_object_object_get(json_object_object_get(n, "mask"), "fd")), 1);
        assert_memfd_holds(images.made[0], px, 3);
        assert_memfd_holds(images.made[1], px, 16);
        json_object_put(req);
        json_object_put(n);
        /* Without a place for them, they are checked and dropped. */
        int before = gh_test_count_open_fds();
        req = request_with("mask", image_obj("data", base64_of(px, 3), 1, 1, "rgb8"));
        assert_int_equal(gh_params_validate(table, req, NULL, &n, NULL, 0, NULL, 0), 0);
        assert_int_equal(json_object_get_int(json_object_object_get(json_object_object_get(n, "mask"), "fd")), 0);
        assert_int_equal(gh_test_count_open_fds(), before);
        json_object_put(req);
        json_object_put(n);
}

static void test_inline_png(void **state) {
        static const struct {
                uint8_t depth, color_type, interlace;
                const char *format;
        } kinds[] = {
                {8, 2, 0, "rgb8"},  {16, 2, 1, "rgb8"},  {8, 6, 0, "rgba8"}, {16, 6, 0, "rgba8"}, {1, 0, 0, "rgb8"},
                {16, 0, 1, "rgb8"}, {8, 4, 0, "rgba8"}, {4, 3, 1, "rgb8"},  {8, 3, 0, "rgb8"},
        };
        uint8_t png[64];
        char want[256];
        json_object *n, *v;

        for (size_t i = 0; i < ELEMENTSOF(kinds); i++) {
                size_t len = png_head(png, 3, 5, kinds[i].depth, kinds[i].color_type, kinds[i].interlace, 20);
                n = expect_good_obj("mask", image_obj("data", base64_of(png, len), 0, 0, "png"), 1, &v);
                snprintf(want, sizeof(want),
                         "{\"fd\":1,\"width\":3,\"height\":5,\"format\":\"%s\",\"encoding\":\"png\",\"bytes\":%zu}",
                         kinds[i].format, len);
                assert_string_equal(json_object_to_json_string_ext(v, JSON_C_TO_STRING_PLAIN), want);
                assert_int_equal(images.n_made, 1);
                assert_memfd_holds(images.made[0], png, len);
                json_object_put(n);
        }
        /* A width and a height that match. */
        size_t len = png_head(png, 16384, 1, 8, 6, 0, 0);
        n = expect_good_obj("mask", image_obj("data", base64_of(png, len), 16384, 1, "png"), 1, &v);
        assert_int_equal(json_object_get_int(json_object_object_get(v, "width")), 16384);
        json_object_put(n);
        n = expect_good_obj("mask", image_obj("data", base64_of(png, len), 0, 1, "png"), 1, &v);
        json_object_put(n);
}

/* Whether the start of |fd| can be read without waiting (as the daemon
 * reads a PNG's head from a file that is not a memfd). */
static bool readable_now(int fd) {
        char c;

        return preadv2(fd, &(struct iovec) {&c, 1}, 1, 0, RWF_NOWAIT) == 1;
}

static void test_png_fd(void **state) {
        uint8_t png[64];
        size_t len = png_head(png, 640, 480, 8, 2, 0, 31);
        char path[] = "/tmp/test-params-XXXXXX";
        int fds[4], pipe_fds[2];
        json_object *n, *v;

        fds[0] = memfd_create("png", MFD_CLOEXEC);
        assert_int_equal(write(fds[0], png, len), (ssize_t) len);
        fds[1] = mkostemp(path, O_CLOEXEC); /* just written: in the page cache */
        assert_true(fds[1] >= 0);
        unlink(path);
        assert_int_equal(write(fds[1], png, len), (ssize_t) len);
        assert_int_equal(pipe2(pipe_fds, O_CLOEXEC), 0);
        fds[2] = pipe_fds[0];
        fds[3] = memfd_create("short", MFD_CLOEXEC);
        assert_int_equal(write(fds[3], png, 20), 20);

        for (int i = 0; i < 2; i++) {
                json_object *req = request_with("mask", image_obj("fd", json_object_new_int(i), 0, 0, "png"));
                int r = validate_fds(table, req, fds, 4, &n);
                if (r < 0 && i == 1 && !readable_now(fds[1])) { /* a file system without RWF_NOWAIT */
                        assert_reason("not in memory, and gpuhostd does not wait on a disk");
                        json_object_put(req);
                        continue;
                }
                if (r != 0)
                        fail_msg("fd %d: %s: %s", i, param, reason);
                v = json_object_object_get(n, "mask");
                char want[128];
                snprintf(want, sizeof(want),
                         "{\"fd\":%d,\"width\":640,\"height\":480,\"format\":\"rgb8\",\"encoding\":\"png\",\"bytes\":%zu}",
                         i, len);
                assert_string_equal(json_object_to_json_string_ext(v, JSON_C_TO_STRING_PLAIN), want);
                assert_int_equal(images.n_made, 0);
                json_object_put(req);
                json_object_put(n);
        }
        static const struct {
                int fd;
                int64_t width, height;
                const char *reason;
        } bad[] = {
                {2, 0, 0, "not a regular file or a memfd"},
                {3, 0, 0, "20 bytes, too short to be a PNG file"},
                {0, 640, 481, "the PNG is 640x480, not the 640x481 given"},
                {1, 641, 0, "the PNG is 640x480, not the 641x480 given"},
                {4, 0, 0, "\"fd\" must be the index of an fd sent with the request (4 sent)"},
        };
        for (size_t i = 0; i < ELEMENTSOF(bad); i++) {
                json_object *req = request_with("mask", image_obj("fd", json_object_new_int(bad[i].fd), bad[i].width,
                                                                  bad[i].height, "png"));
                n = NULL;
                assert_int_equal(validate_fds(table, req, fds, 4, &n), -EINVAL);
                assert_null(n);
                assert_string_equal(param, "mask");
                assert_reason(bad[i].reason);
                json_object_put(req);
        }
        /* Only the number of fds is known: a PNG in one cannot be read. */
        expect_bad_obj("mask", image_obj("fd", json_object_new_int(0), 0, 0, "png"), 1, "cannot be read here");
        gh_close_many(fds, 4);
        close(pipe_fds[1]);
}

static void test_bad_inline(void **state) {
        uint8_t png[64], px[12] = {0};
        size_t len;

        /* Malformed base64: a bad character, a bad length, padding in the
         * middle, bits left over, not a string, empty. */
        expect_bad_obj("mask", image_obj("data", json_object_new_string("AAA*AAAA"), 2, 1, "rgb8"), 1,
                       "not base64 (at character 3)");
        expect_bad_obj("mask", image_obj("data", json_object_new_string("AAAAA"), 0, 0, "png"), 1,
                       "not base64 (its length or padding is wrong)");
        expect_bad_obj("mask", image_obj("data", json_object_new_string("AA==AAAA"), 2, 1, "rgb8"), 1, "not base64");
        expect_bad_obj("mask", image_obj("data", json_object_new_string("AAAAAA=A"), 0, 0, "png"), 1, "not base64 (at character 6)");
        expect_bad_obj("mask", image_obj("data", json_object_new_string("AAAAAB=="), 0, 0, "png"), 1, "not base64");
        expect_bad_obj("mask", image_obj("data", json_object_new_string("AAAAAAB="), 0, 0, "png"), 1, "not base64");
        expect_bad_obj("mask", image_obj("data", json_object_new_string("AAAA AAA"), 2, 1, "rgb8"), 1, "not base64");
        expect_bad_obj("mask", image_obj("data", json_object_new_int(5), 2, 1, "rgb8"), 1,
                       "\"data\" must be a string of base64, not an integer");
        expect_bad_obj("mask", image_obj("data", json_object_new_string(""), 0, 0, "png"), 1, "\"data\" is empty");
        /* The wrong size for raw pixels. */
        expect_bad_obj("mask", image_obj("data", base64_of(px, 11), 2, 2, "rgb8"), 1,
                       "\"data\" holds 11 bytes; a 2x2 rgb8 image is 12");
        expect_bad_obj("mask", image_obj("data", base64_of(px, 12), 2, 2, "rgba8"), 1, "a 2x2 rgba8 image is 16");
        expect_bad_obj("mask", image_obj("data", base64_of(px, 12), 0, 2, "rgb8"), 1, "no \"width\"");
        expect_bad_obj("mask", image_obj("data", base64_of(px, 12), 2, 0, "rgb8"), 1, "no \"height\"");
        /* Wrong keys: both sources, neither, others. */
        json_object *o = image_obj("data", base64_of(px, 12), 2, 2, "rgb8");
        json_object_object_add(o, "fd", json_object_new_int(0));
        expect_bad_obj("mask", o, 1, "both \"fd\" and \"data\"");
        expect_bad("mask", "{\"format\":\"png\"}", "no \"fd\" (an fd sent with the request) or \"data\"");
        expect_bad("mask", "{\"pixels\":\"AAAA\",\"format\":\"png\"}", "unknown image key \"pixels\"");
        expect_bad("mask", "{\"data\":\"AAAA\",\"format\":\"png\",\"encoding\":\"png\"}", "unknown image key \"encoding\"");
        expect_bad("mask", "{\"data\":\"AAAA\",\"format\":\"jpeg\"}", "\"format\" must be");
        expect_bad("mask", "{\"data\":\"AAAA\",\"format\":\"png\",\"width\":0}", "\"width\" must be an integer 1..16384");
        expect_bad("mask", "{\"data\":\"AAAA\",\"format\":\"png\",\"height\":\"1\"}", "\"height\" must be an integer");

        /* Not a PNG, a PNG without IHDR first, a bad IHDR. */
        len = png_head(png, 4, 4, 8, 2, 0, 10);
        expect_bad_png(png, 20, 0, 0, "too short to be a PNG file (20 bytes)");
        expect_bad_png((const uint8_t *) "GIF89a....................................", 40, 0, 0, "no PNG signature");
        memcpy(png + 12, "IDAT", 4);
        expect_bad_png(png, len, 0, 0, "does not begin with an IHDR chunk");
        len = png_head(png, 4, 4, 8, 2, 0, 10);
        put_be32(png + 8, 14);
        expect_bad_png(png, len, 0, 0, "IHDR chunk is 14 bytes long, not 13");
        len = png_head(png, 4, 4, 8, 2, 0, 10);
        png[20] ^= 1; /* height 4 + 2^24: the CRC no longer fits */
        expect_bad_png(png, len, 0, 0, "bad CRC");
        /* Dimensions: 0, over the limit, over 2^31. */
        len = png_head(png, 16385, 4, 8, 2, 0, 0);
        expect_bad_png(png, len, 0, 0, "the PNG is 16385x4 pixels; width and height must be 1..16384");
        len = png_head(png, 4, 0x7fffffff, 8, 6, 0, 0);
        expect_bad_png(png, len, 0, 0, "the PNG is 4x2147483647 pixels");
        len = png_head(png, 0xffffffffu, 0xffffffffu, 8, 6, 0, 0);
        expect_bad_png(png, len, 0, 0, "4294967295x4294967295");
        len = png_head(png, 0, 4, 8, 6, 0, 0);
        expect_bad_png(png, len, 0, 0, "the PNG is 0x4 pixels");
        /* Bit depths and colour types PNG does not have. */
        len = png_head(png, 4, 4, 4, 2, 0, 0);
        expect_bad_png(png, len, 0, 0, "colour type 2 with bit depth 4");
        len = png_head(png, 4, 4, 16, 3, 0, 0);
        expect_bad_png(png, len, 0, 0, "colour type 3 with bit depth 16");
        len = png_head(png, 4, 4, 8, 5, 0, 0);
        expect_bad_png(png, len, 0, 0, "colour type 5");
        len = png_head(png, 4, 4, 0, 0, 0, 0);
        expect_bad_png(png, len, 0, 0, "bit depth 0");
        len = png_head(png, 4, 4, 200, 0, 0, 0);
        expect_bad_png(png, len, 0, 0, "bit depth 200");
        len = png_head(png, 4, 4, 8, 2, 2, 0);
        expect_bad_png(png, len, 0, 0, "unknown compression, filter or interlace method");
        /* A width or height given that the PNG does not have. */
        len = png_head(png, 3, 2, 8, 6, 0, 4);
        expect_bad_png(png, len, 4, 2, "the PNG is 3x2, not the 4x2 given");
        expect_bad_png(png, len, 0, 3, "the PNG is 3x2, not the 3x3 given");
}

/* An inline image made into a memfd is closed when a later parameter
 * fails; past the size limit nothing is decoded at all. */
static void test_inline_limits(void **state) {
        uint8_t px[3] = {1, 2, 3};
        json_object *req = request_with("init", image_obj("data", base64_of(px, 3), 1, 1, "rgb8")), *n = NULL;

        gh_params_images_close(&images);
        int before = gh_test_count_open_fds();
        json_object_object_add(req, "mask", json_object_new_string("nope"));
        assert_int_equal(validate(req, 1, &n), -EINVAL);
        assert_string_equal(param, "mask");
        assert_int_equal(images.n_made, 0);
        assert_int_equal(gh_test_count_open_fds(), before);
        json_object_put(req);

        /* Base64 of GH_PARAMS_IMAGE_DATA_MAX + 3 bytes ('A' is 0 bits). */
        size_t len = (GH_PARAMS_IMAGE_DATA_MAX / 3 + 1) * 4;
        char *text = malloc(len + 1);
        assert_non_null(text);
        memset(text, 'A', len);
        text[len] = 0;
        json_object *big = json_object_new_string_len(text, (int) len);
        free(text);
        expect_bad_obj("mask", image_obj("data", big, 0, 0, "png"), 1, "decodes to 67108866 bytes, more than the 67108864 allowed");
}

/* ---- names and limits ---- */

static void test_unknown_parameter(void **state) {
        json_object *req = request_with("stepz", json_object_new_int(3)), *n = NULL;

        assert_int_equal(validate(req, 1, &n), -EINVAL);
        assert_null(n);
        assert_string_equal(param, "stepz");
        assert_reason("unknown parameter; this pipeline takes: prompt, negative, steps, seed, cfg, strength, "
                      "sampler, mode, tiling, hires, model, vae, init, mask");
        json_object_put(req);

        /* A name with control characters comes back escaped. */
        req = request_with("a\n\"b", json_object_new_int(3));
        assert_int_equal(validate(req, 1, &n), -EINVAL);
        assert_string_equal(param, "a\\x0a\\\"b");
        json_object_put(req);

        /* An empty table takes nothing. */
        json_object *empty = json_object_new_array();
        assert_int_equal(validate_with(empty, req = parse("{\"x\":1}"), 0, &n), -EINVAL);
        assert_string_equal(param, "x");
        assert_reason("takes none");
        json_object_put(req);
        assert_int_equal(validate_with(empty, NULL, 0, &n), 0);
        assert_int_equal(json_object_object_length(n), 0);
        json_object_put(n);
        json_object_put(empty);
}

static void test_unknown_list_cut(void **state) {
        json_object *t = json_object_new_array(), *n = NULL, *req = parse("{\"zzz\":1}");
        char text[512];

        for (int i = 0; i < GH_PLUGIN_PARAMS_MAX; i++) {
                snprintf(text, sizeof(text),
                         "{\"name\":\"p%02d_%.*s\",\"type\":\"bool\",\"help\":\"\",\"required\":false,\"default\":true}", i,
                         GH_PLUGIN_NAME_MAX - 4, "abcdefghijklmnopqrstuvwxyzabcdefghijklmnopqrstuvwxyzabcdefghijklmnopqrstuvwxyz");
                json_object_array_add(t, parse(text));
        }
        assert_int_equal(validate_with(t, req, 0, &n), -EINVAL);
        assert_string_equal(param, "zzz");
        assert_reason("this pipeline takes: p00_abcdef");
        assert_reason(", ...");
        assert_true(strlen(reason) < 320);
        json_object_put(req);

        /* A request with a member for each of the 64 parameters is fine. */
        req = json_object_new_object();
        for (size_t i = 0; i < json_object_array_length(t); i++)
                json_object_object_add(req, json_object_get_string(json_object_object_get(json_object_array_get_idx(t, i), "name")),
                                       json_object_new_boolean(false));
        assert_int_equal(validate_with(t, req, 0, &n), 0);
        assert_int_equal(json_object_object_length(n), GH_PLUGIN_PARAMS_MAX);
        json_object_put(n);
        json_object_put(req);
        json_object_put(t);
}

static void test_missing_required(void **state) {
        json_object *req = parse(base_text), *n = NULL;

        json_object_object_del(req, "prompt");
        assert_int_equal(validate(req, 1, &n), -EINVAL);
        assert_null(n);
        assert_string_equal(param, "prompt");
        assert_reason("required");
        json_object_object_add(req, "prompt", json_object_new_string("x"));
        json_object_object_del(req, "mask");
        assert_int_equal(validate(req, 1, &n), -EINVAL);
        assert_string_equal(param, "mask");
        assert_reason("required");
        json_object_put(req);
}

static void test_null_request(void **state) {
        json_object *n = NULL, *req;

        /* NULL is {}: the first required parameter is missing. */
        assert_int_equal(validate(NULL, 0, &n), -EINVAL);
        assert_null(n);
        assert_string_equal(param, "prompt");
        assert_reason("required");

        /* A table of optional parameters takes NULL: all defaults. */
        json_object *t = parse("[{\"name\":\"steps\",\"type\":\"int\",\"help\":\"\",\"required\":false,\"min\":1,"
                               "\"max\":9,\"default\":3},{\"name\":\"img\",\"type\":\"image\",\"help\":\"\","
                               "\"required\":false}]");
        assert_int_equal(validate_with(t, NULL, 0, &n), 0);
        assert_int_equal(json_object_get_int64(json_object_object_get(n, "steps")), 3);
        json_object_put(n);
        assert_int_equal(validate_with(t, req = json_object_new_object(), 0, &n), 0);
        json_object_put(n);
        json_object_put(req);

        /* Anything but an object is refused. */
        const char *not_objects[] = {"[]", "1", "\"x\"", "true"};
        for (size_t i = 0; i < sizeof(not_objects) / sizeof(*not_objects); i++) {
                req = parse(not_objects[i]);
                n = NULL;
                assert_int_equal(validate_with(t, req, 0, &n), -EINVAL);
                assert_null(n);
                assert_string_equal(param, "");
                assert_reason("JSON object");
                json_object_put(req);
        }
        json_object_put(t);
}

static void test_too_many_members(void **state) {
        json_object *req = parse(base_text), *n = NULL;
        char name[32];

        for (int i = 0; json_object_object_length(req) <= GH_PLUGIN_PARAMS_MAX; i++) {
                snprintf(name, sizeof(name), "x%d", i);
                json_object_object_add(req, name, json_object_new_int(i));
        }
        assert_int_equal(validate(req, 1, &n), -EINVAL);
        assert_null(n);
        assert_string_equal(param, "");
        assert_reason("too many parameters (65)");
        /* At the limit it is the unknown names that are refused. */
        json_object_object_del(req, "x0");
        assert_int_equal(validate(req, 1, &n), -EINVAL);
        assert_string_equal(param, "x1");
        assert_reason("unknown parameter");
        json_object_put(req);
}

static void test_optional_buffers(void **state) {
        json_object *req = request_with("steps", json_object_new_int(0)), *n = NULL;
        char p[4], r[8];
        gh_params_images one = {.n_fds = 1};

        assert_int_equal(gh_params_validate(table, req, &one, &n, NULL, 0, NULL, 0), -EINVAL);
        assert_int_equal(gh_params_validate(table, req, &one, &n, p, 0, r, 0), -EINVAL);
        assert_int_equal(gh_params_validate(table, req, &one, &n, p, sizeof(p), r, sizeof(r)), -EINVAL);
        assert_string_equal(p, "ste");
        assert_int_equal(strlen(r), sizeof(r) - 1);
        assert_null(n);
        assert_int_equal(gh_params_validate(NULL, req, &one, &n, NULL, 0, NULL, 0), -EPROTO);
        assert_null(n);
        json_object_put(req);
}

/* ---- malformed tables ---- */

static void test_malformed_tables(void **state) {
        static const struct {
                const char *table, *param, *reason;
        } cases[] = {
                {"{}", "", "not an array"},
                {"\"[]\"", "", "not an array"},
                {"[1]", "", "entry 0: not an object"},
                {"[{\"type\":\"bool\",\"required\":true}]", "", "entry 0: no \"name\""},
                {"[{\"name\":\"\",\"type\":\"bool\",\"required\":true}]", "", "no \"name\""},
                {"[{\"name\":\"Steps\",\"type\":\"bool\",\"required\":true}]", "", "no \"name\""},
                {"[{\"name\":\"a b\",\"type\":\"bool\",\"required\":true}]", "", "no \"name\""},
                {"[{\"name\":7,\"type\":\"bool\",\"required\":true}]", "", "no \"name\""},
                {"[{\"name\":\"a\",\"type\":\"complex\",\"required\":true}]", "a", "parameter \"a\": no known \"type\""},
                {"[{\"name\":\"a\",\"required\":true}]", "a", "no known \"type\""},
                {"[{\"name\":\"a\",\"type\":\"Bool\",\"required\":true}]", "a", "no known \"type\""},
                {"[{\"name\":\"a\",\"type\":\"bool\"}]", "a", "\"required\" must be a boolean"},
                {"[{\"name\":\"a\",\"type\":\"bool\",\"required\":1}]", "a", "\"required\" must be a boolean"},
                {"[{\"name\":\"a\",\"type\":\"enum\",\"required\":true}]", "a", "an enum needs \"choices\""},
                {"[{\"name\":\"a\",\"type\":\"enum\",\"required\":true,\"choices\":[]}]", "a", "\"choices\""},
                {"[{\"name\":\"a\",\"type\":\"enum\",\"required\":true,\"choices\":\"x\"}]", "a", "\"choices\""},
                {"[{\"name\":\"a\",\"type\":\"enum\",\"required\":true,\"choices\":[\"x\",\"Y\"]}]", "a", "choice 1"},
                {"[{\"name\":\"a\",\"type\":\"enum\",\"required\":true,\"choices\":[\"x\",3]}]", "a", "choice 1"},
                {"[{\"name\":\"a\",\"type\":\"enum\",\"required\":false,\"choices\":[\"x\"],\"default\":\"y\"}]", "a",
                 "bad \"default\": \"y\" is not one of: x"},
                {"[{\"name\":\"a\",\"type\":\"enum\",\"required\":false,\"choices\":[\"x\"]}]", "a", "needs a \"default\""},
                {"[{\"name\":\"a\",\"type\":\"int\",\"required\":true,\"min\":1}]", "a", "\"min\" and \"max\""},
                {"[{\"name\":\"a\",\"type\":\"int\",\"required\":true,\"min\":2,\"max\":1}]", "a", "min <= max"},
                {"[{\"name\":\"a\",\"type\":\"int\",\"required\":true,\"min\":1.0,\"max\":2}]", "a", "integers"},
                {"[{\"name\":\"a\",\"type\":\"int\",\"required\":true,\"min\":0,\"max\":9223372036854775808}]", "a",
                 "integers"},
                {"[{\"name\":\"a\",\"type\":\"int\",\"required\":false,\"min\":0,\"max\":5,\"default\":6}]", "a",
                 "bad \"default\": 6 is out of range"},
                {"[{\"name\":\"a\",\"type\":\"int\",\"required\":false,\"min\":0,\"max\":5}]", "a", "\"default\""},
                {"[{\"name\":\"a\",\"type\":\"int\",\"required\":false,\"min\":0,\"max\":5,\"default\":null}]", "a",
                 "\"default\""},
                {"[{\"name\":\"a\",\"type\":\"float\",\"required\":true,\"min\":\"0\",\"max\":1}]", "a", "finite numbers"},
                {"[{\"name\":\"a\",\"type\":\"float\",\"required\":true,\"min\":1,\"max\":0.5}]", "a", "min <= max"},
                {"[{\"name\":\"a\",\"type\":\"float\",\"required\":false,\"min\":0,\"max\":1,\"default\":2}]", "a",
                 "bad \"default\""},
                {"[{\"name\":\"a\",\"type\":\"string\",\"required\":true}]", "a", "\"max_length\""},
                {"[{\"name\":\"a\",\"type\":\"string\",\"required\":true,\"max_length\":0}]", "a", "\"max_length\""},
                {"[{\"name\":\"a\",\"type\":\"string\",\"required\":true,\"max_length\":65537}]", "a", "\"max_length\""},
                {"[{\"name\":\"a\",\"type\":\"string\",\"required\":false,\"max_length\":2,\"default\":\"abc\"}]", "a",
                 "bad \"default\""},
                {"[{\"name\":\"a\",\"type\":\"string\",\"required\":false,\"max_length\":2,\"default\":5}]", "a",
                 "bad \"default\": expected a string"},
                {"[{\"name\":\"a\",\"type\":\"bool\",\"required\":false,\"default\":0}]", "a", "bad \"default\""},
                {"[{\"name\":\"a\",\"type\":\"bool\",\"required\":true},{\"name\":\"a\",\"type\":\"int\","
                 "\"required\":true,\"min\":0,\"max\":1}]", "a", "\"a\" appears twice"},
        };

        for (size_t i = 0; i < sizeof(cases) / sizeof(*cases); i++) {
                json_object *t = parse(cases[i].table), *n = NULL, *req = parse(base_text);
                int r = validate_with(t, req, 1, &n);
                if (r != -EPROTO)
                        fail_msg("table %s: %d (%s: %s)", cases[i].table, r, param, reason);
                assert_null(n);
                assert_string_equal(param, cases[i].param);
                assert_reason("malformed parameter table");
                assert_reason(cases[i].reason);
                /* The same without a request. */
                assert_int_equal(validate_with(t, NULL, 0, &n), -EPROTO);
                json_object_put(t);
                json_object_put(req);
        }

        /* NULL, and more parameters than the ABI allows. */
        json_object *n = NULL, *t = json_object_new_array();
        assert_int_equal(validate_with(NULL, NULL, 0, &n), -EPROTO);
        assert_reason("not an array");
        for (int i = 0; i <= GH_PLUGIN_PARAMS_MAX; i++) {
                char text[160];
                snprintf(text, sizeof(text), "{\"name\":\"p%d\",\"type\":\"bool\",\"help\":\"\",\"required\":true}", i);
                json_object_array_add(t, parse(text));
        }
        assert_int_equal(validate_with(t, NULL, 0, &n), -EPROTO);
        assert_reason("more than 64 parameters");
        json_object_put(t);

        /* Members a later ABI might add are ignored; image and model take
         * no default; a required parameter's default is not looked at. */
        t = parse("[{\"name\":\"a\",\"type\":\"image\",\"help\":\"\",\"required\":false,\"future\":[1]},"
                  "{\"name\":\"b\",\"type\":\"model\",\"help\":\"\",\"required\":false,\"default\":5},"
                  "{\"name\":\"c\",\"type\":\"int\",\"required\":true,\"min\":0,\"max\":1,\"default\":9}]");
        json_object *req = parse("{\"c\":1}");
        assert_int_equal(validate_with(t, req, 0, &n), 0);
        json_object_put(n);
        json_object_put(req);
        json_object_put(t);
}

/* ---- lookups ---- */

static void test_lookup(void **state) {
        json_object *req = parse(base_text), *n = NULL, *v;

        assert_int_equal(validate(req, 1, &n), 0);
        assert_int_equal(gh_params_lookup(table, n, "steps", "int", &v), 0);
        assert_int_equal(json_object_get_int64(v), 20);
        assert_int_equal(gh_params_lookup(table, n, "cfg", "float", &v), 0);
        assert_true(json_object_is_type(v, json_type_double));
        assert_int_equal(gh_params_lookup(table, n, "strength", "float", &v), 0);
        assert_true(json_object_is_type(v, json_type_double));
        assert_int_equal(gh_params_lookup(table, n, "prompt", "string", &v), 0);
        assert_string_equal(json_object_get_string(v), "a cat");
        assert_int_equal(gh_params_lookup(table, n, "sampler", "string", &v), 0);
        assert_string_equal(json_object_get_string(v), "euler");
        assert_int_equal(gh_params_lookup(table, n, "model", "string", &v), 0);
        assert_string_equal(json_object_get_string(v), "sd15");
        assert_int_equal(gh_params_lookup(table, n, "hires", "bool", &v), 0);
        assert_true(json_object_get_boolean(v));
        assert_int_equal(gh_params_lookup(table, n, "mask", "image", &v), 0);
        assert_true(json_object_is_type(v, json_type_object));
        assert_true(v == json_object_object_get(n, "mask")); /* borrowed */

        /* Optional image and model without a value. */
        assert_int_equal(gh_params_lookup(table, n, "init", "image", &v), -ENOENT);
        assert_int_equal(gh_params_lookup(table, n, "vae", "string", &v), -ENOENT);

        /* Type mismatches and unknown names. */
        assert_int_equal(gh_params_lookup(table, n, "steps", "float", &v), -EINVAL);
        assert_int_equal(gh_params_lookup(table, n, "steps", "string", &v), -EINVAL);
        assert_int_equal(gh_params_lookup(table, n, "cfg", "int", &v), -EINVAL);
        assert_int_equal(gh_params_lookup(table, n, "prompt", "enum", &v), -EINVAL);
        assert_int_equal(gh_params_lookup(table, n, "sampler", "int", &v), -EINVAL);
        assert_int_equal(gh_params_lookup(table, n, "tiling", "int", &v), -EINVAL);
        assert_int_equal(gh_params_lookup(table, n, "mask", "string", &v), -EINVAL);
        assert_int_equal(gh_params_lookup(table, n, "hires", "image", &v), -EINVAL);
        assert_int_equal(gh_params_lookup(table, n, "nope", "int", &v), -EINVAL);
        assert_int_equal(gh_params_lookup(table, n, "", "int", &v), -EINVAL);
        assert_int_equal(gh_params_lookup(table, n, NULL, "int", &v), -EINVAL);
        assert_int_equal(gh_params_lookup(table, n, "steps", NULL, &v), -EINVAL);
        assert_int_equal(gh_params_lookup(NULL, n, "steps", "int", &v), -EINVAL);
        json_object_put(n);
        json_object_put(req);
}

int main(void) {
        const struct CMUnitTest tests[] = {
                cmocka_unit_test(test_defaults),
                cmocka_unit_test(test_good_values),
                cmocka_unit_test(test_bad_int),
                cmocka_unit_test(test_bad_float),
                cmocka_unit_test(test_bad_string),
                cmocka_unit_test(test_bad_enum),
                cmocka_unit_test(test_bad_bool),
                cmocka_unit_test(test_bad_model),
                cmocka_unit_test(test_model_name_rule),
                cmocka_unit_test(test_bad_image),
                cmocka_unit_test(test_inline_raw),
                cmocka_unit_test(test_inline_png),
                cmocka_unit_test(test_png_fd),
                cmocka_unit_test(test_bad_inline),
                cmocka_unit_test(test_inline_limits),
                cmocka_unit_test(test_unknown_parameter),
                cmocka_unit_test(test_unknown_list_cut),
                cmocka_unit_test(test_missing_required),
                cmocka_unit_test(test_null_request),
                cmocka_unit_test(test_too_many_members),
                cmocka_unit_test(test_optional_buffers),
                cmocka_unit_test(test_malformed_tables),
                cmocka_unit_test(test_lookup),
        };
        return cmocka_run_group_tests(tests, setup, teardown);
}

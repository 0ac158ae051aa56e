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
#include <json-c/json.h>
#include <math.h>
#include <stdint.h>
#include <stdio.h>
#include <string.h>

#include "common/params.h"

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

static int validate_with(json_object *t, json_object *req, size_t n_fds, json_object **ret) {
        strcpy(param, "(unset)");
        strcpy(reason, "(unset)");
        return gh_params_validate(t, req, n_fds, ret, param, sizeof(param), reason, sizeof(reason));
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
        expect_bad("mask", v, "\"format\" must be \"rgb8\" or \"rgba8\"");
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

        assert_int_equal(gh_params_validate(table, req, 1, &n, NULL, 0, NULL, 0), -EINVAL);
        assert_int_equal(gh_params_validate(table, req, 1, &n, p, 0, r, 0), -EINVAL);
        assert_int_equal(gh_params_validate(table, req, 1, &n, p, sizeof(p), r, sizeof(r)), -EINVAL);
        assert_string_equal(p, "ste");
        assert_int_equal(strlen(r), sizeof(r) - 1);
        assert_null(n);
        assert_int_equal(gh_params_validate(NULL, req, 1, &n, NULL, 0, NULL, 0), -EPROTO);
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

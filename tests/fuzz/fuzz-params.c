/* libFuzzer target for job parameter validation (daemon/common/params.c).
 *
 * Input layout: if the input holds a NUL byte, the text before the first
 * one is the parameter table and the text after it the request; without a
 * NUL the whole input is the request, checked against a fixed, realistic
 * txt2img/img2img table (FIXED_TABLE), which is where most of the search
 * goes. An empty request text stands for no request (NULL). Both texts are
 * parsed as the daemon parses messages (gh_vl_json_parse(): strict, UTF-8
 * checked, depth-limited); text that is no JSON is skipped. The request
 * comes with N_FDS fds, memfds made once: fd 0 holds the head of a 3x2
 * RGBA PNG file, fd 1 bytes that are no PNG.
 *
 * On success the normalized object must have exactly the table's
 * parameters, each readable through gh_params_lookup() with its type and
 * within the table's bounds, images referring to the request's fds or to
 * the memfds made of inline ones; serialized and validated again (as the
 * worker would receive it, minus the nulls of optional images and models,
 * PNG images given back as {"fd", "format": "png", "width", "height"}, with
 * the memfds made as further fds) it must come back equal. On failure: a
 * known error code, no result, no memfd, a one-line reason. Any broken
 * invariant abort()s. */
#include <errno.h>
#include <json-c/json.h>
#include <math.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <unistd.h>

#include "fuzz.h"
#include "common/image-input.h"
#include "common/params.h"
#include "common/util.h"
#include "common/varlink.h"

#define MAX_INPUT (64 * 1024)
#define MAX_DEPTH 16
#define N_FDS 2

static const char FIXED_TABLE[] =
        "[{\"name\":\"prompt\",\"type\":\"string\",\"help\":\"what to draw\",\"required\":true,\"max_length\":4096},"
        "{\"name\":\"negative_prompt\",\"type\":\"string\",\"help\":\"what not to draw\",\"required\":false,"
        "\"max_length\":4096,\"default\":\"\"},"
        "{\"name\":\"width\",\"type\":\"int\",\"help\":\"pixels\",\"required\":false,\"min\":64,\"max\":2048,\"default\":512},"
        "{\"name\":\"height\",\"type\":\"int\",\"help\":\"pixels\",\"required\":false,\"min\":64,\"max\":2048,\"default\":512},"
        "{\"name\":\"steps\",\"type\":\"int\",\"help\":\"denoising steps\",\"required\":false,\"min\":1,\"max\":150,"
        "\"default\":30},"
        "{\"name\":\"seed\",\"type\":\"int\",\"help\":\"-1: random\",\"required\":false,\"min\":-1,"
        "\"max\":9223372036854775807,\"default\":-1},"
        "{\"name\":\"cfg_scale\",\"type\":\"float\",\"help\":\"guidance\",\"required\":false,\"min\":0.0,\"max\":30.0,"
        "\"default\":7.0},"
        "{\"name\":\"strength\",\"type\":\"float\",\"help\":\"img2img strength\",\"required\":false,\"min\":0.0,\"max\":1.0,"
        "\"default\":0.75},"
        "{\"name\":\"sampler\",\"type\":\"enum\",\"help\":\"sampler\",\"required\":false,"
        "\"choices\":[\"euler\",\"euler_a\",\"dpm_2m\",\"ddim\"],\"default\":\"euler\"},"
        "{\"name\":\"tiling\",\"type\":\"bool\",\"help\":\"seamless\",\"required\":false,\"default\":false},"
        "{\"name\":\"model\",\"type\":\"model\",\"help\":\"checkpoint\",\"required\":true},"
        "{\"name\":\"vae\",\"type\":\"model\",\"help\":\"VAE override\",\"required\":false},"
        "{\"name\":\"init_image\",\"type\":\"image\",\"help\":\"img2img input\",\"required\":false}]";

/* The head of a 3x2 RGBA PNG file: signature, IHDR, then an empty IEND. */
static const uint8_t PNG_3X2[] = {
        0x89, 'P', 'N', 'G', '\r', '\n', 0x1a, '\n', 0, 0, 0, 13, 'I', 'H', 'D', 'R', 0, 0, 0, 3, 0, 0, 0, 2,
        8, 6, 0, 0, 0, 0x9d, 0x74, 0x66, 0x1a, 0, 0, 0, 0, 'I', 'E', 'N', 'D', 0xae, 0x42, 0x60, 0x82,
};

/* The request's fds, then room for the memfds of inline images. */
static int fds[N_FDS + GH_PLUGIN_PARAMS_MAX];

static void fds_init(void) {
        static const char junk[64] = "no PNG here";

        for (int i = 0; i < N_FDS; i++) {
                CHECK((fds[i] = memfd_create("fuzz-image", MFD_CLOEXEC)) >= 0);
                if (i == 0)
                        CHECK(write(fds[i], PNG_3X2, sizeof(PNG_3X2)) == (ssize_t) sizeof(PNG_3X2));
                else
                        CHECK(write(fds[i], junk, sizeof(junk)) == (ssize_t) sizeof(junk));
        }
}

static json_object *parse(const char *text, size_t len) {
        json_object *o = NULL;
        const char *reason = NULL;

        return gh_vl_json_parse(text, len, MAX_DEPTH, &o, &reason) == 0 ? o : NULL;
}

static const char *accessor_of(const char *type) {
        return strcmp(type, "enum") == 0 || strcmp(type, "model") == 0 ? "string" : type;
}

/* A normalized image: raw {"fd", "width", "height", "format"}, or a PNG
 * with "encoding" and "bytes" too; fd one of the |n_fds|. */
static void check_image(json_object *v, size_t n_fds) {
        bool png = json_object_object_get_ex(v, "encoding", NULL);
        int64_t fd = json_object_get_int64(json_object_object_get(v, "fd"));
        const char *format = json_object_get_string(json_object_object_get(v, "format"));

        CHECK(json_object_is_type(v, json_type_object) && json_object_object_length(v) == (png ? 6 : 4));
        CHECK(fd >= 0 && (size_t) fd < n_fds);
        CHECK(format && (strcmp(format, "rgb8") == 0 || strcmp(format, "rgba8") == 0));
        for (const char *k = "width"; k; k = strcmp(k, "width") == 0 ? "height" : NULL) {
                int64_t side = json_object_get_int64(json_object_object_get(v, k));
                CHECK(side >= 1 && side <= GH_PARAMS_IMAGE_SIZE_MAX);
        }
        if (png) {
                CHECK(strcmp(json_object_get_string(json_object_object_get(v, "encoding")), "png") == 0);
                CHECK(json_object_get_int64(json_object_object_get(v, "bytes")) >= GH_PNG_HEAD_SIZE);
        }
}

/* One parameter of a normalized object against its table entry. */
static void check_param(json_object *table, json_object *norm, json_object *entry, size_t n_fds) {
        const char *name = json_object_get_string(json_object_object_get(entry, "name"));
        const char *type = json_object_get_string(json_object_object_get(entry, "type"));
        json_object *v = NULL, *lo = json_object_object_get(entry, "min"), *hi = json_object_object_get(entry, "max");

        CHECK(name && type && json_object_object_get_ex(norm, name, &v));
        int r = gh_params_lookup(table, norm, name, accessor_of(type), &v);
        if (r == -ENOENT) {
                CHECK(strcmp(type, "image") == 0 || strcmp(type, "model") == 0);
                CHECK(!json_object_get_boolean(json_object_object_get(entry, "required")));
                return;
        }
        CHECK(r == 0 && v);
        if (strcmp(type, "int") == 0) {
                CHECK(json_object_is_type(v, json_type_int));
                CHECK(json_object_get_int64(v) >= json_object_get_int64(lo) &&
                      json_object_get_int64(v) <= json_object_get_int64(hi));
        } else if (strcmp(type, "float") == 0) {
                CHECK(json_object_is_type(v, json_type_double) && isfinite(json_object_get_double(v)));
                CHECK(json_object_get_double(v) >= json_object_get_double(lo) &&
                      json_object_get_double(v) <= json_object_get_double(hi));
        } else if (strcmp(type, "bool") == 0) {
                CHECK(json_object_is_type(v, json_type_boolean));
        } else if (strcmp(type, "image") == 0) {
                check_image(v, n_fds);
        } else {
                CHECK(json_object_is_type(v, json_type_string));
                CHECK(strlen(json_object_get_string(v)) == (size_t) json_object_get_string_len(v));
                if (strcmp(type, "string") == 0)
                        CHECK(json_object_get_string_len(v) <= json_object_get_int(json_object_object_get(entry, "max_length")));
                if (strcmp(type, "model") == 0)
                        CHECK(gh_model_name_valid(json_object_get_string(v), (size_t) json_object_get_string_len(v)));
        }
        /* An accessor of another type is refused. */
        CHECK(gh_params_lookup(table, norm, name, strcmp(type, "bool") == 0 ? "int" : "bool", &v) == -EINVAL);
}

/* A normalized PNG image as a request gives one: by fd, its size given. */
static void png_as_request(json_object *v) {
        if (!json_object_is_type(v, json_type_object) || !json_object_object_get_ex(v, "encoding", NULL))
                return;
        json_object_object_del(v, "encoding");
        json_object_object_del(v, "bytes");
        json_object_object_add(v, "format", json_object_new_string("png"));
}

/* The normalized object, sent on as text without its nulls, validates to
 * itself, with the memfds made as further fds (|n_fds| in all). */
static void check_round_trip(json_object *table, json_object *norm, size_t n_fds) {
        json_object *copy = NULL, *again = NULL;
        char param[128], reason[512];
        gh_params_images images = {.fds = fds, .n_fds = n_fds};

        const char *text = json_object_to_json_string_ext(norm, JSON_C_TO_STRING_PLAIN);
        CHECK(text);
        copy = parse(text, strlen(text));
        CHECK(copy);
        json_object *names = json_object_new_array();
        CHECK(names);
        json_object_object_foreach(copy, key, val) {
                if (!val)
                        json_object_array_add(names, json_object_new_string(key));
                png_as_request(val);
        }
        for (size_t i = 0; i < json_object_array_length(names); i++)
                json_object_object_del(copy, json_object_get_string(json_object_array_get_idx(names, i)));
        json_object_put(names);

        int r = gh_params_validate(table, copy, &images, &again, param, sizeof(param), reason, sizeof(reason));
        if (r != 0)
                fprintf(stderr, "round trip refused: %d %s: %s\n", r, param, reason);
        CHECK(r == 0 && images.n_made == 0);
        CHECK(json_object_equal(norm, again));
        json_object_put(again);
        json_object_put(copy);
}

static void run(json_object *table, json_object *request) {
        json_object *norm = NULL;
        char param[128], reason[512];
        gh_params_images images = {.fds = fds, .n_fds = N_FDS};

        param[0] = reason[0] = 0;
        int r = gh_params_validate(table, request, &images, &norm, param, sizeof(param), reason, sizeof(reason));
        if (r < 0) {
                CHECK(r == -EINVAL || r == -EPROTO || r == -ENOMEM);
                CHECK(!norm && images.n_made == 0);
                CHECK(reason[0] && !strchr(reason, '\n') && !strchr(param, '\n'));
                return;
        }
        CHECK(r == 0 && json_object_is_type(norm, json_type_object));
        CHECK((size_t) json_object_object_length(norm) == json_object_array_length(table));
        memcpy(fds + N_FDS, images.made, images.n_made * sizeof(int));
        for (size_t i = 0; i < json_object_array_length(table); i++)
                check_param(table, norm, json_object_array_get_idx(table, i), N_FDS + images.n_made);
        check_round_trip(table, norm, N_FDS + images.n_made);
        gh_params_images_close(&images);
        json_object_put(norm);
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size) {
        static json_object *fixed;
        json_object *table, *request = NULL;

        if (size > MAX_INPUT)
                return 0;
        if (!fixed) {
                CHECK(fixed = parse(FIXED_TABLE, strlen(FIXED_TABLE)));
                fds_init();
        }

        const char *text = (const char *) data, *nul = memchr(data, 0, size);
        size_t req_off = nul ? (size_t) (nul - text) + 1 : 0;
        size_t req_len = size - req_off;
        if (nul)
                table = parse(text, (size_t) (nul - text));
        else
                table = json_object_get(fixed);
        if (!table)
                return 0;
        /* An exactly sized copy, so that ASan sees reads past the end. */
        if (req_len > 0) {
                char *req = malloc(req_len);
                CHECK(req);
                memcpy(req, text + req_off, req_len);
                request = parse(req, req_len);
                free(req);
                if (!request) {
                        json_object_put(table);
                        return 0;
                }
        }
        run(table, request);
        json_object_put(request);
        json_object_put(table);
        return 0;
}

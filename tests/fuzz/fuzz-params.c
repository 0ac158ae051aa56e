/* libFuzzer target for job parameter validation (daemon/common/params.c).
 *
 * Input layout: if the input holds a NUL byte, the text before the first
 * one is the parameter table and the text after it the request; without a
 * NUL the whole input is the request, checked against a fixed, realistic
 * txt2img/img2img table (FIXED_TABLE), which is where most of the search
 * goes. An empty request text stands for no request (NULL). Both texts are
 * parsed as the daemon parses messages (gh_vl_json_parse(): strict, UTF-8
 * checked, depth-limited); text that is no JSON is skipped. The request
 * comes with N_FDS fds.
 *
 * On success the normalized object must have exactly the table's
 * parameters, each readable through gh_params_lookup() with its type and
 * within the table's bounds; serialized and validated again (as the worker
 * would receive it, minus the nulls of optional images and models) it must
 * come back equal. On failure: a known error code, no result, a one-line
 * reason. Any broken invariant abort()s. */
#include <errno.h>
#include <json-c/json.h>
#include <math.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "fuzz.h"
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

static json_object *parse(const char *text, size_t len) {
        json_object *o = NULL;
        const char *reason = NULL;

        return gh_vl_json_parse(text, len, MAX_DEPTH, &o, &reason) == 0 ? o : NULL;
}

static const char *accessor_of(const char *type) {
        return strcmp(type, "enum") == 0 || strcmp(type, "model") == 0 ? "string" : type;
}

/* One parameter of a normalized object against its table entry. */
static void check_param(json_object *table, json_object *norm, json_object *entry) {
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
                CHECK(json_object_is_type(v, json_type_object) && json_object_object_length(v) == 4);
                int64_t fd = json_object_get_int64(json_object_object_get(v, "fd"));
                CHECK(fd >= 0 && fd < N_FDS);
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

/* The normalized object, sent on as text without its nulls, validates to
 * itself. */
static void check_round_trip(json_object *table, json_object *norm) {
        json_object *copy = NULL, *again = NULL;
        char param[128], reason[512];

        const char *text = json_object_to_json_string_ext(norm, JSON_C_TO_STRING_PLAIN);
        CHECK(text);
        copy = parse(text, strlen(text));
        CHECK(copy);
        json_object *names = json_object_new_array();
        CHECK(names);
        json_object_object_foreach(copy, key, val)
                if (!val)
                        json_object_array_add(names, json_object_new_string(key));
        for (size_t i = 0; i < json_object_array_length(names); i++)
                json_object_object_del(copy, json_object_get_string(json_object_array_get_idx(names, i)));
        json_object_put(names);

        int r = gh_params_validate(table, copy, N_FDS, &again, param, sizeof(param), reason, sizeof(reason));
        if (r != 0)
                fprintf(stderr, "round trip refused: %d %s: %s\n", r, param, reason);
        CHECK(r == 0);
        CHECK(json_object_equal(norm, again));
        json_object_put(again);
        json_object_put(copy);
}

static void run(json_object *table, json_object *request) {
        json_object *norm = NULL;
        char param[128], reason[512];

        param[0] = reason[0] = 0;
        int r = gh_params_validate(table, request, N_FDS, &norm, param, sizeof(param), reason, sizeof(reason));
        if (r < 0) {
                CHECK(r == -EINVAL || r == -EPROTO || r == -ENOMEM);
                CHECK(!norm);
                CHECK(reason[0] && !strchr(reason, '\n') && !strchr(param, '\n'));
                return;
        }
        CHECK(r == 0 && json_object_is_type(norm, json_type_object));
        CHECK((size_t) json_object_object_length(norm) == json_object_array_length(table));
        for (size_t i = 0; i < json_object_array_length(table); i++)
                check_param(table, norm, json_object_array_get_idx(table, i));
        check_round_trip(table, norm);
        json_object_put(norm);
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size) {
        static json_object *fixed;
        json_object *table, *request = NULL;

        if (size > MAX_INPUT)
                return 0;
        if (!fixed)
                CHECK(fixed = parse(FIXED_TABLE, strlen(FIXED_TABLE)));

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

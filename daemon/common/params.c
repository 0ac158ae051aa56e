/* Job parameters against a plugin's parameter table. See params.h.
 *
 * The table is checked first, whole, so that a malformed one is -EPROTO
 * whatever the request: an array of at most GH_PLUGIN_PARAMS_MAX objects,
 * each with a "name" as the plugin loader allows ([a-z][a-z0-9_]*, unique),
 * a known "type", a boolean "required", the members its type needs ("min"
 * <= "max", "max_length" 1..GH_PLUGIN_STRING_MAX, 1..GH_PLUGIN_CHOICES_MAX
 * "choices" of [a-z][a-z0-9_-]*) and, unless required, a "default" that
 * passes the same checks as a request's value. Members it does not know are
 * ignored, so that tables from a later minor ABI still work.
 *
 * The request is untrusted: at most GH_PLUGIN_PARAMS_MAX members, every one
 * a parameter of the table, and each value exactly of its type:
 *  - int: a JSON integer (not 5.0, not "5") that fits in int64, min..max;
 *  - float: a JSON integer or double, finite, min..max;
 *  - string: at most max_length bytes, valid UTF-8 (json-c checks that only
 *    when asked), no NUL (json-c strings may hold one, C strings cannot);
 *  - enum: a string equal to one of the choices;
 *  - bool: true or false;
 *  - model: a model name as in the configuration (gh_model_name_valid());
 *  - image: an object of the members "fd", "data", "width", "height" and
 *    "format", no others: exactly one of "fd" (an index into the request's
 *    fds) and "data" (base64, decoding to 1..GH_PARAMS_IMAGE_DATA_MAX
 *    bytes, which go into a sealed memfd), and "format" "rgb8" or "rgba8"
 *    (raw pixels, rows packed: "width" and "height" required; inline data
 *    must be exactly width * height * 3 or 4 bytes) or "png" (a PNG file:
 *    its IHDR says its size, and a "width" or "height" given must match).
 *    Sizes are 1..GH_PARAMS_IMAGE_SIZE_MAX. A PNG's fd is read for its
 *    first 33 bytes only, never waiting on a disk (image-input.c).
 * null is a wrong type, not "use the default". The normalized object is
 * built from new values, never from the request's objects, so it shares
 * nothing with the request. Messages quote text from the request escaped
 * (non-printable and non-ASCII bytes as \xNN) and shortened. */
#include <inttypes.h>
#include <math.h>
#include <stdarg.h>
#include <stdlib.h>
#include <string.h>

#include "base64.h"
#include "quote.h"
#include "image-input.h"
#include "params.h"
#include "utf8.h"
#include "util.h"

#define SHOW_MAX 64 /* bytes of request text quoted in a message */
#define SHOW_BUF (SHOW_MAX * 4 + 4)
#define LIST_MAX 256 /* a list of names in a message */
#define WHY_MAX 512

static const char *const type_names[] = {
        [GH_PARAM_INT] = "int", [GH_PARAM_FLOAT] = "float", [GH_PARAM_STRING] = "string", [GH_PARAM_ENUM] = "enum",
        [GH_PARAM_BOOL] = "bool", [GH_PARAM_IMAGE] = "image", [GH_PARAM_MODEL] = "model",
};

static const char *const image_keys[] = {"fd", "data", "width", "height", "format"};
static const char *const image_formats[] = {"rgb8", "rgba8", "png"};

/* One row of the table, checked. Pointers borrow from the table. */
typedef struct spec {
        const char *name;
        gh_param_type type;
        bool required;
        int64_t int_min, int_max;
        double float_min, float_max;
        size_t max_length;
        json_object *choices; /* enum: array of strings */
        json_object *def;     /* NULL: none */
} spec;

/* The caller's buffers. */
typedef struct out {
        char *param;
        size_t param_size;
        char *reason;
        size_t reason_size;
} out;

static inline void json_putp(json_object **o) {
        json_object_put(*o);
}
#define _cleanup_json_ _cleanup_(json_putp)

/* Reasons of the value checks go into (why, why_size). */
#define WHY(...) (gh_set_error(why, why_size, __VA_ARGS__), -EINVAL)
#define BAD(...) (gh_set_error(why, why_size, __VA_ARGS__), -EPROTO)

_printf_(4, 5) static int fail(const out *o, int r, const char *param, const char *fmt, ...) {
        va_list ap;

        gh_set_error(o->param, o->param_size, "%s", param ? param : "");
        if (o->reason && o->reason_size > 0) {
                va_start(ap, fmt);
                vsnprintf(o->reason, o->reason_size, fmt, ap);
                va_end(ap);
        }
        return r;
}

/* ---- text -------------------------------------------------------------- */

#define SHOW(s, len) gh_quote_bytes((char[SHOW_BUF]) {0}, SHOW_BUF, (s), (len), SHOW_MAX)

/* "a, b, c", ending in ", ..." where the next name does not fit. */
typedef struct list {
        char s[LIST_MAX];
        size_t len;
        bool cut;
} list;

static void list_add(list *l, const char *item) {
        size_t need = strlen(item) + (l->len ? 2 : 0);

        if (l->cut)
                return;
        if (l->len + need + 5 >= sizeof(l->s)) {
                snprintf(l->s + l->len, sizeof(l->s) - l->len, "%s...", l->len ? ", " : "");
                l->cut = true;
                return;
        }
        snprintf(l->s + l->len, sizeof(l->s) - l->len, "%s%s", l->len ? ", " : "", item);
        l->len += need;
}

/* |d| in the fewest digits that read back as |d|, so that a value just
 * outside a bound does not print as the bound. */
static const char *show_double(char *buf, size_t size, double d) {
        for (int prec = 6; prec <= 17; prec++) {
                snprintf(buf, size, "%.*g", prec, d);
                if (strtod(buf, NULL) == d)
                        break;
        }
        return buf;
}
#define SHOW_DOUBLE(d) show_double((char[32]) {0}, 32, (d))

static bool ascii_alnum(char c) {
        return (c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z') || (c >= '0' && c <= '9');
}

/* As the plugin loader: [a-z][a-z0-9_]* (with '-' too if |dash|). */
static bool name_ok(const char *s, size_t len, bool dash) {
        if (len == 0 || len > GH_PLUGIN_NAME_MAX || !(s[0] >= 'a' && s[0] <= 'z'))
                return false;
        for (size_t i = 0; i < len; i++)
                if (!(s[i] >= 'a' && s[i] <= 'z') && !(s[i] >= '0' && s[i] <= '9') && s[i] != '_' &&
                    !(dash && s[i] == '-'))
                        return false;
        return true;
}

bool gh_model_name_valid(const char *name, size_t len) {
        if (!name || len == 0 || len > GH_MODEL_NAME_MAX || name[0] == '.' || name[0] == '-')
                return false;
        for (size_t i = 0; i < len; i++)
                if (!ascii_alnum(name[i]) && name[i] != '.' && name[i] != '_' && name[i] != '-')
                        return false;
        return true;
}

/* ---- JSON helpers ------------------------------------------------------ */

/* The member |key| of |o|; NULL if absent or null. */
static json_object *member(json_object *o, const char *key) {
        json_object *v = NULL;

        return json_object_object_get_ex(o, key, &v) ? v : NULL;
}

static const char *json_kind(json_object *v) {
        switch (json_object_get_type(v)) {
        case json_type_null:
                return "null";
        case json_type_boolean:
                return "a boolean";
        case json_type_double:
                return "a number with a fraction or exponent";
        case json_type_int:
                return "an integer";
        case json_type_object:
                return "an object";
        case json_type_array:
                return "an array";
        case json_type_string:
                return "a string";
        }
        return "an unknown JSON type";
}

/* A JSON integer that fits in int64 (json-c keeps 2^63..2^64-1 as uint64
 * and saturates json_object_get_int64() on those). */
static bool get_int64(json_object *v, int64_t *ret) {
        if (!json_object_is_type(v, json_type_int))
                return false;
        int64_t i = json_object_get_int64(v);
        if (i == INT64_MAX && json_object_get_uint64(v) > (uint64_t) INT64_MAX)
                return false;
        *ret = i;
        return true;
}

/* A JSON integer or double, finite. */
static bool get_number(json_object *v, double *ret) {
        if (!json_object_is_type(v, json_type_int) && !json_object_is_type(v, json_type_double))
                return false;
        double d = json_object_get_double(v);
        if (!isfinite(d))
                return false;
        *ret = d;
        return true;
}

/* A string without NUL, in valid UTF-8. */
static int get_string(json_object *v, const char *expected, const char **ret, size_t *ret_len, char *why,
                      size_t why_size) {
        if (!json_object_is_type(v, json_type_string))
                return WHY("expected %s, got %s", expected, json_kind(v));
        const char *s = json_object_get_string(v);
        size_t len = (size_t) json_object_get_string_len(v);
        if (strlen(s) != len)
                return WHY("the string contains a NUL character");
        if (!gh_utf8_valid(s, len, NULL))
                return WHY("the string is not valid UTF-8");
        *ret = s;
        *ret_len = len;
        return 0;
}

static bool in_choices(json_object *choices, const char *s, size_t len) {
        for (size_t i = 0; i < json_object_array_length(choices); i++) {
                json_object *c = json_object_array_get_idx(choices, i);
                if ((size_t) json_object_get_string_len(c) == len && memcmp(json_object_get_string(c), s, len) == 0)
                        return true;
        }
        return false;
}

static int new_value(json_object *v, json_object **ret) {
        *ret = v;
        return v ? 0 : -ENOMEM;
}

/* Adds |v| (taking it) as |key| of |o|; a NULL |v| is -ENOMEM. */
static int add(json_object *o, const char *key, json_object *v) {
        if (!v || json_object_object_add(o, key, v) < 0) {
                json_object_put(v);
                return -ENOMEM;
        }
        return 0;
}

/* ---- values ------------------------------------------------------------ */

static int check_int(const spec *p, json_object *v, json_object **ret, char *why, size_t why_size) {
        int64_t i = 0;

        if (!json_object_is_type(v, json_type_int))
                return WHY("expected an integer, got %s", json_kind(v));
        if (!get_int64(v, &i))
                return WHY("%" PRIu64 " is out of range %" PRId64 "..%" PRId64, json_object_get_uint64(v),
                           p->int_min, p->int_max);
        if (i < p->int_min || i > p->int_max)
                return WHY("%" PRId64 " is out of range %" PRId64 "..%" PRId64, i, p->int_min, p->int_max);
        return new_value(json_object_new_int64(i), ret);
}

static int check_float(const spec *p, json_object *v, json_object **ret, char *why, size_t why_size) {
        double d = 0;

        if (!json_object_is_type(v, json_type_int) && !json_object_is_type(v, json_type_double))
                return WHY("expected a number, got %s", json_kind(v));
        if (!get_number(v, &d))
                return WHY("expected a finite number");
        if (d < p->float_min || d > p->float_max)
                return WHY("%s is out of range %s..%s", SHOW_DOUBLE(d), SHOW_DOUBLE(p->float_min),
                           SHOW_DOUBLE(p->float_max));
        return new_value(json_object_new_double(d), ret);
}

static int check_string(const spec *p, json_object *v, json_object **ret, char *why, size_t why_size) {
        const char *s;
        size_t len;
        int r = get_string(v, "a string", &s, &len, why, why_size);

        if (r < 0)
                return r;
        if (len > p->max_length)
                return WHY("the string is %zu bytes long, longer than the %zu allowed", len, p->max_length);
        return new_value(json_object_new_string_len(s, (int) len), ret);
}

static const char *choices_list(const spec *p, list *l) {
        for (size_t i = 0; i < json_object_array_length(p->choices); i++)
                list_add(l, json_object_get_string(json_object_array_get_idx(p->choices, i)));
        return l->s;
}

static int check_enum(const spec *p, json_object *v, json_object **ret, char *why, size_t why_size) {
        const char *s;
        size_t len;
        list l = {0};

        if (!json_object_is_type(v, json_type_string))
                return WHY("expected a string, one of: %s; got %s", choices_list(p, &l), json_kind(v));
        int r = get_string(v, "a string", &s, &len, why, why_size);
        if (r < 0)
                return r;
        if (!in_choices(p->choices, s, len))
                return WHY("\"%s\" is not one of: %s", SHOW(s, len), choices_list(p, &l));
        return new_value(json_object_new_string_len(s, (int) len), ret);
}

static int check_bool(json_object *v, json_object **ret, char *why, size_t why_size) {
        if (!json_object_is_type(v, json_type_boolean))
                return WHY("expected a boolean, got %s", json_kind(v));
        return new_value(json_object_new_boolean(json_object_get_boolean(v)), ret);
}

static int check_model(json_object *v, json_object **ret, char *why, size_t why_size) {
        const char *s;
        size_t len;
        int r = get_string(v, "a model name (a string)", &s, &len, why, why_size);

        if (r < 0)
                return r;
        if (!gh_model_name_valid(s, len))
                return WHY("\"%s\" is not a valid model name (1..%d of A-Z a-z 0-9 . _ -, not starting with . or -)",
                           SHOW(s, len), GH_MODEL_NAME_MAX);
        return new_value(json_object_new_string_len(s, (int) len), ret);
}

/* An image as the request gives it, its members checked one by one. */
typedef struct image_in {
        const char *format;     /* "rgb8", "rgba8" or "png" */
        json_object *fd, *data; /* exactly one of them */
        int64_t fd_index, width, height; /* width, height: 0 when not given */
} image_in;

/* An image as the worker gets it (the normalized value). */
typedef struct image_out {
        int64_t fd, width, height;
        const char *format;     /* "rgb8" or "rgba8" */
        bool png;
        uint64_t bytes;         /* the PNG file's size */
} image_out;

/* The integer member |key| of an image, in min..max. */
static int image_int(json_object *v, const char *key, int64_t min, int64_t max, int64_t *ret, char *why,
                     size_t why_size) {
        json_object *m = member(v, key);
        int64_t i = 0;

        if (!m)
                return WHY("the image has no \"%s\"", key);
        if (!get_int64(m, &i) || i < min || i > max) {
                if (strcmp(key, "fd") == 0)
                        return WHY("the image's \"fd\" must be the index of an fd sent with the request (%zu sent)",
                                   (size_t) (max + 1));
                return WHY("the image's \"%s\" must be an integer %" PRId64 "..%" PRId64, key, min, max);
        }
        *ret = i;
        return 0;
}

static const char *image_format(json_object *v, char *why, size_t why_size) {
        json_object *m = member(v, "format");

        for (size_t i = 0; i < ELEMENTSOF(image_formats); i++)
                if (json_object_is_type(m, json_type_string) &&
                    (size_t) json_object_get_string_len(m) == strlen(image_formats[i]) &&
                    strcmp(json_object_get_string(m), image_formats[i]) == 0)
                        return image_formats[i];
        gh_set_error(why, why_size, "the image's \"format\" must be \"rgb8\", \"rgba8\" or \"png\"");
        return NULL;
}

static int image_keys_check(json_object *v, char *why, size_t why_size) {
        json_object_object_foreach(v, key, val) {
                bool known = false;
                for (size_t i = 0; i < ELEMENTSOF(image_keys); i++)
                        known |= strcmp(key, image_keys[i]) == 0;
                if (!known)
                        return WHY("unknown image key \"%s\" (an image has fd or data, width, height, format)",
                                   SHOW(key, strlen(key)));
        }
        return 0;
}

/* The members of |v|, each well-formed; no I/O yet. */
static int image_parse(json_object *v, size_t n_fds, image_in *in, char *why, size_t why_size) {
        int64_t max_fd = n_fds > (size_t) INT64_MAX ? INT64_MAX : (int64_t) n_fds - 1;
        bool png;
        int r;

        *in = (image_in) {.fd = member(v, "fd"), .data = member(v, "data")};
        if ((r = image_keys_check(v, why, why_size)) < 0)
                return r;
        if (in->fd && in->data)
                return WHY("the image has both \"fd\" and \"data\"; give one");
        if (!in->fd && !in->data)
                return WHY("the image has no \"fd\" (an fd sent with the request) or \"data\" (base64)");
        if (in->data && !json_object_is_type(in->data, json_type_string))
                return WHY("the image's \"data\" must be a string of base64, not %s", json_kind(in->data));
        if (in->fd && (r = image_int(v, "fd", 0, max_fd, &in->fd_index, why, why_size)) < 0)
                return r;
        if (!(in->format = image_format(v, why, why_size)))
                return -EINVAL;
        png = strcmp(in->format, "png") == 0;
        if ((!png || member(v, "width")) &&
            (r = image_int(v, "width", 1, GH_PARAMS_IMAGE_SIZE_MAX, &in->width, why, why_size)) < 0)
                return r;
        if ((!png || member(v, "height")) &&
            (r = image_int(v, "height", 1, GH_PARAMS_IMAGE_SIZE_MAX, &in->height, why, why_size)) < 0)
                return r;
        return 0;
}

/* Decodes the image's "data" into a memfd of |images|; its first bytes
 * go into |head|. |expect| > 0: the size it must decode to. */
static int image_data(const image_in *in, gh_params_images *images, int64_t expect, uint8_t *head,
                      size_t head_size, image_out *res, char *why, size_t why_size) {
        const char *text = json_object_get_string(in->data);
        size_t len = (size_t) json_object_get_string_len(in->data);
        int64_t size = gh_base64_decoded_size(text, len);
        int fd = -1, r;

        if (size > (int64_t) GH_PARAMS_IMAGE_DATA_MAX)
                return WHY("the image's \"data\" decodes to %" PRId64 " bytes, more than the %u allowed", size,
                           GH_PARAMS_IMAGE_DATA_MAX);
        if (expect > 0 && size >= 0 && size != expect)
                return WHY("the image's \"data\" holds %" PRId64 " bytes; a %" PRId64 "x%" PRId64
                           " %s image is %" PRId64, size, in->width, in->height, in->format, expect);
        if (images->n_made == ELEMENTSOF(images->made))
                return WHY("too many images sent inline");
        r = gh_image_memfd_from_base64(text, len, head, head_size, &fd, &res->bytes, why, why_size);
        if (r < 0)
                return r;
        res->fd = (int64_t) (images->n_fds + images->n_made);
        images->made[images->n_made++] = fd;
        return 0;
}

/* A PNG's size and format from its head, which must agree with a width
 * and height the request gave. */
static int image_png_head(const image_in *in, const uint8_t *head, size_t size, image_out *res, char *why,
                          size_t why_size) {
        char sub[WHY_MAX];
        gh_png_head h;

        if (gh_png_head_parse(head, size, GH_PARAMS_IMAGE_SIZE_MAX, &h, sub, sizeof(sub)) < 0)
                return WHY("the image's %s: %s", in->data ? "\"data\"" : "fd", sub);
        if ((in->width && in->width != h.width) || (in->height && in->height != h.height))
                return WHY("the PNG is %" PRIu32 "x%" PRIu32 ", not the %" PRId64 "x%" PRId64 " given", h.width,
                           h.height, in->width ? in->width : (int64_t) h.width,
                           in->height ? in->height : (int64_t) h.height);
        res->width = h.width;
        res->height = h.height;
        res->format = h.alpha ? "rgba8" : "rgb8";
        res->png = true;
        return 0;
}

static int image_png(const image_in *in, gh_params_images *images, image_out *res, char *why, size_t why_size) {
        uint8_t head[GH_PNG_HEAD_SIZE] = {0};
        char sub[WHY_MAX];
        int r;

        if (in->data) {
                r = image_data(in, images, 0, head, sizeof(head), res, why, why_size);
                if (r < 0)
                        return r;
                return image_png_head(in, head, res->bytes < sizeof(head) ? (size_t) res->bytes : sizeof(head), res,
                                      why, why_size);
        }
        if (!images->fds)
                return WHY("the image's fd cannot be read here");
        r = gh_image_fd_head(images->fds[in->fd_index], head, sizeof(head), GH_PARAMS_IMAGE_FILE_MAX, &res->bytes,
                             sub, sizeof(sub));
        if (r < 0)
                return WHY("the image's PNG: %s", sub);
        res->fd = in->fd_index;
        return image_png_head(in, head, sizeof(head), res, why, why_size);
}

static int image_json(const image_out *o, json_object **ret) {
        _cleanup_json_ json_object *j = json_object_new_object();

        if (!j || add(j, "fd", json_object_new_int64(o->fd)) < 0 ||
            add(j, "width", json_object_new_int64(o->width)) < 0 ||
            add(j, "height", json_object_new_int64(o->height)) < 0 ||
            add(j, "format", json_object_new_string(o->format)) < 0)
                return -ENOMEM;
        if (o->png && (add(j, "encoding", json_object_new_string("png")) < 0 ||
                       add(j, "bytes", json_object_new_int64((int64_t) o->bytes)) < 0))
                return -ENOMEM;
        *ret = TAKE_PTR(j);
        return 0;
}

static int check_image(json_object *v, gh_params_images *images, json_object **ret, char *why, size_t why_size) {
        image_in in;
        image_out res = {0};
        int r;

        if (!json_object_is_type(v, json_type_object))
                return WHY("expected an image {\"fd\" or \"data\", \"width\", \"height\", \"format\"}, got %s",
                           json_kind(v));
        if (!images)
                return WHY("an image cannot be given here");
        if ((r = image_parse(v, images->n_fds, &in, why, why_size)) < 0)
                return r;
        if (strcmp(in.format, "png") == 0)
                r = image_png(&in, images, &res, why, why_size);
        else {
                res = (image_out) {.fd = in.fd_index, .width = in.width, .height = in.height, .format = in.format};
                if (in.data)
                        r = image_data(&in, images, in.width * in.height * (strcmp(in.format, "rgba8") == 0 ? 4 : 3),
                                       NULL, 0, &res, why, why_size);
        }
        return r < 0 ? r : image_json(&res, ret);
}

/* Checks |v| for parameter |p|: 0 and a new normalized value in *ret,
 * -EINVAL with a reason in |why|, or -ENOMEM. */
static int check_value(const spec *p, json_object *v, gh_params_images *images, json_object **ret, char *why,
                       size_t why_size) {
        switch (p->type) {
        case GH_PARAM_INT:
                return check_int(p, v, ret, why, why_size);
        case GH_PARAM_FLOAT:
                return check_float(p, v, ret, why, why_size);
        case GH_PARAM_STRING:
                return check_string(p, v, ret, why, why_size);
        case GH_PARAM_ENUM:
                return check_enum(p, v, ret, why, why_size);
        case GH_PARAM_BOOL:
                return check_bool(v, ret, why, why_size);
        case GH_PARAM_IMAGE:
                return check_image(v, images, ret, why, why_size);
        case GH_PARAM_MODEL:
                return check_model(v, ret, why, why_size);
        }
        return BAD("unknown type");
}

/* ---- the table --------------------------------------------------------- */

static gh_param_type type_from_json(json_object *v) {
        for (size_t t = 0; t < ELEMENTSOF(type_names); t++)
                if (type_names[t] && json_object_is_type(v, json_type_string) &&
                    strcmp(json_object_get_string(v), type_names[t]) == 0)
                        return (gh_param_type) t;
        return 0;
}

static int parse_bounds(json_object *e, spec *p, char *why, size_t why_size) {
        json_object *lo = member(e, "min"), *hi = member(e, "max");

        if (p->type == GH_PARAM_INT) {
                if (!get_int64(lo, &p->int_min) || !get_int64(hi, &p->int_max) || p->int_min > p->int_max)
                        return BAD("\"min\" and \"max\" must be integers, min <= max");
        } else if (!get_number(lo, &p->float_min) || !get_number(hi, &p->float_max) || p->float_min > p->float_max)
                return BAD("\"min\" and \"max\" must be finite numbers, min <= max");
        return 0;
}

static int parse_max_length(json_object *e, spec *p, char *why, size_t why_size) {
        int64_t n = 0;

        if (!get_int64(member(e, "max_length"), &n) || n < 1 || n > GH_PLUGIN_STRING_MAX)
                return BAD("\"max_length\" must be an integer 1..%d", GH_PLUGIN_STRING_MAX);
        p->max_length = (size_t) n;
        return 0;
}

static int parse_choices(json_object *e, spec *p, char *why, size_t why_size) {
        json_object *c = member(e, "choices");
        size_t n = json_object_is_type(c, json_type_array) ? json_object_array_length(c) : 0;

        if (n == 0 || n > GH_PLUGIN_CHOICES_MAX)
                return BAD("an enum needs \"choices\", an array of 1..%d names", GH_PLUGIN_CHOICES_MAX);
        for (size_t i = 0; i < n; i++) {
                json_object *s = json_object_array_get_idx(c, i);
                if (!json_object_is_type(s, json_type_string) ||
                    !name_ok(json_object_get_string(s), (size_t) json_object_get_string_len(s), true))
                        return BAD("choice %zu is not a name of [a-z][a-z0-9_-]*", i);
        }
        p->choices = c;
        return 0;
}

/* An optional parameter's default must pass as a request's value would. */
static int parse_default(json_object *e, spec *p, char *why, size_t why_size) {
        char sub[WHY_MAX];
        json_object *v = NULL;

        if (p->required || p->type == GH_PARAM_IMAGE || p->type == GH_PARAM_MODEL)
                return 0;
        p->def = member(e, "default");
        if (!p->def)
                return BAD("an optional parameter needs a \"default\"");
        int r = check_value(p, p->def, NULL, &v, sub, sizeof(sub));
        json_object_put(v);
        if (r == -EINVAL)
                return BAD("bad \"default\": %s", sub);
        return r;
}

static int parse_spec(json_object *e, spec *p, char *why, size_t why_size) {
        json_object *name = member(e, "name"), *required = member(e, "required");
        int r = 0;

        *p = (spec) {0};
        if (!json_object_is_type(e, json_type_object))
                return BAD("not an object");
        if (!json_object_is_type(name, json_type_string) ||
            !name_ok(json_object_get_string(name), (size_t) json_object_get_string_len(name), false))
                return BAD("no \"name\" of [a-z][a-z0-9_]* (at most %d bytes)", GH_PLUGIN_NAME_MAX);
        p->name = json_object_get_string(name);
        p->type = type_from_json(member(e, "type"));
        if (p->type == 0)
                return BAD("no known \"type\"");
        if (!json_object_is_type(required, json_type_boolean))
                return BAD("\"required\" must be a boolean");
        p->required = json_object_get_boolean(required);
        if (p->type == GH_PARAM_INT || p->type == GH_PARAM_FLOAT)
                r = parse_bounds(e, p, why, why_size);
        else if (p->type == GH_PARAM_STRING)
                r = parse_max_length(e, p, why, why_size);
        else if (p->type == GH_PARAM_ENUM)
                r = parse_choices(e, p, why, why_size);
        return r < 0 ? r : parse_default(e, p, why, why_size);
}

static const spec *find_spec(const spec *specs, size_t n, const char *name) {
        for (size_t i = 0; i < n; i++)
                if (strcmp(specs[i].name, name) == 0)
                        return &specs[i];
        return NULL;
}

static int parse_table(json_object *table, spec *specs, size_t *ret_n, const out *o) {
        char why[WHY_MAX];
        size_t n;

        if (!json_object_is_type(table, json_type_array))
                return fail(o, -EPROTO, NULL, "malformed parameter table: not an array");
        n = json_object_array_length(table);
        if (n > GH_PLUGIN_PARAMS_MAX)
                return fail(o, -EPROTO, NULL, "malformed parameter table: more than %d parameters",
                            GH_PLUGIN_PARAMS_MAX);
        for (size_t i = 0; i < n; i++) {
                int r = parse_spec(json_object_array_get_idx(table, i), &specs[i], why, sizeof(why));
                if (r == -EPROTO && specs[i].name)
                        return fail(o, r, specs[i].name, "malformed parameter table: parameter \"%s\": %s",
                                    specs[i].name, why);
                if (r == -EPROTO)
                        return fail(o, r, NULL, "malformed parameter table: entry %zu: %s", i, why);
                if (r < 0)
                        return r;
                if (find_spec(specs, i, specs[i].name))
                        return fail(o, -EPROTO, specs[i].name, "malformed parameter table: \"%s\" appears twice",
                                    specs[i].name);
        }
        *ret_n = n;
        return 0;
}

/* ---- the request ------------------------------------------------------- */

static int check_names(const spec *specs, size_t n, json_object *request, const out *o) {
        if (!request)
                return 0;
        if (!json_object_is_type(request, json_type_object))
                return fail(o, -EINVAL, NULL, "the parameters must be a JSON object, not %s", json_kind(request));
        if (json_object_object_length(request) > GH_PLUGIN_PARAMS_MAX)
                return fail(o, -EINVAL, NULL, "too many parameters (%d); a pipeline takes at most %d",
                            json_object_object_length(request), GH_PLUGIN_PARAMS_MAX);
        json_object_object_foreach(request, key, val) {
                list l = {0};
                if (find_spec(specs, n, key))
                        continue;
                for (size_t i = 0; i < n; i++)
                        list_add(&l, specs[i].name);
                const char *shown = SHOW(key, strlen(key));
                if (n == 0)
                        return fail(o, -EINVAL, shown, "unknown parameter; this pipeline takes none");
                return fail(o, -EINVAL, shown, "unknown parameter; this pipeline takes: %s", l.s);
        }
        return 0;
}

static int normalize(const spec *specs, size_t n, json_object *request, gh_params_images *images, json_object **ret,
                     const out *o) {
        _cleanup_json_ json_object *norm = json_object_new_object();
        char why[WHY_MAX];

        if (!norm)
                return -ENOMEM;
        for (size_t i = 0; i < n; i++) {
                const spec *p = &specs[i];
                json_object *given = NULL, *v = NULL;
                bool found = request && json_object_object_get_ex(request, p->name, &given);

                if (!found && p->required)
                        return fail(o, -EINVAL, p->name, "required parameter missing (%s)", type_names[p->type]);
                if (found || p->def) {
                        /* (defaults passed in parse_default()) */
                        int r = check_value(p, found ? given : p->def, images, &v, why, sizeof(why));
                        if (r == -EINVAL)
                                return fail(o, r, p->name, "%s", why);
                        if (r < 0)
                                return r;
                }
                if (!v && json_object_object_add(norm, p->name, NULL) < 0)
                        return -ENOMEM;
                if (v && add(norm, p->name, v) < 0)
                        return -ENOMEM;
        }
        *ret = TAKE_PTR(norm);
        return 0;
}

void gh_params_images_close(gh_params_images *images) {
        gh_close_many(images->made, images->n_made);
        images->n_made = 0;
}

int gh_params_validate(json_object *table, json_object *request, gh_params_images *images,
                       json_object **ret_normalized, char *ret_param, size_t param_size, char *ret_reason,
                       size_t reason_size) {
        const out o = {ret_param, param_size, ret_reason, reason_size};
        gh_params_images none = {0}, *im = images ? images : &none;
        spec specs[GH_PLUGIN_PARAMS_MAX];
        size_t n = 0, made_before = im->n_made;
        int r;

        if (!ret_normalized)
                return fail(&o, -EINVAL, NULL, "no place for the result");
        r = parse_table(table, specs, &n, &o);
        if (r >= 0)
                r = check_names(specs, n, request, &o);
        if (r >= 0)
                r = normalize(specs, n, request, im, ret_normalized, &o);
        if (r < 0 || !images) { /* the memfds made by this call */
                gh_close_many(im->made + made_before, im->n_made - made_before);
                im->n_made = made_before;
        }
        if (r == -ENOMEM)
                return fail(&o, r, NULL, "out of memory");
        if (r < 0 && r != -EINVAL && r != -EPROTO)
                return fail(&o, r, NULL, "cannot hold an image sent inline: %s", strerror(-r));
        return r;
}

/* ---- lookups ----------------------------------------------------------- */

static bool type_fits(const char *accessor, const char *type) {
        return strcmp(accessor, type) == 0 ||
               (strcmp(accessor, "string") == 0 && (strcmp(type, "enum") == 0 || strcmp(type, "model") == 0));
}

int gh_params_lookup(json_object *table, json_object *normalized, const char *name, const char *type,
                     json_object **ret) {
        json_object *v = NULL;

        if (!name || !type || !ret || !json_object_is_type(table, json_type_array))
                return -EINVAL;
        for (size_t i = 0; i < json_object_array_length(table); i++) {
                json_object *e = json_object_array_get_idx(table, i), *t = member(e, "type");
                if (!gh_streq(json_object_get_string(member(e, "name")), name))
                        continue;
                if (!json_object_is_type(t, json_type_string) || !type_fits(type, json_object_get_string(t)))
                        return -EINVAL;
                if (!json_object_object_get_ex(normalized, name, &v) || !v)
                        return -ENOENT;
                *ret = v;
                return 0;
        }
        return -EINVAL;
}

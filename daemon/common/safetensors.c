/* Strict safetensors header reader. See safetensors.h.
 *
 * Parsing runs in three passes over the header:
 *  1. a scanner of our own checks the JSON text against RFC 8259 (json-c's
 *     strict mode still takes single quotes, NaN, raw control characters,
 *     overlong UTF-8 and encoded surrogates, and saturates integers that do
 *     not fit in 64 bits), notes where each top-level key is and how many
 *     fields each entry has, and bounds the structure before anything is
 *     built from it: no more top-level keys than max_tensors + 1, at most 3
 *     fields per tensor entry, max_metadata per "__metadata__", arrays only
 *     in entries and of at most GH_ST_MAX_DIMS elements, nothing nested
 *     deeper than header -> entry -> array. json-c's tree of a 100 MiB
 *     header can then not grow beyond a small multiple of what a valid file
 *     needs;
 *  2. json-c builds the tree;
 *  3. the entries are checked field by field, then the byte ranges together.
 * Duplicate keys: json-c keeps the last value of a repeated key silently,
 * which would let two readers of one file see different tensors. The
 * scanner's list of top-level keys is decoded and sorted to find repeated
 * tensor names, and its per-entry field counts are compared with json-c's
 * (which has fewer members exactly when a key repeats). Key names with an
 * escaped NUL are refused in the scanner: json-c's keys are C strings.
 *
 * What is accepted, and why:
 *  - The header must start with '{' (the spec's "MUST"), and may be padded
 *    after the JSON object with JSON whitespace, like the reference reader
 *    (serde_json) allows; any other trailing byte, NUL padding included, is
 *    refused, so nothing can hide after the JSON.
 *  - Alignment is not required. The reference writer pads the header with
 *    spaces so that 8 + N is a multiple of 8 and orders tensors by
 *    decreasing element size, which aligns every tensor. Files from writers
 *    that predate the padding (as used for many SD 1.x conversions) and
 *    from some other writers (MLX; published LLM files with an odd N) are
 *    not aligned, and the reference reader, which checks no alignment,
 *    loads them. Misalignment is no safety problem for us: tensor
 *    bytes are read through the fd into our own buffers, never cast in
 *    place. gh_st_file.aligned says whether a mapping could be used as is.
 *  - No holes and no overlaps: sorted by offset, the tensors must cover the
 *    data area exactly, from 0 to the end of the file. This is the spec's
 *    rule ("the byte buffer needs to be entirely indexed, and cannot contain
 *    holes") and what the reference reader enforces, so every file that
 *    loads in the usual tools passes; in exchange no byte of a file is
 *    unaccounted for and no two tensors alias. Zero-size tensors are fine
 *    anywhere on the boundary between two others.
 *  - Tensor entries may hold only "dtype", "shape" and "data_offsets";
 *    "__metadata__" only string values. Names must be non-empty.
 *  - Shapes and offsets are JSON integers (no fraction, no exponent) that
 *    fit in 64 bits; all arithmetic on them is overflow-checked.
 * The result lists tensors sorted by name, for gh_st_find()'s binary
 * search. Messages name the tensor as its JSON key, with quotes and control
 * characters escaped and long names shortened. */
#include <fcntl.h>
#include <inttypes.h>
#include <json-c/json.h>
#include <limits.h>
#include <stdarg.h>
#include <string.h>
#include <sys/stat.h>

#include "safetensors.h"
#include "utf8.h"
#include "util.h"

#define METADATA_KEY "__metadata__"
#define ENTRY_FIELDS 3      /* dtype, shape, data_offsets */
#define SHOW_MAX 96         /* bytes of a name shown in a message */
#define SHOW_BUF (SHOW_MAX * 6 + 8)

static const char *const dtype_names[_GH_DTYPE_MAX] = {
        [GH_DTYPE_BOOL] = "BOOL",       [GH_DTYPE_U8] = "U8",           [GH_DTYPE_I8] = "I8",
        [GH_DTYPE_F8_E5M2] = "F8_E5M2", [GH_DTYPE_F8_E4M3] = "F8_E4M3", [GH_DTYPE_F8_E8M0] = "F8_E8M0",
        [GH_DTYPE_I16] = "I16",         [GH_DTYPE_U16] = "U16",         [GH_DTYPE_F16] = "F16",
        [GH_DTYPE_BF16] = "BF16",       [GH_DTYPE_I32] = "I32",         [GH_DTYPE_U32] = "U32",
        [GH_DTYPE_F32] = "F32",         [GH_DTYPE_F64] = "F64",         [GH_DTYPE_I64] = "I64",
        [GH_DTYPE_U64] = "U64",         [GH_DTYPE_C64] = "C64",
};

static const uint8_t dtype_sizes[_GH_DTYPE_MAX] = {
        [GH_DTYPE_BOOL] = 1, [GH_DTYPE_U8] = 1,  [GH_DTYPE_I8] = 1,   [GH_DTYPE_F8_E5M2] = 1,
        [GH_DTYPE_F8_E4M3] = 1, [GH_DTYPE_F8_E8M0] = 1, [GH_DTYPE_I16] = 2, [GH_DTYPE_U16] = 2,
        [GH_DTYPE_F16] = 2,  [GH_DTYPE_BF16] = 2, [GH_DTYPE_I32] = 4, [GH_DTYPE_U32] = 4,
        [GH_DTYPE_F32] = 4,  [GH_DTYPE_F64] = 8,  [GH_DTYPE_I64] = 8, [GH_DTYPE_U64] = 8,
        [GH_DTYPE_C64] = 8,
};

size_t gh_dtype_size(gh_dtype t) {
        return t >= 0 && t < _GH_DTYPE_MAX ? dtype_sizes[t] : 0;
}

const char *gh_dtype_to_string(gh_dtype t) {
        return t >= 0 && t < _GH_DTYPE_MAX ? dtype_names[t] : NULL;
}

gh_dtype gh_dtype_from_string(const char *s) {
        for (int i = 0; s && i < _GH_DTYPE_MAX; i++)
                if (strcmp(s, dtype_names[i]) == 0)
                        return (gh_dtype) i;
        return _GH_DTYPE_INVALID;
}

gh_st_limits gh_st_limits_default(void) {
        return (gh_st_limits) {
                .max_header_size = UINT64_C(100) << 20,
                .max_tensors = 65536,
                .max_dims = GH_ST_MAX_DIMS,
                .max_name_len = 4096,
                .max_json_depth = GH_ST_JSON_DEPTH,
                .max_metadata = 65536,
        };
}

/* ---- messages ---------------------------------------------------------- */

typedef struct errbuf {
        char *s;
        size_t size;
} errbuf;

_printf_(3, 4) static int fail(errbuf *e, int r, const char *fmt, ...) {
        va_list ap;

        if (e->s && e->size > 0) {
                va_start(ap, fmt);
                vsnprintf(e->s, e->size, fmt, ap);
                va_end(ap);
        }
        return r;
}

/* Writes |s| (|len| bytes) into |buf| for a one-line message: '"', '\' and
 * control characters escaped as in JSON, shortened to SHOW_MAX bytes at a
 * UTF-8 character boundary. Returns |buf|. */
static const char *show(char *buf, size_t size, const char *s, size_t len) {
        size_t n = 0, cut = len;

        if (cut > SHOW_MAX) {
                cut = SHOW_MAX;
                while (cut > 0 && ((unsigned char) s[cut] & 0xC0) == 0x80)
                        cut--;
        }
        for (size_t i = 0; i < cut && n + 8 < size; i++) {
                unsigned char c = (unsigned char) s[i];
                if (c == '"' || c == '\\')
                        n += (size_t) snprintf(buf + n, size - n, "\\%c", c);
                else if (c < 0x20 || c == 0x7f)
                        n += (size_t) snprintf(buf + n, size - n, "\\u%04x", c);
                else
                        buf[n++] = (char) c;
        }
        if (cut < len && n + 4 < size)
                n += (size_t) snprintf(buf + n, size - n, "...");
        buf[n < size ? n : size - 1] = 0;
        return buf;
}
#define SHOW(s) show((char[SHOW_BUF]) {0}, SHOW_BUF, (s), strlen(s))
#define SHOW_N(s, n) show((char[SHOW_BUF]) {0}, SHOW_BUF, (s), (n))

/* Like show(), for text as it stands between quotes in the header (escapes
 * not decoded): it is copied as is, cut only between whole escapes and
 * characters. */
static const char *show_raw(char *buf, size_t size, const char *s, size_t len) {
        size_t n = 0, i = 0;

        while (i < len) {
                size_t k = s[i] != '\\' ? 1 : i + 1 < len && s[i + 1] == 'u' ? 6 : 2;
                while (s[i] != '\\' && i + k < len && ((unsigned char) s[i + k] & 0xC0) == 0x80)
                        k++;
                if (k > len - i)
                        k = len - i;
                if (n + k > SHOW_MAX || n + k + 4 > size)
                        break;
                for (size_t j = 0; j < k; j++)
                        buf[n++] = (unsigned char) s[i + j] < 0x20 ? '?' : s[i + j];
                i += k;
        }
        if (i < len && n + 4 <= size)
                n += (size_t) snprintf(buf + n, size - n, "...");
        buf[n] = 0;
        return buf;
}
#define SHOW_RAW(s, n) show_raw((char[SHOW_MAX + 8]) {0}, SHOW_MAX + 8, (s), (n))

/* "[2, 3, 4]" */
static const char *show_shape(char *buf, size_t size, const uint64_t *shape, unsigned n) {
        size_t k = (size_t) snprintf(buf, size, "[");
        for (unsigned i = 0; i < n && k < size; i++)
                k += (size_t) snprintf(buf + k, size - k, "%s%" PRIu64, i ? ", " : "", shape[i]);
        if (k < size)
                snprintf(buf + k, size - k, "]");
        return buf;
}
#define SHOW_SHAPE(t) show_shape((char[GH_ST_MAX_DIMS * 22 + 4]) {0}, GH_ST_MAX_DIMS * 22 + 4, (t)->shape, (t)->n_dims)

/* ---- pass 1: the scanner ----------------------------------------------- */

typedef struct st_member {
        size_t key_off, key_len; /* raw key text between the quotes */
        bool key_escaped;        /* has a backslash escape: decode with json-c */
        bool metadata;           /* the raw key is exactly __metadata__ */
        size_t n_fields;         /* keys of its value, if that is an object */
        char *name;              /* decoded key, filled in after the scan */
} st_member;

typedef struct st_frame {
        bool object;
        size_t items, cap;
} st_frame;

enum { EXPECT_VALUE, EXPECT_FIRST_VALUE, EXPECT_KEY, EXPECT_FIRST_KEY, EXPECT_COLON, AFTER_VALUE };

typedef struct scanner {
        const char *text;
        size_t len, pos;
        const gh_st_limits *limits;
        errbuf *err;
        st_frame stack[GH_ST_JSON_DEPTH];
        unsigned depth;
        int state;
        size_t field_off, field_len; /* raw key of the current entry field */
        st_member *members;
        size_t n_members, cap_members;
} scanner;

static void members_free(st_member *m, size_t n) {
        for (size_t i = 0; m && i < n; i++)
                free(m[i].name);
        free(m);
}

static st_member *current_member(const scanner *sc) {
        return sc->n_members > 0 ? &sc->members[sc->n_members - 1] : NULL;
}

/* "tensor "x": " or "__metadata__: " inside a top-level entry, else "". */
static const char *scan_context(const scanner *sc, char *buf, size_t size) {
        const st_member *m = current_member(sc);

        /* Inside a top-level value, or about to read one. */
        if (!m || (sc->depth < 2 && !(sc->depth == 1 && sc->state == EXPECT_VALUE)))
                return "";
        if (m->metadata)
                return METADATA_KEY ": ";
        snprintf(buf, size, "tensor \"%s\": ", SHOW_RAW(sc->text + m->key_off, m->key_len));
        return buf;
}
#define CONTEXT(sc) scan_context((sc), (char[SHOW_MAX + 32]) {0}, SHOW_MAX + 32)
#define FIELD(sc) SHOW_RAW((sc)->text + (sc)->field_off, (sc)->field_len)

static int syntax_error(scanner *sc, const char *what) {
        return fail(sc->err, -EBADMSG, "%sheader is not valid JSON at byte %zu: %s", CONTEXT(sc), sc->pos, what);
}

static void skip_ws(scanner *sc) {
        while (sc->pos < sc->len && strchr(" \t\n\r", sc->text[sc->pos]) && sc->text[sc->pos])
                sc->pos++;
}

static int hex4(const char *p, size_t n, unsigned *ret) {
        unsigned v = 0;

        if (n < 4)
                return -1;
        for (int i = 0; i < 4; i++) {
                char c = p[i];
                int d = c >= '0' && c <= '9' ? c - '0' : c >= 'a' && c <= 'f' ? c - 'a' + 10
                      : c >= 'A' && c <= 'F' ? c - 'A' + 10 : -1;
                if (d < 0)
                        return -1;
                v = v * 16 + (unsigned) d;
        }
        *ret = v;
        return 0;
}

/* A \uXXXX escape at sc->pos (just after the backslash and 'u'), with the
 * low half of a surrogate pair if it is the high half. */
static int scan_unicode_escape(scanner *sc, bool *has_nul) {
        unsigned u, lo;

        if (hex4(sc->text + sc->pos, sc->len - sc->pos, &u) < 0)
                return syntax_error(sc, "bad \\u escape");
        sc->pos += 4;
        if (u == 0)
                *has_nul = true;
        if (u >= 0xDC00 && u <= 0xDFFF)
                return syntax_error(sc, "unpaired surrogate in a \\u escape");
        if (u < 0xD800 || u > 0xDBFF)
                return 0;
        if (sc->len - sc->pos < 6 || sc->text[sc->pos] != '\\' || sc->text[sc->pos + 1] != 'u' ||
            hex4(sc->text + sc->pos + 2, sc->len - sc->pos - 2, &lo) < 0 || lo < 0xDC00 || lo > 0xDFFF)
                return syntax_error(sc, "unpaired surrogate in a \\u escape");
        sc->pos += 6;
        return 0;
}

/* A string starting at the quote at sc->pos; leaves sc->pos after it. */
static int scan_string(scanner *sc, bool *ret_escaped, bool *ret_nul) {
        bool escaped = false, nul = false;

        sc->pos++;
        for (;;) {
                if (sc->pos >= sc->len)
                        return syntax_error(sc, "unterminated string");
                unsigned char c = (unsigned char) sc->text[sc->pos];
                if (c == '"')
                        break;
                if (c < 0x20)
                        return syntax_error(sc, "control character in a string");
                if (c == '\\') {
                        escaped = true;
                        char e = sc->pos + 1 < sc->len ? sc->text[sc->pos + 1] : 0;
                        sc->pos += 2;
                        if (e == 'u') {
                                int r = scan_unicode_escape(sc, &nul);
                                if (r < 0)
                                        return r;
                        } else if (!e || !strchr("\"\\/bfnrt", e)) {
                                sc->pos -= 2;
                                return syntax_error(sc, "bad escape in a string");
                        }
                        continue;
                }
                size_t k = gh_utf8_len((const unsigned char *) sc->text + sc->pos, sc->len - sc->pos);
                if (k == 0)
                        return syntax_error(sc, "invalid UTF-8");
                sc->pos += k;
        }
        sc->pos++;
        *ret_escaped = escaped;
        *ret_nul = nul;
        return 0;
}

static bool is_digit(const scanner *sc) {
        return sc->pos < sc->len && sc->text[sc->pos] >= '0' && sc->text[sc->pos] <= '9';
}

static bool skip_digits(scanner *sc) {
        size_t start = sc->pos;
        while (is_digit(sc))
                sc->pos++;
        return sc->pos > start;
}

/* A number (RFC 8259 grammar). Integers that do not fit in 64 bits are
 * refused here: json-c would saturate them. */
static int scan_number(scanner *sc) {
        size_t start = sc->pos;
        bool negative = false, overflow = false, integer = true;
        uint64_t v = 0;

        if (sc->text[sc->pos] == '-') {
                negative = true;
                sc->pos++;
        }
        if (!is_digit(sc))
                return syntax_error(sc, "bad number");
        if (sc->text[sc->pos] == '0') {
                sc->pos++;
                if (is_digit(sc))
                        return syntax_error(sc, "number with a leading zero");
        } else
                while (is_digit(sc)) {
                        overflow |= __builtin_mul_overflow(v, 10, &v) ||
                                    __builtin_add_overflow(v, (uint64_t) (sc->text[sc->pos] - '0'), &v);
                        sc->pos++;
                }
        if (sc->pos < sc->len && sc->text[sc->pos] == '.') {
                integer = false;
                sc->pos++;
                if (!skip_digits(sc))
                        return syntax_error(sc, "bad number");
        }
        if (sc->pos < sc->len && (sc->text[sc->pos] == 'e' || sc->text[sc->pos] == 'E')) {
                integer = false;
                sc->pos++;
                if (sc->pos < sc->len && (sc->text[sc->pos] == '+' || sc->text[sc->pos] == '-'))
                        sc->pos++;
                if (!skip_digits(sc))
                        return syntax_error(sc, "bad number");
        }
        if (integer && !negative && overflow)
                return fail(sc->err, -EBADMSG, "%sinteger %s does not fit in 64 bits", CONTEXT(sc),
                            SHOW_RAW(sc->text + start, sc->pos - start));
        return 0;
}

static int scan_literal(scanner *sc) {
        static const char *const words[] = {"true", "false", "null"};

        for (size_t i = 0; i < ELEMENTSOF(words); i++) {
                size_t n = strlen(words[i]);
                if (sc->len - sc->pos >= n && memcmp(sc->text + sc->pos, words[i], n) == 0) {
                        sc->pos += n;
                        return 0;
                }
        }
        return syntax_error(sc, "unexpected character");
}

/* Counts one more item (array element or object key) in the innermost
 * container against its cap. */
static int count_item(scanner *sc) {
        st_frame *f = &sc->stack[sc->depth - 1];
        const st_member *m = current_member(sc);

        if (++f->items <= f->cap)
                return 0;
        switch (sc->depth) {
        case 1:
                return fail(sc->err, -E2BIG, "header lists more than %zu tensors", sc->limits->max_tensors);
        case 2:
                if (m->metadata)
                        return fail(sc->err, -E2BIG, METADATA_KEY " has more than %zu entries",
                                    sc->limits->max_metadata);
                return fail(sc->err, -EBADMSG, "%sentry has more than %d fields", CONTEXT(sc), ENTRY_FIELDS);
        default:
                if (sc->field_len == 5 && memcmp(sc->text + sc->field_off, "shape", 5) == 0)
                        return fail(sc->err, -E2BIG, "%sshape has more than %d dimensions", CONTEXT(sc),
                                    GH_ST_MAX_DIMS);
                return fail(sc->err, -EBADMSG, "%s\"%s\" has more than %zu elements", CONTEXT(sc), FIELD(sc),
                            f->cap);
        }
}

/* Which containers may open where; see the overview. Returns the cap on
 * the new container's items. */
static int container_cap(scanner *sc, bool object, size_t *ret_cap) {
        unsigned depth = sc->depth + 1;
        const st_member *m = current_member(sc);

        if (depth > GH_ST_JSON_DEPTH || depth > sc->limits->max_json_depth)
                return fail(sc->err, depth > GH_ST_JSON_DEPTH ? -EBADMSG : -E2BIG,
                            "%sJSON nested more than %u levels deep", CONTEXT(sc),
                            depth > GH_ST_JSON_DEPTH ? GH_ST_JSON_DEPTH : sc->limits->max_json_depth);
        if (depth == 1)
                *ret_cap = sc->limits->max_tensors < SIZE_MAX ? sc->limits->max_tensors + 1 : SIZE_MAX;
        else if (depth == 2 && m->metadata) {
                if (!object)
                        return fail(sc->err, -EBADMSG, METADATA_KEY " is not an object");
                *ret_cap = sc->limits->max_metadata;
        } else if (depth == 2) {
                if (!object)
                        return fail(sc->err, -EBADMSG, "%sentry is not an object", CONTEXT(sc));
                *ret_cap = ENTRY_FIELDS;
        } else if (m->metadata)
                return fail(sc->err, -EBADMSG, "%svalue of \"%s\" is not a string", CONTEXT(sc), FIELD(sc));
        else if (object)
                return fail(sc->err, -EBADMSG, "%s\"%s\" is an object", CONTEXT(sc), FIELD(sc));
        else
                *ret_cap = GH_ST_MAX_DIMS; /* a shape over the limit gets its message later */
        return 0;
}

static int open_container(scanner *sc, bool object) {
        size_t cap = 0;
        int r = container_cap(sc, object, &cap);

        if (r < 0)
                return r;
        sc->stack[sc->depth++] = (st_frame) {.object = object, .cap = cap};
        sc->pos++;
        sc->state = object ? EXPECT_FIRST_KEY : EXPECT_FIRST_VALUE;
        return 0;
}

static int add_member(scanner *sc, size_t key_off, size_t key_len, bool escaped) {
        if (sc->n_members == sc->cap_members) {
                size_t cap = sc->cap_members ? sc->cap_members * 2 : 64;
                st_member *m = reallocarray(sc->members, cap, sizeof(*m));
                if (!m)
                        return fail(sc->err, -ENOMEM, "out of memory");
                sc->members = m;
                sc->cap_members = cap;
        }
        sc->members[sc->n_members++] = (st_member) {
                .key_off = key_off,
                .key_len = key_len,
                .key_escaped = escaped,
                .metadata = key_len == strlen(METADATA_KEY) && memcmp(sc->text + key_off, METADATA_KEY, key_len) == 0,
        };
        return 0;
}

/* An object key: the top-level ones are the tensor names, the next level
 * an entry's fields or the metadata keys. */
static int scan_key(scanner *sc) {
        size_t start = sc->pos;
        bool escaped, nul;
        int r;

        if (sc->text[sc->pos] != '"')
                return syntax_error(sc, "expected a quoted key");
        r = count_item(sc);
        if (r < 0)
                return r;
        r = scan_string(sc, &escaped, &nul);
        if (r < 0)
                return r;
        if (nul && sc->depth == 1)
                return fail(sc->err, -EBADMSG, "tensor name \"%s\" contains a NUL character",
                            SHOW_RAW(sc->text + start + 1, sc->pos - start - 2));
        if (nul)
                return fail(sc->err, -EBADMSG, "%skey \"%s\" contains a NUL character", CONTEXT(sc),
                            SHOW_RAW(sc->text + start + 1, sc->pos - start - 2));
        if (sc->depth == 1)
                r = add_member(sc, start + 1, sc->pos - start - 2, escaped);
        else if (sc->depth == 2) {
                current_member(sc)->n_fields++;
                sc->field_off = start + 1;
                sc->field_len = sc->pos - start - 2;
        }
        sc->state = EXPECT_COLON;
        return r;
}

static int scan_value(scanner *sc) {
        char c = sc->text[sc->pos];
        bool escaped, nul;
        int r;

        if (c == ']' && sc->state == EXPECT_FIRST_VALUE) {
                sc->depth--;
                sc->pos++;
                sc->state = AFTER_VALUE;
                return 0;
        }
        if (sc->depth > 0 && !sc->stack[sc->depth - 1].object) {
                r = count_item(sc);
                if (r < 0)
                        return r;
        }
        if (c == '{' || c == '[')
                return open_container(sc, c == '{');
        if (sc->depth == 0)
                return syntax_error(sc, "the header is not a JSON object");
        if (c == '"')
                r = scan_string(sc, &escaped, &nul);
        else if (c == '-' || (c >= '0' && c <= '9'))
                r = scan_number(sc);
        else
                r = scan_literal(sc);
        sc->state = AFTER_VALUE;
        return r;
}

static int scan_after_value(scanner *sc) {
        char c = sc->text[sc->pos];
        st_frame *f;

        if (sc->depth == 0)
                return fail(sc->err, -EBADMSG,
                            "header has data after its JSON object at byte %zu (only whitespace may pad it)", sc->pos);
        f = &sc->stack[sc->depth - 1];
        if (c == ',') {
                sc->pos++;
                sc->state = f->object ? EXPECT_KEY : EXPECT_VALUE;
                return 0;
        }
        if (c != (f->object ? '}' : ']'))
                return syntax_error(sc, f->object ? "expected ',' or '}'" : "expected ',' or ']'");
        sc->depth--;
        sc->pos++;
        return 0;
}

static int scan_step(scanner *sc) {
        char c = sc->text[sc->pos];

        if (sc->state == EXPECT_FIRST_KEY && c == '}') {
                sc->depth--;
                sc->pos++;
                sc->state = AFTER_VALUE;
                return 0;
        }
        switch (sc->state) {
        case EXPECT_FIRST_KEY:
        case EXPECT_KEY:
                return scan_key(sc);
        case EXPECT_COLON:
                if (c != ':')
                        return syntax_error(sc, "expected ':'");
                sc->pos++;
                sc->state = EXPECT_VALUE;
                return 0;
        case AFTER_VALUE:
                return scan_after_value(sc);
        default:
                return scan_value(sc);
        }
}

/* Pass 1 over the |len| bytes of header text; fills sc->members. */
static int scan_header(scanner *sc) {
        if (sc->len == 0 || sc->text[0] != '{')
                return fail(sc->err, -EBADMSG, "header does not start with '{'");
        sc->state = EXPECT_VALUE;
        for (;;) {
                skip_ws(sc);
                if (sc->pos == sc->len)
                        break;
                int r = scan_step(sc);
                if (r < 0)
                        return r;
        }
        if (sc->depth > 0 || sc->state != AFTER_VALUE)
                return syntax_error(sc, "truncated JSON");
        return 0;
}

/* ---- pass 2: json-c ---------------------------------------------------- */

static int parse_json(const char *text, size_t len, unsigned depth, json_object **ret, errbuf *e) {
        json_tokener *tok = json_tokener_new_ex((int) depth + 1); /* + 1: scalars count as a level */
        json_object *o;

        if (!tok)
                return fail(e, -ENOMEM, "out of memory");
        json_tokener_set_flags(tok, JSON_TOKENER_STRICT | JSON_TOKENER_VALIDATE_UTF8);
        o = json_tokener_parse_ex(tok, text, (int) len);
        enum json_tokener_error je = json_tokener_get_error(tok);
        json_tokener_free(tok);
        if (!o || je != json_tokener_success || !json_object_is_type(o, json_type_object)) {
                json_object_put(o);
                return fail(e, -EBADMSG, "header is not valid JSON: %s", json_tokener_error_desc(je));
        }
        *ret = o;
        return 0;
}

/* The key of |m| as a C string, escapes decoded. */
static int decode_key(const char *text, const st_member *m, json_tokener *tok, char **ret) {
        if (!m->key_escaped) {
                *ret = strndup(text + m->key_off, m->key_len);
                return *ret ? 0 : -ENOMEM;
        }
        json_tokener_reset(tok);
        json_object *s = json_tokener_parse_ex(tok, text + m->key_off - 1, (int) m->key_len + 2);
        if (!s || !json_object_is_type(s, json_type_string)) {
                json_object_put(s);
                return -EBADMSG;
        }
        *ret = strdup(json_object_get_string(s));
        json_object_put(s);
        return *ret ? 0 : -ENOMEM;
}

static int decode_keys(const char *text, st_member *m, size_t n, errbuf *e) {
        json_tokener *tok = json_tokener_new();
        int r = 0;

        if (!tok)
                return fail(e, -ENOMEM, "out of memory");
        json_tokener_set_flags(tok, JSON_TOKENER_STRICT | JSON_TOKENER_VALIDATE_UTF8);
        for (size_t i = 0; i < n && r >= 0; i++)
                r = decode_key(text, &m[i], tok, &m[i].name);
        json_tokener_free(tok);
        if (r == -ENOMEM)
                return fail(e, r, "out of memory");
        if (r < 0)
                return fail(e, r, "header has a key that cannot be decoded");
        return 0;
}

static int cmp_member_ptr(const void *a, const void *b) {
        return strcmp((*(st_member *const *) a)->name, (*(st_member *const *) b)->name);
}

/* Repeated top-level keys, by sorting the decoded names; then repeated keys
 * within an entry, by comparing json-c's member count with the scanner's. */
static int check_duplicates(st_member *m, size_t n, json_object *root, errbuf *e) {
        _cleanup_free_ st_member **sorted = reallocarray(NULL, n ? n : 1, sizeof(*sorted));

        if (!sorted)
                return fail(e, -ENOMEM, "out of memory");
        for (size_t i = 0; i < n; i++)
                sorted[i] = &m[i];
        qsort(sorted, n, sizeof(*sorted), cmp_member_ptr);
        for (size_t i = 1; i < n; i++)
                if (strcmp(sorted[i - 1]->name, sorted[i]->name) == 0)
                        return gh_streq(sorted[i]->name, METADATA_KEY)
                                       ? fail(e, -EBADMSG, "\"" METADATA_KEY "\" appears twice")
                                       : fail(e, -EBADMSG, "duplicate tensor name \"%s\"", SHOW(sorted[i]->name));
        if ((size_t) json_object_object_length(root) != n)
                return fail(e, -EBADMSG, "header is inconsistent: %zu keys scanned, %d parsed", n,
                            json_object_object_length(root));
        for (size_t i = 0; i < n; i++) {
                json_object *v;
                if (!json_object_object_get_ex(root, m[i].name, &v))
                        return fail(e, -EBADMSG, "header is inconsistent: key \"%s\" lost", SHOW(m[i].name));
                size_t have = json_object_is_type(v, json_type_object) ? (size_t) json_object_object_length(v) : 0;
                if (have == m[i].n_fields)
                        continue;
                if (gh_streq(m[i].name, METADATA_KEY))
                        return fail(e, -EBADMSG, METADATA_KEY ": a key appears twice");
                return fail(e, -EBADMSG, "tensor \"%s\": a field appears twice in its entry", SHOW(m[i].name));
        }
        return 0;
}

/* ---- pass 3: entries --------------------------------------------------- */

/* A JSON integer >= 0. The scanner has refused integers beyond 64 bits, so
 * json-c holds the exact value. */
static bool get_u64(json_object *v, uint64_t *ret) {
        if (!json_object_is_type(v, json_type_int) || json_object_get_int64(v) < 0)
                return false;
        *ret = json_object_get_uint64(v);
        return true;
}

static int parse_metadata(json_object *v, const gh_st_limits *limits, gh_st_file *f, errbuf *e) {
        size_t n;

        if (!json_object_is_type(v, json_type_object))
                return fail(e, -EBADMSG, METADATA_KEY " is not an object");
        n = (size_t) json_object_object_length(v);
        if (n > limits->max_metadata)
                return fail(e, -E2BIG, METADATA_KEY " has %zu entries, more than the limit %zu", n, limits->max_metadata);
        f->metadata_keys = calloc(n ? n : 1, sizeof(char *));
        f->metadata_values = calloc(n ? n : 1, sizeof(char *));
        if (!f->metadata_keys || !f->metadata_values)
                return fail(e, -ENOMEM, "out of memory");
        json_object_object_foreach(v, key, val) {
                if (!json_object_is_type(val, json_type_string))
                        return fail(e, -EBADMSG, METADATA_KEY ": value of \"%s\" is not a string", SHOW(key));
                const char *s = json_object_get_string(val);
                if (strlen(s) != (size_t) json_object_get_string_len(val))
                        return fail(e, -EBADMSG, METADATA_KEY ": value of \"%s\" contains a NUL character", SHOW(key));
                f->metadata_keys[f->n_metadata] = strdup(key);
                f->metadata_values[f->n_metadata] = strdup(s);
                f->n_metadata++;
                if (!f->metadata_keys[f->n_metadata - 1] || !f->metadata_values[f->n_metadata - 1])
                        return fail(e, -ENOMEM, "out of memory");
        }
        return 0;
}

static int check_fields(const char *name, json_object *v, errbuf *e) {
        if (!json_object_is_type(v, json_type_object))
                return fail(e, -EBADMSG, "tensor \"%s\": entry is not an object", SHOW(name));
        json_object_object_foreach(v, key, val) {
                (void) val;
                if (!gh_streq(key, "dtype") && !gh_streq(key, "shape") && !gh_streq(key, "data_offsets"))
                        return fail(e, -EBADMSG, "tensor \"%s\": unknown field \"%s\"", SHOW(name), SHOW(key));
        }
        return 0;
}

static int get_field(const char *name, json_object *v, const char *field, json_type type, json_object **ret,
                     errbuf *e) {
        if (!json_object_object_get_ex(v, field, ret))
                return fail(e, -EBADMSG, "tensor \"%s\": missing \"%s\"", SHOW(name), field);
        if (!json_object_is_type(*ret, type))
                return fail(e, -EBADMSG, "tensor \"%s\": \"%s\" is not %s", SHOW(name), field,
                            type == json_type_string ? "a string" : "an array");
        return 0;
}

static int parse_dtype(const char *name, json_object *v, gh_st_tensor *t, errbuf *e) {
        json_object *d;
        int r = get_field(name, v, "dtype", json_type_string, &d, e);

        if (r < 0)
                return r;
        const char *s = json_object_get_string(d);
        size_t len = (size_t) json_object_get_string_len(d);
        t->dtype = strlen(s) == len ? gh_dtype_from_string(s) : _GH_DTYPE_INVALID;
        if (t->dtype < 0)
                return fail(e, -EBADMSG, "tensor \"%s\": unknown dtype \"%s\"", SHOW(name), SHOW_N(s, len));
        return 0;
}

static int parse_shape(const char *name, json_object *v, const gh_st_limits *limits, gh_st_tensor *t, errbuf *e) {
        json_object *a;
        int r = get_field(name, v, "shape", json_type_array, &a, e);

        if (r < 0)
                return r;
        size_t n = json_object_array_length(a);
        if (n > limits->max_dims)
                return fail(e, -E2BIG, "tensor \"%s\": shape has %zu dimensions, more than the limit %u", SHOW(name),
                            n, limits->max_dims);
        t->n_dims = (unsigned) n;
        t->n_elements = 1;
        for (size_t i = 0; i < n; i++)
                if (!get_u64(json_object_array_get_idx(a, i), &t->shape[i]))
                        return fail(e, -EBADMSG, "tensor \"%s\": shape[%zu] is not a non-negative integer", SHOW(name), i);
        for (size_t i = 0; i < n; i++)
                if (__builtin_mul_overflow(t->n_elements, t->shape[i], &t->n_elements))
                        return fail(e, -EBADMSG, "tensor \"%s\": shape %s has more than 2^64 elements", SHOW(name),
                                    SHOW_SHAPE(t));
        return 0;
}

static int parse_offsets(const char *name, json_object *v, uint64_t data_size, gh_st_tensor *t, errbuf *e) {
        json_object *a;
        int r = get_field(name, v, "data_offsets", json_type_array, &a, e);

        if (r < 0)
                return r;
        if (json_object_array_length(a) != 2 || !get_u64(json_object_array_get_idx(a, 0), &t->begin) ||
            !get_u64(json_object_array_get_idx(a, 1), &t->end))
                return fail(e, -EBADMSG, "tensor \"%s\": data_offsets is not two non-negative integers", SHOW(name));
        if (t->begin > t->end)
                return fail(e, -EBADMSG, "tensor \"%s\": data_offsets [%" PRIu64 ", %" PRIu64 "] end before they begin",
                            SHOW(name), t->begin, t->end);
        if (t->end > data_size)
                return fail(e, -EBADMSG,
                            "tensor \"%s\": data_offsets [%" PRIu64 ", %" PRIu64 "] go past the end of the data area "
                            "(%" PRIu64 " bytes; is the file truncated?)",
                            SHOW(name), t->begin, t->end, data_size);
        return 0;
}

static int check_size(const char *name, const gh_st_tensor *t, errbuf *e) {
        uint64_t bytes;

        if (__builtin_mul_overflow(t->n_elements, (uint64_t) gh_dtype_size(t->dtype), &bytes))
                return fail(e, -EBADMSG, "tensor \"%s\": %s shape %s is more than 2^64 bytes", SHOW(name),
                            gh_dtype_to_string(t->dtype), SHOW_SHAPE(t));
        if (bytes != t->end - t->begin)
                return fail(e, -EBADMSG,
                            "tensor \"%s\": %s shape %s needs %" PRIu64 " bytes, data_offsets [%" PRIu64 ", %" PRIu64
                            "] hold %" PRIu64,
                            SHOW(name), gh_dtype_to_string(t->dtype), SHOW_SHAPE(t), bytes, t->begin, t->end,
                            t->end - t->begin);
        return 0;
}

static int parse_tensor(const char *name, json_object *v, const gh_st_limits *limits, uint64_t data_size,
                        gh_st_tensor *t, errbuf *e) {
        size_t len = strlen(name);
        int r;

        if (len == 0)
                return fail(e, -EBADMSG, "tensor name is empty");
        if (len > limits->max_name_len)
                return fail(e, -E2BIG, "tensor \"%s\": name is %zu bytes, longer than the limit %zu", SHOW(name), len,
                            limits->max_name_len);
        if ((r = check_fields(name, v, e)) < 0 || (r = parse_dtype(name, v, t, e)) < 0 ||
            (r = parse_shape(name, v, limits, t, e)) < 0 || (r = parse_offsets(name, v, data_size, t, e)) < 0 ||
            (r = check_size(name, t, e)) < 0)
                return r;
        t->name = strdup(name);
        return t->name ? 0 : fail(e, -ENOMEM, "out of memory");
}

static int parse_entries(const st_member *m, size_t n, json_object *root, const gh_st_limits *limits,
                         gh_st_file *f, errbuf *e) {
        size_t n_tensors = n;
        int r;

        for (size_t i = 0; i < n; i++)
                n_tensors -= gh_streq(m[i].name, METADATA_KEY);
        if (n_tensors > limits->max_tensors)
                return fail(e, -E2BIG, "header lists %zu tensors, more than the limit %zu", n_tensors, limits->max_tensors);
        f->tensors = calloc(n_tensors ? n_tensors : 1, sizeof(gh_st_tensor));
        if (!f->tensors)
                return fail(e, -ENOMEM, "out of memory");
        for (size_t i = 0; i < n; i++) {
                json_object *v = json_object_object_get(root, m[i].name);
                if (gh_streq(m[i].name, METADATA_KEY))
                        r = parse_metadata(v, limits, f, e);
                else
                        r = parse_tensor(m[i].name, v, limits, f->data_size, &f->tensors[f->n_tensors++], e);
                if (r < 0)
                        return r;
        }
        return 0;
}

/* ---- byte ranges ------------------------------------------------------- */

static int cmp_by_offset(const void *a, const void *b) {
        const gh_st_tensor *x = *(const gh_st_tensor *const *) a, *y = *(const gh_st_tensor *const *) b;

        if (x->begin != y->begin)
                return x->begin < y->begin ? -1 : 1;
        if (x->end != y->end)
                return x->end < y->end ? -1 : 1;
        return strcmp(x->name, y->name);
}

static int check_next_range(const gh_st_tensor *prev, const gh_st_tensor *t, uint64_t expect, errbuf *e) {
        if (t->begin < expect)
                return fail(e, -EBADMSG,
                            "tensor \"%s\": data_offsets [%" PRIu64 ", %" PRIu64 "] overlap tensor \"%s\" [%" PRIu64
                            ", %" PRIu64 "]",
                            SHOW(t->name), t->begin, t->end, SHOW(prev->name), prev->begin, prev->end);
        if (t->begin > expect && prev)
                return fail(e, -EBADMSG,
                            "tensor \"%s\": data_offsets [%" PRIu64 ", %" PRIu64 "] leave a hole of %" PRIu64
                            " bytes after tensor \"%s\" [%" PRIu64 ", %" PRIu64 "]",
                            SHOW(t->name), t->begin, t->end, t->begin - expect, SHOW(prev->name), prev->begin,
                            prev->end);
        if (t->begin > expect)
                return fail(e, -EBADMSG,
                            "tensor \"%s\": data_offsets [%" PRIu64 ", %" PRIu64 "] leave the first %" PRIu64
                            " bytes of the data area to no tensor",
                            SHOW(t->name), t->begin, t->end, t->begin);
        return 0;
}

/* Sorted by offset, the ranges must tile [0, data_size) exactly. */
static int check_layout(gh_st_file *f, errbuf *e) {
        _cleanup_free_ const gh_st_tensor **by_offset = reallocarray(NULL, f->n_tensors ? f->n_tensors : 1,
                                                                     sizeof(*by_offset));
        const gh_st_tensor *prev = NULL;
        uint64_t expect = 0;

        if (!by_offset)
                return fail(e, -ENOMEM, "out of memory");
        for (size_t i = 0; i < f->n_tensors; i++)
                by_offset[i] = &f->tensors[i];
        qsort(by_offset, f->n_tensors, sizeof(*by_offset), cmp_by_offset);
        for (size_t i = 0; i < f->n_tensors; i++) {
                int r = check_next_range(prev, by_offset[i], expect, e);
                if (r < 0)
                        return r;
                prev = by_offset[i];
                expect = prev->end;
        }
        if (expect < f->data_size && prev)
                return fail(e, -EBADMSG,
                            "%" PRIu64 " bytes of the data area after tensor \"%s\" [%" PRIu64 ", %" PRIu64
                            "] belong to no tensor",
                            f->data_size - expect, SHOW(prev->name), prev->begin, prev->end);
        if (expect < f->data_size)
                return fail(e, -EBADMSG, "the data area has %" PRIu64 " bytes but the header lists no tensors",
                            f->data_size);
        return 0;
}

static bool all_aligned(const gh_st_file *f) {
        for (size_t i = 0; i < f->n_tensors; i++)
                if ((f->data_start + f->tensors[i].begin) % gh_dtype_size(f->tensors[i].dtype) != 0)
                        return false;
        return true;
}

static int cmp_tensor_name(const void *a, const void *b) {
        return strcmp(((const gh_st_tensor *) a)->name, ((const gh_st_tensor *) b)->name);
}

typedef struct kv {
        char *k, *v;
} kv;

static int cmp_kv(const void *a, const void *b) {
        return strcmp(((const kv *) a)->k, ((const kv *) b)->k);
}

static int sort_metadata(gh_st_file *f) {
        _cleanup_free_ kv *pairs = reallocarray(NULL, f->n_metadata ? f->n_metadata : 1, sizeof(kv));

        if (!pairs)
                return -ENOMEM;
        for (size_t i = 0; i < f->n_metadata; i++)
                pairs[i] = (kv) {f->metadata_keys[i], f->metadata_values[i]};
        qsort(pairs, f->n_metadata, sizeof(kv), cmp_kv);
        for (size_t i = 0; i < f->n_metadata; i++) {
                f->metadata_keys[i] = pairs[i].k;
                f->metadata_values[i] = pairs[i].v;
        }
        return 0;
}

/* ---- putting it together ----------------------------------------------- */

static int check_limits(const gh_st_limits *l, errbuf *e) {
        if (l->max_header_size == 0 || l->max_header_size >= INT_MAX || l->max_dims > GH_ST_MAX_DIMS ||
            l->max_json_depth == 0 || l->max_json_depth > GH_ST_JSON_DEPTH)
                return fail(e, -EINVAL, "invalid safetensors limits");
        return 0;
}

static uint64_t read_le64(const unsigned char *p) {
        uint64_t v = 0;

        for (int i = 7; i >= 0; i--)
                v = v << 8 | p[i];
        return v;
}

/* The checks on the first 8 bytes: N against the limit and the file. */
static int check_header_length(const unsigned char *head, size_t head_len, uint64_t file_size,
                               const gh_st_limits *limits, uint64_t *ret, errbuf *e) {
        if (file_size < 8)
                return fail(e, -EBADMSG, "file is %" PRIu64 " bytes, shorter than the 8-byte header length", file_size);
        if (head_len < 8)
                return fail(e, -EINVAL, "only %zu bytes of the file were given", head_len);
        uint64_t n = read_le64(head);
        if (n == 0)
                return fail(e, -EBADMSG, "header length is 0");
        if (n > limits->max_header_size)
                return fail(e, -E2BIG, "header length %" PRIu64 " is more than the limit %" PRIu64, n,
                            limits->max_header_size);
        if (n > file_size - 8)
                return fail(e, -EBADMSG, "header length %" PRIu64 " goes past the end of the file (%" PRIu64 " bytes)", n,
                            file_size);
        *ret = n;
        return 0;
}

/* Passes 1 to 3 over the header text. */
static int parse_header(const char *text, size_t len, const gh_st_limits *limits, gh_st_file *f, errbuf *e) {
        scanner sc = {.text = text, .len = len, .limits = limits, .err = e};
        json_object *root = NULL;
        int r = scan_header(&sc);

        if (r >= 0)
                r = parse_json(text, len, limits->max_json_depth, &root, e);
        if (r >= 0)
                r = decode_keys(text, sc.members, sc.n_members, e);
        if (r >= 0)
                r = check_duplicates(sc.members, sc.n_members, root, e);
        if (r >= 0)
                r = parse_entries(sc.members, sc.n_members, root, limits, f, e);
        json_object_put(root);
        members_free(sc.members, sc.n_members);
        return r;
}

int gh_st_parse(const void *head, size_t head_len, uint64_t file_size, const gh_st_limits *limits,
                gh_st_file **ret, char *err, size_t err_size) {
        errbuf e = {err, err_size};
        gh_st_limits defaults = gh_st_limits_default();
        uint64_t n;
        int r;

        if (!limits)
                limits = &defaults;
        if ((!head && head_len > 0) || !ret)
                return fail(&e, -EINVAL, "invalid arguments");
        if (check_limits(limits, &e) < 0)
                return -EINVAL;
        if (head_len > file_size)
                return fail(&e, -EINVAL, "%zu bytes given of a file of %" PRIu64, head_len, file_size);
        r = check_header_length(head, head_len, file_size, limits, &n, &e);
        if (r < 0)
                return r;
        if (head_len - 8 < n)
                return fail(&e, -EINVAL, "only %zu of the %" PRIu64 " header bytes were given", head_len - 8, n);

        _cleanup_st_file_ gh_st_file *f = calloc(1, sizeof(*f));
        if (!f)
                return fail(&e, -ENOMEM, "out of memory");
        f->header_size = n;
        f->data_start = 8 + n;
        f->data_size = file_size - f->data_start;
        r = parse_header((const char *) head + 8, (size_t) n, limits, f, &e);
        if (r < 0)
                return r;
        r = check_layout(f, &e);
        if (r < 0)
                return r;
        if (sort_metadata(f) < 0)
                return fail(&e, -ENOMEM, "out of memory");
        qsort(f->tensors, f->n_tensors, sizeof(gh_st_tensor), cmp_tensor_name);
        f->aligned = all_aligned(f);
        *ret = TAKE_PTR(f);
        return 0;
}

/* ---- files ------------------------------------------------------------- */

/* Reads exactly |n| bytes at |offset|; -EBADMSG if the file ends first. */
static int pread_full(int fd, void *buf, size_t n, uint64_t offset) {
        size_t done = 0;

        while (done < n) {
                ssize_t k = pread(fd, (char *) buf + done, n - done, (off_t) (offset + done));
                if (k < 0 && errno == EINTR)
                        continue;
                if (k < 0)
                        return gh_negerrno();
                if (k == 0)
                        return -EBADMSG;
                done += (size_t) k;
        }
        return 0;
}

static int open_regular(int dirfd, const char *path, uint64_t *ret_size, errbuf *e) {
        /* O_NONBLOCK: opening a FIFO must not hang; cleared below. */
        _cleanup_close_ int fd = openat(dirfd, path, O_RDONLY | O_CLOEXEC | O_NOCTTY | O_NONBLOCK);
        struct stat st;

        if (fd < 0 || fstat(fd, &st) < 0) {
                int r = gh_negerrno();
                return fail(e, r, "%s: cannot open: %s", SHOW(path), strerror(-r));
        }
        if (S_ISDIR(st.st_mode))
                return fail(e, -EISDIR, "%s: is a directory", SHOW(path));
        if (!S_ISREG(st.st_mode))
                return fail(e, -EBADFD, "%s: not a regular file", SHOW(path));
        int flags = fcntl(fd, F_GETFL);
        if (flags < 0 || fcntl(fd, F_SETFL, flags & ~O_NONBLOCK) < 0) {
                int r = gh_negerrno();
                return fail(e, r, "%s: cannot open: %s", SHOW(path), strerror(-r));
        }
        *ret_size = (uint64_t) st.st_size;
        return TAKE_FD(fd);
}

static int read_and_parse(int fd, const char *path, uint64_t size, const gh_st_limits *limits, gh_st_file **ret,
                          errbuf *e) {
        unsigned char len[8] = {0};
        char msg[1024] = "";
        _cleanup_free_ unsigned char *head = NULL;
        size_t head_len = 0;
        uint64_t n;
        int r;

        if (size >= 8) {
                r = pread_full(fd, len, 8, 0);
                if (r < 0)
                        return fail(e, r, "%s: cannot read: %s", SHOW(path),
                                    r == -EBADMSG ? "file shrank while being read" : strerror(-r));
                head_len = 8;
        }
        errbuf quiet = {NULL, 0};
        /* Let the parser judge N before allocating anything for it. */
        if (check_header_length(len, head_len, size, limits, &n, &quiet) >= 0) {
                head = malloc(8 + n);
                if (!head)
                        return fail(e, -ENOMEM, "%s: out of memory", SHOW(path));
                memcpy(head, len, 8);
                r = pread_full(fd, head + 8, n, 8);
                if (r < 0)
                        return fail(e, r, "%s: cannot read: %s", SHOW(path),
                                    r == -EBADMSG ? "file shrank while being read" : strerror(-r));
                head_len = 8 + n;
        }
        r = gh_st_parse(head ? (void *) head : (void *) len, head_len, size, limits, ret, msg, sizeof(msg));
        if (r < 0)
                return fail(e, r, "%s: %s", SHOW(path), msg);
        return 0;
}

int gh_st_open(int dirfd, const char *path, const gh_st_limits *limits, gh_st_file **ret, int *ret_fd, char *err,
               size_t err_size) {
        errbuf e = {err, err_size};
        gh_st_limits defaults = gh_st_limits_default();
        gh_st_file *f = NULL;
        uint64_t size;
        int r;

        if (!path || !ret)
                return fail(&e, -EINVAL, "invalid arguments");
        if (!limits)
                limits = &defaults;
        if (check_limits(limits, &e) < 0)
                return -EINVAL;
        _cleanup_close_ int fd = open_regular(dirfd, path, &size, &e);
        if (fd < 0)
                return fd;
        r = read_and_parse(fd, path, size, limits, &f, &e);
        if (r < 0)
                return r;
        *ret = f;
        if (ret_fd)
                *ret_fd = TAKE_FD(fd);
        return 0;
}

gh_st_file *gh_st_free(gh_st_file *f) {
        if (!f)
                return NULL;
        for (size_t i = 0; f->tensors && i < f->n_tensors; i++)
                free(f->tensors[i].name);
        free(f->tensors);
        for (size_t i = 0; i < f->n_metadata; i++) {
                free(f->metadata_keys[i]);
                free(f->metadata_values[i]);
        }
        free(f->metadata_keys);
        free(f->metadata_values);
        free(f);
        return NULL;
}

const gh_st_tensor *gh_st_find(const gh_st_file *f, const char *name) {
        size_t lo = 0, hi = f && name ? f->n_tensors : 0;

        while (lo < hi) {
                size_t mid = lo + (hi - lo) / 2;
                int c = strcmp(name, f->tensors[mid].name);
                if (c == 0)
                        return &f->tensors[mid];
                if (c < 0)
                        hi = mid;
                else
                        lo = mid + 1;
        }
        return NULL;
}

const char *gh_st_metadata_get(const gh_st_file *f, const char *key) {
        size_t lo = 0, hi = f && key ? f->n_metadata : 0;

        while (lo < hi) {
                size_t mid = lo + (hi - lo) / 2;
                int c = strcmp(key, f->metadata_keys[mid]);
                if (c == 0)
                        return f->metadata_values[mid];
                if (c < 0)
                        hi = mid;
                else
                        lo = mid + 1;
        }
        return NULL;
}

/* Unit tests for the safetensors reader (daemon/common/safetensors.c):
 * files written by the test writer read back exactly (metadata, tensor
 * bytes through the returned fd, lookup by name), and one test per way a
 * file can be malformed, each checking the error code and that the message
 * names the file and the offending tensor. Files live in a temporary
 * directory that is removed at the end. */
#include <stdarg.h>
#include <stddef.h>
#include <setjmp.h>
#include <cmocka.h>
#include <dirent.h>
#include <fcntl.h>
#include <limits.h>
#include <string.h>
#include <sys/stat.h>

#include "fdcount.h"
#include "common/safetensors.h"
#include "common/util.h"
#include "st-writer.h"

static char tmpdir[PATH_MAX];
static int dir_fd = -1;
static int fds_at_start;

static int count_open_fds(void) {
        int n = gh_test_count_open_fds();

        assert_true(n >= 0);
        return n;
}

static const char *path_of(const char *file) {
        static char buf[PATH_MAX + 256];

        snprintf(buf, sizeof(buf), "%s/%s", tmpdir, file);
        return buf;
}

static int setup(void **state) {
        const char *t = getenv("TMPDIR");

        snprintf(tmpdir, sizeof(tmpdir), "%s/gh-test-safetensors-XXXXXX", t && *t ? t : P_tmpdir);
        if (!mkdtemp(tmpdir))
                return -1;
        dir_fd = open(tmpdir, O_RDONLY | O_DIRECTORY | O_CLOEXEC);
        fds_at_start = count_open_fds();
        return dir_fd < 0 ? -1 : 0;
}

static int teardown(void **state) {
        DIR *d = fdopendir(dup(dir_fd));
        struct dirent *de;

        while (d && (de = readdir(d)))
                if (de->d_name[0] != '.')
                        unlinkat(dir_fd, de->d_name, 0);
        if (d)
                closedir(d);
        dir_fd = gh_close(dir_fd);
        return rmdir(tmpdir);
}

/* ---- helpers ----------------------------------------------------------- */

static void write_raw(const char *file, const char *header, size_t data_len) {
        static const unsigned char zeros[4096];

        assert_true(data_len <= sizeof(zeros));
        assert_int_equal(gh_test_write_raw_safetensors(path_of(file), header, zeros, data_len), 0);
}

static void check_message(const char *err, const char *file, const char *const *needles) {
        if (file && !strstr(err, file))
                fail_msg("message \"%s\" does not name the file %s", err, file);
        for (size_t i = 0; needles[i]; i++)
                if (!strstr(err, needles[i]))
                        fail_msg("message \"%s\" lacks \"%s\"", err, needles[i]);
        if (strchr(err, '\n'))
                fail_msg("message \"%s\" is not one line", err);
}

/* Opens |file| from the test directory; it must be refused with |expect|
 * and a message holding the file name and each of |needles|. */
static void expect_refused_limits(const char *file, const gh_st_limits *limits, int expect,
                                  const char *const *needles) {
        char err[1024] = "";
        gh_st_file *f = NULL;
        int fd = -1, r;

        r = gh_st_open(dir_fd, file, limits, &f, &fd, err, sizeof(err));
        if (r != expect)
                fail_msg("%s: expected %s, got %s: %s", file, strerror(-expect), r < 0 ? strerror(-r) : "success", err);
        assert_null(f);
        assert_int_equal(fd, -1);
        check_message(err, file, needles);
}

#define NEEDLES(...) ((const char *const[]) {__VA_ARGS__, NULL})
#define REFUSED(file, expect, ...) expect_refused_limits((file), NULL, (expect), NEEDLES(__VA_ARGS__))
#define REFUSED_LIMITS(file, limits, expect, ...) \
        expect_refused_limits((file), (limits), (expect), NEEDLES(__VA_ARGS__))
/* Writes |header| with |data_len| zero bytes of data, expects a refusal. */
#define RAW_REFUSED(file, header, data_len, expect, ...)          \
        do {                                                      \
                write_raw((file), (header), (data_len));          \
                REFUSED((file), (expect), __VA_ARGS__);           \
        } while (0)

static gh_st_file *open_ok(const char *file, const gh_st_limits *limits, int *ret_fd) {
        char err[1024] = "";
        gh_st_file *f = NULL;
        int r = gh_st_open(dir_fd, file, limits, &f, ret_fd, err, sizeof(err));

        if (r < 0)
                fail_msg("%s: %s (%s)", file, err, strerror(-r));
        assert_non_null(f);
        return f;
}

static void raw_ok(const char *file, const char *header, size_t data_len) {
        int fd = -1;

        write_raw(file, header, data_len);
        gh_st_free(open_ok(file, NULL, &fd));
        assert_true(fd >= 0);
        close(fd);
}

static void check_tensor_bytes(int fd, const gh_st_file *f, const gh_st_tensor *st, const gh_test_tensor *t) {
        uint64_t size = gh_test_tensor_size(t);
        _cleanup_free_ unsigned char *got = malloc(size + 1), *want = malloc(size + 1);

        assert_non_null(got);
        assert_non_null(want);
        assert_int_equal(st->end - st->begin, size);
        assert_int_equal(pread(fd, got, size + 1, (off_t) (f->data_start + st->begin)) >= (ssize_t) size, 1);
        if (t->data)
                memcpy(want, t->data, size);
        else
                gh_test_pattern(t->name, 0, want, size);
        assert_memory_equal(got, want, size);
}

/* Writes |t| and reads it back: every tensor's metadata and bytes must be
 * what was written. Returns the parsed file. */
static gh_st_file *roundtrip(const char *file, const gh_test_tensor *t, size_t n, const char *const *kv,
                             unsigned align) {
        struct stat st;
        uint64_t total = 0;
        int fd = -1;

        assert_int_equal(gh_test_write_safetensors(path_of(file), t, n, kv, align), 0);
        gh_st_file *f = open_ok(file, NULL, &fd);
        assert_true(fd >= 0);
        assert_int_equal(fstat(fd, &st), 0);
        assert_int_equal(f->data_start, 8 + f->header_size);
        assert_int_equal(f->data_start + f->data_size, (uint64_t) st.st_size);
        assert_int_equal(f->data_start % align, 0);
        assert_int_equal(f->n_tensors, n);
        for (size_t i = 0; i < n; i++) {
                const gh_st_tensor *s = gh_st_find(f, t[i].name);
                assert_non_null(s);
                assert_string_equal(s->name, t[i].name);
                assert_int_equal(s->dtype, t[i].dtype);
                assert_int_equal(s->n_dims, t[i].n_dims);
                uint64_t elements = 1;
                for (unsigned k = 0; k < t[i].n_dims; k++) {
                        assert_int_equal(s->shape[k], t[i].shape[k]);
                        elements *= t[i].shape[k];
                }
                assert_int_equal(s->n_elements, elements);
                check_tensor_bytes(fd, f, s, &t[i]);
                total += s->end - s->begin;
        }
        assert_int_equal(total, f->data_size);
        for (size_t i = 1; i < f->n_tensors; i++)
                assert_true(strcmp(f->tensors[i - 1].name, f->tensors[i].name) < 0);
        close(fd);
        return f;
}

/* ---- valid files ------------------------------------------------------- */

static void test_dtype_names(void **state) {
        static const struct {
                const char *name;
                size_t size;
        } table[] = {
                {"F64", 8},    {"F32", 4},     {"F16", 2},     {"BF16", 2},    {"I64", 8},     {"I32", 4},
                {"I16", 2},    {"I8", 1},      {"U8", 1},      {"BOOL", 1},    {"F8_E4M3", 1}, {"F8_E5M2", 1},
                {"U16", 2},    {"U32", 4},     {"U64", 8},     {"F8_E8M0", 1}, {"C64", 8},
        };

        for (size_t i = 0; i < ELEMENTSOF(table); i++) {
                gh_dtype t = gh_dtype_from_string(table[i].name);
                assert_true(t >= 0 && t < _GH_DTYPE_MAX);
                assert_string_equal(gh_dtype_to_string(t), table[i].name);
                assert_int_equal(gh_dtype_size(t), table[i].size);
        }
        for (int t = 0; t < _GH_DTYPE_MAX; t++)
                assert_int_equal(gh_dtype_from_string(gh_dtype_to_string((gh_dtype) t)), t);
        assert_int_equal(gh_dtype_from_string("f32"), _GH_DTYPE_INVALID);
        assert_int_equal(gh_dtype_from_string("F4"), _GH_DTYPE_INVALID);
        assert_int_equal(gh_dtype_from_string(""), _GH_DTYPE_INVALID);
        assert_int_equal(gh_dtype_from_string(NULL), _GH_DTYPE_INVALID);
        assert_null(gh_dtype_to_string(_GH_DTYPE_INVALID));
        assert_null(gh_dtype_to_string(_GH_DTYPE_MAX));
        assert_int_equal(gh_dtype_size(_GH_DTYPE_INVALID), 0);
}

static void test_limits_default(void **state) {
        gh_st_limits l = gh_st_limits_default();

        assert_int_equal(l.max_header_size, 100 << 20);
        assert_int_equal(l.max_dims, GH_ST_MAX_DIMS);
        assert_int_equal(l.max_json_depth, GH_ST_JSON_DEPTH);
        assert_true(l.max_tensors >= 10000);
        assert_true(l.max_name_len >= 1024);
        assert_true(l.max_metadata >= 1024);
}

static void test_roundtrip_dtypes(void **state) {
        static const float f32[6] = {0.0f, 1.0f, -2.5f, 3.25f, 1e30f, -0.0f};
        static const int64_t i64[2] = {INT64_MIN, INT64_MAX};
        static const uint8_t b[3] = {1, 0, 1};
        const gh_test_tensor t[] = {
                {"model.diffusion_model.out.0.weight", GH_DTYPE_F32, 2, {2, 3}, f32},
                {"f16", GH_DTYPE_F16, 1, {5}, NULL},
                {"bf16", GH_DTYPE_BF16, 2, {3, 1}, NULL},
                {"i64", GH_DTYPE_I64, 1, {2}, i64},
                {"u8", GH_DTYPE_U8, 1, {7}, NULL},
                {"bool", GH_DTYPE_BOOL, 1, {3}, b},
                {"f8.e4m3", GH_DTYPE_F8_E4M3, 1, {4}, NULL},
                {"f8.e5m2", GH_DTYPE_F8_E5M2, 3, {1, 1, 1}, NULL},
                {"f64", GH_DTYPE_F64, 2, {2, 2}, NULL},
                {"i32", GH_DTYPE_I32, 8, {1, 2, 1, 2, 1, 2, 1, 2}, NULL},
                {"i16", GH_DTYPE_I16, 1, {3}, NULL},
                {"i8", GH_DTYPE_I8, 1, {9}, NULL},
                {"c64", GH_DTYPE_C64, 1, {2}, NULL},
        };

        gh_st_free(roundtrip("dtypes.safetensors", t, ELEMENTSOF(t), NULL, 8));
}

static void test_zero_elements_and_scalars(void **state) {
        static const float one = 1.0f;
        const gh_test_tensor t[] = {
                {"empty.first", GH_DTYPE_F32, 2, {0, 4}, NULL},
                {"scalar", GH_DTYPE_F32, 0, {0}, &one},
                {"empty.middle", GH_DTYPE_I64, 2, {3, 0}, NULL},
                {"also.empty.middle", GH_DTYPE_U8, 1, {0}, NULL},
                {"scalar.i64", GH_DTYPE_I64, 0, {0}, NULL},
                {"empty.last", GH_DTYPE_BF16, 3, {1, 0, 7}, NULL},
        };
        gh_st_file *f = roundtrip("zero.safetensors", t, ELEMENTSOF(t), NULL, 8);
        const gh_st_tensor *s = gh_st_find(f, "scalar");

        assert_int_equal(s->n_dims, 0);
        assert_int_equal(s->n_elements, 1);
        assert_int_equal(s->end - s->begin, 4);
        assert_int_equal(gh_st_find(f, "empty.middle")->n_elements, 0);
        assert_int_equal(f->data_size, 12);
        gh_st_free(f);

        /* Nothing but empty tensors: a data area of 0 bytes. */
        gh_st_free(roundtrip("all-empty.safetensors", t, 1, NULL, 8));
}

static void test_unaligned_header(void **state) {
        /* The layout of a pre-padding writer: N such that 8 + N is odd. */
        const gh_test_tensor t[] = {
                {"a", GH_DTYPE_F32, 1, {3}, NULL},
                {"b", GH_DTYPE_F16, 1, {2}, NULL},
        };
        gh_st_file *f = roundtrip("unaligned.safetensors", t, ELEMENTSOF(t), NULL, 1);

        if (f->data_start % 2 == 0) {
                /* Make it odd with one more character in a name. */
                gh_st_free(f);
                const gh_test_tensor t2[] = {
                        {"aa", GH_DTYPE_F32, 1, {3}, NULL},
                        {"b", GH_DTYPE_F16, 1, {2}, NULL},
                };
                f = roundtrip("unaligned.safetensors", t2, ELEMENTSOF(t2), NULL, 1);
        }
        assert_int_equal(f->data_start % 2, 1);
        assert_false(f->aligned);
        gh_st_free(f);
}

static void test_aligned_flag(void **state) {
        /* Padded header, tensors by decreasing element size: aligned. */
        const gh_test_tensor t[] = {
                {"a", GH_DTYPE_F64, 1, {3}, NULL},
                {"b", GH_DTYPE_F32, 1, {3}, NULL},
                {"c", GH_DTYPE_F16, 1, {3}, NULL},
                {"d", GH_DTYPE_U8, 1, {3}, NULL},
        };
        gh_st_file *f = roundtrip("aligned.safetensors", t, ELEMENTSOF(t), NULL, 8);

        assert_true(f->aligned);
        gh_st_free(f);

        /* An F32 after 3 bytes of U8: valid, but not aligned. */
        const gh_test_tensor u[] = {
                {"d", GH_DTYPE_U8, 1, {3}, NULL},
                {"b", GH_DTYPE_F32, 1, {3}, NULL},
        };
        f = roundtrip("misaligned.safetensors", u, ELEMENTSOF(u), NULL, 8);
        assert_false(f->aligned);
        gh_st_free(f);
}

static void test_metadata(void **state) {
        const char *const kv[] = {
                "format", "pt",
                "modelspec.title", "Some \"model\"\nwith a newline, tab\t and ünïcödé",
                "", "empty key",
                "empty", "",
                "ss_tag_frequency", "{\"a\": {\"b\": 1}}",
                NULL,
        };
        const gh_test_tensor t[] = {{"w", GH_DTYPE_F16, 1, {2}, NULL}};
        gh_st_file *f = roundtrip("metadata.safetensors", t, ELEMENTSOF(t), kv, 8);

        assert_int_equal(f->n_metadata, 5);
        for (size_t i = 0; kv[i]; i += 2)
                assert_string_equal(gh_st_metadata_get(f, kv[i]), kv[i + 1]);
        for (size_t i = 1; i < f->n_metadata; i++)
                assert_true(strcmp(f->metadata_keys[i - 1], f->metadata_keys[i]) < 0);
        assert_null(gh_st_metadata_get(f, "missing"));
        assert_null(gh_st_metadata_get(f, NULL));
        assert_null(gh_st_find(f, "__metadata__"));
        gh_st_free(f);

        /* Metadata and no tensors at all. */
        f = roundtrip("metadata-only.safetensors", NULL, 0, kv, 8);
        assert_int_equal(f->n_metadata, 5);
        assert_int_equal(f->data_size, 0);
        gh_st_free(f);
}

static void test_find(void **state) {
        const gh_test_tensor t[] = {
                {"b", GH_DTYPE_U8, 1, {1}, NULL},     {"a.b", GH_DTYPE_U8, 1, {2}, NULL},
                {"a", GH_DTYPE_U8, 1, {3}, NULL},     {"a.c", GH_DTYPE_U8, 1, {4}, NULL},
                {"c.z", GH_DTYPE_U8, 1, {5}, NULL},   {"A", GH_DTYPE_U8, 1, {6}, NULL},
                {"a.b.c", GH_DTYPE_U8, 1, {7}, NULL},
        };
        gh_st_file *f = roundtrip("find.safetensors", t, ELEMENTSOF(t), NULL, 8);

        for (size_t i = 0; i < ELEMENTSOF(t); i++)
                assert_int_equal(gh_st_find(f, t[i].name)->end - gh_st_find(f, t[i].name)->begin, t[i].shape[0]);
        assert_string_equal(f->tensors[0].name, "A");
        assert_string_equal(f->tensors[ELEMENTSOF(t) - 1].name, "c.z");
        assert_null(gh_st_find(f, ""));
        assert_null(gh_st_find(f, "a."));
        assert_null(gh_st_find(f, "c"));
        assert_null(gh_st_find(f, "zzz"));
        assert_null(gh_st_find(f, "0"));
        assert_null(gh_st_find(f, NULL));
        assert_null(gh_st_find(NULL, "a"));
        gh_st_free(f);

        f = roundtrip("find-empty.safetensors", NULL, 0, NULL, 8);
        assert_null(gh_st_find(f, "a"));
        gh_st_free(f);
}

static void test_unusual_names(void **state) {
        char long_name[4097];
        memset(long_name, 'x', sizeof(long_name) - 1);
        long_name[sizeof(long_name) - 1] = 0;
        const gh_test_tensor t[] = {
                {"ünïcödé.権重", GH_DTYPE_U8, 1, {2}, NULL},
                {"quote\"back\\slash", GH_DTYPE_U8, 1, {2}, NULL},
                {"new\nline\ttab\x01", GH_DTYPE_U8, 1, {2}, NULL},
                {"__metadata__x", GH_DTYPE_U8, 1, {2}, NULL},
                {"emoji 😀 / slash", GH_DTYPE_U8, 1, {2}, NULL},
                {long_name, GH_DTYPE_U8, 1, {2}, NULL}, /* exactly the default limit */
        };

        gh_st_free(roundtrip("names.safetensors", t, ELEMENTSOF(t), NULL, 8));
        /* Escapes that decode to plain names, and JSON whitespace padding. */
        raw_ok("escaped.safetensors",
               "{\"\\u0061\\u00e9\\ud83d\\ude00\\/\":{\"dtype\":\"U8\",\"shape\":[1],\"data_offsets\":[0,1]}}", 1);
        raw_ok("ws2.safetensors",
               "{ \"a\" : { \"dtype\" : \"U8\" ,\n\"shape\" : [ 1 ] , \"data_offsets\" : [ 0 , 1 ] } }\t\r\n   ", 1);
}

static void test_large_tensor(void **state) {
        /* Several writer chunks, an odd size, read back in full. */
        const gh_test_tensor t[] = {
                {"big", GH_DTYPE_F16, 2, {333, 1001}, NULL},
                {"tail", GH_DTYPE_U8, 1, {3}, NULL},
        };

        gh_st_free(roundtrip("large.safetensors", t, ELEMENTSOF(t), NULL, 8));
}

static void test_parse_in_memory(void **state) {
        static const char text[] = "{\"a\":{\"dtype\":\"U8\",\"shape\":[2],\"data_offsets\":[0,2]}}";
        unsigned char buf[8 + sizeof(text) - 1 + 2];
        gh_st_file *f = NULL;
        char err[256];

        for (int i = 0; i < 8; i++)
                buf[i] = (unsigned char) ((sizeof(text) - 1) >> (8 * i));
        memcpy(buf + 8, text, sizeof(text) - 1);
        buf[sizeof(buf) - 2] = 7;
        buf[sizeof(buf) - 1] = 9;

        assert_int_equal(gh_st_parse(buf, sizeof(buf), sizeof(buf), NULL, &f, NULL, 0), 0);
        assert_int_equal(f->n_tensors, 1);
        assert_int_equal(f->data_start, 8 + sizeof(text) - 1);
        gh_st_free(f);
        /* Only the header is needed, not the data. */
        assert_int_equal(gh_st_parse(buf, sizeof(buf) - 2, sizeof(buf), NULL, &f, NULL, 0), 0);
        gh_st_free(f);
        /* Less than the header is a caller error. */
        f = NULL;
        assert_int_equal(gh_st_parse(buf, sizeof(buf) - 3, sizeof(buf), NULL, &f, err, sizeof(err)), -EINVAL);
        assert_null(f);
        assert_non_null(strstr(err, "header bytes"));
        assert_int_equal(gh_st_parse(buf, 4, sizeof(buf), NULL, &f, err, sizeof(err)), -EINVAL);
        assert_int_equal(gh_st_parse(buf, sizeof(buf), sizeof(buf) - 1, NULL, &f, err, sizeof(err)), -EINVAL);
        assert_int_equal(gh_st_parse(NULL, 8, sizeof(buf), NULL, &f, err, sizeof(err)), -EINVAL);
        assert_int_equal(gh_st_parse(buf, sizeof(buf), sizeof(buf), NULL, NULL, err, sizeof(err)), -EINVAL);
        /* A file size beyond what the head says: the data area is larger. */
        assert_int_equal(gh_st_parse(buf, sizeof(buf), sizeof(buf) + 1, NULL, &f, err, sizeof(err)), -EBADMSG);
        assert_non_null(strstr(err, "belong to no tensor"));
        assert_int_equal(gh_st_parse(buf, sizeof(buf), UINT64_MAX, NULL, &f, err, sizeof(err)), -EBADMSG);
        /* A small error buffer truncates, still terminated. */
        memset(err, 'x', sizeof(err));
        assert_int_equal(gh_st_parse(buf, sizeof(buf), sizeof(buf) - 1, NULL, &f, err, 5), -EINVAL);
        assert_int_equal(strlen(err), 4);
        assert_null(f);
}

static void test_invalid_limits(void **state) {
        gh_st_limits l = gh_st_limits_default();
        gh_st_file *f = NULL;
        char err[256];

        write_raw("limits.safetensors", "{}", 0);
        l.max_dims = GH_ST_MAX_DIMS + 1;
        assert_int_equal(gh_st_open(dir_fd, "limits.safetensors", &l, &f, NULL, err, sizeof(err)), -EINVAL);
        l = gh_st_limits_default();
        l.max_header_size = (uint64_t) INT_MAX + 1;
        assert_int_equal(gh_st_open(dir_fd, "limits.safetensors", &l, &f, NULL, err, sizeof(err)), -EINVAL);
        l = gh_st_limits_default();
        l.max_json_depth = 0;
        assert_int_equal(gh_st_open(dir_fd, "limits.safetensors", &l, &f, NULL, err, sizeof(err)), -EINVAL);
        assert_null(f);
        assert_int_equal(gh_st_open(dir_fd, NULL, NULL, &f, NULL, err, sizeof(err)), -EINVAL);
        assert_int_equal(gh_st_open(dir_fd, "limits.safetensors", NULL, NULL, NULL, err, sizeof(err)), -EINVAL);
}

static void test_open_errors(void **state) {
        gh_st_file *f = NULL;
        char err[512];
        int fd = -1;

        assert_int_equal(gh_st_open(dir_fd, "missing.safetensors", NULL, &f, &fd, err, sizeof(err)), -ENOENT);
        check_message(err, "missing.safetensors", NEEDLES("cannot open"));
        assert_int_equal(mkdirat(dir_fd, "dir.safetensors", 0755), 0);
        assert_int_equal(gh_st_open(dir_fd, "dir.safetensors", NULL, &f, &fd, err, sizeof(err)), -EISDIR);
        check_message(err, "dir.safetensors", NEEDLES("directory"));
        assert_int_equal(unlinkat(dir_fd, "dir.safetensors", AT_REMOVEDIR), 0);
        /* A FIFO: refused without blocking in open(). */
        assert_int_equal(mkfifoat(dir_fd, "fifo.safetensors", 0644), 0);
        assert_int_equal(gh_st_open(dir_fd, "fifo.safetensors", NULL, &f, &fd, err, sizeof(err)), -EBADFD);
        check_message(err, "fifo.safetensors", NEEDLES("not a regular file"));
        assert_null(f);
        assert_int_equal(fd, -1);
        /* An absolute path with AT_FDCWD; the message names the whole path. */
        assert_int_equal(gh_st_open(AT_FDCWD, path_of("missing.safetensors"), NULL, &f, &fd, err, sizeof(err)),
                         -ENOENT);
        check_message(err, path_of("missing.safetensors"), NEEDLES("cannot open"));
}

static void test_returned_fd(void **state) {
        const gh_test_tensor t[] = {{"w", GH_DTYPE_U8, 1, {5}, NULL}};
        int before = count_open_fds(), fd = -1;
        gh_st_file *f;

        assert_int_equal(gh_test_write_safetensors(path_of("fd.safetensors"), t, 1, NULL, 8), 0);
        f = open_ok("fd.safetensors", NULL, &fd);
        assert_true(fcntl(fd, F_GETFD) & FD_CLOEXEC);
        assert_false(fcntl(fd, F_GETFL) & O_NONBLOCK);
        assert_int_equal((fcntl(fd, F_GETFL) & O_ACCMODE), O_RDONLY);
        assert_int_equal(lseek(fd, 0, SEEK_CUR), 0);
        assert_int_equal(count_open_fds(), before + 1);
        close(fd);
        gh_st_free(f);
        /* Without ret_fd the fd is closed. */
        f = open_ok("fd.safetensors", NULL, NULL);
        assert_int_equal(count_open_fds(), before);
        gh_st_free(f);
        assert_null(gh_st_free(NULL));
}

/* ---- malformed files: the first 8 bytes --------------------------------- */

static void write_length(const char *file, uint64_t n, const char *rest) {
        unsigned char buf[256];
        size_t len = strlen(rest);

        assert_true(len <= sizeof(buf) - 8);
        for (int i = 0; i < 8; i++)
                buf[i] = (unsigned char) (n >> (8 * i));
        memcpy(buf + 8, rest, len);
        assert_int_equal(gh_test_write_file(path_of(file), buf, 8 + len), 0);
}

static void test_file_too_short(void **state) {
        assert_int_equal(gh_test_write_file(path_of("empty.safetensors"), NULL, 0), 0);
        REFUSED("empty.safetensors", -EBADMSG, "0 bytes", "shorter than");
        assert_int_equal(gh_test_write_file(path_of("seven.safetensors"), "\x02\0\0\0\0\0\0", 7), 0);
        REFUSED("seven.safetensors", -EBADMSG, "7 bytes", "shorter than");
}

static void test_header_length_zero(void **state) {
        write_length("zero-length.safetensors", 0, "{}");
        REFUSED("zero-length.safetensors", -EBADMSG, "header length is 0");
}

static void test_header_length_huge(void **state) {
        gh_st_limits l = gh_st_limits_default();

        /* These must be refused before any allocation of that size (which
         * ASan would abort on). */
        write_length("huge.safetensors", UINT64_C(1) << 62, "{}");
        REFUSED("huge.safetensors", -E2BIG, "4611686018427387904", "limit");
        write_length("max.safetensors", UINT64_MAX, "{}");
        REFUSED("max.safetensors", -E2BIG, "18446744073709551615", "limit");
        l.max_header_size = INT_MAX - 1;
        REFUSED_LIMITS("huge.safetensors", &l, -E2BIG, "4611686018427387904");
        /* Just over a limit. */
        write_raw("over-limit.safetensors", "{\"a\":{\"dtype\":\"U8\",\"shape\":[1],\"data_offsets\":[0,1]}}", 1);
        l.max_header_size = 20;
        REFUSED_LIMITS("over-limit.safetensors", &l, -E2BIG, "header length 53", "limit 20");
        /* Under the limit but beyond the file: no allocation either. */
        write_length("past-eof.safetensors", 90 << 20, "{}");
        REFUSED("past-eof.safetensors", -EBADMSG, "94371840", "past the end of the file");
}

static void test_header_truncated(void **state) {
        write_length("truncated-header.safetensors", 100, "{\"a\":{\"dtype\":\"U8\",\"shape\":[1],");
        REFUSED("truncated-header.safetensors", -EBADMSG, "header length 100", "past the end of the file (39 bytes)");
        /* A length one past the file. */
        write_length("one-past.safetensors", 3, "{}");
        REFUSED("one-past.safetensors", -EBADMSG, "header length 3", "past the end");
        /* The length covers the file but the JSON inside it is cut short. */
        write_length("cut-json.safetensors", 13, "{\"a\":{\"dtype\"");
        REFUSED("cut-json.safetensors", -EBADMSG, "not valid JSON", "tensor \"a\"", "truncated");
}

/* ---- malformed files: the JSON text ------------------------------------ */

static void test_header_not_object(void **state) {
        RAW_REFUSED("array.safetensors", "[1]", 0, -EBADMSG, "does not start with '{'");
        RAW_REFUSED("string.safetensors", "\"x\"", 0, -EBADMSG, "does not start with '{'");
        RAW_REFUSED("leading-space.safetensors", " {}", 0, -EBADMSG, "does not start with '{'");
        RAW_REFUSED("bom.safetensors", "\xef\xbb\xbf{}", 0, -EBADMSG, "does not start with '{'");
}

static void test_header_trailing_bytes(void **state) {
        static const char nul_padded[] = "\x06\0\0\0\0\0\0\0{}\0\0\0\0";

        assert_int_equal(gh_test_write_file(path_of("nul-pad.safetensors"), nul_padded, sizeof(nul_padded) - 1), 0);
        REFUSED("nul-pad.safetensors", -EBADMSG, "data after its JSON object at byte 2");
        RAW_REFUSED("garbage.safetensors", "{}  x", 0, -EBADMSG, "data after its JSON object at byte 4");
        RAW_REFUSED("two-objects.safetensors", "{}{}", 0, -EBADMSG, "data after its JSON object");
        raw_ok("space-pad.safetensors", "{}      ", 0);
}

static void test_header_invalid_utf8(void **state) {
        static const char *const bad[] = {
                "{\"a\xff\":{}}",          /* not UTF-8 at all */
                "{\"a\xc0\x80\":{}}",      /* overlong NUL */
                "{\"a\xe0\x80\xaf\":{}}",  /* overlong '/' */
                "{\"a\xed\xa0\x80\":{}}",  /* an encoded surrogate */
                "{\"a\xf4\x90\x80\x80\":{}}", /* above U+10FFFF */
                "{\"a\xe2\x82\":{}}",      /* cut short */
                "{\"a\x80\":{}}",          /* lone continuation byte */
        };
        char file[64];

        for (size_t i = 0; i < ELEMENTSOF(bad); i++) {
                snprintf(file, sizeof(file), "utf8-%zu.safetensors", i);
                RAW_REFUSED(file, bad[i], 0, -EBADMSG, "invalid UTF-8");
        }
        /* In a value, inside an entry: the message names the tensor. */
        RAW_REFUSED("utf8-dtype.safetensors", "{\"w\":{\"dtype\":\"F3\xff\"}}", 0, -EBADMSG, "tensor \"w\"",
                    "invalid UTF-8");
}

static void test_header_invalid_json(void **state) {
        static const struct {
                const char *header, *needle;
        } bad[] = {
                {"{", "truncated"},
                {"{\"a\":{\"dtype\":\"U8\"", "truncated"},
                {"{\"a\":1 \"b\":2}", "expected ',' or '}'"},
                {"{\"a\":{\"shape\":[1 2]}}", "expected ',' or ']'"},
                {"{\"a\":{\"shape\":[1,]}}", "unexpected character"},
                {"{\"a\":1,}", "expected a quoted key"},
                {"{'a':1}", "expected a quoted key"},
                {"{\"a\":'x'}", "unexpected character"},
                {"{\"a\":NaN}", "unexpected character"},
                {"{\"a\":Infinity}", "unexpected character"},
                {"{\"a\":tru}", "unexpected character"},
                {"{\"a\":1 /* c */}", "expected ',' or '}'"},
                {"{\"a\":\"x\ty\"}", "control character"},
                {"{\"a\nb\":1}", "control character"},
                {"{\"a\":\"\\x\"}", "bad escape"},
                {"{\"a\":\"\\u12\"}", "bad \\u escape"},
                {"{\"a\":\"\\ud800\"}", "unpaired surrogate"},
                {"{\"a\":\"\\udc00\"}", "unpaired surrogate"},
                {"{\"a\":\"\\ud800\\u0041\"}", "unpaired surrogate"},
                {"{\"a\":01}", "leading zero"},
                {"{\"a\":-}", "bad number"},
                {"{\"a\":1.}", "bad number"},
                {"{\"a\":1e}", "bad number"},
                {"{\"a\":+1}", "unexpected character"},
                {"{\"a\" 1}", "expected ':'"},
                {"{1:2}", "expected a quoted key"},
        };
        char file[64];

        for (size_t i = 0; i < ELEMENTSOF(bad); i++) {
                snprintf(file, sizeof(file), "json-%zu.safetensors", i);
                RAW_REFUSED(file, bad[i].header, 0, -EBADMSG, "not valid JSON", bad[i].needle);
        }
}

static void test_header_too_deep(void **state) {
        gh_st_limits l = gh_st_limits_default();

        RAW_REFUSED("deep.safetensors", "{\"w\":{\"shape\":[[1]]}}", 0, -EBADMSG, "tensor \"w\"", "nested more than 3");
        RAW_REFUSED("deep-obj.safetensors", "{\"w\":{\"shape\":{\"a\":1}}}", 0, -EBADMSG, "tensor \"w\"",
                    "\"shape\" is an object");
        l.max_json_depth = 2;
        write_raw("depth-limit.safetensors", "{\"w\":{\"dtype\":\"U8\",\"shape\":[1],\"data_offsets\":[0,1]}}", 1);
        REFUSED_LIMITS("depth-limit.safetensors", &l, -E2BIG, "tensor \"w\"", "nested more than 2");
}

/* ---- malformed files: tensor entries ------------------------------------ */

static void test_entry_not_object(void **state) {
        RAW_REFUSED("entry-number.safetensors", "{\"w.number\":5}", 0, -EBADMSG, "tensor \"w.number\"",
                    "entry is not an object");
        RAW_REFUSED("entry-string.safetensors", "{\"w.string\":\"F32\"}", 0, -EBADMSG, "tensor \"w.string\"",
                    "entry is not an object");
        RAW_REFUSED("entry-null.safetensors", "{\"w.null\":null}", 0, -EBADMSG, "tensor \"w.null\"",
                    "entry is not an object");
        RAW_REFUSED("entry-array.safetensors", "{\"w.array\":[0,4]}", 0, -EBADMSG, "tensor \"w.array\"",
                    "entry is not an object");
}

static void test_missing_fields(void **state) {
        RAW_REFUSED("no-dtype.safetensors", "{\"w\":{\"shape\":[1],\"data_offsets\":[0,1]}}", 1, -EBADMSG,
                    "tensor \"w\"", "missing \"dtype\"");
        RAW_REFUSED("no-shape.safetensors", "{\"w\":{\"dtype\":\"U8\",\"data_offsets\":[0,1]}}", 1, -EBADMSG,
                    "tensor \"w\"", "missing \"shape\"");
        RAW_REFUSED("no-offsets.safetensors", "{\"w\":{\"dtype\":\"U8\",\"shape\":[1]}}", 1, -EBADMSG,
                    "tensor \"w\"", "missing \"data_offsets\"");
        RAW_REFUSED("no-fields.safetensors", "{\"w\":{}}", 0, -EBADMSG, "tensor \"w\"", "missing \"dtype\"");
}

static void test_wrong_field_types(void **state) {
        RAW_REFUSED("dtype-number.safetensors", "{\"w\":{\"dtype\":4,\"shape\":[1],\"data_offsets\":[0,1]}}", 1,
                    -EBADMSG, "tensor \"w\"", "\"dtype\" is not a string");
        RAW_REFUSED("dtype-array.safetensors", "{\"w\":{\"dtype\":[\"U8\"],\"shape\":[1],\"data_offsets\":[0,1]}}",
                    1, -EBADMSG, "tensor \"w\"", "\"dtype\" is not a string");
        RAW_REFUSED("shape-string.safetensors", "{\"w\":{\"dtype\":\"U8\",\"shape\":\"1\",\"data_offsets\":[0,1]}}",
                    1, -EBADMSG, "tensor \"w\"", "\"shape\" is not an array");
        RAW_REFUSED("offsets-null.safetensors", "{\"w\":{\"dtype\":\"U8\",\"shape\":[1],\"data_offsets\":null}}", 1,
                    -EBADMSG, "tensor \"w\"", "\"data_offsets\" is not an array");
}

static void test_unknown_fields(void **state) {
        RAW_REFUSED("unknown-field.safetensors", "{\"w\":{\"dtype\":\"U8\",\"shape\":[1],\"offsets\":[0,1]}}", 1,
                    -EBADMSG, "tensor \"w\"", "unknown field \"offsets\"");
        RAW_REFUSED("extra-field.safetensors",
                    "{\"w\":{\"dtype\":\"U8\",\"shape\":[1],\"data_offsets\":[0,1],\"stride\":[1]}}", 1, -EBADMSG,
                    "tensor \"w\"", "more than 3 fields");
}

static void test_unknown_dtype(void **state) {
        RAW_REFUSED("dtype-f33.safetensors", "{\"w\":{\"dtype\":\"F33\",\"shape\":[1],\"data_offsets\":[0,4]}}", 4,
                    -EBADMSG, "tensor \"w\"", "unknown dtype \"F33\"");
        RAW_REFUSED("dtype-lower.safetensors", "{\"w\":{\"dtype\":\"f32\",\"shape\":[1],\"data_offsets\":[0,4]}}", 4,
                    -EBADMSG, "tensor \"w\"", "unknown dtype \"f32\"");
        RAW_REFUSED("dtype-f4.safetensors", "{\"w\":{\"dtype\":\"F4\",\"shape\":[2],\"data_offsets\":[0,1]}}", 1,
                    -EBADMSG, "tensor \"w\"", "unknown dtype \"F4\"");
        RAW_REFUSED("dtype-nul.safetensors",
                    "{\"w\":{\"dtype\":\"F32\\u0000\",\"shape\":[1],\"data_offsets\":[0,4]}}", 4, -EBADMSG,
                    "tensor \"w\"", "unknown dtype \"F32\\u0000\"");
}

static void test_bad_shape(void **state) {
        static const char *const shapes[] = {"[-1]", "[1.5]", "[\"2\"]", "[1e0]", "[true]", "[null]", "[2,-0.0]"};
        char header[256], file[64];

        for (size_t i = 0; i < ELEMENTSOF(shapes); i++) {
                snprintf(header, sizeof(header), "{\"w\":{\"dtype\":\"U8\",\"shape\":%s,\"data_offsets\":[0,1]}}",
                         shapes[i]);
                snprintf(file, sizeof(file), "shape-%zu.safetensors", i);
                RAW_REFUSED(file, header, 1, -EBADMSG, "tensor \"w\"", "is not a non-negative integer");
        }
}

static void test_too_many_dims(void **state) {
        gh_st_limits l = gh_st_limits_default();

        RAW_REFUSED("dims-9.safetensors",
                    "{\"w\":{\"dtype\":\"U8\",\"shape\":[1,1,1,1,1,1,1,1,1],\"data_offsets\":[0,1]}}", 1, -E2BIG,
                    "tensor \"w\"", "shape has more than 8 dimensions");
        l.max_dims = 2;
        write_raw("dims-3.safetensors", "{\"w\":{\"dtype\":\"U8\",\"shape\":[1,1,1],\"data_offsets\":[0,1]}}", 1);
        REFUSED_LIMITS("dims-3.safetensors", &l, -E2BIG, "tensor \"w\"", "3 dimensions", "limit 2");
        l.max_dims = 1;
        REFUSED_LIMITS("dims-3.safetensors", &l, -E2BIG, "tensor \"w\"", "3 dimensions", "limit 1");
}

static void test_element_count_overflow(void **state) {
        RAW_REFUSED("elements-overflow.safetensors",
                    "{\"w\":{\"dtype\":\"U8\",\"shape\":[4294967296,4294967296],\"data_offsets\":[0,1]}}", 1, -EBADMSG,
                    "tensor \"w\"", "more than 2^64 elements", "[4294967296, 4294967296]");
        RAW_REFUSED("bytes-overflow.safetensors",
                    "{\"w\":{\"dtype\":\"F32\",\"shape\":[4611686018427387904],\"data_offsets\":[0,4]}}", 4, -EBADMSG,
                    "tensor \"w\"", "more than 2^64 bytes");
        /* 2^64 - 1 elements fit, their size does not match. */
        RAW_REFUSED("elements-max.safetensors",
                    "{\"w\":{\"dtype\":\"U8\",\"shape\":[18446744073709551615],\"data_offsets\":[0,1]}}", 1, -EBADMSG,
                    "tensor \"w\"", "needs 18446744073709551615 bytes");
        /* A zero dimension makes any product 0, even past 2^64. */
        raw_ok("zero-dim.safetensors",
               "{\"w\":{\"dtype\":\"F64\",\"shape\":[0,18446744073709551615,18446744073709551615],"
               "\"data_offsets\":[0,0]}}",
               0);
}

static void test_integer_too_large(void **state) {
        RAW_REFUSED("int-2p64.safetensors",
                    "{\"w\":{\"dtype\":\"U8\",\"shape\":[18446744073709551616],\"data_offsets\":[0,1]}}", 1, -EBADMSG,
                    "tensor \"w\"", "18446744073709551616 does not fit in 64 bits");
        RAW_REFUSED("offset-huge.safetensors",
                    "{\"w\":{\"dtype\":\"U8\",\"shape\":[1],\"data_offsets\":[0,99999999999999999999999]}}", 1,
                    -EBADMSG, "tensor \"w\"", "does not fit in 64 bits");
}

static void test_bad_data_offsets(void **state) {
        static const char *const offsets[] = {"[0]", "[0,1,2]", "[]", "[0,\"1\"]", "[-1,1]", "[0,1.0]", "[0,1e0]"};
        char header[256], file[64];

        for (size_t i = 0; i < ELEMENTSOF(offsets); i++) {
                snprintf(header, sizeof(header), "{\"w\":{\"dtype\":\"U8\",\"shape\":[1],\"data_offsets\":%s}}",
                         offsets[i]);
                snprintf(file, sizeof(file), "offsets-%zu.safetensors", i);
                RAW_REFUSED(file, header, 1, -EBADMSG, "tensor \"w\"", "not two non-negative integers");
        }
        RAW_REFUSED("offsets-long.safetensors",
                    "{\"w\":{\"dtype\":\"U8\",\"shape\":[1],\"data_offsets\":[0,1,2,3,4,5,6,7,8]}}", 1, -EBADMSG,
                    "tensor \"w\"", "\"data_offsets\" has more than 8 elements");
}

static void test_offsets_reversed(void **state) {
        RAW_REFUSED("reversed.safetensors", "{\"w\":{\"dtype\":\"U8\",\"shape\":[0],\"data_offsets\":[4,2]}}", 4,
                    -EBADMSG, "tensor \"w\"", "data_offsets [4, 2] end before they begin");
}

static void test_offsets_past_data(void **state) {
        RAW_REFUSED("past-data.safetensors", "{\"w\":{\"dtype\":\"U8\",\"shape\":[8],\"data_offsets\":[0,8]}}", 7,
                    -EBADMSG, "tensor \"w\"", "data_offsets [0, 8] go past the end of the data area (7 bytes");
        RAW_REFUSED("past-data-huge.safetensors",
                    "{\"w\":{\"dtype\":\"U8\",\"shape\":[1],\"data_offsets\":[18446744073709551614,18446744073709551615]}}",
                    1, -EBADMSG, "tensor \"w\"", "past the end of the data area");
}

static void test_size_mismatch(void **state) {
        RAW_REFUSED("size-mismatch.safetensors", "{\"w\":{\"dtype\":\"F32\",\"shape\":[2,3],\"data_offsets\":[0,20]}}",
                    20, -EBADMSG, "tensor \"w\"", "F32 shape [2, 3] needs 24 bytes, data_offsets [0, 20] hold 20");
        RAW_REFUSED("scalar-mismatch.safetensors", "{\"s\":{\"dtype\":\"F64\",\"shape\":[],\"data_offsets\":[0,0]}}",
                    0, -EBADMSG, "tensor \"s\"", "shape [] needs 8 bytes");
}

static void test_overlap(void **state) {
        RAW_REFUSED("overlap.safetensors",
                    "{\"model.diffusion_model.x.weight\":{\"dtype\":\"U8\",\"shape\":[10],\"data_offsets\":[10,20]},"
                    "\"y\":{\"dtype\":\"U8\",\"shape\":[24],\"data_offsets\":[16,40]},"
                    "\"z\":{\"dtype\":\"U8\",\"shape\":[10],\"data_offsets\":[0,10]}}",
                    40, -EBADMSG, "tensor \"y\": data_offsets [16, 40] overlap tensor \"model.diffusion_model.x.weight\" [10, 20]");
        RAW_REFUSED("same-range.safetensors",
                    "{\"a\":{\"dtype\":\"U8\",\"shape\":[4],\"data_offsets\":[0,4]},"
                    "\"b\":{\"dtype\":\"I32\",\"shape\":[1],\"data_offsets\":[0,4]}}",
                    4, -EBADMSG, "tensor \"b\": data_offsets [0, 4] overlap tensor \"a\" [0, 4]");
        /* An empty tensor inside another one. */
        RAW_REFUSED("empty-inside.safetensors",
                    "{\"a\":{\"dtype\":\"U8\",\"shape\":[8],\"data_offsets\":[0,8]},"
                    "\"e\":{\"dtype\":\"U8\",\"shape\":[0],\"data_offsets\":[4,4]}}",
                    8, -EBADMSG, "tensor \"e\": data_offsets [4, 4] overlap tensor \"a\" [0, 8]");
        /* ...but one on a boundary is fine, as is one at the very end. */
        raw_ok("empty-boundary.safetensors",
               "{\"a\":{\"dtype\":\"U8\",\"shape\":[8],\"data_offsets\":[0,8]},"
               "\"e\":{\"dtype\":\"U8\",\"shape\":[0],\"data_offsets\":[8,8]},"
               "\"f\":{\"dtype\":\"U8\",\"shape\":[0],\"data_offsets\":[0,0]},"
               "\"b\":{\"dtype\":\"U8\",\"shape\":[2],\"data_offsets\":[8,10]},"
               "\"g\":{\"dtype\":\"U8\",\"shape\":[0],\"data_offsets\":[10,10]}}",
               10);
}

static void test_holes(void **state) {
        RAW_REFUSED("hole.safetensors",
                    "{\"a\":{\"dtype\":\"U8\",\"shape\":[4],\"data_offsets\":[0,4]},"
                    "\"b\":{\"dtype\":\"U8\",\"shape\":[4],\"data_offsets\":[8,12]}}",
                    12, -EBADMSG, "tensor \"b\": data_offsets [8, 12] leave a hole of 4 bytes after tensor \"a\" [0, 4]");
        RAW_REFUSED("hole-start.safetensors", "{\"a\":{\"dtype\":\"U8\",\"shape\":[4],\"data_offsets\":[4,8]}}", 8,
                    -EBADMSG, "tensor \"a\"", "first 4 bytes of the data area");
        RAW_REFUSED("trailing.safetensors", "{\"a\":{\"dtype\":\"U8\",\"shape\":[4],\"data_offsets\":[0,4]}}", 5,
                    -EBADMSG, "1 bytes of the data area after tensor \"a\" [0, 4] belong to no tensor");
        RAW_REFUSED("no-tensors.safetensors", "{}", 3, -EBADMSG, "data area has 3 bytes but the header lists no tensors");
        RAW_REFUSED("metadata-only-data.safetensors", "{\"__metadata__\":{\"a\":\"b\"}}", 1, -EBADMSG,
                    "lists no tensors");
}

static void test_duplicate_names(void **state) {
        RAW_REFUSED("dup.safetensors",
                    "{\"w\":{\"dtype\":\"U8\",\"shape\":[4],\"data_offsets\":[0,4]},"
                    "\"w\":{\"dtype\":\"F32\",\"shape\":[1],\"data_offsets\":[0,4]}}",
                    4, -EBADMSG, "duplicate tensor name \"w\"");
        /* The same name spelled with an escape. */
        RAW_REFUSED("dup-escaped.safetensors",
                    "{\"wa\":{\"dtype\":\"U8\",\"shape\":[4],\"data_offsets\":[0,4]},"
                    "\"w\\u0061\":{\"dtype\":\"U8\",\"shape\":[0],\"data_offsets\":[4,4]}}",
                    4, -EBADMSG, "duplicate tensor name \"wa\"");
        /* Not adjacent, among others. */
        RAW_REFUSED("dup-far.safetensors",
                    "{\"x\":{\"dtype\":\"U8\",\"shape\":[1],\"data_offsets\":[0,1]},"
                    "\"y\":{\"dtype\":\"U8\",\"shape\":[1],\"data_offsets\":[1,2]},"
                    "\"z\":{\"dtype\":\"U8\",\"shape\":[1],\"data_offsets\":[2,3]},"
                    "\"x\":{\"dtype\":\"U8\",\"shape\":[1],\"data_offsets\":[0,1]}}",
                    3, -EBADMSG, "duplicate tensor name \"x\"");
        RAW_REFUSED("dup-metadata.safetensors", "{\"__metadata__\":{},\"__metadata__\":{\"a\":\"b\"}}", 0, -EBADMSG,
                    "\"__metadata__\" appears twice");
}

static void test_duplicate_fields(void **state) {
        /* The aliasing trick: two dtypes, one reader sees U8, another F32. */
        RAW_REFUSED("dup-dtype.safetensors", "{\"w\":{\"dtype\":\"U8\",\"dtype\":\"F32\",\"shape\":[1]}}", 4,
                    -EBADMSG, "tensor \"w\": a field appears twice");
        RAW_REFUSED("dup-offsets.safetensors",
                    "{\"w\":{\"data_offsets\":[0,4],\"shape\":[4],\"data_offsets\":[0,4]}}", 4, -EBADMSG,
                    "tensor \"w\": a field appears twice");
        RAW_REFUSED("dup-metadata-key.safetensors", "{\"__metadata__\":{\"a\":\"1\",\"b\":\"2\",\"a\":\"3\"}}", 0,
                    -EBADMSG, "__metadata__: a key appears twice");
}

static void test_bad_metadata(void **state) {
        RAW_REFUSED("meta-string.safetensors", "{\"__metadata__\":\"pt\"}", 0, -EBADMSG, "__metadata__ is not an object");
        RAW_REFUSED("meta-array.safetensors", "{\"__metadata__\":[\"pt\"]}", 0, -EBADMSG, "__metadata__ is not an object");
        RAW_REFUSED("meta-number.safetensors", "{\"__metadata__\":{\"epoch\":3}}", 0, -EBADMSG,
                    "__metadata__: value of \"epoch\" is not a string");
        RAW_REFUSED("meta-object.safetensors", "{\"__metadata__\":{\"cfg\":{\"a\":\"b\"}}}", 0, -EBADMSG,
                    "__metadata__: value of \"cfg\" is not a string");
        RAW_REFUSED("meta-list.safetensors", "{\"__metadata__\":{\"tags\":[\"a\"]}}", 0, -EBADMSG,
                    "__metadata__: value of \"tags\" is not a string");
        RAW_REFUSED("meta-null.safetensors", "{\"__metadata__\":{\"x\":null}}", 0, -EBADMSG,
                    "__metadata__: value of \"x\" is not a string");
        RAW_REFUSED("meta-nul-value.safetensors", "{\"__metadata__\":{\"x\":\"a\\u0000b\"}}", 0, -EBADMSG,
                    "__metadata__: value of \"x\" contains a NUL character");
        RAW_REFUSED("meta-nul-key.safetensors", "{\"__metadata__\":{\"x\\u0000y\":\"a\"}}", 0, -EBADMSG,
                    "__metadata__: key \"x\\u0000y\" contains a NUL character");
}

static void test_too_many_tensors(void **state) {
        gh_st_limits l = gh_st_limits_default();
        static const char three[] = "{\"a\":{\"dtype\":\"U8\",\"shape\":[1],\"data_offsets\":[0,1]},"
                                    "\"b\":{\"dtype\":\"U8\",\"shape\":[1],\"data_offsets\":[1,2]},"
                                    "\"c\":{\"dtype\":\"U8\",\"shape\":[1],\"data_offsets\":[2,3]}}";
        static const char four[] = "{\"a\":{\"dtype\":\"U8\",\"shape\":[1],\"data_offsets\":[0,1]},"
                                   "\"b\":{\"dtype\":\"U8\",\"shape\":[1],\"data_offsets\":[1,2]},"
                                   "\"c\":{\"dtype\":\"U8\",\"shape\":[1],\"data_offsets\":[2,3]},"
                                   "\"d\":{\"dtype\":\"U8\",\"shape\":[1],\"data_offsets\":[3,4]}}";
        static const char meta[] = "{\"__metadata__\":{},\"a\":{\"dtype\":\"U8\",\"shape\":[1],\"data_offsets\":[0,1]},"
                                   "\"b\":{\"dtype\":\"U8\",\"shape\":[1],\"data_offsets\":[1,2]}}";
        gh_st_file *f;

        l.max_tensors = 2;
        write_raw("three.safetensors", three, 3);
        REFUSED_LIMITS("three.safetensors", &l, -E2BIG, "3 tensors, more than the limit 2");
        write_raw("four.safetensors", four, 4);
        REFUSED_LIMITS("four.safetensors", &l, -E2BIG, "more than 2 tensors");
        /* __metadata__ does not count. */
        write_raw("two-and-meta.safetensors", meta, 2);
        f = open_ok("two-and-meta.safetensors", &l, NULL);
        assert_int_equal(f->n_tensors, 2);
        gh_st_free(f);
}

static void test_too_many_metadata(void **state) {
        gh_st_limits l = gh_st_limits_default();
        gh_st_file *f;

        l.max_metadata = 2;
        write_raw("meta-3.safetensors", "{\"__metadata__\":{\"a\":\"1\",\"b\":\"2\",\"c\":\"3\"}}", 0);
        REFUSED_LIMITS("meta-3.safetensors", &l, -E2BIG, "__metadata__ has more than 2 entries");
        write_raw("meta-2.safetensors", "{\"__metadata__\":{\"a\":\"1\",\"b\":\"2\"}}", 0);
        f = open_ok("meta-2.safetensors", &l, NULL);
        assert_int_equal(f->n_metadata, 2);
        gh_st_free(f);
}

static void test_bad_names(void **state) {
        gh_st_limits l = gh_st_limits_default();
        char header[9000];

        RAW_REFUSED("empty-name.safetensors", "{\"\":{\"dtype\":\"U8\",\"shape\":[1],\"data_offsets\":[0,1]}}", 1,
                    -EBADMSG, "tensor name is empty");
        RAW_REFUSED("nul-name.safetensors", "{\"a\\u0000b\":{\"dtype\":\"U8\",\"shape\":[1],\"data_offsets\":[0,1]}}",
                    1, -EBADMSG, "tensor name \"a\\u0000b\" contains a NUL character");
        /* Names that differ only after a NUL would collapse in C strings. */
        RAW_REFUSED("nul-names.safetensors",
                    "{\"a\\u0000x\":{\"dtype\":\"U8\",\"shape\":[1],\"data_offsets\":[0,1]},"
                    "\"a\\u0000y\":{\"dtype\":\"U8\",\"shape\":[1],\"data_offsets\":[1,2]}}",
                    2, -EBADMSG, "contains a NUL character");
        RAW_REFUSED("nul-field.safetensors", "{\"w\":{\"dtype\\u0000\":\"U8\",\"shape\":[1],\"data_offsets\":[0,1]}}",
                    1, -EBADMSG, "tensor \"w\": key \"dtype\\u0000\" contains a NUL character");
        l.max_name_len = 8;
        write_raw("long-name.safetensors", "{\"abcdefghi\":{\"dtype\":\"U8\",\"shape\":[1],\"data_offsets\":[0,1]}}", 1);
        REFUSED_LIMITS("long-name.safetensors", &l, -E2BIG, "tensor \"abcdefghi\"", "9 bytes", "limit 8");
        /* Over the default limit; the message shortens the name. */
        int k = snprintf(header, sizeof(header), "{\"");
        for (int i = 0; i < 4097; i++)
                header[k++] = 'n';
        snprintf(header + k, sizeof(header) - (size_t) k, "\":{\"dtype\":\"U8\",\"shape\":[1],\"data_offsets\":[0,1]}}");
        RAW_REFUSED("long-name-default.safetensors", header, 1, -E2BIG, "4097 bytes", "limit 4096", "nnn...");
}

static void test_message_escapes_names(void **state) {
        /* A hostile name cannot break the message into lines or fake quotes. */
        RAW_REFUSED("escape-name.safetensors",
                    "{\"evil\\n\\\"name\\u001b[31m\":{\"dtype\":\"U8\",\"shape\":[1],\"data_offsets\":[0,2]}}", 2,
                    -EBADMSG, "tensor \"evil\\u000a\\\"name\\u001b[31m\"");
}

static void test_truncated_data(void **state) {
        const gh_test_tensor t[] = {
                {"first", GH_DTYPE_F32, 2, {4, 4}, NULL},
                {"last", GH_DTYPE_F16, 1, {100}, NULL},
        };
        struct stat st;
        int fd = -1;

        assert_int_equal(gh_test_write_safetensors(path_of("truncated.safetensors"), t, ELEMENTSOF(t), NULL, 8), 0);
        gh_st_free(open_ok("truncated.safetensors", NULL, NULL));
        fd = openat(dir_fd, "truncated.safetensors", O_WRONLY | O_CLOEXEC);
        assert_true(fd >= 0);
        assert_int_equal(fstat(fd, &st), 0);
        assert_int_equal(ftruncate(fd, st.st_size - 1), 0);
        REFUSED("truncated.safetensors", -EBADMSG, "tensor \"last\"", "go past the end of the data area", "truncated");
        assert_int_equal(ftruncate(fd, st.st_size - 200 - 10), 0);
        REFUSED("truncated.safetensors", -EBADMSG, "tensor \"first\"", "[0, 64]", "(54 bytes");
        /* Cut inside the header. */
        assert_int_equal(ftruncate(fd, 20), 0);
        REFUSED("truncated.safetensors", -EBADMSG, "past the end of the file (20 bytes)");
        close(fd);
}

static void test_no_fd_leaks(void **state) {
        assert_int_equal(count_open_fds(), fds_at_start);
}

int main(void) {
        const struct CMUnitTest tests[] = {
                cmocka_unit_test(test_dtype_names),
                cmocka_unit_test(test_limits_default),
                cmocka_unit_test(test_roundtrip_dtypes),
                cmocka_unit_test(test_zero_elements_and_scalars),
                cmocka_unit_test(test_unaligned_header),
                cmocka_unit_test(test_aligned_flag),
                cmocka_unit_test(test_metadata),
                cmocka_unit_test(test_find),
                cmocka_unit_test(test_unusual_names),
                cmocka_unit_test(test_large_tensor),
                cmocka_unit_test(test_parse_in_memory),
                cmocka_unit_test(test_invalid_limits),
                cmocka_unit_test(test_open_errors),
                cmocka_unit_test(test_returned_fd),
                cmocka_unit_test(test_file_too_short),
                cmocka_unit_test(test_header_length_zero),
                cmocka_unit_test(test_header_length_huge),
                cmocka_unit_test(test_header_truncated),
                cmocka_unit_test(test_header_not_object),
                cmocka_unit_test(test_header_trailing_bytes),
                cmocka_unit_test(test_header_invalid_utf8),
                cmocka_unit_test(test_header_invalid_json),
                cmocka_unit_test(test_header_too_deep),
                cmocka_unit_test(test_entry_not_object),
                cmocka_unit_test(test_missing_fields),
                cmocka_unit_test(test_wrong_field_types),
                cmocka_unit_test(test_unknown_fields),
                cmocka_unit_test(test_unknown_dtype),
                cmocka_unit_test(test_bad_shape),
                cmocka_unit_test(test_too_many_dims),
                cmocka_unit_test(test_element_count_overflow),
                cmocka_unit_test(test_integer_too_large),
                cmocka_unit_test(test_bad_data_offsets),
                cmocka_unit_test(test_offsets_reversed),
                cmocka_unit_test(test_offsets_past_data),
                cmocka_unit_test(test_size_mismatch),
                cmocka_unit_test(test_overlap),
                cmocka_unit_test(test_holes),
                cmocka_unit_test(test_duplicate_names),
                cmocka_unit_test(test_duplicate_fields),
                cmocka_unit_test(test_bad_metadata),
                cmocka_unit_test(test_too_many_tensors),
                cmocka_unit_test(test_too_many_metadata),
                cmocka_unit_test(test_bad_names),
                cmocka_unit_test(test_message_escapes_names),
                cmocka_unit_test(test_truncated_data),
                cmocka_unit_test(test_no_fd_leaks),
        };

        return cmocka_run_group_tests(tests, setup, teardown);
}

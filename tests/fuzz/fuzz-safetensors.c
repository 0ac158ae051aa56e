/* libFuzzer target for the safetensors reader (daemon/common/safetensors.c).
 *
 * The input is the start of a file. gh_st_parse() reads it twice: as the
 * whole file (default limits), then as the head of a longer file, longer by
 * an amount picked by a hash of the input among small, page-sized and huge
 * values up to a file size of 2^64 - 1 (small limits). A parse that succeeds
 * must describe a consistent file: sorted unique names that gh_st_find()
 * finds, shapes whose product and size match the byte ranges, ranges that
 * tile the data area exactly, data_start + data_size = file size, limits
 * kept. A refusal must return a known code and a one-line message, and
 * never come from json-c after the reader's own scanner passed the text.
 * Any broken invariant abort()s. */
#include <errno.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "fuzz.h"
#include "common/safetensors.h"
#include "common/util.h"


static const gh_st_limits small_limits = {
        .max_header_size = 1 << 16,
        .max_tensors = 16,
        .max_dims = 4,
        .max_name_len = 32,
        .max_json_depth = GH_ST_JSON_DEPTH,
        .max_metadata = 8,
};

static int cmp_by_offset(const void *a, const void *b) {
        const gh_st_tensor *x = *(const gh_st_tensor *const *) a, *y = *(const gh_st_tensor *const *) b;

        if (x->begin != y->begin)
                return x->begin < y->begin ? -1 : 1;
        return x->end < y->end ? -1 : x->end > y->end;
}

static void check_tensor(const gh_st_file *f, const gh_st_tensor *t, const gh_st_limits *limits) {
        uint64_t n = 1, bytes;
        size_t len = strlen(t->name);

        CHECK(len > 0 && len <= limits->max_name_len);
        CHECK(gh_st_find(f, t->name) == t);
        CHECK(gh_dtype_to_string(t->dtype) && gh_dtype_size(t->dtype) > 0);
        CHECK(t->n_dims <= limits->max_dims);
        for (unsigned i = 0; i < t->n_dims; i++)
                CHECK(!__builtin_mul_overflow(n, t->shape[i], &n));
        CHECK(n == t->n_elements);
        CHECK(!__builtin_mul_overflow(n, (uint64_t) gh_dtype_size(t->dtype), &bytes));
        CHECK(t->begin <= t->end && t->end <= f->data_size);
        CHECK(t->end - t->begin == bytes);
}

/* Sorted by offset, the ranges tile [0, data_size). */
static void check_layout(const gh_st_file *f) {
        const gh_st_tensor **v = calloc(f->n_tensors + 1, sizeof(*v));
        uint64_t at = 0;

        CHECK(v);
        for (size_t i = 0; i < f->n_tensors; i++)
                v[i] = &f->tensors[i];
        qsort(v, f->n_tensors, sizeof(*v), cmp_by_offset);
        for (size_t i = 0; i < f->n_tensors; i++) {
                CHECK(v[i]->begin == at);
                at = v[i]->end;
        }
        CHECK(at == f->data_size);
        free(v);
}

static void check_file(const gh_st_file *f, uint64_t file_size, const gh_st_limits *limits) {
        bool aligned = true;

        CHECK(f->header_size > 0 && f->header_size <= limits->max_header_size);
        CHECK(f->data_start == 8 + f->header_size);
        CHECK(f->data_start + f->data_size == file_size);
        CHECK(f->n_tensors <= limits->max_tensors);
        CHECK(f->n_metadata <= limits->max_metadata);
        for (size_t i = 0; i < f->n_tensors; i++) {
                CHECK(i == 0 || strcmp(f->tensors[i - 1].name, f->tensors[i].name) < 0);
                check_tensor(f, &f->tensors[i], limits);
                aligned &= (f->data_start + f->tensors[i].begin) % gh_dtype_size(f->tensors[i].dtype) == 0;
        }
        CHECK(aligned == f->aligned);
        check_layout(f);
        for (size_t i = 0; i < f->n_metadata; i++) {
                CHECK(i == 0 || strcmp(f->metadata_keys[i - 1], f->metadata_keys[i]) < 0);
                CHECK(gh_st_metadata_get(f, f->metadata_keys[i]) == f->metadata_values[i]);
        }
        CHECK(!gh_st_find(f, "__metadata__"));
}

static bool starts_with(const char *s, const char *prefix) {
        return strncmp(s, prefix, strlen(prefix)) == 0;
}

/* |limits| NULL: the defaults, passed as NULL. */
static void run(const uint8_t *data, size_t size, uint64_t file_size, const gh_st_limits *limits) {
        const gh_st_limits defaults = gh_st_limits_default();
        gh_st_file *f = NULL;
        char err[512];
        int r;

        err[0] = 0;
        r = gh_st_parse(data, size, file_size, limits, &f, err, sizeof(err));
        if (r == 0) {
                CHECK(f);
                check_file(f, file_size, limits ? limits : &defaults);
                gh_st_free(f);
                return;
        }
        CHECK(!f);
        /* -EINVAL only when the header runs past the bytes given. */
        CHECK(r == -EBADMSG || r == -E2BIG || r == -ENOMEM || (r == -EINVAL && file_size > size));
        CHECK(err[0] != 0 && !strchr(err, '\n'));
        /* The reader's own JSON scanner is at least as strict as json-c,
         * and agrees with it on the keys: these are never reached. (By
         * prefix: names from the input appear later in messages.) */
        CHECK(!starts_with(err, "header is not valid JSON: ") && !starts_with(err, "header is inconsistent") &&
              !starts_with(err, "header has a key that cannot be decoded"));
}

static uint64_t fnv1a(const uint8_t *p, size_t n) {
        uint64_t h = UINT64_C(0xcbf29ce484222325);

        for (size_t i = 0; i < n; i++)
                h = (h ^ p[i]) * UINT64_C(0x100000001b3);
        return h;
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size) {
        const uint64_t extra[] = {
                1, 2, 7, 8, 4096, UINT64_C(1) << 32, UINT64_C(1) << 62, UINT64_MAX - size,
        };
        uint64_t h = fnv1a(data, size);

        run(data, size, size, NULL);
        run(data, size, size + extra[h % ELEMENTSOF(extra)], &small_limits);
        return 0;
}

/* Safetensors writer for tests and benchmarks. See st-writer.h. The header
 * is built with json-c, so names with quotes or control characters come out
 * escaped; tensor data is streamed in chunks, so large files need no large
 * buffer. */
#include <errno.h>
#include <fcntl.h>
#include <json-c/json.h>
#include <string.h>
#include <unistd.h>

#include "common/util.h"
#include "st-writer.h"

#define CHUNK (64 * 1024)

uint64_t gh_test_tensor_size(const gh_test_tensor *t) {
        uint64_t n = gh_dtype_size(t->dtype);

        for (unsigned i = 0; i < t->n_dims && i < GH_ST_MAX_DIMS; i++)
                if (__builtin_mul_overflow(n, t->shape[i], &n))
                        return UINT64_MAX;
        return n;
}

static uint64_t fnv1a(const char *s) {
        uint64_t h = UINT64_C(0xcbf29ce484222325);

        for (; *s; s++)
                h = (h ^ (unsigned char) *s) * UINT64_C(0x100000001b3);
        return h;
}

/* splitmix64 of the name's hash and the word index. */
static uint64_t pattern_word(uint64_t seed, uint64_t index) {
        uint64_t x = seed + (index + 1) * UINT64_C(0x9e3779b97f4a7c15);

        x = (x ^ (x >> 30)) * UINT64_C(0xbf58476d1ce4e5b9);
        x = (x ^ (x >> 27)) * UINT64_C(0x94d049bb133111eb);
        return x ^ (x >> 31);
}

void gh_test_pattern(const char *name, uint64_t offset, void *buf, size_t n) {
        uint64_t seed = fnv1a(name), word = 0, index = UINT64_MAX;
        unsigned char *p = buf;

        for (size_t i = 0; i < n; i++) {
                uint64_t at = offset + i;
                if (at / 8 != index) {
                        index = at / 8;
                        word = pattern_word(seed, index);
                }
                p[i] = (unsigned char) (word >> (8 * (at % 8)));
        }
}

static int write_full(int fd, const void *data, size_t len) {
        const char *p = data;

        while (len > 0) {
                ssize_t k = write(fd, p, len);
                if (k < 0 && errno == EINTR)
                        continue;
                if (k < 0)
                        return gh_negerrno();
                p += k;
                len -= (size_t) k;
        }
        return 0;
}

static void le64(unsigned char out[8], uint64_t v) {
        for (int i = 0; i < 8; i++)
                out[i] = (unsigned char) (v >> (8 * i));
}

static int create_file(const char *path) {
        int fd = open(path, O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC | O_NOCTTY, 0644);
        return fd < 0 ? gh_negerrno() : fd;
}

/* Writes the length field and |header| padded with spaces to |pad_to|. */
static int write_header(int fd, const char *header, size_t len, size_t pad_to) {
        unsigned char n[8];
        char spaces[64];
        int r;

        le64(n, len + pad_to);
        r = write_full(fd, n, 8);
        if (r >= 0)
                r = write_full(fd, header, len);
        memset(spaces, ' ', sizeof(spaces));
        for (size_t k; r >= 0 && pad_to > 0; pad_to -= k) {
                k = pad_to < sizeof(spaces) ? pad_to : sizeof(spaces);
                r = write_full(fd, spaces, k);
        }
        return r;
}

static int write_tensor_data(int fd, const gh_test_tensor *t) {
        uint64_t size = gh_test_tensor_size(t);
        _cleanup_free_ unsigned char *buf = NULL;

        if (t->data)
                return write_full(fd, t->data, size);
        buf = malloc(CHUNK);
        if (!buf)
                return -ENOMEM;
        for (uint64_t done = 0; done < size;) {
                size_t k = size - done < CHUNK ? (size_t) (size - done) : CHUNK;
                gh_test_pattern(t->name, done, buf, k);
                int r = write_full(fd, buf, k);
                if (r < 0)
                        return r;
                done += k;
        }
        return 0;
}

static json_object *u64_array(const uint64_t *v, size_t n) {
        json_object *a = json_object_new_array();

        for (size_t i = 0; a && i < n; i++)
                if (json_object_array_add(a, json_object_new_uint64(v[i])) < 0) {
                        json_object_put(a);
                        return NULL;
                }
        return a;
}

static int add_tensor(json_object *root, const gh_test_tensor *t, uint64_t *offset) {
        uint64_t size = gh_test_tensor_size(t), range[2] = {*offset, *offset + size};
        json_object *e;

        if (!t->name || !gh_dtype_to_string(t->dtype) || t->n_dims > GH_ST_MAX_DIMS || size == UINT64_MAX ||
            range[1] < range[0])
                return -EINVAL;
        e = json_object_new_object();
        if (!e || json_object_object_add(root, t->name, e) < 0) {
                json_object_put(e);
                return -ENOMEM;
        }
        if (json_object_object_add(e, "dtype", json_object_new_string(gh_dtype_to_string(t->dtype))) < 0 ||
            json_object_object_add(e, "shape", u64_array(t->shape, t->n_dims)) < 0 ||
            json_object_object_add(e, "data_offsets", u64_array(range, 2)) < 0)
                return -ENOMEM;
        *offset = range[1];
        return 0;
}

static int add_metadata(json_object *root, const char *const *kv) {
        json_object *m;

        if (!kv)
                return 0;
        m = json_object_new_object();
        if (!m || json_object_object_add(root, "__metadata__", m) < 0) {
                json_object_put(m);
                return -ENOMEM;
        }
        for (size_t i = 0; kv[i]; i += 2) {
                if (!kv[i + 1])
                        return -EINVAL;
                if (json_object_object_add(m, kv[i], json_object_new_string(kv[i + 1])) < 0)
                        return -ENOMEM;
        }
        return 0;
}

static json_object *build_header(const gh_test_tensor *tensors, size_t n, const char *const *metadata_kv, int *ret_r) {
        json_object *root = json_object_new_object();
        uint64_t offset = 0;
        int r = root ? add_metadata(root, metadata_kv) : -ENOMEM;

        for (size_t i = 0; r >= 0 && i < n; i++)
                r = add_tensor(root, &tensors[i], &offset);
        if (r < 0) {
                json_object_put(root);
                *ret_r = r;
                return NULL;
        }
        return root;
}

int gh_test_write_safetensors(const char *path, const gh_test_tensor *tensors, size_t n,
                              const char *const *metadata_kv, unsigned header_align) {
        json_object *root;
        const char *text;
        size_t len;
        int r = 0;

        if (!path || (n > 0 && !tensors) || header_align == 0)
                return -EINVAL;
        root = build_header(tensors, n, metadata_kv, &r);
        if (!root)
                return r;
        text = json_object_to_json_string_length(root, JSON_C_TO_STRING_PLAIN | JSON_C_TO_STRING_NOSLASHESCAPE, &len);
        _cleanup_close_ int fd = text ? create_file(path) : -ENOMEM;
        if (fd < 0) {
                json_object_put(root);
                return fd;
        }
        r = write_header(fd, text, len, (header_align - (8 + len) % header_align) % header_align);
        json_object_put(root);
        for (size_t i = 0; r >= 0 && i < n; i++)
                r = write_tensor_data(fd, &tensors[i]);
        return r;
}

int gh_test_write_raw_safetensors(const char *path, const char *header_json, const void *data, size_t data_len) {
        if (!path || !header_json || (!data && data_len > 0))
                return -EINVAL;
        _cleanup_close_ int fd = create_file(path);
        if (fd < 0)
                return fd;
        int r = write_header(fd, header_json, strlen(header_json), 0);
        return r < 0 ? r : write_full(fd, data, data_len);
}

int gh_test_write_file(const char *path, const void *data, size_t len) {
        if (!path || (!data && len > 0))
                return -EINVAL;
        _cleanup_close_ int fd = create_file(path);
        if (fd < 0)
                return fd;
        return write_full(fd, data, len);
}

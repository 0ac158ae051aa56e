/* Strict reader for safetensors files, the weight format of the model store.
 *
 * A safetensors file is an 8-byte little-endian length N, N bytes of UTF-8
 * JSON (the header), then the data area: the raw bytes of every tensor. The
 * header maps tensor names to {"dtype", "shape", "data_offsets": [begin,
 * end]}, offsets relative to the start of the data area (file offset 8 + N),
 * plus an optional "__metadata__" object of string values.
 *
 * The files come from outside (downloads), so the reader treats them as
 * hostile: every number is checked before use, with limits on what gets
 * allocated, and a file is accepted only if it describes each byte of its
 * data area exactly once. On refusal it says why in one line that names the
 * offending tensor. See safetensors.c for the rules and why they were chosen.
 *
 * Only the header is read; tensor bytes stay in the file, to be read through
 * the fd that gh_st_open() returns, at data_start + begin. */
#pragma once

#include <errno.h>
#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

/* Element types, in the spelling of the header. Only types with whole bytes
 * per element; the sub-byte ones (F4, F6_*) are refused as unknown. */
typedef enum gh_dtype {
        GH_DTYPE_BOOL,
        GH_DTYPE_U8,
        GH_DTYPE_I8,
        GH_DTYPE_F8_E5M2,
        GH_DTYPE_F8_E4M3,
        GH_DTYPE_F8_E8M0,
        GH_DTYPE_I16,
        GH_DTYPE_U16,
        GH_DTYPE_F16,
        GH_DTYPE_BF16,
        GH_DTYPE_I32,
        GH_DTYPE_U32,
        GH_DTYPE_F32,
        GH_DTYPE_F64,
        GH_DTYPE_I64,
        GH_DTYPE_U64,
        GH_DTYPE_C64, /* complex64: two F32 */
        _GH_DTYPE_MAX,
        _GH_DTYPE_INVALID = -EINVAL,
} gh_dtype;

/* Bytes per element; 0 for an invalid value. */
size_t gh_dtype_size(gh_dtype t);
/* "F32" -> GH_DTYPE_F32; _GH_DTYPE_INVALID if unknown (case matters). */
gh_dtype gh_dtype_from_string(const char *s);
/* GH_DTYPE_F32 -> "F32"; NULL for an invalid value. */
const char *gh_dtype_to_string(gh_dtype t);

#define GH_ST_MAX_DIMS 8
#define GH_ST_JSON_DEPTH 3 /* header object, tensor entry, shape array */

typedef struct gh_st_limits {
        uint64_t max_header_size; /* N, bytes of JSON; default 100 MiB, at most INT_MAX - 1 */
        size_t max_tensors;       /* default 65536 */
        unsigned max_dims;        /* default and at most GH_ST_MAX_DIMS */
        size_t max_name_len;      /* bytes of a tensor name; default 4096 */
        unsigned max_json_depth;  /* nesting of objects and arrays; default and at most GH_ST_JSON_DEPTH */
        size_t max_metadata;      /* entries of "__metadata__"; default 65536 */
} gh_st_limits;

gh_st_limits gh_st_limits_default(void);

typedef struct gh_st_tensor {
        char *name; /* UTF-8, non-empty, no NUL */
        gh_dtype dtype;
        unsigned n_dims; /* 0 for a scalar (shape []) */
        uint64_t shape[GH_ST_MAX_DIMS];
        uint64_t n_elements;  /* product of shape; 1 for a scalar, 0 if a dimension is 0 */
        uint64_t begin, end;  /* byte range relative to data_start; end - begin = n_elements * dtype size */
} gh_st_tensor;

typedef struct gh_st_file {
        uint64_t header_size; /* N */
        uint64_t data_start;  /* 8 + N: file offset of the data area */
        uint64_t data_size;   /* file size - data_start, covered exactly by the tensors */
        gh_st_tensor *tensors; /* sorted by name (strcmp), names unique */
        size_t n_tensors;
        char **metadata_keys, **metadata_values; /* sorted by key, keys unique */
        size_t n_metadata;
        /* Every tensor starts at a file offset that is a multiple of its
         * element size, so a mapping of the file can be used in place.
         * Older writers leave this false; such files are still valid. */
        bool aligned;
} gh_st_file;

/* Parses the header of a file of |file_size| bytes from |head|, its first
 * |head_len| bytes (at least 8 + N, the whole header). |limits| may be NULL
 * for the defaults. On success *ret is a new gh_st_file. Returns -EBADMSG
 * for a malformed file, -E2BIG when it goes over a limit, -EINVAL for bad
 * arguments (including a |head| shorter than the header), -ENOMEM; on
 * failure writes a one-line reason into |err| (if err_size > 0). */
int gh_st_parse(const void *head, size_t head_len, uint64_t file_size, const gh_st_limits *limits,
                gh_st_file **ret, char *err, size_t err_size);

/* Opens |path| (relative to |dirfd|, or AT_FDCWD) read-only, checks that it
 * is a regular file, reads and parses its header with pread (allocating no
 * more than the header length allows under the limit). On success *ret is
 * the parsed header and, if |ret_fd| is non-NULL, *ret_fd the open fd
 * (O_CLOEXEC, positioned at 0) for reading tensor data; with ret_fd NULL the
 * fd is closed. Returns the errors of gh_st_parse() and of open/pread (e.g.
 * -ENOENT, -EISDIR, -EIO); the message in |err| starts with the path. */
int gh_st_open(int dirfd, const char *path, const gh_st_limits *limits, gh_st_file **ret, int *ret_fd,
               char *err, size_t err_size);

/* Frees |f| and everything in it; accepts NULL. Returns NULL. */
gh_st_file *gh_st_free(gh_st_file *f);

/* The tensor called |name|, by binary search; NULL if there is none. */
const gh_st_tensor *gh_st_find(const gh_st_file *f, const char *name);

/* The "__metadata__" value for |key|; NULL if there is none. */
const char *gh_st_metadata_get(const gh_st_file *f, const char *key);

static inline void gh_st_freep(gh_st_file **f) {
        gh_st_free(*f);
}
#define _cleanup_st_file_ __attribute__((cleanup(gh_st_freep)))

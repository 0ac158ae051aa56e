/* Test and benchmark helper: writes safetensors files. gh_test_write_safetensors()
 * writes valid files the way the reference writer does (tensors laid out
 * contiguously in the order given, header optionally padded with spaces to
 * align the data area); gh_test_write_raw_safetensors() writes whatever
 * header text it is given, for malformed cases. Tensor bytes not given are
 * a deterministic pattern derived from the tensor's name, which
 * gh_test_pattern() reproduces for checking what is read back. */
#pragma once

#include <stddef.h>
#include <stdint.h>

#include "common/safetensors.h"

typedef struct gh_test_tensor {
        const char *name;
        gh_dtype dtype;
        unsigned n_dims;
        uint64_t shape[GH_ST_MAX_DIMS];
        const void *data; /* gh_test_tensor_size() bytes, or NULL for the name's pattern */
} gh_test_tensor;

/* Bytes of |t|'s data: product of the shape times the element size;
 * UINT64_MAX if that overflows. */
uint64_t gh_test_tensor_size(const gh_test_tensor *t);

/* Bytes [offset, offset + n) of the pattern for tensor |name|. */
void gh_test_pattern(const char *name, uint64_t offset, void *buf, size_t n);

/* Writes a valid file at |path| (created or truncated, mode 0644).
 * |metadata_kv| is NULL or a NULL-terminated list of key, value, key,
 * value...; |header_align| (1 or more, usually 8 or 1) pads the header with
 * spaces so that the data area starts at a multiple of it. Returns 0 or a
 * negative errno (-EINVAL for a bad argument). */
int gh_test_write_safetensors(const char *path, const gh_test_tensor *tensors, size_t n,
                              const char *const *metadata_kv, unsigned header_align);

/* Writes the 8-byte length of |header_json|, the text itself and |data_len|
 * bytes of |data| (which may be NULL when data_len is 0). */
int gh_test_write_raw_safetensors(const char *path, const char *header_json, const void *data, size_t data_len);

/* Writes |len| bytes as the whole file: for files no writer would make
 * (a length field that lies, a NUL in the header). */
int gh_test_write_file(const char *path, const void *data, size_t len);

/* Base64 (RFC 4648, the standard alphabet) for JSON members that carry
 * bytes: outputs sent inline, input images sent inline. */
#pragma once

#include <stddef.h>
#include <stdint.h>

/* The length of the base64 text of |n| bytes, padded, without the NUL. */
static inline size_t gh_base64_encoded_len(size_t n) {
        return (n + 2) / 3 * 4;
}

/* Writes the padded base64 text of |in| (|n| bytes) and a NUL to |out|,
 * which holds gh_base64_encoded_len(n) + 1 bytes. */
void gh_base64_encode(const uint8_t *in, size_t n, char *out);

/* The number of bytes |text| (|len| characters of base64) decodes to, or
 * -EINVAL when it cannot be base64 at all (a length that leaves a single
 * character over, "=" other than one or two at the end of a multiple of
 * four). Decoding may still find a bad character. */
int64_t gh_base64_decoded_size(const char *text, size_t len);

/* Decodes |text| (|len| characters; "=" padding optional) into |out|, which
 * holds gh_base64_decoded_size() bytes. Strict: no whitespace, no other
 * alphabet, and the bits a short last group leaves over must be zero.
 * Returns the number of bytes written, or -EINVAL with the offset of the
 * first bad character in *ret_bad (may be NULL). */
int64_t gh_base64_decode(const char *text, size_t len, uint8_t *out, size_t *ret_bad);

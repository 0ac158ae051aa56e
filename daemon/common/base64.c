/* Base64, RFC 4648. See base64.h. */
#include <errno.h>

#include "base64.h"

static const char alphabet[] = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";

void gh_base64_encode(const uint8_t *in, size_t n, char *out) {
        size_t o = 0, i = 0;

        for (; i + 2 < n; i += 3) {
                uint32_t v = (uint32_t) in[i] << 16 | (uint32_t) in[i + 1] << 8 | in[i + 2];
                out[o++] = alphabet[v >> 18];
                out[o++] = alphabet[(v >> 12) & 63];
                out[o++] = alphabet[(v >> 6) & 63];
                out[o++] = alphabet[v & 63];
        }
        if (i < n) {
                uint32_t v = (uint32_t) in[i] << 16 | (i + 1 < n ? (uint32_t) in[i + 1] << 8 : 0);
                out[o++] = alphabet[v >> 18];
                out[o++] = alphabet[(v >> 12) & 63];
                out[o++] = i + 1 < n ? alphabet[(v >> 6) & 63] : '=';
                out[o++] = '=';
        }
        out[o] = 0;
}

static int value_of(unsigned char c) {
        if (c >= 'A' && c <= 'Z')
                return c - 'A';
        if (c >= 'a' && c <= 'z')
                return c - 'a' + 26;
        if (c >= '0' && c <= '9')
                return c - '0' + 52;
        return c == '+' ? 62 : c == '/' ? 63 : -1;
}

/* |len| without the padding, or (size_t) -1 for misplaced padding. */
static size_t unpadded(const char *text, size_t len) {
        size_t pad = 0;

        while (pad < len && pad < 3 && text[len - 1 - pad] == '=')
                pad++;
        if (pad > 2 || (pad > 0 && len % 4 != 0))
                return (size_t) -1;
        return len - pad;
}

int64_t gh_base64_decoded_size(const char *text, size_t len) {
        size_t n = unpadded(text, len);

        if (n == (size_t) -1 || n % 4 == 1)
                return -EINVAL;
        return (int64_t) (n / 4 * 3 + (n % 4 ? n % 4 - 1 : 0));
}

int64_t gh_base64_decode(const char *text, size_t len, uint8_t *out, size_t *ret_bad) {
        size_t n = unpadded(text, len), o = 0;
        uint32_t acc = 0;
        int bits = 0;

        if (ret_bad)
                *ret_bad = 0;
        if (n == (size_t) -1 || n % 4 == 1) {
                if (ret_bad)
                        *ret_bad = n == (size_t) -1 ? len - 1 : n - 1;
                return -EINVAL;
        }
        for (size_t i = 0; i < n; i++) {
                int v = value_of((unsigned char) text[i]);
                if (v < 0) {
                        if (ret_bad)
                                *ret_bad = i;
                        return -EINVAL;
                }
                acc = acc << 6 | (uint32_t) v;
                bits += 6;
                if (bits >= 8) {
                        bits -= 8;
                        out[o++] = (uint8_t) (acc >> bits);
                        acc &= (1u << bits) - 1;
                }
        }
        if (acc != 0) { /* the bits a short last group leaves over */
                if (ret_bad)
                        *ret_bad = n - 1;
                return -EINVAL;
        }
        return (int64_t) o;
}

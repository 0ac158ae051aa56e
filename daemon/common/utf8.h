/* UTF-8 checks shared by every parser of client or file text (RFC 3629: no
 * overlong forms, no surrogates, nothing above U+10FFFF). Header-only. */
#pragma once

#include <stdbool.h>
#include <stddef.h>

/* The length of the valid UTF-8 sequence at |p| (at most |n| >= 1 bytes),
 * or 0 where it is not valid. */
static inline size_t gh_utf8_len(const unsigned char *p, size_t n) {
        unsigned char lo = 0x80, hi = 0xBF;
        size_t k;

        if (p[0] < 0x80)
                return 1;
        if (p[0] < 0xC2 || p[0] > 0xF4)
                return 0;
        k = p[0] < 0xE0 ? 2 : p[0] < 0xF0 ? 3 : 4;
        if (p[0] == 0xE0)
                lo = 0xA0;
        else if (p[0] == 0xED)
                hi = 0x9F;
        else if (p[0] == 0xF0)
                lo = 0x90;
        else if (p[0] == 0xF4)
                hi = 0x8F;
        if (n < k || p[1] < lo || p[1] > hi)
                return 0;
        for (size_t i = 2; i < k; i++)
                if ((p[i] & 0xC0) != 0x80)
                        return 0;
        return k;
}

/* Whether s[0, len) is all valid UTF-8; if not, the offset of the first
 * bad sequence goes to *ret_bad (may be NULL). */
static inline bool gh_utf8_valid(const char *s, size_t len, size_t *ret_bad) {
        for (size_t i = 0; i < len;) {
                size_t k = gh_utf8_len((const unsigned char *) s + i, len - i);
                if (k == 0) {
                        if (ret_bad)
                                *ret_bad = i;
                        return false;
                }
                i += k;
        }
        return true;
}

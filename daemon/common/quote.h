/* Quoting untrusted bytes in a one-line message (header-only, so that the
 * plugins' static libraries can use it without linking gh-common). */
#pragma once

#include <stddef.h>
#include <stdio.h>

/* |s| (|len| bytes) into |buf|: '"' and '\' escaped, bytes other than
 * printable ASCII as \xNN, cut after |max| bytes with "...". |buf| needs
 * max * 4 + 4 bytes to hold it all. */
static inline const char *gh_quote_bytes(char *buf, size_t size, const char *s, size_t len, size_t max) {
        size_t n = 0;

        for (size_t i = 0; i < len && i < max && n + 5 < size; i++) {
                unsigned char c = (unsigned char) s[i];
                if (c == '"' || c == '\\')
                        n += (size_t) snprintf(buf + n, size - n, "\\%c", c);
                else if (c < 0x20 || c >= 0x7f)
                        n += (size_t) snprintf(buf + n, size - n, "\\x%02x", c);
                else
                        buf[n++] = (char) c;
        }
        if (len > max && n + 4 <= size)
                n += (size_t) snprintf(buf + n, size - n, "...");
        buf[n] = 0;
        return buf;
}

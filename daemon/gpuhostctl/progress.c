/* gpuhostctl progress and durations: the text of a job's progress line
 * and of a duration, pure functions the tests drive without a terminal. */
#include <inttypes.h>
#include <math.h>
#include <stdarg.h>
#include <stdio.h>
#include <string.h>
#include <time.h>

#include "ctl.h"

/* Appends to |buf| (of |size|) at |*len|, which counts every character
 * asked for, as snprintf does, even past the end of the buffer. */
__attribute__((format(printf, 4, 5))) static void append(char *buf, size_t size, size_t *len, const char *fmt, ...) {
        char dummy[1];
        va_list ap;

        va_start(ap, fmt);
        int n = *len < size ? vsnprintf(buf + *len, size - *len, fmt, ap) : vsnprintf(dummy, 0, fmt, ap);
        va_end(ap);
        if (n > 0)
                *len += (size_t) n;
}

/* "4s", "1m05s", "2h07m", ">99h". */
static void format_eta(double sec, char *buf, size_t size) {
        if (!(sec < 100 * 3600.0)) {
                snprintf(buf, size, ">99h");
                return;
        }
        /* Below 100 hours: small numbers, which the compiler is told. */
        unsigned s = (unsigned) lround(sec > 0 ? sec : 0) % (100 * 3600);
        if (s < 60)
                snprintf(buf, size, "%us", s);
        else if (s < 3600)
                snprintf(buf, size, "%um%02us", s / 60 % 60, s % 60);
        else
                snprintf(buf, size, "%uh%02um", s / 3600 % 100, s % 3600 / 60 % 60);
}

void ctl_status_show(ctl_status_line *l, const char *line) {
        if (!l->tty) {
                fprintf(stderr, "%s\n", line);
                return;
        }
        int n = (int) strlen(line);
        if (n > l->shown)
                l->shown = n;
        fprintf(stderr, "\r%-*s", l->shown, line);
        fflush(stderr);
}

void ctl_status_clear(ctl_status_line *l) {
        if (l->shown > 0) {
                fprintf(stderr, "\r%*s\r", l->shown, "");
                fflush(stderr);
        }
        l->shown = 0;
}

int ctl_progress_format(char *buf, size_t size, uint32_t step, uint32_t steps, double it_per_s, int width) {
        size_t len = 0;
        bool rate = isfinite(it_per_s) && it_per_s > 0;

        if (size > 0)
                buf[0] = 0;
        if (width > 0 && steps > 0) {
                uint32_t done = step >= steps ? steps : step;
                int filled = (int) ((uint64_t) done * (uint64_t) width / steps);
                append(buf, size, &len, "[");
                for (int i = 0; i < width; i++)
                        append(buf, size, &len, "%c", i < filled ? '#' : '.');
                append(buf, size, &len, "] ");
        }
        if (steps > 0)
                append(buf, size, &len, "step %" PRIu32 "/%" PRIu32, step, steps);
        else
                append(buf, size, &len, "step %" PRIu32, step);
        if (rate)
                append(buf, size, &len, it_per_s < 1 ? "  %.2f it/s" : "  %.1f it/s", it_per_s);
        if (rate && steps > 0) {
                char eta[16];
                format_eta(step >= steps ? 0 : (double) (steps - step) / it_per_s, eta, sizeof(eta));
                append(buf, size, &len, "  ETA %s", eta);
        }
        return len > INT32_MAX ? INT32_MAX : (int) len;
}

void ctl_format_duration(int64_t usec, char *buf, size_t size) {
        int64_t s = usec > 0 ? usec / 1000000 : 0;

        if (s < 60)
                snprintf(buf, size, "%" PRId64 "s", s);
        else if (s < 3600)
                snprintf(buf, size, "%" PRId64 "m%02" PRId64 "s", s / 60, s % 60);
        else if (s < 86400)
                snprintf(buf, size, "%" PRId64 "h%02" PRId64 "m", s / 3600, s % 3600 / 60);
        else
                snprintf(buf, size, "%" PRId64 "d%02" PRId64 "h", s / 86400, s % 86400 / 3600);
}

int64_t ctl_now_usec(void) {
        struct timespec ts;

        clock_gettime(CLOCK_REALTIME, &ts);
        return (int64_t) ts.tv_sec * 1000000 + ts.tv_nsec / 1000;
}

/* Small helpers shared by every gpuhost component: cleanup attributes in the
 * style of systemd (free on scope exit, TAKE_PTR/TAKE_FD to hand ownership
 * on), fd helpers and clock reads. Header-only, no state. */
#pragma once

#include <errno.h>
#include <stdarg.h>
#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <time.h>
#include <unistd.h>

#define _cleanup_(f) __attribute__((cleanup(f)))
#define _unused_ __attribute__((unused))
#define _printf_(a, b) __attribute__((format(printf, a, b)))
#define _noreturn_ __attribute__((noreturn))
#define ELEMENTSOF(x) (sizeof(x) / sizeof((x)[0]))

#define TAKE_PTR(p)                     \
        ({                              \
                __typeof__(p) _p_ = (p); \
                (p) = NULL;             \
                _p_;                    \
        })
#define TAKE_FD(fd)                     \
        ({                              \
                int _fd_ = (fd);        \
                (fd) = -1;              \
                _fd_;                   \
        })

static inline void gh_freep(void *p) {
        free(*(void **) p);
}
#define _cleanup_free_ _cleanup_(gh_freep)

/* Closes an fd, preserving errno; returns -1 for "fd = gh_close(fd)". */
static inline int gh_close(int fd) {
        if (fd >= 0) {
                int saved = errno;
                close(fd);
                errno = saved;
        }
        return -1;
}
static inline void gh_closep(int *fd) {
        gh_close(*fd);
}
#define _cleanup_close_ _cleanup_(gh_closep)

static inline void gh_fclosep(FILE **f) {
        if (*f)
                fclose(*f);
}
#define _cleanup_fclose_ _cleanup_(gh_fclosep)

static inline void gh_close_many(const int *fds, size_t n) {
        for (size_t i = 0; i < n; i++)
                gh_close(fds[i]);
}

#define USEC_PER_SEC UINT64_C(1000000)
#define USEC_PER_MSEC UINT64_C(1000)

static inline uint64_t gh_now_usec(clockid_t clock) {
        struct timespec ts;
        clock_gettime(clock, &ts);
        return (uint64_t) ts.tv_sec * USEC_PER_SEC + (uint64_t) ts.tv_nsec / 1000;
}

static inline bool gh_streq(const char *a, const char *b) {
        return a && b && __builtin_strcmp(a, b) == 0;
}

/* A negative errno to return, never 0, even if errno was left unset. */
static inline int gh_negerrno(void) {
        return errno > 0 ? -errno : -EIO;
}

/* Writes a one-line reason into an optional caller buffer (NULL or size 0:
 * nothing is written). */
_printf_(3, 4) static inline void gh_set_error(char *err, size_t err_size, const char *fmt, ...) {
        va_list ap;

        if (!err || err_size == 0)
                return;
        va_start(ap, fmt);
        vsnprintf(err, err_size, fmt, ap);
        va_end(ap);
}

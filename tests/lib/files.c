/* Small file helpers for tests and benchmarks. See files.h. */
#include <errno.h>
#include <fcntl.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include "files.h"

int gh_test_write_text(const char *path, const char *text) {
        FILE *f = fopen(path, "we");

        if (!f)
                return -errno;
        fputs(text, f);
        return fclose(f) == 0 ? 0 : -errno;
}

char *gh_test_read_text(const char *path) {
        FILE *f = fopen(path, "re");
        char *buf = NULL, chunk[4096];
        size_t len = 0, n;
        FILE *m = open_memstream(&buf, &len);

        if (!m) {
                if (f)
                        fclose(f);
                return NULL;
        }
        while (f && (n = fread(chunk, 1, sizeof(chunk), f)) > 0)
                fwrite(chunk, 1, n, m);
        if (f)
                fclose(f);
        fclose(m);
        return buf;
}

int gh_test_copy_file(const char *from, const char *to, mode_t mode) {
        char buf[65536];
        ssize_t n;
        int r = 0, in = open(from, O_RDONLY | O_CLOEXEC);
        int out = in < 0 ? -1 : open(to, O_WRONLY | O_CREAT | O_EXCL | O_CLOEXEC, mode);

        if (in < 0 || out < 0)
                r = -errno;
        while (r == 0 && (n = read(in, buf, sizeof(buf))) != 0)
                if (n < 0 || write(out, buf, (size_t) n) != n)
                        r = n < 0 ? -errno : -EIO;
        if (r == 0 && fchmod(out, mode) < 0) /* whatever the umask took */
                r = -errno;
        if (in >= 0)
                close(in);
        if (out >= 0 && close(out) < 0 && r == 0)
                r = -errno;
        return r;
}

/* Stand-in for libFuzzer's main() when the fuzz targets are built without
 * -DGH_FUZZ=ON: runs LLVMFuzzerTestOneInput() once on each input named on
 * the command line. A directory argument runs each regular file in it, in
 * sorted order (not recursing). Fails when an argument cannot be read or a
 * directory holds no inputs, so a lost corpus does not pass silently. */
#include <dirent.h>
#include <errno.h>
#include <fcntl.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

/* Runs one file; returns 0, or -errno if it cannot be read. */
static int run_fd(int fd, const char *name) {
        struct stat st;
        uint8_t *buf = NULL;
        size_t len = 0, cap = 0;

        if (fstat(fd, &st) < 0)
                return -errno;
        if (!S_ISREG(st.st_mode))
                return -EINVAL;
        for (;;) {
                if (len == cap) {
                        cap = cap ? cap * 2 : (size_t) st.st_size + 1;
                        uint8_t *b = realloc(buf, cap);
                        if (!b) {
                                free(buf);
                                return -ENOMEM;
                        }
                        buf = b;
                }
                ssize_t n = read(fd, buf + len, cap - len);
                if (n < 0) {
                        if (errno == EINTR)
                                continue;
                        int r = -errno;
                        free(buf);
                        return r;
                }
                if (n == 0)
                        break;
                len += (size_t) n;
        }
        /* An exactly sized copy, so that ASan sees reads past the end. */
        uint8_t *data = malloc(len ? len : 1);
        if (!data) {
                free(buf);
                return -ENOMEM;
        }
        memcpy(data, buf, len);
        free(buf);
        fprintf(stderr, "Running: %s (%zu bytes)\n", name, len);
        LLVMFuzzerTestOneInput(data, len);
        free(data);
        return 0;
}

static int run_at(int dirfd, const char *path, const char *name) {
        int fd = openat(dirfd, path, O_RDONLY | O_CLOEXEC);

        if (fd < 0)
                return -errno;
        int r = run_fd(fd, name);
        close(fd);
        return r;
}

static int is_regular_at(int dirfd, const struct dirent *de) {
        struct stat st;

        if (de->d_name[0] == '.')
                return 0;
        return fstatat(dirfd, de->d_name, &st, 0) == 0 && S_ISREG(st.st_mode);
}

/* Runs the regular files of a directory in sorted order; returns how many,
 * or -errno. */
static int run_dir(const char *path) {
        struct dirent **names = NULL;
        int dirfd = open(path, O_RDONLY | O_DIRECTORY | O_CLOEXEC);
        int n, ran = 0, r = 0;

        if (dirfd < 0 || (n = scandir(path, &names, NULL, alphasort)) < 0) {
                r = -errno;
                fprintf(stderr, "Cannot read %s: %s\n", path, strerror(-r));
                if (dirfd >= 0)
                        close(dirfd);
                return r;
        }
        for (int i = 0; i < n; i++) {
                if (r == 0 && is_regular_at(dirfd, names[i])) {
                        char full[4096];
                        snprintf(full, sizeof(full), "%s/%s", path, names[i]->d_name);
                        r = run_at(dirfd, names[i]->d_name, full);
                        if (r < 0)
                                fprintf(stderr, "Cannot read %s: %s\n", full, strerror(-r));
                        else
                                ran++;
                }
                free(names[i]);
        }
        free(names);
        close(dirfd);
        return r < 0 ? r : ran;
}

int main(int argc, char **argv) {
        size_t total = 0;
        int failed = 0;

        if (argc < 2) {
                fprintf(stderr, "Usage: %s FILE|DIRECTORY...\n", argv[0]);
                return 2;
        }
        for (int i = 1; i < argc; i++) {
                struct stat st;
                int r;

                if (stat(argv[i], &st) < 0) {
                        fprintf(stderr, "Cannot read %s: %s\n", argv[i], strerror(errno));
                        failed++;
                        continue;
                }
                if (S_ISDIR(st.st_mode)) {
                        r = run_dir(argv[i]);
                        if (r == 0) {
                                fprintf(stderr, "No inputs in directory %s\n", argv[i]);
                                failed++;
                        } else if (r < 0)
                                failed++;
                        else
                                total += (size_t) r;
                } else {
                        r = run_at(AT_FDCWD, argv[i], argv[i]);
                        if (r < 0) {
                                fprintf(stderr, "Cannot read %s: %s\n", argv[i], strerror(-r));
                                failed++;
                        } else
                                total++;
                }
        }
        printf("%s: ran %zu input%s, %d argument%s failed\n", argv[0], total, total == 1 ? "" : "s",
               failed, failed == 1 ? "" : "s");
        return failed ? 1 : 0;
}

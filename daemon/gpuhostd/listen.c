/* Listening socket setup: socket activation or a self-bound Unix socket.
 * See listen.h. */
#include <fcntl.h>
#include <stdarg.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/un.h>
#include <systemd/sd-daemon.h>

#include "../common/util.h"
#include "listen.h"

#define LISTEN_BACKLOG 128

/* Sets *ret_error to the formatted text plus ": <errno text>". */
_printf_(3, 4) static int fail(char **ret_error, int r, const char *fmt, ...) {
        char what[512];
        va_list ap;

        va_start(ap, fmt);
        vsnprintf(what, sizeof(what), fmt, ap);
        va_end(ap);
        if (asprintf(ret_error, "%s: %s", what, strerror(-r)) < 0)
                *ret_error = NULL;
        return r;
}

static int set_flags(int fd) {
        int fl = fcntl(fd, F_GETFL);

        if (fl < 0 || fcntl(fd, F_SETFL, fl | O_NONBLOCK) < 0)
                return gh_negerrno();
        if (fcntl(fd, F_SETFD, FD_CLOEXEC) < 0)
                return gh_negerrno();
        return 0;
}

static int take_activated(int *ret_fd, char **ret_error) {
        int n = sd_listen_fds(true);

        if (n < 0)
                return fail(ret_error, n, "Socket activation failed");
        if (n == 0)
                return 0;
        if (n > 1)
                return fail(ret_error, -EINVAL, "Expected one socket from systemd, got %d", n);
        int fd = SD_LISTEN_FDS_START;
        int r = sd_is_socket_unix(fd, SOCK_STREAM, 1, NULL, 0);
        if (r <= 0)
                return fail(ret_error, r < 0 ? r : -EINVAL, "The socket from systemd is not a listening Unix stream socket");
        r = set_flags(fd);
        if (r < 0)
                return fail(ret_error, r, "Cannot set up the socket from systemd");
        *ret_fd = fd;
        return 1;
}

/* A socket file left at the path is removed only if nothing listens on it;
 * a symlink or any other kind of file is refused. */
static int clear_path(const char *path, const struct sockaddr_un *sa, char **ret_error) {
        struct stat st;

        if (lstat(path, &st) < 0)
                return errno == ENOENT ? 0 : fail(ret_error, gh_negerrno(), "Cannot inspect %s", path);
        if (S_ISLNK(st.st_mode))
                return fail(ret_error, -ELOOP, "Refusing %s: it is a symbolic link", path);
        if (!S_ISSOCK(st.st_mode))
                return fail(ret_error, -EEXIST, "Refusing %s: it exists and is not a socket", path);
        _cleanup_close_ int probe = socket(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0);
        if (probe < 0)
                return gh_negerrno();
        if (connect(probe, (const struct sockaddr *) sa, sizeof(*sa)) == 0)
                return fail(ret_error, -EADDRINUSE, "Another daemon is serving %s", path);
        if (unlink(path) < 0 && errno != ENOENT)
                return fail(ret_error, gh_negerrno(), "Cannot remove stale socket %s", path);
        return 0;
}

static int bind_path(const char *path, gid_t group, int *ret_fd, char **ret_error) {
        struct sockaddr_un sa = {.sun_family = AF_UNIX};

        if (strlen(path) >= sizeof(sa.sun_path))
                return fail(ret_error, -ENAMETOOLONG, "Socket path %s", path);
        strcpy(sa.sun_path, path);
        int r = clear_path(path, &sa, ret_error);
        if (r < 0)
                return r;
        _cleanup_close_ int fd = socket(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC | SOCK_NONBLOCK, 0);
        if (fd < 0)
                return fail(ret_error, gh_negerrno(), "Cannot create socket");
        /* Created 0660 from the start: no window with wider permissions. */
        mode_t old = umask(0117);
        r = bind(fd, (struct sockaddr *) &sa, sizeof(sa));
        umask(old);
        if (r < 0)
                return fail(ret_error, gh_negerrno(), "Cannot bind %s", path);
        if (group != (gid_t) -1 && fchownat(AT_FDCWD, path, (uid_t) -1, group, AT_SYMLINK_NOFOLLOW) < 0) {
                r = gh_negerrno();
                unlink(path);
                return fail(ret_error, r, "Cannot set the group of %s", path);
        }
        if (listen(fd, LISTEN_BACKLOG) < 0) {
                r = gh_negerrno();
                unlink(path);
                return fail(ret_error, r, "Cannot listen on %s", path);
        }
        *ret_fd = TAKE_FD(fd);
        return 0;
}

int gh_listen_open(const char *path, gid_t group, gh_listener *ret, char **ret_error) {
        struct stat st;
        int fd = -1;
        int r = take_activated(&fd, ret_error);

        if (r < 0)
                return r;
        if (r > 0) {
                *ret = (gh_listener) {.fd = fd, .activated = true};
                return 0;
        }
        r = bind_path(path, group, &fd, ret_error);
        if (r < 0)
                return r;
        if (lstat(path, &st) < 0) {
                r = gh_negerrno();
                gh_close(fd);
                return fail(ret_error, r, "Cannot inspect %s after binding", path);
        }
        *ret = (gh_listener) {.fd = fd, .dev = st.st_dev, .ino = st.st_ino};
        return 0;
}

void gh_listen_cleanup(const char *path, const gh_listener *l) {
        struct stat st;

        if (l->activated || lstat(path, &st) < 0)
                return;
        if (S_ISSOCK(st.st_mode) && st.st_dev == l->dev && st.st_ino == l->ino)
                unlink(path);
}

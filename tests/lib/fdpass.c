/* SCM_RIGHTS send and receive for tests and benchmarks. See fdpass.h. */
#include <errno.h>
#include <string.h>
#include <sys/socket.h>

#include "fdpass.h"

typedef union control {
        struct cmsghdr align;
        char buf[CMSG_SPACE(sizeof(int) * GH_TEST_FDS_MAX)];
} control;

int gh_test_send_fds(int sock, const void *data, size_t len, const int *fds, size_t n_fds) {
        control c = {0};
        struct iovec iov = {.iov_base = (void *) data, .iov_len = len};
        struct msghdr mh = {.msg_iov = &iov, .msg_iovlen = 1};

        if (n_fds > GH_TEST_FDS_MAX || len == 0)
                return -EINVAL;
        if (n_fds > 0) {
                mh.msg_control = c.buf;
                mh.msg_controllen = CMSG_SPACE(sizeof(int) * n_fds);
                struct cmsghdr *h = CMSG_FIRSTHDR(&mh);
                h->cmsg_level = SOL_SOCKET;
                h->cmsg_type = SCM_RIGHTS;
                h->cmsg_len = CMSG_LEN(sizeof(int) * n_fds);
                memcpy(CMSG_DATA(h), fds, sizeof(int) * n_fds);
        }
        return sendmsg(sock, &mh, MSG_NOSIGNAL) == (ssize_t) len ? 0 : -EIO;
}

int gh_test_recv_fds(int sock, void *data, size_t len, int *fds, size_t max_fds) {
        control c;
        struct iovec iov = {.iov_base = data, .iov_len = len};
        struct msghdr mh = {.msg_iov = &iov, .msg_iovlen = 1, .msg_control = c.buf, .msg_controllen = sizeof(c.buf)};
        size_t n = 0;

        if (recvmsg(sock, &mh, MSG_CMSG_CLOEXEC | MSG_WAITALL) != (ssize_t) len)
                return -EIO;
        struct cmsghdr *h = CMSG_FIRSTHDR(&mh);
        if (h && h->cmsg_level == SOL_SOCKET && h->cmsg_type == SCM_RIGHTS) {
                n = (h->cmsg_len - CMSG_LEN(0)) / sizeof(int);
                if (n > max_fds)
                        return -ETOOMANYREFS;
                memcpy(fds, CMSG_DATA(h), sizeof(int) * n);
        }
        return (int) n;
}

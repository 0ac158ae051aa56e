/* End-to-end tests: a real gpuhostd on a temporary socket, talked to with
 * libgpuhost, with raw sockets (malformed input, floods, dying clients),
 * and with gpuhostctl. sd_notify messages are caught on a datagram socket
 * of our own (NOTIFY_SOCKET), so READY/RELOADING/STOPPING/WATCHDOG are
 * checked as systemd would see them. Socket activation is driven with
 * LISTEN_FDS like systemd does it. */
#include <stdarg.h>
#include <stddef.h>
#include <setjmp.h>
#include <cmocka.h>
#include <fcntl.h>
#include <grp.h>
#include <json-c/json.h>
#include <poll.h>
#include <pthread.h>
#include <signal.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/un.h>
#include <sys/wait.h>

#include "common/util.h"
#include "gpuhost/client.h"

#define WAIT_MS 10000

/* Every sd_notify datagram the daemon sends, collected by a thread as
 * systemd would (an unread notify socket would block the daemon). */
typedef struct notify_log {
        int fd;
        pthread_t thread;
        pthread_mutex_t lock;
        pthread_cond_t cond;
        char **msgs;
        size_t n, cursor; /* notify_wait() looks at msgs[cursor..] */
        bool stop;
} notify_log;

typedef struct daemon_ctx {
        char dir[64];
        char sock[128], conf[128], log[128], notify_path[128];
        notify_log notify;
        pid_t pid;
        bool activated;
} daemon_ctx;

/* ---- helpers ---- */

static void write_file(const char *path, const char *text) {
        FILE *f = fopen(path, "we");
        assert_non_null(f);
        fputs(text, f);
        fclose(f);
}

static char *read_file(const char *path) {
        FILE *f = fopen(path, "re");
        char *buf = calloc(1, 1 << 20);
        assert_non_null(buf);
        if (f) {
                size_t n = fread(buf, 1, (1 << 20) - 1, f);
                buf[n] = 0;
                fclose(f);
        }
        return buf;
}

static void write_config(daemon_ctx *d, const char *extra) {
        char text[4096];

        snprintf(text, sizeof(text), "[socket]\npath = %s\n%s", d->sock, extra ? extra : "");
        write_file(d->conf, text);
}

static int notify_socket(const char *path) {
        struct sockaddr_un sa = {.sun_family = AF_UNIX};
        int fd = socket(AF_UNIX, SOCK_DGRAM | SOCK_CLOEXEC | SOCK_NONBLOCK, 0);

        assert_true(fd >= 0);
        strcpy(sa.sun_path, path);
        assert_int_equal(bind(fd, (struct sockaddr *) &sa, sizeof(sa)), 0);
        return fd;
}

static void *notify_thread(void *userdata) {
        notify_log *n = userdata;
        char buf[4096];

        for (;;) {
                struct pollfd p = {.fd = n->fd, .events = POLLIN};
                poll(&p, 1, 50);
                pthread_mutex_lock(&n->lock);
                bool stop = n->stop;
                pthread_mutex_unlock(&n->lock);
                if (stop)
                        return NULL;
                ssize_t len;
                while ((len = recv(n->fd, buf, sizeof(buf) - 1, MSG_DONTWAIT)) >= 0) {
                        buf[len] = 0;
                        pthread_mutex_lock(&n->lock);
                        n->msgs = realloc(n->msgs, (n->n + 1) * sizeof(char *));
                        n->msgs[n->n++] = strdup(buf);
                        pthread_cond_broadcast(&n->cond);
                        pthread_mutex_unlock(&n->lock);
                }
        }
}

static void notify_start(notify_log *n, const char *path) {
        *n = (notify_log) {.fd = notify_socket(path)};
        pthread_mutex_init(&n->lock, NULL);
        pthread_cond_init(&n->cond, NULL);
        assert_int_equal(pthread_create(&n->thread, NULL, notify_thread, n), 0);
}

static void notify_stop(notify_log *n) {
        pthread_mutex_lock(&n->lock);
        n->stop = true;
        pthread_mutex_unlock(&n->lock);
        pthread_join(n->thread, NULL);
        for (size_t i = 0; i < n->n; i++)
                free(n->msgs[i]);
        free(n->msgs);
        gh_close(n->fd);
}

/* Forgets what came so far: later waits see only newer messages. */
static void notify_skip(daemon_ctx *d) {
        pthread_mutex_lock(&d->notify.lock);
        d->notify.cursor = d->notify.n;
        pthread_mutex_unlock(&d->notify.lock);
}

/* Waits for a message containing |what| after the cursor; moves the
 * cursor past it. Returns false on timeout. */
static bool notify_wait(daemon_ctx *d, const char *what, int ms) {
        notify_log *n = &d->notify;
        struct timespec deadline;
        bool found = false;

        clock_gettime(CLOCK_REALTIME, &deadline);
        deadline.tv_sec += ms / 1000;
        deadline.tv_nsec += (ms % 1000) * 1000000L;
        if (deadline.tv_nsec >= 1000000000L) {
                deadline.tv_sec++;
                deadline.tv_nsec -= 1000000000L;
        }
        pthread_mutex_lock(&n->lock);
        while (!found) {
                for (; n->cursor < n->n && !found; n->cursor++)
                        found = strstr(n->msgs[n->cursor], what) != NULL;
                if (!found && pthread_cond_timedwait(&n->cond, &n->lock, &deadline) == ETIMEDOUT)
                        break;
        }
        pthread_mutex_unlock(&n->lock);
        return found;
}

static void ctx_init(daemon_ctx *d) {
        memset(d, 0, sizeof(*d));
        strcpy(d->dir, "/tmp/gh-e2e-XXXXXX");
        assert_non_null(mkdtemp(d->dir));
        snprintf(d->sock, sizeof(d->sock), "%s/gpuhost.sock", d->dir);
        snprintf(d->conf, sizeof(d->conf), "%s/gpuhost.conf", d->dir);
        snprintf(d->log, sizeof(d->log), "%s/daemon.log", d->dir);
        snprintf(d->notify_path, sizeof(d->notify_path), "%s/notify", d->dir);
        notify_start(&d->notify, d->notify_path);
        d->pid = -1;
}

/* Starts gpuhostd; |listen_fd| >= 0 passes it as an activated socket;
 * |watchdog_usec| > 0 sets WATCHDOG_USEC. Does not wait for READY. */
static void spawn_daemon(daemon_ctx *d, int listen_fd, uint64_t watchdog_usec) {
        const char *bin = getenv("GH_GPUHOSTD");

        assert_non_null(bin);
        d->activated = listen_fd >= 0;
        d->pid = fork();
        assert_true(d->pid >= 0);
        if (d->pid == 0) {
                char num[32];
                int log = open(d->log, O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0644);
                dup2(log, STDERR_FILENO);
                setenv("NOTIFY_SOCKET", d->notify_path, 1);
                unsetenv("JOURNAL_STREAM");
                if (listen_fd >= 0) {
                        dup2(listen_fd, 3); /* dup2 clears CLOEXEC on the copy */
                        snprintf(num, sizeof(num), "%d", getpid());
                        setenv("LISTEN_PID", num, 1);
                        setenv("LISTEN_FDS", "1", 1);
                }
                if (watchdog_usec) {
                        snprintf(num, sizeof(num), "%" PRIu64, watchdog_usec);
                        setenv("WATCHDOG_USEC", num, 1);
                        snprintf(num, sizeof(num), "%d", getpid());
                        setenv("WATCHDOG_PID", num, 1);
                }
                execl(bin, bin, "-c", d->conf, "-v", (char *) NULL);
                _exit(127);
        }
}

static void daemon_start_full(daemon_ctx *d, const char *extra, int listen_fd, uint64_t watchdog_usec) {
        write_config(d, extra);
        spawn_daemon(d, listen_fd, watchdog_usec);
        if (!notify_wait(d, "READY=1", WAIT_MS)) {
                char *log = read_file(d->log);
                fail_msg("daemon did not get ready; log:\n%s", log);
        }
}

static int wait_exit(pid_t pid, int ms) {
        int status;

        for (int i = 0; i < ms / 10; i++) {
                pid_t r = waitpid(pid, &status, WNOHANG);
                if (r == pid)
                        return WIFEXITED(status) ? WEXITSTATUS(status) : 128 + WTERMSIG(status);
                usleep(10000);
        }
        return -1;
}

/* SIGTERM, expect exit 0, STOPPING=1 and the socket gone (unless it came
 * from "systemd"). */
static void daemon_stop(daemon_ctx *d) {
        struct stat st;

        if (d->pid < 0)
                return;
        assert_int_equal(kill(d->pid, SIGTERM), 0);
        assert_true(notify_wait(d, "STOPPING=1", WAIT_MS));
        int code = wait_exit(d->pid, WAIT_MS);
        d->pid = -1;
        if (code != 0) {
                char *log = read_file(d->log);
                fail_msg("daemon exit code %d; log:\n%s", code, log);
        }
        if (!d->activated)
                assert_int_equal(lstat(d->sock, &st), -1);
}

static void ctx_cleanup(daemon_ctx *d) {
        char cmd[200];

        if (d->pid > 0) {
                kill(d->pid, SIGKILL);
                waitpid(d->pid, NULL, 0);
        }
        notify_stop(&d->notify);
        snprintf(cmd, sizeof(cmd), "rm -rf '%s'", d->dir);
        (void) !system(cmd);
}

static int setup(void **state) {
        daemon_ctx *d = calloc(1, sizeof(*d));

        ctx_init(d);
        daemon_start_full(d, "[limits]\nmax_message_size = 4K\n", -1, 0);
        *state = d;
        return 0;
}

static int teardown(void **state) {
        daemon_ctx *d = *state;

        daemon_stop(d);
        ctx_cleanup(d);
        free(d);
        return 0;
}

static int raw_connect(const char *path) {
        struct sockaddr_un sa = {.sun_family = AF_UNIX};
        int fd = socket(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0);

        assert_true(fd >= 0);
        strcpy(sa.sun_path, path);
        assert_int_equal(connect(fd, (struct sockaddr *) &sa, sizeof(sa)), 0);
        struct timeval tv = {.tv_sec = 10};
        setsockopt(fd, SOL_SOCKET, SO_RCVTIMEO, &tv, sizeof(tv));
        return fd;
}

static void raw_send(int fd, const void *data, size_t len) {
        const char *p = data;

        while (len > 0) {
                ssize_t n = send(fd, p, len, MSG_NOSIGNAL);
                assert_true(n > 0);
                p += n;
                len -= (size_t) n;
        }
}

/* Reads one NUL-terminated message; returns NULL on EOF. Peeks first so
 * that no byte of the next message is consumed. */
static json_object *raw_recv(int fd) {
        static char buf[1 << 20];
        size_t len = 0;

        for (;;) {
                ssize_t n = recv(fd, buf + len, sizeof(buf) - len, MSG_PEEK);
                if (n <= 0)
                        return NULL;
                char *nul = memchr(buf + len, 0, (size_t) n);
                size_t take = nul ? (size_t) (nul - (buf + len)) + 1 : (size_t) n;
                assert_int_equal(recv(fd, buf + len, take, 0), (ssize_t) take);
                len += take;
                if (nul)
                        return json_tokener_parse(buf);
                assert_true(len < sizeof(buf));
        }
}

static const char *reply_error(json_object *reply) {
        json_object *e;

        return json_object_object_get_ex(reply, "error", &e) ? json_object_get_string(e) : NULL;
}

static const char *reply_param(json_object *reply, const char *key) {
        json_object *p = json_object_object_get(reply, "parameters");

        return json_object_get_string(json_object_object_get(p, key));
}

/* One call with libgpuhost; returns the reply's parameters (parsed) and
 * the error name in *ret_error (NULL for success). */
static json_object *call(const char *sock, const char *method, const char *params, char **ret_error) {
        gh_client *c = NULL;
        gh_reply *r = NULL;

        assert_int_equal(gh_client_connect(sock, &c), 0);
        assert_int_equal(gh_client_call(c, method, params, &r), 0);
        *ret_error = gh_reply_error(r) ? strdup(gh_reply_error(r)) : NULL;
        json_object *p = json_tokener_parse(gh_reply_parameters(r));
        gh_reply_free(r);
        gh_client_free(c);
        return p;
}

static void ping_ok(const char *sock) {
        char *err;
        json_object *p = call(sock, "io.gpuhost.Ping", "{\"ping\":\"alive\"}", &err);

        assert_null(err);
        assert_string_equal(json_object_get_string(json_object_object_get(p, "pong")), "alive");
        json_object_put(p);
}

static int64_t status_int(const char *sock, const char *section, const char *key) {
        char *err;
        json_object *p = call(sock, "io.gpuhost.GetStatus", NULL, &err);
        assert_null(err);
        json_object *o = section ? json_object_object_get(p, section) : p;
        int64_t v = json_object_get_int64(json_object_object_get(o, key));
        json_object_put(p);
        return v;
}

/* Runs gpuhostctl with |args| (NULL-terminated); stdout and stderr go to
 * files in the test dir. Returns the exit code. */
static int run_ctl(daemon_ctx *d, const char *socket_env, char **out, char **err, ...) {
        const char *bin = getenv("GH_GPUHOSTCTL");
        char out_path[160], err_path[160];
        const char *argv[16] = {bin};
        va_list ap;
        int n = 1;

        assert_non_null(bin);
        va_start(ap, err);
        for (const char *a; (a = va_arg(ap, const char *)) && n < 15;)
                argv[n++] = a;
        va_end(ap);
        snprintf(out_path, sizeof(out_path), "%s/ctl.out", d->dir);
        snprintf(err_path, sizeof(err_path), "%s/ctl.err", d->dir);
        pid_t pid = fork();
        assert_true(pid >= 0);
        if (pid == 0) {
                int o = open(out_path, O_WRONLY | O_CREAT | O_TRUNC, 0644);
                int e = open(err_path, O_WRONLY | O_CREAT | O_TRUNC, 0644);
                dup2(o, 1);
                dup2(e, 2);
                if (socket_env)
                        setenv("GPUHOST_SOCKET", socket_env, 1);
                else
                        unsetenv("GPUHOST_SOCKET");
                execv(bin, (char *const *) argv);
                _exit(127);
        }
        int code = wait_exit(pid, WAIT_MS);
        *out = read_file(out_path);
        *err = read_file(err_path);
        return code;
}

/* ---- tests ---- */

static void test_ready_and_status(void **state) {
        daemon_ctx *d = *state;
        char *err;

        /* READY=1 came only after the socket serves: a call works at once. */
        ping_ok(d->sock);
        json_object *p = call(d->sock, "io.gpuhost.GetStatus", NULL, &err);
        assert_null(err);
        assert_string_equal(json_object_get_string(json_object_object_get(p, "state")), "running");
        assert_string_equal(json_object_get_string(json_object_object_get(p, "version")), "0.1.0");
        assert_true(json_object_get_int64(json_object_object_get(p, "uptime_usec")) >= 0);
        assert_int_equal(json_object_get_int(json_object_object_get(p, "pid")), d->pid);
        json_object *devices = json_object_object_get(p, "devices");
        assert_true(json_object_array_length(devices) >= 1);
        assert_string_equal(json_object_get_string(json_object_object_get(json_object_array_get_idx(devices, 0), "kind")), "cpu");
        json_object *cfg = json_object_object_get(p, "config");
        assert_string_equal(json_object_get_string(json_object_object_get(cfg, "socket")), d->sock);
        assert_string_equal(json_object_get_string(json_object_array_get_idx(json_object_object_get(cfg, "files"), 0)), d->conf);
        json_object_put(p);
}

static void test_socket_mode(void **state) {
        daemon_ctx *d = *state;
        struct stat st;

        assert_int_equal(lstat(d->sock, &st), 0);
        assert_true(S_ISSOCK(st.st_mode));
        assert_int_equal(st.st_mode & 07777, 0660);
}

typedef struct stream_state {
        int replies, continues;
        char last[64];
} stream_state;

static int on_stream(gh_client *c, gh_reply *r, void *userdata) {
        stream_state *s = userdata;

        s->replies++;
        s->continues += gh_reply_continues(r);
        snprintf(s->last, sizeof(s->last), "%s", gh_reply_parameters(r));
        return 0;
}

static void test_more_and_oneway(void **state) {
        daemon_ctx *d = *state;
        gh_client *c;
        gh_reply *r;
        stream_state s = {0};

        assert_int_equal(gh_client_connect(d->sock, &c), 0);
        assert_int_equal(gh_client_call_more(c, "io.gpuhost.Ping", "{\"ping\":\"m\"}", on_stream, &s), 0);
        assert_int_equal(s.replies, 1);
        assert_int_equal(s.continues, 0);
        assert_non_null(strstr(s.last, "\"m\""));
        /* oneway gets no reply: the next reply on the wire is the next call's */
        assert_int_equal(gh_client_call_oneway(c, "io.gpuhost.Ping", "{\"ping\":\"one\"}"), 0);
        assert_int_equal(gh_client_call(c, "io.gpuhost.Ping", "{\"ping\":\"two\"}", &r), 0);
        assert_null(gh_reply_error(r));
        assert_non_null(strstr(gh_reply_parameters(r), "\"two\""));
        gh_reply_free(r);
        /* client-side validation: parameters must be an object */
        assert_int_equal(gh_client_call(c, "io.gpuhost.Ping", "[1]", &r), -EINVAL);
        assert_int_equal(gh_client_call(c, "nomethod", NULL, &r), -EINVAL);
        gh_client_free(c);
}

static void expect_error(const char *sock, const char *method, const char *params, const char *error,
                         const char *param_key, const char *param_value) {
        char *err;
        json_object *p = call(sock, method, params, &err);

        assert_non_null(err);
        assert_string_equal(err, error);
        if (param_key)
                assert_string_equal(json_object_get_string(json_object_object_get(p, param_key)), param_value);
        free(err);
        json_object_put(p);
}

static void test_errors(void **state) {
        daemon_ctx *d = *state;

        expect_error(d->sock, "io.gpuhost.NoSuch", NULL, "org.varlink.service.MethodNotFound", "method", "io.gpuhost.NoSuch");
        expect_error(d->sock, "com.example.Foo", NULL, "org.varlink.service.InterfaceNotFound", "interface", "com.example");
        expect_error(d->sock, "io.gpuhost.Ping", "{\"pong\":1}", "io.gpuhost.InvalidParameter", "parameter", "pong");
        expect_error(d->sock, "io.gpuhost.Ping", "{\"ping\":1}", "io.gpuhost.InvalidParameter", "reason", "wrong type");
        expect_error(d->sock, "org.varlink.service.GetInterfaceDescription", NULL,
                     "org.varlink.service.InvalidParameter", "parameter", "interface");
        expect_error(d->sock, "org.varlink.service.GetInterfaceDescription", "{\"interface\":\"x.y\"}",
                     "org.varlink.service.InterfaceNotFound", "interface", "x.y");
}

static void expect_protocol_error(int fd, const char *data, size_t len, const char *reason_part) {
        raw_send(fd, data, len);
        json_object *r = raw_recv(fd);
        assert_non_null(r);
        assert_string_equal(reply_error(r), "io.gpuhost.ProtocolError");
        if (!strstr(reply_param(r, "reason"), reason_part))
                fail_msg("reason '%s' lacks '%s'", reply_param(r, "reason"), reason_part);
        json_object_put(r);
}

#define PROTO_ERR(fd, lit, part) expect_protocol_error(fd, lit, sizeof(lit), part) /* sizeof: with NUL */

static void test_malformed_input(void **state) {
        daemon_ctx *d = *state;
        int fd = raw_connect(d->sock);

        PROTO_ERR(fd, "this is not json", "malformed");
        PROTO_ERR(fd, "{\"method\":\"io.gpuhost.Ping\",\"parameters\":{\"ping\":\"\xc3\x28\"}}", "UTF-8");
        PROTO_ERR(fd, "{\"method\":\"io.gpuhost.Ping\",\"parameters\":{\"ping\":[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[1]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]}}", "deep");
        PROTO_ERR(fd, "{\"method\":42}", "method");
        PROTO_ERR(fd, "{\"method\":\"io.gpuhost.Ping\",\"more\":\"yes\"}", "'more'");
        PROTO_ERR(fd, "{\"method\":\"io.gpuhost.Ping\",\"parameters\":7}", "parameters");
        PROTO_ERR(fd, "", "empty");
        PROTO_ERR(fd, "{\"method\":\"io.gpuhost.Ping\",\"upgrade\":true}", "upgrade");
        /* The same connection still works. */
        static const char ping[] = "{\"method\":\"io.gpuhost.Ping\",\"parameters\":{\"ping\":\"ok\"}}";
        raw_send(fd, ping, sizeof(ping));
        json_object *r = raw_recv(fd);
        assert_non_null(r);
        assert_null(reply_error(r));
        assert_string_equal(reply_param(r, "pong"), "ok");
        json_object_put(r);
        close(fd);
}

static void test_oversize_message(void **state) {
        daemon_ctx *d = *state;
        int fd = raw_connect(d->sock);
        size_t len = 4096 + 16;
        char *big = malloc(len);

        memset(big, ' ', len); /* no NUL: the daemon must not wait for it */
        raw_send(fd, big, len);
        json_object *r = raw_recv(fd);
        assert_non_null(r);
        assert_string_equal(reply_error(r), "io.gpuhost.MessageTooLarge");
        assert_int_equal(json_object_get_int(json_object_object_get(json_object_object_get(r, "parameters"), "limit")), 4096);
        json_object_put(r);
        assert_null(raw_recv(fd)); /* then it closes the connection */
        close(fd);
        free(big);
        ping_ok(d->sock);
}

static void test_fds_refused(void **state) {
        daemon_ctx *d = *state;
        int fd = raw_connect(d->sock);
        int pipefd[2];
        const char msg[] = "{\"method\":\"io.gpuhost.Ping\"}";
        union {
                struct cmsghdr align;
                char buf[CMSG_SPACE(sizeof(int) * 20)];
        } control = {0};
        int fds[20];

        assert_int_equal(pipe2(pipefd, O_CLOEXEC), 0);
        for (int i = 0; i < 20; i++)
                fds[i] = pipefd[i % 2];
        /* One fd with a method that takes none: refused, connection lives. */
        for (int round = 0; round < 2; round++) {
                size_t n = round == 0 ? 1 : 20;
                struct iovec iov = {.iov_base = (void *) msg, .iov_len = sizeof(msg)};
                struct msghdr mh = {.msg_iov = &iov, .msg_iovlen = 1, .msg_control = control.buf,
                                    .msg_controllen = CMSG_SPACE(sizeof(int) * n)};
                struct cmsghdr *c = CMSG_FIRSTHDR(&mh);
                c->cmsg_level = SOL_SOCKET;
                c->cmsg_type = SCM_RIGHTS;
                c->cmsg_len = CMSG_LEN(sizeof(int) * n);
                memcpy(CMSG_DATA(c), fds, sizeof(int) * n);
                assert_int_equal(sendmsg(fd, &mh, MSG_NOSIGNAL), (ssize_t) sizeof(msg));
                json_object *r = raw_recv(fd);
                assert_non_null(r);
                if (round == 0) {
                        assert_string_equal(reply_error(r), "io.gpuhost.ProtocolError");
                        assert_non_null(strstr(reply_param(r, "reason"), "file descriptors"));
                } else {
                        /* 20 > max_fds_per_message (16): refused, closed */
                        assert_string_equal(reply_error(r), "io.gpuhost.TooManyFileDescriptors");
                        assert_null(raw_recv(fd));
                }
                json_object_put(r);
        }
        close(pipefd[0]);
        close(pipefd[1]);
        close(fd);
        ping_ok(d->sock);
}

/* A child floods the daemon with garbage (and never reads) while we ping
 * on another connection: every ping must still be answered. */
static void test_flood_does_not_disturb_others(void **state) {
        daemon_ctx *d = *state;
        pid_t pid = fork();

        assert_true(pid >= 0);
        if (pid == 0) {
                int fd = raw_connect(d->sock);
                char junk[65536];
                for (size_t i = 0; i < sizeof(junk); i++)
                        junk[i] = (i % 97 == 0) ? 0 : (char) ('!' + i % 90);
                struct timeval tv = {.tv_sec = 1};
                setsockopt(fd, SOL_SOCKET, SO_SNDTIMEO, &tv, sizeof(tv));
                uint64_t end = gh_now_usec(CLOCK_MONOTONIC) + 3 * USEC_PER_SEC;
                while (gh_now_usec(CLOCK_MONOTONIC) < end)
                        if (send(fd, junk, sizeof(junk), MSG_NOSIGNAL) < 0 && errno != EAGAIN)
                                break;
                _exit(0);
        }
        gh_client *c;
        assert_int_equal(gh_client_connect(d->sock, &c), 0);
        gh_client_set_timeout(c, 5 * USEC_PER_SEC);
        int ok = 0;
        uint64_t end = gh_now_usec(CLOCK_MONOTONIC) + 2 * USEC_PER_SEC;
        while (gh_now_usec(CLOCK_MONOTONIC) < end) {
                gh_reply *r;
                assert_int_equal(gh_client_call(c, "io.gpuhost.Ping", "{\"ping\":\"p\"}", &r), 0);
                assert_null(gh_reply_error(r));
                gh_reply_free(r);
                ok++;
        }
        gh_client_free(c);
        assert_int_equal(wait_exit(pid, WAIT_MS), 0);
        assert_true(ok > 20);
        ping_ok(d->sock);
}

/* Clients that die mid-message, mid-call, or right after connecting. */
static void test_dying_clients(void **state) {
        daemon_ctx *d = *state;

        for (int i = 0; i < 20; i++) {
                int fd = raw_connect(d->sock);
                if (i % 3 == 0)
                        raw_send(fd, "{\"method\":\"io.gpuhost.Pi", 24);
                else if (i % 3 == 1)
                        raw_send(fd, "{\"method\":\"io.gpuhost.GetStatus\"}", 34); /* reply never read */
                close(fd);
        }
        ping_ok(d->sock);
        /* Connections of dead clients are gone: only ours remains. */
        for (int i = 0; i < 100 && status_int(d->sock, NULL, "connections") != 1; i++)
                usleep(20000);
        assert_int_equal(status_int(d->sock, NULL, "connections"), 1);
}

/* 2000 calls pipelined without reading: all answered, in order. */
static void test_pipelining_backpressure(void **state) {
        daemon_ctx *d = *state;
        int fd = raw_connect(d->sock);
        enum { N = 2000 };
        pid_t pid = fork();

        assert_true(pid >= 0);
        if (pid == 0) {
                char msg[128];
                for (int i = 0; i < N; i++) {
                        int len = snprintf(msg, sizeof(msg), "{\"method\":\"io.gpuhost.Ping\",\"parameters\":{\"ping\":\"%d\"}}", i);
                        raw_send(fd, msg, (size_t) len + 1);
                }
                _exit(0);
        }
        usleep(200000); /* let the daemon hit its pending and output limits */
        for (int i = 0; i < N; i++) {
                char want[16];
                json_object *r = raw_recv(fd);
                assert_non_null(r);
                snprintf(want, sizeof(want), "%d", i);
                assert_string_equal(reply_param(r, "pong"), want);
                json_object_put(r);
        }
        assert_int_equal(wait_exit(pid, WAIT_MS), 0);
        close(fd);
}

static void test_gpuhostctl(void **state) {
        daemon_ctx *d = *state;
        char *out, *err;

        assert_int_equal(run_ctl(d, d->sock, &out, &err, "status", NULL), 0);
        assert_non_null(strstr(out, "running"));
        assert_non_null(strstr(out, d->sock));
        free(out), free(err);
        assert_int_equal(run_ctl(d, NULL, &out, &err, "-s", d->sock, "status", "--json", NULL), 0);
        json_object *j = json_tokener_parse(out);
        assert_non_null(j);
        assert_string_equal(json_object_get_string(json_object_object_get(j, "state")), "running");
        json_object_put(j);
        free(out), free(err);
        assert_int_equal(run_ctl(d, d->sock, &out, &err, "ping", NULL), 0);
        assert_non_null(strstr(out, "pong"));
        free(out), free(err);
        assert_int_equal(run_ctl(d, d->sock, &out, &err, "version", NULL), 0);
        assert_non_null(strstr(out, "gpuhostd 0.1.0"));
        free(out), free(err);
        assert_int_equal(run_ctl(d, d->sock, &out, &err, "call", "io.gpuhost.Ping", "{\"ping\":\"cli\"}", NULL), 0);
        assert_non_null(strstr(out, "\"cli\""));
        free(out), free(err);
        /* exit codes: remote error 1, usage 2, connection 3 */
        assert_int_equal(run_ctl(d, d->sock, &out, &err, "call", "io.gpuhost.Nope", NULL), 1);
        assert_non_null(strstr(err, "MethodNotFound"));
        free(out), free(err);
        assert_int_equal(run_ctl(d, d->sock, &out, &err, "call", "io.gpuhost.Ping", "not json", NULL), 2);
        free(out), free(err);
        assert_int_equal(run_ctl(d, d->sock, &out, &err, "frobnicate", NULL), 2);
        assert_non_null(strstr(err, "frobnicate"));
        free(out), free(err);
        char missing[200];
        snprintf(missing, sizeof(missing), "%s/nope.sock", d->dir);
        assert_int_equal(run_ctl(d, missing, &out, &err, "status", NULL), 3);
        assert_non_null(strstr(err, "not running"));
        assert_null(strchr(strchr(err, '\n') + 1, '\n')); /* one line */
        free(out), free(err);
        assert_int_equal(run_ctl(d, d->sock, &out, &err, "call", "--help", NULL), 0);
        assert_non_null(strstr(out, "METHOD"));
        free(out), free(err);
}

static void test_reload(void **state) {
        daemon_ctx *d = *state;
        char *err, *out, *cerr;

        assert_int_equal(status_int(d->sock, "config", "max_connections"), 256);
        /* SIGHUP with a valid new config: RELOADING=1, then READY=1. */
        write_config(d, "[limits]\nmax_connections = 77\n");
        notify_skip(d);
        assert_int_equal(kill(d->pid, SIGHUP), 0);
        assert_true(notify_wait(d, "RELOADING=1", WAIT_MS));
        assert_true(notify_wait(d, "READY=1", WAIT_MS));
        assert_int_equal(status_int(d->sock, "config", "max_connections"), 77);

        /* A broken config is refused, with file:line and key; the old one stays. */
        write_config(d, "[limits]\nmax_connections = 50\nmax_message_size = lots\n");
        json_object *p = call(d->sock, "io.gpuhost.ReloadConfig", NULL, &err);
        assert_string_equal(err, "io.gpuhost.ConfigInvalid");
        assert_string_equal(json_object_get_string(json_object_object_get(p, "file")), d->conf);
        assert_int_equal(json_object_get_int(json_object_object_get(p, "line")), 5);
        assert_string_equal(json_object_get_string(json_object_object_get(p, "key")), "[limits] max_message_size");
        free(err);
        json_object_put(p);
        assert_int_equal(status_int(d->sock, "config", "max_connections"), 77);
        assert_int_equal(run_ctl(d, d->sock, &out, &cerr, "reload", NULL), 1);
        assert_non_null(strstr(cerr, "max_message_size"));
        free(out), free(cerr);
        notify_skip(d);
        kill(d->pid, SIGHUP); /* same through the signal: still running, same config */
        assert_true(notify_wait(d, "RELOADING=1", WAIT_MS));
        assert_true(notify_wait(d, "READY=1", WAIT_MS));
        assert_int_equal(status_int(d->sock, "config", "max_connections"), 77);

        /* ReloadConfig of a good config answers with the files read. */
        write_config(d, "[limits]\nmax_connections = 12\nmax_connections_per_user = 12\n");
        p = call(d->sock, "io.gpuhost.ReloadConfig", NULL, &err);
        assert_null(err);
        assert_string_equal(json_object_get_string(json_object_array_get_idx(json_object_object_get(p, "files"), 0)), d->conf);
        json_object_put(p);
        assert_int_equal(status_int(d->sock, "config", "max_connections"), 12);
}

/* As an unprivileged user: Ping works, ReloadConfig is refused unless the
 * caller is in admin_group. Needs root to switch users. */
static void run_as_nobody(daemon_ctx *d, gid_t extra_group, const char *want_error) {
        pid_t pid = fork();

        assert_true(pid >= 0);
        if (pid == 0) {
                gid_t groups[1] = {extra_group};
                if (setgroups(extra_group != (gid_t) -1 ? 1 : 0, groups) < 0 || setgid(65534) < 0 || setuid(65534) < 0)
                        _exit(10);
                gh_client *c;
                gh_reply *r;
                if (gh_client_connect(d->sock, &c) < 0)
                        _exit(11);
                if (gh_client_call(c, "io.gpuhost.Ping", NULL, &r) < 0 || gh_reply_error(r))
                        _exit(12);
                gh_reply_free(r);
                if (gh_client_call(c, "io.gpuhost.ReloadConfig", NULL, &r) < 0)
                        _exit(13);
                const char *e = gh_reply_error(r);
                bool ok = want_error ? (e && strcmp(e, want_error) == 0) : !e;
                _exit(ok ? 0 : 14);
        }
        assert_int_equal(wait_exit(pid, WAIT_MS), 0);
}

static void test_privileged_methods(void **state) {
        daemon_ctx *d = *state;
        struct group *g = getgrnam("users");

        if (geteuid() != 0 || !g)
                skip();
        chmod(d->dir, 0755);
        chmod(d->sock, 0666);
        run_as_nobody(d, (gid_t) -1, "io.gpuhost.PermissionDenied");
        write_config(d, "[daemon]\nadmin_group = users\n");
        notify_skip(d);
        kill(d->pid, SIGHUP);
        assert_true(notify_wait(d, "RELOADING=1", WAIT_MS));
        assert_true(notify_wait(d, "READY=1", WAIT_MS));
        run_as_nobody(d, g->gr_gid, NULL);
        run_as_nobody(d, (gid_t) -1, "io.gpuhost.PermissionDenied");
}

static void test_connection_limits(void **state) {
        daemon_ctx d;
        int fds[4];

        ctx_init(&d);
        daemon_start_full(&d, "[limits]\nmax_connections = 4\nmax_connections_per_user = 3\n", -1, 0);
        for (int i = 0; i < 3; i++)
                fds[i] = raw_connect(d.sock);
        usleep(100000);
        /* The 4th connection of this user is over the per-user limit. */
        fds[3] = raw_connect(d.sock);
        json_object *r = raw_recv(fds[3]);
        assert_non_null(r);
        assert_string_equal(reply_error(r), "io.gpuhost.TooManyConnections");
        assert_int_equal(json_object_get_int(json_object_object_get(json_object_object_get(r, "parameters"), "limit")), 3);
        json_object_put(r);
        assert_null(raw_recv(fds[3]));
        close(fds[3]);
        close(fds[0]);
        usleep(100000);
        ping_ok(d.sock); /* a slot is free again */
        close(fds[1]);
        close(fds[2]);
        daemon_stop(&d);
        ctx_cleanup(&d);
}

static void test_idle_timeout(void **state) {
        daemon_ctx d;

        ctx_init(&d);
        daemon_start_full(&d, "[limits]\nidle_timeout_sec = 1\n", -1, 0);
        int fd = raw_connect(d.sock);
        uint64_t start = gh_now_usec(CLOCK_MONOTONIC);
        assert_null(raw_recv(fd)); /* closed by the daemon, not by our 10 s timeout */
        assert_true(gh_now_usec(CLOCK_MONOTONIC) - start < 5 * USEC_PER_SEC);
        close(fd);
        daemon_stop(&d);
        ctx_cleanup(&d);
}

static void test_socket_activation(void **state) {
        daemon_ctx d;
        struct sockaddr_un sa = {.sun_family = AF_UNIX};
        struct stat st;

        ctx_init(&d);
        strcpy(sa.sun_path, d.sock);
        int lfd = socket(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0);
        assert_int_equal(bind(lfd, (struct sockaddr *) &sa, sizeof(sa)), 0);
        assert_int_equal(listen(lfd, 16), 0);
        /* The config names another path: the passed socket must win. */
        char other[200];
        snprintf(other, sizeof(other), "%s/unused.sock", d.dir);
        char text[512];
        snprintf(text, sizeof(text), "[socket]\npath = %s\n", other);
        write_file(d.conf, text);
        spawn_daemon(&d, lfd, 0);
        assert_true(notify_wait(&d, "READY=1", WAIT_MS));
        ping_ok(d.sock);
        assert_int_equal(lstat(other, &st), -1);
        daemon_stop(&d);
        assert_int_equal(lstat(d.sock, &st), 0); /* systemd's socket is not ours to remove */
        close(lfd);
        ctx_cleanup(&d);
}

static void test_watchdog(void **state) {
        daemon_ctx d;

        ctx_init(&d);
        daemon_start_full(&d, NULL, -1, 200 * USEC_PER_MSEC);
        for (int i = 0; i < 3; i++)
                assert_true(notify_wait(&d, "WATCHDOG=1", 2000));
        daemon_stop(&d);
        ctx_cleanup(&d);
}

static void expect_start_failure(const char *extra_conf, bool symlink_sock, int want_code, const char *want_log) {
        daemon_ctx d;

        ctx_init(&d);
        if (symlink_sock)
                assert_int_equal(symlink("/tmp/elsewhere", d.sock), 0);
        if (extra_conf)
                write_file(d.conf, extra_conf);
        else
                write_config(&d, NULL);
        spawn_daemon(&d, -1, 0);
        assert_int_equal(wait_exit(d.pid, WAIT_MS), want_code);
        d.pid = -1;
        char *log = read_file(d.log);
        if (!strstr(log, want_log))
                fail_msg("log lacks '%s':\n%s", want_log, log);
        free(log);
        ctx_cleanup(&d);
}

static void test_refuses_to_start(void **state) {
        expect_start_failure("[socket]\npath = /tmp/x.sock\n[limits]\nmax_connections = 0\n", false, 78,
                             ":4: [limits] max_connections: out of range");
        expect_start_failure("[nope]\n", false, 78, ":1: [nope]: unknown section");
        expect_start_failure(NULL, true, 1, "symbolic link");
}

static void test_second_daemon_refused(void **state) {
        daemon_ctx *d = *state;
        daemon_ctx d2;

        ctx_init(&d2);
        char text[512];
        snprintf(text, sizeof(text), "[socket]\npath = %s\n", d->sock);
        write_file(d2.conf, text);
        spawn_daemon(&d2, -1, 0);
        assert_int_equal(wait_exit(d2.pid, WAIT_MS), 1);
        d2.pid = -1;
        char *log = read_file(d2.log);
        assert_non_null(strstr(log, "Another daemon"));
        free(log);
        ctx_cleanup(&d2);
        ping_ok(d->sock); /* the first one is untouched */
}

/* SIGTERM while the daemon still has calls to answer: all of them are
 * answered before it exits 0. A child sends N large pings in one write;
 * we read all but the last K replies, so the child's write completes and
 * the rest waits in the daemon (only a few 60 KB replies fit in the
 * socket buffers), then stop the daemon and read the remaining K. */
static void test_drain_finishes_work(void **state) {
        daemon_ctx d;
        enum { N = 60, K = 10, PING = 60000 };
        char *ping = malloc(PING + 1);
        size_t one = PING + 64, len = 0;
        char *all = malloc(one * N);

        ctx_init(&d);
        daemon_start_full(&d, "[limits]\nmax_output_buffer = 64K\n", -1, 0);
        memset(ping, 'p', PING);
        ping[PING] = 0;
        for (int i = 0; i < N; i++)
                len += (size_t) snprintf(all + len, one, "{\"method\":\"io.gpuhost.Ping\",\"parameters\":{\"ping\":\"%s\"}}", ping) + 1;
        int fd = raw_connect(d.sock);
        pid_t pid = fork();
        assert_true(pid >= 0);
        if (pid == 0) {
                ssize_t n = 0;
                for (size_t off = 0; off < len && n >= 0; off += (size_t) n)
                        n = send(fd, all + off, len - off, MSG_NOSIGNAL);
                _exit(n < 0 ? 1 : 0);
        }
        int got = 0;
        for (json_object *r; got < N - K && (r = raw_recv(fd)); got++)
                json_object_put(r);
        assert_int_equal(wait_exit(pid, WAIT_MS), 0); /* every call was sent */
        notify_skip(&d);
        kill(d.pid, SIGTERM);
        assert_true(notify_wait(&d, "STOPPING=1", WAIT_MS));
        for (json_object *r; (r = raw_recv(fd)); got++) {
                assert_null(reply_error(r));
                json_object_put(r);
        }
        if (got != N) {
                char *dl = read_file(d.log);
                fail_msg("got %d of %d replies; log:\n%s", got, N, dl);
        }
        assert_int_equal(wait_exit(d.pid, WAIT_MS), 0);
        d.pid = -1;
        char *log = read_file(d.log);
        assert_null(strstr(log, "grace period over"));
        free(log);
        close(fd);
        free(ping);
        free(all);
        ctx_cleanup(&d);
}

/* A client that never reads keeps work in flight: the grace period ends
 * it and the daemon still exits 0. */
static void test_drain_grace_period(void **state) {
        daemon_ctx d;

        ctx_init(&d);
        daemon_start_full(&d, "[daemon]\nshutdown_grace_sec = 1\n[limits]\nmax_output_buffer = 64K\n", -1, 0);
        int fd = raw_connect(d.sock);
        int small = 4096;
        setsockopt(fd, SOL_SOCKET, SO_RCVBUF, &small, sizeof(small));
        char msg[] = "{\"method\":\"io.gpuhost.GetStatus\"}";
        struct timeval tv = {.tv_sec = 2};
        setsockopt(fd, SOL_SOCKET, SO_SNDTIMEO, &tv, sizeof(tv));
        for (int i = 0; i < 3000; i++)
                if (send(fd, msg, sizeof(msg), MSG_NOSIGNAL) < 0)
                        break;
        kill(d.pid, SIGTERM);
        assert_int_equal(wait_exit(d.pid, WAIT_MS), 0);
        d.pid = -1;
        char *log = read_file(d.log);
        assert_non_null(strstr(log, "grace period over"));
        free(log);
        close(fd);
        ctx_cleanup(&d);
}

int main(void) {
        const struct CMUnitTest tests[] = {
                cmocka_unit_test_setup_teardown(test_ready_and_status, setup, teardown),
                cmocka_unit_test_setup_teardown(test_socket_mode, setup, teardown),
                cmocka_unit_test_setup_teardown(test_more_and_oneway, setup, teardown),
                cmocka_unit_test_setup_teardown(test_errors, setup, teardown),
                cmocka_unit_test_setup_teardown(test_malformed_input, setup, teardown),
                cmocka_unit_test_setup_teardown(test_oversize_message, setup, teardown),
                cmocka_unit_test_setup_teardown(test_fds_refused, setup, teardown),
                cmocka_unit_test_setup_teardown(test_flood_does_not_disturb_others, setup, teardown),
                cmocka_unit_test_setup_teardown(test_dying_clients, setup, teardown),
                cmocka_unit_test_setup_teardown(test_pipelining_backpressure, setup, teardown),
                cmocka_unit_test_setup_teardown(test_gpuhostctl, setup, teardown),
                cmocka_unit_test_setup_teardown(test_reload, setup, teardown),
                cmocka_unit_test_setup_teardown(test_privileged_methods, setup, teardown),
                cmocka_unit_test_setup_teardown(test_second_daemon_refused, setup, teardown),
                cmocka_unit_test(test_connection_limits),
                cmocka_unit_test(test_idle_timeout),
                cmocka_unit_test(test_socket_activation),
                cmocka_unit_test(test_watchdog),
                cmocka_unit_test(test_refuses_to_start),
                cmocka_unit_test(test_drain_finishes_work),
                cmocka_unit_test(test_drain_grace_period),
        };
        signal(SIGPIPE, SIG_IGN);
        if (getenv("GH_TEST_FILTER")) /* e.g. GH_TEST_FILTER=test_reload */
                cmocka_set_test_filter(getenv("GH_TEST_FILTER"));
        return cmocka_run_group_tests(tests, NULL, NULL);
}

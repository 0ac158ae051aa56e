/* End-to-end tests of the metrics through a real gpuhostd on the CPU device:
 * io.gpuhost.GetMetrics returns the families in the Prometheus text format;
 * with [metrics] listen on a free loopback port, GET /metrics answers 200
 * with the exposition content type and the same families, HEAD the headers
 * alone, other paths 404, other methods 405 (with Allow); the connection
 * limit (16) and the per-connection timeout (10 s) hold, garbage does not
 * hurt, and every fd of the daemon is CLOEXEC; a reload moves the endpoint
 * to another port (and [::1] where IPv6 is up), or stops it; a
 * non-loopback address is a config error naming the key; gpuhostctl
 * metrics, status (device table) and top --iterations against it. */
#include <stdarg.h>
#include <stddef.h>
#include <setjmp.h>
#include <cmocka.h>
#include <arpa/inet.h>
#include <dirent.h>
#include <errno.h>
#include <fcntl.h>
#include <json-c/json.h>
#include <netinet/in.h>
#include <poll.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

#include "common/util.h"
#include "daemon-run.h"
#include "files.h"

#define CONTENT_TYPE "text/plain; version=0.0.4; charset=utf-8"
#define HTTP_CONNECTIONS 16

typedef struct env {
        char dir[64], sock[128], log[128], conf[128];
        int port;
        pid_t pid;
} env;

static env E;

/* ---- helpers ---- */

static void write_text(const char *path, const char *text) {
        assert_int_equal(gh_test_write_text(path, text), 0);
}

static char *read_text(const char *path) {
        char *text = gh_test_read_text(path);

        assert_non_null(text);
        return text;
}

/* A port nothing listens on now: bind to port 0 and let it go. */
static int free_port(int family) {
        struct sockaddr_storage ss = {0};
        socklen_t len = family == AF_INET6 ? sizeof(struct sockaddr_in6) : sizeof(struct sockaddr_in);
        int fd = socket(family, SOCK_STREAM | SOCK_CLOEXEC, 0), port;

        if (fd < 0)
                return -1;
        if (family == AF_INET6) {
                struct sockaddr_in6 *in6 = (struct sockaddr_in6 *) &ss;
                in6->sin6_family = AF_INET6;
                in6->sin6_addr = in6addr_loopback;
        } else {
                struct sockaddr_in *in = (struct sockaddr_in *) &ss;
                in->sin_family = AF_INET;
                in->sin_addr.s_addr = htonl(INADDR_LOOPBACK);
        }
        if (bind(fd, (struct sockaddr *) &ss, len) < 0 || getsockname(fd, (struct sockaddr *) &ss, &len) < 0) {
                close(fd);
                return -1;
        }
        port = ntohs(family == AF_INET6 ? ((struct sockaddr_in6 *) &ss)->sin6_port
                                        : ((struct sockaddr_in *) &ss)->sin_port);
        close(fd);
        return port;
}

static void write_config(const char *metrics_listen) {
        char text[1024];

        snprintf(text, sizeof(text),
                 "[socket]\npath = %s\n[devices]\ncpu_memory = 64M\nslab_size = 2M\n[models]\ndirectory = %s\n"
                 "[metrics]\nlisten = %s\n",
                 E.sock, E.dir, metrics_listen ? metrics_listen : "");
        write_text(E.conf, text);
}

/* A blocking TCP connection to the loopback address of |family|, with
 * 5-second send and receive timeouts; -errno when refused. */
static int http_connect(int family, int port) {
        struct timeval tv = {.tv_sec = 5};
        struct sockaddr_in in = {.sin_family = AF_INET, .sin_port = htons((uint16_t) port),
                                 .sin_addr.s_addr = htonl(INADDR_LOOPBACK)};
        struct sockaddr_in6 in6 = {.sin6_family = AF_INET6, .sin6_port = htons((uint16_t) port),
                                   .sin6_addr = in6addr_loopback};
        int fd = socket(family, SOCK_STREAM | SOCK_CLOEXEC, 0);

        assert_true(fd >= 0);
        setsockopt(fd, SOL_SOCKET, SO_RCVTIMEO, &tv, sizeof(tv));
        setsockopt(fd, SOL_SOCKET, SO_SNDTIMEO, &tv, sizeof(tv));
        int r = family == AF_INET6 ? connect(fd, (struct sockaddr *) &in6, sizeof(in6))
                                   : connect(fd, (struct sockaddr *) &in, sizeof(in));
        if (r < 0) {
                r = -errno;
                close(fd);
                return r;
        }
        return fd;
}

/* Everything the peer sends until it closes (or 5 s of silence). */
static char *read_all(int fd) {
        size_t size = 1 << 16, len = 0;
        char *buf = malloc(size);

        assert_non_null(buf);
        for (;;) {
                if (len + 4096 > size) {
                        size *= 2;
                        buf = realloc(buf, size);
                        assert_non_null(buf);
                }
                ssize_t n = recv(fd, buf + len, size - len - 1, 0);
                if (n <= 0)
                        break;
                len += (size_t) n;
        }
        buf[len] = 0;
        return buf;
}

typedef struct http_reply {
        char *raw;
        int status;
        const char *headers; /* into raw: after the status line */
        const char *body;    /* into raw: after the empty line */
} http_reply;

static void http_request(int family, int port, const char *request, http_reply *ret) {
        int fd = http_connect(family, port);

        if (fd < 0)
                fail_msg("cannot connect to port %d: %s", port, strerror(-fd));
        assert_int_equal(send(fd, request, strlen(request), MSG_NOSIGNAL), (ssize_t) strlen(request));
        ret->raw = read_all(fd);
        close(fd);
        ret->status = 0;
        sscanf(ret->raw, "HTTP/1.%*d %d", &ret->status);
        char *eol = strstr(ret->raw, "\r\n"), *end = strstr(ret->raw, "\r\n\r\n");
        if (!eol || !end)
                fail_msg("malformed HTTP reply: %s", ret->raw);
        *end = 0; /* headers end here */
        ret->headers = eol + 2;
        ret->body = end + 4;
}

static void http_get(int port, const char *method, const char *path, http_reply *ret) {
        char req[256];

        snprintf(req, sizeof(req), "%s %s HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n\r\n", method, path);
        http_request(AF_INET, port, req, ret);
}

/* The value of header |name| (case-insensitive), or NULL. */
static char *header(const http_reply *r, const char *name) {
        static char value[256];
        size_t n = strlen(name);

        for (const char *p = r->headers; p && *p;) {
                const char *eol = strstr(p, "\r\n");
                size_t len = eol ? (size_t) (eol - p) : strlen(p);
                if (len > n && strncasecmp(p, name, n) == 0 && p[n] == ':') {
                        const char *v = p + n + 1;
                        while (*v == ' ')
                                v++;
                        snprintf(value, sizeof(value), "%.*s", (int) (len - (size_t) (v - p)), v);
                        return value;
                }
                p = eol ? eol + 2 : NULL;
        }
        return NULL;
}

/* The "# TYPE" lines of an exposition, in order, one per line. */
static char *type_lines(const char *text) {
        char *out = calloc(1, strlen(text) + 1);
        size_t len = 0;

        assert_non_null(out);
        for (const char *p = text; p && *p;) {
                const char *eol = strchr(p, '\n');
                size_t n = eol ? (size_t) (eol - p + 1) : strlen(p);
                if (strncmp(p, "# TYPE ", 7) == 0) {
                        memcpy(out + len, p, n);
                        len += n;
                }
                p = eol ? eol + 1 : NULL;
        }
        out[len] = 0;
        return out;
}

static char *get_metrics_text(void) {
        char *err = NULL;
        json_object *p = gh_test_call(E.sock, "io.gpuhost.GetMetrics", NULL, &err);

        if (err)
                fail_msg("GetMetrics: %s", err);
        json_object *t = json_object_object_get(p, "text");
        assert_true(json_object_is_type(t, json_type_string));
        char *text = strdup(json_object_get_string(t));
        json_object_put(p);
        assert_non_null(text);
        return text;
}

/* Runs a shell command line and returns its stdout and exit status. */
static char *run_capture(const char *cmdline, int *ret_status) {
        FILE *p = popen(cmdline, "re");
        char *buf = calloc(1, 1 << 20);
        size_t len = 0, n;

        assert_non_null(p);
        assert_non_null(buf);
        while (len < (1 << 20) - 1 && (n = fread(buf + len, 1, (1 << 20) - 1 - len, p)) > 0)
                len += n;
        int status = pclose(p);
        *ret_status = WIFEXITED(status) ? WEXITSTATUS(status) : 128;
        return buf;
}

static size_t count(const char *text, const char *what) {
        size_t n = 0;

        for (const char *p = text; (p = strstr(p, what)); p += strlen(what))
                n++;
        return n;
}

static void reload(void) {
        char *err = NULL;
        json_object *p = gh_test_call(E.sock, "io.gpuhost.ReloadConfig", NULL, &err);

        if (err) {
                char *log = read_text(E.log);
                fail_msg("ReloadConfig: %s; log:\n%s", err, log);
        }
        json_object_put(p);
}

/* ---- tests ---- */

static void test_get_metrics(void **state) {
        char *text = get_metrics_text();

        assert_non_null(strstr(text, "# TYPE gpuhost_jobs_submitted_total counter\n"));
        assert_non_null(strstr(text, "# TYPE gpuhost_jobs_finished_total counter\n"));
        assert_non_null(strstr(text, "# TYPE gpuhost_queue_wait_seconds histogram\n"));
        assert_non_null(strstr(text, "# TYPE gpuhost_device_memory_bytes gauge\n"));
        assert_non_null(strstr(text, "# HELP gpuhost_admission_waits_total "));
        assert_int_equal(count(text, "# TYPE "), 19);
        assert_int_equal(text[strlen(text) - 1], '\n');
        free(text);
}

static void test_http_get(void **state) {
        http_reply r;
        char *text = get_metrics_text();

        http_get(E.port, "GET", "/metrics", &r);
        assert_int_equal(r.status, 200);
        assert_true(strncmp(r.raw, "HTTP/1.1 200 OK\r\n", 17) == 0);
        assert_non_null(header(&r, "Content-Type"));
        assert_string_equal(header(&r, "Content-Type"), CONTENT_TYPE);
        assert_non_null(header(&r, "Content-Length"));
        assert_int_equal(atol(header(&r, "Content-Length")), (long) strlen(r.body));
        char *a = type_lines(text), *b = type_lines(r.body);
        assert_string_equal(a, b);
        assert_int_equal(count(b, "\n"), 19);
        free(a);
        free(b);
        free(r.raw);
        free(text);

        /* A query string is ignored; HEAD gets the headers alone. */
        http_get(E.port, "GET", "/metrics?name[]=x", &r);
        assert_int_equal(r.status, 200);
        free(r.raw);
        http_get(E.port, "HEAD", "/metrics", &r);
        assert_int_equal(r.status, 200);
        assert_string_equal(header(&r, "Content-Type"), CONTENT_TYPE);
        assert_string_equal(r.body, "");
        free(r.raw);
}

static void test_http_errors(void **state) {
        static const char *const paths[] = {"/", "/metric", "/metrics/", "/metricsx", "/../metrics", "/favicon.ico"};
        static const char *const methods[] = {"POST", "PUT", "DELETE", "OPTIONS", "PATCH", "BREW"};
        http_reply r;

        for (size_t i = 0; i < sizeof(paths) / sizeof(paths[0]); i++) {
                http_get(E.port, "GET", paths[i], &r);
                if (r.status != 404)
                        print_error("GET %s: %s\n", paths[i], r.raw);
                assert_int_equal(r.status, 404);
                free(r.raw);
        }
        for (size_t i = 0; i < sizeof(methods) / sizeof(methods[0]); i++) {
                http_get(E.port, methods[i], "/metrics", &r);
                if (r.status != 405)
                        print_error("%s /metrics: %s\n", methods[i], r.raw);
                assert_int_equal(r.status, 405);
                assert_non_null(header(&r, "Allow"));
                assert_string_equal(header(&r, "Allow"), "GET, HEAD");
                free(r.raw);
        }
        /* A POST with a body. */
        http_request(AF_INET, E.port,
                     "POST /metrics HTTP/1.1\r\nHost: x\r\nContent-Length: 5\r\nConnection: close\r\n\r\nhello", &r);
        assert_int_equal(r.status, 405);
        free(r.raw);
        /* Garbage gets an error or a closed connection, and the daemon
         * serves on. */
        int fd = http_connect(AF_INET, E.port);
        assert_true(fd >= 0);
        const char junk[] = "\x01\x02 NOT HTTP \xff\r\n\r\n";
        assert_int_equal(send(fd, junk, sizeof(junk) - 1, MSG_NOSIGNAL), (ssize_t) sizeof(junk) - 1);
        char *reply = read_all(fd);
        assert_true(reply[0] == 0 || strncmp(reply, "HTTP/1.1 4", 10) == 0);
        free(reply);
        close(fd);
        http_get(E.port, "GET", "/metrics", &r);
        assert_int_equal(r.status, 200);
        free(r.raw);
}

/* Connections past the limit are closed at once; the others still work. */
static void test_connection_limit(void **state) {
        int fds[HTTP_CONNECTIONS];

        for (int i = 0; i < HTTP_CONNECTIONS; i++) {
                fds[i] = http_connect(AF_INET, E.port);
                assert_true(fds[i] >= 0);
        }
        usleep(300 * 1000); /* the daemon accepts them */
        int extra = http_connect(AF_INET, E.port);
        assert_true(extra >= 0);
        const char req[] = "GET /metrics HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n";
        (void) !send(extra, req, sizeof(req) - 1, MSG_NOSIGNAL);
        char *reply = read_all(extra);
        assert_string_equal(reply, ""); /* closed without an answer */
        free(reply);
        close(extra);
        /* One of the sixteen is served. */
        assert_int_equal(send(fds[0], req, sizeof(req) - 1, MSG_NOSIGNAL), (ssize_t) sizeof(req) - 1);
        reply = read_all(fds[0]);
        assert_true(strncmp(reply, "HTTP/1.1 200 OK\r\n", 17) == 0);
        free(reply);
        for (int i = 0; i < HTTP_CONNECTIONS; i++)
                close(fds[i]);
        /* Once they are gone, new connections are served again. */
        for (int tries = 0;; tries++) {
                int fd = http_connect(AF_INET, E.port);
                assert_true(fd >= 0);
                assert_int_equal(send(fd, req, sizeof(req) - 1, MSG_NOSIGNAL), (ssize_t) sizeof(req) - 1);
                reply = read_all(fd);
                close(fd);
                bool ok = strncmp(reply, "HTTP/1.1 200 OK\r\n", 17) == 0;
                free(reply);
                if (ok)
                        break;
                assert_true(tries < 50);
                usleep(100 * 1000);
        }
}

/* An idle connection is closed after the 10-second timeout. */
static void test_idle_timeout(void **state) {
        struct timespec a, b;
        struct pollfd p;
        char c;
        int fd = http_connect(AF_INET, E.port);

        assert_true(fd >= 0);
        clock_gettime(CLOCK_MONOTONIC, &a);
        p = (struct pollfd) {.fd = fd, .events = POLLIN};
        assert_int_equal(poll(&p, 1, 20000), 1);
        clock_gettime(CLOCK_MONOTONIC, &b);
        assert_true(recv(fd, &c, 1, 0) <= 0);
        double waited = (double) (b.tv_sec - a.tv_sec) + (double) (b.tv_nsec - a.tv_nsec) / 1e9;
        if (waited < 9 || waited > 15)
                print_error("closed after %.1f s\n", waited);
        assert_true(waited >= 9 && waited <= 15);
        close(fd);
}

/* Every fd of the daemon, its HTTP connections included, is CLOEXEC. */
static void test_fds_cloexec(void **state) {
        char path[64];
        int fd = http_connect(AF_INET, E.port), checked = 0;

        assert_true(fd >= 0);
        usleep(200 * 1000);
        snprintf(path, sizeof(path), "/proc/%d/fdinfo", (int) E.pid);
        DIR *d = opendir(path);
        assert_non_null(d);
        for (struct dirent *de; (de = readdir(d));) {
                int n = atoi(de->d_name);
                if (de->d_name[0] == '.' || n < 3)
                        continue;
                char info[512], target[256] = "", link[128];
                snprintf(info, sizeof(info), "%s/%s", path, de->d_name);
                char *text = read_text(info);
                unsigned long flags = 0;
                char *f = strstr(text, "flags:");
                assert_non_null(f);
                flags = strtoul(f + 6, NULL, 8);
                snprintf(link, sizeof(link), "/proc/%d/fd/%d", (int) E.pid, n);
                (void) !readlink(link, target, sizeof(target) - 1);
                if (!(flags & 02000000))
                        print_error("fd %d (%s) is not CLOEXEC\n", n, target);
                assert_true(flags & 02000000);
                free(text);
                checked++;
        }
        closedir(d);
        assert_true(checked >= 4); /* at least: varlink socket, HTTP socket, its epoll, a connection */
        close(fd);
}

static void test_reload_moves_endpoint(void **state) {
        char where[64];
        http_reply r;
        int old = E.port, port = free_port(AF_INET);

        assert_true(port > 0);
        snprintf(where, sizeof(where), "localhost:%d", port);
        write_config(where);
        reload();
        http_get(port, "GET", "/metrics", &r);
        assert_int_equal(r.status, 200);
        free(r.raw);
        assert_int_equal(http_connect(AF_INET, old), -ECONNREFUSED);
        E.port = port;

        /* IPv6 loopback, where the machine has it. */
        int port6 = free_port(AF_INET6);
        if (port6 > 0) {
                snprintf(where, sizeof(where), "[::1]:%d", port6);
                write_config(where);
                reload();
                http_request(AF_INET6, port6, "GET /metrics HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n", &r);
                assert_int_equal(r.status, 200);
                free(r.raw);
                assert_int_equal(http_connect(AF_INET, port), -ECONNREFUSED);
        } else
                print_message("(no IPv6 loopback: [::1] not tried)\n");

        /* Off, then on again at the first address. */
        write_config(NULL);
        reload();
        assert_int_equal(http_connect(AF_INET, port), -ECONNREFUSED);
        snprintf(where, sizeof(where), "127.0.0.1:%d", old);
        write_config(where);
        reload();
        http_get(old, "GET", "/metrics", &r);
        assert_int_equal(r.status, 200);
        free(r.raw);
        E.port = old;
        assert_int_equal(kill(E.pid, 0), 0);
}

/* A reload to an address that is taken keeps the running endpoint. */
static void test_reload_address_in_use(void **state) {
        char where[64];
        http_reply r;
        int port = free_port(AF_INET);
        int busy = socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0), one = 1;
        struct sockaddr_in in = {.sin_family = AF_INET, .sin_port = htons((uint16_t) port),
                                 .sin_addr.s_addr = htonl(INADDR_LOOPBACK)};

        assert_true(busy >= 0);
        setsockopt(busy, SOL_SOCKET, SO_REUSEADDR, &one, sizeof(one));
        assert_int_equal(bind(busy, (struct sockaddr *) &in, sizeof(in)), 0);
        assert_int_equal(listen(busy, 1), 0);
        snprintf(where, sizeof(where), "127.0.0.1:%d", port);
        write_config(where);
        reload();
        http_get(E.port, "GET", "/metrics", &r);
        assert_int_equal(r.status, 200);
        free(r.raw);
        close(busy);
        char *log = read_text(E.log);
        assert_non_null(strstr(log, "cannot serve on"));
        free(log);
        snprintf(where, sizeof(where), "127.0.0.1:%d", E.port);
        write_config(where);
        reload();
}

static void test_config_refuses_non_loopback(void **state) {
        const char *bin = getenv("GH_GPUHOSTD");
        char conf[192], cmd[512], text[256];
        int status;

        snprintf(conf, sizeof(conf), "%s/bad.conf", E.dir);
        snprintf(text, sizeof(text), "[socket]\npath = %s/other.sock\n[metrics]\nlisten = 0.0.0.0:9464\n", E.dir);
        write_text(conf, text);
        snprintf(cmd, sizeof(cmd), "%s -c %s --check-config 2>&1", bin, conf);
        char *out = run_capture(cmd, &status);
        assert_int_not_equal(status, 0);
        if (!strstr(out, "[metrics] listen") || !strstr(out, "loopback only"))
                print_error("output: %s\n", out);
        assert_non_null(strstr(out, "bad.conf:4: [metrics] listen"));
        assert_non_null(strstr(out, "loopback only"));
        free(out);
}

static void test_gpuhostctl(void **state) {
        const char *ctl = getenv("GH_GPUHOSTCTL");
        char cmd[512];
        int status;

        assert_non_null(ctl);
        snprintf(cmd, sizeof(cmd), "%s -s %s metrics", ctl, E.sock);
        char *out = run_capture(cmd, &status), *text = get_metrics_text();
        assert_int_equal(status, 0);
        char *a = type_lines(out), *b = type_lines(text);
        assert_string_equal(a, b);
        assert_int_equal(count(a, "\n"), 19);
        free(a);
        free(b);
        free(text);
        free(out);

        snprintf(cmd, sizeof(cmd), "%s -s %s status", ctl, E.sock);
        out = run_capture(cmd, &status);
        assert_int_equal(status, 0);
        assert_non_null(strstr(out, "DEV NAME"));
        assert_non_null(strstr(out, "USED/BUDGET MiB RUN/QUEUED MODELS\n"));
        assert_non_null(strstr(out, "[.........."));
        free(out);

        /* Not a terminal: one frame, or N a second apart. */
        snprintf(cmd, sizeof(cmd), "%s -s %s top", ctl, E.sock);
        out = run_capture(cmd, &status);
        assert_int_equal(status, 0);
        assert_int_equal(count(out, "DEV NAME"), 1);
        assert_int_equal(count(out, "\033["), 0);
        assert_non_null(strstr(out, "(no jobs)\n"));
        free(out);
        struct timespec t0, t1;
        clock_gettime(CLOCK_MONOTONIC, &t0);
        snprintf(cmd, sizeof(cmd), "%s -s %s top --iterations 3", ctl, E.sock);
        out = run_capture(cmd, &status);
        clock_gettime(CLOCK_MONOTONIC, &t1);
        assert_int_equal(status, 0);
        assert_int_equal(count(out, "DEV NAME"), 3);
        assert_int_equal(count(out, "gpuhostd "), 3);
        assert_true(t1.tv_sec - t0.tv_sec >= 1); /* two pauses of a second */
        free(out);

        /* SIGINT ends it cleanly. */
        snprintf(cmd, sizeof(cmd), "%s -s %s top --iterations 100 & pid=$!; sleep 1.5; kill -INT $pid; wait $pid",
                 ctl, E.sock);
        out = run_capture(cmd, &status);
        assert_int_equal(status, 0);
        assert_true(count(out, "DEV NAME") >= 1 && count(out, "DEV NAME") < 10);
        free(out);
}

/* ---- the daemon ---- */

/* Marks every fd of this process CLOEXEC (the test runner may pass some
 * on), so that the daemon's fds are its own. */
static void cloexec_inherited_fds(void) {
        DIR *d = opendir("/proc/self/fd");

        assert_non_null(d);
        for (struct dirent *de; (de = readdir(d));) {
                int fd = atoi(de->d_name);
                if (de->d_name[0] != '.' && fd > 2 && fd != dirfd(d))
                        fcntl(fd, F_SETFD, FD_CLOEXEC);
        }
        closedir(d);
}

static int setup(void **state) {
        char where[64];

        strcpy(E.dir, "/tmp/gh-metrics-XXXXXX");
        assert_non_null(mkdtemp(E.dir));
        snprintf(E.sock, sizeof(E.sock), "%s/gpuhost.sock", E.dir);
        snprintf(E.log, sizeof(E.log), "%s/daemon.log", E.dir);
        snprintf(E.conf, sizeof(E.conf), "%s/gpuhost.conf", E.dir);
        E.port = free_port(AF_INET);
        assert_true(E.port > 0);
        snprintf(where, sizeof(where), "127.0.0.1:%d", E.port);
        write_config(where);
        cloexec_inherited_fds();
        int r = gh_test_daemon_start(E.conf, E.log, E.sock, NULL, &E.pid);
        if (r < 0) {
                char *log = read_text(E.log);
                fail_msg("gpuhostd did not start (%s); log:\n%s", strerror(-r), log);
        }
        return 0;
}

static int teardown(void **state) {
        char cmd[128];
        int status;

        if (E.pid > 0) {
                kill(E.pid, SIGTERM);
                waitpid(E.pid, &status, 0);
                if (!WIFEXITED(status) || WEXITSTATUS(status) != 0) {
                        char *log = read_text(E.log);
                        print_error("gpuhostd exit status %d; log:\n%s\n", status, log);
                        free(log);
                        return -1;
                }
        }
        snprintf(cmd, sizeof(cmd), "rm -rf '%s'", E.dir);
        (void) !system(cmd);
        return 0;
}

int main(void) {
        const struct CMUnitTest tests[] = {
                cmocka_unit_test(test_get_metrics),
                cmocka_unit_test(test_http_get),
                cmocka_unit_test(test_http_errors),
                cmocka_unit_test(test_connection_limit),
                cmocka_unit_test(test_idle_timeout),
                cmocka_unit_test(test_fds_cloexec),
                cmocka_unit_test(test_reload_moves_endpoint),
                cmocka_unit_test(test_reload_address_in_use),
                cmocka_unit_test(test_config_refuses_non_loopback),
                cmocka_unit_test(test_gpuhostctl),
        };
        return cmocka_run_group_tests(tests, setup, teardown);
}

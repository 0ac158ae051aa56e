/* libgpuhost: blocking varlink client over the shared codec. See
 * include/gpuhost/client.h. */
#include <fcntl.h>
#include <poll.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/un.h>

#include "../common/util.h"
#include "../common/varlink.h"
#include "gpuhost/client.h"

#define GH_EXPORT __attribute__((visibility("default")))
#define CLIENT_MAX_MESSAGE (64 * 1024 * 1024)
#define CLIENT_MAX_FDS 64
#define CLIENT_MAX_DEPTH 256
#define CLIENT_DEFAULT_TIMEOUT (30 * USEC_PER_SEC)
#define READ_CHUNK (64 * 1024)

struct gh_client {
        int fd;
        char *path;
        uint64_t timeout_usec;
        gh_vl_reader reader;
        gh_vl_writer writer;
        bool broken; /* a transport error left the stream out of sync */
};

struct gh_reply {
        char *error;
        char *parameters;
        bool continues;
        int *fds;
        size_t n_fds;
};

GH_EXPORT int gh_client_connect(const char *path, gh_client **ret) {
        struct sockaddr_un sa = {.sun_family = AF_UNIX};

        if (!ret)
                return -EINVAL;
        if (!path)
                path = getenv(GH_SOCKET_ENV);
        if (!path || !*path)
                path = GH_DEFAULT_SOCKET;
        if (strlen(path) >= sizeof(sa.sun_path))
                return -ENAMETOOLONG;
        strcpy(sa.sun_path, path);

        _cleanup_close_ int fd = socket(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0);
        if (fd < 0)
                return gh_negerrno();
        if (connect(fd, (struct sockaddr *) &sa, sizeof(sa)) < 0)
                return gh_negerrno();
        gh_client *c = calloc(1, sizeof(*c));
        if (!c || !(c->path = strdup(path))) {
                free(c);
                return -ENOMEM;
        }
        c->fd = TAKE_FD(fd);
        c->timeout_usec = CLIENT_DEFAULT_TIMEOUT;
        gh_vl_reader_init(&c->reader, &(gh_vl_limits) {
                .max_message_size = CLIENT_MAX_MESSAGE, .max_fds = CLIENT_MAX_FDS, .max_depth = CLIENT_MAX_DEPTH});
        gh_vl_writer_init(&c->writer);
        *ret = c;
        return 0;
}

GH_EXPORT gh_client *gh_client_free(gh_client *c) {
        if (!c)
                return NULL;
        gh_vl_reader_done(&c->reader);
        gh_vl_writer_done(&c->writer);
        gh_close(c->fd);
        free(c->path);
        free(c);
        return NULL;
}

GH_EXPORT const char *gh_client_socket_path(const gh_client *c) {
        return c->path;
}

GH_EXPORT void gh_client_set_timeout(gh_client *c, uint64_t usec) {
        c->timeout_usec = usec;
}

GH_EXPORT void gh_client_set_max_message_size(gh_client *c, size_t bytes) {
        c->reader.limits.max_message_size = bytes;
}

/* Waits for |events| on the socket within the timeout. */
static int wait_fd(gh_client *c, short events) {
        int ms = c->timeout_usec ? (int) ((c->timeout_usec + 999) / 1000) : -1;
        struct pollfd p = {.fd = c->fd, .events = events};

        for (;;) {
                int r = poll(&p, 1, ms);
                if (r > 0)
                        return 0;
                if (r == 0)
                        return -ETIMEDOUT;
                if (errno != EINTR)
                        return gh_negerrno();
        }
}

static int send_all(gh_client *c) {
        for (;;) {
                int r = gh_vl_writer_flush(&c->writer, c->fd);
                if (r != 0)
                        return r < 0 ? r : 0;
                r = wait_fd(c, POLLOUT);
                if (r < 0)
                        return r;
        }
}

static int recv_frame(gh_client *c, gh_vl_frame *ret) {
        for (;;) {
                int r = gh_vl_reader_next(&c->reader, ret);
                if (r != 0)
                        return r < 0 ? r : 0;
                r = wait_fd(c, POLLIN);
                if (r < 0)
                        return r;
                ssize_t n = gh_vl_reader_recv(&c->reader, c->fd, READ_CHUNK);
                if (n == 0)
                        return -ECONNRESET;
                if (n < 0 && n != -EAGAIN)
                        return (int) n;
        }
}

static int reply_from_frame(gh_client *c, gh_vl_frame *f, gh_reply **ret) {
        gh_vl_reply vr;
        const char *reason;
        int r = gh_vl_reply_parse(f->text, f->len, c->reader.limits.max_depth, &vr, &reason);

        if (r < 0)
                return r;
        gh_reply *reply = calloc(1, sizeof(*reply));
        if (!reply) {
                gh_vl_reply_done(&vr);
                return -ENOMEM;
        }
        reply->continues = vr.continues;
        reply->error = vr.error ? strdup(vr.error) : NULL;
        reply->parameters = strdup(json_object_to_json_string_ext(vr.parameters, JSON_C_TO_STRING_PLAIN | JSON_C_TO_STRING_NOSLASHESCAPE));
        gh_vl_reply_done(&vr);
        if (!reply->parameters || (vr.error && !reply->error)) {
                gh_reply_free(reply);
                return -ENOMEM;
        }
        reply->n_fds = gh_vl_frame_take_fds(f, &reply->fds);
        *ret = reply;
        return 0;
}

static int parse_parameters(const char *text, json_object **ret) {
        const char *reason;
        json_object *o = NULL;

        if (!text || !*text) {
                *ret = NULL;
                return 0;
        }
        int r = gh_vl_json_parse(text, strlen(text), CLIENT_MAX_DEPTH, &o, &reason);
        if (r < 0)
                return -EINVAL;
        if (!json_object_is_type(o, json_type_object)) {
                json_object_put(o);
                return -EINVAL;
        }
        *ret = o;
        return 0;
}

static int dup_fds(const int *fds, size_t n, int *out) {
        for (size_t i = 0; i < n; i++) {
                out[i] = fcntl(fds[i], F_DUPFD_CLOEXEC, 3);
                if (out[i] < 0) {
                        int r = gh_negerrno();
                        gh_close_many(out, i);
                        return r;
                }
        }
        return 0;
}

static int send_call(gh_client *c, const char *method, const char *parameters_json, unsigned flags,
                     const int *fds, size_t n_fds) {
        json_object *params;
        int copies[GH_VL_MAX_FDS_HARD];
        unsigned vl_flags = (flags & GH_CALL_ONEWAY ? GH_VL_ONEWAY : 0) | (flags & GH_CALL_MORE ? GH_VL_MORE : 0);

        if (!method || !gh_vl_method_name_valid(method) || n_fds > GH_VL_MAX_FDS_HARD ||
            ((flags & GH_CALL_ONEWAY) && (flags & GH_CALL_MORE)))
                return -EINVAL;
        int r = parse_parameters(parameters_json, &params);
        if (r < 0)
                return r;
        json_object *msg = gh_vl_call_new(method, params, vl_flags);
        if (!msg)
                return -ENOMEM;
        r = dup_fds(fds, n_fds, copies);
        if (r >= 0)
                r = gh_vl_writer_queue_json(&c->writer, msg, copies, n_fds);
        json_object_put(msg);
        if (r >= 0)
                r = send_all(c);
        return r;
}

GH_EXPORT int gh_client_call_full(gh_client *c, const char *method, const char *parameters_json,
                                  unsigned flags, const int *fds, size_t n_fds, gh_reply_fn callback,
                                  void *userdata) {
        if (!c)
                return -EINVAL;
        if (c->broken)
                return -ENOTCONN;
        if (!(flags & GH_CALL_ONEWAY) && !callback)
                return -EINVAL;
        int r = send_call(c, method, parameters_json, flags, fds, n_fds);
        if (r == -EINVAL)
                return r; /* nothing was sent */
        for (bool more = r >= 0 && !(flags & GH_CALL_ONEWAY); more;) {
                gh_vl_frame f = {0};
                gh_reply *reply = NULL;
                r = recv_frame(c, &f);
                if (r >= 0)
                        r = reply_from_frame(c, &f, &reply);
                gh_vl_frame_done(&f);
                if (r < 0)
                        break;
                more = reply->continues && !reply->error;
                r = callback(c, reply, userdata);
                gh_reply_free(reply);
                if (r < 0)
                        break;
        }
        if (r < 0)
                c->broken = true; /* later replies would be out of step */
        return r < 0 ? r : 0;
}

static int keep_reply(gh_client *c, gh_reply *reply, void *userdata) {
        gh_reply **slot = userdata;
        gh_reply *copy = malloc(sizeof(*copy));

        if (!copy)
                return -ENOMEM;
        *copy = *reply;
        *reply = (gh_reply) {0}; /* moved */
        gh_reply_free(*slot);
        *slot = copy;
        return 0;
}

GH_EXPORT int gh_client_call(gh_client *c, const char *method, const char *parameters_json, gh_reply **ret) {
        gh_reply *reply = NULL;

        if (!ret)
                return -EINVAL;
        int r = gh_client_call_full(c, method, parameters_json, 0, NULL, 0, keep_reply, &reply);
        if (r < 0) {
                gh_reply_free(reply);
                return r;
        }
        *ret = reply;
        return 0;
}

GH_EXPORT int gh_client_call_more(gh_client *c, const char *method, const char *parameters_json,
                                  gh_reply_fn callback, void *userdata) {
        return gh_client_call_full(c, method, parameters_json, GH_CALL_MORE, NULL, 0, callback, userdata);
}

GH_EXPORT int gh_client_call_oneway(gh_client *c, const char *method, const char *parameters_json) {
        return gh_client_call_full(c, method, parameters_json, GH_CALL_ONEWAY, NULL, 0, NULL, NULL);
}

GH_EXPORT const char *gh_reply_error(const gh_reply *r) {
        return r->error;
}

GH_EXPORT const char *gh_reply_parameters(const gh_reply *r) {
        return r->parameters ? r->parameters : "{}";
}

GH_EXPORT bool gh_reply_continues(const gh_reply *r) {
        return r->continues;
}

GH_EXPORT size_t gh_reply_n_fds(const gh_reply *r) {
        return r->n_fds;
}

GH_EXPORT int gh_reply_take_fd(gh_reply *r, size_t i) {
        if (i >= r->n_fds || r->fds[i] < 0)
                return -EBADF;
        return TAKE_FD(r->fds[i]);
}

GH_EXPORT void gh_reply_free(gh_reply *r) {
        if (!r)
                return;
        for (size_t i = 0; i < r->n_fds; i++)
                gh_close(r->fds[i]);
        free(r->fds);
        free(r->error);
        free(r->parameters);
        free(r);
}

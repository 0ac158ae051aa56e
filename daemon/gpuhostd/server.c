/* The varlink server: accepting, per-connection state machine, dispatch.
 * See server.h for the model and the ownership rules. */
#include <inttypes.h>
#include <string.h>
#include <sys/epoll.h>
#include <sys/ioctl.h>
#include <sys/socket.h>

#include "../common/log.h"
#include "../common/util.h"
#include "../common/varlink.h"
#include "gpuhost/protocol.h"
#include "server.h"

#define READ_CHUNK (64 * 1024)
#define READS_PER_WAKEUP 16   /* fairness: bound work per client per wakeup */
#define ROUNDS_PER_WAKEUP 8
#define ACCEPTS_PER_WAKEUP 32
#define ACCEPT_PAUSE_USEC (1 * USEC_PER_SEC)
#define PEER_GROUPS_MAX 65536

typedef struct gh_conn gh_conn;

struct gh_request {
        gh_conn *conn;
        char *method;
        unsigned flags;
        bool done;
        void (*cancel)(gh_request *req, void *userdata);
        void *cancel_userdata;
        void (*stop)(gh_request *req, void *userdata);
        void *stop_userdata;
        int *fds;       /* passed with the call (GH_METHOD_TAKES_FDS) */
        size_t n_fds;
};

struct gh_conn {
        gh_server *server;
        gh_conn *prev, *next;
        uint64_t id;
        int fd;
        sd_event_source *io, *idle, *kick;
        struct ucred peer;
        gid_t *groups;
        size_t n_groups;
        gh_vl_reader reader;
        gh_vl_writer writer;
        gh_request *current;  /* the call in flight, at most one */
        bool dispatching;     /* inside a method handler */
        bool eof;             /* the peer sends no more */
        bool hup;             /* the peer hung up entirely */
        bool write_dead;      /* replies cannot be delivered */
        bool close_after_flush;
};

struct gh_server {
        sd_event *event;
        int listen_fd;
        sd_event_source *listen_source, *accept_retry;
        gh_server_limits limits;
        const gh_method *methods;
        size_t n_methods;
        gh_server_ops ops;
        void *userdata;
        gh_conn *conns;
        unsigned n_conns;
        uint64_t next_id;
        bool draining;
};

static void conn_run(gh_conn *c);
static bool conn_can_dispatch(const gh_conn *c);

static gh_vl_limits codec_limits(const gh_server_limits *l) {
        return (gh_vl_limits) {
                .max_message_size = l->max_message_size,
                .max_fds = l->max_fds_per_message,
                .max_depth = l->max_json_depth,
        };
}

/* ---- output ---- */

static void conn_send(gh_conn *c, json_object *msg, const int *fds, size_t n_fds) {
        if (!msg || c->write_dead) {
                gh_close_many(fds, n_fds);
                c->write_dead = c->write_dead || !msg;
        } else if (gh_vl_writer_queue_json(&c->writer, msg, fds, n_fds) < 0)
                c->write_dead = true;
        json_object_put(msg);
}

static json_object *params_1(const char *k, json_object *v) {
        json_object *o = json_object_new_object();

        json_object_object_add(o, k, v);
        return o;
}

static void conn_send_error(gh_conn *c, const char *error, json_object *params) {
        conn_send(c, gh_vl_error_new(error, params), NULL, 0);
}

/* ---- requests ---- */

static void request_free(gh_request *req) {
        if (!req)
                return;
        gh_close_many(req->fds, req->n_fds);
        free(req->fds);
        free(req->method);
        free(req);
}

/* Ends the request once its final reply is queued. */
static void request_end(gh_request *req) {
        gh_conn *c = req->conn;

        req->done = true;
        if (c->dispatching)
                return; /* the dispatcher frees it */
        c->current = NULL;
        request_free(req);
        conn_run(c);
}

static int request_send(gh_request *req, json_object *msg, const int *fds, size_t n_fds, bool final) {
        if (req->done) {
                json_object_put(msg);
                gh_close_many(fds, n_fds);
                return -EALREADY;
        }
        if (req->flags & GH_VL_ONEWAY) {
                json_object_put(msg);
                gh_close_many(fds, n_fds);
        } else
                conn_send(req->conn, msg, fds, n_fds);
        if (final)
                request_end(req);
        else if (!req->conn->dispatching)
                conn_run(req->conn);
        return 0;
}

int gh_request_reply_fds(gh_request *req, json_object *parameters, const int *fds, size_t n_fds) {
        return request_send(req, gh_vl_reply_new(parameters, false), fds, n_fds, true);
}

int gh_request_reply(gh_request *req, json_object *parameters) {
        return gh_request_reply_fds(req, parameters, NULL, 0);
}

int gh_request_notify_fds(gh_request *req, json_object *parameters, const int *fds, size_t n_fds) {
        if (!(req->flags & GH_VL_MORE)) {
                json_object_put(parameters);
                gh_close_many(fds, n_fds);
                return -EINVAL;
        }
        return request_send(req, gh_vl_reply_new(parameters, true), fds, n_fds, false);
}

int gh_request_notify(gh_request *req, json_object *parameters) {
        return gh_request_notify_fds(req, parameters, NULL, 0);
}

int gh_request_error(gh_request *req, const char *error, json_object *parameters) {
        return request_send(req, gh_vl_error_new(error, parameters), NULL, 0, true);
}

static json_object *invalid_parameter_error(const char *method, const char *parameter,
                                            const char *reason, const char **ret_name) {
        json_object *p = params_1("parameter", json_object_new_string(parameter));

        if (strncmp(method, GH_VARLINK_SERVICE ".", strlen(GH_VARLINK_SERVICE) + 1) == 0) {
                *ret_name = GH_VARLINK_INVALID_PARAMETER;
                return p;
        }
        json_object_object_add(p, "reason", json_object_new_string(reason));
        *ret_name = GH_ERROR_INVALID_PARAMETER;
        return p;
}

int gh_request_invalid_parameter(gh_request *req, const char *parameter, const char *reason) {
        const char *name;
        json_object *p = invalid_parameter_error(req->method, parameter, reason, &name);

        return gh_request_error(req, name, p);
}

size_t gh_request_fds(const gh_request *req, const int **ret_fds) {
        *ret_fds = req->fds;
        return req->n_fds;
}

bool gh_request_more(const gh_request *req) {
        return req->flags & GH_VL_MORE;
}

const struct ucred *gh_request_peer(const gh_request *req) {
        return &req->conn->peer;
}

bool gh_request_privileged(const gh_request *req) {
        const gh_conn *c = req->conn;
        gid_t admin = c->server->limits.admin_gid;

        if (c->peer.uid == 0 || c->peer.uid == geteuid())
                return true;
        if (admin == (gid_t) -1)
                return false;
        if (c->peer.gid == admin)
                return true;
        for (size_t i = 0; i < c->n_groups; i++)
                if (c->groups[i] == admin)
                        return true;
        return false;
}

void gh_request_set_stop(gh_request *req, void (*stop)(gh_request *req, void *userdata), void *userdata) {
        req->stop = stop;
        req->stop_userdata = userdata;
}

void gh_request_set_cancel(gh_request *req, void (*cancel)(gh_request *req, void *userdata),
                           void *userdata) {
        req->cancel = cancel;
        req->cancel_userdata = userdata;
}

/* ---- dispatch ---- */

static const gh_method *method_lookup(const gh_server *s, const char *name) {
        for (size_t i = 0; i < s->n_methods; i++)
                if (strcmp(s->methods[i].name, name) == 0)
                        return &s->methods[i];
        return NULL;
}

static bool interface_known(const gh_server *s, const char *method) {
        size_t len = (size_t) (strrchr(method, '.') - method);

        for (size_t i = 0; i < s->n_methods; i++)
                if (strncmp(s->methods[i].name, method, len) == 0 && s->methods[i].name[len] == '.')
                        return true;
        return false;
}

static bool type_matches(json_type want, json_object *v) {
        if (want == json_type_double)
                return json_object_is_type(v, json_type_double) || json_object_is_type(v, json_type_int);
        return json_object_is_type(v, want);
}

/* Checks parameters against the method's declaration: no unknown ones,
 * the declared types, the required ones present. null counts as absent. */
static int params_validate(const gh_method *m, json_object *params, const char **ret_name,
                           const char **ret_reason) {
        json_object_object_foreach(params, key, val) {
                const gh_param_spec *spec = NULL;
                for (const gh_param_spec *p = m->params; p && p->name; p++)
                        if (strcmp(p->name, key) == 0)
                                spec = p;
                *ret_name = key;
                if (!spec) {
                        *ret_reason = "unknown parameter";
                        return -EINVAL;
                }
                if (val && !type_matches(spec->type, val)) {
                        *ret_reason = "wrong type";
                        return -EINVAL;
                }
        }
        for (const gh_param_spec *p = m->params; p && p->name; p++) {
                json_object *v;
                if (p->required && (!json_object_object_get_ex(params, p->name, &v) || !v)) {
                        *ret_name = p->name;
                        *ret_reason = "missing required parameter";
                        return -EINVAL;
                }
        }
        return 0;
}

/* Checks everything that decides whether the call reaches its handler;
 * replies with the error and returns NULL if it does not. */
static const gh_method *call_admit(gh_conn *c, const gh_vl_call *call, size_t n_fds) {
        gh_server *s = c->server;
        const gh_method *m = method_lookup(s, call->method);
        const char *name, *reason;

        if (call->flags & GH_VL_UPGRADE)
                conn_send_error(c, GH_ERROR_PROTOCOL, params_1("reason", json_object_new_string("protocol upgrade is not supported")));
        else if (!m && !interface_known(s, call->method)) {
                char iface[256];
                snprintf(iface, sizeof(iface), "%.*s", (int) (strrchr(call->method, '.') - call->method), call->method);
                conn_send_error(c, GH_VARLINK_INTERFACE_NOT_FOUND, params_1("interface", json_object_new_string(iface)));
        } else if (!m)
                conn_send_error(c, GH_VARLINK_METHOD_NOT_FOUND, params_1("method", json_object_new_string(call->method)));
        else if (n_fds > 0 && !(m->flags & GH_METHOD_TAKES_FDS))
                conn_send_error(c, GH_ERROR_PROTOCOL, params_1("reason", json_object_new_string("this method takes no file descriptors")));
        else if (params_validate(m, call->parameters, &name, &reason) < 0) {
                json_object *p = invalid_parameter_error(call->method, name, reason, &name);
                conn_send_error(c, name, p);
        } else if (s->draining && !(m->flags & GH_METHOD_WHILE_STOPPING))
                conn_send_error(c, GH_ERROR_SHUTTING_DOWN, NULL);
        else
                return m;
        return NULL;
}

static void conn_call(gh_conn *c, const gh_method *m, gh_vl_call *call, gh_vl_frame *f) {
        gh_request *req = calloc(1, sizeof(*req));

        if (req)
                req->method = strdup(call->method);
        if (!req || !req->method) {
                request_free(req);
                conn_send_error(c, GH_ERROR_INTERNAL, params_1("reason", json_object_new_string("out of memory")));
                return;
        }
        req->conn = c;
        req->flags = call->flags;
        req->n_fds = gh_vl_frame_take_fds(f, &req->fds);
        c->current = req;
        if ((m->flags & GH_METHOD_PRIVILEGED) && !gh_request_privileged(req)) {
                json_object *p = params_1("method", json_object_new_string(call->method));
                json_object_object_add(p, "reason", json_object_new_string(
                        "only root, the daemon's user and members of the configured admin_group may call this"));
                c->dispatching = true;
                gh_request_error(req, GH_ERROR_PERMISSION_DENIED, p);
        } else {
                c->dispatching = true;
                int r = m->fn(req, call->parameters, c->server->userdata);
                if (r < 0 && !req->done) {
                        gh_log_warning_errno(r, "%s failed: %m", call->method);
                        gh_request_error(req, GH_ERROR_INTERNAL, params_1("reason", json_object_new_string(strerror(-r))));
                }
        }
        c->dispatching = false;
        if (req->done) {
                c->current = NULL;
                request_free(req);
        }
}

static void conn_handle_frame(gh_conn *c, gh_vl_frame *f) {
        gh_vl_call call;
        const char *reason;

        if (gh_vl_call_parse(f->text, f->len, c->server->limits.max_json_depth, &call, &reason) < 0) {
                gh_log_debug("connection %" PRIu64 ": malformed call: %s", c->id, reason);
                conn_send_error(c, GH_ERROR_PROTOCOL, params_1("reason", json_object_new_string(reason)));
                return;
        }
        const gh_method *m = call_admit(c, &call, f->n_fds);
        if (m)
                conn_call(c, m, &call, f);
        gh_vl_call_done(&call);
}

/* A framing error leaves the stream unusable: answer, then close. */
static void conn_stream_error(gh_conn *c, int r) {
        const gh_server_limits *l = &c->server->limits;

        if (r == -EMSGSIZE)
                conn_send_error(c, GH_ERROR_MESSAGE_TOO_LARGE, params_1("limit", json_object_new_int64((int64_t) l->max_message_size)));
        else if (r == -ETOOMANYREFS)
                conn_send_error(c, GH_ERROR_TOO_MANY_FDS, params_1("limit", json_object_new_int64(l->max_fds_per_message)));
        else
                c->write_dead = true;
        gh_log_debug_errno(r, "connection %" PRIu64 ": closing after a stream error: %m", c->id);
        c->close_after_flush = true;
}

static bool conn_output_full(const gh_conn *c) {
        return gh_vl_writer_pending(&c->writer) >= c->server->limits.max_output_buffer;
}

static void conn_dispatch(gh_conn *c) {
        while (!c->current && !c->close_after_flush && !c->write_dead && !conn_output_full(c)) {
                gh_vl_frame f;
                int r = gh_vl_reader_next(&c->reader, &f);
                if (r == 0)
                        break;
                if (r < 0) {
                        conn_stream_error(c, r);
                        break;
                }
                conn_handle_frame(c, &f);
                gh_vl_frame_done(&f);
        }
}

/* ---- connection I/O ---- */

static bool conn_can_read(const gh_conn *c) {
        const gh_server_limits *l = &c->server->limits;

        return !c->eof && !c->close_after_flush && !c->write_dead &&
               gh_vl_reader_frames(&c->reader) < l->max_pending_requests &&
               gh_vl_reader_buffered(&c->reader) <= l->max_message_size;
}

static void conn_touch(gh_conn *c) {
        sd_event_source_set_time_relative(c->idle, c->server->limits.idle_timeout_usec);
        sd_event_source_set_enabled(c->idle, SD_EVENT_ONESHOT);
}

static void conn_read(gh_conn *c) {
        for (int i = 0; i < READS_PER_WAKEUP && conn_can_read(c); i++) {
                ssize_t n = gh_vl_reader_recv(&c->reader, c->fd, READ_CHUNK);
                if (n == -EAGAIN)
                        break;
                if (n == 0 || n == -ECONNRESET) {
                        c->eof = true;
                        break;
                }
                if (n < 0) {
                        conn_stream_error(c, (int) n);
                        break;
                }
                conn_touch(c);
        }
}

static void conn_flush(gh_conn *c) {
        size_t before = gh_vl_writer_pending(&c->writer);

        if (c->write_dead || before == 0)
                return;
        int r = gh_vl_writer_flush(&c->writer, c->fd);
        if (r < 0) {
                gh_log_debug_errno(r, "connection %" PRIu64 ": peer stopped reading: %m", c->id);
                c->write_dead = true;
        } else if (gh_vl_writer_pending(&c->writer) < before)
                conn_touch(c);
}

static void conn_free(gh_conn *c) {
        gh_server *s = c->server;
        gh_request *req = TAKE_PTR(c->current);

        if (req && !req->done && req->cancel)
                req->cancel(req, req->cancel_userdata);
        request_free(req);
        if (c->prev)
                c->prev->next = c->next;
        else
                s->conns = c->next;
        if (c->next)
                c->next->prev = c->prev;
        s->n_conns--;
        sd_event_source_disable_unref(c->io);
        sd_event_source_disable_unref(c->idle);
        sd_event_source_disable_unref(c->kick);
        gh_vl_reader_done(&c->reader);
        gh_vl_writer_done(&c->writer);
        gh_close(c->fd);
        free(c->groups);
        free(c);
}

/* Bytes the client sent that the daemon has not read yet. */
static size_t socket_unread(int fd) {
        int n = 0;

        return ioctl(fd, FIONREAD, &n) < 0 || n < 0 ? 0 : (size_t) n;
}

/* Whether the connection still owes the client something: a call in
 * flight, calls or part of one received, replies not yet sent, or calls
 * waiting in the socket. Draining waits for exactly this. */
static bool conn_has_work(const gh_conn *c) {
        if (c->write_dead)
                return false;
        return c->current || gh_vl_reader_frames(&c->reader) > 0 ||
               gh_vl_writer_pending(&c->writer) > 0 ||
               (!c->eof && !c->close_after_flush &&
                (gh_vl_reader_has_partial(&c->reader) || socket_unread(c->fd) > 0));
}

static bool conn_finished(const gh_conn *c) {
        bool flushed = gh_vl_writer_pending(&c->writer) == 0;
        bool idle = !c->current && gh_vl_reader_frames(&c->reader) == 0;

        if (c->write_dead)
                return true;
        if (c->close_after_flush && flushed)
                return true;
        /* Hung up in both directions: nobody will read a reply; once the
         * calls that can still run (oneway ones) have run, the calls in
         * flight are cancelled. */
        if (c->hup && c->eof && !conn_can_dispatch(c))
                return true;
        if (c->eof && idle && flushed) {
                if (gh_vl_reader_has_partial(&c->reader))
                        gh_log_debug("connection %" PRIu64 ": peer left in the middle of a message", c->id);
                return true;
        }
        return c->server->draining && !conn_has_work(c);
}

static void conn_update_events(gh_conn *c) {
        uint32_t events = 0;

        if (conn_can_read(c))
                events |= EPOLLIN;
        if (gh_vl_writer_pending(&c->writer) > 0)
                events |= EPOLLOUT;
        /* epoll reports a hang-up even with no events asked for: stop
         * listening once nothing more can come from this socket. */
        if (events == 0 && (c->hup || c->eof)) {
                sd_event_source_set_enabled(c->io, SD_EVENT_OFF);
                return;
        }
        sd_event_source_set_io_events(c->io, events);
        sd_event_source_set_enabled(c->io, SD_EVENT_ON);
}

static void server_check_drained(gh_server *s) {
        if (!s->draining || !s->ops.drained)
                return;
        for (gh_conn *c = s->conns; c; c = c->next)
                if (conn_has_work(c))
                        return;
        s->ops.drained(s, s->userdata);
}

/* Calls are buffered and nothing stops serving them. */
static bool conn_can_dispatch(const gh_conn *c) {
        return !c->current && !c->close_after_flush && !c->write_dead && !conn_output_full(c) &&
               gh_vl_reader_frames(&c->reader) > 0;
}

/* The connection state machine: read, dispatch, write, then close or
 * re-arm. Called on I/O, on timer and after an asynchronous reply; it may
 * free the connection. A flush can make room for more dispatching with no
 * further I/O event to come, so it goes round again, a bounded number of
 * times, then continues from a deferred event (fairness between clients). */
static void conn_run(gh_conn *c) {
        gh_server *s = c->server;

        for (int round = 0; round < ROUNDS_PER_WAKEUP; round++) {
                conn_read(c);
                conn_dispatch(c);
                conn_flush(c);
                if (!conn_can_dispatch(c))
                        break;
        }
        if (conn_finished(c))
                conn_free(c);
        else {
                conn_update_events(c);
                if (conn_can_dispatch(c))
                        sd_event_source_set_enabled(c->kick, SD_EVENT_ONESHOT);
        }
        server_check_drained(s);
}

static int on_conn_kick(sd_event_source *es, void *userdata) {
        conn_run(userdata);
        return 0;
}

static int on_conn_io(sd_event_source *es, int fd, uint32_t revents, void *userdata) {
        gh_conn *c = userdata;

        if (revents & (EPOLLHUP | EPOLLERR))
                c->hup = true;
        conn_run(c);
        return 0;
}

static int on_conn_idle(sd_event_source *es, uint64_t usec, void *userdata) {
        gh_conn *c = userdata;

        if (c->current) {
                conn_touch(c); /* a call in flight is not idleness */
                return 0;
        }
        gh_log_debug("connection %" PRIu64 ": idle timeout", c->id);
        gh_server *s = c->server;
        conn_free(c);
        server_check_drained(s);
        return 0;
}

/* ---- accepting ---- */

static int peer_groups(int fd, gid_t **ret, size_t *ret_n) {
        socklen_t len = 64 * sizeof(gid_t);

        for (;;) {
                gid_t *g = malloc(len ? len : sizeof(gid_t));
                if (!g)
                        return -ENOMEM;
                socklen_t got = len;
                if (getsockopt(fd, SOL_SOCKET, SO_PEERGROUPS, g, &got) == 0) {
                        *ret = g;
                        *ret_n = got / sizeof(gid_t);
                        return 0;
                }
                free(g);
                if (errno != ERANGE || got <= len || got > PEER_GROUPS_MAX * sizeof(gid_t))
                        return gh_negerrno();
                len = got;
        }
}

static unsigned connections_of(const gh_server *s, uid_t uid) {
        unsigned n = 0;

        for (const gh_conn *c = s->conns; c; c = c->next)
                n += c->peer.uid == uid;
        return n;
}

/* Answers a connection over a limit with an error, without keeping it. */
static void refuse(int fd, const char *error, unsigned limit) {
        json_object *msg = gh_vl_error_new(error, params_1("limit", json_object_new_int64(limit)));
        size_t len;
        const char *s = json_object_to_json_string_length(msg, JSON_C_TO_STRING_PLAIN, &len);

        if (s)
                (void) !send(fd, s, len + 1, MSG_DONTWAIT | MSG_NOSIGNAL);
        json_object_put(msg);
        gh_close(fd);
}

static int conn_new(gh_server *s, int fd, const struct ucred *peer, gh_conn **ret) {
        gh_conn *c = calloc(1, sizeof(*c));
        gh_vl_limits limits = codec_limits(&s->limits);

        if (!c)
                return -ENOMEM;
        c->server = s;
        c->fd = fd;
        c->peer = *peer;
        c->id = ++s->next_id;
        gh_vl_reader_init(&c->reader, &limits);
        gh_vl_writer_init(&c->writer);
        int r = peer_groups(fd, &c->groups, &c->n_groups);
        if (r >= 0)
                r = sd_event_add_io(s->event, &c->io, fd, EPOLLIN, on_conn_io, c);
        if (r >= 0)
                r = sd_event_add_time_relative(s->event, &c->idle, CLOCK_MONOTONIC,
                                               s->limits.idle_timeout_usec, USEC_PER_SEC / 10,
                                               on_conn_idle, c);
        if (r >= 0)
                r = sd_event_add_defer(s->event, &c->kick, on_conn_kick, c);
        if (r >= 0)
                r = sd_event_source_set_enabled(c->kick, SD_EVENT_OFF);
        if (r < 0) {
                c->fd = -1;
                sd_event_source_disable_unref(c->io);
                sd_event_source_disable_unref(c->idle);
                sd_event_source_disable_unref(c->kick);
                gh_vl_reader_done(&c->reader);
                free(c->groups);
                free(c);
                return r;
        }
        c->next = s->conns;
        if (s->conns)
                s->conns->prev = c;
        s->conns = c;
        s->n_conns++;
        *ret = c;
        return 0;
}

static void server_add_conn(gh_server *s, int fd) {
        struct ucred peer;
        socklen_t len = sizeof(peer);
        gh_conn *c;

        if (getsockopt(fd, SOL_SOCKET, SO_PEERCRED, &peer, &len) < 0) {
                gh_log_warning_errno(errno, "Failed to read peer credentials: %m");
                gh_close(fd);
                return;
        }
        if (s->n_conns >= s->limits.max_connections) {
                gh_log_warning("Refusing connection from uid %u: %u connections open (max_connections)",
                               peer.uid, s->n_conns);
                refuse(fd, GH_ERROR_TOO_MANY_CONNECTIONS, s->limits.max_connections);
                return;
        }
        if (connections_of(s, peer.uid) >= s->limits.max_connections_per_user) {
                gh_log_warning("Refusing connection from uid %u: max_connections_per_user reached", peer.uid);
                refuse(fd, GH_ERROR_TOO_MANY_CONNECTIONS, s->limits.max_connections_per_user);
                return;
        }
        int r = conn_new(s, fd, &peer, &c);
        if (r < 0) {
                gh_log_warning_errno(r, "Failed to set up connection: %m");
                gh_close(fd);
                return;
        }
        gh_log_debug("connection %" PRIu64 ": uid %u pid %d", c->id, peer.uid, peer.pid);
}

static int on_accept_retry(sd_event_source *es, uint64_t usec, void *userdata) {
        gh_server *s = userdata;

        if (!s->draining)
                sd_event_source_set_enabled(s->listen_source, SD_EVENT_ON);
        return 0;
}

/* Out of fds or memory: stop accepting for a moment instead of spinning. */
static void pause_accepting(gh_server *s, int error) {
        gh_log_warning_errno(error, "Cannot accept connections (%m); pausing for a second");
        sd_event_source_set_enabled(s->listen_source, SD_EVENT_OFF);
        sd_event_source_disable_unref(s->accept_retry);
        s->accept_retry = NULL;
        sd_event_add_time_relative(s->event, &s->accept_retry, CLOCK_MONOTONIC, ACCEPT_PAUSE_USEC, 0,
                                   on_accept_retry, s);
}

static int on_accept(sd_event_source *es, int fd, uint32_t revents, void *userdata) {
        gh_server *s = userdata;

        for (int i = 0; i < ACCEPTS_PER_WAKEUP; i++) {
                int cfd = accept4(fd, NULL, NULL, SOCK_CLOEXEC | SOCK_NONBLOCK);
                if (cfd >= 0) {
                        server_add_conn(s, cfd);
                        continue;
                }
                if (errno == EAGAIN || errno == EWOULDBLOCK)
                        break;
                if (errno == EMFILE || errno == ENFILE || errno == ENOBUFS || errno == ENOMEM) {
                        pause_accepting(s, errno);
                        break;
                }
                if (errno != EINTR && errno != ECONNABORTED && errno != EPROTO)
                        gh_log_warning_errno(errno, "accept() failed: %m");
        }
        return 0;
}

/* ---- server ---- */

int gh_server_new(sd_event *event, int listen_fd, const gh_server_limits *limits,
                  const gh_method *methods, size_t n_methods, const gh_server_ops *ops,
                  void *userdata, gh_server **ret) {
        gh_server *s = calloc(1, sizeof(*s));

        if (!s)
                return -ENOMEM;
        *s = (gh_server) {
                .event = sd_event_ref(event), .listen_fd = listen_fd, .limits = *limits,
                .methods = methods, .n_methods = n_methods, .ops = *ops, .userdata = userdata,
        };
        int r = sd_event_add_io(event, &s->listen_source, listen_fd, EPOLLIN, on_accept, s);
        if (r < 0) {
                sd_event_unref(s->event);
                free(s);
                return r;
        }
        *ret = s;
        return 0;
}

gh_server *gh_server_free(gh_server *s) {
        if (!s)
                return NULL;
        s->ops.drained = NULL;
        gh_server_close_all(s);
        sd_event_source_disable_unref(s->listen_source);
        sd_event_source_disable_unref(s->accept_retry);
        sd_event_unref(s->event);
        free(s);
        return NULL;
}

void gh_server_set_limits(gh_server *s, const gh_server_limits *limits) {
        gh_vl_limits codec = codec_limits(limits);

        s->limits = *limits;
        for (gh_conn *c = s->conns; c; c = c->next)
                c->reader.limits = codec;
}

unsigned gh_server_connections(const gh_server *s) {
        return s->n_conns;
}

void gh_server_drain(gh_server *s) {
        if (s->draining)
                return;
        s->draining = true;
        sd_event_source_set_enabled(s->listen_source, SD_EVENT_OFF);
        sd_event_source_set_enabled(s->accept_retry, SD_EVENT_OFF);
        /* Calls that last until the client lets go end now. Ending one runs
         * its connection, which may free it: walk with the next saved. */
        for (gh_conn *c = s->conns, *next; c; c = next) {
                next = c->next;
                gh_request *req = c->current;
                if (req && req->stop) {
                        void (*stop)(gh_request *, void *) = TAKE_PTR(req->stop);
                        stop(req, req->stop_userdata);
                }
        }
        for (gh_conn *c = s->conns, *next; c; c = next) {
                next = c->next;
                if (conn_finished(c))
                        conn_free(c);
                else
                        conn_update_events(c);
        }
        server_check_drained(s);
}

void gh_server_close_all(gh_server *s) {
        while (s->conns)
                conn_free(s->conns);
}

json_object *gh_server_interfaces(const gh_server *s) {
        json_object *a = json_object_new_array();

        for (size_t i = 0; i < s->n_methods; i++) {
                const char *name = s->methods[i].name;
                size_t len = (size_t) (strrchr(name, '.') - name);
                bool seen = false;
                for (size_t j = 0; j < json_object_array_length(a); j++) {
                        const char *have = json_object_get_string(json_object_array_get_idx(a, j));
                        seen = seen || (strlen(have) == len && strncmp(have, name, len) == 0);
                }
                if (!seen)
                        json_object_array_add(a, json_object_new_string_len(name, (int) len));
        }
        return a;
}

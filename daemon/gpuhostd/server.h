/* The varlink server of gpuhostd, on the daemon's sd-event loop.
 *
 * It accepts connections on the listening socket, reads calls with the
 * codec's limits, validates each call against its method's declared
 * parameters, dispatches it, and writes replies in call order. A connection
 * runs one call at a time (varlink replies are ordered); further calls wait
 * in its buffer, at most max_pending_requests of them, after which the
 * server stops reading from that client (backpressure, nothing dropped). A
 * client that does not read its replies is stopped the same way once
 * max_output_buffer bytes are queued. Idle connections are closed after
 * idle_timeout_sec. Everything here is non-blocking and single-threaded.
 *
 * Ownership: the server owns its connections; a gh_request belongs to its
 * connection and stays valid until a final reply (or error) is sent or the
 * connection goes away, whichever comes first; in the latter case the
 * request's cancel callback runs. */
#pragma once

#include <json-c/json.h>
#include <stdbool.h>
#include <sys/socket.h>
#include <systemd/sd-event.h>

typedef struct gh_server gh_server;
typedef struct gh_request gh_request;

typedef struct gh_server_limits {
        unsigned max_connections;
        unsigned max_connections_per_user;
        size_t max_message_size;
        unsigned max_pending_requests;
        unsigned max_fds_per_message;
        unsigned max_json_depth;
        uint64_t idle_timeout_usec;
        size_t max_output_buffer;
        gid_t admin_gid; /* (gid_t) -1: none */
} gh_server_limits;

/* A declared parameter of a method: its JSON type and whether required. */
typedef struct gh_param_spec {
        const char *name;
        json_type type;
        bool required;
} gh_param_spec;

/* Handles a call. It replies now or later with gh_request_reply()/_error();
 * returning a negative errno makes the server reply InternalError. */
typedef int (*gh_method_fn)(gh_request *req, json_object *parameters, void *userdata);

enum {
        GH_METHOD_PRIVILEGED = 1 << 0, /* root, the daemon's user, admin_group */
        GH_METHOD_WHILE_STOPPING = 1 << 1, /* still served while draining */
        GH_METHOD_TAKES_FDS = 1 << 2, /* the call may carry file descriptors */
};

typedef struct gh_method {
        const char *name; /* "io.gpuhost.Ping" */
        gh_method_fn fn;
        unsigned flags;
        const gh_param_spec *params; /* NULL-name terminated; NULL: none */
} gh_method;

typedef struct gh_server_ops {
        /* The server has no connection left with work in flight (drain). */
        void (*drained)(gh_server *s, void *userdata);
} gh_server_ops;

int gh_server_new(sd_event *event, int listen_fd, const gh_server_limits *limits,
                  const gh_method *methods, size_t n_methods, const gh_server_ops *ops,
                  void *userdata, gh_server **ret);
gh_server *gh_server_free(gh_server *s);
void gh_server_set_limits(gh_server *s, const gh_server_limits *limits);
unsigned gh_server_connections(const gh_server *s);
/* Stops accepting, closes idle connections, refuses new calls with
 * ShuttingDown; ops->drained runs once no call is in flight. */
void gh_server_drain(gh_server *s);
/* Closes every connection now, cancelling calls in flight. */
void gh_server_close_all(gh_server *s);
/* Names the interfaces the server's methods belong to (GetInfo). */
json_object *gh_server_interfaces(const gh_server *s);

/* Request API for method handlers. Parameters passed in are owned (taken)
 * by these functions, even on failure. Final replies end the request. */
int gh_request_reply(gh_request *req, json_object *parameters);
int gh_request_reply_fds(gh_request *req, json_object *parameters, const int *fds, size_t n_fds);
/* A "continues: true" reply; only valid when gh_request_more() is true. */
int gh_request_notify(gh_request *req, json_object *parameters);
int gh_request_notify_fds(gh_request *req, json_object *parameters, const int *fds, size_t n_fds);
int gh_request_error(gh_request *req, const char *error, json_object *parameters);
int gh_request_invalid_parameter(gh_request *req, const char *parameter, const char *reason);
bool gh_request_more(const gh_request *req);
/* The fds passed with the call, owned by the request (closed when it ends;
 * duplicate what must outlive it). */
size_t gh_request_fds(const gh_request *req, const int **ret_fds);
const struct ucred *gh_request_peer(const gh_request *req);
bool gh_request_privileged(const gh_request *req);
/* Called when the server starts draining, for a call that would otherwise
 * keep it waiting (an attachment that lasts until the client lets go): the
 * callback ends the call with a final reply. */
void gh_request_set_stop(gh_request *req, void (*stop)(gh_request *req, void *userdata), void *userdata);
/* Called if the connection goes away before the final reply; the request
 * is freed right after. */
void gh_request_set_cancel(gh_request *req, void (*cancel)(gh_request *req, void *userdata),
                           void *userdata);

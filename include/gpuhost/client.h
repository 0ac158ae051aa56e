/* libgpuhost: the client library for gpuhostd.
 *
 * Connects to the daemon's Unix socket and makes varlink calls: one reply
 * (gh_client_call), streamed replies to a callback (gh_client_call_more),
 * or no reply (gh_client_call_oneway). Parameters and replies are JSON
 * text, so this header needs nothing but the C library. File descriptors
 * that arrive with a reply (outputs, for example) are handed over with
 * gh_reply_take_fd().
 *
 * Conventions: functions return >= 0 on success and a negative errno on
 * failure; a varlink error from the daemon is a successful call whose reply
 * carries an error name (gh_reply_error()). Transport failures are errors:
 * -ECONNREFUSED/-ENOENT (no daemon), -ECONNRESET (the daemon went away),
 * -ETIMEDOUT, -EBADMSG (a malformed reply), -EINVAL (bad arguments, such as
 * parameters that are not a JSON object). A gh_client is not thread-safe;
 * use one per thread. */
#ifndef GPUHOST_CLIENT_H
#define GPUHOST_CLIENT_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "gpuhost/protocol.h"

#ifdef __cplusplus
extern "C" {
#endif

typedef struct gh_client gh_client;
typedef struct gh_reply gh_reply;

/* |path| NULL means $GPUHOST_SOCKET, else GH_DEFAULT_SOCKET. */
int gh_client_connect(const char *path, gh_client **ret);
/* Closes the connection; accepts NULL; returns NULL. */
gh_client *gh_client_free(gh_client *c);
const char *gh_client_socket_path(const gh_client *c);
/* The longest wait for each reply, in microseconds; 0 waits forever.
 * The default is 30 seconds. */
void gh_client_set_timeout(gh_client *c, uint64_t usec);
/* The largest reply accepted (default 64 MiB). */
void gh_client_set_max_message_size(gh_client *c, size_t bytes);

/* Calls |method| ("io.gpuhost.Ping") with |parameters_json| (a JSON object
 * or NULL for none) and waits for the reply, which the caller frees. */
int gh_client_call(gh_client *c, const char *method, const char *parameters_json, gh_reply **ret);

/* Called for each reply of a streamed call. |reply| is freed after the
 * callback returns; take fds out of it first. Return 0 to go on, or a
 * negative errno to stop waiting (the call then returns that value). */
typedef int (*gh_reply_fn)(gh_client *c, gh_reply *reply, void *userdata);

/* Calls with "more": the daemon may answer several times; the callback
 * sees every reply, the last one has gh_reply_continues() false. */
int gh_client_call_more(gh_client *c, const char *method, const char *parameters_json,
                        gh_reply_fn callback, void *userdata);
/* Calls with "oneway": the daemon sends no reply. */
int gh_client_call_oneway(gh_client *c, const char *method, const char *parameters_json);

enum {
        GH_CALL_ONEWAY = 1 << 0,
        GH_CALL_MORE = 1 << 1,
};
/* The general form: |flags| of GH_CALL_*, and fds to pass with the call
 * (duplicated; the caller keeps its own). |callback| may be NULL for oneway. */
int gh_client_call_full(gh_client *c, const char *method, const char *parameters_json,
                        unsigned flags, const int *fds, size_t n_fds, gh_reply_fn callback,
                        void *userdata);

/* The error name ("io.gpuhost.InvalidParameter"), or NULL for success. */
const char *gh_reply_error(const gh_reply *r);
/* The reply's parameters as a JSON object text; never NULL. */
const char *gh_reply_parameters(const gh_reply *r);
bool gh_reply_continues(const gh_reply *r);
size_t gh_reply_n_fds(const gh_reply *r);
/* Hands fd |i| to the caller (who must close it); -EBADF if taken. */
int gh_reply_take_fd(gh_reply *r, size_t i);
/* Frees the reply and closes fds not taken; accepts NULL. */
void gh_reply_free(gh_reply *r);

#ifdef __cplusplus
}
#endif

#endif

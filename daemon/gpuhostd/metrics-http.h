/* The optional HTTP endpoint for Prometheus: GET /metrics on a loopback
 * address ([metrics] listen), served by libmicrohttpd on the daemon's
 * sd-event loop.
 *
 * No thread: the listening socket is ours (CLOEXEC, non-blocking); each
 * accepted connection (accept4 with SOCK_CLOEXEC) is handed to
 * libmicrohttpd, whose epoll fd is an IO source of the loop, and a timer
 * follows MHD_get_timeout() for its connection timeouts. Limits: at most
 * GH_METRICS_HTTP_CONNECTIONS connections (more are closed at once),
 * GH_METRICS_HTTP_TIMEOUT_SEC of inactivity per connection, request headers
 * within libmicrohttpd's per-connection memory limit. GET and HEAD of
 * /metrics get the rendered registry (text/plain; version=0.0.4); other
 * paths 404, other methods 405. */
#pragma once

#include <sys/socket.h>
#include <systemd/sd-event.h>

#include "metrics.h"

#define GH_METRICS_HTTP_CONNECTIONS 16
#define GH_METRICS_HTTP_TIMEOUT_SEC 10
#define GH_METRICS_CONTENT_TYPE "text/plain; version=0.0.4; charset=utf-8"

typedef struct gh_metrics_http gh_metrics_http;

/* Parses a listen address: "127.0.0.1:PORT" (any 127.0.0.0/8 address),
 * "[::1]:PORT" or "localhost:PORT" (127.0.0.1); PORT 1..65535. Any other
 * host is refused: the endpoint has no authentication, so it is for the
 * machine itself (a local Prometheus or agent). Returns 0, or -EINVAL with
 * *ret_reason (static text) set. Does no I/O (no name lookup). */
int gh_metrics_listen_parse(const char *text, struct sockaddr_storage *ret_addr, socklen_t *ret_len,
                            const char **ret_reason);

/* Listens on |listen| (as gh_metrics_listen_parse() takes it) and serves
 * |metrics| until freed. Returns 0 or a negative errno (-EADDRINUSE, ...). */
int gh_metrics_http_new(sd_event *event, const char *listen, gh_metrics *metrics, gh_metrics_http **ret);
gh_metrics_http *gh_metrics_http_free(gh_metrics_http *h);
/* The address actually bound, "127.0.0.1:9464" (for logs). */
const char *gh_metrics_http_address(const gh_metrics_http *h);

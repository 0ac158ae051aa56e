/* The /metrics HTTP endpoint: libmicrohttpd driven by sd-event. See
 * metrics-http.h. */
#include <arpa/inet.h>
#include <errno.h>
#include <microhttpd.h>
#include <netinet/in.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "../common/log.h"
#include "../common/util.h"
#include "metrics-http.h"

/* Connections accepted per wake-up, so a flood cannot hold the loop. */
#define ACCEPT_BATCH 16
#define LISTEN_BACKLOG 16

struct gh_metrics_http {
        sd_event *event;
        gh_metrics *metrics;
        int listen_fd;
        struct MHD_Daemon *mhd;
        sd_event_source *accept_source, *mhd_source, *timer_source;
        char address[64];
};

/* ---- the address ---- */

static const char loopback_only[] = "loopback only: use 127.0.0.1:PORT, [::1]:PORT or localhost:PORT";

static int parse_port(const char *s, uint16_t *ret) {
        unsigned v = 0;

        if (!*s || strlen(s) > 5)
                return -EINVAL;
        for (const char *p = s; *p; p++) {
                if (*p < '0' || *p > '9')
                        return -EINVAL;
                v = v * 10 + (unsigned) (*p - '0');
        }
        if (v < 1 || v > 65535)
                return -EINVAL;
        *ret = (uint16_t) v;
        return 0;
}

/* Splits "HOST:PORT" or "[HOST]:PORT" into |host| and the port's text. */
static int split_host_port(const char *text, char *host, size_t size, const char **ret_port) {
        const char *colon, *start = text, *end;

        if (text[0] == '[') {
                end = strchr(text, ']');
                if (!end || end[1] != ':')
                        return -EINVAL;
                start = text + 1;
                colon = end + 1;
        } else {
                colon = strrchr(text, ':');
                if (!colon || memchr(text, ':', (size_t) (colon - text)))
                        return -EINVAL; /* none, or an IPv6 address without brackets */
                end = colon;
        }
        if (end == start || (size_t) (end - start) >= size)
                return -EINVAL;
        memcpy(host, start, (size_t) (end - start));
        host[end - start] = 0;
        *ret_port = colon + 1;
        return 0;
}

int gh_metrics_listen_parse(const char *text, struct sockaddr_storage *ret_addr, socklen_t *ret_len,
                            const char **ret_reason) {
        struct sockaddr_storage ss = {0};
        char host[64];
        const char *port_text;
        uint16_t port;

        if (split_host_port(text, host, sizeof(host), &port_text) < 0) {
                *ret_reason = "not HOST:PORT (for example 127.0.0.1:9464 or [::1]:9464)";
                return -EINVAL;
        }
        if (parse_port(port_text, &port) < 0) {
                *ret_reason = "invalid port (1..65535)";
                return -EINVAL;
        }
        struct sockaddr_in *in = (struct sockaddr_in *) &ss;
        struct sockaddr_in6 *in6 = (struct sockaddr_in6 *) &ss;
        bool bracketed = text[0] == '[';
        if (!bracketed && strcmp(host, "localhost") == 0)
                in->sin_addr.s_addr = htonl(INADDR_LOOPBACK);
        else if (!bracketed && inet_pton(AF_INET, host, &in->sin_addr) == 1) {
                if ((ntohl(in->sin_addr.s_addr) >> 24) != 127) {
                        *ret_reason = loopback_only;
                        return -EINVAL;
                }
        } else if (bracketed && inet_pton(AF_INET6, host, &in6->sin6_addr) == 1) {
                if (!IN6_IS_ADDR_LOOPBACK(&in6->sin6_addr)) {
                        *ret_reason = loopback_only;
                        return -EINVAL;
                }
                in6->sin6_family = AF_INET6;
                in6->sin6_port = htons(port);
                *ret_addr = ss;
                *ret_len = sizeof(struct sockaddr_in6);
                return 0;
        } else {
                *ret_reason = loopback_only; /* a host name, or an address in the wrong form */
                return -EINVAL;
        }
        in->sin_family = AF_INET;
        in->sin_port = htons(port);
        *ret_addr = ss;
        *ret_len = sizeof(struct sockaddr_in);
        return 0;
}

static void format_address(const struct sockaddr_storage *ss, char *buf, size_t size) {
        char host[INET6_ADDRSTRLEN] = "?";

        if (ss->ss_family == AF_INET6) {
                const struct sockaddr_in6 *in6 = (const struct sockaddr_in6 *) ss;
                inet_ntop(AF_INET6, &in6->sin6_addr, host, sizeof(host));
                snprintf(buf, size, "[%s]:%u", host, ntohs(in6->sin6_port));
        } else {
                const struct sockaddr_in *in = (const struct sockaddr_in *) ss;
                inet_ntop(AF_INET, &in->sin_addr, host, sizeof(host));
                snprintf(buf, size, "%s:%u", host, ntohs(in->sin_port));
        }
}

static int listen_on(const struct sockaddr_storage *ss, socklen_t len) {
        int one = 1;
        _cleanup_close_ int fd = socket(ss->ss_family, SOCK_STREAM | SOCK_CLOEXEC | SOCK_NONBLOCK, 0);

        if (fd < 0)
                return gh_negerrno();
        if (setsockopt(fd, SOL_SOCKET, SO_REUSEADDR, &one, sizeof(one)) < 0)
                return gh_negerrno();
        if (ss->ss_family == AF_INET6 && setsockopt(fd, IPPROTO_IPV6, IPV6_V6ONLY, &one, sizeof(one)) < 0)
                return gh_negerrno();
        if (bind(fd, (const struct sockaddr *) ss, len) < 0 || listen(fd, LISTEN_BACKLOG) < 0)
                return gh_negerrno();
        return TAKE_FD(fd);
}

/* ---- requests ---- */

static enum MHD_Result queue_text(struct MHD_Connection *c, unsigned status, const char *text, bool allow) {
        struct MHD_Response *resp =
                MHD_create_response_from_buffer(strlen(text), (void *) text, MHD_RESPMEM_PERSISTENT);

        if (!resp)
                return MHD_NO;
        MHD_add_response_header(resp, MHD_HTTP_HEADER_CONTENT_TYPE, "text/plain; charset=utf-8");
        if (allow)
                MHD_add_response_header(resp, MHD_HTTP_HEADER_ALLOW, "GET, HEAD");
        enum MHD_Result r = MHD_queue_response(c, status, resp);
        MHD_destroy_response(resp);
        return r;
}

static enum MHD_Result queue_metrics(gh_metrics_http *h, struct MHD_Connection *c) {
        char *text = NULL;
        size_t len = 0;

        if (gh_metrics_render(h->metrics, &text, &len) < 0)
                return queue_text(c, MHD_HTTP_INTERNAL_SERVER_ERROR, "cannot render the metrics\n", false);
        struct MHD_Response *resp = MHD_create_response_from_buffer(len, text, MHD_RESPMEM_MUST_FREE);
        if (!resp) {
                free(text);
                return MHD_NO;
        }
        MHD_add_response_header(resp, MHD_HTTP_HEADER_CONTENT_TYPE, GH_METRICS_CONTENT_TYPE);
        enum MHD_Result r = MHD_queue_response(c, MHD_HTTP_OK, resp);
        MHD_destroy_response(resp);
        return r;
}

static enum MHD_Result on_request(void *cls, struct MHD_Connection *c, const char *url, const char *method,
                                  const char *version, const char *upload_data, size_t *upload_data_size,
                                  void **con_cls) {
        if (strcmp(method, MHD_HTTP_METHOD_GET) != 0 && strcmp(method, MHD_HTTP_METHOD_HEAD) != 0)
                return queue_text(c, MHD_HTTP_METHOD_NOT_ALLOWED, "only GET and HEAD\n", true);
        if (strcmp(url, "/metrics") != 0)
                return queue_text(c, MHD_HTTP_NOT_FOUND, "not found: the metrics are at /metrics\n", false);
        return queue_metrics(cls, c);
}

_printf_(2, 0) static void on_mhd_log(void *cls, const char *fmt, va_list ap) {
        char msg[256];

        vsnprintf(msg, sizeof(msg), fmt, ap);
        msg[strcspn(msg, "\n")] = 0;
        gh_log_debug("metrics endpoint: %s", msg);
}

/* ---- event loop glue ---- */

/* Lets libmicrohttpd do what is ready, then sets the timer to when it
 * wants to run next (a connection's timeout), if ever. */
static void process(gh_metrics_http *h) {
        MHD_UNSIGNED_LONG_LONG ms;

        MHD_run(h->mhd);
        if (MHD_get_timeout(h->mhd, &ms) != MHD_YES) {
                sd_event_source_set_enabled(h->timer_source, SD_EVENT_OFF);
                return;
        }
        uint64_t delay = ms > UINT64_MAX / USEC_PER_MSEC ? UINT64_MAX / 2 : ms * USEC_PER_MSEC;
        sd_event_source_set_time(h->timer_source, gh_now_usec(CLOCK_MONOTONIC) + delay);
        sd_event_source_set_enabled(h->timer_source, SD_EVENT_ONESHOT);
}

static int on_accept(sd_event_source *es, int fd, uint32_t revents, void *userdata) {
        gh_metrics_http *h = userdata;

        for (int i = 0; i < ACCEPT_BATCH; i++) {
                struct sockaddr_storage peer;
                socklen_t len = sizeof(peer);
                int cfd = accept4(fd, (struct sockaddr *) &peer, &len, SOCK_CLOEXEC | SOCK_NONBLOCK);
                if (cfd < 0) {
                        if (errno != EAGAIN && errno != EINTR && errno != ECONNABORTED)
                                gh_log_debug_errno(errno, "metrics endpoint: accept failed: %m");
                        break;
                }
                /* Past the connection limit (or out of memory) it closes
                 * the socket itself. */
                MHD_add_connection(h->mhd, cfd, (struct sockaddr *) &peer, len);
        }
        process(h);
        return 0;
}

static int on_mhd_ready(sd_event_source *es, int fd, uint32_t revents, void *userdata) {
        process(userdata);
        return 0;
}

static int on_timer(sd_event_source *es, uint64_t usec, void *userdata) {
        process(userdata);
        return 0;
}

static int start_mhd(gh_metrics_http *h) {
        h->mhd = MHD_start_daemon(
                MHD_USE_EPOLL | MHD_USE_NO_LISTEN_SOCKET | MHD_USE_ERROR_LOG, 0, NULL, NULL, on_request, h,
                MHD_OPTION_CONNECTION_LIMIT, (unsigned) GH_METRICS_HTTP_CONNECTIONS,
                MHD_OPTION_CONNECTION_TIMEOUT, (unsigned) GH_METRICS_HTTP_TIMEOUT_SEC,
                MHD_OPTION_EXTERNAL_LOGGER, on_mhd_log, h,
                MHD_OPTION_SIGPIPE_HANDLED_BY_APP, 1,
                MHD_OPTION_END);
        if (!h->mhd)
                return errno > 0 ? -errno : -EIO;
        const union MHD_DaemonInfo *info = MHD_get_daemon_info(h->mhd, MHD_DAEMON_INFO_EPOLL_FD);
        if (!info || info->epoll_fd < 0)
                return -EIO;
        return sd_event_add_io(h->event, &h->mhd_source, info->epoll_fd, EPOLLIN, on_mhd_ready, h);
}

int gh_metrics_http_new(sd_event *event, const char *listen, gh_metrics *metrics, gh_metrics_http **ret) {
        struct sockaddr_storage ss;
        socklen_t len;
        const char *reason;
        int r;

        if (gh_metrics_listen_parse(listen, &ss, &len, &reason) < 0)
                return -EINVAL;
        gh_metrics_http *h = calloc(1, sizeof(*h));
        if (!h)
                return -ENOMEM;
        h->event = sd_event_ref(event);
        h->metrics = metrics;
        h->listen_fd = listen_on(&ss, len);
        format_address(&ss, h->address, sizeof(h->address));
        r = h->listen_fd;
        if (r >= 0)
                r = start_mhd(h);
        if (r >= 0)
                r = sd_event_add_io(event, &h->accept_source, h->listen_fd, EPOLLIN, on_accept, h);
        if (r >= 0)
                r = sd_event_add_time(event, &h->timer_source, CLOCK_MONOTONIC, 0, USEC_PER_MSEC, on_timer, h);
        if (r >= 0)
                r = sd_event_source_set_enabled(h->timer_source, SD_EVENT_OFF);
        if (r < 0) {
                gh_metrics_http_free(h);
                return r;
        }
        *ret = h;
        return 0;
}

gh_metrics_http *gh_metrics_http_free(gh_metrics_http *h) {
        if (!h)
                return NULL;
        sd_event_source_disable_unref(h->accept_source);
        sd_event_source_disable_unref(h->mhd_source);
        sd_event_source_disable_unref(h->timer_source);
        if (h->mhd)
                MHD_stop_daemon(h->mhd); /* closes its connections */
        if (h->listen_fd >= 0)
                gh_close(h->listen_fd);
        sd_event_unref(h->event);
        free(h);
        return NULL;
}

const char *gh_metrics_http_address(const gh_metrics_http *h) {
        return h->address;
}

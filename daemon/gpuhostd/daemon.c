/* gpuhostd top level: signals, sd_notify, reload in a helper thread, and the
 * graceful stop. See daemon.h. */
#include <inttypes.h>
#include <signal.h>
#include <string.h>
#include <sys/eventfd.h>
#include <systemd/sd-daemon.h>

#include "../common/log.h"
#include "../common/util.h"
#include "daemon.h"
#include "metrics-gpuhost.h"
#include "tasks.h"
#include "gh-build.h"
#include "gpuhost/protocol.h"

#define STATUS_INTERVAL_USEC (5 * USEC_PER_SEC)

struct gh_reload_waiter {
        gh_daemon *daemon;
        gh_request *req;
        gh_reload_waiter *next;
};

const char *gh_daemon_state_to_string(gh_daemon_state s) {
        static const char *const names[] = {
                [GH_STATE_STARTING] = "starting",
                [GH_STATE_RUNNING] = "running",
                [GH_STATE_RELOADING] = "reloading",
                [GH_STATE_STOPPING] = "stopping",
        };
        return names[s];
}

static gh_server_limits limits_from_config(const gh_config *c) {
        return (gh_server_limits) {
                .max_connections = c->max_connections,
                .max_connections_per_user = c->max_connections_per_user,
                .max_message_size = c->max_message_size,
                .max_pending_requests = c->max_pending_requests,
                .max_fds_per_message = c->max_fds_per_message,
                .max_json_depth = c->max_json_depth,
                .idle_timeout_usec = c->idle_timeout_usec,
                .max_output_buffer = c->max_output_buffer,
                .admin_gid = c->admin_gid,
        };
}

/* The registry of the daemon running in this process (gh_daemon_metrics()). */
static gh_metrics *daemon_metrics;

gh_metrics *gh_daemon_metrics(void) {
        return daemon_metrics;
}

static void apply_log_level(const gh_daemon *d) {
        gh_log_set_max_level(d->forced_log_level >= 0 ? d->forced_log_level : d->config->log_level);
}

void gh_daemon_update_status(gh_daemon *d) {
        char *status = NULL;
        unsigned n = d->server ? gh_server_connections(d->server) : 0, queued = 0, running = 0;

        for (unsigned i = 0; d->workers && i < d->workers->n_workers; i++) {
                queued += d->workers->workers[i].queued;
                running += d->workers->workers[i].n_bound;
        }
        if (asprintf(&status, "%s on %s, %u connection%s; %u job%s running, %u queued", gh_daemon_state_to_string(d->state),
                     d->config->socket_path, n, n == 1 ? "" : "s", running, running == 1 ? "" : "s", queued) < 0)
                return;
        if (gh_streq(status, d->last_status)) {
                free(status);
                return;
        }
        sd_notifyf(false, "STATUS=%s", status);
        free(d->last_status);
        d->last_status = status;
}

static int on_status_timer(sd_event_source *es, uint64_t usec, void *userdata) {
        gh_daemon_update_status(userdata);
        sd_event_source_set_time_relative(es, STATUS_INTERVAL_USEC);
        return 0;
}

/* ---- metrics ---- */

static int metrics_http_start(gh_daemon *d, const char *listen) {
        int r = gh_metrics_http_new(d->event, listen, d->metrics, &d->metrics_http);

        if (r < 0)
                return gh_log_error_errno(r, "[metrics] listen: cannot serve on %s: %m", listen);
        gh_log_info("Metrics at http://%s/metrics", gh_metrics_http_address(d->metrics_http));
        return 0;
}

static int metrics_start(gh_daemon *d) {
        int r = gh_metrics_new(&d->metrics);

        if (r >= 0)
                r = gh_metrics_declare_gpuhost(d->metrics);
        if (r < 0)
                return gh_log_error_errno(r, "Failed to set up the metrics: %m");
        daemon_metrics = d->metrics;
        return d->config->metrics_listen ? metrics_http_start(d, d->config->metrics_listen) : 0;
}

/* A reload that changes [metrics] listen moves the endpoint; if the new
 * address cannot be had, the old one is taken again. */
static void metrics_apply_listen(gh_daemon *d, const char *old, const char *next) {
        if (gh_streq(old ? old : "", next ? next : ""))
                return;
        d->metrics_http = gh_metrics_http_free(d->metrics_http);
        if (!next)
                gh_log_info("Metrics endpoint stopped");
        else if (metrics_http_start(d, next) < 0 && old && metrics_http_start(d, old) >= 0)
                gh_log_warning("[metrics] listen: keeping %s", old);
}

/* ---- reload ---- */

static void *reload_thread(void *userdata) {
        gh_daemon *d = userdata;
        uint64_t one = 1;

        d->reload_result = NULL;
        memset(&d->reload_error, 0, sizeof(d->reload_error));
        d->reload_catalog = NULL;
        d->reload_r = gh_config_load(d->config_override, d->config_main, d->config_dropins,
                                     &d->reload_result, &d->reload_error);
        if (d->reload_r >= 0) {
                gh_devices_config dc;
                d->reload_r = gh_config_devices(d->reload_result, &dc, &d->reload_error);
        }
        if (d->reload_r >= 0) {
                /* The models directory is read here too, off the loop. */
                char err[256] = "";
                d->reload_r = gh_catalog_build(d->reload_result, &d->reload_catalog, err, sizeof(err));
                if (d->reload_r < 0)
                        snprintf(d->reload_error.message, sizeof(d->reload_error.message), "%s", err);
        }
        if (d->reload_r < 0)
                d->reload_result = gh_config_free(d->reload_result);
        (void) !write(d->reload_efd, &one, sizeof(one));
        return NULL;
}

static void waiter_cancel(gh_request *req, void *userdata) {
        gh_reload_waiter *w = userdata;

        w->req = NULL; /* the caller went away; the reload goes on */
}

static void reload_start(gh_daemon *d) {
        int r;

        d->state = GH_STATE_RELOADING;
        sd_notifyf(false, "RELOADING=1\nMONOTONIC_USEC=%" PRIu64, gh_now_usec(CLOCK_MONOTONIC));
        gh_daemon_update_status(d);
        d->reload_running = true;
        r = pthread_create(&d->reload_thread, NULL, reload_thread, d);
        if (r != 0) {
                d->reload_running = false;
                d->reload_r = -r;
                snprintf(d->reload_error.message, sizeof(d->reload_error.message),
                         "cannot start the reload thread: %s", strerror(r));
                uint64_t one = 1;
                (void) !write(d->reload_efd, &one, sizeof(one));
        }
}

static void reload_apply(gh_daemon *d, gh_config *next) {
        gh_config *old = d->config;

        if (!gh_streq(old->socket_path, next->socket_path) ||
            !gh_streq(old->socket_group ? old->socket_group : "", next->socket_group ? next->socket_group : ""))
                gh_log_warning("[socket] changes take effect when gpuhostd restarts");
        if (!gh_streq(old->devices_include ? old->devices_include : "", next->devices_include ? next->devices_include : "") ||
            !gh_streq(old->devices_exclude ? old->devices_exclude : "", next->devices_exclude ? next->devices_exclude : "") ||
            !gh_streq(old->devices_reserve ? old->devices_reserve : "", next->devices_reserve ? next->devices_reserve : "") ||
            !gh_streq(old->devices_reserve_per_device ? old->devices_reserve_per_device : "",
                      next->devices_reserve_per_device ? next->devices_reserve_per_device : "") ||
            old->slab_size != next->slab_size || old->cpu_enabled != next->cpu_enabled || old->cpu_memory != next->cpu_memory)
                gh_log_warning("[devices] changes take effect when gpuhostd restarts");
        if (!gh_streq(old->worker_executable, next->worker_executable) ||
            !gh_streq(old->plugin_directory, next->plugin_directory))
                gh_log_notice("[workers] executable and plugin_directory apply to workers started from now on "
                              "(gpuhostctl worker restart ID)");
        metrics_apply_listen(d, old->metrics_listen, next->metrics_listen);
        d->config = next;
        if (d->workers)
                gh_workers_set_config(d->workers, next);
        gh_config_free(old);
        apply_log_level(d);
        gh_server_limits l = limits_from_config(d->config);
        gh_server_set_limits(d->server, &l);
        gh_log_info("Configuration reloaded (%zu file%s)", d->config->n_files, d->config->n_files == 1 ? "" : "s");
}

static void waiters_reply(gh_reload_waiter *list, int r, const gh_config_error *err, const gh_config *c) {
        while (list) {
                gh_reload_waiter *w = list;
                list = w->next;
                if (w->req) {
                        gh_request_set_cancel(w->req, NULL, NULL);
                        if (r < 0)
                                gh_request_error(w->req, GH_ERROR_CONFIG_INVALID, gh_config_error_to_json(err));
                        else {
                                json_object *files = json_object_new_array();
                                for (size_t i = 0; i < c->n_files; i++)
                                        json_object_array_add(files, json_object_new_string(c->files[i]));
                                json_object *o = json_object_new_object();
                                json_object_object_add(o, "files", files);
                                gh_request_reply(w->req, o);
                        }
                }
                free(w);
        }
}

static int on_reload_done(sd_event_source *es, int fd, uint32_t revents, void *userdata) {
        gh_daemon *d = userdata;
        uint64_t v;
        char msg[1024];

        if (read(d->reload_efd, &v, sizeof(v)) < 0)
                return 0;
        if (d->reload_running) {
                pthread_join(d->reload_thread, NULL);
                d->reload_running = false;
        }
        gh_reload_waiter *waiters = TAKE_PTR(d->waiters);
        if (d->reload_r < 0) {
                gh_config_error_format(&d->reload_error, msg, sizeof(msg));
                gh_log_error("Reload failed, keeping the running configuration: %s", msg);
        } else {
                reload_apply(d, TAKE_PTR(d->reload_result));
                /* Estimates may read models' tensor tables: those cached
                 * go when a model's entry changed. */
                if (gh_store_apply_catalog(d->engine.store, TAKE_PTR(d->reload_catalog)) && d->workers)
                        gh_tasks_forget_estimates(d->workers);
        }
        if (d->state == GH_STATE_RELOADING)
                d->state = GH_STATE_RUNNING;
        if (d->state != GH_STATE_STOPPING)
                sd_notify(false, "READY=1");
        gh_daemon_update_status(d);
        waiters_reply(waiters, d->reload_r, &d->reload_error, d->config);
        if (d->reload_again && d->state == GH_STATE_RUNNING) {
                d->reload_again = false;
                d->waiters = TAKE_PTR(d->waiters_next);
                reload_start(d);
        }
        return 0;
}

void gh_daemon_reload(gh_daemon *d, gh_request *req) {
        if (d->state == GH_STATE_STOPPING) {
                if (req)
                        gh_request_error(req, GH_ERROR_SHUTTING_DOWN, NULL);
                return;
        }
        if (req) {
                gh_reload_waiter *w = calloc(1, sizeof(*w));
                if (!w) {
                        gh_request_error(req, GH_ERROR_INTERNAL, NULL);
                        return;
                }
                w->daemon = d;
                w->req = req;
                gh_request_set_cancel(req, waiter_cancel, w);
                /* A reload already reading files may have missed the edit
                 * this caller made: it waits for the next one. */
                gh_reload_waiter **list = d->reload_running ? &d->waiters_next : &d->waiters;
                w->next = *list;
                *list = w;
        }
        if (d->reload_running)
                d->reload_again = true;
        else
                reload_start(d);
}

/* ---- stop ---- */

static int on_grace_expired(sd_event_source *es, uint64_t usec, void *userdata) {
        gh_daemon *d = userdata;

        gh_log_warning("Shutdown grace period over: closing %u connection(s) with work in flight",
                       gh_server_connections(d->server));
        gh_server_close_all(d->server);
        sd_event_exit(d->event, 0);
        return 0;
}

static void on_drained(gh_server *s, void *userdata) {
        gh_daemon *d = userdata;

        gh_log_info("All work finished; exiting");
        sd_event_exit(d->event, 0);
}

void gh_daemon_stop(gh_daemon *d) {
        if (d->state == GH_STATE_STOPPING) {
                gh_log_notice("Second stop request: exiting now");
                gh_server_close_all(d->server);
                sd_event_exit(d->event, 0);
                return;
        }
        d->state = GH_STATE_STOPPING;
        sd_notify(false, "STOPPING=1");
        gh_daemon_update_status(d);
        gh_log_info("Stopping: no new connections; waiting up to %" PRIu64 "s for work in flight",
                    d->config->shutdown_grace_usec / USEC_PER_SEC);
        sd_event_add_time_relative(d->event, &d->grace_timer, CLOCK_MONOTONIC,
                                   d->config->shutdown_grace_usec, USEC_PER_MSEC, on_grace_expired, d);
        gh_server_drain(d->server);
}

static int on_signal(sd_event_source *es, const struct signalfd_siginfo *si, void *userdata) {
        gh_daemon *d = userdata;

        if (si->ssi_signo == SIGHUP) {
                gh_log_info("SIGHUP: reloading the configuration");
                gh_daemon_reload(d, NULL);
        } else
                gh_daemon_stop(d);
        return 0;
}

/* ---- life cycle ---- */

static int add_sources(gh_daemon *d) {
        sigset_t mask;
        int r;

        sigemptyset(&mask);
        sigaddset(&mask, SIGTERM);
        sigaddset(&mask, SIGINT);
        sigaddset(&mask, SIGHUP);
        sigaddset(&mask, SIGCHLD); /* workers are reaped by sd-event child sources */
        if (sigprocmask(SIG_BLOCK, &mask, NULL) < 0)
                return gh_negerrno();
        signal(SIGPIPE, SIG_IGN);
        if ((r = sd_event_add_signal(d->event, &d->sig_term, SIGTERM, on_signal, d)) < 0 ||
            (r = sd_event_add_signal(d->event, &d->sig_int, SIGINT, on_signal, d)) < 0 ||
            (r = sd_event_add_signal(d->event, &d->sig_hup, SIGHUP, on_signal, d)) < 0)
                return r;
        d->reload_efd = eventfd(0, EFD_CLOEXEC | EFD_NONBLOCK);
        if (d->reload_efd < 0)
                return gh_negerrno();
        if ((r = sd_event_add_io(d->event, &d->reload_source, d->reload_efd, EPOLLIN, on_reload_done, d)) < 0)
                return r;
        r = sd_event_add_time_relative(d->event, &d->status_timer, CLOCK_MONOTONIC, STATUS_INTERVAL_USEC,
                                       USEC_PER_SEC, on_status_timer, d);
        if (r < 0)
                return r;
        sd_event_source_set_enabled(d->status_timer, SD_EVENT_ON);
        /* WATCHDOG=1 from the loop itself, when WatchdogSec= is set. */
        return sd_event_set_watchdog(d->event, true);
}

/* Every method table, concatenated into d->methods. */
static int methods_build(gh_daemon *d, size_t *ret_n) {
        const struct {
                const gh_method *methods;
                size_t n;
        } tables[] = {
                {gh_daemon_methods, gh_daemon_n_methods},   {gh_model_methods, gh_model_n_methods},
                {gh_job_methods, gh_job_n_methods},         {gh_job_api_methods, gh_job_api_n_methods},
                {gh_metrics_methods, gh_metrics_n_methods},
        };
        size_t n = 0;

        for (size_t i = 0; i < ELEMENTSOF(tables); i++)
                n += tables[i].n;
        d->methods = malloc(n * sizeof(gh_method));
        if (!d->methods)
                return -ENOMEM;
        n = 0;
        for (size_t i = 0; i < ELEMENTSOF(tables); i++) {
                memcpy(d->methods + n, tables[i].methods, tables[i].n * sizeof(gh_method));
                n += tables[i].n;
        }
        *ret_n = n;
        return 0;
}

int gh_daemon_init(gh_daemon *d, gh_config *config) {
        gh_server_limits limits = limits_from_config(config);
        _cleanup_free_ char *error = NULL;
        int r;

        d->config = config;
        d->reload_efd = -1;
        d->listener.fd = -1;
        d->start_usec = gh_now_usec(CLOCK_MONOTONIC);
        apply_log_level(d);
        r = sd_event_default(&d->event);
        if (r < 0)
                return gh_log_error_errno(r, "Failed to create the event loop: %m");
        r = add_sources(d);
        if (r < 0)
                return gh_log_error_errno(r, "Failed to set up event sources: %m");
        r = gh_listen_open(config->socket_path, config->socket_gid, &d->listener, &error);
        if (r < 0)
                return gh_log_error_errno(r, "%s", error ? error : "Cannot open the socket");
        r = metrics_start(d);
        if (r < 0)
                return r;
        r = gh_engine_init(&d->engine, d->event, config);
        if (r < 0)
                return r;
        r = gh_workers_new(d->event, config, &d->engine, &d->workers);
        if (r < 0)
                return gh_log_error_errno(r, "Failed to set up the workers: %m");
        size_t n;
        r = methods_build(d, &n);
        if (r < 0)
                return gh_log_error_errno(r, "Out of memory");
        r = gh_server_new(d->event, d->listener.fd, &limits, d->methods, n,
                          &(gh_server_ops) {.drained = on_drained}, d, &d->server);
        if (r < 0)
                return gh_log_error_errno(r, "Failed to start the server: %m");
        return 0;
}

int gh_daemon_run(gh_daemon *d) {
        d->state = GH_STATE_RUNNING;
        gh_log_info("gpuhostd %s serving on %s%s", GH_VERSION, d->config->socket_path,
                    d->listener.activated ? " (socket activation)" : "");
        sd_notify(false, "READY=1");
        gh_daemon_update_status(d);
        int r = sd_event_loop(d->event);
        if (r < 0)
                return gh_log_error_errno(r, "Event loop failed: %m");
        return r;
}

void gh_daemon_done(gh_daemon *d) {
        if (d->reload_running)
                pthread_join(d->reload_thread, NULL);
        gh_config_free(d->reload_result);
        d->metrics_http = gh_metrics_http_free(d->metrics_http);
        gh_server_free(d->server); /* cancels the waiters' requests */
        d->workers = gh_workers_free(d->workers);
        gh_engine_done(&d->engine);
        daemon_metrics = NULL;
        d->metrics = gh_metrics_free(d->metrics);
        free(d->methods);
        gh_catalog_free(d->reload_catalog);
        waiters_reply(TAKE_PTR(d->waiters), -ECANCELED, &d->reload_error, d->config);
        waiters_reply(TAKE_PTR(d->waiters_next), -ECANCELED, &d->reload_error, d->config);
        if (d->listener.fd >= 0) {
                gh_listen_cleanup(d->config->socket_path, &d->listener);
                gh_close(d->listener.fd);
        }
        sd_event_source_disable_unref(d->sig_term);
        sd_event_source_disable_unref(d->sig_int);
        sd_event_source_disable_unref(d->sig_hup);
        sd_event_source_disable_unref(d->reload_source);
        sd_event_source_disable_unref(d->status_timer);
        sd_event_source_disable_unref(d->grace_timer);
        gh_close(d->reload_efd);
        sd_event_unref(d->event);
        gh_config_free(d->config);
        free(d->last_status);
}

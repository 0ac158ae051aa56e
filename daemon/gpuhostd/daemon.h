/* gpuhostd's top-level state: configuration, event loop, server, reload and
 * shutdown. main.c builds it; methods.c serves calls from it. Everything
 * here runs on the event-loop thread except the config parse of a reload,
 * which runs in a helper thread and hands its result back over an eventfd. */
#pragma once

#include <pthread.h>
#include <stdbool.h>
#include <stdint.h>
#include <systemd/sd-event.h>

#include "config.h"
#include "engine.h"
#include "listen.h"
#include "metrics-http.h"
#include "metrics.h"
#include "server.h"
#include "workers.h"

typedef enum gh_daemon_state {
        GH_STATE_STARTING,
        GH_STATE_RUNNING,
        GH_STATE_RELOADING,
        GH_STATE_STOPPING,
} gh_daemon_state;

typedef struct gh_reload_waiter gh_reload_waiter;

typedef struct gh_daemon {
        sd_event *event;
        gh_config *config;
        const char *config_override; /* -c PATH */
        const char *config_main, *config_dropins;
        int forced_log_level;        /* -v; -1: none */
        gh_daemon_state state;
        uint64_t start_usec;         /* CLOCK_MONOTONIC */
        gh_listener listener;
        gh_server *server;
        gh_engine engine;
        gh_workers *workers;
        gh_metrics *metrics;         /* families of metrics-gpuhost.h */
        gh_metrics_http *metrics_http; /* [metrics] listen; NULL: off */
        gh_method *methods; /* every method served: the tables below and tasks.h's, concatenated */
        char *last_status;
        int exit_code;

        /* Reload: the thread's result is read only after it has been joined. */
        bool reload_running, reload_again;
        pthread_t reload_thread;
        int reload_efd;
        sd_event_source *reload_source;
        gh_config *reload_result;
        gh_catalog *reload_catalog;
        gh_config_error reload_error;
        int reload_r;
        gh_reload_waiter *waiters, *waiters_next; /* ReloadConfig calls */

        sd_event_source *sig_term, *sig_int, *sig_hup, *status_timer, *grace_timer;
} gh_daemon;

int gh_daemon_init(gh_daemon *d, gh_config *config);
int gh_daemon_run(gh_daemon *d);
void gh_daemon_done(gh_daemon *d);

const char *gh_daemon_state_to_string(gh_daemon_state s);
/* Starts a reload (SIGHUP or ReloadConfig); |req| gets the result, if set. */
void gh_daemon_reload(gh_daemon *d, gh_request *req);
void gh_daemon_stop(gh_daemon *d);
void gh_daemon_update_status(gh_daemon *d);

extern const gh_method gh_daemon_methods[];
extern const size_t gh_daemon_n_methods;
extern const gh_method gh_model_methods[];
extern const size_t gh_model_n_methods;
extern const gh_method gh_job_methods[];
extern const size_t gh_job_n_methods;
extern const gh_method gh_metrics_methods[];
extern const size_t gh_metrics_n_methods;

/* The running daemon's metrics registry, for the subsystems that count
 * (see metrics-gpuhost.h); event-loop thread only. NULL outside
 * gh_daemon_init()..gh_daemon_done(), which the gh_metrics_* sample
 * functions accept. */
gh_metrics *gh_daemon_metrics(void);

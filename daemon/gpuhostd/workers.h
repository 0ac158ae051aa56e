/* Worker supervision in gpuhostd: one gpuhost-worker process per device,
 * started with fork+exec, fed and watched on the event loop.
 *
 * A worker inherits exactly one socketpair end (fd 3), /dev/null as stdin,
 * and a pipe as stdout and stderr whose lines the daemon logs under the
 * worker's name (with the level the worker gave them). Everything else is
 * closed before exec. The daemon reaps workers through sd-event child
 * sources and pings them; one that dies, exits, speaks out of protocol, or
 * stays silent past the heartbeat timeout is killed and started again with
 * an exponential backoff (100 ms doubling to 30 s, reset once a worker has
 * done a job or lived 30 s). The weight pools and the models in them belong
 * to the daemon and are untouched by any of this.
 *
 * Pipelines are what the workers report in their hello; the registry
 * outlives workers, so a plugin's crash count and quarantine survive its
 * worker. Tasks (tasks.c) are the daemon's side of the jobs. */
#pragma once

#include <json-c/json.h>
#include <stdbool.h>
#include <stdint.h>
#include <sys/types.h>
#include <systemd/sd-event.h>

#include "../common/varlink.h"
#include "config.h"
#include "engine.h"

#define GH_CRASH_HISTORY 64

typedef struct gh_task gh_task;
typedef struct gh_workers gh_workers;

typedef enum gh_worker_state {
        GH_WORKER_WAITING,   /* no process: to be started (backoff) */
        GH_WORKER_STARTING,  /* started, no hello yet */
        GH_WORKER_IDLE,
        GH_WORKER_BUSY,      /* a task is on it (estimating, loading models, or running) */
        GH_WORKER_STOPPING,  /* killed, not yet reaped */
} gh_worker_state;

typedef struct gh_pipeline {
        char *name;
        json_object *desc;      /* as the plugin reported it (gh_plugin_to_json) */
        json_object *table;     /* desc.parameters */
        bool retry_safe;
        uint64_t devices;       /* bit i: device i's worker loaded it */
        uint64_t crash_usec[GH_CRASH_HISTORY];
        unsigned n_crash;       /* entries in crash_usec (most recent last) */
        unsigned crashes;       /* in all */
        bool quarantined;
        double step_usec;       /* measured time of one step (moving average; 0: none yet) */
} gh_pipeline;

typedef struct gh_worker {
        gh_workers *ws;
        unsigned id;
        unsigned device;        /* the daemon's device index */
        bool cuda;
        int cuda_ordinal;
        pid_t pid;              /* 0: none */
        gh_worker_state state;
        int fd, log_fd;
        sd_event_source *io, *log_io, *child, *heartbeat, *respawn;
        gh_vl_reader reader;
        gh_vl_writer writer;
        char log_line[4096];
        size_t log_len;
        uint64_t started_usec, last_seen_usec, ping_seq;
        uint64_t jobs_done, crashes, rss;
        unsigned backoff;       /* consecutive early deaths */
        bool restart_requested;
        bool missing_logged;    /* the worker program is missing: said so */
        char kill_reason[160];  /* why the daemon killed it, if it did */
        json_object *refused;   /* [{path, reason}] from its hello */
        uint64_t *slab_serial;  /* per slab: the slab mapped in the worker (0: none) */
        unsigned n_slots;
        /* The device's scheduler state (sched.c, tasks.c); outlives processes. */
        const gh_device_info *info;
        gh_task *estimating;    /* tasks whose estimate this worker makes */
        gh_task *bound;         /* admitted tasks (run_next), oldest first */
        unsigned n_bound;
        gh_task *queue_head, *queue_tail; /* the run queue */
        unsigned queued;
        uint64_t workspaces;    /* reserved by admitted tasks */
        unsigned units;         /* slice units (from the hello); 0: not known yet */
        unsigned unit_sms;      /* SMs per unit on a GPU */
        uint64_t units_free;    /* mask */
        uint64_t busy_mark, busy_unit_usec; /* utilisation: unit-microseconds busy */
        double load_bps;        /* measured model load throughput (moving average) */
} gh_worker;

struct gh_workers {
        sd_event *event;
        const gh_config *config; /* the daemon's current one */
        gh_engine *engine;
        gh_worker *workers;
        unsigned n_workers;
        gh_pipeline *pipelines;
        size_t n_pipelines;
        uint64_t next_task_id;
        gh_task *tasks;          /* every job known (jobs.c) */
        unsigned n_active, n_finished;
        gh_task *unestimated;    /* tasks waiting for a worker to estimate them */
        uint64_t served_clock;   /* round robin between clients (sched.c) */
        struct gh_entity *entities; /* per client uid: when it was last served */
        size_t n_entities;
        struct gh_estimate *estimates; /* plugins' estimates by pipeline and parameters */
        size_t n_estimates;
        uint64_t estimate_clock;
        bool stopping;
};

int gh_workers_new(sd_event *event, const gh_config *config, gh_engine *engine, gh_workers **ret);
gh_workers *gh_workers_free(gh_workers *ws);
/* The configuration changed (reload): limits apply now, the rest to
 * workers started from now on. */
void gh_workers_set_config(gh_workers *ws, const gh_config *config);

const char *gh_worker_state_to_string(gh_worker_state s);
gh_worker *gh_workers_get(gh_workers *ws, unsigned id);
gh_worker *gh_workers_for_device(gh_workers *ws, unsigned device);
gh_pipeline *gh_workers_pipeline(gh_workers *ws, const char *name);

/* Sends a message to a worker (takes |msg| and |fds|). A worker that
 * cannot take it is killed. */
int gh_worker_send(gh_worker *w, json_object *msg, const int *fds, size_t n_fds);
/* Sends the worker the slab fds under [offset, offset + bytes) of its
 * device's pool that it does not have mapped yet. */
int gh_worker_map(gh_worker *w, uint64_t offset, uint64_t bytes);
/* Kills the worker (SIGKILL) with a reason for the log and its task. */
void gh_worker_kill(gh_worker *w, const char *reason);
/* RestartWorker: stops it now and starts it again without backoff. */
int gh_worker_restart(gh_worker *w);
/* Counts a crash against a pipeline; returns true if it is now quarantined. */
bool gh_pipeline_crashed(gh_workers *ws, gh_pipeline *p);

json_object *gh_workers_json(gh_workers *ws);
/* For GetStatus: workers up and waiting, pipelines, quarantined ones. */
json_object *gh_workers_summary(gh_workers *ws);
json_object *gh_pipelines_json(gh_workers *ws);

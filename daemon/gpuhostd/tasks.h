/* Tasks: the daemon's record of a job, from a Generate call until it is
 * forgotten, split in three subsystems. docs/scheduler.md tells the whole
 * story.
 *
 * tasks.c runs a task: a worker estimates it (workspace, steps, models);
 * sched.c places it on a device; it waits in that device's run queue
 * (best priority first, round robin between clients, older first, with
 * aging); it is admitted when its workspace and models fit the device's
 * ledger (the reservation is held until it ends); the daemon makes its
 * models resident (loading them, never blocking the loop) and holds a
 * reference on each, sends the worker the pool slabs it lacks, and starts
 * the job in a slice of the device, which is rebalanced between running
 * jobs at step boundaries. If the worker dies under a task, the task fails
 * with WorkerCrashed, or goes back to the head of the queue once if its
 * plugin is retry-safe; a step that overruns its timeout kills the worker.
 *
 * jobs.c is the client's side: job ids, the connections watching a job
 * (the submitter with "more", WaitJob callers), the final result kept for
 * keep_finished_sec so it can be fetched later, deadlines, queue limits,
 * and the methods Generate, ListJobs, GetJob, WaitJob and CancelJob.
 *
 * A task ends (gh_job_finish_*) as soon as its result is known: watchers
 * get it at once, even when a cancelled job's worker still has to reach
 * its next step boundary. Until the worker has let go, the task stays
 * bound to it, with its models referenced. */
#pragma once

#include <json-c/json.h>
#include <stdbool.h>
#include <stdint.h>
#include <sys/types.h>

#include "gpuhost/plugin.h"
#include "server.h"
#include "workers.h"

typedef enum gh_task_phase {
        GH_TASK_NEW,         /* waiting for a worker to estimate it */
        GH_TASK_ESTIMATING,
        GH_TASK_QUEUED,      /* in its device's run queue */
        GH_TASK_LOADING,     /* admitted (reservation held), its models loading */
        GH_TASK_READY,       /* models resident, waiting for slice units */
        GH_TASK_RUNNING,
        GH_TASK_OFF,         /* no longer on a worker */
} gh_task_phase;

typedef enum gh_task_state {
        GH_JOB_QUEUED,
        GH_JOB_RUNNING,
        GH_JOB_DONE,
        GH_JOB_FAILED,
        GH_JOB_CANCELLED,
} gh_task_state;

typedef enum gh_priority {
        GH_PRIORITY_INTERACTIVE,
        GH_PRIORITY_NORMAL,
        GH_PRIORITY_BATCH,
} gh_priority;

typedef struct gh_watcher gh_watcher;

struct gh_task {
        gh_workers *ws;
        gh_task *all_prev, *all_next;  /* every task the daemon knows */
        /* execution (tasks.c, sched.c) */
        gh_worker *w;                  /* the device (its worker) it is placed on */
        gh_worker *est_w;              /* the worker making its estimate */
        gh_task *next;                 /* in w's run queue, est_w's estimates, or ws->unestimated */
        gh_task *run_next;             /* in w's admitted tasks, while bound */
        gh_task_phase phase;
        bool bound;                    /* admitted on w: holds its reservation */
        int want_device;               /* the device asked for, or -1 */
        uint32_t step, steps;
        uint64_t ws_cpu, ws_cuda;      /* declared workspaces per device kind */
        uint64_t workspace;            /* reserved on w's device while bound */
        uint32_t slice_sms, step_timeout_ms;
        gh_model *models[GH_PLUGIN_MODELS_MAX];
        gh_resident *res[GH_PLUGIN_MODELS_MAX]; /* referenced while set */
        unsigned n_models;
        unsigned loads_pending;        /* gh_store_load() callbacks still to come */
        bool retried, cancel_sent, wait_logged, load_nospc;
        uint64_t units;                /* the slice it holds: a mask of w's units */
        uint64_t units_sent;           /* the slice last sent; != units: a shrink not yet taken */
        sd_event_source *step_timer;   /* the per-step watchdog */
        uint64_t received_mono, queued_mono, started_mono, step_mono; /* CLOCK_MONOTONIC */
        uint64_t first_step_mono, last_step_mono; /* from the worker */
        char placement[256];           /* why it went to w */
        const char *placement_kind;    /* the same, one word (metrics) */
        /* the job (jobs.c) */
        char id[32];
        char *pipeline, *tag;
        uid_t uid;
        gh_priority priority;
        bool detach;
        json_object *params;           /* normalized */
        int *fds;                      /* image parameters' fds, in the order of their "fd" */
        size_t n_fds;
        gh_task_state state;
        uint64_t submitted_rt, started_rt, finished_rt; /* CLOCK_REALTIME */
        double deadline_sec;
        sd_event_source *deadline_timer, *expire_timer, *cancel_defer;
        int stop_reason;               /* why it is being stopped (GH_STOP_*) */
        gh_watcher *watchers;
        char *error;                   /* a failed or cancelled job: the error name */
        json_object *result;           /* the final reply's or error's parameters */
        int *out_fds;
        size_t n_out_fds;
        bool expired;                  /* forgotten; freed once unbound and loads are back */
};

enum {
        GH_STOP_NONE,
        GH_STOP_CANCEL,   /* CancelJob or the caller went away */
        GH_STOP_DEADLINE,
};

/* ---- tasks.c: running tasks on workers ---- */

/* A new task: has a worker estimate it (then places and queues it).
 * Returns 1 if the estimate is under way, 0 if no worker can make it yet
 * (it is made when one is up). */
int gh_task_submit(gh_task *t);
/* Stops running |t| (it ended): out of its queue, or a cancel to its
 * worker, which lets go at the next step boundary. A task that holds a
 * reservation but runs nothing yet lets go at once. */
void gh_task_stop(gh_task *t);
/* Whether |t| can be freed now (unbound, no load callbacks due). */
bool gh_task_idle(const gh_task *t);

/* Called by workers.c. */
void gh_tasks_worker_ready(gh_worker *w);
int gh_tasks_worker_message(gh_worker *w, const char *type, json_object *msg, int *fds, size_t n_fds);
/* The worker died: |signal| (0 if it exited), |exit_status| (-1 if
 * killed), and a one-line reason. */
void gh_tasks_worker_died(gh_worker *w, int signal, int exit_status, const char *reason);
/* Drops every task of the worker (daemon exit). */
void gh_tasks_worker_free(gh_worker *w);
/* Empties the cache of plugins' estimates. */
void gh_tasks_forget_estimates(gh_workers *ws);

/* ---- sched.c: devices, placement, shares ---- */

/* Where |t| (estimated) should run: 0 and the worker, with the reason in
 * t->placement; or -E2BIG (never fits anywhere) / -ENODEV (no device
 * offers it) with the error's name and parameters. */
int gh_sched_place(gh_workers *ws, gh_task *t, gh_worker **ret, const char **ret_error, json_object **ret_params);
/* Bytes |t| needs on |w| now (its workspace and the models it would load)
 * and the bytes |w| can give it now (evicting unused models). */
void gh_sched_fit(gh_worker *w, const gh_task *t, uint64_t *ret_need, uint64_t *ret_avail);
/* The slice units each of |n| jobs should hold: at least one each, the
 * rest by weight, none past its cap. */
void gh_sched_shares(unsigned units, const unsigned *weights, const unsigned *caps, unsigned n, unsigned *ret);
/* The pool may hold weights up to what the reservations leave. */
void gh_sched_update_limit(gh_worker *w);
/* Records a measured step of |t| (for expected waits). */
void gh_sched_step_done(gh_task *t, uint64_t usec);
/* Busy time of |w|'s units up to now (call before its units change). */
void gh_sched_account(gh_worker *w);
/* GetStatus' devices: ledger, units, jobs, resident models. */
json_object *gh_sched_devices_json(gh_workers *ws);

/* ---- sched-metrics.c ---- */

void gh_sched_metrics_init(gh_workers *ws);
void gh_sched_metrics_done(gh_workers *ws);
void gh_sched_metric_submitted(const gh_task *t);
void gh_sched_metric_finished(const gh_task *t);
void gh_sched_metric_started(const gh_task *t);
void gh_sched_metric_step(const gh_task *t, uint64_t usec);
void gh_sched_metric_placed(const char *kind);
void gh_sched_metric_wait(unsigned device, const char *reason);
void gh_sched_metric_restart(unsigned device, const char *reason);
void gh_sched_metric_model(gh_store_event ev, const char *model, unsigned device, uint64_t bytes, uint64_t usec);

/* ---- jobs.c: what callers see ---- */

int gh_job_submit(gh_workers *ws, gh_request *req, json_object *params);
/* The task was placed and queued on its device (t->placement says why). */
void gh_job_queued(gh_task *t);
/* The worker started the job (step 0 of |t->steps|), or reports a step. */
void gh_job_running(gh_task *t);
void gh_job_progress(gh_task *t, json_object *msg, int *fds, size_t n_fds);
/* The job's result: outputs (takes |fds|) or an error (takes |params|). */
void gh_job_finish_done(gh_task *t, json_object *outputs, json_object *metadata, int *fds, size_t n_fds);
void gh_job_finish_error(gh_task *t, gh_task_state state, const char *error, json_object *params);
/* JobFailed with an errno name and a message. */
void gh_job_fail(gh_task *t, const char *errname, const char *message);
/* The task left its worker: free it if it is forgotten already. */
void gh_job_unbound(gh_task *t);
/* Every task (daemon exit). */
void gh_jobs_free(gh_workers *ws);

extern const gh_method gh_job_api_methods[];
extern const size_t gh_job_api_n_methods;

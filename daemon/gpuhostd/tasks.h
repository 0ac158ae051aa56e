/* Tasks: the daemon's record of a job, from a Generate call until it is
 * forgotten, split in two subsystems.
 *
 * tasks.c runs a task on a worker: the task waits in the queue of the
 * worker it was placed on (best priority first, older first, with aging);
 * when the worker is free the task takes it: the worker estimates the job
 * (workspace, steps, models), the daemon makes the models resident on the
 * device (loading them, never blocking the loop) and holds a reference on
 * each, sends the worker the pool slabs it lacks, and starts the job. If
 * the worker dies under a task, the task fails with WorkerCrashed, or goes
 * back to the head of the queue once if its plugin is retry-safe.
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
        GH_TASK_NEW,         /* not queued yet */
        GH_TASK_QUEUED,
        GH_TASK_ESTIMATING,
        GH_TASK_LOADING,     /* waiting for its models */
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
        /* execution (tasks.c) */
        gh_worker *w;
        gh_task *next;                 /* in the worker's queue */
        gh_task_phase phase;
        bool bound;                    /* w->task == this */
        uint32_t step, steps;
        uint64_t workspace;
        gh_model *models[GH_PLUGIN_MODELS_MAX];
        gh_resident *res[GH_PLUGIN_MODELS_MAX]; /* referenced while set */
        unsigned n_models;
        unsigned loads_pending;        /* gh_store_load() callbacks still to come */
        bool retried, cancel_sent;
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
        uint64_t queued_mono;          /* CLOCK_MONOTONIC, for aging */
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

/* Queues |t| on |w| (and starts it if the worker is free). */
void gh_task_enqueue(gh_worker *w, gh_task *t);
/* Stops running |t| (it ended): out of the queue, or a cancel to its
 * worker, which lets go at the next step boundary. */
void gh_task_stop(gh_task *t);
/* Where a new task for pipeline |p| goes; NULL if nowhere. */
gh_worker *gh_task_place(gh_workers *ws, gh_pipeline *p, json_object *params, json_object *device);
/* Whether |t| can be freed now (unbound, no load callbacks due). */
bool gh_task_idle(const gh_task *t);
void gh_task_release(gh_task *t); /* model references */

/* Called by workers.c. */
void gh_tasks_worker_ready(gh_worker *w);
int gh_tasks_worker_message(gh_worker *w, const char *type, json_object *msg, int *fds, size_t n_fds);
/* The worker died: |signal| (0 if it exited), |exit_status| (-1 if
 * killed), and a one-line reason. */
void gh_tasks_worker_died(gh_worker *w, int signal, int exit_status, const char *reason);
/* Drops every task of the worker (daemon exit). */
void gh_tasks_worker_free(gh_worker *w);

/* ---- jobs.c: what callers see ---- */

int gh_job_submit(gh_workers *ws, gh_request *req, json_object *params);
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

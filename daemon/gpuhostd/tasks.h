/* Tasks: the daemon's side of a job, from a Generate call to its last
 * reply.
 *
 * A task waits in the queue of the worker it was placed on. When that
 * worker is free the task takes it: the worker estimates the job (what it
 * needs: workspace, steps, models), the daemon makes the models resident on
 * the device (loading them, never blocking the loop) and holds a reference
 * on each, sends the worker the pool slabs it lacks, and starts the job.
 * Progress, outputs (sealed memfds) and failures go back to the caller.
 * If the worker dies under a task, the task fails with WorkerCrashed, or
 * goes back to the head of the queue once if its plugin is retry-safe.
 * A caller that goes away cancels its task: at once if queued, at the next
 * step boundary if running. */
#pragma once

#include <json-c/json.h>

#include "server.h"
#include "workers.h"

/* Starts a job for |req| (io.gpuhost.Generate); replies on every path. */
int gh_task_submit(gh_workers *ws, gh_request *req, json_object *params);

/* Called by workers.c. */
void gh_tasks_worker_ready(gh_worker *w);
int gh_tasks_worker_message(gh_worker *w, const char *type, json_object *msg, int *fds, size_t n_fds);
/* The worker died: |signal| (0 if it exited), |exit_status| (-1 if
 * killed), and a one-line reason. */
void gh_tasks_worker_died(gh_worker *w, int signal, int exit_status, const char *reason);
/* Drops every task (daemon exit): their calls are already gone. */
void gh_tasks_worker_free(gh_worker *w);
json_object *gh_task_brief(const gh_task *t); /* {job, pipeline} for ListWorkers */

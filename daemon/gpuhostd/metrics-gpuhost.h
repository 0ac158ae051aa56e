/* gpuhostd's metric families, declared in one place so the subsystems that
 * count (scheduler, workers, model store) only inc/set/observe by name:
 *
 *   char l[GH_METRICS_LABELS_MAX + 1];
 *   if (gh_metrics_labels(l, sizeof(l), "pipeline", job->pipeline, NULL) >= 0)
 *           gh_metrics_inc(gh_daemon_metrics(), GH_METRIC_JOBS_SUBMITTED, l, 1);
 *
 * gh_daemon_metrics() (daemon.h) is the running daemon's registry; label
 * names and values are listed with each family below. Durations are in
 * seconds, sizes in bytes, devices by their index ("0", "1", ...). */
#pragma once

#include "metrics.h"

/* {pipeline} jobs accepted by Generate. */
#define GH_METRIC_JOBS_SUBMITTED "gpuhost_jobs_submitted_total"
/* {pipeline,state,reason}: state done|failed|cancelled; reason "ok" or the
 * error's name. */
#define GH_METRIC_JOBS_FINISHED "gpuhost_jobs_finished_total"
/* {device} gauges: jobs queued for (placed on) a device, and running on it. */
#define GH_METRIC_QUEUE_DEPTH "gpuhost_queue_depth"
#define GH_METRIC_JOBS_RUNNING "gpuhost_jobs_running"
/* {pipeline} histograms: submit to start, start to finish, one step. */
#define GH_METRIC_QUEUE_WAIT_SECONDS "gpuhost_queue_wait_seconds"
#define GH_METRIC_JOB_RUN_SECONDS "gpuhost_job_run_seconds"
#define GH_METRIC_STEP_SECONDS "gpuhost_step_seconds"
/* {device,kind} gauge; kind total|reserve|weights|workspaces|free. */
#define GH_METRIC_DEVICE_MEMORY_BYTES "gpuhost_device_memory_bytes"
/* {device} counter: the sum of the busy time of the device's slices. */
#define GH_METRIC_DEVICE_BUSY_SECONDS "gpuhost_device_busy_seconds_total"
/* {device} gauges: compute slice units in all, and in use. */
#define GH_METRIC_DEVICE_SLICE_UNITS "gpuhost_device_slice_units"
#define GH_METRIC_DEVICE_SLICE_UNITS_BUSY "gpuhost_device_slice_units_busy"
/* {model,device} counters. */
#define GH_METRIC_MODEL_LOADS "gpuhost_model_loads_total"
#define GH_METRIC_MODEL_EVICTIONS "gpuhost_model_evictions_total"
/* {device} counters: bytes loaded and seconds spent loading. */
#define GH_METRIC_MODEL_LOAD_BYTES "gpuhost_model_load_bytes_total"
#define GH_METRIC_MODEL_LOAD_SECONDS "gpuhost_model_load_seconds_total"
/* {device,reason}: reason crash|hang|restart|... as the supervisor names it. */
#define GH_METRIC_WORKER_RESTARTS "gpuhost_worker_restarts_total"
/* {reason}: why a job went where it went (affinity, least-loaded, ...). */
#define GH_METRIC_PLACEMENTS "gpuhost_placements_total"
/* {device,reason}: a job that waited for admission, and on what (memory,
 * slice, ...). */
#define GH_METRIC_ADMISSION_WAITS "gpuhost_admission_waits_total"
/* {family}: samples sent to a family's overflow="true" series because it
 * had GH_METRICS_SERIES_MAX label sets already. */
#define GH_METRIC_OVERFLOW "gpuhost_metrics_overflow_total"

/* Declares every family above, in this order, and the overflow counter. */
int gh_metrics_declare_gpuhost(gh_metrics *m);

/* gpuhostd's metric families and their help texts. See metrics-gpuhost.h. */
#include "../common/util.h"
#include "metrics-gpuhost.h"

/* Seconds, roughly half a decade apart: a step of a small model on a fast
 * GPU up to a long video job or a long wait in the queue. */
static const double seconds_buckets[] = {
        0.001, 0.003, 0.01, 0.03, 0.1, 0.3, 1, 3, 10, 30, 60, 120, 300, 600,
};

typedef struct family_def {
        const char *name;
        gh_metric_type type;
        const char *help;
} family_def;

static const family_def families[] = {
        {GH_METRIC_JOBS_SUBMITTED, GH_METRIC_COUNTER, "Jobs accepted, by pipeline."},
        {GH_METRIC_JOBS_FINISHED, GH_METRIC_COUNTER,
         "Jobs finished, by pipeline, final state (done, failed, cancelled) and reason (ok or the error's name)."},
        {GH_METRIC_QUEUE_DEPTH, GH_METRIC_GAUGE, "Jobs waiting for a device."},
        {GH_METRIC_JOBS_RUNNING, GH_METRIC_GAUGE, "Jobs running on a device."},
        {GH_METRIC_QUEUE_WAIT_SECONDS, GH_METRIC_HISTOGRAM, "Seconds from a job's submission to its start."},
        {GH_METRIC_JOB_RUN_SECONDS, GH_METRIC_HISTOGRAM, "Seconds from a job's start to its end."},
        {GH_METRIC_STEP_SECONDS, GH_METRIC_HISTOGRAM, "Seconds one step of a job took."},
        {GH_METRIC_DEVICE_MEMORY_BYTES, GH_METRIC_GAUGE,
         "Device memory in bytes: total, reserve (left alone), weights, workspaces (of running jobs), free."},
        {GH_METRIC_DEVICE_BUSY_SECONDS, GH_METRIC_COUNTER, "Seconds the device's compute slices were busy, added up."},
        {GH_METRIC_DEVICE_SLICE_UNITS, GH_METRIC_GAUGE, "Compute slice units of the device."},
        {GH_METRIC_DEVICE_SLICE_UNITS_BUSY, GH_METRIC_GAUGE, "Compute slice units given to running jobs."},
        {GH_METRIC_MODEL_LOADS, GH_METRIC_COUNTER, "Model loads started, by model and device."},
        {GH_METRIC_MODEL_EVICTIONS, GH_METRIC_COUNTER, "Models evicted to make room, by model and device."},
        {GH_METRIC_MODEL_LOAD_BYTES, GH_METRIC_COUNTER, "Bytes of model weights loaded onto the device."},
        {GH_METRIC_MODEL_LOAD_SECONDS, GH_METRIC_COUNTER, "Seconds spent loading models onto the device."},
        {GH_METRIC_WORKER_RESTARTS, GH_METRIC_COUNTER, "Worker processes started again, by device and reason."},
        {GH_METRIC_PLACEMENTS, GH_METRIC_COUNTER, "Jobs placed on a device, by the reason for the choice."},
        {GH_METRIC_ADMISSION_WAITS, GH_METRIC_COUNTER, "Jobs that waited for admission, by device and what they waited for."},
        {GH_METRIC_OVERFLOW, GH_METRIC_COUNTER,
         "Samples counted in a family's overflow series because it had too many label sets."},
};

int gh_metrics_declare_gpuhost(gh_metrics *m) {
        for (size_t i = 0; i < ELEMENTSOF(families); i++) {
                const family_def *f = &families[i];
                bool histogram = f->type == GH_METRIC_HISTOGRAM;
                int r = gh_metrics_declare(m, f->name, f->type, f->help, histogram ? seconds_buckets : NULL,
                                           histogram ? ELEMENTSOF(seconds_buckets) : 0);
                if (r < 0)
                        return r;
        }
        return gh_metrics_set_overflow_family(m, GH_METRIC_OVERFLOW);
}

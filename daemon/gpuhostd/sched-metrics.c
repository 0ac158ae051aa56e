/* The scheduler's metrics: counters and histograms fed as jobs move
 * (submitted, placed, waiting, started, each step, finished), model loads
 * and evictions, worker restarts, and gauges of every device (queue,
 * running jobs, memory ledger, slice units, busy time) refreshed right
 * before each scrape. Families are declared in metrics-gpuhost.c. */
#include <inttypes.h>
#include <stdio.h>

#include "../common/util.h"
#include "daemon.h"
#include "metrics-gpuhost.h"
#include "tasks.h"

static gh_metrics *M(void) {
        return gh_daemon_metrics();
}

static void labels_device(char *buf, size_t size, unsigned device) {
        char d[16];

        snprintf(d, sizeof(d), "%u", device);
        gh_metrics_labels(buf, size, "device", d, NULL);
}

void gh_sched_metric_submitted(const gh_task *t) {
        char l[GH_METRICS_LABELS_MAX];

        gh_metrics_labels(l, sizeof(l), "pipeline", t->pipeline, NULL);
        gh_metrics_inc(M(), GH_METRIC_JOBS_SUBMITTED, l, 1);
}

void gh_sched_metric_finished(const gh_task *t) {
        static const char *const states[] = {"queued", "running", "done", "failed", "cancelled"};
        char l[GH_METRICS_LABELS_MAX];

        gh_metrics_labels(l, sizeof(l), "pipeline", t->pipeline, "state", states[t->state], "reason",
                          t->error ? t->error : "ok", NULL);
        gh_metrics_inc(M(), GH_METRIC_JOBS_FINISHED, l, 1);
        if (t->started_rt && t->finished_rt >= t->started_rt) {
                gh_metrics_labels(l, sizeof(l), "pipeline", t->pipeline, NULL);
                gh_metrics_observe(M(), GH_METRIC_JOB_RUN_SECONDS, l, (double) (t->finished_rt - t->started_rt) / 1e6);
        }
}

void gh_sched_metric_started(const gh_task *t) {
        char l[GH_METRICS_LABELS_MAX];

        gh_metrics_labels(l, sizeof(l), "pipeline", t->pipeline, NULL);
        gh_metrics_observe(M(), GH_METRIC_QUEUE_WAIT_SECONDS, l, (double) (t->started_mono - t->received_mono) / 1e6);
}

void gh_sched_metric_step(const gh_task *t, uint64_t usec) {
        char l[GH_METRICS_LABELS_MAX];

        gh_metrics_labels(l, sizeof(l), "pipeline", t->pipeline, NULL);
        gh_metrics_observe(M(), GH_METRIC_STEP_SECONDS, l, (double) usec / 1e6);
}

void gh_sched_metric_placed(const char *kind) {
        char l[GH_METRICS_LABELS_MAX];

        gh_metrics_labels(l, sizeof(l), "reason", kind, NULL);
        gh_metrics_inc(M(), GH_METRIC_PLACEMENTS, l, 1);
}

void gh_sched_metric_wait(unsigned device, const char *reason) {
        char l[GH_METRICS_LABELS_MAX], d[16];

        snprintf(d, sizeof(d), "%u", device);
        gh_metrics_labels(l, sizeof(l), "device", d, "reason", reason, NULL);
        gh_metrics_inc(M(), GH_METRIC_ADMISSION_WAITS, l, 1);
}

void gh_sched_metric_restart(unsigned device, const char *reason) {
        char l[GH_METRICS_LABELS_MAX], d[16];

        snprintf(d, sizeof(d), "%u", device);
        gh_metrics_labels(l, sizeof(l), "device", d, "reason", reason, NULL);
        gh_metrics_inc(M(), GH_METRIC_WORKER_RESTARTS, l, 1);
}

void gh_sched_metric_model(gh_store_event ev, const char *model, unsigned device, uint64_t bytes, uint64_t usec) {
        char l[GH_METRICS_LABELS_MAX], d[16];

        snprintf(d, sizeof(d), "%u", device);
        gh_metrics_labels(l, sizeof(l), "model", model, "device", d, NULL);
        gh_metrics_inc(M(), ev == GH_STORE_LOADED ? GH_METRIC_MODEL_LOADS : GH_METRIC_MODEL_EVICTIONS, l, 1);
        if (ev != GH_STORE_LOADED)
                return;
        labels_device(l, sizeof(l), device);
        gh_metrics_inc(M(), GH_METRIC_MODEL_LOAD_BYTES, l, (double) bytes);
        gh_metrics_inc(M(), GH_METRIC_MODEL_LOAD_SECONDS, l, (double) usec / 1e6);
}

/* Before a scrape: every device's gauges. */
static void collect(gh_metrics *m, void *userdata) {
        gh_workers *ws = userdata;
        static const char *const kinds[] = {"total", "reserve", "budget", "weights", "workspaces", "free"};

        json_object *all = gh_sched_devices_json(ws);

        for (unsigned i = 0; i < ws->n_workers; i++) {
                gh_worker *w = &ws->workers[i];
                char l[GH_METRICS_LABELS_MAX], d[16];
                json_object *dev = json_object_array_get_idx(all, i);
                json_object *mem = json_object_object_get(dev, "memory");
                labels_device(l, sizeof(l), w->device);
                gh_metrics_set(m, GH_METRIC_QUEUE_DEPTH, l, w->queued);
                gh_metrics_set(m, GH_METRIC_JOBS_RUNNING, l, w->n_bound);
                gh_metrics_set(m, GH_METRIC_DEVICE_SLICE_UNITS, l, w->units);
                gh_metrics_set(m, GH_METRIC_DEVICE_SLICE_UNITS_BUSY, l,
                               (double) json_object_get_int64(json_object_object_get(dev, "units_busy")));
                double busy = json_object_get_double(json_object_object_get(dev, "busy_seconds"));
                double seen = 0;
                if (gh_metrics_get(m, GH_METRIC_DEVICE_BUSY_SECONDS, l, &seen) < 0)
                        seen = 0;
                if (busy > seen)
                        gh_metrics_inc(m, GH_METRIC_DEVICE_BUSY_SECONDS, l, busy - seen);
                snprintf(d, sizeof(d), "%u", w->device);
                for (size_t k = 0; k < ELEMENTSOF(kinds); k++) {
                        gh_metrics_labels(l, sizeof(l), "device", d, "kind", kinds[k], NULL);
                        gh_metrics_set(m, GH_METRIC_DEVICE_MEMORY_BYTES, l,
                                       (double) json_object_get_int64(json_object_object_get(mem, kinds[k])));
                }
        }
        json_object_put(all);
}

void gh_sched_metrics_init(gh_workers *ws) {
        gh_metrics_set_collector(M(), collect, ws);
}

void gh_sched_metrics_done(gh_workers *ws) {
        gh_metrics_set_collector(M(), NULL, NULL);
}

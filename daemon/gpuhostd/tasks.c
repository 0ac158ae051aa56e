/* Tasks on workers: the queues, estimate, models, running, the worker's
 * messages, and worker deaths. See tasks.h. */
#include <fcntl.h>
#include <inttypes.h>
#include <string.h>

#include "../common/log.h"
#include "../common/util.h"
#include "../common/worker-proto.h"
#include "gpuhost/protocol.h"
#include "tasks.h"

static void task_next(gh_worker *w);

static json_object *obj1(const char *k, json_object *v) {
        json_object *o = json_object_new_object();

        json_object_object_add(o, k, v);
        return o;
}

void gh_task_release(gh_task *t) {
        for (unsigned i = 0; i < t->n_models; i++)
                if (t->res[i]) {
                        gh_resident_unref(t->res[i]);
                        t->res[i] = NULL;
                }
}

bool gh_task_idle(const gh_task *t) {
        return !t->bound && t->loads_pending == 0 && t->phase != GH_TASK_QUEUED;
}

/* ---- queues ---- */

static void queue_push(gh_worker *w, gh_task *t, bool head) {
        t->w = w;
        t->phase = GH_TASK_QUEUED;
        if (head) {
                t->next = w->queue_head;
                w->queue_head = t;
                if (!w->queue_tail)
                        w->queue_tail = t;
        } else {
                t->next = NULL;
                if (w->queue_tail)
                        w->queue_tail->next = t;
                else
                        w->queue_head = t;
                w->queue_tail = t;
        }
        w->queued++;
}

static bool queue_remove(gh_worker *w, gh_task *t) {
        for (gh_task **p = &w->queue_head, *prev = NULL; *p; prev = *p, p = &(*p)->next)
                if (*p == t) {
                        *p = t->next;
                        if (w->queue_tail == t)
                                w->queue_tail = prev;
                        w->queued--;
                        t->next = NULL;
                        return true;
                }
        return false;
}

/* The class a queued task competes in: one better for each aging period
 * it has waited. */
static int effective_class(const gh_task *t, uint64_t now) {
        uint64_t aging = t->ws->config->aging_usec;
        int c = (int) t->priority;

        if (aging)
                c -= (int) ((now - t->queued_mono) / aging);
        return c < 0 ? 0 : c;
}

/* The next task to run: the best class, the oldest within it (a retried
 * task was put back first). */
static gh_task *queue_pick(gh_worker *w) {
        uint64_t now = gh_now_usec(CLOCK_MONOTONIC);
        gh_task *best = NULL;
        int best_class = 0;

        for (gh_task *t = w->queue_head; t; t = t->next) {
                int c = t->retried ? -1 : effective_class(t, now);
                if (!best || c < best_class) {
                        best = t;
                        best_class = c;
                }
        }
        return best;
}

void gh_task_enqueue(gh_worker *w, gh_task *t) {
        t->queued_mono = gh_now_usec(CLOCK_MONOTONIC);
        queue_push(w, t, false);
        task_next(w);
}

/* The task leaves its worker, which takes the next one. */
static void unbind(gh_task *t) {
        gh_worker *w = t->w;

        t->phase = GH_TASK_OFF;
        if (t->bound) {
                t->bound = false;
                if (w->task == t) {
                        w->task = NULL;
                        if (w->state == GH_WORKER_BUSY)
                                w->state = GH_WORKER_IDLE;
                }
        }
        gh_task_release(t);
        gh_job_unbound(t); /* may free t */
        if (w)
                task_next(w);
}

void gh_task_stop(gh_task *t) {
        switch (t->phase) {
        case GH_TASK_QUEUED:
                queue_remove(t->w, t);
                t->phase = GH_TASK_OFF;
                return;
        case GH_TASK_RUNNING:
                if (t->stop_reason != GH_STOP_NONE && !t->cancel_sent) {
                        json_object *m = obj1("type", json_object_new_string("cancel"));
                        json_object_object_add(m, "job", json_object_new_string(t->id));
                        t->cancel_sent = true;
                        gh_worker_send(t->w, m, NULL, 0); /* "cancelled" comes at the step boundary */
                }
                return;
        default:
                return; /* estimating or loading: noticed when that ends */
        }
}

/* ---- starting a task on its worker ---- */

static void send_estimate(gh_task *t) {
        json_object *m = obj1("type", json_object_new_string("estimate"));

        json_object_object_add(m, "job", json_object_new_string(t->id));
        json_object_object_add(m, "pipeline", json_object_new_string(t->pipeline));
        json_object_object_add(m, "params", json_object_get(t->params));
        t->phase = GH_TASK_ESTIMATING;
        gh_worker_send(t->w, m, NULL, 0);
}

static void task_next(gh_worker *w) {
        gh_task *t;

        while (w->state == GH_WORKER_IDLE && !w->task && (t = queue_pick(w))) {
                queue_remove(w, t);
                gh_pipeline *p = gh_workers_pipeline(w->ws, t->pipeline);
                t->w = w;
                t->bound = true;
                w->task = t;
                w->state = GH_WORKER_BUSY;
                t->phase = GH_TASK_ESTIMATING;
                if (p && p->quarantined) {
                        json_object *e = obj1("pipeline", json_object_new_string(t->pipeline));
                        json_object_object_add(e, "crashes", json_object_new_int64(p->crashes));
                        gh_job_finish_error(t, GH_JOB_FAILED, "io.gpuhost.PluginQuarantined", e);
                        unbind(t);
                } else if (!p || !(p->devices & (UINT64_C(1) << w->device))) {
                        gh_job_finish_error(t, GH_JOB_FAILED, "io.gpuhost.PipelineNotFound",
                                            obj1("pipeline", json_object_new_string(t->pipeline)));
                        unbind(t);
                } else
                        send_estimate(t);
        }
}

void gh_tasks_worker_ready(gh_worker *w) {
        task_next(w);
}

static json_object *tensor_table(const gh_resident *res) {
        size_t n;
        const gh_tensor_entry *te = gh_resident_tensors(res, &n);
        json_object *a = json_object_new_array_ext((int) n);

        for (size_t i = 0; i < n; i++) {
                json_object *o = json_object_new_object(), *shape = json_object_new_array();
                for (unsigned k = 0; k < te[i].n_dims; k++)
                        json_object_array_add(shape, json_object_new_int64((int64_t) te[i].shape[k]));
                json_object_object_add(o, "name", json_object_new_string(te[i].name));
                json_object_object_add(o, "dtype", json_object_new_string(gh_dtype_to_string(te[i].dtype)));
                json_object_object_add(o, "shape", shape);
                json_object_object_add(o, "offset", json_object_new_int64((int64_t) te[i].offset));
                json_object_object_add(o, "bytes", json_object_new_int64((int64_t) te[i].bytes));
                json_object_array_add(a, o);
        }
        return a;
}


/* Every model is resident and referenced: map and run. */
static void task_run(gh_task *t) {
        gh_worker *w = t->w;
        json_object *m = obj1("type", json_object_new_string("run")), *models = json_object_new_array();
        int *fds = NULL;

        for (unsigned i = 0; i < t->n_models; i++) {
                int r = gh_worker_map(w, gh_resident_offset(t->res[i]), gh_resident_bytes(t->res[i]));
                if (r < 0) {
                        json_object_put(m);
                        json_object_put(models);
                        gh_job_fail(t, strerrorname_np(-r) ?: "EIO", "cannot hand the model's memory to the worker");
                        unbind(t);
                        return;
                }
                json_object *o = obj1("name", json_object_new_string(gh_model_name(t->models[i])));
                json_object_object_add(o, "tensors", tensor_table(t->res[i]));
                json_object_array_add(models, o);
        }
        for (size_t i = 0; i < t->n_fds; i++) {
                if (!fds && !(fds = calloc(t->n_fds, sizeof(int))))
                        break;
                if ((fds[i] = fcntl(t->fds[i], F_DUPFD_CLOEXEC, 3)) < 0) {
                        gh_close_many(fds, i);
                        free(fds);
                        fds = NULL;
                        break;
                }
        }
        if (t->n_fds && !fds) {
                json_object_put(m);
                json_object_put(models);
                gh_job_fail(t, "EMFILE", "cannot pass the input images to the worker");
                unbind(t);
                return;
        }
        json_object_object_add(m, "job", json_object_new_string(t->id));
        json_object_object_add(m, "pipeline", json_object_new_string(t->pipeline));
        json_object_object_add(m, "params", json_object_get(t->params));
        json_object_object_add(m, "models", models);
        json_object_object_add(m, "workspace", json_object_new_int64((int64_t) t->workspace));
        json_object_object_add(m, "steps", json_object_new_int64(t->steps));
        json_object_object_add(m, "max_output_bytes", json_object_new_int64((int64_t) t->ws->config->max_output_size));
        t->phase = GH_TASK_RUNNING;
        gh_log_debug("Job %s (%s) running on worker %u", t->id, t->pipeline, w->id);
        gh_worker_send(w, m, fds, fds ? t->n_fds : 0);
        free(fds);
        gh_job_running(t);
}

/* The models are resident (or failed): run, unless the job ended meanwhile. */
static void models_check(gh_task *t) {
        if (t->loads_pending)
                return;
        if (t->state >= GH_JOB_DONE) {
                unbind(t);
                return;
        }
        for (unsigned i = 0; i < t->n_models; i++)
                if (!t->res[i])
                        return; /* a failure already ended it */
        task_run(t);
}

static void on_model_loaded(gh_resident *res, int r, const char *reason, void *userdata) {
        gh_task *t = userdata;
        unsigned i;

        t->loads_pending--;
        if (!t->bound) { /* the task left its worker while this load ran */
                gh_job_unbound(t);
                return;
        }
        /* Which model: on success the one now resident as |res|, on failure
         * the first still without a resident copy. */
        for (i = 0; i < t->n_models; i++)
                if (!t->res[i] && (r < 0 || gh_model_resident(t->models[i], t->w->device) == res))
                        break;
        if (r >= 0 && i < t->n_models) {
                gh_resident_ref(res);
                t->res[i] = res;
        }
        if (r < 0 && t->state < GH_JOB_DONE) {
                json_object *p = obj1("model", json_object_new_string(i < t->n_models ? gh_model_name(t->models[i]) : "?"));
                json_object_object_add(p, "device", json_object_new_int64(t->w->device));
                json_object_object_add(p, "reason", json_object_new_string(reason ? reason : strerror(-r)));
                gh_job_finish_error(t, GH_JOB_FAILED, GH_ERROR_MODEL_LOAD_FAILED, p);
        }
        models_check(t);
}

/* The estimate came back: make the models resident. */
static void on_estimated(gh_task *t, json_object *m) {
        json_object *needs = json_object_object_get(m, "needs"), *models = json_object_object_get(needs, "models");
        gh_store *store = t->ws->engine->store;

        if (t->state >= GH_JOB_DONE) {
                unbind(t);
                return;
        }
        if (!needs) {
                gh_job_fail(t, json_object_get_string(json_object_object_get(m, "error")) ?: "EIO",
                            json_object_get_string(json_object_object_get(m, "message")) ?: "estimate failed");
                unbind(t);
                return;
        }
        t->steps = (uint32_t) json_object_get_int64(json_object_object_get(needs, "steps"));
        t->workspace = (uint64_t) json_object_get_int64(json_object_object_get(needs, t->w->cuda ? "workspace_cuda" : "workspace_cpu"));
        if (t->workspace == 0) {
                char msg[160];
                snprintf(msg, sizeof(msg), "the pipeline cannot run on device %u (%s)", t->w->device, t->w->cuda ? "cuda" : "cpu");
                gh_job_fail(t, "ENODEV", msg);
                unbind(t);
                return;
        }
        t->n_models = 0;
        size_t n = json_object_array_length(models);
        for (size_t i = 0; i < n && i < GH_PLUGIN_MODELS_MAX; i++) {
                const char *name = json_object_get_string(json_object_array_get_idx(models, i));
                gh_model *model = gh_store_find(store, name);
                if (!model) {
                        gh_job_finish_error(t, GH_JOB_FAILED, GH_ERROR_MODEL_NOT_FOUND, obj1("model", json_object_new_string(name ?: "")));
                        unbind(t);
                        return;
                }
                bool dup = false;
                for (unsigned k = 0; k < t->n_models; k++)
                        dup |= t->models[k] == model;
                if (!dup)
                        t->models[t->n_models++] = model;
        }
        t->phase = GH_TASK_LOADING;
        /* Count every load first: a resident model calls back at once. */
        t->loads_pending = t->n_models + 1;
        for (unsigned i = 0; i < t->n_models; i++) {
                int r = gh_store_load(store, t->models[i], t->w->device, on_model_loaded, t);
                if (r < 0)
                        on_model_loaded(NULL, r, "cannot start loading", t);
        }
        t->loads_pending--;
        models_check(t);
}

/* ---- the worker's messages about its task ---- */

static int on_done(gh_task *t, json_object *m, int *fds, size_t n_fds) {
        json_object *outs = json_object_object_get(m, "outputs");
        size_t n = json_object_is_type(outs, json_type_array) ? json_object_array_length(outs) : 0;

        if (n != n_fds) {
                gh_close_many(fds, n_fds);
                return -EBADMSG;
        }
        t->w->jobs_done++;
        t->w->backoff = 0;
        gh_log_debug("Job %s (%s) done: %zu output(s)", t->id, t->pipeline, n);
        int *copy = n_fds ? malloc(n_fds * sizeof(int)) : NULL;
        if (n_fds && !copy) {
                gh_close_many(fds, n_fds);
                gh_job_fail(t, "ENOMEM", "out of memory");
        } else {
                if (copy)
                        memcpy(copy, fds, n_fds * sizeof(int));
                gh_job_finish_done(t, outs, json_object_object_get(m, "metadata"), copy, n_fds);
        }
        unbind(t);
        return 0;
}

int gh_tasks_worker_message(gh_worker *w, const char *type, json_object *m, int *fds, size_t n_fds) {
        gh_task *t = w->task;
        const char *job = json_object_get_string(json_object_object_get(m, "job"));
        int r = 0;

        if (!t || !gh_streq(job, t->id)) {
                gh_close_many(fds, n_fds);
                free(fds);
                return -EPROTO;
        }
        if (gh_streq(type, "estimated") && t->phase == GH_TASK_ESTIMATING) {
                gh_close_many(fds, n_fds);
                on_estimated(t, m);
        } else if (gh_streq(type, "progress") && t->phase == GH_TASK_RUNNING) {
                t->step = (uint32_t) json_object_get_int64(json_object_object_get(m, "step"));
                gh_job_progress(t, m, fds, n_fds);
        } else if (gh_streq(type, "done") && t->phase == GH_TASK_RUNNING)
                r = on_done(t, m, fds, n_fds);
        else if (gh_streq(type, "failed") && (t->phase == GH_TASK_RUNNING || t->phase == GH_TASK_ESTIMATING)) {
                gh_close_many(fds, n_fds);
                gh_job_fail(t, json_object_get_string(json_object_object_get(m, "error")) ?: "EIO",
                            json_object_get_string(json_object_object_get(m, "message")) ?: "failed");
                unbind(t);
        } else if (gh_streq(type, "cancelled") && t->phase == GH_TASK_RUNNING) {
                gh_close_many(fds, n_fds);
                /* Normally ended already (cancel or deadline); this is the worker letting go. */
                gh_job_finish_error(t, GH_JOB_CANCELLED, "io.gpuhost.JobCancelled", obj1("job", json_object_new_string(t->id)));
                unbind(t);
        } else {
                gh_close_many(fds, n_fds);
                r = -EPROTO;
        }
        free(fds);
        return r;
}

void gh_tasks_worker_died(gh_worker *w, int signal, int exit_status, const char *reason) {
        gh_task *t = w->task;

        if (!t)
                return;
        gh_pipeline *p = gh_workers_pipeline(w->ws, t->pipeline);
        bool requested = gh_streq(reason, "restarted on request");
        bool quarantined = p && !requested && gh_pipeline_crashed(w->ws, p);
        w->task = NULL;
        t->bound = false;
        gh_task_release(t);
        if (t->state < GH_JOB_DONE && p && p->retry_safe && !t->retried && !quarantined && !t->loads_pending) {
                gh_log_notice("Job %s (%s): its worker died (%s); running it again", t->id, t->pipeline, reason);
                t->retried = true;
                t->n_models = 0;
                t->cancel_sent = false;
                queue_push(w, t, true);
                return;
        }
        json_object *e = obj1("pipeline", json_object_new_string(t->pipeline));
        json_object_object_add(e, "pid", json_object_new_int64(w->pid));
        json_object_object_add(e, "signal", signal ? json_object_new_string(sigabbrev_np(signal) ?: "?") : NULL);
        json_object_object_add(e, "exit_status", exit_status >= 0 ? json_object_new_int64(exit_status) : NULL);
        json_object_object_add(e, "reason", json_object_new_string(reason));
        gh_job_finish_error(t, GH_JOB_FAILED, "io.gpuhost.WorkerCrashed", e);
        t->phase = GH_TASK_OFF;
        gh_job_unbound(t);
}

void gh_tasks_worker_free(gh_worker *w) {
        gh_task *t;

        while ((t = w->queue_head)) {
                queue_remove(w, t);
                t->phase = GH_TASK_OFF;
        }
        if ((t = w->task)) {
                w->task = NULL;
                t->bound = false;
                t->phase = GH_TASK_OFF;
                gh_task_release(t);
        }
}

/* ---- placement ---- */

static bool worker_has_model(gh_worker *w, json_object *params, json_object *table) {
        gh_store *store = w->ws->engine->store;

        for (size_t i = 0; i < json_object_array_length(table); i++) {
                json_object *q = json_object_array_get_idx(table, i);
                if (!gh_streq(json_object_get_string(json_object_object_get(q, "type")), "model"))
                        continue;
                const char *name = json_object_get_string(
                        json_object_object_get(params, json_object_get_string(json_object_object_get(q, "name"))));
                gh_model *m = name ? gh_store_find(store, name) : NULL;
                if (m && gh_model_resident(m, w->device))
                        return true;
        }
        return false;
}

/* Where the task goes: the device asked for, else a worker offering the
 * pipeline that holds one of its models, else the one with the shortest
 * queue (GPUs come before the CPU in device order). */
gh_worker *gh_task_place(gh_workers *ws, gh_pipeline *p, json_object *params, json_object *device) {
        gh_worker *best = NULL;
        bool best_has = false;

        if (device)
                return gh_workers_for_device(ws, (unsigned) json_object_get_int64(device));
        for (unsigned i = 0; i < ws->n_workers; i++) {
                gh_worker *w = &ws->workers[i];
                if (w->device >= 64 || !(p->devices & (UINT64_C(1) << w->device)))
                        continue;
                bool has = worker_has_model(w, params, p->table);
                unsigned load = w->queued + (w->task != NULL);
                if (!best || (has && !best_has) ||
                    (has == best_has && load < best->queued + (best->task != NULL))) {
                        best = w;
                        best_has = has;
                }
        }
        return best;
}


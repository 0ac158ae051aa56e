/* Tasks: a Generate call's job, queued on a worker, estimated, given its
 * models, run, and answered. See tasks.h. */
#include <fcntl.h>
#include <inttypes.h>
#include <string.h>

#include "../common/log.h"
#include "../common/params.h"
#include "../common/util.h"
#include "../common/worker-proto.h"
#include "gpuhost/plugin.h"
#include "gpuhost/protocol.h"
#include "tasks.h"

typedef enum task_state {
        TASK_QUEUED,
        TASK_ESTIMATING,
        TASK_LOADING,   /* waiting for its models */
        TASK_RUNNING,
} task_state;

struct gh_task {
        gh_workers *ws;
        gh_worker *w;
        gh_task *next;          /* in the worker's queue */
        char id[32];
        char *pipeline;
        json_object *params;    /* normalized */
        int *fds;               /* image parameters' fds, in the order of their "fd" */
        size_t n_fds;
        gh_request *req;        /* NULL once the caller is gone */
        task_state state;
        uint32_t steps;
        uint64_t workspace;
        gh_model *models[GH_PLUGIN_MODELS_MAX];
        gh_resident *res[GH_PLUGIN_MODELS_MAX]; /* referenced while set */
        unsigned n_models;
        unsigned loads_pending; /* gh_store_load() callbacks still to come */
        bool retried;
        bool cancel_sent;
};

static void task_next(gh_worker *w);

static json_object *obj1(const char *k, json_object *v) {
        json_object *o = json_object_new_object();

        json_object_object_add(o, k, v);
        return o;
}

json_object *gh_task_brief(const gh_task *t) {
        json_object *o = obj1("job", json_object_new_string(t->id));

        json_object_object_add(o, "pipeline", json_object_new_string(t->pipeline));
        return o;
}

/* ---- life ---- */

static void task_unref_models(gh_task *t) {
        for (unsigned i = 0; i < t->n_models; i++)
                if (t->res[i]) {
                        gh_resident_unref(t->res[i]);
                        t->res[i] = NULL;
                }
}

static void task_free(gh_task *t) {
        task_unref_models(t);
        if (t->loads_pending) {
                /* A load callback still points here; it frees the task. */
                t->req = NULL;
                t->w = NULL;
                return;
        }
        gh_close_many(t->fds, t->n_fds);
        free(t->fds);
        json_object_put(t->params);
        free(t->pipeline);
        free(t);
}

static void queue_push(gh_worker *w, gh_task *t, bool head) {
        t->w = w;
        t->state = TASK_QUEUED;
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
                        return true;
                }
        return false;
}

/* Hands over the caller's request, no longer to be cancelled: a final
 * reply frees it, so this comes first. */
static gh_request *take_req(gh_task *t) {
        gh_request *req = TAKE_PTR(t->req);

        if (req)
                gh_request_set_cancel(req, NULL, NULL);
        return req;
}

/* The task leaves its worker (answered, failed or abandoned). */
static void task_end(gh_task *t) {
        gh_worker *w = t->w;

        take_req(t);
        if (w && w->task == t) {
                w->task = NULL;
                if (w->state == GH_WORKER_BUSY)
                        w->state = GH_WORKER_IDLE;
        }
        task_free(t);
        if (w)
                task_next(w);
}

static void task_error(gh_task *t, const char *error, json_object *params) {
        gh_request *req = take_req(t);

        if (req)
                gh_request_error(req, error, params);
        else
                json_object_put(params);
        task_end(t);
}

static void task_failed(gh_task *t, const char *errname, const char *message) {
        json_object *p = obj1("pipeline", json_object_new_string(t->pipeline));

        json_object_object_add(p, "error", json_object_new_string(errname));
        json_object_object_add(p, "message", json_object_new_string(message));
        gh_log_info("Job %s (%s) failed: %s: %s", t->id, t->pipeline, errname, message);
        task_error(t, "io.gpuhost.JobFailed", p);
}

static void on_cancel(gh_request *req, void *userdata) {
        gh_task *t = userdata;

        t->req = NULL;
        gh_log_debug("Job %s: caller gone, cancelling", t->id);
        if (t->state == TASK_QUEUED) {
                if (t->w)
                        queue_remove(t->w, t);
                task_free(t);
        } else if (t->state == TASK_RUNNING) {
                json_object *m = obj1("type", json_object_new_string("cancel"));
                json_object_object_add(m, "job", json_object_new_string(t->id));
                t->cancel_sent = true;
                gh_worker_send(t->w, m, NULL, 0); /* the worker answers "cancelled" at the step boundary */
        }
        /* Estimating or loading: noticed when that ends. */
}

static json_object *state_reply(gh_task *t, const char *state) {
        json_object *o = obj1("job", json_object_new_string(t->id));

        json_object_object_add(o, "state", json_object_new_string(state));
        if (t->w)
                json_object_object_add(o, "device", json_object_new_int64(t->w->device));
        return o;
}

/* ---- starting a task on its worker ---- */

static void send_estimate(gh_task *t) {
        json_object *m = obj1("type", json_object_new_string("estimate"));

        json_object_object_add(m, "job", json_object_new_string(t->id));
        json_object_object_add(m, "pipeline", json_object_new_string(t->pipeline));
        json_object_object_add(m, "params", json_object_get(t->params));
        t->state = TASK_ESTIMATING;
        gh_worker_send(t->w, m, NULL, 0);
}

static void task_next(gh_worker *w) {
        while (w->state == GH_WORKER_IDLE && !w->task && w->queue_head) {
                gh_task *t = w->queue_head;
                queue_remove(w, t);
                if (!t->req) {
                        task_free(t);
                        continue;
                }
                gh_pipeline *p = gh_workers_pipeline(w->ws, t->pipeline);
                if (!p || !(p->devices & (UINT64_C(1) << w->device)) || p->quarantined) {
                        t->w = w;
                        w->task = t;
                        w->state = GH_WORKER_BUSY;
                        if (p && p->quarantined) {
                                json_object *e = obj1("pipeline", json_object_new_string(t->pipeline));
                                json_object_object_add(e, "crashes", json_object_new_int64(p->crashes));
                                task_error(t, "io.gpuhost.PluginQuarantined", e);
                        } else
                                task_error(t, "io.gpuhost.PipelineNotFound", obj1("pipeline", json_object_new_string(t->pipeline)));
                        return;
                }
                w->task = t;
                w->state = GH_WORKER_BUSY;
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
                        task_failed(t, strerrorname_np(-r) ?: "EIO", "cannot hand the model's memory to the worker");
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
                task_failed(t, "EMFILE", "cannot pass the input images to the worker");
                return;
        }
        json_object_object_add(m, "job", json_object_new_string(t->id));
        json_object_object_add(m, "pipeline", json_object_new_string(t->pipeline));
        json_object_object_add(m, "params", json_object_get(t->params));
        json_object_object_add(m, "models", models);
        json_object_object_add(m, "workspace", json_object_new_int64((int64_t) t->workspace));
        json_object_object_add(m, "steps", json_object_new_int64(t->steps));
        json_object_object_add(m, "max_output_bytes", json_object_new_int64((int64_t) t->ws->config->max_output_size));
        t->state = TASK_RUNNING;
        gh_log_debug("Job %s (%s) running on worker %u", t->id, t->pipeline, w->id);
        gh_worker_send(w, m, fds, fds ? t->n_fds : 0);
        free(fds);
        if (t->req && gh_request_more(t->req)) {
                json_object *p = state_reply(t, "running");
                json_object_object_add(p, "step", json_object_new_int64(0));
                json_object_object_add(p, "steps", json_object_new_int64(t->steps));
                gh_request_notify(t->req, p);
        }
}

static void models_check(gh_task *t) {
        if (t->loads_pending)
                return;
        if (!t->req) { /* cancelled while loading */
                task_end(t);
                return;
        }
        for (unsigned i = 0; i < t->n_models; i++)
                if (!t->res[i])
                        return; /* a failure already answered */
        task_run(t);
}

static void on_model_loaded(gh_resident *res, int r, const char *reason, void *userdata) {
        gh_task *t = userdata;
        unsigned i;

        t->loads_pending--;
        if (!t->w && !t->req) { /* the task ended while this load ran */
                if (!t->loads_pending)
                        task_free(t);
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
        if (r < 0 && t->req) {
                json_object *p = obj1("model", json_object_new_string(i < t->n_models ? gh_model_name(t->models[i]) : "?"));
                json_object_object_add(p, "device", json_object_new_int64(t->w->device));
                json_object_object_add(p, "reason", json_object_new_string(reason ? reason : strerror(-r)));
                gh_request_error(take_req(t), GH_ERROR_MODEL_LOAD_FAILED, p);
        }
        models_check(t);
}

/* The estimate came back: make the models resident. */
static void on_estimated(gh_task *t, json_object *m) {
        json_object *needs = json_object_object_get(m, "needs"), *models = json_object_object_get(needs, "models");
        gh_store *store = t->ws->engine->store;

        if (!t->req) {
                task_end(t);
                return;
        }
        if (!needs) {
                task_failed(t, json_object_get_string(json_object_object_get(m, "error")) ?: "EIO",
                            json_object_get_string(json_object_object_get(m, "message")) ?: "estimate failed");
                return;
        }
        t->steps = (uint32_t) json_object_get_int64(json_object_object_get(needs, "steps"));
        t->workspace = (uint64_t) json_object_get_int64(json_object_object_get(needs, t->w->cuda ? "workspace_cuda" : "workspace_cpu"));
        if (t->workspace == 0) {
                char msg[160];
                snprintf(msg, sizeof(msg), "the pipeline cannot run on device %u (%s)", t->w->device, t->w->cuda ? "cuda" : "cpu");
                task_failed(t, "ENODEV", msg);
                return;
        }
        size_t n = json_object_array_length(models);
        for (size_t i = 0; i < n && i < GH_PLUGIN_MODELS_MAX; i++) {
                const char *name = json_object_get_string(json_object_array_get_idx(models, i));
                gh_model *model = gh_store_find(store, name);
                if (!model) {
                        task_error(t, GH_ERROR_MODEL_NOT_FOUND, obj1("model", json_object_new_string(name ?: "")));
                        return;
                }
                bool dup = false;
                for (unsigned k = 0; k < t->n_models; k++)
                        dup |= t->models[k] == model;
                if (!dup)
                        t->models[t->n_models++] = model;
        }
        t->state = TASK_LOADING;
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

/* ---- the worker's messages about the task ---- */

static int on_progress(gh_task *t, json_object *m, int *fds, size_t n_fds) {
        if (!t->req || !gh_request_more(t->req)) {
                gh_close_many(fds, n_fds);
                return 0;
        }
        json_object *p = state_reply(t, "running"), *preview = json_object_object_get(m, "preview");
        json_object_object_add(p, "step", json_object_get(json_object_object_get(m, "step")));
        json_object_object_add(p, "steps", json_object_get(json_object_object_get(m, "steps")));
        if (preview && n_fds == 1) {
                json_object *pv = NULL;
                json_object_deep_copy(preview, &pv, NULL);
                json_object_object_add(pv, "fd", json_object_new_int(0));
                json_object_object_add(p, "preview", pv);
                return gh_request_notify_fds(t->req, p, fds, 1);
        }
        gh_close_many(fds, n_fds);
        return gh_request_notify(t->req, p);
}

static int on_done(gh_task *t, json_object *m, int *fds, size_t n_fds) {
        json_object *outs = json_object_object_get(m, "outputs");
        size_t n = json_object_is_type(outs, json_type_array) ? json_object_array_length(outs) : 0;

        if (n != n_fds) {
                gh_close_many(fds, n_fds);
                return -EBADMSG;
        }
        t->w->jobs_done++;
        t->w->backoff = 0;
        if (!t->req) {
                gh_close_many(fds, n_fds);
                task_end(t);
                return 0;
        }
        json_object *p = state_reply(t, "done"), *o = NULL;
        json_object_deep_copy(outs, &o, NULL);
        for (size_t i = 0; i < n; i++)
                json_object_object_add(json_object_array_get_idx(o, i), "fd", json_object_new_int64((int64_t) i));
        json_object_object_add(p, "outputs", o);
        json_object_object_add(p, "metadata", json_object_get(json_object_object_get(m, "metadata")));
        json_object_object_add(p, "steps", json_object_new_int64(t->steps));
        gh_log_debug("Job %s (%s) done: %zu output(s)", t->id, t->pipeline, n);
        gh_request_reply_fds(take_req(t), p, fds, n_fds);
        task_end(t);
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
        if (gh_streq(type, "estimated") && t->state == TASK_ESTIMATING) {
                gh_close_many(fds, n_fds);
                on_estimated(t, m);
        } else if (gh_streq(type, "progress") && t->state == TASK_RUNNING)
                r = on_progress(t, m, fds, n_fds);
        else if (gh_streq(type, "done") && t->state == TASK_RUNNING)
                r = on_done(t, m, fds, n_fds);
        else if (gh_streq(type, "failed") && (t->state == TASK_RUNNING || t->state == TASK_ESTIMATING)) {
                gh_close_many(fds, n_fds);
                task_failed(t, json_object_get_string(json_object_object_get(m, "error")) ?: "EIO",
                            json_object_get_string(json_object_object_get(m, "message")) ?: "failed");
        } else if (gh_streq(type, "cancelled") && t->state == TASK_RUNNING) {
                gh_close_many(fds, n_fds);
                if (t->req)
                        task_failed(t, "ECANCELED", "cancelled");
                else
                        task_end(t);
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
        task_unref_models(t);
        if (t->req && p && p->retry_safe && !t->retried && !quarantined && !t->loads_pending) {
                gh_log_notice("Job %s (%s): its worker died (%s); running it again", t->id, t->pipeline, reason);
                t->retried = true;
                t->n_models = 0;
                queue_push(w, t, true);
                return;
        }
        json_object *e = obj1("pipeline", json_object_new_string(t->pipeline));
        json_object_object_add(e, "pid", json_object_new_int64(w->pid));
        json_object_object_add(e, "signal", signal ? json_object_new_string(sigabbrev_np(signal) ?: "?") : NULL);
        json_object_object_add(e, "exit_status", exit_status >= 0 ? json_object_new_int64(exit_status) : NULL);
        json_object_object_add(e, "reason", json_object_new_string(reason));
        t->w = NULL;
        if (t->req)
                gh_request_error(take_req(t), "io.gpuhost.WorkerCrashed", e);
        else
                json_object_put(e);
        task_free(t);
}

void gh_tasks_worker_free(gh_worker *w) {
        gh_task *t;

        while ((t = w->queue_head)) {
                queue_remove(w, t);
                take_req(t);
                task_free(t);
        }
        if ((t = w->task)) {
                w->task = NULL;
                take_req(t);
                t->w = NULL;
                task_free(t);
        }
}

/* ---- submitting ---- */

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
static gh_worker *place(gh_workers *ws, gh_pipeline *p, json_object *params, json_object *device) {
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

int gh_task_submit(gh_workers *ws, gh_request *req, json_object *params) {
        const char *name = json_object_get_string(json_object_object_get(params, "pipeline"));
        json_object *device = json_object_object_get(params, "device");
        gh_pipeline *p = gh_workers_pipeline(ws, name);
        char pname[GH_PLUGIN_NAME_MAX + 8], reason[512];
        json_object *norm = NULL;
        const int *fds;
        size_t n_fds = gh_request_fds(req, &fds);

        if (!p || !p->devices)
                return gh_request_error(req, "io.gpuhost.PipelineNotFound", obj1("pipeline", json_object_new_string(name)));
        if (p->quarantined) {
                json_object *e = obj1("pipeline", json_object_new_string(name));
                json_object_object_add(e, "crashes", json_object_new_int64(p->crashes));
                return gh_request_error(req, "io.gpuhost.PluginQuarantined", e);
        }
        int r = gh_params_validate(p->table, json_object_object_get(params, "parameters"), n_fds, &norm, pname,
                                   sizeof(pname), reason, sizeof(reason));
        if (r == -EINVAL)
                return gh_request_invalid_parameter(req, pname[0] ? pname : "parameters", reason);
        if (r < 0)
                return r;
        gh_worker *w = place(ws, p, norm, device);
        if (!w || (device && (w->device >= 64 || !(p->devices & (UINT64_C(1) << w->device))))) {
                json_object *e = obj1("device", json_object_new_int64(device ? json_object_get_int64(device) : -1));
                json_object_object_add(e, "reason", json_object_new_string(w ? "its worker does not offer this pipeline"
                                                                           : "no worker serves that device"));
                json_object_put(norm);
                return gh_request_error(req, "io.gpuhost.DeviceUnavailable", e);
        }
        gh_task *t = calloc(1, sizeof(*t));
        if (!t || !(t->pipeline = strdup(name))) {
                free(t);
                json_object_put(norm);
                return -ENOMEM;
        }
        t->ws = ws;
        t->params = norm;
        t->req = req;
        snprintf(t->id, sizeof(t->id), "j-%" PRIu64, ++ws->next_task_id);
        if (n_fds) {
                t->fds = calloc(n_fds, sizeof(int));
                for (size_t i = 0; t->fds && i < n_fds; i++, t->n_fds++)
                        if ((t->fds[i] = fcntl(fds[i], F_DUPFD_CLOEXEC, 3)) < 0)
                                break;
                if (!t->fds || t->n_fds < n_fds) {
                        task_free(t);
                        return -ENOMEM;
                }
        }
        gh_request_set_cancel(req, on_cancel, t);
        queue_push(w, t, false);
        gh_log_debug("Job %s (%s) queued on worker %u (device %u)", t->id, name, w->id, w->device);
        if (gh_request_more(req))
                gh_request_notify(req, state_reply(t, "queued"));
        task_next(w);
        return 0;
}

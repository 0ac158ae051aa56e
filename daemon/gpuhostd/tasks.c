/* Tasks on workers: estimates, the device run queues, admission against
 * the ledger, model loads, slices, the worker's messages, the per-step
 * watchdog, and worker deaths. See tasks.h and docs/scheduler.md. */
#include <fcntl.h>
#include <inttypes.h>
#include <string.h>

#include "../common/log.h"
#include "../common/util.h"
#include "../common/worker-proto.h"
#include "gpuhost/protocol.h"
#include "tasks.h"

#define ENTITIES_MAX 1024

static void dispatch(gh_worker *w);
static void rebalance(gh_worker *w);

static json_object *obj1(const char *k, json_object *v) {
        json_object *o = json_object_new_object();

        json_object_object_add(o, k, v);
        return o;
}

static bool worker_up(const gh_worker *w) {
        return w->state == GH_WORKER_IDLE || w->state == GH_WORKER_BUSY;
}

static void release_models(gh_task *t) {
        for (unsigned i = 0; i < t->n_models; i++)
                if (t->res[i]) {
                        gh_resident_unref(t->res[i]);
                        t->res[i] = NULL;
                }
}

bool gh_task_idle(const gh_task *t) {
        return !t->bound && t->loads_pending == 0 && t->phase != GH_TASK_QUEUED && t->phase != GH_TASK_ESTIMATING &&
               t->phase != GH_TASK_NEW;
}

/* ---- lists ---- */

static void list_push(gh_task **head, gh_task *t) {
        t->next = *head;
        *head = t;
}

static bool list_remove(gh_task **head, gh_task *t) {
        for (gh_task **p = head; *p; p = &(*p)->next)
                if (*p == t) {
                        *p = t->next;
                        t->next = NULL;
                        return true;
                }
        return false;
}

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

/* ---- entities: round robin between clients within a class ---- */

typedef struct gh_entity {
        uid_t uid;
        uint64_t served;
} gh_entity;

static gh_entity *entity(gh_workers *ws, uid_t uid) {
        for (size_t i = 0; i < ws->n_entities; i++)
                if (ws->entities[i].uid == uid)
                        return &ws->entities[i];
        if (ws->n_entities == ENTITIES_MAX) { /* forget the one served longest ago */
                size_t old = 0;
                for (size_t i = 1; i < ws->n_entities; i++)
                        if (ws->entities[i].served < ws->entities[old].served)
                                old = i;
                ws->entities[old] = (gh_entity) {.uid = uid};
                return &ws->entities[old];
        }
        gh_entity *e = realloc(ws->entities, (ws->n_entities + 1) * sizeof(*e));
        if (!e)
                return NULL;
        ws->entities = e;
        e[ws->n_entities] = (gh_entity) {.uid = uid};
        return &e[ws->n_entities++];
}

static uint64_t entity_served(gh_workers *ws, uid_t uid) {
        gh_entity *e = entity(ws, uid);
        return e ? e->served : 0;
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

/* The next task to run: the best class; within it the client served
 * longest ago; its oldest task (a retried task was put back first). */
static gh_task *queue_pick(gh_worker *w) {
        uint64_t now = gh_now_usec(CLOCK_MONOTONIC);
        gh_task *best = NULL;
        int best_class = 0;
        uint64_t best_served = 0;

        for (gh_task *t = w->queue_head; t; t = t->next) {
                int c = t->retried ? -1 : effective_class(t, now);
                uint64_t served = entity_served(t->ws, t->uid);
                if (!best || c < best_class || (c == best_class && served < best_served)) {
                        best = t;
                        best_class = c;
                        best_served = served;
                }
        }
        return best;
}

/* ---- estimates ---- */

static gh_worker *pick_estimator(gh_workers *ws, const gh_task *t) {
        gh_pipeline *p = gh_workers_pipeline(ws, t->pipeline);

        for (unsigned i = 0; p && i < ws->n_workers; i++) {
                gh_worker *w = &ws->workers[i];
                if (worker_up(w) && w->device < 64 && (p->devices & (UINT64_C(1) << w->device)) &&
                    (t->want_device < 0 || (unsigned) t->want_device == w->device))
                        return w;
        }
        return NULL;
}

/* ---- the estimate cache ----
 *
 * estimate() is pure (the plugin ABI says so), so its answer for a
 * pipeline and the same normalized parameters is kept: a repeated request
 * skips the round trip to a worker. Dropped whenever a worker says hello
 * (its plugins may have changed), and when a reload changes a model's
 * catalogue entry (estimates may read its tensor table). */

#define ESTIMATES_MAX 128
#define ESTIMATE_KEY_MAX 4096

typedef struct gh_estimate {
        char *key;
        json_object *needs;
        uint64_t used;
} gh_estimate;

static char *estimate_key(const gh_task *t) {
        const char *p = json_object_to_json_string_ext(t->params, JSON_C_TO_STRING_PLAIN);
        char *key = NULL;

        if (strlen(p) + strlen(t->pipeline) > ESTIMATE_KEY_MAX || asprintf(&key, "%s\n%s", t->pipeline, p) < 0)
                return NULL;
        return key;
}

static json_object *estimate_lookup(gh_workers *ws, const gh_task *t) {
        _cleanup_free_ char *key = estimate_key(t);

        for (size_t i = 0; key && i < ws->n_estimates; i++)
                if (strcmp(ws->estimates[i].key, key) == 0) {
                        ws->estimates[i].used = ++ws->estimate_clock;
                        return ws->estimates[i].needs;
                }
        return NULL;
}

static void estimate_store(gh_workers *ws, const gh_task *t, json_object *needs) {
        char *key = estimate_key(t);
        size_t i = ws->n_estimates;

        if (!key)
                return;
        if (i == ESTIMATES_MAX) { /* the least recently used goes */
                i = 0;
                for (size_t k = 1; k < ws->n_estimates; k++)
                        if (ws->estimates[k].used < ws->estimates[i].used)
                                i = k;
                free(ws->estimates[i].key);
                json_object_put(ws->estimates[i].needs);
        } else {
                gh_estimate *v = realloc(ws->estimates, (i + 1) * sizeof(*v));
                if (!v) {
                        free(key);
                        return;
                }
                ws->estimates = v;
                ws->n_estimates++;
        }
        ws->estimates[i] = (gh_estimate) {.key = key, .needs = json_object_get(needs), .used = ++ws->estimate_clock};
}

void gh_tasks_forget_estimates(gh_workers *ws) {
        for (size_t i = 0; i < ws->n_estimates; i++) {
                free(ws->estimates[i].key);
                json_object_put(ws->estimates[i].needs);
        }
        free(ws->estimates);
        ws->estimates = NULL;
        ws->n_estimates = 0;
}

static void estimated(gh_task *t, json_object *needs);

/* The models of the task's model parameters (defaults included), each
 * with the tensor table the catalogue planned for it (none if its headers
 * could not be read; an unknown model is left out): what the plugin's
 * estimate() reads through model_tensor. */
static json_object *estimate_models(const gh_task *t) {
        gh_pipeline *p = gh_workers_pipeline(t->ws, t->pipeline);
        json_object *a = json_object_new_array(), *seen = json_object_new_object();
        size_t n = p && json_object_is_type(p->table, json_type_array) ? json_object_array_length(p->table) : 0;

        for (size_t i = 0; i < n; i++) {
                json_object *q = json_object_array_get_idx(p->table, i);
                if (!gh_streq(json_object_get_string(json_object_object_get(q, "type")), "model"))
                        continue;
                const char *param = json_object_get_string(json_object_object_get(q, "name"));
                json_object *v = json_object_object_get(t->params, param ?: "");
                const char *name = json_object_is_type(v, json_type_string) ? json_object_get_string(v) : NULL;
                if (!name || json_object_object_get_ex(seen, name, NULL))
                        continue;
                gh_model *m = gh_store_find(t->ws->engine->store, name);
                if (!m)
                        continue;
                json_object_object_add(seen, name, NULL);
                json_object *o = obj1("name", json_object_new_string(name)), *tensors = gh_model_tensors_json(m);
                if (tensors)
                        json_object_object_add(o, "tensors", json_object_get(tensors));
                json_object_array_add(a, o);
        }
        json_object_put(seen);
        return a;
}

static bool send_estimate(gh_task *t) {
        gh_worker *w = pick_estimator(t->ws, t);

        if (!w)
                return false;
        json_object *m = obj1("type", json_object_new_string("estimate"));
        json_object_object_add(m, "job", json_object_new_string(t->id));
        json_object_object_add(m, "pipeline", json_object_new_string(t->pipeline));
        json_object_object_add(m, "params", json_object_get(t->params));
        json_object_object_add(m, "models", estimate_models(t));
        t->est_w = w;
        t->phase = GH_TASK_ESTIMATING;
        list_push(&w->estimating, t);
        gh_worker_send(w, m, NULL, 0);
        return true;
}

int gh_task_submit(gh_task *t) {
        json_object *needs = estimate_lookup(t->ws, t);

        if (needs) {
                t->phase = GH_TASK_OFF;
                estimated(t, json_object_get(needs));
                return 1;
        }
        if (send_estimate(t))
                return 1;
        t->phase = GH_TASK_NEW;
        list_push(&t->ws->unestimated, t);
        return 0;
}

/* Reads the estimate into |t|; -ENOENT with the model's name if one is
 * unknown. */
static int read_needs(gh_task *t, json_object *needs, const char **ret_missing) {
        json_object *models = json_object_object_get(needs, "models");
        gh_store *store = t->ws->engine->store;

        t->steps = (uint32_t) json_object_get_int64(json_object_object_get(needs, "steps"));
        t->ws_cpu = (uint64_t) json_object_get_int64(json_object_object_get(needs, "workspace_cpu"));
        t->ws_cuda = (uint64_t) json_object_get_int64(json_object_object_get(needs, "workspace_cuda"));
        t->slice_sms = (uint32_t) json_object_get_int64(json_object_object_get(needs, "slice_sms"));
        t->step_timeout_ms = (uint32_t) json_object_get_int64(json_object_object_get(needs, "step_timeout_ms"));
        t->n_models = 0;
        for (size_t i = 0; i < json_object_array_length(models) && i < GH_PLUGIN_MODELS_MAX; i++) {
                const char *name = json_object_get_string(json_object_array_get_idx(models, i));
                gh_model *model = gh_store_find(store, name ?: "");
                if (!model) {
                        *ret_missing = name ?: "";
                        return -ENOENT;
                }
                bool dup = false;
                for (unsigned k = 0; k < t->n_models; k++)
                        dup |= t->models[k] == model;
                if (!dup)
                        t->models[t->n_models++] = model;
        }
        return 0;
}

/* The estimate came back: place the task and queue it. */
static void on_estimated(gh_task *t, json_object *m) {
        json_object *needs = json_object_object_get(m, "needs");

        list_remove(&t->est_w->estimating, t);
        t->est_w = NULL;
        t->phase = GH_TASK_OFF;
        if (t->state >= GH_JOB_DONE) {
                gh_job_unbound(t);
                return;
        }
        if (!needs) {
                gh_job_fail(t, json_object_get_string(json_object_object_get(m, "error")) ?: "EIO",
                            json_object_get_string(json_object_object_get(m, "message")) ?: "estimate failed");
                gh_job_unbound(t);
                return;
        }
        estimate_store(t->ws, t, needs);
        estimated(t, json_object_get(needs));
}

/* The estimate is known (takes |needs|): place the task and queue it. */
static void estimated(gh_task *t, json_object *needs) {
        json_object *params = NULL;
        const char *missing = NULL, *error = NULL;
        gh_worker *w;
        int r = read_needs(t, needs, &missing);

        if (r < 0) {
                gh_job_finish_error(t, GH_JOB_FAILED, GH_ERROR_MODEL_NOT_FOUND, obj1("model", json_object_new_string(missing)));
                json_object_put(needs);
                gh_job_unbound(t);
                return;
        }
        json_object_put(needs);
        if (gh_sched_place(t->ws, t, &w, &error, &params) < 0) {
                gh_job_finish_error(t, GH_JOB_FAILED, error, params);
                gh_job_unbound(t);
                return;
        }
        gh_log_debug("Job %s (%s, %s) placed on device %u: %s", t->id, t->pipeline,
                     t->priority == GH_PRIORITY_INTERACTIVE ? "interactive" : t->priority == GH_PRIORITY_BATCH ? "batch" : "normal",
                     w->device, t->placement);
        gh_sched_metric_placed(t->placement_kind);
        t->queued_mono = gh_now_usec(CLOCK_MONOTONIC);
        queue_push(w, t, false);
        gh_job_queued(t);
        if (t->phase == GH_TASK_QUEUED) /* not cancelled by a watcher's going */
                dispatch(w);
}

/* ---- admission ---- */

static void task_unlink_bound(gh_worker *w, gh_task *t) {
        for (gh_task **p = &w->bound; *p; p = &(*p)->run_next)
                if (*p == t) {
                        *p = t->run_next;
                        break;
                }
        t->run_next = NULL;
}

static void disarm_watchdog(gh_task *t) {
        t->step_timer = sd_event_source_disable_unref(t->step_timer);
}

/* The task lets go of its device: reservation, units, models. */
static void unbind(gh_task *t) {
        gh_worker *w = t->w;

        disarm_watchdog(t);
        t->phase = GH_TASK_OFF;
        if (t->bound) {
                gh_sched_account(w);
                t->bound = false;
                task_unlink_bound(w, t);
                w->n_bound--;
                w->workspaces -= t->workspace;
                w->units_free |= t->units;
                t->units = t->units_sent = 0;
                if (w->n_bound == 0 && w->state == GH_WORKER_BUSY)
                        w->state = GH_WORKER_IDLE;
                gh_sched_update_limit(w);
        }
        release_models(t);
        gh_job_unbound(t); /* may free t */
        if (w)
                dispatch(w);
}

static void on_model_loaded(gh_resident *res, int r, const char *reason, void *userdata);

/* Back to the head of its queue without its reservation; it is admitted
 * again when something on the device ends. */
static void requeue(gh_task *t) {
        gh_worker *w = t->w;

        gh_sched_account(w);
        t->bound = false;
        t->load_nospc = false;
        task_unlink_bound(w, t);
        w->n_bound--;
        w->workspaces -= t->workspace;
        gh_sched_update_limit(w);
        release_models(t);
        t->retried = true;
        queue_push(w, t, true);
}

static void start_loads(gh_task *t) {
        gh_store *store = t->ws->engine->store;

        t->phase = GH_TASK_LOADING;
        /* Count every load first: a resident model calls back at once. */
        t->loads_pending = t->n_models + 1;
        for (unsigned i = 0; i < t->n_models; i++) {
                int r = gh_store_load(store, t->models[i], t->w->device, on_model_loaded, t);
                if (r < 0)
                        on_model_loaded(NULL, r, "cannot start loading", t);
        }
        on_model_loaded(NULL, 0, NULL, t); /* the extra count */
}

/* Admits the task if it fits the device now. */
static bool admit(gh_worker *w, gh_task *t) {
        uint64_t need, avail;

        gh_sched_fit(w, t, &need, &avail);
        if (need > avail) {
                if (!t->wait_logged)
                        gh_sched_metric_wait(w->device, "memory");
                if (!t->wait_logged)
                        gh_log_debug("Job %s waits on device %u for memory: needs %" PRIu64 " MiB, %" PRIu64 " MiB free",
                                     t->id, w->device, (need + (1 << 20) - 1) >> 20, avail >> 20);
                t->wait_logged = true;
                return false;
        }
        queue_remove(w, t);
        gh_entity *e = entity(t->ws, t->uid);
        if (e)
                e->served = ++t->ws->served_clock;
        t->bound = true;
        t->workspace = w->cuda ? t->ws_cuda : t->ws_cpu;
        t->run_next = NULL;
        gh_task **p = &w->bound;
        while (*p)
                p = &(*p)->run_next;
        *p = t;
        w->n_bound++;
        w->workspaces += t->workspace;
        w->state = GH_WORKER_BUSY;
        gh_sched_update_limit(w);
        start_loads(t);
        return true;
}

static unsigned device_concurrency(const gh_worker *w) {
        unsigned n = w->ws->config->jobs_per_device;
        return w->units && w->units < n ? w->units : n;
}

static void dispatch(gh_worker *w) {
        if (!worker_up(w) || !w->units)
                return;
        while (w->queue_head && w->n_bound < device_concurrency(w)) {
                gh_task *t = queue_pick(w);
                if (!admit(w, t))
                        break; /* no bypassing: the best task goes first */
        }
        rebalance(w);
}

/* ---- running ---- */

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

static int on_step_timeout(sd_event_source *es, uint64_t usec, void *userdata) {
        gh_task *t = userdata;
        char why[200];

        snprintf(why, sizeof(why), "job %s (%s): step %u of %u ran longer than %.1f s", t->id, t->pipeline, t->step + 1,
                 t->steps, t->step_timeout_ms ? t->step_timeout_ms / 1e3 : t->ws->config->step_timeout_usec / 1e6);
        disarm_watchdog(t);
        gh_worker_kill(t->w, why);
        return 0;
}

/* (Re)arms the step watchdog: the plugin's timeout, else the config's. */
static void arm_watchdog(gh_task *t) {
        uint64_t usec = t->step_timeout_ms ? (uint64_t) t->step_timeout_ms * USEC_PER_MSEC : t->ws->config->step_timeout_usec;

        if (usec == 0)
                return;
        if (t->step_timer)
                sd_event_source_set_time_relative(t->step_timer, usec);
        else
                sd_event_add_time_relative(t->ws->event, &t->step_timer, CLOCK_MONOTONIC, usec, USEC_PER_MSEC,
                                           on_step_timeout, t);
}

/* Models resident, units given: map the slabs and run. */
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
                json_object_object_add(o, "sha256", json_object_new_string(gh_resident_sha256(t->res[i])));
                json_object_object_add(o, "bytes", json_object_new_int64((int64_t) gh_resident_bytes(t->res[i])));
                json_object_array_add(models, o);
        }
        if (t->n_fds && (fds = calloc(t->n_fds, sizeof(int))))
                for (size_t i = 0; i < t->n_fds; i++)
                        if ((fds[i] = fcntl(t->fds[i], F_DUPFD_CLOEXEC, 3)) < 0) {
                                gh_close_many(fds, i);
                                free(fds);
                                fds = NULL;
                                break;
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
        json_object_object_add(m, "units", json_object_new_int64((int64_t) t->units));
        json_object_object_add(m, "max_output_bytes", json_object_new_int64((int64_t) t->ws->config->max_output_size));
        t->phase = GH_TASK_RUNNING;
        t->started_mono = t->step_mono = gh_now_usec(CLOCK_MONOTONIC);
        gh_sched_metric_started(t);
        gh_log_debug("Job %s (%s) running on device %u with %d of %u units", t->id, t->pipeline, w->device,
                     __builtin_popcountll(t->units), w->units);
        gh_worker_send(w, m, fds, fds ? t->n_fds : 0);
        free(fds);
        arm_watchdog(t);
        gh_job_running(t);
}

static void on_model_loaded(gh_resident *res, int r, const char *reason, void *userdata) {
        gh_task *t = userdata;
        unsigned i;

        t->loads_pending--;
        if (!t->bound) { /* the task let go of its device while this load ran */
                if (t->loads_pending == 0 && t->state < GH_JOB_DONE && t->phase == GH_TASK_OFF && t->w) {
                        queue_push(t->w, t, true); /* its worker died before it ran */
                        dispatch(t->w);
                } else
                        gh_job_unbound(t);
                return;
        }
        if (res || r < 0) {
                /* Which model: on success the one now resident as |res|, on
                 * failure the first still without a resident copy. */
                for (i = 0; i < t->n_models; i++)
                        if (!t->res[i] && (r < 0 || gh_model_resident(t->models[i], t->w->device) == res))
                                break;
                if (r >= 0 && i < t->n_models) {
                        gh_resident_ref(res);
                        t->res[i] = res;
                } else if (r < 0 && t->state < GH_JOB_DONE) {
                        if (r == -ENOSPC && t->w->n_bound > 1) {
                                /* The pool is fuller than the ledger said (pieces
                                 * too small): wait until another job ends. */
                                gh_log_debug("Job %s: no room to load %s on device %u yet; back to the queue", t->id,
                                             i < t->n_models ? gh_model_name(t->models[i]) : "?", t->w->device);
                                t->load_nospc = true;
                        } else {
                                json_object *p = obj1("model", json_object_new_string(i < t->n_models ? gh_model_name(t->models[i]) : "?"));
                        json_object_object_add(p, "device", json_object_new_int64(t->w->device));
                        json_object_object_add(p, "reason", json_object_new_string(reason ? reason : strerror(-r)));
                                gh_job_finish_error(t, GH_JOB_FAILED, GH_ERROR_MODEL_LOAD_FAILED, p);
                        }
                }
        }
        if (t->loads_pending)
                return;
        if (t->state >= GH_JOB_DONE) {
                unbind(t);
                return;
        }
        if (t->load_nospc) {
                requeue(t);
                return;
        }
        for (i = 0; i < t->n_models; i++)
                if (!t->res[i])
                        return; /* a failure ended it already */
        t->phase = GH_TASK_READY;
        rebalance(t->w);
}

/* ---- slices ---- */

static void send_slice(gh_task *t, uint64_t units) {
        json_object *m = obj1("type", json_object_new_string("slice"));

        json_object_object_add(m, "job", json_object_new_string(t->id));
        json_object_object_add(m, "units", json_object_new_int64((int64_t) units));
        t->units_sent = units;
        gh_worker_send(t->w, m, NULL, 0);
}

/* The lowest |n| units of |mask|. */
static uint64_t lowest_units(uint64_t mask, unsigned n) {
        uint64_t r = 0;

        for (unsigned k = 0; k < n && mask; k++) {
                uint64_t bit = mask & -mask;
                r |= bit;
                mask &= ~bit;
        }
        return r;
}

static unsigned unit_cap(const gh_worker *w, const gh_task *t) {
        if (!w->cuda || !t->slice_sms || !w->unit_sms)
                return w->units;
        unsigned n = (t->slice_sms + w->unit_sms - 1) / w->unit_sms;
        return n < 1 ? 1 : n > w->units ? w->units : n;
}

/* Shares the device's units between its ready and running jobs by their
 * weights: shrinks (taken at the job's next step), grows, and starts
 * ready jobs with the units free. */
static void rebalance(gh_worker *w) {
        gh_task *v[GH_WORKER_MAX_JOBS];
        unsigned weights[GH_WORKER_MAX_JOBS], caps[GH_WORKER_MAX_JOBS], target[GH_WORKER_MAX_JOBS], n = 0;

        if (!w->units || !worker_up(w))
                return;
        for (gh_task *t = w->bound; t && n < GH_WORKER_MAX_JOBS; t = t->run_next)
                if ((t->phase == GH_TASK_READY || t->phase == GH_TASK_RUNNING) && t->state < GH_JOB_DONE) {
                        weights[n] = w->ws->config->weight[t->priority];
                        caps[n] = unit_cap(w, t);
                        v[n++] = t;
                }
        if (n == 0)
                return;
        gh_sched_shares(w->units, weights, caps, n, target);
        gh_sched_account(w);
        for (unsigned i = 0; i < n; i++) { /* shrink */
                gh_task *t = v[i];
                unsigned held = (unsigned) __builtin_popcountll(t->units);
                if (t->phase == GH_TASK_RUNNING && t->units_sent == t->units && held > target[i])
                        send_slice(t, lowest_units(t->units, target[i]));
        }
        for (unsigned i = 0; i < n; i++) { /* grow, start */
                gh_task *t = v[i];
                unsigned held = (unsigned) __builtin_popcountll(t->units);
                if (held >= target[i] || !w->units_free || t->units_sent != t->units)
                        continue;
                uint64_t more = lowest_units(w->units_free, target[i] - held);
                w->units_free &= ~more;
                t->units |= more;
                if (t->phase == GH_TASK_RUNNING)
                        send_slice(t, t->units);
                else {
                        t->units_sent = t->units;
                        task_run(t); /* may end tasks: look again */
                        rebalance(w);
                        return;
                }
        }
}

static void on_sliced(gh_task *t, json_object *m) {
        uint64_t u = (uint64_t) json_object_get_int64(json_object_object_get(m, "units"));

        if (u != t->units_sent)
                return; /* an older one */
        gh_sched_account(t->w);
        t->w->units_free |= t->units & ~u;
        t->units = u;
        rebalance(t->w);
}

/* ---- stopping ---- */

void gh_task_stop(gh_task *t) {
        switch (t->phase) {
        case GH_TASK_NEW:
                list_remove(&t->ws->unestimated, t);
                t->phase = GH_TASK_OFF;
                return;
        case GH_TASK_QUEUED:
                queue_remove(t->w, t);
                t->phase = GH_TASK_OFF;
                dispatch(t->w);
                return;
        case GH_TASK_LOADING:
        case GH_TASK_READY:
                unbind(t); /* runs nothing yet: lets go at once (loads come back later) */
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

/* ---- the worker's messages ---- */

static int on_done(gh_task *t, json_object *m, int *fds, size_t n_fds) {
        json_object *outs = json_object_object_get(m, "outputs"), *timing = json_object_object_get(m, "timing");
        size_t n = json_object_is_type(outs, json_type_array) ? json_object_array_length(outs) : 0;

        if (n != n_fds) {
                gh_close_many(fds, n_fds);
                return -EBADMSG;
        }
        t->w->jobs_done++;
        t->w->backoff = 0;
        t->first_step_mono = (uint64_t) json_object_get_int64(json_object_object_get(timing, "first_step_usec"));
        t->last_step_mono = (uint64_t) json_object_get_int64(json_object_object_get(timing, "last_step_usec"));
        if (t->last_step_mono > t->step_mono && t->step < t->steps) { /* the last step: "done" tells it */
                gh_sched_step_done(t, t->last_step_mono - t->step_mono);
                gh_sched_metric_step(t, t->last_step_mono - t->step_mono);
        }
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

static void on_progress(gh_task *t, json_object *m, int *fds, size_t n_fds) {
        uint64_t now = gh_now_usec(CLOCK_MONOTONIC);
        uint32_t step = (uint32_t) json_object_get_int64(json_object_object_get(m, "step"));

        if (step > t->step) {
                gh_sched_step_done(t, (now - t->step_mono) / (step - t->step));
                gh_sched_metric_step(t, (now - t->step_mono) / (step - t->step));
                t->step_mono = now;
                t->step = step;
                arm_watchdog(t);
        }
        gh_job_progress(t, m, fds, n_fds);
}

static gh_task *find_task(gh_worker *w, const char *id, bool estimate) {
        for (gh_task *t = estimate ? w->estimating : w->bound; id && t; t = estimate ? t->next : t->run_next)
                if (strcmp(t->id, id) == 0)
                        return t;
        return NULL;
}

int gh_tasks_worker_message(gh_worker *w, const char *type, json_object *m, int *fds, size_t n_fds) {
        const char *job = json_object_get_string(json_object_object_get(m, "job"));
        bool estimate = gh_streq(type, "estimated");
        gh_task *t = find_task(w, job, estimate);
        int r = 0;

        if (!t || (!estimate && t->phase != GH_TASK_RUNNING)) {
                gh_close_many(fds, n_fds);
                free(fds);
                return -EPROTO;
        }
        if (estimate) {
                gh_close_many(fds, n_fds);
                on_estimated(t, m);
        } else if (gh_streq(type, "progress"))
                on_progress(t, m, fds, n_fds); /* closes the fds; the array is freed below */
        else if (gh_streq(type, "sliced")) {
                gh_close_many(fds, n_fds);
                on_sliced(t, m);
        } else if (gh_streq(type, "done"))
                r = on_done(t, m, fds, n_fds);
        else if (gh_streq(type, "failed")) {
                gh_close_many(fds, n_fds);
                gh_job_fail(t, json_object_get_string(json_object_object_get(m, "error")) ?: "EIO",
                            json_object_get_string(json_object_object_get(m, "message")) ?: "failed");
                unbind(t);
        } else if (gh_streq(type, "cancelled")) {
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

/* ---- workers coming and going ---- */

void gh_tasks_worker_ready(gh_worker *w) {
        gh_workers *ws = w->ws;
        gh_task *pending = ws->unestimated;

        w->units_free = w->units >= 64 ? UINT64_MAX : (UINT64_C(1) << w->units) - 1;
        w->busy_mark = gh_now_usec(CLOCK_MONOTONIC);
        gh_tasks_forget_estimates(ws);
        ws->unestimated = NULL;
        while (pending) { /* oldest first: the list is newest first */
                gh_task *t = pending, *prev = NULL;
                while (t->next) {
                        prev = t;
                        t = t->next;
                }
                if (prev)
                        prev->next = NULL;
                else
                        pending = NULL;
                if (!send_estimate(t))
                        list_push(&ws->unestimated, t);
        }
        dispatch(w);
}

static void crash_error(gh_task *t, gh_worker *w, int signal, int exit_status, const char *reason) {
        json_object *e = obj1("pipeline", json_object_new_string(t->pipeline));

        json_object_object_add(e, "pid", json_object_new_int64(w->pid));
        json_object_object_add(e, "signal", signal ? json_object_new_string(sigabbrev_np(signal) ?: "?") : NULL);
        json_object_object_add(e, "exit_status", exit_status >= 0 ? json_object_new_int64(exit_status) : NULL);
        json_object_object_add(e, "reason", json_object_new_string(reason));
        gh_job_finish_error(t, GH_JOB_FAILED, "io.gpuhost.WorkerCrashed", e);
}

/* A bound task whose worker died: run again (retry-safe), or fail. */
static void task_orphaned(gh_task *t, gh_worker *w, int signal, int exit_status, const char *reason, bool quarantined) {
        gh_pipeline *p = gh_workers_pipeline(w->ws, t->pipeline);
        bool was_running = t->phase == GH_TASK_RUNNING;

        disarm_watchdog(t);
        t->bound = false;
        t->run_next = NULL;
        t->units = t->units_sent = 0;
        release_models(t);
        if (t->state >= GH_JOB_DONE || !was_running) {
                t->phase = GH_TASK_OFF;
                if (t->state < GH_JOB_DONE && !t->loads_pending) { /* admitted, not started: queue again */
                        queue_push(w, t, true);
                        return;
                }
                if (!t->loads_pending)
                        gh_job_unbound(t);
                return;
        }
        if (p && p->retry_safe && !t->retried && !quarantined && !t->loads_pending) {
                gh_log_notice("Job %s (%s): its worker died (%s); running it again", t->id, t->pipeline, reason);
                t->retried = true;
                t->cancel_sent = false;
                t->step = 0;
                queue_push(w, t, true);
                return;
        }
        crash_error(t, w, signal, exit_status, reason);
        t->phase = GH_TASK_OFF;
        gh_job_unbound(t);
}

void gh_tasks_worker_died(gh_worker *w, int signal, int exit_status, const char *reason) {
        gh_task *t, *est = w->estimating;
        bool requested = gh_streq(reason, "restarted on request");
        bool crashed_running = false;

        for (t = w->bound; t; t = t->run_next)
                crashed_running |= t->phase == GH_TASK_RUNNING;
        gh_sched_account(w);
        /* One crash a death, blamed on the oldest running job's plugin. */
        gh_pipeline *blamed = NULL;
        for (t = w->bound; t && !blamed; t = t->run_next)
                if (t->phase == GH_TASK_RUNNING)
                        blamed = gh_workers_pipeline(w->ws, t->pipeline);
        bool quarantined = blamed && !requested && gh_pipeline_crashed(w->ws, blamed);
        gh_task *bound = w->bound;
        w->bound = NULL;
        w->n_bound = 0;
        w->workspaces = 0;
        w->units = 0; /* known again from the next hello */
        w->units_free = 0;
        gh_sched_update_limit(w);
        while ((t = bound)) {
                bound = t->run_next;
                task_orphaned(t, w, signal, exit_status, reason, quarantined && crashed_running &&
                              gh_workers_pipeline(w->ws, t->pipeline) == blamed);
        }
        w->estimating = NULL;
        while ((t = est)) { /* estimated again by the next worker up */
                est = t->next;
                t->est_w = NULL;
                t->next = NULL;
                if (t->state >= GH_JOB_DONE) {
                        t->phase = GH_TASK_OFF;
                        gh_job_unbound(t);
                } else if (!send_estimate(t)) {
                        t->phase = GH_TASK_NEW;
                        list_push(&w->ws->unestimated, t);
                }
        }
}

void gh_tasks_worker_free(gh_worker *w) {
        gh_task *t;

        while ((t = w->queue_head)) {
                queue_remove(w, t);
                t->phase = GH_TASK_OFF;
        }
        while ((t = w->estimating)) {
                w->estimating = t->next;
                t->next = NULL;
                t->phase = GH_TASK_OFF;
        }
        while ((t = w->bound)) {
                w->bound = t->run_next;
                t->run_next = NULL;
                t->bound = false;
                t->phase = GH_TASK_OFF;
                disarm_watchdog(t);
                release_models(t);
        }
        while ((t = w->ws->unestimated)) {
                w->ws->unestimated = t->next;
                t->next = NULL;
                t->phase = GH_TASK_OFF;
        }
        w->n_bound = 0;
}

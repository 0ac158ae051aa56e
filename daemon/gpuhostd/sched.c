/* The scheduler's view of devices: the memory ledger (total, reserve,
 * resident weights, reserved workspaces), what a job needs and what a
 * device can give it, placement across devices by expected wait against
 * load time, weighted shares of slice units, and utilisation. The queues
 * and the running of tasks are tasks.c's. See docs/scheduler.md. */
#include <inttypes.h>
#include <math.h>
#include <string.h>

#include "../common/log.h"
#include "../common/util.h"
#include "tasks.h"

#define LOAD_BPS_DEFAULT 1e9     /* until a load has been measured on the device */
#define STEP_USEC_DEFAULT 500000 /* until a step of the pipeline has been measured */
#define EWMA 0.2

static uint64_t round_up(uint64_t v, uint64_t a) {
        return a ? (v + a - 1) / a * a : v;
}

static gh_pool *pool_of(const gh_worker *w) {
        return gh_store_pool(w->ws->engine->store, w->device);
}

/* What the device may use in all: its pool's capacity (the budget in
 * whole slabs). */
static uint64_t capacity(const gh_worker *w) {
        gh_pool_stats st;

        gh_pool_get_stats(pool_of(w), &st);
        return st.capacity;
}

void gh_sched_update_limit(gh_worker *w) {
        uint64_t cap = capacity(w);

        gh_pool_set_limit(pool_of(w), w->workspaces < cap ? cap - w->workspaces : 0);
}

static bool model_present(const gh_model *m, unsigned device) {
        return gh_model_resident(m, device) != NULL; /* loading counts: its space is taken */
}

/* Bytes of |t|'s models that |w| would have to load. */
static uint64_t missing_bytes(const gh_worker *w, const gh_task *t) {
        uint64_t slab = gh_pool_slab_size(pool_of(w)), n = 0;

        for (unsigned i = 0; i < t->n_models; i++)
                if (!model_present(t->models[i], w->device))
                        n += round_up(gh_model_bytes(t->models[i]), slab);
        return n;
}

void gh_sched_fit(gh_worker *w, const gh_task *t, uint64_t *ret_need, uint64_t *ret_avail) {
        gh_pool_stats st;
        uint64_t ws = w->cuda ? t->ws_cuda : t->ws_cpu;
        uint64_t evictable = gh_store_evictable(w->ws->engine->store, w->device, (const gh_model *const *) t->models,
                                                t->n_models);
        uint64_t slab = gh_pool_slab_size(pool_of(w));

        gh_pool_get_stats(pool_of(w), &st);
        uint64_t held = st.reserved - (evictable / slab * slab < st.reserved ? evictable / slab * slab : st.reserved);
        uint64_t taken = held + w->workspaces;
        *ret_need = ws + missing_bytes(w, t);
        *ret_avail = taken < st.capacity ? st.capacity - taken : 0;
}

/* Whether |m| may be loaded on |device| (its [model] devices). */
static bool model_allowed(const gh_model *m, const gh_worker *w) {
        const char *sel = gh_model_devices(m);
        gh_device_selector list[GH_DEVICE_SELECTORS_MAX];
        const char *reason;
        size_t n;

        if (!sel)
                return true;
        if (gh_device_selectors_parse(sel, list, GH_DEVICE_SELECTORS_MAX, &n, &reason) < 0)
                return false;
        for (size_t i = 0; i < n; i++)
                if (list[i].is_uuid ? strcasecmp(list[i].text, w->info->uuid) == 0 : list[i].index == w->device)
                        return true;
        return false;
}

static double step_usec(gh_workers *ws, const gh_task *t) {
        gh_pipeline *p = gh_workers_pipeline(ws, t->pipeline);
        return p && p->step_usec > 0 ? p->step_usec : STEP_USEC_DEFAULT;
}

void gh_sched_step_done(gh_task *t, uint64_t usec) {
        gh_pipeline *p = gh_workers_pipeline(t->ws, t->pipeline);

        if (p)
                p->step_usec = p->step_usec > 0 ? (1 - EWMA) * p->step_usec + EWMA * (double) usec : (double) usec;
}

/* Seconds until a new job could start on |w|: none if a place is free
 * and nothing waits; else the work ahead spread over its places. */
static double expected_wait(const gh_worker *w, const gh_task *t) {
        unsigned places = w->ws->config->jobs_per_device;
        double work = 0;

        if (w->units && w->units < places)
                places = w->units;
        if (!w->units)
                places = 1;
        for (const gh_task *b = w->bound; b; b = b->run_next)
                work += (double) (b->steps > b->step ? b->steps - b->step : 1) * step_usec(w->ws, b);
        for (const gh_task *q = w->queue_head; q; q = q->next)
                work += (double) (q->steps ? q->steps : 1) * step_usec(w->ws, q);
        if (w->n_bound < places && !w->queue_head) {
                uint64_t need, avail;
                gh_sched_fit((gh_worker *) w, t, &need, &avail);
                if (need <= avail)
                        return 0;
        }
        return work / places / 1e6;
}

static double load_seconds(const gh_worker *w, uint64_t bytes) {
        return (double) bytes / (w->load_bps > 0 ? w->load_bps : LOAD_BPS_DEFAULT);
}

typedef struct candidate {
        gh_worker *w;
        bool has;      /* every model present */
        double wait, load, cost;
        uint64_t free; /* memory it has free now */
} candidate;

static bool better(const candidate *a, const candidate *b) {
        if (fabs(a->cost - b->cost) > 1e-6)
                return a->cost < b->cost;
        if (a->has != b->has)
                return a->has;
        if (a->free != b->free)
                return a->free > b->free; /* spreads independent models */
        return a->w->device < b->w->device;
}

static void describe(gh_task *t, const candidate *c, const candidate *holder) {
        t->placement_kind = t->want_device >= 0 ? "requested" : t->n_models == 0 ? "shortest_wait"
                            : c->has ? "resident" : holder ? "second_copy" : "not_resident";
        if (t->want_device >= 0)
                snprintf(t->placement, sizeof(t->placement), "device %u requested", c->w->device);
        else if (t->n_models == 0)
                snprintf(t->placement, sizeof(t->placement), "shortest expected wait (%.2f s) on device %u", c->wait,
                         c->w->device);
        else if (c->has)
                snprintf(t->placement, sizeof(t->placement), "model resident on device %u; expected wait %.2f s",
                         c->w->device, c->wait);
        else if (holder)
                snprintf(t->placement, sizeof(t->placement),
                         "model on device %u would wait %.2f s, longer than loading a second copy on device %u "
                         "(%.2f s, then %.2f s wait)", holder->w->device, holder->wait, c->w->device, c->load, c->wait);
        else
                snprintf(t->placement, sizeof(t->placement),
                         "model not resident anywhere; device %u has the shortest wait and load (%.2f s + %.2f s)",
                         c->w->device, c->wait, c->load);
}

static json_object *too_large(uint64_t need, uint64_t offer, int device) {
        json_object *e = json_object_new_object();
        char why[200];

        snprintf(why, sizeof(why), "needs %" PRIu64 " MiB, the largest device offers %" PRIu64 " MiB",
                 (need + (1 << 20) - 1) >> 20, offer >> 20);
        json_object_object_add(e, "needed_bytes", json_object_new_int64((int64_t) need));
        json_object_object_add(e, "largest_bytes", json_object_new_int64((int64_t) offer));
        json_object_object_add(e, "device", device >= 0 ? json_object_new_int64(device) : NULL);
        json_object_object_add(e, "reason", json_object_new_string(why));
        return e;
}

int gh_sched_place(gh_workers *ws, gh_task *t, gh_worker **ret, const char **ret_error, json_object **ret_params) {
        gh_pipeline *p = gh_workers_pipeline(ws, t->pipeline);
        candidate best = {0}, holder = {0};
        uint64_t big_need = 0, big_offer = 0;
        int big_device = -1;
        bool any_kind = false;

        for (unsigned i = 0; p && i < ws->n_workers; i++) {
                gh_worker *w = &ws->workers[i];
                uint64_t ws_need = w->cuda ? t->ws_cuda : t->ws_cpu, slab = gh_pool_slab_size(pool_of(w)), models = 0;
                bool allowed = true;
                if (w->device >= 64 || !(p->devices & (UINT64_C(1) << w->device)) || ws_need == 0 ||
                    (t->want_device >= 0 && (unsigned) t->want_device != w->device))
                        continue;
                for (unsigned k = 0; k < t->n_models; k++) {
                        allowed &= model_allowed(t->models[k], w);
                        models += round_up(gh_model_bytes(t->models[k]), slab);
                }
                if (!allowed)
                        continue;
                any_kind = true;
                if (ws_need + models > capacity(w)) { /* never fits here */
                        if (capacity(w) >= big_offer) {
                                big_offer = capacity(w);
                                big_need = ws_need + models;
                                big_device = (int) w->device;
                        }
                        continue;
                }
                uint64_t need, avail;
                gh_sched_fit(w, t, &need, &avail);
                candidate c = {.w = w, .has = missing_bytes(w, t) == 0, .wait = expected_wait(w, t),
                               .free = avail};
                c.load = load_seconds(w, missing_bytes(w, t));
                c.cost = c.wait + c.load;
                if (c.has && t->n_models && (!holder.w || c.wait < holder.wait))
                        holder = c;
                if (!best.w || better(&c, &best))
                        best = c;
        }
        if (best.w) {
                describe(t, &best, holder.w && holder.w != best.w ? &holder : NULL);
                *ret = best.w;
                return 0;
        }
        if (any_kind) {
                *ret_error = "io.gpuhost.JobTooLarge";
                *ret_params = too_large(big_need, big_offer, big_device);
                return -E2BIG;
        }
        json_object *e = json_object_new_object();
        json_object_object_add(e, "device", json_object_new_int64(t->want_device));
        json_object_object_add(e, "reason", json_object_new_string(
                t->want_device >= 0 ? "that device does not run this pipeline (or its models may not load there)"
                                    : "no device runs this pipeline with these parameters"));
        *ret_error = "io.gpuhost.DeviceUnavailable";
        *ret_params = e;
        return -ENODEV;
}

/* ---- shares ---- */

void gh_sched_shares(unsigned units, const unsigned *weights, const unsigned *caps, unsigned n, unsigned *ret) {
        unsigned left = units;

        for (unsigned i = 0; i < n; i++) {
                ret[i] = left > 0 ? 1 : 0;
                left -= ret[i];
        }
        while (left > 0) {
                uint64_t total = 0;
                for (unsigned i = 0; i < n; i++)
                        if (ret[i] < caps[i])
                                total += weights[i];
                if (total == 0)
                        return;
                unsigned given = 0, pass = left;
                for (unsigned i = 0; i < n && left > 0; i++) {
                        if (ret[i] >= caps[i])
                                continue;
                        unsigned k = (unsigned) ((uint64_t) pass * weights[i] / total);
                        if (k > caps[i] - ret[i])
                                k = caps[i] - ret[i];
                        if (k > left)
                                k = left;
                        ret[i] += k;
                        left -= k;
                        given += k;
                }
                if (given == 0) { /* rounding: one unit to the heaviest that can take it */
                        unsigned best = n;
                        for (unsigned i = 0; i < n; i++)
                                if (ret[i] < caps[i] && (best == n || weights[i] > weights[best]))
                                        best = i;
                        ret[best]++;
                        left--;
                }
        }
}

void gh_sched_account(gh_worker *w) {
        uint64_t now = gh_now_usec(CLOCK_MONOTONIC);
        uint64_t all = w->units >= 64 ? UINT64_MAX : (UINT64_C(1) << w->units) - 1;
        unsigned busy = (unsigned) __builtin_popcountll(all & ~w->units_free);

        if (w->busy_mark && w->units)
                w->busy_unit_usec += (uint64_t) busy * (now - w->busy_mark);
        w->busy_mark = now;
}

/* ---- status ---- */

static json_object *device_json(gh_worker *w) {
        gh_store *store = w->ws->engine->store;
        json_object *o = json_object_new_object(), *mem = json_object_new_object(), *models = json_object_new_array();
        gh_pool_stats st;

        gh_pool_get_stats(pool_of(w), &st);
        gh_sched_account(w);
        uint64_t used = st.reserved + w->workspaces;
        json_object_object_add(mem, "total", json_object_new_int64((int64_t) w->info->memory_total));
        json_object_object_add(mem, "reserve", json_object_new_int64((int64_t) w->info->reserve_bytes));
        json_object_object_add(mem, "budget", json_object_new_int64((int64_t) st.capacity));
        json_object_object_add(mem, "weights", json_object_new_int64((int64_t) st.reserved));
        json_object_object_add(mem, "workspaces", json_object_new_int64((int64_t) w->workspaces));
        json_object_object_add(mem, "free", json_object_new_int64((int64_t) (used < st.capacity ? st.capacity - used : 0)));
        json_object *ms = gh_store_models_json(store);
        for (size_t i = 0; i < json_object_array_length(ms); i++) {
                json_object *m = json_object_array_get_idx(ms, i), *res = json_object_object_get(m, "resident");
                for (size_t k = 0; k < json_object_array_length(res); k++)
                        if (json_object_get_int64(json_object_object_get(json_object_array_get_idx(res, k), "device")) ==
                            (int64_t) w->device)
                                json_object_array_add(models, json_object_get(json_object_object_get(m, "name")));
        }
        json_object_put(ms);
        uint64_t all = w->units >= 64 ? UINT64_MAX : (UINT64_C(1) << w->units) - 1;
        json_object_object_add(o, "index", json_object_new_int64(w->device));
        json_object_object_add(o, "kind", json_object_new_string(w->cuda ? "cuda" : "cpu"));
        json_object_object_add(o, "name", json_object_new_string(w->info->name));
        json_object_object_add(o, "memory", mem);
        json_object_object_add(o, "units", json_object_new_int64(w->units));
        json_object_object_add(o, "units_busy", json_object_new_int64(__builtin_popcountll(all & ~w->units_free)));
        json_object_object_add(o, "unit_sms", w->cuda && w->unit_sms ? json_object_new_int64(w->unit_sms) : NULL);
        json_object_object_add(o, "running", json_object_new_int64(w->n_bound));
        json_object_object_add(o, "queued", json_object_new_int64(w->queued));
        json_object_object_add(o, "busy_seconds",
                               json_object_new_double(w->units ? (double) w->busy_unit_usec / w->units / 1e6 : 0));
        json_object_object_add(o, "load_bytes_per_second", w->load_bps > 0 ? json_object_new_double(w->load_bps) : NULL);
        json_object_object_add(o, "models", models);
        return o;
}

json_object *gh_sched_devices_json(gh_workers *ws) {
        json_object *a = json_object_new_array();

        for (unsigned i = 0; ws && i < ws->n_workers; i++)
                json_object_array_add(a, device_json(&ws->workers[i]));
        return a;
}

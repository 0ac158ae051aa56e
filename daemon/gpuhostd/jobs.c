/* Jobs as callers see them: ids, watchers, results kept for later,
 * deadlines, queue limits, the [model] parameters defaults a job's
 * parameters start from, and the methods Generate, ListJobs, GetJob,
 * WaitJob and CancelJob. See tasks.h. */
#include <fcntl.h>
#include <inttypes.h>
#include <math.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/stat.h>

#include "../common/base64.h"
#include "../common/log.h"
#include "../common/params.h"
#include "../common/util.h"
#include "daemon.h"
#include "gpuhost/protocol.h"
#include "tasks.h"

#define DEADLINE_MAX_SEC (7.0 * 86400)
#define TAG_MAX 128

/* A connection waiting on a job: the submitter (streaming or not), or a
 * WaitJob call. */
struct gh_watcher {
        gh_task *t;
        gh_request *req;
        bool inline_out;
        bool submitter;  /* its going away cancels the job, unless detached */
        bool awaiting_id; /* a Generate without "more": answered once the job is queued */
        gh_watcher *next;
};

static const char *const priority_names[] = {"interactive", "normal", "batch"};
static const char *const state_names[] = {"queued", "running", "done", "failed", "cancelled"};

static json_object *obj1(const char *k, json_object *v) {
        json_object *o = json_object_new_object();

        json_object_object_add(o, k, v);
        return o;
}

/* ---- the registry ---- */

static void registry_add(gh_workers *ws, gh_task *t) {
        t->all_next = ws->tasks;
        if (ws->tasks)
                ws->tasks->all_prev = t;
        ws->tasks = t;
        ws->n_active++;
}

static void registry_remove(gh_task *t) {
        gh_workers *ws = t->ws;

        if (t->all_prev)
                t->all_prev->all_next = t->all_next;
        else if (ws->tasks == t)
                ws->tasks = t->all_next;
        if (t->all_next)
                t->all_next->all_prev = t->all_prev;
        t->all_prev = t->all_next = NULL;
        if (t->state >= GH_JOB_DONE)
                ws->n_finished--;
        else
                ws->n_active--;
}

static gh_task *registry_find(gh_workers *ws, const char *id) {
        for (gh_task *t = ws->tasks; id && t; t = t->all_next)
                if (strcmp(t->id, id) == 0)
                        return t;
        return NULL;
}

static void task_free(gh_task *t) {
        gh_close_many(t->fds, t->n_fds);
        free(t->fds);
        gh_close_many(t->out_fds, t->n_out_fds);
        free(t->out_fds);
        json_object_put(t->params);
        json_object_put(t->result);
        free(t->error);
        free(t->pipeline);
        free(t->tag);
        free(t);
}

static void watcher_drop(gh_watcher *v);

/* Forgets a finished job (its outputs go); freed once no worker and no
 * load callback refers to it. */
static void task_expire(gh_task *t) {
        if (t->expired)
                return;
        t->expired = true;
        t->deadline_timer = sd_event_source_disable_unref(t->deadline_timer);
        t->expire_timer = sd_event_source_disable_unref(t->expire_timer);
        t->cancel_defer = sd_event_source_disable_unref(t->cancel_defer);
        while (t->watchers)
                watcher_drop(t->watchers);
        registry_remove(t);
        if (gh_task_idle(t))
                task_free(t);
}

void gh_job_unbound(gh_task *t) {
        if (t->expired && gh_task_idle(t))
                task_free(t);
}

static int on_expire(sd_event_source *es, uint64_t usec, void *userdata) {
        task_expire(userdata);
        return 0;
}

/* Keeps at most max_finished finished jobs: the oldest go first. */
static void finished_trim(gh_workers *ws) {
        while (ws->n_finished > ws->config->max_finished) {
                gh_task *oldest = NULL;
                for (gh_task *t = ws->tasks; t; t = t->all_next)
                        if (t->state >= GH_JOB_DONE && (!oldest || t->finished_rt < oldest->finished_rt))
                                oldest = t;
                if (!oldest)
                        return;
                task_expire(oldest);
        }
}

void gh_jobs_free(gh_workers *ws) {
        while (ws->tasks)
                task_expire(ws->tasks);
}

/* ---- replies ---- */

static json_object *state_reply(gh_task *t, const char *state) {
        json_object *o = obj1("job", json_object_new_string(t->id));

        json_object_object_add(o, "state", json_object_new_string(state));
        if (t->w)
                json_object_object_add(o, "device", json_object_new_int64(t->w->device));
        return o;
}

/* The outputs as base64 in "data" (fd -1), or -EFBIG past the limit. The
 * memfds are in memory: mapping them does no blocking I/O. */
static int outputs_inline(gh_task *t, json_object *outs) {
        uint64_t total = 0;

        for (size_t i = 0; i < t->n_out_fds; i++) {
                struct stat st;
                if (fstat(t->out_fds[i], &st) < 0)
                        return gh_negerrno();
                total += (uint64_t) st.st_size;
        }
        if (total > t->ws->config->max_inline_output)
                return -EFBIG;
        for (size_t i = 0; i < t->n_out_fds; i++) {
                json_object *o = json_object_array_get_idx(outs, i);
                size_t size = (size_t) json_object_get_int64(json_object_object_get(o, "size"));
                char *text = malloc(gh_base64_encoded_len(size) + 1);
                void *map = size ? mmap(NULL, size, PROT_READ, MAP_SHARED, t->out_fds[i], 0) : NULL;
                if (!text || map == MAP_FAILED) {
                        free(text);
                        return -ENOMEM;
                }
                gh_base64_encode(map, size, text);
                if (map)
                        munmap(map, size);
                json_object_object_add(o, "data", json_object_new_string(text));
                json_object_object_add(o, "fd", json_object_new_int(-1));
                free(text);
        }
        return 0;
}

/* Sends |v| the job's final result; the watcher is done. */
static void deliver_final(gh_watcher *v) {
        gh_task *t = v->t;
        gh_request *req = v->req;
        json_object *p = NULL;

        json_object_deep_copy(t->result, &p, NULL);
        if (t->state != GH_JOB_DONE) {
                gh_request_error(req, t->error, p);
                return;
        }
        if (v->inline_out) {
                int r = outputs_inline(t, json_object_object_get(p, "outputs"));
                if (r == -EFBIG) {
                        char why[160];
                        json_object_put(p);
                        snprintf(why, sizeof(why), "the outputs are larger than max_inline_output (%" PRIu64 " bytes); ask for \"fd\"",
                                 t->ws->config->max_inline_output);
                        gh_request_invalid_parameter(req, "output", why);
                        return;
                }
                if (r < 0) {
                        json_object_put(p);
                        gh_request_error(req, GH_ERROR_INTERNAL, obj1("reason", json_object_new_string(strerror(-r))));
                        return;
                }
                gh_request_reply(req, p);
                return;
        }
        int fds[GH_VL_MAX_FDS_HARD];
        size_t n = 0;
        for (; n < t->n_out_fds && n < ELEMENTSOF(fds); n++)
                if ((fds[n] = fcntl(t->out_fds[n], F_DUPFD_CLOEXEC, 3)) < 0)
                        break;
        if (n < t->n_out_fds) {
                gh_close_many(fds, n);
                json_object_put(p);
                gh_request_error(req, GH_ERROR_INTERNAL, obj1("reason", json_object_new_string("out of file descriptors")));
                return;
        }
        gh_request_reply_fds(req, p, fds, n);
}

/* ---- watchers ---- */

static void on_watcher_gone(gh_request *req, void *userdata);

static gh_watcher *watcher_add(gh_task *t, gh_request *req, bool inline_out, bool submitter) {
        gh_watcher *v = calloc(1, sizeof(*v));

        if (!v)
                return NULL;
        *v = (gh_watcher) {.t = t, .req = req, .inline_out = inline_out, .submitter = submitter, .next = t->watchers};
        t->watchers = v;
        gh_request_set_cancel(req, on_watcher_gone, v);
        return v;
}

static void watcher_unlink(gh_watcher *v) {
        for (gh_watcher **p = &v->t->watchers; *p; p = &(*p)->next)
                if (*p == v) {
                        *p = v->next;
                        break;
                }
}

/* Ends a watcher's call without a result (the job was forgotten). */
static void watcher_drop(gh_watcher *v) {
        watcher_unlink(v);
        gh_request_set_cancel(v->req, NULL, NULL);
        gh_request_error(v->req, "io.gpuhost.JobNotFound", obj1("job", json_object_new_string(v->t->id)));
        free(v);
}

static void job_cancel(gh_task *t, int reason);

static int on_cancel_deferred(sd_event_source *es, void *userdata) {
        gh_task *t = userdata;

        t->cancel_defer = sd_event_source_disable_unref(t->cancel_defer);
        gh_log_debug("Job %s: its caller went away; cancelling", t->id);
        job_cancel(t, GH_STOP_CANCEL);
        return 0;
}

/* A watcher's connection went away, perhaps in the middle of a reply to
 * it: only this watcher goes now; cancelling the job (which answers the
 * other watchers) waits for the next loop iteration. */
static void on_watcher_gone(gh_request *req, void *userdata) {
        gh_watcher *v = userdata;
        gh_task *t = v->t;
        bool cancel = v->submitter && !t->detach && t->state < GH_JOB_DONE;

        watcher_unlink(v);
        free(v);
        if (cancel && !t->cancel_defer)
                sd_event_add_defer(t->ws->event, &t->cancel_defer, on_cancel_deferred, t);
}

/* A reply may find a connection dead and free that watcher (only that
 * one: a connection has one call at a time), hence |next| first. */
static void notify_all(gh_task *t, json_object *p, int fd) {
        for (gh_watcher *v = t->watchers, *next; v; v = next) {
                next = v->next;
                if (!gh_request_more(v->req))
                        continue;
                int dup = fd >= 0 ? fcntl(fd, F_DUPFD_CLOEXEC, 3) : -1;
                gh_request_notify_fds(v->req, json_object_get(p), dup >= 0 ? &dup : NULL, dup >= 0 ? 1 : 0);
        }
        json_object_put(p);
}

/* ---- the job's course ---- */

static json_object *slice_json(const gh_task *t) {
        if (!t->w || !t->units)
                return NULL;
        json_object *o = json_object_new_object();
        unsigned n = (unsigned) __builtin_popcountll(t->units);
        json_object_object_add(o, "units", json_object_new_int64(n));
        json_object_object_add(o, "of", json_object_new_int64(t->w->units));
        json_object_object_add(o, "mask", json_object_new_int64((int64_t) t->units));
        if (t->w->cuda && t->w->unit_sms) /* every unit: the whole device, the split's remainder too */
                json_object_object_add(o, "sms", json_object_new_int64(n == t->w->units && t->w->info->sm_count > 0
                                                                               ? (int64_t) t->w->info->sm_count
                                                                               : (int64_t) n * t->w->unit_sms));
        else if (!t->w->cuda)
                json_object_object_add(o, "threads", json_object_new_int64(n));
        return o;
}

void gh_job_queued(gh_task *t) {
        json_object *p = state_reply(t, "queued");

        json_object_object_add(p, "event", json_object_new_string("queued"));
        json_object_object_add(p, "placement", json_object_new_string(t->placement));
        for (gh_watcher *v = t->watchers, *next; v; v = next) {
                next = v->next;
                if (!v->awaiting_id)
                        continue;
                watcher_unlink(v);
                gh_request_set_cancel(v->req, NULL, NULL);
                gh_request_reply(v->req, json_object_get(p));
                free(v);
        }
        notify_all(t, p, -1);
}

void gh_job_running(gh_task *t) {
        if (t->state != GH_JOB_QUEUED)
                return;
        t->state = GH_JOB_RUNNING;
        t->started_rt = gh_now_usec(CLOCK_REALTIME);
        json_object *p = state_reply(t, "running");
        json_object_object_add(p, "event", json_object_new_string("admitted"));
        json_object_object_add(p, "slice", slice_json(t));
        json_object_object_add(p, "step", json_object_new_int64(0));
        json_object_object_add(p, "steps", json_object_new_int64(t->steps));
        notify_all(t, p, -1);
}

void gh_job_progress(gh_task *t, json_object *m, int *fds, size_t n_fds) {
        if (t->state != GH_JOB_RUNNING) {
                gh_close_many(fds, n_fds);
                return;
        }
        json_object *p = state_reply(t, "running"), *preview = json_object_object_get(m, "preview");
        json_object_object_add(p, "step", json_object_get(json_object_object_get(m, "step")));
        json_object_object_add(p, "steps", json_object_get(json_object_object_get(m, "steps")));
        int fd = -1;
        if (preview && n_fds == 1) {
                json_object *pv = NULL;
                json_object_deep_copy(preview, &pv, NULL);
                json_object_object_add(pv, "fd", json_object_new_int(0));
                json_object_object_add(p, "preview", pv);
                fd = fds[0];
        }
        notify_all(t, p, fd);
        gh_close_many(fds, n_fds);
}

/* The result is known: tell every watcher, keep it for later. */
static void finish(gh_task *t, gh_task_state state) {
        gh_workers *ws = t->ws;

        t->state = state;
        t->finished_rt = gh_now_usec(CLOCK_REALTIME);
        gh_sched_metric_finished(t);
        ws->n_active--;
        ws->n_finished++;
        t->deadline_timer = sd_event_source_disable_unref(t->deadline_timer);
        gh_task_stop(t);
        while (t->watchers) {
                gh_watcher *v = t->watchers;
                watcher_unlink(v);
                gh_request_set_cancel(v->req, NULL, NULL);
                deliver_final(v);
                free(v);
        }
        if (ws->config->keep_finished_usec == 0 || ws->stopping) {
                task_expire(t);
                return;
        }
        sd_event_add_time_relative(ws->event, &t->expire_timer, CLOCK_MONOTONIC, ws->config->keep_finished_usec,
                                   USEC_PER_SEC, on_expire, t);
        finished_trim(ws);
}

void gh_job_finish_done(gh_task *t, json_object *outputs, json_object *metadata, int *fds, size_t n_fds) {
        if (t->state >= GH_JOB_DONE) {
                gh_close_many(fds, n_fds);
                free(fds);
                return;
        }
        json_object *p = state_reply(t, "done"), *o = NULL;
        json_object_deep_copy(outputs, &o, NULL);
        for (size_t i = 0; i < n_fds; i++)
                json_object_object_add(json_object_array_get_idx(o, i), "fd", json_object_new_int64((int64_t) i));
        json_object_object_add(p, "outputs", o);
        json_object_object_add(p, "metadata", json_object_get(metadata));
        json_object_object_add(p, "steps", json_object_new_int64(t->steps));
        json_object *timing = json_object_new_object();
        json_object_object_add(timing, "received_usec", json_object_new_int64((int64_t) t->received_mono));
        json_object_object_add(timing, "first_step_usec", json_object_new_int64((int64_t) t->first_step_mono));
        json_object_object_add(timing, "last_step_usec", json_object_new_int64((int64_t) t->last_step_mono));
        json_object_object_add(timing, "replied_usec", json_object_new_int64((int64_t) gh_now_usec(CLOCK_MONOTONIC)));
        json_object_object_add(p, "timing", timing);
        t->result = p;
        t->out_fds = fds;
        t->n_out_fds = n_fds;
        finish(t, GH_JOB_DONE);
}

void gh_job_finish_error(gh_task *t, gh_task_state state, const char *error, json_object *params) {
        if (t->state >= GH_JOB_DONE) {
                json_object_put(params);
                return;
        }
        /* A job stopped for its deadline fails as such, whatever stopped it. */
        if (t->stop_reason == GH_STOP_DEADLINE && state == GH_JOB_CANCELLED) {
                json_object_put(params);
                params = obj1("job", json_object_new_string(t->id));
                json_object_object_add(params, "deadline_sec", json_object_new_double(t->deadline_sec));
                error = "io.gpuhost.DeadlineExceeded";
                state = GH_JOB_FAILED;
        }
        t->error = strdup(error);
        t->result = params;
        if (state == GH_JOB_FAILED)
                gh_log_info("Job %s (%s) failed: %s %s", t->id, t->pipeline, error,
                            json_object_to_json_string_ext(params, JSON_C_TO_STRING_PLAIN));
        finish(t, state);
}

void gh_job_fail(gh_task *t, const char *errname, const char *message) {
        json_object *p = obj1("pipeline", json_object_new_string(t->pipeline));

        json_object_object_add(p, "error", json_object_new_string(errname));
        json_object_object_add(p, "message", json_object_new_string(message));
        gh_job_finish_error(t, GH_JOB_FAILED, "io.gpuhost.JobFailed", p);
}

static void job_cancel(gh_task *t, int reason) {
        if (t->state >= GH_JOB_DONE)
                return;
        t->stop_reason = reason;
        gh_job_finish_error(t, GH_JOB_CANCELLED, "io.gpuhost.JobCancelled", obj1("job", json_object_new_string(t->id)));
}

static int on_deadline(sd_event_source *es, uint64_t usec, void *userdata) {
        gh_task *t = userdata;

        gh_log_info("Job %s (%s): deadline of %.3f s passed while %s", t->id, t->pipeline, t->deadline_sec,
                    state_names[t->state]);
        job_cancel(t, GH_STOP_DEADLINE);
        return 0;
}

/* ---- JSON ---- */

static json_object *job_json(const gh_task *t) {
        json_object *o = obj1("job", json_object_new_string(t->id));

        json_object_object_add(o, "pipeline", json_object_new_string(t->pipeline));
        json_object_object_add(o, "state", json_object_new_string(state_names[t->state]));
        json_object_object_add(o, "priority", json_object_new_string(priority_names[t->priority]));
        json_object_object_add(o, "tag", t->tag ? json_object_new_string(t->tag) : NULL);
        json_object_object_add(o, "uid", json_object_new_int64(t->uid));
        json_object_object_add(o, "device", t->w ? json_object_new_int64(t->w->device) : NULL);
        json_object_object_add(o, "placement", t->placement[0] ? json_object_new_string(t->placement) : NULL);
        json_object_object_add(o, "slice", t->state == GH_JOB_RUNNING ? slice_json(t) : NULL);
        json_object_object_add(o, "step", t->state != GH_JOB_QUEUED ? json_object_new_int64(t->step) : NULL);
        json_object_object_add(o, "steps", t->steps ? json_object_new_int64(t->steps) : NULL);
        json_object_object_add(o, "submitted_usec", json_object_new_int64((int64_t) t->submitted_rt));
        json_object_object_add(o, "started_usec", t->started_rt ? json_object_new_int64((int64_t) t->started_rt) : NULL);
        json_object_object_add(o, "finished_usec", t->finished_rt ? json_object_new_int64((int64_t) t->finished_rt) : NULL);
        if (t->error) {
                json_object_object_add(o, "error", json_object_new_string(t->error));
                json_object_object_add(o, "error_parameters", json_object_get(t->result));
        }
        return o;
}

/* ---- methods ---- */

static bool may_see(gh_request *req, const gh_task *t) {
        const struct ucred *c = gh_request_peer(req);

        return gh_request_privileged(req) || (c && c->uid == t->uid);
}

static gh_task *lookup(gh_workers *ws, gh_request *req, json_object *params) {
        const char *id = json_object_get_string(json_object_object_get(params, "job"));
        gh_task *t = registry_find(ws, id);

        if (!t || !may_see(req, t)) {
                gh_request_error(req, "io.gpuhost.JobNotFound", obj1("job", json_object_new_string(id)));
                return NULL;
        }
        return t;
}

static int parse_output(gh_request *req, json_object *params, bool *ret_inline) {
        const char *o = json_object_get_string(json_object_object_get(params, "output"));

        *ret_inline = gh_streq(o, "inline");
        if (o && !*ret_inline && !gh_streq(o, "fd"))
                return gh_request_invalid_parameter(req, "output", "must be \"fd\" or \"inline\""), -EINVAL;
        return 0;
}

static unsigned queued_by(gh_workers *ws, uid_t uid) {
        unsigned n = 0;

        for (gh_task *t = ws->tasks; t; t = t->all_next)
                n += t->uid == uid && t->state < GH_JOB_DONE;
        return n;
}

/* Checks Generate's own options; replies and returns < 0 on a bad one. */
static int parse_options(gh_request *req, json_object *params, gh_task *t, bool *ret_inline) {
        const char *prio = json_object_get_string(json_object_object_get(params, "priority"));
        json_object *dl = json_object_object_get(params, "deadline_sec");
        const char *tag = json_object_get_string(json_object_object_get(params, "tag"));

        t->priority = GH_PRIORITY_NORMAL;
        if (prio) {
                size_t i;
                for (i = 0; i < ELEMENTSOF(priority_names) && strcmp(prio, priority_names[i]) != 0; i++)
                        ;
                if (i == ELEMENTSOF(priority_names))
                        return gh_request_invalid_parameter(req, "priority", "must be \"interactive\", \"normal\" or \"batch\""), -EINVAL;
                t->priority = (gh_priority) i;
        }
        if (dl) {
                double d = json_object_get_double(dl);
                if (!isfinite(d) || d <= 0 || d > DEADLINE_MAX_SEC)
                        return gh_request_invalid_parameter(req, "deadline_sec", "must be more than 0 and at most 604800 (7 days)"), -EINVAL;
                t->deadline_sec = d;
        }
        if (tag) {
                if (strlen(tag) > TAG_MAX)
                        return gh_request_invalid_parameter(req, "tag", "longer than 128 bytes"), -EINVAL;
                if (!(t->tag = strdup(tag)))
                        return -ENOMEM;
        }
        t->detach = json_object_get_boolean(json_object_object_get(params, "detach"));
        return parse_output(req, params, ret_inline);
}

/* Refuses a job past the queue limits (QueueFull). */
static int check_limits(gh_workers *ws, gh_request *req, uid_t uid) {
        const gh_config *c = ws->config;
        const char *scope = NULL;
        unsigned limit = 0;

        if (ws->n_active >= c->max_queued)
                scope = "total", limit = c->max_queued;
        else if (queued_by(ws, uid) >= c->max_queued_per_user)
                scope = "user", limit = c->max_queued_per_user;
        if (!scope)
                return 0;
        json_object *e = obj1("scope", json_object_new_string(scope));
        json_object_object_add(e, "limit", json_object_new_int64(limit));
        gh_request_error(req, "io.gpuhost.QueueFull", e);
        return -EBUSY;
}

/* Whether parameter |key| of |table| may be a model's default: one the
 * pipeline has, and not a model or an image. */
static bool defaultable(json_object *table, const char *key) {
        for (size_t i = 0, n = json_object_array_length(table); i < n; i++) {
                json_object *e = json_object_array_get_idx(table, i);
                if (!gh_streq(json_object_get_string(json_object_object_get(e, "name")), key))
                        continue;
                const char *type = json_object_get_string(json_object_object_get(e, "type"));
                return !gh_streq(type, "model") && !gh_streq(type, "image");
        }
        return false;
}

/* The request's parameters with the [model] parameters of its models (each
 * model parameter of the pipeline, given or by default) filling in what it
 * leaves out: the request wins, then the model, then the pipeline. *ret is
 * a new reference, |given| itself when nothing is added. */
static int with_model_defaults(gh_workers *ws, json_object *table, json_object *given, json_object **ret) {
        json_object *out = NULL;
        size_t n = json_object_is_type(table, json_type_array) ? json_object_array_length(table) : 0;

        if (given && !json_object_is_type(given, json_type_object))
                n = 0; /* refused by the validation */
        for (size_t i = 0; i < n; i++) {
                json_object *e = json_object_array_get_idx(table, i);
                if (!gh_streq(json_object_get_string(json_object_object_get(e, "type")), "model"))
                        continue;
                const char *param = json_object_get_string(json_object_object_get(e, "name"));
                json_object *v = given && param ? json_object_object_get(given, param) : NULL;
                if (!v)
                        v = json_object_object_get(e, "default");
                gh_model *m = json_object_is_type(v, json_type_string)
                                      ? gh_store_find(ws->engine->store, json_object_get_string(v))
                                      : NULL;
                json_object *defs = m ? gh_model_parameters(m) : NULL;
                if (!defs)
                        continue;
                json_object_object_foreach(defs, key, val) {
                        if ((out ? json_object_object_get_ex(out, key, NULL)
                                 : given && json_object_object_get_ex(given, key, NULL)) ||
                            !defaultable(table, key))
                                continue;
                        if (!out) {
                                if (!(out = json_object_new_object()))
                                        return -ENOMEM;
                                if (given) {
                                        json_object_object_foreach(given, gk, gv) {
                                                if (json_object_object_add(out, gk, json_object_get(gv)) < 0) {
                                                        json_object_put(out);
                                                        return -ENOMEM;
                                                }
                                        }
                                }
                        }
                        if (json_object_object_add(out, key, json_object_get(val)) < 0) {
                                json_object_put(out);
                                return -ENOMEM;
                        }
                }
        }
        *ret = out ? out : json_object_get(given);
        return 0;
}

/* The job's image fds: copies of the request's, then the memfds made of
 * its inline images (taken from |images|), as the normalized parameters
 * number them. */
static int take_fds(gh_params_images *images, gh_task *t) {
        size_t n = images->n_fds + images->n_made;

        if (n == 0)
                return 0;
        if (!(t->fds = calloc(n, sizeof(int))))
                return -ENOMEM;
        for (; t->n_fds < images->n_fds; t->n_fds++)
                if ((t->fds[t->n_fds] = fcntl(images->fds[t->n_fds], F_DUPFD_CLOEXEC, 3)) < 0)
                        return gh_negerrno();
        memcpy(t->fds + t->n_fds, images->made, images->n_made * sizeof(int));
        t->n_fds += images->n_made;
        images->n_made = 0;
        return 0;
}

int gh_job_submit(gh_workers *ws, gh_request *req, json_object *params) {
        const char *name = json_object_get_string(json_object_object_get(params, "pipeline"));
        json_object *device = json_object_object_get(params, "device");
        gh_pipeline *p = gh_workers_pipeline(ws, name);
        const struct ucred *cred = gh_request_peer(req);
        char pname[GH_PLUGIN_NAME_MAX + 8], reason[512];
        json_object *norm = NULL;
        _cleanup_(gh_params_images_close) gh_params_images images = {0};
        uint64_t received = gh_now_usec(CLOCK_MONOTONIC);
        bool inline_out;
        int r;

        if (!p || !p->devices)
                return gh_request_error(req, "io.gpuhost.PipelineNotFound", obj1("pipeline", json_object_new_string(name)));
        if (p->quarantined) {
                json_object *e = obj1("pipeline", json_object_new_string(name));
                json_object_object_add(e, "crashes", json_object_new_int64(p->crashes));
                return gh_request_error(req, "io.gpuhost.PluginQuarantined", e);
        }
        gh_task *t = calloc(1, sizeof(*t));
        if (!t || !(t->pipeline = strdup(name))) {
                free(t);
                return -ENOMEM;
        }
        t->ws = ws;
        t->received_mono = received;
        t->uid = cred ? cred->uid : (uid_t) -1;
        if ((r = parse_options(req, params, t, &inline_out)) < 0 || (r = check_limits(ws, req, t->uid)) < 0) {
                task_free(t);
                return r == -ENOMEM ? r : 0;
        }
        images.n_fds = gh_request_fds(req, &images.fds);
        json_object *asked = json_object_object_get(params, "parameters"), *given = NULL;
        r = with_model_defaults(ws, p->table, asked, &given);
        if (r >= 0)
                r = gh_params_validate(p->table, given, &images, &norm, pname, sizeof(pname), reason, sizeof(reason));
        if (r == -EINVAL && pname[0] && given != asked && !json_object_object_get_ex(asked, pname, NULL)) {
                size_t n = strlen(reason); /* the value came from a model's defaults, not the caller */
                snprintf(reason + n, sizeof(reason) - n, " (from the model's [model] parameters defaults)");
        }
        json_object_put(given);
        if (r < 0) {
                task_free(t);
                return r == -EINVAL ? gh_request_invalid_parameter(req, pname[0] ? pname : "parameters", reason) : r;
        }
        t->params = norm;
        t->want_device = -1;
        if (device) {
                gh_worker *w = gh_workers_for_device(ws, (unsigned) json_object_get_int64(device));
                if (!w || w->device >= 64 || !(p->devices & (UINT64_C(1) << w->device))) {
                        json_object *e = obj1("device", json_object_new_int64(json_object_get_int64(device)));
                        json_object_object_add(e, "reason", json_object_new_string(w ? "its worker does not offer this pipeline"
                                                                                   : "no worker serves that device"));
                        task_free(t);
                        return gh_request_error(req, "io.gpuhost.DeviceUnavailable", e);
                }
                t->want_device = (int) w->device;
        }
        if ((r = take_fds(&images, t)) < 0) {
                task_free(t);
                return r;
        }
        snprintf(t->id, sizeof(t->id), "j-%" PRIu64, ++ws->next_task_id);
        gh_sched_metric_submitted(t);
        t->submitted_rt = gh_now_usec(CLOCK_REALTIME);
        registry_add(ws, t);
        if (t->deadline_sec > 0)
                sd_event_add_time_relative(ws->event, &t->deadline_timer, CLOCK_MONOTONIC,
                                           (uint64_t) (t->deadline_sec * 1e6), USEC_PER_MSEC, on_deadline, t);
        gh_watcher *v = watcher_add(t, req, inline_out, true);
        if (!v) {
                job_cancel(t, GH_STOP_CANCEL);
                return -ENOMEM;
        }
        v->awaiting_id = !gh_request_more(req);
        if (gh_task_submit(t) > 0)
                return 0; /* answered once the estimate places it (or refuses it) */
        /* No worker is up to estimate it yet: it is queued until one is. */
        gh_log_debug("Job %s (%s) waits for a worker to estimate it", t->id, name);
        json_object *o = state_reply(t, "queued");
        if (v->awaiting_id) {
                watcher_unlink(v);
                gh_request_set_cancel(req, NULL, NULL);
                free(v);
                gh_request_reply(req, o);
        } else
                gh_request_notify(req, o);
        return 0;
}

static int generate(gh_request *req, json_object *params, void *userdata) {
        gh_daemon *d = userdata;

        return gh_job_submit(d->workers, req, params);
}

static int list_jobs(gh_request *req, json_object *params, void *userdata) {
        gh_daemon *d = userdata;
        json_object *a = json_object_new_array();

        for (gh_task *t = d->workers->tasks; t; t = t->all_next)
                if (may_see(req, t))
                        json_object_array_add(a, job_json(t));
        return gh_request_reply(req, obj1("jobs", a));
}

static int get_job(gh_request *req, json_object *params, void *userdata) {
        gh_daemon *d = userdata;
        gh_task *t = lookup(d->workers, req, params);

        return t ? gh_request_reply(req, obj1("job", job_json(t))) : 0;
}

static int wait_job(gh_request *req, json_object *params, void *userdata) {
        gh_daemon *d = userdata;
        gh_task *t = lookup(d->workers, req, params);
        bool inline_out;

        if (!t || parse_output(req, params, &inline_out) < 0)
                return 0;
        gh_watcher v = {.t = t, .req = req, .inline_out = inline_out};
        if (t->state >= GH_JOB_DONE) {
                deliver_final(&v);
                return 0;
        }
        if (!watcher_add(t, req, inline_out, false))
                return -ENOMEM;
        if (gh_request_more(req)) {
                json_object *p = state_reply(t, state_names[t->state]);
                if (t->state == GH_JOB_RUNNING) {
                        json_object_object_add(p, "step", json_object_new_int64(t->step));
                        json_object_object_add(p, "steps", json_object_new_int64(t->steps));
                }
                gh_request_notify(req, p);
        }
        return 0;
}

static int cancel_job(gh_request *req, json_object *params, void *userdata) {
        gh_daemon *d = userdata;
        gh_task *t = lookup(d->workers, req, params);

        if (!t)
                return 0;
        json_object *o = obj1("job", json_object_new_string(t->id));
        if (t->state >= GH_JOB_DONE) {
                json_object_object_add(o, "state", json_object_new_string(state_names[t->state]));
                task_expire(t); /* a finished job: forgotten, outputs dropped */
        } else {
                gh_log_info("Job %s (%s) cancelled by request", t->id, t->pipeline);
                job_cancel(t, GH_STOP_CANCEL);
                json_object_object_add(o, "state", json_object_new_string("cancelled"));
        }
        return gh_request_reply(req, o);
}

static const gh_param_spec params_generate[] = {
        {"pipeline", json_type_string, true},
        {"parameters", json_type_object, false},
        {"device", json_type_int, false},
        {"priority", json_type_string, false},
        {"deadline_sec", json_type_double, false},
        {"tag", json_type_string, false},
        {"output", json_type_string, false},
        {"detach", json_type_boolean, false},
        {NULL, 0, false},
};
static const gh_param_spec params_job[] = {
        {"job", json_type_string, true},
        {NULL, 0, false},
};
static const gh_param_spec params_wait[] = {
        {"job", json_type_string, true},
        {"output", json_type_string, false},
        {NULL, 0, false},
};

const gh_method gh_job_api_methods[] = {
        {"io.gpuhost.Generate", generate, GH_METHOD_TAKES_FDS, params_generate},
        {"io.gpuhost.ListJobs", list_jobs, GH_METHOD_WHILE_STOPPING, NULL},
        {"io.gpuhost.GetJob", get_job, GH_METHOD_WHILE_STOPPING, params_job},
        {"io.gpuhost.WaitJob", wait_job, GH_METHOD_WHILE_STOPPING, params_wait},
        {"io.gpuhost.CancelJob", cancel_job, GH_METHOD_WHILE_STOPPING, params_job},
};
const size_t gh_job_api_n_methods = ELEMENTSOF(gh_job_api_methods);

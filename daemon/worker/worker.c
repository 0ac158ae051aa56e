/* gpuhost-worker's process state and its side of the protocol: start-up
 * (plugins, CUDA context, pool reservation), the message loop, slab
 * mapping, and the jobs' threads. See worker.h. */
#include <fcntl.h>
#include <poll.h>
#include <string.h>
#include <sys/eventfd.h>
#include <sys/resource.h>

#include "../common/log.h"
#include "../common/util.h"
#include "../common/worker-proto.h"
#include "slices.h"
#include "worker.h"

static void on_refused(const char *path, int error, const char *reason, void *userdata) {
        gh_wk *w = userdata;
        json_object *o = json_object_new_object();

        gh_log_error("Refusing plugin %s: %s", path, reason);
        json_object_object_add(o, "path", json_object_new_string(path));
        json_object_object_add(o, "reason", json_object_new_string(reason));
        json_object_array_add(w->refused, o);
}

static int init_cuda(gh_wk *w) {
        char err[256];
        int r = gh_cuda_load(NULL, &w->cu, err, sizeof(err));
        if (r < 0)
                return gh_log_error_errno(r, "No CUDA driver: %s", err);
        r = gh_pool_cuda_init(&w->pc, w->cu, w->args.cuda_ordinal);
        if (r < 0)
                return gh_log_error_errno(r, "Cannot create the CUDA context of device %d: %m", w->args.cuda_ordinal);
        w->pc_ready = true;
        r = gh_cuda_errno(w->cu, w->cu->CtxSetCurrent(w->pc.context), NULL);
        if (r >= 0)
                r = gh_cuda_errno(w->cu, w->cu->StreamCreate(&w->stream, CU_STREAM_NON_BLOCKING), NULL);
        if (r < 0)
                return gh_log_error_errno(r, "Cannot set up the CUDA context: %m");
        r = gh_slices_new(w->cu, w->args.cuda_ordinal, w->args.unit_sms, &w->slices, err, sizeof(err));
        if (r < 0)
                gh_log_notice("No SM slices (%s): jobs share the whole device", err);
        return 0;
}

int gh_wk_init(gh_wk *w, const gh_worker_args *args, int fd) {
        static const gh_vl_limits limits = {GH_WORKER_MAX_MESSAGE, GH_WORKER_MAX_FDS, GH_WORKER_MAX_DEPTH};
        int r;

        *w = (gh_wk) {.args = *args, .fd = fd, .reap_fd = -1};
        pthread_mutex_init(&w->send_lock, NULL);
        w->reap_fd = eventfd(0, EFD_CLOEXEC | EFD_NONBLOCK);
        if (w->reap_fd < 0)
                return gh_log_error_errno(errno, "Cannot make an eventfd: %m");
        gh_vl_reader_init(&w->reader, &limits);
        gh_vl_writer_init(&w->writer);
        w->refused = json_object_new_array();
        if (args->cuda && (r = init_cuda(w)) < 0)
                return r;
        r = gh_pool_view_new(args->cuda ? &w->pc.backend : &gh_pool_backend_cpu, args->slab_size, args->pool_size,
                             &w->view);
        if (r < 0)
                return gh_log_error_errno(r, "Cannot reserve %" PRIu64 " bytes for the pool: %m", args->pool_size);
        w->n_slots = (unsigned) (args->pool_size / args->slab_size);
        w->slab_serial = calloc(w->n_slots, sizeof(uint64_t));
        if (!w->slab_serial)
                return -ENOMEM;
        w->units = args->cuda ? (w->slices ? gh_slices_count(w->slices) : 1) : args->cpu_threads;
        if (w->units == 0)
                w->units = 1;
        if (w->units > GH_WORKER_MAX_UNITS)
                w->units = GH_WORKER_MAX_UNITS;
        r = gh_plugin_load_dir(args->plugin_dir, args->plugin_owner, &w->plugins, &w->n_plugins, on_refused, w);
        if (r < 0)
                gh_log_error_errno(r, "Cannot read the plugin directory %s: %m", args->plugin_dir);
        return 0;
}

void gh_wk_done(gh_wk *w) {
        for (unsigned i = 0; i < w->n_jobs; i++)
                gh_job_free(w->jobs[i]); /* cancels and joins */
        w->n_jobs = 0;
        gh_plugins_free(w->plugins, w->n_plugins);
        json_object_put(w->refused);
        gh_pool_view_free(w->view);
        gh_slices_free(w->slices);
        free(w->slab_serial);
        if (w->stream)
                w->cu->StreamDestroy(w->stream);
        if (w->pc_ready)
                gh_pool_cuda_done(&w->pc);
        gh_cuda_free(w->cu);
        gh_vl_reader_done(&w->reader);
        gh_vl_writer_done(&w->writer);
        gh_close(w->reap_fd);
        pthread_mutex_destroy(&w->send_lock);
}

int gh_wk_slice(gh_wk *w, uint64_t units, void **ret_context, void **ret_stream) {
        CUcontext ctx;
        CUstream stream;

        if (!w->slices) {
                *ret_context = w->pc.context; /* the whole device */
                *ret_stream = NULL;           /* the job makes its own */
                return 0;
        }
        int r = gh_slices_get(w->slices, units, &ctx, &stream);
        if (r < 0)
                return r;
        *ret_context = ctx;
        *ret_stream = stream;
        return 0;
}

void gh_wk_slice_put(gh_wk *w, uint64_t units) {
        if (w->slices)
                (void) gh_slices_put(w->slices, units);
}

uint64_t gh_wk_rss(void) {
        unsigned long long size, resident;
        FILE *f = fopen("/proc/self/statm", "re");
        int n = f ? fscanf(f, "%llu %llu", &size, &resident) : 0;

        if (f)
                fclose(f);
        return n == 2 ? resident * (uint64_t) sysconf(_SC_PAGESIZE) : 0;
}

int gh_wk_send(gh_wk *w, json_object *msg, const int *fds, size_t n_fds) {
        pthread_mutex_lock(&w->send_lock);
        int r = gh_vl_writer_queue_json(&w->writer, msg, fds, n_fds);

        json_object_put(msg);
        while (r >= 0) {
                r = gh_vl_writer_flush(&w->writer, w->fd);
                if (r != 0)
                        break;
                struct pollfd p = {.fd = w->fd, .events = POLLOUT};
                if (poll(&p, 1, -1) < 0 && errno != EINTR)
                        r = -errno;
        }
        pthread_mutex_unlock(&w->send_lock);
        return r < 0 ? r : 0;
}

const gh_loaded_plugin *gh_wk_find_plugin(gh_wk *w, const char *name) {
        for (size_t i = 0; i < w->n_plugins; i++)
                if (gh_streq(w->plugins[i]->plugin->name, name))
                        return w->plugins[i];
        return NULL;
}

static json_object *msg_new(const char *type) {
        json_object *o = json_object_new_object();

        json_object_object_add(o, "type", json_object_new_string(type));
        return o;
}

static int send_hello(gh_wk *w) {
        json_object *m = msg_new("hello"), *pl = json_object_new_array();

        for (size_t i = 0; i < w->n_plugins; i++)
                json_object_array_add(pl, gh_plugin_to_json(w->plugins[i]->plugin));
        json_object_object_add(m, "version", json_object_new_int(GH_WORKER_PROTOCOL));
        json_object_object_add(m, "pid", json_object_new_int(getpid()));
        json_object_object_add(m, "pipelines", pl);
        json_object_object_add(m, "refused", json_object_get(w->refused));
        json_object_object_add(m, "rss", json_object_new_int64((int64_t) gh_wk_rss()));
        json_object_object_add(m, "units", json_object_new_int64(w->units));
        if (w->slices)
                json_object_object_add(m, "unit_sms", json_object_new_int64(gh_slices_unit_sms(w->slices)));
        return gh_wk_send(w, m, NULL, 0);
}

static const char *str(json_object *o, const char *key) {
        return json_object_get_string(json_object_object_get(o, key));
}

static int on_map(gh_wk *w, json_object *m, int *fds, size_t n_fds) {
        json_object *slabs = json_object_object_get(m, "slabs");
        size_t n = json_object_is_type(slabs, json_type_array) ? json_object_array_length(slabs) : 0;
        int r = n == n_fds ? 0 : -EBADMSG;

        for (size_t i = 0; r >= 0 && i < n; i++) {
                json_object *s = json_object_array_get_idx(slabs, i);
                int64_t index = json_object_get_int64(json_object_object_get(s, "index"));
                uint64_t serial = (uint64_t) json_object_get_int64(json_object_object_get(s, "serial"));
                if (index < 0 || index >= w->n_slots) {
                        r = -EBADMSG;
                        break;
                }
                if (w->slab_serial[index])
                        gh_pool_view_unmap(w->view, (unsigned) index);
                w->slab_serial[index] = 0;
                r = gh_pool_view_map(w->view, (unsigned) index, fds[i], false);
                if (r < 0)
                        gh_log_error_errno(r, "Cannot map slab %" PRId64 ": %m", index);
                else
                        w->slab_serial[index] = serial;
        }
        gh_close_many(fds, n_fds);
        return r;
}

static int on_unmap(gh_wk *w, json_object *m) {
        json_object *slabs = json_object_object_get(m, "slabs");
        size_t n = json_object_is_type(slabs, json_type_array) ? json_object_array_length(slabs) : 0;

        for (size_t i = 0; i < n; i++) {
                int64_t index = json_object_get_int64(json_object_array_get_idx(slabs, i));
                if (index >= 0 && index < w->n_slots && w->slab_serial[index]) {
                        gh_pool_view_unmap(w->view, (unsigned) index);
                        w->slab_serial[index] = 0;
                }
        }
        return 0;
}

static int on_estimate(gh_wk *w, json_object *m) {
        json_object *reply = msg_new("estimated"), *needs = NULL;
        const gh_loaded_plugin *lp = gh_wk_find_plugin(w, str(m, "pipeline"));
        char err[256] = "";
        int r = lp ? gh_job_estimate(w, lp, json_object_object_get(m, "params"), json_object_object_get(m, "models"),
                                     &needs, err, sizeof(err))
                   : -ENOENT;

        json_object_object_add(reply, "job", json_object_get(json_object_object_get(m, "job")));
        if (r >= 0)
                json_object_object_add(reply, "needs", needs);
        else {
                json_object_object_add(reply, "error", json_object_new_string(strerrorname_np(-r) ?: "EIO"));
                json_object_object_add(reply, "message", json_object_new_string(lp ? err : "no such pipeline"));
        }
        return gh_wk_send(w, reply, NULL, 0);
}

static gh_job *find_job(gh_wk *w, const char *id) {
        for (unsigned i = 0; id && i < w->n_jobs; i++)
                if (gh_streq(gh_job_id(w->jobs[i]), id))
                        return w->jobs[i];
        return NULL;
}

static int on_run(gh_wk *w, json_object *m, int *fds, size_t n_fds) {
        char err[256] = "";
        gh_job *job = NULL;
        int r;

        if (w->n_jobs == GH_WORKER_MAX_JOBS || find_job(w, str(m, "job"))) {
                gh_close_many(fds, n_fds);
                free(fds);
                r = w->n_jobs == GH_WORKER_MAX_JOBS ? -EBUSY : -EEXIST;
                snprintf(err, sizeof(err), r == -EBUSY ? "the worker runs as many jobs as it can" : "a job of that id runs");
        } else {
                r = gh_job_new(w, m, fds, n_fds, &job, err, sizeof(err));
                if (r >= 0 && (r = gh_job_start(job)) < 0) {
                        snprintf(err, sizeof(err), "cannot start the job's thread");
                        gh_job_free(job);
                }
        }
        if (r < 0) {
                json_object *reply = msg_new("failed");
                json_object_object_add(reply, "job", json_object_get(json_object_object_get(m, "job")));
                json_object_object_add(reply, "error", json_object_new_string(strerrorname_np(-r) ?: "EIO"));
                json_object_object_add(reply, "message", json_object_new_string(err));
                return gh_wk_send(w, reply, NULL, 0);
        }
        w->jobs[w->n_jobs++] = job;
        return 0;
}

/* Joins and frees the jobs whose threads ended. */
static void reap_jobs(gh_wk *w) {
        uint64_t v;

        (void) !read(w->reap_fd, &v, sizeof(v));
        for (unsigned i = 0; i < w->n_jobs;)
                if (gh_job_ended(w->jobs[i])) {
                        gh_job_free(w->jobs[i]);
                        w->jobs[i] = w->jobs[--w->n_jobs];
                } else
                        i++;
}

int gh_wk_handle_frame(gh_wk *w, gh_vl_frame *f) {
        _cleanup_free_ int *fds = NULL;
        size_t n_fds = gh_vl_frame_take_fds(f, &fds);
        json_object *m = NULL;
        const char *reason;
        int r = gh_vl_json_parse(f->text, f->len, GH_WORKER_MAX_DEPTH, &m, &reason);

        if (r < 0 || !json_object_is_type(m, json_type_object)) {
                gh_close_many(fds, n_fds);
                json_object_put(m);
                return gh_log_error_errno(EBADMSG, "Malformed message from the daemon");
        }
        const char *type = str(m, "type");
        if (gh_streq(type, "map"))
                r = on_map(w, m, fds, n_fds);
        else {
                if (gh_streq(type, "run"))
                        r = on_run(w, m, TAKE_PTR(fds), n_fds);
                else {
                        gh_close_many(fds, n_fds);
                        if (gh_streq(type, "ping")) {
                                json_object *p = msg_new("pong");
                                json_object_object_add(p, "seq", json_object_get(json_object_object_get(m, "seq")));
                                json_object_object_add(p, "rss", json_object_new_int64((int64_t) gh_wk_rss()));
                                r = gh_wk_send(w, p, NULL, 0);
                        } else if (gh_streq(type, "unmap"))
                                r = on_unmap(w, m);
                        else if (gh_streq(type, "estimate"))
                                r = on_estimate(w, m);
                        else if (gh_streq(type, "cancel")) {
                                gh_job *job = find_job(w, str(m, "job"));
                                if (job)
                                        gh_job_cancel(job);
                                r = 0;
                        } else if (gh_streq(type, "slice")) {
                                gh_job *job = find_job(w, str(m, "job"));
                                uint64_t units = (uint64_t) json_object_get_int64(json_object_object_get(m, "units"));
                                if (job && units && (w->units >= 64 || units >> w->units == 0))
                                        gh_job_set_units(job, units);
                                r = 0;
                        } else
                                r = gh_log_error_errno(EBADMSG, "Unknown message type from the daemon: %s", type ?: "(none)");
                }
        }
        json_object_put(m);
        return r;
}

int gh_wk_poll(gh_wk *w, int timeout_ms) {
        struct pollfd p[2] = {{.fd = w->fd, .events = POLLIN}, {.fd = w->reap_fd, .events = POLLIN}};
        int n = poll(p, 2, timeout_ms);

        if (n < 0)
                return errno == EINTR ? 0 : -errno;
        if (p[1].revents & POLLIN)
                reap_jobs(w);
        if (!(p[0].revents & (POLLIN | POLLHUP | POLLERR)))
                return 0;
        for (;;) {
                ssize_t k = gh_vl_reader_recv(&w->reader, w->fd, 1 << 20);
                if (k == -EAGAIN)
                        break;
                if (k < 0)
                        return (int) k;
                if (k == 0) {
                        w->eof = true;
                        break;
                }
        }
        for (;;) {
                gh_vl_frame f;
                int r = gh_vl_reader_next(&w->reader, &f);
                if (r <= 0)
                        return r;
                r = gh_wk_handle_frame(w, &f);
                gh_vl_frame_done(&f);
                if (r < 0)
                        return r;
        }
}

int gh_wk_run(gh_wk *w) {
        int r = send_hello(w);

        while (r >= 0 && !w->eof)
                r = gh_wk_poll(w, -1);
        return r < 0 ? r : 0;
}

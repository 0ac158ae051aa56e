/* Worker processes: spawning, the daemon's end of the worker protocol,
 * log forwarding, heartbeats, reaping and respawning, and the pipeline
 * registry with crash counts and quarantine. See workers.h. */
#include <fcntl.h>
#include <inttypes.h>
#include <signal.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/wait.h>

#include "../common/log.h"
#include "../common/util.h"
#include "../common/worker-proto.h"
#include "tasks.h"
#include "workers.h"

#define BACKOFF_MIN_USEC (100 * USEC_PER_MSEC)
#define BACKOFF_MAX_USEC (30 * USEC_PER_SEC)
#define STABLE_USEC (30 * USEC_PER_SEC)

static void worker_start(gh_worker *w);

const char *gh_worker_state_to_string(gh_worker_state s) {
        static const char *const names[] = {"waiting", "starting", "idle", "busy", "stopping"};

        return s <= GH_WORKER_STOPPING ? names[s] : "unknown";
}

gh_worker *gh_workers_get(gh_workers *ws, unsigned id) {
        return id < ws->n_workers ? &ws->workers[id] : NULL;
}

gh_worker *gh_workers_for_device(gh_workers *ws, unsigned device) {
        for (unsigned i = 0; i < ws->n_workers; i++)
                if (ws->workers[i].device == device)
                        return &ws->workers[i];
        return NULL;
}

gh_pipeline *gh_workers_pipeline(gh_workers *ws, const char *name) {
        for (size_t i = 0; name && i < ws->n_pipelines; i++)
                if (strcmp(ws->pipelines[i].name, name) == 0)
                        return &ws->pipelines[i];
        return NULL;
}

/* ---- the pipeline registry ---- */

static int pipeline_register(gh_workers *ws, gh_worker *w, json_object *desc) {
        const char *name = json_object_get_string(json_object_object_get(desc, "name"));
        json_object *table = json_object_object_get(desc, "parameters");

        if (!name || !json_object_is_type(table, json_type_array))
                return -EBADMSG;
        gh_pipeline *p = gh_workers_pipeline(ws, name);
        if (!p) {
                gh_pipeline *a = realloc(ws->pipelines, (ws->n_pipelines + 1) * sizeof(*a));
                if (!a)
                        return -ENOMEM;
                ws->pipelines = a;
                p = &a[ws->n_pipelines];
                *p = (gh_pipeline) {.name = strdup(name)};
                if (!p->name)
                        return -ENOMEM;
                ws->n_pipelines++;
        }
        /* The latest report wins: a plugin may be updated and its worker restarted. */
        json_object_put(p->desc);
        p->desc = json_object_get(desc);
        p->table = table;
        p->retry_safe = json_object_get_boolean(json_object_object_get(desc, "retry_safe"));
        if (w->device < 64)
                p->devices |= UINT64_C(1) << w->device;
        return 0;
}

static void pipelines_forget_device(gh_workers *ws, unsigned device) {
        for (size_t i = 0; device < 64 && i < ws->n_pipelines; i++)
                ws->pipelines[i].devices &= ~(UINT64_C(1) << device);
}

bool gh_pipeline_crashed(gh_workers *ws, gh_pipeline *p) {
        uint64_t now = gh_now_usec(CLOCK_MONOTONIC), window = ws->config->quarantine_window_usec;
        unsigned keep = 0;

        p->crashes++;
        for (unsigned i = 0; i < p->n_crash; i++)
                if (now - p->crash_usec[i] <= window)
                        p->crash_usec[keep++] = p->crash_usec[i];
        p->n_crash = keep;
        if (p->n_crash == GH_CRASH_HISTORY)
                memmove(p->crash_usec, p->crash_usec + 1, --p->n_crash * sizeof(uint64_t));
        p->crash_usec[p->n_crash++] = now;
        if (!p->quarantined && ws->config->quarantine_crashes && p->n_crash >= ws->config->quarantine_crashes) {
                p->quarantined = true;
                gh_log_error("Pipeline %s quarantined: its workers died %u times in %" PRIu64
                             "s; \"gpuhostctl plugin enable %s\" takes it back", p->name, p->n_crash,
                             window / USEC_PER_SEC, p->name);
        }
        return p->quarantined;
}

/* ---- messages ---- */

static int worker_flush(gh_worker *w) {
        int r = gh_vl_writer_flush(&w->writer, w->fd);

        if (r < 0) {
                gh_worker_kill(w, "its socket failed");
                return r;
        }
        sd_event_source_set_io_events(w->io, EPOLLIN | (r == 0 ? EPOLLOUT : 0));
        return 0;
}

int gh_worker_send(gh_worker *w, json_object *msg, const int *fds, size_t n_fds) {
        if (w->fd < 0) {
                json_object_put(msg);
                gh_close_many(fds, n_fds);
                return -ENOTCONN;
        }
        int r = gh_vl_writer_queue_json(&w->writer, msg, fds, n_fds);
        json_object_put(msg);
        if (r < 0) {
                gh_worker_kill(w, "out of memory queueing a message");
                return r;
        }
        return worker_flush(w);
}

static json_object *msg_new(const char *type) {
        json_object *o = json_object_new_object();

        json_object_object_add(o, "type", json_object_new_string(type));
        return o;
}

static int send_map_batch(gh_worker *w, json_object *slabs, int *fds, size_t n) {
        json_object *m = msg_new("map");

        json_object_object_add(m, "slabs", slabs);
        return gh_worker_send(w, m, fds, n);
}

int gh_worker_map(gh_worker *w, uint64_t offset, uint64_t bytes) {
        gh_pool *pool = gh_store_pool(w->ws->engine->store, w->device);
        unsigned first, count;
        int fds[GH_WORKER_MAP_BATCH];
        size_t n = 0;
        int r = pool ? gh_pool_slabs_for(pool, offset, bytes, &first, &count) : -ENODEV;

        if (r < 0)
                return r;
        json_object *slabs = json_object_new_array();
        for (unsigned i = first; i < first + count && i < w->n_slots; i++) {
                uint64_t serial = gh_pool_slab_serial(pool, i);
                if (w->slab_serial[i] == serial)
                        continue;
                int fd = fcntl(gh_pool_slab_fd(pool, i), F_DUPFD_CLOEXEC, 3);
                if (fd < 0) {
                        gh_close_many(fds, n);
                        json_object_put(slabs);
                        return gh_negerrno();
                }
                json_object *s = json_object_new_object();
                json_object_object_add(s, "index", json_object_new_int64(i));
                json_object_object_add(s, "serial", json_object_new_int64((int64_t) serial));
                json_object_array_add(slabs, s);
                fds[n++] = fd;
                w->slab_serial[i] = serial;
                if (n == GH_WORKER_MAP_BATCH) {
                        if ((r = send_map_batch(w, slabs, fds, n)) < 0)
                                return r;
                        slabs = json_object_new_array();
                        n = 0;
                }
        }
        if (n == 0) {
                json_object_put(slabs);
                return 0;
        }
        return send_map_batch(w, slabs, fds, n);
}

/* A slab of a pool was released: its importers drop their mappings, so
 * the memory really goes back. */
static void on_slab_released(unsigned index, void *userdata) {
        gh_workers *ws = userdata;

        for (unsigned i = 0; i < ws->n_workers; i++) {
                gh_worker *w = &ws->workers[i];
                if (index >= w->n_slots || !w->slab_serial[index])
                        continue;
                w->slab_serial[index] = 0;
                json_object *m = msg_new("unmap"), *a = json_object_new_array();
                json_object_array_add(a, json_object_new_int64(index));
                json_object_object_add(m, "slabs", a);
                gh_worker_send(w, m, NULL, 0);
        }
}

static int on_hello(gh_worker *w, json_object *m) {
        json_object *pl = json_object_object_get(m, "pipelines"), *refused = json_object_object_get(m, "refused");

        if (json_object_get_int(json_object_object_get(m, "version")) != GH_WORKER_PROTOCOL ||
            !json_object_is_type(pl, json_type_array) || !json_object_is_type(refused, json_type_array))
                return -EPROTO;
        pipelines_forget_device(w->ws, w->device);
        for (size_t i = 0; i < json_object_array_length(pl); i++) {
                int r = pipeline_register(w->ws, w, json_object_array_get_idx(pl, i));
                if (r < 0)
                        return r;
        }
        json_object_put(w->refused);
        w->refused = json_object_get(refused);
        w->rss = (uint64_t) json_object_get_int64(json_object_object_get(m, "rss"));
        int64_t units = json_object_get_int64(json_object_object_get(m, "units"));
        if (units < 1 || units > GH_WORKER_MAX_UNITS)
                return -EPROTO;
        w->units = (unsigned) units;
        w->unit_sms = (unsigned) json_object_get_int64(json_object_object_get(m, "unit_sms"));
        w->state = GH_WORKER_IDLE;
        gh_log_info("Worker %u (device %u, pid %d) ready: %zu pipeline(s), %zu plugin(s) refused, %u slice unit(s)",
                    w->id, w->device, (int) w->pid, json_object_array_length(pl), json_object_array_length(refused),
                    w->units);
        gh_tasks_worker_ready(w);
        return 0;
}

static int handle_message(gh_worker *w, gh_vl_frame *f) {
        _cleanup_free_ int *fds = NULL;
        size_t n_fds = gh_vl_frame_take_fds(f, &fds);
        json_object *m = NULL;
        const char *reason;
        int r = gh_vl_json_parse(f->text, f->len, GH_WORKER_MAX_DEPTH, &m, &reason);

        if (r < 0 || !json_object_is_type(m, json_type_object)) {
                gh_close_many(fds, n_fds);
                json_object_put(m);
                return -EBADMSG;
        }
        const char *type = json_object_get_string(json_object_object_get(m, "type"));
        if (w->state == GH_WORKER_STARTING)
                r = gh_streq(type, "hello") ? on_hello(w, m) : -EPROTO;
        else if (gh_streq(type, "pong")) {
                w->rss = (uint64_t) json_object_get_int64(json_object_object_get(m, "rss"));
                r = 0;
        } else if (type) {
                r = gh_tasks_worker_message(w, type, m, TAKE_PTR(fds), n_fds);
                n_fds = 0;
        } else
                r = -EBADMSG;
        gh_close_many(fds, n_fds);
        json_object_put(m);
        return r;
}

static int on_worker_io(sd_event_source *es, int fd, uint32_t revents, void *userdata) {
        gh_worker *w = userdata;

        if (revents & EPOLLOUT && worker_flush(w) < 0)
                return 0;
        if (!(revents & (EPOLLIN | EPOLLHUP | EPOLLERR)))
                return 0;
        ssize_t n = gh_vl_reader_recv(&w->reader, w->fd, 1 << 20);
        if (n == -EAGAIN)
                return 0;
        if (n <= 0) {
                /* The process is going away; its child source tells how. */
                sd_event_source_set_enabled(w->io, SD_EVENT_OFF);
                return 0;
        }
        w->last_seen_usec = gh_now_usec(CLOCK_MONOTONIC);
        for (;;) {
                gh_vl_frame f;
                int r = gh_vl_reader_next(&w->reader, &f);
                if (r == 0)
                        return 0;
                if (r > 0) {
                        r = handle_message(w, &f);
                        gh_vl_frame_done(&f);
                }
                if (r < 0) {
                        char why[128];
                        snprintf(why, sizeof(why), "protocol error (%s)", strerror(-r));
                        gh_worker_kill(w, why);
                        return 0;
                }
                if (w->fd < 0)
                        return 0;
        }
}

/* ---- logs ---- */

static void log_line(gh_worker *w, char *line) {
        int level = LOG_WARNING; /* lines without a level: sanitizers, plugins' own prints */

        if (line[0] == '<' && line[1] >= '0' && line[1] <= '7' && line[2] == '>') {
                level = line[1] - '0';
                line += 3;
        }
        if (level <= gh_log_get_max_level())
                gh_log_internal(level, 0, "worker %u (device %u, pid %d): %s", w->id, w->device, (int) w->pid, line);
}

/* Logs what is left of the last worker's output and closes its pipe. */
static void log_close(gh_worker *w) {
        if (w->log_len) {
                w->log_line[w->log_len] = 0;
                log_line(w, w->log_line);
                w->log_len = 0;
        }
        w->log_io = sd_event_source_disable_unref(w->log_io);
        w->log_fd = gh_close(w->log_fd);
}

static int on_log_io(sd_event_source *es, int fd, uint32_t revents, void *userdata) {
        gh_worker *w = userdata;
        ssize_t n = read(fd, w->log_line + w->log_len, sizeof(w->log_line) - 1 - w->log_len);

        if (n <= 0) {
                if (n == 0 || (errno != EAGAIN && errno != EINTR))
                        log_close(w);
                return 0;
        }
        w->log_len += (size_t) n;
        char *start = w->log_line, *nl;
        while ((nl = memchr(start, '\n', w->log_len - (size_t) (start - w->log_line)))) {
                *nl = 0;
                log_line(w, start);
                start = nl + 1;
        }
        w->log_len -= (size_t) (start - w->log_line);
        memmove(w->log_line, start, w->log_len);
        if (w->log_len == sizeof(w->log_line) - 1) { /* a very long line: log it in pieces */
                w->log_line[w->log_len] = 0;
                log_line(w, w->log_line);
                w->log_len = 0;
        }
        return 0;
}

/* ---- heartbeat, death, respawn ---- */

void gh_worker_kill(gh_worker *w, const char *reason) {
        if (w->pid <= 0 || w->state == GH_WORKER_STOPPING)
                return;
        gh_log_warning("Killing worker %u (device %u, pid %d): %s", w->id, w->device, (int) w->pid, reason);
        snprintf(w->kill_reason, sizeof(w->kill_reason), "%s", reason);
        w->state = GH_WORKER_STOPPING;
        kill(w->pid, SIGKILL);
        w->io = sd_event_source_disable_unref(w->io);
        w->fd = gh_close(w->fd);
}

static uint64_t heartbeat_period(const gh_workers *ws) {
        uint64_t p = ws->config->heartbeat_timeout_usec / 4;

        return p < 50 * USEC_PER_MSEC ? 50 * USEC_PER_MSEC : p;
}

static int on_heartbeat(sd_event_source *es, uint64_t usec, void *userdata) {
        gh_worker *w = userdata;
        uint64_t now = gh_now_usec(CLOCK_MONOTONIC);

        if (w->state == GH_WORKER_STARTING || w->state == GH_WORKER_IDLE || w->state == GH_WORKER_BUSY) {
                if (now - w->last_seen_usec > w->ws->config->heartbeat_timeout_usec) {
                        char why[128];
                        snprintf(why, sizeof(why), "no heartbeat for %" PRIu64 " s",
                                 w->ws->config->heartbeat_timeout_usec / USEC_PER_SEC);
                        gh_worker_kill(w, why);
                } else if (w->state != GH_WORKER_STARTING) {
                        json_object *m = msg_new("ping");
                        json_object_object_add(m, "seq", json_object_new_int64((int64_t) ++w->ping_seq));
                        gh_worker_send(w, m, NULL, 0);
                }
        }
        sd_event_source_set_time_relative(es, heartbeat_period(w->ws));
        return 0;
}

static int on_respawn(sd_event_source *es, uint64_t usec, void *userdata) {
        gh_worker *w = userdata;

        w->respawn = sd_event_source_disable_unref(w->respawn);
        worker_start(w);
        return 0;
}

static void schedule_respawn(gh_worker *w, bool now) {
        uint64_t delay = 0;

        if (w->ws->stopping)
                return;
        if (!now) {
                unsigned shift = w->backoff < 20 ? w->backoff : 20;
                delay = BACKOFF_MIN_USEC << shift;
                if (delay > BACKOFF_MAX_USEC)
                        delay = BACKOFF_MAX_USEC;
                w->backoff++;
        }
        w->state = GH_WORKER_WAITING;
        if (sd_event_add_time_relative(w->ws->event, &w->respawn, CLOCK_MONOTONIC, delay, USEC_PER_MSEC, on_respawn,
                                       w) < 0)
                gh_log_error("Cannot schedule a restart of worker %u", w->id);
        else if (delay)
                gh_log_info("Starting worker %u again in %" PRIu64 " ms", w->id, delay / USEC_PER_MSEC);
}

static void describe_exit(const siginfo_t *si, int *ret_signal, int *ret_status, char *buf, size_t size) {
        *ret_signal = 0;
        *ret_status = -1;
        if (si->si_code == CLD_EXITED) {
                *ret_status = si->si_status;
                snprintf(buf, size, "exited with status %d", si->si_status);
        } else {
                *ret_signal = si->si_status;
                snprintf(buf, size, "killed by signal %s%s", sigabbrev_np(si->si_status) ?: "?",
                         si->si_code == CLD_DUMPED ? " (core dumped)" : "");
        }
}

static int on_child(sd_event_source *es, const siginfo_t *si, void *userdata) {
        gh_worker *w = userdata;
        char how[96], reason[300];
        int sig, status;

        describe_exit(si, &sig, &status, how, sizeof(how));
        if (w->kill_reason[0])
                snprintf(reason, sizeof(reason), "%s; %s", w->kill_reason, how);
        else
                snprintf(reason, sizeof(reason), "%s", how);
        bool expected = w->restart_requested || w->ws->stopping;
        if (!expected) {
                gh_log_error("Worker %u (device %u, pid %d) %s%s%s", w->id, w->device, (int) w->pid, reason,
                             w->bound ? " while running a job of " : "", w->bound ? w->bound->pipeline : "");
        }
        w->child = sd_event_source_disable_unref(w->child);
        w->io = sd_event_source_disable_unref(w->io);
        w->fd = gh_close(w->fd);
        gh_vl_reader_done(&w->reader);
        gh_vl_writer_done(&w->writer);
        memset(w->slab_serial, 0, w->n_slots * sizeof(uint64_t));
        bool early = gh_now_usec(CLOCK_MONOTONIC) - w->started_usec < STABLE_USEC;
        if (!early)
                w->backoff = 0;
        if (!expected)
                w->crashes++;
        if (!w->ws->stopping)
                gh_sched_metric_restart(w->device, w->restart_requested ? "requested" : w->kill_reason[0] ? "killed" : "crashed");
        w->state = GH_WORKER_WAITING;
        gh_tasks_worker_died(w, sig, status, w->restart_requested ? "restarted on request" : reason);
        w->pid = 0;
        bool now = w->restart_requested;
        w->restart_requested = false;
        w->kill_reason[0] = 0;
        schedule_respawn(w, now);
        return 0;
}

/* ---- spawning ---- */

/* The child's side, between fork and exec: async-signal-safe calls only. */
_noreturn_ static void child_exec(int sock, int log_fd, char **argv, char **envp) {
        sigset_t none;
        int null = open("/dev/null", O_RDONLY | O_CLOEXEC);

        sigemptyset(&none);
        sigprocmask(SIG_SETMASK, &none, NULL);
        signal(SIGPIPE, SIG_DFL);
        if (null < 0 || dup2(null, STDIN_FILENO) < 0 || dup2(log_fd, STDOUT_FILENO) < 0 ||
            dup2(log_fd, STDERR_FILENO) < 0 || dup2(sock, GH_WORKER_FD) < 0)
                _exit(127);
        close_range(GH_WORKER_FD + 1, ~0U, 0);
        execve(argv[0], argv, envp);
        _exit(127);
}

/* The daemon's environment without what belongs to the daemon alone:
 * systemd's notify socket, watchdog and socket-activation variables. */
static char **worker_environ(void) {
        static const char *const drop[] = {"NOTIFY_SOCKET=", "WATCHDOG_PID=", "WATCHDOG_USEC=", "LISTEN_PID=",
                                           "LISTEN_FDS=", "LISTEN_FDNAMES="};
        size_t n = 0, k = 0;

        while (environ[n])
                n++;
        char **env = calloc(n + 1, sizeof(char *));
        for (size_t i = 0; env && i < n; i++) {
                bool keep = true;
                for (size_t d = 0; d < ELEMENTSOF(drop); d++)
                        keep &= strncmp(environ[i], drop[d], strlen(drop[d])) != 0;
                if (keep)
                        env[k++] = environ[i];
        }
        return env;
}

static int spawn(gh_worker *w, int *ret_sock, int *ret_log) {
        const gh_config *c = w->ws->config;
        gh_pool *pool = gh_store_pool(w->ws->engine->store, w->device);
        gh_pool_stats st;
        char a_dev[16], a_cuda[16], a_owner[24], a_slab[24], a_pool[24], a_threads[16], a_unit[16];
        int sp[2], lp[2];

        if (!pool)
                return -ENODEV;
        gh_pool_get_stats(pool, &st);
        unsigned threads = w->cuda ? 1 : c->cpu_threads ? c->cpu_threads : (unsigned) sysconf(_SC_NPROCESSORS_ONLN);
        snprintf(a_dev, sizeof(a_dev), "%u", w->device);
        snprintf(a_cuda, sizeof(a_cuda), "%d", w->cuda_ordinal);
        snprintf(a_owner, sizeof(a_owner), "%u", (unsigned) geteuid());
        snprintf(a_slab, sizeof(a_slab), "%" PRIu64, gh_pool_slab_size(pool));
        snprintf(a_pool, sizeof(a_pool), "%" PRIu64, st.capacity);
        snprintf(a_threads, sizeof(a_threads), "%u", threads ? threads : 1);
        snprintf(a_unit, sizeof(a_unit), "%u", c->unit_sms);
        char *argv[] = {c->worker_executable, "--device", a_dev, "--plugin-dir", c->plugin_directory,
                        "--plugin-owner", a_owner, "--slab-size", a_slab, "--pool-size", a_pool,
                        "--threads", a_threads, "--unit-sms", a_unit, "--log-level", (char *) gh_log_level_to_string(gh_log_get_max_level()),
                        w->cuda ? "--cuda" : NULL, a_cuda, NULL};
        _cleanup_free_ char **envp = worker_environ();
        if (!envp)
                return -ENOMEM;
        if (socketpair(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC | SOCK_NONBLOCK, 0, sp) < 0)
                return gh_negerrno();
        if (pipe2(lp, O_CLOEXEC) < 0) {
                gh_close_many(sp, 2);
                return gh_negerrno();
        }
        pid_t pid = fork();
        if (pid < 0) {
                gh_close_many(sp, 2);
                gh_close_many(lp, 2);
                return gh_negerrno();
        }
        if (pid == 0)
                child_exec(sp[1], lp[1], argv, envp);
        gh_close(sp[1]);
        gh_close(lp[1]);
        fcntl(lp[0], F_SETFL, O_NONBLOCK);
        w->pid = pid;
        *ret_sock = sp[0];
        *ret_log = lp[0];
        return 0;
}

static void worker_start(gh_worker *w) {
        static const gh_vl_limits limits = {GH_WORKER_MAX_MESSAGE, GH_WORKER_MAX_FDS, GH_WORKER_MAX_DEPTH};
        int sock, log_fd, r;

        if (w->ws->stopping)
                return;
        if (access(w->ws->config->worker_executable, X_OK) < 0) {
                /* Nothing to retry until the configuration changes. */
                if (!w->missing_logged)
                        gh_log_error_errno(errno, "Cannot run the worker program %s: %m; device %u runs no jobs until "
                                           "[workers] executable names one (then reload)",
                                           w->ws->config->worker_executable, w->device);
                w->missing_logged = true;
                w->state = GH_WORKER_WAITING;
                return;
        }
        w->missing_logged = false;
        log_close(w); /* a pipe the last process (or its children) kept open */
        r = spawn(w, &sock, &log_fd);
        if (r < 0) {
                gh_log_error_errno(r, "Cannot start worker %u (%s): %m", w->id, w->ws->config->worker_executable);
                schedule_respawn(w, false);
                return;
        }
        w->fd = sock;
        w->log_fd = log_fd;
        gh_vl_reader_init(&w->reader, &limits);
        gh_vl_writer_init(&w->writer);
        w->state = GH_WORKER_STARTING;
        w->started_usec = w->last_seen_usec = gh_now_usec(CLOCK_MONOTONIC);
        if ((r = sd_event_add_io(w->ws->event, &w->io, sock, EPOLLIN, on_worker_io, w)) < 0 ||
            (r = sd_event_add_io(w->ws->event, &w->log_io, log_fd, EPOLLIN, on_log_io, w)) < 0 ||
            (r = sd_event_add_child(w->ws->event, &w->child, w->pid, WEXITED, on_child, w)) < 0) {
                gh_log_error_errno(r, "Cannot watch worker %u: %m", w->id);
                kill(w->pid, SIGKILL);
                waitpid(w->pid, NULL, 0);
                w->pid = 0;
                w->io = sd_event_source_disable_unref(w->io);
                w->log_io = sd_event_source_disable_unref(w->log_io);
                w->fd = gh_close(w->fd);
                w->log_fd = gh_close(w->log_fd);
                schedule_respawn(w, false);
                return;
        }
        gh_log_debug("Started worker %u for device %u: pid %d", w->id, w->device, (int) w->pid);
}

int gh_worker_restart(gh_worker *w) {
        if (w->state == GH_WORKER_WAITING) {
                w->respawn = sd_event_source_disable_unref(w->respawn);
                w->backoff = 0;
                worker_start(w);
                return 0;
        }
        w->restart_requested = true;
        w->backoff = 0;
        gh_worker_kill(w, "restart requested");
        return 0;
}

/* ---- the set ---- */

void gh_workers_set_config(gh_workers *ws, const gh_config *config) {
        ws->config = config;
        for (unsigned i = 0; i < ws->n_workers; i++) {
                gh_worker *w = &ws->workers[i];
                if (w->state == GH_WORKER_WAITING && !w->respawn)
                        worker_start(w);
        }
}

/* Loads measured on a device give its throughput, for placement. */
static void on_store_event(gh_store_event ev, const gh_model *m, unsigned device, uint64_t bytes, uint64_t usec,
                           void *userdata) {
        gh_worker *w = gh_workers_for_device(userdata, device);

        gh_sched_metric_model(ev, gh_model_name(m), device, bytes, usec);
        if (!w || ev != GH_STORE_LOADED || usec == 0 || bytes < (1u << 20))
                return; /* tiny loads measure the overhead, not the throughput */
        double bps = (double) bytes * 1e6 / (double) usec;
        w->load_bps = w->load_bps > 0 ? 0.7 * w->load_bps + 0.3 * bps : bps;
}

int gh_workers_new(sd_event *event, const gh_config *config, gh_engine *engine, gh_workers **ret) {
        gh_workers *ws = calloc(1, sizeof(*ws));
        unsigned n = 0;

        if (!ws)
                return -ENOMEM;
        *ws = (gh_workers) {.event = event, .config = config, .engine = engine};
        ws->workers = calloc(GH_STORE_MAX_DEVICES, sizeof(gh_worker));
        if (!ws->workers) {
                free(ws);
                return -ENOMEM;
        }
        for (unsigned d = 0; d < GH_STORE_MAX_DEVICES; d++) {
                gh_pool *pool = gh_store_pool(engine->store, d);
                const gh_device_info *info = gh_devices_get(engine->devices, (int) d);
                if (!pool || !info)
                        continue;
                gh_worker *w = &ws->workers[n];
                *w = (gh_worker) {.ws = ws, .id = n, .device = d, .fd = -1, .log_fd = -1, .info = info,
                                  .cuda = info->kind == GH_DEVICE_CUDA, .cuda_ordinal = info->cuda_ordinal};
                gh_pool_stats st;
                gh_pool_get_stats(pool, &st);
                w->n_slots = (unsigned) (st.capacity / gh_pool_slab_size(pool));
                w->slab_serial = calloc(w->n_slots ? w->n_slots : 1, sizeof(uint64_t));
                w->refused = json_object_new_array();
                if (!w->slab_serial) {
                        ws->n_workers = n;
                        gh_workers_free(ws);
                        return -ENOMEM;
                }
                gh_pool_set_release_hook(pool, on_slab_released, ws);
                n++;
        }
        ws->n_workers = n;
        gh_store_set_observer(engine->store, on_store_event, ws);
        gh_sched_metrics_init(ws);
        for (unsigned i = 0; i < n; i++) {
                gh_worker *w = &ws->workers[i];
                sd_event_add_time_relative(event, &w->heartbeat, CLOCK_MONOTONIC, heartbeat_period(ws), USEC_PER_MSEC,
                                           on_heartbeat, w);
                sd_event_source_set_enabled(w->heartbeat, SD_EVENT_ON);
                worker_start(w);
        }
        *ret = ws;
        return 0;
}

/* Stops every worker: closing its socket asks it to exit; what is still
 * there after a moment is killed. Blocking, at exit only. */
gh_workers *gh_workers_free(gh_workers *ws) {
        if (!ws)
                return NULL;
        ws->stopping = true;
        for (unsigned i = 0; i < ws->n_workers; i++) {
                gh_worker *w = &ws->workers[i];
                gh_pool *pool = gh_store_pool(ws->engine->store, w->device);
                if (pool)
                        gh_pool_set_release_hook(pool, NULL, NULL);
                gh_tasks_worker_free(w);
                w->io = sd_event_source_disable_unref(w->io);
                w->fd = gh_close(w->fd);
        }
        uint64_t deadline = gh_now_usec(CLOCK_MONOTONIC) + 2 * USEC_PER_SEC;
        for (unsigned i = 0; i < ws->n_workers; i++) {
                gh_worker *w = &ws->workers[i];
                while (w->pid > 0) {
                        pid_t p = waitpid(w->pid, NULL, WNOHANG);
                        if (p == w->pid || (p < 0 && errno != EINTR))
                                break;
                        if (gh_now_usec(CLOCK_MONOTONIC) > deadline) {
                                kill(w->pid, SIGKILL);
                                waitpid(w->pid, NULL, 0);
                                break;
                        }
                        usleep(10 * 1000);
                }
                w->child = sd_event_source_disable_unref(w->child);
                w->log_io = sd_event_source_disable_unref(w->log_io);
                w->heartbeat = sd_event_source_disable_unref(w->heartbeat);
                w->respawn = sd_event_source_disable_unref(w->respawn);
                gh_close(w->log_fd);
                gh_vl_reader_done(&w->reader);
                gh_vl_writer_done(&w->writer);
                json_object_put(w->refused);
                free(w->slab_serial);
        }
        gh_store_set_observer(ws->engine->store, NULL, NULL);
        gh_sched_metrics_done(ws);
        gh_jobs_free(ws);
        free(ws->entities);
        gh_tasks_forget_estimates(ws);
        for (size_t i = 0; i < ws->n_pipelines; i++) {
                free(ws->pipelines[i].name);
                json_object_put(ws->pipelines[i].desc);
        }
        free(ws->pipelines);
        free(ws->workers);
        free(ws);
        return NULL;
}

/* ---- JSON for the methods ---- */

json_object *gh_workers_json(gh_workers *ws) {
        json_object *a = json_object_new_array();

        for (unsigned i = 0; i < ws->n_workers; i++) {
                gh_worker *w = &ws->workers[i];
                json_object *o = json_object_new_object();
                bool up = w->pid > 0;
                json_object_object_add(o, "id", json_object_new_int64(w->id));
                json_object_object_add(o, "device", json_object_new_int64(w->device));
                json_object_object_add(o, "pid", up ? json_object_new_int64(w->pid) : NULL);
                json_object_object_add(o, "state", json_object_new_string(gh_worker_state_to_string(w->state)));
                json_object *jobs = json_object_new_array();
                for (gh_task *t = w->bound; t; t = t->run_next)
                        json_object_array_add(jobs, json_object_new_string(t->id));
                json_object_object_add(o, "job", w->bound ? json_object_new_string(w->bound->id) : NULL);
                json_object_object_add(o, "pipeline", w->bound ? json_object_new_string(w->bound->pipeline) : NULL);
                json_object_object_add(o, "jobs", jobs);
                json_object_object_add(o, "units", w->units ? json_object_new_int64(w->units) : NULL);
                json_object_object_add(o, "jobs_done", json_object_new_int64((int64_t) w->jobs_done));
                json_object_object_add(o, "crashes", json_object_new_int64((int64_t) w->crashes));
                json_object_object_add(o, "rss_bytes", up && w->rss ? json_object_new_int64((int64_t) w->rss) : NULL);
                json_object_object_add(o, "started_usec", up ? json_object_new_int64((int64_t) w->started_usec) : NULL);
                json_object_array_add(a, o);
        }
        return a;
}

json_object *gh_workers_summary(gh_workers *ws) {
        json_object *o = json_object_new_object(), *q = json_object_new_array();
        unsigned up = 0, busy = 0;

        for (unsigned i = 0; ws && i < ws->n_workers; i++) {
                up += ws->workers[i].pid > 0;
                busy += ws->workers[i].state == GH_WORKER_BUSY;
        }
        for (size_t i = 0; ws && i < ws->n_pipelines; i++)
                if (ws->pipelines[i].quarantined)
                        json_object_array_add(q, json_object_new_string(ws->pipelines[i].name));
        json_object_object_add(o, "workers", json_object_new_int64(ws ? ws->n_workers : 0));
        json_object_object_add(o, "running", json_object_new_int64(up));
        json_object_object_add(o, "busy", json_object_new_int64(busy));
        json_object_object_add(o, "pipelines", json_object_new_int64(ws ? (int64_t) ws->n_pipelines : 0));
        json_object_object_add(o, "quarantined", q);
        return o;
}

static json_object *devices_json(uint64_t mask) {
        json_object *a = json_object_new_array();

        for (unsigned i = 0; i < 64; i++)
                if (mask & (UINT64_C(1) << i))
                        json_object_array_add(a, json_object_new_int64(i));
        return a;
}

json_object *gh_pipelines_json(gh_workers *ws) {
        json_object *o = json_object_new_object(), *pl = json_object_new_array(), *refused = json_object_new_array();

        for (size_t i = 0; i < ws->n_pipelines; i++) {
                gh_pipeline *p = &ws->pipelines[i];
                json_object *d = NULL;
                json_object_deep_copy(p->desc, &d, NULL);
                json_object_object_add(d, "devices", devices_json(p->devices));
                json_object_object_add(d, "quarantined", json_object_new_boolean(p->quarantined));
                json_object_object_add(d, "crashes", json_object_new_int64(p->crashes));
                json_object_array_add(pl, d);
        }
        /* The same refusal on several devices is listed once. */
        for (unsigned i = 0; i < ws->n_workers; i++) {
                json_object *r = ws->workers[i].refused;
                for (size_t k = 0; k < json_object_array_length(r); k++) {
                        json_object *e = json_object_array_get_idx(r, k), *found = NULL;
                        const char *path = json_object_get_string(json_object_object_get(e, "path"));
                        for (size_t j = 0; j < json_object_array_length(refused) && !found; j++)
                                if (gh_streq(json_object_get_string(json_object_object_get(
                                                     json_object_array_get_idx(refused, j), "path")), path))
                                        found = json_object_array_get_idx(refused, j);
                        if (!found) {
                                found = json_object_new_object();
                                json_object_object_add(found, "path", json_object_get(json_object_object_get(e, "path")));
                                json_object_object_add(found, "reason", json_object_get(json_object_object_get(e, "reason")));
                                json_object_object_add(found, "devices", json_object_new_array());
                                json_object_array_add(refused, found);
                        }
                        json_object_array_add(json_object_object_get(found, "devices"),
                                              json_object_new_int64(ws->workers[i].device));
                }
        }
        json_object_object_add(o, "pipelines", pl);
        json_object_object_add(o, "refused", refused);
        return o;
}

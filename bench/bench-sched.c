/* gpuhost-bench sched: the daemon's overhead per job.
 *
 *   gpuhost-bench sched [--jobs N] [--clients N[,N...]] [--gpuhostd PATH]
 *                       [--worker PATH] [--plugins DIR] [--log-level LEVEL]
 *                       [--cpu-threads N] [--jobs-per-device N]
 *
 * Starts a real gpuhostd serving the CPU device, with its own temporary
 * socket, configuration and plugin directory (a copy of plugin-sleep.so),
 * and waits until the device's worker is up. Then, for each client count
 * given (default 1, then 8), that many threads, each with its own
 * connection, share N no-op jobs (default 10,000): io.gpuhost.Generate of
 * test-sleep with one step of nothing, called with "more" as interactive
 * clients call it. The done reply's timing (CLOCK_MONOTONIC microseconds;
 * the daemon, its worker and this program read the same clock) gives the
 * overhead on either side of the work:
 *   receipt -> first step   the daemon took the job (parsed and validated,
 *                           about to ask a worker for its estimate) ..
 *                           the worker began its first step
 *   last step -> reply      the worker ended its last step .. the daemon
 *                           built the final reply (just before sending it)
 * Baselines from the same run and connections: the round trip of
 * io.gpuhost.Ping (as many calls as jobs, before the jobs) and each job's
 * round trip as the client sees it, also split into its pieces (the call's
 * way in and the reply's way out are measured against the same clock).
 * Prints p50/p90/p99/max/mean, the ratios to the Ping round trip, the
 * throughput, the CPU time each job cost the daemon, its worker and the
 * clients (from /proc; and how busy other processes kept the CPUs, which
 * is what makes runs on a shared machine disagree), and whether both
 * overheads' p99 are under the 200 us target.
 * Each run starts with 200 warm-up jobs and pings that are not counted.
 * Paths default to $GH_GPUHOSTD, $GH_GPUHOST_WORKER and
 * $GH_TEST_PLUGIN_DIR, else to the build tree this program sits in.
 * --cpu-threads and --jobs-per-device set [workers] cpu_threads (the CPU
 * device's units) and [scheduler] jobs_per_device; the daemon's defaults
 * otherwise.
 * Exits 0 whatever the numbers, 1 on errors (or when interrupted), 2 on bad
 * usage; the daemon is stopped and the temporary directory removed in
 * every case. */
#include <dirent.h>
#include <errno.h>
#include <fcntl.h>
#include <ftw.h>
#include <getopt.h>
#include <limits.h>
#include <pthread.h>
#include <signal.h>
#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/resource.h>
#include <sys/stat.h>
#include <sys/types.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

#include <json-c/json.h>

#include "bench.h"
#include "common/util.h"
#include "daemon-run.h"
#include "files.h"
#include "gpuhost/client.h"

#define WARMUP 200
#define MAX_CLIENTS 64
#define MAX_RUNS 8
#define TARGET_USEC 200.0
#define CALL_TIMEOUT_USEC (60 * USEC_PER_SEC)
#define READY_TIMEOUT_MSEC 10000
#define STOP_TIMEOUT_MSEC 10000
#define NOOP_JOB "{\"pipeline\":\"test-sleep\",\"parameters\":{\"steps\":1}}"

typedef struct sched_opts {
        size_t jobs;
        unsigned clients[MAX_RUNS], n_runs;
        const char *log_level;
        unsigned cpu_threads, jobs_per_device; /* 0: the daemon's default */
        char gpuhostd[PATH_MAX], worker[PATH_MAX], plugins[PATH_MAX];
} sched_opts;

/* The daemon under test and its temporary directory. */
typedef struct daemon_env {
        char dir[88], sock[108], log[128]; /* a socket path fits in 108 bytes */
        pid_t pid;
        unsigned units;
} daemon_env;

/* Wall and CPU time (user + system) at one moment, microseconds. */
typedef struct cpu_sample {
        double wall, daemon, workers, self, machine; /* machine: all CPUs' busy time */
} cpu_sample;

/* What the client threads of one run share. */
typedef struct shared {
        const char *sock;
        pid_t daemon;
        pthread_mutex_t gate; /* held by main until every thread exists */
        pthread_barrier_t phase;
        bool abort;
        cpu_sample jobs_begin, jobs_end; /* around the job phase */
} shared;

/* What each job (and each ping) yields, in microseconds. The client's
 * clock is the daemon's (CLOCK_MONOTONIC, one machine), so a job's round
 * trip splits into M_SEND + M_FIRST + M_STEP + M_REPLY + M_BACK. */
enum {
        M_FIRST, /* request received -> first step begun (the worker) */
        M_REPLY, /* last step ended (the worker) -> final reply sent */
        M_JOB,   /* the call to the final reply, as the client sees it */
        M_PING,  /* io.gpuhost.Ping's round trip */
        M_SEND,  /* the client calls -> the daemon takes the job */
        M_STEP,  /* first step begun -> last step ended */
        M_BACK,  /* the final reply sent -> the client has it */
        M_N,
};

/* One client thread: its share of the samples. */
typedef struct client {
        shared *sh;
        size_t warmup, n;
        double *v[M_N];
        int r;
        char error[512];
} client;

typedef struct stats {
        double p50, p90, p99, max, mean;
} stats;

/* SIGINT or SIGTERM stops the daemon, so that the clients' calls fail and
 * everything is cleaned up on the error path. */
static volatile sig_atomic_t interrupted;
static volatile pid_t daemon_pid;

static void on_signal(int sig) {
        interrupted = 1;
        if (daemon_pid > 0)
                kill(daemon_pid, SIGTERM);
}

static void catch_signals(void) {
        struct sigaction sa = {.sa_handler = on_signal};

        sigemptyset(&sa.sa_mask);
        sigaction(SIGINT, &sa, NULL);
        sigaction(SIGTERM, &sa, NULL);
}

static int log_error(int r, const char *what) {
        fprintf(stderr, "gpuhost-bench sched: %s: %s\n", what, strerror(r < 0 ? -r : r));
        return r < 0 ? r : -r;
}

static double now_usec(void) {
        struct timespec ts;
        clock_gettime(CLOCK_MONOTONIC, &ts);
        return (double) ts.tv_sec * 1e6 + (double) ts.tv_nsec / 1e3;
}

static void sleep_ms(unsigned ms) {
        struct timespec ts = {.tv_sec = ms / 1000, .tv_nsec = (long) (ms % 1000) * 1000000};
        nanosleep(&ts, NULL);
}

/* ---- paths and the temporary directory ---- */

/* $|env|, else |rel| in the build tree this program was built in (the
 * parent of its own directory), made absolute. */
static int default_path(const char *env, const char *rel, char *buf, size_t size) {
        const char *v = getenv(env);
        char self[PATH_MAX], joined[PATH_MAX + 64];

        if (v && *v)
                return snprintf(buf, size, "%s", v) < (int) size ? 0 : -ENAMETOOLONG;
        ssize_t n = readlink("/proc/self/exe", self, sizeof(self) - 1);
        if (n < 0)
                return -errno;
        self[n] = '\0';
        char *slash = strrchr(self, '/');
        if (slash)
                *slash = '\0';
        snprintf(joined, sizeof(joined), "%s/../%s", self, rel);
        char *real = realpath(joined, NULL);
        if (!real) /* reported when it is used */
                return snprintf(buf, size, "%s", joined) < (int) size ? 0 : -ENAMETOOLONG;
        int r = snprintf(buf, size, "%s", real) < (int) size ? 0 : -ENAMETOOLONG;
        free(real);
        return r;
}


static int remove_entry(const char *path, const struct stat *st, int type, struct FTW *ftw) {
        return remove(path) < 0 ? -1 : 0;
}

static void remove_tree(const char *dir) {
        if (dir[0])
                nftw(dir, remove_entry, 16, FTW_DEPTH | FTW_PHYS);
}


/* The temporary directory: socket, log, configuration, an empty models
 * directory and the plugin directory with plugin-sleep.so. */
static int prepare_dir(const sched_opts *o, daemon_env *d, char *ret_conf, size_t conf_size) {
        const char *tmp = getenv("TMPDIR");
        char plugins[128], models[128], from[PATH_MAX + 32], to[160], text[PATH_MAX + 1024];

        if (snprintf(d->dir, sizeof(d->dir), "%s/gh-bench-sched-XXXXXX", tmp && *tmp ? tmp : "/tmp") >=
            (int) sizeof(d->dir)) {
                d->dir[0] = '\0';
                return log_error(-ENAMETOOLONG, "socket path (set TMPDIR to a shorter directory)");
        }
        if (!mkdtemp(d->dir)) {
                d->dir[0] = '\0';
                return log_error(-errno, "temporary directory");
        }
        snprintf(d->sock, sizeof(d->sock), "%s/gpuhost.sock", d->dir);
        snprintf(d->log, sizeof(d->log), "%s/daemon.log", d->dir);
        snprintf(plugins, sizeof(plugins), "%s/plugins", d->dir);
        snprintf(models, sizeof(models), "%s/models", d->dir);
        snprintf(ret_conf, conf_size, "%s/gpuhost.conf", d->dir);
        if (mkdir(plugins, 0755) < 0 || mkdir(models, 0755) < 0)
                return log_error(-errno, "temporary directory");
        snprintf(from, sizeof(from), "%s/plugin-sleep.so", o->plugins);
        snprintf(to, sizeof(to), "%s/plugin-sleep.so", plugins);
        int r = gh_test_copy_file(from, to, 0644); /* the worker refuses group/other-writable plugins */
        if (r < 0)
                return log_error(r, from);
        int n = snprintf(text, sizeof(text),
                         "[daemon]\nlog_level = %s\n[socket]\npath = %s\n"
                         "[devices]\ncpu_memory = 256M\nslab_size = 2M\n[models]\ndirectory = %s\n"
                         "[workers]\nexecutable = %s\nplugin_directory = %s\n"
                         "[jobs]\nkeep_finished_sec = 0\nmax_finished = 0\n",
                         o->log_level, d->sock, models, o->worker, plugins);
        if (o->cpu_threads)
                n += snprintf(text + n, sizeof(text) - (size_t) n, "[workers]\ncpu_threads = %u\n", o->cpu_threads);
        if (o->jobs_per_device)
                snprintf(text + n, sizeof(text) - (size_t) n, "[scheduler]\njobs_per_device = %u\n",
                         o->jobs_per_device);
        r = gh_test_write_text(ret_conf, text);
        return r < 0 ? log_error(r, "writing the configuration") : 0;
}

/* ---- CPU time ---- */

static int proc_cpu_usec(pid_t pid, double *ret_usec) {
        char path[64], buf[1024];
        unsigned long long user, sys;

        snprintf(path, sizeof(path), "/proc/%d/stat", (int) pid);
        _cleanup_close_ int fd = open(path, O_RDONLY | O_CLOEXEC);
        if (fd < 0)
                return -errno;
        ssize_t n = read(fd, buf, sizeof(buf) - 1);
        if (n <= 0)
                return -EIO;
        buf[n] = '\0';
        const char *p = strrchr(buf, ')'); /* past the name: state, 10 fields, utime, stime */
        if (!p || sscanf(p + 1, " %*c %*d %*d %*d %*d %*d %*u %*u %*u %*u %*u %llu %llu", &user, &sys) != 2)
                return -EBADMSG;
        *ret_usec = (double) (user + sys) * 1e6 / (double) sysconf(_SC_CLK_TCK);
        return 0;
}

/* The CPU time of |pid|'s children (the workers), as listed by each of
 * its threads. */
static double children_cpu_usec(pid_t pid) {
        char path[64];
        struct dirent *de;
        double sum = 0, t;
        int child;

        snprintf(path, sizeof(path), "/proc/%d/task", (int) pid);
        DIR *dir = opendir(path);
        while (dir && (de = readdir(dir))) {
                char list[128];
                if (de->d_name[0] == '.')
                        continue;
                snprintf(list, sizeof(list), "%s/%.32s/children", path, de->d_name);
                _cleanup_fclose_ FILE *f = fopen(list, "re");
                while (f && fscanf(f, "%d", &child) == 1)
                        if (proc_cpu_usec(child, &t) >= 0)
                                sum += t;
        }
        if (dir)
                closedir(dir);
        return sum;
}

/* The busy time of all CPUs together (not idle, not waiting for I/O). */
static double machine_busy_usec(void) {
        unsigned long long v[8] = {0}, sum = 0;
        _cleanup_fclose_ FILE *f = fopen("/proc/stat", "re");

        if (!f || fscanf(f, "cpu %llu %llu %llu %llu %llu %llu %llu %llu", &v[0], &v[1], &v[2], &v[3], &v[4], &v[5],
                         &v[6], &v[7]) != 8)
                return 0;
        for (int i = 0; i < 8; i++)
                sum += i == 3 || i == 4 ? 0 : v[i]; /* idle, iowait */
        return (double) sum * 1e6 / (double) sysconf(_SC_CLK_TCK);
}

static void cpu_sample_take(pid_t daemon, cpu_sample *ret) {
        struct rusage ru;

        *ret = (cpu_sample) {.wall = now_usec(), .machine = machine_busy_usec()};
        if (proc_cpu_usec(daemon, &ret->daemon) < 0)
                ret->daemon = 0;
        ret->workers = children_cpu_usec(daemon);
        if (getrusage(RUSAGE_SELF, &ru) == 0)
                ret->self = (double) (ru.ru_utime.tv_sec + ru.ru_stime.tv_sec) * 1e6 +
                            (double) (ru.ru_utime.tv_usec + ru.ru_stime.tv_usec);
}

/* ---- the daemon ---- */

static void print_log_tail(const daemon_env *d) {
        char buf[4096];
        _cleanup_close_ int fd = open(d->log, O_RDONLY | O_CLOEXEC);

        if (fd < 0)
                return;
        off_t end = lseek(fd, 0, SEEK_END);
        off_t from = end > (off_t) sizeof(buf) - 1 ? end - (off_t) sizeof(buf) + 1 : 0;
        ssize_t n = pread(fd, buf, sizeof(buf) - 1, from);
        if (n <= 0)
                return;
        buf[n] = '\0';
        fprintf(stderr, "gpuhost-bench sched: the end of gpuhostd's log:\n%s", buf);
}

/* The CPU device's slice units, once its worker is up; 0 before. */
static int cpu_units(const daemon_env *d, unsigned *ret_units) {
        char *err = NULL;
        json_object *s = gh_test_call(d->sock, "io.gpuhost.GetStatus", NULL, &err);
        json_object *devs = json_object_object_get(s, "devices");
        int r = err ? -EPROTO : 0;

        *ret_units = 0;
        for (size_t i = 0; r >= 0 && i < json_object_array_length(devs); i++) {
                json_object *dev = json_object_array_get_idx(devs, i);
                if (gh_streq(json_object_get_string(json_object_object_get(dev, "kind")), "cpu"))
                        *ret_units = (unsigned) json_object_get_int64(json_object_object_get(dev, "units"));
        }
        free(err);
        json_object_put(s);
        return r;
}

static int daemon_wait_ready(daemon_env *d) {
        for (unsigned waited = 0; waited < READY_TIMEOUT_MSEC; waited += 20) {
                if (waitpid(d->pid, NULL, WNOHANG) == d->pid) {
                        d->pid = daemon_pid = 0;
                        return log_error(-ECHILD, "gpuhostd exited while starting");
                }
                int r = cpu_units(d, &d->units);
                if (r < 0)
                        return log_error(r, "io.gpuhost.GetStatus");
                if (d->units > 0)
                        return 0;
                sleep_ms(20);
        }
        return log_error(-ETIMEDOUT, "waiting for the CPU device's worker");
}

static int daemon_start(const sched_opts *o, daemon_env *d, const char *conf) {
        if (access(o->gpuhostd, X_OK) < 0)
                return log_error(-errno, o->gpuhostd);
        if (access(o->worker, X_OK) < 0)
                return log_error(-errno, o->worker);
        if (setenv("GH_GPUHOSTD", o->gpuhostd, 1) < 0)
                return log_error(-errno, "setenv");
        int r = gh_test_daemon_start(conf, d->log, d->sock, NULL, &d->pid);
        if (r == -ECHILD) { /* already reaped */
                d->pid = 0;
                fprintf(stderr, "gpuhost-bench sched: gpuhostd exited while starting\n");
                return r;
        }
        if (r < 0)
                return log_error(r, "starting gpuhostd");
        daemon_pid = d->pid;
        return daemon_wait_ready(d);
}

/* SIGTERM, then SIGKILL if it has not exited in 10 s. Returns -ECHILD
 * unless it exited with status 0. */
static int daemon_stop(daemon_env *d) {
        int status = 0;
        pid_t got = 0;

        if (d->pid <= 0)
                return 0;
        kill(d->pid, SIGTERM);
        for (unsigned waited = 0; got == 0 && waited < STOP_TIMEOUT_MSEC; waited += 10) {
                got = waitpid(d->pid, &status, WNOHANG);
                if (got == 0)
                        sleep_ms(10);
        }
        if (got == 0) {
                kill(d->pid, SIGKILL);
                got = waitpid(d->pid, &status, 0);
        }
        d->pid = daemon_pid = 0;
        if (got < 0 || !WIFEXITED(status) || WEXITSTATUS(status) != 0)
                return -ECHILD;
        return 0;
}

/* ---- one client ---- */

typedef struct job_wait {
        client *cl;
        bool done;
        double final_usec;  /* when the final reply came */
        int64_t timing[4]; /* received, first step, last step, replied */
} job_wait;

static int parse_done(const char *params, job_wait *w) {
        static const char *const keys[4] = {"received_usec", "first_step_usec", "last_step_usec", "replied_usec"};
        json_object *p = json_tokener_parse(params), *t = json_object_object_get(p, "timing"), *v;
        int r = 0;

        if (!gh_streq(json_object_get_string(json_object_object_get(p, "state")), "done"))
                r = -EBADMSG;
        for (int i = 0; r >= 0 && i < 4; i++)
                if (json_object_object_get_ex(t, keys[i], &v) && json_object_is_type(v, json_type_int))
                        w->timing[i] = json_object_get_int64(v);
                else
                        r = -EBADMSG;
        json_object_put(p);
        if (r < 0)
                snprintf(w->cl->error, sizeof(w->cl->error), "final reply without its timing: %.400s", params);
        w->done = r >= 0;
        return r;
}

/* Every reply of a job; fds that come with them are closed when the
 * library frees the reply. */
static int on_job_reply(gh_client *c, gh_reply *reply, void *userdata) {
        job_wait *w = userdata;

        if (gh_reply_error(reply)) {
                snprintf(w->cl->error, sizeof(w->cl->error), "Generate: %s %.400s", gh_reply_error(reply),
                         gh_reply_parameters(reply));
                return -EPROTO;
        }
        if (gh_reply_continues(reply))
                return 0;
        w->final_usec = now_usec();
        return parse_done(gh_reply_parameters(reply), w);
}

/* One no-op job; sample |i| of the client's share, none past its end. */
static int run_job(gh_client *gc, client *cl, size_t i) {
        job_wait w = {.cl = cl};
        double t0 = now_usec();
        int r = gh_client_call_more(gc, "io.gpuhost.Generate", NOOP_JOB, on_job_reply, &w);
        double t1 = now_usec();

        if (r >= 0 && !w.done)
                r = -EBADMSG;
        if (r < 0) {
                if (!cl->error[0])
                        snprintf(cl->error, sizeof(cl->error), "Generate: %s", strerror(-r));
                return r;
        }
        if (i >= cl->n)
                return 0;
        cl->v[M_SEND][i] = (double) w.timing[0] - t0;
        cl->v[M_FIRST][i] = (double) (w.timing[1] - w.timing[0]);
        cl->v[M_STEP][i] = (double) (w.timing[2] - w.timing[1]);
        cl->v[M_REPLY][i] = (double) (w.timing[3] - w.timing[2]);
        cl->v[M_BACK][i] = w.final_usec - (double) w.timing[3];
        cl->v[M_JOB][i] = t1 - t0;
        return 0;
}

static int run_ping(gh_client *gc, client *cl, size_t i) {
        gh_reply *reply = NULL;
        double t0 = now_usec();
        int r = gh_client_call(gc, "io.gpuhost.Ping", NULL, &reply);
        double t1 = now_usec();

        if (r >= 0 && gh_reply_error(reply))
                r = -EPROTO;
        if (r < 0)
                snprintf(cl->error, sizeof(cl->error), "Ping: %s", r == -EPROTO ? gh_reply_error(reply) : strerror(-r));
        else if (i < cl->n)
                cl->v[M_PING][i] = t1 - t0;
        gh_reply_free(reply);
        return r;
}

static int warm_up(gh_client *gc, client *cl) {
        int r = 0;

        for (size_t i = 0; r >= 0 && i < cl->warmup; i++)
                r = run_job(gc, cl, SIZE_MAX);
        for (size_t i = 0; r >= 0 && i < cl->warmup; i++)
                r = run_ping(gc, cl, SIZE_MAX);
        return r;
}

/* Warm-up, then the pings, then the jobs, each phase begun by all the
 * clients together; one of them takes the CPU times when the job phase
 * begins and ends. A client that failed still meets the others at the
 * barriers. */
static void *client_main(void *userdata) {
        client *cl = userdata;
        shared *sh = cl->sh;
        gh_client *gc = NULL;

        pthread_mutex_lock(&sh->gate);
        bool abort_run = sh->abort;
        pthread_mutex_unlock(&sh->gate);
        if (abort_run)
                return NULL;
        int r = gh_client_connect(sh->sock, &gc);
        if (r < 0)
                snprintf(cl->error, sizeof(cl->error), "connecting: %s", strerror(-r));
        else {
                gh_client_set_timeout(gc, CALL_TIMEOUT_USEC);
                r = warm_up(gc, cl);
        }
        pthread_barrier_wait(&sh->phase);
        for (size_t i = 0; r >= 0 && i < cl->n; i++)
                r = run_ping(gc, cl, i);
        if (pthread_barrier_wait(&sh->phase) == PTHREAD_BARRIER_SERIAL_THREAD)
                cpu_sample_take(sh->daemon, &sh->jobs_begin);
        for (size_t i = 0; r >= 0 && i < cl->n; i++)
                r = run_job(gc, cl, i);
        if (pthread_barrier_wait(&sh->phase) == PTHREAD_BARRIER_SERIAL_THREAD)
                cpu_sample_take(sh->daemon, &sh->jobs_end);
        cl->r = r;
        gh_client_free(gc);
        return NULL;
}

/* ---- one run: N clients, the statistics ---- */

typedef struct samples {
        size_t n;
        double *v[M_N];
        cpu_sample jobs_begin, jobs_end;
} samples;

static void samples_free(samples *s) {
        for (int m = 0; m < M_N; m++)
                free(s->v[m]);
}

static int samples_alloc(samples *s, size_t n) {
        *s = (samples) {.n = n};
        for (int m = 0; m < M_N; m++)
                if (!(s->v[m] = calloc(n, sizeof(double)))) {
                        samples_free(s);
                        return -ENOMEM;
                }
        return 0;
}

/* Splits the jobs and the warm-up as evenly as they go. */
static void clients_init(client *cls, unsigned n, shared *sh, samples *s) {
        size_t at = 0;

        for (unsigned i = 0; i < n; i++) {
                size_t share = s->n / n + (i < s->n % n);
                cls[i] = (client) {.sh = sh, .n = share};
                for (int m = 0; m < M_N; m++)
                        cls[i].v[m] = s->v[m] + at;
                cls[i].warmup = WARMUP / n + (i < WARMUP % n);
                at += share;
        }
}

/* Starts every thread behind the gate, then opens it (with abort set if
 * a thread could not be started) and joins them. */
static int clients_run(client *cls, unsigned n, shared *sh) {
        pthread_t tids[MAX_CLIENTS];
        unsigned started = 0;
        int r = 0;

        pthread_mutex_lock(&sh->gate);
        for (; started < n; started++) {
                r = -pthread_create(&tids[started], NULL, client_main, &cls[started]);
                if (r < 0)
                        break;
        }
        sh->abort = r < 0;
        pthread_mutex_unlock(&sh->gate);
        for (unsigned i = 0; i < started; i++)
                pthread_join(tids[i], NULL);
        if (r < 0)
                return log_error(r, "starting the client threads");
        for (unsigned i = 0; i < n; i++)
                if (cls[i].r < 0) {
                        fprintf(stderr, "gpuhost-bench sched: client %u: %s\n", i, cls[i].error);
                        return cls[i].r;
                }
        return 0;
}

static int collect(const daemon_env *d, unsigned n_clients, samples *s) {
        client cls[MAX_CLIENTS];
        shared sh = {.sock = d->sock, .daemon = d->pid};
        int r;

        clients_init(cls, n_clients, &sh, s);
        if (pthread_mutex_init(&sh.gate, NULL) != 0)
                return log_error(-ENOMEM, "mutex");
        r = -pthread_barrier_init(&sh.phase, NULL, n_clients);
        if (r < 0) {
                pthread_mutex_destroy(&sh.gate);
                return log_error(r, "barrier");
        }
        r = clients_run(cls, n_clients, &sh);
        s->jobs_begin = sh.jobs_begin;
        s->jobs_end = sh.jobs_end;
        pthread_barrier_destroy(&sh.phase);
        pthread_mutex_destroy(&sh.gate);
        return r;
}

static int cmp_double(const void *x, const void *y) {
        double a = *(const double *) x, b = *(const double *) y;
        return (a > b) - (a < b);
}

/* The nearest-rank percentile |p| of sorted |v|: the ceil(p * n)-th value
 * (the margin absorbs rounding either way: 0.07 * 100 = 7.000000000000001
 * and 0.29 * 100 = 28.999999999999996 must give 7 and 29). */
static double rank(const double *v, size_t n, double p) {
        size_t k = (size_t) (p * (double) n + 0.999999);

        return v[k < 1 ? 0 : k - 1];
}

/* Sorts |v|. */
static stats stats_of(double *v, size_t n) {
        double sum = 0;

        if (n == 0)
                return (stats) {0};
        qsort(v, n, sizeof(*v), cmp_double);
        for (size_t i = 0; i < n; i++)
                sum += v[i];
        return (stats) {.p50 = rank(v, n, 0.50), .p90 = rank(v, n, 0.90), .p99 = rank(v, n, 0.99), .max = v[n - 1],
                        .mean = sum / (double) n};
}

static void print_row(const char *what, const stats *s) {
        printf("  %-30s %9.1f %9.1f %9.1f %9.1f %9.1f\n", what, s->p50, s->p90, s->p99, s->max, s->mean);
}

static void print_ratio(const char *what, const stats *s, const stats *ping) {
        printf("  %-30s %9.2f %9.2f\n", what, s->p50 / ping->p50, s->p99 / ping->p99);
}

/* Jobs per second, and the CPU time each job cost in each process. */
static void print_throughput(const samples *s) {
        const cpu_sample *b = &s->jobs_begin, *e = &s->jobs_end;
        double n = (double) s->n, wall = e->wall - b->wall;
        double daemon = e->daemon - b->daemon, workers = e->workers - b->workers, self = e->self - b->self;
        double ours = daemon + workers + self, others = e->machine - b->machine - ours;
        long cpus = sysconf(_SC_NPROCESSORS_ONLN);
        double capacity = wall * (double) (cpus > 0 ? cpus : 1);

        printf("  throughput: %.0f jobs/s (%.0f us of wall time per job)\n", n * 1e6 / wall, wall / n);
        printf("  CPU time per job: gpuhostd %.0f us, worker %.0f us, clients %.0f us\n", daemon / n, workers / n,
               self / n);
        printf("  CPU use: these %.0f%% of %ld CPU(s), other processes %.0f%%\n", 100 * ours / capacity, cpus,
               others > 0 ? 100 * others / capacity : 0.0);
}

static void report(const samples *s, unsigned n_clients) {
        stats st[M_N];

        for (int m = 0; m < M_N; m++)
                st[m] = stats_of(s->v[m], s->n);
        bool met = st[M_FIRST].p99 < TARGET_USEC && st[M_REPLY].p99 < TARGET_USEC;
        printf("\nscheduler overhead, %zu no-op jobs, %u client(s):\n", s->n, n_clients);
        printf("  %-30s %9s %9s %9s %9s %9s\n", "microseconds", "p50", "p90", "p99", "max", "mean");
        print_row("receipt -> first step", &st[M_FIRST]);
        print_row("last step -> reply", &st[M_REPLY]);
        print_row("job round trip (client)", &st[M_JOB]);
        print_row("Ping round trip (baseline)", &st[M_PING]);
        printf("  %-30s %9s %9s\n", "ratio to the Ping round trip", "p50", "p99");
        print_ratio("receipt -> first step", &st[M_FIRST], &st[M_PING]);
        print_ratio("last step -> reply", &st[M_REPLY], &st[M_PING]);
        print_ratio("job round trip (client)", &st[M_JOB], &st[M_PING]);
        printf("  the round trip, piece by piece (means add up to its mean):\n");
        print_row("  call -> receipt", &st[M_SEND]);
        print_row("  receipt -> first step", &st[M_FIRST]);
        print_row("  first -> last step (no-op)", &st[M_STEP]);
        print_row("  last step -> reply", &st[M_REPLY]);
        print_row("  reply -> client has it", &st[M_BACK]);
        print_throughput(s);
        printf("target p99 < %.0f us (both overheads): %s "
               "(receipt -> first step %.1f us, last step -> reply %.1f us)\n",
               TARGET_USEC, met ? "met" : "not met", st[M_FIRST].p99, st[M_REPLY].p99);
        fflush(stdout);
}

static int run_one(const daemon_env *d, size_t jobs, unsigned n_clients) {
        samples s;
        int r = samples_alloc(&s, jobs);

        if (r < 0)
                return log_error(r, "samples");
        r = collect(d, n_clients, &s);
        if (r >= 0)
                report(&s, n_clients);
        samples_free(&s);
        return r;
}

/* ---- options ---- */

static void usage(void) {
        fprintf(stderr, "Usage: gpuhost-bench sched [--jobs N] [--clients N[,N...]] [--gpuhostd PATH]\n"
                        "                           [--worker PATH] [--plugins DIR] [--log-level LEVEL]\n"
                        "                           [--cpu-threads N] [--jobs-per-device N]\n");
}

static int parse_unsigned(const char *arg, unsigned min, unsigned max, unsigned *ret) {
        char *end;
        unsigned long v = strtoul(arg, &end, 10);

        if (end == arg || *end || v < min || v > max)
                return -EINVAL;
        *ret = (unsigned) v;
        return 0;
}

static int parse_clients(const char *arg, sched_opts *o) {
        char *end;

        o->n_runs = 0;
        do {
                unsigned long v = strtoul(arg, &end, 10);
                if (end == arg || v < 1 || v > MAX_CLIENTS || o->n_runs == MAX_RUNS || (*end && *end != ','))
                        return -EINVAL;
                o->clients[o->n_runs++] = (unsigned) v;
                arg = end + 1;
        } while (*end);
        return 0;
}

static int parse_path(const char *arg, char *buf, size_t size) {
        return snprintf(buf, size, "%s", arg) < (int) size ? 0 : -ENAMETOOLONG;
}

static int parse_option(int c, const char *arg, sched_opts *o) {
        char *end;

        switch (c) {
        case 'j':
                o->jobs = strtoull(arg, &end, 10);
                return end == arg || *end || o->jobs < 1 || o->jobs > 100000000 ? -EINVAL : 0;
        case 'c':
                return parse_clients(arg, o);
        case 'g':
                return parse_path(arg, o->gpuhostd, sizeof(o->gpuhostd));
        case 'w':
                return parse_path(arg, o->worker, sizeof(o->worker));
        case 'p':
                return parse_path(arg, o->plugins, sizeof(o->plugins));
        case 'l':
                o->log_level = arg;
                return 0;
        case 't':
                return parse_unsigned(arg, 1, 64, &o->cpu_threads); /* a unit mask has 64 bits */
        case 'J':
                return parse_unsigned(arg, 1, 64, &o->jobs_per_device);
        default:
                return -EINVAL;
        }
}

static int parse_options(int argc, char **argv, sched_opts *o) {
        static const struct option options[] = {
                {"jobs", required_argument, NULL, 'j'},     {"clients", required_argument, NULL, 'c'},
                {"gpuhostd", required_argument, NULL, 'g'}, {"worker", required_argument, NULL, 'w'},
                {"plugins", required_argument, NULL, 'p'},  {"log-level", required_argument, NULL, 'l'},
                {"cpu-threads", required_argument, NULL, 't'}, {"jobs-per-device", required_argument, NULL, 'J'},
                {},
        };
        int c;

        *o = (sched_opts) {.jobs = 10000, .clients = {1, 8}, .n_runs = 2, .log_level = "info"};
        if (default_path("GH_GPUHOSTD", "daemon/gpuhostd", o->gpuhostd, sizeof(o->gpuhostd)) < 0 ||
            default_path("GH_GPUHOST_WORKER", "daemon/gpuhost-worker", o->worker, sizeof(o->worker)) < 0 ||
            default_path("GH_TEST_PLUGIN_DIR", "tests/plugins", o->plugins, sizeof(o->plugins)) < 0)
                return -ENAMETOOLONG;
        optind = 1;
        while ((c = getopt_long(argc, argv, "", options, NULL)) >= 0)
                if (parse_option(c, optarg, o) < 0)
                        return -EINVAL;
        return optind == argc ? 0 : -EINVAL;
}

/* ---- the subcommand ---- */

static int run_all(const sched_opts *o, daemon_env *d) {
        char conf[PATH_MAX + 32];
        int r = prepare_dir(o, d, conf, sizeof(conf));

        if (r >= 0)
                r = daemon_start(o, d, conf);
        if (r < 0)
                return r;
        printf("gpuhost-bench sched: gpuhostd (log_level %s) serving the CPU device with %u slice unit(s), "
               "%ld CPU(s) online;\n"
               "each run: %d warm-up jobs and pings first (not counted), then %zu pings, then %zu no-op jobs\n",
               o->log_level, d->units, sysconf(_SC_NPROCESSORS_ONLN), WARMUP, o->jobs, o->jobs);
        fflush(stdout);
        for (unsigned i = 0; r >= 0 && !interrupted && i < o->n_runs; i++)
                r = run_one(d, o->jobs, o->clients[i]);
        return interrupted ? log_error(-EINTR, "stopped") : r;
}

int bench_sched(int argc, char **argv) {
        sched_opts o;
        daemon_env d = {0};

        if (parse_options(argc, argv, &o) < 0) {
                usage();
                return 2;
        }
        catch_signals();
        int r = run_all(&o, &d);
        if (r < 0 && d.pid > 0 && waitpid(d.pid, NULL, WNOHANG) == d.pid)
                d.pid = daemon_pid = 0; /* it died under us */
        if (r < 0 && !interrupted)
                print_log_tail(&d);
        int s = daemon_stop(&d);
        if (s < 0 && r >= 0) {
                r = log_error(s, "gpuhostd did not exit cleanly");
                print_log_tail(&d);
        }
        remove_tree(d.dir);
        return r < 0 ? 1 : 0;
}

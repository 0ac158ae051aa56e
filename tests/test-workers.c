/* End-to-end tests of the worker processes on the CPU device, through a
 * real gpuhostd that runs the built gpuhost-worker over a directory of the
 * test plugins: a test-sum job streamed with "more" (one progress reply a
 * step, the output as a sealed memfd whose block sums match the model's
 * data, so the worker read the daemon's weights through the shared slabs);
 * a plugin that crashes (WorkerCrashed with the signal and the dead pid,
 * the daemon up, a new worker, the model not loaded again); one that hangs
 * (killed on the heartbeat timeout); workspace over-allocation (JobFailed
 * ENOSPC, no crash); a retry-safe plugin run again after its crash;
 * quarantine after three crashes and EnablePlugin; the refused plugin files
 * (ListPipelines, the log, gpuhostctl); parameter validation before any
 * plugin sees a job; cancellation when the caller disconnects;
 * RestartWorker; the fds a worker holds; and image parameters (test-sleep
 * sums and hashes the pixels it gets): raw pixels and PNG files sent
 * inline as base64 or as fds (a memfd, a file), PNGs of every colour type,
 * 16-bit and interlaced decoded by the worker, gpuhostctl's @FILE.png,
 * and bad images refused before a job exists or failing the job. */
#include <stdarg.h>
#include <stddef.h>
#include <setjmp.h>
#include <cmocka.h>
#include <dirent.h>
#include <fcntl.h>
#include <json-c/json.h>
#include <png.h>
#include <pthread.h>
#include <signal.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/prctl.h>
#include <sys/resource.h>
#include <sys/stat.h>
#include <sys/uio.h>
#include <sys/wait.h>

#include "common/base64.h"
#include "common/util.h"
#include "gpuhost/client.h"
#include "daemon-run.h"
#include "daemon-call.h"
#include "files.h"
#include "gpuhostctl/ctl.h"
#include "st-writer.h"

#define W_ROWS 768
#define W_COLS 1024
#define W_N (W_ROWS * W_COLS) /* 3 MiB of F32: spans two 2 MiB slabs */
#define MODEL "sum"

typedef struct env {
        char dir[64], sock[128], log[128], plugins[128], models[128];
        pid_t pid;
        int device;             /* the CPU device's index */
        float *w;               /* the tensor's values, as written */
} env;

static env E;

/* One gpuhostd per test file (E.sock): lib/daemon-call.h's calls on it. */
#define call(method, params, ret_error) gh_test_call_checked(E.sock, method, params, ret_error)
#define call_ok(method, params) gh_test_call_ok(E.sock, method, params)
#define str(o, key) gh_test_str(o, key)
#define num(o, key) gh_test_num(o, key)

/* ---- files ---- */

static void write_text(const char *path, const char *text) {
        assert_int_equal(gh_test_write_text(path, text), 0);
}

static char *read_text(const char *path) {
        assert_int_equal(access(path, R_OK), 0);
        char *text = gh_test_read_text(path);
        assert_non_null(text);
        return text;
}

/* Copies the built plugins, mode 0644 (the worker refuses files others
 * may write). */
static void copy_plugins(void) {
        const char *src = getenv("GH_TEST_PLUGIN_DIR");
        DIR *d;
        struct dirent *de;
        int copied = 0;

        assert_non_null(src);
        assert_non_null(d = opendir(src));
        while ((de = readdir(d))) {
                size_t len = strlen(de->d_name);
                char from[512], to[512];
                if (len < 4 || strcmp(de->d_name + len - 3, ".so") != 0)
                        continue;
                snprintf(from, sizeof(from), "%s/%s", src, de->d_name);
                snprintf(to, sizeof(to), "%s/%s", E.plugins, de->d_name);
                assert_int_equal(gh_test_copy_file(from, to, 0644), 0);
                copied++;
        }
        closedir(d);
        assert_int_equal(copied, 10);
}

/* Multiples of 1/8 up to 125: exact in float, and every partial sum is
 * exact in double, so the sums the worker computes, in whatever order its
 * threads add them, must equal these bit for bit. */
static void make_model(void) {
        char path[256];

        E.w = malloc(W_N * sizeof(float));
        assert_non_null(E.w);
        for (uint32_t i = 0; i < W_N; i++)
                E.w[i] = (float) ((int) ((uint64_t) i * 7919 % 2001) - 1000) / 8.0f;
        gh_test_tensor t[] = {{"w", GH_DTYPE_F32, 2, {W_ROWS, W_COLS}, E.w}};
        snprintf(path, sizeof(path), "%s/" MODEL ".safetensors", E.models);
        assert_int_equal(gh_test_write_safetensors(path, t, 1, NULL, 8), 0);
}

/* The sums of |blocks| blocks of ceil(n / blocks) values, the last one
 * shorter. */
static void expected_sums(unsigned blocks, double *ret) {
        uint64_t per = (W_N + blocks - 1) / blocks;

        for (unsigned k = 0; k < blocks; k++) {
                double acc = 0;
                for (uint64_t i = k * per; i < W_N && i < (k + 1) * per; i++)
                        acc += E.w[i];
                ret[k] = acc;
        }
}

/* ---- calls ---- */

static gh_client *connect_daemon(void) {
        gh_client *c = NULL;
        assert_int_equal(gh_client_connect(E.sock, &c), 0);
        gh_client_set_timeout(c, 30 * USEC_PER_SEC);
        return c;
}

static void assert_contains(const char *haystack, const char *needle) {
        if (!haystack || !strstr(haystack, needle))
                fail_msg("'%s' lacks '%s'", haystack ? haystack : "(null)", needle);
}

/* The Generate parameters for |pipeline| on the CPU device. */
static const char *gen(const char *pipeline, const char *parameters) {
        static char buf[1024];
        snprintf(buf, sizeof(buf), "{\"pipeline\":\"%s\",\"device\":%d,\"parameters\":%s}", pipeline, E.device,
                 parameters ? parameters : "{}");
        return buf;
}

static const char *sum_params(unsigned blocks) {
        static char buf[256];
        snprintf(buf, sizeof(buf), "{\"model\":\"" MODEL "\",\"tensor\":\"w\",\"blocks\":%u}", blocks);
        return gen("test-sum", buf);
}

/* A Generate call with "more": every reply, in order. */
typedef struct job {
        json_object *replies;   /* each reply's parameters, plus "continues" */
        json_object *last;      /* the final reply (in |replies|) */
        char *error;            /* the final reply's error; NULL: done */
        int fds[4];             /* the final reply's fds, taken */
        size_t n_fds;
        size_t stop_after;      /* > 0: hang up after this many replies */
        uint64_t usec;          /* how long the call took */
} job;

static int on_job_reply(gh_client *c, gh_reply *r, void *userdata) {
        job *j = userdata;
        json_object *o = json_tokener_parse(gh_reply_parameters(r));

        assert_non_null(o);
        json_object_object_add(o, "continues", json_object_new_boolean(gh_reply_continues(r)));
        json_object_array_add(j->replies, o);
        if (gh_reply_continues(r) && !gh_reply_error(r)) {
                assert_int_equal(gh_reply_n_fds(r), 0); /* no previews from these plugins */
        } else {
                j->last = o;
                j->error = gh_reply_error(r) ? strdup(gh_reply_error(r)) : NULL;
                for (size_t i = 0; i < gh_reply_n_fds(r) && i < ELEMENTSOF(j->fds); i++)
                        j->fds[j->n_fds++] = gh_reply_take_fd(r, i);
        }
        if (j->stop_after && json_object_array_length(j->replies) >= j->stop_after)
                return -ECANCELED;
        return 0;
}

static void job_run_fds(const char *params, const int *fds, size_t n_fds, job *j) {
        gh_client *c = connect_daemon();
        uint64_t t0 = gh_now_usec(CLOCK_MONOTONIC);

        *j = (job) {.replies = json_object_new_array(), .stop_after = j->stop_after};
        int r = gh_client_call_full(c, "io.gpuhost.Generate", params, GH_CALL_MORE, fds, n_fds, on_job_reply, j);
        j->usec = gh_now_usec(CLOCK_MONOTONIC) - t0;
        if (j->stop_after)
                assert_int_equal(r, -ECANCELED);
        else {
                assert_int_equal(r, 0);
                assert_non_null(j->last);
        }
        gh_client_free(c); /* with stop_after: the hang-up */
}

static void job_run(const char *params, job *j) {
        job_run_fds(params, NULL, 0, j);
}

static void job_done(job *j) {
        gh_close_many(j->fds, j->n_fds);
        json_object_put(j->replies);
        free(j->error);
}

/* Runs |params| and expects |error|; returns the error's parameters. */
static json_object *job_error(const char *params, const char *error) {
        job j = {0};

        job_run(params, &j);
        if (!j.error || strcmp(j.error, error) != 0)
                fail_msg("%s: expected %s, got %s %s", params, error, j.error ? j.error : "success",
                         json_object_to_json_string(j.last));
        json_object *e = json_object_get(j.last);
        job_done(&j);
        return e;
}

/* Runs a test-sum job of |blocks| and checks its sums; returns its id. */
static char *sum_ok(unsigned blocks) {
        job j = {0};
        double got[1000], want[1000];

        job_run(sum_params(blocks), &j);
        if (j.error)
                fail_msg("test-sum: %s %s", j.error, json_object_to_json_string(j.last));
        assert_string_equal(str(j.last, "state"), "done");
        assert_int_equal(j.n_fds, 1);
        assert_int_equal(pread(j.fds[0], got, blocks * sizeof(double), 0), (ssize_t) (blocks * sizeof(double)));
        expected_sums(blocks, want);
        assert_memory_equal(got, want, blocks * sizeof(double));
        char *id = strdup(str(j.last, "job"));
        job_done(&j);
        return id;
}

/* ---- workers, models, pipelines, the log ---- */

/* The CPU device's worker, as ListWorkers shows it. */
static json_object *worker(void) {
        json_object *p = call_ok("io.gpuhost.ListWorkers", NULL), *w = NULL;
        json_object *a = json_object_object_get(p, "workers");

        for (size_t i = 0; i < json_object_array_length(a); i++)
                if (num(json_object_array_get_idx(a, i), "device") == E.device)
                        w = json_object_get(json_object_array_get_idx(a, i));
        json_object_put(p);
        assert_non_null(w);
        return w;
}

static int64_t worker_get(const char *key) {
        json_object *w = worker();
        int64_t v = num(w, key);
        json_object_put(w);
        return v;
}

/* Waits until the worker is idle, and (|not_pid| > 0) is not that process. */
static pid_t wait_idle(pid_t not_pid) {
        for (int i = 0; i < 1000; i++) {
                json_object *w = worker();
                pid_t pid = (pid_t) num(w, "pid");
                bool idle = gh_streq(str(w, "state"), "idle");
                json_object_put(w);
                if (idle && pid > 0 && pid != not_pid)
                        return pid;
                usleep(10000);
        }
        fail_msg("the worker did not become idle (other than pid %d)", (int) not_pid);
        return -1;
}

/* The daemon reaps a dead worker right after its child event, which may
 * come after the reply has gone out. */
static void wait_gone(pid_t pid) {
        for (int i = 0; i < 500; i++) {
                if (kill(pid, 0) < 0 && errno == ESRCH)
                        return;
                usleep(10000);
        }
        fail_msg("worker %d was not reaped", (int) pid);
}

static int64_t model_loads(void) {
        json_object *p = call_ok("io.gpuhost.ListModels", NULL), *a = json_object_object_get(p, "models");
        int64_t loads = -1;

        for (size_t i = 0; i < json_object_array_length(a); i++)
                if (gh_streq(str(json_object_array_get_idx(a, i), "name"), MODEL))
                        loads = num(json_object_array_get_idx(a, i), "loads");
        json_object_put(p);
        return loads;
}

/* ListPipelines' entry for |name| (a new reference). */
static json_object *pipeline(const char *name) {
        json_object *p = call_ok("io.gpuhost.ListPipelines", NULL), *a = json_object_object_get(p, "pipelines");
        json_object *found = NULL;

        for (size_t i = 0; i < json_object_array_length(a); i++)
                if (gh_streq(str(json_object_array_get_idx(a, i), "name"), name))
                        found = json_object_get(json_object_array_get_idx(a, i));
        json_object_put(p);
        return found;
}

/* Lines reach the log asynchronously (workers log through a pipe). */
static void wait_log(const char *needle) {
        for (int i = 0; i < 500; i++) {
                char *text = read_text(E.log);
                bool found = strstr(text, needle);
                free(text);
                if (found)
                        return;
                usleep(10000);
        }
        char *text = read_text(E.log);
        fail_msg("the daemon's log lacks '%s':\n%s", needle, text);
}

static void enable_plugin(const char *name) {
        char buf[128];
        snprintf(buf, sizeof(buf), "{\"pipeline\":\"%s\"}", name);
        json_object *p = call_ok("io.gpuhost.EnablePlugin", buf);
        assert_false(json_object_get_boolean(json_object_object_get(p, "quarantined")));
        json_object_put(p);
}

/* ---- the daemon ---- */

static int setup(void **state) {
        const char *bin = getenv("GH_GPUHOSTD"), *worker_bin = getenv("GH_GPUHOST_WORKER"); /* bin: run by gh_test_daemon_start() */
        char conf[256], text[2048];

        assert_non_null(bin);
        assert_non_null(worker_bin);
        strcpy(E.dir, "/tmp/gh-workers-XXXXXX");
        assert_non_null(mkdtemp(E.dir));
        snprintf(E.sock, sizeof(E.sock), "%s/gpuhost.sock", E.dir);
        snprintf(E.log, sizeof(E.log), "%s/daemon.log", E.dir);
        snprintf(E.plugins, sizeof(E.plugins), "%s/plugins", E.dir);
        snprintf(E.models, sizeof(E.models), "%s/models", E.dir);
        assert_int_equal(mkdir(E.plugins, 0755), 0);
        assert_int_equal(mkdir(E.models, 0755), 0);
        copy_plugins();
        make_model();
        snprintf(conf, sizeof(conf), "%s/gpuhost.conf", E.dir);
        snprintf(text, sizeof(text),
                 "[socket]\npath = %s\n[devices]\ncpu_memory = 64M\nslab_size = 2M\n[models]\ndirectory = %s\n"
                 "[workers]\nexecutable = %s\nplugin_directory = %s\nheartbeat_timeout_sec = 2\n"
                 "quarantine_crashes = 3\nquarantine_window_sec = 600\ncpu_threads = 2\n"
                 "[scheduler]\nstep_timeout_sec = 2\n",
                 E.sock, E.models, worker_bin, E.plugins);
        write_text(conf, text);
        assert_int_equal(gh_test_daemon_start(conf, E.log, E.sock, NULL, &E.pid), 0);
        json_object *p = call_ok("io.gpuhost.ListDevices", NULL), *devs = json_object_object_get(p, "devices");
        E.device = -1;
        for (size_t i = 0; i < json_object_array_length(devs); i++)
                if (gh_streq(str(json_object_array_get_idx(devs, i), "kind"), "cpu"))
                        E.device = (int) num(json_object_array_get_idx(devs, i), "index");
        json_object_put(p);
        assert_true(E.device >= 0);
        wait_idle(0);
        return 0;
}

static int teardown(void **state) {
        char cmd[128];
        int status;

        if (E.pid > 0) {
                kill(E.pid, SIGTERM);
                assert_int_equal(waitpid(E.pid, &status, 0), E.pid);
        }
        if (E.pid > 0 && (!WIFEXITED(status) || WEXITSTATUS(status) != 0)) {
                char *text = read_text(E.log);
                print_message("gpuhostd's log:\n%s", text);
                free(text);
        }
        snprintf(cmd, sizeof(cmd), "rm -rf '%s'", E.dir);
        (void) !system(cmd);
        free(E.w);
        if (E.pid > 0) {
                assert_true(WIFEXITED(status));
                assert_int_equal(WEXITSTATUS(status), 0);
        }
        return 0;
}

/* ---- tests ---- */

/* Three plugin files are refused, each with its reason, in ListPipelines,
 * in the daemon's log (the worker's lines) and in "gpuhostctl pipelines". */
static void test_refused_plugins(void **state) {
        static const struct {
                const char *file, *reason;
        } refused[] = {
                {"plugin-bad-abi.so", "ABI"},
                {"plugin-bad-params.so", "steps"},
                {"plugin-no-entry.so", "gh_plugin_entry"},
        };
        static const char *const good[] = {"test-sum", "test-crash", "test-flaky", "test-hang", "test-overalloc",
                                           "test-sleep", "test-model"};
        json_object *p = call_ok("io.gpuhost.ListPipelines", NULL);
        json_object *pl = json_object_object_get(p, "pipelines"), *rf = json_object_object_get(p, "refused");
        char path[256], line[512], cmd[512];

        assert_int_equal(json_object_array_length(pl), ELEMENTSOF(good));
        for (size_t i = 0; i < ELEMENTSOF(good); i++) {
                json_object *q = pipeline(good[i]);
                if (!q)
                        fail_msg("pipeline %s not listed: %s", good[i], json_object_to_json_string(p));
                assert_false(json_object_get_boolean(json_object_object_get(q, "quarantined")));
                json_object *devs = json_object_object_get(q, "devices");
                bool here = false;
                for (size_t k = 0; k < json_object_array_length(devs); k++)
                        here |= json_object_get_int(json_object_array_get_idx(devs, k)) == E.device;
                assert_true(here);
                json_object_put(q);
        }
        json_object *sum = pipeline("test-sum"), *flaky = pipeline("test-flaky"), *crash = pipeline("test-crash");
        assert_true(json_object_get_boolean(json_object_object_get(sum, "retry_safe")));
        assert_true(json_object_get_boolean(json_object_object_get(flaky, "retry_safe")));
        assert_false(json_object_get_boolean(json_object_object_get(crash, "retry_safe")));
        json_object_put(sum);
        json_object_put(flaky);
        json_object_put(crash);

        assert_int_equal(json_object_array_length(rf), ELEMENTSOF(refused));
        for (size_t i = 0; i < ELEMENTSOF(refused); i++) {
                snprintf(path, sizeof(path), "%s/%s", E.plugins, refused[i].file);
                json_object *found = NULL;
                for (size_t k = 0; k < json_object_array_length(rf); k++)
                        if (gh_streq(str(json_object_array_get_idx(rf, k), "path"), path))
                                found = json_object_array_get_idx(rf, k);
                if (!found)
                        fail_msg("%s not refused: %s", path, json_object_to_json_string(rf));
                assert_contains(str(found, "reason"), refused[i].reason);
                snprintf(line, sizeof(line), "Refusing plugin %s: %s", path, str(found, "reason"));
                wait_log(line);
        }
        json_object_put(p);

        /* gpuhostctl shows the same. */
        const char *ctl = getenv("GH_GPUHOSTCTL");
        assert_non_null(ctl);
        snprintf(cmd, sizeof(cmd), "GPUHOST_SOCKET='%s' '%s' pipelines 2>&1", E.sock, ctl);
        FILE *f = popen(cmd, "r");
        assert_non_null(f);
        char out[16384];
        size_t n = fread(out, 1, sizeof(out) - 1, f);
        out[n] = 0;
        assert_int_equal(pclose(f), 0);
        for (size_t i = 0; i < ELEMENTSOF(refused); i++)
                assert_contains(out, refused[i].file);
        assert_contains(out, "refused plugins");
        assert_contains(out, "test-sum");
        assert_contains(out, "built for plugin ABI");
}

/* Parameters are checked before a task (a job id) exists, let alone
 * before any plugin sees them. */
static void test_validation(void **state) {
        static const struct {
                const char *pipeline, *parameters, *bad, *reason;
        } cases[] = {
                {"test-sum", "{\"model\":\"" MODEL "\",\"tensor\":\"w\",\"bogus\":1}", "bogus", "unknown parameter"},
                {"test-sum", "{\"model\":\"" MODEL "\",\"tensor\":\"w\",\"blocks\":1001}", "blocks", "out of range 1..1000"},
                {"test-sum", "{\"model\":\"" MODEL "\",\"tensor\":\"w\",\"blocks\":0}", "blocks", "0 is out of range"},
                {"test-sum", "{\"model\":\"" MODEL "\",\"tensor\":\"w\",\"blocks\":\"4\"}", "blocks", "expected an integer"},
                {"test-sum", "{\"model\":\"" MODEL "\",\"tensor\":\"w\",\"scale\":11.5}", "scale", "out of range"},
                {"test-sum", "{\"model\":\"" MODEL "\",\"tensor\":\"w\",\"mode\":\"f64\"}", "mode", "bytes"},
                {"test-sum", "{\"model\":\"" MODEL "\"}", "tensor", "required"},
                {"test-crash", "{\"crash_at\":true}", "crash_at", "expected an integer"},
                {"test-sum", "{\"model\":\"" MODEL "\",\"tensor\":\"w\",\"verbose\":1}", "verbose", "expected a boolean"},
        };
        char *first = sum_ok(2);
        int64_t done = worker_get("jobs_done"), pid = worker_get("pid");

        for (size_t i = 0; i < ELEMENTSOF(cases); i++) {
                json_object *e = job_error(gen(cases[i].pipeline, cases[i].parameters), "io.gpuhost.InvalidParameter");
                assert_string_equal(str(e, "parameter"), cases[i].bad);
                assert_contains(str(e, "reason"), cases[i].reason);
                json_object_put(e);
        }
        json_object *e = job_error(gen("no-such-pipeline", NULL), "io.gpuhost.PipelineNotFound");
        assert_string_equal(str(e, "pipeline"), "no-such-pipeline");
        json_object_put(e);
        /* The next job's id follows the last one's: no task was made. */
        char *second = sum_ok(2);
        char want[32];
        snprintf(want, sizeof(want), "j-%lld", strtoll(first + 2, NULL, 10) + 1);
        assert_string_equal(second, want);
        /* An unknown model is found out once the estimate names it. */
        e = job_error(gen("test-sum", "{\"model\":\"nope\",\"tensor\":\"w\"}"), "io.gpuhost.ModelNotFound");
        assert_string_equal(str(e, "model"), "nope");
        json_object_put(e);
        assert_int_equal(worker_get("jobs_done"), done + 1);
        assert_int_equal(wait_idle(0), pid);
        free(first);
        free(second);
}

/* A job streamed with "more": queued, running 0 of n, one reply a step,
 * then done with the sums in a sealed memfd. */
static void test_sum_job(void **state) {
        const unsigned blocks = 7;
        double got[7], want[7];
        job j = {0};

        job_run(sum_params(blocks), &j);
        if (j.error)
                fail_msg("test-sum: %s %s", j.error, json_object_to_json_string(j.last));
        size_t n = json_object_array_length(j.replies);
        assert_int_equal(n, blocks + 3);
        const char *id = str(j.last, "job");
        assert_true(id && strncmp(id, "j-", 2) == 0);
        for (size_t i = 0; i < n; i++) {
                json_object *r = json_object_array_get_idx(j.replies, i);
                assert_string_equal(str(r, "job"), id);
                assert_int_equal(num(r, "device"), E.device);
                assert_int_equal(json_object_get_boolean(json_object_object_get(r, "continues")), i + 1 < n);
                if (i == 0) {
                        assert_string_equal(str(r, "state"), "queued");
                        assert_null(json_object_object_get(r, "step"));
                } else if (i < n - 1) {
                        assert_string_equal(str(r, "state"), "running");
                        assert_int_equal(num(r, "step"), i - 1);
                        assert_int_equal(num(r, "steps"), blocks);
                }
        }
        assert_string_equal(str(j.last, "state"), "done");
        assert_int_equal(num(j.last, "steps"), blocks);
        json_object *outs = json_object_object_get(j.last, "outputs");
        assert_int_equal(json_object_array_length(outs), 1);
        json_object *o = json_object_array_get_idx(outs, 0);
        assert_string_equal(str(o, "name"), "sums");
        assert_string_equal(str(o, "kind"), "bytes");
        assert_int_equal(num(o, "size"), blocks * sizeof(double));
        assert_int_equal(num(o, "fd"), 0);
        assert_null(json_object_object_get(o, "width"));

        /* The output: a sealed memfd, close-on-exec here. */
        assert_int_equal(j.n_fds, 1);
        int fd = j.fds[0];
        struct stat st;
        assert_int_equal(fstat(fd, &st), 0);
        assert_int_equal(st.st_size, blocks * sizeof(double));
        int seals = fcntl(fd, F_GET_SEALS);
        assert_true(seals >= 0);
        assert_true(seals & F_SEAL_WRITE);
        assert_true(seals & F_SEAL_SHRINK);
        assert_true(seals & F_SEAL_GROW);
        assert_true(fcntl(fd, F_GETFD) & FD_CLOEXEC);
        char link[64], target[128];
        snprintf(link, sizeof(link), "/proc/self/fd/%d", fd);
        ssize_t k = readlink(link, target, sizeof(target) - 1);
        assert_true(k > 0);
        target[k] = 0;
        assert_true(strncmp(target, "/memfd:sums", 11) == 0);
        assert_int_equal(pwrite(fd, got, 8, 0), -1); /* sealed */
        assert_int_equal(pread(fd, got, sizeof(got), 0), (ssize_t) sizeof(got));
        expected_sums(blocks, want);
        assert_memory_equal(got, want, sizeof(got));
        job_done(&j);

        /* One load of the model served every job. */
        assert_int_equal(model_loads(), 1);
        free(sum_ok(1000));
        assert_int_equal(model_loads(), 1);
}

/* What a worker holds: /dev/null, the log pipe and the daemon's socket,
 * which it inherited, and the files of the plugins it loaded (kept open
 * while loaded); no plugin file it refused, nothing of a job (slabs,
 * outputs). */
static void test_worker_fds(void **state) {
        static const char *const loaded[] = {"plugin-crash.so", "plugin-flaky.so", "plugin-hang.so",
                                             "plugin-overalloc.so", "plugin-sum.so", "plugin-sleep.so",
                                             "plugin-model.so",
                                             "anon_inode:[eventfd]" /* the job threads' wake-up */};
        char dir[64], target[64][512], names[64][16];
        size_t n = 0;

        free(sum_ok(3)); /* a job has run: nothing of it may be left open */
        pid_t pid = wait_idle(0);
        snprintf(dir, sizeof(dir), "/proc/%d/fd", (int) pid);
        DIR *d = opendir(dir);
        assert_non_null(d);
        struct dirent *de;
        while ((de = readdir(d)) && n < ELEMENTSOF(target)) {
                char link[128];
                if (de->d_name[0] == '.')
                        continue;
                snprintf(names[n], sizeof(names[n]), "%.15s", de->d_name);
                snprintf(link, sizeof(link), "%s/%.15s", dir, de->d_name);
                ssize_t k = readlink(link, target[n], sizeof(target[n]) - 1);
                target[n][k > 0 ? k : 0] = 0;
                n++;
        }
        closedir(d);
        bool seen[4] = {false}, plugin_seen[ELEMENTSOF(loaded)] = {false};
        for (size_t i = 0; i < n; i++) {
                char *end;
                long fd = strtol(names[i], &end, 10);
                assert_true(*end == 0 && fd >= 0);
                if (fd < 4) {
                        seen[fd] = true;
                        continue;
                }
                bool ok = false;
                for (size_t p = 0; p < ELEMENTSOF(loaded); p++) {
                        char want[256];
                        if (loaded[p][0] == 'a')
                                snprintf(want, sizeof(want), "%s", loaded[p]);
                        else
                                snprintf(want, sizeof(want), "%s/%s", E.plugins, loaded[p]);
                        if (strcmp(target[i], want) == 0 && !plugin_seen[p])
                                ok = plugin_seen[p] = true;
                }
                if (!ok)
                        fail_msg("worker %d has fd %ld open: %s", (int) pid, fd, target[i]);
        }
        for (int fd = 0; fd < 4; fd++)
                if (!seen[fd])
                        fail_msg("worker %d lacks fd %d", (int) pid, fd);
        assert_int_equal(n, 4 + ELEMENTSOF(loaded));
        for (size_t i = 0; i < n; i++) {
                int fd = atoi(names[i]);
                if (fd == 0)
                        assert_string_equal(target[i], "/dev/null");
                else if (fd == 1 || fd == 2)
                        assert_true(strncmp(target[i], "pipe:", 5) == 0);
                else if (fd == 3)
                        assert_true(strncmp(target[i], "socket:", 7) == 0);
        }
        /* stdout and stderr: one pipe. */
        struct stat a, b;
        char link[128];
        snprintf(link, sizeof(link), "%s/1", dir);
        assert_int_equal(stat(link, &a), 0);
        snprintf(link, sizeof(link), "%s/2", dir);
        assert_int_equal(stat(link, &b), 0);
        assert_true(a.st_ino == b.st_ino && S_ISFIFO(a.st_mode));
}

typedef struct overalloc_run {
        pthread_t thread;
        char params[1024];
        json_object *error;
} overalloc_run;

/* cmocka's asserts cannot run on another thread: collect, check later. */
static void *overalloc_thread(void *userdata) {
        overalloc_run *o = userdata;
        gh_client *c = NULL;
        gh_reply *r = NULL;

        if (gh_client_connect(E.sock, &c) < 0)
                return NULL;
        gh_client_set_timeout(c, 30 * USEC_PER_SEC);
        /* Without "more": the job's id at once, then WaitJob for its end. */
        if (gh_client_call(c, "io.gpuhost.Generate", o->params, &r) == 0 && !gh_reply_error(r)) {
                json_object *q = json_tokener_parse(gh_reply_parameters(r));
                char wait[128];
                snprintf(wait, sizeof(wait), "{\"job\":\"%s\"}", json_object_get_string(json_object_object_get(q, "job")));
                json_object_put(q);
                gh_reply_free(r);
                r = NULL;
                if (gh_client_call(c, "io.gpuhost.WaitJob", wait, &r) < 0) {
                        gh_client_free(c);
                        return NULL;
                }
                o->error = json_tokener_parse(gh_reply_parameters(r));
                if (o->error)
                        json_object_object_add(o->error, "_error",
                                               gh_reply_error(r) ? json_object_new_string(gh_reply_error(r)) : NULL);
        }
        gh_reply_free(r);
        gh_client_free(c);
        return NULL;
}

/* Going past the declared workspace fails the job, not the worker; a job
 * submitted alongside runs on the same worker. */
static void test_overalloc(void **state) {
        static overalloc_run o; /* outlives a failed assertion here */

        memset(&o, 0, sizeof(o));
        free(sum_ok(2));
        pid_t pid = wait_idle(0);
        int64_t crashes = worker_get("crashes");
        snprintf(o.params, sizeof(o.params), "%s", gen("test-overalloc", "{\"declared\":1048576,\"extra\":4096}"));
        assert_int_equal(pthread_create(&o.thread, NULL, overalloc_thread, &o), 0);
        free(sum_ok(5));
        assert_int_equal(pthread_join(o.thread, NULL), 0);
        assert_non_null(o.error);
        assert_string_equal(str(o.error, "_error"), "io.gpuhost.JobFailed");
        assert_string_equal(str(o.error, "pipeline"), "test-overalloc");
        assert_string_equal(str(o.error, "error"), "ENOSPC");
        assert_contains(str(o.error, "message"), "asked for 4096 bytes");
        assert_contains(str(o.error, "message"), "declared 1048576");
        json_object_put(o.error);
        free(sum_ok(2));
        assert_int_equal(wait_idle(0), pid);
        assert_int_equal(worker_get("crashes"), crashes);
        wait_log("test-overalloc job");
}

/* A plugin that dies: WorkerCrashed naming the signal and the dead pid;
 * the daemon and its models are untouched; a new worker serves the next. */
static void test_crash(void **state) {
        char line[160];

        free(sum_ok(2));
        enable_plugin("test-crash");
        pid_t pid = wait_idle(0);
        int64_t crashes = worker_get("crashes"), loads = model_loads();
        assert_int_equal(loads, 1);
        json_object *e = job_error(gen("test-crash", "{\"steps\":3,\"crash_at\":1}"), "io.gpuhost.WorkerCrashed");
        assert_string_equal(str(e, "pipeline"), "test-crash");
        assert_string_equal(str(e, "signal"), "SEGV");
        assert_int_equal(num(e, "pid"), pid);
        assert_null(json_object_object_get(e, "exit_status"));
        assert_contains(str(e, "reason"), "SEGV");
        json_object_put(e);
        wait_gone(pid);
        json_object_put(call_ok("io.gpuhost.Ping", NULL));
        char *id = sum_ok(4);
        free(id);
        pid_t pid2 = wait_idle(0);
        assert_true(pid2 != pid);
        assert_int_equal(model_loads(), loads);
        assert_true(worker_get("crashes") >= crashes + 1);
        json_object *p = pipeline("test-crash");
        assert_true(num(p, "crashes") >= 1);
        assert_false(json_object_get_boolean(json_object_object_get(p, "quarantined")));
        json_object_put(p);
        snprintf(line, sizeof(line), "pid %d) killed by signal SEGV while running a job of test-crash", (int) pid);
        wait_log(line);
}

/* A step that never returns: the heartbeat timeout (2 s) ends it. */
static void test_hang(void **state) {
        free(sum_ok(2));
        pid_t pid = wait_idle(0);
        job j = {0};

        job_run(gen("test-hang", "{\"hang_at\":1}"), &j);
        assert_string_equal(j.error, "io.gpuhost.WorkerCrashed");
        assert_string_equal(str(j.last, "pipeline"), "test-hang");
        assert_int_equal(num(j.last, "pid"), pid);
        assert_string_equal(str(j.last, "signal"), "KILL");
        assert_contains(str(j.last, "reason"), "ran longer than 2.0 s");
        wait_gone(pid);
        /* queued, running 0, running 1 (step 0 returned), the error */
        assert_int_equal(json_object_array_length(j.replies), 4);
        assert_int_equal(num(json_object_array_get_idx(j.replies, 2), "step"), 1);
        print_message("test-hang: killed after %.2f s\n", (double) j.usec / USEC_PER_SEC);
        assert_true(j.usec >= 2 * USEC_PER_SEC);
        assert_true(j.usec <= 6 * USEC_PER_SEC);
        job_done(&j);
        free(sum_ok(3));
        assert_true(wait_idle(0) != pid);
        assert_int_equal(model_loads(), 1);
        wait_log("step 2 of 101 ran longer than 2.0 s");
}

/* A retry-safe plugin whose worker dies runs again, once, and succeeds. */
static void test_retry(void **state) {
        char marker[128], params[256];
        struct stat st;
        job j = {0};

        free(sum_ok(2));
        pid_t pid = wait_idle(0);
        snprintf(marker, sizeof(marker), "%s/flaky-marker", E.dir);
        snprintf(params, sizeof(params), "{\"steps\":3,\"crash_at\":1,\"marker\":\"%s\"}", marker);
        assert_true(stat(marker, &st) < 0);
        job_run(gen("test-flaky", params), &j);
        if (j.error)
                fail_msg("test-flaky: %s %s", j.error, json_object_to_json_string(j.last));
        assert_string_equal(str(j.last, "state"), "done");
        assert_int_equal(j.n_fds, 1);
        int64_t steps = 0;
        assert_int_equal(pread(j.fds[0], &steps, sizeof(steps), 0), (ssize_t) sizeof(steps));
        assert_int_equal(steps, 3);
        char line[160];
        snprintf(line, sizeof(line), "Job %s (test-flaky): its worker died", str(j.last, "job"));
        job_done(&j);
        assert_int_equal(stat(marker, &st), 0);
        assert_true(wait_idle(0) != pid);
        wait_log(line);
        wait_log("running it again");
        json_object *p = pipeline("test-flaky");
        assert_int_equal(num(p, "crashes"), 1);
        json_object_put(p);
        assert_int_equal(model_loads(), 1);
}

/* A caller that hangs up mid-job cancels it at a step boundary: the
 * worker stays, does not finish the job, and runs the next one. */
static void test_cancel(void **state) {
        free(sum_ok(2));
        pid_t pid = wait_idle(0);
        int64_t done = worker_get("jobs_done"), crashes = worker_get("crashes");
        job j = {.stop_after = 4}; /* queued, running 0, 1, 2 */

        job_run(sum_params(1000), &j);
        assert_null(j.last);
        assert_int_equal(num(json_object_array_get_idx(j.replies, 3), "step"), 2);
        job_done(&j);
        assert_int_equal(wait_idle(0), pid);
        assert_int_equal(worker_get("jobs_done"), done); /* cancelled, not finished */
        assert_int_equal(worker_get("crashes"), crashes);
        free(sum_ok(4));
        assert_int_equal(wait_idle(0), pid);
        assert_int_equal(worker_get("jobs_done"), done + 1);
}


static char *job_params(const char *id) {
        static char buf[128];
        snprintf(buf, sizeof(buf), "{\"job\":\"%s\"}", id);
        return buf;
}

/* Jobs by id: Generate without "more" answers at once; GetJob, ListJobs,
 * WaitJob (fds, or inline base64), CancelJob of a finished job, options
 * checked, and a deadline that passes. */
static void test_job_api(void **state) {
        double want[3];
        char *err, params[512];

        expected_sums(3, want);
        snprintf(params, sizeof(params),
                 "{\"pipeline\":\"test-sum\",\"device\":%d,\"priority\":\"batch\",\"tag\":\"mine\",\"detach\":true,"
                 "\"parameters\":{\"model\":\"" MODEL "\",\"tensor\":\"w\",\"blocks\":3}}", E.device);
        json_object *p = call_ok("io.gpuhost.Generate", params);
        char *id = strdup(str(p, "job"));
        assert_string_equal(str(p, "state"), "queued");
        json_object_put(p);

        /* WaitJob without "more": the final reply, outputs as fds. */
        gh_client *c = connect_daemon();
        gh_reply *r = NULL;
        assert_int_equal(gh_client_call(c, "io.gpuhost.WaitJob", job_params(id), &r), 0);
        assert_null(gh_reply_error(r));
        assert_int_equal(gh_reply_n_fds(r), 1);
        int fd = gh_reply_take_fd(r, 0);
        double got[3];
        assert_int_equal(pread(fd, got, sizeof(got), 0), (ssize_t) sizeof(got));
        assert_memory_equal(got, want, sizeof(got));
        close(fd);
        gh_reply_free(r);
        gh_client_free(c);

        /* GetJob and ListJobs know it, finished. */
        p = call_ok("io.gpuhost.GetJob", job_params(id));
        json_object *j = json_object_object_get(p, "job");
        assert_string_equal(str(j, "state"), "done");
        assert_string_equal(str(j, "priority"), "batch");
        assert_string_equal(str(j, "tag"), "mine");
        assert_int_equal(num(j, "uid"), geteuid());
        assert_int_equal(num(j, "steps"), 3);
        assert_true(num(j, "finished_usec") >= num(j, "started_usec") && num(j, "started_usec") >= num(j, "submitted_usec"));
        json_object_put(p);
        p = call_ok("io.gpuhost.ListJobs", NULL);
        bool found = false;
        json_object *jobs = json_object_object_get(p, "jobs");
        for (size_t i = 0; i < json_object_array_length(jobs); i++)
                found |= gh_streq(str(json_object_array_get_idx(jobs, i), "job"), id);
        assert_true(found);
        json_object_put(p);

        /* The same result again, inline. */
        snprintf(params, sizeof(params), "{\"job\":\"%s\",\"output\":\"inline\"}", id);
        p = call_ok("io.gpuhost.WaitJob", params);
        json_object *out = json_object_array_get_idx(json_object_object_get(p, "outputs"), 0);
        assert_int_equal(num(out, "fd"), -1);
        uint8_t *bytes = NULL;
        size_t n_bytes;
        assert_int_equal(ctl_base64_decode(str(out, "data"), &bytes, &n_bytes), 0);
        assert_int_equal(n_bytes, sizeof(got));
        assert_memory_equal(bytes, want, sizeof(got));
        free(bytes);
        json_object_put(p);

        /* WaitJob checks its own options too. */
        snprintf(params, sizeof(params), "{\"job\":\"%s\",\"output\":\"file\"}", id);
        p = call("io.gpuhost.WaitJob", params, &err);
        assert_string_equal(err, "io.gpuhost.InvalidParameter");
        assert_string_equal(str(p, "parameter"), "output");
        free(err);
        json_object_put(p);

        /* CancelJob of a finished job forgets it. */
        p = call_ok("io.gpuhost.CancelJob", job_params(id));
        assert_string_equal(str(p, "state"), "done");
        json_object_put(p);
        json_object_put(call("io.gpuhost.GetJob", job_params(id), &err));
        assert_string_equal(err, "io.gpuhost.JobNotFound");
        free(err);
        free(id);

        /* Options are checked before anything is queued. */
        static const char *const bad[][2] = {
                {"\"priority\":\"urgent\"", "priority"},
                {"\"deadline_sec\":0", "deadline_sec"},
                {"\"deadline_sec\":-1", "deadline_sec"},
                {"\"output\":\"file\"", "output"},
                {"\"tag\":\"" "0123456789abcdef0123456789abcdef0123456789abcdef0123456789abcdef"
                 "0123456789abcdef0123456789abcdef0123456789abcdef0123456789abcdef" "x\"", "tag"},
        };
        for (size_t i = 0; i < ELEMENTSOF(bad); i++) {
                snprintf(params, sizeof(params), "{\"pipeline\":\"test-sum\",\"device\":%d,%s,"
                         "\"parameters\":{\"model\":\"" MODEL "\",\"tensor\":\"w\"}}", E.device, bad[i][0]);
                p = call("io.gpuhost.Generate", params, &err);
                assert_string_equal(err, "io.gpuhost.InvalidParameter");
                assert_string_equal(str(p, "parameter"), bad[i][1]);
                free(err);
                json_object_put(p);
        }

        /* A deadline shorter than the job: DeadlineExceeded. */
        snprintf(params, sizeof(params), "{\"pipeline\":\"test-sum\",\"device\":%d,\"deadline_sec\":0.002,"
                 "\"parameters\":{\"model\":\"" MODEL "\",\"tensor\":\"w\",\"blocks\":1000}}", E.device);
        json_object *e = job_error(params, "io.gpuhost.DeadlineExceeded");
        assert_true(json_object_get_double(json_object_object_get(e, "deadline_sec")) == 0.002);
        json_object_put(e);
        free(sum_ok(2)); /* the worker goes on */
}

/* RestartWorker: a new process, idle again, jobs go on, models stay. */
static void test_restart(void **state) {
        char params[64];

        free(sum_ok(2));
        pid_t pid = wait_idle(0);
        int64_t id = worker_get("id"), crashes = worker_get("crashes");
        snprintf(params, sizeof(params), "{\"id\":%lld}", (long long) id);
        json_object *p = call_ok("io.gpuhost.RestartWorker", params);
        assert_int_equal(num(p, "id"), id);
        json_object_put(p);
        pid_t pid2 = wait_idle(pid);
        assert_true(pid2 != pid);
        assert_int_equal(worker_get("crashes"), crashes); /* asked for: not a crash */
        wait_gone(pid);
        free(sum_ok(5));
        assert_int_equal(wait_idle(0), pid2);
        assert_int_equal(model_loads(), 1);
        char *err;
        json_object_put(call("io.gpuhost.RestartWorker", "{\"id\":99}", &err));
        assert_string_equal(err, "io.gpuhost.WorkerNotFound");
        free(err);
}

/* Three crashes of one plugin within the window quarantine it: the third
 * job still reports its crash, the next is refused until EnablePlugin. */
static void test_quarantine(void **state) {
        char *params = strdup(gen("test-crash", "{\"steps\":2,\"crash_at\":0}"));

        free(sum_ok(2)); /* backoff back to 100 ms */
        enable_plugin("test-crash"); /* forget crashes of earlier tests */
        json_object *p = pipeline("test-crash");
        int64_t crashes = num(p, "crashes");
        json_object_put(p);
        for (int i = 0; i < 3; i++) {
                json_object *e = job_error(params, "io.gpuhost.WorkerCrashed");
                assert_string_equal(str(e, "signal"), "SEGV");
                json_object_put(e);
                p = pipeline("test-crash");
                assert_int_equal(json_object_get_boolean(json_object_object_get(p, "quarantined")), i == 2);
                assert_int_equal(num(p, "crashes"), crashes + i + 1);
                json_object_put(p);
        }
        wait_log("Pipeline test-crash quarantined");
        json_object *e = job_error(params, "io.gpuhost.PluginQuarantined");
        assert_string_equal(str(e, "pipeline"), "test-crash");
        assert_int_equal(num(e, "crashes"), crashes + 3);
        json_object_put(e);
        /* Reported in the daemon's status. */
        char *serr;
        json_object *st = call("io.gpuhost.GetStatus", NULL, &serr);
        assert_null(serr);
        json_object *q = json_object_object_get(json_object_object_get(st, "workers"), "quarantined");
        assert_int_equal(json_object_array_length(q), 1);
        assert_string_equal(json_object_get_string(json_object_array_get_idx(q, 0)), "test-crash");
        json_object_put(st);
        /* Other pipelines are unaffected. */
        free(sum_ok(2));
        enable_plugin("test-crash");
        wait_log("Pipeline test-crash taken out of quarantine");
        p = pipeline("test-crash");
        assert_false(json_object_get_boolean(json_object_object_get(p, "quarantined")));
        json_object_put(p);
        e = job_error(params, "io.gpuhost.WorkerCrashed");
        assert_string_equal(str(e, "pipeline"), "test-crash");
        json_object_put(e);
        free(sum_ok(2));
        assert_int_equal(model_loads(), 1);
        char *err;
        json_object_put(call("io.gpuhost.EnablePlugin", "{\"pipeline\":\"nope\"}", &err));
        assert_string_equal(err, "io.gpuhost.PipelineNotFound");
        free(err);
        free(params);
}

/* ---- images ---- */

#define IMG_W 5
#define IMG_H 3

/* A PNG file in memory, as libpng writes it. */
typedef struct png_buf {
        uint8_t *data;
        size_t size;
} png_buf;

static void png_buf_write(png_structp png, png_bytep data, size_t n) {
        png_buf *b = png_get_io_ptr(png);

        b->data = realloc(b->data, b->size + n);
        assert_non_null(b->data);
        memcpy(b->data + b->size, data, n);
        b->size += n;
}

static void png_buf_flush(png_structp png) {
}

/* A PNG of IMG_W x IMG_H pixels of |color_type| at |depth|, interlaced
 * (Adam7) or not, rows of |samples| (as PNG stores them: 16-bit samples
 * big-endian); a palette of |n_plte| entries, each with a tRNS alpha. */
static png_buf png_make(int color_type, int depth, bool interlace, const uint8_t *samples, size_t row,
                        const png_color *plte, int n_plte) {
        png_buf b = {0};
        png_structp png = png_create_write_struct(PNG_LIBPNG_VER_STRING, NULL, NULL, NULL);
        png_infop info = png_create_info_struct(png);
        png_byte trns[16];

        assert_non_null(info);
        if (setjmp(png_jmpbuf(png)))
                fail_msg("libpng cannot write the test image");
        png_set_write_fn(png, &b, png_buf_write, png_buf_flush);
        png_set_IHDR(png, info, IMG_W, IMG_H, depth, color_type,
                     interlace ? PNG_INTERLACE_ADAM7 : PNG_INTERLACE_NONE, PNG_COMPRESSION_TYPE_DEFAULT,
                     PNG_FILTER_TYPE_DEFAULT);
        if (n_plte) {
                png_set_PLTE(png, info, plte, n_plte);
                for (int i = 0; i < n_plte; i++)
                        trns[i] = (png_byte) (i * 60);
                png_set_tRNS(png, info, trns, n_plte, NULL);
        }
        png_write_info(png, info);
        png_bytep rows[IMG_H];
        for (int y = 0; y < IMG_H; y++)
                rows[y] = (png_bytep) samples + (size_t) y * row;
        png_write_image(png, rows);
        png_write_end(png, info);
        png_destroy_write_struct(&png, &info);
        return b;
}

/* What test-sleep reports of |pixels| (rows packed). */
static void image_expect(const uint8_t *pixels, unsigned channels, char *buf, size_t size) {
        uint64_t sum = 0, hash = 0xcbf29ce484222325u;

        for (size_t i = 0; i < (size_t) IMG_W * IMG_H * channels; i++) {
                sum += pixels[i];
                hash = (hash ^ pixels[i]) * 0x100000001b3u;
        }
        snprintf(buf, size, "image=%ux%u:%s:%" PRIu64 ":%016" PRIx64 "\n", IMG_W, IMG_H,
                 channels == 4 ? "rgba8" : "rgb8", sum, hash);
}

/* A test-sleep job with |image| (JSON text) and |fds|; its report. */
static char *image_job_report(const char *image, const int *fds, size_t n_fds) {
        char *params = NULL, text[512] = {0};
        job j = {0};

        assert_true(asprintf(&params, "{\"pipeline\":\"test-sleep\",\"device\":%d,\"parameters\":{\"image\":%s}}",
                             E.device, image) > 0);
        job_run_fds(params, fds, n_fds, &j);
        if (j.error)
                fail_msg("test-sleep with %.200s: %s %s", image, j.error, json_object_to_json_string(j.last));
        assert_int_equal(j.n_fds, 1);
        assert_true(pread(j.fds[0], text, sizeof(text) - 1, 0) > 0);
        job_done(&j);
        free(params);
        return strdup(text);
}

/* The job's error, for a bad image. */
static json_object *image_job_error(const char *image, const int *fds, size_t n_fds, const char *error) {
        char *params = NULL;
        job j = {0};

        assert_true(asprintf(&params, "{\"pipeline\":\"test-sleep\",\"device\":%d,\"parameters\":{\"image\":%s}}",
                             E.device, image) > 0);
        job_run_fds(params, fds, n_fds, &j);
        if (!j.error || strcmp(j.error, error) != 0)
                fail_msg("%.200s: expected %s, got %s %s", image, error, j.error ? j.error : "success",
                         json_object_to_json_string(j.last));
        json_object *e = json_object_get(j.last);
        job_done(&j);
        free(params);
        return e;
}

static char *base64_text(const void *bytes, size_t n) {
        char *text = malloc(gh_base64_encoded_len(n) + 1);

        assert_non_null(text);
        gh_base64_encode(bytes, n, text);
        return text;
}

/* {"data": BASE64 of |bytes|, ...|rest|} */
static char *inline_image(const void *bytes, size_t n, const char *rest) {
        char *b64 = base64_text(bytes, n), *v = NULL;

        assert_true(asprintf(&v, "{\"data\":\"%s\",%s}", b64, rest) > 0);
        free(b64);
        return v;
}

static void assert_report_has(const char *what, const char *report, const char *want) {
        if (!strstr(report, want))
                fail_msg("%s: report '%s' lacks '%s'", what, report, want);
}

static int memfd_of(const void *bytes, size_t n) {
        int fd = memfd_create("test-image", MFD_CLOEXEC);

        assert_true(fd >= 0);
        assert_int_equal(write(fd, bytes, n), (ssize_t) n);
        return fd;
}

/* One PNG of a kind: what it decodes to must reach the plugin, sent
 * inline, in a memfd and as a file. */
typedef struct png_kind {
        const char *name;
        int color_type, depth;
        bool interlace;
} png_kind;

/* The samples of |k| and the pixels they decode to (rgb8, or rgba8 for
 * a colour type with alpha). */
static unsigned png_kind_pixels(const png_kind *k, uint8_t *samples, size_t *ret_row, uint8_t *pixels,
                                png_color *plte) {
        unsigned in = k->color_type == 0 || k->color_type == 3 ? 1 : k->color_type == 4 ? 2 : k->color_type == 2 ? 3 : 4;
        unsigned out = k->color_type & 4 ? 4 : 3, bps = (unsigned) k->depth / 8;

        for (int i = 0; i < 4; i++)
                plte[i] = (png_color) {(png_byte) (10 + i * 60), (png_byte) (200 - i * 50), (png_byte) (i * 33)};
        *ret_row = ((size_t) IMG_W * in * (unsigned) k->depth + 7) / 8;
        memset(samples, 0, *ret_row * IMG_H);
        for (unsigned y = 0; y < IMG_H; y++)
                for (unsigned x = 0; x < IMG_W; x++)
                        for (unsigned c = 0; c < in; c++) {
                                uint8_t v = (uint8_t) (x * 50 + y * 21 + c * 77 + 3), *s = samples + y * *ret_row;
                                if (k->color_type == 3 || k->depth < 8)
                                        v = (uint8_t) ((x + y) % 4);
                                if (k->depth < 8) { /* 2-bit grey, packed from the high bits */
                                        s[x / 4] |= (uint8_t) (v << (6 - 2 * (x % 4)));
                                        if (k->color_type == 0)
                                                v = (uint8_t) (v * 85);
                                } else {
                                        s += (x * in + c) * bps;
                                        s[0] = v;
                                        if (bps == 2)
                                                s[1] = v; /* v * 257: 8 bits of it are v exactly */
                                }
                                uint8_t *p = pixels + (y * IMG_W + x) * out;
                                if (k->color_type == 3)
                                        memcpy(p, &plte[v], 3);
                                else if (in <= 2 && c == 0)
                                        p[0] = p[1] = p[2] = v;
                                else
                                        p[c == 1 && in == 2 ? 3 : c] = v;
                        }
        return out;
}

static void test_image_params(void **state) {
        static const png_kind kinds[] = {
                {"rgb8", PNG_COLOR_TYPE_RGB, 8, false},
                {"rgba8 interlaced", PNG_COLOR_TYPE_RGB_ALPHA, 8, true},
                {"rgb 16-bit", PNG_COLOR_TYPE_RGB, 16, false},
                {"grey 16-bit interlaced", PNG_COLOR_TYPE_GRAY, 16, true},
                {"grey + alpha", PNG_COLOR_TYPE_GRAY_ALPHA, 8, false},
                {"palette with tRNS", PNG_COLOR_TYPE_PALETTE, 8, false},
                {"palette 2-bit interlaced", PNG_COLOR_TYPE_PALETTE, 2, true},
                {"grey 2-bit", PNG_COLOR_TYPE_GRAY, 2, false},
        };
        uint8_t samples[IMG_W * IMG_H * 8], pixels[IMG_W * IMG_H * 4];
        char want[128], path[256], *v, *report;
        png_color plte[4];
        size_t row;
        int64_t crashes = worker_get("crashes");

        for (size_t i = 0; i < ELEMENTSOF(kinds); i++) {
                unsigned channels = png_kind_pixels(&kinds[i], samples, &row, pixels, plte);
                png_buf png = png_make(kinds[i].color_type, kinds[i].depth, kinds[i].interlace, samples, row, plte,
                                       kinds[i].color_type == 3 ? 4 : 0);
                image_expect(pixels, channels, want, sizeof(want));
                /* Inline. */
                report = image_job_report(v = inline_image(png.data, png.size, "\"format\":\"png\""), NULL, 0);
                assert_report_has(kinds[i].name, report, want);
                free(report);
                free(v);
                /* In a memfd (the request's second fd), size given. */
                int fds[2] = {memfd_of("x", 1), memfd_of(png.data, png.size)};
                report = image_job_report("{\"fd\":1,\"format\":\"png\",\"width\":5,\"height\":3}", fds, 2);
                assert_report_has(kinds[i].name, report, want);
                free(report);
                gh_close_many(fds, 2);
                /* In a file, just written (so in the page cache, unless
                 * its file system cannot say: then it is refused). */
                snprintf(path, sizeof(path), "%s/in.png", E.dir);
                int fd = open(path, O_RDWR | O_CREAT | O_TRUNC | O_CLOEXEC, 0644);
                assert_true(fd >= 0);
                assert_int_equal(write(fd, png.data, png.size), (ssize_t) png.size);
                char c;
                if (preadv2(fd, &(struct iovec) {&c, 1}, 1, 0, RWF_NOWAIT) == 1) {
                        report = image_job_report("{\"fd\":0,\"format\":\"png\"}", &fd, 1);
                        assert_report_has(kinds[i].name, report, want);
                        free(report);
                } else {
                        json_object *e = image_job_error("{\"fd\":0,\"format\":\"png\"}", &fd, 1,
                                                         "io.gpuhost.InvalidParameter");
                        assert_contains(str(e, "reason"), "not in memory");
                        json_object_put(e);
                }
                close(fd);
                free(png.data);
        }

        /* Raw pixels, inline and in an fd. */
        for (size_t i = 0; i < sizeof(pixels); i++)
                pixels[i] = (uint8_t) (i * 13 + 7);
        image_expect(pixels, 3, want, sizeof(want));
        report = image_job_report(v = inline_image(pixels, IMG_W * IMG_H * 3,
                                                   "\"width\":5,\"height\":3,\"format\":\"rgb8\""), NULL, 0);
        assert_report_has("raw inline", report, want);
        free(report);
        free(v);
        int fd = memfd_of(pixels, IMG_W * IMG_H * 4);
        image_expect(pixels, 4, want, sizeof(want));
        report = image_job_report("{\"fd\":0,\"width\":5,\"height\":3,\"format\":\"rgba8\"}", &fd, 1);
        assert_report_has("raw fd", report, want);
        free(report);
        close(fd);

        /* gpuhostctl decodes a PNG file itself and sends rgb8 pixels. */
        const png_kind *k = &kinds[0];
        unsigned channels = png_kind_pixels(k, samples, &row, pixels, plte);
        png_buf png = png_make(k->color_type, k->depth, k->interlace, samples, row, plte, 0);
        snprintf(path, sizeof(path), "%s/ctl.png", E.dir);
        fd = open(path, O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0644);
        assert_int_equal(write(fd, png.data, png.size), (ssize_t) png.size);
        close(fd);
        char cmd[1024], out[256];
        snprintf(cmd, sizeof(cmd), "GPUHOST_SOCKET='%s' '%s' generate test-sleep -q -d %d --param image=@%s -o %s/report",
                 E.sock, getenv("GH_GPUHOSTCTL"), E.device, path, E.dir);
        assert_int_equal(system(cmd), 0);
        snprintf(out, sizeof(out), "%s/report", E.dir);
        report = read_text(out);
        image_expect(pixels, channels, want, sizeof(want));
        assert_report_has("gpuhostctl", report, want);
        free(report);

        /* Refused before a job exists: InvalidParameter names "image". */
        static const struct {
                const char *image, *reason;
        } bad[] = {
                {"{\"data\":\"iVBORw0KGgo*\",\"format\":\"png\"}", "not base64"},
                {"{\"data\":\"AAAA\",\"width\":5,\"height\":3,\"format\":\"rgb8\"}", "holds 3 bytes; a 5x3 rgb8 image is 45"},
                {"{\"data\":\"AAAA\",\"format\":\"png\"}", "too short to be a PNG file"},
                {"{\"data\":\"AAAA\",\"fd\":0,\"format\":\"png\"}", "both \"fd\" and \"data\""},
                {"{\"url\":\"x\",\"format\":\"png\"}", "unknown image key \"url\""},
        };
        for (size_t i = 0; i < ELEMENTSOF(bad); i++) {
                json_object *e = image_job_error(bad[i].image, NULL, 0, "io.gpuhost.InvalidParameter");
                assert_string_equal(str(e, "parameter"), "image");
                assert_contains(str(e, "reason"), bad[i].reason);
                json_object_put(e);
        }
        v = inline_image(png.data, png.size, "\"format\":\"png\",\"width\":6");
        json_object *e = image_job_error(v, NULL, 0, "io.gpuhost.InvalidParameter");
        assert_contains(str(e, "reason"), "the PNG is 5x3, not the 6x3 given");
        json_object_put(e);
        free(v);
        uint8_t head[33];
        memcpy(head, png.data, 33);
        head[16] = 0x7f; /* a width of 0x7f000005, and an IHDR CRC that no longer fits */
        v = inline_image(head, 33, "\"format\":\"png\"");
        e = image_job_error(v, NULL, 0, "io.gpuhost.InvalidParameter");
        assert_contains(str(e, "reason"), "bad CRC");
        json_object_put(e);
        free(v);

        /* A good head, broken pixel data: the worker fails the job. */
        png.data[png.size - 20] ^= 0xff; /* in the IDAT chunk */
        v = inline_image(png.data, png.size, "\"format\":\"png\"");
        e = image_job_error(v, NULL, 0, "io.gpuhost.JobFailed");
        assert_string_equal(str(e, "pipeline"), "test-sleep");
        assert_contains(str(e, "message"), "start() failed");
        assert_contains(str(e, "message"), "image parameter image: not a valid PNG: ");
        json_object_put(e);
        free(v);
        /* The truncated file, too. */
        png.data[png.size - 20] ^= 0xff;
        v = inline_image(png.data, png.size - 30, "\"format\":\"png\"");
        e = image_job_error(v, NULL, 0, "io.gpuhost.JobFailed");
        assert_contains(str(e, "message"), "not a valid PNG");
        json_object_put(e);
        free(v);
        free(png.data);
        /* The worker survived all of it. */
        assert_int_equal(worker_get("crashes"), crashes);
}

int main(void) {
        const struct CMUnitTest tests[] = {
                cmocka_unit_test(test_refused_plugins),
                cmocka_unit_test(test_validation),
                cmocka_unit_test(test_sum_job),
                cmocka_unit_test(test_worker_fds),
                cmocka_unit_test(test_image_params),
                cmocka_unit_test(test_overalloc),
                cmocka_unit_test(test_crash),
                cmocka_unit_test(test_hang),
                cmocka_unit_test(test_retry),
                cmocka_unit_test(test_cancel),
                cmocka_unit_test(test_job_api),
                cmocka_unit_test(test_restart),
                cmocka_unit_test(test_quarantine),
        };
        signal(SIGPIPE, SIG_IGN);
        return cmocka_run_group_tests(tests, setup, teardown);
}

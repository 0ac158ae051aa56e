/* End-to-end tests of the scheduler on the CPU device: a real gpuhostd
 * serving two CPU devices with small budgets, real gpuhost-worker
 * processes, the test-sleep plugin, real models. Admission (nothing fails
 * for memory, never-fits refused at once with the numbers), priorities
 * and aging, placement by affinity with its reasons, slices rebalanced at
 * step boundaries, the step watchdog, cancel freeing the reservation, and
 * a soak: 200 jobs from 20 concurrent clients, none lost, the ledger and
 * refcounts back to zero. */
#include <dirent.h>
#include <errno.h>
#include <fcntl.h>
#include <pthread.h>
#include <setjmp.h>
#include <signal.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

#include <cmocka.h>
#include <json-c/json.h>

#include "gpuhost/client.h"
#include "gpuhostctl/ctl.h"
#include "lib/daemon-run.h"
#include "lib/daemon-call.h"
#include "lib/files.h"
#include "lib/st-writer.h"

#define MODELS 3
#define MODEL_FLOATS (1u << 20) /* 4 MiB each */
#define MIB (UINT64_C(1) << 20)

static struct {
        char dir[64], sock[128], log[128], plugins[128], models[128];
        pid_t pid;
        int dev[2];     /* the two CPU devices' indexes */
} E;

/* One gpuhostd per test file (E.sock): lib/daemon-call.h's calls on it. */
#define call(method, params, ret_error) gh_test_call_checked(E.sock, method, params, ret_error)
#define call_ok(method, params) gh_test_call_ok(E.sock, method, params)
#define str(o, key) gh_test_str(o, key)
#define num(o, key) gh_test_num(o, key)

static void write_text(const char *path, const char *text) {
        assert_int_equal(gh_test_write_text(path, text), 0);
}

static char *read_text(const char *path) {
        char *text = gh_test_read_text(path);
        assert_non_null(text);
        return text;
}

static void copy_plugin(const char *name) {
        char from[512], to[512];

        snprintf(from, sizeof(from), "%s/%s", getenv("GH_TEST_PLUGIN_DIR"), name);
        snprintf(to, sizeof(to), "%s/%s", E.plugins, name);
        assert_int_equal(gh_test_copy_file(from, to, 0644), 0);
}

static void usleep_ms(unsigned ms) {
        struct timespec ts = {.tv_sec = ms / 1000, .tv_nsec = (long) (ms % 1000) * 1000000};
        nanosleep(&ts, NULL);
}

/* GetStatus' device |index|, with its ledger (free it). */
static json_object *device_status(int index) {
        json_object *s = call_ok("io.gpuhost.GetStatus", NULL), *devs = json_object_object_get(s, "devices");
        for (size_t i = 0; i < json_object_array_length(devs); i++) {
                json_object *d = json_object_array_get_idx(devs, i);
                if (num(d, "index") == index) {
                        json_object *copy = json_object_get(d);
                        json_object_put(s);
                        return copy;
                }
        }
        fail_msg("no device %d", index);
        return NULL;
}

static void wait_units(int index) {
        for (int i = 0; i < 500; i++) {
                json_object *d = device_status(index);
                int64_t u = num(d, "units");
                json_object_put(d);
                if (u > 0)
                        return;
                usleep_ms(20);
        }
        fail_msg("device %d's worker never came up", index);
}

/* Everything back to rest: no job admitted or queued, no workspace
 * reserved, no model referenced. */
static void assert_idle(void) {
        for (int d = 0; d < 2; d++) {
                json_object *s = NULL;
                for (int i = 0; i < 200; i++) { /* a cancelled job's worker lets go at its next step */
                        json_object_put(s);
                        s = device_status(E.dev[d]);
                        if (num(s, "running") == 0)
                                break;
                        usleep_ms(20);
                }
                json_object *mem = json_object_object_get(s, "memory");
                if (num(s, "running") || num(s, "queued") || num(mem, "workspaces") || num(s, "units_busy"))
                        fail_msg("device %d not at rest: %s", E.dev[d], json_object_to_json_string(s));
                json_object_put(s);
        }
        json_object *m = call_ok("io.gpuhost.ListModels", NULL), *ms = json_object_object_get(m, "models");
        for (size_t i = 0; i < json_object_array_length(ms); i++) {
                json_object *res = json_object_object_get(json_object_array_get_idx(ms, i), "resident");
                for (size_t k = 0; k < json_object_array_length(res); k++)
                        assert_int_equal(num(json_object_array_get_idx(res, k), "refcount"), 0);
        }
        json_object_put(m);
}

static int setup(void **state) {
        const char *worker = getenv("GH_GPUHOST_WORKER");
        char conf[256], text[2048];

        if (!getenv("GH_GPUHOSTD") || !worker || !getenv("GH_TEST_PLUGIN_DIR"))
                return -1;
        strcpy(E.dir, "/tmp/gh-sched-XXXXXX");
        assert_non_null(mkdtemp(E.dir));
        snprintf(E.sock, sizeof(E.sock), "%s/gpuhost.sock", E.dir);
        snprintf(E.log, sizeof(E.log), "%s/daemon.log", E.dir);
        snprintf(E.plugins, sizeof(E.plugins), "%s/plugins", E.dir);
        snprintf(E.models, sizeof(E.models), "%s/models", E.dir);
        assert_int_equal(mkdir(E.plugins, 0755), 0);
        assert_int_equal(mkdir(E.models, 0755), 0);
        copy_plugin("plugin-sleep.so");
        copy_plugin("plugin-hang.so");
        for (int i = 0; i < MODELS; i++) {
                char path[256];
                snprintf(path, sizeof(path), "%s/m%d.safetensors", E.models, i);
                gh_test_tensor t[] = {{"w", GH_DTYPE_F32, 1, {MODEL_FLOATS}, NULL}};
                assert_int_equal(gh_test_write_safetensors(path, t, 1, NULL, 8), 0);
        }
        /* Two CPU devices of 64 MiB, four units (threads) each. */
        snprintf(conf, sizeof(conf), "%s/gpuhost.conf", E.dir);
        snprintf(text, sizeof(text),
                 "[daemon]\nlog_level = debug\n[socket]\npath = %s\n"
                 "[limits]\nmax_connections_per_user = 128\n"
                 "[devices]\ncpu_memory = 64M\ncpu_devices = 2\nslab_size = 2M\n[models]\ndirectory = %s\n"
                 "[workers]\nexecutable = %s\nplugin_directory = %s\ncpu_threads = 4\n"
                 "[jobs]\nmax_queued = 300\nmax_queued_per_user = 300\naging_sec = 2\n"
                 "[scheduler]\njobs_per_device = 4\nstep_timeout_sec = 3\n",
                 E.sock, E.models, worker, E.plugins);
        write_text(conf, text);
        assert_int_equal(gh_test_daemon_start(conf, E.log, E.sock, NULL, &E.pid), 0);
        json_object *p = call_ok("io.gpuhost.ListDevices", NULL), *devs = json_object_object_get(p, "devices");
        int n = 0;
        for (size_t i = 0; i < json_object_array_length(devs) && n < 2; i++)
                if (strcmp(str(json_object_array_get_idx(devs, i), "kind"), "cpu") == 0)
                        E.dev[n++] = (int) num(json_object_array_get_idx(devs, i), "index");
        json_object_put(p);
        assert_int_equal(n, 2);
        wait_units(E.dev[0]);
        wait_units(E.dev[1]);
        return 0;
}

static int teardown(void **state) {
        char cmd[128];
        int status = 0;

        if (E.pid > 0) {
                kill(E.pid, SIGTERM);
                waitpid(E.pid, &status, 0);
                if (!WIFEXITED(status) || WEXITSTATUS(status) != 0) {
                        char *text = read_text(E.log);
                        print_message("gpuhostd's log:\n%s", text);
                        free(text);
                }
        }
        snprintf(cmd, sizeof(cmd), "rm -rf '%s'", E.dir);
        (void) !system(cmd);
        return E.pid > 0 && WIFEXITED(status) && WEXITSTATUS(status) == 0 ? 0 : -1;
}

/* ---- jobs ---- */

/* Submits without "more": the reply has the id, device and placement. */
static json_object *submit(const char *params, char **ret_error) {
        return call("io.gpuhost.Generate", params, ret_error);
}

static char *submit_id(const char *params) {
        json_object *o = call_ok("io.gpuhost.Generate", params);
        char *id = strdup(str(o, "job"));
        json_object_put(o);
        return id;
}

/* WaitJob: the final reply's parameters; *ret_error as for calls. */
static json_object *wait_job(const char *id, char **ret_error) {
        char params[128];
        snprintf(params, sizeof(params), "{\"job\":\"%s\"}", id);
        return call("io.gpuhost.WaitJob", params, ret_error);
}

static json_object *get_job(const char *id) {
        char params[128];
        snprintf(params, sizeof(params), "{\"job\":\"%s\"}", id);
        json_object *o = call_ok("io.gpuhost.GetJob", params), *j = json_object_get(json_object_object_get(o, "job"));
        json_object_put(o);
        return j;
}

/* The report output of a done job (inline). */
static char *report(const char *id) {
        char params[128], *err = NULL;
        snprintf(params, sizeof(params), "{\"job\":\"%s\",\"output\":\"inline\"}", id);
        json_object *o = call("io.gpuhost.WaitJob", params, &err);
        if (err)
                fail_msg("job %s: %s %s", id, err, json_object_to_json_string(o));
        json_object *out = json_object_array_get_idx(json_object_object_get(o, "outputs"), 0);
        uint8_t *text = NULL;
        size_t n;
        assert_int_equal(ctl_base64_decode(str(out, "data"), &text, &n), 0); /* NUL-terminated */
        json_object_put(o);
        return (char *) text;
}

/* ---- tests ---- */

/* A job that can never fit is refused at submit time with the numbers. */
static void test_never_fits(void **state) {
        char *err = NULL;
        json_object *o = submit("{\"pipeline\":\"test-sleep\",\"parameters\":{\"workspace\":1073741824}}", &err);

        assert_non_null(err);
        assert_string_equal(err, "io.gpuhost.JobTooLarge");
        assert_int_equal(num(o, "needed_bytes"), 1073741824);
        assert_int_equal(num(o, "largest_bytes"), 64 * MIB);
        assert_string_equal(str(o, "reason"), "needs 1024 MiB, the largest device offers 64 MiB");
        free(err);
        json_object_put(o);
        /* workspace and a model together: 62 MiB + 4 MiB of weights */
        o = submit("{\"pipeline\":\"test-sleep\",\"parameters\":{\"workspace\":65011712,\"model\":\"m0\"}}", &err);
        assert_string_equal(err, "io.gpuhost.JobTooLarge");
        assert_int_equal(num(o, "needed_bytes"), 66 * MIB);
        free(err);
        json_object_put(o);
        o = submit("{\"pipeline\":\"test-sleep\",\"parameters\":{\"model\":\"nosuch\"}}", &err);
        assert_string_equal(err, "io.gpuhost.ModelNotFound");
        free(err);
        json_object_put(o);
        assert_idle();
}

/* Many jobs whose workspaces together are far past the budget: they wait
 * for room, none fails, and the reserved workspace never passes it. */
static void test_memory_budget(void **state) {
        char *ids[12], params[256];
        int64_t peak = 0;

        for (int i = 0; i < 12; i++) {
                snprintf(params, sizeof(params),
                         "{\"pipeline\":\"test-sleep\",\"device\":%d,\"parameters\":{\"workspace\":%" PRIu64
                         ",\"steps\":2,\"step_ms\":60}}", E.dev[0], 20 * MIB);
                ids[i] = submit_id(params);
        }
        for (int done = 0; done < 100; done++) {
                json_object *d = device_status(E.dev[0]), *mem = json_object_object_get(d, "memory");
                int64_t ws = num(mem, "workspaces"), used = ws + num(mem, "weights");
                assert_true(used <= num(mem, "budget"));
                if (ws > peak)
                        peak = ws;
                bool idle = num(d, "running") == 0 && num(d, "queued") == 0;
                json_object_put(d);
                if (idle)
                        break;
                usleep_ms(30);
        }
        for (int i = 0; i < 12; i++) {
                char *err = NULL;
                json_object *o = wait_job(ids[i], &err);
                if (err)
                        fail_msg("job %s: %s %s", ids[i], err, json_object_to_json_string(o));
                json_object_put(o);
                free(ids[i]);
        }
        print_message("memory: peak reserved workspace %" PRId64 " MiB of a 64 MiB budget\n", peak / (int64_t) MIB);
        assert_true(peak == 60 * (int64_t) MIB); /* three at a time: 3 x 20 MiB fit, 4 do not */
        assert_idle();
}

/* A saturated device: an interactive job submitted last starts before the
 * queued batch jobs, and the batch jobs still finish. */
static void test_priorities(void **state) {
        char *batch[8], params[256];

        for (int i = 0; i < 8; i++) {
                snprintf(params, sizeof(params),
                         "{\"pipeline\":\"test-sleep\",\"device\":%d,\"priority\":\"batch\",\"parameters\":"
                         "{\"steps\":2,\"step_ms\":100}}", E.dev[1]);
                batch[i] = submit_id(params);
        }
        snprintf(params, sizeof(params),
                 "{\"pipeline\":\"test-sleep\",\"device\":%d,\"priority\":\"interactive\",\"parameters\":{\"steps\":1}}",
                 E.dev[1]);
        char *inter = submit_id(params);
        char *err = NULL;
        json_object *o = wait_job(inter, &err);
        assert_null(err);
        json_object_put(o);
        json_object *ij = get_job(inter);
        int64_t istart = num(ij, "started_usec");
        int later = 0;
        for (int i = 0; i < 8; i++) {
                o = wait_job(batch[i], &err);
                if (err)
                        fail_msg("batch job %s: %s", batch[i], err);
                json_object_put(o);
                json_object *bj = get_job(batch[i]);
                later += num(bj, "started_usec") > istart;
                json_object_put(bj);
                free(batch[i]);
        }
        print_message("priorities: %d of 8 batch jobs started after the interactive one\n", later);
        assert_true(later >= 4); /* four run at once; the rest waited behind it */
        json_object_put(ij);
        free(inter);
        assert_idle();
}

/* Affinity: with the model resident on one device, jobs go there while it
 * has room; a burst makes the wait longer than a load, and a second copy
 * goes to the other device, with that reason. */
static void test_affinity(void **state) {
        char params[256], *ids[10];
        int here = 0, second = 0;

        snprintf(params, sizeof(params), "{\"model\":\"m1\",\"device\":%d}", E.dev[1]);
        json_object_put(call_ok("io.gpuhost.LoadModel", params));
        for (int i = 0; i < 3; i++) { /* one at a time: always the resident copy */
                json_object *o = call_ok("io.gpuhost.Generate", "{\"pipeline\":\"test-sleep\",\"parameters\":"
                                                                "{\"model\":\"m1\",\"steps\":1}}");
                assert_int_equal(num(o, "device"), E.dev[1]);
                if (!strstr(str(o, "placement"), "model resident on device"))
                        fail_msg("placement: %s", str(o, "placement"));
                char *id = strdup(str(o, "job")), *err = NULL;
                json_object_put(o);
                json_object_put(wait_job(id, &err));
                assert_null(err);
                free(id);
        }
        for (int i = 0; i < 10; i++) { /* a burst of 300 ms jobs: 4 run at once */
                json_object *o = call_ok("io.gpuhost.Generate", "{\"pipeline\":\"test-sleep\",\"parameters\":"
                                                                "{\"model\":\"m1\",\"steps\":3,\"step_ms\":100}}");
                const char *why = str(o, "placement");
                if (num(o, "device") == E.dev[1])
                        here++;
                else {
                        second++;
                        if (!strstr(why, "second copy") && !strstr(why, "model resident on device"))
                                fail_msg("placement on the other device: %s", why);
                }
                print_message("affinity: job %d -> device %" PRId64 ": %s\n", i, num(o, "device"), why);
                ids[i] = strdup(str(o, "job"));
                json_object_put(o);
        }
        for (int i = 0; i < 10; i++) {
                char *err = NULL;
                json_object_put(wait_job(ids[i], &err));
                assert_null(err);
                free(ids[i]);
        }
        assert_true(here >= 4);
        assert_true(second >= 1);
        char *log = read_text(E.log);
        assert_non_null(strstr(log, "longer than loading a second copy"));
        free(log);
        assert_idle();
}

/* Slices: a batch job alone holds every unit; an interactive job beside
 * it takes most of them at the batch job's next step boundary. */
static void test_slices(void **state) {
        char params[256];

        snprintf(params, sizeof(params), "{\"pipeline\":\"test-sleep\",\"device\":%d,\"priority\":\"batch\","
                 "\"parameters\":{\"steps\":8,\"step_ms\":80}}", E.dev[0]);
        char *b = submit_id(params);
        usleep_ms(150);
        snprintf(params, sizeof(params), "{\"pipeline\":\"test-sleep\",\"device\":%d,\"priority\":\"interactive\","
                 "\"parameters\":{\"steps\":3,\"step_ms\":50}}", E.dev[0]);
        char *i = submit_id(params);
        char *ri = report(i), *rb = report(b);
        print_message("slices: batch \"%.*s\", interactive \"%.*s\"\n", (int) strcspn(rb, "\n"), rb,
                      (int) strcspn(ri, "\n"), ri);
        assert_non_null(strstr(rb, "threads=4 min_threads=1")); /* alone 4, beside it 1 */
        assert_non_null(strstr(ri, "threads=3")); /* weights 8:1 of 4 units */
        free(ri);
        free(rb);
        free(i);
        free(b);
        assert_idle();
}

/* Cancel frees a job's reservation at once (queued or admitted), the
 * running one at its next step. */
static void test_cancel_frees(void **state) {
        char params[256], *err = NULL;

        snprintf(params, sizeof(params), "{\"pipeline\":\"test-sleep\",\"device\":%d,\"parameters\":"
                 "{\"workspace\":%" PRIu64 ",\"steps\":100,\"step_ms\":50}}", E.dev[0], 30 * MIB);
        char *a = submit_id(params), *b = submit_id(params), *c = submit_id(params);
        usleep_ms(200);
        json_object *d = device_status(E.dev[0]);
        assert_int_equal(num(json_object_object_get(d, "memory"), "workspaces"), 60 * MIB);
        assert_int_equal(num(d, "queued"), 1);
        json_object_put(d);
        char cancel[128];
        snprintf(cancel, sizeof(cancel), "{\"job\":\"%s\"}", c);
        json_object_put(call_ok("io.gpuhost.CancelJob", cancel)); /* queued */
        snprintf(cancel, sizeof(cancel), "{\"job\":\"%s\"}", a);
        json_object_put(call_ok("io.gpuhost.CancelJob", cancel)); /* running */
        json_object *o = wait_job(a, &err);
        assert_string_equal(err, "io.gpuhost.JobCancelled");
        free(err);
        json_object_put(o);
        snprintf(cancel, sizeof(cancel), "{\"job\":\"%s\"}", b);
        json_object_put(call_ok("io.gpuhost.CancelJob", cancel));
        free(a);
        free(b);
        free(c);
        assert_idle();
}

/* A step past its declared timeout restarts the worker; the job fails
 * with WorkerCrashed naming the step; the other device is untouched. */
static void test_step_watchdog(void **state) {
        char params[256], *err = NULL;

        snprintf(params, sizeof(params), "{\"pipeline\":\"test-sleep\",\"device\":%d,\"parameters\":"
                 "{\"steps\":2,\"step_ms\":5000,\"step_timeout_ms\":300}}", E.dev[0]);
        char *id = submit_id(params);
        json_object *o = wait_job(id, &err);
        assert_string_equal(err, "io.gpuhost.WorkerCrashed");
        if (!strstr(str(o, "reason"), "step 1 of 2 ran longer than 0.3 s"))
                fail_msg("reason: %s", str(o, "reason"));
        free(err);
        json_object_put(o);
        free(id);
        wait_units(E.dev[0]);
        assert_idle();
}

/* 200 jobs from 20 clients at once, mixed priorities, models, workspaces,
 * some cancelled, some with deadlines too short: every job ends with its
 * documented result, none is lost, none fails for memory. */
typedef struct client {
        int index;
        int done, cancelled, deadline, other;
        char first_error[256];
} client;

static void *client_main(void *userdata) {
        static const char *const prios[] = {"interactive", "normal", "batch"};
        client *c = userdata;
        gh_client *conn = NULL;
        char *ids[10] = {0};
        int kind[10];

        if (gh_client_connect(E.sock, &conn) < 0)
                return NULL;
        gh_client_set_timeout(conn, 120 * 1000000ull);
        for (int i = 0; i < 10; i++) {
                int n = c->index * 10 + i;
                char params[512], model[32] = "";
                kind[i] = n % 10 == 3 ? 1 : n % 10 == 7 ? 2 : 0; /* 1: cancel, 2: short deadline */
                if (n % 3)
                        snprintf(model, sizeof(model), ",\"model\":\"m%d\"", n % MODELS);
                snprintf(params, sizeof(params),
                         "{\"pipeline\":\"test-sleep\",\"priority\":\"%s\",%s\"parameters\":{\"steps\":%d,"
                         "\"step_ms\":%d,\"workspace\":%" PRIu64 ",\"work\":%d%s}}",
                         prios[n % 3], kind[i] == 2 ? "\"deadline_sec\":0.001," : "", 1 + n % 3, 10 + n % 20,
                         (uint64_t) (n % 5) * 6 * MIB, (n % 4) * 20000, model);
                gh_reply *r = NULL;
                int rr = gh_client_call(conn, "io.gpuhost.Generate", params, &r);
                if (rr >= 0 && kind[i] == 2 && gh_reply_error(r) &&
                    strcmp(gh_reply_error(r), "io.gpuhost.DeadlineExceeded") == 0) {
                        c->deadline++; /* past it before the estimate was back */
                        gh_reply_free(r);
                        continue;
                }
                if (rr < 0 || gh_reply_error(r)) {
                        c->other++;
                        snprintf(c->first_error, sizeof(c->first_error), "submit: %s", r ? gh_reply_error(r) : "transport");
                        gh_reply_free(r);
                        continue;
                }
                json_object *o = json_tokener_parse(gh_reply_parameters(r));
                ids[i] = strdup(str(o, "job"));
                json_object_put(o);
                gh_reply_free(r);
                if (kind[i] == 1) {
                        char p[128];
                        snprintf(p, sizeof(p), "{\"job\":\"%s\"}", ids[i]);
                        if (gh_client_call(conn, "io.gpuhost.CancelJob", p, &r) >= 0)
                                gh_reply_free(r);
                }
        }
        for (int i = 0; i < 10; i++) {
                char p[128];
                gh_reply *r = NULL;
                if (!ids[i])
                        continue;
                snprintf(p, sizeof(p), "{\"job\":\"%s\"}", ids[i]);
                int rr = gh_client_call(conn, "io.gpuhost.WaitJob", p, &r);
                const char *e = rr < 0 ? "transport" : gh_reply_error(r);
                if (!e)
                        c->done++;
                else if (strcmp(e, "io.gpuhost.JobCancelled") == 0 && kind[i] == 1)
                        c->cancelled++;
                else if (strcmp(e, "io.gpuhost.JobNotFound") == 0 && kind[i] == 1)
                        c->cancelled++; /* cancelled while queued and forgotten by CancelJob */
                else if (strcmp(e, "io.gpuhost.DeadlineExceeded") == 0 && kind[i] == 2)
                        c->deadline++;
                else {
                        c->other++;
                        if (!c->first_error[0])
                                snprintf(c->first_error, sizeof(c->first_error), "%s: %s %s", ids[i], e,
                                         r ? gh_reply_parameters(r) : "");
                }
                gh_reply_free(r);
                free(ids[i]);
        }
        gh_client_free(conn);
        return NULL;
}

static void test_soak(void **state) {
        client clients[20] = {0};
        pthread_t tids[20];
        int done = 0, cancelled = 0, deadline = 0, other = 0;

        for (int i = 0; i < 20; i++) {
                clients[i].index = i;
                assert_int_equal(pthread_create(&tids[i], NULL, client_main, &clients[i]), 0);
        }
        for (int i = 0; i < 20; i++) {
                pthread_join(tids[i], NULL);
                done += clients[i].done;
                cancelled += clients[i].cancelled;
                deadline += clients[i].deadline;
                other += clients[i].other;
                if (clients[i].first_error[0])
                        print_message("client %d: %s\n", i, clients[i].first_error);
        }
        print_message("soak: %d done, %d cancelled, %d past their deadline, %d other\n", done, cancelled, deadline, other);
        assert_int_equal(other, 0);
        assert_int_equal(done + cancelled + deadline, 200);
        assert_int_equal(cancelled, 20);
        assert_int_equal(deadline, 20);
        char *log = read_text(E.log);
        assert_null(strstr(log, "ENOSPC"));
        assert_null(strstr(log, "ENOMEM"));
        free(log);
        assert_idle();
}

/* The metrics tell what the tests above did. */
static double metric(const char *text, const char *series) {
        const char *p = text;
        size_t n = strlen(series);

        while ((p = strstr(p, series))) {
                if ((p == text || p[-1] == '\n') && p[n] == ' ')
                        return strtod(p + n + 1, NULL);
                p += n;
        }
        fail_msg("no series %s in:\n%s", series, text);
        return 0;
}

static void test_metrics(void **state) {
        json_object *o = call_ok("io.gpuhost.GetMetrics", NULL);
        const char *text = str(o, "text");
        char series[256];

        assert_true(metric(text, "gpuhost_jobs_submitted_total{pipeline=\"test-sleep\"}") >= 200);
        assert_true(metric(text, "gpuhost_jobs_finished_total{pipeline=\"test-sleep\",state=\"failed\","
                                 "reason=\"io.gpuhost.DeadlineExceeded\"}") >= 20);
        assert_true(metric(text, "gpuhost_placements_total{reason=\"second_copy\"}") >= 1);
        snprintf(series, sizeof(series), "gpuhost_admission_waits_total{device=\"%d\",reason=\"memory\"}", E.dev[0]);
        assert_true(metric(text, series) >= 1);
        snprintf(series, sizeof(series), "gpuhost_worker_restarts_total{device=\"%d\",reason=\"killed\"}", E.dev[0]);
        assert_true(metric(text, series) == 1); /* the step watchdog */
        snprintf(series, sizeof(series), "gpuhost_device_memory_bytes{device=\"%d\",kind=\"budget\"}", E.dev[1]);
        assert_true(metric(text, series) == 64.0 * 1024 * 1024);
        snprintf(series, sizeof(series), "gpuhost_device_memory_bytes{device=\"%d\",kind=\"workspaces\"}", E.dev[1]);
        assert_true(metric(text, series) == 0);
        snprintf(series, sizeof(series), "gpuhost_device_busy_seconds_total{device=\"%d\"}", E.dev[0]);
        assert_true(metric(text, series) > 0.1);
        assert_true(metric(text, "gpuhost_step_seconds_count{pipeline=\"test-sleep\"}") > 200);
        json_object_put(o);
}

int main(void) {
        const struct CMUnitTest tests[] = {
                cmocka_unit_test(test_never_fits),
                cmocka_unit_test(test_memory_budget),
                cmocka_unit_test(test_priorities),
                cmocka_unit_test(test_affinity),
                cmocka_unit_test(test_slices),
                cmocka_unit_test(test_cancel_frees),
                cmocka_unit_test(test_step_watchdog),
                cmocka_unit_test(test_soak),
                cmocka_unit_test(test_metrics),
        };
        if (!getenv("GH_GPUHOSTD") || !getenv("GH_GPUHOST_WORKER") || !getenv("GH_TEST_PLUGIN_DIR")) {
                print_message("GH_GPUHOSTD, GH_GPUHOST_WORKER or GH_TEST_PLUGIN_DIR unset: skipped\n");
                return 77;
        }
        return cmocka_run_group_tests(tests, setup, teardown);
}

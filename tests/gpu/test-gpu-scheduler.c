/* GPU test (ctest label "gpu"): compute slices through a real gpuhostd and
 * gpuhost-worker on GPU 0, with test-sleep's spin kernel (each block spins
 * a fixed number of SM cycles and writes down its SM).
 *
 * 1. Two jobs that each declare half the device's SMs run at once, each in
 *    its own green context: their steps overlap in time and each runs at
 *    the speed it has alone (time-slicing would halve it), and the SMs
 *    their blocks ran on do not overlap.
 * 2. An interactive job beside a long batch job finishes within 1.15x of
 *    its time alone, scaled by its SMs alone (the whole device) over its
 *    SMs beside it: the batch job gives up its units at its next step.
 *
 * Prints the timings. Exits 77 (skip) without a driver or GPU. */
#include <errno.h>
#include <inttypes.h>
#include <json-c/json.h>
#include <pthread.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include "common/util.h"
#include "gpuhost/client.h"
#include "gpuhostctl/ctl.h"
#include "gpuhostd/cuda.h"
#include "daemon-run.h"

#define SPIN "\"spin_cycles\":2000000"

static char sock[256];
static pid_t daemon_pid;

static void kill_daemon(void) {
        if (daemon_pid > 0)
                kill(daemon_pid, SIGKILL);
}

#define CHECK(cond, ...)                                      \
        do {                                                  \
                if (!(cond)) {                                \
                        fprintf(stderr, "FAIL: " __VA_ARGS__); \
                        fprintf(stderr, "\n");                \
                        exit(1);                              \
                }                                             \
        } while (0)

static json_object *call(const char *method, const char *params) {
        char *e = NULL;
        json_object *o = gh_test_call(sock, method, params, &e);
        CHECK(!e, "%s: %s %s", method, e, json_object_to_json_string(o));
        return o;
}

typedef struct job {
        const char *params;
        uint64_t wall_usec;
        char report[512];
        char error[256];
        json_object *slice;
        uint64_t first_step, last_step; /* CLOCK_MONOTONIC, from the reply's timing */
} job;


static int on_reply(gh_client *c, gh_reply *r, void *userdata) {
        job *j = userdata;
        json_object *o = json_tokener_parse(gh_reply_parameters(r));

        if (gh_reply_error(r))
                snprintf(j->error, sizeof(j->error), "%s %s", gh_reply_error(r), gh_reply_parameters(r));
        else if (json_object_object_get(o, "slice") && !j->slice)
                j->slice = json_object_get(json_object_object_get(o, "slice"));
        json_object *timing = json_object_object_get(o, "timing");
        if (timing) {
                j->first_step = (uint64_t) json_object_get_int64(json_object_object_get(timing, "first_step_usec"));
                j->last_step = (uint64_t) json_object_get_int64(json_object_object_get(timing, "last_step_usec"));
        }
        json_object *outs = json_object_object_get(o, "outputs");
        uint8_t *text = NULL;
        size_t n;
        if (outs && ctl_base64_decode(json_object_get_string(json_object_object_get(json_object_array_get_idx(outs, 0),
                                                                                    "data")), &text, &n) == 0)
                snprintf(j->report, sizeof(j->report), "%s", (const char *) text);
        free(text);
        json_object_put(o);
        return 0;
}

static void *run(void *userdata) {
        job *j = userdata;
        gh_client *c = NULL;
        char params[1024];

        snprintf(params, sizeof(params), "{\"pipeline\":\"test-sleep\",\"output\":\"inline\",%s}", j->params);
        uint64_t t0 = gh_now_usec(CLOCK_MONOTONIC);
        if (gh_client_connect(sock, &c) < 0) {
                snprintf(j->error, sizeof(j->error), "connect");
                return NULL;
        }
        gh_client_set_timeout(c, 0);
        if (gh_client_call_more(c, "io.gpuhost.Generate", params, on_reply, j) < 0 && !j->error[0])
                snprintf(j->error, sizeof(j->error), "transport error");
        j->wall_usec = gh_now_usec(CLOCK_MONOTONIC) - t0;
        gh_client_free(c);
        return NULL;
}

static void run_one(job *j) {
        run(j);
        CHECK(!j->error[0], "job %s: %s", j->params, j->error);
}

/* The SMs a report names: "smmask=" and 64 hex digits, SM 0 last. */
static void sm_mask(const job *j, uint64_t ret[4]) {
        const char *p = strstr(j->report, "smmask=");
        CHECK(p && strlen(p + 7) >= 64, "no SM mask in the report \"%s\"", j->report);
        for (int w = 0; w < 4; w++) {
                char word[17];
                memcpy(word, p + 7 + 16 * w, 16);
                word[16] = 0;
                ret[3 - w] = strtoull(word, NULL, 16);
        }
}

static unsigned popcount4(const uint64_t m[4]) {
        return (unsigned) (__builtin_popcountll(m[0]) + __builtin_popcountll(m[1]) + __builtin_popcountll(m[2]) +
                           __builtin_popcountll(m[3]));
}

static void start_daemon(const char *dir, unsigned *ret_units, unsigned *ret_unit_sms) {
        const char *worker = getenv("GH_GPUHOST_WORKER"), *plugins = getenv("GH_TEST_PLUGIN_DIR");
        char conf[512], text[2048], log[512];

        CHECK(worker && plugins, "GH_GPUHOST_WORKER and GH_TEST_PLUGIN_DIR must be set");
        snprintf(conf, sizeof(conf), "%s/g.conf", dir);
        snprintf(log, sizeof(log), "%s/daemon.log", dir);
        snprintf(text, sizeof(text),
                 "[daemon]\nlog_level = debug\n[socket]\npath = %s\n[devices]\ncpu = no\nslab_size = 64M\n"
                 "[models]\ndirectory = %s\n[workers]\nexecutable = %s\nplugin_directory = %s\n",
                 sock, dir, worker, plugins);
        FILE *f = fopen(conf, "we");
        CHECK(f, "config");
        fputs(text, f);
        fclose(f);
        CHECK(gh_test_daemon_start(conf, log, sock, NULL, &daemon_pid) >= 0, "gpuhostd did not start (see %s)", log);
        for (int i = 0; i < 1500; i++) {
                json_object *s = call("io.gpuhost.GetStatus", NULL);
                json_object *d = json_object_array_get_idx(json_object_object_get(s, "devices"), 0);
                int64_t units = json_object_get_int64(json_object_object_get(d, "units"));
                int64_t sms = json_object_get_int64(json_object_object_get(d, "unit_sms"));
                json_object_put(s);
                if (units > 0) {
                        *ret_units = (unsigned) units;
                        *ret_unit_sms = (unsigned) sms;
                        return;
                }
                usleep(20000);
        }
        CHECK(false, "the GPU worker did not come up (see %s)", log);
}

/* Two half-device jobs at once take about as long as one alone. */
static void test_two_slices(unsigned units, unsigned unit_sms) {
        char p[512];
        unsigned half = units / 2 * unit_sms;

        CHECK(units >= 2 && unit_sms > 0, "green-context slices are needed: %u unit(s) of %u SMs", units, unit_sms);
        snprintf(p, sizeof(p), "\"parameters\":{\"steps\":10,\"spin_blocks\":4096,\"slice_sms\":%u," SPIN "}", half);
        job solo = {.params = p}, a = {.params = p}, b = {.params = p};
        pthread_t ta, tb;
        /* Warm-up: both slices' green contexts made, the kernel loaded in each. */
        pthread_create(&ta, NULL, run, &a);
        pthread_create(&tb, NULL, run, &b);
        pthread_join(ta, NULL);
        pthread_join(tb, NULL);
        json_object_put(a.slice);
        json_object_put(b.slice);
        a = (job) {.params = p};
        b = (job) {.params = p};
        run_one(&solo);
        uint64_t t0 = gh_now_usec(CLOCK_MONOTONIC);
        pthread_create(&ta, NULL, run, &a);
        pthread_create(&tb, NULL, run, &b);
        pthread_join(ta, NULL);
        pthread_join(tb, NULL);
        uint64_t pair = gh_now_usec(CLOCK_MONOTONIC) - t0;
        CHECK(!a.error[0] && !b.error[0], "%s %s", a.error, b.error);
        uint64_t ma[4], mb[4];
        sm_mask(&a, ma);
        sm_mask(&b, mb);
        unsigned shared = 0;
        for (int w = 0; w < 4; w++)
                shared += (unsigned) __builtin_popcountll(ma[w] & mb[w]);
        printf("two slices: %u units of %u SMs; each job asks for %u SMs\n", units, unit_sms, half);
        printf("  one job alone: %.1f ms (ran on %u SMs)\n", solo.wall_usec / 1e3, popcount4(ma));
        printf("  two at once:   %.1f ms in all (%.1f and %.1f ms), on %u and %u SMs, %u shared\n", pair / 1e3,
               a.wall_usec / 1e3, b.wall_usec / 1e3, popcount4(ma), popcount4(mb), shared);
        printf("  steps in the worker: alone %.1f ms; at once %.1f..%.1f and %.1f..%.1f ms after the first began\n",
               (solo.last_step - solo.first_step) / 1e3, 0.0, (a.last_step - a.first_step) / 1e3,
               ((double) b.first_step - (double) a.first_step) / 1e3, ((double) b.last_step - (double) a.first_step) / 1e3);
        printf("  together / alone = %.2f (1.0: fully concurrent, 2.0: one after the other)\n",
               (double) pair / (double) solo.wall_usec);
        CHECK(shared == 0, "the two slices shared %u SMs", shared);
        CHECK(popcount4(ma) <= half && popcount4(mb) <= half, "a job ran on more SMs than its slice");
        double alone = (double) (solo.last_step - solo.first_step);
        double da = (double) (a.last_step - a.first_step), db = (double) (b.last_step - b.first_step);
        double overlap = (double) (a.last_step < b.last_step ? a.last_step : b.last_step) -
                         (double) (a.first_step > b.first_step ? a.first_step : b.first_step);
        printf("  steps beside each other: %.0f%% of a job's time alone; each ran at %.2fx and %.2fx its time alone\n",
               100 * overlap / alone, da / alone, db / alone);
        CHECK(overlap > 0.5 * alone, "the two jobs' steps hardly overlapped");
        CHECK(da < 1.25 * alone && db < 1.25 * alone, "side by side, the jobs ran slower: time-sliced, not concurrent");
        json_object_put(solo.slice);
        json_object_put(a.slice);
        json_object_put(b.slice);
}

/* An interactive job beside a long batch job, against its time alone.
 * Run twice: the first round makes the slices' green contexts (a mask's
 * first use costs its context and the kernel's load into it); the second
 * is the steady state, and is the one checked. */
static void test_interactive_beside_batch(bool check) {
        const char *ip = "\"priority\":\"interactive\",\"parameters\":{\"steps\":30,\"spin_blocks\":1792," SPIN "}";
        const char *bp = "\"priority\":\"batch\",\"parameters\":{\"steps\":100000,\"spin_blocks\":256," SPIN "}";
        job solo = {.params = ip}, beside = {.params = ip}, batch = {.params = bp};

        run_one(&solo);
        memset(&solo, 0, sizeof(solo));
        solo.params = ip;
        run_one(&solo);
        pthread_t tb;
        pthread_create(&tb, NULL, run, &batch);
        for (int i = 0; i < 500; i++) { /* until the batch job runs (on every unit) */
                json_object *l = call("io.gpuhost.ListJobs", NULL), *jobs = json_object_object_get(l, "jobs");
                bool running = false;
                for (size_t k = 0; k < json_object_array_length(jobs); k++) {
                        json_object *j = json_object_array_get_idx(jobs, k);
                        running |= gh_streq(json_object_get_string(json_object_object_get(j, "state")), "running") &&
                                   json_object_get_int64(json_object_object_get(j, "step")) >= 3;
                }
                json_object_put(l);
                if (running)
                        break;
                usleep(10000);
        }
        run_one(&beside);
        json_object *l = call("io.gpuhost.ListJobs", NULL), *jobs = json_object_object_get(l, "jobs");
        for (size_t k = 0; k < json_object_array_length(jobs); k++) {
                json_object *j = json_object_array_get_idx(jobs, k);
                if (gh_streq(json_object_get_string(json_object_object_get(j, "state")), "running")) {
                        char p[128];
                        snprintf(p, sizeof(p), "{\"job\":\"%s\"}", json_object_get_string(json_object_object_get(j, "job")));
                        json_object_put(call("io.gpuhost.CancelJob", p));
                }
        }
        json_object_put(l);
        pthread_join(tb, NULL);
        double ratio = (double) beside.wall_usec / (double) solo.wall_usec;
        /* alone it has the whole device; beside the batch job, its share of
         * the units: the bound allows 15% over what the SMs explain */
        double sms_alone = (double) json_object_get_int64(json_object_object_get(solo.slice, "sms"));
        double sms_beside = (double) json_object_get_int64(json_object_object_get(beside.slice, "sms"));
        double bound = sms_alone > 0 && sms_beside > 0 ? 1.15 * sms_alone / sms_beside : 1.3;
        printf("interactive beside batch: alone %.1f ms (slice %s), beside a batch job %.1f ms (slice %s): %.2fx\n",
               solo.wall_usec / 1e3, json_object_to_json_string(solo.slice), beside.wall_usec / 1e3,
               json_object_to_json_string(beside.slice), ratio);
        printf("  batch job: %s%s\n", batch.error[0] ? batch.error : batch.report, check ? "" : " (warm-up round)");
        CHECK(strstr(batch.error, "JobCancelled"), "the batch job should have been cancelled: %s", batch.error);
        printf("  bound: %.2fx (1.15 x %.0f / %.0f SMs)\n", bound, sms_alone, sms_beside);
        CHECK(!check || ratio <= bound, "the interactive job took %.2fx its time alone (bound %.2fx)", ratio, bound);
        json_object_put(solo.slice);
        json_object_put(beside.slice);
        json_object_put(batch.slice);
}

int main(void) {
        char err[256], dir[] = "/tmp/gh-gpu-sched-XXXXXX";
        gh_cuda *cu = NULL;
        unsigned units = 0, unit_sms = 0;
        int r = gh_cuda_load(NULL, &cu, err, sizeof(err));

        if (r == -ENOENT || r == -ENODEV) {
                printf("SKIP: %s\n", err);
                return 77;
        }
        CHECK(r >= 0, "%s", err);
        gh_cuda_free(cu);
        CHECK(mkdtemp(dir), "mkdtemp");
        atexit(kill_daemon);
        snprintf(sock, sizeof(sock), "%s/g.sock", dir);
        start_daemon(dir, &units, &unit_sms);
        test_two_slices(units, unit_sms);
        test_interactive_beside_batch(false);
        test_interactive_beside_batch(true);
        kill(daemon_pid, SIGTERM);
        daemon_pid = 0;
        printf("PASS\n");
        return 0;
}

/* GPU test (ctest label "gpu"): a worker process maps GPU 0's weight pool
 * from the daemon (VMM slab fds over its socket) and runs a kernel that
 * reads the weights in place. Through a real gpuhostd and gpuhost-worker:
 * a model whose one tensor spans several slabs is summed block by block by
 * the test-sum plugin's kernel, and the sums must equal the ones computed
 * here from the same values (integers, so exact in any order). Then a
 * plugin crashes its worker on the GPU, the job gets WorkerCrashed, and the
 * next job runs on a fresh worker without the model being loaded again.
 * Exits 77 (skip) without a driver or GPU. */
#include <errno.h>
#include <inttypes.h>
#include <json-c/json.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <unistd.h>

#include "common/util.h"
#include "gpuhost/client.h"
#include "gpuhostd/cuda.h"
#include "daemon-run.h"
#include "st-writer.h"

#define N_FLOATS (UINT64_C(48) << 20) /* 192 MiB: spans four 64 MiB slabs */
#define BLOCKS 8

static char sock[256];
static pid_t daemon_pid;

/* A failing check must not leave the daemon holding ctest's output pipe. */
static void kill_daemon(void) {
        if (daemon_pid > 0)
                kill(daemon_pid, SIGKILL);
}

#define CHECK(cond, ...)                                      \
        do {                                                  \
                if (!(cond)) {                                \
                        fprintf(stderr, "FAIL: " __VA_ARGS__); \
                        fprintf(stderr, "\n");                \
                        return 1;                             \
                }                                             \
        } while (0)

static float value(uint64_t i) {
        return (float) ((i * 2654435761u) % 13) - 6.0f;
}

static json_object *call(const char *method, const char *params, char **ret_error) {
        return gh_test_call(sock, method, params, ret_error);
}

typedef struct job_result {
        char *error;
        json_object *last;
        int fd;
        unsigned progress;
} job_result;

static int on_reply(gh_client *c, gh_reply *r, void *userdata) {
        job_result *j = userdata;

        json_object_put(j->last);
        j->last = json_tokener_parse(gh_reply_parameters(r));
        if (gh_reply_error(r)) {
                j->error = strdup(gh_reply_error(r));
                return 0;
        }
        if (gh_reply_continues(r))
                j->progress++;
        else if (gh_reply_n_fds(r) > 0)
                j->fd = gh_reply_take_fd(r, 0);
        return 0;
}

static int generate(const char *params, job_result *j) {
        gh_client *c = NULL;

        *j = (job_result) {.fd = -1};
        if (gh_client_connect(sock, &c) < 0)
                return -ENOTCONN;
        gh_client_set_timeout(c, 120 * USEC_PER_SEC);
        int r = gh_client_call_full(c, "io.gpuhost.Generate", params, GH_CALL_MORE, NULL, 0, on_reply, j);
        gh_client_free(c);
        return r;
}

static int64_t model_loads(void) {
        char *e;
        json_object *p = call("io.gpuhost.ListModels", NULL, &e);
        json_object *ms = json_object_object_get(p, "models");
        json_object *m = json_object_is_type(ms, json_type_array) ? json_object_array_get_idx(ms, 0) : NULL;
        int64_t n = e ? -1 : json_object_get_int64(json_object_object_get(m, "loads"));
        free(e);
        json_object_put(p);
        return n;
}

static int start_daemon(const char *dir, pid_t *ret) {
        const char *worker = getenv("GH_GPUHOST_WORKER"), *plugins = getenv("GH_TEST_PLUGIN_DIR");
        char conf[512], text[2048], log[512];

        if (!worker || !plugins)
                return -EINVAL;
        snprintf(conf, sizeof(conf), "%s/g.conf", dir);
        snprintf(log, sizeof(log), "%s/daemon.log", dir);
        snprintf(text, sizeof(text),
                 "[socket]\npath = %s\n[devices]\ncpu = no\nslab_size = 64M\n[models]\ndirectory = %s/models\n"
                 "[workers]\nexecutable = %s\nplugin_directory = %s\n",
                 sock, dir, worker, plugins);
        FILE *f = fopen(conf, "we");
        fputs(text, f);
        fclose(f);
        uint64_t t0 = gh_now_usec(CLOCK_MONOTONIC);
        pid_t pid;
        int r = gh_test_daemon_start(conf, log, sock, NULL, &pid);
        daemon_pid = pid;
        if (r < 0)
                return r;
        /* Up, and its worker ready (its CUDA context made at start). */
        for (int i = 0; i < 1500; i++) {
                char *e;
                json_object *p = call("io.gpuhost.ListWorkers", NULL, &e);
                json_object *ws = json_object_object_get(p, "workers");
                json_object *w = !e && json_object_is_type(ws, json_type_array) ? json_object_array_get_idx(ws, 0) : NULL;
                bool ready = w && gh_streq(json_object_get_string(json_object_object_get(w, "state")), "idle");
                free(e);
                json_object_put(p);
                if (ready) {
                        printf("gpuhostd up and its GPU worker ready (CUDA context made, pool reserved) %.3f s after start\n",
                               (double) (gh_now_usec(CLOCK_MONOTONIC) - t0) / 1e6);
                        *ret = pid;
                        return 0;
                }
                usleep(20000);
        }
        return -ETIMEDOUT;
}

static int run_sum(const double *want, const char *label) {
        job_result j;
        char params[256];
        uint64_t t0 = gh_now_usec(CLOCK_MONOTONIC);

        snprintf(params, sizeof(params),
                 "{\"pipeline\":\"test-sum\",\"device\":0,\"parameters\":{\"model\":\"m\",\"tensor\":\"w\",\"blocks\":%d}}",
                 BLOCKS);
        CHECK(generate(params, &j) >= 0, "Generate transport");
        CHECK(!j.error, "%s: Generate: %s %s", label, j.error, json_object_to_json_string(j.last));
        double secs = (double) (gh_now_usec(CLOCK_MONOTONIC) - t0) / 1e6;
        json_object *meta = json_object_object_get(j.last, "metadata");
        CHECK(gh_streq(json_object_get_string(json_object_object_get(meta, "device")), "cuda"),
              "%s: the job did not run on the GPU: %s", label, json_object_to_json_string(j.last));
        CHECK(j.fd >= 0 && j.progress >= BLOCKS + 1, "%s: %u progress replies, fd %d", label, j.progress, j.fd);
        double *got = mmap(NULL, BLOCKS * sizeof(double), PROT_READ, MAP_SHARED, j.fd, 0);
        CHECK(got != MAP_FAILED, "mmap output");
        for (int b = 0; b < BLOCKS; b++)
                CHECK(got[b] == want[b], "%s: block %d: kernel summed %.1f, expected %.1f", label, b, got[b], want[b]);
        printf("%s: the worker's kernel summed %d blocks of %" PRIu64 " MiB of weights in the pool, all exact (%.3f s)\n",
               label, BLOCKS, N_FLOATS * 4 >> 20, secs);
        munmap(got, BLOCKS * sizeof(double));
        close(j.fd);
        json_object_put(j.last);
        return 0;
}

int main(void) {
        char err[256], dir[] = "/tmp/gh-gpu-worker-XXXXXX", path[512];
        gh_cuda *cu = NULL;
        double want[BLOCKS] = {0};
        pid_t pid;
        int r = gh_cuda_load(NULL, &cu, err, sizeof(err));

        if (r == -ENOENT || r == -ENODEV) {
                printf("SKIP: %s\n", err);
                return 77;
        }
        CHECK(r >= 0, "%s", err);
        gh_cuda_free(cu); /* only to tell whether there is a GPU */
        CHECK(mkdtemp(dir), "mkdtemp");
        atexit(kill_daemon);
        snprintf(sock, sizeof(sock), "%s/g.sock", dir);
        snprintf(path, sizeof(path), "%s/models", dir);
        mkdir(path, 0755);
        float *data = malloc(N_FLOATS * sizeof(float));
        CHECK(data, "malloc");
        uint64_t per = (N_FLOATS + BLOCKS - 1) / BLOCKS;
        for (uint64_t i = 0; i < N_FLOATS; i++) {
                data[i] = value(i);
                want[i / per] += data[i];
        }
        gh_test_tensor t[] = {{"w", GH_DTYPE_F32, 1, {N_FLOATS}, data}};
        snprintf(path, sizeof(path), "%s/models/m.safetensors", dir);
        CHECK(gh_test_write_safetensors(path, t, 1, NULL, 8) >= 0, "writing the model");
        free(data);
        CHECK(start_daemon(dir, &pid) >= 0, "gpuhostd or its worker did not start (see %s/daemon.log)", dir);

        CHECK(run_sum(want, "first job") == 0, "first job");
        CHECK(run_sum(want, "second job") == 0, "second job");
        CHECK(model_loads() == 1, "the model was loaded %" PRId64 " times", model_loads());

        job_result j;
        CHECK(generate("{\"pipeline\":\"test-crash\",\"device\":0}", &j) >= 0, "Generate transport");
        CHECK(gh_streq(j.error, "io.gpuhost.WorkerCrashed"), "crash job: %s", j.error ? j.error : "no error");
        printf("crashing plugin on the GPU: %s %s\n", j.error, json_object_to_json_string(j.last));
        free(j.error);
        json_object_put(j.last);
        CHECK(run_sum(want, "after the crash") == 0, "after the crash");
        CHECK(model_loads() == 1, "the model was loaded again after the crash");
        printf("the model stayed resident through the crash (loaded once)\n");

        kill(pid, SIGTERM);
        int status;
        waitpid(pid, &status, 0);
        daemon_pid = 0;
        CHECK(WIFEXITED(status) && WEXITSTATUS(status) == 0, "gpuhostd exit status %d", status);
        snprintf(path, sizeof(path), "rm -rf '%s'", dir);
        (void) !system(path);
        printf("PASS\n");
        return 0;
}

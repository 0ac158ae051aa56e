/* Test plugins "test-crash" and (built with FLAKY) "test-flaky": a job of
 * |steps| steps whose worker dies by SIGSEGV at step |crash_at|. The flaky
 * one is retry-safe and crashes only while its |marker| file does not exist
 * (creating it first), so a retried job succeeds. Exercise the host's crash
 * handling; not product pipelines. */
#include <errno.h>
#include <fcntl.h>
#include <signal.h>
#include <stdlib.h>
#include <unistd.h>

#include <gpuhost/plugin.h>

typedef struct crash_state {
        int64_t steps, crash_at;
        const char *marker;
} crash_state;

static const gh_plugin_param params[] = {
        {GH_PARAM_HEADER, .name = "steps", .type = GH_PARAM_INT, .help = "steps of the job", .int_min = 1,
         .int_max = 100, .int_default = 4},
        {GH_PARAM_HEADER, .name = "crash_at", .type = GH_PARAM_INT, .help = "the step that crashes", .int_min = 0,
         .int_max = 100, .int_default = 2},
        {GH_PARAM_HEADER, .name = "marker", .type = GH_PARAM_STRING, .help = "flaky: crash unless this file exists",
         .string_max = 256, .string_default = ""},
};

static int estimate(const gh_host *host, const gh_params *p, gh_plugin_needs *ret) {
        int64_t steps;
        int r = host->param_int(p, "steps", &steps);

        if (r < 0)
                return r;
        *ret = (gh_plugin_needs) {.struct_size = sizeof(*ret), .steps = (uint32_t) steps};
        ret->workspace[GH_DEVICE_KIND_CPU] = 4096;
        ret->workspace[GH_DEVICE_KIND_CUDA] = 4096;
        return 0;
}

static int start(const gh_host *host, gh_job *job, const gh_params *p, void **ret_state) {
        crash_state *s = calloc(1, sizeof(*s));
        int r;

        if (!s)
                return -ENOMEM;
        if ((r = host->param_int(p, "steps", &s->steps)) < 0 || (r = host->param_int(p, "crash_at", &s->crash_at)) < 0 ||
            (r = host->param_string(p, "marker", &s->marker)) < 0) {
                free(s);
                return r;
        }
        *ret_state = s;
        return 0;
}

static void crash(void) {
        signal(SIGSEGV, SIG_DFL);
        raise(SIGSEGV);
        abort();
}

static int step(const gh_host *host, gh_job *job, void *state, uint32_t k) {
        crash_state *s = state;

        if (k == s->crash_at) {
#ifdef FLAKY
                int fd = open(s->marker, O_WRONLY | O_CREAT | O_EXCL | O_CLOEXEC, 0644);
                if (fd >= 0) {
                        close(fd);
                        crash();
                }
#else
                crash();
#endif
        }
        host->progress(job, k + 1, (uint32_t) s->steps, NULL);
        return k + 1 < s->steps ? GH_STEP_CONTINUE : GH_STEP_DONE;
}

static int finish(const gh_host *host, gh_job *job, void *state) {
        crash_state *s = state;
        void *out;
        int r = host->output_bytes(job, "steps", sizeof(int64_t), &out);

        if (r >= 0)
                *(int64_t *) out = s->steps;
        free(s);
        return r;
}

static void abort_job(const gh_host *host, gh_job *job, void *state) {
        free(state);
}

static const gh_plugin plugin = {
        GH_PLUGIN_HEADER,
#ifdef FLAKY
        .name = "test-flaky",
        .description = "crashes once at a given step (retry-safe)",
        .flags = GH_PLUGIN_RETRY_SAFE,
#else
        .name = "test-crash",
        .description = "crashes at a given step",
#endif
        .version = "1.0",
        .params = params,
        .n_params = GH_PLUGIN_ELEMENTS(params),
        .estimate = estimate,
        .start = start,
        .step = step,
        .finish = finish,
        .abort = abort_job,
};

GH_PLUGIN_DEFINE(plugin)

/* Test plugin "test-hang": its step |hang_at| never returns and never asks
 * whether the job was cancelled, so only the daemon's heartbeat timeout
 * ends it. Exercises the host; not a product pipeline. */
#include <errno.h>
#include <stdlib.h>
#include <unistd.h>

#include <gpuhost/plugin.h>

static const gh_plugin_param params[] = {
        {GH_PARAM_HEADER, .name = "hang_at", .type = GH_PARAM_INT, .help = "the step that hangs", .int_min = 0,
         .int_max = 100, .int_default = 1},
};

static int estimate(const gh_host *host, const gh_params *p, gh_plugin_needs *ret) {
        *ret = (gh_plugin_needs) {.struct_size = sizeof(*ret), .steps = 101};
        ret->workspace[GH_DEVICE_KIND_CPU] = 4096;
        ret->workspace[GH_DEVICE_KIND_CUDA] = 4096;
        return 0;
}

static int start(const gh_host *host, gh_job *job, const gh_params *p, void **ret_state) {
        int64_t *at = malloc(sizeof(*at));

        if (!at)
                return -ENOMEM;
        host->param_int(p, "hang_at", at);
        *ret_state = at;
        return 0;
}

static int step(const gh_host *host, gh_job *job, void *state, uint32_t k) {
        if (k == *(int64_t *) state)
                for (;;)
                        pause();
        host->progress(job, k + 1, 101, NULL);
        return GH_STEP_CONTINUE;
}

static int finish(const gh_host *host, gh_job *job, void *state) {
        free(state);
        return 0;
}

static void abort_job(const gh_host *host, gh_job *job, void *state) {
        free(state);
}

static const gh_plugin plugin = {
        GH_PLUGIN_HEADER,
        .name = "test-hang",
        .version = "1.0",
        .description = "hangs in a step",
        .params = params,
        .n_params = GH_PLUGIN_ELEMENTS(params),
        .estimate = estimate,
        .start = start,
        .step = step,
        .finish = finish,
        .abort = abort_job,
};

GH_PLUGIN_DEFINE(plugin)

/* The smallest useful plugin, built out of tree: one int parameter, one
 * step, an output of bytes. */
#include <string.h>

#include <gpuhost/plugin.h>

static const gh_plugin_param params[] = {
        {GH_PARAM_HEADER, .name = "times", .type = GH_PARAM_INT, .help = "how often to say hello", .int_min = 1,
         .int_max = 10, .int_default = 1},
};

static int estimate(const gh_host *host, const gh_params *p, gh_plugin_needs *ret) {
        memset(ret, 0, sizeof(*ret));
        ret->struct_size = sizeof(*ret);
        ret->steps = 1;
        return 0;
}

static int start(const gh_host *host, gh_job *job, const gh_params *p, void **ret_state) {
        *ret_state = NULL;
        return 0;
}

static int step(const gh_host *host, gh_job *job, void *state, uint32_t k) {
        return GH_STEP_DONE;
}

static int finish(const gh_host *host, gh_job *job, void *state) {
        void *out;
        int r = host->output_bytes(job, "text", 5, &out);
        if (r >= 0)
                memcpy(out, "hello", 5);
        return r;
}

static void abort_job(const gh_host *host, gh_job *job, void *state) {
}

static const gh_plugin plugin = {
        GH_PLUGIN_HEADER,
        .name = "hello", .version = "1.0", .description = "says hello",
        .params = params, .n_params = GH_PLUGIN_ELEMENTS(params),
        .estimate = estimate, .start = start, .step = step, .finish = finish, .abort = abort_job,
};

GH_PLUGIN_DEFINE(plugin)

/* Test plugin "sum": a valid plugin whose job sums blocks of one tensor
 * of its model, one block per step, so a test can check that the weights it
 * sees are the daemon's. Exercises the host; not a product pipeline. */
#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <gpuhost/plugin.h>

typedef struct sum_state {
        gh_tensor t;
        uint32_t blocks;
        double *sums;
        void *ws;
} sum_state;

static const char *const modes[] = {"f32", "bytes", NULL};

static const gh_plugin_param params[] = {
        {GH_PARAM_HEADER, .name = "model", .type = GH_PARAM_MODEL, .help = "the model to read", .required = true},
        {GH_PARAM_HEADER, .name = "tensor", .type = GH_PARAM_STRING, .help = "the tensor to sum", .required = true,
         .string_max = 256},
        {GH_PARAM_HEADER, .name = "blocks", .type = GH_PARAM_INT, .help = "blocks (= steps)", .int_min = 1,
         .int_max = 1000, .int_default = 4},
        {GH_PARAM_HEADER, .name = "mode", .type = GH_PARAM_ENUM, .help = "how to read the data", .choices = modes,
         .enum_default = "f32"},
        {GH_PARAM_HEADER, .name = "scale", .type = GH_PARAM_FLOAT, .help = "multiplies the sums", .float_min = -10,
         .float_max = 10, .float_default = 1},
        {GH_PARAM_HEADER, .name = "verbose", .type = GH_PARAM_BOOL, .help = "log each step"},
};

static int estimate(const gh_host *host, const gh_params *p, gh_plugin_needs *ret) {
        int64_t blocks;
        const char *model;
        int r = host->param_int(p, "blocks", &blocks);

        if (r >= 0)
                r = host->param_string(p, "model", &model);
        if (r < 0)
                return r;
        memset(ret, 0, sizeof(*ret));
        ret->struct_size = sizeof(*ret);
        ret->workspace[GH_DEVICE_KIND_CPU] = (uint64_t) blocks * sizeof(double);
        ret->steps = (uint32_t) blocks;
        ret->models[0] = model;
        ret->n_models = 1;
        return 0;
}

static int start(const gh_host *host, gh_job *job, const gh_params *p, void **ret_state) {
        const char *model, *tensor;
        int64_t blocks;
        int r;

        if ((r = host->param_string(p, "model", &model)) < 0 || (r = host->param_string(p, "tensor", &tensor)) < 0 ||
            (r = host->param_int(p, "blocks", &blocks)) < 0)
                return r;
        sum_state *s = calloc(1, sizeof(*s));
        if (!s)
                return -ENOMEM;
        if ((r = host->tensor(job, model, tensor, &s->t)) < 0 ||
            (r = host->workspace_alloc(job, (size_t) blocks * sizeof(double), 8, &s->ws)) < 0) {
                free(s);
                return r;
        }
        s->blocks = (uint32_t) blocks;
        s->sums = s->ws;
        *ret_state = s;
        return 0;
}

static int step(const gh_host *host, gh_job *job, void *state, uint32_t k) {
        sum_state *s = state;
        uint64_t n = s->t.bytes / 4, per = (n + s->blocks - 1) / s->blocks;
        const float *f = s->t.data;
        double acc = 0;

        for (uint64_t i = k * per; i < n && i < (uint64_t) (k + 1) * per; i++)
                acc += f[i];
        s->sums[k] = acc;
        host->progress(job, k + 1, s->blocks, NULL);
        return k + 1 < s->blocks ? GH_STEP_CONTINUE : GH_STEP_DONE;
}

static int finish(const gh_host *host, gh_job *job, void *state) {
        sum_state *s = state;
        void *out;
        int r = host->output_bytes(job, "sums", s->blocks * sizeof(double), &out);

        if (r >= 0)
                memcpy(out, s->sums, s->blocks * sizeof(double));
        host->workspace_free(job, s->ws);
        free(s);
        return r;
}

static void abort_job(const gh_host *host, gh_job *job, void *state) {
        sum_state *s = state;

        host->workspace_free(job, s->ws);
        free(s);
}

static const gh_plugin plugin = {
        GH_PLUGIN_HEADER,
        .name = "test-sum",
        .version = "1.0",
        .description = "sums blocks of a tensor, one block per step",
        .params = params,
        .n_params = GH_PLUGIN_ELEMENTS(params),
        .flags = GH_PLUGIN_RETRY_SAFE,
        .estimate = estimate,
        .start = start,
        .step = step,
        .finish = finish,
        .abort = abort_job,
};

GH_PLUGIN_DEFINE(plugin)

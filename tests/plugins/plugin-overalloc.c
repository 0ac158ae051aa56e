/* Test plugin "test-overalloc": declares |declared| bytes of workspace,
 * takes them in start(), and asks for |extra| more bytes at step 1, which
 * the host must refuse (-ENOSPC) without harm to anyone else; the job
 * then fails with that error. Exercises the host; not a product pipeline. */
#include <errno.h>
#include <stdlib.h>
#include <string.h>

#include <gpuhost/plugin.h>

typedef struct over_state {
        void *a, *b;
        int64_t extra;
} over_state;

static const gh_plugin_param params[] = {
        {GH_PARAM_HEADER, .name = "declared", .type = GH_PARAM_INT, .help = "workspace declared, bytes",
         .int_min = 1, .int_max = 1 << 30, .int_default = 1 << 20},
        {GH_PARAM_HEADER, .name = "extra", .type = GH_PARAM_INT, .help = "bytes asked for past it at step 1",
         .int_min = 0, .int_max = 1 << 30, .int_default = 1},
};

static int estimate(const gh_host *host, const gh_params *p, gh_plugin_needs *ret) {
        int64_t declared;
        int r = host->param_int(p, "declared", &declared);

        if (r < 0)
                return r;
        *ret = (gh_plugin_needs) {.struct_size = sizeof(*ret), .steps = 3};
        ret->workspace[GH_DEVICE_KIND_CPU] = (uint64_t) declared;
        ret->workspace[GH_DEVICE_KIND_CUDA] = (uint64_t) declared;
        return 0;
}

static int start(const gh_host *host, gh_job *job, const gh_params *p, void **ret_state) {
        over_state *s = calloc(1, sizeof(*s));
        int64_t declared;
        int r;

        if (!s)
                return -ENOMEM;
        if ((r = host->param_int(p, "declared", &declared)) < 0 || (r = host->param_int(p, "extra", &s->extra)) < 0 ||
            (r = host->workspace_alloc(job, (size_t) declared, 64, &s->a)) < 0) {
                free(s);
                return r;
        }
        *ret_state = s;
        return 0;
}

static int step(const gh_host *host, gh_job *job, void *state, uint32_t k) {
        over_state *s = state;

        if (k == 1 && s->extra > 0) {
                int r = host->workspace_alloc(job, (size_t) s->extra, 64, &s->b);
                if (r < 0) {
                        host->log(job, GH_LOG_ERR, "workspace_alloc of %lld more bytes: %s", (long long) s->extra,
                                  strerror(-r));
                        return r;
                }
        }
        host->progress(job, k + 1, 3, NULL);
        return k + 1 < 3 ? GH_STEP_CONTINUE : GH_STEP_DONE;
}

static void release(const gh_host *host, gh_job *job, over_state *s) {
        host->workspace_free(job, s->a);
        if (s->b)
                host->workspace_free(job, s->b);
        free(s);
}

static int finish(const gh_host *host, gh_job *job, void *state) {
        release(host, job, state);
        return 0;
}

static void abort_job(const gh_host *host, gh_job *job, void *state) {
        release(host, job, state);
}

static const gh_plugin plugin = {
        GH_PLUGIN_HEADER,
        .name = "test-overalloc",
        .version = "1.0",
        .description = "allocates past its declared workspace",
        .params = params,
        .n_params = GH_PLUGIN_ELEMENTS(params),
        .estimate = estimate,
        .start = start,
        .step = step,
        .finish = finish,
        .abort = abort_job,
};

GH_PLUGIN_DEFINE(plugin)

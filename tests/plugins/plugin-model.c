/* Test plugin "model": exercises the ABI 1.2 model services. estimate()
 * reads a tensor's shape with model_tensor (from the tables the daemon
 * sends with the request, before anything is loaded) and declares its
 * element count (or its bytes) as the CPU workspace; the job takes exactly
 * that much workspace (one byte more must be refused), can hold a step
 * for a while so a test can look at the ledger, and reports as metadata
 * the tensor as model_tensor sees it in the job, the model's model_info
 * (SHA-256, bytes) and the text of another tensor (the tokenizer files the
 * store loads as U8 tensors). CPU only. Not a product pipeline. */
#include <errno.h>
#include <stddef.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include <gpuhost/plugin.h>

#define HAS_ABI_1_2(host) ((host)->struct_size >= offsetof(gh_host, model_info) + sizeof((host)->model_info))

static const char *const measures[] = {"elements", "bytes", NULL};

static const gh_plugin_param params[] = {
        {GH_PARAM_HEADER, .name = "model", .type = GH_PARAM_MODEL, .help = "the model", .required = true},
        {GH_PARAM_HEADER, .name = "tensor", .type = GH_PARAM_STRING, .help = "the tensor that sizes the workspace",
         .required = true, .string_max = 256},
        {GH_PARAM_HEADER, .name = "measure", .type = GH_PARAM_ENUM, .help = "workspace: its elements or its bytes",
         .choices = measures, .enum_default = "elements"},
        {GH_PARAM_HEADER, .name = "read", .type = GH_PARAM_STRING, .help = "a tensor whose bytes (text) to report",
         .string_max = 256},
        {GH_PARAM_HEADER, .name = "hold_ms", .type = GH_PARAM_INT, .help = "how long the step lasts", .int_min = 0,
         .int_max = 10000},
};

typedef struct model_state {
        const char *model, *read;
        uint64_t workspace;
        int64_t hold_ms;
        char ws_check[64];
} model_state;

static uint64_t elements(const gh_tensor *t) {
        uint64_t n = 1;

        for (uint32_t d = 0; d < t->n_dims; d++)
                n *= t->shape[d];
        return n;
}

/* The workspace a job with these parameters takes. */
static int workspace_of(const gh_host *host, const gh_params *p, uint64_t *ret) {
        const char *model, *tensor, *measure;
        gh_tensor t;
        int r;

        if ((r = host->param_string(p, "model", &model)) < 0 || (r = host->param_string(p, "tensor", &tensor)) < 0 ||
            (r = host->param_string(p, "measure", &measure)) < 0)
                return r;
        r = host->model_tensor(p, model, tensor, &t);
        if (r < 0) {
                host->log(NULL, GH_LOG_ERR, "model %s: no tensor %s: %s", model, tensor, strerror(-r));
                return r;
        }
        if (t.data)
                return -EPROTO; /* model_tensor gives no data */
        *ret = strcmp(measure, "bytes") == 0 ? t.bytes : elements(&t);
        return 0;
}

static int estimate(const gh_host *host, const gh_params *p, gh_plugin_needs *ret) {
        const char *model;
        uint64_t ws;
        int r;

        if (!HAS_ABI_1_2(host))
                return -EOPNOTSUPP;
        if ((r = host->param_string(p, "model", &model)) < 0 || (r = workspace_of(host, p, &ws)) < 0)
                return r;
        memset(ret, 0, sizeof(*ret));
        ret->struct_size = sizeof(*ret);
        ret->workspace[GH_DEVICE_KIND_CPU] = ws ? ws : 1;
        ret->steps = 1;
        ret->models[0] = model;
        ret->n_models = 1;
        return 0;
}

/* Takes the whole workspace; one more byte must be refused. */
static void check_workspace(const gh_host *host, gh_job *job, model_state *s) {
        void *all = NULL, *more = NULL;
        int a = host->workspace_alloc(job, s->workspace, 1, &all);
        int b = a >= 0 ? host->workspace_alloc(job, 1, 1, &more) : 0;

        snprintf(s->ws_check, sizeof(s->ws_check), "%s", a >= 0 && b == -ENOSPC ? "exact" : "wrong");
        if (all)
                host->workspace_free(job, all);
        if (b >= 0 && more)
                host->workspace_free(job, more);
}

static int start(const gh_host *host, gh_job *job, const gh_params *p, void **ret_state) {
        model_state *s = calloc(1, sizeof(*s));
        int r = s ? 0 : -ENOMEM;

        if (r >= 0)
                r = host->param_string(p, "model", &s->model);
        if (r >= 0)
                r = host->param_string(p, "read", &s->read);
        if (r >= 0)
                r = host->param_int(p, "hold_ms", &s->hold_ms);
        if (r >= 0)
                r = workspace_of(host, p, &s->workspace); /* now from the resident copy's table */
        if (r < 0) {
                free(s);
                return r;
        }
        if (!s->workspace)
                s->workspace = 1;
        check_workspace(host, job, s);
        *ret_state = s;
        return 0;
}

static int step(const gh_host *host, gh_job *job, void *state, uint32_t k) {
        model_state *s = state;
        struct timespec ms = {0, 1000000};

        for (int64_t i = 0; i < s->hold_ms && !host->cancelled(job); i++)
                nanosleep(&ms, NULL);
        return host->cancelled(job) ? -ECANCELED : GH_STEP_DONE;
}

/* The bytes of tensor |name| as text. */
static int report_text(const gh_host *host, gh_job *job, const char *model, const char *name) {
        gh_tensor t;
        int r = host->tensor(job, model, name, &t);

        if (r < 0)
                return r;
        if (strcmp(t.dtype_name, "U8") != 0 || t.n_dims != 1 || t.shape[0] != t.bytes || t.bytes > 32768)
                return -EMEDIUMTYPE;
        char *text = calloc(1, t.bytes + 1);
        if (!text)
                return -ENOMEM;
        memcpy(text, t.data, t.bytes);
        r = host->output_meta(job, "text", text);
        free(text);
        return r;
}

static int finish(const gh_host *host, gh_job *job, void *state) {
        model_state *s = state;
        gh_model_info info = {.struct_size = sizeof(info)};
        char num[32];
        int r = host->model_info(job, s->model, &info);

        if (r >= 0)
                r = host->output_meta(job, "name", info.name);
        if (r >= 0)
                r = host->output_meta(job, "sha256", info.sha256);
        snprintf(num, sizeof(num), "%llu", (unsigned long long) info.bytes);
        if (r >= 0)
                r = host->output_meta(job, "model_bytes", num);
        snprintf(num, sizeof(num), "%llu", (unsigned long long) s->workspace);
        if (r >= 0)
                r = host->output_meta(job, "workspace", num);
        if (r >= 0)
                r = host->output_meta(job, "workspace_check", s->ws_check);
        if (r >= 0 && s->read[0])
                r = report_text(host, job, s->model, s->read);
        free(s);
        return r;
}

static void abort_job(const gh_host *host, gh_job *job, void *state) {
        free(state);
}

static const gh_plugin plugin = {
        GH_PLUGIN_HEADER,
        .name = "test-model",
        .version = "1.0",
        .description = "sizes its workspace from a model's tensor table; reports model_info",
        .params = params,
        .n_params = GH_PLUGIN_ELEMENTS(params),
        .estimate = estimate,
        .start = start,
        .step = step,
        .finish = finish,
        .abort = abort_job,
};

GH_PLUGIN_DEFINE(plugin)

/* Test plugin with a bad parameter table (a default outside its range):
 * it must be refused at load, naming the parameter. */
#include <gpuhost/plugin.h>

static int estimate(const gh_host *h, const gh_params *p, gh_plugin_needs *r) { return 0; }
static int start(const gh_host *h, gh_job *j, const gh_params *p, void **s) { return 0; }
static int step(const gh_host *h, gh_job *j, void *s, uint32_t k) { return GH_STEP_DONE; }
static int finish(const gh_host *h, gh_job *j, void *s) { return 0; }
static void abort_job(const gh_host *h, gh_job *j, void *s) {}

static const gh_plugin_param params[] = {
        {GH_PARAM_HEADER, .name = "steps", .type = GH_PARAM_INT, .help = "steps", .int_min = 1, .int_max = 100,
         .int_default = 500},
};

static const gh_plugin plugin = {
        GH_PLUGIN_HEADER,
        .name = "test-bad-params", .version = "1.0", .description = "default out of range",
        .params = params, .n_params = GH_PLUGIN_ELEMENTS(params),
        .estimate = estimate, .start = start, .step = step, .finish = finish, .abort = abort_job,
};

GH_PLUGIN_DEFINE(plugin)

/* Test plugin built for a plugin ABI major version the host does not speak:
 * it must be refused at load with a message naming the versions. */
#include <gpuhost/plugin.h>

static int estimate(const gh_host *h, const gh_params *p, gh_plugin_needs *r) { return 0; }
static int start(const gh_host *h, gh_job *j, const gh_params *p, void **s) { return 0; }
static int step(const gh_host *h, gh_job *j, void *s, uint32_t k) { return GH_STEP_DONE; }
static int finish(const gh_host *h, gh_job *j, void *s) { return 0; }
static void abort_job(const gh_host *h, gh_job *j, void *s) {}

static const gh_plugin plugin = {
        .abi_version = (uint32_t) ((GH_PLUGIN_ABI_MAJOR + 98) << 16),
        .struct_size = sizeof(gh_plugin),
        .name = "test-bad-abi", .version = "1.0", .description = "wrong ABI version",
        .estimate = estimate, .start = start, .step = step, .finish = finish, .abort = abort_job,
};

GH_PLUGIN_DEFINE(plugin)

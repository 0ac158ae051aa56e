/* gpuhostctl metrics: the daemon's metrics (io.gpuhost.GetMetrics) in the
 * Prometheus text format, as the daemon renders them. */
#include <stdio.h>

#include "ctl.h"

static void print(const ctl_opts *o, gh_client *c, json_object *reply) {
        json_object *text = NULL;

        if (json_object_object_get_ex(reply, "text", &text) && json_object_is_type(text, json_type_string))
                fwrite(json_object_get_string(text), 1, (size_t) json_object_get_string_len(text), stdout);
}

static int run(const ctl_opts *o) {
        return ctl_call_and_print(o, "io.gpuhost.GetMetrics", NULL, print);
}

const ctl_command ctl_cmd_metrics = {
        .name = "metrics",
        .args_usage = "",
        .summary = "print the daemon's metrics (Prometheus text format)",
        .description = "Calls io.gpuhost.GetMetrics and prints its text: every metric family with\n"
                       "its # HELP and # TYPE lines and samples, as a Prometheus scrape of\n"
                       "/metrics would see them ([metrics] listen serves them over HTTP).\n"
                       "--json prints the reply as JSON.",
        .options = CTL_OPT_JSON,
        .run = run,
};

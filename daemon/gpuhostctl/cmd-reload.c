/* gpuhostctl reload: makes the daemon re-read its configuration. */
#include <stdio.h>

#include "ctl.h"

static void print(const ctl_opts *o, gh_client *c, json_object *reply) {
        json_object *files = json_object_object_get(reply, "files");
        size_t n = files ? json_object_array_length(files) : 0;

        printf("Configuration reloaded (%zu file%s", n, n == 1 ? "" : "s");
        for (size_t i = 0; i < n; i++)
                printf("%s%s", i ? ", " : ": ", json_object_get_string(json_object_array_get_idx(files, i)));
        printf(")\n");
}

static int run(const ctl_opts *o) {
        return ctl_call_and_print(o, "io.gpuhost.ReloadConfig", NULL, print);
}

const ctl_command ctl_cmd_reload = {
        .name = "reload",
        .args_usage = "",
        .summary = "reload the daemon's configuration",
        .description = "Calls io.gpuhost.ReloadConfig: the daemon validates the whole new\n"
                       "configuration and switches to it, or keeps the running one and reports\n"
                       "the first error (file:line and key). Needs root or the admin group.",
        .options = CTL_OPT_JSON,
        .run = run,
};

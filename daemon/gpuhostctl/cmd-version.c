/* gpuhostctl version: the client's and the daemon's versions. */
#include <stdio.h>

#include "ctl.h"
#include "gh-build.h"

static void print(const ctl_opts *o, gh_client *c, json_object *info) {
        printf("gpuhostd %s\n", json_object_get_string(json_object_object_get(info, "version")));
}

static int run(const ctl_opts *o) {
        /* First, so it shows even when the daemon cannot be reached. */
        printf("gpuhostctl %s\n", GH_VERSION);
        fflush(stdout);
        return ctl_call_and_print(o, "org.varlink.service.GetInfo", NULL, print);
}

const ctl_command ctl_cmd_version = {
        .name = "version",
        .args_usage = "",
        .summary = "show the client and daemon versions",
        .description = "Prints the version of gpuhostctl, then asks the daemon for its own\n"
                       "(org.varlink.service.GetInfo).",
        .options = 0,
        .run = run,
};

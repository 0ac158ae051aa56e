/* gpuhostctl version: the client's and the daemon's versions. */
#include <stdio.h>

#include "ctl.h"
#include "gh-build.h"

static int run(const ctl_opts *o) {
        gh_client *c = NULL;
        json_object *info = NULL;

        if (!o->json)
                printf("gpuhostctl %s\n", GH_VERSION);
        int r = ctl_connect(o, &c);
        if (r == CTL_EXIT_OK)
                r = ctl_call(o, c, "org.varlink.service.GetInfo", NULL, &info);
        if (r == CTL_EXIT_OK && o->json) {
                json_object_object_add(info, "client_version", json_object_new_string(GH_VERSION));
                ctl_print_json(info);
        } else if (r == CTL_EXIT_OK)
                printf("gpuhostd %s\n", json_object_get_string(json_object_object_get(info, "version")));
        json_object_put(info);
        gh_client_free(c);
        return r;
}

const ctl_command ctl_cmd_version = {
        .name = "version",
        .args_usage = "",
        .summary = "show the client and daemon versions",
        .description = "Prints the version of gpuhostctl, then asks the daemon for its own\n"
                       "(org.varlink.service.GetInfo).",
        .options = CTL_OPT_JSON,
        .run = run,
};

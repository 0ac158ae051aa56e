/* gpuhostctl call: a raw varlink call, for scripting and debugging. */
#include <stdio.h>
#include <string.h>

#include "ctl.h"

static int print_reply(gh_client *c, gh_reply *reply, void *userdata) {
        int *exit_code = userdata;

        if (gh_reply_error(reply)) {
                ctl_report_remote_error(gh_reply_error(reply), gh_reply_parameters(reply));
                *exit_code = CTL_EXIT_REMOTE;
                return 0;
        }
        json_object *p = json_tokener_parse(gh_reply_parameters(reply));
        ctl_print_json(p);
        json_object_put(p);
        fflush(stdout);
        return 0;
}

static int run(const ctl_opts *o) {
        const char *method = o->args[0];
        const char *params = o->n_args > 1 ? o->args[1] : NULL;
        unsigned flags = (o->more ? GH_CALL_MORE : 0) | (o->oneway ? GH_CALL_ONEWAY : 0);
        json_object *check = NULL;
        gh_client *c = NULL;
        int exit_code = CTL_EXIT_OK;

        if (!strchr(method, '.')) {
                fprintf(stderr, "gpuhostctl: '%s' is not a method name (interface.Method, e.g. io.gpuhost.Ping)\n", method);
                return CTL_EXIT_USAGE;
        }
        if (params && (!(check = json_tokener_parse(params)) || !json_object_is_type(check, json_type_object))) {
                json_object_put(check);
                fprintf(stderr, "gpuhostctl: the parameters must be a JSON object, e.g. '{\"ping\": \"hi\"}'\n");
                return CTL_EXIT_USAGE;
        }
        json_object_put(check);
        int r = ctl_connect(o, &c);
        if (r != CTL_EXIT_OK)
                return r;
        r = gh_client_call_full(c, method, params, flags, NULL, 0, o->oneway ? NULL : print_reply, &exit_code);
        if (r < 0)
                exit_code = ctl_report_transport_error(o, c, r);
        gh_client_free(c);
        return exit_code;
}

const ctl_command ctl_cmd_call = {
        .name = "call",
        .args_usage = "METHOD [PARAMETERS]",
        .summary = "make a raw varlink call",
        .description = "Calls METHOD (e.g. io.gpuhost.GetStatus) with PARAMETERS, a JSON object,\n"
                       "and prints each reply as JSON. A varlink error is printed to stderr.",
        .options = CTL_OPT_MORE | CTL_OPT_ONEWAY,
        .min_args = 1,
        .max_args = 2,
        .run = run,
};

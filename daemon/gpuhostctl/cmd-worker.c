/* gpuhostctl worker ACTION ID: acts on one worker process (a sub-command,
 * like 'gpuhostctl model'):
 *
 *   restart ID   io.gpuhost.RestartWorker: stop it and start a fresh one
 *
 * The action and the id are checked while parsing (the command's check
 * hook), so mistakes are usage errors before any call. */
#include <errno.h>
#include <inttypes.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "ctl.h"

#define ACTION_NAMES "restart"

/* A worker id: a non-negative decimal integer that fits in an int64. */
static int parse_id(const char *s, int64_t *ret) {
        char *end;

        if (*s < '0' || *s > '9') /* no sign, no blanks, not empty */
                return -EINVAL;
        errno = 0;
        long long v = strtoll(s, &end, 10);
        if (errno || *end)
                return -EINVAL;
        *ret = v;
        return 0;
}

static int check(const ctl_opts *o, const char **ret_error) {
        int64_t id;

        if (strcmp(o->args[0], "restart") != 0) {
                *ret_error = ctl_usage_error("unknown action '%s' for 'worker' (valid actions: " ACTION_NAMES ")",
                                             o->args[0]);
                return -EINVAL;
        }
        if (o->n_args < 2) {
                *ret_error = "missing worker id (usage: gpuhostctl worker restart ID; see 'gpuhostctl workers')";
                return -EINVAL;
        }
        if (parse_id(o->args[1], &id) < 0) {
                *ret_error = ctl_usage_error("invalid worker id '%s' (see 'gpuhostctl workers')", o->args[1]);
                return -EINVAL;
        }
        return 0;
}

static void print_restarted(const ctl_opts *o, gh_client *c, json_object *reply) {
        printf("restarted worker %" PRId64 "\n", ctl_json_int(reply, "id"));
}

static int run(const ctl_opts *o) {
        const char *error = NULL;
        int64_t id;

        /* The parser has checked; this is for callers that did not. */
        if (check(o, &error) < 0) {
                fprintf(stderr, "gpuhostctl: %s\n", error);
                return CTL_EXIT_USAGE;
        }
        (void) parse_id(o->args[1], &id);
        json_object *params = json_object_new_object();
        json_object_object_add(params, "id", json_object_new_int64(id));
        int r = ctl_call_and_print(o, "io.gpuhost.RestartWorker",
                                   json_object_to_json_string_ext(params, JSON_C_TO_STRING_PLAIN), print_restarted);
        json_object_put(params);
        return r;
}

const ctl_command ctl_cmd_worker = {
        .name = "worker",
        .args_usage = "ACTION ID",
        .summary = "restart a worker process",
        .description = "Actions:\n"
                       "  restart ID   stop the worker (ids as 'gpuhostctl workers' shows them) and\n"
                       "               start a fresh one; a job it runs fails with WorkerCrashed,\n"
                       "               or runs again if its plugin is retry-safe\n"
                       "\n"
                       "Privileged: root, gpuhostd's own user or the admin group. --json prints\n"
                       "the daemon's reply as JSON.",
        .options = CTL_OPT_JSON,
        .min_args = 1,
        .max_args = 2,
        .check = check,
        .run = run,
};

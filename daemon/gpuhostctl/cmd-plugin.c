/* gpuhostctl plugin ACTION NAME: acts on a plugin, by the name of its
 * pipeline (a sub-command, like 'gpuhostctl model'):
 *
 *   enable NAME   io.gpuhost.EnablePlugin: take a quarantined plugin back
 *
 * The action is checked while parsing (the command's check hook). */
#include <errno.h>
#include <stdio.h>
#include <string.h>

#include "ctl.h"

#define ACTION_NAMES "enable"

static int check(const ctl_opts *o, const char **ret_error) {
        if (strcmp(o->args[0], "enable") != 0) {
                *ret_error = ctl_usage_error("unknown action '%s' for 'plugin' (valid actions: " ACTION_NAMES ")",
                                             o->args[0]);
                return -EINVAL;
        }
        if (o->n_args < 2) {
                *ret_error = "missing pipeline name (usage: gpuhostctl plugin enable NAME)";
                return -EINVAL;
        }
        return 0;
}

static void print_enabled(const ctl_opts *o, gh_client *c, json_object *reply) {
        json_object *q = NULL;

        if (json_object_object_get_ex(reply, "quarantined", &q) && json_object_get_boolean(q))
                printf("%s is still quarantined\n", ctl_json_str(reply, "pipeline"));
        else
                printf("enabled %s: it takes jobs again\n", ctl_json_str(reply, "pipeline"));
}

static int run(const ctl_opts *o) {
        const char *error = NULL;

        /* The parser has checked; this is for callers that did not. */
        if (check(o, &error) < 0) {
                fprintf(stderr, "gpuhostctl: %s\n", error);
                return CTL_EXIT_USAGE;
        }
        json_object *params = json_object_new_object();
        json_object_object_add(params, "pipeline", json_object_new_string(o->args[1]));
        int r = ctl_call_and_print(
                o, "io.gpuhost.EnablePlugin",
                json_object_to_json_string_ext(params, JSON_C_TO_STRING_PLAIN | JSON_C_TO_STRING_NOSLASHESCAPE),
                print_enabled);
        json_object_put(params);
        return r;
}

const ctl_command ctl_cmd_plugin = {
        .name = "plugin",
        .args_usage = "ACTION NAME",
        .summary = "take a quarantined plugin back into service",
        .description = "Actions:\n"
                       "  enable NAME   take the quarantined plugin of pipeline NAME back into\n"
                       "                service (a plugin is quarantined when its workers crash\n"
                       "                too often while running it; see 'gpuhostctl pipelines')\n"
                       "\n"
                       "Privileged: root, gpuhostd's own user or the admin group. --json prints\n"
                       "the daemon's reply as JSON.",
        .options = CTL_OPT_JSON,
        .min_args = 1,
        .max_args = 2,
        .check = check,
        .run = run,
};

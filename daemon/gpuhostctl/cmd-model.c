/* gpuhostctl model ACTION NAME: loads, unloads, pins and unpins a model.
 * One command with the action as its first argument (a sub-command):
 *
 *   load NAME [--device D]    io.gpuhost.LoadModel with "more": progress on
 *                             stderr when it is a terminal, then one line
 *   unload NAME [--device D]  io.gpuhost.UnloadModel
 *   pin NAME, unpin NAME      io.gpuhost.PinModel
 *
 * The action and whether it takes --device are checked while parsing (the
 * command's check hook), so mistakes are usage errors before any call. */
#include <errno.h>
#include <inttypes.h>
#include <stdio.h>
#include <string.h>
#include <unistd.h>

#include "ctl.h"

typedef struct model_action {
        const char *name;
        bool takes_device;
        int (*run)(const ctl_opts *o, const char *model);
} model_action;

static int run_load(const ctl_opts *o, const char *model);
static int run_unload(const ctl_opts *o, const char *model);
static int run_pin(const ctl_opts *o, const char *model);
static int run_unpin(const ctl_opts *o, const char *model);

static const model_action actions[] = {
        {"load", true, run_load},
        {"unload", true, run_unload},
        {"pin", false, run_pin},
        {"unpin", false, run_unpin},
};

#define ACTION_NAMES "load, unload, pin, unpin"

static const model_action *action_find(const char *name) {
        for (size_t i = 0; i < sizeof(actions) / sizeof(actions[0]); i++)
                if (strcmp(actions[i].name, name) == 0)
                        return &actions[i];
        return NULL;
}

static int check(const ctl_opts *o, const char **ret_error) {
        const model_action *a = action_find(o->args[0]);

        if (!a) {
                *ret_error = ctl_usage_error("unknown action '%s' for 'model' (valid actions: " ACTION_NAMES ")",
                                             o->args[0]);
                return -EINVAL;
        }
        if (o->n_args < 2) {
                *ret_error = ctl_usage_error("missing model name (usage: gpuhostctl model %s NAME%s)", a->name,
                                             a->takes_device ? " [--device D]" : "");
                return -EINVAL;
        }
        if (o->device >= 0 && !a->takes_device) {
                *ret_error = ctl_usage_error("option '--device' does not apply to 'model %s'", a->name);
                return -EINVAL;
        }
        return 0;
}

/* {"model": NAME, "device": D} (device only when given), as JSON text in
 * the returned object's keeping. */
static json_object *params_new(const char *model, int device) {
        json_object *p = json_object_new_object();

        json_object_object_add(p, "model", json_object_new_string(model));
        if (device >= 0)
                json_object_object_add(p, "device", json_object_new_int(device));
        return p;
}

static const char *params_text(json_object *p) {
        return json_object_to_json_string_ext(p, JSON_C_TO_STRING_PLAIN | JSON_C_TO_STRING_NOSLASHESCAPE);
}

/* ---- load ---- */

typedef struct load_state {
        ctl_status_line status; /* shown only on a terminal */
        int exit_code;
        json_object *final;
} load_state;

/* "loading NAME onto device D: 812.0 MiB / 2.0 GiB, 1234 MB/s". */
static void progress_show(load_state *s, json_object *p) {
        char done[32], total[32], line[512];

        ctl_format_bytes(ctl_json_int(p, "bytes_loaded"), done, sizeof(done));
        ctl_format_bytes(ctl_json_int(p, "bytes_total"), total, sizeof(total));
        snprintf(line, sizeof(line), "loading %s onto device %" PRId64 ": %s / %s, %.0f MB/s",
                 ctl_json_str(p, "model"), ctl_json_int(p, "device"), done, total,
                 json_object_get_double(json_object_object_get(p, "mb_per_sec")));
        ctl_status_show(&s->status, line);
}

static int on_load_reply(gh_client *c, gh_reply *reply, void *userdata) {
        load_state *s = userdata;

        if (gh_reply_error(reply)) {
                ctl_status_clear(&s->status);
                ctl_report_remote_error(gh_reply_error(reply), gh_reply_parameters(reply));
                s->exit_code = CTL_EXIT_REMOTE;
                return 0;
        }
        json_object *p = json_tokener_parse(gh_reply_parameters(reply));
        if (!p)
                return -EBADMSG;
        if (gh_reply_continues(reply)) {
                if (s->status.tty)
                        progress_show(s, p);
                json_object_put(p);
                return 0;
        }
        json_object_put(s->final);
        s->final = p;
        return 0;
}

static int run_load(const ctl_opts *o, const char *model) {
        load_state s = {.status.tty = isatty(STDERR_FILENO) == 1, .exit_code = CTL_EXIT_OK};
        json_object *params = params_new(model, o->device);
        gh_client *c = NULL;
        int r = ctl_connect(o, &c);

        if (r == CTL_EXIT_OK) {
                int k = gh_client_call_more(c, "io.gpuhost.LoadModel", params_text(params), on_load_reply, &s);
                ctl_status_clear(&s.status);
                if (k < 0)
                        r = ctl_report_transport_error(o, c, k);
                else if (s.exit_code != CTL_EXIT_OK)
                        r = s.exit_code;
                else if (!s.final) {
                        fprintf(stderr, "gpuhostctl: gpuhostd ended the call without a final reply\n");
                        r = CTL_EXIT_CONNECT;
                } else if (o->json)
                        ctl_print_json(s.final);
                else {
                        char total[32];
                        ctl_format_bytes(ctl_json_int(s.final, "bytes_total"), total, sizeof(total));
                        printf("loaded %s onto device %" PRId64 ": %s in %.2f s (%.0f MB/s)\n",
                               ctl_json_str(s.final, "model"), ctl_json_int(s.final, "device"), total,
                               json_object_get_double(json_object_object_get(s.final, "seconds")),
                               json_object_get_double(json_object_object_get(s.final, "mb_per_sec")));
                }
        }
        json_object_put(s.final);
        json_object_put(params);
        gh_client_free(c);
        return r;
}

/* ---- unload, pin, unpin ---- */

static void print_unloaded(const ctl_opts *o, gh_client *c, json_object *reply) {
        printf("unloaded %s from device %" PRId64 "\n", ctl_json_str(reply, "model"), ctl_json_int(reply, "device"));
}

static void print_pinned(const ctl_opts *o, gh_client *c, json_object *reply) {
        json_object *v = json_object_object_get(reply, "pinned");

        if (json_object_get_boolean(v))
                printf("pinned %s: it is never evicted\n", ctl_json_str(reply, "model"));
        else
                printf("unpinned %s: it may be evicted when unused\n", ctl_json_str(reply, "model"));
}

static int run_unload(const ctl_opts *o, const char *model) {
        json_object *params = params_new(model, o->device);
        int r = ctl_call_and_print(o, "io.gpuhost.UnloadModel", params_text(params), print_unloaded);

        json_object_put(params);
        return r;
}

static int pin(const ctl_opts *o, const char *model, bool pinned) {
        json_object *params = params_new(model, -1);

        json_object_object_add(params, "pinned", json_object_new_boolean(pinned));
        int r = ctl_call_and_print(o, "io.gpuhost.PinModel", params_text(params), print_pinned);
        json_object_put(params);
        return r;
}

static int run_pin(const ctl_opts *o, const char *model) {
        return pin(o, model, true);
}

static int run_unpin(const ctl_opts *o, const char *model) {
        return pin(o, model, false);
}

static int run(const ctl_opts *o) {
        const model_action *a = action_find(o->args[0]);
        const char *error = NULL;

        /* The parser has checked; this is for callers that did not. */
        if (check(o, &error) < 0) {
                fprintf(stderr, "gpuhostctl: %s\n", error);
                return CTL_EXIT_USAGE;
        }
        return a->run(o, o->args[1]);
}

const ctl_command ctl_cmd_model = {
        .name = "model",
        .args_usage = "ACTION NAME",
        .summary = "load, unload, pin or unpin a model",
        .description = "Actions:\n"
                       "  load NAME [--device D]    load the model onto device D (default: the first\n"
                       "                            device with a pool, GPUs before the CPU), evicting\n"
                       "                            unused, unpinned models if needed; shows progress\n"
                       "                            when stderr is a terminal\n"
                       "  unload NAME [--device D]  unload it from device D (default as for load);\n"
                       "                            refused (ModelInUse) while it is in use or\n"
                       "                            still loading\n"
                       "  pin NAME                  never evict it\n"
                       "  unpin NAME                let it be evicted again when unused\n"
                       "\n"
                       "Device indexes are those of 'gpuhostctl devices'; model names those of\n"
                       "'gpuhostctl models'. Every action is privileged: root, gpuhostd's own user\n"
                       "or the admin group. --json prints the daemon's (final) reply as JSON.",
        .options = CTL_OPT_JSON | CTL_OPT_DEVICE,
        .min_args = 1,
        .max_args = 2,
        .check = check,
        .run = run,
};

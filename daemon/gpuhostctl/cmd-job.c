/* gpuhostctl job ACTION ID: one job (a sub-command, like 'gpuhostctl
 * worker'):
 *
 *   show ID   io.gpuhost.GetJob: the job as "key: value" lines
 *
 * Waiting for a job and cancelling it are 'gpuhostctl generate --wait ID'
 * and '--cancel ID'. */
#include <errno.h>
#include <inttypes.h>
#include <stdio.h>
#include <string.h>
#include <time.h>

#include "ctl.h"

#define ACTION_NAMES "show"

static int check(const ctl_opts *o, const char **ret_error) {
        if (strcmp(o->args[0], "show") != 0) {
                *ret_error = ctl_usage_error("unknown action '%s' for 'job' (valid actions: " ACTION_NAMES ")",
                                             o->args[0]);
                return -EINVAL;
        }
        if (o->n_args < 2) {
                *ret_error = "missing job id (usage: gpuhostctl job show ID; see 'gpuhostctl jobs')";
                return -EINVAL;
        }
        if (!*o->args[1]) {
                *ret_error = "invalid job id '' (see 'gpuhostctl jobs')";
                return -EINVAL;
        }
        return 0;
}

/* Writes |s| with control characters (newlines too, but not tabs) as '?'. */
static void put_printable(FILE *f, const char *s) {
        for (; *s; s++)
                fputc((unsigned char) *s < 0x20 && *s != '\t' ? '?' : *s == 0x7f ? '?' : *s, f);
}

static void put_line(FILE *f, const char *key, const char *value) {
        fprintf(f, "%s: ", key);
        put_printable(f, value);
        fputc('\n', f);
}

/* A member as text: a string as it is, another value as JSON, "-" when
 * null or absent. */
static const char *text_or_dash(json_object *o, const char *key) {
        json_object *v = NULL;

        if (!json_object_object_get_ex(o, key, &v) || !v)
                return "-";
        return json_object_get_string(v);
}

/* "2024-05-01 12:00:03 (5s ago)" in local time, or "-". */
static void put_time(FILE *f, json_object *job, const char *key, const char *label, int64_t now_usec) {
        json_object *v = NULL;
        char when[64], ago[32];
        struct tm tm;

        if (!json_object_object_get_ex(job, key, &v) || !v) {
                put_line(f, label, "-");
                return;
        }
        int64_t usec = json_object_get_int64(v);
        time_t t = (time_t) (usec / 1000000);
        if (!localtime_r(&t, &tm) || strftime(when, sizeof(when), "%Y-%m-%d %H:%M:%S", &tm) == 0)
                snprintf(when, sizeof(when), "%" PRId64, usec);
        ctl_format_duration(now_usec - usec, ago, sizeof(ago));
        fprintf(f, "%s: %s (%s ago)\n", label, when, ago);
}

void ctl_job_print(FILE *f, json_object *job, int64_t now_usec) {
        json_object *step = NULL, *steps = NULL, *error = NULL, *ep = NULL;

        put_line(f, "job", text_or_dash(job, "job"));
        put_line(f, "pipeline", text_or_dash(job, "pipeline"));
        put_line(f, "state", text_or_dash(job, "state"));
        put_line(f, "priority", text_or_dash(job, "priority"));
        put_line(f, "tag", text_or_dash(job, "tag"));
        put_line(f, "uid", text_or_dash(job, "uid"));
        put_line(f, "device", text_or_dash(job, "device"));
        if (json_object_object_get_ex(job, "step", &step) && step && json_object_object_get_ex(job, "steps", &steps) &&
            steps)
                fprintf(f, "step: %" PRId64 "/%" PRId64 "\n", json_object_get_int64(step), json_object_get_int64(steps));
        else
                put_line(f, "step", text_or_dash(job, "step"));
        put_time(f, job, "submitted_usec", "submitted", now_usec);
        put_time(f, job, "started_usec", "started", now_usec);
        put_time(f, job, "finished_usec", "finished", now_usec);
        if (json_object_object_get_ex(job, "error", &error) && error) {
                fprintf(f, "error: ");
                put_printable(f, json_object_get_string(error));
                if (json_object_object_get_ex(job, "error_parameters", &ep) && ep &&
                    json_object_is_type(ep, json_type_object) && json_object_object_length(ep) > 0) {
                        fputc(' ', f);
                        put_printable(f, json_object_to_json_string_ext(ep, JSON_C_TO_STRING_PLAIN |
                                                                                JSON_C_TO_STRING_NOSLASHESCAPE));
                }
                fputc('\n', f);
        }
}

static void print(const ctl_opts *o, gh_client *c, json_object *reply) {
        json_object *job = NULL;

        json_object_object_get_ex(reply, "job", &job);
        ctl_job_print(stdout, job, ctl_now_usec());
}

static int run(const ctl_opts *o) {
        const char *error = NULL;

        /* The parser has checked; this is for callers that did not. */
        if (check(o, &error) < 0) {
                fprintf(stderr, "gpuhostctl: %s\n", error);
                return CTL_EXIT_USAGE;
        }
        json_object *params = json_object_new_object();
        json_object_object_add(params, "job", json_object_new_string(o->args[1]));
        int r = ctl_call_and_print(o, "io.gpuhost.GetJob",
                                   json_object_to_json_string_ext(params, JSON_C_TO_STRING_PLAIN), print);
        json_object_put(params);
        return r;
}

const ctl_command ctl_cmd_job = {
        .name = "job",
        .args_usage = "ACTION ID",
        .summary = "show one job",
        .description = "Actions:\n"
                       "  show ID   the job (ids as 'gpuhostctl jobs' shows them): pipeline, state,\n"
                       "            priority, tag, owner, device, step, when it was submitted,\n"
                       "            started and finished, and the error of a failed job\n"
                       "\n"
                       "Wait for a job and fetch its outputs with 'gpuhostctl generate --wait ID\n"
                       "-o FILE'; cancel it with 'gpuhostctl generate --cancel ID'. --json prints\n"
                       "the daemon's reply as JSON.",
        .options = CTL_OPT_JSON,
        .min_args = 1,
        .max_args = 2,
        .check = check,
        .run = run,
};

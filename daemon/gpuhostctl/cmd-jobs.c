/* gpuhostctl jobs: the caller's jobs (every job for a privileged caller)
 * as io.gpuhost.ListJobs reports them: queued, running, and finished ones
 * the daemon still keeps; a table for people or JSON for scripts. */
#include <inttypes.h>
#include <stdio.h>
#include <string.h>

#include "ctl.h"

/* A member as text: a string as it is, another value as JSON, "-" when
 * null or absent. */
static const char *text_or_dash(json_object *o, const char *key) {
        json_object *v = NULL;

        if (!json_object_object_get_ex(o, key, &v) || !v)
                return "-";
        return json_object_get_string(v);
}

/* |s| with control characters as '?' (a tag is anybody's text), cut to
 * fit |buf|. */
static const char *printable(const char *s, char *buf, size_t size) {
        size_t i = 0;

        for (; s[i] && i + 1 < size; i++)
                buf[i] = (unsigned char) s[i] < 0x20 || s[i] == 0x7f ? '?' : s[i];
        buf[i] = 0;
        return buf;
}

/* "7/20", "7" (steps not known), or "-". */
static void format_step(json_object *job, char *buf, size_t size) {
        json_object *step = NULL, *steps = NULL;

        if (!json_object_object_get_ex(job, "step", &step) || !step)
                snprintf(buf, size, "-");
        else if (json_object_object_get_ex(job, "steps", &steps) && steps)
                snprintf(buf, size, "%" PRId64 "/%" PRId64, json_object_get_int64(step),
                         json_object_get_int64(steps));
        else
                snprintf(buf, size, "%" PRId64, json_object_get_int64(step));
}

static void format_age(json_object *job, int64_t now_usec, char *buf, size_t size) {
        json_object *v = NULL;

        if (json_object_object_get_ex(job, "submitted_usec", &v) && v)
                ctl_format_duration(now_usec - json_object_get_int64(v), buf, size);
        else
                snprintf(buf, size, "-");
}

static int column_width(json_object *jobs, size_t n, const char *key, int min, int max) {
        int w = min;

        for (size_t i = 0; i < n; i++) {
                size_t len = strlen(text_or_dash(json_object_array_get_idx(jobs, i), key));
                if (len > (size_t) w)
                        w = len > (size_t) max ? max : (int) len;
        }
        return w;
}

void ctl_jobs_print(FILE *f, json_object *reply, int64_t now_usec) {
        json_object *jobs = json_object_object_get(reply, "jobs");
        size_t n = jobs && json_object_is_type(jobs, json_type_array) ? json_object_array_length(jobs) : 0;
        int job_w = column_width(jobs, n, "job", 3, 36), pipeline_w = column_width(jobs, n, "pipeline", 8, 32);
        int tag_w = column_width(jobs, n, "tag", 3, 32), step_w = 4;
        char step[48];

        if (n == 0) {
                fprintf(f, "(no jobs)\n");
                return;
        }
        for (size_t i = 0; i < n; i++) {
                format_step(json_object_array_get_idx(jobs, i), step, sizeof(step));
                if (strlen(step) > (size_t) step_w)
                        step_w = (int) strlen(step);
        }
        fprintf(f, "%-*s %-*s %-9s %-11s %-6s %-*s %-*s %s\n", job_w, "JOB", pipeline_w, "PIPELINE", "STATE",
                "PRIORITY", "DEVICE", step_w, "STEP", tag_w, "TAG", "AGE");
        for (size_t i = 0; i < n; i++) {
                json_object *j = json_object_array_get_idx(jobs, i);
                char age[32], tag[256];

                format_step(j, step, sizeof(step));
                format_age(j, now_usec, age, sizeof(age));
                fprintf(f, "%-*s %-*s %-9s %-11s %-6s %-*s %-*s %s\n", job_w, text_or_dash(j, "job"), pipeline_w,
                        text_or_dash(j, "pipeline"), text_or_dash(j, "state"), text_or_dash(j, "priority"),
                        text_or_dash(j, "device"), step_w, step, tag_w, printable(text_or_dash(j, "tag"), tag, sizeof(tag)), age);
        }
}

static void print(const ctl_opts *o, gh_client *c, json_object *reply) {
        ctl_jobs_print(stdout, reply, ctl_now_usec());
}

static int run(const ctl_opts *o) {
        return ctl_call_and_print(o, "io.gpuhost.ListJobs", NULL, print);
}

const ctl_command ctl_cmd_jobs = {
        .name = "jobs",
        .args_usage = "",
        .summary = "list the jobs: queued, running and recently finished",
        .description = "Calls io.gpuhost.ListJobs and prints one line per job: its id, its\n"
                       "pipeline, its state (queued, running, done, failed, cancelled), its\n"
                       "priority, its device, its step (\"7/20\"), its tag (generate --tag)\n"
                       "and how long ago it was submitted; \"-\" where there is none.\n"
                       "You see your own jobs; a privileged caller sees every job. Details of one\n"
                       "job: 'gpuhostctl job show ID'. --json prints the reply as JSON.",
        .options = CTL_OPT_JSON,
        .run = run,
};

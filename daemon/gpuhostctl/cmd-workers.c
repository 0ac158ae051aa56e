/* gpuhostctl workers: the worker processes, one per device, that host the
 * plugins (io.gpuhost.ListWorkers), as a table for people or JSON for
 * scripts. */
#include <inttypes.h>
#include <stdio.h>
#include <string.h>

#include "ctl.h"

/* An integer member as decimal, or "-" when it is null or absent. */
static void format_int(json_object *o, const char *key, char *buf, size_t size) {
        json_object *v = NULL;

        if (json_object_object_get_ex(o, key, &v) && v)
                snprintf(buf, size, "%" PRId64, json_object_get_int64(v));
        else
                snprintf(buf, size, "-");
}

/* A string member, or "-" when it is null or absent. */
static const char *str_or_dash(json_object *o, const char *key) {
        json_object *v = NULL;

        return json_object_object_get_ex(o, key, &v) && v ? json_object_get_string(v) : "-";
}

static int column_width(json_object *workers, size_t n, const char *key, int min, int max) {
        int w = min;

        for (size_t i = 0; i < n; i++) {
                size_t len = strlen(str_or_dash(json_object_array_get_idx(workers, i), key));
                if (len > (size_t) w)
                        w = len > (size_t) max ? max : (int) len;
        }
        return w;
}

static void print(const ctl_opts *o, gh_client *c, json_object *reply) {
        json_object *workers = json_object_object_get(reply, "workers");
        size_t n = workers && json_object_is_type(workers, json_type_array) ? json_object_array_length(workers) : 0;
        int job_w = column_width(workers, n, "job", 3, 36), pipeline_w = column_width(workers, n, "pipeline", 8, 32);

        if (n == 0) {
                printf("(no workers)\n");
                return;
        }
        printf("%-4s %-6s %-8s %-8s %-*s %-*s %6s %7s %10s\n", "ID", "DEVICE", "PID", "STATE", job_w, "JOB",
               pipeline_w, "PIPELINE", "JOBS", "CRASHES", "RSS");
        for (size_t i = 0; i < n; i++) {
                json_object *w = json_object_array_get_idx(workers, i), *rss = NULL;
                char pid[24], rss_s[32];

                format_int(w, "pid", pid, sizeof(pid));
                if (json_object_object_get_ex(w, "rss_bytes", &rss) && rss)
                        ctl_format_bytes(json_object_get_int64(rss), rss_s, sizeof(rss_s));
                else
                        snprintf(rss_s, sizeof(rss_s), "-");
                printf("%-4" PRId64 " %-6" PRId64 " %-8s %-8s %-*s %-*s %6" PRId64 " %7" PRId64 " %10s\n",
                       ctl_json_int(w, "id"), ctl_json_int(w, "device"), pid, str_or_dash(w, "state"), job_w,
                       str_or_dash(w, "job"), pipeline_w, str_or_dash(w, "pipeline"), ctl_json_int(w, "jobs_done"),
                       ctl_json_int(w, "crashes"), rss_s);
        }
}

static int run(const ctl_opts *o) {
        return ctl_call_and_print(o, "io.gpuhost.ListWorkers", NULL, print);
}

const ctl_command ctl_cmd_workers = {
        .name = "workers",
        .args_usage = "",
        .summary = "list the worker processes that run the plugins",
        .description = "Calls io.gpuhost.ListWorkers and prints one line per worker: its id (for\n"
                       "'gpuhostctl worker restart'), its device, its process id, its state\n"
                       "(starting, idle, busy, stopping, or waiting to be respawned), the job it\n"
                       "runs and that job's pipeline, the jobs it has done, how often it crashed,\n"
                       "and its resident memory as it last reported it (\"-\": not known, or no\n"
                       "process). --json prints the reply as JSON.",
        .options = CTL_OPT_JSON,
        .run = run,
};

/* gpuhostctl status: the daemon's state, configuration and device table
 * (devtable.c), for people, or JSON for scripts. */
#include <inttypes.h>
#include <stdio.h>

#include "ctl.h"

static void format_duration(int64_t usec, char *buf, size_t size) {
        int64_t s = usec / 1000000;

        if (s >= 86400)
                snprintf(buf, size, "%" PRId64 "d %" PRId64 "h", s / 86400, s % 86400 / 3600);
        else if (s >= 3600)
                snprintf(buf, size, "%" PRId64 "h %" PRId64 "min", s / 3600, s % 3600 / 60);
        else if (s >= 60)
                snprintf(buf, size, "%" PRId64 "min %" PRId64 "s", s / 60, s % 60);
        else
                snprintf(buf, size, "%" PRId64 "s", s);
}

static void print_status(json_object *s) {
        json_object *config = json_object_object_get(s, "config");
        json_object *files = json_object_object_get(config, "files");
        char uptime[64];

        format_duration(ctl_json_int(s, "uptime_usec"), uptime, sizeof(uptime));
        printf("gpuhostd %s: %s, up %s, pid %" PRId64 "\n", ctl_json_str(s, "version"), ctl_json_str(s, "state"),
               uptime, ctl_json_int(s, "pid"));
        printf("%-13s %s\n", "Socket:", ctl_json_str(config, "socket"));
        printf("%-13s %" PRId64 " (max %" PRId64 ")\n", "Connections:", ctl_json_int(s, "connections"),
               ctl_json_int(config, "max_connections"));
        printf("%-13s ", "Config:");
        size_t n = files ? json_object_array_length(files) : 0;
        for (size_t i = 0; i < n; i++)
                printf("%s%s", i ? ", " : "", json_object_get_string(json_object_array_get_idx(files, i)));
        printf("%s\n", n ? "" : "(built-in defaults)");
        printf("%-13s %s\n", "Log level:", ctl_json_str(config, "log_level"));
        json_object *w = json_object_object_get(s, "workers"), *q = json_object_object_get(w, "quarantined");
        printf("%-13s %" PRId64 " of %" PRId64 " running, %" PRId64 " busy; %" PRId64 " pipeline(s)\n", "Workers:",
               ctl_json_int(w, "running"), ctl_json_int(w, "workers"), ctl_json_int(w, "busy"), ctl_json_int(w, "pipelines"));
        for (size_t i = 0; q && i < json_object_array_length(q); i++)
                printf("%-13s %s (gpuhostctl plugin enable %s)\n", i ? "" : "Quarantined:",
                       json_object_get_string(json_object_array_get_idx(q, i)), json_object_get_string(json_object_array_get_idx(q, i)));
        printf("\n");
        ctl_devices_table_print(stdout, json_object_object_get(s, "devices"));
}

static void print(const ctl_opts *o, gh_client *c, json_object *status) {
        print_status(status);
}

static int run(const ctl_opts *o) {
        return ctl_call_and_print(o, "io.gpuhost.GetStatus", NULL, print);
}

const ctl_command ctl_cmd_status = {
        .name = "status",
        .args_usage = "",
        .summary = "show the daemon's state, devices and configuration",
        .description = "Calls io.gpuhost.GetStatus and prints the daemon's state, then one line\n"
                       "per device: its index, name, a VRAM bar and \"used/budget\" MiB (model\n"
                       "weights plus the workspaces of running jobs, of the memory gpuhost may\n"
                       "use), its running/queued jobs and its resident models. --json prints the\n"
                       "reply as JSON (stable field names, for scripts).",
        .options = CTL_OPT_JSON,
        .run = run,
};

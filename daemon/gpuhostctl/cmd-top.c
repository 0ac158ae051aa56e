/* gpuhostctl top: a live view of the daemon, refreshed once a second: its
 * state, the device table (devtable.c) and the job list (cmd-jobs.c), from
 * io.gpuhost.GetStatus and io.gpuhost.ListJobs on one connection.
 *
 * On a terminal each frame replaces the last (ANSI "home" and "clear
 * screen") until SIGINT or SIGTERM; to a pipe or file the frames follow one
 * another, separated by an empty line, and without --iterations there is
 * only one. A frame taller than the terminal is cut to fit it. Interrupting
 * it is a clean exit (status 0). */
#include <errno.h>
#include <inttypes.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/ioctl.h>
#include <time.h>
#include <unistd.h>

#include "ctl.h"

#define REFRESH_NSEC 1000000000L
#define CLEAR_SCREEN "\033[H\033[2J"

static volatile sig_atomic_t stop_requested;

static void on_stop_signal(int sig) {
        stop_requested = 1;
}

void ctl_top_frame_print(FILE *f, json_object *status, json_object *jobs, int64_t now_usec) {
        if (status) {
                char up[32];
                int64_t n = ctl_json_int(status, "connections");
                ctl_format_duration(ctl_json_int(status, "uptime_usec"), up, sizeof(up));
                fprintf(f, "gpuhostd %s: %s, up %s, pid %" PRId64 ", %" PRId64 " connection%s\n\n",
                        ctl_json_str(status, "version"), ctl_json_str(status, "state"), up,
                        ctl_json_int(status, "pid"), n, n == 1 ? "" : "s");
                ctl_devices_table_print(f, json_object_object_get(status, "devices"));
        }
        if (jobs) {
                if (status)
                        fprintf(f, "\n");
                ctl_jobs_print(f, jobs, now_usec);
        }
}

/* Sleeps a refresh period, or less when a stop signal comes. */
static void wait_refresh(void) {
        struct timespec ts = {.tv_sec = REFRESH_NSEC / 1000000000L, .tv_nsec = REFRESH_NSEC % 1000000000L};

        while (!stop_requested && nanosleep(&ts, &ts) < 0 && errno == EINTR)
                ;
}

/* Prints |text| on a cleared terminal, at most its height: the lines that
 * do not fit are counted on the last one. */
static void print_on_terminal(const char *text) {
        struct winsize ws = {0};
        size_t lines = 0, total = 0;
        const char *p = text;

        for (const char *q = text; *q; q++)
                total += *q == '\n';
        if (ioctl(STDOUT_FILENO, TIOCGWINSZ, &ws) < 0 || ws.ws_row < 2 || total < ws.ws_row) {
                printf(CLEAR_SCREEN "%s", text);
                return;
        }
        fputs(CLEAR_SCREEN, stdout);
        for (; lines + 1 < ws.ws_row; lines++) {
                const char *eol = strchr(p, '\n');
                fwrite(p, 1, (size_t) (eol - p + 1), stdout);
                p = eol + 1;
        }
        printf("... %zu more line%s", total - lines, total - lines == 1 ? "" : "s");
}

static int show_frame(const ctl_opts *o, gh_client *c, bool tty, bool first) {
        json_object *status = NULL, *jobs = NULL;
        char *text = NULL;
        size_t size = 0;
        int r = ctl_call(o, c, "io.gpuhost.GetStatus", NULL, &status);

        if (r == CTL_EXIT_OK)
                r = ctl_call(o, c, "io.gpuhost.ListJobs", NULL, &jobs);
        FILE *f = r == CTL_EXIT_OK ? open_memstream(&text, &size) : NULL;
        if (f) {
                ctl_top_frame_print(f, status, jobs, ctl_now_usec());
                if (fclose(f) != 0) {
                        free(text);
                        text = NULL;
                }
        }
        if (text) {
                if (tty)
                        print_on_terminal(text);
                else
                        printf("%s%s", first ? "" : "\n", text);
                fflush(stdout);
        }
        free(text);
        json_object_put(status);
        json_object_put(jobs);
        return r;
}

static int run(const ctl_opts *o) {
        struct sigaction sa = {.sa_handler = on_stop_signal}, old_int, old_term;
        bool tty = isatty(STDOUT_FILENO);
        int frames = o->iterations ? o->iterations : tty ? 0 : 1; /* 0: until interrupted */
        gh_client *c = NULL;
        int r = ctl_connect(o, &c);

        if (r != CTL_EXIT_OK)
                return r;
        stop_requested = 0;
        sigemptyset(&sa.sa_mask); /* no SA_RESTART: the sleep ends at once */
        sigaction(SIGINT, &sa, &old_int);
        sigaction(SIGTERM, &sa, &old_term);
        for (int i = 0; r == CTL_EXIT_OK && !stop_requested && (frames == 0 || i < frames); i++) {
                if (i > 0)
                        wait_refresh();
                if (!stop_requested)
                        r = show_frame(o, c, tty, i == 0);
        }
        sigaction(SIGINT, &old_int, NULL);
        sigaction(SIGTERM, &old_term, NULL);
        gh_client_free(c);
        return r;
}

const ctl_command ctl_cmd_top = {
        .name = "top",
        .args_usage = "",
        .summary = "live view of the devices and jobs, refreshed every second",
        .description = "Shows the daemon's state, the device table of 'gpuhostctl status' (VRAM\n"
                       "bar, used/budget MiB, running/queued jobs, resident models) and the job\n"
                       "list of 'gpuhostctl jobs' (id, pipeline, state, priority, device, step,\n"
                       "tag, age), refreshed once a second until interrupted (Ctrl-C). On a\n"
                       "terminal each frame replaces the last; otherwise one frame is printed,\n"
                       "or N frames a second apart with --iterations N.",
        .options = CTL_OPT_ITERATIONS,
        .run = run,
};

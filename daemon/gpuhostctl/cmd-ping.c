/* gpuhostctl ping: checks that the daemon answers, and how fast. */
#include <stdio.h>
#include <time.h>

#include "ctl.h"

static double now_ms(void) {
        struct timespec ts;

        clock_gettime(CLOCK_MONOTONIC, &ts);
        return (double) ts.tv_sec * 1e3 + (double) ts.tv_nsec / 1e6;
}

static double start_ms;

static void print(const ctl_opts *o, gh_client *c, json_object *reply) {
        printf("pong from %s in %.3f ms (connect and call)\n", gh_client_socket_path(c), now_ms() - start_ms);
}

static int run(const ctl_opts *o) {
        start_ms = now_ms();
        return ctl_call_and_print(o, "io.gpuhost.Ping", "{\"ping\":\"gpuhostctl\"}", print);
}

const ctl_command ctl_cmd_ping = {
        .name = "ping",
        .args_usage = "",
        .summary = "check that gpuhostd answers",
        .description = "Sends io.gpuhost.Ping and prints the round-trip time.",
        .options = CTL_OPT_JSON,
        .run = run,
};

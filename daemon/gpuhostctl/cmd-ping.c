/* gpuhostctl ping: checks that the daemon answers, and how fast. */
#include <stdio.h>
#include <time.h>

#include "ctl.h"

static double now_ms(void) {
        struct timespec ts;

        clock_gettime(CLOCK_MONOTONIC, &ts);
        return (double) ts.tv_sec * 1e3 + (double) ts.tv_nsec / 1e6;
}

static int run(const ctl_opts *o) {
        gh_client *c = NULL;
        json_object *reply = NULL;
        int r = ctl_connect(o, &c);

        if (r == CTL_EXIT_OK) {
                double start = now_ms();
                r = ctl_call(o, c, "io.gpuhost.Ping", "{\"ping\":\"gpuhostctl\"}", &reply);
                if (r == CTL_EXIT_OK && o->json)
                        ctl_print_json(reply);
                else if (r == CTL_EXIT_OK)
                        printf("pong from %s in %.3f ms\n", gh_client_socket_path(c), now_ms() - start);
        }
        json_object_put(reply);
        gh_client_free(c);
        return r;
}

const ctl_command ctl_cmd_ping = {
        .name = "ping",
        .args_usage = "",
        .summary = "check that gpuhostd answers",
        .description = "Sends io.gpuhost.Ping and prints the round-trip time.",
        .options = CTL_OPT_JSON,
        .run = run,
};

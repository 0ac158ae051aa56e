/* libFuzzer target for gpuhost-worker's side of the worker protocol
 * (daemon/worker/worker.c, host.c): the input is up to 32 messages from
 * the daemon, separated by NULs, handled by a real worker state on the CPU
 * device with the test plugins loaded if $GH_TEST_PLUGIN_DIR names them.
 * Whatever comes in, the worker must not crash, and everything it answers
 * must be a JSON object with a "type". Jobs run on threads of their own
 * from the moment a "run" starts them, so the worker sees only test-sum
 * (copied into a directory of its own; the crashing test plugins would
 * crash the fuzzer), and each input's jobs are cancelled and joined at
 * its end. Messages carry no fds here, so "map" always disagrees with
 * its fd count. */
#include <fcntl.h>
#include <json-c/json.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <unistd.h>

#include "files.h"
#include "fuzz.h"
#include "common/log.h"
#include "common/worker-proto.h"
#include "worker/worker.h"

static gh_wk w;
static int peer = -1;

/* test-sum alone, copied into |dir|. */
static void copy_sum_plugin(const char *from, const char *dir) {
        char src[4096], dst[4096];

        snprintf(src, sizeof(src), "%s/plugin-sum.so", from);
        snprintf(dst, sizeof(dst), "%s/plugin-sum.so", dir);
        CHECK(gh_test_copy_file(src, dst, 0644) == 0);
}

static void setup(void) {
        static char tmp[] = "/tmp/gh-fuzz-worker-XXXXXX";
        const char *plugins = getenv("GH_TEST_PLUGIN_DIR");
        char *dir = mkdtemp(tmp);
        int sp[2];

        gh_log_set_max_level(LOG_EMERG); /* the worker logs every refusal */
        CHECK(socketpair(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC | SOCK_NONBLOCK, 0, sp) == 0);
        CHECK(dir);
        if (plugins)
                copy_sum_plugin(plugins, dir);
        gh_worker_args a = {.plugin_dir = dir, .plugin_owner = geteuid(), .slab_size = 2u << 20,
                            .pool_size = 16u << 20, .cpu_threads = 2};
        CHECK(gh_wk_init(&w, &a, sp[0]) == 0);
        peer = sp[1];
}

/* Reads and checks what the worker answered. */
static void drain(void) {
        static char buf[1 << 16];
        ssize_t n;

        while ((n = recv(peer, buf, sizeof(buf) - 1, MSG_DONTWAIT)) > 0) {
                buf[n] = 0;
                for (char *p = buf; p < buf + n; p += strlen(p) + 1) {
                        if (!*p)
                                continue;
                        json_object *o = json_tokener_parse(p);
                        /* A message may straddle two reads; only whole ones are checked. */
                        if (o) {
                                CHECK(json_object_is_type(o, json_type_object));
                                CHECK(json_object_get_string(json_object_object_get(o, "type")));
                                json_object_put(o);
                        }
                }
        }
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size) {
        if (peer < 0)
                setup();
        if (size > 256 * 1024)
                return 0;
        size_t start = 0;
        for (int frames = 0; start < size && frames < 32; frames++) {
                const uint8_t *nul = memchr(data + start, 0, size - start);
                size_t len = (nul ? (size_t) (nul - data) : size) - start;
                gh_vl_frame f = {.text = malloc(len + 1), .len = len};
                CHECK(f.text);
                memcpy(f.text, data + start, len);
                f.text[len] = 0;
                (void) gh_wk_handle_frame(&w, &f);
                gh_vl_frame_done(&f);
                drain();
                start += len + 1;
        }
        for (unsigned i = 0; i < w.n_jobs; i++) { /* "run" started them: cancel, join */
                gh_job_free(w.jobs[i]);
                drain();
        }
        w.n_jobs = 0;
        drain();
        return 0;
}

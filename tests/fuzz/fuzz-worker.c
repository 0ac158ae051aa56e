/* libFuzzer target for gpuhost-worker's side of the worker protocol
 * (daemon/worker/worker.c, host.c): the input is up to 32 messages from
 * the daemon, separated by NULs, handled by a real worker state on the CPU
 * device with the test plugins loaded if $GH_TEST_PLUGIN_DIR names them.
 * Whatever comes in, the worker must not crash, and everything it answers
 * must be a JSON object with a "type". A test-sum job it starts is run a
 * few steps (the crashing test plugins are left alone). Messages carry no fds here, so
 * "map" always disagrees with its fd count. */
#include <json-c/json.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <unistd.h>

#include "fuzz.h"
#include "common/log.h"
#include "common/worker-proto.h"
#include "worker/worker.h"

static gh_wk w;
static int peer = -1;

static void setup(void) {
        static char empty[] = "/tmp/gh-fuzz-worker-XXXXXX";
        const char *dir = getenv("GH_TEST_PLUGIN_DIR");
        int sp[2];

        gh_log_set_max_level(LOG_EMERG); /* the worker logs every refusal */
        CHECK(socketpair(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC | SOCK_NONBLOCK, 0, sp) == 0);
        if (!dir)
                dir = mkdtemp(empty);
        CHECK(dir);
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
        if (w.job) { /* a "run" started one: run test-sum's a little, then end it */
                for (int i = 0; i < 8 && strcmp(gh_job_pipeline(w.job), "test-sum") == 0 && gh_job_advance(w.job); i++)
                        drain();
                gh_job_free(w.job);
                w.job = NULL;
        }
        drain();
        return 0;
}

/* gpuhostd against workers that break the worker protocol: each case runs
 * a real gpuhostd whose worker program is fake-worker in one misbehaving
 * mode (garbage, a wrong protocol version, no hello, a malformed pipeline
 * list, an unknown message, a message for a job it does not have, a
 * message that is not an object, one past the size limit, silence). The
 * daemon must kill that worker with a reason naming the fault, count it,
 * and go on answering. */
#include <stdarg.h>
#include <stddef.h>
#include <setjmp.h>
#include <cmocka.h>
#include <fcntl.h>
#include <json-c/json.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/wait.h>
#include <unistd.h>

#include "common/util.h"
#include "daemon-run.h"

typedef struct daemon_run {
        char dir[64], sock[128], log[128];
        pid_t pid;
} daemon_run;

static void start(daemon_run *d, const char *mode) {
        const char *fake = getenv("GH_FAKE_WORKER");
        char conf[128];

        assert_non_null(fake);
        strcpy(d->dir, "/tmp/gh-wproto-XXXXXX");
        assert_non_null(mkdtemp(d->dir));
        snprintf(d->sock, sizeof(d->sock), "%s/s", d->dir);
        snprintf(d->log, sizeof(d->log), "%s/log", d->dir);
        snprintf(conf, sizeof(conf), "%s/conf", d->dir);
        FILE *f = fopen(conf, "we");
        assert_non_null(f);
        fprintf(f, "[socket]\npath = %s\n[devices]\ncpu_memory = 16M\nslab_size = 2M\n[models]\ndirectory = %s\n"
                   "[workers]\nexecutable = %s\nplugin_directory = %s\nheartbeat_timeout_sec = 1\n",
                d->sock, d->dir, fake, d->dir);
        fclose(f);
        char mode_env[64];
        snprintf(mode_env, sizeof(mode_env), "GH_FAKE_WORKER_MODE=%s", mode);
        const char *env[] = {mode_env, NULL};
        assert_int_equal(gh_test_daemon_start(conf, d->log, d->sock, env, &d->pid), 0);
}

static void stop(daemon_run *d) {
        char cmd[128];
        int status;

        kill(d->pid, SIGTERM);
        assert_int_equal(waitpid(d->pid, &status, 0), d->pid);
        assert_true(WIFEXITED(status));
        assert_int_equal(WEXITSTATUS(status), 0);
        snprintf(cmd, sizeof(cmd), "rm -rf '%s'", d->dir);
        assert_int_equal(system(cmd), 0);
}

static bool log_has(const daemon_run *d, const char *text) {
        char buf[65536];
        int fd = open(d->log, O_RDONLY | O_CLOEXEC);
        ssize_t n = fd >= 0 ? read(fd, buf, sizeof(buf) - 1) : -1;

        gh_close(fd);
        if (n <= 0)
                return false;
        buf[n] = 0;
        return strstr(buf, text) != NULL;
}

/* The reply's parameters, or NULL on an error. */
static json_object *call(const daemon_run *d, const char *method) {
        char *err;
        json_object *p = gh_test_call(d->sock, method, NULL, &err);

        if (err) {
                free(err);
                json_object_put(p);
                return NULL;
        }
        return p;
}

static void check_mode(const char *mode, const char *reason) {
        daemon_run d;
        char want[256];
        int i;

        start(&d, mode);
        snprintf(want, sizeof(want), "Killing worker 0 (device 0, pid");
        for (i = 0; i < 500 && !(log_has(&d, want) && log_has(&d, reason)); i++)
                usleep(20000);
        if (i == 500)
                fail_msg("mode %s: no kill with reason '%s' in the log", mode, reason);
        /* Still serving, and the death is counted. */
        json_object *p = NULL;
        for (i = 0; i < 200; i++) {
                json_object_put(p);
                p = call(&d, "io.gpuhost.ListWorkers");
                assert_non_null(p);
                json_object *w = json_object_array_get_idx(json_object_object_get(p, "workers"), 0);
                if (json_object_get_int64(json_object_object_get(w, "crashes")) >= 1)
                        break;
                usleep(20000);
        }
        assert_true(i < 200);
        json_object_put(p);
        p = call(&d, "io.gpuhost.ListPipelines");
        assert_non_null(p);
        assert_int_equal(json_object_array_length(json_object_object_get(p, "pipelines")), 0);
        json_object_put(p);
        stop(&d);
}

#define MODE(name, mode, reason) \
        static void name(void **state) { check_mode(mode, reason); }

MODE(test_garbage, "garbage", "protocol error")
MODE(test_version, "version", "protocol error")
MODE(test_no_hello, "no-hello", "protocol error")
MODE(test_bad_pipelines, "bad-pipelines", "protocol error")
MODE(test_unknown_type, "unknown-type", "protocol error")
MODE(test_stray_job, "stray-job", "protocol error")
MODE(test_not_object, "not-object", "protocol error")
MODE(test_oversize, "oversize", "protocol error (Message too long)")
MODE(test_silent, "silent", "no heartbeat for 1 s")

int main(void) {
        const struct CMUnitTest tests[] = {
                cmocka_unit_test(test_garbage),       cmocka_unit_test(test_version),
                cmocka_unit_test(test_no_hello),      cmocka_unit_test(test_bad_pipelines),
                cmocka_unit_test(test_unknown_type),  cmocka_unit_test(test_stray_job),
                cmocka_unit_test(test_not_object),    cmocka_unit_test(test_oversize),
                cmocka_unit_test(test_silent),
        };
        signal(SIGPIPE, SIG_IGN);
        return cmocka_run_group_tests(tests, NULL, NULL);
}

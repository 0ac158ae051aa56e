/* Test helper: starting gpuhostd and calling it. See daemon-run.h. */
#include <errno.h>
#include <fcntl.h>
#include <signal.h>
#include <stdlib.h>
#include <string.h>
#include <sys/prctl.h>
#include <sys/resource.h>
#include <sys/wait.h>
#include <unistd.h>

#include "common/util.h"
#include "daemon-run.h"
#include "gpuhost/client.h"

int gh_test_daemon_start(const char *config, const char *log, const char *sock, const char *const *env,
                         pid_t *ret_pid) {
        const char *bin = getenv("GH_GPUHOSTD");

        if (!bin)
                return -EINVAL;
        pid_t pid = fork();
        if (pid < 0)
                return -errno;
        if (pid == 0) {
                /* Crashing workers write no core files; a test that dies
                 * leaves no daemon behind. */
                struct rlimit none = {0, 0};
                setrlimit(RLIMIT_CORE, &none);
                prctl(PR_SET_PDEATHSIG, SIGTERM);
                if (log) {
                        int fd = open(log, O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0644);
                        if (fd < 0 || dup2(fd, STDERR_FILENO) < 0)
                                _exit(127);
                }
                for (size_t i = 0; env && env[i]; i++)
                        putenv((char *) env[i]);
                execl(bin, bin, "-c", config, (char *) NULL);
                _exit(127);
        }
        *ret_pid = pid;
        for (int i = 0; i < 500; i++) {
                gh_client *c = NULL;
                if (gh_client_connect(sock, &c) == 0) {
                        gh_client_free(c);
                        return 0;
                }
                if (waitpid(pid, NULL, WNOHANG) == pid)
                        return -ECHILD;
                usleep(20000);
        }
        return -ETIMEDOUT;
}

json_object *gh_test_call(const char *sock, const char *method, const char *params, char **ret_error) {
        gh_client *c = NULL;
        gh_reply *r = NULL;

        if (gh_client_connect(sock, &c) < 0) {
                *ret_error = strdup("transport error");
                return NULL;
        }
        gh_client_set_timeout(c, 60 * USEC_PER_SEC);
        if (gh_client_call(c, method, params, &r) < 0) {
                gh_client_free(c);
                *ret_error = strdup("transport error");
                return NULL;
        }
        *ret_error = gh_reply_error(r) ? strdup(gh_reply_error(r)) : NULL;
        json_object *p = json_tokener_parse(gh_reply_parameters(r));
        gh_reply_free(r);
        gh_client_free(c);
        return p;
}

/* gpuhost-worker's entry point: the command line gpuhostd passes, checks
 * on the inherited socket, then the worker loop. Not meant to be run by
 * hand. */
#include <fcntl.h>
#include <getopt.h>
#include <inttypes.h>
#include <signal.h>
#include <string.h>
#include <sys/prctl.h>
#include <sys/socket.h>
#include <sys/stat.h>

#include "../common/log.h"
#include "../common/worker-proto.h"
#include "worker.h"

static int parse_u64(const char *s, uint64_t *ret) {
        char *end;

        errno = 0;
        unsigned long long v = strtoull(s, &end, 10);
        if (errno || end == s || *end || s[0] == '-')
                return -EINVAL;
        *ret = v;
        return 0;
}

static int parse_args(int argc, char **argv, gh_worker_args *a) {
        static const struct option opts[] = {
                {"device", required_argument, NULL, 'd'},     {"cuda", required_argument, NULL, 'c'},
                {"plugin-dir", required_argument, NULL, 'p'}, {"plugin-owner", required_argument, NULL, 'o'},
                {"slab-size", required_argument, NULL, 's'},  {"pool-size", required_argument, NULL, 'z'},
                {"threads", required_argument, NULL, 't'},    {"log-level", required_argument, NULL, 'l'},
                {"unit-sms", required_argument, NULL, 'u'},
                {},
        };
        uint64_t v;
        int c, lvl;

        *a = (gh_worker_args) {.cpu_threads = 1};
        while ((c = getopt_long(argc, argv, "", opts, NULL)) >= 0) {
                if (c == '?')
                        return -EINVAL;
                if (c == 'p') {
                        a->plugin_dir = optarg;
                        continue;
                }
                if (c == 'l') {
                        if ((lvl = gh_log_level_from_string(optarg)) < 0)
                                return -EINVAL;
                        gh_log_set_max_level(lvl);
                        continue;
                }
                if (parse_u64(optarg, &v) < 0)
                        return -EINVAL;
                switch (c) {
                case 'd': a->device = (int) v; break;
                case 'c': a->cuda = true; a->cuda_ordinal = (int) v; break;
                case 'o': a->plugin_owner = (uid_t) v; break;
                case 's': a->slab_size = v; break;
                case 'z': a->pool_size = v; break;
                case 't': a->cpu_threads = v > 1024 ? 1024 : (unsigned) v; break;
                case 'u': a->unit_sms = v > 1024 ? 1024 : (unsigned) v; break;
                }
        }
        return a->plugin_dir && a->slab_size && a->pool_size && optind == argc ? 0 : -EINVAL;
}

int main(int argc, char **argv) {
        gh_worker_args args;
        gh_wk w;
        struct stat st;
        int type = 0;
        socklen_t len = sizeof(type);

        gh_log_open("gpuhost-worker");
        gh_log_force_priority_prefix();
        if (parse_args(argc, argv, &args) < 0) {
                gh_log_error("Usage: gpuhost-worker --device N [--cuda ORDINAL] --plugin-dir DIR --plugin-owner UID "
                             "--slab-size BYTES --pool-size BYTES [--threads N] [--unit-sms N] [--log-level LEVEL] (started by gpuhostd)");
                return 2;
        }
        if (fstat(GH_WORKER_FD, &st) < 0 || !S_ISSOCK(st.st_mode) ||
            getsockopt(GH_WORKER_FD, SOL_SOCKET, SO_TYPE, &type, &len) < 0 || type != SOCK_STREAM) {
                gh_log_error("fd %d is not the daemon's socket; gpuhost-worker is started by gpuhostd", GH_WORKER_FD);
                return 2;
        }
        (void) fcntl(GH_WORKER_FD, F_SETFD, FD_CLOEXEC);
        signal(SIGPIPE, SIG_IGN);
        /* Die with the daemon, never outlive it holding device memory. */
        prctl(PR_SET_PDEATHSIG, SIGKILL);
        int r = gh_wk_init(&w, &args, GH_WORKER_FD);
        if (r >= 0)
                r = gh_wk_run(&w);
        gh_wk_done(&w);
        if (r < 0)
                gh_log_error_errno(r, "Worker of device %d stopping: %m", args.device);
        return r < 0 ? 1 : 0;
}

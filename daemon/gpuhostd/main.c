/* gpuhostd: command line, first configuration load, and the run. */
#include <getopt.h>
#include <string.h>
#include <systemd/sd-daemon.h>

#include "../common/log.h"
#include "daemon.h"
#include "gh-build.h"

#define EXIT_CONFIG 78 /* EX_CONFIG: systemd must not restart-loop on it */

static void help(void) {
        printf("Usage: gpuhostd [OPTIONS]\n"
               "\n"
               "The gpuhost daemon: owns the GPUs of this machine and serves image and\n"
               "video generation to local clients over varlink.\n"
               "\n"
               "  -c, --config=PATH   read only PATH (default: %s\n"
               "                      and %s/*.conf)\n"
               "      --check-config  validate the configuration and exit\n"
               "  -v, --verbose       log at debug level, whatever the config says\n"
               "  -h, --help          show this help\n"
               "      --version       show the version\n",
               GH_CONFIG_FILE, GH_CONFIG_DROPIN_DIR);
}

typedef struct args {
        const char *config;
        bool check_only, verbose;
} args;

static int parse_args(int argc, char **argv, args *a) {
        enum { ARG_VERSION = 0x100, ARG_CHECK };
        static const struct option options[] = {
                {"config", required_argument, NULL, 'c'},
                {"check-config", no_argument, NULL, ARG_CHECK},
                {"verbose", no_argument, NULL, 'v'},
                {"help", no_argument, NULL, 'h'},
                {"version", no_argument, NULL, ARG_VERSION},
                {},
        };
        int c;

        while ((c = getopt_long(argc, argv, "c:vh", options, NULL)) >= 0)
                switch (c) {
                case 'c':
                        a->config = optarg;
                        break;
                case ARG_CHECK:
                        a->check_only = true;
                        break;
                case 'v':
                        a->verbose = true;
                        break;
                case 'h':
                        help();
                        return 0;
                case ARG_VERSION:
                        printf("gpuhostd %s\n", GH_VERSION);
                        return 0;
                default:
                        fprintf(stderr, "Try 'gpuhostd --help'.\n");
                        return -EINVAL;
                }
        if (optind < argc) {
                fprintf(stderr, "gpuhostd: unexpected argument '%s'. Try 'gpuhostd --help'.\n", argv[optind]);
                return -EINVAL;
        }
        return 1;
}

int main(int argc, char **argv) {
        gh_daemon d = {.forced_log_level = -1};
        args a = {0};
        gh_config *config = NULL;
        gh_config_error err = {0};
        char msg[1024];

        gh_log_open("gpuhostd");
        int r = parse_args(argc, argv, &a);
        if (r <= 0)
                return r < 0 ? 2 : 0;
        if (a.verbose) {
                d.forced_log_level = LOG_DEBUG;
                gh_log_set_max_level(LOG_DEBUG);
        }
        d.config_override = a.config;
        d.config_main = GH_CONFIG_FILE;
        d.config_dropins = GH_CONFIG_DROPIN_DIR;
        r = gh_config_load(d.config_override, d.config_main, d.config_dropins, &config, &err);
        if (r >= 0) {
                gh_devices_config dc;
                r = gh_config_devices(config, &dc, &err);
                if (r < 0)
                        config = gh_config_free(config);
        }
        if (r < 0) {
                gh_config_error_format(&err, msg, sizeof(msg));
                gh_log_error("Invalid configuration: %s", msg);
                sd_notifyf(false, "STATUS=Invalid configuration: %s", msg);
                return EXIT_CONFIG;
        }
        if (a.check_only) {
                printf("Configuration OK (%zu file%s read)\n", config->n_files, config->n_files == 1 ? "" : "s");
                gh_config_free(config);
                return 0;
        }
        r = gh_daemon_init(&d, config);
        if (r >= 0)
                r = gh_daemon_run(&d);
        if (!d.config)
                gh_config_free(config);
        gh_daemon_done(&d);
        return r < 0 ? 1 : 0;
}

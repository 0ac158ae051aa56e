/* gpuhostctl command line: global options, the command, its options and
 * arguments, and the help texts. */
#include <errno.h>
#include <getopt.h>
#include <limits.h>
#include <math.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "ctl.h"
#include "gh-build.h"

#define DEFAULT_TIMEOUT_USEC (30 * UINT64_C(1000000))
#define MAX_TIMEOUT_SEC 86400.0
#define MAX_DEADLINE_SEC 31536000.0 /* a year */

static const ctl_command *const commands[] = {
        &ctl_cmd_status,  &ctl_cmd_devices, &ctl_cmd_models,  &ctl_cmd_model,
        &ctl_cmd_pipelines, &ctl_cmd_generate, &ctl_cmd_jobs,  &ctl_cmd_job,
        &ctl_cmd_workers, &ctl_cmd_worker,  &ctl_cmd_plugin,  &ctl_cmd_ping,
        &ctl_cmd_top,     &ctl_cmd_metrics, &ctl_cmd_reload,  &ctl_cmd_version,
        &ctl_cmd_call,
};

const ctl_command *ctl_command_find(const char *name) {
        for (size_t i = 0; i < sizeof(commands) / sizeof(commands[0]); i++)
                if (strcmp(commands[i]->name, name) == 0)
                        return commands[i];
        return NULL;
}

static const char global_options_help[] =
        "  -s, --socket=PATH    the daemon's socket (default: $" GH_SOCKET_ENV ", else\n"
        "                       " GH_DEFAULT_SOCKET ")\n"
        "  -t, --timeout=SEC    wait at most SEC seconds for each reply (default 30,\n"
        "                       0 waits forever)\n"
        "  -h, --help           show help (also: gpuhostctl COMMAND --help)\n"
        "      --version        show the version of gpuhostctl\n";

static const char exit_codes_help[] =
        "Exit status: 0 success, 1 the daemon answered with an error, 2 usage error,\n"
        "3 cannot reach the daemon (not running, no permission, connection lost).\n";

void ctl_print_help(FILE *f, const ctl_command *cmd) {
        if (cmd) {
                fprintf(f, "Usage: gpuhostctl [OPTIONS] %s%s%s\n\n%s\n\nOptions:\n", cmd->name,
                        cmd->args_usage[0] ? " " : "", cmd->args_usage, cmd->description);
                if (cmd->options & CTL_OPT_JSON)
                        fprintf(f, "      --json           print the daemon's reply as JSON\n");
                if (cmd->options & CTL_OPT_MORE)
                        fprintf(f, "      --more           ask for streamed replies; print each\n");
                if (cmd->options & CTL_OPT_ONEWAY)
                        fprintf(f, "      --oneway         ask for no reply\n");
                if (cmd->options & CTL_OPT_DEVICE)
                        fprintf(f, "  -d, --device=D       the device's index (see 'gpuhostctl devices')\n");
                if (cmd->options & CTL_OPT_PARAM)
                        fprintf(f, "      --param=KEY=VALUE\n"
                                   "                       set a parameter of the pipeline (repeatable)\n"
                                   "      --model=M        the same as --param model=M\n");
                if (cmd->options & CTL_OPT_OUTPUT)
                        fprintf(f, "  -o, --output=FILE    write the output to FILE (see above)\n");
                if (cmd->options & CTL_OPT_QUIET)
                        fprintf(f, "  -q, --quiet          no progress and no messages but errors\n");
                if (cmd->options & CTL_OPT_JOB)
                        fprintf(f, "      --priority=P     interactive, normal (the default) or batch\n"
                                   "      --deadline=SEC   fail the job if not done within SEC seconds\n"
                                   "      --tag=TEXT       a label of your own, shown by 'gpuhostctl jobs'\n"
                                   "      --detach         submit, print the job's id and exit\n"
                                   "      --wait=ID        wait for job ID and fetch its outputs\n"
                                   "      --cancel=ID      cancel job ID\n");
                if (cmd->options & CTL_OPT_ITERATIONS)
                        fprintf(f, "      --iterations=N   show N frames, then exit\n");
                fprintf(f, "%s\n%s", global_options_help, exit_codes_help);
                return;
        }
        fprintf(f, "Usage: gpuhostctl [OPTIONS] COMMAND [ARGS...]\n\n"
                   "Controls gpuhostd, the gpuhost generation daemon.\n\nCommands:\n");
        for (size_t i = 0; i < sizeof(commands) / sizeof(commands[0]); i++)
                fprintf(f, "  %-10s %s\n", commands[i]->name, commands[i]->summary);
        fprintf(f, "\nOptions:\n%s\n%s", global_options_help, exit_codes_help);
}

static int parse_timeout(const char *s, uint64_t *ret) {
        char *end;

        errno = 0;
        double v = strtod(s, &end);
        if (errno || end == s || *end || !isfinite(v) || v < 0 || v > MAX_TIMEOUT_SEC)
                return -EINVAL;
        *ret = (uint64_t) (v * 1e6);
        if (v > 0 && *ret == 0)
                *ret = 1;
        return 0;
}

const char *ctl_usage_error(const char *fmt, ...) {
        static __thread char buf[256];
        va_list ap;

        va_start(ap, fmt);
        vsnprintf(buf, sizeof(buf), fmt, ap);
        va_end(ap);
        return buf;
}

/* A device index: a non-negative decimal integer. */
static int parse_device(const char *s, int *ret) {
        char *end;

        if (*s < '0' || *s > '9') /* no sign, no blanks, not empty */
                return -EINVAL;
        errno = 0;
        long v = strtol(s, &end, 10);
        if (errno || *end || v < 0 || v > INT_MAX)
                return -EINVAL;
        *ret = (int) v;
        return 0;
}

/* --iterations: a decimal integer, 1..CTL_MAX_ITERATIONS. */
static int parse_iterations(const char *s, int *ret) {
        char *end;

        if (*s < '0' || *s > '9')
                return -EINVAL;
        errno = 0;
        long v = strtol(s, &end, 10);
        if (errno || *end || v < 1 || v > CTL_MAX_ITERATIONS)
                return -EINVAL;
        *ret = (int) v;
        return 0;
}

/* A job's deadline: finite seconds, > 0, at most a year. */
static int parse_deadline(const char *s, double *ret) {
        char *end;

        if (!((*s >= '0' && *s <= '9') || *s == '.')) /* no sign, no blanks, not empty */
                return -EINVAL;
        errno = 0;
        double v = strtod(s, &end);
        if (errno || end == s || *end || !isfinite(v) || v <= 0 || v > MAX_DEADLINE_SEC)
                return -EINVAL;
        *ret = v;
        return 0;
}

static bool valid_priority(const char *s) {
        return strcmp(s, "interactive") == 0 || strcmp(s, "normal") == 0 || strcmp(s, "batch") == 0;
}

static int check_option(const ctl_command *cmd, unsigned opt, const char *name, const char **ret_error) {
        if (!cmd || (cmd->options & opt))
                return 0;
        *ret_error = ctl_usage_error("option '%s' does not apply to this command", name);
        return -EINVAL;
}

/* One getopt pass; with |cmd| NULL it stops at the first non-option (the
 * command), otherwise it takes the command's options too. */
static int parse_options(int argc, char **argv, const ctl_command *cmd, ctl_opts *o, const char **ret_error) {
        enum {
                ARG_JSON = 0x100, ARG_MORE, ARG_ONEWAY, ARG_VERSION, ARG_PARAM, ARG_MODEL,
                ARG_PRIORITY, ARG_DEADLINE, ARG_TAG, ARG_DETACH, ARG_WAIT, ARG_CANCEL, ARG_ITERATIONS,
        };
        static const struct option options[] = {
                {"socket", required_argument, NULL, 's'},  {"timeout", required_argument, NULL, 't'},
                {"help", no_argument, NULL, 'h'},          {"version", no_argument, NULL, ARG_VERSION},
                {"json", no_argument, NULL, ARG_JSON},     {"more", no_argument, NULL, ARG_MORE},
                {"oneway", no_argument, NULL, ARG_ONEWAY}, {"device", required_argument, NULL, 'd'},
                {"param", required_argument, NULL, ARG_PARAM}, {"model", required_argument, NULL, ARG_MODEL},
                {"output", required_argument, NULL, 'o'},  {"quiet", no_argument, NULL, 'q'},
                {"priority", required_argument, NULL, ARG_PRIORITY},
                {"deadline", required_argument, NULL, ARG_DEADLINE},
                {"tag", required_argument, NULL, ARG_TAG}, {"detach", no_argument, NULL, ARG_DETACH},
                {"wait", required_argument, NULL, ARG_WAIT}, {"cancel", required_argument, NULL, ARG_CANCEL},
                {"iterations", required_argument, NULL, ARG_ITERATIONS},
                {},
        };
        int c;

        opterr = 0;
        for (;;) {
                /* The word getopt works on: argv[optind - 1] afterwards is
                 * wrong inside a group of short options ("-xh"). */
                int word = optind > 0 ? optind : 1;
                if ((c = getopt_long(argc, argv, "+s:t:hd:o:q", options, NULL)) < 0)
                        break;
                const char *name = argv[word];
                switch (c) {
                case 's':
                        if (!*optarg) {
                                *ret_error = "--socket needs a path";
                                return -EINVAL;
                        }
                        o->socket = optarg;
                        break;
                case 't':
                        if (parse_timeout(optarg, &o->timeout_usec) < 0) {
                                *ret_error = ctl_usage_error("invalid timeout '%s' (seconds, 0..86400)", optarg);
                                return -EINVAL;
                        }
                        o->timeout_given = true;
                        break;
                case 'h':
                        o->help = true;
                        break;
                case ARG_VERSION:
                        o->version = true;
                        break;
                case 'd':
                        if (check_option(cmd, CTL_OPT_DEVICE, name, ret_error) < 0)
                                return -EINVAL;
                        if (parse_device(optarg, &o->device) < 0) {
                                *ret_error = ctl_usage_error("invalid device '%s' (an index: 0, 1, ...)", optarg);
                                return -EINVAL;
                        }
                        break;
                case ARG_JSON:
                        if (check_option(cmd, CTL_OPT_JSON, name, ret_error) < 0)
                                return -EINVAL;
                        o->json = true;
                        break;
                case ARG_MORE:
                        if (check_option(cmd, CTL_OPT_MORE, name, ret_error) < 0)
                                return -EINVAL;
                        o->more = true;
                        break;
                case ARG_ONEWAY:
                        if (check_option(cmd, CTL_OPT_ONEWAY, name, ret_error) < 0)
                                return -EINVAL;
                        o->oneway = true;
                        break;
                case ARG_PARAM: {
                        if (check_option(cmd, CTL_OPT_PARAM, name, ret_error) < 0)
                                return -EINVAL;
                        const char *eq = strchr(optarg, '=');
                        if (!eq || eq == optarg) {
                                *ret_error = ctl_usage_error("invalid --param '%s' (KEY=VALUE)", optarg);
                                return -EINVAL;
                        }
                        if (o->n_params >= CTL_MAX_PARAMS) {
                                *ret_error = ctl_usage_error("too many --param options (at most %d)", CTL_MAX_PARAMS);
                                return -EINVAL;
                        }
                        o->params[o->n_params++] = optarg;
                        break;
                }
                case ARG_MODEL:
                        if (check_option(cmd, CTL_OPT_PARAM, name, ret_error) < 0)
                                return -EINVAL;
                        if (!*optarg) {
                                *ret_error = "--model needs a model name";
                                return -EINVAL;
                        }
                        o->model = optarg;
                        break;
                case 'o':
                        if (check_option(cmd, CTL_OPT_OUTPUT, name, ret_error) < 0)
                                return -EINVAL;
                        if (!*optarg) {
                                *ret_error = "--output needs a file name";
                                return -EINVAL;
                        }
                        o->output = optarg;
                        break;
                case 'q':
                        if (check_option(cmd, CTL_OPT_QUIET, name, ret_error) < 0)
                                return -EINVAL;
                        o->quiet = true;
                        break;
                case ARG_PRIORITY:
                        if (check_option(cmd, CTL_OPT_JOB, name, ret_error) < 0)
                                return -EINVAL;
                        if (!valid_priority(optarg)) {
                                *ret_error = ctl_usage_error("invalid priority '%s' (interactive, normal or batch)",
                                                             optarg);
                                return -EINVAL;
                        }
                        o->priority = optarg;
                        break;
                case ARG_DEADLINE:
                        if (check_option(cmd, CTL_OPT_JOB, name, ret_error) < 0)
                                return -EINVAL;
                        if (parse_deadline(optarg, &o->deadline_sec) < 0) {
                                *ret_error = ctl_usage_error("invalid deadline '%s' (seconds, more than 0, "
                                                             "at most a year)", optarg);
                                return -EINVAL;
                        }
                        break;
                case ARG_TAG:
                        if (check_option(cmd, CTL_OPT_JOB, name, ret_error) < 0)
                                return -EINVAL;
                        if (!*optarg) {
                                *ret_error = "--tag needs a text";
                                return -EINVAL;
                        }
                        o->tag = optarg;
                        break;
                case ARG_DETACH:
                        if (check_option(cmd, CTL_OPT_JOB, name, ret_error) < 0)
                                return -EINVAL;
                        o->detach = true;
                        break;
                case ARG_WAIT:
                case ARG_CANCEL:
                        if (check_option(cmd, CTL_OPT_JOB, name, ret_error) < 0)
                                return -EINVAL;
                        if (!*optarg) {
                                *ret_error = c == ARG_WAIT ? "--wait needs a job id" : "--cancel needs a job id";
                                return -EINVAL;
                        }
                        if (c == ARG_WAIT)
                                o->wait_job = optarg;
                        else
                                o->cancel_job = optarg;
                        break;
                case ARG_ITERATIONS:
                        if (check_option(cmd, CTL_OPT_ITERATIONS, name, ret_error) < 0)
                                return -EINVAL;
                        if (parse_iterations(optarg, &o->iterations) < 0) {
                                *ret_error = ctl_usage_error("invalid --iterations '%s' (1..%d)", optarg,
                                                             CTL_MAX_ITERATIONS);
                                return -EINVAL;
                        }
                        break;
                default:
                        *ret_error = optopt && (optopt < 0x100 || optopt == ARG_PARAM || optopt == ARG_MODEL ||
                                                optopt == ARG_PRIORITY || optopt == ARG_DEADLINE ||
                                                optopt == ARG_TAG || optopt == ARG_WAIT || optopt == ARG_CANCEL ||
                                                optopt == ARG_ITERATIONS)
                                ? ctl_usage_error("unknown option or missing argument: '%s'", name)
                                : ctl_usage_error("unknown option '%s'", name);
                        return -EINVAL;
                }
        }
        return 0;
}

/* Collects positional arguments after the command, allowing options
 * between them ("call --more io.gpuhost.Ping {}"). */
static int parse_command_args(int argc, char **argv, ctl_opts *o, const char **ret_error) {
        while (optind < argc) {
                int r = parse_options(argc, argv, o->command, o, ret_error);
                if (r < 0)
                        return r;
                if (optind < argc) {
                        argv[o->n_args++] = argv[optind++]; /* compact in place */
                }
        }
        o->args = argv;
        return 0;
}

int ctl_parse_args(int argc, char **argv, ctl_opts *o, const char **ret_error) {
        *o = (ctl_opts) {.timeout_usec = DEFAULT_TIMEOUT_USEC, .device = -1};
        optind = 0; /* full reset, so the parser can run more than once */
        int r = parse_options(argc, argv, NULL, o, ret_error);
        if (r < 0)
                return r;
        if (optind >= argc)
                return o->help || o->version ? 0 : (*ret_error = "no command given (try 'gpuhostctl --help')", -EINVAL);
        const char *name = argv[optind++];
        if (strcmp(name, "help") == 0) {
                o->help = true;
                o->command = optind < argc ? ctl_command_find(argv[optind]) : NULL;
                if (optind < argc && !o->command) {
                        *ret_error = ctl_usage_error("unknown command '%s' (try 'gpuhostctl --help')", argv[optind]);
                        return -EINVAL;
                }
                return 0;
        }
        o->command = ctl_command_find(name);
        if (!o->command) {
                *ret_error = ctl_usage_error("unknown command '%s' (try 'gpuhostctl --help')", name);
                return -EINVAL;
        }
        /* Command options given before the command were not checked yet. */
        if ((o->json && check_option(o->command, CTL_OPT_JSON, "--json", ret_error) < 0) ||
            (o->more && check_option(o->command, CTL_OPT_MORE, "--more", ret_error) < 0) ||
            (o->oneway && check_option(o->command, CTL_OPT_ONEWAY, "--oneway", ret_error) < 0) ||
            (o->device >= 0 && check_option(o->command, CTL_OPT_DEVICE, "--device", ret_error) < 0) ||
            (o->n_params > 0 && check_option(o->command, CTL_OPT_PARAM, "--param", ret_error) < 0) ||
            (o->model && check_option(o->command, CTL_OPT_PARAM, "--model", ret_error) < 0) ||
            (o->output && check_option(o->command, CTL_OPT_OUTPUT, "--output", ret_error) < 0) ||
            (o->quiet && check_option(o->command, CTL_OPT_QUIET, "--quiet", ret_error) < 0) ||
            (o->priority && check_option(o->command, CTL_OPT_JOB, "--priority", ret_error) < 0) ||
            (o->deadline_sec > 0 && check_option(o->command, CTL_OPT_JOB, "--deadline", ret_error) < 0) ||
            (o->tag && check_option(o->command, CTL_OPT_JOB, "--tag", ret_error) < 0) ||
            (o->detach && check_option(o->command, CTL_OPT_JOB, "--detach", ret_error) < 0) ||
            (o->wait_job && check_option(o->command, CTL_OPT_JOB, "--wait", ret_error) < 0) ||
            (o->cancel_job && check_option(o->command, CTL_OPT_JOB, "--cancel", ret_error) < 0) ||
            (o->iterations && check_option(o->command, CTL_OPT_ITERATIONS, "--iterations", ret_error) < 0))
                return -EINVAL;
        r = parse_command_args(argc, argv, o, ret_error);
        if (r < 0)
                return r;
        if (o->help || o->version)
                return 0;
        if (o->n_args < o->command->min_args) {
                *ret_error = ctl_usage_error("missing arguments (usage: gpuhostctl %s %s)", o->command->name,
                                         o->command->args_usage);
                return -EINVAL;
        }
        if (o->n_args > o->command->max_args) {
                *ret_error = ctl_usage_error("too many arguments for '%s'", o->command->name);
                return -EINVAL;
        }
        if (o->more && o->oneway) {
                *ret_error = "--more and --oneway exclude each other";
                return -EINVAL;
        }
        if (o->command->check && o->command->check(o, ret_error) < 0)
                return -EINVAL;
        return 1;
}

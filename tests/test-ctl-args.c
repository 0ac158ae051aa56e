/* Unit tests for gpuhostctl's command line (daemon/gpuhostctl/args.c).
 *
 * Drives ctl_parse_args() with fresh, mutable argv arrays (the parser
 * compacts positional arguments into argv in place) and checks the result
 * code, the parsed ctl_opts and the text of every usage error: no command,
 * --help/--version, "help [COMMAND]", unknown commands and options, every
 * command, -s/--socket and -t/--timeout in every position and form, the
 * per-command options (--json, --more, --oneway) before and after the
 * command, argument counts of "call", option/argument interleaving,
 * "COMMAND --help", and parsing more than once in a process (getopt
 * state reset); the device and model commands: "model ACTION NAME" with
 * its actions checked while parsing, and -d/--device (valid, negative,
 * non-numeric, missing, refused where it does not apply). Also
 * ctl_command_find().
 *
 * The pipeline and worker commands: "pipelines [NAME]", "workers",
 * "worker restart ID", "plugin enable NAME", "generate PIPELINE" with
 * --param/--model/-o/-q; and the parts of generate that need no daemon:
 * --param conversion against a parameter table (every type, bad values,
 * unknown and repeated keys, an image through a memfd), output file names,
 * writing outputs (PNG or raw, through FILE.tmp) and a PNG round trip
 * with padded rows; the pipelines table's RANGE and DEFAULT columns.
 *
 * Jobs: generate's --priority, --deadline, --tag, --detach, --wait ID and
 * --cancel ID (values, and the combinations refused), "jobs" and
 * "job show ID"; the progress line (ctl_progress_format) and durations;
 * PNG text chunks (written by ctl_png_write and ctl_output_write, read
 * back with libpng's png_get_text), the chunks of a job
 * (ctl_png_texts_for_job, ctl_json_ascii), AUTOMATIC1111's "parameters"
 * among them, read back from a PNG file; base64 of inline outputs; the
 * jobs table and "job show" lines. "top --iterations N" and "metrics". */
#include <errno.h>
#include <fcntl.h>
#include <math.h>
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <time.h>
#include <unistd.h>

#include <cmocka.h>
#include <png.h>

#include "gpuhostctl/ctl.h"

#define DEFAULT_TIMEOUT (30 * UINT64_C(1000000))
#define MAX_ARGS 32

/* argv built from copies of the given strings, so the parser may reorder
 * the pointer array freely; kept alive as long as opts.args is used. */
typedef struct argv_buf {
        int argc;
        char *argv[MAX_ARGS + 1];
        char *strings[MAX_ARGS];
        ctl_opts opts;
        const char *error;
} argv_buf;

static void argv_buf_free(argv_buf *b) {
        for (int i = 0; i < b->argc; i++)
                free(b->strings[i]);
        b->argc = 0;
}

/* Parses "gpuhostctl" followed by the NULL-terminated list of arguments. */
static int parse_list(argv_buf *b, ...) {
        va_list ap;
        const char *s;

        argv_buf_free(b);
        b->strings[b->argc++] = strdup("gpuhostctl");
        va_start(ap, b);
        while ((s = va_arg(ap, const char *))) {
                assert_true(b->argc < MAX_ARGS);
                b->strings[b->argc++] = strdup(s);
        }
        va_end(ap);
        for (int i = 0; i < b->argc; i++) {
                assert_non_null(b->strings[i]);
                b->argv[i] = b->strings[i];
        }
        b->argv[b->argc] = NULL;
        b->error = NULL;
        memset(&b->opts, 0xaa, sizeof(b->opts)); /* the parser must set everything */
        return ctl_parse_args(b->argc, b->argv, &b->opts, &b->error);
}

#define PARSE(b, ...) parse_list((b), __VA_ARGS__, (const char *) NULL)

/* Expects a usage error whose message contains each given string. */
static void expect_usage_error(argv_buf *b, int r, const char *want1, const char *want2) {
        if (r != -EINVAL || !b->error || !strstr(b->error, want1) || (want2 && !strstr(b->error, want2))) {
                print_error("r=%d error='%s', wanted ~'%s' and ~'%s'\n", r, b->error ? b->error : "(null)", want1,
                            want2 ? want2 : "");
        }
        assert_int_equal(r, -EINVAL);
        assert_non_null(b->error);
        assert_non_null(strstr(b->error, want1));
        if (want2)
                assert_non_null(strstr(b->error, want2));
}

static void expect_plain_command(argv_buf *b, int r, const ctl_command *cmd) {
        if (r != 1)
                print_error("r=%d error='%s'\n", r, b->error ? b->error : "(null)");
        assert_int_equal(r, 1);
        assert_ptr_equal(b->opts.command, cmd);
        assert_null(b->opts.socket);
        assert_int_equal(b->opts.timeout_usec, DEFAULT_TIMEOUT);
        assert_false(b->opts.json);
        assert_false(b->opts.more);
        assert_false(b->opts.oneway);
        assert_false(b->opts.help);
        assert_false(b->opts.version);
        assert_int_equal(b->opts.device, -1);
        assert_false(b->opts.timeout_given);
        assert_false(b->opts.quiet);
        assert_null(b->opts.output);
        assert_null(b->opts.model);
        assert_int_equal(b->opts.n_params, 0);
        assert_null(b->opts.priority);
        assert_true(b->opts.deadline_sec == 0);
        assert_null(b->opts.tag);
        assert_false(b->opts.detach);
        assert_null(b->opts.wait_job);
        assert_null(b->opts.cancel_job);
        assert_int_equal(b->opts.iterations, 0);
}

static int teardown_buf(void **state) {
        argv_buf *b = *state;

        argv_buf_free(b);
        free(b);
        return 0;
}

static int setup_buf(void **state) {
        *state = calloc(1, sizeof(argv_buf));
        return *state ? 0 : -1;
}

/* ---- tests -------------------------------------------------------------- */

static void test_command_find(void **state) {
        assert_ptr_equal(ctl_command_find("status"), &ctl_cmd_status);
        assert_ptr_equal(ctl_command_find("ping"), &ctl_cmd_ping);
        assert_ptr_equal(ctl_command_find("reload"), &ctl_cmd_reload);
        assert_ptr_equal(ctl_command_find("version"), &ctl_cmd_version);
        assert_ptr_equal(ctl_command_find("call"), &ctl_cmd_call);
        assert_ptr_equal(ctl_command_find("devices"), &ctl_cmd_devices);
        assert_ptr_equal(ctl_command_find("models"), &ctl_cmd_models);
        assert_ptr_equal(ctl_command_find("model"), &ctl_cmd_model);
        assert_ptr_equal(ctl_command_find("pipelines"), &ctl_cmd_pipelines);
        assert_ptr_equal(ctl_command_find("workers"), &ctl_cmd_workers);
        assert_ptr_equal(ctl_command_find("worker"), &ctl_cmd_worker);
        assert_ptr_equal(ctl_command_find("plugin"), &ctl_cmd_plugin);
        assert_ptr_equal(ctl_command_find("generate"), &ctl_cmd_generate);
        assert_ptr_equal(ctl_command_find("jobs"), &ctl_cmd_jobs);
        assert_ptr_equal(ctl_command_find("job"), &ctl_cmd_job);
        assert_null(ctl_command_find("pipeline"));
        assert_null(ctl_command_find("plugins"));
        assert_null(ctl_command_find("restart")); /* an action of "worker" */
        assert_null(ctl_command_find("device"));
        assert_null(ctl_command_find("load")); /* an action of "model", not a command */
        assert_string_equal(ctl_command_find("call")->name, "call");
        assert_null(ctl_command_find("nosuch"));
        assert_null(ctl_command_find(""));
        assert_null(ctl_command_find("Status"));
        assert_null(ctl_command_find("stat"));     /* no prefix matching */
        assert_null(ctl_command_find("statuses"));
        assert_null(ctl_command_find("help"));     /* handled by the parser */
}

static void test_no_args(void **state) {
        argv_buf *b = *state;
        int r = parse_list(b, (const char *) NULL);

        expect_usage_error(b, r, "no command given", "--help");

        /* Only global options, no command: still an error. */
        r = PARSE(b, "-s", "/tmp/x.sock");
        expect_usage_error(b, r, "no command given", NULL);
}

static void test_help_and_version(void **state) {
        argv_buf *b = *state;
        int r;

        r = PARSE(b, "--help");
        assert_int_equal(r, 0);
        assert_true(b->opts.help);
        assert_false(b->opts.version);
        assert_null(b->opts.command);

        r = PARSE(b, "-h");
        assert_int_equal(r, 0);
        assert_true(b->opts.help);
        assert_null(b->opts.command);

        r = PARSE(b, "--version");
        assert_int_equal(r, 0);
        assert_true(b->opts.version);
        assert_false(b->opts.help);
        assert_null(b->opts.command);

        r = PARSE(b, "help");
        assert_int_equal(r, 0);
        assert_true(b->opts.help);
        assert_null(b->opts.command);

        r = PARSE(b, "help", "status");
        assert_int_equal(r, 0);
        assert_true(b->opts.help);
        assert_ptr_equal(b->opts.command, &ctl_cmd_status);

        r = PARSE(b, "help", "call");
        assert_int_equal(r, 0);
        assert_ptr_equal(b->opts.command, &ctl_cmd_call);

        r = PARSE(b, "help", "nosuch");
        expect_usage_error(b, r, "unknown command 'nosuch'", NULL);

        /* COMMAND --help: help for that command, arguments not needed. */
        r = PARSE(b, "status", "--help");
        assert_int_equal(r, 0);
        assert_true(b->opts.help);
        assert_ptr_equal(b->opts.command, &ctl_cmd_status);

        r = PARSE(b, "call", "-h");
        assert_int_equal(r, 0);
        assert_true(b->opts.help);
        assert_ptr_equal(b->opts.command, &ctl_cmd_call);

        r = PARSE(b, "--help", "ping");
        assert_int_equal(r, 0);
        assert_true(b->opts.help);
        assert_ptr_equal(b->opts.command, &ctl_cmd_ping);

        r = PARSE(b, "version", "--version");
        assert_int_equal(r, 0);
        assert_true(b->opts.version);
        assert_ptr_equal(b->opts.command, &ctl_cmd_version);
}

static void test_unknown_command(void **state) {
        argv_buf *b = *state;
        int r = PARSE(b, "frobnicate");

        expect_usage_error(b, r, "unknown command 'frobnicate'", "--help");
        assert_null(b->opts.command);

        r = PARSE(b, "-s", "/tmp/x", "Status");
        expect_usage_error(b, r, "'Status'", NULL);
}

static void test_each_command(void **state) {
        argv_buf *b = *state;
        static const struct {
                const char *name;
                const ctl_command *cmd;
        } cmds[] = {
                {"status", &ctl_cmd_status},
                {"ping", &ctl_cmd_ping},
                {"reload", &ctl_cmd_reload},
                {"version", &ctl_cmd_version},
                {"devices", &ctl_cmd_devices},
                {"models", &ctl_cmd_models},
                {"workers", &ctl_cmd_workers},
                {"jobs", &ctl_cmd_jobs},
                {"metrics", &ctl_cmd_metrics},
                {"top", &ctl_cmd_top},
        };

        for (size_t i = 0; i < sizeof(cmds) / sizeof(cmds[0]); i++) {
                int r = PARSE(b, cmds[i].name);
                expect_plain_command(b, r, cmds[i].cmd);
                assert_int_equal(b->opts.n_args, 0);
                assert_string_equal(b->opts.command->name, cmds[i].name);

                /* None of them takes arguments. */
                r = PARSE(b, cmds[i].name, "extra");
                expect_usage_error(b, r, "too many arguments", cmds[i].name);
        }

        int r = PARSE(b, "call", "io.gpuhost.Ping");
        expect_plain_command(b, r, &ctl_cmd_call);
        assert_int_equal(b->opts.n_args, 1);
        assert_string_equal(b->opts.args[0], "io.gpuhost.Ping");
}

/* top --iterations N: a count, 1..CTL_MAX_ITERATIONS, before or after the
 * command; no other command takes it. metrics takes --json. */
static void test_top_metrics(void **state) {
        argv_buf *b = *state;
        int r;

        r = PARSE(b, "top", "--iterations", "3");
        assert_int_equal(r, 1);
        assert_ptr_equal(b->opts.command, &ctl_cmd_top);
        assert_int_equal(b->opts.iterations, 3);
        r = PARSE(b, "top", "--iterations=1");
        assert_int_equal(r, 1);
        assert_int_equal(b->opts.iterations, 1);
        r = PARSE(b, "--iterations", "2", "top");
        assert_int_equal(r, 1);
        assert_int_equal(b->opts.iterations, 2);
        r = PARSE(b, "top", "--iterations", "1000000");
        assert_int_equal(r, 1);
        assert_int_equal(b->opts.iterations, 1000000);
        static const char *const bad[] = {"0", "-1", "abc", "1000001", "", " 2", "2x", "99999999999999999999"};
        for (size_t i = 0; i < sizeof(bad) / sizeof(bad[0]); i++) {
                r = PARSE(b, "top", "--iterations", bad[i]);
                expect_usage_error(b, r, "invalid --iterations", "1..1000000");
        }
        r = PARSE(b, "top", "--iterations");
        expect_usage_error(b, r, "missing argument", "--iterations");
        r = PARSE(b, "status", "--iterations", "2");
        expect_usage_error(b, r, "does not apply", "--iterations");
        r = PARSE(b, "--iterations", "2", "jobs");
        expect_usage_error(b, r, "does not apply", "--iterations");
        r = PARSE(b, "top", "--json");
        expect_usage_error(b, r, "does not apply", "--json");
        r = PARSE(b, "metrics", "--json");
        assert_int_equal(r, 1);
        assert_ptr_equal(b->opts.command, &ctl_cmd_metrics);
        assert_true(b->opts.json);
        r = PARSE(b, "metrics", "--iterations", "2");
        expect_usage_error(b, r, "does not apply", "--iterations");
}

static void test_socket_option(void **state) {
        argv_buf *b = *state;
        int r;

        r = PARSE(b, "-s", "/tmp/a.sock", "status");
        assert_int_equal(r, 1);
        assert_ptr_equal(b->opts.command, &ctl_cmd_status);
        assert_string_equal(b->opts.socket, "/tmp/a.sock");
        assert_int_equal(b->opts.n_args, 0);

        r = PARSE(b, "status", "-s", "/tmp/b.sock");
        assert_int_equal(r, 1);
        assert_ptr_equal(b->opts.command, &ctl_cmd_status);
        assert_string_equal(b->opts.socket, "/tmp/b.sock");
        assert_int_equal(b->opts.n_args, 0); /* the path is not an argument */

        r = PARSE(b, "--socket=/tmp/c.sock", "ping");
        assert_int_equal(r, 1);
        assert_ptr_equal(b->opts.command, &ctl_cmd_ping);
        assert_string_equal(b->opts.socket, "/tmp/c.sock");

        r = PARSE(b, "ping", "--socket=/tmp/d.sock");
        assert_int_equal(r, 1);
        assert_string_equal(b->opts.socket, "/tmp/d.sock");
        assert_int_equal(b->opts.n_args, 0);

        r = PARSE(b, "--socket", "/tmp/e.sock", "reload");
        assert_int_equal(r, 1);
        assert_string_equal(b->opts.socket, "/tmp/e.sock");

        r = PARSE(b, "-s/tmp/f.sock", "reload");
        assert_int_equal(r, 1);
        assert_string_equal(b->opts.socket, "/tmp/f.sock");

        /* The last one wins. */
        r = PARSE(b, "-s", "/tmp/1", "status", "-s", "/tmp/2");
        assert_int_equal(r, 1);
        assert_string_equal(b->opts.socket, "/tmp/2");

        /* Between the arguments of call. */
        r = PARSE(b, "call", "M", "-s", "/tmp/g.sock", "{}");
        assert_int_equal(r, 1);
        assert_string_equal(b->opts.socket, "/tmp/g.sock");
        assert_int_equal(b->opts.n_args, 2);
        assert_string_equal(b->opts.args[0], "M");
        assert_string_equal(b->opts.args[1], "{}");

        /* Empty paths are refused. */
        r = PARSE(b, "-s", "", "status");
        expect_usage_error(b, r, "--socket needs a path", NULL);
        r = PARSE(b, "--socket=", "status");
        expect_usage_error(b, r, "--socket needs a path", NULL);
        r = PARSE(b, "status", "-s", "");
        expect_usage_error(b, r, "--socket needs a path", NULL);

        /* Missing argument. */
        r = PARSE(b, "status", "-s");
        expect_usage_error(b, r, "missing argument", "-s");
        r = PARSE(b, "status", "--socket");
        expect_usage_error(b, r, "missing argument", "--socket");
}

static void test_timeout_option(void **state) {
        argv_buf *b = *state;
        int r;

        r = PARSE(b, "--timeout", "2.5", "status");
        assert_int_equal(r, 1);
        assert_int_equal(b->opts.timeout_usec, 2500000);

        r = PARSE(b, "status", "--timeout=2.5");
        assert_int_equal(r, 1);
        assert_int_equal(b->opts.timeout_usec, 2500000);

        r = PARSE(b, "-t", "0", "ping");
        assert_int_equal(r, 1);
        assert_int_equal(b->opts.timeout_usec, 0);

        r = PARSE(b, "ping", "-t7");
        assert_int_equal(r, 1);
        assert_int_equal(b->opts.timeout_usec, 7000000);

        r = PARSE(b, "-t", "86400", "ping");
        assert_int_equal(r, 1);
        assert_int_equal(b->opts.timeout_usec, UINT64_C(86400000000));

        /* A tiny positive timeout does not become 0 ("forever"). */
        r = PARSE(b, "-t", "1e-9", "ping");
        assert_int_equal(r, 1);
        assert_int_equal(b->opts.timeout_usec, 1);

        r = PARSE(b, "-t", "0.001", "ping");
        assert_int_equal(r, 1);
        assert_int_equal(b->opts.timeout_usec, 1000);

        static const char *const bad[] = {"-1", "abc", "1e9", "86401", "", "1s", "nan", "inf", "-0.5", "2.5x"};
        for (size_t i = 0; i < sizeof(bad) / sizeof(bad[0]); i++) {
                char want[64];
                snprintf(want, sizeof(want), "invalid timeout '%s'", bad[i]);
                r = PARSE(b, "-t", bad[i], "status");
                expect_usage_error(b, r, want, NULL);
                r = PARSE(b, "status", "-t", bad[i]);
                expect_usage_error(b, r, want, NULL);
        }
}

static void test_json_option(void **state) {
        argv_buf *b = *state;
        int r;

        r = PARSE(b, "status", "--json");
        assert_int_equal(r, 1);
        assert_true(b->opts.json);
        assert_int_equal(b->opts.n_args, 0);

        r = PARSE(b, "--json", "status");
        assert_int_equal(r, 1);
        assert_true(b->opts.json);
        assert_ptr_equal(b->opts.command, &ctl_cmd_status);

        r = PARSE(b, "ping", "--json");
        assert_int_equal(r, 1);
        assert_true(b->opts.json);

        /* call prints JSON anyway and has no --json, wherever it is. */
        r = PARSE(b, "call", "M", "--json");
        expect_usage_error(b, r, "--json", "does not apply");
        r = PARSE(b, "call", "--json", "M");
        expect_usage_error(b, r, "--json", "does not apply");
        r = PARSE(b, "--json", "call", "M");
        expect_usage_error(b, r, "--json", "does not apply");
}

static void test_call_arguments(void **state) {
        argv_buf *b = *state;
        int r;

        r = PARSE(b, "call");
        expect_usage_error(b, r, "usage", "METHOD");
        assert_non_null(strstr(b->error, "call"));

        r = PARSE(b, "call", "io.gpuhost.GetStatus");
        assert_int_equal(r, 1);
        assert_int_equal(b->opts.n_args, 1);
        assert_string_equal(b->opts.args[0], "io.gpuhost.GetStatus");

        r = PARSE(b, "call", "io.gpuhost.Ping", "{\"a\": 1}");
        assert_int_equal(r, 1);
        assert_int_equal(b->opts.n_args, 2);
        assert_string_equal(b->opts.args[0], "io.gpuhost.Ping");
        assert_string_equal(b->opts.args[1], "{\"a\": 1}");

        r = PARSE(b, "call", "M", "{}", "extra");
        expect_usage_error(b, r, "too many arguments", "call");

        /* Options and arguments interleaved, global ones too. */
        r = PARSE(b, "-t", "3", "call", "--more", "M", "-s", "/tmp/s", "{}");
        assert_int_equal(r, 1);
        assert_true(b->opts.more);
        assert_int_equal(b->opts.timeout_usec, 3000000);
        assert_string_equal(b->opts.socket, "/tmp/s");
        assert_int_equal(b->opts.n_args, 2);
        assert_string_equal(b->opts.args[0], "M");
        assert_string_equal(b->opts.args[1], "{}");

        /* "--" ends the options. */
        r = PARSE(b, "call", "--", "M", "{}");
        assert_int_equal(r, 1);
        assert_int_equal(b->opts.n_args, 2);
        assert_string_equal(b->opts.args[0], "M");
        assert_string_equal(b->opts.args[1], "{}");
}

static void test_more_oneway(void **state) {
        argv_buf *b = *state;
        int r;

        r = PARSE(b, "call", "--more", "M", "{}");
        assert_int_equal(r, 1);
        assert_true(b->opts.more);
        assert_false(b->opts.oneway);
        assert_int_equal(b->opts.n_args, 2);
        assert_string_equal(b->opts.args[0], "M");
        assert_string_equal(b->opts.args[1], "{}");

        r = PARSE(b, "call", "M", "{}", "--more");
        assert_int_equal(r, 1);
        assert_true(b->opts.more);
        assert_int_equal(b->opts.n_args, 2);
        assert_string_equal(b->opts.args[0], "M");
        assert_string_equal(b->opts.args[1], "{}");

        r = PARSE(b, "call", "M", "--oneway");
        assert_int_equal(r, 1);
        assert_true(b->opts.oneway);
        assert_false(b->opts.more);
        assert_int_equal(b->opts.n_args, 1);

        r = PARSE(b, "call", "--more", "--oneway", "M");
        expect_usage_error(b, r, "--more and --oneway", "exclude");
        r = PARSE(b, "call", "--oneway", "M", "{}", "--more");
        expect_usage_error(b, r, "--more and --oneway", NULL);

        /* Not for the other commands, before or after the command. */
        r = PARSE(b, "status", "--oneway");
        expect_usage_error(b, r, "'--oneway' does not apply", NULL);
        r = PARSE(b, "--oneway", "status");
        expect_usage_error(b, r, "'--oneway' does not apply", NULL);
        r = PARSE(b, "ping", "--more");
        expect_usage_error(b, r, "'--more' does not apply", NULL);
        r = PARSE(b, "--more", "reload");
        expect_usage_error(b, r, "'--more' does not apply", NULL);

        /* ... but before "call" they are fine. */
        r = PARSE(b, "--more", "call", "M");
        assert_int_equal(r, 1);
        assert_true(b->opts.more);
        assert_int_equal(b->opts.n_args, 1);
        assert_string_equal(b->opts.args[0], "M");
}

static void test_devices_models(void **state) {
        argv_buf *b = *state;
        int r;

        r = PARSE(b, "devices", "--json");
        assert_int_equal(r, 1);
        assert_ptr_equal(b->opts.command, &ctl_cmd_devices);
        assert_true(b->opts.json);
        assert_int_equal(b->opts.n_args, 0);

        r = PARSE(b, "--json", "models");
        assert_int_equal(r, 1);
        assert_ptr_equal(b->opts.command, &ctl_cmd_models);
        assert_true(b->opts.json);

        r = PARSE(b, "help", "devices");
        assert_int_equal(r, 0);
        assert_ptr_equal(b->opts.command, &ctl_cmd_devices);
        r = PARSE(b, "models", "--help");
        assert_int_equal(r, 0);
        assert_true(b->opts.help);
        assert_ptr_equal(b->opts.command, &ctl_cmd_models);

        /* Neither takes --device, --more or --oneway. */
        r = PARSE(b, "devices", "--device", "0");
        expect_usage_error(b, r, "'--device' does not apply", NULL);
        r = PARSE(b, "models", "-d", "0");
        expect_usage_error(b, r, "'-d' does not apply", NULL);
        r = PARSE(b, "devices", "--more");
        expect_usage_error(b, r, "'--more' does not apply", NULL);
}

static void test_model_command(void **state) {
        argv_buf *b = *state;
        static const char *const actions[] = {"load", "unload", "pin", "unpin"};
        int r;

        for (size_t i = 0; i < sizeof(actions) / sizeof(actions[0]); i++) {
                r = PARSE(b, "model", actions[i], "sd15");
                expect_plain_command(b, r, &ctl_cmd_model);
                assert_int_equal(b->opts.n_args, 2);
                assert_string_equal(b->opts.args[0], actions[i]);
                assert_string_equal(b->opts.args[1], "sd15");

                r = PARSE(b, "model", actions[i], "sd15", "--json");
                assert_int_equal(r, 1);
                assert_true(b->opts.json);

                /* The name is required... */
                r = PARSE(b, "model", actions[i]);
                expect_usage_error(b, r, "missing model name", actions[i]);
                /* ... and there is only one. */
                r = PARSE(b, "model", actions[i], "a", "b");
                expect_usage_error(b, r, "too many arguments", "model");
        }

        /* No action at all. */
        r = PARSE(b, "model");
        expect_usage_error(b, r, "missing arguments", "ACTION NAME");

        /* An unknown action names the valid ones, whatever follows it. */
        r = PARSE(b, "model", "frobnicate", "x");
        expect_usage_error(b, r, "unknown action 'frobnicate'", "load, unload, pin, unpin");
        r = PARSE(b, "model", "frobnicate");
        expect_usage_error(b, r, "unknown action 'frobnicate'", "load, unload, pin, unpin");
        r = PARSE(b, "model", "Load", "x");
        expect_usage_error(b, r, "unknown action 'Load'", NULL);
        r = PARSE(b, "model", "", "x");
        expect_usage_error(b, r, "unknown action ''", NULL);
        r = PARSE(b, "model", "sd15", "load"); /* the action comes first */
        expect_usage_error(b, r, "unknown action 'sd15'", NULL);

        /* Help does not need a valid action. */
        r = PARSE(b, "model", "--help");
        assert_int_equal(r, 0);
        assert_true(b->opts.help);
        assert_ptr_equal(b->opts.command, &ctl_cmd_model);
        r = PARSE(b, "model", "frobnicate", "-h");
        assert_int_equal(r, 0);
        assert_ptr_equal(b->opts.command, &ctl_cmd_model);
        r = PARSE(b, "help", "model");
        assert_int_equal(r, 0);
        assert_ptr_equal(b->opts.command, &ctl_cmd_model);

        /* Options between the arguments, a "--" before a name that looks
         * like an option. */
        r = PARSE(b, "model", "-t", "5", "load", "--json", "sd15");
        assert_int_equal(r, 1);
        assert_int_equal(b->opts.timeout_usec, 5000000);
        assert_true(b->opts.json);
        assert_string_equal(b->opts.args[0], "load");
        assert_string_equal(b->opts.args[1], "sd15");
        r = PARSE(b, "model", "unload", "--", "-odd-name");
        assert_int_equal(r, 1);
        assert_int_equal(b->opts.n_args, 2);
        assert_string_equal(b->opts.args[1], "-odd-name");

        /* Not for the model command: --more, --oneway. */
        r = PARSE(b, "model", "load", "x", "--more");
        expect_usage_error(b, r, "'--more' does not apply", NULL);
        r = PARSE(b, "--oneway", "model", "load", "x");
        expect_usage_error(b, r, "'--oneway' does not apply", NULL);
}

static void test_device_option(void **state) {
        argv_buf *b = *state;
        int r;

        /* Every form and position. */
        r = PARSE(b, "model", "load", "sd15", "--device", "1");
        assert_int_equal(r, 1);
        assert_ptr_equal(b->opts.command, &ctl_cmd_model);
        assert_int_equal(b->opts.device, 1);
        assert_int_equal(b->opts.n_args, 2); /* the index is not an argument */
        assert_string_equal(b->opts.args[1], "sd15");

        r = PARSE(b, "model", "load", "sd15", "--device=0");
        assert_int_equal(r, 1);
        assert_int_equal(b->opts.device, 0);

        r = PARSE(b, "model", "unload", "-d", "2", "sd15");
        assert_int_equal(r, 1);
        assert_int_equal(b->opts.device, 2);
        assert_int_equal(b->opts.n_args, 2);
        assert_string_equal(b->opts.args[0], "unload");
        assert_string_equal(b->opts.args[1], "sd15");

        r = PARSE(b, "model", "-d7", "load", "sd15");
        assert_int_equal(r, 1);
        assert_int_equal(b->opts.device, 7);
        assert_int_equal(b->opts.n_args, 2);

        r = PARSE(b, "-d", "3", "model", "load", "sd15");
        assert_int_equal(r, 1);
        assert_int_equal(b->opts.device, 3);

        r = PARSE(b, "--device", "2147483647", "model", "load", "sd15");
        assert_int_equal(r, 1);
        assert_int_equal(b->opts.device, 2147483647);

        r = PARSE(b, "model", "load", "sd15", "-d", "1", "-d", "4"); /* the last one wins */
        assert_int_equal(r, 1);
        assert_int_equal(b->opts.device, 4);

        /* Not given: -1. */
        r = PARSE(b, "model", "load", "sd15");
        assert_int_equal(r, 1);
        assert_int_equal(b->opts.device, -1);

        /* Negative, non-numeric, empty, out of range: before or after the
         * command, the value is named. */
        static const char *const bad[] = {"-1", "-0", "abc", "", "1x", "0x1", "+1", " 1", "1.5",
                                          "2147483648", "99999999999999999999"};
        for (size_t i = 0; i < sizeof(bad) / sizeof(bad[0]); i++) {
                char want[64];
                snprintf(want, sizeof(want), "invalid device '%s'", bad[i]);
                r = PARSE(b, "model", "load", "sd15", "--device", bad[i]);
                expect_usage_error(b, r, want, NULL);
                r = PARSE(b, "-d", bad[i], "model", "load", "sd15");
                expect_usage_error(b, r, want, NULL);
        }
        r = PARSE(b, "model", "load", "sd15", "--device=-5");
        expect_usage_error(b, r, "invalid device '-5'", NULL);

        /* Missing argument. */
        r = PARSE(b, "model", "load", "sd15", "--device");
        expect_usage_error(b, r, "missing argument", "--device");
        r = PARSE(b, "model", "load", "sd15", "-d");
        expect_usage_error(b, r, "missing argument", "-d");

        /* Refused by commands that do not take it, before or after the
         * command, and by the actions that have no device. */
        r = PARSE(b, "status", "--device", "0");
        expect_usage_error(b, r, "'--device' does not apply", NULL);
        r = PARSE(b, "status", "-d", "0");
        expect_usage_error(b, r, "'-d' does not apply", NULL);
        r = PARSE(b, "--device", "0", "status");
        expect_usage_error(b, r, "'--device' does not apply", NULL);
        r = PARSE(b, "-d", "1", "ping");
        expect_usage_error(b, r, "'--device' does not apply", NULL);
        r = PARSE(b, "call", "M", "--device=1");
        expect_usage_error(b, r, "'--device=1' does not apply", NULL);
        r = PARSE(b, "model", "pin", "sd15", "--device", "0");
        expect_usage_error(b, r, "'--device' does not apply to 'model pin'", NULL);
        r = PARSE(b, "-d", "0", "model", "unpin", "sd15");
        expect_usage_error(b, r, "'--device' does not apply to 'model unpin'", NULL);

        /* An invalid value for a command without the option: the option
         * is refused first. */
        r = PARSE(b, "status", "--device", "abc");
        expect_usage_error(b, r, "'--device' does not apply", NULL);
}

static void test_unknown_options(void **state) {
        argv_buf *b = *state;
        int r;

        r = PARSE(b, "--bogus", "status");
        expect_usage_error(b, r, "unknown option", "'--bogus'");
        r = PARSE(b, "status", "--bogus");
        expect_usage_error(b, r, "unknown option", "'--bogus'");
        r = PARSE(b, "call", "M", "--bogus=1");
        expect_usage_error(b, r, "unknown option", "--bogus");
        r = PARSE(b, "-x", "status");
        expect_usage_error(b, r, "unknown option", "-x");
        r = PARSE(b, "status", "-x");
        expect_usage_error(b, r, "unknown option", "-x");
        /* an option that takes no value, given one */
        r = PARSE(b, "status", "--json=yes");
        expect_usage_error(b, r, "unknown option", "--json=yes");
        /* the bad one inside a group of short options is named, not
         * whatever argument preceded it */
        r = PARSE(b, "-xh", "status");
        expect_usage_error(b, r, "unknown option", "-x");
        r = PARSE(b, "status", "-hx");
        expect_usage_error(b, r, "unknown option", "x");
        assert_null(strstr(b->error, "status"));
        assert_null(strstr(b->error, "gpuhostctl"));
}

static void test_parse_twice(void **state) {
        argv_buf *b = *state;
        int r;

        r = PARSE(b, "-s", "/tmp/one", "-t", "1", "call", "--more", "A", "{}");
        assert_int_equal(r, 1);
        assert_string_equal(b->opts.args[0], "A");

        /* A fresh parse starts from scratch: nothing carries over. */
        r = PARSE(b, "status");
        expect_plain_command(b, r, &ctl_cmd_status);
        assert_int_equal(b->opts.n_args, 0);

        r = PARSE(b, "call", "B");
        expect_plain_command(b, r, &ctl_cmd_call);
        assert_int_equal(b->opts.n_args, 1);
        assert_string_equal(b->opts.args[0], "B");

        /* After an error in the middle of a group of short options, the
         * next parse is not confused by getopt's leftover position (which
         * still points at the "h" of "-xh": keep that argv alive, so a
         * missing reset would turn "ping" into a request for help). */
        argv_buf *b2 = calloc(1, sizeof(argv_buf));
        assert_non_null(b2);
        r = PARSE(b, "-xh", "status");
        assert_int_equal(r, -EINVAL);
        r = PARSE(b2, "ping");
        expect_plain_command(b2, r, &ctl_cmd_ping);
        argv_buf_free(b2);
        free(b2);
        r = PARSE(b, "status", "-t");
        assert_int_equal(r, -EINVAL);
        r = PARSE(b, "-t", "4", "status");
        assert_int_equal(r, 1);
        assert_int_equal(b->opts.timeout_usec, 4000000);
        assert_false(b->opts.json);

        /* The same argv contents many times. */
        for (int i = 0; i < 5; i++) {
                r = PARSE(b, "call", "M", "{}", "--oneway");
                assert_int_equal(r, 1);
                assert_true(b->opts.oneway);
                assert_int_equal(b->opts.n_args, 2);
                assert_string_equal(b->opts.args[1], "{}");
        }
}

/* ---- pipelines, workers, worker, plugin ---------------------------------- */

static void test_pipelines_workers(void **state) {
        argv_buf *b = *state;
        int r;

        r = PARSE(b, "pipelines");
        expect_plain_command(b, r, &ctl_cmd_pipelines);
        assert_int_equal(b->opts.n_args, 0);

        r = PARSE(b, "pipelines", "sd15");
        expect_plain_command(b, r, &ctl_cmd_pipelines);
        assert_int_equal(b->opts.n_args, 1);
        assert_string_equal(b->opts.args[0], "sd15");

        r = PARSE(b, "pipelines", "--json", "sd15");
        assert_int_equal(r, 1);
        assert_true(b->opts.json);
        assert_string_equal(b->opts.args[0], "sd15");

        r = PARSE(b, "pipelines", "a", "b");
        expect_usage_error(b, r, "too many arguments", "pipelines");

        r = PARSE(b, "--json", "workers");
        assert_int_equal(r, 1);
        assert_ptr_equal(b->opts.command, &ctl_cmd_workers);
        assert_true(b->opts.json);

        /* Options they do not take. */
        r = PARSE(b, "pipelines", "--device", "0");
        expect_usage_error(b, r, "'--device' does not apply", NULL);
        r = PARSE(b, "workers", "-o", "x");
        expect_usage_error(b, r, "'-o' does not apply", NULL);
        r = PARSE(b, "pipelines", "--param", "a=b");
        expect_usage_error(b, r, "'--param' does not apply", NULL);
        r = PARSE(b, "workers", "--quiet");
        expect_usage_error(b, r, "'--quiet' does not apply", NULL);
}

static void test_worker_command(void **state) {
        argv_buf *b = *state;
        int r;

        r = PARSE(b, "worker", "restart", "3");
        expect_plain_command(b, r, &ctl_cmd_worker);
        assert_int_equal(b->opts.n_args, 2);
        assert_string_equal(b->opts.args[0], "restart");
        assert_string_equal(b->opts.args[1], "3");

        r = PARSE(b, "worker", "restart", "0", "--json");
        assert_int_equal(r, 1);
        assert_true(b->opts.json);

        r = PARSE(b, "worker");
        expect_usage_error(b, r, "missing arguments", "ACTION ID");
        r = PARSE(b, "worker", "restart");
        expect_usage_error(b, r, "missing worker id", "worker restart ID");
        r = PARSE(b, "worker", "restart", "1", "2");
        expect_usage_error(b, r, "too many arguments", "worker");
        r = PARSE(b, "worker", "stop", "1");
        expect_usage_error(b, r, "unknown action 'stop' for 'worker'", "restart");
        r = PARSE(b, "worker", "1", "restart");
        expect_usage_error(b, r, "unknown action '1'", NULL);

        static const char *const bad[] = {"abc", "", "1x", "+1", " 1", "1.5", "99999999999999999999"};
        for (size_t i = 0; i < sizeof(bad) / sizeof(bad[0]); i++) {
                char want[64];
                snprintf(want, sizeof(want), "invalid worker id '%s'", bad[i]);
                r = PARSE(b, "worker", "restart", bad[i]);
                expect_usage_error(b, r, want, NULL);
        }
        r = PARSE(b, "worker", "restart", "--", "-1");
        expect_usage_error(b, r, "invalid worker id '-1'", NULL);
        r = PARSE(b, "worker", "restart", "-1"); /* an option, to getopt */
        expect_usage_error(b, r, "unknown option", "-1");

        r = PARSE(b, "worker", "restart", "1", "--device", "0");
        expect_usage_error(b, r, "'--device' does not apply", NULL);
        r = PARSE(b, "worker", "--help");
        assert_int_equal(r, 0);
        assert_ptr_equal(b->opts.command, &ctl_cmd_worker);
}

static void test_plugin_command(void **state) {
        argv_buf *b = *state;
        int r;

        r = PARSE(b, "plugin", "enable", "sd15");
        expect_plain_command(b, r, &ctl_cmd_plugin);
        assert_int_equal(b->opts.n_args, 2);
        assert_string_equal(b->opts.args[0], "enable");
        assert_string_equal(b->opts.args[1], "sd15");

        r = PARSE(b, "--json", "plugin", "enable", "sd15");
        assert_int_equal(r, 1);
        assert_true(b->opts.json);

        r = PARSE(b, "plugin");
        expect_usage_error(b, r, "missing arguments", "ACTION NAME");
        r = PARSE(b, "plugin", "enable");
        expect_usage_error(b, r, "missing pipeline name", "plugin enable NAME");
        r = PARSE(b, "plugin", "disable", "sd15");
        expect_usage_error(b, r, "unknown action 'disable' for 'plugin'", "enable");
        r = PARSE(b, "plugin", "Enable", "sd15");
        expect_usage_error(b, r, "unknown action 'Enable'", NULL);
        r = PARSE(b, "plugin", "enable", "a", "b");
        expect_usage_error(b, r, "too many arguments", "plugin");
        r = PARSE(b, "plugin", "enable", "a", "-d", "0");
        expect_usage_error(b, r, "'-d' does not apply", NULL);
}

/* ---- generate: the command line ------------------------------------------ */

static void test_generate_args(void **state) {
        argv_buf *b = *state;
        int r;

        r = PARSE(b, "generate", "sd15");
        expect_plain_command(b, r, &ctl_cmd_generate);
        assert_int_equal(b->opts.n_args, 1);
        assert_string_equal(b->opts.args[0], "sd15");

        r = PARSE(b, "generate");
        expect_usage_error(b, r, "missing arguments", "PIPELINE");
        r = PARSE(b, "generate", "a", "b");
        expect_usage_error(b, r, "too many arguments", "generate");

        /* Every option, between the arguments, in both forms. */
        r = PARSE(b, "generate", "--param", "steps=20", "sd15", "--param=prompt=a cat", "--model", "sd15-f16", "-o",
                  "out.png", "-q", "-d", "1", "--json");
        assert_int_equal(r, 1);
        assert_ptr_equal(b->opts.command, &ctl_cmd_generate);
        assert_int_equal(b->opts.n_args, 1);
        assert_string_equal(b->opts.args[0], "sd15");
        assert_int_equal(b->opts.n_params, 2);
        assert_string_equal(b->opts.params[0], "steps=20");
        assert_string_equal(b->opts.params[1], "prompt=a cat");
        assert_string_equal(b->opts.model, "sd15-f16");
        assert_string_equal(b->opts.output, "out.png");
        assert_true(b->opts.quiet);
        assert_true(b->opts.json);
        assert_int_equal(b->opts.device, 1);
        assert_false(b->opts.timeout_given);

        r = PARSE(b, "--quiet", "--output=x.bin", "--model=m", "--param", "a=", "generate", "p");
        assert_int_equal(r, 1);
        assert_true(b->opts.quiet);
        assert_string_equal(b->opts.output, "x.bin");
        assert_string_equal(b->opts.model, "m");
        assert_int_equal(b->opts.n_params, 1);
        assert_string_equal(b->opts.params[0], "a="); /* an empty value is a value */

        /* A value may hold '='; the key ends at the first. */
        r = PARSE(b, "generate", "p", "--param", "prompt=x=y");
        assert_int_equal(r, 1);
        assert_string_equal(b->opts.params[0], "prompt=x=y");

        /* -t is noted: generate waits forever without it. */
        r = PARSE(b, "generate", "p", "-t", "30");
        assert_int_equal(r, 1);
        assert_true(b->opts.timeout_given);
        assert_int_equal(b->opts.timeout_usec, 30000000);

        /* --param without '=', or without a key. */
        r = PARSE(b, "generate", "p", "--param", "steps");
        expect_usage_error(b, r, "invalid --param 'steps'", "KEY=VALUE");
        r = PARSE(b, "generate", "p", "--param=");
        expect_usage_error(b, r, "invalid --param ''", NULL);
        r = PARSE(b, "generate", "p", "--param", "=5");
        expect_usage_error(b, r, "invalid --param '=5'", NULL);
        r = PARSE(b, "--param", "x", "generate", "p");
        expect_usage_error(b, r, "invalid --param 'x'", NULL);
        r = PARSE(b, "generate", "p", "--param");
        expect_usage_error(b, r, "missing argument", "--param");
        r = PARSE(b, "generate", "p", "--model");
        expect_usage_error(b, r, "missing argument", "--model");
        r = PARSE(b, "generate", "p", "--output");
        expect_usage_error(b, r, "missing argument", "--output");

        /* Empty names. */
        r = PARSE(b, "generate", "p", "--model", "");
        expect_usage_error(b, r, "--model needs a model name", NULL);
        r = PARSE(b, "generate", "p", "-o", "");
        expect_usage_error(b, r, "--output needs a file name", NULL);
        r = PARSE(b, "generate", "p", "-o");
        expect_usage_error(b, r, "missing argument", "-o");

        /* At most CTL_MAX_PARAMS. */
        {
                char *argv[2 * CTL_MAX_PARAMS + 8];
                int argc = 0;
                argv[argc++] = "gpuhostctl";
                argv[argc++] = "generate";
                argv[argc++] = "p";
                for (int i = 0; i <= CTL_MAX_PARAMS; i++) {
                        argv[argc++] = "--param";
                        argv[argc++] = "k=v";
                }
                argv[argc] = NULL;
                ctl_opts o;
                const char *error = NULL;
                r = ctl_parse_args(argc, argv, &o, &error);
                assert_int_equal(r, -EINVAL);
                assert_non_null(strstr(error, "too many --param"));
                r = ctl_parse_args(argc - 2, argv, &o, &error);
                assert_int_equal(r, 1);
                assert_int_equal(o.n_params, CTL_MAX_PARAMS);
        }

        /* Not for generate: --more, --oneway. */
        r = PARSE(b, "generate", "p", "--more");
        expect_usage_error(b, r, "'--more' does not apply", NULL);

        /* Not for the other commands, before or after them. */
        r = PARSE(b, "status", "--param", "a=b");
        expect_usage_error(b, r, "'--param' does not apply", NULL);
        r = PARSE(b, "--param", "a=b", "status");
        expect_usage_error(b, r, "'--param' does not apply", NULL);
        r = PARSE(b, "--model", "m", "model", "load", "m");
        expect_usage_error(b, r, "'--model' does not apply", NULL);
        r = PARSE(b, "-o", "f", "models");
        expect_usage_error(b, r, "'--output' does not apply", NULL);
        r = PARSE(b, "-q", "call", "M");
        expect_usage_error(b, r, "'--quiet' does not apply", NULL);
        r = PARSE(b, "call", "M", "--output=f");
        expect_usage_error(b, r, "'--output=f' does not apply", NULL);

        r = PARSE(b, "generate", "--help");
        assert_int_equal(r, 0);
        assert_ptr_equal(b->opts.command, &ctl_cmd_generate);
}

/* ---- generate: parameters ------------------------------------------------- */

static const char param_table_json[] =
        "[{\"name\": \"prompt\", \"type\": \"string\", \"help\": \"what to draw\", \"required\": true,"
        "  \"max_length\": 512},"
        " {\"name\": \"steps\", \"type\": \"int\", \"help\": \"\", \"required\": false, \"min\": 1, \"max\": 150,"
        "  \"default\": 20},"
        " {\"name\": \"cfg\", \"type\": \"float\", \"help\": \"\", \"required\": false, \"min\": 0.5, \"max\": 30.0,"
        "  \"default\": 7.5},"
        " {\"name\": \"tiling\", \"type\": \"bool\", \"help\": \"\", \"required\": false, \"default\": false},"
        " {\"name\": \"sampler\", \"type\": \"enum\", \"help\": \"\", \"required\": false,"
        "  \"choices\": [\"euler\", \"ddim\", \"dpm++\"], \"default\": \"euler\"},"
        " {\"name\": \"model\", \"type\": \"model\", \"help\": \"\", \"required\": true},"
        " {\"name\": \"init\", \"type\": \"image\", \"help\": \"\", \"required\": false},"
        " {\"name\": \"odd\", \"type\": \"tensor\", \"help\": \"\", \"required\": false}]";

typedef struct convert_fixture {
        json_object *table, *params;
        ctl_fds fds;
        char dir[64];
} convert_fixture;

static int setup_convert(void **state) {
        convert_fixture *f = calloc(1, sizeof(*f));

        if (!f)
                return -1;
        f->table = json_tokener_parse(param_table_json);
        f->params = json_object_new_object();
        snprintf(f->dir, sizeof(f->dir), "/tmp/test-ctl-args.XXXXXX");
        if (!f->table || !f->params || !mkdtemp(f->dir))
                return -1;
        *state = f;
        return 0;
}

static void remove_dir(const char *dir) {
        char cmd[128];

        snprintf(cmd, sizeof(cmd), "rm -rf '%s'", dir);
        if (system(cmd) != 0)
                print_error("cannot remove %s\n", dir);
}

static int teardown_convert(void **state) {
        convert_fixture *f = *state;

        ctl_fds_close(&f->fds);
        json_object_put(f->table);
        json_object_put(f->params);
        remove_dir(f->dir);
        free(f);
        return 0;
}

/* Converts |arg|; expects |want_r|, and for an error, |want_msg| in it. */
static void expect_convert(convert_fixture *f, const char *arg, int want_r, const char *want_msg) {
        const char *error = NULL;
        int r = ctl_param_convert(f->table, arg, f->params, &f->fds, &error);

        if (r != want_r || (want_msg && (!error || !strstr(error, want_msg))))
                print_error("'%s': r=%d error='%s', wanted %d ~'%s'\n", arg, r, error ? error : "(null)", want_r,
                            want_msg ? want_msg : "");
        assert_int_equal(r, want_r);
        if (want_msg) {
                assert_non_null(error);
                assert_non_null(strstr(error, want_msg));
        }
}

static json_object *param(convert_fixture *f, const char *key) {
        json_object *v = NULL;

        assert_true(json_object_object_get_ex(f->params, key, &v));
        return v;
}

static void test_param_convert_types(void **state) {
        convert_fixture *f = *state;
        json_object *v;

        expect_convert(f, "steps=20", 0, NULL);
        v = param(f, "steps");
        assert_true(json_object_is_type(v, json_type_int));
        assert_int_equal(json_object_get_int64(v), 20);

        expect_convert(f, "cfg=7.5", 0, NULL);
        v = param(f, "cfg");
        assert_true(json_object_is_type(v, json_type_double));
        assert_true(json_object_get_double(v) == 7.5);

        expect_convert(f, "tiling=yes", 0, NULL);
        v = param(f, "tiling");
        assert_true(json_object_is_type(v, json_type_boolean));
        assert_true(json_object_get_boolean(v));

        expect_convert(f, "sampler=dpm++", 0, NULL);
        assert_string_equal(json_object_get_string(param(f, "sampler")), "dpm++");

        /* A string keeps its '=' and blanks; an empty one is fine. */
        expect_convert(f, "prompt= a=b ", 0, NULL);
        v = param(f, "prompt");
        assert_true(json_object_is_type(v, json_type_string));
        assert_string_equal(json_object_get_string(v), " a=b ");

        expect_convert(f, "model=sd15", 0, NULL);
        v = param(f, "model");
        assert_true(json_object_is_type(v, json_type_string));
        assert_string_equal(json_object_get_string(v), "sd15");

        assert_int_equal(json_object_object_length(f->params), 6);
        assert_int_equal(f->fds.n, 0);

        /* Every spelling of a bool, in a fresh object each time. */
        static const struct {
                const char *value;
                bool want;
        } bools[] = {{"true", true}, {"false", false}, {"yes", true}, {"no", false},
                     {"1", true},    {"0", false},     {"TRUE", true}, {"No", false}};
        for (size_t i = 0; i < sizeof(bools) / sizeof(bools[0]); i++) {
                char arg[32];
                json_object_object_del(f->params, "tiling");
                snprintf(arg, sizeof(arg), "tiling=%s", bools[i].value);
                expect_convert(f, arg, 0, NULL);
                assert_int_equal(json_object_get_boolean(param(f, "tiling")), bools[i].want);
        }

        /* Numbers at their edges. */
        json_object_object_del(f->params, "steps");
        expect_convert(f, "steps=-9223372036854775808", 0, NULL);
        assert_true(json_object_get_int64(param(f, "steps")) == INT64_MIN);
        json_object_object_del(f->params, "steps");
        expect_convert(f, "steps=+7", 0, NULL);
        assert_int_equal(json_object_get_int64(param(f, "steps")), 7);
        json_object_object_del(f->params, "cfg");
        expect_convert(f, "cfg=1e-3", 0, NULL);
        assert_true(json_object_get_double(param(f, "cfg")) == 1e-3);
        json_object_object_del(f->params, "cfg");
        expect_convert(f, "cfg=3", 0, NULL);
        assert_true(json_object_is_type(param(f, "cfg"), json_type_double));
        assert_true(json_object_get_double(param(f, "cfg")) == 3.0);
}

static void test_param_convert_errors(void **state) {
        convert_fixture *f = *state;

        static const char *const bad_ints[] = {"12x", "", "x", " 12", "12 ", "1.5", "1e3", "0x10", "--1",
                                               "9223372036854775808"};
        for (size_t i = 0; i < sizeof(bad_ints) / sizeof(bad_ints[0]); i++) {
                char arg[64], want[64];
                snprintf(arg, sizeof(arg), "steps=%s", bad_ints[i]);
                snprintf(want, sizeof(want), "'%s' is not", bad_ints[i]);
                expect_convert(f, arg, -EINVAL, want);
        }
        expect_convert(f, "steps=12x", -EINVAL, "parameter 'steps' is an int");

        static const char *const bad_floats[] = {"nan", "NaN", "inf", "-inf", "1e999", "", "1.5x", "x", " 1"};
        for (size_t i = 0; i < sizeof(bad_floats) / sizeof(bad_floats[0]); i++) {
                char arg[64], want[64];
                snprintf(arg, sizeof(arg), "cfg=%s", bad_floats[i]);
                snprintf(want, sizeof(want), "'%s' is not a finite number", bad_floats[i]);
                expect_convert(f, arg, -EINVAL, want);
        }

        static const char *const bad_bools[] = {"maybe", "", "2", "y", "truex", "on"};
        for (size_t i = 0; i < sizeof(bad_bools) / sizeof(bad_bools[0]); i++) {
                char arg[64];
                snprintf(arg, sizeof(arg), "tiling=%s", bad_bools[i]);
                expect_convert(f, arg, -EINVAL, "is not one of true/false, yes/no, 1/0");
        }

        expect_convert(f, "sampler=Euler", -EINVAL, "'Euler' is not one of: euler, ddim, dpm++");
        expect_convert(f, "sampler=", -EINVAL, "is not one of");

        /* Unknown keys list the parameters with their types. */
        expect_convert(f, "seed=1", -ENOKEY, "unknown parameter 'seed'");
        expect_convert(f, "seed=1", -ENOKEY, "prompt (string), steps (int), cfg (float), tiling (bool)");
        expect_convert(f, "Steps=1", -ENOKEY, "'Steps'");
        expect_convert(f, "step=1", -ENOKEY, NULL);   /* no prefix matching */
        expect_convert(f, "stepss=1", -ENOKEY, NULL);

        /* Malformed arguments. */
        expect_convert(f, "steps", -EINVAL, "KEY=VALUE");
        expect_convert(f, "=1", -EINVAL, "KEY=VALUE");

        /* A type gpuhostctl does not know. */
        expect_convert(f, "odd=1", -EINVAL, "type 'tensor'");

        /* Images: only @FILE, and the file must be a PNG. */
        expect_convert(f, "init=raw", -EINVAL, "@FILE.png");
        expect_convert(f, "init=@", -EINVAL, "@FILE.png");
        expect_convert(f, "init=@/nonexistent/x.png", -ENOENT, "cannot open /nonexistent/x.png");
        {
                char path[128];
                snprintf(path, sizeof(path), "%s/not.png", f->dir);
                FILE *o = fopen(path, "w");
                assert_non_null(o);
                fputs("not a png at all", o);
                fclose(o);
                char arg[160];
                snprintf(arg, sizeof(arg), "init=@%s", path);
                expect_convert(f, arg, -EINVAL, "as a PNG file");
        }
        assert_int_equal(f->fds.n, 0);

        /* Nothing was added by the failures. */
        assert_int_equal(json_object_object_length(f->params), 0);

        /* Twice the same key. */
        expect_convert(f, "steps=1", 0, NULL);
        expect_convert(f, "steps=2", -EEXIST, "'steps' given twice");
        assert_int_equal(json_object_get_int64(param(f, "steps")), 1);

        /* No table at all: nothing is known. */
        const char *error = NULL;
        assert_int_equal(ctl_param_convert(NULL, "steps=1", f->params, &f->fds, &error), -ENOKEY);
        assert_non_null(strstr(error, "none"));
}

/* width x height pixels of |channels|, rows |stride| bytes apart, with a
 * pattern that differs per pixel and channel; padding bytes are 0xee. */
static uint8_t *make_pixels(uint32_t w, uint32_t h, unsigned channels, size_t stride) {
        uint8_t *p = malloc(stride * h);

        assert_non_null(p);
        memset(p, 0xee, stride * h);
        for (uint32_t y = 0; y < h; y++)
                for (uint32_t x = 0; x < w; x++)
                        for (unsigned c = 0; c < channels; c++)
                                p[y * stride + x * channels + c] = (uint8_t) (x * 7 + y * 13 + c * 61 + (x ^ y));
        return p;
}

/* Whether packed |got| holds the pixels of padded |want|. */
static void expect_same_pixels(const uint8_t *want, size_t want_stride, const uint8_t *got, uint32_t w, uint32_t h,
                               unsigned channels) {
        for (uint32_t y = 0; y < h; y++)
                assert_memory_equal(want + y * want_stride, got + (size_t) y * w * channels, (size_t) w * channels);
}

static void test_param_convert_image(void **state) {
        convert_fixture *f = *state;
        const uint32_t w = 13, h = 5;
        const size_t stride = w * 4 + 9;
        uint8_t *pixels = make_pixels(w, h, 4, stride);
        const char *error = NULL;
        char path[128], arg[160];

        snprintf(path, sizeof(path), "%s/init.png", f->dir);
        assert_int_equal(ctl_png_write(path, pixels, w, h, stride, 4, NULL, 0, &error), 0);
        snprintf(arg, sizeof(arg), "init=@%s", path);
        expect_convert(f, arg, 0, NULL);

        json_object *v = param(f, "init");
        assert_true(json_object_is_type(v, json_type_object));
        assert_int_equal(json_object_get_int(json_object_object_get(v, "fd")), 0);
        assert_int_equal(json_object_get_int(json_object_object_get(v, "width")), w);
        assert_int_equal(json_object_get_int(json_object_object_get(v, "height")), h);
        assert_string_equal(json_object_get_string(json_object_object_get(v, "format")), "rgba8");
        assert_int_equal(f->fds.n, 1);

        /* The memfd: packed pixels, sealed, close-on-exec. */
        int fd = f->fds.fd[0];
        struct stat st;
        assert_int_equal(fstat(fd, &st), 0);
        assert_int_equal(st.st_size, (off_t) w * h * 4);
        uint8_t *got = malloc((size_t) st.st_size);
        assert_non_null(got);
        assert_int_equal(pread(fd, got, (size_t) st.st_size, 0), st.st_size);
        expect_same_pixels(pixels, stride, got, w, h, 4);
        int seals = fcntl(fd, F_GET_SEALS);
        assert_true(seals >= 0);
        assert_true((seals & (F_SEAL_WRITE | F_SEAL_SHRINK | F_SEAL_GROW)) == (F_SEAL_WRITE | F_SEAL_SHRINK | F_SEAL_GROW));
        assert_true(fcntl(fd, F_GETFD) & FD_CLOEXEC);
        free(got);

        /* A second image parameter would get index 1; here the same key is
         * refused and no fd is added. */
        expect_convert(f, arg, -EEXIST, "given twice");
        assert_int_equal(f->fds.n, 1);

        /* An RGB file gives rgb8. */
        json_object_object_del(f->params, "init");
        free(pixels);
        pixels = make_pixels(w, h, 3, w * 3);
        assert_int_equal(ctl_png_write(path, pixels, w, h, w * 3, 3, NULL, 0, &error), 0);
        expect_convert(f, arg, 0, NULL);
        v = param(f, "init");
        assert_int_equal(json_object_get_int(json_object_object_get(v, "fd")), 1);
        assert_string_equal(json_object_get_string(json_object_object_get(v, "format")), "rgb8");
        assert_int_equal(f->fds.n, 2);
        assert_int_equal(fstat(f->fds.fd[1], &st), 0);
        assert_int_equal(st.st_size, (off_t) w * h * 3);
        free(pixels);

        /* No list of fds: images are refused. */
        json_object_object_del(f->params, "init");
        assert_int_equal(ctl_param_convert(f->table, arg, f->params, NULL, &error), -E2BIG);
}

/* ---- generate: outputs ----------------------------------------------------- */

static void expect_name(const char *file, const char *name, size_t index, const char *want) {
        char *got = ctl_output_file_name(file, name, index);

        assert_non_null(got);
        if (strcmp(got, want) != 0)
                print_error("'%s' + '%s' #%zu: got '%s', wanted '%s'\n", file, name ? name : "(null)", index, got,
                            want);
        assert_string_equal(got, want);
        free(got);
}

static void test_output_file_name(void **state) {
        expect_name("out.png", "image", 0, "out.png");
        expect_name("out.png", "frames", 1, "out-frames.png");
        expect_name("out.PNG", "mask", 3, "out-mask.PNG");
        expect_name("out", "frames", 1, "out-frames");
        expect_name("a.b.png", "x", 1, "a.b-x.png");
        expect_name("dir.d/out", "x", 1, "dir.d/out-x");
        expect_name("dir.d/out.png", "x", 1, "dir.d/out-x.png");
        expect_name("/tmp/.hidden", "x", 1, "/tmp/.hidden-x");
        expect_name(".png", "x", 1, ".png-x");
        expect_name("out.", "x", 1, "out-x.");
        /* Names cannot leave the directory or hold odd characters. */
        expect_name("out.png", "../../etc/passwd", 1, "out-.._.._etc_passwd.png");
        expect_name("out.png", "a b/c\n", 1, "out-a_b_c_.png");
        expect_name("out.png", "ok-name_1.2", 1, "out-ok-name_1.2.png");
        /* No name: the index. */
        expect_name("out.png", "", 2, "out-2.png");
        expect_name("out.png", NULL, 4, "out-4.png");
}

static void test_png_round_trip(void **state) {
        convert_fixture *f = *state;
        static const struct {
                uint32_t w, h;
                unsigned channels;
                size_t pad;
        } cases[] = {
                {64, 48, 3, 17}, {64, 48, 4, 3}, {1, 1, 3, 5}, {7, 3, 4, 0}, {33, 9, 3, 0},
        };

        for (size_t i = 0; i < sizeof(cases) / sizeof(cases[0]); i++) {
                uint32_t w = cases[i].w, h = cases[i].h, rw, rh;
                unsigned ch = cases[i].channels, rch;
                size_t stride = (size_t) w * ch + cases[i].pad;
                uint8_t *pixels = make_pixels(w, h, ch, stride), *got = NULL;
                const char *error = NULL;
                char path[128];

                snprintf(path, sizeof(path), "%s/rt%zu.png", f->dir, i);
                int r = ctl_png_write(path, pixels, w, h, stride, ch, NULL, 0, &error);
                if (r < 0)
                        print_error("%s\n", error);
                assert_int_equal(r, 0);
                r = ctl_png_read(path, &got, &rw, &rh, &rch, &error);
                if (r < 0)
                        print_error("%s\n", error);
                assert_int_equal(r, 0);
                assert_int_equal(rw, w);
                assert_int_equal(rh, h);
                assert_int_equal(rch, ch);
                expect_same_pixels(pixels, stride, got, w, h, ch);
                free(got);
                free(pixels);
        }

        /* Refused shapes. */
        uint8_t px[64] = {0};
        const char *error = NULL;
        char path[128];
        snprintf(path, sizeof(path), "%s/bad.png", f->dir);
        assert_int_equal(ctl_png_write(path, px, 4, 4, 11, 3, NULL, 0, &error), -EINVAL); /* stride < 4 * 3 */
        assert_int_equal(ctl_png_write(path, px, 0, 4, 12, 3, NULL, 0, &error), -EINVAL);
        assert_int_equal(ctl_png_write(path, px, 2, 2, 8, 2, NULL, 0, &error), -EINVAL); /* 2 channels */
        assert_int_equal(access(path, F_OK), -1);
        assert_int_equal(ctl_png_write("/nonexistent/x.png", px, 2, 2, 6, 3, NULL, 0, &error), -ENOENT);
        assert_non_null(strstr(error, "/nonexistent/x.png"));
}

/* A sealed-or-not memfd holding |size| bytes of |data|. */
static int memfd_with(const void *data, size_t size) {
        int fd = memfd_create("test-output", MFD_CLOEXEC);

        assert_true(fd >= 0);
        assert_int_equal(write(fd, data, size), (ssize_t) size);
        return fd;
}

static void expect_file(const char *path, const void *data, size_t size) {
        struct stat st;
        FILE *in = fopen(path, "rb");

        assert_non_null(in);
        assert_int_equal(fstat(fileno(in), &st), 0);
        assert_int_equal(st.st_size, (off_t) size);
        uint8_t *got = malloc(size + 1);
        assert_non_null(got);
        assert_int_equal(fread(got, 1, size + 1, in), size);
        assert_memory_equal(got, data, size);
        free(got);
        fclose(in);
}

static void expect_no_tmp(const char *path) {
        char tmp[256];

        snprintf(tmp, sizeof(tmp), "%s.tmp", path);
        assert_int_equal(access(tmp, F_OK), -1);
}

static void test_output_write(void **state) {
        convert_fixture *f = *state;
        const uint32_t w = 10, h = 6;
        const size_t stride = w * 3 + 6;
        uint8_t *pixels = make_pixels(w, h, 3, stride), *got = NULL;
        const char *error = NULL;
        char path[128], json[256];
        uint32_t rw, rh;
        unsigned rch;

        /* An rgb8 image to a .png name (any case): a PNG, rows by stride. */
        int fd = memfd_with(pixels, stride * h);
        snprintf(json, sizeof(json),
                 "{\"name\": \"image\", \"kind\": \"image\", \"fd\": 0, \"size\": %zu, \"width\": %u,"
                 " \"height\": %u, \"format\": \"rgb8\", \"stride\": %zu}",
                 stride * h, w, h, stride);
        json_object *out = json_tokener_parse(json);
        assert_non_null(out);
        snprintf(path, sizeof(path), "%s/out.PNG", f->dir);
        assert_int_equal(ctl_output_write(path, fd, out, NULL, 0, &error), 0);
        expect_no_tmp(path);
        assert_int_equal(ctl_png_read(path, &got, &rw, &rh, &rch, &error), 0);
        assert_int_equal(rw, w);
        assert_int_equal(rh, h);
        assert_int_equal(rch, 3);
        expect_same_pixels(pixels, stride, got, w, h, 3);
        free(got);

        /* The same output to another name: the raw bytes. */
        snprintf(path, sizeof(path), "%s/out.rgb", f->dir);
        assert_int_equal(ctl_output_write(path, fd, out, NULL, 0, &error), 0);
        expect_no_tmp(path);
        expect_file(path, pixels, stride * h);

        /* It replaces an existing file. */
        assert_int_equal(ctl_output_write(path, fd, out, NULL, 0, &error), 0);
        expect_file(path, pixels, stride * h);

        /* An image that does not fit its size is refused, and leaves no file. */
        json_object_object_add(out, "height", json_object_new_int((int) h + 1));
        snprintf(path, sizeof(path), "%s/bad.png", f->dir);
        assert_int_equal(ctl_output_write(path, fd, out, NULL, 0, &error), -EBADMSG);
        assert_non_null(strstr(error, "not a valid image"));
        assert_int_equal(access(path, F_OK), -1);
        expect_no_tmp(path);

        /* A size beyond the memfd. */
        json_object_object_add(out, "size", json_object_new_int64((int64_t) (stride * h) + 1));
        assert_int_equal(ctl_output_write(path, fd, out, NULL, 0, &error), -EBADMSG);
        assert_int_equal(access(path, F_OK), -1);
        json_object_put(out);
        close(fd);

        /* Bytes, and an rgb_f32 image: raw even to a .png name; only "size"
         * bytes of a larger memfd. */
        static const char bytes[] = "0123456789abcdef";
        fd = memfd_with(bytes, sizeof(bytes));
        out = json_tokener_parse("{\"name\": \"latents\", \"kind\": \"bytes\", \"fd\": 0, \"size\": 10}");
        snprintf(path, sizeof(path), "%s/x.png", f->dir);
        assert_int_equal(ctl_output_write(path, fd, out, NULL, 0, &error), 0);
        expect_file(path, bytes, 10);
        json_object_put(out);
        out = json_tokener_parse("{\"name\": \"hdr\", \"kind\": \"image\", \"fd\": 0, \"size\": 12, \"width\": 1,"
                                 " \"height\": 1, \"format\": \"rgb_f32\", \"stride\": 12}");
        assert_int_equal(ctl_output_write(path, fd, out, NULL, 0, &error), 0);
        expect_file(path, bytes, 12);

        /* An empty output. */
        json_object_object_add(out, "size", json_object_new_int(0));
        json_object_object_add(out, "kind", json_object_new_string("bytes"));
        snprintf(path, sizeof(path), "%s/empty", f->dir);
        assert_int_equal(ctl_output_write(path, fd, out, NULL, 0, &error), 0);
        expect_file(path, "", 0);

        /* A directory that does not exist. */
        assert_true(ctl_output_write("/nonexistent/dir/x.bin", fd, out, NULL, 0, &error) == -ENOENT);
        json_object_put(out);
        close(fd);
        free(pixels);
}

/* ---- pipelines: formatting -------------------------------------------------- */

static void test_pipeline_format(void **state) {
        json_object *table = json_tokener_parse(param_table_json);
        char buf[128];

        assert_non_null(table);
        static const struct {
                size_t index;
                const char *range, *def;
        } want[] = {
                {0, "max 512", "required"}, {1, "1..150", "20"}, {2, "0.5..30", "7.5"},
                {3, "-", "false"},          {4, "euler|ddim|dpm++", "euler"},
                {5, "-", "required"},       {6, "-", "-"},
        };
        for (size_t i = 0; i < sizeof(want) / sizeof(want[0]); i++) {
                json_object *p = json_object_array_get_idx(table, want[i].index);
                ctl_param_format_range(p, buf, sizeof(buf));
                assert_string_equal(buf, want[i].range);
                ctl_param_format_default(p, buf, sizeof(buf));
                assert_string_equal(buf, want[i].def);
        }
        json_object_put(table);

        json_object *p = json_tokener_parse("{\"name\": \"x\", \"type\": \"float\", \"min\": 0.25, \"max\": null,"
                                            " \"default\": {\"a\": 1}, \"required\": false}");
        ctl_param_format_range(p, buf, sizeof(buf));
        assert_string_equal(buf, "0.25..");
        ctl_param_format_default(p, buf, sizeof(buf));
        assert_string_equal(buf, "{\"a\":1}");
        json_object_put(p);
        p = json_tokener_parse("{\"name\": \"x\", \"type\": \"int\", \"max\": -3.0, \"default\": null}");
        ctl_param_format_range(p, buf, sizeof(buf));
        assert_string_equal(buf, "..-3");
        ctl_param_format_default(p, buf, sizeof(buf));
        assert_string_equal(buf, "null");
        json_object_put(p);

        /* ctl_pipeline_find */
        json_object *reply = json_tokener_parse("{\"pipelines\": [{\"name\": \"a\"}, {\"name\": \"sd15\"}],"
                                                " \"refused\": []}");
        assert_ptr_equal(ctl_pipeline_find(reply, "sd15"),
                         json_object_array_get_idx(json_object_object_get(reply, "pipelines"), 1));
        assert_null(ctl_pipeline_find(reply, "sd"));
        assert_null(ctl_pipeline_find(reply, "SD15"));
        json_object_put(reply);
        reply = json_tokener_parse("{}");
        assert_null(ctl_pipeline_find(reply, "a"));
        json_object_put(reply);
}

/* ---- generate: jobs ------------------------------------------------------- */

static void test_generate_job_options(void **state) {
        argv_buf *b = *state;
        int r;

        r = PARSE(b, "generate", "sd15", "--priority", "batch", "--deadline", "2.5", "--tag", "nightly run", "-o",
                  "x.png");
        assert_int_equal(r, 1);
        assert_ptr_equal(b->opts.command, &ctl_cmd_generate);
        assert_int_equal(b->opts.n_args, 1);
        assert_string_equal(b->opts.args[0], "sd15");
        assert_string_equal(b->opts.priority, "batch");
        assert_true(b->opts.deadline_sec == 2.5);
        assert_string_equal(b->opts.tag, "nightly run");
        assert_string_equal(b->opts.output, "x.png");
        assert_false(b->opts.detach);
        assert_null(b->opts.wait_job);
        assert_null(b->opts.cancel_job);

        /* The "=" forms, and before the command. */
        r = PARSE(b, "--priority=interactive", "--deadline=600", "--tag=t", "generate", "p");
        assert_int_equal(r, 1);
        assert_string_equal(b->opts.priority, "interactive");
        assert_true(b->opts.deadline_sec == 600);
        assert_string_equal(b->opts.tag, "t");
        r = PARSE(b, "generate", "p", "--priority", "normal", "--priority", "batch"); /* the last one */
        assert_int_equal(r, 1);
        assert_string_equal(b->opts.priority, "batch");
        static const char *const good_deadlines[] = {"0.001", "1e3", "31536000", "7"};
        static const double good_values[] = {0.001, 1000, 31536000, 7};
        for (size_t i = 0; i < sizeof(good_deadlines) / sizeof(good_deadlines[0]); i++) {
                r = PARSE(b, "generate", "p", "--deadline", good_deadlines[i]);
                assert_int_equal(r, 1);
                assert_true(b->opts.deadline_sec == good_values[i]);
        }

        /* Bad values. */
        static const char *const bad_priorities[] = {"", "high", "Batch", "interactive ", "0"};
        for (size_t i = 0; i < sizeof(bad_priorities) / sizeof(bad_priorities[0]); i++) {
                char want[64];
                snprintf(want, sizeof(want), "invalid priority '%s'", bad_priorities[i]);
                r = PARSE(b, "generate", "p", "--priority", bad_priorities[i]);
                expect_usage_error(b, r, want, "interactive, normal or batch");
        }
        static const char *const bad_deadlines[] = {"0",   "-1",  "",     "abc",   "1s",       " 5",
                                                    "nan", "inf", "1e300", "0.0", "31536001", "-0"};
        for (size_t i = 0; i < sizeof(bad_deadlines) / sizeof(bad_deadlines[0]); i++) {
                char want[64];
                snprintf(want, sizeof(want), "invalid deadline '%s'", bad_deadlines[i]);
                r = PARSE(b, "generate", "p", "--deadline", bad_deadlines[i]);
                expect_usage_error(b, r, want, "seconds");
        }
        r = PARSE(b, "generate", "p", "--tag", "");
        expect_usage_error(b, r, "--tag needs a text", NULL);
        r = PARSE(b, "generate", "--wait", "");
        expect_usage_error(b, r, "--wait needs a job id", NULL);
        r = PARSE(b, "generate", "--cancel=");
        expect_usage_error(b, r, "--cancel needs a job id", NULL);
        static const char *const need_values[] = {"--priority", "--deadline", "--tag", "--wait", "--cancel"};
        for (size_t i = 0; i < sizeof(need_values) / sizeof(need_values[0]); i++) {
                r = PARSE(b, "generate", "p", need_values[i]);
                expect_usage_error(b, r, "missing argument", need_values[i]);
        }
        r = PARSE(b, "generate", "p", "--detach=yes");
        expect_usage_error(b, r, "--detach=yes", NULL);

        /* --detach: every option of a new job, but -o. */
        r = PARSE(b, "generate", "p", "--detach", "--param", "steps=2", "--model", "m", "-d", "1", "--priority",
                  "batch", "--deadline", "60", "--tag", "x", "--json", "-q");
        assert_int_equal(r, 1);
        assert_true(b->opts.detach);
        assert_string_equal(b->opts.args[0], "p");
        assert_int_equal(b->opts.n_params, 1);
        assert_true(b->opts.json);
        r = PARSE(b, "generate", "p", "--detach", "-o", "x.png");
        expect_usage_error(b, r, "--detach and --output exclude each other", "--wait ID -o FILE");
        r = PARSE(b, "-o", "x.png", "generate", "--detach", "p");
        expect_usage_error(b, r, "--detach and --output exclude each other", NULL);
        r = PARSE(b, "generate", "--detach");
        expect_usage_error(b, r, "missing arguments", "PIPELINE");

        /* --wait ID: no PIPELINE; -o, -q, --json and -t apply. */
        r = PARSE(b, "generate", "--wait", "j-3", "-o", "out.png");
        assert_int_equal(r, 1);
        assert_string_equal(b->opts.wait_job, "j-3");
        assert_null(b->opts.cancel_job);
        assert_int_equal(b->opts.n_args, 0);
        assert_string_equal(b->opts.output, "out.png");
        r = PARSE(b, "--wait=j-4", "generate", "-q", "--json", "-t", "60");
        assert_int_equal(r, 1);
        assert_string_equal(b->opts.wait_job, "j-4");
        assert_true(b->opts.quiet);
        assert_true(b->opts.json);
        assert_true(b->opts.timeout_given);
        r = PARSE(b, "generate", "--wait", "j-3", "sd15");
        expect_usage_error(b, r, "--wait ID takes no PIPELINE", "'sd15'");
        r = PARSE(b, "generate", "sd15", "--wait", "j-3");
        expect_usage_error(b, r, "--wait ID takes no PIPELINE", NULL);
        r = PARSE(b, "generate", "--wait", "j-3", "a", "b");
        expect_usage_error(b, r, "too many arguments", NULL);

        /* Options of a new job, refused with --wait and --cancel. */
        static const struct {
                const char *option, *value, *name;
        } new_job[] = {
                {"--param", "a=b", "--param"},      {"--model", "m", "--model"},       {"-d", "0", "--device"},
                {"--priority", "batch", "--priority"}, {"--deadline", "5", "--deadline"}, {"--tag", "t", "--tag"},
                {"--detach", NULL, "--detach"},
        };
        for (size_t i = 0; i < sizeof(new_job) / sizeof(new_job[0]); i++) {
                char want[64];
                snprintf(want, sizeof(want), "%s does not apply with --wait", new_job[i].name);
                r = new_job[i].value ? PARSE(b, "generate", "--wait", "j-1", new_job[i].option, new_job[i].value)
                                     : PARSE(b, "generate", "--wait", "j-1", new_job[i].option);
                expect_usage_error(b, r, want, "already submitted");
                snprintf(want, sizeof(want), "%s does not apply with --cancel", new_job[i].name);
                r = new_job[i].value ? PARSE(b, new_job[i].option, new_job[i].value, "generate", "--cancel", "j-1")
                                     : PARSE(b, new_job[i].option, "generate", "--cancel", "j-1");
                expect_usage_error(b, r, want, NULL);
        }

        /* --cancel ID: no PIPELINE, no -o; -q and --json apply. */
        r = PARSE(b, "generate", "--cancel", "j-9", "--json", "-q");
        assert_int_equal(r, 1);
        assert_string_equal(b->opts.cancel_job, "j-9");
        assert_null(b->opts.wait_job);
        assert_int_equal(b->opts.n_args, 0);
        r = PARSE(b, "generate", "--cancel", "j-9", "-o", "x.png");
        expect_usage_error(b, r, "--output does not apply with --cancel", NULL);
        r = PARSE(b, "generate", "--cancel", "j-9", "p");
        expect_usage_error(b, r, "--cancel ID takes no PIPELINE", "'p'");
        r = PARSE(b, "generate", "--wait", "j-1", "--cancel", "j-2");
        expect_usage_error(b, r, "--wait and --cancel exclude each other", NULL);

        /* Not for the other commands, before or after them. */
        r = PARSE(b, "status", "--priority", "batch");
        expect_usage_error(b, r, "'--priority' does not apply", NULL);
        r = PARSE(b, "--detach", "jobs");
        expect_usage_error(b, r, "'--detach' does not apply", NULL);
        r = PARSE(b, "--wait", "j", "status");
        expect_usage_error(b, r, "'--wait' does not apply", NULL);
        r = PARSE(b, "call", "M", "--cancel=j");
        expect_usage_error(b, r, "'--cancel=j' does not apply", NULL);
        r = PARSE(b, "--deadline", "3", "models");
        expect_usage_error(b, r, "'--deadline' does not apply", NULL);
        r = PARSE(b, "--tag", "x", "jobs");
        expect_usage_error(b, r, "'--tag' does not apply", NULL);
        r = PARSE(b, "job", "show", "j-1", "--cancel", "j-1");
        expect_usage_error(b, r, "'--cancel' does not apply", NULL);

        /* Help needs no valid combination. */
        r = PARSE(b, "generate", "--wait", "j", "p", "--help");
        assert_int_equal(r, 0);
        assert_ptr_equal(b->opts.command, &ctl_cmd_generate);
}

static void test_job_commands(void **state) {
        argv_buf *b = *state;
        int r;

        r = PARSE(b, "jobs", "--json");
        assert_int_equal(r, 1);
        assert_ptr_equal(b->opts.command, &ctl_cmd_jobs);
        assert_true(b->opts.json);

        r = PARSE(b, "job", "show", "j-1");
        expect_plain_command(b, r, &ctl_cmd_job);
        assert_int_equal(b->opts.n_args, 2);
        assert_string_equal(b->opts.args[0], "show");
        assert_string_equal(b->opts.args[1], "j-1");
        r = PARSE(b, "--json", "job", "show", "j-1");
        assert_int_equal(r, 1);
        assert_true(b->opts.json);

        r = PARSE(b, "job");
        expect_usage_error(b, r, "missing arguments", "ACTION ID");
        r = PARSE(b, "job", "show");
        expect_usage_error(b, r, "missing job id", "job show ID");
        r = PARSE(b, "job", "cancel", "j-1");
        expect_usage_error(b, r, "unknown action 'cancel' for 'job'", "show");
        r = PARSE(b, "job", "show", "");
        expect_usage_error(b, r, "invalid job id ''", NULL);
        r = PARSE(b, "job", "show", "a", "b");
        expect_usage_error(b, r, "too many arguments", "job");
        r = PARSE(b, "job", "show", "a", "-o", "x");
        expect_usage_error(b, r, "'-o' does not apply", NULL);
        r = PARSE(b, "jobs", "--wait", "x");
        expect_usage_error(b, r, "'--wait' does not apply", NULL);
        r = PARSE(b, "job", "--help");
        assert_int_equal(r, 0);
        assert_ptr_equal(b->opts.command, &ctl_cmd_job);
}

/* ---- progress ---------------------------------------------------------------- */

static void expect_progress(uint32_t step, uint32_t steps, double rate, int width, const char *want) {
        char buf[160];
        int n = ctl_progress_format(buf, sizeof(buf), step, steps, rate, width);

        if (strcmp(buf, want) != 0)
                print_error("%u/%u %g it/s width %d: '%s', wanted '%s'\n", step, steps, rate, width, buf, want);
        assert_string_equal(buf, want);
        assert_int_equal(n, (int) strlen(want));
}

static void test_progress_format(void **state) {
        expect_progress(7, 20, 3.4, 10, "[###.......] step 7/20  3.4 it/s  ETA 4s");
        /* Rate not known (yet): no rate, no ETA. */
        expect_progress(7, 20, 0, 10, "[###.......] step 7/20");
        expect_progress(7, 20, NAN, 10, "[###.......] step 7/20");
        expect_progress(7, 20, INFINITY, 10, "[###.......] step 7/20");
        expect_progress(7, 20, -2, 10, "[###.......] step 7/20");
        /* No bar: the plain line of a pipe. */
        expect_progress(7, 20, 0, 0, "step 7/20");
        expect_progress(7, 20, 3.4, 0, "step 7/20  3.4 it/s  ETA 4s");
        expect_progress(7, 20, 3.4, -1, "step 7/20  3.4 it/s  ETA 4s");
        /* The ends, and beyond. */
        expect_progress(0, 20, 0, 4, "[....] step 0/20");
        expect_progress(20, 20, 5, 4, "[####] step 20/20  5.0 it/s  ETA 0s");
        expect_progress(25, 20, 5, 4, "[####] step 25/20  5.0 it/s  ETA 0s");
        expect_progress(19, 20, 5, 4, "[###.] step 19/20  5.0 it/s  ETA 0s");
        /* Steps 0: not known, so no bar and no ETA. */
        expect_progress(3, 0, 2, 10, "step 3  2.0 it/s");
        expect_progress(0, 0, 0, 10, "step 0");
        /* Slow rates, long ETAs. */
        expect_progress(1, 100, 0.25, 4, "[....] step 1/100  0.25 it/s  ETA 6m36s");
        expect_progress(10, 1000, 0.5, 0, "step 10/1000  0.50 it/s  ETA 33m00s");
        expect_progress(0, 10000, 1, 0, "step 0/10000  1.0 it/s  ETA 2h46m");
        expect_progress(0, 1000000, 1.5, 0, "step 0/1000000  1.5 it/s  ETA >99h");
        expect_progress(0, 20, 1e-9, 0, "step 0/20  0.00 it/s  ETA >99h");
        expect_progress(1, 3, 12.3, 3, "[#..] step 1/3  12.3 it/s  ETA 0s");
        expect_progress(0, 3, 1000, 3, "[...] step 0/3  1000.0 it/s  ETA 0s");
        expect_progress(UINT32_MAX, UINT32_MAX, 0, 10, "[##########] step 4294967295/4294967295");
        expect_progress(1, UINT32_MAX, 0, 10, "[..........] step 1/4294967295");

        /* Truncated, NUL-terminated; the length is the whole line's. */
        char small[8];
        assert_int_equal(ctl_progress_format(small, sizeof(small), 7, 20, 3.4, 10), 40);
        assert_string_equal(small, "[###...");
        assert_int_equal(ctl_progress_format(NULL, 0, 7, 20, 0, 0), 9);
        char one[1] = {'x'};
        assert_int_equal(ctl_progress_format(one, 1, 7, 20, 0, 0), 9);
        assert_int_equal(one[0], 0);
}

static void expect_duration(int64_t usec, const char *want) {
        char buf[32];

        ctl_format_duration(usec, buf, sizeof(buf));
        assert_string_equal(buf, want);
}

static void test_format_duration(void **state) {
        expect_duration(0, "0s");
        expect_duration(-5000000, "0s"); /* a clock that went back */
        expect_duration(999999, "0s");
        expect_duration(45000000, "45s");
        expect_duration(60000000, "1m00s");
        expect_duration(125000000, "2m05s");
        expect_duration(INT64_C(3600000000), "1h00m");
        expect_duration((INT64_C(3) * 3600 + 12 * 60 + 5) * 1000000, "3h12m");
        expect_duration((INT64_C(2) * 86400 + 4 * 3600 + 59) * 1000000, "2d04h");
        expect_duration(INT64_MAX, "106751991d04h");
}

/* ---- PNG text chunks ------------------------------------------------------------ */

/* The text chunks of the PNG file |path|: a JSON array of [key, text,
 * compression] in file order (keys as the file has them, in Latin-1). */
static json_object *png_texts_of(const char *path) {
        FILE *f = fopen(path, "rb");
        assert_non_null(f);
        png_structp png = png_create_read_struct(PNG_LIBPNG_VER_STRING, NULL, NULL, NULL);
        assert_non_null(png);
        png_infop info = png_create_info_struct(png);
        assert_non_null(info);
        if (setjmp(png_jmpbuf(png)))
                fail_msg("cannot read %s", path);
        png_init_io(png, f);
        png_read_info(png, info);
        png_textp text = NULL;
        int n = 0;
        png_get_text(png, info, &text, &n);
        json_object *list = json_object_new_array();
        for (int i = 0; i < n; i++) {
                json_object *e = json_object_new_array();
                json_object_array_add(e, json_object_new_string(text[i].key));
                json_object_array_add(e, json_object_new_string(text[i].text ? text[i].text : ""));
                json_object_array_add(e, json_object_new_int(text[i].compression));
                json_object_array_add(list, e);
        }
        png_destroy_read_struct(&png, &info, NULL);
        fclose(f);
        return list;
}

static void expect_png_text(json_object *list, size_t i, const char *key, const char *text, int compression) {
        json_object *e = json_object_array_get_idx(list, i);

        if (!e)
                fail_msg("text chunk %zu missing (wanted '%s')", i, key);
        assert_string_equal(json_object_get_string(json_object_array_get_idx(e, 0)), key);
        assert_string_equal(json_object_get_string(json_object_array_get_idx(e, 1)), text);
        assert_int_equal(json_object_get_int(json_object_array_get_idx(e, 2)), compression);
}

static void test_png_text(void **state) {
        convert_fixture *f = *state;
        const uint32_t w = 5, h = 4;
        uint8_t *pixels = make_pixels(w, h, 4, w * 4 + 3), *got = NULL;
        char key79[80], key80[81], path[128];
        const char *error = NULL;
        uint32_t rw, rh;
        unsigned rch;

        memset(key79, 'k', 79);
        key79[79] = 0;
        memset(key80, 'k', 80);
        key80[80] = 0;
        const ctl_png_text text[] = {
                {"parameters", "{\"pipeline\":\"sd15\",\"parameters\":{\"steps\":20}}"},
                {"gpuhost-job", "j-7"},
                {"caf\xc3\xa9", "latin-1 key"},                         /* U+00E9: one byte in the file */
                {"prompt", "caf\xc3\xa9 \xe6\x97\xa5\xf0\x9f\x98\x80"}, /* UTF-8 text: iTXt */
                {"multi line", "a\nb"},
                {"empty", ""},
                {key79, "79"},
                /* Skipped: */
                {key80, "80"},
                {"", "empty key"},
                {" lead", "x"},
                {"trail ", "x"},
                {"two  spaces", "x"},
                {"ctl\x01", "x"},
                {"tab\t", "x"},
                {"\xe6\x97\xa5", "beyond Latin-1"},
                {"\xff", "not UTF-8"},
                {"nbsp\xc2\xa0", "U+00A0 is not printable"},
                {"del\x7f", "x"},
                {NULL, "x"},
                {"null-text", NULL},
                /* Kept again after the skipped ones. */
                {"raw", "\xff\xfe not UTF-8: bytes as they are"},
        };

        snprintf(path, sizeof(path), "%s/text.png", f->dir);
        int r = ctl_png_write(path, pixels, w, h, w * 4 + 3, 4, text, sizeof(text) / sizeof(text[0]), &error);
        if (r < 0)
                print_error("%s\n", error);
        assert_int_equal(r, 0);

        json_object *list = png_texts_of(path);
        assert_int_equal(json_object_array_length(list), 8);
        expect_png_text(list, 0, "parameters", "{\"pipeline\":\"sd15\",\"parameters\":{\"steps\":20}}",
                        PNG_TEXT_COMPRESSION_NONE);
        expect_png_text(list, 1, "gpuhost-job", "j-7", PNG_TEXT_COMPRESSION_NONE);
        expect_png_text(list, 2, "caf\xe9", "latin-1 key", PNG_TEXT_COMPRESSION_NONE);
        expect_png_text(list, 3, "prompt", "caf\xc3\xa9 \xe6\x97\xa5\xf0\x9f\x98\x80", PNG_ITXT_COMPRESSION_NONE);
        expect_png_text(list, 4, "multi line", "a\nb", PNG_TEXT_COMPRESSION_NONE);
        expect_png_text(list, 5, "empty", "", PNG_TEXT_COMPRESSION_NONE);
        expect_png_text(list, 6, key79, "79", PNG_TEXT_COMPRESSION_NONE);
        expect_png_text(list, 7, "raw", "\xff\xfe not UTF-8: bytes as they are", PNG_TEXT_COMPRESSION_NONE);
        json_object_put(list);

        /* The pixels are intact. */
        assert_int_equal(ctl_png_read(path, &got, &rw, &rh, &rch, &error), 0);
        assert_int_equal(rw, w);
        assert_int_equal(rh, h);
        assert_int_equal(rch, 4);
        expect_same_pixels(pixels, w * 4 + 3, got, w, h, 4);
        free(got);

        /* No list, or only invalid keys: no text chunks. */
        assert_int_equal(ctl_png_write(path, pixels, w, h, w * 4 + 3, 4, NULL, 3, &error), 0);
        list = png_texts_of(path);
        assert_int_equal(json_object_array_length(list), 0);
        json_object_put(list);
        assert_int_equal(ctl_png_write(path, pixels, w, h, w * 4 + 3, 4, text + 7, 3, &error), 0);
        list = png_texts_of(path);
        assert_int_equal(json_object_array_length(list), 0);
        json_object_put(list);
        free(pixels);
}

static void expect_ascii(const char *json, const char *want) {
        char *got = ctl_json_ascii(json);

        assert_non_null(got);
        assert_string_equal(got, want);
        free(got);
}

static void test_json_ascii(void **state) {
        expect_ascii("", "");
        expect_ascii("{\"a\":\"x\\n\"}", "{\"a\":\"x\\n\"}");
        expect_ascii("\"\xc3\xa9\"", "\"\\u00e9\"");
        expect_ascii("\xe2\x82\xac", "\\u20ac");
        expect_ascii("\xf0\x9f\x98\x80", "\\ud83d\\ude00");
        expect_ascii("\xf4\x8f\xbf\xbf", "\\udbff\\udfff");
        /* Malformed: U+FFFD for each byte that starts nothing valid. */
        expect_ascii("\xff", "\\ufffd");
        expect_ascii("a\xc3", "a\\ufffd");
        expect_ascii("a\xc3" "b", "a\\ufffdb");
        expect_ascii("\xc0\x80", "\\ufffd\\ufffd");             /* overlong */
        expect_ascii("\xed\xa0\x80", "\\ufffd\\ufffd\\ufffd"); /* a surrogate */
        expect_ascii("\xf4\x90\x80\x80", "\\ufffd\\ufffd\\ufffd\\ufffd"); /* beyond U+10FFFF */
}

static void expect_text_entry(const ctl_png_texts *t, size_t i, const char *key, const char *text) {
        assert_true(i < t->n);
        assert_string_equal(t->v[i].key, key);
        assert_string_equal(t->v[i].text, text);
}

static void test_png_texts_for_job(void **state) {
        json_object *params = json_tokener_parse("{\"prompt\": \"a caf\\u00e9 \\ud83d\\ude00\", \"steps\": 20,"
                                                 " \"model\": \"sd15-f16\", \"cfg\": 7.5}");
        json_object *meta = json_tokener_parse("{\"seed\": 1234, \"sampler\": \"euler\", \"parameters\": \"x\","
                                               " \"gpuhost-job\": \"y\", \"nested\": {\"a\": [1, 2]}, \"note\": null}");
        ctl_png_texts t = {0};

        assert_non_null(params);
        assert_non_null(meta);
        assert_int_equal(ctl_png_texts_for_job(&t, "sd15", params, "j-42", meta), 0);
        assert_int_equal(t.n, 6);
        expect_text_entry(&t, 0, "parameters",
                          "{\"pipeline\":\"sd15\",\"model\":\"sd15-f16\",\"parameters\":{\"prompt\":\"a caf\\u00e9 "
                          "\\ud83d\\ude00\",\"steps\":20,\"model\":\"sd15-f16\",\"cfg\":7.5}}");
        expect_text_entry(&t, 1, "gpuhost-job", "j-42");
        expect_text_entry(&t, 2, "seed", "1234");
        expect_text_entry(&t, 3, "sampler", "euler");
        expect_text_entry(&t, 4, "nested", "{\"a\":[1,2]}");
        expect_text_entry(&t, 5, "note", "null");

        /* The parameters text is JSON, and means the same. */
        json_object *back = json_tokener_parse(t.v[0].text), *p = NULL;
        assert_non_null(back);
        assert_true(json_object_object_get_ex(back, "parameters", &p));
        assert_string_equal(json_object_get_string(json_object_object_get(p, "prompt")),
                            "a caf\xc3\xa9 \xf0\x9f\x98\x80");
        json_object_put(back);
        ctl_png_texts_free(&t);
        assert_int_equal(t.n, 0);
        assert_null(t.v);

        /* --wait: no pipeline, no parameters text. No model: none at the top. */
        assert_int_equal(ctl_png_texts_for_job(&t, NULL, NULL, "j-1", NULL), 0);
        assert_int_equal(t.n, 1);
        expect_text_entry(&t, 0, "gpuhost-job", "j-1");
        ctl_png_texts_free(&t);
        assert_int_equal(ctl_png_texts_for_job(&t, "p", NULL, NULL, NULL), 0);
        assert_int_equal(t.n, 1);
        expect_text_entry(&t, 0, "parameters", "{\"pipeline\":\"p\",\"parameters\":{}}");
        ctl_png_texts_free(&t);
        json_object *other = json_tokener_parse("{\"model\": 3}");
        assert_int_equal(ctl_png_texts_for_job(&t, "p", other, NULL, meta), 0);
        expect_text_entry(&t, 0, "parameters", "{\"pipeline\":\"p\",\"parameters\":{\"model\":3}}");
        ctl_png_texts_free(&t);
        /* Metadata with a prompt: "parameters" is AUTOMATIC1111's text, the
         * request goes to "gpuhost-parameters". */
        assert_int_equal(ctl_png_texts_for_job(&t, "p", other, NULL, params /* not metadata, but an object */), 0);
        assert_int_equal(t.n, 6);
        expect_text_entry(&t, 0, "parameters", "a caf\xc3\xa9 \xf0\x9f\x98\x80\nSteps: 20, Model: sd15-f16");
        expect_text_entry(&t, 1, "gpuhost-parameters", "{\"pipeline\":\"p\",\"parameters\":{\"model\":3}}");
        expect_text_entry(&t, 2, "prompt", "a caf\xc3\xa9 \xf0\x9f\x98\x80");
        expect_text_entry(&t, 3, "steps", "20");
        expect_text_entry(&t, 4, "model", "sd15-f16");
        expect_text_entry(&t, 5, "cfg", "7.5");
        ctl_png_texts_free(&t);
        /* Without a pipeline, AUTOMATIC1111's text alone. */
        assert_int_equal(ctl_png_texts_for_job(&t, NULL, NULL, "j-2", params), 0);
        assert_int_equal(t.n, 6);
        expect_text_entry(&t, 0, "parameters", "a caf\xc3\xa9 \xf0\x9f\x98\x80\nSteps: 20, Model: sd15-f16");
        expect_text_entry(&t, 1, "gpuhost-job", "j-2");
        ctl_png_texts_free(&t);
        json_object_put(other);
        /* Metadata that is not an object is ignored. */
        other = json_tokener_parse("[1, 2]");
        assert_int_equal(ctl_png_texts_for_job(&t, NULL, NULL, NULL, other), 0);
        assert_int_equal(t.n, 0);
        ctl_png_texts_free(&t);
        json_object_put(other);
        json_object_put(params);
        json_object_put(meta);
}

/* ctl_output_write passes the texts to PNG files only. */
static void test_output_write_text(void **state) {
        convert_fixture *f = *state;
        const uint32_t w = 3, h = 2;
        uint8_t *pixels = make_pixels(w, h, 4, w * 4);
        const char *error = NULL;
        char path[128], json[256];
        ctl_png_texts t = {0};
        json_object *meta = json_tokener_parse("{\"seed\": 7}");

        int fd = memfd_with(pixels, w * 4 * h);
        snprintf(json, sizeof(json),
                 "{\"name\": \"image\", \"kind\": \"image\", \"fd\": 0, \"size\": %u, \"width\": %u,"
                 " \"height\": %u, \"format\": \"rgba8\", \"stride\": %u}",
                 w * 4 * h, w, h, w * 4);
        json_object *out = json_tokener_parse(json);
        assert_non_null(out);
        assert_int_equal(ctl_png_texts_for_job(&t, "sd15", f->params, "j-5", meta), 0);
        snprintf(path, sizeof(path), "%s/t.png", f->dir);
        assert_int_equal(ctl_output_write(path, fd, out, t.v, t.n, &error), 0);
        expect_no_tmp(path);
        json_object *list = png_texts_of(path);
        assert_int_equal(json_object_array_length(list), 3);
        expect_png_text(list, 0, "parameters", "{\"pipeline\":\"sd15\",\"parameters\":{}}", PNG_TEXT_COMPRESSION_NONE);
        expect_png_text(list, 1, "gpuhost-job", "j-5", PNG_TEXT_COMPRESSION_NONE);
        expect_png_text(list, 2, "seed", "7", PNG_TEXT_COMPRESSION_NONE);
        json_object_put(list);

        /* A raw file is the bytes, whatever the texts. */
        snprintf(path, sizeof(path), "%s/t.rgba", f->dir);
        assert_int_equal(ctl_output_write(path, fd, out, t.v, t.n, &error), 0);
        expect_file(path, pixels, w * 4 * h);

        ctl_png_texts_free(&t);
        json_object_put(out);
        json_object_put(meta);
        close(fd);
        free(pixels);
}

/* A job's PNG with AUTOMATIC1111's "parameters", written and read back
 * with libpng: the texts byte for byte, tEXt for ASCII, iTXt for UTF-8. */
static void test_output_write_a1111(void **state) {
        convert_fixture *f = *state;
        const uint32_t w = 4, h = 3;
        uint8_t *pixels = make_pixels(w, h, 3, w * 3);
        const char *error = NULL;
        char path[128], json[256];
        ctl_png_texts t = {0};
        static const char *const metas[] = {
                "{\"prompt\": \"a red fox, snow\", \"negative_prompt\": \"blurry\", \"steps\": \"20\","
                " \"sampler\": \"euler_a\", \"cfg_scale\": \"7.5\", \"seed\": \"1234\", \"width\": \"4\","
                " \"height\": \"3\", \"model_hash\": \"0123456789abcdef\", \"model\": \"sd15\", \"clip_skip\": \"2\","
                " \"strength\": \"0.5\"}",
                "{\"prompt\": \"caf\\u00e9\", \"steps\": \"4\"}",
        };
        static const char *const want[] = {
                "a red fox, snow\nNegative prompt: blurry\nSteps: 20, Sampler: Euler a, CFG scale: 7.5, Seed: 1234, "
                "Size: 4x3, Model hash: 0123456789, Model: sd15, Clip skip: 2, Denoising strength: 0.5",
                "caf\xc3\xa9\nSteps: 4",
        };

        int fd = memfd_with(pixels, w * 3 * h);
        snprintf(json, sizeof(json),
                 "{\"name\": \"image\", \"kind\": \"image\", \"fd\": 0, \"size\": %u, \"width\": %u,"
                 " \"height\": %u, \"format\": \"rgb8\", \"stride\": %u}",
                 w * 3 * h, w, h, w * 3);
        json_object *out = json_tokener_parse(json);
        assert_non_null(out);
        for (size_t i = 0; i < 2; i++) {
                json_object *meta = json_tokener_parse(metas[i]);
                assert_non_null(meta);
                assert_int_equal(ctl_png_texts_for_job(&t, "sd15", f->params, "j-9", meta), 0);
                snprintf(path, sizeof(path), "%s/a1111-%zu.png", f->dir, i);
                assert_int_equal(ctl_output_write(path, fd, out, t.v, t.n, &error), 0);
                json_object *list = png_texts_of(path);
                assert_int_equal(json_object_array_length(list), 3 + (size_t) json_object_object_length(meta));
                expect_png_text(list, 0, "parameters", want[i],
                                i == 0 ? PNG_TEXT_COMPRESSION_NONE : PNG_ITXT_COMPRESSION_NONE);
                expect_png_text(list, 1, "gpuhost-parameters", "{\"pipeline\":\"sd15\",\"parameters\":{}}",
                                PNG_TEXT_COMPRESSION_NONE);
                expect_png_text(list, 2, "gpuhost-job", "j-9", PNG_TEXT_COMPRESSION_NONE);
                /* The per-key chunks are still there. */
                size_t k = 3;
                json_object_object_foreach(meta, key, v) {
                        bool ascii = true;
                        for (const char *c = json_object_get_string(v); *c; c++)
                                ascii &= (unsigned char) *c < 0x80;
                        expect_png_text(list, k++, key, json_object_get_string(v),
                                        ascii ? PNG_TEXT_COMPRESSION_NONE : PNG_ITXT_COMPRESSION_NONE);
                }
                json_object_put(list);
                ctl_png_texts_free(&t);
                json_object_put(meta);
        }
        json_object_put(out);
        close(fd);
        free(pixels);
}

/* ---- base64 (inline outputs) ----------------------------------------------------- */

static void expect_base64(const char *in, const void *want, size_t want_size) {
        uint8_t *got = NULL;
        size_t size = 99;

        assert_int_equal(ctl_base64_decode(in, &got, &size), 0);
        assert_int_equal(size, want_size);
        assert_memory_equal(got, want, want_size);
        assert_int_equal(got[size], 0);
        free(got);
}

static void test_base64(void **state) {
        static const char *const bad[] = {"Zg=", "Z", "Zg===", "Zm9v!", "Zm 9v", "Zh==", "=Zg=", "Zm9vY", "Zg==Zg==",
                                          "===="};

        expect_base64("", "", 0);
        expect_base64("Zg==", "f", 1);
        expect_base64("Zm8=", "fo", 2);
        expect_base64("Zm9v", "foo", 3);
        expect_base64("Zm9vYg", "foob", 4); /* padding left out */
        expect_base64("Zm9vYmE=", "fooba", 5);
        expect_base64("Zm9vYmFy", "foobar", 6);
        expect_base64("/+8=", "\xff\xef", 2);
        expect_base64("AAEC", "\x00\x01\x02", 3);
        for (size_t i = 0; i < sizeof(bad) / sizeof(bad[0]); i++) {
                uint8_t *got = NULL;
                size_t size = 0;
                if (ctl_base64_decode(bad[i], &got, &size) != -EINVAL)
                        fail_msg("'%s' was accepted", bad[i]);
                assert_null(got);
        }
}

/* ---- jobs and job show ----------------------------------------------------------- */

#define NOW_USEC INT64_C(1700000000000000) /* 2023-11-14 22:13:20 UTC */

/* What |print| writes for |json|. */
static char *print_to_string(void (*print)(FILE *, json_object *, int64_t), const char *json) {
        json_object *o = json_tokener_parse(json);
        char *text = NULL;
        size_t size = 0;
        FILE *f = open_memstream(&text, &size);

        assert_non_null(o);
        assert_non_null(f);
        print(f, o, NOW_USEC);
        assert_int_equal(fclose(f), 0);
        json_object_put(o);
        return text;
}

static void test_jobs_print(void **state) {
        char *text = print_to_string(
                ctl_jobs_print,
                "{\"jobs\": ["
                " {\"job\": \"j-1\", \"pipeline\": \"sd15\", \"state\": \"running\", \"priority\": \"interactive\","
                "  \"tag\": \"cat pics\", \"uid\": 1000, \"device\": 0, \"step\": 7, \"steps\": 20,"
                "  \"submitted_usec\": 1699999934500000, \"started_usec\": 1699999940000000,"
                "  \"finished_usec\": null, \"error\": null, \"error_parameters\": null},"
                " {\"job\": \"j-12\", \"pipeline\": \"test-sum\", \"state\": \"queued\", \"priority\": \"batch\","
                "  \"tag\": null, \"uid\": 0, \"device\": null, \"step\": null, \"steps\": null,"
                "  \"submitted_usec\": 1699999995000000},"
                " {\"job\": \"j-3\", \"pipeline\": \"sd15\", \"state\": \"failed\", \"priority\": \"normal\","
                "  \"tag\": \"a\\nb\\u001b[2J\", \"uid\": 1000, \"device\": 1, \"step\": 3,"
                "  \"submitted_usec\": 1699992800000000}]}");
        static const char want[] =
                "JOB  PIPELINE STATE     PRIORITY    DEVICE STEP TAG      AGE\n"
                "j-1  sd15     running   interactive 0      7/20 cat pics 1m05s\n"
                "j-12 test-sum queued    batch       -      -    -        5s\n"
                "j-3  sd15     failed    normal      1      3    a?b?[2J  2h00m\n";
        if (strcmp(text, want) != 0)
                print_error("got:\n%s", text);
        assert_string_equal(text, want);
        free(text);

        text = print_to_string(ctl_jobs_print, "{\"jobs\": []}");
        assert_string_equal(text, "(no jobs)\n");
        free(text);
        text = print_to_string(ctl_jobs_print, "{}");
        assert_string_equal(text, "(no jobs)\n");
        free(text);
}

static void test_job_print(void **state) {
        char *old_tz = getenv("TZ") ? strdup(getenv("TZ")) : NULL;

        setenv("TZ", "UTC", 1);
        tzset();
        char *text = print_to_string(
                ctl_job_print,
                "{\"job\": \"j-3\", \"pipeline\": \"sd15\", \"state\": \"failed\", \"priority\": \"normal\","
                " \"tag\": null, \"uid\": 1000, \"device\": 0, \"step\": 7, \"steps\": 20,"
                " \"submitted_usec\": 1699999935000000, \"started_usec\": 1699999937500000,"
                " \"finished_usec\": null, \"error\": \"io.gpuhost.JobFailed\","
                " \"error_parameters\": {\"pipeline\": \"sd15\", \"error\": \"EIO\", \"message\": \"boom\"}}");
        static const char want[] = "job: j-3\n"
                                   "pipeline: sd15\n"
                                   "state: failed\n"
                                   "priority: normal\n"
                                   "tag: -\n"
                                   "uid: 1000\n"
                                   "device: 0\n"
                                   "step: 7/20\n"
                                   "submitted: 2023-11-14 22:12:15 (1m05s ago)\n"
                                   "started: 2023-11-14 22:12:17 (1m02s ago)\n"
                                   "finished: -\n"
                                   "error: io.gpuhost.JobFailed {\"pipeline\":\"sd15\",\"error\":\"EIO\","
                                   "\"message\":\"boom\"}\n";
        if (strcmp(text, want) != 0)
                print_error("got:\n%s", text);
        assert_string_equal(text, want);
        free(text);

        /* A queued job: no step, no times but its submission; a tag with a
         * newline stays on its line. */
        text = print_to_string(ctl_job_print,
                               "{\"job\": \"j-4\", \"pipeline\": \"p\", \"state\": \"queued\", \"priority\": \"batch\","
                               " \"tag\": \"x\\ny\", \"uid\": 0, \"device\": null, \"step\": null, \"steps\": null,"
                               " \"submitted_usec\": 1700000000000000}");
        assert_string_equal(text, "job: j-4\npipeline: p\nstate: queued\npriority: batch\ntag: x?y\nuid: 0\n"
                                  "device: -\nstep: -\nsubmitted: 2023-11-14 22:13:20 (0s ago)\nstarted: -\n"
                                  "finished: -\n");
        free(text);

        if (old_tz)
                setenv("TZ", old_tz, 1);
        else
                unsetenv("TZ");
        free(old_tz);
        tzset();
}

int main(void) {
        const struct CMUnitTest tests[] = {
                cmocka_unit_test(test_command_find),
                cmocka_unit_test_setup_teardown(test_no_args, setup_buf, teardown_buf),
                cmocka_unit_test_setup_teardown(test_help_and_version, setup_buf, teardown_buf),
                cmocka_unit_test_setup_teardown(test_unknown_command, setup_buf, teardown_buf),
                cmocka_unit_test_setup_teardown(test_each_command, setup_buf, teardown_buf),
                cmocka_unit_test_setup_teardown(test_top_metrics, setup_buf, teardown_buf),
                cmocka_unit_test_setup_teardown(test_socket_option, setup_buf, teardown_buf),
                cmocka_unit_test_setup_teardown(test_timeout_option, setup_buf, teardown_buf),
                cmocka_unit_test_setup_teardown(test_json_option, setup_buf, teardown_buf),
                cmocka_unit_test_setup_teardown(test_call_arguments, setup_buf, teardown_buf),
                cmocka_unit_test_setup_teardown(test_more_oneway, setup_buf, teardown_buf),
                cmocka_unit_test_setup_teardown(test_devices_models, setup_buf, teardown_buf),
                cmocka_unit_test_setup_teardown(test_model_command, setup_buf, teardown_buf),
                cmocka_unit_test_setup_teardown(test_device_option, setup_buf, teardown_buf),
                cmocka_unit_test_setup_teardown(test_unknown_options, setup_buf, teardown_buf),
                cmocka_unit_test_setup_teardown(test_parse_twice, setup_buf, teardown_buf),
                cmocka_unit_test_setup_teardown(test_pipelines_workers, setup_buf, teardown_buf),
                cmocka_unit_test_setup_teardown(test_worker_command, setup_buf, teardown_buf),
                cmocka_unit_test_setup_teardown(test_plugin_command, setup_buf, teardown_buf),
                cmocka_unit_test_setup_teardown(test_generate_args, setup_buf, teardown_buf),
                cmocka_unit_test_setup_teardown(test_param_convert_types, setup_convert, teardown_convert),
                cmocka_unit_test_setup_teardown(test_param_convert_errors, setup_convert, teardown_convert),
                cmocka_unit_test_setup_teardown(test_param_convert_image, setup_convert, teardown_convert),
                cmocka_unit_test(test_output_file_name),
                cmocka_unit_test_setup_teardown(test_png_round_trip, setup_convert, teardown_convert),
                cmocka_unit_test_setup_teardown(test_output_write, setup_convert, teardown_convert),
                cmocka_unit_test(test_pipeline_format),
                cmocka_unit_test_setup_teardown(test_generate_job_options, setup_buf, teardown_buf),
                cmocka_unit_test_setup_teardown(test_job_commands, setup_buf, teardown_buf),
                cmocka_unit_test(test_progress_format),
                cmocka_unit_test(test_format_duration),
                cmocka_unit_test_setup_teardown(test_png_text, setup_convert, teardown_convert),
                cmocka_unit_test(test_json_ascii),
                cmocka_unit_test(test_png_texts_for_job),
                cmocka_unit_test_setup_teardown(test_output_write_text, setup_convert, teardown_convert),
                cmocka_unit_test_setup_teardown(test_output_write_a1111, setup_convert, teardown_convert),
                cmocka_unit_test(test_base64),
                cmocka_unit_test(test_jobs_print),
                cmocka_unit_test(test_job_print),
        };

        return cmocka_run_group_tests(tests, NULL, NULL);
}

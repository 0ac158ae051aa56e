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
 * ctl_command_find(). */
#include <errno.h>
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include <cmocka.h>

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

int main(void) {
        const struct CMUnitTest tests[] = {
                cmocka_unit_test(test_command_find),
                cmocka_unit_test_setup_teardown(test_no_args, setup_buf, teardown_buf),
                cmocka_unit_test_setup_teardown(test_help_and_version, setup_buf, teardown_buf),
                cmocka_unit_test_setup_teardown(test_unknown_command, setup_buf, teardown_buf),
                cmocka_unit_test_setup_teardown(test_each_command, setup_buf, teardown_buf),
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
        };

        return cmocka_run_group_tests(tests, NULL, NULL);
}

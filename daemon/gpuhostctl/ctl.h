/* gpuhostctl internals: the command table, the parsed command line, and
 * helpers shared by the commands. One file per command (cmd-*.c), as tmux
 * does; argument parsing lives in args.c so tests can drive it. */
#pragma once

#include <json-c/json.h>
#include <stdbool.h>
#include <stdint.h>
#include <stdio.h>

#include "gpuhost/client.h"

/* Exit codes; documented in --help and README.md. */
enum {
        CTL_EXIT_OK = 0,
        CTL_EXIT_REMOTE = 1,  /* the daemon answered with an error */
        CTL_EXIT_USAGE = 2,   /* bad command line */
        CTL_EXIT_CONNECT = 3, /* cannot reach the daemon, or lost it */
};

/* Options a command may accept besides the global ones. */
enum {
        CTL_OPT_JSON = 1 << 0,
        CTL_OPT_MORE = 1 << 1,
        CTL_OPT_ONEWAY = 1 << 2,
        CTL_OPT_DEVICE = 1 << 3, /* --device/-d D */
};

typedef struct ctl_command ctl_command;

typedef struct ctl_opts {
        const char *socket;     /* -s/--socket; NULL: $GPUHOST_SOCKET or default */
        uint64_t timeout_usec;  /* -t/--timeout */
        bool json, more, oneway, help, version;
        int device;             /* --device/-d; -1 when not given */
        const ctl_command *command;
        char **args;            /* positional arguments after the command */
        int n_args;
} ctl_opts;

struct ctl_command {
        const char *name;
        const char *args_usage;  /* "METHOD [PARAMETERS]" */
        const char *summary;     /* one line for the command list */
        const char *description; /* paragraph for "COMMAND --help" */
        unsigned options;        /* CTL_OPT_* */
        int min_args, max_args;
        /* Optional: checks the arguments and options beyond their count
         * (a sub-command's name, which options it takes). Returns 0, or
         * -EINVAL with *ret_error set for a usage error. */
        int (*check)(const ctl_opts *o, const char **ret_error);
        int (*run)(const ctl_opts *o);
};

extern const ctl_command ctl_cmd_status, ctl_cmd_ping, ctl_cmd_reload, ctl_cmd_version, ctl_cmd_call,
        ctl_cmd_devices, ctl_cmd_models, ctl_cmd_model;

/* Parses argv. Returns 1 to run o->command, 0 if help or version was
 * requested (print with ctl_print_help), or -EINVAL with *ret_error set
 * (a static or thread-local message) for a usage error. */
int ctl_parse_args(int argc, char **argv, ctl_opts *o, const char **ret_error);
/* Formats a usage error into a thread-local buffer, for ret_error. */
__attribute__((format(printf, 1, 2))) const char *ctl_usage_error(const char *fmt, ...);
const ctl_command *ctl_command_find(const char *name);
void ctl_print_help(FILE *f, const ctl_command *cmd);
int ctl_main(int argc, char **argv);

/* Connects, printing a one-line actionable message on failure. */
int ctl_connect(const ctl_opts *o, gh_client **ret);
/* Makes one call and returns its reply; prints transport and remote
 * errors. Returns a CTL_EXIT_* code; *ret is set only on CTL_EXIT_OK. */
int ctl_call(const ctl_opts *o, gh_client *c, const char *method, const char *params, json_object **ret);
/* Prints a successful reply for people; --json prints it as JSON instead. */
typedef void (*ctl_print_fn)(const ctl_opts *o, gh_client *c, json_object *reply);
/* Connects, calls |method| with |params| and prints the reply with |print|
 * (or as JSON with --json). Returns a CTL_EXIT_* code. */
int ctl_call_and_print(const ctl_opts *o, const char *method, const char *params, ctl_print_fn print);
/* Reports a failed call on stderr; returns the exit code to use. */
int ctl_report_transport_error(const ctl_opts *o, gh_client *c, int r);
void ctl_report_remote_error(const char *error, const char *parameters_json);
void ctl_print_json(json_object *o);

/* "812 B", "1.5 KiB", "2.0 GiB": binary units, one decimal above bytes. */
void ctl_format_bytes(int64_t bytes, char *buf, size_t size);
/* A member of a reply object: its string ("?" when absent, "-" when null),
 * or its integer (0 when absent or null). */
const char *ctl_json_str(json_object *o, const char *key);
int64_t ctl_json_int(json_object *o, const char *key);

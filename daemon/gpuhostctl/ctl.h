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
        CTL_OPT_PARAM = 1 << 4,  /* --param KEY=VALUE (repeatable), --model M */
        CTL_OPT_OUTPUT = 1 << 5, /* -o/--output FILE */
        CTL_OPT_QUIET = 1 << 6,  /* -q/--quiet */
};

/* The most --param options one command line may give. */
#define CTL_MAX_PARAMS 64

typedef struct ctl_command ctl_command;

typedef struct ctl_opts {
        const char *socket;     /* -s/--socket; NULL: $GPUHOST_SOCKET or default */
        uint64_t timeout_usec;  /* -t/--timeout */
        bool timeout_given;     /* -t was given (else timeout_usec is the default) */
        bool json, more, oneway, help, version, quiet;
        int device;             /* --device/-d; -1 when not given */
        const char *output;     /* -o/--output; NULL when not given */
        const char *model;      /* --model; NULL when not given */
        const char *params[CTL_MAX_PARAMS]; /* --param KEY=VALUE, in order; each has a '=' */
        int n_params;
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
        ctl_cmd_devices, ctl_cmd_models, ctl_cmd_model, ctl_cmd_pipelines, ctl_cmd_workers, ctl_cmd_worker,
        ctl_cmd_plugin, ctl_cmd_generate;

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

/* ---- pipelines (cmd-pipelines.c) ---- */

/* The pipeline named |name| in a ListPipelines reply, or NULL. */
json_object *ctl_pipeline_find(json_object *list_reply, const char *name);
/* The RANGE column of a PipelineParameter: "1..150", "0.5..", "..10",
 * "a|b|c" (an enum's choices), "max 512" (a string's max_length), or "-". */
void ctl_param_format_range(json_object *param, char *buf, size_t size);
/* The DEFAULT column: "required", the default (strings unquoted, other
 * values as JSON), or "-". */
void ctl_param_format_default(json_object *param, char *buf, size_t size);

/* ---- generate (cmd-generate.c) ---- */

/* File descriptors to pass with a call; their indexes are the "fd" of
 * image parameters. */
#define CTL_MAX_FDS 16
typedef struct ctl_fds {
        int fd[CTL_MAX_FDS];
        size_t n;
} ctl_fds;
/* Closes every fd and empties the list. */
void ctl_fds_close(ctl_fds *fds);

/* Converts one --param argument, "KEY=VALUE", to the JSON type that the
 * pipeline's parameter table (|table|: the Pipeline's "parameters" array)
 * declares for KEY, and adds it to |params|:
 *   int     strtoll, the whole string      float   strtod, finite
 *   bool    true/false/yes/no/1/0          enum    one of its choices
 *   string, model: as given
 *   image   "@FILE": a PNG file, decoded to rgb8 or rgba8 into a sealed
 *           memfd appended to |fds|; the value is {"fd": its index,
 *           "width", "height", "format"}
 * Returns 0; -ENOKEY for a KEY the table lacks (the message lists the
 * pipeline's parameters); -EEXIST for a KEY given twice; -EINVAL for a
 * malformed argument or value; another negative errno when an image file
 * cannot be read. *ret_error (thread-local) says what is wrong. */
int ctl_param_convert(json_object *table, const char *arg, json_object *params, ctl_fds *fds,
                      const char **ret_error);

/* The file for output |index| named |name| of a job written with -o FILE:
 * FILE itself for the first output (index 0), else FILE with "-NAME"
 * inserted before the extension of its last path component ("out.png",
 * "frames" -> "out-frames.png"; "out" -> "out-frames"). Characters of NAME
 * other than [A-Za-z0-9._-] become '_' (so no '/'). Returns a string to
 * free, or NULL when out of memory. */
char *ctl_output_file_name(const char *file, const char *name, size_t index);

/* Writes an Output (|output|, the JSON object; |fd|, its memfd) to |path|
 * through |path|.tmp and a rename: a PNG when it is an "image" in rgb8 or
 * rgba8 and |path| ends in ".png" (any case), else the raw "size" bytes.
 * Returns 0, or a negative errno with *ret_error set. */
int ctl_output_write(const char *path, int fd, json_object *output, const char **ret_error);

/* PNG files with libpng. Pixels are 8-bit RGB (|channels| 3) or RGBA (4),
 * rows |stride| bytes apart (at least width * channels). */
int ctl_png_write(const char *path, const uint8_t *pixels, uint32_t width, uint32_t height, size_t stride,
                  unsigned channels, const char **ret_error);
/* Reads any PNG as 8-bit RGB, or RGBA when it has transparency, rows packed
 * (stride = width * channels), into *ret_pixels (to free). */
int ctl_png_read(const char *path, uint8_t **ret_pixels, uint32_t *ret_width, uint32_t *ret_height,
                 unsigned *ret_channels, const char **ret_error);

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
        /* --priority, --deadline, --tag, --detach, --wait ID, --cancel ID */
        CTL_OPT_JOB = 1 << 7,
        CTL_OPT_ITERATIONS = 1 << 8, /* --iterations N */
};

/* The most --param options one command line may give. */
#define CTL_MAX_PARAMS 64
/* The most --iterations. */
#define CTL_MAX_ITERATIONS 1000000

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
        const char *priority;   /* --priority: "interactive", "normal" or "batch"; NULL when not given */
        double deadline_sec;    /* --deadline: > 0; 0 when not given */
        const char *tag;        /* --tag; NULL when not given */
        bool detach;            /* --detach */
        const char *wait_job;   /* --wait ID; NULL when not given */
        const char *cancel_job; /* --cancel ID; NULL when not given */
        int iterations;         /* --iterations N: 1..CTL_MAX_ITERATIONS; 0 when not given */
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
        ctl_cmd_plugin, ctl_cmd_generate, ctl_cmd_jobs, ctl_cmd_job, ctl_cmd_metrics, ctl_cmd_top;

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

/* A text chunk of a PNG file: |key| (UTF-8) and |text|. */
typedef struct ctl_png_text {
        const char *key;
        const char *text;
} ctl_png_text;

/* A list of text chunks that owns its strings. */
typedef struct ctl_png_texts {
        ctl_png_text *v;
        size_t n;
} ctl_png_texts;
void ctl_png_texts_free(ctl_png_texts *t);
/* Adds a copy of |key| and |text|; returns 0 or -ENOMEM. */
int ctl_png_texts_add(ctl_png_texts *t, const char *key, const char *text);
/* The text chunks of a job's image: when |metadata| has a "prompt"
 * string, "parameters" in AUTOMATIC1111's form (ctl_a1111_parameters());
 * the JSON text (ASCII only: other characters as \uXXXX escapes) of
 * {"pipeline": |pipeline|, "model": the "model" of |parameters| when it
 * has one, "parameters": |parameters| as sent}, when |pipeline| is not
 * NULL, as "parameters", or as "gpuhost-parameters" when that keyword is
 * taken by the former; "gpuhost-job", |job|, when not NULL; then each
 * member of |metadata| (strings as they are, other values as JSON text),
 * but for those named "parameters", "gpuhost-parameters" or
 * "gpuhost-job". Returns 0 or -ENOMEM. */
int ctl_png_texts_for_job(ctl_png_texts *t, const char *pipeline, json_object *parameters, const char *job,
                          json_object *metadata);
/* The "parameters" text of AUTOMATIC1111's web UI for a job's |metadata|
 * (the members a plugin reported with output_meta), into *ret (to free):
 *   PROMPT
 *   Negative prompt: NEGATIVE_PROMPT
 *   Steps: 20, Sampler: Euler a, CFG scale: 7.5, Seed: 1234, Size: 512x512, Model hash: 0123456789, Model: sd15, Clip skip: 2, Denoising strength: 0.5
 * from the members prompt, negative_prompt (its line only when it is not
 * empty), steps, sampler (euler, euler_a, ddim, dpmpp_2m and
 * dpmpp_2m_karras as the web UI names them: "Euler", "Euler a", "DDIM",
 * "DPM++ 2M", "DPM++ 2M Karras"; other names as they are), cfg_scale,
 * seed, width and height (both), model_hash (its first 10 hex digits),
 * model, clip_skip (only when above 1) and strength. Members that are
 * absent or null are left out (the last line too, when none is there);
 * strings are used as they are, numbers as Python prints them (7, 7.5,
 * 7.0); a value with ',', ':' or a newline is quoted as a JSON string, as
 * the web UI does. *ret is NULL when |metadata| has no "prompt" string.
 * Returns 0 or -ENOMEM. */
int ctl_a1111_parameters(json_object *metadata, char **ret);
/* |json| (UTF-8 JSON text) with every character beyond ASCII written as
 * a \uXXXX escape (a surrogate pair beyond U+FFFF; U+FFFD for a malformed
 * sequence): the same JSON value, in ASCII. Returns a string to free, or
 * NULL when out of memory. */
char *ctl_json_ascii(const char *json);

/* Writes an Output (|output|, the JSON object; |fd|, its memfd) to |path|
 * through |path|.tmp and a rename: a PNG when it is an "image" in rgb8 or
 * rgba8 and |path| ends in ".png" (any case), with the |n_text| chunks of
 * |text| (may be NULL), else the raw "size" bytes. Returns 0, or a
 * negative errno with *ret_error set. */
int ctl_output_write(const char *path, int fd, json_object *output, const ctl_png_text *text, size_t n_text,
                     const char **ret_error);

/* Decodes base64 (RFC 4648, "=" padding optional) into *ret (to free,
 * one byte more than *ret_size, NUL-terminated). Returns 0, -EINVAL for
 * malformed input, or -ENOMEM. */
int ctl_base64_decode(const char *in, uint8_t **ret, size_t *ret_size);

/* PNG files with libpng. Pixels are 8-bit RGB (|channels| 3) or RGBA (4),
 * rows |stride| bytes apart (at least width * channels). |text| (|n_text|
 * entries, may be NULL) become text chunks before the pixels: tEXt when
 * the text is ASCII, iTXt (UTF-8) when it is valid UTF-8 beyond ASCII.
 * Keys are written in Latin-1 and must have 1 to 79 characters, printable
 * ones (32-126, 161-255), without leading, trailing or consecutive spaces;
 * an entry whose key is not one is skipped. */
int ctl_png_write(const char *path, const uint8_t *pixels, uint32_t width, uint32_t height, size_t stride,
                  unsigned channels, const ctl_png_text *text, size_t n_text, const char **ret_error);
/* Reads any PNG as 8-bit RGB, or RGBA when it has transparency, rows packed
 * (stride = width * channels), into *ret_pixels (to free). */
int ctl_png_read(const char *path, uint8_t **ret_pixels, uint32_t *ret_width, uint32_t *ret_height,
                 unsigned *ret_channels, const char **ret_error);

/* ---- progress (progress.c) ---- */

/* One line of progress on stderr: on a terminal it is redrawn in place
 * (padded over a longer previous one), else each line is printed once. */
typedef struct ctl_status_line {
        bool tty;   /* stderr is a terminal */
        int shown;  /* length of the line on the terminal now, 0 if none */
} ctl_status_line;

void ctl_status_show(ctl_status_line *l, const char *line);
/* Erases the line on a terminal (before other output or at the end). */
void ctl_status_clear(ctl_status_line *l);

/* The progress line of a running job, into |buf| (always NUL-terminated
 * when |size| > 0):
 *   "[###.......] step 7/20  3.4 it/s  ETA 4s"
 * The bar has |width| cells ('#' done, '.' to do; none when |width| <= 0
 * or |steps| is 0); "step 7" when |steps| is 0 (not known); the rate and
 * the ETA only when |it_per_s| is finite and > 0 (the ETA needs |steps|
 * too). Rates below 1 have two decimals; the ETA is "4s", "1m05s" or
 * "2h07m" (">99h" beyond). Returns the length of the line (as snprintf,
 * before any truncation). */
int ctl_progress_format(char *buf, size_t size, uint32_t step, uint32_t steps, double it_per_s, int width);
/* A duration for people: "0s", "45s", "2m05s", "3h12m", "2d04h"
 * (negative: "0s"). */
void ctl_format_duration(int64_t usec, char *buf, size_t size);

/* ---- jobs (cmd-jobs.c, cmd-job.c) ---- */

/* The table of a ListJobs reply, with ages from |now_usec|
 * (CLOCK_REALTIME microseconds). */
void ctl_jobs_print(FILE *f, json_object *reply, int64_t now_usec);
/* A Job as "key: value" lines, times in local time with their age from
 * |now_usec|. */
void ctl_job_print(FILE *f, json_object *job, int64_t now_usec);
/* CLOCK_REALTIME in microseconds. */
int64_t ctl_now_usec(void);

/* ---- device table (devtable.c; status, top) ---- */

/* "[#####.....]": |width| cells, '#' for |used| of |budget| (rounded to the
 * nearest cell; at least one when |used| > 0, all of them when |used| >=
 * |budget|), '.' for the rest; all '.' when |budget| <= 0. Always
 * NUL-terminated when |size| > 0; returns the length (as snprintf). */
int ctl_vram_bar(char *buf, size_t size, int64_t used, int64_t budget, int width);

/* One device of a GetStatus reply, in the numbers the table shows. A
 * daemon that sends no "memory" object gives the older fields instead
 * (memory_total, memory_reserve, the pool's used bytes as weights);
 * counts it does not send are -1. */
typedef struct ctl_device_row {
        int64_t index;
        const char *name;
        int64_t total, reserve, weights, workspaces, free;
        int64_t budget; /* memory "budget" when sent, else total - reserve (at least 0) */
        int64_t units, units_busy, running, queued;
        json_object *models; /* array of strings, or NULL */
} ctl_device_row;
void ctl_device_row_from_json(json_object *device, ctl_device_row *ret);

/* The device table of a GetStatus reply's "devices": a header, then one
 * line per device: index, name, VRAM bar of (weights + workspaces) /
 * budget (total - reserve), "used/budget" MiB, running/queued jobs, the resident
 * models. Names and models are shown without control characters. */
void ctl_devices_table_print(FILE *f, json_object *devices);

/* ---- top (cmd-top.c) ---- */

/* One frame of "gpuhostctl top": a line about the daemon, the device
 * table, and the job table, from a GetStatus and a ListJobs reply (either
 * may be NULL: that part is left out). */
void ctl_top_frame_print(FILE *f, json_object *status, json_object *jobs, int64_t now_usec);

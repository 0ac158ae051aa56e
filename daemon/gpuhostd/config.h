/* gpuhostd configuration: INI files parsed with inih into a gh_config.
 *
 * Sources, in order: the main file (/etc/gpuhost/gpuhost.conf, optional)
 * then /etc/gpuhost/conf.d/ *.conf in lexical byte order; a later file
 * overrides an earlier one key by key. "-c PATH" replaces all of that with
 * one file, which must exist. Every key is described by one row of a table
 * (section, key, parser, offset, range). Any unknown section or key, bad
 * value or out-of-range number is an error naming file:line and the key;
 * a config with an error is never used. Loading reads files, so the daemon
 * does it before its loop starts or in a helper thread (reload). */
#pragma once

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>
#include <sys/types.h>
#include <json-c/json.h>

/* A [model NAME] section. */
typedef struct gh_model_config {
        char *name;
        char *path;     /* a .safetensors file or a diffusers-style folder */
        char *dtype;    /* "keep" (NULL), "fp32", "fp16" or "bf16": converted while loading */
        char *devices;  /* device selectors (index or UUID), space or comma separated; NULL: any */
        bool pinned;    /* never evicted */
        char *tokenizer; /* single-file model: a folder holding vocab.json and merges.txt; NULL: [models] tokenizer */
        char *parameters; /* job parameter defaults of its jobs, a JSON object's text; NULL: none */
        char *file;     /* where the section was declared, for errors */
        unsigned line;
} gh_model_config;

typedef struct gh_config {
        /* [daemon] */
        int log_level;
        uint64_t shutdown_grace_usec;
        char *admin_group; /* NULL: only root and the daemon's own user */
        gid_t admin_gid;
        /* [socket] */
        char *socket_path;
        char *socket_group; /* NULL: the daemon's primary group */
        gid_t socket_gid;
        /* [limits] */
        unsigned max_connections;
        unsigned max_connections_per_user;
        uint64_t max_message_size;
        unsigned max_pending_requests;
        unsigned max_fds_per_message;
        unsigned max_json_depth;
        uint64_t idle_timeout_usec;
        uint64_t max_output_buffer;
        /* [devices] */
        char *devices_include;  /* selectors; NULL: every GPU */
        char *devices_exclude;
        char *devices_reserve;  /* "1G" or "5%"; NULL: the default */
        char *devices_reserve_per_device; /* "SELECTOR:RESERVE ..." overrides */
        uint64_t slab_size;
        bool cpu_enabled;
        uint64_t cpu_memory;    /* each CPU device's budget; 0: automatic */
        unsigned cpu_devices;   /* CPU devices to serve (when cpu_enabled) */
        /* [models] */
        char *models_directory;
        char *models_tokenizer; /* the tokenizer folder of single-file models without their own; NULL: none */
        /* [workers] */
        char *worker_executable;
        char *plugin_directory;
        uint64_t heartbeat_timeout_usec;
        unsigned quarantine_crashes;     /* 0: never quarantine */
        uint64_t quarantine_window_usec;
        uint64_t max_output_size;        /* bytes of outputs one job may make */
        unsigned cpu_threads;            /* 0: every CPU */
        /* [jobs] */
        unsigned max_queued;             /* jobs not finished, in all */
        unsigned max_queued_per_user;
        uint64_t aging_usec;             /* a queued job moves up a class after this; 0: never */
        uint64_t keep_finished_usec;     /* finished jobs (and their outputs) are kept this long */
        unsigned max_finished;           /* ... and at most this many */
        uint64_t max_inline_output;      /* bytes of base64-able outputs per reply */
        /* [scheduler] */
        unsigned jobs_per_device;        /* jobs running at once on one device */
        unsigned weight[3];              /* slice weight of each priority class */
        uint64_t step_timeout_usec;      /* a step running longer kills its worker; 0: never */
        unsigned unit_sms;               /* SMs per slice unit on GPUs (default 16); 0: the driver's smallest */
        /* [metrics] */
        char *metrics_listen;            /* "127.0.0.1:PORT", "[::1]:PORT", "localhost:PORT"; NULL: off */
        /* [model NAME] */
        gh_model_config *models;
        size_t n_models;

        char **files; /* the files read, in order */
        size_t n_files;
} gh_config;

#define GH_CONFIG_MODELS_MAX 1024

typedef struct gh_config_error {
        char file[256];
        unsigned line; /* 0 when the error is about the file as a whole */
        char key[128]; /* "[section] key", or empty */
        char message[256];
} gh_config_error;

int gh_config_new(gh_config **ret);
gh_config *gh_config_free(gh_config *c);
static inline void gh_config_freep(gh_config **c) {
        gh_config_free(*c);
}

/* Loads the configuration: |override_path| alone if set, else the main file
 * and the drop-in directory (both may be absent). */
int gh_config_load(const char *override_path, const char *main_path, const char *dropin_dir,
                   gh_config **ret, gh_config_error *ret_error);
/* Applies one file's text on top of |c|; |filename| is used in errors. */
int gh_config_parse_string(gh_config *c, const char *text, size_t len, const char *filename,
                           gh_config_error *ret_error);
/* Cross-key checks, run once every file is applied. */
int gh_config_verify(const gh_config *c, gh_config_error *ret_error);

/* "FILE:LINE: [section] key: message" */
void gh_config_error_format(const gh_config_error *e, char *buf, size_t size);
json_object *gh_config_error_to_json(const gh_config_error *e);
json_object *gh_config_summary(const gh_config *c);

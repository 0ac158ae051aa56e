/* Configuration parsing with inih and a declarative key table. See config.h. */
#include <ctype.h>
#include <grp.h>
#include <ini.h>
#include <inttypes.h>
#include <json-c/json.h>
#include <limits.h>
#include <stdarg.h>
#include <string.h>
#include <sys/stat.h>
#include <sys/un.h>

#include "../common/dirlist.h"
#include "../common/log.h"
#include "../common/util.h"
#include "config.h"
#include "devices.h"
#include "engine.h"
#include "gh-build.h"
#include "metrics-http.h"
#include "gpuhost/protocol.h"

#define CONFIG_FILE_MAX (1024 * 1024)
#define DROPIN_FILES_MAX 1024

typedef struct key_def key_def;
typedef int (*value_parser)(const key_def *k, const char *value, void *field, const char **ret_reason);

struct key_def {
        const char *section;
        const char *key;
        value_parser parse;
        size_t offset;
        uint64_t min, max;
};

static int parse_uint(const key_def *k, const char *v, void *field, const char **ret_reason);
static int parse_size(const key_def *k, const char *v, void *field, const char **ret_reason);
static int parse_seconds(const key_def *k, const char *v, void *field, const char **ret_reason);
static int parse_log_level(const key_def *k, const char *v, void *field, const char **ret_reason);
static int parse_socket_path(const key_def *k, const char *v, void *field, const char **ret_reason);
static int parse_group(const key_def *k, const char *v, void *field, const char **ret_reason);
static int parse_bool(const key_def *k, const char *v, void *field, const char **ret_reason);
static int parse_string(const key_def *k, const char *v, void *field, const char **ret_reason);
static int parse_path(const key_def *k, const char *v, void *field, const char **ret_reason);
static int parse_optional_path(const key_def *k, const char *v, void *field, const char **ret_reason);
static int parse_dtype(const key_def *k, const char *v, void *field, const char **ret_reason);
static int parse_worker_path(const key_def *k, const char *v, void *field, const char **ret_reason);
static int parse_plugin_dir(const key_def *k, const char *v, void *field, const char **ret_reason);
static int parse_selectors(const key_def *k, const char *v, void *field, const char **ret_reason);
static int parse_reserve(const key_def *k, const char *v, void *field, const char **ret_reason);
static int parse_reserve_overrides(const key_def *k, const char *v, void *field, const char **ret_reason);
static int parse_metrics_listen(const key_def *k, const char *v, void *field, const char **ret_reason);
static int parse_job_defaults(const key_def *k, const char *v, void *field, const char **ret_reason);

#define KEY(sec, name, parser, member, lo, hi) \
        {sec, name, parser, offsetof(gh_config, member), lo, hi}

static const key_def key_table[] = {
        KEY("daemon", "log_level", parse_log_level, log_level, 0, 0),
        KEY("daemon", "shutdown_grace_sec", parse_seconds, shutdown_grace_usec, 0, 3600),
        KEY("daemon", "admin_group", parse_group, admin_group, 0, 0),
        KEY("socket", "path", parse_socket_path, socket_path, 0, 0),
        KEY("socket", "group", parse_group, socket_group, 0, 0),
        KEY("limits", "max_connections", parse_uint, max_connections, 1, 65536),
        KEY("limits", "max_connections_per_user", parse_uint, max_connections_per_user, 1, 65536),
        KEY("limits", "max_message_size", parse_size, max_message_size, 4096, 64 * 1024 * 1024),
        KEY("limits", "max_pending_requests", parse_uint, max_pending_requests, 1, 4096),
        KEY("limits", "max_fds_per_message", parse_uint, max_fds_per_message, 0, 253),
        KEY("limits", "max_json_depth", parse_uint, max_json_depth, 4, 1024),
        KEY("limits", "idle_timeout_sec", parse_seconds, idle_timeout_usec, 1, 86400),
        KEY("limits", "max_output_buffer", parse_size, max_output_buffer, 65536, UINT64_C(1) << 32),
        KEY("devices", "include", parse_selectors, devices_include, 0, 0),
        KEY("devices", "exclude", parse_selectors, devices_exclude, 0, 0),
        KEY("devices", "reserve", parse_reserve, devices_reserve, 0, 0),
        KEY("devices", "reserve_per_device", parse_reserve_overrides, devices_reserve_per_device, 0, 0),
        KEY("devices", "slab_size", parse_size, slab_size, UINT64_C(2) << 20, UINT64_C(4) << 30),
        KEY("devices", "cpu", parse_bool, cpu_enabled, 0, 0),
        KEY("devices", "cpu_memory", parse_size, cpu_memory, 0, UINT64_C(1) << 42),
        KEY("devices", "cpu_devices", parse_uint, cpu_devices, 1, 16),
        KEY("models", "directory", parse_path, models_directory, 0, 0),
        KEY("models", "tokenizer", parse_optional_path, models_tokenizer, 0, 0),
        KEY("workers", "executable", parse_worker_path, worker_executable, 0, 0),
        KEY("workers", "plugin_directory", parse_plugin_dir, plugin_directory, 0, 0),
        KEY("workers", "heartbeat_timeout_sec", parse_seconds, heartbeat_timeout_usec, 1, 3600),
        KEY("workers", "quarantine_crashes", parse_uint, quarantine_crashes, 0, 1000),
        KEY("workers", "quarantine_window_sec", parse_seconds, quarantine_window_usec, 1, 86400),
        KEY("workers", "max_output_size", parse_size, max_output_size, UINT64_C(1) << 20, UINT64_C(16) << 30),
        KEY("workers", "cpu_threads", parse_uint, cpu_threads, 0, 1024),
        KEY("jobs", "max_queued", parse_uint, max_queued, 1, 1000000),
        KEY("jobs", "max_queued_per_user", parse_uint, max_queued_per_user, 1, 1000000),
        KEY("jobs", "aging_sec", parse_seconds, aging_usec, 0, 86400),
        KEY("jobs", "keep_finished_sec", parse_seconds, keep_finished_usec, 0, 86400),
        KEY("jobs", "max_finished", parse_uint, max_finished, 0, 100000),
        KEY("jobs", "max_inline_output", parse_size, max_inline_output, 0, UINT64_C(32) << 20),
        KEY("metrics", "listen", parse_metrics_listen, metrics_listen, 0, 0),
        KEY("scheduler", "jobs_per_device", parse_uint, jobs_per_device, 1, 64),
        KEY("scheduler", "weight_interactive", parse_uint, weight[0], 1, 1000),
        KEY("scheduler", "weight_normal", parse_uint, weight[1], 1, 1000),
        KEY("scheduler", "weight_batch", parse_uint, weight[2], 1, 1000),
        KEY("scheduler", "step_timeout_sec", parse_seconds, step_timeout_usec, 0, 86400),
        KEY("scheduler", "unit_sms", parse_uint, unit_sms, 0, 1024),
};

/* Keys of [model NAME] sections; offsets into gh_model_config. */
#define MODEL_KEY(name, parser, member) {"model", name, parser, offsetof(gh_model_config, member), 0, 0}
static const key_def model_key_table[] = {
        MODEL_KEY("path", parse_path, path),
        MODEL_KEY("dtype", parse_dtype, dtype),
        MODEL_KEY("devices", parse_selectors, devices),
        MODEL_KEY("pinned", parse_bool, pinned),
        MODEL_KEY("tokenizer", parse_optional_path, tokenizer),
        MODEL_KEY("parameters", parse_job_defaults, parameters),
};

#define MODEL_SECTION "model "
#define MODEL_NAME_MAX 64

/* "[model NAME]": NAME of letters, digits, '.', '_' and '-'. */
static const char *model_section_name(const char *section) {
        size_t n = strlen(MODEL_SECTION);

        if (strncmp(section, MODEL_SECTION, n) != 0)
                return NULL;
        const char *name = section + n;
        size_t len = strlen(name);
        if (len == 0 || len > MODEL_NAME_MAX || name[0] == '.' || name[0] == '-')
                return NULL;
        for (const char *p = name; *p; p++)
                if (!isalnum((unsigned char) *p) && !strchr("._-", *p))
                        return NULL;
        return name;
}

static bool section_known(const char *name) {
        if (model_section_name(name))
                return true;
        for (size_t i = 0; i < ELEMENTSOF(key_table); i++)
                if (strcmp(key_table[i].section, name) == 0)
                        return true;
        return false;
}

static int parse_u64(const char *v, uint64_t *ret) {
        char *end;

        if (!isdigit((unsigned char) v[0]))
                return -EINVAL;
        errno = 0;
        unsigned long long n = strtoull(v, &end, 10);
        if (errno == ERANGE)
                return -ERANGE;
        *ret = n;
        return (int) (end - v);
}

static int check_range(const key_def *k, uint64_t n, const char **ret_reason) {
        static __thread char reason[128];

        if (n >= k->min && n <= k->max)
                return 0;
        snprintf(reason, sizeof(reason), "out of range (allowed %" PRIu64 "..%" PRIu64 ")", k->min, k->max);
        *ret_reason = reason;
        return -ERANGE;
}

static int parse_uint(const key_def *k, const char *v, void *field, const char **ret_reason) {
        uint64_t n;
        int len = parse_u64(v, &n);

        if (len == -ERANGE || (len > 0 && v[len] == 0 && n > UINT_MAX))
                n = UINT64_MAX;
        else if (len <= 0 || v[len] != 0) {
                *ret_reason = "not a non-negative integer";
                return -EINVAL;
        }
        if (check_range(k, n, ret_reason) < 0)
                return -ERANGE;
        *(unsigned *) field = (unsigned) n;
        return 0;
}

/* Bytes with an optional binary suffix: K, M, G (or KiB, MiB, GiB). */
static int parse_size(const key_def *k, const char *v, void *field, const char **ret_reason) {
        static const struct {
                const char *suffix;
                uint64_t factor;
        } suffixes[] = {{"", 1}, {"K", 1 << 10}, {"KiB", 1 << 10}, {"M", 1 << 20},
                        {"MiB", 1 << 20}, {"G", 1 << 30}, {"GiB", 1 << 30}};
        uint64_t n;
        int len = parse_u64(v, &n);

        if (len <= 0 && len != -ERANGE) {
                *ret_reason = "not a size (a number with an optional K, M or G suffix)";
                return -EINVAL;
        }
        for (size_t i = 0; len > 0 && i < ELEMENTSOF(suffixes); i++) {
                if (strcmp(v + len, suffixes[i].suffix) != 0)
                        continue;
                uint64_t bytes = n > UINT64_MAX / suffixes[i].factor ? UINT64_MAX : n * suffixes[i].factor;
                if (check_range(k, bytes, ret_reason) < 0)
                        return -ERANGE;
                *(uint64_t *) field = bytes;
                return 0;
        }
        if (len == -ERANGE)
                return check_range(k, UINT64_MAX, ret_reason);
        *ret_reason = "unknown size suffix (use K, M or G)";
        return -EINVAL;
}

static int parse_seconds(const key_def *k, const char *v, void *field, const char **ret_reason) {
        unsigned n;
        int r = parse_uint(k, v, &n, ret_reason);

        if (r < 0)
                return r;
        *(uint64_t *) field = (uint64_t) n * USEC_PER_SEC;
        return 0;
}

static int parse_log_level(const key_def *k, const char *v, void *field, const char **ret_reason) {
        int level = gh_log_level_from_string(v);

        if (level < LOG_ERR) { /* emerg..crit would hide errors */
                *ret_reason = "not a log level (err, warning, notice, info, debug)";
                return -EINVAL;
        }
        *(int *) field = level;
        return 0;
}

static int set_string(void *field, const char *v) {
        char *copy = v[0] ? strdup(v) : NULL;

        if (v[0] && !copy)
                return -ENOMEM;
        free(*(char **) field);
        *(char **) field = copy;
        return 0;
}

static int parse_socket_path(const key_def *k, const char *v, void *field, const char **ret_reason) {
        if (v[0] != '/') {
                *ret_reason = "not an absolute path";
                return -EINVAL;
        }
        if (strlen(v) >= sizeof(((struct sockaddr_un *) NULL)->sun_path)) {
                *ret_reason = "too long for a Unix socket path (at most 107 bytes)";
                return -EINVAL;
        }
        return set_string(field, v);
}

/* A group name that exists on this system; empty resets to the default.
 * The gid is resolved later, in gh_config_verify(). */
static int parse_group(const key_def *k, const char *v, void *field, const char **ret_reason) {
        if (strlen(v) > 64) {
                *ret_reason = "group name too long";
                return -EINVAL;
        }
        for (const char *p = v; *p; p++)
                if (!isalnum((unsigned char) *p) && !strchr("_-.", *p)) {
                        *ret_reason = "not a valid group name";
                        return -EINVAL;
                }
        return set_string(field, v);
}

static int parse_bool(const key_def *k, const char *v, void *field, const char **ret_reason) {
        static const char *const yes[] = {"yes", "true", "on", "1"}, *const no[] = {"no", "false", "off", "0"};

        for (size_t i = 0; i < ELEMENTSOF(yes); i++)
                if (strcmp(v, yes[i]) == 0 || strcmp(v, no[i]) == 0) {
                        *(bool *) field = strcmp(v, yes[i]) == 0;
                        return 0;
                }
        *ret_reason = "not a boolean (yes or no)";
        return -EINVAL;
}

static int parse_string(const key_def *k, const char *v, void *field, const char **ret_reason) {
        if (strlen(v) > 1024) {
                *ret_reason = "value too long (at most 1024 characters)";
                return -EINVAL;
        }
        return set_string(field, v);
}

static int parse_path(const key_def *k, const char *v, void *field, const char **ret_reason) {
        if (v[0] != '/') {
                *ret_reason = "not an absolute path";
                return -EINVAL;
        }
        if (strlen(v) >= PATH_MAX) {
                *ret_reason = "path too long";
                return -EINVAL;
        }
        return set_string(field, v);
}

/* An absolute path, or empty for none (NULL). */
static int parse_optional_path(const key_def *k, const char *v, void *field, const char **ret_reason) {
        return *v ? parse_path(k, v, field, ret_reason) : set_string(field, v);
}

/* [model] parameters: a JSON object of job parameter defaults, each a
 * string, number or boolean (the model itself is not one), stored in its
 * plain JSON text; empty: none. Its length is bounded by the line's. */
static int parse_job_defaults(const key_def *k, const char *v, void *field, const char **ret_reason) {
        (void) k;
        if (!*v)
                return set_string(field, v);
        json_tokener *tok = json_tokener_new_ex(4);
        if (!tok)
                return -ENOMEM;
        json_object *o = json_tokener_parse_ex(tok, v, (int) strlen(v));
        bool whole = json_tokener_get_error(tok) == json_tokener_success && json_tokener_get_parse_end(tok) == strlen(v);
        json_tokener_free(tok);
        int r = -EINVAL;
        if (!whole || !json_object_is_type(o, json_type_object))
                *ret_reason = "not a JSON object, e.g. {\"width\": 64, \"height\": 64}";
        else if (json_object_object_get_ex(o, "model", NULL))
                *ret_reason = "\"model\" is not a default of itself";
        else {
                r = 0;
                json_object_object_foreach(o, key, val) {
                        (void) key;
                        json_type t = json_object_get_type(val);
                        if (t != json_type_string && t != json_type_int && t != json_type_double &&
                            t != json_type_boolean) {
                                *ret_reason = "each value must be a string, a number or a boolean";
                                r = -EINVAL;
                                break;
                        }
                }
        }
        if (r == 0)
                r = set_string(field, json_object_to_json_string_ext(o, JSON_C_TO_STRING_PLAIN));
        json_object_put(o);
        return r;
}

/* Paths whose default depends on where gpuhost is installed: empty means
 * that default. */
static int parse_worker_path(const key_def *k, const char *v, void *field, const char **ret_reason) {
        return parse_path(k, *v ? v : GH_WORKER_PATH, field, ret_reason);
}

static int parse_plugin_dir(const key_def *k, const char *v, void *field, const char **ret_reason) {
        return parse_path(k, *v ? v : GH_PLUGINDIR, field, ret_reason);
}

static int parse_dtype(const key_def *k, const char *v, void *field, const char **ret_reason) {
        static const char *const names[] = {"keep", "fp32", "fp16", "bf16"};

        for (size_t i = 0; i < ELEMENTSOF(names); i++)
                if (strcmp(v, names[i]) == 0)
                        return set_string(field, i == 0 ? "" : v);
        *ret_reason = "not a dtype (keep, fp32, fp16 or bf16)";
        return -EINVAL;
}

/* Device lists and reserves are kept as text and checked here, so that a
 * bad one is reported at its line. */
static int parse_selectors(const key_def *k, const char *v, void *field, const char **ret_reason) {
        gh_device_selector sel[GH_DEVICE_SELECTORS_MAX];
        size_t n;
        int r = gh_device_selectors_parse(v, sel, GH_DEVICE_SELECTORS_MAX, &n, ret_reason);

        return r < 0 ? r : parse_string(k, v, field, ret_reason);
}

static int parse_reserve(const key_def *k, const char *v, void *field, const char **ret_reason) {
        gh_reserve res;
        int r = gh_reserve_parse(v, &res, ret_reason);

        return r < 0 ? r : parse_string(k, v, field, ret_reason);
}

static int parse_reserve_overrides(const key_def *k, const char *v, void *field, const char **ret_reason) {
        gh_devices_config dc;

        gh_devices_config_init(&dc);
        int r = gh_reserve_overrides_parse(v, &dc, ret_reason);
        return r < 0 ? r : parse_string(k, v, field, ret_reason);
}

/* [metrics] listen: empty (off) or a loopback HOST:PORT. */
static int parse_metrics_listen(const key_def *k, const char *v, void *field, const char **ret_reason) {
        struct sockaddr_storage addr;
        socklen_t len;

        if (v[0] && gh_metrics_listen_parse(v, &addr, &len, ret_reason) < 0)
                return -EINVAL;
        return parse_string(k, v, field, ret_reason);
}

int gh_config_new(gh_config **ret) {
        gh_config *c = calloc(1, sizeof(*c));

        if (!c)
                return -ENOMEM;
        *c = (gh_config) {
                .log_level = LOG_INFO,
                .shutdown_grace_usec = 30 * USEC_PER_SEC,
                .socket_path = strdup(GH_DEFAULT_SOCKET),
                .socket_gid = (gid_t) -1,
                .admin_gid = (gid_t) -1,
                .max_connections = 256,
                .max_connections_per_user = 64,
                .max_message_size = GH_DEFAULT_MAX_MESSAGE_SIZE,
                .max_pending_requests = 32,
                .max_fds_per_message = 16,
                .max_json_depth = 64,
                .idle_timeout_usec = 300 * USEC_PER_SEC,
                .max_output_buffer = 16 * 1024 * 1024,
                .slab_size = UINT64_C(256) << 20,
                .cpu_enabled = true,
                .cpu_devices = 1,
                .devices_reserve = strdup("1G"),
                .models_directory = strdup(GH_DEFAULT_MODELS_DIR),
                .worker_executable = strdup(GH_WORKER_PATH),
                .plugin_directory = strdup(GH_PLUGINDIR),
                .heartbeat_timeout_usec = 30 * USEC_PER_SEC,
                .quarantine_crashes = 3,
                .quarantine_window_usec = 600 * USEC_PER_SEC,
                .max_output_size = UINT64_C(1) << 30,
                .max_queued = 1024,
                .max_queued_per_user = 256,
                .aging_usec = 30 * USEC_PER_SEC,
                .keep_finished_usec = 300 * USEC_PER_SEC,
                .max_finished = 256,
                .max_inline_output = UINT64_C(4) << 20,
                .jobs_per_device = 4,
                .weight = {8, 4, 1},
                .step_timeout_usec = 300 * USEC_PER_SEC,
                .unit_sms = 16,
        };
        if (!c->socket_path || !c->models_directory || !c->devices_reserve || !c->worker_executable ||
            !c->plugin_directory) {
                free(c->socket_path);
                free(c->devices_reserve);
                free(c->models_directory);
                free(c->worker_executable);
                free(c->plugin_directory);
                free(c);
                return -ENOMEM;
        }
        *ret = c;
        return 0;
}

gh_config *gh_config_free(gh_config *c) {
        if (!c)
                return NULL;
        free(c->admin_group);
        free(c->socket_path);
        free(c->socket_group);
        free(c->devices_include);
        free(c->devices_exclude);
        free(c->devices_reserve);
        free(c->devices_reserve_per_device);
        free(c->models_directory);
        free(c->models_tokenizer);
        free(c->worker_executable);
        free(c->plugin_directory);
        free(c->metrics_listen);
        for (size_t i = 0; i < c->n_models; i++) {
                gh_model_config *m = &c->models[i];
                free(m->name);
                free(m->path);
                free(m->dtype);
                free(m->devices);
                free(m->tokenizer);
                free(m->parameters);
                free(m->file);
        }
        free(c->models);
        for (size_t i = 0; i < c->n_files; i++)
                free(c->files[i]);
        free(c->files);
        free(c);
        return NULL;
}

_printf_(6, 7) static void set_error(gh_config_error *e, const char *file, unsigned line,
                                     const char *section, const char *key, const char *fmt, ...) {
        va_list ap;

        snprintf(e->file, sizeof(e->file), "%s", file);
        e->line = line;
        if (key && section)
                snprintf(e->key, sizeof(e->key), "[%s] %s", section, key);
        else if (section)
                snprintf(e->key, sizeof(e->key), "[%s]", section);
        else
                e->key[0] = 0;
        va_start(ap, fmt);
        vsnprintf(e->message, sizeof(e->message), fmt, ap);
        va_end(ap);
}

/* State of one file's parse, shared by the line reader and the handler. */
typedef struct parse_ctx {
        gh_config *config;
        const char *filename;
        const char *text, *pos, *end;
        unsigned lineno;
        gh_config_error *error;
        bool failed;
        int errnum;
} parse_ctx;

static void ctx_fail(parse_ctx *ctx, int errnum, const char *section, const char *key,
                     const char *message) {
        if (ctx->failed)
                return; /* report the first error only */
        ctx->failed = true;
        ctx->errnum = errnum;
        set_error(ctx->error, ctx->filename, ctx->lineno, section, key, "%s", message);
}

/* The [model NAME] entry, created on first sight; a later file's keys
 * override an earlier one's. */
static gh_model_config *model_get(parse_ctx *ctx, const char *name) {
        gh_config *c = ctx->config;

        for (size_t i = 0; i < c->n_models; i++)
                if (strcmp(c->models[i].name, name) == 0)
                        return &c->models[i];
        if (c->n_models >= GH_CONFIG_MODELS_MAX)
                return NULL;
        gh_model_config *m = realloc(c->models, (c->n_models + 1) * sizeof(*m));
        if (!m)
                return NULL;
        c->models = m;
        m = &c->models[c->n_models];
        *m = (gh_model_config) {.name = strdup(name), .file = strdup(ctx->filename), .line = ctx->lineno};
        if (!m->name || !m->file) {
                free(m->name);
                free(m->file);
                return NULL;
        }
        c->n_models++;
        return m;
}

/* Checks a "[section]" line as the reader hands it on, so that an unknown
 * section is an error even when it holds no keys. */
static void check_section_line(parse_ctx *ctx, const char *line, size_t len) {
        char name[128];
        const char *close = memchr(line, ']', len);

        if (!close)
                return; /* inih reports the syntax error */
        size_t n = (size_t) (close - line - 1);
        if (n >= sizeof(name)) {
                ctx_fail(ctx, -EINVAL, NULL, NULL, "section name too long");
                return;
        }
        memcpy(name, line + 1, n);
        name[n] = 0;
        if (!section_known(name))
                ctx_fail(ctx, -EINVAL, name, NULL, "unknown section");
        else if (model_section_name(name) && !model_get(ctx, model_section_name(name)))
                ctx_fail(ctx, -E2BIG, name, NULL, "too many models (or out of memory)");
}

/* inih line reader over the file text: counts lines, strips leading blanks
 * (inih would otherwise take an indented line as a continuation), refuses
 * over-long lines and NUL bytes. */
static char *ctx_read_line(char *str, int num, void *stream) {
        parse_ctx *ctx = stream;

        if (ctx->pos >= ctx->end || ctx->failed)
                return NULL;
        const char *nl = memchr(ctx->pos, '\n', (size_t) (ctx->end - ctx->pos));
        const char *line_end = nl ? nl + 1 : ctx->end;
        const char *p = ctx->pos;
        ctx->pos = line_end;
        ctx->lineno++;
        while (p < line_end && (*p == ' ' || *p == '\t'))
                p++;
        size_t len = (size_t) (line_end - p);
        if (memchr(p, 0, len)) {
                ctx_fail(ctx, -EINVAL, NULL, NULL, "line contains a NUL byte");
                return NULL;
        }
        /* num - 2: room for the newline and the NUL, so the newline itself
         * does not count towards the 198 characters */
        if (len - (nl ? 1 : 0) > (size_t) num - 2) {
                ctx_fail(ctx, -EINVAL, NULL, NULL, "line too long (at most 198 characters)");
                return NULL;
        }
        memcpy(str, p, len);
        str[len] = 0;
        if (len > 0 && *p == '[')
                check_section_line(ctx, p, len);
        return str;
}

static const key_def *key_lookup(const char *section, const char *name) {
        for (size_t i = 0; i < ELEMENTSOF(key_table); i++)
                if (strcmp(key_table[i].section, section) == 0 && strcmp(key_table[i].key, name) == 0)
                        return &key_table[i];
        return NULL;
}

static int model_handler(parse_ctx *ctx, const char *section, const char *name, const char *value) {
        const char *reason = NULL;
        const key_def *k = NULL;

        for (size_t i = 0; i < ELEMENTSOF(model_key_table); i++)
                if (strcmp(model_key_table[i].key, name) == 0)
                        k = &model_key_table[i];
        if (!k) {
                ctx_fail(ctx, -EINVAL, section, name, "unknown key");
                return 0;
        }
        gh_model_config *m = model_get(ctx, model_section_name(section));
        if (!m) {
                ctx_fail(ctx, -E2BIG, section, NULL, "too many models (or out of memory)");
                return 0;
        }
        int r = k->parse(k, value, (char *) m + k->offset, &reason);
        if (r < 0) {
                ctx_fail(ctx, r, section, name, r == -ENOMEM ? "out of memory" : reason);
                return 0;
        }
        return 1;
}

static int ctx_handler(void *user, const char *section, const char *name, const char *value) {
        parse_ctx *ctx = user;
        const char *reason = NULL;

        if (ctx->failed)
                return 1;
        if (!section[0]) {
                char msg[192];
                snprintf(msg, sizeof(msg), "key '%.128s' outside of a section", name);
                ctx_fail(ctx, -EINVAL, NULL, NULL, msg);
                return 0;
        }
        if (!section_known(section))
                return 0; /* reported by the reader */
        if (model_section_name(section))
                return model_handler(ctx, section, name, value);
        const key_def *k = key_lookup(section, name);
        if (!k) {
                ctx_fail(ctx, -EINVAL, section, name, "unknown key");
                return 0;
        }
        int r = k->parse(k, value, (char *) ctx->config + k->offset, &reason);
        if (r < 0) {
                ctx_fail(ctx, r, section, name, r == -ENOMEM ? "out of memory" : reason);
                return 0;
        }
        return 1;
}

int gh_config_parse_string(gh_config *c, const char *text, size_t len, const char *filename,
                           gh_config_error *ret_error) {
        parse_ctx ctx = {
                .config = c, .filename = filename, .text = text, .pos = text, .end = text + len,
                .error = ret_error,
        };

        int line = ini_parse_stream(ctx_read_line, &ctx, ctx_handler, &ctx);
        if (line > 0 && (!ctx.failed || (unsigned) line < ctx.error->line)) {
                ctx.failed = false;
                ctx.lineno = (unsigned) line;
                ctx_fail(&ctx, -EINVAL, NULL, NULL, "syntax error (expected [section] or key = value)");
        } else if (line < 0 && !ctx.failed)
                ctx_fail(&ctx, -ENOMEM, NULL, NULL, "out of memory");
        return ctx.failed ? ctx.errnum : 0;
}

static int resolve_group(const char *name, gid_t *ret) {
        struct group grp, *result = NULL;
        char buf[16384];

        if (!name) {
                *ret = (gid_t) -1;
                return 0;
        }
        int r = getgrnam_r(name, &grp, buf, sizeof(buf), &result);
        if (r != 0)
                return -r;
        if (!result)
                return -ENOENT;
        *ret = result->gr_gid;
        return 0;
}

int gh_config_verify(const gh_config *c, gh_config_error *ret_error) {
        gh_config *mc = (gh_config *) c; /* gids are derived, not configured */
        const char *last = c->n_files ? c->files[c->n_files - 1] : "(defaults)";

        if (c->max_connections_per_user > c->max_connections) {
                set_error(ret_error, last, 0, "limits", "max_connections_per_user",
                          "must not exceed max_connections");
                return -EINVAL;
        }
        for (size_t i = 0; i < c->n_models; i++)
                if (!c->models[i].path) {
                        char section[128];
                        snprintf(section, sizeof(section), "model %s", c->models[i].name);
                        set_error(ret_error, c->models[i].file, c->models[i].line, section, "path",
                                  "missing: every model needs a path");
                        return -EINVAL;
                }
        if (c->slab_size % (UINT64_C(2) << 20) != 0) {
                set_error(ret_error, last, 0, "devices", "slab_size", "must be a multiple of 2M");
                return -EINVAL;
        }
        if (resolve_group(c->socket_group, &mc->socket_gid) < 0) {
                set_error(ret_error, last, 0, "socket", "group", "no such group '%s'", c->socket_group);
                return -ENOENT;
        }
        if (resolve_group(c->admin_group, &mc->admin_gid) < 0) {
                set_error(ret_error, last, 0, "daemon", "admin_group", "no such group '%s'", c->admin_group);
                return -ENOENT;
        }
        return 0;
}

static int read_file(const char *path, char **ret, size_t *ret_len, const char **ret_reason) {
        _cleanup_fclose_ FILE *f = fopen(path, "re");
        struct stat st;

        if (!f)
                return gh_negerrno();
        if (fstat(fileno(f), &st) < 0)
                return gh_negerrno();
        if (!S_ISREG(st.st_mode)) {
                *ret_reason = "not a regular file";
                return -EINVAL;
        }
        if (st.st_size > CONFIG_FILE_MAX) {
                *ret_reason = "file too large (at most 1 MiB)";
                return -EFBIG;
        }
        char *buf = malloc((size_t) st.st_size + 1);
        if (!buf)
                return -ENOMEM;
        size_t n = fread(buf, 1, (size_t) st.st_size, f);
        if (ferror(f)) {
                free(buf);
                return -EIO;
        }
        buf[n] = 0;
        *ret = buf;
        *ret_len = n;
        return 0;
}

static int add_file(gh_config *c, const char *path) {
        char **f = realloc(c->files, (c->n_files + 1) * sizeof(char *));

        if (!f)
                return -ENOMEM;
        c->files = f;
        c->files[c->n_files] = strdup(path);
        if (!c->files[c->n_files])
                return -ENOMEM;
        c->n_files++;
        return 0;
}

static int apply_file(gh_config *c, const char *path, bool must_exist, gh_config_error *err) {
        _cleanup_free_ char *text = NULL;
        const char *reason = NULL;
        size_t len;
        int r = read_file(path, &text, &len, &reason);

        if (r == -ENOENT && !must_exist)
                return 0;
        if (r < 0) {
                set_error(err, path, 0, NULL, NULL, "%s", reason ? reason : strerror(-r));
                return r;
        }
        r = add_file(c, path);
        if (r < 0)
                return r;
        return gh_config_parse_string(c, text, len, path, err);
}

/* Lists the "*.conf" drop-ins of |dir| in byte order; none if it is absent. */
static int list_dropins(const char *dir, char ***ret, size_t *ret_n, gh_config_error *err) {
        int r = gh_dir_list(dir, ".conf", DROPIN_FILES_MAX, ret, ret_n);

        if (r == -ENOENT) {
                *ret = NULL;
                *ret_n = 0;
                return 0;
        }
        if (r < 0)
                set_error(err, dir, 0, NULL, NULL, "%s", r == -E2BIG ? "too many drop-in files" : strerror(-r));
        return r;
}

int gh_config_load(const char *override_path, const char *main_path, const char *dropin_dir,
                   gh_config **ret, gh_config_error *ret_error) {
        _cleanup_(gh_config_freep) gh_config *c = NULL;
        char **dropins = NULL;
        size_t n_dropins = 0;
        int r = gh_config_new(&c);

        if (r < 0)
                return r;
        if (override_path)
                r = apply_file(c, override_path, true, ret_error);
        else {
                r = apply_file(c, main_path, false, ret_error);
                if (r >= 0)
                        r = list_dropins(dropin_dir, &dropins, &n_dropins, ret_error);
                for (size_t i = 0; r >= 0 && i < n_dropins; i++)
                        r = apply_file(c, dropins[i], true, ret_error);
                gh_strv_free(dropins, n_dropins);
        }
        if (r >= 0)
                r = gh_config_verify(c, ret_error);
        if (r < 0)
                return r;
        *ret = TAKE_PTR(c);
        return 0;
}

void gh_config_error_format(const gh_config_error *e, char *buf, size_t size) {
        char line[16] = "";

        if (e->line > 0)
                snprintf(line, sizeof(line), ":%u", e->line);
        snprintf(buf, size, "%s%s: %s%s%s", e->file, line, e->key, e->key[0] ? ": " : "", e->message);
}

json_object *gh_config_error_to_json(const gh_config_error *e) {
        json_object *o = json_object_new_object();

        json_object_object_add(o, "file", json_object_new_string(e->file));
        json_object_object_add(o, "line", json_object_new_int64(e->line));
        json_object_object_add(o, "key", json_object_new_string(e->key));
        json_object_object_add(o, "message", json_object_new_string(e->message));
        return o;
}

json_object *gh_config_summary(const gh_config *c) {
        json_object *o = json_object_new_object(), *files = json_object_new_array();

        for (size_t i = 0; i < c->n_files; i++)
                json_object_array_add(files, json_object_new_string(c->files[i]));
        json_object_object_add(o, "files", files);
        json_object_object_add(o, "socket", json_object_new_string(c->socket_path));
        json_object_object_add(o, "log_level", json_object_new_string(gh_log_level_to_string(c->log_level)));
        json_object_object_add(o, "max_connections", json_object_new_int64(c->max_connections));
        json_object_object_add(o, "max_connections_per_user", json_object_new_int64(c->max_connections_per_user));
        json_object_object_add(o, "max_message_size", json_object_new_int64((int64_t) c->max_message_size));
        json_object_object_add(o, "max_pending_requests", json_object_new_int64(c->max_pending_requests));
        json_object_object_add(o, "idle_timeout_sec", json_object_new_int64((int64_t) (c->idle_timeout_usec / USEC_PER_SEC)));
        json_object_object_add(o, "shutdown_grace_sec", json_object_new_int64((int64_t) (c->shutdown_grace_usec / USEC_PER_SEC)));
        return o;
}

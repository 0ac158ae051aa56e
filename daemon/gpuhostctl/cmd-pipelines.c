/* gpuhostctl pipelines [NAME]: the pipelines the workers offer and the
 * plugin files they refused (io.gpuhost.ListPipelines); with NAME, one
 * pipeline and its parameter table. */
#include <errno.h>
#include <inttypes.h>
#include <math.h>
#include <stdarg.h>
#include <stdio.h>
#include <string.h>

#include "ctl.h"

#define DESC_COL_MAX 60

/* Appends to |buf| (of |size|, holding |*len| characters), stopping
 * quietly at the end of the buffer. */
__attribute__((format(printf, 4, 5))) static void append(char *buf, size_t size, size_t *len, const char *fmt, ...) {
        va_list ap;

        if (*len + 1 >= size)
                return;
        va_start(ap, fmt);
        int n = vsnprintf(buf + *len, size - *len, fmt, ap);
        va_end(ap);
        if (n > 0)
                *len = *len + (size_t) n < size ? *len + (size_t) n : size - 1;
}

static json_object *array_member(json_object *o, const char *key, size_t *ret_n) {
        json_object *a = NULL;

        if (!json_object_object_get_ex(o, key, &a) || !json_object_is_type(a, json_type_array)) {
                *ret_n = 0;
                return NULL;
        }
        *ret_n = json_object_array_length(a);
        return a;
}

/* A non-null member, or NULL. */
static json_object *member(json_object *o, const char *key) {
        json_object *v = NULL;

        return json_object_object_get_ex(o, key, &v) ? v : NULL;
}

json_object *ctl_pipeline_find(json_object *list_reply, const char *name) {
        size_t n;
        json_object *pipelines = array_member(list_reply, "pipelines", &n);

        for (size_t i = 0; i < n; i++) {
                json_object *p = json_object_array_get_idx(pipelines, i);
                json_object *v = member(p, "name");
                if (v && json_object_is_type(v, json_type_string) && strcmp(json_object_get_string(v), name) == 0)
                        return p;
        }
        return NULL;
}

/* "0,1", or "-" for none. */
static void format_devices(json_object *o, char *buf, size_t size) {
        size_t n, len = 0;
        json_object *devices = array_member(o, "devices", &n);

        buf[0] = 0;
        for (size_t i = 0; i < n; i++)
                append(buf, size, &len, "%s%" PRId64, i ? "," : "",
                       json_object_get_int64(json_object_array_get_idx(devices, i)));
        if (n == 0)
                snprintf(buf, size, "-");
}

/* A bound: an integer when it is one ("150", not "150.000000"). */
static void append_number(char *buf, size_t size, size_t *len, json_object *v) {
        double d = json_object_get_double(v);

        if (json_object_is_type(v, json_type_int))
                append(buf, size, len, "%" PRId64, json_object_get_int64(v));
        else if (isfinite(d) && d == trunc(d) && fabs(d) < 1e15)
                append(buf, size, len, "%.0f", d);
        else
                append(buf, size, len, "%g", d);
}

void ctl_param_format_range(json_object *param, char *buf, size_t size) {
        json_object *min = member(param, "min"), *max = member(param, "max");
        json_object *max_length = member(param, "max_length"), *choices = member(param, "choices");
        size_t len = 0;

        buf[0] = 0;
        if (choices && json_object_is_type(choices, json_type_array)) {
                size_t n = json_object_array_length(choices);
                for (size_t i = 0; i < n; i++)
                        append(buf, size, &len, "%s%s", i ? "|" : "",
                               json_object_get_string(json_object_array_get_idx(choices, i)));
        } else if (min || max) {
                if (min)
                        append_number(buf, size, &len, min);
                append(buf, size, &len, "..");
                if (max)
                        append_number(buf, size, &len, max);
        } else if (max_length)
                append(buf, size, &len, "max %" PRId64, json_object_get_int64(max_length));
        if (len == 0)
                snprintf(buf, size, "-");
}

void ctl_param_format_default(json_object *param, char *buf, size_t size) {
        json_object *required = member(param, "required"), *def = NULL;

        if (required && json_object_get_boolean(required))
                snprintf(buf, size, "required");
        else if (!json_object_object_get_ex(param, "default", &def))
                snprintf(buf, size, "-");
        else if (!def)
                snprintf(buf, size, "null");
        else if (json_object_is_type(def, json_type_string))
                snprintf(buf, size, "%s", json_object_get_string(def));
        else
                snprintf(buf, size, "%s",
                         json_object_to_json_string_ext(def, JSON_C_TO_STRING_PLAIN | JSON_C_TO_STRING_NOSLASHESCAPE));
}

static bool is_quarantined(json_object *p) {
        json_object *v = member(p, "quarantined");

        return v && json_object_get_boolean(v);
}

/* The width of a column: the longest value of |key|, within limits. */
static int column_width(json_object *array, size_t n, const char *key, int min, int max) {
        int w = min;

        for (size_t i = 0; i < n; i++) {
                size_t len = strlen(ctl_json_str(json_object_array_get_idx(array, i), key));
                if (len > (size_t) w)
                        w = len > (size_t) max ? max : (int) len;
        }
        return w;
}

static void print_list(json_object *reply) {
        size_t n, n_refused;
        json_object *pipelines = array_member(reply, "pipelines", &n);
        json_object *refused = array_member(reply, "refused", &n_refused);
        int name_w = column_width(pipelines, n, "name", 4, 32), version_w = column_width(pipelines, n, "version", 7, 16);
        char devices[256];

        if (n == 0)
                printf("(no pipelines)\n");
        else
                printf("%-*s %-*s %-8s %-11s %7s %s\n", name_w, "NAME", version_w, "VERSION", "DEVICES", "STATE",
                       "CRASHES", "DESCRIPTION");
        for (size_t i = 0; i < n; i++) {
                json_object *p = json_object_array_get_idx(pipelines, i);
                format_devices(p, devices, sizeof(devices));
                printf("%-*s %-*s %-8s %-11s %7" PRId64 " %.*s\n", name_w, ctl_json_str(p, "name"), version_w,
                       ctl_json_str(p, "version"), devices, is_quarantined(p) ? "quarantined" : "ok",
                       ctl_json_int(p, "crashes"), DESC_COL_MAX, ctl_json_str(p, "description"));
        }
        if (n_refused == 0)
                return;
        printf("\nrefused plugins:\n");
        for (size_t i = 0; i < n_refused; i++) {
                json_object *r = json_object_array_get_idx(refused, i);
                format_devices(r, devices, sizeof(devices));
                printf("  %s (devices %s): %s\n", ctl_json_str(r, "path"), devices, ctl_json_str(r, "reason"));
        }
}

static void print_parameters(json_object *p) {
        size_t n;
        json_object *params = array_member(p, "parameters", &n);
        int name_w = column_width(params, n, "name", 9, 32), range_w = 5, default_w = 7;
        char range[512], def[512];

        if (n == 0) {
                printf("\n(no parameters)\n");
                return;
        }
        for (size_t i = 0; i < n; i++) {
                json_object *q = json_object_array_get_idx(params, i);
                ctl_param_format_range(q, range, sizeof(range));
                ctl_param_format_default(q, def, sizeof(def));
                if (strlen(range) > (size_t) range_w)
                        range_w = strlen(range) > 40 ? 40 : (int) strlen(range);
                if (strlen(def) > (size_t) default_w)
                        default_w = strlen(def) > 30 ? 30 : (int) strlen(def);
        }
        printf("\n%-*s %-6s %-*s %-*s %s\n", name_w, "PARAMETER", "TYPE", range_w, "RANGE", default_w, "DEFAULT",
               "HELP");
        for (size_t i = 0; i < n; i++) {
                json_object *q = json_object_array_get_idx(params, i);
                ctl_param_format_range(q, range, sizeof(range));
                ctl_param_format_default(q, def, sizeof(def));
                const char *help = ctl_json_str(q, "help");
                /* No blanks at the end of a line without help. */
                printf("%-*s %-6s %-*s %-*s%s%s\n", name_w, ctl_json_str(q, "name"), ctl_json_str(q, "type"), range_w,
                       range, *help ? default_w : 0, def, *help ? " " : "", help);
        }
}

static void print_one(json_object *p) {
        json_object *retry = member(p, "retry_safe");
        char devices[256];

        format_devices(p, devices, sizeof(devices));
        printf("%s %s: %s\n", ctl_json_str(p, "name"), ctl_json_str(p, "version"), ctl_json_str(p, "description"));
        printf("%-12s %s\n", "Devices:", devices);
        printf("%-12s %s, %" PRId64 " crash%s since gpuhostd started%s\n", "State:",
               is_quarantined(p) ? "quarantined" : "ok", ctl_json_int(p, "crashes"),
               ctl_json_int(p, "crashes") == 1 ? "" : "es",
               is_quarantined(p) ? " (take it back with 'gpuhostctl plugin enable')" : "");
        printf("%-12s %s\n", "Retry-safe:", retry && json_object_get_boolean(retry) ? "yes" : "no");
        print_parameters(p);
}

static int run(const ctl_opts *o) {
        const char *name = o->n_args > 0 ? o->args[0] : NULL;
        gh_client *c = NULL;
        json_object *reply = NULL;
        int r = ctl_connect(o, &c);

        if (r == CTL_EXIT_OK)
                r = ctl_call(o, c, "io.gpuhost.ListPipelines", NULL, &reply);
        if (r == CTL_EXIT_OK && !name) {
                if (o->json)
                        ctl_print_json(reply);
                else
                        print_list(reply);
        } else if (r == CTL_EXIT_OK) {
                json_object *p = ctl_pipeline_find(reply, name);
                if (!p) {
                        fprintf(stderr, "gpuhostctl: no pipeline '%s' (see 'gpuhostctl pipelines')\n", name);
                        r = CTL_EXIT_REMOTE;
                } else if (o->json)
                        ctl_print_json(p);
                else
                        print_one(p);
        }
        json_object_put(reply);
        gh_client_free(c);
        return r;
}

const ctl_command ctl_cmd_pipelines = {
        .name = "pipelines",
        .args_usage = "[NAME]",
        .summary = "list the pipelines, or show one and its parameters",
        .description = "Calls io.gpuhost.ListPipelines. Without NAME, prints one line per pipeline:\n"
                       "its name, version, the devices whose worker loaded it, its state (ok, or\n"
                       "quarantined: it crashed too often, see 'gpuhostctl plugin enable'), the\n"
                       "worker deaths while it ran and its description; then the plugin files\n"
                       "the workers refused to load, and why. With NAME, shows that pipeline and\n"
                       "its parameters: type, range (MIN..MAX, an enum's choices, a string's\n"
                       "max length), default (or \"required\") and help; an unknown NAME is an\n"
                       "error (exit status 1). --json prints the reply (with NAME: that\n"
                       "pipeline) as JSON.",
        .options = CTL_OPT_JSON,
        .min_args = 0,
        .max_args = 1,
        .run = run,
};

/* gpuhostctl models: the models gpuhostd knows and where they are resident
 * (io.gpuhost.ListModels), as a table for people or JSON for scripts. */
#include <inttypes.h>
#include <stdarg.h>
#include <stdio.h>
#include <string.h>

#include "ctl.h"

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

/* "0: 2.1 GiB ready refs=1, 1: 2.1 GiB loading 40% refs=0", or "-". */
static void format_resident(json_object *model, char *buf, size_t size) {
        json_object *res = json_object_object_get(model, "resident");
        size_t n = res && json_object_is_type(res, json_type_array) ? json_object_array_length(res) : 0;
        size_t len = 0;

        buf[0] = 0;
        for (size_t i = 0; i < n; i++) {
                json_object *r = json_object_array_get_idx(res, i);
                const char *state = ctl_json_str(r, "state");
                int64_t bytes = ctl_json_int(r, "bytes"), loaded = ctl_json_int(r, "loaded_bytes");
                char size_s[32];

                ctl_format_bytes(bytes, size_s, sizeof(size_s));
                append(buf, size, &len, "%s%" PRId64 ": %s %s", i ? ", " : "", ctl_json_int(r, "device"), size_s, state);
                if (strcmp(state, "loading") == 0 && bytes > 0)
                        append(buf, size, &len, " %" PRId64 "%%", loaded * 100 / bytes);
                append(buf, size, &len, " refs=%" PRId64, ctl_json_int(r, "refcount"));
        }
        if (n == 0)
                snprintf(buf, size, "-");
}

/* "directory", "config", or "removed" for a model no longer declared
 * that is still resident. */
static const char *source(json_object *model) {
        json_object *v;

        if (json_object_object_get_ex(model, "declared", &v) && v && !json_object_get_boolean(v))
                return "removed";
        return ctl_json_str(model, "source");
}

static void print(const ctl_opts *o, gh_client *c, json_object *reply) {
        json_object *models = json_object_object_get(reply, "models");
        size_t n = models && json_object_is_type(models, json_type_array) ? json_object_array_length(models) : 0;
        int name_w = 4, res_w = 8;
        char res[1024];

        if (n == 0) {
                printf("(no models)\n");
                return;
        }
        for (size_t i = 0; i < n; i++) {
                json_object *m = json_object_array_get_idx(models, i);
                size_t len = strlen(ctl_json_str(m, "name"));
                if (len > (size_t) name_w)
                        name_w = len > 64 ? 64 : (int) len;
                format_resident(m, res, sizeof(res));
                if (strlen(res) > (size_t) res_w)
                        res_w = strlen(res) > 64 ? 64 : (int) strlen(res);
        }
        printf("%-*s %-9s %-5s %-6s %-*s %s\n", name_w, "NAME", "SOURCE", "DTYPE", "PINNED", res_w, "RESIDENT", "PATH");
        for (size_t i = 0; i < n; i++) {
                json_object *m = json_object_array_get_idx(models, i), *pinned = NULL;
                bool is_pinned = json_object_object_get_ex(m, "pinned", &pinned) && json_object_get_boolean(pinned);

                format_resident(m, res, sizeof(res));
                printf("%-*s %-9s %-5s %-6s %-*s %s\n", name_w, ctl_json_str(m, "name"), source(m),
                       ctl_json_str(m, "dtype"), is_pinned ? "yes" : "no", res_w, res, ctl_json_str(m, "path"));
        }
}

static int run(const ctl_opts *o) {
        return ctl_call_and_print(o, "io.gpuhost.ListModels", NULL, print);
}

const ctl_command ctl_cmd_models = {
        .name = "models",
        .args_usage = "",
        .summary = "list the models and where they are resident",
        .description = "Calls io.gpuhost.ListModels and prints one line per model: its name,\n"
                       "where it was declared (directory, config, or removed: no longer in the\n"
                       "configuration but still resident), the dtype it is converted to (keep:\n"
                       "as stored), whether it is pinned, where it is resident (\"DEVICE: SIZE\n"
                       "STATE refs=N\" for each device, \"-\" for none) and its path. Load and\n"
                       "unload models with 'gpuhostctl model'. --json prints the reply as JSON.",
        .options = CTL_OPT_JSON,
        .run = run,
};

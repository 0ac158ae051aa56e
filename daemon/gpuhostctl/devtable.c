/* gpuhostctl's device table, shown by "status" and "top": per device its
 * index, name, a VRAM bar and "used/budget" MiB (weights plus job
 * workspaces, of the memory gpuhost may use), running and queued jobs, and
 * the resident models. Pure formatting of GetStatus replies, so the tests
 * can check it without a daemon. */
#include <inttypes.h>
#include <stdio.h>
#include <string.h>

#include "ctl.h"

#define BAR_WIDTH 10
#define BAR_WIDTH_MAX 200
#define NAME_COL_MIN 4
#define NAME_COL_MAX 24
#define MODELS_COL_MAX 60
#define MIB (INT64_C(1) << 20)

int ctl_vram_bar(char *buf, size_t size, int64_t used, int64_t budget, int width) {
        char cells[BAR_WIDTH_MAX + 3];
        int filled = 0;

        if (width < 0)
                width = 0;
        if (width > BAR_WIDTH_MAX)
                width = BAR_WIDTH_MAX;
        if (budget > 0 && used >= budget)
                filled = width;
        else if (budget > 0 && used > 0 && width > 0) {
                filled = (int) ((double) used / (double) budget * width + 0.5);
                filled = filled < 1 ? 1 : filled > width - 1 ? width - 1 : filled;
        }
        cells[0] = '[';
        memset(cells + 1, '#', (size_t) filled);
        memset(cells + 1 + filled, '.', (size_t) (width - filled));
        cells[width + 1] = ']';
        cells[width + 2] = 0;
        return snprintf(buf, size, "%s", cells);
}

/* A member's integer, or -1 when absent or null. */
static int64_t int_or_unknown(json_object *o, const char *key) {
        json_object *v;

        return json_object_object_get_ex(o, key, &v) && v ? json_object_get_int64(v) : -1;
}

void ctl_device_row_from_json(json_object *d, ctl_device_row *ret) {
        json_object *mem = NULL, *pool = NULL, *models = NULL;
        ctl_device_row r = {
                .index = ctl_json_int(d, "index"),
                .name = ctl_json_str(d, "name"),
                .units = int_or_unknown(d, "units"),
                .units_busy = int_or_unknown(d, "units_busy"),
                .running = int_or_unknown(d, "running"),
                .queued = int_or_unknown(d, "queued"),
        };

        if (json_object_object_get_ex(d, "memory", &mem) && json_object_is_type(mem, json_type_object)) {
                r.total = ctl_json_int(mem, "total");
                r.reserve = ctl_json_int(mem, "reserve");
                r.weights = ctl_json_int(mem, "weights");
                r.workspaces = ctl_json_int(mem, "workspaces");
                r.free = ctl_json_int(mem, "free");
        } else {
                r.total = ctl_json_int(d, "memory_total");
                r.reserve = ctl_json_int(d, "memory_reserve");
                r.free = ctl_json_int(d, "memory_free");
                if (json_object_object_get_ex(d, "pool", &pool) && pool)
                        r.weights = ctl_json_int(pool, "used");
        }
        if (json_object_object_get_ex(d, "models", &models) && json_object_is_type(models, json_type_array))
                r.models = models;
        r.budget = mem ? int_or_unknown(mem, "budget") : -1;
        if (r.budget < 0)
                r.budget = r.total > r.reserve ? r.total - r.reserve : 0;
        *ret = r;
}

/* |s| without control characters ('?' instead), cut to |width| bytes with
 * "..." at the end when longer. */
static const char *fit(const char *s, size_t width, char *buf, size_t size) {
        size_t n = strlen(s), i;

        if (width + 1 > size)
                width = size - 1;
        for (i = 0; i < n && i < width; i++)
                buf[i] = (unsigned char) s[i] < 0x20 || s[i] == 0x7f ? '?' : s[i];
        if (n > width && width >= 3)
                memcpy(buf + width - 3, "...", 3);
        buf[i] = 0;
        return buf;
}

/* "sd15, sdxl", cut to MODELS_COL_MAX with the number left out; "-" when
 * none (or the daemon does not say). */
static void format_models(json_object *models, char *buf, size_t size) {
        size_t n = models ? json_object_array_length(models) : 0, len = 0, shown = 0;
        char name[MODELS_COL_MAX + 1];

        snprintf(buf, size, "-");
        for (size_t i = 0; i < n; i++) {
                json_object *m = json_object_array_get_idx(models, i);
                const char *s = fit(m ? json_object_get_string(m) : "?", MODELS_COL_MAX, name, sizeof(name));
                if (len + strlen(s) + 2 > MODELS_COL_MAX && shown > 0)
                        break;
                len += (size_t) snprintf(buf + len, size - len, "%s%s", shown ? ", " : "", s);
                if (len >= size)
                        return;
                shown++;
        }
        if (shown < n)
                snprintf(buf + len, size - len, ", +%zu more", n - shown);
}

/* "2/1"; "-" for a count the daemon does not send. */
static void format_jobs(const ctl_device_row *r, char *buf, size_t size) {
        char run[24] = "-", queued[24] = "-";

        if (r->running < 0 && r->queued < 0) {
                snprintf(buf, size, "-");
                return;
        }
        if (r->running >= 0)
                snprintf(run, sizeof(run), "%" PRId64, r->running);
        if (r->queued >= 0)
                snprintf(queued, sizeof(queued), "%" PRId64, r->queued);
        snprintf(buf, size, "%s/%s", run, queued);
}

static void format_usage(const ctl_device_row *r, char *bar, size_t bar_size, char *mib, size_t mib_size) {
        int64_t used = r->weights + r->workspaces, budget = r->budget;

        ctl_vram_bar(bar, bar_size, used, budget, BAR_WIDTH);
        if (r->total <= 0)
                snprintf(mib, mib_size, "-");
        else
                snprintf(mib, mib_size, "%" PRId64 "/%" PRId64, used / MIB, budget / MIB);
}

static int name_width(json_object *devices, size_t n) {
        size_t w = NAME_COL_MIN;

        for (size_t i = 0; i < n; i++) {
                size_t len = strlen(ctl_json_str(json_object_array_get_idx(devices, i), "name"));
                if (len > w)
                        w = len > NAME_COL_MAX ? NAME_COL_MAX : len;
        }
        return (int) w;
}

void ctl_devices_table_print(FILE *f, json_object *devices) {
        size_t n = devices && json_object_is_type(devices, json_type_array) ? json_object_array_length(devices) : 0;
        int w = name_width(devices, n);

        if (n == 0) {
                fprintf(f, "(no devices)\n");
                return;
        }
        fprintf(f, "%-3s %-*s %-*s %15s %-10s %s\n", "DEV", w, "NAME", BAR_WIDTH + 2, "VRAM", "USED/BUDGET MiB",
                "RUN/QUEUED", "MODELS");
        for (size_t i = 0; i < n; i++) {
                ctl_device_row r;
                char name[NAME_COL_MAX + 1], bar[BAR_WIDTH + 3], mib[48], jobs[56], models[MODELS_COL_MAX + 32];

                ctl_device_row_from_json(json_object_array_get_idx(devices, i), &r);
                format_usage(&r, bar, sizeof(bar), mib, sizeof(mib));
                format_jobs(&r, jobs, sizeof(jobs));
                format_models(r.models, models, sizeof(models));
                fprintf(f, "%-3" PRId64 " %-*s %s %15s %-10s %s\n", r.index, w, fit(r.name, (size_t) w, name, sizeof(name)),
                        bar, mib, jobs, models);
        }
}

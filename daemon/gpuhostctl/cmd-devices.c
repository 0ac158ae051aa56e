/* gpuhostctl devices: the devices gpuhostd serves and their weight pools
 * (io.gpuhost.ListDevices), as a table for people or JSON for scripts.
 *
 * One line per device, within 100 columns; a GPU gets a second, indented
 * line with what identifies it (UUID, PCI bus id, compute capability),
 * and the full name when the NAME column had to shorten it. */
#include <inttypes.h>
#include <stdio.h>
#include <string.h>

#include "ctl.h"

#define NAME_COL_MIN 4
#define NAME_COL_MAX 26

/* The width of the NAME column: the longest name, within limits. */
static int name_width(json_object *devices, size_t n) {
        int w = NAME_COL_MIN;

        for (size_t i = 0; i < n; i++) {
                size_t len = strlen(ctl_json_str(json_object_array_get_idx(devices, i), "name"));
                if (len > (size_t) w)
                        w = len > NAME_COL_MAX ? NAME_COL_MAX : (int) len;
        }
        return w;
}

/* |name| cut to |width| characters, ending in "..." when shortened. */
static const char *fit(const char *name, int width, char *buf, size_t size) {
        if (strlen(name) <= (size_t) width)
                return name;
        snprintf(buf, size, "%.*s...", width - 3, name);
        return buf;
}

/* The second line: only what the device has (the CPU has none of it). */
static void print_details(json_object *d, bool name_cut) {
        static const struct {
                const char *key, *label;
        } fields[] = {
                {"uuid", ""},
                {"pci_bus_id", "bus "},
                {"compute_capability", "compute "},
        };
        bool any = false;

        for (size_t i = 0; i < sizeof(fields) / sizeof(fields[0]); i++) {
                json_object *v;
                if (!json_object_object_get_ex(d, fields[i].key, &v) || !v || !*json_object_get_string(v))
                        continue;
                printf("%s%s%s", any ? "  " : "      ", fields[i].label, json_object_get_string(v));
                any = true;
        }
        if (name_cut) {
                printf("%s%s", any ? "  " : "      ", ctl_json_str(d, "name"));
                any = true;
        }
        if (any)
                printf("\n");
}

static void print(const ctl_opts *o, gh_client *c, json_object *reply) {
        json_object *devices = json_object_object_get(reply, "devices");
        size_t n = devices && json_object_is_type(devices, json_type_array) ? json_object_array_length(devices) : 0;
        int w = name_width(devices, n);

        if (n == 0) {
                printf("(no devices)\n");
                return;
        }
        printf("%-5s %-4s %-*s %10s %10s %10s %21s %5s\n", "INDEX", "KIND", w, "NAME", "MEMORY", "FREE", "BUDGET",
               "POOL-USED/CAPACITY", "SLABS");
        for (size_t i = 0; i < n; i++) {
                json_object *d = json_object_array_get_idx(devices, i), *pool = NULL;
                char total[32], avail[32], budget[32], used[32], capacity[32], pool_s[72], slabs[24], name[64];

                ctl_format_bytes(ctl_json_int(d, "memory_total"), total, sizeof(total));
                ctl_format_bytes(ctl_json_int(d, "memory_free"), avail, sizeof(avail));
                ctl_format_bytes(ctl_json_int(d, "memory_budget"), budget, sizeof(budget));
                if (json_object_object_get_ex(d, "pool", &pool) && pool) {
                        ctl_format_bytes(ctl_json_int(pool, "used"), used, sizeof(used));
                        ctl_format_bytes(ctl_json_int(pool, "capacity"), capacity, sizeof(capacity));
                        snprintf(pool_s, sizeof(pool_s), "%s/%s", used, capacity);
                        snprintf(slabs, sizeof(slabs), "%" PRId64, ctl_json_int(pool, "slabs"));
                } else {
                        snprintf(pool_s, sizeof(pool_s), "-");
                        snprintf(slabs, sizeof(slabs), "-");
                }
                const char *full = ctl_json_str(d, "name");
                const char *shown = fit(full, w, name, sizeof(name));
                printf("%-5" PRId64 " %-4s %-*s %10s %10s %10s %21s %5s\n", ctl_json_int(d, "index"),
                       ctl_json_str(d, "kind"), w, shown, total, avail, budget, pool_s, slabs);
                print_details(d, shown != full);
        }
}

static int run(const ctl_opts *o) {
        return ctl_call_and_print(o, "io.gpuhost.ListDevices", NULL, print);
}

const ctl_command ctl_cmd_devices = {
        .name = "devices",
        .args_usage = "",
        .summary = "list the devices and their weight pools",
        .description = "Calls io.gpuhost.ListDevices and prints one line per device: its index\n"
                       "(for --device), kind (cuda or cpu), name, memory in all, free now, the\n"
                       "budget gpuhost may use, the weight pool's bytes in use and capacity, and\n"
                       "its slabs (\"-\": the budget is below one slab, so no pool). A GPU gets a\n"
                       "second line with its UUID, PCI bus id and compute capability. --json\n"
                       "prints the reply as JSON (every field, for scripts).",
        .options = CTL_OPT_JSON,
        .run = run,
};

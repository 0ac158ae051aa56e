/* The device registry: parsers for the device configuration (selectors and
 * reserves), GPU discovery through the CUDA driver table, and the CPU
 * device from /proc. See devices.h. */
#include <ctype.h>
#include <errno.h>
#include <inttypes.h>
#include <sched.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/sysinfo.h>
#include <unistd.h>

#include "../common/util.h"
#include "cuda.h"
#include "devices.h"

#define GiB (UINT64_C(1) << 30)
#define RESERVE_DEFAULT_PERCENT 5

struct gh_devices {
        size_t n;
        gh_device_info *devices;
};


static double to_gib(uint64_t bytes) {
        return (double) bytes / (double) GiB;
}

void gh_devices_config_init(gh_devices_config *cfg) {
        *cfg = (gh_devices_config) {
                .reserve = {.unit = GH_RESERVE_PERCENT, .value = RESERVE_DEFAULT_PERCENT},
                .cpu_enabled = true,
                .cpu_count = 1,
        };
}

/* ---- parsers ---------------------------------------------------------- */

/* Leading decimal digits of |s| into *ret; the count of digits, 0 if none,
 * -ERANGE on overflow. */
static int parse_digits(const char *s, uint64_t *ret) {
        uint64_t n = 0;
        int len = 0;

        for (; isdigit((unsigned char) s[len]); len++) {
                unsigned digit = (unsigned) (s[len] - '0');
                if (n > (UINT64_MAX - digit) / 10)
                        return -ERANGE;
                n = n * 10 + digit;
        }
        *ret = n;
        return len;
}

/* "xxxxxxxx-xxxx-xxxx-xxxx-xxxxxxxxxxxx" */
static bool is_uuid_body(const char *s) {
        static const char pattern[] = "xxxxxxxx-xxxx-xxxx-xxxx-xxxxxxxxxxxx";

        if (strlen(s) != sizeof(pattern) - 1)
                return false;
        for (size_t i = 0; pattern[i]; i++)
                if (pattern[i] == '-' ? s[i] != '-' : !isxdigit((unsigned char) s[i]))
                        return false;
        return true;
}

int gh_device_selector_parse(const char *s, gh_device_selector *ret, const char **ret_reason) {
        gh_device_selector sel = {0};
        uint64_t n;
        int len = s ? parse_digits(s, &n) : 0;

        if (len > 0 && s[len] == 0) {
                if (n > GH_DEVICE_INDEX_MAX) {
                        *ret_reason = "device index out of range (0..1023)";
                        return -EINVAL;
                }
                sel.index = (unsigned) n;
                snprintf(sel.text, sizeof(sel.text), "%u", sel.index);
        } else if (len == 0 && s && strncmp(s, "GPU-", 4) == 0 && is_uuid_body(s + 4)) {
                sel.is_uuid = true;
                for (size_t i = 0; s[i]; i++)
                        sel.text[i] = i < 4 ? s[i] : (char) tolower((unsigned char) s[i]);
        } else {
                *ret_reason = len == -ERANGE ? "device index out of range (0..1023)"
                                             : "not a GPU index or UUID (GPU-xxxxxxxx-xxxx-xxxx-xxxx-xxxxxxxxxxxx)";
                return -EINVAL;
        }
        *ret = sel;
        return 0;
}

int gh_device_selectors_parse(const char *s, gh_device_selector *list, size_t max, size_t *ret_n,
                              const char **ret_reason) {
        static __thread char reason[160];
        static const char separators[] = " \t,";
        size_t n = 0;

        for (const char *p = s + strspn(s, separators); *p; p += strspn(p, separators)) {
                size_t len = strcspn(p, separators);
                char word[64];
                const char *why;

                if (len >= sizeof(word)) {
                        snprintf(reason, sizeof(reason), "'%.20s...': not a GPU index or UUID", p);
                        *ret_reason = reason;
                        return -EINVAL;
                }
                memcpy(word, p, len);
                word[len] = 0;
                if (n >= max) {
                        snprintf(reason, sizeof(reason), "too many devices (at most %zu)", max);
                        *ret_reason = reason;
                        return -EINVAL;
                }
                if (gh_device_selector_parse(word, &list[n], &why) < 0) {
                        snprintf(reason, sizeof(reason), "'%s': %s", word, why);
                        *ret_reason = reason;
                        return -EINVAL;
                }
                n++;
                p += len;
        }
        *ret_n = n;
        return 0;
}

int gh_reserve_parse(const char *s, gh_reserve *ret, const char **ret_reason) {
        static const struct {
                const char *suffix;
                unsigned shift;
        } suffixes[] = {{"", 0},       {"K", 10},  {"KiB", 10}, {"M", 20},  {"MiB", 20},
                        {"G", 30},     {"GiB", 30}, {"T", 40},  {"TiB", 40}};
        uint64_t n;
        int len = s ? parse_digits(s, &n) : 0;

        if (len == -ERANGE) {
                *ret_reason = "number too large";
                return -EINVAL;
        }
        if (len > 0 && strcmp(s + len, "%") == 0) {
                if (n > GH_RESERVE_PERCENT_MAX) {
                        *ret_reason = "percentage out of range (0..99)";
                        return -EINVAL;
                }
                *ret = (gh_reserve) {.unit = GH_RESERVE_PERCENT, .value = n};
                return 0;
        }
        for (size_t i = 0; len > 0 && i < ELEMENTSOF(suffixes); i++) {
                if (strcmp(s + len, suffixes[i].suffix) != 0)
                        continue;
                if (n > UINT64_MAX >> suffixes[i].shift) {
                        *ret_reason = "size too large";
                        return -EINVAL;
                }
                *ret = (gh_reserve) {.unit = GH_RESERVE_BYTES, .value = n << suffixes[i].shift};
                return 0;
        }
        *ret_reason = "not a size (a number with an optional K, M, G or T suffix) or a percentage (N%)";
        return -EINVAL;
}

uint64_t gh_reserve_bytes(const gh_reserve *r, uint64_t total) {
        if (r->unit == GH_RESERVE_BYTES)
                return r->value;
        /* total * value / 100 without overflowing */
        return total / 100 * r->value + total % 100 * r->value / 100;
}

/* ---- GPUs ------------------------------------------------------------- */

/* "GPU 0 (GPU-...)" for messages; before the GPU has an index, its CUDA
 * ordinal; "CUDA" for calls about no GPU in particular. */
static void describe_gpu(const gh_device_info *d, char *buf, size_t size) {
        if (!d)
                snprintf(buf, size, "CUDA");
        else if (d->index >= 0)
                snprintf(buf, size, "GPU %d (%s)", d->index, d->uuid);
        else if (d->uuid[0])
                snprintf(buf, size, "%s (CUDA ordinal %d)", d->uuid, d->cuda_ordinal);
        else
                snprintf(buf, size, "GPU with CUDA ordinal %d", d->cuda_ordinal);
}

/* 0 for CUDA_SUCCESS; otherwise the errno, and "GPU n (uuid): call: NAME" in |err|. */
static int cuda_check(const gh_cuda *cu, CUresult r, const gh_device_info *d, const char *call, char *err,
                      size_t err_size) {
        const char *name;
        char what[96];

        if (r == CUDA_SUCCESS)
                return 0;
        int e = gh_cuda_errno(cu, r, &name);
        describe_gpu(d, what, sizeof(what));
        gh_set_error(err, err_size, "%s: %s: %s", what, call, name);
        return e;
}

static void format_uuid(const CUuuid *u, char *buf, size_t size) {
        const unsigned char *b = (const unsigned char *) u->bytes;

        snprintf(buf, size,
                 "GPU-%02x%02x%02x%02x-%02x%02x-%02x%02x-%02x%02x-%02x%02x%02x%02x%02x%02x",
                 b[0], b[1], b[2], b[3], b[4], b[5], b[6], b[7], b[8], b[9], b[10], b[11], b[12], b[13], b[14], b[15]);
}

/* What every GPU needs before selection: ordinal, UUID and bus id. */
static int identify_gpu(const gh_cuda *cu, int ordinal, gh_device_info *d, char *err, size_t err_size) {
        CUdevice dev;
        CUuuid uuid;
        int r;

        *d = (gh_device_info) {.index = -1, .kind = GH_DEVICE_CUDA, .cuda_ordinal = ordinal};
        r = cuda_check(cu, cu->DeviceGet(&dev, ordinal), d, "cuDeviceGet", err, err_size);
        if (r >= 0)
                r = cuda_check(cu, cu->DeviceGetUuid(&uuid, dev), d, "cuDeviceGetUuid", err, err_size);
        if (r < 0)
                return r;
        format_uuid(&uuid, d->uuid, sizeof(d->uuid));
        return cuda_check(cu, cu->DeviceGetPCIBusId(d->pci_bus_id, sizeof(d->pci_bus_id), dev), d,
                          "cuDeviceGetPCIBusId", err, err_size);
}

/* "dddd:bb:dd.f" as a number, so that domains of different widths sort
 * right; 0 if it does not parse (then the text decides). */
static uint64_t bus_id_key(const char *bus_id) {
        unsigned domain, bus, device, function;

        if (sscanf(bus_id, "%x:%x:%x.%x", &domain, &bus, &device, &function) != 4)
                return 0;
        return (uint64_t) domain << 24 | (uint64_t) (bus & 0xff) << 16 | (device & 0xff) << 8 | (function & 0xff);
}

static int compare_bus_id(const void *a, const void *b) {
        const gh_device_info *x = a, *y = b;
        uint64_t kx = bus_id_key(x->pci_bus_id), ky = bus_id_key(y->pci_bus_id);

        if (kx != ky)
                return kx < ky ? -1 : 1;
        return strcmp(x->pci_bus_id, y->pci_bus_id);
}

/* Every GPU the driver reports, in PCI bus order, with its index set.
 * One more slot is left at the end for the CPU. */
static int list_gpus(const gh_cuda *cu, gh_device_info **ret, size_t *ret_n, char *err, size_t err_size) {
        _cleanup_free_ gh_device_info *gpus = NULL;
        int count = 0, r;

        if (cu) {
                r = cuda_check(cu, cu->DeviceGetCount(&count), NULL, "cuDeviceGetCount", err, err_size);
                if (r < 0)
                        return r;
        }
        gpus = calloc((size_t) count + 1, sizeof(*gpus));
        if (!gpus)
                return -ENOMEM;
        for (int i = 0; i < count; i++) {
                r = identify_gpu(cu, i, &gpus[i], err, err_size);
                if (r < 0)
                        return r;
        }
        if (count > 0)
                qsort(gpus, (size_t) count, sizeof(*gpus), compare_bus_id);
        for (int i = 0; i < count; i++)
                gpus[i].index = i;
        *ret = TAKE_PTR(gpus);
        *ret_n = (size_t) count;
        return 0;
}

static bool selector_matches(const gh_device_selector *s, const gh_device_info *d) {
        return s->is_uuid ? strcmp(s->text, d->uuid) == 0 : d->index >= 0 && s->index == (unsigned) d->index;
}

static const gh_device_info *find_gpu(const gh_device_selector *s, const gh_device_info *gpus, size_t n) {
        for (size_t i = 0; i < n; i++)
                if (selector_matches(s, &gpus[i]))
                        return &gpus[i];
        return NULL;
}

static int check_selector(const char *what, const gh_device_selector *s, const gh_device_info *gpus, size_t n,
                          char *err, size_t err_size) {
        if (find_gpu(s, gpus, n))
                return 0;
        gh_set_error(err, err_size, "%s: no GPU %s%s (the driver reports %zu GPU%s)", what, s->is_uuid ? "" : "with index ",
                s->text, n, n == 1 ? "" : "s");
        return -ENODEV;
}

/* Every selector of the configuration names a GPU that exists. */
static int check_config(const gh_devices_config *cfg, const gh_device_info *gpus, size_t n, char *err,
                        size_t err_size) {
        int r = 0;

        for (size_t i = 0; r >= 0 && i < cfg->n_include; i++)
                r = check_selector("include", &cfg->include[i], gpus, n, err, err_size);
        for (size_t i = 0; r >= 0 && i < cfg->n_exclude; i++)
                r = check_selector("exclude", &cfg->exclude[i], gpus, n, err, err_size);
        for (size_t i = 0; r >= 0 && i < cfg->n_reserve_overrides; i++)
                r = check_selector("reserve", &cfg->reserve_overrides[i].device, gpus, n, err, err_size);
        return r;
}

static bool in_list(const gh_device_selector *list, size_t n, const gh_device_info *d) {
        for (size_t i = 0; i < n; i++)
                if (selector_matches(&list[i], d))
                        return true;
        return false;
}

static bool gpu_selected(const gh_devices_config *cfg, const gh_device_info *d) {
        if (cfg->n_include > 0 && !in_list(cfg->include, cfg->n_include, d))
                return false;
        return !in_list(cfg->exclude, cfg->n_exclude, d);
}

static int get_attribute(const gh_cuda *cu, CUdevice dev, CUdevice_attribute attr, const char *attr_name,
                         const gh_device_info *d, int *ret, char *err, size_t err_size) {
        char call[128];

        snprintf(call, sizeof(call), "cuDeviceGetAttribute(%s)", attr_name);
        return cuda_check(cu, cu->DeviceGetAttribute(ret, attr, dev), d, call, err, err_size);
}

#define GET_ATTRIBUTE(cu, dev, attr, d, ret, err, err_size) \
        get_attribute(cu, dev, CU_DEVICE_ATTRIBUTE_##attr, #attr, d, ret, err, err_size)

static int probe_attributes(const gh_cuda *cu, CUdevice dev, gh_device_info *d, char *err, size_t err_size) {
        int vmm = 0, posix_fd = 0;
        size_t total = 0;
        int r = cuda_check(cu, cu->DeviceGetName(d->name, sizeof(d->name), dev), d, "cuDeviceGetName", err,
                           err_size);

        if (r >= 0)
                r = cuda_check(cu, cu->DeviceTotalMem(&total, dev), d, "cuDeviceTotalMem", err, err_size);
        if (r >= 0)
                r = GET_ATTRIBUTE(cu, dev, MULTIPROCESSOR_COUNT, d, &d->sm_count, err, err_size);
        if (r >= 0)
                r = GET_ATTRIBUTE(cu, dev, COMPUTE_CAPABILITY_MAJOR, d, &d->cc_major, err, err_size);
        if (r >= 0)
                r = GET_ATTRIBUTE(cu, dev, COMPUTE_CAPABILITY_MINOR, d, &d->cc_minor, err, err_size);
        if (r >= 0)
                r = GET_ATTRIBUTE(cu, dev, VIRTUAL_MEMORY_MANAGEMENT_SUPPORTED, d, &vmm, err, err_size);
        if (r >= 0)
                r = GET_ATTRIBUTE(cu, dev, HANDLE_TYPE_POSIX_FILE_DESCRIPTOR_SUPPORTED, d, &posix_fd, err, err_size);
        if (r < 0)
                return r;
        d->memory_total = total;
        d->vmm_supported = vmm != 0;
        d->posix_fd_supported = posix_fd != 0;
        return 0;
}

/* The minimum granularity of a pinned device allocation exportable as a
 * POSIX fd (when the device can export one), as the pool will make them. */
static int probe_granularity(const gh_cuda *cu, gh_device_info *d, char *err, size_t err_size) {
        CUmemAllocationProp prop = {
                .type = CU_MEM_ALLOCATION_TYPE_PINNED,
                .requestedHandleTypes = d->posix_fd_supported ? CU_MEM_HANDLE_TYPE_POSIX_FILE_DESCRIPTOR
                                                              : CU_MEM_HANDLE_TYPE_NONE,
                .location = {.type = CU_MEM_LOCATION_TYPE_DEVICE, .id = d->cuda_ordinal},
        };
        size_t granularity = 0;

        if (!d->vmm_supported)
                return 0;
        int r = cuda_check(cu, cu->MemGetAllocationGranularity(&granularity, &prop, CU_MEM_ALLOC_GRANULARITY_MINIMUM),
                           d, "cuMemGetAllocationGranularity", err, err_size);
        if (r < 0)
                return r;
        d->granularity = granularity;
        return 0;
}

/* Free memory and granularity, inside the device's primary context (made
 * current for the calls, then the caller's context is restored). */
static int probe_in_context(const gh_cuda *cu, CUdevice dev, gh_device_info *d, char *err, size_t err_size) {
        CUcontext previous = NULL, ctx = NULL;
        size_t free_bytes = 0, total_bytes = 0;
        int r = cuda_check(cu, cu->CtxGetCurrent(&previous), d, "cuCtxGetCurrent", err, err_size);

        if (r >= 0)
                r = cuda_check(cu, cu->DevicePrimaryCtxRetain(&ctx, dev), d, "cuDevicePrimaryCtxRetain", err, err_size);
        if (r < 0)
                return r;
        r = cuda_check(cu, cu->CtxSetCurrent(ctx), d, "cuCtxSetCurrent", err, err_size);
        if (r >= 0)
                r = cuda_check(cu, cu->MemGetInfo(&free_bytes, &total_bytes), d, "cuMemGetInfo", err, err_size);
        if (r >= 0)
                r = probe_granularity(cu, d, err, err_size);
        cu->CtxSetCurrent(previous);
        cu->DevicePrimaryCtxRelease(dev);
        if (r < 0)
                return r;
        d->memory_free = free_bytes;
        return 0;
}

static const gh_reserve *reserve_for(const gh_devices_config *cfg, const gh_device_info *d) {
        const gh_reserve *reserve = &cfg->reserve;

        for (size_t i = 0; i < cfg->n_reserve_overrides; i++)
                if (selector_matches(&cfg->reserve_overrides[i].device, d))
                        reserve = &cfg->reserve_overrides[i].reserve;
        return reserve;
}

static int apply_reserve(const gh_devices_config *cfg, gh_device_info *d, char *err, size_t err_size) {
        uint64_t reserve = gh_reserve_bytes(reserve_for(cfg, d), d->memory_total);
        char what[96];

        if (reserve >= d->memory_total) {
                describe_gpu(d, what, sizeof(what));
                gh_set_error(err, err_size, "%s: reserve %.1f GiB is not less than its memory, %.1f GiB", what,
                        to_gib(reserve), to_gib(d->memory_total));
                return -ERANGE;
        }
        d->reserve_bytes = reserve;
        d->budget_bytes = d->memory_total - reserve;
        return 0;
}

static int probe_gpu(const gh_devices_config *cfg, const gh_cuda *cu, gh_device_info *d, char *err, size_t err_size) {
        CUdevice dev;
        int r = cuda_check(cu, cu->DeviceGet(&dev, d->cuda_ordinal), d, "cuDeviceGet", err, err_size);

        if (r >= 0)
                r = probe_attributes(cu, dev, d, err, err_size);
        if (r >= 0)
                r = probe_in_context(cu, dev, d, err, err_size);
        if (r >= 0)
                r = apply_reserve(cfg, d, err, err_size);
        return r;
}

/* ---- the CPU ---------------------------------------------------------- */

/* The first "model name" of /proc/cpuinfo (x86), else "CPU". */
static void cpu_name(char *buf, size_t size) {
        _cleanup_fclose_ FILE *f = fopen("/proc/cpuinfo", "re");
        char line[512];

        snprintf(buf, size, "CPU");
        while (f && fgets(line, sizeof(line), f)) {
                char *colon = strchr(line, ':');
                if (strncmp(line, "model name", 10) != 0 || !colon)
                        continue;
                char *v = colon + 1 + strspn(colon + 1, " \t");
                v[strcspn(v, "\n")] = 0;
                if (v[0])
                        snprintf(buf, size, "%s", v);
                return;
        }
}

/* MemTotal and MemAvailable from /proc/meminfo; sysinfo() if it is not
 * there (free + buffers then stand in for what is available). */
static void cpu_memory(uint64_t *ret_total, uint64_t *ret_available) {
        _cleanup_fclose_ FILE *f = fopen("/proc/meminfo", "re");
        uint64_t total = 0, available = 0, kib;
        bool have_total = false, have_available = false;
        char line[256];
        struct sysinfo si;

        while (f && fgets(line, sizeof(line), f)) {
                if (sscanf(line, "MemTotal: %" SCNu64 " kB", &kib) == 1) {
                        total = kib * 1024;
                        have_total = true;
                } else if (sscanf(line, "MemAvailable: %" SCNu64 " kB", &kib) == 1) {
                        available = kib * 1024;
                        have_available = true;
                }
        }
        if ((!have_total || !have_available) && sysinfo(&si) == 0) {
                if (!have_total)
                        total = (uint64_t) si.totalram * si.mem_unit;
                if (!have_available)
                        available = ((uint64_t) si.freeram + si.bufferram) * si.mem_unit;
        }
        *ret_total = total;
        *ret_available = available < total ? available : total;
}

static int cpu_count(void) {
        cpu_set_t set;

        if (sched_getaffinity(0, sizeof(set), &set) == 0)
                return CPU_COUNT(&set);
        long n = sysconf(_SC_NPROCESSORS_ONLN);
        return n > 0 ? (int) n : 1;
}

static int probe_cpu(const gh_devices_config *cfg, int index, gh_device_info *d, char *err, size_t err_size) {
        long page = sysconf(_SC_PAGESIZE);

        *d = (gh_device_info) {.index = index, .kind = GH_DEVICE_CPU, .cuda_ordinal = -1};
        cpu_name(d->name, sizeof(d->name));
        cpu_memory(&d->memory_total, &d->memory_free);
        d->sm_count = cpu_count();
        d->granularity = page > 0 ? (uint64_t) page : 4096;
        d->budget_bytes = cfg->cpu_budget_bytes > 0 ? cfg->cpu_budget_bytes : d->memory_free / 2;
        if (d->budget_bytes > d->memory_total) {
                gh_set_error(err, err_size, "CPU budget %.1f GiB exceeds the machine's memory, %.1f GiB",
                        to_gib(d->budget_bytes), to_gib(d->memory_total));
                return -ERANGE;
        }
        d->reserve_bytes = d->memory_total - d->budget_bytes;
        return 0;
}

/* ---- the registry ----------------------------------------------------- */

int gh_devices_discover(const gh_devices_config *cfg, gh_cuda *cu, gh_devices **ret, char *err, size_t err_size) {
        _cleanup_free_ gh_device_info *infos = NULL;
        gh_devices_config defaults;
        size_t n_gpus = 0, n = 0;
        int r;

        if (!cfg) {
                gh_devices_config_init(&defaults);
                cfg = &defaults;
        }
        r = list_gpus(cu, &infos, &n_gpus, err, err_size);
        if (r >= 0)
                r = check_config(cfg, infos, n_gpus, err, err_size);
        for (size_t i = 0; r >= 0 && i < n_gpus; i++) {
                if (!gpu_selected(cfg, &infos[i]))
                        continue;
                infos[n] = infos[i];
                r = probe_gpu(cfg, cu, &infos[n], err, err_size);
                n++;
        }
        for (unsigned i = 0; r >= 0 && cfg->cpu_enabled && i < cfg->cpu_count; i++) {
                gh_device_info *grown = realloc(infos, (n + 1) * sizeof(*infos));
                if (!grown)
                        return -ENOMEM;
                infos = grown;
                r = probe_cpu(cfg, (int) (n_gpus + i), &infos[n++], err, err_size);
                if (r >= 0 && cfg->cpu_count > 1) {
                        char *name = infos[n - 1].name;
                        size_t len = strnlen(name, GH_DEVICE_NAME_MAX - 8);
                        snprintf(name + len, GH_DEVICE_NAME_MAX - len, " #%u", i % 100);
                }
        }
        if (r < 0)
                return r;
        gh_devices *d = calloc(1, sizeof(*d));
        if (!d)
                return -ENOMEM;
        *d = (gh_devices) {.n = n, .devices = TAKE_PTR(infos)};
        *ret = d;
        return 0;
}

gh_devices *gh_devices_free(gh_devices *d) {
        if (!d)
                return NULL;
        free(d->devices);
        free(d);
        return NULL;
}

size_t gh_devices_count(const gh_devices *d) {
        return d ? d->n : 0;
}

const gh_device_info *gh_devices_at(const gh_devices *d, size_t i) {
        return d && i < d->n ? &d->devices[i] : NULL;
}

const gh_device_info *gh_devices_get(const gh_devices *d, int index) {
        for (size_t i = 0; d && i < d->n; i++)
                if (d->devices[i].index == index)
                        return &d->devices[i];
        return NULL;
}

const char *gh_device_kind_to_string(gh_device_kind kind) {
        return kind == GH_DEVICE_CUDA ? "cuda" : "cpu";
}

static json_object *string_or_null(const char *s) {
        return s && s[0] ? json_object_new_string(s) : NULL;
}

json_object *gh_device_info_to_json(const gh_device_info *info) {
        json_object *o = json_object_new_object();
        bool gpu = info->kind == GH_DEVICE_CUDA;
        char cc[32];

        snprintf(cc, sizeof(cc), "%d.%d", info->cc_major, info->cc_minor);
        json_object_object_add(o, "index", json_object_new_int(info->index));
        json_object_object_add(o, "kind", json_object_new_string(gh_device_kind_to_string(info->kind)));
        json_object_object_add(o, "name", json_object_new_string(info->name));
        json_object_object_add(o, "uuid", string_or_null(info->uuid));
        json_object_object_add(o, "pci_bus_id", string_or_null(info->pci_bus_id));
        json_object_object_add(o, "memory_total", json_object_new_int64((int64_t) info->memory_total));
        json_object_object_add(o, "memory_free", json_object_new_int64((int64_t) info->memory_free));
        json_object_object_add(o, "memory_reserve", json_object_new_int64((int64_t) info->reserve_bytes));
        json_object_object_add(o, "memory_budget", json_object_new_int64((int64_t) info->budget_bytes));
        json_object_object_add(o, "sm_count", json_object_new_int(info->sm_count));
        json_object_object_add(o, "compute_capability", gpu ? json_object_new_string(cc) : NULL);
        json_object_object_add(o, "vmm", json_object_new_boolean(info->vmm_supported));
        json_object_object_add(o, "posix_fd", json_object_new_boolean(info->posix_fd_supported));
        return o;
}

json_object *gh_devices_to_json(const gh_devices *d) {
        json_object *a = json_object_new_array();

        for (size_t i = 0; i < gh_devices_count(d); i++)
                json_object_array_add(a, gh_device_info_to_json(&d->devices[i]));
        return a;
}

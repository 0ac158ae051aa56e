/* The device registry: the GPUs gpuhost serves, and the CPU device.
 *
 * gh_devices_discover() asks the CUDA driver (gh_cuda, may be absent) for its
 * GPUs, keeps those the configuration selects, measures each (name, UUID,
 * PCI bus id, memory, SMs, compute capability, VMM and POSIX fd support,
 * allocation granularity), takes off the configured reserve, and appends
 * the CPU device when enabled. The result is a fixed snapshot: the registry
 * does not change until the next discovery.
 *
 * Indices: a GPU's index is its position in PCI bus order among every GPU
 * the driver reports, as nvidia-smi numbers them (not the driver's ordinal,
 * which puts the fastest first; that one is kept as cuda_ordinal). It does
 * not change when other GPUs are left out, so the "2" of a configuration,
 * of gpuhostctl and of nvidia-smi is the same GPU. The CPU's index comes
 * after every GPU: the number of GPUs the driver reports (0 without one).
 *
 * Selection: include (empty: every GPU), then exclude; a device in both is
 * left out. Every selector, in either list or in a reserve override, must
 * name a GPU that exists, else discovery fails naming it.
 *
 * Reserve: what gpuhost leaves to others on a GPU (bytes or a percentage of
 * its total memory). budget_bytes = memory_total - reserve_bytes is what
 * gpuhost may use. The CPU device's budget is cpu_budget_bytes, or half of
 * MemAvailable at discovery when that is 0; its reserve_bytes is
 * memory_total - budget_bytes, so that identity holds for every device.
 *
 * Library code: no logging; errors come back as a negative errno and a
 * one-line message. */
#pragma once

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>
#include <json-c/json.h>

typedef struct gh_cuda gh_cuda;

#define GH_DEVICE_NAME_MAX 256
#define GH_DEVICE_UUID_MAX 41   /* "GPU-" + 36 + NUL */
#define GH_DEVICE_BUS_ID_MAX 32
#define GH_DEVICE_INDEX_MAX 1023 /* the largest index a selector may name */
#define GH_DEVICE_SELECTORS_MAX 32 /* entries per list in gh_devices_config */
#define GH_RESERVE_PERCENT_MAX 99

typedef enum gh_device_kind {
        GH_DEVICE_CPU,
        GH_DEVICE_CUDA,
} gh_device_kind;

typedef struct gh_device_info {
        int index; /* see the top of this file */
        gh_device_kind kind;
        int cuda_ordinal; /* for cuDeviceGet(); -1 for the CPU */
        char name[GH_DEVICE_NAME_MAX];
        char uuid[GH_DEVICE_UUID_MAX];         /* "GPU-xxxxxxxx-xxxx-xxxx-xxxx-xxxxxxxxxxxx"; "" for the CPU */
        char pci_bus_id[GH_DEVICE_BUS_ID_MAX]; /* "0000:1B:00.0" as CUDA writes it; "" for the CPU */
        uint64_t memory_total;
        uint64_t memory_free; /* at discovery: cuMemGetInfo, MemAvailable for the CPU */
        int sm_count;         /* the CPU: logical CPUs this process may run on */
        int cc_major, cc_minor; /* compute capability; 0.0 for the CPU */
        bool vmm_supported, posix_fd_supported;
        uint64_t granularity; /* VMM allocation granularity (0 without VMM); the page size for the CPU */
        uint64_t reserve_bytes;
        uint64_t budget_bytes; /* what gpuhost may use: total - reserve for GPUs, the configured budget for CPU */
} gh_device_info;

/* One GPU as the configuration names it: an index ("0") or a UUID. */
typedef struct gh_device_selector {
        bool is_uuid;
        unsigned index;                /* when !is_uuid */
        char text[GH_DEVICE_UUID_MAX]; /* normalised: "3" or "GPU-" and the UUID in lower case */
} gh_device_selector;

typedef enum gh_reserve_unit {
        GH_RESERVE_BYTES,
        GH_RESERVE_PERCENT, /* of the GPU's total memory, 0..GH_RESERVE_PERCENT_MAX */
} gh_reserve_unit;

typedef struct gh_reserve {
        gh_reserve_unit unit;
        uint64_t value;
} gh_reserve;

typedef struct gh_device_reserve {
        gh_device_selector device;
        gh_reserve reserve;
} gh_device_reserve;

/* What the configuration says about devices. Plain data (no pointers), so
 * it can be copied; gh_devices_config_init() sets the defaults. */
typedef struct gh_devices_config {
        gh_device_selector include[GH_DEVICE_SELECTORS_MAX]; /* none: every GPU */
        size_t n_include;
        gh_device_selector exclude[GH_DEVICE_SELECTORS_MAX];
        size_t n_exclude;
        gh_reserve reserve; /* every GPU's, unless overridden; default 5% */
        gh_device_reserve reserve_overrides[GH_DEVICE_SELECTORS_MAX]; /* the last match wins */
        size_t n_reserve_overrides;
        bool cpu_enabled;          /* default true */
        uint64_t cpu_budget_bytes; /* each CPU device's; 0 (default): half of MemAvailable at discovery */
        unsigned cpu_count;        /* CPU devices, default 1: indexes n_gpus, n_gpus + 1, ... */
} gh_devices_config;

typedef struct gh_devices gh_devices;

void gh_devices_config_init(gh_devices_config *cfg);

/* "0" (an index up to GH_DEVICE_INDEX_MAX) or "GPU-" and a full UUID
 * (hex digits in either case). -EINVAL with a reason otherwise. */
int gh_device_selector_parse(const char *s, gh_device_selector *ret, const char **ret_reason);
/* A list of selectors separated by blanks or commas, at most |max|; an
 * empty string is an empty list. The reason names the bad entry and stays
 * valid until the next call in the same thread. */
int gh_device_selectors_parse(const char *s, gh_device_selector *list, size_t max, size_t *ret_n,
                              const char **ret_reason);
/* Bytes with an optional binary suffix ("2G", "512M", "1048576"; K, M, G,
 * T or KiB, MiB, GiB, TiB) or a whole percentage ("10%", 0..99). -EINVAL
 * with a reason otherwise. */
int gh_reserve_parse(const char *s, gh_reserve *ret, const char **ret_reason);
/* The bytes |r| takes off a device of |total| bytes. */
uint64_t gh_reserve_bytes(const gh_reserve *r, uint64_t total);

/* Builds the registry. |cfg| NULL: the defaults. |cu| NULL: no driver, the
 * CPU device only. No device at all (no GPU selected, CPU disabled) is not
 * an error here. On failure a one-line reason goes to |err|.
 * Measuring free memory needs a context: each selected GPU's primary
 * context is retained and made current on the calling thread for a moment
 * (about 100 ms the first time), then released, and the thread's own
 * context restored. A GPU that fails a call fails the whole discovery,
 * naming the GPU and the call; exclude it to go on without it. */
int gh_devices_discover(const gh_devices_config *cfg, gh_cuda *cu, gh_devices **ret, char *err, size_t err_size);
gh_devices *gh_devices_free(gh_devices *d);
static inline void gh_devices_freep(gh_devices **d) {
        gh_devices_free(*d);
}

size_t gh_devices_count(const gh_devices *d);
/* The |i|-th device, 0 <= i < count, in increasing index order; NULL past the end. */
const gh_device_info *gh_devices_at(const gh_devices *d, size_t i);
/* The device with this index; NULL if there is none (left out, or no such device). */
const gh_device_info *gh_devices_get(const gh_devices *d, int index);

const char *gh_device_kind_to_string(gh_device_kind kind);
/* {index, kind, name, uuid, pci_bus_id, memory_total, memory_free,
 * memory_reserve, memory_budget, sm_count, compute_capability ("9.0"), vmm,
 * posix_fd}; uuid, pci_bus_id and compute_capability are null for the CPU. */
json_object *gh_device_info_to_json(const gh_device_info *info);
/* An array of every device's object. */
json_object *gh_devices_to_json(const gh_devices *d);

/* GPU test (ctest label "gpu"): the CUDA driver loader and the device
 * registry on real GPUs. Exits 77 (skip) when gh_cuda_load finds no driver
 * (-ENOENT) or no device (-ENODEV).
 *
 * Loads libcuda.so.1, discovers the devices with the default configuration
 * and prints them as a table and as JSON; checks every GPU (memory, SMs,
 * compute capability >= 7.0, UUID and PCI bus id formats, VMM and POSIX fd
 * support, granularity, reserve and budget), the PCI bus ordering of indices
 * (and, when nvidia-smi is there and CUDA_VISIBLE_DEVICES is not set, that
 * each index has nvidia-smi's UUID), include/exclude with real GPUs, and the
 * driver's error names. Then, on each GPU, a VMM round trip in this process:
 * reserve VA, cuMemCreate one granule exportable as a POSIX fd, export it
 * (fd >= 0, FD_CLOEXEC: set here if the driver leaves it off, and said so),
 * map, set access, copy a pattern in and out (synchronously, from pinned
 * memory on a stream with events, from registered memory), import the fd
 * again and read the pattern through that second mapping, then release
 * everything and check that cuMemGetInfo's free memory is back within one
 * granule. Finally unloads and loads the driver again. Every failing CUDA
 * call is printed with its error name. */
#include <errno.h>
#include <fcntl.h>
#include <inttypes.h>
#include <stdarg.h>
#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

#include "common/util.h"
#include "gpuhostd/cuda.h"
#include "gpuhostd/devices.h"

#define MiB (UINT64_C(1) << 20)
#define GiB (UINT64_C(1) << 30)
#define EXIT_SKIP 77

static unsigned failures;

#define CHECK(cond, ...)                                                              \
        do {                                                                          \
                if (!(cond)) {                                                        \
                        failures++;                                                   \
                        fprintf(stderr, "FAIL line %d: %s: ", __LINE__, #cond);      \
                        fprintf(stderr, __VA_ARGS__);                                 \
                        fputc('\n', stderr);                                          \
                }                                                                     \
        } while (0)

/* Runs a CUDA call; on failure prints it with the driver's error name and
 * the errno it maps to, counts a failure and yields false. */
#define CU(cu, call) cu_ok((cu), (call), #call, __LINE__)

static bool cu_ok(const gh_cuda *cu, CUresult r, const char *call, int line) {
        const char *name;

        if (r == CUDA_SUCCESS)
                return true;
        int e = gh_cuda_errno(cu, r, &name);
        fprintf(stderr, "FAIL line %d: %s: %s (%s)\n", line, call, name, strerror(-e));
        failures++;
        return false;
}

static double now_ms(void) {
        return (double) gh_now_usec(CLOCK_MONOTONIC) / 1e3;
}

static double gib(uint64_t bytes) {
        return (double) bytes / (double) GiB;
}

/* ---- checks on the registry ------------------------------------------- */

static bool hex_run(const char *s, size_t n) {
        for (size_t i = 0; i < n; i++)
                if (!strchr("0123456789abcdefABCDEF", s[i]) || !s[i])
                        return false;
        return true;
}

/* "dddd:bb:dd.f" with a domain of 4 to 8 hex digits, as CUDA writes it. */
static bool bus_id_ok(const char *s) {
        const char *colon = strchr(s, ':');
        size_t domain = colon ? (size_t) (colon - s) : 0;

        if (domain < 4 || domain > 8 || !hex_run(s, domain))
                return false;
        s = colon + 1;
        return strlen(s) == 7 && hex_run(s, 2) && s[2] == ':' && hex_run(s + 3, 2) && s[5] == '.' && hex_run(s + 6, 1);
}

static bool uuid_ok(const char *uuid) {
        gh_device_selector sel;
        const char *reason;

        /* the selector parser checks the form and lower-cases the hex digits */
        return strlen(uuid) == 40 && gh_device_selector_parse(uuid, &sel, &reason) == 0 && sel.is_uuid &&
               strcmp(sel.text, uuid) == 0;
}

static void print_table(const gh_devices *d) {
        printf("%-3s %-4s %-28s %-40s %-13s %9s %9s %9s %9s %4s %4s %3s %3s %8s\n", "idx", "kind", "name", "uuid",
               "pci", "total", "free", "reserve", "budget", "SMs", "cc", "vmm", "fd", "granule");
        for (size_t i = 0; i < gh_devices_count(d); i++) {
                const gh_device_info *g = gh_devices_at(d, i);
                printf("%-3d %-4s %-28.28s %-40s %-13s %8.2fG %8.2fG %8.2fG %8.2fG %4d %2d.%d %3s %3s %7" PRIu64 "K\n",
                       g->index, gh_device_kind_to_string(g->kind), g->name, g->uuid[0] ? g->uuid : "-",
                       g->pci_bus_id[0] ? g->pci_bus_id : "-", gib(g->memory_total), gib(g->memory_free),
                       gib(g->reserve_bytes), gib(g->budget_bytes), g->sm_count, g->cc_major, g->cc_minor,
                       g->vmm_supported ? "yes" : "no", g->posix_fd_supported ? "yes" : "no",
                       g->granularity >> 10);
        }
}

static void check_gpu(const gh_device_info *g, const gh_device_info *previous) {
        const char *u = g->uuid;

        CHECK(g->kind == GH_DEVICE_CUDA, "GPU %d: kind %d", g->index, g->kind);
        CHECK(g->cuda_ordinal >= 0, "GPU %d: ordinal %d", g->index, g->cuda_ordinal);
        CHECK(g->name[0] != 0, "GPU %d: no name", g->index);
        CHECK(uuid_ok(u), "GPU %d: malformed UUID '%s'", g->index, u);
        CHECK(bus_id_ok(g->pci_bus_id), "GPU %d (%s): malformed PCI bus id '%s'", g->index, u, g->pci_bus_id);
        CHECK(g->memory_total >= GiB, "GPU %d (%s): memory_total %" PRIu64, g->index, u, g->memory_total);
        CHECK(g->memory_free > 0 && g->memory_free <= g->memory_total, "GPU %d (%s): memory_free %" PRIu64 " of %" PRIu64,
              g->index, u, g->memory_free, g->memory_total);
        CHECK(g->sm_count > 0, "GPU %d (%s): sm_count %d", g->index, u, g->sm_count);
        CHECK(g->cc_major * 10 + g->cc_minor >= 70, "GPU %d (%s): compute capability %d.%d < 7.0", g->index, u,
              g->cc_major, g->cc_minor);
        CHECK(g->vmm_supported, "GPU %d (%s): no VMM support", g->index, u);
        CHECK(g->posix_fd_supported, "GPU %d (%s): no POSIX fd handle support", g->index, u);
        CHECK(g->granularity > 0 && (g->granularity & (g->granularity - 1)) == 0,
              "GPU %d (%s): granularity %" PRIu64 " not a power of two", g->index, u, g->granularity);
        CHECK(g->reserve_bytes == g->memory_total / 100 * 5 + g->memory_total % 100 * 5 / 100,
              "GPU %d (%s): reserve %" PRIu64 " is not the default 5%% of %" PRIu64, g->index, u, g->reserve_bytes,
              g->memory_total);
        CHECK(g->budget_bytes == g->memory_total - g->reserve_bytes, "GPU %d (%s): budget %" PRIu64 " != %" PRIu64 " - %" PRIu64,
              g->index, u, g->budget_bytes, g->memory_total, g->reserve_bytes);
        if (previous)
                CHECK(previous->index < g->index && strcmp(previous->pci_bus_id, g->pci_bus_id) < 0,
                      "GPU %d (%s) and GPU %d (%s) not in PCI bus order", previous->index, previous->pci_bus_id,
                      g->index, g->pci_bus_id);
}

static void check_cpu(const gh_device_info *c, int index) {
        CHECK(c->kind == GH_DEVICE_CPU, "device %d: kind %d, expected the CPU", c->index, c->kind);
        CHECK(c->index == index, "CPU index %d, expected %d", c->index, index);
        CHECK(c->memory_total > 0 && c->budget_bytes > 0 && c->budget_bytes <= c->memory_total,
              "CPU memory %" PRIu64 ", budget %" PRIu64, c->memory_total, c->budget_bytes);
}

/* Each index has the UUID nvidia-smi gives that index. */
static void check_against_nvidia_smi(const gh_devices *d) {
        FILE *p;
        char line[256];
        unsigned matched = 0;

        if (getenv("CUDA_VISIBLE_DEVICES")) {
                printf("CUDA_VISIBLE_DEVICES is set: nvidia-smi cross-check skipped\n");
                return;
        }
        p = popen("nvidia-smi --query-gpu=index,uuid --format=csv,noheader 2>/dev/null", "re");
        while (p && fgets(line, sizeof(line), p)) {
                int index;
                char uuid[64];
                if (sscanf(line, "%d, %63s", &index, uuid) != 2)
                        continue;
                const gh_device_info *g = gh_devices_get(d, index);
                CHECK(g && strcmp(g->uuid, uuid) == 0, "nvidia-smi GPU %d is %s, gpuhost's GPU %d is %s", index, uuid,
                      index, g ? g->uuid : "(none)");
                matched++;
        }
        if (p && pclose(p) == 0 && matched > 0)
                printf("nvidia-smi agrees on the index and UUID of %u GPU(s)\n", matched);
        else
                printf("nvidia-smi not available: index cross-check skipped\n");
}

static gh_devices *discover(const gh_devices_config *cfg, gh_cuda *cu) {
        gh_devices *d = NULL;
        char err[256] = "";
        int r = gh_devices_discover(cfg, cu, &d, err, sizeof(err));

        CHECK(r == 0, "gh_devices_discover: %s (%s)", err, strerror(-r));
        return d;
}

static void check_selection(gh_cuda *cu, const gh_devices *all, int n_gpus) {
        static const char missing[] = "GPU-00000000-0000-0000-0000-000000000000";
        gh_devices_config cfg;
        const char *reason;
        char err[256] = "";
        gh_devices *d = NULL;

        gh_devices_config_init(&cfg);
        gh_device_selector_parse("0", &cfg.include[cfg.n_include++], &reason);
        d = discover(&cfg, cu);
        CHECK(gh_devices_count(d) == 2 && gh_devices_at(d, 0)->index == 0 &&
                      gh_devices_at(d, 1)->kind == GH_DEVICE_CPU && gh_devices_at(d, 1)->index == n_gpus,
              "include 0: %zu devices", gh_devices_count(d));
        gh_devices_free(d);

        gh_devices_config_init(&cfg);
        cfg.cpu_enabled = false;
        gh_device_selector_parse(gh_devices_get(all, 0)->uuid, &cfg.exclude[cfg.n_exclude++], &reason);
        d = discover(&cfg, cu);
        CHECK(gh_devices_count(d) == (size_t) n_gpus - 1 && !gh_devices_get(d, 0), "exclude %s: %zu devices",
              gh_devices_get(all, 0)->uuid, gh_devices_count(d));
        gh_devices_free(d);

        gh_devices_config_init(&cfg);
        gh_device_selector_parse(missing, &cfg.include[cfg.n_include++], &reason);
        d = NULL;
        int r = gh_devices_discover(&cfg, cu, &d, err, sizeof(err));
        CHECK(r == -ENODEV && !d && strstr(err, missing), "include %s: %d '%s'", missing, r, err);
        printf("include of a missing GPU: %s\n", err);
}

static void check_error_names(const gh_cuda *cu) {
        const char *name = NULL;

        CHECK(gh_cuda_errno(cu, CUDA_ERROR_OUT_OF_MEMORY, &name) == -ENOMEM && gh_streq(name, "CUDA_ERROR_OUT_OF_MEMORY"),
              "CUDA_ERROR_OUT_OF_MEMORY named %s", name);
        CHECK(gh_cuda_errno(cu, CUDA_ERROR_INVALID_VALUE, &name) == -EINVAL && gh_streq(name, "CUDA_ERROR_INVALID_VALUE"),
              "CUDA_ERROR_INVALID_VALUE named %s", name);
        CHECK(gh_cuda_errno(cu, (CUresult) 123456, &name) == -EIO && gh_streq(name, "CUDA_ERROR_123456"),
              "123456 named %s", name);
}

/* ---- the VMM round trip ----------------------------------------------- */

typedef struct vmm {
        const gh_cuda *cu;
        const gh_device_info *gpu;
        size_t size;
        CUmemAllocationProp prop;
        CUmemAccessDesc access;
        CUdeviceptr va, va2;
        CUmemGenericAllocationHandle handle, handle2;
        bool have_handle, have_handle2, mapped, mapped2;
        int fd;
        unsigned char *pattern, *back;
} vmm;

static void fill_pattern(unsigned char *buf, size_t n, uint64_t seed) {
        uint64_t x = seed | 1;

        for (size_t i = 0; i < n; i++) {
                x ^= x << 13;
                x ^= x >> 7;
                x ^= x << 17;
                buf[i] = (unsigned char) x;
        }
}

static bool read_back(vmm *v, CUdeviceptr from, const char *what) {
        memset(v->back, 0, v->size);
        if (!CU(v->cu, v->cu->MemcpyDtoH(v->back, from, v->size)))
                return false;
        bool same = memcmp(v->back, v->pattern, v->size) == 0;
        CHECK(same, "GPU %d: %s: the pattern read back differs", v->gpu->index, what);
        return same;
}

static bool export_fd(vmm *v) {
        int fd = -1;

        if (!CU(v->cu, v->cu->MemExportToShareableHandle(&fd, v->handle, CU_MEM_HANDLE_TYPE_POSIX_FILE_DESCRIPTOR, 0)))
                return false;
        v->fd = fd;
        CHECK(fd >= 0, "GPU %d: exported fd %d", v->gpu->index, fd);
        if (fd < 0)
                return false;
        int flags = fcntl(fd, F_GETFD);
        if (flags >= 0 && !(flags & FD_CLOEXEC)) {
                printf("GPU %d: note: the driver exported fd %d without FD_CLOEXEC; setting it\n", v->gpu->index, fd);
                fcntl(fd, F_SETFD, flags | FD_CLOEXEC);
        }
        flags = fcntl(fd, F_GETFD);
        CHECK(flags >= 0 && (flags & FD_CLOEXEC), "GPU %d: fd %d: FD_CLOEXEC not set (%d)", v->gpu->index, fd, flags);
        return true;
}

static bool map(vmm *v, CUdeviceptr *va, CUmemGenericAllocationHandle h, bool *mapped) {
        if (!CU(v->cu, v->cu->MemAddressReserve(va, v->size, v->size, 0, 0)))
                return false;
        if (!CU(v->cu, v->cu->MemMap(*va, v->size, 0, h, 0)))
                return false;
        *mapped = true;
        return CU(v->cu, v->cu->MemSetAccess(*va, v->size, &v->access, 1));
}

/* Overwrites the device copy of the pattern, so the next copy must bring it. */
static bool scribble(vmm *v) {
        memset(v->back, 0xa5, v->size);
        return CU(v->cu, v->cu->MemcpyHtoD(v->va, v->back, v->size));
}

/* Pinned memory on a stream with events, then registered memory. */
static void async_copies(vmm *v) {
        const gh_cuda *cu = v->cu;
        CUstream stream = NULL;
        CUevent start = NULL, end = NULL;
        void *pinned = NULL;
        float ms = 0;

        if (CU(cu, cu->MemHostAlloc(&pinned, v->size, 0)) && CU(cu, cu->StreamCreate(&stream, CU_STREAM_NON_BLOCKING)) &&
            CU(cu, cu->EventCreate(&start, CU_EVENT_DEFAULT)) && CU(cu, cu->EventCreate(&end, CU_EVENT_DEFAULT))) {
                memcpy(pinned, v->pattern, v->size);
                if (scribble(v) && CU(cu, cu->EventRecord(start, stream)) && CU(cu, cu->MemcpyHtoDAsync(v->va, pinned, v->size, stream)) &&
                    CU(cu, cu->EventRecord(end, stream)) && CU(cu, cu->StreamSynchronize(stream)) &&
                    CU(cu, cu->EventSynchronize(end)) && CU(cu, cu->EventElapsedTime(&ms, start, end)) &&
                    read_back(v, v->va, "pinned async copy"))
                        printf("GPU %d: pinned async copy of %zu KiB: %.3f ms\n", v->gpu->index, v->size >> 10, (double) ms);
        }
        if (end)
                CU(cu, cu->EventDestroy(end));
        if (start)
                CU(cu, cu->EventDestroy(start));
        if (pinned)
                CU(cu, cu->MemFreeHost(pinned));

        void *registered = aligned_alloc(4096, v->size);
        if (registered && CU(cu, cu->MemHostRegister(registered, v->size, 0))) {
                memcpy(registered, v->pattern, v->size);
                if (scribble(v) && CU(cu, cu->MemcpyHtoDAsync(v->va, registered, v->size, stream)) &&
                    CU(cu, cu->StreamSynchronize(stream)))
                        read_back(v, v->va, "registered async copy");
                CU(cu, cu->MemHostUnregister(registered));
        }
        free(registered);
        if (stream)
                CU(cu, cu->StreamDestroy(stream));
}

static void vmm_steps(vmm *v) {
        const gh_cuda *cu = v->cu;
        double t0 = now_ms();

        if (!CU(cu, cu->MemCreate(&v->handle, v->size, &v->prop, 0)))
                return;
        v->have_handle = true;
        if (!export_fd(v) || !map(v, &v->va, v->handle, &v->mapped))
                return;
        if (!CU(cu, cu->MemcpyHtoD(v->va, v->pattern, v->size)) || !read_back(v, v->va, "synchronous copy"))
                return;
        printf("GPU %d: VMM create, export, map and copy round trip of %zu KiB: %.2f ms\n", v->gpu->index,
               v->size >> 10, now_ms() - t0);
        async_copies(v);
        /* the fd stands for the allocation: import it and read the pattern through a second mapping */
        if (!CU(cu, cu->MemcpyHtoD(v->va, v->pattern, v->size)) ||
            !CU(cu, cu->MemImportFromShareableHandle(&v->handle2, (void *) (uintptr_t) v->fd,
                                                      CU_MEM_HANDLE_TYPE_POSIX_FILE_DESCRIPTOR)))
                return;
        v->have_handle2 = true;
        if (map(v, &v->va2, v->handle2, &v->mapped2))
                read_back(v, v->va2, "mapping of the imported fd");
}

static void vmm_cleanup(vmm *v) {
        const gh_cuda *cu = v->cu;

        if (v->mapped2)
                CU(cu, cu->MemUnmap(v->va2, v->size));
        if (v->va2)
                CU(cu, cu->MemAddressFree(v->va2, v->size));
        if (v->have_handle2)
                CU(cu, cu->MemRelease(v->handle2));
        if (v->mapped)
                CU(cu, cu->MemUnmap(v->va, v->size));
        if (v->va)
                CU(cu, cu->MemAddressFree(v->va, v->size));
        if (v->have_handle)
                CU(cu, cu->MemRelease(v->handle));
        v->fd = gh_close(v->fd);
        free(v->pattern);
        free(v->back);
}

static void vmm_round_trip_in_context(const gh_cuda *cu, const gh_device_info *g) {
        size_t free0 = 0, free1 = 0, total = 0;
        vmm v = {
                .cu = cu,
                .gpu = g,
                .size = g->granularity,
                .prop = {.type = CU_MEM_ALLOCATION_TYPE_PINNED,
                         .requestedHandleTypes = CU_MEM_HANDLE_TYPE_POSIX_FILE_DESCRIPTOR,
                         .location = {.type = CU_MEM_LOCATION_TYPE_DEVICE, .id = g->cuda_ordinal}},
                .access = {.location = {.type = CU_MEM_LOCATION_TYPE_DEVICE, .id = g->cuda_ordinal},
                           .flags = CU_MEM_ACCESS_FLAGS_PROT_READWRITE},
                .fd = -1,
                .pattern = malloc(g->granularity),
                .back = malloc(g->granularity),
        };

        if (!v.pattern || !v.back || !CU(cu, cu->MemGetInfo(&free0, &total))) {
                vmm_cleanup(&v);
                return;
        }
        fill_pattern(v.pattern, v.size, 0x9e3779b97f4a7c15u + (uint64_t) g->index);
        vmm_steps(&v);
        vmm_cleanup(&v);
        if (!CU(cu, cu->MemGetInfo(&free1, &total)))
                return;
        int64_t delta = (int64_t) free0 - (int64_t) free1;
        printf("GPU %d: free memory before %zu, after %zu (%+" PRId64 " bytes)\n", g->index, free0, free1, -delta);
        CHECK((uint64_t) (delta < 0 ? -delta : delta) <= g->granularity,
              "GPU %d: free memory did not come back: %zu before, %zu after", g->index, free0, free1);
}

static void vmm_round_trip(const gh_cuda *cu, const gh_device_info *g) {
        CUdevice dev;
        CUcontext ctx = NULL;

        if (!g->vmm_supported || !g->posix_fd_supported || g->granularity == 0)
                return; /* reported by check_gpu */
        if (!CU(cu, cu->DeviceGet(&dev, g->cuda_ordinal)) || !CU(cu, cu->DevicePrimaryCtxRetain(&ctx, dev)))
                return;
        if (CU(cu, cu->CtxSetCurrent(ctx)))
                vmm_round_trip_in_context(cu, g);
        CU(cu, cu->CtxSetCurrent(NULL));
        CU(cu, cu->DevicePrimaryCtxRelease(dev));
}

/* ---- main --------------------------------------------------------------- */

static int load(gh_cuda **ret) {
        char err[512] = "";
        double t0 = now_ms();
        int r = gh_cuda_load(NULL, ret, err, sizeof(err));

        if (r == -ENOENT || r == -ENODEV) {
                printf("SKIP: no CUDA driver or device: %s (%s)\n", err, strerror(-r));
                return r;
        }
        CHECK(r == 0, "gh_cuda_load: %s (%s)", err, strerror(-r));
        if (r == 0)
                printf("CUDA driver %d.%d loaded in %.1f ms\n", (*ret)->driver_version / 1000,
                       (*ret)->driver_version % 1000 / 10, now_ms() - t0);
        return r;
}

static void check_registry(gh_cuda *cu) {
        int n_gpus = 0;
        double t0 = now_ms();
        gh_devices *d = discover(NULL, cu);

        if (!d)
                return;
        printf("discovery: %.1f ms\n\n", now_ms() - t0);
        print_table(d);
        json_object *a = gh_devices_to_json(d);
        printf("\n%s\n\n", json_object_to_json_string_ext(a, JSON_C_TO_STRING_PRETTY | JSON_C_TO_STRING_NOSLASHESCAPE));
        json_object_put(a);

        CU(cu, cu->DeviceGetCount(&n_gpus));
        CHECK(n_gpus > 0, "the driver reports %d GPUs", n_gpus);
        CHECK(gh_devices_count(d) == (size_t) n_gpus + 1, "%zu devices for %d GPUs and the CPU", gh_devices_count(d), n_gpus);
        for (int i = 0; i < n_gpus && (size_t) i < gh_devices_count(d); i++)
                check_gpu(gh_devices_at(d, (size_t) i), i > 0 ? gh_devices_at(d, (size_t) i - 1) : NULL);
        if (gh_devices_count(d) == (size_t) n_gpus + 1)
                check_cpu(gh_devices_at(d, (size_t) n_gpus), n_gpus);
        check_against_nvidia_smi(d);
        if (n_gpus > 0 && gh_devices_get(d, 0))
                check_selection(cu, d, n_gpus);
        for (int i = 0; i < n_gpus && (size_t) i < gh_devices_count(d); i++)
                vmm_round_trip(cu, gh_devices_at(d, (size_t) i));
        gh_devices_free(d);
}

int main(void) {
        gh_cuda *cu = NULL;
        int r;

        setvbuf(stdout, NULL, _IOLBF, 0);
        r = load(&cu);
        if (r == -ENOENT || r == -ENODEV)
                return EXIT_SKIP;
        if (r == 0) {
                CHECK(cu->driver_version >= 12000, "driver version %d", cu->driver_version);
                check_error_names(cu);
                check_registry(cu);
                cu = gh_cuda_free(cu);
                /* the driver stays mapped: loading it again works */
                char err[512] = "";
                r = gh_cuda_load(NULL, &cu, err, sizeof(err));
                CHECK(r == 0, "gh_cuda_load after gh_cuda_free: %s (%s)", err, strerror(-r));
                cu = gh_cuda_free(cu);
        }
        if (failures > 0) {
                fprintf(stderr, "FAILED: %u check(s)\n", failures);
                return 1;
        }
        printf("PASS\n");
        return 0;
}

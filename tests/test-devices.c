/* Unit tests for the CUDA driver loader (daemon/gpuhostd/cuda.c) and the
 * device registry (daemon/gpuhostd/devices.c), without a GPU.
 *
 * Covers: the reserve and selector parsers with good and bad input; the
 * CUresult -> errno mapping; gh_cuda_load with a library that is not there,
 * a file that is not a library, and the CUDA toolkit's stub libcuda (path in
 * $GH_CUDA_STUB; skipped when empty); discovery without a driver (the CPU
 * device alone, with sane numbers and budgets; no device at all when the CPU
 * is disabled; selectors naming GPUs that do not exist); and discovery
 * through a fake driver table of three GPUs: PCI bus order, include and
 * exclude, reserves and overrides, contexts released and restored, and a
 * failing call named in the error. And the JSON of a device. */
#include <errno.h>
#include <fcntl.h>
#include <inttypes.h>
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include <cmocka.h>

#include "common/util.h"
#include "gpuhostd/cuda.h"
#include "gpuhostd/devices.h"

#define KiB (UINT64_C(1) << 10)
#define MiB (UINT64_C(1) << 20)
#define GiB (UINT64_C(1) << 30)
#define UUID_A "GPU-8bf3c2d1-0000-1111-2222-33334444aaaa"
#define UUID_B "GPU-8bf3c2d1-0000-1111-2222-33334444bbbb"
#define UUID_C "GPU-8bf3c2d1-0000-1111-2222-33334444cccc"

/* ---- parsers ---------------------------------------------------------- */

static void expect_reserve(const char *s, gh_reserve_unit unit, uint64_t value) {
        gh_reserve r = {.unit = 99, .value = 99};
        const char *reason = NULL;

        if (gh_reserve_parse(s, &r, &reason) != 0)
                print_error("'%s': %s\n", s, reason);
        assert_int_equal(gh_reserve_parse(s, &r, &reason), 0);
        assert_int_equal(r.unit, unit);
        assert_int_equal(r.value, value);
}

static void expect_bad_reserve(const char *s, const char *reason_part) {
        gh_reserve r = {.unit = GH_RESERVE_BYTES, .value = 4242};
        const char *reason = NULL;

        if (gh_reserve_parse(s, &r, &reason) != -EINVAL)
                print_error("'%s' was accepted\n", s ? s : "(null)");
        assert_int_equal(gh_reserve_parse(s, &r, &reason), -EINVAL);
        assert_non_null(reason);
        assert_non_null(strstr(reason, reason_part));
        assert_int_equal(r.value, 4242); /* untouched on failure */
}

static void test_reserve_parse(void **state) {
        expect_reserve("0", GH_RESERVE_BYTES, 0);
        expect_reserve("1048576", GH_RESERVE_BYTES, MiB);
        expect_reserve("16K", GH_RESERVE_BYTES, 16 * KiB);
        expect_reserve("16KiB", GH_RESERVE_BYTES, 16 * KiB);
        expect_reserve("512M", GH_RESERVE_BYTES, 512 * MiB);
        expect_reserve("512MiB", GH_RESERVE_BYTES, 512 * MiB);
        expect_reserve("2G", GH_RESERVE_BYTES, 2 * GiB);
        expect_reserve("2GiB", GH_RESERVE_BYTES, 2 * GiB);
        expect_reserve("1T", GH_RESERVE_BYTES, 1024 * GiB);
        expect_reserve("1TiB", GH_RESERVE_BYTES, 1024 * GiB);
        expect_reserve("16777215T", GH_RESERVE_BYTES, UINT64_C(16777215) << 40);
        expect_reserve("0%", GH_RESERVE_PERCENT, 0);
        expect_reserve("10%", GH_RESERVE_PERCENT, 10);
        expect_reserve("99%", GH_RESERVE_PERCENT, 99);

        expect_bad_reserve(NULL, "not a size");
        expect_bad_reserve("", "not a size");
        expect_bad_reserve("G", "not a size");
        expect_bad_reserve("%", "not a size");
        expect_bad_reserve("-1G", "not a size");
        expect_bad_reserve("+1G", "not a size");
        expect_bad_reserve(" 2G", "not a size");
        expect_bad_reserve("2G ", "not a size");
        expect_bad_reserve("1.5G", "not a size");
        expect_bad_reserve("2g", "not a size");
        expect_bad_reserve("2GB", "not a size");
        expect_bad_reserve("10%%", "not a size");
        expect_bad_reserve("10 %", "not a size");
        expect_bad_reserve("5%G", "not a size");
        expect_bad_reserve("100%", "out of range");
        expect_bad_reserve("1000%", "out of range");
        expect_bad_reserve("16777216T", "too large");
        expect_bad_reserve("18446744073709551615K", "too large");
        expect_bad_reserve("18446744073709551616", "too large");
        expect_bad_reserve("99999999999999999999999%", "too large");
}

static void test_reserve_bytes(void **state) {
        gh_reserve bytes = {.unit = GH_RESERVE_BYTES, .value = 2 * GiB};
        gh_reserve pct = {.unit = GH_RESERVE_PERCENT, .value = 5};
        gh_reserve pct99 = {.unit = GH_RESERVE_PERCENT, .value = 99};

        assert_int_equal(gh_reserve_bytes(&bytes, 80 * GiB), 2 * GiB);
        assert_int_equal(gh_reserve_bytes(&bytes, GiB), 2 * GiB); /* the caller checks it fits */
        assert_int_equal(gh_reserve_bytes(&pct, 100 * GiB), 5 * GiB);
        assert_int_equal(gh_reserve_bytes(&pct, 199), 9);
        assert_int_equal(gh_reserve_bytes(&pct, 0), 0);
        /* no overflow on huge totals */
        assert_true(gh_reserve_bytes(&pct99, UINT64_MAX) < UINT64_MAX);
        assert_true(gh_reserve_bytes(&pct99, UINT64_MAX) > UINT64_MAX / 100 * 98);
}

static void expect_selector(const char *s, bool is_uuid, unsigned index, const char *text) {
        gh_device_selector sel;
        const char *reason = NULL;

        if (gh_device_selector_parse(s, &sel, &reason) != 0)
                print_error("'%s': %s\n", s, reason);
        assert_int_equal(gh_device_selector_parse(s, &sel, &reason), 0);
        assert_int_equal(sel.is_uuid, is_uuid);
        if (!is_uuid)
                assert_int_equal(sel.index, index);
        assert_string_equal(sel.text, text);
}

static void expect_bad_selector(const char *s, const char *reason_part) {
        gh_device_selector sel = {.index = 4242};
        const char *reason = NULL;

        if (gh_device_selector_parse(s, &sel, &reason) != -EINVAL)
                print_error("'%s' was accepted\n", s ? s : "(null)");
        assert_int_equal(gh_device_selector_parse(s, &sel, &reason), -EINVAL);
        assert_non_null(reason);
        assert_non_null(strstr(reason, reason_part));
        assert_int_equal(sel.index, 4242);
}

static void test_selector_parse(void **state) {
        expect_selector("0", false, 0, "0");
        expect_selector("7", false, 7, "7");
        expect_selector("007", false, 7, "7");
        expect_selector("1023", false, 1023, "1023");
        expect_selector(UUID_A, true, 0, UUID_A);
        expect_selector("GPU-8BF3C2D1-0000-1111-2222-33334444AAAA", true, 0, UUID_A);

        expect_bad_selector(NULL, "not a GPU index or UUID");
        expect_bad_selector("", "not a GPU index or UUID");
        expect_bad_selector("1024", "out of range");
        expect_bad_selector("99999999999999999999999", "out of range");
        expect_bad_selector("-1", "not a GPU index or UUID");
        expect_bad_selector("+1", "not a GPU index or UUID");
        expect_bad_selector(" 0", "not a GPU index or UUID");
        expect_bad_selector("0 ", "not a GPU index or UUID");
        expect_bad_selector("0x1", "not a GPU index or UUID");
        expect_bad_selector("1a", "not a GPU index or UUID");
        expect_bad_selector("GPU-", "not a GPU index or UUID");
        expect_bad_selector("GPU-0", "not a GPU index or UUID");
        expect_bad_selector("gpu-8bf3c2d1-0000-1111-2222-33334444aaaa", "not a GPU index or UUID");
        expect_bad_selector("MIG-8bf3c2d1-0000-1111-2222-33334444aaaa", "not a GPU index or UUID");
        expect_bad_selector("8bf3c2d1-0000-1111-2222-33334444aaaa", "not a GPU index or UUID");
        expect_bad_selector("GPU-8bf3c2d1-0000-1111-2222-33334444aaaa0", "not a GPU index or UUID");
        expect_bad_selector("GPU-8bf3c2d1-0000-1111-2222-33334444aaa", "not a GPU index or UUID");
        expect_bad_selector("GPU-8bf3c2d1x0000-1111-2222-33334444aaaa", "not a GPU index or UUID");
        expect_bad_selector("GPU-8bf3c2d1-0000-1111-2222-33334444aaag", "not a GPU index or UUID");
}

static void test_selectors_parse(void **state) {
        gh_device_selector list[4];
        const char *reason = NULL;
        size_t n = 99;

        assert_int_equal(gh_device_selectors_parse("", list, ELEMENTSOF(list), &n, &reason), 0);
        assert_int_equal(n, 0);
        assert_int_equal(gh_device_selectors_parse(" ,\t, ", list, ELEMENTSOF(list), &n, &reason), 0);
        assert_int_equal(n, 0);
        assert_int_equal(gh_device_selectors_parse("0, 3 " UUID_B ",,2", list, ELEMENTSOF(list), &n, &reason), 0);
        assert_int_equal(n, 4);
        assert_string_equal(list[0].text, "0");
        assert_int_equal(list[1].index, 3);
        assert_true(list[2].is_uuid);
        assert_string_equal(list[2].text, UUID_B);
        assert_string_equal(list[3].text, "2");

        n = 99;
        assert_int_equal(gh_device_selectors_parse("0, 1, 2, 3, 4", list, ELEMENTSOF(list), &n, &reason), -EINVAL);
        assert_non_null(strstr(reason, "too many devices (at most 4)"));
        assert_int_equal(n, 99);
        assert_int_equal(gh_device_selectors_parse("0 bogus 1", list, ELEMENTSOF(list), &n, &reason), -EINVAL);
        assert_non_null(strstr(reason, "'bogus'"));
        assert_non_null(strstr(reason, "not a GPU index or UUID"));
        assert_int_equal(gh_device_selectors_parse("0,2000", list, ELEMENTSOF(list), &n, &reason), -EINVAL);
        assert_non_null(strstr(reason, "'2000': device index out of range"));
        assert_int_equal(gh_device_selectors_parse("0 " UUID_A "x", list, ELEMENTSOF(list), &n, &reason), -EINVAL);
        assert_non_null(strstr(reason, UUID_A "x"));
        assert_int_equal(gh_device_selectors_parse("GPU-0123456789012345678901234567890123456789012345678901234567890",
                                                   list, ELEMENTSOF(list), &n, &reason),
                         -EINVAL);
        assert_non_null(strstr(reason, "not a GPU index or UUID"));
        assert_int_equal(n, 99);
}

static void test_config_defaults(void **state) {
        gh_devices_config cfg;

        memset(&cfg, 0xff, sizeof(cfg));
        gh_devices_config_init(&cfg);
        assert_int_equal(cfg.n_include, 0);
        assert_int_equal(cfg.n_exclude, 0);
        assert_int_equal(cfg.n_reserve_overrides, 0);
        assert_int_equal(cfg.reserve.unit, GH_RESERVE_PERCENT);
        assert_int_equal(cfg.reserve.value, 5);
        assert_true(cfg.cpu_enabled);
        assert_int_equal(cfg.cpu_budget_bytes, 0);
}

/* ---- the driver loader ------------------------------------------------ */

static void expect_errno(CUresult r, int e, const char *name) {
        const char *got = NULL;

        assert_int_equal(gh_cuda_errno(NULL, r, &got), e);
        assert_string_equal(got, name);
        assert_int_equal(gh_cuda_errno(NULL, r, NULL), e);
}

static void test_cuda_errno(void **state) {
        expect_errno(CUDA_SUCCESS, 0, "CUDA_SUCCESS");
        expect_errno(CUDA_ERROR_OUT_OF_MEMORY, -ENOMEM, "CUDA_ERROR_2");
        expect_errno(CUDA_ERROR_INVALID_VALUE, -EINVAL, "CUDA_ERROR_1");
        expect_errno(CUDA_ERROR_NOT_SUPPORTED, -EOPNOTSUPP, "CUDA_ERROR_801");
        expect_errno(CUDA_ERROR_NO_DEVICE, -ENODEV, "CUDA_ERROR_100");
        expect_errno(CUDA_ERROR_STUB_LIBRARY, -ENODEV, "CUDA_ERROR_34");
        expect_errno(CUDA_ERROR_NOT_INITIALIZED, -ENXIO, "CUDA_ERROR_3");
        expect_errno(CUDA_ERROR_DEINITIALIZED, -ENXIO, "CUDA_ERROR_4");
        expect_errno(CUDA_ERROR_NOT_PERMITTED, -EPERM, "CUDA_ERROR_800");
        expect_errno(CUDA_ERROR_ALREADY_MAPPED, -EEXIST, "CUDA_ERROR_208");
        expect_errno(CUDA_ERROR_NOT_READY, -EAGAIN, "CUDA_ERROR_600");
        expect_errno(CUDA_ERROR_ILLEGAL_ADDRESS, -EFAULT, "CUDA_ERROR_700");
        expect_errno(CUDA_ERROR_DEVICE_UNAVAILABLE, -EBUSY, "CUDA_ERROR_46");
        expect_errno(CUDA_ERROR_ECC_UNCORRECTABLE, -EIO, "CUDA_ERROR_214");
        expect_errno(CUDA_ERROR_UNKNOWN, -EIO, "CUDA_ERROR_999");
        expect_errno((CUresult) 123456, -EIO, "CUDA_ERROR_123456");
}

static void test_cuda_load_missing(void **state) {
        gh_cuda *cu = (gh_cuda *) 0x1;
        char err[256] = "";

        assert_int_equal(gh_cuda_load("/nonexistent/libcuda.so.1", &cu, err, sizeof(err)), -ENOENT);
        assert_ptr_equal(cu, (gh_cuda *) 0x1);
        assert_non_null(strstr(err, "cannot load the CUDA driver"));
        assert_non_null(strstr(err, "/nonexistent/libcuda.so.1"));

        err[0] = 0;
        assert_int_equal(gh_cuda_load("libgpuhost-no-such-driver.so.1", &cu, err, sizeof(err)), -ENOENT);
        assert_non_null(strstr(err, "libgpuhost-no-such-driver.so.1"));
        /* no room for a message is fine */
        assert_int_equal(gh_cuda_load("/nonexistent/libcuda.so.1", &cu, NULL, 0), -ENOENT);
        assert_ptr_equal(cu, (gh_cuda *) 0x1);
        assert_null(gh_cuda_free(NULL));
}

static void test_cuda_load_not_a_library(void **state) {
        char path[] = "/tmp/gh-test-devices-XXXXXX";
        gh_cuda *cu = NULL;
        char err[256] = "";
        int fd = mkstemp(path);

        assert_true(fd >= 0);
        assert_int_equal(write(fd, "not an ELF file\n", 16), 16);
        close(fd);
        assert_int_equal(gh_cuda_load(path, &cu, err, sizeof(err)), -ELIBBAD);
        assert_null(cu);
        assert_non_null(strstr(err, "cannot load the CUDA driver"));
        unlink(path);
}

static void test_cuda_load_stub(void **state) {
        const char *stub = getenv("GH_CUDA_STUB");
        gh_cuda *cu = NULL;
        char err[256] = "";

        if (!stub || !stub[0] || access(stub, R_OK) < 0) {
                print_message("no CUDA stub library (GH_CUDA_STUB=%s): skipped\n", stub ? stub : "");
                skip();
        }
        assert_int_equal(gh_cuda_load(stub, &cu, err, sizeof(err)), -ENODEV);
        assert_null(cu);
        assert_non_null(strstr(err, "stub"));
        assert_non_null(strstr(err, stub));
        /* and again: the library stays loaded, nothing breaks */
        assert_int_equal(gh_cuda_load(stub, &cu, err, sizeof(err)), -ENODEV);
        assert_null(cu);
}

/* ---- discovery without a driver ----------------------------------------- */

static gh_devices *discover_ok(const gh_devices_config *cfg, gh_cuda *cu) {
        gh_devices *d = NULL;
        char err[256] = "";
        int r = gh_devices_discover(cfg, cu, &d, err, sizeof(err));

        if (r != 0)
                print_error("discovery failed: %s (%s)\n", err, strerror(-r));
        assert_int_equal(r, 0);
        assert_non_null(d);
        return d;
}

static void expect_discover_error(const gh_devices_config *cfg, gh_cuda *cu, int e, const char *part1,
                                  const char *part2) {
        gh_devices *d = (gh_devices *) 0x1;
        char err[256] = "";
        int r = gh_devices_discover(cfg, cu, &d, err, sizeof(err));

        if (r != e || !strstr(err, part1) || (part2 && !strstr(err, part2)))
                print_error("got %d '%s', expected %d with '%s' and '%s'\n", r, err, e, part1, part2 ? part2 : "");
        assert_int_equal(r, e);
        assert_ptr_equal(d, (gh_devices *) 0x1);
        assert_non_null(strstr(err, part1));
        if (part2)
                assert_non_null(strstr(err, part2));
}

static void check_cpu(const gh_device_info *cpu, int index) {
        long page = sysconf(_SC_PAGESIZE);

        assert_int_equal(cpu->index, index);
        assert_int_equal(cpu->kind, GH_DEVICE_CPU);
        assert_int_equal(cpu->cuda_ordinal, -1);
        assert_true(cpu->name[0] != 0);
        assert_string_equal(cpu->uuid, "");
        assert_string_equal(cpu->pci_bus_id, "");
        assert_true(cpu->memory_total >= 64 * MiB);
        assert_true(cpu->memory_free > 0);
        assert_true(cpu->memory_free <= cpu->memory_total);
        assert_true(cpu->sm_count >= 1);
        assert_int_equal(cpu->cc_major, 0);
        assert_int_equal(cpu->cc_minor, 0);
        assert_false(cpu->vmm_supported);
        assert_false(cpu->posix_fd_supported);
        assert_int_equal(cpu->granularity, (uint64_t) page);
        assert_true(cpu->budget_bytes > 0);
        assert_true(cpu->budget_bytes <= cpu->memory_total);
        assert_int_equal(cpu->reserve_bytes + cpu->budget_bytes, cpu->memory_total);
}

static void test_discover_cpu_only(void **state) {
        gh_devices *d = discover_ok(NULL, NULL);

        assert_int_equal(gh_devices_count(d), 1);
        const gh_device_info *cpu = gh_devices_at(d, 0);
        assert_non_null(cpu);
        check_cpu(cpu, 0);
        assert_int_equal(cpu->budget_bytes, cpu->memory_free / 2); /* the default */
        assert_ptr_equal(gh_devices_get(d, 0), cpu);
        assert_null(gh_devices_get(d, 1));
        assert_null(gh_devices_get(d, -1));
        assert_null(gh_devices_at(d, 1));
        print_message("CPU: %s, %d CPUs, %" PRIu64 " MiB total, %" PRIu64 " MiB available, budget %" PRIu64 " MiB\n",
                      cpu->name, cpu->sm_count, cpu->memory_total / MiB, cpu->memory_free / MiB,
                      cpu->budget_bytes / MiB);
        gh_devices_free(d);

        assert_int_equal(gh_devices_count(NULL), 0);
        assert_null(gh_devices_at(NULL, 0));
        assert_null(gh_devices_get(NULL, 0));
        assert_null(gh_devices_free(NULL));
}

static void test_discover_cpu_budget(void **state) {
        gh_devices_config cfg;

        gh_devices_config_init(&cfg);
        cfg.cpu_budget_bytes = 32 * MiB;
        gh_devices *d = discover_ok(&cfg, NULL);
        const gh_device_info *cpu = gh_devices_at(d, 0);
        check_cpu(cpu, 0);
        assert_int_equal(cpu->budget_bytes, 32 * MiB);
        assert_int_equal(cpu->reserve_bytes, cpu->memory_total - 32 * MiB);
        gh_devices_free(d);

        cfg.cpu_budget_bytes = UINT64_C(1) << 60;
        expect_discover_error(&cfg, NULL, -ERANGE, "CPU budget", "exceeds the machine's memory");
}

static void test_discover_nothing(void **state) {
        gh_devices_config cfg;

        gh_devices_config_init(&cfg);
        cfg.cpu_enabled = false;
        gh_devices *d = discover_ok(&cfg, NULL);
        assert_int_equal(gh_devices_count(d), 0);
        assert_null(gh_devices_at(d, 0));
        json_object *a = gh_devices_to_json(d);
        assert_int_equal(json_object_array_length(a), 0);
        json_object_put(a);
        gh_devices_free(d);
}

static void add_selector(gh_device_selector *list, size_t *n, const char *text) {
        const char *reason;

        assert_int_equal(gh_device_selector_parse(text, &list[*n], &reason), 0);
        (*n)++;
}

static void add_override(gh_devices_config *cfg, const char *selector, const char *reserve) {
        gh_device_reserve *o = &cfg->reserve_overrides[cfg->n_reserve_overrides++];
        const char *reason;

        assert_int_equal(gh_device_selector_parse(selector, &o->device, &reason), 0);
        assert_int_equal(gh_reserve_parse(reserve, &o->reserve, &reason), 0);
}

static void test_discover_unknown_gpus(void **state) {
        gh_devices_config cfg;

        gh_devices_config_init(&cfg);
        add_selector(cfg.include, &cfg.n_include, "3");
        expect_discover_error(&cfg, NULL, -ENODEV, "include: no GPU with index 3", "the driver reports 0 GPUs");

        gh_devices_config_init(&cfg);
        add_selector(cfg.include, &cfg.n_include, UUID_A);
        expect_discover_error(&cfg, NULL, -ENODEV, "include: no GPU " UUID_A, NULL);

        gh_devices_config_init(&cfg);
        add_selector(cfg.exclude, &cfg.n_exclude, "0");
        expect_discover_error(&cfg, NULL, -ENODEV, "exclude: no GPU with index 0", NULL);

        gh_devices_config_init(&cfg);
        add_selector(cfg.exclude, &cfg.n_exclude, UUID_B);
        expect_discover_error(&cfg, NULL, -ENODEV, "exclude: no GPU " UUID_B, NULL);

        gh_devices_config_init(&cfg);
        add_override(&cfg, UUID_C, "1G");
        expect_discover_error(&cfg, NULL, -ENODEV, "reserve: no GPU " UUID_C, NULL);

        /* no room for a message is fine */
        gh_devices *d = NULL;
        assert_int_equal(gh_devices_discover(&cfg, NULL, &d, NULL, 0), -ENODEV);
        assert_null(d);
}

/* ---- discovery through a fake driver ------------------------------------ */

/* Three GPUs; the driver's ordinals are not in PCI bus order, and the
 * domains have different widths (text order would put 10000 before A000). */
static const struct fake_gpu {
        const char *uuid, *bus_id, *name;
        uint64_t total;
        int sms, cc_major, cc_minor, vmm, posix_fd;
} fake_gpus[] = {
        {UUID_B, "A000:41:00.0", "Fake H100", 80 * GiB, 132, 9, 0, 1, 1},
        {UUID_A, "0000:01:00.0", "Fake H200", 141 * GiB, 132, 9, 0, 1, 1},
        {UUID_C, "10000:01:00.0", "Fake T4", 16 * GiB, 40, 7, 5, 0, 0},
};
#define FAKE_N ((int) ELEMENTSOF(fake_gpus))
#define FAKE_GRANULARITY (2 * MiB)

static struct {
        CUcontext current;
        int retained[FAKE_N];
        int fail_mem_get_info_ordinal; /* -1: none */
} fake;

static CUcontext fake_context(int ordinal) {
        return (CUcontext) (uintptr_t) (0x1000 + ordinal);
}

static CUresult fake_device_get_count(int *count) {
        *count = FAKE_N;
        return CUDA_SUCCESS;
}

static CUresult fake_device_get(CUdevice *dev, int ordinal) {
        if (ordinal < 0 || ordinal >= FAKE_N)
                return CUDA_ERROR_INVALID_DEVICE;
        *dev = ordinal;
        return CUDA_SUCCESS;
}

static CUresult fake_device_get_uuid(CUuuid *uuid, CUdevice dev) {
        const char *s = fake_gpus[dev].uuid + 4;

        for (int i = 0; i < 16; i++) {
                while (*s == '-')
                        s++;
                unsigned byte;
                sscanf(s, "%2x", &byte);
                uuid->bytes[i] = (char) byte;
                s += 2;
        }
        return CUDA_SUCCESS;
}

static CUresult fake_device_get_pci_bus_id(char *bus_id, int len, CUdevice dev) {
        snprintf(bus_id, (size_t) len, "%s", fake_gpus[dev].bus_id);
        return CUDA_SUCCESS;
}

static CUresult fake_device_get_name(char *name, int len, CUdevice dev) {
        snprintf(name, (size_t) len, "%s", fake_gpus[dev].name);
        return CUDA_SUCCESS;
}

static CUresult fake_device_total_mem(size_t *bytes, CUdevice dev) {
        *bytes = fake_gpus[dev].total;
        return CUDA_SUCCESS;
}

static CUresult fake_device_get_attribute(int *value, CUdevice_attribute attr, CUdevice dev) {
        const struct fake_gpu *g = &fake_gpus[dev];

        switch (attr) {
        case CU_DEVICE_ATTRIBUTE_MULTIPROCESSOR_COUNT:
                *value = g->sms;
                return CUDA_SUCCESS;
        case CU_DEVICE_ATTRIBUTE_COMPUTE_CAPABILITY_MAJOR:
                *value = g->cc_major;
                return CUDA_SUCCESS;
        case CU_DEVICE_ATTRIBUTE_COMPUTE_CAPABILITY_MINOR:
                *value = g->cc_minor;
                return CUDA_SUCCESS;
        case CU_DEVICE_ATTRIBUTE_VIRTUAL_MEMORY_MANAGEMENT_SUPPORTED:
                *value = g->vmm;
                return CUDA_SUCCESS;
        case CU_DEVICE_ATTRIBUTE_HANDLE_TYPE_POSIX_FILE_DESCRIPTOR_SUPPORTED:
                *value = g->posix_fd;
                return CUDA_SUCCESS;
        default:
                return CUDA_ERROR_INVALID_VALUE;
        }
}

static CUresult fake_ctx_get_current(CUcontext *ctx) {
        *ctx = fake.current;
        return CUDA_SUCCESS;
}

static CUresult fake_ctx_set_current(CUcontext ctx) {
        fake.current = ctx;
        return CUDA_SUCCESS;
}

static CUresult fake_primary_ctx_retain(CUcontext *ctx, CUdevice dev) {
        fake.retained[dev]++;
        *ctx = fake_context(dev);
        return CUDA_SUCCESS;
}

static CUresult fake_primary_ctx_release(CUdevice dev) {
        fake.retained[dev]--;
        return CUDA_SUCCESS;
}

static int current_ordinal(void) {
        for (int i = 0; i < FAKE_N; i++)
                if (fake.current == fake_context(i) && fake.retained[i] > 0)
                        return i;
        return -1;
}

static CUresult fake_mem_get_info(size_t *free_bytes, size_t *total) {
        int i = current_ordinal();

        if (i < 0)
                return CUDA_ERROR_INVALID_CONTEXT;
        if (i == fake.fail_mem_get_info_ordinal)
                return CUDA_ERROR_OUT_OF_MEMORY;
        *total = fake_gpus[i].total;
        *free_bytes = fake_gpus[i].total - GiB;
        return CUDA_SUCCESS;
}

static CUresult fake_mem_get_allocation_granularity(size_t *granularity, const CUmemAllocationProp *prop,
                                                    CUmemAllocationGranularity_flags option) {
        if (current_ordinal() < 0 || prop->type != CU_MEM_ALLOCATION_TYPE_PINNED ||
            prop->location.type != CU_MEM_LOCATION_TYPE_DEVICE || prop->location.id != current_ordinal() ||
            prop->requestedHandleTypes != CU_MEM_HANDLE_TYPE_POSIX_FILE_DESCRIPTOR ||
            option != CU_MEM_ALLOC_GRANULARITY_MINIMUM)
                return CUDA_ERROR_INVALID_VALUE;
        *granularity = FAKE_GRANULARITY;
        return CUDA_SUCCESS;
}

static CUresult fake_get_error_name(CUresult r, const char **name) {
        switch (r) {
        case CUDA_ERROR_OUT_OF_MEMORY:
                *name = "CUDA_ERROR_OUT_OF_MEMORY";
                return CUDA_SUCCESS;
        default:
                return CUDA_ERROR_INVALID_VALUE;
        }
}

static gh_cuda fake_cuda(void) {
        memset(&fake, 0, sizeof(fake));
        fake.current = (CUcontext) (uintptr_t) 0x42; /* the caller's, to be restored */
        fake.fail_mem_get_info_ordinal = -1;
        return (gh_cuda) {
                .driver_version = 13000,
                .DeviceGetCount = fake_device_get_count,
                .DeviceGet = fake_device_get,
                .DeviceGetUuid = fake_device_get_uuid,
                .DeviceGetPCIBusId = fake_device_get_pci_bus_id,
                .DeviceGetName = fake_device_get_name,
                .DeviceTotalMem = fake_device_total_mem,
                .DeviceGetAttribute = fake_device_get_attribute,
                .CtxGetCurrent = fake_ctx_get_current,
                .CtxSetCurrent = fake_ctx_set_current,
                .DevicePrimaryCtxRetain = fake_primary_ctx_retain,
                .DevicePrimaryCtxRelease = fake_primary_ctx_release,
                .MemGetInfo = fake_mem_get_info,
                .MemGetAllocationGranularity = fake_mem_get_allocation_granularity,
                .GetErrorName = fake_get_error_name,
        };
}

static void expect_contexts_restored(void) {
        assert_ptr_equal(fake.current, (CUcontext) (uintptr_t) 0x42);
        for (int i = 0; i < FAKE_N; i++)
                assert_int_equal(fake.retained[i], 0);
}

static void test_fake_all_gpus(void **state) {
        gh_cuda cu = fake_cuda();
        gh_devices *d = discover_ok(NULL, &cu);

        expect_contexts_restored();
        assert_int_equal(gh_devices_count(d), 4);
        /* PCI bus order: ordinal 1 (0000:01), 0 (A000:41), 2 (10000:01), then the CPU */
        static const int ordinals[] = {1, 0, 2};
        for (int i = 0; i < 3; i++) {
                const gh_device_info *g = gh_devices_get(d, i);
                const struct fake_gpu *f = &fake_gpus[ordinals[i]];
                assert_non_null(g);
                assert_ptr_equal(g, gh_devices_at(d, (size_t) i));
                assert_int_equal(g->kind, GH_DEVICE_CUDA);
                assert_int_equal(g->cuda_ordinal, ordinals[i]);
                assert_string_equal(g->uuid, f->uuid);
                assert_string_equal(g->pci_bus_id, f->bus_id);
                assert_string_equal(g->name, f->name);
                assert_int_equal(g->memory_total, f->total);
                assert_int_equal(g->memory_free, f->total - GiB);
                assert_int_equal(g->sm_count, f->sms);
                assert_int_equal(g->cc_major, f->cc_major);
                assert_int_equal(g->cc_minor, f->cc_minor);
                assert_int_equal(g->vmm_supported, f->vmm);
                assert_int_equal(g->posix_fd_supported, f->posix_fd);
                assert_int_equal(g->granularity, f->vmm ? FAKE_GRANULARITY : 0);
                assert_int_equal(g->reserve_bytes, f->total * 5 / 100); /* the default 5% */
                assert_int_equal(g->budget_bytes, f->total - g->reserve_bytes);
        }
        check_cpu(gh_devices_get(d, 3), 3);
        gh_devices_free(d);
}

static void test_fake_selection(void **state) {
        gh_cuda cu = fake_cuda();
        gh_devices_config cfg;
        gh_devices *d;

        /* include by UUID and index; exclude wins over include */
        gh_devices_config_init(&cfg);
        cfg.cpu_enabled = false;
        add_selector(cfg.include, &cfg.n_include, UUID_C);
        add_selector(cfg.include, &cfg.n_include, "0");
        add_selector(cfg.include, &cfg.n_include, "1");
        add_selector(cfg.exclude, &cfg.n_exclude, UUID_B);
        d = discover_ok(&cfg, &cu);
        expect_contexts_restored();
        assert_int_equal(gh_devices_count(d), 2);
        assert_string_equal(gh_devices_at(d, 0)->uuid, UUID_A);
        assert_int_equal(gh_devices_at(d, 0)->index, 0);
        assert_string_equal(gh_devices_at(d, 1)->uuid, UUID_C);
        assert_int_equal(gh_devices_at(d, 1)->index, 2); /* indices stay as the driver's GPUs are numbered */
        assert_null(gh_devices_get(d, 1));
        gh_devices_free(d);

        /* every GPU excluded, CPU kept: its index still comes after all GPUs */
        gh_devices_config_init(&cfg);
        add_selector(cfg.exclude, &cfg.n_exclude, "0");
        add_selector(cfg.exclude, &cfg.n_exclude, "1");
        add_selector(cfg.exclude, &cfg.n_exclude, "2");
        d = discover_ok(&cfg, &cu);
        assert_int_equal(gh_devices_count(d), 1);
        check_cpu(gh_devices_at(d, 0), 3);
        gh_devices_free(d);

        /* an index past the last GPU */
        gh_devices_config_init(&cfg);
        add_selector(cfg.include, &cfg.n_include, "3");
        expect_discover_error(&cfg, &cu, -ENODEV, "include: no GPU with index 3", "the driver reports 3 GPUs");
        expect_contexts_restored();
}

static void test_fake_reserve(void **state) {
        gh_cuda cu = fake_cuda();
        gh_devices_config cfg;
        const char *reason;

        gh_devices_config_init(&cfg);
        assert_int_equal(gh_reserve_parse("2G", &cfg.reserve, &reason), 0);
        add_override(&cfg, "2", "10%");
        add_override(&cfg, UUID_A, "1G");
        add_override(&cfg, "0", "3G"); /* the same GPU as UUID_A: the last match wins */
        gh_devices *d = discover_ok(&cfg, &cu);
        assert_int_equal(gh_devices_get(d, 0)->reserve_bytes, 3 * GiB);
        assert_int_equal(gh_devices_get(d, 0)->budget_bytes, 138 * GiB);
        assert_int_equal(gh_devices_get(d, 1)->reserve_bytes, 2 * GiB);
        assert_int_equal(gh_devices_get(d, 1)->budget_bytes, 78 * GiB);
        assert_int_equal(gh_devices_get(d, 2)->reserve_bytes, 16 * GiB * 10 / 100);
        gh_devices_free(d);

        /* a reserve as large as the GPU */
        gh_devices_config_init(&cfg);
        add_override(&cfg, UUID_C, "16G");
        expect_discover_error(&cfg, &cu, -ERANGE, "GPU 2 (" UUID_C "): reserve 16.0 GiB", "its memory, 16.0 GiB");
        expect_contexts_restored();
}

static CUresult fake_device_get_name_fails(char *name, int len, CUdevice dev) {
        return CUDA_ERROR_NOT_SUPPORTED;
}

static void test_fake_failure(void **state) {
        gh_cuda cu = fake_cuda();

        fake.fail_mem_get_info_ordinal = 0; /* index 1 */
        expect_discover_error(NULL, &cu, -ENOMEM, "GPU 1 (" UUID_B "): cuMemGetInfo: CUDA_ERROR_OUT_OF_MEMORY",
                              NULL);
        expect_contexts_restored();

        /* an error the driver has no name for */
        cu = fake_cuda();
        cu.DeviceGetName = fake_device_get_name_fails;
        expect_discover_error(NULL, &cu, -EOPNOTSUPP, "GPU 0 (" UUID_A "): cuDeviceGetName: CUDA_ERROR_801", NULL);
        expect_contexts_restored();
}

/* ---- JSON --------------------------------------------------------------- */

static json_object *get(json_object *o, const char *key) {
        json_object *v = NULL;

        if (!json_object_object_get_ex(o, key, &v))
                print_error("no '%s' in %s\n", key, json_object_to_json_string(o));
        assert_true(json_object_object_get_ex(o, key, &v));
        return v;
}

static void test_json(void **state) {
        gh_device_info gpu = {
                .index = 2, .kind = GH_DEVICE_CUDA, .cuda_ordinal = 0, .name = "NVIDIA H200", .uuid = UUID_A,
                .pci_bus_id = "0000:1B:00.0", .memory_total = 150 * GiB, .memory_free = 149 * GiB,
                .sm_count = 132, .cc_major = 9, .cc_minor = 0, .vmm_supported = true,
                .posix_fd_supported = true, .granularity = 2 * MiB, .reserve_bytes = 7 * GiB,
                .budget_bytes = 143 * GiB,
        };
        json_object *o = gh_device_info_to_json(&gpu);

        assert_int_equal(json_object_object_length(o), 13);
        assert_int_equal(json_object_get_int(get(o, "index")), 2);
        assert_string_equal(json_object_get_string(get(o, "kind")), "cuda");
        assert_string_equal(json_object_get_string(get(o, "name")), "NVIDIA H200");
        assert_string_equal(json_object_get_string(get(o, "uuid")), UUID_A);
        assert_string_equal(json_object_get_string(get(o, "pci_bus_id")), "0000:1B:00.0");
        assert_int_equal(json_object_get_int64(get(o, "memory_total")), (int64_t) (150 * GiB));
        assert_int_equal(json_object_get_int64(get(o, "memory_free")), (int64_t) (149 * GiB));
        assert_int_equal(json_object_get_int64(get(o, "memory_reserve")), (int64_t) (7 * GiB));
        assert_int_equal(json_object_get_int64(get(o, "memory_budget")), (int64_t) (143 * GiB));
        assert_int_equal(json_object_get_int(get(o, "sm_count")), 132);
        assert_string_equal(json_object_get_string(get(o, "compute_capability")), "9.0");
        assert_true(json_object_get_boolean(get(o, "vmm")));
        assert_true(json_object_get_boolean(get(o, "posix_fd")));
        json_object_put(o);

        gh_devices *d = discover_ok(NULL, NULL);
        json_object *a = gh_devices_to_json(d);
        assert_int_equal(json_object_array_length(a), 1);
        o = json_object_array_get_idx(a, 0);
        assert_int_equal(json_object_object_length(o), 13);
        assert_int_equal(json_object_get_int(get(o, "index")), 0);
        assert_string_equal(json_object_get_string(get(o, "kind")), "cpu");
        assert_string_equal(json_object_get_string(get(o, "name")), gh_devices_at(d, 0)->name);
        assert_null(get(o, "uuid"));
        assert_null(get(o, "pci_bus_id"));
        assert_null(get(o, "compute_capability"));
        assert_int_equal(json_object_get_int64(get(o, "memory_budget")), (int64_t) gh_devices_at(d, 0)->budget_bytes);
        assert_int_equal(json_object_get_int64(get(o, "memory_reserve")) + json_object_get_int64(get(o, "memory_budget")),
                         json_object_get_int64(get(o, "memory_total")));
        assert_false(json_object_get_boolean(get(o, "vmm")));
        assert_false(json_object_get_boolean(get(o, "posix_fd")));
        json_object_put(a);
        gh_devices_free(d);

        assert_string_equal(gh_device_kind_to_string(GH_DEVICE_CPU), "cpu");
        assert_string_equal(gh_device_kind_to_string(GH_DEVICE_CUDA), "cuda");
}

int main(void) {
        const struct CMUnitTest tests[] = {
                cmocka_unit_test(test_reserve_parse),
                cmocka_unit_test(test_reserve_bytes),
                cmocka_unit_test(test_selector_parse),
                cmocka_unit_test(test_selectors_parse),
                cmocka_unit_test(test_config_defaults),
                cmocka_unit_test(test_cuda_errno),
                cmocka_unit_test(test_cuda_load_missing),
                cmocka_unit_test(test_cuda_load_not_a_library),
                cmocka_unit_test(test_cuda_load_stub),
                cmocka_unit_test(test_discover_cpu_only),
                cmocka_unit_test(test_discover_cpu_budget),
                cmocka_unit_test(test_discover_nothing),
                cmocka_unit_test(test_discover_unknown_gpus),
                cmocka_unit_test(test_fake_all_gpus),
                cmocka_unit_test(test_fake_selection),
                cmocka_unit_test(test_fake_reserve),
                cmocka_unit_test(test_fake_failure),
                cmocka_unit_test(test_json),
        };

        return cmocka_run_group_tests(tests, NULL, NULL);
}

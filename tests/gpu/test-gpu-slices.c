/* GPU test (ctest label "gpu"): SM slices through CUDA green contexts
 * (worker/slices.c) on GPU 0, with CMocka.
 *
 * Splits the device into units and checks them (equal sizes, masks
 * validated, holds; larger units on request), measures what gh_slices_get
 * costs on first use and from the cache, fills the cache with held masks
 * to see the bound and the eviction of the least recently used one, and
 * then times a spin kernel (tests/gpu/spin-kernel.cu: every block spins a
 * fixed number of clock cycles, and writes its tag and the SM it ran on)
 * over one grid: on half the units alone (A, then B), on A and B at once
 * from two threads, and on every unit (the whole device, the SMs no unit
 * has included). The two halves at once must take well under
 * the sum of the solo runs (wall clock), a half must take about twice as
 * long as the whole (events), every block must have written its value,
 * and the SMs a run used must fit its slice (the two halves': disjoint).
 * The numbers go to the log through print_message.
 *
 * Exits 77 (skip) without a driver or GPU, where the driver has no green
 * contexts, or when built without nvcc (no spin kernel). */
#include <errno.h>
#include <pthread.h>
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include <cmocka.h>

#include "common/util.h"
#include "gpuhostd/cuda.h"
#include "worker/slices.h"

#ifdef GH_SPIN_PTX
extern const char gh_spin_kernel_ptx[];
#endif

#define EXIT_SKIP 77
#define GRID 8192         /* blocks: many waves even on the whole device */
#define BLOCK 1024        /* threads: at most 2 blocks an SM */
#define SPIN_CYCLES 2000000ULL
#define MAX_SMID 1024

typedef struct fixture {
        gh_cuda *cu;
        gh_slices *slices;
        CUdevice device;
        CUcontext primary;
        CUlibrary library;
        CUkernel kernel;
        CUdeviceptr out[2]; /* 2 x GRID words each: tag + block, SM id */
        unsigned next_tag;
} fixture;

static fixture fx;

/* One timed launch of the spin kernel in a slice. Filled by spin(), which
 * may run on another thread: it reports failures in |error|, not with
 * CMocka's asserts. */
typedef struct spin_run {
        CUcontext context;
        CUstream stream;
        CUdeviceptr out;
        unsigned tag;
        pthread_barrier_t *barrier; /* NULL: start at once */
        double start_ms, end_ms, event_ms;
        unsigned sms_used;
        uint64_t smids[MAX_SMID / 64];
        char error[160];
} spin_run;

static double now_ms(void) {
        return (double) gh_now_usec(CLOCK_MONOTONIC) / 1e3;
}

static uint64_t low_units(unsigned n) {
        return n >= 64 ? UINT64_MAX : (UINT64_C(1) << n) - 1;
}

static bool cu_fail(spin_run *run, CUresult r, const char *call) {
        const char *name;

        if (r == CUDA_SUCCESS)
                return false;
        gh_cuda_errno(fx.cu, r, &name);
        snprintf(run->error, sizeof(run->error), "%s: %s", call, name);
        return true;
}

/* Every block wrote tag + its index, on an SM below MAX_SMID. */
static bool check_output(spin_run *run, const unsigned *host) {
        for (unsigned b = 0; b < GRID; b++) {
                unsigned sm = host[2 * b + 1];
                if (host[2 * b] != run->tag + b || sm >= MAX_SMID) {
                        snprintf(run->error, sizeof(run->error), "block %u wrote %u on SM %u, expected %u", b,
                                 host[2 * b], sm, run->tag + b);
                        return false;
                }
                if (!(run->smids[sm / 64] & (UINT64_C(1) << (sm % 64))))
                        run->sms_used++;
                run->smids[sm / 64] |= UINT64_C(1) << (sm % 64);
        }
        return true;
}

static bool launch_timed(spin_run *run, CUevent start, CUevent stop) {
        const gh_cuda *cu = fx.cu;
        unsigned long long cycles = SPIN_CYCLES;
        void *params[] = {&cycles, &run->tag, &run->out};
        float ms = 0;

        if (run->barrier)
                pthread_barrier_wait(run->barrier);
        run->start_ms = now_ms();
        if (cu_fail(run, cu->EventRecord(start, run->stream), "cuEventRecord") ||
            cu_fail(run, cu->LaunchKernel((CUfunction) fx.kernel, GRID, 1, 1, BLOCK, 1, 1, 0, run->stream, params, NULL),
                    "cuLaunchKernel") ||
            cu_fail(run, cu->EventRecord(stop, run->stream), "cuEventRecord") ||
            cu_fail(run, cu->StreamSynchronize(run->stream), "cuStreamSynchronize"))
                return false;
        run->end_ms = now_ms();
        if (cu_fail(run, cu->EventElapsedTime(&ms, start, stop), "cuEventElapsedTime"))
                return false;
        run->event_ms = ms;
        return true;
}

static void *spin(void *userdata) {
        spin_run *run = userdata;
        const gh_cuda *cu = fx.cu;
        CUevent start = NULL, stop = NULL;
        unsigned *host = calloc(2 * GRID, sizeof(unsigned));

        if (!host)
                snprintf(run->error, sizeof(run->error), "out of memory");
        else if (!cu_fail(run, cu->CtxSetCurrent(run->context), "cuCtxSetCurrent") &&
                 !cu_fail(run, cu->EventCreate(&start, CU_EVENT_DEFAULT), "cuEventCreate") &&
                 !cu_fail(run, cu->EventCreate(&stop, CU_EVENT_DEFAULT), "cuEventCreate") &&
                 launch_timed(run, start, stop) &&
                 !cu_fail(run, cu->MemcpyDtoH(host, run->out, 2 * GRID * sizeof(unsigned)), "cuMemcpyDtoH"))
                check_output(run, host);
        if (start)
                cu->EventDestroy(start);
        if (stop)
                cu->EventDestroy(stop);
        cu->CtxSetCurrent(NULL);
        free(host);
        return NULL;
}

static void run_init(spin_run *run, CUcontext context, CUstream stream, int buffer) {
        memset(run, 0, sizeof(*run));
        run->context = context;
        run->stream = stream;
        run->out = fx.out[buffer];
        run->tag = ++fx.next_tag << 16; /* GRID < 65536: no run's values match another's */
}

static void spin_alone(spin_run *run, CUcontext context, CUstream stream) {
        run_init(run, context, stream, 0);
        spin(run);
        if (run->error[0])
                fail_msg("spin: %s", run->error);
}

/* ---- fixtures ----------------------------------------------------------- */

static int setup(void **state) {
        const gh_cuda *cu = fx.cu;

        if (cu->DeviceGet(&fx.device, 0) != CUDA_SUCCESS ||
            cu->DevicePrimaryCtxRetain(&fx.primary, fx.device) != CUDA_SUCCESS ||
            cu->CtxSetCurrent(fx.primary) != CUDA_SUCCESS)
                return -1;
#ifdef GH_SPIN_PTX
        if (cu->LibraryLoadData(&fx.library, gh_spin_kernel_ptx, NULL, NULL, 0, NULL, NULL, 0) != CUDA_SUCCESS ||
            cu->LibraryGetKernel(&fx.kernel, fx.library, "gh_spin") != CUDA_SUCCESS)
                return -1;
#endif
        for (size_t i = 0; i < ELEMENTSOF(fx.out); i++)
                if (cu->MemAlloc(&fx.out[i], 2 * GRID * sizeof(unsigned)) != CUDA_SUCCESS)
                        return -1;
        return 0;
}

static int teardown(void **state) {
        const gh_cuda *cu = fx.cu;

        fx.slices = gh_slices_free(fx.slices);
        if (fx.primary)
                cu->CtxSetCurrent(fx.primary);
        for (size_t i = 0; i < ELEMENTSOF(fx.out); i++)
                if (fx.out[i])
                        cu->MemFree(fx.out[i]);
        if (fx.library)
                cu->LibraryUnload(fx.library);
        if (fx.primary)
                cu->DevicePrimaryCtxRelease(fx.device);
        return 0;
}

/* ---- tests -------------------------------------------------------------- */

static void test_units(void **state) {
        unsigned n = gh_slices_count(fx.slices), unit = gh_slices_unit_sms(fx.slices);
        unsigned all = gh_slices_sms(fx.slices, low_units(n)), device = gh_slices_device_sms(fx.slices);

        print_message("device SMs %u: %u units of %u SMs (%u SMs in units, %u left out of partial slices)\n", device,
                      n, unit, n * unit, device - n * unit);
        assert_true(n >= 2 && n <= GH_SLICES_MAX_UNITS);
        assert_true(unit >= 1);
        for (unsigned i = 0; i < n; i++)
                assert_int_equal(gh_slices_sms(fx.slices, UINT64_C(1) << i), unit); /* n >= 2: a part */
        assert_int_equal(gh_slices_sms(fx.slices, low_units(n - 1)), (n - 1) * unit);
        assert_true(n * unit <= device);
        assert_int_equal(all, device); /* every unit: the whole device */
        assert_int_equal(gh_slices_sms(fx.slices, UINT64_MAX), device);

        /* every unit is the primary context, which stays current nowhere */
        CUcontext ctx, before = NULL, after = NULL;
        CUstream stream;
        assert_int_equal(fx.cu->CtxGetCurrent(&before), CUDA_SUCCESS);
        assert_int_equal(gh_slices_get(fx.slices, low_units(n), &ctx, &stream), 0);
        assert_int_equal(fx.cu->CtxGetCurrent(&after), CUDA_SUCCESS);
        assert_ptr_equal(ctx, fx.primary);
        assert_ptr_equal(after, before);
        assert_non_null(stream);
        assert_int_equal(gh_slices_put(fx.slices, low_units(n)), 0);
        assert_int_equal(gh_slices_get(fx.slices, 0, &ctx, &stream), -EINVAL);
        if (n < 64)
                assert_int_equal(gh_slices_get(fx.slices, UINT64_C(1) << n, &ctx, &stream), -EINVAL);
        assert_int_equal(gh_slices_put(fx.slices, 1), -ENOENT);
        assert_int_equal(gh_slices_put(fx.slices, 0), -ENOENT);
}

/* Larger units: at least the size asked for, equal, within the device;
 * one larger than the device is refused. Prints what each size leaves out. */
static void test_unit_sizes(void **state) {
        unsigned device = gh_slices_device_sms(fx.slices), sizes[] = {16, 24, 32, device / 2};
        char err[256];
        gh_slices *s = NULL;

        for (size_t i = 0; i < ELEMENTSOF(sizes); i++) {
                double t0 = now_ms();
                int r = gh_slices_new(fx.cu, 0, sizes[i], &s, err, sizeof(err));
                double t1 = now_ms();
                if (r < 0)
                        fail_msg("gh_slices_new(%u SMs): %s", sizes[i], err);
                unsigned n = gh_slices_count(s), unit = gh_slices_unit_sms(s), all = gh_slices_sms(s, low_units(n));
                print_message("units of at least %3u SMs: %2u units of %3u SMs, %3u left out (%.2f ms)\n", sizes[i], n,
                              unit, device - n * unit, t1 - t0);
                assert_true(n >= 1 && unit >= sizes[i] && n * unit <= device && all == device);
                s = gh_slices_free(s);
        }
        /* the whole device as one unit: only if the driver's alignment allows */
        int r = gh_slices_new(fx.cu, 0, device, &s, err, sizeof(err));
        print_message("units of %u SMs: %s\n", device, r >= 0 ? "one" : err);
        assert_true(r == -EINVAL || (r == 0 && gh_slices_count(s) == 1 && gh_slices_sms(s, 1) == device));
        s = gh_slices_free(s);
        assert_int_equal(gh_slices_new(fx.cu, 0, device + 1, &s, err, sizeof(err)), -EINVAL);
        assert_null(s);
}

/* What a first gh_slices_get costs (a green context and a stream), what a
 * cached one costs, and the first kernel in a new green context. */
static void test_get_cost(void **state) {
        unsigned n = gh_slices_count(fx.slices);
        uint64_t masks[] = {1, low_units(n / 2), low_units(n)};
        const char *names[] = {"1 unit", "half", "all units"};
        CUcontext ctx, ctx2;
        CUstream stream, stream2;

        for (size_t i = 0; i < ELEMENTSOF(masks); i++) {
                double t0 = now_ms();
                assert_int_equal(gh_slices_get(fx.slices, masks[i], &ctx, &stream), 0);
                double t1 = now_ms();
                assert_int_equal(gh_slices_get(fx.slices, masks[i], &ctx2, &stream2), -EBUSY);
                assert_int_equal(gh_slices_put(fx.slices, masks[i]), 0);
                assert_int_equal(gh_slices_put(fx.slices, masks[i]), -ENOENT);
                double t2 = now_ms();
                assert_int_equal(gh_slices_get(fx.slices, masks[i], &ctx2, &stream2), 0);
                double t3 = now_ms();
                assert_ptr_equal(ctx, ctx2);
                assert_ptr_equal(stream, stream2);

                spin_run run;
                spin_alone(&run, ctx, stream);
                double first = run.end_ms - run.start_ms;
                spin_alone(&run, ctx, stream);
                print_message("get %-9s (%3u SMs): first %.3f ms, cached %.3f ms; first kernel %.2f ms, next %.2f ms\n",
                              names[i], gh_slices_sms(fx.slices, masks[i]), t1 - t0, t3 - t2, first,
                              run.end_ms - run.start_ms);
                assert_int_equal(gh_slices_put(fx.slices, masks[i]), 0);
        }
}

/* GH_SLICES_CACHE held masks fill the cache; one more is refused until one
 * is put, and then that one is evicted. */
static void test_cache_bound(void **state) {
        unsigned n = gh_slices_count(fx.slices);
        CUcontext ctx;
        CUstream stream;

        if (n < 6) {
                print_message("%u units: fewer than %d masks, cache bound not tested\n", n, GH_SLICES_CACHE + 1);
                skip();
        }
        double t0 = now_ms();
        for (uint64_t m = 1; m <= GH_SLICES_CACHE; m++)
                assert_int_equal(gh_slices_get(fx.slices, m, &ctx, &stream), 0);
        double t1 = now_ms();
        uint64_t extra = GH_SLICES_CACHE + 1;
        assert_int_equal(gh_slices_get(fx.slices, extra, &ctx, &stream), -ENOSPC);
        assert_int_equal(gh_slices_put(fx.slices, 5), 0);
        assert_int_equal(gh_slices_get(fx.slices, extra, &ctx, &stream), 0);
        assert_int_equal(gh_slices_get(fx.slices, 5, &ctx, &stream), -ENOSPC); /* evicted */

        spin_run run; /* the newest context works */
        spin_alone(&run, ctx, stream);
        for (uint64_t m = 1; m <= GH_SLICES_CACHE + 1; m++)
                if (m != 5)
                        assert_int_equal(gh_slices_put(fx.slices, m), 0);
        print_message("%d held masks in %.1f ms (%.2f ms each; some were cached)\n", GH_SLICES_CACHE, t1 - t0,
                      (t1 - t0) / GH_SLICES_CACHE);
}

static unsigned common_sms(const spin_run *a, const spin_run *b) {
        unsigned n = 0;

        for (size_t i = 0; i < ELEMENTSOF(a->smids); i++)
                n += (unsigned) __builtin_popcountll(a->smids[i] & b->smids[i]);
        return n;
}

static void spin_both(spin_run *a, spin_run *b) {
        pthread_barrier_t barrier;
        pthread_t ta, tb;

        pthread_barrier_init(&barrier, NULL, 2);
        a->barrier = b->barrier = &barrier;
        assert_int_equal(pthread_create(&ta, NULL, spin, a), 0);
        assert_int_equal(pthread_create(&tb, NULL, spin, b), 0);
        pthread_join(ta, NULL);
        pthread_join(tb, NULL);
        pthread_barrier_destroy(&barrier);
        if (a->error[0] || b->error[0])
                fail_msg("concurrent spin: %s / %s", a->error, b->error);
}

static void test_scaling(void **state) {
        unsigned n = gh_slices_count(fx.slices), half = n / 2;
        uint64_t mask_a = low_units(half), mask_b = mask_a << half, mask_all = low_units(n);
        CUcontext ca, cb, call;
        CUstream sa, sb, sall;
        spin_run a, b, both_a, both_b, all;

        assert_int_equal(gh_slices_get(fx.slices, mask_a, &ca, &sa), 0);
        assert_int_equal(gh_slices_get(fx.slices, mask_b, &cb, &sb), 0);
        assert_int_equal(gh_slices_get(fx.slices, mask_all, &call, &sall), 0);
        spin_alone(&a, ca, sa); /* warm-up: the kernel's first load in each context */
        spin_alone(&a, cb, sb);
        spin_alone(&a, call, sall);
        spin_alone(&a, ca, sa);
        spin_alone(&b, cb, sb);
        run_init(&both_a, ca, sa, 0);
        run_init(&both_b, cb, sb, 1);
        spin_both(&both_a, &both_b);
        spin_alone(&all, call, sall);

        unsigned sms_a = gh_slices_sms(fx.slices, mask_a), sms_all = gh_slices_sms(fx.slices, mask_all);
        double solo_a = a.end_ms - a.start_ms, solo_b = b.end_ms - b.start_ms;
        double both = (both_a.end_ms > both_b.end_ms ? both_a.end_ms : both_b.end_ms) -
                      (both_a.start_ms < both_b.start_ms ? both_a.start_ms : both_b.start_ms);
        double ratio = a.event_ms / all.event_ms;
        print_message("grid %d x %d, %llu cycles a block; half = %u units, %u SMs; all = %u units, %u SMs\n", GRID,
                      BLOCK, SPIN_CYCLES, half, sms_a, n, sms_all);
        print_message("solo A: wall %.2f ms, events %.2f ms, %u SMs used\n", solo_a, a.event_ms, a.sms_used);
        print_message("solo B: wall %.2f ms, events %.2f ms, %u SMs used\n", solo_b, b.event_ms, b.sms_used);
        print_message("A and B at once: wall %.2f ms (%.2f x the solo sum); events %.2f / %.2f ms; "
                      "%u / %u SMs used, %u shared\n",
                      both, both / (solo_a + solo_b), both_a.event_ms, both_b.event_ms, both_a.sms_used,
                      both_b.sms_used, common_sms(&both_a, &both_b));
        print_message("all units: wall %.2f ms, events %.2f ms, %u SMs used; half / all = %.2f\n",
                      all.end_ms - all.start_ms, all.event_ms, all.sms_used, ratio);

        assert_true(a.sms_used <= sms_a && b.sms_used <= sms_a && all.sms_used <= sms_all);
        /* the whole device: the SMs the split leaves out of units run too */
        assert_int_equal(sms_all, gh_slices_device_sms(fx.slices));
        if (sms_all > n * gh_slices_unit_sms(fx.slices))
                assert_true(all.sms_used > n * gh_slices_unit_sms(fx.slices));
        assert_true(both_a.sms_used <= sms_a && both_b.sms_used <= sms_a);
        assert_int_equal(common_sms(&both_a, &both_b), 0);
        assert_true(both < 0.7 * (solo_a + solo_b));
        assert_true(ratio >= 1.5 && ratio <= 2.6);
        assert_int_equal(gh_slices_put(fx.slices, mask_a), 0);
        assert_int_equal(gh_slices_put(fx.slices, mask_b), 0);
        assert_int_equal(gh_slices_put(fx.slices, mask_all), 0);
}

/* Skips (77) without a GPU, without green contexts or without the kernel;
 * else creates the slices (timed) and runs the tests. */
static int open_slices(void) {
        char err[256] = "";
        double t0;
        int r = gh_cuda_load(NULL, &fx.cu, err, sizeof(err));

        if (r == -ENOENT || r == -ENODEV) {
                printf("SKIP: %s\n", err);
                return EXIT_SKIP;
        }
        if (r < 0) {
                fprintf(stderr, "FAIL: %s\n", err);
                return 1;
        }
#ifndef GH_SPIN_PTX
        printf("SKIP: built without nvcc: no spin kernel\n");
        return EXIT_SKIP;
#endif
        t0 = now_ms();
        r = gh_slices_new(fx.cu, 0, 0, &fx.slices, err, sizeof(err));
        if (r == -EOPNOTSUPP) {
                printf("SKIP: %s\n", err);
                return EXIT_SKIP;
        }
        if (r < 0) {
                fprintf(stderr, "FAIL: gh_slices_new: %s\n", err);
                return 1;
        }
        printf("CUDA driver %d; gh_slices_new: %.2f ms\n", fx.cu->driver_version, now_ms() - t0);
        return 0;
}

int main(void) {
        const struct CMUnitTest tests[] = {
                cmocka_unit_test(test_units),
                cmocka_unit_test(test_unit_sizes),
                cmocka_unit_test(test_get_cost),
                cmocka_unit_test(test_cache_bound),
                cmocka_unit_test(test_scaling),
        };
        int r = open_slices();

        if (r == 0)
                r = cmocka_run_group_tests(tests, setup, teardown);
        gh_slices_free(fx.slices);
        gh_cuda_free(fx.cu);
        return r;
}

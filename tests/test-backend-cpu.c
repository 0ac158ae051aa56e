/* Unit tests for the diffusion runtime's CPU backend (plugins/diffusion/
 * backend-cpu*.c): every op against a naive double-precision version
 * written here, over odd shapes (not multiples of the kernels' blocks,
 * batches, stride 2 with asymmetric padding, 1x1, several K blocks,
 * causal and plain attention with Tq != Tk, a long Tk), weights in F32,
 * F16 and BF16 (the reference gets the rounded values), and aliasing
 * where the contract allows it. Each op runs under every instruction set
 * this CPU has, with a serial parallel_for and with 3 pthreads: the two
 * must agree to the bit. Errors are normwise: max |y - ref| / max |ref|;
 * the activations are also checked element by element. GH_TEST_VERBOSE=1
 * prints every case's error. Timings: bench/bench-backend-cpu.c. */
#include <stdarg.h>
#include <stddef.h>
#include <setjmp.h>
#include <cmocka.h>
#include <errno.h>
#include <math.h>
#include <pthread.h>
#include <stdatomic.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "backend-cpu-internal.h"
#include "backend.h"
#include "xorshift.h"

#define TOL 1e-5
#define MAX_ALLOCS 256

static const gh_dbackend *be = &gh_dbackend_cpu;

/* ---- allocations, freed after each test ---- */

static void *allocs[MAX_ALLOCS];
static int n_allocs;

static void *alloc(size_t size) {
        void *p = calloc(1, size ? size : 1);

        assert_non_null(p);
        assert_true(n_allocs < MAX_ALLOCS);
        allocs[n_allocs++] = p;
        return p;
}

static int teardown(void **state) {
        for (int i = 0; i < n_allocs; i++)
                free(allocs[i]);
        n_allocs = 0;
        gh_dcpu_isa_force(NULL);
        return 0;
}

static float *floats(int64_t n) {
        return alloc((size_t)n * sizeof(float));
}

static double *doubles(int64_t n) {
        return alloc((size_t)n * sizeof(double));
}

/* ---- random values ---- */

static float *rnd(int64_t n, double lo, double hi) {
        float *p = floats(n);

        for (int64_t i = 0; i < n; i++)
                p[i] = (float)(lo + (hi - lo) * gh_test_urand());
        return p;
}

static double *widen(const float *p, int64_t n) {
        double *d = doubles(n);

        for (int64_t i = 0; i < n; i++)
                d[i] = p[i];
        return d;
}

/* ---- tensors ---- */

static gh_dt dt_make(gh_dtype_id t, void *data, const int64_t *shape, uint32_t nd) {
        gh_dt d = {.dtype = t, .n_dims = nd, .data = data};

        for (uint32_t i = 0; i < nd; i++)
                d.shape[i] = shape[i];
        return d;
}

#define SHAPE(...) (const int64_t[]){__VA_ARGS__}, (uint32_t)(sizeof((int64_t[]){__VA_ARGS__}) / sizeof(int64_t))
#define F32(data, ...) dt_make(GH_TENSOR_F32, (data), SHAPE(__VA_ARGS__))

/* Round to nearest even, by arithmetic rather than bits. */
static uint16_t to_f16(float f) {
        uint16_t sign = signbit(f) ? 0x8000 : 0;
        double a = fabs((double)f);
        int e;

        if (isnan(f))
                return sign | 0x7e00;
        if (a >= 65520.0)
                return sign | 0x7c00;
        if (a < 0x1p-14)
                return sign | (uint16_t)nearbyint(a * 0x1p24); /* 1024: the smallest normal */
        frexp(a, &e);
        double m = nearbyint(ldexp(a, 1 - e) * 1024.0); /* 1024..2048: 2048 carries into the exponent */
        return sign | (uint16_t)((uint32_t)(e - 1 + 15) * 1024u + (uint32_t)(m - 1024.0));
}

static double f16_value(uint16_t h) {
        int e = (h >> 10) & 31, m = h & 1023;
        double s = h & 0x8000 ? -1.0 : 1.0;

        if (e == 31)
                return m ? NAN : s * INFINITY;
        if (e == 0)
                return s * ldexp(m, -24);
        return s * ldexp(m + 1024, e - 25);
}

static uint16_t to_bf16(float f) {
        uint32_t u;

        memcpy(&u, &f, sizeof(u));
        u += 0x7fffu + ((u >> 16) & 1u);
        return (uint16_t)(u >> 16);
}

/* A weight of type t holding v rounded to t; *exact gets the values it
 * holds. */
static gh_dt weight(gh_dtype_id t, const float *v, double **exact, const int64_t *shape, uint32_t nd) {
        gh_dt d = dt_make(t, NULL, shape, nd);
        int64_t n = gh_dt_numel(&d);
        double *ex = doubles(n);

        if (t == GH_TENSOR_F32) {
                float *p = floats(n);
                memcpy(p, v, (size_t)n * sizeof(float));
                d.data = p;
        } else {
                uint16_t *p = alloc((size_t)n * sizeof(uint16_t));
                for (int64_t i = 0; i < n; i++)
                        p[i] = t == GH_TENSOR_F16 ? to_f16(v[i]) : to_bf16(v[i]);
                d.data = p;
        }
        for (int64_t i = 0; i < n; i++)
                ex[i] = gh_dcpu_ld(d.data, t, i);
        *exact = ex;
        return d;
}

static const gh_dtype_id wtypes[] = {GH_TENSOR_F32, GH_TENSOR_F16, GH_TENSOR_BF16};
static const char *const wnames[] = {"F32", "F16", "BF16"};

/* ---- threads ---- */

static int serial_for(void *pctx, uint32_t n, void (*fn)(void *ctx, uint32_t i, uint32_t thread), void *ctx) {
        for (uint32_t i = 0; i < n; i++)
                fn(ctx, i, 0);
        return 0;
}

typedef struct pool_run {
        uint32_t n;
        void (*fn)(void *ctx, uint32_t i, uint32_t thread);
        void *ctx;
        atomic_uint next;
} pool_run;

typedef struct pool_thread {
        pool_run *run;
        uint32_t index;
} pool_thread;

static void *pool_main(void *arg) {
        pool_thread *t = arg;

        for (;;) {
                uint32_t i = atomic_fetch_add(&t->run->next, 1);
                if (i >= t->run->n)
                        return NULL;
                t->run->fn(t->run->ctx, i, t->index);
        }
}

/* pctx: the thread count, as (uintptr_t). A thread per call, 8 MiB
 * stacks as the workers have. */
static int pthread_for(void *pctx, uint32_t n, void (*fn)(void *ctx, uint32_t i, uint32_t thread), void *ctx) {
        uint32_t threads = (uint32_t)(uintptr_t)pctx;
        pthread_t tid[16];
        pool_thread pt[16];
        pool_run run = {.n = n, .fn = fn, .ctx = ctx};
        pthread_attr_t attr;

        assert_true(threads >= 1 && threads <= 16);
        atomic_init(&run.next, 0);
        pthread_attr_init(&attr);
        pthread_attr_setstacksize(&attr, 8u << 20);
        for (uint32_t i = 0; i < threads; i++) {
                pt[i] = (pool_thread){.run = &run, .index = i};
                if (i > 0)
                        assert_int_equal(pthread_create(&tid[i], &attr, pool_main, &pt[i]), 0);
        }
        pool_main(&pt[0]);
        for (uint32_t i = 1; i < threads; i++)
                pthread_join(tid[i], NULL);
        pthread_attr_destroy(&attr);
        return 0;
}

static gh_dcpu cpu1 = {.parallel_for = serial_for, .threads = 1};
static gh_dcpu cpu3 = {.parallel_for = pthread_for, .pctx = (void *)(uintptr_t)3, .threads = 3};

/* ---- the check ---- */

static const char *const isas[] = {"base", "avx2"};

static double normwise(const float *y, const double *ref, int64_t n) {
        double e = 0.0, m = 0.0;

        for (int64_t i = 0; i < n; i++) {
                double d = fabs(y[i] - ref[i]);
                if (!(d <= e)) /* NaN sticks */
                        e = d;
                if (fabs(ref[i]) > m)
                        m = fabs(ref[i]);
        }
        return e / (m > 0.0 ? m : 1.0);
}

static bool verbose(void) {
        const char *v = getenv("GH_TEST_VERBOSE");

        return v && *v && *v != '0';
}

/* One case: op(cpu, arg, out) writes n floats to out. Under each
 * instruction set, 1 and 3 threads agree to the bit and the result is
 * within tol of ref. */
typedef void op_fn(gh_dcpu *cpu, const void *arg, float *out);

static void check(op_fn *op, const void *arg, int64_t n, const double *ref, double tol, const char *what) {
        float *o1 = malloc((size_t)n * sizeof(float) + 1), *o3 = malloc((size_t)n * sizeof(float) + 1);

        assert_non_null(o1);
        assert_non_null(o3);
        for (size_t k = 0; k < sizeof(isas) / sizeof(isas[0]); k++) {
                if (gh_dcpu_isa_force(isas[k]) < 0)
                        continue;
                memset(o1, 0xff, (size_t)n * sizeof(float)); /* NaN: what is not written fails */
                memset(o3, 0xff, (size_t)n * sizeof(float));
                op(&cpu1, arg, o1);
                op(&cpu3, arg, o3);
                if (memcmp(o1, o3, (size_t)n * sizeof(float)) != 0) {
                        int64_t i = 0;
                        while (memcmp(&o1[i], &o3[i], sizeof(float)) == 0)
                                i++;
                        fail_msg("%s [%s]: 1 and 3 threads differ at %lld: %.9g vs %.9g", what, isas[k], (long long)i,
                                 o1[i], o3[i]);
                }
                double e = normwise(o1, ref, n);
                if (verbose())
                        print_message("%-48s %-4s error %.3g\n", what, isas[k], e);
                if (!(e <= tol))
                        fail_msg("%s [%s]: error %g > %g", what, isas[k], e, tol);
        }
        gh_dcpu_isa_force(NULL);
        free(o1);
        free(o3);
}

/* ---- conversions ---- */

static void test_f16_exhaustive(void **state) {
        for (uint32_t u = 0; u < 65536; u++) {
                float want = (float)f16_value((uint16_t)u), got = gh_dcpu_h2f((uint16_t)u);
                if (isnan(want)) {
                        assert_true(isnan(got));
                        continue;
                }
                if (memcmp(&want, &got, sizeof(float)) != 0)
                        fail_msg("F16 %04x: %.9g, want %.9g", u, got, want);
                assert_int_equal(to_f16(want), u);
        }
        assert_int_equal(to_f16(1.0f + 0x1p-11f), 0x3c00);          /* a tie: to even */
        assert_int_equal(to_f16(1.0f + 3 * 0x1p-11f), 0x3c02);
        assert_true(gh_dcpu_bf2f(0x3f80) == 1.0f);
        assert_true(gh_dcpu_bf2f(0xc040) == -3.0f);
}

typedef struct ident_arg {
        gh_dt x, w, y;
        bool conv;
} ident_arg;

static void ident_op(gh_dcpu *cpu, const void *arg, float *out) {
        const ident_arg *a = arg;
        static const int pad[4] = {0, 0, 0, 0};
        gh_dt y = a->y;

        y.data = out;
        if (a->conv)
                assert_int_equal(be->conv2d(cpu, &a->x, &a->w, NULL, 1, pad, &y), 0);
        else
                assert_int_equal(be->linear(cpu, &a->x, &a->w, NULL, &y), 0);
}

/* Every finite F16 and BF16 value through the kernels' own (vector)
 * conversion: products with an identity, as B of a linear (w[n][k] = value
 * 256 n + k) and as A of a 1x1 convolution. */
static void test_weight_conversion_in_kernels(void **state) {
        float *id = floats(256 * 256);
        uint16_t *w = alloc(65536 * sizeof(uint16_t));
        double *ref = doubles(65536);
        char what[64];

        for (int i = 0; i < 256; i++)
                id[i * 256 + i] = 1.0f;
        for (size_t t = 1; t < 3; t++) {
                for (uint32_t u = 0; u < 65536; u++) {
                        uint32_t e = t == 1 ? (u >> 10 & 31) : (u >> 7 & 255);
                        w[u] = (uint16_t)(e == (t == 1 ? 31u : 255u) ? 0 : u);
                        ref[u] = gh_dcpu_ld(w, wtypes[t], u);
                }
                for (int conv = 0; conv < 2; conv++) {
                        ident_arg a = {.conv = conv};
                        double *r = ref;
                        if (conv) {
                                a.x = F32(id, 1, 256, 16, 16);
                                a.w = dt_make(wtypes[t], w, SHAPE(256, 256, 1, 1));
                                a.y = F32(NULL, 1, 256, 16, 16);
                        } else {
                                /* y[m][n] = w[n][m]: the transpose */
                                a.x = F32(id, 256, 256);
                                a.w = dt_make(wtypes[t], w, SHAPE(256, 256));
                                a.y = F32(NULL, 256, 256);
                                r = doubles(65536);
                                for (int m = 0; m < 256; m++)
                                        for (int n = 0; n < 256; n++)
                                                r[m * 256 + n] = ref[n * 256 + m];
                        }
                        snprintf(what, sizeof(what), "%s weights, every value, %s", wnames[t],
                                 conv ? "conv" : "linear");
                        check(ident_op, &a, 65536, r, 0.0, what);
                }
        }
}

/* ---- conv2d ---- */

typedef struct conv_case {
        int64_t b, ci, h, w, co, kh, kw;
        int stride, pad[4];
        bool bias;
} conv_case;

typedef struct conv_arg {
        gh_dt x, w, b, y;
        bool bias;
        int stride;
        const int *pad;
} conv_arg;

static void conv_op(gh_dcpu *cpu, const void *arg, float *out) {
        const conv_arg *a = arg;
        gh_dt y = a->y;

        y.data = out;
        assert_int_equal(be->conv2d(cpu, &a->x, &a->w, a->bias ? &a->b : NULL, a->stride, a->pad, &y), 0);
}

static void conv_ref(const conv_case *c, const double *x, const double *w, const double *b, int64_t ho, int64_t wo,
                     double *y) {
        for (int64_t n = 0; n < c->b; n++)
                for (int64_t o = 0; o < c->co; o++)
                        for (int64_t oy = 0; oy < ho; oy++)
                                for (int64_t ox = 0; ox < wo; ox++) {
                                        double s = b ? b[o] : 0.0;
                                        for (int64_t i = 0; i < c->ci; i++)
                                                for (int64_t ky = 0; ky < c->kh; ky++)
                                                        for (int64_t kx = 0; kx < c->kw; kx++) {
                                                                int64_t iy = oy * c->stride + ky - c->pad[0];
                                                                int64_t ix = ox * c->stride + kx - c->pad[2];
                                                                if (iy < 0 || iy >= c->h || ix < 0 || ix >= c->w)
                                                                        continue;
                                                                s += x[((n * c->ci + i) * c->h + iy) * c->w + ix] *
                                                                     w[((o * c->ci + i) * c->kh + ky) * c->kw + kx];
                                                        }
                                        y[((n * c->co + o) * ho + oy) * wo + ox] = s;
                                }
}

static void test_conv2d(void **state) {
        static const conv_case cases[] = {
                {2, 5, 13, 11, 7, 3, 3, 1, {1, 1, 1, 1}, true},      /* odd everything */
                {1, 19, 17, 20, 13, 3, 3, 2, {0, 1, 0, 1}, true},    /* VAE downsample: stride 2, pad right/bottom */
                {2, 6, 15, 12, 9, 3, 3, 2, {1, 1, 1, 1}, false},     /* UNet downsample */
                {2, 37, 9, 7, 11, 1, 1, 1, {0, 0, 0, 0}, true},      /* 1x1: a plain GEMM */
                {1, 8, 9, 10, 5, 1, 1, 2, {1, 0, 0, 1}, false},      /* 1x1 strided and padded */
                {1, 7, 11, 13, 6, 4, 3, 1, {2, 0, 1, 1}, true},      /* 4x3, asymmetric */
                {1, 40, 24, 40, 150, 3, 3, 1, {1, 1, 1, 1}, true},   /* K 360: two K blocks; 150 rows */
                {3, 4, 5, 5, 3, 3, 3, 1, {1, 1, 1, 1}, true},        /* rows narrower than a strip */
                {1, 300, 4, 6, 7, 1, 1, 1, {0, 0, 0, 0}, false},     /* 1x1 with K 300 */
        };
        char what[128];

        for (size_t ci = 0; ci < sizeof(cases) / sizeof(cases[0]); ci++) {
                const conv_case *c = &cases[ci];
                int64_t ho = (c->h + c->pad[0] + c->pad[1] - c->kh) / c->stride + 1;
                int64_t wo = (c->w + c->pad[2] + c->pad[3] - c->kw) / c->stride + 1;
                int64_t nx = c->b * c->ci * c->h * c->w, nw = c->co * c->ci * c->kh * c->kw;
                int64_t ny = c->b * c->co * ho * wo;
                float *x = rnd(nx, -1, 1), *w = rnd(nw, -0.5, 0.5), *b = rnd(c->co, -1, 1);
                double *xd = widen(x, nx), *ref = doubles(ny);
                for (size_t t = 0; t < 3; t++) {
                        double *wd, *bd;
                        conv_arg a = {
                                .x = F32(x, c->b, c->ci, c->h, c->w),
                                .w = weight(wtypes[t], w, &wd, SHAPE(c->co, c->ci, c->kh, c->kw)),
                                .b = weight(wtypes[t], b, &bd, SHAPE(c->co)),
                                .y = F32(NULL, c->b, c->co, ho, wo),
                                .bias = c->bias,
                                .stride = c->stride,
                                .pad = c->pad,
                        };
                        conv_ref(c, xd, wd, c->bias ? bd : NULL, ho, wo, ref);
                        snprintf(what, sizeof(what), "conv2d %zu %s", ci, wnames[t]);
                        check(conv_op, &a, ny, ref, TOL, what);
                }
        }
}

/* ---- linear ---- */

typedef struct linear_arg {
        gh_dt x, w, b, y;
        bool bias;
        const float *y0; /* linear_add: y's values before */
} linear_arg;

static void linear_op(gh_dcpu *cpu, const void *arg, float *out) {
        const linear_arg *a = arg;
        gh_dt y = a->y;

        y.data = out;
        assert_int_equal(be->linear(cpu, &a->x, &a->w, a->bias ? &a->b : NULL, &y), 0);
}

static void linear_add_op(gh_dcpu *cpu, const void *arg, float *out) {
        const linear_arg *a = arg;
        gh_dt y = a->y;

        y.data = out;
        memcpy(out, a->y0, (size_t)gh_dt_numel(&y) * sizeof(float));
        assert_int_equal(be->linear_add(cpu, &a->x, &a->w, a->bias ? &a->b : NULL, &y), 0);
}

static void test_linear(void **state) {
        static const struct {
                int64_t b, t, k, n;
                bool bias;
        } cases[] = {
                {1, 37, 70, 45, true},
                {1, 300, 600, 150, true}, /* three K blocks, several M tiles */
                {2, 77, 33, 20, false},
                {1, 1, 5, 3, true},
                {2, 5, 320, 1280, true},  /* the timestep MLP's shape */
                {1, 3, 0, 4, true},       /* K 0: the bias */
        };
        char what[128];

        for (size_t ci = 0; ci < sizeof(cases) / sizeof(cases[0]); ci++) {
                int64_t m = cases[ci].b * cases[ci].t, k = cases[ci].k, n = cases[ci].n;
                float *x = rnd(m * k, -1, 1), *w = rnd(n * k, -0.5, 0.5), *b = rnd(n, -1, 1);
                double *xd = widen(x, m * k), *ref = doubles(m * n);
                for (size_t t = 0; t < 3; t++) {
                        double *wd, *bd;
                        linear_arg a = {
                                .x = F32(x, cases[ci].b, cases[ci].t, k),
                                .w = weight(wtypes[t], w, &wd, SHAPE(n, k)),
                                .b = weight(wtypes[t], b, &bd, SHAPE(n)),
                                .y = F32(NULL, cases[ci].b, cases[ci].t, n),
                                .bias = cases[ci].bias,
                        };
                        for (int64_t i = 0; i < m; i++)
                                for (int64_t j = 0; j < n; j++) {
                                        double s = cases[ci].bias ? bd[j] : 0.0;
                                        for (int64_t kk = 0; kk < k; kk++)
                                                s += xd[i * k + kk] * wd[j * k + kk];
                                        ref[i * n + j] = s;
                                }
                        snprintf(what, sizeof(what), "linear %zu %s", ci, wnames[t]);
                        check(linear_op, &a, m * n, ref, TOL, what);
                        /* y += the same, onto values already there (over every K block, and K 0) */
                        float *y0 = rnd(m * n, -2, 2);
                        for (int64_t i = 0; i < m * n; i++)
                                ref[i] += y0[i];
                        a.y0 = y0;
                        snprintf(what, sizeof(what), "linear_add %zu %s", ci, wnames[t]);
                        check(linear_add_op, &a, m * n, ref, TOL, what);
                }
        }
}

/* ---- normalization ---- */

typedef struct norm_arg {
        gh_dt x, g, b, y;
        int groups;
        float eps;
        bool silu, in_place, layer, affine;
} norm_arg;

static void norm_op(gh_dcpu *cpu, const void *arg, float *out) {
        const norm_arg *a = arg;
        gh_dt y = a->y, x = a->x;
        const gh_dt *g = a->affine ? &a->g : NULL, *b = a->affine ? &a->b : NULL;

        y.data = out;
        if (a->in_place) {
                memcpy(out, x.data, (size_t)gh_dt_numel(&x) * sizeof(float));
                x.data = out;
        }
        if (a->layer)
                assert_int_equal(be->layer_norm(cpu, &x, g, b, a->eps, &y), 0);
        else
                assert_int_equal(be->group_norm(cpu, &x, a->groups, a->eps, g, b, a->silu, &y), 0);
}

static double silu_d(double x) {
        return x / (1.0 + exp(-x));
}

/* Normalizes rows of len elements; scale/shift index: (row % per) * len / cpg... given as c(i). */
static void norm_ref(const double *x, int64_t rows, int64_t len, double eps, double *y) {
        for (int64_t r = 0; r < rows; r++) {
                const double *xr = x + r * len;
                double mean = 0.0, var = 0.0;
                for (int64_t i = 0; i < len; i++)
                        mean += xr[i];
                mean /= (double)len;
                for (int64_t i = 0; i < len; i++)
                        var += (xr[i] - mean) * (xr[i] - mean);
                var /= (double)len;
                for (int64_t i = 0; i < len; i++)
                        y[r * len + i] = (xr[i] - mean) / sqrt(var + eps);
        }
}

static void test_group_norm(void **state) {
        static const struct {
                int64_t b, c, h, w;
                int groups;
                float eps, offset;
        } cases[] = {
                {2, 12, 7, 5, 4, 1e-5f, 0.0f},
                {1, 64, 9, 9, 32, 1e-6f, 3.0f}, /* mean far from 0 */
                {3, 6, 1, 1, 3, 1e-5f, 0.0f},
                {1, 8, 33, 31, 2, 1e-5f, -2.0f},
        };
        char what[128];

        for (size_t ci = 0; ci < sizeof(cases) / sizeof(cases[0]); ci++) {
                int64_t c = cases[ci].c, hw = cases[ci].h * cases[ci].w, n = cases[ci].b * c * hw;
                int64_t cg = c / cases[ci].groups;
                float *x = rnd(n, cases[ci].offset - 1.5, cases[ci].offset + 1.5), *g = rnd(c, 0.5, 1.5),
                      *bb = rnd(c, -1, 1);
                double *xd = widen(x, n), *nd = doubles(n), *ref = doubles(n);
                norm_ref(xd, cases[ci].b * cases[ci].groups, cg * hw, cases[ci].eps, nd);
                for (size_t t = 0; t < 3; t++)
                        for (int variant = 0; variant < 4; variant++) {
                                double *gd, *bd;
                                bool silu = variant & 1, in_place = variant & 2;
                                norm_arg a = {
                                        .x = F32(x, cases[ci].b, c, cases[ci].h, cases[ci].w),
                                        .g = weight(wtypes[t], g, &gd, SHAPE(c)),
                                        .b = weight(wtypes[t], bb, &bd, SHAPE(c)),
                                        .y = F32(NULL, cases[ci].b, c, cases[ci].h, cases[ci].w),
                                        .groups = cases[ci].groups,
                                        .eps = cases[ci].eps,
                                        .silu = silu,
                                        .in_place = in_place,
                                        .affine = true,
                                };
                                for (int64_t i = 0; i < n; i++) {
                                        int64_t ch = i / hw % c;
                                        ref[i] = nd[i] * gd[ch] + bd[ch];
                                        if (silu)
                                                ref[i] = silu_d(ref[i]);
                                }
                                snprintf(what, sizeof(what), "group_norm %zu %s%s%s", ci, wnames[t],
                                         silu ? " silu" : "", in_place ? " in place" : "");
                                check(norm_op, &a, n, ref, TOL, what);
                        }
        }
}

static void test_layer_norm(void **state) {
        static const struct {
                int64_t b, t, c;
                float offset;
        } cases[] = {
                {2, 9, 37, 0.0f},
                {1, 5, 600, 4.0f},
                {3, 77, 24, -1.0f},
        };
        char what[128];

        for (size_t ci = 0; ci < sizeof(cases) / sizeof(cases[0]); ci++) {
                int64_t c = cases[ci].c, n = cases[ci].b * cases[ci].t * c;
                float *x = rnd(n, cases[ci].offset - 2, cases[ci].offset + 2), *g = rnd(c, 0.5, 1.5),
                      *bb = rnd(c, -1, 1);
                double *xd = widen(x, n), *nd = doubles(n), *ref = doubles(n);
                norm_ref(xd, n / c, c, 1e-5, nd);
                for (size_t t = 0; t < 3; t++)
                        for (int in_place = 0; in_place < 2; in_place++) {
                                double *gd, *bd;
                                norm_arg a = {
                                        .x = F32(x, cases[ci].b, cases[ci].t, c),
                                        .g = weight(wtypes[t], g, &gd, SHAPE(c)),
                                        .b = weight(wtypes[t], bb, &bd, SHAPE(c)),
                                        .y = F32(NULL, cases[ci].b, cases[ci].t, c),
                                        .eps = 1e-5f,
                                        .in_place = in_place,
                                        .layer = true,
                                        .affine = true,
                                };
                                for (int64_t i = 0; i < n; i++)
                                        ref[i] = nd[i] * gd[i % c] + bd[i % c];
                                snprintf(what, sizeof(what), "layer_norm %zu %s%s", ci, wnames[t],
                                         in_place ? " in place" : "");
                                check(norm_op, &a, n, ref, TOL, what);
                        }
        }
}

/* ---- activations ---- */

typedef struct act_arg {
        gh_dt x, y;
        gh_dact act;
        bool in_place, geglu;
} act_arg;

static void act_op(gh_dcpu *cpu, const void *arg, float *out) {
        const act_arg *a = arg;
        gh_dt y = a->y, x = a->x;

        y.data = out;
        if (a->in_place) {
                memcpy(out, x.data, (size_t)gh_dt_numel(&x) * sizeof(float));
                x.data = out;
        }
        if (a->geglu)
                assert_int_equal(be->geglu(cpu, &x, &y), 0);
        else
                assert_int_equal(be->act(cpu, a->act, &x, &y), 0);
}

static double act_d(gh_dact act, double x) {
        switch (act) {
        case GH_DACT_SILU:
                return silu_d(x);
        case GH_DACT_GELU:
                return 0.5 * x * erfc(-x / sqrt(2.0));
        case GH_DACT_QUICK_GELU:
                return x / (1.0 + exp(-1.702 * x));
        }
        return NAN;
}

/* Elementwise too: |y - ref| <= tol (|ref| + 1e-30) but for results below
 * 1e-30 (denormal territory). */
static void check_elementwise(const float *y, const double *ref, int64_t n, double tol, const char *what) {
        for (int64_t i = 0; i < n; i++) {
                double e = fabs(y[i] - ref[i]);
                if (fabs(ref[i]) < 1e-30 && e < 1e-30)
                        continue;
                if (!(e <= tol * fabs(ref[i])))
                        fail_msg("%s: element %lld: %.9g, want %.9g (relative %.3g)", what, (long long)i, y[i],
                                 ref[i], e / fabs(ref[i]));
        }
}

static void test_act(void **state) {
        static const gh_dact acts[] = {GH_DACT_SILU, GH_DACT_GELU, GH_DACT_QUICK_GELU};
        static const char *const names[] = {"silu", "gelu", "quick_gelu"};
        const int64_t n = 4099;
        float *x = rnd(n, -12, 12), *y = floats(n);
        double *ref = doubles(n);
        char what[128];

        /* Special values and both signs of every range. */
        float special[] = {0.0f, -0.0f, 1e-20f, -1e-20f, 30.0f, -30.0f, 90.0f, -90.0f, 200.0f, -200.0f, 1e-3f};
        memcpy(x, special, sizeof(special));
        for (int64_t i = 20; i < 1020; i++)
                x[i] = (float)(-8.0 + 16.0 * (double)(i - 20) / 1000.0);
        for (size_t k = 0; k < 3; k++) {
                for (int64_t i = 0; i < n; i++)
                        ref[i] = act_d(acts[k], x[i]);
                for (int in_place = 0; in_place < 2; in_place++) {
                        act_arg a = {.x = F32(x, 1, n), .y = F32(NULL, 1, n), .act = acts[k], .in_place = in_place};
                        snprintf(what, sizeof(what), "act %s%s", names[k], in_place ? " in place" : "");
                        check(act_op, &a, n, ref, TOL, what);
                        /* Relative to each element, where the ranges allow. */
                        for (size_t s = 0; s < sizeof(isas) / sizeof(isas[0]); s++) {
                                if (gh_dcpu_isa_force(isas[s]) < 0)
                                        continue;
                                act_op(&cpu3, &a, y);
                                for (int64_t i = 0; i < n; i++) {
                                        /* sigmoid(-x) for x > 80 leaves floats. */
                                        if (x[i] < -80.0f || (acts[k] == GH_DACT_QUICK_GELU && x[i] < -50.0f)) {
                                                ref[i] = y[i] = 0.0f;
                                        }
                                }
                                snprintf(what, sizeof(what), "act %s [%s]", names[k], isas[s]);
                                check_elementwise(y, ref, n, TOL, what);
                                for (int64_t i = 0; i < n; i++)
                                        ref[i] = act_d(acts[k], x[i]);
                        }
                        gh_dcpu_isa_force(NULL);
                }
        }
}

static void test_geglu(void **state) {
        const int64_t b = 3, t = 5, n = 37;
        float *x = rnd(b * t * 2 * n, -5, 5);
        double *ref = doubles(b * t * n);

        for (int64_t r = 0; r < b * t; r++)
                for (int64_t i = 0; i < n; i++)
                        ref[r * n + i] = x[r * 2 * n + i] * act_d(GH_DACT_GELU, x[r * 2 * n + n + i]);
        act_arg a = {.x = F32(x, b, t, 2 * n), .y = F32(NULL, b, t, n), .geglu = true};
        check(act_op, &a, b * t * n, ref, TOL, "geglu");
}

/* ---- attention ---- */

typedef struct attn_arg {
        gh_dt q, k, v, y;
        int heads;
        bool causal;
} attn_arg;

static void attn_op(gh_dcpu *cpu, const void *arg, float *out) {
        const attn_arg *a = arg;
        gh_dt y = a->y;

        y.data = out;
        assert_int_equal(be->attention(cpu, &a->q, &a->k, &a->v, a->heads, a->causal, &y), 0);
}

static void attn_ref(const float *q, const float *k, const float *v, int64_t b, int64_t tq, int64_t tk, int64_t c,
                     int64_t heads, bool causal, double *y) {
        const int64_t d = c / heads;
        double *s = malloc((size_t)tk * sizeof(double));

        assert_non_null(s);
        for (int64_t n = 0; n < b; n++)
                for (int64_t h = 0; h < heads; h++)
                        for (int64_t i = 0; i < tq; i++) {
                                const float *qi = q + (n * tq + i) * c + h * d;
                                int64_t nk = causal ? (i + 1 < tk ? i + 1 : tk) : tk;
                                double mx = -INFINITY, sum = 0.0;
                                for (int64_t j = 0; j < nk; j++) {
                                        const float *kj = k + (n * tk + j) * c + h * d;
                                        double dot = 0.0;
                                        for (int64_t e = 0; e < d; e++)
                                                dot += (double)qi[e] * kj[e];
                                        s[j] = dot / sqrt((double)d);
                                        if (s[j] > mx)
                                                mx = s[j];
                                }
                                for (int64_t j = 0; j < nk; j++) {
                                        s[j] = exp(s[j] - mx);
                                        sum += s[j];
                                }
                                for (int64_t e = 0; e < d; e++) {
                                        double o = 0.0;
                                        for (int64_t j = 0; j < nk; j++)
                                                o += s[j] * v[(n * tk + j) * c + h * d + e];
                                        y[(n * tq + i) * c + h * d + e] = o / sum;
                                }
                        }
        free(s);
}

static void test_attention(void **state) {
        static const struct {
                int64_t b, tq, tk, d, heads;
                bool causal;
                double scale; /* of q: sharper softmax */
        } cases[] = {
                {2, 29, 45, 40, 3, false, 1.0},
                {1, 77, 77, 64, 2, true, 1.0},   /* CLIP */
                {1, 50, 30, 16, 2, true, 2.0},   /* causal, Tq > Tk */
                {2, 20, 70, 8, 3, true, 1.0},    /* causal, Tq < Tk */
                {1, 37, 5000, 40, 2, false, 1.0},/* long Tk */
                {1, 13, 20, 300, 1, false, 0.5}, /* d beyond a K block */
                {1, 11, 77, 160, 2, false, 1.0}, /* cross attention */
                {1, 400, 400, 24, 1, true, 3.0}, /* causal over many blocks */
                {1, 7, 9, 512, 1, false, 0.2},   /* VAE: one head of 512 */
                {1, 9, 13, 5, 2, false, 8.0},    /* scores up to ~40 */
        };
        char what[128];

        for (size_t ci = 0; ci < sizeof(cases) / sizeof(cases[0]); ci++) {
                int64_t b = cases[ci].b, tq = cases[ci].tq, tk = cases[ci].tk, c = cases[ci].d * cases[ci].heads;
                double sc = cases[ci].scale;
                float *q = rnd(b * tq * c, -sc, sc), *k = rnd(b * tk * c, -1, 1), *v = rnd(b * tk * c, -1, 1);
                double *ref = doubles(b * tq * c);
                attn_ref(q, k, v, b, tq, tk, c, cases[ci].heads, cases[ci].causal, ref);
                attn_arg a = {
                        .q = F32(q, b, tq, c),
                        .k = F32(k, b, tk, c),
                        .v = F32(v, b, tk, c),
                        .y = F32(NULL, b, tq, c),
                        .heads = (int)cases[ci].heads,
                        .causal = cases[ci].causal,
                };
                snprintf(what, sizeof(what), "attention %zu (%lldx%lld d %lld%s)", ci, (long long)tq, (long long)tk,
                         (long long)cases[ci].d, cases[ci].causal ? " causal" : "");
                check(attn_op, &a, b * tq * c, ref, TOL, what);
        }
}

/* ---- data movement and the small ops ---- */

typedef struct move_arg {
        int kind;
        gh_dt a, b, y;
        bool alias_a, alias_b;
} move_arg;

enum { M_UPSAMPLE, M_ADD, M_ADD_CHANNEL, M_CONCAT, M_TO_NLC, M_TO_NCHW };

static void move_op(gh_dcpu *cpu, const void *arg, float *out) {
        const move_arg *m = arg;
        gh_dt y = m->y, a = m->a, b = m->b;
        int r = -1;

        y.data = out;
        if (m->alias_a) {
                memcpy(out, a.data, (size_t)gh_dt_numel(&a) * sizeof(float));
                a.data = out;
        } else if (m->alias_b) {
                memcpy(out, b.data, (size_t)gh_dt_numel(&b) * sizeof(float));
                b.data = out;
        }
        switch (m->kind) {
        case M_UPSAMPLE:
                r = be->upsample2x(cpu, &a, &y);
                break;
        case M_ADD:
                r = be->add(cpu, &a, &b, &y);
                break;
        case M_ADD_CHANNEL:
                r = be->add_channel(cpu, &a, &b, &y);
                break;
        case M_CONCAT:
                r = be->concat(cpu, &a, &b, &y);
                break;
        case M_TO_NLC:
                r = be->nchw_to_nlc(cpu, &a, &y);
                break;
        case M_TO_NCHW:
                r = be->nlc_to_nchw(cpu, &a, &y);
                break;
        }
        assert_int_equal(r, 0);
}

static void test_upsample(void **state) {
        const int64_t b = 2, c = 3, h = 5, w = 7, n = b * c * h * w;
        float *x = rnd(n, -1, 1);
        double *ref = doubles(4 * n);

        for (int64_t p = 0; p < b * c; p++)
                for (int64_t y = 0; y < 2 * h; y++)
                        for (int64_t xx = 0; xx < 2 * w; xx++)
                                ref[(p * 2 * h + y) * 2 * w + xx] = x[(p * h + y / 2) * w + xx / 2];
        move_arg m = {.kind = M_UPSAMPLE, .a = F32(x, b, c, h, w), .y = F32(NULL, b, c, 2 * h, 2 * w)};
        check(move_op, &m, 4 * n, ref, 0.0, "upsample2x");
}

static void test_add(void **state) {
        const int64_t n = 3 * 50001;
        float *a = rnd(n, -1, 1), *b = rnd(n, -1, 1);
        double *ref = doubles(n);

        for (int64_t i = 0; i < n; i++)
                ref[i] = (double)(a[i] + b[i]);
        for (int alias = 0; alias < 3; alias++) {
                move_arg m = {.kind = M_ADD, .a = F32(a, 3, n / 3), .b = F32(b, 3, n / 3), .y = F32(NULL, 3, n / 3),
                              .alias_a = alias == 1, .alias_b = alias == 2};
                check(move_op, &m, n, ref, 0.0, alias ? "add aliased" : "add");
        }
}

static void test_add_channel(void **state) {
        const int64_t b = 2, c = 3, hw = 4 * 5, n = b * c * hw;
        float *x = rnd(n, -1, 1), *v = rnd(b * c, -1, 1);
        double *ref = doubles(n);

        for (int64_t i = 0; i < n; i++)
                ref[i] = (double)(x[i] + v[i / hw]);
        for (int alias = 0; alias < 2; alias++) {
                move_arg m = {.kind = M_ADD_CHANNEL, .a = F32(x, b, c, 4, 5), .b = F32(v, b, c),
                              .y = F32(NULL, b, c, 4, 5), .alias_a = alias};
                check(move_op, &m, n, ref, 0.0, alias ? "add_channel in place" : "add_channel");
        }
}

static void test_concat(void **state) {
        static const struct {
                uint32_t nd;
                int64_t b, ca, cb, rest[2];
        } cases[] = {
                {4, 2, 3, 2, {4, 5}},
                {2, 3, 4, 2, {1, 1}},
                {3, 2, 1, 5, {7, 1}},
                {4, 1, 320, 640, {8, 8}},
        };

        for (size_t ci = 0; ci < sizeof(cases) / sizeof(cases[0]); ci++) {
                int64_t b = cases[ci].b, ca = cases[ci].ca, cb = cases[ci].cb;
                int64_t rest = cases[ci].rest[0] * cases[ci].rest[1];
                float *x = rnd(b * ca * rest, -1, 1), *z = rnd(b * cb * rest, -1, 1);
                double *ref = doubles(b * (ca + cb) * rest);
                gh_dt ta = {.dtype = GH_TENSOR_F32, .n_dims = cases[ci].nd, .data = x}, tb = ta, ty = ta;
                ta.shape[0] = tb.shape[0] = ty.shape[0] = b;
                ta.shape[1] = ca;
                tb.shape[1] = cb;
                ty.shape[1] = ca + cb;
                for (uint32_t d = 2; d < cases[ci].nd; d++)
                        ta.shape[d] = tb.shape[d] = ty.shape[d] = cases[ci].rest[d - 2];
                tb.data = z;
                for (int64_t n = 0; n < b; n++)
                        for (int64_t ch = 0; ch < ca + cb; ch++) {
                                const float *src = ch < ca ? x + (n * ca + ch) * rest : z + (n * cb + ch - ca) * rest;
                                for (int64_t r = 0; r < rest; r++)
                                        ref[(n * (ca + cb) + ch) * rest + r] = src[r];
                        }
                move_arg m = {.kind = M_CONCAT, .a = ta, .b = tb, .y = ty};
                check(move_op, &m, gh_dt_numel(&ty), ref, 0.0, "concat");
        }
}

static void test_transposes(void **state) {
        const int64_t b = 2, c = 37, h = 5, w = 9, hw = h * w, n = b * c * hw;
        float *x = rnd(n, -1, 1);
        double *ref = doubles(n), *back = widen(x, n);

        for (int64_t i = 0; i < b; i++)
                for (int64_t ch = 0; ch < c; ch++)
                        for (int64_t p = 0; p < hw; p++)
                                ref[(i * hw + p) * c + ch] = x[(i * c + ch) * hw + p];
        move_arg m = {.kind = M_TO_NLC, .a = F32(x, b, c, h, w), .y = F32(NULL, b, hw, c)};
        check(move_op, &m, n, ref, 0.0, "nchw_to_nlc");
        float *nlc = floats(n);
        for (int64_t i = 0; i < n; i++)
                nlc[i] = (float)ref[i];
        move_arg m2 = {.kind = M_TO_NCHW, .a = F32(nlc, b, hw, c), .y = F32(NULL, b, c, h, w)};
        check(move_op, &m2, n, back, 0.0, "nlc_to_nchw");
}

static void test_timestep_embedding(void **state) {
        static const float t[] = {0.0f, 1.5f, 999.0f, 500.25f};
        const int64_t dims[] = {320, 7};

        for (size_t k = 0; k < 2; k++) {
                int64_t dim = dims[k], half = dim / 2;
                float *y = floats(4 * dim);
                gh_dt ty = F32(y, 4, dim);
                assert_int_equal(be->timestep_embedding(&cpu3, t, &ty), 0);
                for (int64_t b = 0; b < 4; b++)
                        for (int64_t i = 0; i < half; i++) {
                                double f = exp(-log(10000.0) * (double)i / (double)half);
                                assert_true(fabs(y[b * dim + i] - cos(t[b] * f)) < 1e-7);
                                assert_true(fabs(y[b * dim + half + i] - sin(t[b] * f)) < 1e-7);
                        }
                if (dim % 2)
                        assert_true(y[dim - 1] == 0.0f);
        }
}

typedef struct embed_arg {
        const int32_t *ids;
        gh_dt table, pos, y;
        bool with_pos;
} embed_arg;

static void embed_op(gh_dcpu *cpu, const void *arg, float *out) {
        const embed_arg *a = arg;
        gh_dt y = a->y;

        y.data = out;
        assert_int_equal(be->embedding(cpu, a->ids, &a->table, a->with_pos ? &a->pos : NULL, &y), 0);
}

static void test_embedding(void **state) {
        const int64_t rows = 50, c = 24, b = 2, t = 7;
        float *table = rnd(rows * c, -1, 1), *pos = rnd(t * c, -1, 1);
        int32_t ids[b * t];
        double *ref = doubles(b * t * c);
        char what[64];

        for (int64_t i = 0; i < b * t; i++)
                ids[i] = (int32_t)(gh_test_urand() * rows);
        for (size_t k = 0; k < 3; k++)
                for (int with_pos = 0; with_pos < 2; with_pos++) {
                        double *td, *pd;
                        embed_arg a = {
                                .ids = ids,
                                .table = weight(wtypes[k], table, &td, SHAPE(rows, c)),
                                .pos = weight(wtypes[k], pos, &pd, SHAPE(t, c)),
                                .y = F32(NULL, b, t, c),
                                .with_pos = with_pos,
                        };
                        for (int64_t i = 0; i < b * t; i++)
                                for (int64_t e = 0; e < c; e++)
                                        ref[i * c + e] = (double)((float)td[ids[i] * c + e] +
                                                                  (with_pos ? (float)pd[i % t * c + e] : 0.0f));
                        snprintf(what, sizeof(what), "embedding %s%s", wnames[k], with_pos ? " +pos" : "");
                        check(embed_op, &a, b * t * c, ref, 0.0, what);
                }
}

typedef struct lincomb_arg {
        uint32_t n;
        float coef[4];
        gh_dt x[4];
        int alias; /* -1: none, else y is x[alias] */
} lincomb_arg;

static void lincomb_op(gh_dcpu *cpu, const void *arg, float *out) {
        const lincomb_arg *a = arg;
        gh_dt x[4], y = a->x[0];
        const gh_dt *xp[4];

        y.data = out;
        for (uint32_t i = 0; i < a->n; i++) {
                x[i] = a->x[i];
                xp[i] = &x[i];
        }
        if (a->alias >= 0) {
                memcpy(out, a->x[a->alias].data, (size_t)gh_dt_numel(&y) * sizeof(float));
                x[a->alias].data = out;
        }
        assert_int_equal(be->lincomb(cpu, a->n, a->coef, xp, &y), 0);
}

static void test_lincomb(void **state) {
        const int64_t n = 70007;
        float *x[4];
        double *ref = doubles(n);
        char what[64];

        for (int i = 0; i < 4; i++)
                x[i] = rnd(n, -3, 3);
        for (uint32_t k = 1; k <= 4; k++)
                for (int alias = -1; alias < (int)k; alias++) {
                        lincomb_arg a = {.n = k, .coef = {0.5f, -1.25f, 3.0f, 0.1f}, .alias = alias};
                        for (uint32_t i = 0; i < k; i++)
                                a.x[i] = F32(x[i], 7, n / 7);
                        for (int64_t e = 0; e < n; e++) {
                                double s = 0.0;
                                for (uint32_t i = 0; i < k; i++)
                                        s += (double)a.coef[i] * x[i][e];
                                ref[e] = s;
                        }
                        snprintf(what, sizeof(what), "lincomb %u alias %d", k, alias);
                        check(lincomb_op, &a, n, ref, 1e-6, what);
                }
}

typedef struct scale_arg {
        gh_dt y;
        const float *w;
        uint32_t dim;
} scale_arg;

static void scale_op(gh_dcpu *cpu, const void *arg, float *out) {
        const scale_arg *a = arg;
        gh_dt y = a->y;

        memcpy(out, y.data, (size_t)gh_dt_numel(&y) * sizeof(float));
        y.data = out;
        assert_int_equal(be->scale_dim(cpu, a->w, a->dim, &y), 0);
}

static void test_scale_dim(void **state) {
        const int64_t shape[4] = {2, 3, 4, 5}, n = 120;
        float *y = rnd(n, -1, 1), *w = rnd(5, -2, 2);
        double *ref = doubles(n);
        char what[64];

        for (uint32_t dim = 0; dim < 4; dim++) {
                int64_t inner = 1;
                for (uint32_t i = dim + 1; i < 4; i++)
                        inner *= shape[i];
                for (int64_t e = 0; e < n; e++)
                        ref[e] = (double)(y[e] * w[e / inner % shape[dim]]);
                scale_arg a = {.y = F32(y, 2, 3, 4, 5), .w = w, .dim = dim};
                snprintf(what, sizeof(what), "scale_dim %u", dim);
                check(scale_op, &a, n, ref, 0.0, what);
        }
        gh_dt bad = F32(y, 2, 3, 4, 5);
        assert_int_equal(be->scale_dim(&cpu1, w, 4, &bad), -EINVAL);
}

static void test_sum(void **state) {
        const int64_t sizes[] = {1, 7, 100003, 5000000};

        for (size_t k = 0; k < 4; k++) {
                int64_t n = sizes[k];
                float *x = rnd(n, -1, 3);
                double want = 0.0, abs_sum = 0.0, s1, s3;
                for (int64_t i = 0; i < n; i++) {
                        want += x[i];
                        abs_sum += fabs(x[i]);
                }
                gh_dt t = F32(x, n);
                assert_int_equal(be->sum(&cpu1, &t, &s1), 0);
                assert_int_equal(be->sum(&cpu3, &t, &s3), 0);
                assert_memory_equal(&s1, &s3, sizeof(double));
                assert_true(fabs(s1 - want) <= 1e-12 * abs_sum);
        }
}

static void test_upload_download(void **state) {
        const int64_t n = 300007;
        float *src = rnd(n, -1, 1), *dst = floats(n), *back = floats(n);
        gh_dt t = F32(dst, n);
        double *ex;

        assert_int_equal(be->upload(&cpu3, src, &t), 0);
        assert_memory_equal(src, dst, (size_t)n * sizeof(float));
        assert_int_equal(be->download(&cpu3, &t, back), 0);
        assert_memory_equal(src, back, (size_t)n * sizeof(float));
        for (size_t k = 1; k < 3; k++) {
                gh_dt w = weight(wtypes[k], src, &ex, SHAPE(n));
                assert_int_equal(be->download(&cpu1, &w, back), 0);
                for (int64_t i = 0; i < n; i++)
                        assert_true(back[i] == (float)ex[i]);
        }
}

/* A backend with no parallel_for runs everything here. */
static void test_no_threads(void **state) {
        gh_dcpu none = {0};
        float *x = rnd(1000, -1, 1), *y = floats(1000);
        gh_dt tx = F32(x, 10, 100), ty = F32(y, 10, 100);

        assert_int_equal(be->act(&none, GH_DACT_SILU, &tx, &ty), 0);
        assert_int_equal(be->act(NULL, GH_DACT_SILU, &tx, &ty), 0);
        for (int i = 0; i < 1000; i++)
                assert_true(fabs(y[i] - silu_d(x[i])) <= 1e-6);
}

/* What only the backend can refuse; empty tensors; norms without weights. */
static void test_edges(void **state) {
        float *x = rnd(2 * 4096, -1, 1), *y = floats(2 * 4096);
        double *ref = doubles(2 * 4096);
        gh_dt q = F32(x, 1, 2, 4096), out = F32(y, 1, 2, 4096);

        assert_int_equal(be->attention(&cpu1, &q, &q, &q, 1, false, &out), -EOPNOTSUPP); /* d 4096 */
        assert_int_equal(be->attention(&cpu1, &q, &q, &q, 3, false, &out), -EINVAL);
        gh_dt f16 = dt_make(GH_TENSOR_F16, y, SHAPE(8));
        assert_int_equal(be->upload(&cpu1, x, &f16), -EOPNOTSUPP);

        gh_dt e = F32(x, 0, 4, 2, 2), ey = F32(y, 0, 4, 2, 2);
        assert_int_equal(be->group_norm(&cpu3, &e, 2, 1e-5f, NULL, NULL, false, &ey), 0);
        assert_int_equal(be->layer_norm(&cpu3, &e, NULL, NULL, 1e-5f, &ey), 0);
        assert_int_equal(be->conv2d(&cpu3, &e, &e, NULL, 1, (const int[4]){0, 0, 0, 0}, &ey), 0);

        double *xd = widen(x, 2 * 4096);
        norm_ref(xd, 8, 1024, 1e-5, ref);
        norm_arg g = {.x = F32(x, 2, 16, 16, 16), .y = F32(NULL, 2, 16, 16, 16), .groups = 4, .eps = 1e-5f};
        check(norm_op, &g, 2 * 4096, ref, TOL, "group_norm without weights");
        norm_ref(xd, 8, 1024, 1e-5, ref);
        norm_arg l = {.x = F32(x, 8, 1024), .y = F32(NULL, 8, 1024), .eps = 1e-5f, .layer = true};
        check(norm_op, &l, 2 * 4096, ref, TOL, "layer_norm without weights");
}

int main(void) {
        const struct CMUnitTest tests[] = {
                cmocka_unit_test_teardown(test_f16_exhaustive, teardown),
                cmocka_unit_test_teardown(test_weight_conversion_in_kernels, teardown),
                cmocka_unit_test_teardown(test_conv2d, teardown),
                cmocka_unit_test_teardown(test_linear, teardown),
                cmocka_unit_test_teardown(test_group_norm, teardown),
                cmocka_unit_test_teardown(test_layer_norm, teardown),
                cmocka_unit_test_teardown(test_act, teardown),
                cmocka_unit_test_teardown(test_geglu, teardown),
                cmocka_unit_test_teardown(test_attention, teardown),
                cmocka_unit_test_teardown(test_upsample, teardown),
                cmocka_unit_test_teardown(test_add, teardown),
                cmocka_unit_test_teardown(test_add_channel, teardown),
                cmocka_unit_test_teardown(test_concat, teardown),
                cmocka_unit_test_teardown(test_transposes, teardown),
                cmocka_unit_test_teardown(test_timestep_embedding, teardown),
                cmocka_unit_test_teardown(test_embedding, teardown),
                cmocka_unit_test_teardown(test_lincomb, teardown),
                cmocka_unit_test_teardown(test_scale_dim, teardown),
                cmocka_unit_test_teardown(test_sum, teardown),
                cmocka_unit_test_teardown(test_upload_download, teardown),
                cmocka_unit_test_teardown(test_no_threads, teardown),
                cmocka_unit_test_teardown(test_edges, teardown),
        };

        return cmocka_run_group_tests(tests, NULL, NULL);
}

/* GPU test (ctest label "gpu"): the diffusion runtime's CUDA backend
 * (plugins/diffusion/backend-cuda.c) against the CPU backend, op by op,
 * with CMocka, on GPU 0.
 *
 * Every op gets the same random inputs (fixed seed) on both backends, the
 * CPU one serial; the CUDA result comes back through the backend's own
 * download and is compared by relative L2 error, ||gpu - cpu|| / ||cpu||,
 * with a bound per op: tight for element-wise ops and data movement,
 * looser where summation orders differ (GEMMs, norms, attention). Weights
 * are F32, F16 and BF16 for conv2d, linear, the norms and embedding. Shapes
 * are the SD UNet's kinds (3x3 pad 1 stride 1 and 2, 1x1, the VAE's
 * downsample pad {0,1,0,1}, cross-, self- and causal attention, 32-group
 * norm with and without SiLU). Every error is printed. test_half checks
 * every op that takes F16 activations (the UNet's in the fp16 mode)
 * against the CPU backend on the same values in F32.
 *
 * Exits 77 (skip) without a driver or a GPU. */
#include <errno.h>
#include <math.h>
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <cmocka.h>

#include "backend-cuda.h"
#include "backend.h"
#include "common/util.h"
#include "xorshift.h"

#define EXIT_SKIP 77
#define MAX_ALLOCS 1024
#define EXACT 1e-6  /* element-wise: the same float operations */
#define SUMS 1e-5   /* reductions in another order */
#define FP16 1e-2   /* tensor-core mode: operands rounded to fp16 */
#define HALF 2e-3   /* F16 activations: the output rounded to fp16 */

typedef struct fixture {
        gh_cuda *cu;
        CUdevice device;
        CUcontext primary;
        CUstream stream;
        gh_dcuda gpu;
} fixture;

static fixture fx;
static gh_dcpu cpu1 = {.threads = 1};

static const gh_dtype_id wtypes[] = {GH_TENSOR_F32, GH_TENSOR_F16, GH_TENSOR_BF16};
static const char *const wnames[] = {"F32", "F16", "BF16"};

/* ---- allocations, freed after each test ---- */

static void *host_allocs[MAX_ALLOCS];
static CUdeviceptr dev_allocs[MAX_ALLOCS];
static int n_host, n_dev;

static void *halloc(size_t size) {
        void *p = calloc(1, size ? size : 1);

        assert_non_null(p);
        assert_true(n_host < MAX_ALLOCS);
        host_allocs[n_host++] = p;
        return p;
}

static void *dalloc(size_t size) {
        CUdeviceptr p = 0;

        assert_int_equal(fx.cu->MemAlloc(&p, size ? size : 1), CUDA_SUCCESS);
        assert_true(n_dev < MAX_ALLOCS);
        dev_allocs[n_dev++] = p;
        return (void *)(uintptr_t)p;
}

static int teardown_each(void **state) {
        for (int i = 0; i < n_host; i++)
                free(host_allocs[i]);
        for (int i = 0; i < n_dev; i++)
                fx.cu->MemFree(dev_allocs[i]);
        n_host = n_dev = 0;
        return 0;
}

/* ---- random values ---- */

static float *rnd(int64_t n, double lo, double hi) {
        float *p = halloc((size_t)n * sizeof(float));

        for (int64_t i = 0; i < n; i++)
                p[i] = (float)(lo + (hi - lo) * gh_test_urand());
        return p;
}

/* Round to nearest even (finite values of modest size only). */
static uint16_t to_f16(float f) {
        uint16_t sign = signbit(f) ? 0x8000 : 0;
        double a = fabs((double)f);
        int e;

        if (a < 0x1p-14)
                return sign | (uint16_t)nearbyint(a * 0x1p24);
        frexp(a, &e);
        double m = nearbyint(ldexp(a, 1 - e) * 1024.0);
        return sign | (uint16_t)((uint32_t)(e - 1 + 15) * 1024u + (uint32_t)(m - 1024.0));
}

static float from_f16(uint16_t h) {
        const int e = (h >> 10) & 31, m = h & 1023;
        const double v = e ? ldexp(1024 + m, e - 25) : ldexp(m, -24);

        return (float)((h & 0x8000) ? -v : v);
}

static uint16_t to_bf16(float f) {
        uint32_t u;

        memcpy(&u, &f, sizeof(u));
        u += 0x7fffu + ((u >> 16) & 1u);
        return (uint16_t)(u >> 16);
}

/* ---- tensors on both backends ---- */

typedef struct pair {
        gh_dt h, d; /* host (CPU backend), device (CUDA backend) */
} pair;

#define SHAPE(...) (const int64_t[]){__VA_ARGS__}, (uint32_t)(sizeof((int64_t[]){__VA_ARGS__}) / sizeof(int64_t))

/* A tensor of type t holding v (rounded to t) on both sides; v NULL: zeros. */
static pair mk(gh_dtype_id t, const float *v, const int64_t *shape, uint32_t nd) {
        pair p = {.h = {.dtype = t, .n_dims = nd}};
        int64_t n;
        size_t es = t == GH_TENSOR_F32 ? 4 : 2;

        memcpy(p.h.shape, shape, nd * sizeof(int64_t));
        n = gh_dt_numel(&p.h);
        p.h.data = halloc((size_t)n * es);
        for (int64_t i = 0; v && i < n; i++) {
                if (t == GH_TENSOR_F32)
                        ((float *)p.h.data)[i] = v[i];
                else
                        ((uint16_t *)p.h.data)[i] = t == GH_TENSOR_F16 ? to_f16(v[i]) : to_bf16(v[i]);
        }
        p.d = p.h;
        p.d.data = dalloc((size_t)n * es);
        /* A copy from pageable memory may return before its DMA lands, and
         * the backend's stream does not wait for the null stream: wait here,
         * or an op on the stream races the upload (seen on an H200 as
         * lincomb n=0's zeros overwritten by the upload). */
        assert_int_equal(fx.cu->MemcpyHtoD((CUdeviceptr)(uintptr_t)p.d.data, p.h.data, (size_t)n * es),
                         CUDA_SUCCESS);
        assert_int_equal(fx.cu->CtxSynchronize(), CUDA_SUCCESS);
        return p;
}

static pair f32(const float *v, const int64_t *shape, uint32_t nd) {
        return mk(GH_TENSOR_F32, v, shape, nd);
}

/* A random F32 tensor in [-1, 1). */
static pair rf32(const int64_t *shape, uint32_t nd) {
        gh_dt t = {.n_dims = nd};

        memcpy(t.shape, shape, nd * sizeof(int64_t));
        return f32(rnd(gh_dt_numel(&t), -1.0, 1.0), shape, nd);
}

static pair rweight(gh_dtype_id t, double scale, const int64_t *shape, uint32_t nd) {
        gh_dt d = {.n_dims = nd};

        memcpy(d.shape, shape, nd * sizeof(int64_t));
        return mk(t, rnd(gh_dt_numel(&d), -scale, scale), shape, nd);
}

/* An F16 activation on the device holding v (NULL: zeros) rounded to
 * fp16, and the same rounded values as F32 on the host (the CPU backend
 * takes F32 activations only). */
static pair h16(const float *v, const int64_t *shape, uint32_t nd) {
        pair p = mk(GH_TENSOR_F16, v, shape, nd);
        int64_t n = gh_dt_numel(&p.h);
        float *h = halloc((size_t)n * sizeof(float));

        for (int64_t i = 0; i < n; i++)
                h[i] = from_f16(((const uint16_t *)p.h.data)[i]);
        p.h.dtype = GH_TENSOR_F32;
        p.h.data = h;
        return p;
}

static pair rh16(const int64_t *shape, uint32_t nd) {
        gh_dt t = {.n_dims = nd};

        memcpy(t.shape, shape, nd * sizeof(int64_t));
        return h16(rnd(gh_dt_numel(&t), -1.0, 1.0), shape, nd);
}

/* Downloads y's device side and compares it with its host side. */
static void compare(const pair *y, double tol, const char *fmt, ...) _printf_(3, 4);
static void compare(const pair *y, double tol, const char *fmt, ...) {
        int64_t n = gh_dt_numel(&y->h);
        float *got = halloc((size_t)n * sizeof(float));
        const float *want = y->h.data;
        double num = 0, den = 0;
        char what[128];
        va_list ap;

        va_start(ap, fmt);
        vsnprintf(what, sizeof(what), fmt, ap);
        va_end(ap);
        assert_int_equal(gh_dbackend_cuda.download(&fx.gpu, &y->d, got), 0);
        for (int64_t i = 0; i < n; i++) {
                double d = (double)got[i] - want[i];
                num += d * d;
                den += (double)want[i] * want[i];
        }
        double err = den > 0 ? sqrt(num / den) : sqrt(num);
        print_message("%-52s rel L2 %.3g (bound %.0e)\n", what, err, tol);
        if (!(err <= tol))
                fail_msg("%s: relative L2 error %g over %g", what, err, tol);
}

/* ---- GEMMs ---- */

typedef struct conv_case {
        int64_t b, ci, h, w, co, k;
        int stride, pad[4];
        const char *name;
} conv_case;

static void conv2d_cases(double tol, const char *mode) {
        static const conv_case cases[] = {
                {2, 32, 16, 16, 64, 3, 1, {1, 1, 1, 1}, "3x3 s1 p1"},
                {1, 64, 16, 16, 64, 3, 2, {1, 1, 1, 1}, "3x3 s2 p1"},
                {2, 64, 12, 10, 32, 1, 1, {0, 0, 0, 0}, "1x1"},
                {1, 32, 17, 16, 32, 3, 2, {0, 1, 0, 1}, "3x3 s2 pad {0,1,0,1} (VAE down)"},
                {1, 4, 32, 32, 320, 3, 1, {1, 1, 1, 1}, "3x3 conv_in 4->320"},
                {1, 4, 6, 2100, 8, 3, 2, {1, 1, 1, 1}, "3x3 s2 2100 wide (im2col untiled)"},
        };

        for (size_t ci = 0; ci < ELEMENTSOF(cases); ci++) {
                const conv_case *c = &cases[ci];
                int64_t ho = (c->h + c->pad[0] + c->pad[1] - c->k) / c->stride + 1;
                int64_t wo = (c->w + c->pad[2] + c->pad[3] - c->k) / c->stride + 1;
                pair x = rf32(SHAPE(c->b, c->ci, c->h, c->w));
                for (size_t t = 0; t < ELEMENTSOF(wtypes); t++) {
                        double s = 1.0 / sqrt((double)(c->ci * c->k * c->k));
                        pair w = rweight(wtypes[t], s, SHAPE(c->co, c->ci, c->k, c->k));
                        pair b = rweight(wtypes[t], 0.5, SHAPE(c->co));
                        pair y = f32(NULL, SHAPE(c->b, c->co, ho, wo));
                        assert_int_equal(gh_dbackend_cpu.conv2d(&cpu1, &x.h, &w.h, &b.h, c->stride, c->pad, &y.h), 0);
                        assert_int_equal(gh_dbackend_cuda.conv2d(&fx.gpu, &x.d, &w.d, &b.d, c->stride, c->pad, &y.d),
                                         0);
                        compare(&y, tol, "conv2d %s %s%s", c->name, wnames[t], mode);
                }
        }
}

/* cuBLASLt (F32 operands), then the fallback kernel. */
static void test_conv2d(void **state) {
        conv2d_cases(SUMS, " (cuBLASLt)");
        fx.gpu.no_lt = true;
        conv2d_cases(SUMS, " (kernel)");
        fx.gpu.no_lt = false;
}

static void linear_cases(double tol, const char *mode) {
        static const int64_t cases[][3] = {{2 * 256, 320, 320}, {77, 768, 320}, {100, 1280, 4 * 320}, {7, 5, 3}};

        for (size_t ci = 0; ci < ELEMENTSOF(cases); ci++) {
                int64_t m = cases[ci][0], k = cases[ci][1], n = cases[ci][2];
                pair x = rf32(SHAPE(m, k));
                for (size_t t = 0; t < ELEMENTSOF(wtypes); t++) {
                        pair w = rweight(wtypes[t], 1.0 / sqrt((double)k), SHAPE(n, k));
                        pair b = rweight(wtypes[t], 0.5, SHAPE(n));
                        pair y = f32(NULL, SHAPE(m, n));
                        bool bias = ci % 2 == 0;
                        assert_int_equal(gh_dbackend_cpu.linear(&cpu1, &x.h, &w.h, bias ? &b.h : NULL, &y.h), 0);
                        /* the backend keeps biases converted by address: these are fresh */
                        gh_dcuda_set_work(&fx.gpu, fx.gpu.work, fx.gpu.work_size);
                        assert_int_equal(gh_dbackend_cuda.linear(&fx.gpu, &x.d, &w.d, bias ? &b.d : NULL, &y.d), 0);
                        compare(&y, tol, "linear %lldx%lld -> %lld%s %s%s", (long long)m, (long long)k,
                                (long long)n, bias ? " +b" : "", wnames[t], mode);
                        pair r = rf32(SHAPE(m, n)); /* y += the same (beta 1 on cuBLASLt) */
                        assert_int_equal(gh_dbackend_cpu.linear_add(&cpu1, &x.h, &w.h, bias ? &b.h : NULL, &r.h), 0);
                        assert_int_equal(gh_dbackend_cuda.linear_add(&fx.gpu, &x.d, &w.d, bias ? &b.d : NULL, &r.d), 0);
                        compare(&r, tol, "linear_add %lldx%lld -> %lld%s %s%s", (long long)m, (long long)k,
                                (long long)n, bias ? " +b" : "", wnames[t], mode);
                }
        }
}

static void test_linear(void **state) {
        linear_cases(SUMS, " (cuBLASLt)");
        fx.gpu.no_lt = true;
        linear_cases(SUMS, " (kernel)");
        fx.gpu.no_lt = false;
}

/* The tensor-core mode of conv2d and linear: fp16 (bf16 for bf16
 * weights) operands through cuBLASLt. */
static void test_fp16(void **state) {
        fx.gpu.fp16 = true;
        conv2d_cases(FP16, " (fp16 tensor cores)");
        linear_cases(FP16, " (fp16 tensor cores)");
        fx.gpu.fp16 = false;
}

/* The convolutions through cuDNN, where it loads (GH_TEST_REQUIRE_CUDNN=1:
 * it must); in pieces with a small work buffer too. Last: the backend
 * keeps using cuDNN once asked. */
static void test_cudnn(void **state) {
        const size_t full = fx.gpu.work_size;
        const char *need = getenv("GH_TEST_REQUIRE_CUDNN");
        char err[256] = "";
        int r = gh_dcuda_use_cudnn(&fx.gpu, err, sizeof(err));

        if (r < 0) {
                print_message("cuDNN: %s\n", err);
                if (need && strcmp(need, "1") == 0)
                        fail_msg("cuDNN required: %s", err);
                skip();
        }
        fx.gpu.fp16 = true;
        conv2d_cases(FP16, " (fp16, cuDNN)");
        fx.gpu.work_size = GH_DCUDA_LT_WORKSPACE + 64 * 1024;
        conv2d_cases(FP16, " (fp16, cuDNN, in pieces)");
        fx.gpu.work_size = full;
        fx.gpu.fp16 = false;
        conv2d_cases(SUMS, " (fp32: not cuDNN)");
}

/* A work buffer too small for whole operands: the GEMMs go in pieces (of
 * images, of pixels of one image, of rows), in both modes. */
static void test_pieces(void **state) {
        const size_t full = fx.gpu.work_size;

        fx.gpu.work_size = GH_DCUDA_LT_WORKSPACE + 64 * 1024;
        conv2d_cases(SUMS, " (in pieces)");
        linear_cases(SUMS, " (in pieces)");
        fx.gpu.fp16 = true;
        conv2d_cases(FP16, " (fp16, in pieces)");
        linear_cases(FP16, " (fp16, in pieces)");
        fx.gpu.fp16 = false;
        fx.gpu.work_size = full;
}

/* ---- norms ---- */

/* Partial sums over one chunk, and over several (64x64, 63x63 whose
 * chunks start off 16-byte boundaries, and 64 chunks of a group that does
 * not divide evenly), and batch items in two launches. */
static void test_group_norm(void **state) {
        static const int64_t shapes[][4] = {{2, 320, 16, 16},  {1, 64, 9, 7},     {2, 320, 64, 64},
                                            {1, 320, 63, 63},  {300, 32, 16, 16}, {1, 32, 1, 524351}};

        for (size_t si = 0; si < ELEMENTSOF(shapes); si++) {
                const int64_t *sh = shapes[si];
                pair x = f32(rnd(sh[0] * sh[1] * sh[2] * sh[3], -2.0, 3.0), SHAPE(sh[0], sh[1], sh[2], sh[3]));
                for (size_t t = 0; t < ELEMENTSOF(wtypes); t++) {
                        pair g = rweight(wtypes[t], 1.5, SHAPE(sh[1])), b = rweight(wtypes[t], 0.5, SHAPE(sh[1]));
                        for (int silu = 0; silu < 2; silu++) {
                                pair y = f32(NULL, SHAPE(sh[0], sh[1], sh[2], sh[3]));
                                assert_int_equal(
                                        gh_dbackend_cpu.group_norm(&cpu1, &x.h, 32, 1e-6f, &g.h, &b.h, silu, &y.h), 0);
                                assert_int_equal(
                                        gh_dbackend_cuda.group_norm(&fx.gpu, &x.d, 32, 1e-6f, &g.d, &b.d, silu, &y.d),
                                        0);
                                compare(&y, SUMS, "group_norm 32 [%lld,%lld,%lld,%lld]%s %s", (long long)sh[0],
                                        (long long)sh[1], (long long)sh[2], (long long)sh[3], silu ? " +silu" : "",
                                        wnames[t]);
                        }
                }
        }
}

/* Rows on a warp (up to 512 and up to 1536 wide, and not a multiple of
 * 32), and on a block (wider). */
static void test_layer_norm(void **state) {
        static const int64_t widths[] = {768, 320, 1280, 77, 1536, 2048};

        for (size_t wi = 0; wi < ELEMENTSOF(widths); wi++) {
                const int64_t n = widths[wi];
                pair x = f32(rnd(2 * 77 * n, -2.0, 3.0), SHAPE(2, 77, n));
                for (size_t t = 0; t < ELEMENTSOF(wtypes); t++) {
                        pair g = rweight(wtypes[t], 1.5, SHAPE(n)), b = rweight(wtypes[t], 0.5, SHAPE(n));
                        pair y = f32(NULL, SHAPE(2, 77, n));
                        assert_int_equal(gh_dbackend_cpu.layer_norm(&cpu1, &x.h, &g.h, &b.h, 1e-5f, &y.h), 0);
                        assert_int_equal(gh_dbackend_cuda.layer_norm(&fx.gpu, &x.d, &g.d, &b.d, 1e-5f, &y.d), 0);
                        compare(&y, SUMS, "layer_norm [2,77,%lld] %s", (long long)n, wnames[t]);
                }
        }
}

/* ---- element-wise ---- */

static void test_act(void **state) {
        static const char *const names[] = {"silu", "gelu", "quick_gelu"};
        pair x = f32(rnd(100003, -8.0, 8.0), SHAPE(100003));

        for (int a = GH_DACT_SILU; a <= GH_DACT_QUICK_GELU; a++) {
                pair y = f32(NULL, SHAPE(100003));
                assert_int_equal(gh_dbackend_cpu.act(&cpu1, (gh_dact)a, &x.h, &y.h), 0);
                assert_int_equal(gh_dbackend_cuda.act(&fx.gpu, (gh_dact)a, &x.d, &y.d), 0);
                compare(&y, EXACT, "act %s", names[a]);
        }
}

static void test_geglu(void **state) {
        pair x = f32(rnd(2 * 64 * 2 * 1280, -4.0, 4.0), SHAPE(2, 64, 2 * 1280));
        pair y = f32(NULL, SHAPE(2, 64, 1280));

        assert_int_equal(gh_dbackend_cpu.geglu(&cpu1, &x.h, &y.h), 0);
        assert_int_equal(gh_dbackend_cuda.geglu(&fx.gpu, &x.d, &y.d), 0);
        compare(&y, EXACT, "geglu [2,64,2560]");
}

static void test_add(void **state) {
        pair a = rf32(SHAPE(2, 320, 16, 16)), b = rf32(SHAPE(2, 320, 16, 16)), v = rf32(SHAPE(2, 320));
        pair y = f32(NULL, SHAPE(2, 320, 16, 16));

        assert_int_equal(gh_dbackend_cpu.add(&cpu1, &a.h, &b.h, &y.h), 0);
        assert_int_equal(gh_dbackend_cuda.add(&fx.gpu, &a.d, &b.d, &y.d), 0);
        compare(&y, 0.0, "add");
        assert_int_equal(gh_dbackend_cpu.add_channel(&cpu1, &a.h, &v.h, &y.h), 0);
        assert_int_equal(gh_dbackend_cuda.add_channel(&fx.gpu, &a.d, &v.d, &y.d), 0);
        compare(&y, 0.0, "add_channel");
        /* rows: the motion modules' position encoding, [(N HW), F*C] + [F, C] */
        pair r = rf32(SHAPE(2 * 97, 16 * 40)), pe = rf32(SHAPE(16, 40)), ry = f32(NULL, SHAPE(2 * 97, 16 * 40));
        assert_int_equal(gh_dbackend_cpu.add_rows(&cpu1, &r.h, &pe.h, &ry.h), 0);
        assert_int_equal(gh_dbackend_cuda.add_rows(&fx.gpu, &r.d, &pe.d, &ry.d), 0);
        compare(&ry, 0.0, "add_rows");
}

static void test_lincomb(void **state) {
        static const float coef[4] = {0.7f, -1.3f, 0.25f, 2.0f};
        pair x[4];
        const gh_dt *xh[4], *xd[4];

        for (int i = 0; i < 4; i++) {
                x[i] = rf32(SHAPE(2, 4, 32, 32));
                xh[i] = &x[i].h;
                xd[i] = &x[i].d;
        }
        for (uint32_t n = 0; n <= 4; n++) {
                pair y = rf32(SHAPE(2, 4, 32, 32));
                assert_int_equal(gh_dbackend_cpu.lincomb(&cpu1, n, coef, xh, &y.h), 0);
                assert_int_equal(gh_dbackend_cuda.lincomb(&fx.gpu, n, coef, xd, &y.d), 0);
                compare(&y, EXACT, "lincomb n=%u", n);
        }
}

static void test_scale_dim(void **state) {
        for (uint32_t dim = 0; dim < 4; dim++) {
                static const int64_t sh[4] = {2, 3, 5, 7};
                pair y = rf32(SHAPE(2, 3, 5, 7));
                float *w = rnd(sh[dim], -2.0, 2.0);
                assert_int_equal(gh_dbackend_cpu.scale_dim(&cpu1, w, dim, &y.h), 0);
                assert_int_equal(gh_dbackend_cuda.scale_dim(&fx.gpu, w, dim, &y.d), 0);
                compare(&y, 0.0, "scale_dim %u", dim);
        }
}

/* ---- attention ---- */

static void attention_case_tol(int64_t b, int64_t tq, int64_t tk, int64_t c, int heads, bool causal, double tol,
                               const char *mode) {
        pair q = rf32(SHAPE(b, tq, c)), k = f32(rnd(b * tk * c, -2.0, 2.0), SHAPE(b, tk, c)), v = rf32(SHAPE(b, tk, c));
        pair y = f32(NULL, SHAPE(b, tq, c));

        assert_int_equal(gh_dbackend_cpu.attention(&cpu1, &q.h, &k.h, &v.h, heads, causal, &y.h), 0);
        assert_int_equal(gh_dbackend_cuda.attention(&fx.gpu, &q.d, &k.d, &v.d, heads, causal, &y.d), 0);
        compare(&y, tol, "attention B=%lld Tq=%lld Tk=%lld C=%lld heads=%d%s%s", (long long)b, (long long)tq,
                (long long)tk, (long long)c, heads, causal ? " causal" : "", mode);
}

static void attention_case(int64_t b, int64_t tq, int64_t tk, int64_t c, int heads, bool causal) {
        attention_case_tol(b, tq, tk, c, heads, causal, SUMS, "");
}

static void test_attention(void **state) {
        attention_case(2, 64, 77, 128, 8, false);
        attention_case(1, 256, 256, 64, 1, false);
        attention_case(1, 3, 20000, 64, 1, false); /* keys in three tiles */
        attention_case(1, 2, 9000, 512, 1, false);  /* two tiles, 512 dims (the VAE's) */
        attention_case(1, 77, 77, 128, 2, true);
        attention_case(2, 1024, 1024, 320, 8, false);
}

/* The flash kernel (fp16 mode): every head dimension it is built for,
 * query and key counts off its tiles, cross-attention to 77 tokens, and
 * SD 1.5's largest self-attention. Causal and other dimensions fall back. */
static void test_flash_attention(void **state) {
        fx.gpu.fp16 = true;
        attention_case_tol(2, 100, 77, 8 * 40, 8, false, FP16, " (flash)");
        attention_case_tol(1, 64, 64, 2 * 32, 2, false, FP16, " (flash)");
        attention_case_tol(1, 130, 200, 3 * 64, 3, false, FP16, " (flash)");
        attention_case_tol(2, 257, 77, 8 * 80, 8, false, FP16, " (flash)");
        attention_case_tol(1, 65, 33, 2 * 128, 2, false, FP16, " (flash)");
        attention_case_tol(2, 256, 256, 8 * 160, 8, false, FP16, " (flash)");
        attention_case_tol(1, 3, 20000, 40, 1, false, FP16, " (flash)");
        attention_case_tol(2, 4096, 4096, 320, 8, false, FP16, " (flash)");
        /* the short-sequence kernel (the motion modules' frames): rows of 16 and 32, items past a block's */
        attention_case_tol(2 * 64, 16, 16, 8 * 40, 8, false, FP16, " (flash, short)");
        attention_case_tol(37, 24, 24, 8 * 80, 8, false, FP16, " (flash, short 32)");
        attention_case_tol(5, 9, 13, 8 * 160, 8, false, FP16, " (flash, short)");
        attention_case_tol(3, 16, 32, 8 * 40, 8, false, FP16, " (flash, short 32)");
        attention_case_tol(1, 77, 77, 128, 2, true, FP16, " (fp16 mode, causal)");
        attention_case_tol(1, 50, 60, 3 * 48, 3, false, FP16, " (fp16 mode, d 48)");
        /* K and V in fp16 in the work buffer: 4 batch items at a time of 5, or none (the exact kernel) */
        const size_t full = fx.gpu.work_size;
        fx.gpu.work_size = GH_DCUDA_LT_WORKSPACE + 64 * 1024;
        attention_case_tol(5, 70, 64, 64, 2, false, FP16, " (flash, K/V in pieces)");
        attention_case_tol(2, 70, 77, 320, 8, false, FP16, " (no room for K/V: exact kernel)");
        fx.gpu.work_size = full;
        fx.gpu.fp16 = false;
}

/* ---- data movement ---- */

/* Small shapes, and shapes over several of the transposes' 32x32 tiles
 * with partial ones at the edges. */
static void movement_case(int64_t b, int64_t c, int64_t h, int64_t w) {
        pair x = rf32(SHAPE(b, c, h, w)), z = rf32(SHAPE(b, c / 2, h, w));
        pair up = f32(NULL, SHAPE(b, c, 2 * h, 2 * w)), cat = f32(NULL, SHAPE(b, c + c / 2, h, w));
        pair nlc = f32(NULL, SHAPE(b, h * w, c)), back = f32(NULL, SHAPE(b, c, h, w));

        assert_int_equal(gh_dbackend_cpu.upsample2x(&cpu1, &x.h, &up.h), 0);
        assert_int_equal(gh_dbackend_cuda.upsample2x(&fx.gpu, &x.d, &up.d), 0);
        compare(&up, 0.0, "upsample2x [%lld,%lld,%lld,%lld]", (long long)b, (long long)c, (long long)h, (long long)w);
        assert_int_equal(gh_dbackend_cpu.concat(&cpu1, &x.h, &z.h, &cat.h), 0);
        assert_int_equal(gh_dbackend_cuda.concat(&fx.gpu, &x.d, &z.d, &cat.d), 0);
        compare(&cat, 0.0, "concat");
        assert_int_equal(gh_dbackend_cpu.nchw_to_nlc(&cpu1, &x.h, &nlc.h), 0);
        assert_int_equal(gh_dbackend_cuda.nchw_to_nlc(&fx.gpu, &x.d, &nlc.d), 0);
        compare(&nlc, 0.0, "nchw_to_nlc");
        assert_int_equal(gh_dbackend_cpu.nlc_to_nchw(&cpu1, &nlc.h, &back.h), 0);
        assert_int_equal(gh_dbackend_cuda.nlc_to_nchw(&fx.gpu, &nlc.d, &back.d), 0);
        compare(&back, 0.0, "nlc_to_nchw");
}

static void test_movement(void **state) {
        movement_case(2, 6, 5, 7);
        movement_case(3, 70, 33, 35);
}

static void test_timestep_embedding(void **state) {
        static const float t[2] = {999.0f, 1.0f};
        pair y = f32(NULL, SHAPE(2, 320));

        assert_int_equal(gh_dbackend_cpu.timestep_embedding(&cpu1, t, &y.h), 0);
        assert_int_equal(gh_dbackend_cuda.timestep_embedding(&fx.gpu, t, &y.d), 0);
        compare(&y, 0.0, "timestep_embedding");
}

static void test_embedding(void **state) {
        int32_t ids[2 * 77];

        for (size_t i = 0; i < ELEMENTSOF(ids); i++)
                ids[i] = (int32_t)(gh_test_urand() * 1000);
        for (size_t t = 0; t < ELEMENTSOF(wtypes); t++) {
                pair table = rweight(wtypes[t], 1.0, SHAPE(1000, 768)), pos = rweight(wtypes[t], 1.0, SHAPE(77, 768));
                pair y = f32(NULL, SHAPE(2, 77, 768));
                assert_int_equal(gh_dbackend_cpu.embedding(&cpu1, ids, &table.h, &pos.h, &y.h), 0);
                assert_int_equal(gh_dbackend_cuda.embedding(&fx.gpu, ids, &table.d, &pos.d, &y.d), 0);
                compare(&y, EXACT, "embedding +pos %s", wnames[t]);
                assert_int_equal(gh_dbackend_cpu.embedding(&cpu1, ids, &table.h, NULL, &y.h), 0);
                assert_int_equal(gh_dbackend_cuda.embedding(&fx.gpu, ids, &table.d, NULL, &y.d), 0);
                compare(&y, 0.0, "embedding %s", wnames[t]);
        }
}

static void test_sum_and_copies(void **state) {
        pair x = f32(rnd(1000003, -1.0, 3.0), SHAPE(1000003));
        float *back = halloc(1000003 * sizeof(float));
        double hs, ds;

        assert_int_equal(gh_dbackend_cpu.sum(&cpu1, &x.h, &hs), 0);
        assert_int_equal(gh_dbackend_cuda.sum(&fx.gpu, &x.d, &ds), 0);
        print_message("%-52s rel %.3g\n", "sum", fabs(ds - hs) / fabs(hs));
        assert_true(fabs(ds - hs) <= 1e-12 * fabs(hs));
        assert_int_equal(gh_dbackend_cuda.sum(&fx.gpu, &x.d, &hs), 0);
        assert_true(hs == ds); /* deterministic */

        /* upload then download, and downloads of F16/BF16 tensors */
        pair y = f32(NULL, SHAPE(1000003));
        assert_int_equal(gh_dbackend_cuda.upload(&fx.gpu, x.h.data, &y.d), 0);
        memcpy(y.h.data, x.h.data, 1000003 * sizeof(float));
        compare(&y, 0.0, "upload/download F32");
        for (size_t t = 1; t < ELEMENTSOF(wtypes); t++) {
                pair w = mk(wtypes[t], x.h.data, SHAPE(100003)); /* more than the scratch buffer */
                assert_int_equal(gh_dbackend_cpu.download(&cpu1, &w.h, back), 0);
                float *got = halloc(100003 * sizeof(float));
                assert_int_equal(gh_dbackend_cuda.download(&fx.gpu, &w.d, got), 0);
                assert_memory_equal(got, back, 100003 * sizeof(float));
                print_message("%-52s exact\n", wnames[t]);
        }
}

/* ---- F16 activations ---- */

/* Convolutions and linear layers with F16 input and output, and with
 * one of them F32 (the UNet's first and last layers), on cuBLASLt and on
 * the fallback kernels; F16 weights, and F32 ones (their bias then goes
 * to the epilogue as F32). */
static void half_gemms(const char *mode) {
        static const conv_case convs[] = {
                {2, 32, 16, 16, 64, 3, 1, {1, 1, 1, 1}, "3x3 s1 p1"},
                {2, 64, 12, 10, 32, 1, 1, {0, 0, 0, 0}, "1x1"},
                {1, 64, 16, 16, 64, 3, 2, {1, 1, 1, 1}, "3x3 s2 p1"},
        };
        static const int64_t lins[][3] = {{2 * 256, 320, 320}, {77, 768, 320}, {16 * 40, 320, 2560}};

        for (size_t ci = 0; ci < ELEMENTSOF(convs); ci++)
                for (int io = 0; io < 3; io++) { /* F16 -> F16, F32 -> F16, F16 -> F32 */
                        const conv_case *c = &convs[ci];
                        int64_t ho = (c->h + c->pad[0] + c->pad[1] - c->k) / c->stride + 1;
                        int64_t wo = (c->w + c->pad[2] + c->pad[3] - c->k) / c->stride + 1;
                        pair x = io == 1 ? rf32(SHAPE(c->b, c->ci, c->h, c->w)) : rh16(SHAPE(c->b, c->ci, c->h, c->w));
                        pair w = rweight(GH_TENSOR_F16, 1.0 / sqrt((double)(c->ci * c->k * c->k)),
                                         SHAPE(c->co, c->ci, c->k, c->k));
                        pair b = rweight(GH_TENSOR_F16, 0.5, SHAPE(c->co));
                        pair y = io == 2 ? f32(NULL, SHAPE(c->b, c->co, ho, wo)) : h16(NULL, SHAPE(c->b, c->co, ho, wo));
                        assert_int_equal(gh_dbackend_cpu.conv2d(&cpu1, &x.h, &w.h, &b.h, c->stride, c->pad, &y.h), 0);
                        assert_int_equal(gh_dbackend_cuda.conv2d(&fx.gpu, &x.d, &w.d, &b.d, c->stride, c->pad, &y.d),
                                         0);
                        compare(&y, FP16, "conv2d %s %s%s", c->name, io == 0 ? "F16->F16" : io == 1 ? "F32->F16" : "F16->F32",
                                mode);
                }
        for (size_t li = 0; li < ELEMENTSOF(lins); li++)
                for (int io = 0; io < 4; io++) { /* as above, then F16 -> F16 with F32 weights */
                        int64_t m = lins[li][0], k = lins[li][1], n = lins[li][2];
                        gh_dtype_id wt = io == 3 ? GH_TENSOR_F32 : GH_TENSOR_F16;
                        pair x = io == 1 ? rf32(SHAPE(m, k)) : rh16(SHAPE(m, k));
                        pair w = rweight(wt, 1.0 / sqrt((double)k), SHAPE(n, k)), b = rweight(wt, 0.5, SHAPE(n));
                        pair y = io == 2 ? f32(NULL, SHAPE(m, n)) : h16(NULL, SHAPE(m, n));
                        assert_int_equal(gh_dbackend_cpu.linear(&cpu1, &x.h, &w.h, &b.h, &y.h), 0);
                        gh_dcuda_set_work(&fx.gpu, fx.gpu.work, fx.gpu.work_size); /* fresh biases */
                        assert_int_equal(gh_dbackend_cuda.linear(&fx.gpu, &x.d, &w.d, &b.d, &y.d), 0);
                        compare(&y, FP16, "linear %lldx%lld -> %lld %s%s%s", (long long)m, (long long)k, (long long)n,
                                io == 0 || io == 3 ? "F16->F16" : io == 1 ? "F32->F16" : "F16->F32",
                                io == 3 ? " (F32 weights)" : "", mode);
                        /* y += the same: the residual in the GEMM */
                        pair r = io == 2 ? rf32(SHAPE(m, n)) : rh16(SHAPE(m, n));
                        assert_int_equal(gh_dbackend_cpu.linear_add(&cpu1, &x.h, &w.h, &b.h, &r.h), 0);
                        assert_int_equal(gh_dbackend_cuda.linear_add(&fx.gpu, &x.d, &w.d, &b.d, &r.d), 0);
                        compare(&r, FP16, "linear_add %lldx%lld -> %lld %s%s", (long long)m, (long long)k,
                                (long long)n, io == 2 ? "F32" : "F16", mode);
                }
}

static void half_norms(void) {
        static const int64_t gn[][4] = {{2, 320, 16, 16}, {1, 64, 9, 7}, {1, 320, 63, 63}};
        static const int64_t ln[] = {320, 77, 1280, 2048};

        for (size_t i = 0; i < ELEMENTSOF(gn); i++) {
                const int64_t *sh = gn[i];
                pair x = h16(rnd(sh[0] * sh[1] * sh[2] * sh[3], -2.0, 3.0), SHAPE(sh[0], sh[1], sh[2], sh[3]));
                pair g = rweight(GH_TENSOR_F16, 1.5, SHAPE(sh[1])), b = rweight(GH_TENSOR_F16, 0.5, SHAPE(sh[1]));
                for (int silu = 0; silu < 2; silu++) {
                        pair y = h16(NULL, SHAPE(sh[0], sh[1], sh[2], sh[3]));
                        assert_int_equal(gh_dbackend_cpu.group_norm(&cpu1, &x.h, 32, 1e-6f, &g.h, &b.h, silu, &y.h), 0);
                        assert_int_equal(gh_dbackend_cuda.group_norm(&fx.gpu, &x.d, 32, 1e-6f, &g.d, &b.d, silu, &y.d),
                                         0);
                        compare(&y, HALF, "group_norm F16 [%lld,%lld,%lld,%lld]%s", (long long)sh[0], (long long)sh[1],
                                (long long)sh[2], (long long)sh[3], silu ? " +silu" : "");
                }
        }
        for (size_t i = 0; i < ELEMENTSOF(ln); i++) {
                pair x = h16(rnd(2 * 77 * ln[i], -2.0, 3.0), SHAPE(2, 77, ln[i]));
                pair g = rweight(GH_TENSOR_F16, 1.5, SHAPE(ln[i])), b = rweight(GH_TENSOR_F16, 0.5, SHAPE(ln[i]));
                pair y = h16(NULL, SHAPE(2, 77, ln[i]));
                assert_int_equal(gh_dbackend_cpu.layer_norm(&cpu1, &x.h, &g.h, &b.h, 1e-5f, &y.h), 0);
                assert_int_equal(gh_dbackend_cuda.layer_norm(&fx.gpu, &x.d, &g.d, &b.d, 1e-5f, &y.d), 0);
                compare(&y, HALF, "layer_norm F16 [2,77,%lld]", (long long)ln[i]);
        }
}

static void half_elementwise(void) {
        pair x = h16(rnd(100003, -8.0, 8.0), SHAPE(100003)), y = h16(NULL, SHAPE(100003));
        pair g = h16(rnd(2 * 64 * 2 * 1280, -4.0, 4.0), SHAPE(2, 64, 2 * 1280)), gy = h16(NULL, SHAPE(2, 64, 1280));
        pair a = rh16(SHAPE(2, 320, 16, 16)), b = rh16(SHAPE(2, 320, 16, 16)), s = h16(NULL, SHAPE(2, 320, 16, 16));
        pair odd = rh16(SHAPE(3, 5, 7)), odd2 = rh16(SHAPE(3, 5, 7)), oddy = h16(NULL, SHAPE(3, 5, 7));
        pair v16 = rh16(SHAPE(2, 320)), v32 = rf32(SHAPE(2, 320)), pe = rf32(SHAPE(16, 40));
        pair r = rh16(SHAPE(2 * 97, 16 * 40)), ry = h16(NULL, SHAPE(2 * 97, 16 * 40));

        assert_int_equal(gh_dbackend_cpu.act(&cpu1, GH_DACT_SILU, &x.h, &y.h), 0);
        assert_int_equal(gh_dbackend_cuda.act(&fx.gpu, GH_DACT_SILU, &x.d, &y.d), 0);
        compare(&y, HALF, "act silu F16");
        assert_int_equal(gh_dbackend_cpu.geglu(&cpu1, &g.h, &gy.h), 0);
        assert_int_equal(gh_dbackend_cuda.geglu(&fx.gpu, &g.d, &gy.d), 0);
        compare(&gy, HALF, "geglu F16");
        assert_int_equal(gh_dbackend_cpu.add(&cpu1, &a.h, &b.h, &s.h), 0);
        assert_int_equal(gh_dbackend_cuda.add(&fx.gpu, &a.d, &b.d, &s.d), 0);
        compare(&s, HALF, "add F16 (4 a thread)");
        assert_int_equal(gh_dbackend_cpu.add(&cpu1, &odd.h, &odd2.h, &oddy.h), 0);
        assert_int_equal(gh_dbackend_cuda.add(&fx.gpu, &odd.d, &odd2.d, &oddy.d), 0);
        compare(&oddy, HALF, "add F16 (105 elements)");
        assert_int_equal(gh_dbackend_cpu.add_channel(&cpu1, &a.h, &v16.h, &s.h), 0);
        assert_int_equal(gh_dbackend_cuda.add_channel(&fx.gpu, &a.d, &v16.d, &s.d), 0);
        compare(&s, HALF, "add_channel F16 + F16");
        assert_int_equal(gh_dbackend_cpu.add_channel(&cpu1, &a.h, &v32.h, &s.h), 0);
        assert_int_equal(gh_dbackend_cuda.add_channel(&fx.gpu, &a.d, &v32.d, &s.d), 0);
        compare(&s, HALF, "add_channel F16 + F32");
        assert_int_equal(gh_dbackend_cpu.add_rows(&cpu1, &r.h, &pe.h, &ry.h), 0);
        assert_int_equal(gh_dbackend_cuda.add_rows(&fx.gpu, &r.d, &pe.d, &ry.d), 0);
        compare(&ry, HALF, "add_rows F16 + F32");
}

static void half_movement(int64_t b, int64_t c, int64_t h, int64_t w) {
        pair x = rh16(SHAPE(b, c, h, w)), z = rh16(SHAPE(b, c / 2, h, w));
        pair up = h16(NULL, SHAPE(b, c, 2 * h, 2 * w)), cat = h16(NULL, SHAPE(b, c + c / 2, h, w));
        pair nlc = h16(NULL, SHAPE(b, h * w, c)), back = h16(NULL, SHAPE(b, c, h, w));

        assert_int_equal(gh_dbackend_cpu.upsample2x(&cpu1, &x.h, &up.h), 0);
        assert_int_equal(gh_dbackend_cuda.upsample2x(&fx.gpu, &x.d, &up.d), 0);
        compare(&up, 0.0, "upsample2x F16 [%lld,%lld,%lld,%lld]", (long long)b, (long long)c, (long long)h,
                (long long)w);
        assert_int_equal(gh_dbackend_cpu.concat(&cpu1, &x.h, &z.h, &cat.h), 0);
        assert_int_equal(gh_dbackend_cuda.concat(&fx.gpu, &x.d, &z.d, &cat.d), 0);
        compare(&cat, 0.0, "concat F16");
        assert_int_equal(gh_dbackend_cpu.nchw_to_nlc(&cpu1, &x.h, &nlc.h), 0);
        assert_int_equal(gh_dbackend_cuda.nchw_to_nlc(&fx.gpu, &x.d, &nlc.d), 0);
        compare(&nlc, 0.0, "nchw_to_nlc F16");
        assert_int_equal(gh_dbackend_cpu.nlc_to_nchw(&cpu1, &nlc.h, &back.h), 0);
        assert_int_equal(gh_dbackend_cuda.nlc_to_nchw(&fx.gpu, &nlc.d, &back.d), 0);
        compare(&back, 0.0, "nlc_to_nchw F16");
}

static void half_attention(int64_t b, int64_t tq, int64_t tk, int64_t c, int heads, bool causal, const char *what) {
        pair q = rh16(SHAPE(b, tq, c)), k = h16(rnd(b * tk * c, -2.0, 2.0), SHAPE(b, tk, c)), v = rh16(SHAPE(b, tk, c));
        pair y = h16(NULL, SHAPE(b, tq, c));

        assert_int_equal(gh_dbackend_cpu.attention(&cpu1, &q.h, &k.h, &v.h, heads, causal, &y.h), 0);
        assert_int_equal(gh_dbackend_cuda.attention(&fx.gpu, &q.d, &k.d, &v.d, heads, causal, &y.d), 0);
        compare(&y, FP16, "attention F16 B=%lld Tq=%lld Tk=%lld C=%lld heads=%d (%s)", (long long)b, (long long)tq,
                (long long)tk, (long long)c, heads, what);
}

/* Every op the UNet runs on F16 activations (the fp16 mode), with the
 * CPU backend's F32 result on the same values as the reference. */
static void test_half(void **state) {
        fx.gpu.fp16 = true;
        half_gemms(" (cuBLASLt)");
        fx.gpu.no_lt = true;
        half_gemms(" (kernel)");
        fx.gpu.no_lt = false;
        half_norms();
        half_elementwise();
        half_movement(2, 6, 5, 7);
        half_movement(3, 70, 33, 35);
        half_attention(2, 100, 77, 8 * 40, 8, false, "flash, cross");
        half_attention(2 * 64, 16, 16, 8 * 40, 8, false, "flash, short: 16 frames");
        half_attention(37, 24, 24, 8 * 80, 8, false, "flash, short 32");
        half_attention(5, 9, 13, 8 * 160, 8, false, "flash, short");
        half_attention(1, 4096, 4096, 320, 8, false, "flash, SD 1.5's largest");
        half_attention(1, 70, 90, 2 * 160, 2, false, "flash, d 160");
        half_attention(1, 77, 77, 128, 2, true, "causal: the kernel");
        half_attention(1, 50, 60, 3 * 48, 3, false, "d 48: the kernel");
        fx.gpu.fp16 = false;
}

/* ---- fixtures ---- */

static int setup(void **state) {
        const gh_cuda *cu = fx.cu;
        char err[256] = "";
        int r;

        if (cu->DeviceGet(&fx.device, 0) != CUDA_SUCCESS ||
            cu->DevicePrimaryCtxRetain(&fx.primary, fx.device) != CUDA_SUCCESS ||
            cu->CtxSetCurrent(fx.primary) != CUDA_SUCCESS ||
            cu->StreamCreate(&fx.stream, CU_STREAM_NON_BLOCKING) != CUDA_SUCCESS)
                return -1;
        r = gh_dcuda_init(&fx.gpu, cu, fx.stream, err, sizeof(err));
        if (r >= 0)
                r = gh_dcuda_alloc_work(&fx.gpu, err, sizeof(err));
        if (r < 0) {
                fprintf(stderr, "gh_dcuda_init: %s\n", err);
                return -1;
        }
        if (!fx.gpu.lt) { /* built with the toolkit: its cuBLASLt must load */
                fprintf(stderr, "cuBLASLt: %s\n", fx.gpu.lt_error);
                return -1;
        }
        return 0;
}

static int teardown(void **state) {
        const gh_cuda *cu = fx.cu;

        gh_dcuda_fini(&fx.gpu);
        if (fx.stream)
                cu->StreamDestroy(fx.stream);
        if (fx.primary)
                cu->DevicePrimaryCtxRelease(fx.device);
        return 0;
}

/* 0 with the driver and a device, EXIT_SKIP without. */
static int open_driver(void) {
        char err[256] = "";
        int count = 0, r = gh_cuda_load(NULL, &fx.cu, err, sizeof(err));

        if (r == -ENOENT || r == -ENODEV || r == -EOPNOTSUPP || r == -ELIBBAD) {
                printf("SKIP: %s\n", err);
                return EXIT_SKIP;
        }
        if (r < 0) {
                fprintf(stderr, "FAIL: %s\n", err);
                return 1;
        }
        if (fx.cu->DeviceGetCount(&count) != CUDA_SUCCESS || count == 0) {
                printf("SKIP: no CUDA device\n");
                return EXIT_SKIP;
        }
        return 0;
}

#define T(f) cmocka_unit_test_teardown(f, teardown_each)

int main(void) {
        const struct CMUnitTest tests[] = {
                T(test_conv2d), T(test_linear), T(test_fp16), T(test_pieces), T(test_group_norm), T(test_layer_norm), T(test_act),
                T(test_geglu), T(test_add), T(test_lincomb), T(test_scale_dim), T(test_attention), T(test_flash_attention),
                T(test_movement), T(test_timestep_embedding), T(test_embedding), T(test_sum_and_copies), T(test_half),
                T(test_cudnn),
        };
        int r = open_driver();

        if (r == 0)
                r = cmocka_run_group_tests(tests, setup, teardown);
        gh_cuda_free(fx.cu);
        return r;
}

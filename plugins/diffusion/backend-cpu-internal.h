/* What the CPU backend's files share: weight element conversion, the
 * description of one GEMM (a matrix product whose operands are packed from
 * tensors by the kernels) and of one attention, and the table of kernels
 * compiled once per instruction set (backend-cpu-kern.c), chosen at run
 * time.
 *
 * Determinism: every kernel computes an output element by the same
 * sequence of operations wherever the element falls in a tile, and the
 * blocking that decides the order of a sum (the K blocks of a GEMM, the
 * key blocks of an attention) depends on the shapes only. So the callers
 * may cut the work into tasks by the thread count without changing a bit
 * of the result. */
#pragma once

#include <stdbool.h>
#include <stdint.h>
#include <string.h>

#include "backend.h"

/* Every element of F16 (exact, without relying on denormal support),
 * BF16 and F32 tensors, as float. */
static inline float gh_dcpu_h2f(uint16_t h) {
        uint32_t em = h & 0x7fffu, u = em << 13;
        float f;

        memcpy(&f, &u, sizeof(f));
        f *= 0x1p112f;
        if (em < 0x400u)
                f = (float)(int32_t)em * 0x1p-24f; /* subnormal */
        memcpy(&u, &f, sizeof(u));
        if (em >= 0x7c00u)
                u = (em << 13) | 0x7f800000u; /* inf, NaN */
        u |= (uint32_t)(h & 0x8000u) << 16;
        memcpy(&f, &u, sizeof(f));
        return f;
}

static inline float gh_dcpu_bf2f(uint16_t h) {
        uint32_t u = (uint32_t)h << 16;
        float f;

        memcpy(&f, &u, sizeof(f));
        return f;
}

static inline float gh_dcpu_ld(const void *p, gh_dtype_id t, int64_t i) {
        if (t == GH_TENSOR_F16)
                return gh_dcpu_h2f(((const uint16_t *)p)[i]);
        if (t == GH_TENSOR_BF16)
                return gh_dcpu_bf2f(((const uint16_t *)p)[i]);
        return ((const float *)p)[i];
}

/* dst[0, n) = src[off, off + n) as float. */
void gh_dcpu_ld_row(float *dst, const void *src, gh_dtype_id t, int64_t off, int64_t n);

/* Where a GEMM's B operand comes from. */
typedef enum gh_dcpu_bsrc {
        GH_DCPU_B_NK,     /* B[k][n] = b[n * ldb + k] (linear weights) */
        GH_DCPU_B_KN,     /* B[k][n] = b[k * ldb + n] (1x1 convolution) */
        GH_DCPU_B_IM2COL, /* B[ci kh kw + ky kw + kx][oy wo + ox] from an image */
} gh_dcpu_bsrc;

/* C[m][n] = sum_k A[m][k] B[k][n] (+ bias), or C[m][n] += that where
 * |accumulate|, for each of |batches| B and C (A is shared). A[m][k] = a[m * lda + k]. |kc|: the K block (from
 * k alone, see gh_dcpu_kc()); the partial sums of the blocks are added in
 * order. */
typedef struct gh_dcpu_gemm {
        int64_t m, n, k, kc, batches;
        const void *a;
        gh_dtype_id at;
        int64_t lda;
        gh_dcpu_bsrc bsrc;
        const void *b;
        gh_dtype_id bt;
        int64_t ldb, b_batch; /* b_batch: elements between batches */
        /* B_IM2COL: the image [k / (kh kw)][h][w] and the geometry. */
        int64_t h, w, wo;
        int kh, kw, stride, pad_top, pad_left;
        float *c;
        int64_t ldc, c_batch;
        const void *bias; /* NULL: none */
        gh_dtype_id bias_t;
        bool bias_per_row; /* bias[m] (convolution), else bias[n] */
        bool accumulate;   /* C += the product (and the bias) */
} gh_dcpu_gemm;

/* One attention: q [B, Tq, heads * d], k and v [B, Tk, heads * d], y
 * like q. bq and bk: the query and key blocks (from d and the lengths,
 * see gh_dcpu_attn_blocks()). */
typedef struct gh_dcpu_attn {
        const float *q, *k, *v;
        float *y;
        int64_t tq, tk, d, heads;
        int64_t bq, bk;
        bool causal;
} gh_dcpu_attn;

/* The kernels of one instruction set. */
typedef struct gh_dcpu_isa {
        const char *name;
        int mr, nr;      /* GEMM micro tile */
        int64_t mc_max;  /* rows of A packed at once */
        /* C[m0, m1)[n0, n1) of every batch; m1 - m0 <= mc_max. */
        void (*gemm_tile)(const gh_dcpu_gemm *g, int64_t m0, int64_t m1, int64_t n0, int64_t n1);
        /* Queries [q0, q0 + bq) of batch b, head h. */
        void (*attn_block)(const gh_dcpu_attn *at, int64_t b, int64_t h, int64_t q0);
        void (*act)(gh_dact act, const float *x, float *y, int64_t n);
        /* y[i] = x[i] * gelu(g[i]) */
        void (*gelu_mul)(const float *x, const float *g, float *y, int64_t n);
        /* Sum and sum of squared deviations from that mean, in double. */
        void (*stats)(const float *x, int64_t n, double *sum, double *m2);
        /* y = (x - mean) * k + add, then SiLU if |silu|; y may be x. */
        void (*norm_apply)(const float *x, float *y, int64_t n, float mean, float k, float add, bool silu);
        /* y = (x - mean) * k * gamma[i] + beta[i] (layer norm's row). */
        void (*norm_apply_vec)(const float *x, float *y, int64_t n, float mean, float k, const float *gamma,
                               const float *beta);
} gh_dcpu_isa;

#define GH_DCPU_MR 6         /* rows of the GEMM micro tile (its columns: 2 vectors) */
#define GH_DCPU_MC_MAX 144   /* rows of A packed at once, a multiple of GH_DCPU_MR */
#define GH_DCPU_KC_MAX 256   /* the GEMMs' K block */
/* Attention's block buffer, in floats: Q^T (bq rounded up to nr, x d),
 * O (bq x d rounded up to nr) and S^T (bk x bq rounded up to nr). */
#define GH_DCPU_ATTN_BUF 57344
#define GH_DCPU_ATTN_BQ_MAX 192 /* a multiple of every mr and nr */
#define GH_DCPU_ATTN_BK_MAX 256

extern const gh_dcpu_isa gh_dcpu_isa_base; /* x86-64 baseline (SSE2), or generic */
#ifdef __x86_64__
extern const gh_dcpu_isa gh_dcpu_isa_avx2; /* AVX2 + FMA */
#endif

/* The best kernels this CPU runs, or the one gh_dcpu_isa_force() named. */
const gh_dcpu_isa *gh_dcpu_isa_get(void);
/* For tests: "base", "avx2" or NULL (automatic again); -ENOTSUP if this
 * CPU cannot run it. Not thread safe. */
int gh_dcpu_isa_force(const char *name);

/* The K block for a GEMM of depth k: the same for every thread count. */
static inline int64_t gh_dcpu_kc(int64_t k) {
        int64_t nb = (k + GH_DCPU_KC_MAX - 1) / GH_DCPU_KC_MAX;

        return nb ? (k + nb - 1) / nb : 1;
}

/* Sets at->bq and at->bk for the isa; -EOPNOTSUPP if d is too large. */
int gh_dcpu_attn_blocks(const gh_dcpu_isa *isa, gh_dcpu_attn *at);

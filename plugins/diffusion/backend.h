/* The diffusion runtime's backend interface: a table of tensor operations
 * that one device implements (backend-cpu.c now, a CUDA one later).
 *
 * Tensors (gh_dt) are views: |data| is host memory on the CPU backend and
 * device memory on the CUDA one. Activations are F32, NCHW for images and
 * [B, T, C] (row-major, C fastest) for sequences. Weights may be F32, F16
 * or BF16 views straight onto the mapped weight pool; a backend converts
 * them on the fly and never copies them whole.
 *
 * The ops are called by the runtime (ops.c) after it has checked every
 * shape, so a backend checks nothing but what only it can know. Outputs
 * are preallocated by the runtime (from the job's arena); an output never
 * aliases an input unless the op says so. A backend allocates no memory of
 * its own that grows with the tensors: bounded per-thread buffers (on the
 * stack) at most. Every op returns 0 or a negative errno. */
#pragma once

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include <gpuhost/plugin.h>

#define GH_DT_MAX_DIMS 4

typedef struct gh_dt {
        gh_dtype_id dtype;          /* GH_TENSOR_F32, _F16 or _BF16 */
        uint32_t n_dims;
        int64_t shape[GH_DT_MAX_DIMS];
        void *data;                 /* NULL while planning */
} gh_dt;

static inline int64_t gh_dt_numel(const gh_dt *t) {
        int64_t n = 1;
        for (uint32_t i = 0; i < t->n_dims; i++)
                n *= t->shape[i];
        return n;
}

typedef enum gh_dact {
        GH_DACT_SILU,
        GH_DACT_GELU,       /* exact (erf) */
        GH_DACT_QUICK_GELU, /* x * sigmoid(1.702 x) */
} gh_dact;

typedef struct gh_dbackend {
        const char *name;

        /* y[B,O,Ho,Wo] = conv(x[B,I,H,W], w[O,I,kh,kw]) + b[O] (b may be
         * NULL); pad = {top, bottom, left, right}; Ho = (H + top + bottom -
         * kh) / stride + 1, and likewise Wo. */
        int (*conv2d)(void *be, const gh_dt *x, const gh_dt *w, const gh_dt *b, int stride, const int pad[4],
                      gh_dt *y);
        /* y[M,N] = x[M,K] w[N,K]^T + b[N] (b may be NULL); M is every leading
         * dimension of x flattened. */
        int (*linear)(void *be, const gh_dt *x, const gh_dt *w, const gh_dt *b, gh_dt *y);
        /* The same added to y: y += x w^T + b (a residual connection);
         * y does not alias x. */
        int (*linear_add)(void *be, const gh_dt *x, const gh_dt *w, const gh_dt *b, gh_dt *y);
        /* Group norm over x[B,C,...] (groups divide C), gamma/beta [C], then
         * SiLU if |silu|. y may alias x. */
        int (*group_norm)(void *be, const gh_dt *x, int groups, float eps, const gh_dt *gamma,
                          const gh_dt *beta, bool silu, gh_dt *y);
        /* Layer norm over the last dimension. y may alias x. */
        int (*layer_norm)(void *be, const gh_dt *x, const gh_dt *gamma, const gh_dt *beta, float eps, gh_dt *y);
        /* Elementwise activation. y may alias x. */
        int (*act)(void *be, gh_dact act, const gh_dt *x, gh_dt *y);
        /* y[..., N] = x[..., :N] * gelu(x[..., N:]) for x[..., 2N]. */
        int (*geglu)(void *be, const gh_dt *x, gh_dt *y);
        /* Multi-head softmax attention: q[B,Tq,C], k and v [B,Tk,C], heads
         * dividing C, scale 1/sqrt(C/heads); causal masks key j > query i.
         * y[B,Tq,C]. */
        int (*attention)(void *be, const gh_dt *q, const gh_dt *k, const gh_dt *v, int heads, bool causal,
                         gh_dt *y);
        /* Nearest-neighbour 2x: x[B,C,H,W] -> y[B,C,2H,2W]. */
        int (*upsample2x)(void *be, const gh_dt *x, gh_dt *y);
        /* y = a + b, same shapes; y may alias a or b. */
        int (*add)(void *be, const gh_dt *a, const gh_dt *b, gh_dt *y);
        /* y[B,C,H,W] = x + v[B,C] broadcast over H, W; y may alias x. */
        int (*add_channel)(void *be, const gh_dt *x, const gh_dt *v, gh_dt *y);
        /* y[N,M] = x + v[M] broadcast over N (x, y viewed as N rows of the
         * M elements of v); y may alias x. */
        int (*add_rows)(void *be, const gh_dt *x, const gh_dt *v, gh_dt *y);
        /* Along dimension 1: a[B,Ca,...], b[B,Cb,...] -> y[B,Ca+Cb,...]. */
        int (*concat)(void *be, const gh_dt *a, const gh_dt *b, gh_dt *y);
        /* [B,C,H,W] <-> [B,H*W,C]. */
        int (*nchw_to_nlc)(void *be, const gh_dt *x, gh_dt *y);
        int (*nlc_to_nchw)(void *be, const gh_dt *x, gh_dt *y);
        /* y[B,dim] = [cos(t_b f_i), sin(t_b f_i)], f_i = exp(-ln(10000) i /
         * (dim/2)), i < dim/2; t is host memory (B floats). */
        int (*timestep_embedding)(void *be, const float *t, gh_dt *y);
        /* y[n,C] = table[ids[i]] + (pos ? pos[i % pos_rows] : 0); ids host
         * memory, each < rows of table (checked by the runtime). */
        int (*embedding)(void *be, const int32_t *ids, const gh_dt *table, const gh_dt *pos, gh_dt *y);
        /* y = sum_i coef[i] * x[i] over same-shaped F32 tensors (n <= 4);
         * y may alias any x[i]. The samplers' arithmetic. */
        int (*lincomb)(void *be, uint32_t n, const float *coef, const gh_dt *const *x, gh_dt *y);
        /* Multiplies y by w[i] along dimension |dim| (w host memory, one
         * factor per index of that dimension). */
        int (*scale_dim)(void *be, const float *w, uint32_t dim, gh_dt *y);
        /* Sum of all elements (in double), to host memory. */
        int (*sum)(void *be, const gh_dt *x, double *ret);
        /* Between host memory (F32) and a tensor. */
        int (*upload)(void *be, const float *src, gh_dt *y);
        int (*download)(void *be, const gh_dt *x, float *dst);
        /* Waits until the work queued so far is done (for measuring); NULL
         * where every op is done when it returns. */
        int (*sync)(void *be);
        /* Device timestamps, for measuring without waiting op by op (NULL
         * where sync is the only way): mark() records timestamp i (i <
         * GH_DBACKEND_MARKS) in the order of the queued work; marks_ms()
         * waits for it and gives the milliseconds from timestamp 0 to each
         * of the first n. */
        int (*mark)(void *be, uint32_t i);
        int (*marks_ms)(void *be, uint32_t n, float *ret);
        /* Recorded sequences of ops (CUDA graphs), NULL where the backend
         * has none. graph_run() replays the recording kept under |key|
         * (-ENOENT: none). graph_begin() starts recording: ops then queue
         * nothing until graph_end(), which keeps the recording under |key|
         * unless |r| (the recorded ops' result) or the recording failed
         * (-EOPNOTSUPP from graph_begin: run the ops plainly). The
         * recording holds the tensors' addresses, not their contents. */
        int (*graph_run)(void *be, uint64_t key);
        int (*graph_begin)(void *be);
        int (*graph_end)(void *be, uint64_t key, int r);
} gh_dbackend;

#define GH_DBACKEND_MARKS 1024

/* The CPU backend. Its state: how to run work on the job's threads. */
typedef struct gh_dcpu {
        /* Runs fn(ctx, i, thread) for i in [0, n) over up to |threads|
         * threads (thread < threads), returning when all have run. */
        int (*parallel_for)(void *pctx, uint32_t n, void (*fn)(void *ctx, uint32_t i, uint32_t thread), void *ctx);
        void *pctx;
        uint32_t threads;
} gh_dcpu;

extern const gh_dbackend gh_dbackend_cpu; /* its |be| is a gh_dcpu * */

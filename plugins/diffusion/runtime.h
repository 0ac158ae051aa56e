/* The diffusion runtime: execution contexts, the workspace arena, checked
 * tensor operations, and model weights as views.
 *
 * A job's activations live in one arena: a range of workspace memory handed
 * out first-fit. The same code runs twice: once "dry" (planning: shapes and
 * allocations only, no memory, no arithmetic) and once for real. Since the
 * sequence of allocations is the same, the dry run's peak is exactly the
 * arena size the real run needs; the arena refuses anything past its size
 * (-ENOSPC), so going past the plan is impossible.
 *
 * The gh_op_* wrappers check every shape and dtype, then call the backend
 * (unless dry). They fail with -EINVAL and a message in the context.
 *
 * Activations are F32, or F16 where the context allows it (|half|: a
 * backend whose ops take F16 activations, in its fp16 mode): the UNet then
 * allocates its own activations in F16 (|act|), while its input, its
 * output and everything around it (the samplers' arithmetic, the text
 * encoder, the VAE) stay F32. */
#pragma once

#include <stdarg.h>
#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "backend.h"

#define GH_ARENA_ALIGN 64

typedef struct gh_arena gh_arena;

/* An arena over [base, base + size); base NULL plans (no memory, no
 * limit, fake addresses). */
int gh_arena_new(void *base, size_t size, gh_arena **ret);
gh_arena *gh_arena_free(gh_arena *a);
int gh_arena_alloc(gh_arena *a, size_t bytes, void **ret);
void gh_arena_release(gh_arena *a, void *p);
size_t gh_arena_peak(const gh_arena *a);
size_t gh_arena_used(const gh_arena *a);
/* A hash of where the live blocks are: two states with the same layout
 * place the same sequence of allocations at the same addresses. */
uint64_t gh_arena_layout(const gh_arena *a);

/* One step of FNV-1a over the 8 bytes of v. */
static inline uint64_t gh_hash_mix(uint64_t h, uint64_t v) {
        for (int i = 0; i < 8; i++, v >>= 8)
                h = (h ^ (v & 0xff)) * 0x100000001b3ull;
        return h;
}

typedef struct gh_dctx {
        const gh_dbackend *be;
        void *be_state;
        gh_arena *arena;
        bool dry;
        /* F16 activations allowed (see above); the dtype that gh_dt_alloc
         * gives (0: F32), which the UNet sets while it runs. */
        bool half;
        gh_dtype_id act;
        /* Checked between blocks of long evaluations; true: stop with
         * -ECANCELED. May be NULL. */
        bool (*cancelled)(void *userdata);
        void *userdata;
        char err[512];
} gh_dctx;

/* Records the first error's message; returns r. */
__attribute__((format(printf, 3, 4))) int gh_dctx_fail(gh_dctx *c, int r, const char *fmt, ...);
bool gh_dctx_cancelled(gh_dctx *c);

/* An activation of the given shape from the arena: of the context's
 * activation type (c->act), or F32 (gh_dt_alloc_f32). */
int gh_dt_alloc(gh_dctx *c, gh_dt *t, uint32_t n_dims, const int64_t *shape);
int gh_dt_alloc_f32(gh_dctx *c, gh_dt *t, uint32_t n_dims, const int64_t *shape);
#define gh_dt_new(c, t, ...)                                                                            \
        gh_dt_alloc((c), (t), sizeof((int64_t[]){__VA_ARGS__}) / sizeof(int64_t), (int64_t[]){__VA_ARGS__})
#define gh_dt_new_f32(c, t, ...)                                                                        \
        gh_dt_alloc_f32((c), (t), sizeof((int64_t[]){__VA_ARGS__}) / sizeof(int64_t), (int64_t[]){__VA_ARGS__})
/* Bytes of an element of an activation or weight dtype. */
static inline size_t gh_dt_elt(gh_dtype_id t) {
        return t == GH_TENSOR_F32 ? 4 : 2;
}
/* Gives an activation back (no-op for a zeroed one). */
void gh_dt_drop(gh_dctx *c, gh_dt *t);
/* A view of |t| with another shape of the same element count. */
int gh_dt_reshape(gh_dctx *c, const gh_dt *t, gh_dt *ret, uint32_t n_dims, const int64_t *shape);
/* Element |i0| of the first dimension, as a view. */
gh_dt gh_dt_slice0(const gh_dt *t, int64_t i0, int64_t n);
const char *gh_dt_shape_str(const gh_dt *t, char *buf, size_t size);

int gh_op_conv2d(gh_dctx *c, const gh_dt *x, const gh_dt *w, const gh_dt *b, int stride, const int pad[4], gh_dt *y);
int gh_op_linear(gh_dctx *c, const gh_dt *x, const gh_dt *w, const gh_dt *b, gh_dt *y);
/* y += linear(x): a residual connection in one GEMM; y is not x. */
int gh_op_linear_add(gh_dctx *c, const gh_dt *x, const gh_dt *w, const gh_dt *b, gh_dt *y);
int gh_op_group_norm(gh_dctx *c, const gh_dt *x, int groups, float eps, const gh_dt *gamma, const gh_dt *beta,
                     bool silu, gh_dt *y);
int gh_op_layer_norm(gh_dctx *c, const gh_dt *x, const gh_dt *gamma, const gh_dt *beta, float eps, gh_dt *y);
int gh_op_act(gh_dctx *c, gh_dact act, const gh_dt *x, gh_dt *y);
int gh_op_geglu(gh_dctx *c, const gh_dt *x, gh_dt *y);
int gh_op_attention(gh_dctx *c, const gh_dt *q, const gh_dt *k, const gh_dt *v, int heads, bool causal, gh_dt *y);
/* y = x + v, v repeated over x's rows of numel(v) elements. */
int gh_op_add_rows(gh_dctx *c, const gh_dt *x, const gh_dt *v, gh_dt *y);
int gh_op_upsample2x(gh_dctx *c, const gh_dt *x, gh_dt *y);
int gh_op_add(gh_dctx *c, const gh_dt *a, const gh_dt *b, gh_dt *y);
int gh_op_add_channel(gh_dctx *c, const gh_dt *x, const gh_dt *v, gh_dt *y);
int gh_op_concat(gh_dctx *c, const gh_dt *a, const gh_dt *b, gh_dt *y);
int gh_op_nchw_to_nlc(gh_dctx *c, const gh_dt *x, gh_dt *y);
int gh_op_nlc_to_nchw(gh_dctx *c, const gh_dt *x, gh_dt *y);
int gh_op_timestep_embedding(gh_dctx *c, const float *t, gh_dt *y);
int gh_op_embedding(gh_dctx *c, const int32_t *ids, const gh_dt *table, const gh_dt *pos, gh_dt *y);
int gh_op_lincomb(gh_dctx *c, uint32_t n, const float *coef, const gh_dt *const *x, gh_dt *y);
int gh_op_scale_dim(gh_dctx *c, const float *w, uint32_t dim, gh_dt *y);
int gh_op_sum(gh_dctx *c, const gh_dt *x, double *ret);
int gh_op_upload(gh_dctx *c, const float *src, gh_dt *y);
int gh_op_download(gh_dctx *c, const gh_dt *x, float *dst);
/* y = x (same shape), through lincomb. */
int gh_op_copy(gh_dctx *c, const gh_dt *x, gh_dt *y);

/* ---- weights ---- */

/* Where a model's tensors come from: the plugin host (pool views) or files
 * (gpuhost-sd, tests). lookup fills |ret| (data may be NULL while only
 * planning) or returns -ENOENT. */
typedef struct gh_dsource {
        int (*lookup)(void *ctx, const char *name, gh_tensor *ret);
        void *ctx;
} gh_dsource;

/* One part of a checkpoint (text encoder, UNet, VAE), in either naming
 * layout: maps the runtime's names (the diffusers names of the part,
 * without its folder) to the file's, by table (see names.c). */
typedef enum gh_dpart_kind { GH_DPART_CLIP, GH_DPART_UNET, GH_DPART_VAE, GH_DPART_MOTION } gh_dpart_kind;
typedef enum gh_dlayout { GH_DLAYOUT_ORIGINAL, GH_DLAYOUT_DIFFUSERS } gh_dlayout;

typedef struct gh_dmap_entry {
        char *canon;  /* "down_blocks.0.resnets.1" */
        char *file;   /* "input_blocks.2.0" */
        int suffixes; /* which suffix table applies (names.c) */
} gh_dmap_entry;

typedef struct gh_dpart {
        gh_dpart_kind kind;
        gh_dlayout layout;
        const gh_dsource *src;
        const char *prefix; /* "model.diffusion_model." or "unet/" */
        gh_dmap_entry *map;
        size_t n_map;
        char err[1024];
} gh_dpart;

/* Finds the part's layout by its anchor tensor; -ENOENT (with a message)
 * if the checkpoint has neither layout's. */
int gh_dpart_open(gh_dpart *p, gh_dpart_kind kind, const gh_dsource *src);
void gh_dpart_close(gh_dpart *p);
int gh_dpart_map_add(gh_dpart *p, const char *canon, const char *file, int suffixes);
/* Whether the tensor exists: by the file's name (after the part's
 * prefix), for probing a layout before its map exists. */
bool gh_dpart_has_file(gh_dpart *p, const char *fmt, ...) __attribute__((format(printf, 2, 3)));
/* Whether the tensor exists (runtime name). */
bool gh_dpart_has(gh_dpart *p, const char *fmt, ...) __attribute__((format(printf, 2, 3)));
/* The tensor, of exactly this shape (a linear weight may also be stored as
 * a 1x1 conv); F32, F16 or BF16. Refuses with the file's name of the
 * tensor. */
int gh_dpart_get(gh_dpart *p, gh_dt *ret, uint32_t n_dims, const int64_t *shape, const char *fmt, ...)
        __attribute__((format(printf, 5, 6)));
#define gh_dpart_w(p, ret, name, ...)                                                                     \
        gh_dpart_get((p), (ret), sizeof((int64_t[]){__VA_ARGS__}) / sizeof(int64_t), (int64_t[]){__VA_ARGS__}, \
                     "%s", (name))
/* The shape of a tensor (to infer sizes): -ENOENT if absent. */
int gh_dpart_shape(gh_dpart *p, gh_tensor *ret, const char *fmt, ...) __attribute__((format(printf, 3, 4)));
/* Translates a runtime name to the file's. */
int gh_dpart_file_name(gh_dpart *p, const char *canon, char *buf, size_t size);

/* A linear or conv layer's weight and bias. */
typedef struct gh_dlin {
        gh_dt w, b;
} gh_dlin;
typedef struct gh_dnorm {
        gh_dt g, b;
} gh_dnorm;

int gh_dlin_get(gh_dpart *p, gh_dlin *ret, bool bias, int64_t out, int64_t in, const char *fmt, ...)
        __attribute__((format(printf, 6, 7)));
int gh_dconv_get(gh_dpart *p, gh_dlin *ret, int64_t out, int64_t in, int64_t k, const char *fmt, ...)
        __attribute__((format(printf, 6, 7)));
int gh_dnorm_get(gh_dpart *p, gh_dnorm *ret, int64_t c, const char *fmt, ...) __attribute__((format(printf, 4, 5)));

#define GH_TRY(expr)                          \
        do {                                  \
                int _r = (expr);              \
                if (_r < 0)                   \
                        return _r;            \
        } while (0)

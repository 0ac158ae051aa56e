/* The CUDA backend (backend-cuda.h): each op launches kernels of
 * cuda/kernels.cu on the job's stream, with the shapes as arguments.
 *
 * GEMMs (linear, and conv2d as im2col then a GEMM) go through cuBLASLt
 * where it loaded and a work buffer is set: the operands are converted
 * into the work buffer (to fp16 or bf16 in the tensor-core mode, to F32
 * otherwise), in pieces where they do not fit, and each GEMM shape is
 * planned once (descriptors and the heuristic's algorithm, kept in a small
 * cache). Otherwise the GEMMs run on simple fp32 kernels. Attention in the
 * tensor-core mode runs on the flash kernel for the head dimensions it is
 * built for.
 *
 * Host arrays that ops take (ids, scale factors, timesteps) go through the
 * pinned staging buffer into the device scratch buffer, in stream order
 * before the kernel that reads them; results that come back (sum, and
 * downloads of F16/BF16 tensors) take the opposite way. Correctness first:
 * staging waits for the stream before it overwrites the host buffer (a
 * host sync, to be removed later with a ring of buffers and events), and
 * download and sum wait for their copies. Everything else is asynchronous. */
#include <errno.h>
#include <math.h>
#include <pthread.h>
#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "backend-cuda.h"
#include "common/util.h"
#include "cublaslt.h"
#ifdef GH_HAVE_CUDNN
#include "dnn.h"
#endif
#include "runtime.h"

#define THREADS 256       /* a block, for 1-D kernels */
#define GN_CHUNK 8192     /* group norm: elements per partial sum, at least */
#define GN_SPLITS 64      /* group norm: partial sums per group, at most */
#define GN_ROW_MIN 1024   /* group norm: rows shorter than this normalize flatly (gh_gn_flat) */
#define LN_WARP_MAX 1536  /* layer norm: rows up to this long on a warp each (48 per lane) */
#define TILE 32           /* TT in kernels.cu: the transpose's tiles */
#define MAX_BLOCKS 65536  /* 1-D grids; the kernels loop over the rest */
#define LINEAR_TILE 16    /* LT in kernels.cu */
#define FA_QUERIES 64      /* FA_BQ in kernels.cu: a block's queries */
#define FA_THREADS 128    /* FA_THREADS in kernels.cu */
#define IM2COL_RUN 8      /* IM2COL_RUN in kernels.cu */
#define MAX_GRID_Y 65535
/* A kernel argument: the address of a value, const or not. */
#define ARG(v) ((void *)&(v))
#define ATTN_TILE 8192 /* scores per tile (32 KiB of shared memory); longer key sets take several */
#define ATTN_DIMS 4    /* ATT_DIMS in kernels.cu: head dimensions per thread */
#define GEMM_ATTN_MIN 65536  /* exact attention through GEMMs: scores of a head, at least */
#define GEMM_ATTN_PIECES 64  /* and pieces of (batch item, heads), at most */

extern const char gh_dcuda_fatbin[];
extern const size_t gh_dcuda_fatbin_size;

enum {
        K_CONV2D,
        K_LINEAR,
        K_GN_STATS,
        K_GN_APPLY,
        K_LAYER_NORM,
        K_LAYER_NORM_W16,
        K_LAYER_NORM_W48,
        K_ACT,
        K_GEGLU,
        K_ATTENTION,
        K_UPSAMPLE2X,
        K_ADD,
        K_ADD_CHANNEL,
        K_ADD_ROWS,
        K_SOFTMAX,
        K_CONCAT,
        K_TRANSPOSE,
        K_EMBEDDING,
        K_LINCOMB,
        K_SCALE_DIM,
        K_SUM,
        K_CONVERT,
        K_IM2COL,
        K_IM2COL_TILE,
        K_CAST,
        K_BIAS_ROWS,
        K_BIAS_COLS,
        K_TIMESTEP,
        K_FROM16_BIAS,
        K_FA, /* one per FA_DIMS entry */
        /* The F16-activation instantiations (kernels.cu's _h), in the
         * order of their F32 ones in half_of[]. */
        K_GN_STATS_H = K_FA + 6,
        K_GN_APPLY_H,
        K_LAYER_NORM_H,
        K_LAYER_NORM_W16_H,
        K_LAYER_NORM_W48_H,
        K_ACT_H,
        K_GEGLU_H,
        K_ATTENTION_H,
        K_UPSAMPLE2X_H,
        K_ADD_H,
        K_ADD_CHANNEL_H,
        K_ADD_ROWS_H,
        K_CONCAT_H,
        K_TRANSPOSE_H,
        K_FA_H, /* one per FA_DIMS entry */
        K_FS = K_FA_H + 6, /* the short-sequence flash kernels: per FS_DIMS entry, rows of 16 then 32 */
        K_FS_H = K_FS + 6, /* the same on F16 activations */
        K_GN_FINAL = K_FS_H + 6,
        K_GN_FLAT,
        K_GN_FLAT_H,
        K_COUNT,
};

_Static_assert(K_COUNT == GH_DCUDA_KERNELS, "GH_DCUDA_KERNELS must match the kernels");

static const char *const kernel_names[K_COUNT] = {
        [K_CONV2D] = "gh_conv2d",
        [K_LINEAR] = "gh_linear",
        [K_GN_STATS] = "gh_gn_stats",
        [K_GN_APPLY] = "gh_gn_apply",
        [K_LAYER_NORM] = "gh_layer_norm",
        [K_LAYER_NORM_W16] = "gh_layer_norm_w16",
        [K_LAYER_NORM_W48] = "gh_layer_norm_w48",
        [K_ACT] = "gh_act",
        [K_GEGLU] = "gh_geglu",
        [K_ATTENTION] = "gh_attention",
        [K_UPSAMPLE2X] = "gh_upsample2x",
        [K_ADD] = "gh_add",
        [K_ADD_CHANNEL] = "gh_add_channel",
        [K_ADD_ROWS] = "gh_add_rows",
        [K_SOFTMAX] = "gh_softmax_rows",
        [K_CONCAT] = "gh_concat",
        [K_TRANSPOSE] = "gh_transpose",
        [K_EMBEDDING] = "gh_embedding",
        [K_LINCOMB] = "gh_lincomb",
        [K_SCALE_DIM] = "gh_scale_dim",
        [K_SUM] = "gh_sum",
        [K_CONVERT] = "gh_convert",
        [K_IM2COL] = "gh_im2col",
        [K_IM2COL_TILE] = "gh_im2col_tile",
        [K_CAST] = "gh_cast",
        [K_BIAS_ROWS] = "gh_bias_rows",
        [K_BIAS_COLS] = "gh_bias_cols",
        [K_TIMESTEP] = "gh_timestep",
        [K_FROM16_BIAS] = "gh_from16_bias",
        [K_FA] = "gh_flash_attention_32",
        [K_FA + 1] = "gh_flash_attention_40",
        [K_FA + 2] = "gh_flash_attention_64",
        [K_FA + 3] = "gh_flash_attention_80",
        [K_FA + 4] = "gh_flash_attention_128",
        [K_FA + 5] = "gh_flash_attention_160",
        [K_GN_STATS_H] = "gh_gn_stats_h",
        [K_GN_APPLY_H] = "gh_gn_apply_h",
        [K_LAYER_NORM_H] = "gh_layer_norm_h",
        [K_LAYER_NORM_W16_H] = "gh_layer_norm_w16_h",
        [K_LAYER_NORM_W48_H] = "gh_layer_norm_w48_h",
        [K_ACT_H] = "gh_act_h",
        [K_GEGLU_H] = "gh_geglu_h",
        [K_ATTENTION_H] = "gh_attention_h",
        [K_UPSAMPLE2X_H] = "gh_upsample2x_h",
        [K_ADD_H] = "gh_add_h",
        [K_ADD_CHANNEL_H] = "gh_add_channel_h",
        [K_ADD_ROWS_H] = "gh_add_rows_h",
        [K_CONCAT_H] = "gh_concat_h",
        [K_TRANSPOSE_H] = "gh_transpose_h",
        [K_FA_H] = "gh_flash_attention_32_h",
        [K_FA_H + 1] = "gh_flash_attention_40_h",
        [K_FA_H + 2] = "gh_flash_attention_64_h",
        [K_FA_H + 3] = "gh_flash_attention_80_h",
        [K_FA_H + 4] = "gh_flash_attention_128_h",
        [K_FA_H + 5] = "gh_flash_attention_160_h",
        [K_FS] = "gh_flash_short_40_16",
        [K_FS + 1] = "gh_flash_short_40_32",
        [K_FS + 2] = "gh_flash_short_80_16",
        [K_FS + 3] = "gh_flash_short_80_32",
        [K_FS + 4] = "gh_flash_short_160_16",
        [K_FS + 5] = "gh_flash_short_160_32",
        [K_FS_H] = "gh_flash_short_40_16_h",
        [K_FS_H + 1] = "gh_flash_short_40_32_h",
        [K_FS_H + 2] = "gh_flash_short_80_16_h",
        [K_FS_H + 3] = "gh_flash_short_80_32_h",
        [K_FS_H + 4] = "gh_flash_short_160_16_h",
        [K_FS_H + 5] = "gh_flash_short_160_32_h",
        [K_GN_FINAL] = "gh_gn_final",
        [K_GN_FLAT] = "gh_gn_flat",
        [K_GN_FLAT_H] = "gh_gn_flat_h",
};

/* The F16-activation kernel of each kernel that has one. */
static const struct {
        int f32, f16;
} half_of[] = {
        {K_GN_STATS, K_GN_STATS_H},   {K_GN_APPLY, K_GN_APPLY_H},       {K_LAYER_NORM, K_LAYER_NORM_H},
        {K_LAYER_NORM_W16, K_LAYER_NORM_W16_H}, {K_LAYER_NORM_W48, K_LAYER_NORM_W48_H},
        {K_ACT, K_ACT_H},             {K_GEGLU, K_GEGLU_H},             {K_ATTENTION, K_ATTENTION_H},
        {K_UPSAMPLE2X, K_UPSAMPLE2X_H}, {K_ADD, K_ADD_H},               {K_ADD_CHANNEL, K_ADD_CHANNEL_H},
        {K_ADD_ROWS, K_ADD_ROWS_H},   {K_CONCAT, K_CONCAT_H},           {K_TRANSPOSE, K_TRANSPOSE_H},
        {K_GN_FLAT, K_GN_FLAT_H},
};

/* Kernel k for activations of t's dtype: its _h instantiation for F16. */
static int for_act(int k, const gh_dt *t) {
        if (t->dtype != GH_TENSOR_F16)
                return k;
        if (k >= K_FA && k < K_FA + 6)
                return K_FA_H + (k - K_FA);
        for (size_t i = 0; i < sizeof(half_of) / sizeof(half_of[0]); i++)
                if (half_of[i].f32 == k)
                        return half_of[i].f16;
        return k;
}

/* The head dimensions of the flash kernels, in K_FA's order. */
static const int fa_dims[] = {32, 40, 64, 80, 128, 160};
_Static_assert(sizeof(fa_dims) / sizeof(fa_dims[0]) == K_FS - K_FA_H && K_FA_H - K_GN_STATS_H == 14,
               "a kernel per flash dimension, in either activation type");
/* The short-sequence kernels' head dimensions (the motion modules'), in
 * K_FS's order, each with rows of 16 and 32; FS_ROWS in kernels.cu. */
static const int fs_dims[] = {40, 80, 160};
_Static_assert(2 * sizeof(fs_dims) / sizeof(fs_dims[0]) == K_FS_H - K_FS, "two kernels per short dimension");
#define FS_MAX 32 /* the longest sequence they take */

static int64_t div_up(int64_t a, int64_t b) {
        return (a + b - 1) / b;
}

static bool weight_type(const gh_dt *t) {
        return t->dtype == GH_TENSOR_F32 || t->dtype == GH_TENSOR_F16 || t->dtype == GH_TENSOR_BF16;
}

static size_t dtype_size(gh_dtype_id t) {
        return t == GH_TENSOR_F32 ? 4 : 2;
}

static int check(gh_dcuda *s, CUresult r) {
        return gh_cuda_errno(s->cu, r, NULL);
}

static int launch(gh_dcuda *s, int k, unsigned gx, unsigned gy, unsigned gz, unsigned bx, unsigned by,
                  unsigned shared, void **params) {
        s->cast.valid = false; /* the kernel may write the last linear's input */
        return check(s, s->cu->LaunchKernel((CUfunction)s->k[k], gx, gy, gz, bx, by, 1, shared, s->stream, params,
                                            NULL));
}

/* A 1-D kernel over n elements (grid-stride loops past MAX_BLOCKS). */
static int launch_n(gh_dcuda *s, int k, int64_t n, void **params) {
        int64_t blocks = div_up(n, THREADS);

        if (n <= 0)
                return 0;
        return launch(s, k, (unsigned)(blocks < MAX_BLOCKS ? blocks : MAX_BLOCKS), 1, 1, THREADS, 1, 0, params);
}

/* Copies |size| bytes of host memory to the start of the scratch buffer,
 * in stream order. Waits for the stream first, so that the previous copy
 * out of the staging buffer is done (a host sync, to be removed later). */
static int stage(gh_dcuda *s, const void *src, size_t size) {
        int r;

        if (size > s->scratch_size)
                return -E2BIG;
        r = check(s, s->cu->StreamSynchronize(s->stream));
        if (r < 0)
                return r;
        memcpy(s->host, src, size);
        s->cast.valid = false;
        return check(s, s->cu->MemcpyHtoDAsync(s->scratch, s->host, size, s->stream));
}

/* ---- GEMMs through cuBLASLt ---- */

/* One planned GEMM, column-major as cuBLASLt sees it: D[m,n] (of type
 * d_type, 0 for F32; ld ldd) = op(A)[m,k] B[k,n] (+ bias[m] where
 * bias_type), A stored k x m when trans_a, A and B of type |type|; |batch|
 * of them |stride_*| elements apart (0: B shared). */
typedef struct gemm_key {
        int type, trans_a;
        int bias_type, d_type; /* with a bias along m (the epilogue's), of this type */
        int64_t m, n, k, lda, ldb, ldd, batch, stride_a, stride_b, stride_d;
} gemm_key;

struct gh_dcuda_gemm {
        gemm_key key;
        cublasLtMatmulDesc_t desc;
        cublasLtMatrixLayout_t a, b, d;
        cublasLtMatmulAlgo_t algo;
};

static int cuda_type(int t) {
        return t == GH_TENSOR_F16 ? CUDA_R_16F : t == GH_TENSOR_BF16 ? CUDA_R_16BF : CUDA_R_32F;
}

static void gemm_plan_free(const gh_cublaslt *lt, gh_dcuda_gemm *g) {
        if (g->desc)
                lt->MatmulDescDestroy(g->desc);
        if (g->a)
                lt->MatrixLayoutDestroy(g->a);
        if (g->b)
                lt->MatrixLayoutDestroy(g->b);
        if (g->d)
                lt->MatrixLayoutDestroy(g->d);
        *g = (gh_dcuda_gemm){0};
}

static int layout(const gh_cublaslt *lt, cublasLtMatrixLayout_t *ret, int type, int64_t rows, int64_t cols, int64_t ld,
                  int64_t batch, int64_t stride) {
        int32_t count = (int32_t)batch;

        if (lt->MatrixLayoutCreate(ret, (cudaDataType)cuda_type(type), (uint64_t)rows, (uint64_t)cols, ld))
                return -ENOMEM;
        if (batch > 1 && (lt->MatrixLayoutSetAttribute(*ret, CUBLASLT_MATRIX_LAYOUT_BATCH_COUNT, &count, sizeof(count)) ||
                          lt->MatrixLayoutSetAttribute(*ret, CUBLASLT_MATRIX_LAYOUT_STRIDED_BATCH_OFFSET, &stride,
                                                       sizeof(stride))))
                return -EINVAL;
        return 0;
}

/* Descriptors and the heuristic's best algorithm for |key|, into |g|. */
static int gemm_plan_make(gh_dcuda *s, const gemm_key *key, gh_dcuda_gemm *g) {
        const gh_cublaslt *lt = s->lt;
        cublasOperation_t op = key->trans_a ? CUBLAS_OP_T : CUBLAS_OP_N;
        cublasLtMatmulPreference_t pref = NULL;
        cublasLtMatmulHeuristicResult_t res;
        uint64_t ws = GH_DCUDA_LT_WORKSPACE;
        int found = 0, r;

        g->key = *key;
        if (lt->MatmulDescCreate(&g->desc, CUBLAS_COMPUTE_32F, CUDA_R_32F) ||
            lt->MatmulDescSetAttribute(g->desc, CUBLASLT_MATMUL_DESC_TRANSA, &op, sizeof(op)))
                return -ENOMEM;
        if (key->bias_type) {
                cublasLtEpilogue_t epi = CUBLASLT_EPILOGUE_BIAS;
                int32_t bt = cuda_type(key->bias_type);
                if (lt->MatmulDescSetAttribute(g->desc, CUBLASLT_MATMUL_DESC_EPILOGUE, &epi, sizeof(epi)) ||
                    lt->MatmulDescSetAttribute(g->desc, CUBLASLT_MATMUL_DESC_BIAS_DATA_TYPE, &bt, sizeof(bt)))
                        return -EOPNOTSUPP;
        }
        if ((r = layout(lt, &g->a, key->type, key->trans_a ? key->k : key->m, key->trans_a ? key->m : key->k, key->lda,
                        key->batch, key->stride_a)) < 0 ||
            (r = layout(lt, &g->b, key->type, key->k, key->n, key->ldb, key->batch, key->stride_b)) < 0 ||
            (r = layout(lt, &g->d, key->d_type ? key->d_type : GH_TENSOR_F32, key->m, key->n, key->ldd, key->batch,
                        key->stride_d)) < 0)
                return r;
        if (lt->MatmulPreferenceCreate(&pref))
                return -ENOMEM;
        if (!lt->MatmulPreferenceSetAttribute(pref, CUBLASLT_MATMUL_PREF_MAX_WORKSPACE_BYTES, &ws, sizeof(ws)) &&
            !lt->MatmulAlgoGetHeuristic(s->lt_handle, g->desc, g->a, g->b, g->d, g->d, pref, 1, &res, &found) &&
            found > 0)
                g->algo = res.algo;
        lt->MatmulPreferenceDestroy(pref);
        return found > 0 ? 0 : -EOPNOTSUPP;
}

/* The plan caches (GEMMs, cuDNN convolutions): |n| entries of |size|
 * bytes, each starting with its key. The index of |key|'s, or -1. */
static int cache_find(const void *entries, uint32_t n, size_t size, const void *key, size_t key_size) {
        for (uint32_t i = 0; i < n; i++)
                if (!memcmp((const char *)entries + i * size, key, key_size))
                        return (int)i;
        return -1;
}

/* Where a new entry goes: the next unused one, else the oldest, whose plan
 * the caller frees first (*ret_evict). */
static uint32_t cache_slot(uint32_t *n, uint32_t *next, uint32_t cap, bool *ret_evict) {
        *ret_evict = *n == cap;
        return *n < cap ? (*n)++ : (*next)++ % cap;
}

/* The cached plan for |key|, made on first use. */
static int gemm_plan(gh_dcuda *s, const gemm_key *key, gh_dcuda_gemm **ret) {
        gh_dcuda_gemm g = {0};
        int i = cache_find(s->gemm, s->n_gemm, sizeof(g), key, sizeof(*key)), r;
        bool evict;

        if (i >= 0)
                return *ret = &s->gemm[i], 0;
        if ((r = gemm_plan_make(s, key, &g)) < 0) {
                gemm_plan_free(s->lt, &g);
                return r;
        }
        *ret = &s->gemm[cache_slot(&s->n_gemm, &s->next_gemm, GH_DCUDA_GEMM_CACHE, &evict)];
        if (evict)
                gemm_plan_free(s->lt, *ret);
        **ret = g;
        return 0;
}

/* cuBLASLt's handle and plans belong to the context current when they
 * were made (the heuristic's algorithms fit its SMs): when a job's slice
 * moves to another context, they are made again there. */
static int lt_follow_context(gh_dcuda *s) {
        cublasLtHandle_t h;
        CUcontext cur = NULL;

        if (s->cu->CtxGetCurrent(&cur) != CUDA_SUCCESS || cur == s->lt_ctx)
                return 0;
        for (uint32_t i = 0; i < s->n_gemm; i++)
                gemm_plan_free(s->lt, &s->gemm[i]);
        s->n_gemm = s->next_gemm = 0;
        s->lt->Destroy((cublasLtHandle_t)s->lt_handle);
        s->lt_handle = NULL;
        if (s->lt->Create(&h))
                return -EIO;
        s->lt_handle = h;
        s->lt_ctx = cur;
        return 0;
}

/* D = op(A) B (+ bias), plus D's old values where |accumulate| (beta 1:
 * C is D). */
static int gemm_acc(gh_dcuda *s, const gemm_key *key, CUdeviceptr a, CUdeviceptr b, CUdeviceptr d, const void *bias,
                    bool accumulate) {
        const float one = 1.0f, zero = 0.0f;
        gh_dcuda_gemm *g;
        int r = lt_follow_context(s);

        if (r >= 0)
                r = gemm_plan(s, key, &g);
        if (r < 0)
                return r;
        if (key->bias_type &&
            s->lt->MatmulDescSetAttribute(g->desc, CUBLASLT_MATMUL_DESC_BIAS_POINTER, &bias, sizeof(bias)))
                return -EIO;
        if (s->lt->Matmul(s->lt_handle, g->desc, &one, (const void *)a, g->a, (const void *)b, g->b,
                          accumulate ? &one : &zero,
                          (const void *)d, g->d, (void *)d, g->d, &g->algo, (void *)s->work, GH_DCUDA_LT_WORKSPACE,
                          (cudaStream_t)s->stream))
                return -EIO;
        return 0;
}

static int gemm(gh_dcuda *s, const gemm_key *key, CUdeviceptr a, CUdeviceptr b, CUdeviceptr d, const void *bias) {
        return gemm_acc(s, key, a, b, d, bias, false);
}

static bool use_lt(const gh_dcuda *s) {
        return s->lt && !s->no_lt && s->work_size > GH_DCUDA_LT_WORKSPACE;
}

/* The GEMMs' operand type: F32, or in the tensor-core mode the weight's
 * 16-bit type (fp16 for F32 weights). */
static int operand_type(const gh_dcuda *s, const gh_dt *w) {
        if (!s->fp16)
                return GH_TENSOR_F32;
        return w->dtype == GH_TENSOR_BF16 ? GH_TENSOR_BF16 : GH_TENSOR_F16;
}

static size_t round_up(size_t n, size_t a) {
        return (n + a - 1) / a * a;
}

/* The work buffer: cuBLASLt's workspace, the operands, and at its end
 * (when it is large enough) the biases converted to F32 for cuBLASLt's
 * epilogue, kept for the job (the weights never change under it). */
static size_t bias_area(const gh_dcuda *s) {
        return s->work_size >= GH_DCUDA_LT_WORKSPACE + 4 * GH_DCUDA_BIAS_AREA ? GH_DCUDA_BIAS_AREA : 0;
}

static size_t ops_size(const gh_dcuda *s) {
        return s->work_size - GH_DCUDA_LT_WORKSPACE - bias_area(s);
}

/* The bias as F32 in the bias area (converted on first use), or 0 where
 * the area is full or absent. */
static CUdeviceptr bias_f32(gh_dcuda *s, const gh_dt *b) {
        const size_t area = bias_area(s);
        long long n = b->shape[0];
        int bt = (int)b->dtype, f32 = GH_TENSOR_F32;
        CUdeviceptr dst = s->work + s->work_size - area + s->bias_used;
        void *params[] = {ARG(b->data), &bt, &dst, &f32, &n};

        if (bt == GH_TENSOR_F32)
                return (CUdeviceptr)(uintptr_t)b->data;
        for (uint32_t i = 0; i < s->n_bias; i++)
                if (s->bias[i].src == b->data)
                        return s->bias[i].dst;
        if (s->n_bias == GH_DCUDA_BIAS_CACHE || round_up((size_t)n * 4, 256) > area - s->bias_used ||
            launch_n(s, K_CAST, n, params) < 0)
                return 0;
        s->bias[s->n_bias++] = (gh_dcuda_bias){b->data, dst};
        s->bias_used += round_up((size_t)n * 4, 256);
        return dst;
}

/* The weight as type t: in place, or cast into the start of the operand
 * area (*ret_used bytes of it) where at most half of that area is needed. */
static int weight_operand(gh_dcuda *s, const gh_dt *w, int t, CUdeviceptr *ret, size_t *ret_used) {
        long long n = gh_dt_numel(w);
        int wt = (int)w->dtype;
        CUdeviceptr buf = s->work + GH_DCUDA_LT_WORKSPACE;
        size_t bytes = round_up((size_t)n * dtype_size(t), 256);
        void *params[] = {ARG(w->data), &wt, &buf, &t, &n};

        *ret = (CUdeviceptr)(uintptr_t)w->data;
        *ret_used = 0;
        if (wt == t)
                return 0;
        if (bytes > ops_size(s) / 2)
                return -E2BIG;
        *ret = buf;
        *ret_used = bytes;
        return launch_n(s, K_CAST, n, params);
}

/* y[rows, inner] += b: per row (r % len) for a conv, per column for a linear. */
static int add_bias(gh_dcuda *s, const gh_dt *b, gh_dt *y, long long inner, bool per_row) {
        long long rows = gh_dt_numel(y) / inner;
        int yt = (int)y->dtype, bt = (int)b->dtype, in = (int)inner, len = (int)b->shape[0];
        void *rp[] = {ARG(y->data), &yt, ARG(b->data), &bt, &rows, &in, &len};
        void *cp[] = {ARG(y->data), &yt, ARG(b->data), &bt, &rows, &in};
        int64_t gx = div_up(inner, THREADS);

        if (inner > INT32_MAX)
                return -E2BIG;
        return launch(s, per_row ? K_BIAS_ROWS : K_BIAS_COLS, (unsigned)(gx < MAX_BLOCKS ? gx : MAX_BLOCKS),
                      (unsigned)(rows < MAX_GRID_Y ? rows : MAX_GRID_Y), 1, THREADS, 1, 0, per_row ? rp : cp);
}

typedef struct conv_shape {
        int ci, h, w, co, kh, kw, stride, pad_top, pad_left, ho, wo;
} conv_shape;

#define IM2COL_SHARED (40u << 10) /* the tiled im2col's rows, at most (of 48 KiB without opting in) */

/* im2col of images [b0, b0 + nb), output pixels [p0, p0 + np), into col:
 * the tiled kernel where its rows fit in shared memory. */
static int im2col(gh_dcuda *s, const conv_shape *c, const gh_dt *x, int64_t b0, int64_t nb, int64_t p0, int64_t np,
                  int t, CUdeviceptr col) {
        CUdeviceptr xb = (CUdeviceptr)(uintptr_t)x->data + (size_t)(b0 * c->ci * c->h * c->w) * dtype_size(x->dtype);
        int xt = (int)x->dtype, p0i = (int)p0, npi = (int)np;
        int64_t kdim = (int64_t)c->ci * c->kh * c->kw, gx = div_up(np, THREADS * IM2COL_RUN);
        /* the most input rows a block of THREADS * IM2COL_RUN pixels covers */
        int64_t rows = ((THREADS * IM2COL_RUN - 1) / c->wo + 1) * c->stride + c->kh;
        size_t shared = (size_t)rows * (size_t)c->w * sizeof(float);
        void *params[] = {&xb, &xt, &col, &t, ARG(c->ci), ARG(c->h), ARG(c->w), ARG(c->kh), ARG(c->kw), ARG(c->stride),
                          ARG(c->pad_top), ARG(c->pad_left), ARG(c->wo), &p0i, &npi};

        if (nb > MAX_GRID_Y)
                return -E2BIG;
        if (shared <= IM2COL_SHARED && gx <= INT32_MAX)
                return launch(s, K_IM2COL_TILE, (unsigned)gx, (unsigned)(c->ci < MAX_GRID_Y ? c->ci : MAX_GRID_Y),
                              (unsigned)nb, THREADS, 1, (unsigned)shared, params);
        return launch(s, K_IM2COL, (unsigned)(gx < MAX_BLOCKS ? gx : MAX_BLOCKS),
                      (unsigned)(kdim < MAX_GRID_Y ? kdim : MAX_GRID_Y), (unsigned)nb, THREADS, 1, 0, params);
}

/* Per piece: D[pixels, co] (NCHW, ld Ho Wo) = col[pixels, K] w[co, K]^T,
 * with whole images per piece where they fit, else pixel ranges of one;
 * a 1x1 convolution reads x in place where it has the operand type. D
 * has y's type. */
static int conv_lt(gh_dcuda *s, const conv_shape *c, const gh_dt *x, const gh_dt *w, gh_dt *y) {
        const int t = operand_type(s, w);
        const int64_t batches = x->shape[0], kdim = (int64_t)c->ci * c->kh * c->kw, hwo = (int64_t)c->ho * c->wo;
        const bool direct = t == (int)x->dtype && c->kh == 1 && c->kw == 1 && c->stride == 1 && c->pad_top == 0 &&
                            c->pad_left == 0 && c->ho == c->h && c->wo == c->w;
        const size_t xs = dtype_size(x->dtype), ys = dtype_size(y->dtype);
        CUdeviceptr wp, col;
        size_t used;
        int64_t cap;
        int r;

        if ((r = weight_operand(s, w, t, &wp, &used)) < 0)
                return r;
        col = s->work + GH_DCUDA_LT_WORKSPACE + used;
        cap = direct ? INT64_MAX : (int64_t)((ops_size(s) - used) / ((size_t)kdim * dtype_size(t)));
        if (cap < (hwo < 64 ? hwo : 64) || hwo > INT32_MAX)
                return -E2BIG;
        for (int64_t b0 = 0; b0 < batches;) {
                int64_t nb = hwo <= cap ? (cap / hwo < batches - b0 ? cap / hwo : batches - b0) : 1;
                for (int64_t p0 = 0; p0 < hwo;) {
                        int64_t np = hwo - p0 < cap ? hwo - p0 : cap;
                        gemm_key key = {.type = t, .d_type = (int)y->dtype, .m = np, .n = c->co, .k = kdim, .lda = np,
                                        .ldb = kdim, .ldd = hwo, .batch = nb, .stride_a = kdim * np,
                                        .stride_d = c->co * hwo};
                        CUdeviceptr a = direct ? (CUdeviceptr)(uintptr_t)x->data + (size_t)(b0 * kdim * hwo) * xs : col;
                        CUdeviceptr d = (CUdeviceptr)(uintptr_t)y->data + (size_t)(b0 * c->co * hwo + p0) * ys;
                        if (nb == 1)
                                key.stride_a = key.stride_d = 0;
                        if ((!direct && (r = im2col(s, c, x, b0, nb, p0, np, t, col)) < 0) ||
                            (r = gemm(s, &key, a, wp, d, NULL)) < 0)
                                return r;
                        p0 += np;
                }
                b0 += nb;
        }
        return 0;
}

/* Per piece of rows: D[N, rows] (= y[rows, N], of y's type) = w[N, K]
 * x[rows, K]^T, x converted to the operand type unless it has it, plus
 * the bias in cuBLASLt's epilogue where it takes it (*ret_biased): as it
 * is where it has y's 16-bit type, else as F32. */
static int linear_lt(gh_dcuda *s, const gh_dt *x, const gh_dt *w, const gh_dt *b, gh_dt *y, long long m,
                     bool accumulate, bool *ret_biased, long long *ret_done) {
        const int t = operand_type(s, w);
        const int64_t n = w->shape[0], k = w->shape[1];
        CUdeviceptr wp, col;
        size_t used;
        int64_t cap;
        int r;

        if ((r = weight_operand(s, w, t, &wp, &used)) < 0)
                return r;
        col = s->work + GH_DCUDA_LT_WORKSPACE + used;
        cap = t == (int)x->dtype ? INT64_MAX : (int64_t)((ops_size(s) - used) / ((size_t)k * dtype_size(t)));
        if (cap < (m < 64 ? m : 64))
                return -E2BIG;
        for (long long m0 = 0; m0 < m;) {
                long long rows = m - m0 < cap ? m - m0 : cap, count = rows * k;
                const size_t xs = dtype_size(x->dtype), ys = dtype_size(y->dtype);
                CUdeviceptr xr = (CUdeviceptr)(uintptr_t)x->data + (size_t)(m0 * k) * xs, xb = xr;
                CUdeviceptr yr = (CUdeviceptr)(uintptr_t)y->data + (size_t)(m0 * n) * ys;
                int xt = (int)x->dtype, tt = t;
                void *params[] = {&xr, &xt, &col, &tt, &count};
                const bool own = b && y->dtype != GH_TENSOR_F32 && b->dtype == y->dtype;
                CUdeviceptr bias = !b || s->lt_no_bias ? 0 : own ? (CUdeviceptr)(uintptr_t)b->data : bias_f32(s, b);
                gemm_key key = {.type = t, .trans_a = 1, .d_type = (int)y->dtype, .m = n, .n = rows, .k = k, .lda = k,
                                .ldb = k, .ldd = n, .batch = 1,
                                .bias_type = bias ? own ? (int)b->dtype : GH_TENSOR_F32 : 0};
                if (t != xt) {
                        if (!(s->cast.valid && s->cast.src == xr && s->cast.dst == col && s->cast.count == count &&
                              s->cast.type == t) &&
                            (r = launch_n(s, K_CAST, count, params)) < 0)
                                return r;
                        s->cast = (__typeof__(s->cast)){xr, col, count, t, true};
                        xb = col;
                }
                r = gemm_acc(s, &key, wp, xb, yr, (const void *)bias, accumulate);
                if (yr < xr + (size_t)count * xs && xr < yr + (size_t)(rows * n) * ys)
                        s->cast.valid = false; /* wrote over its own input */
                if (r == -EOPNOTSUPP && key.bias_type) { /* no such epilogue here: bias apart from now on */
                        s->lt_no_bias = true;
                        key.bias_type = 0;
                        r = gemm_acc(s, &key, wp, xb, yr, NULL, accumulate);
                }
                if (r < 0)
                        return r;
                *ret_biased = key.bias_type != 0;
                m0 += rows;
                *ret_done = m0;
        }
        return 0;
}

/* ---- convolutions through cuDNN (the tensor-core mode, on request) ----
 *
 * Measured on an H200 with the SD 1.5 UNet in fp16 (cuDNN 9, its
 * heuristic's first algorithm, NCHW): 64.0 UNet evaluations/s against
 * 70.2 for im2col and cuBLASLt at 512x512 batch 1, 17.5 against 21.5 at
 * batch 4, 27.6 against 27.4 at 768x768. So convolutions stay on im2col
 * and cuBLASLt, and cuDNN is here to measure again (gpuhost-sd --cudnn). */

#ifdef GH_HAVE_CUDNN
/* One planned convolution of |n| images, NCHW, 16-bit |type|, with a
 * workspace of at most ws_max bytes. */
typedef struct conv_key {
        int type, n, ci, h, w, co, kh, kw, stride, pad_h, pad_w, ho, wo, pad_;
        int64_t ws_max;
} conv_key;

struct gh_dcuda_conv {
        conv_key key;
        cudnnTensorDescriptor_t x, y;
        cudnnFilterDescriptor_t w;
        cudnnConvolutionDescriptor_t conv;
        cudnnConvolutionFwdAlgo_t algo;
        size_t ws;
};

static void conv_plan_free(const gh_cudnn *dnn, gh_dcuda_conv *p) {
        if (p->x)
                dnn->DestroyTensorDescriptor(p->x);
        if (p->y)
                dnn->DestroyTensorDescriptor(p->y);
        if (p->w)
                dnn->DestroyFilterDescriptor(p->w);
        if (p->conv)
                dnn->DestroyConvolutionDescriptor(p->conv);
        *p = (gh_dcuda_conv){0};
}

/* Descriptors, and the first algorithm of cuDNN's heuristic ranking
 * whose workspace fits, into |p|. Host work only (no device call), so a
 * CUDA graph may be recording. */
static int conv_plan_make(gh_dcuda *s, const conv_key *k, gh_dcuda_conv *p) {
        const gh_cudnn *dnn = s->dnn;
        const cudnnDataType_t dt = k->type == GH_TENSOR_BF16 ? CUDNN_DATA_BFLOAT16 : CUDNN_DATA_HALF;
        cudnnConvolutionFwdAlgoPerf_t perf[CUDNN_CONVOLUTION_FWD_ALGO_COUNT];
        int found = 0;

        p->key = *k;
        if (dnn->CreateTensorDescriptor(&p->x) || dnn->CreateTensorDescriptor(&p->y) ||
            dnn->CreateFilterDescriptor(&p->w) || dnn->CreateConvolutionDescriptor(&p->conv))
                return -ENOMEM;
        if (dnn->SetTensor4dDescriptor(p->x, CUDNN_TENSOR_NCHW, dt, k->n, k->ci, k->h, k->w) ||
            dnn->SetTensor4dDescriptor(p->y, CUDNN_TENSOR_NCHW, dt, k->n, k->co, k->ho, k->wo) ||
            dnn->SetFilter4dDescriptor(p->w, dt, CUDNN_TENSOR_NCHW, k->co, k->ci, k->kh, k->kw) ||
            dnn->SetConvolution2dDescriptor(p->conv, k->pad_h, k->pad_w, k->stride, k->stride, 1, 1,
                                            CUDNN_CROSS_CORRELATION, CUDNN_DATA_FLOAT) ||
            dnn->SetConvolutionMathType(p->conv, CUDNN_TENSOR_OP_MATH) ||
            dnn->GetConvolutionForwardAlgorithm_v7(s->dnn_handle, p->x, p->w, p->conv, p->y,
                                                   CUDNN_CONVOLUTION_FWD_ALGO_COUNT, &found, perf))
                return -EOPNOTSUPP;
        for (int i = 0; i < found; i++)
                if (perf[i].status == CUDNN_STATUS_SUCCESS && perf[i].memory <= (size_t)k->ws_max &&
                    !dnn->SetConvolutionMathType(p->conv, perf[i].mathType)) {
                        p->algo = perf[i].algo;
                        p->ws = perf[i].memory;
                        return 0;
                }
        return found > 0 ? -E2BIG : -EOPNOTSUPP;
}

/* The cached plan for |k|, made on first use. */
static int conv_plan(gh_dcuda *s, const conv_key *k, gh_dcuda_conv **ret) {
        gh_dcuda_conv p = {0};
        int i = cache_find(s->conv, s->n_conv, sizeof(p), k, sizeof(*k)), r;
        bool evict;

        if (i >= 0)
                return *ret = &s->conv[i], 0;
        if ((r = conv_plan_make(s, k, &p)) < 0) {
                conv_plan_free(s->dnn, &p);
                return r;
        }
        *ret = &s->conv[cache_slot(&s->n_conv, &s->next_conv, GH_DCUDA_CONV_CACHE, &evict)];
        if (evict)
                conv_plan_free(s->dnn, *ret);
        **ret = p;
        return 0;
}

static bool use_dnn(const gh_dcuda *s, const conv_shape *c, const int pad[4], const gh_dt *x, const gh_dt *y) {
        return s->dnn_handle && s->fp16 && s->work_size > GH_DCUDA_LT_WORKSPACE && c->kh * c->kw > 1 &&
               pad[0] == pad[1] && pad[2] == pad[3] && x->dtype == GH_TENSOR_F32 && y->dtype == GH_TENSOR_F32;
}

/* The operand area after the weight: the images' fp16 copy, cuDNN's
 * 16-bit output, then its workspace (or the workspace in cuBLASLt's part,
 * when it fits there). */
typedef struct conv_room {
        CUdeviceptr x16, y16, ws;
        size_t xs, ys;
} conv_room;

static int conv_room_for(gh_dcuda *s, const conv_shape *c, int t, size_t used, int64_t nb, conv_room *room,
                         gh_dcuda_conv **ret) {
        const size_t avail = ops_size(s) - used;
        conv_key k = {.type = t, .n = (int)nb, .ci = c->ci, .h = c->h, .w = c->w, .co = c->co, .kh = c->kh,
                      .kw = c->kw, .stride = c->stride, .pad_h = c->pad_top, .pad_w = c->pad_left, .ho = c->ho,
                      .wo = c->wo};
        int r;

        room->xs = round_up((size_t)nb * (size_t)c->ci * (size_t)c->h * (size_t)c->w * 2, 256);
        room->ys = round_up((size_t)nb * (size_t)c->co * (size_t)c->ho * (size_t)c->wo * 2, 256);
        if (room->xs + room->ys > avail)
                return -E2BIG;
        k.ws_max = (int64_t)(avail - room->xs - room->ys > GH_DCUDA_LT_WORKSPACE ? avail - room->xs - room->ys
                                                                                : GH_DCUDA_LT_WORKSPACE);
        if ((r = conv_plan(s, &k, ret)) < 0)
                return r;
        room->x16 = s->work + GH_DCUDA_LT_WORKSPACE + used;
        room->y16 = room->x16 + room->xs;
        room->ws = (*ret)->ws <= GH_DCUDA_LT_WORKSPACE ? s->work : room->y16 + room->ys;
        return 0;
}

/* Per piece of images: x to the 16-bit type, cuDNN's convolution, and
 * back to F32 with the bias. As many images per piece as fit (halving). */
static int conv_dnn(gh_dcuda *s, const conv_shape *c, const gh_dt *x, const gh_dt *w, const gh_dt *b, gh_dt *y) {
        const float one = 1.0f, zero = 0.0f;
        const int64_t batches = x->shape[0], in = (int64_t)c->ci * c->h * c->w, out = (int64_t)c->co * c->ho * c->wo;
        int t = operand_type(s, w), f32 = GH_TENSOR_F32, bt = b ? (int)b->dtype : 0, len = c->co;
        int inner = c->ho * c->wo;
        void *bias = b ? b->data : NULL;
        gh_dcuda_conv *plan;
        conv_room room;
        CUdeviceptr wp;
        size_t used;
        int64_t nb = batches;
        int r;

        if ((r = weight_operand(s, w, t, &wp, &used)) < 0)
                return r;
        while ((r = conv_room_for(s, c, t, used, nb, &room, &plan)) == -E2BIG && nb > 1)
                nb = (nb + 1) / 2;
        if (r < 0)
                return r;
        for (int64_t b0 = 0; b0 < batches; b0 += nb) {
                int64_t n = batches - b0 < nb ? batches - b0 : nb;
                long long count = n * in, rows = n * c->co;
                CUdeviceptr xb = (CUdeviceptr)(uintptr_t)x->data + (size_t)(b0 * in) * sizeof(float);
                CUdeviceptr yb = (CUdeviceptr)(uintptr_t)y->data + (size_t)(b0 * out) * sizeof(float);
                void *cp[] = {&xb, &f32, &room.x16, &t, &count};
                void *bp[] = {&room.y16, &t, &bias, &bt, &yb, &rows, &inner, &len};
                int64_t gx = div_up(inner % 4 ? inner : inner / 4, THREADS);
                if ((n != nb && (r = conv_room_for(s, c, t, used, n, &room, &plan)) < 0) ||
                    (r = launch_n(s, K_CAST, count, cp)) < 0)
                        return r;
                if (s->dnn->ConvolutionForward(s->dnn_handle, &one, plan->x, (const void *)room.x16, plan->w,
                                               (const void *)wp, plan->conv, plan->algo, (void *)room.ws, plan->ws,
                                               &zero, plan->y, (void *)room.y16))
                        return -EIO;
                if ((r = launch(s, K_FROM16_BIAS, (unsigned)(gx < MAX_BLOCKS ? gx : MAX_BLOCKS),
                                (unsigned)(rows < MAX_GRID_Y ? rows : MAX_GRID_Y), 1, THREADS, 1, 0, bp)) < 0)
                        return r;
        }
        return 0;
}
#endif

/* ---- GEMMs: the fallback kernels ---- */

static int cuda_conv2d(void *be, const gh_dt *x, const gh_dt *w, const gh_dt *b, int stride, const int pad[4],
                       gh_dt *y) {
        gh_dcuda *s = be;
        conv_shape c = {(int)x->shape[1], (int)x->shape[2], (int)x->shape[3], (int)w->shape[0], (int)w->shape[2],
                        (int)w->shape[3], stride, pad[0], pad[2], (int)y->shape[2], (int)y->shape[3]};
        int xt = (int)x->dtype, yt = (int)y->dtype, wt = (int)w->dtype, bt = b ? (int)b->dtype : 0, r;
        long long n = gh_dt_numel(y);
        void *bias = b ? b->data : NULL;
        void *params[] = {ARG(x->data), &xt, ARG(w->data), &wt, &bias, &bt, ARG(y->data), &yt, &n, &c.ci, &c.h, &c.w,
                          &c.co, &c.kh, &c.kw, &stride, &c.pad_top, &c.pad_left, &c.ho, &c.wo};

        if (!weight_type(w) || (b && !weight_type(b)) || stride < 1)
                return -EINVAL;
        if (n <= 0)
                return 0;
#ifdef GH_HAVE_CUDNN
        if (use_dnn(s, &c, pad, x, y)) {
                r = conv_dnn(s, &c, x, w, b, y);
                if (r >= 0 || (r != -E2BIG && r != -EOPNOTSUPP))
                        return r;
        }
#endif
        if (use_lt(s)) {
                r = conv_lt(s, &c, x, w, y);
                if (r >= 0)
                        return b ? add_bias(s, b, y, (long long)c.ho * c.wo, true) : 0;
                if (r != -E2BIG && r != -EOPNOTSUPP)
                        return r;
        }
        return launch_n(be, K_CONV2D, n, params);
}

/* y = x w^T + b, or y += that where |accumulate|. The fallback kernel
 * takes over only where cuBLASLt wrote nothing (an accumulation must not
 * run twice). */
static int linear(gh_dcuda *s, const gh_dt *x, const gh_dt *w, const gh_dt *b, gh_dt *y, bool accumulate) {
        int n = (int)w->shape[0], k = (int)w->shape[1], wt = (int)w->dtype, bt = b ? (int)b->dtype : 0, r;
        int xt = (int)x->dtype, yt = (int)y->dtype, acc = accumulate;
        long long m = 1;
        void *bias = b ? b->data : NULL;
        void *params[] = {ARG(x->data), &xt, ARG(w->data), &wt, &bias, &bt, ARG(y->data), &yt, &acc, &m, &n, &k};

        if (!weight_type(w) || (b && !weight_type(b)) || x->n_dims < 1)
                return -EINVAL;
        for (uint32_t i = 0; i + 1 < x->n_dims; i++)
                m *= x->shape[i];
        if (m <= 0 || n <= 0)
                return 0;
        if (use_lt(s) && k > 0) {
                bool biased = false;
                long long done = 0;
                r = linear_lt(s, x, w, b, y, m, accumulate, &biased, &done);
                if (r >= 0)
                        return b && !biased ? add_bias(s, b, y, n, false) : 0;
                if ((r != -E2BIG && r != -EOPNOTSUPP) || (accumulate && done > 0))
                        return r;
        }
        if (div_up(n, LINEAR_TILE) > MAX_GRID_Y || div_up(m, LINEAR_TILE) > INT32_MAX)
                return -E2BIG;
        return launch(s, K_LINEAR, (unsigned)div_up(m, LINEAR_TILE), (unsigned)div_up(n, LINEAR_TILE), 1,
                      LINEAR_TILE, LINEAR_TILE, 0, params);
}

static int cuda_linear(void *be, const gh_dt *x, const gh_dt *w, const gh_dt *b, gh_dt *y) {
        return linear(be, x, w, b, y, false);
}

static int cuda_linear_add(void *be, const gh_dt *x, const gh_dt *w, const gh_dt *b, gh_dt *y) {
        return linear(be, x, w, b, y, true);
}

/* ---- normalization ---- */

/* Two kernels: partial sums of each (batch item, group) over chunks of
 * at least GN_CHUNK elements, into the second half of the scratch buffer
 * (batch items in pieces where they do not fit), then the normalization
 * over rows (batch item, channel). Rows shorter than GN_ROW_MIN take
 * three: the sums, each group's mean and 1/std into the first half of
 * the scratch buffer, then the normalization over the elements flatly. */
static int gn_flat(gh_dcuda *s, const gh_dt *x, CUdeviceptr xb, CUdeviceptr yb, CUdeviceptr part, int splits,
                   long long nb, int groups, float eps, void *g, int gt, void *bb, int bt, int silu) {
        long long n = nb * x->shape[1], inner = gh_dt_numel(x) / (x->shape[0] * x->shape[1]), ng = nb * groups;
        long long elems = n * inner, per = inner % 4 ? elems : elems / 4;
        double cnt = (double)(x->shape[1] / groups) * (double)inner;
        int c = (int)x->shape[1];
        void *fp[] = {&part, &splits, &s->scratch, &ng, &cnt, &eps};
        void *ap[] = {&xb, &yb, &s->scratch, &g, &gt, &bb, &bt, &c, &groups, &inner, &silu, &elems};
        int r = launch_n(s, K_GN_FINAL, ng, fp);

        return r < 0 ? r : launch_n(s, for_act(K_GN_FLAT, x), per, ap);
}

static int cuda_group_norm(void *be, const gh_dt *x, int groups, float eps, const gh_dt *gamma,
                           const gh_dt *beta, bool silu, gh_dt *y) {
        gh_dcuda *s = be;
        const int64_t batches = x->shape[0];
        const size_t cap = s->scratch_size / 2 / (2 * sizeof(double));
        int c = (int)x->shape[1], gt = gamma ? (int)gamma->dtype : 0, bt = beta ? (int)beta->dtype : 0;
        int use_silu = silu, splits;
        void *g = gamma ? gamma->data : NULL, *bb = beta ? beta->data : NULL;
        long long inner, n;
        int64_t per_launch;
        CUdeviceptr part = s->scratch + s->scratch_size / 2;

        if ((gamma && !weight_type(gamma)) || (beta && !weight_type(beta)) || groups < 1 || c % groups)
                return -EINVAL;
        if (gh_dt_numel(x) == 0)
                return 0;
        inner = gh_dt_numel(x) / (batches * c);
        n = (long long)(c / groups) * inner;
        splits = (int)(n / GN_CHUNK < 1 ? 1 : n / GN_CHUNK > GN_SPLITS ? GN_SPLITS : n / GN_CHUNK);
        if ((size_t)groups > cap)
                return -E2BIG;
        if ((size_t)groups * (size_t)splits > cap)
                splits = (int)(cap / (size_t)groups);
        per_launch = (int64_t)(cap / ((size_t)groups * (size_t)splits));
        for (int64_t b0 = 0; b0 < batches; b0 += per_launch) {
                int64_t nb = batches - b0 < per_launch ? batches - b0 : per_launch;
                CUdeviceptr xb = (CUdeviceptr)(uintptr_t)x->data + (size_t)(b0 * c * inner) * dtype_size(x->dtype);
                CUdeviceptr yb = (CUdeviceptr)(uintptr_t)y->data + (size_t)(b0 * c * inner) * dtype_size(y->dtype);
                long long rows = nb * c;
                int64_t gx = div_up(inner % 4 ? inner : inner / 4, THREADS);
                void *sp[] = {&xb, &part, &n, &splits};
                void *ap[] = {&xb, &yb, &part, &splits, &g, &gt, &bb, &bt, &c, &groups, &inner, &eps, &use_silu, &rows};
                int r;
                if (nb * groups > INT32_MAX)
                        return -E2BIG;
                if ((r = launch(s, for_act(K_GN_STATS, x), (unsigned)(nb * groups), (unsigned)splits, 1, 512, 1, 0,
                                sp)) < 0)
                        return r;
                if (inner < GN_ROW_MIN)
                        r = gn_flat(s, x, xb, yb, part, splits, nb, groups, eps, g, gt, bb, bt, use_silu);
                else
                        r = launch(s, for_act(K_GN_APPLY, x), (unsigned)(gx < MAX_BLOCKS ? gx : MAX_BLOCKS),
                                   (unsigned)(rows < MAX_GRID_Y ? rows : MAX_GRID_Y), 1, THREADS, 1, 0, ap);
                if (r < 0)
                        return r;
        }
        return 0;
}

/* A warp per row where rows fit in its registers, else a block per row. */
static int cuda_layer_norm(void *be, const gh_dt *x, const gh_dt *gamma, const gh_dt *beta, float eps, gh_dt *y) {
        long long n = x->shape[x->n_dims - 1], rows;
        int gt = gamma ? (int)gamma->dtype : 0, bt = beta ? (int)beta->dtype : 0, ni = (int)n;
        void *g = gamma ? gamma->data : NULL, *bb = beta ? beta->data : NULL;
        void *params[] = {ARG(x->data), ARG(y->data), &g, &gt, &bb, &bt, &n, &eps};
        void *wparams[] = {ARG(x->data), ARG(y->data), &g, &gt, &bb, &bt, &rows, &ni, &eps};

        if ((gamma && !weight_type(gamma)) || (beta && !weight_type(beta)))
                return -EINVAL;
        if (n <= 0 || gh_dt_numel(x) == 0)
                return 0;
        rows = gh_dt_numel(x) / n;
        if (n <= LN_WARP_MAX && div_up(rows, THREADS / 32) <= INT32_MAX)
                return launch(be, for_act(n <= 512 ? K_LAYER_NORM_W16 : K_LAYER_NORM_W48, x),
                              (unsigned)div_up(rows, THREADS / 32), 1, 1, THREADS, 1, 0, wparams);
        return launch(be, for_act(K_LAYER_NORM, x), (unsigned)rows, 1, 1, THREADS, 1, 0, params);
}

/* ---- element-wise ---- */

static int cuda_act(void *be, gh_dact act, const gh_dt *x, gh_dt *y) {
        long long n = gh_dt_numel(x);
        int a = (int)act;
        void *params[] = {ARG(x->data), ARG(y->data), &n, &a};

        if (act != GH_DACT_SILU && act != GH_DACT_GELU && act != GH_DACT_QUICK_GELU)
                return -EINVAL;
        return launch_n(be, for_act(K_ACT, x), n, params);
}

/* A kernel over rows: grid x over |inner| elements (up to MAX_BLOCKS
 * blocks), y over rows (the kernel loops past MAX_GRID_Y). */
static int launch_rows(gh_dcuda *s, int k, int64_t rows, int64_t inner, void **params) {
        int64_t gx = div_up(inner, THREADS);

        if (rows <= 0 || inner <= 0)
                return 0;
        if (inner > INT32_MAX)
                return -E2BIG;
        return launch(s, k, (unsigned)(gx < MAX_BLOCKS ? gx : MAX_BLOCKS),
                      (unsigned)(rows < MAX_GRID_Y ? rows : MAX_GRID_Y), 1, THREADS, 1, 0, params);
}

static int cuda_geglu(void *be, const gh_dt *x, gh_dt *y) {
        long long half = y->shape[y->n_dims - 1], rows = half ? gh_dt_numel(y) / half : 0;
        int h = (int)half;
        void *params[] = {ARG(x->data), ARG(y->data), &rows, &h};
        const uintptr_t align = 4 * dtype_size(x->dtype) - 1;
        const bool vec = half % 4 == 0 && !((uintptr_t)x->data & align) && !((uintptr_t)y->data & align);

        return launch_rows(be, for_act(K_GEGLU, x), rows, vec ? half / 4 : half, params); /* as the kernel splits it */
}

static int cuda_add(void *be, const gh_dt *a, const gh_dt *b, gh_dt *y) {
        long long n = gh_dt_numel(y);
        void *params[] = {ARG(a->data), ARG(b->data), ARG(y->data), &n};

        return launch_n(be, for_act(K_ADD, y), n, params);
}

static int cuda_add_channel(void *be, const gh_dt *x, const gh_dt *v, gh_dt *y) {
        long long planes = x->shape[0] * x->shape[1], hw = planes ? gh_dt_numel(x) / planes : 0;
        int hwi = (int)hw, vt = (int)v->dtype;
        void *params[] = {ARG(x->data), ARG(v->data), &vt, ARG(y->data), &planes, &hwi};

        return launch_rows(be, for_act(K_ADD_CHANNEL, x), planes, hw, params);
}

static int cuda_add_rows(void *be, const gh_dt *x, const gh_dt *v, gh_dt *y) {
        long long m = gh_dt_numel(v), rows = gh_dt_numel(x) / m;
        int mi = (int)m, vt = (int)v->dtype;
        void *params[] = {ARG(x->data), ARG(v->data), &vt, ARG(y->data), &rows, &mi};

        if (m > INT32_MAX)
                return -E2BIG;
        return launch_rows(be, for_act(K_ADD_ROWS, x), rows, m, params);
}

static int cuda_lincomb(void *be, uint32_t n, const float *coef, const gh_dt *const *x, gh_dt *y) {
        gh_dcuda *s = be;
        long long count = gh_dt_numel(y);
        int cnt = (int)n;
        float c[4] = {0, 0, 0, 0};
        void *xs[4] = {NULL, NULL, NULL, NULL};
        void *params[] = {ARG(y->data), &count, &cnt, &c[0], &c[1], &c[2], &c[3], &xs[0], &xs[1], &xs[2], &xs[3]};

        if (n > 4)
                return -EINVAL;
        s->cast.valid = false;
        if (n == 0)
                return check(s, s->cu->MemsetD8Async((CUdeviceptr)(uintptr_t)y->data, 0, (size_t)count * sizeof(float),
                                                     s->stream));
        for (uint32_t i = 0; i < n; i++) {
                c[i] = coef[i];
                xs[i] = x[i]->data;
        }
        return launch_n(s, K_LINCOMB, count, params);
}

static int cuda_scale_dim(void *be, const float *w, uint32_t dim, gh_dt *y) {
        gh_dcuda *s = be;
        long long n = gh_dt_numel(y), len, inner = 1;
        void *params[] = {ARG(y->data), &s->scratch, &n, &len, &inner};
        int r;

        if (dim >= y->n_dims)
                return -EINVAL;
        for (uint32_t i = dim + 1; i < y->n_dims; i++)
                inner *= y->shape[i];
        len = y->shape[dim];
        if (len <= 0 || inner <= 0 || n <= 0)
                return 0;
        r = stage(s, w, (size_t)len * sizeof(float));
        if (r < 0)
                return r;
        return launch_n(s, K_SCALE_DIM, n, params);
}

/* ---- attention ---- */

/* The short-sequence kernel (F32 activations' index) for these sizes, or -1. */
static int short_kernel(const gh_dt *q, const gh_dt *k, int d) {
        if (q->shape[1] > FS_MAX || k->shape[1] > FS_MAX)
                return -1;
        for (size_t i = 0; i < sizeof(fs_dims) / sizeof(fs_dims[0]); i++)
                if (fs_dims[i] == d)
                        return K_FS + 2 * (int)i + (q->shape[1] > 16 || k->shape[1] > 16);
        return -1;
}

/* The flash kernel's index for this attention (a short-sequence one
 * where it has one), or -1. */
static int flash_kernel(const gh_dcuda *s, const gh_dt *q, const gh_dt *k, const gh_dt *v, const gh_dt *y, int d,
                        bool causal) {
        const uintptr_t align = (uintptr_t)q->data | (uintptr_t)k->data | (uintptr_t)v->data | (uintptr_t)y->data;

        if (!s->fp16 || causal || align % 16)
                return -1;
        if (short_kernel(q, k, d) >= 0)
                return short_kernel(q, k, d);
        for (size_t i = 0; i < sizeof(fa_dims) / sizeof(fa_dims[0]); i++)
                if (fa_dims[i] == d)
                        return K_FA + (int)i;
        return -1;
}

/* Launches flash kernel |k| (K_FA's or K_FS's, for F32 activations:
 * F16 ones take their _h twin) over |n| batch items from q, k, v and y. */
static int flash_launch(gh_dcuda *s, int k, bool half, CUdeviceptr q, CUdeviceptr kk, CUdeviceptr v, CUdeviceptr y,
                        int tq, int tk, int c, long long n, int heads, float scale_log2) {
        void *fa_params[] = {&q, &kk, &v, &y, &tq, &tk, &c, &scale_log2};
        void *fs_params[] = {&q, &kk, &v, &y, &tq, &tk, &c, &n, &scale_log2};

        if (k >= K_FS) {
                const int d = c / heads, rows = d > 80 ? 32 : 64, per = (k - K_FS) % 2 ? 32 : 16;
                return launch(s, half ? K_FS_H + (k - K_FS) : k, (unsigned)div_up(n, rows / per), (unsigned)heads, 1,
                              (unsigned)(2 * rows), 1, 0, fs_params);
        }
        return launch(s, half ? K_FA_H + (k - K_FA) : k, (unsigned)div_up(tq, FA_QUERIES), (unsigned)heads,
                      (unsigned)n, FA_THREADS, 1, 0, fa_params);
}

/* The flash kernel |fa| over batch items in pieces: their K and V
 * converted to fp16 into the work buffer, then the kernel. -E2BIG where
 * one item's do not fit. */
static int flash(gh_dcuda *s, int fa, const gh_dt *q, const gh_dt *k, const gh_dt *v, gh_dt *y, int heads,
                 float scale_log2) {
        const int64_t batches = q->shape[0], tq = q->shape[1], c = q->shape[2], tk = k->shape[1];
        const size_t per = round_up((size_t)(tk * c) * 2, 256);
        int64_t nb = s->work_size > GH_DCUDA_LT_WORKSPACE ? (int64_t)(ops_size(s) / (2 * per)) : 0;
        int tqi = (int)tq, tki = (int)tk, ci = (int)c, f32 = GH_TENSOR_F32, f16 = GH_TENSOR_F16, r;
        CUdeviceptr k16 = s->work + GH_DCUDA_LT_WORKSPACE, v16 = k16 + per * (size_t)(nb > 0 ? nb : 0);

        if (nb < 1)
                return -E2BIG;
        for (int64_t b0 = 0; b0 < batches; b0 += nb) {
                long long n = batches - b0 < nb ? batches - b0 : nb, count = n * tk * c;
                CUdeviceptr qb = (CUdeviceptr)(uintptr_t)q->data + (size_t)(b0 * tq * c) * sizeof(float);
                CUdeviceptr kb = (CUdeviceptr)(uintptr_t)k->data + (size_t)(b0 * tk * c) * sizeof(float);
                CUdeviceptr vb = (CUdeviceptr)(uintptr_t)v->data + (size_t)(b0 * tk * c) * sizeof(float);
                CUdeviceptr yb = (CUdeviceptr)(uintptr_t)y->data + (size_t)(b0 * tq * c) * sizeof(float);
                void *kp[] = {&kb, &f32, &k16, &f16, &count}, *vp[] = {&vb, &f32, &v16, &f16, &count};
                if ((r = launch_n(s, K_CAST, count, kp)) < 0 || (r = launch_n(s, K_CAST, count, vp)) < 0 ||
                    (r = flash_launch(s, fa, false, qb, k16, v16, yb, tqi, tki, ci, n, heads, scale_log2)) < 0)
                        return r;
        }
        return 0;
}

/* The flash kernel |fa| on F16 activations: K and V as they are, in one
 * launch (the caller checked the batch against the grid's limit). */
static int flash16(gh_dcuda *s, int fa, const gh_dt *q, const gh_dt *k, const gh_dt *v, gh_dt *y, int heads,
                   float scale_log2) {
        return flash_launch(s, fa, true, (CUdeviceptr)(uintptr_t)q->data, (CUdeviceptr)(uintptr_t)k->data,
                            (CUdeviceptr)(uintptr_t)v->data, (CUdeviceptr)(uintptr_t)y->data, (int)q->shape[1],
                            (int)k->shape[1], (int)q->shape[2], q->shape[0], heads, scale_log2);
}

/* Exact attention as two GEMMs per piece of heads (fp32, on cuBLASLt):
 * scores S = K Q^T of each head into the work buffer, a softmax along
 * each query's row, then Y = V P; for the long sequences and wide heads
 * the flash kernel does not take (the VAE's single 512-wide head over
 * 4096 positions). -E2BIG where the scores of one head do not fit, where
 * they are small (the motion modules' 16 x 16) or the pieces many (three
 * launches each, where the kernel needs one), or without cuBLASLt: the
 * kernel then. Column-major terms: S^T [tk x tq] =
 * op(K^T) Q^T, Y^T [d x tq] = V^T P^T, heads batched at a stride of d. */
static int attention_gemm(gh_dcuda *s, const gh_dt *q, const gh_dt *k, const gh_dt *v, gh_dt *y, int heads,
                          float scale) {
        int64_t tq = q->shape[1], tk = k->shape[1], c = q->shape[2], d = c / heads, per = tq * tk * 4, hc;
        CUdeviceptr sc = s->work + GH_DCUDA_LT_WORKSPACE;
        int r = 0;

        if (!use_lt(s) || per > (int64_t)ops_size(s) || tq > INT32_MAX || tk > INT32_MAX || tq * tk < GEMM_ATTN_MIN)
                return -E2BIG;
        hc = (int64_t)ops_size(s) / per < heads ? (int64_t)ops_size(s) / per : heads;
        if (q->shape[0] * div_up(heads, hc) > GEMM_ATTN_PIECES) /* launches: the kernel does it in one */
                return -E2BIG;
        s->cast.valid = false; /* the scores go over the work buffer */
        for (int64_t b = 0; b < q->shape[0] && r >= 0; b++)
                for (int64_t h0 = 0; h0 < heads && r >= 0; h0 += hc) {
                        int64_t nh = heads - h0 < hc ? heads - h0 : hc, off = (b * tq * c + h0 * d) * 4,
                                koff = (b * tk * c + h0 * d) * 4;
                        gemm_key ks = {.type = GH_TENSOR_F32, .trans_a = 1, .m = tk, .n = tq, .k = d, .lda = c,
                                       .ldb = c, .ldd = tk, .batch = nh, .stride_a = d, .stride_b = d,
                                       .stride_d = tq * tk};
                        gemm_key ky = {.type = GH_TENSOR_F32, .m = d, .n = tq, .k = tk, .lda = c, .ldb = tk, .ldd = c,
                                       .batch = nh, .stride_a = d, .stride_b = tq * tk, .stride_d = d};
                        long long rows = nh * tq;
                        int n = (int)tk;
                        void *params[] = {&sc, &rows, &n, &scale};
                        r = gemm(s, &ks, (CUdeviceptr)(uintptr_t)k->data + (size_t)koff,
                                 (CUdeviceptr)(uintptr_t)q->data + (size_t)off, sc, NULL);
                        if (r >= 0)
                                r = launch(s, K_SOFTMAX, 1, (unsigned)(rows < MAX_GRID_Y ? rows : MAX_GRID_Y), 1,
                                           THREADS, 1, 0, params);
                        if (r >= 0)
                                r = gemm(s, &ky, (CUdeviceptr)(uintptr_t)v->data + (size_t)koff, sc,
                                         (CUdeviceptr)(uintptr_t)y->data + (size_t)off, NULL);
                }
        return r;
}

static int cuda_attention(void *be, const gh_dt *q, const gh_dt *k, const gh_dt *v, int heads, bool causal,
                          gh_dt *y) {
        int tq = (int)q->shape[1], tk = (int)k->shape[1], c = (int)q->shape[2], cz = causal, tile, fa;
        float scale;
        void *params[] = {ARG(q->data), ARG(k->data), ARG(v->data), ARG(y->data), &tq, &tk, &c, &heads, &cz, &scale,
                          &tile};

        if (heads < 1 || c % heads)
                return -EINVAL;
        if (q->shape[0] <= 0 || tq <= 0 || c <= 0)
                return 0;
        if (tk <= 0)
                return -EINVAL; /* a softmax over nothing */
        if (c / heads > ATTN_DIMS * THREADS || heads > MAX_GRID_Y || q->shape[0] > MAX_GRID_Y)
                return -E2BIG;
        scale = 1.0f / sqrtf((float)(c / heads));
        fa = flash_kernel(be, q, k, v, y, c / heads, causal);
        if (fa >= 0) {
                const float scale_log2 = scale * 1.4426950408889634f; /* the kernel's softmax is base 2 */
                int r = q->dtype == GH_TENSOR_F16 ? flash16(be, fa, q, k, v, y, heads, scale_log2)
                                                  : flash(be, fa, q, k, v, y, heads, scale_log2);
                if (r != -E2BIG)
                        return r;
        }
        if (!causal && q->dtype == GH_TENSOR_F32) {
                int r = attention_gemm(be, q, k, v, y, heads, scale);
                if (r != -E2BIG)
                        return r;
        }
        tile = tk < ATTN_TILE ? tk : ATTN_TILE;
        return launch(be, for_act(K_ATTENTION, q), (unsigned)tq, (unsigned)heads, (unsigned)q->shape[0], THREADS, 1,
                      (unsigned)tile * sizeof(float), params);
}

/* ---- data movement ---- */

static int cuda_upsample2x(void *be, const gh_dt *x, gh_dt *y) {
        long long planes = x->shape[0] * x->shape[1];
        int h = (int)x->shape[2], w = (int)x->shape[3];
        void *params[] = {ARG(x->data), ARG(y->data), &planes, &h, &w};

        return launch_rows(be, for_act(K_UPSAMPLE2X, x), planes, 4 * x->shape[2] * x->shape[3], params);
}

static int cuda_concat(void *be, const gh_dt *a, const gh_dt *b, gh_dt *y) {
        long long batches = y->shape[0];
        int na, nb;
        void *params[] = {ARG(a->data), ARG(b->data), ARG(y->data), &batches, &na, &nb};

        if (batches <= 0)
                return 0;
        if (gh_dt_numel(y) / batches > INT32_MAX)
                return -E2BIG;
        na = (int)(gh_dt_numel(a) / batches);
        nb = (int)(gh_dt_numel(b) / batches);
        return launch_rows(be, for_act(K_CONCAT, y), batches, (int64_t)na + nb, params);
}

/* y[b] = x[b]^T for x[B, rows, cols]. */
static int transpose(gh_dcuda *s, const gh_dt *x, int64_t rows, int64_t cols, gh_dt *y) {
        const int64_t b = x->shape[0];
        int ri = (int)rows, ci = (int)cols;
        void *params[] = {ARG(x->data), ARG(y->data), &ri, &ci};

        if (b <= 0 || rows <= 0 || cols <= 0)
                return 0;
        if (rows * cols > INT32_MAX || div_up(rows, TILE) > MAX_GRID_Y || b > MAX_GRID_Y)
                return -E2BIG;
        return launch(s, for_act(K_TRANSPOSE, x), (unsigned)div_up(cols, TILE), (unsigned)div_up(rows, TILE),
                      (unsigned)b, TILE, 8, 0, params);
}

static int cuda_nchw_to_nlc(void *be, const gh_dt *x, gh_dt *y) {
        return transpose(be, x, x->shape[1], x->shape[2] * x->shape[3], y);
}

static int cuda_nlc_to_nchw(void *be, const gh_dt *x, gh_dt *y) {
        return transpose(be, x, y->shape[2] * y->shape[3], y->shape[1], y);
}

/* On the device in double, like the CPU backend; the timesteps go as a
 * kernel argument (so no staging, nothing to wait for, and a CUDA graph
 * may hold it), GH_DCUDA_TS_MAX at a time. */
#define GH_DCUDA_TS_MAX 256 /* TS_MAX in kernels.cu */
static int cuda_timestep_embedding(void *be, const float *t, gh_dt *y) {
        gh_dcuda *s = be;
        const int64_t batches = y->shape[0];
        long long dim = y->shape[1];
        struct {
                float t[GH_DCUDA_TS_MAX];
        } tv;

        if (dim <= 0 || batches <= 0)
                return 0;
        for (int64_t b0 = 0; b0 < batches; b0 += GH_DCUDA_TS_MAX) {
                int64_t nb = batches - b0 < GH_DCUDA_TS_MAX ? batches - b0 : GH_DCUDA_TS_MAX;
                long long n = nb * dim;
                CUdeviceptr yb = (CUdeviceptr)(uintptr_t)y->data + (size_t)(b0 * dim) * sizeof(float);
                void *params[] = {&yb, &n, &dim, &tv};
                int r;
                memset(&tv, 0, sizeof(tv));
                memcpy(tv.t, t + b0, (size_t)nb * sizeof(float));
                if ((r = launch_n(s, K_TIMESTEP, n, params)) < 0)
                        return r;
        }
        return 0;
}

static int cuda_embedding(void *be, const int32_t *ids, const gh_dt *table, const gh_dt *pos, gh_dt *y) {
        gh_dcuda *s = be;
        long long c = y->shape[y->n_dims - 1], n = gh_dt_numel(y), pos_rows = pos ? pos->shape[0] : 0;
        int tt = (int)table->dtype, pt = pos ? (int)pos->dtype : 0;
        void *p = pos ? pos->data : NULL;
        void *params[] = {&s->scratch, ARG(table->data), &tt, &p, &pt, &pos_rows, ARG(y->data), &n, &c};
        int r;

        if (!weight_type(table) || (pos && (!weight_type(pos) || pos_rows <= 0)))
                return -EINVAL;
        if (c <= 0 || n <= 0)
                return 0;
        r = stage(s, ids, (size_t)(n / c) * sizeof(int32_t));
        if (r < 0)
                return r;
        return launch_n(s, K_EMBEDDING, n, params);
}

static int cuda_sum(void *be, const gh_dt *x, double *ret) {
        gh_dcuda *s = be;
        long long n = gh_dt_numel(x);
        void *params[] = {ARG(x->data), &n, &s->scratch};
        int r;

        if (x->dtype != GH_TENSOR_F32)
                return -EINVAL;
        r = launch(s, K_SUM, 1, 1, 1, THREADS, 1, 0, params);
        if (r >= 0)
                r = check(s, s->cu->MemcpyDtoHAsync(s->host, s->scratch, sizeof(double), s->stream));
        if (r >= 0)
                r = check(s, s->cu->StreamSynchronize(s->stream));
        if (r < 0)
                return r;
        memcpy(ret, s->host, sizeof(double));
        return 0;
}

static int cuda_upload(void *be, const float *src, gh_dt *y) {
        gh_dcuda *s = be;
        size_t size = (size_t)gh_dt_numel(y) * sizeof(float);

        if (y->dtype != GH_TENSOR_F32)
                return -EOPNOTSUPP;
        if (size == 0)
                return 0;
        s->cast.valid = false;
        return check(s, s->cu->MemcpyHtoDAsync((CUdeviceptr)(uintptr_t)y->data, src, size, s->stream));
}

/* F16 and BF16: converted into the scratch buffer a piece at a time. */
static int download_converted(gh_dcuda *s, const gh_dt *x, float *dst) {
        const long long total = gh_dt_numel(x), chunk = (long long)(s->scratch_size / sizeof(float));
        int t = (int)x->dtype;
        long long off = 0, n = 0;
        void *params[] = {ARG(x->data), &t, &off, &s->scratch, &n};
        int r = 0;

        for (; off < total && r >= 0; off += chunk) {
                n = total - off < chunk ? total - off : chunk;
                r = launch_n(s, K_CONVERT, n, params);
                if (r >= 0)
                        r = check(s, s->cu->MemcpyDtoHAsync(dst + off, s->scratch, (size_t)n * sizeof(float),
                                                            s->stream));
        }
        return r;
}

static int cuda_download(void *be, const gh_dt *x, float *dst) {
        gh_dcuda *s = be;
        size_t n = (size_t)gh_dt_numel(x);
        int r;

        if (!weight_type(x))
                return -EOPNOTSUPP;
        if (n == 0)
                return 0;
        if (x->dtype == GH_TENSOR_F32)
                r = check(s, s->cu->MemcpyDtoHAsync(dst, (CUdeviceptr)(uintptr_t)x->data, n * dtype_size(x->dtype), s->stream));
        else
                r = download_converted(s, x, dst);
        if (r < 0)
                return r;
        return check(s, s->cu->StreamSynchronize(s->stream));
}

/* ---- state ---- */

static int fail(gh_dcuda *s, CUresult r, const char *call, const char *what, char *err, size_t err_size) {
        const char *name;
        int e = gh_cuda_errno(s->cu, r, &name);

        gh_set_error(err, err_size, "%s%s%s: %s", call, what ? " " : "", what ? what : "", name);
        gh_dcuda_fini(s);
        return e;
}

/* The kernels: one library for the process, loaded by the first state
 * and kept until the process exits (a cuLibrary is context-independent).
 * So a job's setup loads no image, and each context loads a kernel on its
 * first launch there once, not once per job. */
static struct {
        pthread_mutex_t lock;
        bool loaded;
        void *image; /* the fatbin, aligned: the driver wants it so */
        CUlibrary lib;
        CUkernel k[K_COUNT];
} kernels = {.lock = PTHREAD_MUTEX_INITIALIZER};

/* Called with kernels.lock held. */
static int kernels_load(const gh_cuda *cu, char *err, size_t err_size) {
        size_t size = (gh_dcuda_fatbin_size + 63) / 64 * 64;
        const char *name;
        CUresult r;

        if (kernels.loaded)
                return 0;
        if (!kernels.image && !(kernels.image = aligned_alloc(64, size)))
                return -ENOMEM;
        memcpy(kernels.image, gh_dcuda_fatbin, gh_dcuda_fatbin_size);
        r = cu->LibraryLoadData(&kernels.lib, kernels.image, NULL, NULL, 0, NULL, NULL, 0);
        if (r != CUDA_SUCCESS) {
                int e = gh_cuda_errno(cu, r, &name);
                gh_set_error(err, err_size, "cuLibraryLoadData: %s", name);
                return e;
        }
        for (int i = 0; i < K_COUNT; i++) {
                r = cu->LibraryGetKernel(&kernels.k[i], kernels.lib, kernel_names[i]);
                if (r != CUDA_SUCCESS) {
                        int e = gh_cuda_errno(cu, r, &name);
                        gh_set_error(err, err_size, "cuLibraryGetKernel %s: %s", kernel_names[i], name);
                        cu->LibraryUnload(kernels.lib);
                        return e;
                }
        }
        kernels.loaded = true;
        return 0;
}

static int load_kernels(gh_dcuda *s, char *err, size_t err_size) {
        int r;

        pthread_mutex_lock(&kernels.lock);
        r = kernels_load(s->cu, err, err_size);
        if (r >= 0)
                memcpy(s->k, kernels.k, sizeof(kernels.k));
        pthread_mutex_unlock(&kernels.lock);
        if (r < 0)
                gh_dcuda_fini(s);
        return r;
}

/* cuBLASLt where it loads; its absence is not an error (fallback kernels). */
static void load_cublaslt(gh_dcuda *s) {
        cublasLtHandle_t h;

        s->lt = gh_cublaslt_get(s->lt_error, sizeof(s->lt_error));
        if (s->lt && s->lt->Create(&h)) {
                snprintf(s->lt_error, sizeof(s->lt_error), "cublasLtCreate failed");
                s->lt = NULL;
        }
        if (s->lt) {
                s->lt_handle = h;
                if (s->cu->CtxGetCurrent(&s->lt_ctx) != CUDA_SUCCESS)
                        s->lt_ctx = NULL;
        }
}

int gh_dcuda_use_cudnn(gh_dcuda *s, char *err, size_t err_size) {
#ifdef GH_HAVE_CUDNN
        cudnnHandle_t h = NULL;
        cudnnStatus_t st;

        if (s->dnn_handle)
                return 0;
        if (!(s->dnn = gh_cudnn_get(err, err_size)))
                return -ENOENT;
        if ((st = s->dnn->Create(&h)) || (st = s->dnn->SetStream(h, (cudaStream_t)s->stream)) ||
            !(s->conv = calloc(GH_DCUDA_CONV_CACHE, sizeof(*s->conv)))) {
                gh_set_error(err, err_size, "cuDNN: %s", st ? s->dnn->GetErrorString(st) : "out of memory");
                if (h)
                        s->dnn->Destroy(h);
                return st ? -EIO : -ENOMEM;
        }
        s->dnn_handle = h;
        return 0;
#else
        gh_set_error(err, err_size, "built without cuDNN");
        return -EOPNOTSUPP;
#endif
}

int gh_dcuda_init(gh_dcuda *s, const gh_cuda *cu, CUstream stream, char *err, size_t err_size) {
        void *host = NULL;
        CUresult r;
        int e;

        *s = (gh_dcuda){.cu = cu, .stream = stream, .scratch_size = GH_DCUDA_SCRATCH_SIZE};
        e = load_kernels(s, err, err_size);
        if (e < 0)
                return e;
        r = cu->MemAlloc(&s->scratch, s->scratch_size);
        if (r != CUDA_SUCCESS)
                return fail(s, r, "cuMemAlloc", "(scratch)", err, err_size);
        r = cu->MemHostAlloc(&host, s->scratch_size, CU_MEMHOSTALLOC_PORTABLE); /* any slice's context */
        if (r != CUDA_SUCCESS)
                return fail(s, r, "cuMemHostAlloc", "(staging)", err, err_size);
        s->host = host;
        s->gemm = calloc(GH_DCUDA_GEMM_CACHE, sizeof(*s->gemm));
        if (!s->gemm) {
                gh_dcuda_fini(s);
                return -ENOMEM;
        }
        load_cublaslt(s);
        return 0;
}

void gh_dcuda_set_work(gh_dcuda *s, CUdeviceptr work, size_t size) {
        s->cast.valid = false;
        s->work = work;
        s->work_size = size;
        s->n_bias = 0;
        s->bias_used = 0;
}

int gh_dcuda_alloc_work(gh_dcuda *s, char *err, size_t err_size) {
        CUresult r = s->cu->MemAlloc(&s->work, GH_DCUDA_WORK_SIZE);

        if (r != CUDA_SUCCESS) {
                const char *name;
                int e = gh_cuda_errno(s->cu, r, &name);
                gh_set_error(err, err_size, "cuMemAlloc (work buffer): %s", name);
                s->work = 0;
                return e;
        }
        s->work_size = GH_DCUDA_WORK_SIZE;
        s->own_work = true;
        s->n_bias = 0;
        s->bias_used = 0;
        return 0;
}

void gh_dcuda_fini(gh_dcuda *s) {
        if (!s || !s->cu)
                return;
        if (s->scratch || s->host || s->work)
                s->cu->StreamSynchronize(s->stream); /* copies and GEMMs may still use them */
        for (uint32_t i = 0; i < s->n_graphs; i++)
                s->cu->GraphExecDestroy(s->graphs[i].exec);
        for (uint32_t i = 0; s->marks && i < GH_DBACKEND_MARKS; i++)
                if (s->marks[i])
                        s->cu->EventDestroy(s->marks[i]);
        free(s->marks);
        for (uint32_t i = 0; s->gemm && i < s->n_gemm; i++)
                gemm_plan_free(s->lt, &s->gemm[i]);
        free(s->gemm);
        if (s->lt && s->lt_handle)
                s->lt->Destroy((cublasLtHandle_t)s->lt_handle);
#ifdef GH_HAVE_CUDNN
        for (uint32_t i = 0; s->conv && i < s->n_conv; i++)
                conv_plan_free(s->dnn, &s->conv[i]);
        if (s->dnn_handle)
                s->dnn->Destroy((cudnnHandle_t)s->dnn_handle);
#endif
        free(s->conv);
        if (s->own_work)
                s->cu->MemFree(s->work);
        if (s->host)
                s->cu->MemFreeHost(s->host);
        if (s->scratch)
                s->cu->MemFree(s->scratch);
        *s = (gh_dcuda){0};
}

static int cuda_sync(void *be) {
        gh_dcuda *s = be;

        return check(s, s->cu->StreamSynchronize(s->stream));
}

static int cuda_mark(void *be, uint32_t i) {
        gh_dcuda *s = be;
        int r = 0;

        if (i >= GH_DBACKEND_MARKS)
                return -EINVAL;
        if (!s->marks) {
                if (!(s->marks = calloc(GH_DBACKEND_MARKS, sizeof(*s->marks))))
                        return -ENOMEM;
                for (uint32_t k = 0; k < GH_DBACKEND_MARKS && r >= 0; k++)
                        r = check(s, s->cu->EventCreate(&s->marks[k], CU_EVENT_DEFAULT));
                if (r < 0)
                        return r;
        }
        return check(s, s->cu->EventRecord(s->marks[i], s->stream));
}

static int cuda_marks_ms(void *be, uint32_t n, float *ret) {
        gh_dcuda *s = be;
        int r;

        if (!s->marks || n > GH_DBACKEND_MARKS)
                return -EINVAL;
        if (n == 0)
                return 0;
        if ((r = check(s, s->cu->EventSynchronize(s->marks[n - 1]))) < 0)
                return r;
        for (uint32_t i = 0; i < n && r >= 0; i++)
                r = check(s, s->cu->EventElapsedTime(&ret[i], s->marks[0], s->marks[i]));
        return r;
}

/* ---- CUDA graphs ---- */

/* The caller's key, with what else the recording depends on: the stream
 * (and so the slice's context), the mode, and the work buffer. */
static uint64_t graph_key(const gh_dcuda *s, uint64_t key) {
        key = gh_hash_mix(key, (uint64_t)(uintptr_t)s->stream);
        key = gh_hash_mix(key, (uint64_t)s->work ^ (uint64_t)s->work_size);
        return gh_hash_mix(key, (uint64_t)s->fp16 | (uint64_t)s->no_lt << 1 | (uint64_t)!!s->dnn_handle << 2);
}

static int cuda_graph_run(void *be, uint64_t key) {
        gh_dcuda *s = be;

        key = graph_key(s, key);
        s->cast.valid = false; /* a recording neither relies on it nor leaves it */
        for (uint32_t i = 0; i < s->n_graphs; i++)
                if (s->graphs[i].key == key)
                        return check(s, s->cu->GraphLaunch(s->graphs[i].exec, s->stream));
        return -ENOENT;
}

static int cuda_graph_begin(void *be) {
        gh_dcuda *s = be;

        if (s->no_graphs || !s->stream) /* the legacy stream cannot record */
                return -EOPNOTSUPP;
        s->cast.valid = false;
        return check(s, s->cu->StreamBeginCapture(s->stream, CU_STREAM_CAPTURE_MODE_THREAD_LOCAL));
}

static int cuda_graph_end(void *be, uint64_t key, int r) {
        gh_dcuda *s = be;
        CUgraph g = NULL;
        CUgraphExec exec = NULL;
        gh_dcuda_graph *slot;
        int e = check(s, s->cu->StreamEndCapture(s->stream, &g));

        if (r >= 0 && e >= 0)
                e = check(s, s->cu->GraphInstantiateWithFlags(&exec, g, 0));
        if (g)
                s->cu->GraphDestroy(g);
        if (r < 0 || e < 0)
                return r < 0 ? r : e;
        if (s->n_graphs < GH_DCUDA_GRAPHS)
                slot = &s->graphs[s->n_graphs++];
        else {
                slot = &s->graphs[s->next_graph++ % GH_DCUDA_GRAPHS];
                s->cu->GraphExecDestroy(slot->exec);
        }
        *slot = (gh_dcuda_graph){graph_key(s, key), exec};
        return 0;
}

const gh_dbackend gh_dbackend_cuda = {
        .graph_run = cuda_graph_run,
        .graph_begin = cuda_graph_begin,
        .graph_end = cuda_graph_end,
        .name = "cuda",
        .sync = cuda_sync,
        .mark = cuda_mark,
        .marks_ms = cuda_marks_ms,
        .conv2d = cuda_conv2d,
        .linear = cuda_linear,
        .linear_add = cuda_linear_add,
        .group_norm = cuda_group_norm,
        .layer_norm = cuda_layer_norm,
        .act = cuda_act,
        .geglu = cuda_geglu,
        .attention = cuda_attention,
        .upsample2x = cuda_upsample2x,
        .add = cuda_add,
        .add_channel = cuda_add_channel,
        .add_rows = cuda_add_rows,
        .concat = cuda_concat,
        .nchw_to_nlc = cuda_nchw_to_nlc,
        .nlc_to_nchw = cuda_nlc_to_nchw,
        .timestep_embedding = cuda_timestep_embedding,
        .embedding = cuda_embedding,
        .lincomb = cuda_lincomb,
        .scale_dim = cuda_scale_dim,
        .sum = cuda_sum,
        .upload = cuda_upload,
        .download = cuda_download,
};

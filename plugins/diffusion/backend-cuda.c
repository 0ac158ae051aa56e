/* The CUDA backend (backend-cuda.h): each op launches one kernel of
 * cuda/kernels.cu on the job's stream, with the shapes as arguments.
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
#include <stdlib.h>
#include <string.h>

#include "backend-cuda.h"
#include "common/util.h"

#define THREADS 256       /* a block, for 1-D kernels; RED in kernels.cu */
#define MAX_BLOCKS 65536  /* 1-D grids; the kernels loop over the rest */
#define LINEAR_TILE 16    /* LT in kernels.cu */
#define TC_TILE 64        /* TC_BM, TC_BN in kernels.cu */
#define TC_THREADS 128    /* TC_THREADS in kernels.cu */
#define MAX_GRID_Y 65535
/* A kernel argument: the address of a value, const or not. */
#define ARG(v) ((void *)&(v))
#define ATTN_TILE 8192 /* scores per tile (32 KiB of shared memory); longer key sets take several */
#define ATTN_DIMS 4    /* ATT_DIMS in kernels.cu: head dimensions per thread */

extern const char gh_dcuda_fatbin[];
extern const size_t gh_dcuda_fatbin_size;

enum {
        K_CONV2D,
        K_LINEAR,
        K_GROUP_NORM,
        K_LAYER_NORM,
        K_ACT,
        K_GEGLU,
        K_ATTENTION,
        K_UPSAMPLE2X,
        K_ADD,
        K_ADD_CHANNEL,
        K_CONCAT,
        K_NCHW_TO_NLC,
        K_NLC_TO_NCHW,
        K_EMBEDDING,
        K_LINCOMB,
        K_SCALE_DIM,
        K_SUM,
        K_CONVERT,
        K_CONV2D_TC,
        K_LINEAR_TC,
        K_COUNT,
};

_Static_assert(K_COUNT == GH_DCUDA_KERNELS, "GH_DCUDA_KERNELS must match the kernels");

static const char *const kernel_names[K_COUNT] = {
        [K_CONV2D] = "gh_conv2d",
        [K_LINEAR] = "gh_linear",
        [K_GROUP_NORM] = "gh_group_norm",
        [K_LAYER_NORM] = "gh_layer_norm",
        [K_ACT] = "gh_act",
        [K_GEGLU] = "gh_geglu",
        [K_ATTENTION] = "gh_attention",
        [K_UPSAMPLE2X] = "gh_upsample2x",
        [K_ADD] = "gh_add",
        [K_ADD_CHANNEL] = "gh_add_channel",
        [K_CONCAT] = "gh_concat",
        [K_NCHW_TO_NLC] = "gh_nchw_to_nlc",
        [K_NLC_TO_NCHW] = "gh_nlc_to_nchw",
        [K_EMBEDDING] = "gh_embedding",
        [K_LINCOMB] = "gh_lincomb",
        [K_SCALE_DIM] = "gh_scale_dim",
        [K_SUM] = "gh_sum",
        [K_CONVERT] = "gh_convert",
        [K_CONV2D_TC] = "gh_conv2d_tc",
        [K_LINEAR_TC] = "gh_linear_tc",
};

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
        return check(s, s->cu->MemcpyHtoDAsync(s->scratch, s->host, size, s->stream));
}

/* ---- GEMMs ---- */

static int cuda_conv2d(void *be, const gh_dt *x, const gh_dt *w, const gh_dt *b, int stride, const int pad[4],
                       gh_dt *y) {
        int ci = (int)x->shape[1], h = (int)x->shape[2], wd = (int)x->shape[3];
        int co = (int)w->shape[0], kh = (int)w->shape[2], kw = (int)w->shape[3];
        int ho = (int)y->shape[2], wo = (int)y->shape[3], wt = (int)w->dtype, bt = b ? (int)b->dtype : 0;
        int pad_top = pad[0], pad_left = pad[2];
        long long n = gh_dt_numel(y);
        void *bias = b ? b->data : NULL;
        void *params[] = {ARG(x->data), ARG(w->data), &wt, &bias, &bt, ARG(y->data), &n, &ci, &h, &wd, &co, &kh, &kw,
                          &stride, &pad_top, &pad_left, &ho, &wo};

        if (!weight_type(w) || (b && !weight_type(b)) || stride < 1)
                return -EINVAL;
        if (((gh_dcuda *)be)->fp16 && n > 0) {
                int batches = (int)x->shape[0];
                void *tc[] = {ARG(x->data), ARG(w->data), &wt, &bias, &bt, ARG(y->data), &batches, &ci, &h, &wd, &co,
                              &kh, &kw, &stride, &pad_top, &pad_left, &ho, &wo};
                int64_t cols = div_up((int64_t)batches * ho * wo, TC_TILE), rows = div_up(co, TC_TILE);
                if (cols > INT32_MAX || rows > MAX_GRID_Y)
                        return -E2BIG;
                return launch(be, K_CONV2D_TC, (unsigned)cols, (unsigned)rows, 1, TC_THREADS, 1, 0, tc);
        }
        return launch_n(be, K_CONV2D, n, params);
}

static int cuda_linear(void *be, const gh_dt *x, const gh_dt *w, const gh_dt *b, gh_dt *y) {
        int n = (int)w->shape[0], k = (int)w->shape[1], wt = (int)w->dtype, bt = b ? (int)b->dtype : 0;
        long long m = 1;
        void *bias = b ? b->data : NULL;
        void *params[] = {ARG(x->data), ARG(w->data), &wt, &bias, &bt, ARG(y->data), &m, &n, &k};

        if (!weight_type(w) || (b && !weight_type(b)) || x->n_dims < 1)
                return -EINVAL;
        for (uint32_t i = 0; i + 1 < x->n_dims; i++)
                m *= x->shape[i];
        if (m <= 0 || n <= 0)
                return 0;
        if (((gh_dcuda *)be)->fp16) {
                if (div_up(n, TC_TILE) > MAX_GRID_Y || div_up(m, TC_TILE) > INT32_MAX)
                        return -E2BIG;
                return launch(be, K_LINEAR_TC, (unsigned)div_up(m, TC_TILE), (unsigned)div_up(n, TC_TILE), 1,
                              TC_THREADS, 1, 0, params);
        }
        if (div_up(n, LINEAR_TILE) > MAX_GRID_Y || div_up(m, LINEAR_TILE) > INT32_MAX)
                return -E2BIG;
        return launch(be, K_LINEAR, (unsigned)div_up(m, LINEAR_TILE), (unsigned)div_up(n, LINEAR_TILE), 1,
                      LINEAR_TILE, LINEAR_TILE, 0, params);
}

/* ---- normalization ---- */

static int cuda_group_norm(void *be, const gh_dt *x, int groups, float eps, const gh_dt *gamma,
                           const gh_dt *beta, bool silu, gh_dt *y) {
        int c = (int)x->shape[1], gt = gamma ? (int)gamma->dtype : 0, bt = beta ? (int)beta->dtype : 0;
        int use_silu = silu;
        void *g = gamma ? gamma->data : NULL, *bb = beta ? beta->data : NULL;
        long long inner;
        void *params[] = {ARG(x->data), ARG(y->data), &g, &gt, &bb, &bt, &c, &groups, &inner, &eps, &use_silu};

        if ((gamma && !weight_type(gamma)) || (beta && !weight_type(beta)) || groups < 1 || c % groups)
                return -EINVAL;
        if (gh_dt_numel(x) == 0)
                return 0;
        inner = gh_dt_numel(x) / (x->shape[0] * c);
        return launch(be, K_GROUP_NORM, (unsigned)(x->shape[0] * groups), 1, 1, THREADS, 1, 0, params);
}

static int cuda_layer_norm(void *be, const gh_dt *x, const gh_dt *gamma, const gh_dt *beta, float eps, gh_dt *y) {
        long long n = x->shape[x->n_dims - 1];
        int gt = gamma ? (int)gamma->dtype : 0, bt = beta ? (int)beta->dtype : 0;
        void *g = gamma ? gamma->data : NULL, *bb = beta ? beta->data : NULL;
        void *params[] = {ARG(x->data), ARG(y->data), &g, &gt, &bb, &bt, &n, &eps};

        if ((gamma && !weight_type(gamma)) || (beta && !weight_type(beta)))
                return -EINVAL;
        if (n <= 0 || gh_dt_numel(x) == 0)
                return 0;
        return launch(be, K_LAYER_NORM, (unsigned)(gh_dt_numel(x) / n), 1, 1, THREADS, 1, 0, params);
}

/* ---- element-wise ---- */

static int cuda_act(void *be, gh_dact act, const gh_dt *x, gh_dt *y) {
        long long n = gh_dt_numel(x);
        int a = (int)act;
        void *params[] = {ARG(x->data), ARG(y->data), &n, &a};

        if (act != GH_DACT_SILU && act != GH_DACT_GELU && act != GH_DACT_QUICK_GELU)
                return -EINVAL;
        return launch_n(be, K_ACT, n, params);
}

static int cuda_geglu(void *be, const gh_dt *x, gh_dt *y) {
        long long n = gh_dt_numel(y), half = y->shape[y->n_dims - 1];
        void *params[] = {ARG(x->data), ARG(y->data), &n, &half};

        if (half <= 0)
                return 0;
        return launch_n(be, K_GEGLU, n, params);
}

static int cuda_add(void *be, const gh_dt *a, const gh_dt *b, gh_dt *y) {
        long long n = gh_dt_numel(y);
        void *params[] = {ARG(a->data), ARG(b->data), ARG(y->data), &n};

        return launch_n(be, K_ADD, n, params);
}

static int cuda_add_channel(void *be, const gh_dt *x, const gh_dt *v, gh_dt *y) {
        const int64_t planes = x->shape[0] * x->shape[1];
        long long n = gh_dt_numel(x), hw = planes ? n / planes : 0;
        void *params[] = {ARG(x->data), ARG(v->data), ARG(y->data), &n, &hw};

        if (hw <= 0)
                return 0;
        return launch_n(be, K_ADD_CHANNEL, n, params);
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

static int cuda_attention(void *be, const gh_dt *q, const gh_dt *k, const gh_dt *v, int heads, bool causal,
                          gh_dt *y) {
        int tq = (int)q->shape[1], tk = (int)k->shape[1], c = (int)q->shape[2], cz = causal, tile;
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
        tile = tk < ATTN_TILE ? tk : ATTN_TILE;
        scale = 1.0f / sqrtf((float)(c / heads));
        return launch(be, K_ATTENTION, (unsigned)tq, (unsigned)heads, (unsigned)q->shape[0], THREADS, 1,
                      (unsigned)tile * sizeof(float), params);
}

/* ---- data movement ---- */

static int cuda_upsample2x(void *be, const gh_dt *x, gh_dt *y) {
        long long n = gh_dt_numel(y), h = x->shape[2], w = x->shape[3];
        void *params[] = {ARG(x->data), ARG(y->data), &n, &h, &w};

        return launch_n(be, K_UPSAMPLE2X, n, params);
}

static int cuda_concat(void *be, const gh_dt *a, const gh_dt *b, gh_dt *y) {
        const int64_t batches = y->shape[0];
        long long n = gh_dt_numel(y), na, nb;
        void *params[] = {ARG(a->data), ARG(b->data), ARG(y->data), &n, &na, &nb};

        if (batches <= 0)
                return 0;
        na = gh_dt_numel(a) / batches;
        nb = gh_dt_numel(b) / batches;
        return launch_n(be, K_CONCAT, n, params);
}

static int transpose(gh_dcuda *s, int k, const gh_dt *x, const gh_dt *nchw, gh_dt *y) {
        long long n = gh_dt_numel(y), c = nchw->shape[1], hw = nchw->shape[2] * nchw->shape[3];
        void *params[] = {ARG(x->data), ARG(y->data), &n, &c, &hw};

        if (c <= 0 || hw <= 0)
                return 0;
        return launch_n(s, k, n, params);
}

static int cuda_nchw_to_nlc(void *be, const gh_dt *x, gh_dt *y) {
        return transpose(be, K_NCHW_TO_NLC, x, x, y);
}

static int cuda_nlc_to_nchw(void *be, const gh_dt *x, gh_dt *y) {
        return transpose(be, K_NLC_TO_NCHW, x, y, y);
}

/* On the host in double, like the CPU backend, then uploaded by rows
 * through the staging buffer. */
static int cuda_timestep_embedding(void *be, const float *t, gh_dt *y) {
        gh_dcuda *s = be;
        const int64_t batches = y->shape[0], dim = y->shape[1], half = dim / 2;
        const int64_t rows = dim > 0 ? (int64_t)(s->scratch_size / sizeof(float)) / dim : 0;
        int r;

        if (dim <= 0 || batches <= 0)
                return 0;
        if (rows <= 0)
                return -E2BIG;
        for (int64_t b0 = 0; b0 < batches; b0 += rows) {
                int64_t nb = batches - b0 < rows ? batches - b0 : rows;
                r = check(s, s->cu->StreamSynchronize(s->stream)); /* the staging buffer is free */
                if (r < 0)
                        return r;
                for (int64_t b = 0; b < nb; b++) {
                        float *row = s->host + b * dim;
                        for (int64_t i = 0; i < half; i++) {
                                double arg = t[b0 + b] * exp(-log(10000.0) * (double)i / (double)half);
                                row[i] = (float)cos(arg);
                                row[half + i] = (float)sin(arg);
                        }
                        if (dim % 2)
                                row[dim - 1] = 0.0f;
                }
                r = check(s, s->cu->MemcpyHtoDAsync((CUdeviceptr)(uintptr_t)y->data + (size_t)(b0 * dim) * sizeof(float),
                                                    s->host, (size_t)(nb * dim) * sizeof(float), s->stream));
                if (r < 0)
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

static int load_kernels(gh_dcuda *s, char *err, size_t err_size) {
        size_t size = (gh_dcuda_fatbin_size + 63) / 64 * 64;
        CUresult r;

        s->image = aligned_alloc(64, size); /* the driver wants the image aligned */
        if (!s->image) {
                gh_dcuda_fini(s);
                return -ENOMEM;
        }
        memcpy(s->image, gh_dcuda_fatbin, gh_dcuda_fatbin_size);
        r = s->cu->LibraryLoadData(&s->lib, s->image, NULL, NULL, 0, NULL, NULL, 0);
        if (r != CUDA_SUCCESS)
                return fail(s, r, "cuLibraryLoadData", NULL, err, err_size);
        for (int i = 0; i < K_COUNT; i++) {
                r = s->cu->LibraryGetKernel(&s->k[i], s->lib, kernel_names[i]);
                if (r != CUDA_SUCCESS)
                        return fail(s, r, "cuLibraryGetKernel", kernel_names[i], err, err_size);
        }
        return 0;
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
        return 0;
}

void gh_dcuda_fini(gh_dcuda *s) {
        if (!s || !s->cu)
                return;
        if (s->scratch || s->host)
                s->cu->StreamSynchronize(s->stream); /* copies may still use them */
        if (s->host)
                s->cu->MemFreeHost(s->host);
        if (s->scratch)
                s->cu->MemFree(s->scratch);
        if (s->lib)
                s->cu->LibraryUnload(s->lib);
        free(s->image);
        *s = (gh_dcuda){0};
}

static int cuda_sync(void *be) {
        gh_dcuda *s = be;

        return check(s, s->cu->StreamSynchronize(s->stream));
}

const gh_dbackend gh_dbackend_cuda = {
        .name = "cuda",
        .sync = cuda_sync,
        .conv2d = cuda_conv2d,
        .linear = cuda_linear,
        .group_norm = cuda_group_norm,
        .layer_norm = cuda_layer_norm,
        .act = cuda_act,
        .geglu = cuda_geglu,
        .attention = cuda_attention,
        .upsample2x = cuda_upsample2x,
        .add = cuda_add,
        .add_channel = cuda_add_channel,
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

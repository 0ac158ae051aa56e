/* The CPU backend (backend.h): the operations on host memory, run on the
 * job's threads through the gh_dcpu's parallel_for.
 *
 * Work is cut into tasks: GEMM tiles (convolution, linear), blocks of
 * queries (attention), groups (group norm), rows (layer norm, geglu,
 * embedding) or ranges of elements, threads x 8 of them where the tensor
 * allows (fewer for GEMMs on small images, but a multiple of the threads). An element's value never depends on the cut (see
 * backend-cpu-internal.h), so 1 thread and n threads agree to the bit. The
 * kernels themselves are in backend-cpu-kern.inc; here are the ops'
 * shapes, the cutting and the memory-bound ops. */
#include <errno.h>
#include <math.h>
#include <string.h>

#include "backend-cpu-internal.h"

#define GRAIN 16384 /* elements: the smallest range worth a task */
#define SUM_CHUNKS 1024

static int64_t min64(int64_t a, int64_t b) {
        return a < b ? a : b;
}

static int64_t max64(int64_t a, int64_t b) {
        return a > b ? a : b;
}

static int64_t div_up(int64_t a, int64_t b) {
        return (a + b - 1) / b;
}

static uint32_t threads_of(const gh_dcpu *cpu) {
        return cpu && cpu->parallel_for && cpu->threads > 1 ? cpu->threads : 1;
}

static bool weight_type(const gh_dt *t) {
        return t->dtype == GH_TENSOR_F32 || t->dtype == GH_TENSOR_F16 || t->dtype == GH_TENSOR_BF16;
}

void gh_dcpu_ld_row(float *dst, const void *src, gh_dtype_id t, int64_t off, int64_t n) {
        if (t == GH_TENSOR_F32) {
                memcpy(dst, (const float *)src + off, (size_t)n * sizeof(float));
                return;
        }
        for (int64_t i = 0; i < n; i++)
                dst[i] = gh_dcpu_ld(src, t, off + i);
}

/* fn(ctx, i) for i < n over the threads, or here when there is one. */
static int run(gh_dcpu *cpu, uint32_t n, void (*fn)(void *ctx, uint32_t i, uint32_t thread), void *ctx) {
        if (n == 0)
                return 0;
        if (n == 1 || threads_of(cpu) == 1) {
                for (uint32_t i = 0; i < n; i++)
                        fn(ctx, i, 0);
                return 0;
        }
        return cpu->parallel_for(cpu->pctx, n, fn, ctx);
}

/* ---- ranges: fn(arg, lo, hi) over [0, n) cut into chunks ---- */

typedef void range_fn(const void *arg, int64_t lo, int64_t hi);

typedef struct range_job {
        int64_t n;
        uint32_t chunks;
        range_fn *fn;
        const void *arg;
} range_job;

static void range_task(void *ctx, uint32_t i, uint32_t thread) {
        const range_job *j = ctx;

        j->fn(j->arg, j->n * i / j->chunks, j->n * (i + 1) / j->chunks);
}

/* Chunks of at least |grain| units, up to threads x 8 of them. */
static int run_range(gh_dcpu *cpu, int64_t n, int64_t grain, range_fn *fn, const void *arg) {
        int64_t chunks = min64(n / max64(grain, 1), (int64_t)threads_of(cpu) * 8);
        range_job j = {.n = n, .chunks = (uint32_t)max64(chunks, 1), .fn = fn, .arg = arg};

        if (n <= 0)
                return 0;
        return run(cpu, j.chunks, range_task, &j);
}

/* ---- GEMM: conv2d and linear ---- */

typedef struct gemm_job {
        const gh_dcpu_gemm *g;
        const gh_dcpu_isa *isa;
        int64_t mt, nt, mc, nc;
} gemm_job;

static void gemm_task(void *ctx, uint32_t i, uint32_t thread) {
        const gemm_job *j = ctx;
        int64_t m0 = i / j->nt * j->mc, n0 = i % j->nt * j->nc;

        j->isa->gemm_tile(j->g, m0, min64(j->g->m, m0 + j->mc), n0, min64(j->g->n, n0 + j->nc));
}

/* Rows of C per tile for mt tiles: a multiple of mr. */
static int64_t rows_per_tile(const gh_dcpu_gemm *g, const gh_dcpu_isa *isa, int64_t mt) {
        return div_up(div_up(g->m, mt), isa->mr) * isa->mr;
}

/* Tiles: rows by the packed block, columns cut for enough tasks (threads x
 * 8, so that they share out evenly) while the tile of C (all batches)
 * stays in cache. If that leaves few tasks (small images: each row cut
 * packs B once more), rows are cut just enough for the tasks to share out
 * evenly over the threads. */
static int gemm_run(gh_dcpu *cpu, const gh_dcpu_gemm *g) {
        const gh_dcpu_isa *isa = gh_dcpu_isa_get();
        const int64_t threads = threads_of(cpu), want = threads > 1 ? threads * 8 : 1;
        gemm_job j = {.g = g, .isa = isa};

        if (g->m <= 0 || g->n <= 0 || g->batches <= 0)
                return 0;
        j.mt = div_up(g->m, isa->mc_max);
        j.nt = div_up(want, j.mt);
        j.nt = max64(j.nt, div_up(g->n * g->batches, 1024));
        j.nt = min64(j.nt, div_up(g->n, 4 * isa->nr));
        j.nc = div_up(div_up(g->n, j.nt), isa->nr) * isa->nr;
        j.nt = div_up(g->n, j.nc);
        if (j.mt * j.nt < want) {
                int64_t limit = max64(j.mt, div_up(g->m, 4 * isa->mr));
                for (int64_t mt = j.mt; mt <= limit; mt++) {
                        if (div_up(g->m, rows_per_tile(g, isa, mt)) * j.nt % threads == 0) {
                                j.mt = mt;
                                break;
                        }
                }
        }
        j.mc = rows_per_tile(g, isa, j.mt);
        j.mt = div_up(g->m, j.mc);
        if (j.mt * j.nt > UINT32_MAX)
                return -EOVERFLOW;
        return run(cpu, (uint32_t)(j.mt * j.nt), gemm_task, &j);
}

static int cpu_conv2d(void *be, const gh_dt *x, const gh_dt *w, const gh_dt *b, int stride, const int pad[4],
                      gh_dt *y) {
        const int64_t batches = x->shape[0], ci = x->shape[1], h = x->shape[2], wd = x->shape[3];
        const int64_t co = w->shape[0], kh = w->shape[2], kw = w->shape[3];
        const int64_t ho = y->shape[2], wo = y->shape[3];

        if (!weight_type(w) || (b && !weight_type(b)) || stride < 1)
                return -EINVAL;
        bool plain = kh == 1 && kw == 1 && stride == 1 && !pad[0] && !pad[1] && !pad[2] && !pad[3];
        gh_dcpu_gemm g = {
                .m = co,
                .n = ho * wo,
                .k = ci * kh * kw,
                .kc = gh_dcpu_kc(ci * kh * kw),
                .batches = batches,
                .a = w->data,
                .at = w->dtype,
                .lda = ci * kh * kw,
                .bsrc = plain ? GH_DCPU_B_KN : GH_DCPU_B_IM2COL,
                .b = x->data,
                .bt = GH_TENSOR_F32,
                .ldb = h * wd,
                .b_batch = ci * h * wd,
                .h = h,
                .w = wd,
                .wo = wo,
                .kh = (int)kh,
                .kw = (int)kw,
                .stride = stride,
                .pad_top = pad[0],
                .pad_left = pad[2],
                .c = y->data,
                .ldc = ho * wo,
                .c_batch = co * ho * wo,
                .bias = b ? b->data : NULL,
                .bias_t = b ? b->dtype : GH_TENSOR_F32,
                .bias_per_row = true,
        };
        return gemm_run(be, &g);
}

static int linear(void *be, const gh_dt *x, const gh_dt *w, const gh_dt *b, gh_dt *y, bool accumulate) {
        const int64_t k = w->shape[1], n = w->shape[0];
        int64_t m = 1;

        if (!weight_type(w) || (b && !weight_type(b)) || x->n_dims < 1)
                return -EINVAL;
        for (uint32_t i = 0; i + 1 < x->n_dims; i++)
                m *= x->shape[i];
        gh_dcpu_gemm g = {
                .m = m,
                .n = n,
                .k = k,
                .kc = gh_dcpu_kc(k),
                .batches = 1,
                .a = x->data,
                .at = GH_TENSOR_F32,
                .lda = k,
                .bsrc = GH_DCPU_B_NK,
                .b = w->data,
                .bt = w->dtype,
                .ldb = k,
                .c = y->data,
                .ldc = n,
                .bias = b ? b->data : NULL,
                .bias_t = b ? b->dtype : GH_TENSOR_F32,
                .accumulate = accumulate,
        };
        return gemm_run(be, &g);
}

static int cpu_linear(void *be, const gh_dt *x, const gh_dt *w, const gh_dt *b, gh_dt *y) {
        return linear(be, x, w, b, y, false);
}

static int cpu_linear_add(void *be, const gh_dt *x, const gh_dt *w, const gh_dt *b, gh_dt *y) {
        return linear(be, x, w, b, y, true);
}

/* ---- attention ---- */

typedef struct attn_job {
        const gh_dcpu_attn *at;
        const gh_dcpu_isa *isa;
        int64_t qblocks;
} attn_job;

static void attn_task(void *ctx, uint32_t i, uint32_t thread) {
        const attn_job *j = ctx;
        int64_t bh = i / j->qblocks;

        j->isa->attn_block(j->at, bh / j->at->heads, bh % j->at->heads, i % j->qblocks * j->at->bq);
}

static int cpu_attention(void *be, const gh_dt *q, const gh_dt *k, const gh_dt *v, int heads, bool causal,
                         gh_dt *y) {
        const gh_dcpu_isa *isa = gh_dcpu_isa_get();
        gh_dcpu_attn at = {
                .q = q->data,
                .k = k->data,
                .v = v->data,
                .y = y->data,
                .tq = q->shape[1],
                .tk = k->shape[1],
                .heads = heads,
                .causal = causal,
        };

        if (heads < 1 || q->shape[2] % heads)
                return -EINVAL;
        at.d = q->shape[2] / heads;
        if (q->shape[0] <= 0 || at.tq <= 0 || at.d <= 0)
                return 0;
        if (at.tk <= 0)
                return -EINVAL; /* a softmax over nothing */
        int r = gh_dcpu_attn_blocks(isa, &at);
        if (r < 0)
                return r;
        attn_job j = {.at = &at, .isa = isa, .qblocks = div_up(at.tq, at.bq)};
        if (q->shape[0] * heads * j.qblocks > UINT32_MAX)
                return -EOVERFLOW;
        return run(be, (uint32_t)(q->shape[0] * heads * j.qblocks), attn_task, &j);
}

/* ---- normalization ---- */

typedef struct norm_job {
        const gh_dcpu_isa *isa;
        const float *x;
        float *y;
        const gh_dt *gamma, *beta;
        int64_t len, inner, groups; /* group norm: channels per group, H W, groups */
        float eps;
        bool silu;
} norm_job;

static void group_norm_range(const void *arg, int64_t lo, int64_t hi) {
        const norm_job *j = arg;
        const int64_t n = j->len * j->inner;

        for (int64_t gi = lo; gi < hi; gi++) {
                const float *x = j->x + gi * n;
                float *y = j->y + gi * n;
                int64_t c0 = gi % j->groups * j->len;
                double sum, m2;

                j->isa->stats(x, n, &sum, &m2);
                double mean = sum / (double)n, rstd = 1.0 / sqrt(m2 / (double)n + j->eps);
                for (int64_t c = 0; c < j->len; c++) {
                        double g = j->gamma ? gh_dcpu_ld(j->gamma->data, j->gamma->dtype, c0 + c) : 1.0;
                        float add = j->beta ? gh_dcpu_ld(j->beta->data, j->beta->dtype, c0 + c) : 0.0f;
                        j->isa->norm_apply(x + c * j->inner, y + c * j->inner, j->inner, (float)mean,
                                           (float)(rstd * g), add, j->silu);
                }
        }
}

static int cpu_group_norm(void *be, const gh_dt *x, int groups, float eps, const gh_dt *gamma, const gh_dt *beta,
                          bool silu, gh_dt *y) {
        const int64_t c = x->shape[1];

        if ((gamma && !weight_type(gamma)) || (beta && !weight_type(beta)) || groups < 1 || c % groups)
                return -EINVAL;
        if (gh_dt_numel(x) == 0)
                return 0;
        norm_job j = {
                .isa = gh_dcpu_isa_get(),
                .x = x->data,
                .y = y->data,
                .gamma = gamma,
                .beta = beta,
                .len = c / groups,
                .inner = gh_dt_numel(x) / (x->shape[0] * c),
                .groups = groups,
                .eps = eps,
                .silu = silu,
        };
        return run_range(be, x->shape[0] * groups, 1, group_norm_range, &j);
}

#define LN_CHUNK 256

static void layer_norm_range(const void *arg, int64_t lo, int64_t hi) {
        const norm_job *j = arg;
        const int64_t n = j->len;
        float g[LN_CHUNK], b[LN_CHUNK];

        for (int64_t r = lo; r < hi; r++) {
                const float *x = j->x + r * n;
                float *y = j->y + r * n;
                double sum, m2;

                j->isa->stats(x, n, &sum, &m2);
                double mean = sum / (double)n, rstd = 1.0 / sqrt(m2 / (double)n + j->eps);
                for (int64_t c = 0; c < n; c += LN_CHUNK) {
                        int64_t cnt = min64(LN_CHUNK, n - c);
                        for (int64_t i = 0; i < cnt; i++) {
                                g[i] = j->gamma ? gh_dcpu_ld(j->gamma->data, j->gamma->dtype, c + i) : 1.0f;
                                b[i] = j->beta ? gh_dcpu_ld(j->beta->data, j->beta->dtype, c + i) : 0.0f;
                        }
                        j->isa->norm_apply_vec(x + c, y + c, cnt, (float)mean, (float)rstd, g, b);
                }
        }
}

static int cpu_layer_norm(void *be, const gh_dt *x, const gh_dt *gamma, const gh_dt *beta, float eps, gh_dt *y) {
        const int64_t c = x->shape[x->n_dims - 1];

        if ((gamma && !weight_type(gamma)) || (beta && !weight_type(beta)))
                return -EINVAL;
        if (c <= 0)
                return 0;
        norm_job j = {.isa = gh_dcpu_isa_get(), .x = x->data, .y = y->data, .gamma = gamma, .beta = beta, .len = c,
                      .eps = eps};
        return run_range(be, gh_dt_numel(x) / c, max64(1, GRAIN / 4 / c), layer_norm_range, &j);
}

/* ---- elementwise ---- */

typedef struct ew_job {
        const gh_dcpu_isa *isa;
        gh_dact act;
        const float *a, *b;
        float *y;
        int64_t n;
} ew_job;

static void act_range(const void *arg, int64_t lo, int64_t hi) {
        const ew_job *j = arg;

        j->isa->act(j->act, j->a + lo, j->y + lo, hi - lo);
}

static int cpu_act(void *be, gh_dact act, const gh_dt *x, gh_dt *y) {
        ew_job j = {.isa = gh_dcpu_isa_get(), .act = act, .a = x->data, .y = y->data};

        if (act != GH_DACT_SILU && act != GH_DACT_GELU && act != GH_DACT_QUICK_GELU)
                return -EINVAL;
        return run_range(be, gh_dt_numel(x), GRAIN, act_range, &j);
}

static void geglu_range(const void *arg, int64_t lo, int64_t hi) {
        const ew_job *j = arg;

        for (int64_t r = lo; r < hi; r++)
                j->isa->gelu_mul(j->a + r * 2 * j->n, j->a + r * 2 * j->n + j->n, j->y + r * j->n, j->n);
}

static int cpu_geglu(void *be, const gh_dt *x, gh_dt *y) {
        const int64_t n = y->shape[y->n_dims - 1];
        ew_job j = {.isa = gh_dcpu_isa_get(), .a = x->data, .y = y->data, .n = n};

        if (n <= 0)
                return 0;
        return run_range(be, gh_dt_numel(y) / n, max64(1, GRAIN / n), geglu_range, &j);
}

static void add_range(const void *arg, int64_t lo, int64_t hi) {
        const ew_job *j = arg;

        for (int64_t i = lo; i < hi; i++)
                j->y[i] = j->a[i] + j->b[i];
}

static int cpu_add(void *be, const gh_dt *a, const gh_dt *b, gh_dt *y) {
        ew_job j = {.a = a->data, .b = b->data, .y = y->data};

        return run_range(be, gh_dt_numel(y), GRAIN, add_range, &j);
}

static void add_channel_range(const void *arg, int64_t lo, int64_t hi) {
        const ew_job *j = arg;

        for (int64_t p = lo; p < hi; p++) {
                const float v = j->b[p], *x = j->a + p * j->n;
                float *y = j->y + p * j->n;
                for (int64_t i = 0; i < j->n; i++)
                        y[i] = x[i] + v;
        }
}

static int cpu_add_channel(void *be, const gh_dt *x, const gh_dt *v, gh_dt *y) {
        const int64_t planes = x->shape[0] * x->shape[1];
        ew_job j = {.a = x->data, .b = v->data, .y = y->data, .n = planes ? gh_dt_numel(x) / planes : 0};

        if (j.n <= 0)
                return 0;
        return run_range(be, planes, max64(1, GRAIN / j.n), add_channel_range, &j);
}

static void add_rows_range(const void *arg, int64_t lo, int64_t hi) {
        const ew_job *j = arg;

        for (int64_t p = lo; p < hi; p++) {
                const float *x = j->a + p * j->n;
                float *y = j->y + p * j->n;
                for (int64_t i = 0; i < j->n; i++)
                        y[i] = x[i] + j->b[i];
        }
}

static int cpu_add_rows(void *be, const gh_dt *x, const gh_dt *v, gh_dt *y) {
        ew_job j = {.a = x->data, .b = v->data, .y = y->data, .n = gh_dt_numel(v)};

        return run_range(be, gh_dt_numel(x) / j.n, max64(1, GRAIN / j.n), add_rows_range, &j);
}

/* ---- data movement ---- */

typedef struct move_job {
        const float *a, *b;
        float *y;
        int64_t n, na, nb; /* concat: elements per batch item of a and b */
        int64_t c, hw;     /* transposes, upsample: channels and pixels; rows and width */
} move_job;

static void concat_range(const void *arg, int64_t lo, int64_t hi) {
        const move_job *j = arg;
        const int64_t row = j->na + j->nb;

        while (lo < hi) {
                int64_t bi = lo / row, off = lo % row, cnt;
                if (off < j->na) {
                        cnt = min64(j->na - off, hi - lo);
                        memcpy(j->y + lo, j->a + bi * j->na + off, (size_t)cnt * sizeof(float));
                } else {
                        cnt = min64(row - off, hi - lo);
                        memcpy(j->y + lo, j->b + bi * j->nb + off - j->na, (size_t)cnt * sizeof(float));
                }
                lo += cnt;
        }
}

static int cpu_concat(void *be, const gh_dt *a, const gh_dt *b, gh_dt *y) {
        const int64_t batches = y->shape[0];

        if (batches <= 0)
                return 0;
        move_job j = {.a = a->data, .b = b->data, .y = y->data, .na = gh_dt_numel(a) / batches,
                      .nb = gh_dt_numel(b) / batches};
        return run_range(be, gh_dt_numel(y), GRAIN, concat_range, &j);
}

#define TILE 32

/* y[b][p][c] = x[b][c][p] (to_nlc) or back, by tiles of TILE x TILE;
 * units: batch item x pixel tile. */
static void transpose_range(const void *arg, int64_t lo, int64_t hi, bool to_nlc) {
        const move_job *j = arg;
        const int64_t pt = div_up(j->hw, TILE), c = j->c, hw = j->hw;

        for (int64_t u = lo; u < hi; u++) {
                int64_t bi = u / pt, p0 = u % pt * TILE, p1 = min64(hw, p0 + TILE);
                const float *x = j->a + bi * c * hw;
                float *y = j->y + bi * c * hw;
                for (int64_t c0 = 0; c0 < c; c0 += TILE) {
                        int64_t c1 = min64(c, c0 + TILE);
                        for (int64_t p = p0; p < p1; p++)
                                for (int64_t ch = c0; ch < c1; ch++) {
                                        if (to_nlc)
                                                y[p * c + ch] = x[ch * hw + p];
                                        else
                                                y[ch * hw + p] = x[p * c + ch];
                                }
                }
        }
}

static void to_nlc_range(const void *arg, int64_t lo, int64_t hi) {
        transpose_range(arg, lo, hi, true);
}

static void to_nchw_range(const void *arg, int64_t lo, int64_t hi) {
        transpose_range(arg, lo, hi, false);
}

static int cpu_nchw_to_nlc(void *be, const gh_dt *x, gh_dt *y) {
        move_job j = {.a = x->data, .y = y->data, .c = x->shape[1], .hw = x->shape[2] * x->shape[3]};

        if (j.c <= 0 || j.hw <= 0)
                return 0;
        return run_range(be, x->shape[0] * div_up(j.hw, TILE), max64(1, GRAIN / (TILE * j.c)), to_nlc_range, &j);
}

static int cpu_nlc_to_nchw(void *be, const gh_dt *x, gh_dt *y) {
        move_job j = {.a = x->data, .y = y->data, .c = y->shape[1], .hw = y->shape[2] * y->shape[3]};

        if (j.c <= 0 || j.hw <= 0)
                return 0;
        return run_range(be, y->shape[0] * div_up(j.hw, TILE), max64(1, GRAIN / (TILE * j.c)), to_nchw_range, &j);
}

/* Units: input rows; hw is the input width. */
static void upsample_range(const void *arg, int64_t lo, int64_t hi) {
        const move_job *j = arg;
        const int64_t w = j->hw;

        for (int64_t r = lo; r < hi; r++) {
                const float *x = j->a + r * w;
                float *y = j->y + r * 4 * w;
                for (int64_t i = 0; i < w; i++)
                        y[2 * i] = y[2 * i + 1] = x[i];
                memcpy(y + 2 * w, y, (size_t)(2 * w) * sizeof(float));
        }
}

static int cpu_upsample2x(void *be, const gh_dt *x, gh_dt *y) {
        move_job j = {.a = x->data, .y = y->data, .hw = x->shape[3]};

        if (j.hw <= 0)
                return 0;
        return run_range(be, gh_dt_numel(x) / j.hw, max64(1, GRAIN / (4 * j.hw)), upsample_range, &j);
}

static int cpu_timestep_embedding(void *be, const float *t, gh_dt *y) {
        const int64_t batches = y->shape[0], dim = y->shape[1], half = dim / 2;
        float *out = y->data;

        for (int64_t b = 0; b < batches; b++) {
                float *row = out + b * dim;
                for (int64_t i = 0; i < half; i++) {
                        double arg = t[b] * exp(-log(10000.0) * (double)i / (double)half);
                        row[i] = (float)cos(arg);
                        row[half + i] = (float)sin(arg);
                }
                if (dim % 2)
                        row[dim - 1] = 0.0f;
        }
        return 0;
}

typedef struct embed_job {
        const int32_t *ids;
        const gh_dt *table, *pos;
        float *y;
        int64_t c, pos_rows;
} embed_job;

static void embed_range(const void *arg, int64_t lo, int64_t hi) {
        const embed_job *j = arg;

        for (int64_t i = lo; i < hi; i++) {
                float *y = j->y + i * j->c;
                gh_dcpu_ld_row(y, j->table->data, j->table->dtype, (int64_t)j->ids[i] * j->c, j->c);
                if (!j->pos)
                        continue;
                int64_t off = i % j->pos_rows * j->c;
                for (int64_t k = 0; k < j->c; k++)
                        y[k] += gh_dcpu_ld(j->pos->data, j->pos->dtype, off + k);
        }
}

static int cpu_embedding(void *be, const int32_t *ids, const gh_dt *table, const gh_dt *pos, gh_dt *y) {
        embed_job j = {.ids = ids, .table = table, .pos = pos, .y = y->data, .c = y->shape[y->n_dims - 1],
                       .pos_rows = pos ? pos->shape[0] : 0};

        if (!weight_type(table) || (pos && (!weight_type(pos) || j.pos_rows <= 0)))
                return -EINVAL;
        if (j.c <= 0)
                return 0;
        return run_range(be, gh_dt_numel(y) / j.c, max64(1, GRAIN / j.c), embed_range, &j);
}

typedef struct lincomb_job {
        uint32_t n;
        float coef[4];
        const float *x[4];
        float *y;
} lincomb_job;

static void lincomb_range(const void *arg, int64_t lo, int64_t hi) {
        const lincomb_job *j = arg;

        for (int64_t e = lo; e < hi; e++) {
                float acc = j->coef[0] * j->x[0][e];
                for (uint32_t i = 1; i < j->n; i++)
                        acc += j->coef[i] * j->x[i][e];
                j->y[e] = acc;
        }
}

static int cpu_lincomb(void *be, uint32_t n, const float *coef, const gh_dt *const *x, gh_dt *y) {
        lincomb_job j = {.n = n, .y = y->data};

        if (n > 4)
                return -EINVAL;
        if (n == 0) {
                memset(y->data, 0, (size_t)gh_dt_numel(y) * sizeof(float));
                return 0;
        }
        for (uint32_t i = 0; i < n; i++) {
                j.coef[i] = coef[i];
                j.x[i] = x[i]->data;
        }
        return run_range(be, gh_dt_numel(y), GRAIN, lincomb_range, &j);
}

typedef struct scale_job {
        const float *w;
        float *y;
        int64_t len, inner;
} scale_job;

static void scale_range(const void *arg, int64_t lo, int64_t hi) {
        const scale_job *j = arg;

        for (int64_t r = lo; r < hi; r++) {
                float f = j->w[r % j->len], *y = j->y + r * j->inner;
                for (int64_t i = 0; i < j->inner; i++)
                        y[i] *= f;
        }
}

static int cpu_scale_dim(void *be, const float *w, uint32_t dim, gh_dt *y) {
        scale_job j = {.w = w, .y = y->data, .inner = 1};
        int64_t outer = 1;

        if (dim >= y->n_dims)
                return -EINVAL;
        for (uint32_t i = 0; i < y->n_dims; i++) {
                if (i < dim)
                        outer *= y->shape[i];
                else if (i > dim)
                        j.inner *= y->shape[i];
        }
        j.len = y->shape[dim];
        if (j.len <= 0 || j.inner <= 0)
                return 0;
        return run_range(be, outer * j.len, max64(1, GRAIN / j.inner), scale_range, &j);
}

typedef struct sum_job {
        const float *x;
        int64_t n, chunks;
        double *part;
} sum_job;

/* Units: chunks of the tensor, fixed by its size alone. */
static void sum_range(const void *arg, int64_t lo, int64_t hi) {
        const sum_job *j = arg;

        for (int64_t c = lo; c < hi; c++) {
                int64_t e0 = j->n * c / j->chunks, e1 = j->n * (c + 1) / j->chunks;
                double s[4] = {0, 0, 0, 0};
                int64_t e = e0;
                for (; e + 4 <= e1; e += 4)
                        for (int k = 0; k < 4; k++)
                                s[k] += j->x[e + k];
                for (; e < e1; e++)
                        s[0] += j->x[e];
                j->part[c] = (s[0] + s[1]) + (s[2] + s[3]);
        }
}

static int cpu_sum(void *be, const gh_dt *x, double *ret) {
        double part[SUM_CHUNKS], s = 0.0;
        sum_job j = {.x = x->data, .n = gh_dt_numel(x), .part = part};

        if (x->dtype != GH_TENSOR_F32)
                return -EINVAL;
        j.chunks = max64(1, min64(SUM_CHUNKS, div_up(j.n, GRAIN)));
        int r = run_range(be, j.chunks, 1, sum_range, &j);
        if (r < 0)
                return r;
        for (int64_t c = 0; c < j.chunks && j.n > 0; c++)
                s += part[c];
        *ret = s;
        return 0;
}

typedef struct copy_job {
        const void *src;
        gh_dtype_id t;
        float *dst;
} copy_job;

static void copy_range(const void *arg, int64_t lo, int64_t hi) {
        const copy_job *j = arg;

        gh_dcpu_ld_row(j->dst + lo, j->src, j->t, lo, hi - lo);
}

static int cpu_upload(void *be, const float *src, gh_dt *y) {
        copy_job j = {.src = src, .t = GH_TENSOR_F32, .dst = y->data};

        if (y->dtype != GH_TENSOR_F32)
                return -EOPNOTSUPP;
        return run_range(be, gh_dt_numel(y), 16 * GRAIN, copy_range, &j);
}

static int cpu_download(void *be, const gh_dt *x, float *dst) {
        copy_job j = {.src = x->data, .t = x->dtype, .dst = dst};

        if (!weight_type(x))
                return -EOPNOTSUPP;
        return run_range(be, gh_dt_numel(x), 16 * GRAIN, copy_range, &j);
}

const gh_dbackend gh_dbackend_cpu = {
        .name = "cpu",
        .conv2d = cpu_conv2d,
        .linear = cpu_linear,
        .linear_add = cpu_linear_add,
        .group_norm = cpu_group_norm,
        .layer_norm = cpu_layer_norm,
        .act = cpu_act,
        .geglu = cpu_geglu,
        .attention = cpu_attention,
        .upsample2x = cpu_upsample2x,
        .add = cpu_add,
        .add_channel = cpu_add_channel,
        .add_rows = cpu_add_rows,
        .concat = cpu_concat,
        .nchw_to_nlc = cpu_nchw_to_nlc,
        .nlc_to_nchw = cpu_nlc_to_nchw,
        .timestep_embedding = cpu_timestep_embedding,
        .embedding = cpu_embedding,
        .lincomb = cpu_lincomb,
        .scale_dim = cpu_scale_dim,
        .sum = cpu_sum,
        .upload = cpu_upload,
        .download = cpu_download,
};

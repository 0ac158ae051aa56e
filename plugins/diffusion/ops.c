/* Checked tensor operations: every wrapper verifies shapes and dtypes, then
 * runs the backend's op unless the context is dry (planning). Activations
 * (inputs and outputs) are F32, or F16 where the context allows (c->half):
 * the operands of an op share one type, except that a convolution's or a
 * linear layer's input and output may differ and the vector that
 * add_channel and add_rows add may be of either; the samplers' ops
 * (lincomb, scale_dim, sum, upload), the timestep embedding and the
 * embedding table's lookup take F32 only. Weights may be F32, F16 or
 * BF16. */
#include <errno.h>
#include <stdio.h>
#include <string.h>

#include "runtime.h"

int gh_dctx_fail(gh_dctx *c, int r, const char *fmt, ...) {
        va_list ap;

        if (!c->err[0]) {
                va_start(ap, fmt);
                vsnprintf(c->err, sizeof(c->err), fmt, ap);
                va_end(ap);
        }
        return r;
}

bool gh_dctx_cancelled(gh_dctx *c) {
        return !c->dry && c->cancelled && c->cancelled(c->userdata);
}

const char *gh_dt_shape_str(const gh_dt *t, char *buf, size_t size) {
        size_t n = 0;

        n += (size_t) snprintf(buf, size, "[");
        for (uint32_t i = 0; i < t->n_dims && n < size; i++)
                n += (size_t) snprintf(buf + n, size - n, "%s%lld", i ? "," : "", (long long) t->shape[i]);
        if (n < size)
                snprintf(buf + n, size - n, "]");
        return buf;
}

static int alloc(gh_dctx *c, gh_dt *t, gh_dtype_id dtype, uint32_t n_dims, const int64_t *shape) {
        const size_t elt = gh_dt_elt(dtype);
        int64_t n = 1;
        int r;

        if (n_dims == 0 || n_dims > GH_DT_MAX_DIMS)
                return gh_dctx_fail(c, -EINVAL, "tensor of %u dimensions", n_dims);
        *t = (gh_dt){.dtype = dtype, .n_dims = n_dims};
        for (uint32_t i = 0; i < n_dims; i++) {
                if (shape[i] <= 0 || n > INT64_MAX / 4 / shape[i])
                        return gh_dctx_fail(c, -EINVAL, "bad tensor dimension %lld", (long long) shape[i]);
                t->shape[i] = shape[i];
                n *= shape[i];
        }
        r = gh_arena_alloc(c->arena, (size_t) n * elt, &t->data);
        if (r == -ENOSPC)
                return gh_dctx_fail(c, r, "workspace exhausted: %zu bytes more than planned", (size_t) n * elt);
        if (r < 0)
                return gh_dctx_fail(c, r, "workspace: %s", strerror(-r));
        return 0;
}

int gh_dt_alloc(gh_dctx *c, gh_dt *t, uint32_t n_dims, const int64_t *shape) {
        return alloc(c, t, c->act == GH_TENSOR_F16 && c->half ? GH_TENSOR_F16 : GH_TENSOR_F32, n_dims, shape);
}

int gh_dt_alloc_f32(gh_dctx *c, gh_dt *t, uint32_t n_dims, const int64_t *shape) {
        return alloc(c, t, GH_TENSOR_F32, n_dims, shape);
}

void gh_dt_drop(gh_dctx *c, gh_dt *t) {
        if (t->data)
                gh_arena_release(c->arena, t->data);
        *t = (gh_dt){0};
}

int gh_dt_reshape(gh_dctx *c, const gh_dt *t, gh_dt *ret, uint32_t n_dims, const int64_t *shape) {
        gh_dt v = {.dtype = t->dtype, .n_dims = n_dims, .data = t->data};
        char a[96];

        if (n_dims == 0 || n_dims > GH_DT_MAX_DIMS)
                return gh_dctx_fail(c, -EINVAL, "reshape to %u dimensions", n_dims);
        memcpy(v.shape, shape, n_dims * sizeof(int64_t));
        if (gh_dt_numel(&v) != gh_dt_numel(t))
                return gh_dctx_fail(c, -EINVAL, "reshape of %s to %lld elements", gh_dt_shape_str(t, a, sizeof(a)),
                                    (long long) gh_dt_numel(&v));
        *ret = v;
        return 0;
}

gh_dt gh_dt_slice0(const gh_dt *t, int64_t i0, int64_t n) {
        gh_dt v = *t;
        int64_t inner = gh_dt_numel(t) / t->shape[0];

        v.shape[0] = n;
        if (t->data)
                v.data = (char *) t->data + (size_t) (i0 * inner) * gh_dt_elt(t->dtype);
        return v;
}

/* ---- checks ---- */

static bool is_weight_dtype(gh_dtype_id d) {
        return d == GH_TENSOR_F32 || d == GH_TENSOR_F16 || d == GH_TENSOR_BF16;
}

static int want_dims(gh_dctx *c, const char *op, const char *what, const gh_dt *t, uint32_t n_dims) {
        if (n_dims && t->n_dims != n_dims)
                return gh_dctx_fail(c, -EINVAL, "%s: %s has %u dimensions, not %u", op, what, t->n_dims, n_dims);
        return 0;
}

static int want_f32(gh_dctx *c, const char *op, const char *what, const gh_dt *t, uint32_t n_dims) {
        if (t->dtype != GH_TENSOR_F32)
                return gh_dctx_fail(c, -EINVAL, "%s: %s must be F32", op, what);
        return want_dims(c, op, what, t, n_dims);
}

/* An activation: F32, or F16 where the context allows it. */
static int want_act(gh_dctx *c, const char *op, const char *what, const gh_dt *t, uint32_t n_dims) {
        if (t->dtype != GH_TENSOR_F32 && !(t->dtype == GH_TENSOR_F16 && c->half))
                return gh_dctx_fail(c, -EINVAL, "%s: %s must be F32%s", op, what, c->half ? " or F16" : "");
        return want_dims(c, op, what, t, n_dims);
}

/* An activation of the same type as |ref|'s. */
static int want_act_as(gh_dctx *c, const char *op, const char *what, const gh_dt *t, uint32_t n_dims,
                       const gh_dt *ref) {
        GH_TRY(want_act(c, op, what, t, n_dims));
        if (t->dtype != ref->dtype)
                return gh_dctx_fail(c, -EINVAL, "%s: %s is %s, not %s like the input", op, what,
                                    t->dtype == GH_TENSOR_F16 ? "F16" : "F32",
                                    ref->dtype == GH_TENSOR_F16 ? "F16" : "F32");
        return 0;
}

static int want_weight(gh_dctx *c, const char *op, const char *what, const gh_dt *t, uint32_t n_dims,
                       const int64_t *shape) {
        char a[96];

        if (!is_weight_dtype(t->dtype))
                return gh_dctx_fail(c, -EINVAL, "%s: %s has an unsupported dtype", op, what);
        if (t->n_dims != n_dims)
                goto bad;
        for (uint32_t i = 0; i < n_dims; i++)
                if (shape[i] >= 0 && t->shape[i] != shape[i])
                        goto bad;
        return 0;
bad:
        return gh_dctx_fail(c, -EINVAL, "%s: %s has shape %s", op, what, gh_dt_shape_str(t, a, sizeof(a)));
}

static bool same_shape(const gh_dt *a, const gh_dt *b) {
        if (a->n_dims != b->n_dims)
                return false;
        for (uint32_t i = 0; i < a->n_dims; i++)
                if (a->shape[i] != b->shape[i])
                        return false;
        return true;
}

static int want_same(gh_dctx *c, const char *op, const gh_dt *a, const gh_dt *b) {
        char x[96], y[96];

        if (!same_shape(a, b))
                return gh_dctx_fail(c, -EINVAL, "%s: shapes %s and %s differ", op, gh_dt_shape_str(a, x, sizeof(x)),
                                    gh_dt_shape_str(b, y, sizeof(y)));
        return 0;
}

static int run(gh_dctx *c, const char *op, int r) {
        if (r < 0)
                return gh_dctx_fail(c, r, "%s failed: %s", op, strerror(-r));
        return 0;
}

#define RUN(name, ...) (c->dry ? 0 : run(c, name, c->be->__VA_ARGS__))

/* ---- ops ---- */

int gh_op_conv2d(gh_dctx *c, const gh_dt *x, const gh_dt *w, const gh_dt *b, int stride, const int pad[4],
                 gh_dt *y) {
        int64_t ho, wo;

        GH_TRY(want_act(c, "conv2d", "input", x, 4));
        GH_TRY(want_weight(c, "conv2d", "weight", w, 4, (int64_t[]){-1, x->shape[1], -1, -1}));
        if (b)
                GH_TRY(want_weight(c, "conv2d", "bias", b, 1, (int64_t[]){w->shape[0]}));
        if (stride < 1 || pad[0] < 0 || pad[1] < 0 || pad[2] < 0 || pad[3] < 0)
                return gh_dctx_fail(c, -EINVAL, "conv2d: bad stride or padding");
        ho = (x->shape[2] + pad[0] + pad[1] - w->shape[2]) / stride + 1;
        wo = (x->shape[3] + pad[2] + pad[3] - w->shape[3]) / stride + 1;
        if (ho <= 0 || wo <= 0)
                return gh_dctx_fail(c, -EINVAL, "conv2d: input smaller than the kernel");
        GH_TRY(want_act(c, "conv2d", "output", y, 4));
        if (y->shape[0] != x->shape[0] || y->shape[1] != w->shape[0] || y->shape[2] != ho || y->shape[3] != wo)
                return gh_dctx_fail(c, -EINVAL, "conv2d: output shape");
        return RUN("conv2d", conv2d(c->be_state, x, w, b, stride, pad, y));
}

/* A linear layer's operands (op: its name); *w2 the weight as [N, K]. */
static int check_linear(gh_dctx *c, const char *op, const gh_dt *x, const gh_dt *w, const gh_dt *b, const gh_dt *y,
                        gh_dt *w2) {
        int64_t k = x->shape[x->n_dims - 1];
        char s[96];

        *w2 = *w;
        GH_TRY(want_act(c, op, "input", x, 0));
        /* A 1x1 conv weight is the same memory as a linear one. */
        if (w2->n_dims == 4 && w2->shape[2] == 1 && w2->shape[3] == 1)
                w2->n_dims = 2;
        GH_TRY(want_weight(c, op, "weight", w2, 2, (int64_t[]){-1, k}));
        if (b)
                GH_TRY(want_weight(c, op, "bias", b, 1, (int64_t[]){w2->shape[0]}));
        GH_TRY(want_act(c, op, "output", y, x->n_dims));
        for (uint32_t i = 0; i + 1 < x->n_dims; i++)
                if (y->shape[i] != x->shape[i])
                        return gh_dctx_fail(c, -EINVAL, "%s: output %s", op, gh_dt_shape_str(y, s, sizeof(s)));
        if (y->shape[y->n_dims - 1] != w2->shape[0])
                return gh_dctx_fail(c, -EINVAL, "%s: output %s", op, gh_dt_shape_str(y, s, sizeof(s)));
        return 0;
}

int gh_op_linear(gh_dctx *c, const gh_dt *x, const gh_dt *w, const gh_dt *b, gh_dt *y) {
        gh_dt w2;

        GH_TRY(check_linear(c, "linear", x, w, b, y, &w2));
        return RUN("linear", linear(c->be_state, x, &w2, b, y));
}

int gh_op_linear_add(gh_dctx *c, const gh_dt *x, const gh_dt *w, const gh_dt *b, gh_dt *y) {
        gh_dt w2;

        GH_TRY(check_linear(c, "linear_add", x, w, b, y, &w2));
        if (x->data && x->data == y->data)
                return gh_dctx_fail(c, -EINVAL, "linear_add: the output is the input");
        return RUN("linear_add", linear_add(c->be_state, x, &w2, b, y));
}

int gh_op_group_norm(gh_dctx *c, const gh_dt *x, int groups, float eps, const gh_dt *gamma, const gh_dt *beta,
                     bool silu, gh_dt *y) {
        GH_TRY(want_act(c, "group_norm", "input", x, 0));
        GH_TRY(want_act_as(c, "group_norm", "output", y, 0, x));
        if (x->n_dims < 2 || groups < 1 || x->shape[1] % groups)
                return gh_dctx_fail(c, -EINVAL, "group_norm: %lld channels in %d groups", (long long) x->shape[1],
                                    groups);
        GH_TRY(want_weight(c, "group_norm", "scale", gamma, 1, (int64_t[]){x->shape[1]}));
        GH_TRY(want_weight(c, "group_norm", "shift", beta, 1, (int64_t[]){x->shape[1]}));
        GH_TRY(want_same(c, "group_norm", x, y));
        return RUN("group_norm", group_norm(c->be_state, x, groups, eps, gamma, beta, silu, y));
}

int gh_op_layer_norm(gh_dctx *c, const gh_dt *x, const gh_dt *gamma, const gh_dt *beta, float eps, gh_dt *y) {
        int64_t n = x->shape[x->n_dims - 1];

        GH_TRY(want_act(c, "layer_norm", "input", x, 0));
        GH_TRY(want_act_as(c, "layer_norm", "output", y, 0, x));
        GH_TRY(want_weight(c, "layer_norm", "scale", gamma, 1, (int64_t[]){n}));
        GH_TRY(want_weight(c, "layer_norm", "shift", beta, 1, (int64_t[]){n}));
        GH_TRY(want_same(c, "layer_norm", x, y));
        return RUN("layer_norm", layer_norm(c->be_state, x, gamma, beta, eps, y));
}

int gh_op_act(gh_dctx *c, gh_dact act, const gh_dt *x, gh_dt *y) {
        GH_TRY(want_act(c, "act", "input", x, 0));
        GH_TRY(want_act_as(c, "act", "output", y, 0, x));
        GH_TRY(want_same(c, "act", x, y));
        return RUN("act", act(c->be_state, act, x, y));
}

int gh_op_geglu(gh_dctx *c, const gh_dt *x, gh_dt *y) {
        uint32_t d = x->n_dims - 1;

        GH_TRY(want_act(c, "geglu", "input", x, 0));
        GH_TRY(want_act_as(c, "geglu", "output", y, x->n_dims, x));
        for (uint32_t i = 0; i < d; i++)
                if (y->shape[i] != x->shape[i])
                        return gh_dctx_fail(c, -EINVAL, "geglu: output shape");
        if (x->shape[d] != 2 * y->shape[d])
                return gh_dctx_fail(c, -EINVAL, "geglu: input width %lld, output %lld", (long long) x->shape[d],
                                    (long long) y->shape[d]);
        return RUN("geglu", geglu(c->be_state, x, y));
}

int gh_op_attention(gh_dctx *c, const gh_dt *q, const gh_dt *k, const gh_dt *v, int heads, bool causal, gh_dt *y) {
        GH_TRY(want_act(c, "attention", "query", q, 3));
        GH_TRY(want_act_as(c, "attention", "key", k, 3, q));
        GH_TRY(want_act_as(c, "attention", "value", v, 3, q));
        GH_TRY(want_act_as(c, "attention", "output", y, 3, q));
        GH_TRY(want_same(c, "attention", k, v));
        GH_TRY(want_same(c, "attention", q, y));
        if (k->shape[0] != q->shape[0] || k->shape[2] != q->shape[2] || heads < 1 || q->shape[2] % heads)
                return gh_dctx_fail(c, -EINVAL, "attention: %lld channels, %lld keys of %lld, %d heads",
                                    (long long) q->shape[2], (long long) k->shape[1], (long long) k->shape[2],
                                    heads);
        return RUN("attention", attention(c->be_state, q, k, v, heads, causal, y));
}

int gh_op_upsample2x(gh_dctx *c, const gh_dt *x, gh_dt *y) {
        GH_TRY(want_act(c, "upsample", "input", x, 4));
        GH_TRY(want_act_as(c, "upsample", "output", y, 4, x));
        if (y->shape[0] != x->shape[0] || y->shape[1] != x->shape[1] || y->shape[2] != 2 * x->shape[2] ||
            y->shape[3] != 2 * x->shape[3])
                return gh_dctx_fail(c, -EINVAL, "upsample: output shape");
        return RUN("upsample", upsample2x(c->be_state, x, y));
}

int gh_op_add(gh_dctx *c, const gh_dt *a, const gh_dt *b, gh_dt *y) {
        GH_TRY(want_act(c, "add", "input", a, 0));
        GH_TRY(want_act_as(c, "add", "input", b, 0, a));
        GH_TRY(want_act_as(c, "add", "output", y, 0, a));
        GH_TRY(want_same(c, "add", a, b));
        GH_TRY(want_same(c, "add", a, y));
        return RUN("add", add(c->be_state, a, b, y));
}

int gh_op_add_channel(gh_dctx *c, const gh_dt *x, const gh_dt *v, gh_dt *y) {
        GH_TRY(want_act(c, "add_channel", "input", x, 4));
        GH_TRY(want_act(c, "add_channel", "vector", v, 2));
        GH_TRY(want_act_as(c, "add_channel", "output", y, 4, x));
        if (v->shape[0] != x->shape[0] || v->shape[1] != x->shape[1])
                return gh_dctx_fail(c, -EINVAL, "add_channel: vector shape");
        GH_TRY(want_same(c, "add_channel", x, y));
        return RUN("add_channel", add_channel(c->be_state, x, v, y));
}

int gh_op_add_rows(gh_dctx *c, const gh_dt *x, const gh_dt *v, gh_dt *y) {
        int64_t m = gh_dt_numel(v);

        GH_TRY(want_act(c, "add_rows", "input", x, 0));
        GH_TRY(want_act(c, "add_rows", "vector", v, 0));
        GH_TRY(want_act_as(c, "add_rows", "output", y, 0, x));
        if (m == 0 || gh_dt_numel(x) % m)
                return gh_dctx_fail(c, -EINVAL, "add_rows: the input is not whole rows of the vector");
        GH_TRY(want_same(c, "add_rows", x, y));
        return RUN("add_rows", add_rows(c->be_state, x, v, y));
}

int gh_op_concat(gh_dctx *c, const gh_dt *a, const gh_dt *b, gh_dt *y) {
        GH_TRY(want_act(c, "concat", "input", a, 0));
        GH_TRY(want_act_as(c, "concat", "input", b, a->n_dims, a));
        GH_TRY(want_act_as(c, "concat", "output", y, a->n_dims, a));
        for (uint32_t i = 0; i < a->n_dims; i++)
                if (i != 1 ? (b->shape[i] != a->shape[i] || y->shape[i] != a->shape[i])
                           : y->shape[1] != a->shape[1] + b->shape[1])
                        return gh_dctx_fail(c, -EINVAL, "concat: shapes");
        return RUN("concat", concat(c->be_state, a, b, y));
}

int gh_op_nchw_to_nlc(gh_dctx *c, const gh_dt *x, gh_dt *y) {
        GH_TRY(want_act(c, "nchw_to_nlc", "input", x, 4));
        GH_TRY(want_act_as(c, "nchw_to_nlc", "output", y, 3, x));
        if (y->shape[0] != x->shape[0] || y->shape[1] != x->shape[2] * x->shape[3] || y->shape[2] != x->shape[1])
                return gh_dctx_fail(c, -EINVAL, "nchw_to_nlc: shapes");
        return RUN("nchw_to_nlc", nchw_to_nlc(c->be_state, x, y));
}

int gh_op_nlc_to_nchw(gh_dctx *c, const gh_dt *x, gh_dt *y) {
        GH_TRY(want_act(c, "nlc_to_nchw", "input", x, 3));
        GH_TRY(want_act_as(c, "nlc_to_nchw", "output", y, 4, x));
        if (x->shape[0] != y->shape[0] || x->shape[1] != y->shape[2] * y->shape[3] || x->shape[2] != y->shape[1])
                return gh_dctx_fail(c, -EINVAL, "nlc_to_nchw: shapes");
        return RUN("nlc_to_nchw", nlc_to_nchw(c->be_state, x, y));
}

int gh_op_timestep_embedding(gh_dctx *c, const float *t, gh_dt *y) {
        GH_TRY(want_f32(c, "timestep_embedding", "output", y, 2));
        if (y->shape[1] % 2)
                return gh_dctx_fail(c, -EINVAL, "timestep_embedding: odd width");
        return RUN("timestep_embedding", timestep_embedding(c->be_state, t, y));
}

int gh_op_embedding(gh_dctx *c, const int32_t *ids, const gh_dt *table, const gh_dt *pos, gh_dt *y) {
        GH_TRY(want_weight(c, "embedding", "table", table, 2, (int64_t[]){-1, -1}));
        if (pos)
                GH_TRY(want_weight(c, "embedding", "positions", pos, 2, (int64_t[]){-1, table->shape[1]}));
        GH_TRY(want_f32(c, "embedding", "output", y, 2));
        if (y->shape[1] != table->shape[1])
                return gh_dctx_fail(c, -EINVAL, "embedding: output width");
        for (int64_t i = 0; ids && i < y->shape[0]; i++)
                if (ids[i] < 0 || ids[i] >= table->shape[0])
                        return gh_dctx_fail(c, -EINVAL, "embedding: token id %d outside the vocabulary of %lld",
                                            ids[i], (long long) table->shape[0]);
        return RUN("embedding", embedding(c->be_state, ids, table, pos, y));
}

int gh_op_lincomb(gh_dctx *c, uint32_t n, const float *coef, const gh_dt *const *x, gh_dt *y) {
        if (n == 0 || n > 4)
                return gh_dctx_fail(c, -EINVAL, "lincomb of %u terms", n);
        GH_TRY(want_f32(c, "lincomb", "output", y, 0));
        for (uint32_t i = 0; i < n; i++) {
                GH_TRY(want_f32(c, "lincomb", "input", x[i], 0));
                GH_TRY(want_same(c, "lincomb", x[i], y));
        }
        return RUN("lincomb", lincomb(c->be_state, n, coef, x, y));
}

int gh_op_copy(gh_dctx *c, const gh_dt *x, gh_dt *y) {
        return gh_op_lincomb(c, 1, (const float[]){1.0f}, (const gh_dt *const[]){x}, y);
}

int gh_op_scale_dim(gh_dctx *c, const float *w, uint32_t dim, gh_dt *y) {
        GH_TRY(want_f32(c, "scale_dim", "tensor", y, 0));
        if (dim >= y->n_dims)
                return gh_dctx_fail(c, -EINVAL, "scale_dim: dimension %u", dim);
        return RUN("scale_dim", scale_dim(c->be_state, w, dim, y));
}

int gh_op_sum(gh_dctx *c, const gh_dt *x, double *ret) {
        *ret = 0;
        GH_TRY(want_f32(c, "sum", "input", x, 0));
        return RUN("sum", sum(c->be_state, x, ret));
}

int gh_op_upload(gh_dctx *c, const float *src, gh_dt *y) {
        GH_TRY(want_f32(c, "upload", "tensor", y, 0));
        return RUN("upload", upload(c->be_state, src, y));
}

int gh_op_download(gh_dctx *c, const gh_dt *x, float *dst) {
        GH_TRY(want_act(c, "download", "tensor", x, 0));
        return RUN("download", download(c->be_state, x, dst));
}

/* gh_dbackend_profile (profile.h): every op of the table forwarded to the
 * measured backend, timed by device timestamps before and after it where
 * the backend has them (no waiting between ops, so the device runs as it
 * would unmeasured), else with CLOCK_MONOTONIC around the op and the
 * device's sync, so asynchronous work counts where it is queued. Each
 * time is booked to its kind of op and to its shape (the op with its
 * first operand's and its weight's or second operand's shapes). */
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "profile.h"

enum {
        P_CONV2D, P_LINEAR, P_LINEAR_ADD, P_GROUP_NORM, P_LAYER_NORM, P_ACT, P_GEGLU, P_ATTENTION, P_UPSAMPLE2X, P_ADD,
        P_ADD_CHANNEL, P_ADD_ROWS, P_CONCAT, P_NCHW_TO_NLC, P_NLC_TO_NCHW, P_TIMESTEP_EMBEDDING, P_EMBEDDING, P_LINCOMB,
        P_SCALE_DIM, P_SUM, P_UPLOAD, P_DOWNLOAD, P_COUNT,
};
_Static_assert(P_COUNT <= GH_PROFILE_OPS, "GH_PROFILE_OPS too small");

static const char *const names[P_COUNT] = {
        "conv2d", "linear", "linear_add", "group_norm", "layer_norm", "act", "geglu", "attention", "upsample2x", "add",
        "add_channel", "add_rows", "concat", "nchw_to_nlc", "nlc_to_nchw", "timestep_embedding", "embedding", "lincomb",
        "scale_dim", "sum", "upload", "download",
};

static double now(void) {
        struct timespec ts;

        clock_gettime(CLOCK_MONOTONIC, &ts);
        return (double) ts.tv_sec + ts.tv_nsec * 1e-9;
}

static void book(gh_profile *p, int op, uint16_t shape, double seconds) {
        p->seconds[op] += seconds;
        if (shape < GH_PROFILE_SHAPES)
                p->shape_seconds[shape] += seconds;
}

/* Books the timestamped pairs so far. */
static void flush(gh_profile *p) {
        float ms[GH_DBACKEND_MARKS];
        int r;

        if (p->n_marks == 0)
                return;
        r = p->inner->marks_ms(p->state, p->n_marks, ms);
        if (r < 0 && !p->error)
                p->error = r;
        for (uint32_t i = 0; r >= 0 && i + 1 < p->n_marks; i += 2)
                book(p, p->mark_op[i / 2], p->mark_shape[i / 2], (ms[i + 1] - ms[i]) * 1e-3);
        p->n_marks = 0;
}

static int dims(char *buf, size_t size, const gh_dt *t) {
        int n = snprintf(buf, size, "[");

        for (uint32_t i = 0; i < t->n_dims && n >= 0 && (size_t) n < size; i++)
                n += snprintf(buf + n, size - (size_t) n, "%s%lld", i ? "," : "", (long long) t->shape[i]);
        if (n >= 0 && (size_t) n < size)
                n += snprintf(buf + n, size - (size_t) n, "]");
        return n;
}

/* The index of this op's shape in the table (made on first sight), or
 * GH_PROFILE_SHAPES where the table is full. */
static uint16_t shape_of(gh_profile *p, int op, const gh_dt *a, const gh_dt *b) {
        char sig[GH_PROFILE_SIG], x[GH_PROFILE_SIG / 2] = "", w[GH_PROFILE_SIG / 2] = "";

        if (a)
                dims(x, sizeof(x), a);
        if (b)
                dims(w, sizeof(w), b);
        snprintf(sig, sizeof(sig), "%s %s%s%s", names[op], x, b ? " " : "", w);
        for (uint16_t i = 0; i < p->n_shapes; i++)
                if (strcmp(p->shape_sig[i], sig) == 0)
                        return p->shape_calls[i]++, i;
        if (p->n_shapes == GH_PROFILE_SHAPES)
                return GH_PROFILE_SHAPES;
        memcpy(p->shape_sig[p->n_shapes], sig, sizeof(sig));
        p->shape_calls[p->n_shapes] = 1;
        p->shape_seconds[p->n_shapes] = 0;
        return p->n_shapes++;
}

static int timestamp(gh_profile *p) {
        int r = p->inner->mark(p->state, p->n_marks++);

        if (r < 0 && !p->error)
                p->error = r;
        return r;
}

/* Runs |call| on the inner backend between two timestamps, or followed by
 * its sync, and books the time. */
#define TIMED_SHAPE(op, a, b, call)                                        \
        do {                                                               \
                gh_profile *p = be;                                        \
                uint16_t shape = shape_of(p, op, a, b);                    \
                double t0 = now();                                         \
                int r;                                                     \
                if (p->inner->mark) {                                      \
                        if (p->n_marks + 2 > GH_DBACKEND_MARKS)            \
                                flush(p);                                  \
                        p->mark_op[p->n_marks / 2] = op;                   \
                        p->mark_shape[p->n_marks / 2] = shape;             \
                        timestamp(p);                                      \
                        r = p->inner->call;                                \
                        timestamp(p);                                      \
                } else {                                                   \
                        r = p->inner->call;                                \
                        if (r >= 0 && p->inner->sync)                      \
                                r = p->inner->sync(p->state);              \
                        book(p, op, shape, now() - t0);                    \
                }                                                          \
                p->calls[op]++;                                            \
                return r;                                                  \
        } while (0)
#define TIMED(op, call) TIMED_SHAPE(op, NULL, NULL, call)

static int conv2d(void *be, const gh_dt *x, const gh_dt *w, const gh_dt *b, int stride, const int pad[4], gh_dt *y) {
        TIMED_SHAPE(P_CONV2D, x, w, conv2d(p->state, x, w, b, stride, pad, y));
}
static int linear(void *be, const gh_dt *x, const gh_dt *w, const gh_dt *b, gh_dt *y) {
        TIMED_SHAPE(P_LINEAR, x, w, linear(p->state, x, w, b, y));
}
static int linear_add(void *be, const gh_dt *x, const gh_dt *w, const gh_dt *b, gh_dt *y) {
        TIMED_SHAPE(P_LINEAR_ADD, x, w, linear_add(p->state, x, w, b, y));
}
static int group_norm(void *be, const gh_dt *x, int groups, float eps, const gh_dt *g, const gh_dt *b, bool silu,
                      gh_dt *y) {
        TIMED_SHAPE(P_GROUP_NORM, x, NULL, group_norm(p->state, x, groups, eps, g, b, silu, y));
}
static int layer_norm(void *be, const gh_dt *x, const gh_dt *g, const gh_dt *b, float eps, gh_dt *y) {
        TIMED_SHAPE(P_LAYER_NORM, x, NULL, layer_norm(p->state, x, g, b, eps, y));
}
static int act(void *be, gh_dact a, const gh_dt *x, gh_dt *y) {
        TIMED_SHAPE(P_ACT, x, NULL, act(p->state, a, x, y));
}
static int geglu(void *be, const gh_dt *x, gh_dt *y) {
        TIMED_SHAPE(P_GEGLU, x, NULL, geglu(p->state, x, y));
}
static int attention(void *be, const gh_dt *q, const gh_dt *k, const gh_dt *v, int heads, bool causal, gh_dt *y) {
        TIMED_SHAPE(P_ATTENTION, q, k, attention(p->state, q, k, v, heads, causal, y));
}
static int upsample2x(void *be, const gh_dt *x, gh_dt *y) {
        TIMED_SHAPE(P_UPSAMPLE2X, x, NULL, upsample2x(p->state, x, y));
}
static int add(void *be, const gh_dt *a, const gh_dt *b, gh_dt *y) {
        TIMED_SHAPE(P_ADD, a, NULL, add(p->state, a, b, y));
}
static int add_channel(void *be, const gh_dt *x, const gh_dt *v, gh_dt *y) {
        TIMED_SHAPE(P_ADD_CHANNEL, x, NULL, add_channel(p->state, x, v, y));
}
static int add_rows(void *be, const gh_dt *x, const gh_dt *v, gh_dt *y) {
        TIMED_SHAPE(P_ADD_ROWS, x, v, add_rows(p->state, x, v, y));
}
static int concat(void *be, const gh_dt *a, const gh_dt *b, gh_dt *y) {
        TIMED_SHAPE(P_CONCAT, a, b, concat(p->state, a, b, y));
}
static int nchw_to_nlc(void *be, const gh_dt *x, gh_dt *y) {
        TIMED_SHAPE(P_NCHW_TO_NLC, x, NULL, nchw_to_nlc(p->state, x, y));
}
static int nlc_to_nchw(void *be, const gh_dt *x, gh_dt *y) {
        TIMED_SHAPE(P_NLC_TO_NCHW, x, NULL, nlc_to_nchw(p->state, x, y));
}
static int timestep_embedding(void *be, const float *t, gh_dt *y) {
        TIMED(P_TIMESTEP_EMBEDDING, timestep_embedding(p->state, t, y));
}
static int embedding(void *be, const int32_t *ids, const gh_dt *table, const gh_dt *pos, gh_dt *y) {
        TIMED(P_EMBEDDING, embedding(p->state, ids, table, pos, y));
}
static int lincomb(void *be, uint32_t n, const float *coef, const gh_dt *const *x, gh_dt *y) {
        TIMED(P_LINCOMB, lincomb(p->state, n, coef, x, y));
}
static int scale_dim(void *be, const float *w, uint32_t dim, gh_dt *y) {
        TIMED(P_SCALE_DIM, scale_dim(p->state, w, dim, y));
}
static int sum(void *be, const gh_dt *x, double *ret) {
        TIMED(P_SUM, sum(p->state, x, ret));
}
static int upload(void *be, const float *src, gh_dt *y) {
        TIMED(P_UPLOAD, upload(p->state, src, y));
}
static int download(void *be, const gh_dt *x, float *dst) {
        TIMED(P_DOWNLOAD, download(p->state, x, dst));
}

const gh_dbackend gh_dbackend_profile = {
        .name = "profile",
        .conv2d = conv2d,
        .linear = linear,
        .linear_add = linear_add,
        .group_norm = group_norm,
        .layer_norm = layer_norm,
        .act = act,
        .geglu = geglu,
        .attention = attention,
        .upsample2x = upsample2x,
        .add = add,
        .add_channel = add_channel,
        .add_rows = add_rows,
        .concat = concat,
        .nchw_to_nlc = nchw_to_nlc,
        .nlc_to_nchw = nlc_to_nchw,
        .timestep_embedding = timestep_embedding,
        .embedding = embedding,
        .lincomb = lincomb,
        .scale_dim = scale_dim,
        .sum = sum,
        .upload = upload,
        .download = download,
};

void gh_profile_reset(gh_profile *p) {
        if (p->inner->mark)
                flush(p);
        memset(p->seconds, 0, sizeof(p->seconds));
        memset(p->calls, 0, sizeof(p->calls));
        p->n_shapes = 0;
        p->error = 0;
}

/* The GH_PROFILE_TOP shapes that took longest. */
static void print_shapes(const gh_profile *p, double total, FILE *f) {
        uint16_t order[GH_PROFILE_SHAPES];
        uint16_t n = p->n_shapes;

        for (uint16_t i = 0; i < n; i++)
                order[i] = i;
        for (uint16_t i = 1; i < n; i++)
                for (uint16_t j = i; j > 0 && p->shape_seconds[order[j]] > p->shape_seconds[order[j - 1]]; j--) {
                        uint16_t t = order[j];
                        order[j] = order[j - 1];
                        order[j - 1] = t;
                }
        fprintf(f, "\nthe %d longest shapes (op, first operand, weight or second operand):\n", GH_PROFILE_TOP);
        for (uint16_t i = 0; i < n && i < GH_PROFILE_TOP; i++)
                fprintf(f, "%10.3f ms %6lu calls %5.1f%%  %s\n", p->shape_seconds[order[i]] * 1e3,
                        p->shape_calls[order[i]], total > 0 ? 100 * p->shape_seconds[order[i]] / total : 0.0,
                        p->shape_sig[order[i]]);
}

void gh_profile_print(gh_profile *p, FILE *f) {
        int order[P_COUNT];
        double total = 0;

        if (p->inner->mark)
                flush(p);
        if (p->error)
                fprintf(f, "(device timestamps failed: error %d; the times are partial)\n", p->error);
        for (int i = 0; i < P_COUNT; i++) {
                order[i] = i;
                total += p->seconds[i];
        }
        for (int i = 1; i < P_COUNT; i++) /* insertion sort, largest first */
                for (int j = i; j > 0 && p->seconds[order[j]] > p->seconds[order[j - 1]]; j--) {
                        int t = order[j];
                        order[j] = order[j - 1];
                        order[j - 1] = t;
                }
        fprintf(f, "%-20s %10s %8s %7s\n", "op", "ms", "calls", "share");
        for (int i = 0; i < P_COUNT; i++)
                if (p->calls[order[i]])
                        fprintf(f, "%-20s %10.3f %8lu %6.1f%%\n", names[order[i]], p->seconds[order[i]] * 1e3,
                        p->calls[order[i]], total > 0 ? 100 * p->seconds[order[i]] / total : 0.0);
        fprintf(f, "%-20s %10.3f %s\n", "total", total * 1e3,
                p->inner->mark ? "(device time between timestamps; host gaps not counted)" : "");
        print_shapes(p, total, f);
}

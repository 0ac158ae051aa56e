/* gh_dbackend_profile (profile.h): every op of the table forwarded to the
 * measured backend, timed by device timestamps before and after it where
 * the backend has them (no waiting between ops, so the device runs as it
 * would unmeasured), else with CLOCK_MONOTONIC around the op and the
 * device's sync, so asynchronous work counts where it is queued. */
#include <stdlib.h>
#include <time.h>

#include "profile.h"

enum {
        P_CONV2D, P_LINEAR, P_GROUP_NORM, P_LAYER_NORM, P_ACT, P_GEGLU, P_ATTENTION, P_UPSAMPLE2X, P_ADD,
        P_ADD_CHANNEL, P_ADD_ROWS, P_CONCAT, P_NCHW_TO_NLC, P_NLC_TO_NCHW, P_TIMESTEP_EMBEDDING, P_EMBEDDING, P_LINCOMB,
        P_SCALE_DIM, P_SUM, P_UPLOAD, P_DOWNLOAD, P_COUNT,
};
_Static_assert(P_COUNT <= GH_PROFILE_OPS, "GH_PROFILE_OPS too small");

static const char *const names[P_COUNT] = {
        "conv2d", "linear", "group_norm", "layer_norm", "act", "geglu", "attention", "upsample2x", "add",
        "add_channel", "add_rows", "concat", "nchw_to_nlc", "nlc_to_nchw", "timestep_embedding", "embedding", "lincomb",
        "scale_dim", "sum", "upload", "download",
};

static double now(void) {
        struct timespec ts;

        clock_gettime(CLOCK_MONOTONIC, &ts);
        return (double) ts.tv_sec + ts.tv_nsec * 1e-9;
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
                p->seconds[p->mark_op[i / 2]] += (ms[i + 1] - ms[i]) * 1e-3;
        p->n_marks = 0;
}

static int timestamp(gh_profile *p) {
        int r = p->inner->mark(p->state, p->n_marks++);

        if (r < 0 && !p->error)
                p->error = r;
        return r;
}

/* Runs |call| on the inner backend between two timestamps, or followed by
 * its sync, and books the time. */
#define TIMED(op, call)                                                    \
        do {                                                               \
                gh_profile *p = be;                                        \
                double t0 = now();                                         \
                int r;                                                     \
                if (p->inner->mark) {                                      \
                        if (p->n_marks + 2 > GH_DBACKEND_MARKS)            \
                                flush(p);                                  \
                        p->mark_op[p->n_marks / 2] = op;                   \
                        timestamp(p);                                      \
                        r = p->inner->call;                                \
                        timestamp(p);                                      \
                } else {                                                   \
                        r = p->inner->call;                                \
                        if (r >= 0 && p->inner->sync)                      \
                                r = p->inner->sync(p->state);              \
                        p->seconds[op] += now() - t0;                      \
                }                                                          \
                p->calls[op]++;                                            \
                return r;                                                  \
        } while (0)

static int conv2d(void *be, const gh_dt *x, const gh_dt *w, const gh_dt *b, int stride, const int pad[4], gh_dt *y) {
        TIMED(P_CONV2D, conv2d(p->state, x, w, b, stride, pad, y));
}
static int linear(void *be, const gh_dt *x, const gh_dt *w, const gh_dt *b, gh_dt *y) {
        TIMED(P_LINEAR, linear(p->state, x, w, b, y));
}
static int group_norm(void *be, const gh_dt *x, int groups, float eps, const gh_dt *g, const gh_dt *b, bool silu,
                      gh_dt *y) {
        TIMED(P_GROUP_NORM, group_norm(p->state, x, groups, eps, g, b, silu, y));
}
static int layer_norm(void *be, const gh_dt *x, const gh_dt *g, const gh_dt *b, float eps, gh_dt *y) {
        TIMED(P_LAYER_NORM, layer_norm(p->state, x, g, b, eps, y));
}
static int act(void *be, gh_dact a, const gh_dt *x, gh_dt *y) {
        TIMED(P_ACT, act(p->state, a, x, y));
}
static int geglu(void *be, const gh_dt *x, gh_dt *y) {
        TIMED(P_GEGLU, geglu(p->state, x, y));
}
static int attention(void *be, const gh_dt *q, const gh_dt *k, const gh_dt *v, int heads, bool causal, gh_dt *y) {
        TIMED(P_ATTENTION, attention(p->state, q, k, v, heads, causal, y));
}
static int upsample2x(void *be, const gh_dt *x, gh_dt *y) {
        TIMED(P_UPSAMPLE2X, upsample2x(p->state, x, y));
}
static int add(void *be, const gh_dt *a, const gh_dt *b, gh_dt *y) {
        TIMED(P_ADD, add(p->state, a, b, y));
}
static int add_channel(void *be, const gh_dt *x, const gh_dt *v, gh_dt *y) {
        TIMED(P_ADD_CHANNEL, add_channel(p->state, x, v, y));
}
static int add_rows(void *be, const gh_dt *x, const gh_dt *v, gh_dt *y) {
        TIMED(P_ADD_ROWS, add_rows(p->state, x, v, y));
}
static int concat(void *be, const gh_dt *a, const gh_dt *b, gh_dt *y) {
        TIMED(P_CONCAT, concat(p->state, a, b, y));
}
static int nchw_to_nlc(void *be, const gh_dt *x, gh_dt *y) {
        TIMED(P_NCHW_TO_NLC, nchw_to_nlc(p->state, x, y));
}
static int nlc_to_nchw(void *be, const gh_dt *x, gh_dt *y) {
        TIMED(P_NLC_TO_NCHW, nlc_to_nchw(p->state, x, y));
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
        *p = (gh_profile){.inner = p->inner, .state = p->state};
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
}

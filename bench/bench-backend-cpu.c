/* bench-backend-cpu: GFLOP/s of the diffusion runtime's CPU backend on the
 * kernels that dominate Stable Diffusion 1.x, per instruction set and
 * thread count.
 *
 *   bench-backend-cpu [--all] [THREADS...]      (default threads: 1 2)
 *
 * Measures linear 4096x320 -> 320 and the 3x3 convolution 320 -> 320 at
 * 64x64 with F32 and F16 weights, and attention 4096 x 4096, 8 heads of 40;
 * --all adds the other shapes of a UNet step and GEGLU, group norm + SiLU.
 * Best of five runs after a warm-up, wall clock, through a persistent
 * thread pool like the worker's. Prints one line per measurement. */
#include <errno.h>
#include <pthread.h>
#include <stdatomic.h>
#include <stdbool.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "backend-cpu-internal.h"
#include "backend.h"

#define MAX_THREADS 64

/* ---- a persistent pool: parallel_for wakes the workers ---- */

typedef struct pool pool;

typedef struct worker_arg {
        pool *p;
        uint32_t index;
} worker_arg;

struct pool {
        pthread_mutex_t lock;
        pthread_cond_t wake, done;
        uint64_t generation;
        uint32_t threads, running;
        uint32_t n;
        atomic_uint next;
        void (*fn)(void *ctx, uint32_t i, uint32_t thread);
        void *ctx;
        bool quit;
        pthread_t tid[MAX_THREADS];
        worker_arg args[MAX_THREADS];
};

static void drain(pool *p, uint32_t index) {
        for (;;) {
                uint32_t i = atomic_fetch_add(&p->next, 1);
                if (i >= p->n)
                        return;
                p->fn(p->ctx, i, index);
        }
}

static void *worker_main(void *arg) {
        worker_arg *w = arg;
        pool *p = w->p;
        uint64_t seen = 0;

        pthread_mutex_lock(&p->lock);
        for (;;) {
                while (p->generation == seen && !p->quit)
                        pthread_cond_wait(&p->wake, &p->lock);
                if (p->quit)
                        break;
                seen = p->generation;
                pthread_mutex_unlock(&p->lock);
                drain(p, w->index);
                pthread_mutex_lock(&p->lock);
                if (--p->running == 0)
                        pthread_cond_signal(&p->done);
        }
        pthread_mutex_unlock(&p->lock);
        return NULL;
}

static int pool_for(void *pctx, uint32_t n, void (*fn)(void *ctx, uint32_t i, uint32_t thread), void *ctx) {
        pool *p = pctx;

        pthread_mutex_lock(&p->lock);
        p->n = n;
        p->fn = fn;
        p->ctx = ctx;
        atomic_store(&p->next, 0);
        p->running = p->threads - 1;
        p->generation++;
        pthread_cond_broadcast(&p->wake);
        pthread_mutex_unlock(&p->lock);
        drain(p, 0);
        pthread_mutex_lock(&p->lock);
        while (p->running > 0)
                pthread_cond_wait(&p->done, &p->lock);
        pthread_mutex_unlock(&p->lock);
        return 0;
}

static int pool_start(pool *p, uint32_t threads) {
        pthread_attr_t attr;

        memset(p, 0, sizeof(*p));
        pthread_mutex_init(&p->lock, NULL);
        pthread_cond_init(&p->wake, NULL);
        pthread_cond_init(&p->done, NULL);
        p->threads = threads;
        pthread_attr_init(&attr);
        pthread_attr_setstacksize(&attr, 8u << 20);
        for (uint32_t i = 1; i < threads; i++) {
                p->args[i] = (worker_arg){.p = p, .index = i};
                if (pthread_create(&p->tid[i], &attr, worker_main, &p->args[i]) != 0)
                        return -errno;
        }
        pthread_attr_destroy(&attr);
        return 0;
}

static void pool_stop(pool *p) {
        pthread_mutex_lock(&p->lock);
        p->quit = true;
        pthread_cond_broadcast(&p->wake);
        pthread_mutex_unlock(&p->lock);
        for (uint32_t i = 1; i < p->threads; i++)
                pthread_join(p->tid[i], NULL);
}

/* ---- data ---- */

static double now(void) {
        struct timespec ts;

        clock_gettime(CLOCK_MONOTONIC, &ts);
        return (double)ts.tv_sec + (double)ts.tv_nsec * 1e-9;
}

static float *rnd(int64_t n, float scale) {
        float *p = malloc((size_t)n * sizeof(float));

        if (!p)
                abort();
        for (int64_t i = 0; i < n; i++)
                p[i] = scale * ((float)rand() / (float)RAND_MAX - 0.5f);
        return p;
}

/* A weight of n values as F32, or F16 of magnitudes 2^-7 to 2^-6. */
static void *weights(int64_t n, gh_dtype_id t) {
        if (t == GH_TENSOR_F32)
                return rnd(n, 0.1f);
        uint16_t *h = malloc((size_t)n * sizeof(uint16_t));
        if (!h)
                abort();
        for (int64_t i = 0; i < n; i++)
                h[i] = (uint16_t)(0x2000 + rand() % 0x400 + (rand() & 1) * 0x8000);
        return h;
}

static gh_dt dt(gh_dtype_id t, void *data, int64_t a, int64_t b, int64_t c, int64_t d) {
        gh_dt x = {.dtype = t, .n_dims = 4, .shape = {a, b, c, d}, .data = data};

        if (d == 0)
                x.n_dims = c == 0 ? 2 : 3;
        return x;
}

/* ---- measurements ---- */

typedef enum { OP_LINEAR, OP_CONV, OP_ATTN, OP_GEGLU, OP_GN } op_kind;

typedef struct bench {
        const char *name;
        op_kind op;
        int64_t s[6]; /* linear m k n; conv b ci co h stride; attention t c heads; geglu/gn sizes */
} bench;

static double run_once(gh_dcpu *cpu, const bench *b, gh_dtype_id wt, void **bufs) {
        const gh_dbackend *be = &gh_dbackend_cpu;
        int pad[4] = {1, 1, 1, 1};
        int r = 0;
        double t0 = now();

        switch (b->op) {
        case OP_LINEAR: {
                gh_dt x = dt(GH_TENSOR_F32, bufs[0], b->s[0], b->s[1], 0, 0),
                      w = dt(wt, bufs[1], b->s[2], b->s[1], 0, 0),
                      y = dt(GH_TENSOR_F32, bufs[2], b->s[0], b->s[2], 0, 0);
                r = be->linear(cpu, &x, &w, NULL, &y);
                break;
        }
        case OP_CONV: {
                int64_t ho = (b->s[3] + 2 - 3) / b->s[4] + 1;
                gh_dt x = dt(GH_TENSOR_F32, bufs[0], b->s[0], b->s[1], b->s[3], b->s[3]),
                      w = dt(wt, bufs[1], b->s[2], b->s[1], 3, 3),
                      y = dt(GH_TENSOR_F32, bufs[2], b->s[0], b->s[2], ho, ho);
                r = be->conv2d(cpu, &x, &w, NULL, (int)b->s[4], pad, &y);
                break;
        }
        case OP_ATTN: {
                gh_dt q = dt(GH_TENSOR_F32, bufs[0], 1, b->s[0], b->s[1], 0),
                      k = dt(GH_TENSOR_F32, bufs[1], 1, b->s[0], b->s[1], 0),
                      y = dt(GH_TENSOR_F32, bufs[2], 1, b->s[0], b->s[1], 0);
                r = be->attention(cpu, &q, &k, &k, (int)b->s[2], false, &y);
                break;
        }
        case OP_GEGLU: {
                gh_dt x = dt(GH_TENSOR_F32, bufs[0], b->s[0], 2 * b->s[1], 0, 0),
                      y = dt(GH_TENSOR_F32, bufs[2], b->s[0], b->s[1], 0, 0);
                r = be->geglu(cpu, &x, &y);
                break;
        }
        case OP_GN: {
                gh_dt x = dt(GH_TENSOR_F32, bufs[0], 2, b->s[0], b->s[1], b->s[1]),
                      y = dt(GH_TENSOR_F32, bufs[2], 2, b->s[0], b->s[1], b->s[1]),
                      g = dt(wt, bufs[1], b->s[0], 1, 0, 0);
                g.n_dims = 1;
                r = be->group_norm(cpu, &x, 32, 1e-5f, &g, &g, true, &y);
                break;
        }
        }
        if (r < 0) {
                fprintf(stderr, "%s: %s\n", b->name, strerror(-r));
                exit(1);
        }
        return now() - t0;
}

/* Floating-point operations, sizes of the three buffers (floats). */
static double flops(const bench *b, int64_t n[3]) {
        const int64_t *s = b->s;

        switch (b->op) {
        case OP_LINEAR:
                n[0] = s[0] * s[1], n[1] = s[1] * s[2], n[2] = s[0] * s[2];
                return 2.0 * (double)(s[0] * s[1] * s[2]);
        case OP_CONV: {
                int64_t ho = (s[3] - 1) / s[4] + 1;
                n[0] = s[0] * s[1] * s[3] * s[3], n[1] = s[1] * s[2] * 9, n[2] = s[0] * s[2] * ho * ho;
                return 2.0 * (double)(s[0] * s[1] * s[2] * 9 * ho * ho);
        }
        case OP_ATTN:
                n[0] = n[1] = n[2] = s[0] * s[1];
                return 4.0 * (double)(s[0] * s[0] * s[1]);
        case OP_GEGLU:
                n[0] = 2 * s[0] * s[1], n[1] = 1, n[2] = s[0] * s[1];
                return 0.0;
        case OP_GN:
                n[0] = n[2] = 2 * s[0] * s[1] * s[1], n[1] = s[0];
                return 0.0;
        }
        return 0.0;
}

static void measure(const bench *b, gh_dtype_id wt, const uint32_t *threads, int n_threads, pool *pools) {
        int64_t n[3] = {1, 1, 1};
        double f = flops(b, n);
        void *bufs[3] = {rnd(n[0], 2.0f), weights(n[1], wt), rnd(n[2], 1.0f)};

        printf("%-40s %-3s", b->name, wt == GH_TENSOR_F16 ? "F16" : "F32");
        for (int t = 0; t < n_threads; t++) {
                gh_dcpu cpu = {.parallel_for = pool_for, .pctx = &pools[t], .threads = threads[t]};
                double best = 1e30;
                run_once(&cpu, b, wt, bufs);
                for (int i = 0; i < 5; i++) {
                        double s = run_once(&cpu, b, wt, bufs);
                        best = s < best ? s : best;
                }
                if (f > 0)
                        printf("  %2u thr %6.1f GFLOP/s", threads[t], f / best * 1e-9);
                else
                        printf("  %2u thr %7.2f ms", threads[t], best * 1e3);
        }
        printf("\n");
        fflush(stdout);
        for (int i = 0; i < 3; i++)
                free(bufs[i]);
}

static const bench main_set[] = {
        {"linear 4096x320 -> 320", OP_LINEAR, {4096, 320, 320}},
        {"conv3x3 320 -> 320, 64x64", OP_CONV, {1, 320, 320, 64, 1}},
        {"attention 4096x4096, 8 heads x 40", OP_ATTN, {4096, 320, 8}},
};

static const bench extra_set[] = {
        {"linear 4096x320 -> 2560 (GEGLU in)", OP_LINEAR, {4096, 320, 2560}},
        {"linear 4096x1280 -> 320 (FF out)", OP_LINEAR, {4096, 1280, 320}},
        {"linear 154x768 -> 320 (context K/V)", OP_LINEAR, {154, 768, 320}},
        {"conv3x3 320 -> 320, 64x64, stride 2", OP_CONV, {1, 320, 320, 64, 2}},
        {"conv3x3 640 -> 640, 32x32", OP_CONV, {1, 640, 640, 32, 1}},
        {"conv3x3 1280 -> 1280, 16x16", OP_CONV, {1, 1280, 1280, 16, 1}},
        {"conv3x3 1280 -> 1280, 8x8, batch 2", OP_CONV, {2, 1280, 1280, 8, 1}},
        {"conv3x3 320 -> 4, 64x64 (conv_out)", OP_CONV, {1, 320, 4, 64, 1}},
        {"conv3x3 128 -> 128, 256x256 (VAE)", OP_CONV, {1, 128, 128, 256, 1}},
        {"attention 1024x1024, 8 heads x 80", OP_ATTN, {1024, 640, 8}},
        {"geglu 8192 x 1280", OP_GEGLU, {8192, 1280}},
        {"group_norm+silu 2x320x64x64", OP_GN, {320, 64}},
};

int main(int argc, char **argv) {
        static const char *const isas[] = {"base", "avx2"};
        uint32_t threads[16];
        pool pools[16];
        int n_threads = 0;
        bool all = false;

        for (int i = 1; i < argc; i++) {
                if (strcmp(argv[i], "--all") == 0) {
                        all = true;
                        continue;
                }
                long t = strtol(argv[i], NULL, 10);
                if (t < 1 || t > MAX_THREADS || n_threads == 16) {
                        fprintf(stderr, "usage: %s [--all] [THREADS...]\n", argv[0]);
                        return 2;
                }
                threads[n_threads++] = (uint32_t)t;
        }
        if (n_threads == 0) {
                threads[n_threads++] = 1;
                threads[n_threads++] = 2;
        }
        for (int t = 0; t < n_threads; t++)
                if (pool_start(&pools[t], threads[t]) < 0)
                        return 1;
        for (size_t s = 0; s < sizeof(isas) / sizeof(isas[0]); s++) {
                if (gh_dcpu_isa_force(isas[s]) < 0)
                        continue;
                printf("[%s]\n", isas[s]);
                for (size_t i = 0; i < sizeof(main_set) / sizeof(main_set[0]); i++) {
                        measure(&main_set[i], GH_TENSOR_F32, threads, n_threads, pools);
                        if (main_set[i].op != OP_ATTN)
                                measure(&main_set[i], GH_TENSOR_F16, threads, n_threads, pools);
                }
                for (size_t i = 0; all && i < sizeof(extra_set) / sizeof(extra_set[0]); i++)
                        measure(&extra_set[i], GH_TENSOR_F16, threads, n_threads, pools);
        }
        for (int t = 0; t < n_threads; t++)
                pool_stop(&pools[t]);
        return 0;
}

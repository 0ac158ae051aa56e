/* gpuhost-sd: runs one part of the diffusion runtime on a checkpoint read
 * from files (a .safetensors file or a diffusers-style folder), on inputs
 * read from safetensors files (FILE:TENSOR), and writes the result as .npy
 * (float32, C order). For tests, debugging and measuring:
 *
 *   gpuhost-sd --model PATH [--tokenizer DIR] [--motion PATH --frames N]
 *              [--threads N | --cuda] COMMAND ...
 *     tokenize PROMPT
 *     encode-text (--ids F:T | --prompt TEXT) [--clip-skip N] -o OUT.npy
 *     unet --x F:T --t F:T --context F:T [--repeat N] -o OUT.npy
 *     vae-decode --latent F:T -o OUT.npy
 *     vae-encode --image F:T -o OUT.npy            (image in 0..1)
 *     sample [--prompt P] [--negative N] [--sampler S] [--steps N] [--cfg C]
 *            [--seed N] [--width W] [--height H] [--v-pred]
 *            [--init F:T --strength S] [--repeat N] [-o LATENT.npy] [--image OUT.ppm]
 *     plan [--width W] [--height H] [--batch B] [--steps N] [--sampler S]
 *
 * --motion adds an AnimateDiff motion module (a file of its own) and
 * --frames N makes "unet" and "sample" work on videos of N frames (the
 * batch: whole videos; sample makes one of N frames).
 *
 * "sample" runs the whole pipeline (prompts, sampler, decode), printing the
 * time per phase (with --repeat N, N more times in the same process, each
 * line "warm: ...": the kernels loaded, cuBLASLt initialised, as in a
 * worker that has run a job before); --init takes an encoded latent for
 * img2img. "unet
 * --repeat N" evaluates N more times and prints the time per evaluation
 * (each ends with the output's download, so GPU work is counted whole).
 * --profile then prints the time of each kind of op over the whole command
 * (after unet's warm-up evaluation): device time from timestamps around
 * each op on the GPU; on the CPU, each op waits for the device, so the
 * totals are slower than a plain run, but say where the time goes.
 * Measured ops run one by one, never as a recorded graph.
 *
 * --cuda runs on GPU 0 through the CUDA backend (where it was built; with
 * --fp16, its convolutions and GEMMs run on tensor cores in fp16, and
 * attention on the flash kernel, except in sample's text encoder and
 * img2img encode, which stay in fp32 as a precision=fp16 job's do; UNet evaluations are recorded once as a
 * CUDA graph and replayed, unless --no-graphs; --cudnn sends the fp16
 * convolutions wider than 1x1 through cuDNN instead of im2col and
 * cuBLASLt, to compare): the
 * weights are copied to device memory once, the workspace is device memory,
 * and the work runs on one stream (the phase times then count queued work
 * where it finishes; the total is exact). */
#include <errno.h>
#include <getopt.h>
#include <inttypes.h>
#include <pthread.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "dfiles.h"
#include "pipeline.h"
#include "profile.h"
#include "prompt.h"
#ifdef GH_HAVE_CUDA_BACKEND
#include "backend-cuda.h"
#endif

/* ---- a thread pool for the CPU backend ---- */

typedef struct pool {
        pthread_t th[64];
        uint32_t n;
        pthread_mutex_t lock;
        pthread_cond_t go, done;
        uint64_t gen;
        uint32_t busy;
        bool quit;
        void (*fn)(void *, uint32_t, uint32_t);
        void *ctx;
        uint32_t items;
        atomic_uint next;
} pool;

static void pool_drain(pool *p, uint32_t thread) {
        uint32_t i;

        while ((i = atomic_fetch_add(&p->next, 1)) < p->items)
                p->fn(p->ctx, i, thread);
}

static void *pool_main(void *arg) {
        pool *p = ((void **) arg)[0];
        uint32_t me = (uint32_t) (uintptr_t) ((void **) arg)[1];
        uint64_t seen = 0;

        free(arg);
        pthread_mutex_lock(&p->lock);
        for (;;) {
                while (p->gen == seen && !p->quit)
                        pthread_cond_wait(&p->go, &p->lock);
                if (p->quit)
                        break;
                seen = p->gen;
                pthread_mutex_unlock(&p->lock);
                pool_drain(p, me);
                pthread_mutex_lock(&p->lock);
                if (--p->busy == 0)
                        pthread_cond_signal(&p->done);
        }
        pthread_mutex_unlock(&p->lock);
        return NULL;
}

static int pool_for(void *pctx, uint32_t n, void (*fn)(void *, uint32_t, uint32_t), void *ctx) {
        pool *p = pctx;

        if (!n || !fn)
                return -EINVAL;
        pthread_mutex_lock(&p->lock);
        p->fn = fn;
        p->ctx = ctx;
        p->items = n;
        atomic_store(&p->next, 0);
        p->busy = p->n - 1;
        p->gen++;
        pthread_cond_broadcast(&p->go);
        pthread_mutex_unlock(&p->lock);
        pool_drain(p, 0);
        pthread_mutex_lock(&p->lock);
        while (p->busy)
                pthread_cond_wait(&p->done, &p->lock);
        pthread_mutex_unlock(&p->lock);
        return 0;
}

static void pool_start(pool *p, uint32_t n) {
        *p = (pool){.n = n ? n : 1};
        pthread_mutex_init(&p->lock, NULL);
        pthread_cond_init(&p->go, NULL);
        pthread_cond_init(&p->done, NULL);
        for (uint32_t i = 1; i < p->n; i++) {
                void **arg = malloc(2 * sizeof(void *));
                arg[0] = p;
                arg[1] = (void *) (uintptr_t) i;
                pthread_create(&p->th[i], NULL, pool_main, arg);
        }
}

static void pool_stop(pool *p) {
        pthread_mutex_lock(&p->lock);
        p->quit = true;
        pthread_cond_broadcast(&p->go);
        pthread_mutex_unlock(&p->lock);
        for (uint32_t i = 1; i < p->n; i++)
                pthread_join(p->th[i], NULL);
}

/* ---- the GPU (--cuda) ---- */

#ifdef GH_HAVE_CUDA_BACKEND
typedef struct dev_tensor {
        char *name;
        CUdeviceptr p;
} dev_tensor;

typedef struct gpu {
        gh_cuda *cu;
        CUcontext ctx;
        CUstream stream;
        gh_dcuda be;
        const gh_dsource *files;
        gh_dsource source; /* the files' tensors, as device copies */
        dev_tensor *t;
        size_t n;
        CUdeviceptr arena;
} gpu;

/* Weights from the files, copied to the device on first use. */
static int gpu_lookup(void *ctx, const char *name, gh_tensor *ret) {
        gpu *g = ctx;
        int r = g->files->lookup(g->files->ctx, name, ret);
        dev_tensor *v;
        CUdeviceptr p;

        if (r < 0 || ret->dtype == GH_TENSOR_OTHER)
                return r;
        for (size_t i = 0; i < g->n; i++)
                if (strcmp(g->t[i].name, name) == 0)
                        return ret->data = (void *) g->t[i].p, 0;
        if (!(v = realloc(g->t, (g->n + 1) * sizeof(*v))))
                return -ENOMEM;
        g->t = v;
        if ((r = gh_cuda_errno(g->cu, g->cu->MemAlloc(&p, ret->bytes ? ret->bytes : 1), NULL)) < 0)
                return r;
        char *copy = strdup(name);
        if (!copy || (r = gh_cuda_errno(g->cu, g->cu->MemcpyHtoD(p, ret->data, ret->bytes), NULL)) < 0) {
                free(copy);
                g->cu->MemFree(p);
                return copy ? r : -ENOMEM;
        }
        g->t[g->n++] = (dev_tensor){.name = copy, .p = p};
        ret->data = (void *) p;
        return 0;
}

static int gpu_open(gpu *g, const gh_dsource *files, char *err, size_t n) {
        CUdevice dev;
        int r;

        *g = (gpu){.files = files, .source = {.lookup = gpu_lookup, .ctx = g}};
        if ((r = gh_cuda_load(NULL, &g->cu, err, n)) < 0)
                return r;
        if ((r = gh_cuda_errno(g->cu, g->cu->DeviceGet(&dev, 0), NULL)) < 0 ||
            (r = gh_cuda_errno(g->cu, g->cu->DevicePrimaryCtxRetain(&g->ctx, dev), NULL)) < 0 ||
            (r = gh_cuda_errno(g->cu, g->cu->CtxSetCurrent(g->ctx), NULL)) < 0 ||
            (r = gh_cuda_errno(g->cu, g->cu->StreamCreate(&g->stream, 0), NULL)) < 0)
                return snprintf(err, n, "GPU 0: %s", strerror(-r)), r;
        if ((r = gh_dcuda_init(&g->be, g->cu, g->stream, err, n)) < 0)
                return r;
        if (!g->be.lt)
                fprintf(stderr, "gpuhost-sd: GEMMs on the fallback kernels: %s\n", g->be.lt_error);
        return gh_dcuda_alloc_work(&g->be, err, n);
}

static void *gpu_arena(gpu *g, size_t bytes) {
        return gh_cuda_errno(g->cu, g->cu->MemAlloc(&g->arena, bytes), NULL) < 0 ? NULL : (void *) g->arena;
}

static void gpu_close(gpu *g) {
        g->cu->StreamSynchronize(g->stream);
        gh_dcuda_fini(&g->be);
        for (size_t i = 0; i < g->n; i++) {
                g->cu->MemFree(g->t[i].p);
                free(g->t[i].name);
        }
        free(g->t);
        if (g->arena)
                g->cu->MemFree(g->arena);
        g->cu->StreamDestroy(g->stream);
        gh_cuda_free(g->cu);
}
#endif

/* ---- files ---- */

/* FILE:TENSOR as floats. */
static float *input(const char *spec, size_t *ret_n, gh_tensor *ret_t) {
        char path[4096], err[1024];
        const char *colon = strrchr(spec, ':');
        gh_dfiles *f;
        gh_tensor t;
        float *v;

        if (!colon || (size_t) (colon - spec) >= sizeof(path)) {
                fprintf(stderr, "gpuhost-sd: %s: expected FILE:TENSOR\n", spec);
                exit(2);
        }
        memcpy(path, spec, (size_t) (colon - spec));
        path[colon - spec] = 0;
        if (gh_dfiles_open(path, NULL, &f, err, sizeof(err)) < 0 ||
            gh_dfiles_source(f)->lookup(gh_dfiles_source(f)->ctx, colon + 1, &t) < 0) {
                fprintf(stderr, "gpuhost-sd: %s: %s\n", spec, err[0] ? err : "no such tensor");
                exit(1);
        }
        size_t n = 1;
        for (uint32_t i = 0; i < t.n_dims; i++)
                n *= t.shape[i];
        v = malloc(n * sizeof(float) + 1);
        for (size_t i = 0; i < n; i++)
                switch (t.dtype) {
                case GH_TENSOR_F32: v[i] = ((const float *) t.data)[i]; break;
                case GH_TENSOR_I32: v[i] = (float) ((const int32_t *) t.data)[i]; break;
                case GH_TENSOR_I64: v[i] = (float) ((const int64_t *) t.data)[i]; break;
                default: fprintf(stderr, "gpuhost-sd: %s: F32, I32 or I64 expected\n", spec); exit(1);
                }
        if (ret_t) {
                *ret_t = t;
                ret_t->data = NULL; /* the mapping goes below */
        }
        *ret_n = n;
        gh_dfiles_close(f);
        return v;
}

static int write_npy(const char *path, const float *v, const gh_dt *shape) {
        char head[256], dims[128] = "";
        size_t k = 0, n = 1;
        FILE *f;

        for (uint32_t i = 0; i < shape->n_dims; i++) {
                k += (size_t) snprintf(dims + k, sizeof(dims) - k, "%lld,%s", (long long) shape->shape[i],
                                       i + 1 < shape->n_dims ? " " : "");
                n *= (size_t) shape->shape[i];
        }
        int len = snprintf(head, sizeof(head), "{'descr': '<f4', 'fortran_order': False, 'shape': (%s), }", dims);
        int pad = 64 - (10 + len + 1) % 64;
        if (!(f = fopen(path, "wbe")))
                return -errno;
        fwrite("\x93NUMPY\x01\x00", 1, 8, f);
        uint16_t hl = (uint16_t) (len + pad + 1);
        fwrite(&hl, 2, 1, f);
        fprintf(f, "%s%*s\n", head, pad, "");
        fwrite(v, sizeof(float), n, f);
        return fclose(f) == 0 ? 0 : -EIO;
}

/* ---- commands ---- */

typedef struct opts {
        const char *model, *tokenizer, *out, *ids, *prompt, *negative, *x, *t, *context, *latent, *image, *init,
                *sampler, *ppm, *motion;
        int threads, clip_skip, steps, width, height, batch, repeat, frames;
        double cfg, strength;
        uint64_t seed;
        bool v_pred, img2img, cuda, profile, fp16, no_graphs, cudnn;
} opts;

static double now(void) {
        struct timespec ts;

        clock_gettime(CLOCK_MONOTONIC, &ts);
        return (double) ts.tv_sec + ts.tv_nsec * 1e-9;
}

static void die_ctx(const gh_dctx *c, int r) {
        fprintf(stderr, "gpuhost-sd: %s\n", c->err[0] ? c->err : strerror(-r));
        exit(1);
}

#define CK(c, expr)                         \
        do {                                \
                int _r = (expr);            \
                if (_r < 0)                 \
                        die_ctx((c), _r);   \
        } while (0)

static gh_tokenizer *tokenizer(gh_dfiles *f) {
        const gh_dsource *s = gh_dfiles_source(f);
        gh_tensor v, m;
        gh_tokenizer *t;
        char err[1024];

        if (s->lookup(s->ctx, "tokenizer/vocab.json", &v) < 0 || s->lookup(s->ctx, "tokenizer/merges.txt", &m) < 0) {
                fprintf(stderr, "gpuhost-sd: no tokenizer (a folder's tokenizer/, or --tokenizer DIR)\n");
                exit(1);
        }
        if (gh_tokenizer_new(v.data, v.bytes, m.data, m.bytes, &t, err, sizeof(err)) < 0) {
                fprintf(stderr, "gpuhost-sd: %s\n", err);
                exit(1);
        }
        return t;
}

static void tokens(gh_tokenizer *t, const char *prompt, gh_prompt_tokens *ret) {
        char err[1024];

        if (gh_prompt_tokenize(t, prompt, ret, err, sizeof(err)) < 0) {
                fprintf(stderr, "gpuhost-sd: %s\n", err);
                exit(1);
        }
}

static int cmd_tokenize(gh_dfiles *f, const opts *o) {
        gh_tokenizer *t = tokenizer(f);
        gh_prompt_tokens *p = calloc(1, sizeof(*p));

        tokens(t, o->prompt ? o->prompt : "", p);
        for (uint32_t c = 0; c < p->n_chunks; c++) {
                printf("chunk %u:", c);
                for (int i = 0; i < 77; i++)
                        printf(p->weights[c][i] != 1.0f ? " %d:%g" : " %d", p->ids[c][i], (double) p->weights[c][i]);
                printf("\n");
        }
        free(p);
        gh_tokenizer_free(t);
        return 0;
}

static int cmp_double(const void *a, const void *b) {
        double x = *(const double *) a, y = *(const double *) b;
        return (x > y) - (x < y);
}

/* The UNet, with the motion modules when |pe| is given (--frames). */
static int unet_eval(gh_dctx *c, const gh_sd_models *m, const gh_motion_pe *pe, const gh_dt *x, const float *t,
                     const gh_dt *ctx, gh_dt *y) {
        if (pe)
                return gh_unet_eval_video(c, &m->unet, &m->motion, pe, x, t, ctx, y);
        return gh_unet_eval(c, &m->unet, x, t, ctx, y);
}

/* |n| more UNet evaluations, timed one by one (median and best). */
static void time_unet(gh_dctx *c, const gh_sd_models *m, const gh_motion_pe *pe, const gh_dt *x, const float *t,
                      const gh_dt *ctx, gh_dt *y, int n) {
        float *out = malloc((size_t) gh_dt_numel(y) * sizeof(float));
        double *ms = malloc((size_t) n * sizeof(double));

        if (!out || !ms)
                die_ctx(c, -ENOMEM);
        /* A first evaluation outside the timing: the backend's one-time
         * work (GEMM plans) is not what --repeat measures, nor --profile. */
        CK(c, unet_eval(c, m, pe, x, t, ctx, y));
        CK(c, gh_op_download(c, y, out));
        if (c->be == &gh_dbackend_profile)
                gh_profile_reset(c->be_state);
        for (int i = 0; i < n; i++) {
                double t0 = now();
                CK(c, unet_eval(c, m, pe, x, t, ctx, y));
                CK(c, gh_op_download(c, y, out));
                ms[i] = (now() - t0) * 1e3;
        }
        qsort(ms, (size_t) n, sizeof(double), cmp_double);
        printf("unet: %d evaluations of batch %" PRId64 " at %" PRId64 "x%" PRId64 " latents: median %.3f ms, best %.3f ms "
               "(%.2f it/s)\n",
               n, x->shape[0], x->shape[2], x->shape[3], ms[n / 2], ms[0], 1e3 / ms[n / 2]);
        free(ms);
        free(out);
}

static int cmd_run(gh_dfiles *f, const gh_sd_models *m, const char *cmd, const opts *o, gh_dctx *c) {
        size_t n1, n2, n3;
        gh_tensor t1;
        gh_dt a, b, y;
        float *out;

        if (strcmp(cmd, "encode-text") == 0) {
                int32_t *ids;
                int64_t seqs;
                if (o->ids) {
                        float *v = input(o->ids, &n1, &t1);
                        ids = malloc(n1 * sizeof(int32_t));
                        for (size_t i = 0; i < n1; i++)
                                ids[i] = (int32_t) v[i];
                        free(v);
                } else {
                        gh_tokenizer *t = tokenizer(f);
                        gh_prompt_tokens *p = calloc(1, sizeof(*p));
                        tokens(t, o->prompt ? o->prompt : "", p);
                        n1 = p->n_chunks * 77u;
                        ids = malloc(n1 * sizeof(int32_t));
                        memcpy(ids, p->ids, n1 * sizeof(int32_t));
                        free(p);
                        gh_tokenizer_free(t);
                }
                seqs = (int64_t) n1 / 77;
                CK(c, gh_dt_new(c, &y, seqs, 77, m->clip.width));
                CK(c, gh_clip_encode(c, &m->clip, ids, seqs, o->clip_skip, &y));
                free(ids);
        } else if (strcmp(cmd, "unet") == 0) {
                float *x = input(o->x, &n1, &t1), *t = input(o->t, &n2, NULL), *ctx = input(o->context, &n3, NULL);
                CK(c, gh_dt_new(c, &a, (int64_t) t1.shape[0], (int64_t) t1.shape[1], (int64_t) t1.shape[2], (int64_t) t1.shape[3]));
                CK(c, gh_op_upload(c, x, &a));
                CK(c, gh_dt_new(c, &b, (int64_t) n2, (int64_t) n3 / (int64_t) n2 / m->unet.cfg.ctx, m->unet.cfg.ctx));
                CK(c, gh_op_upload(c, ctx, &b));
                CK(c, gh_dt_new(c, &y, a.shape[0], m->unet.cfg.out_ch, a.shape[2], a.shape[3]));
                gh_motion_pe pe;
                if (o->frames)
                        CK(c, gh_motion_pe_new(c, &m->unet, o->frames, &pe));
                CK(c, unet_eval(c, m, o->frames ? &pe : NULL, &a, t, &b, &y));
                if (o->repeat > 0)
                        time_unet(c, m, o->frames ? &pe : NULL, &a, t, &b, &y, o->repeat);
                free(x);
                free(t);
                free(ctx);
        } else if (strcmp(cmd, "vae-decode") == 0 || strcmp(cmd, "vae-encode") == 0) {
                bool dec = cmd[4] == 'd';
                int64_t fct = gh_vae_factor(&m->vae);
                float *x = input(dec ? o->latent : o->image, &n1, &t1);
                CK(c, gh_dt_new(c, &a, (int64_t) t1.shape[0], (int64_t) t1.shape[1], (int64_t) t1.shape[2], (int64_t) t1.shape[3]));
                if (!dec)
                        for (size_t i = 0; i < n1; i++)
                                x[i] = 2 * x[i] - 1;
                CK(c, gh_op_upload(c, x, &a));
                if (dec) {
                        CK(c, gh_dt_new(c, &y, a.shape[0], 3, a.shape[2] * fct, a.shape[3] * fct));
                        CK(c, gh_vae_decode(c, &m->vae, &a, &y));
                } else {
                        CK(c, gh_dt_new(c, &y, a.shape[0], m->vae.z, a.shape[2] / fct, a.shape[3] / fct));
                        CK(c, gh_vae_encode(c, &m->vae, &a, &y));
                }
                free(x);
        } else {
                fprintf(stderr, "gpuhost-sd: unknown command %s\n", cmd);
                return 2;
        }
        out = malloc((size_t) gh_dt_numel(&y) * sizeof(float));
        CK(c, gh_op_download(c, &y, out));
        if (!o->out || write_npy(o->out, out, &y) < 0) {
                fprintf(stderr, "gpuhost-sd: cannot write %s\n", o->out ? o->out : "(no -o)");
                return 1;
        }
        free(out);
        return 0;
}

static gh_sd_params params_of(const opts *o) {
        return (gh_sd_params){.width = (uint32_t) o->width, .height = (uint32_t) o->height,
                              .batch = (uint32_t) (o->frames ? o->frames : o->batch), .frames = (uint32_t) o->frames,
                              .steps = (uint32_t) o->steps, .clip_skip = (uint32_t) o->clip_skip, .cfg = (float) o->cfg,
                              .sampler = gh_sampler_from_name(o->sampler), .v_pred = o->v_pred, .seed = o->seed,
                              .img2img = o->img2img, .strength = o->strength};
}

static int write_ppm(const char *path, const uint8_t *rgb, int w, int h) {
        FILE *f = fopen(path, "wbe");

        if (!f)
                return -errno;
        fprintf(f, "P6\n%d %d\n255\n", w, h);
        fwrite(rgb, 3, (size_t) w * h, f);
        return fclose(f) == 0 ? 0 : -EIO;
}

#ifdef GH_HAVE_CUDA_BACKEND
static gh_dcuda *fp16_be; /* --cuda --fp16: sample's UNet steps in fp16, as a job's */
#endif

/* sample with --fp16, as a precision=fp16 job: the UNet and the VAE's
 * decode in fp16 (the decode in fp32 where the VAE's weights are bf16),
 * the text encoder in fp32. */
static void unet_mode(bool fp16) {
#ifdef GH_HAVE_CUDA_BACKEND
        if (fp16_be)
                fp16_be->fp16 = fp16;
#else
        (void) fp16;
#endif
}

static int cmd_sample(gh_dfiles *f, const gh_sd_models *m, const opts *o, gh_dctx *c) {
        gh_sd_params p = params_of(o);
        gh_tokenizer *t = tokenizer(f);
        gh_prompt_tokens *cond = calloc(1, sizeof(*cond)), *uncond = calloc(1, sizeof(*uncond));
        float *init = NULL, *lat;
        size_t n, plan;
        gh_tensor ti;
        uint8_t *rgb;
        gh_sd_run r;
        char err[1200];
        double t0, t1, t2, t3;

        tokens(t, o->prompt ? o->prompt : "", cond);
        tokens(t, o->negative ? o->negative : "", uncond);
        uint32_t chunks = cond->n_chunks > uncond->n_chunks ? cond->n_chunks : uncond->n_chunks;
        if (gh_sd_params_check(m, &p, err, sizeof(err)) < 0 || gh_sd_plan(m, &p, chunks, c->half, &plan, err, sizeof(err)) < 0) {
                fprintf(stderr, "gpuhost-sd: %s\n", err);
                return 1;
        }
        if (o->init)
                init = input(o->init, &n, &ti);
        rgb = malloc((size_t) p.width * p.height * 3);
        for (int k = 0; k <= o->repeat; k++) { /* --repeat N: N more runs, warm */
                if (k > 0)
                        gh_sd_run_free(&r);
                t0 = now();
                unet_mode(false);
                CK(c, gh_sd_run_init(&r, m, &p, c, chunks, cond, uncond, NULL));
                r.init_latent_host = init;
                CK(c, gh_sd_run_prepare(&r));
                t1 = now();
                for (uint32_t i = 0; i < gh_sd_steps_run(&p); i++) {
                        unet_mode(true);
                        CK(c, gh_sd_run_step(&r, i));
                        unet_mode(false);
                }
                t2 = now();
                unet_mode(gh_vae_decode_fp16_ok(&m->vae));
                for (uint32_t b = p.batch; b-- > 0;) /* every item; frame 0 last, for --ppm */
                        CK(c, gh_sd_run_decode(&r, b, rgb, NULL));
                unet_mode(false);
                t3 = now();
                printf("%sprepare %.3f s, %u steps %.3f s (%.3f s/step), decode %.3f s, total %.3f s; workspace %zu "
                       "bytes planned, %zu peak\n",
                       k ? "warm: " : "", t1 - t0, gh_sd_steps_run(&p), t2 - t1,
                       gh_sd_steps_run(&p) ? (t2 - t1) / gh_sd_steps_run(&p) : 0.0, t3 - t2, t3 - t0, plan,
                       gh_arena_peak(c->arena));
        }
        lat = malloc((size_t) gh_dt_numel(&r.x) * sizeof(float));
        CK(c, gh_op_download(c, &r.x, lat));
        if (o->out && write_npy(o->out, lat, &r.x) < 0)
                return fprintf(stderr, "gpuhost-sd: cannot write %s\n", o->out), 1;
        if (o->ppm && write_ppm(o->ppm, rgb, o->width, o->height) < 0)
                return fprintf(stderr, "gpuhost-sd: cannot write %s\n", o->ppm), 1;
        gh_sd_run_free(&r);
        gh_tokenizer_free(t);
        free(lat);
        free(rgb);
        free(init);
        free(cond);
        free(uncond);
        return 0;
}

static int cmd_plan(const gh_sd_models *m, const opts *o) {
        gh_sd_params p = params_of(o);
        char err[1200];
        size_t bytes;

        if (gh_sd_params_check(m, &p, err, sizeof(err)) < 0 || gh_sd_plan(m, &p, 1, o->cuda && o->fp16, &bytes, err, sizeof(err)) < 0) {
                fprintf(stderr, "gpuhost-sd: %s\n", err);
                return 1;
        }
        printf("%zu\n", bytes);
        return 0;
}

/* The checkpoint's tensors, then the motion module's (--motion). */
static int chain_lookup(void *ctx, const char *name, gh_tensor *ret) {
        const gh_dsource *const *s = ctx;
        int r = s[0]->lookup(s[0]->ctx, name, ret);

        return r == -ENOENT && s[1] ? s[1]->lookup(s[1]->ctx, name, ret) : r;
}

static void usage(void) {
        fprintf(stderr, "usage: gpuhost-sd --model PATH [--tokenizer DIR] [--threads N | --cuda] "
                        "tokenize|encode-text|unet|vae-decode|vae-encode|sample|plan [OPTIONS]\n");
        exit(2);
}

int main(int argc, char **argv) {
        static const struct option longs[] = {
                {"model", 1, NULL, 'm'},     {"tokenizer", 1, NULL, 'T'}, {"threads", 1, NULL, 'j'},
                {"ids", 1, NULL, 'i'},       {"prompt", 1, NULL, 'p'},    {"negative", 1, NULL, 'n'},
                {"clip-skip", 1, NULL, 'k'}, {"x", 1, NULL, 'x'},         {"t", 1, NULL, 't'},
                {"context", 1, NULL, 'c'},   {"latent", 1, NULL, 'l'},    {"image", 1, NULL, 'I'},
                {"sampler", 1, NULL, 's'},   {"steps", 1, NULL, 'S'},     {"cfg", 1, NULL, 'g'},
                {"seed", 1, NULL, 'e'},      {"width", 1, NULL, 'W'},     {"height", 1, NULL, 'H'},
                {"batch", 1, NULL, 'b'},     {"v-pred", 0, NULL, 'v'},    {"init", 1, NULL, 'a'},
                {"strength", 1, NULL, 'r'},  {"ppm", 1, NULL, 'P'},       {"img2img", 0, NULL, 'M'},
                {"cuda", 0, NULL, 'C'},      {"repeat", 1, NULL, 'R'},    {"profile", 0, NULL, 'F'},
                {"fp16", 0, NULL, 'B'},      {"no-graphs", 0, NULL, 'G'},
                {"cudnn", 0, NULL, 'D'},     {"motion", 1, NULL, 'A'},    {"frames", 1, NULL, 'N'},
                {NULL, 0, NULL, 0},
        };
        opts o = {.threads = 1, .clip_skip = 1, .steps = 20, .width = 64, .height = 64, .batch = 1, .cfg = 7.5,
                  .sampler = "euler_a", .strength = 0.75};
        char err[1024];
        gh_sd_models m;
        gh_dfiles *f;
        gh_dctx c = {.be = &gh_dbackend_cpu};
        gh_dcpu cpu;
        pool pl;
        void *mem;
        int opt, r;

        while ((opt = getopt_long(argc, argv, "o:", longs, NULL)) != -1)
                switch (opt) {
                case 'm': o.model = optarg; break;
                case 'T': o.tokenizer = optarg; break;
                case 'j': o.threads = atoi(optarg); break;
                case 'o': o.out = optarg; break;
                case 'i': o.ids = optarg; break;
                case 'p': o.prompt = optarg; break;
                case 'n': o.negative = optarg; break;
                case 'k': o.clip_skip = atoi(optarg); break;
                case 'x': o.x = optarg; break;
                case 't': o.t = optarg; break;
                case 'c': o.context = optarg; break;
                case 'l': o.latent = optarg; break;
                case 'I': o.image = optarg; break;
                case 's': o.sampler = optarg; break;
                case 'S': o.steps = atoi(optarg); break;
                case 'g': o.cfg = atof(optarg); break;
                case 'e': o.seed = strtoull(optarg, NULL, 0); break;
                case 'W': o.width = atoi(optarg); break;
                case 'H': o.height = atoi(optarg); break;
                case 'b': o.batch = atoi(optarg); break;
                case 'v': o.v_pred = true; break;
                case 'a': o.init = optarg; o.img2img = true; break;
                case 'r': o.strength = atof(optarg); break;
                case 'P': o.ppm = optarg; break;
                case 'M': o.img2img = true; break;
                case 'C': o.cuda = true; break;
                case 'R': o.repeat = atoi(optarg); break;
                case 'F': o.profile = true; break;
                case 'B': o.fp16 = true; break;
                case 'G': o.no_graphs = true; break;
                case 'D': o.cudnn = true; break;
                case 'A': o.motion = optarg; break;
                case 'N': o.frames = atoi(optarg); break;
                default: usage();
                }
        if (!o.model || optind >= argc || o.threads < 1 || o.threads > 64 || gh_sampler_from_name(o.sampler) < 0 ||
            o.frames < 0 || o.frames > GH_SD_MAX_FRAMES || (o.frames && !o.motion) || o.repeat < 0 ||
            o.repeat > 10000)
                usage();
        if (optind + 1 < argc && !o.prompt)
                o.prompt = argv[optind + 1];
        if (gh_dfiles_open(o.model, o.tokenizer, &f, err, sizeof(err)) < 0) {
                fprintf(stderr, "gpuhost-sd: %s\n", err);
                return 1;
        }
        if (strcmp(argv[optind], "tokenize") == 0)
                return cmd_tokenize(f, &o), gh_dfiles_close(f), 0;
        const gh_dsource *src = gh_dfiles_source(f);
        gh_dfiles *mf = NULL;
        const gh_dsource *chain[2] = {src, NULL};
        gh_dsource both = {chain_lookup, chain};
        if (o.motion) {
                if (gh_dfiles_open(o.motion, NULL, &mf, err, sizeof(err)) < 0)
                        return fprintf(stderr, "gpuhost-sd: %s\n", err), 1;
                chain[1] = gh_dfiles_source(mf);
                src = &both;
        }
#ifdef GH_HAVE_CUDA_BACKEND
        gpu g = {0};
        if (o.cuda) {
                if (gpu_open(&g, src, err, sizeof(err)) < 0)
                        return fprintf(stderr, "gpuhost-sd: %s\n", err), 1;
                g.be.fp16 = o.fp16;
                fp16_be = o.fp16 ? &g.be : NULL;
                g.be.no_graphs = o.no_graphs;
                if (o.cudnn && gh_dcuda_use_cudnn(&g.be, err, sizeof(err)) < 0)
                        return fprintf(stderr, "gpuhost-sd: --cudnn: %s\n", err), 1;
                src = &g.source;
        }
#else
        if (o.cuda)
                return fprintf(stderr, "gpuhost-sd: built without the CUDA backend\n"), 1;
#endif
        if (gh_sd_models_load(&m, src) < 0 || (o.motion && gh_sd_motion_load(&m, src) < 0)) {
                fprintf(stderr, "gpuhost-sd: %s\n", m.err);
                return 1;
        }
        if (strcmp(argv[optind], "plan") == 0)
                return cmd_plan(&m, &o);
        pool_start(&pl, (uint32_t) o.threads);
        cpu = (gh_dcpu){.parallel_for = pool_for, .pctx = &pl, .threads = pl.n};
        c.be_state = &cpu;
        /* Component runs take what they need; sample plans exactly. */
        size_t bytes = (size_t) (o.frames ? 16 : 2) << 30; /* a video's batch: 2 x frames */
        if (strcmp(argv[optind], "sample") == 0) {
                gh_sd_params p = params_of(&o);
                if (gh_sd_params_check(&m, &p, err, sizeof(err)) < 0 ||
                    gh_sd_plan(&m, &p, 8, o.cuda && o.fp16, &bytes, err, sizeof(err)) < 0) {
                        fprintf(stderr, "gpuhost-sd: %s\n", err);
                        return 1;
                }
        }
#ifdef GH_HAVE_CUDA_BACKEND
        if (o.cuda) {
                c.be = &gh_dbackend_cuda;
                c.be_state = &g.be;
                c.half = o.fp16; /* the UNet's activations in F16 */
                mem = gpu_arena(&g, bytes);
        } else
#endif
                mem = aligned_alloc(GH_ARENA_ALIGN, bytes);
        if (!mem || gh_arena_new(mem, bytes, &c.arena) < 0)
                return fprintf(stderr, "gpuhost-sd: out of memory\n"), 1;
        gh_profile prof = {.inner = c.be, .state = c.be_state};
        if (o.profile) {
                c.be = &gh_dbackend_profile;
                c.be_state = &prof;
        }
        r = strcmp(argv[optind], "sample") == 0 ? cmd_sample(f, &m, &o, &c) : cmd_run(f, &m, argv[optind], &o, &c);
        if (o.profile)
                gh_profile_print(&prof, stdout);
        gh_arena_free(c.arena);
#ifdef GH_HAVE_CUDA_BACKEND
        if (o.cuda)
                gpu_close(&g);
        else
#endif
                free(mem);
        pool_stop(&pl);
        gh_sd_models_unload(&m);
        gh_dfiles_close(f);
        gh_dfiles_close(mf);
        return r;
}

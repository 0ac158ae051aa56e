/* The txt2img, img2img and video pipelines (one source, built three times;
 * IMG2IMG selects img2img, VIDEO the video one) on an SD 1.x checkpoint of
 * the model store, through the
 * diffusion runtime: on the CPU device, or on a GPU through the CUDA
 * backend where the plugin was built with one (GH_HAVE_CUDA_BACKEND).
 *
 * estimate() loads the checkpoint's shapes (host->model_tensor), checks
 * the parameters against them and plans the workspace by running the whole
 * job dry, with as many prompt chunks as the prompts could need at most.
 * start() loads the views onto the pool, tokenizes (with the process's
 * tokenizer of those files, made by the first job), plans again with the
 * real chunk count and takes exactly that arena. Step 0 also encodes the
 * prompts (and the input image); the last step decodes into the outputs.
 * On a GPU the workspace is device memory, the weights are the pool's
 * device views, and the work runs on the job's stream (asked again at each
 * step, since the job's slice may move).
 *
 * video: AnimateDiff-style text to video. The frames are the batch of one
 * run, and an AnimateDiff motion module (a second model of the store,
 * motion_module=) is inserted into the UNet; every frame gets its own
 * noise (seed + frame). The last step decodes every frame and puts out
 * the clip as H.264 in MP4 ("video", first, so `gpuhostctl generate video
 * -o clip.mp4` writes it) with the parameters in its metadata, and the
 * frames themselves ("frames", RGB8); format=frames skips the MP4. The
 * encoder is a module of its own (video-mp4.so, FFmpeg's libraries),
 * loaded on the first MP4, so the plugin runs where FFmpeg is absent. The
 * preview is the middle frame's latent. */
#include <errno.h>
#include <inttypes.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/random.h>
#include <time.h>

#include <gpuhost/plugin.h>

#include "pipeline.h"
#include "prompt.h"
#ifdef VIDEO
#include <dlfcn.h>
#include <json-c/json.h>
#include <pthread.h>
#include <unistd.h>

#include "encode.h"
#endif
#include "tokcache.h"

#ifdef GH_HAVE_CUDA_BACKEND
#include <pthread.h>

#include "backend-cuda.h"

/* The CUDA driver's entry points in this process, loaded once. */
static gh_cuda *cuda_driver;
static char cuda_error[256];
static pthread_once_t cuda_once = PTHREAD_ONCE_INIT;

/* A GPU job's workspace: the runtime's plan, then the backend's work
 * buffer (cuBLASLt's workspace and the GEMMs' converted operands). */
static size_t cuda_workspace(size_t planned) {
        return (planned + 255) / 256 * 256 + GH_DCUDA_WORK_SIZE;
}

static void cuda_load(void) {
        if (gh_cuda_load(NULL, &cuda_driver, cuda_error, sizeof(cuda_error)) < 0)
                cuda_driver = NULL;
}
#endif

#define HOST_HAS(h, member) ((h)->struct_size >= offsetof(gh_host, member) + sizeof((h)->member))

static const char *const predictions[] = {"epsilon", "v_prediction", NULL};
static const char *const precisions[] = {"fp32", "fp16", NULL};

#define COMMON_PARAMS                                                                                              \
        {GH_PARAM_HEADER, .name = "model", .type = GH_PARAM_MODEL, .required = true,                                 \
         .help = "an SD 1.x checkpoint of the model store"},                                                      \
        {GH_PARAM_HEADER, .name = "prompt", .type = GH_PARAM_STRING, .string_max = 8192, .string_default = "",     \
         .help = "what to draw; A1111 syntax: (word:1.3), (word), [word], BREAK"},                               \
        {GH_PARAM_HEADER, .name = "negative_prompt", .type = GH_PARAM_STRING, .string_max = 8192,                  \
         .string_default = "", .help = "what to steer away from"},                                                 \
        {GH_PARAM_HEADER, .name = "steps", .type = GH_PARAM_INT, .int_min = 1, .int_max = 150, .int_default = 20, \
         .help = "sampler steps"},                                                                                 \
        {GH_PARAM_HEADER, .name = "cfg_scale", .type = GH_PARAM_FLOAT, .float_min = 1, .float_max = 30,           \
         .float_default = 7.5, .help = "classifier-free guidance scale (1: no negative pass)"},                   \
        {GH_PARAM_HEADER, .name = "sampler", .type = GH_PARAM_ENUM, .choices = gh_sampler_names,                   \
         .enum_default = "euler_a", .help = "euler, euler_a, ddim, dpmpp_2m or dpmpp_2m_karras"},                  \
        {GH_PARAM_HEADER, .name = "seed", .type = GH_PARAM_INT, .int_min = -1, .int_max = 4294967295LL,           \
         .int_default = -1, .help = "noise seed; -1: random (reported in the metadata)"},                         \
        {GH_PARAM_HEADER, .name = "clip_skip", .type = GH_PARAM_INT, .int_min = 1, .int_max = 12,                 \
         .int_default = 1, .help = "text encoder layers to skip from the end, plus one (A1111)"},                 \
        {GH_PARAM_HEADER, .name = "prediction", .type = GH_PARAM_ENUM, .choices = predictions,                     \
         .enum_default = "epsilon", .help = "what the UNet predicts: epsilon (SD 1.x) or v_prediction"},          \
        {GH_PARAM_HEADER, .name = "precision", .type = GH_PARAM_ENUM, .choices = precisions,                       \
         .enum_default = "fp32",                                                                                   \
         .help = "on a GPU: fp32, or fp16 (the UNet and the VAE decoder on tensor cores with fp32 sums, the UNet's activations in fp16)"}

#define BATCH_PARAM                                                                                                \
        {GH_PARAM_HEADER, .name = "batch_size", .type = GH_PARAM_INT, .int_min = 1, .int_max = GH_SD_MAX_BATCH,    \
         .int_default = 1, .help = "images per job (seeds seed, seed+1, ...)"}
#define SIZE_PARAMS                                                                                                \
        {GH_PARAM_HEADER, .name = "width", .type = GH_PARAM_INT, .int_min = GH_SD_MIN_SIZE, .int_max = GH_SD_MAX_SIZE, \
         .int_default = 512, .help = "pixels, a multiple of 64 for SD 1.x"},                                      \
        {GH_PARAM_HEADER, .name = "height", .type = GH_PARAM_INT, .int_min = GH_SD_MIN_SIZE,                       \
         .int_max = GH_SD_MAX_SIZE, .int_default = 512, .help = "pixels, a multiple of 64 for SD 1.x"}

#if defined(VIDEO)
#define VIDEO_MIN_FRAMES 8
static const char *const formats[] = {"mp4", "frames", NULL};
static const gh_plugin_param params[] = {
        COMMON_PARAMS,
        SIZE_PARAMS,
        {GH_PARAM_HEADER, .name = "format", .type = GH_PARAM_ENUM, .choices = formats, .enum_default = "mp4",
         .help = "mp4: the clip (H.264) and its frames; frames: the frames only"},
        {GH_PARAM_HEADER, .name = "motion_module", .type = GH_PARAM_MODEL, .required = true,
         .help = "an AnimateDiff motion module (v1 or v2, either layout) of the model store"},
        {GH_PARAM_HEADER, .name = "frames", .type = GH_PARAM_INT, .int_min = VIDEO_MIN_FRAMES,
         .int_max = GH_SD_MAX_FRAMES, .int_default = 16,
         .help = "frames of the clip (at most the motion module's length: 24 for v1, 32 for v2)"},
        {GH_PARAM_HEADER, .name = "fps", .type = GH_PARAM_INT, .int_min = 1, .int_max = 60, .int_default = 8,
         .help = "frames a second of the encoded clip"},
        {GH_PARAM_HEADER, .name = "context_frames", .type = GH_PARAM_INT, .int_min = 0, .int_max = GH_SD_MAX_FRAMES,
         .int_default = 0,
         .help = "the motion module on sliding windows of this many frames, each frame the mean of its windows "
                 "(more frames than the module's length; 16 is AnimateDiff's); 0: all frames at once"},
        {GH_PARAM_HEADER, .name = "context_overlap", .type = GH_PARAM_INT, .int_min = 0,
         .int_max = GH_SD_MAX_FRAMES - 1, .int_default = 4, .help = "frames that neighbouring windows share"},
};
#elif defined(IMG2IMG)
static const gh_plugin_param params[] = {
        COMMON_PARAMS,
        BATCH_PARAM,
        {GH_PARAM_HEADER, .name = "image", .type = GH_PARAM_IMAGE, .required = true,
         .help = "the input image (its size is the output's; multiples of 64 for SD 1.x)"},
        {GH_PARAM_HEADER, .name = "strength", .type = GH_PARAM_FLOAT, .float_min = 0, .float_max = 1,
         .float_default = 0.75, .help = "how much to change: the share of the steps run (0: the VAE round trip)"},
};
#else
static const gh_plugin_param params[] = {
        COMMON_PARAMS,
        BATCH_PARAM,
        SIZE_PARAMS,
};
#endif

/* ---- parameters and the checkpoint ---- */

typedef struct setup {
        const char *model, *prompt, *negative, *sampler, *prediction, *precision;
        const char *motion, *format; /* video: the motion module, mp4 or frames */
        int64_t seed, fps;
        gh_sd_params p;
        gh_image image;
} setup;

static int read_params(const gh_host *h, const gh_params *ps, setup *s, char *err, size_t n) {
        int64_t steps, batch, skip, v;
        double cfg;
        int r;

        if ((r = h->param_string(ps, "model", &s->model)) < 0 || (r = h->param_string(ps, "prompt", &s->prompt)) < 0 ||
            (r = h->param_string(ps, "negative_prompt", &s->negative)) < 0 ||
            (r = h->param_string(ps, "sampler", &s->sampler)) < 0 ||
            (r = h->param_string(ps, "prediction", &s->prediction)) < 0 ||
            (r = h->param_string(ps, "precision", &s->precision)) < 0 || (r = h->param_int(ps, "steps", &steps)) < 0 ||
            (r = h->param_int(ps, "seed", &s->seed)) < 0 ||
#ifdef VIDEO
            (r = h->param_int(ps, "frames", &batch)) < 0 || (r = h->param_int(ps, "fps", &s->fps)) < 0 ||
            (r = h->param_string(ps, "motion_module", &s->motion)) < 0 ||
            (r = h->param_string(ps, "format", &s->format)) < 0 ||
#else
            (r = h->param_int(ps, "batch_size", &batch)) < 0 ||
#endif
            (r = h->param_int(ps, "clip_skip", &skip)) < 0 || (r = h->param_float(ps, "cfg_scale", &cfg)) < 0)
                return snprintf(err, n, "parameters: %s", strerror(-r)), r;
        s->p = (gh_sd_params){.batch = (uint32_t) batch, .steps = (uint32_t) steps, .clip_skip = (uint32_t) skip,
                              .cfg = (float) cfg, .sampler = gh_sampler_from_name(s->sampler),
                              .v_pred = strcmp(s->prediction, "v_prediction") == 0};
#ifdef VIDEO
        int64_t window, overlap;
        if ((r = h->param_int(ps, "context_frames", &window)) < 0 ||
            (r = h->param_int(ps, "context_overlap", &overlap)) < 0)
                return snprintf(err, n, "parameters: %s", strerror(-r)), r;
        s->p.frames = (uint32_t) batch;
        s->p.window = (uint32_t) window;
        s->p.overlap = window ? (uint32_t) overlap : 0;
#endif
#ifdef IMG2IMG
        if ((r = h->param_image(ps, "image", &s->image)) < 0 || (r = h->param_float(ps, "strength", &s->p.strength)) < 0)
                return snprintf(err, n, "parameters: %s", strerror(-r)), r;
        s->p.img2img = true;
        s->p.width = s->image.width;
        s->p.height = s->image.height;
        (void) v;
#else
        if ((r = h->param_int(ps, "width", &v)) < 0)
                return r;
        s->p.width = (uint32_t) v;
        if ((r = h->param_int(ps, "height", &v)) < 0)
                return r;
        s->p.height = (uint32_t) v;
#endif
        return 0;
}

/* Tensors from the host: shapes only in estimate(), pool views in a job. */
typedef struct source {
        gh_dsource src;
        const gh_host *host;
        const gh_params *params;
        gh_job *job;
        const char *model;
} source;

static int lookup(void *ctx, const char *name, gh_tensor *ret) {
        source *s = ctx;

        if (s->job)
                return s->host->tensor(s->job, s->model, name, ret);
        return s->host->model_tensor(s->params, s->model, name, ret);
}

/* The checkpoint through |s|, and for a video the motion module through
 * |ms| (a source of its own: another model). */
static int load_models(source *s, source *ms, gh_sd_models *m, const setup *st, char *err, size_t n) {
        int r;

        s->src = (gh_dsource){lookup, s};
        s->model = st->model;
        if (!s->job && !HOST_HAS(s->host, model_tensor))
                return snprintf(err, n, "the host is too old (plugin ABI 1.2 needed)"), -ENOTSUP;
        if ((r = gh_sd_models_load(m, &s->src)) < 0) {
                snprintf(err, n, "model %s: %s", st->model, m->err);
                gh_sd_models_unload(m);
                return r;
        }
        if (st->motion) {
                *ms = *s;
                ms->src = (gh_dsource){lookup, ms};
                ms->model = st->motion;
                if ((r = gh_sd_motion_load(m, &ms->src)) < 0) {
                        snprintf(err, n, "motion module %s: %s", st->motion, m->err);
                        gh_sd_models_unload(m);
                        return r;
                }
        }
        if ((r = gh_sd_params_check(m, &st->p, err, n)) < 0)
                gh_sd_models_unload(m);
        return r;
}

/* ---- estimate ---- */

/* Whether the UNet runs on F16 activations on a GPU (precision=fp16). */
static bool half_unet(const setup *st) {
        return strcmp(st->precision, "fp16") == 0;
}

static int estimate(const gh_host *h, const gh_params *ps, gh_plugin_needs *ret) {
        source src = {.host = h, .params = ps}, msrc;
        char err[1200];
        gh_sd_models m;
        setup st = {0};
        uint32_t chunks;
        size_t bytes;
        int r;

        if ((r = read_params(h, ps, &st, err, sizeof(err))) < 0 || (r = load_models(&src, &msrc, &m, &st, err, sizeof(err))) < 0) {
                h->log(NULL, GH_LOG_ERR, "%s", err);
                return r;
        }
        chunks = gh_sd_chunks_bound(st.prompt);
        if (gh_sd_chunks_bound(st.negative) > chunks)
                chunks = gh_sd_chunks_bound(st.negative);
        r = gh_sd_plan(&m, &st.p, chunks, false, &bytes, err, sizeof(err));
#ifdef GH_HAVE_CUDA_BACKEND
        size_t gpu_bytes = bytes; /* precision=fp16: the UNet's activations in F16 there */
        if (r >= 0 && half_unet(&st))
                r = gh_sd_plan(&m, &st.p, chunks, true, &gpu_bytes, err, sizeof(err));
#endif
        gh_sd_models_unload(&m);
        if (r < 0) {
                h->log(NULL, GH_LOG_ERR, "%s", err);
                return r;
        }
        ret->workspace[GH_DEVICE_KIND_CPU] = bytes;
#ifdef GH_HAVE_CUDA_BACKEND
        ret->workspace[GH_DEVICE_KIND_CUDA] = cuda_workspace(gpu_bytes);
#endif
        ret->steps = gh_sd_steps_run(&st.p) + 1;
        ret->models[0] = st.model;
        ret->n_models = 1;
        if (st.motion)
                ret->models[ret->n_models++] = st.motion;
        return 0;
}

/* ---- a job ---- */

typedef struct job {
        const gh_host *host;
        gh_job *job;
        source src, msrc;
        setup st;
        gh_sd_models m;
        const gh_tokenizer *tok; /* the process's, shared (tokcache.h) */
        gh_prompt_tokens cond, uncond;
        gh_dcpu cpu;
#ifdef GH_HAVE_CUDA_BACKEND
        gh_dcuda cuda;
        bool on_cuda;
#endif
        gh_dctx c;
        void *ws;
        size_t planned;
        gh_sd_run run;
        bool run_ready;
        float *init;
        uint8_t *preview;
        uint64_t preview_usec; /* when the last preview went (CLOCK_MONOTONIC) */
        gh_image out[GH_SD_MAX_BATCH];
        uint8_t *frames; /* video: every frame, RGB8, after each other */
} job;

static bool on_cuda(const job *j) {
#ifdef GH_HAVE_CUDA_BACKEND
        return j->on_cuda;
#else
        (void) j;
        return false;
#endif
}

static void job_free(job *j) {
        if (!j)
                return;
#ifdef GH_HAVE_CUDA_BACKEND
        if (j->on_cuda) { /* the stream's work ends (in fini) before its memory goes */
                gh_job_device dev = {.struct_size = sizeof(dev)};
                /* The slice, and with it the stream, may have moved since
                 * the last step; the host finished the old one's work. */
                j->cuda.stream = j->host->device(j->job, &dev) >= 0 ? (CUstream) dev.cuda_stream : NULL;
                gh_dcuda_fini(&j->cuda);
        }
#endif
        if (j->run_ready)
                gh_sd_run_free(&j->run);
        gh_arena_free(j->c.arena);
        if (j->ws)
                j->host->workspace_free(j->job, j->ws);
        gh_sd_models_unload(&j->m);
        gh_tokcache_put(j->tok);
        free(j->init);
        free(j->preview);
        free(j->frames);
        free(j);
}

static int job_parallel(void *pctx, uint32_t n, void (*fn)(void *, uint32_t, uint32_t), void *ctx) {
        job *j = pctx;

        return j->host->parallel_for(j->job, n, fn, ctx);
}

static bool job_cancelled(void *userdata) {
        job *j = userdata;

        return j->host->cancelled(j->job);
}

/* A tensor's bytes in host memory: the pool's view on the CPU, a copy
 * (*ret_copy, freed by the caller) of the device's on a GPU. */
static int host_bytes(job *j, const gh_tensor *t, const void **ret, void **ret_copy) {
        *ret = t->data;
        *ret_copy = NULL;
#ifdef GH_HAVE_CUDA_BACKEND
        if (j->on_cuda) {
                void *copy = malloc(t->bytes ? t->bytes : 1);
                int r = copy ? gh_cuda_errno(j->cuda.cu, j->cuda.cu->MemcpyDtoH(copy, (CUdeviceptr) t->data, t->bytes),
                                             NULL)
                             : -ENOMEM;
                if (r < 0) {
                        free(copy);
                        return r;
                }
                *ret = *ret_copy = copy;
        }
#else
        (void) j;
#endif
        return 0;
}

static int tokenizer_load(job *j, char *err, size_t n) {
        const void *vocab, *merges;
        void *vcopy = NULL, *mcopy = NULL;
        gh_tensor v, m;
        int r;

        if (j->host->tensor(j->job, j->st.model, "tokenizer/vocab.json", &v) < 0 ||
            j->host->tensor(j->job, j->st.model, "tokenizer/merges.txt", &m) < 0)
                return snprintf(err, n,
                                "model %s has no tokenizer (tokenizer/vocab.json and merges.txt; see [model] tokenizer=)",
                                j->st.model),
                       -ENOENT;
        if ((r = host_bytes(j, &v, &vocab, &vcopy)) >= 0 && (r = host_bytes(j, &m, &merges, &mcopy)) >= 0)
                r = gh_tokcache_get(vocab, (size_t) v.bytes, merges, (size_t) m.bytes, &j->tok, err, n);
        else
                snprintf(err, n, "cannot read the tokenizer from the device: %s", strerror(-r));
        free(vcopy);
        free(mcopy);
        if (r >= 0 && (r = gh_prompt_tokenize(j->tok, j->st.prompt, &j->cond, err, n)) >= 0)
                r = gh_prompt_tokenize(j->tok, j->st.negative, &j->uncond, err, n);
        return r;
}

static int image_input(job *j) {
#ifdef IMG2IMG
        const gh_image *im = &j->st.image;
        size_t n = (size_t) im->width * im->height, bpp = im->format == GH_IMAGE_RGBA8 ? 4 : 3;

        if (im->format != GH_IMAGE_RGB8 && im->format != GH_IMAGE_RGBA8)
                return -EINVAL;
        if (!(j->init = malloc(3 * n * sizeof(float))))
                return -ENOMEM;
        for (uint32_t y = 0; y < im->height; y++)
                for (uint32_t x = 0; x < im->width; x++) {
                        const uint8_t *px = (const uint8_t *) im->pixels + (size_t) y * im->stride + x * bpp;
                        for (int c = 0; c < 3; c++)
                                j->init[c * n + (size_t) y * im->width + x] = px[c] / 127.5f - 1.0f;
                }
#else
        (void) j;
#endif
        return 0;
}

/* The CUDA backend on the job's stream. */
static int use_cuda(job *j, const gh_job_device *dev, char *err, size_t n) {
#ifdef GH_HAVE_CUDA_BACKEND
        int r;

        pthread_once(&cuda_once, cuda_load);
        if (!cuda_driver)
                return snprintf(err, n, "CUDA driver: %s", cuda_error), -ENODEV;
        if ((r = gh_dcuda_init(&j->cuda, cuda_driver, (CUstream) dev->cuda_stream, err, n)) < 0)
                return r;
        j->on_cuda = true;
        return 0;
#else
        (void) j;
        (void) dev;
        return snprintf(err, n, "this build of the plugin has no CUDA backend"), -EOPNOTSUPP;
#endif
}

/* The job's workspace: the arena's plan, and on a GPU the backend's work
 * buffer after it. */
static int workspace(job *j, char *err, size_t n) {
        size_t bytes = j->planned;
        int r;

#ifdef GH_HAVE_CUDA_BACKEND
        if (j->on_cuda)
                bytes = cuda_workspace(j->planned);
#endif
        if ((r = j->host->workspace_alloc(j->job, bytes, 256, &j->ws)) < 0)
                return snprintf(err, n, "workspace of %zu bytes: %s", bytes, strerror(-r)), r;
#ifdef GH_HAVE_CUDA_BACKEND
        if (j->on_cuda)
                gh_dcuda_set_work(&j->cuda, (CUdeviceptr) j->ws + (bytes - GH_DCUDA_WORK_SIZE), GH_DCUDA_WORK_SIZE);
#endif
        return 0;
}

static uint64_t now_usec(void) {
        struct timespec ts;

        clock_gettime(CLOCK_MONOTONIC, &ts);
        return (uint64_t) ts.tv_sec * 1000000u + (uint64_t) ts.tv_nsec / 1000u;
}

#ifdef VIDEO
/* The encoder module, loaded once: video-mp4/video-mp4.so beside this
 * plugin's folder (the layout of the build and of an install), else the
 * installed one. */
static gh_video_encode_mp4_fn *mp4_encode;
static char mp4_error[512];
static pthread_once_t mp4_once = PTHREAD_ONCE_INIT;

static void mp4_load(void) {
        char self[4096] = "", beside[4096 + 32] = "";
        const char *const paths[] = {beside, GH_VIDEO_MP4_INSTALLED};
        Dl_info info;

        /* The host loads plugins by /proc/self/fd/N (kept open): its target. */
        if (dladdr((void *) mp4_load, &info) && info.dli_fname) {
                ssize_t k = readlink(info.dli_fname, self, sizeof(self) - 1);
                if (k > 0)
                        self[k] = 0;
                else
                        snprintf(self, sizeof(self), "%s", info.dli_fname);
        }
        const char *slash = strrchr(self, '/');
        if (slash)
                snprintf(beside, sizeof(beside), "%.*s/../video-mp4/video-mp4.so", (int) (slash - self), self);
        for (size_t i = 0; i < GH_PLUGIN_ELEMENTS(paths) && !mp4_encode; i++) {
                if (!paths[i][0])
                        continue;
                void *dl = dlopen(paths[i], RTLD_NOW | RTLD_LOCAL);
                if (!dl) {
                        snprintf(mp4_error, sizeof(mp4_error), "%s", dlerror());
                        continue;
                }
                *(void **) &mp4_encode = dlsym(dl, "gh_video_encode_mp4");
                if (!mp4_encode) {
                        snprintf(mp4_error, sizeof(mp4_error), "%s lacks gh_video_encode_mp4", paths[i]);
                        dlclose(dl);
                }
        }
}

/* Whether MP4s can be made here: the module loads. */
static int mp4_ready(char *err, size_t n) {
        pthread_once(&mp4_once, mp4_load);
        if (!mp4_encode)
                return snprintf(err, n, "no MP4 encoder (format=frames works without one): %s", mp4_error), -ENOSYS;
        return 0;
}
#endif

/* The debug log's account of start(), in microseconds. */
typedef struct setup_times {
        uint64_t t0, device, models, tokenizer, plan, workspace;
} setup_times;

static uint64_t lap(uint64_t *last) {
        uint64_t now = now_usec(), d = now - *last;

        *last = now;
        return d;
}

static int job_setup(job *j, char *err, size_t n) {
        gh_job_device dev = {.struct_size = sizeof(dev)};
        uint32_t chunks;
        int r;

#ifdef VIDEO
        if (strcmp(j->st.format, "mp4") == 0 && (r = mp4_ready(err, n)) < 0)
                return r; /* before any GPU work, not after it */
#endif
        uint64_t last = now_usec();
        setup_times t = {.t0 = last};

        if ((r = j->host->device(j->job, &dev)) < 0 ||
            (dev.kind == GH_DEVICE_KIND_CUDA && (r = use_cuda(j, &dev, err, n)) < 0))
                return r;
        t.device = lap(&last);
        if ((r = load_models(&j->src, &j->msrc, &j->m, &j->st, err, n)) < 0)
                return r;
        t.models = lap(&last);
        if ((r = tokenizer_load(j, err, n)) < 0 || (r = image_input(j)) < 0)
                return r;
        t.tokenizer = lap(&last);
        chunks = j->cond.n_chunks > j->uncond.n_chunks ? j->cond.n_chunks : j->uncond.n_chunks;
        if ((r = gh_sd_plan(&j->m, &j->st.p, chunks, on_cuda(j) && half_unet(&j->st), &j->planned, err, n)) < 0)
                return r;
        t.plan = lap(&last);
        if ((r = workspace(j, err, n)) < 0)
                return r;
        t.workspace = lap(&last);
        if ((r = gh_arena_new(j->ws, j->planned, &j->c.arena)) < 0)
                return r;
        j->cpu = (gh_dcpu){.parallel_for = job_parallel, .pctx = j, .threads = 1};
        j->c = (gh_dctx){.be = &gh_dbackend_cpu, .be_state = &j->cpu, .arena = j->c.arena, .cancelled = job_cancelled,
                         .userdata = j};
#ifdef GH_HAVE_CUDA_BACKEND
        if (j->on_cuda) {
                j->c.be = &gh_dbackend_cuda;
                j->c.be_state = &j->cuda;
                j->c.half = half_unet(&j->st); /* as planned */
        }
#endif
        if ((r = gh_sd_run_init(&j->run, &j->m, &j->st.p, &j->c, chunks, &j->cond, &j->uncond, j->init)) < 0) {
                gh_sd_run_free(&j->run); /* what it made before failing */
                return snprintf(err, n, "%s", j->c.err), r;
        }
        j->run_ready = true;
        j->host->log(j->job, GH_LOG_DEBUG,
                     "start: %.2f ms (backend %.2f, models %.2f, tokenizer and prompts %.2f, plan %.2f, workspace of "
                     "%zu bytes %.2f, run %.2f)",
                     (now_usec() - t.t0) / 1e3, t.device / 1e3, t.models / 1e3, t.tokenizer / 1e3, t.plan / 1e3,
                     j->planned, t.workspace / 1e3, lap(&last) / 1e3);
        return 0;
}

static int start(const gh_host *h, gh_job *gj, const gh_params *ps, void **ret_state) {
        job *j = calloc(1, sizeof(*j));
        char err[1200] = "";
        int r;

        if (!j)
                return -ENOMEM;
        j->host = h;
        j->job = gj;
        j->src = (source){.host = h, .params = ps, .job = gj};
        if ((r = read_params(h, ps, &j->st, err, sizeof(err))) >= 0 && j->st.seed < 0) {
                uint32_t s;
                if (getrandom(&s, sizeof(s), 0) != sizeof(s))
                        s = 0;
                j->st.seed = s;
        }
        j->st.p.seed = (uint64_t) j->st.seed;
        if (r >= 0)
                r = job_setup(j, err, sizeof(err));
        if (r < 0) {
                h->log(gj, GH_LOG_ERR, "%s", err[0] ? err : strerror(-r));
                job_free(j);
                return r;
        }
        *ret_state = j;
        return 0;
}

static int fail(job *j, int r) {
        if (r != -ECANCELED)
                j->host->log(j->job, GH_LOG_ERR, "%s", j->c.err[0] ? j->c.err : strerror(-r));
        return r;
}

#ifdef VIDEO
/* The generation's parameters as JSON, for the clip's metadata. */
static char *params_json(const job *j) {
        const gh_sd_params *p = &j->st.p;
        json_object *o = json_object_new_object();
        char *s;

        json_object_object_add(o, "pipeline", json_object_new_string("video"));
        json_object_object_add(o, "model", json_object_new_string(j->st.model));
        json_object_object_add(o, "motion_module", json_object_new_string(j->st.motion));
        json_object_object_add(o, "prompt", json_object_new_string(j->st.prompt));
        json_object_object_add(o, "negative_prompt", json_object_new_string(j->st.negative));
        json_object_object_add(o, "width", json_object_new_int64(p->width));
        json_object_object_add(o, "height", json_object_new_int64(p->height));
        json_object_object_add(o, "frames", json_object_new_int64(p->frames));
        json_object_object_add(o, "fps", json_object_new_int64(j->st.fps));
        json_object_object_add(o, "steps", json_object_new_int64(p->steps));
        json_object_object_add(o, "sampler", json_object_new_string(j->st.sampler));
        json_object_object_add(o, "cfg_scale", json_object_new_double(p->cfg));
        json_object_object_add(o, "seed", json_object_new_int64((int64_t) p->seed));
        json_object_object_add(o, "clip_skip", json_object_new_int64(p->clip_skip));
        s = strdup(json_object_to_json_string_ext(o, JSON_C_TO_STRING_PLAIN));
        json_object_put(o);
        return s;
}

/* The clip as MP4 into the first output, "video". */
static int encode(job *j) {
        const gh_sd_params *p = &j->st.p;
        char err[512] = "", *meta, seed[24];
        uint8_t *mp4 = NULL;
        size_t size = 0;
        void *out;
        int r;

        pthread_once(&mp4_once, mp4_load);
        if (!mp4_encode) {
                j->host->log(j->job, GH_LOG_ERR, "no MP4 encoder (format=frames works without one): %s", mp4_error);
                return -ENOSYS;
        }
        if (!(meta = params_json(j)))
                return -ENOMEM;
        snprintf(seed, sizeof(seed), "%" PRIu64, p->seed);
        gh_video_meta tags[] = {{"comment", meta}, {"title", j->st.prompt}, {"gpuhost_seed", seed},
                                {"gpuhost_model", j->st.model}, {"gpuhost_motion_module", j->st.motion}};
        r = mp4_encode(j->frames, p->width, p->height, p->frames, (uint32_t) j->st.fps, tags,
                       GH_PLUGIN_ELEMENTS(tags), &mp4, &size, err, sizeof(err));
        free(meta);
        if (r < 0) {
                j->host->log(j->job, GH_LOG_ERR, "encoding the clip: %s", err);
                return r;
        }
        if ((r = j->host->output_bytes(j->job, "video", size, &out)) >= 0)
                memcpy(out, mp4, size);
        free(mp4);
        return r;
}

/* Every frame, then the clip: "video" (MP4, unless format=frames) first,
 * then "frames". */
static int decode(job *j) {
        const gh_sd_params *p = &j->st.p;
        size_t frame = (size_t) p->width * p->height * 3;
        gh_image frames[GH_SD_MAX_FRAMES];
        int r;

        if (!j->frames && !(j->frames = malloc(frame * p->frames)))
                return -ENOMEM;
        for (uint32_t b = 0; b < p->frames; b++)
                if ((r = gh_sd_run_decode(&j->run, b, j->frames + b * frame, NULL)) < 0)
                        return r;
        if (strcmp(j->st.format, "mp4") == 0 && (r = encode(j)) < 0)
                return r;
        r = j->host->output_frames(j->job, "frames", p->width, p->height, GH_IMAGE_RGB8, p->frames, frames);
        for (uint32_t b = 0; r >= 0 && b < p->frames; b++)
                for (uint32_t y = 0; y < p->height; y++)
                        memcpy(frames[b].pixels + (size_t) y * frames[b].stride,
                               j->frames + b * frame + (size_t) y * p->width * 3, (size_t) p->width * 3);
        return r;
}
#else
static int decode(job *j) {
        const gh_sd_params *p = &j->st.p;
        int r;

        for (uint32_t b = 0; b < p->batch; b++) {
                char name[32];
                snprintf(name, sizeof(name), b ? "image-%u" : "image", b);
                if ((r = j->host->output_image(j->job, name, p->width, p->height, GH_IMAGE_RGB8, &j->out[b])) < 0)
                        return r;
                if (j->out[b].stride != p->width * 3)
                        return -EINVAL;
                if ((r = gh_sd_run_decode(&j->run, b, j->out[b].pixels, NULL)) < 0)
                        return r;
        }
        return 0;
}
#endif

#define PREVIEW_USEC 250000 /* previews at most this often */

/* Progress after every step; a preview with it at most every PREVIEW_USEC
 * (making one waits for the device, which would otherwise stall a fast
 * GPU's queue at every step). */
static void progress(job *j, uint32_t step, uint32_t steps) {
        int64_t f = gh_vae_factor(&j->m.vae);
        gh_image im = {.width = j->st.p.width / (uint32_t) f, .height = j->st.p.height / (uint32_t) f,
                       .format = GH_IMAGE_RGB8};
        uint64_t now = now_usec();

        if (j->preview_usec && now - j->preview_usec < PREVIEW_USEC) {
                j->host->progress(j->job, step, steps, NULL);
                return;
        }
        j->preview_usec = now;
        im.stride = im.width * 3;
        if (!j->preview)
                j->preview = malloc((size_t) im.stride * im.height);
        if (j->preview && gh_sd_run_preview(&j->run, j->st.p.frames / 2, j->preview) >= 0) {
                im.pixels = j->preview;
                j->host->progress(j->job, step, steps, &im);
        } else
                j->host->progress(j->job, step, steps, NULL);
}

/* precision=fp16 (GPU only): the sampler's UNet and the VAE's decode on
 * tensor cores, fp16 operands with fp32 sums. The UNet's activations are
 * fp16 too (c.half, set at the start and planned so), as in PyTorch's
 * fp16 pipelines; its input and output, the samplers' arithmetic and the
 * VAE's activations stay fp32 (so the VAE's large activations never
 * overflow an fp16 store). The text encoder and img2img's encode stay in
 * fp32, and so does the decode of a VAE with bf16 weights
 * (gh_vae_decode_fp16_ok). */
static void tensor_cores(job *j, bool on) {
#ifdef GH_HAVE_CUDA_BACKEND
        if (j->on_cuda)
                j->cuda.fp16 = on && strcmp(j->st.precision, "fp16") == 0;
#else
        (void) j;
        (void) on;
#endif
}

static int step(const gh_host *h, gh_job *gj, void *state, uint32_t i) {
        job *j = state;
        uint32_t run = gh_sd_steps_run(&j->st.p);
        gh_job_device dev = {.struct_size = sizeof(dev)};
        int r;

        if ((r = h->device(gj, &dev)) < 0)
                return r;
        j->cpu.threads = dev.cpu_threads ? dev.cpu_threads : 1;
#ifdef GH_HAVE_CUDA_BACKEND
        if (j->on_cuda)
                j->cuda.stream = (CUstream) dev.cuda_stream;
#endif
        tensor_cores(j, false);
        if (i == 0 && (r = gh_sd_run_prepare(&j->run)) < 0)
                return fail(j, r);
        if (i < run) {
                tensor_cores(j, true);
                r = gh_sd_run_step(&j->run, i);
                tensor_cores(j, false);
                if (r < 0)
                        return fail(j, r);
                progress(j, i + 1, run + 1);
                return GH_STEP_CONTINUE;
        }
        tensor_cores(j, gh_vae_decode_fp16_ok(&j->m.vae));
        r = decode(j);
        tensor_cores(j, false);
        if (r < 0)
                return fail(j, r);
        return GH_STEP_DONE;
}

static void meta_int(job *j, const char *key, int64_t v) {
        char b[32];

        snprintf(b, sizeof(b), "%" PRId64, v);
        j->host->output_meta(j->job, key, b);
}

static int finish(const gh_host *h, gh_job *gj, void *state) {
        job *j = state;
        const gh_sd_params *p = &j->st.p;
        gh_model_info info = {.struct_size = sizeof(info)};
        char b[64];

        h->output_meta(gj, "prompt", j->st.prompt);
        h->output_meta(gj, "negative_prompt", j->st.negative);
        meta_int(j, "steps", p->steps);
        h->output_meta(gj, "sampler", j->st.sampler);
        snprintf(b, sizeof(b), "%g", p->cfg);
        h->output_meta(gj, "cfg_scale", b);
        meta_int(j, "seed", (int64_t) p->seed);
        meta_int(j, "width", p->width);
        meta_int(j, "height", p->height);
#ifdef VIDEO
        meta_int(j, "frames", p->frames);
        meta_int(j, "fps", j->st.fps);
        h->output_meta(gj, "format", j->st.format);
        if (p->window) {
                meta_int(j, "context_frames", p->window);
                meta_int(j, "context_overlap", p->overlap);
        }
        h->output_meta(gj, "motion_module", j->st.motion);
#else
        meta_int(j, "batch_size", p->batch);
#endif
        meta_int(j, "clip_skip", p->clip_skip);
        h->output_meta(gj, "prediction", j->st.prediction);
        bool fp16 = false; /* what ran: fp16 is a GPU mode */
#ifdef GH_HAVE_CUDA_BACKEND
        fp16 = j->on_cuda && strcmp(j->st.precision, "fp16") == 0;
#endif
        h->output_meta(gj, "precision", fp16 ? "fp16" : "fp32");
        if (p->img2img) {
                snprintf(b, sizeof(b), "%g", p->strength);
                h->output_meta(gj, "strength", b);
        }
        h->output_meta(gj, "model", j->st.model);
        if (HOST_HAS(h, model_info) && h->model_info(gj, j->st.model, &info) >= 0 && info.sha256 && info.sha256[0])
                h->output_meta(gj, "model_hash", info.sha256);
        meta_int(j, "workspace_planned", (int64_t) j->planned);
        meta_int(j, "workspace_peak", (int64_t) gh_arena_peak(j->c.arena));
        job_free(j);
        return 0;
}

static void abort_job(const gh_host *h, gh_job *gj, void *state) {
        job_free(state);
}

static const gh_plugin plugin = {
        GH_PLUGIN_HEADER,
#if defined(VIDEO)
        .name = "video",
        .description = "AnimateDiff-style text to video: Stable Diffusion 1.x with a motion module",
#elif defined(IMG2IMG)
        .name = "img2img",
        .description = "Stable Diffusion 1.x image to image",
#else
        .name = "txt2img",
        .description = "Stable Diffusion 1.x text to image",
#endif
        .version = "1.0",
        .params = params,
        .n_params = GH_PLUGIN_ELEMENTS(params),
        .flags = GH_PLUGIN_RETRY_SAFE,
        .estimate = estimate,
        .start = start,
        .step = step,
        .finish = finish,
        .abort = abort_job,
};

GH_PLUGIN_DEFINE(plugin);

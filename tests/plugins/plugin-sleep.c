/* test-sleep: a plugin for scheduler tests and benchmarks. Each of |steps|
 * steps sleeps |step_ms| (asking whether it was cancelled every 10 ms) and
 * then burns |work| iterations of arithmetic spread over the job's CPU
 * threads with parallel_for, so a step's time shows the job's slice. It
 * declares |workspace| bytes and really allocates and touches them (so an
 * admission mistake would show as memory really used), reads the first
 * bytes of every tensor of |model| if one is given, and outputs "report",
 * text with what it saw: "threads=N min_threads=M sum=S". With steps=1,
 * step_ms=0, work=0 and workspace=0 it is a no-op job. Given an |image|,
 * estimate() checks that it has a size but no pixels, start() reads its
 * pixels, and the report adds " image=WxH:FORMAT:SUM:HASH" (the sum of
 * its pixel bytes, and their FNV-1a hash), so a test can tell that the
 * host decoded what it sent.
 *
 * On a GPU (built with nvcc), |spin_cycles| > 0 makes each step launch a
 * grid of |spin_blocks| blocks of 1024 threads on the job's stream, each
 * spinning that many SM clock cycles and writing down the SM it ran on;
 * the step waits for it. So a step's time shows the job's SM slice, and
 * the report adds "sms=N smmask=HEX" (every SM any block ran on, SM 0 in
 * the lowest bit of the last word). The kernel comes from a context-
 * independent library (cuLibraryLoadData), as the slice may change
 * between steps. */
#include <errno.h>
#include <inttypes.h>
#include <stddef.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "gpuhost/plugin.h"

#ifdef GH_SLEEP_CUDA
#include <cuda.h>
#include <dlfcn.h>
extern const char gh_spin_kernel_ptx[];
#define SM_WORDS 4 /* up to 256 SMs */

typedef struct sleep_cuda {
        void *lib;
        __typeof__(&cuLibraryLoadData) LibraryLoadData;
        __typeof__(&cuLibraryUnload) LibraryUnload;
        __typeof__(&cuLibraryGetKernel) LibraryGetKernel;
        __typeof__(&cuLaunchKernel) LaunchKernel;
        __typeof__(&cuMemcpyDtoHAsync) MemcpyDtoHAsync;
        __typeof__(&cuStreamSynchronize) StreamSynchronize;
        __typeof__(&cuMemHostAlloc) MemHostAlloc;
        __typeof__(&cuMemFreeHost) MemFreeHost;
        CUlibrary library;
        CUkernel kernel;
        unsigned *host;
        void *out; /* workspace: 2 words a block */
        uint64_t sms[SM_WORDS];
} sleep_cuda;
#endif

#define MIB (UINT64_C(1) << 20)

static const gh_plugin_param params[] = {
        {GH_PARAM_HEADER, .name = "steps", .type = GH_PARAM_INT, .help = "steps", .int_min = 1, .int_max = 100000,
         .int_default = 1},
        {GH_PARAM_HEADER, .name = "step_ms", .type = GH_PARAM_INT, .help = "sleep per step, ms", .int_min = 0,
         .int_max = 600000, .int_default = 0},
        {GH_PARAM_HEADER, .name = "work", .type = GH_PARAM_INT, .help = "arithmetic per step (iterations)",
         .int_min = 0, .int_max = INT64_C(1) << 40, .int_default = 0},
        {GH_PARAM_HEADER, .name = "workspace", .type = GH_PARAM_INT, .help = "declared and used workspace, bytes",
         .int_min = 0, .int_max = INT64_C(1) << 40, .int_default = 0},
        {GH_PARAM_HEADER, .name = "slice_sms", .type = GH_PARAM_INT, .help = "SMs wanted", .int_min = 0,
         .int_max = 4096, .int_default = 0},
        {GH_PARAM_HEADER, .name = "step_timeout_ms", .type = GH_PARAM_INT, .help = "declared step timeout",
         .int_min = 0, .int_max = 86400000, .int_default = 0},
        {GH_PARAM_HEADER, .name = "model", .type = GH_PARAM_MODEL, .help = "a model to read"},
        {GH_PARAM_HEADER, .name = "spin_cycles", .type = GH_PARAM_INT, .help = "GPU: SM clock cycles each block spins",
         .int_min = 0, .int_max = INT64_C(1) << 40, .int_default = 0},
        {GH_PARAM_HEADER, .name = "spin_blocks", .type = GH_PARAM_INT, .help = "GPU: blocks of 1024 threads a step",
         .int_min = 1, .int_max = 1 << 20, .int_default = 1024},
        {GH_PARAM_HEADER, .name = "image", .type = GH_PARAM_IMAGE, .help = "an image to sum"},
};

typedef struct job_state {
        int64_t steps, step_ms, work;
        uint64_t workspace;
        unsigned char *ws;
        const char *model;
        uint64_t sum;
        unsigned max_threads, min_threads;
        int64_t spin_cycles, spin_blocks;
        char image[96];  /* "WxH:FORMAT:SUM:HASH" of the image, "" if none */
#ifdef GH_SLEEP_CUDA
        sleep_cuda cu;
#endif
} job_state;

#ifdef GH_SLEEP_CUDA
static int cuda_setup(const gh_host *host, gh_job *job, job_state *s);
static void cuda_done(job_state *s);
#endif

static int64_t param(const gh_host *host, const gh_params *p, const char *name) {
        int64_t v = 0;
        host->param_int(p, name, &v);
        return v;
}

/* The image's size and format, pixels summed and hashed, into |buf|. */
static int image_report(const gh_host *host, const gh_params *p, char *buf, size_t size) {
        gh_image img;
        uint64_t sum = 0, hash = 0xcbf29ce484222325u;
        int r = host->param_image(p, "image", &img);

        if (r == -ENOENT)
                return 0;
        if (r < 0)
                return r;
        if (!img.pixels || img.format == GH_IMAGE_RGB_F32)
                return -EPROTO;
        uint32_t row = img.width * (img.format == GH_IMAGE_RGBA8 ? 4 : 3);
        for (uint32_t y = 0; y < img.height; y++)
                for (uint32_t x = 0; x < row; x++) {
                        uint8_t b = ((const uint8_t *) img.pixels)[(size_t) y * img.stride + x];
                        sum += b;
                        hash = (hash ^ b) * 0x100000001b3u;
                }
        snprintf(buf, size, "%ux%u:%s:%" PRIu64 ":%016" PRIx64, img.width, img.height,
                 img.format == GH_IMAGE_RGBA8 ? "rgba8" : "rgb8", sum, hash);
        return 0;
}

static int estimate(const gh_host *host, const gh_params *p, gh_plugin_needs *ret) {
        const char *model = NULL;
        uint64_t ws = (uint64_t) param(host, p, "workspace");
        gh_image img;
        int r = host->param_image(p, "image", &img);

        if (r >= 0 && (img.pixels || img.width == 0 || img.height == 0 || img.stride < img.width * 3))
                return -EPROTO; /* a size, no pixels yet */
        if (r < 0 && r != -ENOENT)
                return r;

        ret->steps = (uint32_t) param(host, p, "steps");
        ret->workspace[GH_DEVICE_KIND_CPU] = ws ? ws : 1;
        ret->workspace[GH_DEVICE_KIND_CUDA] = (ws ? ws : 1) + (uint64_t) param(host, p, "spin_blocks") * 8;
        ret->slice_sms = (uint32_t) param(host, p, "slice_sms");
        if (ret->struct_size >= offsetof(gh_plugin_needs, step_timeout_ms) + sizeof(ret->step_timeout_ms))
                ret->step_timeout_ms = (uint32_t) param(host, p, "step_timeout_ms");
        if (host->param_string(p, "model", &model) >= 0 && model)
                ret->models[ret->n_models++] = model;
        return 0;
}

static int start(const gh_host *host, gh_job *job, const gh_params *p, void **ret_state) {
        job_state *s = calloc(1, sizeof(*s));
        gh_job_device dev = {.struct_size = sizeof(dev)};

        if (!s)
                return -ENOMEM;
        s->steps = param(host, p, "steps");
        s->step_ms = param(host, p, "step_ms");
        s->work = param(host, p, "work");
        s->workspace = (uint64_t) param(host, p, "workspace");
        s->min_threads = UINT32_MAX;
        if (host->param_string(p, "model", &s->model) < 0)
                s->model = NULL;
        s->spin_cycles = param(host, p, "spin_cycles");
        s->spin_blocks = param(host, p, "spin_blocks");
        int r = image_report(host, p, s->image, sizeof(s->image));
        if (r < 0) {
                free(s);
                return r;
        }
        host->device(job, &dev);
#ifdef GH_SLEEP_CUDA
        if (dev.kind == GH_DEVICE_KIND_CUDA && s->spin_cycles > 0) {
                r = cuda_setup(host, job, s);
                if (r < 0) {
                        cuda_done(s);
                        free(s);
                        return r;
                }
        }
#endif
        if (s->workspace && dev.kind == GH_DEVICE_KIND_CPU) {
                r = host->workspace_alloc(job, s->workspace, 64, (void **) &s->ws);
                if (r < 0) {
                        free(s);
                        return r;
                }
                for (uint64_t i = 0; i < s->workspace; i += 4096) /* really use it */
                        s->ws[i] = (unsigned char) i;
        }
        *ret_state = s;
        return 0;
}

#ifdef GH_SLEEP_CUDA
static int cuda_setup(const gh_host *host, gh_job *job, job_state *s) {
        sleep_cuda *c = &s->cu;

        c->lib = dlopen("libcuda.so.1", RTLD_NOW | RTLD_LOCAL);
        if (!c->lib)
                return -ENOENT;
#define SYM(member, name) (*(void **) &c->member = dlsym(c->lib, name))
        if (!SYM(LibraryLoadData, "cuLibraryLoadData") || !SYM(LibraryUnload, "cuLibraryUnload") ||
            !SYM(LibraryGetKernel, "cuLibraryGetKernel") || !SYM(LaunchKernel, "cuLaunchKernel") ||
            !SYM(MemcpyDtoHAsync, "cuMemcpyDtoHAsync_v2") || !SYM(StreamSynchronize, "cuStreamSynchronize") ||
            !SYM(MemHostAlloc, "cuMemHostAlloc") || !SYM(MemFreeHost, "cuMemFreeHost"))
                return -EOPNOTSUPP;
#undef SYM
        /* Pinned and portable: usable from whichever context the slice is. */
        void *pinned = NULL;
        if (c->MemHostAlloc(&pinned, (size_t) s->spin_blocks * 8, CU_MEMHOSTALLOC_PORTABLE) != CUDA_SUCCESS)
                return -ENOMEM;
        c->host = pinned;
        int r = host->workspace_alloc(job, (size_t) s->spin_blocks * 8, 256, &c->out);
        if (r < 0)
                return r;
        CUresult e = c->LibraryLoadData(&c->library, gh_spin_kernel_ptx, NULL, NULL, 0, NULL, NULL, 0);
        if (e == CUDA_SUCCESS)
                e = c->LibraryGetKernel(&c->kernel, c->library, "gh_spin");
        if (e != CUDA_SUCCESS) {
                host->log(job, GH_LOG_ERR, "CUDA setup failed: error %d", (int) e);
                return -EIO;
        }
        return 0;
}

static void cuda_done(job_state *s) {
        if (s->cu.library)
                s->cu.LibraryUnload(s->cu.library);
        if (s->cu.host)
                s->cu.MemFreeHost(s->cu.host);
        if (s->cu.lib)
                dlclose(s->cu.lib);
}

/* One grid on the job's stream (its current slice), waited for. */
static int cuda_spin(const gh_host *host, gh_job *job, job_state *s, const gh_job_device *dev, uint32_t k) {
        sleep_cuda *c = &s->cu;
        unsigned long long cycles = (unsigned long long) s->spin_cycles;
        unsigned tag = (k + 1) << 20;
        CUdeviceptr out = (CUdeviceptr) (uintptr_t) c->out;
        void *args[] = {&cycles, &tag, &out};
        CUstream stream = dev->cuda_stream;
        CUresult e = c->LaunchKernel((CUfunction) c->kernel, (unsigned) s->spin_blocks, 1, 1, 1024, 1, 1, 0, stream,
                                     args, NULL);

        if (e == CUDA_SUCCESS)
                e = c->MemcpyDtoHAsync(c->host, out, (size_t) s->spin_blocks * 8, stream);
        if (e == CUDA_SUCCESS)
                e = c->StreamSynchronize(stream);
        if (e != CUDA_SUCCESS) {
                host->log(job, GH_LOG_ERR, "spin kernel failed: error %d", (int) e);
                return -EIO;
        }
        for (int64_t b = 0; b < s->spin_blocks; b++) {
                if (c->host[2 * b] != tag + (unsigned) b)
                        return -EIO; /* the kernel did not run as asked */
                unsigned sm = c->host[2 * b + 1];
                if (sm < 64 * SM_WORDS)
                        c->sms[sm / 64] |= UINT64_C(1) << (sm % 64);
        }
        return 0;
}
#endif

typedef struct burn {
        uint64_t per;
        volatile uint64_t out[64];
} burn;

static void burn_fn(void *ctx, uint32_t i, uint32_t thread) {
        burn *b = ctx;
        uint64_t x = i + 1;

        for (uint64_t k = 0; k < b->per; k++)
                x = x * 6364136223846793005u + 1442695040888963407u;
        b->out[thread & 63] += x;
}

static void sleep_ms(const gh_host *host, gh_job *job, int64_t ms) {
        while (ms > 0 && !host->cancelled(job)) {
                int64_t chunk = ms < 10 ? ms : 10;
                struct timespec ts = {.tv_sec = 0, .tv_nsec = chunk * 1000000};
                nanosleep(&ts, NULL);
                ms -= chunk;
        }
}

static int step(const gh_host *host, gh_job *job, void *state, uint32_t k) {
        job_state *s = state;
        gh_job_device dev = {.struct_size = sizeof(dev)};

        host->device(job, &dev); /* the slice may change between steps */
        if (dev.cpu_threads > s->max_threads)
                s->max_threads = dev.cpu_threads;
        if (dev.cpu_threads < s->min_threads)
                s->min_threads = dev.cpu_threads;
        sleep_ms(host, job, s->step_ms);
        if (host->cancelled(job))
                return -ECANCELED;
        if (s->work > 0 && dev.kind == GH_DEVICE_KIND_CPU) {
                static const uint32_t items = 64;
                burn b = {.per = (uint64_t) s->work / items};
                int r = host->parallel_for(job, items, burn_fn, &b);
                if (r < 0)
                        return r;
        }
#ifdef GH_SLEEP_CUDA
        if (s->spin_cycles > 0 && dev.kind == GH_DEVICE_KIND_CUDA) {
                int r = cuda_spin(host, job, s, &dev, k);
                if (r < 0)
                        return r;
        }
#endif
        if (s->model && k == 0) {
                gh_tensor t;
                static const char *const names[] = {"a", "b", "w", "weight", NULL};
                for (unsigned i = 0; names[i]; i++)
                        if (host->tensor(job, s->model, names[i], &t) >= 0 && dev.kind == GH_DEVICE_KIND_CPU)
                                for (uint64_t b = 0; b < t.bytes && b < 4096; b++)
                                        s->sum += ((const unsigned char *) t.data)[b];
        }
        return (int64_t) k + 1 < s->steps ? GH_STEP_CONTINUE : GH_STEP_DONE;
}

static int finish(const gh_host *host, gh_job *job, void *state) {
        job_state *s = state;
        char text[512];
        void *out;
        int n = snprintf(text, sizeof(text), "threads=%u min_threads=%u sum=%" PRIu64, s->max_threads,
                         s->min_threads == UINT32_MAX ? 0 : s->min_threads, s->sum);
#ifdef GH_SLEEP_CUDA
        unsigned sms = 0;
        for (int i = 0; i < SM_WORDS; i++)
                sms += (unsigned) __builtin_popcountll(s->cu.sms[i]);
        n += snprintf(text + n, sizeof(text) - (size_t) n, " sms=%u smmask=", sms);
        for (int i = SM_WORDS - 1; i >= 0; i--)
                n += snprintf(text + n, sizeof(text) - (size_t) n, "%016" PRIx64, s->cu.sms[i]);
        cuda_done(s);
#endif
        if (s->image[0])
                n += snprintf(text + n, sizeof(text) - (size_t) n, " image=%s", s->image);
        n += snprintf(text + n, sizeof(text) - (size_t) n, "\n");
        int r = host->output_bytes(job, "report", (size_t) n, &out);

        if (r >= 0)
                memcpy(out, text, (size_t) n);
        if (s->ws)
                host->workspace_free(job, s->ws);
        free(s);
        return r;
}

static void abort_job(const gh_host *host, gh_job *job, void *state) {
        job_state *s = state;

#ifdef GH_SLEEP_CUDA
        if (s->cu.lib && s->cu.out) {
                gh_job_device dev = {.struct_size = sizeof(dev)};
                host->device(job, &dev);
                s->cu.StreamSynchronize(dev.cuda_stream); /* nothing may still write the workspace */
        }
        cuda_done(s);
#endif
        if (s->ws)
                host->workspace_free(job, s->ws);
        free(s);
}

static const gh_plugin plugin = {
        GH_PLUGIN_HEADER,
        .name = "test-sleep",
        .version = "1.0",
        .description = "sleeps, burns CPU in its slice, uses its workspace: for scheduler tests",
        .params = params,
        .n_params = GH_PLUGIN_ELEMENTS(params),
        .flags = 0,
        .estimate = estimate,
        .start = start,
        .step = step,
        .finish = finish,
        .abort = abort_job,
};

GH_PLUGIN_DEFINE(plugin);

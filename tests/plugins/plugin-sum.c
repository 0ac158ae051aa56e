/* Test plugin "sum": a valid plugin whose job sums blocks of one float32
 * tensor of its model, one block per step, so a test can check that the
 * weights it sees are the daemon's. On the CPU device the blocks are summed
 * on the job's threads (parallel_for); on a GPU (when built with the PTX of
 * sum-kernel.cu) a kernel reads the weights where they lie in the pool and
 * adds into workspace memory on the device. Exercises the host; not a
 * product pipeline. */
#include <dlfcn.h>
#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <gpuhost/plugin.h>

#ifdef GH_SUM_CUDA
#include <cuda.h>
extern const char gh_sum_kernel_ptx[];

/* The few driver entry points the GPU path needs, resolved per job. */
typedef struct sum_cuda {
        void *lib;
        CUresult (*ModuleLoadData)(CUmodule *, const void *);
        CUresult (*ModuleUnload)(CUmodule);
        CUresult (*ModuleGetFunction)(CUfunction *, CUmodule, const char *);
        CUresult (*LaunchKernel)(CUfunction, unsigned, unsigned, unsigned, unsigned, unsigned, unsigned, unsigned,
                                 CUstream, void **, void **);
        CUresult (*MemsetD8Async)(CUdeviceptr, unsigned char, size_t, CUstream);
        CUresult (*MemcpyDtoHAsync)(void *, CUdeviceptr, size_t, CUstream);
        CUresult (*StreamSynchronize)(CUstream);
        CUmodule module;
        CUfunction fn;
        CUstream stream;
} sum_cuda;
#endif

typedef struct sum_state {
        gh_tensor t;
        uint32_t blocks, step;
        double *sums;  /* workspace: host memory, or device memory on a GPU */
        gh_job_device dev;
        uint64_t per;  /* elements per block */
        double scale;
        /* CPU: per-thread partial sums of the current block */
        double *partial;
#ifdef GH_SUM_CUDA
        sum_cuda cu;
#endif
} sum_state;

static const char *const modes[] = {"f32", "bytes", NULL};

static const gh_plugin_param params[] = {
        {GH_PARAM_HEADER, .name = "model", .type = GH_PARAM_MODEL, .help = "the model to read", .required = true},
        {GH_PARAM_HEADER, .name = "tensor", .type = GH_PARAM_STRING, .help = "the tensor to sum", .required = true,
         .string_max = 256},
        {GH_PARAM_HEADER, .name = "blocks", .type = GH_PARAM_INT, .help = "blocks (= steps)", .int_min = 1,
         .int_max = 1000, .int_default = 4},
        {GH_PARAM_HEADER, .name = "mode", .type = GH_PARAM_ENUM, .help = "how to read the data", .choices = modes,
         .enum_default = "f32"},
        {GH_PARAM_HEADER, .name = "scale", .type = GH_PARAM_FLOAT, .help = "multiplies the sums", .float_min = -10,
         .float_max = 10, .float_default = 1},
        {GH_PARAM_HEADER, .name = "verbose", .type = GH_PARAM_BOOL, .help = "log each step"},
};

static int estimate(const gh_host *host, const gh_params *p, gh_plugin_needs *ret) {
        int64_t blocks;
        const char *model;
        int r = host->param_int(p, "blocks", &blocks);

        if (r >= 0)
                r = host->param_string(p, "model", &model);
        if (r < 0)
                return r;
        memset(ret, 0, sizeof(*ret));
        ret->struct_size = sizeof(*ret);
        ret->workspace[GH_DEVICE_KIND_CPU] = (uint64_t) blocks * sizeof(double) + 1024 * sizeof(double);
#ifdef GH_SUM_CUDA
        ret->workspace[GH_DEVICE_KIND_CUDA] = (uint64_t) blocks * sizeof(double);
#endif
        ret->steps = (uint32_t) blocks;
        ret->models[0] = model;
        ret->n_models = 1;
        return 0;
}

#ifdef GH_SUM_CUDA
static int cuda_setup(const gh_host *host, gh_job *job, sum_state *s) {
        sum_cuda *c = &s->cu;
        c->lib = dlopen("libcuda.so.1", RTLD_NOW | RTLD_LOCAL);
        if (!c->lib)
                return -ENOENT;
#define SYM(member, name) (*(void **) &c->member = dlsym(c->lib, name))
        if (!SYM(ModuleLoadData, "cuModuleLoadData") || !SYM(ModuleUnload, "cuModuleUnload") ||
            !SYM(ModuleGetFunction, "cuModuleGetFunction") || !SYM(LaunchKernel, "cuLaunchKernel") ||
            !SYM(MemsetD8Async, "cuMemsetD8Async") || !SYM(MemcpyDtoHAsync, "cuMemcpyDtoHAsync_v2") ||
            !SYM(StreamSynchronize, "cuStreamSynchronize"))
                return -EOPNOTSUPP;
#undef SYM
        c->stream = s->dev.cuda_stream;
        CUresult e = c->ModuleLoadData(&c->module, gh_sum_kernel_ptx);
        if (e == CUDA_SUCCESS)
                e = c->ModuleGetFunction(&c->fn, c->module, "gh_block_sum");
        if (e == CUDA_SUCCESS)
                e = c->MemsetD8Async((CUdeviceptr) (uintptr_t) s->sums, 0, s->blocks * sizeof(double), c->stream);
        if (e != CUDA_SUCCESS) {
                host->log(job, GH_LOG_ERR, "CUDA setup failed: error %d", (int) e);
                return -EIO;
        }
        return 0;
}

static void cuda_done(sum_state *s) {
        if (s->cu.module)
                s->cu.ModuleUnload(s->cu.module);
        if (s->cu.lib)
                dlclose(s->cu.lib);
}
#endif

static void state_free(const gh_host *host, gh_job *job, sum_state *s) {
#ifdef GH_SUM_CUDA
        cuda_done(s);
#endif
        host->workspace_free(job, s->sums);
        if (s->partial)
                host->workspace_free(job, s->partial);
        free(s);
}

static int start(const gh_host *host, gh_job *job, const gh_params *p, void **ret_state) {
        const char *model, *tensor;
        int64_t blocks;
        int r;

        if ((r = host->param_string(p, "model", &model)) < 0 || (r = host->param_string(p, "tensor", &tensor)) < 0 ||
            (r = host->param_int(p, "blocks", &blocks)) < 0)
                return r;
        sum_state *s = calloc(1, sizeof(*s));
        if (!s)
                return -ENOMEM;
        if ((r = host->param_float(p, "scale", &s->scale)) < 0 || (r = host->device(job, &s->dev)) < 0 ||
            (r = host->tensor(job, model, tensor, &s->t)) < 0) {
                free(s);
                return r;
        }
        if (s->t.dtype != GH_TENSOR_F32) {
                host->log(job, GH_LOG_ERR, "tensor %s is %s, not F32", tensor, s->t.dtype_name);
                free(s);
                return -EMEDIUMTYPE;
        }
        s->blocks = (uint32_t) blocks;
        s->per = (s->t.bytes / 4 + s->blocks - 1) / s->blocks;
        if ((r = host->workspace_alloc(job, (size_t) blocks * sizeof(double), 8, (void **) &s->sums)) < 0) {
                free(s);
                return r;
        }
        if (s->dev.kind == GH_DEVICE_KIND_CPU)
                r = host->workspace_alloc(job, 1024 * sizeof(double), 64, (void **) &s->partial);
#ifdef GH_SUM_CUDA
        else
                r = cuda_setup(host, job, s);
#else
        else
                r = -EOPNOTSUPP;
#endif
        if (r < 0) {
                state_free(host, job, s);
                return r;
        }
        *ret_state = s;
        return 0;
}

typedef struct cpu_chunk {
        sum_state *s;
        uint64_t begin, end, chunk;
} cpu_chunk;

/* One chunk of the block on one of the job's threads. */
static void sum_chunk(void *ctx, uint32_t i, uint32_t thread) {
        cpu_chunk *c = ctx;
        const float *f = c->s->t.data;
        uint64_t b = c->begin + i * c->chunk, e = b + c->chunk < c->end ? b + c->chunk : c->end;
        double acc = 0;

        for (uint64_t k = b; k < e; k++)
                acc += f[k];
        c->s->partial[i] = acc;
}

static int step(const gh_host *host, gh_job *job, void *state, uint32_t k) {
        sum_state *s = state;
        uint64_t n = s->t.bytes / 4, begin = k * s->per, end = begin + s->per < n ? begin + s->per : n;

        if (begin > n)
                begin = end = n;
        if (s->dev.kind == GH_DEVICE_KIND_CPU) {
                cpu_chunk c = {s, begin, end, (end - begin + 1023) / 1024};
                uint32_t chunks = c.chunk ? (uint32_t) ((end - begin + c.chunk - 1) / c.chunk) : 0;
                double acc = 0;
                if (chunks)
                        host->parallel_for(job, chunks, sum_chunk, &c);
                for (uint32_t i = 0; i < chunks; i++)
                        acc += s->partial[i];
                s->sums[k] = acc;
        }
#ifdef GH_SUM_CUDA
        else {
                CUdeviceptr x = (CUdeviceptr) (uintptr_t) s->t.data, out = (CUdeviceptr) (uintptr_t) (s->sums + k);
                unsigned long long b = begin, e = end;
                void *args[] = {&x, &b, &e, &out};
                CUresult r = s->cu.LaunchKernel(s->cu.fn, 120, 1, 1, 256, 1, 1, 0, s->cu.stream, args, NULL);
                if (r != CUDA_SUCCESS) {
                        host->log(job, GH_LOG_ERR, "cuLaunchKernel failed: error %d", (int) r);
                        return -EIO;
                }
        }
#endif
        if (host->cancelled(job))
                return -ECANCELED;
        host->progress(job, k + 1, s->blocks, NULL);
        return k + 1 < s->blocks ? GH_STEP_CONTINUE : GH_STEP_DONE;
}

static int finish(const gh_host *host, gh_job *job, void *state) {
        sum_state *s = state;
        double *out;
        int r = host->output_bytes(job, "sums", s->blocks * sizeof(double), (void **) &out);

        if (r >= 0 && s->dev.kind == GH_DEVICE_KIND_CPU)
                memcpy(out, s->sums, s->blocks * sizeof(double));
#ifdef GH_SUM_CUDA
        if (r >= 0 && s->dev.kind == GH_DEVICE_KIND_CUDA &&
            (s->cu.MemcpyDtoHAsync(out, (CUdeviceptr) (uintptr_t) s->sums, s->blocks * sizeof(double), s->cu.stream) !=
                     CUDA_SUCCESS ||
             s->cu.StreamSynchronize(s->cu.stream) != CUDA_SUCCESS))
                r = -EIO;
#endif
        for (uint32_t i = 0; r >= 0 && i < s->blocks; i++)
                out[i] *= s->scale;
        if (r >= 0) {
                char text[32];
                snprintf(text, sizeof(text), "%u", s->blocks);
                r = host->output_meta(job, "blocks", text);
                host->output_meta(job, "device", s->dev.kind == GH_DEVICE_KIND_CUDA ? "cuda" : "cpu");
        }
        state_free(host, job, s);
        return r;
}

static void abort_job(const gh_host *host, gh_job *job, void *state) {
        sum_state *s = state;

#ifdef GH_SUM_CUDA
        if (s->dev.kind == GH_DEVICE_KIND_CUDA)
                s->cu.StreamSynchronize(s->cu.stream); /* no kernel may still write the workspace */
#endif
        state_free(host, job, s);
}

static const gh_plugin plugin = {
        GH_PLUGIN_HEADER,
        .name = "test-sum",
        .version = "1.0",
        .description = "sums blocks of a tensor, one block per step",
        .params = params,
        .n_params = GH_PLUGIN_ELEMENTS(params),
        .flags = GH_PLUGIN_RETRY_SAFE,
        .estimate = estimate,
        .start = start,
        .step = step,
        .finish = finish,
        .abort = abort_job,
};

GH_PLUGIN_DEFINE(plugin)

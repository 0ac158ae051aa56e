/* gpuhost plugin ABI: what a pipeline plugin (a shared object) exports, and
 * the services the host (gpuhost-worker) gives it.
 *
 * A plugin exports exactly one symbol, gh_plugin_entry(), returning a const
 * descriptor (gh_plugin) that lives as long as the plugin is loaded. Write
 * it as:
 *
 *     #include <gpuhost/plugin.h>
 *     static const gh_plugin_param params[] = { ... };
 *     static const gh_plugin plugin = {
 *             GH_PLUGIN_HEADER,
 *             .name = "txt2img", .version = "1.0", .description = "...",
 *             .params = params, .n_params = GH_PLUGIN_ELEMENTS(params),
 *             .estimate = estimate, .start = start, .step = step,
 *             .finish = finish, .abort = abort_job,
 *     };
 *     GH_PLUGIN_DEFINE(plugin);
 *
 * and build it with -fvisibility=hidden (gh_add_plugin() in CMake does), so
 * that gh_plugin_entry is the only exported symbol.
 *
 * Versioning (as Redis modules and nginx do): the descriptor starts with the
 * ABI version the plugin was built against and its own size. The host refuses
 * a plugin whose major version differs from its own, with a message. Within
 * one major version structs only grow at the end, so each side checks
 * struct_size before touching a member added by a later minor version.
 *
 * Conventions: every function returns >= 0 on success and a negative errno
 * on failure, unless it says otherwise. Strings are UTF-8 and NUL-terminated.
 * Pointers the host hands to the plugin stay valid for the call, or for the
 * job where documented; the plugin owns nothing the host gave it and frees
 * nothing it did not allocate. The host validates every parameter against the
 * plugin's table before the plugin sees it. A plugin keeps no global state:
 * everything lives in the per-job state it returns from start(). */
#ifndef GPUHOST_PLUGIN_H
#define GPUHOST_PLUGIN_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#ifdef __cplusplus
extern "C" {
#endif

#define GH_PLUGIN_ABI_MAJOR 1
#define GH_PLUGIN_ABI_MINOR 2
#define GH_PLUGIN_ABI_VERSION ((uint32_t) ((GH_PLUGIN_ABI_MAJOR << 16) | GH_PLUGIN_ABI_MINOR))
#define GH_PLUGIN_ABI_MAJOR_OF(v) ((v) >> 16)

#define GH_PLUGIN_ENTRY_SYMBOL "gh_plugin_entry"
#define GH_PLUGIN_EXPORT __attribute__((visibility("default")))
#define GH_PLUGIN_ELEMENTS(a) (sizeof(a) / sizeof((a)[0]))

/* Limits the host enforces on descriptors. */
#define GH_PLUGIN_NAME_MAX 64      /* plugin and parameter names */
#define GH_PLUGIN_PARAMS_MAX 64
#define GH_PLUGIN_CHOICES_MAX 64   /* choices of an enum parameter */
#define GH_PLUGIN_STRING_MAX 65536 /* longest string parameter */
#define GH_PLUGIN_MODELS_MAX 8     /* models one job may use */

/* ---- parameters ---- */

typedef enum gh_param_type {
        GH_PARAM_INT = 1,
        GH_PARAM_FLOAT,
        GH_PARAM_STRING,
        GH_PARAM_ENUM,   /* one of |choices| */
        GH_PARAM_BOOL,
        GH_PARAM_IMAGE,  /* an input image: an fd or inline base64 from the client, raw or PNG; decoded to rgb8/rgba8 before the plugin sees it */
        GH_PARAM_MODEL,  /* the name of a model the job uses */
} gh_param_type;

/* One row of a plugin's parameter table: what the host accepts for it. The
 * members a type does not use stay zero. */
typedef struct gh_plugin_param {
        uint32_t struct_size;   /* sizeof(gh_plugin_param) the plugin was built with */
        const char *name;       /* [a-z][a-z0-9_]*, unique in the table */
        gh_param_type type;
        const char *help;       /* one line, shown by "gpuhostctl pipelines" */
        bool required;          /* no default: a request must give it */
        int64_t int_min, int_max, int_default;          /* GH_PARAM_INT */
        double float_min, float_max, float_default;     /* GH_PARAM_FLOAT */
        uint32_t string_max;                            /* GH_PARAM_STRING: bytes, 1..GH_PLUGIN_STRING_MAX */
        const char *string_default;                     /* GH_PARAM_STRING (may be NULL: "") */
        const char *const *choices;                     /* GH_PARAM_ENUM: NULL-terminated */
        const char *enum_default;                       /* GH_PARAM_ENUM: one of choices */
        bool bool_default;                              /* GH_PARAM_BOOL */
} gh_plugin_param;

#define GH_PARAM_HEADER .struct_size = sizeof(gh_plugin_param)

/* ---- what a job needs (estimate) ---- */

typedef enum gh_device_kind_id {
        GH_DEVICE_KIND_CPU = 0,
        GH_DEVICE_KIND_CUDA = 1,
        GH_DEVICE_KINDS,
} gh_device_kind_id;

typedef struct gh_plugin_needs {
        uint32_t struct_size;
        /* Workspace per device kind, in bytes; the job may allocate up to
         * this much (workspace_alloc) and no more. 0 for a kind the plugin
         * cannot run on. */
        uint64_t workspace[GH_DEVICE_KINDS];
        uint32_t steps;      /* quanta the job takes: step() is called this often at most */
        uint32_t slice_sms;  /* streaming multiprocessors wanted; 0: any */
        /* The models the job reads (names from its parameters). */
        const char *models[GH_PLUGIN_MODELS_MAX];
        uint32_t n_models;
        /* ABI 1.1: the longest one step may take, in milliseconds; a
         * step running longer is taken for hung and its worker is
         * restarted. 0: the daemon's step_timeout_sec. Write it only if
         * struct_size covers it. */
        uint32_t step_timeout_ms;
} gh_plugin_needs;

/* ---- the host's side ---- */

typedef struct gh_job gh_job;      /* opaque: one running job */
typedef struct gh_params gh_params; /* opaque: a job's validated parameters */

typedef enum gh_dtype_id {
        GH_TENSOR_F32 = 1,
        GH_TENSOR_F16,
        GH_TENSOR_BF16,
        GH_TENSOR_I64,
        GH_TENSOR_I32,
        GH_TENSOR_OTHER, /* see dtype_name */
} gh_dtype_id;

#define GH_TENSOR_MAX_DIMS 8

/* A tensor of a model, in the device pool mapped into the worker (read
 * only). |data| is a host pointer on the CPU device, a device pointer
 * (CUdeviceptr) on a GPU. Valid for the job.
 *
 * Besides the weights, a model may hold auxiliary files as 1-D tensors of
 * bytes (dtype GH_TENSOR_OTHER, dtype_name "U8", shape [file size]): the
 * CLIP tokenizer's "tokenizer/vocab.json" and "tokenizer/merges.txt" when
 * the store found them (a folder model's tokenizer/ subfolder, or the
 * tokenizer = DIR key of a single-file model). A plugin that needs them
 * and finds none refuses the job with a message. */
typedef struct gh_tensor {
        const void *data;
        gh_dtype_id dtype;
        const char *dtype_name; /* as in safetensors: "F32", ... */
        uint32_t n_dims;
        uint64_t shape[GH_TENSOR_MAX_DIMS];
        uint64_t bytes;
} gh_tensor;

/* Where the job runs: its slice of the device. The CUDA context (a green
 * context over the job's SMs) is current on the thread that calls the
 * plugin; the stream is the job's, and work on it must be finished (or
 * synchronised) before finish() returns or abort() frees the state. The
 * slice may change between two steps (the scheduler rebalances running
 * jobs): ask device() again at the start of each step rather than keeping
 * the context, stream or thread count from start(). The host finishes the
 * old stream's work before it switches. */
typedef struct gh_job_device {
        uint32_t struct_size;
        gh_device_kind_id kind;
        int index;              /* the daemon's device index */
        void *cuda_context;     /* CUcontext (green context slice) on a GPU, else NULL */
        void *cuda_stream;      /* CUstream of the job on a GPU, else NULL */
        uint32_t cpu_threads;   /* threads the job may use on the CPU device */
} gh_job_device;

typedef enum gh_image_format {
        GH_IMAGE_RGB8 = 1,   /* 3 bytes a pixel */
        GH_IMAGE_RGBA8,      /* 4 bytes a pixel */
        GH_IMAGE_RGB_F32,    /* 3 floats a pixel, 0..1 */
} gh_image_format;

typedef struct gh_image {
        uint32_t width, height;
        gh_image_format format;
        uint32_t stride;     /* bytes per row */
        void *pixels;
} gh_image;

enum {
        GH_LOG_ERR = 3,
        GH_LOG_WARNING = 4,
        GH_LOG_INFO = 6,
        GH_LOG_DEBUG = 7,
};

/* ABI 1.2: facts about one of a job's models (model_info). The plugin sets
 * struct_size to sizeof(gh_model_info) before the call; the host fills the
 * members that covers. Strings are the host's and stay valid for the job. */
typedef struct gh_model_info {
        uint32_t struct_size;
        const char *name;
        /* hex of the SHA-256 of the model's files (a single .safetensors:
         * the file, as A1111's "Model hash" shows the first 10 digits; a
         * folder: its files in load order, concatenated) or "" if not
         * known. Load order: the folder's .safetensors files by path in
         * byte order, a subfolder's at its place; auxiliary files (the
         * tokenizer's) are not part of it. */
        const char *sha256;
        /* What the model takes in the device pool (after its dtype
         * conversion, auxiliary files included). */
        uint64_t bytes;
} gh_model_info;

/* Services of the host, passed to every entry point. Members after the
 * first minor version are present only if struct_size covers them. Jobs
 * run on threads of their own, several at once in one worker: each
 * service is thread-safe for calls about different jobs. */
typedef struct gh_host {
        uint32_t abi_version;
        uint32_t struct_size;

        /* Logs a line, attributed to the plugin and the job (which may be
         * NULL, e.g. in estimate). */
        void (*log)(gh_job *job, int level, const char *fmt, ...) __attribute__((format(printf, 3, 4)));

        /* Parameters (validated by the daemon against the plugin's table
         * before the plugin sees them): the value of |name|, or its default.
         * An unknown name or an accessor of the wrong type is -EINVAL (the
         * string accessor reads string, enum and model parameters); an
         * optional image or model parameter the request did not give is
         * -ENOENT. Strings and pixels are the host's and stay valid for the
         * job (or the estimate call). In estimate() an image has its size
         * and format but no pixels (NULL). */
        int (*param_int)(const gh_params *p, const char *name, int64_t *ret);
        int (*param_float)(const gh_params *p, const char *name, double *ret);
        int (*param_string)(const gh_params *p, const char *name, const char **ret);
        int (*param_bool)(const gh_params *p, const char *name, bool *ret);
        int (*param_image)(const gh_params *p, const char *name, gh_image *ret);

        /* A tensor of one of the job's models (those estimate() named):
         * read-only memory of the shared pool, valid for the job; -ENOENT
         * if there is none. Never write through it: the pool is mapped
         * read-only and a write faults the worker. */
        int (*tensor)(gh_job *job, const char *model, const char *name, gh_tensor *ret);
        /* Workspace charged to the job on its device: host memory on the
         * CPU device, device memory (a CUdeviceptr) on a GPU; |align| is a
         * power of two. Going past what estimate() declared for the
         * device's kind is -ENOSPC for this job, never an OOM for the GPU.
         * Whatever the plugin does not free is freed when the job ends. */
        int (*workspace_alloc)(gh_job *job, size_t bytes, size_t align, void **ret);
        void (*workspace_free)(gh_job *job, void *p);
        int (*device)(gh_job *job, gh_job_device *ret);

        /* Progress after step |step| of |steps|, with an optional preview
         * (copied; the plugin keeps its buffer). Goes to the client at once. */
        int (*progress)(gh_job *job, uint32_t step, uint32_t steps, const gh_image *preview);
        /* Whether the job was cancelled; step() should return soon if so
         * (-ECANCELED). Each job runs on a thread of its own, so this is
         * cheap (one atomic load). */
        bool (*cancelled)(gh_job *job);

        /* Outputs, in memfd-backed memory the host passes on without copies.
         * The buffer is the plugin's to fill until finish() returns, then the
         * host seals it and hands it to the client. Names are unique per job
         * (-EEXIST), at most GH_PLUGIN_NAME_MAX bytes; going past the
         * daemon's max_output_size is -EFBIG. Returns 0 and the buffer. */
        int (*output_image)(gh_job *job, const char *name, uint32_t width, uint32_t height, gh_image_format format,
                            gh_image *ret);
        int (*output_frames)(gh_job *job, const char *name, uint32_t width, uint32_t height, gh_image_format format,
                             uint32_t n_frames, gh_image *ret_frames /* n_frames of them */);
        int (*output_bytes)(gh_job *job, const char *name, size_t size, void **ret);
        /* Key/value metadata of the outputs (e.g. the generation parameters). */
        int (*output_meta)(gh_job *job, const char *key, const char *value);

        /* The job's CPU thread pool: runs fn(ctx, i, thread) for every i in
         * [0, n), spread over the job's threads (thread < cpu_threads of
         * gh_job_device; a thread runs one call at a time), and returns
         * once all calls have returned. fn must not call host services.
         * Returns 0, or -EINVAL for n == 0 or fn == NULL. */
        int (*parallel_for)(gh_job *job, uint32_t n, void (*fn)(void *ctx, uint32_t i, uint32_t thread), void *ctx);

        /* ABI 1.2: the dtype and shape of a tensor of model |model| (the
         * value of one of the job's model parameters), from the model's
         * headers: usable in estimate() as well as later; data is NULL.
         * -ENOENT: no such tensor or model. The tensor table is as the pool
         * will hold it (after the model's dtype conversion).
         * In estimate() the table is the one the daemon planned from the
         * headers when it last read its catalogue (start, reload), for the
         * model of every model parameter, defaults included; a model whose
         * headers cannot be read has none (-ENOENT: the plugin reports it).
         * From start() on it is the resident copy's table, for the models
         * estimate() named. Auxiliary files are in it too (see gh_tensor). */
        int (*model_tensor)(const gh_params *p, const char *model, const char *name, gh_tensor *ret);
        /* ABI 1.2: facts about one of the job's models: one estimate()
         * named; -ENOENT for another, -EINVAL if ret->struct_size is 0. The
         * SHA-256 is that of the files the copy in the pool was read from:
         * computed while loading it, or kept from an earlier load while the
         * files' sizes and mtimes are unchanged. */
        int (*model_info)(gh_job *job, const char *model, gh_model_info *ret);
} gh_host;

/* ---- the plugin's side ---- */

/* step() results besides negative errnos. */
enum {
        GH_STEP_DONE = 0,     /* no more steps: finish() comes next */
        GH_STEP_CONTINUE = 1, /* call step() again */
};

enum {
        /* A job that failed because the worker died may be run again. */
        GH_PLUGIN_RETRY_SAFE = 1u << 0,
};

typedef struct gh_plugin {
        uint32_t abi_version;   /* GH_PLUGIN_ABI_VERSION the plugin was built with */
        uint32_t struct_size;   /* sizeof(gh_plugin) the plugin was built with */
        const char *name;       /* [a-z][a-z0-9_-]*: the pipeline's name */
        const char *version;
        const char *description;
        const gh_plugin_param *params;
        uint32_t n_params;
        uint32_t flags;         /* GH_PLUGIN_* */

        /* What a job with these parameters needs. Pure: no allocation that
         * outlives the call, no device work. */
        int (*estimate)(const gh_host *host, const gh_params *params, gh_plugin_needs *ret);
        /* Sets up a job; *ret_state is passed to the other calls. */
        int (*start)(const gh_host *host, gh_job *job, const gh_params *params, void **ret_state);
        /* One quantum (e.g. one denoising step), |step| counting from 0:
         * GH_STEP_CONTINUE, GH_STEP_DONE or a negative errno (the job fails,
         * abort() follows). A step that runs past its timeout (the
         * estimate's step_timeout_ms, else the daemon's step_timeout_sec)
         * is taken for hung: the worker is killed and restarted. Long steps
         * call cancelled() now and then. Continuing past the declared steps
         * fails the job. */
        int (*step)(const gh_host *host, gh_job *job, void *state, uint32_t step);
        /* Produces the outputs and frees the state. */
        int (*finish)(const gh_host *host, gh_job *job, void *state);
        /* Frees the state of a job that ends early (cancelled or failed). */
        void (*abort)(const gh_host *host, gh_job *job, void *state);
} gh_plugin;

#define GH_PLUGIN_HEADER .abi_version = GH_PLUGIN_ABI_VERSION, .struct_size = sizeof(gh_plugin)

typedef const gh_plugin *(*gh_plugin_entry_fn)(void);

/* Defines the one exported symbol. */
#define GH_PLUGIN_DEFINE(descriptor)                                        \
        GH_PLUGIN_EXPORT const gh_plugin *gh_plugin_entry(void);            \
        GH_PLUGIN_EXPORT const gh_plugin *gh_plugin_entry(void) {           \
                return &(descriptor);                                       \
        }

#ifdef __cplusplus
}
#endif

#endif

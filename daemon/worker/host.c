/* The host side of the plugin ABI inside gpuhost-worker: a job's
 * parameters, its models' tensors in the mapped pool, its workspace
 * (charged against what estimate() declared), progress, cancellation,
 * memfd outputs, its slice of the device, and the job's life on its own
 * thread: start, steps, finish or abort. */
#include <fcntl.h>
#include <inttypes.h>
#include <stdarg.h>
#include <stdatomic.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <sys/types.h>

#include "../common/log.h"
#include "../common/safetensors.h"
#include "../common/util.h"
#include "../common/worker-proto.h"
#include "image.h"
#include "tindex.h"
#include "worker.h"

#define JOB_META_MAX_BYTES (64u << 10)
#define JOB_IMAGE_SIDE_MAX 65536u
#define JOB_FRAMES_MAX 4096u

struct gh_params {
        const gh_plugin *plugin;
        json_object *values;  /* normalized by the daemon: every parameter */
        gh_job *job;          /* NULL in estimate() */
        json_object *models;  /* estimate(): [{name, tensors?: [[name, dtype, dim...]]}] */
        gh_tindex *index;     /* estimate(): one per entry of models */
};

typedef struct job_alloc {
        void *ptr;            /* what the plugin got */
        uint64_t base;        /* what to free: a host pointer or a CUdeviceptr */
        size_t bytes;
} job_alloc;

typedef struct job_output {
        char name[GH_PLUGIN_NAME_MAX + 1];
        const char *kind;     /* "image", "frames", "bytes" */
        int fd;
        void *map;
        size_t size;
        uint32_t width, height, stride, frames;
        gh_image_format format;
} job_output;

typedef struct job_image {
        const char *name;
        void *map;
        size_t size;
        gh_image image;
} job_image;

typedef enum job_phase {
        PHASE_START,
        PHASE_STEP,
        PHASE_FINISH,
} job_phase;

struct gh_job {
        gh_wk *w;
        json_object *msg;     /* the "run" message: params and models live in it */
        const char *id;
        const gh_plugin *p;
        gh_params params;
        json_object *models;  /* [{name, tensors}] */
        gh_tindex *index;     /* one per entry of models */
        uint64_t ws_limit, ws_used, out_limit, out_used;
        job_alloc *allocs;
        size_t n_allocs, cap_allocs;
        job_output outputs[GH_WORKER_MAX_OUTPUTS];
        size_t n_outputs;
        job_image images[GH_PLUGIN_PARAMS_MAX];
        size_t n_images;
        json_object *metadata;
        size_t meta_bytes;
        job_phase phase;
        uint32_t step, steps;
        void *state;
        bool started;
        char error[512];      /* why the host refused the plugin something */
        /* its thread and slice */
        pthread_t thread;
        bool thread_started;
        atomic_bool cancelled, ended;
        _Atomic uint64_t next_units; /* a slice to take at the next step boundary (0: none) */
        uint64_t units;              /* the slice it runs in */
        gh_threads *threads;         /* CPU: its share of threads, made on first use */
        void *cuda_context, *cuda_stream;
        bool own_stream;             /* cuda_stream is the job's (no slices) */
        uint64_t held;               /* the slice whose context it holds (GPU) */
        bool reported;               /* progress() was called during this step */
        uint64_t first_step_usec, last_step_usec;
};

static const gh_plugin *current_plugin; /* for log lines outside a job (estimate) */

static const char *errname(int r) {
        const char *n = strerrorname_np(r < 0 ? -r : r);
        return n ? n : "EIO";
}

/* ---- logging ---- */

/* The first error the plugin logged during estimate() (which runs on the
 * main thread only). */
static char estimate_error[512];

_printf_(3, 4) static void host_log(gh_job *job, int level, const char *fmt, ...) {
        char buf[1024];
        va_list ap;
        const gh_plugin *p = job ? job->p : current_plugin;

        if (level > gh_log_get_max_level())
                return;
        va_start(ap, fmt);
        vsnprintf(buf, sizeof(buf), fmt, ap);
        va_end(ap);
        if (level < LOG_EMERG || level > LOG_DEBUG)
                level = LOG_INFO;
        gh_log_internal(level, 0, "%s%s%s: %s", p ? p->name : "plugin", job ? " job " : "", job ? job->id : "", buf);
        /* The plugin's first error line explains the failure to the client. */
        if (level <= LOG_ERR) {
                char *why = job ? job->error : estimate_error;
                size_t n = job ? sizeof(job->error) : sizeof(estimate_error);
                if (!why[0]) {
                        strncpy(why, buf, n - 1);
                        why[n - 1] = 0;
                }
        }
}

/* Records why the host refused the plugin something; the job's failure
 * reports the first such reason. */
_printf_(2, 3) static void job_refuse(gh_job *job, const char *fmt, ...) {
        va_list ap;
        char buf[sizeof(job->error)];

        va_start(ap, fmt);
        vsnprintf(buf, sizeof(buf), fmt, ap);
        va_end(ap);
        gh_log_error("%s job %s: %s", job->p->name, job->id, buf);
        if (!job->error[0])
                memcpy(job->error, buf, sizeof(buf));
}

/* ---- parameters ---- */

static const gh_plugin_param *param_find(const gh_params *p, const char *name, json_object **ret) {
        for (uint32_t i = 0; name && i < p->plugin->n_params; i++)
                if (strcmp(p->plugin->params[i].name, name) == 0) {
                        *ret = json_object_object_get(p->values, name); /* NULL: an optional one not given */
                        return &p->plugin->params[i];
                }
        return NULL;
}

static int host_param_int(const gh_params *p, const char *name, int64_t *ret) {
        json_object *v;
        const gh_plugin_param *q = param_find(p, name, &v);

        if (!q || q->type != GH_PARAM_INT)
                return -EINVAL;
        if (!v)
                return -ENOENT;
        *ret = json_object_get_int64(v);
        return 0;
}

static int host_param_float(const gh_params *p, const char *name, double *ret) {
        json_object *v;
        const gh_plugin_param *q = param_find(p, name, &v);

        if (!q || q->type != GH_PARAM_FLOAT)
                return -EINVAL;
        if (!v)
                return -ENOENT;
        *ret = json_object_get_double(v);
        return 0;
}

static int host_param_string(const gh_params *p, const char *name, const char **ret) {
        json_object *v;
        const gh_plugin_param *q = param_find(p, name, &v);

        if (!q || (q->type != GH_PARAM_STRING && q->type != GH_PARAM_ENUM && q->type != GH_PARAM_MODEL))
                return -EINVAL;
        if (!v)
                return -ENOENT;
        *ret = json_object_get_string(v);
        return 0;
}

static int host_param_bool(const gh_params *p, const char *name, bool *ret) {
        json_object *v;
        const gh_plugin_param *q = param_find(p, name, &v);

        if (!q || q->type != GH_PARAM_BOOL)
                return -EINVAL;
        if (!v)
                return -ENOENT;
        *ret = json_object_get_boolean(v);
        return 0;
}

static gh_image_format format_from_string(const char *s) {
        return gh_streq(s, "rgba8") ? GH_IMAGE_RGBA8 : gh_streq(s, "rgb_f32") ? GH_IMAGE_RGB_F32 : GH_IMAGE_RGB8;
}

static uint32_t format_bpp(gh_image_format f) {
        return f == GH_IMAGE_RGBA8 ? 4 : f == GH_IMAGE_RGB_F32 ? 12 : 3;
}

static const char *format_name(gh_image_format f) {
        return f == GH_IMAGE_RGBA8 ? "rgba8" : f == GH_IMAGE_RGB_F32 ? "rgb_f32" : "rgb8";
}

/* In estimate() an image has its size and format but no pixels. A PNG
 * file (its value has "encoding": "png") has the size and format its
 * pixels decode to, as the daemon read them from its IHDR. In a job, its
 * entry in job->images holds the file's bytes until the first call here
 * decodes them (image.c; once, under a lock), then the pixels, which its
 * .image records. Before the entry exists, map_images() asks how much of
 * the fd to map: for a PNG, the whole file, as one row of "bytes" bytes. */
static int host_param_image(const gh_params *p, const char *name, gh_image *ret) {
        static pthread_mutex_t decode_lock = PTHREAD_MUTEX_INITIALIZER;
        json_object *v;
        const gh_plugin_param *q = param_find(p, name, &v);
        job_image *e = NULL;
        char err[256];
        int r = 0;

        if (!q || q->type != GH_PARAM_IMAGE)
                return -EINVAL;
        if (!json_object_is_type(v, json_type_object))
                return -ENOENT; /* optional and not given */
        gh_image_format f = format_from_string(json_object_get_string(json_object_object_get(v, "format")));
        *ret = (gh_image) {
                .width = (uint32_t) json_object_get_int64(json_object_object_get(v, "width")),
                .height = (uint32_t) json_object_get_int64(json_object_object_get(v, "height")),
                .format = f,
        };
        ret->stride = ret->width * format_bpp(f);
        for (size_t i = 0; p->job && i < p->job->n_images; i++)
                if (strcmp(p->job->images[i].name, name) == 0)
                        e = &p->job->images[i];
        if (!gh_streq(json_object_get_string(json_object_object_get(v, "encoding")), "png")) {
                ret->pixels = e ? e->map : NULL;
                return 0;
        }
        if (p->job && !e) { /* map_images(): the file's bytes */
                ret->stride = (uint32_t) json_object_get_int64(json_object_object_get(v, "bytes"));
                ret->height = 1;
                return 0;
        }
        if (!e)
                return 0; /* estimate() */
        pthread_mutex_lock(&decode_lock);
        if (!e->image.pixels) {
                void *pixels;
                size_t size;
                r = gh_wk_png_decode(e->map, e->size, ret, &pixels, &size, err, sizeof(err));
                if (r >= 0) {
                        munmap(e->map, e->size);
                        *e = (job_image) {.name = e->name, .map = pixels, .size = size, .image = *ret};
                        e->image.pixels = pixels;
                }
        }
        ret->pixels = e->image.pixels;
        pthread_mutex_unlock(&decode_lock);
        if (r < 0)
                job_refuse(p->job, "image parameter %s: not a valid PNG: %s", name, err);
        return r;
}

/* ---- tensors ---- */

static gh_dtype_id dtype_id(const char *s) {
        static const struct {
                const char *name;
                gh_dtype_id id;
        } map[] = {{"F32", GH_TENSOR_F32}, {"F16", GH_TENSOR_F16}, {"BF16", GH_TENSOR_BF16},
                   {"I64", GH_TENSOR_I64}, {"I32", GH_TENSOR_I32}};

        for (size_t i = 0; i < ELEMENTSOF(map); i++)
                if (gh_streq(s, map[i].name))
                        return map[i].id;
        return GH_TENSOR_OTHER;
}

/* Whether every slab under [offset, offset + bytes) is mapped. */
static bool range_mapped(gh_wk *w, uint64_t offset, uint64_t bytes) {
        uint64_t ss = w->args.slab_size;

        if (offset + bytes > w->args.pool_size || offset + bytes < offset)
                return false;
        for (uint64_t i = offset / ss; i <= (offset + (bytes ? bytes - 1 : 0)) / ss; i++)
                if (!w->slab_serial[i])
                        return false;
        return true;
}

/* Elements of |a|, 0 if it is not an array (json-c asserts on those). */
static size_t array_len(json_object *a) {
        return json_object_is_type(a, json_type_array) ? json_object_array_length(a) : 0;
}

/* The position of |model| in |models| ([{name, ...}]); -1 if none. */
static ssize_t model_at(json_object *models, const char *model) {
        for (size_t i = 0, n = array_len(models); model && i < n; i++) {
                json_object *m = json_object_array_get_idx(models, i);
                if (gh_streq(json_object_get_string(json_object_object_get(m, "name")), model))
                        return (ssize_t) i;
        }
        return -1;
}

/* An index of each model's "tensors" in |models|, by name (|rows|: an
 * estimate's [name, dtype, dim...]). */
static int models_index(json_object *models, bool rows, gh_tindex **ret) {
        size_t n = array_len(models);
        gh_tindex *ix = n ? calloc(n, sizeof(*ix)) : NULL;

        *ret = NULL;
        if (n && !ix)
                return -ENOMEM;
        for (size_t i = 0; i < n; i++) {
                json_object *m = json_object_array_get_idx(models, i);
                json_object *ts = json_object_is_type(m, json_type_object) ? json_object_object_get(m, "tensors") : NULL;
                int r = gh_tindex_build(ts, rows, &ix[i]);
                if (r < 0) {
                        while (i > 0)
                                gh_tindex_free(&ix[--i]);
                        free(ix);
                        return r;
                }
        }
        *ret = ix;
        return 0;
}

static void models_unindex(json_object *models, gh_tindex *ix) {
        for (size_t i = 0, n = array_len(models); ix && i < n; i++)
                gh_tindex_free(&ix[i]);
        free(ix);
}

/* One of the job's models as the "run" message has it: {name, tensors,
 * sha256, bytes}; NULL if the job has no such model. */
static json_object *job_model(gh_job *job, const char *model) {
        ssize_t i = model_at(job->models, model);

        return i < 0 ? NULL : json_object_array_get_idx(job->models, (size_t) i);
}

/* The entry {name, dtype, shape, offset, bytes} of tensor |name| of one of
 * the job's models; NULL if there is none. */
static json_object *job_model_tensor(gh_job *job, const char *model, const char *name) {
        ssize_t i = model_at(job->models, model);

        return i < 0 ? NULL : gh_tindex_find(&job->index[i], name);
}

/* The dtype, shape and bytes of such a tensor (no data). */
static int tensor_shape(json_object *t, gh_tensor *ret) {
        json_object *shape = json_object_object_get(t, "shape");

        *ret = (gh_tensor) {
                .dtype_name = json_object_get_string(json_object_object_get(t, "dtype")),
                .bytes = (uint64_t) json_object_get_int64(json_object_object_get(t, "bytes")),
        };
        ret->dtype = dtype_id(ret->dtype_name);
        ret->n_dims = (uint32_t) array_len(shape);
        if (ret->n_dims > GH_TENSOR_MAX_DIMS || !ret->dtype_name)
                return -EBADMSG;
        for (uint32_t d = 0; d < ret->n_dims; d++)
                ret->shape[d] = (uint64_t) json_object_get_int64(json_object_array_get_idx(shape, d));
        return 0;
}

static int host_tensor(gh_job *job, const char *model, const char *name, gh_tensor *ret) {
        json_object *t = job_model_tensor(job, model, name);

        if (!t)
                return -ENOENT;
        uint64_t off = (uint64_t) json_object_get_int64(json_object_object_get(t, "offset"));
        gh_tensor v;
        int r = tensor_shape(t, &v);
        if (r < 0)
                return r;
        if (!range_mapped(job->w, off, v.bytes)) {
                job_refuse(job, "tensor %s of model %s is not mapped", name, model);
                return -ENXIO;
        }
        v.data = (const void *) (uintptr_t) (gh_pool_view_base(job->w->view) + off);
        *ret = v;
        return 0;
}

/* A row [name, dtype, dim...] of an estimate's table: its dtype, shape and
 * bytes. The daemon's message is checked, not trusted. */
static int estimate_row(json_object *row, gh_tensor *ret) {
        size_t n = array_len(row);
        uint64_t elements = 1;

        if (n < 2 || n - 2 > GH_TENSOR_MAX_DIMS)
                return -EBADMSG;
        gh_dtype dt = gh_dtype_from_string(json_object_get_string(json_object_array_get_idx(row, 1)));
        if ((int) dt < 0)
                return -EBADMSG;
        *ret = (gh_tensor) {.dtype_name = gh_dtype_to_string(dt), .n_dims = (uint32_t) (n - 2)};
        ret->dtype = dtype_id(ret->dtype_name);
        for (uint32_t d = 0; d < ret->n_dims; d++) {
                int64_t v = json_object_get_int64(json_object_array_get_idx(row, d + 2));
                if (v < 0 || __builtin_mul_overflow(elements, (uint64_t) v, &elements))
                        return -EBADMSG;
                ret->shape[d] = (uint64_t) v;
        }
        if (__builtin_mul_overflow(elements, (uint64_t) gh_dtype_size(dt), &ret->bytes))
                return -EBADMSG;
        return 0;
}

static int estimate_tensor(const gh_params *p, const char *model, const char *name, gh_tensor *ret) {
        ssize_t i = model_at(p->models, model);
        json_object *row = i < 0 || !p->index ? NULL : gh_tindex_find(&p->index[i], name);

        return row ? estimate_row(row, ret) : -ENOENT;
}

/* ABI 1.2: in estimate() from the catalogue's plan the daemon sent with
 * the request; in a job from the resident copy's table. */
static int host_model_tensor(const gh_params *p, const char *model, const char *name, gh_tensor *ret) {
        if (!p || !model || !name || !ret)
                return -EINVAL;
        if (!p->job)
                return estimate_tensor(p, model, name, ret);
        json_object *t = job_model_tensor(p->job, model, name);
        return t ? tensor_shape(t, ret) : -ENOENT;
}

static bool is_sha256_hex(const char *s) {
        size_t n = s ? strlen(s) : 0;

        return n == 64 && strspn(s, "0123456789abcdef") == n;
}

/* ABI 1.2: writes no more of |ret| than the plugin's struct_size covers. */
static int host_model_info(gh_job *job, const char *model, gh_model_info *ret) {
        if (!job || !ret || ret->struct_size == 0)
                return -EINVAL;
        json_object *m = job_model(job, model);
        if (!m)
                return -ENOENT;
        const char *sha = json_object_get_string(json_object_object_get(m, "sha256"));
        gh_model_info info = {
                .struct_size = ret->struct_size,
                .name = json_object_get_string(json_object_object_get(m, "name")),
                .sha256 = is_sha256_hex(sha) ? sha : "",
                .bytes = (uint64_t) json_object_get_int64(json_object_object_get(m, "bytes")),
        };
        memcpy(ret, &info, ret->struct_size < sizeof(info) ? ret->struct_size : sizeof(info));
        return 0;
}

/* ---- workspace ---- */

static int host_workspace_alloc(gh_job *job, size_t bytes, size_t align, void **ret) {
        if (bytes == 0 || (align & (align - 1)))
                return -EINVAL;
        if (bytes > job->ws_limit - job->ws_used) {
                job_refuse(job, "workspace over the declared need: asked for %zu bytes with %" PRIu64
                           " in use, and estimate() declared %" PRIu64, bytes, job->ws_used, job->ws_limit);
                return -ENOSPC;
        }
        if (job->n_allocs == job->cap_allocs) {
                size_t cap = job->cap_allocs ? job->cap_allocs * 2 : 16;
                job_alloc *a = realloc(job->allocs, cap * sizeof(*a));
                if (!a)
                        return -ENOMEM;
                job->allocs = a;
                job->cap_allocs = cap;
        }
        align = align < 64 ? 64 : align;
        job_alloc a = {.bytes = bytes};
        if (job->w->args.cuda) {
                CUdeviceptr p;
                int r = gh_cuda_errno(job->w->cu, job->w->cu->MemAlloc(&p, bytes + (align > 256 ? align : 0)), NULL);
                if (r < 0)
                        return r;
                a.base = p;
                a.ptr = (void *) (uintptr_t) ((p + align - 1) & ~(uint64_t) (align - 1));
        } else {
                void *p;
                int r = posix_memalign(&p, align, bytes);
                if (r != 0)
                        return -r;
                a.base = (uintptr_t) p;
                a.ptr = p;
        }
        job->allocs[job->n_allocs++] = a;
        job->ws_used += bytes;
        *ret = a.ptr;
        return 0;
}

static void alloc_release(gh_job *job, size_t i) {
        job_alloc *a = &job->allocs[i];

        if (job->w->args.cuda)
                job->w->cu->MemFree((CUdeviceptr) a->base);
        else
                free((void *) (uintptr_t) a->base);
        job->ws_used -= a->bytes;
        job->allocs[i] = job->allocs[--job->n_allocs];
}

static void host_workspace_free(gh_job *job, void *p) {
        for (size_t i = 0; p && i < job->n_allocs; i++)
                if (job->allocs[i].ptr == p) {
                        alloc_release(job, i);
                        return;
                }
        if (p)
                gh_log_warning("%s job %s: workspace_free of %p, which it did not allocate", job->p->name, job->id, p);
}

static int host_device(gh_job *job, gh_job_device *ret) {
        gh_wk *w = job->w;

        *ret = (gh_job_device) {
                .struct_size = sizeof(*ret),
                .kind = w->args.cuda ? GH_DEVICE_KIND_CUDA : GH_DEVICE_KIND_CPU,
                .index = w->args.device,
                .cuda_context = job->cuda_context,
                .cuda_stream = job->cuda_stream,
                .cpu_threads = w->args.cuda ? 1 : (uint32_t) __builtin_popcountll(job->units),
        };
        return 0;
}

/* ---- outputs ---- */

static int output_new(gh_job *job, const char *name, const char *kind, size_t size, job_output **ret) {
        if (!name || !*name || strlen(name) > GH_PLUGIN_NAME_MAX || size == 0)
                return -EINVAL;
        for (size_t i = 0; i < job->n_outputs; i++)
                if (strcmp(job->outputs[i].name, name) == 0)
                        return -EEXIST;
        if (job->n_outputs == GH_WORKER_MAX_OUTPUTS) {
                job_refuse(job, "more than %d outputs", GH_WORKER_MAX_OUTPUTS);
                return -E2BIG;
        }
        if (size > job->out_limit - job->out_used) {
                job_refuse(job, "outputs over the limit: %zu more bytes with %" PRIu64 " made, of %" PRIu64, size,
                           job->out_used, job->out_limit);
                return -EFBIG;
        }
        _cleanup_close_ int fd = memfd_create(name, MFD_CLOEXEC | MFD_ALLOW_SEALING);
        if (fd < 0 || ftruncate(fd, (off_t) size) < 0)
                return gh_negerrno();
        void *map = mmap(NULL, size, PROT_READ | PROT_WRITE, MAP_SHARED, fd, 0);
        if (map == MAP_FAILED)
                return gh_negerrno();
        job_output *o = &job->outputs[job->n_outputs++];
        *o = (job_output) {.kind = kind, .fd = TAKE_FD(fd), .map = map, .size = size};
        snprintf(o->name, sizeof(o->name), "%s", name);
        job->out_used += size;
        *ret = o;
        return 0;
}

static int image_output(gh_job *job, const char *name, uint32_t width, uint32_t height, gh_image_format format,
                        uint32_t n_frames, gh_image *ret) {
        if (width == 0 || height == 0 || width > JOB_IMAGE_SIDE_MAX || height > JOB_IMAGE_SIDE_MAX ||
            format < GH_IMAGE_RGB8 || format > GH_IMAGE_RGB_F32 || n_frames == 0 || n_frames > JOB_FRAMES_MAX)
                return -EINVAL;
        uint32_t stride = width * format_bpp(format);
        size_t frame = (size_t) stride * height;
        job_output *o;
        int r = output_new(job, name, n_frames > 1 ? "frames" : "image", frame * n_frames, &o);
        if (r < 0)
                return r;
        o->width = width;
        o->height = height;
        o->stride = stride;
        o->format = format;
        o->frames = n_frames;
        for (uint32_t i = 0; i < n_frames; i++)
                ret[i] = (gh_image) {width, height, format, stride, (uint8_t *) o->map + frame * i};
        return 0;
}

static int host_output_image(gh_job *job, const char *name, uint32_t width, uint32_t height, gh_image_format format,
                             gh_image *ret) {
        return image_output(job, name, width, height, format, 1, ret);
}

static int host_output_frames(gh_job *job, const char *name, uint32_t width, uint32_t height, gh_image_format format,
                              uint32_t n_frames, gh_image *ret_frames) {
        int r = image_output(job, name, width, height, format, n_frames, ret_frames);

        if (r >= 0)
                job->outputs[job->n_outputs - 1].kind = "frames";
        return r;
}

static int host_output_bytes(gh_job *job, const char *name, size_t size, void **ret) {
        job_output *o;
        int r = output_new(job, name, "bytes", size, &o);

        if (r >= 0)
                *ret = o->map;
        return r;
}

static int host_output_meta(gh_job *job, const char *key, const char *value) {
        if (!key || !value || !*key)
                return -EINVAL;
        size_t n = strlen(key) + strlen(value);
        if (n > JOB_META_MAX_BYTES - job->meta_bytes) {
                job_refuse(job, "output metadata over %u bytes", JOB_META_MAX_BYTES);
                return -E2BIG;
        }
        json_object_object_add(job->metadata, key, json_object_new_string(value));
        job->meta_bytes += n;
        return 0;
}

static json_object *output_json(const job_output *o) {
        json_object *j = json_object_new_object();

        json_object_object_add(j, "name", json_object_new_string(o->name));
        json_object_object_add(j, "kind", json_object_new_string(o->kind));
        json_object_object_add(j, "size", json_object_new_int64((int64_t) o->size));
        if (o->width) {
                json_object_object_add(j, "width", json_object_new_int64(o->width));
                json_object_object_add(j, "height", json_object_new_int64(o->height));
                json_object_object_add(j, "format", json_object_new_string(format_name(o->format)));
                json_object_object_add(j, "stride", json_object_new_int64(o->stride));
                json_object_object_add(j, "frames", json_object_new_int64(o->frames));
        }
        return j;
}

/* Unmaps and seals an output so the receiver sees fixed, read-only bytes. */
static int output_seal(job_output *o) {
        munmap(o->map, o->size);
        o->map = NULL;
        return fcntl(o->fd, F_ADD_SEALS, F_SEAL_SHRINK | F_SEAL_GROW | F_SEAL_WRITE | F_SEAL_SEAL) < 0 ? -errno : 0;
}

static void outputs_drop(gh_job *job) {
        for (size_t i = 0; i < job->n_outputs; i++) {
                if (job->outputs[i].map)
                        munmap(job->outputs[i].map, job->outputs[i].size);
                gh_close(job->outputs[i].fd);
        }
        job->n_outputs = 0;
}

/* ---- progress, cancellation, threads ---- */

static int host_progress(gh_job *job, uint32_t step, uint32_t steps, const gh_image *preview) {
        json_object *m = json_object_new_object();
        int fd = -1;

        json_object_object_add(m, "type", json_object_new_string("progress"));
        json_object_object_add(m, "job", json_object_new_string(job->id));
        json_object_object_add(m, "step", json_object_new_int64(step));
        json_object_object_add(m, "steps", json_object_new_int64(steps));
        if (preview && preview->pixels && preview->width && preview->height &&
            preview->width <= JOB_IMAGE_SIDE_MAX && preview->height <= JOB_IMAGE_SIDE_MAX) {
                size_t row = (size_t) preview->width * format_bpp(preview->format);
                size_t size = row * preview->height;
                _cleanup_close_ int mfd = memfd_create("preview", MFD_CLOEXEC | MFD_ALLOW_SEALING);
                void *map = mfd >= 0 && ftruncate(mfd, (off_t) size) == 0
                                    ? mmap(NULL, size, PROT_READ | PROT_WRITE, MAP_SHARED, mfd, 0) : MAP_FAILED;
                if (map != MAP_FAILED) {
                        for (uint32_t y = 0; y < preview->height; y++)
                                memcpy((uint8_t *) map + row * y, (const uint8_t *) preview->pixels + (size_t) preview->stride * y, row);
                        job_output o = {.kind = "image", .fd = mfd, .map = map, .size = size, .width = preview->width,
                                        .height = preview->height, .stride = (uint32_t) row, .frames = 1,
                                        .format = preview->format};
                        snprintf(o.name, sizeof(o.name), "preview");
                        if (output_seal(&o) >= 0) {
                                json_object_object_add(m, "preview", output_json(&o));
                                fd = TAKE_FD(mfd);
                        }
                }
        }
        job->reported = true;
        return gh_wk_send(job->w, m, fd >= 0 ? &fd : NULL, fd >= 0 ? 1 : 0);
}

static bool host_cancelled(gh_job *job) {
        return atomic_load(&job->cancelled);
}

static int host_parallel_for(gh_job *job, uint32_t n, void (*fn)(void *ctx, uint32_t i, uint32_t thread), void *ctx) {
        if (n == 0 || !fn)
                return -EINVAL;
        if (!job->threads) {
                unsigned k = job->w->args.cuda ? 1 : (unsigned) __builtin_popcountll(job->units);
                int r = gh_threads_new(k ? k : 1, &job->threads);
                if (r < 0)
                        return r;
        }
        gh_threads_run(job->threads, n, fn, ctx);
        return 0;
}

const gh_host gh_wk_host = {
        .abi_version = GH_PLUGIN_ABI_VERSION,
        .struct_size = sizeof(gh_host),
        .log = host_log,
        .param_int = host_param_int,
        .param_float = host_param_float,
        .param_string = host_param_string,
        .param_bool = host_param_bool,
        .param_image = host_param_image,
        .tensor = host_tensor,
        .workspace_alloc = host_workspace_alloc,
        .workspace_free = host_workspace_free,
        .device = host_device,
        .progress = host_progress,
        .cancelled = host_cancelled,
        .output_image = host_output_image,
        .output_frames = host_output_frames,
        .output_bytes = host_output_bytes,
        .output_meta = host_output_meta,
        .parallel_for = host_parallel_for,
        .model_tensor = host_model_tensor,
        .model_info = host_model_info,
};

/* ---- estimate ---- */

int gh_job_estimate(gh_wk *w, const gh_loaded_plugin *lp, json_object *params, json_object *tables,
                    json_object **ret_needs, char *err, size_t err_size) {
        gh_params p = {.plugin = lp->plugin, .values = params, .models = tables};
        gh_plugin_needs needs = {.struct_size = sizeof(needs)};
        int r = models_index(tables, true, &p.index);

        if (r < 0) {
                gh_set_error(err, err_size, "indexing the model tables: %s", strerror(-r));
                return r;
        }
        current_plugin = lp->plugin;
        estimate_error[0] = 0;
        r = lp->plugin->estimate(&gh_wk_host, &p, &needs);
        current_plugin = NULL;
        models_unindex(tables, p.index);
        if (r < 0) {
                gh_set_error(err, err_size, "estimate() failed: %s%s%s", strerror(-r), estimate_error[0] ? "; " : "",
                             estimate_error);
                return r;
        }
        if (needs.n_models > GH_PLUGIN_MODELS_MAX || needs.steps == 0) {
                gh_set_error(err, err_size, "estimate() returned %s", needs.steps == 0 ? "0 steps" : "too many models");
                return -EPROTO;
        }
        json_object *o = json_object_new_object(), *models = json_object_new_array();
        for (uint32_t i = 0; i < needs.n_models; i++) {
                if (!needs.models[i]) {
                        json_object_put(models);
                        json_object_put(o);
                        gh_set_error(err, err_size, "estimate() returned a NULL model name");
                        return -EPROTO;
                }
                json_object_array_add(models, json_object_new_string(needs.models[i]));
        }
        json_object_object_add(o, "workspace_cpu", json_object_new_int64((int64_t) needs.workspace[GH_DEVICE_KIND_CPU]));
        json_object_object_add(o, "workspace_cuda", json_object_new_int64((int64_t) needs.workspace[GH_DEVICE_KIND_CUDA]));
        json_object_object_add(o, "steps", json_object_new_int64(needs.steps));
        json_object_object_add(o, "slice_sms", json_object_new_int64(needs.slice_sms));
        json_object_object_add(o, "step_timeout_ms", json_object_new_int64(needs.step_timeout_ms));
        json_object_object_add(o, "models", models);
        *ret_needs = o;
        return 0;
}

/* ---- the job ---- */

static int map_images(gh_job *job, int *fds, size_t n_fds, char *err, size_t err_size) {
        for (uint32_t i = 0; i < job->p->n_params; i++) {
                const gh_plugin_param *q = &job->p->params[i];
                json_object *v = json_object_object_get(job->params.values, q->name);
                if (q->type != GH_PARAM_IMAGE || !json_object_is_type(v, json_type_object))
                        continue;
                gh_image img;
                host_param_image(&job->params, q->name, &img);
                int64_t idx = json_object_get_int64(json_object_object_get(v, "fd"));
                size_t need = (size_t) img.stride * img.height;
                struct stat st;
                if (idx < 0 || (size_t) idx >= n_fds || fstat(fds[idx], &st) < 0 || (uint64_t) st.st_size < need) {
                        gh_set_error(err, err_size, "image parameter %s: %zu bytes of pixels expected", q->name, need);
                        return -EINVAL;
                }
                void *map = mmap(NULL, need, PROT_READ, MAP_PRIVATE, fds[idx], 0);
                if (map == MAP_FAILED)
                        return gh_negerrno();
                job->images[job->n_images++] = (job_image) {.name = q->name, .map = map, .size = need};
        }
        return 0;
}

int gh_job_new(gh_wk *w, json_object *msg, int *fds, size_t n_fds, gh_job **ret, char *err, size_t err_size) {
        const gh_loaded_plugin *lp = gh_wk_find_plugin(w, json_object_get_string(json_object_object_get(msg, "pipeline")));
        json_object *params = json_object_object_get(msg, "params"), *models = json_object_object_get(msg, "models");
        int r = 0;

        if (!lp || !json_object_is_type(params, json_type_object) || !json_object_is_type(models, json_type_array)) {
                gh_set_error(err, err_size, lp ? "malformed run message" : "no such pipeline in this worker");
                gh_close_many(fds, n_fds);
                free(fds);
                return lp ? -EBADMSG : -ENOENT;
        }
        gh_job *job = calloc(1, sizeof(*job));
        if (!job) {
                gh_close_many(fds, n_fds);
                free(fds);
                return -ENOMEM;
        }
        *job = (gh_job) {
                .w = w,
                .msg = json_object_get(msg),
                .id = json_object_get_string(json_object_object_get(msg, "job")),
                .p = lp->plugin,
                .models = models,
                .ws_limit = (uint64_t) json_object_get_int64(json_object_object_get(msg, "workspace")),
                .out_limit = (uint64_t) json_object_get_int64(json_object_object_get(msg, "max_output_bytes")),
                .steps = (uint32_t) json_object_get_int64(json_object_object_get(msg, "steps")),
                .units = (uint64_t) json_object_get_int64(json_object_object_get(msg, "units")),
                .metadata = json_object_new_object(),
        };
        if (job->units == 0)
                job->units = 1;
        job->params = (gh_params) {.plugin = lp->plugin, .values = params, .job = job};
        if (!job->id)
                job->id = "?";
        r = models_index(models, false, &job->index);
        if (r < 0)
                gh_set_error(err, err_size, "indexing the model tables: %s", strerror(-r));
        else
                r = map_images(job, fds, n_fds, err, err_size);
        gh_close_many(fds, n_fds);
        free(fds);
        if (r < 0) {
                gh_job_free(job);
                return r;
        }
        *ret = job;
        return 0;
}

const char *gh_job_id(const gh_job *job) {
        return job->id;
}

const char *gh_job_pipeline(const gh_job *job) {
        return job->p->name;
}

void gh_job_cancel(gh_job *job) {
        atomic_store(&job->cancelled, true);
}

void gh_job_set_units(gh_job *job, uint64_t units) {
        if (units)
                atomic_store(&job->next_units, units);
}

bool gh_job_ended(const gh_job *job) {
        return atomic_load(&job->ended);
}

static json_object *job_msg(gh_job *job, const char *type) {
        json_object *m = json_object_new_object();

        json_object_object_add(m, "type", json_object_new_string(type));
        json_object_object_add(m, "job", json_object_new_string(job->id));
        return m;
}

/* Ends a job that did not finish: abort, report. */
static int job_fail(gh_job *job, int r, const char *what) {
        if (job->started && job->phase != PHASE_FINISH)
                job->p->abort(&gh_wk_host, job, job->state);
        job->started = false;
        outputs_drop(job);
        if (atomic_load(&job->cancelled) && r == -ECANCELED)
                return gh_wk_send(job->w, job_msg(job, "cancelled"), NULL, 0);
        json_object *m = job_msg(job, "failed");
        char message[768];
        snprintf(message, sizeof(message), "%s: %s%s%s", what, strerror(-r), job->error[0] ? "; " : "", job->error);
        json_object_object_add(m, "error", json_object_new_string(errname(r)));
        json_object_object_add(m, "message", json_object_new_string(message));
        gh_log_warning("%s job %s failed: %s", job->p->name, job->id, message);
        return gh_wk_send(job->w, m, NULL, 0);
}

static int job_done(gh_job *job) {
        json_object *m = job_msg(job, "done"), *outs = json_object_new_array();
        int fds[GH_WORKER_MAX_OUTPUTS];
        size_t n = job->n_outputs;

        for (size_t i = 0; i < n; i++) {
                int r = output_seal(&job->outputs[i]);
                if (r < 0) {
                        json_object_put(outs);
                        json_object_put(m);
                        return job_fail(job, r, "sealing the outputs");
                }
                json_object_array_add(outs, output_json(&job->outputs[i]));
                fds[i] = job->outputs[i].fd;
        }
        job->n_outputs = 0; /* the fds go with the message */
        json_object *timing = json_object_new_object();
        json_object_object_add(timing, "first_step_usec", json_object_new_int64((int64_t) job->first_step_usec));
        json_object_object_add(timing, "last_step_usec", json_object_new_int64((int64_t) job->last_step_usec));
        json_object_object_add(m, "outputs", outs);
        json_object_object_add(m, "metadata", json_object_get(job->metadata));
        json_object_object_add(m, "timing", timing);
        return gh_wk_send(job->w, m, fds, n);
}

/* The slice's CUDA context and stream, current on this thread. */
static int job_enter_slice(gh_job *job) {
        gh_wk *w = job->w;

        if (!w->args.cuda)
                return 0;
        if (job->cuda_stream) /* the old slice's work finishes in its own SMs */
                w->cu->StreamSynchronize((CUstream) job->cuda_stream);
        if (job->own_stream) {
                w->cu->StreamDestroy((CUstream) job->cuda_stream);
                job->own_stream = false;
        }
        job->cuda_stream = NULL;
        if (job->held)
                gh_wk_slice_put(w, job->held);
        job->held = 0;
        int r = gh_wk_slice(w, job->units, &job->cuda_context, &job->cuda_stream);
        if (r >= 0)
                job->held = job->units;
        if (r >= 0)
                r = gh_cuda_errno(w->cu, w->cu->CtxSetCurrent((CUcontext) job->cuda_context), NULL);
        if (r >= 0 && !job->cuda_stream) {
                CUstream s;
                r = gh_cuda_errno(w->cu, w->cu->StreamCreate(&s, CU_STREAM_NON_BLOCKING), NULL);
                if (r >= 0) {
                        job->cuda_stream = s;
                        job->own_stream = true;
                }
        }
        return r;
}

/* A step boundary: take a new slice if the daemon gave one. */
static int job_boundary(gh_job *job) {
        uint64_t u = atomic_exchange(&job->next_units, 0);

        if (!u)
                return 0;
        if (u != job->units) {
                job->units = u;
                gh_threads_free(job->threads);
                job->threads = NULL; /* made again with the new share */
                int r = job_enter_slice(job);
                if (r < 0)
                        return r;
        }
        json_object *m = job_msg(job, "sliced");
        json_object_object_add(m, "units", json_object_new_int64((int64_t) u));
        return gh_wk_send(job->w, m, NULL, 0);
}

/* After a step the plugin did not report: the daemon's watchdog and
 * clients see every step. */
static void job_report_step(gh_job *job) {
        if (job->reported) {
                job->reported = false;
                return;
        }
        json_object *m = job_msg(job, "progress");
        json_object_object_add(m, "step", json_object_new_int64(job->step));
        json_object_object_add(m, "steps", json_object_new_int64(job->steps));
        gh_wk_send(job->w, m, NULL, 0);
}

static int job_advance(gh_job *job) {
        const gh_plugin *p = job->p;
        int r;

        if (atomic_load(&job->cancelled)) {
                job_fail(job, -ECANCELED, "cancelled");
                return 0;
        }
        r = job_boundary(job);
        if (r < 0) {
                job_fail(job, r, "taking a new slice");
                return 0;
        }
        switch (job->phase) {
        case PHASE_START:
                r = p->start(&gh_wk_host, job, &job->params, &job->state);
                if (r < 0) {
                        job_fail(job, r, "start() failed");
                        return 0;
                }
                job->started = true;
                job->phase = PHASE_STEP;
                return 1;
        case PHASE_STEP:
                if (job->step == 0)
                        job->first_step_usec = gh_now_usec(CLOCK_MONOTONIC);
                job->reported = false;
                r = p->step(&gh_wk_host, job, job->state, job->step);
                job->last_step_usec = gh_now_usec(CLOCK_MONOTONIC);
                if (r < 0) {
                        job_fail(job, r, atomic_load(&job->cancelled) && r == -ECANCELED ? "cancelled" : "step() failed");
                        return 0;
                }
                job->step++;
                if (r == GH_STEP_CONTINUE)
                        job_report_step(job); /* after the last one, "done" says it */
                if (r == GH_STEP_CONTINUE && job->steps && job->step >= job->steps) {
                        job_refuse(job, "step() wants more than the %u steps estimate() declared", job->steps);
                        job_fail(job, -EPROTO, "step() failed");
                        return 0;
                }
                if (r != GH_STEP_CONTINUE)
                        job->phase = PHASE_FINISH;
                return 1;
        case PHASE_FINISH:
                r = p->finish(&gh_wk_host, job, job->state);
                job->state = NULL;
                if (r < 0) {
                        job_fail(job, r, "finish() failed");
                        return 0;
                }
                job->started = false;
                job_done(job);
                return 0;
        }
        return 0;
}

static void *job_thread(void *userdata) {
        gh_job *job = userdata;
        uint64_t one = 1;
        int r = job_enter_slice(job);

        if (r < 0)
                job_fail(job, r, "entering its slice of the device");
        else
                while (job_advance(job) > 0)
                        ;
        /* Freed in the context they were made in. */
        while (job->n_allocs)
                alloc_release(job, job->n_allocs - 1);
        if (job->cuda_stream)
                job->w->cu->StreamSynchronize((CUstream) job->cuda_stream);
        if (job->held)
                gh_wk_slice_put(job->w, job->held);
        job->held = 0;
        gh_threads_free(job->threads);
        job->threads = NULL;
        atomic_store(&job->ended, true);
        (void) !write(job->w->reap_fd, &one, sizeof(one));
        return NULL;
}

int gh_job_start(gh_job *job) {
        int r = -pthread_create(&job->thread, NULL, job_thread, job);

        if (r < 0)
                return r;
        job->thread_started = true;
        return 0;
}

void gh_job_free(gh_job *job) {
        if (!job)
                return;
        if (job->thread_started) {
                gh_job_cancel(job);
                pthread_join(job->thread, NULL);
        }
        if (job->own_stream)
                job->w->cu->StreamDestroy((CUstream) job->cuda_stream);
        gh_threads_free(job->threads);
        if (job->started)
                job_fail(job, -ECANCELED, "ended");
        if (job->n_allocs)
                gh_log_warning("%s job %s left %zu workspace allocations (%" PRIu64 " bytes); freed", job->p->name,
                               job->id, job->n_allocs, job->ws_used);
        while (job->n_allocs)
                alloc_release(job, job->n_allocs - 1);
        free(job->allocs);
        outputs_drop(job);
        for (size_t i = 0; i < job->n_images; i++)
                munmap(job->images[i].map, job->images[i].size);
        json_object_put(job->metadata);
        models_unindex(job->models, job->index);
        json_object_put(job->msg);
        free(job);
}

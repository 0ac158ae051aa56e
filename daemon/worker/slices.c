/* SM slices of one GPU through CUDA green contexts: the split into units
 * at creation, and a small cache of green contexts (one per mask of units)
 * with a hold per mask. See slices.h. */
#include <errno.h>
#include <pthread.h>
#include <stdbool.h>
#include <stdlib.h>
#include <string.h>

#include "../common/util.h"
#include "slices.h"

#if GH_CUDA_HAVE_GREEN_CONTEXTS

/* One cached slice. Guarded by gh_slices.lock. */
typedef struct slice {
        uint64_t mask;      /* its units; 0: the entry is empty */
        bool held;          /* between gh_slices_get and gh_slices_put */
        uint64_t last_used; /* gh_slices.clock at the last get */
        CUgreenCtx green;
        CUcontext context;  /* cuCtxFromGreenCtx(green) */
        CUstream stream;
} slice;

struct gh_slices {
        /* Set by gh_slices_new, read-only after it. */
        const gh_cuda *cu;
        CUdevice device;
        CUcontext primary; /* retained; NULL until it is */
        unsigned device_sms, n_units;
        CUdevResource units[GH_SLICES_MAX_UNITS]; /* the groups of one split */

        pthread_mutex_t lock;
        uint64_t clock;                             /* lock: counts gets */
        CUdevResource scratch[GH_SLICES_MAX_UNITS]; /* lock: one mask's groups */
        slice cache[GH_SLICES_CACHE];               /* lock */
};

static int cuda_fail(const gh_cuda *cu, CUresult r, const char *call, char *err, size_t err_size) {
        const char *name;
        int e = gh_cuda_errno(cu, r, &name);

        gh_set_error(err, err_size, "%s: %s", call, name);
        return e;
}

static int check_driver(const gh_cuda *cu, char *err, size_t err_size) {
        const struct {
                bool present;
                const char *name;
        } need[] = {
                {cu->DeviceGetDevResource, "cuDeviceGetDevResource"},
                {cu->DevSmResourceSplitByCount, "cuDevSmResourceSplitByCount"},
                {cu->DevResourceGenerateDesc, "cuDevResourceGenerateDesc"},
                {cu->GreenCtxCreate, "cuGreenCtxCreate"},
                {cu->GreenCtxDestroy, "cuGreenCtxDestroy"},
                {cu->CtxFromGreenCtx, "cuCtxFromGreenCtx"},
                {cu->GreenCtxStreamCreate, "cuGreenCtxStreamCreate"},
        };

        for (size_t i = 0; i < ELEMENTSOF(need); i++)
                if (!need[i].present) {
                        gh_set_error(err, err_size, "the CUDA driver (%d.%d) has no green contexts: %s needs 12.5",
                                     cu->driver_version / 1000, cu->driver_version % 1000 / 10, need[i].name);
                        return -EOPNOTSUPP;
                }
        return 0;
}

static int retain_device(gh_slices *s, int cuda_ordinal, char *err, size_t err_size) {
        const gh_cuda *cu = s->cu;
        CUcontext primary;
        CUresult r = cu->DeviceGet(&s->device, cuda_ordinal);

        if (r != CUDA_SUCCESS)
                return cuda_fail(cu, r, "cuDeviceGet", err, err_size);
        r = cu->DevicePrimaryCtxRetain(&primary, s->device);
        if (r != CUDA_SUCCESS)
                return cuda_fail(cu, r, "cuDevicePrimaryCtxRetain", err, err_size);
        s->primary = primary;
        return 0;
}

/* The smallest group of at least |min_sms| that gives at most
 * GH_SLICES_MAX_UNITS groups; the driver rounds it up to its minimum and
 * alignment. */
static int count_units(gh_slices *s, const CUdevResource *all, unsigned *min_sms, unsigned *ret_n, char *err,
                       size_t err_size) {
        unsigned n = 0, min = *min_sms;

        for (;;) {
                CUresult r = s->cu->DevSmResourceSplitByCount(NULL, &n, all, NULL, 0, min);
                if (r != CUDA_SUCCESS)
                        return cuda_fail(s->cu, r, "cuDevSmResourceSplitByCount", err, err_size);
                if (n <= GH_SLICES_MAX_UNITS || min >= s->device_sms)
                        break;
                unsigned even = (s->device_sms + GH_SLICES_MAX_UNITS - 1) / GH_SLICES_MAX_UNITS;
                min = min * 2 > even ? min * 2 : even;
                if (min > s->device_sms)
                        min = s->device_sms;
        }
        if (n == 0 || n > GH_SLICES_MAX_UNITS) {
                gh_set_error(err, err_size, "the driver cannot split %u SMs into 1 to %d groups of at least %u SMs",
                             s->device_sms, GH_SLICES_MAX_UNITS, min);
                return n == 0 ? -EINVAL : -EOPNOTSUPP;
        }
        *min_sms = min;
        *ret_n = n;
        return 0;
}

static int split_device(gh_slices *s, unsigned unit_sms, char *err, size_t err_size) {
        const gh_cuda *cu = s->cu;
        CUdevResource all;
        unsigned n, min = unit_sms ? unit_sms : 1;
        CUresult r;
        int e;

        memset(&all, 0, sizeof(all));
        r = cu->DeviceGetDevResource(s->device, &all, CU_DEV_RESOURCE_TYPE_SM);
        if (r != CUDA_SUCCESS)
                return cuda_fail(cu, r, "cuDeviceGetDevResource", err, err_size);
        s->device_sms = all.sm.smCount;
        if (unit_sms > s->device_sms) {
                gh_set_error(err, err_size, "units of %u SMs: the device has %u", unit_sms, s->device_sms);
                return -EINVAL;
        }
        if ((e = count_units(s, &all, &min, &n, err, err_size)) < 0)
                return e;
        r = cu->DevSmResourceSplitByCount(s->units, &n, &all, NULL, 0, min);
        if (r != CUDA_SUCCESS)
                return cuda_fail(cu, r, "cuDevSmResourceSplitByCount", err, err_size);
        if (n == 0 || s->units[0].sm.smCount < min) {
                gh_set_error(err, err_size, "the driver split %u SMs into %u groups of %u SMs, asked for %u",
                             s->device_sms, n, n ? s->units[0].sm.smCount : 0, min);
                return -EINVAL;
        }
        s->n_units = n;
        return 0;
}

static uint64_t all_units(const gh_slices *s) {
        return s->n_units >= 64 ? UINT64_MAX : (UINT64_C(1) << s->n_units) - 1;
}

static void slice_clear(const gh_slices *s, slice *e) {
        if (e->stream)
                s->cu->StreamDestroy(e->stream);
        if (e->green)
                s->cu->GreenCtxDestroy(e->green);
        memset(e, 0, sizeof(*e));
}

gh_slices *gh_slices_free(gh_slices *s) {
        if (!s)
                return NULL;
        for (size_t i = 0; i < ELEMENTSOF(s->cache); i++)
                slice_clear(s, &s->cache[i]);
        if (s->primary)
                s->cu->DevicePrimaryCtxRelease(s->device);
        pthread_mutex_destroy(&s->lock);
        free(s);
        return NULL;
}

int gh_slices_new(const gh_cuda *cu, int cuda_ordinal, unsigned unit_sms, gh_slices **ret, char *err,
                  size_t err_size) {
        _cleanup_(gh_slices_freep) gh_slices *s = NULL;
        int r = check_driver(cu, err, err_size);

        if (r < 0)
                return r;
        s = calloc(1, sizeof(*s));
        if (!s)
                return -ENOMEM;
        s->cu = cu;
        pthread_mutex_init(&s->lock, NULL);
        r = retain_device(s, cuda_ordinal, err, err_size);
        if (r >= 0)
                r = split_device(s, unit_sms, err, err_size);
        if (r < 0)
                return r;
        *ret = TAKE_PTR(s);
        return 0;
}

unsigned gh_slices_count(const gh_slices *s) {
        return s->n_units;
}

unsigned gh_slices_sms(const gh_slices *s, uint64_t mask) {
        unsigned sms = 0;

        if ((mask & all_units(s)) == all_units(s))
                return s->device_sms;
        for (unsigned i = 0; i < s->n_units; i++)
                if (mask & (UINT64_C(1) << i))
                        sms += s->units[i].sm.smCount;
        return sms;
}

unsigned gh_slices_unit_sms(const gh_slices *s) {
        return s->n_units ? s->units[0].sm.smCount : 0;
}

unsigned gh_slices_device_sms(const gh_slices *s) {
        return s->device_sms;
}

static bool mask_valid(const gh_slices *s, uint64_t mask) {
        return mask != 0 && (mask & ~all_units(s)) == 0;
}

static slice *cache_find(gh_slices *s, uint64_t mask) {
        for (size_t i = 0; i < ELEMENTSOF(s->cache); i++)
                if (s->cache[i].mask == mask)
                        return &s->cache[i];
        return NULL;
}

/* An empty entry, else the least recently used one not held, else NULL. */
static slice *cache_victim(gh_slices *s) {
        slice *victim = NULL;

        for (size_t i = 0; i < ELEMENTSOF(s->cache); i++) {
                slice *e = &s->cache[i];
                if (e->mask == 0)
                        return e;
                if (!e->held && (!victim || e->last_used < victim->last_used))
                        victim = e;
        }
        return victim;
}

/* The whole device: the primary context, with a stream of its own made
 * in it (the caller's current context is put back). */
static CUresult whole_make(gh_slices *s, slice *e) {
        const gh_cuda *cu = s->cu;
        CUcontext current = NULL;
        CUresult r = cu->CtxGetCurrent(&current);

        if (r == CUDA_SUCCESS)
                r = cu->CtxSetCurrent(s->primary);
        if (r == CUDA_SUCCESS) {
                e->context = s->primary;
                r = cu->StreamCreate(&e->stream, CU_STREAM_NON_BLOCKING);
                CUresult back = cu->CtxSetCurrent(current);
                if (r == CUDA_SUCCESS)
                        r = back;
        }
        return r;
}

/* A green context over the units of |mask|, and a stream in it, into the
 * empty entry |e|; every unit is the whole device instead. On failure |e|
 * stays empty. */
static int slice_make(gh_slices *s, slice *e, uint64_t mask) {
        const gh_cuda *cu = s->cu;
        CUdevResourceDesc desc = NULL;
        unsigned n = 0;
        CUresult r;

        if (mask == all_units(s)) {
                r = whole_make(s, e);
                if (r != CUDA_SUCCESS) {
                        slice_clear(s, e);
                        return gh_cuda_errno(cu, r, NULL);
                }
                e->mask = mask;
                return 0;
        }
        for (unsigned i = 0; i < s->n_units; i++)
                if (mask & (UINT64_C(1) << i))
                        s->scratch[n++] = s->units[i];
        r = cu->DevResourceGenerateDesc(&desc, s->scratch, n);
        if (r == CUDA_SUCCESS)
                r = cu->GreenCtxCreate(&e->green, desc, s->device, CU_GREEN_CTX_DEFAULT_STREAM);
        if (r == CUDA_SUCCESS)
                r = cu->CtxFromGreenCtx(&e->context, e->green);
        if (r == CUDA_SUCCESS)
                r = cu->GreenCtxStreamCreate(&e->stream, e->green, CU_STREAM_NON_BLOCKING, 0);
        if (r != CUDA_SUCCESS) {
                slice_clear(s, e);
                return gh_cuda_errno(cu, r, NULL);
        }
        e->mask = mask;
        return 0;
}

/* The entry for |mask|, made if need be. Called with the lock held. */
static int cache_get(gh_slices *s, uint64_t mask, slice **ret) {
        slice *e = cache_find(s, mask);
        int r;

        if (e) {
                if (e->held)
                        return -EBUSY;
                *ret = e;
                return 0;
        }
        e = cache_victim(s);
        if (!e)
                return -ENOSPC;
        slice_clear(s, e);
        if ((r = slice_make(s, e, mask)) < 0)
                return r;
        *ret = e;
        return 0;
}

int gh_slices_get(gh_slices *s, uint64_t mask, CUcontext *ret_ctx, CUstream *ret_stream) {
        slice *e = NULL;
        int r;

        if (!mask_valid(s, mask))
                return -EINVAL;
        pthread_mutex_lock(&s->lock);
        r = cache_get(s, mask, &e);
        if (r >= 0) {
                e->held = true;
                e->last_used = ++s->clock;
                *ret_ctx = e->context;
                *ret_stream = e->stream;
        }
        pthread_mutex_unlock(&s->lock);
        return r;
}

int gh_slices_put(gh_slices *s, uint64_t mask) {
        slice *e;
        int r = -ENOENT;

        if (mask == 0)
                return -ENOENT;
        pthread_mutex_lock(&s->lock);
        e = cache_find(s, mask);
        if (e && e->held) {
                e->held = false;
                r = 0;
        }
        pthread_mutex_unlock(&s->lock);
        return r;
}

#else /* headers older than CUDA 12.5: no green contexts */

struct gh_slices {
        unsigned n_units;
};

int gh_slices_new(const gh_cuda *cu, int cuda_ordinal, unsigned unit_sms, gh_slices **ret, char *err,
                  size_t err_size) {
        gh_set_error(err, err_size, "gpuhost was built with CUDA headers older than 12.5: no green contexts");
        return -EOPNOTSUPP;
}

gh_slices *gh_slices_free(gh_slices *s) {
        free(s);
        return NULL;
}

unsigned gh_slices_count(const gh_slices *s) {
        return 0;
}

unsigned gh_slices_sms(const gh_slices *s, uint64_t mask) {
        return 0;
}

unsigned gh_slices_unit_sms(const gh_slices *s) {
        return 0;
}

unsigned gh_slices_device_sms(const gh_slices *s) {
        return 0;
}

int gh_slices_get(gh_slices *s, uint64_t mask, CUcontext *ret_ctx, CUstream *ret_stream) {
        return -EOPNOTSUPP;
}

int gh_slices_put(gh_slices *s, uint64_t mask) {
        return -ENOENT;
}

#endif

/* SM slices of one GPU for gpuhost-worker: CUDA green contexts.
 *
 * gh_slices_new() splits the device's SMs once, with
 * cuDevSmResourceSplitByCount, into disjoint, equal units of the smallest
 * group the driver allows (8 SMs on compute capability 9.0) or of
 * |unit_sms| if that is larger; at most 64 units (the group is made larger
 * on GPUs that would give more). SMs that the split leaves over are left
 * out of every partial slice: the driver gives that remainder no
 * performance or functional guarantee. It can be more than one unit's
 * worth: an H200's 132 SMs give 15 units of 8 (12 left out), or 8 units of
 * 16 (4 left out). The slice of every unit is the whole device instead,
 * the remainder included: the primary context. gh_slices_sms() and
 * gh_slices_device_sms() tell.
 *
 * A job runs in a slice named by a mask of units (bit i: unit i).
 * gh_slices_get() hands out a green context over exactly those units (the
 * primary context for all of them) and a stream of its own in it, made on first use (about 1 ms on an H200) and
 * cached: at most GH_SLICES_CACHE masks, the least recently used one
 * evicted (its stream and green context destroyed) when another is needed.
 * A mask is held by one caller from gh_slices_get() until gh_slices_put():
 * a held mask is never evicted, and a second get of it fails with -EBUSY
 * (a green context may be current to one thread at a time). Its context
 * and stream stay valid until the put; after that, until the mask is
 * evicted or gh_slices_free(). Masks that overlap may be held at once;
 * keeping jobs on disjoint units is the scheduler's business.
 *
 * Thread-safe: a mutex guards the cache (held while a green context is
 * made). The device's primary context is retained from gh_slices_new() to
 * gh_slices_free(), so creating green contexts never initialises it anew.
 * Nothing here leaves a context current. */
#pragma once

#include <stddef.h>
#include <stdint.h>

#include "../gpuhostd/cuda.h"

#define GH_SLICES_MAX_UNITS 64
#define GH_SLICES_CACHE 32

typedef struct gh_slices gh_slices;

/* Splits device |cuda_ordinal|'s SMs into units of the smallest group the
 * driver allows, or of |unit_sms| if larger (0: the driver's minimum).
 * |cu| must outlive the result. Fails with -EOPNOTSUPP where the driver
 * (or the headers gpuhost was built with) lacks green contexts, -EINVAL
 * when no group of |unit_sms| fits (more than the device's SMs, or more
 * than its largest aligned group), or the errno of the failing CUDA call;
 * a one-line reason goes to |err| (if |err_size| > 0). */
int gh_slices_new(const gh_cuda *cu, int cuda_ordinal, unsigned unit_sms, gh_slices **ret, char *err,
                  size_t err_size);

/* Destroys every cached stream and green context, then releases the
 * primary context. The caller has finished all work in them. Accepts NULL;
 * returns NULL. */
gh_slices *gh_slices_free(gh_slices *s);
static inline void gh_slices_freep(gh_slices **s) {
        gh_slices_free(*s);
}

/* Units, 1 to GH_SLICES_MAX_UNITS. */
unsigned gh_slices_count(const gh_slices *s);

/* SMs in the units of |mask| (bits beyond the last unit are ignored); the
 * device's for a mask of every unit. */
unsigned gh_slices_sms(const gh_slices *s, uint64_t mask);

/* SMs in one unit. */
unsigned gh_slices_unit_sms(const gh_slices *s);

/* SMs of the device, those left out of every unit included. */
unsigned gh_slices_device_sms(const gh_slices *s);

/* A green context over exactly the units in |mask| (the primary context
 * when |mask| has every unit) and a non-blocking stream in it, created on
 * first use and cached; marks |mask| held.
 * |ret_ctx| is the CUcontext (cuCtxFromGreenCtx) to make current on the
 * job's thread. -EINVAL for an empty mask or one naming units that do not
 * exist, -EBUSY when |mask| is held, -ENOSPC when every cache entry is
 * held, or the errno of the failing CUDA call. Thread-safe. */
int gh_slices_get(gh_slices *s, uint64_t mask, CUcontext *ret_ctx, CUstream *ret_stream);

/* Drops the hold gh_slices_get() put on |mask|; its context and stream
 * stay cached. The caller has finished (or synchronised) its work on the
 * stream. -ENOENT when |mask| is not held. Thread-safe. */
int gh_slices_put(gh_slices *s, uint64_t mask);

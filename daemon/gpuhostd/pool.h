/* The weight pool of one device.
 *
 * Physical memory comes in slabs of a fixed size (a multiple of the
 * device's allocation granularity). All slabs of a pool are mapped into one
 * virtual range reserved up front, so a place in the pool is an offset from
 * its base, the same in every process that imports the pool. Allocations
 * (aligned to at least 256 bytes) are carved from a first-fit free list over
 * the whole range and may span contiguous slabs; slabs are created when an
 * allocation first touches them and unmapped and released as soon as nothing
 * in them is allocated, so freed memory really returns to the device.
 *
 * Each slab is an fd (a memfd on the CPU device, a VMM allocation exported
 * as a POSIX fd on a GPU), which other processes import and map at the same
 * offset of their own reservation (gh_pool_view). The device specifics sit
 * behind gh_pool_backend; the pool itself is plain bookkeeping.
 *
 * Not thread-safe: the owner serialises calls. */
#pragma once

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#define GH_POOL_MIN_ALIGN 256

typedef struct gh_pool_backend gh_pool_backend;

/* What a device provides. Every function returns >= 0 or a negative errno.
 * |ctx| is the backend's own state. */
struct gh_pool_backend {
        const char *name;
        void *ctx;
        uint64_t granularity;
        /* Reserves |size| bytes of address space, inaccessible. */
        int (*reserve)(void *ctx, uint64_t size, uint64_t *ret_base);
        void (*unreserve)(void *ctx, uint64_t base, uint64_t size);
        /* Creates |size| bytes of physical memory as an fd (CLOEXEC);
         * *ret_handle is backend-private. */
        int (*slab_create)(void *ctx, uint64_t size, int *ret_fd, uint64_t *ret_handle);
        void (*slab_release)(void *ctx, uint64_t handle, int fd);
        /* Maps a slab at |addr| (inside the reservation), read-write or
         * read-only, and undoes that, keeping the reservation. */
        int (*slab_map)(void *ctx, uint64_t addr, uint64_t size, uint64_t handle, bool writable);
        void (*slab_unmap)(void *ctx, uint64_t addr, uint64_t size);
        /* Imports a slab fd received from another process. */
        int (*slab_import)(void *ctx, int fd, uint64_t size, uint64_t *ret_handle);
};

/* The CPU device's backend: memfd slabs (MFD_CLOEXEC, sealed against
 * shrinking), mmap'ed into a PROT_NONE reservation. */
extern const gh_pool_backend gh_pool_backend_cpu;

typedef struct gh_pool gh_pool;

typedef struct gh_pool_stats {
        uint64_t capacity;      /* the budget: at most this much is reserved */
        uint64_t reserved;      /* bytes of slabs that exist */
        uint64_t used;          /* bytes allocated */
        uint64_t free;          /* reserved - used */
        uint64_t largest_free;  /* the largest allocation that would succeed now */
        unsigned slabs;         /* slabs that exist */
        unsigned allocations;
} gh_pool_stats;

/* |capacity| is rounded down to whole slabs; |slab_size| must be a
 * multiple of the backend's granularity. */
int gh_pool_new(const gh_pool_backend *backend, uint64_t slab_size, uint64_t capacity, gh_pool **ret);
gh_pool *gh_pool_free(gh_pool *p);

/* Allocates |size| bytes aligned to |align| (a power of two; at least
 * GH_POOL_MIN_ALIGN is used). -ENOSPC: no room within the capacity. */
int gh_pool_alloc(gh_pool *p, uint64_t size, uint64_t align, uint64_t *ret_offset);
/* Frees the allocation that starts at |offset|; -ENOENT if there is none. */
int gh_pool_release(gh_pool *p, uint64_t offset);

uint64_t gh_pool_base(const gh_pool *p);
void *gh_pool_ptr(const gh_pool *p, uint64_t offset); /* CPU pools: a usable pointer */
uint64_t gh_pool_slab_size(const gh_pool *p);
void gh_pool_get_stats(const gh_pool *p, gh_pool_stats *ret);
/* At most |limit| bytes of slabs (rounded down to whole slabs, at most the
 * capacity) may exist from now on: an allocation that would need more
 * fails with -ENOSPC. Slabs already there stay. The scheduler lowers it by
 * the workspaces it has promised to jobs. */
void gh_pool_set_limit(gh_pool *p, uint64_t limit);

/* The slabs that back [offset, offset + size): their indexes (slab i covers
 * [i * slab_size, (i + 1) * slab_size)) and fds, owned by the pool. Returns
 * the number of slabs, or -ENOENT if part of the range has no slab. */
int gh_pool_slabs_for(const gh_pool *p, uint64_t offset, uint64_t size, unsigned *ret_first,
                      unsigned *ret_count);
int gh_pool_slab_fd(const gh_pool *p, unsigned index);
/* A number that tells this slab apart from any other slab the pool made
 * (0 if there is no slab at |index|): importers compare it to know whether
 * their mapping at |index| is still the same memory. */
uint64_t gh_pool_slab_serial(const gh_pool *p, unsigned index);
/* Called after a slab is released (its memory freed here), so importers can
 * drop their mappings and the memory really goes back. One hook a pool. */
void gh_pool_set_release_hook(gh_pool *p, void (*released)(unsigned index, void *userdata), void *userdata);

/* The importing side: a reservation of the same size in another process,
 * with imported slabs mapped at their offsets. */
typedef struct gh_pool_view gh_pool_view;

int gh_pool_view_new(const gh_pool_backend *backend, uint64_t slab_size, uint64_t size, gh_pool_view **ret);
gh_pool_view *gh_pool_view_free(gh_pool_view *v);
/* Maps slab |index| from |fd| (the view keeps its own copy of the fd's
 * mapping; the caller still closes |fd|). */
int gh_pool_view_map(gh_pool_view *v, unsigned index, int fd, bool writable);
int gh_pool_view_unmap(gh_pool_view *v, unsigned index);
uint64_t gh_pool_view_base(const gh_pool_view *v);

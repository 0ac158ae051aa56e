/* The per-device weight pool: slabs in one reserved range, a first-fit
 * sub-allocator over it, fd export and import. See pool.h. */
#include <fcntl.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <unistd.h>

#include "../common/util.h"
#include "pool.h"

typedef struct pool_extent {
        uint64_t offset, size;
} pool_extent;

typedef struct pool_slab {
        int fd;           /* -1: no slab here */
        uint64_t handle;
        unsigned users;   /* allocations that touch this slab */
        uint64_t serial;  /* unique per slab made, so importers can tell a new slab from an old one */
} pool_slab;

/* A sorted array of extents, by offset. */
typedef struct extent_list {
        pool_extent *items;
        size_t n, cap;
} extent_list;

struct gh_pool {
        const gh_pool_backend *be;
        uint64_t slab_size, capacity, base, used;
        pool_slab *slabs;
        unsigned n_slots, n_slabs;
        unsigned limit_slabs; /* slabs that may exist at once (gh_pool_set_limit) */
        extent_list free;   /* free space in [0, capacity), merged */
        extent_list allocs; /* live allocations */
        uint64_t next_serial;
        void (*released)(unsigned index, void *userdata);
        void *released_userdata;
};

struct gh_pool_view {
        const gh_pool_backend *be;
        uint64_t slab_size, size, base;
        bool *mapped;
        unsigned n_slots;
};

/* ---- extent lists ---- */

static size_t extents_lower_bound(const extent_list *l, uint64_t offset) {
        size_t lo = 0, hi = l->n;

        while (lo < hi) {
                size_t mid = lo + (hi - lo) / 2;
                if (l->items[mid].offset < offset)
                        lo = mid + 1;
                else
                        hi = mid;
        }
        return lo;
}

static int extents_insert_at(extent_list *l, size_t i, pool_extent e) {
        if (l->n == l->cap) {
                size_t cap = l->cap ? l->cap * 2 : 16;
                pool_extent *p = realloc(l->items, cap * sizeof(*p));
                if (!p)
                        return -ENOMEM;
                l->items = p;
                l->cap = cap;
        }
        memmove(l->items + i + 1, l->items + i, (l->n - i) * sizeof(*l->items));
        l->items[i] = e;
        l->n++;
        return 0;
}

static void extents_remove_at(extent_list *l, size_t i) {
        memmove(l->items + i, l->items + i + 1, (l->n - i - 1) * sizeof(*l->items));
        l->n--;
}

/* Adds free space, merging it with its neighbours. */
static int free_insert(extent_list *l, pool_extent e) {
        size_t i = extents_lower_bound(l, e.offset);
        bool join_prev = i > 0 && l->items[i - 1].offset + l->items[i - 1].size == e.offset;
        bool join_next = i < l->n && e.offset + e.size == l->items[i].offset;

        if (join_prev && join_next) {
                l->items[i - 1].size += e.size + l->items[i].size;
                extents_remove_at(l, i);
                return 0;
        }
        if (join_prev) {
                l->items[i - 1].size += e.size;
                return 0;
        }
        if (join_next) {
                l->items[i].offset = e.offset;
                l->items[i].size += e.size;
                return 0;
        }
        return extents_insert_at(l, i, e);
}

/* ---- slabs ---- */

static void slab_destroy(gh_pool *p, unsigned i) {
        pool_slab *s = &p->slabs[i];

        p->be->slab_unmap(p->be->ctx, p->base + (uint64_t) i * p->slab_size, p->slab_size);
        p->be->slab_release(p->be->ctx, s->handle, s->fd);
        *s = (pool_slab) {.fd = -1};
        p->n_slabs--;
        if (p->released)
                p->released(i, p->released_userdata);
}

static int slab_ensure(gh_pool *p, unsigned i) {
        pool_slab *s = &p->slabs[i];
        int fd;
        uint64_t handle;

        if (s->fd >= 0)
                return 0;
        int r = p->be->slab_create(p->be->ctx, p->slab_size, &fd, &handle);
        if (r < 0)
                return r;
        r = p->be->slab_map(p->be->ctx, p->base + (uint64_t) i * p->slab_size, p->slab_size, handle, true);
        if (r < 0) {
                p->be->slab_release(p->be->ctx, handle, fd);
                return r;
        }
        *s = (pool_slab) {.fd = fd, .handle = handle, .serial = ++p->next_serial};
        p->n_slabs++;
        return 0;
}

static void slab_range(const gh_pool *p, uint64_t offset, uint64_t size, unsigned *ret_first, unsigned *ret_end) {
        *ret_first = (unsigned) (offset / p->slab_size);
        *ret_end = (unsigned) ((offset + size + p->slab_size - 1) / p->slab_size);
}

/* Drops one user from each slab of the range; destroys slabs left unused. */
static void slabs_unuse(gh_pool *p, uint64_t offset, uint64_t size) {
        unsigned first, end;

        slab_range(p, offset, size, &first, &end);
        for (unsigned i = first; i < end; i++)
                if (--p->slabs[i].users == 0)
                        slab_destroy(p, i);
}

/* Makes sure every slab of the range exists and counts one more user. */
static int slabs_use(gh_pool *p, uint64_t offset, uint64_t size) {
        unsigned first, end, missing = 0;

        slab_range(p, offset, size, &first, &end);
        for (unsigned i = first; i < end; i++)
                missing += p->slabs[i].fd < 0;
        if (p->n_slabs + missing > p->limit_slabs)
                return -ENOSPC;
        for (unsigned i = first; i < end; i++) {
                int r = slab_ensure(p, i);
                if (r < 0) {
                        for (unsigned j = first; j < i; j++)
                                if (--p->slabs[j].users == 0)
                                        slab_destroy(p, j);
                        return r;
                }
                p->slabs[i].users++;
        }
        return 0;
}

/* ---- pool ---- */

int gh_pool_new(const gh_pool_backend *be, uint64_t slab_size, uint64_t capacity, gh_pool **ret) {
        if (!be || slab_size == 0 || slab_size % be->granularity != 0)
                return -EINVAL;
        uint64_t n = capacity / slab_size;
        if (n == 0 || n > UINT32_MAX)
                return -EINVAL;
        gh_pool *p = calloc(1, sizeof(*p));
        if (!p)
                return -ENOMEM;
        *p = (gh_pool) {.be = be, .slab_size = slab_size, .capacity = n * slab_size, .n_slots = (unsigned) n,
                        .limit_slabs = (unsigned) n};
        p->slabs = malloc(n * sizeof(*p->slabs));
        int r = p->slabs ? be->reserve(be->ctx, p->capacity, &p->base) : -ENOMEM;
        if (r >= 0)
                r = free_insert(&p->free, (pool_extent) {0, p->capacity});
        if (r < 0) {
                if (p->base)
                        be->unreserve(be->ctx, p->base, p->capacity);
                free(p->slabs);
                free(p->free.items);
                free(p);
                return r;
        }
        for (unsigned i = 0; i < p->n_slots; i++)
                p->slabs[i] = (pool_slab) {.fd = -1};
        *ret = p;
        return 0;
}

gh_pool *gh_pool_free(gh_pool *p) {
        if (!p)
                return NULL;
        p->released = NULL;
        for (unsigned i = 0; i < p->n_slots; i++)
                if (p->slabs[i].fd >= 0)
                        slab_destroy(p, i);
        p->be->unreserve(p->be->ctx, p->base, p->capacity);
        free(p->slabs);
        free(p->free.items);
        free(p->allocs.items);
        free(p);
        return NULL;
}

static uint64_t align_up(uint64_t v, uint64_t a) {
        return (v + a - 1) & ~(a - 1);
}

/* First fit: the lowest offset where the aligned block fits. */
static int find_fit(const gh_pool *p, uint64_t size, uint64_t align, size_t *ret_index, uint64_t *ret_offset) {
        for (size_t i = 0; i < p->free.n; i++) {
                const pool_extent *e = &p->free.items[i];
                uint64_t start = align_up(e->offset, align);
                if (start >= e->offset + e->size || e->offset + e->size - start < size)
                        continue;
                *ret_index = i;
                *ret_offset = start;
                return 0;
        }
        return -ENOSPC;
}

int gh_pool_alloc(gh_pool *p, uint64_t size, uint64_t align, uint64_t *ret_offset) {
        size_t i;
        uint64_t start;

        if (align < GH_POOL_MIN_ALIGN)
                align = GH_POOL_MIN_ALIGN;
        if (size == 0 || (align & (align - 1)) || size > p->capacity)
                return size > p->capacity ? -ENOSPC : -EINVAL;
        size = align_up(size, GH_POOL_MIN_ALIGN);
        int r = find_fit(p, size, align, &i, &start);
        if (r < 0)
                return r;
        /* Room for the bookkeeping first, so nothing fails half-way. */
        size_t a = extents_lower_bound(&p->allocs, start);
        r = extents_insert_at(&p->allocs, a, (pool_extent) {start, size});
        if (r < 0)
                return r;
        r = slabs_use(p, start, size);
        if (r < 0) {
                extents_remove_at(&p->allocs, a);
                return r;
        }
        pool_extent e = p->free.items[i];
        pool_extent right = {start + size, e.offset + e.size - (start + size)};
        if (start > e.offset)
                p->free.items[i].size = start - e.offset;
        else
                extents_remove_at(&p->free, i);
        if (right.size > 0 && free_insert(&p->free, right) < 0) {
                /* Out of memory for the list: give the space back whole. */
                extents_remove_at(&p->allocs, a);
                slabs_unuse(p, start, size);
                free_insert(&p->free, (pool_extent) {start, size}); /* merges, needs no room */
                return -ENOMEM;
        }
        p->used += size;
        *ret_offset = start;
        return 0;
}

int gh_pool_release(gh_pool *p, uint64_t offset) {
        size_t i = extents_lower_bound(&p->allocs, offset);

        if (i >= p->allocs.n || p->allocs.items[i].offset != offset)
                return -ENOENT;
        pool_extent e = p->allocs.items[i];
        int r = free_insert(&p->free, e);
        if (r < 0)
                return r;
        extents_remove_at(&p->allocs, i);
        slabs_unuse(p, e.offset, e.size);
        p->used -= e.size;
        return 0;
}

uint64_t gh_pool_base(const gh_pool *p) {
        return p->base;
}

void *gh_pool_ptr(const gh_pool *p, uint64_t offset) {
        return (void *) (uintptr_t) (p->base + offset);
}

uint64_t gh_pool_slab_size(const gh_pool *p) {
        return p->slab_size;
}

void gh_pool_set_limit(gh_pool *p, uint64_t limit) {
        uint64_t n = limit / p->slab_size;

        p->limit_slabs = n < p->n_slots ? (unsigned) n : p->n_slots;
}

void gh_pool_get_stats(const gh_pool *p, gh_pool_stats *ret) {
        uint64_t largest = 0;

        for (size_t i = 0; i < p->free.n; i++)
                if (p->free.items[i].size > largest)
                        largest = p->free.items[i].size;
        *ret = (gh_pool_stats) {
                .capacity = p->capacity,
                .reserved = (uint64_t) p->n_slabs * p->slab_size,
                .used = p->used,
                .free = (uint64_t) p->n_slabs * p->slab_size - p->used,
                .largest_free = largest,
                .slabs = p->n_slabs,
                .allocations = (unsigned) p->allocs.n,
        };
}

int gh_pool_slabs_for(const gh_pool *p, uint64_t offset, uint64_t size, unsigned *ret_first, unsigned *ret_count) {
        unsigned first, end;

        if (size == 0 || offset > p->capacity || size > p->capacity - offset)
                return -EINVAL;
        slab_range(p, offset, size, &first, &end);
        for (unsigned i = first; i < end; i++)
                if (p->slabs[i].fd < 0)
                        return -ENOENT;
        *ret_first = first;
        *ret_count = end - first;
        return (int) (end - first);
}

int gh_pool_slab_fd(const gh_pool *p, unsigned index) {
        return index < p->n_slots && p->slabs[index].fd >= 0 ? p->slabs[index].fd : -ENOENT;
}

/* ---- views (importing side) ---- */

uint64_t gh_pool_slab_serial(const gh_pool *p, unsigned index) {
        return index < p->n_slots && p->slabs[index].fd >= 0 ? p->slabs[index].serial : 0;
}

void gh_pool_set_release_hook(gh_pool *p, void (*released)(unsigned index, void *userdata), void *userdata) {
        p->released = released;
        p->released_userdata = userdata;
}

int gh_pool_view_new(const gh_pool_backend *be, uint64_t slab_size, uint64_t size, gh_pool_view **ret) {
        if (!be || slab_size == 0 || slab_size % be->granularity || size % slab_size || size == 0)
                return -EINVAL;
        gh_pool_view *v = calloc(1, sizeof(*v));
        if (!v)
                return -ENOMEM;
        *v = (gh_pool_view) {.be = be, .slab_size = slab_size, .size = size, .n_slots = (unsigned) (size / slab_size)};
        v->mapped = calloc(v->n_slots, sizeof(bool));
        int r = v->mapped ? be->reserve(be->ctx, size, &v->base) : -ENOMEM;
        if (r < 0) {
                free(v->mapped);
                free(v);
                return r;
        }
        *ret = v;
        return 0;
}

gh_pool_view *gh_pool_view_free(gh_pool_view *v) {
        if (!v)
                return NULL;
        for (unsigned i = 0; i < v->n_slots; i++)
                if (v->mapped[i])
                        gh_pool_view_unmap(v, i);
        v->be->unreserve(v->be->ctx, v->base, v->size);
        free(v->mapped);
        free(v);
        return NULL;
}

int gh_pool_view_map(gh_pool_view *v, unsigned index, int fd, bool writable) {
        uint64_t handle;

        if (index >= v->n_slots || v->mapped[index])
                return index >= v->n_slots ? -EINVAL : -EEXIST;
        int r = v->be->slab_import(v->be->ctx, fd, v->slab_size, &handle);
        if (r < 0)
                return r;
        r = v->be->slab_map(v->be->ctx, v->base + (uint64_t) index * v->slab_size, v->slab_size, handle, writable);
        /* The mapping holds the memory; the import handle is not needed. */
        v->be->slab_release(v->be->ctx, handle, -1);
        if (r < 0)
                return r;
        v->mapped[index] = true;
        return 0;
}

int gh_pool_view_unmap(gh_pool_view *v, unsigned index) {
        if (index >= v->n_slots || !v->mapped[index])
                return -ENOENT;
        v->be->slab_unmap(v->be->ctx, v->base + (uint64_t) index * v->slab_size, v->slab_size);
        v->mapped[index] = false;
        return 0;
}

uint64_t gh_pool_view_base(const gh_pool_view *v) {
        return v->base;
}

/* ---- the CPU backend ---- */

static int cpu_reserve(void *ctx, uint64_t size, uint64_t *ret_base) {
        void *p = mmap(NULL, size, PROT_NONE, MAP_PRIVATE | MAP_ANONYMOUS | MAP_NORESERVE, -1, 0);

        if (p == MAP_FAILED)
                return gh_negerrno();
        *ret_base = (uint64_t) (uintptr_t) p;
        return 0;
}

static void cpu_unreserve(void *ctx, uint64_t base, uint64_t size) {
        munmap((void *) (uintptr_t) base, size);
}

static int cpu_slab_create(void *ctx, uint64_t size, int *ret_fd, uint64_t *ret_handle) {
        _cleanup_close_ int fd = memfd_create("gpuhost-slab", MFD_CLOEXEC | MFD_ALLOW_SEALING);

        if (fd < 0)
                return gh_negerrno();
        if (ftruncate(fd, (off_t) size) < 0)
                return gh_negerrno();
        /* The slab exists to be filled: allocate its pages now, in one go,
         * instead of one page fault at a time. */
        if (fallocate(fd, 0, 0, (off_t) size) < 0 && errno != EOPNOTSUPP)
                return gh_negerrno();
        /* Importers map the whole slab: it must never shrink under them. */
        if (fcntl(fd, F_ADD_SEALS, F_SEAL_SHRINK | F_SEAL_GROW | F_SEAL_SEAL) < 0)
                return gh_negerrno();
        *ret_handle = (uint64_t) fd;
        *ret_fd = TAKE_FD(fd);
        return 0;
}

static void cpu_slab_release(void *ctx, uint64_t handle, int fd) {
        gh_close(fd);
}

static int cpu_slab_map(void *ctx, uint64_t addr, uint64_t size, uint64_t handle, bool writable) {
        void *p = mmap((void *) (uintptr_t) addr, size, PROT_READ | (writable ? PROT_WRITE : 0),
                       MAP_SHARED | MAP_FIXED | MAP_POPULATE, (int) handle, 0);

        return p == MAP_FAILED ? gh_negerrno() : 0;
}

static void cpu_slab_unmap(void *ctx, uint64_t addr, uint64_t size) {
        /* Back to a reserved, inaccessible range; the memfd pages go. */
        (void) !mmap((void *) (uintptr_t) addr, size, PROT_NONE,
                     MAP_PRIVATE | MAP_ANONYMOUS | MAP_FIXED | MAP_NORESERVE, -1, 0);
}

static int cpu_slab_import(void *ctx, int fd, uint64_t size, uint64_t *ret_handle) {
        struct stat st;
        int seals = fcntl(fd, F_GET_SEALS);

        /* Only a sealed memfd of the right size is mapped: a shrinkable
         * file could fault the importer later (SIGBUS). */
        if (fstat(fd, &st) < 0)
                return gh_negerrno();
        if (seals < 0 || !(seals & F_SEAL_SHRINK) || (uint64_t) st.st_size != size)
                return -EBADF;
        *ret_handle = (uint64_t) fd;
        return 0;
}

const gh_pool_backend gh_pool_backend_cpu = {
        .name = "cpu",
        .granularity = 65536, /* a multiple of every common page size */
        .reserve = cpu_reserve,
        .unreserve = cpu_unreserve,
        .slab_create = cpu_slab_create,
        .slab_release = cpu_slab_release,
        .slab_map = cpu_slab_map,
        .slab_unmap = cpu_slab_unmap,
        .slab_import = cpu_slab_import,
};

/* The workspace arena: first-fit allocation over one range of memory.
 *
 * Blocks are kept sorted by offset; an allocation takes the first gap that
 * fits, rounded to GH_ARENA_ALIGN. Everything is deterministic, so a dry
 * run (base NULL: offsets only, handed out as fake addresses that are never
 * dereferenced) reaches exactly the peak the real run will. */
#include <errno.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include "runtime.h"

/* Dry runs hand out base + offset from here: non-NULL, never used. */
#define DRY_BASE ((uintptr_t) 1 << 40)

typedef struct block {
        size_t off, size;
} block;

struct gh_arena {
        char *base;
        size_t size;     /* SIZE_MAX when planning */
        block *blocks;
        size_t n, cap;
        size_t used, peak;
};

int gh_arena_new(void *base, size_t size, gh_arena **ret) {
        gh_arena *a = calloc(1, sizeof(*a));

        if (!a)
                return -ENOMEM;
        a->base = base ? base : (char *) DRY_BASE;
        a->size = base ? size : SIZE_MAX;
        *ret = a;
        return 0;
}

gh_arena *gh_arena_free(gh_arena *a) {
        if (a) {
                free(a->blocks);
                free(a);
        }
        return NULL;
}

static int insert(gh_arena *a, size_t at, size_t off, size_t size) {
        if (a->n == a->cap) {
                size_t cap = a->cap ? a->cap * 2 : 64;
                block *b = realloc(a->blocks, cap * sizeof(*b));
                if (!b)
                        return -ENOMEM;
                a->blocks = b;
                a->cap = cap;
        }
        memmove(a->blocks + at + 1, a->blocks + at, (a->n - at) * sizeof(block));
        a->blocks[at] = (block){off, size};
        a->n++;
        return 0;
}

int gh_arena_alloc(gh_arena *a, size_t bytes, void **ret) {
        size_t size = (bytes + GH_ARENA_ALIGN - 1) & ~(size_t) (GH_ARENA_ALIGN - 1), start = 0, i;
        int r;

        if (bytes == 0 || size < bytes)
                return -EINVAL;
        for (i = 0; i < a->n; i++) {
                if (a->blocks[i].off - start >= size)
                        break;
                start = a->blocks[i].off + a->blocks[i].size;
        }
        if (start > a->size || a->size - start < size)
                return -ENOSPC;
        if ((r = insert(a, i, start, size)) < 0)
                return r;
        a->used += size;
        if (start + size > a->peak)
                a->peak = start + size;
        *ret = a->base + start;
        return 0;
}

void gh_arena_release(gh_arena *a, void *p) {
        size_t off, lo = 0, hi;

        if (!p)
                return;
        off = (size_t) ((char *) p - a->base);
        hi = a->n;
        while (lo < hi) {
                size_t mid = (lo + hi) / 2;
                if (a->blocks[mid].off < off)
                        lo = mid + 1;
                else
                        hi = mid;
        }
        if (lo == a->n || a->blocks[lo].off != off)
                abort(); /* not ours: a bug worth stopping for */
        a->used -= a->blocks[lo].size;
        memmove(a->blocks + lo, a->blocks + lo + 1, (a->n - lo - 1) * sizeof(block));
        a->n--;
}

size_t gh_arena_peak(const gh_arena *a) {
        return a->peak;
}

size_t gh_arena_used(const gh_arena *a) {
        return a->used;
}

/* FNV-1a over the live blocks: equal when the next allocations land alike. */
uint64_t gh_arena_layout(const gh_arena *a) {
        uint64_t h = 0xcbf29ce484222325ull;

        for (size_t i = 0; i < a->n; i++)
                h = gh_hash_mix(gh_hash_mix(h, a->blocks[i].off), a->blocks[i].size);
        return gh_hash_mix(h, (uint64_t) (uintptr_t) a->base);
}

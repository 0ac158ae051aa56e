/* The CPU backend's kernels (backend-cpu-kern.inc) compiled per instruction
 * set: the x86-64 baseline (SSE2; any other architecture gets the same
 * generic vectors) and, on x86-64, AVX2 with FMA through the target
 * attribute (GCC and clang). gh_dcpu_isa_get() picks the best one the CPU runs; tests may
 * force one. Results differ between instruction sets (FMA rounds once),
 * never between thread counts. */
#include <errno.h>
#include <math.h>
#include <stddef.h>
#include <string.h>

#include "backend-cpu-internal.h"

typedef uint16_t gh_v4h __attribute__((vector_size(8)));
typedef uint16_t gh_v8h __attribute__((vector_size(16)));
typedef float gh_v4f __attribute__((vector_size(16)));
typedef int32_t gh_v4i __attribute__((vector_size(16)));
typedef double gh_v4d __attribute__((vector_size(32)));
typedef float gh_v8f __attribute__((vector_size(32)));
typedef int32_t gh_v8i __attribute__((vector_size(32)));

#define FN(name) name##_base
#define TARGET
#define VL 4
#define VF gh_v4f
#define VI gh_v4i
#define VH gh_v4h
#include "backend-cpu-kern.inc"
#undef FN
#undef TARGET
#undef VL
#undef VF
#undef VI
#undef VH

const gh_dcpu_isa gh_dcpu_isa_base = {
        .name = "base",
        .mr = GH_DCPU_MR,
        .nr = 8,
        .mc_max = GH_DCPU_MC_MAX,
        .gemm_tile = gemm_tile_base,
        .attn_block = attn_block_base,
        .act = act_base,
        .gelu_mul = gelu_mul_base,
        .stats = stats_base,
        .norm_apply = norm_apply_base,
        .norm_apply_vec = norm_apply_vec_base,
};

#ifdef __x86_64__
#define FN(name) name##_avx2
#define TARGET __attribute__((target("avx2,fma")))
#define VL 8
#define VF gh_v8f
#define VI gh_v8i
#define VH gh_v8h
#include "backend-cpu-kern.inc"
#undef FN
#undef VL
#undef VF
#undef VI
#undef VH
#undef TARGET

const gh_dcpu_isa gh_dcpu_isa_avx2 = {
        .name = "avx2",
        .mr = GH_DCPU_MR,
        .nr = 16,
        .mc_max = GH_DCPU_MC_MAX,
        .gemm_tile = gemm_tile_avx2,
        .attn_block = attn_block_avx2,
        .act = act_avx2,
        .gelu_mul = gelu_mul_avx2,
        .stats = stats_avx2,
        .norm_apply = norm_apply_avx2,
        .norm_apply_vec = norm_apply_vec_avx2,
};

static bool have_avx2(void) {
        return __builtin_cpu_supports("avx2") && __builtin_cpu_supports("fma");
}
#endif

static const gh_dcpu_isa *forced;

const gh_dcpu_isa *gh_dcpu_isa_get(void) {
        if (forced)
                return forced;
#ifdef __x86_64__
        if (have_avx2())
                return &gh_dcpu_isa_avx2;
#endif
        return &gh_dcpu_isa_base;
}

int gh_dcpu_isa_force(const char *name) {
        if (!name) {
                forced = NULL;
                return 0;
        }
        if (strcmp(name, "base") == 0) {
                forced = &gh_dcpu_isa_base;
                return 0;
        }
#ifdef __x86_64__
        if (strcmp(name, "avx2") == 0) {
                if (!have_avx2())
                        return -ENOTSUP;
                forced = &gh_dcpu_isa_avx2;
                return 0;
        }
#endif
        return -ENOTSUP;
}

static int64_t round_down(int64_t v, int64_t m) {
        return v / m * m;
}

static int64_t round_up(int64_t v, int64_t m) {
        return (v + m - 1) / m * m;
}

/* The largest block of queries (a multiple of mr) that leaves room for
 * 64 keys, then as many keys as fit (a multiple of mr). */
int gh_dcpu_attn_blocks(const gh_dcpu_isa *isa, gh_dcpu_attn *at) {
        const int64_t mr = isa->mr, nr = isa->nr, dp = round_up(at->d, nr);
        int64_t bq = round_down(GH_DCPU_ATTN_BQ_MAX, mr);

        if (at->d < 1)
                return -EINVAL;
        if (bq > round_up(at->tq, mr))
                bq = round_up(at->tq, mr);
        while (bq > 0 && round_up(bq, nr) * (at->d + 64) + bq * dp > GH_DCPU_ATTN_BUF)
                bq -= mr;
        if (bq <= 0)
                return -EOPNOTSUPP;
        int64_t bk = round_down((GH_DCPU_ATTN_BUF - round_up(bq, nr) * at->d - bq * dp) / round_up(bq, nr), mr);
        if (bk > round_down(GH_DCPU_ATTN_BK_MAX, mr))
                bk = round_down(GH_DCPU_ATTN_BK_MAX, mr);
        if (bk > round_up(at->tk, mr))
                bk = round_up(at->tk, mr);
        at->bq = bq;
        at->bk = bk;
        return 0;
}

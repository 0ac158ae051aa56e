/* The CUDA backend (backend.h): the ops as kernels (cuda/kernels.cu, built
 * into a fatbin and embedded) launched on the job's stream through the
 * driver table of gpuhostd/cuda.h. Tensors' |data| are device pointers
 * (CUdeviceptr values).
 *
 * Its state, a gh_dcuda, holds the loaded kernels and a small fixed
 * scratch buffer (device, and pinned host staging of the same size) for
 * the host arrays that ops take (token ids, scale factors, timesteps) and
 * for results that come back (sum). Nothing grows with the tensors. */
#pragma once

#include <stddef.h>

#include "backend.h"
#include "gpuhostd/cuda.h"

#define GH_DCUDA_KERNELS 20
#define GH_DCUDA_SCRATCH_SIZE (256u * 1024u)

typedef struct gh_dcuda {
        const gh_cuda *cu;             /* driver table */
        CUstream stream;               /* the job's stream (NULL: the default one) */
        CUlibrary lib;                 /* the loaded kernels */
        CUkernel k[GH_DCUDA_KERNELS];  /* resolved kernels, by backend-cuda.c's index */
        CUdeviceptr scratch;           /* device buffer for host arrays and results */
        size_t scratch_size;
        float *host;                   /* pinned host staging of scratch_size bytes */
        void *image;                   /* the fatbin, aligned, while lib is loaded */
        /* conv2d and linear on tensor cores: operands rounded to fp16,
         * products summed in fp32 (relative error about 5e-4); false: fp32
         * throughout (the default, within 1e-6 of the CPU backend). */
        bool fp16;
} gh_dcuda;

/* Loads the embedded kernels, resolves them and allocates the scratch
 * buffers, for |stream|. The caller's CUDA context must be current (here
 * and for every op). On failure a one-line reason goes to |err|, and
 * nothing is left to free. */
int gh_dcuda_init(gh_dcuda *s, const gh_cuda *cu, CUstream stream, char *err, size_t err_size);
/* Frees what gh_dcuda_init made; accepts a zeroed or finished state. */
void gh_dcuda_fini(gh_dcuda *s);

extern const gh_dbackend gh_dbackend_cuda; /* its |be| is a gh_dcuda * */

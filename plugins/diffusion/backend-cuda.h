/* The CUDA backend (backend.h): the ops as kernels (cuda/kernels.cu, built
 * into a fatbin and embedded) launched on the job's stream through the
 * driver table of gpuhostd/cuda.h. Tensors' |data| are device pointers
 * (CUdeviceptr values).
 *
 * In the tensor-core mode, convolutions wider than 1x1 go through cuDNN
 * (dnn.h) where it loaded: implicit GEMM on fp16 (or bf16) copies of
 * the activations.
 *
 * The kernels are loaded once per process (the first gh_dcuda_init) and
 * kept until it exits. Its state, a gh_dcuda, holds them and a small fixed
 * scratch buffer (device, and pinned host staging of the same size) for
 * the host arrays that ops take (token ids, scale factors, timesteps) and
 * for results that come back (sum). Nothing grows with the tensors. */
#pragma once

#include <stddef.h>

#include "backend.h"
#include "gpuhostd/cuda.h"

#define GH_DCUDA_KERNELS 70
#define GH_DCUDA_SCRATCH_SIZE (256u * 1024u)
/* The work buffer (gh_dcuda_set_work): cuBLASLt's workspace, then the
 * GEMMs' operands converted to their type (im2col matrices, fp16 copies
 * of activations, and of weights whose type differs), then F32 copies of
 * the linears' biases for cuBLASLt's epilogue. Ops that need more go in
 * pieces. */
#define GH_DCUDA_LT_WORKSPACE (32u << 20)
#define GH_DCUDA_WORK_SIZE (160u << 20)
#define GH_DCUDA_GEMM_CACHE 128 /* cuBLASLt plans kept, one per GEMM shape */
#define GH_DCUDA_GRAPHS 4       /* CUDA graphs kept (a job needs one per UNet shape) */
#define GH_DCUDA_BIAS_AREA (2u << 20) /* F32 copies of biases, at the work buffer's end */
#define GH_DCUDA_BIAS_CACHE 1024

typedef struct gh_dcuda_bias {
        const void *src; /* the weight pool's bias */
        CUdeviceptr dst; /* its F32 copy */
} gh_dcuda_bias;

typedef struct gh_dcuda_graph {
        uint64_t key;
        CUgraphExec exec;
} gh_dcuda_graph;

typedef struct gh_dcuda_gemm gh_dcuda_gemm;
typedef struct gh_dcuda_conv gh_dcuda_conv;
#define GH_DCUDA_CONV_CACHE 64 /* cuDNN plans kept, one per convolution shape */

typedef struct gh_dcuda {
        const gh_cuda *cu;             /* driver table */
        CUstream stream;               /* the job's stream (NULL: the default one) */
        CUkernel k[GH_DCUDA_KERNELS];  /* the process's kernels, by backend-cuda.c's index */
        CUdeviceptr scratch;           /* device buffer for host arrays and results */
        size_t scratch_size;
        float *host;                   /* pinned host staging of scratch_size bytes */
        const struct gh_cublaslt *lt;  /* cuBLASLt, or NULL: GEMMs on the fallback kernels */
        void *lt_handle;               /* its cublasLtHandle_t, and the context it was made in */
        CUcontext lt_ctx;
        char lt_error[160];            /* why lt is NULL */
        bool lt_no_bias;               /* cuBLASLt refused the bias epilogue once: biases apart */
        const struct gh_cudnn *dnn;    /* cuDNN, once gh_dcuda_use_cudnn loaded it */
        void *dnn_handle;              /* its cudnnHandle_t, on |stream|: 3x3 convolutions through cuDNN */
        gh_dcuda_conv *conv;           /* GH_DCUDA_CONV_CACHE planned convolutions */
        uint32_t n_conv, next_conv;
        CUdeviceptr work;              /* the work buffer (0: none yet) */
        size_t work_size;
        bool own_work;                 /* allocated by gh_dcuda_alloc_work */
        gh_dcuda_gemm *gemm;           /* GH_DCUDA_GEMM_CACHE planned GEMMs */
        gh_dcuda_bias bias[GH_DCUDA_BIAS_CACHE];
        uint32_t n_bias;
        size_t bias_used;
        uint32_t n_gemm, next_gemm;
        /* The tensor-core mode: GEMM operands rounded to fp16 (bf16 where
         * the weights are bf16), products summed in fp32 (relative error
         * about 5e-4), and attention on the flash kernel; false: fp32
         * throughout (the default, within 1e-6 of the CPU backend). */
        bool fp16;
        bool no_lt; /* GEMMs on the fallback kernels even with cuBLASLt (tests) */
        /* The last linear's activations as converted for its GEMM, reused
         * by the next linear on the same input (q, k and v of one input);
         * any kernel launch or copy in between forgets it. */
        struct {
                CUdeviceptr src, dst;
                long long count;
                int type;
                bool valid;
        } cast;
        CUevent *marks; /* GH_DBACKEND_MARKS events, made on the first mark() */
        gh_dcuda_graph graphs[GH_DCUDA_GRAPHS];
        uint32_t n_graphs, next_graph;
        bool no_graphs; /* graph_begin says -EOPNOTSUPP (to compare) */
} gh_dcuda;

/* Loads the embedded kernels, resolves them and allocates the scratch
 * buffers, for |stream|. The caller's CUDA context must be current (here
 * and for every op). On failure a one-line reason goes to |err|, and
 * nothing is left to free. */
int gh_dcuda_init(gh_dcuda *s, const gh_cuda *cu, CUstream stream, char *err, size_t err_size);
/* Gives the backend its work buffer: |size| (GH_DCUDA_WORK_SIZE, at least
 * GH_DCUDA_LT_WORKSPACE) bytes of device memory, 256-byte aligned, that
 * stay the caller's. Without one, GEMMs run on the fallback kernels. The
 * backend keeps F32 copies of biases there, by the bias's address: the
 * weights must not change while it is set (calling this again forgets
 * them, and the converted input of the last linear). */
void gh_dcuda_set_work(gh_dcuda *s, CUdeviceptr work, size_t size);
/* Allocates a work buffer of GH_DCUDA_WORK_SIZE bytes itself (tools and
 * tests; jobs take theirs from their workspace). */
int gh_dcuda_alloc_work(gh_dcuda *s, char *err, size_t err_size);
/* Sends the tensor-core mode's convolutions wider than 1x1 through cuDNN
 * from now on (to compare; im2col and cuBLASLt are faster where
 * measured): loads it and makes its handle. -ENOENT where it cannot be
 * loaded, -EOPNOTSUPP where built without its headers; the reason goes to
 * |err|. Call it outside graph recording. */
int gh_dcuda_use_cudnn(gh_dcuda *s, char *err, size_t err_size);
/* Frees what gh_dcuda_init made; accepts a zeroed or finished state. */
void gh_dcuda_fini(gh_dcuda *s);

extern const gh_dbackend gh_dbackend_cuda; /* its |be| is a gh_dcuda * */

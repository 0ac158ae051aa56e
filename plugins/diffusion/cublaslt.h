/* cuBLASLt, loaded at run time for the CUDA backend's GEMMs.
 *
 * The plugins never link cuBLAS: the first CUDA job dlopen()s libcublasLt
 * (by its soname, then from the toolkit's library folder recorded at build
 * time) and resolves the entry points it uses into a gh_cublaslt table,
 * once per process. Without the library, the CUDA backend falls back to
 * its own kernels and says so in its status line.
 *
 * The members are cuBLASLt's names without the "cublasLt" prefix. */
#pragma once

#include <stddef.h>

#include <cublasLt.h>

#define GH_CUBLASLT_FUNCTIONS(X)       \
        X(Create)                      \
        X(Destroy)                     \
        X(MatmulDescCreate)            \
        X(MatmulDescDestroy)           \
        X(MatmulDescSetAttribute)      \
        X(MatrixLayoutCreate)          \
        X(MatrixLayoutDestroy)         \
        X(MatrixLayoutSetAttribute)    \
        X(MatmulPreferenceCreate)      \
        X(MatmulPreferenceDestroy)     \
        X(MatmulPreferenceSetAttribute)\
        X(MatmulAlgoGetHeuristic)      \
        X(Matmul)

typedef struct gh_cublaslt {
        void *dl;
#define GH_CUBLASLT_MEMBER(name) __typeof__(cublasLt##name) *name;
        GH_CUBLASLT_FUNCTIONS(GH_CUBLASLT_MEMBER)
#undef GH_CUBLASLT_MEMBER
} gh_cublaslt;

/* The process's table, loaded on first use; NULL, with the reason in
 * |err|, where the library cannot be loaded. Thread-safe. */
const gh_cublaslt *gh_cublaslt_get(char *err, size_t err_size);

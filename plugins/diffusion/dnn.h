/* cuDNN, loaded at run time for the CUDA backend's 3x3 convolutions.
 *
 * Like cuBLASLt (cublaslt.h), the plugins never link cuDNN: the first
 * CUDA job that needs it dlopen()s libcudnn (by the soname of the version
 * found at build time, then by the path found there) and resolves the
 * entry points below into a gh_cudnn table, once per process. Without the
 * library, convolutions stay on im2col and cuBLASLt, and the backend says
 * so in its status line.
 *
 * The calls are cuDNN's convolution API of handles and descriptors; the
 * members are their names without the "cudnn" prefix. */
#pragma once

#include <stddef.h>

#include <cudnn.h>

#define GH_CUDNN_FUNCTIONS(X)                      \
        X(GetVersion)                              \
        X(GetErrorString)                          \
        X(Create)                                  \
        X(Destroy)                                 \
        X(SetStream)                               \
        X(CreateTensorDescriptor)                  \
        X(SetTensor4dDescriptor)                   \
        X(DestroyTensorDescriptor)                 \
        X(CreateFilterDescriptor)                  \
        X(SetFilter4dDescriptor)                   \
        X(DestroyFilterDescriptor)                 \
        X(CreateConvolutionDescriptor)             \
        X(SetConvolution2dDescriptor)              \
        X(SetConvolutionMathType)                  \
        X(DestroyConvolutionDescriptor)            \
        X(GetConvolutionForwardAlgorithm_v7)       \
        X(GetConvolutionForwardWorkspaceSize)      \
        X(ConvolutionForward)

typedef struct gh_cudnn {
        void *dl;
#define GH_CUDNN_MEMBER(name) __typeof__(cudnn##name) *name;
        GH_CUDNN_FUNCTIONS(GH_CUDNN_MEMBER)
#undef GH_CUDNN_MEMBER
} gh_cudnn;

/* The process's table, loaded on first use; NULL, with the reason in
 * |err|, where the library cannot be loaded or its major version is not
 * the one built against. Thread-safe. */
const gh_cudnn *gh_cudnn_get(char *err, size_t err_size);

/* The CUDA driver API, loaded at run time.
 *
 * gpuhostd never links libcuda: it dlopen()s "libcuda.so.1", looks up
 * cuGetProcAddress_v2 with dlsym() and resolves every other entry point
 * through it, asking for the API as of CUDA 12.0 (GH_CUDA_API_VERSION), into
 * a gh_cuda table of typed function pointers. Without a driver, or with no
 * usable device, loading fails with a reason and the daemon serves the CPU
 * device alone.
 *
 * The members are CUDA's names without the "cu" prefix (cu->MemCreate is
 * cuMemCreate), typed with the PFN_ typedefs of <cudaTypedefs.h> for the
 * version that GH_CUDA_API_VERSION selects, so versioned entry points
 * (cuMemGetInfo_v2, cuDeviceGetUuid_v2, ...) come out right and the
 * header's "#define cuMemGetInfo cuMemGetInfo_v2" macros never touch them.
 *
 * Entry points newer than CUDA 12.0 are optional (GH_CUDA_OPTIONAL_FUNCTIONS):
 * each is asked for with the version that introduced it, and a driver that
 * lacks one still loads, with that member NULL. Green contexts (SM
 * partitions, see worker/slices.h) are the optional set today; they need a
 * 12.5 driver, and headers of 12.5 or newer to be built at all.
 *
 * gh_cuda_errno() is the one place that turns a CUresult into a negative
 * errno and the driver's name for the error.
 *
 * CUDA does not survive fork(): load the driver in the process that uses it,
 * and start workers with fork+exec. */
#pragma once

#include <stddef.h>

#include <cuda.h>
#include <cudaTypedefs.h>

#if !defined(CUDA_VERSION) || CUDA_VERSION < 12000
#error "<cuda.h> must be the CUDA toolkit's, version 12.0 or newer"
#endif

/* The API version asked of cuGetProcAddress for every entry point. The
 * PFN_ types below must be those this version resolves to. */
#define GH_CUDA_API_VERSION 12000

/* X(member, cuda_version_of_the_PFN_type): the entry points gpuhost uses. */
#define GH_CUDA_FUNCTIONS(X)                     \
        X(Init, 2000)                            \
        X(DriverGetVersion, 2020)                \
        X(GetErrorName, 6000)                    \
        X(GetErrorString, 6000)                  \
        X(DeviceGetCount, 2000)                  \
        X(DeviceGet, 2000)                       \
        X(DeviceGetName, 2000)                   \
        X(DeviceGetUuid, 11040)                  \
        X(DeviceGetAttribute, 2000)              \
        X(DeviceTotalMem, 3020)                  \
        X(DeviceGetPCIBusId, 4010)               \
        X(DevicePrimaryCtxRetain, 7000)          \
        X(DevicePrimaryCtxRelease, 11000)        \
        X(CtxSetCurrent, 4000)                   \
        X(CtxGetCurrent, 4000)                   \
        X(MemGetInfo, 3020)                      \
        X(MemGetAllocationGranularity, 10020)    \
        X(MemCreate, 10020)                      \
        X(MemRelease, 10020)                     \
        X(MemAddressReserve, 10020)              \
        X(MemAddressFree, 10020)                 \
        X(MemMap, 10020)                         \
        X(MemUnmap, 10020)                       \
        X(MemSetAccess, 10020)                   \
        X(MemExportToShareableHandle, 10020)     \
        X(MemImportFromShareableHandle, 10020)   \
        X(MemcpyHtoD, 3020)                      \
        X(MemcpyHtoDAsync, 3020)                 \
        X(MemcpyDtoH, 3020)                      \
        X(MemcpyDtoHAsync, 3020)                 \
        X(MemsetD8Async, 3020)                   \
        X(MemAlloc, 3020)                        \
        X(MemFree, 3020)                         \
        X(CtxSynchronize, 2000)                  \
        X(MemHostAlloc, 2020)                    \
        X(MemFreeHost, 2000)                     \
        X(MemHostRegister, 6050)                 \
        X(MemHostUnregister, 4000)               \
        X(StreamCreate, 2000)                    \
        X(StreamDestroy, 4000)                   \
        X(StreamSynchronize, 2000)               \
        X(EventCreate, 2000)                     \
        X(EventRecord, 2000)                     \
        X(EventSynchronize, 2000)                \
        X(EventDestroy, 4000)                    \
        X(EventElapsedTime, 2000)                \
        X(LibraryLoadData, 12000)                \
        X(LibraryUnload, 12000)                  \
        X(LibraryGetKernel, 12000)               \
        X(LaunchKernel, 4000)                    \
        X(StreamBeginCapture, 10010)             \
        X(StreamEndCapture, 10000)               \
        X(GraphInstantiateWithFlags, 11040)      \
        X(GraphLaunch, 10000)                    \
        X(GraphExecDestroy, 10000)               \
        X(GraphDestroy, 10000)

/* X(member, cuda_version): optional entry points, asked of cuGetProcAddress
 * with the version that introduced them, which is also that of their PFN_
 * type. NULL where the driver lacks them. */
#if CUDA_VERSION >= 12050
#define GH_CUDA_HAVE_GREEN_CONTEXTS 1
#define GH_CUDA_OPTIONAL_FUNCTIONS(X)            \
        X(DeviceGetDevResource, 12040)           \
        X(DevSmResourceSplitByCount, 12040)      \
        X(DevResourceGenerateDesc, 12040)        \
        X(GreenCtxCreate, 12040)                 \
        X(GreenCtxDestroy, 12040)                \
        X(CtxFromGreenCtx, 12040)                \
        X(GreenCtxStreamCreate, 12050)
#else
#define GH_CUDA_HAVE_GREEN_CONTEXTS 0
#define GH_CUDA_OPTIONAL_FUNCTIONS(X)
#endif

#define GH_CUDA_MEMBER_(name, version) PFN_cu##name##_v##version name;

typedef struct gh_cuda {
        void *library;      /* the dlopen() handle */
        int driver_version; /* cuDriverGetVersion: 1000 * major + 10 * minor */
        GH_CUDA_FUNCTIONS(GH_CUDA_MEMBER_)
        GH_CUDA_OPTIONAL_FUNCTIONS(GH_CUDA_MEMBER_)
} gh_cuda;

/* Loads |library| (NULL: "libcuda.so.1"; other paths are for tests),
 * resolves the table and calls cuInit(0). Fails with -ENOENT when the
 * library cannot be found, -EOPNOTSUPP when the driver is older than CUDA
 * 12.0 or lacks a required entry point, -ENODEV when there is no device or the
 * library is the toolkit's stub, or the errno of the failing CUresult. On
 * failure a one-line reason goes to |err| (if |err_size| > 0). */
int gh_cuda_load(const char *library, gh_cuda **ret, char *err, size_t err_size);

/* Unloads the table. Callers release their contexts first. The driver
 * stays mapped (RTLD_NODELETE): its threads outlive cuInit. Accepts NULL. */
gh_cuda *gh_cuda_free(gh_cuda *cu);
static inline void gh_cuda_freep(gh_cuda **cu) {
        gh_cuda_free(*cu);
}

/* Maps a CUresult to 0 (CUDA_SUCCESS) or a negative errno: OUT_OF_MEMORY
 * -ENOMEM, INVALID_VALUE -EINVAL, NOT_SUPPORTED -EOPNOTSUPP, NO_DEVICE
 * -ENODEV, NOT_INITIALIZED and DEINITIALIZED -ENXIO, ... and -EIO for any
 * other. If |ret_name| is not NULL it gets the driver's name for |r|
 * ("CUDA_ERROR_OUT_OF_MEMORY"), or "CUDA_ERROR_<number>" when the driver
 * has none (or |cu| is NULL); that string stays valid until the next call
 * in the same thread. */
int gh_cuda_errno(const gh_cuda *cu, CUresult r, const char **ret_name);

/* Loading the CUDA driver API with dlopen and cuGetProcAddress, and mapping
 * its error codes to errno values. See cuda.h. */
#include <dlfcn.h>
#include <errno.h>
#include <stdarg.h>
#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "../common/util.h"
#include "cuda.h"

#define GH_CUDA_LIBRARY "libcuda.so.1"

typedef struct entry_point {
        const char *symbol;
        size_t offset;
        int version;   /* asked of cuGetProcAddress */
        bool optional; /* a driver without it still loads; the member stays NULL */
} entry_point;

#define GH_CUDA_ENTRY_(name, version) {"cu" #name, offsetof(gh_cuda, name), GH_CUDA_API_VERSION, false},
#define GH_CUDA_OPTIONAL_ENTRY_(name, version) {"cu" #name, offsetof(gh_cuda, name), version, true},
static const entry_point entry_points[] = {
        GH_CUDA_FUNCTIONS(GH_CUDA_ENTRY_) GH_CUDA_OPTIONAL_FUNCTIONS(GH_CUDA_OPTIONAL_ENTRY_)};


/* -ENOENT when there is no such library; -ELIBBAD when a file named by a
 * path exists but does not load (wrong architecture, missing dependency). */
static int open_library(const char *library, void **ret, char *err, size_t err_size) {
        void *handle = dlopen(library, RTLD_NOW | RTLD_LOCAL | RTLD_NODELETE);

        if (!handle) {
                int r = strchr(library, '/') && access(library, F_OK) == 0 ? -ELIBBAD : -ENOENT;
                const char *why = dlerror();
                gh_set_error(err, err_size, "cannot load the CUDA driver: %s", why ? why : library);
                return r;
        }
        *ret = handle;
        return 0;
}

/* The stub only says so: every call answers CUDA_ERROR_STUB_LIBRARY. */
static int stub_error(const char *library, char *err, size_t err_size) {
        gh_set_error(err, err_size, "%s is the CUDA toolkit's stub library, not a driver: no GPU", library);
        return -ENODEV;
}

/* Resolves one entry point into the table. A missing optional one is not
 * an error (the member stays NULL); the stub library is. */
static int resolve_entry(gh_cuda *cu, PFN_cuGetProcAddress_v12000 get_proc_address, const entry_point *e,
                         const char *library, char *err, size_t err_size) {
        CUdriverProcAddressQueryResult status = CU_GET_PROC_ADDRESS_SYMBOL_NOT_FOUND;
        void *fn = NULL;
        CUresult r = get_proc_address(e->symbol, &fn, e->version, CU_GET_PROC_ADDRESS_DEFAULT, &status);

        if (r == CUDA_ERROR_STUB_LIBRARY)
                return stub_error(library, err, err_size);
        if (r != CUDA_SUCCESS || status != CU_GET_PROC_ADDRESS_SUCCESS || !fn) {
                if (e->optional)
                        return 0;
                gh_set_error(err, err_size, "%s: cannot resolve %s for CUDA %d.%d (error %d, status %d)", library,
                             e->symbol, e->version / 1000, e->version % 1000 / 10, (int) r, (int) status);
                return -EOPNOTSUPP;
        }
        memcpy((char *) cu + e->offset, &fn, sizeof(fn));
        return 0;
}

static int resolve_table(gh_cuda *cu, const char *library, char *err, size_t err_size) {
        PFN_cuGetProcAddress_v12000 get_proc_address =
                (PFN_cuGetProcAddress_v12000) dlsym(cu->library, "cuGetProcAddress_v2");

        if (!get_proc_address) {
                gh_set_error(err, err_size, "%s has no cuGetProcAddress_v2: the driver is older than CUDA 12.0", library);
                return -EOPNOTSUPP;
        }
        for (size_t i = 0; i < ELEMENTSOF(entry_points); i++) {
                int r = resolve_entry(cu, get_proc_address, &entry_points[i], library, err, err_size);
                if (r < 0)
                        return r;
        }
        return 0;
}

static int init_driver(gh_cuda *cu, const char *library, char *err, size_t err_size) {
        const char *call = "cuInit", *name;
        CUresult r = cu->Init(0);

        if (r == CUDA_ERROR_STUB_LIBRARY)
                return stub_error(library, err, err_size);
        if (r == CUDA_SUCCESS) {
                call = "cuDriverGetVersion";
                r = cu->DriverGetVersion(&cu->driver_version);
        }
        if (r == CUDA_SUCCESS)
                return 0;
        int e = gh_cuda_errno(cu, r, &name);
        gh_set_error(err, err_size, "%s: %s: %s", library, call, name);
        return e;
}

int gh_cuda_load(const char *library, gh_cuda **ret, char *err, size_t err_size) {
        _cleanup_(gh_cuda_freep) gh_cuda *cu = calloc(1, sizeof(*cu));
        int r;

        if (!cu)
                return -ENOMEM;
        if (!library)
                library = GH_CUDA_LIBRARY;
        r = open_library(library, &cu->library, err, err_size);
        if (r >= 0)
                r = resolve_table(cu, library, err, err_size);
        if (r >= 0)
                r = init_driver(cu, library, err, err_size);
        if (r < 0)
                return r;
        *ret = TAKE_PTR(cu);
        return 0;
}

gh_cuda *gh_cuda_free(gh_cuda *cu) {
        if (!cu)
                return NULL;
        if (cu->library)
                dlclose(cu->library);
        free(cu);
        return NULL;
}

static int errno_of(CUresult r) {
        switch (r) {
        case CUDA_SUCCESS:
                return 0;
        case CUDA_ERROR_INVALID_VALUE:
        case CUDA_ERROR_INVALID_CONTEXT:
        case CUDA_ERROR_INVALID_HANDLE:
        case CUDA_ERROR_NOT_MAPPED:
        case CUDA_ERROR_NOT_MAPPED_AS_ARRAY:
        case CUDA_ERROR_NOT_MAPPED_AS_POINTER:
        case CUDA_ERROR_ILLEGAL_STATE:
#if CUDA_VERSION >= 12040
        case CUDA_ERROR_INVALID_RESOURCE_TYPE:          /* green contexts */
        case CUDA_ERROR_INVALID_RESOURCE_CONFIGURATION:
#endif
                return -EINVAL;
        case CUDA_ERROR_OUT_OF_MEMORY:
                return -ENOMEM;
        case CUDA_ERROR_NOT_INITIALIZED:
        case CUDA_ERROR_DEINITIALIZED:
        case CUDA_ERROR_CONTEXT_IS_DESTROYED:
                return -ENXIO;
        case CUDA_ERROR_NO_DEVICE:
        case CUDA_ERROR_INVALID_DEVICE:
        case CUDA_ERROR_STUB_LIBRARY:
                return -ENODEV;
        case CUDA_ERROR_DEVICE_UNAVAILABLE:
        case CUDA_ERROR_ALREADY_ACQUIRED:
        case CUDA_ERROR_CONTEXT_ALREADY_IN_USE:
        case CUDA_ERROR_PRIMARY_CONTEXT_ACTIVE:
                return -EBUSY;
        case CUDA_ERROR_NOT_SUPPORTED:
        case CUDA_ERROR_COMPAT_NOT_SUPPORTED_ON_DEVICE:
        case CUDA_ERROR_PEER_ACCESS_UNSUPPORTED:
        case CUDA_ERROR_UNSUPPORTED_LIMIT:
                return -EOPNOTSUPP;
        case CUDA_ERROR_NOT_PERMITTED:
        case CUDA_ERROR_DEVICE_NOT_LICENSED:
                return -EPERM;
        case CUDA_ERROR_NOT_FOUND:
        case CUDA_ERROR_FILE_NOT_FOUND:
        case CUDA_ERROR_HOST_MEMORY_NOT_REGISTERED:
        case CUDA_ERROR_PEER_ACCESS_NOT_ENABLED:
                return -ENOENT;
        case CUDA_ERROR_ALREADY_MAPPED:
        case CUDA_ERROR_HOST_MEMORY_ALREADY_REGISTERED:
        case CUDA_ERROR_PEER_ACCESS_ALREADY_ENABLED:
        case CUDA_ERROR_CONTEXT_ALREADY_CURRENT:
                return -EEXIST;
        case CUDA_ERROR_NOT_READY:
        case CUDA_ERROR_SYSTEM_NOT_READY:
                return -EAGAIN;
        case CUDA_ERROR_TIMEOUT:
        case CUDA_ERROR_LAUNCH_TIMEOUT:
                return -ETIMEDOUT;
        case CUDA_ERROR_LAUNCH_OUT_OF_RESOURCES:
        case CUDA_ERROR_TOO_MANY_PEERS:
                return -ENOSPC;
        case CUDA_ERROR_ILLEGAL_ADDRESS:
        case CUDA_ERROR_MISALIGNED_ADDRESS:
        case CUDA_ERROR_INVALID_ADDRESS_SPACE:
                return -EFAULT;
        case CUDA_ERROR_SYSTEM_DRIVER_MISMATCH:
        case CUDA_ERROR_CALL_REQUIRES_NEWER_DRIVER:
        case CUDA_ERROR_SHARED_OBJECT_SYMBOL_NOT_FOUND:
        case CUDA_ERROR_SHARED_OBJECT_INIT_FAILED:
                return -ELIBBAD;
        case CUDA_ERROR_INVALID_IMAGE:
        case CUDA_ERROR_NO_BINARY_FOR_GPU:
        case CUDA_ERROR_INVALID_PTX:
        case CUDA_ERROR_UNSUPPORTED_PTX_VERSION:
        case CUDA_ERROR_INVALID_SOURCE:
                return -ENOEXEC;
        default: /* ECC, launch failures, MPS, OPERATING_SYSTEM, UNKNOWN, ... */
                return -EIO;
        }
}

int gh_cuda_errno(const gh_cuda *cu, CUresult r, const char **ret_name) {
        static __thread char fallback[32];
        const char *name = NULL;

        if (ret_name) {
                if (!cu || !cu->GetErrorName || cu->GetErrorName(r, &name) != CUDA_SUCCESS || !name) {
                        if (r == CUDA_SUCCESS)
                                snprintf(fallback, sizeof(fallback), "CUDA_SUCCESS");
                        else
                                snprintf(fallback, sizeof(fallback), "CUDA_ERROR_%d", (int) r);
                        name = fallback;
                }
                *ret_name = name;
        }
        return errno_of(r);
}

/* The pool backend of a CUDA device: slabs are VMM allocations
 * (cuMemCreate, pinned device memory, exportable as POSIX fds) mapped into
 * a range reserved with cuMemAddressReserve. Every call runs with the
 * device's primary context current. Importers map slabs read-only when the
 * driver allows it, read-write otherwise. */
#pragma once

#include "cuda.h"
#include "pool.h"

typedef struct gh_pool_cuda {
        gh_pool_backend backend; /* pass &pc->backend to gh_pool_new() */
        const gh_cuda *cu;
        CUdevice device;
        CUcontext context;       /* the device's primary context, retained */
        int ordinal;
        bool read_only_ok;       /* the driver accepted a read-only mapping */
} gh_pool_cuda;

/* Retains the primary context of device |ordinal| and fills in the backend
 * (granularity from cuMemGetAllocationGranularity). */
int gh_pool_cuda_init(gh_pool_cuda *pc, const gh_cuda *cu, int ordinal);
void gh_pool_cuda_done(gh_pool_cuda *pc);

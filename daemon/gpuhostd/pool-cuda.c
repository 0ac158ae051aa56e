/* CUDA VMM backend of the weight pool. See pool-cuda.h. */
#include <fcntl.h>
#include <string.h>
#include <unistd.h>

#include "../common/util.h"
#include "pool-cuda.h"

static int cuda_enter(gh_pool_cuda *pc) {
        return gh_cuda_errno(pc->cu, pc->cu->CtxSetCurrent(pc->context), NULL);
}

static int cuda_reserve(void *ctx, uint64_t size, uint64_t *ret_base) {
        gh_pool_cuda *pc = ctx;
        CUdeviceptr p;
        int r = cuda_enter(pc);

        if (r < 0)
                return r;
        r = gh_cuda_errno(pc->cu, pc->cu->MemAddressReserve(&p, size, pc->backend.granularity, 0, 0), NULL);
        if (r < 0)
                return r;
        *ret_base = (uint64_t) p;
        return 0;
}

static void cuda_unreserve(void *ctx, uint64_t base, uint64_t size) {
        gh_pool_cuda *pc = ctx;

        if (cuda_enter(pc) >= 0)
                pc->cu->MemAddressFree((CUdeviceptr) base, size);
}

static CUmemAllocationProp allocation_prop(const gh_pool_cuda *pc) {
        return (CUmemAllocationProp) {
                .type = CU_MEM_ALLOCATION_TYPE_PINNED,
                .requestedHandleTypes = CU_MEM_HANDLE_TYPE_POSIX_FILE_DESCRIPTOR,
                .location = {.type = CU_MEM_LOCATION_TYPE_DEVICE, .id = pc->ordinal},
        };
}

static int cuda_slab_create(void *ctx, uint64_t size, int *ret_fd, uint64_t *ret_handle) {
        gh_pool_cuda *pc = ctx;
        CUmemAllocationProp prop = allocation_prop(pc);
        CUmemGenericAllocationHandle h;
        int fd = -1;
        int r = cuda_enter(pc);

        if (r < 0)
                return r;
        r = gh_cuda_errno(pc->cu, pc->cu->MemCreate(&h, size, &prop, 0), NULL);
        if (r < 0)
                return r;
        r = gh_cuda_errno(pc->cu, pc->cu->MemExportToShareableHandle(&fd, h, CU_MEM_HANDLE_TYPE_POSIX_FILE_DESCRIPTOR, 0), NULL);
        if (r >= 0 && fcntl(fd, F_SETFD, FD_CLOEXEC) < 0)
                r = gh_negerrno();
        if (r < 0) {
                gh_close(fd);
                pc->cu->MemRelease(h);
                return r;
        }
        *ret_fd = fd;
        *ret_handle = (uint64_t) h;
        return 0;
}

static void cuda_slab_release(void *ctx, uint64_t handle, int fd) {
        gh_pool_cuda *pc = ctx;

        if (cuda_enter(pc) >= 0)
                pc->cu->MemRelease((CUmemGenericAllocationHandle) handle);
        gh_close(fd);
}

static int cuda_slab_map(void *ctx, uint64_t addr, uint64_t size, uint64_t handle, bool writable) {
        gh_pool_cuda *pc = ctx;
        CUmemAccessDesc access = {
                .location = {.type = CU_MEM_LOCATION_TYPE_DEVICE, .id = pc->ordinal},
                .flags = writable ? CU_MEM_ACCESS_FLAGS_PROT_READWRITE : CU_MEM_ACCESS_FLAGS_PROT_READ,
        };
        int r = cuda_enter(pc);

        if (r < 0)
                return r;
        r = gh_cuda_errno(pc->cu, pc->cu->MemMap((CUdeviceptr) addr, size, 0, (CUmemGenericAllocationHandle) handle, 0), NULL);
        if (r < 0)
                return r;
        r = gh_cuda_errno(pc->cu, pc->cu->MemSetAccess((CUdeviceptr) addr, size, &access, 1), NULL);
        if (r < 0 && !writable) {
                /* Not every driver maps device memory read-only. */
                access.flags = CU_MEM_ACCESS_FLAGS_PROT_READWRITE;
                r = gh_cuda_errno(pc->cu, pc->cu->MemSetAccess((CUdeviceptr) addr, size, &access, 1), NULL);
        } else if (r >= 0 && !writable)
                pc->read_only_ok = true;
        if (r < 0)
                pc->cu->MemUnmap((CUdeviceptr) addr, size);
        return r;
}

static void cuda_slab_unmap(void *ctx, uint64_t addr, uint64_t size) {
        gh_pool_cuda *pc = ctx;

        if (cuda_enter(pc) >= 0)
                pc->cu->MemUnmap((CUdeviceptr) addr, size);
}

static int cuda_slab_import(void *ctx, int fd, uint64_t size, uint64_t *ret_handle) {
        gh_pool_cuda *pc = ctx;
        CUmemGenericAllocationHandle h;
        int r = cuda_enter(pc);

        if (r < 0)
                return r;
        r = gh_cuda_errno(pc->cu, pc->cu->MemImportFromShareableHandle(&h, (void *) (uintptr_t) fd,
                                                                        CU_MEM_HANDLE_TYPE_POSIX_FILE_DESCRIPTOR), NULL);
        if (r < 0)
                return r;
        *ret_handle = (uint64_t) h;
        return 0;
}

int gh_pool_cuda_init(gh_pool_cuda *pc, const gh_cuda *cu, int ordinal) {
        CUmemAllocationProp prop;
        size_t granularity;
        int r;

        *pc = (gh_pool_cuda) {.cu = cu, .ordinal = ordinal};
        r = gh_cuda_errno(cu, cu->DeviceGet(&pc->device, ordinal), NULL);
        if (r < 0)
                return r;
        r = gh_cuda_errno(cu, cu->DevicePrimaryCtxRetain(&pc->context, pc->device), NULL);
        if (r < 0)
                return r;
        prop = allocation_prop(pc);
        r = gh_cuda_errno(cu, cu->MemGetAllocationGranularity(&granularity, &prop, CU_MEM_ALLOC_GRANULARITY_MINIMUM), NULL);
        if (r < 0) {
                cu->DevicePrimaryCtxRelease(pc->device);
                return r;
        }
        pc->backend = (gh_pool_backend) {
                .name = "cuda",
                .ctx = pc,
                .granularity = granularity,
                .reserve = cuda_reserve,
                .unreserve = cuda_unreserve,
                .slab_create = cuda_slab_create,
                .slab_release = cuda_slab_release,
                .slab_map = cuda_slab_map,
                .slab_unmap = cuda_slab_unmap,
                .slab_import = cuda_slab_import,
        };
        return 0;
}

void gh_pool_cuda_done(gh_pool_cuda *pc) {
        if (pc->context)
                pc->cu->DevicePrimaryCtxRelease(pc->device);
        pc->context = NULL;
}

/* GPU test (ctest label "gpu"): the weight pool on a CUDA device across two
 * processes. The parent fills allocations (one spanning slabs) through the
 * pool, passes the slab fds over a socket to a child it fork+execs (CUDA
 * does not survive a bare fork), which imports and maps them read-only at
 * the same offsets and reads every byte back. Then the parent releases
 * everything and checks with cuMemGetInfo that the memory came back, within
 * one slab. Exits 77 (skip) without a driver or GPU. */
#include <errno.h>
#include <fcntl.h>
#include <inttypes.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

#include "common/util.h"
#include "gpuhostd/cuda.h"
#include "fdpass.h"
#include "gpuhostd/pool-cuda.h"

#define SLAB (UINT64_C(64) << 20)
#define CAPACITY (UINT64_C(16) * SLAB)
#define N_ALLOCS 3
#define MAX_SLABS 16

static const uint64_t sizes[N_ALLOCS] = {SLAB / 2 + 12345, 2 * SLAB + SLAB / 3, 4096};

static int fail(const char *what, int r) {
        fprintf(stderr, "FAIL: %s: %s\n", what, strerror(-r));
        return 1;
}

static void fill(unsigned char *buf, uint64_t n, uint64_t seed) {
        for (uint64_t i = 0; i < n; i++)
                buf[i] = (unsigned char) ((i * 2654435761u + seed) >> 7);
}

static double now_ms(void) {
        return (double) gh_now_usec(CLOCK_MONOTONIC) / 1e3;
}

/* The message from parent to child: offsets and sizes, then slab indexes
 * with their fds as SCM_RIGHTS. */
typedef struct plan {
        uint64_t offset[N_ALLOCS];
        unsigned n_slabs;
        unsigned slab_index[MAX_SLABS];
} plan;

static int send_plan(int sock, const plan *p, const int *fds) {
        return gh_test_send_fds(sock, p, sizeof(*p), fds, p->n_slabs);
}

static int recv_plan(int sock, plan *p, int *fds) {
        int n = gh_test_recv_fds(sock, p, sizeof(*p), fds, MAX_SLABS);

        return n < 0 ? n : (unsigned) n == p->n_slabs ? 0 : -EBADMSG;
}

static int child(int sock) {
        char err[256];
        gh_cuda *cu = NULL;
        gh_pool_cuda pc;
        gh_pool_view *v = NULL;
        plan p;
        int fds[MAX_SLABS];
        int r;

        if ((r = gh_cuda_load(NULL, &cu, err, sizeof(err))) < 0)
                return fail(err, r);
        if ((r = gh_pool_cuda_init(&pc, cu, 0)) < 0)
                return fail("child: init", r);
        if ((r = recv_plan(sock, &p, fds)) < 0)
                return fail("child: receive", r);
        double t0 = now_ms();
        if ((r = gh_pool_view_new(&pc.backend, SLAB, CAPACITY, &v)) < 0)
                return fail("child: view", r);
        for (unsigned i = 0; i < p.n_slabs; i++)
                if ((r = gh_pool_view_map(v, p.slab_index[i], fds[i], false)) < 0)
                        return fail("child: map", r);
        double attach_ms = now_ms() - t0;
        for (unsigned i = 0; i < p.n_slabs; i++)
                close(fds[i]);
        for (int a = 0; a < N_ALLOCS; a++) {
                unsigned char *want = malloc(sizes[a]), *got = malloc(sizes[a]);
                fill(want, sizes[a], (uint64_t) a);
                r = gh_cuda_errno(cu, cu->MemcpyDtoH(got, (CUdeviceptr) (gh_pool_view_base(v) + p.offset[a]), sizes[a]), NULL);
                if (r < 0)
                        return fail("child: DtoH", r);
                if (memcmp(want, got, sizes[a]) != 0) {
                        fprintf(stderr, "FAIL: child: allocation %d differs\n", a);
                        return 1;
                }
                free(want);
                free(got);
        }
        printf("child: attached %u slabs (%" PRIu64 " MiB) in %.3f ms, mapped %s; all %d allocations read back bit-exactly\n",
               p.n_slabs, p.n_slabs * SLAB >> 20, attach_ms, pc.read_only_ok ? "read-only" : "read-write (driver refused read-only)",
               N_ALLOCS);
        gh_pool_view_free(v);
        gh_pool_cuda_done(&pc);
        gh_cuda_free(cu);
        return 0;
}

static int mem_free(gh_cuda *cu, size_t *ret) {
        size_t total;

        return gh_cuda_errno(cu, cu->MemGetInfo(ret, &total), NULL);
}

int main(int argc, char **argv) {
        char err[256];
        gh_cuda *cu = NULL;
        gh_pool_cuda pc;
        gh_pool *pool = NULL;
        plan p = {0};
        int fds[MAX_SLABS], sp[2];
        size_t free0, free1, free2;
        int r;

        if (argc == 3 && strcmp(argv[1], "--child") == 0)
                return child(atoi(argv[2]));
        r = gh_cuda_load(NULL, &cu, err, sizeof(err));
        if (r == -ENOENT || r == -ENODEV) {
                printf("SKIP: %s\n", err);
                return 77;
        }
        if (r < 0)
                return fail(err, r);
        if ((r = gh_pool_cuda_init(&pc, cu, 0)) < 0)
                return fail("init", r);
        printf("granularity %" PRIu64 " KiB, slab %" PRIu64 " MiB\n", pc.backend.granularity >> 10, SLAB >> 20);
        if ((r = gh_pool_new(&pc.backend, SLAB, CAPACITY, &pool)) < 0)
                return fail("pool", r);
        if ((r = mem_free(cu, &free0)) < 0)
                return fail("MemGetInfo", r);
        for (int a = 0; a < N_ALLOCS; a++) {
                unsigned char *buf = malloc(sizes[a]);
                if ((r = gh_pool_alloc(pool, sizes[a], 0, &p.offset[a])) < 0)
                        return fail("alloc", r);
                fill(buf, sizes[a], (uint64_t) a);
                r = gh_cuda_errno(cu, cu->MemcpyHtoD((CUdeviceptr) (gh_pool_base(pool) + p.offset[a]), buf, sizes[a]), NULL);
                if (r < 0)
                        return fail("HtoD", r);
                free(buf);
        }
        gh_pool_stats st;
        gh_pool_get_stats(pool, &st);
        if ((r = mem_free(cu, &free1)) < 0)
                return fail("MemGetInfo", r);
        printf("pool: %u slabs, %" PRIu64 " MiB reserved, %" PRIu64 " MiB used; device free went %zu -> %zu MiB\n",
               st.slabs, st.reserved >> 20, st.used >> 20, free0 >> 20, free1 >> 20);
        if (free0 - free1 < st.reserved) {
                fprintf(stderr, "FAIL: the device did not lose the slabs' memory\n");
                return 1;
        }
        for (unsigned i = 0; i < CAPACITY / SLAB; i++)
                if (gh_pool_slab_fd(pool, i) >= 0) {
                        p.slab_index[p.n_slabs] = i;
                        fds[p.n_slabs++] = gh_pool_slab_fd(pool, i);
                }
        if (socketpair(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0, sp) < 0)
                return fail("socketpair", -errno);
        pid_t pid = fork();
        if (pid == 0) {
                char num[16];
                int fd = fcntl(sp[1], F_DUPFD, 3); /* without CLOEXEC: it survives exec */
                snprintf(num, sizeof(num), "%d", fd);
                execl("/proc/self/exe", argv[0], "--child", num, (char *) NULL);
                _exit(127);
        }
        close(sp[1]);
        if ((r = send_plan(sp[0], &p, fds)) < 0)
                return fail("send", r);
        int status;
        waitpid(pid, &status, 0);
        if (!WIFEXITED(status) || WEXITSTATUS(status) != 0) {
                fprintf(stderr, "FAIL: child failed (status %d)\n", status);
                return 1;
        }
        for (int a = 0; a < N_ALLOCS; a++)
                if ((r = gh_pool_release(pool, p.offset[a])) < 0)
                        return fail("release", r);
        gh_pool_get_stats(pool, &st);
        if ((r = mem_free(cu, &free2)) < 0)
                return fail("MemGetInfo", r);
        printf("after release: %u slabs; device free %zu MiB (started at %zu MiB)\n", st.slabs, free2 >> 20, free0 >> 20);
        if (st.slabs != 0 || free2 + SLAB < free0) {
                fprintf(stderr, "FAIL: memory did not come back within one slab\n");
                return 1;
        }
        gh_pool_free(pool);
        gh_pool_cuda_done(&pc);
        gh_cuda_free(cu);
        printf("PASS\n");
        return 0;
}

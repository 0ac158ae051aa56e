/* Unit tests for the weight pool (daemon/gpuhostd/pool.c) on the CPU
 * backend: allocation and accounting, allocations spanning slabs, slabs
 * released when empty (the memory really returns), a randomised check
 * against a simple model, and import into another process through fds
 * passed over a socket, mapped read-only. */
#include <stdarg.h>
#include <stddef.h>
#include <setjmp.h>
#include <cmocka.h>
#include <fcntl.h>
#include <signal.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/socket.h>
#include <sys/wait.h>

#include "common/util.h"
#include "fdpass.h"
#include "gpuhostd/pool.h"

#define SLAB (256 * 1024)

static gh_pool *pool_new(unsigned slabs) {
        gh_pool *p = NULL;

        assert_int_equal(gh_pool_new(&gh_pool_backend_cpu, SLAB, (uint64_t) slabs * SLAB, &p), 0);
        return p;
}

static void test_bad_arguments(void **state) {
        gh_pool *p = NULL;

        assert_int_equal(gh_pool_new(&gh_pool_backend_cpu, 1000, 10 * SLAB, &p), -EINVAL); /* not granular */
        assert_int_equal(gh_pool_new(&gh_pool_backend_cpu, SLAB, SLAB - 1, &p), -EINVAL);  /* no whole slab */
        p = pool_new(2);
        uint64_t off;
        assert_int_equal(gh_pool_alloc(p, 0, 0, &off), -EINVAL);
        assert_int_equal(gh_pool_alloc(p, 100, 300, &off), -EINVAL); /* not a power of two */
        assert_int_equal(gh_pool_alloc(p, 3 * SLAB, 0, &off), -ENOSPC);
        assert_int_equal(gh_pool_release(p, 12345), -ENOENT);
        gh_pool_free(p);
}

static void test_accounting(void **state) {
        gh_pool *p = pool_new(4);
        gh_pool_stats st;
        uint64_t a, b;

        gh_pool_get_stats(p, &st);
        assert_int_equal(st.capacity, 4 * SLAB);
        assert_int_equal(st.reserved, 0);
        assert_int_equal(st.slabs, 0);
        assert_int_equal(gh_pool_alloc(p, 1000, 0, &a), 0);
        assert_int_equal(a % GH_POOL_MIN_ALIGN, 0);
        assert_int_equal(gh_pool_alloc(p, 5000, 4096, &b), 0);
        assert_int_equal(b % 4096, 0);
        assert_true(b >= a + 1000);
        gh_pool_get_stats(p, &st);
        assert_int_equal(st.slabs, 1);
        assert_int_equal(st.reserved, SLAB);
        assert_int_equal(st.used, 1024 + 5120); /* rounded to 256 */
        assert_int_equal(st.free, SLAB - st.used);
        assert_int_equal(st.allocations, 2);
        memset(gh_pool_ptr(p, a), 0xab, 1000);
        memset(gh_pool_ptr(p, b), 0xcd, 5000);
        assert_int_equal(gh_pool_release(p, a), 0);
        assert_int_equal(gh_pool_release(p, a), -ENOENT);
        gh_pool_get_stats(p, &st);
        assert_int_equal(st.slabs, 1); /* b still lives there */
        assert_int_equal(gh_pool_release(p, b), 0);
        gh_pool_get_stats(p, &st);
        assert_int_equal(st.slabs, 0);
        assert_int_equal(st.reserved, 0);
        assert_int_equal(st.used, 0);
        assert_int_equal(st.largest_free, 4 * SLAB);
        gh_pool_free(p);
}

static void test_spanning_and_fragmentation(void **state) {
        gh_pool *p = pool_new(4);
        gh_pool_stats st;
        uint64_t big, small[4];

        /* 2.5 slabs: spans three contiguous slabs, all usable memory. */
        assert_int_equal(gh_pool_alloc(p, 2 * SLAB + SLAB / 2, 0, &big), 0);
        unsigned char *ptr = gh_pool_ptr(p, big);
        for (size_t i = 0; i < 2 * SLAB + SLAB / 2; i++)
                ptr[i] = (unsigned char) (i * 7);
        for (size_t i = 0; i < 2 * SLAB + SLAB / 2; i += 4093)
                assert_int_equal(ptr[i], (unsigned char) (i * 7));
        unsigned first, count;
        assert_int_equal(gh_pool_slabs_for(p, big, 2 * SLAB + SLAB / 2, &first, &count), 3);
        assert_int_equal(first, 0);
        assert_int_equal(count, 3);
        gh_pool_get_stats(p, &st);
        assert_int_equal(st.slabs, 3);
        assert_int_equal(st.largest_free, SLAB + SLAB / 2);
        /* Another 2 slabs do not fit in what is left. */
        uint64_t x;
        assert_int_equal(gh_pool_alloc(p, 2 * SLAB, 0, &x), -ENOSPC);
        for (int i = 0; i < 4; i++)
                assert_int_equal(gh_pool_alloc(p, SLAB / 4, 0, &small[i]), 0);
        assert_int_equal(gh_pool_release(p, big), 0);
        gh_pool_get_stats(p, &st);
        /* The small ones sit after the big one: its first two slabs are gone. */
        assert_int_equal(st.slabs, 2);
        for (int i = 0; i < 4; i++)
                assert_int_equal(gh_pool_release(p, small[i]), 0);
        gh_pool_get_stats(p, &st);
        assert_int_equal(st.slabs, 0);
        assert_int_equal(st.largest_free, 4 * SLAB);
        gh_pool_free(p);
}

/* Random allocations and frees, checked against a byte map of the pool:
 * no two live allocations overlap, the accounting adds up, the data of
 * every live allocation stays intact, and everything returns at the end. */
static void test_random_against_model(void **state) {
        enum { SLABS = 8, LIVE = 64, ROUNDS = 4000 };
        gh_pool *p = pool_new(SLABS);
        uint64_t off[LIVE], size[LIVE];
        bool live[LIVE] = {0};
        unsigned char *owner = calloc(SLABS * SLAB, 1);
        unsigned seed = 12345;
        uint64_t used = 0;

        for (int round = 0; round < ROUNDS; round++) {
                int i = rand_r(&seed) % LIVE;
                if (live[i]) {
                        unsigned char *ptr = gh_pool_ptr(p, off[i]);
                        for (uint64_t k = 0; k < size[i]; k += 509)
                                assert_int_equal(ptr[k], (unsigned char) (i + 1));
                        memset(owner + off[i], 0, size[i]);
                        assert_int_equal(gh_pool_release(p, off[i]), 0);
                        live[i] = false;
                        used -= (size[i] + 255) & ~UINT64_C(255);
                        continue;
                }
                size[i] = 1 + (uint64_t) rand_r(&seed) % (SLAB + SLAB / 2);
                uint64_t align = UINT64_C(1) << (8 + rand_r(&seed) % 6);
                int r = gh_pool_alloc(p, size[i], align, &off[i]);
                if (r == -ENOSPC)
                        continue;
                assert_int_equal(r, 0);
                assert_int_equal(off[i] % align, 0);
                for (uint64_t k = 0; k < size[i]; k++)
                        assert_int_equal(owner[off[i] + k], 0);
                memset(owner + off[i], i + 1, size[i]);
                memset(gh_pool_ptr(p, off[i]), i + 1, size[i]);
                live[i] = true;
                used += (size[i] + 255) & ~UINT64_C(255);
                gh_pool_stats st;
                gh_pool_get_stats(p, &st);
                assert_int_equal(st.used, used);
                assert_true(st.reserved >= st.used);
        }
        for (int i = 0; i < LIVE; i++)
                if (live[i])
                        assert_int_equal(gh_pool_release(p, off[i]), 0);
        gh_pool_stats st;
        gh_pool_get_stats(p, &st);
        assert_int_equal(st.used, 0);
        assert_int_equal(st.slabs, 0);
        assert_int_equal(st.largest_free, SLABS * SLAB);
        free(owner);
        gh_pool_free(p);
}

static long shmem_kib(void) {
        FILE *f = fopen("/proc/self/status", "re");
        char line[256];
        long v = -1;

        assert_non_null(f);
        while (fgets(line, sizeof(line), f))
                if (sscanf(line, "RssShmem: %ld kB", &v) == 1)
                        break;
        fclose(f);
        return v;
}

/* Released slabs really give their memory back. */
static void test_memory_returns(void **state) {
        enum { SLABS = 64 }; /* 16 MiB */
        gh_pool *p = pool_new(SLABS);
        uint64_t off;
        long before = shmem_kib();

        assert_int_equal(gh_pool_alloc(p, (uint64_t) SLABS * SLAB, 0, &off), 0);
        memset(gh_pool_ptr(p, off), 1, (size_t) SLABS * SLAB);
        long during = shmem_kib();
        assert_true(during - before >= SLABS * SLAB / 1024 - 64);
        assert_int_equal(gh_pool_release(p, off), 0);
        long after = shmem_kib();
        assert_true(after - before <= SLAB / 1024);
        gh_pool_free(p);
}

/* The child imports slabs 1..2 read-only and checks the data: exit 0. */
static int child_check(int sock, uint64_t offset, uint64_t size, bool try_write) {
        int fds[8];
        gh_pool_view *v;

        char byte;
        if (gh_test_recv_fds(sock, &byte, 1, fds, 8) != 2)
                return 10;
        if (ftruncate(fds[0], SLAB / 2) == 0) /* sealed: nobody can shrink it */
                return 11;
        if (gh_pool_view_new(&gh_pool_backend_cpu, SLAB, 4 * SLAB, &v) < 0)
                return 12;
        for (int i = 0; i < 2; i++)
                if (gh_pool_view_map(v, 1 + (unsigned) i, fds[i], false) < 0)
                        return 13;
        close(fds[0]);
        close(fds[1]);
        const unsigned char *data = (const unsigned char *) (uintptr_t) (gh_pool_view_base(v) + offset);
        for (uint64_t k = 0; k < size; k++)
                if (data[k] != (unsigned char) (k * 13 + 1))
                        return 14;
        if (try_write) {
                signal(SIGSEGV, SIG_DFL); /* not the test framework's handler */
                ((volatile unsigned char *) data)[0] = 0; /* must fault */
        }
        gh_pool_view_free(v);
        return 0;
}

static void test_import_in_another_process(void **state) {
        gh_pool *p = pool_new(4);
        uint64_t pad, off, size = SLAB + 1000;
        unsigned first, count;

        /* Slab 0 taken, so the allocation spans slabs 1 and 2. */
        assert_int_equal(gh_pool_alloc(p, SLAB, 0, &pad), 0);
        assert_int_equal(gh_pool_alloc(p, size, 0, &off), 0);
        assert_int_equal(off, SLAB);
        unsigned char *ptr = gh_pool_ptr(p, off);
        for (uint64_t k = 0; k < size; k++)
                ptr[k] = (unsigned char) (k * 13 + 1);
        assert_int_equal(gh_pool_slabs_for(p, off, size, &first, &count), 2);
        assert_int_equal(first, 1);
        int fds[2] = {gh_pool_slab_fd(p, 1), gh_pool_slab_fd(p, 2)};
        assert_true(fds[0] >= 0 && fds[1] >= 0);
        assert_true(fcntl(fds[0], F_GETFD) & FD_CLOEXEC);

        for (int attempt = 0; attempt < 2; attempt++) {
                int sp[2];
                assert_int_equal(socketpair(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0, sp), 0);
                pid_t pid = fork();
                assert_true(pid >= 0);
                if (pid == 0)
                        _exit(child_check(sp[1], off, size, attempt == 1));
                assert_int_equal(gh_test_send_fds(sp[0], "f", 1, fds, 2), 0);
                int status;
                assert_int_equal(waitpid(pid, &status, 0), pid);
                if (attempt == 0) {
                        assert_true(WIFEXITED(status));
                        assert_int_equal(WEXITSTATUS(status), 0);
                } else {
                        assert_true(WIFSIGNALED(status)); /* read-only mapping */
                        assert_int_equal(WTERMSIG(status), SIGSEGV);
                }
                close(sp[0]);
                close(sp[1]);
        }
        assert_int_equal(gh_pool_release(p, off), 0);
        assert_int_equal(gh_pool_release(p, pad), 0);
        gh_pool_free(p);
}

static void test_import_refuses_unsealed(void **state) {
        gh_pool_view *v;
        int fd = memfd_create("not-sealed", MFD_CLOEXEC);

        assert_true(fd >= 0);
        assert_int_equal(ftruncate(fd, SLAB), 0);
        assert_int_equal(gh_pool_view_new(&gh_pool_backend_cpu, SLAB, 2 * SLAB, &v), 0);
        assert_int_equal(gh_pool_view_map(v, 0, fd, false), -EBADF);
        assert_int_equal(gh_pool_view_map(v, 5, fd, false), -EINVAL);
        gh_pool_view_free(v);
        close(fd);
}

int main(void) {
        const struct CMUnitTest tests[] = {
                cmocka_unit_test(test_bad_arguments),
                cmocka_unit_test(test_accounting),
                cmocka_unit_test(test_spanning_and_fragmentation),
                cmocka_unit_test(test_random_against_model),
                cmocka_unit_test(test_memory_returns),
                cmocka_unit_test(test_import_in_another_process),
                cmocka_unit_test(test_import_refuses_unsealed),
        };
        return cmocka_run_group_tests(tests, NULL, NULL);
}

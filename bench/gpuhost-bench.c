/* gpuhost-bench: benchmarks that print measurements next to baselines
 * measured in the same run.
 *
 *   gpuhost-bench load [--size-mib N] [--dir DIR] [--device I]
 *   gpuhost-bench sched [--jobs N] [--clients N[,N...]] [--gpuhostd PATH]
 *                       [--worker PATH] [--plugins DIR] [--log-level LEVEL]
 *                       [--cpu-threads N] [--jobs-per-device N]
 *   gpuhost-bench sd [--parts unet,e2e] [--iters N] [--jobs N] [--steps N]
 *                    [--profile] [--work DIR] [--small] [...]
 *   gpuhost-bench video [--frames N] [--steps N] [--jobs N] [--work DIR] [--small]
 *   gpuhost-bench --help
 *
 * sched (bench-sched.c) measures the daemon's overhead per job around the
 * worker's steps, against the Ping round trip; see that file.
 *
 * sd runs bench/bench-sd.py (full-size SD 1.5 on a GPU: the UNet, a whole
 * 512x512 picture through gpuhostd, through the plugin's runtime alone and
 * through PyTorch, device memory per job and for three jobs sharing the
 * device; see that file) with the python3 found at configure time
 * (-DPYTHON3=...; it needs torch with CUDA, and numpy) and this build's
 * gpuhost-sd, gpuhostd, gpuhostctl, gpuhost-worker, plugin folder and the
 * demo model's tokenizer; its own arguments follow. --small checks it on
 * the CPU. video runs bench/bench-video.py the same way (one text-to-video
 * clip with a full-size random motion module, through gpuhostd, the
 * plugin's runtime and PyTorch).
 *
 * This file holds main(), sd and load:
 *
 * Writes a safetensors model of N MiB (default 2048) into DIR (default
 * /tmp), reads it once so it is in the page cache, then measures:
 *   - ceiling 1: reading the file into pinned host memory, in the chunks
 *     the loader uses;
 *   - ceiling 2 (GPU): a pinned host-to-device copy of the same bytes;
 *   - the model store's load onto the device (the daemon's code path);
 *   - attaching the loaded model in a second process (import + map of
 *     every slab), which also reads a tensor back to check it.
 * The load is reported as a ratio to the slower ceiling: 1.0 means loading
 * costs no more than the slower of reading and copying, i.e. they overlap.
 * Best of three runs each. Without a GPU it runs on the CPU device. */
#include <errno.h>
#include <fcntl.h>
#include <getopt.h>
#include <inttypes.h>
#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/wait.h>
#include <unistd.h>

#include "bench.h"
#include "common/util.h"
#include "gpuhostd/engine.h"
#include "fdpass.h"
#include "st-writer.h"

#define RUNS 3
#define TENSOR_MIB 64
#define READ_CHUNK (32u << 20)

typedef struct bench {
        uint64_t size;
        char dir[512], path[600];
        int device;
        gh_engine engine;
        sd_event *event;
        gh_config *config;
        const gh_device_info *info;
} bench;

static double now_s(void) {
        return (double) gh_now_usec(CLOCK_MONOTONIC) / 1e6;
}

static int die(const char *what, int r) {
        fprintf(stderr, "gpuhost-bench: %s: %s\n", what, strerror(r < 0 ? -r : r));
        exit(1);
}

static void write_model(bench *b) {
        size_t n = (size_t) (b->size / ((uint64_t) TENSOR_MIB << 20));
        gh_test_tensor *t = calloc(n, sizeof(*t));
        char (*names)[32] = calloc(n, 32);
        uint32_t *data = malloc((size_t) TENSOR_MIB << 20);
        uint32_t x = 12345;

        for (size_t i = 0; i < ((size_t) TENSOR_MIB << 20) / 4; i++)
                data[i] = x = x * 1664525u + 1013904223u;
        for (size_t i = 0; i < n; i++) {
                snprintf(names[i], 32, "layer%03zu.weight", i);
                t[i] = (gh_test_tensor) {.name = names[i], .dtype = GH_DTYPE_F32, .n_dims = 2,
                                         .shape = {4096, (uint64_t) TENSOR_MIB << 6} /* 64 MiB of F32 */, .data = data};
        }
        int r = gh_test_write_safetensors(b->path, t, n, NULL, 8);
        if (r < 0)
                die("writing the model", r);
        free(t);
        free(names);
        free(data);
}

/* Reads the file sequentially into |buf| chunk by chunk (the loader's way). */
static double read_file_into(const char *path, void *buf, size_t chunk) {
        int fd = open(path, O_RDONLY | O_CLOEXEC);
        double t0 = now_s();
        ssize_t n;
        off_t off = 0;

        if (fd < 0)
                die(path, errno);
        while ((n = pread(fd, buf, chunk, off)) > 0)
                off += n;
        close(fd);
        return now_s() - t0;
}

static double best(double a, double b) {
        return a < b ? a : b;
}

static void load_done(gh_resident *res, int r, const char *reason, void *userdata) {
        int *result = userdata;

        *result = r;
        if (r < 0)
                fprintf(stderr, "gpuhost-bench: load failed: %s\n", reason);
}

static double store_load(bench *b, gh_model *m) {
        int result = 1;
        double t0 = now_s();
        int r = gh_store_load(b->engine.store, m, (unsigned) b->device, load_done, &result);

        if (r < 0)
                die("load", r);
        while (result == 1)
                sd_event_run(b->event, UINT64_MAX);
        if (result < 0)
                exit(1);
        return now_s() - t0;
}

static double ceiling_h2d(bench *b, void *pinned) {
        gh_engine_gpu *g = b->engine.gpus[b->device];
        const gh_cuda *cu = b->engine.cu;
        gh_pool *pool = b->engine.pools[b->device];
        uint64_t off;
        double t = 1e9;

        if (gh_pool_alloc(pool, b->size, 0, &off) < 0)
                die("pool space for the copy", ENOSPC);
        cu->CtxSetCurrent(g->backend.context);
        for (int run = 0; run < RUNS; run++) {
                double t0 = now_s();
                for (uint64_t done = 0; done < b->size; done += 256u << 20)
                        cu->MemcpyHtoDAsync((CUdeviceptr) (gh_pool_base(pool) + off + done), (char *) pinned + done,
                                            b->size - done < (256u << 20) ? b->size - done : (256u << 20), NULL);
                cu->StreamSynchronize(NULL);
                t = best(t, now_s() - t0);
        }
        gh_pool_release(pool, off);
        return t;
}

/* ---- the second process ---- */

static int attach_child(int sock) {
        char err[256], buf[64];
        gh_cuda *cu = NULL;
        gh_pool_cuda pc;
        gh_pool_view *v = NULL;
        uint64_t hdr[4]; /* slab size, pool size, n slabs, first slab */
        int fds[GH_TEST_FDS_MAX];

        if (gh_test_recv_fds(sock, hdr, sizeof(hdr), fds, GH_TEST_FDS_MAX) != (int) hdr[2])
                return 1;
        int r = gh_cuda_load(NULL, &cu, err, sizeof(err));
        if (r >= 0)
                r = gh_pool_cuda_init(&pc, cu, 0);
        if (r < 0)
                return 2;
        double t0 = now_s();
        r = gh_pool_view_new(&pc.backend, hdr[0], hdr[1], &v);
        for (uint64_t i = 0; r >= 0 && i < hdr[2]; i++)
                r = gh_pool_view_map(v, (unsigned) (hdr[3] + i), fds[i], false);
        double t = now_s() - t0;
        if (r < 0)
                return 3;
        snprintf(buf, sizeof(buf), "%.3f\n", t * 1e3);
        (void) !write(sock, buf, strlen(buf));
        gh_pool_view_free(v);
        gh_pool_cuda_done(&pc);
        gh_cuda_free(cu);
        return 0;
}

static double attach_in_child(bench *b, gh_resident *res, const char *argv0) {
        gh_pool *pool = b->engine.pools[b->device];
        unsigned first, count;
        int sp[2], fds[GH_TEST_FDS_MAX];
        char buf[64] = "";

        if (gh_pool_slabs_for(pool, gh_resident_offset(res), gh_resident_bytes(res), &first, &count) < 0 || count > GH_TEST_FDS_MAX)
                die("slabs", EINVAL);
        for (unsigned i = 0; i < count; i++)
                fds[i] = gh_pool_slab_fd(pool, first + i);
        gh_pool_stats st;
        gh_pool_get_stats(pool, &st);
        uint64_t hdr[4] = {gh_pool_slab_size(pool), st.capacity, count, first};
        if (socketpair(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0, sp) < 0)
                die("socketpair", errno);
        pid_t pid = fork();
        if (pid == 0) {
                char num[16];
                snprintf(num, sizeof(num), "%d", fcntl(sp[1], F_DUPFD, 3));
                execl("/proc/self/exe", argv0, "attach-child", num, (char *) NULL);
                _exit(127);
        }
        if (gh_test_send_fds(sp[0], hdr, sizeof(hdr), fds, count) < 0)
                die("sending the slabs", EIO);
        (void) !read(sp[0], buf, sizeof(buf) - 1);
        int status;
        waitpid(pid, &status, 0);
        close(sp[0]);
        close(sp[1]);
        if (!WIFEXITED(status) || WEXITSTATUS(status) != 0)
                die("attach child", EIO);
        return atof(buf);
}

/* ---- sd ---- */

/* Replaces this process with the Python benchmark |script| (sd, video);
 * returns only on error. */
static int bench_python(const char *script, int argc, char **argv) {
#ifdef GH_BENCH_PYTHON3
        const char *fixed[] = {
                GH_BENCH_PYTHON3,   script,             "--sd",      GH_BENCH_GPUHOST_SD,
                "--gpuhostd",       GH_BENCH_GPUHOSTD,  "--gpuhostctl", GH_BENCH_GPUHOSTCTL,
                "--worker",         GH_BENCH_WORKER,    "--plugins", GH_BENCH_PLUGIN_DIR,
                "--tokenizer",      GH_BENCH_TOKENIZER,
        };
        size_t n = sizeof(fixed) / sizeof(fixed[0]);
        char **args = calloc(n + (size_t) argc + 1, sizeof(char *));

        if (!args)
                return die(argv[0], ENOMEM);
        memcpy(args, fixed, sizeof(fixed));
        for (int i = 1; i < argc; i++) /* argv[0] is "sd" or "video" */
                args[n++] = argv[i];
        execv(GH_BENCH_PYTHON3, args);
        fprintf(stderr, "gpuhost-bench %s: %s: %s\n", argv[0], GH_BENCH_PYTHON3, strerror(errno));
        free(args);
        return 1;
#else
        (void) script;
        (void) argc;
        fprintf(stderr, "gpuhost-bench %s: no python3 was found when this build was configured (-DPYTHON3=PATH)\n",
                argv[0]);
        return 1;
#endif
}

/* ---- main ---- */

static void setup(bench *b) {
        gh_config *c = NULL;
        int r = gh_config_new(&c);

        if (r < 0)
                die("config", r);
        free(c->models_directory);
        c->models_directory = strdup(b->dir);
        b->config = c;
        r = sd_event_new(&b->event);
        if (r < 0)
                die("event loop", r);
        r = gh_engine_init(&b->engine, b->event, c);
        if (r < 0)
                die("engine", r);
        if (b->device < 0) /* the first device with a pool: GPUs come first */
                for (int i = 0; i < GH_STORE_MAX_DEVICES && b->device < 0; i++)
                        if (b->engine.pools[i])
                                b->device = i;
        b->info = gh_devices_get(b->engine.devices, b->device);
        if (!b->info || !b->engine.pools[b->device])
                die("no such device with a pool", ENODEV);
}

static int bench_load(bench *b, const char *argv0) {
        bool gpu = b->info->kind == GH_DEVICE_CUDA;
        double gb = (double) b->size / 1e9, t_read = 1e9, t_h2d = 0, t_load = 1e9;
        void *buf = NULL;

        printf("gpuhost-bench load: %.2f GB model on device %d (%s)\n", gb, b->device, b->info->name);
        fflush(stdout);
        write_model(b);
        gh_catalog *cat = NULL;
        char err[256];
        if (gh_catalog_build(b->config, &cat, err, sizeof(err)) < 0)
                die(err, EINVAL);
        gh_store_apply_catalog(b->engine.store, cat);
        gh_model *m = gh_store_find(b->engine.store, "bench-load");
        if (!m)
                die("model not found", ENOENT);
        if (gpu) {
                b->engine.cu->CtxSetCurrent(b->engine.gpus[b->device]->backend.context);
                if (b->engine.cu->MemHostAlloc(&buf, b->size + READ_CHUNK, 0) != CUDA_SUCCESS)
                        die("pinned memory", ENOMEM);
        } else if (!(buf = malloc(b->size + READ_CHUNK)))
                die("memory", ENOMEM);
        read_file_into(b->path, buf, READ_CHUNK); /* into the page cache */
        for (int run = 0; run < RUNS; run++)
                t_read = best(t_read, read_file_into(b->path, buf, READ_CHUNK));
        if (gpu) {
                read_file_into(b->path, buf, b->size + READ_CHUNK); /* the whole file, for the copy */
                t_h2d = ceiling_h2d(b, buf);
        }
        for (int run = 0; run < RUNS; run++) {
                if (run > 0)
                        gh_store_unload(b->engine.store, m, (unsigned) b->device);
                t_load = best(t_load, store_load(b, m));
        }
        double t_ceiling = t_read > t_h2d ? t_read : t_h2d;
        printf("\n%-44s %10s %10s %8s\n", "what", "seconds", "GB/s", "ratio");
        printf("%-44s %10.3f %10.2f %8s\n", "ceiling 1: read file into pinned memory", t_read, gb / t_read, "");
        if (gpu)
                printf("%-44s %10.3f %10.2f %8s\n", "ceiling 2: pinned host-to-device copy", t_h2d, gb / t_h2d, "");
        printf("%-44s %10.3f %10.2f %8.2f\n", "load through the model store", t_load, gb / t_load, t_load / t_ceiling);
        printf("(ratio: load time / the slower ceiling; 1.0 = reading and copying fully overlap)\n");
        if (gpu) {
                gh_resident *res = gh_model_resident(m, (unsigned) b->device);
                double t_attach = 1e9;
                for (int run = 0; run < RUNS; run++)
                        t_attach = best(t_attach, attach_in_child(b, res, argv0));
                printf("%-44s %10.3f ms\n", "attach in a second process (import + map)", t_attach);
                b->engine.cu->MemFreeHost(buf);
        } else
                free(buf);
        gh_store_unload(b->engine.store, m, (unsigned) b->device);
        unlink(b->path);
        return 0;
}

int main(int argc, char **argv) {
        static const struct option options[] = {
                {"size-mib", required_argument, NULL, 's'},
                {"dir", required_argument, NULL, 'd'},
                {"device", required_argument, NULL, 'D'},
                {},
        };
        bench b = {.size = UINT64_C(2048) << 20, .device = -1};
        int c;

        if (argc == 3 && strcmp(argv[1], "attach-child") == 0)
                return attach_child(atoi(argv[2]));
        if (argc >= 2 && strcmp(argv[1], "sched") == 0)
                return bench_sched(argc - 1, argv + 1);
#ifdef GH_BENCH_PYTHON3
        if (argc >= 2 && strcmp(argv[1], "sd") == 0)
                return bench_python(GH_BENCH_SD_SCRIPT, argc - 1, argv + 1);
        if (argc >= 2 && strcmp(argv[1], "video") == 0)
                return bench_python(GH_BENCH_VIDEO_SCRIPT, argc - 1, argv + 1);
#else
        if (argc >= 2 && (strcmp(argv[1], "sd") == 0 || strcmp(argv[1], "video") == 0))
                return bench_python(NULL, argc - 1, argv + 1);
#endif
        bool help = argc >= 2 && (strcmp(argv[1], "--help") == 0 || strcmp(argv[1], "-h") == 0);
        if (help || argc < 2 || strcmp(argv[1], "load") != 0) {
                fprintf(help ? stdout : stderr,
                        "Usage: gpuhost-bench load [--size-mib N] [--dir DIR] [--device I]\n"
                        "       gpuhost-bench sched [--jobs N] [--clients N[,N...]] [--gpuhostd PATH]\n"
                        "                           [--worker PATH] [--plugins DIR] [--log-level LEVEL]\n"
                        "                           [--cpu-threads N] [--jobs-per-device N]\n"
                        "       gpuhost-bench sd [--parts unet,e2e] [--iters N] [--jobs N] [--steps N]\n"
                        "                        [--profile] [--work DIR] [--small]\n"
                        "       gpuhost-bench video [--frames N] [--steps N] [--jobs N] [--work DIR] [--small]\n"
                        "\n"
                        "load: model load time against read and copy ceilings. sched: the daemon's\n"
                        "overhead per job against the Ping round trip. sd: full-size SD 1.5 on a GPU\n"
                        "against PyTorch (bench/bench-sd.py, run with this build's programs; needs\n"
                        "torch with CUDA; --small checks it on the CPU; 'gpuhost-bench sd --help'\n"
                        "lists its options). video: text to video (SD 1.5 and a motion module) against\n"
                        "PyTorch, the same way (bench/bench-video.py).\n");
                return help ? 0 : 2;
        }
        snprintf(b.dir, sizeof(b.dir), "/tmp");
        optind = 2;
        while ((c = getopt_long(argc, argv, "", options, NULL)) >= 0)
                switch (c) {
                case 's':
                        b.size = strtoull(optarg, NULL, 10) << 20;
                        break;
                case 'd':
                        snprintf(b.dir, sizeof(b.dir), "%s", optarg);
                        break;
                case 'D':
                        b.device = atoi(optarg);
                        break;
                default:
                        return 2;
                }
        if (b.size < ((uint64_t) TENSOR_MIB << 20))
                b.size = (uint64_t) TENSOR_MIB << 20;
        b.size -= b.size % ((uint64_t) TENSOR_MIB << 20);
        snprintf(b.path, sizeof(b.path), "%s/bench-load.safetensors", b.dir);
        setup(&b);
        int r = bench_load(&b, argv[0]);
        gh_engine_done(&b.engine);
        sd_event_unref(b.event);
        gh_config_free(b.config);
        return r;
}

/* GPU test (ctest label "gpu"): the model store on a GPU through a real
 * gpuhostd. It writes a model (one tensor spans slabs), loads it onto GPU 0
 * over the socket, attaches from this process (VMM slab fds over
 * SCM_RIGHTS), imports and maps them read-only, reads every tensor back from
 * the GPU and compares it bit for bit with the file, then unloads it and
 * checks with cuMemGetInfo that the device memory came back, within one
 * slab. The SHA-256 the loader computes while uploading (the first load;
 * the second, of unchanged files, skips it) must be the file's. Exits 77
 * (skip) without a driver or GPU. */
#include <errno.h>
#include <fcntl.h>
#include <inttypes.h>
#include <json-c/json.h>
#include <openssl/evp.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <unistd.h>

#include "common/util.h"
#include "gpuhost/client.h"
#include "gpuhostd/cuda.h"
#include "gpuhostd/pool-cuda.h"
#include "daemon-run.h"
#include "st-writer.h"

#define SLAB (UINT64_C(64) << 20)

static char sock[256], model_path[512];

#define CHECK(cond, ...)                                      \
        do {                                                  \
                if (!(cond)) {                                \
                        fprintf(stderr, "FAIL: " __VA_ARGS__); \
                        fprintf(stderr, "\n");                \
                        return 1;                             \
                }                                             \
        } while (0)

static json_object *call(const char *method, const char *params, char **ret_error) {
        return gh_test_call(sock, method, params, ret_error);
}

typedef struct attachment {
        json_object *head;
        int fds[256];
        int64_t index[256];
        size_t n;
        int64_t n_slabs;
} attachment;

static int on_attach(gh_client *c, gh_reply *r, void *userdata) {
        attachment *a = userdata;
        json_object *o = json_tokener_parse(gh_reply_parameters(r));

        if (gh_reply_error(r)) {
                fprintf(stderr, "AttachModel: %s\n", gh_reply_error(r));
                json_object_put(o);
                return -EIO;
        }
        if (!a->head) {
                a->head = json_object_get(o);
                a->n_slabs = json_object_get_int64(json_object_object_get(o, "n_slabs"));
        }
        json_object *slabs = json_object_object_get(o, "slabs");
        for (size_t i = 0; i < gh_reply_n_fds(r) && a->n < 256; i++) {
                a->index[a->n] = json_object_get_int64(json_object_array_get_idx(slabs, i));
                a->fds[a->n++] = gh_reply_take_fd(r, i);
        }
        json_object_put(o);
        return (int64_t) a->n >= a->n_slabs ? -ECANCELED : 0;
}

static int start_daemon(const char *dir, pid_t *ret) {
        char conf[512], text[1024];

        snprintf(conf, sizeof(conf), "%s/g.conf", dir);
        snprintf(text, sizeof(text), "[socket]\npath = %s\n[devices]\ncpu = no\nslab_size = 64M\n[models]\ndirectory = %s/models\n", sock, dir);
        FILE *f = fopen(conf, "we");
        if (!f)
                return -errno;
        fputs(text, f);
        fclose(f);
        return gh_test_daemon_start(conf, NULL, sock, NULL, ret);
}

/* Hex SHA-256 of the file at |path|. */
static int file_sha256(const char *path, char out[65]) {
        EVP_MD_CTX *ctx = EVP_MD_CTX_new();
        unsigned char md[EVP_MAX_MD_SIZE], buf[1 << 16];
        unsigned len = 0;
        size_t n;
        FILE *f = fopen(path, "re");
        int ok = f && ctx && EVP_DigestInit_ex(ctx, EVP_sha256(), NULL) == 1;

        while (ok && (n = fread(buf, 1, sizeof(buf), f)) > 0)
                ok = EVP_DigestUpdate(ctx, buf, n) == 1;
        ok = ok && EVP_DigestFinal_ex(ctx, md, &len) == 1 && len == 32;
        for (unsigned i = 0; ok && i < len; i++)
                snprintf(out + 2 * i, 3, "%02x", md[i]);
        if (f)
                fclose(f);
        EVP_MD_CTX_free(ctx);
        return ok ? 0 : -EIO;
}

/* ListModels' "sha256" of model m must be the file's. */
static int check_sha256(void) {
        char want[65], *e;
        const char *got = NULL;

        CHECK(file_sha256(model_path, want) == 0, "hashing %s", model_path);
        json_object *p = call("io.gpuhost.ListModels", NULL, &e), *ms = json_object_object_get(p, "models");
        CHECK(!e, "ListModels: %s", e);
        for (size_t i = 0; i < json_object_array_length(ms); i++)
                if (strcmp(json_object_get_string(json_object_object_get(json_object_array_get_idx(ms, i), "name")), "m") == 0)
                        got = json_object_get_string(json_object_object_get(json_object_array_get_idx(ms, i), "sha256"));
        CHECK(got && strcmp(got, want) == 0, "sha256 %s, the file's is %s", got ? got : "(none)", want);
        printf("sha256 %s: the file's\n", got);
        json_object_put(p);
        return 0;
}

/* Load, attach from here, read every tensor back, detach, unload. */
static int cycle(gh_cuda *cu, gh_pool_cuda *pc, const gh_test_tensor *t, size_t n_t) {
        char *e;
        int r;

        json_object *p = call("io.gpuhost.LoadModel", "{\"model\":\"m\",\"device\":0}", &e);
        CHECK(!e, "LoadModel: %s %s", e, json_object_to_json_string(p));
        printf("loaded %" PRId64 " bytes onto GPU 0 in %.3f s\n",
               json_object_get_int64(json_object_object_get(p, "bytes_total")),
               json_object_get_double(json_object_object_get(p, "seconds")));
        json_object_put(p);
        CHECK(check_sha256() == 0, "the model's SHA-256");

        attachment a = {0};
        gh_client *c = NULL;
        CHECK(gh_client_connect(sock, &c) >= 0, "connect");
        r = gh_client_call_more(c, "io.gpuhost.AttachModel", "{\"model\":\"m\",\"device\":0}", on_attach, &a);
        CHECK(r == -ECANCELED && (int64_t) a.n == a.n_slabs && a.n >= 2, "AttachModel: %d, %zu of %" PRId64 " slabs", r, a.n, a.n_slabs);
        gh_pool_view *v = NULL;
        CHECK(gh_pool_view_new(&pc->backend, (uint64_t) json_object_get_int64(json_object_object_get(a.head, "slab_size")),
                               (uint64_t) json_object_get_int64(json_object_object_get(a.head, "pool_size")), &v) >= 0, "view");
        for (size_t i = 0; i < a.n; i++)
                CHECK(gh_pool_view_map(v, (unsigned) a.index[i], a.fds[i], false) >= 0, "map slab %" PRId64, a.index[i]);
        json_object *tensors = json_object_object_get(a.head, "tensors");
        CHECK(json_object_array_length(tensors) == n_t, "tensor count");
        for (size_t i = 0; i < json_object_array_length(tensors); i++) {
                json_object *o = json_object_array_get_idx(tensors, i);
                const char *name = json_object_get_string(json_object_object_get(o, "name"));
                uint64_t off = (uint64_t) json_object_get_int64(json_object_object_get(o, "offset"));
                uint64_t bytes = (uint64_t) json_object_get_int64(json_object_object_get(o, "bytes"));
                unsigned char *want = malloc(bytes), *got = malloc(bytes);
                gh_test_pattern(name, 0, want, bytes);
                r = gh_cuda_errno(cu, cu->MemcpyDtoH(got, (CUdeviceptr) (gh_pool_view_base(v) + off), bytes), NULL);
                CHECK(r >= 0 && memcmp(want, got, bytes) == 0, "tensor %s differs (or the copy failed: %d)", name, r);
                free(want);
                free(got);
        }
        printf("attached %zu slabs (%s), every tensor read back bit-exactly from the GPU\n", a.n,
               pc->read_only_ok ? "mapped read-only" : "mapped read-write");
        gh_pool_view_free(v);
        gh_close_many(a.fds, a.n);
        json_object_put(a.head);
        gh_client_free(c);

        for (int i = 0; i < 500; i++) { /* the daemon notices the hang-up */
                json_object_put(call("io.gpuhost.UnloadModel", "{\"model\":\"m\",\"device\":0}", &e));
                if (!e)
                        break;
                CHECK(strcmp(e, "io.gpuhost.ModelInUse") == 0, "UnloadModel: %s", e);
                free(e);
                e = NULL;
                usleep(10000);
        }
        CHECK(!e, "model stayed in use");
        return 0;
}

int main(void) {
        char err[256], dir[] = "/tmp/gh-gpu-attach-XXXXXX", path[512];
        gh_cuda *cu = NULL;
        gh_pool_cuda pc;
        size_t free0, free1, total;
        pid_t pid;
        int r = gh_cuda_load(NULL, &cu, err, sizeof(err));

        if (r == -ENOENT || r == -ENODEV) {
                printf("SKIP: %s\n", err);
                return 77;
        }
        CHECK(r >= 0, "%s", err);
        CHECK(gh_pool_cuda_init(&pc, cu, 0) >= 0, "context");
        CHECK(gh_cuda_errno(cu, cu->CtxSetCurrent(pc.context), NULL) >= 0, "context current");
        CHECK(mkdtemp(dir), "mkdtemp");
        snprintf(sock, sizeof(sock), "%s/g.sock", dir);
        snprintf(path, sizeof(path), "%s/models", dir);
        mkdir(path, 0755);
        gh_test_tensor t[] = {
                {"conv_in.weight", GH_DTYPE_F16, 4, {320, 4, 3, 3}, NULL},
                {"time.weight", GH_DTYPE_F32, 2, {1280, 320}, NULL},
                {"ids", GH_DTYPE_I64, 1, {77}, NULL},
                {"big.weight", GH_DTYPE_F32, 2, {4096, 8192}, NULL}, /* 128 MiB: spans slabs */
        };
        snprintf(model_path, sizeof(model_path), "%s/models/m.safetensors", dir);
        CHECK(gh_test_write_safetensors(model_path, t, ELEMENTSOF(t), NULL, 8) >= 0, "writing the model");
        CHECK(start_daemon(dir, &pid) >= 0, "gpuhostd did not start");
        cu->MemGetInfo(&free0, &total);

        CHECK(cycle(cu, &pc, t, ELEMENTSOF(t)) == 0, "first cycle");
        /* The first cycle also set up lazily created resources of both
         * processes' contexts (a few hundred MiB): the baseline is taken
         * after it, and a second cycle must give everything back. */
        cu->MemGetInfo(&free1, &total);
        CHECK(cycle(cu, &pc, t, ELEMENTSOF(t)) == 0, "second cycle");
        size_t free2;
        cu->MemGetInfo(&free2, &total);
        printf("device free memory: %zu MiB at start, %zu MiB after one cycle, %zu MiB after another\n",
               free0 >> 20, free1 >> 20, free2 >> 20);
        CHECK(free2 + SLAB >= free1, "the memory did not come back within one slab");
        kill(pid, SIGTERM);
        int status;
        waitpid(pid, &status, 0);
        CHECK(WIFEXITED(status) && WEXITSTATUS(status) == 0, "gpuhostd exit status %d", status);
        snprintf(path, sizeof(path), "rm -rf '%s'", dir);
        (void) !system(path);
        gh_pool_cuda_done(&pc);
        gh_cuda_free(cu);
        printf("PASS\n");
        return 0;
}

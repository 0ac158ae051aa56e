/* End-to-end tests of the model store on the CPU device, through a real
 * gpuhostd: models from a directory and from [model] sections, loading with
 * progress, attaching from this process (slab fds over the socket, mapped
 * read-only) and reading every tensor back bit-exactly, unload refused while
 * attached, memory back after unload and eviction (pool accounting and the
 * daemon's RSS), LRU eviction and pinning, dtype conversion, malformed
 * files, the tokenizer's files loaded as U8 tensors (a folder's tokenizer/,
 * a single file's tokenizer key), the SHA-256 of the files (kept across a
 * reload of unchanged files, a known vector, a folder's files
 * concatenated), and 1,000 load/unload/evict cycles across five models
 * without a leak. */
#include <stdarg.h>
#include <stddef.h>
#include <setjmp.h>
#include <cmocka.h>
#include <fcntl.h>
#include <json-c/json.h>
#include <openssl/evp.h>
#include <signal.h>
#include <string.h>
#include <sys/stat.h>
#include <sys/wait.h>

#include "common/util.h"
#include "gpuhost/client.h"
#include "gpuhostd/dtype-convert.h"
#include "gpuhostd/pool.h"
#include "daemon-run.h"
#include "daemon-call.h"
#include "files.h"
#include "st-writer.h"

#define MiB (UINT64_C(1) << 20)
#define SLAB (2 * MiB)

typedef struct env {
        char dir[64], sock[128], models[128];
        pid_t pid;
} env;

static env E;

/* One gpuhostd per test file (E.sock): lib/daemon-call.h's calls on it. */
#define call(method, params, ret_error) gh_test_call_checked(E.sock, method, params, ret_error)
#define call_ok(method, params) gh_test_call_ok(E.sock, method, params)
#define str(o, key) gh_test_str(o, key)
#define num(o, key) gh_test_num(o, key)

/* ---- the daemon ---- */

static void write_text(const char *path, const char *text) {
        assert_int_equal(gh_test_write_text(path, text), 0);
}

static gh_client *connect_daemon(void) {
        gh_client *c = NULL;
        assert_int_equal(gh_client_connect(E.sock, &c), 0);
        gh_client_set_timeout(c, 60 * USEC_PER_SEC);
        return c;
}

static void expect_error(const char *method, const char *params, const char *error, const char *reason_part) {
        char *err;
        json_object *p = call(method, params, &err);

        assert_non_null(err);
        assert_string_equal(err, error);
        if (reason_part) {
                const char *reason = json_object_get_string(json_object_object_get(p, "reason"));
                if (!reason || !strstr(reason, reason_part))
                        fail_msg("%s: reason '%s' lacks '%s'", error, reason ? reason : "(none)", reason_part);
        }
        free(err);
        json_object_put(p);
}

static char *model_json(const char *model) {
        static char buf[256];
        snprintf(buf, sizeof(buf), "{\"model\":\"%s\",\"device\":0}", model);
        return buf;
}

static void load(const char *model) {
        json_object_put(call_ok("io.gpuhost.LoadModel", model_json(model)));
}

static void unload(const char *model) {
        json_object_put(call_ok("io.gpuhost.UnloadModel", model_json(model)));
}

/* After a detach: the daemon notices the hang-up asynchronously. */
static void unload_released(const char *model) {
        for (int i = 0; i < 500; i++) {
                char *err;
                json_object_put(call("io.gpuhost.UnloadModel", model_json(model), &err));
                if (!err)
                        return;
                if (strcmp(err, "io.gpuhost.ModelInUse") != 0)
                        fail_msg("UnloadModel %s: %s", model, err);
                free(err);
                usleep(10000);
        }
        fail_msg("%s stayed in use after its attachment closed", model);
}

static json_object *pool_stats(void) {
        json_object *p = call_ok("io.gpuhost.ListDevices", NULL);
        json_object *dev = json_object_array_get_idx(json_object_object_get(p, "devices"), 0);
        json_object *pool = json_object_get(json_object_object_get(dev, "pool"));
        assert_string_equal(json_object_get_string(json_object_object_get(dev, "kind")), "cpu");
        json_object_put(p);
        return pool;
}

static int64_t pool_get(const char *key) {
        json_object *pool = pool_stats();
        int64_t v = json_object_get_int64(json_object_object_get(pool, key));
        json_object_put(pool);
        return v;
}

/* Resident memory of the daemon, KiB: anonymous plus shared (memfd slabs). */
static long daemon_rss_kib(void) {
        char path[64], line[256];
        long anon = -1, shmem = -1;

        snprintf(path, sizeof(path), "/proc/%d/status", E.pid);
        FILE *f = fopen(path, "re");
        assert_non_null(f);
        while (fgets(line, sizeof(line), f)) {
                sscanf(line, "RssAnon: %ld kB", &anon);
                sscanf(line, "RssShmem: %ld kB", &shmem);
        }
        fclose(f);
        return anon + shmem;
}

static long daemon_shmem_kib(void) {
        char path[64], line[256];
        long shmem = -1;

        snprintf(path, sizeof(path), "/proc/%d/status", E.pid);
        FILE *f = fopen(path, "re");
        assert_non_null(f);
        while (fgets(line, sizeof(line), f))
                sscanf(line, "RssShmem: %ld kB", &shmem);
        fclose(f);
        return shmem;
}

/* ---- model files ---- */

#define N_BIG 5
static const char *const big_names[N_BIG] = {"big0", "big1", "big2", "big3", "big4"};

static void write_model(const char *path, const gh_test_tensor *t, size_t n) {
        assert_int_equal(gh_test_write_safetensors(path, t, n, NULL, 8), 0);
}

/* The tokenizer files: a folder model's own, and those of the tokenizer
 * key of [model tokfile]. */
#define TOKF_VOCAB "{\"<|startoftext|>\": 49406, \"a</w>\": 320}"
#define TOKF_MERGES "#version: 0.2\na b\n"
#define TOK_VOCAB "{\"x</w>\": 7}"
#define TOK_MERGES "#version: 0.2\nx y\nxy z\n"
/* A file of known bytes and its SHA-256 (as sha256sum prints it). */
#define FIXED_HEADER "{\"x\":{\"dtype\":\"U8\",\"shape\":[3],\"data_offsets\":[0,3]}}"
#define FIXED_SHA256 "54b4129bfca4e486b6e26e058829b96f7cc6649ecc32178096ec5e0cb923d83f"

static void make_tokenizer_models(void) {
        char path[256], fixed[8 + sizeof(FIXED_HEADER) - 1 + 3];

        gh_test_tensor conv[] = {{"conv", GH_DTYPE_F32, 1, {4}, NULL}};
        const char *dirs[] = {"tokf", "tokf/unet", "tokf/tokenizer"};
        for (size_t i = 0; i < ELEMENTSOF(dirs); i++) {
                snprintf(path, sizeof(path), "%s/%s", E.models, dirs[i]);
                assert_int_equal(mkdir(path, 0755), 0);
        }
        snprintf(path, sizeof(path), "%s/tokf/unet/diffusion_pytorch_model.safetensors", E.models);
        write_model(path, conv, 1);
        snprintf(path, sizeof(path), "%s/tokf/tokenizer/vocab.json", E.models);
        write_text(path, TOKF_VOCAB);
        snprintf(path, sizeof(path), "%s/tokf/tokenizer/merges.txt", E.models);
        write_text(path, TOKF_MERGES);
        snprintf(path, sizeof(path), "%s/tok", E.dir);
        assert_int_equal(mkdir(path, 0755), 0);
        snprintf(path, sizeof(path), "%s/tok/vocab.json", E.dir);
        write_text(path, TOK_VOCAB);
        snprintf(path, sizeof(path), "%s/tok/merges.txt", E.dir);
        write_text(path, TOK_MERGES);
        snprintf(path, sizeof(path), "%s/tokfile.safetensors", E.dir);
        write_model(path, conv, 1);
        /* 8-byte little-endian header length, the header, the data */
        memset(fixed, 0, 8);
        fixed[0] = (char) (sizeof(FIXED_HEADER) - 1);
        memcpy(fixed + 8, FIXED_HEADER, sizeof(FIXED_HEADER) - 1);
        memcpy(fixed + 8 + sizeof(FIXED_HEADER) - 1, "abc", 3);
        snprintf(path, sizeof(path), "%s/fixed.safetensors", E.models);
        assert_int_equal(gh_test_write_file(path, fixed, sizeof(fixed)), 0);
}

static void make_models(void) {
        char path[256];
        static const float conv_data[5] = {1.0f, -2.0f, 65504.0f, 1e-8f, 0.1f};

        /* m1: several dtypes, one tensor of 3 MiB (spans slabs). */
        gh_test_tensor m1[] = {
                {"a.weight", GH_DTYPE_F32, 2, {64, 33}, NULL},
                {"b.half", GH_DTYPE_F16, 1, {1000}, NULL},
                {"c.ids", GH_DTYPE_I64, 1, {7}, NULL},
                {"d.bf", GH_DTYPE_BF16, 3, {3, 5, 7}, NULL},
                {"e.big", GH_DTYPE_F32, 2, {768, 1024}, NULL},
                {"f.scalar", GH_DTYPE_F32, 0, {0}, NULL},
        };
        snprintf(path, sizeof(path), "%s/m1.safetensors", E.models);
        write_model(path, m1, ELEMENTSOF(m1));
        /* m2: a diffusers-style folder; subfolder names prefix the tensors. */
        snprintf(path, sizeof(path), "%s/m2", E.models);
        assert_int_equal(mkdir(path, 0755), 0);
        snprintf(path, sizeof(path), "%s/m2/unet", E.models);
        assert_int_equal(mkdir(path, 0755), 0);
        snprintf(path, sizeof(path), "%s/m2/vae", E.models);
        assert_int_equal(mkdir(path, 0755), 0);
        gh_test_tensor unet[] = {{"conv_in.weight", GH_DTYPE_F16, 4, {320, 4, 3, 3}, NULL},
                                 {"time.weight", GH_DTYPE_F32, 2, {1280, 320}, NULL}};
        gh_test_tensor vae[] = {{"conv_in.weight", GH_DTYPE_F32, 4, {128, 3, 3, 3}, NULL}};
        snprintf(path, sizeof(path), "%s/m2/unet/diffusion_pytorch_model.safetensors", E.models);
        write_model(path, unet, 2);
        snprintf(path, sizeof(path), "%s/m2/vae/diffusion_pytorch_model.safetensors", E.models);
        write_model(path, vae, 1);
        /* Five models of 14 MiB for eviction and the leak test: four fit
         * in the 64 MiB pool, five do not. */
        for (int i = 0; i < N_BIG; i++) {
                gh_test_tensor t[] = {{"w", GH_DTYPE_F32, 2, {1792, 2048}, NULL}};
                snprintf(path, sizeof(path), "%s/%s.safetensors", E.models, big_names[i]);
                write_model(path, t, 1);
        }
        /* Too big for the pool at all. */
        gh_test_tensor huge[] = {{"w", GH_DTYPE_U8, 1, {80 * MiB}, NULL}};
        snprintf(path, sizeof(path), "%s/huge.safetensors", E.models);
        write_model(path, huge, 1);
        /* Not a safetensors file. */
        snprintf(path, sizeof(path), "%s/broken.safetensors", E.models);
        write_text(path, "\x10\x00\x00\x00\x00\x00\x00\x00{\"x\":{\"dtype\":\"F99\"}}");
        /* For the [model conv] section: F32 values with known F16 forms. */
        gh_test_tensor conv[] = {{"v", GH_DTYPE_F32, 1, {5}, conv_data}, {"ids", GH_DTYPE_I32, 1, {4}, NULL}};
        snprintf(path, sizeof(path), "%s/conv-source.bin", E.dir);
        write_model(path, conv, 2);
        make_tokenizer_models();
}

static int setup(void **state) {
        const char *bin = getenv("GH_GPUHOSTD"); /* run by gh_test_daemon_start() */
        char conf[256], text[2048], log[256];

        assert_non_null(bin);
        strcpy(E.dir, "/tmp/gh-models-XXXXXX");
        assert_non_null(mkdtemp(E.dir));
        snprintf(E.sock, sizeof(E.sock), "%s/gpuhost.sock", E.dir);
        snprintf(E.models, sizeof(E.models), "%s/models", E.dir);
        assert_int_equal(mkdir(E.models, 0755), 0);
        make_models();
        snprintf(conf, sizeof(conf), "%s/gpuhost.conf", E.dir);
        snprintf(text, sizeof(text),
                 "[socket]\npath = %s\n[devices]\ncpu_memory = 64M\nslab_size = 2M\n"
                 "[models]\ndirectory = %s\n[model conv]\npath = %s/conv-source.bin\ndtype = fp16\n"
                 "[model restricted]\npath = %s/conv-source.bin\ndevices = 5\n"
                 "[model tokfile]\npath = %s/tokfile.safetensors\ntokenizer = %s/tok\n",
                 E.sock, E.models, E.dir, E.dir, E.dir, E.dir);
        write_text(conf, text);
        snprintf(log, sizeof(log), "%s/daemon.log", E.dir);
        int r = gh_test_daemon_start(conf, log, E.sock, NULL, &E.pid);
        if (r < 0)
                fail_msg("gpuhostd did not start: %s", strerror(-r));
        return 0;
}

static int teardown(void **state) {
        char cmd[128];
        int status;

        if (E.pid > 0) {
                kill(E.pid, SIGTERM);
                assert_int_equal(waitpid(E.pid, &status, 0), E.pid);
                assert_true(WIFEXITED(status));
                assert_int_equal(WEXITSTATUS(status), 0);
        }
        snprintf(cmd, sizeof(cmd), "rm -rf '%s'", E.dir);
        (void) !system(cmd);
        return 0;
}

/* ---- tests ---- */

static json_object *find_model(json_object *models, const char *name) {
        for (size_t i = 0; i < json_object_array_length(models); i++) {
                json_object *m = json_object_array_get_idx(models, i);
                if (strcmp(json_object_get_string(json_object_object_get(m, "name")), name) == 0)
                        return m;
        }
        return NULL;
}

static void test_catalogue(void **state) {
        json_object *p = call_ok("io.gpuhost.ListModels", NULL);
        json_object *models = json_object_object_get(p, "models");
        const char *names[] = {"m1", "m2", "big0", "big4", "huge", "broken", "conv"};

        for (size_t i = 0; i < ELEMENTSOF(names); i++)
                if (!find_model(models, names[i]))
                        fail_msg("model %s not listed: %s", names[i], json_object_to_json_string(p));
        json_object *conv = find_model(models, "conv");
        assert_string_equal(json_object_get_string(json_object_object_get(conv, "source")), "config");
        assert_string_equal(json_object_get_string(json_object_object_get(conv, "dtype")), "F16");
        assert_string_equal(json_object_get_string(json_object_object_get(find_model(models, "m1"), "source")), "directory");
        assert_int_equal(json_object_array_length(json_object_object_get(find_model(models, "m1"), "resident")), 0);
        json_object_put(p);
        assert_int_equal(pool_get("capacity"), 64 * MiB);
        assert_int_equal(pool_get("slab_size"), SLAB);
        assert_int_equal(pool_get("slabs"), 0);
}

static void test_errors(void **state) {
        expect_error("io.gpuhost.LoadModel", "{\"model\":\"nope\"}", "io.gpuhost.ModelNotFound", NULL);
        expect_error("io.gpuhost.LoadModel", "{\"model\":\"m1\",\"device\":7}", "io.gpuhost.DeviceNotFound", NULL);
        expect_error("io.gpuhost.LoadModel", "{\"model\":\"broken\"}", "io.gpuhost.ModelLoadFailed", "broken.safetensors");
        expect_error("io.gpuhost.LoadModel", "{\"model\":\"huge\"}", "io.gpuhost.ModelLoadFailed", "needs 80 MiB");
        expect_error("io.gpuhost.UnloadModel", "{\"model\":\"m1\"}", "io.gpuhost.ModelNotLoaded", NULL);
        expect_error("io.gpuhost.AttachModel", "{\"model\":\"m1\"}", "org.varlink.service.ExpectedMore", NULL);
        /* [model restricted] devices = 5: not device 0, and no default. */
        expect_error("io.gpuhost.LoadModel", "{\"model\":\"restricted\",\"device\":0}", "io.gpuhost.InvalidParameter", "may only use devices: 5");
        expect_error("io.gpuhost.LoadModel", "{\"model\":\"restricted\"}", "io.gpuhost.DeviceNotFound", NULL);
        assert_int_equal(pool_get("slabs"), 0); /* failed loads left nothing behind */
        assert_int_equal(pool_get("used"), 0);
}

typedef struct progress {
        int replies;
        int64_t last_total;
        char *error;
} progress;

static int on_progress(gh_client *c, gh_reply *r, void *userdata) {
        progress *p = userdata;
        json_object *o = json_tokener_parse(gh_reply_parameters(r));

        p->replies++;
        if (gh_reply_error(r))
                p->error = strdup(gh_reply_error(r));
        p->last_total = json_object_get_int64(json_object_object_get(o, "bytes_total"));
        assert_true(json_object_get_int64(json_object_object_get(o, "bytes_loaded")) <= p->last_total || !p->last_total);
        json_object_put(o);
        return 0;
}

/* An attachment: the connection (which holds the model) and the view. */
typedef struct attachment {
        gh_client *client;
        json_object *head;
        int fds[64];
        int64_t slab_index[64];
        size_t n_fds;
        int64_t n_slabs;
} attachment;

static int on_attach(gh_client *c, gh_reply *r, void *userdata) {
        attachment *a = userdata;
        json_object *o = json_tokener_parse(gh_reply_parameters(r));

        if (gh_reply_error(r))
                fail_msg("AttachModel: %s %s", gh_reply_error(r), gh_reply_parameters(r));
        if (!a->head) {
                a->head = json_object_get(o);
                a->n_slabs = json_object_get_int64(json_object_object_get(o, "n_slabs"));
        }
        json_object *slabs = json_object_object_get(o, "slabs");
        assert_int_equal(json_object_array_length(slabs), gh_reply_n_fds(r));
        for (size_t i = 0; i < gh_reply_n_fds(r); i++) {
                a->slab_index[a->n_fds] = json_object_get_int64(json_object_array_get_idx(slabs, i));
                a->fds[a->n_fds++] = gh_reply_take_fd(r, i);
        }
        json_object_put(o);
        /* Everything is here: stop waiting, keep the call (and model) open. */
        return (int64_t) a->n_fds >= a->n_slabs ? -ECANCELED : 0;
}

static void attach(const char *model, attachment *a) {
        memset(a, 0, sizeof(*a));
        a->client = connect_daemon();
        assert_int_equal(gh_client_call_more(a->client, "io.gpuhost.AttachModel", model_json(model), on_attach, a), -ECANCELED);
        assert_int_equal((int64_t) a->n_fds, a->n_slabs);
}

static void detach(attachment *a) {
        gh_close_many(a->fds, a->n_fds);
        json_object_put(a->head);
        gh_client_free(a->client);
}

/* Maps the attached slabs read-only and checks every tensor. |prefix_strip|
 * maps table names to file names; |check| compares one tensor. */
static void verify_attached(attachment *a, void (*check)(const char *name, const void *data, uint64_t bytes, const char *dtype)) {
        gh_pool_view *v = NULL;
        int64_t slab = json_object_get_int64(json_object_object_get(a->head, "slab_size"));
        int64_t size = json_object_get_int64(json_object_object_get(a->head, "pool_size"));

        assert_int_equal(gh_pool_view_new(&gh_pool_backend_cpu, (uint64_t) slab, (uint64_t) size, &v), 0);
        for (size_t i = 0; i < a->n_fds; i++)
                assert_int_equal(gh_pool_view_map(v, (unsigned) a->slab_index[i], a->fds[i], false), 0);
        json_object *tensors = json_object_object_get(a->head, "tensors");
        for (size_t i = 0; i < json_object_array_length(tensors); i++) {
                json_object *t = json_object_array_get_idx(tensors, i);
                uint64_t off = (uint64_t) json_object_get_int64(json_object_object_get(t, "offset"));
                uint64_t bytes = (uint64_t) json_object_get_int64(json_object_object_get(t, "bytes"));
                check(json_object_get_string(json_object_object_get(t, "name")),
                      (const void *) (uintptr_t) (gh_pool_view_base(v) + off), bytes,
                      json_object_get_string(json_object_object_get(t, "dtype")));
        }
        gh_pool_view_free(v);
}

static void check_pattern(const char *name, const void *data, uint64_t bytes, const char *dtype) {
        const char *file_name = strchr(name, '/') ? strchr(name, '/') + 1 : name;
        unsigned char *want = malloc(bytes ? bytes : 1);

        gh_test_pattern(file_name, 0, want, bytes);
        if (memcmp(want, data, bytes) != 0)
                fail_msg("tensor %s differs from what was written", name);
        free(want);
}

static int checked;
static void count_and_check(const char *name, const void *data, uint64_t bytes, const char *dtype) {
        check_pattern(name, data, bytes, dtype);
        checked++;
}

static void test_load_attach_unload(void **state) {
        progress p = {0};
        attachment a1, a2;
        long shmem_before = daemon_shmem_kib();
        gh_client *c = connect_daemon();

        assert_int_equal(gh_client_call_more(c, "io.gpuhost.LoadModel", model_json("m1"), on_progress, &p), 0);
        assert_null(p.error);
        assert_true(p.replies >= 1);
        assert_true(p.last_total >= 768 * 1024 * 4);
        gh_client_free(c);
        load("m2");
        load("m2"); /* already resident: at once */

        attach("m1", &a1);
        attach("m2", &a2);
        checked = 0;
        verify_attached(&a1, count_and_check);
        assert_int_equal(checked, 6);
        checked = 0;
        verify_attached(&a2, count_and_check);
        assert_int_equal(checked, 3);
        json_object *tensors = json_object_object_get(a2.head, "tensors");
        bool prefixed = false;
        for (size_t i = 0; i < json_object_array_length(tensors); i++)
                prefixed |= strcmp(json_object_get_string(json_object_object_get(json_object_array_get_idx(tensors, i), "name")),
                                   "unet/conv_in.weight") == 0;
        assert_true(prefixed);

        /* Attached: unload is refused and says why. */
        expect_error("io.gpuhost.UnloadModel", model_json("m1"), "io.gpuhost.ModelInUse", "in use");
        json_object *models = call_ok("io.gpuhost.ListModels", NULL);
        json_object *res = json_object_array_get_idx(json_object_object_get(find_model(json_object_object_get(models, "models"), "m1"), "resident"), 0);
        assert_int_equal(json_object_get_int(json_object_object_get(res, "refcount")), 1);
        assert_string_equal(json_object_get_string(json_object_object_get(res, "state")), "ready");
        json_object_put(models);
        detach(&a1);
        detach(&a2);
        /* The daemon sees the hang-ups; then unload goes through. */
        unload_released("m1");
        unload_released("m2");
        assert_int_equal(pool_get("used"), 0);
        assert_int_equal(pool_get("slabs"), 0);
        assert_true(daemon_shmem_kib() - shmem_before <= (long) (SLAB >> 10));
}

/* SIGTERM while a process is attached: the attachment ends (final reply)
 * and the daemon exits 0 at once, not after the grace period. */
static void test_stop_ends_attachments(void **state) {
        attachment a;
        int status;

        load("m1");
        attach("m1", &a);
        uint64_t t0 = gh_now_usec(CLOCK_MONOTONIC);
        assert_int_equal(kill(E.pid, SIGTERM), 0);
        assert_int_equal(waitpid(E.pid, &status, 0), E.pid);
        assert_true(WIFEXITED(status));
        assert_int_equal(WEXITSTATUS(status), 0);
        assert_true(gh_now_usec(CLOCK_MONOTONIC) - t0 < 10 * USEC_PER_SEC); /* grace is 30 s */
        E.pid = -1; /* teardown has nothing left to stop */
        detach(&a);
}

static void test_conversion(void **state) {
        attachment a;
        gh_pool_view *v = NULL;

        load("conv");
        attach("conv", &a);
        json_object *tensors = json_object_object_get(a.head, "tensors");
        assert_int_equal(gh_pool_view_new(&gh_pool_backend_cpu, SLAB, 64 * MiB, &v), 0);
        for (size_t i = 0; i < a.n_fds; i++)
                assert_int_equal(gh_pool_view_map(v, (unsigned) a.slab_index[i], a.fds[i], false), 0);
        for (size_t i = 0; i < json_object_array_length(tensors); i++) {
                json_object *t = json_object_array_get_idx(tensors, i);
                const char *name = json_object_get_string(json_object_object_get(t, "name"));
                const void *data = (const void *) (uintptr_t) (gh_pool_view_base(v) +
                                   (uint64_t) json_object_get_int64(json_object_object_get(t, "offset")));
                if (strcmp(name, "v") == 0) {
                        /* 1, -2, 65504, 1e-8 (below half the smallest subnormal), 0.1 */
                        static const uint16_t want[5] = {0x3c00, 0xc000, 0x7bff, 0x0000, 0x2e66};
                        assert_string_equal(json_object_get_string(json_object_object_get(t, "dtype")), "F16");
                        assert_int_equal(json_object_get_int64(json_object_object_get(t, "bytes")), 10);
                        assert_memory_equal(data, want, sizeof(want));
                } else {
                        /* Integers are never converted. */
                        assert_string_equal(json_object_get_string(json_object_object_get(t, "dtype")), "I32");
                        check_pattern(name, data, 16, "I32");
                }
        }
        gh_pool_view_free(v);
        detach(&a);
        unload_released("conv");
        assert_int_equal(pool_get("used"), 0);
}

/* ---- auxiliary files, SHA-256 ---- */

static bool resident(const char *name);

/* Hex SHA-256 of the files in |paths| (NULL-terminated), concatenated. */
static void sha256_files(const char *const *paths, char out[65]) {
        EVP_MD_CTX *ctx = EVP_MD_CTX_new();
        unsigned char md[EVP_MAX_MD_SIZE], buf[65536];
        unsigned len = 0;

        assert_non_null(ctx);
        assert_int_equal(EVP_DigestInit_ex(ctx, EVP_sha256(), NULL), 1);
        for (size_t i = 0; paths[i]; i++) {
                FILE *f = fopen(paths[i], "re");
                size_t n;
                assert_non_null(f);
                while ((n = fread(buf, 1, sizeof(buf), f)) > 0)
                        assert_int_equal(EVP_DigestUpdate(ctx, buf, n), 1);
                fclose(f);
        }
        assert_int_equal(EVP_DigestFinal_ex(ctx, md, &len), 1);
        assert_int_equal(len, 32);
        for (unsigned i = 0; i < len; i++)
                snprintf(out + 2 * i, 3, "%02x", md[i]);
        EVP_MD_CTX_free(ctx);
}

/* ListModels' "sha256" of |model|, or NULL (free it). */
static char *model_sha256(const char *model) {
        json_object *p = call_ok("io.gpuhost.ListModels", NULL);
        json_object *m = find_model(json_object_object_get(p, "models"), model);
        const char *v = m ? json_object_get_string(json_object_object_get(m, "sha256")) : NULL;
        char *copy = v ? strdup(v) : NULL;
        json_object_put(p);
        return copy;
}

static void expect_sha256(const char *model, const char *want) {
        char *got = model_sha256(model);
        if (!got || strcmp(got, want) != 0)
                fail_msg("%s: sha256 %s, expected %s", model, got ? got : "(none)", want);
        free(got);
}

/* Checks that |a| holds |name| as a 1-D U8 tensor of exactly |text|. */
static void expect_aux(attachment *a, const char *name, const char *text) {
        gh_pool_view *v = NULL;
        json_object *tensors = json_object_object_get(a->head, "tensors"), *t = NULL;
        size_t len = strlen(text);

        for (size_t i = 0; i < json_object_array_length(tensors); i++)
                if (strcmp(json_object_get_string(json_object_object_get(json_object_array_get_idx(tensors, i), "name")), name) == 0)
                        t = json_object_array_get_idx(tensors, i);
        if (!t)
                fail_msg("no tensor %s: %s", name, json_object_to_json_string(tensors));
        assert_string_equal(json_object_get_string(json_object_object_get(t, "dtype")), "U8");
        json_object *shape = json_object_object_get(t, "shape");
        assert_int_equal(json_object_array_length(shape), 1);
        assert_int_equal(json_object_get_int64(json_object_array_get_idx(shape, 0)), len);
        assert_int_equal(json_object_get_int64(json_object_object_get(t, "bytes")), len);
        assert_int_equal(gh_pool_view_new(&gh_pool_backend_cpu, SLAB, 64 * MiB, &v), 0);
        for (size_t i = 0; i < a->n_fds; i++)
                assert_int_equal(gh_pool_view_map(v, (unsigned) a->slab_index[i], a->fds[i], false), 0);
        const void *data = (const void *) (uintptr_t) (gh_pool_view_base(v) +
                           (uint64_t) json_object_get_int64(json_object_object_get(t, "offset")));
        assert_memory_equal(data, text, len);
        gh_pool_view_free(v);
}

static void test_tokenizer_files(void **state) {
        attachment a;

        load("tokf"); /* a folder with tokenizer/ */
        attach("tokf", &a);
        expect_aux(&a, "tokenizer/vocab.json", TOKF_VOCAB);
        expect_aux(&a, "tokenizer/merges.txt", TOKF_MERGES);
        assert_int_equal(json_object_array_length(json_object_object_get(a.head, "tensors")), 3);
        detach(&a);
        load("tokfile"); /* a single file with tokenizer = DIR */
        attach("tokfile", &a);
        expect_aux(&a, "tokenizer/vocab.json", TOK_VOCAB);
        expect_aux(&a, "tokenizer/merges.txt", TOK_MERGES);
        detach(&a);
        load("m1"); /* none: no error, no extra tensors */
        attach("m1", &a);
        assert_int_equal(json_object_array_length(json_object_object_get(a.head, "tensors")), 6);
        detach(&a);
        unload_released("tokf");
        unload_released("tokfile");
        unload_released("m1");
        assert_int_equal(pool_get("used"), 0);
}

static void test_sha256(void **state) {
        char path[256], unet[256], vae[256], want[65];

        assert_null(model_sha256("fixed")); /* not loaded yet: not known */
        load("fixed");
        expect_sha256("fixed", FIXED_SHA256);
        /* One file: the file's hash (what sha256sum says). */
        load("m1");
        snprintf(path, sizeof(path), "%s/m1.safetensors", E.models);
        sha256_files((const char *const[]) {path, NULL}, want);
        expect_sha256("m1", want);
        /* A folder: its weight files in load order (by path), concatenated;
         * the tokenizer's files are not part of it. */
        load("m2");
        snprintf(unet, sizeof(unet), "%s/m2/unet/diffusion_pytorch_model.safetensors", E.models);
        snprintf(vae, sizeof(vae), "%s/m2/vae/diffusion_pytorch_model.safetensors", E.models);
        sha256_files((const char *const[]) {unet, vae, NULL}, want);
        expect_sha256("m2", want);
        load("tokf");
        snprintf(path, sizeof(path), "%s/tokf/unet/diffusion_pytorch_model.safetensors", E.models);
        sha256_files((const char *const[]) {path, NULL}, want);
        expect_sha256("tokf", want);
        /* Converted models hash their files, not the converted data. */
        load("conv");
        snprintf(path, sizeof(path), "%s/conv-source.bin", E.dir);
        sha256_files((const char *const[]) {path, NULL}, want);
        expect_sha256("conv", want);
        /* A reload of unchanged files keeps the hash and the residency. */
        json_object_put(call_ok("io.gpuhost.ReloadConfig", NULL));
        expect_sha256("fixed", FIXED_SHA256);
        assert_true(resident("fixed"));
        json_object *p = call_ok("io.gpuhost.ListModels", NULL);
        size_t n_fixed = 0;
        for (size_t i = 0; i < json_object_array_length(json_object_object_get(p, "models")); i++)
                n_fixed += strcmp(json_object_get_string(json_object_object_get(
                                          json_object_array_get_idx(json_object_object_get(p, "models"), i), "name")),
                                  "fixed") == 0;
        json_object_put(p);
        assert_int_equal(n_fixed, 1); /* listed once: the same model */
        const char *names[] = {"fixed", "m1", "m2", "tokf", "conv"};
        for (size_t i = 0; i < ELEMENTSOF(names); i++)
                unload(names[i]);
        assert_int_equal(pool_get("used"), 0);
}

static bool resident(const char *name) {
        json_object *p = call_ok("io.gpuhost.ListModels", NULL);
        json_object *m = find_model(json_object_object_get(p, "models"), name);
        bool r = json_object_array_length(json_object_object_get(m, "resident")) > 0;
        json_object_put(p);
        return r;
}

static void test_eviction_and_pinning(void **state) {
        char pin[128];

        for (int i = 0; i < 4; i++)
                load(big_names[i]);
        assert_true(resident("big0"));
        load("big0"); /* a use: big1 is now the least recently used */
        load("big4"); /* no room for five: one goes */
        assert_false(resident("big1"));
        assert_true(resident("big0") && resident("big2") && resident("big3") && resident("big4"));
        snprintf(pin, sizeof(pin), "{\"model\":\"big2\",\"pinned\":true}");
        json_object_put(call_ok("io.gpuhost.PinModel", pin));
        load("big1"); /* evicts big3 (LRU), not the pinned big2 */
        assert_true(resident("big2"));
        assert_false(resident("big3"));
        snprintf(pin, sizeof(pin), "{\"model\":\"big2\",\"pinned\":false}");
        json_object_put(call_ok("io.gpuhost.PinModel", pin));
        const char *left[] = {"big0", "big1", "big2", "big4"};
        for (size_t i = 0; i < ELEMENTSOF(left); i++)
                unload(left[i]);
        assert_int_equal(pool_get("used"), 0);
        assert_int_equal(pool_get("slabs"), 0);
}

/* 1,000 cycles across five models: loads that evict, explicit unloads.
 * Pool bytes and the daemon's resident memory end where they began, within
 * one slab (the leak users of other servers report on model switches). */
static void test_no_leak_over_1000_cycles(void **state) {
        long rss_before, rss_after, shmem_before, shmem_after;
        /* Under sanitizers, freed memory sits in quarantine: total RSS says
         * nothing there, the memfd pages (shmem) still do. */
        bool sanitized = getenv("GH_SANITIZED") && *getenv("GH_SANITIZED");

        /* One round first, so allocator caches and the like are warm. */
        for (int i = 0; i < N_BIG; i++)
                load(big_names[i]);
        for (int i = 0; i < N_BIG; i++) {
                char *err;
                json_object_put(call("io.gpuhost.UnloadModel", model_json(big_names[i]), &err));
                free(err);
        }
        rss_before = daemon_rss_kib();
        shmem_before = daemon_shmem_kib();
        unsigned seed = 7;
        for (int cycle = 0; cycle < 1000; cycle++) {
                const char *m = big_names[rand_r(&seed) % N_BIG];
                if (cycle % 3 == 2 && resident(m))
                        unload(m);
                else
                        load(m);
        }
        for (int i = 0; i < N_BIG; i++) {
                char *err;
                json_object_put(call("io.gpuhost.UnloadModel", model_json(big_names[i]), &err));
                free(err);
        }
        assert_int_equal(pool_get("used"), 0);
        assert_int_equal(pool_get("slabs"), 0);
        rss_after = daemon_rss_kib();
        shmem_after = daemon_shmem_kib();
        print_message("daemon RSS (anon + shmem) before %ld KiB, after 1000 cycles %ld KiB; shmem %ld -> %ld KiB%s\n",
                      rss_before, rss_after, shmem_before, shmem_after, sanitized ? " (sanitized build: RSS not checked)" : "");
        assert_true(shmem_after - shmem_before <= (long) (SLAB >> 10));
        if (!sanitized)
                assert_true(rss_after - rss_before <= (long) (SLAB >> 10));
}

int main(void) {
        const struct CMUnitTest tests[] = {
                cmocka_unit_test(test_catalogue),
                cmocka_unit_test(test_errors),
                cmocka_unit_test(test_load_attach_unload),
                cmocka_unit_test(test_conversion),
                cmocka_unit_test(test_tokenizer_files),
                cmocka_unit_test(test_sha256),
                cmocka_unit_test(test_eviction_and_pinning),
                cmocka_unit_test(test_no_leak_over_1000_cycles),
                cmocka_unit_test(test_stop_ends_attachments), /* last: it stops the daemon */
        };
        signal(SIGPIPE, SIG_IGN);
        return cmocka_run_group_tests(tests, setup, teardown);
}

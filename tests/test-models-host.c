/* End-to-end tests of what plugins learn about their models (plugin ABI
 * 1.2), through a real gpuhostd and gpuhost-worker on the CPU device with
 * the test-model plugin: estimate() sizes the job's workspace from a
 * tensor's shape (model_tensor, from the tables the daemon sends with the
 * estimate request) and the device's ledger reserves exactly that while
 * the job runs; the tables reflect dtype conversion; model_info's SHA-256
 * equals the files' (one file, and a folder's files concatenated); the
 * tokenizer's files reach the plugin as U8 tensors (a folder's tokenizer/,
 * [models] tokenizer for single files, a [model] tokenizer key); a missing
 * tensor or unreadable model fails the estimate; and a reload that changes
 * a model's files drops the cached estimate. */
#include <stdarg.h>
#include <stddef.h>
#include <setjmp.h>
#include <cmocka.h>
#include <inttypes.h>
#include <json-c/json.h>
#include <openssl/evp.h>
#include <signal.h>
#include <string.h>
#include <sys/stat.h>
#include <sys/wait.h>

#include "common/util.h"
#include "daemon-run.h"
#include "daemon-call.h"
#include "files.h"
#include "st-writer.h"

#define VOCAB_A "{\"a</w>\": 320}"
#define MERGES_A "#version: 0.2\na b\n"
#define VOCAB_B "{\"b</w>\": 321}"
#define VOCAB_F "{\"f</w>\": 325, \"<|endoftext|>\": 49407}"
#define MERGES_F "#version: 0.2\nf o\nfo o\n"

static struct {
        char dir[64], sock[128], log[128], plugins[128], models[128];
        pid_t pid;
        int device; /* the CPU device's index */
} E;

/* One gpuhostd per test file (E.sock): lib/daemon-call.h's calls on it. */
#define call(method, params, ret_error) gh_test_call_checked(E.sock, method, params, ret_error)
#define call_ok(method, params) gh_test_call_ok(E.sock, method, params)
#define str(o, key) gh_test_str(o, key)
#define num(o, key) gh_test_num(o, key)

/* ---- files ---- */

static void write_text(const char *path, const char *text) {
        assert_int_equal(gh_test_write_text(path, text), 0);
}

static void path_of(char *buf, size_t size, const char *fmt, ...) _printf_(3, 4);
static void path_of(char *buf, size_t size, const char *fmt, ...) {
        va_list ap;

        va_start(ap, fmt);
        vsnprintf(buf, size, fmt, ap);
        va_end(ap);
}

static void mkdir_in(const char *base, const char *sub) {
        char path[256];

        path_of(path, sizeof(path), "%s/%s", base, sub);
        assert_int_equal(mkdir(path, 0755), 0);
}

static void write_in(const char *base, const char *sub, const char *text) {
        char path[256];

        path_of(path, sizeof(path), "%s/%s", base, sub);
        write_text(path, text);
}

/* "one": w F32 [3, 5, 7] and b F16 [10]. */
static void write_one(uint64_t rows) {
        char path[256];
        gh_test_tensor t[] = {{"w", GH_DTYPE_F32, 3, {rows, 5, 7}, NULL}, {"b", GH_DTYPE_F16, 1, {10}, NULL}};

        path_of(path, sizeof(path), "%s/one.safetensors", E.models);
        assert_int_equal(gh_test_write_safetensors(path, t, 2, NULL, 8), 0);
}

static void make_models(void) {
        char path[256];
        gh_test_tensor conv[] = {{"conv", GH_DTYPE_F32, 2, {2, 3}, NULL}};
        gh_test_tensor emb[] = {{"emb", GH_DTYPE_F32, 1, {4}, NULL}};

        write_one(3);
        mkdir_in(E.models, "folder");
        mkdir_in(E.models, "folder/unet");
        mkdir_in(E.models, "folder/text_encoder");
        mkdir_in(E.models, "folder/tokenizer");
        path_of(path, sizeof(path), "%s/folder/unet/diffusion_pytorch_model.safetensors", E.models);
        assert_int_equal(gh_test_write_safetensors(path, conv, 1, NULL, 8), 0);
        path_of(path, sizeof(path), "%s/folder/text_encoder/model.safetensors", E.models);
        assert_int_equal(gh_test_write_safetensors(path, emb, 1, NULL, 8), 0);
        write_in(E.models, "folder/tokenizer/vocab.json", VOCAB_F);
        write_in(E.models, "folder/tokenizer/merges.txt", MERGES_F);
        mkdir_in(E.dir, "tok-a"); /* [models] tokenizer */
        write_in(E.dir, "tok-a/vocab.json", VOCAB_A);
        write_in(E.dir, "tok-a/merges.txt", MERGES_A);
        mkdir_in(E.dir, "tok-b"); /* [model half] tokenizer: no merges.txt */
        write_in(E.dir, "tok-b/vocab.json", VOCAB_B);
}

/* Hex SHA-256 of the files in |paths| (NULL-terminated), concatenated. */
static void sha256_files(const char *const *paths, char out[65]) {
        EVP_MD_CTX *ctx = EVP_MD_CTX_new();
        unsigned char md[EVP_MAX_MD_SIZE], buf[65536];
        unsigned len = 0;

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
        for (unsigned i = 0; i < len; i++)
                snprintf(out + 2 * i, 3, "%02x", md[i]);
        EVP_MD_CTX_free(ctx);
}

/* ---- calls ---- */

static void sleep_ms(unsigned ms) {
        struct timespec ts = {.tv_sec = ms / 1000, .tv_nsec = (long) (ms % 1000) * 1000000};
        nanosleep(&ts, NULL);
}

/* Submits a test-model job (without "more"); returns its id (free it). */
static char *submit(const char *parameters) {
        char params[1024];

        path_of(params, sizeof(params), "{\"pipeline\":\"test-model\",\"device\":%d,\"parameters\":%s}", E.device,
                parameters);
        json_object *o = call_ok("io.gpuhost.Generate", params);
        char *id = strdup(str(o, "job"));
        json_object_put(o);
        return id;
}

/* Waits for the job; returns its final reply, *ret_error as for calls. */
static json_object *wait_job(const char *id, char **ret_error) {
        char params[128];

        path_of(params, sizeof(params), "{\"job\":\"%s\"}", id);
        return call("io.gpuhost.WaitJob", params, ret_error);
}

/* Runs a job to its end and returns its metadata (a new reference). */
static json_object *run_ok(const char *parameters) {
        char *id = submit(parameters), *err = NULL;
        json_object *o = wait_job(id, &err);

        if (err)
                fail_msg("%s: %s %s", parameters, err, json_object_to_json_string(o));
        json_object *meta = json_object_get(json_object_object_get(o, "metadata"));
        json_object_put(o);
        free(id);
        assert_non_null(meta);
        return meta;
}

/* Runs a job that fails; returns the error's parameters. */
static json_object *run_error(const char *parameters, const char *error) {
        char *id = NULL, *err = NULL, params[1024];

        path_of(params, sizeof(params), "{\"pipeline\":\"test-model\",\"device\":%d,\"parameters\":%s}", E.device,
                parameters);
        json_object *o = call("io.gpuhost.Generate", params, &err);
        if (!err) { /* queued: the failure comes later */
                id = strdup(str(o, "job"));
                json_object_put(o);
                o = wait_job(id, &err);
        }
        if (!err || strcmp(err, error) != 0)
                fail_msg("%s: expected %s, got %s %s", parameters, error, err ? err : "success",
                         json_object_to_json_string(o));
        free(err);
        free(id);
        return o;
}

/* The CPU device's reserved workspaces, from GetStatus. */
static int64_t ledger_workspaces(void) {
        json_object *s = call_ok("io.gpuhost.GetStatus", NULL), *devs = json_object_object_get(s, "devices");
        int64_t v = -1;

        for (size_t i = 0; i < json_object_array_length(devs); i++) {
                json_object *d = json_object_array_get_idx(devs, i);
                if (num(d, "index") == E.device)
                        v = num(json_object_object_get(d, "memory"), "workspaces");
        }
        json_object_put(s);
        return v;
}

static char *model_sha256(const char *model) {
        json_object *p = call_ok("io.gpuhost.ListModels", NULL), *ms = json_object_object_get(p, "models");
        char *v = NULL;

        for (size_t i = 0; i < json_object_array_length(ms); i++) {
                json_object *m = json_object_array_get_idx(ms, i);
                if (gh_streq(str(m, "name"), model) && str(m, "sha256"))
                        v = strdup(str(m, "sha256"));
        }
        json_object_put(p);
        return v;
}

/* ---- the daemon ---- */

static int setup(void **state) {
        const char *worker = getenv("GH_GPUHOST_WORKER"), *plugins = getenv("GH_TEST_PLUGIN_DIR");
        char conf[256], text[2048], from[512], to[512];

        if (!getenv("GH_GPUHOSTD") || !worker || !plugins)
                return -1;
        strcpy(E.dir, "/tmp/gh-mhost-XXXXXX");
        assert_non_null(mkdtemp(E.dir));
        path_of(E.sock, sizeof(E.sock), "%s/gpuhost.sock", E.dir);
        path_of(E.log, sizeof(E.log), "%s/daemon.log", E.dir);
        path_of(E.plugins, sizeof(E.plugins), "%s/plugins", E.dir);
        path_of(E.models, sizeof(E.models), "%s/models", E.dir);
        assert_int_equal(mkdir(E.plugins, 0755), 0);
        assert_int_equal(mkdir(E.models, 0755), 0);
        path_of(from, sizeof(from), "%s/plugin-model.so", plugins);
        path_of(to, sizeof(to), "%s/plugin-model.so", E.plugins);
        assert_int_equal(gh_test_copy_file(from, to, 0644), 0);
        make_models();
        path_of(conf, sizeof(conf), "%s/gpuhost.conf", E.dir);
        path_of(text, sizeof(text),
                "[daemon]\nlog_level = debug\n[socket]\npath = %s\n[devices]\ncpu_memory = 64M\nslab_size = 2M\n"
                "[models]\ndirectory = %s\ntokenizer = %s/tok-a\n"
                "[model half]\npath = %s/one.safetensors\ndtype = fp16\ntokenizer = %s/tok-b\n"
                "[model missing]\npath = %s/nothing.safetensors\n"
                "[workers]\nexecutable = %s\nplugin_directory = %s\ncpu_threads = 2\n",
                E.sock, E.models, E.dir, E.models, E.dir, E.dir, worker, E.plugins);
        write_text(conf, text);
        assert_int_equal(gh_test_daemon_start(conf, E.log, E.sock, NULL, &E.pid), 0);
        json_object *p = call_ok("io.gpuhost.ListDevices", NULL), *devs = json_object_object_get(p, "devices");
        E.device = -1;
        for (size_t i = 0; i < json_object_array_length(devs); i++)
                if (gh_streq(str(json_object_array_get_idx(devs, i), "kind"), "cpu"))
                        E.device = (int) num(json_object_array_get_idx(devs, i), "index");
        json_object_put(p);
        assert_true(E.device >= 0);
        for (int i = 0; i < 500; i++) { /* until the worker says hello */
                bool up = false;
                p = call_ok("io.gpuhost.ListPipelines", NULL);
                json_object *pl = json_object_object_get(p, "pipelines");
                for (size_t k = 0; k < json_object_array_length(pl); k++)
                        up |= gh_streq(str(json_object_array_get_idx(pl, k), "name"), "test-model");
                json_object_put(p);
                if (up)
                        return 0;
                sleep_ms(20);
        }
        fail_msg("the worker never offered test-model");
        return -1;
}

static int teardown(void **state) {
        char cmd[128];
        int status = 0;

        if (E.pid > 0) {
                kill(E.pid, SIGTERM);
                waitpid(E.pid, &status, 0);
                if (!WIFEXITED(status) || WEXITSTATUS(status) != 0) {
                        char *text = gh_test_read_text(E.log);
                        print_message("gpuhostd's log:\n%s", text ? text : "");
                        free(text);
                }
        }
        path_of(cmd, sizeof(cmd), "rm -rf '%s'", E.dir);
        (void) !system(cmd);
        return E.pid > 0 && WIFEXITED(status) && WEXITSTATUS(status) == 0 ? 0 : -1;
}

/* ---- tests ---- */

/* estimate() reads w's shape [3, 5, 7] before the model is loaded and
 * asks for 105 bytes of workspace: the ledger holds exactly that while
 * the job runs, and the job can take exactly that. */
static void test_estimate_sees_tensors(void **state) {
        char *id = submit("{\"model\":\"one\",\"tensor\":\"w\",\"hold_ms\":1500}"), *err = NULL;
        int64_t seen = 0;

        for (int i = 0; i < 500 && seen == 0; i++) {
                seen = ledger_workspaces();
                if (seen == 0)
                        sleep_ms(5);
        }
        assert_int_equal(seen, 3 * 5 * 7);
        json_object *o = wait_job(id, &err);
        if (err)
                fail_msg("%s %s", err, json_object_to_json_string(o));
        json_object *meta = json_object_object_get(o, "metadata");
        assert_string_equal(str(meta, "workspace"), "105"); /* the job's model_tensor agrees */
        assert_string_equal(str(meta, "workspace_check"), "exact");
        assert_string_equal(str(meta, "name"), "one");
        assert_true(atoll(str(meta, "model_bytes")) >= 105 * 4 + 10 * 2);
        json_object_put(o);
        free(id);
        assert_int_equal(ledger_workspaces(), 0);
}

/* The tables are as the pool holds the model: "half" converts to F16. */
static void test_tables_after_conversion(void **state) {
        json_object *m = run_ok("{\"model\":\"one\",\"tensor\":\"w\",\"measure\":\"bytes\"}");
        assert_string_equal(str(m, "workspace"), "420");
        json_object_put(m);
        m = run_ok("{\"model\":\"half\",\"tensor\":\"w\",\"measure\":\"bytes\"}");
        assert_string_equal(str(m, "workspace"), "210");
        assert_string_equal(str(m, "workspace_check"), "exact");
        json_object_put(m);
        /* An F16 tensor stays F16; the tokenizer's files count their bytes. */
        m = run_ok("{\"model\":\"half\",\"tensor\":\"b\",\"measure\":\"bytes\"}");
        assert_string_equal(str(m, "workspace"), "20");
        json_object_put(m);
        m = run_ok("{\"model\":\"folder\",\"tensor\":\"tokenizer/vocab.json\",\"measure\":\"bytes\"}");
        char want[32];
        snprintf(want, sizeof(want), "%zu", strlen(VOCAB_F));
        assert_string_equal(str(m, "workspace"), want);
        json_object_put(m);
}

/* model_info's SHA-256: the file's, or a folder's files in load order. */
static void test_model_info_sha256(void **state) {
        char one[256], unet[256], te[256], want[65];

        path_of(one, sizeof(one), "%s/one.safetensors", E.models);
        sha256_files((const char *const[]) {one, NULL}, want);
        json_object *m = run_ok("{\"model\":\"one\",\"tensor\":\"b\"}");
        assert_string_equal(str(m, "sha256"), want);
        json_object_put(m);
        m = run_ok("{\"model\":\"half\",\"tensor\":\"b\"}"); /* the same file, converted */
        assert_string_equal(str(m, "sha256"), want);
        json_object_put(m);
        char *listed = model_sha256("one");
        assert_non_null(listed);
        assert_string_equal(listed, want);
        free(listed);
        path_of(unet, sizeof(unet), "%s/folder/unet/diffusion_pytorch_model.safetensors", E.models);
        path_of(te, sizeof(te), "%s/folder/text_encoder/model.safetensors", E.models);
        sha256_files((const char *const[]) {te, unet, NULL}, want); /* "text_encoder" < "unet" */
        m = run_ok("{\"model\":\"folder\",\"tensor\":\"unet/conv\"}");
        assert_string_equal(str(m, "sha256"), want);
        assert_string_equal(str(m, "workspace"), "6");
        json_object_put(m);
}

/* The text of |tensor| of |model|, as the job reads it. */
static void expect_text(const char *model, const char *tensor, const char *text) {
        char params[512];

        path_of(params, sizeof(params), "{\"model\":\"%s\",\"tensor\":\"%s\",\"read\":\"%s\"}", model,
                strcmp(model, "folder") == 0 ? "unet/conv" : "w", tensor);
        json_object *m = run_ok(params);
        assert_string_equal(str(m, "text"), text);
        json_object_put(m);
}

/* The tokenizer's files, as the plugin reads them with host->tensor(). */
static void test_tokenizer_tensors(void **state) {
        expect_text("folder", "tokenizer/vocab.json", VOCAB_F);   /* its tokenizer/ */
        expect_text("folder", "tokenizer/merges.txt", MERGES_F);
        expect_text("one", "tokenizer/vocab.json", VOCAB_A);      /* [models] tokenizer */
        expect_text("one", "tokenizer/merges.txt", MERGES_A);
        expect_text("half", "tokenizer/vocab.json", VOCAB_B);     /* [model half] tokenizer */
        /* tok-b has no merges.txt: not an error for the store, the tensor
         * is just not there (the plugin fails its job). */
        json_object *e = run_error("{\"model\":\"half\",\"tensor\":\"w\",\"read\":\"tokenizer/merges.txt\"}",
                                   "io.gpuhost.JobFailed");
        assert_string_equal(str(e, "error"), "ENOENT");
        json_object_put(e);
}

/* A tensor that is not there, a model whose files cannot be read: the
 * estimate fails with ENOENT and says so. */
static void test_missing(void **state) {
        json_object *e = run_error("{\"model\":\"one\",\"tensor\":\"nope\"}", "io.gpuhost.JobFailed");
        assert_string_equal(str(e, "error"), "ENOENT");
        assert_non_null(strstr(str(e, "message"), "estimate()"));
        json_object_put(e);
        e = run_error("{\"model\":\"missing\",\"tensor\":\"w\"}", "io.gpuhost.JobFailed");
        assert_string_equal(str(e, "error"), "ENOENT");
        json_object_put(e);
        e = run_error("{\"model\":\"nosuch\",\"tensor\":\"w\"}", "io.gpuhost.JobFailed");
        assert_string_equal(str(e, "error"), "ENOENT");
        json_object_put(e);
}

/* The estimate of {one, w} is cached; a reload that finds one's files
 * changed drops it: the next job sizes its workspace from the new shape,
 * and loads and hashes the new files. */
static void test_reload_drops_estimates(void **state) {
        const char *params = "{\"model\":\"one\",\"tensor\":\"w\"}";
        char path[256], want[65];
        json_object *m = run_ok(params);

        assert_string_equal(str(m, "workspace"), "105");
        json_object_put(m);
        m = run_ok(params); /* from the cache */
        assert_string_equal(str(m, "workspace"), "105");
        json_object_put(m);
        write_one(4);
        json_object_put(call_ok("io.gpuhost.ReloadConfig", NULL));
        m = run_ok(params);
        assert_string_equal(str(m, "workspace"), "140");
        assert_string_equal(str(m, "workspace_check"), "exact");
        path_of(path, sizeof(path), "%s/one.safetensors", E.models);
        sha256_files((const char *const[]) {path, NULL}, want);
        assert_string_equal(str(m, "sha256"), want);
        json_object_put(m);
}

int main(void) {
        const struct CMUnitTest tests[] = {
                cmocka_unit_test(test_estimate_sees_tensors),
                cmocka_unit_test(test_tables_after_conversion),
                cmocka_unit_test(test_model_info_sha256),
                cmocka_unit_test(test_tokenizer_tensors),
                cmocka_unit_test(test_missing),
                cmocka_unit_test(test_reload_drops_estimates),
        };

        signal(SIGPIPE, SIG_IGN);
        if (!getenv("GH_GPUHOSTD") || !getenv("GH_GPUHOST_WORKER") || !getenv("GH_TEST_PLUGIN_DIR")) {
                print_message("GH_GPUHOSTD, GH_GPUHOST_WORKER or GH_TEST_PLUGIN_DIR unset: skipped\n");
                return 0;
        }
        return cmocka_run_group_tests(tests, setup, teardown);
}

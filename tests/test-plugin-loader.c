/* Unit tests for plugin loading in the worker (daemon/worker/plugin-loader.c):
 * real test plugins (.so) are loaded or refused with their reasons: a valid
 * one, a wrong ABI version, a bad parameter table, no entry symbol, a file
 * writable by others, owned by someone else, a symlink; a directory of them
 * loads the good ones and reports each refusal; descriptor validation of
 * in-memory descriptors covers each rule. */
#include <stdarg.h>
#include <stddef.h>
#include <setjmp.h>
#include <cmocka.h>
#include <fcntl.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include "common/util.h"
#include "worker/plugin-loader.h"

static char dir[64];

static const char *plugin_path(const char *name) {
        static char buf[512];
        const char *d = getenv("GH_TEST_PLUGIN_DIR");

        assert_non_null(d);
        snprintf(buf, sizeof(buf), "%s/%s.so", d, name);
        return buf;
}

static void copy_file(const char *from, const char *to, mode_t mode) {
        char buf[65536];
        int in = open(from, O_RDONLY | O_CLOEXEC), out = open(to, O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, mode);
        ssize_t n;

        assert_true(in >= 0 && out >= 0);
        while ((n = read(in, buf, sizeof(buf))) > 0)
                assert_int_equal(write(out, buf, (size_t) n), n);
        close(in);
        close(out);
        assert_int_equal(chmod(to, mode), 0);
}

static int setup(void **state) {
        strcpy(dir, "/tmp/gh-plugins-XXXXXX");
        assert_non_null(mkdtemp(dir));
        return 0;
}

static int teardown(void **state) {
        char cmd[128];
        snprintf(cmd, sizeof(cmd), "rm -rf '%s'", dir);
        (void) !system(cmd);
        return 0;
}

static void expect_refusal(const char *path, int error, const char *reason_part) {
        gh_loaded_plugin *lp = NULL;
        char reason[512] = "";
        int r = gh_plugin_load(path, geteuid(), &lp, reason, sizeof(reason));

        assert_int_equal(r, error);
        assert_null(lp);
        if (!strstr(reason, reason_part))
                fail_msg("%s: reason '%s' lacks '%s'", path, reason, reason_part);
}

static void test_good_plugin(void **state) {
        gh_loaded_plugin *lp = NULL;
        char reason[512] = "";

        assert_int_equal(gh_plugin_load(plugin_path("plugin-sum"), geteuid(), &lp, reason, sizeof(reason)), 0);
        assert_string_equal(lp->plugin->name, "test-sum");
        assert_int_equal(lp->plugin->n_params, 6);
        assert_true(lp->plugin->flags & GH_PLUGIN_RETRY_SAFE);
        json_object *j = gh_plugin_to_json(lp->plugin);
        json_object *params = json_object_object_get(j, "parameters");
        assert_int_equal(json_object_array_length(params), 6);
        json_object *mode = json_object_array_get_idx(params, 3);
        assert_string_equal(json_object_get_string(json_object_object_get(mode, "type")), "enum");
        assert_string_equal(json_object_get_string(json_object_object_get(mode, "default")), "f32");
        assert_int_equal(json_object_array_length(json_object_object_get(mode, "choices")), 2);
        json_object *blocks = json_object_array_get_idx(params, 2);
        assert_int_equal(json_object_get_int(json_object_object_get(blocks, "max")), 1000);
        assert_null(json_object_object_get(json_object_array_get_idx(params, 0), "default")); /* required */
        json_object_put(j);
        gh_plugin_unload(lp);
}

static void test_bad_plugins(void **state) {
        expect_refusal(plugin_path("plugin-bad-abi"), -EPROTO, "plugin ABI 99.0; this host speaks 1.x");
        expect_refusal(plugin_path("plugin-bad-params"), -EINVAL, "parameter \"steps\": range or default");
        expect_refusal(plugin_path("plugin-no-entry"), -ENOEXEC, "no gh_plugin_entry symbol");
        expect_refusal("/nonexistent/x.so", -ENOENT, "No such file");
}

static void test_file_checks(void **state) {
        char path[256], link[256];

        snprintf(path, sizeof(path), "%s/writable.so", dir);
        copy_file(plugin_path("plugin-sum"), path, 0666);
        expect_refusal(path, -EPERM, "writable by group or others (mode 0666)");
        snprintf(link, sizeof(link), "%s/link.so", dir);
        assert_int_equal(symlink(plugin_path("plugin-sum"), link), 0);
        expect_refusal(link, -ELOOP, "");
        snprintf(path, sizeof(path), "%s/junk.so", dir);
        copy_file("/etc/hostname", path, 0644);
        expect_refusal(path, -ELIBBAD, "cannot load");
        if (geteuid() == 0) {
                snprintf(path, sizeof(path), "%s/foreign.so", dir);
                copy_file(plugin_path("plugin-sum"), path, 0644);
                assert_int_equal(chown(path, 65534, 65534), 0);
                expect_refusal(path, -EPERM, "owned by uid 65534");
        }
}

typedef struct refusals {
        int n;
        char text[4][600];
} refusals;

static void on_refused(const char *path, int error, const char *reason, void *userdata) {
        refusals *r = userdata;

        if (r->n < 4)
                snprintf(r->text[r->n], sizeof(r->text[0]), "%s: %s", strrchr(path, '/') + 1, reason);
        r->n++;
}

static void test_directory(void **state) {
        const char *names[] = {"plugin-sum", "plugin-bad-abi", "plugin-bad-params", "plugin-crash", "plugin-hang"};
        char path[256], sub[128];
        gh_loaded_plugin **plugins = NULL;
        size_t n = 0;
        refusals ref = {0};

        snprintf(sub, sizeof(sub), "%s/plugins", dir);
        assert_int_equal(mkdir(sub, 0755), 0);
        for (size_t i = 0; i < ELEMENTSOF(names); i++) {
                snprintf(path, sizeof(path), "%s/%s.so", sub, names[i]);
                copy_file(plugin_path(names[i]), path, 0644);
        }
        snprintf(path, sizeof(path), "%s/zz-sum-again.so", sub); /* the same name twice */
        copy_file(plugin_path("plugin-sum"), path, 0644);
        snprintf(path, sizeof(path), "%s/notes.txt", sub); /* not a .so: ignored */
        copy_file("/etc/hostname", path, 0644);
        assert_int_equal(gh_plugin_load_dir(sub, geteuid(), &plugins, &n, on_refused, &ref), 0);
        /* Several valid plugins, each its own (one fd path must not stand
         * for two objects in the dynamic loader). */
        assert_int_equal(n, 3);
        assert_string_equal(plugins[0]->plugin->name, "test-crash");
        assert_string_equal(plugins[1]->plugin->name, "test-hang");
        assert_string_equal(plugins[2]->plugin->name, "test-sum");
        assert_int_equal(ref.n, 3);
        assert_non_null(strstr(ref.text[0], "plugin-bad-abi.so: built for plugin ABI"));
        assert_non_null(strstr(ref.text[1], "plugin-bad-params.so: parameter \"steps\""));
        assert_non_null(strstr(ref.text[2], "zz-sum-again.so: a plugin named \"test-sum\" was loaded from"));
        gh_plugins_free(plugins, n);
        assert_int_equal(gh_plugin_load_dir("/nonexistent", geteuid(), &plugins, &n, on_refused, &ref), -ENOENT);
}

/* ---- descriptor rules, in memory ---- */

static int est(const gh_host *h, const gh_params *p, gh_plugin_needs *r) { return 0; }
static int sta(const gh_host *h, gh_job *j, const gh_params *p, void **s) { return 0; }
static int ste(const gh_host *h, gh_job *j, void *s, uint32_t k) { return 0; }
static int fin(const gh_host *h, gh_job *j, void *s) { return 0; }
static void abo(const gh_host *h, gh_job *j, void *s) {}

static gh_plugin base_plugin(const gh_plugin_param *params, uint32_t n) {
        return (gh_plugin) {GH_PLUGIN_HEADER, .name = "p", .version = "1", .description = "d", .params = params,
                            .n_params = n, .estimate = est, .start = sta, .step = ste, .finish = fin, .abort = abo};
}

static void expect_invalid(const gh_plugin *p, const char *part) {
        char reason[512] = "";

        assert_true(gh_plugin_validate(p, reason, sizeof(reason)) < 0);
        if (!strstr(reason, part))
                fail_msg("reason '%s' lacks '%s'", reason, part);
}

static void test_descriptor_rules(void **state) {
        static const char *const ab[] = {"a", "b", NULL}, *const dup[] = {"a", "a", NULL}, *const none[] = {NULL};
        char reason[256];
        gh_plugin p = base_plugin(NULL, 0);

        assert_int_equal(gh_plugin_validate(&p, reason, sizeof(reason)), 0);
        expect_invalid(NULL, "returned NULL");
        p.struct_size = 16;
        expect_invalid(&p, "struct_size 16");
        p = base_plugin(NULL, 0);
        p.name = "Bad Name";
        expect_invalid(&p, "plugin name");
        p = base_plugin(NULL, 0);
        p.step = NULL;
        expect_invalid(&p, "entry point is missing");
        p = base_plugin(NULL, 3);
        expect_invalid(&p, "parameter table missing");
        p = base_plugin(NULL, 0);
        p.abi_version = GH_PLUGIN_ABI_VERSION + 5; /* a later minor version: fine */
        assert_int_equal(gh_plugin_validate(&p, reason, sizeof(reason)), 0);

        struct {
                gh_plugin_param q;
                const char *why;
        } bad[] = {
                {{GH_PARAM_HEADER, .name = "x", .type = GH_PARAM_FLOAT, .help = "h", .float_min = 1, .float_max = 0}, "range"},
                {{GH_PARAM_HEADER, .name = "x", .type = GH_PARAM_FLOAT, .help = "h", .float_max = __builtin_inf()}, "range"},
                {{GH_PARAM_HEADER, .name = "x", .type = GH_PARAM_STRING, .help = "h", .string_max = 0}, "string_max"},
                {{GH_PARAM_HEADER, .name = "x", .type = GH_PARAM_STRING, .help = "h", .string_max = 2, .string_default = "abc"}, "too long"},
                {{GH_PARAM_HEADER, .name = "x", .type = GH_PARAM_ENUM, .help = "h", .choices = ab, .enum_default = "c"}, "not one of"},
                {{GH_PARAM_HEADER, .name = "x", .type = GH_PARAM_ENUM, .help = "h", .choices = dup, .enum_default = "a"}, "twice"},
                {{GH_PARAM_HEADER, .name = "x", .type = GH_PARAM_ENUM, .help = "h", .choices = none}, "needs choices"},
                {{GH_PARAM_HEADER, .name = "x", .type = 99, .help = "h"}, "unknown type"},
                {{GH_PARAM_HEADER, .name = "X", .type = GH_PARAM_BOOL, .help = "h"}, "parameter name"},
                {{GH_PARAM_HEADER, .name = "x", .type = GH_PARAM_BOOL}, "no help"},
                {{.struct_size = 8, .name = "x", .type = GH_PARAM_BOOL, .help = "h"}, "struct_size 8"},
        };
        for (size_t i = 0; i < ELEMENTSOF(bad); i++) {
                p = base_plugin(&bad[i].q, 1);
                expect_invalid(&p, bad[i].why);
        }
        gh_plugin_param twice[] = {
                {GH_PARAM_HEADER, .name = "x", .type = GH_PARAM_BOOL, .help = "h"},
                {GH_PARAM_HEADER, .name = "x", .type = GH_PARAM_BOOL, .help = "h"},
        };
        p = base_plugin(twice, 2);
        expect_invalid(&p, "appears twice");
        gh_plugin_param ok[] = {
                {GH_PARAM_HEADER, .name = "e", .type = GH_PARAM_ENUM, .help = "h", .choices = ab, .required = true},
                {GH_PARAM_HEADER, .name = "i", .type = GH_PARAM_INT, .help = "h", .int_min = -5, .int_max = 5, .required = true, .int_default = 99},
        };
        p = base_plugin(ok, 2); /* required: defaults do not matter */
        assert_int_equal(gh_plugin_validate(&p, reason, sizeof(reason)), 0);
}

int main(void) {
        const struct CMUnitTest tests[] = {
                cmocka_unit_test(test_good_plugin),
                cmocka_unit_test(test_bad_plugins),
                cmocka_unit_test(test_file_checks),
                cmocka_unit_test(test_directory),
                cmocka_unit_test(test_descriptor_rules),
        };
        return cmocka_run_group_tests(tests, setup, teardown);
}

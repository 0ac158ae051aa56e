/* Unit tests for gpuhostd's configuration (daemon/gpuhostd/config.c).
 *
 * Covers: the built-in defaults; every key of the key table (sizes with
 * K/M/G/KiB/MiB/GiB suffixes, seconds stored as usec, log levels, paths,
 * groups) and its range limits; every kind of error with the reported
 * file, line, "[section] key" and message, and that the first error wins;
 * indentation and comments; loading a main file plus conf.d drop-ins in
 * byte order (ignoring hidden and non-.conf files), a "-c" override, and
 * the whole-file errors (missing, directory, over 1 MiB); the cross-key and
 * group checks of gh_config_verify; the error formatter and the summary;
 * and that the shipped etc/gpuhost.conf(.in), both as shipped and with every
 * "#key = value" line uncommented, gives exactly the built-in defaults
 * plus the demo model at its install path.
 * Runs under ASan/LSan, so every config, string and temp file is freed. */
#include <errno.h>
#include <fcntl.h>
#include <ftw.h>
#include <inttypes.h>
#include <limits.h>
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <syslog.h>
#include <unistd.h>

#include <cmocka.h>

#include "common/util.h"
#include "gpuhost/protocol.h"
#include "gpuhostd/config.h"
#include "gpuhostd/engine.h"
#include "gh-build.h"

#define MiB (UINT64_C(1) << 20)

/* ---- helpers ---------------------------------------------------------- */

/* Parses |text| (of |len| bytes) onto a fresh config; returns the result of
 * gh_config_parse_string and the config (always) in *ret. */
static int parse_len(const char *text, size_t len, gh_config **ret, gh_config_error *err) {
        gh_config *c = NULL;

        assert_int_equal(gh_config_new(&c), 0);
        assert_non_null(c);
        memset(err, 0, sizeof(*err));
        int r = gh_config_parse_string(c, text, len, "test.conf", err);
        *ret = c;
        return r;
}

static int parse(const char *text, gh_config **ret, gh_config_error *err) {
        return parse_len(text, strlen(text), ret, err);
}

/* Parses |text| and expects it to succeed; returns the config. */
static gh_config *parse_ok(const char *text) {
        gh_config_error err;
        gh_config *c = NULL;
        int r = parse(text, &c, &err);

        if (r != 0)
                print_error("unexpected error for %s: %s:%u: %s: %s\n", text, err.file, err.line, err.key,
                            err.message);
        assert_int_equal(r, 0);
        return c;
}

/* Parses |len| bytes of |text| and expects an error at |line| naming |key|
 * with a message containing |msg|. Returns the errno-style result. */
static int expect_error_len(const char *text, size_t len, unsigned line, const char *key, const char *msg) {
        gh_config_error err;
        gh_config *c = NULL;
        int r = parse_len(text, len, &c, &err);

        gh_config_free(c);
        if (r >= 0)
                print_error("expected an error for: %s\n", text);
        assert_true(r < 0);
        if (err.line != line || strcmp(err.key, key) != 0 || !strstr(err.message, msg))
                print_error("for %s\n  got line %u key '%s' message '%s'\n  want line %u key '%s' message ~'%s'\n",
                            text, err.line, err.key, err.message, line, key, msg);
        assert_string_equal(err.file, "test.conf");
        assert_int_equal(err.line, line);
        assert_string_equal(err.key, key);
        assert_non_null(strstr(err.message, msg));
        return r;
}

static int expect_error(const char *text, unsigned line, const char *key, const char *msg) {
        return expect_error_len(text, strlen(text), line, key, msg);
}

static void write_file(const char *path, const char *text) {
        FILE *f = fopen(path, "we");

        assert_non_null(f);
        assert_int_equal(fwrite(text, 1, strlen(text), f), strlen(text));
        assert_int_equal(fclose(f), 0);
}

static char *path_join(const char *dir, const char *name) {
        char *p = NULL;

        assert_true(asprintf(&p, "%s/%s", dir, name) > 0);
        return p;
}

static int rm_entry(const char *path, const struct stat *st, int flag, struct FTW *ftw) {
        return remove(path);
}

static void rm_rf(const char *dir) {
        assert_int_equal(nftw(dir, rm_entry, 16, FTW_DEPTH | FTW_PHYS), 0);
}

/* A fresh temporary directory per test, removed in teardown. */
static int setup_tmpdir(void **state) {
        char tmpl[] = "/tmp/gh-test-config-XXXXXX";
        char *dir = mkdtemp(tmpl);

        if (!dir)
                return -1;
        *state = strdup(dir);
        return *state ? 0 : -1;
}

static int teardown_tmpdir(void **state) {
        char *dir = *state;

        if (dir) {
                rm_rf(dir);
                free(dir);
        }
        return 0;
}

static void assert_str_or_null_equal(const char *a, const char *b) {
        if (!a || !b)
                assert_ptr_equal(a, b);
        else
                assert_string_equal(a, b);
}

/* Every configured field (not the list of files) equals the defaults. */
/* Every global key at its default (the models aside). */
static void assert_globals_are_default(const gh_config *c) {
        gh_config *d = NULL;

        assert_int_equal(gh_config_new(&d), 0);
        assert_int_equal(c->log_level, d->log_level);
        assert_int_equal(c->shutdown_grace_usec, d->shutdown_grace_usec);
        assert_str_or_null_equal(c->admin_group, d->admin_group);
        assert_int_equal(c->admin_gid, d->admin_gid);
        assert_str_or_null_equal(c->socket_path, d->socket_path);
        assert_str_or_null_equal(c->socket_group, d->socket_group);
        assert_int_equal(c->socket_gid, d->socket_gid);
        assert_int_equal(c->max_connections, d->max_connections);
        assert_int_equal(c->max_connections_per_user, d->max_connections_per_user);
        assert_int_equal(c->max_message_size, d->max_message_size);
        assert_int_equal(c->max_pending_requests, d->max_pending_requests);
        assert_int_equal(c->max_fds_per_message, d->max_fds_per_message);
        assert_int_equal(c->max_json_depth, d->max_json_depth);
        assert_int_equal(c->idle_timeout_usec, d->idle_timeout_usec);
        assert_int_equal(c->max_output_buffer, d->max_output_buffer);
        assert_str_or_null_equal(c->devices_include, d->devices_include);
        assert_str_or_null_equal(c->devices_exclude, d->devices_exclude);
        assert_str_or_null_equal(c->devices_reserve, d->devices_reserve);
        assert_int_equal(c->slab_size, d->slab_size);
        assert_int_equal(c->cpu_enabled, d->cpu_enabled);
        assert_int_equal(c->cpu_memory, d->cpu_memory);
        assert_str_or_null_equal(c->models_directory, d->models_directory);
        assert_str_or_null_equal(c->models_tokenizer, d->models_tokenizer);
        assert_str_or_null_equal(c->worker_executable, d->worker_executable);
        assert_str_or_null_equal(c->plugin_directory, d->plugin_directory);
        assert_int_equal(c->heartbeat_timeout_usec, d->heartbeat_timeout_usec);
        assert_int_equal(c->quarantine_crashes, d->quarantine_crashes);
        assert_int_equal(c->quarantine_window_usec, d->quarantine_window_usec);
        assert_int_equal(c->max_output_size, d->max_output_size);
        assert_int_equal(c->cpu_threads, d->cpu_threads);
        assert_int_equal(c->max_queued, d->max_queued);
        assert_int_equal(c->max_queued_per_user, d->max_queued_per_user);
        assert_int_equal(c->aging_usec, d->aging_usec);
        assert_int_equal(c->keep_finished_usec, d->keep_finished_usec);
        assert_int_equal(c->max_finished, d->max_finished);
        assert_int_equal(c->max_inline_output, d->max_inline_output);
        assert_str_or_null_equal(c->metrics_listen, d->metrics_listen);
        gh_config_free(d);
}

static void assert_config_is_default(const gh_config *c) {
        assert_globals_are_default(c);
        assert_int_equal(c->n_models, 0);
}

/* ---- defaults --------------------------------------------------------- */

static void test_defaults(void **state) {
        gh_config *c = NULL;

        assert_int_equal(gh_config_new(&c), 0);
        assert_int_equal(c->log_level, LOG_INFO);
        assert_int_equal(c->shutdown_grace_usec, 30 * USEC_PER_SEC);
        assert_null(c->admin_group);
        assert_int_equal(c->admin_gid, (gid_t) -1);
        assert_string_equal(c->socket_path, GH_DEFAULT_SOCKET);
        assert_string_equal(c->socket_path, "/run/gpuhost/gpuhost.sock");
        assert_null(c->socket_group);
        assert_int_equal(c->socket_gid, (gid_t) -1);
        assert_int_equal(c->max_connections, 256);
        assert_int_equal(c->max_connections_per_user, 64);
        assert_int_equal(c->max_message_size, 1 * MiB);
        assert_int_equal(c->max_pending_requests, 32);
        assert_int_equal(c->max_fds_per_message, 16);
        assert_int_equal(c->max_json_depth, 64);
        assert_int_equal(c->idle_timeout_usec, 300 * USEC_PER_SEC);
        assert_int_equal(c->max_output_buffer, 16 * MiB);
        assert_string_equal(c->worker_executable, GH_WORKER_PATH);
        assert_string_equal(c->plugin_directory, GH_PLUGINDIR);
        assert_int_equal(c->heartbeat_timeout_usec, 30 * USEC_PER_SEC);
        assert_int_equal(c->quarantine_crashes, 3);
        assert_int_equal(c->max_output_size, 1024 * MiB);
        assert_int_equal(c->cpu_threads, 0);
        assert_int_equal(c->max_queued, 1024);
        assert_int_equal(c->keep_finished_usec, 300 * USEC_PER_SEC);
        assert_int_equal(c->max_inline_output, 4 * MiB);
        assert_int_equal(c->n_files, 0);
        assert_null(c->files);
        gh_config_free(c);

        /* Empty text, comments and blank lines change nothing. */
        c = parse_ok("");
        assert_config_is_default(c);
        gh_config_free(c);
        c = parse_ok("\n\n# nothing\n; here\n[daemon]\n[socket]\n[limits]\n");
        assert_config_is_default(c);
        gh_config_free(c);

        assert_null(gh_config_free(NULL));
}

static void test_load_nothing_gives_defaults(void **state) {
        const char *dir = *state;
        char *main_path = path_join(dir, "gpuhost.conf"), *dropins = path_join(dir, "conf.d");
        gh_config_error err = {};
        gh_config *c = NULL;

        assert_int_equal(gh_config_load(NULL, main_path, dropins, &c, &err), 0);
        assert_non_null(c);
        assert_config_is_default(c);
        assert_int_equal(c->n_files, 0);
        gh_config_free(c);

        /* An empty drop-in directory too. */
        assert_int_equal(mkdir(dropins, 0755), 0);
        c = NULL;
        assert_int_equal(gh_config_load(NULL, main_path, dropins, &c, &err), 0);
        assert_config_is_default(c);
        assert_int_equal(c->n_files, 0);
        gh_config_free(c);
        free(main_path);
        free(dropins);
}

/* ---- every key ---------------------------------------------------------- */

static void test_all_keys(void **state) {
        gh_config *c = parse_ok("[daemon]\n"
                                "log_level = debug\n"
                                "shutdown_grace_sec = 7\n"
                                "admin_group = root\n"
                                "[socket]\n"
                                "path = /tmp/gh/test.sock\n"
                                "group = root\n"
                                "[limits]\n"
                                "max_connections = 1000\n"
                                "max_connections_per_user = 10\n"
                                "max_message_size = 2M\n"
                                "max_pending_requests = 5\n"
                                "max_fds_per_message = 3\n"
                                "max_json_depth = 12\n"
                                "idle_timeout_sec = 60\n"
                                "max_output_buffer = 128K\n");

        assert_int_equal(c->log_level, LOG_DEBUG);
        assert_int_equal(c->shutdown_grace_usec, 7 * USEC_PER_SEC);
        assert_string_equal(c->admin_group, "root");
        assert_string_equal(c->socket_path, "/tmp/gh/test.sock");
        assert_string_equal(c->socket_group, "root");
        assert_int_equal(c->max_connections, 1000);
        assert_int_equal(c->max_connections_per_user, 10);
        assert_int_equal(c->max_message_size, 2 * MiB);
        assert_int_equal(c->max_pending_requests, 5);
        assert_int_equal(c->max_fds_per_message, 3);
        assert_int_equal(c->max_json_depth, 12);
        assert_int_equal(c->idle_timeout_usec, 60 * USEC_PER_SEC);
        assert_int_equal(c->max_output_buffer, 128 * 1024);
        /* gids are resolved by verify, not by parsing */
        assert_int_equal(c->socket_gid, (gid_t) -1);

        /* A second text on the same config overrides key by key, and
         * replaces strings (LSan catches a leaked old value); an empty
         * group resets to the default (NULL). */
        gh_config_error err = {};
        const char *more = "[socket]\npath = /tmp/other.sock\ngroup =\n[daemon]\nadmin_group =\n";
        assert_int_equal(gh_config_parse_string(c, more, strlen(more), "more.conf", &err), 0);
        assert_string_equal(c->socket_path, "/tmp/other.sock");
        assert_null(c->socket_group);
        assert_null(c->admin_group);
        assert_int_equal(c->max_connections, 1000); /* untouched */
        gh_config_free(c);
}

static void test_sizes(void **state) {
        static const struct {
                const char *key, *value;
                uint64_t bytes;
        } cases[] = {
                {"max_message_size", "4096", 4096},
                {"max_message_size", "4K", 4096},
                {"max_message_size", "5K", 5 * 1024},
                {"max_message_size", "8KiB", 8 * 1024},
                {"max_message_size", "3M", 3 * MiB},
                {"max_message_size", "3MiB", 3 * MiB},
                {"max_message_size", "64M", 64 * MiB},
                {"max_message_size", "64MiB", 64 * MiB},
                {"max_message_size", "65536K", 64 * MiB},
                {"max_message_size", "67108864", 64 * MiB},
                {"max_output_buffer", "65536", 65536},
                {"max_output_buffer", "64K", 65536},
                {"max_output_buffer", "1G", 1024 * MiB},
                {"max_output_buffer", "2GiB", 2048 * MiB},
                {"max_output_buffer", "4G", UINT64_C(1) << 32},
                {"max_output_buffer", "4096M", UINT64_C(1) << 32},
        };

        for (size_t i = 0; i < ELEMENTSOF(cases); i++) {
                char text[128];
                snprintf(text, sizeof(text), "[limits]\n%s = %s\n", cases[i].key, cases[i].value);
                gh_config *c = parse_ok(text);
                uint64_t got = strcmp(cases[i].key, "max_message_size") == 0 ? c->max_message_size
                                                                              : c->max_output_buffer;
                if (got != cases[i].bytes)
                        print_error("%s = %s gave %" PRIu64 "\n", cases[i].key, cases[i].value, got);
                assert_int_equal(got, cases[i].bytes);
                gh_config_free(c);
        }
}

static void test_seconds(void **state) {
        gh_config *c = parse_ok("[daemon]\nshutdown_grace_sec = 0\n[limits]\nidle_timeout_sec = 1\n");
        assert_int_equal(c->shutdown_grace_usec, 0);
        assert_int_equal(c->idle_timeout_usec, USEC_PER_SEC);
        gh_config_free(c);

        c = parse_ok("[daemon]\nshutdown_grace_sec = 3600\n[limits]\nidle_timeout_sec = 86400\n");
        assert_int_equal(c->shutdown_grace_usec, UINT64_C(3600) * USEC_PER_SEC);
        assert_int_equal(c->idle_timeout_usec, UINT64_C(86400) * USEC_PER_SEC); /* > 32 bits of usec */
        gh_config_free(c);
}

static void test_log_levels(void **state) {
        static const struct {
                const char *name;
                int level;
        } cases[] = {
                {"err", LOG_ERR},         {"error", LOG_ERR},   {"warning", LOG_WARNING}, {"warn", LOG_WARNING},
                {"notice", LOG_NOTICE},   {"info", LOG_INFO},   {"debug", LOG_DEBUG},
        };

        for (size_t i = 0; i < ELEMENTSOF(cases); i++) {
                char text[128];
                snprintf(text, sizeof(text), "[daemon]\nlog_level = %s\n", cases[i].name);
                gh_config *c = parse_ok(text);
                assert_int_equal(c->log_level, cases[i].level);
                gh_config_free(c);
        }
        expect_error("[daemon]\nlog_level = verbose\n", 2, "[daemon] log_level", "not a log level");
        expect_error("[daemon]\nlog_level = INFO\n", 2, "[daemon] log_level", "not a log level");
        expect_error("[daemon]\nlog_level =\n", 2, "[daemon] log_level", "not a log level");
}

/* The bounds of every numeric key: min and max accepted, min-1 and max+1
 * refused with the allowed range in the message. */
static void test_numeric_ranges(void **state) {
        static const struct {
                const char *section, *key;
                uint64_t min, max;
                size_t offset;
                int kind; /* 0 unsigned, 1 seconds (usec), 2 size */
        } keys[] = {
                {"daemon", "shutdown_grace_sec", 0, 3600, offsetof(gh_config, shutdown_grace_usec), 1},
                {"limits", "max_connections", 1, 65536, offsetof(gh_config, max_connections), 0},
                {"limits", "max_connections_per_user", 1, 65536, offsetof(gh_config, max_connections_per_user), 0},
                {"limits", "max_message_size", 4096, 64 * MiB, offsetof(gh_config, max_message_size), 2},
                {"limits", "max_pending_requests", 1, 4096, offsetof(gh_config, max_pending_requests), 0},
                {"limits", "max_fds_per_message", 0, 253, offsetof(gh_config, max_fds_per_message), 0},
                {"limits", "max_json_depth", 4, 1024, offsetof(gh_config, max_json_depth), 0},
                {"limits", "idle_timeout_sec", 1, 86400, offsetof(gh_config, idle_timeout_usec), 1},
                {"limits", "max_output_buffer", 65536, UINT64_C(1) << 32, offsetof(gh_config, max_output_buffer), 2},
        };

        for (size_t i = 0; i < ELEMENTSOF(keys); i++) {
                char text[256], key[128], range[128];
                uint64_t bounds[] = {keys[i].min, keys[i].max};

                snprintf(key, sizeof(key), "[%s] %s", keys[i].section, keys[i].key);
                snprintf(range, sizeof(range), "out of range (allowed %" PRIu64 "..%" PRIu64 ")", keys[i].min,
                         keys[i].max);
                for (size_t b = 0; b < 2; b++) {
                        snprintf(text, sizeof(text), "[%s]\n%s = %" PRIu64 "\n", keys[i].section, keys[i].key,
                                 bounds[b]);
                        gh_config *c = parse_ok(text);
                        const char *field = (const char *) c + keys[i].offset;
                        uint64_t got = keys[i].kind == 0 ? *(const unsigned *) field : *(const uint64_t *) field;
                        uint64_t want = keys[i].kind == 1 ? bounds[b] * USEC_PER_SEC : bounds[b];
                        assert_int_equal(got, want);
                        gh_config_free(c);
                }
                if (keys[i].min > 0) {
                        snprintf(text, sizeof(text), "[%s]\n%s = %" PRIu64 "\n", keys[i].section, keys[i].key,
                                 keys[i].min - 1);
                        assert_int_equal(expect_error(text, 2, key, range), -ERANGE);
                }
                snprintf(text, sizeof(text), "[%s]\n\n%s = %" PRIu64 "\n", keys[i].section, keys[i].key,
                         keys[i].max + 1);
                assert_int_equal(expect_error(text, 3, key, range), -ERANGE);
                /* Overflows uint64: still "out of range", never wrapped. */
                snprintf(text, sizeof(text), "[%s]\n%s = 99999999999999999999999\n", keys[i].section, keys[i].key);
                assert_int_equal(expect_error(text, 2, key, range), -ERANGE);
                snprintf(text, sizeof(text), "[%s]\n%s = 18446744073709551616\n", keys[i].section, keys[i].key);
                assert_int_equal(expect_error(text, 2, key, range), -ERANGE);
        }

        /* An unsigned key must not wrap at 2^32: 4294967297 is not 1. */
        assert_int_equal(expect_error("[limits]\nmax_connections = 4294967297\n", 2, "[limits] max_connections",
                                      "out of range (allowed 1..65536)"),
                         -ERANGE);
        assert_int_equal(expect_error("[limits]\nmax_fds_per_message = 4294967296\n", 2,
                                      "[limits] max_fds_per_message", "out of range"),
                         -ERANGE);
        assert_int_equal(expect_error("[limits]\nmax_fds_per_message = 18446744073709551615\n", 2,
                                      "[limits] max_fds_per_message", "out of range"),
                         -ERANGE);
        /* Seconds must not wrap either once multiplied to usec. */
        expect_error("[limits]\nidle_timeout_sec = 18446744073709\n", 2, "[limits] idle_timeout_sec",
                     "out of range (allowed 1..86400)");
        /* A size whose suffix overflows uint64. */
        expect_error("[limits]\nmax_message_size = 17179869184G\n", 2, "[limits] max_message_size",
                     "out of range (allowed 4096..67108864)");
        /* ... and ones that would wrap to an in-range value: 2^34+1 G is
         * 2^64 + 1 GiB, 2^54+64 K is 2^64 + 64 KiB. */
        expect_error("[limits]\nmax_output_buffer = 17179869185G\n", 2, "[limits] max_output_buffer",
                     "out of range (allowed 65536..4294967296)");
        expect_error("[limits]\nmax_output_buffer = 18014398509482048K\n", 2, "[limits] max_output_buffer",
                     "out of range (allowed 65536..4294967296)");
        expect_error("[limits]\nmax_output_buffer = 5G\n", 2, "[limits] max_output_buffer",
                     "out of range (allowed 65536..4294967296)");
        expect_error("[limits]\nmax_message_size = 3K\n", 2, "[limits] max_message_size", "out of range");
        expect_error("[limits]\nmax_message_size = 65M\n", 2, "[limits] max_message_size", "out of range");
}

static void test_bad_numbers(void **state) {
        static const char *const not_numbers[] = {"abc", "12abc", "1.5", "0x10", "", " ", "+5", "1 000", "1K"};

        for (size_t i = 0; i < ELEMENTSOF(not_numbers); i++) {
                char text[128];
                snprintf(text, sizeof(text), "[limits]\nmax_connections = %s\n", not_numbers[i]);
                assert_int_equal(expect_error(text, 2, "[limits] max_connections", "not a non-negative integer"),
                                 -EINVAL);
                snprintf(text, sizeof(text), "[daemon]\nshutdown_grace_sec = %s\n", not_numbers[i]);
                expect_error(text, 2, "[daemon] shutdown_grace_sec", "not a non-negative integer");
        }
        /* Negative numbers. */
        assert_int_equal(expect_error("[limits]\nmax_connections = -1\n", 2, "[limits] max_connections",
                                      "not a non-negative integer"),
                         -EINVAL);
        expect_error("[limits]\nmax_fds_per_message = -0\n", 2, "[limits] max_fds_per_message",
                     "not a non-negative integer");
        expect_error("[limits]\nidle_timeout_sec = -5\n", 2, "[limits] idle_timeout_sec", "not a non-negative integer");
        expect_error("[limits]\nmax_message_size = -1K\n", 2, "[limits] max_message_size", "not a size");
        expect_error("[limits]\nmax_message_size = -4096\n", 2, "[limits] max_message_size", "not a size");

        /* Sizes: not a number, bad suffixes. */
        expect_error("[limits]\nmax_message_size = K\n", 2, "[limits] max_message_size", "not a size");
        expect_error("[limits]\nmax_message_size = lots\n", 2, "[limits] max_message_size", "not a size");
        expect_error("[limits]\nmax_message_size =\n", 2, "[limits] max_message_size", "not a size");
        static const char *const bad_suffixes[] = {"1k", "1T", "1KB", "1 M", "1MB", "1Gi", "10X", "1.5M", "1KiBs"};
        for (size_t i = 0; i < ELEMENTSOF(bad_suffixes); i++) {
                char text[128];
                snprintf(text, sizeof(text), "[limits]\nmax_output_buffer = %s\n", bad_suffixes[i]);
                assert_int_equal(expect_error(text, 2, "[limits] max_output_buffer", "unknown size suffix"), -EINVAL);
        }
}

static void test_socket_path(void **state) {
        char path[200], text[256];
        gh_config *c;

        /* 107 bytes: the most sun_path holds with its NUL. */
        memset(path, 'a', sizeof(path));
        path[0] = '/';
        path[107] = 0;
        snprintf(text, sizeof(text), "[socket]\npath = %s\n", path);
        c = parse_ok(text);
        assert_int_equal(strlen(c->socket_path), 107);
        assert_string_equal(c->socket_path, path);
        gh_config_free(c);

        path[107] = 'a';
        path[108] = 0;
        snprintf(text, sizeof(text), "[socket]\npath = %s\n", path);
        expect_error(text, 2, "[socket] path", "too long for a Unix socket path");

        expect_error("[socket]\npath = run/gpuhost.sock\n", 2, "[socket] path", "not an absolute path");
        expect_error("[socket]\npath = ./gpuhost.sock\n", 2, "[socket] path", "not an absolute path");
        expect_error("[socket]\npath =\n", 2, "[socket] path", "not an absolute path");
        expect_error("[workers]\nexecutable = bin/gpuhost-worker\n", 2, "[workers] executable", "not an absolute path");
        expect_error("[workers]\nplugin_directory = plugins\n", 2, "[workers] plugin_directory", "not an absolute path");
        expect_error("[workers]\nheartbeat_timeout_sec = 0\n", 2, "[workers] heartbeat_timeout_sec", "range");
        expect_error("[workers]\nmax_output_size = 1K\n", 2, "[workers] max_output_size", "range");
        expect_error("[workers]\ncpu_threads = 2000\n", 2, "[workers] cpu_threads", "range");
        expect_error("[workers]\nheartbeat = 1\n", 2, "[workers] heartbeat", "unknown");
        expect_error("[jobs]\nmax_queued = 0\n", 2, "[jobs] max_queued", "range");
        expect_error("[jobs]\nmax_inline_output = 1G\n", 2, "[jobs] max_inline_output", "range");
}

/* [metrics] listen: empty (off) or a loopback address with a port. */
static void test_metrics_listen(void **state) {
        static const char *const good[] = {
                "127.0.0.1:9464", "localhost:1", "[::1]:65535", "127.1.2.3:8080", "[0:0:0:0:0:0:0:1]:9100",
        };
        static const struct {
                const char *value, *reason;
        } bad[] = {
                {"0.0.0.0:9464", "loopback only"},
                {"192.168.1.10:9464", "loopback only"},
                {"10.0.0.1:80", "loopback only"},
                {"[::]:9464", "loopback only"},
                {"[::ffff:127.0.0.1]:9464", "loopback only"},
                {"example.com:9464", "loopback only"},
                {"localhost.localdomain:9464", "loopback only"},
                {"[localhost]:9464", "loopback only"},
                {"127.0.0.1", "not HOST:PORT"},
                {"::1:9464", "not HOST:PORT"},
                {"[::1]9464", "not HOST:PORT"},
                {":9464", "not HOST:PORT"},
                {"[]:9464", "not HOST:PORT"},
                {"127.0.0.1:0", "invalid port"},
                {"127.0.0.1:65536", "invalid port"},
                {"127.0.0.1:", "invalid port"},
                {"127.0.0.1:+80", "invalid port"},
                {"127.0.0.1:80x", "invalid port"},
                {"localhost:123456", "invalid port"},
        };
        char text[256];
        gh_config *c = parse_ok("[metrics]\nlisten =\n");

        assert_null(c->metrics_listen);
        gh_config_free(c);
        for (size_t i = 0; i < sizeof(good) / sizeof(good[0]); i++) {
                snprintf(text, sizeof(text), "[metrics]\nlisten = %s\n", good[i]);
                c = parse_ok(text);
                assert_string_equal(c->metrics_listen, good[i]);
                gh_config_free(c);
        }
        for (size_t i = 0; i < sizeof(bad) / sizeof(bad[0]); i++) {
                snprintf(text, sizeof(text), "[metrics]\nlisten = %s\n", bad[i].value);
                expect_error(text, 2, "[metrics] listen", bad[i].reason);
        }
        /* A later file turns it off again. */
        c = parse_ok("[metrics]\nlisten = 127.0.0.1:9464\n[metrics]\nlisten =\n");
        assert_null(c->metrics_listen);
        gh_config_free(c);
        expect_error("[metrics]\nport = 9464\n", 2, "[metrics] port", "unknown");
}

static void test_group_names(void **state) {
        gh_config *c = parse_ok("[socket]\ngroup = gpu_host-1.x\n[daemon]\nadmin_group = wheel\n");
        assert_string_equal(c->socket_group, "gpu_host-1.x");
        assert_string_equal(c->admin_group, "wheel");
        gh_config_free(c);

        expect_error("[socket]\ngroup = bad group\n", 2, "[socket] group", "not a valid group name");
        expect_error("[socket]\ngroup = wh$eel\n", 2, "[socket] group", "not a valid group name");
        expect_error("[socket]\ngroup = a/b\n", 2, "[socket] group", "not a valid group name");
        expect_error("[daemon]\nadmin_group = adm:in\n", 2, "[daemon] admin_group", "not a valid group name");

        char name[80], text[160];
        memset(name, 'g', sizeof(name));
        name[64] = 0;
        snprintf(text, sizeof(text), "[socket]\ngroup = %s\n", name);
        c = parse_ok(text);
        assert_int_equal(strlen(c->socket_group), 64);
        gh_config_free(c);
        name[64] = 'g';
        name[65] = 0;
        snprintf(text, sizeof(text), "[socket]\ngroup = %s\n", name);
        expect_error(text, 2, "[socket] group", "group name too long");
}

/* ---- structural errors -------------------------------------------------- */

static void test_unknown_key_and_section(void **state) {
        assert_int_equal(expect_error("[daemon]\nlog_level = info\nfoo = 1\n", 3, "[daemon] foo", "unknown key"),
                         -EINVAL);
        /* A key of another section. */
        expect_error("[daemon]\nmax_connections = 5\n", 2, "[daemon] max_connections", "unknown key");
        expect_error("[limits]\npath = /x\n", 2, "[limits] path", "unknown key");

        /* Unknown section with keys: reported at the section line. */
        expect_error("[daemon]\nlog_level = info\n\n[nosuch]\nx = 1\n", 4, "[nosuch]", "unknown section");
        /* Empty unknown sections, anywhere. */
        expect_error("[limits]\nmax_connections = 10\n\n[empty]\n", 4, "[empty]", "unknown section");
        expect_error("[limits]\nmax_connections = 10\n[empty]", 3, "[empty]", "unknown section");
        expect_error("[empty]\n[limits]\nmax_connections = 10\n", 1, "[empty]", "unknown section");
        expect_error("# c\n  [Daemon]\n", 2, "[Daemon]", "unknown section");
        expect_error("[]\n", 1, "[]", "unknown section");
}

static void test_key_outside_section(void **state) {
        gh_config_error err;
        gh_config *c = NULL;

        int r = parse("# top\nlog_level = debug\n[daemon]\n", &c, &err);
        assert_int_equal(r, -EINVAL);
        assert_int_equal(err.line, 2);
        assert_string_equal(err.key, "");
        assert_non_null(strstr(err.message, "outside of a section"));
        assert_non_null(strstr(err.message, "log_level"));
        assert_int_equal(c->log_level, LOG_INFO);
        gh_config_free(c);
}

static void test_syntax_errors(void **state) {
        expect_error("[daemon]\nlog_level info\n", 2, "", "syntax error");
        expect_error("[daemon]\nlog_level = info\njunk\n", 3, "", "syntax error");
        expect_error("[daemon\nlog_level = info\n", 1, "", "syntax error");
        expect_error("\n\n\njust words\n", 4, "", "syntax error");
}

static void test_long_lines(void **state) {
        char text[1024];
        gh_config *c;

        /* 198 characters, with and without a newline after it, are fine. */
        memset(text, 0, sizeof(text));
        strcpy(text, "[limits]\n#");
        memset(text + strlen(text), 'x', 197);
        c = parse_ok(text); /* last line, no newline */
        gh_config_free(c);
        strcat(text, "\nmax_connections = 9\n");
        c = parse_ok(text);
        assert_int_equal(c->max_connections, 9);
        gh_config_free(c);

        /* A key line of exactly 198 characters (value padded with spaces
         * is trimmed by inih; use a long path instead). */
        char path[108];
        memset(path, 'p', sizeof(path));
        path[0] = '/';
        path[107] = 0;
        char line[256];
        int n = snprintf(line, sizeof(line), "path = %s", path); /* 114 */
        memset(line + n, ' ', 198 - (size_t) n);
        memcpy(line + 198 - 4, "; ok", 4);
        line[198] = 0;
        assert_int_equal(strlen(line), 198);
        snprintf(text, sizeof(text), "[socket]\n%s\n[limits]\nmax_connections = 3\n", line);
        c = parse_ok(text);
        assert_string_equal(c->socket_path, path);
        assert_int_equal(c->max_connections, 3);
        gh_config_free(c);

        /* 199 characters: refused at that line, with or without newline. */
        memset(text, 0, sizeof(text));
        strcpy(text, "[limits]\nmax_connections = 9\n#");
        memset(text + strlen(text), 'x', 198);
        expect_error(text, 3, "", "line too long");
        strcat(text, "\n[limits]\n");
        assert_int_equal(expect_error(text, 3, "", "line too long (at most 198 characters)"), -EINVAL);

        /* Much longer. */
        memset(text, 0, sizeof(text));
        strcpy(text, "[limits]\nmax_connections = 1");
        memset(text + strlen(text), '0', 600);
        strcat(text, "\n");
        expect_error(text, 2, "", "line too long");
}

static void test_nul_byte(void **state) {
        static const char text[] = "[limits]\nmax_connections = 10\nmax_json\0_depth = 5\n";

        assert_int_equal(expect_error_len(text, sizeof(text) - 1, 3, "", "NUL"), -EINVAL);
        /* NUL alone on a line, and at the very start. */
        static const char t2[] = "\0\n[limits]\n";
        expect_error_len(t2, sizeof(t2) - 1, 1, "", "NUL");
        static const char t3[] = "[limits]\n\n\n\0";
        expect_error_len(t3, sizeof(t3) - 1, 4, "", "NUL");
}

static void test_first_error_wins(void **state) {
        expect_error("[daemon]\nfoo = 1\nbar = 2\n", 2, "[daemon] foo", "unknown key");
        /* syntax error first, bad key later */
        expect_error("[daemon]\nnoequals\nfoo = 1\n", 2, "", "syntax error");
        /* bad key first, syntax error later */
        expect_error("[daemon]\nfoo = 1\nnoequals\n", 2, "[daemon] foo", "unknown key");
        /* bad value first, unknown section later */
        expect_error("[limits]\nmax_connections = 0\n[nosuch]\n", 2, "[limits] max_connections", "out of range");
        /* unknown section first, then a syntax error in it */
        expect_error("[nosuch]\nnoequals\n", 1, "[nosuch]", "unknown section");
        /* key outside section, then unknown key */
        expect_error("a = 1\n[daemon]\nb = 2\n", 1, "", "outside of a section");
        /* bad value, then too long line and NUL byte */
        char text[512];
        memset(text, 0, sizeof(text));
        strcpy(text, "[limits]\nmax_json_depth = 2\n#");
        memset(text + strlen(text), 'y', 300);
        expect_error(text, 2, "[limits] max_json_depth", "out of range");
        static const char nul[] = "[limits]\nbogus = 1\nx\0\n";
        expect_error_len(nul, sizeof(nul) - 1, 2, "[limits] bogus", "unknown key");
        /* syntax error, then NUL byte */
        static const char nul2[] = "[limits]\nbogus\nx\0\n";
        expect_error_len(nul2, sizeof(nul2) - 1, 2, "", "syntax error");
}

static void test_indentation_and_comments(void **state) {
        gh_config *c = parse_ok("# a comment\n"
                                "; another comment\n"
                                "  [limits]\n"
                                "\tmax_connections = 10\n"
                                "    max_pending_requests = 7\n"
                                "  # indented comment\n"
                                "\t; indented comment\n"
                                "max_json_depth = 20 ; trailing comment\n"
                                "   \n"
                                "  [daemon]\n"
                                "     log_level=notice\n"
                                "[socket]\n"
                                "path=/tmp/x.sock\n"
                                "#path = /nope\n"
                                ";path = /nope\n");

        assert_int_equal(c->max_connections, 10);
        /* not taken as a continuation of max_connections */
        assert_int_equal(c->max_pending_requests, 7);
        assert_int_equal(c->max_json_depth, 20);
        assert_int_equal(c->log_level, LOG_NOTICE);
        assert_string_equal(c->socket_path, "/tmp/x.sock");
        gh_config_free(c);

        /* Indented bad keys still report their own line. */
        expect_error("[limits]\n  max_connections = 1\n    bogus = 2\n", 3, "[limits] bogus", "unknown key");
        /* CRLF line ends */
        c = parse_ok("[limits]\r\nmax_connections = 11\r\n");
        assert_int_equal(c->max_connections, 11);
        gh_config_free(c);
}

/* ---- loading files ------------------------------------------------------ */

static void test_load_main_and_dropins(void **state) {
        const char *dir = *state;
        char *main_path = path_join(dir, "gpuhost.conf"), *dropins = path_join(dir, "conf.d");
        char *a = path_join(dropins, "10-a.conf"), *b = path_join(dropins, "20-b.conf");
        char *upper = path_join(dropins, "A-upper.conf"), *lower = path_join(dropins, "a-lower.conf");
        char *p;

        assert_int_equal(mkdir(dropins, 0755), 0);
        write_file(main_path, "[limits]\nmax_connections = 100\nmax_pending_requests = 10\n"
                              "[socket]\npath = /tmp/main.sock\n");
        /* written out of order on purpose */
        write_file(b, "[limits]\nmax_connections = 300\n");
        write_file(a, "[limits]\nmax_connections = 200\nmax_json_depth = 20\nmax_fds_per_message = 5\n");
        write_file(lower, "[limits]\nmax_json_depth = 40\n");
        write_file(upper, "[limits]\nmax_json_depth = 30\nmax_fds_per_message = 6\n");
        /* ignored: hidden, not .conf, backup, bare ".conf" */
        static const char *const ignored[] = {".hidden.conf", "README", "30-c.conf.bak", "conf", "x.conf~",
                                              "99.CONF", "40-d.con"};
        for (size_t i = 0; i < ELEMENTSOF(ignored); i++) {
                p = path_join(dropins, ignored[i]);
                write_file(p, "this is not an ini file\n[nosuch]\n");
                free(p);
        }

        gh_config_error err = {};
        gh_config *c = NULL;
        int r = gh_config_load(NULL, main_path, dropins, &c, &err);
        if (r < 0)
                print_error("%s:%u: %s: %s\n", err.file, err.line, err.key, err.message);
        assert_int_equal(r, 0);
        assert_int_equal(c->max_connections, 300);       /* 20-b after 10-a after main */
        assert_int_equal(c->max_pending_requests, 10);   /* main only */
        assert_int_equal(c->max_json_depth, 40);         /* a-lower after A-upper (byte order) */
        assert_int_equal(c->max_fds_per_message, 6);     /* A-upper after 10-a */
        assert_string_equal(c->socket_path, "/tmp/main.sock");
        assert_int_equal(c->n_files, 5);
        assert_string_equal(c->files[0], main_path);
        assert_string_equal(c->files[1], a);
        assert_string_equal(c->files[2], b);
        assert_string_equal(c->files[3], upper);
        assert_string_equal(c->files[4], lower);

        /* The summary names the socket and the files, in order. */
        json_object *s = gh_config_summary(c), *v;
        assert_non_null(s);
        assert_true(json_object_object_get_ex(s, "socket", &v));
        assert_string_equal(json_object_get_string(v), "/tmp/main.sock");
        assert_true(json_object_object_get_ex(s, "files", &v));
        assert_int_equal(json_object_array_length(v), 5);
        assert_string_equal(json_object_get_string(json_object_array_get_idx(v, 0)), main_path);
        assert_string_equal(json_object_get_string(json_object_array_get_idx(v, 2)), b);
        assert_true(json_object_object_get_ex(s, "max_connections", &v));
        assert_int_equal(json_object_get_int64(v), 300);
        json_object_put(s);
        gh_config_free(c);

        /* Without the main file the drop-ins still apply. */
        assert_int_equal(unlink(main_path), 0);
        c = NULL;
        assert_int_equal(gh_config_load(NULL, main_path, dropins, &c, &err), 0);
        assert_int_equal(c->max_connections, 300);
        assert_int_equal(c->max_pending_requests, 32);
        assert_string_equal(c->socket_path, GH_DEFAULT_SOCKET);
        assert_int_equal(c->n_files, 4);
        assert_string_equal(c->files[0], a);
        gh_config_free(c);

        /* An error in a drop-in names that file and line; nothing is
         * returned. */
        write_file(b, "[limits]\nmax_connections = 300\n\nbogus = 1\n");
        c = NULL;
        memset(&err, 0, sizeof(err));
        assert_int_equal(gh_config_load(NULL, main_path, dropins, &c, &err), -EINVAL);
        assert_null(c);
        assert_string_equal(err.file, b);
        assert_int_equal(err.line, 4);
        assert_string_equal(err.key, "[limits] bogus");

        /* A cross-key error found after all files names the last file. */
        write_file(b, "[limits]\nmax_connections = 5\nmax_connections_per_user = 6\n");
        memset(&err, 0, sizeof(err));
        assert_int_equal(gh_config_load(NULL, main_path, dropins, &c, &err), -EINVAL);
        assert_null(c);
        assert_string_equal(err.key, "[limits] max_connections_per_user");
        assert_string_equal(err.file, lower);

        free(main_path);
        free(dropins);
        free(a);
        free(b);
        free(upper);
        free(lower);
}

static void test_load_override(void **state) {
        const char *dir = *state;
        char *main_path = path_join(dir, "gpuhost.conf"), *dropins = path_join(dir, "conf.d");
        char *override = path_join(dir, "override.conf"), *missing = path_join(dir, "missing.conf");
        char *d = path_join(dropins, "10-a.conf");
        gh_config_error err = {};
        gh_config *c = NULL;

        assert_int_equal(mkdir(dropins, 0755), 0);
        write_file(main_path, "[limits]\nmax_connections = 100\n");
        write_file(d, "[limits]\nmax_pending_requests = 3\n");
        write_file(override, "[limits]\nmax_json_depth = 8\n");

        /* -c PATH replaces the main file and the drop-ins. */
        assert_int_equal(gh_config_load(override, main_path, dropins, &c, &err), 0);
        assert_int_equal(c->max_json_depth, 8);
        assert_int_equal(c->max_connections, 256);
        assert_int_equal(c->max_pending_requests, 32);
        assert_int_equal(c->n_files, 1);
        assert_string_equal(c->files[0], override);
        gh_config_free(c);

        /* A missing override file is an error about the file (line 0). */
        c = NULL;
        memset(&err, 0, sizeof(err));
        assert_int_equal(gh_config_load(missing, main_path, dropins, &c, &err), -ENOENT);
        assert_null(c);
        assert_string_equal(err.file, missing);
        assert_int_equal(err.line, 0);
        assert_string_equal(err.key, "");
        assert_non_null(strstr(err.message, strerror(ENOENT)));

        char buf[512], want[512];
        gh_config_error_format(&err, buf, sizeof(buf));
        snprintf(want, sizeof(want), "%s: %s", missing, strerror(ENOENT));
        assert_string_equal(buf, want);

        /* A directory as the -c file. */
        memset(&err, 0, sizeof(err));
        assert_int_equal(gh_config_load(dropins, main_path, dropins, &c, &err), -EINVAL);
        assert_null(c);
        assert_string_equal(err.file, dropins);
        assert_int_equal(err.line, 0);
        assert_non_null(strstr(err.message, "not a regular file"));

        /* An error in the override file. */
        write_file(override, "[limits]\nmax_json_depth = 2000\n");
        memset(&err, 0, sizeof(err));
        assert_int_equal(gh_config_load(override, main_path, dropins, &c, &err), -ERANGE);
        assert_null(c);
        assert_string_equal(err.file, override);
        assert_int_equal(err.line, 2);
        assert_string_equal(err.key, "[limits] max_json_depth");

        free(main_path);
        free(dropins);
        free(override);
        free(missing);
        free(d);
}

static void test_load_file_size_limit(void **state) {
        const char *dir = *state;
        char *path = path_join(dir, "big.conf");
        size_t size = 1024 * 1024;
        char *text = malloc(size + 2);
        gh_config_error err = {};
        gh_config *c = NULL;

        assert_non_null(text);
        /* Exactly 1 MiB of 64-byte comment lines, then a key line that
         * makes it one byte too many. */
        for (size_t i = 0; i < size; i += 64) {
                text[i] = '#';
                memset(text + i + 1, 'c', 62);
                text[i + 63] = '\n';
        }
        memcpy(text, "[limits]\n", 9); /* first line: section, then '#'+ccc */
        text[9] = '#';
        text[size] = 0;
        assert_int_equal(strlen(text), size);
        write_file(path, text);
        assert_int_equal(gh_config_load(path, NULL, NULL, &c, &err), 0);
        assert_config_is_default(c);
        gh_config_free(c);

        text[size] = '\n';
        text[size + 1] = 0;
        write_file(path, text);
        c = NULL;
        memset(&err, 0, sizeof(err));
        assert_int_equal(gh_config_load(path, NULL, NULL, &c, &err), -EFBIG);
        assert_null(c);
        assert_string_equal(err.file, path);
        assert_int_equal(err.line, 0);
        assert_non_null(strstr(err.message, "too large"));

        /* Also as the main file: too large is an error, not "absent". */
        memset(&err, 0, sizeof(err));
        char *dropins = path_join(dir, "conf.d");
        assert_int_equal(gh_config_load(NULL, path, dropins, &c, &err), -EFBIG);
        assert_null(c);
        free(dropins);
        free(text);
        free(path);
}

/* ---- verify ------------------------------------------------------------- */

static void test_verify(void **state) {
        gh_config_error err = {};
        gh_config *c = NULL;

        /* Defaults verify, groups unresolved. */
        assert_int_equal(gh_config_new(&c), 0);
        assert_int_equal(gh_config_verify(c, &err), 0);
        assert_int_equal(c->socket_gid, (gid_t) -1);
        assert_int_equal(c->admin_gid, (gid_t) -1);

        /* per-user limit above the total */
        c->max_connections = 10;
        c->max_connections_per_user = 11;
        assert_int_equal(gh_config_verify(c, &err), -EINVAL);
        assert_string_equal(err.key, "[limits] max_connections_per_user");
        assert_string_equal(err.file, "(defaults)");
        assert_int_equal(err.line, 0);
        assert_non_null(strstr(err.message, "max_connections"));
        c->max_connections_per_user = 10; /* equal is fine */
        assert_int_equal(gh_config_verify(c, &err), 0);
        gh_config_free(c);

        /* The same through parsing. */
        c = parse_ok("[limits]\nmax_connections = 4\nmax_connections_per_user = 5\n");
        assert_int_equal(gh_config_verify(c, &err), -EINVAL);
        gh_config_free(c);

        /* Groups are resolved: root is gid 0. */
        c = parse_ok("[socket]\ngroup = root\n[daemon]\nadmin_group = root\n");
        assert_int_equal(gh_config_verify(c, &err), 0);
        assert_int_equal(c->socket_gid, 0);
        assert_int_equal(c->admin_gid, 0);
        gh_config_free(c);

        /* Nonexistent groups. */
        c = parse_ok("[socket]\ngroup = no-such-group-xyz\n");
        memset(&err, 0, sizeof(err));
        assert_int_equal(gh_config_verify(c, &err), -ENOENT);
        assert_string_equal(err.key, "[socket] group");
        assert_non_null(strstr(err.message, "no such group"));
        assert_non_null(strstr(err.message, "no-such-group-xyz"));
        gh_config_free(c);

        c = parse_ok("[daemon]\nadmin_group = no-such-group-xyz\n");
        memset(&err, 0, sizeof(err));
        assert_int_equal(gh_config_verify(c, &err), -ENOENT);
        assert_string_equal(err.key, "[daemon] admin_group");
        assert_non_null(strstr(err.message, "no-such-group-xyz"));
        gh_config_free(c);
}

static void test_load_verifies(void **state) {
        const char *dir = *state;
        char *path = path_join(dir, "g.conf");
        gh_config_error err = {};
        gh_config *c = NULL;

        write_file(path, "[socket]\ngroup = no-such-group-xyz\n");
        assert_int_equal(gh_config_load(path, NULL, NULL, &c, &err), -ENOENT);
        assert_null(c);
        assert_string_equal(err.file, path);
        assert_string_equal(err.key, "[socket] group");

        write_file(path, "[socket]\ngroup = root\n");
        assert_int_equal(gh_config_load(path, NULL, NULL, &c, &err), 0);
        assert_int_equal(c->socket_gid, 0);
        gh_config_free(c);
        free(path);
}

/* ---- formatting ----------------------------------------------------------- */

static void test_error_format(void **state) {
        gh_config_error err;
        gh_config *c = NULL;
        char buf[512];

        assert_int_equal(parse("[limits]\n\nmax_connections = 0\n", &c, &err), -ERANGE);
        gh_config_error_format(&err, buf, sizeof(buf));
        assert_string_equal(buf, "test.conf:3: [limits] max_connections: out of range (allowed 1..65536)");
        gh_config_free(c);

        assert_int_equal(parse("[daemon]\nfoo\n", &c, &err), -EINVAL);
        gh_config_error_format(&err, buf, sizeof(buf));
        assert_string_equal(buf, "test.conf:2: syntax error (expected [section] or key = value)");
        gh_config_free(c);

        assert_int_equal(parse("[x]\n", &c, &err), -EINVAL);
        gh_config_error_format(&err, buf, sizeof(buf));
        assert_string_equal(buf, "test.conf:1: [x]: unknown section");
        gh_config_free(c);

        gh_config_error e = {.file = "a.conf", .line = 0, .key = "", .message = "gone"};
        gh_config_error_format(&e, buf, sizeof(buf));
        assert_string_equal(buf, "a.conf: gone");

        /* Truncates safely. */
        gh_config_error_format(&e, buf, 4);
        assert_string_equal(buf, "a.c");

        /* JSON form carries the same fields. */
        gh_config_error e2 = {.file = "b.conf", .line = 7, .key = "[socket] path", .message = "m"};
        json_object *o = gh_config_error_to_json(&e2), *v;
        assert_true(json_object_object_get_ex(o, "file", &v));
        assert_string_equal(json_object_get_string(v), "b.conf");
        assert_true(json_object_object_get_ex(o, "line", &v));
        assert_int_equal(json_object_get_int64(v), 7);
        assert_true(json_object_object_get_ex(o, "key", &v));
        assert_string_equal(json_object_get_string(v), "[socket] path");
        assert_true(json_object_object_get_ex(o, "message", &v));
        assert_string_equal(json_object_get_string(v), "m");
        json_object_put(o);
}

static void test_devices_and_models(void **state) {
        gh_config *c = parse_ok("[devices]\ninclude = 0, GPU-12345678-1234-1234-1234-123456789abc\nexclude = 1\nreserve = 10%\n"
                                "slab_size = 64M\ncpu = no\ncpu_memory = 8G\n"
                                "[models]\ndirectory = /srv/models\n"
                                "[model sd15]\npath = /srv/a.safetensors\ndtype = fp16\npinned = yes\n"
                                "[model demo-2.x]\npath = /srv/demo\ndevices = 0\ntokenizer = /srv/tok2\n"
                                "[model sd15]\ndtype = keep\n[models]\ntokenizer = /srv/tok\n");
        gh_config_error err;

        assert_string_equal(c->devices_include, "0, GPU-12345678-1234-1234-1234-123456789abc");
        assert_string_equal(c->devices_exclude, "1");
        assert_string_equal(c->devices_reserve, "10%");
        assert_int_equal(c->slab_size, 64 * MiB);
        assert_false(c->cpu_enabled);
        assert_int_equal(c->cpu_memory, 8192 * MiB);
        assert_string_equal(c->models_directory, "/srv/models");
        assert_string_equal(c->models_tokenizer, "/srv/tok");
        assert_int_equal(c->n_models, 2);
        assert_string_equal(c->models[0].name, "sd15");
        assert_string_equal(c->models[0].path, "/srv/a.safetensors");
        assert_null(c->models[0].dtype); /* the later "keep" wins */
        assert_true(c->models[0].pinned);
        assert_int_equal(c->models[0].line, 10);
        assert_string_equal(c->models[1].name, "demo-2.x");
        assert_string_equal(c->models[1].devices, "0");
        assert_false(c->models[1].pinned);
        assert_null(c->models[0].tokenizer);
        assert_string_equal(c->models[1].tokenizer, "/srv/tok2");
        assert_int_equal(gh_config_verify(c, &err), 0);
        /* An empty tokenizer is none; a later file's value replaces it. */
        const char *more = "[models]\ntokenizer =\n[model demo-2.x]\ntokenizer = /srv/tok3\n";
        assert_int_equal(gh_config_parse_string(c, more, strlen(more), "more.conf", &err), 0);
        assert_null(c->models_tokenizer);
        assert_string_equal(c->models[1].tokenizer, "/srv/tok3");
        gh_config_free(c);
        expect_error("[models]\ntokenizer = tok\n", 2, "[models] tokenizer", "absolute");
        expect_error("[model a]\npath = /x\ntokenizer = tok\n", 3, "[model a] tokenizer", "absolute");

        /* Job parameter defaults: a JSON object of scalars, kept as plain
         * JSON text; empty is none. */
        c = parse_ok("[model a]\npath = /x\nparameters = { \"width\" : 64, \"sampler\": \"euler\", "
                     "\"cfg_scale\": 5.5, \"hires\": true }\n");
        assert_string_equal(c->models[0].parameters,
                            "{\"width\":64,\"sampler\":\"euler\",\"cfg_scale\":5.5,\"hires\":true}");
        const char *none = "[model a]\nparameters =\n";
        assert_int_equal(gh_config_parse_string(c, none, strlen(none), "none.conf", &err), 0);
        assert_null(c->models[0].parameters);
        gh_config_free(c);
        expect_error("[model a]\nparameters = width=64\n", 2, "[model a] parameters", "JSON object");
        expect_error("[model a]\nparameters = [64]\n", 2, "[model a] parameters", "JSON object");
        expect_error("[model a]\nparameters = {\"w\": 1} x\n", 2, "[model a] parameters", "JSON object");
        expect_error("[model a]\nparameters = {\"w\": {\"x\": 1}}\n", 2, "[model a] parameters",
                     "string, a number or a boolean");
        expect_error("[model a]\nparameters = {\"w\": null}\n", 2, "[model a] parameters",
                     "string, a number or a boolean");
        expect_error("[model a]\nparameters = {\"model\": \"b\"}\n", 2, "[model a] parameters", "itself");

        expect_error("[model a]\npath = relative\n", 2, "[model a] path", "absolute");
        expect_error("[model a]\nsize = 1\n", 2, "[model a] size", "unknown key");
        expect_error("[model a]\ndtype = int8\n", 2, "[model a] dtype", "not a dtype");
        expect_error("[model a]\npinned = maybe\n", 2, "[model a] pinned", "boolean");
        expect_error("[model]\n", 1, "[model]", "unknown section");
        expect_error("[model ../x]\n", 1, "[model ../x]", "unknown section");
        expect_error("[model a b]\n", 1, "[model a b]", "unknown section");
        expect_error("[devices]\ncpu = 2\n", 2, "[devices] cpu", "boolean");
        expect_error("[devices]\nslab_size = 1M\n", 2, "[devices] slab_size", "out of range");
        expect_error("[models]\ndirectory = models\n", 2, "[models] directory", "absolute");

        /* Device lists and reserves are checked before use. */
        gh_devices_config dc;
        c = parse_ok("[devices]\ninclude = 0 1\nreserve = 10%\nreserve_per_device = 1:4G, GPU-12345678-1234-1234-1234-123456789abc:20%\n");
        assert_int_equal(gh_config_devices(c, &dc, &err), 0);
        assert_int_equal(dc.n_include, 2);
        assert_int_equal(dc.reserve.unit, GH_RESERVE_PERCENT);
        assert_int_equal(dc.n_reserve_overrides, 2);
        assert_int_equal(dc.reserve_overrides[0].reserve.value, 4096 * MiB);
        assert_true(dc.reserve_overrides[1].device.is_uuid);
        gh_config_free(c);
        expect_error("[devices]\ninclude = zero\n", 2, "[devices] include", "");
        expect_error("[devices]\nreserve = 200%\n", 2, "[devices] reserve", "");
        expect_error("[devices]\nreserve_per_device = 4G\n", 2, "[devices] reserve_per_device", "SELECTOR:RESERVE");
        expect_error("[devices]\nreserve_per_device = x:4G\n", 2, "[devices] reserve_per_device", "");
        expect_error("[model a]\npath = /x\ndevices = 0 nope\n", 3, "[model a] devices", "");


        /* A model without a path, even an empty section, fails verification
         * at the line that declared it. */
        c = parse_ok("[daemon]\nlog_level = info\n[model empty]\n");
        assert_int_equal(gh_config_verify(c, &err), -EINVAL);
        assert_int_equal(err.line, 3);
        assert_string_equal(err.key, "[model empty] path");
        gh_config_free(c);
        c = parse_ok("[devices]\nslab_size = 3M\n");
        assert_int_equal(gh_config_verify(c, &err), -EINVAL);
        assert_string_equal(err.key, "[devices] slab_size");
        gh_config_free(c);
}

static void test_summary(void **state) {
        gh_config *c = parse_ok("[socket]\npath = /tmp/sum.sock\n[daemon]\nlog_level = warning\n"
                                "[limits]\nidle_timeout_sec = 42\n");
        json_object *s = gh_config_summary(c), *v;

        assert_true(json_object_object_get_ex(s, "socket", &v));
        assert_string_equal(json_object_get_string(v), "/tmp/sum.sock");
        assert_true(json_object_object_get_ex(s, "files", &v));
        assert_true(json_object_is_type(v, json_type_array));
        assert_int_equal(json_object_array_length(v), 0);
        assert_true(json_object_object_get_ex(s, "log_level", &v));
        assert_string_equal(json_object_get_string(v), "warning");
        assert_true(json_object_object_get_ex(s, "idle_timeout_sec", &v));
        assert_int_equal(json_object_get_int64(v), 42);
        const char *str = json_object_to_json_string_ext(s, JSON_C_TO_STRING_PLAIN | JSON_C_TO_STRING_NOSLASHESCAPE);
        assert_non_null(strstr(str, "/tmp/sum.sock"));
        json_object_put(s);
        gh_config_free(c);
}

/* ---- the shipped configuration file ---------------------------------------- */

/* The shipped file as the build configured it (etc/gpuhost.conf.in). */
static char *shipped_conf_path(void) {
        const char *path = getenv("GH_SHIPPED_CONF");

        return path && *path ? strdup(path) : NULL;
}

/* Its one declared model: the demo model at its install path. */
static void assert_demo_model(const gh_config *c) {
        const char *want = getenv("GH_SHIPPED_DEMO");

        assert_non_null(want);
        assert_int_equal(c->n_models, 2);
        assert_string_equal(c->models[0].name, "demo");
        assert_string_equal(c->models[0].path, want);
        assert_null(c->models[0].tokenizer);
        assert_string_equal(c->models[0].parameters, "{\"width\":64,\"height\":64}");
        /* its motion module, a file beside the model's folder */
        char *motion = NULL;
        assert_true(asprintf(&motion, "%s-motion/demo-motion.safetensors", want) > 0);
        assert_string_equal(c->models[1].name, "demo-motion");
        assert_string_equal(c->models[1].path, motion);
        assert_null(c->models[1].parameters);
        free(motion);
}

static char *read_all(const char *path, size_t *ret_len) {
        FILE *f = fopen(path, "re");
        char *buf = NULL;
        size_t size = 0;

        assert_non_null(f);
        FILE *m = open_memstream(&buf, &size);
        assert_non_null(m);
        char chunk[4096];
        size_t n;
        while ((n = fread(chunk, 1, sizeof(chunk), f)) > 0)
                assert_int_equal(fwrite(chunk, 1, n, m), n);
        assert_int_equal(fclose(m), 0);
        fclose(f);
        *ret_len = size;
        return buf;
}

static void test_shipped_config(void **state) {
        char *path = shipped_conf_path();

        if (!path)
                skip();

        /* As shipped (all commented out but the demo model): the built-in
         * defaults. */
        gh_config_error err = {};
        gh_config *c = NULL;
        int r = gh_config_load(path, NULL, NULL, &c, &err);
        if (r < 0)
                print_error("%s:%u: %s: %s\n", err.file, err.line, err.key, err.message);
        assert_int_equal(r, 0);
        assert_globals_are_default(c);
        assert_demo_model(c);
        assert_int_equal(c->n_files, 1);
        gh_config_free(c);

        /* With every "#key = value" line uncommented: still the defaults,
         * so the documented defaults are the code's. */
        size_t len;
        char *text = read_all(path, &len);
        char *out = malloc(len + 1);
        assert_non_null(out);
        size_t o = 0, uncommented = 0;
        for (const char *p = text; p < text + len;) {
                const char *nl = memchr(p, '\n', (size_t) (text + len - p));
                const char *end = nl ? nl + 1 : text + len;
                const char *q = p + 1;
                while (q < end && (*q == '_' || (*q >= 'a' && *q <= 'z')))
                        q++;
                if (*p == '#' && q > p + 1 && end - q >= 2 && q[0] == ' ' && q[1] == '=') {
                        p++; /* drop the '#' */
                        uncommented++;
                }
                memcpy(out + o, p, (size_t) (end - p));
                o += (size_t) (end - p);
                p = end;
        }
        /* One line per key of the table: 3 daemon, 2 socket, 8 limits,
         * 7 devices, 2 models, 7 workers, 6 jobs, 1 metrics. */
        assert_int_equal(uncommented, 43);

        assert_int_equal(gh_config_new(&c), 0);
        r = gh_config_parse_string(c, out, o, path, &err);
        if (r < 0)
                print_error("%s:%u: %s: %s\n", err.file, err.line, err.key, err.message);
        assert_int_equal(r, 0);
        assert_globals_are_default(c);
        assert_demo_model(c);
        assert_int_equal(gh_config_verify(c, &err), 0);
        gh_config_free(c);

        /* Sanity check that the uncommented text does set values: a
         * changed default would be noticed. */
        assert_non_null(strstr(out, "\nmax_message_size = 1M\n"));

        free(out);
        free(text);
        free(path);
}

int main(void) {
        const struct CMUnitTest tests[] = {
                cmocka_unit_test(test_defaults),
                cmocka_unit_test_setup_teardown(test_load_nothing_gives_defaults, setup_tmpdir, teardown_tmpdir),
                cmocka_unit_test(test_all_keys),
                cmocka_unit_test(test_sizes),
                cmocka_unit_test(test_seconds),
                cmocka_unit_test(test_log_levels),
                cmocka_unit_test(test_numeric_ranges),
                cmocka_unit_test(test_bad_numbers),
                cmocka_unit_test(test_socket_path),
                cmocka_unit_test(test_metrics_listen),
                cmocka_unit_test(test_group_names),
                cmocka_unit_test(test_unknown_key_and_section),
                cmocka_unit_test(test_key_outside_section),
                cmocka_unit_test(test_syntax_errors),
                cmocka_unit_test(test_long_lines),
                cmocka_unit_test(test_nul_byte),
                cmocka_unit_test(test_first_error_wins),
                cmocka_unit_test(test_indentation_and_comments),
                cmocka_unit_test_setup_teardown(test_load_main_and_dropins, setup_tmpdir, teardown_tmpdir),
                cmocka_unit_test_setup_teardown(test_load_override, setup_tmpdir, teardown_tmpdir),
                cmocka_unit_test_setup_teardown(test_load_file_size_limit, setup_tmpdir, teardown_tmpdir),
                cmocka_unit_test(test_verify),
                cmocka_unit_test_setup_teardown(test_load_verifies, setup_tmpdir, teardown_tmpdir),
                cmocka_unit_test(test_error_format),
                cmocka_unit_test(test_devices_and_models),
                cmocka_unit_test(test_summary),
                cmocka_unit_test(test_shipped_config),
        };

        return cmocka_run_group_tests(tests, NULL, NULL);
}

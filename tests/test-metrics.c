/* Unit tests of the metrics registry (daemon/gpuhostd/metrics.c): the
 * Prometheus text rendering byte for byte, number formatting, label
 * escaping and hostile label values, cumulative histogram buckets, the cap
 * on label sets with its overflow series, errors (unknown family, wrong
 * type, bad declarations), the collector, and gpuhostd's families. */
#include <stdarg.h>
#include <stddef.h>
#include <setjmp.h>
#include <cmocka.h>
#include <errno.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "gpuhostd/metrics-gpuhost.h"
#include "gpuhostd/metrics.h"

static const double buckets3[] = {0.1, 1, 10};

static char *render(gh_metrics *m) {
        char *text = NULL;
        size_t len = 0;

        assert_int_equal(gh_metrics_render(m, &text, &len), 0);
        assert_non_null(text);
        assert_int_equal(strlen(text), len);
        return text;
}

static void assert_render(gh_metrics *m, const char *expected) {
        char *text = render(m);

        if (strcmp(text, expected) != 0)
                print_error("rendered:\n%s\nexpected:\n%s\n", text, expected);
        assert_string_equal(text, expected);
        free(text);
}

/* ---- a small exposition-format checker ---- */

static const char *skip_name(const char *p, bool colon) {
        const char *s = p;

        while ((*p >= 'a' && *p <= 'z') || (*p >= 'A' && *p <= 'Z') || *p == '_' || (colon && *p == ':') ||
               (p > s && *p >= '0' && *p <= '9'))
                p++;
        return p > s ? p : NULL;
}

static bool label_block_ok(const char **pp) {
        const char *p = *pp;

        if (*p != '{')
                return true;
        p++;
        while (*p != '}') {
                if (!(p = skip_name(p, false)) || *p++ != '=' || *p++ != '"')
                        return false;
                while (*p != '"') {
                        if (*p == 0 || *p == '\n')
                                return false;
                        if (*p == '\\') {
                                p++;
                                if (*p != '\\' && *p != '"' && *p != 'n')
                                        return false;
                        }
                        p++;
                }
                p++;
                if (*p == ',')
                        p++;
                else if (*p != '}')
                        return false;
        }
        *pp = p + 1;
        return true;
}

static bool sample_line_ok(const char *line) {
        const char *p = skip_name(line, true);
        char *end;

        if (!p || !label_block_ok(&p) || *p++ != ' ')
                return false;
        if (strcmp(p, "+Inf") == 0 || strcmp(p, "-Inf") == 0 || strcmp(p, "NaN") == 0)
                return true;
        strtod(p, &end);
        return end > p && *end == 0;
}

/* Every line is a HELP, a TYPE or a well-formed sample; the text ends
 * with a newline. */
static void assert_exposition_valid(const char *text) {
        char *copy = strdup(text), *save = NULL;

        assert_non_null(copy);
        assert_true(text[0] == 0 || text[strlen(text) - 1] == '\n');
        for (char *line = strtok_r(copy, "\n", &save); line; line = strtok_r(NULL, "\n", &save)) {
                bool ok = strncmp(line, "# HELP ", 7) == 0 || strncmp(line, "# TYPE ", 7) == 0 ||
                          sample_line_ok(line);
                if (!ok)
                        print_error("bad line: %s\n", line);
                assert_true(ok);
        }
        free(copy);
}

/* ---- tests ---- */

static void test_render_empty_families(void **state) {
        gh_metrics *m = NULL;

        assert_int_equal(gh_metrics_new(&m), 0);
        assert_render(m, "");
        assert_int_equal(gh_metrics_declare(m, "c_total", GH_METRIC_COUNTER, "A counter.", NULL, 0), 0);
        assert_int_equal(gh_metrics_declare(m, "g", GH_METRIC_GAUGE, "A gauge.", NULL, 0), 0);
        assert_int_equal(gh_metrics_declare(m, "h_seconds", GH_METRIC_HISTOGRAM, "A histogram.", buckets3, 3), 0);
        assert_render(m, "# HELP c_total A counter.\n# TYPE c_total counter\n"
                         "# HELP g A gauge.\n# TYPE g gauge\n"
                         "# HELP h_seconds A histogram.\n# TYPE h_seconds histogram\n");
        gh_metrics_free(m);
}

static void test_counter_and_gauge(void **state) {
        gh_metrics *m = NULL;
        char l[256];
        double v;

        assert_int_equal(gh_metrics_new(&m), 0);
        assert_int_equal(gh_metrics_declare(m, "jobs_total", GH_METRIC_COUNTER, "Jobs.", NULL, 0), 0);
        assert_int_equal(gh_metrics_declare(m, "depth", GH_METRIC_GAUGE, "Depth.", NULL, 0), 0);
        assert_int_equal(gh_metrics_labels(l, sizeof(l), "pipeline", "txt2img", NULL), 18);
        assert_string_equal(l, "pipeline=\"txt2img\"");
        assert_int_equal(gh_metrics_inc(m, "jobs_total", l, 1), 0);
        assert_int_equal(gh_metrics_inc(m, "jobs_total", l, 2), 0);
        assert_int_equal(gh_metrics_inc(m, "jobs_total", "pipeline=\"img2img\"", 0.5), 0);
        assert_int_equal(gh_metrics_inc(m, "jobs_total", NULL, 0), 0); /* no labels */
        assert_int_equal(gh_metrics_set(m, "depth", "device=\"0\"", 7), 0);
        assert_int_equal(gh_metrics_inc(m, "depth", "device=\"0\"", -2), 0); /* gauges go down */
        assert_int_equal(gh_metrics_set(m, "depth", "device=\"1\"", INFINITY), 0);
        assert_int_equal(gh_metrics_set(m, "depth", "device=\"2\"", -INFINITY), 0);
        assert_int_equal(gh_metrics_set(m, "depth", "device=\"3\"", 1e300), 0);
        assert_int_equal(gh_metrics_set(m, "depth", "device=\"4\"", 0.1), 0);
        assert_int_equal(gh_metrics_get(m, "jobs_total", l, &v), 0);
        assert_true(v == 3);
        assert_int_equal(gh_metrics_get(m, "depth", "device=\"0\"", &v), 0);
        assert_true(v == 5);
        /* Series sorted by label text; the unlabelled one first. */
        assert_render(m, "# HELP jobs_total Jobs.\n# TYPE jobs_total counter\n"
                         "jobs_total 0\n"
                         "jobs_total{pipeline=\"img2img\"} 0.5\n"
                         "jobs_total{pipeline=\"txt2img\"} 3\n"
                         "# HELP depth Depth.\n# TYPE depth gauge\n"
                         "depth{device=\"0\"} 5\n"
                         "depth{device=\"1\"} +Inf\n"
                         "depth{device=\"2\"} -Inf\n"
                         "depth{device=\"3\"} 1e+300\n"
                         "depth{device=\"4\"} 0.1\n");
        gh_metrics_free(m);
}

static void test_numbers_round_trip(void **state) {
        static const double values[] = {0.1, 1.0 / 3, 2.5e-7, 123456789.125, 1e15, 9007199254740993.0, 4e-320};
        gh_metrics *m = NULL;
        char l[64];

        assert_int_equal(gh_metrics_new(&m), 0);
        assert_int_equal(gh_metrics_declare(m, "g", GH_METRIC_GAUGE, "G.", NULL, 0), 0);
        for (size_t i = 0; i < sizeof(values) / sizeof(values[0]); i++) {
                snprintf(l, sizeof(l), "i=\"%zu\"", i);
                assert_int_equal(gh_metrics_set(m, "g", l, values[i]), 0);
        }
        char *text = render(m), *p = text;
        for (size_t i = 0; i < sizeof(values) / sizeof(values[0]); i++) {
                snprintf(l, sizeof(l), "g{i=\"%zu\"} ", i);
                p = strstr(text, l);
                assert_non_null(p);
                assert_true(strtod(p + strlen(l), NULL) == values[i]);
        }
        assert_non_null(strstr(text, "g{i=\"0\"} 0.1\n"));
        assert_non_null(strstr(text, "g{i=\"3\"} 123456789.125\n"));
        free(text);
        gh_metrics_free(m);
}

static void test_histogram_cumulative(void **state) {
        gh_metrics *m = NULL;
        double v;

        assert_int_equal(gh_metrics_new(&m), 0);
        assert_int_equal(gh_metrics_declare(m, "run_seconds", GH_METRIC_HISTOGRAM, "Run time.", buckets3, 3), 0);
        /* 0.05 and 0.1 (a bound is inclusive) in le=0.1; 0.5 in le=1; 10
         * in le=10; 11 and 1000 only in +Inf. */
        const double obs[] = {0.05, 0.1, 0.5, 10, 11, 1000};
        for (size_t i = 0; i < 6; i++)
                assert_int_equal(gh_metrics_observe(m, "run_seconds", "pipeline=\"a\"", obs[i]), 0);
        assert_int_equal(gh_metrics_observe(m, "run_seconds", NULL, -1), 0); /* below every bound */
        assert_int_equal(gh_metrics_get(m, "run_seconds", "pipeline=\"a\"", &v), 0);
        assert_true(v == 6);
        assert_render(m, "# HELP run_seconds Run time.\n# TYPE run_seconds histogram\n"
                         "run_seconds_bucket{le=\"0.1\"} 1\n"
                         "run_seconds_bucket{le=\"1\"} 1\n"
                         "run_seconds_bucket{le=\"10\"} 1\n"
                         "run_seconds_bucket{le=\"+Inf\"} 1\n"
                         "run_seconds_sum -1\n"
                         "run_seconds_count 1\n"
                         "run_seconds_bucket{pipeline=\"a\",le=\"0.1\"} 2\n"
                         "run_seconds_bucket{pipeline=\"a\",le=\"1\"} 3\n"
                         "run_seconds_bucket{pipeline=\"a\",le=\"10\"} 4\n"
                         "run_seconds_bucket{pipeline=\"a\",le=\"+Inf\"} 6\n"
                         "run_seconds_sum{pipeline=\"a\"} 1021.65\n"
                         "run_seconds_count{pipeline=\"a\"} 6\n");
        gh_metrics_free(m);
}

static void test_labels_escaping(void **state) {
        char l[512];

        assert_true(gh_metrics_labels(l, sizeof(l), "a", "x\\y\"z\nw", NULL) > 0);
        assert_string_equal(l, "a=\"x\\\\y\\\"z\\nw\"");
        assert_true(gh_metrics_labels(l, sizeof(l), "a", "", "b", NULL, NULL) > 0);
        assert_string_equal(l, "a=\"\",b=\"\"");
        /* UTF-8 stays; invalid bytes and control characters become U+FFFD. */
        assert_true(gh_metrics_labels(l, sizeof(l), "n", "caf\xc3\xa9 \xe2\x9c\x93", NULL) > 0);
        assert_string_equal(l, "n=\"caf\xc3\xa9 \xe2\x9c\x93\"");
        assert_true(gh_metrics_labels(l, sizeof(l), "n", "a\xff" "b\xc3(\x1b[2J\r\x7f", NULL) > 0);
        assert_string_equal(l, "n=\"a\xef\xbf\xbd" "b\xef\xbf\xbd(\xef\xbf\xbd[2J\xef\xbf\xbd\xef\xbf\xbd\"");
        /* Overlong form and a surrogate. */
        assert_true(gh_metrics_labels(l, sizeof(l), "n", "\xc0\xaf\xed\xa0\x80", NULL) > 0);
        assert_null(strstr(l, "\xc0"));
        assert_null(strstr(l, "\xed"));
}

static void test_labels_limits(void **state) {
        char l[1100], small[8], value[600];

        /* Long values are cut to GH_METRICS_VALUE_MAX bytes ... */
        memset(value, 'v', sizeof(value) - 1);
        value[sizeof(value) - 1] = 0;
        assert_int_equal(gh_metrics_labels(l, sizeof(l), "p", value, NULL), (int) strlen("p=\"\"") + GH_METRICS_VALUE_MAX);
        /* ... at a character boundary. */
        for (size_t i = 0; i + 2 < sizeof(value); i += 3)
                memcpy(value + i, "\xe2\x9c\x93", 3);
        value[sizeof(value) - 1] = 0;
        int n = gh_metrics_labels(l, sizeof(l), "p", value, NULL);
        assert_int_equal(n, (int) strlen("p=\"\"") + GH_METRICS_VALUE_MAX / 3 * 3);
        /* Too small a buffer: -ENOBUFS and an empty string. */
        strcpy(small, "junk");
        assert_int_equal(gh_metrics_labels(small, sizeof(small), "pipeline", "x", NULL), -ENOBUFS);
        assert_string_equal(small, "");
        assert_int_equal(gh_metrics_labels(small, sizeof(small), "a", "bc", NULL), 6); /* a="bc" fits exactly */
        assert_int_equal(gh_metrics_labels(small, 0, "a", "b", NULL), -ENOBUFS);
        /* Bad label names. */
        assert_int_equal(gh_metrics_labels(l, sizeof(l), "9a", "x", NULL), -EINVAL);
        assert_string_equal(l, "");
        assert_int_equal(gh_metrics_labels(l, sizeof(l), "a-b", "x", NULL), -EINVAL);
        assert_int_equal(gh_metrics_labels(l, sizeof(l), "__name__", "x", NULL), -EINVAL);
        assert_int_equal(gh_metrics_labels(l, sizeof(l), "", "x", NULL), -EINVAL);
        assert_int_equal(gh_metrics_labels(l, sizeof(l), NULL), 0);
        assert_string_equal(l, "");
}

/* Values from plugins and clients, through the builder: every rendered
 * line stays well-formed. */
static void test_hostile_values_render(void **state) {
        static const char *const hostile[] = {
                "\"} 1\nfake_metric 666\n# TYPE x counter",
                "\\", "\\\"", "\n\n\n", "a\\nb", "}", "{", ",", "=", "le=\"1\"", "\xff\xfe\xfd", "\xf4\x90\x80\x80",
                "\xe2\x82", "\t\v\f\r\x01\x02", "# HELP", "\357\273\277bom" /* a BOM */,
        };
        gh_metrics *m = NULL;
        char l[GH_METRICS_LABELS_MAX + 1];

        assert_int_equal(gh_metrics_new(&m), 0);
        assert_int_equal(gh_metrics_declare(m, "c_total", GH_METRIC_COUNTER, "C.", NULL, 0), 0);
        assert_int_equal(gh_metrics_declare(m, "h", GH_METRIC_HISTOGRAM, "H.", buckets3, 3), 0);
        for (size_t i = 0; i < sizeof(hostile) / sizeof(hostile[0]); i++) {
                assert_true(gh_metrics_labels(l, sizeof(l), "pipeline", hostile[i], "reason", hostile[i], NULL) > 0);
                assert_int_equal(gh_metrics_inc(m, "c_total", l, 1), 0);
                assert_int_equal(gh_metrics_observe(m, "h", l, 1), 0);
        }
        char *text = render(m);
        assert_exposition_valid(text);
        assert_null(strstr(text, "\nfake_metric"));
        free(text);
        gh_metrics_free(m);
}

/* Label text given directly (not from the builder) is checked. */
static void test_malformed_label_text(void **state) {
        static const char *const bad[] = {
                "a=\"unterminated", "a=\"raw\nnewline\"", "a=\"bad\\escape\"", "a=unquoted", "a=\"x\",",
                "a=\"x\",a=\"y\"", "a=\"x\"b=\"y\"", "=\"x\"", "9=\"x\"", "__a=\"x\"", "a=\"\xff\"",
                "a=\"x\"}", "a=\"ctl\x01\"", " a=\"x\"", "a =\"x\"",
        };
        gh_metrics *m = NULL;
        double v;

        assert_int_equal(gh_metrics_new(&m), 0);
        assert_int_equal(gh_metrics_declare(m, "c_total", GH_METRIC_COUNTER, "C.", NULL, 0), 0);
        assert_int_equal(gh_metrics_declare(m, "h", GH_METRIC_HISTOGRAM, "H.", buckets3, 3), 0);
        for (size_t i = 0; i < sizeof(bad) / sizeof(bad[0]); i++) {
                if (gh_metrics_inc(m, "c_total", bad[i], 1) != -EINVAL)
                        print_error("accepted: %s\n", bad[i]);
                assert_int_equal(gh_metrics_inc(m, "c_total", bad[i], 1), -EINVAL);
        }
        /* "le" is the histogram's own label. */
        assert_int_equal(gh_metrics_observe(m, "h", "le=\"1\"", 1), -EINVAL);
        assert_int_equal(gh_metrics_inc(m, "c_total", "le=\"1\"", 1), 0);
        /* Seventeen labels are too many. */
        char many[512] = "";
        for (int i = 0; i < 17; i++)
                snprintf(many + strlen(many), sizeof(many) - strlen(many), "%sl%d=\"x\"", i ? "," : "", i);
        assert_int_equal(gh_metrics_inc(m, "c_total", many, 1), -EINVAL);
        assert_int_equal(gh_metrics_get(m, "c_total", "a=unquoted", &v), -ENOENT);
        char *text = render(m);
        assert_exposition_valid(text);
        assert_string_equal(text, "# HELP c_total C.\n# TYPE c_total counter\nc_total{le=\"1\"} 1\n"
                                  "# HELP h H.\n# TYPE h histogram\n");
        free(text);
        gh_metrics_free(m);
}

static void test_label_set_cap(void **state) {
        gh_metrics *m = NULL;
        char l[64];
        double v;

        assert_int_equal(gh_metrics_new(&m), 0);
        assert_int_equal(gh_metrics_declare(m, "errors_total", GH_METRIC_COUNTER, "E.", NULL, 0), 0);
        assert_int_equal(gh_metrics_declare(m, "overflow_total", GH_METRIC_COUNTER, "O.", NULL, 0), 0);
        assert_int_equal(gh_metrics_set_overflow_family(m, "overflow_total"), 0);
        for (int i = 0; i < GH_METRICS_SERIES_MAX + 100; i++) {
                snprintf(l, sizeof(l), "reason=\"e%04d\"", i);
                assert_int_equal(gh_metrics_inc(m, "errors_total", l, 1), 0);
        }
        /* A label set seen before the cap still gets its own series. */
        assert_int_equal(gh_metrics_inc(m, "errors_total", "reason=\"e0000\"", 1), 0);
        assert_int_equal(gh_metrics_get(m, "errors_total", "reason=\"e0000\"", &v), 0);
        assert_true(v == 2);
        assert_int_equal(gh_metrics_get(m, "errors_total", "reason=\"e0600\"", &v), -ENOENT);
        assert_int_equal(gh_metrics_get(m, "errors_total", GH_METRICS_OVERFLOW_LABELS, &v), 0);
        assert_true(v == 100);
        assert_int_equal(gh_metrics_overflows(m, "errors_total"), 100);
        assert_int_equal(gh_metrics_overflows(m, "overflow_total"), 0);
        assert_int_equal(gh_metrics_get(m, "overflow_total", "family=\"errors_total\"", &v), 0);
        assert_true(v == 100);
        /* Malformed text is refused, not sent to the overflow series. */
        assert_int_equal(gh_metrics_inc(m, "errors_total", "reason=\"x", 1), -EINVAL);
        assert_int_equal(gh_metrics_overflows(m, "errors_total"), 100);

        char *text = render(m);
        size_t lines = 0;
        for (const char *p = text; *p; p++)
                lines += *p == '\n';
        assert_int_equal(lines, 2 + GH_METRICS_SERIES_MAX + 1 + 2 + 1);
        /* The overflow series comes last in its family. */
        assert_non_null(strstr(text, "errors_total{reason=\"e0511\"} 1\nerrors_total{overflow=\"true\"} 100\n"));
        assert_non_null(strstr(text, "overflow_total{family=\"errors_total\"} 100\n"));
        assert_exposition_valid(text);
        free(text);
        /* Reset empties the family, cap and overflow included. */
        assert_int_equal(gh_metrics_reset(m, "errors_total"), 0);
        assert_int_equal(gh_metrics_overflows(m, "errors_total"), 0);
        assert_int_equal(gh_metrics_inc(m, "errors_total", "reason=\"new\"", 1), 0);
        assert_int_equal(gh_metrics_get(m, "errors_total", "reason=\"new\"", &v), 0);
        gh_metrics_free(m);
}

static void test_errors(void **state) {
        gh_metrics *m = NULL;
        double v;

        assert_int_equal(gh_metrics_new(&m), 0);
        assert_int_equal(gh_metrics_declare(m, "c_total", GH_METRIC_COUNTER, "C.", NULL, 0), 0);
        assert_int_equal(gh_metrics_declare(m, "g", GH_METRIC_GAUGE, "G.", NULL, 0), 0);
        assert_int_equal(gh_metrics_declare(m, "h", GH_METRIC_HISTOGRAM, "H.", buckets3, 3), 0);
        /* Unknown family. */
        assert_int_equal(gh_metrics_inc(m, "nope", NULL, 1), -ENOENT);
        assert_int_equal(gh_metrics_set(m, "nope", NULL, 1), -ENOENT);
        assert_int_equal(gh_metrics_observe(m, "nope", NULL, 1), -ENOENT);
        assert_int_equal(gh_metrics_get(m, "nope", NULL, &v), -ENOENT);
        assert_int_equal(gh_metrics_reset(m, "nope"), -ENOENT);
        assert_int_equal(gh_metrics_inc(m, NULL, NULL, 1), -ENOENT);
        /* Wrong type or value. */
        assert_int_equal(gh_metrics_observe(m, "c_total", NULL, 1), -EINVAL);
        assert_int_equal(gh_metrics_inc(m, "h", NULL, 1), -EINVAL);
        assert_int_equal(gh_metrics_set(m, "h", NULL, 1), -EINVAL);
        assert_int_equal(gh_metrics_inc(m, "c_total", NULL, -1), -EINVAL);
        assert_int_equal(gh_metrics_set(m, "c_total", NULL, -1), -EINVAL);
        assert_int_equal(gh_metrics_inc(m, "c_total", NULL, NAN), -EINVAL);
        assert_int_equal(gh_metrics_inc(m, "c_total", NULL, INFINITY), -EINVAL);
        assert_int_equal(gh_metrics_set(m, "g", NULL, NAN), -EINVAL);
        assert_int_equal(gh_metrics_observe(m, "h", NULL, NAN), -EINVAL);
        assert_int_equal(gh_metrics_set(m, "c_total", NULL, 42), 0); /* a counter kept elsewhere */
        assert_int_equal(gh_metrics_get(m, "c_total", NULL, &v), 0);
        assert_true(v == 42);
        assert_int_equal(gh_metrics_get(m, "g", NULL, &v), -ENOENT); /* no such series */
        /* Declarations. */
        assert_int_equal(gh_metrics_declare(m, "c_total", GH_METRIC_COUNTER, "again", NULL, 0), -EEXIST);
        assert_int_equal(gh_metrics_declare(m, "c_total", GH_METRIC_GAUGE, "again", NULL, 0), -EEXIST);
        assert_int_equal(gh_metrics_declare(m, "9bad", GH_METRIC_COUNTER, "x", NULL, 0), -EINVAL);
        assert_int_equal(gh_metrics_declare(m, "bad name", GH_METRIC_COUNTER, "x", NULL, 0), -EINVAL);
        assert_int_equal(gh_metrics_declare(m, "", GH_METRIC_COUNTER, "x", NULL, 0), -EINVAL);
        assert_int_equal(gh_metrics_declare(m, "ok:name", GH_METRIC_COUNTER, "x", NULL, 0), 0);
        assert_int_equal(gh_metrics_declare(m, "x", GH_METRIC_COUNTER, NULL, NULL, 0), -EINVAL);
        assert_int_equal(gh_metrics_declare(m, "x", GH_METRIC_COUNTER, "bad \xff", NULL, 0), -EINVAL);
        assert_int_equal(gh_metrics_declare(m, "x", GH_METRIC_COUNTER, "x", buckets3, 3), -EINVAL);
        assert_int_equal(gh_metrics_declare(m, "x", GH_METRIC_HISTOGRAM, "x", NULL, 0), -EINVAL);
        const double unsorted[] = {1, 0.5}, dup[] = {1, 1}, nan_b[] = {1, NAN}, inf_b[] = {1, INFINITY};
        assert_int_equal(gh_metrics_declare(m, "x", GH_METRIC_HISTOGRAM, "x", unsorted, 2), -EINVAL);
        assert_int_equal(gh_metrics_declare(m, "x", GH_METRIC_HISTOGRAM, "x", dup, 2), -EINVAL);
        assert_int_equal(gh_metrics_declare(m, "x", GH_METRIC_HISTOGRAM, "x", nan_b, 2), -EINVAL);
        assert_int_equal(gh_metrics_declare(m, "x", GH_METRIC_HISTOGRAM, "x", inf_b, 2), -EINVAL);
        double many[GH_METRICS_BUCKETS_MAX + 1];
        for (int i = 0; i <= GH_METRICS_BUCKETS_MAX; i++)
                many[i] = i;
        assert_int_equal(gh_metrics_declare(m, "x", GH_METRIC_HISTOGRAM, "x", many, GH_METRICS_BUCKETS_MAX + 1), -EINVAL);
        assert_int_equal(gh_metrics_declare(m, "x", GH_METRIC_HISTOGRAM, "x", many, GH_METRICS_BUCKETS_MAX), 0);
        assert_int_equal(gh_metrics_declare(m, "y", (gh_metric_type) 7, "x", NULL, 0), -EINVAL);
        assert_int_equal(gh_metrics_set_overflow_family(m, "nope"), -ENOENT);
        assert_int_equal(gh_metrics_set_overflow_family(m, "g"), -EINVAL);
        gh_metrics_free(m);

        /* The family cap. */
        assert_int_equal(gh_metrics_new(&m), 0);
        for (int i = 0; i < GH_METRICS_FAMILIES_MAX; i++) {
                char name[32];
                snprintf(name, sizeof(name), "f%d", i);
                assert_int_equal(gh_metrics_declare(m, name, GH_METRIC_GAUGE, "F.", NULL, 0), 0);
        }
        assert_int_equal(gh_metrics_declare(m, "one_more", GH_METRIC_GAUGE, "F.", NULL, 0), -E2BIG);
        gh_metrics_free(m);
}

static void test_help_escaping(void **state) {
        gh_metrics *m = NULL;

        assert_int_equal(gh_metrics_new(&m), 0);
        assert_int_equal(gh_metrics_declare(m, "g", GH_METRIC_GAUGE, "back\\slash \"quoted\"\nsecond line", NULL, 0), 0);
        assert_render(m, "# HELP g back\\\\slash \"quoted\"\\nsecond line\n# TYPE g gauge\n");
        gh_metrics_free(m);
}

static void test_null_registry(void **state) {
        double v;
        char *text = NULL;
        size_t len;

        assert_int_equal(gh_metrics_inc(NULL, "x", NULL, 1), 0);
        assert_int_equal(gh_metrics_set(NULL, "x", NULL, 1), 0);
        assert_int_equal(gh_metrics_observe(NULL, "x", NULL, 1), 0);
        assert_int_equal(gh_metrics_reset(NULL, "x"), 0);
        assert_int_equal(gh_metrics_get(NULL, "x", NULL, &v), -ENOENT);
        assert_int_equal(gh_metrics_overflows(NULL, "x"), 0);
        assert_int_equal(gh_metrics_render(NULL, &text, &len), -EINVAL);
        assert_null(text);
        gh_metrics_set_collector(NULL, NULL, NULL);
        assert_null(gh_metrics_free(NULL));
}

typedef struct collect_state {
        int calls;
} collect_state;

static void collect(gh_metrics *m, void *userdata) {
        collect_state *s = userdata;

        s->calls++;
        gh_metrics_set(m, "queue", "device=\"0\"", s->calls * 10);
}

static void test_collector(void **state) {
        gh_metrics *m = NULL;
        collect_state s = {0};

        assert_int_equal(gh_metrics_new(&m), 0);
        assert_int_equal(gh_metrics_declare(m, "queue", GH_METRIC_GAUGE, "Q.", NULL, 0), 0);
        gh_metrics_set_collector(m, collect, &s);
        assert_render(m, "# HELP queue Q.\n# TYPE queue gauge\nqueue{device=\"0\"} 10\n");
        assert_render(m, "# HELP queue Q.\n# TYPE queue gauge\nqueue{device=\"0\"} 20\n");
        assert_int_equal(s.calls, 2);
        gh_metrics_set_collector(m, NULL, NULL);
        assert_render(m, "# HELP queue Q.\n# TYPE queue gauge\nqueue{device=\"0\"} 20\n");
        gh_metrics_free(m);
}

/* The same samples in another order render the same text. */
static void test_deterministic(void **state) {
        gh_metrics *a = NULL, *b = NULL;
        const char *labels[] = {"p=\"z\"", "p=\"a\"", "p=\"m\"", "", "p=\"a\",q=\"b\""};

        assert_int_equal(gh_metrics_new(&a), 0);
        assert_int_equal(gh_metrics_new(&b), 0);
        assert_int_equal(gh_metrics_declare(a, "c_total", GH_METRIC_COUNTER, "C.", NULL, 0), 0);
        assert_int_equal(gh_metrics_declare(b, "c_total", GH_METRIC_COUNTER, "C.", NULL, 0), 0);
        for (int i = 0; i < 5; i++) {
                assert_int_equal(gh_metrics_inc(a, "c_total", labels[i], i + 1), 0);
                assert_int_equal(gh_metrics_inc(b, "c_total", labels[4 - i], 5 - i), 0);
        }
        char *ta = render(a), *tb = render(b);
        assert_string_equal(ta, tb);
        assert_string_equal(ta, "# HELP c_total C.\n# TYPE c_total counter\nc_total 4\nc_total{p=\"a\"} 2\n"
                                "c_total{p=\"a\",q=\"b\"} 5\nc_total{p=\"m\"} 3\nc_total{p=\"z\"} 1\n");
        free(ta);
        free(tb);
        gh_metrics_free(a);
        gh_metrics_free(b);
}

static void test_gpuhost_families(void **state) {
        static const char *const names[] = {
                GH_METRIC_JOBS_SUBMITTED, GH_METRIC_JOBS_FINISHED, GH_METRIC_QUEUE_DEPTH, GH_METRIC_JOBS_RUNNING,
                GH_METRIC_QUEUE_WAIT_SECONDS, GH_METRIC_JOB_RUN_SECONDS, GH_METRIC_STEP_SECONDS,
                GH_METRIC_DEVICE_MEMORY_BYTES, GH_METRIC_DEVICE_BUSY_SECONDS, GH_METRIC_DEVICE_SLICE_UNITS,
                GH_METRIC_DEVICE_SLICE_UNITS_BUSY, GH_METRIC_MODEL_LOADS, GH_METRIC_MODEL_EVICTIONS,
                GH_METRIC_MODEL_LOAD_BYTES, GH_METRIC_MODEL_LOAD_SECONDS, GH_METRIC_WORKER_RESTARTS,
                GH_METRIC_PLACEMENTS, GH_METRIC_ADMISSION_WAITS, GH_METRIC_OVERFLOW,
        };
        gh_metrics *m = NULL;
        char l[GH_METRICS_LABELS_MAX + 1];

        assert_int_equal(gh_metrics_new(&m), 0);
        assert_int_equal(gh_metrics_declare_gpuhost(m), 0);
        assert_int_equal(gh_metrics_declare_gpuhost(m), -EEXIST);
        char *text = render(m);
        assert_non_null(strstr(text, "# TYPE gpuhost_jobs_submitted_total counter\n"));
        assert_non_null(strstr(text, "# TYPE gpuhost_queue_wait_seconds histogram\n"));
        assert_non_null(strstr(text, "# TYPE gpuhost_device_memory_bytes gauge\n"));
        /* Declaration order. */
        const char *last = text;
        for (size_t i = 0; i < sizeof(names) / sizeof(names[0]); i++) {
                char type[160];
                snprintf(type, sizeof(type), "# TYPE %s ", names[i]);
                const char *p = strstr(text, type);
                assert_non_null(p);
                assert_true(p >= last);
                last = p;
        }
        free(text);

        /* The seconds histograms have 14 bounds, 1 ms to 10 min. */
        assert_true(gh_metrics_labels(l, sizeof(l), "pipeline", "txt2img", NULL) > 0);
        assert_int_equal(gh_metrics_observe(m, GH_METRIC_STEP_SECONDS, l, 0.02), 0);
        assert_true(gh_metrics_labels(l, sizeof(l), "pipeline", "txt2img", "state", "failed", "reason",
                                      "io.gpuhost.WorkerCrashed", NULL) > 0);
        assert_int_equal(gh_metrics_inc(m, GH_METRIC_JOBS_FINISHED, l, 1), 0);
        text = render(m);
        size_t buckets = 0;
        for (const char *p = text; (p = strstr(p, "gpuhost_step_seconds_bucket{")); p++)
                buckets++;
        assert_int_equal(buckets, 15);
        assert_non_null(strstr(text, "gpuhost_step_seconds_bucket{pipeline=\"txt2img\",le=\"0.001\"} 0\n"));
        assert_non_null(strstr(text, "gpuhost_step_seconds_bucket{pipeline=\"txt2img\",le=\"0.03\"} 1\n"));
        assert_non_null(strstr(text, "gpuhost_step_seconds_bucket{pipeline=\"txt2img\",le=\"600\"} 1\n"));
        assert_non_null(strstr(text, "gpuhost_jobs_finished_total{pipeline=\"txt2img\",state=\"failed\","
                                     "reason=\"io.gpuhost.WorkerCrashed\"} 1\n"));
        assert_exposition_valid(text);
        free(text);
        gh_metrics_free(m);
}

int main(void) {
        const struct CMUnitTest tests[] = {
                cmocka_unit_test(test_render_empty_families),
                cmocka_unit_test(test_counter_and_gauge),
                cmocka_unit_test(test_numbers_round_trip),
                cmocka_unit_test(test_histogram_cumulative),
                cmocka_unit_test(test_labels_escaping),
                cmocka_unit_test(test_labels_limits),
                cmocka_unit_test(test_hostile_values_render),
                cmocka_unit_test(test_malformed_label_text),
                cmocka_unit_test(test_label_set_cap),
                cmocka_unit_test(test_errors),
                cmocka_unit_test(test_help_escaping),
                cmocka_unit_test(test_null_registry),
                cmocka_unit_test(test_collector),
                cmocka_unit_test(test_deterministic),
                cmocka_unit_test(test_gpuhost_families),
        };
        return cmocka_run_group_tests(tests, NULL, NULL);
}

/* A registry of metrics, rendered in the Prometheus text exposition format
 * (version 0.0.4) for io.gpuhost.GetMetrics and the optional HTTP endpoint.
 *
 * Families are declared up front (name, type, help, and for histograms the
 * bucket bounds); samples are then addressed by family name and a label
 * string such as `pipeline="txt2img",reason="ok"`, made with
 * gh_metrics_labels(), which escapes the values. Label values may come from
 * clients and plugins, so each family holds at most GH_METRICS_SERIES_MAX
 * label sets: samples for further ones go to a single `overflow="true"`
 * series of the family, and are counted (gh_metrics_overflows(), and the
 * overflow family when one is set).
 *
 * Rendering is deterministic: families in declaration order, the series of
 * a family sorted by their label text, the overflow series last. A collector
 * set with gh_metrics_set_collector() runs right before each rendering, to
 * refresh gauges from the daemon's state.
 *
 * Ownership: the registry belongs to the daemon's event-loop thread and has
 * no locks; call it from that thread only. Every sample function accepts a
 * NULL registry and then does nothing (returns 0), so code shared with unit
 * tests need not check. */
#pragma once

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

typedef struct gh_metrics gh_metrics;

typedef enum gh_metric_type {
        GH_METRIC_COUNTER,
        GH_METRIC_GAUGE,
        GH_METRIC_HISTOGRAM,
} gh_metric_type;

#define GH_METRICS_FAMILIES_MAX 256
/* Label sets per family, besides the overflow series. */
#define GH_METRICS_SERIES_MAX 512
/* Bucket bounds per histogram (+Inf is implicit). */
#define GH_METRICS_BUCKETS_MAX 64
/* The longest label text (as gh_metrics_labels() makes it) and help. */
#define GH_METRICS_LABELS_MAX 1024
#define GH_METRICS_HELP_MAX 1024
/* Label values are cut to this many bytes (at a character boundary) before
 * escaping, so a long plugin or error name still makes a sample. */
#define GH_METRICS_VALUE_MAX 128
/* The label text of the series that takes samples past the cap. */
#define GH_METRICS_OVERFLOW_LABELS "overflow=\"true\""

/* Called right before rendering, to set gauges. */
typedef void (*gh_metrics_collect_fn)(gh_metrics *m, void *userdata);

int gh_metrics_new(gh_metrics **ret);
gh_metrics *gh_metrics_free(gh_metrics *m);
static inline void gh_metrics_freep(gh_metrics **m) {
        gh_metrics_free(*m);
}

/* Declares a family. |name| matches [a-zA-Z_:][a-zA-Z0-9_:]*; |help| is any
 * text (escaped when rendered). A histogram needs 1..GH_METRICS_BUCKETS_MAX
 * finite, strictly increasing bounds; other types take none. Returns 0,
 * -EEXIST for a name already declared, -EINVAL for a bad name, help or
 * buckets, -E2BIG past GH_METRICS_FAMILIES_MAX, -ENOMEM. */
int gh_metrics_declare(gh_metrics *m, const char *name, gh_metric_type type, const char *help,
                       const double *buckets, size_t n_buckets);

/* Makes label text from NULL-terminated pairs of label name and value:
 *   gh_metrics_labels(buf, sizeof(buf), "pipeline", p, "reason", r, NULL)
 * gives `pipeline="txt2img",reason="ok"`. Values are cut to
 * GH_METRICS_VALUE_MAX bytes; backslash, double quote and newline are
 * escaped, invalid UTF-8 becomes U+FFFD; a NULL value is "". Names must
 * match [a-zA-Z_][a-zA-Z0-9_]* and not start with "__". Returns the length,
 * -EINVAL for a bad name, or -ENOBUFS when |buf| is too small or the text
 * would pass GH_METRICS_LABELS_MAX (then |buf| holds ""). */
int gh_metrics_labels(char *buf, size_t size, ...) __attribute__((sentinel));

/* Samples. |labels| is label text as gh_metrics_labels() makes it (NULL or
 * "": none); a label set not seen before is checked and refused with
 * -EINVAL when malformed (or naming "le" in a histogram). They return 0,
 * -ENOENT for an undeclared family, -EINVAL for the wrong type or value
 * (a counter only goes up; no NaN), -ENOMEM.
 *   inc:     counters and gauges, adds |delta|
 *   set:     counters and gauges (a counter computed elsewhere, e.g. by a
 *            collector), sets |value|
 *   observe: histograms, counts |value| in its bucket, its sum and count */
int gh_metrics_inc(gh_metrics *m, const char *name, const char *labels, double delta);
int gh_metrics_set(gh_metrics *m, const char *name, const char *labels, double value);
int gh_metrics_observe(gh_metrics *m, const char *name, const char *labels, double value);
/* Drops every series of a family (gauges whose label sets come and go). */
int gh_metrics_reset(gh_metrics *m, const char *name);

/* The value of a counter or gauge series, or a histogram's count, into
 * *ret_value; -ENOENT if the family or the series does not exist. */
int gh_metrics_get(const gh_metrics *m, const char *name, const char *labels, double *ret_value);
/* Samples that went to the family's overflow series (0 when none or no
 * such family). */
uint64_t gh_metrics_overflows(const gh_metrics *m, const char *name);
/* A counter family with one label, "family", that gets 1 added for each
 * sample sent to an overflow series. It must be declared; -ENOENT if not,
 * -EINVAL if it is not a counter. */
int gh_metrics_set_overflow_family(gh_metrics *m, const char *name);

void gh_metrics_set_collector(gh_metrics *m, gh_metrics_collect_fn fn, void *userdata);

/* Runs the collector, then renders every family: "# HELP", "# TYPE", the
 * samples; histograms as cumulative NAME_bucket{...,le="B"} lines ending
 * with le="+Inf", then NAME_sum and NAME_count. A family without series
 * gets its HELP and TYPE lines only. *ret_text is NUL-terminated, to free. */
int gh_metrics_render(gh_metrics *m, char **ret_text, size_t *ret_len);

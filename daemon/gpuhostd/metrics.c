/* The metrics registry and its Prometheus text rendering. See metrics.h.
 *
 * A family keeps its series in an array sorted by label text (binary search
 * to find one, an insertion to add one), so rendering needs no sort and a
 * sample costs a lookup. A histogram series counts observations per bucket
 * (+Inf last); rendering sums them into the cumulative counts the format
 * wants. */
#include <errno.h>
#include <inttypes.h>
#include <limits.h>
#include <math.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "../common/utf8.h"
#include "../common/util.h"
#include "metrics.h"

#define LABELS_PER_SET_MAX 16
#define NAME_MAX_LEN 128

typedef struct series {
        double value;      /* counter, gauge */
        double sum;        /* histogram */
        uint64_t count;    /* histogram */
        char *labels;      /* points into this allocation, after counts */
        uint64_t counts[]; /* histogram: per bucket, not cumulative; +Inf last */
} series;

typedef struct family {
        char *name, *help;
        gh_metric_type type;
        double *bounds;
        size_t n_bounds;
        series **series; /* sorted by labels */
        size_t n_series, allocated;
        series *overflow; /* samples past GH_METRICS_SERIES_MAX label sets */
        uint64_t overflows;
} family;

struct gh_metrics {
        family *families;
        size_t n_families;
        gh_metrics_collect_fn collect;
        void *collect_userdata;
        char *overflow_family;
};

/* ---- text checks ---- */

static bool is_name_start(char c, bool colon) {
        return (c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z') || c == '_' || (colon && c == ':');
}

static bool is_name_char(char c, bool colon) {
        return is_name_start(c, colon) || (c >= '0' && c <= '9');
}

/* The length of the name at |s| ([a-zA-Z_][a-zA-Z0-9_]*, ':' allowed in
 * metric names), 0 if there is none. */
static size_t name_span(const char *s, bool colon) {
        size_t n = 0;

        if (!is_name_start(s[0], colon))
                return 0;
        while (is_name_char(s[n], colon))
                n++;
        return n;
}

static bool metric_name_valid(const char *s) {
        size_t n = name_span(s, true);

        return n > 0 && n <= NAME_MAX_LEN && s[n] == 0;
}

static bool label_name_valid(const char *s) {
        size_t n = name_span(s, false);

        return n > 0 && n <= NAME_MAX_LEN && s[n] == 0 && strncmp(s, "__", 2) != 0;
}

/* The end of the quoted value starting after the opening quote at |s|, at
 * its closing quote, or NULL: only \\, \" and \n escapes; no raw newline or
 * other control character; valid UTF-8. */
static const char *value_end(const char *s) {
        size_t n = strlen(s);

        for (size_t i = 0; i < n;) {
                unsigned char c = (unsigned char) s[i];
                if (c == '"')
                        return s + i;
                if (c == '\\') {
                        if (s[i + 1] != '\\' && s[i + 1] != '"' && s[i + 1] != 'n')
                                return NULL;
                        i += 2;
                        continue;
                }
                if (c < 0x20 || c == 0x7f)
                        return NULL;
                size_t len = gh_utf8_len((const unsigned char *) s + i, n - i);
                if (len == 0)
                        return NULL;
                i += len;
        }
        return NULL;
}

/* Checks label text: name="value" pairs separated by commas, names valid
 * and distinct, at most LABELS_PER_SET_MAX; "le" is refused in histograms. */
static bool labels_valid(const char *s, bool histogram) {
        const char *names[LABELS_PER_SET_MAX];
        size_t lens[LABELS_PER_SET_MAX], n = 0;

        if (strlen(s) > GH_METRICS_LABELS_MAX)
                return false;
        while (*s) {
                size_t len = name_span(s, false);
                if (len == 0 || len > NAME_MAX_LEN || n == LABELS_PER_SET_MAX || strncmp(s, "__", 2) == 0)
                        return false;
                if (histogram && len == 2 && strncmp(s, "le", 2) == 0)
                        return false;
                for (size_t i = 0; i < n; i++)
                        if (lens[i] == len && strncmp(names[i], s, len) == 0)
                                return false;
                names[n] = s;
                lens[n++] = len;
                if (s[len] != '=' || s[len + 1] != '"')
                        return false;
                const char *end = value_end(s + len + 2);
                if (!end)
                        return false;
                s = end + 1;
                if (*s == ',' && s[1])
                        s++;
                else if (*s)
                        return false;
        }
        return true;
}

/* ---- label builder ---- */

typedef struct text_out {
        char *buf;
        size_t size, len;
        bool full;
} text_out;

static void out_bytes(text_out *o, const char *s, size_t n) {
        if (o->full || o->len + n >= o->size) {
                o->full = true;
                return;
        }
        memcpy(o->buf + o->len, s, n);
        o->len += n;
        o->buf[o->len] = 0;
}

static void out_str(text_out *o, const char *s) {
        out_bytes(o, s, strlen(s));
}

/* A value, cut and escaped as gh_metrics_labels() says. */
static void out_value(text_out *o, const char *v) {
        size_t n = strlen(v);

        for (size_t i = 0; i < n;) {
                size_t len = gh_utf8_len((const unsigned char *) v + i, n - i);
                unsigned char c = (unsigned char) v[i];
                if (i + (len ? len : 1) > GH_METRICS_VALUE_MAX)
                        break;
                if (c == '\\')
                        out_str(o, "\\\\");
                else if (c == '"')
                        out_str(o, "\\\"");
                else if (c == '\n')
                        out_str(o, "\\n");
                else if (len == 0 || c < 0x20 || c == 0x7f)
                        out_str(o, "\xef\xbf\xbd"); /* U+FFFD */
                else
                        out_bytes(o, v + i, len);
                i += len ? len : 1;
        }
}

int gh_metrics_labels(char *buf, size_t size, ...) {
        text_out o = {.buf = buf, .size = size};
        const char *name;
        int r = 0;
        va_list ap;

        if (size == 0)
                return -ENOBUFS;
        buf[0] = 0;
        va_start(ap, size);
        while ((name = va_arg(ap, const char *))) {
                const char *value = va_arg(ap, const char *);
                if (!label_name_valid(name)) {
                        r = -EINVAL;
                        break;
                }
                if (o.len > 0)
                        out_str(&o, ",");
                out_str(&o, name);
                out_str(&o, "=\"");
                out_value(&o, value ? value : "");
                out_str(&o, "\"");
        }
        va_end(ap);
        if (r == 0 && (o.full || o.len > GH_METRICS_LABELS_MAX))
                r = -ENOBUFS;
        if (r < 0) {
                buf[0] = 0;
                return r;
        }
        return (int) o.len;
}

/* ---- registry ---- */

int gh_metrics_new(gh_metrics **ret) {
        gh_metrics *m = calloc(1, sizeof(*m));

        if (!m)
                return -ENOMEM;
        *ret = m;
        return 0;
}

static void family_clear(family *f) {
        for (size_t i = 0; i < f->n_series; i++)
                free(f->series[i]);
        f->n_series = 0;
        free(f->overflow);
        f->overflow = NULL;
        f->overflows = 0;
}

gh_metrics *gh_metrics_free(gh_metrics *m) {
        if (!m)
                return NULL;
        for (size_t i = 0; i < m->n_families; i++) {
                family *f = &m->families[i];
                family_clear(f);
                free(f->series);
                free(f->name);
                free(f->help);
                free(f->bounds);
        }
        free(m->families);
        free(m->overflow_family);
        free(m);
        return NULL;
}

static family *family_find(const gh_metrics *m, const char *name) {
        for (size_t i = 0; m && name && i < m->n_families; i++)
                if (strcmp(m->families[i].name, name) == 0)
                        return &m->families[i];
        return NULL;
}

static bool buckets_valid(gh_metric_type type, const double *b, size_t n) {
        if (type != GH_METRIC_HISTOGRAM)
                return n == 0;
        if (n == 0 || n > GH_METRICS_BUCKETS_MAX || !b)
                return false;
        for (size_t i = 0; i < n; i++)
                if (!isfinite(b[i]) || (i > 0 && b[i] <= b[i - 1]))
                        return false;
        return true;
}

int gh_metrics_declare(gh_metrics *m, const char *name, gh_metric_type type, const char *help,
                       const double *buckets, size_t n_buckets) {
        if (!m || !name || !metric_name_valid(name) || !help || strlen(help) > GH_METRICS_HELP_MAX ||
            !gh_utf8_valid(help, strlen(help), NULL) || type > GH_METRIC_HISTOGRAM || !buckets_valid(type, buckets, n_buckets))
                return -EINVAL;
        if (family_find(m, name))
                return -EEXIST;
        if (m->n_families >= GH_METRICS_FAMILIES_MAX)
                return -E2BIG;
        family *fams = realloc(m->families, (m->n_families + 1) * sizeof(family));
        if (!fams)
                return -ENOMEM;
        m->families = fams;
        family f = {.name = strdup(name), .help = strdup(help), .type = type, .n_bounds = n_buckets};
        if (n_buckets > 0 && (f.bounds = malloc(n_buckets * sizeof(double))))
                memcpy(f.bounds, buckets, n_buckets * sizeof(double));
        if (!f.name || !f.help || (n_buckets > 0 && !f.bounds)) {
                free(f.name);
                free(f.help);
                free(f.bounds);
                return -ENOMEM;
        }
        m->families[m->n_families++] = f;
        return 0;
}

static series *series_new(const family *f, const char *labels) {
        size_t n_counts = f->type == GH_METRIC_HISTOGRAM ? f->n_bounds + 1 : 0;
        size_t len = strlen(labels);
        series *s = calloc(1, sizeof(series) + n_counts * sizeof(uint64_t) + len + 1);

        if (!s)
                return NULL;
        s->labels = (char *) (s->counts + n_counts);
        memcpy(s->labels, labels, len + 1);
        return s;
}

/* The index of the first series whose labels are not below |labels|. */
static size_t series_position(const family *f, const char *labels, bool *ret_found) {
        size_t lo = 0, hi = f->n_series;

        while (lo < hi) {
                size_t mid = lo + (hi - lo) / 2;
                int c = strcmp(f->series[mid]->labels, labels);
                if (c == 0) {
                        *ret_found = true;
                        return mid;
                }
                if (c < 0)
                        lo = mid + 1;
                else
                        hi = mid;
        }
        *ret_found = false;
        return lo;
}

static int series_insert(family *f, size_t at, const char *labels, series **ret) {
        if (f->n_series == f->allocated) {
                size_t n = f->allocated ? f->allocated * 2 : 8;
                series **v = realloc(f->series, n * sizeof(series *));
                if (!v)
                        return -ENOMEM;
                f->series = v;
                f->allocated = n;
        }
        series *s = series_new(f, labels);
        if (!s)
                return -ENOMEM;
        memmove(f->series + at + 1, f->series + at, (f->n_series - at) * sizeof(series *));
        f->series[at] = s;
        f->n_series++;
        *ret = s;
        return 0;
}

static int count_overflow(gh_metrics *m, family *f) {
        char labels[GH_METRICS_LABELS_MAX + 1];

        f->overflows++;
        if (!m->overflow_family || strcmp(m->overflow_family, f->name) == 0)
                return 0;
        if (gh_metrics_labels(labels, sizeof(labels), "family", f->name, NULL) < 0)
                return 0;
        return gh_metrics_inc(m, m->overflow_family, labels, 1);
}

static int overflow_series(gh_metrics *m, family *f, bool counted, series **ret) {
        if (!f->overflow && !(f->overflow = series_new(f, GH_METRICS_OVERFLOW_LABELS)))
                return -ENOMEM;
        if (counted)
                count_overflow(m, f);
        *ret = f->overflow;
        return 0;
}

/* The series of |f| for |labels|, made if need be (or the overflow series
 * once the family is full). */
static int series_get(gh_metrics *m, family *f, const char *labels, series **ret) {
        bool found;

        if (!labels)
                labels = "";
        if (strcmp(labels, GH_METRICS_OVERFLOW_LABELS) == 0)
                return overflow_series(m, f, false, ret);
        size_t at = series_position(f, labels, &found);
        if (found) {
                *ret = f->series[at];
                return 0;
        }
        if (!labels_valid(labels, f->type == GH_METRIC_HISTOGRAM))
                return -EINVAL;
        if (f->n_series >= GH_METRICS_SERIES_MAX)
                return overflow_series(m, f, true, ret);
        return series_insert(f, at, labels, ret);
}

static int sample(gh_metrics *m, const char *name, const char *labels, gh_metric_type type, family **ret_family,
                  series **ret_series) {
        family *f = family_find(m, name);

        if (!f)
                return -ENOENT;
        if ((type == GH_METRIC_HISTOGRAM) != (f->type == GH_METRIC_HISTOGRAM))
                return -EINVAL;
        *ret_family = f;
        return series_get(m, f, labels, ret_series);
}

int gh_metrics_inc(gh_metrics *m, const char *name, const char *labels, double delta) {
        family *f;
        series *s;

        if (!m)
                return 0;
        if (!isfinite(delta))
                return -EINVAL;
        int r = sample(m, name, labels, GH_METRIC_COUNTER, &f, &s);
        if (r < 0)
                return r;
        if (f->type == GH_METRIC_COUNTER && delta < 0)
                return -EINVAL;
        s->value += delta;
        return 0;
}

int gh_metrics_set(gh_metrics *m, const char *name, const char *labels, double value) {
        family *f;
        series *s;

        if (!m)
                return 0;
        if (isnan(value))
                return -EINVAL;
        int r = sample(m, name, labels, GH_METRIC_GAUGE, &f, &s);
        if (r < 0)
                return r;
        if (f->type == GH_METRIC_COUNTER && value < 0)
                return -EINVAL;
        s->value = value;
        return 0;
}

int gh_metrics_observe(gh_metrics *m, const char *name, const char *labels, double value) {
        family *f;
        series *s;
        size_t i = 0;

        if (!m)
                return 0;
        if (isnan(value))
                return -EINVAL;
        int r = sample(m, name, labels, GH_METRIC_HISTOGRAM, &f, &s);
        if (r < 0)
                return r;
        while (i < f->n_bounds && value > f->bounds[i])
                i++;
        s->counts[i]++;
        s->count++;
        s->sum += value;
        return 0;
}

int gh_metrics_reset(gh_metrics *m, const char *name) {
        family *f = family_find(m, name);

        if (!m)
                return 0;
        if (!f)
                return -ENOENT;
        family_clear(f);
        return 0;
}

int gh_metrics_get(const gh_metrics *m, const char *name, const char *labels, double *ret_value) {
        const family *f = family_find(m, name);
        const series *s = NULL;
        bool found;

        if (!f)
                return -ENOENT;
        if (!labels)
                labels = "";
        if (strcmp(labels, GH_METRICS_OVERFLOW_LABELS) == 0)
                s = f->overflow;
        else {
                size_t at = series_position(f, labels, &found);
                s = found ? f->series[at] : NULL;
        }
        if (!s)
                return -ENOENT;
        *ret_value = f->type == GH_METRIC_HISTOGRAM ? (double) s->count : s->value;
        return 0;
}

uint64_t gh_metrics_overflows(const gh_metrics *m, const char *name) {
        const family *f = family_find(m, name);

        return f ? f->overflows : 0;
}

int gh_metrics_set_overflow_family(gh_metrics *m, const char *name) {
        const family *f = family_find(m, name);

        if (!f)
                return -ENOENT;
        if (f->type != GH_METRIC_COUNTER)
                return -EINVAL;
        char *copy = strdup(name);
        if (!copy)
                return -ENOMEM;
        free(m->overflow_family);
        m->overflow_family = copy;
        return 0;
}

void gh_metrics_set_collector(gh_metrics *m, gh_metrics_collect_fn fn, void *userdata) {
        if (!m)
                return;
        m->collect = fn;
        m->collect_userdata = userdata;
}

/* ---- rendering ---- */

/* Shortest text that reads back as |v|; integers without a fraction. */
static void format_number(double v, char *buf, size_t size) {
        if (isnan(v))
                snprintf(buf, size, "NaN");
        else if (isinf(v))
                snprintf(buf, size, v > 0 ? "+Inf" : "-Inf");
        else if (v == trunc(v) && fabs(v) < 1e15)
                snprintf(buf, size, "%" PRId64, (int64_t) v);
        else {
                snprintf(buf, size, "%.15g", v);
                if (strtod(buf, NULL) != v)
                        snprintf(buf, size, "%.17g", v);
        }
}

static void render_help(FILE *f, const family *fam) {
        static const char *const types[] = {
                [GH_METRIC_COUNTER] = "counter",
                [GH_METRIC_GAUGE] = "gauge",
                [GH_METRIC_HISTOGRAM] = "histogram",
        };

        fprintf(f, "# HELP %s ", fam->name);
        for (const char *p = fam->help; *p; p++) {
                if (*p == '\\')
                        fputs("\\\\", f);
                else if (*p == '\n')
                        fputs("\\n", f);
                else
                        fputc(*p, f);
        }
        fprintf(f, "\n# TYPE %s %s\n", fam->name, types[fam->type]);
}

/* NAME{labels} or NAME{labels,extra}, braces only when there are labels. */
static void render_name(FILE *f, const char *name, const char *suffix, const char *labels, const char *extra) {
        bool any = labels[0] || extra;

        fprintf(f, "%s%s%s%s%s%s%s ", name, suffix, any ? "{" : "", labels, labels[0] && extra ? "," : "",
                extra ? extra : "", any ? "}" : "");
}

static void render_series(FILE *f, const family *fam, const series *s) {
        char num[64], le[96];

        if (fam->type != GH_METRIC_HISTOGRAM) {
                format_number(s->value, num, sizeof(num));
                render_name(f, fam->name, "", s->labels, NULL);
                fprintf(f, "%s\n", num);
                return;
        }
        uint64_t cumulative = 0;
        for (size_t i = 0; i <= fam->n_bounds; i++) {
                cumulative += s->counts[i];
                if (i < fam->n_bounds)
                        format_number(fam->bounds[i], num, sizeof(num));
                snprintf(le, sizeof(le), "le=\"%s\"", i < fam->n_bounds ? num : "+Inf");
                render_name(f, fam->name, "_bucket", s->labels, le);
                fprintf(f, "%" PRIu64 "\n", cumulative);
        }
        format_number(s->sum, num, sizeof(num));
        render_name(f, fam->name, "_sum", s->labels, NULL);
        fprintf(f, "%s\n", num);
        render_name(f, fam->name, "_count", s->labels, NULL);
        fprintf(f, "%" PRIu64 "\n", s->count);
}

int gh_metrics_render(gh_metrics *m, char **ret_text, size_t *ret_len) {
        char *text = NULL;
        size_t len = 0;

        if (!m)
                return -EINVAL;
        if (m->collect)
                m->collect(m, m->collect_userdata);
        FILE *f = open_memstream(&text, &len);
        if (!f)
                return -ENOMEM;
        for (size_t i = 0; i < m->n_families; i++) {
                const family *fam = &m->families[i];
                render_help(f, fam);
                for (size_t k = 0; k < fam->n_series; k++)
                        render_series(f, fam, fam->series[k]);
                if (fam->overflow)
                        render_series(f, fam, fam->overflow);
        }
        bool failed = ferror(f);
        if (fclose(f) != 0 || failed) {
                free(text);
                return -ENOMEM;
        }
        *ret_text = text;
        *ret_len = len;
        return 0;
}

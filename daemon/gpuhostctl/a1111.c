/* The "parameters" text that AUTOMATIC1111's Stable Diffusion web UI
 * writes into its PNG files (and that it, and tools that read its files,
 * show and parse), made from a job's metadata. See ctl.h.
 *
 * Its layout: the prompt; "Negative prompt: ..." on a line of its own
 * when there is one; then one line of "Key: value" items joined by ", ".
 * Like the web UI, a value holding ',', ':' or a newline is written as a
 * JSON string, so that the line still splits; the prompts are written as
 * they are. */
#include <ctype.h>
#include <errno.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "ctl.h"

/* Our sampler names, and the web UI's. */
static const char *const sampler_names[][2] = {
        {"euler", "Euler"},       {"euler_a", "Euler a"},          {"ddim", "DDIM"},
        {"dpmpp_2m", "DPM++ 2M"}, {"dpmpp_2m_karras", "DPM++ 2M Karras"},
};

/* A growing string; |failed| once out of memory. */
typedef struct text {
        char *s;
        size_t len;
        bool failed;
} text;

__attribute__((format(printf, 2, 3))) static void text_add(text *t, const char *fmt, ...) {
        va_list ap;
        char *more = NULL;

        if (t->failed)
                return;
        va_start(ap, fmt);
        int n = vasprintf(&more, fmt, ap);
        va_end(ap);
        char *s = n < 0 ? NULL : realloc(t->s, t->len + (size_t) n + 1);
        if (!s) {
                free(more);
                t->failed = true;
                return;
        }
        memcpy(s + t->len, more, (size_t) n + 1);
        t->s = s;
        t->len += (size_t) n;
        free(more);
}

/* The member |key| of |metadata| as text, into |buf|: a string as it is,
 * a number as Python prints it (the web UI's own values are Python's: the
 * fewest digits that read back the same, ".0" on a whole float), other
 * values as JSON; NULL when it is absent or null. */
static const char *meta_value(json_object *metadata, const char *key, char *buf, size_t size) {
        json_object *v = NULL;

        if (!json_object_object_get_ex(metadata, key, &v) || !v)
                return NULL;
        switch (json_object_get_type(v)) {
        case json_type_string:
                return json_object_get_string(v);
        case json_type_double:
                for (int prec = 1; prec <= 17; prec++) {
                        snprintf(buf, size, "%.*g", prec, json_object_get_double(v));
                        if (strtod(buf, NULL) == json_object_get_double(v))
                                break;
                }
                if (!strpbrk(buf, ".e"))
                        strncat(buf, ".0", size - strlen(buf) - 1);
                return buf;
        default: /* integers too, up to 2^64 - 1 */
                snprintf(buf, size, "%s", json_object_to_json_string_ext(v, JSON_C_TO_STRING_PLAIN));
                return buf;
        }
}

/* ", Key: value", the value quoted as the web UI quotes it. */
static void add_item(text *t, const char *key, const char *value) {
        const char *sep = t->len && t->s[t->len - 1] != '\n' ? ", " : "";

        if (!strpbrk(value, ",:\n")) {
                text_add(t, "%s%s: %s", sep, key, value);
                return;
        }
        json_object *s = json_object_new_string(value);
        text_add(t, "%s%s: %s", sep, key,
                 s ? json_object_to_json_string_ext(s, JSON_C_TO_STRING_PLAIN | JSON_C_TO_STRING_NOSLASHESCAPE) : "");
        t->failed |= !s;
        json_object_put(s);
}

static const char *sampler_name(const char *ours) {
        for (size_t i = 0; i < sizeof(sampler_names) / sizeof(sampler_names[0]); i++)
                if (strcmp(ours, sampler_names[i][0]) == 0)
                        return sampler_names[i][1];
        return ours;
}

/* The leading hex digits of |hash|, at most 10 (the web UI's short form
 * of a model's SHA-256); NULL when it starts with none. */
static const char *short_hash(const char *hash, char buf[11]) {
        size_t n = 0;

        while (n < 10 && isxdigit((unsigned char) hash[n]))
                n++;
        memcpy(buf, hash, n);
        buf[n] = 0;
        return n ? buf : NULL;
}

/* "Clip skip" only past 1: the web UI leaves out the default. */
static bool clip_skip_shown(const char *value) {
        char *end;
        long long n = strtoll(value, &end, 10);

        return end != value && *end == 0 && n > 1;
}

static void add_settings(text *t, json_object *metadata) {
        char a[64], b[64], size[160], hash[11];
        const char *v, *w, *h;

        if ((v = meta_value(metadata, "steps", a, sizeof(a))))
                add_item(t, "Steps", v);
        if ((v = meta_value(metadata, "sampler", a, sizeof(a))))
                add_item(t, "Sampler", sampler_name(v));
        if ((v = meta_value(metadata, "cfg_scale", a, sizeof(a))))
                add_item(t, "CFG scale", v);
        if ((v = meta_value(metadata, "seed", a, sizeof(a))))
                add_item(t, "Seed", v);
        if ((w = meta_value(metadata, "width", a, sizeof(a))) && (h = meta_value(metadata, "height", b, sizeof(b)))) {
                snprintf(size, sizeof(size), "%sx%s", w, h);
                add_item(t, "Size", size);
        }
        if ((v = meta_value(metadata, "model_hash", a, sizeof(a))) && short_hash(v, hash))
                add_item(t, "Model hash", hash);
        if ((v = meta_value(metadata, "model", a, sizeof(a))))
                add_item(t, "Model", v);
        if ((v = meta_value(metadata, "clip_skip", a, sizeof(a))) && clip_skip_shown(v))
                add_item(t, "Clip skip", v);
        if ((v = meta_value(metadata, "strength", a, sizeof(a))))
                add_item(t, "Denoising strength", v);
}

int ctl_a1111_parameters(json_object *metadata, char **ret) {
        json_object *prompt = NULL, *negative = NULL;
        text t = {0};

        *ret = NULL;
        if (!json_object_is_type(metadata, json_type_object) ||
            !json_object_object_get_ex(metadata, "prompt", &prompt) || !json_object_is_type(prompt, json_type_string))
                return 0;
        text_add(&t, "%s", json_object_get_string(prompt));
        if (json_object_object_get_ex(metadata, "negative_prompt", &negative) &&
            json_object_is_type(negative, json_type_string) && json_object_get_string_len(negative) > 0)
                text_add(&t, "\nNegative prompt: %s", json_object_get_string(negative));
        text_add(&t, "\n");
        size_t settings = t.len;
        add_settings(&t, metadata);
        if (!t.failed && t.len == settings)
                t.s[--t.len] = 0; /* no settings: no last line */
        if (t.failed) {
                free(t.s);
                return -ENOMEM;
        }
        *ret = t.s;
        return 0;
}

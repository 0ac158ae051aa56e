/* gpuhostctl generate PIPELINE [--param KEY=VALUE]... [-o FILE]: runs a job
 * (io.gpuhost.Generate with "more") and saves or describes its outputs;
 * with --detach, only submits it (Generate without "more") and prints its
 * id; --wait ID takes a submitted job up again (io.gpuhost.WaitJob with
 * "more"), --cancel ID cancels one (io.gpuhost.CancelJob).
 *
 * The pipeline's parameter table (io.gpuhost.ListPipelines) says which
 * JSON type each --param value becomes; an image parameter is a PNG file,
 * decoded here and passed as a memfd with the call. Progress comes on
 * stderr while the job runs (a bar with the rate and ETA on a terminal);
 * the final reply carries the outputs as memfds (or base64 "data"),
 * written to FILE (a PNG with the job's parameters and metadata as text
 * chunks for rgb8/rgba8 images and a .png name, else the raw bytes) or
 * summarized on stdout.
 *
 * The parts that need no daemon (ctl_param_convert, ctl_output_file_name,
 * ctl_output_write, ctl_png_read/write, the PNG texts, base64) are
 * declared in ctl.h for the tests. */
#include <errno.h>
#include <fcntl.h>
#include <inttypes.h>
#include <limits.h>
#include <math.h>
#include <png.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <sys/ioctl.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <time.h>
#include <unistd.h>

#include "ctl.h"

/* The largest image accepted in either direction, in pixels. */
#define IMAGE_DIM_MAX 32768u

/* A message for ret_error, in a thread-local buffer. */
__attribute__((format(printf, 1, 2))) static const char *error_text(const char *fmt, ...) {
        static __thread char buf[1024];
        va_list ap;

        va_start(ap, fmt);
        vsnprintf(buf, sizeof(buf), fmt, ap);
        va_end(ap);
        return buf;
}

void ctl_fds_close(ctl_fds *fds) {
        for (size_t i = 0; i < fds->n; i++)
                if (fds->fd[i] >= 0)
                        close(fds->fd[i]);
        fds->n = 0;
}

/* ---- PNG ---- */

/* |key| (UTF-8) as a PNG keyword in Latin-1, into |out| (80 bytes): 1 to
 * 79 printable characters (32-126, 161-255), no leading, trailing or
 * consecutive spaces. Returns false when it cannot be one. */
static bool png_keyword(const char *key, char out[80]) {
        const unsigned char *p = (const unsigned char *) key;
        size_t n = 0;

        while (*p) {
                unsigned cp;
                if (*p < 0x80)
                        cp = *p++;
                else if ((p[0] == 0xc2 || p[0] == 0xc3) && (p[1] & 0xc0) == 0x80) {
                        cp = ((unsigned) (p[0] & 0x1f) << 6) | (p[1] & 0x3f);
                        p += 2;
                } else
                        return false; /* beyond Latin-1, or not UTF-8 */
                if (!((cp >= 32 && cp <= 126) || (cp >= 161 && cp <= 255)) || n >= 79)
                        return false;
                if (cp == ' ' && (n == 0 || out[n - 1] == ' '))
                        return false;
                out[n++] = (char) cp;
        }
        out[n] = 0;
        return n > 0 && out[n - 1] != ' ';
}

/* Whether |s| is ASCII; *ret_utf8: whether it is valid UTF-8. */
static bool is_ascii(const char *s, bool *ret_utf8) {
        const unsigned char *p = (const unsigned char *) s;
        bool ascii = true;

        *ret_utf8 = true;
        while (*p) {
                if (*p < 0x80) {
                        p++;
                        continue;
                }
                ascii = false;
                int n = (*p & 0xe0) == 0xc0 ? 1 : (*p & 0xf0) == 0xe0 ? 2 : (*p & 0xf8) == 0xf0 ? 3 : -1;
                if (n < 0 || *p == 0xc0 || *p == 0xc1 || *p > 0xf4) {
                        *ret_utf8 = false;
                        return false;
                }
                for (int i = 1; i <= n; i++)
                        if ((p[i] & 0xc0) != 0x80) {
                                *ret_utf8 = false;
                                return false;
                        }
                p += n + 1;
        }
        return ascii;
}

typedef struct png_failure {
        char message[256];
} png_failure;

static void png_on_error(png_structp png, png_const_charp message) {
        png_failure *e = png_get_error_ptr(png);

        snprintf(e->message, sizeof(e->message), "%s", message);
        png_longjmp(png, 1);
}

static void png_on_warning(png_structp png, png_const_charp message) {
}

/* Writes the PNG to |f|; the libpng part, apart so that nothing of the
 * caller's needs to be volatile across its longjmp. */
static int png_write_stream(FILE *f, const uint8_t *pixels, uint32_t width, uint32_t height, size_t stride,
                            unsigned channels, png_text *chunks, int n_chunks, png_failure *e) {
        png_structp png = png_create_write_struct(PNG_LIBPNG_VER_STRING, e, png_on_error, png_on_warning);
        png_infop info = png ? png_create_info_struct(png) : NULL;

        if (!info) {
                snprintf(e->message, sizeof(e->message), "out of memory");
                png_destroy_write_struct(&png, NULL);
                return -ENOMEM;
        }
        if (setjmp(png_jmpbuf(png))) {
                png_destroy_write_struct(&png, &info);
                return -EIO;
        }
        png_init_io(png, f);
        png_set_IHDR(png, info, width, height, 8, channels == 4 ? PNG_COLOR_TYPE_RGB_ALPHA : PNG_COLOR_TYPE_RGB,
                     PNG_INTERLACE_NONE, PNG_COMPRESSION_TYPE_DEFAULT, PNG_FILTER_TYPE_DEFAULT);
        png_set_sRGB(png, info, PNG_sRGB_INTENT_PERCEPTUAL);
        if (n_chunks > 0)
                png_set_text(png, info, chunks, n_chunks);
        png_write_info(png, info);
        for (uint32_t y = 0; y < height; y++)
                png_write_row(png, pixels + (size_t) y * stride);
        png_write_end(png, info);
        png_destroy_write_struct(&png, &info);
        return 0;
}

int ctl_png_write(const char *path, const uint8_t *pixels, uint32_t width, uint32_t height, size_t stride,
                  unsigned channels, const ctl_png_text *text, size_t n_text, const char **ret_error) {
        png_failure failure = {.message = ""};
        png_text *chunks = NULL;
        char(*keys)[80] = NULL;
        int n_chunks = 0, r;

        if ((channels != 3 && channels != 4) || width == 0 || height == 0 || width > IMAGE_DIM_MAX ||
            height > IMAGE_DIM_MAX || stride < (size_t) width * channels || stride > INT32_MAX) {
                *ret_error = error_text("cannot write a PNG of %" PRIu32 "x%" PRIu32 " pixels, %u channels, "
                                        "rows of %zu bytes", width, height, channels, stride);
                return -EINVAL;
        }
        if (text && n_text > 0) {
                if (n_text > INT_MAX || !(chunks = calloc(n_text, sizeof(*chunks))) ||
                    !(keys = calloc(n_text, sizeof(*keys)))) {
                        free(chunks);
                        *ret_error = "out of memory";
                        return -ENOMEM;
                }
                for (size_t i = 0; i < n_text; i++) {
                        bool utf8;
                        if (!text[i].key || !text[i].text || !png_keyword(text[i].key, keys[n_chunks]))
                                continue;
                        bool ascii = is_ascii(text[i].text, &utf8);
                        chunks[n_chunks] = (png_text) {
                                .compression = ascii || !utf8 ? PNG_TEXT_COMPRESSION_NONE : PNG_ITXT_COMPRESSION_NONE,
                                .key = keys[n_chunks],
                                .text = (char *) text[i].text,
                                .text_length = ascii || !utf8 ? strlen(text[i].text) : 0,
                                .itxt_length = ascii || !utf8 ? 0 : strlen(text[i].text),
                                .lang = NULL,
                                .lang_key = NULL,
                        };
                        n_chunks++;
                }
        }

        FILE *f = fopen(path, "wbe");
        if (!f) {
                r = -errno;
                *ret_error = error_text("cannot create %s: %s", path, strerror(errno));
                goto done;
        }
        r = png_write_stream(f, pixels, width, height, stride, channels, chunks, n_chunks, &failure);
        if (r < 0) {
                *ret_error = error_text("cannot write %s: %s", path, failure.message);
                fclose(f);
                goto done;
        }
        if (fflush(f) != 0 || fsync(fileno(f)) < 0) {
                r = -errno;
                *ret_error = error_text("cannot write %s: %s", path, strerror(errno));
                fclose(f);
                goto done;
        }
        if (fclose(f) != 0) {
                r = -errno;
                *ret_error = error_text("cannot write %s: %s", path, strerror(errno));
                goto done;
        }
done:
        free(chunks);
        free(keys);
        return r;
}

int ctl_png_read(const char *path, uint8_t **ret_pixels, uint32_t *ret_width, uint32_t *ret_height,
                 unsigned *ret_channels, const char **ret_error) {
        png_image image = {.version = PNG_IMAGE_VERSION};
        FILE *f = fopen(path, "rbe");

        if (!f) {
                int r = -errno;
                *ret_error = error_text("cannot open %s: %s", path, strerror(errno));
                return r;
        }
        if (!png_image_begin_read_from_stdio(&image, f)) {
                *ret_error = error_text("cannot read %s as a PNG file: %s", path, image.message);
                png_image_free(&image);
                fclose(f);
                return -EINVAL;
        }
        if (image.width == 0 || image.height == 0 || image.width > IMAGE_DIM_MAX || image.height > IMAGE_DIM_MAX) {
                *ret_error = error_text("%s: %" PRIu32 "x%" PRIu32 " pixels is too large (at most %ux%u)", path,
                                        image.width, image.height, IMAGE_DIM_MAX, IMAGE_DIM_MAX);
                png_image_free(&image);
                fclose(f);
                return -EFBIG;
        }
        unsigned channels = image.format & PNG_FORMAT_FLAG_ALPHA ? 4 : 3;
        image.format = channels == 4 ? PNG_FORMAT_RGBA : PNG_FORMAT_RGB;
        image.flags |= PNG_IMAGE_FLAG_16BIT_sRGB; /* 16-bit files are sRGB too, as a rule */
        size_t size = (size_t) image.width * image.height * channels;
        uint8_t *pixels = malloc(size);
        if (!pixels) {
                *ret_error = error_text("%s: out of memory for %zu bytes of pixels", path, size);
                png_image_free(&image);
                fclose(f);
                return -ENOMEM;
        }
        if (!png_image_finish_read(&image, NULL, pixels, 0, NULL)) {
                *ret_error = error_text("cannot read %s as a PNG file: %s", path, image.message);
                png_image_free(&image);
                free(pixels);
                fclose(f);
                return -EINVAL;
        }
        fclose(f);
        *ret_pixels = pixels;
        *ret_width = image.width;
        *ret_height = image.height;
        *ret_channels = channels;
        return 0;
}

/* ---- PNG text chunks ---- */

void ctl_png_texts_free(ctl_png_texts *t) {
        for (size_t i = 0; i < t->n; i++) {
                free((char *) t->v[i].key);
                free((char *) t->v[i].text);
        }
        free(t->v);
        t->v = NULL;
        t->n = 0;
}

int ctl_png_texts_add(ctl_png_texts *t, const char *key, const char *text) {
        ctl_png_text *v = realloc(t->v, (t->n + 1) * sizeof(*v));

        if (!v)
                return -ENOMEM;
        t->v = v;
        char *k = strdup(key), *x = strdup(text);
        if (!k || !x) {
                free(k);
                free(x);
                return -ENOMEM;
        }
        t->v[t->n++] = (ctl_png_text) {.key = k, .text = x};
        return 0;
}

char *ctl_json_ascii(const char *json) {
        const unsigned char *p = (const unsigned char *) json;
        size_t len = strlen(json);
        /* Each byte becomes at most 6 characters ("\uXXXX"; 4 bytes: 12). */
        char *out = malloc(len * 6 + 1), *o = out;

        if (!out)
                return NULL;
        while (*p) {
                if (*p < 0x80) {
                        *o++ = (char) *p++;
                        continue;
                }
                int n = (*p & 0xe0) == 0xc0 ? 1 : (*p & 0xf0) == 0xe0 ? 2 : (*p & 0xf8) == 0xf0 ? 3 : 0;
                uint32_t cp = n == 1 ? *p & 0x1f : n == 2 ? *p & 0x0f : *p & 0x07;
                bool ok = n > 0;
                for (int i = 1; ok && i <= n; i++) {
                        if ((p[i] & 0xc0) != 0x80)
                                ok = false;
                        else
                                cp = cp << 6 | (p[i] & 0x3f);
                }
                /* Overlong forms, surrogates, beyond U+10FFFF. */
                if (ok && ((n == 1 && cp < 0x80) || (n == 2 && cp < 0x800) || (n == 3 && cp < 0x10000) ||
                           (cp >= 0xd800 && cp <= 0xdfff) || cp > 0x10ffff))
                        ok = false;
                if (!ok) {
                        cp = 0xfffd;
                        n = 0; /* skip the one byte */
                }
                p += n + 1;
                if (cp >= 0x10000) {
                        cp -= 0x10000;
                        o += sprintf(o, "\\u%04x\\u%04x", 0xd800 + (cp >> 10), 0xdc00 + (cp & 0x3ff));
                } else
                        o += sprintf(o, "\\u%04x", cp);
        }
        *o = 0;
        return out;
}

/* {"pipeline", "model", "parameters"} as ASCII JSON text, as |key|. */
static int add_request_text(ctl_png_texts *t, const char *key, const char *pipeline, json_object *parameters) {
        json_object *o = json_object_new_object(), *model = NULL;

        json_object_object_add(o, "pipeline", json_object_new_string(pipeline));
        if (parameters && json_object_object_get_ex(parameters, "model", &model) &&
            json_object_is_type(model, json_type_string))
                json_object_object_add(o, "model", json_object_get(model));
        json_object_object_add(o, "parameters", parameters ? json_object_get(parameters) : json_object_new_object());
        char *text = ctl_json_ascii(
                json_object_to_json_string_ext(o, JSON_C_TO_STRING_PLAIN | JSON_C_TO_STRING_NOSLASHESCAPE));
        int r = text ? ctl_png_texts_add(t, key, text) : -ENOMEM;
        free(text);
        json_object_put(o);
        return r;
}

static bool text_key_ours(const char *key) {
        return strcmp(key, "parameters") == 0 || strcmp(key, "gpuhost-parameters") == 0 ||
               strcmp(key, "gpuhost-job") == 0;
}

int ctl_png_texts_for_job(ctl_png_texts *t, const char *pipeline, json_object *parameters, const char *job,
                          json_object *metadata) {
        char *a1111 = NULL;
        int r = ctl_a1111_parameters(metadata, &a1111);
        bool taken = a1111; /* the "parameters" keyword */

        if (r == 0 && a1111)
                r = ctl_png_texts_add(t, "parameters", a1111);
        free(a1111);
        if (r == 0 && pipeline)
                r = add_request_text(t, taken ? "gpuhost-parameters" : "parameters", pipeline, parameters);
        if (r == 0 && job)
                r = ctl_png_texts_add(t, "gpuhost-job", job);
        if (r == 0 && metadata && json_object_is_type(metadata, json_type_object)) {
                json_object_object_foreach(metadata, key, v) {
                        if (text_key_ours(key))
                                continue;
                        r = ctl_png_texts_add(t, key,
                                              v && json_object_is_type(v, json_type_string)
                                                      ? json_object_get_string(v)
                                                      : json_object_to_json_string_ext(
                                                                v, JSON_C_TO_STRING_PLAIN |
                                                                           JSON_C_TO_STRING_NOSLASHESCAPE));
                        if (r < 0)
                                break;
                }
        }
        return r;
}

/* ---- base64 ---- */

static int base64_value(unsigned char c) {
        if (c >= 'A' && c <= 'Z')
                return c - 'A';
        if (c >= 'a' && c <= 'z')
                return c - 'a' + 26;
        if (c >= '0' && c <= '9')
                return c - '0' + 52;
        if (c == '+')
                return 62;
        if (c == '/')
                return 63;
        return -1;
}

int ctl_base64_decode(const char *in, uint8_t **ret, size_t *ret_size) {
        size_t len = strlen(in);

        /* "=" only at the end: at most two, making a multiple of 4. */
        size_t pad = 0;
        while (pad < len && in[len - 1 - pad] == '=')
                pad++;
        if (pad > 2 || (pad > 0 && len % 4 != 0))
                return -EINVAL;
        len -= pad;
        if (len % 4 == 1)
                return -EINVAL;
        uint8_t *out = malloc(len / 4 * 3 + 3);
        if (!out)
                return -ENOMEM;
        size_t n = 0;
        uint32_t acc = 0;
        int bits = 0;
        for (size_t i = 0; i < len; i++) {
                int v = base64_value((unsigned char) in[i]);
                if (v < 0) {
                        free(out);
                        return -EINVAL;
                }
                acc = acc << 6 | (uint32_t) v;
                bits += 6;
                if (bits >= 8) {
                        bits -= 8;
                        out[n++] = (uint8_t) (acc >> bits);
                        acc &= (1u << bits) - 1;
                }
        }
        if (acc != 0) { /* bits left over must be zero */
                free(out);
                return -EINVAL;
        }
        out[n] = 0;
        *ret = out;
        *ret_size = n;
        return 0;
}

/* ---- parameters ---- */

static int write_all(int fd, const void *data, size_t size) {
        const uint8_t *p = data;

        while (size > 0) {
                ssize_t n = write(fd, p, size);
                if (n < 0 && errno == EINTR)
                        continue;
                if (n < 0)
                        return -errno;
                p += n;
                size -= (size_t) n;
        }
        return 0;
}

/* The PNG file |path| as rgb8/rgba8 pixels in a sealed memfd appended to
 * |fds|; *ret_value is the parameter's value. */
static int image_param(const char *key, const char *path, ctl_fds *fds, json_object **ret_value,
                       const char **ret_error) {
        uint8_t *pixels = NULL;
        uint32_t w, h;
        unsigned channels;

        if (!fds || fds->n >= CTL_MAX_FDS) {
                *ret_error = error_text("too many image parameters (at most %d)", CTL_MAX_FDS);
                return -E2BIG;
        }
        int r = ctl_png_read(path, &pixels, &w, &h, &channels, ret_error);
        if (r < 0) {
                char why[512]; /* *ret_error is in error_text's buffer */
                snprintf(why, sizeof(why), "%s", *ret_error);
                *ret_error = error_text("parameter '%s': %s", key, why);
                return r;
        }
        int fd = memfd_create("gpuhostctl-image", MFD_CLOEXEC | MFD_ALLOW_SEALING);
        if (fd < 0 || (r = write_all(fd, pixels, (size_t) w * h * channels)) < 0 ||
            fcntl(fd, F_ADD_SEALS, F_SEAL_SHRINK | F_SEAL_GROW | F_SEAL_WRITE | F_SEAL_SEAL) < 0) {
                r = r < 0 ? r : -errno;
                *ret_error = error_text("parameter '%s': cannot pass %s: %s", key, path, strerror(-r));
                if (fd >= 0)
                        close(fd);
                free(pixels);
                return r;
        }
        free(pixels);
        json_object *v = json_object_new_object();
        json_object_object_add(v, "fd", json_object_new_int((int) fds->n));
        json_object_object_add(v, "width", json_object_new_int64(w));
        json_object_object_add(v, "height", json_object_new_int64(h));
        json_object_object_add(v, "format", json_object_new_string(channels == 4 ? "rgba8" : "rgb8"));
        fds->fd[fds->n++] = fd;
        *ret_value = v;
        return 0;
}

/* The row of |table| for |key| (|len| bytes, not NUL-terminated). */
static json_object *param_find(json_object *table, const char *key, size_t len) {
        size_t n = table && json_object_is_type(table, json_type_array) ? json_object_array_length(table) : 0;

        for (size_t i = 0; i < n; i++) {
                json_object *p = json_object_array_get_idx(table, i), *name = NULL;
                if (json_object_object_get_ex(p, "name", &name) && json_object_is_type(name, json_type_string) &&
                    strlen(json_object_get_string(name)) == len && strncmp(json_object_get_string(name), key, len) == 0)
                        return p;
        }
        return NULL;
}

/* "prompt (string), steps (int), ..." or "none". */
static void param_names(json_object *table, char *buf, size_t size) {
        size_t n = table && json_object_is_type(table, json_type_array) ? json_object_array_length(table) : 0;
        size_t len = 0;

        buf[0] = 0;
        for (size_t i = 0; i < n && len + 1 < size; i++) {
                json_object *p = json_object_array_get_idx(table, i);
                int k = snprintf(buf + len, size - len, "%s%s (%s)", i ? ", " : "", ctl_json_str(p, "name"),
                                 ctl_json_str(p, "type"));
                if (k < 0)
                        break;
                len = len + (size_t) k < size ? len + (size_t) k : size - 1;
        }
        if (n == 0)
                snprintf(buf, size, "none");
}

/* A number from the whole of |s|: no blanks around it, not empty. */
static bool number_start(const char *s) {
        return *s == '-' || *s == '+' || *s == '.' || (*s >= '0' && *s <= '9');
}

static bool enum_has(json_object *choices, const char *value) {
        size_t n = json_object_array_length(choices);

        for (size_t i = 0; i < n; i++)
                if (strcmp(json_object_get_string(json_object_array_get_idx(choices, i)), value) == 0)
                        return true;
        return false;
}

static void enum_list(json_object *choices, char *buf, size_t size) {
        size_t n = json_object_array_length(choices), len = 0;

        buf[0] = 0;
        for (size_t i = 0; i < n && len + 1 < size; i++) {
                int k = snprintf(buf + len, size - len, "%s%s", i ? ", " : "",
                                 json_object_get_string(json_object_array_get_idx(choices, i)));
                if (k < 0)
                        break;
                len = len + (size_t) k < size ? len + (size_t) k : size - 1;
        }
}

/* The JSON value of |value| for |param|, of type |type|; NULL with
 * *ret_error set when it is not one. */
static int convert_value(json_object *param, const char *key, const char *type, const char *value,
                         ctl_fds *fds, json_object **ret, const char **ret_error) {
        char *end;

        if (strcmp(type, "int") == 0) {
                errno = 0;
                long long v = number_start(value) ? strtoll(value, &end, 10) : 0;
                if (!number_start(value) || errno || end == value || *end) {
                        *ret_error = error_text("parameter '%s' is an int: '%s' is not %s", key, value,
                                                errno == ERANGE ? "within 64 bits" : "a decimal integer");
                        return -EINVAL;
                }
                *ret = json_object_new_int64(v);
        } else if (strcmp(type, "float") == 0) {
                errno = 0;
                double v = number_start(value) ? strtod(value, &end) : NAN;
                if (!number_start(value) || errno || end == value || *end || !isfinite(v)) {
                        *ret_error = error_text("parameter '%s' is a float: '%s' is not a finite number", key, value);
                        return -EINVAL;
                }
                *ret = json_object_new_double(v);
        } else if (strcmp(type, "bool") == 0) {
                static const char *const yes[] = {"true", "yes", "1"}, *const no[] = {"false", "no", "0"};
                int b = -1;
                for (size_t i = 0; i < 3; i++) {
                        if (strcasecmp(value, yes[i]) == 0)
                                b = 1;
                        if (strcasecmp(value, no[i]) == 0)
                                b = 0;
                }
                if (b < 0) {
                        *ret_error = error_text("parameter '%s' is a bool: '%s' is not one of true/false, yes/no, "
                                                "1/0", key, value);
                        return -EINVAL;
                }
                *ret = json_object_new_boolean(b);
        } else if (strcmp(type, "enum") == 0) {
                json_object *choices = NULL;
                if (json_object_object_get_ex(param, "choices", &choices) &&
                    json_object_is_type(choices, json_type_array) && !enum_has(choices, value)) {
                        char list[512];
                        enum_list(choices, list, sizeof(list));
                        *ret_error = error_text("parameter '%s': '%s' is not one of: %s", key, value, list);
                        return -EINVAL;
                }
                *ret = json_object_new_string(value);
        } else if (strcmp(type, "string") == 0 || strcmp(type, "model") == 0) {
                *ret = json_object_new_string(value);
        } else if (strcmp(type, "image") == 0) {
                if (value[0] != '@' || value[1] == 0) {
                        *ret_error = error_text("parameter '%s' is an image: give a PNG file as %s=@FILE.png "
                                                "(raw values are not supported)", key, key);
                        return -EINVAL;
                }
                return image_param(key, value + 1, fds, ret, ret_error);
        } else {
                *ret_error = error_text("parameter '%s' has type '%s', which gpuhostctl cannot pass", key, type);
                return -EINVAL;
        }
        return 0;
}

int ctl_param_convert(json_object *table, const char *arg, json_object *params, ctl_fds *fds,
                      const char **ret_error) {
        const char *eq = strchr(arg, '=');

        if (!eq || eq == arg) {
                *ret_error = error_text("invalid parameter '%s' (KEY=VALUE)", arg);
                return -EINVAL;
        }
        json_object *param = param_find(table, arg, (size_t) (eq - arg));
        if (!param) {
                char names[768];
                param_names(table, names, sizeof(names));
                *ret_error = error_text("unknown parameter '%.*s'; the pipeline's parameters: %s", (int) (eq - arg),
                                        arg, names);
                return -ENOKEY;
        }
        const char *key = ctl_json_str(param, "name");
        if (json_object_object_get_ex(params, key, NULL)) {
                *ret_error = error_text("parameter '%s' given twice", key);
                return -EEXIST;
        }
        json_object *v = NULL;
        int r = convert_value(param, key, ctl_json_str(param, "type"), eq + 1, fds, &v, ret_error);
        if (r < 0)
                return r;
        json_object_object_add(params, key, v);
        return 0;
}

/* ---- outputs ---- */

char *ctl_output_file_name(const char *file, const char *name, size_t index) {
        if (index == 0)
                return strdup(file);

        const char *base = strrchr(file, '/');
        base = base ? base + 1 : file;
        const char *dot = strrchr(base, '.');
        if (!dot || dot == base) /* no extension, or a dot file */
                dot = base + strlen(base);

        char *safe = name && *name ? strdup(name) : NULL;
        if (name && *name && !safe)
                return NULL;
        if (!safe && asprintf(&safe, "%zu", index) < 0)
                return NULL;
        for (char *s = safe; *s; s++)
                if (!((*s >= 'a' && *s <= 'z') || (*s >= 'A' && *s <= 'Z') || (*s >= '0' && *s <= '9') || *s == '.' ||
                      *s == '_' || *s == '-'))
                        *s = '_';

        char *ret = NULL;
        size_t head = (size_t) (dot - file);
        if (asprintf(&ret, "%.*s-%s%s", (int) head, file, safe, dot) < 0)
                ret = NULL;
        free(safe);
        return ret;
}

static bool ends_with_png(const char *path) {
        size_t len = strlen(path);

        return len >= 4 && strcasecmp(path + len - 4, ".png") == 0;
}

/* An integer member, or |def| when absent or null. */
static int64_t int_or(json_object *o, const char *key, int64_t def) {
        json_object *v = NULL;

        return json_object_object_get_ex(o, key, &v) && v ? json_object_get_int64(v) : def;
}

static int write_png_output(const char *tmp, int fd, json_object *output, int64_t size, const ctl_png_text *text,
                            size_t n_text, const char **ret_error) {
        const char *format = ctl_json_str(output, "format");
        unsigned channels = strcmp(format, "rgba8") == 0 ? 4 : 3;
        int64_t w = int_or(output, "width", 0), h = int_or(output, "height", 0);
        int64_t stride = int_or(output, "stride", 0);

        if (stride == 0)
                stride = w * (int64_t) channels;
        if (w <= 0 || h <= 0 || w > IMAGE_DIM_MAX || h > IMAGE_DIM_MAX || stride < w * (int64_t) channels ||
            stride > INT32_MAX || (h - 1) * stride + w * (int64_t) channels > size) {
                *ret_error = error_text("output '%s' is not a valid image: %" PRId64 "x%" PRId64 " %s, rows of %" PRId64
                                        " bytes, %" PRId64 " bytes in all",
                                        ctl_json_str(output, "name"), w, h, format, stride, size);
                return -EBADMSG;
        }
        void *map = mmap(NULL, (size_t) size, PROT_READ, MAP_SHARED, fd, 0);
        if (map == MAP_FAILED) {
                int r = -errno;
                *ret_error = error_text("cannot map output '%s': %s", ctl_json_str(output, "name"), strerror(errno));
                return r;
        }
        int r = ctl_png_write(tmp, map, (uint32_t) w, (uint32_t) h, (size_t) stride, channels, text, n_text,
                              ret_error);
        munmap(map, (size_t) size);
        return r;
}

static int write_raw_output(const char *tmp, int fd, int64_t size, const char **ret_error) {
        int out = open(tmp, O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0666);
        uint8_t buf[65536];
        int r = 0;

        if (out < 0) {
                r = -errno;
                *ret_error = error_text("cannot create %s: %s", tmp, strerror(errno));
                return r;
        }
        for (int64_t off = 0; off < size && r == 0;) {
                size_t want = size - off < (int64_t) sizeof(buf) ? (size_t) (size - off) : sizeof(buf);
                ssize_t n = pread(fd, buf, want, off);
                if (n < 0 && errno == EINTR)
                        continue;
                if (n <= 0) {
                        r = n < 0 ? -errno : -EBADMSG;
                        *ret_error = n < 0 ? error_text("cannot read an output: %s", strerror(errno))
                                           : "an output is shorter than its size";
                        break;
                }
                if ((r = write_all(out, buf, (size_t) n)) < 0)
                        *ret_error = error_text("cannot write %s: %s", tmp, strerror(-r));
                off += n;
        }
        if (r == 0 && fsync(out) < 0) {
                r = -errno;
                *ret_error = error_text("cannot write %s: %s", tmp, strerror(errno));
        }
        if (close(out) < 0 && r == 0) {
                r = -errno;
                *ret_error = error_text("cannot write %s: %s", tmp, strerror(errno));
        }
        return r;
}

int ctl_output_write(const char *path, int fd, json_object *output, const ctl_png_text *text, size_t n_text,
                     const char **ret_error) {
        int64_t size = int_or(output, "size", -1);
        const char *format = ctl_json_str(output, "format");
        struct stat st;
        char *tmp = NULL;
        int r;

        if (fstat(fd, &st) < 0) {
                r = -errno;
                *ret_error = error_text("output '%s': %s", ctl_json_str(output, "name"), strerror(errno));
                return r;
        }
        if (size < 0 || size > st.st_size) {
                *ret_error = error_text("output '%s' claims %" PRId64 " bytes, its file holds %" PRId64,
                                        ctl_json_str(output, "name"), size, (int64_t) st.st_size);
                return -EBADMSG;
        }
        if (asprintf(&tmp, "%s.tmp", path) < 0) {
                *ret_error = "out of memory";
                return -ENOMEM;
        }
        if (strcmp(ctl_json_str(output, "kind"), "image") == 0 &&
            (strcmp(format, "rgb8") == 0 || strcmp(format, "rgba8") == 0) && ends_with_png(path))
                r = write_png_output(tmp, fd, output, size, text, n_text, ret_error);
        else
                r = write_raw_output(tmp, fd, size, ret_error);
        if (r == 0 && rename(tmp, path) < 0) {
                r = -errno;
                *ret_error = error_text("cannot rename %s to %s: %s", tmp, path, strerror(errno));
        }
        if (r < 0)
                unlink(tmp);
        free(tmp);
        return r;
}

/* "512x512 rgb8", "512x512 rgb8, 16 frames", or "-" for bytes. */
static void describe_output(json_object *out, char *buf, size_t size) {
        int64_t w = int_or(out, "width", -1), h = int_or(out, "height", -1), frames = int_or(out, "frames", -1);
        json_object *format = NULL;
        int n = 0;

        buf[0] = 0;
        if (w >= 0 && h >= 0)
                n = snprintf(buf, size, "%" PRId64 "x%" PRId64, w, h);
        if (n >= 0 && (size_t) n < size && json_object_object_get_ex(out, "format", &format) && format)
                n += snprintf(buf + n, size - (size_t) n, "%s%s", n ? " " : "", json_object_get_string(format));
        if (n >= 0 && (size_t) n < size && frames >= 0)
                n += snprintf(buf + n, size - (size_t) n, "%s%" PRId64 " frames", n ? ", " : "", frames);
        if (!buf[0])
                snprintf(buf, size, "-");
}

/* ---- the call ---- */

/* The progress bar's cells on a terminal of |cols| columns (0: not known). */
static int bar_width(int cols) {
        if (cols <= 0 || cols >= 72)
                return 20;
        return cols > 56 ? cols - 52 : 0;
}

static double monotonic_sec(void) {
        struct timespec ts;

        clock_gettime(CLOCK_MONOTONIC, &ts);
        return (double) ts.tv_sec + (double) ts.tv_nsec / 1e9;
}

typedef struct gen_state {
        const ctl_opts *o;
        ctl_status_line status; /* progress on stderr */
        int bar_width;  /* cells of the progress bar on the terminal */
        char last[160]; /* the last progress shown, not to repeat it */
        /* The rate: the step last seen and when, and the seconds per step,
         * a moving average of the time between step events (0: not known). */
        bool have_step;
        int64_t last_step;
        double last_time, sec_per_step;
        int exit_code;
        json_object *final;
        int *fds;       /* the final reply's fds, taken; -1 where none */
        size_t n_fds;
} gen_state;

static void final_clear(gen_state *s) {
        for (size_t i = 0; i < s->n_fds; i++)
                if (s->fds[i] >= 0)
                        close(s->fds[i]);
        free(s->fds);
        s->fds = NULL;
        s->n_fds = 0;
        json_object_put(s->final);
        s->final = NULL;
}

/* Notes that the job is at |step| now, for the rate. */
static void rate_update(gen_state *s, int64_t step) {
        double now = monotonic_sec();

        if (s->have_step && step > s->last_step && now > s->last_time) {
                double per = (now - s->last_time) / (double) (step - s->last_step);
                s->sec_per_step = s->sec_per_step > 0 ? 0.7 * s->sec_per_step + 0.3 * per : per;
        }
        if (!s->have_step || step != s->last_step) {
                s->have_step = true;
                s->last_step = step;
                s->last_time = now;
        }
}

static uint32_t clamp_u32(int64_t v) {
        return v < 0 ? 0 : v > UINT32_MAX ? UINT32_MAX : (uint32_t) v;
}

/* "queued", "running", "[###.......] step 7/20  3.4 it/s  ETA 4s": on a
 * terminal over the previous line; else one line each time it changes,
 * without the bar and the rate ("step 7/20"). */
static void progress_show(gen_state *s, json_object *p) {
        const char *state = ctl_json_str(p, "state");
        json_object *step = NULL, *steps = NULL;
        char line[sizeof(s->last)];

        if (strcmp(state, "running") == 0 && json_object_object_get_ex(p, "step", &step) && step) {
                int64_t k = json_object_get_int64(step);
                uint32_t n = json_object_object_get_ex(p, "steps", &steps) && steps
                                     ? clamp_u32(json_object_get_int64(steps))
                                     : 0;
                rate_update(s, k);
                if (s->status.tty)
                        ctl_progress_format(line, sizeof(line), clamp_u32(k), n,
                                            s->sec_per_step > 0 ? 1 / s->sec_per_step : 0, s->bar_width);
                else
                        ctl_progress_format(line, sizeof(line), clamp_u32(k), n, 0, 0);
        } else if (strcmp(state, "running") == 0) {
                rate_update(s, 0); /* started: step 0 from now */
                snprintf(line, sizeof(line), "running");
        } else if (strcmp(state, "queued") == 0)
                snprintf(line, sizeof(line), "queued");
        else
                return;
        if (s->o->quiet || strcmp(line, s->last) == 0)
                return;
        snprintf(s->last, sizeof(s->last), "%s", line);
        ctl_status_show(&s->status, line);
}

static int on_reply(gh_client *c, gh_reply *reply, void *userdata) {
        gen_state *s = userdata;

        if (gh_reply_error(reply)) {
                ctl_status_clear(&s->status);
                ctl_report_remote_error(gh_reply_error(reply), gh_reply_parameters(reply));
                s->exit_code = CTL_EXIT_REMOTE;
                return 0;
        }
        json_object *p = json_tokener_parse(gh_reply_parameters(reply));
        if (!p)
                return -EBADMSG;
        if (gh_reply_continues(reply) && strcmp(ctl_json_str(p, "state"), "done") != 0) {
                progress_show(s, p);
                json_object_put(p);
                return 0;
        }
        /* The final reply ("done"): keep it, and take its fds before it is
         * freed; an end after "done" that has no outputs changes nothing. */
        if (s->final && !json_object_object_get_ex(p, "outputs", NULL)) {
                json_object_put(p);
                return 0;
        }
        final_clear(s);
        s->final = p;
        s->n_fds = gh_reply_n_fds(reply);
        s->fds = s->n_fds ? calloc(s->n_fds, sizeof(int)) : NULL;
        if (s->n_fds && !s->fds) {
                s->n_fds = 0;
                return -ENOMEM;
        }
        for (size_t i = 0; i < s->n_fds; i++)
                s->fds[i] = gh_reply_take_fd(reply, i);
        return 0;
}

/* The fd of |out| among the final reply's, or -1. */
static int output_fd(const gen_state *s, json_object *out) {
        int64_t i = int_or(out, "fd", -1);

        return i >= 0 && (uint64_t) i < s->n_fds ? s->fds[i] : -1;
}

/* A memfd holding the base64 "data" of an inline output, or -1 with a
 * message printed (none when it has no data). */
static int inline_output_fd(json_object *out) {
        json_object *data = NULL;
        uint8_t *bytes = NULL;
        size_t size = 0;

        if (!json_object_object_get_ex(out, "data", &data) || !data || !json_object_is_type(data, json_type_string))
                return -1;
        int r = ctl_base64_decode(json_object_get_string(data), &bytes, &size);
        if (r < 0) {
                fprintf(stderr, "gpuhostctl: malformed reply: output '%s' has %s\n", ctl_json_str(out, "name"),
                        r == -ENOMEM ? "too much data to hold" : "malformed base64 data");
                return -2;
        }
        int fd = memfd_create("gpuhostctl-output", MFD_CLOEXEC);
        if (fd < 0 || (r = write_all(fd, bytes, size)) < 0) {
                fprintf(stderr, "gpuhostctl: cannot hold output '%s': %s\n", ctl_json_str(out, "name"),
                        strerror(fd < 0 ? errno : -r));
                if (fd >= 0)
                        close(fd);
                fd = -2;
        }
        free(bytes);
        return fd;
}

static int write_outputs(const gen_state *s, json_object *outputs, size_t n, const ctl_png_texts *texts) {
        if (n == 0) {
                fprintf(stderr, "gpuhostctl: the job produced no outputs\n");
                return CTL_EXIT_REMOTE;
        }
        for (size_t i = 0; i < n; i++) {
                json_object *out = json_object_array_get_idx(outputs, i);
                const char *error = NULL;
                int fd = output_fd(s, out), own = -1;
                if (fd < 0)
                        fd = own = inline_output_fd(out);
                if (fd == -1)
                        fprintf(stderr, "gpuhostctl: malformed reply: output '%s' has no file descriptor\n",
                                ctl_json_str(out, "name"));
                if (fd < 0)
                        return CTL_EXIT_CONNECT;
                char *path = ctl_output_file_name(s->o->output, ctl_json_str(out, "name"), i);
                if (!path) {
                        fprintf(stderr, "gpuhostctl: out of memory\n");
                        if (own >= 0)
                                close(own);
                        return CTL_EXIT_REMOTE;
                }
                int r = ctl_output_write(path, fd, out, texts->v, texts->n, &error);
                if (own >= 0)
                        close(own);
                if (r < 0) {
                        fprintf(stderr, "gpuhostctl: %s\n", error);
                        free(path);
                        return CTL_EXIT_REMOTE;
                }
                if (!s->o->quiet && !s->o->json) {
                        char what[96];
                        describe_output(out, what, sizeof(what));
                        if (strcmp(what, "-") == 0)
                                ctl_format_bytes(ctl_json_int(out, "size"), what, sizeof(what));
                        printf("wrote %s (%s: %s)\n", path, ctl_json_str(out, "name"), what);
                }
                free(path);
        }
        return CTL_EXIT_OK;
}

static void print_summary(json_object *final, json_object *outputs, size_t n) {
        json_object *metadata = NULL;
        int name_w = 6;

        printf("job %s: %s on device %s\n", ctl_json_str(final, "job"), ctl_json_str(final, "state"),
               ctl_json_str(final, "device"));
        for (size_t i = 0; i < n; i++) {
                size_t len = strlen(ctl_json_str(json_object_array_get_idx(outputs, i), "name"));
                if (len > (size_t) name_w)
                        name_w = len > 32 ? 32 : (int) len;
        }
        if (n > 0)
                printf("%-*s %-6s %10s %s\n", name_w, "OUTPUT", "KIND", "SIZE", "DIMENSIONS");
        for (size_t i = 0; i < n; i++) {
                json_object *out = json_object_array_get_idx(outputs, i);
                char size[32], dims[96];
                ctl_format_bytes(ctl_json_int(out, "size"), size, sizeof(size));
                describe_output(out, dims, sizeof(dims));
                printf("%-*s %-6s %10s %s\n", name_w, ctl_json_str(out, "name"), ctl_json_str(out, "kind"), size,
                       dims);
        }
        if (json_object_object_get_ex(final, "metadata", &metadata) && metadata &&
            json_object_is_type(metadata, json_type_object) && json_object_object_length(metadata) > 0) {
                printf("metadata:\n");
                json_object_object_foreach(metadata, key, v) {
                        printf("  %s: %s\n", key,
                               v && json_object_is_type(v, json_type_string)
                                       ? json_object_get_string(v)
                                       : json_object_to_json_string_ext(v, JSON_C_TO_STRING_PLAIN |
                                                                                   JSON_C_TO_STRING_NOSLASHESCAPE));
                }
        }
        if (n > 0)
                printf("(not saved: use -o FILE to write the outputs)\n");
}

/* Converts --model and every --param; returns a CTL_EXIT_* code. */
static int build_parameters(const ctl_opts *o, json_object *table, json_object *params, ctl_fds *fds) {
        const char *error = NULL;
        char *model_arg = NULL;

        if (o->model && asprintf(&model_arg, "model=%s", o->model) < 0) {
                fprintf(stderr, "gpuhostctl: out of memory\n");
                return CTL_EXIT_USAGE;
        }
        int r = model_arg ? ctl_param_convert(table, model_arg, params, fds, &error) : 0;
        free(model_arg);
        for (int i = 0; r >= 0 && i < o->n_params; i++)
                r = ctl_param_convert(table, o->params[i], params, fds, &error);
        if (r < 0) {
                fprintf(stderr, "gpuhostctl: %s%s\n", error,
                        r == -ENOKEY ? " (see 'gpuhostctl pipelines PIPELINE')" : "");
                return CTL_EXIT_USAGE;
        }
        return CTL_EXIT_OK;
}

/* Makes a streamed call (Generate or WaitJob) and waits for its final
 * reply, showing the progress; returns a CTL_EXIT_* code. */
static int stream_call(const ctl_opts *o, gh_client *c, const char *method, json_object *call, const ctl_fds *fds,
                       gen_state *s) {
        /* A job takes as long as it takes: no limit unless -t says. */
        if (!o->timeout_given)
                gh_client_set_timeout(c, 0);
        int k = gh_client_call_full(
                c, method, json_object_to_json_string_ext(call, JSON_C_TO_STRING_PLAIN | JSON_C_TO_STRING_NOSLASHESCAPE),
                GH_CALL_MORE, fds ? fds->fd : NULL, fds ? fds->n : 0, on_reply, s);
        ctl_status_clear(&s->status);
        if (k < 0)
                return ctl_report_transport_error(o, c, k);
        if (s->exit_code != CTL_EXIT_OK)
                return s->exit_code;
        if (!s->final) {
                fprintf(stderr, "gpuhostctl: gpuhostd ended the call without a final reply\n");
                return CTL_EXIT_CONNECT;
        }
        return CTL_EXIT_OK;
}

/* Writes or describes the outputs of the final reply. |pipeline| and
 * |params|, when known, go into the PNG files' "parameters" text. */
static int finish(const ctl_opts *o, gen_state *s, const char *pipeline, json_object *params) {
        json_object *outputs = NULL, *metadata = NULL;
        const char *state = ctl_json_str(s->final, "state");
        int r = CTL_EXIT_OK;

        if (strcmp(state, "done") != 0) {
                fprintf(stderr, "gpuhostctl: job %s ended without outputs: %s\n", ctl_json_str(s->final, "job"),
                        state);
                if (o->json)
                        ctl_print_json(s->final);
                return CTL_EXIT_REMOTE;
        }
        size_t n = json_object_object_get_ex(s->final, "outputs", &outputs) &&
                                   json_object_is_type(outputs, json_type_array)
                           ? json_object_array_length(outputs)
                           : 0;
        if (o->output) {
                ctl_png_texts texts = {0};
                json_object *job = NULL;
                json_object_object_get_ex(s->final, "metadata", &metadata);
                json_object_object_get_ex(s->final, "job", &job);
                if (ctl_png_texts_for_job(&texts, pipeline, params,
                                          job && json_object_is_type(job, json_type_string)
                                                  ? json_object_get_string(job)
                                                  : NULL,
                                          metadata) < 0) {
                        fprintf(stderr, "gpuhostctl: out of memory\n");
                        r = CTL_EXIT_REMOTE;
                } else
                        r = write_outputs(s, outputs, n, &texts);
                ctl_png_texts_free(&texts);
        }
        if (r == CTL_EXIT_OK && o->json)
                ctl_print_json(s->final);
        else if (r == CTL_EXIT_OK && !o->output)
                print_summary(s->final, outputs, n);
        return r;
}

static void gen_state_init(gen_state *s, const ctl_opts *o) {
        struct winsize ws = {0};

        *s = (gen_state) {.o = o, .status.tty = isatty(STDERR_FILENO) == 1, .exit_code = CTL_EXIT_OK};
        s->bar_width = bar_width(s->status.tty && ioctl(STDERR_FILENO, TIOCGWINSZ, &ws) == 0 ? ws.ws_col : 0);
}

/* A new job: Generate with "more", or with --detach without it. */
static int run_generate(const ctl_opts *o) {
        const char *name = o->args[0];
        gen_state s;
        json_object *list = NULL, *params = json_object_new_object(), *call = NULL;
        ctl_fds fds = {.n = 0};
        gh_client *c = NULL;
        int r = ctl_connect(o, &c);

        gen_state_init(&s, o);
        if (r == CTL_EXIT_OK)
                r = ctl_call(o, c, "io.gpuhost.ListPipelines", NULL, &list);
        if (r == CTL_EXIT_OK) {
                json_object *pipeline = ctl_pipeline_find(list, name);
                if (!pipeline) {
                        fprintf(stderr, "gpuhostctl: no pipeline '%s' (see 'gpuhostctl pipelines')\n", name);
                        r = CTL_EXIT_REMOTE;
                } else
                        r = build_parameters(o, json_object_object_get(pipeline, "parameters"), params, &fds);
        }
        if (r == CTL_EXIT_OK) {
                call = json_object_new_object();
                json_object_object_add(call, "pipeline", json_object_new_string(name));
                json_object_object_add(call, "parameters", json_object_get(params));
                if (o->device >= 0)
                        json_object_object_add(call, "device", json_object_new_int(o->device));
                if (o->priority)
                        json_object_object_add(call, "priority", json_object_new_string(o->priority));
                if (o->deadline_sec > 0)
                        json_object_object_add(call, "deadline_sec", json_object_new_double(o->deadline_sec));
                if (o->tag)
                        json_object_object_add(call, "tag", json_object_new_string(o->tag));
        }
        if (r == CTL_EXIT_OK && o->detach) {
                /* The reply comes at once: the job's id, "queued". */
                json_object_object_add(call, "detach", json_object_new_boolean(true));
                int k = gh_client_call_full(c, "io.gpuhost.Generate",
                                            json_object_to_json_string_ext(call, JSON_C_TO_STRING_PLAIN |
                                                                                         JSON_C_TO_STRING_NOSLASHESCAPE),
                                            0, fds.fd, fds.n, on_reply, &s);
                if (k < 0)
                        r = ctl_report_transport_error(o, c, k);
                else if (s.exit_code != CTL_EXIT_OK)
                        r = s.exit_code;
                else if (!s.final || strcmp(ctl_json_str(s.final, "job"), "?") == 0) {
                        fprintf(stderr, "gpuhostctl: malformed reply: no job id\n");
                        r = CTL_EXIT_CONNECT;
                } else if (o->json)
                        ctl_print_json(s.final);
                else
                        printf("%s\n", ctl_json_str(s.final, "job"));
        } else if (r == CTL_EXIT_OK) {
                r = stream_call(o, c, "io.gpuhost.Generate", call, &fds, &s);
                if (r == CTL_EXIT_OK)
                        r = finish(o, &s, name, params);
        }
        final_clear(&s);
        ctl_fds_close(&fds);
        json_object_put(call);
        json_object_put(params);
        json_object_put(list);
        gh_client_free(c);
        return r;
}

/* --wait ID: WaitJob with "more", then as a new job. */
static int run_wait(const ctl_opts *o) {
        gen_state s;
        json_object *call = json_object_new_object();
        gh_client *c = NULL;
        int r = ctl_connect(o, &c);

        gen_state_init(&s, o);
        json_object_object_add(call, "job", json_object_new_string(o->wait_job));
        if (r == CTL_EXIT_OK)
                r = stream_call(o, c, "io.gpuhost.WaitJob", call, NULL, &s);
        if (r == CTL_EXIT_OK)
                r = finish(o, &s, NULL, NULL);
        final_clear(&s);
        json_object_put(call);
        gh_client_free(c);
        return r;
}

static void print_cancelled(const ctl_opts *o, gh_client *c, json_object *reply) {
        if (!o->quiet)
                printf("job %s: %s\n", ctl_json_str(reply, "job"), ctl_json_str(reply, "state"));
}

/* --cancel ID: CancelJob, and the state it leaves the job in. */
static int run_cancel(const ctl_opts *o) {
        json_object *call = json_object_new_object();

        json_object_object_add(call, "job", json_object_new_string(o->cancel_job));
        int r = ctl_call_and_print(
                o, "io.gpuhost.CancelJob",
                json_object_to_json_string_ext(call, JSON_C_TO_STRING_PLAIN | JSON_C_TO_STRING_NOSLASHESCAPE),
                print_cancelled);
        json_object_put(call);
        return r;
}

/* The first option given that a job already submitted (--wait, --cancel)
 * does not take, or NULL. */
static const char *new_job_option(const ctl_opts *o, bool output_too) {
        return o->n_params > 0       ? "--param"
               : o->model            ? "--model"
               : o->device >= 0      ? "--device"
               : o->priority         ? "--priority"
               : o->deadline_sec > 0 ? "--deadline"
               : o->tag              ? "--tag"
               : o->detach           ? "--detach"
               : output_too && o->output ? "--output"
                                         : NULL;
}

static int check(const ctl_opts *o, const char **ret_error) {
        if (o->wait_job && o->cancel_job) {
                *ret_error = "--wait and --cancel exclude each other";
                return -EINVAL;
        }
        const char *mode = o->wait_job ? "--wait" : o->cancel_job ? "--cancel" : NULL;
        if (mode) {
                const char *bad = new_job_option(o, !!o->cancel_job);
                if (o->n_args > 0) {
                        *ret_error = ctl_usage_error("%s ID takes no PIPELINE (the job has its own): '%s'", mode,
                                                     o->args[0]);
                        return -EINVAL;
                }
                if (bad) {
                        *ret_error = ctl_usage_error("%s does not apply with %s (it acts on a job already "
                                                     "submitted)", bad, mode);
                        return -EINVAL;
                }
                return 0;
        }
        if (o->n_args < 1) {
                *ret_error = ctl_usage_error("missing arguments (usage: gpuhostctl %s %s)", ctl_cmd_generate.name,
                                             ctl_cmd_generate.args_usage);
                return -EINVAL;
        }
        if (o->detach && o->output) {
                *ret_error = "--detach and --output exclude each other: --detach does not wait for the outputs "
                             "(fetch them later with --wait ID -o FILE)";
                return -EINVAL;
        }
        return 0;
}

static int run(const ctl_opts *o) {
        const char *error = NULL;

        /* The parser has checked; this is for callers that did not. */
        if (check(o, &error) < 0) {
                fprintf(stderr, "gpuhostctl: %s\n", error);
                return CTL_EXIT_USAGE;
        }
        return o->cancel_job ? run_cancel(o) : o->wait_job ? run_wait(o) : run_generate(o);
}

const ctl_command ctl_cmd_generate = {
        .name = "generate",
        .args_usage = "PIPELINE [--param KEY=VALUE]... [--model M] [-o FILE] | --wait ID [-o FILE] | --cancel ID",
        .summary = "run a pipeline and save its outputs; wait for or cancel a job",
        .description =
                "Runs PIPELINE (io.gpuhost.Generate) with the parameters given as\n"
                "--param KEY=VALUE, each converted to the type the pipeline declares\n"
                "('gpuhostctl pipelines PIPELINE' lists them): int, float, bool\n"
                "(true/false, yes/no, 1/0), enum (one of its choices), string, model.\n"
                "An image parameter takes a PNG file, KEY=@FILE.png, passed to the daemon\n"
                "as rgb8 or rgba8 pixels. --model M is short for --param model=M. Each\n"
                "parameter may be given once; an unknown one is a usage error.\n"
                "\n"
                "--priority interactive|normal|batch sets the job's class in the queue\n"
                "(normal by default); --deadline SEC fails the job (DeadlineExceeded) if it\n"
                "is not done SEC seconds after it was submitted; --tag TEXT labels it for\n"
                "'gpuhostctl jobs'.\n"
                "\n"
                "Shows the progress on stderr: \"queued\", then on a terminal one line\n"
                "redrawn, \"[###.......] step 7/20  3.4 it/s  ETA 4s\", else a line\n"
                "\"step 7/20\" for each step; nothing with -q. No reply timeout applies\n"
                "unless -t is given. Interrupting gpuhostctl cancels the job.\n"
                "\n"
                "With -o FILE, writes the first output to FILE: an rgb8 or rgba8 image\n"
                "becomes a PNG file when FILE ends in .png, any other output is written\n"
                "as its raw bytes. Further outputs go to FILE with \"-NAME\" (the output's\n"
                "name) before the extension: out.png, out-frames.png. Each file is\n"
                "written to FILE.tmp first, then renamed. A PNG file carries text chunks:\n"
                "\"parameters\" (the pipeline, the model and the parameters as sent, as\n"
                "JSON), \"gpuhost-job\" (the job's id) and one for each member of the\n"
                "job's metadata. Without -o, prints each output's name, kind, size and\n"
                "dimensions, and the job's metadata. --json prints the final reply as\n"
                "JSON (after writing the files).\n"
                "\n"
                "--detach submits the job and prints its id (the reply, with --json)\n"
                "without waiting; the job runs on after gpuhostctl exits. --wait ID waits\n"
                "for that job (io.gpuhost.WaitJob) with progress, and writes or describes\n"
                "its outputs as above (its PNG files have no \"parameters\" text); it\n"
                "works for a finished job as long as the daemon keeps it. --cancel ID\n"
                "cancels the job (io.gpuhost.CancelJob) and prints the state it is left\n"
                "in. --wait and --cancel take no PIPELINE and none of the options of a\n"
                "new job; --detach takes no -o.\n"
                "\n"
                "Errors of the job (WorkerCrashed, JobFailed, InvalidParameter,\n"
                "DeadlineExceeded, JobCancelled, QueueFull, JobNotFound, ...) exit with\n"
                "status 1, as does an output that cannot be written.",
        .options = CTL_OPT_JSON | CTL_OPT_DEVICE | CTL_OPT_PARAM | CTL_OPT_OUTPUT | CTL_OPT_QUIET | CTL_OPT_JOB,
        .min_args = 0,
        .max_args = 1,
        .check = check,
        .run = run,
};

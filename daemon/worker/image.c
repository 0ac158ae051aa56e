/* PNG decoding for image parameters, with libpng. See image.h.
 *
 * libpng reads from the mapped file through a bounded reader, reports
 * errors through a longjmp back into decode(), which touches nothing but
 * the decoder it was handed, and converts to 8-bit RGB(A) with its
 * transforms: palette to RGB, grey below 8 bits expanded, grey to RGB,
 * 16 bits scaled to 8, interlace passes combined. The alpha that
 * expanding a palette makes of a tRNS chunk is stripped again, so the
 * channels are those the colour type says, as the daemon announced from
 * the IHDR alone. */
#include <errno.h>
#include <png.h>
#include <setjmp.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>

#include "../common/util.h"
#include "image.h"

/* Ancillary chunks libpng keeps in memory (text, ICC profiles). */
#define CHUNK_MALLOC_MAX (8u << 20)

typedef struct decoder {
        const uint8_t *data;
        size_t size, pos;
        const gh_image *want;
        uint8_t *pixels;        /* anonymous mapping of |bytes| */
        size_t bytes;
        png_bytep *rows;
        char message[256];      /* libpng's error, or ours */
} decoder;

static void on_error(png_structp png, png_const_charp message) {
        decoder *d = png_get_error_ptr(png);

        if (!d->message[0])
                snprintf(d->message, sizeof(d->message), "%s", message);
        png_longjmp(png, 1);
}

static void on_warning(png_structp png, png_const_charp message) {
}

static void on_read(png_structp png, png_bytep out, size_t n) {
        decoder *d = png_get_io_ptr(png);

        if (n > d->size - d->pos)
                png_error(png, "the file ends too early");
        memcpy(out, d->data + d->pos, n);
        d->pos += n;
}

/* The file's IHDR against what the daemon announced. */
static bool header_matches(png_structp png, png_infop info, const gh_image *want) {
        bool alpha = png_get_color_type(png, info) & PNG_COLOR_MASK_ALPHA;

        return png_get_image_width(png, info) == want->width && png_get_image_height(png, info) == want->height &&
               alpha == (want->format == GH_IMAGE_RGBA8);
}

static void set_transforms(png_structp png, png_infop info) {
        int type = png_get_color_type(png, info);

        if (type == PNG_COLOR_TYPE_PALETTE)
                png_set_palette_to_rgb(png);
        if (type == PNG_COLOR_TYPE_GRAY && png_get_bit_depth(png, info) < 8)
                png_set_expand_gray_1_2_4_to_8(png);
        if (png_get_bit_depth(png, info) == 16)
                png_set_scale_16(png);
        if (type == PNG_COLOR_TYPE_GRAY || type == PNG_COLOR_TYPE_GRAY_ALPHA)
                png_set_gray_to_rgb(png);
        if (!(type & PNG_COLOR_MASK_ALPHA))
                png_set_strip_alpha(png); /* what expanding a palette made of a tRNS chunk */
        png_set_interlace_handling(png);
        png_read_update_info(png, info);
}

/* Everything libpng may longjmp out of; state lives in |d| only. */
static int decode(png_structp png, png_infop info, decoder *d) {
        const gh_image *want = d->want;

        if (setjmp(png_jmpbuf(png)))
                return -EBADMSG;
        png_set_read_fn(png, d, on_read);
        png_set_user_limits(png, want->width, want->height);
        png_set_chunk_malloc_max(png, CHUNK_MALLOC_MAX);
        png_read_info(png, info);
        if (!header_matches(png, info, want)) {
                snprintf(d->message, sizeof(d->message), "the file is not the %ux%u %s image announced", want->width,
                         want->height, want->format == GH_IMAGE_RGBA8 ? "rgba8" : "rgb8");
                return -EBADMSG;
        }
        set_transforms(png, info);
        if (png_get_rowbytes(png, info) != want->stride) {
                snprintf(d->message, sizeof(d->message), "rows decode to %zu bytes, not %u",
                         (size_t) png_get_rowbytes(png, info), want->stride);
                return -EBADMSG;
        }
        d->bytes = (size_t) want->stride * want->height;
        void *map = mmap(NULL, d->bytes, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
        if (map == MAP_FAILED)
                return -ENOMEM;
        d->pixels = map;
        if (!(d->rows = malloc(want->height * sizeof(png_bytep))))
                return -ENOMEM;
        for (uint32_t y = 0; y < want->height; y++)
                d->rows[y] = d->pixels + (size_t) y * want->stride;
        png_read_image(png, d->rows);
        png_read_end(png, NULL);
        return 0;
}

int gh_wk_png_decode(const void *data, size_t size, const gh_image *want, void **ret_pixels, size_t *ret_size,
                     char *err, size_t err_size) {
        decoder d = {.data = data, .size = size, .want = want};
        png_structp png = png_create_read_struct(PNG_LIBPNG_VER_STRING, &d, on_error, on_warning);
        png_infop info = png ? png_create_info_struct(png) : NULL;
        int r = info ? decode(png, info, &d) : -ENOMEM;

        png_destroy_read_struct(png ? &png : NULL, info ? &info : NULL, NULL);
        free(d.rows);
        if (r >= 0 && mprotect(d.pixels, d.bytes, PROT_READ) < 0)
                r = gh_negerrno();
        if (r < 0) {
                if (d.pixels)
                        munmap(d.pixels, d.bytes);
                gh_set_error(err, err_size, "%s", r == -EBADMSG ? d.message : strerror(-r));
                return r;
        }
        *ret_pixels = d.pixels;
        *ret_size = d.bytes;
        return 0;
}

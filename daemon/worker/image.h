/* Input images in gpuhost-worker: PNG files decoded to the pixels plugins
 * get. The daemon has only read a PNG's IHDR (common/image-input.c); the
 * pixels are decoded here, where a crash costs one worker, not gpuhostd. */
#pragma once

#include <stddef.h>

#include "gpuhost/plugin.h"

/* Decodes the PNG file |data| (|size| bytes) into new anonymous memory,
 * read-only, 8-bit RGB or RGBA rows packed (as |want| says: its width,
 * height and format must be what the file's IHDR says, the format rgba8
 * exactly when the colour type has alpha; transparency from a tRNS chunk
 * is not kept). Palette, grey, 16-bit and interlaced files are converted.
 * Returns 0 with the pixels in *ret_pixels (munmap() them with *ret_size
 * bytes), or -EBADMSG with a one-line reason in |err| for a file that is
 * not a valid PNG or not the one described, or -ENOMEM. */
int gh_wk_png_decode(const void *data, size_t size, const gh_image *want, void **ret_pixels, size_t *ret_size,
                     char *err, size_t err_size);

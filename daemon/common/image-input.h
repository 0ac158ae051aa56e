/* Input images as gpuhostd receives them, before any worker sees them:
 * the head of a PNG file (its signature and IHDR chunk, which say its size
 * and colour type without a pixel decoded), read from an fd a client sent
 * without ever waiting on a disk, and images sent inline as base64, turned
 * into sealed memfds so that workers get every image as an fd. Decoding
 * PNG pixels is the worker's job (daemon/worker/image.c). */
#pragma once

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

/* The signature (8 bytes) and the IHDR chunk (length, type, 13 bytes of
 * data, CRC): what a PNG file must begin with. */
#define GH_PNG_HEAD_SIZE 33

typedef struct gh_png_head {
        uint32_t width, height;
        uint8_t bit_depth, color_type, interlace;
        bool alpha; /* colour type 4 (grey + alpha) or 6 (RGBA): decoded as rgba8, else rgb8 */
} gh_png_head;

/* Checks the first |size| bytes of a PNG file: the signature, then an IHDR
 * chunk of 13 bytes with a good CRC, a width and a height of 1..|max_side|,
 * a bit depth that goes with the colour type (0, 2, 3, 4 or 6), compression
 * and filter method 0, interlace 0 or 1. Returns 0, or -EINVAL with a
 * one-line reason in |why|. */
int gh_png_head_parse(const uint8_t *buf, size_t size, uint32_t max_side, gh_png_head *ret, char *why,
                      size_t why_size);

/* Reads the first |size| bytes of |fd| (a client's) into |buf|, and its
 * size into *ret_file_size, without waiting on a disk: the fd must be a
 * regular file of |size| to |max_bytes| bytes; a memfd (or other shmem
 * file) is read as it is, any other file only from the page cache
 * (RWF_NOWAIT). Returns 0, or -EINVAL with a reason in |why| (a pipe, a
 * socket, too short, too large, its first bytes not in memory). */
int gh_image_fd_head(int fd, void *buf, size_t size, uint64_t max_bytes, uint64_t *ret_file_size, char *why,
                     size_t why_size);

/* Decodes |text| (|len| characters of base64; the caller has checked its
 * decoded size, gh_base64_decoded_size(), against its limits) into a new
 * memfd (MFD_CLOEXEC, sealed against writes, shrinking and growing), and
 * copies its first |head_size| bytes (fewer when it is shorter) into
 * |head|. Returns 0 with the fd in *ret_fd and its size in *ret_size,
 * -EINVAL with a reason in |why| for malformed or empty base64, or another
 * negative errno when the memfd cannot be made. */
int gh_image_memfd_from_base64(const char *text, size_t len, void *head, size_t head_size, int *ret_fd,
                               uint64_t *ret_size, char *why, size_t why_size);

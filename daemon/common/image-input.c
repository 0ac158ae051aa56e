/* Input images in gpuhostd: PNG heads, client fds read without waiting,
 * base64 into sealed memfds. See image-input.h.
 *
 * Nothing here decodes pixels, and nothing reads more than a PNG's first
 * 33 bytes from a client's fd: the daemon's event loop calls it. A memfd
 * made here is written through a shared mapping, unmapped, then sealed
 * (F_SEAL_WRITE needs no writable mapping left). */
#include <fcntl.h>
#include <inttypes.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <sys/uio.h>

#include "base64.h"
#include "image-input.h"
#include "util.h"

#define WHY(...) (gh_set_error(why, why_size, __VA_ARGS__), -EINVAL)

static const uint8_t png_signature[8] = {0x89, 'P', 'N', 'G', '\r', '\n', 0x1a, '\n'};

static uint32_t be32(const uint8_t *p) {
        return (uint32_t) p[0] << 24 | (uint32_t) p[1] << 16 | (uint32_t) p[2] << 8 | p[3];
}

/* CRC-32 as PNG (and zlib) define it, bit by bit: it runs over 17 bytes. */
static uint32_t crc32_of(const uint8_t *p, size_t n) {
        uint32_t c = 0xffffffffu;

        for (size_t i = 0; i < n; i++) {
                c ^= p[i];
                for (int k = 0; k < 8; k++)
                        c = c & 1 ? 0xedb88320u ^ (c >> 1) : c >> 1;
        }
        return c ^ 0xffffffffu;
}

/* The bit depths PNG allows with |color_type| (a bit set per depth). */
static unsigned depths_of(uint8_t color_type) {
        switch (color_type) {
        case 0:
                return 1u << 1 | 1u << 2 | 1u << 4 | 1u << 8 | 1u << 16;
        case 3:
                return 1u << 1 | 1u << 2 | 1u << 4 | 1u << 8;
        case 2:
        case 4:
        case 6:
                return 1u << 8 | 1u << 16;
        }
        return 0;
}

int gh_png_head_parse(const uint8_t *buf, size_t size, uint32_t max_side, gh_png_head *ret, char *why,
                      size_t why_size) {
        if (size < GH_PNG_HEAD_SIZE)
                return WHY("too short to be a PNG file (%zu bytes)", size);
        if (memcmp(buf, png_signature, sizeof(png_signature)) != 0)
                return WHY("not a PNG file (no PNG signature)");
        if (memcmp(buf + 12, "IHDR", 4) != 0)
                return WHY("the PNG file does not begin with an IHDR chunk");
        if (be32(buf + 8) != 13)
                return WHY("the PNG's IHDR chunk is %" PRIu32 " bytes long, not 13", be32(buf + 8));
        if (crc32_of(buf + 12, 17) != be32(buf + 29))
                return WHY("the PNG's IHDR chunk has a bad CRC");
        gh_png_head h = {
                .width = be32(buf + 16),
                .height = be32(buf + 20),
                .bit_depth = buf[24],
                .color_type = buf[25],
                .interlace = buf[28],
        };
        if (h.width == 0 || h.height == 0 || h.width > max_side || h.height > max_side)
                return WHY("the PNG is %" PRIu32 "x%" PRIu32 " pixels; width and height must be 1..%" PRIu32, h.width,
                           h.height, max_side);
        if (h.bit_depth > 16 || !(depths_of(h.color_type) & (1u << h.bit_depth)))
                return WHY("the PNG has colour type %u with bit depth %u, which PNG does not allow", h.color_type,
                           h.bit_depth);
        if (buf[26] != 0 || buf[27] != 0 || h.interlace > 1)
                return WHY("the PNG's IHDR has an unknown compression, filter or interlace method");
        h.alpha = h.color_type == 4 || h.color_type == 6;
        *ret = h;
        return 0;
}

int gh_image_fd_head(int fd, void *buf, size_t size, uint64_t max_bytes, uint64_t *ret_file_size, char *why,
                     size_t why_size) {
        struct stat st;
        ssize_t n;

        if (fstat(fd, &st) < 0)
                return WHY("its fd cannot be examined: %s", strerror(errno));
        if (!S_ISREG(st.st_mode))
                return WHY("its fd is not a regular file or a memfd");
        if ((uint64_t) st.st_size < size)
                return WHY("its file is %" PRIu64 " bytes, too short to be a PNG file", (uint64_t) st.st_size);
        if ((uint64_t) st.st_size > max_bytes)
                return WHY("its file is %" PRIu64 " bytes, more than the %" PRIu64 " allowed", (uint64_t) st.st_size,
                           max_bytes);
        if (fcntl(fd, F_GET_SEALS) >= 0) /* shmem (a memfd): memory, no disk */
                n = pread(fd, buf, size, 0);
        else
                n = preadv2(fd, &(struct iovec) {buf, size}, 1, 0, RWF_NOWAIT);
        if (n < 0 && (errno == EAGAIN || errno == EOPNOTSUPP))
                return WHY("the first bytes of its file are not in memory, and gpuhostd does not wait on a disk: "
                           "send a memfd, or the image inline (\"data\")");
        if (n < 0)
                return WHY("its file cannot be read: %s", strerror(errno));
        if ((size_t) n < size)
                return WHY("its file is too short to be a PNG file");
        *ret_file_size = (uint64_t) st.st_size;
        return 0;
}

/* Decodes into |fd|, |size| bytes long already. */
static int decode_into(int fd, const char *text, size_t len, size_t size, void *head, size_t head_size, char *why,
                       size_t why_size) {
        size_t bad;
        uint8_t *map = mmap(NULL, size, PROT_READ | PROT_WRITE, MAP_SHARED, fd, 0);

        if (map == MAP_FAILED)
                return gh_negerrno();
        int64_t n = gh_base64_decode(text, len, map, &bad);
        if (n >= 0 && head_size > 0)
                memcpy(head, map, head_size < size ? head_size : size);
        munmap(map, size);
        if (n < 0)
                return WHY("the image's \"data\" is not base64 (at character %zu)", bad);
        return 0;
}

int gh_image_memfd_from_base64(const char *text, size_t len, void *head, size_t head_size, int *ret_fd,
                               uint64_t *ret_size, char *why, size_t why_size) {
        int64_t size = gh_base64_decoded_size(text, len);
        int r;

        if (size < 0)
                return WHY("the image's \"data\" is not base64 (its length or padding is wrong)");
        if (size == 0)
                return WHY("the image's \"data\" is empty");
        _cleanup_close_ int fd = memfd_create("gpuhost-image", MFD_CLOEXEC | MFD_ALLOW_SEALING);
        if (fd < 0 || ftruncate(fd, (off_t) size) < 0)
                return gh_negerrno();
        if ((r = decode_into(fd, text, len, (size_t) size, head, head_size, why, why_size)) < 0)
                return r;
        if (fcntl(fd, F_ADD_SEALS, F_SEAL_SHRINK | F_SEAL_GROW | F_SEAL_WRITE | F_SEAL_SEAL) < 0)
                return gh_negerrno();
        *ret_fd = TAKE_FD(fd);
        *ret_size = (uint64_t) size;
        return 0;
}

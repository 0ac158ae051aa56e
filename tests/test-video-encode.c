/* Unit tests for the video encoder (plugins/video/encode.c): frames of a
 * moving square to H.264 in MP4 and back through the same libraries (frame
 * count, size, frame rate, codec, a metadata tag, the moov atom ahead of
 * the media data), and refused arguments and files. */
#include <stdarg.h>
#include <stddef.h>
#include <setjmp.h>
#include <cmocka.h>
#include <errno.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include "encode.h"

static char err[512];

/* |n| frames: grey, with a white 8x8 square moving right by 4 pixels a frame. */
static uint8_t *square_frames(uint32_t w, uint32_t h, uint32_t n) {
        uint8_t *rgb = malloc((size_t) w * h * 3 * n);

        assert_non_null(rgb);
        memset(rgb, 96, (size_t) w * h * 3 * n);
        for (uint32_t f = 0; f < n; f++)
                for (uint32_t y = h / 2 - 4; y < h / 2 + 4; y++)
                        for (uint32_t x = 4 * f; x < 4 * f + 8 && x < w; x++)
                                memset(rgb + (((size_t) f * h + y) * w + x) * 3, 255, 3);
        return rgb;
}

static void test_round_trip(void **state) {
        const uint32_t w = 64, h = 48, n = 12, fps = 8;
        uint8_t *rgb = square_frames(w, h, n), *mp4 = NULL;
        gh_video_meta meta[] = {{"comment", "{\"prompt\": \"a red circle moving right\"}"}, {"encoder_test", "1"}};
        size_t size = 0;
        gh_video_info info;

        assert_int_equal(gh_video_encode_mp4(rgb, w, h, n, fps, meta, 2, &mp4, &size, err, sizeof(err)), 0);
        assert_non_null(mp4);
        assert_true(size > 100 && size < (size_t) w * h * 3 * n);
        /* faststart: ftyp, then moov before mdat */
        assert_memory_equal(mp4 + 4, "ftyp", 4);
        assert_non_null(memmem(mp4, size, "moov", 4));
        assert_true((uint8_t *) memmem(mp4, size, "moov", 4) < (uint8_t *) memmem(mp4, size, "mdat", 4));
        assert_int_equal(gh_video_probe(mp4, size, "comment", &info, err, sizeof(err)), 0);
        assert_int_equal(info.width, w);
        assert_int_equal(info.height, h);
        assert_int_equal(info.frames, n);
        assert_true(info.fps > fps - 0.01 && info.fps < fps + 0.01);
        assert_string_equal(info.codec, "h264");
        assert_string_equal(info.meta_value, meta[0].value);
        assert_int_equal(gh_video_probe(mp4, size, "no-such-key", &info, err, sizeof(err)), 0);
        assert_string_equal(info.meta_value, "");
        free(mp4);
        free(rgb);
}

static void test_refused(void **state) {
        uint8_t *rgb = square_frames(64, 64, 2), *mp4 = NULL;
        size_t size = 0;

        assert_int_equal(gh_video_encode_mp4(rgb, 63, 64, 2, 8, NULL, 0, &mp4, &size, err, sizeof(err)), -EINVAL);
        assert_non_null(strstr(err, "even sizes"));
        assert_int_equal(gh_video_encode_mp4(rgb, 64, 64, 0, 8, NULL, 0, &mp4, &size, err, sizeof(err)), -EINVAL);
        assert_int_equal(gh_video_encode_mp4(rgb, 64, 64, 2, 0, NULL, 0, &mp4, &size, err, sizeof(err)), -EINVAL);
        assert_int_equal(gh_video_encode_mp4(NULL, 64, 64, 2, 8, NULL, 0, &mp4, &size, err, sizeof(err)), -EINVAL);
        assert_null(mp4);
        free(rgb);

        /* not a video, and a video cut short */
        gh_video_info info;
        static const uint8_t junk[] = "this is not an mp4 file at all, just some bytes";
        err[0] = 0;
        assert_int_equal(gh_video_probe(junk, sizeof(junk), NULL, &info, err, sizeof(err)), -EIO);
        assert_non_null(strstr(err, "reading the video"));
        rgb = square_frames(64, 64, 4);
        assert_int_equal(gh_video_encode_mp4(rgb, 64, 64, 4, 8, NULL, 0, &mp4, &size, err, sizeof(err)), 0);
        assert_int_not_equal(gh_video_probe(mp4, size / 3, NULL, &info, err, sizeof(err)) == 0 && info.frames == 4,
                             1);
        free(mp4);
        free(rgb);
}

int main(void) {
        const struct CMUnitTest tests[] = {
                cmocka_unit_test(test_round_trip),
                cmocka_unit_test(test_refused),
        };

        return cmocka_run_group_tests(tests, NULL, NULL);
}

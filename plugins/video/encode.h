/* Frames to a video file in memory: H.264 in MP4, with FFmpeg's libraries
 * (libavcodec through libx264, libavformat's MP4 muxer, libswscale for
 * RGB to YUV 4:2:0).
 *
 * Why H.264 in MP4: it is the one format every browser plays in a <video>
 * element (and every desktop player, phone and chat app), where VP9/WebM
 * is missing from older Safari and animated WebP is an image, not a video
 * (no seeking, no player controls). yuv420p at CRF 18 with the "main"
 * profile is what those players decode; the file is fragmented MP4 (moov
 * first, then a fragment per keyframe interval), so a browser can start
 * playing before the file is whole.
 *
 * Metadata: each key/value goes into the container's udta/meta tags
 * (ffprobe shows them under format tags; "comment" is the usual one for
 * the generation parameters). */
#pragma once

#include <stddef.h>
#include <stdint.h>

#define GH_VIDEO_MAX_META 16
/* What the encoder module (video-mp4.so) exports. */
#define GH_VIDEO_EXPORT __attribute__((visibility("default")))

typedef struct gh_video_meta {
        const char *key, *value;
} gh_video_meta;

/* Encodes |n_frames| frames of |width| x |height| RGB8 (rows of 3 * width
 * bytes, frame after frame in |rgb|) at |fps| frames a second into an MP4
 * file in |*ret| (malloc'd, |*ret_size| bytes; the caller frees it).
 * |width| and |height| must be even. Returns 0, -EINVAL for bad
 * arguments, -ENOSYS when libavcodec has no H.264 encoder, -ENOMEM, or
 * -EIO with FFmpeg's reason in |err|. The video plugin finds it in the
 * module video-mp4.so (dlopen, dlsym "gh_video_encode_mp4"). */
typedef int gh_video_encode_mp4_fn(const uint8_t *rgb, uint32_t width, uint32_t height, uint32_t n_frames,
                                   uint32_t fps, const gh_video_meta *meta, size_t n_meta, uint8_t **ret,
                                   size_t *ret_size, char *err, size_t err_size);
GH_VIDEO_EXPORT int gh_video_encode_mp4(const uint8_t *rgb, uint32_t width, uint32_t height, uint32_t n_frames, uint32_t fps,
                        const gh_video_meta *meta, size_t n_meta, uint8_t **ret, size_t *ret_size, char *err,
                        size_t err_size);

/* What a decode of an MP4 file in memory finds (the tests and video-probe):
 * frames decoded, size, frame rate, and the value
 * of one metadata key (copied into |meta_value|, "" if absent). */
typedef struct gh_video_info {
        uint32_t width, height, frames;
        double fps;
        char codec[32];
        char meta_value[4096];
} gh_video_info;

int gh_video_probe(const uint8_t *data, size_t size, const char *meta_key, gh_video_info *ret, char *err,
                   size_t err_size);

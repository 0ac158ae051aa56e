/* Frames to H.264 in MP4, in memory, and back for checking. See encode.h.
 *
 * The muxer writes through a custom AVIOContext onto a growable memory
 * buffer that also reads and seeks. The file is fragmented MP4: the moov
 * atom first (empty of samples), then a fragment per keyframe interval,
 * so a player starts before the whole file is there; faststart's second
 * pass would need the muxer to reopen the output by name, which a file in
 * memory has not. Each frame goes RGB24 -> YUV420P through libswscale,
 * into libx264 (CRF 18, main profile), and its packets into the muxer;
 * then the encoder is drained and the trailer written. The probe reads a
 * file the same way and decodes every frame, so frame counts are what a
 * player sees. Every FFmpeg object is freed on every path (one exit
 * label each). */
#include <errno.h>
#include <pthread.h>
#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <libavcodec/avcodec.h>
#include <libavformat/avformat.h>
#include <libavutil/dict.h>
#include <libavutil/imgutils.h>
#include <libavutil/log.h>
#include <libavutil/opt.h>
#include <libswscale/swscale.h>

#include "encode.h"

#define IO_BUFFER 65536
#define FILE_MAX (INT64_C(1) << 31) /* a memory file past 2 GiB is refused */

#if LIBAVFORMAT_VERSION_MAJOR >= 61
#define AVIO_WRITE_CONST const
#else
#define AVIO_WRITE_CONST
#endif

/* ---- a file in memory ---- */

typedef struct memfile {
        uint8_t *data;
        size_t size, cap, pos;
        bool read_only;
} memfile;

static int mem_read(void *opaque, uint8_t *buf, int n) {
        memfile *m = opaque;
        size_t left = m->pos < m->size ? m->size - m->pos : 0;

        if (left == 0)
                return AVERROR_EOF;
        if ((size_t) n > left)
                n = (int) left;
        memcpy(buf, m->data + m->pos, (size_t) n);
        m->pos += (size_t) n;
        return n;
}

static int mem_write(void *opaque, AVIO_WRITE_CONST uint8_t *buf, int n) {
        memfile *m = opaque;
        size_t end = m->pos + (size_t) n;

        if (m->read_only || n < 0 || (int64_t) end > FILE_MAX)
                return AVERROR(EFBIG);
        if (end > m->cap) {
                size_t cap = m->cap ? m->cap : 1 << 20;
                while (cap < end)
                        cap *= 2;
                uint8_t *d = realloc(m->data, cap);
                if (!d)
                        return AVERROR(ENOMEM);
                m->data = d;
                m->cap = cap;
        }
        if (m->pos > m->size) /* a seek past the end leaves a hole: zeros */
                memset(m->data + m->size, 0, m->pos - m->size);
        memcpy(m->data + m->pos, buf, (size_t) n);
        m->pos = end;
        if (end > m->size)
                m->size = end;
        return n;
}

static int64_t mem_seek(void *opaque, int64_t offset, int whence) {
        memfile *m = opaque;
        int64_t base;

        switch (whence & ~AVSEEK_FORCE) {
        case AVSEEK_SIZE:
                return (int64_t) m->size;
        case SEEK_SET:
                base = 0;
                break;
        case SEEK_CUR:
                base = (int64_t) m->pos;
                break;
        case SEEK_END:
                base = (int64_t) m->size;
                break;
        default:
                return AVERROR(EINVAL);
        }
        if (offset > FILE_MAX - base || base + offset < 0)
                return AVERROR(EINVAL);
        m->pos = (size_t) (base + offset);
        return base + offset;
}

static AVIOContext *mem_avio(memfile *m, bool write) {
        uint8_t *buf = av_malloc(IO_BUFFER);
        AVIOContext *io = buf ? avio_alloc_context(buf, IO_BUFFER, write, m, mem_read, write ? mem_write : NULL,
                                                   mem_seek)
                              : NULL;

        if (!io)
                av_free(buf);
        return io;
}

static void mem_avio_free(AVIOContext **io) {
        if (*io)
                av_freep(&(*io)->buffer);
        avio_context_free(io);
}

static int fail_av(int e, const char *what, char *err, size_t err_size) {
        char why[AV_ERROR_MAX_STRING_SIZE] = "";

        av_strerror(e, why, sizeof(why));
        if (err_size)
                snprintf(err, err_size, "%s: %s", what, why);
        return e == AVERROR(ENOMEM) ? -ENOMEM : -EIO;
}

/* ---- encoding ---- */

typedef struct encoder {
        AVFormatContext *oc;
        AVCodecContext *cc;
        AVStream *st;
        struct SwsContext *sws;
        AVFrame *frame;
        AVPacket *pkt;
        AVIOContext *io;
        memfile file;
} encoder;

static void encoder_free(encoder *e) {
        avcodec_free_context(&e->cc);
        avformat_free_context(e->oc);
        sws_freeContext(e->sws);
        av_frame_free(&e->frame);
        av_packet_free(&e->pkt);
        mem_avio_free(&e->io);
        free(e->file.data);
        memset(e, 0, sizeof(*e));
}

static int open_codec(encoder *e, uint32_t width, uint32_t height, uint32_t fps, char *err, size_t err_size) {
        const AVCodec *codec = avcodec_find_encoder_by_name("libx264");
        int r;

        if (!codec)
                codec = avcodec_find_encoder(AV_CODEC_ID_H264);
        if (!codec) {
                snprintf(err, err_size, "this FFmpeg (libavcodec %s) has no H.264 encoder", av_version_info());
                return -ENOSYS;
        }
        if (!(e->cc = avcodec_alloc_context3(codec)) || !(e->st = avformat_new_stream(e->oc, NULL)))
                return -ENOMEM;
        e->cc->width = (int) width;
        e->cc->height = (int) height;
        e->cc->time_base = (AVRational){1, (int) fps};
        e->cc->framerate = (AVRational){(int) fps, 1};
        e->cc->pix_fmt = AV_PIX_FMT_YUV420P;
        e->cc->gop_size = (int) fps * 2;
        e->cc->color_range = AVCOL_RANGE_MPEG;
        e->cc->colorspace = AVCOL_SPC_SMPTE170M;
        e->cc->color_primaries = AVCOL_PRI_SMPTE170M;
        e->cc->color_trc = AVCOL_TRC_SMPTE170M;
        if (e->oc->oformat->flags & AVFMT_GLOBALHEADER)
                e->cc->flags |= AV_CODEC_FLAG_GLOBAL_HEADER;
        if (strcmp(codec->name, "libx264") == 0) {
                av_opt_set(e->cc->priv_data, "crf", "18", 0);
                av_opt_set(e->cc->priv_data, "preset", "medium", 0);
                av_opt_set(e->cc->priv_data, "profile", "main", 0);
        }
        if ((r = avcodec_open2(e->cc, codec, NULL)) < 0)
                return fail_av(r, "opening the H.264 encoder", err, err_size);
        if ((r = avcodec_parameters_from_context(e->st->codecpar, e->cc)) < 0)
                return fail_av(r, "codec parameters", err, err_size);
        e->st->time_base = e->cc->time_base;
        e->st->avg_frame_rate = e->cc->framerate;
        return 0;
}

static int open_output(encoder *e, const gh_video_meta *meta, size_t n_meta, char *err, size_t err_size) {
        AVDictionary *opts = NULL;
        int r;

        if (!(e->io = mem_avio(&e->file, true)))
                return -ENOMEM;
        e->oc->pb = e->io;
        e->oc->flags |= AVFMT_FLAG_CUSTOM_IO;
        for (size_t i = 0; i < n_meta; i++)
                if (av_dict_set(&e->oc->metadata, meta[i].key, meta[i].value, 0) < 0)
                        return -ENOMEM;
        av_dict_set(&opts, "movflags", "+frag_keyframe+empty_moov+default_base_moof+use_metadata_tags", 0);
        r = avformat_write_header(e->oc, &opts);
        av_dict_free(&opts);
        return r < 0 ? fail_av(r, "writing the MP4 header", err, err_size) : 0;
}

/* Sends |frame| (NULL: drain) and writes every packet that comes out. */
static int encode_frame(encoder *e, AVFrame *frame, char *err, size_t err_size) {
        int r = avcodec_send_frame(e->cc, frame);

        if (r < 0)
                return fail_av(r, "encoding a frame", err, err_size);
        for (;;) {
                r = avcodec_receive_packet(e->cc, e->pkt);
                if (r == AVERROR(EAGAIN) || r == AVERROR_EOF)
                        return 0;
                if (r < 0)
                        return fail_av(r, "encoding a frame", err, err_size);
                av_packet_rescale_ts(e->pkt, e->cc->time_base, e->st->time_base);
                e->pkt->stream_index = e->st->index;
                r = av_interleaved_write_frame(e->oc, e->pkt); /* takes the packet's data */
                if (r < 0)
                        return fail_av(r, "writing a packet", err, err_size);
        }
}

static int convert(encoder *e, const uint8_t *rgb, uint32_t width, uint32_t height, int64_t pts) {
        const uint8_t *src[1] = {rgb};
        const int stride[1] = {(int) width * 3};
        int r = av_frame_make_writable(e->frame);

        if (r < 0)
                return r;
        sws_scale(e->sws, src, stride, 0, (int) height, e->frame->data, e->frame->linesize);
        e->frame->pts = pts;
        return 0;
}

static int encode_frames(encoder *e, const uint8_t *rgb, uint32_t width, uint32_t height, uint32_t n_frames,
                         char *err, size_t err_size) {
        size_t frame_bytes = (size_t) width * height * 3;
        int r;

        e->sws = sws_getContext((int) width, (int) height, AV_PIX_FMT_RGB24, (int) width, (int) height,
                                AV_PIX_FMT_YUV420P, SWS_BICUBIC | SWS_ACCURATE_RND, NULL, NULL, NULL);
        e->frame = av_frame_alloc();
        e->pkt = av_packet_alloc();
        if (!e->sws || !e->frame || !e->pkt)
                return -ENOMEM;
        e->frame->format = AV_PIX_FMT_YUV420P;
        e->frame->width = (int) width;
        e->frame->height = (int) height;
        if ((r = av_frame_get_buffer(e->frame, 0)) < 0)
                return fail_av(r, "a frame buffer", err, err_size);
        for (uint32_t i = 0; i < n_frames; i++) {
                if ((r = convert(e, rgb + i * frame_bytes, width, height, i)) < 0)
                        return fail_av(r, "converting a frame", err, err_size);
                if ((r = encode_frame(e, e->frame, err, err_size)) < 0)
                        return r;
        }
        if ((r = encode_frame(e, NULL, err, err_size)) < 0)
                return r;
        if ((r = av_write_trailer(e->oc)) < 0)
                return fail_av(r, "writing the MP4 trailer", err, err_size);
        avio_flush(e->io);
        return e->io->error < 0 ? fail_av(e->io->error, "writing the MP4 file", err, err_size) : 0;
}

/* FFmpeg's own log goes to stderr (the daemon's log, for a worker): errors
 * only, not x264's statistics for every video. */
static void quiet(void) {
        av_log_set_level(AV_LOG_ERROR);
}

int gh_video_encode_mp4(const uint8_t *rgb, uint32_t width, uint32_t height, uint32_t n_frames, uint32_t fps,
                        const gh_video_meta *meta, size_t n_meta, uint8_t **ret, size_t *ret_size, char *err,
                        size_t err_size) {
        static pthread_once_t once = PTHREAD_ONCE_INIT;
        encoder e = {0};
        int r;

        pthread_once(&once, quiet);
        if (!rgb || !ret || !ret_size || width == 0 || height == 0 || width % 2 || height % 2 || width > 8192 ||
            height > 8192 || n_frames == 0 || fps == 0 || fps > 240 || n_meta > GH_VIDEO_MAX_META) {
                snprintf(err, err_size, "cannot encode %u frames of %ux%u at %u fps (even sizes up to 8192, 1..240 fps)",
                         n_frames, width, height, fps);
                return -EINVAL;
        }
        r = avformat_alloc_output_context2(&e.oc, NULL, "mp4", NULL);
        if (r < 0) {
                r = fail_av(r, "the MP4 muxer", err, err_size);
                goto out;
        }
        if ((r = open_codec(&e, width, height, fps, err, err_size)) < 0 ||
            (r = open_output(&e, meta, n_meta, err, err_size)) < 0 ||
            (r = encode_frames(&e, rgb, width, height, n_frames, err, err_size)) < 0)
                goto out;
        *ret = e.file.data;
        *ret_size = e.file.size;
        e.file.data = NULL;
out:
        if (r == -ENOMEM && err_size && !err[0])
                snprintf(err, err_size, "out of memory encoding the video");
        encoder_free(&e);
        return r;
}

/* ---- probing ---- */

typedef struct prober {
        AVFormatContext *ic;
        AVCodecContext *dc;
        AVIOContext *io;
        AVPacket *pkt;
        AVFrame *frame;
        memfile file;
} prober;

static void prober_free(prober *p) {
        avformat_close_input(&p->ic);
        avcodec_free_context(&p->dc);
        av_packet_free(&p->pkt);
        av_frame_free(&p->frame);
        mem_avio_free(&p->io);
}

static int drain_decoder(prober *p, gh_video_info *ret) {
        int r;

        while ((r = avcodec_receive_frame(p->dc, p->frame)) >= 0) {
                ret->frames++;
                av_frame_unref(p->frame);
        }
        return r == AVERROR(EAGAIN) || r == AVERROR_EOF ? 0 : r;
}

static int decode_all(prober *p, int stream, gh_video_info *ret) {
        int r;

        while ((r = av_read_frame(p->ic, p->pkt)) >= 0) {
                if (p->pkt->stream_index == stream && (r = avcodec_send_packet(p->dc, p->pkt)) >= 0)
                        r = drain_decoder(p, ret);
                av_packet_unref(p->pkt);
                if (r < 0)
                        return r;
        }
        if (r != AVERROR_EOF)
                return r;
        if ((r = avcodec_send_packet(p->dc, NULL)) < 0)
                return r;
        return drain_decoder(p, ret);
}

static int open_input(prober *p, int *ret_stream) {
        const AVCodec *codec = NULL;
        int r, s;

        if (!(p->ic = avformat_alloc_context()) || !(p->io = mem_avio(&p->file, false)))
                return AVERROR(ENOMEM);
        p->ic->pb = p->io;
        if ((r = avformat_open_input(&p->ic, NULL, NULL, NULL)) < 0 ||
            (r = avformat_find_stream_info(p->ic, NULL)) < 0)
                return r;
        if ((s = av_find_best_stream(p->ic, AVMEDIA_TYPE_VIDEO, -1, -1, &codec, 0)) < 0)
                return s;
        if (!(p->dc = avcodec_alloc_context3(codec)) || !(p->pkt = av_packet_alloc()) || !(p->frame = av_frame_alloc()))
                return AVERROR(ENOMEM);
        if ((r = avcodec_parameters_to_context(p->dc, p->ic->streams[s]->codecpar)) < 0 ||
            (r = avcodec_open2(p->dc, codec, NULL)) < 0)
                return r;
        *ret_stream = s;
        return 0;
}

int gh_video_probe(const uint8_t *data, size_t size, const char *meta_key, gh_video_info *ret, char *err,
                   size_t err_size) {
        prober p = {.file = {.data = (uint8_t *) data, .size = size, .cap = size, .read_only = true}};
        int stream = -1, r;

        if (!data || size == 0 || !ret) {
                snprintf(err, err_size, "reading the video: no data");
                return -EINVAL;
        }
        memset(ret, 0, sizeof(*ret));
        if ((r = open_input(&p, &stream)) >= 0) {
                AVStream *st = p.ic->streams[stream];
                AVDictionaryEntry *m = meta_key ? av_dict_get(p.ic->metadata, meta_key, NULL, 0) : NULL;
                ret->width = (uint32_t) st->codecpar->width;
                ret->height = (uint32_t) st->codecpar->height;
                ret->fps = st->avg_frame_rate.den ? av_q2d(st->avg_frame_rate) : av_q2d(st->r_frame_rate);
                snprintf(ret->codec, sizeof(ret->codec), "%s", avcodec_get_name(st->codecpar->codec_id));
                if (m)
                        snprintf(ret->meta_value, sizeof(ret->meta_value), "%s", m->value);
                r = decode_all(&p, stream, ret);
        }
        if (r < 0)
                r = fail_av(r, "reading the video", err, err_size);
        prober_free(&p);
        return r;
}

/* txt2img and img2img: prompts through the text encoder (A1111 weights and
 * chunks), classifier-free guidance as one batch of 2B, the sampler, the
 * VAE. The same code runs dry for the planner, so the arena a real run
 * gets is exactly what it uses. */
#include <errno.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "pipeline.h"

#define TOKENS 77

int gh_sd_models_load(gh_sd_models *m, const gh_dsource *src) {
        struct {
                gh_dpart *p;
                gh_dpart_kind kind;
        } parts[] = {{&m->clip_part, GH_DPART_CLIP}, {&m->unet_part, GH_DPART_UNET}, {&m->vae_part, GH_DPART_VAE}};
        int r = 0;

        memset(m, 0, sizeof(*m));
        for (size_t i = 0; i < 3; i++)
                if ((r = gh_dpart_open(parts[i].p, parts[i].kind, src)) < 0) {
                        snprintf(m->err, sizeof(m->err), "%s", parts[i].p->err);
                        return r;
                }
        if ((r = gh_clip_load(&m->clip_part, &m->clip)) < 0)
                snprintf(m->err, sizeof(m->err), "%s", m->clip_part.err);
        else if ((r = gh_unet_load(&m->unet_part, &m->unet)) < 0)
                snprintf(m->err, sizeof(m->err), "%s", m->unet_part.err);
        else if ((r = gh_vae_load(&m->vae_part, &m->vae)) < 0)
                snprintf(m->err, sizeof(m->err), "%s", m->vae_part.err);
        else if (m->unet.cfg.ctx != m->clip.width || m->unet.cfg.in_ch != m->vae.z) {
                snprintf(m->err, sizeof(m->err),
                         "the parts do not fit: the UNet takes a context of %lld and %lld latent channels, the text encoder gives %lld, the VAE %lld",
                         (long long) m->unet.cfg.ctx, (long long) m->unet.cfg.in_ch, (long long) m->clip.width,
                         (long long) m->vae.z);
                r = -EINVAL;
        }
        if (r < 0 && !m->err[0])
                snprintf(m->err, sizeof(m->err), "cannot load the checkpoint: %s", strerror(-r));
        return r;
}

void gh_sd_models_unload(gh_sd_models *m) {
        gh_clip_unload(&m->clip);
        gh_dpart_close(&m->clip_part);
        gh_dpart_close(&m->unet_part);
        gh_dpart_close(&m->vae_part);
        gh_dpart_close(&m->motion_part);
        m->has_motion = false;
}

int gh_sd_motion_load(gh_sd_models *m, const gh_dsource *src) {
        int r = gh_dpart_open(&m->motion_part, GH_DPART_MOTION, src);

        if (r >= 0)
                r = gh_motion_load(&m->motion_part, &m->unet, &m->motion);
        if (r < 0) {
                snprintf(m->err, sizeof(m->err), "%s",
                         m->motion_part.err[0] ? m->motion_part.err : "cannot load the motion module");
                gh_dpart_close(&m->motion_part);
                return r;
        }
        m->has_motion = true;
        return 0;
}

uint32_t gh_sd_steps_run(const gh_sd_params *p) {
        if (!p->img2img)
                return p->steps;
        return (uint32_t) floor(p->strength * p->steps + 1e-6);
}

int gh_sd_params_check(const gh_sd_models *m, const gh_sd_params *p, char *err, size_t err_size) {
        /* The UNet halves the latent per level and doubles it back: the
         * latent must divide evenly (SD 1.x: images in multiples of 64). */
        int64_t f = gh_vae_factor(&m->vae) * gh_unet_multiple(&m->unet);

        if (p->width % f || p->height % f || p->width < f || p->height < f) {
                snprintf(err, err_size, "width and height must be multiples of %lld for this checkpoint (%ux%u)",
                         (long long) f, p->width, p->height);
                return -EINVAL;
        }
        uint32_t span = p->window && p->window < p->frames ? p->window : p->frames; /* frames a UNet call sees */

        if (p->frames && p->window && (p->window < 2 || p->overlap >= p->window)) {
                snprintf(err, err_size, "a window of %u frames overlapping by %u: windows of 2 frames or more, "
                         "overlapping by fewer frames than a window", p->window, p->overlap);
                return -EINVAL;
        }
        if (p->frames && (!m->has_motion || p->batch != p->frames || p->frames > GH_SD_MAX_FRAMES ||
                          (int64_t) span > m->motion.max_frames)) {
                snprintf(err, err_size,
                         "frames 1..%d, with a motion module, at most %lld at once (its encoding; more in "
                         "windows); %u asked for",
                         GH_SD_MAX_FRAMES, (long long) (m->has_motion ? m->motion.max_frames : 0), p->frames);
                return -EINVAL;
        }
        if (p->batch < 1 || (!p->frames && p->batch > GH_SD_MAX_BATCH) || p->steps < 1 ||
            p->steps > GH_SAMPLER_MAX_STEPS) {
                snprintf(err, err_size, "batch 1..%d and steps 1..%d", GH_SD_MAX_BATCH, GH_SAMPLER_MAX_STEPS);
                return -EINVAL;
        }
        if (p->clip_skip < 1 || p->clip_skip > m->clip.layers) {
                snprintf(err, err_size, "clip_skip %u: the text encoder has %lld layers", p->clip_skip,
                         (long long) m->clip.layers);
                return -EINVAL;
        }
        if (m->clip.positions != TOKENS) {
                snprintf(err, err_size, "the text encoder has %lld positions, not %d", (long long) m->clip.positions,
                         TOKENS);
                return -EINVAL;
        }
        if (p->img2img && !m->vae.has_encoder) {
                snprintf(err, err_size, "the checkpoint's VAE has no encoder");
                return -EINVAL;
        }
        return 0;
}

/* ---- setup ---- */

static int64_t lat_h(const gh_sd_run *r) {
        return r->p.height / gh_vae_factor(&r->m->vae);
}

static int64_t lat_w(const gh_sd_run *r) {
        return r->p.width / gh_vae_factor(&r->m->vae);
}

int gh_sd_run_init(gh_sd_run *r, const gh_sd_models *m, const gh_sd_params *p, gh_dctx *c, uint32_t chunks,
                   const gh_prompt_tokens *cond, const gh_prompt_tokens *uncond, const float *init) {
        int64_t B = p->batch, z = m->vae.z;
        int k;

        memset(r, 0, sizeof(*r));
        r->m = m;
        r->p = *p;
        r->c = c;
        r->chunks = chunks;
        r->cond = cond;
        r->uncond = uncond;
        r->init = init;
        if ((k = gh_sampler_init(&r->sampler, p->sampler, p->v_pred, p->steps, gh_sd_steps_run(p))) < 0)
                return gh_dctx_fail(c, k, "bad sampler settings");
        r->host_noise = calloc((size_t) (B * z * lat_h(r) * lat_w(r)), sizeof(float));
        if (!r->host_noise)
                return -ENOMEM;
        GH_TRY(gh_dt_new(c, &r->ctx, 2 * B, TOKENS * (int64_t) chunks, m->clip.width));
        GH_TRY(gh_dt_new(c, &r->x, B, z, lat_h(r), lat_w(r)));
        if (p->frames)
                GH_TRY(gh_motion_pe_new(c, &m->unet, p->window && p->window < p->frames ? p->window : p->frames,
                                        &r->pe));
        return 0;
}

void gh_sd_run_free(gh_sd_run *r) {
        if (r->c) {
                gh_sampler_end(&r->sampler, r->c);
                gh_dt_drop(r->c, &r->init_latent);
                gh_dt_drop(r->c, &r->noise);
                gh_dt_drop(r->c, &r->x);
                gh_dt_drop(r->c, &r->ctx);
                gh_motion_pe_drop(r->c, &r->pe);
        }
        free(r->host_noise);
        r->host_noise = NULL;
}

/* ---- text ---- */

/* The ids of |t| padded to |chunks| chunks with empty ones (BOS, then
 * EOS: the ends of its first chunk); nothing while planning (t NULL). */
static void chunk_ids(const gh_sd_run *r, const gh_prompt_tokens *t, int32_t *ids, float *w) {
        for (uint32_t j = 0; t && j < r->chunks; j++)
                for (int i = 0; i < TOKENS; i++) {
                        bool have = j < t->n_chunks;
                        ids[j * TOKENS + i] = have ? t->ids[j][i] : t->ids[0][i == 0 ? 0 : TOKENS - 1];
                        w[j * TOKENS + i] = have ? t->weights[j][i] : 1.0f;
                }
}

/* z *= weights; z *= mean before / mean after (per chunk). */
static int weigh(gh_dctx *c, gh_dt *hidden, const float *w, uint32_t chunks, int64_t width) {
        for (uint32_t j = 0; j < chunks; j++) {
                gh_dt z = gh_dt_slice0(hidden, j, 1), z2;
                double before, after;
                GH_TRY(gh_dt_reshape(c, &z, &z2, 2, (int64_t[]){TOKENS, width}));
                GH_TRY(gh_op_sum(c, &z2, &before));
                GH_TRY(gh_op_scale_dim(c, w + j * TOKENS, 0, &z2));
                GH_TRY(gh_op_sum(c, &z2, &after));
                if (after != 0 && before != after)
                        GH_TRY(gh_op_lincomb(c, 1, (const float[]){(float) (before / after)},
                                             (const gh_dt *const[]){&z2}, &z2));
        }
        return 0;
}

/* Encodes one prompt into ctx items [first, first + B). */
static int encode_prompt(gh_sd_run *r, const gh_prompt_tokens *t, int64_t first) {
        gh_dctx *c = r->c;
        int64_t W = r->m->clip.width, B = r->p.batch, n = (int64_t) r->chunks * TOKENS;
        int32_t *ids = calloc((size_t) n, sizeof(int32_t));
        float *w = calloc((size_t) n, sizeof(float));
        gh_dt hidden = {0}, flat;
        int k = -ENOMEM;

        if (!ids || !w)
                goto out;
        chunk_ids(r, t, ids, w);
        if ((k = gh_dt_new(c, &hidden, r->chunks, TOKENS, W)) < 0 ||
            (k = gh_clip_encode(c, &r->m->clip, t ? ids : NULL, r->chunks, (int) r->p.clip_skip, &hidden)) < 0 ||
            (k = weigh(c, &hidden, w, r->chunks, W)) < 0 ||
            (k = gh_dt_reshape(c, &hidden, &flat, 3, (int64_t[]){1, n, W})) < 0)
                goto out;
        for (int64_t b = 0; b < B; b++) {
                gh_dt item = gh_dt_slice0(&r->ctx, first + b, 1);
                if ((k = gh_op_copy(c, &flat, &item)) < 0)
                        goto out;
        }
out:
        gh_dt_drop(c, &hidden);
        free(w);
        free(ids);
        return k;
}

/* ---- noise and the start ---- */

/* r->noise = stream |stream| of each item's seed. */
static int make_noise(gh_sd_run *r, uint64_t stream) {
        int64_t per = gh_dt_numel(&r->x) / r->p.batch;

        if (!r->noise.data)
                GH_TRY(gh_dt_alloc(r->c, &r->noise, 4, r->x.shape));
        if (!r->c->dry)
                for (uint32_t b = 0; b < r->p.batch; b++)
                        gh_noise_fill(r->host_noise + b * per, (size_t) per, r->p.seed + b, stream);
        return gh_op_upload(r->c, r->host_noise, &r->noise);
}

static int encode_init(gh_sd_run *r) {
        gh_dctx *c = r->c;
        gh_dt img;

        GH_TRY(gh_dt_new(c, &r->init_latent, 1, r->m->vae.z, lat_h(r), lat_w(r)));
        if (!r->init && r->init_latent_host)
                return gh_op_upload(c, r->init_latent_host, &r->init_latent);
        GH_TRY(gh_dt_new(c, &img, 1, 3, r->p.height, r->p.width));
        GH_TRY(gh_op_upload(c, r->init, &img));
        GH_TRY(gh_vae_encode(c, &r->m->vae, &img, &r->init_latent));
        gh_dt_drop(c, &img);
        return 0;
}

int gh_sd_run_set_context(gh_sd_run *r, const float *uncond, const float *cond) {
        for (int64_t b = 0; b < 2 * (int64_t) r->p.batch; b++) {
                gh_dt item = gh_dt_slice0(&r->ctx, b, 1);
                GH_TRY(gh_op_upload(r->c, b < r->p.batch ? uncond : cond, &item));
        }
        return 0;
}

int gh_sd_run_start(gh_sd_run *r) {
        GH_TRY(make_noise(r, 0));
        if (!r->p.img2img)
                return gh_sampler_start(&r->sampler, r->c, &r->x, &r->noise, NULL);
        GH_TRY(encode_init(r));
        for (uint32_t b = 0; b < r->p.batch; b++) {
                gh_dt x = gh_dt_slice0(&r->x, b, 1), n = gh_dt_slice0(&r->noise, b, 1);
                GH_TRY(gh_sampler_start(&r->sampler, r->c, &x, &n, &r->init_latent));
        }
        return 0;
}

int gh_sd_run_prepare(gh_sd_run *r) {
        GH_TRY(encode_prompt(r, r->uncond, 0));
        GH_TRY(encode_prompt(r, r->cond, r->p.batch));
        return gh_sd_run_start(r);
}

/* ---- steps ---- */

_Static_assert(GH_SD_MAX_FRAMES >= GH_SD_MAX_BATCH, "the time steps array holds either");

/* The UNet, with the motion modules for a video. */
static int unet(gh_sd_run *r, gh_dctx *c, const gh_dt *x, const float *ts, const gh_dt *ctx, gh_dt *out) {
        if (r->p.frames)
                return gh_unet_eval_video(c, &r->m->unet, &r->m->motion, &r->pe, x, ts, ctx, out);
        return gh_unet_eval(c, &r->m->unet, x, ts, ctx, out);
}

/* The guided model output for x[B] with the contexts ctx[2B]: one UNet
 * batch of 2B (unconditional first), or of B (conditional only) when cfg
 * is 1. */
static int guided_batch(gh_sd_run *r, gh_dctx *c, const gh_dt *x, float t, const gh_dt *ctx, gh_dt *out) {
        int64_t B = x->shape[0];
        const int64_t *s = x->shape;
        float ts[2 * GH_SD_MAX_FRAMES];
        gh_dt xx, oo, cond_ctx;

        for (int i = 0; i < 2 * B; i++)
                ts[i] = t;
        if (r->p.cfg == 1.0f) {
                cond_ctx = gh_dt_slice0(ctx, B, B);
                return unet(r, c, x, ts, &cond_ctx, out);
        }
        GH_TRY(gh_dt_new(c, &xx, 2 * B, s[1], s[2], s[3]));
        for (int h = 0; h < 2; h++) {
                gh_dt half = gh_dt_slice0(&xx, h * B, B);
                GH_TRY(gh_op_copy(c, x, &half));
        }
        GH_TRY(gh_dt_new(c, &oo, 2 * B, s[1], s[2], s[3]));
        GH_TRY(unet(r, c, &xx, ts, ctx, &oo));
        gh_dt_drop(c, &xx);
        {
                gh_dt u = gh_dt_slice0(&oo, 0, B), k = gh_dt_slice0(&oo, B, B);
                GH_TRY(gh_op_lincomb(c, 2, (const float[]){1.0f - r->p.cfg, r->p.cfg}, (const gh_dt *const[]){&u, &k},
                                     out));
        }
        gh_dt_drop(c, &oo);
        return 0;
}

/* The next window's first frame after one starting at |s|; F when none:
 * steps of window - overlap, the last one slid back to end at frame F. */
static uint32_t next_window(const gh_sd_params *p, uint32_t s) {
        uint32_t F = p->frames, L = p->window;

        if (s + L >= F)
                return F;
        s += L - p->overlap;
        return s + L > F ? F - L : s;
}

/* One window's output, [s, s + L) of the frames: added where an earlier
 * window covered the frame (frames below |covered|), copied past it. */
static int window_merge(gh_dctx *c, const gh_dt *wout, uint32_t s, uint32_t covered, gh_dt *out) {
        uint32_t L = (uint32_t) wout->shape[0], both = covered > s ? covered - s : 0;

        if (both) {
                gh_dt a = gh_dt_slice0(out, s, both), b = gh_dt_slice0(wout, 0, both);
                GH_TRY(gh_op_add(c, &a, &b, &a));
        }
        if (both < L) {
                gh_dt a = gh_dt_slice0(out, s + both, L - both), b = gh_dt_slice0(wout, both, L - both);
                GH_TRY(gh_op_copy(c, &b, &a));
        }
        return 0;
}

/* The guided output over windows of frames, each frame the mean of the
 * windows that hold it. */
static int guided_windows(gh_sd_run *r, gh_dctx *c, const gh_dt *x, float t, gh_dt *out) {
        uint32_t F = r->p.frames, L = r->p.window, covered = 0;
        const int64_t *s = x->shape, *cs = r->ctx.shape;
        float count[GH_SD_MAX_FRAMES] = {0};
        gh_dt wctx, wout;

        GH_TRY(gh_dt_new(c, &wctx, 2 * (int64_t) L, cs[1], cs[2]));
        GH_TRY(gh_dt_new(c, &wout, L, s[1], s[2], s[3]));
        for (uint32_t w0 = 0; w0 < F; w0 = next_window(&r->p, w0)) {
                gh_dt xw = gh_dt_slice0(x, w0, L);
                for (int h = 0; h < 2; h++) {
                        gh_dt src = gh_dt_slice0(&r->ctx, h * (int64_t) F + w0, L), dst = gh_dt_slice0(&wctx, h * L, L);
                        GH_TRY(gh_op_copy(c, &src, &dst));
                }
                GH_TRY(guided_batch(r, c, &xw, t, &wctx, &wout));
                GH_TRY(window_merge(c, &wout, w0, covered, out));
                for (uint32_t f = w0; f < w0 + L; f++)
                        count[f] += 1.0f;
                covered = w0 + L > covered ? w0 + L : covered;
        }
        gh_dt_drop(c, &wout);
        gh_dt_drop(c, &wctx);
        for (uint32_t f = 0; f < F; f++)
                count[f] = 1.0f / count[f];
        return gh_op_scale_dim(c, count, 0, out);
}

static int guided(void *userdata, gh_dctx *c, const gh_dt *x, float t, gh_dt *out) {
        gh_sd_run *r = userdata;

        if (r->p.frames && r->p.window && r->p.window < r->p.frames)
                return guided_windows(r, c, x, t, out);
        return guided_batch(r, c, x, t, &r->ctx, out);
}

int gh_sd_run_step(gh_sd_run *r, uint32_t i) {
        const gh_dt *noise = NULL;

        if (gh_sampler_wants_noise(&r->sampler, i)) {
                GH_TRY(make_noise(r, 1 + i));
                noise = &r->noise;
        }
        return gh_sampler_step(&r->sampler, r->c, i, &r->x, noise, guided, r);
}

/* ---- decode and preview ---- */

static uint8_t to_u8(float v) {
        float u = (v + 1.0f) * 0.5f;

        u = u < 0 ? 0 : u > 1 ? 1 : u;
        return (uint8_t) floorf(u * 255.0f + 0.5f);
}

int gh_sd_run_decode(gh_sd_run *r, uint32_t b, uint8_t *rgb, float *raw) {
        gh_dctx *c = r->c;
        int64_t H = r->p.height, W = r->p.width, n = H * W;
        gh_dt lat = gh_dt_slice0(&r->x, b, 1), img;
        float *host = raw;
        int k;

        GH_TRY(gh_dt_new(c, &img, 1, 3, H, W));
        GH_TRY(gh_vae_decode(c, &r->m->vae, &lat, &img));
        if (c->dry) {
                gh_dt_drop(c, &img);
                return 0;
        }
        if (!host && !(host = malloc((size_t) (3 * n) * sizeof(float))))
                return -ENOMEM;
        k = gh_op_download(c, &img, host);
        gh_dt_drop(c, &img);
        if (k >= 0 && rgb)
                for (int64_t i = 0; i < n; i++)
                        for (int ch = 0; ch < 3; ch++)
                                rgb[i * 3 + ch] = to_u8(host[ch * n + i]);
        if (host != raw)
                free(host);
        return k;
}

int gh_sd_run_preview(gh_sd_run *r, uint32_t item, uint8_t *rgb) {
        /* SD 1.x latent channels to RGB, A1111's "Approx cheap" factors. */
        static const float f[4][3] = {
                {0.298f, 0.207f, 0.208f},
                {0.187f, 0.286f, 0.173f},
                {-0.158f, 0.189f, 0.264f},
                {-0.184f, -0.271f, -0.473f},
        };
        int64_t n = lat_h(r) * lat_w(r), z = r->m->vae.z;
        const float *x = r->host_noise + (size_t) item * (size_t) (z * n);

        if (z != 4 || r->c->dry)
                return -EOPNOTSUPP;
        if (item >= r->p.batch)
                return -EINVAL;
        GH_TRY(gh_op_download(r->c, &r->x, r->host_noise));
        for (int64_t i = 0; i < n; i++)
                for (int ch = 0; ch < 3; ch++) {
                        float v = 0;
                        for (int k = 0; k < 4; k++)
                                v += f[k][ch] * x[k * n + i];
                        rgb[i * 3 + ch] = to_u8(v);
                }
        return 0;
}

/* ---- planning ---- */

int gh_sd_plan(const gh_sd_models *m, const gh_sd_params *p, uint32_t chunks, bool half, size_t *ret_bytes, char *err,
               size_t err_size) {
        gh_dctx c = {.be = &gh_dbackend_cpu, .dry = true, .half = half};
        gh_sd_run run;
        int r;

        if ((r = gh_arena_new(NULL, 0, &c.arena)) < 0)
                return r;
        if ((r = gh_sd_run_init(&run, m, p, &c, chunks, NULL, NULL, NULL)) >= 0 && (r = gh_sd_run_prepare(&run)) >= 0) {
                for (uint32_t i = 0; r >= 0 && i < gh_sd_steps_run(p); i++)
                        r = gh_sd_run_step(&run, i);
                for (uint32_t b = 0; r >= 0 && b < p->batch; b++)
                        r = gh_sd_run_decode(&run, b, NULL, NULL);
        }
        gh_sd_run_free(&run);
        if (r < 0)
                snprintf(err, err_size, "planning failed: %s", c.err[0] ? c.err : strerror(-r));
        else
                *ret_bytes = gh_arena_peak(c.arena);
        gh_arena_free(c.arena);
        return r;
}

uint32_t gh_sd_chunks_bound(const char *prompt) {
        size_t tokens = 0, breaks = 0, n;

        /* A token is at least one byte of the lower-cased text; lower-casing
         * turns a non-ASCII byte into at most 1.5 bytes (2 -> 3). */
        for (const unsigned char *s = (const unsigned char *) prompt; *s; s++)
                tokens += *s < 0x80 ? 2 : 3;
        tokens /= 2;
        for (const char *s = prompt; (s = strstr(s, "BREAK")); s += 5)
                breaks++;
        /* A full chunk keeps at least 55 tokens (the comma rule moves at most
         * 20 of 75 on). */
        n = 1 + breaks + tokens / 55;
        return n > GH_TOK_MAX_CHUNKS ? GH_TOK_MAX_CHUNKS : (uint32_t) n;
}

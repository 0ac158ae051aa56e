/* Stable Diffusion 1.x model parts: the CLIP text encoder, the UNet and the
 * VAE, loaded from a checkpoint part (views onto its tensors, every shape
 * checked at load) and evaluated with the runtime's ops. Sizes come from
 * the tensor shapes; see docs/diffusion.md for the fixed rules. */
#pragma once

#include "runtime.h"

#define GH_SD_MAX_LEVELS 6
#define GH_SD_MAX_RES 4
#define GH_SD_MAX_DEPTH 4
#define GH_SD_LATENT_SCALE 0.18215f

/* ---- CLIP text encoder ---- */

typedef struct gh_clip_layer {
        gh_dnorm ln1, ln2;
        gh_dlin q, k, v, o, fc1, fc2;
} gh_clip_layer;

typedef struct gh_clip {
        int64_t width, layers, heads, vocab, positions, mlp;
        gh_dt tokens, pos;
        gh_clip_layer *l;
        gh_dnorm final;
} gh_clip;

int gh_clip_load(gh_dpart *p, gh_clip *ret);
void gh_clip_unload(gh_clip *m);
/* ids: n sequences of m->positions tokens; out [n, positions, width].
 * clip_skip 1 = the last layer. */
int gh_clip_encode(gh_dctx *c, const gh_clip *m, const int32_t *ids, int64_t n, int clip_skip, gh_dt *out);

/* ---- UNet ---- */

typedef struct gh_resblock {
        int64_t in, out;
        gh_dnorm n1, n2;
        gh_dlin c1, c2, temb, skip;
} gh_resblock;

typedef struct gh_tblock {
        gh_dnorm ln1, ln2, ln3;
        gh_dlin q1, k1, v1, o1, q2, k2, v2, o2, ff1, ff2;
} gh_tblock;

typedef struct gh_transformer {
        int64_t ch, heads, depth;
        bool linear_proj;
        gh_dnorm norm;
        gh_dlin proj_in, proj_out;
        gh_tblock b[GH_SD_MAX_DEPTH];
} gh_transformer;

typedef struct gh_unet_cfg {
        int64_t in_ch, out_ch, mc, temb, levels, res, ctx, mult[GH_SD_MAX_LEVELS];
        bool attn[GH_SD_MAX_LEVELS], linear_proj;
        int64_t heads_fixed, head_dim; /* one of them: 8 heads (SD1) or 64 per head */
        int64_t depth;
} gh_unet_cfg;

typedef struct gh_unet {
        gh_unet_cfg cfg;
        gh_dlin conv_in, t1, t2, conv_out;
        gh_dnorm norm_out;
        gh_resblock down[GH_SD_MAX_LEVELS][GH_SD_MAX_RES];
        gh_transformer down_attn[GH_SD_MAX_LEVELS][GH_SD_MAX_RES];
        gh_dlin downsample[GH_SD_MAX_LEVELS];
        gh_resblock mid0, mid1;
        gh_transformer mid_attn;
        gh_resblock up[GH_SD_MAX_LEVELS][GH_SD_MAX_RES + 1];
        gh_transformer up_attn[GH_SD_MAX_LEVELS][GH_SD_MAX_RES + 1];
        gh_dlin upsample[GH_SD_MAX_LEVELS];
} gh_unet;

/* ---- AnimateDiff motion modules (motion.c) ---- */

#define GH_SD_MAX_FRAMES 32
#define GH_MOTION_HEADS 8

/* One motion module: a temporal transformer (per-frame group norm,
 * proj_in, two self-attentions across frames with the sinusoidal position
 * encoding added after their layer norms, a GEGLU feed-forward, proj_out)
 * added to its input. */
typedef struct gh_motion_block {
        int64_t ch;
        gh_dnorm norm, ln1, ln2, ln3;
        gh_dlin proj_in, proj_out, q1, k1, v1, o1, q2, k2, v2, o2, ff1, ff2;
} gh_motion_block;

/* A motion module checkpoint for a UNet: one module after each res block
 * (and its attention) of every down and up block, and in the mid block
 * between the attention and the second res block where it has one (v2). */
typedef struct gh_motion {
        int64_t max_frames; /* the position encoding's length: 24 (v1), 32 (v2) */
        bool has_mid;
        gh_motion_block down[GH_SD_MAX_LEVELS][GH_SD_MAX_RES];
        gh_motion_block mid;
        gh_motion_block up[GH_SD_MAX_LEVELS][GH_SD_MAX_RES + 1];
} gh_motion;

/* The position encodings of |frames| frames, [frames, C] for each channel
 * count of the UNet's levels, in the arena. */
typedef struct gh_motion_pe {
        int64_t frames, n;
        int64_t ch[GH_SD_MAX_LEVELS];
        gh_dt pe[GH_SD_MAX_LEVELS];
} gh_motion_pe;

/* Loads the modules from |p| (either layout) with every shape checked
 * against |unet|'s channels; the first missing or mismatched tensor goes
 * to p->err. */
int gh_motion_load(gh_dpart *p, const gh_unet *unet, gh_motion *ret);
int gh_motion_pe_new(gh_dctx *c, const gh_unet *unet, int64_t frames, gh_motion_pe *ret);
void gh_motion_pe_drop(gh_dctx *c, gh_motion_pe *pe);
/* ret = x + module(x), new; x[(N frames), C, H, W], videos after each
 * other, frames inner. */
int gh_motion_eval(gh_dctx *c, const gh_motion_block *b, const gh_motion_pe *pe, const gh_dt *x, gh_dt *ret);

/* Pieces of the transformer blocks that motion modules share (unet.c):
 * x += o(attention(q(n), k(kv), v(kv))); x += ff(layer_norm(x)). */
int gh_sd_attend(gh_dctx *c, const gh_dt *x, const gh_dt *n, const gh_dt *kv, const gh_dlin *wq, const gh_dlin *wk,
                 const gh_dlin *wv, const gh_dlin *wo, int64_t heads);
int gh_sd_feed_forward(gh_dctx *c, const gh_dnorm *ln, const gh_dlin *ff1, const gh_dlin *ff2, gh_dt *x);

int gh_unet_load(gh_dpart *p, gh_unet *ret);
/* The factor height and width of the latent must be multiples of. */
int64_t gh_unet_multiple(const gh_unet *m);
/* out[B,out_ch,H,W] = unet(x[B,in_ch,H,W], t (B floats, host), ctx[B,T,ctx]). */
int gh_unet_eval(gh_dctx *c, const gh_unet *m, const gh_dt *x, const float *t, const gh_dt *ctx, gh_dt *out);
/* The same with the motion modules |mm| inserted: the batch is videos of
 * pe->frames frames each. */
int gh_unet_eval_video(gh_dctx *c, const gh_unet *m, const gh_motion *mm, const gh_motion_pe *pe, const gh_dt *x,
                       const float *t, const gh_dt *ctx, gh_dt *out);

/* ---- VAE ---- */

typedef struct gh_vae_attn {
        gh_dnorm norm;
        gh_dlin q, k, v, o;
} gh_vae_attn;

typedef struct gh_vae_half {
        gh_dlin conv_in, conv_out;
        gh_dnorm norm_out;
        gh_resblock res[GH_SD_MAX_LEVELS][GH_SD_MAX_RES + 1];
        gh_dlin resample[GH_SD_MAX_LEVELS];
        gh_resblock mid0, mid1;
        gh_vae_attn attn;
} gh_vae_half;

typedef struct gh_vae {
        int64_t ch, levels, res, z, mult[GH_SD_MAX_LEVELS];
        bool has_encoder;
        gh_vae_half enc, dec;
        gh_dlin quant, post_quant;
} gh_vae;

int gh_vae_load(gh_dpart *p, gh_vae *ret);
/* The image-to-latent size factor (8 for SD). */
int64_t gh_vae_factor(const gh_vae *m);
/* Whether the decode may take a backend's 16-bit tensor-core mode: not
 * with bf16 weights (their operands put SD 1.5's decode 1.1e-2 off the
 * fp32 reference; fp16 ones 1.0e-3). */
bool gh_vae_decode_fp16_ok(const gh_vae *m);
/* latent[B,z,h,w] (scaled by 0.18215) -> image[B,3,H,W], the raw decoder
 * output (about -1..1). */
int gh_vae_decode(gh_dctx *c, const gh_vae *m, const gh_dt *latent, gh_dt *image);
/* image[B,3,H,W] in -1..1 (2 * rgb - 1) -> latent[B,z,h,w]: the posterior mean times 0.18215. */
int gh_vae_encode(gh_dctx *c, const gh_vae *m, const gh_dt *image, gh_dt *latent);

/* Shared by the UNet and the VAE (eps 1e-5 or 1e-6; temb NULL in the VAE). */
int gh_resblock_load(gh_dpart *p, gh_resblock *rb, int64_t in, int64_t out, int64_t temb, const char *name);
int gh_resblock_eval(gh_dctx *c, const gh_resblock *rb, float eps, const gh_dt *x, const gh_dt *temb_act,
                     gh_dt *ret);

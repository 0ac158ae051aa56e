/* AnimateDiff motion modules (v1 and v2, for SD 1.x UNets). See sd.h.
 *
 * Layouts: the diffusers MotionAdapter's names are the runtime's
 * ("down_blocks.0.motion_modules.0.transformer_blocks.0.attn1.to_q"); a
 * checkpoint in AnimateDiff's own layout (mm_sd_v15_v2) maps each module
 * "X.motion_modules.M" to "X.motion_modules.M.temporal_transformer" and its
 * members by names.c's motion table (attention_blocks.0 for attn1, norms.0
 * for norm1, ff_norm for norm3).
 *
 * A module, on x[(N F), C, H, W] (N videos of F frames):
 *   n = group_norm(x) per frame (32 groups, eps 1e-6), as AnimateDiff does
 *       (diffusers' port normalizes across frames; the weights were trained
 *       per frame)
 *   tokens [(N HW), F, C] of n: one transpose, [N, F*C, HW] -> [N, HW, F*C]
 *       (frames and channels stay side by side, in that order)
 *   h = proj_in(tokens)
 *   twice: h += attention over the frames of (layer_norm(h) + pe[F]),
 *       8 heads, q, k and v of the same input (no bias), to_out with bias
 *   h += ff(layer_norm(h))  (GEGLU, 4x)
 *   back to [(N F), C, H, W] by the inverse transpose of proj_out(h), plus x.
 * The position encoding is AnimateDiff's sinusoid, sin and cos
 * interleaved: pe[f, 2i] = sin(f w_i), pe[f, 2i+1] = cos(f w_i), w_i =
 * 10000^(-2i/C); it is computed, not read (diffusers' files leave it out),
 * and a stored one only tells the length the module was trained for
 * (without one: 32 with a mid-block module, v2; 24 without, v1). */
#include <errno.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>

#include "names.h"
#include "sd.h"

#define GN_GROUPS 32
#define MM_GN_EPS 1e-6f
#define LN_EPS 1e-5f
#define V2_MAX_FRAMES 32 /* the encodings' lengths without a stored one */
#define V1_MAX_FRAMES 24

/* ---- loading ---- */

static int block_load(gh_dpart *p, gh_motion_block *b, int64_t ch, const char *n) {
        if (p->layout == GH_DLAYOUT_ORIGINAL) {
                char file[200];
                snprintf(file, sizeof(file), "%s.temporal_transformer", n);
                GH_TRY(gh_dpart_map_add(p, n, file, GH_DNAMES_MOTION));
        }
        if (ch % GH_MOTION_HEADS)
                return snprintf(p->err, sizeof(p->err), "%s: %lld channels do not split into %d heads", n,
                                (long long) ch, GH_MOTION_HEADS),
                       -EINVAL;
        *b = (gh_motion_block){.ch = ch};
        GH_TRY(gh_dnorm_get(p, &b->norm, ch, "%s.norm", n));
        GH_TRY(gh_dlin_get(p, &b->proj_in, true, ch, ch, "%s.proj_in", n));
        GH_TRY(gh_dlin_get(p, &b->proj_out, true, ch, ch, "%s.proj_out", n));
        GH_TRY(gh_dnorm_get(p, &b->ln1, ch, "%s.transformer_blocks.0.norm1", n));
        GH_TRY(gh_dnorm_get(p, &b->ln2, ch, "%s.transformer_blocks.0.norm2", n));
        GH_TRY(gh_dnorm_get(p, &b->ln3, ch, "%s.transformer_blocks.0.norm3", n));
        GH_TRY(gh_dlin_get(p, &b->q1, false, ch, ch, "%s.transformer_blocks.0.attn1.to_q", n));
        GH_TRY(gh_dlin_get(p, &b->k1, false, ch, ch, "%s.transformer_blocks.0.attn1.to_k", n));
        GH_TRY(gh_dlin_get(p, &b->v1, false, ch, ch, "%s.transformer_blocks.0.attn1.to_v", n));
        GH_TRY(gh_dlin_get(p, &b->o1, true, ch, ch, "%s.transformer_blocks.0.attn1.to_out.0", n));
        GH_TRY(gh_dlin_get(p, &b->q2, false, ch, ch, "%s.transformer_blocks.0.attn2.to_q", n));
        GH_TRY(gh_dlin_get(p, &b->k2, false, ch, ch, "%s.transformer_blocks.0.attn2.to_k", n));
        GH_TRY(gh_dlin_get(p, &b->v2, false, ch, ch, "%s.transformer_blocks.0.attn2.to_v", n));
        GH_TRY(gh_dlin_get(p, &b->o2, true, ch, ch, "%s.transformer_blocks.0.attn2.to_out.0", n));
        GH_TRY(gh_dlin_get(p, &b->ff1, true, 8 * ch, ch, "%s.transformer_blocks.0.ff.net.0.proj", n));
        return gh_dlin_get(p, &b->ff2, true, ch, 4 * ch, "%s.transformer_blocks.0.ff.net.2", n);
}

/* The stored encoding's length ([1, L, C]), where the file has one; else
 * AnimateDiff's: 32 for v2 (a module in the mid block), 24 for v1. */
static int max_frames(gh_dpart *p, int64_t ch, bool v2, int64_t *ret) {
        const char *names[] = {"down_blocks.0.motion_modules.0.transformer_blocks.0.attn1.pos_encoder.pe",
                               "down_blocks.0.motion_modules.0.transformer_blocks.0.pos_embed.pe"};
        gh_tensor t;

        *ret = v2 ? V2_MAX_FRAMES : V1_MAX_FRAMES;
        for (size_t i = 0; i < sizeof(names) / sizeof(names[0]); i++) {
                if (!gh_dpart_has(p, "%s", names[i]))
                        continue;
                GH_TRY(gh_dpart_shape(p, &t, "%s", names[i]));
                if (t.n_dims != 3 || t.shape[0] != 1 || t.shape[1] < 1 || t.shape[1] > 4096 ||
                    (int64_t) t.shape[2] != ch) {
                        char file[300];
                        GH_TRY(gh_dpart_file_name(p, names[i], file, sizeof(file)));
                        return snprintf(p->err, sizeof(p->err), "tensor %s%s: a position encoding of [1, L, %lld] expected",
                                        p->prefix, file, (long long) ch),
                               -EINVAL;
                }
                *ret = (int64_t) t.shape[1];
                return 0;
        }
        return 0;
}

static int64_t level_ch(const gh_unet *u, int64_t l) {
        return u->cfg.mc * u->cfg.mult[l];
}

int gh_motion_load(gh_dpart *p, const gh_unet *u, gh_motion *ret) {
        const gh_unet_cfg *cfg = &u->cfg;
        char n[96];

        *ret = (gh_motion){0};
        for (int64_t l = 0; l < cfg->levels; l++)
                for (int64_t j = 0; j < cfg->res; j++) {
                        snprintf(n, sizeof(n), "down_blocks.%lld.motion_modules.%lld", (long long) l, (long long) j);
                        GH_TRY(block_load(p, &ret->down[l][j], level_ch(u, l), n));
                }
        ret->has_mid = gh_dpart_has_file(p, "mid_block.motion_modules.0.proj_in.weight") ||
                       gh_dpart_has_file(p, "mid_block.motion_modules.0.temporal_transformer.proj_in.weight");
        if (ret->has_mid)
                GH_TRY(block_load(p, &ret->mid, level_ch(u, cfg->levels - 1), "mid_block.motion_modules.0"));
        for (int64_t i = 0; i < cfg->levels; i++)
                for (int64_t j = 0; j <= cfg->res; j++) {
                        snprintf(n, sizeof(n), "up_blocks.%lld.motion_modules.%lld", (long long) i, (long long) j);
                        GH_TRY(block_load(p, &ret->up[i][j], level_ch(u, cfg->levels - 1 - i), n));
                }
        return max_frames(p, level_ch(u, 0), ret->has_mid, &ret->max_frames);
}

/* ---- position encodings ---- */

static void pe_fill(float *pe, int64_t frames, int64_t ch) {
        for (int64_t f = 0; f < frames; f++)
                for (int64_t i = 0; 2 * i < ch; i++) {
                        float w = expf((float) (2 * i) * (-logf(10000.0f) / (float) ch));
                        pe[f * ch + 2 * i] = sinf((float) f * w);
                        if (2 * i + 1 < ch)
                                pe[f * ch + 2 * i + 1] = cosf((float) f * w);
                }
}

int gh_motion_pe_new(gh_dctx *c, const gh_unet *u, int64_t frames, gh_motion_pe *ret) {
        *ret = (gh_motion_pe){.frames = frames};
        for (int64_t l = 0; l < u->cfg.levels; l++) {
                int64_t ch = level_ch(u, l), k = 0;
                while (k < ret->n && ret->ch[k] != ch)
                        k++;
                if (k < ret->n)
                        continue;
                float *host = c->dry ? NULL : malloc((size_t) (frames * ch) * sizeof(float));
                if (!c->dry && !host)
                        return -ENOMEM;
                if (host)
                        pe_fill(host, frames, ch);
                int r = gh_dt_new_f32(c, &ret->pe[k], frames, ch);
                if (r >= 0 && (r = gh_op_upload(c, host, &ret->pe[k])) < 0)
                        gh_dt_drop(c, &ret->pe[k]);
                free(host);
                if (r < 0)
                        return r;
                ret->ch[k] = ch;
                ret->n++;
        }
        return 0;
}

void gh_motion_pe_drop(gh_dctx *c, gh_motion_pe *pe) {
        while (pe->n > 0)
                gh_dt_drop(c, &pe->pe[--pe->n]);
}

/* ---- evaluation ---- */

/* y = a transpose of x: x viewed [b, r, k] (3-D) as NCHW [b, r, k, 1], to
 * NLC [b, k, r]. */
static int swap(gh_dctx *c, const gh_dt *x, int64_t b, int64_t r, int64_t k, gh_dt *y) {
        gh_dt xv;

        GH_TRY(gh_dt_reshape(c, x, &xv, 4, (int64_t[]){b, r, k, 1}));
        GH_TRY(gh_dt_new(c, y, b, k, r));
        return gh_op_nchw_to_nlc(c, &xv, y);
}

/* h += attention over the frames of layer_norm(h) + pe. h [(N HW), F, C]. */
static int frame_attention(gh_dctx *c, const gh_dt *pe, const gh_dnorm *ln, const gh_dlin *q, const gh_dlin *k,
                           const gh_dlin *v, const gh_dlin *o, gh_dt *h) {
        const int64_t *s = h->shape;
        gh_dt n = {0}, rows;
        int r;

        if ((r = gh_dt_new(c, &n, s[0], s[1], s[2])) < 0 || (r = gh_op_layer_norm(c, h, &ln->g, &ln->b, LN_EPS, &n)) < 0 ||
            (r = gh_dt_reshape(c, &n, &rows, 2, (int64_t[]){s[0], s[1] * s[2]})) < 0 ||
            (r = gh_op_add_rows(c, &rows, pe, &rows)) < 0)
                goto out;
        r = gh_sd_attend(c, h, &n, &n, q, k, v, o, GH_MOTION_HEADS);
out:
        gh_dt_drop(c, &n);
        return r;
}

static const gh_dt *pe_for(const gh_motion_pe *pe, int64_t ch) {
        for (int64_t i = 0; i < pe->n; i++)
                if (pe->ch[i] == ch)
                        return &pe->pe[i];
        return NULL;
}

/* The module's transformer on tokens t [(N HW), F, C]; result new. */
static int transformer(gh_dctx *c, const gh_motion_block *b, const gh_dt *pe, const gh_dt *t, gh_dt *ret) {
        const int64_t *s = t->shape;
        gh_dt h = {0}, y = {0};
        int r;

        if ((r = gh_dt_new(c, &h, s[0], s[1], s[2])) < 0 || (r = gh_op_linear(c, t, &b->proj_in.w, &b->proj_in.b, &h)) < 0 ||
            (r = frame_attention(c, pe, &b->ln1, &b->q1, &b->k1, &b->v1, &b->o1, &h)) < 0 ||
            (r = frame_attention(c, pe, &b->ln2, &b->q2, &b->k2, &b->v2, &b->o2, &h)) < 0 ||
            (r = gh_sd_feed_forward(c, &b->ln3, &b->ff1, &b->ff2, &h)) < 0 ||
            (r = gh_dt_new(c, &y, s[0], s[1], s[2])) < 0 ||
            (r = gh_op_linear(c, &h, &b->proj_out.w, &b->proj_out.b, &y)) < 0)
                goto out;
        *ret = y;
        y = (gh_dt){0};
out:
        gh_dt_drop(c, &y);
        gh_dt_drop(c, &h);
        return r;
}

int gh_motion_eval(gh_dctx *c, const gh_motion_block *b, const gh_motion_pe *pe, const gh_dt *x, gh_dt *ret) {
        const int64_t *s = x->shape;
        int64_t F = pe->frames, C = s[1], HW = s[2] * s[3], N = F ? s[0] / F : 0;
        const gh_dt *p = pe_for(pe, C);
        gh_dt n = {0}, t = {0}, tokens, o = {0}, u = {0}, uv;
        int r;

        if (x->n_dims != 4 || C != b->ch || !p || N * F != s[0])
                return gh_dctx_fail(c, -EINVAL, "motion module of %lld channels: input of %lld channels, %lld frames",
                                    (long long) b->ch, (long long) C, (long long) F);
        if ((r = gh_dt_new(c, &n, s[0], C, s[2], s[3])) < 0 ||
            (r = gh_op_group_norm(c, x, GN_GROUPS, MM_GN_EPS, &b->norm.g, &b->norm.b, false, &n)) < 0 ||
            (r = swap(c, &n, N, F * C, HW, &t)) < 0) /* [N, HW, F*C] */
                goto out;
        gh_dt_drop(c, &n);
        if ((r = gh_dt_reshape(c, &t, &tokens, 3, (int64_t[]){N * HW, F, C})) < 0 ||
            (r = transformer(c, b, p, &tokens, &o)) < 0)
                goto out;
        gh_dt_drop(c, &t);
        /* back: [N, HW, F*C] -> [N, F*C, HW] */
        if ((r = gh_dt_reshape(c, &o, &tokens, 3, (int64_t[]){N, HW, F * C})) < 0 ||
            (r = gh_dt_new(c, &u, N, F * C, HW, 1)) < 0 || (r = gh_op_nlc_to_nchw(c, &tokens, &u)) < 0)
                goto out;
        gh_dt_drop(c, &o);
        if ((r = gh_dt_reshape(c, &u, &uv, 4, (int64_t[]){s[0], C, s[2], s[3]})) < 0 ||
            (r = gh_op_add(c, &uv, x, &uv)) < 0)
                goto out;
        *ret = uv;
        u = (gh_dt){0};
out:
        gh_dt_drop(c, &u);
        gh_dt_drop(c, &o);
        gh_dt_drop(c, &t);
        gh_dt_drop(c, &n);
        return r;
}

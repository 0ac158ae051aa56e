/* The SD 1.x UNet (LDM openaimodel.py; diffusers UNet2DConditionModel
 * names): time embedding, ResBlocks, SpatialTransformers (self-attention,
 * cross-attention, GEGLU feed-forward; proj_in/proj_out as 1x1 convs or,
 * SD2 style, linears), down- and upsampling, and the skip connections.
 *
 * Loading probes the sizes in the checkpoint's own layout, builds the map
 * of block names for the original layout, then takes every tensor with
 * its expected shape. Evaluation allocates from the context's arena in a
 * fixed order, so a dry run plans it exactly. */
#include <errno.h>
#include <stdio.h>
#include <string.h>

#include "names.h"
#include "sd.h"

#define GN_GROUPS 32
#define RES_EPS 1e-5f
#define TR_EPS 1e-6f
#define LN_EPS 1e-5f

/* ---- ResBlock (also the VAE's) ---- */

int gh_resblock_load(gh_dpart *p, gh_resblock *rb, int64_t in, int64_t out, int64_t temb, const char *n) {
        *rb = (gh_resblock){.in = in, .out = out};
        GH_TRY(gh_dnorm_get(p, &rb->n1, in, "%s.norm1", n));
        GH_TRY(gh_dconv_get(p, &rb->c1, out, in, 3, "%s.conv1", n));
        if (temb)
                GH_TRY(gh_dlin_get(p, &rb->temb, true, out, temb, "%s.time_emb_proj", n));
        GH_TRY(gh_dnorm_get(p, &rb->n2, out, "%s.norm2", n));
        GH_TRY(gh_dconv_get(p, &rb->c2, out, out, 3, "%s.conv2", n));
        if (in != out)
                GH_TRY(gh_dconv_get(p, &rb->skip, out, in, 1, "%s.conv_shortcut", n));
        return 0;
}

static const int PAD1[4] = {1, 1, 1, 1}, PAD0[4] = {0, 0, 0, 0};

int gh_resblock_eval(gh_dctx *c, const gh_resblock *rb, float eps, const gh_dt *x, const gh_dt *temb_act,
                     gh_dt *ret) {
        const int64_t *s = x->shape;
        gh_dt t = {0}, h = {0}, e = {0}, y = {0}, k = {0};
        int r;

        if ((r = gh_dt_new(c, &t, s[0], s[1], s[2], s[3])) < 0 ||
            (r = gh_op_group_norm(c, x, GN_GROUPS, eps, &rb->n1.g, &rb->n1.b, true, &t)) < 0 ||
            (r = gh_dt_new(c, &h, s[0], rb->out, s[2], s[3])) < 0 ||
            (r = gh_op_conv2d(c, &t, &rb->c1.w, &rb->c1.b, 1, PAD1, &h)) < 0)
                goto fail;
        gh_dt_drop(c, &t);
        if (temb_act) {
                if ((r = gh_dt_new(c, &e, s[0], rb->out)) < 0 ||
                    (r = gh_op_linear(c, temb_act, &rb->temb.w, &rb->temb.b, &e)) < 0 ||
                    (r = gh_op_add_channel(c, &h, &e, &h)) < 0)
                        goto fail;
                gh_dt_drop(c, &e);
        }
        if ((r = gh_op_group_norm(c, &h, GN_GROUPS, eps, &rb->n2.g, &rb->n2.b, true, &h)) < 0 ||
            (r = gh_dt_new(c, &y, s[0], rb->out, s[2], s[3])) < 0 ||
            (r = gh_op_conv2d(c, &h, &rb->c2.w, &rb->c2.b, 1, PAD1, &y)) < 0)
                goto fail;
        gh_dt_drop(c, &h);
        if (rb->in != rb->out) {
                if ((r = gh_dt_new(c, &k, s[0], rb->out, s[2], s[3])) < 0 ||
                    (r = gh_op_conv2d(c, x, &rb->skip.w, &rb->skip.b, 1, PAD0, &k)) < 0 ||
                    (r = gh_op_add(c, &y, &k, &y)) < 0)
                        goto fail;
                gh_dt_drop(c, &k);
        } else if ((r = gh_op_add(c, &y, x, &y)) < 0)
                goto fail;
        *ret = y;
        return 0;
fail:
        gh_dt_drop(c, &k);
        gh_dt_drop(c, &y);
        gh_dt_drop(c, &e);
        gh_dt_drop(c, &h);
        gh_dt_drop(c, &t);
        return r;
}

/* ---- SpatialTransformer ---- */

static int tblock_load(gh_dpart *p, gh_tblock *b, int64_t ch, int64_t ctx, const char *n) {
        GH_TRY(gh_dnorm_get(p, &b->ln1, ch, "%s.norm1", n));
        GH_TRY(gh_dnorm_get(p, &b->ln2, ch, "%s.norm2", n));
        GH_TRY(gh_dnorm_get(p, &b->ln3, ch, "%s.norm3", n));
        GH_TRY(gh_dlin_get(p, &b->q1, false, ch, ch, "%s.attn1.to_q", n));
        GH_TRY(gh_dlin_get(p, &b->k1, false, ch, ch, "%s.attn1.to_k", n));
        GH_TRY(gh_dlin_get(p, &b->v1, false, ch, ch, "%s.attn1.to_v", n));
        GH_TRY(gh_dlin_get(p, &b->o1, true, ch, ch, "%s.attn1.to_out.0", n));
        GH_TRY(gh_dlin_get(p, &b->q2, false, ch, ch, "%s.attn2.to_q", n));
        GH_TRY(gh_dlin_get(p, &b->k2, false, ch, ctx, "%s.attn2.to_k", n));
        GH_TRY(gh_dlin_get(p, &b->v2, false, ch, ctx, "%s.attn2.to_v", n));
        GH_TRY(gh_dlin_get(p, &b->o2, true, ch, ch, "%s.attn2.to_out.0", n));
        GH_TRY(gh_dlin_get(p, &b->ff1, true, 8 * ch, ch, "%s.ff.net.0.proj", n));
        return gh_dlin_get(p, &b->ff2, true, ch, 4 * ch, "%s.ff.net.2", n);
}

static int transformer_load(gh_dpart *p, const gh_unet_cfg *cfg, gh_transformer *t, int64_t ch, const char *n) {
        char b[160];

        *t = (gh_transformer){.ch = ch, .depth = cfg->depth, .linear_proj = cfg->linear_proj};
        t->heads = cfg->heads_fixed ? cfg->heads_fixed : ch / cfg->head_dim;
        if (t->heads < 1 || ch % t->heads)
                return snprintf(p->err, sizeof(p->err), "%s: %lld channels do not split into heads", n,
                                (long long) ch),
                       -EINVAL;
        GH_TRY(gh_dnorm_get(p, &t->norm, ch, "%s.norm", n));
        if (t->linear_proj) {
                GH_TRY(gh_dlin_get(p, &t->proj_in, true, ch, ch, "%s.proj_in", n));
                GH_TRY(gh_dlin_get(p, &t->proj_out, true, ch, ch, "%s.proj_out", n));
        } else {
                GH_TRY(gh_dconv_get(p, &t->proj_in, ch, ch, 1, "%s.proj_in", n));
                GH_TRY(gh_dconv_get(p, &t->proj_out, ch, ch, 1, "%s.proj_out", n));
        }
        for (int64_t i = 0; i < t->depth; i++) {
                snprintf(b, sizeof(b), "%s.transformer_blocks.%lld", n, (long long) i);
                GH_TRY(tblock_load(p, &t->b[i], ch, cfg->ctx, b));
        }
        return 0;
}

/* q from x, k and v from kv (x itself for self-attention); x += o(attn). */
int gh_sd_attend(gh_dctx *c, const gh_dt *x, const gh_dt *n, const gh_dt *kv, const gh_dlin *wq, const gh_dlin *wk,
                  const gh_dlin *wv, const gh_dlin *wo, int64_t heads) {
        const int64_t *s = x->shape, *ks = kv->shape;
        gh_dt q = {0}, k = {0}, v = {0}, a = {0};
        int r;

        if ((r = gh_dt_new(c, &q, s[0], s[1], s[2])) < 0 || (r = gh_op_linear(c, n, &wq->w, NULL, &q)) < 0 ||
            (r = gh_dt_new(c, &k, ks[0], ks[1], s[2])) < 0 || (r = gh_op_linear(c, kv, &wk->w, NULL, &k)) < 0 ||
            (r = gh_dt_new(c, &v, ks[0], ks[1], s[2])) < 0 || (r = gh_op_linear(c, kv, &wv->w, NULL, &v)) < 0 ||
            (r = gh_dt_new(c, &a, s[0], s[1], s[2])) < 0 ||
            (r = gh_op_attention(c, &q, &k, &v, (int) heads, false, &a)) < 0)
                goto out;
        gh_dt_drop(c, &v);
        gh_dt_drop(c, &k);
        gh_dt_drop(c, &q);
        r = gh_op_linear_add(c, &a, &wo->w, &wo->b, (gh_dt *) x);
out:
        gh_dt_drop(c, &a);
        gh_dt_drop(c, &v);
        gh_dt_drop(c, &k);
        gh_dt_drop(c, &q);
        return r;
}

/* x += ff2(geglu(ff1(layer_norm(x)))). */
int gh_sd_feed_forward(gh_dctx *c, const gh_dnorm *ln, const gh_dlin *ff1, const gh_dlin *ff2, gh_dt *x) {
        const int64_t *s = x->shape;
        gh_dt n = {0}, f = {0}, g = {0};
        int r;

        if ((r = gh_dt_new(c, &n, s[0], s[1], s[2])) < 0 || (r = gh_op_layer_norm(c, x, &ln->g, &ln->b, LN_EPS, &n)) < 0 ||
            (r = gh_dt_new(c, &f, s[0], s[1], 8 * s[2])) < 0 || (r = gh_op_linear(c, &n, &ff1->w, &ff1->b, &f)) < 0)
                goto out;
        gh_dt_drop(c, &n);
        if ((r = gh_dt_new(c, &g, s[0], s[1], 4 * s[2])) < 0 || (r = gh_op_geglu(c, &f, &g)) < 0)
                goto out;
        gh_dt_drop(c, &f);
        r = gh_op_linear_add(c, &g, &ff2->w, &ff2->b, x);
out:
        gh_dt_drop(c, &g);
        gh_dt_drop(c, &f);
        gh_dt_drop(c, &n);
        return r;
}

static int tblock_eval(gh_dctx *c, const gh_transformer *t, const gh_tblock *b, gh_dt *x, const gh_dt *ctx) {
        const int64_t *s = x->shape;
        gh_dt n = {0};
        int r;

        if ((r = gh_dt_new(c, &n, s[0], s[1], s[2])) < 0 ||
            (r = gh_op_layer_norm(c, x, &b->ln1.g, &b->ln1.b, LN_EPS, &n)) < 0 ||
            (r = gh_sd_attend(c, x, &n, &n, &b->q1, &b->k1, &b->v1, &b->o1, t->heads)) < 0 ||
            (r = gh_op_layer_norm(c, x, &b->ln2.g, &b->ln2.b, LN_EPS, &n)) < 0 ||
            (r = gh_sd_attend(c, x, &n, ctx, &b->q2, &b->k2, &b->v2, &b->o2, t->heads)) < 0)
                goto out;
        gh_dt_drop(c, &n);
        r = gh_sd_feed_forward(c, &b->ln3, &b->ff1, &b->ff2, x);
out:
        gh_dt_drop(c, &n);
        return r;
}

/* y = x + proj_out(blocks(proj_in(norm(x)))), new. */
static int transformer_eval(gh_dctx *c, const gh_transformer *t, const gh_dt *x, const gh_dt *ctx, gh_dt *ret) {
        const int64_t *s = x->shape;
        int64_t B = s[0], C = s[1], L = s[2] * s[3];
        gh_dt n = {0}, p = {0}, h = {0}, y = {0};
        int r;

        if ((r = gh_dt_new(c, &n, B, C, s[2], s[3])) < 0 ||
            (r = gh_op_group_norm(c, x, GN_GROUPS, TR_EPS, &t->norm.g, &t->norm.b, false, &n)) < 0)
                goto out;
        if (!t->linear_proj) {
                if ((r = gh_dt_new(c, &p, B, C, s[2], s[3])) < 0 ||
                    (r = gh_op_conv2d(c, &n, &t->proj_in.w, &t->proj_in.b, 1, PAD0, &p)) < 0)
                        goto out;
                gh_dt_drop(c, &n);
                if ((r = gh_dt_new(c, &h, B, L, C)) < 0 || (r = gh_op_nchw_to_nlc(c, &p, &h)) < 0)
                        goto out;
                gh_dt_drop(c, &p);
        } else {
                if ((r = gh_dt_new(c, &p, B, L, C)) < 0 || (r = gh_op_nchw_to_nlc(c, &n, &p)) < 0)
                        goto out;
                gh_dt_drop(c, &n);
                if ((r = gh_dt_new(c, &h, B, L, C)) < 0 || (r = gh_op_linear(c, &p, &t->proj_in.w, &t->proj_in.b, &h)) < 0)
                        goto out;
                gh_dt_drop(c, &p);
        }
        for (int64_t i = 0; i < t->depth; i++)
                if ((r = tblock_eval(c, t, &t->b[i], &h, ctx)) < 0)
                        goto out;
        if (!t->linear_proj) {
                if ((r = gh_dt_new(c, &p, B, C, s[2], s[3])) < 0 || (r = gh_op_nlc_to_nchw(c, &h, &p)) < 0)
                        goto out;
                gh_dt_drop(c, &h);
                if ((r = gh_dt_new(c, &y, B, C, s[2], s[3])) < 0 ||
                    (r = gh_op_conv2d(c, &p, &t->proj_out.w, &t->proj_out.b, 1, PAD0, &y)) < 0)
                        goto out;
        } else {
                if ((r = gh_dt_new(c, &p, B, L, C)) < 0 || (r = gh_op_linear(c, &h, &t->proj_out.w, &t->proj_out.b, &p)) < 0)
                        goto out;
                gh_dt_drop(c, &h);
                if ((r = gh_dt_new(c, &y, B, C, s[2], s[3])) < 0 || (r = gh_op_nlc_to_nchw(c, &p, &y)) < 0)
                        goto out;
        }
        if ((r = gh_op_add(c, &y, x, &y)) < 0)
                goto out;
        *ret = y;
        y = (gh_dt){0};
out:
        gh_dt_drop(c, &y);
        gh_dt_drop(c, &h);
        gh_dt_drop(c, &p);
        gh_dt_drop(c, &n);
        return r;
}

/* ---- sizes and the original layout's map ---- */

/* Levels and res blocks per level, in the checkpoint's own names. */
static int probe_levels(gh_dpart *p, gh_unet_cfg *cfg) {
        int64_t n = 1, R = -1;

        if (p->layout == GH_DLAYOUT_DIFFUSERS) {
                while (cfg->levels < GH_SD_MAX_LEVELS + 1 && gh_dpart_has_file(p, "down_blocks.%lld.resnets.0.conv1.weight", (long long) cfg->levels))
                        cfg->levels++;
                while (cfg->res < GH_SD_MAX_RES + 1 && gh_dpart_has_file(p, "down_blocks.0.resnets.%lld.conv1.weight", (long long) cfg->res))
                        cfg->res++;
        } else {
                for (; n < 64; n++) {
                        bool op = gh_dpart_has_file(p, "input_blocks.%lld.0.op.weight", (long long) n);
                        if (!op && !gh_dpart_has_file(p, "input_blocks.%lld.0.in_layers.0.weight", (long long) n))
                                break;
                        if (op && R < 0)
                                R = n - 1;
                }
                cfg->res = R < 0 ? n - 1 : R;
                cfg->levels = cfg->res ? n / (cfg->res + 1) : 0;
                if (cfg->res && cfg->levels * (cfg->res + 1) != n)
                        cfg->levels = 0;
        }
        if (cfg->levels >= 1 && cfg->levels <= GH_SD_MAX_LEVELS && p->layout == GH_DLAYOUT_ORIGINAL)
                for (int64_t l = 0; l < cfg->levels; l++) /* the map's upsampler names depend on it */
                        cfg->attn[l] = gh_dpart_has_file(p, "input_blocks.%lld.1.proj_in.weight",
                                                         (long long) (1 + l * (cfg->res + 1)));
        if (cfg->levels < 1 || cfg->levels > GH_SD_MAX_LEVELS || cfg->res < 1 || cfg->res > GH_SD_MAX_RES)
                return snprintf(p->err, sizeof(p->err),
                                "the UNet's blocks do not form 1..%d levels of 1..%d res blocks (%s%s)",
                                GH_SD_MAX_LEVELS, GH_SD_MAX_RES, p->prefix,
                                p->layout == GH_DLAYOUT_DIFFUSERS ? "down_blocks" : "input_blocks"),
                       -EINVAL;
        return 0;
}

static int map_original(gh_dpart *p, const gh_unet_cfg *cfg) {
        int64_t L = cfg->levels, R = cfg->res;
        char a[96], b[96];

        GH_TRY(gh_dpart_map_add(p, "conv_in", "input_blocks.0.0", GH_DNAMES_SAME));
        GH_TRY(gh_dpart_map_add(p, "time_embedding.linear_1", "time_embed.0", GH_DNAMES_SAME));
        GH_TRY(gh_dpart_map_add(p, "time_embedding.linear_2", "time_embed.2", GH_DNAMES_SAME));
        GH_TRY(gh_dpart_map_add(p, "conv_norm_out", "out.0", GH_DNAMES_SAME));
        GH_TRY(gh_dpart_map_add(p, "conv_out", "out.2", GH_DNAMES_SAME));
        GH_TRY(gh_dpart_map_add(p, "mid_block.resnets.0", "middle_block.0", GH_DNAMES_UNET_RESNET));
        GH_TRY(gh_dpart_map_add(p, "mid_block.attentions.0", "middle_block.1", GH_DNAMES_SAME));
        GH_TRY(gh_dpart_map_add(p, "mid_block.resnets.1", "middle_block.2", GH_DNAMES_UNET_RESNET));
        for (int64_t l = 0; l < L; l++) {
                for (int64_t j = 0; j < R; j++) {
                        int64_t blk = 1 + l * (R + 1) + j;
                        snprintf(a, sizeof(a), "down_blocks.%lld.resnets.%lld", (long long) l, (long long) j);
                        snprintf(b, sizeof(b), "input_blocks.%lld.0", (long long) blk);
                        GH_TRY(gh_dpart_map_add(p, a, b, GH_DNAMES_UNET_RESNET));
                        snprintf(a, sizeof(a), "down_blocks.%lld.attentions.%lld", (long long) l, (long long) j);
                        snprintf(b, sizeof(b), "input_blocks.%lld.1", (long long) blk);
                        GH_TRY(gh_dpart_map_add(p, a, b, GH_DNAMES_SAME));
                }
                snprintf(a, sizeof(a), "down_blocks.%lld.downsamplers.0.conv", (long long) l);
                snprintf(b, sizeof(b), "input_blocks.%lld.0.op", (long long) ((l + 1) * (R + 1)));
                GH_TRY(gh_dpart_map_add(p, a, b, GH_DNAMES_SAME));
        }
        for (int64_t i = 0; i < L; i++) {
                bool attn = cfg->attn[L - 1 - i];
                for (int64_t j = 0; j <= R; j++) {
                        int64_t blk = i * (R + 1) + j;
                        snprintf(a, sizeof(a), "up_blocks.%lld.resnets.%lld", (long long) i, (long long) j);
                        snprintf(b, sizeof(b), "output_blocks.%lld.0", (long long) blk);
                        GH_TRY(gh_dpart_map_add(p, a, b, GH_DNAMES_UNET_RESNET));
                        snprintf(a, sizeof(a), "up_blocks.%lld.attentions.%lld", (long long) i, (long long) j);
                        snprintf(b, sizeof(b), "output_blocks.%lld.1", (long long) blk);
                        GH_TRY(gh_dpart_map_add(p, a, b, GH_DNAMES_SAME));
                }
                snprintf(a, sizeof(a), "up_blocks.%lld.upsamplers.0.conv", (long long) i);
                snprintf(b, sizeof(b), "output_blocks.%lld.%d.conv", (long long) (i * (R + 1) + R), attn ? 2 : 1);
                GH_TRY(gh_dpart_map_add(p, a, b, GH_DNAMES_SAME));
        }
        return 0;
}

/* The rest of the sizes, by the runtime's names (the map exists now). */
static int probe_sizes(gh_dpart *p, gh_unet_cfg *cfg) {
        gh_tensor t;

        GH_TRY(gh_dpart_shape(p, &t, "conv_in.weight"));
        if (t.n_dims != 4)
                return snprintf(p->err, sizeof(p->err), "the UNet's conv_in is not a convolution"), -EINVAL;
        cfg->mc = (int64_t) t.shape[0];
        cfg->in_ch = (int64_t) t.shape[1];
        GH_TRY(gh_dpart_shape(p, &t, "conv_out.weight"));
        cfg->out_ch = (int64_t) t.shape[0];
        GH_TRY(gh_dpart_shape(p, &t, "time_embedding.linear_1.weight"));
        cfg->temb = (int64_t) t.shape[0];
        for (int64_t l = 0; l < cfg->levels; l++) {
                GH_TRY(gh_dpart_shape(p, &t, "down_blocks.%lld.resnets.0.conv1.weight", (long long) l));
                if (cfg->mc <= 0 || (int64_t) t.shape[0] % cfg->mc)
                        return snprintf(p->err, sizeof(p->err), "the UNet's level %lld width is not a multiple of %lld",
                                        (long long) l, (long long) cfg->mc),
                               -EINVAL;
                cfg->mult[l] = (int64_t) t.shape[0] / cfg->mc;
                cfg->attn[l] = gh_dpart_has(p, "down_blocks.%lld.attentions.0.proj_in.weight", (long long) l);
        }
        GH_TRY(gh_dpart_shape(p, &t, "mid_block.attentions.0.proj_in.weight"));
        cfg->linear_proj = t.n_dims == 2;
        cfg->heads_fixed = cfg->linear_proj ? 0 : 8;
        cfg->head_dim = cfg->linear_proj ? 64 : 0;
        GH_TRY(gh_dpart_shape(p, &t, "mid_block.attentions.0.transformer_blocks.0.attn2.to_k.weight"));
        cfg->ctx = (int64_t) t.shape[1];
        while (cfg->depth < GH_SD_MAX_DEPTH &&
               gh_dpart_has(p, "mid_block.attentions.0.transformer_blocks.%lld.norm1.weight", (long long) cfg->depth))
                cfg->depth++;
        return 0;
}

static int load_down(gh_dpart *p, gh_unet *m, int64_t *skips, int64_t *n_skips) {
        const gh_unet_cfg *cfg = &m->cfg;
        int64_t ch = cfg->mc;
        char n[96];

        skips[(*n_skips)++] = ch;
        for (int64_t l = 0; l < cfg->levels; l++) {
                int64_t out = cfg->mc * cfg->mult[l];
                for (int64_t j = 0; j < cfg->res; j++) {
                        snprintf(n, sizeof(n), "down_blocks.%lld.resnets.%lld", (long long) l, (long long) j);
                        GH_TRY(gh_resblock_load(p, &m->down[l][j], ch, out, cfg->temb, n));
                        ch = out;
                        if (cfg->attn[l]) {
                                snprintf(n, sizeof(n), "down_blocks.%lld.attentions.%lld", (long long) l, (long long) j);
                                GH_TRY(transformer_load(p, cfg, &m->down_attn[l][j], ch, n));
                        }
                        skips[(*n_skips)++] = ch;
                }
                if (l + 1 < cfg->levels) {
                        GH_TRY(gh_dconv_get(p, &m->downsample[l], ch, ch, 3, "down_blocks.%lld.downsamplers.0.conv", (long long) l));
                        skips[(*n_skips)++] = ch;
                }
        }
        return 0;
}

static int load_up(gh_dpart *p, gh_unet *m, const int64_t *skips, int64_t n_skips) {
        const gh_unet_cfg *cfg = &m->cfg;
        int64_t L = cfg->levels, ch = cfg->mc * cfg->mult[L - 1];
        char n[96];

        for (int64_t i = 0; i < L; i++) {
                int64_t lv = L - 1 - i, out = cfg->mc * cfg->mult[lv];
                for (int64_t j = 0; j <= cfg->res; j++) {
                        snprintf(n, sizeof(n), "up_blocks.%lld.resnets.%lld", (long long) i, (long long) j);
                        GH_TRY(gh_resblock_load(p, &m->up[i][j], ch + skips[--n_skips], out, cfg->temb, n));
                        ch = out;
                        if (cfg->attn[lv]) {
                                snprintf(n, sizeof(n), "up_blocks.%lld.attentions.%lld", (long long) i, (long long) j);
                                GH_TRY(transformer_load(p, cfg, &m->up_attn[i][j], ch, n));
                        }
                }
                if (i + 1 < L)
                        GH_TRY(gh_dconv_get(p, &m->upsample[i], ch, ch, 3, "up_blocks.%lld.upsamplers.0.conv", (long long) i));
        }
        return 0;
}

int gh_unet_load(gh_dpart *p, gh_unet *m) {
        int64_t skips[GH_SD_MAX_LEVELS * (GH_SD_MAX_RES + 1) + 1], n_skips = 0, top;
        gh_unet_cfg *cfg = &m->cfg;

        *m = (gh_unet){0};
        GH_TRY(probe_levels(p, cfg));
        if (p->layout == GH_DLAYOUT_ORIGINAL)
                GH_TRY(map_original(p, cfg));
        GH_TRY(probe_sizes(p, cfg));
        top = cfg->mc * cfg->mult[cfg->levels - 1];
        GH_TRY(gh_dconv_get(p, &m->conv_in, cfg->mc, cfg->in_ch, 3, "conv_in"));
        GH_TRY(gh_dlin_get(p, &m->t1, true, cfg->temb, cfg->mc, "time_embedding.linear_1"));
        GH_TRY(gh_dlin_get(p, &m->t2, true, cfg->temb, cfg->temb, "time_embedding.linear_2"));
        GH_TRY(load_down(p, m, skips, &n_skips));
        GH_TRY(gh_resblock_load(p, &m->mid0, top, top, cfg->temb, "mid_block.resnets.0"));
        GH_TRY(transformer_load(p, cfg, &m->mid_attn, top, "mid_block.attentions.0"));
        GH_TRY(gh_resblock_load(p, &m->mid1, top, top, cfg->temb, "mid_block.resnets.1"));
        GH_TRY(load_up(p, m, skips, n_skips));
        GH_TRY(gh_dnorm_get(p, &m->norm_out, cfg->mc, "conv_norm_out"));
        return gh_dconv_get(p, &m->conv_out, cfg->out_ch, cfg->mc, 3, "conv_out");
}

int64_t gh_unet_multiple(const gh_unet *m) {
        return (int64_t) 1 << (m->cfg.levels - 1);
}

/* ---- evaluation ---- */

typedef struct eval {
        gh_dctx *c;
        const gh_unet *m;
        const gh_motion *mm;    /* NULL: pictures */
        const gh_motion_pe *pe; /* with mm */
        const gh_dt *ctx, *temb;
        gh_dt stack[GH_SD_MAX_LEVELS * (GH_SD_MAX_RES + 1) + 1];
        int n;
} eval;

static int check(eval *e) {
        return gh_dctx_cancelled(e->c) ? -ECANCELED : 0;
}

/* cur = motion(cur) where the block has a module. */
static int motion(eval *e, const gh_motion_block *mb, gh_dt *cur) {
        gh_dt y;

        if (!e->mm)
                return 0;
        GH_TRY(gh_motion_eval(e->c, mb, e->pe, cur, &y));
        gh_dt_drop(e->c, cur);
        *cur = y;
        return 0;
}

/* out = motion(attn(res(in))), new; |in| stays. On failure the arena goes
 * with the job, so nothing is given back here. */
static int res_attn(eval *e, const gh_resblock *rb, const gh_transformer *t, bool attn, const gh_motion_block *mb,
                    const gh_dt *in, gh_dt *out) {
        gh_dt r, a;

        GH_TRY(gh_resblock_eval(e->c, rb, RES_EPS, in, e->temb, &r));
        if (attn) {
                GH_TRY(transformer_eval(e->c, t, &r, e->ctx, &a));
                gh_dt_drop(e->c, &r);
                r = a;
        }
        GH_TRY(motion(e, mb, &r));
        *out = r;
        return check(e);
}

static int down(eval *e, gh_dt *cur) {
        const gh_unet_cfg *cfg = &e->m->cfg;
        gh_dt y;

        for (int64_t l = 0; l < cfg->levels; l++) {
                for (int64_t j = 0; j < cfg->res; j++) {
                        GH_TRY(res_attn(e, &e->m->down[l][j], &e->m->down_attn[l][j], cfg->attn[l],
                                        e->mm ? &e->mm->down[l][j] : NULL, cur, &y));
                        *cur = e->stack[e->n++] = y;
                }
                if (l + 1 < cfg->levels) {
                        const int64_t *s = cur->shape;
                        GH_TRY(gh_dt_new(e->c, &y, s[0], s[1], (s[2] + 1) / 2, (s[3] + 1) / 2));
                        GH_TRY(gh_op_conv2d(e->c, cur, &e->m->downsample[l].w, &e->m->downsample[l].b, 2, PAD1, &y));
                        *cur = e->stack[e->n++] = y;
                }
        }
        return 0;
}

static int mid(eval *e, gh_dt *cur) {
        gh_dt a, b;

        GH_TRY(gh_resblock_eval(e->c, &e->m->mid0, RES_EPS, cur, e->temb, &a));
        GH_TRY(transformer_eval(e->c, &e->m->mid_attn, &a, e->ctx, &b));
        gh_dt_drop(e->c, &a);
        if (e->mm && e->mm->has_mid)
                GH_TRY(motion(e, &e->mm->mid, &b));
        GH_TRY(gh_resblock_eval(e->c, &e->m->mid1, RES_EPS, &b, e->temb, &a));
        gh_dt_drop(e->c, &b);
        *cur = a;
        return check(e);
}

/* cur = block(concat(cur, skip)); cur is not on the stack here. */
static int up_block(eval *e, int64_t i, int64_t j, gh_dt *cur) {
        const gh_unet_cfg *cfg = &e->m->cfg;
        gh_dt s = e->stack[--e->n], cat, y;

        GH_TRY(gh_dt_new(e->c, &cat, cur->shape[0], cur->shape[1] + s.shape[1], cur->shape[2], cur->shape[3]));
        GH_TRY(gh_op_concat(e->c, cur, &s, &cat));
        gh_dt_drop(e->c, cur);
        gh_dt_drop(e->c, &s);
        GH_TRY(res_attn(e, &e->m->up[i][j], &e->m->up_attn[i][j], cfg->attn[cfg->levels - 1 - i],
                        e->mm ? &e->mm->up[i][j] : NULL, &cat, &y));
        gh_dt_drop(e->c, &cat);
        *cur = y;
        return 0;
}

static int upsample(eval *e, int64_t i, gh_dt *cur) {
        const int64_t *s = cur->shape;
        gh_dt u, y;

        GH_TRY(gh_dt_new(e->c, &u, s[0], s[1], 2 * s[2], 2 * s[3]));
        GH_TRY(gh_op_upsample2x(e->c, cur, &u));
        gh_dt_drop(e->c, cur);
        GH_TRY(gh_dt_new(e->c, &y, u.shape[0], u.shape[1], u.shape[2], u.shape[3]));
        GH_TRY(gh_op_conv2d(e->c, &u, &e->m->upsample[i].w, &e->m->upsample[i].b, 1, PAD1, &y));
        gh_dt_drop(e->c, &u);
        *cur = y;
        return 0;
}

static int up(eval *e, gh_dt *cur) {
        const gh_unet_cfg *cfg = &e->m->cfg;

        for (int64_t i = 0; i < cfg->levels; i++) {
                for (int64_t j = 0; j <= cfg->res; j++)
                        GH_TRY(up_block(e, i, j, cur));
                if (i + 1 < cfg->levels)
                        GH_TRY(upsample(e, i, cur));
        }
        return 0;
}

/* emb = silu(linear_2(silu(linear_1(timestep_embedding(t))))): every
 * ResBlock takes silu of the embedding, so it is applied once here. */
static int time_embedding(gh_dctx *c, const gh_unet *m, int64_t B, const float *t, gh_dt *ret) {
        gh_dt f, h, y;

        GH_TRY(gh_dt_new_f32(c, &f, B, m->cfg.mc));
        GH_TRY(gh_op_timestep_embedding(c, t, &f));
        GH_TRY(gh_dt_new(c, &h, B, m->cfg.temb));
        GH_TRY(gh_op_linear(c, &f, &m->t1.w, &m->t1.b, &h));
        gh_dt_drop(c, &f);
        GH_TRY(gh_op_act(c, GH_DACT_SILU, &h, &h));
        GH_TRY(gh_dt_new(c, &y, B, m->cfg.temb));
        GH_TRY(gh_op_linear(c, &h, &m->t2.w, &m->t2.b, &y));
        gh_dt_drop(c, &h);
        GH_TRY(gh_op_act(c, GH_DACT_SILU, &y, &y));
        *ret = y;
        return 0;
}

/* Everything after the time embedding; what it allocates, it gives back. */
static int body(eval *e, const gh_dt *x, gh_dt *out) {
        gh_dctx *c = e->c;
        const gh_unet *m = e->m;
        gh_dt cur;

        GH_TRY(gh_dt_new(c, &cur, x->shape[0], m->cfg.mc, x->shape[2], x->shape[3]));
        GH_TRY(gh_op_conv2d(c, x, &m->conv_in.w, &m->conv_in.b, 1, PAD1, &cur));
        e->stack[e->n++] = cur;
        GH_TRY(down(e, &cur));
        GH_TRY(mid(e, &cur));
        GH_TRY(up(e, &cur));
        GH_TRY(gh_op_group_norm(c, &cur, GN_GROUPS, RES_EPS, &m->norm_out.g, &m->norm_out.b, true, &cur));
        GH_TRY(gh_op_conv2d(c, &cur, &m->conv_out.w, &m->conv_out.b, 1, PAD1, out));
        gh_dt_drop(c, &cur);
        return 0;
}

/* What a recording of body() depends on: the model, the tensors' places
 * and shapes, and where the arena will put the temporaries. */
static uint64_t body_key(const eval *e, const gh_dt *x, const gh_dt *out) {
        const gh_dt *ts[] = {x, out, e->ctx, e->temb};
        uint64_t h = gh_hash_mix(gh_arena_layout(e->c->arena), (uint64_t) (uintptr_t) e->m);

        h = gh_hash_mix(h, (uint64_t) e->c->act);
        h = gh_hash_mix(h, (uint64_t) (uintptr_t) e->mm);
        for (int64_t i = 0; e->mm && i < e->pe->n; i++)
                h = gh_hash_mix(gh_hash_mix(h, (uint64_t) (uintptr_t) e->pe->pe[i].data), (uint64_t) e->pe->frames);

        for (size_t i = 0; i < sizeof(ts) / sizeof(ts[0]); i++) {
                h = gh_hash_mix(h, (uint64_t) (uintptr_t) ts[i]->data);
                for (uint32_t d = 0; d < ts[i]->n_dims; d++)
                        h = gh_hash_mix(h, (uint64_t) ts[i]->shape[d]);
        }
        return h;
}

/* body() recorded once per key where the backend records (CUDA graphs:
 * one launch instead of hundreds), then replayed; plainly otherwise. */
static int body_graphed(eval *e, const gh_dt *x, gh_dt *out) {
        gh_dctx *c = e->c;
        uint64_t key;
        int r;

        if (c->dry || !c->be->graph_run)
                return body(e, x, out);
        key = body_key(e, x, out);
        r = c->be->graph_run(c->be_state, key);
        if (r != -ENOENT)
                return r < 0 ? gh_dctx_fail(c, r, "UNet graph launch: %s", strerror(-r)) : 0;
        r = c->be->graph_begin(c->be_state);
        if (r == -EOPNOTSUPP)
                return body(e, x, out);
        if (r < 0)
                return gh_dctx_fail(c, r, "UNet graph recording: %s", strerror(-r));
        r = c->be->graph_end(c->be_state, key, body(e, x, out));
        if (r < 0)
                return c->err[0] ? r : gh_dctx_fail(c, r, "UNet graph recording: %s", strerror(-r));
        r = c->be->graph_run(c->be_state, key);
        return r < 0 ? gh_dctx_fail(c, r, "UNet graph launch: %s", strerror(-r)) : 0;
}

static int unet_eval(eval *e, const gh_dt *x, const float *t, gh_dt *out) {
        gh_dctx *c = e->c;
        const gh_unet_cfg *cfg = &e->m->cfg;
        const int64_t *s = x->shape;
        int64_t mult = gh_unet_multiple(e->m);
        gh_dt temb;

        if (x->n_dims != 4 || s[1] != cfg->in_ch || s[2] % mult || s[3] % mult)
                return gh_dctx_fail(c, -EINVAL, "UNet input must be [B,%lld,H,W] with H and W multiples of %lld",
                                    (long long) cfg->in_ch, (long long) mult);
        if (e->ctx->n_dims != 3 || e->ctx->shape[0] != s[0] || e->ctx->shape[2] != cfg->ctx)
                return gh_dctx_fail(c, -EINVAL, "UNet context must be [%lld,T,%lld]", (long long) s[0],
                                    (long long) cfg->ctx);
        if (e->mm && (!e->pe || e->pe->frames < 1 || s[0] % e->pe->frames))
                return gh_dctx_fail(c, -EINVAL, "UNet with motion modules: a batch of %lld is not whole videos",
                                    (long long) s[0]);
        GH_TRY(time_embedding(c, e->m, s[0], t, &temb));
        e->temb = &temb;
        GH_TRY(body_graphed(e, x, out));
        gh_dt_drop(c, &temb);
        return 0;
}

/* Everything inside in F16 where the context allows it (its input and
 * output stay as the caller made them). */
static int unet_eval_act(eval *e, const gh_dt *x, const float *t, gh_dt *out) {
        const gh_dtype_id saved = e->c->act;
        int r;

        e->c->act = e->c->half ? GH_TENSOR_F16 : GH_TENSOR_F32;
        r = unet_eval(e, x, t, out);
        e->c->act = saved;
        return r;
}

int gh_unet_eval(gh_dctx *c, const gh_unet *m, const gh_dt *x, const float *t, const gh_dt *ctx, gh_dt *out) {
        eval e = {.c = c, .m = m, .ctx = ctx};

        return unet_eval_act(&e, x, t, out);
}

int gh_unet_eval_video(gh_dctx *c, const gh_unet *m, const gh_motion *mm, const gh_motion_pe *pe, const gh_dt *x,
                       const float *t, const gh_dt *ctx, gh_dt *out) {
        eval e = {.c = c, .m = m, .mm = mm, .pe = pe, .ctx = ctx};

        return unet_eval_act(&e, x, t, out);
}

/* The SD 1.x VAE (LDM autoencoder; diffusers AutoencoderKL names): the
 * encoder (res blocks, downsampling padded right and bottom only, a
 * mid-block with one-head attention, the moments through quant_conv, of
 * which the mean is the latent) and the decoder (post_quant_conv, mid-block,
 * res blocks + 1 per level, nearest upsampling). Latents are scaled by
 * 0.18215 outside the model. */
#include <errno.h>
#include <stdio.h>

#include "names.h"
#include "sd.h"

#define GN_GROUPS 32
#define EPS 1e-6f

static const int PAD1[4] = {1, 1, 1, 1}, PAD0[4] = {0, 0, 0, 0}, PAD_DOWN[4] = {0, 1, 0, 1};

/* ---- the original layout's map ---- */

static int map_half(gh_dpart *p, const char *half, int64_t L, int64_t R, bool dec) {
        char a[96], b[96];

        snprintf(a, sizeof(a), "%s.mid_block.resnets.0", half);
        snprintf(b, sizeof(b), "%s.mid.block_1", half);
        GH_TRY(gh_dpart_map_add(p, a, b, GH_DNAMES_VAE_RESNET));
        snprintf(a, sizeof(a), "%s.mid_block.resnets.1", half);
        snprintf(b, sizeof(b), "%s.mid.block_2", half);
        GH_TRY(gh_dpart_map_add(p, a, b, GH_DNAMES_VAE_RESNET));
        snprintf(a, sizeof(a), "%s.mid_block.attentions.0", half);
        snprintf(b, sizeof(b), "%s.mid.attn_1", half);
        GH_TRY(gh_dpart_map_add(p, a, b, GH_DNAMES_VAE_ATTENTION));
        snprintf(a, sizeof(a), "%s.conv_norm_out", half);
        snprintf(b, sizeof(b), "%s.norm_out", half);
        GH_TRY(gh_dpart_map_add(p, a, b, GH_DNAMES_SAME));
        for (int64_t i = 0; i < L; i++) {
                /* diffusers numbers the decoder's levels from the deepest */
                int64_t lv = dec ? L - 1 - i : i;
                for (int64_t j = 0; j < R + (dec ? 1 : 0); j++) {
                        snprintf(a, sizeof(a), "%s.%s_blocks.%lld.resnets.%lld", half, dec ? "up" : "down", (long long) i,
                                 (long long) j);
                        snprintf(b, sizeof(b), "%s.%s.%lld.block.%lld", half, dec ? "up" : "down", (long long) lv,
                                 (long long) j);
                        GH_TRY(gh_dpart_map_add(p, a, b, GH_DNAMES_VAE_RESNET));
                }
                snprintf(a, sizeof(a), "%s.%s_blocks.%lld.%s.0.conv", half, dec ? "up" : "down", (long long) i,
                         dec ? "upsamplers" : "downsamplers");
                snprintf(b, sizeof(b), "%s.%s.%lld.%s.conv", half, dec ? "up" : "down", (long long) lv,
                         dec ? "upsample" : "downsample");
                GH_TRY(gh_dpart_map_add(p, a, b, GH_DNAMES_SAME));
        }
        return 0;
}

/* Whether decoder level |i| (diffusers numbering when so laid out) has res
 * block |j|. */
static bool has_dec_res(gh_dpart *p, int64_t i, int64_t j) {
        if (p->layout == GH_DLAYOUT_DIFFUSERS)
                return gh_dpart_has_file(p, "decoder.up_blocks.%lld.resnets.%lld.conv1.weight", (long long) i, (long long) j);
        return gh_dpart_has_file(p, "decoder.up.%lld.block.%lld.conv1.weight", (long long) i, (long long) j);
}

static int probe(gh_dpart *p, gh_vae *m) {
        int64_t dres = 0;

        while (m->levels <= GH_SD_MAX_LEVELS && has_dec_res(p, m->levels, 0))
                m->levels++;
        while (dres <= GH_SD_MAX_RES + 1 && has_dec_res(p, 0, dres))
                dres++;
        m->res = dres - 1;
        if (m->levels < 1 || m->levels > GH_SD_MAX_LEVELS || m->res < 1 || m->res > GH_SD_MAX_RES)
                return snprintf(p->err, sizeof(p->err),
                                "the VAE decoder's blocks do not form 1..%d levels of 2..%d res blocks",
                                GH_SD_MAX_LEVELS, GH_SD_MAX_RES + 1),
                       -EINVAL;
        if (p->layout == GH_DLAYOUT_ORIGINAL) {
                GH_TRY(map_half(p, "encoder", m->levels, m->res, false));
                GH_TRY(map_half(p, "decoder", m->levels, m->res, true));
        }
        return 0;
}

/* ---- loading ---- */

static int attn_load(gh_dpart *p, gh_vae_attn *a, int64_t ch, const char *half) {
        GH_TRY(gh_dnorm_get(p, &a->norm, ch, "%s.mid_block.attentions.0.group_norm", half));
        GH_TRY(gh_dlin_get(p, &a->q, true, ch, ch, "%s.mid_block.attentions.0.to_q", half));
        GH_TRY(gh_dlin_get(p, &a->k, true, ch, ch, "%s.mid_block.attentions.0.to_k", half));
        GH_TRY(gh_dlin_get(p, &a->v, true, ch, ch, "%s.mid_block.attentions.0.to_v", half));
        return gh_dlin_get(p, &a->o, true, ch, ch, "%s.mid_block.attentions.0.to_out.0", half);
}

static int mid_load(gh_dpart *p, gh_vae_half *h, int64_t ch, const char *half) {
        char n[64];

        snprintf(n, sizeof(n), "%s.mid_block.resnets.0", half);
        GH_TRY(gh_resblock_load(p, &h->mid0, ch, ch, 0, n));
        GH_TRY(attn_load(p, &h->attn, ch, half));
        snprintf(n, sizeof(n), "%s.mid_block.resnets.1", half);
        return gh_resblock_load(p, &h->mid1, ch, ch, 0, n);
}

static int encoder_load(gh_dpart *p, gh_vae *m) {
        gh_vae_half *h = &m->enc;
        int64_t ch = m->ch;
        char n[96];

        GH_TRY(gh_dconv_get(p, &h->conv_in, m->ch, 3, 3, "encoder.conv_in"));
        for (int64_t l = 0; l < m->levels; l++) {
                for (int64_t j = 0; j < m->res; j++) {
                        snprintf(n, sizeof(n), "encoder.down_blocks.%lld.resnets.%lld", (long long) l, (long long) j);
                        GH_TRY(gh_resblock_load(p, &h->res[l][j], ch, m->ch * m->mult[l], 0, n));
                        ch = m->ch * m->mult[l];
                }
                if (l + 1 < m->levels)
                        GH_TRY(gh_dconv_get(p, &h->resample[l], ch, ch, 3, "encoder.down_blocks.%lld.downsamplers.0.conv", (long long) l));
        }
        GH_TRY(mid_load(p, h, ch, "encoder"));
        GH_TRY(gh_dnorm_get(p, &h->norm_out, ch, "encoder.conv_norm_out"));
        GH_TRY(gh_dconv_get(p, &h->conv_out, 2 * m->z, ch, 3, "encoder.conv_out"));
        return gh_dconv_get(p, &m->quant, 2 * m->z, 2 * m->z, 1, "quant_conv");
}

static int decoder_load(gh_dpart *p, gh_vae *m) {
        gh_vae_half *h = &m->dec;
        int64_t ch = m->ch * m->mult[m->levels - 1];
        char n[96];

        GH_TRY(gh_dconv_get(p, &m->post_quant, m->z, m->z, 1, "post_quant_conv"));
        GH_TRY(gh_dconv_get(p, &h->conv_in, ch, m->z, 3, "decoder.conv_in"));
        GH_TRY(mid_load(p, h, ch, "decoder"));
        for (int64_t i = 0; i < m->levels; i++) {
                int64_t out = m->ch * m->mult[m->levels - 1 - i];
                for (int64_t j = 0; j <= m->res; j++) {
                        snprintf(n, sizeof(n), "decoder.up_blocks.%lld.resnets.%lld", (long long) i, (long long) j);
                        GH_TRY(gh_resblock_load(p, &h->res[i][j], ch, out, 0, n));
                        ch = out;
                }
                if (i + 1 < m->levels)
                        GH_TRY(gh_dconv_get(p, &h->resample[i], ch, ch, 3, "decoder.up_blocks.%lld.upsamplers.0.conv", (long long) i));
        }
        GH_TRY(gh_dnorm_get(p, &h->norm_out, ch, "decoder.conv_norm_out"));
        return gh_dconv_get(p, &h->conv_out, 3, ch, 3, "decoder.conv_out");
}

int gh_vae_load(gh_dpart *p, gh_vae *m) {
        gh_tensor t;

        *m = (gh_vae){0};
        GH_TRY(probe(p, m));
        GH_TRY(gh_dpart_shape(p, &t, "decoder.conv_out.weight"));
        if (t.n_dims != 4)
                return snprintf(p->err, sizeof(p->err), "the VAE's decoder.conv_out is not a convolution"), -EINVAL;
        m->ch = (int64_t) t.shape[1];
        GH_TRY(gh_dpart_shape(p, &t, "post_quant_conv.weight"));
        m->z = (int64_t) t.shape[0];
        for (int64_t i = 0; i < m->levels; i++) {
                GH_TRY(gh_dpart_shape(p, &t, "decoder.up_blocks.%lld.resnets.0.conv1.weight", (long long) i));
                if (m->ch <= 0 || (int64_t) t.shape[0] % m->ch)
                        return snprintf(p->err, sizeof(p->err), "the VAE's level widths are not multiples of %lld",
                                        (long long) m->ch),
                               -EINVAL;
                m->mult[m->levels - 1 - i] = (int64_t) t.shape[0] / m->ch;
        }
        GH_TRY(decoder_load(p, m));
        m->has_encoder = gh_dpart_has(p, "encoder.conv_in.weight");
        return m->has_encoder ? encoder_load(p, m) : 0;
}

int64_t gh_vae_factor(const gh_vae *m) {
        return (int64_t) 1 << (m->levels - 1);
}

bool gh_vae_decode_fp16_ok(const gh_vae *m) {
        return m->dec.conv_in.w.dtype != GH_TENSOR_BF16;
}

/* ---- evaluation ---- */

static int attn_eval(gh_dctx *c, const gh_vae_attn *a, gh_dt *x) {
        const int64_t *s = x->shape;
        int64_t B = s[0], C = s[1], L = s[2] * s[3];
        gh_dt n, h, q, k, v, y;

        GH_TRY(gh_dt_new(c, &n, B, C, s[2], s[3]));
        GH_TRY(gh_op_group_norm(c, x, GN_GROUPS, EPS, &a->norm.g, &a->norm.b, false, &n));
        GH_TRY(gh_dt_new(c, &h, B, L, C));
        GH_TRY(gh_op_nchw_to_nlc(c, &n, &h));
        gh_dt_drop(c, &n);
        GH_TRY(gh_dt_new(c, &q, B, L, C));
        GH_TRY(gh_op_linear(c, &h, &a->q.w, &a->q.b, &q));
        GH_TRY(gh_dt_new(c, &k, B, L, C));
        GH_TRY(gh_op_linear(c, &h, &a->k.w, &a->k.b, &k));
        GH_TRY(gh_dt_new(c, &v, B, L, C));
        GH_TRY(gh_op_linear(c, &h, &a->v.w, &a->v.b, &v));
        GH_TRY(gh_op_attention(c, &q, &k, &v, 1, false, &h));
        gh_dt_drop(c, &v);
        gh_dt_drop(c, &k);
        GH_TRY(gh_op_linear(c, &h, &a->o.w, &a->o.b, &q));
        gh_dt_drop(c, &h);
        GH_TRY(gh_dt_new(c, &y, B, C, s[2], s[3]));
        GH_TRY(gh_op_nlc_to_nchw(c, &q, &y));
        gh_dt_drop(c, &q);
        GH_TRY(gh_op_add(c, x, &y, x));
        gh_dt_drop(c, &y);
        return 0;
}

/* cur = res(cur), the old one given back. */
static int res_step(gh_dctx *c, const gh_resblock *rb, gh_dt *cur) {
        gh_dt y;

        GH_TRY(gh_resblock_eval(c, rb, EPS, cur, NULL, &y));
        gh_dt_drop(c, cur);
        *cur = y;
        return gh_dctx_cancelled(c) ? -ECANCELED : 0;
}

static int mid_eval(gh_dctx *c, const gh_vae_half *h, gh_dt *cur) {
        GH_TRY(res_step(c, &h->mid0, cur));
        GH_TRY(attn_eval(c, &h->attn, cur));
        return res_step(c, &h->mid1, cur);
}

static int conv_step(gh_dctx *c, const gh_dlin *w, int stride, const int pad[4], int64_t out_ch, gh_dt *cur) {
        const int64_t *s = cur->shape;
        int64_t kh = w->w.shape[2], ho = (s[2] + pad[0] + pad[1] - kh) / stride + 1,
                wo = (s[3] + pad[2] + pad[3] - kh) / stride + 1;
        gh_dt y;

        GH_TRY(gh_dt_new(c, &y, s[0], out_ch, ho, wo));
        GH_TRY(gh_op_conv2d(c, cur, &w->w, &w->b, stride, pad, &y));
        gh_dt_drop(c, cur);
        *cur = y;
        return 0;
}

int gh_vae_decode(gh_dctx *c, const gh_vae *m, const gh_dt *latent, gh_dt *image) {
        const gh_vae_half *h = &m->dec;
        int64_t f = gh_vae_factor(m);
        gh_dt cur;

        if (latent->n_dims != 4 || latent->shape[1] != m->z || image->n_dims != 4 || image->shape[1] != 3 ||
            image->shape[2] != latent->shape[2] * f || image->shape[3] != latent->shape[3] * f)
                return gh_dctx_fail(c, -EINVAL, "VAE decode: latent [B,%lld,h,w] to image [B,3,%lldh,%lldw] expected",
                                    (long long) m->z, (long long) f, (long long) f);
        GH_TRY(gh_dt_new(c, &cur, latent->shape[0], m->z, latent->shape[2], latent->shape[3]));
        GH_TRY(gh_op_lincomb(c, 1, (const float[]){1.0f / GH_SD_LATENT_SCALE}, (const gh_dt *const[]){latent}, &cur));
        GH_TRY(conv_step(c, &m->post_quant, 1, PAD0, m->z, &cur));
        GH_TRY(conv_step(c, &h->conv_in, 1, PAD1, h->conv_in.w.shape[0], &cur));
        GH_TRY(mid_eval(c, h, &cur));
        for (int64_t i = 0; i < m->levels; i++) {
                for (int64_t j = 0; j <= m->res; j++)
                        GH_TRY(res_step(c, &h->res[i][j], &cur));
                if (i + 1 < m->levels) {
                        const int64_t *s = cur.shape;
                        gh_dt u;
                        GH_TRY(gh_dt_new(c, &u, s[0], s[1], 2 * s[2], 2 * s[3]));
                        GH_TRY(gh_op_upsample2x(c, &cur, &u));
                        gh_dt_drop(c, &cur);
                        cur = u;
                        GH_TRY(conv_step(c, &h->resample[i], 1, PAD1, s[1], &cur));
                }
        }
        GH_TRY(gh_op_group_norm(c, &cur, GN_GROUPS, EPS, &h->norm_out.g, &h->norm_out.b, true, &cur));
        GH_TRY(gh_op_conv2d(c, &cur, &h->conv_out.w, &h->conv_out.b, 1, PAD1, image));
        gh_dt_drop(c, &cur);
        return 0;
}

int gh_vae_encode(gh_dctx *c, const gh_vae *m, const gh_dt *image, gh_dt *latent) {
        const gh_vae_half *h = &m->enc;
        int64_t f = gh_vae_factor(m), B = image->shape[0];
        gh_dt cur;

        if (!m->has_encoder)
                return gh_dctx_fail(c, -ENOENT, "the checkpoint's VAE has no encoder");
        if (image->n_dims != 4 || image->shape[1] != 3 || image->shape[2] % f || image->shape[3] % f ||
            latent->n_dims != 4 || latent->shape[0] != B || latent->shape[1] != m->z ||
            latent->shape[2] * f != image->shape[2] || latent->shape[3] * f != image->shape[3])
                return gh_dctx_fail(c, -EINVAL, "VAE encode: image [B,3,H,W] (multiples of %lld) to latent [B,%lld,H/%lld,W/%lld] expected",
                                    (long long) f, (long long) m->z, (long long) f, (long long) f);
        GH_TRY(gh_dt_new(c, &cur, B, m->ch, image->shape[2], image->shape[3]));
        GH_TRY(gh_op_conv2d(c, image, &h->conv_in.w, &h->conv_in.b, 1, PAD1, &cur));
        for (int64_t l = 0; l < m->levels; l++) {
                for (int64_t j = 0; j < m->res; j++)
                        GH_TRY(res_step(c, &h->res[l][j], &cur));
                if (l + 1 < m->levels)
                        GH_TRY(conv_step(c, &h->resample[l], 2, PAD_DOWN, cur.shape[1], &cur));
        }
        GH_TRY(mid_eval(c, h, &cur));
        GH_TRY(gh_op_group_norm(c, &cur, GN_GROUPS, EPS, &h->norm_out.g, &h->norm_out.b, true, &cur));
        GH_TRY(conv_step(c, &h->conv_out, 1, PAD1, 2 * m->z, &cur));
        GH_TRY(conv_step(c, &m->quant, 1, PAD0, 2 * m->z, &cur));
        /* The mean: the first z channels of each item's moments. */
        for (int64_t b = 0; b < B; b++) {
                gh_dt item = gh_dt_slice0(&cur, b, 1), mean, out = gh_dt_slice0(latent, b, 1);
                GH_TRY(gh_dt_reshape(c, &item, &mean, 2, (int64_t[]){2, gh_dt_numel(&out)}));
                mean = gh_dt_slice0(&mean, 0, 1);
                GH_TRY(gh_dt_reshape(c, &mean, &mean, 4, out.shape));
                GH_TRY(gh_op_lincomb(c, 1, (const float[]){GH_SD_LATENT_SCALE}, (const gh_dt *const[]){&mean}, &out));
        }
        gh_dt_drop(c, &cur);
        return 0;
}

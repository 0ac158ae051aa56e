/* The CLIP ViT-L/14 text encoder of SD 1.x (HF CLIPTextModel names):
 * token and position embeddings, pre-LayerNorm transformer layers with a
 * causal mask and quick-GELU, and the final LayerNorm. Sizes come from the
 * shapes; heads = width / 64. Clip skip takes an earlier layer's output
 * (A1111's convention: 1 = the last layer) through the final LayerNorm. */
#include <errno.h>
#include <stdio.h>
#include <stdlib.h>

#include "sd.h"

#define LN_EPS 1e-5f

static int layer_load(gh_dpart *p, gh_clip_layer *l, int64_t w, int64_t mlp, int64_t i) {
        char b[64];

        snprintf(b, sizeof(b), "text_model.encoder.layers.%lld", (long long) i);
        GH_TRY(gh_dnorm_get(p, &l->ln1, w, "%s.layer_norm1", b));
        GH_TRY(gh_dnorm_get(p, &l->ln2, w, "%s.layer_norm2", b));
        GH_TRY(gh_dlin_get(p, &l->q, true, w, w, "%s.self_attn.q_proj", b));
        GH_TRY(gh_dlin_get(p, &l->k, true, w, w, "%s.self_attn.k_proj", b));
        GH_TRY(gh_dlin_get(p, &l->v, true, w, w, "%s.self_attn.v_proj", b));
        GH_TRY(gh_dlin_get(p, &l->o, true, w, w, "%s.self_attn.out_proj", b));
        GH_TRY(gh_dlin_get(p, &l->fc1, true, mlp, w, "%s.mlp.fc1", b));
        GH_TRY(gh_dlin_get(p, &l->fc2, true, w, mlp, "%s.mlp.fc2", b));
        return 0;
}

int gh_clip_load(gh_dpart *p, gh_clip *m) {
        gh_tensor t;

        *m = (gh_clip){0};
        GH_TRY(gh_dpart_shape(p, &t, "text_model.embeddings.token_embedding.weight"));
        if (t.n_dims != 2 || t.shape[1] % 64 || t.shape[1] == 0 || t.shape[0] == 0)
                return snprintf(p->err, sizeof(p->err), "the text encoder's token embedding is not [vocab, 64k]"),
                       -EINVAL;
        m->vocab = (int64_t) t.shape[0];
        m->width = (int64_t) t.shape[1];
        m->heads = m->width / 64;
        GH_TRY(gh_dpart_shape(p, &t, "text_model.embeddings.position_embedding.weight"));
        m->positions = (int64_t) t.shape[0];
        GH_TRY(gh_dpart_shape(p, &t, "text_model.encoder.layers.0.mlp.fc1.weight"));
        m->mlp = (int64_t) t.shape[0];
        while (m->layers < 256 && gh_dpart_has(p, "text_model.encoder.layers.%lld.mlp.fc1.weight", (long long) m->layers))
                m->layers++;
        GH_TRY(gh_dpart_w(p, &m->tokens, "text_model.embeddings.token_embedding.weight", m->vocab, m->width));
        GH_TRY(gh_dpart_w(p, &m->pos, "text_model.embeddings.position_embedding.weight", m->positions, m->width));
        m->l = calloc((size_t) m->layers, sizeof(*m->l));
        if (!m->l)
                return -ENOMEM;
        for (int64_t i = 0; i < m->layers; i++)
                GH_TRY(layer_load(p, &m->l[i], m->width, m->mlp, i));
        return gh_dnorm_get(p, &m->final, m->width, "text_model.final_layer_norm");
}

void gh_clip_unload(gh_clip *m) {
        free(m->l);
        m->l = NULL;
}

static int attention(gh_dctx *c, const gh_clip *m, const gh_clip_layer *l, gh_dt *x) {
        const int64_t *s = x->shape;
        gh_dt h = {0}, q = {0}, k = {0}, v = {0}, a = {0};
        int r;

        if ((r = gh_dt_new(c, &h, s[0], s[1], s[2])) < 0 || (r = gh_op_layer_norm(c, x, &l->ln1.g, &l->ln1.b, LN_EPS, &h)) < 0 ||
            (r = gh_dt_new(c, &q, s[0], s[1], s[2])) < 0 || (r = gh_op_linear(c, &h, &l->q.w, &l->q.b, &q)) < 0 ||
            (r = gh_dt_new(c, &k, s[0], s[1], s[2])) < 0 || (r = gh_op_linear(c, &h, &l->k.w, &l->k.b, &k)) < 0 ||
            (r = gh_dt_new(c, &v, s[0], s[1], s[2])) < 0 || (r = gh_op_linear(c, &h, &l->v.w, &l->v.b, &v)) < 0)
                goto out;
        gh_dt_drop(c, &h);
        if ((r = gh_dt_new(c, &a, s[0], s[1], s[2])) < 0 ||
            (r = gh_op_attention(c, &q, &k, &v, (int) m->heads, true, &a)) < 0)
                goto out;
        gh_dt_drop(c, &q);
        gh_dt_drop(c, &k);
        gh_dt_drop(c, &v);
        if ((r = gh_dt_new(c, &h, s[0], s[1], s[2])) < 0 || (r = gh_op_linear(c, &a, &l->o.w, &l->o.b, &h)) < 0)
                goto out;
        r = gh_op_add(c, x, &h, x);
out:
        gh_dt_drop(c, &a);
        gh_dt_drop(c, &v);
        gh_dt_drop(c, &k);
        gh_dt_drop(c, &q);
        gh_dt_drop(c, &h);
        return r;
}

static int mlp(gh_dctx *c, const gh_clip *m, const gh_clip_layer *l, gh_dt *x) {
        const int64_t *s = x->shape;
        gh_dt h = {0}, f = {0}, o = {0};
        int r;

        if ((r = gh_dt_new(c, &h, s[0], s[1], s[2])) < 0 || (r = gh_op_layer_norm(c, x, &l->ln2.g, &l->ln2.b, LN_EPS, &h)) < 0 ||
            (r = gh_dt_new(c, &f, s[0], s[1], m->mlp)) < 0 || (r = gh_op_linear(c, &h, &l->fc1.w, &l->fc1.b, &f)) < 0 ||
            (r = gh_op_act(c, GH_DACT_QUICK_GELU, &f, &f)) < 0)
                goto out;
        gh_dt_drop(c, &h);
        if ((r = gh_dt_new(c, &o, s[0], s[1], s[2])) < 0 || (r = gh_op_linear(c, &f, &l->fc2.w, &l->fc2.b, &o)) < 0)
                goto out;
        r = gh_op_add(c, x, &o, x);
out:
        gh_dt_drop(c, &o);
        gh_dt_drop(c, &f);
        gh_dt_drop(c, &h);
        return r;
}

int gh_clip_encode(gh_dctx *c, const gh_clip *m, const int32_t *ids, int64_t n, int clip_skip, gh_dt *out) {
        int64_t len = m->positions, last;
        gh_dt x = {0}, x2;
        int r;

        if (clip_skip < 1 || clip_skip > m->layers)
                return gh_dctx_fail(c, -EINVAL, "clip skip %d outside 1..%lld", clip_skip, (long long) m->layers);
        last = m->layers - (clip_skip - 1);
        if ((r = gh_dt_new(c, &x, n * len, m->width)) < 0 ||
            (r = gh_op_embedding(c, ids, &m->tokens, &m->pos, &x)) < 0 ||
            (r = gh_dt_reshape(c, &x, &x2, 3, (int64_t[]){n, len, m->width})) < 0)
                goto out;
        for (int64_t i = 0; i < last; i++) {
                if ((r = attention(c, m, &m->l[i], &x2)) < 0 || (r = mlp(c, m, &m->l[i], &x2)) < 0)
                        goto out;
                if (gh_dctx_cancelled(c)) {
                        r = -ECANCELED;
                        goto out;
                }
        }
        r = gh_op_layer_norm(c, &x2, &m->final.g, &m->final.b, LN_EPS, out);
out:
        gh_dt_drop(c, &x);
        return r;
}

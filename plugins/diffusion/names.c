/* Checkpoint naming: the two layouts of an SD 1.x checkpoint, by table.
 *
 * The runtime names tensors as the diffusers layout does, without the
 * folder ("down_blocks.0.resnets.1.conv1.weight"). A part in the diffusers
 * layout is read with its folder as prefix ("unet/"); a part in the
 * original single-file layout ("model.diffusion_model.") goes through a map
 * of block prefixes ("down_blocks.0.resnets.1" -> "input_blocks.2.0"),
 * built by the part's loader from the sizes it probed, each entry naming a
 * table of the member renames inside such a block ("conv1" ->
 * "in_layers.2"). The tables are below; nothing else rewrites names. */
#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "names.h"
#include "runtime.h"

typedef struct name_pair {
        const char *canon, *file;
} name_pair;

static const name_pair unet_resnet[] = {
        {"norm1", "in_layers.0"},         {"conv1", "in_layers.2"},  {"time_emb_proj", "emb_layers.1"},
        {"norm2", "out_layers.0"},        {"conv2", "out_layers.3"}, {"conv_shortcut", "skip_connection"},
        {NULL, NULL},
};
static const name_pair vae_resnet[] = {
        {"conv_shortcut", "nin_shortcut"},
        {NULL, NULL},
};
static const name_pair vae_attention[] = {
        {"group_norm", "norm"}, {"to_q", "q"}, {"to_k", "k"}, {"to_v", "v"}, {"to_out.0", "proj_out"}, {NULL, NULL},
};

/* AnimateDiff's own names ("mm_sd_v15_v2" checkpoints) inside
 * "temporal_transformer" of a module, for the diffusers MotionAdapter's. */
static const name_pair motion[] = {
        {"transformer_blocks.0.attn1", "transformer_blocks.0.attention_blocks.0"},
        {"transformer_blocks.0.attn2", "transformer_blocks.0.attention_blocks.1"},
        {"transformer_blocks.0.norm1", "transformer_blocks.0.norms.0"},
        {"transformer_blocks.0.norm2", "transformer_blocks.0.norms.1"},
        {"transformer_blocks.0.norm3", "transformer_blocks.0.ff_norm"},
        {NULL, NULL},
};

static const name_pair *const suffix_tables[] = {
        [GH_DNAMES_SAME] = NULL,
        [GH_DNAMES_UNET_RESNET] = unet_resnet,
        [GH_DNAMES_VAE_RESNET] = vae_resnet,
        [GH_DNAMES_VAE_ATTENTION] = vae_attention,
        [GH_DNAMES_MOTION] = motion,
};

typedef struct layout {
        const char *prefix, *anchor; /* anchor: a tensor every checkpoint of the layout has */
} layout;

static const layout layouts[][2] = {
        [GH_DPART_CLIP] = {{"cond_stage_model.transformer.", "text_model.embeddings.token_embedding.weight"},
                           {"text_encoder/", "text_model.embeddings.token_embedding.weight"}},
        [GH_DPART_UNET] = {{"model.diffusion_model.", "input_blocks.0.0.weight"}, {"unet/", "conv_in.weight"}},
        [GH_DPART_VAE] = {{"first_stage_model.", "decoder.conv_in.weight"}, {"vae/", "decoder.conv_in.weight"}},
        [GH_DPART_MOTION] = {{"", "down_blocks.0.motion_modules.0.temporal_transformer.proj_in.weight"},
                             {"", "down_blocks.0.motion_modules.0.proj_in.weight"}},
};

static const char *const part_names[] = {
        [GH_DPART_CLIP] = "text encoder",
        [GH_DPART_UNET] = "UNet",
        [GH_DPART_VAE] = "VAE",
        [GH_DPART_MOTION] = "motion module",
};

static int lookup(gh_dpart *p, const char *file_name, gh_tensor *ret) {
        char full[512];

        if ((size_t) snprintf(full, sizeof(full), "%s%s", p->prefix, file_name) >= sizeof(full))
                return -ENAMETOOLONG;
        return p->src->lookup(p->src->ctx, full, ret);
}

int gh_dpart_open(gh_dpart *p, gh_dpart_kind kind, const gh_dsource *src) {
        gh_tensor t;

        *p = (gh_dpart){.kind = kind, .src = src};
        for (int l = GH_DLAYOUT_DIFFUSERS; l >= GH_DLAYOUT_ORIGINAL; l--) {
                p->prefix = layouts[kind][l].prefix;
                if (lookup(p, layouts[kind][l].anchor, &t) == 0) {
                        p->layout = (gh_dlayout) l;
                        return 0;
                }
        }
        snprintf(p->err, sizeof(p->err), "the checkpoint has no %s: neither %s%s nor %s%s", part_names[kind],
                 layouts[kind][0].prefix, layouts[kind][0].anchor, layouts[kind][1].prefix,
                 layouts[kind][1].anchor);
        return -ENOENT;
}

void gh_dpart_close(gh_dpart *p) {
        for (size_t i = 0; i < p->n_map; i++) {
                free(p->map[i].canon);
                free(p->map[i].file);
        }
        free(p->map);
        p->map = NULL;
        p->n_map = 0;
}

int gh_dpart_map_add(gh_dpart *p, const char *canon, const char *file, int suffixes) {
        gh_dmap_entry *m = realloc(p->map, (p->n_map + 1) * sizeof(*m));

        if (!m)
                return -ENOMEM;
        p->map = m;
        m[p->n_map] = (gh_dmap_entry){strdup(canon), strdup(file), suffixes};
        if (!m[p->n_map].canon || !m[p->n_map].file) {
                free(m[p->n_map].canon);
                free(m[p->n_map].file);
                return -ENOMEM;
        }
        p->n_map++;
        return 0;
}

/* "a.b" is a prefix of "a.b.c" and of "a.b", not of "a.bc". */
static size_t component_prefix(const char *prefix, const char *name) {
        size_t n = strlen(prefix);

        return strncmp(prefix, name, n) == 0 && (name[n] == '.' || name[n] == 0) ? n : 0;
}

int gh_dpart_file_name(gh_dpart *p, const char *canon, char *buf, size_t size) {
        const gh_dmap_entry *best = NULL;
        size_t best_n = 0, n;
        const char *rest;

        for (size_t i = 0; i < p->n_map; i++)
                if ((n = component_prefix(p->map[i].canon, canon)) > best_n) {
                        best = &p->map[i];
                        best_n = n;
                }
        if (!best) {
                n = (size_t) snprintf(buf, size, "%s", canon);
                return n < size ? 0 : -ENAMETOOLONG;
        }
        rest = canon + best_n; /* "" or ".member..." */
        if (*rest && suffix_tables[best->suffixes])
                for (const name_pair *r = suffix_tables[best->suffixes]; r->canon; r++) {
                        size_t k = component_prefix(r->canon, rest + 1);
                        if (k) {
                                n = (size_t) snprintf(buf, size, "%s.%s%s", best->file, r->file, rest + 1 + k);
                                return n < size ? 0 : -ENAMETOOLONG;
                        }
                }
        n = (size_t) snprintf(buf, size, "%s%s", best->file, rest);
        return n < size ? 0 : -ENAMETOOLONG;
}

__attribute__((format(printf, 3, 0))) static int vformat(char *buf, size_t size, const char *fmt, va_list ap) {
        int n = vsnprintf(buf, size, fmt, ap);

        return n < 0 || (size_t) n >= size ? -ENAMETOOLONG : 0;
}

/* The calling function's format and arguments into |buf| (an array). */
#define FORMAT_ARGS(buf, fmt)                                           \
        ({                                                              \
                va_list _ap;                                            \
                va_start(_ap, fmt);                                     \
                int _r = vformat((buf), sizeof(buf), (fmt), _ap);       \
                va_end(_ap);                                            \
                _r;                                                     \
        })

bool gh_dpart_has_file(gh_dpart *p, const char *fmt, ...) {
        char name[400];
        gh_tensor t;
        int r;

        r = FORMAT_ARGS(name, fmt);
        return r == 0 && lookup(p, name, &t) == 0;
}

static int find(gh_dpart *p, const char *canon, gh_tensor *ret, char *file, size_t file_size) {
        int r = gh_dpart_file_name(p, canon, file, file_size);

        return r < 0 ? r : lookup(p, file, ret);
}

bool gh_dpart_has(gh_dpart *p, const char *fmt, ...) {
        char canon[400], file[400];
        gh_tensor t;
        int r;

        r = FORMAT_ARGS(canon, fmt);
        return r == 0 && find(p, canon, &t, file, sizeof(file)) == 0;
}

int gh_dpart_shape(gh_dpart *p, gh_tensor *ret, const char *fmt, ...) {
        char canon[400], file[400];
        int r;

        r = FORMAT_ARGS(canon, fmt);
        if (r < 0)
                return r;
        r = find(p, canon, ret, file, sizeof(file));
        if (r < 0)
                snprintf(p->err, sizeof(p->err), "the checkpoint has no tensor %s%s", p->prefix, file);
        return r;
}

static void shape_text(const uint64_t *s, uint32_t n, char *buf, size_t size) {
        size_t k = (size_t) snprintf(buf, size, "[");

        for (uint32_t i = 0; i < n && k < size; i++)
                k += (size_t) snprintf(buf + k, size - k, "%s%llu", i ? "," : "", (unsigned long long) s[i]);
        if (k < size)
                snprintf(buf + k, size - k, "]");
}

static bool shape_matches(const gh_tensor *t, uint32_t n_dims, const int64_t *shape) {
        uint32_t n = t->n_dims;

        /* A linear weight may be stored as a 1x1 conv (the VAE's attention). */
        if (n_dims == 2 && n == 4 && t->shape[2] == 1 && t->shape[3] == 1)
                n = 2;
        if (n != n_dims)
                return false;
        for (uint32_t i = 0; i < n; i++)
                if ((int64_t) t->shape[i] != shape[i])
                        return false;
        return true;
}

int gh_dpart_get(gh_dpart *p, gh_dt *ret, uint32_t n_dims, const int64_t *shape, const char *fmt, ...) {
        char canon[400], file[400], have[128], want[128];
        uint64_t ushape[GH_DT_MAX_DIMS];
        gh_tensor t;
        int r;

        r = FORMAT_ARGS(canon, fmt);
        if (r < 0)
                return r;
        if ((r = find(p, canon, &t, file, sizeof(file))) < 0) {
                snprintf(p->err, sizeof(p->err), "the checkpoint has no tensor %s%s", p->prefix, file);
                return -ENOENT;
        }
        if (t.dtype != GH_TENSOR_F32 && t.dtype != GH_TENSOR_F16 && t.dtype != GH_TENSOR_BF16) {
                snprintf(p->err, sizeof(p->err), "tensor %s%s has dtype %s; F32, F16 or BF16 expected", p->prefix,
                         file, t.dtype_name ? t.dtype_name : "?");
                return -EINVAL;
        }
        if (!shape_matches(&t, n_dims, shape)) {
                for (uint32_t i = 0; i < n_dims; i++)
                        ushape[i] = (uint64_t) shape[i];
                shape_text(t.shape, t.n_dims, have, sizeof(have));
                shape_text(ushape, n_dims, want, sizeof(want));
                snprintf(p->err, sizeof(p->err), "tensor %s%s has shape %s; %s expected", p->prefix, file, have,
                         want);
                return -EINVAL;
        }
        *ret = (gh_dt){.dtype = t.dtype, .n_dims = t.n_dims > GH_DT_MAX_DIMS ? GH_DT_MAX_DIMS : t.n_dims,
                       .data = (void *) t.data};
        for (uint32_t i = 0; i < ret->n_dims; i++)
                ret->shape[i] = (int64_t) t.shape[i];
        return 0;
}

int gh_dlin_get(gh_dpart *p, gh_dlin *ret, bool bias, int64_t out, int64_t in, const char *fmt, ...) {
        char base[360];
        int r;

        r = FORMAT_ARGS(base, fmt);
        if (r < 0)
                return r;
        *ret = (gh_dlin){0};
        GH_TRY(gh_dpart_get(p, &ret->w, 2, (int64_t[]){out, in}, "%s.weight", base));
        if (bias)
                GH_TRY(gh_dpart_get(p, &ret->b, 1, (int64_t[]){out}, "%s.bias", base));
        return 0;
}

int gh_dconv_get(gh_dpart *p, gh_dlin *ret, int64_t out, int64_t in, int64_t k, const char *fmt, ...) {
        char base[360];
        int r;

        r = FORMAT_ARGS(base, fmt);
        if (r < 0)
                return r;
        *ret = (gh_dlin){0};
        GH_TRY(gh_dpart_get(p, &ret->w, 4, (int64_t[]){out, in, k, k}, "%s.weight", base));
        GH_TRY(gh_dpart_get(p, &ret->b, 1, (int64_t[]){out}, "%s.bias", base));
        return 0;
}

int gh_dnorm_get(gh_dpart *p, gh_dnorm *ret, int64_t c, const char *fmt, ...) {
        char base[360];
        int r;

        r = FORMAT_ARGS(base, fmt);
        if (r < 0)
                return r;
        GH_TRY(gh_dpart_get(p, &ret->g, 1, (int64_t[]){c}, "%s.weight", base));
        GH_TRY(gh_dpart_get(p, &ret->b, 1, (int64_t[]){c}, "%s.bias", base));
        return 0;
}

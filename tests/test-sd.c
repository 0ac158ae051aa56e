/* The diffusion runtime against the independent PyTorch reference
 * (tests/reference/): the tiny SD 1.x checkpoints of tests/data/sd-tiny in
 * both naming layouts, component by component (text encoder, UNet in both
 * proj_in kinds, VAE decode and encode), the noise generator, every sampler
 * over 3 steps, v-prediction, img2img and a whole txt2img run to RGB8.
 * Relative L2 error under 1e-4 in fp32. Also: malformed checkpoints are
 * refused with the first offending tensor's name, and the planner's arena
 * size is exactly the real run's peak. */
#include <errno.h>
#include <fcntl.h>
#include <json-c/json.h>
#include <math.h>
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include <cmocka.h>

#include "dfiles.h"
#include "pipeline.h"
#include "prompt.h"
#include "st-writer.h"

#define TOL 1e-4

static char dir[4096];
static gh_dfiles *expected, *motion_expected;

/* ---- fixtures ---- */

static void fixture_path(char *buf, size_t n, const char *name) {
        snprintf(buf, n, "%s/%s", dir, name);
}

static float to_f32(const gh_tensor *t, size_t i) {
        uint32_t u;
        float f;

        switch (t->dtype) {
        case GH_TENSOR_F32: return ((const float *) t->data)[i];
        case GH_TENSOR_I32: return (float) ((const int32_t *) t->data)[i];
        case GH_TENSOR_I64: return (float) ((const int64_t *) t->data)[i];
        case GH_TENSOR_BF16:
                u = (uint32_t) ((const uint16_t *) t->data)[i] << 16;
                memcpy(&f, &u, 4);
                return f;
        default: return ((const uint8_t *) t->data)[i];
        }
}

static size_t numel(const gh_tensor *t) {
        size_t n = 1;

        for (uint32_t i = 0; i < t->n_dims; i++)
                n *= t->shape[i];
        return n;
}

/* A fixture tensor of |file| as floats (freed by the caller). */
static float *fx_of(gh_dfiles *file, const char *name, size_t *ret_n) {
        gh_tensor t;
        float *v;

        if (gh_dfiles_source(file)->lookup(gh_dfiles_source(file)->ctx, name, &t) < 0)
                fail_msg("fixture %s missing", name);
        v = malloc(numel(&t) * sizeof(float));
        assert_non_null(v);
        for (size_t i = 0; i < numel(&t); i++)
                v[i] = to_f32(&t, i);
        if (ret_n)
                *ret_n = numel(&t);
        return v;
}

static float *fx(const char *name, size_t *ret_n) {
        return fx_of(expected, name, ret_n);
}

static void expect_close(const char *what, const float *got, const float *want, size_t n) {
        double num = 0, den = 0, maxd = 0;

        for (size_t i = 0; i < n; i++) {
                double d = (double) got[i] - want[i];
                num += d * d;
                den += (double) want[i] * want[i];
                maxd = fmax(maxd, fabs(d));
        }
        double rel = sqrt(num / (den > 0 ? den : 1));
        print_message("%-28s rel %.2e  max abs %.2e  (%zu values)\n", what, rel, maxd, n);
        if (!(rel < TOL))
                fail_msg("%s: relative error %.3e over %g", what, rel, TOL);
}

/* ---- a context with a real arena, one thread ---- */

static int serial(void *pctx, uint32_t n, void (*fn)(void *, uint32_t, uint32_t), void *ctx) {
        for (uint32_t i = 0; i < n; i++)
                fn(ctx, i, 0);
        return 0;
}

static gh_dcpu cpu = {.parallel_for = serial, .threads = 1};

typedef struct ctx {
        gh_dctx c;
        void *mem;
} ctx;

static void ctx_open(ctx *x, size_t bytes) {
        x->mem = aligned_alloc(GH_ARENA_ALIGN, bytes);
        assert_non_null(x->mem);
        x->c = (gh_dctx){.be = &gh_dbackend_cpu, .be_state = &cpu};
        assert_int_equal(gh_arena_new(x->mem, bytes, &x->c.arena), 0);
}

static void ctx_close(ctx *x) {
        gh_arena_free(x->c.arena);
        free(x->mem);
}

#define OK(c, expr)                                                                        \
        do {                                                                               \
                int _r = (expr);                                                           \
                if (_r < 0)                                                                \
                        fail_msg("%s: %s (%s)", #expr, strerror(-_r), (c)->err);           \
        } while (0)

static gh_dfiles *open_model(const char *name) {
        char path[4200], tok[4200], err[1024];
        gh_dfiles *f;

        fixture_path(path, sizeof(path), name);
        fixture_path(tok, sizeof(tok), "sd-tiny-diffusers/tokenizer");
        if (gh_dfiles_open(path, tok, &f, err, sizeof(err)) < 0)
                fail_msg("%s", err);
        return f;
}

static void load(gh_dfiles *f, gh_sd_models *m) {
        if (gh_sd_models_load(m, gh_dfiles_source(f)) < 0)
                fail_msg("%s", m->err);
}

static const char *const layouts[] = {"sd-tiny.safetensors", "sd-tiny-diffusers"};

/* ---- components ---- */

static void test_noise(void **state) {
        size_t n;
        float *want = fx("noise.seed1234.stream0", &n), *got = malloc(n * sizeof(float));

        gh_noise_fill(got, n, 1234, 0);
        expect_close("noise stream 0", got, want, n);
        free(want);
        want = fx("noise.seed1234.stream1", &n);
        gh_noise_fill(got, n, 1234, 1);
        expect_close("noise stream 1", got, want, n);
        free(want);
        free(got);
}

static void text_encoder(const char *layout) {
        gh_dfiles *f = open_model(layout);
        size_t n_ids, n;
        float *ids_f = fx("text.ids", &n_ids);
        int32_t *ids = malloc(n_ids * sizeof(int32_t));
        gh_sd_models m;
        ctx x;
        gh_dt out;

        for (size_t i = 0; i < n_ids; i++)
                ids[i] = (int32_t) ids_f[i];
        load(f, &m);
        for (int skip = 1; skip <= 2; skip++) {
                float *want = fx(skip == 1 ? "text.hidden" : "text.hidden_skip2", &n), *got = malloc(n * sizeof(float));
                ctx_open(&x, 8u << 20);
                OK(&x.c, gh_dt_new(&x.c, &out, (int64_t) n_ids / 77, 77, m.clip.width));
                OK(&x.c, gh_clip_encode(&x.c, &m.clip, ids, (int64_t) n_ids / 77, skip, &out));
                OK(&x.c, gh_op_download(&x.c, &out, got));
                char what[96];
                snprintf(what, sizeof(what), "text (%s, skip %d)", layout, skip);
                expect_close(what, got, want, n);
                ctx_close(&x);
                free(want);
                free(got);
        }
        gh_sd_models_unload(&m);
        gh_dfiles_close(f);
        free(ids);
        free(ids_f);
}

static void test_text_encoder(void **state) {
        for (size_t i = 0; i < 2; i++)
                text_encoder(layouts[i]);
}

static void unet(const char *what, const gh_unet *u, const char *prefix) {
        char name[64];
        size_t nx, nt, nc, n;
        float *xv, *tv, *cv, *want, *got;
        gh_dt X, C, O;
        ctx x;

        snprintf(name, sizeof(name), "%s.x", prefix);
        xv = fx(name, &nx);
        snprintf(name, sizeof(name), "%s.t", prefix);
        tv = fx(name, &nt);
        snprintf(name, sizeof(name), "%s.context", prefix);
        cv = fx(name, &nc);
        snprintf(name, sizeof(name), "%s.out", prefix);
        want = fx(name, &n);
        got = malloc(n * sizeof(float));
        int64_t B = (int64_t) nt, h = (int64_t) sqrt((double) nx / (double) B / (double) u->cfg.in_ch);
        ctx_open(&x, 32u << 20);
        OK(&x.c, gh_dt_new(&x.c, &X, B, u->cfg.in_ch, h, h));
        OK(&x.c, gh_op_upload(&x.c, xv, &X));
        OK(&x.c, gh_dt_new(&x.c, &C, B, (int64_t) nc / B / u->cfg.ctx, u->cfg.ctx));
        OK(&x.c, gh_op_upload(&x.c, cv, &C));
        OK(&x.c, gh_dt_new(&x.c, &O, B, u->cfg.out_ch, h, h));
        OK(&x.c, gh_unet_eval(&x.c, u, &X, tv, &C, &O));
        OK(&x.c, gh_op_download(&x.c, &O, got));
        expect_close(what, got, want, n);
        ctx_close(&x);
        free(xv);
        free(tv);
        free(cv);
        free(want);
        free(got);
}

static void test_unet(void **state) {
        for (size_t i = 0; i < 2; i++) {
                gh_dfiles *f = open_model(layouts[i]);
                gh_sd_models m;
                char what[96];
                load(f, &m);
                snprintf(what, sizeof(what), "unet (%s)", layouts[i]);
                unet(what, &m.unet, "unet");
                gh_sd_models_unload(&m);
                gh_dfiles_close(f);
        }
}

static void test_unet_linear_proj(void **state) {
        gh_dfiles *f = open_model("sd-tiny-linear.safetensors");
        gh_dpart p;
        gh_unet u;

        assert_int_equal(gh_dpart_open(&p, GH_DPART_UNET, gh_dfiles_source(f)), 0);
        if (gh_unet_load(&p, &u) < 0)
                fail_msg("%s", p.err);
        assert_true(u.cfg.linear_proj);
        unet("unet (linear proj_in)", &u, "unet_linear");
        gh_dpart_close(&p);
        gh_dfiles_close(f);
}

static void vae(const char *layout) {
        gh_dfiles *f = open_model(layout);
        size_t nl, ni, n;
        float *lat = fx("vae.latent", &nl), *img = fx("vae.image", &ni), *want, *got;
        gh_sd_models m;
        gh_dt L, I;
        ctx x;
        char what[96];

        load(f, &m);
        int64_t h = (int64_t) sqrt((double) nl / (double) m.vae.z), H = h * gh_vae_factor(&m.vae);
        ctx_open(&x, 64u << 20);
        OK(&x.c, gh_dt_new(&x.c, &L, 1, m.vae.z, h, h));
        OK(&x.c, gh_dt_new(&x.c, &I, 1, 3, H, H));
        OK(&x.c, gh_op_upload(&x.c, lat, &L));
        OK(&x.c, gh_vae_decode(&x.c, &m.vae, &L, &I));
        want = fx("vae.decoded", &n);
        got = malloc(n * sizeof(float));
        OK(&x.c, gh_op_download(&x.c, &I, got));
        snprintf(what, sizeof(what), "vae decode (%s)", layout);
        expect_close(what, got, want, n);
        free(want);
        free(got);
        for (size_t i = 0; i < ni; i++)
                img[i] = 2 * img[i] - 1;
        OK(&x.c, gh_op_upload(&x.c, img, &I));
        OK(&x.c, gh_vae_encode(&x.c, &m.vae, &I, &L));
        want = fx("vae.encoded", &n);
        got = malloc(n * sizeof(float));
        OK(&x.c, gh_op_download(&x.c, &L, got));
        snprintf(what, sizeof(what), "vae encode (%s)", layout);
        expect_close(what, got, want, n);
        free(want);
        free(got);
        ctx_close(&x);
        free(lat);
        free(img);
        gh_sd_models_unload(&m);
        gh_dfiles_close(f);
}

static void test_vae(void **state) {
        for (size_t i = 0; i < 2; i++)
                vae(layouts[i]);
}

/* ---- samplers and whole runs ---- */

typedef struct run_opts {
        gh_sampler_id sampler;
        bool v_pred, img2img, from_prompts;
        uint32_t steps;
        uint64_t seed;
        double strength;
        const char *prompt, *negative;
} run_opts;

/* Runs a sampler over the fixture's contexts (or the prompts); returns the
 * final latent and, when rgb is not NULL, the decoded image. */
static float *run(gh_sd_models *m, const run_opts *o, gh_dfiles *tokf, uint8_t *rgb) {
        gh_sd_params p = {.width = 64, .height = 64, .batch = 1, .steps = o->steps, .clip_skip = 1, .cfg = 7.5f,
                          .sampler = o->sampler, .v_pred = o->v_pred, .seed = o->seed, .img2img = o->img2img,
                          .strength = o->strength};
        gh_prompt_tokens *cond = calloc(1, sizeof(*cond)), *uncond = calloc(1, sizeof(*uncond));
        size_t n;
        float *hidden = NULL, *init = NULL, *lat;
        gh_tokenizer *tok = NULL;
        gh_sd_run r;
        char err[1024];
        ctx x;

        (void) tokf;
        if (o->from_prompts) {
                gh_tensor v, mg;
                const gh_dsource *s = gh_dfiles_source(tokf);
                assert_int_equal(s->lookup(s->ctx, "tokenizer/vocab.json", &v), 0);
                assert_int_equal(s->lookup(s->ctx, "tokenizer/merges.txt", &mg), 0);
                if (gh_tokenizer_new(v.data, v.bytes, mg.data, mg.bytes, &tok, err, sizeof(err)) < 0 ||
                    gh_prompt_tokenize(tok, o->prompt, cond, err, sizeof(err)) < 0 ||
                    gh_prompt_tokenize(tok, o->negative, uncond, err, sizeof(err)) < 0)
                        fail_msg("%s", err);
        }
        ctx_open(&x, 64u << 20);
        if (o->img2img)
                init = fx("vae.encoded", &n);
        OK(&x.c, gh_sd_run_init(&r, m, &p, &x.c, 1, o->from_prompts ? cond : NULL, o->from_prompts ? uncond : NULL, NULL));
        r.init_latent_host = init;
        if (o->from_prompts) {
                OK(&x.c, gh_sd_run_prepare(&r));
        } else {
                hidden = fx("text.hidden", &n);
                OK(&x.c, gh_sd_run_set_context(&r, hidden + n / 2, hidden));
                OK(&x.c, gh_sd_run_start(&r));
        }
        for (uint32_t i = 0; i < gh_sd_steps_run(&p); i++)
                OK(&x.c, gh_sd_run_step(&r, i));
        lat = malloc((size_t) gh_dt_numel(&r.x) * sizeof(float));
        OK(&x.c, gh_op_download(&x.c, &r.x, lat));
        if (rgb)
                OK(&x.c, gh_sd_run_decode(&r, 0, rgb, NULL));
        gh_sd_run_free(&r);
        ctx_close(&x);
        gh_tokenizer_free(tok);
        free(hidden);
        free(init);
        free(cond);
        free(uncond);
        return lat;
}

static void test_samplers(void **state) {
        gh_dfiles *f = open_model(layouts[0]);
        gh_sd_models m;

        load(f, &m);
        for (int s = 0; s < _GH_SAMPLER_MAX; s++) {
                run_opts o = {.sampler = (gh_sampler_id) s, .steps = 3, .seed = 1234};
                char name[64];
                size_t n;
                snprintf(name, sizeof(name), "sample.%s.latent", gh_sampler_names[s]);
                float *want = fx(name, &n), *got = run(&m, &o, f, NULL);
                expect_close(name, got, want, n);
                free(want);
                free(got);
        }
        gh_sd_models_unload(&m);
        gh_dfiles_close(f);
}

static void test_v_prediction(void **state) {
        gh_dfiles *f = open_model(layouts[1]);
        gh_sd_models m;
        size_t n;

        load(f, &m);
        for (int i = 0; i < 2; i++) {
                run_opts o = {.sampler = i ? GH_SAMPLER_DDIM : GH_SAMPLER_EULER, .v_pred = true, .steps = 3, .seed = 1234};
                const char *name = i ? "sample.ddim_v.latent" : "sample.euler_v.latent";
                float *want = fx(name, &n), *got = run(&m, &o, f, NULL);
                expect_close(name, got, want, n);
                free(want);
                free(got);
        }
        gh_sd_models_unload(&m);
        gh_dfiles_close(f);
}

static void test_img2img(void **state) {
        gh_dfiles *f = open_model(layouts[0]);
        gh_sd_models m;
        size_t n;

        load(f, &m);
        for (int i = 0; i < 2; i++) {
                run_opts o = {.sampler = i ? GH_SAMPLER_DDIM : GH_SAMPLER_EULER, .img2img = true, .strength = 0.5,
                              .steps = 4, .seed = 99};
                const char *name = i ? "img2img.ddim.latent" : "img2img.euler.latent";
                float *want = fx(name, &n), *got = run(&m, &o, f, NULL);
                expect_close(name, got, want, n);
                free(want);
                free(got);
        }
        gh_sd_models_unload(&m);
        gh_dfiles_close(f);
}

/* expected.json's o[section][key], as text. */
static const char *setting(const char *section, const char *key) {
        static char buf[2048];
        char path[4200];
        json_object *o = NULL, *s, *v;

        fixture_path(path, sizeof(path), "expected.json");
        o = json_object_from_file(path);
        buf[0] = 0;
        if (o && json_object_object_get_ex(o, section, &s) && json_object_object_get_ex(s, key, &v))
                snprintf(buf, sizeof(buf), "%s", json_object_get_string(v));
        json_object_put(o);
        return buf;
}

static void test_txt2img(void **state) {
        for (size_t l = 0; l < 2; l++) {
                gh_dfiles *f = open_model(layouts[l]);
                char prompt[1024], negative[1024];
                run_opts o = {.sampler = GH_SAMPLER_EULER, .steps = 3, .seed = 1234, .from_prompts = true,
                              .prompt = prompt, .negative = negative};
                uint8_t rgb[64 * 64 * 3];
                gh_sd_models m;
                size_t n;
                int maxd = 0;

                snprintf(prompt, sizeof(prompt), "%s", setting("txt2img", "prompt"));
                snprintf(negative, sizeof(negative), "%s", setting("txt2img", "negative"));
                assert_true(prompt[0]);
                load(f, &m);
                float *want = fx("txt2img.latent", &n), *got = run(&m, &o, f, rgb);
                expect_close("txt2img.latent", got, want, n);
                free(want);
                free(got);
                want = fx("txt2img.image", &n);
                assert_int_equal(n, sizeof(rgb));
                for (size_t i = 0; i < n; i++)
                        maxd = abs((int) rgb[i] - (int) want[i]) > maxd ? abs((int) rgb[i] - (int) want[i]) : maxd;
                print_message("txt2img RGB8 (%s): max difference %d of 255\n", layouts[l], maxd);
                assert_true(maxd <= 1);
                free(want);
                gh_sd_models_unload(&m);
                gh_dfiles_close(f);
        }
}

/* A1111 weights and long prompts: tokens, weights and the weighted,
 * chunked hidden states (as gh_sd_run_prepare makes the context). */
static void prompt_case(gh_dfiles *f, const gh_sd_models *m, const char *key, const char *prefix) {
        char name[96], err[1024], prompt[2048];
        gh_prompt_tokens *t = calloc(1, sizeof(*t));
        gh_tokenizer *tok;
        gh_tensor v, mg;
        const gh_dsource *s = gh_dfiles_source(f);
        gh_sd_params p = {.width = 64, .height = 64, .batch = 1, .steps = 1, .clip_skip = 1, .cfg = 7.5f};
        gh_sd_run r;
        size_t n;
        ctx x;

        snprintf(prompt, sizeof(prompt), "%s", setting("prompts", key));
        assert_int_equal(s->lookup(s->ctx, "tokenizer/vocab.json", &v), 0);
        assert_int_equal(s->lookup(s->ctx, "tokenizer/merges.txt", &mg), 0);
        assert_int_equal(gh_tokenizer_new(v.data, v.bytes, mg.data, mg.bytes, &tok, err, sizeof(err)), 0);
        if (gh_prompt_tokenize(tok, prompt, t, err, sizeof(err)) < 0)
                fail_msg("%s", err);
        snprintf(name, sizeof(name), "%s.ids", prefix);
        float *ids = fx(name, &n);
        assert_int_equal(n, t->n_chunks * 77);
        for (size_t i = 0; i < n; i++)
                assert_int_equal(t->ids[i / 77][i % 77], (int32_t) ids[i]);
        snprintf(name, sizeof(name), "%s.weights", prefix);
        float *w = fx(name, &n);
        for (size_t i = 0; i < n; i++)
                assert_true(fabsf(t->weights[i / 77][i % 77] - w[i]) < 1e-6f);
        ctx_open(&x, 16u << 20);
        OK(&x.c, gh_sd_run_init(&r, m, &p, &x.c, t->n_chunks, t, t, NULL));
        OK(&x.c, gh_sd_run_prepare(&r));
        snprintf(name, sizeof(name), "%s.hidden", prefix);
        float *want = fx(name, &n), *got = malloc((size_t) gh_dt_numel(&r.ctx) * sizeof(float));
        OK(&x.c, gh_op_download(&x.c, &r.ctx, got));
        expect_close(name, got + n, want, n); /* the conditional half */
        gh_sd_run_free(&r);
        ctx_close(&x);
        free(want);
        free(got);
        free(w);
        free(ids);
        free(t);
        gh_tokenizer_free(tok);
}

static void test_prompts(void **state) {
        gh_dfiles *f = open_model(layouts[1]);
        gh_sd_models m;

        load(f, &m);
        prompt_case(f, &m, "weighted", "prompt.weighted");
        prompt_case(f, &m, "long", "prompt.long");
        gh_sd_models_unload(&m);
        gh_dfiles_close(f);
}

/* ---- malformed checkpoints ---- */

typedef enum damage { DROP, RESHAPE, RETYPE } damage;

/* A copy of fixture |file| (the single-file checkpoint, or with |motion|
 * a motion module) with |victim| damaged; loading it must fail naming
 * |victim|. */
static void refuse_in(const char *file, bool motion, const char *victim, damage how) {
        char src[4200], dst[] = "/tmp/gh-test-sd-XXXXXX.safetensors", err[1024];
        gh_st_file *st;
        gh_tensor t;
        gh_test_tensor *tt;
        gh_dfiles *in, *bad;
        gh_sd_models m;
        size_t n = 0;
        int fd, r;

        fixture_path(src, sizeof(src), file);
        assert_int_equal(gh_st_open(AT_FDCWD, src, NULL, &st, NULL, err, sizeof(err)), 0);
        assert_int_equal(gh_dfiles_open(src, NULL, &in, err, sizeof(err)), 0);
        tt = calloc(st->n_tensors, sizeof(*tt));
        for (size_t i = 0; i < st->n_tensors; i++) {
                const gh_st_tensor *s = &st->tensors[i];
                bool hit = strcmp(s->name, victim) == 0;
                if (hit && how == DROP)
                        continue;
                assert_int_equal(gh_dfiles_source(in)->lookup(gh_dfiles_source(in)->ctx, s->name, &t), 0);
                tt[n] = (gh_test_tensor){.name = s->name, .dtype = s->dtype, .n_dims = s->n_dims, .data = t.data};
                memcpy(tt[n].shape, s->shape, sizeof(s->shape));
                if (hit && how == RESHAPE) { /* same bytes, another shape */
                        tt[n].shape[0] = s->shape[0] * (s->n_dims > 1 ? s->shape[1] : 1);
                        tt[n].n_dims = 1;
                }
                if (hit && how == RETYPE) /* same bytes as integers */
                        tt[n].dtype = gh_dtype_size(s->dtype) == 4 ? GH_DTYPE_I32 : GH_DTYPE_I16;
                n++;
        }
        assert_true((fd = mkstemps(dst, 12)) >= 0);
        close(fd);
        assert_int_equal(gh_test_write_safetensors(dst, tt, n, NULL, 8), 0);
        assert_int_equal(gh_dfiles_open(dst, NULL, &bad, err, sizeof(err)), 0);
        if (motion) {
                gh_dfiles *sd = open_model(layouts[0]);
                load(sd, &m);
                r = gh_sd_motion_load(&m, gh_dfiles_source(bad));
                gh_dfiles_close(sd);
        } else
                r = gh_sd_models_load(&m, gh_dfiles_source(bad));
        print_message("refused (%d): %s\n", r, m.err);
        assert_true(r < 0);
        assert_non_null(strstr(m.err, victim));
        gh_sd_models_unload(&m);
        gh_dfiles_close(bad);
        gh_dfiles_close(in);
        unlink(dst);
        free(tt);
        gh_st_free(st);
}

static void refuse(const char *victim, damage how) {
        refuse_in("sd-tiny.safetensors", false, victim, how);
}

static void test_malformed(void **state) {
        refuse("model.diffusion_model.input_blocks.1.1.transformer_blocks.0.attn2.to_k.weight", DROP);
        refuse("model.diffusion_model.output_blocks.2.0.skip_connection.weight", RESHAPE);
        refuse("first_stage_model.decoder.mid.attn_1.q.weight", RETYPE);
        refuse("cond_stage_model.transformer.text_model.encoder.layers.1.mlp.fc2.bias", DROP);
        refuse("first_stage_model.encoder.down.0.downsample.conv.weight", RESHAPE);
        refuse_in("motion-tiny.safetensors", true,
                  "up_blocks.1.motion_modules.1.temporal_transformer.transformer_blocks.0.attention_blocks.1.to_v.weight",
                  DROP);
        refuse_in("motion-tiny.safetensors", true,
                  "down_blocks.2.motion_modules.0.temporal_transformer.transformer_blocks.0.ff.net.0.proj.weight",
                  RESHAPE);
        refuse_in("motion-tiny.safetensors", true, "mid_block.motion_modules.0.temporal_transformer.norm.bias", RETYPE);
        refuse_in("motion-tiny-diffusers.safetensors", true, "down_blocks.0.motion_modules.0.transformer_blocks.0.norm3.weight",
                  DROP);
        refuse_in("motion-tiny.safetensors", true,
                  "down_blocks.0.motion_modules.0.temporal_transformer.transformer_blocks.0.attention_blocks.0.pos_encoder.pe",
                  RESHAPE);
}

/* ---- motion modules (AnimateDiff) ---- */

static const char *const motion_layouts[] = {"motion-tiny.safetensors", "motion-tiny-diffusers.safetensors"};

static gh_dfiles *load_motion(gh_sd_models *m, gh_dfiles **ret_sd, const char *layout) {
        gh_dfiles *f = open_model(layout);

        *ret_sd = open_model(layouts[0]);
        load(*ret_sd, m);
        if (gh_sd_motion_load(m, gh_dfiles_source(f)) < 0)
                fail_msg("%s", m->err);
        return f;
}

/* One UNet evaluation with the modules, two videos of 8 frames, in both
 * layouts; the stored position encodings tell 32 frames, the diffusers
 * file (none stored) gets its default 32. */
static void test_motion_unet(void **state) {
        for (size_t l = 0; l < 2; l++) {
                size_t nx, nt, nc, n;
                float *xv = fx_of(motion_expected, "motion.unet.x", &nx), *tv = fx_of(motion_expected, "motion.unet.t", &nt),
                      *cv = fx_of(motion_expected, "motion.unet.context", &nc),
                      *want = fx_of(motion_expected, "motion.unet.out", &n), *got = malloc(n * sizeof(float));
                gh_dfiles *sd, *f;
                gh_sd_models m;
                gh_motion_pe pe;
                gh_dt X, C, O;
                ctx x;
                char what[96];

                f = load_motion(&m, &sd, motion_layouts[l]);
                assert_true(m.motion.has_mid);
                assert_int_equal(m.motion.max_frames, 32);
                int64_t B = (int64_t) nt, h = (int64_t) sqrt((double) nx / (double) B / 4.0);
                ctx_open(&x, 64u << 20);
                OK(&x.c, gh_motion_pe_new(&x.c, &m.unet, 8, &pe));
                OK(&x.c, gh_dt_new(&x.c, &X, B, 4, h, h));
                OK(&x.c, gh_op_upload(&x.c, xv, &X));
                OK(&x.c, gh_dt_new(&x.c, &C, B, (int64_t) nc / B / m.unet.cfg.ctx, m.unet.cfg.ctx));
                OK(&x.c, gh_op_upload(&x.c, cv, &C));
                OK(&x.c, gh_dt_new(&x.c, &O, B, 4, h, h));
                OK(&x.c, gh_unet_eval_video(&x.c, &m.unet, &m.motion, &pe, &X, tv, &C, &O));
                OK(&x.c, gh_op_download(&x.c, &O, got));
                snprintf(what, sizeof(what), "unet + motion (%s)", motion_layouts[l]);
                expect_close(what, got, want, n);
                /* a batch that is not whole videos is refused */
                gh_motion_pe p7;
                OK(&x.c, gh_motion_pe_new(&x.c, &m.unet, 7, &p7));
                assert_int_equal(gh_unet_eval_video(&x.c, &m.unet, &m.motion, &p7, &X, tv, &C, &O), -EINVAL);
                assert_non_null(strstr(x.c.err, "not whole videos"));
                ctx_close(&x);
                gh_sd_models_unload(&m);
                gh_dfiles_close(f);
                gh_dfiles_close(sd);
                free(xv);
                free(tv);
                free(cv);
                free(want);
                free(got);
        }
}

/* 8 frames, euler, 3 steps, CFG 7.5 through the pipeline, and 12 frames
 * on windows of 8; frames past the module's encoding, a batch other than
 * the frames, and windows that never move on are refused. */
/* A video sampled from the stored text encoder outputs, against fixture
 * |want|, then every frame decoded, in an arena of exactly the plan: the
 * peak is the plan, and one alignment unit less is refused. Returns the
 * plan. */
static size_t motion_sample_case(const gh_sd_models *m, const gh_sd_params *p, const char *what,
                                 const char *want_name) {
        size_t n, nh, plan;
        float *want = fx_of(motion_expected, want_name, &n), *hidden = fx("text.hidden", &nh),
              *got = malloc(n * sizeof(float));
        uint8_t *rgb = malloc((size_t) p->width * p->height * 3);
        char err[512];
        gh_sd_run r;
        ctx x;

        assert_int_equal(gh_sd_params_check(m, p, err, sizeof(err)), 0);
        assert_int_equal(gh_sd_plan(m, p, 1, false, &plan, err, sizeof(err)), 0);
        for (int less = 0; less < 2; less++) {
                int k;
                ctx_open(&x, plan - (size_t) less * GH_ARENA_ALIGN);
                k = gh_sd_run_init(&r, m, p, &x.c, 1, NULL, NULL, NULL);
                if (k >= 0)
                        k = gh_sd_run_set_context(&r, hidden + nh / 2, hidden);
                if (k >= 0)
                        k = gh_sd_run_start(&r);
                for (uint32_t i = 0; k >= 0 && i < p->steps; i++)
                        k = gh_sd_run_step(&r, i);
                if (!less && k >= 0) {
                        assert_int_equal((size_t) gh_dt_numel(&r.x), n);
                        OK(&x.c, gh_op_download(&x.c, &r.x, got));
                        expect_close(what, got, want, n);
                }
                for (uint32_t b = 0; k >= 0 && b < p->batch; b++)
                        k = gh_sd_run_decode(&r, b, rgb, NULL);
                print_message("%s: arena %zu: %d, peak %zu\n", what, plan - (size_t) less * GH_ARENA_ALIGN, k,
                              gh_arena_peak(x.c.arena));
                if (!less) {
                        if (k < 0)
                                fail_msg("%s", x.c.err);
                        assert_int_equal(gh_arena_peak(x.c.arena), plan);
                } else
                        assert_int_equal(k, -ENOSPC);
                gh_sd_run_free(&r);
                ctx_close(&x);
        }
        free(rgb);
        free(want);
        free(hidden);
        free(got);
        return plan;
}

static void test_motion_sample(void **state) {
        gh_sd_params p = {.width = 64, .height = 64, .batch = 8, .frames = 8, .steps = 3, .clip_skip = 1, .cfg = 7.5f,
                          .sampler = GH_SAMPLER_EULER, .seed = 1234};
        gh_dfiles *sd, *f;
        gh_sd_models m;
        char err[512];

        f = load_motion(&m, &sd, motion_layouts[0]);
        size_t plan8 = motion_sample_case(&m, &p, "sample, 8 frames + motion", "motion.sample.latent");
        /* 12 frames on windows of 8 overlapping by 4 (frames 0-7, 4-11) */
        gh_sd_params wp = p;
        wp.frames = wp.batch = 12;
        wp.window = 8;
        wp.overlap = 4;
        size_t plan12w = motion_sample_case(&m, &wp, "sample, 12 frames in windows of 8", "motion.sample.windows");
        /* the plan grows with the frames (and the size): what admission control reserves */
        size_t plan16, plan16big;
        gh_sd_params q = p;
        q.frames = q.batch = 16;
        assert_int_equal(gh_sd_plan(&m, &q, 1, false, &plan16, err, sizeof(err)), 0);
        q.width = q.height = 128;
        assert_int_equal(gh_sd_plan(&m, &q, 1, false, &plan16big, err, sizeof(err)), 0);
        print_message("plans: 8 frames %zu, 12 in windows of 8 %zu, 16 %zu, 16 at 128x128 %zu bytes\n", plan8, plan12w,
                      plan16, plan16big);
        assert_true(plan8 < plan12w && plan8 < plan16 && plan16 < plan16big);

        gh_sd_params bad = p;
        bad.frames = bad.batch = 33;
        assert_int_equal(gh_sd_params_check(&m, &bad, err, sizeof(err)), -EINVAL);
        assert_non_null(strstr(err, "frames 1..32"));
        bad = wp;
        bad.overlap = 8; /* an overlap of a whole window never moves on */
        assert_int_equal(gh_sd_params_check(&m, &bad, err, sizeof(err)), -EINVAL);
        assert_non_null(strstr(err, "overlapping"));
        bad.window = 1;
        bad.overlap = 0;
        assert_int_equal(gh_sd_params_check(&m, &bad, err, sizeof(err)), -EINVAL);
        bad = p;
        bad.batch = 4;
        assert_int_equal(gh_sd_params_check(&m, &bad, err, sizeof(err)), -EINVAL);
        gh_sd_models_unload(&m);
        gh_dfiles_close(f);
        gh_dfiles_close(sd);
        /* no motion module: frames refused */
        f = open_model(layouts[0]);
        load(f, &m);
        assert_int_equal(gh_sd_params_check(&m, &p, err, sizeof(err)), -EINVAL);
        gh_sd_models_unload(&m);
        gh_dfiles_close(f);
}

/* ---- F16 activations: only where the context allows them ---- */

static void test_half_activations(void **state) {
        gh_dt a = {.dtype = GH_TENSOR_F16, .n_dims = 2, .shape = {4, 8}}, b = a, f = a, t;
        gh_sd_params p = {.width = 64, .height = 64, .batch = 8, .frames = 8, .steps = 1, .clip_skip = 1,
                          .cfg = 7.5f, .sampler = GH_SAMPLER_EULER, .seed = 1};
        const gh_dt *terms[] = {&a};
        size_t full, half, fullv, halfv;
        gh_dfiles *sd, *mf;
        gh_sd_models m;
        char err[512];
        ctx x;

        ctx_open(&x, 1 << 20);
        f.dtype = GH_TENSOR_F32;
        a.data = b.data = f.data = x.mem;
        /* not allowed: refused, by name */
        assert_int_equal(gh_op_add(&x.c, &a, &b, &b), -EINVAL);
        assert_non_null(strstr(x.c.err, "add: input must be F32"));
        x.c.err[0] = 0;
        x.c.act = GH_TENSOR_F16; /* asked for, not allowed: F32 */
        OK(&x.c, gh_dt_new(&x.c, &t, 4, 8));
        assert_int_equal(t.dtype, GH_TENSOR_F32);
        gh_dt_drop(&x.c, &t);
        /* allowed (planning only: the CPU backend takes F32) */
        x.c.half = x.c.dry = true;
        OK(&x.c, gh_op_add(&x.c, &a, &b, &b));
        OK(&x.c, gh_op_linear(&x.c, &f, &(gh_dt){.dtype = GH_TENSOR_F16, .n_dims = 2, .shape = {8, 8}, .data = x.mem},
                              NULL, &a)); /* a layer's input and output may differ */
        /* a residual layer whose output is its input: refused, by name */
        gh_dt sq = {.dtype = GH_TENSOR_F16, .n_dims = 2, .shape = {8, 8}, .data = x.mem};
        assert_int_equal(gh_op_linear_add(&x.c, &a, &sq, NULL, &a), -EINVAL);
        assert_non_null(strstr(x.c.err, "linear_add: the output is the input"));
        x.c.err[0] = 0;
        gh_dt other = a;
        other.data = (char *) x.mem + 1024;
        OK(&x.c, gh_op_linear_add(&x.c, &a, &sq, NULL, &other));
        assert_int_equal(gh_op_add(&x.c, &a, &f, &b), -EINVAL);
        assert_non_null(strstr(x.c.err, "add: input is F32, not F16 like the input"));
        x.c.err[0] = 0;
        assert_int_equal(gh_op_lincomb(&x.c, 1, (const float[]){1.0f}, terms, &f), -EINVAL); /* the samplers': F32 */
        assert_non_null(strstr(x.c.err, "lincomb: input must be F32"));
        OK(&x.c, gh_dt_new(&x.c, &t, 4, 8));
        assert_int_equal(t.dtype, GH_TENSOR_F16);
        assert_int_equal(gh_arena_used(x.c.arena), GH_ARENA_ALIGN); /* 64 bytes, aligned */
        assert_int_equal(gh_dt_slice0(&t, 1, 1).data, (char *) t.data + 16);
        gh_dt_drop(&x.c, &t);
        ctx_close(&x);

        /* a plan with the UNet in F16: a video's is smaller (a picture's
         * peak may lie in the VAE's decode, which stays F32) */
        mf = load_motion(&m, &sd, motion_layouts[0]);
        assert_int_equal(gh_sd_plan(&m, &p, 1, false, &fullv, err, sizeof(err)), 0);
        assert_int_equal(gh_sd_plan(&m, &p, 1, true, &halfv, err, sizeof(err)), 0);
        p.frames = 0;
        p.batch = 1;
        assert_int_equal(gh_sd_plan(&m, &p, 1, false, &full, err, sizeof(err)), 0);
        assert_int_equal(gh_sd_plan(&m, &p, 1, true, &half, err, sizeof(err)), 0);
        print_message("plans, F32 and F16 UNet: picture %zu, %zu; 8 frames %zu, %zu bytes\n", full, half, fullv, halfv);
        assert_true(half <= full && halfv < fullv);
        gh_sd_models_unload(&m);
        gh_dfiles_close(mf);
        gh_dfiles_close(sd);
}

/* ---- workspace: the plan is the peak, and the arena holds it to that ---- */

static void test_workspace(void **state) {
        gh_dfiles *f = open_model(layouts[0]);
        gh_sd_params p = {.width = 64, .height = 64, .batch = 2, .steps = 3, .clip_skip = 1, .cfg = 7.5f,
                          .sampler = GH_SAMPLER_DPMPP_2M, .seed = 5};
        gh_prompt_tokens *t = calloc(1, sizeof(*t));
        gh_tokenizer *tok;
        gh_sd_models m;
        gh_tensor v, mg;
        size_t plan;
        char err[1024];
        uint8_t rgb[64 * 64 * 3];

        load(f, &m);
        assert_int_equal(gh_dfiles_source(f)->lookup(gh_dfiles_source(f)->ctx, "tokenizer/vocab.json", &v), 0);
        assert_int_equal(gh_dfiles_source(f)->lookup(gh_dfiles_source(f)->ctx, "tokenizer/merges.txt", &mg), 0);
        assert_int_equal(gh_tokenizer_new(v.data, v.bytes, mg.data, mg.bytes, &tok, err, sizeof(err)), 0);
        assert_int_equal(gh_prompt_tokenize(tok, "a red circle", t, err, sizeof(err)), 0);
        for (int img2img = 0; img2img < 2; img2img++) {
                float *init = calloc(3 * 64 * 64, sizeof(float));
                p.img2img = img2img;
                p.strength = 0.7;
                assert_int_equal(gh_sd_plan(&m, &p, 1, false, &plan, err, sizeof(err)), 0);
                /* Exactly the plan: runs, and the peak is the plan. One
                 * alignment unit less: fails, by the arena's refusal. */
                for (int less = 0; less < 2; less++) {
                        ctx x;
                        gh_sd_run r;
                        int k = 0;
                        ctx_open(&x, plan - (size_t) less * GH_ARENA_ALIGN);
                        k = gh_sd_run_init(&r, &m, &p, &x.c, 1, t, t, init);
                        if (k >= 0)
                                k = gh_sd_run_prepare(&r);
                        for (uint32_t i = 0; k >= 0 && i < gh_sd_steps_run(&p); i++)
                                k = gh_sd_run_step(&r, i);
                        for (uint32_t b = 0; k >= 0 && b < p.batch; b++)
                                k = gh_sd_run_decode(&r, b, rgb, NULL);
                        print_message("%s, arena %zu: %d, peak %zu\n", img2img ? "img2img" : "txt2img",
                                      plan - (size_t) less * GH_ARENA_ALIGN, k, gh_arena_peak(x.c.arena));
                        if (!less) {
                                if (k < 0)
                                        fail_msg("%s", x.c.err);
                                assert_int_equal(gh_arena_peak(x.c.arena), plan);
                        } else {
                                assert_int_equal(k, -ENOSPC);
                                assert_non_null(strstr(x.c.err, "workspace exhausted"));
                        }
                        gh_sd_run_free(&r);
                        ctx_close(&x);
                }
                free(init);
        }
        gh_tokenizer_free(tok);
        free(t);
        gh_sd_models_unload(&m);
        gh_dfiles_close(f);
}

int main(void) {
        const char *d = getenv("GH_SD_FIXTURES");
        char path[4200];
        char err[1024];
        const struct CMUnitTest tests[] = {
                cmocka_unit_test(test_noise),         cmocka_unit_test(test_text_encoder),
                cmocka_unit_test(test_unet),          cmocka_unit_test(test_unet_linear_proj),
                cmocka_unit_test(test_vae),           cmocka_unit_test(test_samplers),
                cmocka_unit_test(test_v_prediction),  cmocka_unit_test(test_img2img),
                cmocka_unit_test(test_txt2img),       cmocka_unit_test(test_prompts),
                cmocka_unit_test(test_malformed),
                cmocka_unit_test(test_workspace),     cmocka_unit_test(test_motion_unet),
                cmocka_unit_test(test_motion_sample), cmocka_unit_test(test_half_activations),
        };
        int r;

        snprintf(dir, sizeof(dir), "%s", d ? d : "tests/data/sd-tiny");
        fixture_path(path, sizeof(path), "expected.safetensors");
        if (gh_dfiles_open(path, NULL, &expected, err, sizeof(err)) < 0) {
                fprintf(stderr, "fixtures: %s\n", err);
                return 1;
        }
        fixture_path(path, sizeof(path), "motion-expected.safetensors");
        if (gh_dfiles_open(path, NULL, &motion_expected, err, sizeof(err)) < 0) {
                fprintf(stderr, "fixtures: %s\n", err);
                gh_dfiles_close(expected);
                return 1;
        }
        r = cmocka_run_group_tests(tests, NULL, NULL);
        gh_dfiles_close(motion_expected);
        gh_dfiles_close(expected);
        return r;
}

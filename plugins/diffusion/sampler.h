/* The noise schedule, the samplers and the seeded noise of SD 1.x (the
 * formulas are in docs/diffusion.md). A sampler runs a whole schedule or,
 * for img2img, its last steps; the model is a callback that returns the
 * guided UNet output (epsilon or v) for a latent and a timestep. All the
 * arithmetic on latents goes through the runtime's ops, so it runs on any
 * backend. */
#pragma once

#include "runtime.h"

#define GH_SCHEDULE_STEPS 1000
#define GH_SAMPLER_MAX_STEPS 1000

typedef enum gh_sampler_id {
        GH_SAMPLER_EULER,
        GH_SAMPLER_EULER_A,
        GH_SAMPLER_DDIM,
        GH_SAMPLER_DPMPP_2M,
        GH_SAMPLER_DPMPP_2M_KARRAS,
        _GH_SAMPLER_MAX,
} gh_sampler_id;

/* Their parameter names, NULL-terminated (an enum parameter's choices). */
extern const char *const gh_sampler_names[];
int gh_sampler_from_name(const char *name);

typedef struct gh_schedule {
        double acp[GH_SCHEDULE_STEPS];       /* alphas_cumprod */
        double log_sigma[GH_SCHEDULE_STEPS];
} gh_schedule;

void gh_schedule_init(gh_schedule *s);
double gh_schedule_sigma(const gh_schedule *s, double t);
double gh_schedule_t(const gh_schedule *s, double sigma);

/* The model: out = guided prediction for latent x at timestep t. */
typedef int (*gh_model_fn)(void *userdata, gh_dctx *c, const gh_dt *x, float t, gh_dt *out);

typedef struct gh_sampler {
        gh_sampler_id id;
        bool v_pred;
        uint32_t n;          /* steps of the whole schedule */
        uint32_t first;      /* the first one run (img2img) */
        gh_schedule sched;
        double sigmas[GH_SAMPLER_MAX_STEPS + 1];
        int timesteps[GH_SAMPLER_MAX_STEPS]; /* DDIM */
        gh_dt prev;          /* DPM++ 2M: the previous denoised latent */
        double h_last;
        bool have_prev;
} gh_sampler;

/* Sets up n steps of which the last |run| are run (run <= n). */
int gh_sampler_init(gh_sampler *s, gh_sampler_id id, bool v_pred, uint32_t n, uint32_t run);
uint32_t gh_sampler_steps(const gh_sampler *s);
/* The starting latent: x = noise * sigma (k-samplers) or noise (DDIM),
 * blended with |init| (img2img; NULL for txt2img). */
int gh_sampler_start(gh_sampler *s, gh_dctx *c, gh_dt *x, const gh_dt *noise, const gh_dt *init);
/* Step i (0 <= i < gh_sampler_steps) in place on x; |noise| is the step's
 * ancestral noise (euler_a; may be NULL for the others). */
int gh_sampler_step(gh_sampler *s, gh_dctx *c, uint32_t i, gh_dt *x, const gh_dt *noise, gh_model_fn model,
                    void *userdata);
/* Whether step i uses ancestral noise. */
bool gh_sampler_wants_noise(const gh_sampler *s, uint32_t i);
void gh_sampler_end(gh_sampler *s, gh_dctx *c);

/* Fills n floats of noise stream |stream| for |seed| (docs/diffusion.md). */
void gh_noise_fill(float *dst, size_t n, uint64_t seed, uint64_t stream);

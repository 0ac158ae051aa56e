/* txt2img and img2img on an SD 1.x checkpoint: the models of a checkpoint,
 * the phases of one generation (prepare: prompts to the context, the
 * starting latent; the sampler's steps; decode), and the planner that runs
 * the same phases dry to find the exact peak of the workspace arena. */
#pragma once

#include "sampler.h"
#include "sd.h"
#include "prompt.h"

#define GH_SD_MAX_BATCH 8
#define GH_SD_MIN_SIZE 64
#define GH_SD_MAX_SIZE 2048

typedef struct gh_sd_models {
        gh_dpart clip_part, unet_part, vae_part;
        gh_clip clip;
        gh_unet unet;
        gh_vae vae;
        /* A motion module, for videos (gh_sd_motion_load). */
        gh_dpart motion_part;
        gh_motion motion;
        bool has_motion;
        char err[1024];
} gh_sd_models;

/* Loads (views, shapes checked) every part from |src|; fails with the first
 * missing or mismatched tensor in |err|. */
int gh_sd_models_load(gh_sd_models *m, const gh_dsource *src);
void gh_sd_models_unload(gh_sd_models *m);
/* Loads a motion module (its own checkpoint, |src|) for the loaded UNet;
 * the first missing or mismatched tensor in m->err. */
int gh_sd_motion_load(gh_sd_models *m, const gh_dsource *src);

typedef struct gh_sd_params {
        uint32_t width, height, batch, steps, clip_skip;
        float cfg;
        gh_sampler_id sampler;
        bool v_pred;
        uint64_t seed;
        bool img2img;
        double strength; /* img2img */
        /* A video: |batch| frames of one clip through the motion module
         * (batch == frames); 0: pictures. */
        uint32_t frames;
        /* Videos: the UNet on windows of |window| frames that overlap by
         * |overlap| (AnimateDiff-Evolved's "uniform" windows, not looped:
         * the last one slid to end at the last frame), each frame's
         * output the plain mean of its windows'; 0: all frames at once.
         * So a clip may have more frames than the module's encoding. */
        uint32_t window, overlap;
} gh_sd_params;

/* Sampler steps an img2img strength runs out of |steps|. */
uint32_t gh_sd_steps_run(const gh_sd_params *p);
/* Checks the parameters against the models (sizes, clip skip); a message
 * in err. */
int gh_sd_params_check(const gh_sd_models *m, const gh_sd_params *p, char *err, size_t err_size);

typedef struct gh_sd_run {
        const gh_sd_models *m;
        gh_sd_params p;
        gh_dctx *c;
        uint32_t chunks;
        const gh_prompt_tokens *cond, *uncond; /* NULL while only planning */
        const float *init;   /* img2img: [3,H,W] in -1..1, host memory */
        const float *init_latent_host; /* or the encoded latent [z,h,w] (tests, gpuhost-sd) */
        gh_dt ctx;           /* [2B, 77 chunks, width]: unconditional first */
        gh_dt x;             /* [B, z, h, w] */
        gh_dt noise;         /* [B, z, h, w], the noise of the current use */
        gh_dt init_latent;   /* img2img: [1, z, h, w] */
        float *host_noise;   /* B * z * h * w */
        gh_sampler sampler;
        gh_motion_pe pe;     /* videos: the position encodings */
} gh_sd_run;

/* Sets up a run in context |c| (dry or real); prompts are tokenized by the
 * caller (cond and uncond with |chunks| chunks at most; NULL when dry). */
int gh_sd_run_init(gh_sd_run *r, const gh_sd_models *m, const gh_sd_params *p, gh_dctx *c, uint32_t chunks,
                   const gh_prompt_tokens *cond, const gh_prompt_tokens *uncond, const float *init);
void gh_sd_run_free(gh_sd_run *r);
/* The text encoder, then gh_sd_run_start(). */
int gh_sd_run_prepare(gh_sd_run *r);
/* Instead of the text encoder: the unconditional and conditional contexts
 * ([chunks * 77, width] each, host memory). */
int gh_sd_run_set_context(gh_sd_run *r, const float *uncond, const float *cond);
/* The starting latent (noise; img2img: the encoded init image or
 * init_latent_host). */
int gh_sd_run_start(gh_sd_run *r);
/* Sampler step i of gh_sd_steps_run(). */
int gh_sd_run_step(gh_sd_run *r, uint32_t i);
/* Decodes item b into rgb (H * W * 3 bytes, rows of W * 3) and, if
 * |raw| is not NULL, the decoder's raw output [3,H,W]. */
int gh_sd_run_decode(gh_sd_run *r, uint32_t b, uint8_t *rgb, float *raw);
/* A cheap preview of item |item|'s latent (h x w RGB8, the SD 1.x
 * latent-to-RGB approximation); rgb holds h * w * 3 bytes. */
int gh_sd_run_preview(gh_sd_run *r, uint32_t item, uint8_t *rgb);

/* Runs every phase dry: the exact arena bytes a run needs, with the
 * UNet's activations in F16 where |half| (a context with half set). */
int gh_sd_plan(const gh_sd_models *m, const gh_sd_params *p, uint32_t chunks, bool half, size_t *ret_bytes, char *err,
               size_t err_size);
/* An upper bound of the chunks a prompt can take, without the vocabulary:
 * the estimate's assumption (a chunk holds at least 55 tokens, a token at
 * least one byte). */
uint32_t gh_sd_chunks_bound(const char *prompt);

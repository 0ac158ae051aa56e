/* libFuzzer target for checkpoint loading in the diffusion runtime: layout
 * detection, the sizes read from shapes, the name maps of both layouts,
 * every shape check, and the planner, all on shapes alone (as estimate()
 * sees a model); then a motion module from the same table (AnimateDiff's
 * layout or diffusers') and the plan of a short video over it.
 *
 * The input is a tensor table, one tensor a line: "NAME DTYPE DIM...". A
 * load must either fail with a message or give models whose parts fit; a
 * plan of a small run over them must either fail with a message or give a
 * positive size; the same for the motion module and the video. Anything
 * else abort()s. */
#include <errno.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "fuzz.h"
#include "pipeline.h"

#define MAX_TENSORS 4096

typedef struct table {
        char *names[MAX_TENSORS];
        gh_tensor t[MAX_TENSORS];
        size_t n;
} table;

static int lookup(void *ctx, const char *name, gh_tensor *ret) {
        table *tb = ctx;

        for (size_t i = 0; i < tb->n; i++)
                if (strcmp(tb->names[i], name) == 0) {
                        *ret = tb->t[i];
                        return 0;
                }
        return -ENOENT;
}

static gh_dtype_id dtype(const char *s) {
        return strcmp(s, "F32") == 0 ? GH_TENSOR_F32 : strcmp(s, "F16") == 0 ? GH_TENSOR_F16
             : strcmp(s, "BF16") == 0 ? GH_TENSOR_BF16 : GH_TENSOR_OTHER;
}

/* A plan of |p| over loaded models: refused with a message, or a size. */
static void plan(const gh_sd_models *m, const gh_sd_params *p) {
        char err[1200] = "";
        size_t bytes = 0;
        int r;

        if (gh_sd_params_check(m, p, err, sizeof(err)) < 0)
                return;
        err[0] = 0;
        r = gh_sd_plan(m, p, 1, false, &bytes, err, sizeof(err));
        if ((r < 0 && !err[0]) || (r >= 0 && bytes == 0))
                abort();
}

static void parse(table *tb, char *text) {
        for (char *save = NULL, *line = strtok_r(text, "\n", &save); line && tb->n < MAX_TENSORS;
             line = strtok_r(NULL, "\n", &save)) {
                char *s2 = NULL, *name = strtok_r(line, " ", &s2), *dt = strtok_r(NULL, " ", &s2), *d;
                gh_tensor *t = &tb->t[tb->n];
                if (!name || !dt)
                        continue;
                *t = (gh_tensor){.dtype = dtype(dt), .dtype_name = "?"};
                while ((d = strtok_r(NULL, " ", &s2)) && t->n_dims < GH_TENSOR_MAX_DIMS)
                        t->shape[t->n_dims++] = strtoull(d, NULL, 10) % (1u << 20);
                tb->names[tb->n++] = name;
        }
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size) {
        char *text = malloc(size + 1);
        table *tb = calloc(1, sizeof(*tb));
        gh_dsource src = {lookup, tb};
        gh_sd_models m;
        gh_sd_params p = {.width = 64, .height = 64, .batch = 1, .steps = 2, .clip_skip = 1, .cfg = 7.5f,
                          .sampler = GH_SAMPLER_DPMPP_2M};
        int r;

        if (!text || !tb)
                abort();
        memcpy(text, data, size);
        text[size] = 0;
        parse(tb, text);
        r = gh_sd_models_load(&m, &src);
        if (r < 0 && !m.err[0])
                abort(); /* a refusal says why */
        if (r >= 0) {
                if (m.unet.cfg.ctx != m.clip.width || m.unet.cfg.in_ch != m.vae.z || m.unet.cfg.levels < 1)
                        abort();
                plan(&m, &p);
                m.err[0] = 0;
                r = gh_sd_motion_load(&m, &src);
                if (r < 0 && !m.err[0])
                        abort();
                if (r >= 0) {
                        if (m.motion.max_frames < 1)
                                abort();
                        p.batch = p.frames = 6; /* on windows of 4 sharing 2: frames 0-3, 2-5 */
                        p.window = 4;
                        p.overlap = 2;
                        plan(&m, &p);
                }
        }
        gh_sd_models_unload(&m);
        free(tb);
        free(text);
        return 0;
}

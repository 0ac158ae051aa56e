/* Noise schedule (scaled_linear, 1000 steps), the Euler, Euler ancestral,
 * DDIM and DPM++ 2M (plain and Karras) samplers, and the seeded noise, as
 * docs/diffusion.md specifies them. Coefficients are computed in double on
 * the host; latents change only through gh_op_lincomb. */
#include <errno.h>
#include <math.h>
#include <string.h>

#include "sampler.h"

const char *const gh_sampler_names[] = {
        [GH_SAMPLER_EULER] = "euler",
        [GH_SAMPLER_EULER_A] = "euler_a",
        [GH_SAMPLER_DDIM] = "ddim",
        [GH_SAMPLER_DPMPP_2M] = "dpmpp_2m",
        [GH_SAMPLER_DPMPP_2M_KARRAS] = "dpmpp_2m_karras",
        [_GH_SAMPLER_MAX] = NULL,
};

int gh_sampler_from_name(const char *name) {
        for (int i = 0; i < _GH_SAMPLER_MAX; i++)
                if (strcmp(gh_sampler_names[i], name) == 0)
                        return i;
        return -EINVAL;
}

/* ---- schedule ---- */

void gh_schedule_init(gh_schedule *s) {
        double lo = sqrt(0.00085), hi = sqrt(0.012), acp = 1.0;

        for (int i = 0; i < GH_SCHEDULE_STEPS; i++) {
                double b = lo + (hi - lo) * i / (GH_SCHEDULE_STEPS - 1);
                acp *= 1.0 - b * b;
                s->acp[i] = acp;
                s->log_sigma[i] = log(sqrt((1.0 - acp) / acp));
        }
}

double gh_schedule_sigma(const gh_schedule *s, double t) {
        int lo;
        double w;

        if (t <= 0)
                return exp(s->log_sigma[0]);
        if (t >= GH_SCHEDULE_STEPS - 1)
                return exp(s->log_sigma[GH_SCHEDULE_STEPS - 1]);
        lo = (int) floor(t);
        w = t - lo;
        return exp((1.0 - w) * s->log_sigma[lo] + w * s->log_sigma[lo + 1]);
}

double gh_schedule_t(const gh_schedule *s, double sigma) {
        double ls = log(sigma);
        int lo = 0;

        if (ls <= s->log_sigma[0])
                return 0;
        if (ls >= s->log_sigma[GH_SCHEDULE_STEPS - 1])
                return GH_SCHEDULE_STEPS - 1;
        while (lo < GH_SCHEDULE_STEPS - 2 && s->log_sigma[lo + 1] < ls)
                lo++;
        return lo + (ls - s->log_sigma[lo]) / (s->log_sigma[lo + 1] - s->log_sigma[lo]);
}

/* ---- setup ---- */

static void sigmas_linear(gh_sampler *s) {
        for (uint32_t i = 0; i < s->n; i++) {
                double t = s->n == 1 ? GH_SCHEDULE_STEPS - 1
                                     : (GH_SCHEDULE_STEPS - 1) * (1.0 - (double) i / (s->n - 1));
                s->sigmas[i] = gh_schedule_sigma(&s->sched, t);
        }
        s->sigmas[s->n] = 0;
}

static void sigmas_karras(gh_sampler *s) {
        double mn = exp(s->sched.log_sigma[0]), mx = exp(s->sched.log_sigma[GH_SCHEDULE_STEPS - 1]);
        double a = pow(mx, 1.0 / 7), b = pow(mn, 1.0 / 7);

        for (uint32_t i = 0; i < s->n; i++)
                s->sigmas[i] = pow(a + (s->n == 1 ? 0 : (double) i / (s->n - 1)) * (b - a), 7);
        s->sigmas[s->n] = 0;
}

int gh_sampler_init(gh_sampler *s, gh_sampler_id id, bool v_pred, uint32_t n, uint32_t run) {
        if (id < 0 || id >= _GH_SAMPLER_MAX || n < 1 || n > GH_SAMPLER_MAX_STEPS || run > n)
                return -EINVAL;
        memset(s, 0, sizeof(*s));
        s->id = id;
        s->v_pred = v_pred;
        s->n = n;
        s->first = n - run;
        gh_schedule_init(&s->sched);
        if (id == GH_SAMPLER_DDIM)
                for (uint32_t j = 0; j < n; j++)
                        s->timesteps[j] = (int) ((n - 1 - j) * (GH_SCHEDULE_STEPS / n) + 1);
        else if (id == GH_SAMPLER_DPMPP_2M_KARRAS)
                sigmas_karras(s);
        else
                sigmas_linear(s);
        return 0;
}

uint32_t gh_sampler_steps(const gh_sampler *s) {
        return s->n - s->first;
}

bool gh_sampler_wants_noise(const gh_sampler *s, uint32_t i) {
        return s->id == GH_SAMPLER_EULER_A && s->sigmas[s->first + i + 1] > 0;
}

int gh_sampler_start(gh_sampler *s, gh_dctx *c, gh_dt *x, const gh_dt *noise, const gh_dt *init) {
        double a, b;

        if (s->id == GH_SAMPLER_DDIM) {
                double acp = s->sched.acp[s->timesteps[s->first]];
                a = init ? sqrt(acp) : 0;
                b = init ? sqrt(1.0 - acp) : 1.0;
        } else {
                a = 1.0;
                b = s->sigmas[s->first];
        }
        if (init)
                return gh_op_lincomb(c, 2, (const float[]){(float) a, (float) b}, (const gh_dt *const[]){init, noise}, x);
        return gh_op_lincomb(c, 1, (const float[]){(float) b}, (const gh_dt *const[]){noise}, x);
}

/* ---- steps ---- */

static int ddim_step(gh_sampler *s, gh_dctx *c, uint32_t k, gh_dt *x, const gh_dt *out) {
        int t = s->timesteps[k], prev = t - GH_SCHEDULE_STEPS / (int) s->n;
        double a = s->sched.acp[t], ap = prev >= 0 ? s->sched.acp[prev] : s->sched.acp[0], cx, co;

        if (s->v_pred) {
                cx = sqrt(ap * a) + sqrt((1 - ap) * (1 - a));
                co = sqrt(1 - ap) * sqrt(a) - sqrt(ap) * sqrt(1 - a);
        } else {
                cx = sqrt(ap) / sqrt(a);
                co = sqrt(1 - ap) - sqrt(ap) * sqrt(1 - a) / sqrt(a);
        }
        return gh_op_lincomb(c, 2, (const float[]){(float) cx, (float) co}, (const gh_dt *const[]){x, out}, x);
}

/* D = denoised(x, out) at sigma. */
static int denoised(gh_sampler *s, gh_dctx *c, double sigma, const gh_dt *x, const gh_dt *out, gh_dt *d) {
        double cx = 1.0, co = -sigma;

        if (s->v_pred) {
                cx = 1.0 / (sigma * sigma + 1);
                co = -sigma / sqrt(sigma * sigma + 1);
        }
        return gh_op_lincomb(c, 2, (const float[]){(float) cx, (float) co}, (const gh_dt *const[]){x, out}, d);
}

static int k_update(gh_sampler *s, gh_dctx *c, uint32_t i, gh_dt *x, const gh_dt *d, const gh_dt *noise) {
        uint32_t k = s->first + i;
        double sg = s->sigmas[k], s1 = s->sigmas[k + 1];

        switch (s->id) {
        case GH_SAMPLER_EULER: {
                double f = (s1 - sg) / sg;
                return gh_op_lincomb(c, 2, (const float[]){(float) (1 + f), (float) -f}, (const gh_dt *const[]){x, d}, x);
        }
        case GH_SAMPLER_EULER_A: {
                double up = s1 > 0 ? fmin(s1, sqrt(s1 * s1 * (sg * sg - s1 * s1) / (sg * sg))) : 0;
                double down = sqrt(s1 * s1 - up * up), f = down / sg;
                if (up > 0)
                        return gh_op_lincomb(c, 3, (const float[]){(float) f, (float) (1 - f), (float) up},
                                             (const gh_dt *const[]){x, d, noise}, x);
                return gh_op_lincomb(c, 2, (const float[]){(float) f, (float) (1 - f)}, (const gh_dt *const[]){x, d}, x);
        }
        default: { /* DPM++ 2M */
                double h, e;
                int r;
                if (s1 == 0) {
                        r = gh_op_copy(c, d, x);
                } else {
                        h = log(sg) - log(s1);
                        e = expm1(-h);
                        if (!s->have_prev) {
                                r = gh_op_lincomb(c, 2, (const float[]){(float) (s1 / sg), (float) -e},
                                                  (const gh_dt *const[]){x, d}, x);
                        } else {
                                double q = 1.0 / (2.0 * (s->h_last / h));
                                r = gh_op_lincomb(c, 3,
                                                  (const float[]){(float) (s1 / sg), (float) (-e * (1 + q)), (float) (e * q)},
                                                  (const gh_dt *const[]){x, d, &s->prev}, x);
                        }
                        s->h_last = h;
                }
                if (r < 0)
                        return r;
                if (!s->prev.data)
                        GH_TRY(gh_dt_alloc(c, &s->prev, d->n_dims, d->shape));
                s->have_prev = true;
                return gh_op_copy(c, d, &s->prev);
        }
        }
}

int gh_sampler_step(gh_sampler *s, gh_dctx *c, uint32_t i, gh_dt *x, const gh_dt *noise, gh_model_fn model,
                    void *userdata) {
        uint32_t k = s->first + i;
        gh_dt in = {0}, out = {0}, d = {0};
        double sg;
        int r;

        if (i >= gh_sampler_steps(s))
                return gh_dctx_fail(c, -EINVAL, "sampler step %u of %u", i, gh_sampler_steps(s));
        if (gh_sampler_wants_noise(s, i) && !noise)
                return gh_dctx_fail(c, -EINVAL, "sampler step %u needs noise", i);
        if ((r = gh_dt_alloc(c, &out, x->n_dims, x->shape)) < 0)
                return r;
        if (s->id == GH_SAMPLER_DDIM) {
                if ((r = model(userdata, c, x, (float) s->timesteps[k], &out)) >= 0)
                        r = ddim_step(s, c, k, x, &out);
                gh_dt_drop(c, &out);
                return r;
        }
        sg = s->sigmas[k];
        if ((r = gh_dt_alloc(c, &in, x->n_dims, x->shape)) < 0 ||
            (r = gh_op_lincomb(c, 1, (const float[]){(float) (1.0 / sqrt(sg * sg + 1))}, (const gh_dt *const[]){x}, &in)) < 0 ||
            (r = model(userdata, c, &in, (float) gh_schedule_t(&s->sched, sg), &out)) < 0)
                goto out;
        gh_dt_drop(c, &in);
        if ((r = gh_dt_alloc(c, &d, x->n_dims, x->shape)) < 0 || (r = denoised(s, c, sg, x, &out, &d)) < 0)
                goto out;
        gh_dt_drop(c, &out);
        r = k_update(s, c, i, x, &d, noise);
out:
        gh_dt_drop(c, &d);
        gh_dt_drop(c, &out);
        gh_dt_drop(c, &in);
        return r;
}

void gh_sampler_end(gh_sampler *s, gh_dctx *c) {
        gh_dt_drop(c, &s->prev);
        s->have_prev = false;
}

/* ---- noise ---- */

static uint64_t mix(uint64_t z) {
        z ^= z >> 30;
        z *= 0xBF58476D1CE4E5B9ull;
        z ^= z >> 27;
        z *= 0x94D049BB133111EBull;
        return z ^ (z >> 31);
}

#define GOLDEN 0x9E3779B97F4A7C15ull

void gh_noise_fill(float *dst, size_t n, uint64_t seed, uint64_t stream) {
        uint64_t key = mix(seed + GOLDEN * (stream + 1));

        for (size_t j = 0; j < n; j += 2) {
                uint64_t p = j / 2;
                double u1 = ((double) (mix(key + GOLDEN * (2 * p + 1)) >> 11) + 0.5) * 0x1p-53;
                double u2 = (double) (mix(key + GOLDEN * (2 * p + 2)) >> 11) * 0x1p-53;
                double r = sqrt(-2.0 * log(u1));
                dst[j] = (float) (r * cos(2 * M_PI * u2));
                if (j + 1 < n)
                        dst[j + 1] = (float) (r * sin(2 * M_PI * u2));
        }
}

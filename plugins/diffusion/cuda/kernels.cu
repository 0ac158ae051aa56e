/* The CUDA backend's kernels (backend-cuda.c launches them): one per op of
 * backend.h, simple and exact first (no fast math), speed later.
 *
 * Activations are F32, or F16 where the runtime asks (the UNet in the fp16
 * mode): the kernels that see them are templates over the activation type
 * (ldv/stv), instantiated twice, the F16 one named with a _h suffix; the
 * GEMMs' operand kernels, the fallbacks and the biases take the type at
 * run time instead. Weights, biases, norms' gamma/beta and embedding
 * tables may be F32, F16 or BF16 and are read through ld(), which takes
 * the dtype code of gpuhost/plugin.h (GH_TENSOR_F32 = 1, F16, BF16).
 * Element-wise kernels loop over a grid-stride range, so any grid covers
 * any size. Sizes are 64-bit where a tensor's element count may exceed 2^31. */
#include <cuda_fp16.h>
#include <cuda_bf16.h>

#define DT_F16 2
#define DT_BF16 3
#define RED 1024 /* the most threads of a block that reduces */
#define GRID_STRIDE(i, n) \
        for (long long i = blockIdx.x * (long long)blockDim.x + threadIdx.x; i < (n); \
             i += (long long)gridDim.x * blockDim.x)

__device__ __forceinline__ float ld(const void *p, int t, long long i) {
        if (t == DT_F16)
                return __half2float(((const __half *)p)[i]);
        if (t == DT_BF16)
                return __uint_as_float((unsigned)((const unsigned short *)p)[i] << 16);
        return ((const float *)p)[i];
}

/* Stores v as dtype |t| (F32, F16 or BF16, round to nearest even). */
__device__ __forceinline__ void st(void *p, int t, long long i, float v) {
        if (t == DT_F16)
                ((__half *)p)[i] = __float2half_rn(v);
        else if (t == DT_BF16)
                ((__nv_bfloat16 *)p)[i] = __float2bfloat16_rn(v);
        else
                ((float *)p)[i] = v;
}

/* An activation of type T (float or __half) to and from float. */
__device__ __forceinline__ float ldv(float v) {
        return v;
}
__device__ __forceinline__ float ldv(__half v) {
        return __half2float(v);
}
__device__ __forceinline__ void stv(float *p, float v) {
        *p = v;
}
__device__ __forceinline__ void stv(__half *p, float v) {
        *p = __float2half_rn(v);
}

/* Four activations at p (aligned to 4 elements) to and from floats: one
 * 16-byte access for float, one 8-byte access for __half. */
__device__ __forceinline__ void load4(const float *p, float v[4]) {
        const float4 u = *(const float4 *)p;
        v[0] = u.x;
        v[1] = u.y;
        v[2] = u.z;
        v[3] = u.w;
}
__device__ __forceinline__ void load4(const __half *p, float v[4]) {
        const uint2 u = *(const uint2 *)p;
        const float2 a = __half22float2(*(const __half2 *)&u.x), b = __half22float2(*(const __half2 *)&u.y);
        v[0] = a.x;
        v[1] = a.y;
        v[2] = b.x;
        v[3] = b.y;
}
__device__ __forceinline__ void store4(float *p, const float v[4]) {
        *(float4 *)p = make_float4(v[0], v[1], v[2], v[3]);
}
__device__ __forceinline__ void store4(__half *p, const float v[4]) {
        __half2 h[2] = {__floats2half2_rn(v[0], v[1]), __floats2half2_rn(v[2], v[3])};
        *(uint2 *)p = *(const uint2 *)h;
}
template <class T> __device__ __forceinline__ bool aligned4(const void *p) {
        return ((unsigned long long)p & (4 * sizeof(T) - 1)) == 0;
}

/* The two instantiations of a template kernel body: NAME over float and
 * NAME_h over __half; PARAMS and ARGS spell the parameters with T. */
#define BOTH(NAME, BODY, PARAMS, ARGS)                                                  \
        namespace NAME##_f32 {                                                         \
        typedef float T;                                                               \
        extern "C" __global__ void NAME PARAMS { BODY<T> ARGS; }                       \
        }                                                                              \
        namespace NAME##_f16 {                                                         \
        typedef __half T;                                                              \
        extern "C" __global__ void NAME##_h PARAMS { BODY<T> ARGS; }                   \
        }

__device__ __forceinline__ float silu(float x) {
        return x / (1.0f + expf(-x));
}

/* x/2 (1 + erf(x/sqrt 2)) as x/2 erfc(-x/sqrt 2): exact for negative x too. */
__device__ __forceinline__ float gelu(float x) {
        return 0.5f * x * erfcf(-x * 0.70710678118654752440f);
}

__device__ __forceinline__ float quick_gelu(float x) {
        return x / (1.0f + expf(-1.702f * x));
}

/* Sum of v over the block (blockDim.x a power of two, at most RED), in every thread. */
__device__ double block_sum(double v) {
        __shared__ double red[RED];
        red[threadIdx.x] = v;
        __syncthreads();
        for (unsigned s = blockDim.x / 2; s > 0; s /= 2) {
                if (threadIdx.x < s)
                        red[threadIdx.x] += red[threadIdx.x + s];
                __syncthreads();
        }
        double r = red[0];
        __syncthreads();
        return r;
}

__device__ float block_max(float v) {
        __shared__ float red[RED];
        red[threadIdx.x] = v;
        __syncthreads();
        for (unsigned s = blockDim.x / 2; s > 0; s /= 2) {
                if (threadIdx.x < s)
                        red[threadIdx.x] = fmaxf(red[threadIdx.x], red[threadIdx.x + s]);
                __syncthreads();
        }
        float r = red[0];
        __syncthreads();
        return r;
}

/* ---- conv2d: one thread per output element ---- */

extern "C" __global__ void gh_conv2d(const void *x, int xt, const void *w, int wt, const void *b, int bt, void *y,
                                     int yt, long long n, int ci, int h, int wd, int co, int kh, int kw, int stride,
                                     int pad_top, int pad_left, int ho, int wo) {
        GRID_STRIDE(e, n) {
                int ox = (int)(e % wo), oy = (int)(e / wo % ho), o = (int)(e / ((long long)wo * ho) % co);
                long long bi = e / ((long long)wo * ho * co);
                const long long xb = bi * ci * h * wd;
                long long wo_off = (long long)o * ci * kh * kw;
                float acc = 0.0f;
                for (int c = 0; c < ci; c++) {
                        for (int ky = 0; ky < kh; ky++) {
                                int iy = oy * stride - pad_top + ky;
                                if (iy < 0 || iy >= h)
                                        continue;
                                for (int kx = 0; kx < kw; kx++) {
                                        int ix = ox * stride - pad_left + kx;
                                        if (ix < 0 || ix >= wd)
                                                continue;
                                        acc = fmaf(ld(w, wt, wo_off + ((long long)c * kh + ky) * kw + kx),
                                                   ld(x, xt, xb + ((long long)c * h + iy) * wd + ix), acc);
                                }
                        }
                }
                if (b)
                        acc += ld(b, bt, o);
                st(y, yt, e, acc);
        }
}

/* ---- linear: y[M,N] = x[M,K] w[N,K]^T + b (plus y's old values where
 * acc), 16x16 tiles in shared memory ---- */

#define LT 16

extern "C" __global__ void gh_linear(const void *x, int xt, const void *w, int wt, const void *b, int bt, void *y,
                                     int yt, int acc, long long m, int n, int k) {
        __shared__ float xs[LT][LT + 1], ws[LT][LT + 1];
        long long row = (long long)blockIdx.x * LT + threadIdx.y; /* rows on grid x: any M */
        int col = blockIdx.y * LT + threadIdx.x;
        int wrow = blockIdx.y * LT + threadIdx.y; /* the weight row this thread loads */
        float sum = 0.0f;

        for (int k0 = 0; k0 < k; k0 += LT) {
                int kk = k0 + threadIdx.x;
                xs[threadIdx.y][threadIdx.x] = row < m && kk < k ? ld(x, xt, row * k + kk) : 0.0f;
                ws[threadIdx.y][threadIdx.x] = wrow < n && kk < k ? ld(w, wt, (long long)wrow * k + kk) : 0.0f;
                __syncthreads();
                for (int i = 0; i < LT; i++)
                        sum = fmaf(xs[threadIdx.y][i], ws[threadIdx.x][i], sum);
                __syncthreads();
        }
        if (row < m && col < n)
                st(y, yt, row * n + col,
                   (acc ? ld(y, yt, row * n + col) : 0.0f) + sum + (b ? ld(b, bt, col) : 0.0f));
}

/* ---- GEMM operands for cuBLASLt (backend-cuda.c runs the GEMMs) ---- */

#define IM2COL_RUN 8

/* A run of IM2COL_RUN values of an im2col row at col[at], the first |n| of
 * them (the rest lie past the row): as one 16-byte store of fp16 where
 * |vec| (fp16, rows a multiple of the run, so |at| is 16-byte aligned and
 * the run whole), else one by one in type |ct|. */
__device__ __forceinline__ void store_run(void *col, int ct, long long at, const float *v, int n, bool vec) {
        if (vec) {
                uint4 o;
                __half2 hv[4] = {__floats2half2_rn(v[0], v[1]), __floats2half2_rn(v[2], v[3]),
                                 __floats2half2_rn(v[4], v[5]), __floats2half2_rn(v[6], v[7])};
                memcpy(&o, hv, sizeof(o));
                *(uint4 *)((__half *)col + at) = o;
        } else
                for (int j = 0; j < IM2COL_RUN && j < n; j++)
                        st(col, ct, at + j, v[j]);
}

/* The im2col matrix of images [0, nb) of x[nb, ci, h, w]: col[img][k][p]
 * for k = (c, ky, kx) and output pixels p0 + p, p < np (column-major
 * np x K per image, as cuBLASLt's A), zero where the window leaves the
 * image. Grid: x over runs of 8 pixels (one thread each: one division,
 * and one 16-byte store in fp16), y over k (looping past 65535), z over
 * images. */
extern "C" __global__ void gh_im2col(const void *x, int xt, void *col, int ct, int ci, int h, int w, int kh, int kw,
                                     int stride, int pad_top, int pad_left, int wo, int p0, int np) {
        const int khw = kh * kw, kdim = ci * khw, img = blockIdx.z;
        const bool vec = ct == DT_F16 && np % IM2COL_RUN == 0;

        for (int kk = blockIdx.y; kk < kdim; kk += gridDim.y) {
                const int c = kk / khw, r = kk % khw, ky = r / kw, kx = r % kw;
                const long long xc = ((long long)img * ci + c) * h * w;
                const long long row = ((long long)img * kdim + kk) * np;
                for (int p = (blockIdx.x * blockDim.x + threadIdx.x) * IM2COL_RUN; p < np;
                     p += gridDim.x * blockDim.x * IM2COL_RUN) {
                        const int pix = p0 + p;
                        int oy = pix / wo, ox = pix - oy * wo;
                        float v[IM2COL_RUN];
                        for (int j = 0; j < IM2COL_RUN; j++) {
                                const int iy = oy * stride - pad_top + ky, ix = ox * stride - pad_left + kx;
                                v[j] = p + j < np && iy >= 0 && iy < h && ix >= 0 && ix < w ? ld(x, xt, xc + iy * w + ix)
                                                                                             : 0.0f;
                                if (++ox == wo) {
                                        ox = 0;
                                        oy++;
                                }
                        }
                        store_run(col, ct, row + p, v, np - p, vec);
                }
        }
}

/* The same matrix through shared memory: a block takes blockDim.x *
 * IM2COL_RUN output pixels of one image and, channel by channel, loads
 * the input rows their windows cover once (coalesced; zeros above and
 * below the image), then writes that channel's kh * kw rows of col from
 * there. Grid: x over runs of pixels, y over channels (looping past
 * 65535), z over images; dynamic shared memory for the most rows a block
 * needs (the caller's |rows| x w floats). */
extern "C" __global__ void gh_im2col_tile(const void *x, int xt, void *col, int ct, int ci, int h, int w, int kh,
                                          int kw, int stride, int pad_top, int pad_left, int wo, int p0, int np) {
        extern __shared__ float rows[];
        const int khw = kh * kw, kdim = ci * khw, img = blockIdx.z;
        const int pb = blockIdx.x * blockDim.x * IM2COL_RUN, pe = min(np, pb + (int)blockDim.x * IM2COL_RUN);
        const int oy0 = (p0 + pb) / wo, iy0 = oy0 * stride - pad_top;
        const int nrows = ((p0 + pe - 1) / wo - oy0) * stride + kh;
        const int p = pb + threadIdx.x * IM2COL_RUN;
        const bool vec = ct == DT_F16 && np % IM2COL_RUN == 0;
        int off[IM2COL_RUN], ixb[IM2COL_RUN];

        if (pb >= np)
                return;
        { /* each of the thread's pixels: its window's top-left in rows[] and its first column */
                int pix = p0 + p, oy = pix / wo, ox = pix - oy * wo;
                for (int j = 0; j < IM2COL_RUN; j++) {
                        ixb[j] = p + j < pe ? ox * stride - pad_left : -kw - w; /* past the end: never valid */
                        off[j] = (oy - oy0) * stride * w + ixb[j];
                        if (++ox == wo) {
                                ox = 0;
                                oy++;
                        }
                }
        }
        for (int c = blockIdx.y; c < ci; c += gridDim.y) {
                const long long xc = ((long long)img * ci + c) * h * w;
                __syncthreads(); /* the previous channel's reads are done */
                for (int i = threadIdx.x; i < nrows * w; i += blockDim.x) {
                        const int r = i / w, iy = iy0 + r;
                        rows[i] = iy >= 0 && iy < h ? ld(x, xt, xc + iy * w + (i - r * w)) : 0.0f;
                }
                __syncthreads();
                if (p >= pe)
                        continue;
                for (int ky = 0; ky < kh; ky++)
                        for (int kx = 0; kx < kw; kx++) {
                                const long long row = ((long long)img * kdim + (long long)c * khw + ky * kw + kx) * np;
                                float v[IM2COL_RUN];
                                for (int j = 0; j < IM2COL_RUN; j++) {
                                        const int ix = ixb[j] + kx;
                                        v[j] = ix >= 0 && ix < w ? rows[off[j] + ky * w + kx] : 0.0f;
                                }
                                store_run(col, ct, row + p, v, pe - p, vec);
                        }
        }
}

/* dst[i] = src[i] converted from dtype st_ to dt (a weight into the GEMM's
 * operand type, or activations into it). */
extern "C" __global__ void gh_cast(const void *src, int stype, void *dst, int dtype, long long n) {
        if (stype == 1 && dtype == DT_F16 && n % 4 == 0 &&
            (((unsigned long long)src & 15) | ((unsigned long long)dst & 7)) == 0) { /* activations to fp16 */
                GRID_STRIDE(i, n / 4) {
                        const float4 v = ((const float4 *)src)[i];
                        __half2 *o = (__half2 *)dst + 2 * i;
                        o[0] = __floats2half2_rn(v.x, v.y);
                        o[1] = __floats2half2_rn(v.z, v.w);
                }
                return;
        }
        GRID_STRIDE(i, n)
                st(dst, dtype, i, ld(src, stype, i));
}

/* y[r, i] += b[r % len] for rows r of |inner| elements: the bias of a
 * conv's NCHW output (inner H W, len C). Grid: x over a row, y over rows
 * (looping past 65535). */
extern "C" __global__ void gh_bias_rows(void *y, int yt, const void *b, int bt, long long rows, int inner, int len) {
        for (long long r = blockIdx.y; r < rows; r += gridDim.y) {
                const float v = ld(b, bt, r % len);
                for (int i = blockIdx.x * blockDim.x + threadIdx.x; i < inner; i += gridDim.x * blockDim.x)
                        st(y, yt, r * inner + i, ld(y, yt, r * inner + i) + v);
        }
}

/* y[r, i] += b[i] for a linear's [M, N] output (when cuBLASLt's epilogue
 * did not take it). Grid: x over a row, y over rows. */
extern "C" __global__ void gh_bias_cols(void *y, int yt, const void *b, int bt, long long rows, int n) {
        for (long long r = blockIdx.y; r < rows; r += gridDim.y)
                for (int i = blockIdx.x * blockDim.x + threadIdx.x; i < n; i += gridDim.x * blockDim.x)
                        st(y, yt, r * n + i, ld(y, yt, r * n + i) + ld(b, bt, i));
}

/* y[r, i] = x[r, i] + b[r % len]: a convolution's 16-bit (dtype xt) NCHW
 * output back to F32 with its bias (b may be NULL). Grid: x over a row
 * (4 elements a thread), y over rows (looping past 65535). */
extern "C" __global__ void gh_from16_bias(const void *x, int xt, const void *b, int bt, float *y, long long rows,
                                          int inner, int len) {
        const bool vec = xt == DT_F16 && inner % 4 == 0 && (((unsigned long long)x & 7) | ((unsigned long long)y & 15)) == 0;
        for (long long r = blockIdx.y; r < rows; r += gridDim.y) {
                const float v = b ? ld(b, bt, r % len) : 0.0f;
                const long long base = r * inner;
                float *yr = y + base;
                if (vec) {
                        const uint2 *xr = (const uint2 *)((const __half *)x + base);
                        for (int i = blockIdx.x * blockDim.x + threadIdx.x; i < inner / 4; i += gridDim.x * blockDim.x) {
                                const uint2 u = xr[i];
                                const float2 a = __half22float2(*(const __half2 *)&u.x);
                                const float2 c = __half22float2(*(const __half2 *)&u.y);
                                ((float4 *)yr)[i] = make_float4(a.x + v, a.y + v, c.x + v, c.y + v);
                        }
                } else
                        for (int i = blockIdx.x * blockDim.x + threadIdx.x; i < inner; i += gridDim.x * blockDim.x)
                                yr[i] = ld(x, xt, base + i) + v;
        }
}

/* ---- norms: statistics in double, two passes ---- */

/* Sum of v over the warp, in every lane. */
__device__ __forceinline__ double warp_sum(double v) {
        for (int o = 16; o > 0; o /= 2)
                v += __shfl_xor_sync(0xffffffffu, v, o);
        return v;
}

/* Sums of v and w over the block (any multiple of 32 threads, at most
 * RED), in every thread. */
__device__ double2 block_sum2(double v, double w) {
        __shared__ double2 red[RED / 32];
        const int lane = threadIdx.x % 32, warp = threadIdx.x / 32, warps = blockDim.x / 32;
        v = warp_sum(v);
        w = warp_sum(w);
        if (lane == 0)
                red[warp] = make_double2(v, w);
        __syncthreads();
        double2 r = make_double2(0.0, 0.0);
        for (int i = 0; i < warps; i++) {
                r.x += red[i].x;
                r.y += red[i].y;
        }
        __syncthreads();
        return r;
}

/* Group norm in two kernels, so that every SM works on it: partial sums
 * of x and x^2 (double) over |splits| chunks of each (batch item, group)
 * of x[B, C, inner] (grid x: B * groups, y: splits), then gh_gn_apply. */
template <class T> __device__ void gn_stats(const T *x, double2 *part, long long n, int splits) {
        const long long base = (long long)blockIdx.x * n;
        const long long chunk = ((n + splits - 1) / splits + 3) / 4 * 4, b0 = blockIdx.y * chunk;
        const long long e0 = b0 < n ? b0 : n, e1 = b0 + chunk < n ? b0 + chunk : n;
        const T *xg = x + base;
        double s = 0.0, q = 0.0;
        long long tail = e0;

        if (aligned4<T>(xg + e0)) {
                const long long nv = (e1 - e0) / 4;
                for (long long i = threadIdx.x; i < nv; i += blockDim.x) {
                        float v[4];
                        load4(xg + e0 + 4 * i, v);
                        s += (double)v[0] + v[1] + v[2] + v[3];
                        q += (double)v[0] * v[0] + (double)v[1] * v[1] + (double)v[2] * v[2] + (double)v[3] * v[3];
                }
                tail = e0 + nv * 4;
        }
        for (long long i = tail + threadIdx.x; i < e1; i += blockDim.x) {
                const double v = ldv(xg[i]);
                s += v;
                q += v * v;
        }
        const double2 r = block_sum2(s, q);
        if (threadIdx.x == 0)
                part[(long long)blockIdx.x * splits + blockIdx.y] = r;
}
BOTH(gh_gn_stats, gn_stats, (const T *x, double2 *part, long long n, int splits), (x, part, n, splits))

/* y = (x - mean) rstd gamma + beta (then SiLU) for rows (batch item,
 * channel) of |inner| elements: grid x over a row (4 elements a thread),
 * y over rows (looping past 65535). */
template <class T>
__device__ void gn_apply(const T *x, T *y, const double2 *part, int splits, const void *gamma, int gt,
                         const void *beta, int bt, int c, int groups, long long inner, float eps, int use_silu,
                         long long rows) {
        __shared__ float coef[2];
        const int len = c / groups;
        const bool vec = inner % 4 == 0 && aligned4<T>(x) && aligned4<T>(y);

        for (long long r = blockIdx.y; r < rows; r += gridDim.y) {
                const int ch = (int)(r % c);
                if (threadIdx.x < 32) {
                        const long long bg = r / c * groups + ch / len;
                        double s = 0.0, q = 0.0;
                        for (int i = threadIdx.x; i < splits; i += 32) {
                                s += part[bg * splits + i].x;
                                q += part[bg * splits + i].y;
                        }
                        s = warp_sum(s);
                        q = warp_sum(q);
                        if (threadIdx.x == 0) {
                                const double cnt = (double)len * inner, mean = s / cnt;
                                const double rstd = 1.0 / sqrt(fmax(q / cnt - mean * mean, 0.0) + eps);
                                const float scale = (float)(rstd * (gamma ? ld(gamma, gt, ch) : 1.0f));
                                coef[0] = scale;
                                coef[1] = (beta ? ld(beta, bt, ch) : 0.0f) - (float)mean * scale;
                        }
                }
                __syncthreads();
                const float scale = coef[0], shift = coef[1];
                const T *xr = x + r * inner;
                T *yr = y + r * inner;
                if (vec)
                        for (long long i = blockIdx.x * (long long)blockDim.x + threadIdx.x; i < inner / 4;
                             i += (long long)gridDim.x * blockDim.x) {
                                float v[4];
                                load4(xr + 4 * i, v);
                                for (int j = 0; j < 4; j++) {
                                        v[j] = v[j] * scale + shift;
                                        if (use_silu)
                                                v[j] = silu(v[j]);
                                }
                                store4(yr + 4 * i, v);
                        }
                else
                        for (long long i = blockIdx.x * (long long)blockDim.x + threadIdx.x; i < inner;
                             i += (long long)gridDim.x * blockDim.x) {
                                const float v = ldv(xr[i]) * scale + shift;
                                stv(yr + i, use_silu ? silu(v) : v);
                        }
                __syncthreads();
        }
}
BOTH(gh_gn_apply, gn_apply,
     (const T *x, T *y, const double2 *part, int splits, const void *gamma, int gt, const void *beta, int bt, int c,
      int groups, long long inner, float eps, int use_silu, long long rows),
     (x, y, part, splits, gamma, gt, beta, bt, c, groups, inner, eps, use_silu, rows))

/* For short rows (a row per block would leave most of its threads idle):
 * the mean and 1/std of each (batch item, group) from its partial sums,
 * once, into stats[n] (a thread each)... */
extern "C" __global__ void gh_gn_final(const double2 *part, int splits, float2 *stats, long long n, double cnt,
                                       float eps) {
        GRID_STRIDE(i, n) {
                double s = 0.0, q = 0.0;
                for (int j = 0; j < splits; j++) {
                        s += part[i * splits + j].x;
                        q += part[i * splits + j].y;
                }
                const double mean = s / cnt;
                stats[i] = make_float2((float)mean, (float)(1.0 / sqrt(fmax(q / cnt - mean * mean, 0.0) + eps)));
        }
}

/* ...then the normalization over all n elements flatly (4 a thread where
 * rows and tensors allow), each finding its channel's scale and shift. */
template <class T>
__device__ void gn_flat(const T *x, T *y, const float2 *stats, const void *gamma, int gt, const void *beta, int bt,
                        int c, int groups, long long inner, int use_silu, long long n) {
        const int len = c / groups, w = inner % 4 == 0 && aligned4<T>(x) && aligned4<T>(y) ? 4 : 1;

        GRID_STRIDE(i, n / w) {
                const long long e = i * w, row = e / inner;
                const int ch = (int)(row % c);
                const float2 st = stats[row / c * groups + ch / len];
                const float scale = st.y * (gamma ? ld(gamma, gt, ch) : 1.0f);
                const float shift = (beta ? ld(beta, bt, ch) : 0.0f) - st.x * scale;
                float v[4];
                if (w == 4)
                        load4(x + e, v);
                else
                        v[0] = ldv(x[e]);
                for (int j = 0; j < w; j++) {
                        v[j] = v[j] * scale + shift;
                        if (use_silu)
                                v[j] = silu(v[j]);
                }
                if (w == 4)
                        store4(y + e, v);
                else
                        stv(y + e, v[0]);
        }
}
BOTH(gh_gn_flat, gn_flat,
     (const T *x, T *y, const float2 *stats, const void *gamma, int gt, const void *beta, int bt, int c, int groups,
      long long inner, int use_silu, long long n),
     (x, y, stats, gamma, gt, beta, bt, c, groups, inner, use_silu, n))

/* Layer norm, a warp per row of n <= 32 * VPL elements held in registers:
 * the mean, then the variance of the centred values (two passes over the
 * registers, one over memory). Rows on warps of 256-thread blocks. */
template <int VPL, class T>
__device__ void layer_norm_warp(const T *x, T *y, const void *gamma, int gt, const void *beta, int bt,
                                long long rows, int n, float eps) {
        const int lane = threadIdx.x % 32;
        const long long row = blockIdx.x * (long long)(blockDim.x / 32) + threadIdx.x / 32;
        float v[VPL];

        if (row >= rows)
                return;
        const T *xr = x + row * n;
        float s = 0.0f;
#pragma unroll
        for (int j = 0; j < VPL; j++) {
                const int i = j * 32 + lane;
                v[j] = i < n ? ldv(xr[i]) : 0.0f;
                s += v[j];
        }
        const float mean = (float)(warp_sum((double)s) / n);
        float q = 0.0f;
#pragma unroll
        for (int j = 0; j < VPL; j++) {
                const int i = j * 32 + lane;
                const float d = i < n ? v[j] - mean : 0.0f;
                q += d * d;
        }
        const float rstd = (float)(1.0 / sqrt(warp_sum((double)q) / n + eps));
        T *yr = y + row * n;
#pragma unroll
        for (int j = 0; j < VPL; j++) {
                const int i = j * 32 + lane;
                if (i < n)
                        stv(yr + i, (v[j] - mean) * rstd * (gamma ? ld(gamma, gt, i) : 1.0f) +
                                            (beta ? ld(beta, bt, i) : 0.0f));
        }
}
template <class T> __device__ void layer_norm_w16(const T *x, T *y, const void *gamma, int gt, const void *beta,
                                                  int bt, long long rows, int n, float eps) {
        layer_norm_warp<16, T>(x, y, gamma, gt, beta, bt, rows, n, eps);
}
template <class T> __device__ void layer_norm_w48(const T *x, T *y, const void *gamma, int gt, const void *beta,
                                                  int bt, long long rows, int n, float eps) {
        layer_norm_warp<48, T>(x, y, gamma, gt, beta, bt, rows, n, eps);
}
BOTH(gh_layer_norm_w16, layer_norm_w16,
     (const T *x, T *y, const void *gamma, int gt, const void *beta, int bt, long long rows, int n, float eps),
     (x, y, gamma, gt, beta, bt, rows, n, eps))
BOTH(gh_layer_norm_w48, layer_norm_w48,
     (const T *x, T *y, const void *gamma, int gt, const void *beta, int bt, long long rows, int n, float eps),
     (x, y, gamma, gt, beta, bt, rows, n, eps))

/* One block per row of length n (rows longer than the warp kernels take). */
template <class T>
__device__ void layer_norm(const T *x, T *y, const void *gamma, int gt, const void *beta, int bt, long long n,
                           float eps) {
        const long long base = (long long)blockIdx.x * n;
        double s = 0.0;

        for (long long i = threadIdx.x; i < n; i += blockDim.x)
                s += ldv(x[base + i]);
        double mean = block_sum(s) / (double)n;
        s = 0.0;
        for (long long i = threadIdx.x; i < n; i += blockDim.x) {
                double d = ldv(x[base + i]) - mean;
                s += d * d;
        }
        float rstd = (float)(1.0 / sqrt(block_sum(s) / (double)n + eps)), mf = (float)mean;
        for (long long i = threadIdx.x; i < n; i += blockDim.x) {
                float g = gamma ? ld(gamma, gt, i) : 1.0f, b = beta ? ld(beta, bt, i) : 0.0f;
                stv(y + base + i, (ldv(x[base + i]) - mf) * rstd * g + b);
        }
}
BOTH(gh_layer_norm, layer_norm,
     (const T *x, T *y, const void *gamma, int gt, const void *beta, int bt, long long n, float eps),
     (x, y, gamma, gt, beta, bt, n, eps))

/* ---- element-wise ---- */

/* act: gh_dact (0 SiLU, 1 GELU, 2 quick GELU). */
template <class T> __device__ void act_(const T *x, T *y, long long n, int act) {
        GRID_STRIDE(i, n) {
                float v = ldv(x[i]);
                stv(y + i, act == 0 ? silu(v) : act == 1 ? gelu(v) : quick_gelu(v));
        }
}
BOTH(gh_act, act_, (const T *x, T *y, long long n, int act), (x, y, n, act))

/* x[rows, 2N] -> y[rows, N]: grid x over a row (4 elements a thread
 * where N and the tensors allow), y over rows (looping). */
template <class T> __device__ void geglu(const T *x, T *y, long long rows, int half) {
        const bool vec = half % 4 == 0 && aligned4<T>(x) && aligned4<T>(y);
        for (long long r = blockIdx.y; r < rows; r += gridDim.y) {
                const T *xr = x + r * 2 * half;
                T *yr = y + r * half;
                if (vec) {
                        for (int c = (blockIdx.x * blockDim.x + threadIdx.x) * 4; c < half;
                             c += gridDim.x * blockDim.x * 4) {
                                float a[4], g[4];
                                load4(xr + c, a);
                                load4(xr + half + c, g);
                                for (int j = 0; j < 4; j++)
                                        a[j] *= gelu(g[j]);
                                store4(yr + c, a);
                        }
                } else
                        for (int c = blockIdx.x * blockDim.x + threadIdx.x; c < half; c += gridDim.x * blockDim.x)
                                stv(yr + c, ldv(xr[c]) * gelu(ldv(xr[half + c])));
        }
}
BOTH(gh_geglu, geglu, (const T *x, T *y, long long rows, int half), (x, y, rows, half))

/* Four elements a thread where every tensor is aligned to them. */
template <class T> __device__ void add(const T *a, const T *b, T *y, long long n) {
        if (n % 4 == 0 && aligned4<T>(a) && aligned4<T>(b) && aligned4<T>(y)) {
                GRID_STRIDE(i, n / 4) {
                        float u[4], v[4];
                        load4(a + 4 * i, u);
                        load4(b + 4 * i, v);
                        for (int j = 0; j < 4; j++)
                                u[j] += v[j];
                        store4(y + 4 * i, u);
                }
                return;
        }
        GRID_STRIDE(i, n)
                stv(y + i, ldv(a[i]) + ldv(b[i]));
}
BOTH(gh_add, add, (const T *a, const T *b, T *y, long long n), (a, b, y, n))

/* y[p, i] = x[p, i] + v[p] over planes of hw elements (v of dtype vt):
 * grid x over a plane, y over planes (looping). */
template <class T> __device__ void add_channel(const T *x, const void *v, int vt, T *y, long long planes, int hw) {
        for (long long p = blockIdx.y; p < planes; p += gridDim.y) {
                const float a = ld(v, vt, p);
                for (int i = blockIdx.x * blockDim.x + threadIdx.x; i < hw; i += gridDim.x * blockDim.x)
                        stv(y + p * hw + i, ldv(x[p * hw + i]) + a);
        }
}
BOTH(gh_add_channel, add_channel, (const T *x, const void *v, int vt, T *y, long long planes, int hw),
     (x, v, vt, y, planes, hw))

/* y[p, i] = x[p, i] + v[i] over rows of m elements (v of dtype vt): grid
 * x over a row, y over rows (looping). */
template <class T> __device__ void add_rows(const T *x, const void *v, int vt, T *y, long long rows, int m) {
        for (long long p = blockIdx.y; p < rows; p += gridDim.y)
                for (int i = blockIdx.x * blockDim.x + threadIdx.x; i < m; i += gridDim.x * blockDim.x)
                        stv(y + p * m + i, ldv(x[p * m + i]) + ld(v, vt, i));
}
BOTH(gh_add_rows, add_rows, (const T *x, const void *v, int vt, T *y, long long rows, int m),
     (x, v, vt, y, rows, m))

extern "C" __global__ void gh_lincomb(float *y, long long n, int cnt, float c0, float c1, float c2, float c3,
                                      const float *x0, const float *x1, const float *x2, const float *x3) {
        GRID_STRIDE(i, n) {
                float acc = 0.0f;
                if (cnt > 0)
                        acc = c0 * x0[i];
                if (cnt > 1)
                        acc += c1 * x1[i];
                if (cnt > 2)
                        acc += c2 * x2[i];
                if (cnt > 3)
                        acc += c3 * x3[i];
                y[i] = acc;
        }
}

/* y[i] *= w[i / inner % len]. */
extern "C" __global__ void gh_scale_dim(float *y, const float *w, long long n, long long len, long long inner) {
        GRID_STRIDE(i, n)
                y[i] *= w[i / inner % len];
}

/* ---- data movement ---- */

/* x[planes, h, w] -> y[planes, 2h, 2w]: grid x over an output plane, y
 * over planes (looping). */
template <class T> __device__ void upsample2x(const T *x, T *y, long long planes, int h, int w) {
        const int n = 4 * h * w, w2 = 2 * w;
        for (long long p = blockIdx.y; p < planes; p += gridDim.y)
                for (int i = blockIdx.x * blockDim.x + threadIdx.x; i < n; i += gridDim.x * blockDim.x) {
                        const int oy = i / w2, ox = i - oy * w2;
                        y[p * n + i] = x[(p * h + oy / 2) * w + ox / 2];
                }
}
BOTH(gh_upsample2x, upsample2x, (const T *x, T *y, long long planes, int h, int w), (x, y, planes, h, w))

/* Along dimension 1: na, nb elements per batch item of a and b; grid x
 * over a row of y, y over batch items (looping). */
template <class T> __device__ void concat(const T *a, const T *b, T *y, long long batches, int na, int nb) {
        const int row = na + nb;
        for (long long bi = blockIdx.y; bi < batches; bi += gridDim.y)
                for (int i = blockIdx.x * blockDim.x + threadIdx.x; i < row; i += gridDim.x * blockDim.x)
                        y[bi * row + i] = i < na ? a[bi * na + i] : b[bi * nb + i - na];
}
BOTH(gh_concat, concat, (const T *a, const T *b, T *y, long long batches, int na, int nb), (a, b, y, batches, na, nb))

/* y[b] = x[b]^T for x[B, rows, cols] (so [B, C, HW] -> [B, HW, C] and
 * back), through 32x32 tiles in shared memory. Grid: x over tiles of
 * cols, y over tiles of rows, z over batch items; blocks of 32 x 8
 * threads. */
#define TT 32
template <class T> __device__ void transpose(const T *x, T *y, int rows, int cols) {
        __shared__ T t[TT][TT + 1];
        const int c0 = blockIdx.x * TT, r0 = blockIdx.y * TT;
        const T *xb = x + (long long)blockIdx.z * rows * cols;
        T *yb = y + (long long)blockIdx.z * rows * cols;
        for (int j = threadIdx.y; j < TT; j += blockDim.y)
                if (r0 + j < rows && c0 + threadIdx.x < cols)
                        t[j][threadIdx.x] = xb[(long long)(r0 + j) * cols + c0 + threadIdx.x];
        __syncthreads();
        for (int j = threadIdx.y; j < TT; j += blockDim.y)
                if (c0 + j < cols && r0 + threadIdx.x < rows)
                        yb[(long long)(c0 + j) * rows + r0 + threadIdx.x] = t[threadIdx.x][j];
}
BOTH(gh_transpose, transpose, (const T *x, T *y, int rows, int cols), (x, y, rows, cols))

/* y[r, k] = table[ids[r], k] + pos[r % pos_rows, k]. */
extern "C" __global__ void gh_embedding(const int *ids, const void *table, int tt, const void *pos, int pt,
                                        long long pos_rows, float *y, long long n, long long c) {
        GRID_STRIDE(i, n) {
                long long r = i / c, k = i % c;
                float v = ld(table, tt, (long long)ids[r] * c + k);
                if (pos)
                        v += ld(pos, pt, r % pos_rows * c + k);
                y[i] = v;
        }
}

/* dst[i] = src[off + i] as float (downloads of F16/BF16 tensors). */
extern "C" __global__ void gh_convert(const void *src, int t, long long off, float *dst, long long n) {
        GRID_STRIDE(i, n)
                dst[i] = ld(src, t, off + i);
}

/* One block: a strided sum per thread, then a tree, in double; a fixed
 * order for a given size, so deterministic. */
extern "C" __global__ void gh_sum(const float *x, long long n, double *out) {
        double s = 0.0;

        for (long long i = threadIdx.x; i < n; i += blockDim.x)
                s += x[i];
        s = block_sum(s);
        if (threadIdx.x == 0)
                *out = s;
}

/* ---- attention: one block per (query, head, batch item) ---- */

#define ATT_DIMS 4 /* head dimensions a thread owns: up to ATT_DIMS * blockDim.x */

/* x[r, :] = softmax(scale * x[r, :]) over rows of n: a block per row
 * (grid y, looping), max and sum over the block (the sum in double). */
extern "C" __global__ void gh_softmax_rows(float *x, long long rows, int n, float scale) {
        for (long long r = blockIdx.y; r < rows; r += gridDim.y) {
                float *row = x + r * n, m = -INFINITY;
                for (int i = threadIdx.x; i < n; i += blockDim.x)
                        m = fmaxf(m, row[i] * scale);
                m = block_max(m);
                double l = 0.0;
                for (int i = threadIdx.x; i < n; i += blockDim.x) {
                        const float p = expf(row[i] * scale - m);
                        row[i] = p;
                        l += p;
                }
                const float inv = (float)(1.0 / block_sum(l));
                for (int i = threadIdx.x; i < n; i += blockDim.x)
                        row[i] *= inv;
        }
}

/* q[B,Tq,C], k and v [B,Tk,C]. The keys go by tiles of |tile| scores in
 * dynamic shared memory, with an online softmax (running max and sum, the
 * partial output rescaled when the max grows), so any Tk fits; one tile
 * gives the plain softmax's arithmetic exactly. */
template <class T>
__device__ void attention(const T *q, const T *k, const T *v, T *y, int tq, int tk, int c, int heads, int causal,
                          float scale, int tile) {
        extern __shared__ float sc[];
        const int qi = blockIdx.x, h = blockIdx.y, bi = blockIdx.z, d = c / heads;
        const T *qr = q + ((long long)bi * tq + qi) * c + (long long)h * d;
        const T *kb = k + (long long)bi * tk * c + (long long)h * d;
        const T *vb = v + (long long)bi * tk * c + (long long)h * d;
        const int nk = causal && qi + 1 < tk ? qi + 1 : tk;
        float acc[ATT_DIMS] = {0.0f, 0.0f, 0.0f, 0.0f};
        float m = -INFINITY;
        double l = 0.0;

        for (int j0 = 0; j0 < nk; j0 += tile) {
                const int nt = nk - j0 < tile ? nk - j0 : tile;
                float mt = -INFINITY;
                for (int j = threadIdx.x; j < nt; j += blockDim.x) {
                        const T *kr = kb + (long long)(j0 + j) * c;
                        float s = 0.0f;
                        for (int i = 0; i < d; i++)
                                s = fmaf(ldv(qr[i]) * scale, ldv(kr[i]), s);
                        sc[j] = s;
                        mt = fmaxf(mt, s);
                }
                const float mn = fmaxf(m, block_max(mt));
                const float corr = expf(m - mn); /* 0 on the first tile */
                double lt = 0.0;
                for (int j = threadIdx.x; j < nt; j += blockDim.x) {
                        float p = expf(sc[j] - mn);
                        sc[j] = p;
                        lt += p;
                }
                l = l * corr + block_sum(lt); /* block_sum also publishes sc */
                for (int r = 0; r < ATT_DIMS; r++) {
                        const int i = threadIdx.x + r * blockDim.x;
                        if (i >= d)
                                break;
                        float a = acc[r] * corr;
                        for (int j = 0; j < nt; j++)
                                a = fmaf(sc[j], ldv(vb[(long long)(j0 + j) * c + i]), a);
                        acc[r] = a;
                }
                m = mn;
                __syncthreads(); /* the next tile overwrites sc */
        }
        const float inv = (float)(1.0 / l);
        T *yr = y + ((long long)bi * tq + qi) * c + (long long)h * d;
        for (int r = 0; r < ATT_DIMS; r++) {
                const int i = threadIdx.x + r * blockDim.x;
                if (i >= d)
                        break;
                stv(yr + i, acc[r] * inv);
        }
}
BOTH(gh_attention, attention,
     (const T *q, const T *k, const T *v, T *y, int tq, int tk, int c, int heads, int causal, float scale, int tile),
     (q, k, v, y, tq, tk, c, heads, causal, scale, tile))

/* ---- flash attention on tensor cores (the fp16 mode) ----
 *
 * One block of BQ / 16 warps per BQ queries of one (batch item, head);
 * each warp owns 16 queries. Q, scaled into the base-2 domain, is rounded
 * to fp16 once; K and V go through shared memory in tiles of BK keys (K's
 * fragments by ldmatrix, masked only in a tile that is not whole). Scores come from mma.sync m16n8k16 (fp16 in,
 * fp32 sums), the softmax is online (running max and sum per row, in the
 * base-2 domain), and the probabilities, rounded to fp16, are multiplied
 * by V straight from the score registers: the accumulator layout of one
 * mma is the operand layout of the next. Nothing of size Tq x Tk is ever
 * stored. q and y are [B, T, C] of the activation type T with the heads
 * side by side in C, k and v the same in fp16 (for F32 activations the
 * caller converts them once, rather than each block each tile); d = C /
 * heads is the template's D. */

#define FA_BQ 64       /* queries per block (128 measured slower: registers); the short kernels' rows at most */
#define FA_THREADS 128 /* a block's threads: 2 per query row */

__device__ __forceinline__ unsigned fa_pack(float a, float b) {
        __half2 h = __floats2half2_rn(a, b);
        return *(unsigned *)&h;
}

__device__ __forceinline__ void fa_mma(float c[4], const unsigned a[4], unsigned b0, unsigned b1) {
        asm volatile("mma.sync.aligned.m16n8k16.row.col.f32.f16.f16.f32 {%0,%1,%2,%3}, {%4,%5,%6,%7}, {%8,%9}, "
                     "{%0,%1,%2,%3};\n"
                     : "+f"(c[0]), "+f"(c[1]), "+f"(c[2]), "+f"(c[3])
                     : "r"(a[0]), "r"(a[1]), "r"(a[2]), "r"(a[3]), "r"(b0), "r"(b1));
}

/* Four (two) 8x8 fp16 matrices from shared memory, rows at the addresses
 * of lanes 0-7, 8-15, 16-23, 24-31 (0-15): B operands of two k-steps
 * (one) from a row-major [n][k] tile (K: keys by dims). */
__device__ __forceinline__ void fa_ldsm_x4(unsigned r[4], const __half *p) {
        unsigned a = (unsigned)__cvta_generic_to_shared(p);
        asm volatile("ldmatrix.sync.aligned.m8n8.x4.shared.b16 {%0,%1,%2,%3}, [%4];\n"
                     : "=r"(r[0]), "=r"(r[1]), "=r"(r[2]), "=r"(r[3])
                     : "r"(a));
}
__device__ __forceinline__ void fa_ldsm_x2(unsigned r[2], const __half *p) {
        unsigned a = (unsigned)__cvta_generic_to_shared(p);
        asm volatile("ldmatrix.sync.aligned.m8n8.x2.shared.b16 {%0,%1}, [%2];\n" : "=r"(r[0]), "=r"(r[1]) : "r"(a));
}

/* The B operand of an mma from a row-major [k][n] tile (V: keys by dims). */
__device__ __forceinline__ void fa_ldsm_t(unsigned &b0, unsigned &b1, const __half *p) {
        unsigned a = (unsigned)__cvta_generic_to_shared(p);
        asm volatile("ldmatrix.sync.aligned.m8n8.x2.trans.shared.b16 {%0,%1}, [%2];\n" : "=r"(b0), "=r"(b1) : "r"(a));
}

/* Rows [r0, r0 + rows) of one head's D columns of src (row stride c) into
 * dst[rows][STR] as fp16, zero past row t and past column D (up to DK). */
template <int D, int DK, int STR>
__device__ __forceinline__ void fa_load(__half *dst, const float *src, long long r0, int rows, int t, int c,
                                        float scale) {
        constexpr int V4 = DK / 4;
        for (int e = threadIdx.x; e < rows * V4; e += FA_THREADS) {
                const int r = e / V4, d = e % V4 * 4;
                float4 v = make_float4(0.0f, 0.0f, 0.0f, 0.0f);
                if (d < D && r0 + r < t)
                        v = *(const float4 *)(src + (r0 + r) * (long long)c + d);
                __half2 *o = (__half2 *)(dst + r * STR + d);
                o[0] = __floats2half2_rn(v.x * scale, v.y * scale);
                o[1] = __floats2half2_rn(v.z * scale, v.w * scale);
        }
}

/* The same from fp16 rows (K and V, converted once by the caller, as
 * they are: 16 bytes a load; Q times |scale| where SCALE, in fp32 so
 * that it rounds once). D is a multiple of 8, and so is c. */
template <int D, int DK, int STR, bool SCALE = false>
__device__ __forceinline__ void fa_load16(__half *dst, const __half *src, long long r0, int rows, int t, int c,
                                          float scale = 1.0f) {
        constexpr int V8 = DK / 8;
        for (int e = threadIdx.x; e < rows * V8; e += FA_THREADS) {
                const int r = e / V8, d = e % V8 * 8;
                uint4 v = make_uint4(0u, 0u, 0u, 0u);
                if (d < D && r0 + r < t)
                        v = *(const uint4 *)(src + (r0 + r) * (long long)c + d);
                if (SCALE) {
                        __half2 *h = (__half2 *)&v;
                        for (int i = 0; i < 4; i++)
                                h[i] = __floats2half2_rn(__low2float(h[i]) * scale, __high2float(h[i]) * scale);
                }
                *(uint4 *)(dst + r * STR + d) = v;
        }
}

/* Q's rows times |scale|, from F32 or from fp16. */
template <int D, int DK, int STR>
__device__ __forceinline__ void fa_load_q(__half *dst, const float *src, long long r0, int rows, int t, int c,
                                          float scale) {
        fa_load<D, DK, STR>(dst, src, r0, rows, t, c, scale);
}
template <int D, int DK, int STR>
__device__ __forceinline__ void fa_load_q(__half *dst, const __half *src, long long r0, int rows, int t, int c,
                                          float scale) {
        fa_load16<D, DK, STR, true>(dst, src, r0, rows, t, c, scale);
}

__device__ __forceinline__ void fa_store2(float *p, float a, float b) {
        *(float2 *)p = make_float2(a, b);
}
__device__ __forceinline__ void fa_store2(__half *p, float a, float b) {
        *(__half2 *)p = __floats2half2_rn(a, b);
}

/* The A fragments (KS k-steps) of 16 query rows, row-major at qw. */
template <int KS, int STR>
__device__ __forceinline__ void fa_q_frags(unsigned qa[][4], const __half *qw, int g, int t4) {
        for (int s = 0; s < KS; s++) {
                qa[s][0] = *(const unsigned *)(qw + g * STR + s * 16 + 2 * t4);
                qa[s][1] = *(const unsigned *)(qw + (g + 8) * STR + s * 16 + 2 * t4);
                qa[s][2] = *(const unsigned *)(qw + g * STR + s * 16 + 8 + 2 * t4);
                qa[s][3] = *(const unsigned *)(qw + (g + 8) * STR + s * 16 + 8 + 2 * t4);
        }
}

/* sc = the scores of those 16 queries against 8 keys, rows of a
 * row-major [key][dim] tile from k8: K's fragments by ldmatrix, lane L
 * addressing key L % 8 at column (L / 8) 8 of each pair of k-steps. */
template <int KS, int STR>
__device__ __forceinline__ void fa_qk(float sc[4], const unsigned qa[][4], const __half *k8, int lane) {
        const __half *kr = k8 + (lane % 8) * STR + lane / 8 * 8;

        sc[0] = sc[1] = sc[2] = sc[3] = 0.0f;
        for (int s = 0; s + 1 < KS; s += 2) {
                unsigned b[4];
                fa_ldsm_x4(b, kr + s * 16);
                fa_mma(sc, qa[s], b[0], b[1]);
                fa_mma(sc, qa[s + 1], b[2], b[3]);
        }
        if (KS % 2) {
                unsigned b[2];
                fa_ldsm_x2(b, kr + (KS - 1) * 16);
                fa_mma(sc, qa[KS - 1], b[0], b[1]);
        }
}

/* o += P V over NS slices of 16 keys: P (rounded to fp16) straight from
 * the score registers, V's rows row-major [key][dim] from v16. */
template <int DT, int STR, int NS>
__device__ __forceinline__ void fa_pv(float o[][4], float sc[][4], const __half *v16, int lane) {
        for (int s = 0; s < NS; s++) {
                const unsigned pa[4] = {fa_pack(sc[2 * s][0], sc[2 * s][1]), fa_pack(sc[2 * s][2], sc[2 * s][3]),
                                        fa_pack(sc[2 * s + 1][0], sc[2 * s + 1][1]),
                                        fa_pack(sc[2 * s + 1][2], sc[2 * s + 1][3])};
                const __half *vr = v16 + (s * 16 + lane % 16) * STR;
                for (int i = 0; i < DT; i++) {
                        unsigned b0, b1;
                        fa_ldsm_t(b0, b1, vr + i * 8);
                        fa_mma(o[i], pa, b0, b1);
                }
        }
}

/* Row half r (0: rows g, 1: g + 8) of the output, o / l, at yr. */
template <int DT, class T>
__device__ __forceinline__ void fa_store_row(T *yr, const float o[][4], int r, float l) {
        const float inv = 1.0f / l;
        for (int i = 0; i < DT; i++)
                fa_store2(yr + i * 8, o[i][2 * r] * inv, o[i][2 * r + 1] * inv);
}

template <int D, int BK, class T>
__device__ __forceinline__ void flash_attention(const T *q, const __half *k, const __half *v, T *y, int tq, int tk,
                                                int c, float scale_log2) {
        constexpr int DK = (D + 15) / 16 * 16, STR = DK + 8, NT = BK / 8, DT = D / 8, KS = DK / 16;
        constexpr int BQ = FA_BQ;
        __shared__ __align__(16) __half qs[BQ * STR];
        __shared__ __align__(16) __half ks[BK * STR];
        __shared__ __align__(16) __half vs[BK * STR];
        const int warp = threadIdx.x / 32, lane = threadIdx.x % 32, g = lane / 4, t4 = lane % 4;
        const long long q0 = (long long)blockIdx.x * BQ, hoff = (long long)blockIdx.y * D;
        const long long bi = blockIdx.z;
        const T *qb = q + bi * tq * c + hoff;
        const __half *kb = k + bi * tk * c + hoff, *vb = v + bi * tk * c + hoff;
        unsigned qa[KS][4];
        float o[DT][4], mrow[2] = {-INFINITY, -INFINITY}, lrow[2] = {0.0f, 0.0f};

        for (int i = 0; i < DT; i++)
                o[i][0] = o[i][1] = o[i][2] = o[i][3] = 0.0f;
        fa_load_q<D, DK, STR>(qs, qb, q0, BQ, tq, c, scale_log2);
        __syncthreads();
        fa_q_frags<KS, STR>(qa, qs + warp * 16 * STR, g, t4);
        for (int j0 = 0; j0 < tk; j0 += BK) {
                float sc[NT][4], mx[2] = {mrow[0], mrow[1]}, alpha[2];
                __syncthreads(); /* the last tile's readers are done */
                fa_load16<D, DK, STR>(ks, kb, j0, BK, tk, c);
                fa_load16<D, DK, STR>(vs, vb, j0, BK, tk, c);
                __syncthreads();
                for (int n = 0; n < NT; n++)
                        fa_qk<KS, STR>(sc[n], qa, ks + n * 8 * STR, lane);
                if (j0 + BK > tk) /* keys past the end: none of the softmax */
                        for (int n = 0; n < NT; n++)
                                for (int i = 0; i < 4; i++)
                                        if (j0 + n * 8 + 2 * t4 + (i & 1) >= tk)
                                                sc[n][i] = -INFINITY;
                for (int n = 0; n < NT; n++)
                        for (int i = 0; i < 4; i++)
                                mx[i >> 1] = fmaxf(mx[i >> 1], sc[n][i]);
                for (int r = 0; r < 2; r++) { /* the 4 threads of a row */
                        mx[r] = fmaxf(mx[r], __shfl_xor_sync(0xffffffffu, mx[r], 1));
                        mx[r] = fmaxf(mx[r], __shfl_xor_sync(0xffffffffu, mx[r], 2));
                        alpha[r] = exp2f(mrow[r] - mx[r]); /* 0 on the first tile */
                        lrow[r] *= alpha[r];
                        mrow[r] = mx[r];
                }
                for (int n = 0; n < NT; n++)
                        for (int i = 0; i < 4; i++) {
                                const float p = exp2f(sc[n][i] - mx[i >> 1]);
                                sc[n][i] = p;
                                lrow[i >> 1] += p;
                        }
                for (int i = 0; i < DT; i++) {
                        o[i][0] *= alpha[0];
                        o[i][1] *= alpha[0];
                        o[i][2] *= alpha[1];
                        o[i][3] *= alpha[1];
                }
                fa_pv<DT, STR, BK / 16>(o, sc, vs, lane);
        }
        for (int r = 0; r < 2; r++) {
                lrow[r] += __shfl_xor_sync(0xffffffffu, lrow[r], 1);
                lrow[r] += __shfl_xor_sync(0xffffffffu, lrow[r], 2);
                const long long row = q0 + warp * 16 + g + 8 * r;
                if (row >= tq)
                        continue;
                fa_store_row<DT>(y + (bi * tq + row) * c + hoff + 2 * t4, o, r, lrow[r]);
        }
}

/* One kernel per head dimension that SD-style models use (keys in tiles of
 * 64, or 32 where the dimension is large, to stay in 48 KiB of shared
 * memory); backend-cuda.c's FA_DIMS lists them. */
#define FA_KERNEL(D, BK)                                                                                          \
        extern "C" __global__ void __launch_bounds__(FA_THREADS)                                                  \
                gh_flash_attention_##D(const float *q, const __half *k, const __half *v, float *y, int tq, int tk, \
                                       int c, float scale_log2) {                                                 \
                flash_attention<D, BK, float>(q, k, v, y, tq, tk, c, scale_log2);                                 \
        }                                                                                                         \
        extern "C" __global__ void __launch_bounds__(FA_THREADS)                                                  \
                gh_flash_attention_##D##_h(const __half *q, const __half *k, const __half *v, __half *y, int tq,  \
                                           int tk, int c, float scale_log2) {                                     \
                flash_attention<D, BK, __half>(q, k, v, y, tq, tk, c, scale_log2);                                \
        }
FA_KERNEL(32, 64)
FA_KERNEL(40, 64)
FA_KERNEL(64, 64)
FA_KERNEL(80, 64)
FA_KERNEL(128, 32)
FA_KERNEL(160, 32)

/* ---- flash attention over short sequences (the motion modules' frames) ----
 *
 * Where Tq and Tk are at most ROWS (16 or 32), one block takes FS_ROWS(D)
 * / ROWS batch items of one head, ROWS query and key rows each (zeros
 * past Tq and Tk), with a warp per 16 query rows of one item: the scores
 * of those rows against the item's ROWS keys only, one plain softmax
 * (every key is in the tile), then P V. The general kernel would spend a
 * block of 64 x 64 tiles on each 16 x 16 sequence. Blocks have
 * 2 FS_ROWS(D) threads: 32 rows where D is large, to stay in 48 KiB. */

#define FS_ROWS(D) ((D) > 80 ? 32 : 64)

/* BR rows: |items| batch items (ROWS rows each, |t| of them real) of one
 * head's D columns of src, into dst[BR][STR] as fp16. */
template <int D, int DK, int STR, int ROWS, int BR>
__device__ __forceinline__ void fs_load(__half *dst, const __half *src, long long b0, long long batches, int t,
                                        int c, long long hoff) {
        constexpr int V = DK / 8;
        for (int e = threadIdx.x; e < BR * V; e += 2 * BR) { /* the block's threads */
                const int row = e / V, d = e % V * 8, it = row / ROWS, r = row % ROWS;
                uint4 v = make_uint4(0u, 0u, 0u, 0u);
                if (d < D && r < t && b0 + it < batches)
                        v = *(const uint4 *)(src + ((b0 + it) * t + r) * (long long)c + hoff + d);
                *(uint4 *)(dst + row * STR + d) = v;
        }
}
template <int D, int DK, int STR, int ROWS, int BR>
__device__ __forceinline__ void fs_load(__half *dst, const float *src, long long b0, long long batches, int t,
                                        int c, long long hoff) {
        constexpr int V = DK / 4;
        for (int e = threadIdx.x; e < BR * V; e += 2 * BR) { /* the block's threads */
                const int row = e / V, d = e % V * 4, it = row / ROWS, r = row % ROWS;
                float4 v = make_float4(0.0f, 0.0f, 0.0f, 0.0f);
                if (d < D && r < t && b0 + it < batches)
                        v = *(const float4 *)(src + ((b0 + it) * t + r) * (long long)c + hoff + d);
                __half2 *o = (__half2 *)(dst + row * STR + d);
                o[0] = __floats2half2_rn(v.x, v.y);
                o[1] = __floats2half2_rn(v.z, v.w);
        }
}

template <int D, int ROWS, class T>
__device__ __forceinline__ void flash_short(const T *q, const __half *k, const __half *v, T *y, int tq, int tk,
                                            int c, long long batches, float scale_log2) {
        constexpr int DK = (D + 15) / 16 * 16, STR = DK + 8, DT = D / 8, KS = DK / 16;
        constexpr int BR = FS_ROWS(D), ITEMS = BR / ROWS, WPI = ROWS / 16, NT = ROWS / 8;
        __shared__ __align__(16) __half qs[BR * STR];
        __shared__ __align__(16) __half ks[BR * STR];
        __shared__ __align__(16) __half vs[BR * STR];
        const int warp = threadIdx.x / 32, lane = threadIdx.x % 32, g = lane / 4, t4 = lane % 4;
        const int item = warp / WPI, r0 = (warp % WPI) * 16;
        const long long b0 = (long long)blockIdx.x * ITEMS, hoff = (long long)blockIdx.y * D;
        unsigned qa[KS][4];
        float o[DT][4], sc[NT][4], mx[2] = {-INFINITY, -INFINITY}, l[2] = {0.0f, 0.0f};

        fs_load<D, DK, STR, ROWS, BR>(qs, q, b0, batches, tq, c, hoff);
        fs_load<D, DK, STR, ROWS, BR>(ks, k, b0, batches, tk, c, hoff);
        fs_load<D, DK, STR, ROWS, BR>(vs, v, b0, batches, tk, c, hoff);
        __syncthreads();
        fa_q_frags<KS, STR>(qa, qs + (item * ROWS + r0) * STR, g, t4);
        for (int n = 0; n < NT; n++) {
                fa_qk<KS, STR>(sc[n], qa, ks + (item * ROWS + n * 8) * STR, lane);
                for (int i = 0; i < 4; i++) {
                        sc[n][i] = n * 8 + 2 * t4 + (i & 1) < tk ? sc[n][i] * scale_log2 : -INFINITY;
                        mx[i >> 1] = fmaxf(mx[i >> 1], sc[n][i]);
                }
        }
        for (int r = 0; r < 2; r++) { /* the 4 threads of a row */
                mx[r] = fmaxf(mx[r], __shfl_xor_sync(0xffffffffu, mx[r], 1));
                mx[r] = fmaxf(mx[r], __shfl_xor_sync(0xffffffffu, mx[r], 2));
        }
        for (int n = 0; n < NT; n++)
                for (int i = 0; i < 4; i++) {
                        sc[n][i] = exp2f(sc[n][i] - mx[i >> 1]);
                        l[i >> 1] += sc[n][i];
                }
        for (int i = 0; i < DT; i++)
                o[i][0] = o[i][1] = o[i][2] = o[i][3] = 0.0f;
        fa_pv<DT, STR, ROWS / 16>(o, sc, vs + item * ROWS * STR, lane);
        for (int r = 0; r < 2; r++) {
                l[r] += __shfl_xor_sync(0xffffffffu, l[r], 1);
                l[r] += __shfl_xor_sync(0xffffffffu, l[r], 2);
                const int row = r0 + g + 8 * r;
                if (row >= tq || b0 + item >= batches)
                        continue;
                fa_store_row<DT>(y + ((b0 + item) * tq + row) * c + hoff + 2 * t4, o, r, l[r]);
        }
}

/* The motion modules' head dimensions (8 heads over SD 1.x's 320, 640 and
 * 1280 channels), rows of 16 and of 32; backend-cuda.c's FS_DIMS. */
#define FS_KERNEL(D, ROWS)                                                                                        \
        extern "C" __global__ void __launch_bounds__(FA_THREADS)                                                  \
                gh_flash_short_##D##_##ROWS(const float *q, const __half *k, const __half *v, float *y, int tq,   \
                                            int tk, int c, long long batches, float scale_log2) {                 \
                flash_short<D, ROWS, float>(q, k, v, y, tq, tk, c, batches, scale_log2);                          \
        }                                                                                                         \
        extern "C" __global__ void __launch_bounds__(FA_THREADS)                                                  \
                gh_flash_short_##D##_##ROWS##_h(const __half *q, const __half *k, const __half *v, __half *y,     \
                                                int tq, int tk, int c, long long batches, float scale_log2) {     \
                flash_short<D, ROWS, __half>(q, k, v, y, tq, tk, c, batches, scale_log2);                         \
        }
FS_KERNEL(40, 16)
FS_KERNEL(40, 32)
FS_KERNEL(80, 16)
FS_KERNEL(80, 32)
FS_KERNEL(160, 16)
FS_KERNEL(160, 32)

/* ---- timestep embedding: the timesteps by value, no staging ---- */

#define TS_MAX 256 /* GH_DCUDA_TS_MAX in backend-cuda.c */

typedef struct ts_values {
        float t[TS_MAX];
} ts_values;

/* y[b, i] = cos(t_b f_i) for i < half, sin(t_b f_(i - half)) below
 * 2 half, 0 after; f_i = exp(-ln(10000) i / half), in double like the CPU
 * backend. */
extern "C" __global__ void gh_timestep(float *y, long long n, long long dim, ts_values tv) {
        const long long half = dim / 2;

        GRID_STRIDE(e, n) {
                const long long b = e / dim, i = e % dim, f = i < half ? i : i - half;
                const double arg = (double)tv.t[b] * exp(-log(10000.0) * (double)f / (double)half);
                y[e] = i >= 2 * half ? 0.0f : (float)(i < half ? cos(arg) : sin(arg));
        }
}

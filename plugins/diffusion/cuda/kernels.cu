/* The CUDA backend's kernels (backend-cuda.c launches them): one per op of
 * backend.h, simple and exact first (no fast math), speed later.
 *
 * Activations are F32; weights, biases, norms' gamma/beta and embedding
 * tables may be F32, F16 or BF16 and are read through ld(), which takes
 * the dtype code of gpuhost/plugin.h (GH_TENSOR_F32 = 1, F16, BF16).
 * Element-wise kernels loop over a grid-stride range, so any grid covers
 * any size. Sizes are 64-bit where a tensor's element count may exceed 2^31. */
#include <cuda_fp16.h>
#include <mma.h>

#define DT_F16 2
#define DT_BF16 3
#define RED 256 /* threads of the blocks that reduce */
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

/* Sum of v over the block (blockDim.x == RED), in every thread. */
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

extern "C" __global__ void gh_conv2d(const float *x, const void *w, int wt, const void *b, int bt, float *y,
                                     long long n, int ci, int h, int wd, int co, int kh, int kw, int stride,
                                     int pad_top, int pad_left, int ho, int wo) {
        GRID_STRIDE(e, n) {
                int ox = (int)(e % wo), oy = (int)(e / wo % ho), o = (int)(e / ((long long)wo * ho) % co);
                long long bi = e / ((long long)wo * ho * co);
                const float *xb = x + bi * ci * h * wd;
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
                                                   xb[((long long)c * h + iy) * wd + ix], acc);
                                }
                        }
                }
                if (b)
                        acc += ld(b, bt, o);
                y[e] = acc;
        }
}

/* ---- linear: y[M,N] = x[M,K] w[N,K]^T + b, 16x16 tiles in shared memory ---- */

#define LT 16

extern "C" __global__ void gh_linear(const float *x, const void *w, int wt, const void *b, int bt, float *y,
                                     long long m, int n, int k) {
        __shared__ float xs[LT][LT + 1], ws[LT][LT + 1];
        long long row = (long long)blockIdx.x * LT + threadIdx.y; /* rows on grid x: any M */
        int col = blockIdx.y * LT + threadIdx.x;
        int wrow = blockIdx.y * LT + threadIdx.y; /* the weight row this thread loads */
        float acc = 0.0f;

        for (int k0 = 0; k0 < k; k0 += LT) {
                int kk = k0 + threadIdx.x;
                xs[threadIdx.y][threadIdx.x] = row < m && kk < k ? x[row * k + kk] : 0.0f;
                ws[threadIdx.y][threadIdx.x] = wrow < n && kk < k ? ld(w, wt, (long long)wrow * k + kk) : 0.0f;
                __syncthreads();
                for (int i = 0; i < LT; i++)
                        acc = fmaf(xs[threadIdx.y][i], ws[threadIdx.x][i], acc);
                __syncthreads();
        }
        if (row < m && col < n)
                y[row * n + col] = acc + (b ? ld(b, bt, col) : 0.0f);
}

/* ---- tensor cores: fp16 products, fp32 sums (the backend's fp16 mode) ---- */

#define TC_BM 64
#define TC_BN 64
#define TC_BK 32
#define TC_THREADS 128 /* 4 warps, each 32x32 of the 64x64 tile */

/* C[m0.., n0..] = A[M,K] B[K,N] for one 64x64 tile: operands read through
 * loadA(row, k) and loadB(k, col) (0 outside), rounded to fp16 into shared
 * memory, multiplied with WMMA, and written through store(row, col, v).
 * B_K_FASTEST: loadB's consecutive calls vary k (weights stored [N,K]). */
template <bool B_K_FASTEST, class LA, class LB, class ST>
__device__ void tc_gemm(long long m0, long long n0, int kdim, LA loadA, LB loadB, ST store) {
        using namespace nvcuda;
        __shared__ __align__(32) __half as[TC_BM][TC_BK + 8];
        __shared__ __align__(32) __half bs[TC_BK][TC_BN + 8];
        __shared__ __align__(32) float cs[TC_BM][TC_BN + 4];
        const int warp = threadIdx.x / 32, wm = (warp / 2) * 32, wn = (warp % 2) * 32;
        wmma::fragment<wmma::accumulator, 16, 16, 16, float> acc[2][2];

        for (int i = 0; i < 2; i++)
                for (int j = 0; j < 2; j++)
                        wmma::fill_fragment(acc[i][j], 0.0f);
        for (int k0 = 0; k0 < kdim; k0 += TC_BK) {
                for (int e = threadIdx.x; e < TC_BM * TC_BK; e += TC_THREADS) {
                        int r = e / TC_BK, c = e % TC_BK;
                        as[r][c] = __float2half(loadA(m0 + r, k0 + c));
                }
                for (int e = threadIdx.x; e < TC_BK * TC_BN; e += TC_THREADS) {
                        int r = B_K_FASTEST ? e % TC_BK : e / TC_BN, c = B_K_FASTEST ? e / TC_BK : e % TC_BN;
                        bs[r][c] = __float2half(loadB(k0 + r, n0 + c));
                }
                __syncthreads();
                for (int kk = 0; kk < TC_BK; kk += 16) {
                        wmma::fragment<wmma::matrix_a, 16, 16, 16, __half, wmma::row_major> fa[2];
                        wmma::fragment<wmma::matrix_b, 16, 16, 16, __half, wmma::row_major> fb[2];
                        for (int i = 0; i < 2; i++)
                                wmma::load_matrix_sync(fa[i], &as[wm + 16 * i][kk], TC_BK + 8);
                        for (int j = 0; j < 2; j++)
                                wmma::load_matrix_sync(fb[j], &bs[kk][wn + 16 * j], TC_BN + 8);
                        for (int i = 0; i < 2; i++)
                                for (int j = 0; j < 2; j++)
                                        wmma::mma_sync(acc[i][j], fa[i], fb[j], acc[i][j]);
                }
                __syncthreads();
        }
        for (int i = 0; i < 2; i++)
                for (int j = 0; j < 2; j++)
                        wmma::store_matrix_sync(&cs[wm + 16 * i][wn + 16 * j], acc[i][j], TC_BN + 4,
                                                wmma::mem_row_major);
        __syncthreads();
        for (int e = threadIdx.x; e < TC_BM * TC_BN; e += TC_THREADS)
                store(m0 + e / TC_BN, n0 + e % TC_BN, cs[e / TC_BN][e % TC_BN]);
}

/* conv2d as an implicit GEMM: out channels x (batch, pixels), K = ci kh kw;
 * grid x over pixels, y over out channels. */
extern "C" __global__ void gh_conv2d_tc(const float *x, const void *w, int wt, const void *b, int bt, float *y,
                                        int batches, int ci, int h, int wd, int co, int kh, int kw, int stride,
                                        int pad_top, int pad_left, int ho, int wo) {
        const long long npix = (long long)ho * wo, n = batches * npix;
        const int khw = kh * kw, kdim = ci * khw;

        tc_gemm<false>(
                (long long)blockIdx.y * TC_BM, (long long)blockIdx.x * TC_BN, kdim,
                [&](long long o, int k) { return o < co && k < kdim ? ld(w, wt, o * kdim + k) : 0.0f; },
                [&](int k, long long col) {
                        if (k >= kdim || col >= n)
                                return 0.0f;
                        int c = k / khw, r = k % khw, ky = r / kw, kx = r % kw;
                        long long bi = col / npix, p = col % npix;
                        int iy = (int)(p / wo) * stride - pad_top + ky, ix = (int)(p % wo) * stride - pad_left + kx;
                        if (iy < 0 || iy >= h || ix < 0 || ix >= wd)
                                return 0.0f;
                        return x[((bi * ci + c) * h + iy) * wd + ix];
                },
                [&](long long o, long long col, float v) {
                        if (o < co && col < n)
                                y[(col / npix * co + o) * npix + col % npix] = v + (b ? ld(b, bt, o) : 0.0f);
                });
}

/* linear: y[M,N] = x[M,K] w[N,K]^T + b; grid x over rows, y over columns. */
extern "C" __global__ void gh_linear_tc(const float *x, const void *w, int wt, const void *b, int bt, float *y,
                                        long long m, int n, int k) {
        tc_gemm<true>(
                (long long)blockIdx.x * TC_BM, (long long)blockIdx.y * TC_BN, k,
                [&](long long r, int kk) { return r < m && kk < k ? x[r * k + kk] : 0.0f; },
                [&](int kk, long long c) { return kk < k && c < n ? ld(w, wt, c * k + kk) : 0.0f; },
                [&](long long r, long long c, float v) {
                        if (r < m && c < n)
                                y[r * n + c] = v + (b ? ld(b, bt, (int)c) : 0.0f);
                });
}

/* ---- norms: statistics in double, two passes ---- */

/* One block per (batch item, group): x[B, C, inner]. */
extern "C" __global__ void gh_group_norm(const float *x, float *y, const void *gamma, int gt, const void *beta,
                                         int bt, int c, int groups, long long inner, float eps, int use_silu) {
        const int len = c / groups, g = blockIdx.x % groups;
        const long long n = (long long)len * inner, base = (long long)blockIdx.x * n;
        double s = 0.0;

        for (long long i = threadIdx.x; i < n; i += blockDim.x)
                s += x[base + i];
        double mean = block_sum(s) / (double)n;
        s = 0.0;
        for (long long i = threadIdx.x; i < n; i += blockDim.x) {
                double d = x[base + i] - mean;
                s += d * d;
        }
        double rstd = 1.0 / sqrt(block_sum(s) / (double)n + eps);
        float mf = (float)mean;
        for (long long i = threadIdx.x; i < n; i += blockDim.x) {
                int ch = g * len + (int)(i / inner);
                double gm = gamma ? ld(gamma, gt, ch) : 1.0;
                float add = beta ? ld(beta, bt, ch) : 0.0f;
                float v = (x[base + i] - mf) * (float)(rstd * gm) + add;
                y[base + i] = use_silu ? silu(v) : v;
        }
}

/* One block per row of length n. */
extern "C" __global__ void gh_layer_norm(const float *x, float *y, const void *gamma, int gt, const void *beta,
                                         int bt, long long n, float eps) {
        const long long base = (long long)blockIdx.x * n;
        double s = 0.0;

        for (long long i = threadIdx.x; i < n; i += blockDim.x)
                s += x[base + i];
        double mean = block_sum(s) / (double)n;
        s = 0.0;
        for (long long i = threadIdx.x; i < n; i += blockDim.x) {
                double d = x[base + i] - mean;
                s += d * d;
        }
        float rstd = (float)(1.0 / sqrt(block_sum(s) / (double)n + eps)), mf = (float)mean;
        for (long long i = threadIdx.x; i < n; i += blockDim.x) {
                float g = gamma ? ld(gamma, gt, i) : 1.0f, b = beta ? ld(beta, bt, i) : 0.0f;
                y[base + i] = (x[base + i] - mf) * rstd * g + b;
        }
}

/* ---- element-wise ---- */

/* act: gh_dact (0 SiLU, 1 GELU, 2 quick GELU). */
extern "C" __global__ void gh_act(const float *x, float *y, long long n, int act) {
        GRID_STRIDE(i, n) {
                float v = x[i];
                y[i] = act == 0 ? silu(v) : act == 1 ? gelu(v) : quick_gelu(v);
        }
}

/* x[rows, 2N] -> y[rows, N]; n = rows * N. */
extern "C" __global__ void gh_geglu(const float *x, float *y, long long n, long long half) {
        GRID_STRIDE(i, n) {
                long long r = i / half, c = i % half;
                y[i] = x[r * 2 * half + c] * gelu(x[r * 2 * half + half + c]);
        }
}

extern "C" __global__ void gh_add(const float *a, const float *b, float *y, long long n) {
        GRID_STRIDE(i, n)
                y[i] = a[i] + b[i];
}

/* y[p, i] = x[p, i] + v[p] over planes of hw elements. */
extern "C" __global__ void gh_add_channel(const float *x, const float *v, float *y, long long n, long long hw) {
        GRID_STRIDE(i, n)
                y[i] = x[i] + v[i / hw];
}

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

/* x[planes, h, w] -> y[planes, 2h, 2w]; n = elements of y. */
extern "C" __global__ void gh_upsample2x(const float *x, float *y, long long n, long long h, long long w) {
        GRID_STRIDE(i, n) {
                long long ox = i % (2 * w), oy = i / (2 * w) % (2 * h), p = i / (4 * h * w);
                y[i] = x[(p * h + oy / 2) * w + ox / 2];
        }
}

/* Along dimension 1: na, nb elements per batch item of a and b. */
extern "C" __global__ void gh_concat(const float *a, const float *b, float *y, long long n, long long na,
                                     long long nb) {
        GRID_STRIDE(i, n) {
                long long row = na + nb, bi = i / row, off = i % row;
                y[i] = off < na ? a[bi * na + off] : b[bi * nb + off - na];
        }
}

/* [B,C,HW] -> [B,HW,C]; i indexes y. */
extern "C" __global__ void gh_nchw_to_nlc(const float *x, float *y, long long n, long long c, long long hw) {
        GRID_STRIDE(i, n) {
                long long ch = i % c, p = i / c % hw, bi = i / (c * hw);
                y[i] = x[(bi * c + ch) * hw + p];
        }
}

/* [B,HW,C] -> [B,C,HW]; i indexes y. */
extern "C" __global__ void gh_nlc_to_nchw(const float *x, float *y, long long n, long long c, long long hw) {
        GRID_STRIDE(i, n) {
                long long p = i % hw, ch = i / hw % c, bi = i / (c * hw);
                y[i] = x[(bi * hw + p) * c + ch];
        }
}

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

#define ATT_DIMS 4 /* head dimensions a thread owns: up to ATT_DIMS * RED */

/* q[B,Tq,C], k and v [B,Tk,C]. The keys go by tiles of |tile| scores in
 * dynamic shared memory, with an online softmax (running max and sum, the
 * partial output rescaled when the max grows), so any Tk fits; one tile
 * gives the plain softmax's arithmetic exactly. */
extern "C" __global__ void gh_attention(const float *q, const float *k, const float *v, float *y, int tq, int tk,
                                        int c, int heads, int causal, float scale, int tile) {
        extern __shared__ float sc[];
        const int qi = blockIdx.x, h = blockIdx.y, bi = blockIdx.z, d = c / heads;
        const float *qr = q + ((long long)bi * tq + qi) * c + (long long)h * d;
        const float *kb = k + (long long)bi * tk * c + (long long)h * d;
        const float *vb = v + (long long)bi * tk * c + (long long)h * d;
        const int nk = causal && qi + 1 < tk ? qi + 1 : tk;
        float acc[ATT_DIMS] = {0.0f, 0.0f, 0.0f, 0.0f};
        float m = -INFINITY;
        double l = 0.0;

        for (int j0 = 0; j0 < nk; j0 += tile) {
                const int nt = nk - j0 < tile ? nk - j0 : tile;
                float mt = -INFINITY;
                for (int j = threadIdx.x; j < nt; j += blockDim.x) {
                        const float *kr = kb + (long long)(j0 + j) * c;
                        float s = 0.0f;
                        for (int i = 0; i < d; i++)
                                s = fmaf(qr[i] * scale, kr[i], s);
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
                                a = fmaf(sc[j], vb[(long long)(j0 + j) * c + i], a);
                        acc[r] = a;
                }
                m = mn;
                __syncthreads(); /* the next tile overwrites sc */
        }
        const float inv = (float)(1.0 / l);
        float *yr = y + ((long long)bi * tq + qi) * c + (long long)h * d;
        for (int r = 0; r < ATT_DIMS; r++) {
                const int i = threadIdx.x + r * blockDim.x;
                if (i >= d)
                        break;
                yr[i] = acc[r] * inv;
        }
}

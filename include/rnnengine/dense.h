/* A dense head in one call: y[m, :] = act(x[m, :] @ w + b), w [K, N] row-major, b [N] or
 * NULL; act one of RNN_DENSE_* (Softmax and LogSoftmax over each row of N).
 *
 * Plain C loops written so that -O3 vectorises the inner one (contiguous over N, restrict
 * pointers): a streaming model's head is one row (M = 1) of a few hundred outputs, where a
 * BLAS call plus three NumPy ufuncs cost more in dispatch than the arithmetic.
 * Separate from kernels.h on purpose: the recurrent kernels have their own ISA dispatch.
 */
#ifndef RNNENGINE_DENSE_H
#define RNNENGINE_DENSE_H

#include <math.h>
#include <stddef.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

/* What row m's sums start from when there is no column bias: its row bias, or zero. */
#define RNN_DENSE_FILL(rb, m) ((rb) != NULL ? (rb)[m] : 0.0f)

enum rnn_dense_act {
    RNN_DENSE_NONE = 0,
    RNN_DENSE_RELU = 1,
    RNN_DENSE_SIGMOID = 2,
    RNN_DENSE_TANH = 3,
    RNN_DENSE_SOFTMAX = 4,
    RNN_DENSE_LOGSOFTMAX = 5
};

/* The product is compiled per x86-64 level (AVX-512, AVX2+FMA, baseline), chosen at load by
 * the ifunc resolver from the CPU's features, as the build has no -march (setup.py). Not
 * "arch=haswell": GCC dispatches that clone by CPU model, so AMD CPUs ran the baseline (the
 * 48x256x258 product of a 16-stream Silero convolution took 2.4 ms instead of 0.13 ms). */
#if defined(__GNUC__) && __GNUC__ >= 12 && defined(__x86_64__) && !defined(__clang__) && \
    defined(__linux__)
#define RNN_DENSE_CLONES \
    __attribute__((target_clones("arch=x86-64-v4", "arch=x86-64-v3", "default"), \
                   optimize("fp-contract=fast")))
#elif defined(__GNUC__) && defined(__x86_64__) && !defined(__clang__) && defined(__linux__)
#define RNN_DENSE_CLONES __attribute__((target_clones("avx2", "default")))
#else
#define RNN_DENSE_CLONES
#endif

RNN_DENSE_CLONES
static void rnn_dense_product(const float *restrict x, size_t K, const float *restrict w,
                              size_t N, float *restrict y)
{
    size_t n, k = 0;
    /* four rows of w per pass over y: a quarter of the loads and stores of y */
    for (; k + 4 <= K; k += 4) {
        const float x0 = x[k], x1 = x[k + 1], x2 = x[k + 2], x3 = x[k + 3];
        const float *restrict w0 = w + k * N;
        const float *restrict w1 = w0 + N;
        const float *restrict w2 = w1 + N;
        const float *restrict w3 = w2 + N;
        for (n = 0; n < N; n++) y[n] += (x0 * w0[n] + x1 * w1[n]) + (x2 * w2[n] + x3 * w3[n]);
    }
    for (; k < K; k++) {
        const float xk = x[k];
        const float *restrict wk = w + k * N;
        for (n = 0; n < N; n++) y[n] += xk * wk[n];
    }
}

/* exp(x) for the activations, in plain C that vectorises (libm's expf does not): Cephes'
 * expf polynomial, relative error below 2e-7 on [-87, 87]; x is clamped to that range, so
 * exp neither overflows nor returns a subnormal, and sigmoid's smallest output is 1.6e-38,
 * a normal float (subnormal outputs fed back as state slow every later product ~20x);
 * NaN stays NaN. Rounding to nearest by adding and subtracting 1.5 * 2^23. */
#if defined(__GNUC__)
__attribute__((always_inline))
#endif
static inline float rnn_dense_exp(float x)
{
    float c = x == x ? x : 0.0f;
    c = c > 87.0f ? 87.0f : c;
    c = c < -87.0f ? -87.0f : c;
    const float n = (c * 1.44269504088896341f + 12582912.0f) - 12582912.0f;
    const float r = (c - n * 0.693359375f) + n * 2.12194440e-4f;
    float p = 1.9875691500e-4f;
    p = p * r + 1.3981999507e-3f;
    p = p * r + 8.3334519073e-3f;
    p = p * r + 4.1665795894e-2f;
    p = p * r + 1.6666665459e-1f;
    p = p * r + 5.0000001201e-1f;
    p = p * (r * r) + r + 1.0f;
    const int32_t bits = ((int32_t)n + 127) << 23;
    float scale;
    memcpy(&scale, &bits, sizeof scale);
    return x == x ? p * scale : x;
}

RNN_DENSE_CLONES
static void rnn_dense_activate(float *restrict y, size_t N, int act)
{
    size_t n;
    switch (act) {
    case RNN_DENSE_RELU:
        for (n = 0; n < N; n++) y[n] = y[n] > 0.0f ? y[n] : (y[n] == y[n] ? 0.0f : y[n]);
        break;
    case RNN_DENSE_SIGMOID:
        for (n = 0; n < N; n++) y[n] = 1.0f / (1.0f + rnn_dense_exp(-y[n]));
        break;
    case RNN_DENSE_TANH:
        for (n = 0; n < N; n++) y[n] = tanhf(y[n]);
        break;
    case RNN_DENSE_SOFTMAX:
    case RNN_DENSE_LOGSOFTMAX: {
        float top = -INFINITY, sum = 0.0f;
        for (n = 0; n < N; n++) top = y[n] > top ? y[n] : top;
        if (act == RNN_DENSE_SOFTMAX) {
            for (n = 0; n < N; n++) { y[n] = rnn_dense_exp(y[n] - top); sum += y[n]; }
            for (n = 0; n < N; n++) y[n] /= sum;
        } else {
            /* the exps in a vectorised loop, then summed in order (the same bits) */
            float e[64];
            for (size_t n0 = 0; n0 < N; n0 += 64) {
                const size_t c = N - n0 < 64 ? N - n0 : 64;
                for (n = 0; n < c; n++) e[n] = rnn_dense_exp(y[n0 + n] - top);
                for (n = 0; n < c; n++) sum += e[n];
            }
            const float shift = top + logf(sum);
            for (n = 0; n < N; n++) y[n] -= shift;
        }
        break;
    }
    default:
        break;
    }
}

static void rnn_dense_row(const float *restrict x, size_t K, const float *restrict w, size_t N,
                          const float *restrict b, float fill, float *restrict y, int act)
{
    size_t n;
    if (b != NULL) {
        for (n = 0; n < N; n++) y[n] = b[n];
    } else {
        for (n = 0; n < N; n++) y[n] = fill;
    }
    rnn_dense_product(x, K, w, N, y);
    rnn_dense_activate(y, N, act);
}

/* Four rows at a time: y[r] (+)= x[r] @ w for r < 4, 16 columns of the four rows held in
 * eight 8-float vectors through the whole of K, so each weight is loaded once per four rows
 * instead of once per row (a convolution's window rows, a pool's batch: M = 48, K = 256,
 * N = 258 took 165 us one row at a time). Sums in k order, each product fused into its sum
 * (fmaf), as in rnn_dense_product's scalar remainder. */
#if defined(__GNUC__) || defined(__clang__)
typedef float rnn_dense_v8 __attribute__((vector_size(32)));
#define RNN_DENSE_V8_LOAD(p) ({ rnn_dense_v8 v_; memcpy(&v_, (p), sizeof v_); v_; })
#define RNN_DENSE_V8_STORE(p, v) do { rnn_dense_v8 v_ = (v); memcpy((p), &v_, sizeof v_); } while (0)

RNN_DENSE_CLONES
static void rnn_dense_rows4(const float *restrict x, size_t K, const float *restrict w, size_t N,
                            float *restrict y)
{
    const float *x0 = x, *x1 = x + K, *x2 = x + 2 * K, *x3 = x + 3 * K;
    float *y0 = y, *y1 = y + N, *y2 = y + 2 * N, *y3 = y + 3 * N;
    size_t n = 0;
    for (; n + 16 <= N; n += 16) {
        rnn_dense_v8 a0 = RNN_DENSE_V8_LOAD(y0 + n), b0 = RNN_DENSE_V8_LOAD(y0 + n + 8);
        rnn_dense_v8 a1 = RNN_DENSE_V8_LOAD(y1 + n), b1 = RNN_DENSE_V8_LOAD(y1 + n + 8);
        rnn_dense_v8 a2 = RNN_DENSE_V8_LOAD(y2 + n), b2 = RNN_DENSE_V8_LOAD(y2 + n + 8);
        rnn_dense_v8 a3 = RNN_DENSE_V8_LOAD(y3 + n), b3 = RNN_DENSE_V8_LOAD(y3 + n + 8);
        for (size_t k = 0; k < K; k++) {
            const rnn_dense_v8 wa = RNN_DENSE_V8_LOAD(w + k * N + n);
            const rnn_dense_v8 wb = RNN_DENSE_V8_LOAD(w + k * N + n + 8);
            a0 += x0[k] * wa; b0 += x0[k] * wb;
            a1 += x1[k] * wa; b1 += x1[k] * wb;
            a2 += x2[k] * wa; b2 += x2[k] * wb;
            a3 += x3[k] * wa; b3 += x3[k] * wb;
        }
        RNN_DENSE_V8_STORE(y0 + n, a0); RNN_DENSE_V8_STORE(y0 + n + 8, b0);
        RNN_DENSE_V8_STORE(y1 + n, a1); RNN_DENSE_V8_STORE(y1 + n + 8, b1);
        RNN_DENSE_V8_STORE(y2 + n, a2); RNN_DENSE_V8_STORE(y2 + n + 8, b2);
        RNN_DENSE_V8_STORE(y3 + n, a3); RNN_DENSE_V8_STORE(y3 + n + 8, b3);
    }
    if (n < N)      /* the last columns: along each weight row (contiguous), not down it */
        for (size_t k = 0; k < K; k++) {
            const float *wk = w + k * N;
            for (size_t j = n; j < N; j++) {
                y0[j] += x0[k] * wk[j];
                y1[j] += x1[k] * wk[j];
                y2[j] += x2[k] * wk[j];
                y3[j] += x3[k] * wk[j];
            }
        }
}
#endif

#if defined(__GNUC__) && __GNUC__ >= 12 && defined(__x86_64__) && !defined(__clang__) && \
    defined(__linux__)
/* The same over 32 columns of six rows in twelve 16-float (zmm) vectors, for CPUs with
 * AVX-512 (32 vector registers): a wider tile than the clones above can share. The caller
 * checks __builtin_cpu_supports("avx512f"). */
typedef float rnn_dense_v16 __attribute__((vector_size(64)));
#define RNN_DENSE_V16_LOAD(p) ({ rnn_dense_v16 v_; memcpy(&v_, (p), sizeof v_); v_; })
#define RNN_DENSE_V16_STORE(p, v) do { rnn_dense_v16 v_ = (v); memcpy((p), &v_, sizeof v_); } while (0)
#define RNN_DENSE_WIDE 1

__attribute__((target("arch=x86-64-v4"), optimize("fp-contract=fast")))
static void rnn_dense_rows6_avx512(const float *restrict x, size_t K, const float *restrict w,
                                   size_t N, float *restrict y, size_t n_end)
{
    const float *x0 = x, *x1 = x + K, *x2 = x + 2 * K, *x3 = x + 3 * K, *x4 = x + 4 * K,
                *x5 = x + 5 * K;
    float *y0 = y, *y1 = y + N, *y2 = y + 2 * N, *y3 = y + 3 * N, *y4 = y + 4 * N,
          *y5 = y + 5 * N;
    for (size_t n = 0; n + 32 <= n_end; n += 32) {
        rnn_dense_v16 a0 = RNN_DENSE_V16_LOAD(y0 + n), b0 = RNN_DENSE_V16_LOAD(y0 + n + 16);
        rnn_dense_v16 a1 = RNN_DENSE_V16_LOAD(y1 + n), b1 = RNN_DENSE_V16_LOAD(y1 + n + 16);
        rnn_dense_v16 a2 = RNN_DENSE_V16_LOAD(y2 + n), b2 = RNN_DENSE_V16_LOAD(y2 + n + 16);
        rnn_dense_v16 a3 = RNN_DENSE_V16_LOAD(y3 + n), b3 = RNN_DENSE_V16_LOAD(y3 + n + 16);
        rnn_dense_v16 a4 = RNN_DENSE_V16_LOAD(y4 + n), b4 = RNN_DENSE_V16_LOAD(y4 + n + 16);
        rnn_dense_v16 a5 = RNN_DENSE_V16_LOAD(y5 + n), b5 = RNN_DENSE_V16_LOAD(y5 + n + 16);
        for (size_t k = 0; k < K; k++) {
            const rnn_dense_v16 wa = RNN_DENSE_V16_LOAD(w + k * N + n);
            const rnn_dense_v16 wb = RNN_DENSE_V16_LOAD(w + k * N + n + 16);
            a0 += x0[k] * wa; b0 += x0[k] * wb;
            a1 += x1[k] * wa; b1 += x1[k] * wb;
            a2 += x2[k] * wa; b2 += x2[k] * wb;
            a3 += x3[k] * wa; b3 += x3[k] * wb;
            a4 += x4[k] * wa; b4 += x4[k] * wb;
            a5 += x5[k] * wa; b5 += x5[k] * wb;
        }
        RNN_DENSE_V16_STORE(y0 + n, a0); RNN_DENSE_V16_STORE(y0 + n + 16, b0);
        RNN_DENSE_V16_STORE(y1 + n, a1); RNN_DENSE_V16_STORE(y1 + n + 16, b1);
        RNN_DENSE_V16_STORE(y2 + n, a2); RNN_DENSE_V16_STORE(y2 + n + 16, b2);
        RNN_DENSE_V16_STORE(y3 + n, a3); RNN_DENSE_V16_STORE(y3 + n + 16, b3);
        RNN_DENSE_V16_STORE(y4 + n, a4); RNN_DENSE_V16_STORE(y4 + n + 16, b4);
        RNN_DENSE_V16_STORE(y5 + n, a5); RNN_DENSE_V16_STORE(y5 + n + 16, b5);
    }
}
#else
#define RNN_DENSE_WIDE 0
#endif

#if defined(__GNUC__) || defined(__clang__)
/* Rows of the same product on a copy of w padded with zero columns to Np, a multiple of 32
 * (so the tiles below cover every column), each group of rows summed into the scratch yp
 * [6][Np] and its first N columns copied out: a head of 30 classes over 100 frames took 32 us
 * with 14 of its columns summed one at a time, since the tiles are 16 or 32 wide. Each column
 * is the same k-ordered fused sum as in the tiles, so the padding changes no bits. Returns the
 * rows done (a multiple of 4; 0 if the copy could not be allocated). */
static size_t rnn_dense_padded(const float *x, size_t M, size_t K, const float *w, size_t N,
                               const float *b, const float *rb, float *y, int act)
{
    const size_t Np = (N + 31) & ~(size_t)31;
    size_t m = 0;
    if (K > ((size_t)1 << 40) / Np)
        return 0;
    float *wp = (float *)malloc((K * Np + 6 * Np) * sizeof(float));
    if (wp == NULL)
        return 0;
    float *yp = wp + K * Np;
    for (size_t k = 0; k < K; k++) {
        memcpy(wp + k * Np, w + k * N, N * sizeof(float));
        memset(wp + k * Np + N, 0, (Np - N) * sizeof(float));
    }
    for (;;) {
        size_t rows = 0;
#if RNN_DENSE_WIDE
        if (M - m >= 6 && __builtin_cpu_supports("avx512f"))
            rows = 6;
#endif
        if (!rows && M - m >= 4)
            rows = 4;
        if (!rows)
            break;
        for (size_t r = 0; r < rows; r++)
            for (size_t n = 0; n < Np; n++)
                yp[r * Np + n] = b != NULL ? (n < N ? b[n] : 0.0f) : RNN_DENSE_FILL(rb, m + r);
#if RNN_DENSE_WIDE
        if (rows == 6)
            rnn_dense_rows6_avx512(x + m * K, K, wp, Np, yp, Np);
        else
#endif
            rnn_dense_rows4(x + m * K, K, wp, Np, yp);
        for (size_t r = 0; r < rows; r++) {
            memcpy(y + (m + r) * N, yp + r * Np, N * sizeof(float));
            rnn_dense_activate(y + (m + r) * N, N, act);
        }
        m += rows;
    }
    free(wp);
    return m;
}
#endif

/* rnn_dense with a bias per row instead (rb [M] or NULL; b NULL then): a convolution's
 * channels are the rows of its product, so their bias is added as each row's sums start, and
 * act (ReLU) is applied while the row is in cache, instead of two more passes over y. */
static void rnn_dense_rows_bias(const float *x, size_t M, size_t K, const float *w, size_t N,
                                const float *b, const float *rb, float *y, int act)
{
    size_t m = 0;
#if defined(__GNUC__) || defined(__clang__)
    /* four rows or more with 4 or more columns past the 32-wide tiles: pad them instead */
    if (M >= 4 && N % 32 >= 4)
        m = rnn_dense_padded(x, M, K, w, N, b, rb, y, act);
#endif
#if RNN_DENSE_WIDE
    /* columns of whole 32-wide tiles, six rows at a time, on AVX-512; the rest below */
    const size_t wide = N & ~(size_t)31;
    if (M >= 6 && wide && __builtin_cpu_supports("avx512f")) {
        for (; m + 6 <= M; m += 6) {
            float *ym = y + m * N;
            for (size_t r = 0; r < 6; r++)
                for (size_t n = 0; n < N; n++)
                    ym[r * N + n] = b != NULL ? b[n] : RNN_DENSE_FILL(rb, m + r);
            rnn_dense_rows6_avx512(x + m * K, K, w, N, ym, wide);
            for (size_t r = 0; r < 6; r++) {      /* the columns past the tiles, a row each */
                const float *xr = x + (m + r) * K;
                for (size_t k = 0; k < K; k++)
                    for (size_t n = wide; n < N; n++) ym[r * N + n] += xr[k] * w[k * N + n];
                rnn_dense_activate(ym + r * N, N, act);
            }
        }
    }
#endif
#if defined(__GNUC__) || defined(__clang__)
    for (; m + 4 <= M; m += 4) {
        float *ym = y + m * N;
        for (size_t r = 0; r < 4; r++)
            for (size_t n = 0; n < N; n++)
                ym[r * N + n] = b != NULL ? b[n] : RNN_DENSE_FILL(rb, m + r);
        rnn_dense_rows4(x + m * K, K, w, N, ym);
        for (size_t r = 0; r < 4; r++) rnn_dense_activate(ym + r * N, N, act);
    }
#endif
    for (; m < M; m++)
        rnn_dense_row(x + m * K, K, w, N, b, RNN_DENSE_FILL(rb, m), y + m * N, act);
}

static void rnn_dense(const float *x, size_t M, size_t K, const float *w, size_t N,
                      const float *b, float *y, int act)
{
    rnn_dense_rows_bias(x, M, K, w, N, b, NULL, y, act);
}

#endif

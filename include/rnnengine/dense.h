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
#include <string.h>

enum rnn_dense_act {
    RNN_DENSE_NONE = 0,
    RNN_DENSE_RELU = 1,
    RNN_DENSE_SIGMOID = 2,
    RNN_DENSE_TANH = 3,
    RNN_DENSE_SOFTMAX = 4,
    RNN_DENSE_LOGSOFTMAX = 5
};

/* The product is compiled twice (AVX2+FMA and baseline), chosen at load by the ifunc
 * resolver, as the build has no -march (setup.py). */
#if defined(__GNUC__) && defined(__x86_64__) && !defined(__clang__) && defined(__linux__)
#define RNN_DENSE_CLONES __attribute__((target_clones("arch=haswell", "default")))
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
            for (n = 0; n < N; n++) sum += rnn_dense_exp(y[n] - top);
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
                          const float *restrict b, float *restrict y, int act)
{
    size_t n;
    if (b != NULL) {
        for (n = 0; n < N; n++) y[n] = b[n];
    } else {
        for (n = 0; n < N; n++) y[n] = 0.0f;
    }
    rnn_dense_product(x, K, w, N, y);
    rnn_dense_activate(y, N, act);
}

static void rnn_dense(const float *x, size_t M, size_t K, const float *w, size_t N,
                      const float *b, float *y, int act)
{
    for (size_t m = 0; m < M; m++) rnn_dense_row(x + m * K, K, w, N, b, y + m * N, act);
}

#endif

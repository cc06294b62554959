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
    switch (act) {
    case RNN_DENSE_RELU:
        for (n = 0; n < N; n++) y[n] = y[n] > 0.0f ? y[n] : (y[n] == y[n] ? 0.0f : y[n]);
        break;
    case RNN_DENSE_SIGMOID:
        /* exp(-v) overflows to inf for v < -88.7: 1 / inf = 0, the float32 limit */
        for (n = 0; n < N; n++) y[n] = 1.0f / (1.0f + expf(-y[n]));
        break;
    case RNN_DENSE_TANH:
        for (n = 0; n < N; n++) y[n] = tanhf(y[n]);
        break;
    case RNN_DENSE_SOFTMAX:
    case RNN_DENSE_LOGSOFTMAX: {
        float top = -INFINITY, sum = 0.0f;
        for (n = 0; n < N; n++) top = y[n] > top ? y[n] : top;
        if (act == RNN_DENSE_SOFTMAX) {
            for (n = 0; n < N; n++) { y[n] = expf(y[n] - top); sum += y[n]; }
            for (n = 0; n < N; n++) y[n] /= sum;
        } else {
            for (n = 0; n < N; n++) sum += expf(y[n] - top);
            const float shift = top + logf(sum);
            for (n = 0; n < N; n++) y[n] -= shift;
        }
        break;
    }
    default:
        break;
    }
}

static void rnn_dense(const float *x, size_t M, size_t K, const float *w, size_t N,
                      const float *b, float *y, int act)
{
    for (size_t m = 0; m < M; m++) rnn_dense_row(x + m * K, K, w, N, b, y + m * N, act);
}

#endif

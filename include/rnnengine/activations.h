/* The eleven ONNX recurrent activations, portable C.
 *
 * Codes match rnnengine/layers.py ACTIVATIONS. Each is applied in place over a row of n floats;
 * the switch sits outside the loop so every loop is a plain, vectorizable one. These serial
 * versions are the fallback on every ISA and the reference for the SIMD ones.
 */
#ifndef RNNENGINE_ACTIVATIONS_H
#define RNNENGINE_ACTIVATIONS_H

#include <math.h>

enum rnn_activation {
    RNN_ACT_RELU = 0,
    RNN_ACT_TANH = 1,
    RNN_ACT_SIGMOID = 2,
    RNN_ACT_AFFINE = 3,
    RNN_ACT_LEAKYRELU = 4,
    RNN_ACT_THRESHOLDEDRELU = 5,
    RNN_ACT_SCALEDTANH = 6,
    RNN_ACT_HARDSIGMOID = 7,
    RNN_ACT_ELU = 8,
    RNN_ACT_SOFTSIGN = 9,
    RNN_ACT_SOFTPLUS = 10,
    RNN_ACT_COUNT = 11
};

typedef struct {
    int code;
    float alpha;
    float beta;
} rnn_activation_t;

static inline float rnn_sigmoid_f32_serial(float x) {
    return 1.0f / (1.0f + expf(-x));
}

/* Softplus written so that large x neither overflows exp nor loses precision. */
static inline float rnn_softplus_f32_serial(float x) {
    return x > 0.0f ? x + log1pf(expf(-x)) : log1pf(expf(x));
}

static inline void rnn_activate_f32_serial(rnn_activation_t act, float *restrict x, int n) {
    const float a = act.alpha, b = act.beta;
    int i;
    switch (act.code) {
    case RNN_ACT_RELU:
        for (i = 0; i < n; i++) x[i] = x[i] > 0.0f ? x[i] : 0.0f;
        break;
    case RNN_ACT_TANH:
        for (i = 0; i < n; i++) x[i] = tanhf(x[i]);
        break;
    case RNN_ACT_SIGMOID:
        for (i = 0; i < n; i++) x[i] = rnn_sigmoid_f32_serial(x[i]);
        break;
    case RNN_ACT_AFFINE:
        for (i = 0; i < n; i++) x[i] = a * x[i] + b;
        break;
    case RNN_ACT_LEAKYRELU:
        for (i = 0; i < n; i++) x[i] = x[i] >= 0.0f ? x[i] : a * x[i];
        break;
    case RNN_ACT_THRESHOLDEDRELU:
        for (i = 0; i < n; i++) x[i] = x[i] > a ? x[i] : 0.0f;
        break;
    case RNN_ACT_SCALEDTANH:
        for (i = 0; i < n; i++) x[i] = a * tanhf(b * x[i]);
        break;
    case RNN_ACT_HARDSIGMOID:
        for (i = 0; i < n; i++) {
            float y = a * x[i] + b;
            x[i] = y < 0.0f ? 0.0f : (y > 1.0f ? 1.0f : y);
        }
        break;
    case RNN_ACT_ELU:
        for (i = 0; i < n; i++) x[i] = x[i] >= 0.0f ? x[i] : a * (expf(x[i]) - 1.0f);
        break;
    case RNN_ACT_SOFTSIGN:
        for (i = 0; i < n; i++) x[i] = x[i] / (1.0f + fabsf(x[i]));
        break;
    case RNN_ACT_SOFTPLUS:
        for (i = 0; i < n; i++) x[i] = rnn_softplus_f32_serial(x[i]);
        break;
    default:
        break; /* unreachable: codes are validated in Python before any kernel runs */
    }
}

/* Clamp to [-c, c]; c <= 0 means no clip. NaN passes through unchanged. */
static inline void rnn_clip_f32_serial(float c, float *restrict x, int n) {
    if (!(c > 0.0f)) return;
    for (int i = 0; i < n; i++) x[i] = x[i] > c ? c : (x[i] < -c ? -c : x[i]);
}

#endif

/* The eleven ONNX recurrent activations: codes and parameters.
 *
 * Codes match rnnengine/core/layers.py ACTIVATIONS. The vectorized implementations (one per ISA)
 * are in math_impl.h; this header holds what every variant shares.
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

/* Softplus written so that large x neither overflows exp nor loses precision. It is rare in
 * recurrent nets, so every variant applies this scalar libm version lane by lane. */
static inline float rnn_softplus_f32_scalar(float x) {
    return x > 0.0f ? x + log1pf(expf(-x)) : log1pf(expf(x));
}

#endif

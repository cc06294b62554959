/* Vectorized exp, sigmoid, tanh and the eleven activations, written once over the operations
 * of a vec_<isa>.h and compiled once per variant (no include guard: kernels.h includes it per
 * ISA). RNN_FN(name) gives the variant's name, e.g. rnn_tanh_f32_avx512.
 *
 * Accuracy (tests/test_kernels.py checks it against float64 NumPy): exp within ~2 ulp over
 * [-87, 88], sigmoid and tanh within ~3e-7 absolute, enough to keep every fidelity test at
 * 1e-5 after hundreds of steps. NaN inputs give NaN. Inputs beyond the clamp saturate.
 */

/* exp(x): Cody-Waite reduction x = n ln2 + r, |r| <= ln2/2, and Cephes' degree-7 polynomial
 * for exp(r); clamped so 2^n stays a normal float. */
static inline rnn_v RNN_FN(rnn_exp)(rnn_v x) {
    x = v_min(v_set1(88.0f), v_max(v_set1(-87.0f), x));
    rnn_v n = v_round(v_mul(x, v_set1(1.44269504088896341f)));
    rnn_v r = v_fnmadd(n, v_set1(0.693359375f), x);
    r = v_fnmadd(n, v_set1(-2.12194440e-4f), r);
    rnn_v p = v_set1(1.9875691500e-4f);
    p = v_fmadd(p, r, v_set1(1.3981999507e-3f));
    p = v_fmadd(p, r, v_set1(8.3334519073e-3f));
    p = v_fmadd(p, r, v_set1(4.1665795894e-2f));
    p = v_fmadd(p, r, v_set1(1.6666665459e-1f));
    p = v_fmadd(p, r, v_set1(5.0000001201e-1f));
    p = v_fmadd(v_mul(p, r), r, v_add(r, v_set1(1.0f)));
    return v_pow2n_mul(p, n);
}

static inline rnn_v RNN_FN(rnn_sigmoid)(rnn_v x) {
    const rnn_v one = v_set1(1.0f);
    return v_rcp(v_add(one, RNN_FN(rnn_exp)(v_sub(v_zero(), x))));
}

/* tanh: 1 - 2/(exp(2|x|) + 1) with x's sign, except for |x| < 0.625 where that form cancels
 * and Cephes' odd polynomial x + x^3 P(x^2) is used instead. */
static inline rnn_v RNN_FN(rnn_tanh)(rnn_v x) {
    const rnn_v one = v_set1(1.0f);
    rnn_v ax = v_abs(x);
    rnn_v z = v_mul(x, x);
    rnn_v p = v_set1(-5.70498872745e-3f);
    p = v_fmadd(p, z, v_set1(2.06390887954e-2f));
    p = v_fmadd(p, z, v_set1(-5.37397155531e-2f));
    p = v_fmadd(p, z, v_set1(1.33314422036e-1f));
    p = v_fmadd(p, z, v_set1(-3.33332819422e-1f));
    rnn_v small = v_fmadd(v_mul(p, z), x, x);
    rnn_v e = RNN_FN(rnn_exp)(v_add(ax, ax));
    rnn_v big = v_fnmadd(v_set1(2.0f), v_rcp(v_add(e, one)), one);
    return v_sel_lt(ax, v_set1(0.625f), small, v_copysign(big, x));
}

/* Softplus lane by lane through the scalar libm version (rare; see activations.h). */
static inline rnn_v RNN_FN(rnn_softplus)(rnn_v x) {
    float lanes[RNN_VL];
    v_store(lanes, x);
    for (int i = 0; i < RNN_VL; i++) lanes[i] = rnn_softplus_f32_scalar(lanes[i]);
    return v_load(lanes);
}

/* One activation on one vector. The switch is per vector, outside any loop over k, and always
 * takes the same branch for a given gate, so it costs next to nothing. Semantics match ONNX
 * Runtime's (rnn_helpers.h), including where NaN goes. */
static inline rnn_v RNN_FN(rnn_act)(const rnn_activation_t *a, rnn_v x) {
    const rnn_v zero = v_zero(), one = v_set1(1.0f);
    switch (a->code) {
    case RNN_ACT_SIGMOID:
        return RNN_FN(rnn_sigmoid)(x);
    case RNN_ACT_TANH:
        return RNN_FN(rnn_tanh)(x);
    case RNN_ACT_RELU:
        return v_sel_gt(x, zero, x, zero);
    case RNN_ACT_AFFINE:
        return v_fmadd(v_set1(a->alpha), x, v_set1(a->beta));
    case RNN_ACT_LEAKYRELU:
        return v_sel_lt(x, zero, v_mul(v_set1(a->alpha), x), x);
    case RNN_ACT_THRESHOLDEDRELU:
        return v_sel_gt(x, v_set1(a->alpha), x, zero);
    case RNN_ACT_SCALEDTANH:
        return v_mul(v_set1(a->alpha), RNN_FN(rnn_tanh)(v_mul(v_set1(a->beta), x)));
    case RNN_ACT_HARDSIGMOID: {
        rnn_v y = v_fmadd(v_set1(a->alpha), x, v_set1(a->beta));
        return v_min(one, v_max(zero, y));
    }
    case RNN_ACT_ELU:
        return v_sel_lt(x, zero,
                        v_mul(v_set1(a->alpha), v_sub(RNN_FN(rnn_exp)(x), one)), x);
    case RNN_ACT_SOFTSIGN:
        return v_div(x, v_add(one, v_abs(x)));
    case RNN_ACT_SOFTPLUS:
        return RNN_FN(rnn_softplus)(x);
    default:
        return x; /* unreachable: codes are validated in Python before any kernel runs */
    }
}

/* Clamp to [-clip, clip] when clip > 0; NaN passes through (v_max/v_min keep operand 2). */
static inline rnn_v RNN_FN(rnn_clip)(float clip, rnn_v x) {
    if (!(clip > 0.0f)) return x;
    return v_min(v_set1(clip), v_max(v_set1(-clip), x));
}

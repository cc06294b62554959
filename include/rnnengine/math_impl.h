/* Vectorized exp, sigmoid, tanh and the eleven activations, written once over the operations
 * of a vec_<isa>.h and compiled once per variant (no include guard: kernels.h includes it per
 * ISA). RNN_FN(name) gives the variant's name, e.g. rnn_tanh_avx512.
 *
 * Accuracy (tests/test_kernels.py checks it against float64 NumPy): exp within ~2 ulp over
 * [-87, 88], sigmoid and tanh within ~3e-7 absolute, enough to keep every fidelity test at
 * 1e-5 after hundreds of steps. NaN inputs give NaN. Inputs beyond the clamp saturate.
 */

/* exp(x): Cody-Waite reduction x = n ln2 + r, |r| <= ln2/2, and Cephes' degree-7 polynomial
 * for exp(r); clamped so 2^n stays a normal float. */
static inline rnn_v RNN_FN(rnn_exp)(rnn_v x) {
    x = rnn_v_min(rnn_v_set1(88.0f), rnn_v_max(rnn_v_set1(-87.0f), x));
    rnn_v n = rnn_v_round(rnn_v_mul(x, rnn_v_set1(1.44269504088896341f)));
    rnn_v r = rnn_v_fnmadd(n, rnn_v_set1(0.693359375f), x);
    r = rnn_v_fnmadd(n, rnn_v_set1(-2.12194440e-4f), r);
    rnn_v p = rnn_v_set1(1.9875691500e-4f);
    p = rnn_v_fmadd(p, r, rnn_v_set1(1.3981999507e-3f));
    p = rnn_v_fmadd(p, r, rnn_v_set1(8.3334519073e-3f));
    p = rnn_v_fmadd(p, r, rnn_v_set1(4.1665795894e-2f));
    p = rnn_v_fmadd(p, r, rnn_v_set1(1.6666665459e-1f));
    p = rnn_v_fmadd(p, r, rnn_v_set1(5.0000001201e-1f));
    p = rnn_v_fmadd(rnn_v_mul(p, r), r, rnn_v_add(r, rnn_v_set1(1.0f)));
    return rnn_v_pow2n_mul(p, n);
}

static inline rnn_v RNN_FN(rnn_sigmoid)(rnn_v x) {
    const rnn_v one = rnn_v_set1(1.0f);
    return rnn_v_rcp(rnn_v_add(one, RNN_FN(rnn_exp)(rnn_v_sub(rnn_v_zero(), x))));
}

/* tanh: 1 - 2/(exp(2|x|) + 1) with x's sign, except for |x| < 0.625 where that form cancels
 * and Cephes' odd polynomial x + x^3 P(x^2) is used instead. */
static inline rnn_v RNN_FN(rnn_tanh)(rnn_v x) {
    const rnn_v one = rnn_v_set1(1.0f);
    rnn_v ax = rnn_v_abs(x);
    rnn_v z = rnn_v_mul(x, x);
    rnn_v p = rnn_v_set1(-5.70498872745e-3f);
    p = rnn_v_fmadd(p, z, rnn_v_set1(2.06390887954e-2f));
    p = rnn_v_fmadd(p, z, rnn_v_set1(-5.37397155531e-2f));
    p = rnn_v_fmadd(p, z, rnn_v_set1(1.33314422036e-1f));
    p = rnn_v_fmadd(p, z, rnn_v_set1(-3.33332819422e-1f));
    rnn_v small = rnn_v_fmadd(rnn_v_mul(p, z), x, x);
    rnn_v e = RNN_FN(rnn_exp)(rnn_v_add(ax, ax));
    rnn_v big = rnn_v_fnmadd(rnn_v_set1(2.0f), rnn_v_rcp(rnn_v_add(e, one)), one);
    return rnn_v_sel_lt(ax, rnn_v_set1(0.625f), small, rnn_v_copysign(big, x));
}

/* Softplus lane by lane through the scalar libm version (rare; see activations.h). */
static inline rnn_v RNN_FN(rnn_softplus)(rnn_v x) {
    float lanes[RNN_VL];
    rnn_v_store(lanes, x);
    for (int i = 0; i < RNN_VL; i++) lanes[i] = rnn_softplus_f32_scalar(lanes[i]);
    return rnn_v_load(lanes);
}

/* One activation on one vector. The switch is per vector, outside any loop over k, and always
 * takes the same branch for a given gate, so it costs next to nothing. Semantics match ONNX
 * Runtime's (rnn_helpers.h), including where NaN goes. */
static inline rnn_v RNN_FN(rnn_act)(const rnn_activation_t *a, rnn_v x) {
    const rnn_v zero = rnn_v_zero(), one = rnn_v_set1(1.0f);
    switch (a->code) {
    case RNN_ACT_SIGMOID:
        return RNN_FN(rnn_sigmoid)(x);
    case RNN_ACT_TANH:
        return RNN_FN(rnn_tanh)(x);
    case RNN_ACT_RELU:
        return rnn_v_sel_gt(x, zero, x, zero);
    case RNN_ACT_AFFINE:
        return rnn_v_fmadd(rnn_v_set1(a->alpha), x, rnn_v_set1(a->beta));
    case RNN_ACT_LEAKYRELU:
        return rnn_v_sel_lt(x, zero, rnn_v_mul(rnn_v_set1(a->alpha), x), x);
    case RNN_ACT_THRESHOLDEDRELU:
        return rnn_v_sel_gt(x, rnn_v_set1(a->alpha), x, zero);
    case RNN_ACT_SCALEDTANH:
        return rnn_v_mul(rnn_v_set1(a->alpha), RNN_FN(rnn_tanh)(rnn_v_mul(rnn_v_set1(a->beta), x)));
    case RNN_ACT_HARDSIGMOID: {
        rnn_v y = rnn_v_fmadd(rnn_v_set1(a->alpha), x, rnn_v_set1(a->beta));
        return rnn_v_min(one, rnn_v_max(zero, y));
    }
    case RNN_ACT_ELU:
        return rnn_v_sel_lt(x, zero,
                        rnn_v_mul(rnn_v_set1(a->alpha), rnn_v_sub(RNN_FN(rnn_exp)(x), one)), x);
    case RNN_ACT_SOFTSIGN:
        return rnn_v_div(x, rnn_v_add(one, rnn_v_abs(x)));
    case RNN_ACT_SOFTPLUS:
        return RNN_FN(rnn_softplus)(x);
    default:
        return x; /* unreachable: codes are validated in Python before any kernel runs */
    }
}

/* Clamp to [-clip, clip] when clip > 0; NaN passes through (rnn_v_max/rnn_v_min keep operand 2). */
static inline rnn_v RNN_FN(rnn_clip)(float clip, rnn_v x) {
    if (!(clip > 0.0f)) return x;
    return rnn_v_min(rnn_v_set1(clip), rnn_v_max(rnn_v_set1(-clip), x));
}

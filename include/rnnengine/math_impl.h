/* Vectorized exp, sigmoid, tanh and the eleven activations, written once over the operations
 * of a vec_<isa>.h and compiled once per variant (no include guard: kernels.h includes it per
 * ISA). RNN_FN(name) gives the variant's name, e.g. rnn_tanh_avx512.
 *
 * Accuracy (tests/core/test_kernels.py checks it against float64 NumPy): exp within ~2 ulp over
 * [-87, 88], sigmoid within ~3e-7 and tanh within 4e-7 absolute, enough to keep every fidelity test at
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


/* tanh: the odd 13/6 rational minimax form Eigen uses for float (Eigen's
 * generic_fast_tanh_float coefficients), on x clamped to +-7.9053111. Max |error| 3.9e-7 (near |x| = 5.8, a few ulp of values near 1; under 1e-7
 * for |x| < 1). Against the exp form it replaced (1 - 2/(exp(2|x|) + 1), with a polynomial
 * below 0.625: both computed and blended), the LSTM gate math of a batch-16 H=256 step took
 * 5.1 us instead of 6.5 us. NaN propagates through the clamp (rnn_v_max/rnn_v_min keep
 * operand 2). */
static inline rnn_v RNN_FN(rnn_tanh)(rnn_v x) {
    const rnn_v lim = rnn_v_set1(7.90531110763549805f);
    const rnn_v xc = rnn_v_min(lim, rnn_v_max(rnn_v_sub(rnn_v_zero(), lim), x));
    const rnn_v z = rnn_v_mul(xc, xc);
    rnn_v p = rnn_v_set1(-2.76076847742355e-16f);
    p = rnn_v_fmadd(p, z, rnn_v_set1(2.00018790482477e-13f));
    p = rnn_v_fmadd(p, z, rnn_v_set1(-8.60467152213735e-11f));
    p = rnn_v_fmadd(p, z, rnn_v_set1(5.12229709037114e-08f));
    p = rnn_v_fmadd(p, z, rnn_v_set1(1.48572235717979e-05f));
    p = rnn_v_fmadd(p, z, rnn_v_set1(6.37261928875436e-04f));
    p = rnn_v_fmadd(p, z, rnn_v_set1(4.89352455891786e-03f));
    rnn_v q = rnn_v_set1(1.19825839466702e-06f);
    q = rnn_v_fmadd(q, z, rnn_v_set1(1.18534705686654e-04f));
    q = rnn_v_fmadd(q, z, rnn_v_set1(2.26843463243900e-03f));
    q = rnn_v_fmadd(q, z, rnn_v_set1(4.89352518554385e-03f));
    const rnn_v r = rnn_v_div(rnn_v_mul(p, xc), q);
    /* evaluated with FMAs the clamped form ends 4 ulp short of 1; beyond 9, where tanh
     * rounds to 1 in float, saturate exactly (NaN: the comparison is false, r is NaN) */
    return rnn_v_sel_gt(rnn_v_abs(x), rnn_v_set1(9.0f), rnn_v_copysign(rnn_v_set1(1.0f), x), r);
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

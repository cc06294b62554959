/* One ISA variant of the Conv1d kernel (no include guard: conv.h includes this file once per
 * variant after defining RNN_CV_VL (floats per vector), RNN_CV_NAME(x) (a name with the
 * variant's suffix) and RNN_CV_TARGET (its target attribute, or nothing)).
 *
 * Output channels go in panels of RNN_CV_MR = 2 vectors; the product of one panel with
 * up to RNN_CONV_NR columns keeps 2 * NR vector accumulators in registers and reads each
 * packed weight once per column group. With GCC/Clang the vectors are the compilers' generic
 * vector types (lowered to AVX2, AVX-512, SSE or NEON); other compilers get plain loops.
 */

#define RNN_CV_MR (2 * RNN_CV_VL)

#if RNN_CONV_VECTORS
typedef float RNN_CV_NAME(rnn_cv_vec) __attribute__((vector_size(4 * RNN_CV_VL)));
#define RNN_CV_VEC RNN_CV_NAME(rnn_cv_vec)

RNN_CV_TARGET static inline __attribute__((always_inline)) RNN_CV_VEC RNN_CV_NAME(rnn_cv_load)(
    const float *p) {
    RNN_CV_VEC v;
    memcpy(&v, p, sizeof v);   /* an unaligned vector load */
    return v;
}

/* out[r * MR + m] = bias[m] + sum_k cols[k * NR + r] * w[k * MR + m], r < nr; nr is a
 * constant at every call site, so the loops over r unroll and the accumulators stay in
 * registers. */
RNN_CV_TARGET static inline __attribute__((always_inline)) void RNN_CV_NAME(rnn_cv_tile)(
    const float *restrict cols, size_t CK, const float *restrict w,
    const float *restrict bias, float *restrict out, const int nr) {
    RNN_CV_VEC a0[RNN_CONV_NR], a1[RNN_CONV_NR];
    const RNN_CV_VEC b0 = RNN_CV_NAME(rnn_cv_load)(bias);
    const RNN_CV_VEC b1 = RNN_CV_NAME(rnn_cv_load)(bias + RNN_CV_VL);
    for (int r = 0; r < nr; r++) {
        a0[r] = b0;
        a1[r] = b1;
    }
    for (size_t k = 0; k < CK; k++) {
        const RNN_CV_VEC w0 = RNN_CV_NAME(rnn_cv_load)(w + k * RNN_CV_MR);
        const RNN_CV_VEC w1 = RNN_CV_NAME(rnn_cv_load)(w + k * RNN_CV_MR + RNN_CV_VL);
        const float *c = cols + k * RNN_CONV_NR;
        for (int r = 0; r < nr; r++) {
            a0[r] += c[r] * w0;   /* the scalar is broadcast */
            a1[r] += c[r] * w1;
        }
    }
    for (int r = 0; r < nr; r++) {
        memcpy(out + r * RNN_CV_MR, &a0[r], sizeof a0[r]);
        memcpy(out + r * RNN_CV_MR + RNN_CV_VL, &a1[r], sizeof a1[r]);
    }
}
#undef RNN_CV_VEC
#else
static void RNN_CV_NAME(rnn_cv_tile)(const float *cols, size_t CK, const float *w,
                                     const float *bias, float *out, const int nr) {
    for (int r = 0; r < nr; r++)
        for (int m = 0; m < RNN_CV_MR; m++) out[r * RNN_CV_MR + m] = bias[m];
    for (size_t k = 0; k < CK; k++)
        for (int r = 0; r < nr; r++) {
            const float x = cols[k * RNN_CONV_NR + r];
            for (int m = 0; m < RNN_CV_MR; m++) out[r * RNN_CV_MR + m] += x * w[k * RNN_CV_MR + m];
        }
}
#endif

/* The columns base .. base + J - 1 (cols holds their group g at g * CK * NR) through every
 * panel. Panel-major: one panel's weights (CK * MR floats) stay in L1 while the groups
 * stream past them. */
RNN_CV_TARGET
static void RNN_CV_NAME(rnn_cv_panels)(const rnn_conv1d_t *cv, const float *cols, size_t base,
                                       size_t J, const float *wp, const float *bp, float *tile,
                                       float *y) {
    const size_t CK = cv->C * cv->KW, panels = rnn_conv_panels(cv->M, RNN_CV_MR);
    for (size_t p = 0; p < panels; p++) {
        const float *w = wp + p * CK * RNN_CV_MR, *b = bp + p * RNN_CV_MR;
        for (size_t j0 = 0; j0 < J; j0 += RNN_CONV_NR) {
            const int nr = (int)(J - j0 < RNN_CONV_NR ? J - j0 : RNN_CONV_NR);
            const float *c = cols + (j0 / RNN_CONV_NR) * CK * RNN_CONV_NR;
            switch (nr) {   /* a constant nr per call: see rnn_cv_tile */
            case 1: RNN_CV_NAME(rnn_cv_tile)(c, CK, w, b, tile, 1); break;
            case 2: RNN_CV_NAME(rnn_cv_tile)(c, CK, w, b, tile, 2); break;
            case 3: RNN_CV_NAME(rnn_cv_tile)(c, CK, w, b, tile, 3); break;
            case 4: RNN_CV_NAME(rnn_cv_tile)(c, CK, w, b, tile, 4); break;
            case 5: RNN_CV_NAME(rnn_cv_tile)(c, CK, w, b, tile, 5); break;
            default: RNN_CV_NAME(rnn_cv_tile)(c, CK, w, b, tile, RNN_CONV_NR); break;
            }
            rnn_conv_store(cv, tile, RNN_CV_MR, nr, p * RNN_CV_MR, base + j0, y);
        }
    }
}

#undef RNN_CV_MR

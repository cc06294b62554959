/* int8 GEMM entries of the NEON variant with integer products (no include guard: kernels.h
 * includes this file twice after the neon variant, before vec_undef.h): RNN_NEON_DOT 0 with
 * baseline AArch64 instructions, then RNN_NEON_DOT 1 inside a target region that adds dotprod
 * (ARMv8.2's optional dot product); the table takes the second only when the CPU reports it
 * (cpu.h: RNN_CPU_ASIMDDP).
 *
 *   rnn_gemm_i8_neonsmull, rnn_gemm_i8r_neonsmull   SMULL/SMULL2 of 8 byte pairs into 16
 *                     bits, ADDP of neighbouring products (two k's of a unit: at most
 *                     2 * 127 * 127 < 32767), SADALP into the unit's int32 sum: 4
 *                     instructions per row per 16 products, no conversion of the weights
 *   rnn_gemm_i8_neondot, rnn_gemm_i8r_neondot       SDOT: one instruction per row per 16
 *                     products (4 units x a quad of k's)
 * Executed instructions under qemu for one 16-row LSTM product (G = 4, K = 256, both input
 * parts, quantization included): 674k with fp32 arithmetic on the converted weights (the
 * variant's generic entry, which the neon table used before), 212k SMULL, 102k SDOT.
 *
 * Both run gemm_entries.h's int8 entry (rnn_gemm_i8_body: inputs quantized per row in two
 * parts, q in [-127, 127], stored here as signed bytes, so no shift to take back as with
 * vpdpbusd) over the template's register-blocked tile (gemm_impl.h, RNN_GATE_PASS of
 * vec_neon.h), each accumulator an int32x4_t of 4 units. Integer sums are exact (up to
 * K = 133000) in any order, and the serial variant's fp32 sums of the same integer products
 * are exact too while below 2^24, so with the dequantization in the serial variant's order and
 * unfused (rnn_i8_finish_neon_int) these entries give the serial variant's bits: int8 results
 * do not depend on the CPU having dotprod, and they match the portable build.
 */

#if RNN_NEON_DOT
#define RNN_NEON_I8_ISA neondot
#else
#define RNN_NEON_I8_ISA neonsmull
#endif
#define RNN_NI8_(name, isa) name##_##isa
#define RNN_NI8_CAT(name, isa) RNN_NI8_(name, isa)
#define RNN_NI8(name) RNN_NI8_CAT(name, RNN_NEON_I8_ISA)

#ifndef RNNENGINE_GEMM_NEON_I8_SHARED
#define RNNENGINE_GEMM_NEON_I8_SHARED
/* Rows i and nb + i of buf (bytes, stride kp): x[0:kc]'s two parts as signed bytes, by the
 * rounding every int8 entry uses (rnn_quant_row), so the integers are the serial variant's. */
static inline void rnn_i8_quant_neon_int(void *buf, int i, int nb, int kp, const float *x,
                                         int kc, float inv) {
    float q[RNN_KC], q2[RNN_KC];
    int8_t *d = (int8_t *)buf + (size_t)i * kp, *d2 = (int8_t *)buf + (size_t)(nb + i) * kp;
    rnn_quant_row_neon(q, q2, x, kc, kp, inv);
    for (int k = 0; k < kp; k++) {
        d[k] = (int8_t)q[k];
        d2[k] = (int8_t)q2[k];
    }
}

/* a[0:units] += row i's two parts over one weight part, as the serial variant's
 * rnn_i8_finish computes it: t = s2 * (step / 254) + s1 * step, then a + t * scale, each
 * operation rounded on its own (no FMA: the serial variant has none). */
static inline void rnn_i8_finish_neon_int(float *a, const void *sums, int i, int nb, int units,
                                          float step, const float *scale,
                                          const int32_t *wsum) {
    const int32_t *s1 = (const int32_t *)sums + (size_t)i * units;
    const int32_t *s2 = (const int32_t *)sums + (size_t)(nb + i) * units;
    const float32x4_t s = vdupq_n_f32(step), f = vdupq_n_f32(step / RNN_I8_FINE);
    (void)wsum; /* signed inputs: no shift to take back */
    for (int o = 0; o < units; o += 4) {
        const float32x4_t t = vaddq_f32(vmulq_f32(vcvtq_f32_s32(vld1q_s32(s2 + o)), f),
                                        vmulq_f32(vcvtq_f32_s32(vld1q_s32(s1 + o)), s));
        vst1q_f32(a + o, vaddq_f32(vmulq_f32(t, vld1q_f32(scale + o)), vld1q_f32(a + o)));
    }
}
#endif

/* a[n][g][v] += the 4 units' quads at wk (group k) times row n's quad at in + n * ldin + k. */
RNN_INLINE void RNN_NI8(rnn_i8_step)(const int NB, const int G, int32x4_t *a, const int8_t *wk,
                                     const int8_t *in, size_t ldin, int k) {
    int8x16_t wv[4][4];
    _Pragma("GCC unroll 4") for (int g = 0; g < G; g++)
    _Pragma("GCC unroll 4") for (int v = 0; v < 4; v++)
        wv[g][v] = vld1q_s8(wk + ((size_t)g * RNN_BW + v * 4) * 4);
    _Pragma("GCC unroll 8") for (int n = 0; n < NB; n++) {
        int32_t quad;
        memcpy(&quad, in + (size_t)n * ldin + k, sizeof quad);
        const int8x16_t xb = vreinterpretq_s8_s32(vdupq_n_s32(quad));
        _Pragma("GCC unroll 4") for (int g = 0; g < G; g++)
        _Pragma("GCC unroll 4") for (int v = 0; v < 4; v++) {
            int32x4_t *acc = &a[(n * G + g) * 4 + v];
#if RNN_NEON_DOT
            *acc = vdotq_s32(*acc, wv[g][v], xb);
#else
            const int16x8_t lo = vmull_s8(vget_low_s8(wv[g][v]), vget_low_s8(xb));
            const int16x8_t hi = vmull_high_s8(wv[g][v], xb);
            *acc = vpadalq_s16(*acc, vpaddq_s16(lo, hi));
#endif
        }
    }
}

#define RNN_WT i8
#define RNN_GEMM_ISA RNN_NEON_I8_ISA
#define RNN_WT_T int8_t
#define RNN_KS 4
#define RNN_IN_T int8_t
#define RNN_ACC_T int32x4_t
#define RNN_ACC_E int32_t
#define RNN_ACC_LOAD(p) vld1q_s32(p)
#define RNN_ACC_STORE(p, a) vst1q_s32((p), (a))
#define RNN_ACC_ZERO() vdupq_n_s32(0)
#define RNN_ACC_ADD(a, b) vaddq_s32((a), (b))
#define RNN_PANEL_STEP(NB, G, a, wk, in, ldin, k) RNN_NI8(rnn_i8_step)(NB, G, a, wk, in, ldin, k)
#include "rnnengine/gemm_impl.h"

static inline void RNN_NI8(rnn_i8_panel)(int rows, int G, int kp, const int8_t *w,
                                         const void *buf, void *sums, int units) {
    RNN_NI8(rnn_panel_rows_i8)(rows, G, kp, w, (const int8_t *)buf, kp, (int32_t *)sums, units);
}

static void RNN_NI8(rnn_gemm_i8)(int ng, int G, int K, const void *w, const float *in,
                                 size_t ldin, float *acc, size_t ldacc, rnn_gemm_memo_t *memo) {
    (void)memo;
    rnn_gemm_i8_body_neon(1, ng, G, K, w, in, ldin, acc, ldacc, rnn_i8_quant_neon_int,
                          RNN_NI8(rnn_i8_panel), rnn_i8_finish_neon_int);
}

static void RNN_NI8(rnn_gemm_i8r)(int ng, int G, int K, const void *w, const float *in,
                                  size_t ldin, float *acc, size_t ldacc,
                                  rnn_gemm_memo_t *memo) {
    (void)memo;
    rnn_gemm_i8_body_neon(2, ng, G, K, w, in, ldin, acc, ldacc, rnn_i8_quant_neon_int,
                          RNN_NI8(rnn_i8_panel), rnn_i8_finish_neon_int);
}

#undef RNN_NEON_I8_ISA
#undef RNN_NI8_
#undef RNN_NI8_CAT
#undef RNN_NI8
#undef RNN_NEON_DOT

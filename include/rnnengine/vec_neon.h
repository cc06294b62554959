/* Vector operations for the AArch64 NEON variant (4 floats; a 16-unit block is 4 vectors).
 * Advanced SIMD, vector FDIV and the half <-> single conversions are all baseline AArch64, so
 * kernels.h needs no target pragma here. Included by kernels.h; vec_undef.h removes the names.
 *
 * 4-float vectors rather than pairs emulating 8: pairs would only hide the same instructions
 * behind a struct, and single vectors let the compiler allocate and schedule each one. The
 * sums are FMAs in gemm_impl.h's order over RNN_VL = 4, so results are the same bits for a
 * step, a sequence, any batch and any thread split, but not those of the serial variant (no
 * FMA, one part over K) or of avx2. */
#include <arm_neon.h>

#define RNN_ISA neon
#define RNN_VL 4
#define rnn_v float32x4_t
#define rnn_v_load(p) vld1q_f32(p)
#define rnn_v_store(p, a) vst1q_f32((p), (a))
#define rnn_v_set1(f) vdupq_n_f32(f)
#define rnn_v_zero() vdupq_n_f32(0.0f)
#define rnn_v_add(a, b) vaddq_f32((a), (b))
#define rnn_v_sub(a, b) vsubq_f32((a), (b))
#define rnn_v_mul(a, b) vmulq_f32((a), (b))
#define rnn_v_div(a, b) vdivq_f32((a), (b))
#define rnn_v_fmadd(a, b, c) vfmaq_f32((c), (a), (b))
#define rnn_v_fnmadd(a, b, c) vfmsq_f32((c), (a), (b))
/* 1/x by division, exact like the other variants' (FRECPE is only an 8-bit estimate). */
#define rnn_v_rcp(x) vdivq_f32(vdupq_n_f32(1.0f), (x))
/* The x86 semantics (and the serial variant's): the second operand when either is NaN, so
 * rnn_v_max(bound, x) passes a NaN x through and rnn_v_max(m, NaN) keeps the NaN the way the
 * callers expect. FMAX/FMIN would return NaN for a NaN in either operand. */
#define rnn_v_min(a, b) rnn_min_neon((a), (b))
#define rnn_v_max(a, b) rnn_max_neon((a), (b))
static inline float32x4_t rnn_min_neon(float32x4_t a, float32x4_t b) {
    return vbslq_f32(vcltq_f32(a, b), a, b);
}
static inline float32x4_t rnn_max_neon(float32x4_t a, float32x4_t b) {
    return vbslq_f32(vcgtq_f32(a, b), a, b);
}
#define rnn_v_abs(a) vabsq_f32(a)
#define rnn_v_round(a) vrndnq_f32(a) /* to nearest, ties to even, like the others */
/* p * 2^n for an integer-valued n in [-126, 127] (the exponent field built directly). */
#define rnn_v_pow2n_mul(p, n)                                                                 \
    vmulq_f32((p), vreinterpretq_f32_s32(vshlq_n_s32(                                       \
                       vaddq_s32(vcvtnq_s32_f32(n), vdupq_n_s32(127)), 23)))
#define rnn_v_sel_lt(a, b, x, y) vbslq_f32(vcltq_f32((a), (b)), (x), (y))
#define rnn_v_sel_gt(a, b, x, y) vbslq_f32(vcgtq_f32((a), (b)), (x), (y))
#define rnn_v_copysign(mag, sgn) vbslq_f32(vdupq_n_u32(0x80000000u), (sgn), (mag))
/* Weight loads converted to fp32 (gemm_impl.h): 4 halves through FCVTL; bf16 pairs and int8
 * quads (4 units x 2 or 4 k's in 16 bytes) by shifts, j picking the k within the group. */
#define rnn_v_load_f16(p) vcvt_f32_f16(vreinterpret_f16_u16(vld1_u16(p)))
#define rnn_v_load_bf16(p, j) rnn_bf16_neon(vreinterpretq_u32_u16(vld1q_u16(p)), (j))
#define rnn_v_load_i8(p, j) rnn_i8_neon(vreinterpretq_s32_s8(vld1q_s8(p)), (j))
static inline float32x4_t rnn_bf16_neon(uint32x4_t u, int j) {
    return vreinterpretq_f32_u32(j ? vandq_u32(u, vdupq_n_u32(0xffff0000u)) : vshlq_n_u32(u, 16));
}
/* byte j of each lane, sign-extended: shift it to the top (a register shift count, since j
 * is a constant only after unrolling), then arithmetically back down */
static inline float32x4_t rnn_i8_neon(int32x4_t u, int j) {
    return vcvtq_f32_s32(vshrq_n_s32(vshlq_s32(u, vdupq_n_s32(24 - 8 * j)), 24));
}

/* 32 registers of 4 floats, as many floats as AVX2's 16 of 8, but the compiler keeps each
 * row's broadcast input in a register of its own (LD1R, then FMLA) where x86 broadcasts from
 * memory. One row keeps all G gates in one pass (the memory-bound streamed step); several
 * rows take the gates a few at a time as on AVX2 (gemm_impl.h: RNN_GATE_PASS), each weight
 * vector loaded feeding NB FMAs. Rows and gates per pass: accumulators 4 x NB x gates,
 * weights 4 x gates, NB broadcasts, at most 32 registers: 4 rows x 1 gate (16 + 4 + 4) or
 * 2 rows x 2 gates (16 + 8 + 2). More rows do not fit: with 6 rows of one gate (24
 * accumulators, 4 weight vectors, 6 inputs, the k loop unrolled twice) GCC 12 spilled 46
 * vector registers in the loop, with 5 rows 8, with 4 none. No AArch64 machine to time it;
 * executed instructions under qemu for one 16-row product over K = 256 (the gate passes save
 * weight loads, which the count understates): LSTM 127k -> 107k, GRU 94k -> 82k (fp32),
 * 146k -> 136k and 116k -> 101k (fp16). */
#define RNN_NB_MAX(G) 4
/* Two k groups per loop iteration for fp32 and fp16 panels; one for the products over
 * grouped k's (bf16 pairs, int8 quads: several broadcasts or product halves per row per
 * step), where two made GCC 12 spill (bf16 entry 435 vector spills, SMULL int8 4x1 47 in
 * the loop) and one does not or barely (61 outside the loops, 13). */
#define RNN_K_UNROLL(KS) ((KS) == 1 ? 2 : 1)
#define RNN_GATE_PASS(NB, G) ((NB) == 1 ? (G) : (NB) == 2 && (G) >= 2 ? 2 : 1)
#define RNN_PANEL_INSTANCES(X)                                                            \
    X(1, 1) X(2, 1) X(3, 1) X(4, 1) X(1, 2) X(2, 2) X(3, 2) X(4, 2) X(1, 3) X(2, 3)       \
    X(3, 3) X(4, 3) X(1, 4) X(2, 4) X(3, 4) X(4, 4)

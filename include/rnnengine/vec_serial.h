/* Vector operations for the portable variant: the "vector" is one float, so a 16-unit block is
 * 16 scalars. Written without libm calls so the compiler may vectorize it for the baseline ISA
 * (SSE2 on x86-64, NEON on AArch64). Defines the names kernels_impl.h uses; vec_undef.h
 * removes them again. */
#include <stdint.h>
#include <string.h>

#ifndef RNNENGINE_VEC_SERIAL_ONCE
#define RNNENGINE_VEC_SERIAL_ONCE
/* Round to nearest even without libm: adding and subtracting 1.5 * 2^23 leaves an integer for
 * |x| < 2^22 (callers clamp far below that). Not valid under -ffast-math, which is not used. */
static inline float rnn_round_serial(float x) {
    const float magic = 12582912.0f;
    float t = x + magic; /* the assignment drops any excess precision (C99 6.3.1.8) */
    return t - magic;
}
/* p * 2^n for an integer-valued n in [-126, 127]; NaN n gives NaN. */
static inline float rnn_pow2n_mul_serial(float p, float n) {
    if (!(n == n)) return n;
    uint32_t bits = (uint32_t)((int32_t)n + 127) << 23;
    float s;
    memcpy(&s, &bits, sizeof s);
    return p * s;
}
static inline float rnn_copysign_serial(float mag, float sgn) {
    uint32_t m, s;
    memcpy(&m, &mag, sizeof m);
    memcpy(&s, &sgn, sizeof s);
    m = (m & 0x7fffffffu) | (s & 0x80000000u);
    memcpy(&mag, &m, sizeof m);
    return mag;
}
/* IEEE half -> float (normals, subnormals, inf and NaN), without F16C. */
static inline float rnn_f16_to_f32_serial(uint16_t h) {
    const uint32_t sign = (uint32_t)(h & 0x8000u) << 16, e = (h >> 10) & 0x1fu, m = h & 0x3ffu;
    uint32_t bits;
    float f;
    if (e == 0x1f) {
        bits = sign | 0x7f800000u | (m << 13);
    } else if (e) {
        bits = sign | ((e + 112u) << 23) | (m << 13);
    } else {
        f = (float)m * 5.9604644775390625e-8f; /* m * 2^-24, exact */
        return sign ? -f : f;
    }
    memcpy(&f, &bits, sizeof f);
    return f;
}
static inline float rnn_bf16_to_f32_serial(uint16_t b) {
    const uint32_t bits = (uint32_t)b << 16;
    float f;
    memcpy(&f, &bits, sizeof f);
    return f;
}
#endif

#define RNN_ISA serial
#define RNN_VL 1
typedef float rnn_v_serial;
#define rnn_v rnn_v_serial
#define rnn_v_load(p) (*(p))
#define rnn_v_store(p, a) (*(p) = (a))
#define rnn_v_set1(f) ((float)(f))
#define rnn_v_zero() 0.0f
#define rnn_v_add(a, b) ((a) + (b))
#define rnn_v_sub(a, b) ((a) - (b))
#define rnn_v_mul(a, b) ((a) * (b))
#define rnn_v_div(a, b) ((a) / (b))
#define rnn_v_fmadd(a, b, c) ((a) * (b) + (c))
#define rnn_v_fnmadd(a, b, c) ((c) - (a) * (b))
#define rnn_v_rcp(x) (1.0f / (x))
/* min/max return the second operand when either is NaN, like the x86 instructions, so
 * rnn_v_max(bound, x) passes a NaN x through. */
#define rnn_v_min(a, b) ((a) < (b) ? (a) : (b))
#define rnn_v_max(a, b) ((a) > (b) ? (a) : (b))
#define rnn_v_abs(a) rnn_copysign_serial((a), 0.0f)
#define rnn_v_round(a) rnn_round_serial(a)
#define rnn_v_pow2n_mul(p, n) rnn_pow2n_mul_serial((p), (n))
#define rnn_v_sel_lt(a, b, x, y) ((a) < (b) ? (x) : (y))
#define rnn_v_sel_gt(a, b, x, y) ((a) > (b) ? (x) : (y))
#define rnn_v_copysign(mag, sgn) rnn_copysign_serial((mag), (sgn))
/* Weight loads converted to fp32 (gemm_impl.h). Pair- and quad-interleaved types (bf16: 2 k's
 * per unit, int8: 4) take j, the k within the group; the vector holds RNN_VL units. */
#define rnn_v_load_f16(p) rnn_f16_to_f32_serial(*(p))
#define rnn_v_load_bf16(p, j) rnn_bf16_to_f32_serial((p)[j])
#define rnn_v_load_i8(p, j) ((float)(p)[j])

/* Rows per panel call for G gates, and (G, rows) pairs to compile: one row keeps it simple;
 * the panel kernel is plain loops (kernels_impl.h). */
#define RNN_PANEL_PLAIN 1
#define RNN_NB_MAX(G) 1
#define RNN_PANEL_INSTANCES(X) X(1, 1) X(1, 2) X(1, 3) X(1, 4)

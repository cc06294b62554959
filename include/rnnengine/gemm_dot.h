/* GEMM entries with AVX-512 dot-product instructions, for the weight types whose panels
 * group k's in their operand layout (cells.h). Included once by kernels.h after the avx512
 * variant, inside a target region that adds avx512bf16 and avx512vnni; the table uses them
 * only when CPUID reports those features (rnn_kernels_for).
 *
 *   rnn_gemm_bf16_avx512bf16  vdpbf16ps: input rows rounded to bf16 pairs, products of pairs
 *                             summed into fp32 (one instruction: 16 units x 2 k's)
 *   rnn_gemm_i8_avx512vnni    vpdpbusd: u8 x s8 products of quads summed into int32. Inputs
 *                             are quantized in two parts (gemm_entries.h: rnn_quant_row),
 *                             each q in [-127, 127] and shifted to q + 128 (the
 *                             instruction wants unsigned inputs); the shift is taken back
 *                             with the panel's per-unit weight sums: sum (q+128) w - 128 sum w.
 *                             vpdpbusd adds the four 16-bit products in 32 bits without
 *                             saturating (|sum| <= 4 * 255 * 128), and int32 accumulation
 *                             is exact up to K = 65000.
 *   rnn_gemm_i8r_avx512vnni   the same for i8r weights: a second vpdpbusd pass over the
 *                             residual quads (gemm_entries.h: rnn_gemm_i8_body).
 */

#define RNN_DOT_ROW_BYTES(kp, es) ((size_t)(kp) * (es))

/* ---- bf16 ---- */
#define RNN_WT bf16
#define RNN_GEMM_ISA avx512bf16
#define RNN_WT_T uint16_t
#define RNN_KS 2
#define RNN_IN_T uint16_t
#define RNN_ACC_T __m512
#define RNN_ACC_E float
#define RNN_ACC_LOAD(p) _mm512_loadu_ps(p)
#define RNN_ACC_STORE(p, a) _mm512_storeu_ps((p), (a))
#define RNN_ACC_ZERO() _mm512_setzero_ps()
#define RNN_ACC_ADD(a, b) _mm512_add_ps((a), (b))
#define RNN_PANEL_STEP(NB, G, a, wk, in, ldin, k) rnn_dot_bf16_step(NB, G, a, wk, in, ldin, k)

RNN_INLINE void rnn_dot_bf16_step(const int NB, const int G, __m512 *a, const uint16_t *wk,
                                  const uint16_t *in, size_t ldin, int k) {
    __m512i wv[4];
    _Pragma("GCC unroll 4") for (int g = 0; g < G; g++)
        wv[g] = _mm512_loadu_si512((const void *)(wk + (size_t)g * 2 * RNN_BW));
    _Pragma("GCC unroll 8") for (int n = 0; n < NB; n++) {
        int pair;
        memcpy(&pair, in + (size_t)n * ldin + k, sizeof pair);
        const __m512i xb = _mm512_set1_epi32(pair);
        _Pragma("GCC unroll 4") for (int g = 0; g < G; g++)
            a[n * G + g] = _mm512_dpbf16_ps(a[n * G + g], (__m512bh)xb, (__m512bh)wv[g]);
    }
}
#include "rnnengine/gemm_impl.h"

/* ---- int8 ---- */
#define RNN_WT i8
#define RNN_GEMM_ISA avx512vnni
#define RNN_WT_T int8_t
#define RNN_KS 4
#define RNN_IN_T uint8_t
#define RNN_ACC_T __m512i
#define RNN_ACC_E int32_t
#define RNN_ACC_LOAD(p) _mm512_loadu_si512((const void *)(p))
#define RNN_ACC_STORE(p, a) _mm512_storeu_si512((void *)(p), (a))
#define RNN_ACC_ZERO() _mm512_setzero_si512()
#define RNN_ACC_ADD(a, b) _mm512_add_epi32((a), (b))
#define RNN_PANEL_STEP(NB, G, a, wk, in, ldin, k) rnn_dot_i8_step(NB, G, a, wk, in, ldin, k)

RNN_INLINE void rnn_dot_i8_step(const int NB, const int G, __m512i *a, const int8_t *wk,
                                const uint8_t *in, size_t ldin, int k) {
    __m512i wv[4];
    _Pragma("GCC unroll 4") for (int g = 0; g < G; g++)
        wv[g] = _mm512_loadu_si512((const void *)(wk + (size_t)g * 4 * RNN_BW));
    _Pragma("GCC unroll 8") for (int n = 0; n < NB; n++) {
        int quad;
        memcpy(&quad, in + (size_t)n * ldin + k, sizeof quad);
        const __m512i xb = _mm512_set1_epi32(quad);
        _Pragma("GCC unroll 4") for (int g = 0; g < G; g++)
            a[n * G + g] = _mm512_dpbusd_epi32(a[n * G + g], xb, wv[g]);
    }
}
#include "rnnengine/gemm_impl.h"

/* Tail masks of the input conversions: the first n of 16 lanes. */
static inline __mmask16 rnn_dot_mask(int n) { return (__mmask16)((1u << n) - 1u); }

static void rnn_gemm_bf16_avx512bf16(int ng, int G, int K, const void *w, const float *in,
                                     size_t ldin, float *acc, size_t ldacc,
                                     rnn_gemm_memo_t *memo) {
    (void)memo;
    _Alignas(64) uint16_t buf[RNN_ROWS_MAX * RNN_KC];
    const int nbmax = RNN_NB_MAX(G);
    for (int k0 = 0; k0 < K; k0 += RNN_KC) {
        const int kc = K - k0 < RNN_KC ? K - k0 : RNN_KC, kp = (kc + 1) & ~1;
        const uint16_t *wk = (const uint16_t *)w + (size_t)k0 * G * RNN_BW;
        for (int n0 = 0; n0 < ng; n0 += nbmax) {
            const int nb = ng - n0 < nbmax ? ng - n0 : nbmax;
            for (int i = 0; i < nb; i++) {
                const float *x = in + (n0 + i) * ldin + k0;
                uint16_t *d = buf + (size_t)i * kp;
                for (int k = 0; k < kp; k += 16) {
                    /* zeros past kc: the padded k of an odd K meets a zero weight */
                    const int n = kc - k < 16 ? (kc - k > 0 ? kc - k : 0) : 16;
                    const __m256bh b = _mm512_cvtneps_pbh(_mm512_maskz_loadu_ps(rnn_dot_mask(n), x + k));
                    __m256i bits;
                    memcpy(&bits, &b, sizeof bits);
                    _mm256_mask_storeu_epi16(d + k, rnn_dot_mask(kp - k < 16 ? kp - k : 16), bits);
                }
            }
            rnn_panel_rows_bf16_avx512bf16(nb, G, kp, wk, buf, kp, acc + (size_t)n0 * ldacc,
                                           ldacc);
        }
    }
}

/* The int8 entry of gemm_entries.h (rnn_gemm_i8_body) with vpdpbusd: both parts of each
 * input row stored shifted to unsigned, the shift taken back with the panel's weight sums. */
static inline void rnn_i8_quant_vnni(void *buf, int i, int nb, int kp, const float *x, int kc,
                                     float inv) {
    uint8_t *d = (uint8_t *)buf + (size_t)i * kp, *d2 = (uint8_t *)buf + (size_t)(nb + i) * kp;
    const __m512i bias = _mm512_set1_epi32(128);
    const __m512 vi = _mm512_set1_ps(inv), fine = _mm512_set1_ps(RNN_I8_FINE);
    for (int k = 0; k < kp; k += 16) {
        /* lanes past kc quantize 0 to 128, the zero point: they add 128 * 0 */
        const int n = kc - k < 16 ? (kc - k > 0 ? kc - k : 0) : 16;
        const __mmask16 keep = rnn_dot_mask(kp - k < 16 ? kp - k : 16);
        const __m512 t = _mm512_mul_ps(_mm512_maskz_loadu_ps(rnn_dot_mask(n), x + k), vi);
        const __m512i q = _mm512_cvtps_epi32(t);
        const __m512i q2 =
            _mm512_cvtps_epi32(_mm512_mul_ps(_mm512_sub_ps(t, _mm512_cvtepi32_ps(q)), fine));
        _mm_mask_storeu_epi8(d + k, keep, _mm512_cvtepi32_epi8(_mm512_add_epi32(q, bias)));
        _mm_mask_storeu_epi8(d2 + k, keep, _mm512_cvtepi32_epi8(_mm512_add_epi32(q2, bias)));
    }
}

static inline void rnn_i8_panel_vnni(int rows, int G, int kp, const int8_t *w, const void *buf,
                                     void *sums, int units) {
    rnn_panel_rows_i8_avx512vnni(rows, G, kp, w, (const uint8_t *)buf, kp, (int32_t *)sums,
                                 units);
}

static inline void rnn_i8_finish_vnni(float *a, const void *sums, int i, int nb, int units,
                                      float step, const float *scale, const int32_t *wsum) {
    const int32_t *s1 = (const int32_t *)sums + (size_t)i * units;
    const int32_t *s2 = (const int32_t *)sums + (size_t)(nb + i) * units;
    const __m512 s = _mm512_set1_ps(step), f = _mm512_set1_ps(step / RNN_I8_FINE);
    for (int o = 0; o < units; o += 16) {
        const __m512i shift = _mm512_slli_epi32(_mm512_loadu_si512((const void *)(wsum + o)), 7);
        const __m512 t1 = _mm512_cvtepi32_ps(
            _mm512_sub_epi32(_mm512_loadu_si512((const void *)(s1 + o)), shift));
        const __m512 t2 = _mm512_cvtepi32_ps(
            _mm512_sub_epi32(_mm512_loadu_si512((const void *)(s2 + o)), shift));
        const __m512 t = _mm512_fmadd_ps(t2, f, _mm512_mul_ps(t1, s));
        _mm512_storeu_ps(a + o, _mm512_fmadd_ps(t, _mm512_loadu_ps(scale + o), _mm512_loadu_ps(a + o)));
    }
}

static void rnn_gemm_i8_avx512vnni(int ng, int G, int K, const void *w, const float *in,
                                   size_t ldin, float *acc, size_t ldacc,
                                   rnn_gemm_memo_t *memo) {
    (void)memo;
    rnn_gemm_i8_body_avx512(1, ng, G, K, w, in, ldin, acc, ldacc, rnn_i8_quant_vnni,
                            rnn_i8_panel_vnni, rnn_i8_finish_vnni);
}

static void rnn_gemm_i8r_avx512vnni(int ng, int G, int K, const void *w, const float *in,
                                    size_t ldin, float *acc, size_t ldacc,
                                    rnn_gemm_memo_t *memo) {
    (void)memo;
    rnn_gemm_i8_body_avx512(2, ng, G, K, w, in, ldin, acc, ldacc, rnn_i8_quant_vnni,
                            rnn_i8_panel_vnni, rnn_i8_finish_vnni);
}

#undef RNN_DOT_ROW_BYTES

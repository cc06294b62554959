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

/* The int8 entry of gemm_entries.h (rnn_gemm_i8: each input row quantized in two parts, two
 * rows of the product) with vpdpbusd: the parts are stored shifted to unsigned. */
static void rnn_gemm_i8_avx512vnni(int ng, int G, int K, const void *w, const float *in,
                                   size_t ldin, float *acc, size_t ldacc,
                                   rnn_gemm_memo_t *memo) {
    (void)memo;
    _Alignas(64) uint8_t buf[RNN_ROWS_MAX * RNN_KC];
    _Alignas(64) int32_t sums[RNN_ROWS_MAX * 4 * RNN_BW];
    float step[RNN_ROWS_MAX];
    const int nbmax = RNN_NB_MAX(G) / 2, units = G * RNN_BW;
    const int8_t *wq = (const int8_t *)w;
    const float *scale = rnn_i8_scales(w, K, G);
    const int32_t *wsum = rnn_i8_sums(w, K, G);
    const __m512i bias = _mm512_set1_epi32(128);
    const __m512 fine = _mm512_set1_ps(RNN_I8_FINE);
    for (int n0 = 0; n0 < ng; n0 += nbmax) {
        const int nb = ng - n0 < nbmax ? ng - n0 : nbmax;
        for (int i = 0; i < nb; i++) step[i] = rnn_quant_step_avx512(in + (n0 + i) * ldin, K);
        memset(sums, 0, sizeof sums);
        for (int k0 = 0; k0 < K; k0 += RNN_KC) {
            const int kc = K - k0 < RNN_KC ? K - k0 : RNN_KC, kp = (kc + 3) & ~3;
            for (int i = 0; i < nb; i++) {
                const float *x = in + (n0 + i) * ldin + k0;
                const __m512 inv = _mm512_set1_ps(step[i] > 0.0f ? 1.0f / step[i] : 0.0f);
                uint8_t *d = buf + (size_t)i * kp, *d2 = buf + (size_t)(nb + i) * kp;
                for (int k = 0; k < kp; k += 16) {
                    /* lanes past kc quantize 0 to 128, the zero point: they add 128 * 0 */
                    const int n = kc - k < 16 ? (kc - k > 0 ? kc - k : 0) : 16;
                    const __mmask16 keep = rnn_dot_mask(kp - k < 16 ? kp - k : 16);
                    const __m512 t = _mm512_mul_ps(_mm512_maskz_loadu_ps(rnn_dot_mask(n), x + k), inv);
                    const __m512i q = _mm512_cvtps_epi32(t);
                    const __m512i q2 = _mm512_cvtps_epi32(
                        _mm512_mul_ps(_mm512_sub_ps(t, _mm512_cvtepi32_ps(q)), fine));
                    _mm_mask_storeu_epi8(d + k, keep, _mm512_cvtepi32_epi8(_mm512_add_epi32(q, bias)));
                    _mm_mask_storeu_epi8(d2 + k, keep, _mm512_cvtepi32_epi8(_mm512_add_epi32(q2, bias)));
                }
            }
            rnn_panel_rows_i8_avx512vnni(2 * nb, G, kp, wq + (size_t)k0 * units, buf, kp, sums,
                                         units);
        }
        for (int i = 0; i < nb; i++) {
            float *a = acc + (size_t)(n0 + i) * ldacc;
            const __m512 s = _mm512_set1_ps(step[i]), s2 = _mm512_set1_ps(step[i] / RNN_I8_FINE);
            for (int o = 0; o < units; o += 16) {
                const __m512i shift = _mm512_slli_epi32(_mm512_loadu_si512((const void *)(wsum + o)), 7);
                const __m512 t1 = _mm512_cvtepi32_ps(_mm512_sub_epi32(
                    _mm512_loadu_si512((const void *)(sums + i * units + o)), shift));
                const __m512 t2 = _mm512_cvtepi32_ps(_mm512_sub_epi32(
                    _mm512_loadu_si512((const void *)(sums + (nb + i) * units + o)), shift));
                const __m512 t = _mm512_fmadd_ps(t2, s2, _mm512_mul_ps(t1, s));
                _mm512_storeu_ps(a + o, _mm512_fmadd_ps(t, _mm512_loadu_ps(scale + o),
                                                        _mm512_loadu_ps(a + o)));
            }
        }
    }
}

#undef RNN_DOT_ROW_BYTES

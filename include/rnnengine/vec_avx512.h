/* Vector operations for the AVX-512 variant (16 floats: one vector per 16-unit block).
 * Included by kernels.h inside a target("avx512f,avx512vl,avx512dq,avx512bw,...") region;
 * vec_undef.h removes the names. */
#include <immintrin.h>

#define RNN_ISA avx512
#define RNN_VL 16
#define rnn_v __m512
#define rnn_v_load(p) _mm512_loadu_ps(p)
#define rnn_v_store(p, a) _mm512_storeu_ps((p), (a))
#define rnn_v_set1(f) _mm512_set1_ps(f)
#define rnn_v_zero() _mm512_setzero_ps()
#define rnn_v_add(a, b) _mm512_add_ps((a), (b))
#define rnn_v_sub(a, b) _mm512_sub_ps((a), (b))
#define rnn_v_mul(a, b) _mm512_mul_ps((a), (b))
#define rnn_v_div(a, b) _mm512_div_ps((a), (b))
#define rnn_v_fmadd(a, b, c) _mm512_fmadd_ps((a), (b), (c))
#define rnn_v_fnmadd(a, b, c) _mm512_fnmadd_ps((a), (b), (c))
/* 1/x: 14-bit estimate and one Newton step (~1 ulp), much cheaper than a division. */
#define rnn_v_rcp(x) rnn_rcp_avx512(x)
static inline __m512 rnn_rcp_avx512(__m512 x) {
    __m512 r = _mm512_rcp14_ps(x);
    return _mm512_mul_ps(r, _mm512_fnmadd_ps(x, r, _mm512_set1_ps(2.0f)));
}
#define rnn_v_min(a, b) _mm512_min_ps((a), (b))
#define rnn_v_max(a, b) _mm512_max_ps((a), (b))
#define rnn_v_abs(a) _mm512_abs_ps(a)
#define rnn_v_round(a) _mm512_roundscale_ps((a), _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC)
#define rnn_v_pow2n_mul(p, n) _mm512_scalef_ps((p), (n))
#define rnn_v_sel_lt(a, b, x, y) \
    _mm512_mask_blend_ps(_mm512_cmp_ps_mask((a), (b), _CMP_LT_OQ), (y), (x))
#define rnn_v_sel_gt(a, b, x, y) \
    _mm512_mask_blend_ps(_mm512_cmp_ps_mask((a), (b), _CMP_GT_OQ), (y), (x))
#define rnn_v_copysign(mag, sgn) \
    _mm512_or_ps((mag), _mm512_and_ps((sgn), _mm512_set1_ps(-0.0f)))
/* Weight loads converted to fp32 (gemm_impl.h), as in vec_avx2.h with 16 units. */
#define rnn_v_load_f16(p) _mm512_cvtph_ps(_mm256_loadu_si256((const __m256i *)(const void *)(p)))
#define rnn_v_load_bf16(p, j) rnn_bf16_avx512(_mm512_loadu_si512((const void *)(p)), (j))
#define rnn_v_load_i8(p, j)                                                                   \
    _mm512_cvtepi32_ps(_mm512_srai_epi32(                                                     \
        _mm512_slli_epi32(_mm512_loadu_si512((const void *)(p)), 24 - 8 * (j)), 24))
static inline __m512 rnn_bf16_avx512(__m512i u, int j) {
    return _mm512_castsi512_ps(j ? _mm512_and_si512(u, _mm512_set1_epi32((int)0xffff0000u))
                                 : _mm512_slli_epi32(u, 16));
}

/* 32-bit integer lanes, for int8's 16-bit multiply-adds (gemm_madd.h; AVX-512BW) */
#define rnn_vi __m512i
#define rnn_vi_load(p) _mm512_loadu_si512((const void *)(p))
#define rnn_vi_store(p, a) _mm512_storeu_si512((void *)(p), (a))
#define rnn_vi_set1(i) _mm512_set1_epi32(i)
#define rnn_vi_zero() _mm512_setzero_si512()
#define rnn_vi_add(a, b) _mm512_add_epi32((a), (b))
#define rnn_vi_madd16(a, b) _mm512_madd_epi16((a), (b))
#define rnn_vi_lo8(q) _mm512_srai_epi16(_mm512_slli_epi16((q), 8), 8)
#define rnn_vi_hi8(q) _mm512_srai_epi16((q), 8)
#define rnn_vi_to_v(a) _mm512_cvtepi32_ps(a)

/* 32 zmm registers: up to 24 accumulators, G weight vectors and a broadcast. */
#define RNN_NB_MAX(G) ((G) == 4 ? 6 : 8)
#define RNN_PANEL_INSTANCES(X)                                                            \
    X(1, 1) X(2, 1) X(3, 1) X(4, 1) X(5, 1) X(6, 1) X(7, 1) X(8, 1)                       \
    X(1, 2) X(2, 2) X(3, 2) X(4, 2) X(5, 2) X(6, 2) X(7, 2) X(8, 2)                       \
    X(1, 3) X(2, 3) X(3, 3) X(4, 3) X(5, 3) X(6, 3) X(7, 3) X(8, 3)                       \
    X(1, 4) X(2, 4) X(3, 4) X(4, 4) X(5, 4) X(6, 4)

/* Vector operations for the AVX2+FMA variant (8 floats; a 16-unit block is 2 vectors).
 * Included by kernels.h inside a target("avx2,fma,f16c") region; vec_undef.h removes the names. */
#include <immintrin.h>

#define RNN_ISA avx2
#define RNN_VL 8
#define rnn_v __m256
#define rnn_v_load(p) _mm256_loadu_ps(p)
#define rnn_v_store(p, a) _mm256_storeu_ps((p), (a))
#define rnn_v_set1(f) _mm256_set1_ps(f)
#define rnn_v_zero() _mm256_setzero_ps()
#define rnn_v_add(a, b) _mm256_add_ps((a), (b))
#define rnn_v_sub(a, b) _mm256_sub_ps((a), (b))
#define rnn_v_mul(a, b) _mm256_mul_ps((a), (b))
#define rnn_v_div(a, b) _mm256_div_ps((a), (b))
#define rnn_v_fmadd(a, b, c) _mm256_fmadd_ps((a), (b), (c))
#define rnn_v_fnmadd(a, b, c) _mm256_fnmadd_ps((a), (b), (c))
/* 1/x by division: the 12-bit estimate plus a Newton step is 2 ulp off, which put two ONNX
 * conformance cases (atol 1e-7) over their tolerance; a ymm division is cheap enough. */
#define rnn_v_rcp(x) _mm256_div_ps(_mm256_set1_ps(1.0f), (x))
#define rnn_v_min(a, b) _mm256_min_ps((a), (b))
#define rnn_v_max(a, b) _mm256_max_ps((a), (b))
#define rnn_v_abs(a) _mm256_andnot_ps(_mm256_set1_ps(-0.0f), (a))
#define rnn_v_round(a) _mm256_round_ps((a), _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC)
#define rnn_v_pow2n_mul(p, n)                                                                     \
    _mm256_mul_ps((p), _mm256_castsi256_ps(_mm256_slli_epi32(                                 \
                           _mm256_add_epi32(_mm256_cvtps_epi32(n), _mm256_set1_epi32(127)), 23)))
#define rnn_v_sel_lt(a, b, x, y) _mm256_blendv_ps((y), (x), _mm256_cmp_ps((a), (b), _CMP_LT_OQ))
#define rnn_v_sel_gt(a, b, x, y) _mm256_blendv_ps((y), (x), _mm256_cmp_ps((a), (b), _CMP_GT_OQ))
#define rnn_v_copysign(mag, sgn) \
    _mm256_or_ps((mag), _mm256_and_ps((sgn), _mm256_set1_ps(-0.0f)))
/* Weight loads converted to fp32 (gemm_impl.h): halves through F16C; bf16 pairs and int8 quads
 * (8 units x 2 or 4 k's in 32 bytes) by shifts, j picking the k within the group. */
#define rnn_v_load_f16(p) _mm256_cvtph_ps(_mm_loadu_si128((const __m128i *)(const void *)(p)))
#define rnn_v_load_bf16(p, j) rnn_bf16_avx2(_mm256_loadu_si256((const __m256i *)(const void *)(p)), (j))
#define rnn_v_load_i8(p, j)                                                                   \
    _mm256_cvtepi32_ps(_mm256_srai_epi32(                                                     \
        _mm256_slli_epi32(_mm256_loadu_si256((const __m256i *)(const void *)(p)), 24 - 8 * (j)), 24))
static inline __m256 rnn_bf16_avx2(__m256i u, int j) {
    return _mm256_castsi256_ps(j ? _mm256_and_si256(u, _mm256_set1_epi32((int)0xffff0000u))
                                 : _mm256_slli_epi32(u, 16));
}

/* 32-bit integer lanes, for int8's 16-bit multiply-adds (gemm_madd.h) */
#define rnn_vi __m256i
#define rnn_vi_load(p) _mm256_loadu_si256((const __m256i *)(const void *)(p))
#define rnn_vi_store(p, a) _mm256_storeu_si256((__m256i *)(void *)(p), (a))
#define rnn_vi_set1(i) _mm256_set1_epi32(i)
#define rnn_vi_zero() _mm256_setzero_si256()
#define rnn_vi_add(a, b) _mm256_add_epi32((a), (b))
#define rnn_vi_madd16(a, b) _mm256_madd_epi16((a), (b))
#define rnn_vi_lo8(q) _mm256_srai_epi16(_mm256_slli_epi16((q), 8), 8)
#define rnn_vi_hi8(q) _mm256_srai_epi16((q), 8)
#define rnn_vi_to_v(a) _mm256_cvtepi32_ps(a)

/* 16 ymm registers. One row keeps all G gates in one pass (G x 2 accumulators, the weights
 * as memory operands): the memory-bound streamed step. Several rows take the gates a few at
 * a time (gemm_impl.h: rnn_panel_tile), up to 6 rows x 1 gate x 2 vectors = 12 accumulators,
 * 2 weight vectors and the broadcast: each weight vector loaded feeds 6 FMAs, where one row
 * per pass fed it to one and the product ran at L2 bandwidth. Measured (Zen 5, forced avx2,
 * T=100 batch-16 sequences): LSTM H=256 19.8 -> 16.6 ms, GRU H=256 14.2 -> 11.7 ms, LSTM
 * H=1024 289 -> 262 ms; the 16-row product alone runs at 87% of the FMA peak. Rows and gates
 * per pass: accumulators 2 x NB x gates, weights 2 x gates, one broadcast, at most 16
 * registers. */
#define RNN_NB_MAX(G) 6
#define RNN_GATE_PASS(NB, G) ((NB) == 1 ? (G) : (NB) == 2 && (G) >= 2 ? 2 : 1)
#define RNN_PANEL_INSTANCES(X)                                                            \
    X(1, 1) X(2, 1) X(3, 1) X(4, 1) X(5, 1) X(6, 1) X(1, 2) X(2, 2) X(3, 2) X(4, 2)       \
    X(5, 2) X(6, 2) X(1, 3) X(2, 3) X(3, 3) X(4, 3) X(5, 3) X(6, 3) X(1, 4) X(2, 4)       \
    X(3, 4) X(4, 4) X(5, 4) X(6, 4)

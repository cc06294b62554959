/* Vector operations for the AVX2+FMA variant (8 floats; a 16-unit block is 2 vectors).
 * Included by kernels.h inside a target("avx2,fma") region; vec_undef.h removes the names. */
#include <immintrin.h>

#define RNN_ISA avx2
#define RNN_VL 8
#define rnn_v __m256
#define v_load(p) _mm256_loadu_ps(p)
#define v_store(p, a) _mm256_storeu_ps((p), (a))
#define v_set1(f) _mm256_set1_ps(f)
#define v_zero() _mm256_setzero_ps()
#define v_add(a, b) _mm256_add_ps((a), (b))
#define v_sub(a, b) _mm256_sub_ps((a), (b))
#define v_mul(a, b) _mm256_mul_ps((a), (b))
#define v_div(a, b) _mm256_div_ps((a), (b))
#define v_fmadd(a, b, c) _mm256_fmadd_ps((a), (b), (c))
#define v_fnmadd(a, b, c) _mm256_fnmadd_ps((a), (b), (c))
/* 1/x by division: the 12-bit estimate plus a Newton step is 2 ulp off, which put two ONNX
 * conformance cases (atol 1e-7) over their tolerance; a ymm division is cheap enough. */
#define v_rcp(x) _mm256_div_ps(_mm256_set1_ps(1.0f), (x))
#define v_min(a, b) _mm256_min_ps((a), (b))
#define v_max(a, b) _mm256_max_ps((a), (b))
#define v_abs(a) _mm256_andnot_ps(_mm256_set1_ps(-0.0f), (a))
#define v_round(a) _mm256_round_ps((a), _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC)
#define v_pow2n_mul(p, n)                                                                     \
    _mm256_mul_ps((p), _mm256_castsi256_ps(_mm256_slli_epi32(                                 \
                           _mm256_add_epi32(_mm256_cvtps_epi32(n), _mm256_set1_epi32(127)), 23)))
#define v_sel_lt(a, b, x, y) _mm256_blendv_ps((y), (x), _mm256_cmp_ps((a), (b), _CMP_LT_OQ))
#define v_sel_gt(a, b, x, y) _mm256_blendv_ps((y), (x), _mm256_cmp_ps((a), (b), _CMP_GT_OQ))
#define v_copysign(mag, sgn) \
    _mm256_or_ps((mag), _mm256_and_ps((sgn), _mm256_set1_ps(-0.0f)))

/* 16 ymm registers: accumulators G * 2 * rows must leave room for weights and the broadcast. */
#define RNN_NB_MAX(G) ((G) == 1 ? 6 : (G) == 2 ? 2 : 1)
#define RNN_PANEL_INSTANCES(X) \
    X(1, 1) X(2, 1) X(3, 1) X(4, 1) X(5, 1) X(6, 1) X(1, 2) X(2, 2) X(1, 3) X(1, 4)

/* int8 GEMM entries for AVX2 without VNNI: 16-bit integer multiply-adds (vpmaddwd). Included
 * once by kernels.h after the avx2 variant, inside its target region; kernels.h puts them in
 * the avx2 table, and in the avx512 one where the CPU lacks AVX512-VNNI (better than fp32
 * arithmetic on dequantized weights; there precision_route still runs int8 models with fp16
 * weights, which the 16-wide FMAs make faster on batched sequences).
 *
 *   rnn_gemm_i8_avx2madd    int8 weights (cells.h)
 *   rnn_gemm_i8r_avx2madd   the same over both weight parts of i8r
 *
 * The inputs are quantized as for every int8 product (gemm_entries.h: rnn_quant_row), in two
 * parts q1, q2 in [-127, 127] with x ~= step * (q1 + q2 / RNN_I8_FINE); here both parts go
 * into one 16-bit integer X = RNN_I8_FINE * q1 + q2 (|X| <= 127 * 254 + 127 = 32385, and
 * x ~= step / RNN_I8_FINE * X: the same value). Weight quads are sign-extended to 16 bits in
 * registers, once for all the rows, and vpmaddwd multiplies pairs and adds them in 32 bits,
 * exactly: 2 multiply-adds and 2 adds per row per 32 products, against fp32's 4 FMAs.
 *
 * Not vpmaddubsw (u8 x s8 pairs added into 16 bits, then vpmaddwd by ones: ONNX Runtime
 * MLAS's AVX2 U8S8 kernel): its 16-bit pair sums saturate. Inputs shifted to unsigned reach
 * 255 and weights 127, 2 * 255 * 127 = 64770 > 32767, so the result would depend on the data
 * (MLAS quantizes weights to 7 bits, reduce_range, to avoid it). Moving the input's sign
 * onto the weight (vpsignb, |q| <= 127: 2 * 127 * 127 < 32767) keeps it exact for one more
 * instruction, and the two input parts need two passes: 8 instructions per row per 32
 * products, twice this product's.
 *
 * Exactness: per 512 k's a unit's sum is at most 512 * 127 * 32385 < 2^31, so K runs in
 * chunks of RNN_MADD_KC, each chunk's integer sums scaled into the fp32 accumulators in
 * chunk order. Integer sums do not depend on order, the chunk boundaries do not depend on
 * the rows, and each row is quantized alone: a row gives the same bits whatever the row
 * count, the thread split or the path (streamed step, input projection).
 */

#define RNN_MADD_KC 512
#define RNN_MADD_XMAX 32385 /* 127 * RNN_I8_FINE + 127 (checked in rnn_madd_gemm) */
_Static_assert(RNN_MADD_XMAX <= 32767 &&
                   (long long)RNN_MADD_KC * 127 * RNN_MADD_XMAX < ((long long)1 << 31),
               "the 16-bit inputs or a chunk's int32 sums would overflow");

/* a[n][g][v] += the 8 units' quads at wk (group k) times row n's quad at in + n * ldin + k,
 * stored X0 X2 X1 X3 (rnn_madd_quant): the low bytes of the weights' 16-bit words are k0 and
 * k2, the high bytes k1 and k3. */
RNN_INLINE void rnn_madd_step(const int NB, const int G, __m256i *a, const int8_t *wk,
                              const int16_t *in, size_t ldin, int k) {
    __m256i xa[8], xb[8];
    _Pragma("GCC unroll 8") for (int n = 0; n < NB; n++) {
        int32_t pair[2];
        memcpy(pair, in + (size_t)n * ldin + k, sizeof pair);
        xa[n] = _mm256_set1_epi32(pair[0]);
        xb[n] = _mm256_set1_epi32(pair[1]);
    }
    _Pragma("GCC unroll 4") for (int g = 0; g < G; g++)
    _Pragma("GCC unroll 2") for (int v = 0; v < 2; v++) {
        const __m256i q = _mm256_loadu_si256((const __m256i *)(const void *)(wk + ((size_t)g * RNN_BW + v * 8) * 4));
        const __m256i lo = _mm256_srai_epi16(_mm256_slli_epi16(q, 8), 8);
        const __m256i hi = _mm256_srai_epi16(q, 8);
        _Pragma("GCC unroll 8") for (int n = 0; n < NB; n++) {
            const __m256i s = _mm256_add_epi32(_mm256_madd_epi16(lo, xa[n]),
                                               _mm256_madd_epi16(hi, xb[n]));
            a[(n * G + g) * 2 + v] = _mm256_add_epi32(a[(n * G + g) * 2 + v], s);
        }
    }
}

#define RNN_WT i8
#define RNN_GEMM_ISA avx2madd
#define RNN_WT_T int8_t
#define RNN_KS 4
#define RNN_IN_T int16_t
#define RNN_ACC_T __m256i
#define RNN_ACC_E int32_t
#define RNN_ACC_LOAD(p) _mm256_loadu_si256((const __m256i *)(const void *)(p))
#define RNN_ACC_STORE(p, a) _mm256_storeu_si256((__m256i *)(void *)(p), (a))
#define RNN_ACC_ZERO() _mm256_setzero_si256()
#define RNN_ACC_ADD(a, b) _mm256_add_epi32((a), (b))
#define RNN_PANEL_STEP(NB, G, a, wk, in, ldin, k) rnn_madd_step(NB, G, a, wk, in, ldin, k)
#include "rnnengine/gemm_impl.h"

/* X of 8 inputs: t = x * inv, q1 = round(t), q2 = round((t - q1) * RNN_I8_FINE) (the two
 * parts of rnn_quant_row), X = RNN_I8_FINE * q1 + q2, exact in fp32. */
static inline __m256i rnn_madd_x8(__m256 x, __m256 inv) {
    const __m256 fine = _mm256_set1_ps(RNN_I8_FINE), t = _mm256_mul_ps(x, inv);
    const __m256 q = _mm256_round_ps(t, _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC);
    const __m256 q2 = _mm256_round_ps(_mm256_mul_ps(_mm256_sub_ps(t, q), fine),
                                      _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC);
    return _mm256_cvtps_epi32(_mm256_fmadd_ps(q, fine, q2));
}

/* d[0:kp] = X of x[0:kc] (zeros past kc, kp - kc < 4), each quad stored X0 X2 X1 X3. A NaN
 * or an infinity has inv = 0 (gemm_entries.h: rnn_quant_step) and an X of no meaning: the
 * row's step is NaN, so its results are NaN. */
static inline void rnn_madd_quant(int16_t *d, const float *x, int kc, int kp, float inv) {
    const __m256 vi = _mm256_set1_ps(inv);
    const __m256i order = _mm256_setr_epi8(0, 1, 4, 5, 2, 3, 6, 7, 8, 9, 12, 13, 10, 11, 14, 15,
                                           0, 1, 4, 5, 2, 3, 6, 7, 8, 9, 12, 13, 10, 11, 14, 15);
    for (int k = 0; k < kp; k += 16) {
        _Alignas(32) float tail[16];
        const float *s = x + k;
        if (kc - k < 16) {
            memset(tail, 0, sizeof tail);
            if (kc > k) memcpy(tail, x + k, (size_t)(kc - k) * sizeof(float));
            s = tail;
        }
        /* packs works per 128-bit lane: X0-3 X8-11 | X4-7 X12-15, put in order */
        const __m256i p = _mm256_permute4x64_epi64(
            _mm256_packs_epi32(rnn_madd_x8(_mm256_loadu_ps(s), vi),
                               rnn_madd_x8(_mm256_loadu_ps(s + 8), vi)), 0xD8);
        const __m256i r = _mm256_shuffle_epi8(p, order);
        if (kp - k >= 16)
            _mm256_storeu_si256((__m256i *)(void *)(d + k), r);
        else
            memcpy(d + k, &r, (size_t)(kp - k) * sizeof(int16_t));
    }
}

/* Rows quantized once per phase (rnn_gemm_memo_t): two per-thread buffers of up to
 * RNN_MADD_MEMO inputs (a phase's row group of 24 rows x 1024 inputs), and the rows'
 * steps. Quantizing in every block's call cost as much as a quarter of the product. */
#define RNN_MADD_MEMO (24 * 1024)
#define RNN_MADD_MEMO_ROWS (RNN_MADD_MEMO / 32) /* rnn_xproj's row tiles: kp >= 32 */
static _Thread_local _Alignas(64) int16_t rnn_madd_memo_buf[2][RNN_MADD_MEMO];
static _Thread_local float rnn_madd_memo_step[2][RNN_MADD_MEMO_ROWS];

/* Rows a call quantizes and sums together. */
#define RNN_MADD_ROWS 24

static inline float rnn_madd_inv(float step) { return step > 0.0f ? 1.0f / step : 0.0f; }

/* acc rows += in rows @ the panel's int8 weights (parts 1) or both i8r parts (2). */
static void rnn_madd_gemm(int parts, int ng, int G, int K, const void *w, const float *in,
                          size_t ldin, float *acc, size_t ldacc, rnn_gemm_memo_t *memo) {
    _Alignas(64) int32_t sums[2][RNN_MADD_ROWS * 4 * RNN_BW];
    _Alignas(64) int16_t chunk[RNN_MADD_ROWS * RNN_MADD_KC];
    float steps[RNN_MADD_ROWS];
    const int units = G * RNN_BW, Kp = (K + 3) & ~3;
    const int8_t *wq[2] = {(const int8_t *)w, parts > 1 ? rnn_i8r_quads(w, K, G) : NULL};
    const float *scale = rnn_i8_scales(w, K, G);
    RNN_ASSERT((parts == 1 || parts == 2) && G >= 1 && G <= 4);
    RNN_ASSERT(127.0f * RNN_I8_FINE + 127.0f <= (float)RNN_MADD_XMAX);
    /* the whole rows quantized once in the memo's buffer, or per K chunk in `chunk` */
    const int whole = memo && ng <= RNN_MADD_MEMO_ROWS && (size_t)ng * Kp <= RNN_MADD_MEMO;
    int16_t *rows_q = whole ? rnn_madd_memo_buf[memo->slot] : NULL;
    float *rows_step = whole ? rnn_madd_memo_step[memo->slot] : NULL;
    if (whole && !(memo->src == in && memo->ld == ldin && memo->rows == ng && memo->K == Kp)) {
        for (int i = 0; i < ng; i++) {
            const float *x = in + (size_t)i * ldin;
            rows_step[i] = rnn_quant_step_avx2(x, K);
            rnn_madd_quant(rows_q + (size_t)i * Kp, x, K, Kp, rnn_madd_inv(rows_step[i]));
        }
        memo->src = in;
        memo->ld = ldin;
        memo->rows = ng;
        memo->K = Kp;
    }
    for (int r0 = 0; r0 < ng; r0 += RNN_MADD_ROWS) {
        const int nr = ng - r0 < RNN_MADD_ROWS ? ng - r0 : RNN_MADD_ROWS;
        const float *x = in + (size_t)r0 * ldin, *step = steps;
        if (whole)
            step = rows_step + r0;
        else
            for (int i = 0; i < nr; i++) steps[i] = rnn_quant_step_avx2(x + (size_t)i * ldin, K);
        for (int k0 = 0; k0 < K; k0 += RNN_MADD_KC) {
            const int kc = K - k0 < RNN_MADD_KC ? K - k0 : RNN_MADD_KC, kp = (kc + 3) & ~3;
            const int16_t *q = whole ? rows_q + (size_t)r0 * Kp + k0 : chunk;
            const size_t ldq = whole ? (size_t)Kp : RNN_MADD_KC;
            if (!whole)
                for (int i = 0; i < nr; i++)
                    rnn_madd_quant(chunk + (size_t)i * RNN_MADD_KC, x + (size_t)i * ldin + k0,
                                   kc, kp, rnn_madd_inv(steps[i]));
            for (int p = 0; p < parts; p++) {
                memset(sums[p], 0, (size_t)nr * units * sizeof(int32_t));
                rnn_panel_rows_i8_avx2madd(nr, G, kp, wq[p] + (size_t)k0 * units, q, ldq,
                                           sums[p], units);
            }
            /* a += scale * step / FINE * (S1 + S2 / FINE): the residual part's step is the
             * first's / FINE */
            for (int i = 0; i < nr; i++) {
                float *a = acc + (size_t)(r0 + i) * ldacc;
                const __m256 f1 = _mm256_set1_ps(step[i] / RNN_I8_FINE);
                const __m256 f2 = _mm256_set1_ps(step[i] / RNN_I8_FINE / RNN_I8_FINE);
                for (int o = 0; o < units; o += 8) {
                    const int32_t *s1 = sums[0] + (size_t)i * units + o;
                    __m256 t = _mm256_mul_ps(
                        _mm256_cvtepi32_ps(_mm256_loadu_si256((const __m256i *)(const void *)s1)), f1);
                    if (parts > 1)
                        t = _mm256_fmadd_ps(
                            _mm256_cvtepi32_ps(_mm256_loadu_si256(
                                (const __m256i *)(const void *)(sums[1] + (size_t)i * units + o))),
                            f2, t);
                    _mm256_storeu_ps(a + o, _mm256_fmadd_ps(t, _mm256_loadu_ps(scale + o),
                                                            _mm256_loadu_ps(a + o)));
                }
            }
        }
    }
}

static void rnn_gemm_i8_avx2madd(int ng, int G, int K, const void *w, const float *in,
                                 size_t ldin, float *acc, size_t ldacc, rnn_gemm_memo_t *memo) {
    rnn_madd_gemm(1, ng, G, K, w, in, ldin, acc, ldacc, memo);
}

static void rnn_gemm_i8r_avx2madd(int ng, int G, int K, const void *w, const float *in,
                                  size_t ldin, float *acc, size_t ldacc, rnn_gemm_memo_t *memo) {
    rnn_madd_gemm(2, ng, G, K, w, in, ldin, acc, ldacc, memo);
}

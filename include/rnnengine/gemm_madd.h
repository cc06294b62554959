/* int8 GEMM entries without VNNI: 16-bit integer multiply-adds (vpmaddwd), one template over
 * the vector width. kernels.h includes it after the avx2 variant and after the avx512 one
 * (AVX-512BW's 512-bit vpmaddwd), inside their target regions, and puts the entries in the
 * avx2 table and, where the CPU lacks AVX512-VNNI, in the avx512 one:
 *
 *   rnn_gemm_i8_<isa>madd    int8 weights (cells.h)
 *   rnn_gemm_i8r_<isa>madd   the same over both weight parts of i8r
 *
 * The inputs are quantized as for every int8 product (gemm_entries.h: rnn_quant_row), in two
 * parts q1, q2 in [-127, 127] with x ~= step * (q1 + q2 / RNN_I8_FINE); here both parts go
 * into one 16-bit integer X = RNN_I8_FINE * q1 + q2 (|X| <= 127 * 254 + 127 = 32385, and
 * x ~= step / RNN_I8_FINE * X: the same value). Weight quads are sign-extended to 16 bits in
 * registers, once for all the rows, and vpmaddwd multiplies pairs and adds them in 32 bits,
 * exactly: 2 multiply-adds and 2 adds per row per 4 k's of a vector of units, against fp32's
 * 4 FMAs.
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
 * count, the thread split, the path (streamed step, input projection) or the vector width
 * (avx2madd and avx512madd agree bit for bit).
 */

/* ---- the width-independent part: once per translation unit ---- */
#ifndef RNNENGINE_GEMM_MADD_ONCE
#define RNNENGINE_GEMM_MADD_ONCE

#define RNN_MADD_KC 512
#define RNN_MADD_XMAX 32385 /* 127 * RNN_I8_FINE + 127 (checked in rnn_madd_gemm) */
_Static_assert(RNN_MADD_XMAX <= 32767 &&
                   (long long)RNN_MADD_KC * 127 * RNN_MADD_XMAX < ((long long)1 << 31),
               "the 16-bit inputs or a chunk's int32 sums would overflow");

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

#endif /* RNNENGINE_GEMM_MADD_ONCE */

/* ---- per vector width (vec_<isa>.h's rnn_vi ops): names rnn_<op>_<isa>madd ---- */
#define RNN_MADD_ISA_(isa) isa##madd
#define RNN_MADD_ISA(isa) RNN_MADD_ISA_(isa)
#define RNN_MADD_FN(name) RNN_CAT(name, RNN_MADD_ISA(RNN_ISA))

/* a[n][g][v] += the RNN_VL units' quads at wk (group k) times row n's quad at
 * in + n * ldin + k, stored X0 X2 X1 X3 (rnn_madd_quant): the low bytes of the weights'
 * 16-bit words are k0 and k2, the high bytes k1 and k3. The weights are widened once for all
 * rows and stay in registers; the rows' broadcasts come one row at a time (2 registers, not
 * 2 per row). Integer adds are associative, and GCC regroups the sums of consecutive steps
 * (the accumulator last, to shorten its chain), which keeps every row's products of both
 * steps live at once: the 512-bit 8-row x 3-gate tile spilled 68 vectors per 2 steps.
 * With several rows RNN_MADD_KEEP fixes each add's place (an empty asm: no instruction;
 * batch-16 T=100 H=256 sequences 1.16 -> 1.30x fp32 for LSTM, 1.01 -> 1.22x for GRU, and
 * 1.15-1.28 -> 1.35-1.42x on the avx2 variant). One row has registers to spare, and a
 * streamed step with the fixed order ran 5-10% slower on the avx2 variant. */
#define RNN_MADD_KEEP(x) __asm__("" : "+v"(x))
RNN_INLINE void RNN_MADD_FN(rnn_madd_step)(const int NB, const int G, rnn_vi *a,
                                           const int8_t *wk, const int16_t *in, size_t ldin,
                                           int k) {
    rnn_vi lo[4][RNN_BW / RNN_VL], hi[4][RNN_BW / RNN_VL];
    _Pragma("GCC unroll 4") for (int g = 0; g < G; g++)
    _Pragma("GCC unroll 2") for (int v = 0; v < RNN_BW / RNN_VL; v++) {
        const rnn_vi q = rnn_vi_load(wk + ((size_t)g * RNN_BW + v * RNN_VL) * 4);
        lo[g][v] = rnn_vi_lo8(q);
        hi[g][v] = rnn_vi_hi8(q);
    }
    _Pragma("GCC unroll 8") for (int n = 0; n < NB; n++) {
        int32_t pair[2];
        memcpy(pair, in + (size_t)n * ldin + k, sizeof pair);
        const rnn_vi xa = rnn_vi_set1(pair[0]), xb = rnn_vi_set1(pair[1]);
        _Pragma("GCC unroll 4") for (int g = 0; g < G; g++)
        _Pragma("GCC unroll 2") for (int v = 0; v < RNN_BW / RNN_VL; v++) {
            const int i = (n * G + g) * (RNN_BW / RNN_VL) + v;
            if (NB == 1) {
                a[i] = rnn_vi_add(a[i], rnn_vi_add(rnn_vi_madd16(lo[g][v], xa),
                                                   rnn_vi_madd16(hi[g][v], xb)));
            } else {
                a[i] = rnn_vi_add(a[i], rnn_vi_madd16(lo[g][v], xa));
                RNN_MADD_KEEP(a[i]);
                a[i] = rnn_vi_add(a[i], rnn_vi_madd16(hi[g][v], xb));
                RNN_MADD_KEEP(a[i]);
            }
        }
    }
}

#define RNN_WT i8
#define RNN_GEMM_ISA RNN_MADD_ISA(RNN_ISA)
#define RNN_WT_T int8_t
#define RNN_KS 4
#define RNN_IN_T int16_t
#define RNN_ACC_T rnn_vi
#define RNN_ACC_E int32_t
#define RNN_ACC_LOAD(p) rnn_vi_load(p)
#define RNN_ACC_STORE(p, a) rnn_vi_store((p), (a))
#define RNN_ACC_ZERO() rnn_vi_zero()
#define RNN_ACC_ADD(a, b) rnn_vi_add((a), (b))
#define RNN_PANEL_STEP(NB, G, a, wk, in, ldin, k) RNN_MADD_FN(rnn_madd_step)(NB, G, a, wk, in, ldin, k)
#include "rnnengine/gemm_impl.h"

/* acc rows += in rows @ the panel's int8 weights (parts 1) or both i8r parts (2). */
static void RNN_MADD_FN(rnn_madd_gemm)(int parts, int ng, int G, int K, const void *w,
                                       const float *in, size_t ldin, float *acc, size_t ldacc,
                                       rnn_gemm_memo_t *memo) {
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
            rows_step[i] = RNN_FN(rnn_quant_step)(x, K);
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
            for (int i = 0; i < nr; i++) steps[i] = RNN_FN(rnn_quant_step)(x + (size_t)i * ldin, K);
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
                RNN_MADD_FN(rnn_panel_rows_i8)(nr, G, kp, wq[p] + (size_t)k0 * units, q, ldq,
                                               sums[p], units);
            }
            /* a += scale * step / FINE * (S1 + S2 / FINE): the residual part's step is the
             * first's / FINE. Lane by lane, so every vector width gives the same bits. */
            for (int i = 0; i < nr; i++) {
                float *a = acc + (size_t)(r0 + i) * ldacc;
                const rnn_v f1 = rnn_v_set1(step[i] / RNN_I8_FINE);
                const rnn_v f2 = rnn_v_set1(step[i] / RNN_I8_FINE / RNN_I8_FINE);
                for (int o = 0; o < units; o += RNN_VL) {
                    rnn_v t = rnn_v_mul(rnn_vi_to_v(rnn_vi_load(sums[0] + (size_t)i * units + o)), f1);
                    if (parts > 1)
                        t = rnn_v_fmadd(rnn_vi_to_v(rnn_vi_load(sums[1] + (size_t)i * units + o)), f2, t);
                    rnn_v_store(a + o, rnn_v_fmadd(t, rnn_v_load(scale + o), rnn_v_load(a + o)));
                }
            }
        }
    }
}

static void RNN_MADD_FN(rnn_gemm_i8)(int ng, int G, int K, const void *w, const float *in,
                                     size_t ldin, float *acc, size_t ldacc,
                                     rnn_gemm_memo_t *memo) {
    RNN_MADD_FN(rnn_madd_gemm)(1, ng, G, K, w, in, ldin, acc, ldacc, memo);
}

static void RNN_MADD_FN(rnn_gemm_i8r)(int ng, int G, int K, const void *w, const float *in,
                                      size_t ldin, float *acc, size_t ldacc,
                                      rnn_gemm_memo_t *memo) {
    RNN_MADD_FN(rnn_madd_gemm)(2, ng, G, K, w, in, ldin, acc, ldacc, memo);
}

/* Table t's int8 entries: this width's integer product. */
static void RNN_MADD_FN(rnn_kernels_use)(rnn_kernels_t *t) {
    t->gemm[RNN_W_I8] = RNN_MADD_FN(rnn_gemm_i8);
    t->gemm[RNN_W_I8R] = RNN_MADD_FN(rnn_gemm_i8r);
    t->gemm_isa[RNN_W_I8] = t->gemm_isa[RNN_W_I8R] = RNN_STR(RNN_MADD_ISA(RNN_ISA));
    t->gemm_memo[RNN_W_I8] = t->gemm_memo[RNN_W_I8R] = RNN_MADD_MEMO;
}

#undef RNN_MADD_FN
#undef RNN_MADD_KEEP
#undef RNN_MADD_ISA
#undef RNN_MADD_ISA_

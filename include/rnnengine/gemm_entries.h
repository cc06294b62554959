/* The GEMM entries of one ISA variant, one per weight type (no include guard: kernels.h
 * includes this file once per variant, after gemm_impl.h for each weight type). Each is an
 * rnn_gemm_fn: acc rows += fp32 input rows @ the block's panel, dequantized; the gate math
 * (kernels_impl.h) calls whichever the table holds for the cell's weight type.
 *
 * bf16 and int8 panels group k's (cells.h), so their entries first copy the input rows into a
 * zero-padded buffer (the last group never reads past a row), K in chunks of RNN_KC; int8 also
 * quantizes the rows, per row and symmetric, in two parts: q = round(x * 127 / max|x|) and
 * the remainder in 254 times finer steps. One part alone made the inputs' rounding as large
 * an error as the weights' (tanh RNN H=256, T=100: 7.0e-2 against float64, 4.4e-2 with two
 * parts; LSTM 2.2e-2 -> 1.9e-2; Silero's LSTM nodes 1.07e-1 -> 8.2e-2, their weights-only
 * error); the second part doubles the product's arithmetic but not the weight bytes, and a
 * streamed H=1024 step stays memory bound (3.9x fp32, was 4.2x).
 *
 * i8r weights (cells.h) are split the same way, and their entry runs the same int8 product
 * a second time, over the residual quads with the same quantized input rows into a second
 * set of sums: weights and inputs both get about 15 bits, all four cross products kept
 * (q1.x1, q1.x2, q2.x1, q2.x2; dropping q2.x2 would save half the second pass's rows of
 * arithmetic, none of its weight bytes). Silero's LSTM nodes, whose weight rows are 3-4x
 * those of N(0, 1/H) weights, need it: 1.1e-1-1.8e-1 from fp32 with i8 weights on the tests'
 * protocol, 4e-4-1.4e-3 with i8r. Twice the weight bytes: a streamed LSTM H=1024 step runs
 * 1.9x fp32 in i8r against 3.9x in i8, so core/precision.py picks it only where its rule asks.
 */

#define RNN_GE_(name, wt, isa) name##_##wt##_##isa
#define RNN_GE(name, wt, isa) RNN_GE_(name, wt, isa)
#define rnn_panel_rows_f32 RNN_GE(rnn_panel_rows, f32, RNN_ISA)
#define rnn_panel_rows_f16 RNN_GE(rnn_panel_rows, f16, RNN_ISA)
#define rnn_panel_rows_bf16 RNN_GE(rnn_panel_rows, bf16, RNN_ISA)
#define rnn_panel_rows_i8 RNN_GE(rnn_panel_rows, i8, RNN_ISA)

#define RNN_KC 512           /* k's per chunk of converted input rows (a multiple of 4) */
#define RNN_ROWS_MAX 8       /* >= RNN_NB_MAX(G) of every variant */

static void RNN_FN(rnn_gemm_f32)(int ng, int G, int K, const void *w, const float *in,
                                 size_t ldin, float *acc, size_t ldacc,
                                 rnn_gemm_memo_t *memo) {
    (void)memo;
    rnn_panel_rows_f32(ng, G, K, (const float *)w, in, ldin, acc, ldacc);
}

/* fp16: the weights converted in registers as the panel streams by, each weight vector once
 * per k for all the rows of a register tile (gemm_impl.h: up to RNN_NB_MAX rows, the gates a
 * few at a time on avx2), so the conversions are a small share of the FMAs, and the panel is
 * read in half the bytes of fp32. Converting K slices once into L1 for all the rows and
 * running the fp32 product on them, as this entry did for more rows than one tile, measured
 * slower on batched sequences (T=100 N=16 H=256, LSTM and GRU: avx2 0.96-0.99x fp32 -> 1.05-1.09x
 * in registers, avx512 0.85-0.90x -> 0.99-1.04x). Every row count sums the same products in
 * the same order, so a row alone, the batch and a streamed step give the same bits. The
 * portable variant, whose loops convert every weight for every row, converts K slices once
 * into fp32 for several rows and sums k in order in any slicing. */
#define RNN_F16_KS 128
static void RNN_FN(rnn_gemm_f16)(int ng, int G, int K, const void *w, const float *in,
                                 size_t ldin, float *acc, size_t ldacc,
                                 rnn_gemm_memo_t *memo) {
    (void)memo;
    const uint16_t *wh = (const uint16_t *)w;
#ifdef RNN_PANEL_PLAIN
    if (ng > RNN_NB_MAX(G)) {
        _Alignas(64) float slice[RNN_F16_KS * 4 * RNN_BW];
        const size_t units = (size_t)G * RNN_BW;
        for (int k0 = 0; k0 < K; k0 += RNN_F16_KS) {
            const int kc = K - k0 < RNN_F16_KS ? K - k0 : RNN_F16_KS;
            const uint16_t *src = wh + (size_t)k0 * units;
            for (size_t i = 0; i < (size_t)kc * units; i += RNN_VL)
                rnn_v_store(slice + i, rnn_v_load_f16(src + i));
            rnn_panel_rows_f32(ng, G, kc, slice, in + k0, ldin, acc, ldacc);
        }
        return;
    }
#endif
    rnn_panel_rows_f16(ng, G, K, wh, in, ldin, acc, ldacc);
}
#undef RNN_F16_KS

/* dst[0:kp] = src[0:kc], zeros after (kp - kc < 4). */
static inline void RNN_FN(rnn_copy_padded)(float *dst, const float *src, int kc, int kp) {
    int k = 0;
    for (; k + RNN_VL <= kc; k += RNN_VL) rnn_v_store(dst + k, rnn_v_load(src + k));
    for (; k < kc; k++) dst[k] = src[k];
    for (; k < kp; k++) dst[k] = 0.0f;
}

static void RNN_FN(rnn_gemm_bf16)(int ng, int G, int K, const void *w, const float *in,
                                  size_t ldin, float *acc, size_t ldacc,
                                  rnn_gemm_memo_t *memo) {
    (void)memo;
    _Alignas(64) float buf[RNN_ROWS_MAX * RNN_KC];
    const int nbmax = RNN_NB_MAX(G);
    RNN_ASSERT(nbmax <= RNN_ROWS_MAX);
    for (int k0 = 0; k0 < K; k0 += RNN_KC) {
        const int kc = K - k0 < RNN_KC ? K - k0 : RNN_KC, kp = (kc + 1) & ~1;
        const uint16_t *wk = (const uint16_t *)w + (size_t)k0 * G * RNN_BW;
        for (int n0 = 0; n0 < ng; n0 += nbmax) {
            const int nb = ng - n0 < nbmax ? ng - n0 : nbmax;
            for (int i = 0; i < nb; i++)
                RNN_FN(rnn_copy_padded)(buf + (size_t)i * kp, in + (n0 + i) * ldin + k0, kc, kp);
            rnn_panel_rows_bf16(nb, G, kp, wk, buf, kp, acc + (size_t)n0 * ldacc, ldacc);
        }
    }
}

/* max |x[0:n]| / 127: the row's quantization step (0 for a zero row); NaN when the row has a
 * NaN or an infinity, so the row's products come out NaN as in fp32 (a max alone drops NaN:
 * x * 0 is NaN exactly for those inputs). */
static inline float RNN_FN(rnn_quant_step)(const float *x, int n) {
    rnn_v m = rnn_v_zero(), z = rnn_v_zero();
    int k = 0;
    for (; k + RNN_VL <= n; k += RNN_VL) {
        const rnn_v v = rnn_v_load(x + k);
        m = rnn_v_max(m, rnn_v_abs(v));
        z = rnn_v_fmadd(v, rnn_v_zero(), z);
    }
    float lanes[RNN_VL], zl[RNN_VL], r = 0.0f, bad = 0.0f;
    rnn_v_store(lanes, m);
    rnn_v_store(zl, z);
    for (int i = 0; i < RNN_VL; i++) {
        r = lanes[i] > r ? lanes[i] : r;
        bad += zl[i];
    }
    for (; k < n; k++) {
        r = fabsf(x[k]) > r ? fabsf(x[k]) : r;
        bad += x[k] * 0.0f;
    }
    return bad == 0.0f ? r / 127.0f : NAN;
}

/* Two rows of integers in [-127, 127] (as floats) per input row, zeros past kc: the row in
 * steps of `step` (dst) and what that leaves, in steps of step / RNN_I8_FINE (dst2).
 * RNN_I8_FINE: the second part's step divides the first's; |t - round(t)| <= 1/2, so the
 * second part's integers stay within +-127 (cells.h: inputs get about 15 bits this way). */
static inline void RNN_FN(rnn_quant_row)(float *dst, float *dst2, const float *src, int kc,
                                         int kp, float inv) {
    const rnn_v vi = rnn_v_set1(inv), fine = rnn_v_set1(RNN_I8_FINE);
    int k = 0;
    for (; k + RNN_VL <= kc; k += RNN_VL) {
        const rnn_v t = rnn_v_mul(rnn_v_load(src + k), vi), q = rnn_v_round(t);
        rnn_v_store(dst + k, q);
        rnn_v_store(dst2 + k, rnn_v_round(rnn_v_mul(rnn_v_sub(t, q), fine)));
    }
    for (; k < kc; k++) {
        const float t = src[k] * inv, q = rnn_round_serial(t);
        dst[k] = q;
        dst2[k] = rnn_round_serial((t - q) * RNN_I8_FINE);
    }
    for (; k < kp; k++) dst[k] = dst2[k] = 0.0f;
}

/* The int8 entries' common part (this file's rnn_gemm_i8 and rnn_gemm_i8r, gemm_dot.h's
 * vpdpbusd entries): input rows in chunks of half the rows the register blocking allows, each
 * quantized into two rows of the product (rnn_quant_row) so each weight part's panel still
 * streams past once per chunk; K in chunks of RNN_KC. parts: 1 for i8 weights, 2 for i8r
 * (the residual quads: the same product over them into their own sums). The product's own
 * operations:
 *   quant(buf, i, nb, kp, x, kc, inv)   rows i and nb + i of buf (stride kp) from x[0:kc]
 *   panel(rows, G, kp, w, buf, sums, units)
 *   finish(a, sums, i, nb, units, step, scale, wsum)   a[0:units] += row i's two parts
 *                                       over one weight part (wsum: its per-unit weight sums)
 * buf and sums are 4-byte elements of the product's choice (float, uint8 quads, int32). The
 * residual part's scale is the first's / RNN_I8_FINE: finish gets it folded into step. */
#ifndef RNN_I8_FN_TYPES
#define RNN_I8_FN_TYPES
typedef void (*rnn_i8_quant_fn)(void *buf, int i, int nb, int kp, const float *x, int kc,
                                float inv);
typedef void (*rnn_i8_panel_fn)(int rows, int G, int kp, const int8_t *w, const void *buf,
                                void *sums, int units);
typedef void (*rnn_i8_finish_fn)(float *a, const void *sums, int i, int nb, int units,
                                 float step, const float *scale, const int32_t *wsum);
#endif

RNN_INLINE void RNN_FN(rnn_gemm_i8_body)(int parts, int ng, int G, int K, const void *w,
                                         const float *in, size_t ldin, float *acc,
                                         size_t ldacc, rnn_i8_quant_fn quant,
                                         rnn_i8_panel_fn panel, rnn_i8_finish_fn finish) {
    _Alignas(64) float buf[RNN_ROWS_MAX * RNN_KC];
    _Alignas(64) float sums[2][RNN_ROWS_MAX * 4 * RNN_BW];
    float step[RNN_ROWS_MAX] = {0.0f};
    const int nbmax = RNN_NB_MAX(G) / 2 > 1 ? RNN_NB_MAX(G) / 2 : 1, units = G * RNN_BW;
    const int8_t *wq[2] = {(const int8_t *)w, parts > 1 ? rnn_i8r_quads(w, K, G) : NULL};
    const int32_t *wsum[2] = {rnn_i8_sums(w, K, G), parts > 1 ? rnn_i8r_sums(w, K, G) : NULL};
    const float *scale = rnn_i8_scales(w, K, G);
    RNN_ASSERT(parts == 1 || parts == 2);
    RNN_ASSERT(2 * nbmax <= RNN_ROWS_MAX && G >= 1 && G <= 4);
    for (int n0 = 0; n0 < ng; n0 += nbmax) {
        const int nb = ng - n0 < nbmax ? ng - n0 : nbmax;
        for (int i = 0; i < nb; i++) step[i] = RNN_FN(rnn_quant_step)(in + (n0 + i) * ldin, K);
        for (int p = 0; p < parts; p++)
            memset(sums[p], 0, (size_t)2 * nb * units * sizeof(float));
        for (int k0 = 0; k0 < K; k0 += RNN_KC) {
            const int kc = K - k0 < RNN_KC ? K - k0 : RNN_KC, kp = (kc + 3) & ~3;
            for (int i = 0; i < nb; i++)
                quant(buf, i, nb, kp, in + (n0 + i) * ldin + k0, kc,
                      step[i] > 0.0f ? 1.0f / step[i] : 0.0f);
            for (int p = 0; p < parts; p++)
                panel(2 * nb, G, kp, wq[p] + (size_t)k0 * units, buf, sums[p], units);
        }
        for (int i = 0; i < nb; i++)
            for (int p = 0; p < parts; p++)
                finish(acc + (size_t)(n0 + i) * ldacc, sums[p], i, nb, units,
                       p ? step[i] / RNN_I8_FINE : step[i], scale, wsum[p]);
    }
}

/* int8 weights with fp32 FMAs on the quantized values, which are small integers: the sums
 * are the integer sums the VNNI entry computes (exact while below 2^24). */
static inline void RNN_FN(rnn_i8_quant)(void *buf, int i, int nb, int kp, const float *x,
                                        int kc, float inv) {
    float *b = (float *)buf;
    RNN_FN(rnn_quant_row)(b + (size_t)i * kp, b + (size_t)(nb + i) * kp, x, kc, kp, inv);
}

static inline void RNN_FN(rnn_i8_panel)(int rows, int G, int kp, const int8_t *w,
                                        const void *buf, void *sums, int units) {
    rnn_panel_rows_i8(rows, G, kp, w, (const float *)buf, kp, (float *)sums, units);
}

static inline void RNN_FN(rnn_i8_finish)(float *a, const void *sums, int i, int nb, int units,
                                         float step, const float *scale,
                                         const int32_t *wsum) {
    const float *s1 = (const float *)sums + (size_t)i * units;
    const float *s2 = (const float *)sums + (size_t)(nb + i) * units;
    const rnn_v s = rnn_v_set1(step), f = rnn_v_set1(step / RNN_I8_FINE);
    (void)wsum; /* the sums here are signed: no shift to take back */
    for (int o = 0; o < units; o += RNN_VL) {
        const rnn_v t = rnn_v_fmadd(rnn_v_load(s2 + o), f, rnn_v_mul(rnn_v_load(s1 + o), s));
        rnn_v_store(a + o, rnn_v_fmadd(t, rnn_v_load(scale + o), rnn_v_load(a + o)));
    }
}

static void RNN_FN(rnn_gemm_i8)(int ng, int G, int K, const void *w, const float *in,
                                size_t ldin, float *acc, size_t ldacc,
                                rnn_gemm_memo_t *memo) {
    (void)memo;
    RNN_FN(rnn_gemm_i8_body)(1, ng, G, K, w, in, ldin, acc, ldacc, RNN_FN(rnn_i8_quant),
                             RNN_FN(rnn_i8_panel), RNN_FN(rnn_i8_finish));
}

static void RNN_FN(rnn_gemm_i8r)(int ng, int G, int K, const void *w, const float *in,
                                 size_t ldin, float *acc, size_t ldacc,
                                 rnn_gemm_memo_t *memo) {
    (void)memo;
    RNN_FN(rnn_gemm_i8_body)(2, ng, G, K, w, in, ldin, acc, ldacc, RNN_FN(rnn_i8_quant),
                             RNN_FN(rnn_i8_panel), RNN_FN(rnn_i8_finish));
}

#undef RNN_GE_
#undef RNN_GE
#undef rnn_panel_rows_f32
#undef rnn_panel_rows_f16
#undef rnn_panel_rows_bf16
#undef rnn_panel_rows_i8

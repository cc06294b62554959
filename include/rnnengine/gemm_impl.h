/* The panel product of one weight type on one ISA (no include guard: kernels.h includes this
 * file once per (weight type, ISA) pair, after a vec_<isa>.h):
 *
 *   rnn_panel_rows  acc[n][g][0:16] += sum_k in[n][k] * w[k][g][0:16] for ng rows: the
 *                   register-blocked GEMV/small-GEMM over one block's panel (cells.h layout).
 *
 * The includer defines the weight type:
 *   RNN_WT              name token (f32, f16, bf16, i8): functions are rnn_<op>_<wt>_<isa>
 *   RNN_GEMM_ISA        optional ISA token of the name when the product uses instructions
 *                       beyond the vec header's (e.g. avx512bf16); default RNN_ISA
 *   RNN_WT_T            stored weight element; RNN_KS k's per unit group (cells.h)
 *   RNN_WT_LOADJ(p, j)  fp32 vector of the j-th k of the group at p (a rnn_v_load_* op)
 * and, for a product with its own instruction instead of fp32 FMAs (gemm_dot.h):
 *   RNN_IN_T, RNN_ACC_T, RNN_ACC_E, RNN_ACC_LOAD/STORE/ZERO/ADD, RNN_PANEL_STEP.
 * Every name it defines or was given is undefined again at the end.
 */

#ifndef RNN_GEMM_ISA
#define RNN_GEMM_ISA RNN_ISA
#endif
#define RNN_CATW_(name, wt, isa) name##_##wt##_##isa
#define RNN_CATW(name, wt, isa) RNN_CATW_(name, wt, isa)
#define RNN_FNW(name) RNN_CATW(name, RNN_WT, RNN_GEMM_ISA)

#define RNN_NV (RNN_BW / RNN_VL)     /* vectors per 16-unit block */
#define RNN_GK(G) ((size_t)(G) * RNN_BW * RNN_KS) /* weights per k group of a panel */

#ifndef RNN_PANEL_STEP
/* fp32 arithmetic: each weight converted in registers, one FMA per (row, k) */
#define RNN_IN_T float
#define RNN_ACC_T rnn_v
#define RNN_ACC_E float
#define RNN_ACC_LOAD(p) rnn_v_load(p)
#define RNN_ACC_STORE(p, a) rnn_v_store((p), (a))
#define RNN_ACC_ZERO() rnn_v_zero()
#define RNN_ACC_ADD(a, b) rnn_v_add((a), (b))
#define RNN_PANEL_STEP(NB, G, a, wk, in, ldin, k) RNN_FNW(rnn_panel_fma)(NB, G, a, wk, in, ldin, k)

/* a[n][g][v] += in[n][k + j] * w[j][g][v] for the RNN_KS k's of the group at wk. */
RNN_INLINE void RNN_FNW(rnn_panel_fma)(const int NB, const int G, rnn_v *a,
                                       const RNN_WT_T *wk, const float *in, size_t ldin,
                                       int k) {
    _Pragma("GCC unroll 4") for (int j = 0; j < RNN_KS; j++) {
        rnn_v wv[4][RNN_NV];
        _Pragma("GCC unroll 4") for (int g = 0; g < G; g++)
        _Pragma("GCC unroll 16") for (int v = 0; v < RNN_NV; v++)
            wv[g][v] = RNN_WT_LOADJ(wk + ((size_t)g * RNN_BW + v * RNN_VL) * RNN_KS, j);
        _Pragma("GCC unroll 8") for (int n = 0; n < NB; n++) {
            const rnn_v xb = rnn_v_set1(in[(size_t)n * ldin + k + j]);
            _Pragma("GCC unroll 4") for (int g = 0; g < G; g++)
            _Pragma("GCC unroll 16") for (int v = 0; v < RNN_NV; v++)
                a[(n * G + g) * RNN_NV + v] = rnn_v_fmadd(xb, wv[g][v], a[(n * G + g) * RNN_NV + v]);
        }
    }
}
#endif

/* K groups are summed in U contiguous parts: part 0 onto the initial value, parts 1.. from
 * zero, then added left to right. With one row, the parts run interleaved so U * G * NV
 * independent sums hide the FMA latency (4 cycles, 2 per cycle); with several rows there are
 * enough sums already and the parts run one after another. Either way every output is the
 * same sum in the same order, so a streamed step, a whole sequence, any batch size and any
 * thread split give bit-identical pre-activations. */
#define RNN_UNROLL(G) ((G) * RNN_NV >= 8 ? 1 : 8 / ((G) * RNN_NV))
#define RNN_ACC_MAX 24 /* accumulators of the largest pass (rows x gates per pass x NV) */
#define RNN_ACC(n, g, v) (acc + (size_t)(n) * ldacc + (g) * RNN_BW + (v) * RNN_VL)
#define RNN_FOR_ALL(NB, G)                                                                  \
    _Pragma("GCC unroll 8") for (int n = 0; n < NB; n++)                                    \
    _Pragma("GCC unroll 4") for (int g = 0; g < G; g++)                                     \
    _Pragma("GCC unroll 16") for (int v = 0; v < RNN_NV; v++)
#define RNN_AI(u, n, g, v) ((((u) * NB + (n)) * G + (g)) * RNN_NV + (v))

#ifndef RNN_PANEL_PLAIN
/* Gates per pass over a panel for NB rows (vec_<isa>.h: RNN_GATE_PASS; default all G): with
 * several rows, an ISA whose registers cannot hold NB x G x NV accumulators takes the gates
 * a few at a time, each pass reusing every weight vector it loads for all NB rows. Every
 * output's sum is the same whichever gates share a pass. */
#ifdef RNN_GATE_PASS
#define RNN_GP(NB, G) RNN_GATE_PASS(NB, G)
#else
#define RNN_GP(NB, G) (G)
#endif
/* k groups per iteration of the several-row loop, 1 or 2 (vec_<isa>.h: RNN_K_UNROLL(KS);
 * default 2): two steps give the scheduler more to overlap, but where each step already
 * fills the registers (NEON's products of grouped k's) GCC hoists the second step's
 * operands and spills. The sums are the same either way. */
#ifdef RNN_K_UNROLL
#define RNN_KU RNN_K_UNROLL(RNN_KS)
#else
#define RNN_KU 2
#endif
#define RNN_MIN_(a, b) ((a) < (b) ? (a) : (b))
/* accumulator (n, g, v) of a pass over GP gates */
#define RNN_AG(n, g, v) (((n) * GP + (g)) * RNN_NV + (v))
#endif

#ifndef RNN_PANEL_PLAIN
/* One (rows NB, gates G) product over K inputs (a multiple of RNN_KS, or the rows padded);
 * inlined into each instance below with constant NB and G, so the accumulators live in
 * registers. */
RNN_INLINE void RNN_FNW(rnn_panel_body)(const int NB, const int G, int K,
                                        const RNN_WT_T *restrict w,
                                        const RNN_IN_T *restrict in, size_t ldin,
                                        RNN_ACC_E *restrict acc, size_t ldacc) {
    const int U = RNN_UNROLL(G);
    const int Kg = (K + RNN_KS - 1) / RNN_KS; /* k groups */
    const int Kp = (Kg + U - 1) / U;          /* groups per part; the last may be shorter */
    RNN_ACC_T a[RNN_ACC_MAX];
    if (NB == 1) {
        _Pragma("GCC unroll 8") for (int u = 0; u < U; u++)
        RNN_FOR_ALL(1, G) a[RNN_AI(u, 0, g, v)] = u ? RNN_ACC_ZERO() : RNN_ACC_LOAD(RNN_ACC(0, g, v));
        const int full = Kg - (U - 1) * Kp; /* steps where every part has a group */
        int k = 0;
        for (; k < full; k++) {
            _Pragma("GCC unroll 8") for (int u = 0; u < U; u++) {
                const int kg = k + u * Kp;
                RNN_PANEL_STEP(1, G, a + RNN_AI(u, 0, 0, 0), w + kg * RNN_GK(G), in, ldin, kg * RNN_KS);
            }
        }
        for (; k < Kp; k++) {
            _Pragma("GCC unroll 8") for (int u = 0; u < U; u++) {
                const int kg = k + u * Kp;
                if (kg < Kg)
                    RNN_PANEL_STEP(1, G, a + RNN_AI(u, 0, 0, 0), w + kg * RNN_GK(G), in, ldin, kg * RNN_KS);
            }
        }
        _Pragma("GCC unroll 8") for (int u = 1; u < U; u++)
        RNN_FOR_ALL(1, G) a[RNN_AI(0, 0, g, v)] = RNN_ACC_ADD(a[RNN_AI(0, 0, g, v)], a[RNN_AI(u, 0, g, v)]);
        RNN_FOR_ALL(1, G) RNN_ACC_STORE(RNN_ACC(0, g, v), a[RNN_AI(0, 0, g, v)]);
        return;
    }
    _Pragma("GCC unroll 4") for (int g0 = 0; g0 < G; g0 += RNN_GP(NB, G)) {
        const int GP = RNN_MIN_(RNN_GP(NB, G), G - g0);
        const RNN_WT_T *wg = w + (size_t)g0 * RNN_BW * RNN_KS;
        RNN_ACC_E *ag = acc + (size_t)g0 * RNN_BW;
#define RNN_ACCG(n, g, v) (ag + (size_t)(n) * ldacc + (g) * RNN_BW + (v) * RNN_VL)
        for (int u = 0; u < U; u++) {
            RNN_FOR_ALL(NB, GP) a[RNN_AG(n, g, v)] = u ? RNN_ACC_ZERO() : RNN_ACC_LOAD(RNN_ACCG(n, g, v));
            const int k1 = Kg < (u + 1) * Kp ? Kg : (u + 1) * Kp;
            int kg = u * Kp;
            for (; kg + RNN_KU <= k1; kg += RNN_KU) {
                RNN_PANEL_STEP(NB, GP, a, wg + kg * RNN_GK(G), in, ldin, kg * RNN_KS);
                if (RNN_KU == 2)
                    RNN_PANEL_STEP(NB, GP, a, wg + (kg + 1) * RNN_GK(G), in, ldin, (kg + 1) * RNN_KS);
            }
            if (kg < k1) RNN_PANEL_STEP(NB, GP, a, wg + kg * RNN_GK(G), in, ldin, kg * RNN_KS);
            if (u == 0) {
                RNN_FOR_ALL(NB, GP) RNN_ACC_STORE(RNN_ACCG(n, g, v), a[RNN_AG(n, g, v)]);
            } else {
                RNN_FOR_ALL(NB, GP)
                    RNN_ACC_STORE(RNN_ACCG(n, g, v), RNN_ACC_ADD(RNN_ACC_LOAD(RNN_ACCG(n, g, v)), a[RNN_AG(n, g, v)]));
            }
        }
#undef RNN_ACCG
    }
}
#else
/* The portable variant: plain loops the compiler vectorizes for whatever the baseline ISA is.
 * The register-blocked form above, with 16 scalar lanes per gate, spilled badly on SSE2's 16
 * registers (LSTM H=64 step 18.5 us vs GRU 3.3 us). */
RNN_INLINE void RNN_FNW(rnn_panel_body)(const int NB, const int G, int K,
                                        const RNN_WT_T *restrict w,
                                        const RNN_IN_T *restrict in, size_t ldin,
                                        RNN_ACC_E *restrict acc, size_t ldacc) {
    for (int n = 0; n < NB; n++) {
        float a[4 * RNN_BW];
        memcpy(a, acc + (size_t)n * ldacc, (size_t)G * RNN_BW * sizeof(float));
        for (int k = 0; k < K; k++) {
            const float xk = in[(size_t)n * ldin + k];
            const RNN_WT_T *wk = w + (size_t)(k / RNN_KS) * RNN_GK(G) + k % RNN_KS;
            for (int j = 0; j < G * RNN_BW; j++) a[j] += xk * RNN_WT_LOADJ(wk + j * RNN_KS, 0);
        }
        memcpy(acc + (size_t)n * ldacc, a, (size_t)G * RNN_BW * sizeof(float));
    }
}
#endif

/* The instances: one function per (rows NB, gates G) the ISA's register file allows, so
 * compiler errors, profiles and debuggers show the shape. */
#define RNN_PANEL_DEF(NB, G)                                                                \
    static void RNN_FNW(rnn_panel_##NB##x##G)(int K, const RNN_WT_T *restrict w,            \
                                              const RNN_IN_T *restrict in, size_t ldin,     \
                                              RNN_ACC_E *restrict acc, size_t ldacc) {      \
        RNN_FNW(rnn_panel_body)(NB, G, K, w, in, ldin, acc, ldacc);                         \
    }
RNN_PANEL_INSTANCES(RNN_PANEL_DEF)

/* acc rows n < nb (stride ldacc) += in rows (stride ldin) @ panel w; nb <= RNN_NB_MAX(G). */
static inline void RNN_FNW(rnn_panel)(int nb, int G, int K, const RNN_WT_T *restrict w,
                                      const RNN_IN_T *restrict in, size_t ldin,
                                      RNN_ACC_E *restrict acc, size_t ldacc) {
    switch (G * 16 + nb) {
#define RNN_PANEL_CASE(NB, G_)                                                              \
    case (G_) * 16 + (NB):                                                                  \
        RNN_FNW(rnn_panel_##NB##x##G_)(K, w, in, ldin, acc, ldacc);                         \
        return;
        RNN_PANEL_INSTANCES(RNN_PANEL_CASE)
#undef RNN_PANEL_CASE
    default:
        RNN_ASSERT(!"panel shape without an instance: RNN_NB_MAX and RNN_PANEL_INSTANCES disagree");
        return;
    }
}

#ifndef RNN_PANEL_PLAIN
/* rnn_panel_body's split of Kg k groups of a G-gate panel: returns the number of parts and
 * sets [*kg0, *kg1), part u's groups (empty for a part past the end). Whoever sums a panel in
 * pieces (rnn_panel_sliced) follows it to keep the same bits. */
static inline int RNN_FNW(rnn_panel_part)(int G, int Kg, int u, int *kg0, int *kg1) {
    const int U = RNN_UNROLL(G), Kp = (Kg + U - 1) / U;
    *kg0 = u * Kp;
    *kg1 = Kg < (u + 1) * Kp ? Kg : (u + 1) * Kp;
    return U;
}

/* Rows n < NB of to = (from, or zero when NULL) + the sum over k groups [kg0, kg1): one
 * stretch of one part of rnn_panel_body's sums (the same operations in the same order).
 * Each group also prefetches pf_per lines at pf (while pf_left lasts). */
RNN_INLINE void RNN_FNW(rnn_panel_span)(const int NB, const int G, int kg0, int kg1,
                                        const RNN_WT_T *restrict w,
                                        const RNN_IN_T *restrict in, size_t ldin,
                                        const RNN_ACC_E *from, size_t ldfrom,
                                        RNN_ACC_E *to, size_t ldto,
                                        const char *pf, int pf_per, int pf_left) {
    /* with several passes each prefetches its share of the lines */
    const int passes = (G + RNN_GP(NB, G) - 1) / RNN_GP(NB, G);
    const int share = (pf_left + passes - 1) / passes;
    _Pragma("GCC unroll 4") for (int g0 = 0, p = 0; g0 < G; g0 += RNN_GP(NB, G), p++) {
        const int GP = RNN_MIN_(RNN_GP(NB, G), G - g0);
        const RNN_WT_T *wg = w + (size_t)g0 * RNN_BW * RNN_KS;
        const char *pfp = pf;
        int left = pf_left, per = pf_per;
        if (passes > 1) {
            left = pf_left - p * share < share ? pf_left - p * share : share;
            pfp = left > 0 ? pf + (size_t)p * share * 64 : NULL;
            per = left > 0 ? (left + (kg1 - kg0) - 1) / (kg1 - kg0) : 0;
        }
        RNN_ACC_T a[RNN_ACC_MAX];
        RNN_FOR_ALL(NB, GP)
            a[RNN_AG(n, g, v)] = from ? RNN_ACC_LOAD(from + (size_t)n * ldfrom + (g0 + g) * RNN_BW + v * RNN_VL)
                                      : RNN_ACC_ZERO();
        for (int kg = kg0; kg < kg1; kg++) {
            for (int i = 0; i < per && left > 0; i++, left--, pfp += 64)
                __builtin_prefetch(pfp, 0, 3);
            RNN_PANEL_STEP(NB, GP, a, wg + kg * RNN_GK(G), in, ldin, kg * RNN_KS);
        }
        RNN_FOR_ALL(NB, GP)
            RNN_ACC_STORE(to + (size_t)n * ldto + (g0 + g) * RNN_BW + v * RNN_VL, a[RNN_AG(n, g, v)]);
    }
}

#define RNN_SPAN_DEF(NB, G)                                                                 \
    static void RNN_FNW(rnn_span_##NB##x##G)(int kg0, int kg1, const RNN_WT_T *restrict w,  \
                                             const RNN_IN_T *restrict in, size_t ldin,      \
                                             const RNN_ACC_E *from, size_t ldfrom,          \
                                             RNN_ACC_E *to, size_t ldto, const char *pf,    \
                                             int pf_per, int pf_left) {                     \
        RNN_FNW(rnn_panel_span)(NB, G, kg0, kg1, w, in, ldin, from, ldfrom, to, ldto, pf,   \
                                pf_per, pf_left);                                           \
    }
RNN_PANEL_INSTANCES(RNN_SPAN_DEF)
#undef RNN_SPAN_DEF

static inline void RNN_FNW(rnn_span)(int nb, int G, int kg0, int kg1, const RNN_WT_T *w,
                                     const RNN_IN_T *in, size_t ldin, const RNN_ACC_E *from,
                                     size_t ldfrom, RNN_ACC_E *to, size_t ldto, const char *pf,
                                     int pf_per, int pf_left) {
    switch (G * 16 + nb) {
#define RNN_SPAN_CASE(NB, G_)                                                               \
    case (G_) * 16 + (NB):                                                                  \
        RNN_FNW(rnn_span_##NB##x##G_)(kg0, kg1, w, in, ldin, from, ldfrom, to, ldto, pf,    \
                                      pf_per, pf_left);                                     \
        return;
        RNN_PANEL_INSTANCES(RNN_SPAN_CASE)
#undef RNN_SPAN_CASE
    default:
        RNN_ASSERT(!"span shape without an instance: RNN_NB_MAX and RNN_PANEL_INSTANCES disagree");
        return;
    }
}

/* Several row chunks over a panel that comes from beyond L2 (a recurrent product of a
 * layer whose weights exceed it): the chunks take K in slices of RNN_SLICE_BYTES, all of them
 * over one slice (in L1) before the next, and the chunks after the first prefetch the next
 * slice, so the panel streams in once, overlapped with the arithmetic. Each part of the sums
 * (rnn_panel_body: U parts over K) keeps its order: part 0 runs onto acc slice after slice,
 * the others from zero in tmp, added to acc when the part ends, so the result is the same
 * bits as rnn_panel_body's. Measured (C harness, 16 rows, LSTM H=1024, 16 MB of R in L3):
 * 1030-1110 us a step as whole passes per chunk, 840-900 us sliced; with the panel in L2
 * (H=256) slicing was 5-8% slower, hence the size threshold. */
#define RNN_SLICE_BYTES 16384
#define RNN_COLD_PANEL_BYTES ((size_t)128 << 10)
#define RNN_SLICED_ROWS_MAX 24 /* the phase's row group (kernels_impl.h: RNN_GROUP) */
static void RNN_FNW(rnn_panel_sliced)(int ng, int G, int K, const RNN_WT_T *restrict w,
                                      const RNN_IN_T *restrict in, size_t ldin,
                                      RNN_ACC_E *restrict acc, size_t ldacc) {
    _Alignas(64) RNN_ACC_E tmp[RNN_SLICED_ROWS_MAX * 4 * RNN_BW];
    const int nbmax = RNN_NB_MAX(G), units = G * RNN_BW;
    const int Kg = (K + RNN_KS - 1) / RNN_KS;
    const size_t group_bytes = RNN_GK(G) * sizeof(RNN_WT_T);
    const int slice = (int)(RNN_SLICE_BYTES / group_bytes) > 0 ? (int)(RNN_SLICE_BYTES / group_bytes) : 1;
    const int chunks = (ng + nbmax - 1) / nbmax;
    RNN_ASSERT(ng <= RNN_SLICED_ROWS_MAX && G <= 4 && chunks > 1);
    for (int u = 0, U = 1; u < U; u++) {
        int k0, k1;
        U = RNN_FNW(rnn_panel_part)(G, Kg, u, &k0, &k1);
        RNN_ACC_E *dst = u ? tmp : acc;
        const size_t ldd = u ? (size_t)units : ldacc;
        if (k0 >= k1 && u) memset(tmp, 0, (size_t)ng * units * sizeof(RNN_ACC_E));
        for (int s0 = k0; s0 < k1; s0 += slice) {
            const int s1 = k1 - s0 < slice ? k1 : s0 + slice;
            /* the next slice: the rest of K, then nothing (the next block's panel is the
             * caller's) */
            const int next = Kg - s1 < slice ? Kg - s1 : slice;
            const int lines = (int)((size_t)next * group_bytes / 64);
            const char *pf = (const char *)(w + s1 * RNN_GK(G));
            for (int c = 0; c < chunks; c++) {
                const int n0 = c * nbmax, nb = ng - n0 < nbmax ? ng - n0 : nbmax;
                /* chunk c >= 1 prefetches its share of the next slice's lines */
                const int share = c ? (lines + chunks - 2) / (chunks - 1) : 0;
                const int first = c ? (c - 1) * share : 0;
                const int left = c && first < lines ? (lines - first < share ? lines - first : share) : 0;
                const int per = left ? (left + (s1 - s0) - 1) / (s1 - s0) : 0;
                const RNN_ACC_E *from = s0 > k0 || !u ? dst + (size_t)n0 * ldd : NULL;
                RNN_FNW(rnn_span)(nb, G, s0, s1, w, in + (size_t)n0 * ldin, ldin, from, ldd,
                                  dst + (size_t)n0 * ldd, ldd,
                                  left ? pf + (size_t)first * 64 : NULL, per, left);
            }
        }
        if (u)
            for (int n = 0; n < ng; n++)
                for (int o = 0; o < units; o += RNN_VL)
                    RNN_ACC_STORE(acc + (size_t)n * ldacc + o,
                                  RNN_ACC_ADD(RNN_ACC_LOAD(acc + (size_t)n * ldacc + o),
                                              RNN_ACC_LOAD(tmp + (size_t)n * units + o)));
    }
}
#endif

/* The same product for ng rows, any number: chunks of RNN_NB_MAX(G) rows, each a full pass
 * over the panel (from L2 after the first), or, for a few chunks over a panel from beyond
 * L2, rnn_panel_sliced. Slicing K for many rows (the input projection, panels in L2)
 * measured no faster (1600x1024x4096: 136 vs 136 GFLOP/s). */
static void RNN_FNW(rnn_panel_rows)(int ng, int G, int K, const RNN_WT_T *restrict w,
                                    const RNN_IN_T *restrict in, size_t ldin,
                                    RNN_ACC_E *restrict acc, size_t ldacc) {
    const int nbmax = RNN_NB_MAX(G);
#ifndef RNN_PANEL_PLAIN
    const size_t panel = (size_t)(K + RNN_KS - 1) / RNN_KS * RNN_GK(G) * sizeof(RNN_WT_T);
    if (ng > nbmax && ng <= RNN_SLICED_ROWS_MAX && panel >= RNN_COLD_PANEL_BYTES) {
        RNN_FNW(rnn_panel_sliced)(ng, G, K, w, in, ldin, acc, ldacc);
        return;
    }
#endif
    for (int n0 = 0; n0 < ng; n0 += nbmax)
        RNN_FNW(rnn_panel)(ng - n0 < nbmax ? ng - n0 : nbmax, G, K, w, in + (size_t)n0 * ldin,
                           ldin, acc + (size_t)n0 * ldacc, ldacc);
}

#undef RNN_PANEL_DEF
#undef RNN_GP
#undef RNN_KU
#undef RNN_MIN_
#undef RNN_AG
#undef RNN_UNROLL
#undef RNN_ACC_MAX
#undef RNN_ACC
#undef RNN_FOR_ALL
#undef RNN_AI
#undef RNN_GK
#undef RNN_NV
#undef RNN_FNW
#undef RNN_CATW
#undef RNN_CATW_
#undef RNN_GEMM_ISA
#undef RNN_WT
#undef RNN_WT_T
#undef RNN_KS
#undef RNN_WT_LOADJ
#undef RNN_IN_T
#undef RNN_ACC_T
#undef RNN_ACC_E
#undef RNN_ACC_LOAD
#undef RNN_ACC_STORE
#undef RNN_ACC_ZERO
#undef RNN_ACC_ADD
#undef RNN_PANEL_STEP

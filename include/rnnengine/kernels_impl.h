/* The compute kernels of one ISA variant, written once over the operations of a vec_<isa>.h
 * (no include guard: kernels.h includes this file once per variant; RNN_FN(name) gives the
 * variant's name, e.g. rnn_phase_f32_avx2).
 *
 *   rnn_panel    acc[n][g][0:16] += sum_k in[n][k] * w[k][g][0:16], for nb rows and G gates:
 *                the register-blocked GEMV/small-GEMM over one block's panel (cells.h).
 *   rnn_phase    one phase of one timestep for blocks [b0, b1): pre-activations through
 *                rnn_panel, then the cell's gate math on them while they are in L1.
 *   rnn_xproj    input projections + bias of M rows for blocks [b0, b1), the GEMM run once
 *                for a whole sequence before its timestep loop.
 *   rnn_activate one activation over an array (tests check the vector math with it).
 */

#define RNN_NV (RNN_BW / RNN_VL)  /* vectors per 16-unit block */
/* K is summed in U contiguous parts: part 0 onto the initial value, parts 1.. from zero, then
 * added left to right. With one row, the parts run interleaved so U * G * NV independent sums
 * hide the FMA latency (4 cycles, 2 per cycle); with several rows there are enough sums
 * already and the parts run one after another. Either way every output is the same sum in
 * the same order, so a streamed step, a whole sequence, any batch size and any thread split
 * give bit-identical pre-activations. */
#define RNN_UNROLL(G) ((G) * RNN_NV >= 8 ? 1 : 8 / ((G) * RNN_NV))
#define RNN_MIN(a, b) ((a) < (b) ? (a) : (b))

/* a[u][n][g] += in[n][kk] * w[kk][g] for rows n < NB */
#define RNN_PANEL_FMA(NB, G, u, kk)                                                         \
    do {                                                                                    \
        const float *wk = w + (size_t)(kk) * (G * RNN_BW);                                  \
        rnn_v wv[G][RNN_NV];                                                                \
        _Pragma("GCC unroll 4") for (int g = 0; g < G; g++)                                 \
        _Pragma("GCC unroll 16") for (int v = 0; v < RNN_NV; v++)                           \
            wv[g][v] = v_load(wk + g * RNN_BW + v * RNN_VL);                                \
        _Pragma("GCC unroll 8") for (int n = 0; n < NB; n++) {                              \
            const rnn_v xb = v_set1(in[(size_t)n * ldin + (kk)]);                           \
            _Pragma("GCC unroll 4") for (int g = 0; g < G; g++)                             \
            _Pragma("GCC unroll 16") for (int v = 0; v < RNN_NV; v++)                       \
                a[u][n][g][v] = v_fmadd(xb, wv[g][v], a[u][n][g][v]);                       \
        }                                                                                   \
    } while (0)

#define RNN_PANEL_FOR_ALL(NB, G)                                                            \
    _Pragma("GCC unroll 8") for (int n = 0; n < NB; n++)                                    \
    _Pragma("GCC unroll 4") for (int g = 0; g < G; g++)                                     \
    _Pragma("GCC unroll 16") for (int v = 0; v < RNN_NV; v++)

#define RNN_ACC(n, g, v) (acc + (size_t)(n) * ldacc + (g) * RNN_BW + (v) * RNN_VL)

/* One fixed (rows NB, gates G) instance; the accumulators live in registers. */
#define RNN_PANEL_DEF(NB, G)                                                                \
static void RNN_FN(rnn_panel_##NB##x##G)(int K, const float *restrict w,                    \
                                         const float *restrict in, size_t ldin,             \
                                         float *restrict acc, size_t ldacc) {               \
    enum { U = RNN_UNROLL(G) };                                                             \
    const int Kp = (K + U - 1) / U;              /* part length; the last may be shorter */ \
    if ((NB) == 1) {                                                                        \
        enum { UI = (NB) == 1 ? U : 1 };                                                    \
        rnn_v a[UI][NB][G][RNN_NV];                                                         \
        _Pragma("GCC unroll 8") for (int u = 0; u < UI; u++)                                \
        RNN_PANEL_FOR_ALL(NB, G) a[u][n][g][v] = u ? v_zero() : v_load(RNN_ACC(n, g, v));   \
        const int full = K - (U - 1) * Kp;       /* steps where every part has a k */       \
        int k = 0;                                                                          \
        for (; k < full; k++) {                                                             \
            _Pragma("GCC unroll 8") for (int u = 0; u < UI; u++)                            \
                RNN_PANEL_FMA(NB, G, u, k + u * Kp);                                        \
        }                                                                                   \
        for (; k < Kp; k++) {                                                               \
            _Pragma("GCC unroll 8") for (int u = 0; u < UI; u++)                            \
                if (k + u * Kp < K) RNN_PANEL_FMA(NB, G, u, k + u * Kp);                    \
        }                                                                                   \
        _Pragma("GCC unroll 8") for (int u = 1; u < UI; u++)                                \
        RNN_PANEL_FOR_ALL(NB, G) a[0][n][g][v] = v_add(a[0][n][g][v], a[u][n][g][v]);      \
        RNN_PANEL_FOR_ALL(NB, G) v_store(RNN_ACC(n, g, v), a[0][n][g][v]);                  \
    } else {                                                                                \
        for (int u = 0; u < U; u++) {                                                       \
            rnn_v a[1][NB][G][RNN_NV];                                                      \
            RNN_PANEL_FOR_ALL(NB, G) a[0][n][g][v] = u ? v_zero() : v_load(RNN_ACC(n, g, v)); \
            const int k1 = RNN_MIN(K, (u + 1) * Kp);                                        \
            int k = u * Kp;                                                                 \
            for (; k + 2 <= k1; k += 2) {                                                   \
                RNN_PANEL_FMA(NB, G, 0, k);                                                 \
                RNN_PANEL_FMA(NB, G, 0, k + 1);                                             \
            }                                                                               \
            if (k < k1) RNN_PANEL_FMA(NB, G, 0, k);                                         \
            if (u == 0) {                                                                   \
                RNN_PANEL_FOR_ALL(NB, G) v_store(RNN_ACC(n, g, v), a[0][n][g][v]);          \
            } else {                                                                        \
                RNN_PANEL_FOR_ALL(NB, G)                                                    \
                    v_store(RNN_ACC(n, g, v), v_add(v_load(RNN_ACC(n, g, v)), a[0][n][g][v])); \
            }                                                                               \
        }                                                                                   \
    }                                                                                       \
}

#ifdef RNN_PANEL_PLAIN
/* The portable variant: plain loops the compiler vectorizes for whatever the baseline ISA is.
 * The register-blocked form above, with 16 scalar lanes per gate, spilled badly on SSE2's 16
 * registers (LSTM H=64 step 18.5 us vs GRU 3.3 us). */
#undef RNN_PANEL_DEF
#define RNN_PANEL_DEF(NB, G)                                                                \
static void RNN_FN(rnn_panel_##NB##x##G)(int K, const float *restrict w,                    \
                                         const float *restrict in, size_t ldin,             \
                                         float *restrict acc, size_t ldacc) {               \
    for (int n = 0; n < NB; n++) {                                                          \
        float a[G * RNN_BW];                                                                \
        memcpy(a, acc + (size_t)n * ldacc, sizeof a);                                       \
        for (int k = 0; k < K; k++) {                                                       \
            const float xk = in[(size_t)n * ldin + k];                                      \
            const float *wk = w + (size_t)k * (G * RNN_BW);                                 \
            for (int j = 0; j < G * RNN_BW; j++) a[j] += xk * wk[j];                        \
        }                                                                                   \
        memcpy(acc + (size_t)n * ldacc, a, sizeof a);                                       \
    }                                                                                       \
}
#endif

RNN_PANEL_INSTANCES(RNN_PANEL_DEF)

/* acc rows n < nb (stride ldacc) += in rows (stride ldin) @ panel w [K][G][16];
 * nb <= RNN_NB_MAX(G). */
static inline void RNN_FN(rnn_panel)(int nb, int G, int K, const float *restrict w,
                                     const float *restrict in, size_t ldin,
                                     float *restrict acc, size_t ldacc) {
    switch (G * 16 + nb) {
#define RNN_PANEL_CASE(NB, G_)                                                              \
    case (G_) * 16 + (NB):                                                                  \
        RNN_FN(rnn_panel_##NB##x##G_)(K, w, in, ldin, acc, ldacc);                          \
        return;
        RNN_PANEL_INSTANCES(RNN_PANEL_CASE)
#undef RNN_PANEL_CASE
    default:
        return; /* unreachable: callers pass nb <= RNN_NB_MAX(G) */
    }
}

/* The same product for ng rows, any number: chunks of RNN_NB_MAX(G) rows, each a full pass
 * over the panel (from L2 after the first). Slicing K so chunks share L1-resident slices,
 * with software prefetch, measured no faster here (1600x1024x4096: 136 vs 136 GFLOP/s), so
 * the simple loop stays. */
static void RNN_FN(rnn_panel_rows)(int ng, int G, int K, const float *restrict w,
                                   const float *restrict in, size_t ldin,
                                   float *restrict acc, size_t ldacc) {
    const int nbmax = RNN_NB_MAX(G);
    for (int n0 = 0; n0 < ng; n0 += nbmax)
        RNN_FN(rnn_panel)(RNN_MIN(nbmax, ng - n0), G, K, w, in + (size_t)n0 * ldin, ldin,
                          acc + (size_t)n0 * ldacc, ldacc);
}

/* ---- 16-unit blocks of state: loads and stores that respect the last block's tail ---- */

typedef struct { rnn_v v[RNN_NV]; } RNN_FN(rnn_blk);
#define RNN_BLK RNN_FN(rnn_blk)

static inline RNN_BLK RNN_FN(rnn_blk_load)(const float *p, int valid) {
    RNN_BLK b;
    float tmp[RNN_BW];
    if (valid < RNN_BW) {
        memset(tmp, 0, sizeof tmp);
        memcpy(tmp, p, (size_t)valid * sizeof(float));
        p = tmp;
    }
    _Pragma("GCC unroll 16") for (int v = 0; v < RNN_NV; v++) b.v[v] = v_load(p + v * RNN_VL);
    return b;
}

static inline void RNN_FN(rnn_blk_store)(float *p, RNN_BLK b, int valid) {
    float tmp[RNN_BW];
    float *dst = valid < RNN_BW ? tmp : p;
    _Pragma("GCC unroll 16") for (int v = 0; v < RNN_NV; v++) v_store(dst + v * RNN_VL, b.v[v]);
    if (valid < RNN_BW) memcpy(p, tmp, (size_t)valid * sizeof(float));
}

/* rows x (16 * nblk) floats from src (row stride lds; 0 repeats one row) to dst (stride ldd):
 * vector moves, where memcpy's call per 256-byte row cost 6% of a batch-16 sequence. */
static inline void RNN_FN(rnn_copy_rows)(float *dst, size_t ldd, const float *src, size_t lds,
                                         int rows, int nblk) {
    for (int i = 0; i < rows; i++)
        for (int v = 0; v < nblk * RNN_NV; v++)
            v_store(dst + i * ldd + v * RNN_VL, v_load(src + i * lds + v * RNN_VL));
}

/* f(clip(x)) for activation `which` (0: f, 1: g, 2: h). std: the cell has its kind's
 * default activations (sigmoid gates, tanh elsewhere; RNN: tanh), passed as a constant so
 * this inlines to straight-line code; the general path switches on the code per vector.
 * Measured: LSTM batch-16 H=256 step, epilogue 21% of the time with the switch. */
#if defined(__GNUC__) || defined(__clang__)
#define RNN_INLINE static inline __attribute__((always_inline))
#else
#define RNN_INLINE static __forceinline
#endif
RNN_INLINE rnn_v RNN_FN(rnn_gate)(const rnn_cell_t *c, int which, rnn_v x, int std) {
    x = RNN_FN(rnn_clip)(c->clip, x);
    if (std)
        return (which == 0 && c->kind != RNN_KIND_RNN) ? RNN_FN(rnn_sigmoid)(x)
                                                       : RNN_FN(rnn_tanh)(x);
    return RNN_FN(rnn_act)(&c->act[which], x);
}

/* ---- epilogues: the gate math of one row of one block; pre = that row's [G][16] ---- */

/* LSTM in two passes over a block's rows, so each pass is a row loop of independent
 * activations (one long i -> c -> tanh(c) -> h chain per row left the core waiting: at H=64,
 * batch 16 the gate math was 44% of a step). Pass 1 activates i, f, g in place in pre; pass 2
 * makes c, o and h. */
RNN_INLINE void RNN_FN(rnn_lstm_ifg)(const rnn_cell_t *c, int b, float *pre, const float *cst,
                                     int std) {
    const int valid = rnn_block_valid(c->hidden_size, b);
    const float *pe = c->peep ? c->peep + (size_t)b * 3 * RNN_BW : NULL;
    const rnn_v one = v_set1(1.0f);
    RNN_BLK cp;
    if (pe) cp = RNN_FN(rnn_blk_load)(cst + (size_t)b * RNN_BW, valid);
    _Pragma("GCC unroll 16") for (int v = 0; v < RNN_NV; v++) {
        rnn_v gi = v_load(pre + 0 * RNN_BW + v * RNN_VL);
        rnn_v gf = v_load(pre + 2 * RNN_BW + v * RNN_VL);
        rnn_v gc = v_load(pre + 3 * RNN_BW + v * RNN_VL);
        if (pe) {
            gi = v_fmadd(v_load(pe + v * RNN_VL), cp.v[v], gi);
            gf = v_fmadd(v_load(pe + 2 * RNN_BW + v * RNN_VL), cp.v[v], gf);
        }
        gi = RNN_FN(rnn_gate)(c, 0, gi, std);
        gf = c->input_forget ? v_sub(one, gi) : RNN_FN(rnn_gate)(c, 0, gf, std);
        v_store(pre + 0 * RNN_BW + v * RNN_VL, gi);
        v_store(pre + 2 * RNN_BW + v * RNN_VL, gf);
        v_store(pre + 3 * RNN_BW + v * RNN_VL, RNN_FN(rnn_gate)(c, 1, gc, std));
    }
}

RNN_INLINE void RNN_FN(rnn_lstm_out)(const rnn_cell_t *c, int b, const float *pre,
                                     float *cst, float *hout, int std) {
    const int valid = rnn_block_valid(c->hidden_size, b);
    const float *pe = c->peep ? c->peep + (size_t)b * 3 * RNN_BW : NULL;
    RNN_BLK cp = RNN_FN(rnn_blk_load)(cst + (size_t)b * RNN_BW, valid), cn, hn;
    _Pragma("GCC unroll 16") for (int v = 0; v < RNN_NV; v++) {
        const rnn_v i = v_load(pre + 0 * RNN_BW + v * RNN_VL);
        const rnn_v f = v_load(pre + 2 * RNN_BW + v * RNN_VL);
        const rnn_v g = v_load(pre + 3 * RNN_BW + v * RNN_VL);
        rnn_v go = v_load(pre + 1 * RNN_BW + v * RNN_VL);
        cn.v[v] = v_fmadd(f, cp.v[v], v_mul(i, g));
        if (pe) go = v_fmadd(v_load(pe + RNN_BW + v * RNN_VL), cn.v[v], go);
        go = RNN_FN(rnn_gate)(c, 0, go, std);
        hn.v[v] = v_mul(go, std ? RNN_FN(rnn_tanh)(cn.v[v]) : RNN_FN(rnn_act)(&c->act[2], cn.v[v]));
    }
    RNN_FN(rnn_blk_store)(cst + (size_t)b * RNN_BW, cn, valid);
    RNN_FN(rnn_blk_store)(hout + (size_t)b * RNN_BW, hn, valid);
}

/* h = (1 - z)*n + z*h' */
static inline rnn_v RNN_FN(rnn_gru_mix)(rnn_v z, rnn_v n, rnn_v hp) {
    return v_fmadd(z, hp, v_mul(v_sub(v_set1(1.0f), z), n));
}

/* GRU lbr=1: pre = [z, r, h' Rh^T + Rbh], hxs = xh + Wbh. */
/* GRU lbr=1 in two passes over the rows, for the reason given at rnn_lstm_ifg: pass 1
 * activates z and r in place in pre (pre = [z, r, h' Rh^T + Rbh]), pass 2 makes n and h
 * (hxs = xh + Wbh). */
RNN_INLINE void RNN_FN(rnn_gru_zr_act)(const rnn_cell_t *c, float *pre, int std) {
    _Pragma("GCC unroll 32") for (int v = 0; v < 2 * RNN_NV; v++)
        v_store(pre + v * RNN_VL, RNN_FN(rnn_gate)(c, 0, v_load(pre + v * RNN_VL), std));
}

RNN_INLINE void RNN_FN(rnn_gru_out)(const rnn_cell_t *c, int b, const float *pre,
                                    const float *hxs, const float *hp, float *hout, int std) {
    const int valid = rnn_block_valid(c->hidden_size, b);
    RNN_BLK h0 = RNN_FN(rnn_blk_load)(hp + (size_t)b * RNN_BW, valid), hn;
    _Pragma("GCC unroll 16") for (int v = 0; v < RNN_NV; v++) {
        const rnn_v z = v_load(pre + v * RNN_VL), r = v_load(pre + RNN_BW + v * RNN_VL);
        rnn_v n = v_fmadd(r, v_load(pre + 2 * RNN_BW + v * RNN_VL), v_load(hxs + v * RNN_VL));
        n = RNN_FN(rnn_gate)(c, 1, n, std);
        hn.v[v] = RNN_FN(rnn_gru_mix)(z, n, h0.v[v]);
    }
    RNN_FN(rnn_blk_store)(hout + (size_t)b * RNN_BW, hn, valid);
}

/* GRU lbr=0, phase 0: z and r; stores z, the h-gate input part, and r*h' for phase 1. */
RNN_INLINE void RNN_FN(rnn_gru_zr_epilogue)(const rnn_cell_t *c, int b, const float *pre,
                                               const float *hp, float *zs, float *hx,
                                               float *rh, int std) {
    const int valid = rnn_block_valid(c->hidden_size, b);
    RNN_BLK h0 = RNN_FN(rnn_blk_load)(hp + (size_t)b * RNN_BW, valid), rv;
    _Pragma("GCC unroll 16") for (int v = 0; v < RNN_NV; v++) {
        rnn_v z = RNN_FN(rnn_gate)(c, 0, v_load(pre + v * RNN_VL), std);
        rnn_v r = RNN_FN(rnn_gate)(c, 0, v_load(pre + RNN_BW + v * RNN_VL), std);
        v_store(zs + (size_t)b * RNN_BW + v * RNN_VL, z);
        v_store(hx + (size_t)b * RNN_BW + v * RNN_VL, v_load(pre + 2 * RNN_BW + v * RNN_VL));
        rv.v[v] = v_mul(r, h0.v[v]);
    }
    RNN_FN(rnn_blk_store)(rh + (size_t)b * RNN_BW, rv, valid);
}

/* GRU lbr=0, phase 1: pre = hx + (r*h') Rh^T. */
RNN_INLINE void RNN_FN(rnn_gru_h_epilogue)(const rnn_cell_t *c, int b, const float *pre,
                                              const float *zs, const float *hp, float *hout, int std) {
    const int valid = rnn_block_valid(c->hidden_size, b);
    RNN_BLK h0 = RNN_FN(rnn_blk_load)(hp + (size_t)b * RNN_BW, valid), hn;
    _Pragma("GCC unroll 16") for (int v = 0; v < RNN_NV; v++) {
        rnn_v n = RNN_FN(rnn_gate)(c, 1, v_load(pre + v * RNN_VL), std);
        hn.v[v] = RNN_FN(rnn_gru_mix)(v_load(zs + (size_t)b * RNN_BW + v * RNN_VL), n, h0.v[v]);
    }
    RNN_FN(rnn_blk_store)(hout + (size_t)b * RNN_BW, hn, valid);
}

RNN_INLINE void RNN_FN(rnn_rnn_epilogue)(const rnn_cell_t *c, int b, const float *pre,
                                            float *hout, int std) {
    RNN_BLK hn;
    _Pragma("GCC unroll 16") for (int v = 0; v < RNN_NV; v++)
        hn.v[v] = RNN_FN(rnn_gate)(c, 0, v_load(pre + v * RNN_VL), std);
    RNN_FN(rnn_blk_store)(hout + (size_t)b * RNN_BW, hn, rnn_block_valid(c->hidden_size, b));
}

/* ---- one phase of one timestep ---- */

/* Gate pre-activations of rows n0 .. n0+nb of block b, [nb][G][16]: the input part (xp, or
 * bias + x @ Px fused here) plus h' @ Ph. Returns where they are: in sequence mode the input
 * projections themselves, used once and summed in place; else the caller's buffer pre.
 * GRU lbr=1 moves the h gate's input part to hxs and restarts that gate's sum from Rbh, since
 * r multiplies only the recurrent part. */
static inline float *RNN_FN(rnn_preact)(const rnn_cell_t *c, const rnn_step_io_t *io, int b,
                                        int n0, int nb, float *pre, float *hxs) {
    const int G = c->gates, Gh = c->gates_h, nin = c->input_size, Ho = c->output_size;
    const size_t ld = (size_t)G * RNN_BW;
    if (io->xp) {
        pre = io->xp + b * io->ldxp + (size_t)n0 * ld;
    } else {
        RNN_FN(rnn_copy_rows)(pre, ld, c->bias + b * ld, 0, nb, G);
        RNN_FN(rnn_panel_rows)(nb, G, nin, c->px + (size_t)b * nin * ld,
                               io->x + (size_t)n0 * io->ldx, io->ldx, pre, ld);
    }
    if (hxs) {
        RNN_FN(rnn_copy_rows)(hxs, RNN_BW, pre + 2 * RNN_BW, ld, nb, 1);
        RNN_FN(rnn_copy_rows)(pre + 2 * RNN_BW, ld, c->rbh + (size_t)b * RNN_BW, 0, nb, 1);
    }
    RNN_FN(rnn_panel_rows)(nb, Gh, Ho, c->ph + (size_t)b * Ho * Gh * RNN_BW,
                           io->h_prev + (size_t)n0 * Ho, Ho, pre, ld);
    return pre;
}

/* Rows a phase handles together: their pre-activations stay in L1 (6 KB) while the block's
 * panel streams past once. */
#define RNN_GROUP 24

/* One phase for rows n0 .. n0+nb of block b (std: see rnn_gate; a constant after inlining). */
RNN_INLINE void RNN_FN(rnn_phase_rows)(const rnn_cell_t *c, const rnn_step_io_t *io,
                                       int second, int b, int n0, int nb, float *pre,
                                       float *hxs, int std) {
    const int H = c->hidden_size, Ho = c->output_size;
    const size_t ldz = (size_t)c->blocks * RNN_BW;
    if (c->kind == RNN_KIND_LSTM && second) {
        /* projection: h = hraw @ proj^T, blocks over the P outputs */
        memset(pre, 0, (size_t)nb * RNN_BW * sizeof(float));
        RNN_FN(rnn_panel_rows)(nb, 1, H, c->pproj + (size_t)b * H * RNN_BW,
                               io->hraw + (size_t)n0 * H, H, pre, RNN_BW);
        for (int i = 0; i < nb; i++) {
            RNN_BLK hb = RNN_FN(rnn_blk_load)(pre + i * RNN_BW, RNN_BW);
            RNN_FN(rnn_blk_store)(io->h_next + (size_t)(n0 + i) * Ho + b * RNN_BW, hb,
                                  rnn_block_valid(Ho, b));
        }
    } else if (c->kind == RNN_KIND_GRU && second) {
        RNN_FN(rnn_copy_rows)(pre, RNN_BW, io->hx + n0 * ldz + b * RNN_BW, ldz, nb, 1);
        RNN_FN(rnn_panel_rows)(nb, 1, H, c->prh + (size_t)b * H * RNN_BW,
                               io->rh + (size_t)n0 * H, H, pre, RNN_BW);
        for (int i = 0; i < nb; i++) {
            const size_t n = (size_t)(n0 + i);
            RNN_FN(rnn_gru_h_epilogue)(c, b, pre + i * RNN_BW, io->zs + n * ldz,
                                       io->h_prev + n * Ho, io->h_next + n * Ho, std);
        }
    } else {
        const int lbr1 = c->kind == RNN_KIND_GRU && c->linear_before_reset;
        const size_t ld = (size_t)c->gates * RNN_BW;
        pre = RNN_FN(rnn_preact)(c, io, b, n0, nb, pre, lbr1 ? hxs : NULL);
        if (c->kind == RNN_KIND_LSTM) {
            for (int i = 0; i < nb; i++)
                RNN_FN(rnn_lstm_ifg)(c, b, pre + i * ld, io->c + (size_t)(n0 + i) * H, std);
            for (int i = 0; i < nb; i++) {
                const size_t n = (size_t)(n0 + i);
                RNN_FN(rnn_lstm_out)(c, b, pre + i * ld, io->c + n * H,
                                     c->pproj ? io->hraw + n * H : io->h_next + n * Ho, std);
            }
            return;
        }
        if (lbr1) {
            for (int i = 0; i < nb; i++) RNN_FN(rnn_gru_zr_act)(c, pre + i * ld, std);
            for (int i = 0; i < nb; i++) {
                const size_t n = (size_t)(n0 + i);
                RNN_FN(rnn_gru_out)(c, b, pre + i * ld, hxs + i * RNN_BW, io->h_prev + n * Ho,
                                    io->h_next + n * Ho, std);
            }
            return;
        }
        for (int i = 0; i < nb; i++) {
            const size_t n = (size_t)(n0 + i);
            const float *p = pre + i * ld;
            if (c->kind == RNN_KIND_GRU) {
                RNN_FN(rnn_gru_zr_epilogue)(c, b, p, io->h_prev + n * Ho, io->zs + n * ldz,
                                            io->hx + n * ldz, io->rh + n * H, std);
            } else {
                RNN_FN(rnn_rnn_epilogue)(c, b, p, io->h_next + n * Ho, std);
            }
        }
    }
}

static void RNN_FN(rnn_phase)(const rnn_cell_t *c, const rnn_step_io_t *io, int phase,
                              int b0, int b1) {
    _Alignas(64) float pre[RNN_GROUP * 4 * RNN_BW];
    _Alignas(64) float hxs[RNN_GROUP * RNN_BW];
    const int N = io->N, second = phase == 1, std = rnn_cell_default_acts(c);
    for (int j = b0; j < b1; j++) {
        const int b = io->backward ? b1 - 1 - (j - b0) : j;
        for (int n0 = 0; n0 < N; n0 += RNN_GROUP) {
            const int nb = RNN_MIN(RNN_GROUP, N - n0);
            if (std)
                RNN_FN(rnn_phase_rows)(c, io, second, b, n0, nb, pre, hxs, 1);
            else
                RNN_FN(rnn_phase_rows)(c, io, second, b, n0, nb, pre, hxs, 0);
        }
    }
}

/* Input projections of M rows: out[b][m][G][16] = bias[b] + x[m] @ Px[b] for blocks
 * [b0, b1). Block-major output, so each block writes one contiguous stretch (row-major
 * [M][HB][G][16] put every row 16 KB apart and ran 20% slower). Rows are tiled so a tile of x
 * (about 1 MB) stays in L2 while the blocks' panels stream past it once per tile. */
static void RNN_FN(rnn_xproj)(const rnn_cell_t *c, int M, const float *x, size_t ldx,
                              float *out, int b0, int b1) {
    const int G = c->gates, nin = c->input_size;
    const size_t ldb = (size_t)G * RNN_BW;
    const int nbmax = RNN_NB_MAX(G);
    int mc = (int)(262144 / (size_t)nin);
    mc = mc < nbmax ? nbmax : mc - mc % nbmax;
    for (int m0 = 0; m0 < M; m0 += mc) {
        const int m1 = RNN_MIN(M, m0 + mc);
        for (int b = b0; b < b1; b++) {
            const float *w = c->px + (size_t)b * nin * ldb;
            float *o = out + ((size_t)b * M + m0) * ldb;
            RNN_FN(rnn_copy_rows)(o, ldb, c->bias + b * ldb, 0, m1 - m0, G);
            RNN_FN(rnn_panel_rows)(m1 - m0, G, nin, w, x + (size_t)m0 * ldx, ldx, o, ldb);
        }
    }
}

static void RNN_FN(rnn_activate)(rnn_activation_t a, float *x, size_t n) {
    size_t i = 0;
    for (; i + RNN_VL <= n; i += RNN_VL) v_store(x + i, RNN_FN(rnn_act)(&a, v_load(x + i)));
    if (i < n) {
        float tmp[RNN_VL];
        memset(tmp, 0, sizeof tmp);
        memcpy(tmp, x + i, (n - i) * sizeof(float));
        v_store(tmp, RNN_FN(rnn_act)(&a, v_load(tmp)));
        memcpy(x + i, tmp, (n - i) * sizeof(float));
    }
}

/* ---- roofline probes for bench/: streaming read and FMA throughput of this variant ---- */

/* Sum of p[0:n] (n a multiple of 4 * RNN_VL) with independent accumulators: reads memory at
 * the rate the core can stream it. backward: walk from the end, so alternating calls reuse
 * what the cache kept, as the kernels' alternating block order does (driver.h). */
static float RNN_FN(rnn_read_sum)(const float *p, size_t n, int backward) {
    rnn_v a0 = v_zero(), a1 = v_zero(), a2 = v_zero(), a3 = v_zero();
    const size_t step = 4 * RNN_VL;
    for (size_t j = 0; j + step <= n; j += step) {
        const float *q = p + (backward ? n - step - j : j);
        a0 = v_add(a0, v_load(q));
        a1 = v_add(a1, v_load(q + RNN_VL));
        a2 = v_add(a2, v_load(q + 2 * RNN_VL));
        a3 = v_add(a3, v_load(q + 3 * RNN_VL));
    }
    float lanes[RNN_VL], s = 0.0f;
    v_store(lanes, v_add(v_add(a0, a1), v_add(a2, a3)));
    for (int i = 0; i < RNN_VL; i++) s += lanes[i];
    return s;
}

/* iters rounds of 12 independent vector FMAs (12 * RNN_VL * 2 flops each). */
static float RNN_FN(rnn_fma_loop)(long iters) {
    rnn_v a[12];
    const rnn_v m = v_set1(0.999f), d = v_set1(0.001f);
    _Pragma("GCC unroll 12") for (int i = 0; i < 12; i++) a[i] = v_set1((float)i);
    for (long it = 0; it < iters; it++) {
        _Pragma("GCC unroll 12") for (int i = 0; i < 12; i++) a[i] = v_fmadd(a[i], m, d);
    }
    rnn_v s = a[0];
    _Pragma("GCC unroll 12") for (int i = 1; i < 12; i++) s = v_add(s, a[i]);
    float lanes[RNN_VL];
    v_store(lanes, s);
    return lanes[0];
}

static const rnn_kernels_t RNN_FN(rnn_kernels) = {
    RNN_FN(rnn_phase), RNN_FN(rnn_xproj), RNN_FN(rnn_activate),
    RNN_FN(rnn_read_sum), RNN_FN(rnn_fma_loop), RNN_VL,
};

#undef RNN_NV
#undef RNN_UNROLL
#undef RNN_MIN
#undef RNN_PANEL_FMA
#undef RNN_PANEL_FOR_ALL
#undef RNN_ACC
#undef RNN_PANEL_DEF
#undef RNN_BLK
#undef RNN_GROUP
#undef RNN_INLINE

/* The gate math and timestep kernels of one ISA variant, written once over the operations of
 * a vec_<isa>.h (no include guard: kernels.h includes this file once per variant; RNN_FN(name)
 * gives the variant's name, e.g. rnn_phase_avx2).
 *
 *   rnn_phase    one phase of one timestep for blocks [b0, b1): pre-activations through the
 *                table's GEMM entry for the cell's weight type (gemm_impl.h, gemm_entries.h),
 *                then the cell's gate math on them while they are in L1.
 *   rnn_xproj    input projections + bias of M rows for blocks [b0, b1), the GEMM a sequence
 *                runs ahead of each chunk of timesteps (driver.h: rnn_xp_steps).
 *   rnn_activate one activation over an array (tests check the vector math with it).
 */

#define RNN_NV (RNN_BW / RNN_VL)  /* vectors per 16-unit block */
#define RNN_MIN(a, b) ((a) < (b) ? (a) : (b))

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
    _Pragma("GCC unroll 16") for (int v = 0; v < RNN_NV; v++) b.v[v] = rnn_v_load(p + v * RNN_VL);
    return b;
}

static inline void RNN_FN(rnn_blk_store)(float *p, RNN_BLK b, int valid) {
    float tmp[RNN_BW];
    float *dst = valid < RNN_BW ? tmp : p;
    _Pragma("GCC unroll 16") for (int v = 0; v < RNN_NV; v++) rnn_v_store(dst + v * RNN_VL, b.v[v]);
    if (valid < RNN_BW) memcpy(p, tmp, (size_t)valid * sizeof(float));
}

/* rows x (16 * nblk) floats from src (row stride lds; 0 repeats one row) to dst (stride ldd):
 * vector moves, where memcpy's call per 256-byte row cost 6% of a batch-16 sequence. */
static inline void RNN_FN(rnn_copy_rows)(float *dst, size_t ldd, const float *src, size_t lds,
                                         int rows, int nblk) {
    for (int i = 0; i < rows; i++)
        for (int v = 0; v < nblk * RNN_NV; v++)
            rnn_v_store(dst + i * ldd + v * RNN_VL, rnn_v_load(src + i * lds + v * RNN_VL));
}

/* f(clip(x)) for activation `which` (0: f, 1: g, 2: h). std: the cell has its kind's
 * default activations (sigmoid gates, tanh elsewhere; RNN: tanh), passed as a constant so
 * this inlines to straight-line code; the general path switches on the code per vector.
 * Measured: LSTM batch-16 H=256 step, epilogue 21% of the time with the switch. */
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
    const rnn_v one = rnn_v_set1(1.0f);
    RNN_BLK cp;
    if (pe) cp = RNN_FN(rnn_blk_load)(cst + (size_t)b * RNN_BW, valid);
    _Pragma("GCC unroll 16") for (int v = 0; v < RNN_NV; v++) {
        rnn_v gi = rnn_v_load(pre + 0 * RNN_BW + v * RNN_VL);
        rnn_v gf = rnn_v_load(pre + 2 * RNN_BW + v * RNN_VL);
        rnn_v gc = rnn_v_load(pre + 3 * RNN_BW + v * RNN_VL);
        if (pe) {
            gi = rnn_v_fmadd(rnn_v_load(pe + v * RNN_VL), cp.v[v], gi);
            gf = rnn_v_fmadd(rnn_v_load(pe + 2 * RNN_BW + v * RNN_VL), cp.v[v], gf);
        }
        gi = RNN_FN(rnn_gate)(c, 0, gi, std);
        gf = c->input_forget ? rnn_v_sub(one, gi) : RNN_FN(rnn_gate)(c, 0, gf, std);
        rnn_v_store(pre + 0 * RNN_BW + v * RNN_VL, gi);
        rnn_v_store(pre + 2 * RNN_BW + v * RNN_VL, gf);
        rnn_v_store(pre + 3 * RNN_BW + v * RNN_VL, RNN_FN(rnn_gate)(c, 1, gc, std));
    }
}

RNN_INLINE void RNN_FN(rnn_lstm_out)(const rnn_cell_t *c, int b, const float *pre,
                                     float *cst, float *hout, int std) {
    const int valid = rnn_block_valid(c->hidden_size, b);
    const float *pe = c->peep ? c->peep + (size_t)b * 3 * RNN_BW : NULL;
    RNN_BLK cp = RNN_FN(rnn_blk_load)(cst + (size_t)b * RNN_BW, valid), cn, hn;
    _Pragma("GCC unroll 16") for (int v = 0; v < RNN_NV; v++) {
        const rnn_v i = rnn_v_load(pre + 0 * RNN_BW + v * RNN_VL);
        const rnn_v f = rnn_v_load(pre + 2 * RNN_BW + v * RNN_VL);
        const rnn_v g = rnn_v_load(pre + 3 * RNN_BW + v * RNN_VL);
        rnn_v go = rnn_v_load(pre + 1 * RNN_BW + v * RNN_VL);
        cn.v[v] = rnn_v_fmadd(f, cp.v[v], rnn_v_mul(i, g));
        if (pe) go = rnn_v_fmadd(rnn_v_load(pe + RNN_BW + v * RNN_VL), cn.v[v], go);
        go = RNN_FN(rnn_gate)(c, 0, go, std);
        hn.v[v] = rnn_v_mul(go, std ? RNN_FN(rnn_tanh)(cn.v[v]) : RNN_FN(rnn_act)(&c->act[2], cn.v[v]));
    }
    RNN_FN(rnn_blk_store)(cst + (size_t)b * RNN_BW, cn, valid);
    RNN_FN(rnn_blk_store)(hout + (size_t)b * RNN_BW, hn, valid);
}

/* h = (1 - z)*n + z*h' */
static inline rnn_v RNN_FN(rnn_gru_mix)(rnn_v z, rnn_v n, rnn_v hp) {
    return rnn_v_fmadd(z, hp, rnn_v_mul(rnn_v_sub(rnn_v_set1(1.0f), z), n));
}

/* GRU lbr=1: pre = [z, r, h' Rh^T + Rbh], hxs = xh + Wbh. */
/* GRU lbr=1 in two passes over the rows, for the reason given at rnn_lstm_ifg: pass 1
 * activates z and r in place in pre (pre = [z, r, h' Rh^T + Rbh]), pass 2 makes n and h
 * (hxs = xh + Wbh). */
RNN_INLINE void RNN_FN(rnn_gru_zr_act)(const rnn_cell_t *c, float *pre, int std) {
    _Pragma("GCC unroll 32") for (int v = 0; v < 2 * RNN_NV; v++)
        rnn_v_store(pre + v * RNN_VL, RNN_FN(rnn_gate)(c, 0, rnn_v_load(pre + v * RNN_VL), std));
}

RNN_INLINE void RNN_FN(rnn_gru_out)(const rnn_cell_t *c, int b, const float *pre,
                                    const float *hxs, const float *hp, float *hout, int std) {
    const int valid = rnn_block_valid(c->hidden_size, b);
    RNN_BLK h0 = RNN_FN(rnn_blk_load)(hp + (size_t)b * RNN_BW, valid), hn;
    _Pragma("GCC unroll 16") for (int v = 0; v < RNN_NV; v++) {
        const rnn_v z = rnn_v_load(pre + v * RNN_VL), r = rnn_v_load(pre + RNN_BW + v * RNN_VL);
        rnn_v n = rnn_v_fmadd(r, rnn_v_load(pre + 2 * RNN_BW + v * RNN_VL), rnn_v_load(hxs + v * RNN_VL));
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
        rnn_v z = RNN_FN(rnn_gate)(c, 0, rnn_v_load(pre + v * RNN_VL), std);
        rnn_v r = RNN_FN(rnn_gate)(c, 0, rnn_v_load(pre + RNN_BW + v * RNN_VL), std);
        rnn_v_store(zs + (size_t)b * RNN_BW + v * RNN_VL, z);
        rnn_v_store(hx + (size_t)b * RNN_BW + v * RNN_VL, rnn_v_load(pre + 2 * RNN_BW + v * RNN_VL));
        rv.v[v] = rnn_v_mul(r, h0.v[v]);
    }
    RNN_FN(rnn_blk_store)(rh + (size_t)b * RNN_BW, rv, valid);
}

/* GRU lbr=0, phase 1: pre = hx + (r*h') Rh^T. */
RNN_INLINE void RNN_FN(rnn_gru_h_epilogue)(const rnn_cell_t *c, int b, const float *pre,
                                              const float *zs, const float *hp, float *hout, int std) {
    const int valid = rnn_block_valid(c->hidden_size, b);
    RNN_BLK h0 = RNN_FN(rnn_blk_load)(hp + (size_t)b * RNN_BW, valid), hn;
    _Pragma("GCC unroll 16") for (int v = 0; v < RNN_NV; v++) {
        rnn_v n = RNN_FN(rnn_gate)(c, 1, rnn_v_load(pre + v * RNN_VL), std);
        hn.v[v] = RNN_FN(rnn_gru_mix)(rnn_v_load(zs + (size_t)b * RNN_BW + v * RNN_VL), n, h0.v[v]);
    }
    RNN_FN(rnn_blk_store)(hout + (size_t)b * RNN_BW, hn, valid);
}

RNN_INLINE void RNN_FN(rnn_rnn_epilogue)(const rnn_cell_t *c, int b, const float *pre,
                                            float *hout, int std) {
    RNN_BLK hn;
    _Pragma("GCC unroll 16") for (int v = 0; v < RNN_NV; v++)
        hn.v[v] = RNN_FN(rnn_gate)(c, 0, rnn_v_load(pre + v * RNN_VL), std);
    RNN_FN(rnn_blk_store)(hout + (size_t)b * RNN_BW, hn, rnn_block_valid(c->hidden_size, b));
}

/* ---- one phase of one timestep ---- */

/* Gate pre-activations of rows n0 .. n0+nb of block b, [nb][G][16]: the input part (xp, or
 * bias + x @ Px fused here) plus h' @ Ph. Returns where they are: in sequence mode the input
 * projections themselves, used once and summed in place; else the caller's buffer pre.
 * GRU lbr=1 moves the h gate's input part to hxs and restarts that gate's sum from Rbh, since
 * r multiplies only the recurrent part. */
static inline float *RNN_FN(rnn_preact)(const rnn_kernels_t *k, const rnn_cell_t *c,
                                        const rnn_step_io_t *io, int b, int n0, int nb,
                                        float *pre, float *hxs, rnn_gemm_memo_t *memo) {
    const int G = c->gates, Gh = c->gates_h, nin = c->input_size, Ho = c->output_size;
    const rnn_gemm_fn gemm = k->gemm[c->wtype];
    const size_t ld = (size_t)G * RNN_BW;
    if (io->xp) {
        pre = io->xp + b * io->ldxp + (size_t)n0 * ld;
    } else if (!hxs && Gh == G && k->gemm2[c->wtype] &&
               k->gemm2[c->wtype](nb, G, c->bias + b * ld, nin,
                                  rnn_panel_block(c->px, c->wtype, b, nin, G),
                                  io->x + (size_t)n0 * io->ldx, io->ldx, Ho,
                                  rnn_panel_block(c->ph, c->wtype, b, Ho, G),
                                  io->h_prev + (size_t)n0 * Ho, Ho, pre, ld, memo)) {
        return pre;
    } else {
        RNN_FN(rnn_copy_rows)(pre, ld, c->bias + b * ld, 0, nb, G);
        gemm(nb, G, nin, rnn_panel_block(c->px, c->wtype, b, nin, G),
             io->x + (size_t)n0 * io->ldx, io->ldx, pre, ld, &memo[0]);
    }
    if (hxs) {
        RNN_FN(rnn_copy_rows)(hxs, RNN_BW, pre + 2 * RNN_BW, ld, nb, 1);
        RNN_FN(rnn_copy_rows)(pre + 2 * RNN_BW, ld, c->rbh + (size_t)b * RNN_BW, 0, nb, 1);
    }
    gemm(nb, Gh, Ho, rnn_panel_block(c->ph, c->wtype, b, Ho, Gh),
         io->h_prev + (size_t)n0 * Ho, Ho, pre, ld, &memo[1]);
    return pre;
}

/* Rows a phase handles together: their pre-activations stay in L1 (6 KB) while the block's
 * panel streams past once. */
#define RNN_GROUP 24

/* One phase for rows n0 .. n0+nb of block b (std: see rnn_gate; a constant after inlining). */
RNN_INLINE void RNN_FN(rnn_phase_rows)(const rnn_kernels_t *k, const rnn_cell_t *c,
                                       const rnn_step_io_t *io, int second, int b, int n0,
                                       int nb, float *pre, float *hxs, rnn_gemm_memo_t *memo,
                                       int std) {
    const int H = c->hidden_size, Ho = c->output_size;
    const rnn_gemm_fn gemm = k->gemm[c->wtype];
    const size_t ldz = (size_t)c->blocks * RNN_BW;
    if (c->kind == RNN_KIND_LSTM && second) {
        /* projection: h = hraw @ proj^T, blocks over the P outputs */
        memset(pre, 0, (size_t)nb * RNN_BW * sizeof(float));
        gemm(nb, 1, H, rnn_panel_block(c->pproj, c->wtype, b, H, 1),
             io->hraw + (size_t)n0 * H, H, pre, RNN_BW, &memo[0]);
        for (int i = 0; i < nb; i++) {
            RNN_BLK hb = RNN_FN(rnn_blk_load)(pre + i * RNN_BW, RNN_BW);
            RNN_FN(rnn_blk_store)(io->h_next + (size_t)(n0 + i) * Ho + b * RNN_BW, hb,
                                  rnn_block_valid(Ho, b));
        }
    } else if (c->kind == RNN_KIND_GRU && second) {
        RNN_FN(rnn_copy_rows)(pre, RNN_BW, io->hx + n0 * ldz + b * RNN_BW, ldz, nb, 1);
        gemm(nb, 1, H, rnn_panel_block(c->prh, c->wtype, b, H, 1),
             io->rh + (size_t)n0 * H, H, pre, RNN_BW, &memo[0]);
        for (int i = 0; i < nb; i++) {
            const size_t n = (size_t)(n0 + i);
            RNN_FN(rnn_gru_h_epilogue)(c, b, pre + i * RNN_BW, io->zs + n * ldz,
                                       io->h_prev + n * Ho, io->h_next + n * Ho, std);
        }
    } else {
        const int lbr1 = c->kind == RNN_KIND_GRU && c->linear_before_reset;
        const size_t ld = (size_t)c->gates * RNN_BW;
        pre = RNN_FN(rnn_preact)(k, c, io, b, n0, nb, pre, lbr1 ? hxs : NULL, memo);
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

static void RNN_FN(rnn_phase)(const rnn_kernels_t *k, const rnn_cell_t *c,
                              const rnn_step_io_t *io, int phase, int b0, int b1) {
    _Alignas(64) float pre[RNN_GROUP * 4 * RNN_BW];
    _Alignas(64) float hxs[RNN_GROUP * RNN_BW];
    const int N = io->N, second = phase == 1, std = rnn_cell_default_acts(c);
    /* The inputs stay fixed during a phase: a product that converts them may do it once for
     * all the blocks (kernels.h: rnn_gemm_memo_t). Slot 0: x (or the second phase's input),
     * slot 1: h'. */
    int tiles = 0;
    rnn_gemm_memo_t memo[2] = {{NULL, 0, 0, 0, 0, &tiles}, {NULL, 0, 0, 0, 1, &tiles}};
    for (int j = b0; j < b1; j++) {
        const int b = io->backward ? b1 - 1 - (j - b0) : j;
        for (int n0 = 0; n0 < N; n0 += RNN_GROUP) {
            const int nb = RNN_MIN(RNN_GROUP, N - n0);
            if (std)
                RNN_FN(rnn_phase_rows)(k, c, io, second, b, n0, nb, pre, hxs, memo, 1);
            else
                RNN_FN(rnn_phase_rows)(k, c, io, second, b, n0, nb, pre, hxs, memo, 0);
        }
    }
    if (tiles && k->release) k->release();
}

/* Input projections of M rows: out[b][m][G][16] = bias[b] + x[m] @ Px[b] for blocks
 * [b0, b1). Block-major output, so each block writes one contiguous stretch (row-major
 * [M][HB][G][16] put every row 16 KB apart and ran 20% slower). Rows are tiled so a tile of x
 * (about 1 MB) stays in L2 while the blocks' panels stream past it once per tile. */
static void RNN_FN(rnn_xproj)(const rnn_kernels_t *k, const rnn_cell_t *c, int M,
                              const float *x, size_t ldx, float *out, int b0, int b1) {
    const int G = c->gates, nin = c->input_size;
    const size_t ldb = (size_t)G * RNN_BW;
    const int nbmax = RNN_NB_MAX(G);
    int mc = (int)(262144 / (size_t)nin);
    mc = mc < nbmax ? nbmax : mc - mc % nbmax;
    /* A product that converts its inputs (AMX bf16: k->gemm_memo) converts each row tile once
     * for all blocks, when a tile of at least 16 rows fits its buffer and the blocks' panels
     * stay in L2 from one tile to the next (smaller tiles re-read them). */
    int tiles = 0;
    rnn_gemm_memo_t memo = {NULL, 0, 0, 0, 0, &tiles}, *mp = NULL;
    const size_t cap = k->gemm_memo[c->wtype], kp = (size_t)(nin + 31) / 32 * 32;
    if (cap && cap / kp >= 16 &&
        rnn_panel_bytes(c->wtype, nin, G) * (size_t)(b1 - b0) <= ((size_t)1 << 20)) {
        mc = (int)(cap / kp) / 16 * 16;
        mp = &memo;
    }
    for (int m0 = 0; m0 < M; m0 += mc) {
        const int m1 = RNN_MIN(M, m0 + mc);
        for (int b = b0; b < b1; b++) {
            const void *w = rnn_panel_block(c->px, c->wtype, b, nin, G);
            float *o = out + ((size_t)b * M + m0) * ldb;
            RNN_FN(rnn_copy_rows)(o, ldb, c->bias + b * ldb, 0, m1 - m0, G);
            k->gemm[c->wtype](m1 - m0, G, nin, w, x + (size_t)m0 * ldx, ldx, o, ldb, mp);
        }
    }
    if (tiles && k->release) k->release();
}

static void RNN_FN(rnn_activate)(rnn_activation_t a, float *x, size_t n) {
    size_t i = 0;
    for (; i + RNN_VL <= n; i += RNN_VL) rnn_v_store(x + i, RNN_FN(rnn_act)(&a, rnn_v_load(x + i)));
    if (i < n) {
        float tmp[RNN_VL];
        memset(tmp, 0, sizeof tmp);
        memcpy(tmp, x + i, (n - i) * sizeof(float));
        rnn_v_store(tmp, RNN_FN(rnn_act)(&a, rnn_v_load(tmp)));
        memcpy(x + i, tmp, (n - i) * sizeof(float));
    }
}

/* ---- roofline probes for bench/: streaming read and FMA throughput of this variant ---- */

/* Sum of p[0:n] (n a multiple of 4 * RNN_VL) with independent accumulators: reads memory at
 * the rate the core can stream it. backward: walk from the end, so alternating calls reuse
 * what the cache kept, as the kernels' alternating block order does (driver.h). */
static float RNN_FN(rnn_read_sum)(const float *p, size_t n, int backward) {
    rnn_v a0 = rnn_v_zero(), a1 = rnn_v_zero(), a2 = rnn_v_zero(), a3 = rnn_v_zero();
    const size_t step = 4 * RNN_VL;
    for (size_t j = 0; j + step <= n; j += step) {
        const float *q = p + (backward ? n - step - j : j);
        a0 = rnn_v_add(a0, rnn_v_load(q));
        a1 = rnn_v_add(a1, rnn_v_load(q + RNN_VL));
        a2 = rnn_v_add(a2, rnn_v_load(q + 2 * RNN_VL));
        a3 = rnn_v_add(a3, rnn_v_load(q + 3 * RNN_VL));
    }
    float lanes[RNN_VL], s = 0.0f;
    rnn_v_store(lanes, rnn_v_add(rnn_v_add(a0, a1), rnn_v_add(a2, a3)));
    for (int i = 0; i < RNN_VL; i++) s += lanes[i];
    return s;
}

/* iters rounds of 12 independent vector FMAs (12 * RNN_VL * 2 flops each). */
static float RNN_FN(rnn_fma_loop)(long iters) {
    rnn_v a[12];
    const rnn_v m = rnn_v_set1(0.999f), d = rnn_v_set1(0.001f);
    _Pragma("GCC unroll 12") for (int i = 0; i < 12; i++) a[i] = rnn_v_set1((float)i);
    for (long it = 0; it < iters; it++) {
        _Pragma("GCC unroll 12") for (int i = 0; i < 12; i++) a[i] = rnn_v_fmadd(a[i], m, d);
    }
    rnn_v s = a[0];
    _Pragma("GCC unroll 12") for (int i = 1; i < 12; i++) s = rnn_v_add(s, a[i]);
    float lanes[RNN_VL];
    rnn_v_store(lanes, s);
    return lanes[0];
}

/* The variant's table: its gate math and timestep kernels, and one GEMM entry per weight type
 * (gemm_entries.h); kernels.h may swap a GEMM entry for one with more instructions. */
#define RNN_WT_GEMM_(constant, token, name) [constant] = RNN_FN(rnn_gemm_##token),
#define RNN_WT_ISA_(constant, token, name) [constant] = RNN_STR(RNN_ISA),
static const rnn_kernels_t RNN_FN(rnn_kernels) = {
    .phase = RNN_FN(rnn_phase),
    .xproj = RNN_FN(rnn_xproj),
    .activate = RNN_FN(rnn_activate),
    .read_sum = RNN_FN(rnn_read_sum),
    .fma_loop = RNN_FN(rnn_fma_loop),
    .vector_width = RNN_VL,
    .gemm = {RNN_WTYPES(RNN_WT_GEMM_)},
    .gemm_isa = {RNN_WTYPES(RNN_WT_ISA_)},
    .release = NULL,
    .gemm_memo = {0},
    .gemm2 = {NULL},
};
#undef RNN_WT_GEMM_
#undef RNN_WT_ISA_

#undef RNN_NV
#undef RNN_MIN
#undef RNN_BLK
#undef RNN_GROUP

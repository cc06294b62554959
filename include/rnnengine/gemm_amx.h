/* bf16 GEMM entry with AMX tiles (TDPBF16PS), for the "amx" variant: the avx512 table with
 * this entry for bf16 weights (kernels.h). Included once by kernels.h after gemm_dot.h, inside
 * a target region that adds amx-tile and amx-bf16; used only when CPUID has AMX and Linux
 * granted the tile state (cpu.h: rnn_amx_permitted).
 *
 * The bf16 panel layout (cells.h: [K/2][G][16][2]) is already TDPBF16PS's B operand: for gate
 * g, 16 rows of k pairs (32 k's) x 16 units, row stride G * 64 bytes, so tiles load straight
 * from the packed weights. Per call: rows in tiles of up to 16 (A: the rows rounded to bf16,
 * 32 k's per tile row), one fp32 accumulator tile per gate (C: 16 rows x 16 units), loaded
 * from and stored back to acc. The K % 32 tail and calls with few rows (a streamed step at
 * batch 1, where one tile row of 16 would do 1/16 of the work) go to vdpbf16ps.
 *
 * Tile numbers: 0-3 accumulators (one per gate), 4 the inputs, 5 and 6 weights.
 */

#define RNN_AMX_MIN_ROWS 4

typedef struct {
    uint8_t palette;
    uint8_t start_row;
    uint8_t reserved[14];
    uint16_t colsb[16];
    uint8_t rows[16];
} rnn_amx_config_t;

static void rnn_amx_configure(int m) {
    _Alignas(64) rnn_amx_config_t cfg;
    memset(&cfg, 0, sizeof cfg);
    cfg.palette = 1;
    for (int t = 0; t < 5; t++) {  /* C tiles and A: m rows of 64 bytes */
        cfg.rows[t] = (uint8_t)m;
        cfg.colsb[t] = 64;
    }
    for (int t = 5; t < 7; t++) {  /* B: 16 rows of k pairs x 16 units */
        cfg.rows[t] = 16;
        cfg.colsb[t] = 64;
    }
    _tile_loadconfig(&cfg);
}

/* The compiler does not see the tile instructions read or write memory: keep the stores to
 * the input buffer before the tile loads and the reads of acc after the tile stores. */
#define RNN_AMX_BARRIER() __asm__ volatile("" ::: "memory")

/* Rows converted once per phase (rnn_gemm_memo_t): two per-thread buffers of up to
 * RNN_AMX_MEMO bf16 (a phase's row group of 24 rows x 1024 inputs). Measured on T=100, N=16,
 * LSTM H=256: converting per block was a quarter of the product's time, and the tile loads
 * waited on the fresh stores. */
#define RNN_AMX_MEMO (24 * 1024)
static _Thread_local _Alignas(64) uint16_t rnn_amx_memo_buf[2][RNN_AMX_MEMO];

/* dst rows (stride kp) = src rows [0, kp) rounded to bf16; kp a multiple of 16. */
static inline void rnn_amx_convert(uint16_t *dst, size_t kp, const float *src, size_t ldin,
                                   int rows) {
    for (int i = 0; i < rows; i++)
        for (size_t k = 0; k < kp; k += 16) {
            const __m256bh b = _mm512_cvtneps_pbh(_mm512_loadu_ps(src + i * ldin + k));
            memcpy(dst + i * kp + k, &b, sizeof b);
        }
}

/* C tiles 0..G-1 += A (tile 4, m rows of kc k's at a, stride lda bytes) @ the panel's
 * k-range starting at wk; kc a multiple of 32. */
static inline void rnn_amx_accumulate(int G, int kc, const uint16_t *a, long lda,
                                      const uint16_t *wk, long bstride) {
    for (int k = 0; k < kc; k += 32, wk += (size_t)16 * G * 2 * RNN_BW) {
        _tile_loadd(4, a + k, lda);
        _tile_loadd(5, wk, bstride);
        _tile_dpbf16ps(0, 4, 5);
        if (G > 1) {
            _tile_loadd(6, wk + 2 * RNN_BW, bstride);
            _tile_dpbf16ps(1, 4, 6);
        }
        if (G > 2) {
            _tile_loadd(5, wk + 4 * RNN_BW, bstride);
            _tile_dpbf16ps(2, 4, 5);
        }
        if (G > 3) {
            _tile_loadd(6, wk + 6 * RNN_BW, bstride);
            _tile_dpbf16ps(3, 4, 6);
        }
    }
}

static void rnn_amx_release(void) { _tile_release(); }

/* The rows of in [ng][K32] as bf16, converted once per phase in memo's buffer, or NULL when
 * they do not fit it (then the caller converts chunks itself). */
static const uint16_t *rnn_amx_rows(rnn_gemm_memo_t *memo, const float *in, size_t ldin,
                                    int ng, int K32) {
    if (!memo || (size_t)ng * K32 > RNN_AMX_MEMO) return NULL;
    uint16_t *buf = rnn_amx_memo_buf[memo->slot];
    if (!(memo->src == in && memo->ld == ldin && memo->rows == ng && memo->K == K32)) {
        rnn_amx_convert(buf, (size_t)K32, in, ldin, ng);
        memo->src = in;
        memo->ld = ldin;
        memo->rows = ng;
        memo->K = K32;
    }
    return buf;
}

/* Tiles set up for m rows, unless they already are: within a phase they stay configured from
 * block to block (no other code runs on this thread in between); setting them up and
 * releasing them cost ~100 ns a call, against ~150 ns of tile work for a 16-row, K=64 block. */
static inline void rnn_amx_ready(int *configured, int m) {
    if (m != *configured) {
        rnn_amx_configure(m);
        *configured = m;
    }
}

/* C tiles 0..G-1 from G 16-float stretches at c, each row ld bytes apart (0: one row for
 * every tile row), or back to them. */
static inline void rnn_amx_load_c(int G, const float *c, long ld) {
    _tile_loadd(0, c, ld);
    if (G > 1) _tile_loadd(1, c + RNN_BW, ld);
    if (G > 2) _tile_loadd(2, c + 2 * RNN_BW, ld);
    if (G > 3) _tile_loadd(3, c + 3 * RNN_BW, ld);
}

static inline void rnn_amx_store_c(int G, float *c, long ld) {
    _tile_stored(0, c, ld);
    if (G > 1) _tile_stored(1, c + RNN_BW, ld);
    if (G > 2) _tile_stored(2, c + 2 * RNN_BW, ld);
    if (G > 3) _tile_stored(3, c + 3 * RNN_BW, ld);
}

static void rnn_gemm_bf16_amx(int ng, int G, int K, const void *w, const float *in,
                              size_t ldin, float *acc, size_t ldacc, rnn_gemm_memo_t *memo) {
    const int K32 = K & ~31;
    if (ng < RNN_AMX_MIN_ROWS || K32 == 0) {
        rnn_gemm_bf16_avx512bf16(ng, G, K, w, in, ldin, acc, ldacc, NULL);
        return;
    }
    const uint16_t *wp = (const uint16_t *)w;
    const long bstride = (long)G * 64, cstride = (long)(ldacc * sizeof(float));
    /* the whole K32 of every row converted once (memo), or K in chunks per row tile */
    const uint16_t *whole = rnn_amx_rows(memo, in, ldin, ng, K32);
    _Alignas(64) uint16_t chunk[16 * RNN_KC];
    int local = 0, *configured = memo ? memo->tiles : &local;
    for (int m0 = 0; m0 < ng; m0 += 16) {
        const int m = ng - m0 < 16 ? ng - m0 : 16;
        rnn_amx_ready(configured, m);
        float *c = acc + (size_t)m0 * ldacc;
        RNN_AMX_BARRIER();
        rnn_amx_load_c(G, c, cstride);
        if (whole) {
            rnn_amx_accumulate(G, K32, whole + (size_t)m0 * K32, (long)K32 * 2, wp, bstride);
        } else {
            for (int k0 = 0; k0 < K32; k0 += RNN_KC) {
                const int kc = K32 - k0 < RNN_KC ? K32 - k0 : RNN_KC;
                rnn_amx_convert(chunk, (size_t)kc, in + (size_t)m0 * ldin + k0, ldin, m);
                RNN_AMX_BARRIER();
                rnn_amx_accumulate(G, kc, chunk, (long)kc * 2, wp + (size_t)k0 * G * RNN_BW,
                                   bstride);
            }
        }
        rnn_amx_store_c(G, c, cstride);
        RNN_AMX_BARRIER();
    }
    if (!memo) _tile_release();
    if (K32 < K)
        rnn_gemm_bf16_avx512bf16(ng, G, K - K32, wp + (size_t)K32 * G * RNN_BW, in + K32, ldin,
                                 acc, ldacc, NULL);
}

/* rnn_gemm2_fn: a fused timestep block's two products with the accumulators kept in tiles
 * from the bias (a stride-0 tile load) to the store. Measured (C harness, LSTM H=64, 16 rows):
 * 162 ns a block against 225 ns for a copy of the bias, two calls and the tile store and
 * reload between them; the tile load right after the bias copy's vector stores alone cost 30.
 * Takes K1 and K2 multiples of 32 whose rows fit the phase's converted-row buffers, and
 * only small blocks (K1 + K2 <= RNN_AMX_FUSE_K), where that fixed cost counts: LSTM H=256
 * (K1 = K2 = 256) ran 25% slower through this entry than as two calls, for reasons not found
 * in the time there was (the profile puts the time in the tile products either way). */
#define RNN_AMX_FUSE_K 128
static int rnn_gemm2_bf16_amx(int ng, int G, const float *bias, int K1, const void *w1,
                              const float *in1, size_t ld1, int K2, const void *w2,
                              const float *in2, size_t ld2, float *acc, size_t ldacc,
                              rnn_gemm_memo_t *memo) {
    if (ng < RNN_AMX_MIN_ROWS || K1 % 32 || K2 % 32 || K1 + K2 > RNN_AMX_FUSE_K || !memo)
        return 0;
    const uint16_t *a1 = rnn_amx_rows(&memo[0], in1, ld1, ng, K1);
    const uint16_t *a2 = a1 ? rnn_amx_rows(&memo[1], in2, ld2, ng, K2) : NULL;
    if (!a2) return 0;
    const long bstride = (long)G * 64, cstride = (long)(ldacc * sizeof(float));
    for (int m0 = 0; m0 < ng; m0 += 16) {
        const int m = ng - m0 < 16 ? ng - m0 : 16;
        rnn_amx_ready(memo[0].tiles, m);
        float *c = acc + (size_t)m0 * ldacc;
        RNN_AMX_BARRIER();
        rnn_amx_load_c(G, bias, 0);
        rnn_amx_accumulate(G, K1, a1 + (size_t)m0 * K1, (long)K1 * 2, (const uint16_t *)w1,
                           bstride);
        rnn_amx_accumulate(G, K2, a2 + (size_t)m0 * K2, (long)K2 * 2, (const uint16_t *)w2,
                           bstride);
        rnn_amx_store_c(G, c, cstride);
        RNN_AMX_BARRIER();
    }
    return 1;
}

#undef RNN_AMX_BARRIER

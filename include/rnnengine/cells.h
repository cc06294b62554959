/* The packed form of one direction of one layer, and the buffers of one timestep.
 *
 * Equations and gate orders are ONNX's (see rnnengine/core/layers.py):
 *
 *   LSTM  i = f(xi + ri + Pi*c'),  f = f(xf + rf + Pf*c')  (or 1 - i with input_forget),
 *         g = g(xc + rc),  c = f*c' + i*g,  o = f(xo + ro + Po*c),  h = o * h(c)
 *         [h = proj @ h with a projection]
 *   GRU   z = f(xz + rz),  r = f(xr + rr),
 *         n = g(xh + (r*h') Rh^T)              (linear_before_reset = 0, Rbh inside xh)
 *         n = g(xh + r*(h' Rh^T + Rbh))        (linear_before_reset = 1)
 *         h = (1 - z)*n + z*h'
 *   RNN   h = f(xi + ri)
 *
 * with clip applied to every gate pre-activation (peephole term included) before f/g.
 *
 * Packed layout (built once by core/packing.py: pack_layer). Hidden units are grouped in blocks of
 * RNN_BW = 16; a layer has HB = ceil(H/16) blocks, the last one padded with zero weights.
 * For each block the weights of all its gates are interleaved per input column,
 * panel[b][k][g][0:16] = W[g*H + 16*b + (0:16), k], so one pass over a block's panel produces
 * every gate pre-activation of those 16 units and the gate math runs right after, while they
 * are in registers or L1 ("fused epilogue"). Every panel is 64-byte aligned.
 *
 * Weight types (rnn_cell_t.wtype; every weight panel of a cell has the same type). Reduced
 * types group KS consecutive k's per unit so one vector load covers them (the operand layout
 * of vdpbf16ps and vpdpbusd): panel[b][k/KS][g][16][KS], K padded with zeros to a multiple of
 * KS.
 *   f32   KS=1  float
 *   f16   KS=1  IEEE half
 *   bf16  KS=2  bfloat16
 *   i8    KS=4  int8, symmetric per output unit; after each block's weights come its
 *               [G][16] float scales and [G][16] int32 sums of the unit's weights (the
 *               correction for inputs shifted to unsigned, gemm_dot.h).
 *   i8r   KS=4  int8 with a residual: the i8 block panel, then a second set of quads with
 *               what the first leaves, in RNN_I8_FINE times finer steps, and their [G][16]
 *               int32 sums: w ~= scale * (q1 + q2 / RNN_I8_FINE), about 15 bits, the same
 *               split as the inputs' (gemm_entries.h: rnn_quant_row). Twice the bytes of i8,
 *               so core/precision.py picks it only for layers whose int8 rounding alone
 *               would exceed the budget (int8_residual).
 * Biases, peepholes, state and the gate math stay fp32 for every type.
 */
#ifndef RNNENGINE_CELLS_H
#define RNNENGINE_CELLS_H

#include <stddef.h>
#include <stdint.h>
#include "rnnengine/activations.h"

#define RNN_BW 16 /* hidden units per block: one AVX-512 vector, two AVX2 vectors */

enum rnn_kind { RNN_KIND_LSTM = 0, RNN_KIND_GRU = 1, RNN_KIND_RNN = 2 };

/* The registry of weight types, one line each: the enum constant, the token in the products'
 * names (rnn_gemm_<token>_<isa>, gemm_entries.h) and the name Python uses
 * (core.kernels.WEIGHT_TYPES). The enum, the names and every variant's table of products
 * (kernels_impl.h) are derived from it; "int8r" is int8 with a residual weight part. */
#define RNN_WTYPES(X)                 \
    X(RNN_W_F32, f32, "fp32")       \
    X(RNN_W_F16, f16, "fp16")       \
    X(RNN_W_BF16, bf16, "bf16")     \
    X(RNN_W_I8, i8, "int8")         \
    X(RNN_W_I8R, i8r, "int8r")

#define RNN_WT_ENUM_(constant, token, name) constant,
enum rnn_wtype { RNN_WTYPES(RNN_WT_ENUM_) RNN_W_COUNT };
#undef RNN_WT_ENUM_

#define RNN_WT_NAME_(constant, token, name) [constant] = name,
static const char *const rnn_wtype_names[RNN_W_COUNT] = {RNN_WTYPES(RNN_WT_NAME_)};
#undef RNN_WT_NAME_

/* int8 inputs and i8r weights: the second part's step is the first's / this. |t - round(t)|
 * <= 1/2, so the second part's integers stay within +-127. */
#ifndef RNN_I8_FINE
#define RNN_I8_FINE 254.0f
#endif

/* k's per unit group (KS above) */
static inline int rnn_wtype_kstep(int wtype) {
    return wtype == RNN_W_BF16 ? 2 : (wtype == RNN_W_I8 || wtype == RNN_W_I8R) ? 4 : 1;
}

/* Bytes of one block's panel of K inputs and G gates. */
static inline size_t rnn_panel_bytes(int wtype, int K, int G) {
    const int ks = rnn_wtype_kstep(wtype);
    const size_t kp = (size_t)((K + ks - 1) / ks) * ks, units = (size_t)G * RNN_BW;
    switch (wtype) {
    case RNN_W_F16:
    case RNN_W_BF16:
        return kp * units * 2;
    case RNN_W_I8:
        return kp * units + units * (sizeof(float) + sizeof(int));
    case RNN_W_I8R:
        return 2 * kp * units + units * (sizeof(float) + 2 * sizeof(int));
    default:
        return kp * units * sizeof(float);
    }
}

/* An int8 block panel's [G][16] scales and [G][16] weight sums, after its quads (i8 and
 * i8r). */
static inline const float *rnn_i8_scales(const void *panel, int K, int G) {
    return (const float *)((const char *)panel + (size_t)((K + 3) & ~3) * G * RNN_BW);
}

static inline const int32_t *rnn_i8_sums(const void *panel, int K, int G) {
    return (const int32_t *)(rnn_i8_scales(panel, K, G) + (size_t)G * RNN_BW);
}

/* An i8r block panel's residual quads and their [G][16] sums, after the i8 part. */
static inline const int8_t *rnn_i8r_quads(const void *panel, int K, int G) {
    return (const int8_t *)(rnn_i8_sums(panel, K, G) + (size_t)G * RNN_BW);
}

static inline const int32_t *rnn_i8r_sums(const void *panel, int K, int G) {
    return (const int32_t *)(rnn_i8r_quads(panel, K, G) + (size_t)((K + 3) & ~3) * G * RNN_BW);
}

/* Block b of a panel array. */
static inline const void *rnn_panel_block(const void *panel, int wtype, int b, int K, int G) {
    return (const char *)panel + (size_t)b * rnn_panel_bytes(wtype, K, G);
}

typedef struct {
    int kind;                 /* enum rnn_kind */
    int gates;                /* G: 4 (i, o, f, c), 3 (z, r, h) or 1 */
    int gates_h;              /* gates in the recurrent panel: G, or 2 (z, r) for GRU lbr=0 */
    int input_size;           /* I */
    int hidden_size;          /* H */
    int output_size;          /* Hout: width of h, the projection size P or H */
    int blocks;               /* HB = ceil(H / 16) */
    int proj_blocks;          /* ceil(P / 16) with a projection, else 0 */
    int reverse;              /* run t = T-1 .. 0 */
    int input_forget;         /* LSTM: f = 1 - i */
    int linear_before_reset;  /* GRU */
    float clip;               /* <= 0: no clip */
    rnn_activation_t act[3];  /* f, g, h */
    int wtype;                /* enum rnn_wtype of px, ph, prh, pproj */
    const void *px;           /* [HB][I][G][16] input weights */
    const void *ph;           /* [HB][Hout][gates_h][16] recurrent weights */
    const void *prh;          /* [HB][H][16] GRU lbr=0: Rh, applied to r*h'; else NULL */
    const void *pproj;        /* [PB][H][16] LSTM projection; else NULL */
    const float *bias;        /* [HB][G][16] Wb + Rb, except GRU lbr=1 whose h part is Wbh */
    const float *rbh;         /* [HB][16] GRU lbr=1: Rbh; else NULL */
    const float *peep;        /* [HB][3][16] LSTM peepholes i, o, f; else NULL */
} rnn_cell_t;

/* The buffers of one timestep of one cell over N rows (batch entries). Exactly one of x
 * ("step mode": the input product is computed here, fused with the recurrent one) and xp
 * ("sequence mode": input projections computed beforehand by rnn_xproj, a chunk of
 * timesteps at a time (driver.h: rnn_xp_steps), bias included) is non-NULL. */
typedef struct {
    int N;
    int backward;        /* walk blocks in descending order (see driver.h: cache reuse) */
    const float *x;      /* [N, ldx] inputs, or NULL */
    size_t ldx;
    float *xp;           /* input projections of block b, row n: xp[b * ldxp + n * G*16 + 0:G*16],
                          * consumed in place (each is used once) */
    size_t ldxp;         /* floats between blocks (rnn_xproj writes [HB][M][G][16]) */
    const float *h_prev; /* [N, Hout] */
    float *h_next;       /* [N, Hout], distinct from h_prev */
    float *c;            /* LSTM: [N, H] cell state, updated in place */
    float *hraw;         /* LSTM with projection: [N, H] o*h(c) before the projection */
    float *zs;           /* GRU lbr=0: [N, HB*16] z */
    float *hx;           /* GRU lbr=0: [N, HB*16] h-gate input part (bias included) */
    float *rh;           /* GRU lbr=0: [N, H] r*h' */
} rnn_step_io_t;

/* A timestep runs in one or two phases; each phase is a loop over independent blocks (the
 * unit of work the thread pool splits), and a phase needs the previous one complete. */
static inline int rnn_cell_phases(const rnn_cell_t *c) {
    if (c->kind == RNN_KIND_LSTM && c->pproj) return 2;   /* gates, then projection */
    if (c->kind == RNN_KIND_GRU && !c->linear_before_reset) return 2; /* z r, then h */
    return 1;
}

static inline int rnn_cell_phase_blocks(const rnn_cell_t *c, int phase) {
    return (phase == 1 && c->kind == RNN_KIND_LSTM) ? c->proj_blocks : c->blocks;
}

/* 1 if the cell uses its kind's default activations (LSTM sigmoid/tanh/tanh, GRU sigmoid/tanh,
 * RNN tanh): the kernels then take a straight-line path without per-vector dispatch. */
static inline int rnn_cell_default_acts(const rnn_cell_t *c) {
    if (c->kind == RNN_KIND_RNN) return c->act[0].code == RNN_ACT_TANH;
    if (c->act[0].code != RNN_ACT_SIGMOID || c->act[1].code != RNN_ACT_TANH) return 0;
    return c->kind != RNN_KIND_LSTM || c->act[2].code == RNN_ACT_TANH;
}

/* Units of a size-wide vector that fall in block b (16, or fewer in the last block). */
static inline int rnn_block_valid(int size, int b) {
    return size - b * RNN_BW < RNN_BW ? size - b * RNN_BW : RNN_BW;
}

/* Floats of rnn_xproj's output per row (all blocks). */
static inline size_t rnn_cell_xp_width(const rnn_cell_t *c) {
    return (size_t)c->blocks * c->gates * RNN_BW;
}

#endif

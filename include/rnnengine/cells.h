/* Gate math of the three cells for a batch of N rows, portable C.
 *
 * The matrix products happen elsewhere (BLAS or the packed GEMV); these functions take the
 * input projection `xp` (bias already added) and the recurrent product `rec` and finish one
 * timestep. Equations and gate orders are ONNX's (see rnnengine/layers.py):
 *
 *   LSTM  i = f(xi + ri + Pi*c'),  f = f(xf + rf + Pf*c')  (or 1 - i with input_forget),
 *         g = g(xc + rc),  c = f*c' + i*g,  o = f(xo + ro + Po*c),  h = o * h(c)
 *   GRU   z = f(xz + rz),  r = f(xr + rr),
 *         n = g(xh + (r*h') Rh^T)              (linear_before_reset = 0, Rbh inside xh)
 *         n = g(xh + r*(h' Rh^T + Rbh))        (linear_before_reset = 1)
 *         h = (1 - z)*n + z*h'
 *   RNN   h = f(xi + ri)
 *
 * with clip applied to every gate pre-activation (peephole term included) before f/g.
 */
#ifndef RNNENGINE_CELLS_H
#define RNNENGINE_CELLS_H

#include <string.h>
#include "rnnengine/activations.h"

enum rnn_kind { RNN_KIND_LSTM = 0, RNN_KIND_GRU = 1, RNN_KIND_RNN = 2 };

/* One direction of one layer, as the kernels see it. Arrays are owned by Python objects. */
typedef struct {
    int kind;                 /* enum rnn_kind */
    int gates;                /* G: 4, 3 or 1 */
    int input_size;           /* I */
    int hidden_size;          /* H */
    int output_size;          /* width of h: projection size P, or H */
    int reverse;              /* run t = T-1 .. 0 */
    int input_forget;         /* LSTM: f = 1 - i */
    int linear_before_reset;  /* GRU */
    float clip;               /* <= 0: no clip */
    rnn_activation_t act[3];  /* f, g, h */
    const float *W;           /* [G*H, I] */
    const float *R;           /* [G*H, output_size] */
    const float *bias;        /* [G*H] Wb + Rb, except GRU lbr=1 whose h part is Wbh only */
    const float *rbh;         /* [H] GRU lbr=1: Rbh, applied inside r*(...); else NULL */
    const float *peep;        /* [3H] LSTM peepholes i, o, f; or NULL */
    const float *proj;        /* [output_size, H] LSTM projection; or NULL */
} rnn_cell_t;

/* pre += Pe * c  (peephole term), then clip, then the activation. */
static inline void rnn_gate_f32_serial(const rnn_cell_t *cell, rnn_activation_t act,
                                       float *restrict pre, const float *restrict peep,
                                       const float *restrict c, int n) {
    if (peep)
        for (int j = 0; j < n; j++) pre[j] += peep[j] * c[j];
    rnn_clip_f32_serial(cell->clip, pre, n);
    rnn_activate_f32_serial(act, pre, n);
}

/* LSTM, N rows. xp: [N, ldxp] input projection + bias; rec: [N, 4H] recurrent product,
 * used as scratch; c_prev, c_next: [N, H]; h_out: [N, ldh] gets o*h(c) (before projection). */
static inline void rnn_lstm_cell_f32_serial(const rnn_cell_t *cell, int N,
                                            const float *xp, int ldxp, float *rec,
                                            const float *c_prev, float *c_next,
                                            float *h_out, int ldh) {
    const int H = cell->hidden_size;
    const float *pi = cell->peep, *po = cell->peep ? cell->peep + H : NULL,
                *pf = cell->peep ? cell->peep + 2 * H : NULL;
    for (int n = 0; n < N; n++) {
        float *g = rec + (size_t)n * 4 * H;
        const float *x = xp + (size_t)n * ldxp;
        const float *cp = c_prev + (size_t)n * H;
        float *cn = c_next + (size_t)n * H;
        float *h = h_out + (size_t)n * ldh;
        float *gi = g, *go = g + H, *gf = g + 2 * H, *gc = g + 3 * H;
        for (int j = 0; j < 4 * H; j++) g[j] += x[j];
        rnn_gate_f32_serial(cell, cell->act[0], gi, pi, cp, H);
        if (cell->input_forget) {
            for (int j = 0; j < H; j++) gf[j] = 1.0f - gi[j];
        } else {
            rnn_gate_f32_serial(cell, cell->act[0], gf, pf, cp, H);
        }
        rnn_gate_f32_serial(cell, cell->act[1], gc, NULL, NULL, H);
        for (int j = 0; j < H; j++) cn[j] = gf[j] * cp[j] + gi[j] * gc[j];
        rnn_gate_f32_serial(cell, cell->act[0], go, po, cn, H);
        memcpy(h, cn, (size_t)H * sizeof(float));
        rnn_activate_f32_serial(cell->act[2], h, H);
        for (int j = 0; j < H; j++) h[j] *= go[j];
    }
}

/* GRU phase 1, N rows: z and r from rec[:, 0:2H] (+ xp), activated in place in rec. */
static inline void rnn_gru_zr_f32_serial(const rnn_cell_t *cell, int N,
                                         const float *xp, int ldxp, float *rec) {
    const int H = cell->hidden_size;
    for (int n = 0; n < N; n++) {
        float *g = rec + (size_t)n * 3 * H;
        const float *x = xp + (size_t)n * ldxp;
        for (int j = 0; j < 2 * H; j++) g[j] += x[j];
        rnn_gate_f32_serial(cell, cell->act[0], g, NULL, NULL, 2 * H);
    }
}

/* r * h' for the linear_before_reset = 0 product (r*h') Rh^T. rh: [N, H]. */
static inline void rnn_gru_reset_f32_serial(const rnn_cell_t *cell, int N, const float *rec,
                                            const float *h_prev, float *rh) {
    const int H = cell->hidden_size;
    for (int n = 0; n < N; n++) {
        const float *r = rec + (size_t)n * 3 * H + H;
        for (int j = 0; j < H; j++) rh[(size_t)n * H + j] = r[j] * h_prev[(size_t)n * H + j];
    }
}

/* GRU phase 2, N rows: rec[:, 2H:3H] holds the h-gate product (h' Rh^T for lbr=1,
 * (r*h') Rh^T for lbr=0); writes h_next [N, H]. */
static inline void rnn_gru_h_f32_serial(const rnn_cell_t *cell, int N,
                                        const float *xp, int ldxp, float *rec,
                                        const float *h_prev, float *h_next) {
    const int H = cell->hidden_size;
    for (int n = 0; n < N; n++) {
        float *g = rec + (size_t)n * 3 * H;
        const float *z = g, *r = g + H;
        float *nh = g + 2 * H;
        const float *x = xp + (size_t)n * ldxp + 2 * H;
        const float *hp = h_prev + (size_t)n * H;
        float *hn = h_next + (size_t)n * H;
        if (cell->linear_before_reset) {
            for (int j = 0; j < H; j++) nh[j] = x[j] + r[j] * (nh[j] + cell->rbh[j]);
        } else {
            for (int j = 0; j < H; j++) nh[j] += x[j];
        }
        rnn_gate_f32_serial(cell, cell->act[1], nh, NULL, NULL, H);
        for (int j = 0; j < H; j++) hn[j] = (1.0f - z[j]) * nh[j] + z[j] * hp[j];
    }
}

/* Plain RNN, N rows: h_next = f(clip(xp + rec)). */
static inline void rnn_rnn_cell_f32_serial(const rnn_cell_t *cell, int N,
                                           const float *xp, int ldxp, float *rec,
                                           float *h_next) {
    const int H = cell->hidden_size;
    for (int n = 0; n < N; n++) {
        float *g = rec + (size_t)n * H;
        const float *x = xp + (size_t)n * ldxp;
        for (int j = 0; j < H; j++) g[j] += x[j];
        rnn_gate_f32_serial(cell, cell->act[0], g, NULL, NULL, H);
        memcpy(h_next + (size_t)n * H, g, (size_t)H * sizeof(float));
    }
}

#endif

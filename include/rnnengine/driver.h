/* Timestep loops: one timestep of one cell (split over a thread pool), and one direction of
 * one layer over a whole sequence. Called from Cython without the GIL; all buffers are
 * allocated by the caller.
 */
#ifndef RNNENGINE_DRIVER_H
#define RNNENGINE_DRIVER_H

#include <string.h>
#include "rnnengine/cells.h"
#include "rnnengine/kernels.h"
#include "rnnengine/workers.h"

typedef struct {
    const rnn_kernels_t *k;
    const rnn_cell_t *c;
    const rnn_step_io_t *io;
    int phase;
    int blocks;
    /* rnn_xproj arguments */
    int M;
    const float *x;
    size_t ldx;
    float *out;
} rnn_task_t;

/* Static split of blocks over workers: worker w always gets the same slice. */
static inline void rnn_split(int blocks, int w, int nw, int *b0, int *b1) {
    *b0 = (int)((long long)blocks * w / nw);
    *b1 = (int)((long long)blocks * (w + 1) / nw);
}

static void rnn_phase_task(void *ctx, int w, int nw) {
    const rnn_task_t *t = (const rnn_task_t *)ctx;
    int b0, b1;
    rnn_split(t->blocks, w, nw, &b0, &b1);
    if (b0 < b1) t->k->phase(t->k, t->c, t->io, t->phase, b0, b1);
}

static void rnn_xproj_task(void *ctx, int w, int nw) {
    const rnn_task_t *t = (const rnn_task_t *)ctx;
    int b0, b1;
    rnn_split(t->blocks, w, nw, &b0, &b1);
    if (b0 < b1) t->k->xproj(t->k, t->c, t->M, t->x, t->ldx, t->out, b0, b1);
}

/* Multiply-adds of one phase (its weights times rows). */
static inline double rnn_phase_macs(const rnn_cell_t *c, const rnn_step_io_t *io, int phase) {
    const double rows = io->N, units = (double)rnn_cell_phase_blocks(c, phase) * RNN_BW;
    if (phase == 1) return rows * units * c->hidden_size;
    return rows * units * (c->gates_h * (double)c->output_size +
                           (io->x ? c->gates * (double)c->input_size : 0.0));
}

/* Below this much work a phase runs on the calling thread: waking the pool and meeting at
 * the barrier costs a few microseconds, more than splitting saves (LSTM H=64: 1 us alone). */
#define RNN_POOL_MIN_MACS 65536.0

/* One timestep of one cell: every phase in order, each split over the pool (NULL: this
 * thread only). */
static void rnn_cell_step(const rnn_kernels_t *k, rnn_pool_t *pool, const rnn_cell_t *c,
                          const rnn_step_io_t *io) {
    const int phases = rnn_cell_phases(c);
    for (int p = 0; p < phases; p++) {
        const int blocks = rnn_cell_phase_blocks(c, p);
        if (pool && blocks > 1 && rnn_phase_macs(c, io, p) >= RNN_POOL_MIN_MACS) {
            rnn_task_t t = {k, c, io, p, blocks, 0, NULL, 0, NULL};
            rnn_pool_run(pool, rnn_phase_task, &t);
        } else {
            k->phase(k, c, io, p, 0, blocks);
        }
    }
}

/* Input projections of M rows (rnn_kernels_t.xproj), split over the pool by block. */
static void rnn_cell_xproj(const rnn_kernels_t *k, rnn_pool_t *pool, const rnn_cell_t *c,
                           int M, const float *x, size_t ldx, float *out) {
    if (pool && c->blocks > 1) {
        rnn_task_t t = {k, c, NULL, 0, c->blocks, M, x, ldx, out};
        rnn_pool_run(pool, rnn_xproj_task, &t);
    } else {
        k->xproj(k, c, M, x, ldx, out, 0, c->blocks);
    }
}

/* Floats of scratch for one timestep of N rows: the phase buffers of rnn_step_io_t. */
static inline size_t rnn_step_scratch(const rnn_cell_t *c, int N) {
    const size_t hp = (size_t)c->blocks * RNN_BW;
    return (size_t)N * (2 * (size_t)c->hidden_size + 2 * hp);
}

/* Points io's phase buffers into scratch (rnn_step_scratch floats) and clears the rest. */
static inline void rnn_step_io_init(rnn_step_io_t *io, const rnn_cell_t *c, int N,
                                    float *scratch) {
    const size_t n = (size_t)N, hp = (size_t)c->blocks * RNN_BW;
    memset(io, 0, sizeof *io);
    io->N = N;
    io->hraw = scratch;
    io->rh = io->hraw + n * c->hidden_size;
    io->zs = io->rh + n * c->hidden_size;
    io->hx = io->zs + n * hp;
}

/* Floats of scratch rnn_run_direction needs. */
static inline size_t rnn_seq_workspace(const rnn_cell_t *c, int T, int N) {
    const size_t xp = T > 1 ? (size_t)T * N * rnn_cell_xp_width(c) + 16 : 0;
    return xp + rnn_step_scratch(c, N) +
           (size_t)N * (2 * (size_t)c->output_size + 2 * (size_t)c->hidden_size);
}

/* 64-byte align a float pointer inside a buffer that has 16 floats of slack. */
static inline float *rnn_align64(float *p) {
    return (float *)(((size_t)p + 63) & ~(size_t)63);
}

/* One direction of one layer over a whole sequence.
 *
 * x: [T, N, ldx] (I used); h_state [N, Hout] and c_state [N, H] (LSTM, else NULL) hold the
 * initial state and get the final one; y: [T, N, ldy], this direction's Hout columns written
 * (the caller offsets the pointer); lengths [N] or NULL. Steps with t >= lengths[n] leave row
 * n's state unchanged and write zeros, which also starts the reverse direction at t = len-1;
 * a row with length 0 ends with a zero state (ONNX Runtime's convention).
 *
 * With T > 1 the input projections of all timesteps are one GEMM before the loop; the loop
 * then runs only the recurrent product fused with the gate math. With T = 1 (a streamed step,
 * the pool) the input product is fused too. Consecutive timesteps walk the blocks in
 * opposite orders, so the weights used last are the first needed next (LRU-friendly when the
 * panels slightly exceed the cache). */
static void rnn_run_direction(const rnn_kernels_t *k, rnn_pool_t *pool, const rnn_cell_t *c,
                              int T, int N, const float *x, size_t ldx, const int *lengths,
                              float *h_state, float *c_state, float *y, size_t ldy,
                              float *work) {
    const int H = c->hidden_size, Ho = c->output_size;
    const size_t hsz = (size_t)Ho * sizeof(float), csz = (size_t)H * sizeof(float);
    const int lstm = c->kind == RNN_KIND_LSTM;
    float *xproj = NULL;
    const size_t ldxp = rnn_cell_xp_width(c);
    if (T > 1) {
        xproj = rnn_align64(work);
        work = xproj + (size_t)T * N * ldxp;
    }
    rnn_step_io_t io;
    rnn_step_io_init(&io, c, N, work);
    float *h_cur = work + rnn_step_scratch(c, N);
    float *h_nxt = h_cur + (size_t)N * Ho;
    io.c = h_nxt + (size_t)N * Ho;
    float *c_save = io.c + (size_t)N * H; /* rows masked by lengths keep their c here */

    memcpy(h_cur, h_state, (size_t)N * hsz);
    if (lstm) memcpy(io.c, c_state, (size_t)N * csz);
    if (xproj) rnn_cell_xproj(k, pool, c, T * N, x, ldx, xproj);

    for (int s = 0; s < T; s++) {
        const int t = c->reverse ? T - 1 - s : s;
        io.backward = s & 1;
        if (xproj) {
            io.xp = xproj + (size_t)t * N * c->gates * RNN_BW;
            io.ldxp = (size_t)T * N * c->gates * RNN_BW;
        } else {
            io.x = x + (size_t)t * N * ldx;
            io.ldx = ldx;
        }
        io.h_prev = h_cur;
        io.h_next = h_nxt;
        if (lengths && lstm)
            for (int n = 0; n < N; n++)
                if (t >= lengths[n]) memcpy(c_save + (size_t)n * H, io.c + (size_t)n * H, csz);
        rnn_cell_step(k, pool, c, &io);
        for (int n = 0; n < N; n++) {
            float *yrow = y + ((size_t)t * N + n) * ldy;
            if (lengths && t >= lengths[n]) {
                memcpy(h_nxt + (size_t)n * Ho, h_cur + (size_t)n * Ho, hsz);
                if (lstm) memcpy(io.c + (size_t)n * H, c_save + (size_t)n * H, csz);
                memset(yrow, 0, hsz);
            } else {
                memcpy(yrow, h_nxt + (size_t)n * Ho, hsz);
            }
        }
        float *tmp = h_cur;
        h_cur = h_nxt;
        h_nxt = tmp;
    }

    memcpy(h_state, h_cur, (size_t)N * hsz);
    if (lstm) memcpy(c_state, io.c, (size_t)N * csz);
    if (lengths) {
        for (int n = 0; n < N; n++) {
            if (lengths[n] == 0) {
                memset(h_state + (size_t)n * Ho, 0, hsz);
                if (lstm) memset(c_state + (size_t)n * H, 0, csz);
            }
        }
    }
}

#endif

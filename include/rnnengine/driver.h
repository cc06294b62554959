/* Timestep loops: one timestep of one cell (split over a thread pool), and one direction of
 * one layer over a whole sequence, and the stack of layers over both. Called from Cython
 * without the GIL; all buffers are allocated by the caller, which also passes their extents
 * (in floats): the drivers assert them (assert.h) instead of trusting the caller's sizing.
 */
#ifndef RNNENGINE_DRIVER_H
#define RNNENGINE_DRIVER_H

#include <string.h>
#include "rnnengine/assert.h"
#include "rnnengine/cancel.h"
#include "rnnengine/cells.h"
#include "rnnengine/fpenv.h"
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

/* Whether a sequence of N rows should compute its input products inside the timestep loop
 * (fused with the recurrent product, as a streamed step does) rather than as one GEMM over all
 * timesteps first. With 16 or more rows (a full AMX tile, several register-blocked row
 * chunks) and panels that stay in L2 from step to step, the per-step product reuses each
 * weight enough, and fusing saves writing the projections for all T*N rows and reading them
 * back. Measured T=100, N=16: LSTM H=64 bf16 20% faster, GRU H=64 bf16 18%, LSTM H=256 bf16
 * (1 MB of panels) 15%, LSTM H=64 fp32 7%; with 4 rows or 1 it was 20-30% slower. Either way
 * every pre-activation is bias + x Wx + h Wh summed in that order: bit-identical results. */
#define RNN_FUSE_MIN_ROWS 16
#define RNN_FUSE_MAX_BYTES ((size_t)1 << 20)
static inline int rnn_fuse_input(const rnn_cell_t *c, int N) {
    const size_t bytes =
        (size_t)c->blocks * (rnn_panel_bytes(c->wtype, c->input_size, c->gates) +
                             rnn_panel_bytes(c->wtype, c->output_size, c->gates_h));
    return N >= RNN_FUSE_MIN_ROWS && bytes <= RNN_FUSE_MAX_BYTES;
}

/* Timesteps whose input projections one GEMM computes ahead of the timestep loop: enough for
 * RNN_XP_ROWS rows (the input GEMM's row tile at I=1024, kernels_impl.h: rnn_xproj), so each
 * weight panel still serves as many rows per pass, while the projections' buffer stays the
 * same size for any T (it was T*N*4H floats: 262 MB for T=1000, N=16, H=1024, past the
 * cached workspace, so each call paid a page fault per 4 KB). */
#define RNN_XP_ROWS 256
static inline int rnn_xp_steps(int T, int N) {
    const int steps = N > 0 ? (RNN_XP_ROWS + N - 1) / N : 1;
    return T < steps ? T : steps;
}

/* Floats of scratch rnn_run_direction needs. */
static inline size_t rnn_seq_workspace(const rnn_cell_t *c, int T, int N) {
    const size_t xp = T > 1 && !rnn_fuse_input(c, N)
                          ? (size_t)rnn_xp_steps(T, N) * N * rnn_cell_xp_width(c) + 16
                          : 0;
    return xp + rnn_step_scratch(c, N) +
           (size_t)N * (2 * (size_t)c->output_size + 2 * (size_t)c->hidden_size);
}

/* 64-byte align a float pointer inside a buffer that has 16 floats of slack. */
static inline float *rnn_align64(float *p) {
    return (float *)(((size_t)p + 63) & ~(size_t)63);
}


/* Floats spanned by `rows` rows of `width` floats, `ld` apart (0 rows: 0). */
static inline size_t rnn_span(size_t rows, size_t ld, size_t width) {
    return rows ? (rows - 1) * ld + width : 0;
}

/* One direction of one layer over a whole sequence.
 *
 * x: [T, N, ldx] (I used, x_len floats); h_state [N, Hout] and c_state [N, H] (LSTM, else
 * NULL) hold the initial state and get the final one; y: [T, N, ldy] (y_len floats from the
 * pointer), this direction's Hout columns written (the caller offsets the pointer); lengths
 * [N] or NULL; work: work_len >= rnn_seq_workspace floats. Steps with t >= lengths[n] leave
 * row n's state unchanged and write zeros, which also starts the reverse direction at
 * t = len-1; a row with length 0 ends with a zero state (ONNX Runtime's convention).
 *
 * With T > 1 the input projections are GEMMs over rnn_xp_steps timesteps at a time, each
 * run as the loop reaches its first timestep (its last, in reverse); the loop then runs only
 * the recurrent product fused with the gate math. With T = 1 (a streamed step,
 * the pool), or a batch whose panels stay in cache (rnn_fuse_input), the input product is
 * fused too. Consecutive timesteps walk the blocks in
 * opposite orders, so the weights used last are the first needed next (LRU-friendly when the
 * panels slightly exceed the cache).
 *
 * Returns 1 when `cancel` stopped it between timesteps (h_state, c_state untouched, y partly
 * written), else 0. */
static int rnn_run_direction(const rnn_kernels_t *k, rnn_pool_t *pool, const rnn_cell_t *c,
                             int T, int N, const float *x, size_t ldx, size_t x_len,
                             const int *lengths, float *h_state, float *c_state, float *y,
                             size_t ldy, size_t y_len, float *work, size_t work_len,
                             const rnn_cancel_t *cancel) {
    const int H = c->hidden_size, Ho = c->output_size;
    const size_t hsz = (size_t)Ho * sizeof(float), csz = (size_t)H * sizeof(float);
    const int lstm = c->kind == RNN_KIND_LSTM;
    RNN_ASSERT(T >= 0 && N >= 0 && ldx >= (size_t)c->input_size && ldy >= (size_t)Ho);
    RNN_ASSERT(rnn_span((size_t)T * N, ldx, c->input_size) <= x_len);
    RNN_ASSERT(rnn_span((size_t)T * N, ldy, Ho) <= y_len);
    RNN_ASSERT(rnn_seq_workspace(c, T, N) <= work_len);
    RNN_ASSERT(!lstm || c_state);
    float *xproj = NULL;
    const size_t ldxp = rnn_cell_xp_width(c);
    if (T > 1 && !rnn_fuse_input(c, N)) {
        xproj = rnn_align64(work);
        work = xproj + (size_t)rnn_xp_steps(T, N) * N * ldxp;
    }
    rnn_step_io_t io;
    rnn_step_io_init(&io, c, N, work);
    float *h_cur = work + rnn_step_scratch(c, N);
    float *h_nxt = h_cur + (size_t)N * Ho;
    io.c = h_nxt + (size_t)N * Ho;
    float *c_save = io.c + (size_t)N * H; /* rows masked by lengths keep their c here */

    memcpy(h_cur, h_state, (size_t)N * hsz);
    if (lstm) memcpy(io.c, c_state, (size_t)N * csz);
    const int chunk = rnn_xp_steps(T, N);

    for (int s = 0; s < T; s++) {
        if (s && rnn_cancelled(cancel)) return 1;
        const int t = c->reverse ? T - 1 - s : s;
        io.backward = s & 1;
        if (xproj) {
            /* the chunk [t0, t0 + n) holding t; its projections when the loop enters it */
            const int t0 = t / chunk * chunk, n = T - t0 < chunk ? T - t0 : chunk;
            if (t == (c->reverse ? t0 + n - 1 : t0))
                rnn_cell_xproj(k, pool, c, n * N, x + (size_t)t0 * N * ldx, ldx, xproj);
            io.xp = xproj + (size_t)(t - t0) * N * c->gates * RNN_BW;
            io.ldxp = (size_t)n * N * c->gates * RNN_BW;
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
    return 0;
}

/* A stack of L layers of D directions over one sequence, every buffer with its extent in
 * floats. The state h is [L*D, N, Hout] and c [L*D, N, H]: one width for every layer (the
 * Python side refuses stacks whose layers differ in width; the asserts below hold it to that). */
typedef struct {
    const rnn_cell_t *const *cells; /* L*D descriptors, layer-major, direction-minor */
    int L, D, T, N;
    const float *x;                 /* [T, N, I] */
    size_t x_len;
    const int *lengths;             /* [N] or NULL */
    float *h;                       /* [L*D, N, Hout]: initial state in, final state out */
    size_t h_len;
    float *c;                       /* [L*D, N, H] for LSTM, else NULL */
    size_t c_len;
    float *y;                       /* [T, N, D*Hout]: the last layer's output */
    size_t y_len;
    float *work;                    /* rnn_stack_workspace floats */
    size_t work_len;
} rnn_stack_run_t;

/* Floats of work rnn_run_stack needs: the largest direction's sequence workspace (*seq), then
 * two intermediate layer outputs of *layer_out floats each when there is more than one
 * layer (layers ping-pong between them). */
static inline size_t rnn_stack_workspace(const rnn_cell_t *const *cells, int L, int D, int T,
                                         int N, size_t *seq, size_t *layer_out) {
    *seq = 0;
    *layer_out = 0;
    for (int i = 0; i < L * D; i++) {
        const size_t w = rnn_seq_workspace(cells[i], T, N);
        const size_t o = (size_t)T * N * D * cells[i]->output_size;
        if (w > *seq) *seq = w;
        if (o > *layer_out) *layer_out = o;
    }
    return *seq + (L > 1 ? 2 * *layer_out : 0);
}

/* Every layer and direction over the whole sequence (rnn_run_direction). Returns 1 when
 * cancelled between timesteps (then h and c may hold some layers' final states: the caller
 * restores them), else 0. */
static int rnn_run_stack_body(const rnn_kernels_t *k, rnn_pool_t *pool, const rnn_stack_run_t *s,
                              const rnn_cancel_t *cancel) {
    const int L = s->L, D = s->D, T = s->T, N = s->N;
    size_t seq, layer_out;
    RNN_ASSERT(L >= 1 && (D == 1 || D == 2) && T >= 0 && N >= 0);
    /* computed outside the assert, which release builds compile out: seq and layer_out are
     * needed below */
    const size_t need = rnn_stack_workspace(s->cells, L, D, T, N, &seq, &layer_out);
    RNN_ASSERT(need <= s->work_len);
    (void)need;
    float *inter = s->work + seq;
    size_t h_off = 0, c_off = 0;
    const float *layer_in = s->x;
    size_t ld_in = s->cells[0]->input_size, in_len = s->x_len;
    for (int l = 0; l < L; l++) {
        const int last = l == L - 1;
        float *layer_y = last ? s->y : inter + (size_t)(l % 2) * layer_out;
        const size_t y_len = last ? s->y_len : layer_out;
        const size_t width = (size_t)D * s->cells[l * D]->output_size;
        for (int d = 0; d < D; d++) {
            const rnn_cell_t *c = s->cells[l * D + d];
            const size_t hs = (size_t)N * c->output_size, cs = (size_t)N * c->hidden_size;
            /* this layer reads what the one below wrote, and its state fits the buffers */
            RNN_ASSERT((size_t)c->input_size == ld_in);
            RNN_ASSERT((size_t)c->output_size * D == width);
            RNN_ASSERT(h_off + hs <= s->h_len);
            RNN_ASSERT(!s->c || c_off + cs <= s->c_len);
            RNN_ASSERT(y_len >= (size_t)d * c->output_size);
            if (rnn_run_direction(k, pool, c, T, N, layer_in, ld_in, in_len, s->lengths,
                                  s->h + h_off, s->c ? s->c + c_off : NULL,
                                  layer_y + (size_t)d * c->output_size, width,
                                  y_len - (size_t)d * c->output_size, s->work, seq, cancel))
                return 1;
            h_off += hs;
            c_off += cs;
        }
        layer_in = layer_y;
        ld_in = width;
        in_len = (size_t)T * N * width;
    }
    return 0;
}

/* Floats of scratch rnn_stack_step needs: the largest cell's rnn_step_scratch. */
static inline size_t rnn_stack_step_scratch(const rnn_cell_t *const *cells, int L, int N) {
    size_t most = 0;
    for (int l = 0; l < L; l++) {
        const size_t s = rnn_step_scratch(cells[l], N);
        if (s > most) most = s;
    }
    return most;
}

/* One timestep of a one-way stack of L layers (a stream's step): x [N, I]; h_prev and
 * h_next [L, N, Hout] (h_len floats each, distinct); c [L, N, H] (LSTM, else NULL) updated in
 * place; y [N, Hout] gets the last layer's h; scratch: rnn_stack_step_scratch floats.
 * io.backward alternates with `step` (cache reuse, as in rnn_run_direction). */
static void rnn_stack_step_body(const rnn_kernels_t *k, rnn_pool_t *pool,
                                const rnn_cell_t *const *cells, int L, int N, long long step,
                                const float *x, size_t x_len, const float *h_prev, float *h_next,
                                size_t h_len, float *c, size_t c_len, float *y, size_t y_len,
                                float *scratch, size_t scratch_len) {
    const size_t Ho = cells[0]->output_size, hsz = (size_t)N * Ho;
    rnn_step_io_t io;
    const float *layer_in = x;
    RNN_ASSERT(L >= 1 && N >= 1);
    RNN_ASSERT((size_t)N * cells[0]->input_size <= x_len);
    RNN_ASSERT(hsz <= y_len);
    RNN_ASSERT(rnn_stack_step_scratch(cells, L, N) <= scratch_len);
    for (int l = 0; l < L; l++) {
        const rnn_cell_t *cell = cells[l];
        RNN_ASSERT((size_t)cell->output_size == Ho);
        RNN_ASSERT((size_t)cell->input_size == (l ? Ho : (size_t)cells[0]->input_size));
        RNN_ASSERT((size_t)(l + 1) * hsz <= h_len);
        RNN_ASSERT(!c || (size_t)(l + 1) * N * cell->hidden_size <= c_len);
        rnn_step_io_init(&io, cell, N, scratch);
        io.backward = (int)(step & 1);
        io.x = layer_in;
        io.ldx = cell->input_size;
        io.h_prev = h_prev + l * hsz;
        io.h_next = h_next + l * hsz;
        if (c) io.c = c + (size_t)l * N * cell->hidden_size;
        rnn_cell_step(k, pool, cell, &io);
        layer_in = io.h_next;
    }
    memcpy(y, layer_in, hsz * sizeof(float));
}

/* The two entries the Cython drivers call: the bodies above with subnormals flushed
 * (fpenv.h says why). */
static int rnn_run_stack(const rnn_kernels_t *k, rnn_pool_t *pool, const rnn_stack_run_t *s,
                         const rnn_cancel_t *cancel) {
    const rnn_fpenv_t saved = rnn_fpenv_enter();
    const int stopped = rnn_run_stack_body(k, pool, s, cancel);
    rnn_fpenv_leave(saved);
    return stopped;
}

static void rnn_stack_step(const rnn_kernels_t *k, rnn_pool_t *pool,
                           const rnn_cell_t *const *cells, int L, int N, long long step,
                           const float *x, size_t x_len, const float *h_prev, float *h_next,
                           size_t h_len, float *c, size_t c_len, float *y, size_t y_len,
                           float *scratch, size_t scratch_len) {
    const rnn_fpenv_t saved = rnn_fpenv_enter();
    rnn_stack_step_body(k, pool, cells, L, N, step, x, x_len, h_prev, h_next, h_len, c, c_len,
                        y, y_len, scratch, scratch_len);
    rnn_fpenv_leave(saved);
}

#endif

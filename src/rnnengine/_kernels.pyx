# The compute drivers: every timestep loop of the engine runs here, without the GIL.
#
# Python (model.py) validates shapes and dtypes and allocates every array; the functions here
# trust those checks, take the pointers, release the GIL once and run all layers, directions
# and timesteps in C. Weights arrive already packed (layers.py: pack_layer).
from libc.stdlib cimport malloc, free
from libc.string cimport memcpy, memset

import numpy as np

from ._blas cimport gemm_abt
from ._cells cimport *


cdef class CellKernel:
    """One direction of one layer: the C descriptor plus the arrays it points into."""

    cdef rnn_cell_t cell
    cdef readonly object arrays   # keeps every buffer the descriptor points to alive

    def __init__(self, int kind, int gates, int hidden_size, int output_size, bint reverse,
                 bint input_forget, bint linear_before_reset, float clip, activations,
                 const float[:, ::1] W, const float[:, ::1] R, const float[::1] bias,
                 rbh=None, peep=None, proj=None):
        cdef const float[::1] view
        cdef const float[:, ::1] view2
        self.arrays = (W, R, bias, rbh, peep, proj)
        self.cell.kind = kind
        self.cell.gates = gates
        self.cell.input_size = W.shape[1]
        self.cell.hidden_size = hidden_size
        self.cell.output_size = output_size
        self.cell.reverse = reverse
        self.cell.input_forget = input_forget
        self.cell.linear_before_reset = linear_before_reset
        self.cell.clip = clip
        for i, (code, alpha, beta) in enumerate(activations):
            self.cell.act[i].code = code
            self.cell.act[i].alpha = alpha
            self.cell.act[i].beta = beta
        self.cell.W = &W[0, 0]
        self.cell.R = &R[0, 0]
        self.cell.bias = &bias[0]
        self.cell.rbh = NULL
        self.cell.peep = NULL
        self.cell.proj = NULL
        if rbh is not None:
            view = rbh
            self.cell.rbh = &view[0]
        if peep is not None:
            view = peep
            self.cell.peep = &view[0]
        if proj is not None:
            view2 = proj
            self.cell.proj = &view2[0, 0]

    @property
    def input_size(self):
        return self.cell.input_size

    @property
    def hidden_size(self):
        return self.cell.hidden_size

    @property
    def output_size(self):
        return self.cell.output_size

    @property
    def gates(self):
        return self.cell.gates


cdef inline size_t direction_workspace(const rnn_cell_t *c, int T, int N) noexcept nogil:
    """Floats of scratch one direction needs: xproj, rec, two h, two c, hraw/rh."""
    cdef size_t gh = <size_t>c.gates * c.hidden_size
    return (<size_t>T * N * gh + <size_t>N * gh + 2 * <size_t>N * c.output_size
            + 3 * <size_t>N * c.hidden_size)


cdef void run_direction(const rnn_cell_t *c, int T, int N, const float *x,
                        const int *lengths, float *h_state, float *c_state,
                        float *y, int ldy, float *work) noexcept nogil:
    """One direction over a whole sequence.

    x: [T, N, I]; h_state [N, Hout], c_state [N, H] (LSTM) hold the initial state and get the
    final one; y: [T, N, ldy] written at this direction's column offset (the caller offsets the
    pointer); lengths: [N] or NULL. Steps with t >= lengths[n] leave row n's state unchanged
    and write zeros, which also gives the reverse direction its start at t = len - 1."""
    cdef int H = c.hidden_size
    cdef int hout = c.output_size
    cdef int gh = c.gates * H
    cdef int I = c.input_size
    cdef float *xproj = work
    cdef float *rec = xproj + <size_t>T * N * gh
    cdef float *h_cur = rec + <size_t>N * gh
    cdef float *h_next = h_cur + <size_t>N * hout
    cdef float *c_cur = h_next + <size_t>N * hout
    cdef float *c_next = c_cur + <size_t>N * H
    cdef float *scratch = c_next + <size_t>N * H   # LSTM o*h(c) before projection; GRU r*h'
    cdef float *tmp
    cdef float *xp
    cdef int s, t, n
    cdef size_t row

    # The input projection for every timestep in one GEMM, bias pre-filled (beta = 1).
    for row in range(<size_t>T * N):
        memcpy(xproj + row * gh, c.bias, gh * sizeof(float))
    gemm_abt(T * N, gh, I, x, I, c.W, I, 1.0, xproj, gh)

    memcpy(h_cur, h_state, <size_t>N * hout * sizeof(float))
    if c.kind == RNN_KIND_LSTM:
        memcpy(c_cur, c_state, <size_t>N * H * sizeof(float))

    for s in range(T):
        t = T - 1 - s if c.reverse else s
        xp = xproj + <size_t>t * N * gh
        if c.kind == RNN_KIND_LSTM:
            gemm_abt(N, gh, hout, h_cur, hout, c.R, hout, 0.0, rec, gh)
            if c.proj != NULL:
                rnn_lstm_cell_f32_serial(c, N, xp, gh, rec, c_cur, c_next, scratch, H)
                gemm_abt(N, hout, H, scratch, H, c.proj, H, 0.0, h_next, hout)
            else:
                rnn_lstm_cell_f32_serial(c, N, xp, gh, rec, c_cur, c_next, h_next, H)
        elif c.kind == RNN_KIND_GRU:
            if c.linear_before_reset:
                gemm_abt(N, gh, H, h_cur, H, c.R, H, 0.0, rec, gh)
                rnn_gru_zr_f32_serial(c, N, xp, gh, rec)
            else:
                gemm_abt(N, 2 * H, H, h_cur, H, c.R, H, 0.0, rec, gh)
                rnn_gru_zr_f32_serial(c, N, xp, gh, rec)
                rnn_gru_reset_f32_serial(c, N, rec, h_cur, scratch)
                gemm_abt(N, H, H, scratch, H, c.R + <size_t>2 * H * H, H, 0.0, rec + 2 * H, gh)
            rnn_gru_h_f32_serial(c, N, xp, gh, rec, h_cur, h_next)
        else:
            gemm_abt(N, gh, H, h_cur, H, c.R, H, 0.0, rec, gh)
            rnn_rnn_cell_f32_serial(c, N, xp, gh, rec, h_next)

        for n in range(N):
            if lengths != NULL and t >= lengths[n]:
                memcpy(h_next + <size_t>n * hout, h_cur + <size_t>n * hout, hout * sizeof(float))
                if c.kind == RNN_KIND_LSTM:
                    memcpy(c_next + <size_t>n * H, c_cur + <size_t>n * H, H * sizeof(float))
                memset(y + (<size_t>t * N + n) * ldy, 0, hout * sizeof(float))
            else:
                memcpy(y + (<size_t>t * N + n) * ldy, h_next + <size_t>n * hout,
                       hout * sizeof(float))
        tmp = h_cur; h_cur = h_next; h_next = tmp
        tmp = c_cur; c_cur = c_next; c_next = tmp

    memcpy(h_state, h_cur, <size_t>N * hout * sizeof(float))
    if c.kind == RNN_KIND_LSTM:
        memcpy(c_state, c_cur, <size_t>N * H * sizeof(float))
    if lengths != NULL:
        # ONNX Runtime's convention: a batch entry with length 0 ends with a zero state.
        for n in range(N):
            if lengths[n] == 0:
                memset(h_state + <size_t>n * hout, 0, hout * sizeof(float))
                if c.kind == RNN_KIND_LSTM:
                    memset(c_state + <size_t>n * H, 0, H * sizeof(float))


def run_stack(list cells, int num_directions, const float[:, :, ::1] x, lengths,
              float[:, :, ::1] h, c, float[:, :, ::1] y):
    """Run a stack of layers over a whole sequence.

    cells: L*D CellKernel, layer-major; x [T, N, I]; lengths int32 [N] or None;
    h [L*D, N, Hout] and c [L*D, N, H] (LSTM, else None) hold the initial state and receive
    the final one; y [T, N, D*Hout] receives the last layer's output. Shapes are checked by
    the caller (model.py)."""
    cdef int T = x.shape[0]
    cdef int N = x.shape[1]
    cdef int D = num_directions
    cdef int L = len(cells) // D
    cdef int l, d, k, width
    cdef size_t work_size = 0, layer_out = 0
    cdef const int[::1] lens_view
    cdef const int *lens = NULL
    cdef float[:, :, ::1] c_view
    cdef float *c_base = NULL
    cdef const rnn_cell_t **descs
    cdef CellKernel kernel
    if T == 0 or N == 0:
        return
    if lengths is not None:
        lens_view = lengths
        lens = &lens_view[0]
    if c is not None:
        c_view = c
        c_base = &c_view[0, 0, 0]
    for kernel in cells:
        work_size = max(work_size, direction_workspace(&kernel.cell, T, N))
        layer_out = max(layer_out, <size_t>T * N * D * kernel.cell.output_size)
    # Intermediate layers' outputs ping-pong between two buffers; the last writes y.
    cdef float[::1] work = np.empty(work_size + 2 * layer_out * (L > 1), np.float32)
    cdef float *inter = &work[0] + work_size
    descs = <const rnn_cell_t **>malloc(len(cells) * sizeof(rnn_cell_t *))
    if descs == NULL:
        raise MemoryError()
    for k in range(len(cells)):
        kernel = cells[k]
        descs[k] = &kernel.cell
    cdef const float *layer_in = &x[0, 0, 0]
    cdef float *layer_y
    try:
        with nogil:
            for l in range(L):
                layer_y = &y[0, 0, 0] if l == L - 1 else inter + (l % 2) * layer_out
                width = D * descs[l * D].output_size
                for d in range(D):
                    k = l * D + d
                    run_direction(descs[k], T, N, layer_in, lens, &h[k, 0, 0],
                                  c_base + <size_t>k * N * descs[k].hidden_size
                                  if c_base != NULL else NULL,
                                  layer_y + d * descs[k].output_size, width, &work[0])
                layer_in = layer_y
    finally:
        free(descs)

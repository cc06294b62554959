# The compute drivers' Python face: packed cell descriptors, the whole-sequence entry point,
# the preallocated per-stream step, and the choice of ISA variant.
#
# Python (model.py) validates shapes and dtypes; the functions here take the pointers, release
# the GIL once and run every layer, direction and timestep in C (include/rnnengine/driver.h).
# Weights arrive already packed (layers.py: pack_layer).
import os
import threading

import numpy as np

cimport numpy as cnp
from libc.stdlib cimport malloc, free
from libc.string cimport memcpy, memset

from ._cells cimport *

cnp.import_array()

# -- ISA variant: chosen once at import, from CPUID or RNNENGINE_ISA -------------------------

cdef const rnn_kernels_t *KERNELS = NULL
cdef int ACTIVE_ISA = RNN_ISA_SERIAL
ISA_NAMES = tuple(rnn_isa_names[i].decode() for i in range(RNN_ISA_COUNT))


def supported_isas():
    """Names of the variants this build and CPU can run, narrowest first."""
    return [ISA_NAMES[i] for i in range(RNN_ISA_COUNT) if rnn_cpu_supports(i)]


def isa():
    """Name of the active variant: 'serial', 'avx2', 'avx512' or 'amx'."""
    return ISA_NAMES[ACTIVE_ISA]


def set_isa(name):
    """Switch the variant for every later call in this process (tests and bench use it; the
    packed weights are the same for all variants). name=None picks the best one."""
    global KERNELS, ACTIVE_ISA
    if name is None:
        index = rnn_cpu_best_isa()
    else:
        key = str(name).strip().lower()
        if key not in ISA_NAMES:
            raise ValueError(f"unknown ISA {name!r}; expected one of {', '.join(ISA_NAMES)}")
        index = ISA_NAMES.index(key)
        if not rnn_cpu_supports(index):
            raise RuntimeError(f"ISA {key!r} is not supported by this CPU or build; "
                               f"supported: {', '.join(supported_isas())}")
    KERNELS = rnn_kernels_for(index)
    ACTIVE_ISA = index


set_isa(os.environ.get("RNNENGINE_ISA") or None)


# -- packed cell descriptors ------------------------------------------------------------------

cdef const float *_ptr(object a, Py_ssize_t size, str name) except? NULL:
    """Pointer to the data of a C-contiguous float32 array of exactly `size` floats, or NULL
    for None. A wrong buffer here would be read out of bounds by C, so it is checked."""
    cdef const float[::1] view
    if a is None:
        return NULL
    view = a.reshape(-1)
    if view.shape[0] != size:
        raise ValueError(f"packed {name} has {view.shape[0]} floats; expected {size}")
    return &view[0]


cdef const void *_panel(object a, int wtype, Py_ssize_t blocks, int K, int G,
                        str name) except? NULL:
    """Pointer to a packed weight panel: `blocks` block panels of the weight type's size
    (cells.h: rnn_panel_bytes), C-contiguous, any dtype; NULL for None."""
    cdef const unsigned char[::1] view
    cdef size_t size
    if a is None:
        return NULL
    if not (isinstance(a, np.ndarray) and a.flags.c_contiguous):
        raise ValueError(f"packed {name} must be a C-contiguous array")
    size = blocks * rnn_panel_bytes(wtype, K, G)
    view = a.reshape(-1).view(np.uint8)
    if <size_t>view.shape[0] != size:
        raise ValueError(f"packed {name} has {view.shape[0]} bytes; expected {size}")
    return &view[0]


WEIGHT_TYPES = ("fp32", "fp16", "bf16", "int8")   # enum rnn_wtype in cells.h, in order


def gemm_isa(str precision):
    """The instruction set the active variant's product for `precision` weights uses (its
    own ISA, or e.g. 'avx512bf16' where the CPU has a dot-product instruction)."""
    return KERNELS.gemm_isa[WEIGHT_TYPES.index(precision)].decode()


cdef class CellKernel:
    """One direction of one layer: the C descriptor plus the packed arrays it points into
    (layout: include/rnnengine/cells.h)."""

    cdef rnn_cell_t cell
    cdef readonly object arrays   # keeps every buffer the descriptor points to alive

    def __init__(self, int kind, int gates, int input_size, int hidden_size, int output_size,
                 bint reverse, bint input_forget, bint linear_before_reset, float clip,
                 activations, px, ph, bias, prh=None, pproj=None, rbh=None, peep=None,
                 int wtype=RNN_W_F32):
        cdef rnn_cell_t *c = &self.cell
        cdef Py_ssize_t HB = (hidden_size + RNN_BW - 1) // RNN_BW
        cdef Py_ssize_t PB = (output_size + RNN_BW - 1) // RNN_BW
        if not 0 <= wtype < RNN_W_COUNT:
            raise ValueError(f"unknown weight type {wtype}")
        if gates not in (1, 3, 4) or min(input_size, hidden_size, output_size) < 1:
            raise ValueError(f"bad cell geometry: gates={gates}, I={input_size}, "
                             f"H={hidden_size}, Hout={output_size}")
        self.arrays = (px, ph, bias, prh, pproj, rbh, peep)
        memset(c, 0, sizeof(rnn_cell_t))
        c.kind = kind
        c.gates = gates
        c.gates_h = 2 if (kind == RNN_KIND_GRU and not linear_before_reset) else gates
        c.input_size = input_size
        c.hidden_size = hidden_size
        c.output_size = output_size
        c.blocks = <int>HB
        c.proj_blocks = <int>PB if pproj is not None else 0
        c.reverse = reverse
        c.input_forget = input_forget
        c.linear_before_reset = linear_before_reset
        c.clip = clip
        for i, (code, alpha, beta) in enumerate(activations):
            c.act[i].code = code
            c.act[i].alpha = alpha
            c.act[i].beta = beta
        c.wtype = wtype
        c.px = _panel(px, wtype, HB, input_size, gates, "px")
        c.ph = _panel(ph, wtype, HB, output_size, c.gates_h, "ph")
        c.bias = _ptr(bias, HB * gates * RNN_BW, "bias")
        c.prh = _panel(prh, wtype, HB, hidden_size, 1, "prh")
        c.pproj = _panel(pproj, wtype, PB, hidden_size, 1, "pproj")
        c.rbh = _ptr(rbh, HB * RNN_BW, "rbh")
        c.peep = _ptr(peep, HB * 3 * RNN_BW, "peep")
        if c.gates_h == 2 and c.prh == NULL:
            raise ValueError("GRU with linear_before_reset=0 needs the packed Rh (prh)")
        if kind == RNN_KIND_GRU and linear_before_reset and c.rbh == NULL:
            raise ValueError("GRU with linear_before_reset=1 needs the packed Rbh (rbh)")
        if pproj is None and output_size != hidden_size:
            raise ValueError("output_size differs from hidden_size but there is no projection")

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

    @property
    def precision(self):
        return WEIGHT_TYPES[self.cell.wtype]


cdef const rnn_cell_t **descriptors(list cells) except NULL:
    """malloc'd array of the cells' descriptors (the caller frees it)."""
    cdef CellKernel kernel
    cdef const rnn_cell_t **descs = <const rnn_cell_t **>malloc(
        max(len(cells), 1) * sizeof(rnn_cell_t *))
    if descs == NULL:
        raise MemoryError()
    for k in range(len(cells)):
        kernel = cells[k]
        descs[k] = &kernel.cell
    return descs


cdef rnn_pool_t *make_pool(int threads) except? NULL:
    cdef rnn_pool_t *pool
    if threads < 1:
        raise ValueError(f"threads must be a positive integer; got {threads}")
    if threads == 1:
        return NULL
    pool = rnn_pool_create(threads)
    if pool == NULL:
        raise RuntimeError(f"could not start {threads} threads")
    return pool


cdef void run_layers(const rnn_kernels_t *k, rnn_pool_t *pool, const rnn_cell_t **descs,
                     int L, int D, int T, int N, const float *x, const int *lens,
                     float *h, float *c, float *y, float *inter, size_t layer_out,
                     float *work) noexcept nogil:
    """Every layer and direction over the whole sequence (rnn_run_direction). h [L*D, N, Hout]
    and c [L*D, N, H] (or NULL) hold the initial state and receive the final one; y [T, N,
    D*Hout]; intermediate layers ping-pong between two buffers of layer_out floats at inter."""
    cdef int l, d, i, width
    cdef size_t h_off = 0, c_off = 0
    cdef const float *layer_in = x
    cdef size_t ld_in = descs[0].input_size
    cdef float *layer_y
    for l in range(L):
        layer_y = y if l == L - 1 else inter + (l % 2) * layer_out
        width = D * descs[l * D].output_size
        for d in range(D):
            i = l * D + d
            rnn_run_direction(k, pool, descs[i], T, N, layer_in, ld_in, lens, h + h_off,
                              (c + c_off) if c != NULL else NULL,
                              layer_y + d * descs[i].output_size, width, work)
            h_off += <size_t>N * descs[i].output_size
            c_off += <size_t>N * descs[i].hidden_size
        layer_in = layer_y
        ld_in = width


# Each thread keeps its largest workspace up to this many floats (64 MB): a fresh multi-MB
# buffer costs a page fault per 4 KB on first touch, measured 6% of a T=100, H=256 sequence.
DEF CACHED_WORKSPACE_FLOATS = 16 * 1024 * 1024
_workspace = threading.local()


cdef object sequence_buffers(list cells, int D, int T, int N, size_t *layer_out):
    """Scratch for run_layers: the largest direction's workspace, then two intermediate
    layer outputs when there is more than one layer. A view of this thread's cached buffer
    when it fits (a thread runs one sequence at a time, so the cache is never shared)."""
    cdef CellKernel kernel
    cdef size_t work = 0
    layer_out[0] = 0
    for kernel in cells:
        work = max(work, rnn_seq_workspace(&kernel.cell, T, N))
        layer_out[0] = max(layer_out[0], <size_t>T * N * D * kernel.cell.output_size)
    L = len(cells) // D
    cdef size_t size = work + 2 * layer_out[0] * (L > 1) + 16
    if size > CACHED_WORKSPACE_FLOATS:
        return np.empty(size, np.float32)
    buf = getattr(_workspace, "buf", None)
    if buf is None or buf.shape[0] < size:
        buf = _workspace.buf = np.empty(size, np.float32)
    return buf[:size]


def run_stack(list cells, int num_directions, const float[:, :, ::1] x, lengths,
              float[:, :, ::1] h, c, float[:, :, ::1] y, int threads=1):
    """Run a stack of layers over a whole sequence.

    cells: L*D CellKernel, layer-major; x [T, N, I]; lengths int32 [N] or None;
    h [L*D, N, Hout] and c [L*D, N, H] (LSTM, else None) hold the initial state and receive
    the final one; y [T, N, D*Hout] receives the last layer's output; threads: intra-op
    threads (hidden units split between them). Shapes are checked by the caller (model.py)."""
    cdef int T = x.shape[0]
    cdef int N = x.shape[1]
    cdef int D = num_directions
    cdef int L = len(cells) // D
    cdef size_t layer_out = 0
    cdef const int[::1] lens_view
    cdef const int *lens = NULL
    cdef float[:, :, ::1] c_view
    cdef float *c_base = NULL
    cdef const rnn_kernels_t *k = KERNELS
    if T == 0 or N == 0:
        return
    if lengths is not None:
        lens_view = lengths
        lens = &lens_view[0]
    if c is not None:
        c_view = c
        c_base = &c_view[0, 0, 0]
    cdef float[::1] work = sequence_buffers(cells, D, T, N, &layer_out)
    cdef float *inter = &work[0] + (work.shape[0] - 16 - 2 * layer_out * (L > 1))
    cdef rnn_pool_t *pool = make_pool(threads)
    cdef const rnn_cell_t **descs = NULL
    try:
        descs = descriptors(cells)
        with nogil:
            run_layers(k, pool, descs, L, D, T, N, &x[0, 0, 0], lens, &h[0, 0, 0], c_base,
                       &y[0, 0, 0], inter, layer_out, &work[0])
    finally:
        free(descs)
        rnn_pool_destroy(pool)


# -- streaming: preallocated buffers, one nogil call per step --------------------------------

# A step releases the GIL only when it has enough work to pay for the release (about 0.1 us).
DEF NOGIL_MIN_MACS = 16384


cdef class StreamCore:
    """The state and buffers of a stream, allocated once; ``step`` is one argument check and
    one call into C. Base class of rnnengine.model.Stream, which adds the Python-level API.

    h lives in two buffers [2, L, N, Hout] that swap roles every step (a step reads all of the
    previous h while it writes the new one); c [L, N, H] is updated in place."""

    cdef list _cells
    cdef const rnn_cell_t **_descs
    cdef rnn_pool_t *_pool
    cdef int _L, _N, _I, _Hout
    cdef int _parity, _steps, _busy, _threads
    cdef bint _nogil
    cdef object _hbuf, _cbuf, _scratch
    cdef float *_h[2]
    cdef float *_c
    cdef float *_scr

    def __cinit__(self, *args, **kwargs):
        self._descs = NULL
        self._pool = NULL
        self._L = 0

    def __dealloc__(self):
        free(self._descs)
        rnn_pool_destroy(self._pool)

    def _init_core(self, list cells, int batch, int threads):
        """cells: one CellKernel per layer (one direction); batch N >= 1; threads >= 1."""
        cdef CellKernel kernel
        cdef size_t scratch = 0, macs = 0
        cdef float[:, :, :, ::1] hv
        cdef float[:, :, ::1] cv
        cdef float[::1] sv
        if self._descs != NULL:
            raise RuntimeError("stream already initialised")
        self._cells = list(cells)
        self._L = len(cells)
        self._N = batch
        kernel = cells[0]
        self._I = kernel.cell.input_size
        self._Hout = kernel.cell.output_size
        for kernel in cells:
            scratch = max(scratch, rnn_step_scratch(&kernel.cell, batch))
            macs += <size_t>kernel.cell.gates * kernel.cell.hidden_size * (
                kernel.cell.input_size + kernel.cell.output_size)
        self._nogil = macs * batch >= NOGIL_MIN_MACS or threads > 1
        self._hbuf = np.zeros((2, self._L, batch, self._Hout), np.float32)
        hv = self._hbuf
        self._h[0] = &hv[0, 0, 0, 0]
        self._h[1] = &hv[1, 0, 0, 0]
        self._c = NULL
        if kernel.cell.kind == RNN_KIND_LSTM:
            self._cbuf = np.zeros((self._L, batch, kernel.cell.hidden_size), np.float32)
            cv = self._cbuf
            self._c = &cv[0, 0, 0]
        self._scratch = np.zeros(scratch + 16, np.float32)
        sv = self._scratch
        self._scr = &sv[0]
        self._parity = 0
        self._steps = 0
        self._threads = threads
        self._pool = make_pool(threads)
        self._descs = descriptors(self._cells)

    @property
    def threads(self):
        return self._threads

    def _state_views(self):
        """(h, c): views of the current state, h [L, N, Hout] and c [L, N, H] or None."""
        return self._hbuf[self._parity], self._cbuf

    cdef int _acquire(self) except -1:
        if self._descs == NULL:
            raise RuntimeError("stream is not initialised")
        if not rnn_flag_try_acquire(&self._busy):
            raise RuntimeError("this Stream is already in use by another thread; a Stream is "
                               "not thread-safe: create one stream per thread")
        return 0

    def _lock(self):
        self._acquire()

    def _unlock(self):
        rnn_flag_release(&self._busy)

    cdef void _step_all(self, const float *x, float *y) noexcept nogil:
        """Every layer for one timestep; y [N, Hout] gets the last layer's h."""
        cdef rnn_step_io_t io
        cdef int l
        cdef int p = self._parity
        cdef size_t hsz = <size_t>self._N * self._Hout
        cdef const float *layer_in = x
        cdef const rnn_cell_t *c
        for l in range(self._L):
            c = self._descs[l]
            rnn_step_io_init(&io, c, self._N, self._scr)
            io.backward = self._steps & 1
            io.x = layer_in
            io.ldx = c.input_size
            io.h_prev = self._h[p] + l * hsz
            io.h_next = self._h[1 - p] + l * hsz
            if self._c != NULL:
                io.c = self._c + <size_t>l * self._N * c.hidden_size
            rnn_cell_step(KERNELS, self._pool, c, &io)
            layer_in = io.h_next
        memcpy(y, layer_in, hsz * sizeof(float))
        self._parity = 1 - p
        self._steps += 1

    def step(self, x_t, out=None):
        """One timestep: x_t (N, I) (or (I,) when batch is 1) -> y_t (N, Hout) (or (Hout,)).
        out: optional float32 C-contiguous array of that shape to write y_t into (no
        allocation); it is returned."""
        cdef cnp.ndarray xa
        cdef cnp.ndarray ya
        cdef cnp.npy_intp dims[2]
        cdef int nd
        if (cnp.PyArray_Check(x_t) and cnp.PyArray_TYPE(<cnp.ndarray>x_t) == cnp.NPY_FLOAT32
                and cnp.PyArray_ISCARRAY_RO(<cnp.ndarray>x_t)
                and cnp.PyArray_ISNOTSWAPPED(<cnp.ndarray>x_t)):
            xa = <cnp.ndarray>x_t
        else:
            xa = self._convert(x_t)
        nd = cnp.PyArray_NDIM(xa)
        if not ((nd == 2 and cnp.PyArray_DIM(xa, 0) == self._N
                 and cnp.PyArray_DIM(xa, 1) == self._I)
                or (nd == 1 and self._N == 1 and cnp.PyArray_DIM(xa, 0) == self._I)):
            self._bad_input(xa)
        dims[0] = self._N
        dims[1] = self._Hout
        if nd == 1:
            dims[0] = self._Hout
        if out is None:
            ya = cnp.PyArray_EMPTY(nd, dims, cnp.NPY_FLOAT32, 0)
        else:
            ya = self._check_out(out, nd, dims)
        self._acquire()
        if self._nogil:
            with nogil:
                self._step_all(<const float *>cnp.PyArray_DATA(xa),
                               <float *>cnp.PyArray_DATA(ya))
        else:
            self._step_all(<const float *>cnp.PyArray_DATA(xa), <float *>cnp.PyArray_DATA(ya))
        rnn_flag_release(&self._busy)
        return ya

    def _convert(self, x_t):
        """Slow path of step: any float array-like -> C-contiguous native float32."""
        from .model import as_float32
        return as_float32("x_t", x_t, f"({self._N}, {self._I})")

    def _bad_input(self, cnp.ndarray xa):
        if self._N == 1:
            expected = f"(1, {self._I}) or ({self._I},)"
        else:
            expected = f"({self._N}, {self._I})"
        raise ValueError(f"x_t must be float32 of shape {expected}; got "
                         f"{tuple((<object>xa).shape)}")

    cdef cnp.ndarray _check_out(self, out, int nd, cnp.npy_intp *dims):
        if not (cnp.PyArray_Check(out) and cnp.PyArray_TYPE(<cnp.ndarray>out) == cnp.NPY_FLOAT32
                and cnp.PyArray_ISCARRAY(<cnp.ndarray>out)
                and cnp.PyArray_ISNOTSWAPPED(<cnp.ndarray>out)
                and cnp.PyArray_NDIM(<cnp.ndarray>out) == nd
                and all(cnp.PyArray_DIM(<cnp.ndarray>out, i) == dims[i] for i in range(nd))):
            shape = tuple(dims[i] for i in range(nd))
            got = (f"{type(out).__name__} {getattr(out, 'dtype', '')} "
                   f"{getattr(out, 'shape', '')}")
            raise ValueError(f"out must be a writeable C-contiguous float32 array of shape "
                             f"{shape}; got {got}")
        return <cnp.ndarray>out

    def _run(self, const float[:, :, ::1] x, float[:, :, ::1] y):
        """Several timesteps from the current state (the sequence path: one input GEMM per
        layer, then the fused recurrent loop); x [T, N, I] -> y [T, N, Hout]."""
        cdef int T = x.shape[0]
        cdef size_t layer_out = 0
        cdef float *h
        if T == 0:
            return
        cdef float[::1] work = sequence_buffers(self._cells, 1, T, self._N, &layer_out)
        cdef float *inter = &work[0] + (work.shape[0] - 16 - 2 * layer_out * (self._L > 1))
        self._acquire()
        try:
            h = self._h[self._parity]
            with nogil:
                run_layers(KERNELS, self._pool, self._descs, self._L, 1, T, self._N,
                           &x[0, 0, 0], NULL, h, self._c, &y[0, 0, 0], inter, layer_out,
                           &work[0])
                self._steps += T
        finally:
            rnn_flag_release(&self._busy)


# -- test and bench hooks --------------------------------------------------------------------

def activate(int code, float alpha, float beta, float[::1] x):
    """Apply activation `code` (layers.py ACTIVATIONS) in place with the active variant."""
    cdef rnn_activation_t a
    a.code = code
    a.alpha = alpha
    a.beta = beta
    if x.shape[0]:
        KERNELS.activate(a, &x[0], x.shape[0])


def read_sum(const float[::1] buf, int reps=1):
    """Sum buf (its length a multiple of 64) reps times, alternating direction, with the
    active variant's vector loads; returns the last sum. bench/ times it for the memory
    bandwidth of a buffer that size."""
    cdef float s = 0
    cdef int r
    with nogil:
        for r in range(reps):
            s = KERNELS.read_sum(&buf[0], buf.shape[0], r & 1)
    return s


def fma_loop(long iters):
    """iters rounds of 12 independent vector FMAs; returns (checksum, flops)."""
    cdef float s
    with nogil:
        s = KERNELS.fma_loop(iters)
    return s, float(iters) * 12 * KERNELS.vector_width * 2

# The compute drivers' Python face: packed cell descriptors, the whole-sequence entry point,
# the preallocated per-stream step, the choice of ISA variant, and the C constants the packing
# in layers.py must agree with (exported from the headers, never copied by hand).
#
# Python (model.py, stream.py, pool.py) validates shapes and dtypes; the functions here check
# the buffers against the cells once more, take the pointers, release the GIL once and run
# every layer, direction and timestep in C (include/rnnengine/driver.h). Weights arrive
# already packed (layers.py: pack_layer).
import os
import threading

import numpy as np

from .checks import as_float32, out_error, step_input_error
from ..errors import ConcurrentStep

cimport numpy as cnp
from cpython.pythread cimport PyThread_get_thread_ident
from libc.stdlib cimport malloc, free
from libc.string cimport memset
from posix.time cimport clock_gettime, timespec, CLOCK_MONOTONIC

from .cells cimport *

cnp.import_array()

# -- ISA variant: chosen once at import, from CPUID or RNNENGINE_ISA -------------------------

cdef const rnn_kernels_t *KERNELS = NULL
cdef int ACTIVE_ISA = RNN_ISA_SERIAL
ISA_NAMES = tuple(rnn_isa_names[i].decode() for i in range(RNN_ISA_COUNT))


def supported_isas():
    """Names of the variants this build and CPU can run, narrowest first."""
    return [ISA_NAMES[i] for i in range(RNN_ISA_COUNT) if rnn_cpu_supports(i)]


def isa():
    """Name of the active variant: 'serial', 'avx2', 'avx512', 'amx' or 'neon'."""
    return ISA_NAMES[ACTIVE_ISA]


cdef const rnn_kernels_t *active_kernels() noexcept nogil:
    return KERNELS


cdef int active_isa() noexcept nogil:
    return ACTIVE_ISA


# CPU features whose products set_isa can leave out (cpu.h: enum rnn_cpu_feature)
CPU_FEATURES = {"avx512bf16": RNN_CPU_AVX512BF16, "avx512vnni": RNN_CPU_AVX512VNNI}


def set_isa(name, without=()):
    """Switch the variant for every later call in this process (tests and bench use it; the
    packed weights are the same for all variants). name=None picks the best one. without:
    CPU_FEATURES names whose products the variant leaves out, as on a CPU that lacks them
    (e.g. ("avx512vnni",): int8 as on an AVX-512 CPU without VNNI); for tests and bench."""
    global KERNELS, ACTIVE_ISA
    cdef unsigned hide = 0
    for feature in without:
        if feature not in CPU_FEATURES:
            raise ValueError(f"unknown CPU feature {feature!r}; expected one of "
                             f"{', '.join(CPU_FEATURES)}")
        hide |= 1u << CPU_FEATURES[feature]
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
    KERNELS = rnn_kernels_hiding(index, hide)
    ACTIVE_ISA = index


set_isa(os.environ.get("RNNENGINE_ISA") or None)


# -- the headers' constants ----------------------------------------------------------------

BLOCK = RNN_BW   # hidden units per packed block (cells.h)
I8_FINE = RNN_I8_FINE   # int8 residual weights: second part's step = first's / I8_FINE
KIND_CODES = {"lstm": RNN_KIND_LSTM, "gru": RNN_KIND_GRU, "rnn": RNN_KIND_RNN}
ACTIVATION_CODES = {
    "relu": RNN_ACT_RELU, "tanh": RNN_ACT_TANH, "sigmoid": RNN_ACT_SIGMOID,
    "affine": RNN_ACT_AFFINE, "leakyrelu": RNN_ACT_LEAKYRELU,
    "thresholdedrelu": RNN_ACT_THRESHOLDEDRELU, "scaledtanh": RNN_ACT_SCALEDTANH,
    "hardsigmoid": RNN_ACT_HARDSIGMOID, "elu": RNN_ACT_ELU, "softsign": RNN_ACT_SOFTSIGN,
    "softplus": RNN_ACT_SOFTPLUS}


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


# cells.h's registry (RNN_WTYPES), in enum order; "int8r" is int8 with a residual weight
# part, which layers.py packs for precision="int8" where the rule there asks for it
WEIGHT_TYPES = tuple(rnn_wtype_names[i].decode() for i in range(RNN_W_COUNT))


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


cdef list checked_cells(cells, int num_directions):
    """cells as a list of CellKernel forming a stack the drivers can run: L*D of them,
    layer-major, every layer reading the previous one's D*Hout outputs, and one state width
    (Hout and H) for all: the state buffers are [L*D, N, Hout] and [L*D, N, H]. The C side
    asserts the same in debug builds; this raises before any pointer reaches it."""
    cdef CellKernel first, kernel
    cdef int D = num_directions
    cells = list(cells)
    if D not in (1, 2):
        raise ValueError(f"num_directions must be 1 or 2; got {D}")
    if not cells or len(cells) % D:
        raise ValueError(f"a stack needs a positive multiple of {D} cells; got {len(cells)}")
    for i, cell in enumerate(cells):
        if not isinstance(cell, CellKernel):
            raise TypeError(f"cells[{i}] must be a CellKernel; got {type(cell).__name__}")
    first = cells[0]
    for i in range(len(cells)):
        kernel = cells[i]
        if (kernel.cell.kind != first.cell.kind
                or kernel.cell.hidden_size != first.cell.hidden_size
                or kernel.cell.output_size != first.cell.output_size):
            raise ValueError(
                f"cells[{i}] has kind {kernel.cell.kind}, H={kernel.cell.hidden_size}, "
                f"Hout={kernel.cell.output_size} but cells[0] has kind {first.cell.kind}, "
                f"H={first.cell.hidden_size}, Hout={first.cell.output_size}: one state "
                f"buffer holds every layer, so they must agree")
        if i >= D and kernel.cell.input_size != D * first.cell.output_size:
            raise ValueError(f"cells[{i}] takes {kernel.cell.input_size} inputs but the layer "
                             f"below gives {D}*{first.cell.output_size}")
    return cells


cdef const rnn_cell_t **descriptors(list cells) except NULL:
    """malloc'd array of the cells' descriptors (the caller frees it); cells from
    checked_cells."""
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


# -- Ctrl-C during a long sequence: check_signals, watch_signals, raise_pending -------------
include "_signals.pxi"


# Each thread keeps its largest workspace up to this many floats (64 MB): a fresh multi-MB
# buffer costs a page fault per 4 KB on first touch, measured 6% of a T=100, H=256 sequence.
DEF CACHED_WORKSPACE_FLOATS = 16 * 1024 * 1024
_workspace = threading.local()


cdef object sequence_buffers(size_t size):
    """Scratch of `size` floats for rnn_run_stack (rnn_stack_workspace). A view of this
    thread's cached buffer when it fits (a thread runs one sequence at a time, so the cache
    is never shared)."""
    size = max(size, <size_t>1)
    if size > CACHED_WORKSPACE_FLOATS:
        return np.empty(size, np.float32)
    buf = getattr(_workspace, "buf", None)
    if buf is None or buf.shape[0] < size:
        buf = _workspace.buf = np.empty(size, np.float32)
    return buf[:size]


cdef int run_checked(list cells, int D, const float[:, :, ::1] x, const int *lens,
                     float[:, :, ::1] h, float[:, :, ::1] c, float[:, :, ::1] y,
                     rnn_pool_t *pool) except -1:
    """rnn_run_stack on checked buffers: raises ValueError unless x [T, N, I],
    h [L*D, N, Hout], c [L*D, N, H] (LSTM) or None and y [T, N, D*Hout] fit the cells (from
    checked_cells), so the drivers' asserts never fire; KeyboardInterrupt when Ctrl-C stopped
    it (h and c then hold a mix of old and new states: the callers restore or discard them)."""
    cdef CellKernel first = cells[0]
    cdef int T = x.shape[0], N = x.shape[1], L = len(cells) // D
    cdef rnn_stack_run_t run
    cdef rnn_cancel_t cancel
    cdef signal_watch_t watch
    cdef const rnn_cancel_t *can
    cdef size_t seq, layer_out
    cdef int stopped
    cdef int Hout = first.cell.output_size, H = first.cell.hidden_size
    cdef bint lstm = first.cell.kind == RNN_KIND_LSTM
    if not (x.shape[2] == first.cell.input_size
            and h.shape[0] == L * D and h.shape[1] == N and h.shape[2] == Hout
            and y.shape[0] == T and y.shape[1] == N and y.shape[2] == D * Hout
            and (c is not None) == lstm
            and (c is None or (c.shape[0] == L * D and c.shape[1] == N and c.shape[2] == H))):
        raise_shape_error(first, L, D, x, h, c, y)
    if T == 0 or N == 0:
        return 0
    cdef const rnn_cell_t **descs = descriptors(cells)
    try:
        work_len = rnn_stack_workspace(descs, L, D, T, N, &seq, &layer_out)
        work = sequence_buffers(work_len)
        run.cells = descs
        run.L, run.D, run.T, run.N = L, D, T, N
        run.x, run.x_len = &x[0, 0, 0], <size_t>T * N * first.cell.input_size
        run.lengths = lens
        run.h, run.h_len = &h[0, 0, 0], <size_t>h.shape[0] * N * Hout
        run.c, run.c_len = NULL, 0
        if c is not None:
            run.c, run.c_len = &c[0, 0, 0], <size_t>c.shape[0] * N * H
        run.y, run.y_len = &y[0, 0, 0], <size_t>T * N * D * Hout
        run.work, run.work_len = float_ptr(work), work_len
        can = watch_signals(&cancel, &watch)
        with nogil:
            stopped = rnn_run_stack(KERNELS, pool, &run, can)
    finally:
        free(descs)
    if stopped:
        raise_pending()
    return 0


cdef int raise_shape_error(CellKernel first, int L, int D, const float[:, :, ::1] x,
                           float[:, :, ::1] h, float[:, :, ::1] c, float[:, :, ::1] y) except -1:
    """The ValueError of run_checked, naming the first buffer that does not fit."""
    T, N, Hout, H = x.shape[0], x.shape[1], first.cell.output_size, first.cell.hidden_size
    lstm = first.cell.kind == RNN_KIND_LSTM
    for name, a, expected in (("x", x, (T, N, first.cell.input_size)), ("h", h, (L * D, N, Hout)),
                              ("c", c, (L * D, N, H) if lstm else None), ("y", y, (T, N, D * Hout))):
        given = None if a is None else tuple(a.shape[:3])
        if given != expected:
            raise ValueError(f"{name} has shape {given}; this stack needs {expected}")
    raise AssertionError("raise_shape_error called on buffers that fit")


cdef float *float_ptr(float[::1] a) except NULL:
    return &a[0]


def run_stack(cells, int num_directions, const float[:, :, ::1] x, lengths,
              float[:, :, ::1] h, c, float[:, :, ::1] y, int threads=1):
    """Run a stack of layers over a whole sequence.

    cells: L*D CellKernel, layer-major; x [T, N, I]; lengths int32 [N] or None;
    h [L*D, N, Hout] and c [L*D, N, H] (LSTM, else None) hold the initial state and receive
    the final one; y [T, N, D*Hout] receives the last layer's output; threads: intra-op
    threads (hidden units split between them). ValueError when the shapes do not fit the
    cells; KeyboardInterrupt on Ctrl-C (h, c then partly updated: pass copies)."""
    cdef list checked = checked_cells(cells, num_directions)
    cdef const int[::1] lens_view
    cdef const int *lens = NULL
    if lengths is not None:
        lens_view = lengths
        if lens_view.shape[0] != x.shape[1]:
            raise ValueError(f"lengths has {lens_view.shape[0]} entries; x has a batch of "
                             f"{x.shape[1]}")
        if lens_view.shape[0]:
            lens = &lens_view[0]
    cdef rnn_pool_t *pool = make_pool(threads)
    try:
        run_checked(checked, num_directions, x, lens, h, c, y, pool)
    finally:
        rnn_pool_destroy(pool)


cdef class SequenceCore:
    """One whole-sequence run of a stack (``run_stack``) with its shapes fixed (T, N) and its
    workspace allocated once: the executor runs a node's sequence through ``_go`` with the
    GIL released, the state in and out of buffers it owns. Attributes: _kernels.pxd."""

    def __cinit__(self, *args, **kwargs):
        self._descs = NULL
        self._pool = NULL

    def __dealloc__(self):
        free(self._descs)
        rnn_pool_destroy(self._pool)

    def __init__(self, cells, int num_directions, int T, int N):
        cdef list checked = checked_cells(cells, num_directions)
        cdef CellKernel first = checked[0]
        cdef size_t seq, layer_out, work_len
        if T < 1 or N < 1:
            raise ValueError(f"T and N must be positive; got {T}, {N}")
        self._cells = checked
        self.steps, self.batch, self.dirs = T, N, num_directions
        self.layers = len(checked) // num_directions
        self.inputs, self.hout, self.hidden = (first.cell.input_size, first.cell.output_size,
                                               first.cell.hidden_size)
        self.lstm = first.cell.kind == RNN_KIND_LSTM
        self._descs = descriptors(checked)
        work_len = rnn_stack_workspace(self._descs, self.layers, self.dirs, T, N, &seq,
                                       &layer_out)
        self._work = np.zeros(max(work_len, <size_t>1), np.float32)
        self._pool = make_pool(1)
        self._run.cells = self._descs
        self._run.L, self._run.D, self._run.T, self._run.N = self.layers, self.dirs, T, N
        self._run.lengths = NULL
        self._run.x_len = <size_t>T * N * self.inputs
        self._run.h_len = <size_t>self.layers * self.dirs * N * self.hout
        self._run.c_len = <size_t>self.layers * self.dirs * N * self.hidden if self.lstm else 0
        self._run.y_len = <size_t>T * N * self.dirs * self.hout
        self._run.work, self._run.work_len = float_ptr(self._work), work_len

    cdef int _go(self, const float *x, float *h, float *c, float *y) except -1:
        """x [T, N, I]; h [L*D, N, Hout] and c [L*D, N, H] (LSTM, else NULL): the initial
        state in, the final out; y [T, N, D*Hout]. The caller's buffers have those sizes.
        Called with the GIL, released for the run; Ctrl-C stops it between timesteps
        (KeyboardInterrupt; h and c then hold a mix: the caller's scratch)."""
        cdef rnn_cancel_t cancel
        cdef signal_watch_t watch
        cdef const rnn_cancel_t *can = watch_signals(&cancel, &watch)
        cdef int stopped
        self._run.x, self._run.h, self._run.y = x, h, y
        self._run.c = c if self.lstm else NULL
        with nogil:
            stopped = rnn_run_stack(KERNELS, self._pool, &self._run, can)
        if stopped:
            raise_pending()
        return 0


# -- streaming: preallocated buffers, one nogil call per step --------------------------------

# A step releases the GIL only when it has enough work to pay for the release (about 0.1 us).
DEF NOGIL_MIN_MACS = 16384


cdef class StreamCore:
    """The state and buffers of a stream, allocated once; ``step`` is one argument check and
    one call into C. rnnengine.runtime.stream.Stream holds one and adds the Python-level API.

    h lives in two buffers [2, L, N, Hout] that swap roles every step (a step reads all of the
    previous h while it writes the new one); c [L, N, H] is updated in place."""

    # attributes: _kernels.pxd (the compiled session-stream runner, _plan.pyx, steps cores)

    def __cinit__(self, *args, **kwargs):
        self._descs = NULL
        self._pool = NULL
        self._L = 0

    def __dealloc__(self):
        free(self._descs)
        rnn_pool_destroy(self._pool)

    def __init__(self, cells, int batch, int threads):
        """cells: one CellKernel per layer (one direction) of one width; batch N >= 1;
        threads >= 1."""
        cdef CellKernel kernel
        cdef size_t macs = 0
        cdef float[:, :, :, ::1] hv
        cdef float[:, :, ::1] cv
        if self._descs != NULL:
            raise RuntimeError("stream already initialised")
        if batch < 1 or threads < 1:
            raise ValueError(f"batch and threads must be positive; got {batch}, {threads}")
        cells = checked_cells(cells, 1)
        kernel = cells[0]
        self._L = len(cells)
        self._N = batch
        self._I = kernel.cell.input_size
        self._Hout = kernel.cell.output_size
        for kernel in cells:
            macs += <size_t>kernel.cell.gates * kernel.cell.hidden_size * (
                kernel.cell.input_size + kernel.cell.output_size)
        self._nogil = macs * batch >= NOGIL_MIN_MACS or threads > 1
        self._hbuf = np.zeros((2, self._L, batch, self._Hout), np.float32)
        hv = self._hbuf
        self._h[0] = &hv[0, 0, 0, 0]
        self._h[1] = &hv[1, 0, 0, 0]
        self._h_len = <size_t>self._L * batch * self._Hout
        self._c = NULL
        self._c_len = 0
        if kernel.cell.kind == RNN_KIND_LSTM:
            self._cbuf = np.zeros((self._L, batch, kernel.cell.hidden_size), np.float32)
            cv = self._cbuf
            self._c = &cv[0, 0, 0]
            self._c_len = <size_t>self._cbuf.size
        self._parity = 0
        self._steps = 0
        self._threads = threads
        descs = descriptors(cells)
        self._scr_len = rnn_stack_step_scratch(descs, self._L, batch)
        try:
            self._scratch = np.zeros(self._scr_len + 16, np.float32)
            self._scr = float_ptr(self._scratch)
            self._pool = make_pool(threads)
        except BaseException:
            free(descs)
            raise
        self._cells = cells
        self._descs = descs

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
            raise ConcurrentStep("this Stream is already in use by another thread; a Stream is "
                               "not thread-safe: create one stream per thread")
        return 0

    def _lock(self):
        self._acquire()

    def _unlock(self):
        rnn_flag_release(&self._busy)

    cdef void _step_all(self, const float *x, float *y) noexcept nogil:
        """Every layer for one timestep; x [N, I] (checked by step); y [N, Hout] gets the
        last layer's h."""
        cdef int p = self._parity
        rnn_stack_step(KERNELS, self._pool, self._descs, self._L, self._N, self._steps,
                       x, <size_t>self._N * self._I, self._h[p], self._h[1 - p], self._h_len,
                       self._c, self._c_len, y, <size_t>self._N * self._Hout, self._scr,
                       self._scr_len)
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
            xa = as_float32("x_t", x_t, f"({self._N}, {self._I})")   # the slow path
        nd = cnp.PyArray_NDIM(xa)
        if not ((nd == 2 and cnp.PyArray_DIM(xa, 0) == self._N
                 and cnp.PyArray_DIM(xa, 1) == self._I)
                or (nd == 1 and self._N == 1 and cnp.PyArray_DIM(xa, 0) == self._I)):
            raise step_input_error((<object>xa).shape, self._N, self._I)
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

    cdef cnp.ndarray _check_out(self, out, int nd, cnp.npy_intp *dims):
        if not (cnp.PyArray_Check(out) and cnp.PyArray_TYPE(<cnp.ndarray>out) == cnp.NPY_FLOAT32
                and cnp.PyArray_ISCARRAY(<cnp.ndarray>out)
                and cnp.PyArray_ISNOTSWAPPED(<cnp.ndarray>out)
                and cnp.PyArray_NDIM(<cnp.ndarray>out) == nd
                and all(cnp.PyArray_DIM(<cnp.ndarray>out, i) == dims[i] for i in range(nd))):
            raise out_error(out, tuple(dims[i] for i in range(nd)))
        return <cnp.ndarray>out

    def _run(self, const float[:, :, ::1] x, float[:, :, ::1] y):
        """Several timesteps from the current state (the sequence path: one input GEMM per
        layer, then the fused recurrent loop); x [T, N, I] -> y [T, N, Hout]. On Ctrl-C
        (KeyboardInterrupt) the state is left as it was before the call."""
        cdef float[:, :, ::1] h
        cdef float[:, :, ::1] c = None
        if x.shape[0] == 0:
            return
        self._acquire()
        try:
            h = self._hbuf[self._parity]
            if self._cbuf is not None:
                c = self._cbuf
            # The state before the call: run_checked updates layer by layer, so a run
            # stopped part-way restores this rather than leave layers at different times.
            saved = (self._hbuf[self._parity].copy(),
                     None if self._cbuf is None else self._cbuf.copy())
            try:
                run_checked(self._cells, 1, x, NULL, h, c, y, self._pool)
            except KeyboardInterrupt:
                self._hbuf[self._parity][...] = saved[0]
                if saved[1] is not None:
                    self._cbuf[...] = saved[1]
                raise
            self._steps += x.shape[0]
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

"""A session stream's step compiled: the elided plan's operators (recurrent nodes on their
``StreamCore``, dense heads, embedding lookups; view glue is already resolved to shared
buffers) run from one C loop over preallocated buffers. ``stream_runner.compile_runner``
builds a ``StepRunner`` from a traced step and says why the design is what it is.

Measured before this existed (bench/session_bounds.py, RESULTS.md "What bounds the missed
targets"): on model (a) H=16 the native calls were 1.3 of 5.2 us per step, on DTLN 15 of 21
us; the rest was Python: a closure per step, the plan's loop, the lock wrapper, the feed
table and the output list. Here a step is one Python-visible call: a shape/dtype match of
each feed, one array allocated per output (the caller owns what it is given, as with ORT),
and the operators called from C. Anything the runner was not built for (a feed of another
shape or dtype, a non-contiguous feed, an index out of range, a missing or extra feed)
goes to ``fallback`` (the stream's general step, which checks it in full and reports the
error), with nothing computed here."""
import numpy as np

from ..core.dense import PANEL_ROWS, pack_panels, padded_columns
from ..errors import ConcurrentStep
cimport numpy as cnp
from cpython.dict cimport PyDict_GetItem
from cpython.ref cimport PyObject
from libc.stdint cimport int32_t, int64_t
from libc.stdlib cimport calloc, free
from libc.string cimport memcpy

from ..core.cells cimport rnn_flag_release
from ..core.kernels cimport StreamCore, active_isa

cnp.import_array()

cdef extern from "rnnengine/dense.h" nogil:
    void rnn_dense(const float *x, size_t M, size_t K, const float *w, size_t ldw, size_t N,
                   const float *b, float *y, int act, int isa)
    void rnn_dense_panels(const float *x, size_t M, size_t K, const float *wp, size_t N,
                          const float *b, float *y, int act, int isa)

# below this many multiply-adds the GIL release costs more than it frees (as core/dense.pyx)
DEF DENSE_NOGIL_MIN_MACS = 65536
DEF MAX_DIMS = 32

cdef enum:
    OP_RECURRENT = 0
    OP_DENSE = 1
    OP_GATHER = 2

ctypedef struct op_t:
    int kind
    int src           # buffer read (recurrent: x [N, I]; dense: x [M, K]; gather: indices)
    int dst           # buffer written
    int core          # recurrent: index in StepRunner._cores
    bint nogil
    const float *w    # dense: w [K, ldw] (columns past N zero), or in panels when ldw is 0
                      # (_dense.pack_panels: fewer rows than PANEL_ROWS); b [N] or NULL
    const float *b
    size_t M, K, N, ldw
    int act
    const char *table  # gather: rows of row_bytes
    size_t rows, row_bytes, count
    int idx_bytes      # gather: 4 or 8 (int32 or int64 indices)
    int64_t *idx       # gather: the indices as checked, from 0 (what the copy reads)

ctypedef struct spec_t:   # an array a step takes (feed) or gives (output)
    int buf
    int typenum
    int nd
    cnp.npy_intp dims[MAX_DIMS]


cdef int fill_spec(spec_t *s, int buf, shape, dtype) except -1:
    if len(shape) > MAX_DIMS:
        raise ValueError(f"rank {len(shape)} is above {MAX_DIMS}")
    s.buf = buf
    s.typenum = np.dtype(dtype).num
    s.nd = len(shape)
    for i, d in enumerate(shape):
        s.dims[i] = d
    return 0


cdef class StepRunner:
    """``StepRunner(feeds, outputs, ops, n_buffers, fixed, lock, fallback)``:

    * feeds: [(name, buffer, shape, dtype)]: the step's feeds, matched exactly;
    * outputs: [(buffer, shape, dtype)]: a new array per step each, in return order;
    * ops: tuples in run order: ("recurrent", StreamCore, src, dst), ("dense", w, b or
      None, act code, M, src, dst), ("gather", table, index count, index dtype, src, dst);
    * fixed: {buffer: C-contiguous array}: constants and scratch, allocated once;
    * lock: the stream's lock (acquired without waiting, as ``_exclusive`` does);
    * fallback: the stream's general step, for feeds the runner was not built for.

    ``step(feeds)`` -> list of outputs."""
    cdef op_t *_ops
    cdef spec_t *_feeds
    cdef spec_t *_outs
    cdef void **_ptr
    cdef int _n_ops, _n_feeds, _n_outs, _n_buf
    cdef tuple _names
    cdef list _cores
    cdef list _hold           # every array a pointer above points into
    cdef object _acquire_lock, _release_lock, _fallback, _label

    def __cinit__(self, *args, **kwargs):
        self._ops = NULL
        self._feeds = self._outs = NULL
        self._ptr = NULL

    def __dealloc__(self):
        free(self._ops)
        free(self._feeds)
        free(self._outs)
        free(self._ptr)

    def __init__(self, feeds, outputs, ops, int n_buffers, fixed, lock, fallback, label):
        cdef op_t *op
        cdef cnp.ndarray a
        self._n_feeds, self._n_outs, self._n_ops = len(feeds), len(outputs), len(ops)
        self._n_buf = n_buffers
        self._ops = <op_t *>calloc(max(self._n_ops, 1), sizeof(op_t))
        self._feeds = <spec_t *>calloc(max(self._n_feeds, 1), sizeof(spec_t))
        self._outs = <spec_t *>calloc(max(self._n_outs, 1), sizeof(spec_t))
        self._ptr = <void **>calloc(max(n_buffers, 1), sizeof(void *))
        if not (self._ops and self._feeds and self._outs and self._ptr):
            raise MemoryError()
        self._hold, self._cores = [], []
        self._names = tuple(name for name, _, _, _ in feeds)
        for i, (_, buf, shape, dtype) in enumerate(feeds):
            fill_spec(&self._feeds[i], self._check_buf(buf), shape, dtype)
        for i, (buf, shape, dtype) in enumerate(outputs):
            fill_spec(&self._outs[i], self._check_buf(buf), shape, dtype)
        for buf, array in fixed.items():
            a = np.ascontiguousarray(array)
            self._hold.append(a)
            self._ptr[self._check_buf(buf)] = cnp.PyArray_DATA(a)
        for i, spec in enumerate(ops):
            op = &self._ops[i]
            n = len(spec)
            op.src, op.dst = self._check_buf(spec[n - 2]), self._check_buf(spec[n - 1])
            if spec[0] == "recurrent":
                core = <StreamCore?>spec[1]
                op.kind, op.core, op.nogil = OP_RECURRENT, len(self._cores), core._nogil
                self._cores.append(core)
            elif spec[0] == "dense":
                _, w, b, act, M, _, _ = spec
                op.kind, op.K, op.N, op.M, op.act = OP_DENSE, w.shape[0], w.shape[1], M, act
                if M < PANEL_ROWS:
                    w, op.ldw = pack_panels(w), 0
                else:
                    w = padded_columns(w)
                    op.ldw = w.shape[1]
                op.w = <const float *>cnp.PyArray_DATA(w)
                self._hold.append(w)
                if b is not None:
                    b = np.ascontiguousarray(b, np.float32).reshape(-1)
                    if b.shape[0] != op.N:
                        raise ValueError(f"dense bias has {b.shape[0]} values for {op.N} outputs")
                    op.b = <const float *>cnp.PyArray_DATA(b)
                    self._hold.append(b)
                op.nogil = M * op.K * op.N >= DENSE_NOGIL_MIN_MACS
            elif spec[0] == "gather":
                _, table, count, idx_dtype, _, _ = spec
                table = np.ascontiguousarray(table)
                idx_dtype = np.dtype(idx_dtype)
                if idx_dtype not in (np.dtype(np.int64), np.dtype(np.int32)) or not table.ndim:
                    raise ValueError(f"gather takes int32/int64 indices into a table of rank "
                                     f">= 1; got {idx_dtype} into rank {table.ndim}")
                op.kind, op.count, op.idx_bytes = OP_GATHER, count, idx_dtype.itemsize
                op.rows = table.shape[0]
                op.row_bytes = table.nbytes // max(table.shape[0], 1)
                op.table = <const char *>cnp.PyArray_DATA(table)
                self._hold.append(table)
                a = np.empty(max(count, 1), np.int64)
                op.idx = <int64_t *>cnp.PyArray_DATA(a)
                self._hold.append(a)
            else:
                raise ValueError(f"unknown op {spec[0]!r}")
        self._acquire_lock, self._release_lock = lock.acquire, lock.release
        self._fallback = fallback
        self._label = label

    cdef int _check_buf(self, buf) except -1:
        if not 0 <= buf < self._n_buf:
            raise ValueError(f"buffer {buf} is not one of the {self._n_buf} buffers")
        return buf

    def __repr__(self):
        return f"rnnengine.runtime._plan.StepRunner({self._label})"

    @property
    def ops(self):
        """Kinds of the compiled operators, in run order."""
        kinds = ("recurrent", "dense", "gather")
        return [kinds[self._ops[i].kind] for i in range(self._n_ops)]

    cdef bint _bind_feeds(self, feeds, list held):
        """Point the feed buffers at ``feeds``' data when they match exactly. Each array
        bound is appended to ``held``: the operators read it without the GIL, when another
        thread may drop the caller's reference (replace ``feeds["x"]``), so the step keeps
        its own until it returns."""
        cdef PyObject *item
        cdef cnp.ndarray a
        cdef spec_t *s
        cdef int i, d
        if type(feeds) is not dict or len(<dict>feeds) != self._n_feeds:
            return False
        for i in range(self._n_feeds):
            item = PyDict_GetItem(feeds, self._names[i])
            if item == NULL or not cnp.PyArray_CheckExact(<object>item):
                return False
            a = <cnp.ndarray>item
            s = &self._feeds[i]
            if (cnp.PyArray_TYPE(a) != s.typenum or cnp.PyArray_NDIM(a) != s.nd
                    or not cnp.PyArray_ISCARRAY_RO(a) or not cnp.PyArray_ISNOTSWAPPED(a)):
                return False
            for d in range(s.nd):
                if cnp.PyArray_DIM(a, d) != s.dims[d]:
                    return False
            held.append(a)
            self._ptr[s.buf] = cnp.PyArray_DATA(a)
        return True

    cdef bint _indices_fit(self):
        """Every gather index within its table (negative ones count from the end); the
        checked ones are copied for the gather to read, so a caller writing into the index
        array while the step runs (another thread, with the GIL released by an earlier
        operator) cannot make it read outside the table."""
        cdef op_t *op
        cdef size_t j
        cdef int64_t i, n
        cdef int k
        for k in range(self._n_ops):
            op = &self._ops[k]
            if op.kind != OP_GATHER:
                continue
            n = <int64_t>op.rows
            for j in range(op.count):
                i = ((<int64_t *>self._ptr[op.src])[j] if op.idx_bytes == 8
                     else (<int32_t *>self._ptr[op.src])[j])
                if i < -n or i >= n:
                    return False
                op.idx[j] = i + n if i < 0 else i
        return True

    def step(self, feeds=None):
        """One step of the stream: ``feeds`` -> list of the non-state outputs."""
        cdef list held = []       # the feeds bound, alive until the operators are done
        if not self._acquire_lock(False):
            raise ConcurrentStep("SessionStream.step() called while another thread is using "
                               "it: give each thread its own stream/pool or serialize the "
                               "calls")
        try:
            if not (self._bind_feeds({} if feeds is None else feeds, held)
                    and self._indices_fit()):
                outs = None
            else:
                outs = self._outputs()
                self._run()
        finally:
            self._release_lock()
        return self._fallback(feeds) if outs is None else outs

    cdef list _outputs(self):
        cdef list outs = []
        cdef cnp.ndarray a
        cdef spec_t *s
        cdef int i
        for i in range(self._n_outs):
            s = &self._outs[i]
            a = cnp.PyArray_EMPTY(s.nd, s.dims, s.typenum, 0)
            self._ptr[s.buf] = cnp.PyArray_DATA(a)
            outs.append(a)
        return outs

    cdef int _run(self) except -1:
        cdef op_t *op
        cdef StreamCore core
        cdef const float *x
        cdef float *y
        cdef size_t j
        cdef int k
        cdef int isa = active_isa()
        for k in range(self._n_ops):
            op = &self._ops[k]
            x, y = <const float *>self._ptr[op.src], <float *>self._ptr[op.dst]
            if op.kind == OP_RECURRENT:
                core = <StreamCore>self._cores[op.core]
                core._acquire()      # the core's own guard, as StreamCore.step takes it
                if op.nogil:
                    with nogil:
                        core._step_all(x, y)
                else:
                    core._step_all(x, y)
                rnn_flag_release(&core._busy)
            elif op.kind == OP_DENSE:
                if op.nogil:
                    with nogil:
                        dense(op, x, y, isa)
                else:
                    dense(op, x, y, isa)
            else:
                for j in range(op.count):
                    memcpy(<char *>y + j * op.row_bytes, op.table + op.idx[j] * op.row_bytes,
                           op.row_bytes)
        return 0


cdef inline void dense(const op_t *op, const float *x, float *y, int isa) noexcept nogil:
    if op.ldw:
        rnn_dense(x, op.M, op.K, op.w, op.ldw, op.N, op.b, y, op.act, isa)
    else:
        rnn_dense_panels(x, op.M, op.K, op.w, op.N, op.b, y, op.act, isa)


cdef class ProgramStep:
    """``ProgramStep(program, stream, lock, fallback, state_out, keep)``: a session stream's
    step on the session's whole-graph program (``executor.Program``, the state fed in and
    out), for a stream whose step the ``StepRunner`` cannot take. ``step(feeds)`` does in one
    call what a Python path of five frames did (on DTLN model_2, 5 of 37 us a step): the
    stream's lock and the program's, the feeds and the stream's state (``stream._state``,
    read each call: reset and set_state replace it) in the program's order, copied in; the
    program run; the state outputs (``state_out``: (output index, state input)) kept as the
    stream's state, the outputs at ``keep`` returned (copies: nothing aliases the program's
    buffers). Feeds that are not exactly the step's (a name missing or extra, a state input
    given, another shape or dtype), a state not yet set, or the program in use by another
    stream go to ``fallback`` with nothing run or changed."""
    cdef object _run_fed, _stream, _acquire, _release, _fallback, _plock
    cdef tuple _names, _state_out, _keep
    cdef list _bufs, _outs

    def __init__(self, program, stream, lock, fallback, state_out, keep):
        self._run_fed = program.runner.run_fed
        self._plock = program.lock
        self._names = tuple(program._feeds)
        self._bufs = list(program._bufs)
        self._outs = list(program._outputs)
        self._stream = stream
        self._acquire, self._release = lock.acquire, lock.release
        self._fallback = fallback
        self._state_out = tuple((int(k), name) for k, name in state_out)
        self._keep = tuple(int(k) for k in keep)

    def step(self, feeds=None):
        """One step of the stream: ``feeds`` -> list of the non-state outputs."""
        if not self._acquire(False):
            raise ConcurrentStep("SessionStream.step() called while another thread is using "
                               "it: give each thread its own stream/pool or serialize the "
                               "calls")
        try:
            outs = self._run(feeds)
        finally:
            self._release()
        return self._fallback(feeds) if outs is None else outs

    cdef object _run(self, feeds):
        cdef dict state = self._stream._state
        cdef list values = []
        cdef PyObject *item
        if type(feeds) is not dict or len(<dict>feeds) + len(state) != len(self._names):
            return None
        # with the counts equal, every name found means the feeds are exactly the step's
        for name in self._names:
            item = PyDict_GetItem(feeds, name)
            if item == NULL:
                item = PyDict_GetItem(state, name)
                if item == NULL:
                    return None
            values.append(<object>item)      # a state not yet set (None) does not fit
        if not self._plock.acquire(False):
            return None
        try:
            outs = self._run_fed(values, self._bufs, self._outs, True)
        finally:
            self._plock.release()
        if outs is None:
            return None
        for k, name in self._state_out:
            state[name] = outs[k]
        return [outs[k] for k in self._keep]


def core_saved(StreamCore core):
    """A copy of ``core``'s state (which h buffer is current, the step count, h and c),
    for ``core_restore`` when the rest of a step fails after the core has stepped. Plain
    copies of the buffers: this runs before every step that could fail that way."""
    cdef cnp.npy_intp n = core._h_len + core._c_len
    cdef cnp.ndarray saved = cnp.PyArray_EMPTY(1, &n, cnp.NPY_FLOAT32, 0)
    cdef float *to = <float *>cnp.PyArray_DATA(saved)
    memcpy(to, core._h[core._parity], core._h_len * sizeof(float))
    if core._c_len:
        memcpy(to + core._h_len, core._c, core._c_len * sizeof(float))
    return (core._parity, core._steps, saved)


def core_restore(StreamCore core, saved):
    """Put back what ``core_saved`` took: the state exactly as it was before the step."""
    cdef cnp.ndarray buf = saved[2]
    cdef const float *src = <const float *>cnp.PyArray_DATA(buf)
    if buf.shape[0] != core._h_len + core._c_len:
        raise ValueError("saved state is not this core's")
    core._acquire()
    core._parity, core._steps = saved[0], saved[1]
    memcpy(core._h[core._parity], src, core._h_len * sizeof(float))
    if core._c_len:
        memcpy(core._c, src + core._h_len, core._c_len * sizeof(float))
    rnn_flag_release(&core._busy)

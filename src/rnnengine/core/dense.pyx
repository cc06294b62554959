"""A dense head (MatMul/Gemm + bias + activation, Softmax/LogSoftmax fused) as one C call:
include/rnnengine/dense.h. ``ops.fusion.c_head`` builds these for a graph's constant
weights; anything a head cannot take (another dtype, a shape that does not fit) makes
``__call__`` return None and the caller runs the NumPy chain, which reports the error."""
import numpy as np
cimport numpy as cnp

from .kernels cimport active_isa

cnp.import_array()

cdef extern from "rnnengine/dense.h" nogil:
    size_t rnn_dense_ldw(size_t N)
    size_t rnn_dense_panel_cols(size_t N)
    void rnn_dense_pack_panels(const float *w, size_t K, size_t N, float *wp)
    void rnn_dense_panels(const float *x, size_t M, size_t K, const float *wp, size_t N,
                          const float *b, float *y, int act, int isa)
    int RNN_DENSE_PANEL_ROWS
    void rnn_dense(const float *x, size_t M, size_t K, const float *w, size_t ldw, size_t N,
                   const float *b, float *y, int act, int isa)

# below this many multiply-adds the GIL release costs more than it frees
DEF NOGIL_MIN_MACS = 65536

ACTIVATIONS = {None: 0, "Relu": 1, "Sigmoid": 2, "Tanh": 3, "Softmax": 4, "LogSoftmax": 5}


def padded_columns(w):
    """A constant w [K, N] as dense.h reads it fastest: float32, C-contiguous [K, ldw] with
    ldw = ``rnn_dense_ldw(N)`` (whole 32-column tiles), the first N columns w's and the rest
    zeros; pass ``result.shape[1]`` as ldw. Done once where the weights are built, instead
    of a scalar tail or a padded copy in every call."""
    w = np.asarray(w, np.float32)
    if w.ndim != 2:
        raise ValueError(f"w must be 2-D; got shape {w.shape}")
    K, N = w.shape
    ldw = rnn_dense_ldw(N)
    if ldw == N:
        return np.ascontiguousarray(w)
    wp = np.zeros((K, ldw), np.float32)
    wp[:, :N] = w
    return wp


# products of fewer rows than this take their constant weights as panels (pack_panels)
PANEL_ROWS = RNN_DENSE_PANEL_ROWS


def pack_panels(w):
    """A constant w [K, N] packed in dense.h's column panels (``rnn_dense_panels``: a row's
    product reads each weight once, in the order stored), a new 1-D float32 array."""
    cdef cnp.ndarray src = np.ascontiguousarray(w, np.float32)
    cdef cnp.ndarray out
    shape = (<object>src).shape
    if len(shape) != 2 or not shape[0] or not shape[1]:
        raise ValueError(f"w must be a non-empty 2-D array; got shape {shape}")
    K, N = shape
    out = np.empty(K * rnn_dense_panel_cols(N), np.float32)
    rnn_dense_pack_panels(<const float *>cnp.PyArray_DATA(src), K, N,
                          <float *>cnp.PyArray_DATA(out))
    return out


cdef class DenseHead:
    """``DenseHead(w, b, act, panels=False)``: w (K, N) float32, b (N,) float32 or None, act
    a key of ACTIVATIONS; panels: keep w packed for rows taken one at a time
    (``pack_panels``), the layout the compiled step uses below PANEL_ROWS rows, which gives
    the same bits. ``head(x)``: x float32 (..., K) -> y (..., N) (a new array), or None when
    x is not float32 with K on its last axis."""
    cdef object _w, _b
    cdef const float *_wp
    cdef const float *_bp
    cdef size_t _ldw
    cdef readonly Py_ssize_t K, N
    cdef readonly int act
    cdef readonly bint panels

    def __init__(self, w, b, act, panels=False):
        if act not in ACTIVATIONS:
            raise ValueError(f"act must be one of {sorted(k for k in ACTIVATIONS if k)} "
                             f"or None; got {act!r}")
        w = np.ascontiguousarray(w, np.float32)
        if w.ndim != 2 or w.shape[0] < 1 or w.shape[1] < 1:
            raise ValueError(f"w must be a non-empty 2-D array; got shape {w.shape}")
        self.K, self.N = w.shape[0], w.shape[1]
        self.panels = bool(panels)
        self._w = w = pack_panels(w) if self.panels else padded_columns(w)
        self._ldw = 0 if self.panels else w.shape[1]
        self._wp = <const float *>cnp.PyArray_DATA(w)
        self._bp = NULL
        self._b = None
        if b is not None:
            b = np.ascontiguousarray(b, np.float32).reshape(-1)
            if b.shape[0] != self.N:
                raise ValueError(f"b must have {self.N} elements; got {b.shape[0]}")
            self._b = b
            self._bp = <const float *>cnp.PyArray_DATA(b)
        self.act = ACTIVATIONS[act]

    def __call__(self, x):
        cdef cnp.ndarray xa, y
        cdef size_t M
        cdef const float *xp
        cdef float *yp
        cdef int isa = active_isa()
        if (type(x) is not np.ndarray or cnp.PyArray_TYPE(x) != cnp.NPY_FLOAT32
                or cnp.PyArray_NDIM(x) < 1
                or cnp.PyArray_DIM(x, cnp.PyArray_NDIM(x) - 1) != self.K):
            return None
        xa = x if cnp.PyArray_IS_C_CONTIGUOUS(x) else np.ascontiguousarray(x)
        M = <size_t>(cnp.PyArray_SIZE(xa) // self.K)
        shape = (<object>xa).shape
        y = np.empty(shape[:len(shape) - 1] + (self.N,), np.float32)
        xp = <const float *>cnp.PyArray_DATA(xa)
        yp = <float *>cnp.PyArray_DATA(y)
        if M * <size_t>self.K * <size_t>self.N >= NOGIL_MIN_MACS:
            with nogil:
                self._run(xp, M, yp, isa)
        else:
            self._run(xp, M, yp, isa)
        return y

    cdef void _run(self, const float *xp, size_t M, float *yp, int isa) noexcept nogil:
        if self.panels:
            rnn_dense_panels(xp, M, self.K, self._wp, self.N, self._bp, yp, self.act, isa)
        else:
            rnn_dense(xp, M, self.K, self._wp, self._ldw, self.N, self._bp, yp, self.act, isa)

"""A dense head (MatMul/Gemm + bias + activation, Softmax/LogSoftmax fused) as one C call:
include/rnnengine/dense.h. ``ops.fusion.c_head`` builds these for a graph's constant
weights; anything a head cannot take (another dtype, a shape that does not fit) makes
``__call__`` return None and the caller runs the NumPy chain, which reports the error."""
import numpy as np
cimport numpy as cnp

from .kernels cimport active_isa

cnp.import_array()

cdef extern from "rnnengine/dense.h" nogil:
    void rnn_dense(const float *x, size_t M, size_t K, const float *w, size_t N,
                   const float *b, float *y, int act, int isa)

# below this many multiply-adds the GIL release costs more than it frees
DEF NOGIL_MIN_MACS = 65536

ACTIVATIONS = {None: 0, "Relu": 1, "Sigmoid": 2, "Tanh": 3, "Softmax": 4, "LogSoftmax": 5}


cdef class DenseHead:
    """``DenseHead(w, b, act)``: w (K, N) float32, b (N,) float32 or None, act a key of
    ACTIVATIONS. ``head(x)``: x float32 (..., K) -> y (..., N) (a new array), or None when
    x is not float32 with K on its last axis."""
    cdef object _w, _b
    cdef const float *_wp
    cdef const float *_bp
    cdef readonly Py_ssize_t K, N
    cdef readonly int act

    def __init__(self, w, b, act):
        if act not in ACTIVATIONS:
            raise ValueError(f"act must be one of {sorted(k for k in ACTIVATIONS if k)} "
                             f"or None; got {act!r}")
        w = np.ascontiguousarray(w, np.float32)
        if w.ndim != 2 or w.shape[0] < 1 or w.shape[1] < 1:
            raise ValueError(f"w must be a non-empty 2-D array; got shape {w.shape}")
        self.K, self.N = w.shape[0], w.shape[1]
        self._w = w
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
                rnn_dense(xp, M, self.K, self._wp, self.N, self._bp, yp, self.act, isa)
        else:
            rnn_dense(xp, M, self.K, self._wp, self.N, self._bp, yp, self.act, isa)
        return y

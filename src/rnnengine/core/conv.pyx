"""A 1-D convolution (groups 1) with its bias and an optional ReLU as one C call:
include/rnnengine/conv.h. ``ops.conv.compiled_conv`` builds these for a graph's constant
weights. ``Conv1d.__call__`` raises ValueError on an input the kernel cannot take (the caller
checks dtype and rank first and runs the general NumPy path for anything else). A long call
stops on Ctrl-C (KeyboardInterrupt), as the recurrent kernels do (_signals.pxi)."""
import threading

import numpy as np
cimport numpy as cnp

from .kernels cimport active_isa
from cpython.pythread cimport PyThread_get_thread_ident
from posix.time cimport clock_gettime, timespec, CLOCK_MONOTONIC

cnp.import_array()

cdef extern from "rnnengine/conv.h" nogil:
    enum: RNN_CONV_NR
    ctypedef struct rnn_cancel_t:
        int (*fn)(void *ctx) noexcept nogil
        void *ctx
    ctypedef struct rnn_conv1d_t:
        size_t N, C, L, M, KW, stride, dilation, pad, Lout
        int relu
        const rnn_cancel_t *cancel
    size_t rnn_conv_width_for(int isa)
    int rnn_conv_width_ok(size_t width)
    size_t rnn_conv_packed_size(size_t M, size_t CK, size_t width)
    size_t rnn_conv_panels(size_t M, size_t width)
    void rnn_conv_pack(const float *w, const float *b, size_t M, size_t CK, size_t width,
                       float *wp, size_t wp_len, float *bp, size_t bp_len)
    int rnn_conv1d(const rnn_conv1d_t *cv, const float *x, size_t x_len, const float *wp,
                   size_t wp_len, const float *bp, size_t bp_len, size_t width, float *y,
                   size_t y_len)

# below this many multiply-adds the GIL release costs more than it frees
DEF NOGIL_MIN_MACS = 65536
# Every index the kernel forms (o * stride + k * dilation - pad) stays below this, so that
# nothing wraps in its 64-bit arithmetic (a dilation of 2**62 times a kernel of 5 is 0 there).
DEF MAX_SPAN = 2 ** 62

# -- Ctrl-C during a long convolution: check_signals, watch_signals, raise_pending ---------
include "_signals.pxi"


def best_width():
    """The panel width (output channels per panel) of the active ISA variant (the one the
    recurrent kernels run: _kernels.isa())."""
    return rnn_conv_width_for(active_isa())


cdef class _Packed:
    """The weights and bias packed for one panel width (rnn_conv_pack)."""
    cdef object w, b
    cdef const float *wp
    cdef const float *bp
    cdef size_t wn, bn, width

    def __init__(self, cnp.ndarray w, object bias, size_t width):
        cdef size_t M = w.shape[0], CK = w.shape[1] * w.shape[2]
        cdef const float *bias_p = NULL
        cdef cnp.ndarray wp = np.empty(rnn_conv_packed_size(M, CK, width), np.float32)
        cdef cnp.ndarray bp = np.empty(rnn_conv_panels(M, width) * width, np.float32)
        if bias is not None:
            bias_p = <const float *>cnp.PyArray_DATA(bias)
        rnn_conv_pack(<const float *>cnp.PyArray_DATA(w), bias_p, M, CK, width,
                      <float *>cnp.PyArray_DATA(wp), wp.shape[0],
                      <float *>cnp.PyArray_DATA(bp), bp.shape[0])
        self.w, self.b, self.width = wp, bp, width
        self.wp, self.wn = <const float *>cnp.PyArray_DATA(wp), wp.shape[0]
        self.bp, self.bn = <const float *>cnp.PyArray_DATA(bp), bp.shape[0]


cdef class Conv1d:
    """``Conv1d(w, b, stride, dilation, pad_begin, pad_end, relu, width=None)``: w (M, C, KW)
    float32, b (M,) float32 or None; ``width`` forces a variant (8 portable, 16 AVX2, 32
    AVX-512; tests use it). ``conv(x)``: x float32 (N, C, L) -> y (N, M, Lout), a new array.

    With AVX-512 and no forced width, calls with fewer output positions than one column
    group (N * Lout < RNN_CONV_NR: a streaming step) run the AVX2 variant, measured faster
    there (the product is bound by streaming the weights, not by the FMAs); the weights are
    then packed for both widths."""
    cdef _Packed _wide, _narrow
    cdef rnn_conv1d_t cv
    cdef readonly size_t width
    cdef readonly Py_ssize_t M, C, KW, stride, dilation, pad_begin, pad_end
    cdef readonly bint relu

    def __init__(self, w, b, Py_ssize_t stride, Py_ssize_t dilation, Py_ssize_t pad_begin,
                 Py_ssize_t pad_end, bint relu, width=None):
        w = np.ascontiguousarray(w, np.float32)
        if w.ndim != 3 or min(w.shape) < 1:
            raise ValueError(f"w must be a non-empty (M, C, KW) array; got shape {w.shape}")
        if stride < 1 or dilation < 1 or pad_begin < 0 or pad_end < 0:
            raise ValueError(f"stride and dilation must be >= 1 and pads >= 0; got stride "
                             f"{stride}, dilation {dilation}, pads ({pad_begin}, {pad_end})")
        self.M, self.C, self.KW = w.shape
        if ((<object>self.KW - 1) * dilation >= MAX_SPAN or <object>pad_begin + pad_end >= MAX_SPAN
                or stride >= MAX_SPAN):
            raise ValueError(f"kernel {self.KW} with dilation {dilation}, stride {stride} and "
                             f"pads ({pad_begin}, {pad_end}) reach past {MAX_SPAN} positions")
        self.stride, self.dilation = stride, dilation
        self.pad_begin, self.pad_end, self.relu = pad_begin, pad_end, relu
        self.width = rnn_conv_width_for(active_isa()) if width is None else width
        if not rnn_conv_width_ok(self.width):
            raise ValueError(f"width {width} is not a panel width this CPU runs (8, 16 with "
                             "AVX2, 32 with AVX-512)")
        if b is not None:
            b = np.ascontiguousarray(b, np.float32).reshape(-1)
            if b.shape[0] != self.M:
                raise ValueError(f"b must have {self.M} elements; got {b.shape[0]}")
        self._wide = _Packed(w, b, self.width)
        self._narrow = (_Packed(w, b, 16) if width is None and self.width == 32
                        else self._wide)
        self.cv.M, self.cv.C, self.cv.KW = self.M, self.C, self.KW
        self.cv.stride, self.cv.dilation, self.cv.pad = stride, dilation, pad_begin
        self.cv.relu = relu
        self.cv.cancel = NULL

    cdef Py_ssize_t _out_length(self, Py_ssize_t L):
        cdef Py_ssize_t span = (L + self.pad_begin + self.pad_end
                                - (self.KW - 1) * self.dilation - 1)
        return span // self.stride + 1 if span >= 0 else 0

    def out_length(self, Py_ssize_t L):
        """Output positions for an input of length L (< 1: the kernel does not fit)."""
        return self._out_length(L)

    def __call__(self, x):
        cdef cnp.ndarray xa, y
        cdef rnn_conv1d_t cv = self.cv
        cdef _Packed pk
        cdef int rc
        cdef Py_ssize_t lout
        cdef rnn_cancel_t cancel
        cdef signal_watch_t watch
        cdef const float *xp
        cdef float *yp
        cdef size_t xn, yn
        if (type(x) is not np.ndarray or cnp.PyArray_TYPE(x) != cnp.NPY_FLOAT32
                or cnp.PyArray_NDIM(x) != 3 or cnp.PyArray_DIM(x, 1) != self.C):
            raise ValueError(f"x must be a float32 (N, {self.C}, L) array; got "
                             f"{getattr(x, 'dtype', type(x).__name__)}"
                             f"{getattr(x, 'shape', '')}")
        xa = x if cnp.PyArray_IS_C_CONTIGUOUS(x) else np.ascontiguousarray(x)
        cv.N, cv.L = cnp.PyArray_DIM(xa, 0), cnp.PyArray_DIM(xa, 2)
        lout = self._out_length(cv.L)
        if lout < 1:
            raise ValueError(f"a kernel of {self.KW} (dilation {self.dilation}) does not fit "
                             f"an input of length {cv.L} padded by ({self.pad_begin}, "
                             f"{self.pad_end})")
        cv.Lout = lout
        y = np.empty((cv.N, self.M, cv.Lout), np.float32)
        if cv.N == 0:
            return y
        pk = self._narrow if cv.N * cv.Lout < RNN_CONV_NR else self._wide
        xp, yp = <const float *>cnp.PyArray_DATA(xa), <float *>cnp.PyArray_DATA(y)
        xn, yn = cnp.PyArray_SIZE(xa), cnp.PyArray_SIZE(y)
        if cv.N * cv.Lout * cv.M * cv.C * cv.KW >= NOGIL_MIN_MACS:
            cv.cancel = watch_signals(&cancel, &watch)
            with nogil:
                rc = rnn_conv1d(&cv, xp, xn, pk.wp, pk.wn, pk.bp, pk.bn, pk.width, yp, yn)
        else:
            rc = rnn_conv1d(&cv, xp, xn, pk.wp, pk.wn, pk.bp, pk.bn, pk.width, yp, yn)
        if rc == 1:
            raise_pending()
        if rc == -2:
            raise ValueError(f"Conv1d: sizes do not fit the kernel: x {x.shape}, weights "
                             f"({self.M}, {self.C}, {self.KW}), Lout {cv.Lout}")
        if rc != 0:
            raise MemoryError("Conv1d: cannot allocate the column buffer")
        return y

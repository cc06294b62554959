"""A 1-D convolution (groups 1) with its bias and an optional ReLU as one C call:
include/rnnengine/conv.h; and ``Conv2d``, any 2-D (or 1-D, as a height of one) convolution,
grouped, strided, dilated, padded, as one C call (include/rnnengine/conv2d.h), which the
executor's plans run too (``conv2d_kernel``). ``ops.conv.compiled_conv`` builds these for a
graph's constant weights. ``Conv1d.__call__`` raises ValueError on an input the kernel cannot take (the caller
checks dtype and rank first and runs the general NumPy path for anything else). A long call
stops on Ctrl-C (KeyboardInterrupt), as the recurrent kernels do (_signals.pxi)."""
import threading

import numpy as np
cimport numpy as cnp

from .kernels cimport active_isa
from cpython.pycapsule cimport PyCapsule_New
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

cdef extern from "rnnengine/conv2d.h" nogil:
    ctypedef struct rnn_conv2d_t:
        size_t N, C, H, W, M, G, KH, KW, sh, sw, dh, dw, pt, pl, Ho, Wo
        int relu
        const rnn_cancel_t *cancel
        size_t uh, uw
    size_t rnn_conv2d_packed_size(size_t G, size_t Cog, size_t CK)
    size_t rnn_conv2d_packed_bias(size_t G, size_t Cog)
    size_t rnn_conv2d_scratch_size(const rnn_conv2d_t *cv)
    void rnn_conv2d_pack(const float *w, const float *b, size_t G, size_t Cog, size_t CK,
                         float *wp, size_t wp_len, float *bp, size_t bp_len)
    int rnn_conv2d(const rnn_conv2d_t *cv, const float *x, size_t x_len, const float *wp,
                   size_t wp_len, const float *bp, size_t bp_len, float *scratch,
                   size_t scratch_len, float *y, size_t y_len, int isa)

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


CONV2D_CAPSULE = b"rnnengine.rnn_conv2d"


def conv2d_kernel():
    """rnn_conv2d (include/rnnengine/conv2d.h) in a capsule named ``CONV2D_CAPSULE``: the
    executor's runner calls it without the GIL, compiled here once with the FMA contraction
    its variants need."""
    return PyCapsule_New(<void *>rnn_conv2d, CONV2D_CAPSULE, NULL)


cdef class Conv2d:
    """``Conv2d(w, b, strides, dilations, pads, group, relu, upsample=(1, 1))``: w (M,
    C / group, KH, KW) float32, b (M,) float32 or None, strides and dilations (h, w), pads
    (top, left, bottom, right), upsample (h, w): the input spread out first, that many - 1
    zeros between two rows (columns), as a transposed convolution's strides spread it.
    ``conv(x)``: x float32 (N, C, H, W) -> y (N, M, Ho, Wo), a new array. The packed weights
    (``packed``, ``packed_bias``) are what the executor's runner hands the kernel."""
    cdef readonly object packed, packed_bias
    cdef readonly Py_ssize_t M, C, G, KH, KW, sh, sw, dh, dw, pt, pl, pb, pr, uh, uw
    cdef readonly bint relu

    def __init__(self, w, b, strides, dilations, pads, Py_ssize_t group, bint relu,
                 upsample=(1, 1)):
        cdef cnp.ndarray wa, wp, bp
        cdef const float *bias_p = NULL
        cdef size_t CK, Cog
        wa = np.ascontiguousarray(w, np.float32)
        if wa.ndim != 4 or min((<object>wa).shape) < 1:
            raise ValueError(f"w must be a non-empty (M, C/group, KH, KW) array; got shape "
                             f"{(<object>wa).shape}")
        self.sh, self.sw = (int(v) for v in strides)
        self.dh, self.dw = (int(v) for v in dilations)
        self.pt, self.pl, self.pb, self.pr = (int(v) for v in pads)
        self.uh, self.uw = (int(v) for v in upsample)
        if (min(self.sh, self.sw, self.dh, self.dw, self.uh, self.uw) < 1
                or min(self.pt, self.pl, self.pb, self.pr) < 0):
            raise ValueError(f"strides, dilations and upsampling must be >= 1 and pads >= 0; "
                             f"got strides {tuple(strides)}, dilations {tuple(dilations)}, "
                             f"upsampling {tuple(upsample)}, pads {tuple(pads)}")
        self.M, self.KH, self.KW = wa.shape[0], wa.shape[2], wa.shape[3]
        if group < 1 or self.M % group:
            raise ValueError(f"group must be >= 1 and divide the {self.M} output channels; "
                             f"got {group}")
        for span in ((<object>self.KH - 1) * self.dh, (<object>self.KW - 1) * self.dw,
                     <object>self.pt + self.pb, <object>self.pl + self.pr, self.sh, self.sw,
                     self.uh, self.uw):
            if span >= MAX_SPAN:
                raise ValueError(f"kernel ({self.KH}, {self.KW}) with dilations "
                                 f"{tuple(dilations)}, strides {tuple(strides)} and pads "
                                 f"{tuple(pads)} reach past {MAX_SPAN} positions")
        self.G, self.C, self.relu = group, group * wa.shape[1], relu
        Cog, CK = self.M // group, wa.shape[1] * self.KH * self.KW
        if b is not None:
            b = np.ascontiguousarray(b, np.float32).reshape(-1)
            if b.shape[0] != self.M:
                raise ValueError(f"b must have {self.M} elements; got {b.shape[0]}")
            bias_p = <const float *>cnp.PyArray_DATA(b)
        if rnn_conv2d_packed_size(group, Cog, CK) == 0:
            raise ValueError(f"weights {(<object>wa).shape} are too large to pack")
        wp = np.empty(rnn_conv2d_packed_size(group, Cog, CK), np.float32)
        bp = np.empty(rnn_conv2d_packed_bias(group, Cog), np.float32)
        rnn_conv2d_pack(<const float *>cnp.PyArray_DATA(wa), bias_p, group, Cog, CK,
                        <float *>cnp.PyArray_DATA(wp), wp.shape[0],
                        <float *>cnp.PyArray_DATA(bp), bp.shape[0])
        self.packed, self.packed_bias = wp, bp

    def out_shape(self, H, W):
        """(Ho, Wo) for an input of H x W (a value < 1: the kernel does not fit)."""
        # the upsampled input's extent, in Python integers (no wrap-around)
        H, W = (H - 1) * self.uh + 1 if H > 0 else 0, (W - 1) * self.uw + 1 if W > 0 else 0
        sh = H + self.pt + self.pb - (self.KH - 1) * self.dh - 1
        sw = W + self.pl + self.pr - (self.KW - 1) * self.dw - 1
        return (sh // self.sh + 1 if sh >= 0 else 0, sw // self.sw + 1 if sw >= 0 else 0)

    def geometry(self, x_shape, relu=None):
        """The kernel's rnn_conv2d_t fields for an input of ``x_shape`` (N, C, H, W), as a
        dict (the runner fills its own struct from it); ValueError when x does not fit."""
        if len(x_shape) != 4 or x_shape[1] != self.C or min(x_shape) < 0:
            raise ValueError(f"x must be (N, {self.C}, H, W); got {tuple(x_shape)}")
        Ho, Wo = self.out_shape(x_shape[2], x_shape[3])
        if Ho < 1 or Wo < 1:
            raise ValueError(f"a kernel of ({self.KH}, {self.KW}) (dilations ({self.dh}, "
                             f"{self.dw})) does not fit an input of {tuple(x_shape[2:])} padded "
                             f"by {(self.pt, self.pl, self.pb, self.pr)}")
        return dict(N=x_shape[0], C=self.C, H=x_shape[2], W=x_shape[3], M=self.M, G=self.G,
                    KH=self.KH, KW=self.KW, sh=self.sh, sw=self.sw, dh=self.dh, dw=self.dw,
                    pt=self.pt, pl=self.pl, Ho=Ho, Wo=Wo, uh=self.uh, uw=self.uw,
                    relu=int(self.relu if relu is None else relu))

    def __call__(self, x):
        cdef cnp.ndarray xa, y, s, wp = self.packed, bp = self.packed_bias
        cdef rnn_conv2d_t cv
        cdef rnn_cancel_t cancel
        cdef signal_watch_t watch
        cdef int rc, isa = active_isa()
        cdef const float *xp
        cdef const float *wpp
        cdef const float *bpp
        cdef float *sp
        cdef float *yp
        cdef size_t xn, wn, bn, sn, yn
        if (type(x) is not np.ndarray or cnp.PyArray_TYPE(x) != cnp.NPY_FLOAT32
                or cnp.PyArray_NDIM(x) != 4):
            raise ValueError(f"x must be a float32 (N, {self.C}, H, W) array; got "
                             f"{getattr(x, 'dtype', type(x).__name__)}"
                             f"{getattr(x, 'shape', '')}")
        g = self.geometry(x.shape)
        xa = np.ascontiguousarray(x)
        cv.N, cv.C, cv.H, cv.W, cv.M, cv.G = g["N"], g["C"], g["H"], g["W"], g["M"], g["G"]
        cv.KH, cv.KW, cv.sh, cv.sw = g["KH"], g["KW"], g["sh"], g["sw"]
        cv.dh, cv.dw = g["dh"], g["dw"]
        cv.pt, cv.pl, cv.Ho, cv.Wo, cv.relu = g["pt"], g["pl"], g["Ho"], g["Wo"], g["relu"]
        cv.uh, cv.uw, cv.cancel = g["uh"], g["uw"], NULL
        y = np.empty((cv.N, self.M, cv.Ho, cv.Wo), np.float32)
        if cv.N == 0:
            return y
        if rnn_conv2d_scratch_size(&cv) == 0:
            raise ValueError(f"Conv2d: the input {x.shape} is too large")
        s = np.empty(rnn_conv2d_scratch_size(&cv), np.float32)
        xp, wpp = <const float *>cnp.PyArray_DATA(xa), <const float *>cnp.PyArray_DATA(wp)
        bpp = <const float *>cnp.PyArray_DATA(bp)
        sp, yp = <float *>cnp.PyArray_DATA(s), <float *>cnp.PyArray_DATA(y)
        xn, wn, bn, sn, yn = (cnp.PyArray_SIZE(xa), cnp.PyArray_SIZE(wp), cnp.PyArray_SIZE(bp),
                              cnp.PyArray_SIZE(s), cnp.PyArray_SIZE(y))
        if yn * wn // bn >= NOGIL_MIN_MACS:      # output elements times C / G * KH * KW
            cv.cancel = watch_signals(&cancel, &watch)
            with nogil:
                rc = rnn_conv2d(&cv, xp, xn, wpp, wn, bpp, bn, sp, sn, yp, yn, isa)
        else:
            rc = rnn_conv2d(&cv, xp, xn, wpp, wn, bpp, bn, sp, sn, yp, yn, isa)
        if rc == 1:
            raise_pending()
        if rc == -2:
            raise ValueError(f"Conv2d: sizes do not fit the kernel: x {x.shape}, weights "
                             f"({self.M}, {self.C // self.G}, {self.KH}, {self.KW})")
        if rc != 0:
            raise MemoryError("Conv2d: cannot allocate the kernel's offsets")
        return y

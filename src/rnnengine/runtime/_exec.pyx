"""The executor's runner: one step of a whole model as a flat list of C operators over
buffers allocated once (``executor.Program`` plans it and says why it is shaped so).

A ``Runner`` owns nothing but pointers; ``executor.Program`` holds every array they point
into for as long as the runner lives. Operators that have no C kernel yet are Python
callables in the list (``"call"``), run with the GIL between the C runs, which release it.
The feeds are copied into their buffers before any operator runs, so a caller's arrays are
never read after ``run`` returns control to another thread.
"""
import numpy as np

from ..core.dense import PANEL_ROWS, pack_panels, padded_columns
cimport numpy as cnp
from cpython.exc cimport PyErr_CheckSignals
from cpython.pycapsule cimport PyCapsule_GetPointer
from libc.stdint cimport int64_t
from libc.stdlib cimport calloc, free
from libc.string cimport memcpy, memset

from ..core.cells cimport rnn_activation_t, rnn_flag_release
from ..core.kernels cimport SequenceCore, StreamCore, active_isa, active_kernels
from ..core.conv import CONV2D_CAPSULE, Conv2d, conv2d_kernel

cnp.import_array()

cdef extern from "rnnengine/exec.h" nogil:
    ctypedef struct rnn_run:
        int64_t dst, src_off, len, src_stride, src, reps, dst_step, src_step
    ctypedef struct rnn_bcast:
        int64_t nd
        int64_t shape[8]
        int64_t sa[8]
        int64_t sb[8]
        int64_t sc[8]
    ctypedef struct rnn_rdims:
        int64_t nd
        int64_t shape[8]
        int64_t stride[8]
    ctypedef struct rnn_affine:
        int64_t period, s_row, s_col, b_row, b_col
    void rnn_exec_move(char *dst, char *const *srcs, const rnn_run *runs, int64_t n, int64_t es)
    void rnn_exec_binary(int op, const float *a, const float *b, float *y, const rnn_bcast *g)
    void rnn_exec_unary(int op, const float *x, float *y, int64_t n, float alpha, float beta)
    void rnn_exec_reduce(int op, const float *x, float *y, const int64_t *base, int64_t n_out,
                         const rnn_rdims *r)
    void rnn_exec_matmul(const float *a, const float *b, float *y, const int64_t *offs,
                         int64_t n_mat, int64_t M, int64_t K, int64_t N, const float *rb,
                         int act, int isa)
    void rnn_exec_softmax(int log, const float *x, float *y, int64_t outer, int64_t n,
                          int64_t inner)
    void rnn_exec_norm(const float *x, float *y, int64_t rows, int64_t n, float eps,
                       const float *scale, const float *bias, const rnn_affine *g,
                       float *mean_out, float *inv_out)
    void rnn_exec_compare(int op, const char *a, const char *b, unsigned char *y,
                          const rnn_bcast *g)
    void rnn_exec_where(const unsigned char *c, const float *a, const float *b, float *y,
                        const rnn_bcast *g)
    void rnn_exec_convert(int op, const char *x, char *y, int64_t n)
    int RNN_BIN_COUNT, RNN_UN_COUNT, RNN_RED_COUNT, RNN_CMP_COUNT, RNN_CMP_EQ_I64, RNN_CMP_AND
    int RNN_CV_COUNT

cdef extern from "rnnengine/dense.h" nogil:
    void rnn_dense(const float *x, size_t M, size_t K, const float *w, size_t ldw, size_t N,
                   const float *b, float *y, int act, int isa)
    void rnn_dense_panels(const float *x, size_t M, size_t K, const float *wp, size_t N,
                          const float *b, float *y, int act, int isa)

cdef extern from "rnnengine/conv2d.h" nogil:
    enum: RNN_C2_KW_STACK
    ctypedef struct rnn_cancel_t:
        pass
    ctypedef struct rnn_conv2d_t:
        size_t N, C, H, W, M, G, KH, KW, sh, sw, dh, dw, pt, pl, Ho, Wo
        int relu
        const rnn_cancel_t *cancel
        size_t uh, uw
    size_t rnn_conv2d_scratch_size(const rnn_conv2d_t *cv)
    int rnn_conv2d_sizes_ok(const rnn_conv2d_t *cv, size_t x_len, size_t wp_len,
                            size_t bp_len, size_t scratch_len, size_t y_len)

# rnn_conv2d, compiled once in _conv (with the FMA contraction its variants need)
ctypedef int (*conv2d_fn)(const rnn_conv2d_t *cv, const float *x, size_t x_len,
                          const float *wp, size_t wp_len, const float *bp, size_t bp_len,
                          float *scratch, size_t scratch_len, float *y, size_t y_len,
                          int isa) noexcept nogil
cdef conv2d_fn CONV2D = <conv2d_fn>PyCapsule_GetPointer(conv2d_kernel(), CONV2D_CAPSULE)

# a K_CONV2D operator's call (held in a byte array: xop_t.params)
ctypedef struct conv2d_call_t:
    rnn_conv2d_t cv
    const float *x
    const float *wp
    const float *bp
    float *scratch
    float *y
    size_t x_len, wp_len, bp_len, s_len, y_len

DEF MAXD = 8

# exec.h's unary codes that are activations of the recurrent kernels (activations.h), run by
# the active ISA's vectorised code: Sigmoid, Tanh, Relu, LeakyRelu, HardSigmoid, Softplus, Elu,
# Softsign, ThresholdedRelu
UNARY_ACTIVATIONS = {0: 2, 1: 1, 2: 0, 9: 4, 10: 7, 13: 10, 14: 8, 18: 9, 30: 5}

cdef enum:
    K_MOVE = 0
    K_BINARY = 1
    K_UNARY = 2
    K_REDUCE = 3
    K_MATMUL = 4
    K_DENSE = 5
    K_SOFTMAX = 6
    K_NORM = 7
    K_COMPARE = 8
    K_WHERE = 9
    K_CONVERT = 10
    K_CONV2D = 11
    K_CALL = 12         # the kinds before this one run in C without the GIL
    K_RECURRENT = 13
    K_SEQUENCE = 14

KIND_NAMES = ("move", "binary", "unary", "reduce", "matmul", "dense", "softmax", "norm",
              "compare", "where", "convert", "conv2d", "call", "recurrent", "sequence")

# exec.h's conversions: (input dtype, output dtype) of each code
CONVERSIONS = ((np.float32, np.int64), (np.int64, np.float32), (np.bool_, np.float32),
               (np.float32, np.bool_), (np.int64, np.bool_), (np.bool_, np.int64),
               (np.bool_, np.bool_))

ctypedef struct xop_t:
    int kind, code, act
    char *y
    const char *a
    const char *b
    const char *c         # K_NORM: the bias (NULL: none); K_WHERE: the condition
    char **srcs
    const void *params    # rnn_run[] | rnn_bcast | rnn_rdims | int64 offsets | rnn_affine
    const int64_t *base
    const float *rb       # K_MATMUL: a bias per row of a (NULL: none)
    int64_t n, es, M, K, N
    int64_t ldw           # K_DENSE: w's row length (columns past N zero: _dense.padded_columns),
                          # or 0: w in panels (_dense.pack_panels, fewer rows than PANEL_ROWS)
    float alpha, beta
    int call              # K_CALL: index in Runner._calls; K_RECURRENT: in Runner._cores
    const char *h0        # K_RECURRENT: initial h [N, Hout], c [N, H] (NULL: zeros)
    const char *c0
    char *yh              # K_RECURRENT: final h, c (NULL: not read); K_NORM: the rows' means
    char *yc              # and inverse deviations (NULL: not written)


cdef inline int64_t nbytes(cnp.ndarray a):
    return <int64_t>cnp.PyArray_NBYTES(a)


cdef inline char *data(cnp.ndarray a):
    return <char *>cnp.PyArray_DATA(a)


cdef cnp.ndarray f32(a, what):
    if not isinstance(a, np.ndarray) or a.dtype != np.float32 or not a.flags.c_contiguous:
        raise ValueError(f"{what} must be a C-contiguous float32 buffer")
    return a


cdef cnp.ndarray typed(a, dtype, what):
    if not isinstance(a, np.ndarray) or a.dtype != dtype or not a.flags.c_contiguous:
        raise ValueError(f"{what} must be a C-contiguous {np.dtype(dtype)} buffer")
    return a


cdef cnp.ndarray bcast(what, shape, strides, sizes, int64_t total_out):
    """An rnn_bcast (held in the array returned) for ``shape`` with each input's strides,
    checked against the inputs' ``sizes`` and the output's size, all in elements."""
    cdef cnp.ndarray g = np.zeros(1 + 4 * MAXD, np.int64)
    cdef rnn_bcast *bc = <rnn_bcast *>cnp.PyArray_DATA(g)
    cdef int64_t total = 1, reach, d, k, nd = len(shape)
    cdef int64_t *dst
    if not 1 <= nd <= MAXD:
        raise ValueError(f"{what}: bad operator or rank")
    bc.nd = nd
    for d in range(nd):
        if shape[d] < 1:
            raise ValueError(f"{what}: bad geometry")
        bc.shape[d] = shape[d]
        total *= shape[d]
    for k in range(len(strides)):
        if k == 0:
            dst = &bc.sa[0]
        elif k == 1:
            dst = &bc.sb[0]
        else:
            dst = &bc.sc[0]
        reach = 0
        for d in range(nd):
            if strides[k][d] < 0:
                raise ValueError(f"{what}: bad geometry")
            dst[d] = strides[k][d]
            reach += (shape[d] - 1) * strides[k][d]
        if reach >= sizes[k]:
            raise ValueError(f"{what}: the geometry does not fit the buffers")
    if total != total_out:
        raise ValueError(f"{what}: the geometry does not fit the buffers")
    return g


cdef cnp.ndarray i64(a, what):
    a = np.ascontiguousarray(a, np.int64)
    return a


cdef class Runner:
    """``Runner(ops)``: ops in run order, each a tuple naming its kernel and the arrays it
    reads and writes (``executor.Program`` builds them):

    * ("move", dst, [src, ...], runs int64 [n, 8] (dst, src_off, len, src_stride, src, reps,
      dst_step, src_step));
    * ("binary", code, a, b, y, shape, a_strides, b_strides) (strides in elements);
    * ("unary", code, x, y, alpha, beta);
    * ("reduce", code, x, y, base offsets, reduced shape, reduced strides);
    * ("matmul", a, b, y, offsets int64 [n, 3], M, K, N[, bias per row of a or None,
      act 0 | 1 (ReLU)]);
    * ("dense", x, w [K, N], bias or None, y, M, act);
    * ("compare", code, a, b, y bool, shape, a_strides, b_strides): as binary, to bools;
    * ("where", condition bool, a, b, y, shape, c_strides, a_strides, b_strides);
    * ("convert", code, x, y): element-wise dtype conversions and Not (``CONVERSIONS``);
    * ("softmax", log, x, y, outer, n, inner): along an axis of n elements inner apart;
    * ("norm", x, y, rows, n, eps, scale or None, bias or None, (period, s_row, s_col, b_row,
      b_col), mean or None, inv or None): rows of n normalised, then scaled and shifted, the
      rows' statistics written when given (exec.h: rnn_exec_norm);
    * ("conv2d", conv, x, y, (N, H, W), relu): ``conv`` a ``_conv.Conv2d`` (its packed
      weights), x holding (N, C, H, W) and y (N, M, Ho, Wo) floats in any shape, relu 0 | 1
      (include/rnnengine/conv2d.h);
    * ("call", fn): a Python callable run with the GIL.

    Every offset is checked against the sizes of the arrays given here; ``run()`` then runs
    them all (raising what a "call" raises)."""
    cdef xop_t *_ops
    cdef int _n
    cdef list _hold, _calls, _cores

    def __cinit__(self, *args, **kwargs):
        self._ops = NULL

    def __dealloc__(self):
        cdef int i
        if self._ops != NULL:
            for i in range(self._n):
                free(self._ops[i].srcs)
            free(self._ops)

    def __init__(self, ops):
        cdef xop_t *op
        self._n = len(ops)
        self._ops = <xop_t *>calloc(max(self._n, 1), sizeof(xop_t))
        if self._ops == NULL:
            raise MemoryError()
        self._hold, self._calls, self._cores = [], [], []
        for i, spec in enumerate(ops):
            op = &self._ops[i]
            kind = spec[0]
            if kind == "move":
                self._move(op, spec[1], spec[2], spec[3])
            elif kind == "binary":
                self._binary(op, spec[1], spec[2], spec[3], spec[4], spec[5], spec[6], spec[7])
            elif kind == "unary":
                self._unary(op, spec[1], spec[2], spec[3], spec[4], spec[5])
            elif kind == "reduce":
                self._reduce(op, spec[1], spec[2], spec[3], spec[4], spec[5], spec[6])
            elif kind == "matmul":
                self._matmul(op, spec[1], spec[2], spec[3], spec[4], spec[5], spec[6], spec[7],
                             spec[8] if len(spec) > 8 else None,
                             spec[9] if len(spec) > 9 else 0)
            elif kind == "dense":
                self._dense(op, spec[1], spec[2], spec[3], spec[4], spec[5], spec[6])
            elif kind == "compare":
                self._compare(op, spec[1], spec[2], spec[3], spec[4], spec[5], spec[6], spec[7])
            elif kind == "where":
                self._where(op, spec[1], spec[2], spec[3], spec[4], spec[5], spec[6], spec[7],
                            spec[8])
            elif kind == "convert":
                self._convert(op, spec[1], spec[2], spec[3])
            elif kind == "softmax":
                self._softmax(op, spec[1], spec[2], spec[3], spec[4], spec[5], spec[6])
            elif kind == "norm":
                self._norm(op, spec[1], spec[2], spec[3], spec[4], spec[5], spec[6], spec[7],
                           spec[8], spec[9], spec[10])
            elif kind == "conv2d":
                self._conv2d(op, spec[1], spec[2], spec[3], spec[4], spec[5])
            elif kind == "recurrent":
                self._recurrent(op, spec[1], spec[2], spec[3], spec[4], spec[5], spec[6],
                                spec[7])
            elif kind == "sequence":
                self._sequence(op, spec[1], spec[2], spec[3], spec[4], spec[5], spec[6],
                               spec[7], spec[8], spec[9])
            elif kind == "call":
                if not callable(spec[1]):
                    raise TypeError("a call op takes a callable")
                op.kind, op.call = K_CALL, len(self._calls)
                self._calls.append(spec[1])
            else:
                raise ValueError(f"unknown op kind {kind!r}")

    @property
    def kinds(self):
        return [KIND_NAMES[self._ops[i].kind] for i in range(self._n)]

    cdef int _move(self, xop_t *op, cnp.ndarray dst, list srcs, runs) except -1:
        cdef cnp.ndarray r = np.ascontiguousarray(runs, np.int64).reshape(-1, 8)
        cdef int64_t es = dst.itemsize
        cdef int64_t k, d0, off, ln, st, s, last, reps, dstep, sstep, dst_n = dst.size
        cdef int64_t lo, hi
        for src in srcs:
            if not isinstance(src, np.ndarray) or src.dtype != dst.dtype or not src.flags.c_contiguous:
                raise ValueError("move: sources must be C-contiguous arrays of the "
                                 "destination's dtype")
        if not dst.flags.c_contiguous:
            raise ValueError("move: the destination must be C-contiguous")
        cdef int64_t[:, :] rv = r
        for k in range(rv.shape[0]):
            d0, off, ln, st, s = rv[k, 0], rv[k, 1], rv[k, 2], rv[k, 3], rv[k, 4]
            reps, dstep, sstep = rv[k, 5], rv[k, 6], rv[k, 7]
            if reps < 1 or ln < 1 or not 0 <= s < len(srcs):
                raise ValueError(f"move: run {k} does not fit the destination")
            # the extremes of an affine index over a box are at its corners
            lo, hi = min(0, (reps - 1) * dstep), max(0, (reps - 1) * dstep)
            if d0 + lo < 0 or d0 + hi + ln > dst_n:
                raise ValueError(f"move: run {k} does not fit the destination")
            lo = min(0, (ln - 1) * st) + min(0, (reps - 1) * sstep)
            hi = max(0, (ln - 1) * st) + max(0, (reps - 1) * sstep)
            if off + lo < 0 or off + hi >= (<cnp.ndarray>srcs[s]).size:
                raise ValueError(f"move: run {k} reads outside source {s}")
        op.kind, op.y, op.es, op.n, op.params = K_MOVE, data(dst), es, rv.shape[0], cnp.PyArray_DATA(r)
        op.srcs = <char **>calloc(max(len(srcs), 1), sizeof(char *))
        if op.srcs == NULL:
            raise MemoryError()
        for k, src in enumerate(srcs):
            op.srcs[k] = data(src)
        self._hold += [dst, r, srcs]
        return 0

    cdef int _binary(self, xop_t *op, int code, a, b, y, shape, sa, sb) except -1:
        cdef cnp.ndarray A = f32(a, "binary: a"), B = f32(b, "binary: b"), Y = f32(y, "binary: y")
        if not 0 <= code < RNN_BIN_COUNT:
            raise ValueError("binary: bad operator or rank")
        cdef cnp.ndarray g = bcast("binary", shape, (sa, sb), (A.size, B.size), Y.size)
        op.kind, op.code, op.a, op.b, op.y = K_BINARY, code, data(A), data(B), data(Y)
        op.params = cnp.PyArray_DATA(g)
        self._hold += [A, B, Y, g]
        return 0

    cdef int _compare(self, xop_t *op, int code, a, b, y, shape, sa, sb) except -1:
        if not 0 <= code < RNN_CMP_COUNT:
            raise ValueError("compare: bad operator or rank")
        dtype = np.float32 if code < RNN_CMP_EQ_I64 else (np.int64 if code < RNN_CMP_AND
                                                           else np.bool_)
        cdef cnp.ndarray A = typed(a, dtype, "compare: a"), B = typed(b, dtype, "compare: b")
        cdef cnp.ndarray Y = typed(y, np.bool_, "compare: y")
        cdef cnp.ndarray g = bcast("compare", shape, (sa, sb), (A.size, B.size), Y.size)
        op.kind, op.code, op.a, op.b, op.y = K_COMPARE, code, data(A), data(B), data(Y)
        op.params = cnp.PyArray_DATA(g)
        self._hold += [A, B, Y, g]
        return 0

    cdef int _where(self, xop_t *op, c, a, b, y, shape, sc, sa, sb) except -1:
        cdef cnp.ndarray C = typed(c, np.bool_, "where: condition")
        cdef cnp.ndarray A = f32(a, "where: a"), B = f32(b, "where: b"), Y = f32(y, "where: y")
        cdef cnp.ndarray g = bcast("where", shape, (sa, sb, sc), (A.size, B.size, C.size),
                                   Y.size)
        op.kind, op.a, op.b, op.c, op.y = K_WHERE, data(A), data(B), data(C), data(Y)
        op.params = cnp.PyArray_DATA(g)
        self._hold += [A, B, C, Y, g]
        return 0

    cdef int _convert(self, xop_t *op, int code, x, y) except -1:
        if not 0 <= code < RNN_CV_COUNT:
            raise ValueError("convert: bad operator")
        cdef cnp.ndarray X = typed(x, CONVERSIONS[code][0], "convert: x")
        cdef cnp.ndarray Y = typed(y, CONVERSIONS[code][1], "convert: y")
        if X.size != Y.size:
            raise ValueError("convert: the sizes differ")
        op.kind, op.code, op.a, op.y, op.n = K_CONVERT, code, data(X), data(Y), Y.size
        self._hold += [X, Y]
        return 0

    cdef int _unary(self, xop_t *op, int code, x, y, alpha, beta) except -1:
        cdef cnp.ndarray X = f32(x, "unary: x"), Y = f32(y, "unary: y")
        if not 0 <= code < RNN_UN_COUNT or X.size != Y.size:
            raise ValueError("unary: bad operator or sizes")
        op.kind, op.code, op.a, op.y, op.n = K_UNARY, code, data(X), data(Y), Y.size
        op.alpha, op.beta = alpha, beta
        op.act = UNARY_ACTIVATIONS.get(code, -1)
        self._hold += [X, Y]
        return 0

    cdef int _reduce(self, xop_t *op, int code, x, y, base, rshape, rstride) except -1:
        cdef cnp.ndarray X = f32(x, "reduce: x"), Y = f32(y, "reduce: y")
        cdef cnp.ndarray B = i64(base, "reduce: base")
        cdef cnp.ndarray g = np.zeros(1 + 2 * MAXD, np.int64)
        cdef rnn_rdims *r = <rnn_rdims *>cnp.PyArray_DATA(g)
        cdef int64_t span = 0, d, nd = len(rshape)
        if not 0 <= code < RNN_RED_COUNT or nd > MAXD or B.size != Y.size:
            raise ValueError("reduce: bad operator, rank or sizes")
        r.nd = nd
        for d in range(nd):
            if rshape[d] < 1 or rstride[d] < 0:
                raise ValueError("reduce: bad geometry")
            r.shape[d], r.stride[d] = rshape[d], rstride[d]
            span += (rshape[d] - 1) * rstride[d]
        if B.size and (B.min() < 0 or B.max() + span >= X.size):
            raise ValueError("reduce: the geometry does not fit the input")
        op.kind, op.code, op.a, op.y, op.params = K_REDUCE, code, data(X), data(Y), r
        op.base, op.n = <const int64_t *>cnp.PyArray_DATA(B), B.size
        self._hold += [X, Y, B, g]
        return 0

    cdef int _matmul(self, xop_t *op, a, b, y, offs, int64_t M, int64_t K, int64_t N,
                     row_bias=None, int act=0) except -1:
        cdef cnp.ndarray A = f32(a, "matmul: a"), B = f32(b, "matmul: b"), Y = f32(y, "matmul: y")
        cdef cnp.ndarray O = i64(offs, "matmul: offsets").reshape(-1, 3)
        cdef cnp.ndarray R
        if M < 1 or K < 1 or N < 1 or act not in (0, 1) or (O.size and (
                O[:, 0].min() < 0 or O[:, 0].max() + M * K > A.size
                or O[:, 1].min() < 0 or O[:, 1].max() + K * N > B.size
                or O[:, 2].min() < 0 or O[:, 2].max() + M * N > Y.size)):
            raise ValueError("matmul: the geometry does not fit the buffers")
        op.kind, op.a, op.b, op.y, op.M, op.K, op.N = K_MATMUL, data(A), data(B), data(Y), M, K, N
        op.params, op.n, op.act, op.rb = cnp.PyArray_DATA(O), O.shape[0], act, NULL
        if row_bias is not None:
            # row r of the triple whose a starts at o reads row_bias[o // K + r]
            R = f32(row_bias, "matmul: row bias")
            if A.size % K or R.size != A.size // K or (O.size and (O[:, 0] % K).any()):
                raise ValueError("matmul: the row bias does not fit a's rows")
            op.rb = <const float *>data(R)
            self._hold.append(R)
        self._hold += [A, B, Y, O]
        return 0

    cdef int _conv2d(self, xop_t *op, conv, x, y, nhw, int relu) except -1:
        cdef cnp.ndarray X = f32(x, "conv2d: x"), Y = f32(y, "conv2d: y"), S
        cdef cnp.ndarray call = np.zeros(sizeof(conv2d_call_t), np.uint8)
        cdef conv2d_call_t *c = <conv2d_call_t *>cnp.PyArray_DATA(call)
        cdef cnp.ndarray WP, BP
        if not isinstance(conv, Conv2d) or not 0 <= relu <= 1:
            raise ValueError("conv2d: takes a _conv.Conv2d and relu 0 or 1")
        N, H, W = nhw
        g = conv.geometry((N, conv.C, H, W), relu)     # ValueError when x does not fit
        if conv.KW > RNN_C2_KW_STACK:
            raise ValueError(f"conv2d: a kernel wider than {RNN_C2_KW_STACK} columns")
        WP, BP = f32(conv.packed, "conv2d: weights"), f32(conv.packed_bias, "conv2d: bias")
        c.cv.N, c.cv.C, c.cv.H, c.cv.W, c.cv.M, c.cv.G = N, g["C"], H, W, g["M"], g["G"]
        c.cv.KH, c.cv.KW, c.cv.sh, c.cv.sw = g["KH"], g["KW"], g["sh"], g["sw"]
        c.cv.dh, c.cv.dw, c.cv.pt, c.cv.pl = g["dh"], g["dw"], g["pt"], g["pl"]
        c.cv.Ho, c.cv.Wo, c.cv.relu, c.cv.cancel = g["Ho"], g["Wo"], relu, NULL
        c.cv.uh, c.cv.uw = g["uh"], g["uw"]
        # sizes in Python integers: no wrap-around can fake a fit
        if (X.size != (<object>N) * g["C"] * H * W
                or Y.size != (<object>N) * g["M"] * g["Ho"] * g["Wo"]):
            raise ValueError("conv2d: the geometry does not fit the buffers")
        if rnn_conv2d_scratch_size(&c.cv) == 0:
            raise ValueError("conv2d: the scratch image's size overflows")
        S = np.zeros(rnn_conv2d_scratch_size(&c.cv), np.float32)
        c.x, c.wp, c.bp = <const float *>data(X), <const float *>data(WP), <const float *>data(BP)
        c.scratch, c.y = <float *>data(S), <float *>data(Y)
        c.x_len, c.wp_len, c.bp_len, c.s_len, c.y_len = X.size, WP.size, BP.size, S.size, Y.size
        if not rnn_conv2d_sizes_ok(&c.cv, c.x_len, c.wp_len, c.bp_len, c.s_len, c.y_len):
            raise ValueError("conv2d: the geometry does not fit the buffers")
        op.kind, op.params = K_CONV2D, c
        self._hold += [X, Y, S, WP, BP, call, conv]
        return 0

    cdef int _dense(self, xop_t *op, x, w, bias, y, int64_t M, int act) except -1:
        cdef cnp.ndarray X = f32(x, "dense: x"), W = f32(w, "dense: w"), Y = f32(y, "dense: y")
        cdef cnp.ndarray Bi
        if W.ndim != 2 or M < 1 or X.size != M * W.shape[0] or Y.size != M * W.shape[1] \
                or not 0 <= act <= 5:
            raise ValueError("dense: the geometry does not fit the buffers")
        op.kind, op.a, op.y, op.M, op.K, op.N, op.act = K_DENSE, data(X), data(Y), M, W.shape[0], W.shape[1], act
        if M < PANEL_ROWS:
            W, op.ldw = pack_panels(W), 0
        else:
            W = padded_columns(W)
            op.ldw = W.shape[1]
        op.b = data(W)
        op.base = NULL
        if bias is not None:
            Bi = f32(bias, "dense: bias")
            if Bi.size != op.N:
                raise ValueError("dense: the bias does not fit")
            op.params = data(Bi)
            self._hold.append(Bi)
        else:
            op.params = NULL
        self._hold += [X, W, Y]
        return 0

    cdef int _softmax(self, xop_t *op, int log, x, y, int64_t outer, int64_t n,
                      int64_t inner) except -1:
        cdef cnp.ndarray X = f32(x, "softmax: x"), Y = f32(y, "softmax: y")
        if not 0 <= log <= 1 or outer < 0 or n < 0 or inner < 0:
            raise ValueError("softmax: bad operator or geometry")
        # the product in Python integers: no int64 wrap-around can fake a fit
        if X.size != (<object>outer) * n * inner or Y.size != X.size:
            raise ValueError("softmax: the geometry does not fit the buffers")
        op.kind, op.code, op.a, op.y = K_SOFTMAX, log, data(X), data(Y)
        op.M, op.K, op.N = outer, n, inner
        self._hold += [X, Y]
        return 0

    cdef int _norm(self, xop_t *op, x, y, int64_t rows, int64_t n, float eps, scale, bias,
                   geometry, mean, inv) except -1:
        cdef cnp.ndarray X = f32(x, "norm: x"), Y = f32(y, "norm: y")
        cdef cnp.ndarray g = np.zeros(5, np.int64)
        cdef rnn_affine *a = <rnn_affine *>cnp.PyArray_DATA(g)
        cdef cnp.ndarray P
        cdef int64_t k
        if rows < 0 or n < 0 or X.size != (<object>rows) * n or Y.size != X.size:
            raise ValueError("norm: the geometry does not fit the buffers")
        a.period, a.s_row, a.s_col, a.b_row, a.b_col = geometry
        if a.period < 1 or min(a.s_row, a.s_col, a.b_row, a.b_col) < 0:
            raise ValueError("norm: bad geometry")
        op.kind, op.a, op.y, op.params = K_NORM, data(X), data(Y), a
        op.M, op.K, op.alpha = rows, n, eps
        op.b = op.c = NULL
        op.yh = op.yc = NULL
        for k, value in enumerate((mean, inv)):
            if value is None:
                continue
            if f32(value, "norm: mean or inv").size != rows:
                raise ValueError("norm: the statistics do not fit the rows")
            if k == 0:
                op.yh = data(value)
            else:
                op.yc = data(value)
            self._hold.append(value)
        for k, value in enumerate((scale, bias)):
            if value is None:
                continue
            P = f32(value, "norm: scale or bias")
            # the largest index read, for rows and n both nonzero (nothing is read otherwise)
            if rows and n and ((min(a.period, rows) - 1) * (a.s_row, a.b_row)[k]
                               + (n - 1) * (a.s_col, a.b_col)[k] >= P.size):
                raise ValueError("norm: the geometry does not fit the scale or bias")
            if k == 0:
                op.b = data(P)
            else:
                op.c = data(P)
            self._hold.append(P)
        self._hold += [X, Y, g]
        return 0

    cdef int _recurrent(self, xop_t *op, StreamCore core, x, h0, c0, y, yh, yc) except -1:
        """One timestep of a one-layer, one-way node on a core of its own (the program's
        scratch: the state is copied in from h0/c0 and out to yh/yc every call)."""
        cdef cnp.ndarray X = f32(x, "recurrent: x"), Y = f32(y, "recurrent: y")
        cdef size_t h_bytes = core._h_len * sizeof(float), c_bytes = core._c_len * sizeof(float)
        if core._L != 1 or X.size != core._N * core._I or Y.size != core._N * core._Hout:
            raise ValueError("recurrent: the buffers do not fit the core")
        op.kind, op.a, op.y, op.call = K_RECURRENT, data(X), data(Y), len(self._cores)
        op.h0 = op.c0 = op.yh = op.yc = NULL
        for value, size, what in ((h0, h_bytes, "h0"), (c0, c_bytes, "c0"),
                                  (yh, h_bytes, "yh"), (yc, c_bytes, "yc")):
            if value is None:
                continue
            if size == 0 or nbytes(f32(value, "recurrent: " + what)) != <int64_t>size:
                raise ValueError(f"recurrent: {what} does not fit the core's state")
            self._hold.append(value)
        if h0 is not None:
            op.h0 = data(h0)
        if c0 is not None:
            op.c0 = data(c0)
        if yh is not None:
            op.yh = data(yh)
        if yc is not None:
            op.yc = data(yc)
        self._cores.append(core)
        self._hold += [X, Y]
        return 0

    cdef int _sequence(self, xop_t *op, SequenceCore core, x, h0, c0, y, yh, yc, hbuf,
                       cbuf) except -1:
        """A node's whole sequence (one layer, any direction): h0/c0 (None: zeros) copied
        into the scratch hbuf/cbuf the run updates in place, y [T, N, D*Hout], then the final
        state copied out to yh/yc (None: not read)."""
        cdef cnp.ndarray X = f32(x, "sequence: x"), Y = f32(y, "sequence: y")
        cdef cnp.ndarray HB = f32(hbuf, "sequence: h"), CB
        cdef int64_t hn = core.layers * core.dirs * core.batch * core.hout
        cdef int64_t cn = core.layers * core.dirs * core.batch * core.hidden
        if (X.size != core.steps * core.batch * core.inputs or HB.size != hn
                or Y.size != core.steps * core.batch * core.dirs * core.hout):
            raise ValueError("sequence: the buffers do not fit the core")
        op.kind, op.a, op.y, op.call = K_SEQUENCE, data(X), data(Y), len(self._cores)
        op.yh, op.h0, op.c0, op.yc, op.b = data(HB), NULL, NULL, NULL, NULL
        op.M, op.N = hn, cn if core.lstm else 0
        if core.lstm:
            CB = f32(cbuf, "sequence: c")
            if CB.size != cn:
                raise ValueError("sequence: c does not fit the core")
            op.params = data(CB)
            self._hold.append(CB)
        else:
            op.params = NULL
        for value, size, which in ((h0, hn, 0), (c0, cn, 1), (yh, hn, 2), (yc, cn, 3)):
            if value is None:
                continue
            if f32(value, "sequence: state").size != size or (which % 2 and not core.lstm):
                raise ValueError("sequence: a state buffer does not fit the core")
            self._hold.append(value)
            if which == 0:
                op.h0 = data(value)
            elif which == 1:
                op.c0 = data(value)
            elif which == 2:
                op.b = data(value)          # where the final h goes
            else:
                op.yc = data(value)
        self._cores.append(core)
        self._hold += [X, Y, HB]
        return 0

    def run_fed(self, list values, list bufs, list outs, bint exact=False):
        """``values[i]`` copied into ``bufs[i]`` (C-contiguous buffers), ``run()``, then a
        copy of each of ``outs``: a program's call in one C call, where a ``numpy.copyto``
        per feed and a ``copy`` per output cost more than DTLN's glue operators. A value of
        the buffer's very dtype and shape, C-contiguous, is copied with memcpy; any other
        goes through ``numpy.copyto(casting="no")`` and its errors, or, with ``exact``,
        makes the call return None with nothing copied or run."""
        cdef Py_ssize_t i, n = len(values)
        cdef cnp.ndarray a, b
        cdef bint fits
        if len(bufs) != n:
            raise ValueError("run_fed: one buffer per value")
        cdef list slow = []
        for i in range(n):
            v, b = values[i], bufs[i]
            fits = False
            if cnp.PyArray_CheckExact(v):
                a = <cnp.ndarray>v
                fits = (cnp.PyArray_ISCARRAY_RO(a) and cnp.PyArray_ISCARRAY(b)
                        and cnp.PyArray_ISNOTSWAPPED(a) and cnp.PyArray_ISNOTSWAPPED(b)
                        and cnp.PyArray_TYPE(a) == cnp.PyArray_TYPE(b)
                        and (<object>a).shape == (<object>b).shape)
            if not fits:
                if exact:
                    return None
                slow.append(i)
        for i in range(n):
            if slow and i in slow:
                np.copyto(bufs[i], values[i], casting="no")
            else:
                a, b = values[i], bufs[i]
                memcpy(cnp.PyArray_DATA(b), cnp.PyArray_DATA(a), cnp.PyArray_NBYTES(b))
        self.run()
        return [cnp.PyArray_NewCopy(<cnp.ndarray>o, cnp.NPY_CORDER) for o in outs]

    def run(self):
        """Every operator once, in order."""
        cdef int i = 0, j
        while i < self._n:
            if self._ops[i].kind == K_CALL:
                self._calls[self._ops[i].call]()
                i += 1
                continue
            if self._ops[i].kind == K_RECURRENT:
                self._step(&self._ops[i])
                i += 1
                continue
            if self._ops[i].kind == K_SEQUENCE:
                self._whole(&self._ops[i])
                i += 1
                continue
            j = i
            while j < self._n and self._ops[j].kind < K_CALL:
                j += 1
            with nogil:
                run_c(self._ops + i, j - i)
            PyErr_CheckSignals()      # Ctrl-C between operators (a sequence checks inside)
            i = j

    cdef int _whole(self, xop_t *op) except -1:
        cdef SequenceCore core = <SequenceCore>self._cores[op.call]
        cdef float *h = <float *>op.yh
        cdef float *c = <float *>op.params
        if op.h0 != NULL:
            memcpy(h, op.h0, op.M * sizeof(float))
        else:
            memset(h, 0, op.M * sizeof(float))
        if c != NULL:
            if op.c0 != NULL:
                memcpy(c, op.c0, op.N * sizeof(float))
            else:
                memset(c, 0, op.N * sizeof(float))
        core._go(<const float *>op.a, h, c, <float *>op.y)    # releases the GIL; Ctrl-C
        with nogil:
            if op.b != NULL:
                memcpy(<void *>op.b, h, op.M * sizeof(float))
            if op.yc != NULL and c != NULL:
                memcpy(op.yc, c, op.N * sizeof(float))
        return 0

    cdef int _step(self, xop_t *op) except -1:
        cdef StreamCore core = <StreamCore>self._cores[op.call]
        cdef size_t hb = core._h_len * sizeof(float), cb = core._c_len * sizeof(float)
        core._acquire()       # the core's own guard, as StreamCore.step takes it
        with nogil:
            if op.h0 != NULL:
                memcpy(core._h[core._parity], op.h0, hb)
            else:
                memset(core._h[core._parity], 0, hb)
            if core._c != NULL:
                if op.c0 != NULL:
                    memcpy(core._c, op.c0, cb)
                else:
                    memset(core._c, 0, cb)
            core._step_all(<const float *>op.a, <float *>op.y)
            if op.yh != NULL:
                memcpy(op.yh, core._h[core._parity], hb)
            if op.yc != NULL and core._c != NULL:
                memcpy(op.yc, core._c, cb)
        rnn_flag_release(&core._busy)
        return 0


cdef void run_c(xop_t *ops, int n) noexcept nogil:
    cdef xop_t *op
    cdef rnn_activation_t act
    cdef const conv2d_call_t *conv
    cdef int i
    cdef int isa = active_isa()
    for i in range(n):
        op = &ops[i]
        if op.kind == K_MOVE:
            rnn_exec_move(op.y, op.srcs, <const rnn_run *>op.params, op.n, op.es)
        elif op.kind == K_BINARY:
            rnn_exec_binary(op.code, <const float *>op.a, <const float *>op.b, <float *>op.y,
                            <const rnn_bcast *>op.params)
        elif op.kind == K_UNARY:
            if op.act >= 0:      # one of the recurrent kernels' activations: their ISA's code
                if op.a != op.y:
                    memcpy(op.y, op.a, op.n * sizeof(float))
                act.code, act.alpha, act.beta = op.act, op.alpha, op.beta
                active_kernels().activate(act, <float *>op.y, op.n)
            else:
                rnn_exec_unary(op.code, <const float *>op.a, <float *>op.y, op.n, op.alpha,
                               op.beta)
        elif op.kind == K_REDUCE:
            rnn_exec_reduce(op.code, <const float *>op.a, <float *>op.y, op.base, op.n,
                            <const rnn_rdims *>op.params)
        elif op.kind == K_MATMUL:
            rnn_exec_matmul(<const float *>op.a, <const float *>op.b, <float *>op.y,
                            <const int64_t *>op.params, op.n, op.M, op.K, op.N, op.rb, op.act,
                            isa)
        elif op.kind == K_DENSE:
            if op.ldw == 0:
                rnn_dense_panels(<const float *>op.a, op.M, op.K, <const float *>op.b, op.N,
                                 <const float *>op.params, <float *>op.y, op.act, isa)
            else:
                rnn_dense(<const float *>op.a, op.M, op.K, <const float *>op.b, op.ldw, op.N,
                          <const float *>op.params, <float *>op.y, op.act, isa)
        elif op.kind == K_COMPARE:
            rnn_exec_compare(op.code, op.a, op.b, <unsigned char *>op.y,
                             <const rnn_bcast *>op.params)
        elif op.kind == K_WHERE:
            rnn_exec_where(<const unsigned char *>op.c, <const float *>op.a,
                           <const float *>op.b, <float *>op.y, <const rnn_bcast *>op.params)
        elif op.kind == K_CONVERT:
            rnn_exec_convert(op.code, op.a, op.y, op.n)
        elif op.kind == K_CONV2D:
            # sizes checked when the op was made; a kernel at most RNN_C2_KW_STACK wide
            # allocates nothing, so nothing can fail here
            conv = <const conv2d_call_t *>op.params
            CONV2D(&conv.cv, conv.x, conv.x_len, conv.wp, conv.wp_len, conv.bp, conv.bp_len,
                   conv.scratch, conv.s_len, conv.y, conv.y_len, isa)
        elif op.kind == K_SOFTMAX:
            rnn_exec_softmax(op.code, <const float *>op.a, <float *>op.y, op.M, op.K, op.N)
        elif op.kind == K_NORM:
            rnn_exec_norm(<const float *>op.a, <float *>op.y, op.M, op.K, op.alpha,
                          <const float *>op.b, <const float *>op.c,
                          <const rnn_affine *>op.params, <float *>op.yh, <float *>op.yc)

"""Elementwise operators: arithmetic, comparisons, logic, unary math and activations.

All follow NumPy broadcasting (which is ONNX's multidirectional broadcasting). Ufuncs are
called with ``out=ARRAY`` so a 0-d result stays an ndarray, and float32 stays float32 (NumPy 2
treats Python scalars as weak). Binary ops check that the operand dtypes agree, as ONNX's type
constraints require, instead of letting NumPy promote int32 + float32 to float64.
"""
from __future__ import annotations

import functools

import numpy as np

from ..core import kernels as _kernels
from ._common import ARRAY, check_broadcast, registrar, same_dtype

OPS = {}
op = registrar(OPS)


def _binary(ufunc):
    def f(a, b):
        if a.dtype != b.dtype:
            same_dtype(a, b)
        if a.shape != b.shape:
            check_broadcast(a, b)
        return (ufunc(a, b, out=ARRAY),)
    return f


_ARITH = {"Add": np.add, "Sub": np.subtract, "Mul": np.multiply,
          "Equal": np.equal, "Greater": np.greater, "Less": np.less,
          "GreaterOrEqual": np.greater_equal, "LessOrEqual": np.less_equal,
          "And": np.logical_and, "Or": np.logical_or, "Xor": np.logical_xor}


@op("Add", "Sub", "Mul", "Equal", "Greater", "Less", "GreaterOrEqual", "LessOrEqual",
    inputs=(2, 2))
def _arith(a, opset, n_in, n_out):
    return _binary(_ARITH[a.node.op_type])


def _need_bool(x, what):
    if x.dtype != np.bool_:
        raise ValueError(f"input {what} must be bool; got {x.dtype}")


@op("And", "Or", "Xor", inputs=(2, 2))
def _logic(a, opset, n_in, n_out):
    ufunc = _ARITH[a.node.op_type]

    def f(x, y):
        if x.dtype != np.bool_ or y.dtype != np.bool_:
            _need_bool(x, "A")
            _need_bool(y, "B")
        if x.shape != y.shape:
            check_broadcast(x, y)
        return (ufunc(x, y, out=ARRAY),)
    return f


@op("Not")
def _not(a, opset, n_in, n_out):
    def f(x):
        _need_bool(x, "X")
        return (np.logical_not(x, out=ARRAY),)
    return f


def _no_zero_divisor(y, what: str):
    # Integer division by zero has no defined result (C's is undefined behaviour; NumPy
    # gives 0 or INT_MIN with a warning): ONNX Runtime refuses it, and so do we.
    if not y.all():
        raise ValueError(f"integer {what} by zero: the divisor B ({y.dtype}{y.shape}) "
                         "holds a 0")


def _int_div(x, y):
    # ONNX Runtime divides integers as C does: the quotient truncates toward zero.
    _no_zero_divisor(y, "division")
    q = np.asarray(np.floor_divide(x, y))   # writable even when 0-d
    fix = (q < 0) & (q * y != x)
    q[fix] += 1
    return q


@op("Div", inputs=(2, 2))
def _div(a, opset, n_in, n_out):
    def f(x, y):
        if x.dtype != y.dtype:
            same_dtype(x, y)
        if x.shape != y.shape:
            check_broadcast(x, y)
        if x.dtype.kind in "iu":
            return (_int_div(x, y),)
        return (np.divide(x, y, out=ARRAY),)
    return f


@op("Mod", inputs=(2, 2))
def _mod(a, opset, n_in, n_out):
    # fmod=1: the sign of the dividend (C fmod); fmod=0: the sign of the divisor (Python %).
    ufunc = np.fmod if a.flag("fmod") else np.mod

    def f(x, y):
        if x.dtype != y.dtype:
            same_dtype(x, y)
        if x.dtype.kind == "f" and ufunc is np.mod:
            raise ValueError("fmod must be 1 for floating-point inputs")
        if x.dtype.kind in "iu":
            _no_zero_divisor(y, "modulo")
        if x.shape != y.shape:
            check_broadcast(x, y)
        return (ufunc(x, y, out=ARRAY),)
    return f


@op("Pow", inputs=(2, 2))
def _pow(a, opset, n_in, n_out):
    # The result has the base's dtype (opset 12 lets the exponent's type differ).
    def f(x, y):
        if x.shape != y.shape:
            check_broadcast(x, y)
        if y.shape == () and x.dtype.kind == "f" and y == 2:
            # np.power by a 0-d array takes the general path: 14x slower than squaring,
            # same values (x * x is the correctly rounded square); Silero's STFT squares
            return (np.square(x),)
        if x.dtype == y.dtype:
            return (np.power(x, y, out=ARRAY),)
        if x.dtype.kind == "f":
            return (np.power(x, y.astype(x.dtype), out=ARRAY),)
        return (np.asarray(np.power(x.astype(np.float64), y).astype(x.dtype)),)
    return f


_UNARY = {"Neg": np.negative, "Abs": np.absolute, "Exp": np.exp, "Log": np.log,
          "Sqrt": np.sqrt, "Tanh": np.tanh, "Reciprocal": np.reciprocal, "Floor": np.floor,
          "Ceil": np.ceil, "Sign": np.sign, "Sin": np.sin, "Cos": np.cos, "Tan": np.tan,
          "Asin": np.arcsin, "Acos": np.arccos, "Atan": np.arctan, "Sinh": np.sinh,
          "Cosh": np.cosh, "Asinh": np.arcsinh, "Acosh": np.arccosh, "Atanh": np.arctanh,
          "Round": np.rint, "IsNaN": np.isnan}


_ANY_NUMBER = {"Neg", "Abs", "Sign"}   # the rest take only floats (NumPy would promote ints)


@op(*_UNARY)
def _unary(a, opset, n_in, n_out):
    ufunc = _UNARY[a.node.op_type]
    if a.node.op_type in _ANY_NUMBER:
        def f(x):
            return (ufunc(x, out=ARRAY),)
        return f

    def g(x):
        if x.dtype.kind != "f":
            _float(x)
        return (ufunc(x, out=ARRAY),)
    return g


@op("Relu")
def _relu(a, opset, n_in, n_out):
    def f(x):
        return (np.maximum(x, 0, out=ARRAY),)
    return f


# exp(x) overflows past these (float16, float32, float64); the sigmoid there is 1 in the
# dtype anyway, so clamping changes nothing visible.
_EXP_MAX = {2: 11.0, 4: 88.0, 8: 709.0}


def sigmoid_(y: np.ndarray) -> np.ndarray:
    """Logistic function in place on a C-contiguous float array that the caller owns: the
    SIMD kernel for float32; otherwise e / (1 + e) with e = exp(min(y, cap)), which cannot
    overflow and keeps full relative precision for very negative inputs."""
    if y.dtype == np.float32:
        _kernels.activate(2, 0.0, 0.0, y.reshape(-1))
        return y
    np.minimum(y, _EXP_MAX[y.itemsize], out=y)
    np.exp(y, out=y)
    return np.divide(y, y + 1, out=y)


def _float(x):
    if x.dtype.kind != "f":
        raise ValueError(f"input must be a floating-point tensor; got {x.dtype}")


# Activations that are several NumPy passes run as one pass of the engine's SIMD activation
# kernel (the one the recurrent cells use; ONNX Runtime's semantics) on float32 data: codes
# from layers.py ACTIVATIONS. Other float types take the NumPy formula.
_C_CODES = {"Sigmoid": 2, "LeakyRelu": 4, "ThresholdedRelu": 5, "HardSigmoid": 7, "Softsign": 9}


def activation(kind: str, alpha: float, beta: float, numpy_fn):
    """``f(x) -> (y,)``: a fresh contiguous copy activated in place by the C kernel for float32,
    ``numpy_fn(x)`` for other float dtypes."""
    code, act = _C_CODES[kind], _kernels.activate

    def f(x):
        if x.dtype == np.float32:
            y = x.copy()
            act(code, alpha, beta, y.reshape(-1))
            return (y,)
        if x.dtype.kind != "f":
            _float(x)
        return (numpy_fn(x),)
    return f


def _sigmoid_np(x):
    return sigmoid_(np.array(x, order="C"))


@op("Sigmoid")
def _sigmoid(a, opset, n_in, n_out):
    return activation("Sigmoid", 0.0, 0.0, _sigmoid_np)


@op("LeakyRelu")
def _leaky_relu(a, opset, n_in, n_out):
    alpha = a.float("alpha", 0.01)
    return activation("LeakyRelu", alpha, 0.0, lambda x: np.where(x < 0, x * alpha, x))


@op("PRelu", inputs=(2, 2))
def _prelu(a, opset, n_in, n_out):
    def f(x, slope):
        same_dtype(x, slope, "slope")
        if x.shape != slope.shape:
            check_broadcast(x, slope)
        return (np.where(x < 0, x * slope, x),)
    return f


@op("Elu", "Selu", "Celu")
def _elu(a, opset, n_in, n_out):
    kind = a.node.op_type
    if kind == "Selu":
        alpha, gamma = a.float("alpha", 1.67326319217681884765625), a.float(
            "gamma", 1.05070102214813232421875)
    else:
        alpha, gamma = a.float("alpha", 1.0), 1.0

    def f(x):
        _float(x)
        neg = np.expm1(np.minimum(x, 0) / alpha if kind == "Celu" else np.minimum(x, 0))
        y = np.where(x > 0, x, neg * alpha)
        if kind == "Selu":
            y *= gamma
        return (y.astype(x.dtype, copy=False),)
    return f


@op("ThresholdedRelu")
def _thresholded_relu(a, opset, n_in, n_out):
    alpha = a.float("alpha", 1.0)
    return activation("ThresholdedRelu", alpha, 0.0,
                      lambda x: np.where(x > alpha, x, 0).astype(x.dtype))


def _hard_sigmoid_np(alpha, beta):
    def f(x):
        y = np.multiply(x, alpha, out=ARRAY)
        y += beta
        return np.clip(y, 0, 1, out=y)
    return f


@op("HardSigmoid")
def _hard_sigmoid(a, opset, n_in, n_out):
    alpha, beta = a.float("alpha", 0.2), a.float("beta", 0.5)
    return activation("HardSigmoid", alpha, beta, _hard_sigmoid_np(alpha, beta))


@op("HardSwish")
def _hard_swish(a, opset, n_in, n_out):
    hard_sigmoid = _hard_sigmoid_np(1.0 / 6, 0.5)

    def f(x):
        _float(x)
        return (np.multiply(hard_sigmoid(x), x, out=ARRAY),)
    return f


@op("Softplus")
def _softplus(a, opset, n_in, n_out):
    def f(x):
        _float(x)
        return (np.logaddexp(x, 0, out=ARRAY),)
    return f


@op("Mish")
def _mish(a, opset, n_in, n_out):
    def f(x):
        _float(x)
        return (np.multiply(x, np.tanh(np.logaddexp(x, 0)), out=ARRAY),)
    return f


@op("IsInf")
def _is_inf(a, opset, n_in, n_out):
    pos, neg = a.flag("detect_positive", 1), a.flag("detect_negative", 1)

    def f(x):
        _float(x)
        y = np.isinf(x, out=ARRAY)
        if not pos:
            y &= x < 0
        if not neg:
            y &= x > 0
        return (y,)
    return f


@op("Softsign")
def _softsign(a, opset, n_in, n_out):
    return activation("Softsign", 0.0, 0.0,
                      lambda x: np.divide(x, 1 + np.abs(x), out=ARRAY))


@op("Clip", inputs=(1, 3))
def _clip(a, opset, n_in, n_out):
    a.inputs_before(opset, 11, n_in, 1)
    if opset < 11:
        lo, hi = a.float("min", None), a.float("max", None)

        def f(x):
            y = x if lo is None else np.maximum(x, lo)
            return (np.minimum(y, hi, out=ARRAY) if hi is not None else np.array(y),)
        return f

    def g(x, lo=None, hi=None):
        # With min > max every value becomes max, as ONNX specifies.
        for v, what in ((lo, "min"), (hi, "max")):
            if v is not None and (v.size != 1 or v.dtype != x.dtype):
                raise ValueError(f"input {what} must be a single {x.dtype} value; got "
                                 f"{v.dtype}{v.shape}")
        y = x if lo is None else np.maximum(x, lo.reshape(()))
        return (np.minimum(y, hi.reshape(()), out=ARRAY) if hi is not None else np.array(y),)
    return g


def _variadic(ufunc, mean=False):
    def f(*xs):
        for x in xs[1:]:
            same_dtype(xs[0], x, "operand")
        check_broadcast(*xs)
        y = functools.reduce(ufunc, xs)
        if mean:
            y = y / len(xs)
        return (np.asarray(y, dtype=xs[0].dtype),)
    return f


@op("Max", "Min", "Sum", "Mean", inputs=(1, 2**31))
def _max_min(a, opset, n_in, n_out):
    kind = a.node.op_type
    ufunc = {"Max": np.maximum, "Min": np.minimum, "Sum": np.add, "Mean": np.add}[kind]
    return _variadic(ufunc, kind == "Mean")


@op("Where", inputs=(3, 3))
def _where(a, opset, n_in, n_out):
    def f(c, x, y):
        _need_bool(c, "condition")
        same_dtype(x, y, "Y")
        if not c.shape == x.shape == y.shape:
            check_broadcast(c, x, y)
        return (np.where(c, x, y),)
    return f


# erf: a Taylor series near zero (relative error < 1e-10 for |x| < 0.5) and the Numerical
# Recipes erfc Chebyshev fit elsewhere (relative error < 1.2e-7), both in float64. NumPy has
# no erf and SciPy is not a dependency.
_TAYLOR = [1.0, -1 / 3, 1 / 10, -1 / 42, 1 / 216, -1 / 1320, 1 / 9360, -1 / 75600]
_ERFC = [-1.26551223, 1.00002368, 0.37409196, 0.09678418, -0.18628806, 0.27886807,
         -1.13520398, 1.48851587, -0.82215223, 0.17087277]


def erf64(x: np.ndarray) -> np.ndarray:
    x = np.asarray(x, dtype=np.float64)
    x2 = x * x
    series = np.zeros_like(x)
    for c in reversed(_TAYLOR):
        series = series * x2 + c
    series *= x * (2 / np.sqrt(np.pi))
    z = np.abs(x)
    t = 1 / (1 + 0.5 * z)
    poly = np.zeros_like(x)
    for c in reversed(_ERFC[1:]):
        poly = (poly + c) * t
    erfc = t * np.exp(-x2 + _ERFC[0] + poly)
    far = np.copysign(1 - erfc, x)
    return np.where(z < 0.5, series, far)


@op("Erf")
def _erf(a, opset, n_in, n_out):
    def f(x):
        _float(x)
        return (np.asarray(erf64(x).astype(x.dtype)),)
    return f


@op("Gelu")
def _gelu(a, opset, n_in, n_out):
    tanh = a.choice("approximate", ("none", "tanh"), "none") == "tanh"

    def f(x):
        _float(x)
        x64 = x.astype(np.float64)
        if tanh:
            inner = np.tanh(np.sqrt(2 / np.pi) * (x64 + 0.044715 * x64 ** 3))
        else:
            inner = erf64(x64 / np.sqrt(2))
        return (np.asarray((0.5 * x64 * (1 + inner)).astype(x.dtype)),)
    return f

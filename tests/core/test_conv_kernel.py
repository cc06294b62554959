"""The C Conv1d kernel (``rnnengine.core.conv``, include/rnnengine/conv.h) against a float64 NumPy
reference, and graphs whose Conv (+ Relu) runs on it (``ops.compiled_conv``) against ONNX
Runtime."""
from __future__ import annotations

import os
import shutil
import subprocess

import numpy as np
import pytest
from onnx import TensorProto, helper, numpy_helper

import rnnengine
from rnnengine.core import conv as _conv
from rnnengine.ops import compiled_conv
import conftest
from session_models import ort_session

RTOL = 1e-5


def reference(x, w, b, stride, dilation, pad_begin, pad_end, relu):
    """float64 direct convolution: every output position as an explicit sum."""
    x, w = x.astype(np.float64), w.astype(np.float64)
    N, C, L = x.shape
    M, _, KW = w.shape
    xp = np.concatenate([np.zeros((N, C, pad_begin)), x, np.zeros((N, C, pad_end))], 2)
    Lout = (L + pad_begin + pad_end - (KW - 1) * dilation - 1) // stride + 1
    y = np.zeros((N, M, Lout))
    for o in range(Lout):
        window = xp[:, :, o * stride + np.arange(KW) * dilation]       # (N, C, KW)
        y[:, :, o] = np.einsum("nck,mck->nm", window, w)
    if b is not None:
        y += b.astype(np.float64)[None, :, None]
    return np.maximum(y, 0) if relu else y


def test_panel_width_follows_the_active_isa(isa):
    """Weights are packed for the variant the recurrent kernels run, so a forced variant
    (RNNENGINE_ISA, set_isa) reaches the convolutions too."""
    assert _conv.best_width() == {"serial": 8, "neon": 8, "avx2": 16, "avx512": 32,
                                  "amx": 32}[isa]
    assert _conv.Conv1d(np.ones((2, 3, 1), np.float32), None, 1, 1, 0, 0, False).width == \
        _conv.best_width()


def widths():
    """Every panel width (ISA variant) this machine runs: 8 portable, 16 AVX2, 32 AVX-512."""
    best = _conv.best_width()
    return [w for w in (8, 16, 32) if w <= best]


# (N, C, L, M, KW, stride, dilation, pad_begin, pad_end)
SHAPES = [
    (1, 1, 576, 258, 256, 128, 1, 0, 0),     # Silero's STFT
    (1, 129, 3, 128, 3, 1, 1, 1, 1),         # Silero's first encoder conv
    (16, 128, 3, 64, 3, 2, 1, 1, 1),         # stride 2 at batch 16
    (1, 64, 1, 128, 3, 1, 1, 1, 1),          # one output position
    (3, 5, 17, 33, 4, 2, 3, 2, 1),           # odd sizes, dilation, uneven pads
    (7, 3, 31, 70, 5, 3, 2, 4, 0),           # many column groups and a partial one
    (2, 7, 9, 1, 1, 1, 1, 0, 0),             # 1x1, one output channel
    (5, 2, 4, 17, 7, 1, 1, 3, 3),            # kernel longer than the input
    (2, 3, 10, 9, 2, 1, 4, 0, 5),            # end padding only
    (5, 3, 100, 20, 3, 1, 1, 1, 1),          # 500 positions: columns gathered in chunks
]


@pytest.mark.parametrize("width", widths())
@pytest.mark.parametrize("shape", SHAPES)
@pytest.mark.parametrize("bias,relu", [(True, True), (True, False), (False, True),
                                       (False, False)])
def test_kernel_matches_float64_reference(width, shape, bias, relu):
    N, C, L, M, KW, s, d, pb, pe = shape
    rng = np.random.default_rng(hash((shape, bias, relu)) % 2**32)
    x = rng.standard_normal((N, C, L)).astype(np.float32)
    w = rng.standard_normal((M, C, KW)).astype(np.float32)
    b = rng.standard_normal(M).astype(np.float32) if bias else None
    conv = _conv.Conv1d(w, b, s, d, pb, pe, relu, width=width)
    y = conv(x)
    want = reference(x, w, b, s, d, pb, pe, relu)
    assert y.shape == want.shape and y.dtype == np.float32
    scale = np.abs(want).max() + 1e-30
    assert np.abs(y - want).max() <= RTOL * scale
    # a non-contiguous input (a strided view) gives the same result
    wide = np.zeros((N, C, 2 * L), np.float32)
    wide[:, :, ::2] = x
    assert np.array_equal(conv(wide[:, :, ::2]), y)


def test_default_width_matches_reference_for_streaming_and_batched_calls():
    # the default packs two widths on AVX-512 (narrow for a few positions, wide otherwise)
    rng = np.random.default_rng(3)
    w = rng.standard_normal((40, 6, 3)).astype(np.float32)
    b = rng.standard_normal(40).astype(np.float32)
    conv = _conv.Conv1d(w, b, 1, 1, 1, 1, True)
    for N, L in ((1, 1), (1, 5), (2, 3), (9, 8)):
        x = rng.standard_normal((N, 6, L)).astype(np.float32)
        want = reference(x, w, b, 1, 1, 1, 1, True)
        assert np.abs(conv(x) - want).max() <= RTOL * np.abs(want).max()


def test_relu_keeps_nan_and_empty_batch():
    w = np.ones((2, 1, 1), np.float32)
    conv = _conv.Conv1d(w, None, 1, 1, 0, 0, True)
    y = conv(np.array([[[np.nan, -1.0, 2.0]]], np.float32))
    assert np.isnan(y[0, :, 0]).all() and (y[0, :, 1] == 0).all() and (y[0, :, 2] == 2).all()
    assert conv(np.zeros((0, 1, 3), np.float32)).shape == (0, 2, 3)


@pytest.mark.parametrize("bad,match", [
    (np.zeros((1, 4, 5), np.float64), "float32"),
    (np.zeros((4, 5), np.float32), "float32"),
    (np.zeros((1, 3, 5), np.float32), r"\(N, 4, L\)"),
    ([[[0.0] * 5] * 4], "float32"),
    (np.zeros((1, 4, 1), np.float32), "does not fit"),
])
def test_bad_input_raises_before_c(bad, match):
    conv = _conv.Conv1d(np.ones((2, 4, 3), np.float32), None, 1, 1, 0, 0, False)
    with pytest.raises(ValueError, match=match):
        conv(bad)


@pytest.mark.parametrize("args,match", [
    ((np.ones((2, 4), np.float32), None, 1, 1, 0, 0, False), "M, C, KW"),
    ((np.ones((2, 4, 3), np.float32), np.ones(3, np.float32), 1, 1, 0, 0, False),
     "2 elements"),
    ((np.ones((2, 4, 3), np.float32), None, 0, 1, 0, 0, False), "stride"),
    ((np.ones((2, 4, 3), np.float32), None, 1, 1, -1, 0, False), "pads"),
    ((np.ones((2, 4, 3), np.float32), None, 1, 1, 0, 0, False, 12), "width"),
])
def test_bad_construction_raises(args, match):
    with pytest.raises(ValueError, match=match):
        _conv.Conv1d(*args)


# -- graphs --------------------------------------------------------------------------------

ort = pytest.importorskip("onnxruntime")


def conv_model(x_shape, w, b, relu, dtype=TensorProto.FLOAT, w_input=False, **attrs):
    inits = [] if w_input else [numpy_helper.from_array(w, "w")]
    inputs = [helper.make_tensor_value_info("x", dtype, list(x_shape))]
    if w_input:
        inputs.append(helper.make_tensor_value_info("w", dtype, list(w.shape)))
    names = ["x", "w"]
    if b is not None:
        inits.append(numpy_helper.from_array(b, "b"))
        names.append("b")
    nodes = [helper.make_node("Conv", names, ["c" if relu else "y"], **attrs)]
    if relu:
        nodes.append(helper.make_node("Relu", ["c"], ["y"]))
    graph = helper.make_graph(nodes, "g", inputs, [helper.make_tensor_value_info(
        "y", dtype, None)], inits)
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 15)]).SerializeToString()


def fused_labels(sess):
    return [label for label in sess.plan.labels if label.startswith("fused")]


@pytest.mark.parametrize("attrs", [
    dict(kernel_shape=[3], pads=[1, 1]),
    dict(strides=[2], pads=[2, 1], dilations=[2]),
    dict(auto_pad="SAME_UPPER", strides=[2]),
    dict(auto_pad="SAME_LOWER"),
    dict(auto_pad="VALID", strides=[3]),
])
@pytest.mark.parametrize("relu", [True, False])
@pytest.mark.parametrize("bias", [True, False])
def test_graph_conv_runs_in_c_and_matches_ort(attrs, relu, bias):
    rng = np.random.default_rng(7)
    w = rng.standard_normal((11, 5, 3)).astype(np.float32)
    b = rng.standard_normal(11).astype(np.float32) if bias else None
    model = conv_model(("N", 5, "L"), w, b, relu, **attrs)
    sess = rnnengine.InferenceSession(model)
    assert len(fused_labels(sess)) == 1 and len(sess.plan.steps) == 1
    for N, L in ((1, 9), (4, 16), (2, 7)):   # new lengths: auto_pad's pads change
        x = rng.standard_normal((N, 5, L)).astype(np.float32)
        (want,) = ort_session(model).run(None, {"x": x})
        (got,) = sess.run(None, {"x": x})
        assert got.shape == want.shape
        assert np.abs(got - want).max() <= 1e-4 * max(1.0, np.abs(want).max())


@pytest.mark.parametrize("x_shape,w_shape,attrs", [
    (("N", 6, "H", "W"), (8, 3, 3, 3), dict(group=2, pads=[1, 2, 0, 1], strides=[2, 1])),
    (("N", 4, "H", "W"), (4, 1, 3, 2), dict(group=4, auto_pad="SAME_UPPER", strides=[1, 2])),
    (("N", 3, "H", "W"), (5, 3, 2, 3), dict(auto_pad="SAME_LOWER", strides=[2, 2])),
    (("N", 3, "H", "W"), (5, 3, 2, 3), dict(auto_pad="VALID", dilations=[2, 1])),
    (("N", 6, "L"), (9, 2, 4), dict(group=3, pads=[2, 0], strides=[2], dilations=[2])),
])
@pytest.mark.parametrize("relu", [True, False])
def test_graph_conv2d_and_grouped_run_in_c_and_match_ort(x_shape, w_shape, attrs, relu):
    """2-D and grouped 1-D convolutions in a graph's general path run on Conv2d (a fused
    step), each new input shape (auto_pad's pads change with it) against ONNX Runtime."""
    rng = np.random.default_rng(17)
    w = rng.standard_normal(w_shape).astype(np.float32)
    b = rng.standard_normal(w_shape[0]).astype(np.float32)
    model = conv_model(x_shape, w, b, relu, **attrs)
    sess = rnnengine.InferenceSession(model)
    assert len(fused_labels(sess)) == 1 and len(sess.plan.steps) == 1
    spatial = [(5, 9), (7, 20), (4, 13)] if len(x_shape) == 4 else [(9,), (30,), (8,)]
    for N, sp in zip((1, 3, 2), spatial):       # each shape's first call: the general path
        x = rng.standard_normal((N, x_shape[1], *sp)).astype(np.float32)
        (want,) = ort_session(model).run(None, {"x": x})
        (got,) = sess.run(None, {"x": x})
        assert got.shape == want.shape
        assert np.abs(got - want).max() <= 1e-4 * max(1.0, np.abs(want).max())


def test_graph_conv_other_dtype_and_bad_shape_take_the_numpy_path():
    rng = np.random.default_rng(8)
    w64 = rng.standard_normal((4, 3, 2))
    model = conv_model((1, 3, 6), w64, None, True, dtype=TensorProto.DOUBLE, pads=[1, 0])
    sess = rnnengine.InferenceSession(model)   # float64 weights: not compiled (ORT has no
    x = rng.standard_normal((1, 3, 6))         # float64 Conv; the reference stands in)
    assert not fused_labels(sess)
    want = reference(x, w64, None, 1, 1, 1, 0, True)
    assert np.allclose(sess.run(None, {"x": x})[0], want, rtol=1e-10)
    w = w64.astype(np.float32)
    fn = compiled_conv(helper.make_model(helper.make_graph(
        [helper.make_node("Conv", ["x", "w"], ["y"])], "g", [], [])).graph.node,
        {"w": w}.get)
    with pytest.raises(ValueError, match="Conv node"):
        fn(np.zeros((1, 2, 6), np.float32))        # 2 channels, W wants 3
    with pytest.raises(ValueError, match="dtype"):  # the NumPy path names the mismatch
        fn(np.ones((1, 3, 6), np.float64))


def test_graph_conv_output_too_large_is_refused():
    w = np.ones((4096, 1, 1), np.float32)
    fn = compiled_conv(helper.make_model(helper.make_graph(
        [helper.make_node("Conv", ["x", "w"], ["y"])], "g", [], [])).graph.node, {"w": w}.get)
    with pytest.raises(ValueError, match="refused"):   # 4096 x 2^20 outputs
        fn(np.ones((1, 1, 1 << 20), np.float32))


def test_graph_conv_with_weights_as_input_is_not_compiled():
    rng = np.random.default_rng(9)
    w = rng.standard_normal((4, 3, 2)).astype(np.float32)
    model = conv_model((2, 3, 6), w, None, True, w_input=True)
    sess = rnnengine.InferenceSession(model)
    assert not fused_labels(sess)
    x = rng.standard_normal((2, 3, 6)).astype(np.float32)
    got = sess.run(None, {"x": x, "w": w})[0]
    want = ort_session(model).run(None, {"x": x, "w": w})[0]
    assert np.abs(got - want).max() <= 1e-5 * np.abs(want).max()


def test_relu_read_elsewhere_is_not_fused():
    rng = np.random.default_rng(10)
    w = rng.standard_normal((4, 3, 2)).astype(np.float32)
    graph = helper.make_graph(
        [helper.make_node("Conv", ["x", "w"], ["c"]), helper.make_node("Relu", ["c"], ["y"]),
         helper.make_node("Neg", ["c"], ["z"])], "g",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 3, 5])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, None),
         helper.make_tensor_value_info("z", TensorProto.FLOAT, None)],
        [numpy_helper.from_array(w, "w")])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 15)])
    model = model.SerializeToString()
    sess = rnnengine.InferenceSession(model)
    assert len(fused_labels(sess)) == 1 and "Relu" not in fused_labels(sess)[0]
    x = rng.standard_normal((1, 3, 5)).astype(np.float32)
    for got, want in zip(sess.run(None, {"x": x}), ort_session(model).run(None, {"x": x})):
        assert np.abs(got - want).max() <= 1e-5 * np.abs(want).max()


# -- the portable builds -------------------------------------------------------------------

C_CHECK = r"""
#include <math.h>
#include <stdio.h>
#include "rnnengine/conv.h"

/* max relative error of rnn_conv1d (width 8: the portable variant) against double loops */
static double check(size_t N, size_t C, size_t L, size_t M, size_t KW, size_t s, size_t d,
                    size_t pb, size_t pe, int relu, unsigned seed) {
    rnn_conv1d_t cv = {N, C, L, M, KW, s, d, pb, 0, relu};
    cv.Lout = (L + pb + pe - (KW - 1) * d - 1) / s + 1;
    const size_t CK = C * KW, wn = rnn_conv_packed_size(M, CK, 8);
    const size_t bn = rnn_conv_panels(M, 8) * 8;
    float *x = malloc(N * C * L * 4), *w = malloc(M * CK * 4), *b = malloc(M * 4);
    float *wp = malloc(wn * 4), *bp = malloc(bn * 4), *y = malloc(N * M * cv.Lout * 4);
    for (size_t i = 0; i < N * C * L; i++) x[i] = (float)((seed = seed * 1103515245u + 12345u) % 2001) / 1000.0f - 1.0f;
    for (size_t i = 0; i < M * CK; i++) w[i] = (float)((seed = seed * 1103515245u + 12345u) % 2001) / 1000.0f - 1.0f;
    for (size_t i = 0; i < M; i++) b[i] = (float)i / (float)M - 0.5f;
    rnn_conv_pack(w, b, M, CK, 8, wp, wn, bp, bn);
    if (rnn_conv1d(&cv, x, N * C * L, wp, wn, bp, bn, 8, y, N * M * cv.Lout)) return 1e9;
    double err = 0, top = 1e-30;
    for (size_t n = 0; n < N; n++)
        for (size_t m = 0; m < M; m++)
            for (size_t o = 0; o < cv.Lout; o++) {
                double acc = b[m];
                for (size_t c = 0; c < C; c++)
                    for (size_t k = 0; k < KW; k++) {
                        const long t = (long)(o * s + k * d) - (long)pb;
                        if (t >= 0 && t < (long)L) acc += (double)w[(m * C + c) * KW + k] * x[(n * C + c) * L + t];
                    }
                if (relu && acc < 0) acc = 0;
                const double e = fabs(acc - y[(n * M + m) * cv.Lout + o]);
                err = e > err ? e : err;
                top = fabs(acc) > top ? fabs(acc) : top;
            }
    free(x); free(w); free(b); free(wp); free(bp); free(y);
    return err / top;
}

int main(void) {
    double worst = 0, e;
    e = check(1, 1, 576, 258, 256, 128, 1, 0, 0, 0, 1); worst = e > worst ? e : worst;
    e = check(3, 5, 17, 33, 4, 2, 3, 2, 1, 1, 2); worst = e > worst ? e : worst;
    e = check(7, 3, 31, 70, 5, 3, 2, 4, 0, 1, 3); worst = e > worst ? e : worst;
    e = check(16, 64, 2, 64, 3, 2, 1, 1, 1, 1, 4); worst = e > worst ? e : worst;
    printf("%.3e\n", worst);
    return 0;
}
"""


def build_c(tmp_path, source, flags):
    """``source`` compiled against include/ with ``flags``: the executable's path and the
    environment to run it in."""
    cc = shutil.which(os.environ.get("CC", "cc")) or shutil.which("gcc")
    include = os.path.join(conftest.ROOT, "include")
    if cc is None or not os.path.isdir(include):
        pytest.skip("no C compiler or no include/ (an installed package)")
    src, exe = tmp_path / "check.c", tmp_path / "check"
    src.write_text(source)
    env = dict(os.environ)
    env.pop("LD_PRELOAD", None)   # a sanitizer run: the compiler itself runs without it
    built = subprocess.run([cc, "-O2", "-std=c11", "-Wall", "-Werror", "-I", include, *flags,
                            str(src), "-o", str(exe), "-lm"], capture_output=True, text=True,
                           env=env, timeout=300)
    assert built.returncode == 0, built.stderr[-3000:]
    return str(exe), env


@pytest.mark.parametrize("flags", [["-DRNN_X86=0"], ["-DRNN_X86=0", "-DRNN_CONV_VECTORS=0"]],
                         ids=["portable-vectors", "portable-plain-loops"])
def test_portable_builds_match_reference(tmp_path, flags):
    """conv.h as ARM (-DRNN_X86=0) and a compiler without generic vectors would build it."""
    exe, env = build_c(tmp_path, C_CHECK, flags)
    done = subprocess.run([exe], capture_output=True, text=True, env=env, timeout=120)
    assert done.returncode == 0, done.stderr[-3000:]
    assert float(done.stdout) <= RTOL


C_ASSERTS = r"""
#include <string.h>
#include "rnnengine/conv.h"

/* A 2 -> 3 channel conv, kernel 2, input length 4 (Lout 3); argv[1] names the buffer
 * handed over one float short. */
int main(int argc, char **argv) {
    rnn_conv1d_t cv = {1, 2, 4, 3, 2, 1, 1, 0, 3, 0};
    const size_t wn = rnn_conv_packed_size(3, 4, 8), bn = rnn_conv_panels(3, 8) * 8;
    static float x[8], w[12], wp[64], bp[8], y[9];
    const char *which = argc > 1 ? argv[1] : "";
    rnn_conv_pack(w, NULL, 3, 4, 8, wp, wn, bp, bn);
    return rnn_conv1d(&cv, x, 8 - !strcmp(which, "x"), wp, wn - !strcmp(which, "w"), bp,
                      bn - !strcmp(which, "b"), 8, y, 9 - !strcmp(which, "y"));
}
"""


@pytest.mark.parametrize("short", ["x", "w", "b", "y"])
def test_debug_build_asserts_buffer_sizes(tmp_path, short):
    """A debug build (RNNENGINE_DEBUG, as tools/sanitize.sh builds) stops on a buffer whose
    size does not fit the convolution; the right sizes run."""
    exe, env = build_c(tmp_path, C_ASSERTS, ["-DRNNENGINE_DEBUG=1"])
    assert subprocess.run([exe], capture_output=True, env=env, timeout=60).returncode == 0
    done = subprocess.run([exe, short], capture_output=True, text=True, env=env, timeout=60)
    assert done.returncode != 0 and "internal check failed" in done.stderr


# -- the 2-D kernel (include/rnnengine/conv2d.h) ---------------------------------------------

def random_conv2d_cases(count, seed):
    """(N, C, H, W, M, group, KH, KW, strides, dilations, pads (t, l, b, r), bias, relu):
    groups (depthwise among them), strides, dilations, asymmetric pads, empty batches; every
    kernel fits its padded input."""
    rng = np.random.default_rng(seed)
    cases = []
    while len(cases) < count:
        group = int(rng.choice([1, 1, 2, 3, 4]))
        cg, cog = int(rng.integers(1, 5)), int(rng.choice([1, 2, 3, 5, 8, 9, 16, 17]))
        if rng.random() < 0.25:
            cg, cog, group = 1, int(rng.choice([1, 2])), int(rng.integers(2, 9))  # depthwise
        KH, KW = int(rng.integers(1, 5)), int(rng.integers(1, 6))
        strides = (int(rng.integers(1, 4)), int(rng.integers(1, 4)))
        dil = (int(rng.integers(1, 4)), int(rng.integers(1, 4)))
        pads = tuple(int(p) for p in rng.integers(0, 4, 4))
        H, W = int(rng.integers(1, 12)), int(rng.integers(1, 70))
        if (H + pads[0] + pads[2] < (KH - 1) * dil[0] + 1
                or W + pads[1] + pads[3] < (KW - 1) * dil[1] + 1):
            continue
        N = int(rng.choice([0, 1, 1, 2, 3]))
        cases.append((N, group * cg, H, W, group * cog, group, KH, KW, strides, dil, pads,
                      bool(rng.random() < 0.7), bool(rng.random() < 0.5)))
    return cases


def conv2d_model(x_shape, w, b, relu, **attrs):
    nodes = [helper.make_node("Conv", ["x", "w"] + (["b"] if b is not None else []),
                              ["c" if relu else "y"], **attrs)]
    if relu:
        nodes.append(helper.make_node("Relu", ["c"], ["y"]))
    inits = [numpy_helper.from_array(w, "w")] + ([numpy_helper.from_array(b, "b")]
                                                  if b is not None else [])
    graph = helper.make_graph(nodes, "g", [helper.make_tensor_value_info(
        "x", TensorProto.FLOAT, list(x_shape))], [helper.make_tensor_value_info(
            "y", TensorProto.FLOAT, None)], inits)
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)]).SerializeToString()


@pytest.mark.parametrize("case", random_conv2d_cases(40, 11), ids=lambda c: "x".join(
    map(str, c[:8])))
def test_conv2d_kernel_matches_ort(case, isa):
    """Conv2d on every ISA variant this CPU runs, against ONNX Runtime's Conv (+ Relu)."""
    N, C, H, W, M, group, KH, KW, strides, dil, pads, bias, relu = case
    rng = np.random.default_rng(abs(hash(case)) % 2**32)
    x = rng.standard_normal((N, C, H, W)).astype(np.float32)
    w = rng.standard_normal((M, C // group, KH, KW)).astype(np.float32)
    b = rng.standard_normal(M).astype(np.float32) if bias else None
    conv = _conv.Conv2d(w, b, strides, dil, pads, group, relu)
    y = conv(x)
    Ho = (H + pads[0] + pads[2] - (KH - 1) * dil[0] - 1) // strides[0] + 1
    Wo = (W + pads[1] + pads[3] - (KW - 1) * dil[1] - 1) // strides[1] + 1
    assert y.shape == (N, M, Ho, Wo) and y.dtype == np.float32
    assert conv.out_shape(H, W) == (Ho, Wo)
    if N == 0:
        return
    model = conv2d_model(x.shape, w, b, relu, group=group, strides=list(strides),
                         dilations=list(dil), pads=list(pads), kernel_shape=[KH, KW])
    (want,) = ort_session(model).run(None, {"x": x})
    assert np.abs(y - want).max() <= 1e-5 * max(1.0, np.abs(want).max())
    # a non-contiguous input gives the same result
    wide = np.zeros((N, C, H, 2 * W), np.float32)
    wide[..., ::2] = x
    assert np.array_equal(conv(wide[..., ::2]), y)


@pytest.mark.parametrize("case", random_conv2d_cases(12, 12)[:12], ids=lambda c: "x".join(
    map(str, c[:8])))
@pytest.mark.parametrize("upsample", [(2, 1), (1, 3), (3, 2)])
def test_conv2d_upsampled_input_matches_ort(case, upsample, isa):
    """With upsampling the kernel convolves the input spread out (zeros between its rows and
    columns), what ONNX Runtime's Conv gives on the spread input."""
    N, C, H, W, M, group, KH, KW, strides, dil, pads, bias, relu = case
    rng = np.random.default_rng(abs(hash((case, upsample))) % 2**32)
    x = rng.standard_normal((max(N, 1), C, H, W)).astype(np.float32)
    spread = np.zeros((x.shape[0], C, (H - 1) * upsample[0] + 1, (W - 1) * upsample[1] + 1),
                      np.float32)
    spread[:, :, ::upsample[0], ::upsample[1]] = x
    w = rng.standard_normal((M, C // group, KH, KW)).astype(np.float32)
    b = rng.standard_normal(M).astype(np.float32) if bias else None
    conv = _conv.Conv2d(w, b, strides, dil, pads, group, relu, upsample=upsample)
    y = conv(x)
    model = conv2d_model(spread.shape, w, b, relu, group=group, strides=list(strides),
                         dilations=list(dil), pads=list(pads), kernel_shape=[KH, KW])
    (want,) = ort_session(model).run(None, {"x": spread})
    assert y.shape == want.shape == (x.shape[0], M, *conv.out_shape(H, W))
    assert np.abs(y - want).max() <= 1e-5 * max(1.0, np.abs(want).max())


def test_conv2d_relu_keeps_nan():
    conv = _conv.Conv2d(np.ones((2, 1, 1, 1), np.float32), None, (1, 1), (1, 1),
                        (0, 0, 0, 0), 1, True)
    x = np.array([[[[np.nan, -1.0, 2.0] * 7]]], np.float32)
    y = conv(x)
    assert np.isnan(y[0, :, 0, 0::3]).all() and (y[0, :, 0, 1::3] == 0).all()
    assert (y[0, :, 0, 2::3] == 2).all()


@pytest.mark.parametrize("bad,match", [
    (np.zeros((1, 4, 5, 5), np.float64), "float32"),
    (np.zeros((4, 5, 5), np.float32), "float32"),
    ([[[[0.0] * 5] * 5] * 4], "float32"),
    (np.zeros((1, 3, 5, 5), np.float32), r"\(N, 4, H, W\)"),
    (np.zeros((1, 4, 1, 5), np.float32), "does not fit"),
])
def test_conv2d_bad_input_raises_before_c(bad, match):
    conv = _conv.Conv2d(np.ones((2, 2, 3, 3), np.float32), None, (1, 1), (1, 1),
                        (0, 1, 0, 1), 2, False)
    with pytest.raises(ValueError, match=match):
        conv(bad)


@pytest.mark.parametrize("args,match", [
    ((np.ones((2, 4, 3), np.float32), None, (1, 1), (1, 1), (0,) * 4, 1, False), "KH, KW"),
    ((np.ones((2, 4, 3, 3), np.float32), np.ones(3, np.float32), (1, 1), (1, 1), (0,) * 4, 1,
      False), "2 elements"),
    ((np.ones((2, 4, 3, 3), np.float32), None, (0, 1), (1, 1), (0,) * 4, 1, False), "strides"),
    ((np.ones((2, 4, 3, 3), np.float32), None, (1, 1), (1, 0), (0,) * 4, 1, False), "dilations"),
    ((np.ones((2, 4, 3, 3), np.float32), None, (1, 1), (1, 1), (0, 0, -1, 0), 1, False), "pads"),
    ((np.ones((2, 4, 3, 3), np.float32), None, (1, 1), (1, 1), (0,) * 4, 3, False), "group"),
    ((np.ones((2, 4, 3, 3), np.float32), None, (1, 1), (2 ** 62, 1), (0,) * 4, 1, False),
     "reach past"),
    ((np.ones((2, 4, 3, 3), np.float32), None, (1, 1), (1, 1), (0,) * 4, 1, False, (1, 0)),
     "upsampling"),
])
def test_conv2d_bad_construction_raises(args, match):
    with pytest.raises(ValueError, match=match):
        _conv.Conv2d(*args)


C2_CHECK = r"""
#include <math.h>
#include <stdio.h>
#include "rnnengine/conv2d.h"

static unsigned seed = 1;
static float rnd(void) {
    return (float)((seed = seed * 1103515245u + 12345u) % 2001) / 1000.0f - 1.0f;
}

/* max abs error of rnn_conv2d (the portable variant: isa 0) against double loops */
static double check(size_t N, size_t C, size_t H, size_t W, size_t M, size_t G, size_t KH,
                    size_t KW, size_t sh, size_t sw, size_t dh, size_t dw, size_t pt,
                    size_t pl, size_t pb, size_t pr, int relu) {
    rnn_conv2d_t cv = {N, C, H, W, M, G, KH, KW, sh, sw, dh, dw, pt, pl, 0, 0, relu, NULL, 1, 1};
    cv.Ho = (H + pt + pb - (KH - 1) * dh - 1) / sh + 1;
    cv.Wo = (W + pl + pr - (KW - 1) * dw - 1) / sw + 1;
    const size_t Cg = C / G, Cog = M / G, CK = Cg * KH * KW, yn = N * M * cv.Ho * cv.Wo;
    const size_t wn = rnn_conv2d_packed_size(G, Cog, CK), bn = rnn_conv2d_packed_bias(G, Cog);
    const size_t sn = rnn_conv2d_scratch_size(&cv);
    float *x = malloc(N * C * H * W * 4), *w = malloc(M * CK * 4), *b = malloc(M * 4);
    float *wp = malloc(wn * 4), *bp = malloc(bn * 4), *s = malloc(sn * 4), *y = malloc(yn * 4);
    for (size_t i = 0; i < N * C * H * W; i++) x[i] = rnd();
    for (size_t i = 0; i < M * CK; i++) w[i] = rnd();
    for (size_t i = 0; i < M; i++) b[i] = rnd();
    rnn_conv2d_pack(w, b, G, Cog, CK, wp, wn, bp, bn);
    if (rnn_conv2d(&cv, x, N * C * H * W, wp, wn, bp, bn, s, sn, y, yn, 0)) return 1e9;
    /* one float short anywhere: refused, nothing read or written past the buffers */
    if (rnn_conv2d(&cv, x, N * C * H * W - 1, wp, wn, bp, bn, s, sn, y, yn, 0) != -2
            || rnn_conv2d(&cv, x, N * C * H * W, wp, wn - 1, bp, bn, s, sn, y, yn, 0) != -2
            || rnn_conv2d(&cv, x, N * C * H * W, wp, wn, bp, bn - 1, s, sn, y, yn, 0) != -2
            || rnn_conv2d(&cv, x, N * C * H * W, wp, wn, bp, bn, s, sn - 1, y, yn, 0) != -2
            || rnn_conv2d(&cv, x, N * C * H * W, wp, wn, bp, bn, s, sn, y, yn - 1, 0) != -2)
        return 2e9;
    double err = 0;
    for (size_t n = 0; n < N; n++)
        for (size_t m = 0; m < M; m++)
            for (size_t oh = 0; oh < cv.Ho; oh++)
                for (size_t ow = 0; ow < cv.Wo; ow++) {
                    const size_t g = m / Cog;
                    double acc = b[m];
                    for (size_t c = 0; c < Cg; c++)
                        for (size_t kh = 0; kh < KH; kh++)
                            for (size_t kw = 0; kw < KW; kw++) {
                                const long ih = (long)(oh * sh + kh * dh) - (long)pt;
                                const long iw = (long)(ow * sw + kw * dw) - (long)pl;
                                if (ih >= 0 && ih < (long)H && iw >= 0 && iw < (long)W)
                                    acc += (double)w[((m * Cg + c) * KH + kh) * KW + kw]
                                           * x[((n * C + g * Cg + c) * H + ih) * W + iw];
                            }
                    if (relu && acc < 0) acc = 0;
                    const double e = fabs(acc - y[((n * M + m) * cv.Ho + oh) * cv.Wo + ow]);
                    err = e > err ? e : err;
                }
    free(x); free(w); free(b); free(wp); free(bp); free(s); free(y);
    return err;
}

int main(void) {
    double worst = 0, e;
    e = check(1, 16, 32, 100, 16, 1, 3, 3, 2, 1, 1, 1, 1, 1, 1, 1, 1); worst = fmax(e, worst);
    e = check(2, 6, 7, 37, 9, 3, 2, 3, 2, 3, 2, 2, 1, 2, 0, 1, 0); worst = fmax(e, worst);
    e = check(3, 8, 5, 19, 8, 8, 3, 3, 1, 2, 1, 1, 1, 1, 1, 1, 1); worst = fmax(e, worst);
    e = check(2, 4, 9, 9, 40, 2, 3, 5, 3, 2, 1, 1, 2, 3, 1, 0, 1); worst = fmax(e, worst);
    printf("%.3e\n", worst);
    return 0;
}
"""


@pytest.mark.parametrize("flags", [["-DRNN_X86=0"], ["-DRNN_X86=0", "-DRNN_CONV_VECTORS=0"]],
                         ids=["portable-vectors", "portable-plain-loops"])
def test_conv2d_portable_builds_match_reference_and_refuse_short_buffers(tmp_path, flags):
    """conv2d.h as ARM and a compiler without generic vectors would build it; every buffer
    handed over one float short is refused (-2)."""
    exe, env = build_c(tmp_path, C2_CHECK, flags + ["-Wno-unused-function"])
    done = subprocess.run([exe], capture_output=True, text=True, env=env, timeout=120)
    assert done.returncode == 0, done.stderr[-3000:]
    assert float(done.stdout) <= 1e-4

"""No silent wrong answers, no memory or time bombs in the whole-model runtime: folding at
load computes what the operators compute at run time, operators refuse what ONNX forbids,
an initializer that is also a graph input can be overridden, reduced precisions refuse
weights they cannot hold, and every allocation and every Loop runs under one budget.
ONNX Runtime on the same graph is the reference: where it refuses a graph, so do we."""

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper, numpy_helper

import rnnengine
from rnnengine import InferenceSession, ModelError
from conftest import interrupted
from rnnengine.core.conv import Conv1d
from session_models import graph_model, ort_session, value_info

ort = pytest.importorskip("onnxruntime")


def _ort_refuses(model, feeds, reason):
    """ONNX Runtime refuses the model for ``reason`` (a regex), not for a flaw of the test's."""
    with pytest.raises(Exception, match=reason):
        ort_session(model).run(None, feeds)


def _same(got, want):
    assert len(got) == len(want)
    for g, w in zip(got, want):
        assert g.dtype == w.dtype and g.shape == w.shape, (g.dtype, g.shape, w.dtype, w.shape)
        np.testing.assert_allclose(g, w, rtol=1e-6, atol=0)


# -- folding at load runs the operators the executor runs -----------------------------------

_X = np.arange(24, dtype=np.float32).reshape(2, 3, 4) - 7.5
_I = np.array([[7, -7, 9], [-9, 5, 100]], np.int32)

# (name, node, data input, other constant inputs): each is run once with every input an
# initializer (folded at load) and once with the data fed at run time.
_FOLD_CASES = [
    ("flatten_negative_axis", helper.make_node("Flatten", ["d"], ["y"], axis=-1), _X, []),
    ("flatten_axis_minus_two", helper.make_node("Flatten", ["d"], ["y"], axis=-2), _X, []),
    ("flatten_axis_rank", helper.make_node("Flatten", ["d"], ["y"], axis=3), _X, []),
    ("div_int_truncates", helper.make_node("Div", ["d", "b"], ["y"]), _I,
     [np.array([2, -2, 4], np.int32)]),
    ("mod_int", helper.make_node("Mod", ["d", "b"], ["y"]), _I,
     [np.array([2, -2, 7], np.int32)]),
    ("squeeze_negative", helper.make_node("Squeeze", ["d", "b"], ["y"]), _X[:1],
     [np.array([-3], np.int64)]),
    ("unsqueeze_negative", helper.make_node("Unsqueeze", ["d", "b"], ["y"]), _X,
     [np.array([-1, 0], np.int64)]),
    ("slice_negative_step", helper.make_node("Slice", ["d", "b", "e", "a", "s"], ["y"]), _X,
     [np.array([-1], np.int64), np.array([-100], np.int64), np.array([2], np.int64),
      np.array([-2], np.int64)]),
    ("gather_negative_index", helper.make_node("Gather", ["d", "b"], ["y"], axis=1), _X,
     [np.array([[-1, 0]], np.int64)]),
    ("expand", helper.make_node("Expand", ["d", "b"], ["y"]), _X[:, :1],
     [np.array([3, 2, 1, 4], np.int64)]),
    ("tile", helper.make_node("Tile", ["d", "b"], ["y"]), _X, [np.array([1, 2, 1], np.int64)]),
    ("split_uneven", helper.make_node("Split", ["d"], ["y", "z"], axis=-1, num_outputs=2),
     _X[..., :3], []),
    ("transpose", helper.make_node("Transpose", ["d"], ["y"], perm=[2, 0, 1]), _X, []),
    ("reshape_zero", helper.make_node("Reshape", ["d", "b"], ["y"]), _X,
     [np.array([0, -1], np.int64)]),
    ("cast_to_int", helper.make_node("Cast", ["d"], ["y"], to=TensorProto.INT32), _X, []),
    ("castlike", helper.make_node("CastLike", ["d", "b"], ["y"]), _X,
     [np.zeros(1, np.float16)]),
    ("concat_negative_axis", helper.make_node("Concat", ["d", "b"], ["y"], axis=-1), _X,
     [np.ones((2, 3, 1), np.float32)]),
    ("dequantize_per_axis", helper.make_node("DequantizeLinear", ["d", "b", "e"], ["y"],
                                             axis=1), _I.astype(np.int8)[:, :3],
     [np.array([0.5, 2.0, 0.25], np.float32), np.array([1, -3, 0], np.int8)]),
]


def _fold_models(node, data, others):
    names = ["d", "b", "e", "a", "s"][:1 + len(others)]
    consts = [numpy_helper.from_array(v, n) for n, v in zip(names[1:], others)]
    outs = [onnx.ValueInfoProto(name=o) for o in node.output]   # types left to inference
    elem = helper.np_dtype_to_tensor_dtype(data.dtype)
    folded = graph_model([node], [], outs, [numpy_helper.from_array(data, "d")] + consts, opset=18)
    run = graph_model([node], [value_info("d", list(data.shape), elem)], outs, consts, opset=18)
    return folded, run


@pytest.mark.parametrize("case", _FOLD_CASES, ids=[c[0] for c in _FOLD_CASES])
def test_folding_matches_ort_and_the_run_time_operator(case):
    _, node, data, others = case
    folded, run = _fold_models(node, data, others)
    want = ort_session(run).run(None, {"d": data})
    sess = InferenceSession(folded)
    assert sess.placement() == {}, "every node folds at load"
    _same(sess.run(None, {}), want)
    _same(InferenceSession(run).run(None, {"d": data}), want)


@pytest.mark.parametrize("op", ["Div", "Mod"])
def test_integer_division_by_zero_is_refused(op):
    """ORT refuses an integer divisor holding 0; NumPy would give 0 or INT_MIN."""
    a, b = np.array([7, -7, 5], np.int32), np.array([0, 2, 0], np.int32)
    node = helper.make_node(op, ["a", "b"], ["y"], name="divide")
    out = [value_info("y", [3], TensorProto.INT32)]
    folded = graph_model([node], [], out, [numpy_helper.from_array(a, "a"),
                                      numpy_helper.from_array(b, "b")])
    _ort_refuses(folded, {}, "Integer (division|modulo) by zero")
    with pytest.raises(ModelError, match="divide.*by zero"):
        InferenceSession(folded)
    fed = graph_model([node], [value_info("a", [3], TensorProto.INT32), value_info("b", [3], TensorProto.INT32)],
                 out)
    with pytest.raises(ValueError, match="divide.*by zero"):
        InferenceSession(fed).run(None, {"a": a, "b": b})
    # a divisor without zeros still divides as ORT does
    b = np.array([3, -2, 4], np.int32)
    feeds = {"a": a, "b": b}
    _same(InferenceSession(fed).run(None, feeds), ort_session(fed).run(None, feeds))


# -- operators refuse what ONNX forbids ------------------------------------------------------

@pytest.mark.parametrize("op", ["Softmax", "LogSoftmax"])
@pytest.mark.parametrize("opset", [11, 13])
@pytest.mark.parametrize("axis", [2, 5, -3])
@pytest.mark.parametrize("fused", [False, True])
def test_softmax_axis_beyond_the_rank_is_refused(op, opset, axis, fused):
    x = np.linspace(-1, 1, 6, dtype=np.float32).reshape(2, 3)
    w = numpy_helper.from_array(np.eye(3, dtype=np.float32), "w")
    nodes = [helper.make_node(op, ["m" if fused else "x"], ["y"], axis=axis, name="soft")]
    if fused:   # MatMul -> Softmax runs as one fused head
        nodes.insert(0, helper.make_node("MatMul", ["x", "w"], ["m"]))
    model = graph_model(nodes, [value_info("x", [2, 3])], [value_info("y", [2, 3])], [w], opset=opset)
    _ort_refuses(model, {"x": x}, r"'axis' must be in \[-2 , 1\]")
    with pytest.raises(ValueError, match=f"soft.*axis {axis}.*rank 2"):
        InferenceSession(model).run(None, {"x": x})


@pytest.mark.parametrize("shape", [[-2, 3], [3, -2], [-1, -1]])
def test_reshape_negative_dimensions_other_than_one_minus_one_are_refused(shape):
    x = np.ones((2, 3), np.float32)
    model = graph_model([helper.make_node("Reshape", ["x", "s"], ["y"], name="reshape")],
                   [value_info("x", [2, 3]), value_info("s", [2], TensorProto.INT64)], [value_info("y", None)])
    feeds = {"x": x, "s": np.array(shape, np.int64)}
    _ort_refuses(model, feeds, "A dimension cannot be less than -1|At most one dimension can be -1")
    with pytest.raises(ValueError, match="reshape.*-1"):
        InferenceSession(model).run(None, feeds)


@pytest.mark.parametrize("kernel", [3, 5])
def test_conv_with_a_dilation_that_overflows_is_refused(kernel):
    """(kernel - 1) * 2**62 wraps to 0 or negative in 64-bit arithmetic."""
    w = numpy_helper.from_array(np.ones((2, 1, kernel), np.float32), "w")
    model = graph_model([helper.make_node("Conv", ["x", "w"], ["y"], dilations=[2**62],
                                     name="conv")],
                   [value_info("x", [1, 1, 8])], [value_info("y", None)], [w])
    x = np.ones((1, 1, 8), np.float32)
    _ort_refuses(model, {"x": x}, "Integer overflow while multiplying dimension values")
    with pytest.raises(ValueError, match="conv.*dilation"):
        InferenceSession(model).run(None, {"x": x})


def test_conv1d_kernel_refuses_sizes_that_wrap():
    w = np.ones((2, 1, 5), np.float32)
    with pytest.raises(ValueError, match="dilation"):
        Conv1d(w, None, 1, 2**62, 0, 0, False)
    with pytest.raises(ValueError, match="pads"):
        Conv1d(w, None, 1, 1, 2**62, 2**62, False)


# -- an initializer that is also a graph input is an overridable default (IR >= 4) ---------

def _overridable_model(ir_version):
    d = numpy_helper.from_array(np.array([1.0, 2.0], np.float32), "d")
    k = numpy_helper.from_array(np.array([3.0, 4.0], np.float32), "k")
    nodes = [helper.make_node("Mul", ["d", "k"], ["dk"]),    # foldable were d a constant
             helper.make_node("Add", ["x", "dk"], ["y"])]
    model = graph_model(nodes, [value_info("x", [2]), value_info("d", [2])], [value_info("y", [2])], [d, k], opset=13)
    model.ir_version = ir_version
    return model


def test_an_overridable_initializer_takes_the_fed_value_or_its_default():
    model = _overridable_model(8)
    ref, sess = ort_session(model), InferenceSession(model)
    assert [a.name for a in sess.get_inputs()] == [a.name for a in ref.get_inputs()]
    assert ([a.name for a in sess.get_overridable_initializers()]
            == [a.name for a in ref.get_overridable_initializers()] == ["d"])
    x = np.array([0.5, -1.0], np.float32)
    for feeds in ({"x": x}, {"x": x, "d": np.array([10.0, -20.0], np.float32)}, {"x": x}):
        _same(sess.run(None, feeds), ref.run(None, feeds))
    with pytest.raises(ValueError, match="'d'"):
        sess.run(None, {"x": x, "d": np.ones(3, np.float32)})


def test_before_ir_4_an_initializer_listed_as_input_is_a_constant():
    model = _overridable_model(3)
    model.opset_import[0].version = 8
    ref, sess = ort_session(model), InferenceSession(model)
    assert sess.get_overridable_initializers() == ref.get_overridable_initializers() == []
    x = np.array([0.5, -1.0], np.float32)
    _same(sess.run(None, {"x": x}), ref.run(None, {"x": x}))
    with pytest.raises(ValueError, match="unknown input name 'd'"):
        sess.run(None, {"x": x, "d": x})


# -- reduced precisions refuse weights they cannot hold ---------------------------------------

def _lstm(W):
    rng = np.random.default_rng(0)
    H, I = 16, 8
    R = (0.1 * rng.standard_normal((1, 4 * H, H))).astype(np.float32)
    nodes = [helper.make_node("LSTM", ["X", "W", "R"], ["Y"], hidden_size=H, name="lstm")]
    return graph_model(nodes, [value_info("X", [5, 2, I])], [value_info("Y", None)],
                  [numpy_helper.from_array(W, "W"), numpy_helper.from_array(R, "R")], opset=14)


def _lstm_weights():
    return (0.1 * np.random.default_rng(1).standard_normal((1, 64, 8))).astype(np.float32)


def _extreme(kind):
    W = _lstm_weights()
    if kind == "inf":
        W[0, 3, 2] = np.inf           # one unit's weight; fp32 keeps every other unit finite
    else:
        W[0, 3, 2] = 3.4e38           # finite in float32, inf once rounded to bf16
    return W


@pytest.mark.parametrize("precision, kind, reason", [
    ("int8", "inf", "non-finite"), ("bf16", "huge", "bf16 range"),
    ("fp16", "huge", "fp16 range")])
def test_reduced_precision_refuses_weights_it_cannot_hold(tmp_path, precision, kind, reason):
    model = _lstm(_extreme(kind))
    x = np.full((5, 2, 8), 1e-3, np.float32)
    want = ort_session(model).run(None, {"X": x})[0]
    got = InferenceSession(model).run(None, {"X": x})[0]   # fp32 matches the reference
    np.testing.assert_allclose(got, want, rtol=1e-4, atol=1e-5)
    path = tmp_path / "lstm.onnx"
    onnx.save(model, str(path))
    with pytest.raises(ModelError, match=f"W.*{reason}"):
        rnnengine.load(str(path), precision=precision).run(x)
    with pytest.raises(ModelError, match=f"W.*{reason}"):
        InferenceSession(model, precision=precision).run(None, {"X": x})


@pytest.mark.parametrize("precision", ["int8", "bf16"])
def test_reduced_precision_keeps_ordinary_weights(precision):
    model = _lstm(_lstm_weights())
    x = np.random.default_rng(2).standard_normal((5, 2, 8)).astype(np.float32)
    want = ort_session(model).run(None, {"X": x})[0]
    got = InferenceSession(model, precision=precision).run(None, {"X": x})[0]
    np.testing.assert_allclose(got, want, atol=3e-2)


# -- one allocation budget: refused before allocating, never a bare MemoryError --------------
# Each graph asks for far more than the budget from a few bytes of input; none allocates it
# (a run that did would take GiBs and seconds: these finish at once).

_BUDGET = r"would allocate [\d,]+ elements \([\d.]+ GiB\); the limit is"


def _budget_case(kind):
    f, i64 = TensorProto.FLOAT, TensorProto.INT64
    if kind == "expand":
        nodes = [helper.make_node("Expand", ["x", "s"], ["y"], name="big")]
        return nodes, [value_info("x", [1]), value_info("s", [2], i64)], {
            "x": np.ones(1, np.float32), "s": np.array([1 << 16, 1 << 16], np.int64)}
    if kind == "mul":
        nodes = [helper.make_node("Mul", ["x", "z"], ["y"], name="big")]
        return nodes, [value_info("x", [1 << 15, 1]), value_info("z", [1, 1 << 15])], {
            "x": np.ones((1 << 15, 1), np.float32), "z": np.ones((1, 1 << 15), np.float32)}
    if kind == "einsum":
        nodes = [helper.make_node("Einsum", ["x", "z"], ["y"], equation="i,j->ij",
                                  name="big")]
        return nodes, [value_info("x", [1 << 15]), value_info("z", [1 << 15])], {
            "x": np.ones(1 << 15, np.float32), "z": np.ones(1 << 15, np.float32)}
    if kind == "matmul":
        nodes = [helper.make_node("MatMul", ["x", "z"], ["y"], name="big")]
        return nodes, [value_info("x", [1 << 15, 1]), value_info("z", [1, 1 << 15])], {
            "x": np.ones((1 << 15, 1), np.float32), "z": np.ones((1, 1 << 15), np.float32)}
    if kind == "gather":
        nodes = [helper.make_node("Gather", ["x", "k"], ["y"], name="big")]
        return nodes, [value_info("x", [1, 1 << 12]), value_info("k", [1 << 17], i64)], {
            "x": np.ones((1, 1 << 12), np.float32), "k": np.zeros(1 << 17, np.int64)}
    if kind in ("maxpool", "avgpool"):   # 4 MiB in; the window gather is N*C*K*P
        op = "MaxPool" if kind == "maxpool" else "AveragePool"
        nodes = [helper.make_node(op, ["x"], ["y"], kernel_shape=[1024], name="big")]
        return nodes, [value_info("x", [1, 512, 2047])], {"x": np.ones((1, 512, 2047), np.float32)}
    if kind == "conv":
        nodes = [helper.make_node("Conv", ["x", "w"], ["y"], name="big")]
        return nodes, [value_info("x", [1, 512, 2047]), value_info("w", [1, 512, 1024])], {
            "x": np.ones((1, 512, 2047), np.float32), "w": np.ones((1, 512, 1024), np.float32)}
    raise AssertionError(kind)


@pytest.mark.parametrize("kind", ["expand", "mul", "einsum", "matmul", "gather", "maxpool",
                                  "avgpool", "conv"])
def test_allocations_go_through_one_budget(kind):
    nodes, inputs, feeds = _budget_case(kind)
    model = graph_model(nodes, inputs, [value_info("y", None)])
    with pytest.raises(ValueError, match="big.*" + _BUDGET):
        InferenceSession(model).run(None, feeds)


def test_folding_at_load_is_under_the_same_budget():
    nodes = [helper.make_node("Expand", ["x", "s"], ["y"], name="big")]
    inits = [numpy_helper.from_array(np.ones(1, np.float32), "x"),
             numpy_helper.from_array(np.array([1 << 16, 1 << 16], np.int64), "s")]
    with pytest.raises(ModelError, match="big.*" + _BUDGET):
        InferenceSession(graph_model(nodes, [], [value_info("y", None)], inits))


def _loop_model(outer_trips, inner_trips, scan_shape=None):
    """Loop(outer) { Loop(inner) { x + 1 } }: a count of all inner trips; with
    ``scan_shape`` the inner body also emits a zeros tensor of that shape per trip."""
    b, i64, f = TensorProto.BOOL, TensorProto.INT64, TensorProto.FLOAT
    inner_nodes = [helper.make_node("Identity", ["ci"], ["co"]),
                   helper.make_node("Add", ["xi", "one"], ["xo"])]
    inner_out = [value_info("co", [], b), value_info("xo", [], f)]
    if scan_shape is not None:
        inner_nodes.append(helper.make_node("ConstantOfShape", ["shape"], ["sc"]))
        inner_out.append(value_info("sc", None))
    inner = helper.make_graph(inner_nodes, "inner",
                              [value_info("j", [], i64), value_info("ci", [], b), value_info("xi", [], f)],
                              inner_out)
    outer_body = helper.make_graph(
        [helper.make_node("Identity", ["c"], ["c2"]),
         helper.make_node("Loop", ["n_inner", "", "x_in"],
                          ["x_out"] + (["scans"] if scan_shape is not None else []),
                          body=inner, name="inner_loop")],
        "outer", [value_info("i", [], i64), value_info("c", [], b), value_info("x_in", [], f)],
        [value_info("c2", [], b), value_info("x_out", [], f)])
    inits = [numpy_helper.from_array(np.array(outer_trips, np.int64), "n_outer"),
             numpy_helper.from_array(np.array(inner_trips, np.int64), "n_inner"),
             numpy_helper.from_array(np.array(1.0, np.float32), "one"),
             numpy_helper.from_array(np.array(True), "t"),
             numpy_helper.from_array(np.array(scan_shape or [1], np.int64), "shape")]
    nodes = [helper.make_node("Loop", ["n_outer", "t", "x0"], ["y"], body=outer_body,
                              name="outer_loop")]
    return graph_model(nodes, [value_info("x0", [], TensorProto.FLOAT)], [value_info("y", [])], inits, opset=13)


def test_nested_loops_share_one_trip_budget_per_run(monkeypatch):
    monkeypatch.setattr(rnnengine.runtime.steps, "MAX_LOOP_ITERATIONS", 5000)
    x0 = {"x0": np.array(0.0, np.float32)}
    small = _loop_model(40, 100)          # 4,000 trips: within the budget, as ORT computes
    sess = InferenceSession(small)
    _same(sess.run(None, x0), ort_session(small).run(None, x0))
    _same(sess.run(None, x0), ort_session(small).run(None, x0))   # the budget is per run
    # 100 x 100 = 10,000 trips: each Loop alone is under 5,000, together they are not
    with pytest.raises(ValueError, match="inner_loop.*limit is 5,000 per run"):
        InferenceSession(_loop_model(100, 100)).run(None, x0)


def test_loop_scan_outputs_are_under_the_budget():
    # 64 trips of a 2**22-element scan output is 2**28 + 2**22 elements: refused on the
    # trip that crosses the budget (each trip's tensor is fine on its own)
    model = _loop_model(1, 65, scan_shape=[1 << 22])
    with pytest.raises(ValueError, match="inner_loop.*scan output 0.*" + _BUDGET):
        InferenceSession(model).run(None, {"x0": np.array(0.0, np.float32)})


# -- a long compiled convolution stops on Ctrl-C ---------------------------------------------

_CONV_CHILD = """
import sys, time
import numpy as np
from rnnengine.core.conv import Conv1d
conv = Conv1d(np.ones((256, 256, 64), np.float32), None, 1, 1, 0, 0, False)
x = np.ones((1, 256, 64 + 20000 - 1), np.float32)
start = time.perf_counter()
conv(x[:, :, :64 + 200 - 1])
per_position = (time.perf_counter() - start) / 200
L = int(min(20.0 / per_position, 4e6))        # about 20 s of work, if not interrupted
x = np.ones((1, 256, 64 + L - 1), np.float32)
print("ready", flush=True)
start = time.perf_counter()
try:
    conv(x)
    print("finished", round(time.perf_counter() - start, 2), flush=True)
except KeyboardInterrupt:
    print("interrupted", round(time.perf_counter() - start, 2), flush=True)
"""


def test_a_long_compiled_conv_stops_on_ctrl_c():
    out, err, _, waited = interrupted(_CONV_CHILD, [], after=1.0, timeout=120)
    assert out.split()[:1] == ["interrupted"], (out, err[-2000:])
    assert waited < 5.0, f"exited {waited:.1f} s after SIGINT"

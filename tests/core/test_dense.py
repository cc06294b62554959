"""The compiled dense head (``_dense.DenseHead`` via ``ops.compiled_head``): MatMul/Gemm +
bias + activation graphs run by InferenceSession against ONNX Runtime on the same model."""
import numpy as np
import pytest
from onnx import TensorProto, helper, numpy_helper

from rnnengine import InferenceSession
from rnnengine.core.dense import DenseHead
from rnnengine.ops import compiled_head

ort = pytest.importorskip("onnxruntime")

ACTS = [None, "Relu", "Sigmoid", "Tanh", "Softmax", "LogSoftmax"]
TOL = dict(rtol=1e-5, atol=1e-5)


def head_model(act, x_shape, K, N, gemm=None, bias_shape=None, axis=None, opset=17,
               seed=0):
    """x -> MatMul(W) (or Gemm with attributes ``gemm``) -> Add(b) -> act -> y."""
    rng = np.random.default_rng(seed)
    inits, nodes = [], []
    if gemm is None:
        w = rng.standard_normal((K, N)).astype(np.float32)
        nodes.append(helper.make_node("MatMul", ["x", "W"], ["p"]))
    else:
        w = rng.standard_normal((N, K) if gemm.get("transB") else (K, N)).astype(np.float32)
        ins = ["x", "W"] + (["C"] if "C" in gemm else [])
        attrs = {k: v for k, v in gemm.items() if k != "C"}
        nodes.append(helper.make_node("Gemm", ins, ["p"], **attrs))
        if "C" in gemm:
            inits.append(numpy_helper.from_array(
                rng.standard_normal(gemm["C"]).astype(np.float32), "C"))
    inits.append(numpy_helper.from_array(w, "W"))
    last = "p"
    if bias_shape is not None:
        inits.append(numpy_helper.from_array(
            rng.standard_normal(bias_shape).astype(np.float32), "b"))
        nodes.append(helper.make_node("Add", ["p", "b"], ["pb"]))
        last = "pb"
    if act is not None:
        kw = {} if axis is None else {"axis": axis}
        nodes.append(helper.make_node(act, [last], ["y"], **kw))
    else:
        nodes[-1].output[0] = "y"
    graph = helper.make_graph(
        nodes, "head", [helper.make_tensor_value_info("x", TensorProto.FLOAT, x_shape)],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, None)], inits)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", opset)])
    model.ir_version = 8
    return model.SerializeToString()


def check(model, x, tol=TOL):
    ours = InferenceSession(model).run(None, {"x": x})[0]
    theirs = ort.InferenceSession(model, providers=["CPUExecutionProvider"]).run(
        None, {"x": x})[0]
    assert ours.dtype == theirs.dtype and ours.shape == theirs.shape
    np.testing.assert_allclose(ours, theirs, **tol)


def uses_c_head(model) -> bool:
    """Whether a step of the planned graph calls ops.compiled_head's function."""
    steps = InferenceSession(model).plan.steps
    return any(getattr(c.cell_contents, "__qualname__", "").startswith("compiled_head.")
               for step in steps for c in (step.__closure__ or ()))


@pytest.mark.parametrize("act", ACTS)
@pytest.mark.parametrize("x_shape", [[37], [3, 37], [1, 1, 37], [2, 4, 37]])
def test_matmul_add_act(act, x_shape):
    model = head_model(act, x_shape, 37, 29, bias_shape=[29])
    assert uses_c_head(model)
    x = (2 * np.random.default_rng(len(x_shape)).standard_normal(x_shape)).astype(np.float32)
    check(model, x)


@pytest.mark.parametrize("act", ["Sigmoid", "LogSoftmax", "Softmax"])
def test_streaming_sizes(act):
    """The DTLN head (128 -> 257) and model (a)'s (16 -> 20), one row, one block."""
    for K, N in ((128, 257), (16, 20)):
        model = head_model(act, [1, 1, K], K, N, bias_shape=[N], seed=K)
        x = np.random.default_rng(K).standard_normal((1, 1, K)).astype(np.float32)
        check(model, x)


def test_extreme_values():
    """Large pre-activations: sigmoid saturates to 0/1, softmax stays finite, as ORT's.
    Logits near 1000 leave LogSoftmax's small outputs only float32's absolute precision at
    1000 (6e-5): the whole-model tolerance there."""
    for act in ("Sigmoid", "Softmax", "LogSoftmax", "Tanh", "Relu"):
        model = head_model(act, [2, 8], 8, 5, bias_shape=[5])
        x = np.array([[200.0] * 8, [-200.0] * 8], np.float32)
        check(model, x, dict(rtol=1e-5, atol=1e-4))


@pytest.mark.parametrize("gemm", [{"transB": 1, "C": [6]}, {"transB": 0, "C": [1, 6]},
                                  {"transB": 1, "C": [6], "beta": 0.5},
                                  {"transB": 1}, {"alpha": 2.0, "C": [6]}])
@pytest.mark.parametrize("act", ["Tanh", "LogSoftmax", None])
def test_gemm(gemm, act):
    model = head_model(act, [3, 11], 11, 6, gemm=dict(gemm), bias_shape=[6] if act else None)
    x = np.random.default_rng(3).standard_normal((3, 11)).astype(np.float32)
    check(model, x)
    # alpha != 1 is left to the NumPy chain; a lone Gemm is no chain
    assert uses_c_head(model) == ("alpha" not in gemm and act is not None)


@pytest.mark.parametrize("axis,opset", [(0, 17), (1, 17), (-2, 17), (-1, 17), (1, 11),
                                        (-1, 11), (None, 11)])
def test_softmax_axes(axis, opset):
    """Softmax over another axis than the last, or an opset-11 coerced Softmax: still right
    (the C head only takes a last-axis one)."""
    for shape in ([4, 9], [2, 3, 9]):
        model = head_model("Softmax", shape, 9, 7, bias_shape=[7], axis=axis, opset=opset)
        x = np.random.default_rng(5).standard_normal(shape).astype(np.float32)
        check(model, x)


def test_bias_broadcasting_to_more_axes():
    """A bias of more dims than x: the output grows, as NumPy/ORT broadcast it."""
    model = head_model("Relu", [3, 5], 5, 4, bias_shape=[2, 1, 4])
    assert not uses_c_head(model)
    check(model, np.random.default_rng(6).standard_normal((3, 5)).astype(np.float32))


def test_non_contiguous_and_wrong_inputs():
    rng = np.random.default_rng(7)
    w = rng.standard_normal((6, 5)).astype(np.float32)
    b = rng.standard_normal(5).astype(np.float32)
    head = DenseHead(w, b, "Tanh")
    x = rng.standard_normal((6, 4)).astype(np.float32).T        # (4, 6), not contiguous
    np.testing.assert_allclose(head(x), np.tanh(x.astype(np.float64) @ w + b), **TOL)
    assert head(x.astype(np.float64)) is None
    assert head(np.zeros((4, 5), np.float32)) is None
    assert head([1.0] * 6) is None
    with pytest.raises(ValueError, match="2-D"):
        DenseHead(np.zeros(6, np.float32), None, None)
    with pytest.raises(ValueError, match="5 elements"):
        DenseHead(w, np.zeros(4, np.float32), None)
    with pytest.raises(ValueError, match="act"):
        DenseHead(w, b, "Gelu")


def test_wrong_dtype_through_session():
    model = head_model("Sigmoid", [None, 8], 8, 3, bias_shape=[3])
    sess = InferenceSession(model)
    with pytest.raises(ValueError, match="x"):
        sess.run(None, {"x": np.zeros((2, 8), np.float64)})


def test_compiled_head_refuses_runtime_weights():
    mm = helper.make_node("MatMul", ["x", "W"], ["p"])
    act = helper.make_node("Sigmoid", ["p"], ["y"])
    assert compiled_head([mm, act], 17, lambda name: None) is None
    w = np.zeros((3, 2), np.float64)
    assert compiled_head([mm, act], 17, lambda name: w if name == "W" else None) is None
    w32 = w.astype(np.float32)
    assert compiled_head([mm, act], 17, lambda name: w32 if name == "W" else None) is not None


@pytest.mark.parametrize("act", ["Sigmoid", "Softmax", "LogSoftmax"])
def test_vectorised_exp_over_the_whole_float_range(act):
    """The head's own exp (dense.h) against float64 NumPy: 2e-7 relative where the result
    is a normal float32, NaN kept, infinities saturating; sigmoid never returns a
    subnormal (fed back as state, those slow every product ~20x)."""
    head = DenseHead(np.eye(2, dtype=np.float32), None, act)
    v = np.linspace(-120, 120, 100001, dtype=np.float32)
    x = np.stack([v, np.zeros_like(v)], 1)                 # softmax of (v, 0)
    y = head(x)[:, 0].astype(np.float64)
    v64 = v.astype(np.float64)
    if act == "Sigmoid":
        ref = 1 / (1 + np.exp(-v64))
    elif act == "Softmax":
        ref = np.exp(v64 - np.logaddexp(v64, 0))
    else:
        ref = v64 - np.logaddexp(v64, 0)
    normal = np.abs(ref) > 1e-30
    # LogSoftmax subtracts max + log(sum) rounded to float32: a few ulp of the operands
    tol = dict(rtol=1e-6, atol=1e-6) if act == "LogSoftmax" else dict(rtol=2e-7, atol=1e-7)
    np.testing.assert_allclose(y[normal], ref[normal], **tol)
    assert np.abs(y[~normal] - ref[~normal]).max(initial=0) < 1e-30
    if act == "Sigmoid":
        assert y.min() >= np.finfo(np.float32).tiny
        special = head(np.array([[np.nan, 0], [np.inf, 0], [-np.inf, 0]], np.float32))[:, 0]
        assert np.isnan(special[0]) and special[1] == 1 and 0 < special[2] < 1e-37


@pytest.mark.parametrize("M,K,N", [(13, 37, 70), (6, 5, 32), (48, 256, 258), (7, 3, 33),
                                   (4, 9, 16), (5, 130, 17), (100, 128, 30), (11, 20, 48)])
@pytest.mark.parametrize("act", [None, "Relu", "Tanh"])
def test_row_tiles_against_float64(M, K, N, act, isa):
    """Rows taken six (AVX-512), four or one at a time, columns in tiles of 32 or 16 and the
    rest: every path of every ISA variant (the one core.kernels runs picks the code) against the
    float64 product."""
    rng = np.random.default_rng(M * 1000 + N)
    w = rng.standard_normal((K, N)).astype(np.float32)
    b = rng.standard_normal(N).astype(np.float32)
    x = rng.standard_normal((M, K)).astype(np.float32)
    want = x.astype(np.float64) @ w.astype(np.float64) + b
    want = {None: want, "Relu": np.maximum(want, 0), "Tanh": np.tanh(want)}[act]
    got = DenseHead(w, b, act)(x)
    np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-5 * np.sqrt(K))


@pytest.mark.parametrize("act", ["LogSoftmax", "Softmax"])
def test_rows_of_a_head_narrower_than_a_tile(act):
    """A CTC head: 100 frames of 30 classes, the columns padded to a whole tile inside; the
    softmax of each row against float64."""
    rng = np.random.default_rng(30)
    w = rng.standard_normal((128, 30)).astype(np.float32)
    b = rng.standard_normal(30).astype(np.float32)
    x = rng.standard_normal((100, 128)).astype(np.float32)
    z = x.astype(np.float64) @ w.astype(np.float64) + b
    z = z - z.max(axis=1, keepdims=True)
    logp = z - np.log(np.exp(z).sum(axis=1, keepdims=True))
    want = logp if act == "LogSoftmax" else np.exp(logp)
    np.testing.assert_allclose(DenseHead(w, b, act)(x), want, rtol=1e-5, atol=1e-4)


@pytest.mark.parametrize("K,N", [(128, 257), (37, 1), (64, 15), (5, 16), (33, 17), (256, 512),
                                 (19, 300), (8, 529)])
@pytest.mark.parametrize("act", [None, "Sigmoid"])
def test_one_row_gives_the_bits_of_a_batch(K, N, act, isa):
    """A stream's step (one row: row-major weights, or the column panels the compiled step
    packs them into) sums each column in k order, as the row tiles of a batch do: the very
    bits of the batch's row, whichever row count and layout; and the float64 product."""
    rng = np.random.default_rng(K * 1000 + N)
    w = rng.standard_normal((K, N)).astype(np.float32)
    b = rng.standard_normal(N).astype(np.float32)
    x = rng.standard_normal((9, K)).astype(np.float32)
    batch = DenseHead(w, b, act)(x)
    for head in (DenseHead(w, b, act), DenseHead(w, b, act, panels=True)):
        for m in range(9):
            np.testing.assert_array_equal(head(x[m:m + 1])[0], batch[m])
        if head.panels:
            np.testing.assert_array_equal(head(x[:3]), batch[:3])
    want = x.astype(np.float64) @ w.astype(np.float64) + b
    want = want if act is None else 1 / (1 + np.exp(-want))
    np.testing.assert_allclose(batch, want, rtol=1e-5, atol=1e-5 * np.sqrt(K))

"""The executor on random graphs (hypothesis): chains of the operators it lowers (elementwise
with broadcasting, transposes, reductions, products, concatenation, slices, gathers) over an
input whose batch dim changes between calls. Every call is compared with ONNX Runtime: the
first call of a signature runs the general path, the second builds the program, the later
ones run it; a new batch size starts a new signature while the old program stays cached."""
from __future__ import annotations

import numpy as np
import pytest

hypothesis = pytest.importorskip("hypothesis")
ort = pytest.importorskip("onnxruntime")
from hypothesis import given, settings, strategies as st  # noqa: E402
from onnx import TensorProto, helper, numpy_helper  # noqa: E402

import rnnengine  # noqa: E402

UNARY = ["Relu", "Sigmoid", "Tanh", "Abs", "Neg", "Softsign", "Exp"]
BINARY = ["Add", "Sub", "Mul", "Max", "Min"]


class Graph:
    """Builds a chain: each value is (name, shape), shape entries int or "n" (the batch)."""

    def __init__(self, rank_dims):
        self.nodes, self.consts, self.count = [], [], 0
        self.values = [("x", ["n", *rank_dims])]

    def fresh(self) -> str:
        self.count += 1
        return f"v{self.count}"

    def const(self, array) -> str:
        name = f"c{len(self.consts)}"
        self.consts.append(numpy_helper.from_array(np.asarray(array), name))
        return name

    def add(self, op, inputs, shape, **attrs) -> None:
        out = self.fresh()
        self.nodes.append(helper.make_node(op, inputs, [out], **attrs))
        self.values.append((out, shape))


def grow(g: Graph, data, rng) -> None:
    """One more node on the newest value (sometimes with an earlier one of its shape)."""
    name, shape = g.values[-1]
    rank = len(shape)
    kind = data.draw(st.sampled_from(["unary", "const", "pair", "transpose", "reduce",
                                      "matmul", "concat", "slice", "gather"]))
    fixed = [k for k, d in enumerate(shape) if d != "n"]
    if kind == "unary":
        g.add(data.draw(st.sampled_from(UNARY)), [name], shape)
    elif kind == "const":
        # broadcast a constant over a suffix of the axes, any of them 1
        start = data.draw(st.integers(0, rank))
        cshape = [1 if d == "n" or data.draw(st.booleans()) else d for d in shape[start:]]
        c = g.const(rng.uniform(-1, 1, cshape).astype(np.float32))
        args = [name, c] if data.draw(st.booleans()) else [c, name]
        g.add(data.draw(st.sampled_from(BINARY)), args, shape)
    elif kind == "pair":
        same = [v for v, s in g.values if s == shape]
        other = data.draw(st.sampled_from(same))
        g.add(data.draw(st.sampled_from(BINARY)), [name, other], shape)
    elif kind == "transpose":
        perm = data.draw(st.permutations(range(rank)))
        g.add("Transpose", [name], [shape[p] for p in perm], perm=list(perm))
    elif kind == "reduce" and rank > 1:
        axis = data.draw(st.integers(-rank, rank - 1))
        out = list(shape)
        out[axis] = 1
        op = data.draw(st.sampled_from(["ReduceMean", "ReduceSum", "ReduceMax"]))
        if op == "ReduceSum":       # its axes are an input from opset 13 on
            g.add(op, [name, g.const(np.array([axis], np.int64))], out, keepdims=1)
        else:
            g.add(op, [name], out, axes=[axis], keepdims=1)
    elif kind == "matmul" and shape[-1] != "n":
        cols = data.draw(st.integers(1, 6))
        w = g.const(rng.uniform(-1, 1, (shape[-1], cols)).astype(np.float32))
        g.add("MatMul", [name, w], shape[:-1] + [cols])
    elif kind == "concat":
        axis = data.draw(st.integers(-rank, rank - 1))
        out = list(shape)
        out[axis] = "n" if shape[axis] == "n" else 2 * shape[axis]
        if shape[axis] == "n":      # the batch axis would double: keep the chain batch-wise
            return
        g.add("Concat", [name, name], out, axis=axis)
    elif kind == "slice" and fixed:
        axis = data.draw(st.sampled_from(fixed))
        size = shape[axis]
        start = data.draw(st.integers(0, size - 1))
        end = data.draw(st.integers(start + 1, size))
        out = list(shape)
        out[axis] = end - start
        g.add("Slice", [name, g.const(np.array([start], np.int64)),
                        g.const(np.array([end], np.int64)), g.const(np.array([axis], np.int64))],
              out)
    elif kind == "gather" and fixed:
        axis = data.draw(st.sampled_from(fixed))
        idx = data.draw(st.lists(st.integers(-shape[axis], shape[axis] - 1), min_size=1,
                                 max_size=4))
        out = list(shape)
        out[axis] = len(idx)
        g.add("Gather", [name, g.const(np.array(idx, np.int64))], out, axis=axis)


def model_bytes(g: Graph) -> bytes:
    name, _ = g.values[-1]
    graph = helper.make_graph(
        g.nodes, "random", [helper.make_tensor_value_info("x", TensorProto.FLOAT,
                                                          g.values[0][1])],
        [helper.make_tensor_value_info(name, TensorProto.FLOAT, None)], g.consts)
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)]
                             ).SerializeToString()


@settings(max_examples=60, deadline=None, derandomize=True)
@given(st.data())
def test_random_chains_match_onnxruntime_as_the_batch_changes(data):
    rank_dims = data.draw(st.lists(st.integers(1, 5), min_size=1, max_size=3))
    rng = np.random.default_rng(data.draw(st.integers(0, 2**32 - 1)))
    g = Graph(rank_dims)
    for _ in range(data.draw(st.integers(1, 8))):
        grow(g, data, rng)
    if len(g.values) == 1:
        g.add("Relu", ["x"], g.values[0][1])
    blob = model_bytes(g)
    sess = rnnengine.InferenceSession(blob)
    ref = ort.InferenceSession(blob, providers=["CPUExecutionProvider"])
    previous = None
    for batch in data.draw(st.lists(st.integers(1, 4), min_size=2, max_size=3)):
        for _ in range(3):
            x = rng.standard_normal((batch, *rank_dims)).astype(np.float32)
            got, = sess.run(None, {"x": x})
            want, = ref.run(None, {"x": x})
            assert got.shape == want.shape and got.dtype == want.dtype
            np.testing.assert_allclose(got, want, rtol=1e-4, atol=1e-5)
            assert previous is None or not np.shares_memory(got, previous)
            previous = got
    # every operator drawn here is lowered: each signature ran as a program
    status = sess.program_status()
    assert status and all(s.startswith("compiled") for s in status.values()), status

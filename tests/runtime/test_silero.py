"""A real published model: Silero VAD (MIT, tests/data/silero_vad.LICENSE). Its two LSTM nodes
sit inside If branches and take their weights through Constant/Slice/Concat/Unsqueeze chains
from the main graph's initializers.

Reference: ONNX Runtime running the original nodes. For each LSTM, the test copies the nodes
that compute its W, R, B (as the exporter wrote them, unfolded) and the outer initializers
they read into a small model whose inputs are X, initial_h, initial_c, so ONNX Runtime does
its own folding; the loader's folding is never used to build the reference."""
import os
import re

import numpy as np
import onnx
import onnxruntime as ort
import pytest
from onnx import helper

import rnnengine
from rnnengine import ModelError
import conftest

PATH = os.path.join(conftest.DATA, "silero_vad_16k_op15.onnx")
NODES = {"/model/decoder/rnn/LSTM": "/model/decoder/If_1::then_branch::/model/decoder/rnn/LSTM",
         "/model/decoder/rnn_1/LSTM": "/model/decoder/If_1::else_branch::/model/decoder/rnn_1/LSTM"}
H = 128


def find_node(graph, name):
    """(graph holding the node, node), searching every subgraph."""
    for node in graph.node:
        if node.name == name:
            return graph, node
        for attr in node.attribute:
            if attr.type == onnx.AttributeProto.GRAPH:
                found = find_node(attr.g, name)
                if found:
                    return found
    return None


def reference_session(model, name):
    """An ORT session over the node and the original weight chains that feed it."""
    branch, lstm = find_node(model.graph, name)
    producers = {out: node for node in branch.node for out in node.output}
    outer = {t.name: t for t in model.graph.initializer}
    nodes, inits, seen = [], [], set()

    def visit(tensor):
        if not tensor or tensor in seen:
            return
        seen.add(tensor)
        if tensor in producers:
            node = producers[tensor]
            for i in node.input:
                visit(i)
            if all(n is not node for n in nodes):
                nodes.append(node)
        elif tensor in outer:
            inits.append(outer[tensor])
        else:
            raise AssertionError(f"{tensor} is neither computed in the branch nor an initializer")

    for tensor in lstm.input[1:4]:
        visit(tensor)
    node = helper.make_node("LSTM", ["X", lstm.input[1], lstm.input[2], lstm.input[3], "", "h0", "c0"],
                            ["Y", "Y_h", "Y_c"], hidden_size=H)
    value = lambda n: helper.make_tensor_value_info(n, onnx.TensorProto.FLOAT, None)
    graph = helper.make_graph(nodes + [node], "one_lstm", [value("X"), value("h0"), value("c0")],
                              [value("Y"), value("Y_h"), value("Y_c")], initializer=inits)
    sub = helper.make_model(graph, opset_imports=model.opset_import, ir_version=model.ir_version)
    return ort.InferenceSession(sub.SerializeToString(), providers=["CPUExecutionProvider"])


@pytest.fixture(scope="module")
def silero():
    assert os.path.exists(PATH), f"the committed test model {PATH} is missing"
    return onnx.load(PATH)


@pytest.mark.parametrize("name", sorted(NODES))
@pytest.mark.parametrize("by", ["name", "qualified name"])
def test_lstm_node_matches_onnxruntime(silero, name, by):
    model = rnnengine.load(PATH, node=name if by == "name" else NODES[name])
    assert (model.kind, model.num_layers, model.input_size, model.hidden_size) == ("lstm", 1, H, H)
    rng = np.random.default_rng(len(name))
    T, N = 6, 3
    x = rng.standard_normal((T, N, H)).astype(np.float32)
    h0 = rng.standard_normal((1, N, H)).astype(np.float32) * 0.5
    c0 = rng.standard_normal((1, N, H)).astype(np.float32) * 0.5
    Y, Y_h, Y_c = reference_session(silero, name).run(None, {"X": x, "h0": h0, "c0": c0})
    y, (h, c) = model.run(x, (h0, c0))
    np.testing.assert_allclose(y, Y[:, 0], rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(h, Y_h, rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(c, Y_c, rtol=1e-5, atol=1e-5)


def test_streaming_one_frame_at_a_time_matches_onnxruntime(silero):
    """How silero-vad runs: one 128-feature frame per call, state carried across calls."""
    name = "/model/decoder/rnn/LSTM"
    stream = rnnengine.load(PATH, node=name).stream(batch=1)
    session = reference_session(silero, name)
    rng = np.random.default_rng(7)
    h = np.zeros((1, 1, H), np.float32)
    c = np.zeros((1, 1, H), np.float32)
    for _ in range(5):
        frame = rng.standard_normal((1, H)).astype(np.float32)
        Y, h, c = session.run(None, {"X": frame[None], "h0": h, "c0": c})
        np.testing.assert_allclose(stream.step(frame), Y[0, 0], rtol=1e-5, atol=1e-5)


def test_without_node_lists_both_lstms():
    with pytest.raises(ModelError, match=f"^{re.escape(PATH)}: 2 candidate recurrent models; "
                                         "pick one with node=<name>:") as info:
        rnnengine.load(PATH)
    message = str(info.value)
    for qualified in NODES.values():
        assert qualified in message

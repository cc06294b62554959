"""Whole models for the InferenceSession tests and bench/bench_session.py: PyTorch exports
and onnx.helper graphs written the way exporters write them. Each builder returns the
model's bytes (or a ModelProto) and is deterministic for a given seed."""
from __future__ import annotations

import io
import os
import warnings

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

SILERO = os.path.join(os.path.dirname(__file__), "data", "silero_vad_16k_op15.onnx")


def value_info(name, shape, elem=TensorProto.FLOAT):
    return helper.make_tensor_value_info(name, elem, shape)


def graph_model(nodes, inputs, outputs, inits=(), opset=17):
    """A ModelProto of ``nodes`` with the given value infos and initializers, one opset."""
    graph = helper.make_graph(nodes, "g", inputs, outputs, list(inits))
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", opset)])


def _export(module, args, names, outputs, dynamic_axes) -> bytes:
    import torch
    f = io.BytesIO()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        torch.onnx.export(module.eval(), args, f, input_names=names, output_names=outputs,
                          dynamic_axes=dynamic_axes, dynamo=False, opset_version=17)
    return f.getvalue()


def embedding_lstm(state: bool, seed: int = 0, dynamic: bool = True, vocab: int = 20,
                   embed: int = 8, hidden: int = 16) -> bytes:
    """(a) Embedding -> 2-layer LSTM (batch_first) -> Linear -> LogSoftmax; tokens
    [N, T] int64; with ``state`` also h0, c0 [2, N, H] -> hn, cn."""
    import torch

    class A(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.emb = torch.nn.Embedding(vocab, embed)
            self.lstm = torch.nn.LSTM(embed, hidden, 2, batch_first=True)
            self.lin = torch.nn.Linear(hidden, vocab)

        def forward(self, tok, h0=None, c0=None):
            if state:
                y, (h, c) = self.lstm(self.emb(tok), (h0, c0))
                return torch.log_softmax(self.lin(y), -1), h, c
            y, _ = self.lstm(self.emb(tok))
            return torch.log_softmax(self.lin(y), -1)

    torch.manual_seed(seed)
    tok = torch.randint(0, vocab, (1, 3))
    if state:
        args = (tok, torch.zeros(2, 1, hidden), torch.zeros(2, 1, hidden))
        names, outs = ["tokens", "h0", "c0"], ["logp", "hn", "cn"]
    else:
        args, names, outs = (tok,), ["tokens"], ["logp"]
    dyn = None
    if dynamic:
        dyn = {"tokens": {0: "batch", 1: "time"}, "logp": {0: "batch", 1: "time"}}
        if state:
            dyn.update({n: {1: "batch"} for n in ("h0", "c0", "hn", "cn")})
    elif not state:
        dyn = {"tokens": {1: "time"}, "logp": {1: "time"}}
    return _export(A(), args, names, outs, dyn)


def frontend_gru(conv: bool, seed: int = 0, features: int = 10, hidden: int = 16) -> bytes:
    """(b) per-frame front end (Linear, or kernel-1 Conv1d) -> GRU -> Linear -> Sigmoid
    with state I/O. x [N, T, F] (Conv1d: [N, F, T]), h0 [1, N, H] -> y [N, T, 1], hn."""
    import torch

    class B(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.front = (torch.nn.Conv1d(features, 12, 1) if conv
                          else torch.nn.Linear(features, 12))
            self.gru = torch.nn.GRU(12, hidden, batch_first=True)
            self.head = torch.nn.Linear(hidden, 1)

        def forward(self, x, h0):
            z = torch.relu(self.front(x))
            if conv:
                z = z.transpose(1, 2)
            y, h = self.gru(z, h0)
            return torch.sigmoid(self.head(y)), h

    torch.manual_seed(seed)
    x = torch.randn(1, features, 4) if conv else torch.randn(1, 4, features)
    time_axis = 2 if conv else 1
    dyn = {"x": {0: "batch", time_axis: "time"}, "y": {0: "batch", 1: "time"},
           "h0": {1: "batch"}, "hn": {1: "batch"}}
    return _export(B(), (x, torch.zeros(1, 1, hidden)), ["x", "h0"], ["y", "hn"], dyn)


def bilstm_classifier(seed: int = 0, features: int = 6, hidden: int = 8,
                      classes: int = 3) -> onnx.ModelProto:
    """(c) bidirectional LSTM with sequence_lens -> final states of both directions ->
    Gemm -> Softmax. x [T, N, F] float, lens [N] int32 -> probs [N, classes]."""
    rng = np.random.default_rng(seed)
    H, G = hidden, 4

    def u(*shape):
        return rng.uniform(-0.5, 0.5, shape).astype(np.float32)

    inits = [numpy_helper.from_array(u(2, G * H, features), "W"),
             numpy_helper.from_array(u(2, G * H, H), "R"),
             numpy_helper.from_array(u(2, 2 * G * H), "B"),
             numpy_helper.from_array(u(classes, 2 * H), "Wc"),
             numpy_helper.from_array(u(classes), "bc")]
    nodes = [
        helper.make_node("LSTM", ["x", "W", "R", "B", "lens"], ["Y", "Y_h"], hidden_size=H,
                         direction="bidirectional", name="bilstm"),
        helper.make_node("Transpose", ["Y_h"], ["hT"], perm=[1, 0, 2]),
        helper.make_node("Flatten", ["hT"], ["feat"], axis=1),
        helper.make_node("Gemm", ["feat", "Wc", "bc"], ["logits"], transB=1),
        helper.make_node("Softmax", ["logits"], ["probs"], axis=-1),
    ]
    graph = helper.make_graph(
        nodes, "bilstm_classifier",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["T", "N", features]),
         helper.make_tensor_value_info("lens", TensorProto.INT32, ["N"])],
        [helper.make_tensor_value_info("probs", TensorProto.FLOAT, ["N", classes])], inits)
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])


def packed_lstm(seed: int = 0, features: int = 10, hidden: int = 8,
                outputs: int = None, swap: bool = False) -> onnx.ModelProto:
    """(d) two LSTM layers whose (h, c) travel packed in one state tensor [1, 2, H, 2]
    (batch, layer, unit, h/c), unpacked with Slice/Squeeze and packed with Unsqueeze/Concat
    as tf2onnx writes a Keras model; then MatMul + Add + Sigmoid (DTLN's mask head).
    x [1, 1, F] -> y [1, 1, outputs], state -> stateN. ``swap`` packs (c, h) instead: the
    state fed back is not the state that came out (a quirk a stream must reproduce)."""
    rng = np.random.default_rng(seed)
    H, O = hidden, outputs or features

    def u(*shape):
        return rng.uniform(-0.3, 0.3, shape).astype(np.float32)

    def i64(*v):
        return np.array(v, np.int64)

    inits = {"W1": u(1, 4 * H, features), "R1": u(1, 4 * H, H), "B1": u(1, 8 * H),
             "W2": u(1, 4 * H, H), "R2": u(1, 4 * H, H), "B2": u(1, 8 * H),
             "Wd": u(H, O), "bd": u(O), "ax1": i64(1), "ax3": i64(3), "ax13": i64(1, 3)}
    for layer in range(2):
        for k in range(2):
            inits[f"s{layer}{k}"] = i64(layer, k)
            inits[f"e{layer}{k}"] = i64(layer + 1, k + 1)
    nodes = [helper.make_node("Transpose", ["x"], ["xt"], perm=[1, 0, 2])]
    for layer in range(2):
        parts = []
        for k, what in enumerate("hc"):
            raw = f"{what}{layer}_raw"
            nodes += [helper.make_node("Slice", ["state", f"s{layer}{k}", f"e{layer}{k}",
                                                 "ax13"], [raw]),
                      helper.make_node("Squeeze", [raw, "ax3"], [f"{what}{layer}_sq"]),
                      helper.make_node("Transpose", [f"{what}{layer}_sq"],
                                       [f"{what}{layer}_0"], perm=[1, 0, 2])]
            parts.append(f"{what}{layer}_0")
        x_in = "xt" if layer == 0 else "y0"
        nodes += [helper.make_node(
            "LSTM", [x_in, f"W{layer + 1}", f"R{layer + 1}", f"B{layer + 1}", "",
                     parts[0], parts[1]], [f"Y{layer}", f"Yh{layer}", f"Yc{layer}"],
            hidden_size=H, name=f"lstm{layer}"),
            helper.make_node("Squeeze", [f"Y{layer}", "ax1"], [f"y{layer}"])]
        for what in "hc":
            nodes += [helper.make_node("Transpose", [f"Y{what}{layer}"],
                                       [f"{what}{layer}_t"], perm=[1, 0, 2]),
                      helper.make_node("Unsqueeze", [f"{what}{layer}_t", "ax3"],
                                       [f"{what}{layer}_u"])]
        order = [f"c{layer}_u", f"h{layer}_u"] if swap else [f"h{layer}_u", f"c{layer}_u"]
        nodes.append(helper.make_node("Concat", order, [f"pack{layer}"], axis=3))
    nodes += [helper.make_node("Concat", ["pack0", "pack1"], ["stateN"], axis=1),
              helper.make_node("Transpose", ["y1"], ["yb"], perm=[1, 0, 2]),
              helper.make_node("MatMul", ["yb", "Wd"], ["d"]),
              helper.make_node("Add", ["d", "bd"], ["db"]),
              helper.make_node("Sigmoid", ["db"], ["y"])]
    graph = helper.make_graph(
        nodes, "packed_lstm",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 1, features]),
         helper.make_tensor_value_info("state", TensorProto.FLOAT, [1, 2, H, 2])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 1, O]),
         helper.make_tensor_value_info("stateN", TensorProto.FLOAT, [1, 2, H, 2])],
        [numpy_helper.from_array(v, k) for k, v in inits.items()])
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 13)])


def ort_session(model):
    import onnxruntime as ort
    data = model if isinstance(model, (bytes, str)) else model.SerializeToString()
    options = ort.SessionOptions()
    options.intra_op_num_threads = 1
    options.inter_op_num_threads = 1
    options.log_severity_level = 3
    return ort.InferenceSession(data, options, providers=["CPUExecutionProvider"])


class AuthorLoop:
    """ONNX Runtime stepped by hand: the state outputs fed back as the next inputs.

    ``model`` is what ort_session takes, or an ONNX Runtime session already made (several loops
    can share one); ``pairs`` maps each state output to the input it feeds."""

    def __init__(self, model, pairs, zero):
        self.ort = model if hasattr(model, "get_outputs") else ort_session(model)
        self.names = [o.name for o in self.ort.get_outputs()]
        self.pairs, self.state = pairs, dict(zero)

    def step(self, feeds):
        outs = dict(zip(self.names, self.ort.run(None, {**feeds, **self.state})))
        self.state = {i: outs[o] for o, i in self.pairs.items()}
        return [outs[n] for n in self.names if n not in self.pairs]

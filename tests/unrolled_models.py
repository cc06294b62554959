"""Models whose recurrent cell is unrolled into plain operators (no LSTM/GRU node), for
tests/onnx/test_graph_rewrite.py and bench/bench_unrolled.py: PyTorch exports of nn.LSTMCell /
nn.GRUCell and onnx.helper graphs written as tf2onnx writes Keras cells."""
from __future__ import annotations

import io
import warnings

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

F = TensorProto.FLOAT


def torch_cell(kind: str, dynamo: bool, features: int = 10, hidden: int = 16,
               seed: int = 0) -> bytes:
    """x [N, I] -> nn.LSTMCell / nn.GRUCell -> Linear(H, 3) -> y, with the state as graph
    inputs h (, c) [N, H] and outputs hn (, cn); the batch axis is dynamic."""
    import torch

    class Cell(torch.nn.Module):
        def __init__(self):
            super().__init__()
            make = torch.nn.LSTMCell if kind == "lstm" else torch.nn.GRUCell
            self.cell = make(features, hidden)
            self.lin = torch.nn.Linear(hidden, 3)

        def forward(self, x, h, c=None):
            if kind == "lstm":
                h2, c2 = self.cell(x, (h, c))
                return self.lin(h2), h2, c2
            h2 = self.cell(x, h)
            return self.lin(h2), h2

    torch.manual_seed(seed)
    lstm = kind == "lstm"
    args = (torch.randn(2, features), torch.randn(2, hidden)) + (
        (torch.randn(2, hidden),) if lstm else ())
    names = ["x", "h"] + (["c"] if lstm else [])
    outs = ["y", "hn"] + (["cn"] if lstm else [])
    dyn = {n: {0: "batch"} for n in names + outs}
    f = io.BytesIO()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        torch.onnx.export(Cell().eval(), args, f, input_names=names, output_names=outs,
                          dynamic_axes=dyn, dynamo=dynamo,
                          opset_version=18 if dynamo else 17, verbose=False)
    return f.getvalue()


def _w(rng, *shape):
    return (rng.standard_normal(shape) * 0.4).astype(np.float32)


def keras_lstm_cell(features: int = 6, units: int = 8, seed: int = 0, order: str = "ifco",
                    gates: str = "split", opset: int = 13, change: str = "") -> onnx.ModelProto:
    """A Keras LSTMCell as tf2onnx writes it: MatMul(x, kernel) + MatMul(h, recurrent_kernel)
    + bias -> Split in 4 on axis 1 (``gates="slice"``: four Slices; ``"concat"``: one MatMul
    on Concat(x, h)) -> Sigmoid/Tanh -> c' = f*c + i*g, h' = o*tanh(c'), then a Dense head.
    ``order`` names the blocks (Keras: i, f, c, o). ``change`` builds a near miss:
    "second_consumer" (a gate activation is also a graph output), "weight_input" (the
    recurrent kernel is a graph input), "relu" (Relu where Tanh was), "hard_sigmoid"."""
    rng = np.random.default_rng(seed)
    I, U = features, units
    inits = {"kernel": _w(rng, I, 4 * U), "recurrent_kernel": _w(rng, U, 4 * U),
             "bias": _w(rng, 4 * U), "dense_w": _w(rng, U, 2), "dense_b": _w(rng, 2)}
    nodes = []
    if gates == "concat":
        inits["joint"] = np.concatenate([inits.pop("kernel"), inits.pop("recurrent_kernel")])
        nodes += [helper.make_node("Concat", ["x", "h"], ["xh"], axis=1),
                  helper.make_node("MatMul", ["xh", "joint"], ["z0"])]
    else:
        nodes += [helper.make_node("MatMul", ["x", "kernel"], ["xk"]),
                  helper.make_node("MatMul", ["h", "recurrent_kernel"], ["hr"]),
                  helper.make_node("Add", ["xk", "hr"], ["z0"])]
    nodes.append(helper.make_node("Add", ["z0", "bias"], ["z"]))
    block = {g: f"z_{g}" for g in order}
    if gates == "slice":
        for k, g in enumerate(order):
            for what, v in (("s", k * U), ("e", (k + 1) * U), ("a", 1)):
                inits[f"{what}{g}"] = np.array([v], np.int64)
            nodes.append(helper.make_node("Slice", ["z", f"s{g}", f"e{g}", f"a{g}"],
                                          [block[g]]))
    else:
        nodes.append(helper.make_node("Split", ["z"], [block[g] for g in order], axis=1,
                                      **({"num_outputs": 4} if opset >= 18 else {})))
    sig = "HardSigmoid" if change == "hard_sigmoid" else "Sigmoid"
    nodes += [helper.make_node(sig, [block["i"]], ["i"]),
              helper.make_node(sig, [block["f"]], ["f"]),
              helper.make_node("Relu" if change == "relu" else "Tanh", [block["c"]], ["g"]),
              helper.make_node(sig, [block["o"]], ["o"]),
              helper.make_node("Mul", ["f", "c"], ["fc"]),
              helper.make_node("Mul", ["i", "g"], ["ig"]),
              helper.make_node("Add", ["fc", "ig"], ["c_new"]),
              helper.make_node("Tanh", ["c_new"], ["tc"]),
              helper.make_node("Mul", ["o", "tc"], ["h_new"]),
              helper.make_node("MatMul", ["h_new", "dense_w"], ["d0"]),
              helper.make_node("Add", ["d0", "dense_b"], ["y"])]
    inputs = [helper.make_tensor_value_info("x", F, ["N", I]),
              helper.make_tensor_value_info("h", F, ["N", U]),
              helper.make_tensor_value_info("c", F, ["N", U])]
    outputs = [helper.make_tensor_value_info("y", F, ["N", 2]),
               helper.make_tensor_value_info("h_new", F, ["N", U]),
               helper.make_tensor_value_info("c_new", F, ["N", U])]
    if change == "second_consumer":
        outputs.append(helper.make_tensor_value_info("f", F, ["N", U]))
    if change == "weight_input":
        inputs.append(helper.make_tensor_value_info("recurrent_kernel", F, [U, 4 * U]))
        del inits["recurrent_kernel"]
    graph = helper.make_graph(nodes, "keras_lstm_cell", inputs, outputs,
                              [numpy_helper.from_array(v, k) for k, v in inits.items()])
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", opset)])


def keras_gru_cell(features: int = 6, units: int = 8, seed: int = 0) -> onnx.ModelProto:
    """A Keras GRUCell (reset_after=True) as tf2onnx writes it: x kernel + input bias and
    h recurrent_kernel + recurrent bias each Split in 3 (z, r, h); hh = tanh(x_h + r * h_h);
    h' = z * h + (1 - z) * hh."""
    rng = np.random.default_rng(seed)
    I, U = features, units
    inits = {"kernel": _w(rng, I, 3 * U), "recurrent_kernel": _w(rng, U, 3 * U),
             "bias_x": _w(rng, 3 * U), "bias_h": _w(rng, 3 * U),
             "one": np.array(1.0, np.float32)}
    nodes = [helper.make_node("MatMul", ["x", "kernel"], ["mx0"]),
             helper.make_node("Add", ["mx0", "bias_x"], ["mx"]),
             helper.make_node("MatMul", ["h", "recurrent_kernel"], ["mh0"]),
             helper.make_node("Add", ["mh0", "bias_h"], ["mh"]),
             helper.make_node("Split", ["mx"], ["x_z", "x_r", "x_h"], axis=-1),
             helper.make_node("Split", ["mh"], ["h_z", "h_r", "h_h"], axis=-1),
             helper.make_node("Add", ["x_z", "h_z"], ["zs"]),
             helper.make_node("Sigmoid", ["zs"], ["z"]),
             helper.make_node("Add", ["x_r", "h_r"], ["rs"]),
             helper.make_node("Sigmoid", ["rs"], ["r"]),
             helper.make_node("Mul", ["r", "h_h"], ["rh"]),
             helper.make_node("Add", ["x_h", "rh"], ["hs"]),
             helper.make_node("Tanh", ["hs"], ["hh"]),
             helper.make_node("Mul", ["z", "h"], ["zh"]),
             helper.make_node("Sub", ["one", "z"], ["omz"]),
             helper.make_node("Mul", ["omz", "hh"], ["zhh"]),
             helper.make_node("Add", ["zh", "zhh"], ["h_new"])]
    graph = helper.make_graph(
        nodes, "keras_gru_cell",
        [helper.make_tensor_value_info("x", F, ["N", I]),
         helper.make_tensor_value_info("h", F, ["N", U])],
        [helper.make_tensor_value_info("h_new", F, ["N", U])],
        [numpy_helper.from_array(v, k) for k, v in inits.items()])
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 13)])


def cell_in_if_branch() -> onnx.ModelProto:
    """``keras_lstm_cell`` inside an If's then-branch (weights read from the outer graph, as
    PyTorch's exports of Silero-style decoders place them); the else-branch passes the state
    through and outputs the head on h. Inputs x, h, c, bool ``run``; outputs Y, H, C."""
    cell = keras_lstm_cell()
    g = cell.graph
    then = helper.make_graph(list(g.node), "then", [], list(g.output[:3]))
    other = helper.make_graph(
        [helper.make_node("MatMul", ["h", "dense_w"], ["e0"]),
         helper.make_node("Add", ["e0", "dense_b"], ["e_y"]),
         helper.make_node("Identity", ["h"], ["e_h"]),
         helper.make_node("Identity", ["c"], ["e_c"])], "else", [],
        [helper.make_tensor_value_info(n, F, None) for n in ("e_y", "e_h", "e_c")])
    node = helper.make_node("If", ["run"], ["Y", "H", "C"], then_branch=then,
                            else_branch=other)
    graph = helper.make_graph(
        [node], "cell_in_if",
        list(g.input) + [helper.make_tensor_value_info("run", TensorProto.BOOL, [])],
        [helper.make_tensor_value_info(n, F, None) for n in ("Y", "H", "C")],
        list(g.initializer))
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 13)])


def keras_export(kind: str, path, features: int = 6, units: int = 8, seed: int = 0) -> None:
    """A Keras 3 functional model calling ``keras.layers.LSTMCell``/``GRUCell`` once, then a
    Dense head, exported by Keras itself (``model.export(format="onnx")``; with
    KERAS_BACKEND=torch it goes through torch.onnx and writes a float->float Cast on nearly
    every edge). Inputs x [batch, I], h (, c) [batch, U]; the outputs keep Keras' names
    (head, h', c' in that order)."""
    import keras
    keras.utils.set_random_seed(seed)
    x = keras.Input((features,), name="x")
    h = keras.Input((units,), name="h")
    if kind == "lstm":
        c = keras.Input((units,), name="c")
        out, (h2, c2) = keras.layers.LSTMCell(units, bias_initializer="random_normal")(x, [h, c])
        model = keras.Model([x, h, c], [keras.layers.Dense(2)(out), h2, c2])
    else:
        out, h2 = keras.layers.GRUCell(units, bias_initializer="random_normal")(x, h)
        model = keras.Model([x, h], [keras.layers.Dense(2)(out), h2])
    model([np.zeros((1, a.shape[1]), np.float32) for a in model.inputs])
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        model.export(str(path), format="onnx", verbose=False)


def torch_cell_loop(steps: int = 3, features: int = 10, hidden: int = 16, seed: int = 0,
                    collect: bool = False, length: int = 0, kind: str = "lstm",
                    dynamo: bool = False) -> bytes:
    """x [N, length or steps, I] -> nn.LSTMCell (``kind="gru"``: nn.GRUCell) applied to the
    first ``steps`` timesteps in a Python loop (the exporter unrolls it: ``steps`` cells
    sharing weights, each h' the next one's h) -> Linear on the last h (``collect``: on every
    step's h, stacked); state h (, c) [N, H] in and hn (, cn) out."""
    import torch
    lstm = kind == "lstm"

    class Loop(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.cell = (torch.nn.LSTMCell if lstm else torch.nn.GRUCell)(features, hidden)
            self.lin = torch.nn.Linear(hidden, 3)

        def forward(self, x, h, c=None):
            hs = []
            for t in range(steps):
                if lstm:
                    h, c = self.cell(x[:, t], (h, c))
                else:
                    h = self.cell(x[:, t], h)
                hs.append(h)
            y = self.lin(torch.stack(hs, 1) if collect else h)
            return (y, h, c) if lstm else (y, h)

    torch.manual_seed(seed)
    args = (torch.randn(2, length or steps, features), torch.randn(2, hidden)) + (
        (torch.randn(2, hidden),) if lstm else ())
    names = ["x", "h", "c"][:len(args)]
    outs = ["y", "hn", "cn"][:len(args)]
    f = io.BytesIO()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        torch.onnx.export(Loop().eval(), args, f, input_names=names, output_names=outs,
                          dynamo=dynamo, opset_version=18 if dynamo else 17,
                          dynamic_axes={n: {0: "batch"} for n in names + outs})
    return f.getvalue()

"""Valid seed files for the loader fuzzers: small ONNX models of each recurrent op (weights as
initializers, Constant nodes and a folded Unsqueeze chain) and .npz archives in each naming
scheme the loaders read. Written into a folder the fuzzers then mutate."""
import os
import sys

import numpy as np
from onnx import TensorProto, helper, numpy_helper


def onnx_seed(op: str, gates: int, H: int = 3, I: int = 2, direction: str = "forward",
              via_constants: bool = False) -> bytes:
    rng = np.random.default_rng(gates)
    D = 2 if direction == "bidirectional" else 1
    W = rng.standard_normal((D, gates * H, I)).astype(np.float32)
    R = rng.standard_normal((D, gates * H, H)).astype(np.float32)
    B = rng.standard_normal((D, 2 * gates * H)).astype(np.float32)
    nodes, inits = [], []
    if via_constants:
        for name, value in (("W", W[0]), ("R", R[0]), ("B", B[0])):
            nodes.append(helper.make_node("Constant", [], [name + "_raw"],
                                          value=numpy_helper.from_array(value)))
            inits.append(numpy_helper.from_array(np.array([0], np.int64), name + "_axes"))
            nodes.append(helper.make_node("Unsqueeze", [name + "_raw", name + "_axes"], [name]))
    else:
        inits += [numpy_helper.from_array(W, "W"), numpy_helper.from_array(R, "R"),
                  numpy_helper.from_array(B, "B")]
    nodes.append(helper.make_node(op, ["X", "W", "R", "B"], ["Y", "Y_h"], name="rnn0",
                                  hidden_size=H, direction=direction))
    graph = helper.make_graph(
        nodes, "seed", [helper.make_tensor_value_info("X", TensorProto.FLOAT, [None, None, I])],
        [helper.make_tensor_value_info("Y", TensorProto.FLOAT, None)], initializer=inits)
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 14)]).SerializeToString()


def npz_seeds():
    rng = np.random.default_rng(0)
    H, I = 3, 2
    r = lambda *s: rng.standard_normal(s).astype(np.float32)
    yield "torch_lstm", {"rnn.weight_ih_l0": r(4 * H, I), "rnn.weight_hh_l0": r(4 * H, H),
                         "rnn.bias_ih_l0": r(4 * H), "rnn.bias_hh_l0": r(4 * H)}
    yield "torch_gru", {"weight_ih_l0": r(3 * H, I), "weight_hh_l0": r(3 * H, H)}
    yield "keras_lstm", {"lstm/lstm_cell/kernel": r(I, 4 * H),
                         "lstm/lstm_cell/recurrent_kernel": r(H, 4 * H),
                         "lstm/lstm_cell/bias": r(4 * H)}
    yield "onnx_rnn", {"W": r(1, H, I), "R": r(1, H, H), "B": r(1, 2 * H)}


def session_seed(H: int = 3, I: int = 2) -> bytes:
    """A whole graph for the InferenceSession fuzzer: state input -> Squeeze -> LSTM ->
    MatMul + Add + Sigmoid head, final state -> Unsqueeze -> state output, an If on a
    run-time flag."""
    rng = np.random.default_rng(7)
    inits = [numpy_helper.from_array(rng.standard_normal(s).astype(np.float32), n)
             for n, s in (("W", (1, 4 * H, I)), ("R", (1, 4 * H, H)), ("B", (1, 8 * H)),
                          ("Wd", (H, 2)), ("bd", (2,)))]
    inits.append(numpy_helper.from_array(np.array([0], np.int64), "ax"))
    branch = helper.make_graph([helper.make_node("Identity", ["p"], ["o"])], "b", [],
                               [helper.make_tensor_value_info("o", TensorProto.FLOAT, None)])
    nodes = [helper.make_node("Squeeze", ["state", "ax"], ["h0"]),
             helper.make_node("LSTM", ["X", "W", "R", "B", "", "h0"], ["Y", "Y_h"],
                              hidden_size=H, name="rnn0"),
             helper.make_node("MatMul", ["Y", "Wd"], ["m"]),
             helper.make_node("Add", ["m", "bd"], ["a"]),
             helper.make_node("Sigmoid", ["a"], ["p"]),
             helper.make_node("If", ["flag"], ["y"], then_branch=branch, else_branch=branch),
             helper.make_node("Unsqueeze", ["Y_h", "ax"], ["stateN"])]
    graph = helper.make_graph(
        nodes, "session_seed",
        [helper.make_tensor_value_info("X", TensorProto.FLOAT, ["T", "N", I]),
         helper.make_tensor_value_info("state", TensorProto.FLOAT, [1, 1, "N", H]),
         helper.make_tensor_value_info("flag", TensorProto.BOOL, [])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, None),
         helper.make_tensor_value_info("stateN", TensorProto.FLOAT, [1, 1, "N", H])],
        initializer=inits)
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)]).SerializeToString()


def write_seeds(folder: str) -> None:
    import io
    os.makedirs(folder, exist_ok=True)
    for op, gates in (("LSTM", 4), ("GRU", 3), ("RNN", 1)):
        for via_constants in (False, True):
            name = f"{op.lower()}{'_const' if via_constants else ''}.onnx"
            with open(os.path.join(folder, name), "wb") as f:
                f.write(onnx_seed(op, gates, via_constants=via_constants))
    with open(os.path.join(folder, "lstm_bidir.onnx"), "wb") as f:
        f.write(onnx_seed("LSTM", 4, direction="bidirectional"))
    with open(os.path.join(folder, "session.onnx"), "wb") as f:
        f.write(session_seed())
    for name, arrays in npz_seeds():
        buffer = io.BytesIO()
        np.savez(buffer, **arrays)
        with open(os.path.join(folder, name + ".npz"), "wb") as f:
            f.write(buffer.getvalue())


if __name__ == "__main__":
    write_seeds(sys.argv[1] if len(sys.argv) > 1 else "fuzz/corpus")

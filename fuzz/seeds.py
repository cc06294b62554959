"""Valid seed files for the loader fuzzers: small ONNX models of each recurrent op (weights as
initializers, Constant nodes and a folded Unsqueeze chain) and .npz archives in each naming
scheme the loaders read, also as .safetensors. Written into a folder the fuzzers then mutate."""
import json
import os
import struct
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


def onnx_chain_seed(op: str, gates: int, sizes=(3, 3), I: int = 2, cycle: bool = False,
                    seed: int = 0) -> bytes:
    """Recurrent nodes rnn0 -> rnn1 -> ... joined as PyTorch exports a stack (Y [T, 1, N, H]
    -> Squeeze(1) -> next X), hidden sizes ``sizes``. Different sizes are a valid graph that
    is not one stack; ``cycle=True`` feeds the last node's output back into rnn0 (malformed)."""
    rng = np.random.default_rng(seed)
    nodes = [helper.make_node("Constant", [], ["axis1"],
                              value=numpy_helper.from_array(np.array([1], np.int64)))]
    inits = []
    widths = [sizes[-1] if cycle else I] + list(sizes)
    for k, H in enumerate(sizes):
        for name, shape in (("W", (1, gates * H, widths[k])), ("R", (1, gates * H, H)),
                            ("B", (1, 2 * gates * H))):
            inits.append(numpy_helper.from_array(
                (0.5 * rng.standard_normal(shape)).astype(np.float32), f"{name}{k}"))
        x = f"X{k}" if k or cycle else "X"
        nodes.append(helper.make_node(op, [x, f"W{k}", f"R{k}", f"B{k}"], [f"Y{k}"],
                                      name=f"rnn{k}", hidden_size=H))
        nodes.append(helper.make_node("Squeeze", [f"Y{k}", "axis1"],
                                      [f"X{(k + 1) % len(sizes)}" if cycle else f"X{k + 1}"]))
    graph = helper.make_graph(
        nodes, "chain", [helper.make_tensor_value_info("X", TensorProto.FLOAT, [None, None, I])],
        [helper.make_tensor_value_info(f"Y{len(sizes) - 1}", TensorProto.FLOAT, None)],
        initializer=inits)
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
    # Multi-layer archives: two LSTM layers, a bidirectional GRU pair, a projection, and
    # layers of different widths (malformed: a mutation away from a wider layer 1).
    yield "torch_lstm_2layers", {"weight_ih_l0": r(4 * H, I), "weight_hh_l0": r(4 * H, H),
                                 "weight_ih_l1": r(4 * H, H), "weight_hh_l1": r(4 * H, H),
                                 "bias_ih_l1": r(4 * H), "bias_hh_l1": r(4 * H)}
    yield "torch_gru_bidir_2layers", {
        f"weight_{p}_l{k}{rev}": r(3 * H, (I if k == 0 else 2 * H) if p == "ih" else H)
        for k in (0, 1) for rev in ("", "_reverse") for p in ("ih", "hh")}
    yield "torch_lstm_proj_2layers", {"weight_ih_l0": r(4 * H, I), "weight_hh_l0": r(4 * H, 2),
                                      "weight_hr_l0": r(2, H), "weight_ih_l1": r(4 * H, 2),
                                      "weight_hh_l1": r(4 * H, 2), "weight_hr_l1": r(2, H)}
    yield "torch_lstm_mixed_widths", {"weight_ih_l0": r(4, I), "weight_hh_l0": r(4, 1),
                                      "weight_ih_l1": r(64, 1), "weight_hh_l1": r(64, 16)}


def safetensors_bytes(arrays: dict) -> bytes:
    """The .safetensors layout (8-byte little-endian header length, JSON header, raw data),
    written here so the seeds need no safetensors package."""
    header, data = {"__metadata__": {"format": "pt"}}, b""
    for name, a in arrays.items():
        raw = np.ascontiguousarray(a, "<f4").tobytes()
        header[name] = {"dtype": "F32", "shape": list(a.shape),
                        "data_offsets": [len(data), len(data) + len(raw)]}
        data += raw
    text = json.dumps(header).encode()
    return struct.pack("<Q", len(text)) + text + data


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


def compiled_session_seed(H: int = 3, I: int = 2, vocab: int = 5) -> bytes:
    """A whole graph whose stream step runs compiled (stream_runner): tokens -> Gather of an
    embedding -> GRU (h0 from the state input by Squeeze) -> Squeeze -> MatMul + Add +
    Sigmoid head; final state -> Unsqueeze -> state output."""
    rng = np.random.default_rng(8)
    inits = [numpy_helper.from_array(rng.standard_normal(s).astype(np.float32), n)
             for n, s in (("E", (vocab, I)), ("W", (1, 3 * H, I)), ("R", (1, 3 * H, H)),
                          ("B", (1, 6 * H)), ("Wd", (H, 2)), ("bd", (2,)))]
    inits.append(numpy_helper.from_array(np.array([0], np.int64), "ax"))
    inits.append(numpy_helper.from_array(np.array([1], np.int64), "ax1"))
    nodes = [helper.make_node("Gather", ["E", "tokens"], ["X"]),
             helper.make_node("Squeeze", ["state", "ax"], ["h0"]),
             helper.make_node("GRU", ["X", "W", "R", "B", "", "h0"], ["Y", "Y_h"],
                              hidden_size=H, name="rnn0"),
             helper.make_node("Squeeze", ["Y", "ax1"], ["y1"]),
             helper.make_node("MatMul", ["y1", "Wd"], ["m"]),
             helper.make_node("Add", ["m", "bd"], ["a"]),
             helper.make_node("Sigmoid", ["a"], ["y"]),
             helper.make_node("Unsqueeze", ["Y_h", "ax"], ["stateN"])]
    graph = helper.make_graph(
        nodes, "compiled_session_seed",
        [helper.make_tensor_value_info("tokens", TensorProto.INT64, ["T", "N"]),
         helper.make_tensor_value_info("state", TensorProto.FLOAT, [1, 1, "N", H])],
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
    # Chains of nodes: one stack, stacks of mixed hidden sizes (loaded node by node), a cycle.
    chains = {"lstm_chain": ("LSTM", 4, (3, 3), False), "gru_chain3": ("GRU", 3, (3, 3, 3), False),
              "lstm_chain_mixed": ("LSTM", 4, (2, 17), False),
              "rnn_chain_mixed": ("RNN", 1, (19, 3, 3), False),
              "lstm_cycle": ("LSTM", 4, (3, 3), True)}
    for name, (op, gates, sizes, cycle) in chains.items():
        with open(os.path.join(folder, name + ".onnx"), "wb") as f:
            f.write(onnx_chain_seed(op, gates, sizes, cycle=cycle))
    with open(os.path.join(folder, "session.onnx"), "wb") as f:
        f.write(session_seed())
    with open(os.path.join(folder, "session_compiled.onnx"), "wb") as f:
        f.write(compiled_session_seed())
    # Unrolled cells (no recurrent node) that InferenceSession rewrites into LSTM/GRU nodes:
    # the tests' onnx.helper graphs (tests/unrolled_models.py needs only onnx and numpy).
    sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "tests"))
    import unrolled_models
    for name, model in (("unrolled_lstm_cell", unrolled_models.keras_lstm_cell()),
                        ("unrolled_lstm_slices", unrolled_models.keras_lstm_cell(gates="slice")),
                        ("unrolled_gru_cell", unrolled_models.keras_gru_cell()),
                        ("unrolled_cell_in_if", unrolled_models.cell_in_if_branch())):
        with open(os.path.join(folder, name + ".onnx"), "wb") as f:
            f.write(model.SerializeToString())
    for name, arrays in npz_seeds():
        buffer = io.BytesIO()
        np.savez(buffer, **arrays)
        with open(os.path.join(folder, name + ".npz"), "wb") as f:
            f.write(buffer.getvalue())
        with open(os.path.join(folder, name + ".safetensors"), "wb") as f:
            f.write(safetensors_bytes(arrays))


if __name__ == "__main__":
    write_seeds(sys.argv[1] if len(sys.argv) > 1 else "fuzz/corpus")

"""ONNX loader: PyTorch exports (TorchScript exporter with constant folding on and off, dynamo
exporter) against PyTorch, hand-built graphs (weight chains, subgraphs, external data, dtypes)
against ONNX Runtime, and every malformed file against a ModelError naming file, node, reason.

Exports are slow, so each exporter/kind writes one "zoo" model holding many random stacks
side by side (one graph input each); every test case loads its own stack by node name."""
import contextlib
import io
import os
import re
import warnings

import numpy as np
import onnx
import onnxruntime as ort
import pytest
import torch
from onnx import TensorProto, helper, numpy_helper

import rnnengine
from conftest import assert_bytes_are_a_model_error, onnx_node_model, ort_run
from rnnengine import ModelError
from rnnengine.core.gate_order import permutation

TOL = dict(rtol=1e-5, atol=1e-5)
TORCH_CLASSES = {"lstm": torch.nn.LSTM, "gru": torch.nn.GRU, "rnn": torch.nn.RNN}


# --- PyTorch exports -----------------------------------------------------------------------

def random_config(rng, kind):
    config = dict(input_size=int(rng.integers(1, 9)), hidden_size=int(rng.integers(1, 9)),
                  num_layers=int(rng.integers(1, 4)), bidirectional=bool(rng.integers(2)),
                  batch_first=bool(rng.integers(2)), bias=bool(rng.integers(2)))
    if kind == "rnn":
        config["nonlinearity"] = ["tanh", "relu"][int(rng.integers(2))]
    return config


class Zoo(torch.nn.Module):
    """Many independent recurrent stacks in one module, input k -> stack k."""

    def __init__(self, nets):
        super().__init__()
        self.nets = torch.nn.ModuleList(nets)

    def forward(self, *xs):
        outputs = []
        for net, x in zip(self.nets, xs):
            y, state = net(x)
            outputs += [y] + (list(state) if isinstance(state, tuple) else [state])
        return tuple(outputs)


def make_zoo(folder, exporter, kind, count, seed):
    rng = np.random.default_rng(seed)
    torch.manual_seed(seed)
    configs = [random_config(rng, kind) for _ in range(count)]
    nets = [TORCH_CLASSES[kind](**c).eval() for c in configs]
    xs = []
    low = 2 if exporter == "dynamo_dynamic" else 1   # torch.export fixes a dynamic dim of size 1
    for net in nets:   # export shapes differ per stack (N=1 and T=1 included) and from the test's
        T, N = int(rng.integers(low, 6)), int(rng.integers(low, 4))
        xs.append(torch.randn((N, T, net.input_size) if net.batch_first else (T, N, net.input_size)))
    path = os.path.join(folder, f"{exporter}_{kind}.onnx")
    names = [f"x{k}" for k in range(len(nets))]
    kwargs = dict(input_names=names)
    if exporter.startswith("torchscript"):
        kwargs.update(dynamo=False, do_constant_folding=exporter.endswith("folded"))
    elif exporter == "dynamo":
        kwargs.update(dynamo=True)
    elif exporter == "dynamo_dynamic":
        dims = []
        for k, net in enumerate(nets):
            t, n = torch.export.Dim(f"t{k}"), torch.export.Dim(f"n{k}")
            dims.append({0: n, 1: t} if net.batch_first else {0: t, 1: n})
        kwargs.update(dynamo=True, dynamic_shapes=(tuple(dims),))   # forward(*xs): one argument
    with warnings.catch_warnings(), contextlib.redirect_stdout(io.StringIO()):
        warnings.simplefilter("ignore")
        torch.onnx.export(Zoo(nets), tuple(xs), path, **kwargs)
    return path, nets


# (exporter, kind) -> number of random stacks. The dynamo exporter writes no RNN node (see
# test_dynamo_exporter_unrolls_plain_rnn_so_nothing_loads); with dynamic shapes its export time
# grows fast with the number of inputs, hence the smaller zoos.
ZOOS = {("torchscript_folded", "lstm"): 10, ("torchscript_folded", "gru"): 10,
        ("torchscript_folded", "rnn"): 10, ("torchscript_unfolded", "lstm"): 10,
        ("torchscript_unfolded", "gru"): 10, ("torchscript_unfolded", "rnn"): 10,
        ("dynamo", "lstm"): 8, ("dynamo", "gru"): 8,
        ("dynamo_dynamic", "lstm"): 3}
ZOO_CASES = [(exporter, kind, k) for (exporter, kind), n in ZOOS.items() for k in range(n)]


@pytest.fixture(scope="module")
def zoos(tmp_path_factory):
    cache = {}

    def get(exporter, kind):
        if (exporter, kind) not in cache:
            folder = str(tmp_path_factory.mktemp(f"{exporter}_{kind}"))
            seed = list(ZOOS).index((exporter, kind)) + 11
            cache[(exporter, kind)] = make_zoo(folder, exporter, kind, ZOOS[(exporter, kind)], seed)
        return cache[(exporter, kind)]
    return get


def head_node(path, input_name):
    """The recurrent node a graph input flows into (through Transpose), found independently
    of the loader by walking the exported graph."""
    model = onnx.load(path)
    name = input_name
    for _ in range(10):
        for node in model.graph.node:
            if node.input and node.input[0] == name:
                if node.op_type in ("LSTM", "GRU", "RNN"):
                    return node.name
                if node.op_type in ("Transpose", "Identity", "Cast"):
                    name = node.output[0]
                    break
        else:
            break
    raise AssertionError(f"no recurrent node fed by {input_name}")


def torch_reference(net, x):
    with torch.no_grad():
        y, state = net(torch.from_numpy(x))
    if isinstance(state, tuple):
        return y.numpy(), tuple(s.numpy() for s in state)
    return y.numpy(), state.numpy()


def check_against_torch(model, net, rng):
    T, N = 7, 3
    shape = (N, T, net.input_size) if net.batch_first else (T, N, net.input_size)
    x = rng.standard_normal(shape).astype(np.float32)
    y_ref, state_ref = torch_reference(net, x)
    y, state = model.run(x)
    np.testing.assert_allclose(y, y_ref, **TOL)
    if isinstance(state_ref, tuple):
        np.testing.assert_allclose(state[0], state_ref[0], **TOL)
        np.testing.assert_allclose(state[1], state_ref[1], **TOL)
    else:
        np.testing.assert_allclose(state, state_ref, **TOL)


@pytest.mark.parametrize("exporter, kind, index", ZOO_CASES)
def test_pytorch_export_matches_pytorch(zoos, exporter, kind, index):
    path, nets = zoos(exporter, kind)
    net = nets[index]
    model = rnnengine.load(path, node=head_node(path, f"x{index}"))
    assert model.kind == kind
    assert model.num_layers == net.num_layers, "the exporter's layer chain was not joined"
    assert model.num_directions == (2 if net.bidirectional else 1)
    assert model.batch_first == net.batch_first, "input layout not inferred from the Transpose"
    check_against_torch(model, net, np.random.default_rng(index))


def test_zoo_without_node_lists_every_stack(zoos):
    path, nets = zoos("torchscript_folded", "lstm")
    with pytest.raises(ModelError, match=f"^{re.escape(path)}: {len(nets)} candidate recurrent "
                                         "models; pick one with node=<name>:") as info:
        rnnengine.load(path)
    message = str(info.value)
    for k in range(len(nets)):
        assert head_node(path, f"x{k}") in message


def test_single_exported_stack_needs_no_node(tmp_path):
    torch.manual_seed(0)
    net = torch.nn.GRU(4, 5, num_layers=3, bidirectional=True).eval()
    path = str(tmp_path / "gru.onnx")
    with warnings.catch_warnings(), contextlib.redirect_stdout(io.StringIO()):
        warnings.simplefilter("ignore")
        torch.onnx.export(net, (torch.randn(3, 2, 4),), path, dynamo=False)
    model = rnnengine.load(path)
    assert model.num_layers == 3 and not model.batch_first
    check_against_torch(model, net, np.random.default_rng(0))
    # chain=False: only the named node (the first layer), whose output is Y of layer 0
    first = rnnengine.load(path, node=head_node(path, "input"), chain=False)
    assert first.num_layers == 1
    assert rnnengine.load(path, batch_first=True).batch_first


def test_dynamo_exporter_unrolls_plain_rnn_so_nothing_loads(tmp_path):
    # torch.onnx.export(dynamo=True) lowers nn.RNN to MatMul/Tanh per step (no RNN node);
    # the loader must say so rather than load something else.
    net = torch.nn.RNN(3, 4).eval()
    path = str(tmp_path / "rnn_dynamo.onnx")
    with warnings.catch_warnings(), contextlib.redirect_stdout(io.StringIO()):
        warnings.simplefilter("ignore")
        torch.onnx.export(net, (torch.randn(5, 2, 3),), path, dynamo=True)
    with pytest.raises(ModelError, match="no LSTM, GRU or RNN node found") as info:
        rnnengine.load(path)
    assert path in str(info.value)


# --- hand-built graphs, ONNX Runtime as the reference ------------------------------------

G = {"LSTM": 4, "GRU": 3, "RNN": 1}


def weights(op, D, H, I, seed=0, peepholes=False):
    rng = np.random.default_rng(seed)
    W = rng.uniform(-0.6, 0.6, (D, G[op] * H, I)).astype(np.float32)
    R = rng.uniform(-0.6, 0.6, (D, G[op] * H, H)).astype(np.float32)
    B = rng.uniform(-0.6, 0.6, (D, 2 * G[op] * H)).astype(np.float32)
    P = rng.uniform(-0.6, 0.6, (D, 3 * H)).astype(np.float32) if peepholes else None
    return W, R, B, P


def make_model(nodes, inits, inputs, outputs, opset=17):
    graph = helper.make_graph(nodes, "g", inputs, outputs, initializer=inits)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", opset)])
    model.ir_version = 8
    return model


def vinfo(name, shape=None):
    return helper.make_tensor_value_info(name, TensorProto.FLOAT, shape)


def save(model, folder, name="m.onnx"):
    path = os.path.join(str(folder), name)
    onnx.save(model, path)
    return path


def ort_file_run(path, feeds):
    """ONNX Runtime on a saved model (from its path, so that external data is found)."""
    return ort.InferenceSession(path, providers=["CPUExecutionProvider"]).run(None, feeds)


def single_node_reference(op, X, W, R, B=None, P=None, **attributes):
    """ONNX Runtime running one plain node with initializer weights: Y, Y_h (, Y_c)."""
    inputs = {"X": X, "W": W, "R": R, "B": B, "P": P}
    model = onnx_node_model(op, inputs, dict(hidden_size=R.shape[-1], **attributes),
                            initializers=("W", "R", "B", "P"))
    return ort_run(model, inputs)


def check_against_ort(model, X, expected, op):
    """model.run on X (T, N, I) against ONNX Runtime's Y [T, D, N, H], Y_h, Y_c."""
    y, state = model.run(X)
    T, D, N, H = expected[0].shape
    np.testing.assert_allclose(y, expected[0].transpose(0, 2, 1, 3).reshape(T, N, D * H), **TOL)
    h = state[0] if op == "LSTM" else state
    np.testing.assert_allclose(h, expected[1], **TOL)
    if op == "LSTM":
        np.testing.assert_allclose(state[1], expected[2], **TOL)


def x_for(I, T=5, N=2, seed=1):
    return np.random.default_rng(seed).standard_normal((T, N, I)).astype(np.float32)


def const(name, value):
    return helper.make_node("Constant", [], [name], value=numpy_helper.from_array(np.asarray(value)))


def chain_case(kind):
    """(nodes, initializers) computing W, R, B for an LSTM (D=1, H=3, I=2) through a chain of
    foldable ops, and the plain arrays they must equal. ORT evaluates the chain itself."""
    W, R, B, _ = weights("LSTM", 1, 3, 2, seed=CHAINS.index(kind))
    init = numpy_helper.from_array
    if kind == "unsqueeze_attr":   # opset 11 attribute form; the model is built at opset 11
        return ([helper.make_node("Unsqueeze", ["w0"], ["W"], axes=[0]),
                 helper.make_node("Unsqueeze", ["r0"], ["R"], axes=[0]),
                 helper.make_node("Unsqueeze", ["b0"], ["B"], axes=[0])],
                [init(W[0], "w0"), init(R[0], "r0"), init(B[0], "b0")])
    if kind == "torch_gate_reorder":   # Slice per gate + Concat + Unsqueeze, as PyTorch unfolded
        nodes, inits = [], []
        for dst, target in (("W", W[0]), ("R", R[0]), ("B", B[0])):
            order = permutation("lstm", "torch", "onnx")   # B: the W half, then the R half
            order = order if dst != "B" else order + [4 + k for k in order]
            n = target.shape[0] // len(order)
            stored = np.empty_like(target)   # permuted so that the chain restores ``target``
            for k, block in enumerate(order):
                stored[block * n:(block + 1) * n] = target[k * n:(k + 1) * n]
            inits.append(init(stored, dst + "_raw"))
            blocks = []
            for k, block in enumerate(order):
                names = [f"{dst}_{part}{k}" for part in ("start", "end", "axis")]
                nodes += [const(names[0], np.array([block * n])),
                          const(names[1], np.array([(block + 1) * n])), const(names[2], np.array([0])),
                          helper.make_node("Slice", [dst + "_raw"] + names, [f"{dst}_blk{k}"])]
                blocks.append(f"{dst}_blk{k}")
            nodes += [helper.make_node("Concat", blocks, [dst + "_cat"], axis=0),
                      const(dst + "_ax", np.array([0])),
                      helper.make_node("Unsqueeze", [dst + "_cat", dst + "_ax"], [dst])]
        return nodes, inits
    if kind == "transpose_reshape":
        return ([helper.make_node("Transpose", ["wt"], ["wtt"], perm=[1, 0]),
                 const("shape", np.array([1, 12, 2])),
                 helper.make_node("Reshape", ["wtt", "shape"], ["W"]),
                 helper.make_node("Identity", ["r"], ["R"]),
                 helper.make_node("Flatten", ["b3"], ["bf"], axis=0),
                 const("bshape", np.array([1, -1])),
                 helper.make_node("Reshape", ["bf", "bshape"], ["B"])],
                [init(np.ascontiguousarray(W[0].T), "wt"), init(R, "r"), init(B.reshape(1, 4, 6), "b3")])
    if kind == "cast_dtypes":   # float16 -> Cast, float64 -> CastLike, exact values
        W16 = W.astype(np.float16)
        return ([helper.make_node("Cast", ["w16"], ["W"], to=TensorProto.FLOAT),
                 helper.make_node("CastLike", ["r64", "like"], ["R"]),
                 helper.make_node("Cast", ["bbf"], ["B"], to=TensorProto.FLOAT)],
                [init(W16, "w16"), init(R.astype(np.float64), "r64"), init(np.zeros(1, np.float32), "like"),
                 helper.make_tensor("bbf", TensorProto.BFLOAT16, B.shape, B.reshape(-1).tolist())])
    if kind == "arithmetic":   # (w*2 + 1 - 1) / 2, -(-r), Neg, Sub, Div
        return ([const("two", np.float32(2)), const("one", np.float32(1)),
                 helper.make_node("Mul", ["w", "two"], ["w2"]),
                 helper.make_node("Add", ["w2", "one"], ["w3"]),
                 helper.make_node("Sub", ["w3", "one"], ["w4"]),
                 helper.make_node("Div", ["w4", "two"], ["W"]),
                 helper.make_node("Neg", ["rneg"], ["R"]),
                 helper.make_node("Identity", ["b"], ["B"])],
                [init(W, "w"), init(-R, "rneg"), init(B, "b")])
    if kind == "split_gather_squeeze":
        both = np.concatenate([W, W * 0.5], axis=0)    # [2, 12, 2]; Gather picks W
        return ([const("idx", np.array(0)),
                 helper.make_node("Gather", ["both", "idx"], ["w_g"], axis=0),
                 const("ax0", np.array([0])),
                 helper.make_node("Unsqueeze", ["w_g", "ax0"], ["W"]),
                 const("sizes", np.array([1, 1])),
                 helper.make_node("Split", ["rr", "sizes"], ["R", "R_other"], axis=0),
                 helper.make_node("Unsqueeze", ["b_sq", "ax0"], ["b_u"]),
                 helper.make_node("Squeeze", ["b_u", "ax0"], ["B"])],
                [init(both, "both"), init(np.concatenate([R, R + 1]), "rr"), init(B, "b_sq")])
    if kind == "expand_tile_shape":
        # B = zeros from ConstantOfShape(Shape(b)) + Tile/Expand of the real bias pieces
        return ([helper.make_node("Shape", ["b"], ["bshape"]),
                 helper.make_node("ConstantOfShape", ["bshape"], ["bzero"],
                                  value=numpy_helper.from_array(np.zeros(1, np.float32))),
                 helper.make_node("Add", ["bzero", "b"], ["B"]),
                 const("reps", np.array([1, 1, 1])),
                 helper.make_node("Tile", ["w", "reps"], ["W"]),
                 const("eshape", np.array([1, 12, 3])),
                 helper.make_node("Expand", ["r", "eshape"], ["R"])],
                [init(B, "b"), init(W, "w"), init(R, "r")])
    if kind == "dequantize":
        scale = np.float32(0.01)
        q = np.clip(np.round(W / scale), -127, 127).astype(np.int8)
        W[...] = q.astype(np.float32) * scale    # the values ORT will see
        return ([helper.make_node("DequantizeLinear", ["q", "scale", "zero"], ["W"]),
                 helper.make_node("Identity", ["r"], ["R"]),
                 helper.make_node("Identity", ["b"], ["B"])],
                [init(q, "q"), init(np.array(scale), "scale"), init(np.array(0, np.int8), "zero"),
                 init(R, "r"), init(B, "b")])
    raise KeyError(kind)


CHAINS = ["unsqueeze_attr", "torch_gate_reorder", "transpose_reshape", "cast_dtypes",
          "arithmetic", "split_gather_squeeze", "expand_tile_shape", "dequantize"]


@pytest.mark.parametrize("kind", CHAINS)
def test_weight_chain_is_folded_like_onnxruntime(tmp_path, kind):
    nodes, inits = chain_case(kind)
    lstm = helper.make_node("LSTM", ["X", "W", "R", "B"], ["Y", "Y_h", "Y_c"], name="lstm",
                            hidden_size=3)
    opset = 11 if kind == "unsqueeze_attr" else 17
    model = make_model(nodes + [lstm], inits, [vinfo("X")],
                       [vinfo("Y"), vinfo("Y_h"), vinfo("Y_c")], opset=opset)
    path = save(model, tmp_path)
    X = x_for(2)
    check_against_ort(rnnengine.load(path), X, ort_file_run(path, {"X": X}), "LSTM")


@pytest.mark.parametrize("op", ["LSTM", "GRU", "RNN"])
@pytest.mark.parametrize("direction", ["forward", "reverse", "bidirectional"])
def test_constant_nodes_and_attributes(tmp_path, op, direction):
    D = 2 if direction == "bidirectional" else 1
    W, R, B, P = weights(op, D, 4, 3, seed=G[op] + D, peepholes=op == "LSTM")
    attributes = dict(direction=direction, clip=2.5)
    if op == "GRU":
        attributes["linear_before_reset"] = 1
    if op == "RNN":
        attributes.update(activations=["Relu"] * D)
    if op == "LSTM":
        attributes.update(activations=["HardSigmoid", "Tanh", "Softsign"] * D,
                          activation_alpha=[0.3] * D, activation_beta=[0.4] * D)
    nodes = [const("W", W), const("R", R), const("B", B)] + ([const("P", P)] if P is not None else [])
    inputs = ["X", "W", "R", "B"] + (["", "", "", "P"] if P is not None else [])
    outs = ["Y", "Y_h"] + (["Y_c"] if op == "LSTM" else [])
    nodes.append(helper.make_node(op, inputs, outs, name="rec", hidden_size=4, **attributes))
    path = save(make_model(nodes, [], [vinfo("X")], [vinfo(o) for o in outs]), tmp_path)
    X = x_for(3, seed=D)
    check_against_ort(rnnengine.load(path), X, ort_file_run(path, {"X": X}), op)


def test_direct_float16_bfloat16_float64_weights(tmp_path):
    """W/R/B stored in other float types are converted; ORT (float only for LSTM) runs the
    same values stored as float32."""
    W, R, B, _ = weights("LSTM", 1, 3, 2, seed=5)
    W = W.astype(np.float16).astype(np.float32)
    bf = helper.make_tensor("R", TensorProto.BFLOAT16, R.shape, R.reshape(-1).tolist())
    R = numpy_helper.to_array(bf).astype(np.float32)
    node = helper.make_node("LSTM", ["X", "W", "R", "B"], ["Y", "Y_h", "Y_c"], hidden_size=3)
    model = make_model([node], [numpy_helper.from_array(W.astype(np.float16), "W"), bf,
                                numpy_helper.from_array(B.astype(np.float64), "B")],
                       [vinfo("X")], [vinfo("Y"), vinfo("Y_h"), vinfo("Y_c")])
    path = save(model, tmp_path)
    X = x_for(2)
    check_against_ort(rnnengine.load(path), X, single_node_reference("LSTM", X, W, R, B), "LSTM")


def subgraph_model(container):
    """An LSTM inside an If branch / Loop body / Scan body, its weights read from the outer
    graph's initializers through an Unsqueeze in the body."""
    W, R, B, _ = weights("LSTM", 1, 3, 2, seed=8)
    inits = [numpy_helper.from_array(W[0], "w_outer"), numpy_helper.from_array(R, "R_outer"),
             numpy_helper.from_array(B, "B_outer")]
    body_nodes = [const("ax", np.array([0])),
                  helper.make_node("Unsqueeze", ["w_outer", "ax"], ["W_body"]),
                  helper.make_node("LSTM", ["X", "W_body", "R_outer", "B_outer"],
                                   ["Y_body", "Yh_body"], name="inner_lstm", hidden_size=3)]
    if container == "If":
        body = helper.make_graph(body_nodes, "then", [], [vinfo("Y_body")])
        other = helper.make_graph([helper.make_node("Identity", ["X"], ["Y_other"])], "else", [],
                                  [vinfo("Y_other")])
        node = helper.make_node("If", ["cond"], ["Y"], then_branch=body, else_branch=other)
        inputs = [vinfo("X"), helper.make_tensor_value_info("cond", TensorProto.BOOL, [])]
    elif container == "Loop":
        body = helper.make_graph(
            body_nodes + [helper.make_node("Identity", ["c_in"], ["c_out"])], "body",
            [helper.make_tensor_value_info("i", TensorProto.INT64, []),
             helper.make_tensor_value_info("c_in", TensorProto.BOOL, [])],
            [helper.make_tensor_value_info("c_out", TensorProto.BOOL, []), vinfo("Y_body")])
        node = helper.make_node("Loop", ["trip", ""], ["Y"], body=body)
        inputs = [vinfo("X"), helper.make_tensor_value_info("trip", TensorProto.INT64, [])]
    else:  # Scan over a leading axis of length 1
        body_nodes[2] = helper.make_node("LSTM", ["Xs", "W_body", "R_outer", "B_outer"],
                                         ["Y_body", "Yh_body"], name="inner_lstm", hidden_size=3)
        body = helper.make_graph(body_nodes, "scan", [vinfo("Xs")], [vinfo("Y_body")])
        node = helper.make_node("Scan", ["X"], ["Y"], body=body, num_scan_inputs=1)
        inputs = [vinfo("X")]
    return make_model([node], inits, inputs, [vinfo("Y")]), (W, R, B)


@pytest.mark.parametrize("container", ["If", "Loop", "Scan"])
def test_node_inside_subgraph(tmp_path, container):
    model, (W, R, B) = subgraph_model(container)
    path = save(model, tmp_path)
    loaded = rnnengine.load(path)     # the only candidate, found inside the body
    X = x_for(2)
    check_against_ort(loaded, X, single_node_reference("LSTM", X, W, R, B), "LSTM")
    assert rnnengine.load(path, node="inner_lstm").num_layers == 1
    if container == "If":   # ORT running the whole If agrees with the single-node reference
        y_if = ort_file_run(path, {"X": X, "cond": np.array(True)})[0]
        np.testing.assert_allclose(loaded.run(X)[0], y_if[:, 0], **TOL)


def test_external_data_is_read_beside_the_model(tmp_path):
    W, R, B, _ = weights("GRU", 1, 16, 16, seed=3)
    node = helper.make_node("GRU", ["X", "W", "R", "B"], ["Y", "Y_h"], hidden_size=16,
                            linear_before_reset=1)
    model = make_model([node], [numpy_helper.from_array(a, n) for a, n in ((W, "W"), (R, "R"), (B, "B"))],
                       [vinfo("X")], [vinfo("Y"), vinfo("Y_h")])
    path = str(tmp_path / "ext.onnx")
    onnx.save_model(model, path, save_as_external_data=True, all_tensors_to_one_file=True,
                    location="weights.bin", size_threshold=0)
    assert os.path.getsize(tmp_path / "weights.bin") > W.nbytes
    X = x_for(16)
    check_against_ort(rnnengine.load(path), X, ort_file_run(path, {"X": X}), "GRU")


@pytest.mark.parametrize("location", ["../outside.bin", "/etc/passwd", "sub/../../outside.bin"])
def test_external_data_escaping_the_folder_is_refused(tmp_path, location):
    folder = tmp_path / "model"
    folder.mkdir()
    (tmp_path / "outside.bin").write_bytes(np.zeros(64, np.float32).tobytes())
    W, R, B, _ = weights("RNN", 1, 2, 2)
    tensor = numpy_helper.from_array(W, "W")
    tensor.ClearField("raw_data")
    tensor.data_location = TensorProto.EXTERNAL
    for key, value in (("location", location), ("offset", "0"), ("length", str(W.nbytes))):
        tensor.external_data.add(key=key, value=value)
    node = helper.make_node("RNN", ["X", "W", "R"], ["Y"], name="rnn_ext", hidden_size=2)
    path = save(make_model([node], [tensor, numpy_helper.from_array(R, "R")], [vinfo("X")],
                           [vinfo("Y")]), folder)
    with pytest.raises(ModelError, match=f"^{re.escape(path)}: node 'rnn_ext': .*external data "
                                         f"location {re.escape(repr(location))} is outside the "
                                         f"model's folder {re.escape(repr(str(folder)))}; refused"):
        rnnengine.load(path)


def test_layout_1_is_batch_first(tmp_path):
    """ONNX Runtime rejects layout=1, so its reference is the layout=0 node on transposed data."""
    W, R, B, _ = weights("GRU", 2, 3, 4, seed=9)
    node = helper.make_node("GRU", ["X", "W", "R", "B"], ["Y", "Y_h"], hidden_size=3,
                            direction="bidirectional", layout=1)
    path = save(make_model([node], [numpy_helper.from_array(a, n) for a, n in
                                    ((W, "W"), (R, "R"), (B, "B"))], [vinfo("X")],
                           [vinfo("Y"), vinfo("Y_h")]), tmp_path)
    model = rnnengine.load(path)
    assert model.batch_first
    X = x_for(4, T=6, N=3)
    Y, Y_h = single_node_reference("GRU", X, W, R, B, direction="bidirectional")
    y, h = model.run(np.ascontiguousarray(X.transpose(1, 0, 2)))
    np.testing.assert_allclose(y, Y.transpose(2, 0, 1, 3).reshape(3, 6, 6), **TOL)
    np.testing.assert_allclose(h, Y_h, **TOL)


def test_layout_1_chain_of_two_nodes(tmp_path):
    """Layer 0's Y [N, T, D, H] -> Reshape(0, 0, -1) -> layer 1's X [N, T, D*H] (layout=1)."""
    W0, R0, B0, _ = weights("LSTM", 2, 3, 4, seed=1)
    W1, R1, B1, _ = weights("LSTM", 2, 3, 6, seed=2)
    init = numpy_helper.from_array
    nodes = [helper.make_node("LSTM", ["X", "W0", "R0", "B0"], ["Y0"], name="l0", hidden_size=3,
                              direction="bidirectional", layout=1),
             const("shape", np.array([0, 0, -1])),
             helper.make_node("Reshape", ["Y0", "shape"], ["X1"]),
             helper.make_node("LSTM", ["X1", "W1", "R1", "B1"], ["Y1"], name="l1", hidden_size=3,
                              direction="bidirectional", layout=1)]
    inits = [init(W0, "W0"), init(R0, "R0"), init(B0, "B0"), init(W1, "W1"), init(R1, "R1"), init(B1, "B1")]
    path = save(make_model(nodes, inits, [vinfo("X")], [vinfo("Y1")]), tmp_path)
    model = rnnengine.load(path)
    assert model.num_layers == 2 and model.batch_first
    X = x_for(4, T=5, N=2)
    Y0 = single_node_reference("LSTM", X, W0, R0, B0, direction="bidirectional")[0]
    X1 = Y0.transpose(0, 2, 1, 3).reshape(5, 2, 6)
    Y1 = single_node_reference("LSTM", X1, W1, R1, B1, direction="bidirectional")[0]
    y, _ = model.run(np.ascontiguousarray(X.transpose(1, 0, 2)))
    np.testing.assert_allclose(y, Y1.transpose(2, 0, 1, 3).reshape(2, 5, 6), **TOL)


def test_intermediate_used_elsewhere_keeps_layers_separate(tmp_path):
    """If layer 0's output also leaves the graph, joining would hide it: two candidates."""
    W0, R0, B0, _ = weights("RNN", 1, 3, 2, seed=1)
    W1, R1, B1, _ = weights("RNN", 1, 3, 3, seed=2)
    init = numpy_helper.from_array
    nodes = [helper.make_node("RNN", ["X", "W0", "R0", "B0"], ["Y0"], name="first", hidden_size=3),
             const("ax", np.array([1])),
             helper.make_node("Squeeze", ["Y0", "ax"], ["X1"]),
             helper.make_node("RNN", ["X1", "W1", "R1", "B1"], ["Y1"], name="second", hidden_size=3)]
    inits = [init(W0, "W0"), init(R0, "R0"), init(B0, "B0"), init(W1, "W1"), init(R1, "R1"), init(B1, "B1")]
    joined = save(make_model(nodes, inits, [vinfo("X")], [vinfo("Y1")]), tmp_path, "joined.onnx")
    assert rnnengine.load(joined).num_layers == 2
    split = save(make_model(nodes, inits, [vinfo("X")], [vinfo("Y1"), vinfo("X1")]), tmp_path,
                 "split.onnx")
    with pytest.raises(ModelError, match="2 candidate"):
        rnnengine.load(split)
    X = x_for(2)
    second = rnnengine.load(split, node="second")
    X1 = single_node_reference("RNN", X, W0, R0, B0)[0][:, 0]
    check_against_ort(second, X1, single_node_reference("RNN", X1, W1, R1, B1), "RNN")


def test_node_names_qualified_and_by_output(tmp_path):
    """Two If branches holding nodes of the same name: the short name is ambiguous, the
    qualified name and the output name are not."""
    W, R, B, _ = weights("RNN", 1, 2, 2, seed=4)
    inits = [numpy_helper.from_array(a, n) for a, n in ((W, "W"), (R, "R"), (B, "B"))]
    branches = []
    for label, scale in (("then", 1.0), ("else", 2.0)):
        nodes = [const(f"two_{label}", np.float32(scale)),
                 helper.make_node("Mul", ["W", f"two_{label}"], [f"W_{label}"]),
                 helper.make_node("RNN", ["X", f"W_{label}", "R", "B"], [f"Y_{label}"],
                                  name="rnn", hidden_size=2)]
        branches.append(helper.make_graph(nodes, label, [], [vinfo(f"Y_{label}")]))
    node = helper.make_node("If", ["cond"], ["Y"], name="choose", then_branch=branches[0],
                            else_branch=branches[1])
    model = make_model([node], inits, [vinfo("X"), helper.make_tensor_value_info("cond", TensorProto.BOOL, [])],
                       [vinfo("Y")])
    path = save(model, tmp_path)
    with pytest.raises(ModelError, match=r"'rnn' names 2 recurrent nodes; use a qualified name:\n"
                                         r"  choose::else_branch::rnn\n  choose::then_branch::rnn"):
        rnnengine.load(path, node="rnn")
    X = x_for(2)
    for label, cond in (("then", True), ("else", False)):
        by_qualname = rnnengine.load(path, node=f"choose::{label}_branch::rnn")
        by_output = rnnengine.load(path, node=f"Y_{label}")
        y_ref = ort_file_run(path, {"X": X, "cond": np.array(cond)})[0]
        for m in (by_qualname, by_output):
            np.testing.assert_allclose(m.run(X)[0], y_ref[:, 0], **TOL)


# --- malformed and unsupported files ---------------------------------------------------------

def lstm_model(W_source="init", **node_changes):
    W, R, B, _ = weights("LSTM", 1, 3, 2)
    inputs = node_changes.pop("inputs", ["X", "W", "R", "B"])
    nodes = node_changes.pop("nodes", [])
    inits = [numpy_helper.from_array(R, "R"), numpy_helper.from_array(B, "B")]
    graph_inputs = [vinfo("X")]
    if W_source == "init":
        inits.append(numpy_helper.from_array(W, "W"))
    elif W_source == "input":
        graph_inputs.append(vinfo("W"))
    attributes = dict(hidden_size=3)
    attributes.update(node_changes)
    nodes.append(helper.make_node("LSTM", inputs, ["Y"], name="bad_lstm", **attributes))
    return make_model(nodes, inits, graph_inputs, [vinfo("Y")])


MALFORMED = {
    "weights_from_graph_input": (lambda: lstm_model("input"),
                                 "input W ('W') is not a constant: it depends on graph input 'W'"),
    "unfoldable_op": (lambda: lstm_model("none", nodes=[helper.make_node("Hardmax", ["R"], ["W"])]),
                      "it is computed by Hardmax node"),
    "undefined_weight": (lambda: lstm_model("none"),
                         "is not a constant: no node, initializer or input defines 'W'"),
    "wrong_hidden_size": (lambda: lstm_model(hidden_size=5),
                          "hidden_size=5 but W implies 3"),
    "bad_direction": (lambda: lstm_model(direction="sideways"),
                      "direction must be forward, reverse or bidirectional; got 'sideways'"),
    "bad_activation": (lambda: lstm_model(activations=["Sigmoid", "Tanh", "Cube"]),
                       "unknown activation 'Cube'; expected one of Relu"),
    "missing_R": (lambda: lstm_model(inputs=["X", "W", "", "B"]), "input R is missing"),
    "integer_weights": (lambda: lstm_model("none", nodes=[const("W", np.ones((1, 12, 2), np.int64))]),
                        "has dtype int64; expected a float tensor"),
    "constant_initial_h": (lambda: lstm_model(inputs=["X", "W", "R", "B", "", "h0"],
                                              nodes=[const("h0", np.ones((1, 1, 3), np.float32))]),
                           "initial_h is a non-zero constant"),
    "constant_sequence_lens": (lambda: lstm_model(inputs=["X", "W", "R", "B", "lens"],
                                                  nodes=[const("lens", np.array([2], np.int32))]),
                               "sequence_lens is a constant"),
    "bad_reshape_in_chain": (lambda: lstm_model("none", nodes=[
        const("w", np.ones((24,), np.float32)), const("s", np.array([5, 5])),
        helper.make_node("Reshape", ["w", "s"], ["W"])]), "cannot fold Reshape"),
}


@pytest.mark.parametrize("case", sorted(MALFORMED))
def test_malformed_model_names_file_node_reason(tmp_path, case):
    build, reason = MALFORMED[case]
    path = save(build(), tmp_path)
    with pytest.raises(ModelError, match=f"^{re.escape(path)}: node 'bad_lstm': .*{re.escape(reason)}"):
        rnnengine.load(path)


@pytest.mark.parametrize("content", [b"", b"\x00" * 10, b"not an onnx file at all\n" * 5,
                                     bytes(range(256)) * 4])
def test_garbage_bytes_are_a_model_error(tmp_path, content):
    # what follows is the protobuf library's own wording, which changes between its versions
    assert_bytes_are_a_model_error(tmp_path / "garbage.onnx", content, r"not an ONNX model \(")


def test_cyclic_graph_is_an_error_not_a_hang(tmp_path):
    W, R, B, _ = weights("RNN", 1, 2, 2)
    inits = [numpy_helper.from_array(a, n) for a, n in ((W, "W"), (R, "R"), (B, "B"))]
    nodes = [helper.make_node("RNN", ["Xa", "W", "R", "B"], ["Ya"], name="a", hidden_size=2),
             const("ax", np.array([1])),
             helper.make_node("Squeeze", ["Ya", "ax"], ["Xb"]),
             helper.make_node("RNN", ["Xb", "W", "R", "B"], ["Yb"], name="b", hidden_size=2),
             helper.make_node("Squeeze", ["Yb", "ax"], ["Xa"]),
             helper.make_node("Identity", ["c1"], ["c2"]), helper.make_node("Identity", ["c2"], ["c1"]),
             helper.make_node("RNN", ["X", "c1", "R", "B"], ["Yc"], name="c", hidden_size=2)]
    path = save(make_model(nodes, inits, [vinfo("X")], [vinfo("Yc")]), tmp_path)
    with pytest.raises(ModelError, match="cycle"):
        rnnengine.load(path)
    with pytest.raises(ModelError, match="cycle"):
        rnnengine.load(path, node="a")
    with pytest.raises(ModelError, match="node 'c': input W .* depends on itself"):
        rnnengine.load(path, node="c")


def test_model_without_recurrent_nodes(tmp_path):
    model = make_model([helper.make_node("Relu", ["X"], ["Y"])], [], [vinfo("X")], [vinfo("Y")])
    path = save(model, tmp_path)
    with pytest.raises(ModelError, match="no LSTM, GRU or RNN node"):
        rnnengine.load(path)


def test_unknown_node_name_lists_the_nodes(tmp_path):
    path = save(lstm_model(), tmp_path)
    with pytest.raises(ModelError, match=r"no LSTM/GRU/RNN node named 'nope'; the recurrent nodes "
                                         r"are:\n  bad_lstm \(LSTM\)"):
        rnnengine.load(path, node="nope")


def test_option_errors_are_user_errors(tmp_path):
    path = save(lstm_model(), tmp_path)
    with pytest.raises(TypeError, match="nonlinearity"):
        rnnengine.load(path, nonlinearity="relu")   # an ONNX RNN node records it
    with pytest.raises(TypeError, match="batch_first"):
        rnnengine.load(path, batch_first="yes")
    with pytest.raises(TypeError, match="node"):
        rnnengine.load(path, node=3)

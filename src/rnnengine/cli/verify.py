"""``rnnengine verify``: the loaded model against ONNX Runtime running the file's own
recurrent nodes, ONNX Runtime and PyTorch holding the loaded weights, on random inputs."""
from __future__ import annotations

import argparse
from typing import List, Optional

import numpy as np

from ..interop import Unsupported
from ..interop.ort import OrtReference
from ..interop.pytorch import torch_module_for, torch_module_from_state_dict, torch_run
from ..model import Model
from ._common import CommandError, Progress, RECURRENT_OPS, describe, load_model, max_diff, model_args, one_line, onnx_recurrent_nodes, optional_import, random_input, table


def add_parser(sub) -> None:
    p = sub.add_parser("verify", help=HELP, description=HELP)
    p.set_defaults(func=cmd_verify)
    model_args(p)
    p.add_argument("--seq-len", type=int, default=20, help="T (20)")
    p.add_argument("--batch", type=int, default=3, help="N (3)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--tol", type=float, default=1e-4,
                   help="largest absolute difference accepted (1e-4)")


HELP = "compare with onnxruntime (and torch) on random inputs"


def cut_graph(proto, x_name: str, wanted: List[str]):
    """The part of an ONNX graph that computes ``wanted`` from the tensor ``x_name`` alone
    (plus initializers and constants), as a model of its own whose only input is X."""
    from onnx import TensorProto, helper

    producer = {out: node for node in proto.graph.node for out in node.output if out}
    initializers = {t.name for t in proto.graph.initializer}
    x_info = next((v for v in list(proto.graph.input) + list(proto.graph.value_info)
                   if v.name == x_name), None)
    if x_info is None:  # an intermediate tensor without a recorded type: assume float
        x_info = helper.make_tensor_value_info(x_name, TensorProto.FLOAT, None)
    needed, todo = set(), list(wanted)
    while todo:
        name = todo.pop()
        if not name or name == x_name or name in initializers:
            continue
        node = producer.get(name)
        if node is None:
            raise Unsupported(f"the node(s) depend on the graph input {name!r}")
        if id(node) in needed:
            continue
        needed.add(id(node))
        todo += list(node.input)
        for attr in node.attribute:  # subgraphs may read outer tensors
            if attr.type in (attr.GRAPH, attr.GRAPHS):
                raise Unsupported(f"{node.op_type} {node.name!r} on the path has a subgraph")
    nodes = [n for n in proto.graph.node if id(n) in needed]
    used = {i for n in nodes for i in n.input}
    elem = x_info.type.tensor_type.elem_type
    graph = helper.make_graph(
        nodes, "cut", [x_info], [helper.make_tensor_value_info(w, elem, None) for w in wanted],
        [t for t in proto.graph.initializer if t.name in used])
    model = helper.make_model(graph, opset_imports=proto.opset_import)
    model.ir_version = proto.ir_version
    return model


def file_graph_check(path: str, node_name: Optional[str], model: Model, T: int, N: int,
                     seed: int):
    """Run the file's own recurrent node(s) in onnxruntime, cut out of the file together with
    their weight chains and the glue between layers, and the engine on the same random input.

    Independent of rnnengine's loader: returns ``(label, diff_y, diff_state)``, or
    ``(label, reason)`` when this file cannot be cut that way."""
    import onnx
    import onnxruntime as ort
    from onnx import numpy_helper

    nodes = onnx_recurrent_nodes(path)
    label = "onnxruntime, the file's own node(s)"
    if any(where for _, _, where in nodes):
        return label, "not compared: recurrent nodes inside subgraphs"
    proto = onnx.load(path)
    in_order = [n for n in proto.graph.node if n.op_type in RECURRENT_OPS]
    start = 0
    if node_name is not None:
        start = next((i for i, n in enumerate(in_order) if n.name == node_name), -1)
        if start < 0:
            return label, f"not compared: no node {node_name!r} in the main graph"
    elif len(in_order) != model.num_layers:
        return label, (f"not compared: {len(in_order)} recurrent nodes for "
                       f"{model.num_layers} layer(s)")
    chain = in_order[start:start + model.num_layers]
    if len(chain) != model.num_layers:
        return label, "not compared: the loaded layers are not consecutive nodes"
    label = ("onnxruntime, node " + ", ".join(repr(n.name) for n in chain) + " from the file")
    for n in chain:
        if any(a.name == "layout" and a.i == 1 for a in n.attribute):
            return label, "not compared: onnxruntime rejects layout=1"
        if len(n.input) > 4 and n.input[4]:
            return label, "not compared: the file feeds sequence_lens"
    initializers = {t.name: t for t in proto.graph.initializer}
    wanted = [chain[-1].output[0]] if chain[-1].output[0] else []
    for n in chain:
        wanted += [name for name in list(n.output[1:3]) + list(n.input[5:7])
                   if name and name not in initializers]
    wanted = list(dict.fromkeys(wanted))
    try:
        small = cut_graph(proto, chain[0].input[0], wanted)
        session = ort.InferenceSession(small.SerializeToString(),
                                       providers=["CPUExecutionProvider"])
    except Unsupported as exc:
        return label, f"not compared: {exc}"
    except Exception as exc:
        return label, f"not compared: onnxruntime cannot run the node(s) ({one_line(exc)[:80]})"
    x_info = session.get_inputs()[0]
    dims = [d if isinstance(d, int) and d > 0 else None for d in x_info.shape]
    if len(dims) == 3:  # a file may fix T or N
        T, N = dims[0] or T, dims[1] or N
    dtype = {"tensor(float)": np.float32, "tensor(double)": np.float64,
             "tensor(float16)": np.float16}.get(x_info.type)
    if dtype is None:
        return label, f"not compared: X is {x_info.type}"
    x = random_input(model, T, N, seed).astype(dtype)
    got = dict(zip(wanted, session.run(None, {x_info.name: x})))

    def value(name, shape):  # an initial state as the file computes it (zeros if absent)
        if not name:
            return np.zeros(shape, np.float32)
        if name in initializers:
            return numpy_helper.to_array(initializers[name]).astype(np.float32)
        return got[name].astype(np.float32)

    h_shape, c_shape = model._state_shapes(N)
    D = model.num_directions
    h0 = np.concatenate([value(n.input[5] if len(n.input) > 5 else "", (D,) + h_shape[1:])
                         for n in chain])
    state0 = h0
    if model.kind == "lstm":
        state0 = (h0, np.concatenate([value(n.input[6] if len(n.input) > 6 else "",
                                            (D,) + c_shape[1:]) for n in chain]))
    y, state = model.run(x.astype(np.float32), state0)
    h, c = state if isinstance(state, tuple) else (state, None)
    diff_y = diff_s = None
    if wanted and wanted[0] == chain[-1].output[0]:
        Y = got[wanted[0]]  # (T, D, N, H) -> (T, N, D*H)
        diff_y = max_diff(y, Y.transpose(0, 2, 1, 3).reshape(T, N, -1))
    diffs = []
    for k, n in enumerate(chain):
        if len(n.output) > 1 and n.output[1]:
            diffs.append(max_diff(h[k * D:(k + 1) * D], got[n.output[1]]))
        if c is not None and len(n.output) > 2 and n.output[2]:
            diffs.append(max_diff(c[k * D:(k + 1) * D], got[n.output[2]]))
    if diffs:
        diff_s = max(diffs)
    return label, diff_y, diff_s


def cmd_verify(args: argparse.Namespace) -> int:
    # time-major, whatever the file implies: a load option, never set on a Model
    model = load_model(args.model, args.node, nonlinearity=args.nonlinearity, batch_first=False)
    T, N, seed = args.seq_len, args.batch, args.seed
    if min(T, N) < 1:
        raise CommandError("--seq-len and --batch must be positive")
    ort = optional_import("onnxruntime")
    torch = optional_import("torch")
    if ort is None and torch is None:
        raise CommandError("verify needs onnxruntime or torch as a reference: "
                           "pip install onnxruntime")
    rng = np.random.default_rng(seed)
    x = random_input(model, T, N, seed)
    state0 = model.zero_state(N)
    state0 = (tuple(rng.standard_normal(a.shape).astype(np.float32) * 0.5 for a in state0)
              if isinstance(state0, tuple) else rng.standard_normal(state0.shape).astype(np.float32) * 0.5)
    lengths = rng.integers(1, T + 1, N)
    lengths[0] = T
    rows = []  # (reference, diff y or None, diff state or None, note)

    if ort is not None:
        if args.model.lower().endswith(".onnx"):
            result = file_graph_check(args.model, args.node, model, T, N, seed)
            rows.append((result[0], None, None, result[1]) if len(result) == 2
                        else (result[0], result[1], result[2], ""))
        try:
            ref = OrtReference(model)
            y_ref, s_ref = ref.run(x, state0, lengths)
            y, s = model.run(x, state0, lengths=lengths)
            rows.append(("onnxruntime, weights as loaded, random state and lengths",
                         max_diff(y, y_ref), max_diff(s, s_ref), ""))
            if model.num_directions == 1 and not model.layers[0].reverse:
                y_full, s_full = ref.run(x, state0, None)
                stream = model.stream(batch=N)
                stream.state = state0
                progress = Progress(T, "verify stream")
                ys = []
                for t in range(T):
                    ys.append(stream.step(x[t]))
                    progress.advance()
                progress.close()
                rows.append((f"stream.step x{T} vs onnxruntime", max_diff(np.stack(ys), y_full),
                             max_diff(stream.state, s_full), ""))
        except Unsupported as exc:
            rows.append(("onnxruntime", None, None, f"not compared: {exc}"))
    if torch is not None:
        label, module = "torch, weights as loaded", None
        try:
            if args.model.lower().endswith(".npz"):
                module = torch_module_from_state_dict(args.model, model)
                label = "torch, state_dict read by PyTorch from the file"
            if module is None:
                label = "torch, weights as loaded"
                module = torch_module_for(model)
            y_ref, s_ref = torch_run(module, x, state0, model.kind)
            y, s = model.run(x, state0)
            rows.append((label, max_diff(y, y_ref), max_diff(s, s_ref), ""))
        except Unsupported as exc:
            rows.append(("torch", None, None, f"not compared: {exc}"))
        except (RuntimeError, KeyError) as exc:  # the file's state_dict does not fit the module
            rows.append((label, None, None, f"not compared: {str(exc).splitlines()[0]}"))

    print(f"rnnengine verify: {describe(model)}")
    print(f"random input x ({T}, {N}, {model.input_size}), seed {seed}; tolerance {args.tol:g}")
    out = [["reference", "max |diff| y", "max |diff| state"]]
    for label, dy, ds, note in rows:
        out.append([label, "-" if dy is None else f"{dy:.2e}", "-" if ds is None else f"{ds:.2e}"]
                   + ([note] if note else []))
    print(table([r + [""] * (4 - len(r)) for r in out]))
    diffs = [d for _, dy, ds, _ in rows for d in (dy, ds) if d is not None]
    if not diffs:
        raise CommandError("no reference could run this model (see the notes above)")
    worst = max(diffs)
    if not np.isfinite(worst) or worst > args.tol:
        raise CommandError(f"largest difference {worst:.3e} exceeds tolerance {args.tol:g}")
    print(f"largest difference {worst:.2e}: within tolerance {args.tol:g}")
    return 0


"""An rnnengine ``Model`` as an ONNX graph: one LSTM/GRU/RNN node per layer holding the
loaded weights, joined by the Transpose+Reshape glue PyTorch exports."""
from __future__ import annotations

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

from ..runtime.model import Model
from . import Unsupported

ONNX_ACTIVATION_NAMES = {
    "relu": "Relu", "tanh": "Tanh", "sigmoid": "Sigmoid", "affine": "Affine",
    "leakyrelu": "LeakyRelu", "thresholdedrelu": "ThresholdedRelu", "scaledtanh": "ScaledTanh",
    "hardsigmoid": "HardSigmoid", "elu": "Elu", "softsign": "Softsign", "softplus": "Softplus",
}


def onnx_graph_for(model: Model, bare: bool = False):
    """The model as an ONNX graph of LSTM/GRU/RNN nodes (one per layer, joined by the same
    Transpose+Reshape glue PyTorch exports), with the loaded weights.

    Inputs: X (T, N, I), sequence_lens (N,) int32, h0_k (D, N, Hout) [and c0_k] per layer k.
    Outputs: y (T, N, D*Hout), hN_k [and cN_k] per layer.

    ``bare=True`` (for timing ONNX Runtime at its best): no sequence_lens input and no glue
    after the last layer, whose node writes y directly in ONNX's layout (T, D, N, Hout)."""
    if model.proj_size:
        raise Unsupported("an LSTM projection (proj_size) has no ONNX equivalent")
    inits, nodes, inputs, outputs = [], [], [], []
    f32 = TensorProto.FLOAT
    inputs.append(helper.make_tensor_value_info("X", f32, ["T", "N", model.input_size]))
    if not bare:
        inputs.append(helper.make_tensor_value_info("sequence_lens", TensorProto.INT32, ["N"]))
    if model.num_layers > 1 or not bare:   # the glue's Reshape target
        inits.append(numpy_helper.from_array(np.array([0, 0, -1], np.int64), "flat_shape"))
    x_name = "X"
    for k, layer in enumerate(model.layers):
        a = layer.to_onnx()
        D, H, Hout = layer.num_directions, layer.hidden_size, layer.output_size
        names = [f"W_{k}", f"R_{k}", f"B_{k}"]
        inits += [numpy_helper.from_array(a["W"], names[0]),
                  numpy_helper.from_array(a["R"], names[1]),
                  numpy_helper.from_array(a["B"], names[2])]
        node_inputs = [x_name] + names + ["" if bare else "sequence_lens", f"h0_{k}"]
        inputs.append(helper.make_tensor_value_info(f"h0_{k}", f32, [D, "N", Hout]))
        last = k == model.num_layers - 1
        node_outputs = ["y" if bare and last else f"Y_{k}", f"hN_{k}"]
        outputs.append(helper.make_tensor_value_info(f"hN_{k}", f32, [D, "N", Hout]))
        if layer.kind == "lstm":
            node_inputs.append(f"c0_{k}")
            inputs.append(helper.make_tensor_value_info(f"c0_{k}", f32, [D, "N", H]))
            node_outputs.append(f"cN_{k}")
            outputs.append(helper.make_tensor_value_info(f"cN_{k}", f32, [D, "N", H]))
            if layer.P is not None:
                inits.append(numpy_helper.from_array(layer.P, f"P_{k}"))
                node_inputs.append(f"P_{k}")
        attrs = {"hidden_size": H, "direction": a["direction"],
                 "activations": [ONNX_ACTIVATION_NAMES[name] for name in a["activations"]]}
        for key in ("activation_alpha", "activation_beta"):
            if a[key]:
                attrs[key] = a[key]
        if a["clip"] is not None:
            attrs["clip"] = a["clip"]
        if layer.kind == "lstm" and a["input_forget"]:
            attrs["input_forget"] = 1
        if layer.kind == "gru":
            attrs["linear_before_reset"] = a["linear_before_reset"]
        nodes.append(helper.make_node(layer.kind.upper(), node_inputs, node_outputs,
                                      name=f"layer{k}", **attrs))
        if bare and last:
            break
        nodes.append(helper.make_node("Transpose", [f"Y_{k}"], [f"Yt_{k}"], perm=[0, 2, 1, 3]))
        x_name = "y" if last else f"X_{k + 1}"
        nodes.append(helper.make_node("Reshape", [f"Yt_{k}", "flat_shape"], [x_name]))
    y_shape = (["T", model.num_directions, "N", model.output_size // model.num_directions]
               if bare else ["T", "N", model.output_size])
    outputs.insert(0, helper.make_tensor_value_info("y", f32, y_shape))
    graph = helper.make_graph(nodes, "rnnengine_reference", inputs, outputs, inits)
    proto = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    proto.ir_version = 8
    onnx.checker.check_model(proto)
    return proto

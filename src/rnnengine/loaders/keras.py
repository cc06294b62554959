"""Keras 3 layers in memory -> layers (``rnnengine.from_keras``).

Taken: ``LSTM``, ``GRU`` (``reset_after`` either way), ``SimpleRNN`` (and ``keras.layers.RNN``
around one ``LSTMCell``/``GRUCell``/``SimpleRNNCell``), with ``go_backwards``, and
``Bidirectional`` around two of these with ``merge_mode="concat"``. Activations are read
from the layer and mapped to the ONNX functions the kernels run; one with no exact ONNX
equivalent is refused by name. Dropout and ``recurrent_dropout`` act only in training;
``return_sequences``, ``return_state``, ``stateful`` and ``unroll`` change what Keras
returns or how it runs, not the arithmetic.

Layout and direction: Keras takes (N, T, I), so the Model is ``batch_first``. The engine's y
is aligned with x (ONNX's convention): for ``go_backwards`` Keras returns the outputs in the
order it computed them, i.e. the engine's ``y[:, ::-1]``; ``Bidirectional`` already realigns
its backward half, so its concatenated sequence equals the engine's y. The final state is
the same in every case.

keras is imported here only, when called: it is never a dependency of rnnengine.
"""
from __future__ import annotations

from typing import List, Tuple

import numpy as np

from ..core.layers import Layer
from .npz import keras_cell

# Keras 3 activation name -> (ONNX function, alpha, beta) computing the same thing with the
# Keras defaults the layer uses (a layer holds the bare function, so no other arguments).
KERAS_ACTIVATIONS = {
    "tanh": ("Tanh", None, None),
    "sigmoid": ("Sigmoid", None, None),
    "relu": ("Relu", None, None),
    "linear": ("Affine", 1.0, 0.0),
    # keras.activations.hard_sigmoid (Keras 3): relu6(x + 3) / 6 = clip(x / 6 + 0.5, 0, 1)
    "hard_sigmoid": ("HardSigmoid", 1.0 / 6.0, 0.5),
    "elu": ("Elu", 1.0, None),
    "leaky_relu": ("LeakyRelu", 0.2, None),   # Keras 3's default negative_slope
    "softsign": ("Softsign", None, None),
    "softplus": ("Softplus", None, None),
}
MERGE_MODES = ("concat",)


def layers_from_keras(layer) -> Tuple[List[Layer], bool]:
    """A Keras 3 recurrent layer -> (layers, batch_first=True)."""
    import keras

    if isinstance(layer, keras.layers.Bidirectional):
        if layer.merge_mode not in MERGE_MODES:
            raise ValueError(f"Bidirectional merge_mode={layer.merge_mode!r} cannot be mapped: "
                             "the engine concatenates the two directions (merge_mode='concat')")
        fwd, bwd = layer.forward_layer, layer.backward_layer
        if fwd.go_backwards or not bwd.go_backwards:
            raise ValueError("Bidirectional needs a forward layer and a go_backwards layer; "
                             f"got go_backwards={fwd.go_backwards} and {bwd.go_backwards}")
        parts = [_direction(keras, fwd, "forward layer"), _direction(keras, bwd, "backward layer")]
        if parts[0][0] != parts[1][0] or parts[0][4] != parts[1][4]:
            raise ValueError(f"Bidirectional halves differ: {parts[0][0]} and {parts[1][0]} "
                             f"(linear_before_reset {parts[0][4]} and {parts[1][4]})")
        if parts[0][1].shape != parts[1][1].shape:
            raise ValueError(f"Bidirectional halves differ in size: {parts[0][1].shape[:2]} and "
                             f"{parts[1][1].shape[:2]} (units x input)")
        direction = "bidirectional"
    elif isinstance(layer, keras.layers.RNN):
        parts = [_direction(keras, layer, "layer")]
        direction = "reverse" if layer.go_backwards else "forward"
    else:
        raise TypeError(f"from_keras takes a Keras 3 LSTM, GRU, SimpleRNN, RNN or Bidirectional "
                        f"layer; got {type(layer).__name__}")
    kind, lbr = parts[0][0], parts[0][4]
    acts = [a for p in parts for a in p[5]]
    return [Layer.from_onnx(
        kind, np.stack([p[1] for p in parts]), np.stack([p[2] for p in parts]),
        np.stack([p[3] for p in parts]), direction=direction, linear_before_reset=lbr,
        activations=[a[0] for a in acts],
        activation_alpha=[a[1] for a in acts if a[1] is not None],
        activation_beta=[a[2] for a in acts if a[2] is not None])], True


def _direction(keras, layer, what: str):
    """One Keras recurrent layer -> (kind, W, R, B, linear_before_reset, activations)."""
    if not isinstance(layer, keras.layers.RNN):
        raise TypeError(f"{what}: expected a Keras recurrent layer; got {type(layer).__name__}")
    cell = layer.cell
    kinds = {keras.layers.LSTMCell: "lstm", keras.layers.GRUCell: "gru",
             keras.layers.SimpleRNNCell: "rnn"}
    kind = next((k for cls, k in kinds.items() if isinstance(cell, cls)), None)
    if kind is None:
        raise ValueError(f"{what} {layer.name!r}: cell {type(cell).__name__} cannot be mapped; "
                         "expected LSTMCell, GRUCell or SimpleRNNCell")
    if not cell.built:
        raise ValueError(f"{what} {layer.name!r} has no weights yet: build it (call it once on "
                         "an input) before from_keras")
    where = f"Keras {type(layer).__name__} {layer.name!r}"
    arrays = {"kernel": keras.ops.convert_to_numpy(cell.kernel),
              "recurrent_kernel": keras.ops.convert_to_numpy(cell.recurrent_kernel)}
    if cell.use_bias:
        arrays["bias"] = keras.ops.convert_to_numpy(cell.bias)
    got_kind, W, R, B, _ = keras_cell(arrays, where)
    if got_kind != kind:  # the shapes disagree with the cell type: a broken layer
        raise ValueError(f"{where}: weights of shape {arrays['recurrent_kernel'].shape} do not "
                         f"fit a {type(cell).__name__}")
    # The bias shape cannot tell reset_after without a bias, so read it from the cell.
    lbr = int(bool(cell.reset_after)) if kind == "gru" else 0
    functions = [cell.activation] if kind == "rnn" else (
        [cell.recurrent_activation, cell.activation]
        + ([cell.activation] if kind == "lstm" else []))
    return kind, W, R, B, lbr, [_activation(f, where) for f in functions]


def _activation(function, where: str):
    import keras

    name = getattr(function, "__name__", None)
    mapped = KERAS_ACTIVATIONS.get(name)
    if mapped is None or function is not getattr(keras.activations, name, None):
        shown = name or type(function).__name__
        raise ValueError(f"{where}: activation {shown!r} has no ONNX equivalent the engine "
                         f"runs; mapped: {', '.join(KERAS_ACTIVATIONS)}")
    return mapped

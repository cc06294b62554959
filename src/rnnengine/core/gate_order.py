"""The gate orders of ONNX, PyTorch and Keras, and moves between them (one home for the fact).

A weight matrix of a G-gate cell stacks G blocks of H rows (a Keras kernel: G blocks of U
columns, i.e. rows of its transpose). The engine keeps ONNX's order (``layers.py``):

    ONNX     LSTM i, o, f, c    GRU z, r, h    RNN h
    PyTorch  LSTM i, f, c, o    GRU r, z, h    RNN h     (PyTorch calls c "g" and h "n")
    Keras    LSTM i, f, c, o    GRU z, r, h    RNN h

The orders below name each framework's blocks with the ONNX letters.
"""
from __future__ import annotations

from typing import List

import numpy as np

ORDERS = {
    "onnx": {"lstm": "iofc", "gru": "zrh", "rnn": "h"},
    "torch": {"lstm": "ifco", "gru": "rzh", "rnn": "h"},
    "keras": {"lstm": "ifco", "gru": "zrh", "rnn": "h"},
}


def permutation(kind: str, source: str, target: str) -> List[int]:
    """Block indices: block j of the ``target`` layout is block ``perm[j]`` of ``source``.

    ``permutation("lstm", "torch", "onnx") == [0, 3, 1, 2]``."""
    src, dst = ORDERS[source][kind], ORDERS[target][kind]
    return [src.index(gate) for gate in dst]


def reorder(a: np.ndarray, kind: str, source: str, target: str, axis: int = 0) -> np.ndarray:
    """``a`` with its G gate blocks along ``axis`` moved from ``source``'s order to ``target``'s."""
    a = np.asarray(a)
    G = len(ORDERS[source][kind])
    if a.shape[axis] % G:
        raise ValueError(f"axis {axis} of shape {a.shape} is not {G} gate blocks of one size")
    blocks = np.split(a, G, axis=axis)
    return np.concatenate([blocks[k] for k in permutation(kind, source, target)], axis=axis)


def to_onnx(a: np.ndarray, kind: str, source: str, axis: int = 0) -> np.ndarray:
    """``source`` ("torch" or "keras") gate order -> the engine's (ONNX) order."""
    return reorder(a, kind, source, "onnx", axis)


def from_onnx(a: np.ndarray, kind: str, target: str, axis: int = 0) -> np.ndarray:
    """The engine's (ONNX) gate order -> ``target``'s."""
    return reorder(a, kind, "onnx", target, axis)

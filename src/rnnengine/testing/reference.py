"""Plain NumPy implementation of the ONNX LSTM, GRU and RNN operators: the oracle for tests.

Never the fast path: it loops over batch entries and timesteps in Python and computes in
float64, so that float32 results of the engine can be checked against it to ~1e-6. It shares
no math with the engine (only the ONNX attribute conventions, written out again here).

Semantics are ONNX's (opset 7 to 22), with ONNX Runtime's choices where ONNX is silent:

- ``activation_alpha``/``activation_beta`` are consumed in order, a function taking the next
  value only if it uses one; missing values fall back to ONNX Runtime's defaults (LeakyRelu
  0.01, HardSigmoid 0.2/0.5, Elu 1.0, otherwise 0).
- ``clip`` bounds every gate pre-activation (peephole term included), not the input of h(C).
- ``sequence_lens``: outputs past a sequence's length are zero, the final state is the state
  after the last valid step; the reverse direction starts at ``t = len - 1``; ``len = 0``
  gives a zero final state.

Extension: ``proj [D, P, H]`` is PyTorch's LSTM ``weight_hr`` (``proj_size``): the
recurrent state is ``h = proj @ (o * h(C))`` of width ``P``, ``R`` is then ``[D, 4H, P]``.

``run_stack`` chains layers with PyTorch's conventions for multi-layer models.
"""
from __future__ import annotations

from typing import Optional, Sequence

import numpy as np

__all__ = ["ACTIVATION_DEFAULTS", "activation", "resolve_activations", "onnx_rnn", "run_stack"]

GATES = {"lstm": 4, "gru": 3, "rnn": 1}
DEFAULT_ACTIVATIONS = {
    "lstm": ("Sigmoid", "Tanh", "Tanh"),
    "gru": ("Sigmoid", "Tanh"),
    "rnn": ("Tanh",),
}

# lower-case name -> (uses alpha, uses beta, default alpha, default beta), as ONNX Runtime
# (onnxruntime/core/providers/cpu/rnn/rnn_helpers.cc) consumes the attribute lists.
ACTIVATION_DEFAULTS = {
    "relu": (False, False, 0.0, 0.0),
    "tanh": (False, False, 0.0, 0.0),
    "sigmoid": (False, False, 0.0, 0.0),
    "affine": (True, True, 0.0, 0.0),
    "leakyrelu": (True, False, 0.01, 0.0),
    "thresholdedrelu": (True, False, 0.0, 0.0),
    "scaledtanh": (True, True, 0.0, 0.0),
    "hardsigmoid": (True, True, 0.2, 0.5),
    "elu": (True, False, 1.0, 0.0),
    "softsign": (False, False, 0.0, 0.0),
    "softplus": (False, False, 0.0, 0.0),
}


def activation(name: str, x: np.ndarray, alpha: float = 0.0, beta: float = 0.0) -> np.ndarray:
    """The ONNX activation ``name`` (case-insensitive) applied elementwise to ``x``."""
    name = name.lower()
    if name == "relu":
        return np.maximum(x, 0.0)
    if name == "tanh":
        return np.tanh(x)
    if name == "sigmoid":
        return 0.5 * (1.0 + np.tanh(0.5 * x))    # = 1/(1+exp(-x)), no overflow
    if name == "affine":
        return alpha * x + beta
    if name == "leakyrelu":
        return np.where(x >= 0, x, alpha * x)
    if name == "thresholdedrelu":
        return np.where(x > alpha, x, 0.0)
    if name == "scaledtanh":
        return alpha * np.tanh(beta * x)
    if name == "hardsigmoid":
        return np.clip(alpha * x + beta, 0.0, 1.0)
    if name == "elu":
        return np.where(x >= 0, x, alpha * (np.exp(np.minimum(x, 0.0)) - 1.0))
    if name == "softsign":
        return x / (1.0 + np.abs(x))
    if name == "softplus":
        return np.logaddexp(0.0, x)
    raise ValueError(f"unknown activation {name!r}")


def resolve_activations(op: str, num_directions: int, names=None, alphas=None, betas=None):
    """ONNX attributes -> per direction, a list of ``(name, alpha, beta)`` in f, g, h order.

    ``names`` lists the functions of every direction (forward first), or of one direction,
    which bidirectional nodes then use for both."""
    per_dir = len(DEFAULT_ACTIVATIONS[op])
    names = list(DEFAULT_ACTIVATIONS[op]) if not names else list(names)
    names = [n.decode() if isinstance(n, bytes) else str(n) for n in names]
    if len(names) == per_dir:
        names = names * num_directions
    if len(names) != per_dir * num_directions:
        raise ValueError(f"{op} needs {per_dir * num_directions} activations; got {names}")
    alphas = list(alphas if alphas is not None else [])
    betas = list(betas if betas is not None else [])
    out = []
    for name in names:
        uses_alpha, uses_beta, alpha, beta = ACTIVATION_DEFAULTS[name.lower()]
        if uses_alpha and alphas:
            alpha = float(alphas.pop(0))
        if uses_beta and betas:
            beta = float(betas.pop(0))
        out.append((name.lower(), alpha, beta))
    return [out[d * per_dir:(d + 1) * per_dir] for d in range(num_directions)]


class _Cell:
    """One direction of one node: weights in float64 and the cell's step function."""

    def __init__(self, op, W, R, Wb, Rb, P, proj, acts, clip, input_forget, lbr):
        self.op, self.W, self.R, self.Wb, self.Rb = op, W, R, Wb, Rb
        self.P, self.proj, self.acts, self.clip = P, proj, acts, clip
        self.input_forget, self.lbr = input_forget, lbr
        self.H = W.shape[0] // GATES[op]

    def f(self, k: int, x: np.ndarray) -> np.ndarray:
        name, alpha, beta = self.acts[k]
        return activation(name, x, alpha, beta)

    def clipped(self, x: np.ndarray) -> np.ndarray:
        return x if self.clip is None else np.clip(x, -self.clip, self.clip)

    def step(self, x, h, c):
        """One timestep for one batch entry: x (I,), h (Hout,), c (H,) -> (h, c)."""
        H = self.H
        if self.op == "rnn":
            return self.f(0, self.clipped(self.W @ x + self.R @ h + self.Wb + self.Rb)), None
        if self.op == "gru":
            wx = self.W @ x + self.Wb
            z = self.f(0, self.clipped(wx[:H] + self.R[:H] @ h + self.Rb[:H]))
            r = self.f(0, self.clipped(wx[H:2 * H] + self.R[H:2 * H] @ h + self.Rb[H:2 * H]))
            Rh, Rbh = self.R[2 * H:], self.Rb[2 * H:]
            if self.lbr:
                pre = wx[2 * H:] + r * (Rh @ h + Rbh)
            else:
                pre = wx[2 * H:] + Rh @ (r * h) + Rbh
            hh = self.f(1, self.clipped(pre))
            return (1.0 - z) * hh + z * h, None
        # LSTM, ONNX gate order i, o, f, c; peepholes i, o, f
        g = self.W @ x + self.R @ h + self.Wb + self.Rb
        gi, go, gf, gc = g[:H], g[H:2 * H], g[2 * H:3 * H], g[3 * H:]
        Pi, Po, Pf = (0.0, 0.0, 0.0) if self.P is None else \
            (self.P[:H], self.P[H:2 * H], self.P[2 * H:])
        i = self.f(0, self.clipped(gi + Pi * c))
        f = 1.0 - i if self.input_forget else self.f(0, self.clipped(gf + Pf * c))
        c = f * c + i * self.f(1, self.clipped(gc))
        o = self.f(0, self.clipped(go + Po * c))
        h = o * self.f(2, c)
        if self.proj is not None:
            h = self.proj @ h
        return h, c


def _f64(a) -> Optional[np.ndarray]:
    return None if a is None else np.asarray(a, dtype=np.float64)


def onnx_rnn(op: str, X, W, R, B=None, sequence_lens=None, initial_h=None, initial_c=None,
             P=None, *, hidden_size=None, activations=None, activation_alpha=None,
             activation_beta=None, clip=None, direction="forward", input_forget=0, layout=0,
             linear_before_reset=0, proj=None):
    """Run one ONNX LSTM/GRU/RNN node; returns its outputs ``(Y, Y_h)`` or ``(Y, Y_h, Y_c)``.

    layout 0: ``X [T,N,I]``, ``initial_h/c [D,N,Hout]``, ``Y [T,D,N,Hout]``, ``Y_h [D,N,Hout]``.
    layout 1: ``X [N,T,I]``, ``initial_h/c [N,D,Hout]``, ``Y [N,T,D,Hout]``, ``Y_h [N,D,Hout]``.
    ``W [D,G*H,I]``, ``R [D,G*H,Hout]``, ``B [D,2*G*H]``, ``P [D,3H]``, ``proj [D,Hout,H]``;
    ``Hout = H`` without a projection. ``Y_c`` has width ``H``. Outputs are float64."""
    op = op.lower()
    if isinstance(direction, bytes):
        direction = direction.decode()
    D = 2 if direction == "bidirectional" else 1
    G = GATES[op]
    X, W, R, B, P, proj = map(_f64, (X, W, R, B, P, proj))
    initial_h, initial_c = _f64(initial_h), _f64(initial_c)
    if layout:
        X = X.transpose(1, 0, 2)
        initial_h = None if initial_h is None else initial_h.transpose(1, 0, 2)
        initial_c = None if initial_c is None else initial_c.transpose(1, 0, 2)
    T, N, _ = X.shape
    H = W.shape[1] // G
    if hidden_size is not None and int(hidden_size) != H:
        raise ValueError(f"hidden_size={hidden_size} but W implies {H}")
    Hout = R.shape[2]
    if B is None:
        B = np.zeros((D, 2 * G * H))
    lens = np.full(N, T, dtype=np.int64) if sequence_lens is None else np.asarray(sequence_lens)
    if initial_h is None:
        initial_h = np.zeros((D, N, Hout))
    if initial_c is None:
        initial_c = np.zeros((D, N, H))
    acts = resolve_activations(op, D, activations, activation_alpha, activation_beta)
    clip = None if clip is None else float(clip)

    Y = np.zeros((T, D, N, Hout))
    Y_h = np.zeros((D, N, Hout))
    Y_c = np.zeros((D, N, H))
    for d in range(D):
        cell = _Cell(op, W[d], R[d], B[d, :G * H], B[d, G * H:],
                     None if P is None else P[d], None if proj is None else proj[d],
                     acts[d], clip, bool(input_forget), bool(linear_before_reset))
        backwards = direction == "reverse" or d == 1
        for n in range(N):
            L = int(lens[n])
            if L == 0:
                continue                      # zero outputs and zero final state (ORT)
            h, c = initial_h[d, n], initial_c[d, n]
            for t in (range(L - 1, -1, -1) if backwards else range(L)):
                h, c = cell.step(X[t, n], h, c)
                Y[t, d, n] = h
            Y_h[d, n] = h
            if op == "lstm":
                Y_c[d, n] = c
    if layout:
        Y, Y_h, Y_c = Y.transpose(2, 0, 1, 3), Y_h.transpose(1, 0, 2), Y_c.transpose(1, 0, 2)
    return (Y, Y_h, Y_c) if op == "lstm" else (Y, Y_h)


def run_stack(layers: Sequence[dict], x, state=None, lengths=None, batch_first: bool = False):
    """Run a multi-layer model with PyTorch's conventions.

    ``layers``: one dict per layer with ``kind`` (or ``op``) and the keyword arguments of
    ``onnx_rnn`` (``W``, ``R``, ``B``, ``P``, ``proj``, ``direction``, activations, ...);
    layer k>0 takes the previous layer's ``D*Hout`` outputs.
    ``x``: ``(T,N,I)``, ``(N,T,I)`` when ``batch_first``, or unbatched ``(T,I)``.
    ``state``: ``h`` or ``(h, c)`` for LSTM, each ``(L*D,N,Hout)`` (c: ``(L*D,N,H)``);
    unbatched: ``(L*D,Hout)``. ``lengths``: N ints, or None.
    Returns ``(y, state)``: ``y (T,N,D*Hout)`` (or batch-first / unbatched like ``x``),
    ``state`` structured like the input state. Float64."""
    x = np.asarray(x, dtype=np.float64)
    unbatched = x.ndim == 2
    if unbatched:
        x = x[:, None, :]
        if state is not None:
            state = tuple(s[:, None, :] for s in state) if isinstance(state, tuple) \
                else np.asarray(state)[:, None, :]
    elif batch_first:
        x = x.transpose(1, 0, 2)
    op = (layers[0].get("kind") or layers[0].get("op")).lower()
    hs, cs = [], []
    for k, spec in enumerate(layers):
        attrs = {key: v for key, v in spec.items() if key not in ("kind", "op")}
        D = 2 if attrs.get("direction", "forward") == "bidirectional" else 1
        if state is not None:
            h0, c0 = state if op == "lstm" else (state, None)
            attrs["initial_h"] = np.asarray(h0)[k * D:(k + 1) * D]
            if c0 is not None:
                attrs["initial_c"] = np.asarray(c0)[k * D:(k + 1) * D]
        outs = onnx_rnn(op, x, sequence_lens=lengths, **attrs)
        Y = outs[0]                                          # [T, D, N, Hout]
        x = Y.transpose(0, 2, 1, 3).reshape(Y.shape[0], Y.shape[2], -1)
        hs.append(outs[1])
        if op == "lstm":
            cs.append(outs[2])
    h = np.concatenate(hs, axis=0)
    new_state = (h, np.concatenate(cs, axis=0)) if op == "lstm" else h
    y = x
    if unbatched:
        y = y[:, 0]
        new_state = tuple(s[:, 0] for s in new_state) if op == "lstm" else new_state[:, 0]
    elif batch_first:
        y = y.transpose(1, 0, 2)
    return y, new_state

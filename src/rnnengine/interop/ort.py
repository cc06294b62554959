"""An rnnengine ``Model`` run by ONNX Runtime (the graph of ``onnx_export``): whole sequences
with plain ``run``, and streaming steps both with plain ``run`` and with IOBinding.
onnxruntime is imported when a session is made."""
from __future__ import annotations

import numpy as np

from ..runtime.model import Model
from . import Unsupported
from .onnx_export import onnx_graph_for


def state_layers(model: Model, state, k: int):
    """Slice layer k's (h, c) out of a (L*D, N, ·) state; c is None for GRU/RNN."""
    D = model.num_directions
    h, c = state if isinstance(state, tuple) else (state, None)
    return h[k * D:(k + 1) * D], (None if c is None else c[k * D:(k + 1) * D])


class OrtReference:
    """The model in an onnxruntime InferenceSession (CPU provider, ``threads`` intra-op,
    sequential execution). ``bare=True``: the graph without sequence_lens and without glue
    after the last layer (``onnx_graph_for``), for timing; ``run`` still returns y (T, N, ·)."""

    def __init__(self, model: Model, threads: int = 1, bare: bool = False):
        import onnxruntime as ort

        self.model, self.bare = model, bare
        options = ort.SessionOptions()
        options.intra_op_num_threads = threads
        options.inter_op_num_threads = 1
        options.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
        self.session = ort.InferenceSession(onnx_graph_for(model, bare).SerializeToString(),
                                            options, providers=["CPUExecutionProvider"])
        self.output_names = [o.name for o in self.session.get_outputs()]

    def feeds(self, x: np.ndarray, state, lengths) -> dict:
        T, N = x.shape[0], x.shape[1]
        model = self.model
        if state is None:
            state = model.zero_state(N)
        feeds = {"X": x}
        if lengths is not None and self.bare:
            raise ValueError("a bare graph has no sequence_lens input")
        if not self.bare:
            feeds["sequence_lens"] = (np.full(N, T, np.int32) if lengths is None
                                      else np.asarray(lengths, np.int32))
        for k in range(model.num_layers):
            h, c = state_layers(model, state, k)
            feeds[f"h0_{k}"] = np.ascontiguousarray(h, np.float32)
            if c is not None:
                feeds[f"c0_{k}"] = np.ascontiguousarray(c, np.float32)
        return feeds

    def run(self, x: np.ndarray, state=None, lengths=None):
        """x (T, N, I) -> (y (T, N, D*Hout), state as Model.run returns it)."""
        out = dict(zip(self.output_names, self.session.run(None, self.feeds(x, state, lengths))))
        L = self.model.num_layers
        y = out["y"]
        if self.bare:   # (T, D, N, Hout) -> (T, N, D*Hout)
            y = y.transpose(0, 2, 1, 3).reshape(y.shape[0], y.shape[2], -1)
        h = np.concatenate([out[f"hN_{k}"] for k in range(L)], axis=0)
        if self.model.kind == "lstm":
            return y, (h, np.concatenate([out[f"cN_{k}"] for k in range(L)], axis=0))
        return y, h

    def steps(self, batch: int = 1) -> "OrtSteps":
        """Streaming one (batch, I) step at a time, from a zero state."""
        return OrtSteps(self, batch)


class OrtSteps:
    """Streaming with ONNX Runtime: each step a T=1 run that starts from the previous one's
    final state, two ways a user would write it:

    ``step_run``    plain ``session.run`` with a feeds dict (new output arrays every step);
    ``step_bound``  IOBinding (ORT's best case): x, y and two sets of state buffers are bound
                    once, in two bindings that read one set and write the other; steps
                    alternate bindings, so the state is never copied ("ping-pong").
    Both return y (batch, D*Hout) and keep ``state`` as ``Model.run`` returns it."""

    def __init__(self, ref: OrtReference, batch: int):
        import onnxruntime as ort

        self.ref, self.model = ref, ref.model
        I = self.model.input_size
        self.feeds = ref.feeds(np.zeros((1, batch, I), np.float32), None, None)
        self.x = self.feeds["X"]          # the bound input: step_bound writes x_t into it
        if self.model.num_directions != 1:
            raise Unsupported("a bidirectional model cannot stream")
        # y of one step: (1, N, Hout), or (1, 1, N, Hout) from a bare graph; either way y[0]
        # reshaped to (N, Hout) is a view
        self.y = np.zeros((1, 1, batch, self.model.output_size) if ref.bare
                          else (1, batch, self.model.output_size), np.float32)
        self.y_step = self.y.reshape(batch, self.model.output_size)
        ping = {k: v for k, v in self.feeds.items() if k[:2] in ("h0", "c0")}
        pong = {k: np.zeros_like(v) for k, v in ping.items()}
        self.sets = (ping, pong)
        # ortvalue_from_numpy wraps the array's memory (CPU): writes to the array are seen.
        value = ort.OrtValue.ortvalue_from_numpy
        bound = {name: value(a) for name, a in self.feeds.items() if name not in ping}
        self.bindings = []
        for src, dst in ((ping, pong), (pong, ping)):
            b = ref.session.io_binding()
            for name, v in bound.items():
                b.bind_ortvalue_input(name, v)
            for name, a in src.items():
                b.bind_ortvalue_input(name, value(a))
            b.bind_ortvalue_output("y", value(self.y))
            for name, a in dst.items():   # hN_k / cN_k land in the other set's h0_k / c0_k
                b.bind_ortvalue_output(name.replace("0_", "N_"), value(a))
            self.bindings.append(b)
        self.current = 0    # which set holds the state
        self._keep = bound  # the OrtValues must outlive the bindings

    def step_bound(self, x_t: np.ndarray) -> np.ndarray:
        self.x[0] = x_t
        self.ref.session.run_with_iobinding(self.bindings[self.current])
        self.current ^= 1
        return self.y_step

    def step_run(self, x_t: np.ndarray) -> np.ndarray:
        self.x[0] = x_t
        feeds = dict(self.feeds, **self.sets[self.current])
        out = dict(zip(self.ref.output_names, self.ref.session.run(None, feeds)))
        self.current ^= 1
        for name, a in self.sets[self.current].items():
            a[...] = out[name.replace("0_", "N_")]
        return out["y"].reshape(self.y_step.shape)

    @property
    def state(self):
        s = self.sets[self.current]
        L = self.model.num_layers
        h = np.concatenate([s[f"h0_{k}"] for k in range(L)], axis=0)
        if self.model.kind == "lstm":
            return h, np.concatenate([s[f"c0_{k}"] for k in range(L)], axis=0)
        return h


def graph_iobinding_stepper(sess, feeds_of_step, pairs: dict, zero: dict):
    """ONNX Runtime's best streaming case for a whole graph (bench and the command line):
    inputs bound once and updated in place each step, the state ping-ponged between two bound
    buffer sets (``pairs``: output -> input, ``zero``: the state inputs' first values).
    ``feeds_of_step(k)`` gives step k's other inputs. -> step() returning the non-state
    outputs in graph order."""
    import onnxruntime as ort
    first = feeds_of_step(0)
    names = [o.name for o in sess.get_outputs()]
    shapes = dict(zip(names, (a.shape for a in sess.run(None, {**first, **zero}))))
    dtypes = dict(zip(names, (a.dtype for a in sess.run(None, {**first, **zero}))))
    # copies: an OrtValue made from an array shares its memory, and update_inplace would
    # then write every step's input over the caller's first block
    feeds = {n: ort.OrtValue.ortvalue_from_numpy(np.array(a)) for n, a in first.items()}
    outs = {n: ort.OrtValue.ortvalue_from_numpy(np.zeros(shapes[n], dtypes[n]))
            for n in names if n not in pairs}
    buffers = [{inp: ort.OrtValue.ortvalue_from_numpy(zero[inp].copy()) for inp in pairs.values()}
               for _ in range(2)]
    bindings = []
    for side in range(2):
        io = sess.io_binding()
        for n, v in feeds.items():
            io.bind_ortvalue_input(n, v)
        for out, inp in pairs.items():
            io.bind_ortvalue_input(inp, buffers[side][inp])
            io.bind_ortvalue_output(out, buffers[1 - side][inp])
        for n, v in outs.items():
            io.bind_ortvalue_output(n, v)
        bindings.append(io)
    k = [0]

    def step():
        for n, v in feeds_of_step(k[0]).items():
            feeds[n].update_inplace(np.ascontiguousarray(v))
        sess.run_with_iobinding(bindings[k[0] & 1])
        k[0] += 1
        return [outs[n].numpy() for n in names if n not in pairs]
    return step

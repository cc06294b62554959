"""API-level fuzzer: hypothesis draws stacks of layers through the public constructors
(Layer.from_onnx, Model) with any kinds, widths, directions, projections, activations and
flags, consistent or not, and runs each one every way it runs (Model.run, Stream, Pool).

Contract: an inconsistent stack is a ModelError at Model(...) (decided here from the drawn
sizes, not by asking the engine); a consistent one runs and matches the float64 reference,
which is fed the drawn ONNX arrays themselves. Under tools/sanitize.sh or
tools/fuzz_sanitized.sh an out-of-bounds access anywhere is a finding too.
RNNENGINE_API_FUZZ_EXAMPLES sets the number of stacks (CI's sanitized fuzz step raises it)."""
import os

import numpy as np
from hypothesis import HealthCheck, event, given, settings
from hypothesis import strategies as st

from rnnengine import Layer, Model, ModelError
from rnnengine.testing.reference import run_stack

GATES = {"lstm": 4, "gru": 3, "rnn": 1}
EXAMPLES = int(os.environ.get("RNNENGINE_API_FUZZ_EXAMPLES", "100"))
TOL = dict(rtol=1e-5, atol=1e-5)


@st.composite
def stacks(draw):
    """-> (ONNX-layout layer dicts as drawn, whether they form a valid stack)."""
    kind = draw(st.sampled_from(sorted(GATES)), label="kind")
    direction = draw(st.sampled_from(["forward", "reverse", "bidirectional"]), label="dir")
    D, G = (2 if direction == "bidirectional" else 1), GATES[kind]
    num_layers = draw(st.integers(1, 3), label="layers")
    H0 = draw(st.integers(1, 40), label="H")
    P0 = draw(st.integers(1, H0), label="P") if kind == "lstm" and draw(st.booleans()) else 0
    I = draw(st.integers(1, 24), label="I")
    rng = np.random.default_rng(draw(st.integers(0, 2**16), label="seed"))
    acts = {"lstm": ["Sigmoid", "Tanh", "Tanh"], "gru": ["Sigmoid", "Tanh"], "rnn": ["Tanh"]}
    specs, valid, width = [], True, I
    for k in range(num_layers):
        # Mostly one width (valid); sometimes a layer of its own width or input (invalid).
        H = H0 if k == 0 or draw(st.integers(0, 3)) else draw(st.integers(1, 300), label="Hk")
        P = P0 if H == H0 else (min(P0, H) if P0 else 0)
        Hout = P or H
        takes = width if k == 0 or draw(st.integers(0, 5)) else draw(st.integers(1, 50), label="Ik")
        valid &= takes == width and (H, Hout) == (H0, P0 or H0)
        spec = {"kind": kind, "direction": direction,
                "W": 0.5 * rng.standard_normal((D, G * H, takes)),
                "R": 0.5 * rng.standard_normal((D, G * H, Hout)),
                "B": 0.5 * rng.standard_normal((D, 2 * G * H)),
                "activations": acts[kind] * D}
        if P:
            spec["proj"] = 0.5 * rng.standard_normal((D, P, H))
        if kind == "lstm" and draw(st.booleans()):
            spec["P"] = 0.5 * rng.standard_normal((D, 3 * H))
        if kind == "gru":
            spec["linear_before_reset"] = int(draw(st.booleans()))
        if draw(st.integers(0, 3)) == 0:
            spec["clip"] = 0.5 + 2 * rng.random()
        specs.append(spec)
        width = D * Hout
    return specs, valid


def layer(spec: dict) -> Layer:
    return Layer.from_onnx(
        spec["kind"], spec["W"], spec["R"], spec["B"], spec.get("P"),
        direction=spec["direction"], activations=spec["activations"], clip=spec.get("clip"),
        linear_before_reset=spec.get("linear_before_reset", 0), proj=spec.get("proj"))


def reference_dicts(specs):
    return [{key: (v.astype(np.float32) if isinstance(v, np.ndarray) else v)
             for key, v in spec.items()} for spec in specs]


@settings(max_examples=EXAMPLES, deadline=None, suppress_health_check=list(HealthCheck))
@given(drawn=stacks(), data=st.data())
def test_random_stacks_run_every_way_or_are_refused(drawn, data):
    specs, valid = drawn
    event(f"{'valid' if valid else 'refused'} {len(specs)} layer(s)")
    layers = [layer(s) for s in specs]
    if not valid:
        try:
            Model(layers)
        except ModelError as error:
            assert "layer" in str(error)
            return
        raise AssertionError("an inconsistent stack was accepted: "
                             + ", ".join(f"{s['W'].shape}/{s['R'].shape}" for s in specs))
    model = Model(layers, threads=data.draw(st.sampled_from([1, 1, 2]), label="threads"))
    T = data.draw(st.integers(1, 6), label="T")
    N = data.draw(st.integers(1, 3), label="N")
    x = np.random.default_rng(T * 10 + N).standard_normal((T, N, model.input_size))
    x = x.astype(np.float32)
    lengths = data.draw(st.one_of(st.none(), st.lists(st.integers(0, T), min_size=N,
                                                      max_size=N)), label="lengths")
    y, state = model.run(x, lengths=lengths)
    y_ref, state_ref = run_stack(reference_dicts(specs), x, lengths=lengths)
    np.testing.assert_allclose(y, y_ref, **TOL)
    for got, ref in zip(state if isinstance(state, tuple) else (state,),
                        state_ref if isinstance(state_ref, tuple) else (state_ref,)):
        np.testing.assert_allclose(got, ref, **TOL)
    if model.num_directions == 2 or layers[0].reverse:
        return
    y_full, _ = run_stack(reference_dicts(specs), x)
    stream = model.stream(batch=N)
    first = stream.step(x[0])
    rest = stream.run(x[1:])
    np.testing.assert_allclose(np.concatenate([first[None], rest]), y_full, **TOL)
    pool = model.pool(capacity=N + 1)
    ids = [pool.open() for _ in range(N)]
    for t in range(T):
        order = ids[::-1] if t % 2 else ids
        out = pool.step(order, x[t][::-1] if t % 2 else x[t])
        np.testing.assert_allclose(out[::-1] if t % 2 else out, y_full[t], **TOL)

"""Property tests over the public API: for any shapes, dtypes, lengths and layouts hypothesis
draws, Model.run either matches the NumPy oracle or raises a TypeError/ValueError that names
what it expected — never anything else, never a crash."""
import numpy as np
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from rnnengine import Layer, Model
from rnnengine.testing.reference import run_stack

GATES = {"lstm": 4, "gru": 3, "rnn": 1}


@st.composite
def models(draw):
    """-> (Model, the ONNX-layout dicts of its layers as drawn): the oracle runs the drawn
    arrays themselves, not anything the engine hands back."""
    kind = draw(st.sampled_from(sorted(GATES)))
    D = draw(st.sampled_from([1, 2]))
    H = draw(st.integers(1, 6))
    I = draw(st.integers(1, 6))
    num_layers = draw(st.integers(1, 2))
    seed = draw(st.integers(0, 2**16))
    rng = np.random.default_rng(seed)
    G = GATES[kind]
    direction = "bidirectional" if D == 2 else draw(st.sampled_from(["forward", "reverse"]))
    specs = []
    for k in range(num_layers):
        width = I if k == 0 else D * H
        specs.append({"kind": kind, "direction": direction,
                      "W": rng.standard_normal((D, G * H, width)),
                      "R": rng.standard_normal((D, G * H, H)),
                      "B": rng.standard_normal((D, 2 * G * H)),
                      "linear_before_reset": int(kind == "gru" and draw(st.booleans()))})
    layers = [Layer.from_onnx(s["kind"], s["W"], s["R"], s["B"], direction=direction,
                              linear_before_reset=s["linear_before_reset"]) for s in specs]
    oracle = [{key: v.astype(np.float32) if isinstance(v, np.ndarray) else v
               for key, v in s.items()} for s in specs]
    return Model(layers, batch_first=draw(st.booleans())), oracle


@settings(max_examples=150, deadline=None, suppress_health_check=list(HealthCheck))
@given(drawn=models(), data=st.data())
def test_run_matches_oracle_or_raises_clearly(drawn, data):
    model, oracle = drawn
    T = data.draw(st.integers(1, 5), label="T")   # T=0: test_hostile_api
    N = data.draw(st.integers(1, 4), label="N")
    I = model.input_size
    width = data.draw(st.sampled_from([I, I, I, I + 1]), label="width")
    dtype = data.draw(st.sampled_from([np.float32, np.float32, np.float64, np.float16,
                                       np.int32]), label="dtype")
    unbatched = data.draw(st.booleans(), label="unbatched")
    shape = (T, width) if unbatched else ((N, T, width) if model.batch_first else (T, N, width))
    x = np.random.default_rng(T * 7 + N).standard_normal(shape).astype(dtype)
    batch = 1 if unbatched else N
    lengths = data.draw(st.one_of(st.none(), st.lists(st.integers(-1, T + 1), min_size=batch,
                                                      max_size=batch + 1)), label="lengths")
    valid_lengths = lengths is None or (len(lengths) == batch and all(0 <= v <= T for v in lengths))
    if dtype is np.int32:
        expected_error = TypeError
    elif width != I or not valid_lengths:
        expected_error = (ValueError, TypeError)
    else:
        expected_error = None

    if expected_error is not None:
        try:
            model.run(x, lengths=lengths)
        except expected_error as error:
            assert str(error), "an error must say what was expected"
            return
        raise AssertionError(f"no error for x {x.shape} {x.dtype}, lengths {lengths}")

    y, state = model.run(x, lengths=lengths)
    y_ref, state_ref = run_stack(oracle, x.astype(np.float32), lengths=lengths,
                                 batch_first=model.batch_first)
    np.testing.assert_allclose(y, y_ref, rtol=1e-5, atol=1e-5)
    for got, ref in zip(state if isinstance(state, tuple) else (state,),
                        state_ref if isinstance(state_ref, tuple) else (state_ref,)):
        np.testing.assert_allclose(got, ref, rtol=1e-5, atol=1e-5)

"""Ctrl-C during a long Model.run / Stream.run raises KeyboardInterrupt promptly (the compute
loop runs without the GIL, so Python's handler alone would wait for the whole sequence), and a
stream keeps the state it had before the call."""
import textwrap

import pytest

from conftest import interrupted

# Sized from a short timed run so that the whole sequence would take about LONG seconds.
LONG = 30.0
CHILD = textwrap.dedent("""
    import sys, time
    import numpy as np
    from rnnengine import Layer, Model
    rng = np.random.default_rng(0)
    H, I = 1024, 4
    def layer(inputs):
        return Layer.from_onnx("lstm", 0.01 * rng.standard_normal((1, 4 * H, inputs), np.float32),
                               0.01 * rng.standard_normal((1, 4 * H, H), np.float32))
    model = Model([layer(I), layer(H)])
    mode, long = sys.argv[1], float(sys.argv[2])
    start = time.perf_counter()
    model.run(np.ones((20, 1, I), np.float32))
    T = max(100, int(long / ((time.perf_counter() - start) / 20)))
    x = np.ones((T, 1, I), np.float32)
    stream = model.stream()
    stream.run(x[:3])
    before = stream.state
    print("ready", T, flush=True)
    start = time.perf_counter()
    try:
        model.run(x) if mode == "run" else stream.run(x)
    except KeyboardInterrupt:
        after = stream.state
        same = all(np.array_equal(a, b) for a, b in zip(before, after))
        print("interrupted", round(time.perf_counter() - start, 3), "state kept", same,
              flush=True)
        stream.run(x[:2])   # the stream still works
        sys.exit(0)
    print("finished", round(time.perf_counter() - start, 3), flush=True)
""")


@pytest.mark.parametrize("mode", ["run", "stream"])
def test_ctrl_c_interrupts_a_long_run_promptly(mode):
    out, err, code, waited = interrupted(CHILD, [mode, str(LONG)], 1.0, LONG * 4)
    assert code == 0, err[-3000:]
    words = out.split()
    assert words[0] == "interrupted", out
    # Well before the run would have finished (LONG seconds); generous for a loaded machine.
    assert waited < 5.0, f"exited {waited:.1f} s after SIGINT: {out}"
    assert words[2:] == ["state", "kept", "True"], out


PROGRAM_CHILD = textwrap.dedent("""
    import sys, time
    import numpy as np
    from onnx import TensorProto, helper, numpy_helper
    import rnnengine
    rng = np.random.default_rng(0)
    H, I = 512, 4
    W = numpy_helper.from_array((0.01 * rng.standard_normal((1, 4 * H, I))).astype(np.float32), "W")
    R = numpy_helper.from_array((0.01 * rng.standard_normal((1, 4 * H, H))).astype(np.float32), "R")
    graph = helper.make_graph(
        [helper.make_node("LSTM", ["x", "W", "R"], ["y"], hidden_size=H)], "g",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["T", 1, I])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, None)], [W, R])
    sess = rnnengine.InferenceSession(helper.make_model(
        graph, opset_imports=[helper.make_opsetid("", 17)]).SerializeToString())
    start = time.perf_counter()
    sess.run(None, {"x": np.ones((20, 1, I), np.float32)})
    T = max(100, int(float(sys.argv[1]) / ((time.perf_counter() - start) / 20)))
    x = np.ones((T, 1, I), np.float32)
    for _ in range(2):               # the second call plans the program
        sess.run(None, {"x": x})
    assert "sequence" in list(sess.program_status().values())[-1]
    print("ready", T, flush=True)
    start = time.perf_counter()
    try:
        sess.run(None, {"x": x})
    except KeyboardInterrupt:
        print("interrupted", round(time.perf_counter() - start, 3), flush=True)
        sys.exit(0)
    print("finished", round(time.perf_counter() - start, 3), flush=True)
""")


def test_ctrl_c_interrupts_a_compiled_sequence_promptly():
    """The executor's sequence runs check for Ctrl-C between timesteps, as Model.run does."""
    long = 3.0
    out, err, code, waited = interrupted(PROGRAM_CHILD, [str(long)], 0.5, long * 6)
    assert code == 0 and out.startswith("interrupted"), (out, err[-3000:])
    assert waited < long / 2, waited

"""atheris fuzz target for rnnengine.InferenceSession (whole ONNX graphs).

Contract under test: any bytes either load into a session or raise rnnengine.ModelError; a
session that loads, run three times on zero feeds of its declared shapes (unknown dims 1:
the third call runs the executor's program), returns or raises ValueError (which ModelError
is), and so does a stream of it stepped four times on
them (state inputs left to the stream). Any other exception, a crash, or a hang is a
finding. Graphs that need ONNX Runtime for some operators are not run (ORT's own
robustness is not under test here).

    python fuzz/seeds.py fuzz/corpus
    python fuzz/fuzz_session.py fuzz/corpus -max_total_time=60
"""
import sys

import atheris

with atheris.instrument_imports():
    import numpy as np
    import rnnengine

MAX_ELEMENTS = 1 << 16


def _zeros(arg):
    shape = [d if isinstance(d, int) else 1 for d in (arg.shape or [])]
    if arg.dtype is None or int(np.prod(shape)) > MAX_ELEMENTS:
        return None
    return np.zeros(shape, arg.dtype)


def test_one_input(data: bytes) -> None:
    try:
        sess = rnnengine.InferenceSession(data)
    except rnnengine.ModelError:
        return
    if sess.loaded.ort_groups:
        return
    feeds = {a.name: _zeros(a) for a in sess.get_inputs()}
    if any(v is None for v in feeds.values()):
        return
    try:
        # the second call of a signature builds the executor's program, the third runs it
        for _ in range(3):
            sess.run(None, feeds)
    except ValueError:
        return
    # a few stream steps: from the third on, a covered plan runs compiled (stream_runner)
    try:
        stream = sess.stream()
        step_feeds = {k: v for k, v in feeds.items() if k not in stream.state_names.values()}
        for _ in range(4):
            stream.step(step_feeds)
    except ValueError:
        return


def main() -> None:
    atheris.Setup(sys.argv, test_one_input)
    atheris.Fuzz()


if __name__ == "__main__":
    main()

"""The threads= option: hidden units split between threads must give the same results as one
thread (up to float rounding) and as PyTorch, for every cell kind, both phases of two-phase
cells (GRU linear_before_reset=0, LSTM projection), stacks, streams and whole sequences."""
import numpy as np
import pytest

from rnnengine import Layer, Model
from rnnengine.core import kernels as _kernels

torch = pytest.importorskip("torch")
from torch_reference import torch_model_to_layers  # noqa: E402

RTOL = ATOL = 1e-5


# Sizes large enough that every phase goes to the pool (driver.h: RNN_POOL_MIN_MACS), the
# projection phase of the LSTM included.
CASES = [
    # kind, I, H, layers, proj, extra
    ("lstm", 24, 100, 2, 0, {}),
    ("lstm", 10, 128, 1, 64, {}),
    ("gru", 16, 75, 2, 0, {}),
    ("rnn", 12, 160, 1, 0, {"nonlinearity": "relu"}),
]
N = 12


@pytest.mark.parametrize("threads", [2, 3])
@pytest.mark.parametrize("case", CASES, ids=lambda c: f"{c[0]}-H{c[2]}-P{c[4]}")
def test_threads_match_pytorch_and_one_thread(isa, case, threads):
    kind, I, H, L, proj, extra = case
    torch.manual_seed(H)
    cls = {"lstm": torch.nn.LSTM, "gru": torch.nn.GRU, "rnn": torch.nn.RNN}[kind]
    kw = dict(extra, **({"proj_size": proj} if proj else {}))
    m = cls(I, H, num_layers=L, **kw).eval()
    layers = torch_model_to_layers(m)
    one, many = Model(layers, threads=1), Model(layers, threads=threads)
    assert many.threads == threads
    x = np.random.default_rng(H).standard_normal((6, N, I)).astype(np.float32)
    with torch.no_grad():
        yt = m(torch.from_numpy(x))[0].numpy()
    y1, _ = one.run(x)
    yn, _ = many.run(x)
    np.testing.assert_allclose(yn, yt, rtol=RTOL, atol=ATOL)
    np.testing.assert_allclose(yn, y1, rtol=1e-6, atol=1e-7)
    s = many.stream(N)
    assert s.threads == threads
    ys = np.stack([s.step(x[t]) for t in range(6)])
    np.testing.assert_allclose(ys, yt, rtol=RTOL, atol=ATOL)
    s1 = one.stream(N, threads=threads)
    np.testing.assert_allclose(s1.run(x), yt, rtol=RTOL, atol=ATOL)


def test_gru_linear_before_reset_0_with_threads(isa):
    """Two phases per step (z, r then the h gate over r*h'): checked against the serial,
    single-thread engine, which test_kernels checks against ONNX Runtime."""
    rng = np.random.default_rng(9)
    H, I = 150, 9   # both phases large enough for the pool
    layer = Layer.from_onnx("gru", rng.uniform(-0.5, 0.5, (1, 3 * H, I)),
                            rng.uniform(-0.5, 0.5, (1, 3 * H, H)),
                            rng.uniform(-0.5, 0.5, (1, 6 * H)), linear_before_reset=0)
    x = rng.standard_normal((5, 4, I)).astype(np.float32)
    y2, h2 = Model([layer], threads=2).run(x)
    s = Model([layer]).stream(4, threads=2)
    ys = np.stack([s.step(x[t]) for t in range(5)])
    previous = _kernels.isa()
    _kernels.set_isa("serial")
    try:
        y1, h1 = Model([layer]).run(x)
    finally:
        _kernels.set_isa(previous)
    np.testing.assert_allclose(y2, y1, rtol=RTOL, atol=ATOL)
    np.testing.assert_allclose(ys, y1, rtol=RTOL, atol=ATOL)
    np.testing.assert_allclose(h2, h1, rtol=RTOL, atol=ATOL)


def test_more_threads_than_blocks():
    torch.manual_seed(1)
    m = torch.nn.LSTM(3, 8).eval()   # one 16-unit block: nothing to split
    model = Model(torch_model_to_layers(m), threads=4)
    x = np.random.default_rng(2).standard_normal((4, 2, 3)).astype(np.float32)
    with torch.no_grad():
        yt = m(torch.from_numpy(x))[0].numpy()
    np.testing.assert_allclose(model.run(x)[0], yt, rtol=RTOL, atol=ATOL)
    s = model.stream(2)
    np.testing.assert_allclose(np.stack([s.step(x[t]) for t in range(4)]), yt,
                               rtol=RTOL, atol=ATOL)


@pytest.mark.parametrize("bad", [0, -1, 1.5, True, "2", None])
def test_invalid_threads_are_refused(bad):
    layer = Layer.from_onnx("rnn", np.ones((1, 4, 3)), np.ones((1, 4, 4)))
    with pytest.raises(ValueError, match="threads must be a positive integer"):
        Model([layer], threads=bad)
    if bad is not None:
        with pytest.raises(ValueError, match="threads must be a positive integer"):
            Model([layer]).stream(1, threads=bad)

"""Hostile input to the Python API: every call either raises a clear exception naming what was
expected, or gives the right answer (checked against PyTorch). Cases that could crash the
interpreter run in a subprocess so a crash fails the test instead of killing the run."""
import re
import subprocess
import sys
import textwrap

import numpy as np
import pytest
import torch

import rnnengine
from rnnengine import Layer, Model
from torch_reference import torch_model_to_layers, torch_run

I, H = 5, 7


def torch_lstm_and_model(num_layers=1, seed=0):
    """A PyTorch LSTM and the same weights as an rnnengine Model (gates i,f,g,o -> i,o,f,c)."""
    torch.manual_seed(seed)
    net = torch.nn.LSTM(I, H, num_layers=num_layers)
    return net, Model(torch_model_to_layers(net))


@pytest.fixture(scope="module")
def pair():
    return torch_lstm_and_model(num_layers=2)


# -- x ---------------------------------------------------------------------------------
@pytest.mark.parametrize("bad, error, words", [
    (np.zeros((4, 2, I), np.int32), TypeError, "dtype int32"),
    (np.zeros((4, 2, I), np.complex64), TypeError, "complex64"),
    (np.zeros((4, 2, I), bool), TypeError, "dtype bool"),
    (np.array([["a"] * I]), TypeError, "must be a float array"),
    ("not an array", TypeError, "got str"),
    (None, TypeError, "got NoneType"),
    (np.zeros((4, 2, I + 1), np.float32), ValueError, f"(T, N, {I})"),
    (np.zeros((4, 2, 3, I), np.float32), ValueError, "got (4, 2, 3, 5)"),
    (np.zeros((I,), np.float32), ValueError, f"(T, N, {I})"),
    (np.zeros((), np.float32), ValueError, f"(T, N, {I})"),
])
def test_bad_x_is_a_clear_error(pair, bad, error, words):
    _, model = pair
    with pytest.raises(error, match=re.escape(words)):
        model.run(bad)


def test_huge_declared_size_is_refused_before_allocation(pair):
    _, model = pair
    x = np.broadcast_to(np.float32(0), (10**6, 10**5, I))   # 2 TB if it were materialized
    with pytest.raises(ValueError, match="elements"):
        model.run(x)


@pytest.mark.parametrize("dtype", [np.float64, np.float16])
def test_other_float_dtypes_are_converted(pair, dtype):
    net, model = pair
    x = np.random.default_rng(1).standard_normal((6, 3, I)).astype(dtype)
    y, (h, c) = model.run(x)
    y_ref, (h_ref, c_ref) = torch_run(net, x.astype(np.float32))
    np.testing.assert_allclose(y, y_ref, rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(c, c_ref, rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("make_view", [
    lambda a: a[::2],                                  # strided time
    lambda a: a[:, ::-1],                              # negative stride on the batch
    lambda a: np.asfortranarray(a),                    # Fortran order
    lambda a: a.transpose(1, 0, 2).copy().transpose(1, 0, 2),   # transposed memory
])
def test_non_contiguous_input_gives_correct_results(pair, make_view):
    net, model = pair
    base = np.random.default_rng(2).standard_normal((10, 4, I)).astype(np.float32)
    x = make_view(base)
    assert not x.flags.c_contiguous or x is base
    y, _ = model.run(x)
    np.testing.assert_allclose(y, torch_run(net, x)[0], rtol=1e-5, atol=1e-6)


def test_nan_and_inf_propagate_without_crashing(pair):
    _, model = pair
    x = np.zeros((5, 2, I), np.float32)
    x[1, 0, 0] = np.nan
    x[2, 1, 3] = np.inf
    y, (h, c) = model.run(x)
    assert np.isnan(y[1:, 0]).all() and np.isfinite(y[0]).all()
    assert not np.isnan(y[:2, 1]).any()


def test_empty_sequence_and_empty_batch(pair):
    _, model = pair
    y, (h, c) = model.run(np.zeros((0, 3, I), np.float32))
    assert y.shape == (0, 3, H) and h.shape == (2, 3, H) and not h.any()
    y, (h, c) = model.run(np.zeros((4, 0, I), np.float32))
    assert y.shape == (4, 0, H) and h.shape == (2, 0, H)


# -- lengths ---------------------------------------------------------------------------
@pytest.mark.parametrize("lengths, error, words", [
    ([3, 3], ValueError, "3 entries"),
    ([3, 3, 3, 3], ValueError, "3 entries"),
    ([3, -1, 2], ValueError, "[0, 4]"),
    ([3, 5, 2], ValueError, "[0, 4]"),
    ([1.5, 2, 2], TypeError, "3 integers; got dtype float64"),
    ([[1, 2, 3]], TypeError, "1-D sequence of 3 integers"),
    (["a", "b", "c"], TypeError, "3 integers; got dtype <U1"),
])
def test_bad_lengths_are_clear_errors(pair, lengths, error, words):
    _, model = pair
    with pytest.raises(error, match=re.escape(words)):
        model.run(np.zeros((4, 3, I), np.float32), lengths=lengths)


# -- state -----------------------------------------------------------------------------
@pytest.mark.parametrize("make_state, error, words", [
    (lambda h, c: h, TypeError, "tuple (h, c)"),
    (lambda h, c: (h,), TypeError, "tuple (h, c)"),
    (lambda h, c: (h[:1], c), ValueError, "state h must have shape (2, 3, 7)"),
    (lambda h, c: (h, c[:, :2]), ValueError, "state c must have shape (2, 3, 7)"),
    (lambda h, c: (h.astype(np.int64), c), TypeError, "got dtype int64"),
    (lambda h, c: ("h", c), TypeError, "got str"),
])
def test_bad_state_is_a_clear_error(pair, make_state, error, words):
    _, model = pair
    h = np.zeros((2, 3, H), np.float32)
    with pytest.raises(error, match=re.escape(words)):
        model.run(np.zeros((4, 3, I), np.float32), make_state(h, h.copy()))


def test_user_state_is_never_written(pair):
    net, model = pair
    rng = np.random.default_rng(3)
    h = rng.standard_normal((2, 3, H)).astype(np.float32)
    c = rng.standard_normal((2, 3, H)).astype(np.float32)
    h0, c0 = h.copy(), c.copy()
    x = rng.standard_normal((4, 3, I)).astype(np.float32)
    y, (h1, c1) = model.run(x, (h, c))
    np.testing.assert_array_equal(h, h0)
    np.testing.assert_array_equal(c, c0)
    y_ref, (h_ref, c_ref) = torch_run(net, x, (h0, c0))
    np.testing.assert_allclose(h1, h_ref, rtol=1e-5, atol=1e-6)


# -- streams ---------------------------------------------------------------------------
@pytest.mark.parametrize("batch", [0, -1, 1.5, "2", True, None])
def test_bad_stream_batch(pair, batch):
    _, model = pair
    with pytest.raises((ValueError, TypeError), match="batch"):
        model.stream(batch)


def test_bad_step_input(pair):
    _, model = pair
    stream = model.stream(batch=2)
    with pytest.raises(ValueError, match=rf"\(2, {I}\)"):
        stream.step(np.zeros((3, I), np.float32))
    with pytest.raises(TypeError, match="int64"):
        stream.step(np.zeros((2, I), np.int64))
    with pytest.raises(TypeError, match="tuple"):
        stream.state = np.zeros((2, 2, H), np.float32)       # LSTM needs (h, c)
    with pytest.raises(ValueError, match=re.escape(f"chunk must be float32 of shape (T, 2, {I})")):
        stream.run(np.zeros((4, 3, I), np.float32))


def test_bidirectional_model_cannot_stream():
    W = np.zeros((2, 4 * H, I), np.float32)
    R = np.zeros((2, 4 * H, H), np.float32)
    model = Model([Layer.from_onnx("lstm", W, R, direction="bidirectional")])
    with pytest.raises(ValueError, match="bidirectional"):
        model.stream()


# -- weights ---------------------------------------------------------------------------
@pytest.mark.parametrize("kwargs, words", [
    (dict(kind="lstm", W=np.zeros((1, 4 * H, I)), R=np.zeros((1, 4 * H, H + 1))), "R must have shape"),
    (dict(kind="lstm", W=np.zeros((1, 4 * H + 1, I)), R=np.zeros((1, 4 * H, H))), "4*hidden_size"),
    (dict(kind="lstm", W=np.zeros((2, 4 * H, I)), R=np.zeros((2, 4 * H, H))),
     "W has 2 direction(s) but direction='forward'"),
    (dict(kind="gru", W=np.zeros((1, 3 * H, I)), R=np.zeros((1, 3 * H, H)),
          activations=["Sigmoid", "Bogus"]), "unknown activation"),
    (dict(kind="gru", W=np.zeros((1, 3 * H, I)), R=np.zeros((1, 3 * H, H)),
          activations=["Sigmoid"]), "needs 2 activations"),
    (dict(kind="rnn", W=np.zeros((1, H, I)), R=np.zeros((1, H, H)), clip=-1.0),
     "clip must be a positive number"),
    (dict(kind="lstm", W=np.zeros((1, 4 * H, I)), R=np.zeros((1, 4 * H, H)),
          B=np.zeros((1, 7))), "B must have shape"),
    (dict(kind="cnn", W=np.zeros((1, H, I)), R=np.zeros((1, H, H))), "unknown cell kind"),
    (dict(kind="lstm", W=np.array([[["x"] * I] * 4 * H]), R=np.zeros((1, 4 * H, H))),
     "W must be a float tensor"),
])
def test_inconsistent_weights_are_model_errors(kwargs, words):
    kind = kwargs.pop("kind")
    with pytest.raises(rnnengine.ModelError, match=re.escape(words)):
        Layer.from_onnx(kind, **kwargs)


def test_stack_with_mismatched_sizes_is_a_model_error():
    a = Layer.from_onnx("rnn", np.zeros((1, H, I)), np.zeros((1, H, H)))
    b = Layer.from_onnx("rnn", np.zeros((1, H, H + 1)), np.zeros((1, H, H)))
    with pytest.raises(rnnengine.ModelError, match="layer 1 takes"):
        Model([a, b])


# -- no crash, even when misused from several threads ------------------------------------
def test_stream_hammered_from_threads_does_not_crash():
    code = textwrap.dedent(f"""
        import threading, numpy as np
        from rnnengine import Layer, Model
        model = Model([Layer.from_onnx("gru", np.ones((1, {3 * H}, {I})) * 0.1,
                                       np.ones((1, {3 * H}, {H})) * 0.1)])
        stream = model.stream(batch=2)
        x = np.ones((2, {I}), np.float32)
        def work():
            for _ in range(2000):
                try:
                    stream.step(x)
                except RuntimeError:
                    pass    # misuse detected is fine; a crash is not
        threads = [threading.Thread(target=work) for _ in range(4)]
        [t.start() for t in threads]
        [t.join() for t in threads]
        print("ok", np.isfinite(stream.state).all())
    """)
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == "ok True"


def test_caller_floating_point_state_is_left_alone(pair):
    """Kernels may flush denormals to zero for speed, but must restore the caller's mode:
    a subnormal result computed after a run must still be subnormal, not zero."""
    _, model = pair
    tiny = np.array([1e-38], np.float32)
    model.run(np.full((3, 2, I), 1e-39, np.float32))
    model.stream().step(np.full((1, I), 1e-39, np.float32))
    assert (tiny / np.float32(10))[0] != 0

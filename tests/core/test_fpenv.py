"""Subnormals are flushed inside the kernels only (include/rnnengine/fpenv.h): saturated gates
still give PyTorch's numbers, and the caller's floating-point mode is back after every call
(a leaked flush-to-zero mode would silently change NumPy's results in the host process)."""
import numpy as np
import pytest
import torch

import rnnengine


def _subnormal_survives() -> bool:
    tiny = np.array([1e-38], np.float32)
    return bool((tiny / np.float32(100))[0] != 0)


@pytest.mark.parametrize("kind", ["LSTM", "GRU"])
@pytest.mark.parametrize("threads", [1, 2])
def test_saturated_gates_match_torch_and_leave_the_mode_alone(kind, threads):
    assert _subnormal_survives()
    torch.manual_seed(0)
    H = 96
    net = getattr(torch.nn, kind)(H, H, num_layers=2).eval()
    # Inputs of +-300: many gate pre-activations far below -87, whose sigmoid is subnormal
    # in float32 (and h, c products of such gates too). Outputs lie in [-1, 1]; pre-activations
    # in the thousands leave a few 1e-6 of float32 rounding (GRU), hence atol 1e-5.
    x = (np.random.default_rng(0).standard_normal((20, 3, H)) * 300).astype(np.float32)
    with torch.no_grad():
        want, _ = net(torch.from_numpy(x))
    model = rnnengine.from_torch(net, threads=threads)
    y, _ = model.run(x)
    np.testing.assert_allclose(y, want.numpy(), rtol=1e-5, atol=1e-5)
    assert _subnormal_survives()
    stream = model.stream(batch=3)
    steps = np.stack([stream.step(x_t) for x_t in x])
    np.testing.assert_allclose(steps, want.numpy(), rtol=1e-5, atol=1e-5)
    assert _subnormal_survives()

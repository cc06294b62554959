"""``import rnnengine`` does not load the heavy optional packages (onnx alone, with the
ml_dtypes it pulls in, takes longer to import than the whole engine), and a user who runs
``.npz`` weights never needs them: loading, running and streaming such a model leaves them
unloaded. Checked in a fresh interpreter, since this test run has imported them all already;
the numbers it computes are compared here with the float64 NumPy reference."""
import json

import numpy as np

from conftest import run_isolated
from rnnengine.testing import reference as _reference

HEAVY = ("onnx", "onnxruntime", "torch", "keras", "safetensors", "starlette")


def test_import_and_npz_model_without_heavy_packages(tmp_path):
    rng = np.random.default_rng(7)
    I, H, T, N = 3, 5, 4, 2
    # a PyTorch nn.RNN state_dict layout: one gate, so no gate reordering between conventions
    weights = {"weight_ih_l0": rng.standard_normal((H, I)),
               "weight_hh_l0": rng.standard_normal((H, H)),
               "bias_ih_l0": rng.standard_normal(H), "bias_hh_l0": rng.standard_normal(H)}
    weights = {k: (0.5 * v).astype(np.float32) for k, v in weights.items()}
    x = rng.standard_normal((T, N, I)).astype(np.float32)
    np.savez(tmp_path / "rnn.npz", **weights)
    np.save(tmp_path / "x.npy", x)

    result = run_isolated(f"""
        import json, sys
        import numpy as np
        HEAVY = {HEAVY!r}
        import rnnengine
        after_import = [m for m in HEAVY if m in sys.modules]
        model = rnnengine.load({str(tmp_path / "rnn.npz")!r})
        x = np.load({str(tmp_path / "x.npy")!r})
        y, h = model.run(x)
        stream = model.stream(batch={N})
        steps = np.stack([stream.step(x[t]) for t in range({T})])
        np.savez({str(tmp_path / "out.npz")!r}, y=y, h=h, steps=steps)
        print(json.dumps({{"after_import": after_import,
                           "after_use": [m for m in HEAVY if m in sys.modules]}}))
    """)
    assert result.returncode == 0, result.stderr
    loaded = json.loads(result.stdout.strip().splitlines()[-1])
    assert loaded == {"after_import": [], "after_use": []}

    out = np.load(tmp_path / "out.npz")
    B = np.concatenate([weights["bias_ih_l0"], weights["bias_hh_l0"]])[None]
    Y, Y_h = _reference.onnx_rnn("rnn", x, weights["weight_ih_l0"][None],
                                 weights["weight_hh_l0"][None], B)
    np.testing.assert_allclose(out["y"], Y[:, 0], rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(out["h"], Y_h, rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(out["steps"], Y[:, 0], rtol=1e-5, atol=1e-5)


def test_lazy_public_names_resolve(tmp_path):
    """The ONNX-side names load on first access and are the objects their modules define."""
    result = run_isolated("""
        import sys
        import rnnengine
        assert "onnx" not in sys.modules
        from rnnengine import InferenceSession, Batcher
        from rnnengine.runtime.session import InferenceSession as S
        from rnnengine.serving.batcher import Batcher as B
        from rnnengine.runtime.backend import RnnEngineBackend
        assert InferenceSession is S and Batcher is B
        assert rnnengine.backend.prepare.__func__ is RnnEngineBackend.prepare.__func__
        assert set(rnnengine.__all__) <= set(dir(rnnengine))
        missing = [n for n in rnnengine.__all__ if getattr(rnnengine, n, None) is None]
        assert not missing, missing
        try:
            rnnengine.no_such_name
        except AttributeError:
            pass
        else:
            raise AssertionError("no AttributeError")
    """)
    assert result.returncode == 0, result.stderr

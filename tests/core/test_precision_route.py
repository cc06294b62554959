"""A reduced precision never silently runs slower than fp32 (precision_route): on a variant
without AVX512-BF16, bf16 runs fp16 weights, and so does int8 without a fast integer product
(AVX512-VNNI, or AVX2's vpmaddwd on the avx2 variant; with a RuntimeWarning), and
``model.precision`` says so; on the portable variant every reduced mode warns; fp32 is
never rerouted. Every route stays within the requested mode's budget of the float64 NumPy
reference."""
import os
import subprocess
import sys
import warnings

import numpy as np
import pytest

import rnnengine
from rnnengine import Layer, Model
from rnnengine.core import kernels as _kernels
from rnnengine.testing import reference as _reference
from rnnengine.core import precision_route

BUDGET = {"fp32": 1e-5, "fp16": 5e-3, "bf16": 3e-2, "int8": 6e-2}
FAST = {"bf16": ("avx512bf16", "amx"), "int8": ("avx512vnni", "avx2madd")}
# AVX2's int8 product on an AVX-512 CPU without VNNI: slower than fp32 on batched sequences
NOT_FAST_ON = {"avx2madd": ("avx512", "amx")}
SRC = os.path.dirname(os.path.dirname(os.path.abspath(rnnengine.__file__)))


def case(big=None):
    rng = np.random.default_rng(4)
    H, I = 64, 24
    s = 1 / np.sqrt(H)
    W = rng.normal(0, s, (1, 4 * H, I))
    R = rng.normal(0, s, (1, 4 * H, H))
    B = rng.normal(0, s, (1, 8 * H))
    if big is not None:
        W[0, 5, 3] = big
    x = rng.standard_normal((20, 2, I)).astype(np.float32)
    return W, R, B, x


def expected(isa, mode):
    """(precision that runs, whether a RuntimeWarning is due) on variant ``isa``."""
    if mode == "fp32":
        return mode, False
    if isa == "serial":
        return mode, True
    if mode in FAST and not fast(isa, mode):
        return "fp16", mode == "int8"
    return mode, False


def fast(isa, mode):
    product = _kernels.gemm_isa(mode)
    return product in FAST[mode] and isa not in NOT_FAST_ON.get(product, ())


def build(W, R, B, mode):
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        model = Model([Layer.from_onnx("lstm", W, R, B)], precision=mode)
    return model, [w for w in caught if issubclass(w.category, RuntimeWarning)]


@pytest.mark.parametrize("mode", sorted(BUDGET))
def test_route_by_variant_within_the_modes_budget(isa, mode):
    W, R, B, x = case()
    model, warned = build(W, R, B, mode)
    runs, warns = expected(isa, mode)
    assert model.precision == runs
    assert {cell.precision for cell in model.cells} == {runs}
    assert bool(warned) == warns, [str(w.message) for w in warned]
    for w in warned:
        assert f"precision={mode!r}" in str(w.message) and isa in str(w.message)
        assert "slower" in str(w.message)
    ref = _reference.onnx_rnn("lstm", x, W, R, B)[0][:, 0]
    err = float(np.abs(model.run(x)[0] - ref).max())
    assert err <= BUDGET[mode], f"{mode} running {runs} on {isa}: {err:.3e}"


def test_int8_keeps_int8_where_fp16_cannot_hold_the_weights(isa):
    """A weight beyond fp16's range: the fp16 route is closed, so int8 stays and warns
    wherever it is slower than fp32."""
    if isa == "serial" or fast(isa, "int8"):
        pytest.skip("int8 has its fast product here, or warns for the variant itself")
    W, R, B, x = case(big=1e5)
    model, warned = build(W, R, B, "int8")
    assert model.precision == "int8"
    assert len(warned) == 1 and "65504" in str(warned[0].message)
    assert isa in str(warned[0].message)


def test_load_forced_avx2_reports_and_warns(tmp_path):
    """RNNENGINE_ISA=avx2, as on an AVX2-only CPU: rnnengine.load(..., precision=...) of a
    saved model runs bf16 as fp16 and int8 as int8 (AVX2's integer product), without a
    warning."""
    if "avx2" not in _kernels.supported_isas():
        pytest.skip("this CPU lacks avx2")
    W, R, B, x = case()
    path = tmp_path / "m.npz"
    Model([Layer.from_onnx("lstm", W, R, B)]).save(path)
    ref = _reference.onnx_rnn("lstm", x, W, R, B)[0][:, 0]
    np.save(tmp_path / "x.npy", x)
    np.save(tmp_path / "ref.npy", ref)
    code = f"""
import warnings, numpy as np, rnnengine
x, ref = np.load({str(tmp_path / 'x.npy')!r}), np.load({str(tmp_path / 'ref.npy')!r})
for mode in ("fp32", "fp16", "bf16", "int8"):
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        m = rnnengine.load({str(path)!r}, precision=mode)
    err = float(np.abs(m.run(x)[0] - ref).max())
    print(mode, m.precision, len([w for w in caught if w.category is RuntimeWarning]), err)
"""
    env = dict(os.environ, RNNENGINE_ISA="avx2",
               PYTHONPATH=SRC + os.pathsep + os.environ.get("PYTHONPATH", ""))
    out = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True,
                         timeout=120)
    assert out.returncode == 0, out.stderr
    rows = {r.split()[0]: r.split()[1:] for r in out.stdout.strip().splitlines()}
    assert {m: (r[0], int(r[1])) for m, r in rows.items()} == {
        "fp32": ("fp32", 0), "fp16": ("fp16", 0), "bf16": ("fp16", 0), "int8": ("int8", 0)}
    for mode, r in rows.items():
        assert float(r[2]) <= BUDGET[mode], (mode, r)


def test_int8_on_avx512_without_vnni_runs_fp16(monkeypatch):
    """An AVX-512 CPU without VNNI (simulated: the avx512 variant naming AVX2's product for
    int8, as kernels.h sets it up there) runs int8 as fp16 and says why: the AVX2 product
    loses to 16-wide fp32 FMAs on batched sequences. On the avx2 variant the same product
    keeps int8."""
    W, R, B, _ = case()
    monkeypatch.setattr(_kernels, "gemm_isa",
                        lambda mode: "avx2madd" if mode in ("int8", "int8r") else "avx512")
    for variant, runs in (("avx512", "fp16"), ("avx2", "int8")):
        monkeypatch.setattr(_kernels, "isa", lambda variant=variant: variant)
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            got = precision_route.route("int8", [Layer.from_onnx("lstm", W, R, B)])
        assert got == runs
        messages = [str(w.message) for w in caught if issubclass(w.category, RuntimeWarning)]
        if runs == "fp16":
            assert len(messages) == 1 and "batched sequences" in messages[0], messages
            assert "avx512" in messages[0] and "AVX512-VNNI" in messages[0]
        else:
            assert not messages

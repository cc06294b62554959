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
FAST = {"bf16": ("avx512bf16", "amx"), "int8": ("avx512vnni", "avx2madd", "avx512madd")}
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
    return product in FAST[mode]


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


def test_int8_on_avx512_without_vnni_runs_int8():
    """An AVX-512 CPU without VNNI (this one's hidden: set_isa(..., without=...)) runs int8
    as int8, without a warning, with AVX-512BW's 16-bit integer product, which beats fp32
    there on every workload measured. Its integer sums are the avx2 variant's, so the two
    differ only by the gate math's rounding, far inside int8's budget."""
    if "avx512" not in _kernels.supported_isas():
        pytest.skip("this CPU lacks avx512")
    W, R, B, x = case()
    previous = _kernels.isa()
    try:
        _kernels.set_isa("avx512", without=("avx512vnni",))
        assert _kernels.gemm_isa("int8") == _kernels.gemm_isa("int8r") == "avx512madd"
        model, warned = build(W, R, B, "int8")
        assert model.precision == "int8" and not warned, [str(w.message) for w in warned]
        wide = model.run(x)[0]
        _kernels.set_isa("avx2")
        narrow = model.run(x)[0]
    finally:
        _kernels.set_isa(previous)
    ref = _reference.onnx_rnn("lstm", x, W, R, B)[0][:, 0]
    assert float(np.abs(wide - ref).max()) <= BUDGET["int8"]
    assert float(np.abs(wide - narrow).max()) <= 1e-5


def test_set_isa_without_an_unknown_feature_raises():
    with pytest.raises(ValueError, match="avx512vnni"):
        _kernels.set_isa(_kernels.isa(), without=("vnni",))

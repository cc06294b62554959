"""kernels_impl.h promises that every output is the same sum in the same order whatever the
path: a streamed step, a whole sequence, any batch size and any thread split. Checked bit for
bit here (not to a tolerance), per ISA variant and cell kind, including the two-phase cells
(GRU linear_before_reset=0, LSTM projection). Sizes span several 16-unit blocks and a
partial one, so every thread gets blocks and the panel kernels' row counts vary."""
import numpy as np
import pytest

from rnnengine import Layer, Model
from rnnengine.testing import reference as _reference
from rnnengine.core import kernels as _kernels, precision, precision_route

CASES = [("lstm", {}), ("lstm", {"proj": 19}), ("gru", {"linear_before_reset": 0}),
         ("gru", {"linear_before_reset": 1}), ("rnn", {})]


def model_for(kind, extra, threads=1, layers=2):
    G = {"lstm": 4, "gru": 3, "rnn": 1}[kind]
    rng = np.random.default_rng(11)
    H, I = 70, 9
    P = extra.get("proj")
    made, width = [], I
    for _ in range(layers):
        proj = rng.uniform(-0.3, 0.3, (1, P, H)) if P else None
        made.append(Layer.from_onnx(
            kind, rng.uniform(-0.3, 0.3, (1, G * H, width)),
            rng.uniform(-0.3, 0.3, (1, G * H, P or H)), rng.uniform(-0.3, 0.3, (1, 2 * G * H)),
            proj=proj, linear_before_reset=extra.get("linear_before_reset", 0)))
        width = P or H
    return Model(made, threads=threads)


@pytest.mark.parametrize("kind, extra", CASES)
def test_sequence_step_batch_and_threads_agree_bit_for_bit(isa, kind, extra):
    model = model_for(kind, extra)
    T, N = 7, 8
    x = np.random.default_rng(3).standard_normal((T, N, model.input_size)).astype(np.float32)
    y, _ = model.run(x)

    stream = model.stream(N)
    stepped = np.stack([stream.step(x[t]) for t in range(T)])
    np.testing.assert_array_equal(stepped, y)            # streamed steps vs whole sequence

    chunked = model.stream(N)
    np.testing.assert_array_equal(np.concatenate([chunked.run(x[:3]), chunked.run(x[3:])]), y)

    for n in range(N):                                    # batch of one vs batch of N
        np.testing.assert_array_equal(model.run(x[:, n:n + 1])[0], y[:, n:n + 1])

    for threads in (2, 3):                                # any thread split
        np.testing.assert_array_equal(model_for(kind, extra, threads).run(x)[0], y)
        pool = model_for(kind, extra, threads).pool(N)
        ids = [pool.open() for _ in range(N)]
        np.testing.assert_array_equal(np.stack([pool.step(ids, x[t]) for t in range(T)]), y)


@pytest.mark.parametrize("kind, extra", CASES)
def test_every_row_count_of_a_register_tile_agrees_bit_for_bit(isa, kind, extra):
    """Batches of 1 to 16 rows end in a row chunk of every size a variant's register tile
    takes (avx2: up to 6 rows, the gates one or two per pass; avx512: up to 8 rows, all
    gates), in the streamed steps and in the sequence's input product: each row gets the bits
    it gets alone, and the float64 reference's values."""
    model = model_for(kind, extra, layers=1)
    x = np.random.default_rng(12).standard_normal((4, 16, model.input_size)).astype(np.float32)
    alone = [model.run(x[:, n:n + 1])[0] for n in range(16)]
    for N in range(1, 17):
        y, _ = model.run(x[:, :N])
        stream = model.stream(N)
        stepped = np.stack([stream.step(x[t, :N]) for t in range(x.shape[0])])
        np.testing.assert_array_equal(stepped, y)
        for n in range(N):
            np.testing.assert_array_equal(y[:, n:n + 1], alone[n])
    if extra.get("proj") is None:
        layer = model.layers[0]
        B = np.concatenate([layer.Wb, layer.Rb], axis=1)
        ref = _reference.onnx_rnn(kind, x, layer.W, layer.R, B,
                                  linear_before_reset=extra.get("linear_before_reset", 0))[0]
        np.testing.assert_allclose(np.concatenate(alone, axis=1), ref[:, 0], rtol=1e-5,
                                   atol=1e-5)


@pytest.mark.parametrize("kind, extra", CASES)
def test_panels_beyond_l2_agree_bit_for_bit(isa, kind, extra):
    """Block panels of 128 KB and more, shared by several row chunks, are taken in K slices
    with the next slice prefetched (gemm_impl.h: rnn_panel_sliced). Here the input panels are
    (I = 2100): a streamed step of 16 rows takes them sliced, a whole sequence takes them in
    its input GEMM and a batch of one in one pass; all three must agree bit for bit, and with
    the float64 reference."""
    G = {"lstm": 4, "gru": 3, "rnn": 1}[kind]
    rng = np.random.default_rng(5)
    H, I, T, N = 36, 2100, 3, 16
    P = extra.get("proj")
    W = rng.uniform(-0.05, 0.05, (1, G * H, I))
    R = rng.uniform(-0.3, 0.3, (1, G * H, P or H))
    B = rng.uniform(-0.3, 0.3, (1, 2 * G * H))
    proj = rng.uniform(-0.3, 0.3, (1, P, H)) if P else None
    lbr = extra.get("linear_before_reset", 0)
    model = Model([Layer.from_onnx(kind, W, R, B, proj=proj, linear_before_reset=lbr)])
    x = rng.standard_normal((T, N, I)).astype(np.float32)
    y, _ = model.run(x)
    stream = model.stream(N)
    np.testing.assert_array_equal(np.stack([stream.step(x[t]) for t in range(T)]), y)
    for n in (0, 7, 15):
        np.testing.assert_array_equal(model.run(x[:, n:n + 1])[0], y[:, n:n + 1])
    if P is None:
        ref = _reference.onnx_rnn(kind, x, W, R, B, linear_before_reset=lbr)[0][:, 0]
        np.testing.assert_allclose(y, ref, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("kind", ["lstm", "gru"])
def test_recurrent_panels_beyond_l2_agree_bit_for_bit(isa, kind):
    """The same for the recurrent product of a wide layer (LSTM H=512: 128 KB per block; GRU
    H=704: 132 KB), whose weights come from beyond L2 at every step."""
    G = {"lstm": 4, "gru": 3}[kind]
    H = {"lstm": 512, "gru": 704}[kind]
    rng = np.random.default_rng(6)
    T, N, I = 3, 8, 5
    W = rng.uniform(-0.3, 0.3, (1, G * H, I))
    R = rng.uniform(-0.04, 0.04, (1, G * H, H))
    B = rng.uniform(-0.3, 0.3, (1, 2 * G * H))
    lbr = int(kind == "gru")
    model = Model([Layer.from_onnx(kind, W, R, B, linear_before_reset=lbr)])
    x = rng.standard_normal((T, N, I)).astype(np.float32)
    y, _ = model.run(x)
    for n in (0, 5):
        np.testing.assert_array_equal(model.run(x[:, n:n + 1])[0], y[:, n:n + 1])
    stream = model.stream(N)
    np.testing.assert_array_equal(np.stack([stream.step(x[t]) for t in range(T)]), y)
    ref = _reference.onnx_rnn(kind, x, W, R, B, linear_before_reset=lbr)[0][:, 0]
    np.testing.assert_allclose(y, ref, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("kind, extra", CASES)
def test_sequences_longer_than_one_projection_chunk(isa, kind, extra):
    """A sequence's input projections are computed rnn_xp_steps timesteps at a time (driver.h:
    256 rows: 86 timesteps at N=3), each chunk as the loop enters it, forward or reverse.
    Across chunk boundaries: streamed steps agree bit for bit, and a bidirectional layer with
    per-entry lengths matches the float64 reference."""
    G = {"lstm": 4, "gru": 3, "rnn": 1}[kind]
    rng = np.random.default_rng(8)
    T, N, H, I = 200, 3, 20, 6
    P = extra.get("proj")
    lbr = extra.get("linear_before_reset", 0)
    model = model_for(kind, extra, layers=1)
    x = rng.standard_normal((T, N, model.input_size)).astype(np.float32)
    y, _ = model.run(x)
    stream = model.stream(N)
    np.testing.assert_array_equal(np.stack([stream.step(x[t]) for t in range(T)]), y)
    if P is not None:
        return
    W = rng.uniform(-0.4, 0.4, (2, G * H, I))
    R = rng.uniform(-0.4, 0.4, (2, G * H, H))
    B = rng.uniform(-0.3, 0.3, (2, 2 * G * H))
    layer = Layer.from_onnx(kind, W, R, B, direction="bidirectional", linear_before_reset=lbr)
    x = rng.standard_normal((T, N, I)).astype(np.float32)
    lengths = np.array([T, 137, 90], np.int32)
    y, _ = Model([layer]).run(x, lengths=lengths)
    ref = _reference.onnx_rnn(kind, x, W, R, B, sequence_lens=lengths, direction="bidirectional",
                              linear_before_reset=lbr)[0]
    np.testing.assert_allclose(y, ref.transpose(0, 2, 1, 3).reshape(T, N, 2 * H),
                               rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("kind", ["rnn", "gru", "lstm"])
def test_fp16_weights_wider_than_one_slice_agree_bit_for_bit(isa, kind):
    """fp16 weights with K > 128 inputs: a call with more rows than one register block
    runs several tiles over the panel (the portable variant converts it in K slices into
    fp32: gemm_entries.h, rnn_gemm_f16), a call with fewer converts it in registers in one
    pass. Both must add the same products in the same order, so each row alone, the whole
    batch and streamed steps give the same bits; and the
    outputs stay within fp16's budget of the float64 reference on the rounded weights."""
    G = {"lstm": 4, "gru": 3, "rnn": 1}[kind]
    rng = np.random.default_rng(12)
    H, I, T, N = 20, 600, 4, 16
    W = rng.uniform(-0.05, 0.05, (1, G * H, I))
    R = rng.uniform(-0.3, 0.3, (1, G * H, H))
    B = rng.uniform(-0.3, 0.3, (1, 2 * G * H))
    lbr = int(kind == "gru")
    model = Model([Layer.from_onnx(kind, W, R, B, linear_before_reset=lbr)], precision="fp16")
    x = rng.standard_normal((T, N, I)).astype(np.float32)
    y, _ = model.run(x)
    for n in range(N):
        np.testing.assert_array_equal(model.run(x[:, n:n + 1])[0], y[:, n:n + 1])
    stream = model.stream(N)
    np.testing.assert_array_equal(np.stack([stream.step(x[t]) for t in range(T)]), y)
    half = [a.astype(np.float16).astype(np.float64) for a in (W, R)]
    ref = _reference.onnx_rnn(kind, x, *half, B, linear_before_reset=lbr)[0][:, 0]
    np.testing.assert_allclose(y, ref, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("kind", ["rnn", "gru", "lstm"])
@pytest.mark.parametrize("mode", ["int8", "int8r"])
@pytest.mark.parametrize("I", [9, 1100])
@pytest.mark.parametrize("without", [(), ("avx512vnni",)])
def test_int8_agrees_bit_for_bit(isa, monkeypatch, kind, mode, I, without):
    """int8 quantizes each input row on its own and sums integers exactly, K in chunks (the
    AVX2 product: 512 k's, each chunk's sums scaled into fp32 in order); rows are quantized
    once per phase where they fit a per-thread buffer (I = 9), else per call and K chunk
    (I = 1100, 3 chunks). Each row alone, the batch (30 rows: more than a phase's row group),
    streamed steps and thread splits must give the same bits; "int8r" runs the residual
    weight part too. And the outputs stay within int8's budget of the float64 reference.
    without: on the AVX-512 variants, also the product of a CPU without VNNI (512-bit
    vpmaddwd; the fixture switches back)."""
    if without:
        if isa not in ("avx512", "amx"):
            pytest.skip("VNNI's products are the AVX-512 variants'")
        _kernels.set_isa(isa, without=without)
    G = {"lstm": 4, "gru": 3, "rnn": 1}[kind]
    rng = np.random.default_rng(13)
    H, T, N = 40, 4, 30
    W = rng.normal(0, 1 / np.sqrt(I), (1, G * H, I))
    R = rng.normal(0, 1 / np.sqrt(H), (1, G * H, H))
    B = rng.uniform(-0.3, 0.3, (1, 2 * G * H))
    lbr = int(kind == "gru")
    if mode == "int8r":
        monkeypatch.setattr(precision, "INT8_RESIDUAL_ABOVE", 0.0)
    monkeypatch.setattr(precision_route, "REROUTE", False)

    def make(threads=1):
        model = Model([Layer.from_onnx(kind, W, R, B, linear_before_reset=lbr)],
                      threads=threads, precision="int8")
        assert {cell.precision for cell in model.cells} == {mode}
        return model

    model = make()
    x = rng.standard_normal((T, N, I)).astype(np.float32)
    y, _ = model.run(x)
    for n in (0, 17, 29):
        np.testing.assert_array_equal(model.run(x[:, n:n + 1])[0], y[:, n:n + 1])
    stream = model.stream(N)
    np.testing.assert_array_equal(np.stack([stream.step(x[t]) for t in range(T)]), y)
    np.testing.assert_array_equal(make(threads=3).run(x)[0], y)
    ref = _reference.onnx_rnn(kind, x, W, R, B, linear_before_reset=lbr)[0][:, 0]
    assert float(np.abs(y - ref).max()) <= 6e-2

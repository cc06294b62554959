"""Session streams and pools against ONNX Runtime loops written as the models' authors
write them (state outputs fed back by hand), on the same file (within 1e-4)."""
import numpy as np
import pytest

import session_models as sm
from stream_checks import TOL, author_loop, check_pool, check_stream, silero_chunks
from rnnengine import InferenceSession
from rnnengine.runtime.stream_plan import absorb_views

pytest.importorskip("onnxruntime")
pytest.importorskip("torch")

SR = np.array(16000, np.int64)


@pytest.fixture(scope="module")
def models():
    return {"a_state": sm.embedding_lstm(True), "a_plain": sm.embedding_lstm(False),
            "a_plain_fixed": sm.embedding_lstm(False, dynamic=False),
            "a_fixed": sm.embedding_lstm(True, dynamic=False),
            "b_linear": sm.frontend_gru(False), "b_conv": sm.frontend_gru(True),
            "d": sm.packed_lstm()}


def test_stream_embedding_lstm_with_state(models):
    rng = np.random.default_rng(0)
    steps = [{"tokens": rng.integers(0, 20, (1, 1)).astype(np.int64)} for _ in range(200)]
    zero = {"h0": np.zeros((2, 1, 16), np.float32), "c0": np.zeros((2, 1, 16), np.float32)}
    check_stream(models["a_state"], steps, {"hn": "h0", "cn": "c0"}, zero)


@pytest.mark.parametrize("front", ["b_linear", "b_conv"])
def test_stream_frontend_gru(models, front):
    rng = np.random.default_rng(1)
    shape = (1, 10, 2) if front == "b_conv" else (1, 2, 10)   # two frames a step
    steps = [{"x": rng.standard_normal(shape).astype(np.float32)} for _ in range(200)]
    check_stream(models[front], steps, {"hn": "h0"}, {"h0": np.zeros((1, 1, 16), np.float32)})


def test_stream_packed_state(models):
    rng = np.random.default_rng(2)
    steps = [{"x": rng.standard_normal((1, 1, 10)).astype(np.float32)} for _ in range(250)]
    check_stream(models["d"], steps, {"stateN": "state"},
                 {"state": np.zeros((1, 2, 8, 2), np.float32)})


def test_stream_keeps_state_in_the_kernels_only_when_exact(models):
    """A graph whose packing is the inverse of its unpacking streams with the state inside
    the recurrent kernels; one that swaps h and c on the way round runs the whole graph,
    and both match the author loop."""
    rng = np.random.default_rng(2)
    steps = [{"x": rng.standard_normal((1, 1, 10)).astype(np.float32)} for _ in range(60)]
    zero = {"state": np.zeros((1, 2, 8, 2), np.float32)}
    fast = check_stream(models["d"], steps, {"stateN": "state"}, zero)
    slow = check_stream(sm.packed_lstm(swap=True), steps, {"stateN": "state"}, zero)
    assert "inside the recurrent kernels" in repr(fast)
    assert "inside" not in repr(slow)


def test_fast_stream_state_round_trip(models):
    rng = np.random.default_rng(3)
    sess = InferenceSession(models["d"])
    a = sess.stream()
    xs = [rng.standard_normal((1, 1, 10)).astype(np.float32) for _ in range(8)]
    for x in xs[:4]:
        a.step({"x": x})
    assert "inside" in repr(a)
    saved = a.state
    b = sess.stream()
    b.step({"x": xs[0]})
    b.state = saved                      # unpacked into b's recurrent kernels
    np.testing.assert_array_equal(b.state["state"], saved["state"])
    for x in xs[4:]:
        np.testing.assert_array_equal(a.step({"x": x})[0], b.step({"x": x})[0])
    a.reset()
    assert not a.state["state"].any() if a.state["state"] is not None else True


def test_stream_silero_with_sr_fixed_once():
    rng = np.random.default_rng(3)
    steps = [{"input": x} for x in silero_chunks(rng, 200)]
    check_stream(sm.SILERO, steps, {"stateN": "state"},
                 {"state": np.zeros((2, 1, 128), np.float32)}, stream_feeds={"sr": SR})


def test_stream_fixed_feed_given_with_each_step():
    rng = np.random.default_rng(4)
    chunks = silero_chunks(rng, 5)
    a = InferenceSession(sm.SILERO).stream(feeds={"sr": SR})
    b = InferenceSession(sm.SILERO).stream()
    for x in chunks:
        np.testing.assert_array_equal(a.step({"input": x})[0], b.step({"input": x, "sr": SR})[0])


def test_explicit_pairs_reset_and_state_bytes(models):
    rng = np.random.default_rng(5)
    sess = InferenceSession(models["a_state"])
    stream = sess.stream(state={"hn": "h0", "cn": "c0"})
    tokens = [rng.integers(0, 20, (1, 1)).astype(np.int64) for _ in range(20)]
    for t in tokens[:10]:
        stream.step({"tokens": t})
    blob = stream.export_state()
    assert isinstance(blob, bytes)
    rest = [stream.step({"tokens": t})[0] for t in tokens[10:]]
    other = sess.stream()
    other.import_state(blob)
    for t, want in zip(tokens[10:], rest):
        np.testing.assert_array_equal(other.step({"tokens": t})[0], want)
    other.reset()
    assert all(v is None or not v.any() for v in other.state.values())
    fresh = sess.stream()
    np.testing.assert_array_equal(other.step({"tokens": tokens[0]})[0],
                                  fresh.step({"tokens": tokens[0]})[0])


SHORT = "shorter than the 14-byte prefix"
OLD = "a session state exported by an older rnnengine"


@pytest.mark.parametrize("blob, reason", [
    (b"", SHORT), (b"RNNESESS", SHORT), (b"RNNESESS\xff\xff\xff\x7f{}", OLD),
    (b"RNNESESS\x02\x00\x00\x00[]xx", OLD), (b"PK\x03\x04garbage", SHORT),
    (b'RNNESESS\x1e\x00\x00\x00[["h0", "float32", [9999, 2]]]', OLD)])
def test_hostile_state_bytes(models, blob, reason):
    stream = InferenceSession(models["a_state"]).stream()
    with pytest.raises(ValueError, match=f"^not a valid rnnengine state: .*{reason}"):
        stream.import_state(blob)


def test_stream_along_time_without_state_inputs(models):
    """No state inputs: chunks of timesteps stream through the whole graph, the LSTMs
    carrying their state; the result equals ORT on the whole sequence."""
    rng = np.random.default_rng(6)
    tokens = rng.integers(0, 20, (1, 210)).astype(np.int64)
    whole = sm.ort_session(models["a_plain"]).run(None, {"tokens": tokens})[0]
    stream = InferenceSession(models["a_plain"]).stream()
    assert stream.state_names == {}
    got, t = [], 0
    for size in [1, 3, 1, 5] * 21:
        if t >= tokens.shape[1]:
            break
        got.append(stream.step({"tokens": tokens[:, t:t + size]})[0])
        t += size
    np.testing.assert_allclose(np.concatenate(got, axis=1), whole[:, :t], **TOL)
    blob = stream.export_state()
    copy = InferenceSession(models["a_plain"]).stream()
    copy.import_state(blob)
    nxt = tokens[:, :2]
    np.testing.assert_array_equal(copy.step({"tokens": nxt})[0], stream.step({"tokens": nxt})[0])


def test_stream_along_time_refuses_an_op_that_mixes_timesteps():
    from onnx import TensorProto, helper, numpy_helper
    rng = np.random.default_rng(7)
    H = 4
    inits = [numpy_helper.from_array(rng.standard_normal(s).astype(np.float32), n)
             for n, s in (("W", (1, 4 * H, 3)), ("R", (1, 4 * H, H)))]
    nodes = [helper.make_node("LSTM", ["x", "W", "R"], ["Y"], hidden_size=H),
             helper.make_node("Softmax", ["Y"], ["y"], axis=0, name="time_softmax")]
    graph = helper.make_graph(nodes, "g", [helper.make_tensor_value_info(
        "x", TensorProto.FLOAT, ["T", 1, 3])], [helper.make_tensor_value_info(
            "y", TensorProto.FLOAT, ["T", 1, 1, H])], inits)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    with pytest.raises(ValueError, match="time_softmax"):
        InferenceSession(model).stream()


# --- pools -------------------------------------------------------------------------------


def test_pool_silero_16_streams():
    chunks = silero_chunks(np.random.default_rng(9), 4)
    check_pool(sm.SILERO, lambda rng: {"input": chunks[rng.integers(4)] +
                                       np.float32(0.01) * rng.standard_normal((1, 512)).astype(np.float32)},
               {"stateN": "state"}, {"state": np.zeros((2, 1, 128), np.float32)}, 16, 30,
               fixed={"sr": SR})


def test_pool_frontend_gru_batched(models):
    check_pool(models["b_linear"],
               lambda rng: {"x": rng.standard_normal((1, 1, 10)).astype(np.float32)},
               {"hn": "h0"}, {"h0": np.zeros((1, 1, 16), np.float32)}, 6, 40)


def test_pool_fixed_batch_steps_one_by_one(models):
    check_pool(models["d"], lambda rng: {"x": rng.standard_normal((1, 1, 10)).astype(np.float32)},
               {"stateN": "state"}, {"state": np.zeros((1, 2, 8, 2), np.float32)}, 5, 30,
               batched=False)


def test_pool_embedding_lstm_state(models):
    zero = {"h0": np.zeros((2, 1, 16), np.float32), "c0": np.zeros((2, 1, 16), np.float32)}
    check_pool(models["a_state"], lambda rng: {"tokens": rng.integers(0, 20, (1, 1)).astype(
        np.int64)}, {"hn": "h0", "cn": "c0"}, zero, 8, 30)
    check_pool(models["a_fixed"], lambda rng: {"tokens": rng.integers(0, 20, (1, 3)).astype(
        np.int64)}, {"hn": "h0", "cn": "c0"}, zero, 4, 10, batched=False)


def test_pool_ids_and_state_bytes():
    pool = InferenceSession(sm.SILERO).pool(capacity=2, feeds={"sr": SR})
    a = pool.open()
    b = pool.open()
    with pytest.raises(RuntimeError, match="full"):
        pool.open()
    x = silero_chunks(np.random.default_rng(10), 1, batch=2)[0]
    pool.step([a, b], {"input": x})
    before = pool.state(b)["state"]
    assert before.shape == (2, 1, 128) and before.any()
    blob = pool.export_state(b)
    pool.close(b)
    with pytest.raises(ValueError, match="not open"):
        pool.step([b], {"input": x[:1]})
    c = pool.import_state(blob)
    assert c != b
    np.testing.assert_array_equal(pool.state(c)["state"], before)
    with pytest.raises(ValueError, match="stack the 2 streams"):
        pool.step([a, c], {"input": x[:1]})
    with pytest.raises(ValueError, match="distinct"):
        pool.step([a, a], {"input": x})


@pytest.mark.parametrize("which,batched", [("a_plain", True), ("a_plain_fixed", False)])
def test_pool_along_time_without_state_inputs(models, which, batched):
    """No state I/O: each slot keeps its recurrent state; a stream's output after t tokens
    equals ORT's on the stream's whole history so far."""
    model = models[which]
    pool = InferenceSession(model).pool(capacity=5)
    assert pool.batched == batched and "carried along time" in repr(pool)
    ort = sm.ort_session(model)
    rng = np.random.default_rng(13)
    ids = [pool.open() for _ in range(5)]
    history = {sid: np.zeros((1, 0), np.int64) for sid in ids}
    for step in range(12):
        chosen = [sid for sid in ids if rng.random() < 0.7] or ids[:1]
        tokens = rng.integers(0, 20, (len(chosen), 1)).astype(np.int64)
        got, = pool.step(chosen, {"tokens": tokens})
        for j, sid in enumerate(chosen):
            history[sid] = np.concatenate([history[sid], tokens[j:j + 1]], axis=1)
            want = ort.run(None, {"tokens": history[sid]})[0][:, -1:]
            np.testing.assert_allclose(got[j:j + 1], want, **TOL)
        if step == 6:
            saved = pool.export_state(ids[1])
            pool.close(ids[1])
            ids[1] = pool.import_state(saved)
            history[ids[1]] = history.pop(next(k for k in history if k not in ids))


def test_fast_stream_feeds_checked_after_the_first_steps(models):
    """Step feeds whose shape and dtype passed once skip the full check: any other feed is
    still checked in full (a clear ValueError), and the stream carries on matching ORT."""
    rng = np.random.default_rng(4)
    xs = [rng.standard_normal((1, 1, 10)).astype(np.float32) for _ in range(6)]
    zero = {"state": np.zeros((1, 2, 8, 2), np.float32)}
    expected, _ = author_loop(sm.ort_session(models["d"]), [{"x": x} for x in xs],
                              ["state"], ["stateN"], zero)
    stream = InferenceSession(models["d"]).stream()
    got = [stream.step({"x": xs[0]}), stream.step({"x": xs[1]})]
    assert "inside" in repr(stream)
    with pytest.raises(ValueError, match="'x'.*float"):
        stream.step({"x": xs[2].astype(np.float64)})
    with pytest.raises(ValueError, match="'x'.*shape"):
        stream.step({"x": np.zeros((1, 1, 11), np.float32)})
    with pytest.raises(ValueError, match="missing input 'x'"):
        stream.step({})
    with pytest.raises(ValueError, match="unknown input name 'y'"):
        stream.step({"y": xs[2]})
    with pytest.raises(ValueError, match="state"):
        stream.step({"x": xs[2], "state": zero["state"]})
    got.append(stream.step({"x": xs[2]}))
    got += [stream.step({"x": x}) for x in xs[3:]]
    for a, b in zip(got, expected):
        np.testing.assert_allclose(a[0], b[0], **TOL)


def test_absorbed_view_chains_match_the_chain_for_every_shape():
    """stream_plan.absorb_views: a chain of views merged into its reader gives the chain's
    result whether or not it is a plain reshape for the shape at hand (alternating shapes),
    and a chain whose intermediate value is an output stays as it is."""
    def view(fn, src, dst):
        def step(v):
            v[dst] = fn(v[src])
        step.view_of = src
        return step

    def reader(v):
        v[6] = v[5] * 2

    steps = [view(lambda x: x.T, 3, 4), view(lambda x: x.reshape(-1), 4, 5), reader]
    io = [([3], [4]), ([4], [5]), ([5], [6])]
    merged, at = absorb_views(steps, io, kept={6})
    assert len(merged) == 1 and at == [2]
    kept_mid, at_mid = absorb_views(steps, io, kept={4, 6})
    assert len(kept_mid) == 2 and at_mid == [0, 2]
    rng = np.random.default_rng(8)
    for shape in [(1, 3), (1, 3), (2, 3), (1, 3), (2, 3), (3, 1), (3, 1), (1, 3)]:
        x = rng.standard_normal(shape)
        v = [None] * 7
        v[3] = x
        merged[0](v)
        np.testing.assert_array_equal(v[6], 2 * x.T.reshape(-1))

"""State integrity of the whole-model streaming surface (SessionStream, SessionPool, the
compiled step, the Batcher): a failed call leaves the state exactly as it was, a rejected
state is never half written, a stream's batch is fixed once it has state, outputs never
share memory with feeds, with each other or with the carried state, a kept ``stream.step``
stays valid across ``reset()``, and the compiled step holds the arrays it reads while it
runs without the GIL. Every output is compared with ONNX Runtime stepped by hand (state
outputs fed back as inputs)."""
import re
import threading
import time

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper, numpy_helper

import session_models as sm
from session_models import AuthorLoop
from stream_checks import same
from rnnengine import Batcher, InferenceSession
from rnnengine.runtime.state_blob import pack_arrays, session_fingerprint

pytest.importorskip("onnxruntime")

TOL = dict(rtol=1e-4, atol=1e-4)


def _model(nodes, inputs, outputs, inits) -> bytes:
    graph = helper.make_graph(
        nodes, "g", [helper.make_tensor_value_info(n, t, s) for n, t, s in inputs],
        [helper.make_tensor_value_info(n, t, s) for n, t, s in outputs],
        [numpy_helper.from_array(v, k) for k, v in inits.items()])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    onnx.checker.check_model(model)
    return model.SerializeToString()


def lstm_pairs(I=8, H=8, batch="N", seed=0) -> bytes:
    """x [1, N, I], h0/c0 [1, N, H] -> LSTM -> Y [1, 1, N, H] (its own output), hn, cn."""
    rng = np.random.default_rng(seed)

    def u(*s):
        return rng.uniform(-0.3, 0.3, s).astype(np.float32)

    f = TensorProto.FLOAT
    return _model(
        [helper.make_node("LSTM", ["x", "W", "R", "B", "", "h0", "c0"], ["Y", "hn", "cn"],
                          hidden_size=H, name="lstm")],
        [("x", f, [1, batch, I]), ("h0", f, [1, batch, H]), ("c0", f, [1, batch, H])],
        [("Y", f, [1, 1, batch, H]), ("hn", f, [1, batch, H]), ("cn", f, [1, batch, H])],
        {"W": u(1, 4 * H, I), "R": u(1, 4 * H, H), "B": u(1, 8 * H)})


# -- the compiled step holds what it reads ------------------------------------------------

def test_compiled_step_holds_its_feeds_while_other_threads_replace_them():
    """Threads replace and delete the entries of the feed dict a compiled step was given
    while it runs without the GIL, and fill freshly allocated arrays of the same size with
    garbage (the allocator hands them the memory a dropped feed had): the step must read
    the array it was given, so every output matches ONNX Runtime."""
    I, H = 2048, 64                     # x is 8 KiB: the allocator reuses it, numpy does not
    model = lstm_pairs(I, H, batch=1)
    pairs = {"hn": "h0", "cn": "c0"}
    stream = InferenceSession(model).stream(state=pairs)
    ort = AuthorLoop(model, pairs, {n: np.zeros((1, 1, H), np.float32) for n in pairs.values()})

    def x_of(k):
        return (0.1 * np.random.default_rng(k).standard_normal((1, 1, I))).astype(np.float32)

    for k in range(3):
        same(stream.step({"x": x_of(k)}), ort.step({"x": x_of(k)}))
    assert stream.compiled, stream.not_compiled
    current = {"feeds": {}}
    stop = threading.Event()

    def vandal(seed):
        # replace x by a copy (or take it out and put a copy back): the array the step
        # was given loses its last reference, and the garbage allocated next takes its place
        rng = np.random.default_rng(seed)
        while not stop.is_set():
            feeds = current["feeds"]
            x = feeds.pop("x", None) if rng.random() < 0.5 else feeds.get("x")
            if x is not None:
                feeds["x"] = x.copy()
            del x
            junk = [np.full((1, 1, I), 7e2, np.float32) for _ in range(4)]
            del junk
            time.sleep(0)

    threads = [threading.Thread(target=vandal, args=(s,)) for s in range(2)]
    for t in threads:
        t.start()
    failed = 0
    try:
        for k in range(3, 1500):
            current["feeds"] = feeds = {"x": x_of(k)}     # the dict holds the only reference
            try:
                got = stream.step(feeds)
            except ValueError as e:        # a vandal had taken x out at that moment
                assert "missing input 'x'" in str(e)
                failed += 1
                continue
            same(got, ort.step({"x": x_of(k)}))
    finally:
        stop.set()
        for t in threads:
            t.join()
    assert failed < 1000
    assert stream.compiled


# -- graphs --------------------------------------------------------------------------------

def pair_graph(I=6, H=8, batch="N", shift=False, echo=False, pick=False, xecho=False,
               seed=1) -> bytes:
    """x [1, N, I], h0/c0 [1, N, H] -> LSTM -> Y and the state hn, cn. ``shift``: hn is
    Y_h + 0.5 (the state fed back is not the recurrent node's own: no fast path);
    ``echo``: a kept output ``h_echo`` = Identity(hn); ``pick``: ``G`` = Gather(Y, idx,
    axis 3) with idx [1] int64 fed with each step (an index out of range fails the step
    after the recurrent node ran); ``xecho``: ``x_echo`` = Identity(x)."""
    rng = np.random.default_rng(seed)

    def u(*s):
        return rng.uniform(-0.4, 0.4, s).astype(np.float32)

    f, i64 = TensorProto.FLOAT, TensorProto.INT64
    inits = {"W": u(1, 4 * H, I), "R": u(1, 4 * H, H), "B": u(1, 8 * H)}
    hn = "hn_raw" if shift else "hn"
    nodes = [helper.make_node("LSTM", ["x", "W", "R", "B", "", "h0", "c0"], ["Y", hn, "cn"],
                              hidden_size=H, name="lstm")]
    inputs = [("x", f, [1, batch, I]), ("h0", f, [1, batch, H]), ("c0", f, [1, batch, H])]
    outputs = [("Y", f, [1, 1, batch, H]), ("hn", f, [1, batch, H]), ("cn", f, [1, batch, H])]
    if shift:
        inits["half"] = np.array(0.5, np.float32)
        nodes.append(helper.make_node("Add", ["hn_raw", "half"], ["hn"]))
    if echo:
        nodes.append(helper.make_node("Identity", ["hn"], ["h_echo"]))
        outputs.append(("h_echo", f, [1, batch, H]))
    if pick:
        nodes.append(helper.make_node("Gather", ["Y", "idx"], ["G"], axis=3))
        inputs.append(("idx", i64, [1]))
        outputs.append(("G", f, [1, 1, batch, 1]))
    if xecho:
        nodes.append(helper.make_node("Identity", ["x"], ["x_echo"]))
        outputs.append(("x_echo", f, [1, batch, I]))
    return _model(nodes, inputs, outputs, inits)


PAIRS = {"hn": "h0", "cn": "c0"}


def zero_state(H=8, N=1):
    return {"h0": np.zeros((1, N, H), np.float32), "c0": np.zeros((1, N, H), np.float32)}


def time_graph(I=6, H=8, layers=2, seed=2) -> bytes:
    """No state inputs: x [T, N, I] -> ``layers`` LSTMs (H units each) -> Y [T, N, H] and
    G = Gather(Y, idx, axis 2), idx [1] int64 fed with each chunk."""
    rng = np.random.default_rng(seed)

    def u(*s):
        return rng.uniform(-0.4, 0.4, s).astype(np.float32)

    f, i64 = TensorProto.FLOAT, TensorProto.INT64
    inits, nodes, x = {"ax1": np.array([1], np.int64)}, [], "x"
    for k in range(layers):
        size = I if k == 0 else H
        inits.update({f"W{k}": u(1, 4 * H, size), f"R{k}": u(1, 4 * H, H),
                      f"B{k}": u(1, 8 * H)})
        nodes += [helper.make_node("LSTM", [x, f"W{k}", f"R{k}", f"B{k}"], [f"Y{k}"],
                                   hidden_size=H, name=f"lstm{k}"),
                  helper.make_node("Squeeze", [f"Y{k}", "ax1"], [f"y{k}"])]
        x = f"y{k}"
    nodes += [helper.make_node("Identity", [x], ["Y"]),
              helper.make_node("Gather", ["Y", "idx"], ["G"], axis=2)]
    return _model(nodes, [("x", f, ["T", "N", I]), ("idx", i64, [1])],
                  [("Y", f, ["T", "N", H]), ("G", f, ["T", "N", 1])], inits)


def xs(seed, n, shape):
    rng = np.random.default_rng(seed)
    return [(0.8 * rng.standard_normal(shape)).astype(np.float32) for _ in range(n)]


BAD = np.array([99], np.int64)          # Gather index out of range: fails after the LSTM ran
OK = np.array([3], np.int64)


def assert_state(got: dict, want: dict):
    assert set(got) == set(want)
    for name in want:
        np.testing.assert_allclose(got[name], want[name], **TOL)


# -- a kept stream.step stays valid; not_compiled says why ----------------------------------

def test_kept_step_method_survives_reset_and_not_compiled_says_why():
    model = lstm_pairs()
    stream = InferenceSession(model).stream(state=PAIRS)
    assert not stream.compiled
    assert isinstance(stream.not_compiled, str) and stream.not_compiled
    frames = xs(0, 12, (1, 1, 8))
    for x in frames[:4]:
        stream.step({"x": x})
    assert stream.compiled and stream.not_compiled is None
    kept = stream.step
    stream.reset()
    assert not stream.compiled and isinstance(stream.not_compiled, str)
    ort = AuthorLoop(model, PAIRS, zero_state())
    for x in frames:
        same(kept({"x": x}), ort.step({"x": x}))
        assert "step" not in vars(stream)           # no method rebound on the instance
    assert stream.compiled
    assert_state(stream.state, ort.state)


def test_not_compiled_is_a_reason_for_streams_that_never_compile():
    silero = InferenceSession(sm.SILERO).stream(feeds={"sr": np.array(16000, np.int64)})
    chunk = np.zeros((1, 512), np.float32)
    for _ in range(3):
        silero.step({"input": chunk})
    assert not silero.compiled and isinstance(silero.not_compiled, str) and silero.not_compiled
    timed = InferenceSession(time_graph()).stream()
    for x in xs(0, 3, (1, 1, 6)):
        timed.step({"x": x, "idx": OK})
    assert not timed.compiled and isinstance(timed.not_compiled, str) and timed.not_compiled


# -- outputs are the caller's own arrays ----------------------------------------------------

def _independent(outs, feeds, internal=()):
    for j, a in enumerate(outs):
        for b in outs[j + 1:]:
            assert not np.shares_memory(a, b)
        for f in feeds.values():
            assert not np.shares_memory(a, f)
        for s in internal:
            assert not np.shares_memory(a, s)


def test_run_outputs_share_no_memory_with_feeds_or_each_other():
    model = pair_graph(echo=True, xecho=True)
    sess, ort = InferenceSession(model), sm.ort_session(model)
    feeds = {"x": xs(0, 1, (1, 2, 6))[0], **zero_state(N=2)}
    feeds["h0"] += 0.25
    outs = sess.run(None, feeds)
    _independent(outs, feeds)
    same(outs, ort.run(None, feeds))


@pytest.mark.parametrize("shift", [False, True], ids=["fast", "general"])
def test_stream_outputs_are_not_its_state(shift):
    """``return h, h``: the kept output and the state output are one value; writing into
    what the step returned must not move the state."""
    model = pair_graph(shift=shift, echo=True, xecho=True)
    stream = InferenceSession(model).stream(state=PAIRS)
    ort = AuthorLoop(model, PAIRS, zero_state())
    for x in xs(1, 8, (1, 1, 6)):
        feeds = {"x": x}
        outs = stream.step(feeds)
        same(outs, ort.step({"x": x.copy()}))
        internal = [a for a in vars(stream)["_state"].values() if a is not None]
        _independent(outs, feeds, internal)
        for a in outs:
            a[...] = 1e3                                 # the caller owns what it got
    assert_state(stream.state, ort.state)


def test_compiled_and_pool_outputs_are_independent():
    model = lstm_pairs()
    stream = InferenceSession(model).stream(state=PAIRS)
    ort = AuthorLoop(model, PAIRS, zero_state())
    for x in xs(2, 6, (1, 1, 8)):
        outs = stream.step({"x": x})
        same(outs, ort.step({"x": x}))
        _independent(outs, {"x": x})
        for a in outs:
            a[...] = 1e3
    assert stream.compiled
    assert_state(stream.state, ort.state)
    model = pair_graph(echo=True, xecho=True)
    pool = InferenceSession(model).pool(4, state=PAIRS)
    ids = [pool.open(), pool.open()]
    ort = AuthorLoop(model, PAIRS, zero_state(N=2))
    for x in xs(3, 5, (1, 2, 6)):
        outs = pool.step(ids, {"x": x})
        same(outs, ort.step({"x": x.copy()}))
        _independent(outs, {"x": x}, list(pool._state.values()))
        for a in outs:
            a[...] = 1e3
    for k, sid in enumerate(ids):
        assert_state(pool.state(sid), {n: a[:, k:k + 1] for n, a in ort.state.items()})


# -- a failed step leaves the state as it was ------------------------------------------------

@pytest.mark.parametrize("shift", [False, True], ids=["fast", "general"])
def test_failed_stream_step_leaves_the_state(shift):
    model = pair_graph(shift=shift, pick=True)
    stream = InferenceSession(model).stream(state=PAIRS)
    ort = AuthorLoop(model, PAIRS, zero_state())
    for k, x in enumerate(xs(4, 24, (1, 1, 6))):
        if k % 3 == 2:
            before = stream.state
            with pytest.raises(Exception, match="(?i)gather|index|range"):
                stream.step({"x": x, "idx": BAD})
            for name, value in before.items():
                np.testing.assert_array_equal(stream.state[name], value)
            continue
        same(stream.step({"x": x, "idx": OK}), ort.step({"x": x, "idx": OK}))
    assert_state(stream.state, ort.state)


def ort_time(model, chunks, idx):
    """ONNX Runtime on the whole sequence so far: the last chunk's outputs."""
    full = np.concatenate(chunks, axis=0)
    outs = sm.ort_session(model).run(None, {"x": full, "idx": idx})
    T = chunks[-1].shape[0]
    return [o[-T:] for o in outs]


def test_failed_time_axis_stream_step_leaves_the_state():
    model = time_graph()
    stream = InferenceSession(model).stream()
    done = []
    for k, x in enumerate(xs(5, 12, (2, 1, 6))):
        if k % 3 == 1:
            before = stream.state
            with pytest.raises(Exception, match="(?i)gather|index|range"):
                stream.step({"x": x, "idx": BAD})
            assert_state(stream.state, before)
            continue
        done.append(x)
        same(stream.step({"x": x, "idx": OK}), ort_time(model, done, OK))


def test_failed_time_axis_pool_step_leaves_the_state():
    model = time_graph()
    pool = InferenceSession(model).pool(4)
    ids = [pool.open(), pool.open()]
    done = []
    for k, x in enumerate(xs(6, 9, (1, 2, 6))):
        if k % 3 == 1:
            before = [pool.state(s) for s in ids]
            with pytest.raises(Exception, match="(?i)gather|index|range"):
                pool.step(ids, {"x": x, "idx": BAD})
            for sid, state in zip(ids, before):
                assert_state(pool.state(sid), state)
            continue
        done.append(x)
        same(pool.step(ids, {"x": x, "idx": OK}), ort_time(model, done, OK))


def test_fixed_shape_pool_step_is_all_or_nothing():
    """Streams stepped one by one: the third fails, so none of them moves."""
    model = pair_graph(batch=1, pick=True)
    pool = InferenceSession(model).pool(4, state=PAIRS)
    assert not pool.batched
    ids = [pool.open() for _ in range(3)]
    loops = [AuthorLoop(model, PAIRS, zero_state()) for _ in ids]
    frames = xs(7, 8, (3, 1, 6))              # the streams stacked on x's first axis
    for k, x in enumerate(frames):
        if k % 3 == 1:
            before = [pool.state(s) for s in ids]
            with pytest.raises(Exception, match="(?i)gather|index|range"):
                pool.step(ids, {"x": x, "idx": np.array([0, 1, 99], np.int64)})
            for sid, state in zip(ids, before):
                assert_state(pool.state(sid), state)
            continue
        idx = np.array([0, 1, 2], np.int64)
        got = pool.step(ids, {"x": x, "idx": idx})
        want = [l.step({"x": x[j:j + 1], "idx": idx[j:j + 1]}) for j, l in enumerate(loops)]
        same(got, [np.concatenate([w[i] for w in want], axis=0) for i in range(2)])
    for sid, loop in zip(ids, loops):
        assert_state(pool.state(sid), loop.state)


def test_batcher_failed_step_leaves_only_that_stream_as_it_was():
    model = time_graph()
    with Batcher(InferenceSession(model), max_batch=4, max_delay_us=20000) as batcher:
        sids = [batcher.open(), batcher.open()]
        done = {s: [] for s in sids}
        for k, x in enumerate(xs(8, 8, (1, 1, 6))):
            bad = k % 3 == 1
            results = {}

            def go(sid, idx):
                try:
                    results[sid] = batcher.step(sid, {"x": x, "idx": idx})
                except Exception as e:        # noqa: BLE001 (checked below)
                    results[sid] = e

            threads = [threading.Thread(target=go, args=(s, BAD if bad and s == sids[0]
                                                          else OK)) for s in sids]
            for t in threads:
                t.start()
            for t in threads:
                t.join()
            for sid in sids:
                if bad and sid == sids[0]:
                    assert isinstance(results[sid], Exception)
                    continue
                done[sid].append(x)
                same(results[sid], ort_time(model, done[sid], OK))


# -- a stream's batch is fixed once it has state -------------------------------------------

def test_feed_of_another_batch_is_refused_by_a_stream_with_state():
    model = pair_graph()
    for compiled in (False, True):
        stream = InferenceSession(model).stream(state=PAIRS)
        ort = AuthorLoop(model, PAIRS, zero_state())
        frames = xs(9, 8, (1, 1, 6))
        for x in frames[:(4 if compiled else 1)]:
            same(stream.step({"x": x}), ort.step({"x": x}))
        assert stream.compiled == compiled
        before = stream.state
        with pytest.raises(ValueError, match="batch"):
            stream.step({"x": xs(10, 1, (1, 3, 6))[0]})
        assert_state(stream.state, before)
        for x in frames[4:]:
            same(stream.step({"x": x}), ort.step({"x": x}))
        stream.reset()                               # a new batch after reset is fine
        ort = AuthorLoop(model, PAIRS, zero_state(N=3))
        for x in xs(11, 3, (1, 3, 6)):
            same(stream.step({"x": x}), ort.step({"x": x}))


def test_state_of_another_batch_is_refused():
    model = pair_graph()
    sess = InferenceSession(model)
    wide = sess.stream(state=PAIRS)
    wide.step({"x": xs(12, 1, (1, 3, 6))[0]})
    blob3 = wide.export_state()
    stream = sess.stream(state=PAIRS)
    ort = AuthorLoop(model, PAIRS, zero_state())
    frames = xs(13, 6, (1, 1, 6))
    for x in frames[:3]:
        same(stream.step({"x": x}), ort.step({"x": x}))
    before = stream.state
    with pytest.raises(ValueError, match="batch"):
        stream.import_state(blob3)
    with pytest.raises(ValueError, match="batch"):
        stream.state = wide.state
    assert_state(stream.state, before)
    for x in frames[3:]:
        same(stream.step({"x": x}), ort.step({"x": x}))
    # a time-axis stream
    tmodel = time_graph()
    twide = InferenceSession(tmodel).stream()
    twide.step({"x": xs(14, 1, (1, 3, 6))[0], "idx": OK})
    timed = InferenceSession(tmodel).stream()
    done = xs(15, 2, (1, 1, 6))
    for k in range(2):
        timed.step({"x": done[k], "idx": OK})
    before = timed.state
    with pytest.raises(ValueError, match="batch"):
        timed.import_state(twide.export_state())
    assert_state(timed.state, before)
    x = xs(16, 1, (1, 1, 6))[0]
    same(timed.step({"x": x, "idx": OK}), ort_time(tmodel, done + [x], OK))


def test_batcher_resume_refuses_state_of_another_batch():
    model = pair_graph()
    sess = InferenceSession(model)
    wide = sess.stream(state=PAIRS)
    wide.step({"x": xs(17, 1, (1, 3, 6))[0]})
    with Batcher(sess, max_batch=4, max_delay_us=100) as batcher:
        with pytest.raises(ValueError, match="batch|shape"):
            batcher.resume(wide.export_state())
        sid = batcher.open()
        ort = AuthorLoop(model, PAIRS, zero_state())
        for x in xs(18, 3, (1, 1, 6)):
            same(batcher.step(sid, {"x": x}), ort.step({"x": x}))


# -- a rejected state changes nothing --------------------------------------------------------

def test_rejected_time_axis_import_changes_nothing():
    model = time_graph()
    sess = InferenceSession(model)
    stream = sess.stream()
    done = xs(19, 3, (1, 1, 6))
    for x in done:
        stream.step({"x": x, "idx": OK})
    before = stream.state
    blob_state = {k: v + 1.0 for k, v in before.items()}
    blob_state["lstm1/h"] = np.zeros((1, 1, 5), np.float32)     # the second node's: wrong H
    with pytest.raises(ValueError, match=re.escape("state h must have shape (1, 1, 8); got (1, 1, 5)")):
        stream.import_state(pack_arrays(blob_state, session_fingerprint(sess)))
    assert_state(stream.state, before)
    x = xs(20, 1, (1, 1, 6))[0]
    same(stream.step({"x": x, "idx": OK}), ort_time(model, done + [x], OK))


def test_rejected_pool_set_state_changes_nothing():
    model = pair_graph(batch=1)
    pool = InferenceSession(model).pool(2, state=PAIRS)
    sid = pool.open()
    pool.step([sid], {"x": xs(21, 1, (1, 1, 6))[0]})
    before = pool.state(sid)
    with pytest.raises(ValueError, match=re.escape("input 'c0' must have shape (1, 1, 8); got (1, 1, 5)")):
        pool.set_state(sid, {"h0": before["h0"] + 1, "c0": np.zeros((1, 1, 5), np.float32)})
    assert_state(pool.state(sid), before)
    tpool = InferenceSession(time_graph()).pool(2)
    sid = tpool.open()
    tpool.step([sid], {"x": xs(22, 1, (1, 1, 6))[0], "idx": OK})
    before = tpool.state(sid)
    bad = {k: v + 1 for k, v in before.items()}
    bad["lstm1/c"] = np.zeros((1, 1, 5), np.float32)
    with pytest.raises(ValueError, match=re.escape("state 'lstm1/c' of one stream must have shape "
                                                   "(1, 1, 8); got (1, 1, 5)")):
        tpool.set_state(sid, bad)
    assert_state(tpool.state(sid), before)


def test_silero_state_of_another_batch_is_refused_and_outputs_are_its_own():
    """The real Silero VAD (state pairs, whole graph each step): a blob of batch 2 is
    refused by a batch-1 stream that has state, which carries on exactly as ORT; what a
    step returns can be overwritten without touching the state."""
    sr = np.array(16000, np.int64)
    sess = InferenceSession(sm.SILERO)
    pairs = {"stateN": "state"}
    wide = sess.stream(feeds={"sr": sr})
    wide.step({"input": xs(23, 1, (2, 512))[0] * 0.1})
    stream = sess.stream(feeds={"sr": sr})
    ort = AuthorLoop(sm.SILERO, pairs, {"state": np.zeros((2, 1, 128), np.float32)})
    chunks = [c * 0.1 for c in xs(24, 8, (1, 512))]
    for k, chunk in enumerate(chunks):
        if k == 3:
            before = stream.state
            with pytest.raises(ValueError, match="batch"):
                stream.import_state(wide.export_state())
            assert_state(stream.state, before)
        outs = stream.step({"input": chunk})
        same(outs, ort.step({"input": chunk, "sr": sr}))
        _independent(outs, {"input": chunk, "sr": sr}, [stream._state["state"]])
        outs[0][...] = 1e3
    assert_state(stream.state, ort.state)

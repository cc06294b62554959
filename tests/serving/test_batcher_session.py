"""rnnengine.Batcher over an InferenceSession: steps of many streams from
threads and asyncio tasks give what ONNX Runtime loops written the authors' way give (state
outputs fed back by hand; 1e-4), for a PyTorch-exported GRU with a batch dimension, an LSTM
export fixed at batch 1 (streams stepped one by one) and the shipped Silero VAD with ``sr``
fixed once. Bad feeds fail only their own step; eviction frees pool slots and resumes
exactly; state moves between Batchers and SessionStreams; close drains."""
from __future__ import annotations

import asyncio
import time
from pathlib import Path

import numpy as np
import pytest

import rnnengine
import session_models as sm
from test_batcher import TIMEOUT, relay, run_async, run_threads
from stream_checks import author_loop, silero_chunks
import conftest

pytest.importorskip("onnxruntime")

ROOT = Path(conftest.ROOT)
TOL = dict(rtol=1e-4, atol=1e-4)
SR = np.array(16000, np.int64)
SILERO_ZERO = {"state": np.zeros((2, 1, 128), np.float32)}
GRU_ZERO = {"h0": np.zeros((1, 1, 16), np.float32)}
LSTM_ZERO = {"h0": np.zeros((2, 1, 16), np.float32), "c0": np.zeros((2, 1, 16), np.float32)}


@pytest.fixture(scope="module")
def gru():
    """x [N, T, 10], h0 [1, N, 16] -> y [N, T, 1], hn: a batch dimension (one graph pass)."""
    return sm.frontend_gru(False, seed=1)


@pytest.fixture(scope="module")
def lstm_tokens():
    """tokens [N, T] int64, h0, c0 [2, N, 16] -> logp, hn, cn (batch dimension)."""
    return sm.embedding_lstm(True, seed=2)


@pytest.fixture(scope="module")
def lstm_fixed():
    """The same LSTM exported with every shape fixed at batch 1: streams step one by one."""
    return sm.embedding_lstm(True, seed=3, dynamic=False)


def ort_expected(model, steps, pairs, zero, fixed=None):
    """Per stream, the outputs of an ONNX Runtime loop over its steps' feeds."""
    ort = sm.ort_session(model)
    return [author_loop(ort, [{**f, **(fixed or {})} for f in feeds], list(pairs.values()),
                        list(pairs), zero)[0] for feeds in steps]


def assert_outputs(got, want):
    """got/want: per stream, per step, the list of non-state outputs."""
    assert len(got) == len(want)
    for s, (g_stream, w_stream) in enumerate(zip(got, want)):
        assert len(g_stream) == len(w_stream), f"stream {s}"
        for t, (g, w) in enumerate(zip(g_stream, w_stream)):
            assert len(g) == len(w)
            for a, b in zip(g, w):
                assert a.shape == b.shape and a.dtype == b.dtype, (s, t, a.shape, b.shape)
                np.testing.assert_allclose(a, b, **TOL, err_msg=f"stream {s} step {t}")


def gru_steps(streams, steps, seed):
    rng = np.random.default_rng(seed)
    return [[{"x": rng.standard_normal((1, 1, 10)).astype(np.float32)} for _ in range(steps)]
            for _ in range(streams)]


def silero_steps(streams, steps, seed):
    rng = np.random.default_rng(seed)
    base = silero_chunks(rng, steps)
    return [[{"input": c + np.float32(0.02) * rng.standard_normal(c.shape).astype(np.float32)}
             for c in base] for _ in range(streams)]


def token_steps(streams, steps, seed, width=1):
    rng = np.random.default_rng(seed)
    return [[{"tokens": rng.integers(0, 20, (1, width)).astype(np.int64)} for _ in range(steps)]
            for _ in range(streams)]


def threads_stepping(batcher, steps, threads):
    """``threads`` threads, thread k stepping streams k, k + threads, ... in turn."""
    ids = [batcher.open() for _ in steps]
    got = [[None] * len(s) for s in steps]

    def worker(first):
        for t in range(len(steps[0])):
            for s in range(first, len(steps), threads):
                got[s][t] = batcher.step(ids[s], steps[s][t])

    run_threads([lambda k=k: worker(k) for k in range(threads)])
    assert [batcher.steps(sid) for sid in ids] == [len(steps[0])] * len(steps)
    return got


# -- exactness ------------------------------------------------------------------------------

def test_threads_step_64_gru_streams_like_onnxruntime(gru):
    steps = gru_steps(64, 8, seed=0)
    sess = rnnengine.InferenceSession(gru)
    with rnnengine.Batcher(sess, max_delay_us=2000) as batcher:
        assert batcher._pool.pool.batched
        got = threads_stepping(batcher, steps, threads=8)
        stats = batcher.stats
    assert stats["largest_batch"] > 1, stats          # one graph pass served several streams
    assert stats["steps"] == 64 * 8
    assert_outputs(got, ort_expected(gru, steps, {"hn": "h0"}, GRU_ZERO))


def test_asyncio_tasks_step_32_silero_streams_like_onnxruntime():
    steps = silero_steps(32, 6, seed=1)
    sess = rnnengine.InferenceSession(sm.SILERO)
    got = [[None] * 6 for _ in range(32)]

    async def main(batcher):
        ids = [batcher.open() for _ in range(32)]

        async def task(s):
            for t in range(6):
                got[s][t] = await batcher.step_async(ids[s], steps[s][t])

        await asyncio.gather(*(task(s) for s in range(32)))

    with rnnengine.Batcher(sess, feeds={"sr": SR}, max_delay_us=5000) as batcher:
        run_async(main(batcher))
        stats = batcher.stats
    assert stats["largest_batch"] > 1, stats
    assert_outputs(got, ort_expected(sm.SILERO, steps, {"stateN": "state"}, SILERO_ZERO,
                                     fixed={"sr": SR}))


def test_graph_fixed_at_batch_1_is_stepped_stream_by_stream(lstm_fixed):
    steps = token_steps(16, 5, seed=2, width=3)
    sess = rnnengine.InferenceSession(lstm_fixed)
    with rnnengine.Batcher(sess, max_delay_us=1000) as batcher:
        assert not batcher._pool.pool.batched
        got = threads_stepping(batcher, steps, threads=8)
    assert_outputs(got, ort_expected(lstm_fixed, steps, {"hn": "h0", "cn": "c0"}, LSTM_ZERO))


def test_threads_and_tasks_share_a_silero_batcher_and_match_session_streams():
    """Threads and an event loop together; the reference here is sess.stream() itself
    (whose own tests hold it to ONNX Runtime) so both session paths agree."""
    steps = silero_steps(8, 5, seed=3)
    sess = rnnengine.InferenceSession(sm.SILERO)
    got = [[None] * 5 for _ in range(8)]
    with rnnengine.Batcher(sess, feeds={"sr": SR}, max_delay_us=1000) as batcher:
        ids = [batcher.open() for _ in range(8)]

        def thread(s):
            for t in range(5):
                got[s][t] = batcher.step(ids[s], steps[s][t])

        async def tasks():
            async def one(s):
                for t in range(5):
                    got[s][t] = await batcher.step_async(ids[s], steps[s][t])
            await asyncio.gather(*(one(s) for s in range(4, 8)))

        run_threads([lambda s=s: thread(s) for s in range(4)] + [lambda: run_async(tasks())])
    want = []
    for feeds in steps:
        stream = sess.stream(feeds={"sr": SR})
        want.append([stream.step(f) for f in feeds])
    assert_outputs(got, want)


def test_a_fixed_input_given_with_each_step_instead_of_once():
    """Without feeds=, Silero's sr is a step input like any other: steps with the same sr
    share a pass, and the outputs are the same ONNX Runtime loop's."""
    steps = [[{**f, "sr": SR} for f in stream] for stream in silero_steps(8, 3, seed=14)]
    with rnnengine.Batcher(rnnengine.InferenceSession(sm.SILERO), max_delay_us=2000) as batcher:
        got = threads_stepping(batcher, steps, threads=8)
        assert batcher.stats["largest_batch"] > 1
    assert_outputs(got, ort_expected(sm.SILERO, steps, {"stateN": "state"}, SILERO_ZERO))


def test_graph_without_state_inputs_streams_along_time():
    """No state I/O: the recurrent nodes' state is the stream's; after t tokens a stream's
    output is ONNX Runtime's on its whole history."""
    plain = sm.embedding_lstm(False, seed=2)
    steps = token_steps(6, 5, seed=4)
    with rnnengine.Batcher(rnnengine.InferenceSession(plain), max_delay_us=1000) as batcher:
        got = threads_stepping(batcher, steps, threads=3)
    ort = sm.ort_session(plain)
    for s, feeds in enumerate(steps):
        history = np.concatenate([f["tokens"] for f in feeds], axis=1)
        for t in range(5):
            want = ort.run(None, {"tokens": history[:, :t + 1]})[0][:, -1:]
            np.testing.assert_allclose(got[s][t][0], want, **TOL)


# -- guarantees -----------------------------------------------------------------------------

def test_steps_of_one_stream_apply_in_call_order_across_threads(gru):
    """Each step of one stream comes from a different thread (a baton), other streams keep
    the batches busy: its outputs are its ONNX Runtime loop's, in order."""
    steps = gru_steps(1, 16, seed=5)
    with rnnengine.Batcher(rnnengine.InferenceSession(gru), max_delay_us=300) as batcher:
        got = relay(batcher, steps[0], gru_steps(5, 100, seed=6))
    assert_outputs([got], ort_expected(gru, steps, {"hn": "h0"}, GRU_ZERO))


def one_batch(batcher, ids, feeds):
    """Step every stream once from its own thread; the batcher's long delay and ``ids`` being
    all its streams make the steps one batch. -> per stream: outputs or the error raised."""
    results = [None] * len(ids)

    def step(j):
        try:
            results[j] = batcher.step(ids[j], feeds[j])
        except ValueError as error:
            results[j] = error

    run_threads([lambda j=j: step(j) for j in range(len(ids))])
    return results


@pytest.mark.parametrize("which", ["silero", "tokens"])
def test_a_feed_the_graph_rejects_fails_only_its_own_step(which, lstm_tokens):
    """One batch holds good steps and a bad one that passes the input checks but not the
    graph (Silero: 100 samples, too short for its STFT; tokens: an id out of the vocabulary,
    same shape as the good ones, so the shared graph pass fails and is retried per stream).
    Only the bad step raises, a ValueError naming the node; its stream is left as it was."""
    if which == "silero":
        model, pairs, zero, fixed = sm.SILERO, {"stateN": "state"}, SILERO_ZERO, {"sr": SR}
        steps = silero_steps(6, 3, seed=7)
        bad = {"input": np.zeros((1, 100), np.float32)}
        node = "Conv"
    else:
        model, pairs, zero, fixed = lstm_tokens, {"hn": "h0", "cn": "c0"}, LSTM_ZERO, None
        steps = token_steps(6, 3, seed=8)
        bad = {"tokens": np.array([[25]], np.int64)}
        node = "Gather"
    want = ort_expected(model, steps, pairs, zero, fixed)
    sess = rnnengine.InferenceSession(model)
    with rnnengine.Batcher(sess, feeds=fixed, max_delay_us=30_000_000) as batcher:
        ids = [batcher.open() for _ in range(6)]
        first = one_batch(batcher, ids, [s[0] for s in steps])
        second = one_batch(batcher, ids, [bad if j == 2 else s[1] for j, s in enumerate(steps)])
        assert batcher.stats["batches"] == 2 and batcher.stats["largest_batch"] == 6
        assert isinstance(second[2], ValueError) and node in str(second[2])
        assert batcher.steps(ids[2]) == 1
        for j in (0, 1, 3, 4, 5):                  # alone, stream 2 steps without a wait
            batcher.close(ids[j])
        second[2] = batcher.step(ids[2], steps[2][1])       # it carries on unharmed
        third = batcher.step(ids[2], steps[2][2])
    assert_outputs([[a, b] for a, b in zip(first, second)], [w[:2] for w in want])
    assert_outputs([[third]], [want[2][2:]])


def test_bad_feeds_raise_clear_errors_in_the_callers_thread(gru):
    sess = rnnengine.InferenceSession(sm.SILERO)
    x = np.zeros((1, 512), np.float32)
    with rnnengine.Batcher(sess, feeds={"sr": SR}) as batcher:
        sid = batcher.open()
        cases = [
            ({"input": np.zeros((2, 512), np.float32)},
             r"input 'input' is one stream's step: its axis 0 .* must be 1; got shape \(2, 512\)"),
            ({"input": x.astype(np.float64)}, r"input 'input' must be tensor\(float\)"),
            ({"input": x[0]}, r"input 'input' must have shape \(batch, sequence\); got \(512,\)"),
            ({}, r"missing input 'input' \(tensor\(float\)\); each step feeds \['input'\]"),
            ({"input": x, "nope": x}, r"unknown input name 'nope'; the step inputs are"),
            ({"input": x, "state": SILERO_ZERO["state"]},
             "input 'state' is state the Batcher carries"),
        ]
        for feeds, message in cases:
            with pytest.raises(ValueError, match=message):
                batcher.step(sid, feeds)
        with pytest.raises(TypeError, match="feeds must be a dict"):
            batcher.step(sid, x)
        assert batcher.steps(sid) == 0 and batcher.stats["batches"] == 0   # nothing queued
        with pytest.raises(ValueError, match=r"the state bytes hold \['h0'\]; this session's "
                                             r"streams carry \['state'\]"):
            batcher.resume(_gru_blob(gru))
        with pytest.raises(ValueError, match="wrong magic"):
            batcher.resume(b"not a state at all")
        assert len(batcher) == 1
    with pytest.raises(ValueError, match="unknown input name 'rate'"):
        rnnengine.Batcher(sess, feeds={"rate": SR})
    with pytest.raises(ValueError, match="'out' is not an output"):
        rnnengine.Batcher(sess, state={"out": "state"})
    model = rnnengine.Model([rnnengine.Layer.from_onnx(
        "gru", np.zeros((1, 6, 2), np.float32), np.zeros((1, 6, 2), np.float32))])
    with pytest.raises(TypeError, match="state= and feeds= are for a Batcher over an "
                                        "InferenceSession"):
        rnnengine.Batcher(model, feeds={"sr": SR})


def _gru_blob(gru) -> bytes:
    stream = rnnengine.InferenceSession(gru).stream()
    stream.step(gru_steps(1, 1, seed=9)[0][0])
    return stream.export_state()


def test_idle_streams_free_their_slots_and_resume_exactly(gru):
    """40 streams grow the pool from max_batch (8) slots to 64; evicted, they hold no slot
    and the pool shrinks back to 8; stepped again they resume where they were."""
    steps = gru_steps(40, 6, seed=10)
    want = ort_expected(gru, steps, {"hn": "h0"}, GRU_ZERO)
    got = [[None] * 6 for _ in range(40)]
    sess = rnnengine.InferenceSession(gru)
    with rnnengine.Batcher(sess, max_batch=8, idle_seconds=1.0, max_delay_us=100) as batcher:
        assert batcher.stats["slots"] == 8
        ids = [batcher.open() for _ in range(40)]
        for t in range(3):
            for s in range(40):
                got[s][t] = batcher.step(ids[s], steps[s][t])
        grown = batcher.stats
        deadline = time.monotonic() + TIMEOUT
        while batcher.stats["evictions"] < 40 and time.monotonic() < deadline:
            time.sleep(0.02)
        evicted = batcher.stats
        blob = batcher.export_state(ids[0])                  # works while evicted
        for t in range(3, 6):
            for s in range(40):
                got[s][t] = batcher.step(ids[s], steps[s][t])
        resumed = batcher.stats
    assert grown["resident"] == 40 and grown["slots"] == 64, grown
    assert evicted["evictions"] == 40 and evicted["resident"] == 0, evicted
    assert evicted["slots"] == 8, evicted
    assert resumed["resumes"] == 40 and resumed["resident"] == 40, resumed
    assert_outputs(got, want)
    stream = sess.stream()                                    # the blob is a stream's state
    stream.import_state(blob)
    assert_outputs([[stream.step(steps[0][3])]], [[want[0][3]]])


def test_state_moves_between_batchers_and_session_streams():
    """A Silero stream: 3 steps in one Batcher, 3 in another Batcher of the same session,
    3 in a plain SessionStream, 3 in a Batcher again: one uninterrupted ONNX Runtime loop."""
    steps = silero_steps(1, 12, seed=11)
    want = ort_expected(sm.SILERO, steps, {"stateN": "state"}, SILERO_ZERO, {"sr": SR})
    sess = rnnengine.InferenceSession(sm.SILERO)
    got = []
    with rnnengine.Batcher(sess, feeds={"sr": SR}) as first, \
            rnnengine.Batcher(sess, feeds={"sr": SR}) as second:
        sid = first.open()
        got += [first.step(sid, f) for f in steps[0][:3]]
        moved = second.resume(first.export_state(sid))
        first.close(sid)
        got += [second.step(moved, f) for f in steps[0][3:6]]
        stream = sess.stream(feeds={"sr": SR})
        stream.import_state(second.export_state(moved))
        got += [stream.step(f) for f in steps[0][6:9]]
        back = first.resume(stream.export_state())
        got += [first.step(back, f) for f in steps[0][9:]]
        assert first.steps(back) == 3
    assert_outputs([got], want)


def test_close_drains_every_pending_silero_step():
    """close() while 12 threads have steps queued behind a minute-long delay: each runs and
    gets its right output; each thread's next step gets a clear error; nothing hangs."""
    steps = silero_steps(12, 1, seed=12)
    want = ort_expected(sm.SILERO, steps, {"stateN": "state"}, SILERO_ZERO, {"sr": SR})
    batcher = rnnengine.Batcher(rnnengine.InferenceSession(sm.SILERO), feeds={"sr": SR},
                                max_delay_us=60_000_000)
    ids = [batcher.open() for _ in range(13)]        # one never steps: the batch never fills
    got, refused = [None] * 12, []

    def thread(s):
        got[s] = [batcher.step(ids[s], steps[s][0])]
        try:
            batcher.step(ids[s], steps[s][0])
        except RuntimeError as error:
            refused.append(str(error))

    def closer():
        deadline = time.monotonic() + TIMEOUT
        while len(batcher._queue) < 12 and time.monotonic() < deadline:
            time.sleep(0.002)
        assert len(batcher._queue) == 12 and got == [None] * 12
        batcher.close()

    run_threads([lambda s=s: thread(s) for s in range(12)] + [closer])
    assert refused == ["the Batcher is closed"] * 12
    assert_outputs(got, want)


def test_readme_batcher_over_a_session_runs_as_written(tmp_path, monkeypatch):
    """The serving guide's "Over a whole model" snippet (docs/serving.md), run from a
    directory that sees tests/data, gives ONNX Runtime's probability for the chunk it makes,
    and state bytes a SessionStream continues from."""
    text = (ROOT / "docs" / "serving.md").read_text()
    start = text.index("## Over a whole model (InferenceSession)")
    code = text[start:].split("```python\n", 1)[1].split("```", 1)[0]
    (tmp_path / "tests").symlink_to(ROOT / "tests")
    monkeypatch.chdir(tmp_path)
    namespace = {"np": np, "rnnengine": rnnengine}
    exec(compile(code, "docs/serving.md", "exec"), namespace)
    chunk = namespace["chunk"]
    want, final = author_loop(sm.ort_session(sm.SILERO), [{"input": chunk, "sr": SR}],
                              ["state"], ["stateN"], SILERO_ZERO)
    assert_outputs([[[namespace["prob"]]]], [want])
    stream = rnnengine.InferenceSession(sm.SILERO).stream(feeds={"sr": SR})
    stream.import_state(namespace["data"])
    np.testing.assert_allclose(stream.state["state"], final["state"], **TOL)


# -- stress (also run under tools/sanitize.sh) ----------------------------------------------

def test_thread_stress_session_streams_churn_through_a_resizing_pool(gru):
    """8 threads churn through GRU streams: open, step, export, resume, close at random,
    with idle eviction every few ms and a pool that starts at 4 slots (so it grows and
    shrinks under them); every stream's outputs are its ONNX Runtime loop's."""
    ort = sm.ort_session(gru)
    sess = rnnengine.InferenceSession(gru)

    def churn(seed):
        rng = np.random.default_rng(200 + seed)
        for k in range(4):
            steps = gru_steps(1, int(rng.integers(4, 16)), seed=300 + seed * 10 + k)
            sid = batcher.open()
            got = []
            for feeds in steps[0]:
                if rng.random() < 0.15:
                    resumed = batcher.resume(batcher.export_state(sid))
                    batcher.close(sid)
                    sid = resumed
                elif rng.random() < 0.1:
                    time.sleep(0.02)              # idle long enough to be evicted
                got.append(batcher.step(sid, feeds))
            batcher.close(sid)
            want = author_loop(ort, steps[0], ["h0"], ["hn"], GRU_ZERO)[0]
            assert_outputs([got], [want])

    with rnnengine.Batcher(sess, max_batch=4, max_delay_us=200, max_streams=16,
                           idle_seconds=0.005) as batcher:
        run_threads([lambda s=s: churn(s) for s in range(8)], timeout=4 * TIMEOUT)
        stats = batcher.stats
    assert len(batcher) == 0 and stats["resident"] == 0 and stats["slots"] == 4, stats
    assert stats["largest_batch"] > 1 and stats["resumes"] > 0, stats

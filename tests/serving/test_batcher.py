"""rnnengine.Batcher: steps from many threads and asyncio tasks give exactly what lone batch-1
streams give (and one stream what PyTorch's nn.LSTM gives), and each guarantee of
docs/serving.md holds: per-stream order, same-stream concurrency error, full batcher, drain on
close, cancellation, idle eviction and resume. Every wait is bounded."""
from __future__ import annotations

import asyncio
import threading
import time

import numpy as np
import pytest
import torch

import rnnengine
from torch_reference import assert_close, torch_run

I, H, LAYERS = 8, 32, 2
TIMEOUT = 60           # seconds any thread or event loop in these tests may take


@pytest.fixture(scope="module")
def torch_lstm():
    torch.manual_seed(0)
    return torch.nn.LSTM(I, H, num_layers=LAYERS)


@pytest.fixture(scope="module")
def model(torch_lstm, tmp_path_factory):
    """The engine model of ``torch_lstm``'s random weights, through a PyTorch state_dict."""
    path = tmp_path_factory.mktemp("batcher") / "lstm.npz"
    np.savez(path, **{k: v.detach().numpy() for k, v in torch_lstm.state_dict().items()})
    return rnnengine.load(path)


def inputs(streams, steps, seed=0):
    return np.random.default_rng(seed).standard_normal((streams, steps, I)).astype(np.float32)


def lone(model, xs):
    """What a lone ``model.stream(batch=1)`` gives for each stream's inputs, step by step."""
    out = np.empty((len(xs), xs.shape[1], H), np.float32)
    for s, seq in enumerate(xs):
        stream = model.stream(batch=1)
        for t, x in enumerate(seq):
            out[s, t] = stream.step(x)
    return out


def run_threads(targets, timeout=TIMEOUT):
    """Run each callable in its own thread; re-raise the first error; fail on a hang."""
    errors = []

    def guarded(fn):
        try:
            fn()
        except BaseException as error:   # noqa: BLE001 (re-raised in the test thread)
            errors.append(error)

    threads = [threading.Thread(target=guarded, args=(fn,), daemon=True) for fn in targets]
    for t in threads:
        t.start()
    deadline = time.monotonic() + timeout
    for t in threads:
        t.join(max(0.0, deadline - time.monotonic()))
    assert not any(t.is_alive() for t in threads), "a thread hung"
    if errors:
        raise errors[0]


def run_async(coro, timeout=TIMEOUT):
    return asyncio.run(asyncio.wait_for(coro, timeout))


class GatedStep:
    """Replaces a batcher's pool step: each batch waits at ``release`` until the test lets it
    go, after announcing itself on ``entered``; so a test knows a step is in flight."""

    def __init__(self, batcher):
        self.real = batcher._pool.step
        self.entered = threading.Event()
        self.release = threading.Event()
        batcher._pool.step = self

    def __call__(self, pids, xs):
        self.entered.set()
        assert self.release.wait(TIMEOUT)
        return self.real(pids, xs)


# -- exactness --------------------------------------------------------------------------------

def test_threads_match_lone_streams(model):
    """16 threads, each stepping 4 of 64 streams in turn, against 64 lone streams."""
    xs = inputs(64, 12)
    out = np.zeros((64, 12, H), np.float32)
    with rnnengine.Batcher(model, max_batch=64, max_delay_us=2000) as batcher:
        ids = [batcher.open() for _ in range(64)]

        def worker(first):
            for t in range(xs.shape[1]):
                for s in range(first, 64, 16):
                    out[s, t] = batcher.step(ids[s], xs[s, t])

        run_threads([lambda k=k: worker(k) for k in range(16)])
        assert [batcher.steps(sid) for sid in ids] == [12] * 64
        stats = batcher.stats
    assert stats["steps"] == 64 * 12
    assert stats["largest_batch"] > 1, stats          # steps of different threads were batched
    np.testing.assert_allclose(out, lone(model, xs), rtol=1e-5, atol=1e-6)


def test_asyncio_tasks_match_lone_streams(model):
    """64 tasks, one per stream, against 64 lone streams."""
    xs = inputs(64, 12, seed=1)
    out = np.zeros((64, 12, H), np.float32)

    async def main(batcher):
        ids = [batcher.open() for _ in range(64)]

        async def task(s):
            for t in range(xs.shape[1]):
                out[s, t] = await batcher.step_async(ids[s], xs[s, t])

        await asyncio.gather(*(task(s) for s in range(64)))

    with rnnengine.Batcher(model, max_delay_us=2000) as batcher:
        run_async(main(batcher))
        stats = batcher.stats
    assert stats["largest_batch"] == 64, stats        # every stream waits: full batches
    np.testing.assert_allclose(out, lone(model, xs), rtol=1e-5, atol=1e-6)


def test_threads_and_tasks_together_match_pytorch(model, torch_lstm):
    """Threads and tasks share one batcher; one stream is checked against nn.LSTM itself."""
    xs = inputs(9, 15, seed=2)
    out = np.zeros((9, 15, H), np.float32)
    with rnnengine.Batcher(model, max_delay_us=500) as batcher:
        ids = [batcher.open() for _ in range(9)]

        def thread(s):
            for t in range(15):
                out[s, t] = batcher.step(ids[s], xs[s, t])

        async def tasks():
            async def one(s):
                for t in range(15):
                    out[s, t] = await batcher.step_async(ids[s], xs[s, t])
            await asyncio.gather(*(one(s) for s in range(4, 9)))

        run_threads([lambda s=s: thread(s) for s in range(4)] + [lambda: run_async(tasks())])
    np.testing.assert_allclose(out, lone(model, xs), rtol=1e-5, atol=1e-6)
    reference = torch_lstm.double()
    try:
        y_ref, _ = torch_run(reference, xs[0])
    finally:
        torch_lstm.float()
    assert_close(out[0], y_ref, "stream 0 against nn.LSTM")


# -- guarantees -------------------------------------------------------------------------------

def relay(batcher, xs, noise) -> list:
    """Step a new stream with ``xs`` (one input per step), each step from a different thread
    (a baton passed along 4 threads), while ``len(noise)`` other streams step ``noise[j]``
    to keep the batches busy. -> the stream's outputs, in step order."""
    out = [None] * len(xs)
    turns = [threading.Event() for _ in range(len(xs) + 1)]
    turns[0].set()
    stop = threading.Event()
    sid = batcher.open()
    others = [batcher.open() for _ in noise]

    def baton(k):
        for t in range(k, len(xs), 4):
            assert turns[t].wait(TIMEOUT)
            out[t] = batcher.step(sid, xs[t])
            assert batcher.steps(sid) == t + 1
            turns[t + 1].set()

    def busy(j):
        for x in noise[j]:
            if stop.is_set():
                return
            batcher.step(others[j], x)

    def batons():
        run_threads([lambda k=k: baton(k) for k in range(4)])
        stop.set()

    run_threads([batons] + [lambda j=j: busy(j) for j in range(len(noise))])
    return out


def test_steps_of_one_stream_apply_in_call_order_across_threads(model):
    """Each step of a stream comes from a different thread (a baton passed along), while other
    streams keep the batches busy: the outputs are the lone stream's, in order."""
    xs = inputs(1, 24, seed=3)[0]
    with rnnengine.Batcher(model, max_delay_us=300) as batcher:
        out = relay(batcher, xs, inputs(6, 200, seed=4))
    np.testing.assert_allclose(np.stack(out), lone(model, xs[None])[0], rtol=1e-5, atol=1e-6)


def test_concurrent_steps_of_one_stream_raise(model):
    xs = inputs(1, 3, seed=5)[0]
    with rnnengine.Batcher(model, max_delay_us=5_000_000) as batcher:
        sid = batcher.open()
        batcher.open()                      # a second stream: the first step waits for it
        gate = GatedStep(batcher)
        gate.release.set()
        first = []
        t = threading.Thread(target=lambda: first.append(batcher.step(sid, xs[0])), daemon=True)
        t.start()
        deadline = time.monotonic() + TIMEOUT
        while not batcher._queue and time.monotonic() < deadline:
            time.sleep(0.001)
        with pytest.raises(RuntimeError, match=f"stream {sid} already has a step in progress"):
            batcher.step(sid, xs[1])
        batcher.close()                     # drains: the waiting first step runs now
        t.join(TIMEOUT)
        assert not t.is_alive() and len(first) == 1
        assert batcher.steps(sid) == 1

    async def two_tasks(batcher, sid):
        return await asyncio.gather(batcher.step_async(sid, xs[0]), batcher.step_async(sid, xs[1]),
                                    return_exceptions=True)

    with rnnengine.Batcher(model, max_delay_us=1000) as batcher:
        sid = batcher.open()
        results = run_async(two_tasks(batcher, sid))
        assert isinstance(results[1], RuntimeError) and "already has a step" in str(results[1])
        assert batcher.steps(sid) == 1
        np.testing.assert_allclose(results[0], lone(model, xs[None])[0, 0], rtol=1e-5, atol=1e-6)


def test_full_batcher_refuses_open(model):
    with rnnengine.Batcher(model, max_streams=3) as batcher:
        ids = [batcher.open() for _ in range(3)]
        data = batcher.export_state(ids[0])
        with pytest.raises(RuntimeError, match="the Batcher is full: all 3 streams are open"):
            batcher.open()
        with pytest.raises(RuntimeError, match="full"):
            batcher.resume(data)
        batcher.close(ids[1])
        assert batcher.open() not in ids            # room again, under a new id
        with pytest.raises(ValueError, match=f"stream id {ids[1]} was closed"):
            batcher.step(ids[1], np.zeros(I, np.float32))


def test_close_drains_every_pending_step(model):
    """close() while threads and tasks have steps queued (the delay would hold them for a
    minute): each queued step runs and gets its right output, each later one a clear error,
    and every caller returns."""
    xs = inputs(12, 1, seed=6)[:, 0]
    expected = lone(model, xs[:, None])[:, 0]
    got, refused = {}, []
    batcher = rnnengine.Batcher(model, max_delay_us=600_000_000)
    ids = [batcher.open() for _ in range(13)]       # one never steps: batches never complete

    def thread(s):
        got[s] = batcher.step(ids[s], xs[s])
        try:
            batcher.step(ids[s], xs[s])
        except RuntimeError as error:
            refused.append(str(error))

    async def tasks():
        async def one(s):
            got[s] = await batcher.step_async(ids[s], xs[s])
        await asyncio.gather(*(one(s) for s in range(6, 12)))

    def closer():
        deadline = time.monotonic() + TIMEOUT
        while len(batcher._queue) < 12 and time.monotonic() < deadline:
            time.sleep(0.002)
        assert len(batcher._queue) == 12 and not got   # all queued, none run yet
        batcher.close()

    started = time.monotonic()
    run_threads([lambda s=s: thread(s) for s in range(6)] + [lambda: run_async(tasks()), closer])
    assert time.monotonic() - started < TIMEOUT
    assert sorted(got) == list(range(12))
    for s in range(12):
        np.testing.assert_allclose(got[s], expected[s], rtol=1e-5, atol=1e-6)
    assert refused == ["the Batcher is closed"] * 6
    with pytest.raises(RuntimeError, match="the Batcher is closed"):
        batcher.open()
    # Closed, but its streams can still be exported (to move them elsewhere).
    with rnnengine.Batcher(model) as other:
        moved = other.resume(batcher.export_state(ids[0]))
        assert other.steps(moved) == 0
    batcher.close()                                  # twice is fine


def test_closing_a_stream_fails_its_queued_step(model):
    with rnnengine.Batcher(model, max_delay_us=600_000_000) as batcher:
        sid, _ = batcher.open(), batcher.open()
        errors = []

        def step():
            try:
                batcher.step(sid, np.zeros(I, np.float32))
            except RuntimeError as error:
                errors.append(str(error))

        t = threading.Thread(target=step, daemon=True)
        t.start()
        deadline = time.monotonic() + TIMEOUT
        while not batcher._queue and time.monotonic() < deadline:
            time.sleep(0.001)
        batcher.close(sid)
        t.join(TIMEOUT)
        assert not t.is_alive()
        assert errors == [f"stream {sid} was closed while its step was waiting"]


def test_cancelled_task_either_withdraws_or_completes_its_step(model):
    """A step cancelled while queued never happens; one cancelled while its batch runs has
    happened by the time CancelledError reaches the task; the stream's next step follows
    either way, and its outputs are the lone stream's over the steps that happened."""
    xs = inputs(1, 4, seed=7)[0]
    expected = lone(model, xs[[0, 2, 3]][None])[0]   # xs[1] is withdrawn, the rest happen

    async def main(batcher, gate):
        sid, other = batcher.open(), batcher.open()
        loop = asyncio.get_running_loop()
        company = lambda t: asyncio.create_task(batcher.step_async(other, xs[t]))  # noqa: E731
        # 1. Queued (the batch waits for the other stream): withdrawn.
        task = asyncio.create_task(batcher.step_async(sid, xs[1]))
        while not batcher._queue:
            await asyncio.sleep(0.001)
        task.cancel("the caller left")
        with pytest.raises(asyncio.CancelledError, match="^the caller left$"):
            await task
        assert batcher.steps(sid) == 0 and not batcher._queue
        # 2. Taken into a batch that is running: the CancelledError waits for it.
        others = [company(0)]
        task = asyncio.create_task(batcher.step_async(sid, xs[0]))
        assert await loop.run_in_executor(None, gate.entered.wait, TIMEOUT)
        task.cancel("the caller left")
        await asyncio.sleep(0.01)
        assert not task.done()                      # still waiting for the running batch
        nxt = asyncio.create_task(batcher.step_async(sid, xs[2]))   # allowed: the caller left
        await asyncio.sleep(0.01)
        assert batcher.steps(sid) == 0
        gate.release.set()
        with pytest.raises(asyncio.CancelledError, match="^the caller left$"):
            await task
        assert batcher.steps(sid) == 1              # it happened before the task saw the error
        await others[0]
        others.append(company(1))                   # nxt runs once the other stream joins
        y2 = await nxt
        others.append(company(2))
        y3 = await batcher.step_async(sid, xs[3])
        await asyncio.gather(*others)
        assert batcher.steps(sid) == 3 and batcher.steps(other) == 3
        return y2, y3

    with rnnengine.Batcher(model, max_delay_us=600_000_000) as batcher:
        gate = GatedStep(batcher)
        y2, y3 = run_async(main(batcher, gate))
    np.testing.assert_allclose(np.stack([y2, y3]), expected[1:], rtol=1e-5, atol=1e-6)


def test_random_cancellations_keep_streams_exact(model):
    """Tasks cancelled at random moments: each stream's state equals the lone stream's over
    exactly the steps its counter says happened."""
    xs = inputs(16, 30, seed=8)
    rng = np.random.default_rng(9)
    delays = rng.uniform(0, 0.002, (16, 30))
    applied = [[] for _ in range(16)]
    outcomes = {"withdrawn": 0, "happened": 0, "completed": 0}

    async def main(batcher):
        ids = [batcher.open() for _ in range(16)]

        async def stream(s):
            for t in range(30):
                before = batcher.steps(ids[s])
                task = asyncio.create_task(batcher.step_async(ids[s], xs[s, t]))
                if t % 3 == 0:
                    await asyncio.sleep(delays[s, t])
                    task.cancel()
                try:
                    await task
                    outcomes["completed"] += 1
                except asyncio.CancelledError:
                    outcomes["happened" if batcher.steps(ids[s]) > before else "withdrawn"] += 1
                after = batcher.steps(ids[s])
                assert after - before in (0, 1)
                if after > before:
                    applied[s].append(xs[s, t])
        await asyncio.gather(*(stream(s) for s in range(16)))
        return ids

    with rnnengine.Batcher(model, max_delay_us=1000) as batcher:
        ids = run_async(main(batcher))
        for s, sid in enumerate(ids):
            stream = model.stream(batch=1)
            stream.import_state(batcher.export_state(sid))
            reference = model.stream(batch=1)
            reference.run(np.array(applied[s]).reshape(-1, I))
            assert_close(stream.state, tuple(a.astype(np.float64) for a in reference.state),
                         f"stream {s}")
    assert outcomes["withdrawn"] > 0 and outcomes["completed"] > 0, outcomes


def test_idle_streams_are_evicted_and_resumed_transparently(model):
    xs = inputs(3, 8, seed=10)
    out = np.zeros((3, 8, H), np.float32)
    with rnnengine.Batcher(model, idle_seconds=0.05, max_delay_us=100) as batcher:
        ids = [batcher.open() for _ in range(3)]
        for t in range(4):
            for s in range(3):
                out[s, t] = batcher.step(ids[s], xs[s, t])
        deadline = time.monotonic() + TIMEOUT
        while batcher.stats["evictions"] < 3 and time.monotonic() < deadline:
            time.sleep(0.01)
        assert batcher.stats["evictions"] == 3 and batcher.stats["resident"] == 0
        assert all(batcher._streams[sid].pid is None for sid in ids)   # out of the pool
        exported = batcher.export_state(ids[0])                    # works while evicted
        for t in range(4, 8):
            for s in range(3):
                out[s, t] = batcher.step(ids[s], xs[s, t])
        assert batcher.stats["resumes"] == 3
        assert [batcher.steps(sid) for sid in ids] == [8] * 3
    np.testing.assert_allclose(out, lone(model, xs), rtol=1e-5, atol=1e-6)
    stream = model.stream(batch=1)
    stream.import_state(exported)
    np.testing.assert_allclose(stream.step(xs[0, 4]), out[0, 4], rtol=1e-5, atol=1e-6)


def test_the_pool_grows_with_resident_streams_and_shrinks_after_eviction(model):
    """Slots follow the resident streams, not max_streams: 20 streams of a max_batch=4
    batcher grow the pool 4 -> 8 -> 16 -> 32 slots (states moved along); evicted, none is
    resident and the pool is back to 4; resumed, they carry on exactly."""
    xs = inputs(20, 4, seed=12)
    out = np.zeros((20, 4, H), np.float32)
    with rnnengine.Batcher(model, max_batch=4, idle_seconds=1.0, max_delay_us=100) as batcher:
        assert batcher.stats["slots"] == 4
        ids = [batcher.open() for _ in range(20)]
        assert batcher.stats["resident"] == 0                  # a slot from the first step on
        for t in range(2):
            for s in range(20):
                out[s, t] = batcher.step(ids[s], xs[s, t])
        grown = batcher.stats
        deadline = time.monotonic() + TIMEOUT
        while batcher.stats["evictions"] < 20 and time.monotonic() < deadline:
            time.sleep(0.02)
        evicted = batcher.stats
        for t in range(2, 4):
            for s in range(20):
                out[s, t] = batcher.step(ids[s], xs[s, t])
        resumed = batcher.stats
    assert (grown["resident"], grown["slots"]) == (20, 32), grown
    assert (evicted["resident"], evicted["slots"], evicted["evictions"]) == (0, 4, 20), evicted
    assert (resumed["resident"], resumed["resumes"]) == (20, 20), resumed
    np.testing.assert_allclose(out, lone(model, xs), rtol=1e-5, atol=1e-6)


def test_export_and_resume_move_a_stream_between_batchers(model):
    xs = inputs(1, 10, seed=11)[0]
    with rnnengine.Batcher(model) as first, rnnengine.Batcher(model) as second:
        sid = first.open()
        ys = [first.step(sid, x) for x in xs[:6]]
        moved = second.resume(first.export_state(sid))
        first.close(sid)
        ys += [second.step(moved, x) for x in xs[6:]]
    np.testing.assert_allclose(np.stack(ys), lone(model, xs[None])[0], rtol=1e-5, atol=1e-6)


def test_bad_arguments_raise_clear_errors(model):
    with pytest.raises(TypeError, match="Batcher takes an rnnengine.Model or an "
                                        "rnnengine.InferenceSession; got str"):
        rnnengine.Batcher("model.onnx")
    with pytest.raises(ValueError, match="max_batch must be a positive integer; got 0"):
        rnnengine.Batcher(model, max_batch=0)
    with pytest.raises(ValueError, match="max_delay_us must be a finite number >= 0; got -1"):
        rnnengine.Batcher(model, max_delay_us=-1)
    with pytest.raises(ValueError, match="max_delay_us must be a finite number >= 0; got inf"):
        rnnengine.Batcher(model, max_delay_us=float("inf"))
    with pytest.raises(ValueError, match="idle_seconds must be a finite number > 0 or None; "
                                         "got 0"):
        rnnengine.Batcher(model, idle_seconds=0)
    bidirectional = rnnengine.Model([rnnengine.Layer.from_onnx(
        "gru", np.zeros((2, 6, 2), np.float32), np.zeros((2, 6, 2), np.float32),
        direction="bidirectional")])
    with pytest.raises(ValueError, match="bidirectional model cannot"):
        rnnengine.Batcher(bidirectional)
    with rnnengine.Batcher(model) as batcher:
        sid = batcher.open()
        with pytest.raises(ValueError, match=r"x must be float32 of shape \(8,\) .*got \(2, 8\)"):
            batcher.step(sid, np.zeros((2, I), np.float32))
        with pytest.raises(TypeError, match="x must be a float array"):
            batcher.step(sid, np.zeros(I, np.int32))
        with pytest.raises(ValueError, match="unknown stream id 99"):
            batcher.step(99, np.zeros(I, np.float32))
        with pytest.raises(TypeError, match="a stream id is an int"):
            batcher.step("a", np.zeros(I, np.float32))
        with pytest.raises(ValueError, match="not a valid rnnengine state"):
            batcher.resume(b"RNNESTXT" + b"\0" * 20)
        with pytest.raises(TypeError, match="state data must be bytes"):
            batcher.resume(None)
        assert batcher.steps(sid) == 0 and len(batcher) == 1 and sid in batcher


# -- stress (also run under tools/sanitize.sh) ------------------------------------------------

def test_thread_stress_open_step_export_resume_close(model):
    """12 threads each churn through streams: open, step, export, resume, close, at random,
    all through one batcher with a short delay; every output is the lone stream's."""
    rng_seeds = range(12)

    def churn(seed):
        rng = np.random.default_rng(100 + seed)
        for _ in range(6):
            xs = rng.standard_normal((int(rng.integers(5, 25)), I)).astype(np.float32)
            sid = batcher.open()
            ys = []
            for t, x in enumerate(xs):
                if rng.random() < 0.15:
                    resumed = batcher.resume(batcher.export_state(sid))
                    batcher.close(sid)
                    sid = resumed
                ys.append(batcher.step(sid, x))
            batcher.close(sid)
            np.testing.assert_allclose(np.stack(ys), lone(model, xs[None])[0], rtol=1e-5,
                                       atol=1e-6)

    with rnnengine.Batcher(model, max_batch=8, max_delay_us=200, max_streams=24,
                           idle_seconds=0.005) as batcher:
        run_threads([lambda s=s: churn(s) for s in rng_seeds], timeout=4 * TIMEOUT)
        assert len(batcher) == 0
        assert batcher.stats["largest_batch"] > 1

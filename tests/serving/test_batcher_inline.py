"""Inline steps of the Batcher: a stream stepping alone runs on its caller's thread (no
worker hand-off), with every guarantee of the batched path: exact outputs (ONNX Runtime for
the Silero VAD files, PyTorch for an LSTM), a failed step leaves the stream as it was, a
second concurrent step raises, close waits for a running step, company turns batching back
on, and an asyncio task stepping inline lets the loop's other tasks run."""
from __future__ import annotations

import asyncio
import threading
from pathlib import Path

import numpy as np
import pytest

import rnnengine
from test_batcher import TIMEOUT, inputs, run_async, run_threads
from test_batcher_session import assert_outputs, ort_expected, silero_steps
from torch_reference import assert_close, torch_run
import conftest

pytest.importorskip("onnxruntime")

DATA = Path(conftest.DATA)
SR = np.array(16000, np.int64)
SILERO_ZERO = {"state": np.zeros((2, 1, 128), np.float32)}
SILERO_FILES = ["silero_vad.onnx", "silero_vad_16k_op15.onnx"]


@pytest.fixture(scope="module")
def lstm():
    """An nn.LSTM and the engine model of its weights (through a state_dict)."""
    torch = pytest.importorskip("torch")
    torch.manual_seed(4)
    module = torch.nn.LSTM(8, 32, num_layers=2)
    model = rnnengine.from_torch(module)
    return module.double(), model      # the reference runs in float64


@pytest.mark.parametrize("name", SILERO_FILES)
@pytest.mark.parametrize("mode", ["thread", "task"])
def test_a_lone_silero_stream_steps_inline_exactly(name, mode):
    """One stream of each Silero file, 12 steps: the first goes through the worker (no step
    before it said the stream is alone), the rest inline; outputs as ONNX Runtime's loop."""
    model = str(DATA / name)
    steps = silero_steps(1, 12, seed=11)
    want = ort_expected(model, steps, {"stateN": "state"}, SILERO_ZERO, {"sr": SR})
    sess = rnnengine.InferenceSession(model)
    with rnnengine.Batcher(sess, feeds={"sr": SR}) as batcher:
        sid = batcher.open()
        if mode == "thread":
            got = [batcher.step(sid, f) for f in steps[0]]
        else:
            async def main():
                return [await batcher.step_async(sid, f) for f in steps[0]]
            got = run_async(main())
        stats = batcher.stats
        assert batcher.steps(sid) == 12
    assert stats["inline"] == 11 and stats["steps"] == 12 and stats["batches"] == 12, stats
    assert_outputs([got], want)


def test_inline_off_sends_every_step_to_the_worker():
    steps = silero_steps(1, 4, seed=12)
    want = ort_expected(str(DATA / SILERO_FILES[1]), steps, {"stateN": "state"}, SILERO_ZERO,
                        {"sr": SR})
    sess = rnnengine.InferenceSession(str(DATA / SILERO_FILES[1]))
    with rnnengine.Batcher(sess, feeds={"sr": SR}, inline=False) as batcher:
        sid = batcher.open()
        got = [batcher.step(sid, f) for f in steps[0]]
        assert batcher.stats["inline"] == 0 and batcher.stats["batches"] == 4
    assert_outputs([got], want)


def test_an_inline_step_the_graph_rejects_leaves_the_stream_as_it_was():
    """Silero with 100 samples passes the input checks but not the graph's STFT: the inline
    step raises a ValueError naming the node; the stream carries on exactly."""
    model = str(DATA / SILERO_FILES[1])
    steps = silero_steps(1, 5, seed=13)
    want = ort_expected(model, steps, {"stateN": "state"}, SILERO_ZERO, {"sr": SR})
    sess = rnnengine.InferenceSession(model)
    with rnnengine.Batcher(sess, feeds={"sr": SR}) as batcher:
        sid = batcher.open()
        got = [batcher.step(sid, f) for f in steps[0][:3]]
        assert batcher.stats["inline"] == 2
        with pytest.raises(ValueError, match="Conv"):
            batcher.step(sid, {"input": np.zeros((1, 100), np.float32)})
        assert batcher.steps(sid) == 3 and batcher.stats["inline"] == 2
        got += [batcher.step(sid, f) for f in steps[0][3:]]
        assert batcher.stats["inline"] == 4
    assert_outputs([got], want)


def test_pool_step_one_is_step_of_one_stream():
    """SessionPool.step_one against ONNX Runtime, on a stream among others; a failing step
    changes no state."""
    model = str(DATA / SILERO_FILES[0])
    steps = silero_steps(2, 6, seed=14)
    want = ort_expected(model, steps, {"stateN": "state"}, SILERO_ZERO, {"sr": SR})
    pool = rnnengine.InferenceSession(model).pool(4, feeds={"sr": SR})
    a, b = pool.open(), pool.open()
    got = [[], []]
    for t in range(6):
        if t % 2:
            outs = pool.step([a, b], {"input": np.concatenate([steps[0][t]["input"],
                                                                steps[1][t]["input"]])})
            got[0].append([o[:1] for o in outs])
            got[1].append([o[1:] for o in outs])
        else:
            got[0].append(pool.step_one(a, steps[0][t]))
            got[1].append(pool.step_one(b, steps[1][t]))
        if t == 3:
            before = pool.state(a)
            with pytest.raises(ValueError, match="Conv"):
                pool.step_one(a, {"input": np.zeros((1, 100), np.float32)})
            np.testing.assert_array_equal(pool.state(a)["state"], before["state"])
    assert_outputs(got, want)


def test_company_turns_batching_back_on(lstm):
    """Stream 0 steps inline from one thread; while one of its inline steps runs, stream 1
    queues a step from another thread: stream 0's next step joins it, and from then on the
    two are batched (the long delay waits for both), exact against PyTorch."""
    module, model = lstm
    xs = inputs(2, 30, seed=15)
    out = np.zeros((2, 30, 32), np.float32)
    with rnnengine.Batcher(model, max_delay_us=10_000_000) as batcher:
        ids = [batcher.open()]
        out[0, 0] = batcher.step(ids[0], xs[0, 0])   # alone (one open stream): inline next
        ids.append(batcher.open())
        real = batcher._pool.step_one
        queued = threading.Event()

        def gated(handle, x):                   # the inline step waits for stream 1's step
            assert queued.wait(TIMEOUT)
            return real(handle, x)

        def first():
            for t in range(1, 30):
                if t == 1:
                    batcher._pool.step_one = gated
                out[0, t] = batcher.step(ids[0], xs[0, t])
                batcher._pool.step_one = real
            batcher.close(ids[0])               # stream 1's last steps need not wait for it

        def second():
            for t in range(30):
                out[1, t] = batcher.step(ids[1], xs[1, t])

        def watch():
            while not batcher._queue:
                threading.Event().wait(0.001)
            queued.set()

        run_threads([first, second, watch])
        stats = batcher.stats
    # 60 steps: 2 alone, then 29 pairs (stream 0's gated inline step is one of them)
    assert stats["largest_batch"] == 2 and stats["batches"] <= 33, stats
    for s in range(2):
        assert_close(out[s], torch_run(module, xs[s])[0], f"stream {s}")


def test_a_second_step_during_an_inline_step_raises_and_close_waits(lstm):
    _, model = lstm
    xs = inputs(1, 3, seed=16)[0]
    with rnnengine.Batcher(model) as batcher:
        sid = batcher.open()
        batcher.step(sid, xs[0])                # alone: the next step runs inline
        real = batcher._pool.step_one
        entered, release = threading.Event(), threading.Event()

        def gated(handle, x):
            entered.set()
            assert release.wait(TIMEOUT)
            return real(handle, x)

        batcher._pool.step_one = gated
        result, closed = [], []
        t = threading.Thread(target=lambda: result.append(batcher.step(sid, xs[1])), daemon=True)
        t.start()
        assert entered.wait(TIMEOUT)
        with pytest.raises(rnnengine.ConcurrentStep, match=f"stream {sid} already has a step"):
            batcher.step(sid, xs[2])
        closer = threading.Thread(target=lambda: closed.append(batcher.close(sid)), daemon=True)
        closer.start()
        closer.join(0.05)
        assert closer.is_alive() and not closed      # close waits for the running step
        assert batcher.steps(sid) == 1
        release.set()
        t.join(TIMEOUT)
        closer.join(TIMEOUT)
        assert len(result) == 1 and closed == [None] and sid not in batcher


def test_a_task_stepping_inline_lets_other_tasks_run(lstm):
    """A task stepping its lone stream in a tight loop yields to the event loop now and
    then: a task created after it steps before the first one is done."""
    _, model = lstm
    xs = inputs(2, 200, seed=17)

    async def main(batcher):
        ids = [batcher.open()]
        await batcher.step_async(ids[0], xs[0, 0])      # alone: inline from now on
        seen = []

        async def busy():
            for x in xs[0, 1:]:
                await batcher.step_async(ids[0], x)

        async def late():
            sid = batcher.open()
            await batcher.step_async(sid, xs[1, 0])
            seen.append(batcher.steps(ids[0]))

        await asyncio.gather(busy(), late())     # busy() starts first
        return seen[0]

    with rnnengine.Batcher(model) as batcher:
        when = run_async(main(batcher))
        assert batcher.stats["inline"] > 0
    assert when < 200, "the late task ran only after the busy one finished"

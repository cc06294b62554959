"""Typed errors: each raised where its failure happens, an ``rnnengine.Error`` and still the
built-in class the same failure raised before, so older handlers keep catching it."""
from __future__ import annotations

import re
import threading

import numpy as np
import pytest

import rnnengine
import session_models as sm
from rnnengine import (ConcurrentStep, DeadlineExceeded, InferenceSession, ModelError,
                       StreamClosed, StreamsFull)
from torch_reference import random_model

SR = np.array(16000, np.int64)


def typed(error: BaseException, cls, *builtins) -> None:
    assert isinstance(error, cls) and isinstance(error, rnnengine.Error), type(error)
    for b in builtins:
        assert isinstance(error, b), (type(error), b)


def held_by_other_thread(lock):
    """Acquire ``lock`` in another thread and keep it until the returned event is set."""
    taken, done = threading.Event(), threading.Event()

    def hold():
        with lock:
            taken.set()
            done.wait(10)
    t = threading.Thread(target=hold, daemon=True)
    t.start()
    assert taken.wait(10)
    return done, t


def test_hierarchy():
    for cls in (ModelError, StreamsFull, StreamClosed, ConcurrentStep, DeadlineExceeded):
        assert issubclass(cls, rnnengine.Error) and cls.__module__ == "rnnengine.errors"
    assert issubclass(ModelError, ValueError)
    assert issubclass(StreamsFull, RuntimeError)
    assert issubclass(StreamClosed, ValueError) and issubclass(StreamClosed, RuntimeError)
    assert issubclass(ConcurrentStep, RuntimeError)
    assert issubclass(DeadlineExceeded, TimeoutError) and issubclass(DeadlineExceeded,
                                                                     RuntimeError)


def test_model_error_on_malformed_bytes():
    with pytest.raises(ModelError, match=r"^<bytes>: not an ONNX model \(") as info:
        InferenceSession(b"not an onnx model at all")
    typed(info.value, ModelError, ValueError)


def test_model_pool_full_closed_concurrent():
    model, _ = random_model("lstm", 3, 4)
    pool = model.pool(capacity=2)
    a, b = pool.open(), pool.open()
    with pytest.raises(StreamsFull, match="pool is full") as info:
        pool.open()
    typed(info.value, StreamsFull, RuntimeError)
    pool.close(b)
    x = np.ones((1, 3), np.float32)
    for bad, words in ((b, f"stream id {b} was closed"),
                       (12345, "unknown stream id 12345: ids come from Pool.open() of this pool")):
        with pytest.raises(StreamClosed, match=re.escape(words)) as info:
            pool.step([bad], x)
        typed(info.value, StreamClosed, ValueError)
    with pytest.raises(StreamClosed, match="was closed"):
        pool.state(b)
    before = pool.state(a)
    done, t = held_by_other_thread(pool._lock)
    try:
        with pytest.raises(ConcurrentStep, match="another call") as info:
            pool.step([a], x)
        typed(info.value, ConcurrentStep, RuntimeError)
    finally:
        done.set()
        t.join()
    np.testing.assert_array_equal(pool.state(a)[0], before[0])


def test_model_stream_concurrent():
    model, _ = random_model("gru", 3, 4)
    stream = model.stream()
    stream.core._lock()        # another thread inside the stream
    try:
        with pytest.raises(ConcurrentStep, match="already in use") as info:
            stream.step(np.ones((1, 3), np.float32))
        typed(info.value, ConcurrentStep, RuntimeError)
    finally:
        stream.core._unlock()


def test_session_pool_full_and_closed():
    pool = InferenceSession(sm.SILERO).pool(capacity=1, feeds={"sr": SR})
    a = pool.open()
    with pytest.raises(StreamsFull, match="full") as info:
        pool.open()
    typed(info.value, StreamsFull, RuntimeError)
    pool.close(a)
    with pytest.raises(StreamClosed, match="not open") as info:
        pool.step([a], {"input": np.zeros((1, 512), np.float32)})
    typed(info.value, StreamClosed, ValueError)


def test_session_stream_and_compiled_step_concurrent():
    sess = InferenceSession(sm.embedding_lstm(True))
    stream = sess.stream()
    feeds = {"tokens": np.array([[3]], np.int64)}
    for _ in range(3):
        stream.step(feeds)
    runner = stream._runner
    assert runner is not None, stream._why      # the compiled step is what this covers
    before, blob = stream.state, stream.export_state()
    done, t = held_by_other_thread(stream._lock)
    try:
        for call in (lambda: stream.step(feeds), lambda: runner.step(feeds),
                     lambda: stream.import_state(blob)):
            with pytest.raises(ConcurrentStep, match="another thread") as info:
                call()
            typed(info.value, ConcurrentStep, RuntimeError)
    finally:
        done.set()
        t.join()
    after = stream.state
    assert all(np.array_equal(before[k], after[k]) for k in before)


def test_batcher_errors():
    model, _ = random_model("lstm", 3, 4)
    x = np.ones(3, np.float32)
    with rnnengine.Batcher(model, max_streams=2, max_delay_us=0) as batcher:
        a = batcher.open()
        b = batcher.open()
        with pytest.raises(StreamsFull, match="Batcher is full") as info:
            batcher.open()
        typed(info.value, StreamsFull, RuntimeError)
        batcher.close(b)
        with pytest.raises(StreamClosed, match="was closed") as info:
            batcher.step(b, x)
        typed(info.value, StreamClosed, ValueError)
        with pytest.raises(StreamClosed, match="unknown stream id"):
            batcher.step(99, x)

        # The worker cannot take a batch while the pool lock is held: the step misses its
        # deadline, never runs, and the stream is untouched.
        with batcher._pool_lock:
            with pytest.raises(DeadlineExceeded, match="did not run") as info:
                batcher.step(a, x, timeout=0.05)
            typed(info.value, DeadlineExceeded, TimeoutError)
            assert batcher.steps(a) == 0 and a not in [r.stream.sid for r in batcher._queue]

            # A second step of a stream whose first is still queued.
            first = threading.Thread(target=batcher.step, args=(a, x), daemon=True)
            first.start()
            for _ in range(1000):
                if batcher._queue:
                    break
                threading.Event().wait(0.005)
            with pytest.raises(ConcurrentStep, match="already has a step") as info:
                batcher.step(a, x)
            typed(info.value, ConcurrentStep, RuntimeError)
        first.join(10)
        assert batcher.steps(a) == 1
    with pytest.raises(StreamClosed, match="Batcher is closed") as info:
        batcher.step(a, x)
    typed(info.value, StreamClosed, RuntimeError)


def test_batcher_step_async_deadline():
    import asyncio
    model, _ = random_model("gru", 3, 4)
    x = np.ones(3, np.float32)

    async def main(batcher, sid):
        with batcher._pool_lock:
            with pytest.raises(DeadlineExceeded, match=r"not taken into a batch within 0\.05 s; "
                                                       r"it did not run and the stream is as it was"):
                await batcher.step_async(sid, x, timeout=0.05)
        assert batcher.steps(sid) == 0
        y = await batcher.step_async(sid, x, timeout=5)   # runs in time: a result
        assert y.shape == (4,) and batcher.steps(sid) == 1

    with rnnengine.Batcher(model, max_delay_us=0) as batcher:
        asyncio.run(main(batcher, batcher.open()))
    with rnnengine.Batcher(model) as batcher, pytest.raises(ValueError, match="timeout"):
        batcher.step(batcher.open(), x, timeout=-1)

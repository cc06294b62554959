"""Threads: one Model shared by several threads, each driving its own pool and stream, gives
exactly the serial reference results; concurrent use of one Pool is detected, not corrupting."""
from __future__ import annotations

import threading
import time

import numpy as np
import pytest

from torch_reference import assert_close, random_model, torch_run

SECONDS = 2.0          # stress duration; the iteration cap bounds it on a fast machine too
MAX_ITERATIONS = 400


@pytest.fixture(scope="module")
def twins():
    return random_model("lstm", 16, 32, num_layers=2, seed=4)


def _drive(model, seed, deadline, record, errors):
    """One thread: its own pool of 4 streams and its own batch-2 stream, random subsets."""
    try:
        rng = np.random.default_rng(seed)
        pool = model.pool(capacity=4)
        ids = [pool.open() for _ in range(4)]
        stream = model.stream(batch=2)
        log = {("pool", sid): ([], []) for sid in ids}
        log["stream"] = ([], [])
        for _ in range(MAX_ITERATIONS):
            if time.monotonic() > deadline:
                break
            chosen = [int(s) for s in rng.permutation(ids)[:rng.integers(1, 5)]]
            xs = rng.standard_normal((len(chosen), model.input_size)).astype(np.float32)
            for sid, x, y in zip(chosen, xs, pool.step(chosen, xs)):
                log["pool", sid][0].append(x)
                log["pool", sid][1].append(y)
            x2 = rng.standard_normal((2, model.input_size)).astype(np.float32)
            log["stream"][0].append(x2)
            log["stream"][1].append(stream.step(x2))
        record[seed] = (log, {sid: pool.state(sid) for sid in ids}, stream.state)
    except BaseException as error:   # reported by the main thread
        errors.append(error)


def test_threads_sharing_a_model_equal_the_serial_reference(twins):
    model, ref = twins
    record, errors = {}, []
    deadline = time.monotonic() + SECONDS
    threads = [threading.Thread(target=_drive, args=(model, seed, deadline, record, errors))
               for seed in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=60)
    assert not any(t.is_alive() for t in threads)
    assert not errors, errors
    assert sorted(record) == [0, 1, 2, 3]
    for seed, (log, pool_states, stream_state) in record.items():
        for key, (xs, ys) in log.items():
            if key == "stream":
                xs, ys = np.array(xs), np.array(ys)
                for n in range(2):
                    y_ref, s_ref = torch_run(ref, xs[:, n])
                    assert_close(ys[:, n], y_ref, f"thread {seed} stream row {n}")
                    assert_close(tuple(s[:, n:n + 1] for s in stream_state), s_ref)
            elif xs:
                y_ref, s_ref = torch_run(ref, np.array(xs))
                assert_close(np.array(ys), y_ref, f"thread {seed} pool stream {key[1]}")
                assert_close(pool_states[key[1]], s_ref)


class _BlockingIds:
    """An ids sequence whose iteration parks the stepping thread inside Pool.step."""

    def __init__(self, ids):
        self.ids = ids
        self.inside = threading.Event()
        self.release = threading.Event()

    def __iter__(self):
        self.inside.set()
        assert self.release.wait(30)
        return iter(self.ids)


def test_concurrent_use_of_one_pool_is_detected(twins):
    model, ref = twins
    pool = model.pool(capacity=3)
    a, b = pool.open(), pool.open()
    rng = np.random.default_rng(0)
    x = rng.standard_normal((1, model.input_size)).astype(np.float32)
    blob = pool.export_state(b)
    blocking = _BlockingIds([a])
    result = {}
    worker = threading.Thread(target=lambda: result.setdefault("y", pool.step(blocking, x)))
    worker.start()
    try:
        assert blocking.inside.wait(30)
        calls = {
            "step": lambda: pool.step([b], x),
            "open": lambda: pool.open(),
            "close": lambda: pool.close(b),
            "state": lambda: pool.state(a),
            "set_state": lambda: pool.set_state(b, model.zero_state(1)),
            "reset": lambda: pool.reset(b),
            "export_state": lambda: pool.export_state(b),
            "import_state": lambda: pool.import_state(blob),
        }
        for name, call in calls.items():
            with pytest.raises(RuntimeError, match=r"Pool\.\w+\(\) called while another call "
                                                   r"is using this pool \(concurrent use"):
                call()
    finally:
        blocking.release.set()
        worker.join(timeout=30)
    assert not worker.is_alive()
    # The step that owned the pool completed normally; the refused calls changed nothing.
    y_ref, s_ref = torch_run(ref, x)
    assert_close(result["y"], y_ref)
    assert_close(pool.state(a), s_ref)
    assert pool.ids == [a, b]
    assert not any(s.any() for s in pool.state(b))


def test_two_threads_misusing_one_pool_do_not_corrupt_it(twins):
    """Each call either completes or is refused whole: every stream ends exactly where its
    successful steps take it."""
    model, ref = twins
    pool = model.pool(capacity=2)
    ids = [pool.open(), pool.open()]
    logs = {sid: ([], []) for sid in ids}
    refused = []
    deadline = time.monotonic() + 30.0
    start = threading.Barrier(2)

    def hammer(sid, seed):
        rng = np.random.default_rng(seed)
        x = rng.standard_normal((1, model.input_size)).astype(np.float32)
        start.wait(30)
        while len(logs[sid][0]) < 200 and time.monotonic() < deadline:
            try:
                y = pool.step([sid], x)
            except RuntimeError:
                refused.append(sid)
                time.sleep(0)      # let the other thread finish its step
                continue
            logs[sid][0].append(x[0])
            logs[sid][1].append(y[0])
            x = rng.standard_normal((1, model.input_size)).astype(np.float32)

    threads = [threading.Thread(target=hammer, args=(sid, n)) for n, sid in enumerate(ids)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=60)
    assert not any(t.is_alive() for t in threads)
    for sid in ids:
        xs, ys = logs[sid]
        assert len(xs) == 200
        y_ref, s_ref = torch_run(ref, np.array(xs))
        assert_close(np.array(ys), y_ref, f"stream {sid} ({len(refused)} calls refused)")
        assert_close(pool.state(sid), s_ref)

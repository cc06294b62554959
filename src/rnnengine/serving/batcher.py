"""Batcher: the steps of many streams, arriving from any number of threads and asyncio tasks,
gathered into batched pool steps (docs/serving.md).

    with rnnengine.Batcher(model, max_batch=64, max_delay_us=500) as batcher:
        sid = batcher.open()
        y = batcher.step(sid, x)              # x (I,) -> y (Hout,), from any thread
        y = await batcher.step_async(sid, x)  # the same from asyncio tasks
        data = batcher.export_state(sid)      # bytes; batcher.resume(data) -> a new id

    sess = rnnengine.InferenceSession("silero_vad.onnx")
    with rnnengine.Batcher(sess, feeds={"sr": np.array(16000)}) as batcher:
        sid = batcher.open()
        prob, = batcher.step(sid, {"input": chunk})   # chunk (1, 512): one stream, batch 1

Design: one worker thread owns the pool. A caller validates its input, queues a request and
sleeps (a lock for threads, an asyncio future for tasks). The worker wakes on the first
request, waits at most ``max_delay_us`` for company (a condition variable with a timeout, no
spinning; it goes at once when ``max_batch`` requests or one from every open stream are
waiting), runs one pool step for all of them (the kernels release the GIL, so callers keep
queueing the next batch meanwhile) and wakes the callers: each thread's lock, and for each
event loop a single ``call_soon_threadsafe`` for all its futures.

Why a worker thread rather than leader/follower (the first caller runs the batch for the
others): asyncio callers must not block their event loop, so they can never lead: their
batches need a thread anyway, and one worker gives threads and tasks one code path. For
threads, leading would save the hand-off to the worker and back. Measured with
bench/bench_batcher.py (64 threads each stepping one of 64 streams, LSTM I = H = 256,
max_delay_us=500; the shared 2-core machine at load average 6-9): CPU time per step, all
threads, least of 6 interleaved runs: 19.0 us with the worker, 20.2 us with a hybrid (threads
lead, the worker serves tasks and leftovers); 21.4 against 19.9 us for pure leader/follower
in another run. That is no gain beyond noise, while wall-clock rates swung 2x-3x between runs
in both directions (worker 20,600-57,700 steps/s, leader/follower and hybrid 18,900-52,800).
So the simpler design stayed: the hybrid, built and tested, cost two more locks and a
hand-off protocol for nothing measurable.

Inline steps: a stream stepping alone gains nothing from the worker and pays for it: the
hand-off there and back (a condition variable, a lock or a ``call_soon_threadsafe``, two
thread switches) cost twice a whole Silero step (a lone stream through the Batcher took 3x
the CPU of ``SessionStream.step``). So when the stream's last step had no company, nothing
is queued and no batch is running, the caller takes the pool lock and steps that stream's
slot itself (``step_one``: no gathering, no splitting): 1.03-1.12x the CPU of a direct
``SessionStream.step`` on both Silero files, threads or tasks (least of 9 interleaved runs,
repeated at load averages 5-8; 1.8x with every step through the worker). Company ends it at once: a step that
finds the pool busy or a queue waiting is queued, and a stream batched with others queues
its next step too, so loaded streams batch as before. A task stepping inline runs the step
on its event loop (as a synchronous ONNX Runtime call would), and yields to the loop every
16 inline steps in a row: an awaited step that never suspends would starve the loop's other
tasks. ``inline=False`` sends every step through the worker.

Guarantees: one stream has at most one step in flight, so its steps apply in call order, and
a second concurrent step of the same stream raises ConcurrentStep (a RuntimeError). ``steps(sid)`` counts the
steps applied to a stream: an asyncio task cancelled while waiting either withdraws its step
(not yet taken into a batch: it never happens) or waits for the batch that holds it to finish
before the CancelledError propagates, so the counter always says which. ``close()`` refuses
new steps, runs every queued one and stops the worker. With ``idle_seconds``, streams idle
that long are evicted from the pool to bytes (their ``export_state``), their slots freed
(the pool shrinks), and resumed on their next step.

The pool sits behind a small adapter (pools.py): check an input, parse exported
bytes, open / close / step / export; ``ModelSlots`` for a Model, ``SessionSlots`` for an
InferenceSession. Bad input fails only its own call: it is checked in the caller's thread,
and a session step whose feeds only the graph can reject gets that error alone.
"""
from __future__ import annotations

import asyncio
import collections
import math
import threading
import time
from typing import Deque, Dict, List, Optional, Union

import numpy as np

from ..core.checks import check_positive_int
from ..core.log import log
from .pools import ModelSlots, SessionSlots
from ..errors import ConcurrentStep, DeadlineExceeded, StreamClosed, StreamsFull
from ..runtime.model import Model
from ..runtime.session import InferenceSession


class _Inline:
    """``stream.request`` while its caller runs the step itself (``Batcher._inline``): to
    the rest of the Batcher, a step already taken (no batch will take it, nobody can
    withdraw it)."""
    __slots__ = ()
    taken = True
    orphan = False


_INLINE = _Inline()
_QUEUE = object()        # _inline's answers: nothing done, queue the step for the worker;
_YIELD = object()        # nothing done, yield to the event loop and ask again
_YIELD_EVERY = 16        # inline asyncio steps in a row before the task yields to its loop


class _Stream:
    __slots__ = ("sid", "pid", "start", "blob", "steps", "request", "last_used", "alone",
                 "inline_run")

    def __init__(self, sid: int, start):
        self.sid = sid
        self.pid: Optional[int] = None   # pool handle while resident; None before the first step
        self.start = start               # state to open with (None: zeros)
        self.blob: Optional[bytes] = None   # exported state while evicted
        self.steps = 0
        self.request: Optional[_Request] = None   # the step in flight, if any
        self.last_used = time.monotonic()
        self.alone = False       # its last step ran without company: the next may run inline
        self.inline_run = 0      # inline asyncio steps since its task last yielded


class _Request:
    __slots__ = ("stream", "x", "loop", "future", "waiter", "arrived", "taken", "done",
                 "orphan", "result", "error")

    def __init__(self, stream: _Stream, x, loop):
        self.stream = stream
        self.x = x
        self.loop = loop
        if loop is None:
            self.waiter = threading.Lock()
            self.waiter.acquire()         # released by the worker when the result is in
            self.future = None
        else:
            self.waiter = None
            self.future = loop.create_future()
        self.arrived = time.monotonic()
        self.taken = False                # popped into a batch (under the pool lock)
        self.done = False
        self.orphan = False               # its asyncio task was cancelled after it was taken
        self.result = None
        self.error: Optional[BaseException] = None


def _finite(value) -> bool:
    return (isinstance(value, (int, float, np.integer, np.floating))
            and not isinstance(value, bool) and math.isfinite(value))


def _check_timeout(timeout) -> Optional[float]:
    if timeout is not None and (not _finite(timeout) or not timeout >= 0):
        raise ValueError(f"timeout must be a finite number of seconds >= 0 or None; got "
                         f"{timeout!r}")
    return timeout


def _late(sid, timeout: float) -> DeadlineExceeded:
    return DeadlineExceeded(f"the step of stream {sid} was not taken into a batch within "
                            f"{timeout} s; it did not run and the stream is as it was")


def _pool_for(source, max_streams: int, max_batch: int, state, feeds):
    """The pool adapter (pools.py) for what the Batcher was given."""
    if isinstance(source, InferenceSession):
        return SessionSlots(source, max_streams, max_batch, state, feeds)
    if isinstance(source, Model):
        if state is not None or feeds is not None:
            raise TypeError("state= and feeds= are for a Batcher over an InferenceSession; "
                            "a Model's streams take x alone")
        return ModelSlots(source, max_streams, max_batch)
    raise TypeError(f"Batcher takes an rnnengine.Model or an rnnengine.InferenceSession; got "
                    f"{type(source).__name__}")


def _settle(requests: List[_Request]) -> None:
    """On the requests' event loop: hand each waiting future its result or error."""
    for r in requests:
        future = r.future
        if future.done():
            continue
        if r.error is not None:
            future.set_exception(r.error)
        else:
            future.set_result(r.result)


class Batcher:
    """Thread-safe, asyncio-friendly steps of up to ``max_streams`` streams of a ``Model``
    or of an ``InferenceSession``.

    max_batch: most streams stepped together. max_delay_us: longest a step waits for company
    once it is queued. idle_seconds: evict streams idle that long to bytes (None: never).
    inline: a stream whose last step had no company steps on the caller's own thread (a
    task: on its event loop) while nothing is queued or running, without the worker
    (False: every step goes through the worker).

    Over a Model, ``step(sid, x)`` takes x ``(I,)`` and returns y ``(Hout,)``, exactly what
    ``model.stream(batch=1).step`` gives. Over a session, ``step(sid, feeds)`` takes a dict
    of that stream's inputs at batch 1 (not its state, not the fixed feeds) and returns the
    list of non-state outputs, exactly what ``sess.stream(state, feeds).step`` gives; the
    state pairs (found, or ``state={"out": "in"}``) are the stream's state and ``feeds=``
    the inputs fixed for every stream (Silero's ``{"sr": np.array(16000)}``).

    The pool holds the streams that are resident (not evicted): it grows to at most
    ``max_streams`` slots and shrinks again when eviction or closes empty it. Close the
    batcher (``close()`` or a ``with`` block): its worker thread keeps it alive until then."""

    def __init__(self, model: Union[Model, InferenceSession], max_batch: int = 64,
                 max_delay_us: float = 500, idle_seconds: Optional[float] = None,
                 max_streams: int = 1024, *, state: Optional[Dict[str, str]] = None,
                 feeds: Optional[dict] = None, inline: bool = True):
        self.max_batch = check_positive_int("max_batch", max_batch)
        self.max_streams = check_positive_int("max_streams", max_streams)
        if not _finite(max_delay_us) or not max_delay_us >= 0:
            raise ValueError(f"max_delay_us must be a finite number >= 0; got {max_delay_us!r}")
        if idle_seconds is not None and (not _finite(idle_seconds) or not idle_seconds > 0):
            raise ValueError(f"idle_seconds must be a finite number > 0 or None; got "
                             f"{idle_seconds!r}")
        self.max_delay_us = max_delay_us
        self.idle_seconds = idle_seconds
        self.inline = bool(inline)
        self.model = model
        self._pool = _pool_for(model, self.max_streams, self.max_batch, state, feeds)
        self._delay = max_delay_us * 1e-6
        self._streams: Dict[int, _Stream] = {}
        self._next_sid = 0
        self._queue: Deque[_Request] = collections.deque()
        self._closing = False
        self._stats = dict(batches=0, steps=0, largest_batch=0, evictions=0, resumes=0)
        self._inlined = 0        # steps run inline: batches of one, counted apart (cheaper)
        self._next_eviction = time.monotonic() + (idle_seconds or 0)
        # Lock order: _pool_lock, then _cond. _pool_lock guards the pool and is held from
        # taking a batch to recording its results, so whoever holds it sees no step half done.
        self._pool_lock = threading.Lock()
        self._mutex = threading.Lock()      # _cond's lock, taken bare where nobody waits
        self._cond = threading.Condition(self._mutex)
        self._worker = threading.Thread(target=self._serve, name="rnnengine-batcher",
                                        daemon=True)
        self._start()

    def _start(self) -> None:
        """Start the worker (bench/bench_batcher.py replaces this to measure leader/follower)."""
        self._worker.start()

    def __repr__(self) -> str:
        return (f"rnnengine.Batcher({len(self._streams)}/{self.max_streams} streams, "
                f"max_batch={self.max_batch}, max_delay_us={self.max_delay_us}, "
                f"{self.model!r})")

    def __enter__(self) -> "Batcher":
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def __len__(self) -> int:
        return len(self._streams)

    def __contains__(self, sid) -> bool:
        return sid in self._streams

    @property
    def stats(self) -> dict:
        """Counters: batches run, steps applied, largest batch, evictions, resumes, inline
        (steps run on their caller's thread, each counted as a batch of one too); gauges:
        resident (streams holding a pool slot), slots (the pool's size), queued (steps
        waiting for a batch). The gauges are read
        without waiting for a running batch (the pool lock), so they may be one batch old."""
        with self._cond:
            stats = dict(self._stats, inline=self._inlined, resident=self._pool.resident,
                         slots=self._pool.capacity, queued=len(self._queue))
        stats["batches"] += stats["inline"]
        stats["steps"] += stats["inline"]
        if stats["inline"]:
            stats["largest_batch"] = max(stats["largest_batch"], 1)
        return stats

    # -- streams --------------------------------------------------------------------------
    def _stream(self, sid) -> _Stream:
        """The open stream ``sid`` (call with _cond held)."""
        if not isinstance(sid, (int, np.integer)) or isinstance(sid, bool):
            raise TypeError(f"a stream id is an int from Batcher.open(); got {type(sid).__name__}")
        stream = self._streams.get(int(sid))
        if stream is None:
            raise StreamClosed(f"stream id {sid} was closed" if 0 <= sid < self._next_sid else
                             f"unknown stream id {sid!r}: ids come from Batcher.open() or "
                             f"Batcher.resume() of this batcher")
        return stream

    def _check_open(self) -> None:
        if self._closing:
            raise StreamClosed("the Batcher is closed")

    def open(self) -> int:
        """A new stream id, starting from the zero state. StreamsFull (a RuntimeError) when
        ``max_streams`` streams are open."""
        return self._add(None)

    def resume(self, data) -> int:
        """A new stream continuing from ``export_state`` bytes (of a Batcher, Pool or batch-1
        Stream of the same model; of a Batcher, SessionPool or SessionStream of the same
        session). ValueError if they do not fit."""
        return self._add(self._pool.parse(data))

    def _add(self, start) -> int:
        with self._cond:
            self._check_open()
            if len(self._streams) >= self.max_streams:
                log.warning("Batcher refused a stream: all %d streams are open",
                            self.max_streams)
                raise StreamsFull(f"the Batcher is full: all {self.max_streams} streams are "
                                   f"open; close one, or create it with a larger max_streams")
            sid = self._next_sid
            self._next_sid += 1
            self._streams[sid] = _Stream(sid, start)
            return sid

    def close(self, sid=None) -> None:
        """``close(sid)``: end one stream; a step of it still queued fails with StreamClosed,
        one already running finishes first. ``close()``: close the batcher: new steps are
        refused, every queued step runs and gets its result, the worker stops. Streams can
        still be exported afterwards (to move them elsewhere)."""
        if sid is None:
            self._shutdown()
            return
        with self._pool_lock:
            with self._cond:
                stream = self._stream(sid)
                del self._streams[stream.sid]
                request = stream.request
                if request is not None and not request.taken:
                    self._queue.remove(request)
                    request.error = StreamClosed(f"stream {sid} was closed while its step "
                                                 f"was waiting")
                    request.done = True
                    waiting = [request]
                else:
                    waiting = []
                self._cond.notify_all()     # the worker waiting for company: one stream fewer
            if stream.pid is not None:
                self._pool.close(stream.pid)
        self._wake(waiting)

    def steps(self, sid) -> int:
        """How many steps have been applied to the stream (a step still in flight is counted
        once its batch has run)."""
        with self._cond:
            return self._stream(sid).steps

    def export_state(self, sid) -> bytes:
        """The stream's state after its ``steps(sid)`` applied steps, as bytes
        (``rnnengine.runtime.state_io``); the stream stays open. ``resume`` continues it here or in
        any process of the same model."""
        with self._pool_lock:   # a stream's slot and blob change only under this lock
            with self._cond:
                stream = self._stream(sid)
            if stream.pid is not None:
                return self._pool.export(stream.pid)
            if stream.blob is not None:
                return stream.blob
            # Never stepped: its starting state (zeros, or what resume() was given).
            pid = self._pool.open(stream.start)
            try:
                return self._pool.export(pid)
            finally:
                self._pool.close(pid)

    # -- steps ----------------------------------------------------------------------------
    def _submit(self, sid, x, loop) -> _Request:
        """Queue the step (``x`` checked) for the worker."""
        with self._cond:
            self._check_open()
            stream = self._stream(sid)
            if stream.request is not None and not stream.request.orphan:
                raise ConcurrentStep(
                    f"stream {sid} already has a step in progress (called concurrently from "
                    f"another thread or task): the steps of one stream are sequential; wait "
                    f"for the first step's result before the next")
            request = stream.request = _Request(stream, x, loop)
            stream.inline_run = 0             # its task yields while it waits
            self._queue.append(request)
            n = len(self._queue)
            # Wake the worker only when it may be waiting for exactly this: a first request,
            # or a batch that is now complete. Otherwise its timed wait ends on its own.
            if n == 1 or n >= self.max_batch or n >= len(self._streams):
                self._cond.notify()
        return request

    def step(self, sid, x, timeout: Optional[float] = None):
        """One timestep of stream ``sid``: x ``(I,)`` -> y ``(Hout,)`` (a session: feeds
        ``{name: array}`` at batch 1 -> list of the non-state outputs). Blocks the calling
        thread until its batch has run. Bad input raises here (ValueError/TypeError) and
        leaves the stream as it was. ``timeout`` (seconds): DeadlineExceeded if no batch
        has taken the step by then; it never runs. A step already in a running batch is
        waited for and returned."""
        if timeout is not None:
            timeout = _check_timeout(timeout)
        x = self._pool.check_input(x)
        if self.inline:
            y = self._inline(sid, x, False)
            if y is not _QUEUE:
                return y
        request = self._submit(sid, x, None)
        if not request.waiter.acquire(timeout=-1 if timeout is None else timeout):
            if self._withdraw(request, orphan=False):
                raise _late(sid, timeout)
            request.waiter.acquire()
        if request.error is not None:
            raise request.error
        return request.result

    async def step_async(self, sid, x, timeout: Optional[float] = None):
        """``step`` for asyncio tasks: the event loop keeps running while the batch waits and
        computes. Cancelled while waiting, the step either never happens or has happened
        before the CancelledError propagates; ``steps(sid)`` tells which. ``timeout`` as
        for ``step``."""
        if timeout is not None:
            timeout = _check_timeout(timeout)
        x = self._pool.check_input(x)
        if self.inline:
            y = self._inline(sid, x, True)
            if y is _YIELD:       # a run of inline steps: let the loop's other tasks go first
                await asyncio.sleep(0)
                y = self._inline(sid, x, True)
            if y is not _QUEUE:
                return y
        loop = asyncio.get_running_loop()
        request = self._submit(sid, x, loop)
        try:
            if timeout is None:
                return await request.future
            try:
                return await asyncio.wait_for(asyncio.shield(request.future), timeout)
            except TimeoutError:
                if self._withdraw(request, orphan=False):
                    raise _late(sid, timeout) from None
                return await request.future
        except asyncio.CancelledError:
            if not self._withdraw(request):
                await self._settled(request, loop)
            raise

    def _inline(self, sid, x, task: bool):
        """Run the step on the calling thread if batching has nothing to gain: the stream's
        last step had no company, nothing is queued and no batch is running. Else (nothing
        done) _QUEUE: go through the worker; or, for a ``task`` after a run of inline steps,
        _YIELD: yield to the event loop first (an awaited step that never suspends would
        keep the loop's other tasks from running, and from stepping their streams)."""
        hint = self._streams.get(sid) if sid.__class__ is int else None
        if (hint is not None and not hint.alone) or not self._pool_lock.acquire(False):
            return _QUEUE      # (a stream batched last time: no locks taken to say so)
        try:
            with self._mutex:
                if self._closing:
                    self._check_open()
                stream = self._streams.get(sid) if sid.__class__ is int else None
                if stream is None:
                    stream = self._stream(sid)      # another type of id, or an error
                if not stream.alone or self._queue or stream.request is not None:
                    return _QUEUE      # (a step in flight: _submit says ConcurrentStep)
                if task:
                    if stream.inline_run >= _YIELD_EVERY:
                        stream.inline_run = 0
                        return _YIELD
                    stream.inline_run += 1
                stream.request = _INLINE
            # What follows is written without _cond: every writer of these holds the pool
            # lock, and a reader (steps(), stats, _submit) sees the value before or after.
            try:
                if stream.pid is None:
                    self._make_resident(stream)
                y = self._pool.step_one(stream.pid, x)
            finally:
                stream.request = None
                stream.last_used = time.monotonic()
            stream.steps += 1
            self._inlined += 1
            return y
        finally:
            self._pool_lock.release()

    def _withdraw(self, request: _Request, orphan: bool = True) -> bool:
        """Take a request back if no batch has it yet (cancelled, or past its deadline);
        else, with ``orphan``, mark it one (the stream may take its next step meanwhile).
        True when withdrawn."""
        with self._cond:
            if not request.taken:
                self._queue.remove(request)
                request.stream.request = None
                return True
            request.orphan = orphan
            return False

    async def _settled(self, request: _Request, loop) -> None:
        """Wait until the batch holding ``request`` has run (its task was cancelled; further
        cancellations do not cut this wait short)."""
        with self._cond:
            if request.done:
                return
            request.future = future = loop.create_future()   # _settle reads it when it runs
        while not future.done():
            try:
                await asyncio.shield(future)
            except asyncio.CancelledError:
                continue
            except Exception:
                break
        if future.done() and not future.cancelled():
            future.exception()   # retrieved: the caller is gone, the error has no reader

    # -- the worker -----------------------------------------------------------------------
    def _serve(self) -> None:
        try:
            while self._gather():
                self._run()
                if self.idle_seconds is not None and time.monotonic() >= self._next_eviction:
                    self._evict_idle()
        except BaseException as error:   # a bug: fail every waiter rather than hang it
            with self._cond:
                self._closing = True
                waiting = list(self._queue)
                self._queue.clear()
                for request in waiting:
                    request.error = RuntimeError(f"the Batcher's worker failed: {error!r}")
                    request.done = True
            self._wake(waiting)
            raise

    def _gather(self) -> bool:
        """Wait for a batch to be worth running (or for eviction to be due). False once the
        batcher is closed and nothing is queued."""
        with self._cond:
            while not self._queue:
                if self._closing:
                    return False
                if self.idle_seconds is None:
                    self._cond.wait()
                else:
                    left = self._next_eviction - time.monotonic()
                    if left <= 0:
                        return True
                    self._cond.wait(left)
            deadline = self._queue[0].arrived + self._delay
            while (self._queue and len(self._queue) < min(self.max_batch, len(self._streams))
                   and not self._closing):
                left = deadline - time.monotonic()
                if left <= 0:
                    break
                self._cond.wait(left)
        return True

    def _run(self) -> None:
        """Take up to max_batch queued requests and run them as one pool step."""
        with self._pool_lock:
            with self._cond:
                count = min(self.max_batch, len(self._queue))
                batch = [self._queue.popleft() for _ in range(count)]
                for request in batch:
                    request.taken = True
            if not batch:
                return
            outcomes = self._step_batch(batch)
            now = time.monotonic()
            done = 0
            with self._cond:
                for request, outcome in zip(batch, outcomes):
                    stream = request.stream
                    if isinstance(outcome, BaseException):
                        request.error = outcome
                    else:
                        request.result = outcome
                        stream.steps += 1
                        done += 1
                    request.done = True
                    stream.last_used = now
                    stream.alone = len(batch) == 1
                    if stream.request is request:
                        stream.request = None
                stats = self._stats
                stats["batches"] += 1
                stats["steps"] += done
                stats["largest_batch"] = max(stats["largest_batch"], len(batch))
        self._wake(batch)

    def _step_batch(self, batch: List[_Request]) -> list:
        """One pool step of the batch (pool lock held) -> per request its output or the
        exception for its caller: its own (a slot it could not get, feeds the graph
        rejected), or a RuntimeError when the whole pool step failed (e.g. MemoryError)."""
        outcomes: list = [None] * len(batch)
        ready = []
        for j, request in enumerate(batch):
            try:
                self._make_resident(request.stream)
                ready.append(j)
            except Exception as error:      # e.g. resumed state that does not fit the pool
                outcomes[j] = error
        if not ready:
            return outcomes
        try:
            ys = self._pool.step([batch[j].stream.pid for j in ready], [batch[j].x for j in ready])
        except Exception as failure:
            ys = [RuntimeError(f"the batched step failed: {failure!r}")] * len(ready)
        for j, y in zip(ready, ys):
            outcomes[j] = y
        return outcomes

    def _make_resident(self, stream: _Stream) -> None:
        """Give the stream a pool slot (first step, or after eviction). Pool lock held."""
        if stream.pid is not None:
            return
        if stream.blob is not None:
            stream.pid = self._pool.open(self._pool.parse(stream.blob))
            stream.blob = None
            with self._cond:
                self._stats["resumes"] += 1
            log.info("Batcher resumed evicted stream %d", stream.sid)
        else:
            stream.pid = self._pool.open(stream.start)
            stream.start = None

    def _evict_idle(self) -> None:
        """Export the streams idle for idle_seconds to bytes and free their pool slots (the
        pool shrinks once a quarter of its slots or fewer are in use)."""
        now = time.monotonic()
        self._next_eviction = now + max(self.idle_seconds / 4, 0.001)
        with self._pool_lock:
            with self._cond:
                idle = [s for s in self._streams.values() if s.pid is not None
                        and s.request is None and now - s.last_used >= self.idle_seconds]
            # Outside _cond, so callers keep queueing while states are copied; a step queued
            # meanwhile for one of these streams waits for _pool_lock and resumes it.
            for stream in idle:
                stream.blob = self._pool.export(stream.pid)
                self._pool.close(stream.pid)
                stream.pid = None
            with self._cond:
                self._stats["evictions"] += len(idle)
        if idle:
            log.info("Batcher evicted %d stream(s) idle for %s s: %s", len(idle),
                     self.idle_seconds, [s.sid for s in idle])

    @staticmethod
    def _wake(requests: List[_Request]) -> None:
        """Wake the callers of finished requests: threads one by one, event loops once each."""
        by_loop: Dict[asyncio.AbstractEventLoop, List[_Request]] = {}
        for request in requests:
            if request.loop is None:
                request.waiter.release()
            else:
                by_loop.setdefault(request.loop, []).append(request)
        for loop, waiting in by_loop.items():
            try:
                loop.call_soon_threadsafe(_settle, waiting)
            except RuntimeError:   # the loop was closed: nobody is waiting on it any more
                pass

    def _shutdown(self) -> None:
        with self._cond:
            self._closing = True
            self._cond.notify_all()
        if self._worker.is_alive() and threading.current_thread() is not self._worker:
            self._worker.join()

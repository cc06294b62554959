"""Streams of a recurrent model served by Ray Serve across replicas (and machines): each
replica steps its streams through one ``rnnengine.Batcher``; requests carry a stream key and
are routed with session affinity; a stream moves between replicas by its exported state, and
survives a replica's crash from its last checkpoint.

    import ray
    from ray import serve
    from stream_deployment import StreamClient, build_app

    ray.init()
    handle = serve.run(build_app("model.npz", min_replicas=1, max_replicas=4), name="streams")
    y = StreamClient(handle, key).step(x)["y"]            # x (I,) -> dict
    # a whole exported model (InferenceSession), fixed feeds given once:
    app = build_app("silero_vad.onnx", feeds={"sr": np.array(16000)})
    out = StreamClient(handle, key).step({"input": chunk})["y"]   # the non-state outputs

Models: an ``.onnx`` file is served whole, by ``rnnengine.InferenceSession`` (state pairs
found automatically or given as ``state={"out": "in"}``, fixed feeds as ``feeds=``); a step
takes a dict of one stream's inputs (batch 1) and its "y" is the list of the non-state
outputs. Any other file (``.npz``, ``.safetensors``) is loaded with ``rnnengine.load``; a
step takes x ``(I,)`` and "y" is ``(Hout,)``. ``session=True/False`` overrides the choice.

Routing: the deployment uses Ray Serve's consistent-hash request router on the handle's
``session_id`` with no fallback replica, so every request of a stream goes to the replica
that holds it while the set of replicas is unchanged. Always pass the stream key as
``session_id`` (``StreamClient`` below does). That router is experimental
(``ray.serve.experimental``, configured through the alpha ``RequestRouterConfig``; tested
with Ray 2.60): Ray Serve has no stable session-affinity API. Affinity saves work only; a
step that reaches another replica claims the stream through the directory (below), so it
is still exact.

Batched requests: ``step_many(keys, xs)`` steps many streams in one request (one Batcher
pass for all of them). ``StreamGroup`` sends a fixed set of keys that way, with the group's
name as ``session_id``, so the whole group lives on one replica; step a key through one
group only (through another route it is still exact, but moves).

Moving streams: a named actor, ``StreamDirectory`` (stream_directory.py), records which
replica holds each stream or holds its exported state ("parked"). A replica receiving a
stream it does not hold claims it: a new key starts from zeros; a parked one resumes from its
bytes; one still held by another replica is asked for (that replica exports it at once and
parks it) and the claim waits for it. So when the autoscaler adds replicas, the streams whose
hash moved follow on their next step; when it removes one (or a redeploy replaces it), Serve
calls its ``__del__`` after its last request, which parks all its streams, and the replicas
that now own them resume them.

Crashes: every ``checkpoint_every`` steps of a stream (and when it is claimed) the replica
sends its exported state to the directory, in the background, batched. When a replica dies
without shutting down, the next claim of one of its streams finds it dead (a ping of its
actor) and resumes the stream from its last checkpoint: that step's dict says
``"resumed_from": s``, the number of steps the restored state had taken (the step's own
input is applied on top of it; the steps after ``s`` that the dead replica took are lost,
at most ``checkpoint_every`` plus those in flight). With ``checkpoint_every=None`` a crashed
stream is gone: its next step raises ``StreamLost`` (an ``rnnengine.Error``) and the key
starts over. A step whose request died with its replica raises Ray's ``ActorDiedError``;
``StreamClient`` sends it again (it never ran on the state the stream now continues from).

Abandoned streams: with ``idle_ttl_s``, a key not stepped for that long is closed: its
Batcher slot freed and its directory records removed (a later step starts a new stream);
parked and recovered states nobody claims expire the same way.
"""
from __future__ import annotations

import asyncio
import contextlib
import importlib.util
import logging
import time
from typing import Dict, List, Optional

import numpy as np
import ray
from ray import serve
from ray.serve.config import RequestRouterConfig

import rnnengine
from stream_directory import DIRECTORY, StreamLost, directory

__all__ = ["StreamClient", "StreamGroup", "StreamLost", "StreamReplica", "build_app",
           "directory"]

log = logging.getLogger(__name__)
ROUTER = "ray.serve.experimental.consistent_hash_router.ConsistentHashRouter"
if importlib.util.find_spec(ROUTER.rpartition(".")[0]) is None:
    raise ImportError(f"this recipe needs Ray Serve's experimental {ROUTER} (Ray 2.60 has it); "
                      f"Ray {ray.__version__} does not")


class KeyLocks:
    """One asyncio lock per stream key, kept only while someone uses it (keys come and go)."""

    def __init__(self):
        self._locks: Dict[str, list] = {}        # key -> [lock, users]

    def busy(self, key: str) -> bool:
        return key in self._locks

    @contextlib.asynccontextmanager
    async def hold(self, keys):
        """Hold the locks of ``keys``, taken in sorted order so two calls never deadlock."""
        entries = []
        for key in sorted(set(keys)):
            entry = self._locks.setdefault(key, [asyncio.Lock(), 0])
            entry[1] += 1
            entries.append((key, entry))
        taken = []
        try:
            for _, entry in entries:
                await entry[0].acquire()
                taken.append(entry[0])
            yield
        finally:
            for lock in taken:
                lock.release()
            for key, entry in entries:
                entry[1] -= 1
                if entry[1] == 0:
                    del self._locks[key]


@serve.deployment(
    ray_actor_options={"num_cpus": 0.5},
    max_ongoing_requests=1024,               # many streams' steps at once: the Batcher batches them
    request_router_config=RequestRouterConfig(request_router_class=ROUTER,
                                              request_router_kwargs={"num_fallback_replicas": 0}),
)
class StreamReplica:
    def __init__(self, model_path: str, max_delay_us: float = 500, max_streams: int = 4096,
                 claim_timeout_s: float = 60.0, checkpoint_every: Optional[int] = 8,
                 idle_ttl_s: Optional[float] = None, max_batch: int = 64,
                 session: Optional[bool] = None, state: Optional[Dict[str, str]] = None,
                 feeds: Optional[dict] = None, directory_name: str = DIRECTORY):
        if checkpoint_every is not None and not (isinstance(checkpoint_every, int)
                                                 and checkpoint_every > 0):
            raise ValueError(f"checkpoint_every must be a positive int or None; got "
                             f"{checkpoint_every!r}")
        if idle_ttl_s is not None and not idle_ttl_s > 0:
            raise ValueError(f"idle_ttl_s must be > 0 seconds or None; got {idle_ttl_s!r}")
        if session is None:
            session = str(model_path).lower().endswith(".onnx")
        if session:
            self.model = rnnengine.InferenceSession(model_path)
            extra = dict(state=state, feeds=feeds)
        else:
            if state is not None or feeds is not None:
                raise TypeError("state= and feeds= are for a whole model (an .onnx file "
                                "served by InferenceSession)")
            self.model = rnnengine.load(model_path)
            extra = {}
        self.session = session
        self.batcher = rnnengine.Batcher(self.model, max_batch=max_batch,
                                         max_delay_us=max_delay_us, max_streams=max_streams,
                                         **extra)
        self.name = serve.get_replica_context().replica_id.unique_id
        self.directory = directory(directory_name)
        self.directory.register.remote(self.name, ray.get_runtime_context().current_actor)
        self.claim_timeout_s = claim_timeout_s
        self.checkpoint_every = checkpoint_every
        self.idle_ttl_s = idle_ttl_s
        self.streams: Dict[str, int] = {}         # key -> Batcher id
        self.offset: Dict[str, int] = {}          # key -> steps taken on earlier replicas
        self.last: Dict[str, float] = {}          # key -> when it was last stepped
        self.locks = KeyLocks()
        self.unsaved: Dict[str, tuple] = {}       # key -> (state, steps) not yet sent
        self.save_due = asyncio.Event()
        self.tasks: List[asyncio.Task] = []

    def _start(self) -> None:
        """The background tasks, on the replica's event loop (started by the first request)."""
        loop = asyncio.get_running_loop()
        jobs = [self._release_wanted, self._send_checkpoints]
        if self.idle_ttl_s is not None:
            jobs.append(self._expire_idle)
        self.tasks = [loop.create_task(self._forever(job)) for job in jobs]

    async def _forever(self, job) -> None:
        """Run a background loop; an error (the directory restarting, say) is logged and the
        loop starts again a moment later rather than dying silently."""
        while True:
            try:
                await job()
            except asyncio.CancelledError:
                raise
            except Exception:
                log.exception("replica %s: %s failed; restarting it", self.name, job.__name__)
                await asyncio.sleep(1.0)

    # -- requests -------------------------------------------------------------------------
    async def step(self, key: str, x) -> dict:
        """One timestep of stream ``key``: x ``(I,)`` (a whole model: {input name: array},
        batch 1) -> {"y": output (a whole model: the list of non-state outputs), "steps":
        steps of the stream so far (all replicas), "replica": this replica's id,
        "resumed_from": None, or the step count of the checkpoint the stream was restored
        from after its replica crashed}."""
        async with self.locks.hold([key]):
            return await self._step(key, x)

    async def step_many(self, keys: List[str], xs) -> list:
        """One timestep of each stream in ``keys`` (distinct), ``xs[j]`` for ``keys[j]``
        (a model's: an ``(n, I)`` array will do), all in one Batcher pass -> per key what
        ``step`` returns, or the exception its step raised (the others are unaffected)."""
        keys = list(keys)
        if len(set(keys)) != len(keys):
            raise ValueError("step_many takes each key at most once (a stream's steps are "
                             "sequential)")
        if len(xs) != len(keys):
            raise ValueError(f"step_many takes one input per key: {len(keys)} keys, "
                             f"{len(xs)} inputs")
        async with self.locks.hold(keys):
            return await asyncio.gather(*(self._step(k, x) for k, x in zip(keys, xs)),
                                        return_exceptions=True)

    async def close(self, key: str) -> None:
        """End stream ``key`` wherever it is: here, on another replica, parked or saved."""
        async with self.locks.hold([key]):
            self._drop(key)
            await self.directory.forget.remote(key, self.name)

    async def stats(self) -> dict:
        """This replica: its id, streams open in its Batcher and the Batcher's counters."""
        return dict(self.batcher.stats, open=len(self.batcher), replica=self.name)

    # -- streams --------------------------------------------------------------------------
    async def _step(self, key: str, x) -> dict:
        """A step of ``key`` (its lock held)."""
        sid, resumed = await self._sid(key)
        if not self.session:
            x = np.asarray(x, np.float32)
        y = await self.batcher.step_async(sid, x)
        steps = self.offset[key] + self.batcher.steps(sid)
        self.last[key] = time.monotonic()
        if self.checkpoint_every is not None and steps % self.checkpoint_every == 0:
            self._checkpoint(key, sid, steps)
        return {"y": y, "steps": steps, "replica": self.name, "resumed_from": resumed}

    async def _sid(self, key: str):
        """-> (the Batcher id of ``key`` here, the checkpoint's steps if it was just restored
        after a crash, else None), claiming the stream first if needed (lock held)."""
        if not self.tasks:
            self._start()
        sid = self.streams.get(key)
        if sid is not None:
            return sid, None
        keep = self.checkpoint_every is not None
        claim = await self.directory.claim.remote(key, self.name, self.claim_timeout_s, keep)
        if claim["status"] == "lost":
            raise StreamLost(f"stream {key!r} was lost: replica {claim['dead']} died holding "
                             f"it and no checkpoint was saved; its next step starts a new "
                             f"stream")
        data = claim["data"]
        sid = self.batcher.open() if data is None else self.batcher.resume(data)
        self.streams[key], self.offset[key] = sid, claim["steps"]
        self.last[key] = time.monotonic()
        return sid, claim["steps"] if claim["status"] == "resumed" else None

    def _checkpoint(self, key: str, sid: int, steps: int) -> None:
        self.unsaved[key] = (self.batcher.export_state(sid), steps)
        self.save_due.set()

    def _drop(self, key: str) -> None:
        """Forget ``key`` here and free its Batcher slot (its lock held)."""
        sid = self.streams.pop(key, None)
        self.offset.pop(key, None)
        self.last.pop(key, None)
        self.unsaved.pop(key, None)
        if sid is not None:
            self.batcher.close(sid)

    async def _park(self, key: str) -> None:
        """Export ``key`` to the directory and drop it here (its lock held)."""
        sid = self.streams.get(key)
        if sid is None:
            return
        steps = self.offset[key] + self.batcher.steps(sid)
        data = self.batcher.export_state(sid)
        self._drop(key)
        await self.directory.park.remote(key, self.name, data, steps)

    # -- background -----------------------------------------------------------------------
    async def _release_wanted(self) -> None:
        while True:
            for key, action in await self.directory.wanted_from.remote(self.name):
                async with self.locks.hold([key]):
                    if action == "park":
                        await self._park(key)
                    else:
                        self._drop(key)          # closed through another replica

    async def _send_checkpoints(self) -> None:
        """Checkpoints go to the directory in batches, one call in flight at a time."""
        while True:
            await self.save_due.wait()
            self.save_due.clear()
            saves, self.unsaved = self.unsaved, {}
            await self.directory.checkpoint.remote(self.name, saves)

    async def _expire_idle(self) -> None:
        ttl = self.idle_ttl_s
        while True:
            await asyncio.sleep(max(ttl / 4, 0.05))
            now = time.monotonic()
            for key in [k for k, t in self.last.items()
                        if now - t >= ttl and not self.locks.busy(k)]:
                async with self.locks.hold([key]):
                    if key in self.last and time.monotonic() - self.last[key] >= ttl:
                        self._drop(key)
                        await self.directory.forget.remote(key, self.name)
            await self.directory.expire.remote(ttl)

    async def __del__(self):
        """Serve calls this when the replica shuts down, after its last request: park every
        stream so the replicas that own them next can resume them."""
        for task in self.tasks:
            task.cancel()
        for key in list(self.streams):
            async with self.locks.hold([key]):
                await self._park(key)
        await self.directory.leave.remote(self.name)
        self.batcher.close()


def build_app(model_path: str, min_replicas: int = 1, max_replicas: int = 4,
              autoscaling: Optional[dict] = None, deployment: Optional[dict] = None,
              **options):
    """The Serve application: ``StreamReplica`` autoscaled between ``min_replicas`` and
    ``max_replicas`` on the number of steps in flight (``autoscaling`` adds Serve
    AutoscalingConfig fields; ``deployment`` other ``.options()``, e.g.
    ``health_check_period_s``); ``options`` go to ``StreamReplica``."""
    config = {"target_ongoing_requests": 8, **(autoscaling or {}),
              "min_replicas": min_replicas, "max_replicas": max_replicas}
    return StreamReplica.options(autoscaling_config=config,
                                 **(deployment or {})).bind(model_path, **options)


def _replica_died(error: BaseException) -> bool:
    return isinstance(error, ray.exceptions.RayActorError) or isinstance(
        getattr(error, "cause", None), ray.exceptions.RayActorError)


def _retrying(call, timeout_s: float, retries: int):
    """``call().result()``, sent again when its replica died before answering: the request's
    effect died with the replica, and the stream continues from its checkpoint."""
    for attempt in range(retries + 1):
        try:
            return call().result(timeout_s=timeout_s)
        except Exception as error:
            if attempt == retries or not _replica_died(error):
                raise


class StreamClient:
    """Steps of one stream through a Serve handle, always with its key as session_id."""

    def __init__(self, handle, key: str, retries: int = 3):
        self.key = key
        self.retries = retries
        self._step = handle.options(session_id=key, method_name="step")
        self._close = handle.options(session_id=key, method_name="close")

    def step_async(self, x):
        """A ``DeploymentResponse``; ``.result()`` gives the step's dict (no retry)."""
        return self._step.remote(self.key, x)

    def step(self, x, timeout_s: float = 60.0) -> dict:
        return _retrying(lambda: self.step_async(x), timeout_s, self.retries)

    def close(self, timeout_s: float = 60.0) -> None:
        _retrying(lambda: self._close.remote(self.key), timeout_s, self.retries)


class StreamGroup:
    """Steps of a fixed set of streams, all in one request per timestep (``step_many``),
    routed by the group's ``name`` so the group stays on one replica."""

    def __init__(self, handle, name: str, keys: List[str], retries: int = 3):
        self.name = name
        self.keys = list(keys)
        self.retries = retries
        self._step = handle.options(session_id=name, method_name="step_many")
        self._close = handle.options(session_id=name, method_name="close")

    def step_async(self, xs):
        """A ``DeploymentResponse``; ``.result()`` gives the list of per-key results."""
        return self._step.remote(self.keys, xs)

    def step(self, xs, timeout_s: float = 60.0) -> list:
        """``xs[j]`` for ``keys[j]`` -> per key the step's dict or the exception it raised."""
        return _retrying(lambda: self.step_async(xs), timeout_s, self.retries)

    def close(self, timeout_s: float = 60.0) -> None:
        for key in self.keys:
            _retrying(lambda: self._close.remote(key), timeout_s, self.retries)

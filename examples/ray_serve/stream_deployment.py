"""Streams of a recurrent model served by Ray Serve across replicas (and machines): each
replica steps its streams through one ``rnnengine.Batcher``; requests carry a stream key and
are routed with session affinity; a stream moves between replicas by its exported state.

    import ray
    from ray import serve
    from stream_deployment import StreamDirectory, build_app

    ray.init()
    handle = serve.run(build_app("model.npz", min_replicas=1, max_replicas=4), name="streams")
    y = handle.options(session_id=key).step.remote(key, x).result()   # x (I,) -> dict

Routing: the deployment uses Ray Serve's consistent-hash request router on the handle's
``session_id`` with no fallback replica, so every request of a stream goes to the replica
that holds it while the set of replicas is unchanged. Always pass the stream key as
``session_id`` (``StreamClient`` below does). That router is experimental
(``ray.serve.experimental``, configured through the alpha ``RequestRouterConfig``; tested
with Ray 2.60): Ray Serve has no stable session-affinity API. Affinity saves work only; a
step that reaches another replica claims the stream through the directory (below), so it
is still exact.

Moving streams: a named actor, ``StreamDirectory``, records which replica holds each stream
or holds its exported state ("parked"). A replica receiving a stream it does not hold claims
it: a new key starts from zeros; a parked one resumes from its bytes; one still held by
another replica is asked for (that replica exports it at once and parks it) and the claim
waits for it. So when the autoscaler adds replicas, the streams whose hash moved follow on
their next step; when it removes one (or a redeploy replaces it), Serve calls its ``__del__``
after its last request, which parks all its streams, and the replicas that now own them
resume them.
Nothing is lost unless a replica dies without shutting down (a crash): its streams cannot be
recovered, and a claim for one fails after ``claim_timeout_s``.
"""
from __future__ import annotations

import asyncio
import collections
import importlib.util
import time
from typing import Dict, Optional

import numpy as np
import ray
from ray import serve
from ray.serve.config import RequestRouterConfig

import rnnengine

DIRECTORY = "rnnengine-stream-directory"
ROUTER = "ray.serve.experimental.consistent_hash_router.ConsistentHashRouter"
if importlib.util.find_spec(ROUTER.rpartition(".")[0]) is None:
    raise ImportError(f"this recipe needs Ray Serve's experimental {ROUTER} (Ray 2.60 has it); "
                      f"Ray {ray.__version__} does not")


@ray.remote(num_cpus=0)
class StreamDirectory:
    """Where each stream is: held by a replica (``owner``) or parked as exported state.
    An async actor: claims wait without blocking each other."""

    def __init__(self):
        self.owner: Dict[str, str] = {}
        self.parked: Dict[str, tuple] = {}                  # key -> (state bytes, steps)
        self.wanted = collections.defaultdict(set)          # replica -> keys others claim
        self.changed = collections.defaultdict(asyncio.Event)   # replica / key -> wake-up

    def _notify(self, name: str) -> None:
        self.changed[name].set()

    async def claim(self, key: str, replica: str, timeout_s: float):
        """Give ``key`` to ``replica`` -> ``(state bytes or None, steps so far)``; waits while
        another replica still holds it (that replica is asked to park it)."""
        deadline = time.monotonic() + timeout_s
        while True:
            if key in self.parked:
                self.owner[key] = replica
                return self.parked.pop(key)
            owner = self.owner.get(key)
            if owner is None or owner == replica:
                self.owner[key] = replica
                return None, 0
            self.wanted[owner].add(key)
            self._notify(owner)
            event = self.changed[key]
            event.clear()
            try:
                await asyncio.wait_for(event.wait(), max(0.0, deadline - time.monotonic()))
            except asyncio.TimeoutError:
                raise TimeoutError(f"stream {key!r} is held by replica {owner} which did not "
                                   f"release it within {timeout_s} s") from None

    async def park(self, key: str, replica: str, data: bytes, steps: int) -> None:
        """``replica`` gives ``key`` up, with its exported state."""
        if self.owner.get(key) == replica:
            del self.owner[key]
            self.parked[key] = (data, steps)
            self._notify(key)

    async def forget(self, key: str, replica: str) -> None:
        if self.owner.get(key) == replica:
            del self.owner[key]
        self.parked.pop(key, None)

    async def wanted_from(self, replica: str) -> list:
        """Long poll: the keys ``replica`` holds that other replicas claim."""
        event = self.changed[replica]
        while not self.wanted[replica]:
            event.clear()
            await event.wait()
        return sorted(self.wanted.pop(replica))

    async def where(self) -> dict:
        """{key: replica or "parked"} (for monitoring and tests)."""
        return dict(self.owner, **{key: "parked" for key in self.parked})


def directory() -> "ray.actor.ActorHandle":
    """The cluster's directory actor (created by the first caller; it outlives replicas)."""
    return StreamDirectory.options(name=DIRECTORY, namespace="rnnengine", get_if_exists=True,
                                   lifetime="detached").remote()


@serve.deployment(
    ray_actor_options={"num_cpus": 0.5},
    max_ongoing_requests=1024,               # many streams' steps at once: the Batcher batches them
    request_router_config=RequestRouterConfig(request_router_class=ROUTER,
                                              request_router_kwargs={"num_fallback_replicas": 0}),
)
class StreamReplica:
    def __init__(self, model_path: str, max_delay_us: float = 500, max_streams: int = 4096,
                 claim_timeout_s: float = 60.0):
        self.model = rnnengine.load(model_path)
        self.batcher = rnnengine.Batcher(self.model, max_delay_us=max_delay_us,
                                         max_streams=max_streams)
        self.name = serve.get_replica_context().replica_id.unique_id
        self.directory = directory()
        self.claim_timeout_s = claim_timeout_s
        self.streams: Dict[str, int] = {}         # key -> Batcher id
        self.offset: Dict[str, int] = {}          # key -> steps taken on earlier replicas
        self.locks = collections.defaultdict(asyncio.Lock)
        self.releaser: Optional[asyncio.Task] = None

    async def _sid(self, key: str) -> int:
        """The Batcher id of ``key`` here, claiming the stream first if needed (lock held)."""
        if self.releaser is None:
            self.releaser = asyncio.get_running_loop().create_task(self._release_wanted())
        sid = self.streams.get(key)
        if sid is None:
            data, steps = await self.directory.claim.remote(key, self.name, self.claim_timeout_s)
            sid = self.batcher.open() if data is None else self.batcher.resume(data)
            self.streams[key], self.offset[key] = sid, steps
        return sid

    async def step(self, key: str, x) -> dict:
        """One timestep of stream ``key``: x ``(I,)`` -> {"y": (Hout,), "steps": steps of the
        stream so far (all replicas), "replica": this replica's id}."""
        async with self.locks[key]:
            sid = await self._sid(key)
            y = await self.batcher.step_async(sid, np.asarray(x, np.float32))
            return {"y": y, "steps": self.offset[key] + self.batcher.steps(sid),
                    "replica": self.name}

    async def close(self, key: str) -> None:
        """End stream ``key`` wherever its state is."""
        async with self.locks[key]:
            sid = self.streams.pop(key, None)
            if sid is not None:
                self.batcher.close(sid)
            await self.directory.forget.remote(key, self.name)

    async def _park(self, key: str) -> None:
        """Export ``key`` to the directory and drop it here (its lock held)."""
        sid = self.streams.pop(key, None)
        if sid is None:
            return
        steps = self.offset.pop(key) + self.batcher.steps(sid)
        data = self.batcher.export_state(sid)
        self.batcher.close(sid)
        await self.directory.park.remote(key, self.name, data, steps)

    async def _release_wanted(self) -> None:
        while True:
            for key in await self.directory.wanted_from.remote(self.name):
                async with self.locks[key]:
                    await self._park(key)

    async def __del__(self):
        """Serve calls this when the replica shuts down, after its last request: park every
        stream so the replicas that own them next can resume them."""
        if self.releaser is not None:
            self.releaser.cancel()
        for key in list(self.streams):
            async with self.locks[key]:
                await self._park(key)
        self.batcher.close()


def build_app(model_path: str, min_replicas: int = 1, max_replicas: int = 4,
              autoscaling: Optional[dict] = None, **options):
    """The Serve application: ``StreamReplica`` autoscaled between ``min_replicas`` and
    ``max_replicas`` on the number of steps in flight (``autoscaling`` adds Serve
    AutoscalingConfig fields); ``options`` go to ``StreamReplica``."""
    config = {"target_ongoing_requests": 8, **(autoscaling or {}),
              "min_replicas": min_replicas, "max_replicas": max_replicas}
    return StreamReplica.options(autoscaling_config=config).bind(model_path, **options)


class StreamClient:
    """Steps of one stream through a Serve handle, always with its key as session_id."""

    def __init__(self, handle, key: str):
        self.key = key
        self._step = handle.options(session_id=key, method_name="step")
        self._close = handle.options(session_id=key, method_name="close")

    def step_async(self, x):
        """A ``DeploymentResponse``; ``.result()`` gives the step's dict."""
        return self._step.remote(self.key, x)

    def step(self, x, timeout_s: float = 60.0) -> dict:
        return self.step_async(x).result(timeout_s=timeout_s)

    def close(self, timeout_s: float = 60.0) -> None:
        self._close.remote(self.key).result(timeout_s=timeout_s)

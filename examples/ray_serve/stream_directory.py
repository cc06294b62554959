"""Where each stream of the Ray Serve recipe is (stream_deployment.py): a named, detached
actor that outlives replicas.

A stream key is in one of these records:

- **held** by a replica (``owner``), with its last **checkpoint** (exported state and step
  count) if the replica sends them;
- **parked**: its exported state, given up by a replica that shut down or that another
  replica asked for it;
- **recovered**: its holder died; the checkpoint waits for the next replica that claims it;
- **lost**: its holder died and there was no checkpoint; the next claim fails with
  ``StreamLost`` and the key is forgotten (a later step starts a new stream).

A claim for a key held by another replica first checks that the holder is alive (a short
ping of its actor); a dead holder is buried at once, all its keys recovered or lost, so no
claim waits out its timeout for a replica that will never answer.
"""
from __future__ import annotations

import asyncio
import collections
import time
from typing import Dict, Optional

import ray

import rnnengine

DIRECTORY = "rnnengine-stream-directory"
PING_S = 2.0          # a live replica answers a ping within this (its event loop is not blocked)
RECHECK_S = 1.0       # while waiting for a holder to release a stream, re-check it is alive


class StreamLost(rnnengine.Error, RuntimeError):
    """The replica holding a stream died and no checkpoint of the stream was saved: its state
    is gone. The key is forgotten: its next step starts a new stream from the zero state."""


@ray.remote(num_cpus=0)
class StreamDirectory:
    """An async actor: claims wait without blocking each other."""

    def __init__(self):
        self.owner: Dict[str, str] = {}
        self.saved: Dict[str, tuple] = {}                   # held key -> (state, steps)
        self.parked: Dict[str, tuple] = {}                  # key -> (state bytes, steps)
        self.recovered: Dict[str, tuple] = {}               # key -> (checkpoint, steps, dead)
        self.lost: Dict[str, str] = {}                      # key -> the dead replica
        self.since: Dict[str, float] = {}                   # unheld key -> when it was let go
        self.replicas: Dict[str, "ray.actor.ActorHandle"] = {}
        self.wanted = collections.defaultdict(dict)         # replica -> {key: "park" | "drop"}
        self.changed = collections.defaultdict(asyncio.Event)   # replica / key -> wake-up

    def _notify(self, name: str) -> None:
        self.changed[name].set()

    async def register(self, replica: str, handle) -> None:
        """``replica``'s actor, so claims can tell whether it is alive."""
        self.replicas[replica] = handle

    async def leave(self, replica: str) -> None:
        """``replica`` shut down cleanly (its streams are parked)."""
        self.replicas.pop(replica, None)
        self.wanted.pop(replica, None)

    async def _alive(self, replica: str) -> bool:
        handle = self.replicas.get(replica)
        if handle is None:
            return True            # not registered (yet): only a timeout can tell
        try:
            await asyncio.wait_for(handle.__ray_ready__.remote(), PING_S)
            return True
        except asyncio.TimeoutError:
            return True            # busy or slow, not known dead
        except ray.exceptions.ActorUnavailableError:
            return True            # unreachable for now, may come back
        except ray.exceptions.RayActorError:
            return False

    def _bury(self, replica: str) -> None:
        """``replica`` died: each of its keys goes to recovered (checkpoint) or lost."""
        self.replicas.pop(replica, None)
        self.wanted.pop(replica, None)
        now = time.monotonic()
        for key in [k for k, r in self.owner.items() if r == replica]:
            del self.owner[key]
            saved = self.saved.pop(key, None)
            if saved is None:
                self.lost[key] = replica
            else:
                self.recovered[key] = saved + (replica,)
            self.since[key] = now
            self._notify(key)

    def _hold(self, key: str, replica: str, data, steps: int, keep: bool) -> None:
        self.owner[key] = replica
        self.since.pop(key, None)
        if keep:
            self.saved[key] = (data, steps)    # where a crash would take it back to

    async def claim(self, key: str, replica: str, timeout_s: float, keep: bool) -> dict:
        """Give ``key`` to ``replica`` -> {"status": "new" | "moved" | "resumed" | "lost",
        "data": state bytes or None, "steps": steps so far, "dead": the dead replica}.
        Waits while a live replica still holds it (that replica is asked to park it).
        ``keep``: the claimant checkpoints; its starting point is the first checkpoint."""
        deadline = time.monotonic() + timeout_s
        while True:
            if key in self.recovered:
                data, steps, dead = self.recovered.pop(key)
                self._hold(key, replica, data, steps, keep)
                return dict(status="resumed", data=data, steps=steps, dead=dead)
            if key in self.lost:
                dead = self.lost.pop(key)
                self.since.pop(key, None)
                return dict(status="lost", data=None, steps=0, dead=dead)
            if key in self.parked:
                data, steps = self.parked.pop(key)
                self._hold(key, replica, data, steps, keep)
                return dict(status="moved", data=data, steps=steps, dead=None)
            owner = self.owner.get(key)
            if owner is None or owner == replica:
                self._hold(key, replica, None, 0, keep)
                return dict(status="new", data=None, steps=0, dead=None)
            if not await self._alive(owner):
                if self.owner.get(key) == owner:
                    self._bury(owner)
                continue
            self.wanted[owner].setdefault(key, "park")
            self._notify(owner)
            event = self.changed[key]
            event.clear()
            left = deadline - time.monotonic()
            if left <= 0:
                raise TimeoutError(f"stream {key!r} is held by replica {owner} which did not "
                                   f"release it within {timeout_s} s")
            try:
                await asyncio.wait_for(event.wait(), min(left, RECHECK_S))
            except asyncio.TimeoutError:
                pass               # look again: released, or the holder died meanwhile

    async def checkpoint(self, replica: str, saves: dict) -> None:
        """{key: (state bytes, steps)} of streams ``replica`` holds; older ones are ignored
        (they may arrive out of order, or after the stream moved on)."""
        for key, (data, steps) in saves.items():
            if self.owner.get(key) == replica and steps >= self.saved.get(key, (None, -1))[1]:
                self.saved[key] = (data, steps)

    async def park(self, key: str, replica: str, data: bytes, steps: int) -> None:
        """``replica`` gives ``key`` up, with its exported state."""
        if self.owner.get(key) == replica:
            del self.owner[key]
            self.saved.pop(key, None)
            self.parked[key] = (data, steps)
            self.since[key] = time.monotonic()
            self._notify(key)

    async def forget(self, key: str, replica: Optional[str] = None) -> None:
        """Remove every record of ``key``; a replica other than the caller (``replica``)
        that holds it is told to drop it."""
        owner = self.owner.pop(key, None)
        if owner is not None and owner != replica and owner in self.replicas:
            self.wanted[owner][key] = "drop"
            self._notify(owner)
        for records in (self.saved, self.parked, self.recovered, self.lost, self.since):
            records.pop(key, None)
        self._notify(key)

    async def expire(self, ttl_s: float) -> list:
        """Forget parked, recovered and lost keys nobody claimed for ``ttl_s`` -> the keys."""
        now = time.monotonic()
        old = [key for key, t in self.since.items() if now - t >= ttl_s]
        for key in old:
            for records in (self.parked, self.recovered, self.lost, self.since):
                records.pop(key, None)
        return old

    async def wanted_from(self, replica: str) -> list:
        """Long poll: [(key, "park" | "drop")] for keys ``replica`` holds that other replicas
        claim ("park") or that were closed elsewhere ("drop")."""
        event = self.changed[replica]
        while not self.wanted[replica]:
            event.clear()
            await event.wait()
        return sorted(self.wanted.pop(replica).items())

    async def where(self) -> dict:
        """{key: replica, "parked", "recovered" or "lost"} (for monitoring and tests)."""
        places = dict(self.owner)
        for label, records in (("parked", self.parked), ("recovered", self.recovered),
                               ("lost", self.lost)):
            places.update(dict.fromkeys(records, label))
        return places

    async def checkpoints(self) -> dict:
        """{held key: steps of its last checkpoint}."""
        return {key: steps for key, (_, steps) in self.saved.items()}

    async def replica_actors(self) -> dict:
        """{replica id: its actor handle} of the replicas registered and not known dead."""
        return dict(self.replicas)


def directory(name: str = DIRECTORY) -> "ray.actor.ActorHandle":
    """The cluster's directory actor called ``name`` (created by the first caller; it
    outlives replicas). One per application: keys are only unique within one."""
    return StreamDirectory.options(name=name, namespace="rnnengine", get_if_exists=True,
                                   lifetime="detached").remote()

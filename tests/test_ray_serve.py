"""examples/ray_serve on a local Ray cluster (loopback, 2 CPUs, two replicas at most): streams
stepped through the autoscaled deployment keep their state while the autoscaler removes a
replica (its streams move to the survivor) and adds one (streams whose hash moved follow it).
Every output equals a single uninterrupted stream's (and one stream PyTorch's); the step
counters run on without a gap. Selected by ``-m ray``; part of the normal run too."""
from __future__ import annotations

import os
import subprocess
import sys

import numpy as np
import pytest

import rnnengine
from torch_reference import assert_close, random_model, torch_run

pytest.importorskip("ray.serve")

pytestmark = pytest.mark.ray
ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
DEMO = os.path.join(ROOT, "examples", "ray_serve", "demo.py")
PACKAGE_PARENT = os.path.dirname(os.path.dirname(os.path.abspath(rnnengine.__file__)))


def test_streams_survive_scale_down_and_up(tmp_path):
    model, twin = random_model("lstm", 8, 16, num_layers=2, seed=5)
    model.save(tmp_path / "model.npz")
    env = dict(os.environ, PYTHONPATH=PACKAGE_PARENT + os.pathsep + os.environ.get("PYTHONPATH", ""),
               RAY_USAGE_STATS_ENABLED="0")
    run = subprocess.run([sys.executable, DEMO, "--model", str(tmp_path / "model.npz"), "--out",
                          str(tmp_path / "run.npz"), "--streams", "16", "--steps", "6",
                          "--num-cpus", "2", "--timeout", "120"],
                         cwd=tmp_path, env=env, capture_output=True, text=True, timeout=900)
    assert run.returncode == 0, run.stdout[-3000:] + run.stderr[-5000:]
    with np.load(tmp_path / "run.npz", allow_pickle=False) as saved:
        xs, ys, replicas, steps, marks, held = (saved[k] for k in (
            "inputs", "outputs", "replicas", "steps", "marks", "held_after_close"))
    S, T = replicas.shape
    two, down, up = marks

    # Exactly one uninterrupted stream per key, whatever replicas it went through.
    for s in range(S):
        np.testing.assert_allclose(ys[s], model.stream(batch=1).run(xs[s]), rtol=1e-5, atol=1e-6)
    assert_close(ys[0], torch_run(twin, xs[0])[0], "stream 0 against PyTorch")
    assert (steps == np.arange(1, T + 1)).all()           # counters carried across moves

    first = set(replicas[:, two - 1])
    assert len(first) == 2                                 # initial_replicas=2, both in use
    survivor = set(replicas[:, down - 1])
    assert len(survivor) == 1 and survivor < first         # a true scale-down: one stayed
    moved_down = replicas[:, two - 1] != replicas[:, down - 1]
    assert moved_down.any() and not moved_down.all()       # only the removed one's streams moved
    last = set(replicas[:, T - 1])
    assert len(last) == 2 and len(last - first) == 1       # the autoscaler added a new replica
    moved_up = (replicas[:, up - 1] != replicas[:, down - 1])
    assert moved_up.any()                                  # ...and streams followed the hash to it
    assert (replicas[moved_up, down - 1] == list(survivor)[0]).all()
    assert held.size == 0                                  # closed streams leave no state behind

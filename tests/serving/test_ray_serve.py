"""examples/ray_serve on a local Ray cluster (loopback, 2 CPUs, two replicas at most): streams
stepped through the autoscaled deployment keep their state while the autoscaler removes a
replica (its streams move to the survivor) and adds one (streams whose hash moved follow it).
Every output equals a single uninterrupted stream's (and one stream PyTorch's); the step
counters run on without a gap.

Crashes (a replica killed with ``ray.kill`` mid-stream): each of its streams resumes from its
last checkpoint, reported as ``resumed_from``, and continues exactly as one stream resumed
from that step (rnnengine, and PyTorch for a weight file or ONNX Runtime for a whole ONNX
model); without checkpoints each gets ``StreamLost`` once and starts over; no step waits for
the claim timeout. Idle keys expire (Batcher slot and directory records freed); closed keys
leave nothing behind; ``step_many`` equals single steps. Selected by ``-m ray``; part of
the normal run too."""
from __future__ import annotations

import os
import subprocess
import sys
import time

import numpy as np
import pytest

import rnnengine
import conftest
import session_models as sm
from stream_checks import author_loop, silero_chunks
from torch_reference import assert_close, random_model, torch_run

pytest.importorskip("ray.serve")
import ray  # noqa: E402
from ray import serve  # noqa: E402

pytestmark = pytest.mark.ray
ROOT = conftest.ROOT
DEMO = os.path.join(ROOT, "examples", "ray_serve", "demo.py")
PACKAGE_PARENT = os.path.dirname(os.path.dirname(os.path.abspath(rnnengine.__file__)))
RECIPE = os.path.join(ROOT, "examples", "ray_serve")
sys.path.insert(0, RECIPE)
from stream_deployment import (StreamClient, StreamGroup, StreamLost, build_app,  # noqa: E402
                               directory)

SR = np.array(16000, np.int64)
CLAIM_TIMEOUT_S = 60.0


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


# -- one cluster for the tests below, an application per test --------------------------------

@pytest.fixture(scope="module")
def cluster():
    paths = [RECIPE, PACKAGE_PARENT, os.environ.get("PYTHONPATH", "")]
    env = {"PYTHONPATH": os.pathsep.join(paths), "RAY_USAGE_STATS_ENABLED": "0"}
    usage = os.environ.get("RAY_USAGE_STATS_ENABLED")
    os.environ["RAY_USAGE_STATS_ENABLED"] = "0"        # this process starts the cluster
    ray.init(address="local", num_cpus=2, include_dashboard=False, _node_ip_address="127.0.0.1",
             runtime_env={"env_vars": env}, log_to_driver=False)
    try:
        serve.start(proxy_location="Disabled")
        yield
    finally:
        serve.shutdown()
        ray.shutdown()
        if usage is None:
            del os.environ["RAY_USAGE_STATS_ENABLED"]
        else:
            os.environ["RAY_USAGE_STATS_ENABLED"] = usage


def deploy(name, model_path, **options):
    """Two replicas of ``model_path`` (their own directory) -> (handle, directory actor)."""
    options = dict(claim_timeout_s=CLAIM_TIMEOUT_S, directory_name=f"dir-{name}", **options)
    handle = serve.run(build_app(str(model_path), min_replicas=2, max_replicas=2,
                                 deployment={"health_check_period_s": 1}, **options),
                       name=name, route_prefix=None)
    return handle, directory(f"dir-{name}")


def step_all(clients, inputs, meanwhile=None):
    """One step of every client, all in flight together (``meanwhile()`` runs once they are
    sent); a request whose replica died is sent again (StreamClient.step) -> (per client its
    dict or the StreamLost it raised, the slowest step's seconds)."""
    start = time.monotonic()
    responses = [c.step_async(x) for c, x in zip(clients, inputs)]
    if meanwhile is not None:
        meanwhile()
    results = []
    for client, x, response in zip(clients, inputs, responses):
        try:
            try:
                results.append(response.result(timeout_s=CLAIM_TIMEOUT_S))
            except ray.exceptions.RayActorError:
                results.append(client.step(x, timeout_s=CLAIM_TIMEOUT_S))
        except StreamLost as error:
            results.append(error)
    return results, time.monotonic() - start


def crash_mid_stream(handle, where, name, inputs, before):
    """Step every stream ``before`` times, then kill the replica holding stream 0 while the
    next step of every stream is in flight, and step on to the end -> (results [stream]
    [step] (dicts, or the StreamLost raised), streams that were on the killed replica, their
    checkpoints' steps when it was killed, the slowest step after the kill in seconds)."""
    S, T = len(inputs), len(inputs[0])
    clients = [StreamClient(handle, f"{name}-{s}") for s in range(S)]
    results = [[] for _ in range(S)]
    for t in range(before):
        for s, r in enumerate(step_all(clients, [inputs[s][t] for s in range(S)])[0]):
            results[s].append(r)
    time.sleep(0.5)                       # the last checkpoints reach the directory
    held = ray.get(where.where.remote())
    saved = ray.get(where.checkpoints.remote())
    victim = held[f"{name}-0"]
    killed = [s for s in range(S) if held[f"{name}-{s}"] == victim]
    assert 0 < len(killed) < S, held      # both replicas held streams
    actor = ray.get(where.replica_actors.remote())[victim]
    slowest = 0.0
    for t in range(before, T):
        kill = (lambda: ray.kill(actor)) if t == before else None
        got, seconds = step_all(clients, [inputs[s][t] for s in range(S)], kill)
        slowest = max(slowest, seconds)
        for s, r in enumerate(got):
            results[s].append(r)
    return results, killed, {s: saved.get(f"{name}-{s}") for s in killed}, slowest


def resumed_feeds(results, inputs, killed, checkpoints, every, before):
    """Per stream: the inputs an uninterrupted stream must be fed to give ``results`` (all
    of them, or those from the step that reported ``resumed_from`` on, which continues the
    stream from its first ``resumed_from`` inputs) -> {stream: (first result, inputs)}."""
    plan = {}
    for s, (got, xs) in enumerate(zip(results, inputs)):
        marks = [t for t, r in enumerate(got) if r["resumed_from"] is not None]
        if s not in killed:
            assert marks == [], (s, marks)
            assert [r["steps"] for r in got] == list(range(1, len(got) + 1))
            plan[s] = (0, list(xs))
            continue
        assert len(marks) == 1, (s, marks)           # resumed once, on its first step after
        j = marks[0]
        assert j >= before, (s, j)
        resumed = got[j]["resumed_from"]
        # the checkpoint saved when the kill was sent, or one the replica took meanwhile
        assert checkpoints[s] <= resumed <= j and resumed % every == 0, (s, resumed, j)
        assert [r["steps"] for r in got[j:]] == list(range(resumed + 1,
                                                           resumed + 1 + len(got) - j))
        plan[s] = (j, list(xs[:resumed]) + list(xs[j:]))
    return plan


def test_weight_file_streams_resume_from_checkpoints_after_a_replica_is_killed(cluster,
                                                                               tmp_path):
    model, twin = random_model("gru", 6, 12, num_layers=2, seed=21)
    model.save(tmp_path / "gru.npz")
    handle, where = deploy("npzcrash", tmp_path / "gru.npz", checkpoint_every=4)
    S, T, before = 12, 14, 7
    inputs = np.random.default_rng(2).standard_normal((S, T, 6)).astype(np.float32)
    results, killed, checkpoints, slowest = crash_mid_stream(handle, where, "npzcrash",
                                                             inputs, before)
    assert slowest < 15, slowest                        # nobody waited for the claim timeout
    for s, (j, feeds) in resumed_feeds(results, inputs, killed, checkpoints, 4, before).items():
        got = np.array([r["y"] for r in results[s][j:]])
        want = model.stream(batch=1).run(np.array(feeds))[-len(got):]
        np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-6, err_msg=f"stream {s}")
        assert_close(got, torch_run(twin, np.array(feeds))[0][-len(got):], f"stream {s}")
    serve.delete("npzcrash")


def test_whole_onnx_model_streams_resume_from_checkpoints_after_a_replica_is_killed(cluster):
    """Silero VAD served by InferenceSession, its ``sr`` a fixed feed given once."""
    handle, where = deploy("vadcrash", sm.SILERO, checkpoint_every=3, feeds={"sr": SR})
    S, T, before = 8, 10, 5
    rng = np.random.default_rng(4)
    inputs = [[{"input": c} for c in silero_chunks(rng, T)] for _ in range(S)]
    results, killed, checkpoints, slowest = crash_mid_stream(handle, where, "vadcrash",
                                                             inputs, before)
    assert slowest < 15, slowest
    sess = rnnengine.InferenceSession(sm.SILERO)
    ort = sm.ort_session(sm.SILERO)
    zero = {"state": np.zeros((2, 1, 128), np.float32)}
    for s, (j, feeds) in resumed_feeds(results, inputs, killed, checkpoints, 3, before).items():
        got = results[s][j:]
        mine = sess.stream(feeds={"sr": SR})
        want_engine = [mine.step(f) for f in feeds][-len(got):]
        want_ort = author_loop(ort, [{**f, "sr": SR} for f in feeds], ["state"], ["stateN"],
                               zero)[0][-len(got):]
        for t, (r, e, o) in enumerate(zip(got, want_engine, want_ort)):
            assert len(r["y"]) == len(e) == len(o) == 1
            np.testing.assert_allclose(r["y"][0], e[0], rtol=1e-5, atol=1e-6,
                                       err_msg=f"stream {s} step {t}")
            np.testing.assert_allclose(r["y"][0], o[0], rtol=1e-4, atol=1e-4,
                                       err_msg=f"stream {s} step {t}")
    serve.delete("vadcrash")


def test_without_checkpoints_a_killed_replicas_streams_raise_stream_lost_once(cluster,
                                                                            tmp_path):
    model, twin = random_model("lstm", 5, 8, seed=22)
    model.save(tmp_path / "lstm.npz")
    handle, where = deploy("lostcrash", tmp_path / "lstm.npz", checkpoint_every=None)
    S, T, before = 8, 7, 3
    inputs = np.random.default_rng(5).standard_normal((S, T, 5)).astype(np.float32)
    idle = [StreamClient(handle, f"idle-{s}") for s in range(16)]   # not stepped after the kill
    step_all(idle, inputs[np.arange(16) % S, 0])
    results, killed, checkpoints, slowest = crash_mid_stream(handle, where, "lostcrash",
                                                             inputs, before)
    assert slowest < 15, slowest
    assert checkpoints == dict.fromkeys(killed)          # none were saved
    for s in range(S):
        got = results[s]
        if s not in killed:
            np.testing.assert_allclose(np.array([r["y"] for r in got]),
                                       model.stream(batch=1).run(inputs[s]), rtol=1e-5,
                                       atol=1e-6)
            continue
        lost = [t for t, r in enumerate(got) if not isinstance(r, dict)]
        assert len(lost) == 1 and lost[0] >= before, (s, got)   # once, after the kill
        j = lost[0]
        assert isinstance(got[j], StreamLost) and isinstance(got[j], rnnengine.Error)
        assert "no checkpoint" in str(got[j])
        fresh = got[j + 1:]                              # the key started over from zeros
        assert len(fresh) >= 1
        assert [r["steps"] for r in fresh] == list(range(1, len(fresh) + 1))
        assert all(r["resumed_from"] is None for r in fresh)
        np.testing.assert_allclose(np.array([r["y"] for r in fresh]),
                                   model.stream(batch=1).run(inputs[s, j + 1:]),
                                   rtol=1e-5, atol=1e-6)
        assert_close(np.array([r["y"] for r in fresh]),
                     torch_run(twin, inputs[s, j + 1:])[0], f"stream {s}")
    held = ray.get(where.where.remote())
    assert "lost" in {held[f"idle-{s}"] for s in range(16)}   # some idle keys were on it
    for s in range(S):
        StreamClient(handle, f"lostcrash-{s}").close()
    for client in idle:
        client.close()                      # on the dead replica or not, the key is forgotten
    assert ray.get(where.where.remote()) == {}
    serve.delete("lostcrash")


def test_step_many_equals_single_steps_idle_keys_expire_and_close_clears(cluster, tmp_path):
    model, twin = random_model("lstm", 4, 8, num_layers=2, seed=23)
    model.save(tmp_path / "lstm.npz")
    handle, where = deploy("many", tmp_path / "lstm.npz", idle_ttl_s=4.0, checkpoint_every=2)
    S, T = 10, 5
    inputs = np.random.default_rng(6).standard_normal((S, T, 4)).astype(np.float32)
    group = StreamGroup(handle, "group-a", [f"many-{s}" for s in range(S)])
    grouped = [group.step(inputs[:, t]) for t in range(T)]
    singles = [StreamClient(handle, f"single-{s}") for s in range(S)]
    single = [step_all(singles, inputs[:, t])[0] for t in range(T)]
    replicas = {r["replica"] for step in grouped for r in step}
    assert len(replicas) == 1                            # the group stayed on one replica
    for s in range(S):
        many_y = np.array([grouped[t][s]["y"] for t in range(T)])
        one_y = np.array([single[t][s]["y"] for t in range(T)])
        np.testing.assert_array_equal(many_y, one_y)
        assert_close(many_y, torch_run(twin, inputs[s])[0], f"stream {s}")
        assert [grouped[t][s]["steps"] for t in range(T)] == list(range(1, T + 1))
    with pytest.raises(ValueError, match="at most once"):
        handle.options(session_id="k").step_many.remote(["k", "k"], inputs[:2, 0]).result()
    mixed = StreamGroup(handle, "group-b", ["ok-0", "bad-0"])   # a bad input fails its key only
    good, bad = mixed.step([inputs[0, 0], np.zeros(3, np.float32)])
    assert good["steps"] == 1 and isinstance(bad, ValueError) and "(4,)" in str(bad), bad
    good, bad = mixed.step([inputs[0, 1], inputs[1, 0]])
    assert good["steps"] == 2 and bad["steps"] == 1      # the failed step left it untouched
    assert_close(bad["y"], torch_run(twin, inputs[1, :1])[0][0], "after a failed step")

    # closing: the directory forgets the key wherever it was (here: held by the group's
    # replica, closed through another route)
    StreamClient(handle, "many-0").close()
    assert "many-0" not in ray.get(where.where.remote())
    assert group.step(inputs[:, 0])[0]["steps"] == 1     # a closed key starts over

    # abandoned keys: every key here stops; after idle_ttl_s all are closed and forgotten
    assert len(ray.get(where.where.remote())) == 2 * S + 2
    deadline = time.monotonic() + 30
    while ray.get(where.where.remote()) and time.monotonic() < deadline:
        time.sleep(0.5)
    assert ray.get(where.where.remote()) == {}
    assert ray.get(where.checkpoints.remote()) == {}
    routes = {single[-1][s]["replica"]: f"single-{s}" for s in range(S)}
    routes[replicas.pop()] = "group-a"
    for route in routes.values():                        # every replica freed its slots
        stats = handle.options(session_id=route).stats.remote().result()
        assert stats["open"] == 0 and stats["resident"] == 0, stats
    serve.delete("many")

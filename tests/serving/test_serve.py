"""``rnnengine serve``'s app on a real uvicorn server (loopback, a free port, a background
thread), driven by ``websockets`` clients: streams, export/resume on a new server, drain,
admission, /run, /metrics and the health checks, each compared with ONNX Runtime."""
from __future__ import annotations

import asyncio
import io
import json
import os
import signal
import socket
import subprocess
import sys
import threading
import time
import urllib.error
import urllib.request

import numpy as np
import pytest

uvicorn = pytest.importorskip("uvicorn")
pytest.importorskip("starlette")
websockets = pytest.importorskip("websockets")
ort = pytest.importorskip("onnxruntime")

from websockets.asyncio.client import connect  # noqa: E402
from websockets.exceptions import ConnectionClosed  # noqa: E402

import rnnengine  # noqa: E402
from rnnengine import InferenceSession  # noqa: E402
from rnnengine.serving.app import Service, build_app, frame_shape  # noqa: E402
import session_models as sm  # noqa: E402

SR = np.array(16000, np.int64)
TOL = dict(rtol=1e-4, atol=1e-4)


def chunks(seed: int, n: int) -> list:
    rng = np.random.default_rng(seed)
    t = np.arange(512) / 16000
    return [(0.2 * np.sin(2 * np.pi * 200 * (k + 1 + seed) * t)[None]
             + 0.05 * rng.standard_normal((1, 512))).astype(np.float32) for k in range(n)]


@pytest.fixture(scope="module")
def ort_session():
    return sm.ort_session(sm.SILERO)


def ort_loop(session, xs) -> list:
    """ONNX Runtime alone, the state carried by hand: each step's output."""
    loop = sm.AuthorLoop(session, {"stateN": "state"}, {"state": np.zeros((2, 1, 128), np.float32)})
    return [loop.step({"input": x, "sr": SR})[0].ravel() for x in xs]


async def drained(ws):
    """What a draining server sends a client, then closes with 1001: (farewell, state blob)."""
    farewell = json.loads(await ws.recv())
    blob = await ws.recv()
    with pytest.raises(ConnectionClosed, match=r"^received 1001 \(going away\) drain;") as info:
        await ws.recv()
    assert info.value.rcvd.code == 1001
    return farewell, blob


class Running:
    """A uvicorn server of the app in a background thread, on 127.0.0.1 and a free port."""

    def __init__(self, **options):
        self.service = Service(InferenceSession(sm.SILERO), state={"stateN": "state"},
                               feeds={"sr": SR}, **options)
        with socket.socket() as s:
            s.bind(("127.0.0.1", 0))
            self.port = s.getsockname()[1]
        config = uvicorn.Config(build_app(self.service), host="127.0.0.1", port=self.port,
                                log_level="warning", lifespan="on")
        self.server = uvicorn.Server(config)
        self.thread = threading.Thread(target=self.server.run, daemon=True)
        self.thread.start()
        end = time.monotonic() + 30
        while not self.server.started:
            assert time.monotonic() < end and self.thread.is_alive(), "server did not start"
            time.sleep(0.02)
        self.ws = f"ws://127.0.0.1:{self.port}/stream"
        self.http = f"http://127.0.0.1:{self.port}"

    def get(self, path: str):
        try:
            with urllib.request.urlopen(self.http + path, timeout=10) as r:
                return r.status, r.read()
        except urllib.error.HTTPError as e:
            return e.code, e.read()

    def post(self, path: str, body: bytes, kind: str):
        request = urllib.request.Request(self.http + path, data=body,
                                         headers={"Content-Type": kind})
        with urllib.request.urlopen(request, timeout=30) as r:
            return r.read()

    def metrics(self) -> dict:
        status, text = self.get("/metrics")
        assert status == 200
        values = {}
        for line in text.decode().splitlines():
            if line and not line.startswith("#"):
                name, value = line.rsplit(" ", 1)
                values[name] = float(value)
        return values

    def stop(self) -> None:
        self.server.should_exit = True
        self.thread.join(30)
        assert not self.thread.is_alive()


@pytest.fixture
def servers():
    started = []

    def start(**options):
        started.append(Running(**options))
        return started[-1]
    yield start
    for running in started:
        running.stop()


async def step(ws, x) -> np.ndarray:
    await ws.send(x.tobytes())
    reply = await ws.recv()
    if isinstance(reply, str):       # the outputs' description comes before the first answer
        assert json.loads(reply) == {"outputs": [{"name": "output", "shape": [1, 1]}]}
        reply = await ws.recv()
    return np.frombuffer(reply, "<f4").copy()


def run(coroutine, timeout: float = 120):
    return asyncio.run(asyncio.wait_for(coroutine, timeout))


def test_frame_shape_rule():
    sess = InferenceSession(sm.SILERO)
    args = {a.name: a for a in sess.get_inputs()}
    assert frame_shape(args["input"], 512) == (1, 512)      # [batch, sequence]
    assert frame_shape(args["state"], 256) == (2, 1, 128)   # [2, batch, 128]
    with pytest.raises(ValueError, match="does not fit input 'state'"):
        frame_shape(args["state"], 100)


def test_concurrent_streams_equal_ort_and_metrics(servers, ort_session):
    server = servers()
    n_streams, n_steps = 20, 12
    inputs = [chunks(seed, n_steps) for seed in range(n_streams)]

    async def one(xs):
        async with connect(server.ws) as ws:
            return [await step(ws, x) for x in xs]

    async def main():
        return await asyncio.gather(*(one(xs) for xs in inputs))
    got = run(main())
    for xs, ys in zip(inputs, got):
        np.testing.assert_allclose(np.array(ys), np.array(ort_loop(ort_session, xs)), **TOL)

    end = time.monotonic() + 10
    while server.metrics()["rnnengine_streams_open"] and time.monotonic() < end:
        time.sleep(0.02)
    m = server.metrics()
    assert m["rnnengine_steps_total"] == n_streams * n_steps
    assert m["rnnengine_streams_opened_total"] == n_streams
    assert m["rnnengine_streams_open"] == 0 and m["rnnengine_streams_refused_total"] == 0
    assert m["rnnengine_step_seconds_count"] == n_streams * n_steps
    buckets = [v for k, v in m.items() if k.startswith("rnnengine_step_seconds_bucket")]
    assert buckets == sorted(buckets) and buckets[-1] == n_streams * n_steps
    assert m["rnnengine_step_seconds_sum"] > 0 and "rnnengine_queue_depth" in m


def test_export_then_resume_on_a_new_server(servers, ort_session):
    xs = chunks(3, 16)
    first = servers()

    async def part1():
        async with connect(first.ws) as ws:
            ys = [await step(ws, x) for x in xs[:9]]
            await ws.send("export")
            return ys, await ws.recv()
    ys, blob = run(part1())
    assert isinstance(blob, bytes)
    first.stop()
    second = servers()

    async def part2():
        async with connect(second.ws + "?resume=1") as ws:
            await ws.send(blob)
            return [await step(ws, x) for x in xs[9:]]
    ys += run(part2())
    np.testing.assert_allclose(np.array(ys), np.array(ort_loop(ort_session, xs)), **TOL)


def test_drain_hands_each_client_its_state(servers, ort_session):
    server = servers()
    inputs = [chunks(10 + k, 10) for k in range(3)]
    ready = asyncio.Event

    async def client(xs, stepped):
        async with connect(server.ws) as ws:
            ys = [await step(ws, x) for x in xs[:6]]
            stepped.set()
            return (ys, *await drained(ws))

    async def main():
        events = [ready() for _ in inputs]
        tasks = [asyncio.ensure_future(client(xs, e)) for xs, e in zip(inputs, events)]
        for e in events:
            await e.wait()
        asyncio.run_coroutine_threadsafe(server.service.drain(), server.service.loop)
        return await asyncio.gather(*tasks)
    results = run(main())
    assert server.get("/readyz")[0] == 503          # draining: no new streams
    server.stop()
    other = servers()

    async def resume(blob, xs):
        async with connect(other.ws + "?resume=1") as ws:
            await ws.send(blob)
            return [await step(ws, x) for x in xs]
    for xs, (ys, farewell, blob) in zip(inputs, results):
        assert farewell == {"closing": "drain", "steps": 6}
        ys = ys + run(resume(blob, xs[6:]))
        np.testing.assert_allclose(np.array(ys), np.array(ort_loop(ort_session, xs)), **TOL)


def test_admission_refuses_past_max_streams(servers):
    server = servers(max_streams=2)
    x = chunks(0, 1)[0]

    async def main():
        async with connect(server.ws) as a, connect(server.ws) as b:
            await step(a, x)
            await step(b, x)
            assert server.get("/readyz")[0] == 503
            async with connect(server.ws) as c:
                with pytest.raises(ConnectionClosed, match=r"^received 1013 \(try again later\) the "
                                                           r"server is full: 2 streams are open;"):
                    await step(c, x)
            await step(a, x)                       # the admitted streams keep working
    run(main())
    assert server.metrics()["rnnengine_streams_refused_total"] == 1


def test_idle_ttl_closes_with_state(servers, ort_session):
    server = servers(idle_ttl=0.3)
    xs = chunks(5, 4)

    async def main():
        async with connect(server.ws) as ws:
            ys = [await step(ws, x) for x in xs[:2]]
            farewell = json.loads(await ws.recv())
            return ys, farewell, await ws.recv()
    ys, farewell, blob = run(main(), 30)
    assert farewell == {"closing": "idle", "steps": 2}

    async def more():
        async with connect(server.ws + "?resume=1") as ws:
            await ws.send(blob)
            return [await step(ws, x) for x in xs[2:]]
    ys += run(more(), 30)
    np.testing.assert_allclose(np.array(ys), np.array(ort_loop(ort_session, xs)), **TOL)


def test_bad_frame_is_refused_with_a_reason(servers):
    server = servers()

    async def main():
        async with connect(server.ws) as ws:
            await ws.send(b"\0" * 6)
            error = json.loads(await ws.recv())
            with pytest.raises(ConnectionClosed, match=r"^received 1008 \(policy violation\) a "
                                                       r"binary frame is float32 values; got 6 bytes;"):
                await ws.recv()
            return error
    error = run(main(), 30)
    assert "float32" in error["error"]


def test_run_json_and_npz_match_ort(servers, ort_session):
    server = servers()
    x = np.concatenate(chunks(7, 3), axis=0)             # batch 3
    state = (np.random.default_rng(1).standard_normal((2, 3, 128)) * 0.1).astype(np.float32)
    want = ort_session.run(None, {"input": x, "state": state, "sr": SR})
    got = json.loads(server.post("/run", json.dumps({"input": x.tolist(),
                                                     "state": state.tolist()}).encode(),
                                 "application/json"))
    np.testing.assert_allclose(np.array(got["output"]), want[0], **TOL)
    np.testing.assert_allclose(np.array(got["stateN"]), want[1], **TOL)
    buf = io.BytesIO()
    np.savez(buf, input=x, state=state)
    with np.load(io.BytesIO(server.post("/run", buf.getvalue(),
                                        "application/octet-stream"))) as f:
        np.testing.assert_allclose(f["output"], want[0], **TOL)
        np.testing.assert_allclose(f["stateN"], want[1], **TOL)
    assert server.metrics()["rnnengine_runs_total"] == 2


def test_health_checks(servers):
    server = servers()
    assert server.get("/healthz") == (200, b"ok")
    assert server.get("/readyz") == (200, b"ready")


def test_cli_sigterm_drains_through_the_real_signal(ort_session):
    """``rnnengine serve`` in its own process: SIGTERM hands the open stream its state
    (uvicorn alone would close the socket at once), and the state resumes exactly."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    # the package the tests import (installed in CI, the source tree in a development build)
    src = os.path.dirname(os.path.dirname(os.path.abspath(rnnengine.__file__)))
    env = dict(os.environ, PYTHONPATH=src + os.pathsep + os.environ.get("PYTHONPATH", ""))
    proc = subprocess.Popen([sys.executable, "-m", "rnnengine", "serve", sm.SILERO, "--state",
                             "stateN=state", "--feed", "sr=16000", "--port", str(port),
                             "--log-level", "warning"], env=env, stderr=subprocess.DEVNULL)
    xs = chunks(21, 8)
    try:
        async def main():
            end = time.monotonic() + 60
            while True:
                try:
                    ws = await connect(f"ws://127.0.0.1:{port}/stream")
                    break
                except OSError:
                    assert time.monotonic() < end and proc.poll() is None
                    await asyncio.sleep(0.05)
            async with ws:
                ys = [await step(ws, x) for x in xs[:5]]
                proc.send_signal(signal.SIGTERM)
                return (ys, *await drained(ws))
        ys, farewell, blob = run(main(), 90)
        proc.wait(30)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait(10)
    assert farewell == {"closing": "drain", "steps": 5}
    stream = InferenceSession(sm.SILERO).stream(state={"stateN": "state"}, feeds={"sr": SR})
    stream.import_state(blob)
    ys += [stream.step({"input": x})[0].ravel() for x in xs[5:]]
    np.testing.assert_allclose(np.array(ys), np.array(ort_loop(ort_session, xs)), **TOL)


def test_json_header_names_the_inputs(servers, ort_session):
    server = servers()
    xs = chunks(30, 3)

    async def main():
        async with connect(server.ws) as ws:
            await ws.send(json.dumps({"inputs": {"input": [1, 512]}}))
            ys = [await step(ws, x) for x in xs]
            await ws.send(json.dumps({"inputs": {"state": [2, 1, 128]}}))
            error = json.loads(await ws.recv())
            with pytest.raises(ConnectionClosed, match=r"^received 1008 \(policy violation\) 'state' "
                                                       r"is not a step input; the step inputs are "
                                                       r"\['input'\];"):
                await ws.recv()
            return ys, error
    ys, error = run(main(), 30)
    np.testing.assert_allclose(np.array(ys), np.array(ort_loop(ort_session, xs)), **TOL)
    assert "'state' is not a step input" in error["error"]

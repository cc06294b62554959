"""examples/stream_service.py (an ASGI app over a Batcher, one WebSocket per stream) with real
clients on loopback: every per-frame output equals an independent PyTorch run of that
connection's frames; steps of concurrent connections are batched; a full server refuses
clearly; a stream exported by one connection resumes in another; a bad frame closes only its
own connection; the server always stops (bounded time, timeouts everywhere)."""
from __future__ import annotations

import importlib.util
import json
import os
import queue
import signal
import subprocess
import sys
import threading
import urllib.request

import numpy as np
import pytest

import rnnengine
from torch_reference import assert_close, torch_run, torch_twin
import conftest

pytest.importorskip("starlette")
pytest.importorskip("uvicorn")
pytest.importorskip("websockets")

ROOT = conftest.ROOT
EXAMPLES = os.path.join(ROOT, "examples")
PACKAGE_PARENT = os.path.dirname(os.path.dirname(os.path.abspath(rnnengine.__file__)))
DEMO = dict(kind="gru", input_size=6, hidden_size=12, num_layers=2, seed=3)
MAX_STREAMS = 5
TIMEOUT = 60


def _load(name):
    spec = importlib.util.spec_from_file_location(name, os.path.join(EXAMPLES, f"{name}.py"))
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


service_module = _load("stream_service")
client_module = _load("stream_client")


@pytest.fixture
def server(tmp_path):
    """The service in a subprocess on a free loopback port; yields (base_url, stop) where
    stop() ends it (SIGTERM) and returns its final Batcher statistics."""
    env = dict(os.environ, PYTHONPATH=PACKAGE_PARENT + os.pathsep + os.environ.get("PYTHONPATH", ""))
    args = [sys.executable, os.path.join(EXAMPLES, "stream_service.py"), "--port", "0",
            "--max-seconds", "300", "--max-streams", str(MAX_STREAMS), "--max-delay-us", "2000",
            "--kind", DEMO["kind"], "--input-size", str(DEMO["input_size"]),
            "--hidden-size", str(DEMO["hidden_size"]), "--layers", str(DEMO["num_layers"]),
            "--seed", str(DEMO["seed"])]
    with open(tmp_path / "server.err", "w") as err:
        proc = subprocess.Popen(args, stdout=subprocess.PIPE, stderr=err, text=True, env=env)
    lines: "queue.Queue[str]" = queue.Queue()
    reader = threading.Thread(target=lambda: [lines.put(line) for line in proc.stdout], daemon=True)
    reader.start()

    def stop():
        proc.send_signal(signal.SIGTERM)
        proc.wait(timeout=TIMEOUT)
        reader.join(timeout=10)
        out = []
        while not lines.empty():
            out.append(lines.get())
        # uvicorn re-raises the signal after its graceful shutdown
        assert proc.returncode in (0, -signal.SIGTERM), (tmp_path / "server.err").read_text()
        return json.loads(out[-1])

    try:
        try:
            first = lines.get(timeout=TIMEOUT)
        except queue.Empty:
            raise AssertionError("server did not start: " + (tmp_path / "server.err").read_text())
        assert first.startswith("listening on 127.0.0.1:"), first
        yield f"127.0.0.1:{int(first.rsplit(':', 1)[1])}", stop
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait(timeout=TIMEOUT)


def _reference():
    arrays = service_module.demo_arrays(DEMO["kind"], DEMO["input_size"], DEMO["hidden_size"],
                                        DEMO["num_layers"], DEMO["seed"])
    return torch_twin(DEMO["kind"], arrays)


def _get(base, path):
    direct = urllib.request.build_opener(urllib.request.ProxyHandler({}))   # loopback: no proxy
    with direct.open(f"http://{base}{path}", timeout=TIMEOUT) as response:
        return json.loads(response.read())


def test_concurrent_clients_get_exact_per_frame_outputs(server, tmp_path):
    base, stop = server
    url = f"ws://{base}/stream"
    assert _get(base, "/info") == {"kind": "gru", "input_size": 6, "output_size": 12,
                                   "max_streams": MAX_STREAMS}
    ref = _reference()
    windows = [1, 4, 16, 64]               # lockstep to deeply pipelined clients
    frames = [40, 60, 25, 50]
    results, errors = {}, []
    connected = threading.Barrier(len(windows) + 1, timeout=TIMEOUT)
    go = threading.Event()    # the clients step only after the full server refused one more

    def run_client(n):
        try:
            with client_module.StreamClient(url, timeout=TIMEOUT) as client:
                connected.wait()
                if not go.wait(TIMEOUT):
                    raise TimeoutError("never told to go")
                xs = np.random.default_rng(100 + n).standard_normal(
                    (frames[n], client.input_size)).astype(np.float32)
                results[n] = (xs, client.run(xs, windows[n]))
        except BaseException as error:
            errors.append(error)
            connected.abort()

    threads = [threading.Thread(target=run_client, args=(n,), daemon=True)
               for n in range(len(windows))]
    for t in threads:
        t.start()
    connected.wait()
    # All streams but one are taken: one more client fits, the next is refused.
    extra = client_module.StreamClient(url, timeout=TIMEOUT)
    try:
        with pytest.raises(client_module.ServerError, match="the Batcher is full: all 5 streams"):
            client_module.StreamClient(url, timeout=TIMEOUT)
    finally:
        go.set()
    for t in threads:
        t.join(timeout=TIMEOUT)
    assert not any(t.is_alive() for t in threads)
    assert not errors, errors

    # A stream moves: 10 frames on one connection, exported, 15 more on another connection.
    xs = np.random.default_rng(7).standard_normal((25, DEMO["input_size"])).astype(np.float32)
    ys = [extra.run(xs[:10], window=3)]
    data = extra.export()
    extra.close()
    with client_module.StreamClient(url, timeout=TIMEOUT, resume=data) as moved:
        ys.append(moved.run(xs[10:], window=5))
    results["moved"] = (xs, np.concatenate(ys))

    # The command-line client, on a stream slot freed by the others.
    save = tmp_path / "cli.npz"
    subprocess.run([sys.executable, os.path.join(EXAMPLES, "stream_client.py"), "--url", url,
                    "--frames", "30", "--window", "3", "--seed", "7", "--save", str(save)],
                   check=True, timeout=TIMEOUT, capture_output=True)
    with np.load(save, allow_pickle=False) as saved:
        results["cli"] = (saved["inputs"], saved["outputs"])

    for name, (xs, ys) in results.items():
        assert ys.shape == (len(xs), DEMO["hidden_size"])
        y_ref, _ = torch_run(ref, xs)
        assert_close(ys, y_ref, f"client {name}")

    assert _get(base, "/stats")["open_streams"] == 0
    stats = stop()
    assert stats["steps"] == sum(frames) + 25 + 30
    # The four clients were connected together with frames in flight: batches formed.
    assert stats["largest_batch"] >= 2, stats


def test_bad_messages_close_only_that_connection(server):
    from websockets.exceptions import ConnectionClosed
    from websockets.sync.client import connect

    base, stop = server
    url = f"ws://{base}/stream"
    ref = _reference()
    with client_module.StreamClient(url, timeout=TIMEOUT) as good:
        with connect(url, open_timeout=TIMEOUT) as bad:
            json.loads(bad.recv(timeout=TIMEOUT))                  # the hello
            bad.send(b"1234")                                      # a frame of the wrong size
            reply = json.loads(bad.recv(timeout=TIMEOUT))
            assert "expected a binary frame of 6 float32 (24 bytes)" in reply["error"]
            with pytest.raises(ConnectionClosed, match=r"^received 1008 \(policy violation\)"):
                bad.recv(timeout=TIMEOUT)
        with pytest.raises(client_module.ServerError, match="not a valid rnnengine state"):
            client_module.StreamClient(url, timeout=TIMEOUT, resume=b"garbage" * 4)
        xs = np.random.default_rng(1).standard_normal((5, good.input_size)).astype(np.float32)
        ys = np.array([good.step(x) for x in xs])
        with pytest.raises(ValueError, match="a frame has 6 values; got 3"):
            good.send(np.zeros(3))
    assert_close(ys, torch_run(ref, xs)[0])
    stats = stop()
    assert stats["steps"] == 5

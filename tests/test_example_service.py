"""examples/stream_server.py with real clients on loopback: every per-frame output equals an
independent PyTorch run of that connection's frames; the server micro-batches, refuses
connections past capacity, reuses slots, and always stops (bounded time, timeouts everywhere)."""
from __future__ import annotations

import importlib.util
import json
import os
import queue
import signal
import subprocess
import sys
import threading

import numpy as np
import pytest

import rnnengine
from torch_reference import assert_close, torch_run, torch_twin

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
EXAMPLES = os.path.join(ROOT, "examples")
PACKAGE_PARENT = os.path.dirname(os.path.dirname(os.path.abspath(rnnengine.__file__)))
DEMO = dict(kind="gru", input_size=6, hidden_size=12, num_layers=2, seed=3)
CAPACITY = 5


def _load(name):
    spec = importlib.util.spec_from_file_location(name, os.path.join(EXAMPLES, f"{name}.py"))
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


server_module = _load("stream_server")
client_module = _load("stream_client")


@pytest.fixture
def server(tmp_path):
    """The server in a subprocess on an ephemeral loopback port; yields (port, stop) where
    stop() ends it and returns its final statistics."""
    env = dict(os.environ, PYTHONPATH=PACKAGE_PARENT + os.pathsep + os.environ.get("PYTHONPATH", ""))
    args = [sys.executable, os.path.join(EXAMPLES, "stream_server.py"), "--port", "0",
            "--max-seconds", "120", "--capacity", str(CAPACITY), "--batch-window-ms", "2",
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
        proc.wait(timeout=30)
        reader.join(timeout=10)
        out = []
        while not lines.empty():
            out.append(lines.get())
        return json.loads(out[-1])

    try:
        try:
            first = lines.get(timeout=60)
        except queue.Empty:
            raise AssertionError("server did not start: " + (tmp_path / "server.err").read_text())
        assert first.startswith("listening on 127.0.0.1:"), first
        yield int(first.rsplit(":", 1)[1]), stop
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait(timeout=30)


def _reference():
    arrays = server_module.demo_arrays(DEMO["kind"], DEMO["input_size"], DEMO["hidden_size"],
                                       DEMO["num_layers"], DEMO["seed"])
    return torch_twin(DEMO["kind"], arrays)


def test_clients_get_exact_per_frame_outputs(server, tmp_path):
    port, stop = server
    ref = _reference()
    windows = [1, 4, 16, 64]               # lockstep to deeply pipelined clients
    frames = [40, 60, 25, 50]
    results, errors = {}, []
    connected = threading.Barrier(len(windows) + 1, timeout=60)

    def run_client(n):
        try:
            with client_module.StreamClient(port=port, timeout=20) as client:
                connected.wait()
                xs = np.random.default_rng(100 + n).standard_normal(
                    (frames[n], client.input_size)).astype(np.float32)
                results[n] = (xs, client.run(xs, windows[n]))
        except BaseException as error:
            errors.append(error)
            connected.abort()

    threads = [threading.Thread(target=run_client, args=(n,)) for n in range(len(windows))]
    for t in threads:
        t.start()
    connected.wait()
    # All slots but one are taken: one more client fits, the next is refused.
    extra = client_module.StreamClient(port=port, timeout=20)
    with pytest.raises(client_module.ServerError, match="server full"):
        client_module.StreamClient(port=port, timeout=20)
    for t in threads:
        t.join(timeout=60)
    assert not any(t.is_alive() for t in threads)
    assert not errors, errors
    # A stream that joins late, after others left, on a reused slot, from the CLI client.
    extra.close()
    save = tmp_path / "cli.npz"
    subprocess.run([sys.executable, os.path.join(EXAMPLES, "stream_client.py"), "--port",
                    str(port), "--frames", "30", "--window", "3", "--seed", "7", "--save",
                    str(save)], check=True, timeout=60, capture_output=True)
    with np.load(save, allow_pickle=False) as saved:
        results["cli"] = (saved["inputs"], saved["outputs"])

    for name, (xs, ys) in results.items():
        assert ys.shape == (len(xs), DEMO["hidden_size"])
        y_ref, _ = torch_run(ref, xs)
        assert_close(ys, y_ref, f"client {name}")

    stats = stop()
    assert stats["frames"] == sum(frames) + 30
    assert stats["connections"] == len(windows) + 2 and stats["refused"] == 1
    # The four clients were connected together with frames in flight: some tick batched them.
    assert stats["max_batch"] >= 2, stats


def test_protocol_errors_close_only_that_connection(server):
    import socket
    import struct

    port, stop = server
    ref = _reference()
    with client_module.StreamClient(port=port, timeout=20) as good:
        bad = socket.create_connection(("127.0.0.1", port), timeout=20)
        bad.recv(4096)                                       # the hello
        bad.sendall(struct.pack("<I", 5) + b"X1234")         # a frame of the wrong size
        reply = bad.recv(4096)
        assert reply[4:5] == b"E" and b"expected a frame" in reply
        assert bad.recv(4096) == b""                         # closed by the server
        bad.close()
        xs = np.random.default_rng(1).standard_normal((5, good.input_size)).astype(np.float32)
        ys = np.array([good.step(x) for x in xs])
        with pytest.raises(ValueError, match="a frame has 6 values; got 3"):
            good.send(np.zeros(3))
    assert_close(ys, torch_run(ref, xs)[0])
    stats = stop()
    assert stats["frames"] == 5 and stats["connections"] == 2

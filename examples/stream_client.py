"""A client for stream_service.py: one WebSocket is one stream; send frames, get one output
per frame, in order.

    python examples/stream_client.py --url ws://127.0.0.1:8765/stream --frames 100
    python examples/stream_client.py --url ws://127.0.0.1:8765/stream --window 8   # pipelined
    python examples/stream_client.py --url ws://127.0.0.1:8765/stream --save run.npz

NumPy and ``websockets`` only (the protocol is in stream_service.py's docstring).
"""
from __future__ import annotations

import argparse
import collections
import contextlib
import json
import sys
import time

import numpy as np
from websockets.sync.client import connect


class ServerError(RuntimeError):
    """The server sent an error message and closed the stream."""


class StreamClient:
    """A blocking WebSocket stream; every receive times out after ``timeout`` seconds."""

    def __init__(self, url: str = "ws://127.0.0.1:8765/stream", timeout: float = 10.0,
                 resume: bytes = None):
        self.timeout = timeout
        self._exit = contextlib.ExitStack()
        self.ws = self._exit.enter_context(connect(
            url + ("?resume=1" if resume is not None else ""), open_timeout=timeout,
            close_timeout=timeout))
        try:
            if resume is not None:
                self.ws.send(resume)
            hello = self._receive()
            if not isinstance(hello, str):
                raise ConnectionError("expected the server's hello (text JSON)")
            info = json.loads(hello)
            self.stream_id = info["stream"]
            self.input_size = info["input_size"]
            self.output_size = info["output_size"]
        except BaseException:
            self._exit.close()
            raise

    def _receive(self):
        message = self.ws.recv(timeout=self.timeout)
        if isinstance(message, str) and message.startswith('{"error"'):
            raise ServerError(json.loads(message)["error"])
        return message

    def send(self, frame) -> None:
        """Send one frame of ``input_size`` values."""
        body = np.asarray(frame, "<f4").reshape(-1)
        if body.size != self.input_size:
            raise ValueError(f"a frame has {self.input_size} values; got {body.size}")
        self.ws.send(body.tobytes())

    def receive(self) -> np.ndarray:
        """The output of the oldest frame sent and not yet received: ``(output_size,)``."""
        message = self._receive()
        if not isinstance(message, bytes):
            raise ConnectionError(f"expected a binary output; got text {message[:80]!r}")
        return np.frombuffer(message, "<f4").astype(np.float32)

    def step(self, frame) -> np.ndarray:
        self.send(frame)
        return self.receive()

    def run(self, frames, window: int = 1) -> np.ndarray:
        """All frames ``(T, input_size)`` -> outputs ``(T, output_size)``, with up to
        ``window`` frames in flight."""
        outputs, in_flight = [], collections.deque()
        for frame in frames:
            if len(in_flight) >= window:
                in_flight.popleft()
                outputs.append(self.receive())
            self.send(frame)
            in_flight.append(None)
        outputs.extend(self.receive() for _ in in_flight)
        return np.array(outputs, np.float32).reshape(len(outputs), self.output_size)

    def export(self) -> bytes:
        """The stream's state (send no frames in between), to resume it on any server of the
        same model: ``StreamClient(url, resume=data)``."""
        self.ws.send("export")
        data = self._receive()
        if not isinstance(data, bytes):
            raise ConnectionError("expected the exported state (binary)")
        return data

    def close(self) -> None:
        self._exit.close()

    def __enter__(self) -> "StreamClient":
        return self

    def __exit__(self, *exc) -> None:
        self.close()


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--url", default="ws://127.0.0.1:8765/stream")
    parser.add_argument("--frames", type=int, default=100, help="frames to send")
    parser.add_argument("--window", type=int, default=1, help="frames in flight")
    parser.add_argument("--seed", type=int, default=0, help="random frames seed")
    parser.add_argument("--timeout", type=float, default=10.0, help="seconds per receive")
    parser.add_argument("--save", help="write the inputs and outputs to this .npz")
    args = parser.parse_args(argv)
    with StreamClient(args.url, args.timeout) as client:
        frames = np.random.default_rng(args.seed).standard_normal(
            (args.frames, client.input_size)).astype(np.float32)
        started = time.perf_counter()
        outputs = client.run(frames, args.window)
        seconds = time.perf_counter() - started
    print(f"stream {client.stream_id}: {len(outputs)} frames in {seconds:.3f} s "
          f"({seconds / max(len(outputs), 1) * 1e6:.0f} us per frame)")
    if args.save:
        np.savez(args.save, inputs=frames, outputs=outputs)
    return 0


if __name__ == "__main__":
    sys.exit(main())

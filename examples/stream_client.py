"""A client for stream_server.py: one connection is one stream; send frames, get one output
per frame, in order.

    python examples/stream_client.py --port 8765 --frames 100            # one frame at a time
    python examples/stream_client.py --port 8765 --frames 100 --window 8 # 8 frames in flight
    python examples/stream_client.py --port 8765 --save run.npz          # keep inputs, outputs

Standard library and NumPy only (the protocol is in stream_server.py's docstring).
"""
from __future__ import annotations

import argparse
import collections
import json
import socket
import struct
import sys
import time

import numpy as np

HEADER = struct.Struct("<I")


class ServerError(RuntimeError):
    """The server sent an error message (b"E") and closed the connection."""


class StreamClient:
    """A blocking connection to the server; every socket operation times out."""

    def __init__(self, host: str = "127.0.0.1", port: int = 8765, timeout: float = 10.0):
        self.sock = socket.create_connection((host, port), timeout=timeout)
        self.sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        hello = self._expect(b"H")
        info = json.loads(hello)
        self.input_size = info["input_size"]
        self.output_size = info["output_size"]
        self.kind = info["kind"]
        self.stream_id = info["stream"]

    def _recv_exactly(self, n: int) -> bytes:
        chunks, left = [], n
        while left:
            chunk = self.sock.recv(left)
            if not chunk:
                raise ConnectionError("the server closed the connection")
            chunks.append(chunk)
            left -= len(chunk)
        return b"".join(chunks)

    def _expect(self, kind: bytes) -> bytes:
        size = HEADER.unpack(self._recv_exactly(HEADER.size))[0]
        message = self._recv_exactly(size)
        if message[:1] == b"E":
            raise ServerError(message[1:].decode("utf-8", "replace"))
        if message[:1] != kind:
            raise ConnectionError(f"expected a {kind!r} message; got {message[:1]!r}")
        return message[1:]

    def send(self, frame) -> None:
        """Send one frame of ``input_size`` values."""
        body = np.asarray(frame, "<f4").reshape(-1)
        if body.size != self.input_size:
            raise ValueError(f"a frame has {self.input_size} values; got {body.size}")
        self.sock.sendall(HEADER.pack(1 + 4 * body.size) + b"X" + body.tobytes())

    def receive(self) -> np.ndarray:
        """The output of the oldest frame sent and not yet received: ``(output_size,)``."""
        return np.frombuffer(self._expect(b"Y"), "<f4").astype(np.float32)

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

    def close(self) -> None:
        try:
            self.sock.sendall(HEADER.pack(1) + b"Q")
        except OSError:
            pass
        self.sock.close()

    def __enter__(self) -> "StreamClient":
        return self

    def __exit__(self, *exc) -> None:
        self.close()


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=8765)
    parser.add_argument("--frames", type=int, default=100, help="frames to send")
    parser.add_argument("--window", type=int, default=1, help="frames in flight")
    parser.add_argument("--seed", type=int, default=0, help="random frames seed")
    parser.add_argument("--timeout", type=float, default=10.0, help="seconds per socket call")
    parser.add_argument("--save", help="write the inputs and outputs to this .npz")
    args = parser.parse_args(argv)
    with StreamClient(args.host, args.port, args.timeout) as client:
        frames = np.random.default_rng(args.seed).standard_normal(
            (args.frames, client.input_size)).astype(np.float32)
        started = time.perf_counter()
        outputs = client.run(frames, args.window)
        seconds = time.perf_counter() - started
    print(f"stream {client.stream_id}: {len(outputs)} frames in {seconds:.3f} s "
          f"({seconds / max(len(outputs), 1) * 1e6:.0f} us per frame), "
          f"last output[:4] = {np.array2string(outputs[-1][:4], precision=4) if len(outputs) else '-'}")
    if args.save:
        np.savez(args.save, inputs=frames, outputs=outputs)
    return 0


if __name__ == "__main__":
    sys.exit(main())

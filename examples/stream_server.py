"""A streaming inference service: every TCP connection is one stream of a recurrent model, and
all live connections are stepped together through one ``rnnengine`` Pool (micro-batching).

    python examples/stream_server.py --port 8765                  # small random demo model
    python examples/stream_server.py --model model.onnx --port 8765
    python examples/stream_client.py --port 8765 --frames 100     # in another shell

Each tick takes the oldest waiting frame of every connection that has one, runs one
``pool.step`` over all of them (one batched product, in a worker thread so the event loop keeps
reading sockets; the GIL is released while it computes), and writes each output back to its
connection. A connection's frames are processed in order, one per tick; its state lives in
the pool from connect to disconnect.

Protocol, both directions: messages framed as a 4-byte little-endian length, then that many
bytes; the first byte of a message is its type.

    server -> client  b"H" + JSON {"input_size", "output_size", "kind", "stream"}   on connect
    client -> server  b"X" + input_size float32 (little-endian)                     one frame
    server -> client  b"Y" + output_size float32 (little-endian)                    its output
    client -> server  b"Q"                                                          goodbye
    server -> client  b"E" + UTF-8 text, then the server closes the connection      an error

Standard library and rnnengine only. The server stops on SIGINT/SIGTERM or after
``--max-seconds``, and prints one JSON line of statistics to stdout when it stops.
"""
from __future__ import annotations

import argparse
import asyncio
import collections
import json
import signal
import struct
import sys
import time
from typing import Deque, Dict, Optional

import numpy as np

import rnnengine
from rnnengine.layers import Layer

HEADER = struct.Struct("<I")
GATES = {"lstm": 4, "gru": 3, "rnn": 1}
MAX_PENDING = 1024          # frames one connection may have waiting before it is refused
MAX_UNSENT = 1 << 22        # bytes of outputs a client may leave unread before it is dropped


def demo_arrays(kind: str, input_size: int, hidden_size: int, num_layers: int, seed: int) -> list:
    """Random ONNX-layout weights per layer ({"W", "R", "B"}), uniform in +-1/sqrt(H)."""
    rng = np.random.default_rng(seed)
    G, H = GATES[kind], hidden_size
    bound = 1.0 / np.sqrt(H)
    layers = []
    for k in range(num_layers):
        size = input_size if k == 0 else H
        layers.append({name: rng.uniform(-bound, bound, shape).astype(np.float32)
                       for name, shape in (("W", (1, G * H, size)), ("R", (1, G * H, H)),
                                           ("B", (1, 2 * G * H)))})
    return layers


def demo_model(kind: str = "lstm", input_size: int = 16, hidden_size: int = 32,
               num_layers: int = 1, seed: int = 0) -> rnnengine.Model:
    """The demo model: ``demo_arrays`` as an engine model (GRU as PyTorch's, linear before
    reset)."""
    extra = {"linear_before_reset": 1} if kind == "gru" else {}
    return rnnengine.Model([Layer.from_onnx(kind, a["W"], a["R"], a["B"], **extra)
                            for a in demo_arrays(kind, input_size, hidden_size, num_layers, seed)])


def encode(kind: bytes, body: bytes = b"") -> bytes:
    return HEADER.pack(1 + len(body)) + kind + body


async def read_message(reader: asyncio.StreamReader, limit: int) -> Optional[bytes]:
    """The next message, or None at a clean end of stream. ValueError if it is too long."""
    try:
        size = HEADER.unpack(await reader.readexactly(HEADER.size))[0]
    except asyncio.IncompleteReadError as eof:
        if eof.partial:
            raise ValueError("connection ended inside a message header") from None
        return None
    if not 1 <= size <= limit:
        raise ValueError(f"message of {size} bytes; expected 1 to {limit}")
    return await reader.readexactly(size)


class Connection:
    def __init__(self, sid: int, writer: asyncio.StreamWriter):
        self.sid = sid
        self.writer = writer
        self.frames: Deque[np.ndarray] = collections.deque()


class Service:
    def __init__(self, model: rnnengine.Model, capacity: int, batch_window: float):
        self.model = model
        self.pool = model.pool(capacity)
        self.batch_window = batch_window
        self.connections: Dict[int, Connection] = {}
        # The pool is touched only under this lock: the tick holds it across its step (which
        # runs in a worker thread), connect/disconnect take it to open/close streams.
        self.pool_lock = asyncio.Lock()
        self.wakeup = asyncio.Event()
        self.stats = {"connections": 0, "refused": 0, "ticks": 0, "frames": 0, "max_batch": 0}

    async def handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        I = self.model.input_size
        async with self.pool_lock:
            try:
                sid = self.pool.open()
            except RuntimeError:
                sid = None
            else:
                conn = self.connections[sid] = Connection(sid, writer)
        if sid is None:
            self.stats["refused"] += 1
            writer.write(encode(b"E", f"server full ({self.pool.capacity} streams)".encode()))
            await self._close(writer)
            return
        self.stats["connections"] += 1
        hello = {"input_size": I, "output_size": self.model.output_size,
                 "kind": self.model.kind, "stream": sid}
        writer.write(encode(b"H", json.dumps(hello).encode()))
        try:
            while True:
                message = await read_message(reader, 1 + 4 * I)
                if message is None or message[:1] == b"Q":
                    break
                if message[:1] != b"X" or len(message) != 1 + 4 * I:
                    raise ValueError(f"expected a frame b'X' + {I} float32 ({1 + 4 * I} bytes); "
                                     f"got type {message[:1]!r}, {len(message)} bytes")
                if len(conn.frames) >= MAX_PENDING:
                    raise ValueError(f"more than {MAX_PENDING} frames waiting; read the outputs")
                conn.frames.append(np.frombuffer(message, "<f4", offset=1))
                self.wakeup.set()
        except ValueError as error:
            writer.write(encode(b"E", str(error).encode()))
        except ConnectionError:
            pass
        finally:
            async with self.pool_lock:
                del self.connections[sid]
                self.pool.close(sid)
            await self._close(writer)

    @staticmethod
    async def _close(writer: asyncio.StreamWriter) -> None:
        try:
            writer.close()
            await writer.wait_closed()
        except ConnectionError:
            pass

    async def ticker(self) -> None:
        loop = asyncio.get_running_loop()
        while True:
            await self.wakeup.wait()
            self.wakeup.clear()
            if self.batch_window:
                await asyncio.sleep(self.batch_window)   # let more connections' frames arrive
            while True:
                async with self.pool_lock:
                    batch = [c for c in self.connections.values() if c.frames]
                    if not batch:
                        break
                    ids = [c.sid for c in batch]
                    xs = np.stack([c.frames.popleft() for c in batch])
                    ys = await loop.run_in_executor(None, self.pool.step, ids, xs)
                self.stats["ticks"] += 1
                self.stats["frames"] += len(batch)
                self.stats["max_batch"] = max(self.stats["max_batch"], len(batch))
                for conn, y in zip(batch, ys):
                    if conn.writer.is_closing():
                        continue
                    if conn.writer.transport.get_write_buffer_size() > MAX_UNSENT:
                        conn.writer.transport.abort()   # a client that never reads its outputs
                        continue
                    conn.writer.write(encode(b"Y", y.astype("<f4").tobytes()))


async def serve(model: rnnengine.Model, host: str, port: int, capacity: int,
                batch_window: float, max_seconds: Optional[float]) -> dict:
    service = Service(model, capacity, batch_window)
    server = await asyncio.start_server(service.handle, host, port)
    bound = server.sockets[0].getsockname()
    print(f"listening on {bound[0]}:{bound[1]}", flush=True)
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        try:
            loop.add_signal_handler(sig, stop.set)
        except (NotImplementedError, RuntimeError):   # not on this platform / thread
            pass
    ticker = asyncio.create_task(service.ticker())
    stopping = asyncio.create_task(stop.wait())
    started = time.monotonic()
    # Runs until a signal, the time limit, or a failure of the ticker (raised below).
    await asyncio.wait({ticker, stopping}, timeout=max_seconds,
                       return_when=asyncio.FIRST_COMPLETED)
    server.close()
    for task in (ticker, stopping):
        task.cancel()
    for conn in list(service.connections.values()):
        conn.writer.transport.abort()
    failure = (await asyncio.gather(ticker, return_exceptions=True))[0]
    if isinstance(failure, Exception):
        raise failure
    return dict(service.stats, seconds=round(time.monotonic() - started, 3))


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--model", help="model file for rnnengine.load (default: random demo model)")
    parser.add_argument("--kind", choices=sorted(GATES), default="lstm", help="demo model cell")
    parser.add_argument("--input-size", type=int, default=16, help="demo model input size")
    parser.add_argument("--hidden-size", type=int, default=32, help="demo model hidden size")
    parser.add_argument("--layers", type=int, default=1, help="demo model layers")
    parser.add_argument("--seed", type=int, default=0, help="demo model weights seed")
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=8765, help="0 picks a free port")
    parser.add_argument("--capacity", type=int, default=64, help="most concurrent streams")
    parser.add_argument("--batch-window-ms", type=float, default=1.0,
                        help="wait this long after a frame arrives for frames of other streams")
    parser.add_argument("--max-seconds", type=float, default=None, help="stop after this long")
    args = parser.parse_args(argv)
    if args.model:
        model = rnnengine.load(args.model)
    else:
        model = demo_model(args.kind, args.input_size, args.hidden_size, args.layers, args.seed)
    print(model, file=sys.stderr, flush=True)
    stats = asyncio.run(serve(model, args.host, args.port, args.capacity,
                              args.batch_window_ms / 1000.0, args.max_seconds))
    print(json.dumps(stats), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())

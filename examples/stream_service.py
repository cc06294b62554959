"""A streaming inference service: an ASGI app (Starlette, served by uvicorn) where every
WebSocket connection is one stream of a recurrent model, stepped through one
``rnnengine.Batcher`` (concurrent connections are batched into one pool step).

    pip install starlette uvicorn websockets
    python examples/stream_service.py --port 8765                     # small random demo model
    python examples/stream_service.py --model model.onnx --port 8765
    python examples/stream_client.py --url ws://127.0.0.1:8765/stream --frames 100

Endpoints:

    GET  /info     JSON {"kind", "input_size", "output_size", "max_streams"}
    GET  /stats    JSON counters of the Batcher (batches, steps, largest_batch, ...)
    WS   /stream   one stream: the server first sends a text JSON hello {"stream": id, ...};
                   then each binary message from the client is one frame (input_size
                   float32, little-endian) and gets one binary reply (output_size float32),
                   in order. A client may send several frames before reading (pipelining).
                   ``/stream?resume=1``: the client's first message is exported state bytes
                   to continue from (``export`` below). A text message "export" gets the
                   stream's state as a binary reply, to resume it on any server of the model.
                   Errors: a text JSON {"error": "..."} and the server closes (code 1008 for
                   a bad message, 1013 when all streams are taken).

The model's work runs in the Batcher's worker thread with the GIL released, so the event loop
keeps serving sockets while a batch computes. The server stops on SIGINT/SIGTERM (or after
``--max-seconds``): it closes the Batcher (every step in flight finishes) and prints one JSON
line of its statistics.
"""
from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import socket
import sys

import numpy as np
from starlette.applications import Starlette
from starlette.responses import JSONResponse
from starlette.routing import Route, WebSocketRoute
from starlette.websockets import WebSocket, WebSocketDisconnect

import rnnengine
from rnnengine.core.layers import Layer

GATES = {"lstm": 4, "gru": 3, "rnn": 1}
POLICY_VIOLATION, TRY_AGAIN_LATER = 1008, 1013


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


class BadMessage(ValueError):
    """The client sent something the protocol does not allow."""


def create_app(model: rnnengine.Model, max_batch: int = 64, max_delay_us: float = 500,
               max_streams: int = 256, idle_seconds=None, report=None) -> Starlette:
    """The ASGI app. Its Batcher lives from startup to shutdown (``app.state.batcher``);
    ``report``, if given, is called with the Batcher's final counters at shutdown."""
    frame_bytes = 4 * model.input_size

    @contextlib.asynccontextmanager
    async def lifespan(app):
        app.state.batcher = rnnengine.Batcher(model, max_batch=max_batch,
                                              max_delay_us=max_delay_us,
                                              max_streams=max_streams, idle_seconds=idle_seconds)
        try:
            yield
        finally:
            app.state.batcher.close()     # drains: every step in flight gets its result
            if report is not None:
                report(app.state.batcher.stats)

    async def info(request):
        return JSONResponse({"kind": model.kind, "input_size": model.input_size,
                             "output_size": model.output_size, "max_streams": max_streams})

    async def stats(request):
        batcher = request.app.state.batcher
        return JSONResponse(dict(batcher.stats, open_streams=len(batcher)))

    async def stream(ws: WebSocket):
        batcher: rnnengine.Batcher = ws.app.state.batcher
        await ws.accept()
        sid = None
        try:
            if ws.query_params.get("resume"):
                data = await ws.receive_bytes()
                try:
                    sid = batcher.resume(data)
                except (TypeError, ValueError) as error:
                    raise BadMessage(str(error)) from None
            else:
                sid = batcher.open()
        except RuntimeError as error:           # full (or shutting down)
            await ws.send_text(json.dumps({"error": str(error)}))
            await ws.close(TRY_AGAIN_LATER)
            return
        except BadMessage as error:
            await ws.send_text(json.dumps({"error": str(error)}))
            await ws.close(POLICY_VIOLATION)
            return
        try:
            await ws.send_text(json.dumps({"stream": sid, "input_size": model.input_size,
                                           "output_size": model.output_size}))
            while True:
                message = await ws.receive()
                if message["type"] == "websocket.disconnect":
                    break
                if message.get("text") == "export":
                    await ws.send_bytes(batcher.export_state(sid))
                    continue
                frame = message.get("bytes")
                if frame is None or len(frame) != frame_bytes:
                    raise BadMessage(f"expected a binary frame of {model.input_size} float32 "
                                     f"({frame_bytes} bytes) or the text 'export'; got "
                                     f"{'text' if frame is None else f'{len(frame)} bytes'}")
                y = await batcher.step_async(sid, np.frombuffer(frame, "<f4"))
                await ws.send_bytes(y.astype("<f4").tobytes())
        except BadMessage as error:
            await ws.send_text(json.dumps({"error": str(error)}))
            await ws.close(POLICY_VIOLATION)
        except WebSocketDisconnect:
            pass
        finally:
            if sid in batcher:
                batcher.close(sid)

    return Starlette(routes=[Route("/info", info), Route("/stats", stats),
                             WebSocketRoute("/stream", stream)], lifespan=lifespan)


def main(argv=None) -> int:
    import uvicorn

    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--model", help="model file for rnnengine.load (default: random demo model)")
    parser.add_argument("--kind", choices=sorted(GATES), default="lstm", help="demo model cell")
    parser.add_argument("--input-size", type=int, default=16, help="demo model input size")
    parser.add_argument("--hidden-size", type=int, default=32, help="demo model hidden size")
    parser.add_argument("--layers", type=int, default=1, help="demo model layers")
    parser.add_argument("--seed", type=int, default=0, help="demo model weights seed")
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=8765, help="0 picks a free port")
    parser.add_argument("--max-streams", type=int, default=256, help="most concurrent streams")
    parser.add_argument("--max-batch", type=int, default=64)
    parser.add_argument("--max-delay-us", type=float, default=500,
                        help="longest a step waits for steps of other streams")
    parser.add_argument("--max-seconds", type=float, default=None, help="stop after this long")
    args = parser.parse_args(argv)
    if args.model:
        model = rnnengine.load(args.model)
    else:
        model = demo_model(args.kind, args.input_size, args.hidden_size, args.layers, args.seed)
    print(model, file=sys.stderr, flush=True)
    app = create_app(model, args.max_batch, args.max_delay_us, args.max_streams,
                     report=lambda stats: print(json.dumps(stats), flush=True))
    # Bind here, so "--port 0" can report the port it got before serving.
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.bind((args.host, args.port))
    sock.listen(128)                  # clients may connect (and queue) from the line below on
    host, port = sock.getsockname()[:2]
    print(f"listening on {host}:{port}", flush=True)
    server = uvicorn.Server(uvicorn.Config(app, log_level="warning", lifespan="on"))

    async def serve():
        if args.max_seconds is not None:
            asyncio.get_running_loop().call_later(args.max_seconds,
                                                  setattr, server, "should_exit", True)
        await server.serve(sockets=[sock])

    # On SIGTERM/SIGINT uvicorn shuts down (the lifespan closes the Batcher and reports), then
    # re-raises the signal, so the process ends as killed by it, as a supervisor expects.
    asyncio.run(serve())
    return 0


if __name__ == "__main__":
    sys.exit(main())

"""The server behind ``rnnengine serve MODEL``: an ASGI app (Starlette; uvicorn runs it) where
each WebSocket connection is one stream of a whole ONNX model, all of them stepped through one
``Batcher`` (steps that arrive together share a pool step).

Protocol of ``GET /stream`` (WebSocket):

* A binary frame is one step's input: little-endian float32 values, cast to the input's
  element type. By default it is the stream's one step input (neither state nor a fixed
  ``--feed``), shaped as the model declares it: every unknown dim is 1, except the last
  unknown one, which takes whatever the frame's length leaves (Silero's ``input``
  ``[batch, sequence]`` and a 512-value frame -> ``(1, 512)``).
* A text frame ``{"inputs": {"name": [shape], ...}}`` (a JSON header) names the inputs of
  every following binary frame: the frame is their values concatenated in that order.
* Each step answers with one binary frame: the non-state outputs as float32, concatenated in
  the model's output order. Before the first answer and whenever the outputs' shapes change,
  a text frame ``{"outputs": [{"name": ..., "shape": [...]}, ...]}`` describes them.
* Text ``export``: the stream's state as a binary frame (``Batcher.export_state`` bytes).
  ``/stream?resume=1``: the first frame is such a state; the stream continues from it, on
  this server or any other serving the same model.
* The server ends a stream with a text frame ``{"closing": reason, "steps": n}``, the
  exported state (binary) and close code 1001, when the stream idled past ``--idle-ttl``,
  when a step missed ``--step-timeout`` (the step never ran) or when the server drains at
  SIGTERM. Frames sent after the last answer were not applied: resend them after resuming.
* A bad frame: text ``{"error": ...}`` and close code 1008. A refused stream (server full or
  draining, or steps already slower than half the step timeout): close code 1013.

``POST /run``: one ``InferenceSession.run`` of a JSON object ``{input name: nested list}``
(answered as JSON ``{output name: nested list}``) or of an ``.npz`` body (answered as
``.npz``); the fixed ``--feed`` values fill inputs not given. ``GET /metrics`` (Prometheus
text), ``GET /healthz`` (the process is up), ``GET /readyz`` (it takes new streams).
"""
from __future__ import annotations

import asyncio
import contextlib
import io
import json
import logging
import os
import signal
import threading
import time
from typing import Dict, List, Optional

import numpy as np

from ..core.log import log
from .batcher import Batcher
from ..errors import DeadlineExceeded, StreamClosed, StreamsFull
from ..runtime.session import InferenceSession
from .metrics import Metrics

GOING_AWAY, POLICY_VIOLATION, TRY_AGAIN_LATER = 1001, 1008, 1013
CONFIG_ENV = "RNNENGINE_SERVE_CONFIG"     # the options, for worker processes (--workers)


def frame_shape(arg, count: int) -> tuple:
    """The shape ``count`` values of a binary frame take for input ``arg``: the declared
    shape, unknown dims 1 except the last unknown one, which takes the rest."""
    shape = list(arg.shape) if arg.shape is not None else [None]
    unknown = [k for k, d in enumerate(shape) if not isinstance(d, int)]
    known = 1
    for d in shape:
        known *= d if isinstance(d, int) else 1
    for k in unknown:
        shape[k] = 1
    if unknown and known and count % known == 0:
        shape[unknown[-1]] = count // known
    if int(np.prod(shape)) != count:
        raise ValueError(f"a frame of {count} float32 values does not fit input {arg.name!r} "
                         f"of shape {arg.shape}")
    return tuple(shape)


class _Conn:
    """One WebSocket stream: its Batcher id, input header, last output shapes, and why the
    server wants it closed (set by drain)."""

    def __init__(self):
        self.sid: Optional[int] = None
        self.header: Optional[List[tuple]] = None     # [(arg, shape)] from a JSON header
        self.shapes: Optional[list] = None
        self.reason: Optional[str] = None
        self.stop = asyncio.Event()

    def close_for(self, reason: str) -> None:
        self.reason = reason
        self.stop.set()


class Service:
    """The model, its Batcher, the open streams and the counters behind the app."""

    def __init__(self, sess: InferenceSession, state: Optional[Dict[str, str]] = None,
                 feeds: Optional[Dict[str, np.ndarray]] = None, max_streams: int = 256,
                 step_timeout: float = 5.0, idle_ttl: Optional[float] = None,
                 max_batch: int = 64, max_delay_us: float = 500):
        self.sess = sess
        self.fixed = dict(feeds or {})
        self.batcher = Batcher(sess, max_batch=max_batch, max_delay_us=max_delay_us,
                               max_streams=max_streams, state=state or None,
                               feeds=self.fixed or None)
        if state:
            pairs = dict(state)
        else:
            try:
                pairs = sess.state_pairs()
            except ValueError:
                pairs = {}
        self.args = {a.name: a for a in sess.get_inputs()}
        self.step_inputs = [n for n in self.args if n not in pairs.values() and
                            n not in self.fixed]
        self.output_names = [o.name for o in sess.get_outputs() if o.name not in pairs]
        self.max_streams = max_streams
        self.step_timeout = step_timeout
        self.idle_ttl = idle_ttl
        self.metrics = Metrics()
        self.conns: set = set()
        self.draining = False
        self.loop: Optional[asyncio.AbstractEventLoop] = None   # the server's, once it runs
        log.info("serving: step inputs %s, outputs %s, state %s, fixed feeds %s, "
                 "max_streams %d", self.step_inputs, self.output_names, pairs,
                 sorted(self.fixed), max_streams)

    # -- admission -------------------------------------------------------------------------
    def refusal(self) -> Optional[str]:
        """Why a new stream is refused now (None: it is taken)."""
        if self.draining:
            return "the server is draining"
        if len(self.conns) >= self.max_streams:
            return f"the server is full: {self.max_streams} streams are open"
        if self.metrics.recent > self.step_timeout / 2:
            return (f"steps already take {self.metrics.recent:.3f} s on average, near the "
                    f"{self.step_timeout} s step timeout")
        return None

    @property
    def ready(self) -> bool:
        return self.refusal() is None

    # -- frames ----------------------------------------------------------------------------
    def header(self, text: str) -> List[tuple]:
        """A JSON header -> [(input arg, shape)]; ValueError if it does not name step inputs
        with integer shapes."""
        try:
            inputs = json.loads(text)["inputs"]
            items = [(name, tuple(int(d) for d in shape)) for name, shape in inputs.items()]
        except (ValueError, KeyError, TypeError, AttributeError):
            raise ValueError('a text frame is "export" or a JSON header {"inputs": {name: '
                             'shape}}; got ' + repr(text[:80])) from None
        for name, _ in items:
            if name not in self.step_inputs:
                raise ValueError(f"{name!r} is not a step input; the step inputs are "
                                 f"{self.step_inputs}")
        return [(self.args[name], shape) for name, shape in items]

    def feeds(self, data: bytes, header: Optional[List[tuple]]) -> dict:
        """A binary frame -> the step's feeds."""
        if len(data) % 4:
            raise ValueError(f"a binary frame is float32 values; got {len(data)} bytes")
        values = np.frombuffer(data, "<f4")
        if header is None:
            if len(self.step_inputs) != 1:
                raise ValueError(f"this model's steps take {self.step_inputs}: send a JSON "
                                 "header naming their shapes first")
            arg = self.args[self.step_inputs[0]]
            header = [(arg, frame_shape(arg, values.size))]
        sizes = [int(np.prod(shape)) for _, shape in header]
        if sum(sizes) != values.size:
            raise ValueError(f"the header's inputs take {sum(sizes)} float32 values; the frame "
                             f"holds {values.size}")
        feeds, at = {}, 0
        for (arg, shape), n in zip(header, sizes):
            part = values[at:at + n].reshape(shape)
            feeds[arg.name] = part.astype(arg.dtype if arg.dtype is not None else np.float32)
            at += n
        return feeds

    # -- one stream ------------------------------------------------------------------------
    async def serve_stream(self, ws) -> None:
        await ws.accept()
        why = self.refusal()
        if why is not None:
            self.metrics.add("streams_refused_total")
            log.warning("stream refused: %s", why)
            await ws.close(code=TRY_AGAIN_LATER, reason=why[:120])
            return
        conn = _Conn()
        self.conns.add(conn)
        recv = None
        try:
            if ws.query_params.get("resume") not in (None, "", "0"):
                message = await ws.receive()
                if message.get("bytes") is None:
                    await self._fail(ws, "resume=1: the first frame must be the exported state")
                    return
                conn.sid = self.batcher.resume(message["bytes"])
            else:
                conn.sid = self.batcher.open()
            self.metrics.add("streams_opened_total")
            log.info("stream %d opened (%d open)", conn.sid, len(self.conns))
            while True:
                if conn.reason is not None:
                    await self._farewell(ws, conn)
                    return
                if recv is None:
                    recv = asyncio.ensure_future(ws.receive())
                stop = asyncio.ensure_future(conn.stop.wait())
                done, _ = await asyncio.wait({recv, stop}, timeout=self.idle_ttl,
                                             return_when=asyncio.FIRST_COMPLETED)
                stop.cancel()
                if recv not in done:
                    if conn.reason is None:
                        conn.reason = "idle"
                        self.metrics.add("streams_idle_closed_total")
                    continue
                message, recv = recv.result(), None
                if message["type"] == "websocket.disconnect":
                    return
                if not await self._message(ws, conn, message):
                    return
        except StreamsFull as e:
            self.metrics.add("streams_refused_total")
            log.warning("stream refused: %s", e)
            await ws.close(code=TRY_AGAIN_LATER, reason=str(e)[:120])
        except (ValueError, TypeError) as e:   # a state frame that does not fit this model
            await self._fail(ws, str(e))
        except Exception as e:   # the client left mid-send (a closed socket)
            log.info("stream %s ended: %s: %s", conn.sid, type(e).__name__, e)
        finally:
            if recv is not None:
                recv.cancel()
            self.conns.discard(conn)
            if conn.sid is not None:
                try:
                    self.batcher.close(conn.sid)
                except StreamClosed:     # the batcher itself was closed at shutdown
                    pass
                log.info("stream %d closed (%d open)", conn.sid, len(self.conns))

    async def _message(self, ws, conn: _Conn, message: dict) -> bool:
        """Handle one frame; False when the stream has ended."""
        text = message.get("text")
        if text is not None:
            if text == "export":
                await ws.send_bytes(self.batcher.export_state(conn.sid))
                return True
            try:
                conn.header = self.header(text)
            except ValueError as e:
                await self._fail(ws, str(e))
                return False
            return True
        start = time.perf_counter()
        try:
            outs = await self.batcher.step_async(
                conn.sid, self.feeds(message.get("bytes") or b"", conn.header),
                timeout=self.step_timeout)
        except DeadlineExceeded as e:
            self.metrics.add("step_deadline_exceeded_total")
            log.warning("stream %d: %s", conn.sid, e)
            conn.reason = "deadline"
            return True
        except (ValueError, TypeError) as e:
            self.metrics.add("step_errors_total")
            await self._fail(ws, str(e))
            return False
        self.metrics.observe(time.perf_counter() - start)
        self.metrics.add("steps_total")
        shapes = [o.shape for o in outs]
        if shapes != conn.shapes:
            conn.shapes = shapes
            await ws.send_text(json.dumps({"outputs": [
                {"name": n, "shape": list(s)} for n, s in zip(self.output_names, shapes)]}))
        await ws.send_bytes(b"".join(np.asarray(o, "<f4").tobytes() for o in outs))
        return True

    async def _fail(self, ws, error: str) -> None:
        await ws.send_text(json.dumps({"error": error}))
        await ws.close(code=POLICY_VIOLATION, reason=error[:120])

    async def _farewell(self, ws, conn: _Conn) -> None:
        """Hand the client its state and close: it resumes on any server of the model."""
        steps = self.batcher.steps(conn.sid)
        await ws.send_text(json.dumps({"closing": conn.reason, "steps": steps}))
        await ws.send_bytes(self.batcher.export_state(conn.sid))
        await ws.close(code=GOING_AWAY, reason=conn.reason)
        if conn.reason == "drain":
            self.metrics.add("streams_drained_total")
        log.info("stream %d handed its state after %d steps (%s)", conn.sid, steps,
                 conn.reason)

    async def drain(self, timeout: float = 30.0) -> None:
        """Refuse new streams, hand every open one its state, wait for them to close."""
        self.draining = True
        log.info("draining %d stream(s)", len(self.conns))
        for conn in list(self.conns):
            conn.close_for("drain")
        end = time.monotonic() + timeout
        while self.conns and time.monotonic() < end:
            await asyncio.sleep(0.01)

    # -- one-shot run ----------------------------------------------------------------------
    def run(self, body: bytes) -> tuple:
        """A /run body -> (answer bytes, media type). JSON or .npz in, the same out."""
        npz = body[:2] == b"PK"
        if npz:
            with np.load(io.BytesIO(body), allow_pickle=False) as f:
                given = {name: f[name] for name in f.files}
        else:
            given = json.loads(body)
            if not isinstance(given, dict):
                raise ValueError("POST /run takes a JSON object {input name: nested list} or "
                                 "an .npz")
            given = {name: np.asarray(value, dtype=self._dtype(name))
                     for name, value in given.items()}
        feeds = dict(self.fixed)
        feeds.update(given)
        outs = self.sess.run(None, feeds)
        names = [o.name for o in self.sess.get_outputs()]
        if npz:
            buf = io.BytesIO()
            np.savez(buf, **dict(zip(names, outs)))
            return buf.getvalue(), "application/octet-stream"
        return (json.dumps({n: np.asarray(o).tolist() for n, o in zip(names, outs)}).encode(),
                "application/json")

    def _dtype(self, name: str):
        arg = self.args.get(name)
        if arg is None:
            raise ValueError(f"unknown input name {name!r}; the inputs are {list(self.args)}")
        return arg.dtype if arg.dtype is not None else np.float32


def build_app(service: Service):
    """The Starlette app over ``service`` (Starlette is imported only here: an optional
    dependency, ``rnnengine[serve]``)."""
    from starlette.applications import Starlette
    from starlette.concurrency import run_in_threadpool
    from starlette.responses import JSONResponse, PlainTextResponse, Response
    from starlette.routing import Route, WebSocketRoute

    async def run(request):
        try:
            body, media = await run_in_threadpool(service.run, await request.body())
        except (ValueError, TypeError, KeyError) as e:
            return JSONResponse({"error": str(e)}, status_code=400)
        service.metrics.add("runs_total")
        return Response(body, media_type=media)

    async def metrics(request):
        text = service.metrics.render(len(service.conns), service.batcher.stats)
        return PlainTextResponse(text, media_type="text/plain; version=0.0.4")

    async def healthz(request):
        return PlainTextResponse("ok")

    async def readyz(request):
        why = service.refusal()
        return PlainTextResponse(why or "ready", status_code=503 if why else 200)

    @contextlib.asynccontextmanager
    async def lifespan(app):
        service.loop = asyncio.get_running_loop()     # for a drain started from elsewhere
        restore = _drain_on_sigterm(service)
        try:
            yield
        finally:
            restore()
            service.batcher.close()

    return Starlette(routes=[WebSocketRoute("/stream", service.serve_stream),
                             Route("/run", run, methods=["POST"]),
                             Route("/metrics", metrics), Route("/healthz", healthz),
                             Route("/readyz", readyz)], lifespan=lifespan)


def _drain_on_sigterm(service: Service):
    """In the main thread, put a drain in front of the server's own SIGTERM handler (uvicorn
    closes WebSockets at once, before the app could hand out the streams' state). Returns
    the undo."""
    if threading.current_thread() is not threading.main_thread():
        return lambda: None
    loop = asyncio.get_running_loop()
    previous = signal.getsignal(signal.SIGTERM)

    async def drain_then_exit(frame):
        await service.drain()
        if callable(previous):
            previous(signal.SIGTERM, frame)

    def handler(sig, frame):
        if service.draining and callable(previous):   # a second SIGTERM: stop now
            previous(sig, frame)
            return
        service.draining = True
        loop.call_soon_threadsafe(lambda: loop.create_task(drain_then_exit(frame)))

    signal.signal(signal.SIGTERM, handler)
    return lambda: signal.signal(signal.SIGTERM, previous)


def service_from_config(config: dict) -> Service:
    """A Service from the options ``rnnengine serve`` parsed (JSON-safe: state pairs, fixed
    feeds as lists with their dtype)."""
    sess = InferenceSession(config["model"])
    feeds = {name: np.asarray(value, dtype) for name, (value, dtype) in
             config.get("feeds", {}).items()}
    return Service(sess, state=config.get("state") or None, feeds=feeds,
                   max_streams=config["max_streams"], step_timeout=config["step_timeout"],
                   idle_ttl=config.get("idle_ttl"), max_batch=config["max_batch"],
                   max_delay_us=config["max_delay_us"])


class JsonLines(logging.Formatter):
    """One JSON object per log record: easy to ship to a log store."""

    def format(self, record: logging.LogRecord) -> str:
        entry = {"time": round(record.created, 3), "level": record.levelname.lower(),
                 "logger": record.name, "message": record.getMessage()}
        if record.exc_info:
            entry["error"] = self.formatException(record.exc_info)
        return json.dumps(entry)


def log_to_stderr(level: str) -> None:
    """The server's logging (never the library's: it adds no handler of its own): the
    rnnengine logger as JSON lines on stderr."""
    handler = logging.StreamHandler()
    handler.setFormatter(JsonLines())
    log.addHandler(handler)
    log.setLevel(level.upper())


def app_from_env():
    """The app of one worker process (``--workers N``): the options come in the
    environment, since uvicorn starts each worker from an import string."""
    config = json.loads(os.environ[CONFIG_ENV])
    log_to_stderr(config.get("log_level", "info"))
    return build_app(service_from_config(config))

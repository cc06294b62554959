"""``rnnengine serve MODEL``: a whole ONNX model served over WebSocket streams, one-shot
``POST /run``, Prometheus ``/metrics`` and health checks (the protocol: serving/app.py).
Needs the optional extra ``rnnengine[serve]`` (Starlette + uvicorn), imported only here."""
from __future__ import annotations

import argparse
import json
import os

from ..serving.app import CONFIG_ENV, Service, build_app, log_to_stderr
from ._common import CommandError, add_command, optional_import
from ._session import _split, load_session, parse_feeds

HELP = ("serve a whole ONNX model: WebSocket streams (GET /stream), POST /run, GET /metrics, "
        "/healthz, /readyz")


def add_parser(sub) -> None:
    p = add_command(sub, "serve", HELP, cmd_serve, takes_model=False)
    p.add_argument("model", metavar="MODEL", help="an .onnx model")
    p.add_argument("--state", action="append", default=[], metavar="OUT=IN",
                   help="a state pair: output OUT is fed back as input IN at the next step "
                   "(repeatable; default: the pairs found by name)")
    p.add_argument("--feed", action="append", default=[], metavar="NAME=VALUE",
                   help="an input fixed for every step and run, e.g. sr=16000 (repeatable)")
    p.add_argument("--host", default="127.0.0.1", help="address to listen on (default "
                   "127.0.0.1: this machine only)")
    p.add_argument("--port", type=int, default=8000)
    p.add_argument("--workers", type=int, default=1,
                   help="server processes, each with its own copy of the model and its own "
                   "metrics (a stream moves between them by its exported state)")
    p.add_argument("--max-streams", type=int, default=256,
                   help="open streams per process; more are refused (close code 1013)")
    p.add_argument("--step-timeout", type=float, default=5.0,
                   help="seconds a step may wait for its batch; new streams are refused "
                   "while steps average half of it")
    p.add_argument("--idle-ttl", type=float, default=None,
                   help="seconds of silence after which a stream gets its state and is "
                   "closed (default: never)")
    p.add_argument("--max-batch", type=int, default=64, help="most streams in one step")
    p.add_argument("--max-delay-us", type=float, default=500,
                   help="longest a step waits for others to batch with")
    p.add_argument("--log-level", default="info",
                   choices=("debug", "info", "warning", "error"))


def config_from_args(args: argparse.Namespace) -> tuple:
    """(the options as a JSON-safe dict, which worker processes read from the environment;
    the session; the fixed feeds)."""
    for name in ("workers", "max_streams", "max_batch"):
        if getattr(args, name) < 1:
            raise CommandError(f"--{name.replace('_', '-')} must be >= 1")
    if args.step_timeout <= 0 or (args.idle_ttl is not None and args.idle_ttl <= 0):
        raise CommandError("--step-timeout and --idle-ttl take seconds > 0")
    sess = load_session(args.model)
    feeds = parse_feeds(sess, args.feed)
    state = dict(_split(text, "--state") for text in args.state)
    outputs = {o.name for o in sess.get_outputs()}
    inputs = {a.name for a in sess.get_inputs()}
    for out, inp in state.items():
        if out not in outputs or inp not in inputs:
            raise CommandError(f"--state {out}={inp}: expected an output = an input of the "
                               f"model; the outputs are {sorted(outputs)}, the inputs "
                               f"{sorted(inputs)}")
    return dict(model=os.path.abspath(args.model), state=state,
                feeds={n: (v.tolist(), v.dtype.str) for n, v in feeds.items()},
                max_streams=args.max_streams, step_timeout=args.step_timeout,
                idle_ttl=args.idle_ttl, max_batch=args.max_batch,
                max_delay_us=args.max_delay_us, log_level=args.log_level), sess, feeds


def cmd_serve(args: argparse.Namespace) -> int:
    uvicorn = optional_import("uvicorn")
    if uvicorn is None or optional_import("starlette") is None:
        raise CommandError("serve needs Starlette and uvicorn: pip install 'rnnengine[serve]'")
    config, sess, feeds = config_from_args(args)
    log_to_stderr(args.log_level)
    if args.workers == 1:
        app = build_app(Service(sess, state=config["state"], feeds=feeds,
                                max_streams=args.max_streams, step_timeout=args.step_timeout,
                                idle_ttl=args.idle_ttl, max_batch=args.max_batch,
                                max_delay_us=args.max_delay_us))
        uvicorn.run(app, host=args.host, port=args.port, log_level=args.log_level)
    else:
        os.environ[CONFIG_ENV] = json.dumps(config)
        uvicorn.run("rnnengine.serving.app:app_from_env", factory=True, host=args.host,
                    port=args.port, workers=args.workers, log_level=args.log_level)
    return 0

"""``rnnengine bench MODEL.onnx``: the whole graph, one step at a time, against ONNX Runtime
on the same file: plain ``run`` with the state fed back by hand, IOBinding (inputs bound
once, the state ping-ponged between two bound buffers) and, when openvino is installed,
OpenVINO's stateful model (``MakeStateful``: the state kept inside the compiled model).
Graphs without state pairs time one ``run`` call; batched pools time one ``pool.step``
of ``--batch`` streams against as many ORT calls. Every engine single-threaded."""
from __future__ import annotations

import argparse
from typing import Callable, Dict, List

import numpy as np

from ..interop.ort import graph_iobinding_stepper
from ._common import Progress, best_of, fmt_time, print_results, ratio, timed
from ._session import (batch_dim, hinted, load_session, ort_session, parse_dims,
                       parse_feeds, random_feeds, state_pairs, zero_state)

CYCLE = 8   # distinct random feeds, reused in turn (no RNG inside the timed loop)


def ort_plain(sess, feeds: List[dict], pairs: Dict[str, str], zero: dict) -> Callable:
    names = [o.name for o in sess.get_outputs()]
    state, k = dict(zero), [0]

    def step():
        outs = dict(zip(names, sess.run(None, {**feeds[k[0] % CYCLE], **state})))
        for out, inp in pairs.items():
            state[inp] = outs[out]
        k[0] += 1
    return step


def openvino_stateful_model(source, shapes: Dict[str, tuple], pairs: Dict[str, str],
                            f32: bool = True):
    """OpenVINO's best streaming case, compiled for one thread: the graph at ``source`` (a
    path, or ONNX bytes) with static ``shapes`` and its state ``pairs`` (output -> input)
    made variables that stay inside the request (MakeStateful). ``f32=False`` keeps
    OpenVINO's default precision (bf16 on CPUs with AVX512_BF16/AMX). Raises ImportError
    without openvino, and OpenVINO's own exceptions for graphs it cannot take."""
    import openvino as ov
    from openvino._offline_transformations import apply_make_stateful_transformation
    core = ov.Core()
    model = core.read_model(source) if isinstance(source, str) else core.read_model(source, b"")
    model.reshape({n: list(shape) for n, shape in shapes.items()})
    apply_make_stateful_transformation(model, {inp: out for out, inp in pairs.items()})
    config = {"INFERENCE_NUM_THREADS": 1, "NUM_STREAMS": 1, "PERFORMANCE_HINT": "LATENCY"}
    if f32:
        config["INFERENCE_PRECISION_HINT"] = "f32"
    return core.compile_model(model, "CPU", config)


def openvino_stateful(path: str, feeds: List[dict], pairs: Dict[str, str], zero: dict):
    """(step, None) or (None, why not): the file with its state pairs made OpenVINO
    variables, shapes fixed to the benchmark's."""
    try:
        shapes = {n: a.shape for n, a in {**feeds[0], **zero}.items()}
        compiled = openvino_stateful_model(path, shapes, pairs)
        request = compiled.create_infer_request()
        request.reset_state()
        request.infer(feeds[0])
    except ImportError:
        return None, "openvino: not installed"
    except Exception as exc:  # conversion or MakeStateful refused this graph
        lines = [ln.strip() for ln in str(exc).splitlines()
                 if ln.strip() and not ln.startswith("Exception from")]
        why = (lines or [type(exc).__name__])[0][:120]
        return None, f"openvino stateful: skipped (OpenVINO cannot take this graph: {why})"
    k = [0]

    def step():
        request.infer(feeds[k[0] % CYCLE])
        k[0] += 1
    return step, None


def workloads(args: argparse.Namespace):
    """{workload: {contender: measurement}}, notes."""
    sess = load_session(args.model, args.precision)
    fixed = parse_feeds(sess, args.feed)
    pairs = state_pairs(sess)
    batch = batch_dim(sess, pairs)
    dims = parse_dims(args.dim, sess)
    rng = np.random.default_rng(0)
    feeds = [{**fixed, **random_feeds(sess, fixed, {**dims, **({batch: 1} if batch else {})},
                                      1, rng, skip=pairs.values())} for _ in range(CYCLE)]
    zero = zero_state(sess, pairs, {**dims, **({batch: 1} if batch else {})}, 1)
    ort = None if args.no_compare else ort_session(args.model, threads=1)
    steps, notes, out = args.steps, [], {}
    if pairs:
        stream = sess.stream(feeds=fixed)
        step_feeds = [{n: v for n, v in f.items() if n not in fixed} for f in feeds]
        hinted(stream.step, step_feeds[0])
        k = [0]

        def ours():
            stream.step(step_feeds[k[0] % CYCLE])
            k[0] += 1
        row = out["stream step, batch 1"] = {"rnnengine": timed(ours, steps)}
        if ort is not None:
            row["onnxruntime"] = timed(ort_plain(ort, feeds, pairs, zero), steps)
            row["onnxruntime IOBinding"] = timed(graph_iobinding_stepper(ort, lambda k: feeds[k % CYCLE], pairs, zero), steps)
        if not args.no_compare:
            ov, note = openvino_stateful(args.model, feeds, pairs, zero)
            if ov is not None:
                row["openvino stateful"] = timed(ov, steps)
            else:
                notes.append(note)
    else:
        hinted(sess.run, None, feeds[0])
        row = out["run, batch 1"] = {"rnnengine": timed(
            lambda: sess.run(None, feeds[0]), steps)}
        if ort is not None:
            row["onnxruntime"] = timed(lambda: ort.run(None, feeds[0]), steps)
    if pairs and args.batch > 1:
        out.update(_pool_row(sess, ort, fixed, pairs, dims, batch, args, rng, notes))
    if ort is None and not args.no_compare:
        notes.append("onnxruntime: not installed")
    return out, notes


def _pool_row(sess, ort, fixed, pairs, dims, batch, args, rng, notes) -> dict:
    """One pool.step of N streams against N separate ORT calls (state fed back by hand).
    The streams' inputs are stacked on the axis the pool takes them on."""
    N = args.batch
    pool = sess.pool(N, feeds=fixed)
    ids = [pool.open() for _ in range(N)]
    one = {**dims, **({batch: 1} if batch else {})}
    singles = [random_feeds(sess, fixed, one, 1, rng, skip=pairs.values()) for _ in range(N)]
    try:
        stacked = {n: np.concatenate([s[n] for s in singles], axis=pool.in_axis[n])
                   for n in singles[0]}
    except (KeyError, ValueError):
        notes.append(f"pool of {N}: not timed (cannot stack the inputs of {N} streams)")
        return {}
    hinted(pool.step, ids, stacked)
    how = "one graph pass" if pool.batched else "streams one by one"
    row = {"rnnengine": timed(lambda: pool.step(ids, stacked), max(1, args.steps // N))}
    if ort is not None:
        zero = zero_state(sess, pairs, one, 1)
        loops = [ort_plain(ort, [{**fixed, **s}] * CYCLE, pairs, zero) for s in singles]
        row["onnxruntime"] = timed(lambda: [f() for f in loops], max(1, args.steps // N))
        notes.append(f"pool of {N}: one pool.step ({how}) against {N} onnxruntime calls "
                     "(plain run)")
    return {f"pool of {N} streams, one step": row}


def report(args: argparse.Namespace) -> int:
    results_in, notes = workloads(args)
    contenders: List[str] = []
    for measures in results_in.values():
        contenders += [c for c in measures if c not in contenders]
    total = args.repeat * sum(len(c) for c in results_in.values())
    progress = Progress(total, "bench")
    try:
        results = {name: best_of(args.repeat, m, progress) for name, m in results_in.items()}
    finally:
        progress.close()
    print(f"rnnengine bench: {args.model}, whole graph (InferenceSession)")
    print(f"best of {args.repeat} interleaved repetitions, {args.steps} steps each; "
          "threads: 1 each")
    rows = [["workload", "rnnengine"] + [f"{c} (x)" for c in contenders[1:]]]
    for name, best in results.items():
        ours = best["rnnengine"]
        rows.append([name, fmt_time(ours)] + [ratio(best, c) for c in contenders[1:]])
    print_results(rows, len(contenders) > 1, notes)
    return 0

"""``rnnengine bench``: rnnengine timed side by side with other engines, every one
single-threaded, contenders interleaved, best of ``--repeat``.

On an ONNX file the whole graph, one step at a time, against ONNX Runtime on the same file:
plain ``run`` with the state fed back by hand, IOBinding (inputs bound once, the state
ping-ponged between two bound buffers) and, when openvino is installed, OpenVINO's stateful
model (``MakeStateful``: the state kept inside the compiled model). Graphs without state
pairs time one ``run`` call; batched pools time one ``pool.step`` of ``--batch`` streams
against as many ORT calls.

The recurrent layers alone (``--recurrent-only``, and every weights file): streaming
latency and sequence throughput, against ONNX Runtime running the bare recurrent nodes
(plain run and IOBinding) and PyTorch holding the loaded weights, when installed."""
from __future__ import annotations

import argparse
import itertools
import time
from typing import Callable, Dict, List, NamedTuple, Tuple

import numpy as np

from ..core.checks import is_one_way
from ..interop import Unsupported
from ..interop.ort import OrtReference, graph_iobinding_stepper
from ..interop.pytorch import TorchCells, torch_module_for
from ._common import (CommandError, Progress, add_command, describe, load_from_args,
                      optional_import, table)
from ._session import (batch_dim, hinted, load_session, ort_loop, ort_session, parse_dims,
                       parse_feeds, random_feeds, stack_feeds, state_pairs, whole_model,
                       whole_model_args, zero_state)

IOBINDING = "onnxruntime IOBinding"
STREAM = "stream step, batch 1"
CYCLE = 8   # distinct random feeds, reused in turn (no RNG inside the timed loop)


def add_parser(sub) -> None:
    p = add_command(sub, "bench", HELP, cmd_bench)
    p.add_argument("--seq-len", type=int, default=100, help="T for sequence runs (100)")
    p.add_argument("--batch", type=int, default=16, help="N for the batched sequence run (16)")
    p.add_argument("--steps", type=int, default=1000, help="steps per measurement (1000)")
    p.add_argument("--repeat", type=int, default=5, help="repetitions, best kept (5)")
    p.add_argument("--no-compare", action="store_true", help="rnnengine only")
    whole_model_args(p, "default: 1 (the batch dim of a pool: --batch)")


HELP = ("streaming latency and sequence throughput, side by side with onnxruntime and torch "
        "when installed; on ONNX the whole graph per step against onnxruntime (plain, "
        "IOBinding) and OpenVINO's stateful model")


class Plan(NamedTuple):
    """What one bench times: the lines that say how, {workload: {contender: measurement}}
    (rnnengine first), the notes under the table, and per workload (items per call, unit)
    for a throughput column (empty: no such column)."""
    header: List[str]
    workloads: Dict[str, Dict[str, Callable[[], float]]]
    notes: List[str]
    throughput: Dict[str, Tuple[int, str]]


def cmd_bench(args: argparse.Namespace) -> int:
    if min(args.seq_len, args.batch, args.steps, args.repeat) < 1:
        raise CommandError("--seq-len, --batch, --steps and --repeat must be positive")
    plan = whole_graph_plan(args) if whole_model(args) else layers_plan(args)
    return report(plan, args.repeat)


def report(plan: Plan, repeat: int) -> int:
    """Runs the plan's measurements, then prints its table: rnnengine's time, the
    throughput, and every other contender's time and ratio."""
    print("\n".join(plan.header))
    total = repeat * sum(len(c) for c in plan.workloads.values())
    progress = Progress(total, "bench")
    try:
        results = {name: best_of(repeat, m, progress) for name, m in plan.workloads.items()}
    finally:
        progress.close()
    others = [c for c in dict.fromkeys(c for m in results.values() for c in m)
              if c != "rnnengine"]
    rows = [["workload", "rnnengine"] + ["throughput"] * bool(plan.throughput)
            + [f"{c} (x)" for c in others]]
    for name, best in results.items():
        ours = best["rnnengine"]
        row = [name, fmt_time(ours)]
        if plan.throughput:
            items, unit = plan.throughput[name]
            row.append(f"{items / ours:,.0f} {unit}")
        rows.append(row + [ratio(best, c) for c in others])
    print()
    print(table(rows))
    if others:
        print("(x) = their time / rnnengine's time: above 1 means rnnengine is faster")
    for note in plan.notes:
        print(note)
    return 0


def best_of(repeat: int, contenders: Dict[str, Callable[[], float]], progress: Progress):
    """Interleaved repetitions (every contender once per round), best time of each."""
    best = {name: float("inf") for name in contenders}
    for _ in range(repeat):
        for name, measure in contenders.items():
            best[name] = min(best[name], measure())
            progress.advance()
    return best


def timed(fn: Callable[[], object], calls: int) -> Callable[[], float]:
    """A measurement: mean seconds per call over ``calls`` back-to-back calls."""
    def measure() -> float:
        start = time.perf_counter()
        for _ in range(calls):
            fn()
        return (time.perf_counter() - start) / calls
    return measure


def cycling(call: Callable, feeds: List[dict]) -> Callable[[], object]:
    """A step that calls ``call`` on each of ``feeds`` in turn."""
    turn = itertools.cycle(feeds)
    return lambda: call(next(turn))


def ratio(best: Dict[str, float], contender: str) -> str:
    """'53.0 us (2.11x)': a contender's time and its ratio to rnnengine's ('-' if absent)."""
    if contender not in best:
        return "-"
    return f"{fmt_time(best[contender])} ({best[contender] / best['rnnengine']:.2f}x)"


def fmt_time(seconds: float) -> str:
    """1.2e-5 -> '12.0 us', 0.0031 -> '3.10 ms'."""
    if seconds < 1e-3:
        return f"{seconds * 1e6:.1f} us"
    if seconds < 1:
        return f"{seconds * 1e3:.2f} ms"
    return f"{seconds:.2f} s"


def layers_plan(args: argparse.Namespace) -> Plan:
    """The recurrent layers: one streamed step and whole sequences (batch 1 and --batch)."""
    # time-major, whatever the file implies: a load option, never set on a Model
    model = load_from_args(args, batch_first=False)
    T, N, steps = args.seq_len, args.batch, args.steps
    rng = np.random.default_rng(0)
    I = model.input_size
    x_step = rng.standard_normal((1, I)).astype(np.float32)
    sequences = {f"sequence T={T}, batch 1": rng.standard_normal((T, 1, I)).astype(np.float32)}
    x_seqN = rng.standard_normal((T, N, I)).astype(np.float32)
    if N > 1:
        sequences[f"sequence T={T}, batch {N}"] = x_seqN
    seq_calls = max(1, steps // T)

    workloads: Dict[str, Dict[str, Callable[[], float]]] = {}
    notes = []
    if is_one_way(model.layers):
        stream = model.stream(batch=1)
        workloads[STREAM] = {"rnnengine": timed(lambda: stream.step(x_step), steps)}
    else:
        notes.append("streaming: skipped (a bidirectional or reverse model cannot stream)")
    for name, x in sequences.items():
        workloads[name] = {"rnnengine": timed(lambda x=x: model.run(x), seq_calls)}

    ort = None if args.no_compare else optional_import("onnxruntime")
    if ort is not None:
        try:
            # the recurrent nodes alone (no sequence_lens, no trailing glue): ORT's best case
            ref = OrtReference(model, threads=1, bare=True)
            if STREAM in workloads:
                # Streaming with ORT: a T=1 run fed back its final state, the plain way and
                # with IOBinding (state ping-ponged between two bound buffers,
                # ORT's fastest way to stream)
                plain, bound = ref.steps(1), ref.steps(1)
                workloads[STREAM]["onnxruntime"] = timed(lambda: plain.step_run(x_step), steps)
                workloads[STREAM][IOBINDING] = timed(lambda: bound.step_bound(x_step), steps)
            for name, x in sequences.items():
                feeds = ref.feeds(x, None, None)
                workloads[name]["onnxruntime"] = timed(
                    lambda feeds=feeds: ref.session.run(None, feeds), seq_calls)
        except Unsupported as exc:
            notes.append(f"onnxruntime: skipped ({exc})")
    elif not args.no_compare:
        notes.append("onnxruntime: not installed")

    torch = None if args.no_compare else optional_import("torch")
    if torch is not None:
        try:
            module = torch_module_for(model)
            torch.set_num_threads(1)
            if STREAM in workloads:
                if model.proj_size:  # no cell with a projection: nn.LSTM one step at a time
                    holder = {"s": None}
                    xt = torch.from_numpy(x_step[None])

                    def torch_step():
                        with torch.no_grad():
                            y, holder["s"] = module(xt, holder["s"])
                        return y
                else:
                    cells = TorchCells(module, model.kind, model.num_layers)
                    xt = torch.from_numpy(x_step)

                    def torch_step():
                        with torch.no_grad():
                            return cells.step(xt)
                workloads[STREAM]["torch"] = timed(torch_step, steps)
            for name, x in sequences.items():
                xt_seq = torch.from_numpy(x)

                def torch_seq(xt_seq=xt_seq):
                    with torch.no_grad():
                        return module(xt_seq)
                workloads[name]["torch"] = timed(torch_seq, seq_calls)
        except Unsupported as exc:
            notes.append(f"torch: skipped ({exc})")
    elif not args.no_compare:
        notes.append("torch: not installed")

    header = [f"rnnengine bench: {describe(model)}",
              f"best of {args.repeat} interleaved repetitions; {steps} steps per streaming "
              f"measurement, {seq_calls} sequence(s) per sequence measurement",
              "threads: 1 each (rnnengine, onnxruntime, torch); onnxruntime runs the bare "
              "recurrent nodes, streamed with plain run and with IOBinding"]
    throughput = {STREAM: (1, "steps/s"),
                  **{name: (x.shape[1], "seq/s") for name, x in sequences.items()}}
    return Plan(header, workloads, notes, throughput)


def whole_graph_plan(args: argparse.Namespace) -> Plan:
    """The whole graph: a stream step (state pairs) or one run, and a pool of --batch
    streams."""
    sess = load_session(args.model, args.precision)
    fixed = parse_feeds(sess, args.feed)
    pairs = state_pairs(sess)
    batch = batch_dim(sess, pairs)
    dims = parse_dims(args.dim, sess)
    one = {**dims, **({batch: 1} if batch else {})}   # the sizes of one stream
    rng = np.random.default_rng(0)
    feeds = [{**fixed, **random_feeds(sess, fixed, one, 1, rng, skip=pairs.values())}
             for _ in range(CYCLE)]
    zero = zero_state(sess, pairs, one, 1)
    ort = None if args.no_compare else ort_session(args.model, threads=1)
    steps, notes, workloads = args.steps, [], {}
    if pairs:
        stream = sess.stream(feeds=fixed)
        step_feeds = [{n: v for n, v in f.items() if n not in fixed} for f in feeds]
        hinted(stream.step, step_feeds[0])
        row = workloads[STREAM] = {"rnnengine": timed(cycling(stream.step, step_feeds), steps)}
        if ort is not None:
            row["onnxruntime"] = timed(ort_plain(ort, feeds, pairs, zero), steps)
            row[IOBINDING] = timed(graph_iobinding_stepper(
                ort, lambda k: feeds[k % CYCLE], pairs, zero), steps)
        if not args.no_compare:
            ov, note = openvino_stateful(args.model, feeds, pairs, zero)
            if ov is not None:
                row["openvino stateful"] = timed(ov, steps)
            else:
                notes.append(note)
    else:
        hinted(sess.run, None, feeds[0])
        row = workloads["run, batch 1"] = {"rnnengine": timed(
            lambda: sess.run(None, feeds[0]), steps)}
        if ort is not None:
            row["onnxruntime"] = timed(lambda: ort.run(None, feeds[0]), steps)
    if pairs and args.batch > 1:
        workloads.update(_pool_row(sess, ort, fixed, pairs, one, args, rng, notes))
    if ort is None and not args.no_compare:
        notes.append("onnxruntime: not installed")
    header = [f"rnnengine bench: {args.model}, whole graph (InferenceSession)",
              f"best of {args.repeat} interleaved repetitions, {args.steps} steps each; "
              "threads: 1 each"]
    return Plan(header, workloads, notes, {})


def _pool_row(sess, ort, fixed, pairs, one, args, rng, notes) -> dict:
    """One pool.step of N streams against N separate ORT calls (state fed back by hand).
    The streams' inputs are stacked on the axis the pool takes them on."""
    N = args.batch
    pool = sess.pool(N, feeds=fixed)
    ids = [pool.open() for _ in range(N)]
    singles = [random_feeds(sess, fixed, one, 1, rng, skip=pairs.values()) for _ in range(N)]
    try:
        stacked = stack_feeds(pool, singles)
    except (KeyError, ValueError):
        notes.append(f"pool of {N}: not timed (cannot stack the inputs of {N} streams)")
        return {}
    hinted(pool.step, ids, stacked)
    how = "one graph pass" if pool.batched else "streams one by one"
    row = {"rnnengine": timed(lambda: pool.step(ids, stacked), max(1, args.steps // N))}
    if ort is not None:
        zero = zero_state(sess, pairs, one, 1)
        loops = [ort_plain(ort, [{**fixed, **s}], pairs, zero) for s in singles]
        row["onnxruntime"] = timed(lambda: [f() for f in loops], max(1, args.steps // N))
        notes.append(f"pool of {N}: one pool.step ({how}) against {N} onnxruntime calls "
                     "(plain run)")
    return {f"pool of {N} streams, one step": row}


def ort_plain(sess, feeds: List[dict], pairs: Dict[str, str], zero: dict) -> Callable:
    """ORT's plain way to stream a graph (``ort_loop``) on each of ``feeds`` in turn."""
    return cycling(ort_loop(sess, pairs, zero)[0], feeds)


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
    return cycling(request.infer, feeds), None

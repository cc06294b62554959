"""``rnnengine bench``: streaming latency and sequence throughput, side by side with ONNX
Runtime (plain run and IOBinding) and PyTorch when installed; contenders interleaved. On an
ONNX file the whole graph is timed (``bench_session.py``); ``--recurrent-only`` times the
recurrent layers alone."""
from __future__ import annotations

import argparse

import numpy as np

from ..core.checks import is_one_way
from ..interop import Unsupported
from ..interop.ort import OrtReference
from ..interop.pytorch import TorchCells, torch_module_for
from . import bench_session
from ._common import (CommandError, Progress, add_command, best_of, describe, fmt_time,
                      load_from_args, optional_import, print_results, ratio, timed)
from ._session import whole_model, whole_model_args


IOBINDING = "onnxruntime IOBinding"


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


def cmd_bench(args: argparse.Namespace) -> int:
    if min(args.seq_len, args.batch, args.steps, args.repeat) < 1:
        raise CommandError("--seq-len, --batch, --steps and --repeat must be positive")
    if whole_model(args):
        return bench_session.report(args)
    # time-major, whatever the file implies: a load option, never set on a Model
    model = load_from_args(args, batch_first=False)
    T, N, steps, repeat = args.seq_len, args.batch, args.steps, args.repeat
    if min(T, N, steps, repeat) < 1:
        raise CommandError("--seq-len, --batch, --steps and --repeat must be positive")
    rng = np.random.default_rng(0)
    I = model.input_size
    x_step = rng.standard_normal((1, I)).astype(np.float32)
    x_seq1 = rng.standard_normal((T, 1, I)).astype(np.float32)
    x_seqN = rng.standard_normal((T, N, I)).astype(np.float32)
    seq_calls = max(1, steps // T)

    workloads = {}   # name -> {contender: measurement}
    notes = []
    if is_one_way(model.layers):
        stream = model.stream(batch=1)
        workloads["stream step, batch 1"] = {"rnnengine": timed(lambda: stream.step(x_step), steps)}
    else:
        notes.append("streaming: skipped (a bidirectional or reverse model cannot stream)")
    workloads[f"sequence T={T}, batch 1"] = {"rnnengine": timed(lambda: model.run(x_seq1), seq_calls)}
    if N > 1:
        workloads[f"sequence T={T}, batch {N}"] = {
            "rnnengine": timed(lambda: model.run(x_seqN), seq_calls)}
    contenders = ["rnnengine"]

    ort = None if args.no_compare else optional_import("onnxruntime")
    if ort is not None:
        try:
            # the recurrent nodes alone (no sequence_lens, no trailing glue): ORT's best case
            ref = OrtReference(model, threads=1, bare=True)
            contenders.append("onnxruntime")
            if "stream step, batch 1" in workloads:
                # Streaming with ORT: a T=1 run fed back its final state, the plain way and
                # with IOBinding (state ping-ponged between two bound buffers,
                # ORT's fastest way to stream)
                plain, bound = ref.steps(1), ref.steps(1)
                contenders.append(IOBINDING)
                workloads["stream step, batch 1"]["onnxruntime"] = timed(
                    lambda: plain.step_run(x_step), steps)
                workloads["stream step, batch 1"][IOBINDING] = timed(
                    lambda: bound.step_bound(x_step), steps)
            for name, x in ((f"sequence T={T}, batch 1", x_seq1), (f"sequence T={T}, batch {N}", x_seqN)):
                if name in workloads:
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
            contenders.append("torch")
            if "stream step, batch 1" in workloads:
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
                workloads["stream step, batch 1"]["torch"] = timed(torch_step, steps)
            for name, x in ((f"sequence T={T}, batch 1", x_seq1), (f"sequence T={T}, batch {N}", x_seqN)):
                if name in workloads:
                    xt_seq = torch.from_numpy(x)

                    def torch_seq(xt_seq=xt_seq):
                        with torch.no_grad():
                            return module(xt_seq)
                    workloads[name]["torch"] = timed(torch_seq, seq_calls)
        except Unsupported as exc:
            notes.append(f"torch: skipped ({exc})")
    elif not args.no_compare:
        notes.append("torch: not installed")

    print(f"rnnengine bench: {describe(model)}")
    print(f"best of {repeat} interleaved repetitions; {steps} steps per streaming measurement, "
          f"{seq_calls} sequence(s) per sequence measurement")
    print("threads: 1 each (rnnengine, onnxruntime, torch); onnxruntime runs the bare "
          "recurrent nodes, streamed with plain run and with IOBinding")
    total = repeat * sum(len(c) for c in workloads.values())
    progress = Progress(total, "bench")
    results = {}
    try:
        for name, measures in workloads.items():
            results[name] = best_of(repeat, measures, progress)
    finally:
        progress.close()

    header = ["workload", "rnnengine", "throughput"] + [f"{c} (x)" for c in contenders[1:]]
    rows = [header]
    for name, best in results.items():
        ours = best["rnnengine"]
        if name.startswith("stream"):
            throughput = f"{1 / ours:,.0f} steps/s"
        else:
            batch = 1 if name.endswith("batch 1") else N
            throughput = f"{batch / ours:,.0f} seq/s"
        row = [name, fmt_time(ours), throughput]
        row += [ratio(best, c) for c in contenders[1:]]
        rows.append(row)
    print_results(rows, len(contenders) > 1, notes)
    return 0


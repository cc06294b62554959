"""Batcher benchmark: 64 concurrent streams of an LSTM with I = H = 256.

    python bench/bench_batcher.py                 # full run, a few minutes
    python bench/bench_batcher.py --quick         # fewer rounds and repetitions
    python bench/bench_batcher.py --write         # also replace the Batcher section of RESULTS.md

Rows, one process, contenders interleaved, best of several repetitions:

1. Throughput, steps per second over 64 streams (every stream takes ``--rounds`` steps):
   one thread making serial ``Stream.step`` calls on 64 batch-1 streams (the baseline),
   against a Batcher stepped by 64 threads (one per stream) and by 64 asyncio tasks in one
   event loop. Targets: >= 1.5x (threads), >= 2x (asyncio).
2. Design: the same 64-thread load on the worker-thread Batcher against a leader/follower
   variant (no worker: the first caller of a batch waits for company, runs the batch and
   wakes the others), the alternative batcher.py's docstring argues against.
   Each row also gives the CPU time per step (all threads of the process): on a shared
   machine wall-clock rates swing with the other jobs, CPU time much less.
3. Latency of one step (from the call to its result), p50 and p99, at several max_delay_us:
   "busy" = all 64 streams stepping (batches fill, no step waits for the delay); "sparse" =
   4 of 64 open streams stepping (a step waits for company up to max_delay_us), against one
   ``Stream.step``.
4. Batcher over an InferenceSession: 64 streams of the shipped Silero VAD (``sr`` fixed,
   512-sample chunks) stepped by 64 threads and by 64 asyncio tasks, against one thread
   making serial ``SessionStream.step`` calls on 64 streams (each warmed by one step first).
"""
from __future__ import annotations

import argparse
import asyncio
import os
import platform
import re
import threading
import time

import numpy as np

import rnnengine
from _models import ROOT, SILERO
from rnnengine.core.layers import Layer
from rnnengine.runtime.model import Model

STREAMS, H, I = 64, 256, 256


def lstm(seed=0) -> Model:
    rng = np.random.default_rng(seed)
    bound = 1 / np.sqrt(H)
    u = lambda *shape: rng.uniform(-bound, bound, shape).astype(np.float32)  # noqa: E731
    return Model([Layer.from_onnx("lstm", u(1, 4 * H, I), u(1, 4 * H, H), u(1, 8 * H))])


class LeaderFollowerBatcher(rnnengine.Batcher):
    """No worker thread: a caller that finds no leader becomes one, gathers company (the
    same timed wait as the worker) and runs batches until the queue is empty; the others
    sleep on their locks. Threads only (an asyncio caller would block its loop)."""

    def _start(self) -> None:
        self._leader = threading.Lock()

    def _lead(self) -> None:
        while self._leader.acquire(blocking=False):
            try:
                while True:
                    with self._cond:
                        if not self._queue:
                            break
                    self._gather()
                    self._run()
            finally:
                self._leader.release()
            with self._cond:           # queued after our last look, before the release?
                if not self._queue:
                    return

    def step(self, sid, x):
        request = self._submit(sid, self._pool.check_input(x), None)
        self._lead()
        request.waiter.acquire()
        if request.error is not None:
            raise request.error
        return request.result


def serial(streams, xs, latencies=None):
    """One thread: every stream's step in turn, round after round."""
    for t in range(xs.shape[1]):
        for s, stream in enumerate(streams):
            if latencies is None:
                stream.step(xs[s, t])
            else:
                start = time.perf_counter()
                stream.step(xs[s, t])
                latencies.append(time.perf_counter() - start)


def threaded(batcher, ids, xs, active, latencies):
    """One thread per active stream; seconds from all ready to all done."""
    ready = threading.Barrier(len(active) + 1)

    def work(s):
        lat = latencies[s]
        ready.wait()
        for x in xs[s]:
            start = time.perf_counter()
            batcher.step(ids[s], x)
            lat.append(time.perf_counter() - start)

    threads = [threading.Thread(target=work, args=(s,)) for s in active]
    for t in threads:
        t.start()
    ready.wait()
    start = time.perf_counter()
    for t in threads:
        t.join()
    return time.perf_counter() - start


def tasks(batcher, ids, xs, active, latencies):
    async def work(s):
        lat = latencies[s]
        for x in xs[s]:
            start = time.perf_counter()
            await batcher.step_async(ids[s], x)
            lat.append(time.perf_counter() - start)

    async def main():
        start = time.perf_counter()
        await asyncio.gather(*(work(s) for s in active))
        return time.perf_counter() - start

    return asyncio.run(main())


def measure(model, xs, cls, mode, max_delay_us, active=range(STREAMS), **options):
    """(seconds, per-step latencies) for one run of ``mode`` ('threads' | 'asyncio');
    ``xs[s]``: stream s's inputs, one per step."""
    with cls(model, max_batch=STREAMS, max_delay_us=max_delay_us, **options) as batcher:
        ids = [batcher.open() for _ in range(STREAMS)]
        latencies = {s: [] for s in active}
        run = threaded if mode == "threads" else tasks
        seconds = run(batcher, ids, xs, list(active), latencies)
    return seconds, [v for lat in latencies.values() for v in lat]


def percentiles(latencies):
    a = np.array(latencies) * 1e6
    return np.percentile(a, 50), np.percentile(a, 99)


def session_rows(rounds: int, reps: int, say) -> None:
    """Row 4: a Batcher over the Silero session against serial SessionStream.step."""
    sess = rnnengine.InferenceSession(SILERO)
    fixed = {"sr": np.array(16000, np.int64)}
    rng = np.random.default_rng(2)
    chunks = (0.1 * rng.standard_normal((STREAMS, rounds + 1, 1, 512))).astype(np.float32)
    feeds = [[{"input": c} for c in stream] for stream in chunks]
    contenders = ("serial SessionStream.step, 1 thread", "Batcher, 64 threads",
                  "Batcher, 64 asyncio tasks")
    best = dict.fromkeys(contenders, float("inf"))
    cpu = dict.fromkeys(contenders, float("inf"))
    for _ in range(reps):
        for name in contenders:
            if name.startswith("serial"):
                streams = [sess.stream(feeds=fixed) for _ in range(STREAMS)]
                for stream, steps in zip(streams, feeds):
                    stream.step(steps[0])                   # warm: the first step plans
                cpu_start = time.process_time()
                start = time.perf_counter()
                for t in range(1, rounds + 1):
                    for stream, steps in zip(streams, feeds):
                        stream.step(steps[t])
                seconds = time.perf_counter() - start
            else:
                cpu_start = time.process_time()
                seconds, _ = measure(sess, [f[1:] for f in feeds], rnnengine.Batcher,
                                     "threads" if "threads" in name else "asyncio", 500,
                                     feeds=fixed)
            cpu[name] = min(cpu[name], time.process_time() - cpu_start)
            best[name] = min(best[name], seconds)
    steps = STREAMS * rounds
    base = best[contenders[0]]
    say(f"Batcher over an InferenceSession: 64 streams of Silero VAD (sr fixed, 512-sample "
        f"chunks), {rounds} steps each, best of {reps} interleaved runs, max_delay_us=500")
    say()
    say("| contender | steps/s | vs serial SessionStream.step | CPU us per step |")
    say("|---|---:|---:|---:|")
    for name in contenders:
        say(f"| {name} | {steps / best[name]:,.0f} | {base / best[name]:.2f}x | "
            f"{cpu[name] / steps * 1e6:.0f} |")
    say()


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true")
    parser.add_argument("--write", action="store_true", help="update bench/RESULTS.md")
    parser.add_argument("--session", action="store_true",
                        help="only row 4 (the Batcher over an InferenceSession); no --write")
    args = parser.parse_args(argv)
    rounds, reps = (50, 3) if args.quick else (200, 7)
    model = lstm()
    xs = np.random.default_rng(1).standard_normal((STREAMS, rounds, I)).astype(np.float32)
    lines = []

    def say(line=""):
        print(line, flush=True)
        lines.append(line)

    started = time.perf_counter()
    load_before = os.getloadavg()[0]
    if args.session:
        session_rows(max(5, rounds // 10), reps, say)
        return 0
    # 1 and 2: throughput, interleaved.
    contenders = {
        "serial Stream.step, 1 thread": None,
        "Batcher, 64 threads": (rnnengine.Batcher, "threads"),
        "Batcher, 64 asyncio tasks": (rnnengine.Batcher, "asyncio"),
        "leader/follower, 64 threads": (LeaderFollowerBatcher, "threads"),
    }
    best = {name: float("inf") for name in contenders}
    cpu = {name: float("inf") for name in contenders}   # CPU seconds of all our threads
    lat = {name: [] for name in contenders}
    delay = 500
    for _ in range(reps):
        for name, how in contenders.items():
            cpu_start = time.process_time()
            if how is None:
                streams = [model.stream(batch=1) for _ in range(STREAMS)]
                latencies = []
                start = time.perf_counter()
                serial(streams, xs)
                seconds = time.perf_counter() - start
                cpu[name] = min(cpu[name], time.process_time() - cpu_start)
                serial([model.stream(batch=1) for _ in range(STREAMS)], xs[:, :10], latencies)
            else:
                seconds, latencies = measure(model, xs, how[0], how[1], delay)
                cpu[name] = min(cpu[name], time.process_time() - cpu_start)
            if seconds < best[name]:
                best[name], lat[name] = seconds, latencies
    steps = STREAMS * rounds
    base = best["serial Stream.step, 1 thread"]
    say(f"64 streams, LSTM I = H = {H}, {rounds} steps each, best of {reps} interleaved runs, "
        f"max_delay_us={delay}")
    say()
    say("| contender | steps/s | vs serial Stream.step | target | met | step p50 (us) | p99 (us) "
        "| CPU us per step |")
    say("|---|---:|---:|---:|:---:|---:|---:|---:|")
    targets = {"Batcher, 64 threads": 1.5, "Batcher, 64 asyncio tasks": 2.0}
    for name in contenders:
        ratio = base / best[name]
        target = targets.get(name)
        p50, p99 = percentiles(lat[name])
        say(f"| {name} | {steps / best[name]:,.0f} | {ratio:.2f}x | "
            f"{f'{target:.1f}x' if target else ''} | "
            f"{('yes' if ratio >= target else '**no**') if target else ''} | {p50:.0f} | {p99:.0f} "
            f"| {cpu[name] / steps * 1e6:.1f} |")
    say()
    say("CPU us per step: process CPU time (every thread, both cores) over the steps, least of "
        "the runs: the cost of a step without the other jobs' share of the machine.")
    say()
    # 3: latency against max_delay_us, busy and sparse.
    say("Latency of one step (call to result), microseconds; a lone `Stream.step` for scale: "
        f"p50 {percentiles(lat['serial Stream.step, 1 thread'])[0]:.0f}")
    say()
    say("| max_delay_us | load | threads p50 | threads p99 | asyncio p50 | asyncio p99 | "
        "mean batch |")
    say("|---:|---|---:|---:|---:|---:|---:|")
    short = xs[:, :max(10, rounds // 4)]
    for delay_us in (0, 100, 500, 2000):
        for load, active in (("busy: 64 of 64 stepping", range(STREAMS)),
                             ("sparse: 4 of 64 stepping", range(4))):
            row = []
            for mode in ("threads", "asyncio"):
                runs = [measure(model, short, rnnengine.Batcher, mode, delay_us, active)
                        for _ in range(max(1, reps // 2))]
                row += percentiles(sum((r[1] for r in runs), []))
            with rnnengine.Batcher(model, max_delay_us=delay_us) as batcher:   # batch size
                ids = [batcher.open() for _ in range(STREAMS)]
                tasks(batcher, ids, short, list(active), {s: [] for s in active})
                stats = batcher.stats
            say(f"| {delay_us} | {load} | {row[0]:.0f} | {row[1]:.0f} | {row[2]:.0f} | "
                f"{row[3]:.0f} | {stats['steps'] / stats['batches']:.1f} |")
    say()
    session_rows(max(5, rounds // 10), reps, say)
    say(f"run took {time.perf_counter() - started:.0f} s; load average (1 min) "
        f"{load_before:.1f} before, {os.getloadavg()[0]:.1f} after, on {os.cpu_count()} CPUs")

    if args.write:
        cpu = platform.processor() or platform.machine()
        try:
            with open("/proc/cpuinfo") as f:
                cpu = re.search(r"model name\s*:\s*(.*)", f.read()).group(1)
        except (OSError, AttributeError):
            pass
        section = ["<!-- bench_batcher.py: begin -->", "## Batcher", "",
                   f"`python bench/bench_batcher.py` on {cpu}, {os.cpu_count()} logical CPUs, "
                   "a machine shared with other jobs at the time (ratios come from one "
                   "interleaved run; absolute times vary run to run).", ""] + lines + \
                  ["<!-- bench_batcher.py: end -->"]
        path = os.path.join(ROOT, "bench", "RESULTS.md")
        with open(path) as f:
            text = f.read()
        block = "\n".join(section) + "\n"
        pattern = re.compile(r"<!-- bench_batcher.py: begin -->.*?<!-- bench_batcher.py: end -->\n",
                             re.S)
        text = pattern.sub(lambda m: block, text) if pattern.search(text) else \
            text.rstrip("\n") + "\n\n" + block
        with open(path, "w") as f:
            f.write(text)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

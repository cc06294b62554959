"""Real-time serving capacity on one core: how many live streams each way of serving a model
keeps up with.

    python bench/bench_serving.py                    # every model and contender, a few minutes
    python bench/bench_serving.py --duration 1 --models silero_op15 --contenders ticks,ort-batched

Load: each stream sends one step per period with a random phase: Silero VAD one 512-sample
chunk every 32 ms (16 kHz), DTLN one 512-sample frame every 8 ms (its 128-sample shift; the
step is model_1 on the frame's spectrum magnitude, then model_2 on the masked frame, as its
author runs it). A count of streams is *sustained* when the 99th percentile of latency
(result time minus the step's arrival) is under one period. The capacity is the largest
count sustained, found by doubling then bisecting (to ``--precision``), each probe a few
seconds (``--duration``) of traffic; the contenders of a model take turns probe by probe,
so that the machine's load, which changes over a run, weighs on them alike.

Contenders, each on the same model file:

* ``batcher``: an ``rnnengine.Batcher`` over the session, one asyncio task per stream,
  ``await batcher.step_async`` (its worker thread and the event loop share the core);
* ``ticks``: an ``rnnengine.SessionPool`` stepped by a loop of ticks: every stream whose
  step has arrived steps in one ``pool.step`` (one ``step`` of one stream alone);
* ``ort``: ONNX Runtime, one ``run`` per stream step, the state fed back by hand;
* ``ort-batched``: ONNX Runtime batched by hand on the batch axis: the arrived streams'
  inputs and states concatenated, one ``run``, the outputs and states split back (only
  for graphs whose batch dimension is not fixed: not DTLN's).

Clock. The process is pinned to one core (``os.sched_setaffinity``; every thread inherits
it) and every engine runs single-threaded. Time is simulated: arrivals are times on a
virtual clock, the work is real, and the clock advances by the CPU time the work took;
when nothing is running the clock jumps to the next arrival. Latency is virtual completion
minus arrival, so the machine's other jobs preempting the core do not count, and a probe
takes only the CPU time its work needs. What the clock cannot remove is the other jobs
slowing the work itself (a busy sibling core, shared caches): on the shared 2-core machine
the CPU time of a step swings by a quarter or more between runs, and the capacities with it;
compare contenders within one run.

* ``ticks``, ``ort``, ``ort-batched``: a loop serves every step that has arrived by the
  clock (``ort``: the oldest one), timed with ``time.thread_time``.
* ``batcher``: the real thing: n asyncio tasks on an event loop whose ``time()`` is the
  process's CPU time (event loop and worker thread, which share the core) plus the idle
  time skipped; its selector skips ahead instead of sleeping while no task waits for the
  worker, and waits for real while one does. Two costs of that: the clock's reading is a
  system call (about 1 us, a few per step, counted against the Batcher), and the
  Batcher's ``max_delay_us`` (a wall-clock wait for company) is 0, so its batches form, as
  the ticks' do, from the steps that arrive while the previous one runs. The harness alone
  (tasks, timers, this clock, a step that does nothing) costs about 10 us per step.
  ``--batcher-clock wall`` runs it in wall-clock time instead (with ``--max-delay-us``),
  where the other jobs on the machine count against it.

The table gives per model and contender the streams sustained, the p99 latency and mean
batch (streams per engine call; DTLN: per call of each file) at that count, and the CPU
time per step there (DTLN: per block, both files and the FFTs); the header names the CPU
(from /proc/cpuinfo) and rnnengine's active ISA variant.
"""
from __future__ import annotations

import argparse
import asyncio
import os
import selectors
import time

for var in ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS"):
    os.environ[var] = "1"

import numpy as np  # noqa: E402
import onnxruntime as ort  # noqa: E402

import rnnengine  # noqa: E402
from rnnengine.core import kernels as _kernels  # noqa: E402
from rnnengine.runtime.pool_layout import padded_batch  # noqa: E402

DATA = os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "tests", "data")
SR = np.array(16000, np.int64)
BANK = 16        # distinct inputs per model, cycled (their values do not change the cost)


def cpu_name() -> str:
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return "unknown CPU"


def ort_session(path: str):
    options = ort.SessionOptions()
    options.intra_op_num_threads = options.inter_op_num_threads = 1
    return ort.InferenceSession(path, options, providers=["CPUExecutionProvider"])


# -- models: per contender, a server built for n streams --------------------------------------
class Silero:
    """One 512-sample chunk per 32 ms; state (2, N, 128) carried; sr fixed."""
    period = 0.032
    batchable = True

    def __init__(self, path: str):
        self.path = path
        self.sess = rnnengine.InferenceSession(path)
        self.ort = ort_session(path)
        rng = np.random.default_rng(0)
        self.bank = [(0.1 * rng.standard_normal((1, 512))).astype(np.float32)
                     for _ in range(BANK)]

    def warm(self, max_batch: int) -> None:
        """Plan the session's programs for every batch size a pool step can run at (the
        ladder of ``padded_batch``), as a service would before taking traffic: a program
        builds in 10-300 ms, which a probe would otherwise count."""
        pool = self.sess.pool(max_batch, feeds={"sr": SR})
        ids = [pool.open() for _ in range(max_batch)]
        sizes = sorted({padded_batch(k) for k in range(1, max_batch + 1)})
        for k in sizes:
            if k <= max_batch:
                for _ in range(3):      # seen, built, run
                    pool.step(ids[:k], {"input": np.zeros((k, 512), np.float32)})

    def feeds(self, j: int) -> dict:          # the step feeds of one stream (Batcher)
        return {"input": self.bank[j % BANK]}

    def ticks(self, n: int, max_batch: int):
        pool = self.sess.pool(n, feeds={"sr": SR})
        ids = [pool.open() for _ in range(n)]
        bank = self.bank

        def serve(streams, js):
            for lo in range(0, len(streams), max_batch):
                part = streams[lo:lo + max_batch]
                x = np.concatenate([bank[j % BANK] for j in js[lo:lo + max_batch]])
                pool.step([ids[s] for s in part], {"input": x})
            return -(-len(streams) // max_batch)
        return serve

    def ort_each(self, n: int, max_batch: int):
        sess, bank = self.ort, self.bank
        states = [np.zeros((2, 1, 128), np.float32) for _ in range(n)]

        def serve(streams, js):
            for s, j in zip(streams, js):
                _, states[s] = sess.run(None, {"input": bank[j % BANK], "state": states[s],
                                               "sr": SR})
            return len(streams)
        return serve

    def ort_batched(self, n: int, max_batch: int):
        sess, bank = self.ort, self.bank
        state = np.zeros((2, n, 128), np.float32)

        def serve(streams, js):
            for lo in range(0, len(streams), max_batch):
                idx = np.asarray(streams[lo:lo + max_batch])
                x = np.concatenate([bank[j % BANK] for j in js[lo:lo + max_batch]])
                _, new = sess.run(None, {"input": x, "state": state[:, idx], "sr": SR})
                state[:, idx] = new
            return -(-len(streams) // max_batch)
        return serve

    def batcher(self, n: int, max_batch: int, max_delay_us: float):
        return _Batchers(self, [rnnengine.Batcher(self.sess, max_batch=max_batch,
                                                  max_delay_us=max_delay_us, max_streams=n,
                                                  feeds={"sr": SR})])

    async def step(self, batchers, handle, j: int) -> None:   # one stream's step (Batcher)
        await batchers[0].step_async(handle[0], self.feeds(j))

    def handle(self, ids: list) -> list:
        return ids


class _Batchers:
    """The Batchers of one model's step (DTLN: one per file); a stream holds an id in each."""

    def __init__(self, model, batchers):
        self.model, self.batchers = model, batchers

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        for b in self.batchers:
            b.close()

    def open(self):
        return self.model.handle([b.open() for b in self.batchers])

    async def step(self, handle, j: int) -> None:
        await self.model.step(self.batchers, handle, j)

    @property
    def stats(self) -> dict:       # steps and batches of the first Batcher
        return self.batchers[0].stats


class _DtlnBuffers:
    """One DTLN stream's signal path as its author's real_time_processing_onnx.py has it:
    a 512-sample frame shifted by 128 new samples, its spectrum's magnitude to model_1, the
    mask times the spectrum back to time for model_2, overlap-add of model_2's block."""

    def __init__(self):
        self.frame = np.zeros(512, np.float32)
        self.out = np.zeros(512, np.float32)
        self.phase = None
        self.mag = None

    def spectrum(self, samples: np.ndarray) -> np.ndarray:
        self.frame[:-128] = self.frame[128:]
        self.frame[-128:] = samples
        fft = np.fft.rfft(self.frame)
        self.phase = np.angle(fft)
        self.mag = np.abs(fft).reshape(1, 1, -1).astype(np.float32)
        return self.mag

    def masked(self, mask: np.ndarray) -> np.ndarray:
        block = np.fft.irfft(self.mag * mask * np.exp(1j * self.phase))
        return block.reshape(1, 1, -1).astype(np.float32)

    def add(self, block: np.ndarray) -> None:
        self.out[:-128] = self.out[128:]
        self.out[-128:] = 0
        self.out += block.reshape(-1)


class Dtln:
    """DTLN: model_1 then model_2 per 8 ms block (512-sample frame, 128-sample shift), each
    with its LSTM states carried; both files fixed at batch 1 (no batching by hand)."""
    period = 0.008
    batchable = False

    def __init__(self):
        paths = [os.path.join(DATA, f"dtln_model_{k}.onnx") for k in (1, 2)]
        self.sess = [rnnengine.InferenceSession(p) for p in paths]
        self.ort = [ort_session(p) for p in paths]
        self.names = [("input_2", "input_3"), ("input_4", "input_5")]
        rng = np.random.default_rng(0)
        self.bank = [(0.1 * rng.standard_normal(128)).astype(np.float32) for _ in range(BANK)]

    def warm(self, max_batch: int) -> None:
        for sess, (x, _), size in zip(self.sess, self.names, (257, 512)):
            pool = sess.pool(3)
            ids = [pool.open() for _ in range(3)]
            for _ in range(3):
                pool.step(ids, {x: np.zeros((3, 1, size), np.float32)})

    def ticks(self, n: int, max_batch: int):
        pools = [sess.pool(n) for sess in self.sess]
        ids = [[pool.open() for _ in range(n)] for pool in pools]
        bufs = [_DtlnBuffers() for _ in range(n)]
        (x1, _), (x2, _) = self.names
        bank = self.bank

        def serve(streams, js):
            for lo in range(0, len(streams), max_batch):
                part = streams[lo:lo + max_batch]
                mags = np.concatenate([bufs[s].spectrum(bank[j % BANK])
                                       for s, j in zip(part, js[lo:lo + max_batch])])
                (masks,) = pools[0].step([ids[0][s] for s in part], {x1: mags})
                blocks = np.concatenate([bufs[s].masked(masks[i:i + 1])
                                         for i, s in enumerate(part)])
                (outs,) = pools[1].step([ids[1][s] for s in part], {x2: blocks})
                for i, s in enumerate(part):
                    bufs[s].add(outs[i])
            return -(-len(streams) // max_batch)
        return serve

    def ort_each(self, n: int, max_batch: int):
        (o1, o2), bank = self.ort, self.bank
        (x1, h1), (x2, h2) = self.names
        states = [[np.zeros((1, 2, 128, 2), np.float32) for _ in range(2)] for _ in range(n)]
        bufs = [_DtlnBuffers() for _ in range(n)]

        def serve(streams, js):
            for s, j in zip(streams, js):
                buf, st = bufs[s], states[s]
                mask, st[0] = o1.run(None, {x1: buf.spectrum(bank[j % BANK]), h1: st[0]})
                out, st[1] = o2.run(None, {x2: buf.masked(mask), h2: st[1]})
                buf.add(out)
            return len(streams)
        return serve

    def batcher(self, n: int, max_batch: int, max_delay_us: float):
        return _Batchers(self, [rnnengine.Batcher(sess, max_batch=max_batch,
                                                  max_delay_us=max_delay_us, max_streams=n)
                                for sess in self.sess])

    async def step(self, batchers, handle, j: int) -> None:
        buf = handle[2]
        (x1, _), (x2, _) = self.names
        (mask,) = await batchers[0].step_async(handle[0], {x1: buf.spectrum(
            self.bank[j % BANK])})
        (out,) = await batchers[1].step_async(handle[1], {x2: buf.masked(mask)})
        buf.add(out)

    def handle(self, ids: list) -> list:        # a stream's ids and its signal buffers
        return ids + [_DtlnBuffers()]


# -- the simulated clock ----------------------------------------------------------------------
def arrivals(n: int, period: float, duration: float, seed: int):
    """(times, streams, step numbers) of every step, in arrival order."""
    phases = np.random.default_rng(seed).uniform(0, period, n)
    steps = max(1, int(round(duration / period)))
    times = (phases[None, :] + period * np.arange(steps)[:, None]).ravel()
    streams = np.tile(np.arange(n), steps)
    js = np.repeat(np.arange(steps), n)
    order = np.argsort(times, kind="stable")
    return times[order], streams[order], js[order]


def simulate(serve, n: int, period: float, duration: float, batch: bool, seed: int) -> dict:
    """Run ``serve(streams, js)`` (-> engine calls made) on a virtual clock (see the module
    docstring). Returns sustained, p99 (s), mean batch (steps per engine call), CPU s per
    step. Stops early once more than 1% of the
    steps are late (the count is not sustained)."""
    times, streams, js = arrivals(n, period, duration, seed)
    total = len(times)
    lat = np.empty(total)
    clock, i, batches, late, busy = 0.0, 0, 0, 0, 0.0
    allowed = total // 100
    thread_time = time.thread_time
    while i < total:
        if times[i] > clock:
            clock = times[i]
        j = int(np.searchsorted(times, clock, side="right")) if batch else i + 1
        take = streams[i:j]
        if batch and len(np.unique(take)) < len(take):
            return dict(ok=False, p99=float("inf"), batch=0.0, cpu=0.0)   # a period behind
        t0 = thread_time()
        batches += serve(take.tolist(), js[i:j].tolist())
        spent = thread_time() - t0
        clock += spent
        busy += spent
        lat[i:j] = clock - times[i:j]
        late += int(np.count_nonzero(lat[i:j] >= period))
        i = j
        if late > allowed:
            return dict(ok=False, p99=float("inf"), batch=i / batches, cpu=busy / i)
    p99 = float(np.percentile(lat, 99))
    return dict(ok=p99 < period, p99=p99, batch=total / batches, cpu=busy / total)


# -- the Batcher: asyncio tasks on a virtual clock, or in wall-clock time ---------------------
class _SkippingSelector:
    """The event loop's selector, which skips the virtual clock forward instead of sleeping
    when nothing is in flight (no task waits for the Batcher's worker): the next thing that
    can happen is the next timer, an arrival. While the worker has work, it waits for real
    (the worker's CPU time moves the clock)."""

    def __init__(self, clock):
        self._sel = selectors.DefaultSelector()
        self._clock = clock

    def __getattr__(self, name):
        return getattr(self._sel, name)

    def select(self, timeout=None):
        if timeout is not None and timeout <= 0:
            return self._sel.select(timeout)
        if self._clock.inflight:
            return self._sel.select(0.0005 if timeout is None else min(timeout, 0.0005))
        ready = self._sel.select(0)
        if not ready and timeout is not None:
            self._clock.skipped += timeout
        return ready


class VirtualClock:
    """``now()``: the process's CPU time (every thread: the event loop's and the worker's,
    which share the pinned core) plus the idle time skipped."""

    def __init__(self):
        self.cpu0 = time.process_time()
        self.skipped = 0.0
        self.inflight = 0              # steps whose task waits for the worker

    def now(self) -> float:
        return time.process_time() - self.cpu0 + self.skipped

    def loop(self) -> asyncio.AbstractEventLoop:
        clock = self

        class Loop(asyncio.SelectorEventLoop):
            def time(self):
                return clock.now()

        return Loop(_SkippingSelector(self))


def batcher_probe(model, n: int, period: float, duration: float, seed: int, max_batch: int,
                  max_delay_us: float, simulated: bool) -> dict:
    """n asyncio tasks stepping a Batcher, one step per period each (see the docstring)."""
    phases = np.random.default_rng(seed).uniform(0, period, n)
    steps = max(1, int(round(duration / period)))
    clock = VirtualClock() if simulated else None

    async def main(batcher):
        ids = [batcher.open() for _ in range(n)]
        await asyncio.gather(*(batcher.step(sid, 0) for sid in ids))
        loop = asyncio.get_running_loop()
        lat = []
        late = [0, n * steps // 100]           # late steps, most allowed
        start = loop.time() + 0.001

        async def stream(s):
            sid = ids[s]
            for j in range(steps):
                arrival = start + phases[s] + j * period
                due = loop.create_future()
                loop.call_at(arrival, due.set_result, None)
                await due
                if late[0] > late[1]:
                    return                     # not sustained: stop early
                if clock is not None:
                    clock.inflight += 1
                try:
                    await batcher.step(sid, j)
                finally:
                    if clock is not None:
                        clock.inflight -= 1
                lat.append(loop.time() - arrival)
                if lat[-1] >= period:
                    late[0] += 1

        before = batcher.stats
        cpu0 = time.process_time()
        await asyncio.gather(*(stream(s) for s in range(n)))
        cpu = time.process_time() - cpu0
        after = batcher.stats
        return (lat, late[0] > late[1], cpu, after["steps"] - before["steps"],
                after["batches"] - before["batches"])

    with model.batcher(n, max_batch, max_delay_us) as batcher:
        if clock is None:
            lat, over, cpu, stepped, batches = asyncio.run(main(batcher))
        else:
            loop = clock.loop()
            try:
                lat, over, cpu, stepped, batches = loop.run_until_complete(main(batcher))
            finally:
                loop.close()
    p99 = float("inf") if over else float(np.percentile(lat, 99))
    return dict(ok=p99 < period, p99=p99, batch=stepped / max(batches, 1),
                cpu=cpu / max(stepped, 1))


# -- capacity ---------------------------------------------------------------------------------
def capacity(start: int, precision: float, limit: int):
    """A generator: yields the stream counts to probe and is sent each probe's result;
    returns (largest n sustained, its result, probes run): doubling from ``start``, then
    bisection until the bounds are within ``precision`` (relative). A generator so that the
    contenders' searches can take turns (their probes interleaved in time)."""
    good, bad, best, runs = 0, None, None, 0
    n = start
    while bad is None:
        r = yield n
        runs += 1
        if r["ok"]:
            good, best = n, r
            if n >= limit:
                return n, best, runs
            n = min(limit, 2 * n)
        else:
            bad = n
    while bad - good > max(1, int(good * precision)):
        mid = (good + bad) // 2
        r = yield mid
        runs += 1
        if r["ok"]:
            good, best = mid, r
        else:
            bad = mid
    return good, best, runs


def interleaved(probes: dict, start: int, precision: float, limit: int) -> dict:
    """{contender: probe(n)} -> {contender: capacity(...)'s result}, the contenders taking
    one probe each in turn, so that a change in the machine's load hits them all alike."""
    searches = {c: capacity(start, precision, limit) for c in probes}
    asked = {c: next(g) for c, g in searches.items()}
    done = {}
    while asked:
        for c in list(asked):
            try:
                asked[c] = searches[c].send(probes[c](asked[c]))
            except StopIteration as stop:
                done[c] = stop.value
                del asked[c]
    return done


CONTENDERS = ("batcher", "ticks", "ort", "ort-batched")
MODELS = {"silero": lambda: Silero(os.path.join(DATA, "silero_vad.onnx")),
          "silero_op15": lambda: Silero(os.path.join(DATA, "silero_vad_16k_op15.onnx")),
          "dtln": Dtln}


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--duration", type=float, default=2.0,
                        help="seconds of traffic per probe (default 2)")
    parser.add_argument("--models", default=",".join(MODELS))
    parser.add_argument("--contenders", default=",".join(CONTENDERS))
    parser.add_argument("--core", type=int, default=None,
                        help="the core to pin to (default: the last one allowed)")
    parser.add_argument("--precision", type=float, default=0.04,
                        help="bisection stops when the bounds are this close (relative)")
    parser.add_argument("--max-batch", type=int, default=256)
    parser.add_argument("--max-delay-us", type=float, default=2000,
                        help="the Batcher's max_delay_us with --batcher-clock wall (default "
                             "2000; on the simulated clock it is 0)")
    parser.add_argument("--batcher-clock", choices=("simulated", "wall"), default="simulated")
    parser.add_argument("--limit", type=int, default=8192, help="most streams probed")
    parser.add_argument("--seed", type=int, default=1)
    args = parser.parse_args(argv)
    contenders = [c for c in args.contenders.split(",") if c]
    for c in contenders:
        if c not in CONTENDERS:
            parser.error(f"unknown contender {c!r}; choose from {CONTENDERS}")
    core = args.core if args.core is not None else max(os.sched_getaffinity(0))
    os.sched_setaffinity(0, {core})
    load = os.getloadavg()[0]
    started = time.perf_counter()
    print(f"CPU: {cpu_name()} (core {core} of {os.cpu_count()}); rnnengine ISA variant "
          f"{_kernels.isa()}; onnxruntime {ort.__version__}; load average {load:.1f}",
          flush=True)
    delay = 0 if args.batcher_clock == "simulated" else args.max_delay_us
    print(f"{args.duration:g} s of traffic per probe; sustained: p99 latency < one period; "
          f"max batch {args.max_batch}; Batcher on the {args.batcher_clock} clock, "
          f"max_delay_us={delay:g}", flush=True)
    rows = []
    for name in [m for m in args.models.split(",") if m]:
        model = MODELS[name]()
        t0 = time.perf_counter()
        model.warm(args.max_batch)
        print(f"  {name}: programs for every batch size planned in "
              f"{time.perf_counter() - t0:.1f} s", flush=True)
        probes = {}
        for c in contenders:
            if c == "ort-batched" and not model.batchable:
                continue
            if c == "batcher":
                simulated = args.batcher_clock == "simulated"
                delay = 0 if simulated else args.max_delay_us

                def probe(n, simulated=simulated, delay=delay):
                    return batcher_probe(model, n, model.period, args.duration, args.seed,
                                         args.max_batch, delay, simulated)
            else:
                build = getattr(model, {"ticks": "ticks", "ort": "ort_each",
                                        "ort-batched": "ort_batched"}[c])
                batch = c != "ort"

                def probe(n, build=build, batch=batch):
                    serve = build(n, args.max_batch)
                    warm = list(range(min(n, 8)))
                    for _ in range(3):                       # plan, probe, compile
                        serve(warm, warm)
                        serve(warm[:1], warm[:1])
                    return simulate(serve, n, model.period, args.duration, batch, args.seed)
            probes[c] = probe
        t0 = time.perf_counter()
        found = interleaved(probes, 16, args.precision, args.limit)
        print(f"  {name}: {', '.join(f'{c} {found[c][0]}' for c in found)} streams "
              f"({time.perf_counter() - t0:.0f} s)", flush=True)
        for c in contenders:
            rows.append((name, c) + (found[c] if c in found else (None, None, 0)))
    print()
    print("| model | contender | streams sustained | p99 latency (ms) | mean batch | "
          "CPU us per step | clock |")
    print("|---|---|---:|---:|---:|---:|---|")
    for name, c, n, r, _ in rows:
        if n is None:
            print(f"| {name} | {c} | n/a (batch fixed at 1) | | | | |")
            continue
        if r is None:
            print(f"| {name} | {c} | < 16 | | | | |")
            continue
        print(f"| {name} | {c} | {n} | {r['p99'] * 1e3:.1f} | {r['batch']:.1f} | "
              f"{r['cpu'] * 1e6:.1f} | "
              f"{args.batcher_clock if c == 'batcher' else 'simulated'} |")
    print()
    by = {(name, c): n for name, c, n, _, _ in rows}
    for name in {r[0] for r in rows}:
        base = by.get((name, "ort-batched"))
        for c in ("batcher", "ticks"):
            if by.get((name, c)) and base:
                print(f"{name}: {c} sustains {by[(name, c)] / base:.2f}x the streams of ORT "
                      f"batched by hand")
    print(f"run took {time.perf_counter() - started:.0f} s; load average {load:.1f} before, "
          f"{os.getloadavg()[0]:.1f} after, on {os.cpu_count()} CPUs")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

"""Where a whole-model step spends its time: every planned step of a session (main graph and
If/Loop branches) timed on its own, medians per step, for the Silero VAD model streamed one
chunk at a time and as a pool of 16 streams (one batched graph pass).

    python bench/session_profile.py            # both
    python bench/session_profile.py --top 15   # fewer rows

Wraps the plans' step closures with timers (a measurement tool reaching into internals, not
an API); a branch's time is also inside its If step's. Single-threaded; on a loaded machine
read the medians, not the means.
"""
import argparse
import collections
import os
import time

for var in ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS"):
    os.environ[var] = "1"

import numpy as np  # noqa: E402

from _models import SILERO  # noqa: E402

import rnnengine  # noqa: E402


def timed(sess):
    """Wrap every step of every plan; returns the {(plan, label): [seconds]} they fill."""
    times = collections.defaultdict(list)
    for plan in sess.plan.loaded.plans:
        for i, (step, label) in enumerate(zip(plan.steps, plan.labels)):
            def wrapped(v, step=step, key=(plan.path, label)):
                t = time.perf_counter()
                step(v)
                times[key].append(time.perf_counter() - t)
            plan.steps[i] = wrapped
    return times


def profile(batch, steps, top):
    sess = rnnengine.InferenceSession(SILERO)
    times = timed(sess)
    sr = np.array(16000, np.int64)
    x = (0.1 * np.random.default_rng(0).standard_normal((batch, 512))).astype(np.float32)
    if batch == 1:
        stream = sess.stream(feeds={"sr": sr})

        def step():
            stream.step({"input": x})
    else:
        pool = sess.pool(capacity=batch, feeds={"sr": sr})
        ids = [pool.open() for _ in range(batch)]

        def step():
            pool.step(ids, {"input": x})
    for _ in range(20):
        step()
    times.clear()
    start = time.perf_counter()
    for _ in range(steps):
        step()
    total = (time.perf_counter() - start) / steps
    rows = sorted(((float(np.median(v)), float(np.sum(v)) / steps, key)
                   for key, v in times.items()), reverse=True)
    print(f"\n### Silero VAD, {'one stream' if batch == 1 else f'pool of {batch}'}: "
          f"{total * 1e6:.1f} us per step (wall, with the timers)\n")
    print("| step | plan | median us | mean us |")
    print("|---|---|---:|---:|")
    for med, mean, (plan, label) in rows[:top]:
        print(f"| {label[:90]} | {plan[-40:]} | {med * 1e6:.1f} | {mean * 1e6:.1f} |")


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("--top", type=int, default=30)
    parser.add_argument("--steps", type=int, default=300)
    args = parser.parse_args()
    profile(1, args.steps, args.top)
    profile(16, args.steps // 3, args.top)


if __name__ == "__main__":
    main()

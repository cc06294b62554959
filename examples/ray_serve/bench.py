"""Steps per second of stream_deployment.py on a local Ray cluster with two replicas: many
streams stepped one request per step (``StreamClient``) against the same streams stepped in
groups, one ``step_many`` request per group and timestep (``StreamGroup``). The two ways
take turns, round after round, so both see the same load on a shared machine.

    python examples/ray_serve/bench.py --model model.npz --streams 512 --groups 8
"""
from __future__ import annotations

import argparse
import os
import sys
import time

import numpy as np
import ray
from ray import serve

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, HERE)
from stream_deployment import StreamClient, StreamGroup, build_app  # noqa: E402

import rnnengine  # noqa: E402


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--model", required=True, help="model file for rnnengine.load")
    parser.add_argument("--streams", type=int, default=512)
    parser.add_argument("--groups", type=int, default=8, help="step_many requests per step")
    parser.add_argument("--steps", type=int, default=10, help="timesteps per round and way")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--checkpoint-every", type=int, default=8, help="0: no checkpoints")
    parser.add_argument("--num-cpus", type=int, default=2, help="of the local cluster")
    args = parser.parse_args(argv)

    model = rnnengine.load(args.model)
    S = args.streams
    x = np.random.default_rng(0).standard_normal((S, model.input_size)).astype(np.float32)
    paths = [HERE, os.path.dirname(os.path.dirname(os.path.abspath(rnnengine.__file__)))]
    env = {"PYTHONPATH": os.pathsep.join(paths + [os.environ.get("PYTHONPATH", "")])}
    ray.init(address="local", num_cpus=args.num_cpus, include_dashboard=False,
             _node_ip_address="127.0.0.1", runtime_env={"env_vars": env}, log_to_driver=False)
    try:
        serve.start(proxy_location="Disabled")
        handle = serve.run(build_app(os.path.abspath(args.model), min_replicas=2,
                                     max_replicas=2, directory_name="bench-directory",
                                     checkpoint_every=args.checkpoint_every or None),
                           name="bench", route_prefix=None)
        singles = [StreamClient(handle, f"single-{s}") for s in range(S)]
        groups = [StreamGroup(handle, f"group-{g}", [f"grouped-{s}" for s in
                                                    range(g, S, args.groups)])
                  for g in range(args.groups)]
        rows = [x[g::args.groups] for g in range(args.groups)]

        def one_per_step():
            responses = [c.step_async(x[s]) for s, c in enumerate(singles)]
            return [r.result(timeout_s=120) for r in responses]

        def grouped():
            responses = [group.step_async(rows[g]) for g, group in enumerate(groups)]
            return [r.result(timeout_s=120) for r in responses]

        ways = {"one request per step": one_per_step, "step_many per group": grouped}
        for way in ways.values():      # claims and first steps are not what is measured
            way()
        rates = {name: [] for name in ways}
        for _ in range(args.rounds):
            for name, way in ways.items():
                start = time.perf_counter()
                for _ in range(args.steps):
                    way()
                rates[name].append(S * args.steps / (time.perf_counter() - start))
        replicas = {r["replica"] for g in grouped() for r in g}
    finally:
        serve.shutdown()
        ray.shutdown()
    for name, r in rates.items():
        print(f"{name}: {np.median(r):,.0f} steps/s (median of {len(r)} rounds: "
              f"{', '.join(f'{v:,.0f}' for v in r)})")
    names = list(rates)
    print(f"ratio: {np.median(rates[names[1]]) / np.median(rates[names[0]]):.1f}x; "
          f"{S} streams, {args.groups} groups on {len(replicas)} replicas")
    return 0


if __name__ == "__main__":
    sys.exit(main())

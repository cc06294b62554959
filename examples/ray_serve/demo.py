"""Run stream_deployment.py on a local Ray cluster, autoscaled between one and two replicas:
streams stepped concurrently on two replicas; a pause, so the autoscaler removes one (its
streams move to the other); steps again under load until the autoscaler adds a replica (the
streams whose hash moved follow it). Every stream keeps its state throughout. Writes every
input, output, counter and replica id to an .npz.

    python examples/ray_serve/demo.py --model model.npz --out run.npz
    python examples/ray_serve/demo.py --model model.npz --address auto   # an existing cluster

The local cluster is kept small and on loopback (``--num-cpus``, node IP 127.0.0.1, no
dashboard, no HTTP proxy: requests go through a Serve handle).
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
from stream_deployment import StreamClient, build_app, directory  # noqa: E402

import rnnengine  # noqa: E402


def step_all(clients, xs, t, timeout_s):
    """Timestep ``t`` of every stream, all requests in flight together -> [S] results."""
    responses = [c.step_async(xs[s, t]) for s, c in enumerate(clients)]
    return [r.result(timeout_s=timeout_s) for r in responses]


def running_replicas() -> int:
    deployment = serve.status().applications["streams"].deployments["StreamReplica"]
    return deployment.replica_states.get("RUNNING", 0)


def wait_for(condition, what: str, timeout_s: float) -> None:
    deadline = time.monotonic() + timeout_s
    while not condition():
        if time.monotonic() > deadline:
            raise TimeoutError(f"{what} did not happen within {timeout_s} s")
        time.sleep(0.2)


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--model", required=True, help="model file for rnnengine.load")
    parser.add_argument("--out", required=True, help="write inputs, outputs, replicas here")
    parser.add_argument("--streams", type=int, default=16)
    parser.add_argument("--steps", type=int, default=8, help="timesteps per phase")
    parser.add_argument("--max-steps", type=int, default=400, help="length of the inputs")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--address", default="local", help="'local' starts a cluster here")
    parser.add_argument("--num-cpus", type=int, default=2, help="of the local cluster")
    parser.add_argument("--timeout", type=float, default=120.0, help="seconds per request")
    args = parser.parse_args(argv)

    model = rnnengine.load(args.model)
    model_path = os.path.abspath(args.model)
    xs = np.random.default_rng(args.seed).standard_normal(
        (args.streams, args.max_steps, model.input_size)).astype(np.float32)
    # Workers import rnnengine and stream_deployment the way this process does.
    paths = [HERE, os.path.dirname(os.path.dirname(os.path.abspath(rnnengine.__file__)))]
    env = {"PYTHONPATH": os.pathsep.join(paths + [os.environ.get("PYTHONPATH", "")])}
    started = time.monotonic()
    if args.address == "local":
        ray.init(address="local", num_cpus=args.num_cpus, include_dashboard=False,
                 _node_ip_address="127.0.0.1", runtime_env={"env_vars": env},
                 log_to_driver=False)
    else:
        ray.init(address=args.address, runtime_env={"env_vars": env})
    try:
        serve.start(proxy_location="Disabled")
        # Quick autoscaling, so the demo sees a scale-down and a scale-up within seconds.
        autoscaling = dict(initial_replicas=2, target_ongoing_requests=2, metrics_interval_s=0.5,
                           look_back_period_s=1, upscale_delay_s=0.5, downscale_delay_s=2)
        handle = serve.run(build_app(model_path, min_replicas=1, max_replicas=2,
                                     autoscaling=autoscaling), name="streams", route_prefix=None)
        clients = [StreamClient(handle, f"stream-{s}") for s in range(args.streams)]
        results, marks = [], {}

        def run(steps):
            for _ in range(steps):
                if len(results) == args.max_steps:
                    raise RuntimeError(f"--max-steps {args.max_steps} reached")
                results.append(step_all(clients, xs, len(results), args.timeout))

        def report(what):
            marks[what] = len(results)
            seen = sorted({r["replica"] for r in results[-1]})
            print(f"{what}: step {len(results)}, streams on {seen} "
                  f"({time.monotonic() - started:.1f} s)", flush=True)

        run(args.steps)                                   # two replicas (initial_replicas)
        report("two replicas")
        wait_for(lambda: running_replicas() == 1, "scale-down to one replica", 300)
        run(args.steps)                                   # the removed replica's streams moved
        report("scaled down")
        deadline = time.monotonic() + 300
        while len({r["replica"] for r in results[-1]}) < 2:   # load makes the autoscaler add one
            if time.monotonic() > deadline:
                raise TimeoutError("no scale-up to two replicas within 300 s")
            run(1)
        report("scaled up")
        run(args.steps)
        report("end")
        for client in clients:
            client.close(args.timeout)
        held = ray.get(directory().where.remote())
    finally:
        serve.shutdown()
        ray.shutdown()
    T = len(results)
    np.savez(args.out, inputs=xs[:, :T],
             outputs=np.array([[r["y"] for r in step] for step in results]).transpose(1, 0, 2),
             replicas=np.array([[r["replica"] for r in step] for step in results]).T,
             steps=np.array([[r["steps"] for r in step] for step in results]).T,
             marks=np.array([marks[k] for k in ("two replicas", "scaled down", "scaled up")]),
             held_after_close=np.array(sorted(held), dtype=str))
    print(f"done in {time.monotonic() - started:.1f} s", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())

"""``rnnengine demo``: stream the shipped character-level LSTM and print what it writes."""
from __future__ import annotations

import argparse
import json
import sys
import time
from importlib import resources
from typing import Tuple

import numpy as np

from ._common import CommandError, add_command, describe, load_model


def add_parser(sub) -> None:
    p = add_command(sub, "demo", HELP, cmd_demo, takes_model=False)
    p.add_argument("--prompt", default="Return the ", help="text to start from")
    p.add_argument("--length", type=int, default=300, help="characters to generate (300)")
    p.add_argument("--temperature", type=float, default=0.6,
                   help="sampling temperature; 0 picks the likeliest character (0.6)")
    p.add_argument("--seed", type=int, default=0)


HELP = "stream the shipped character-level LSTM and print what it writes"


def demo_files() -> Tuple[str, dict]:
    """Path of the shipped character LSTM (.npz state_dict) and its vocabulary."""
    data = resources.files("rnnengine") / "data"
    weights = data / "char_lstm.npz"
    vocab = json.loads((data / "char_lstm_vocab.json").read_text(encoding="utf-8"))
    return str(weights), vocab


def cmd_demo(args: argparse.Namespace) -> int:
    weights_path, vocab = demo_files()
    model = load_model(weights_path)       # the recurrent part, read by rnnengine.load
    with np.load(weights_path, allow_pickle=False) as archive:   # the output layer, in NumPy
        head_w, head_b = archive["head.weight"], archive["head.bias"]
    chars = vocab["chars"]
    index = {c: i for i, c in enumerate(chars)}
    unknown = sorted({c for c in args.prompt if c not in index})
    if unknown:
        raise CommandError(f"--prompt has characters the model does not know: {unknown!r}")
    if args.length < 1 or args.temperature < 0:
        raise CommandError("--length must be positive and --temperature >= 0")
    rng = np.random.default_rng(args.seed)
    onehot = np.eye(len(chars), dtype=np.float32)
    stream = model.stream(batch=1)
    out = sys.stdout
    print(f"rnnengine demo: a character-level {describe(model)},")
    print("trained with PyTorch on Python's stdlib docstrings; streamed one character per step.\n")
    out.write(args.prompt)
    out.flush()
    latencies = []
    y = None
    for ch in args.prompt:           # the prompt goes through the same per-step path
        start = time.perf_counter_ns()
        y = stream.step(onehot[index[ch]])
        latencies.append(time.perf_counter_ns() - start)
    for _ in range(args.length):
        logits = head_w @ y + head_b
        if args.temperature == 0:
            nxt = int(np.argmax(logits))
        else:
            z = logits.astype(np.float64) / args.temperature
            p = np.exp(z - z.max())
            nxt = int(rng.choice(len(chars), p=p / p.sum()))
        out.write(chars[nxt])
        out.flush()
        start = time.perf_counter_ns()
        y = stream.step(onehot[nxt])
        latencies.append(time.perf_counter_ns() - start)
    us = np.array(latencies) / 1e3
    print("\n")
    print(f"{len(us)} steps ({len(args.prompt)} prompt + {args.length} generated), batch 1: "
          f"per-step latency of stream.step median {np.median(us):.1f} us, "
          f"p99 {np.percentile(us, 99):.1f} us")
    return 0


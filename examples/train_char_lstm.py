"""Train the character-level LSTM that ``rnnengine demo`` streams.

The text is the documentation of Python's own standard library (the docstrings of about a
hundred stdlib modules, their classes and functions), so every machine that has Python has
the training data; nothing is downloaded. The exact text depends a little on the Python
version (the shipped model was trained on the version recorded in its vocabulary file).

Model: one-hot characters (V of them) -> ``nn.LSTM(V, 224)`` -> ``nn.Linear(224, V)`` ->
softmax over the next character. (One layer of 224 learned faster than two of 128 in the same
time and file size: 1.85 against 2.19 nats/char held out after 400 steps.) Written as a
PyTorch ``state_dict`` in a ``.npz`` (``lstm.weight_ih_l0``, ..., ``head.weight``,
``head.bias``; float32) plus a JSON vocabulary, together about 1.2 MB. ``rnnengine.load`` reads the LSTM part of that file directly; the demo
applies ``head`` in NumPy.

Run from the repository root (a few minutes on 2 CPU cores)::

    python examples/train_char_lstm.py                  # writes src/rnnengine/data/
    python examples/train_char_lstm.py --steps 200 --out /tmp/charlstm   # quicker, elsewhere

Deterministic: fixed seed, deterministic algorithms, a fixed number of steps.
"""
from __future__ import annotations

import argparse
import importlib
import inspect
import json
import math
import os
import platform
import time
import warnings

import numpy as np
import torch
from torch import nn

# Pure-Python stdlib modules present in every CPython build (no Tk, no optional C deps).
MODULES = [
    "abc", "argparse", "array", "ast", "base64", "bisect", "bz2", "calendar", "cmath", "codecs",
    "collections", "configparser", "contextlib", "copy", "csv", "dataclasses", "datetime",
    "decimal", "difflib", "dis", "doctest", "email.message", "enum", "fnmatch", "fractions",
    "ftplib", "functools", "getopt", "gettext", "glob", "gzip", "hashlib", "heapq", "hmac",
    "html", "http.client", "imaplib", "inspect", "io", "ipaddress", "itertools", "json",
    "locale", "logging", "lzma", "mailbox", "math", "mimetypes", "netrc", "numbers",
    "operator", "optparse", "os", "pathlib", "pdb", "pickle", "pkgutil", "platform",
    "plistlib", "poplib", "pprint", "queue", "random", "re", "reprlib", "sched", "secrets",
    "selectors", "shlex", "shutil", "signal", "smtplib", "socket", "sqlite3", "statistics",
    "string", "struct", "subprocess", "sysconfig", "tarfile", "tempfile", "textwrap",
    "threading", "timeit", "tokenize", "trace", "traceback", "types", "unittest", "urllib.parse",
    "uuid", "warnings", "wave", "weakref", "xml.dom.minidom", "zipfile", "zipimport",
]
# Printable ASCII plus newline: the demo's alphabet. Other characters are dropped.
ALPHABET = "\n" + "".join(chr(c) for c in range(32, 127))


def stdlib_docstrings() -> str:
    """The docstrings of MODULES (module, public classes and functions, public methods),
    each once, in a fixed order, separated by blank lines."""
    seen, docs = set(), []
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        for name in MODULES:
            try:
                module = importlib.import_module(name)
            except ImportError:  # a stripped-down Python; the rest is still plenty
                continue
            objects = [module]
            for key, value in sorted(vars(module).items()):
                if key.startswith("_") or getattr(value, "__module__", None) != module.__name__:
                    continue
                if inspect.isfunction(value):
                    objects.append(value)
                elif inspect.isclass(value):
                    objects.append(value)
                    objects += [v for k, v in sorted(vars(value).items())
                                if not k.startswith("_") and inspect.isfunction(v)]
            for obj in objects:
                doc = obj.__doc__
                if isinstance(doc, str) and doc.strip():
                    doc = inspect.cleandoc(doc).replace("\t", "    ")
                    doc = "".join(ch for ch in doc if ch in ALPHABET)
                    if doc not in seen:
                        seen.add(doc)
                        docs.append(doc)
    return "\n\n".join(docs) + "\n"


class CharLSTM(nn.Module):
    """(T, N) character ids -> (T, N, V) next-character logits."""

    def __init__(self, vocab: int, hidden: int, layers: int):
        super().__init__()
        self.vocab = vocab
        self.lstm = nn.LSTM(vocab, hidden, num_layers=layers)
        self.head = nn.Linear(hidden, vocab)

    def forward(self, ids, state=None):
        x = nn.functional.one_hot(ids, self.vocab).float()
        y, state = self.lstm(x, state)
        return self.head(y), state


def batches(data: torch.Tensor, batch: int, seq: int, generator: torch.Generator):
    """Endless (inputs, targets) pairs of shape (seq, batch) cut at random offsets."""
    while True:
        starts = torch.randint(0, len(data) - seq - 1, (batch,), generator=generator)
        chunk = torch.stack([data[s:s + seq + 1] for s in starts.tolist()], dim=1)
        yield chunk[:-1], chunk[1:]


def sample(model: CharLSTM, chars: str, prompt: str, n: int, temperature: float, seed: int) -> str:
    """Text generated by PyTorch itself, to compare by eye with ``rnnengine demo``."""
    rng = np.random.default_rng(seed)
    index = {c: i for i, c in enumerate(chars)}
    with torch.no_grad():
        logits, state = model(torch.tensor([[index[c]] for c in prompt]))
        out = []
        for _ in range(n):
            p = torch.softmax(logits[-1, 0] / temperature, 0).double().numpy()
            nxt = int(rng.choice(len(chars), p=p / p.sum()))
            out.append(chars[nxt])
            logits, state = model(torch.tensor([[nxt]]), state)
    return prompt + "".join(out)


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", default=os.path.join("src", "rnnengine", "data"),
                        help="output folder (default: src/rnnengine/data)")
    parser.add_argument("--steps", type=int, default=1500, help="optimizer steps (default 1500)")
    parser.add_argument("--hidden", type=int, default=224)
    parser.add_argument("--layers", type=int, default=1)
    parser.add_argument("--batch", type=int, default=32)
    parser.add_argument("--seq", type=int, default=100)
    parser.add_argument("--lr", type=float, default=1e-2)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--threads", type=int, default=2)
    args = parser.parse_args(argv)

    torch.manual_seed(args.seed)
    torch.use_deterministic_algorithms(True)
    torch.set_num_threads(args.threads)

    text = stdlib_docstrings()
    chars = "".join(sorted(set(text)))
    index = {c: i for i, c in enumerate(chars)}
    data = torch.tensor([index[c] for c in text], dtype=torch.long)
    split = int(len(data) * 0.95)  # hold out the tail to report an honest loss
    train, held_out = data[:split], data[split:]
    print(f"corpus: {len(text):,} characters of stdlib docstrings, vocabulary {len(chars)}")

    model = CharLSTM(len(chars), args.hidden, args.layers)
    optimizer = torch.optim.Adam(model.parameters(), lr=args.lr)
    schedule = torch.optim.lr_scheduler.CosineAnnealingLR(optimizer, args.steps)
    stream = batches(train, args.batch, args.seq, torch.Generator().manual_seed(args.seed))
    start = time.perf_counter()
    for step in range(1, args.steps + 1):
        inputs, targets = next(stream)
        logits, _ = model(inputs)
        loss = nn.functional.cross_entropy(logits.reshape(-1, len(chars)), targets.reshape(-1))
        optimizer.zero_grad()
        loss.backward()
        nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        optimizer.step()
        schedule.step()
        if step % 100 == 0 or step == args.steps:
            print(f"step {step:5d}/{args.steps}  loss {loss.item():.3f} nats/char  "
                  f"{time.perf_counter() - start:6.0f} s", flush=True)

    model.eval()
    with torch.no_grad():
        logits, _ = model(held_out[:-1, None])
        held_loss = nn.functional.cross_entropy(logits[:, 0], held_out[1:]).item()
    print(f"held-out loss {held_loss:.3f} nats/char ({held_loss / math.log(2):.2f} bits/char)")
    print("PyTorch sample:\n" + sample(model, chars, "Return the ", 300, 0.7, args.seed))

    os.makedirs(args.out, exist_ok=True)
    weights = {k: v.detach().numpy().astype(np.float32) for k, v in model.state_dict().items()}
    np.savez_compressed(os.path.join(args.out, "char_lstm.npz"), **weights)
    vocab = {
        "chars": chars,
        "input": "one-hot over chars, fed to lstm (PyTorch nn.LSTM, batch_first=False)",
        "output": "softmax(head.weight @ h + head.bias) over chars: the next character",
        "hidden_size": args.hidden, "num_layers": args.layers,
        "corpus": "docstrings of Python standard library modules "
                  "(examples/train_char_lstm.py, MODULES)",
        "corpus_characters": len(text), "python": platform.python_version(),
        "torch": torch.__version__, "steps": args.steps, "batch": args.batch, "seq": args.seq,
        "seed": args.seed, "held_out_loss_nats_per_char": round(held_loss, 4),
    }
    with open(os.path.join(args.out, "char_lstm_vocab.json"), "w", encoding="utf-8") as f:
        json.dump(vocab, f, indent=1)
        f.write("\n")
    print(f"wrote {args.out}/char_lstm.npz and {args.out}/char_lstm_vocab.json")


if __name__ == "__main__":
    main()

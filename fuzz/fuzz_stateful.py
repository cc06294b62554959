"""Stateful fuzz harness: random small graphs streamed through SessionStream, SessionPool and
Batcher, with good and bad calls interleaved.

Each case builds a graph (state pairs around a dense cell, a GRU or an LSTM, an embedding
whose token ids only the graph can refuse, a peak normalisation that mixes the batch rows;
or a GRU/LSTM with no state inputs, streamed along time) and drives one stream, one pool and
one Batcher with a random program: good steps, bad steps (wrong shape, dtype, name, a token
out of range), resets, export/import (also of corrupted bytes), state assignment, pool
opens/closes. Contract checked:

* a successful step's outputs match ONNX Runtime running that stream alone, its state fed
  back by hand (time axis: ORT on the stream's whole history);
* a bad call raises ValueError or TypeError (nothing else);
* after EVERY failed call, each stream's state equals a replay of its successful calls on a
  fresh stream (``STATE`` findings), and equals ORT's.

Plain-Python deterministic mode (tests/runtime/test_fuzz_stateful.py runs it)::

    python fuzz/fuzz_stateful.py --cases 50 --seed 0

atheris (tools/fuzz_sanitized.sh)::

    python fuzz/fuzz_stateful.py -atheris -runs=200
"""
from __future__ import annotations

import sys

import numpy as np
from onnx import TensorProto, helper, numpy_helper

if __name__ == "__main__" and "-atheris" in sys.argv:
    import atheris
    with atheris.instrument_imports():
        import rnnengine
else:
    import rnnengine
from rnnengine.runtime.state_blob import pack_arrays, session_fingerprint

TOL = dict(rtol=1e-4, atol=1e-4)
VOCAB = 7


class Finding(AssertionError):
    """A broken contract; ``kind`` names which one (OUTPUT, ERROR_TYPE, STATE)."""

    def __init__(self, kind: str, message: str):
        super().__init__(f"{kind}: {message}")
        self.kind = kind


class Choices:
    """Random decisions from an atheris FuzzedDataProvider or a seeded NumPy generator."""

    def __init__(self, fdp=None, seed: int = 0):
        self.fdp, self.rng = fdp, np.random.default_rng(seed)

    def int(self, lo: int, hi: int) -> int:
        if self.fdp is not None:
            return self.fdp.ConsumeIntInRange(lo, hi)
        return int(self.rng.integers(lo, hi + 1))

    def pick(self, options):
        return options[self.int(0, len(options) - 1)]

    def data(self, shape, dtype=np.float32, high: int = VOCAB) -> np.ndarray:
        """Values: from the generator seeded by a drawn int (cheap for the fuzzer's bytes);
        integers in [0, high)."""
        rng = np.random.default_rng(self.int(0, 1 << 30))
        if np.dtype(dtype).kind == "i":
            return rng.integers(0, high, shape).astype(dtype)
        return rng.standard_normal(shape).astype(dtype)


# --- graphs -----------------------------------------------------------------------------------

def build(c: Choices):
    """-> (kind, model, pairs {out: in} or {} for time axis, step inputs {name: (per-stream
    shape, dtype, exclusive bound of integer values)}, zero state {input: array}).

    Recurrent kinds pick two units of their output with an int64 ``sel`` fed each step: an
    index out of range fails in the graph after the recurrent node ran. ``peak`` variants
    divide by the peak over the whole batch (the pool must step them one by one)."""
    kind = c.pick(["dense", "gru", "lstm", "tokens", "peak", "peak_tokens", "time_gru",
                   "time_lstm"])
    F, H = c.int(1, 4), c.int(1, 5)
    rng = np.random.default_rng(c.int(0, 1 << 30))

    def u(*shape):
        return numpy_helper.from_array(rng.uniform(-1, 1, shape).astype(np.float32))

    def init(name, *shape):
        t = u(*shape)
        t.name = name
        return t

    def vi(name, dims, elem=TensorProto.FLOAT):
        return helper.make_tensor_value_info(name, elem, dims)

    out_dims = c.pick([["batch", H], ["Out_dim_0", H], None, [None, H]])
    if kind in ("dense", "tokens", "peak", "peak_tokens"):
        inits = [init("W", F, H), init("U", H, H)]
        nodes, x = [], "x"
        if "tokens" in kind:    # an embedding: an id >= VOCAB is refused by the graph only
            inits.append(init("E", VOCAB, F))
            nodes.append(helper.make_node("Gather", ["E", "tok"], ["emb"]))
            nodes.append(helper.make_node("Squeeze", ["emb", "one"], ["x"]))
            inits.append(numpy_helper.from_array(np.array([1], np.int64), "one"))
        if "peak" in kind:      # divides by the peak over ALL axes: batch rows mix
            nodes += [helper.make_node("Abs", ["x"], ["ax"]),
                      helper.make_node("ReduceMax", ["ax"], ["peak"], keepdims=1),
                      helper.make_node("Div", ["x", "peak"], ["xn"])]
            x = "xn"
        act = c.pick(["Tanh", "Sigmoid", "Relu"])
        nodes += [helper.make_node("MatMul", [x, "W"], ["xw"]),
                  helper.make_node("MatMul", ["h", "U"], ["hu"]),
                  helper.make_node("Add", ["xw", "hu"], ["pre"]),
                  helper.make_node(act, ["pre"], ["h_out"]),
                  helper.make_node(c.pick(["Softmax", "Neg"]), ["h_out"], ["y"])]
        if "tokens" in kind:
            inputs = [vi("tok", ["batch", 1], TensorProto.INT64)]
            steps = {"tok": ((1, 1), np.int64, VOCAB)}
        else:
            inputs = [vi("x", ["batch", F])]
            steps = {"x": ((1, F), np.float32, None)}
        inputs.append(vi("h", ["batch", H]))
        outputs = [vi("y", out_dims), vi("h_out", ["batch", H])]
        pairs, zero = {"h_out": "h"}, {"h": np.zeros((1, H), np.float32)}
    else:
        cell = "GRU" if "gru" in kind else "LSTM"
        G = 3 if cell == "GRU" else 4
        inits = [init("W", 1, G * H, F), init("R", 1, G * H, H), init("B", 1, 2 * G * H)]
        time = kind.startswith("time")
        ins = ["x", "W", "R", "B"] + ([] if time else ["", "h0"] + (["c0"] if G == 4 else []))
        outs = ["Y", "Y_h"] + ([] if time or G == 3 else ["Y_c"])
        nodes = [helper.make_node(cell, ins, outs, hidden_size=H, name="rnn"),
                 helper.make_node(c.pick(["Tanh", "Identity"]), ["Y"], ["ya"]),
                 helper.make_node("Gather", ["ya", "sel"], ["y"], axis=3)]
        T = "T" if time else 1
        inputs = [vi("x", [T, "batch", F]), vi("sel", [2], TensorProto.INT64)]
        steps = {"x": ((c.int(1, 3) if time else 1, 1, F), np.float32, None),
                 "sel": ((2,), np.int64, H)}
        outputs = [vi("y", [T, 1, "batch", 2])]
        pairs, zero = {}, {}
        if not time:
            names = ["h0"] + (["c0"] if G == 4 else [])
            inputs += [vi(n, [1, "batch", H]) for n in names]
            outputs += [vi(o, [1, "batch", H]) for o in outs[1:]]
            pairs = dict(zip(outs[1:], names))
            zero = {n: np.zeros((1, 1, H), np.float32) for n in names}
    graph = helper.make_graph(nodes, kind, inputs, outputs, inits)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    return kind, model, pairs, steps, zero


# --- the reference ------------------------------------------------------------------------

class Reference:
    """One stream as ONNX Runtime runs it alone, from the events that succeeded."""

    def __init__(self, ort, pairs, zero):
        self.ort, self.pairs, self.zero = ort, pairs, zero
        self.names = [o.name for o in ort.get_outputs()]
        self.events = []        # ("step", feeds) | ("state", {input: array})
        self.state = dict(zero)
        self.history = []       # time axis: every chunk stepped so far

    def copy(self):
        other = Reference(self.ort, self.pairs, self.zero)
        other.events, other.state, other.history = list(self.events), dict(self.state), list(
            self.history)
        return other

    def step(self, feeds):
        """-> ORT's non-state outputs for this step; records it."""
        self.events.append(("step", feeds))
        if not self.pairs:
            self.history.append(feeds["x"])
            x = np.concatenate(self.history, axis=0)
            y = self.ort.run(None, {**feeds, "x": x})[0]
            return [y[len(x) - len(feeds["x"]):]]
        outs = dict(zip(self.names, self.ort.run(None, {**feeds, **self.state})))
        self.state = {i: outs[o] for o, i in self.pairs.items()}
        return [outs[n] for n in self.names if n not in self.pairs]

    def set_state(self, state):
        self.events.append(("state", state))
        self.state = dict(state)

    def ort_state(self) -> dict:
        """{state input: array} as ORT carried it (state pairs only)."""
        return self.state


def replay(sess, pairs, events, kind):
    """A fresh stream with the successful events applied: its state."""
    stream = sess.stream(state=pairs or None)
    for what, value in events:
        if what == "step":
            stream.step(value)
        else:
            stream.state = value
    return stream.state


def same_state(got: dict, want: dict, where: str, kind: str = "STATE") -> None:
    got = {k: v for k, v in got.items() if v is not None}
    want = {k: v for k, v in want.items() if v is not None}
    for name in set(got) | set(want):
        a, b = got.get(name), want.get(name)
        zero_a = a is None or not np.any(a)
        zero_b = b is None or not np.any(b)
        if zero_a and zero_b:
            continue
        if a is None or b is None or a.shape != b.shape or not np.allclose(a, b, **TOL):
            raise Finding(kind, f"{where}: state {name!r} is "
                          f"{None if a is None else a.ravel()[:4]}, the replay's "
                          f"{None if b is None else b.ravel()[:4]}")


def same_outputs(got, want, where: str) -> None:
    if len(got) != len(want):
        raise Finding("OUTPUT", f"{where}: {len(got)} outputs, ORT gives {len(want)}")
    for k, (a, b) in enumerate(zip(got, want)):
        if np.shape(a) != np.shape(b) or not np.allclose(a, b, **TOL):
            raise Finding("OUTPUT", f"{where}: output {k} {np.shape(a)} "
                          f"{np.ravel(a)[:4]} != ORT's {np.shape(b)} {np.ravel(b)[:4]}")


def expect_error(call, where: str) -> bool:
    """Run a call that should fail: True if it raised ValueError/TypeError, False if it
    succeeded (a bad call the engine may accept, e.g. a token the graph clips)."""
    try:
        call()
    except (ValueError, TypeError):
        return True
    except Exception as error:      # noqa: BLE001 -- any other type is the finding
        raise Finding("ERROR_TYPE", f"{where}: {type(error).__name__}: {error}") from error
    return False


# --- the program --------------------------------------------------------------------------

def bad_feeds(c: Choices, steps: dict, kind: str):
    """Feeds for one stream that must be refused: a wrong shape, dtype or name, a missing
    input, or an integer out of range (refused by the graph only)."""
    feeds = good_feeds(c, steps)
    name, (shape, dtype, _) = next(iter(steps.items()))
    how = c.pick(["shape", "dtype", "name", "missing", "range"])
    if how == "shape":
        feeds[name] = c.data(tuple(shape[:-1]) + (shape[-1] + 1,), dtype)
    elif how == "dtype":
        feeds[name] = c.data(shape, np.float64 if dtype == np.float32 else np.int32)
    elif how == "name":
        feeds["nope"] = feeds[name]
    elif how == "missing":
        del feeds[name]
    else:
        ints = [n for n, (_, _, high) in steps.items() if high is not None]
        if not ints:
            return bad_feeds(c, steps, kind)
        n = c.pick(ints)
        feeds[n] = feeds[n].copy()
        feeds[n].flat[c.int(0, feeds[n].size - 1)] = steps[n][2] + c.int(0, 5)
    return feeds


def good_feeds(c: Choices, steps: dict):
    return {n: c.data(shape, dtype, high or VOCAB) for n, (shape, dtype, high) in steps.items()}


def stream_program(c, sess, ort, kind, pairs, steps, zero, n_ops):
    stream = sess.stream(state=pairs or None)
    ref = Reference(ort, pairs, zero)
    saved = None

    def check(where):
        same_state(stream.state, replay(sess, pairs, ref.events, kind), where)

    for op in range(n_ops):
        what = c.pick(["good", "good", "good", "bad", "reset", "export", "import",
                       "corrupt", "misfit", "set"])
        where = f"{kind} stream op {op} ({what})"
        if what == "good":
            feeds = good_feeds(c, steps)
            same_outputs(stream.step(feeds), ref.step(feeds), where)
        elif what == "bad":
            feeds = bad_feeds(c, steps, kind)
            if expect_error(lambda: stream.step(feeds), where):
                check(where)
            else:
                raise Finding("ERROR_TYPE", f"{where}: bad feeds {list(feeds)} were accepted")
        elif what == "reset":
            stream.reset()
            ref = Reference(ort, pairs, zero)
        elif what == "export":
            saved = (stream.export_state(), ref.copy())
        elif what == "import" and saved is not None:
            stream.import_state(saved[0])
            ref = saved[1].copy()
            check(where)
        elif what == "misfit":   # well-formed bytes whose last array has a wrong shape
            state = {k: v for k, v in stream.state.items() if v is not None}
            if state:
                last = list(state)[-1]
                state[last] = np.zeros(state[last].shape + (2,), state[last].dtype)
                blob = pack_arrays(state, session_fingerprint(sess))
                if expect_error(lambda: stream.import_state(blob), where):
                    check(where)
        elif what == "corrupt" and saved is not None:
            blob = bytearray(saved[0])
            blob[c.int(0, len(blob) - 1)] ^= 1 << c.int(0, 7)
            if expect_error(lambda: stream.import_state(bytes(blob)), where):
                check(where)
        elif what == "set" and pairs:
            state = {n: c.data(z.shape) for n, z in zero.items()}
            stream.state = state
            ref.set_state(state)
            if c.int(0, 1):   # a wrong-shaped state must be refused and leave it as it was
                wrong = {n: c.data(z.shape + (1,)) for n, z in zero.items()}

                def assign():
                    stream.state = wrong
                if expect_error(assign, where + " wrong shape"):
                    check(where + " wrong shape")
    same_state(stream.state, ref.ort_state() if pairs else stream.state, f"{kind} end vs ORT")


def stack(pool, rows, ids):
    """Per-stream rows -> the pool's feeds: stacked inputs concatenated on their axis,
    shared ones (``sel``) as the first stream gives them."""
    names = set().union(*(rows[s] for s in ids))
    for n in names:
        if len({rows[s][n].dtype for s in ids}) > 1:    # np.concatenate would cast
            raise ValueError(f"the rows of {n!r} differ in dtype")
    return {n: (np.concatenate([rows[s][n] for s in ids], axis=pool.in_axis[n])
                if n in pool.in_axis else rows[ids[0]][n]) for n in names}


def pool_program(c, sess, ort, kind, pairs, steps, zero, n_ops):
    pool = sess.pool(capacity=4, state=pairs or None)
    refs = {}

    def check(where, sids):
        for sid in sids:
            same_state(pool.state(sid), replay(sess, pairs, refs[sid].events, kind),
                       f"{where} stream {sid}")

    for op in range(n_ops):
        what = c.pick(["open", "step", "step", "step", "bad", "close", "move"])
        where = f"{kind} pool op {op} ({what})"
        if what == "open" or not refs:
            if len(refs) < 4:
                refs[pool.open()] = Reference(ort, pairs, zero)
            continue
        sids = [s for s in refs if c.int(0, 2)] or [next(iter(refs))]
        if what == "step":
            rows = {s: good_feeds(c, steps) for s in sids}
            for s in sids:       # inputs not stacked per stream are one value for all
                rows[s].update({n: v for n, v in rows[sids[0]].items() if n not in pool.in_axis})
            got = pool.step(sids, stack(pool, rows, sids))
            for j, sid in enumerate(sids):
                want = refs[sid].step(rows[sid])
                same_outputs([np.take(o, [j], axis=ax) for o, ax in zip(got, pool.out_axis)],
                             want, f"{where} stream {sid}")
        elif what == "bad":
            rows = {s: good_feeds(c, steps) for s in sids}
            bad = rows[sids[c.int(0, len(sids) - 1)]] = bad_feeds(c, steps, kind)
            for s in sids:       # a bad input shared by the streams is bad for all
                rows[s].update({n: v for n, v in bad.items() if n not in pool.in_axis})
            try:
                feeds = stack(pool, rows, sids)
            except (ValueError, KeyError):     # the bad row does not stack: all rows bad
                bad = bad_feeds(c, steps, kind)
                feeds = stack(pool, {s: bad for s in sids}, sids)
            if not expect_error(lambda: pool.step(sids, feeds), where):
                raise Finding("ERROR_TYPE", f"{where}: bad feeds were accepted")
            check(where, sids)
        elif what == "close":
            sid = sids[0]
            pool.close(sid)
            del refs[sid]
        elif what == "move":      # export, close, import into a new slot
            sid = sids[0]
            blob, ref = pool.export_state(sid), refs.pop(sid)
            pool.close(sid)
            refs[pool.import_state(blob)] = ref
    for sid, ref in refs.items():
        if pairs:
            same_state(pool.state(sid), ref.ort_state(), f"{kind} pool end vs ORT")


def batcher_program(c, sess, ort, kind, pairs, steps, zero, n_ops):
    with rnnengine.Batcher(sess, max_batch=4, max_delay_us=50, state=pairs or None) as batcher:
        refs = {batcher.open(): Reference(ort, pairs, zero)}
        for op in range(n_ops):
            what = c.pick(["step", "step", "bad", "move", "open"])
            sid = c.pick(sorted(refs))
            where = f"{kind} batcher op {op} ({what})"
            if what == "step":
                feeds = good_feeds(c, steps)
                same_outputs(batcher.step(sid, feeds), refs[sid].step(feeds), where)
            elif what == "bad":
                feeds = bad_feeds(c, steps, kind)
                if expect_error(lambda: batcher.step(sid, feeds), where):
                    stream = sess.stream(state=pairs or None)
                    stream.import_state(batcher.export_state(sid))
                    same_state(stream.state, replay(sess, pairs, refs[sid].events, kind), where)
            elif what == "move":
                new = batcher.resume(batcher.export_state(sid))
                batcher.close(sid)
                refs[new] = refs.pop(sid)
            elif what == "open" and len(refs) < 3:
                refs[batcher.open()] = Reference(ort, pairs, zero)


def ort_session(model):
    import onnxruntime
    options = onnxruntime.SessionOptions()
    options.intra_op_num_threads = options.inter_op_num_threads = 1
    options.log_severity_level = 3
    return onnxruntime.InferenceSession(model.SerializeToString(), options,
                                        providers=["CPUExecutionProvider"])


def one_case(c: Choices, n_ops: int = 12, programs=("stream", "pool", "batcher")) -> str:
    kind, model, pairs, steps, zero = build(c)
    sess = rnnengine.InferenceSession(model)
    ort = ort_session(model)
    run = {"stream": stream_program, "pool": pool_program, "batcher": batcher_program}
    for name in programs:
        run[name](c, sess, ort, kind, pairs, steps, zero, n_ops)
    return kind


def run_cases(cases: int, seed: int = 0, n_ops: int = 12, programs=("stream", "pool", "batcher"),
              kinds=None):
    """Deterministic mode: -> {finding kind: [messages]} over ``cases`` seeded cases."""
    findings = {}
    for case in range(cases):
        c = Choices(seed=seed * 100_003 + case)
        try:
            one_case(c, n_ops, programs)
        except Finding as finding:
            if kinds is None or finding.kind in kinds:
                findings.setdefault(finding.kind, []).append(f"case {case}: {finding}")
        except Exception as error:      # noqa: BLE001 -- a good call that failed
            if kinds is None or "UNEXPECTED" in kinds:
                findings.setdefault("UNEXPECTED", []).append(
                    f"case {case}: {type(error).__name__}: {error}")
    return findings


def test_one_input(data: bytes) -> None:
    import atheris
    one_case(Choices(atheris.FuzzedDataProvider(data)))


def main() -> None:
    if "-atheris" in sys.argv:
        import atheris
        argv = [a for a in sys.argv if a != "-atheris"]
        atheris.Setup(argv, test_one_input)
        atheris.Fuzz()
        return
    import argparse
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--cases", type=int, default=50)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--ops", type=int, default=12)
    args = parser.parse_args()
    findings = run_cases(args.cases, args.seed, args.ops)
    for kind, messages in findings.items():
        print(f"{kind}: {len(messages)} case(s)")
        for m in messages[:5]:
            print("   ", m)
    sys.exit(1 if findings else 0)


if __name__ == "__main__":
    main()

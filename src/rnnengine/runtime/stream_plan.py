"""A session stream's fast path: state pairs kept inside the recurrent kernels.

An exported streaming model unpacks its state input into the recurrent nodes' initial
states (Slice/Squeeze/Transpose...) and packs their final states into the state output
(Unsqueeze/Concat...), every step. When that plumbing only moves the state around, the
stream can skip it: each recurrent node keeps its state in an ``rnnengine.Stream`` (one
kernel call per step, the state never leaves its buffers) and only the steps that the other
outputs need run. The packed state is computed when asked for (``stream.state``,
``export_state``) and unpacked when set.

``ElidedPlan.build`` decides whether that is exact for a graph, without trusting op names:

* structurally: every recurrent node of the main graph takes its whole initial state from
  state inputs (no sequence_lens, one direction); the outputs kept by ``step`` do not read
  the state inputs except through the recurrent nodes; packing needs only the final states,
  constants and fixed feeds; unpacking only the state inputs, constants and fixed feeds;
* numerically, on the first step's feeds: from a random state R, the full graph's state
  output S' fed back must reach the recurrent nodes as exactly (bit for bit) the final
  states R produced, and the zero state must unpack to zeros.

Otherwise (Silero: its recurrent nodes sit in If branches chosen by the state's shape) the
stream runs the whole graph every step.
"""
from __future__ import annotations

from typing import Dict, List, Optional

import numpy as np

from ..core.checks import is_one_way
from ._plan import core_restore, core_saved
from .plan import CONTEXT, NONE


def _live(io: list, wanted: set, skip=lambda k: False, reads=None) -> List[int]:
    """Indices of the steps needed for ``wanted`` slots, in order. ``skip(k)``: step k is
    not run (its outputs are provided); ``reads(k)``: the slots step k reads (default:
    all its inputs)."""
    need = set(wanted)
    picked = []
    for k in range(len(io) - 1, -1, -1):
        ins, outs = io[k]
        if skip(k) or not need.intersection(outs):
            continue
        picked.append(k)
        need.update(reads(k) if reads else ins)
    return picked[::-1]


def _sources(io: list, steps: List[int], plan, outside: set, reads=None) -> set:
    """Slots the ``steps`` read that none of them write and that are not constants."""
    written = {o for k in steps for o in io[k][1]}
    const = {plan.slots[n] for n in plan.consts if n in plan.slots}
    return {i for k in steps for i in (reads(k) if reads else io[k][0])
            if i not in written and i not in const and i not in outside and i != NONE}


class Carrier:
    """Recurrent state of one stream: an rnnengine.Stream per recurrent node, created at
    the first step for the batch it sees. ``want`` holds the nodes whose final state the
    step must also write to the table (time-axis streams write every node's)."""

    def __init__(self, want=None):
        self.streams = {}
        self.want = want

    def saved(self) -> tuple:
        """What ``restore`` needs to undo a step that failed part-way (the recurrent nodes
        may have stepped before a later operator raised)."""
        return dict(self.streams), [(s.core, core_saved(s.core))
                                    for s in self.streams.values()]

    def restore(self, saved: tuple) -> None:
        streams, cores = saved
        self.streams.clear()
        self.streams.update(streams)
        for core, state in cores:
            core_restore(core, state)

    def export(self) -> Dict[str, np.ndarray]:
        """Copies of the recurrent states: {"<node>/h": (1, N, Hout), "<node>/c": ...}."""
        out = {}
        for rec, stream in self.streams.items():
            s = stream.state
            h, c = s if rec.kind == "lstm" else (s, None)
            out[f"{rec.label}/h"] = h
            if c is not None:
                out[f"{rec.label}/c"] = c
        return out

    def load(self, recs: list, arrays: Dict[str, np.ndarray]) -> None:
        """Set the states of ``export`` (ValueError if any does not fit: then nothing
        changes). Once the stream has state, its batch is fixed."""
        by_label = {rec.label: rec for rec in recs}
        for key in arrays:
            label, _, which = key.rpartition("/")
            if label not in by_label or which not in ("h", "c"):
                raise ValueError(f"state blob holds {key!r}, which is not a recurrent "
                                 f"state of this model ({sorted(by_label)})")
        batch, new = self.batch(), {}
        for label, rec in by_label.items():
            h = arrays.get(f"{label}/h")
            if h is None:
                continue
            if h.ndim != 3:
                raise ValueError(f"state {label}/h must be (1, N, H); got {h.shape}")
            if batch is not None and h.shape[1] != batch:
                raise ValueError(f"state {label}/h is for a batch of {h.shape[1]}; this "
                                 f"stream's state has batch {batch}, fixed once it has state "
                                 "(reset() to start with another)")
            stream = new[rec] = rec.model.stream(batch=h.shape[1])
            stream.state = (h, arrays.get(f"{label}/c")) if rec.kind == "lstm" else h
        self.streams.update(new)

    def batch(self) -> Optional[int]:
        """The batch of the state carried (None before the first step)."""
        return next((s.batch for s in self.streams.values()), None)

    def advance(self, rec, x: np.ndarray, v: list):
        N = x.shape[0] if rec.layout else x.shape[1]
        stream = self.streams.get(rec)
        if stream is not None and stream.batch != N:
            raise ValueError(f"recurrent node {rec.label!r} is fed a batch of {N}; this "
                             f"stream's state has batch {stream.batch}, fixed once it has "
                             "state (reset() to start with another batch)")
        if stream is None:
            stream = self.streams[rec] = rec.model.stream(batch=N)
            given = rec._state(v, N)          # the graph's own initial state, first call
            if given is not None:
                stream.state = given
        if x.shape[1 if rec.layout else 0] == 1:     # one timestep: the lean call
            y = stream.step(x[:, 0] if rec.layout else x[0])
            y = y[:, None] if rec.layout else y[None]
        else:
            y = stream.run(x)
        if self.want is not None and rec not in self.want:
            return y, None, None
        state = stream.state
        return (y,) + (tuple(state) if rec.kind == "lstm" else (state, None))


class SlotCarrier:
    """Recurrent state of every slot of a time-axis pool: ``h[rec]`` (1, capacity, Hout),
    ``c[rec]`` (1, capacity, H); a step gathers the rows of ``index``; the final states
    wait in ``pending`` until ``commit`` scatters them back, once the whole pool step has
    succeeded (a later operator may still fail)."""

    def __init__(self, recs, capacity: int):
        self.h = {r: np.zeros((1, capacity, r.Hout), np.float32) for r in recs}
        self.c = {r: np.zeros((1, capacity, r.H), np.float32) for r in recs if r.kind == "lstm"}
        self.index = None
        self.pending: list = []       # (store, index, final state) of the steps so far

    def commit(self) -> None:
        for store, idx, value in self.pending:
            store[:, idx] = value
        self.pending = []

    def stores(self) -> Dict[str, np.ndarray]:
        out = {}
        for r, h in self.h.items():
            out[f"{r.label}/h"] = h
            if r in self.c:
                out[f"{r.label}/c"] = self.c[r]
        return out

    def advance(self, rec, x: np.ndarray, v: list):
        idx = self.index
        h = self.h[rec][:, idx]
        c = self.c[rec][:, idx] if rec in self.c else None
        y, state = rec.model.run(x, h if c is None else (h, c))
        h, c = (state, None) if c is None else state
        self.pending.append((self.h[rec], idx, h))
        if c is not None:
            self.pending.append((self.c[rec], idx, c))
        return y, h, c


class ElidedPlan:
    """See the module docstring. ``step(v)`` runs the kept outputs' steps on table ``v``."""

    def __init__(self, sess, pairs: Dict[str, str], fixed: set):
        plan = sess.plan
        self.sess, self.plan = sess, plan
        slots = plan.slots
        self.recs = [r for r in sess.loaded.recurrent
                     if any(r.node is n for n in plan.nodes)]
        self.ok = (len(self.recs) == len(sess.loaded.recurrent) and self.recs and all(
            r.lens == NONE and r.h0 != NONE and (r.kind != "lstm" or r.c0 != NONE)
            and is_one_way(r.model.layers) for r in self.recs))
        if not self.ok:
            return
        index = {n: k for k, n in enumerate(plan.output_names)}
        self.state_in = [slots[i] for i in pairs.values()]
        self.state_out = [plan.output_slots[index[o]] for o in pairs]
        kept = [plan.output_slots[k] for k, n in enumerate(plan.output_names) if n not in pairs]
        rec_step = {k: r for k, step in enumerate(plan.steps) for r in self.recs
                    if getattr(step, "__self__", None) is r}
        fixed_slots = {slots[n] for n in fixed}

        def reads(k):   # in the fast path a recurrent node reads only X
            r = rec_step.get(k)
            return [r.x] if r is not None else plan.io[k][0]

        self.run_steps = _live(plan.io, set(kept), reads=reads)
        finals = {r.yh for r in self.recs} | {r.yc for r in self.recs if r.kind == "lstm"}
        self.pack_steps = _live(plan.io, set(self.state_out), skip=lambda k: k in rec_step)
        inits = [r.h0 for r in self.recs] + [r.c0 for r in self.recs if r.kind == "lstm"]
        self.unpack_steps = _live(plan.io, set(inits), skip=lambda k: k in rec_step)
        run_reads = _sources(plan.io, self.run_steps, plan, set(), reads)
        self.ok = (not run_reads.intersection(self.state_in)
                   and _sources(plan.io, self.pack_steps, plan, finals) <= fixed_slots
                   and _sources(plan.io, self.unpack_steps, plan, set(self.state_in))
                   <= fixed_slots
                   and all(k in self.run_steps for k in rec_step))
        self.want = {r for r in self.recs if {r.yh, r.yc} & {
            i for k in self.run_steps for i in plan.io[k][0]}}
        self.run = [plan.steps[k] for k in self.run_steps]
        self.rec_at = {j: rec_step[k] for j, k in enumerate(self.run_steps) if k in rec_step}

    # -- the numerical check ---------------------------------------------------------------
    def verify(self, merged: dict, zero: Dict[str, np.ndarray]) -> bool:
        """On the first step's feeds: pack(final) fed back reaches the nodes unchanged."""
        sess, plan = self.sess, self.plan
        names = list(zero)
        rng = np.random.default_rng(0)
        rand = {n: rng.standard_normal(a.shape).astype(a.dtype) for n, a in zero.items()}
        v1 = sess.new_table({**merged, **rand})
        plan.execute(v1)
        v2 = sess.new_table({**merged, **{n: v1[s] for n, s in zip(names, self.state_out)}})
        plan.execute(v2)
        v0 = sess.new_table({**merged, **zero})
        plan.execute(v0)
        for r in self.recs:
            pairs = [(r.h0, r.yh)] + ([(r.c0, r.yc)] if r.kind == "lstm" else [])
            for init, final in pairs:
                if not np.array_equal(np.asarray(v2[init]), np.asarray(v1[final])):
                    return False
                if np.any(np.asarray(v0[init])):
                    return False
        return True

    # -- state -----------------------------------------------------------------------------
    def pack(self, carrier: Carrier, fixed: dict) -> Optional[List[np.ndarray]]:
        """The state outputs for the carrier's current recurrent states."""
        plan = self.plan
        v = plan.template.copy()
        for name, value in fixed.items():
            v[plan.slots[name]] = value
        for r in self.recs:
            stream = carrier.streams.get(r)
            if stream is None:
                return None
            state = stream.state
            h, c = state if r.kind == "lstm" else (state, None)
            if r.layout:
                h = np.swapaxes(h, 0, 1)
                c = None if c is None else np.swapaxes(c, 0, 1)
            v[r.yh], v[r.yc] = h, c
        for k in self.pack_steps:
            plan.steps[k](v)
        return [np.array(v[s]) for s in self.state_out]

    def unpack(self, carrier: Carrier, values: List[np.ndarray], fixed: dict) -> None:
        """Set the carrier's recurrent states from state input values."""
        plan = self.plan
        v = plan.template.copy()
        for name, value in fixed.items():
            v[plan.slots[name]] = value
        for slot, value in zip(self.state_in, values):
            v[slot] = value
        for k in self.unpack_steps:
            plan.steps[k](v)
        new = {}           # every node's state set before any replaces the carrier's
        for r in self.recs:
            h0 = np.asarray(v[r.h0])
            N = h0.shape[0] if r.layout else h0.shape[1]
            stream = new[r] = r.model.stream(batch=N)
            stream.state = r._state(v, N)
        carrier.streams.update(new)

    def lean_run(self, carrier: Carrier) -> list:
        """``run`` with each recurrent step whose final state nobody reads replaced by
        ``lean_recurrent`` on ``carrier`` (one step per entry of ``run_steps``)."""
        steps = list(self.run)
        for j, rec in self.rec_at.items():
            if not rec.layout and (carrier.want is None or rec not in carrier.want):
                steps[j] = lean_recurrent(rec, carrier)
        return steps

    def lean_steps(self, carrier: Carrier) -> list:
        """``lean_run`` with chains of views merged into their reader (``absorb_views``);
        the list may be shorter than ``run``. -> (steps, their indices in the plan, for
        errors)."""
        kept = set(self.plan.output_slots)
        merged, at = absorb_views(self.lean_run(carrier),
                                  [self.plan.io[k] for k in self.run_steps], kept)
        return merged, [self.run_steps[j] for j in at]

    def step(self, v: list, context: dict, lean: Optional[tuple] = None) -> None:
        """Run the kept outputs' steps (or ``lean``: ``lean_steps``' steps and their indices
        in the plan); ``context`` maps each recurrent node to a Carrier."""
        v[CONTEXT] = context
        steps, indices = lean or (self.run, self.run_steps)
        self.plan.execute(v, steps, indices)


def lean_recurrent(rec, carrier: Carrier):
    """The recurrent step (layout 0) of a stream whose node keeps its state in ``carrier``
    and whose final state nobody reads: one float32 timestep at the stream's batch goes
    straight to ``Stream.step`` (which checks the rest); anything else takes ``rec.step``.
    This skips the general step's checks, dispatch and state copies (2.3 -> 1.3 us per node
    per step on model (a))."""
    streams, x_slot, y_slot, I, Hout = carrier.streams, rec.x, rec.y, rec.I, rec.Hout
    f32 = np.dtype(np.float32)

    def step(v):
        x = v[x_slot]
        stream = streams.get(rec)
        if (stream is not None and x.__class__ is np.ndarray and x.dtype is f32
                and x.shape == (1, stream.batch, I)):
            y = stream.step(x[0])
            v[y_slot] = y.reshape(1, 1, stream.batch, Hout)    # Y [T=1, D=1, N, H]
        else:
            rec.step(v)
    step.lean = (rec, carrier)           # absorb_views feeds it its input chain's source
    return step


def absorb_views(steps: list, io: list, kept: set) -> tuple:
    """Merge each chain of view steps (``step.view_of``: Squeeze/Transpose/Reshape... of one
    data slot, graph_views) into the one step that reads its end: the merged step makes the
    chain's output with one ``reshape`` when, for the source's shape, the chain was seen to
    give a C-contiguous view of the whole C-contiguous source (then it *is* that reshape:
    a view op's result depends on its input's shape only); otherwise it runs the chain.
    Only chains whose intermediate values nothing else reads (nor the outputs in ``kept``)
    are merged. -> (steps, index in ``steps`` of each returned step)."""
    readers = {}
    for j, (ins, _) in enumerate(io):
        for i in set(ins):
            readers.setdefault(i, []).append(j)

    def single_reader(j):
        out = io[j][1][0]
        users = readers.get(out, [])
        return users[0] if len(users) == 1 and out not in kept and users[0] > j else None

    chain_of = {}          # view step j -> the list of view steps ending at j
    for j, step in enumerate(steps):
        if getattr(step, "view_of", None) is None or single_reader(j) is None:
            continue
        src_step = next((p for p in chain_of if io[p][1][0] == step.view_of), None)
        chain_of[j] = (chain_of.pop(src_step) if src_step is not None
                       and single_reader(src_step) == j else []) + [j]
    absorbed = {j for chain in chain_of.values() for j in chain}
    out, at = [], []
    for j, step in enumerate(steps):
        if j in absorbed:
            continue
        for end, chain in chain_of.items():
            if single_reader(end) == j:
                step = _merged(step, [steps[k] for k in chain], steps[chain[0]].view_of,
                               io[end][1][0])
        out.append(step)
        at.append(j)
    return out, at


def _merged(reader, chain: list, src: int, dst: int):
    memo = [None, None]            # source shape -> chain output shape, once seen

    def run_chain(v, x):
        for f in chain:
            f(v)
        y = v[dst]
        if (isinstance(x, np.ndarray) and isinstance(y, np.ndarray)
                and x.flags.c_contiguous and y.flags.c_contiguous and x.size == y.size
                and x.dtype == y.dtype and x.size
                and x.__array_interface__["data"][0] == y.__array_interface__["data"][0]):
            memo[:] = x.shape, y.shape

    def step(v):
        x = v[src]
        if x.__class__ is np.ndarray and x.shape == memo[0] and x.flags.c_contiguous:
            v[dst] = x.reshape(memo[1])
        else:
            run_chain(v, x)
        reader(v)

    lean = getattr(reader, "lean", None)
    if lean is None:
        return step
    rec, carrier = lean
    streams, y_slot, Hout, f32 = carrier.streams, rec.y, rec.Hout, np.dtype(np.float32)

    def step_recurrent(v):
        # a lean recurrent step fed straight from the chain's source: one reshape to (N, I)
        x = v[src]
        stream = streams.get(rec)
        if (stream is not None and x.__class__ is np.ndarray and x.shape == memo[0]
                and x.dtype is f32 and x.flags.c_contiguous
                and memo[1] == (1, stream.batch, rec.I)):
            y = stream.step(x.reshape(stream.batch, rec.I))
            v[y_slot] = y.reshape(1, 1, stream.batch, Hout)
        else:
            step(v)
    return step_recurrent

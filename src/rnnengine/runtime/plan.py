"""A whole ONNX graph planned once into a flat list of steps over a value table.

``Plan(graph, ...)`` does all the work that does not depend on the feeds, at load:

* every name gets an int slot in a value table (a list); a run copies the table's template
  (constants already in place), writes the feeds, calls each step, reads the output slots;
* nodes are ordered topologically (a cycle, or a name that nothing defines, is a
  ``ModelError``);
* nodes whose inputs are all constant are folded (``onnx.fold.fold_node``: the native operator);
* each remaining node becomes a step: a closure over its decoded attributes and its slots.
  Recurrent nodes, ``If`` and ``Loop`` get their own steps (``steps``); the operators
  of ``rnnengine.ops`` run natively; the rest are grouped into as few ONNX Runtime sessions
  as possible (``ort_bridge``).

Subgraphs (If branches, Loop bodies) are Plans of their own (their own names and steps) that
share the main graph's value table: their slots are appended to it, and an outer name they
read is the outer slot itself, so running a branch copies nothing in (``outer_reads`` lists
those slots for the analyses of the step list).

Slot 0 of every table holds the run's context (None, or the per-stream recurrent state of
a session stream: ``steps.RecurrentStep``); slot 1 is always None (an absent optional
input); slot 2 swallows unused outputs.
"""
from __future__ import annotations

import heapq
from typing import Callable, Dict, List, Optional

import numpy as np
import onnx

from ..ops import NATIVE_OPS, compiled_conv, compiled_head, fuse_chain, native_op
from ..errors import ModelError
from ..onnx.fold import (Folder, NotConstant, Scope, fold_node, foldable, model_opset,
                         node_label, read_tensor, subgraph_free_names, subgraphs)
from .steps import (CONTROL, RECURRENT, bind, if_step, lookup_step, loop_step,
                    RUN_BUDGET, RecurrentStep)
from .shapes import cluster_step, shape_clusters
from .views import view_op
from .ort_bridge import OrtGroup

CONTEXT, NONE, TRASH = 0, 1, 2

# Not folded even with constant inputs: their value is meant to change from run to run.
_NONDETERMINISTIC = {"RandomNormal", "RandomUniform", "RandomNormalLike", "RandomUniformLike",
                     "Multinomial", "Bernoulli"}


class NodeFailed(ValueError):
    """A step raised at run time; the message names the node (a ValueError, as ORT's)."""


class Loaded:
    """What every Plan of one model shares: the ModelProto, opset, folder, options."""

    def __init__(self, model: onnx.ModelProto, base_dir: Optional[str], where: str,
                 precision: str, model_factory: Callable):
        self.model = model
        self.where = where
        self.precision = precision
        self.model_factory = model_factory      # layers, batch_first -> rnnengine.Model
        self.base_dir = base_dir
        self.opset = model_opset(model)
        self.folder = Folder(base_dir, self.opset)
        self.recurrent: List[RecurrentStep] = []   # every recurrent node, all subgraphs
        self.ort_groups: List[OrtGroup] = []
        self.plans: List["Plan"] = []


class Plan:
    """One graph (main graph or subgraph) planned into steps. See the module docstring."""

    def __init__(self, graph: onnx.GraphProto, scope: Scope, loaded: Loaded,
                 parent: Optional["Plan"] = None):
        self.graph = graph
        self.scope = scope
        self.loaded = loaded
        self.parent = parent
        self.path = "::".join(scope.path) or "main graph"
        self.slots: Dict[str, int] = {}
        # one table for the whole model: a subgraph appends its slots to the main graph's
        self.template: list = [None, None, None] if parent is None else parent.template
        self.consts: Dict[str, np.ndarray] = {}
        self.outer_reads: List[int] = []       # enclosing plans' slots this subgraph reads
        self.steps: List[Callable] = []
        self.labels: List[str] = []            # node label of each step, for errors
        self.io: List[tuple] = []              # (input slots, output slots) of each step
        # slots holding values reused across runs (memoised shapes), for the whole table
        self.shared: set = set() if parent is None else parent.shared
        self.kinds: Dict[str, str] = {}        # node label -> "native" | "ort" | ... (info)
        loaded.plans.append(self)

        self.input_names = [i.name for i in graph.input if i.name not in scope.initializers]
        self.input_slots = [self._new(n) for n in self.input_names]
        for t in graph.initializer:
            if t.name in scope.initializers:
                self._constant(t.name, read_tensor(t, loaded.base_dir))
            else:   # an overridable default: in the table, but not a constant to fold
                self.template[self.slots[t.name]] = read_tensor(t, loaded.base_dir)
        if len(graph.sparse_initializer):
            raise ModelError(f"{loaded.where}: {self.path}: sparse initializers are not "
                             "supported")
        order = self._toposort()
        for node in order:
            for out in node.output:
                if out and out not in self.slots:
                    self._new(out)
        self.nodes = [node for node in order if not self._fold(node)]   # in run order
        self._build(self.nodes)
        self.output_names = [o.name for o in graph.output]
        self.output_slots = [self.resolve(n, "graph output") for n in self.output_names]

    # -- names and slots -------------------------------------------------------------------
    def _new(self, name: str) -> int:
        if name in self.slots:
            raise ModelError(f"{self.loaded.where}: {self.path}: name {name!r} is defined "
                             "twice (graph inputs, initializers and node outputs must be "
                             "unique)")
        self.slots[name] = len(self.template)
        self.template.append(None)
        return self.slots[name]

    def _constant(self, name: str, value: np.ndarray) -> None:
        slot = self.slots.get(name)
        if slot is None:
            slot = self._new(name)
        self.template[slot] = value
        self.consts[name] = value

    def const(self, name: str) -> Optional[np.ndarray]:
        """The folded value of ``name`` as seen from here, or None if it is not constant."""
        plan = self
        while plan is not None:
            if name in plan.slots:
                return plan.consts.get(name)
            plan = plan.parent
        return None

    def resolve(self, name: str, user: str) -> int:
        """The slot of ``name`` (NONE for ""), looked up in the enclosing plans too."""
        if not name:
            return NONE
        if name in self.slots:
            return self.slots[name]
        if self.parent is None:
            raise ModelError(f"{self.loaded.where}: {user} reads {name!r}, which no node, "
                             "initializer or graph input defines (a dangling name)")
        outer = self.slots[name] = self.parent.resolve(name, user)
        self.outer_reads.append(outer)
        value = self.parent.const(name)
        if value is not None:
            self.consts[name] = value
        return outer

    # -- order -------------------------------------------------------------------------------
    def _toposort(self) -> list:
        nodes = list(self.scope.nodes)
        producer = {}
        for k, node in enumerate(nodes):
            for out in node.output:
                if out:
                    if out in producer or out in self.slots:
                        raise ModelError(f"{self.loaded.where}: {self.path}: name {out!r} is "
                                         "produced twice")
                    producer[out] = k
        deps = [set() for _ in nodes]
        users = [[] for _ in nodes]
        for k, node in enumerate(nodes):
            for name in list(node.input) + sorted(subgraph_free_names(node)):
                if not name or name in self.slots:
                    continue
                if name in producer:
                    if producer[name] not in deps[k]:
                        deps[k].add(producer[name])
                        users[producer[name]].append(k)
                else:
                    self._check_outer(name, node)
        ready = [k for k in range(len(nodes)) if not deps[k]]
        heapq.heapify(ready)
        order = []
        while ready:
            k = heapq.heappop(ready)
            order.append(nodes[k])
            for u in users[k]:
                deps[u].discard(k)
                if not deps[u]:
                    heapq.heappush(ready, u)
        if len(order) != len(nodes):
            stuck = [node_label(n) for k, n in enumerate(nodes) if deps[k]]
            raise ModelError(f"{self.loaded.where}: {self.path}: the graph has a cycle; "
                             f"these nodes wait on each other: {', '.join(stuck[:10])}")
        return order

    def _check_outer(self, name: str, node) -> None:
        plan = self.parent
        while plan is not None:
            if name in plan.slots:   # parents give every name a slot before their subgraphs
                return
            plan = plan.parent
        raise ModelError(f"{self.loaded.where}: node {node_label(node)!r} ({node.op_type}) "
                         f"reads {name!r}, which no node, initializer or graph input "
                         "defines (a dangling name)")

    # -- folding ---------------------------------------------------------------------------
    def _fold(self, node: onnx.NodeProto) -> bool:
        """Evaluate ``node`` now if all its inputs are constants; True if it was."""
        if (node.domain not in ("", "ai.onnx") or node.op_type in _NONDETERMINISTIC
                or node.op_type in RECURRENT or any(True for _ in subgraphs(node))):
            return False
        if not foldable(node):
            return False
        inputs = []
        for name in node.input:
            value = self.const(name) if name else None
            if name and value is None:
                return False
            inputs.append(value)
        label = node_label(node)
        try:
            outs = fold_node(node, inputs, self.loaded.opset, self.loaded.base_dir)
        except NotConstant:    # attributes the operator refuses: reported where it runs
            return False
        except ModelError as e:
            raise ModelError(f"{self.loaded.where}: node {label!r}: {e}") from None
        except Exception as e:   # bad shapes/attributes in a constant chain
            raise ModelError(f"{self.loaded.where}: cannot fold {node.op_type} node "
                             f"{label!r}: {type(e).__name__}: {e}") from None
        for name, value in zip(node.output, outs):
            if name:
                self._constant(name, value)
        return True

    # -- steps -----------------------------------------------------------------------------
    def _kind(self, node) -> str:
        """Where ``node`` runs: on the kernels, natively or through ONNX Runtime."""
        if node.domain in ("", "ai.onnx"):
            if node.op_type in RECURRENT:
                return "recurrent"
            if node.op_type in CONTROL:
                return node.op_type.lower()
            if node.op_type in NATIVE_OPS:
                return "native"
        return "ort"

    def _build(self, live: list) -> None:
        kinds = [self._kind(n) for n in live]
        clusters = shape_clusters(live, kinds, lambda n: self.const(n) is not None)
        at = {id(c["at"]): c for c in clusters}
        clustered = {id(n) for c in clusters for n in c["nodes"]}
        fused = set()                      # ids of nodes folded into a fused head
        for unit in self._units(live, kinds):
            if isinstance(unit, list):
                self._add_ort(unit)
            elif id(unit) in at:
                self._add_cluster(at[id(unit)])
            elif id(unit) in clustered or id(unit) in fused:
                continue
            else:
                chain = self._head_chain(unit)
                conv = None if chain else self._conv_chain(unit)
                if chain:
                    fused.update(id(n) for n in chain[1:])
                    self._add_fused(chain)
                elif conv:
                    fused.update(id(n) for n in conv[0][1:])
                    self._add_compiled(*conv)
                else:
                    self._append(*self._make_node(unit, self._kind(unit)))

    def _add_cluster(self, cluster: dict) -> None:
        made = [self._make_node(n, "native") for n in cluster["nodes"]]
        sources = [self.resolve(n, "shape computation") for n in cluster["sources"]]
        outs = [o for m in made for o in m[3] if o != TRASH]
        self.shared.update(outs)          # memoised: the same arrays come back every run
        label = ("shapes of " + ", ".join(cluster["sources"]) + ": "
                 + ", ".join(m[1] for m in made))
        self._append(cluster_step([m[0] for m in made], sources, outs), label,
                     sources + [i for m in made for i in m[2]], outs)

    def _head_chain(self, node) -> Optional[list]:
        """MatMul/Gemm -> (Add of a constant) -> (activation), each intermediate read only
        by the next node: one fused call instead of a Python round trip per operator."""
        if node.op_type not in ("MatMul", "Gemm") or self._kind(node) != "native":
            return None
        chain = [node]
        while len(chain) < 3:
            out = chain[-1].output[0] if len(chain[-1].output) == 1 else ""
            users = self.scope.consumers.get(out, []) if out else []
            if not out or out in self.scope.outputs or len(users) != 1:
                break
            nxt = users[0]
            if self._kind(nxt) != "native" or nxt.op_type in ("MatMul", "Gemm"):
                break
            if nxt.op_type == "Add":
                if len(chain) > 1 or any(self.const(i) is None for i in nxt.input if i != out):
                    break
            chain.append(nxt)
            if fuse_chain(chain, self.loaded.opset) is None:
                chain.pop()
                break
        return chain if len(chain) > 1 else None

    def _conv_chain(self, node) -> Optional[tuple]:
        """(nodes, fn): a 1-D or 2-D Conv with constant weights, and the Relu that alone reads it,
        as one C call (``ops.compiled_conv``); None when it is not such a Conv."""
        if node.op_type != "Conv" or self._kind(node) != "native":
            return None
        out = node.output[0] if len(node.output) == 1 else ""
        users = self.scope.consumers.get(out, []) if out else []
        if (out and out not in self.scope.outputs and len(users) == 1
                and users[0].op_type == "Relu" and self._kind(users[0]) == "native"):
            fn = compiled_conv([node, users[0]], self.const)
            if fn is not None:
                return [node, users[0]], fn
        fn = compiled_conv([node], self.const)
        return None if fn is None else ([node], fn)

    def _add_fused(self, chain: list) -> None:
        self._add_compiled(chain, compiled_head(chain, self.loaded.opset, self.const)
                           or fuse_chain(chain, self.loaded.opset))

    def _add_compiled(self, chain: list, fn) -> None:
        label = " + ".join(node_label(n) for n in chain)
        for n in chain:
            self.kinds[node_label(n)] = "native"
        ins = [self.resolve(n, f"node {label!r}") for n in fn.inputs]
        self._append(bind(fn, ins, [self.slots[fn.outputs[0]]]), f"fused {label!r}", ins,
                     [self.slots[fn.outputs[0]]])

    def _units(self, live: list, kinds: list) -> list:
        """Nodes and ORT groups (lists of nodes) in a valid order. ORT nodes join a group
        when joined by an edge and separated from its start by the same number of other
        steps on every path (``level``), so a group never needs its own output back."""
        where = {}
        for k, node in enumerate(live):
            for out in node.output:
                if out:
                    where[out] = k
        preds = [sorted({where[n] for n in list(node.input) + sorted(subgraph_free_names(node))
                         if n in where}) for node in live]
        level = [0] * len(live)
        group = list(range(len(live)))

        def find(k):
            while group[k] != k:
                group[k] = group[group[k]]
                k = group[k]
            return k

        for k in range(len(live)):
            level[k] = max([level[p] + (kinds[p] != "ort") for p in preds[k]], default=0)
            if kinds[k] == "ort":
                for p in preds[k]:
                    if kinds[p] == "ort" and level[p] == level[k]:
                        group[find(p)] = find(k)
        members: Dict[int, list] = {}
        for k in range(len(live)):
            if kinds[k] == "ort":
                members.setdefault(find(k), []).append(k)
        unit_of = [find(k) if kinds[k] == "ort" else k for k in range(len(live))]
        unit_deps: Dict[int, set] = {}
        for k in range(len(live)):
            unit_deps.setdefault(unit_of[k], set()).update(
                unit_of[p] for p in preds[k] if unit_of[p] != unit_of[k])
        users: Dict[int, list] = {}
        for u, ds in unit_deps.items():
            for d in ds:
                users.setdefault(d, []).append(u)
        ready = [u for u, ds in unit_deps.items() if not ds]
        heapq.heapify(ready)
        out = []
        while ready:
            u = heapq.heappop(ready)
            out.append([live[k] for k in members[u]] if u in members else live[u])
            for w in users.get(u, []):
                unit_deps[w].discard(u)
                if not unit_deps[w]:
                    heapq.heappush(ready, w)
        return out

    def _make_node(self, node, kind: str) -> tuple:
        """(step, label, input slots, output slots) for one node."""
        label = node_label(node)
        ins = [self.resolve(n, f"node {label!r}") for n in node.input]
        outs = [self.slots[n] if n else TRASH for n in node.output]
        self.kinds[label] = kind
        view = view_op(node, self.const, self.loaded.opset) if kind == "native" else None
        if view is not None:
            fn, data = view
            src = self.resolve(data, f"node {label!r}")
            step = bind(fn, [src], outs)
            step.view_of = src          # stream_plan.absorb_views merges view chains
            step.native_view = fn       # the executor maps the data it moves (executor.py)
            step.node = node
        elif kind == "native":
            try:
                fn = native_op(node, self.loaded.opset)
            except ModelError as e:
                raise ModelError(f"{self.loaded.where}: node {label!r}: {e}") from None
            step = bind(fn, ins, outs)
            table = self.const(node.input[0]) if node.op_type == "Gather" else None
            if table is not None and len(ins) == 2 and not any(
                    a.name == "axis" and a.i != 0 for a in node.attribute):
                step = lookup_step(table, ins[1], outs[0], step)
            step.native, step.node = fn, node   # the operator, for the executor (executor.py)
        elif kind == "recurrent":
            rec = RecurrentStep(node, self.scope, self.loaded, ins, outs)
            self.loaded.recurrent.append(rec)
            step = rec.step
        else:
            for name in sorted(subgraph_free_names(node)):
                self.resolve(name, f"node {label!r}")
            subs = {label_: Plan(g, Scope(g, self.scope, self.scope.path + (
                f"{label}::{label_}",)), self.loaded, self) for label_, g in subgraphs(node)}
            if kind == "if":   # a memoised shape or a constant picks the same branch again
                stable = bool(ins) and (ins[0] in self.shared or self.const(node.input[0])
                                        is not None)
                step = if_step(node, ins, outs, subs, self.loaded.where, stable)
            else:
                step = loop_step(node, ins, outs, subs, self.loaded.where)
            ins = ins + [outer for sub in subs.values() for outer in sub.outer_reads]
        return step, f"{node.op_type} node {label!r}", ins, outs

    def _add_ort(self, nodes: list) -> None:
        produced = {o for n in nodes for o in n.output if o}
        ids = {id(n) for n in nodes}
        needed, seen = [], set()
        for n in nodes:
            for name in list(n.input) + sorted(subgraph_free_names(n)):
                if name and name not in produced and name not in seen:
                    seen.add(name)
                    needed.append(name)
        consts = {name: self.const(name) for name in needed if self.const(name) is not None}
        feeds = [name for name in needed if name not in consts]
        outer_users = set(self.graph_output_names())
        outputs = [o for n in nodes for o in n.output if o and (
            o in outer_users or any(id(c) not in ids for c in self.scope.consumers.get(o, [])))]
        group = OrtGroup(nodes, feeds, outputs, consts, self.loaded.model, self.loaded.where)
        self.loaded.ort_groups.append(group)
        for n in nodes:
            self.kinds[node_label(n)] = "ort"
        ins = [self.resolve(n, group.label) for n in feeds]
        outs = [self.slots[n] for n in outputs]
        self._append(bind(group.run, ins, outs), group.label, ins, outs)

    def _append(self, step, label: str, ins: list, outs: list) -> None:
        self.steps.append(step)
        self.labels.append(label)
        self.io.append((list(ins), list(outs)))

    def graph_output_names(self) -> list:
        return [o.name for o in self.graph.output]

    # -- running ---------------------------------------------------------------------------
    def execute(self, v: list, steps: Optional[list] = None,
                indices: Optional[List[int]] = None) -> None:
        """Run every step (or ``steps``, which are ``self.steps[i] for i in indices``) on
        the value table ``v`` (a copy of ``template`` with the feeds written); errors name
        the node."""
        step = None
        if steps is None:
            steps, indices = self.steps, None
        try:
            if self.parent is None:   # a run of the whole graph: its own Loop budget
                with RUN_BUDGET:
                    for step in steps:
                        step(v)
            else:
                for step in steps:
                    step(v)
        except (NodeFailed, ModelError):
            raise
        except Exception as e:
            k = steps.index(step)
            label = self.labels[k if indices is None else indices[k]]
            raise NodeFailed(f"{label} failed: {type(e).__name__}: {e}") from e

    def run_sub(self, v: list, inputs: Optional[list] = None) -> list:
        """Run this subgraph plan in the table ``v`` it shares with the enclosing plans;
        ``inputs`` fill the subgraph's declared inputs (a Loop body's iteration number,
        condition, state). Returns its outputs."""
        if inputs:
            for slot, value in zip(self.input_slots, inputs):
                v[slot] = value
        self.execute(v)
        return [v[s] for s in self.output_slots]

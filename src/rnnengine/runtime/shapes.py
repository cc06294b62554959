"""Shape arithmetic evaluated once per input shape.

Exports with dynamic axes compute shapes at run time: ``Shape -> Gather -> Unsqueeze ->
Concat -> ConstantOfShape`` builds a zero initial state for the batch, Silero's
``Shape -> Gather -> Equal`` picks an If branch. Such a chain depends only on the *shapes* of
the tensors its Shape/Size nodes read (its sources), so its values are memoised on those
shapes: one dict lookup per run instead of a step per node.

A node is shape-derived when it is a native operator without subgraphs that is Shape/Size,
or reads only constants and shape-derived values. Its cluster is every shape-derived node
with the same set of sources, plus their shape-derived ancestors; the cluster runs where its
first node was, when every source exists.
"""
from __future__ import annotations

from typing import Callable, Dict, List

_SHAPE_READERS = ("Shape", "Size")
_MEMO_LIMIT = 64


def shape_clusters(live: list, kinds: list, is_const: Callable) -> List[dict]:
    """[{"nodes": [...] (run order), "sources": [tensor names], "at": node}] for clusters
    of two or more nodes."""
    derived: Dict[str, frozenset] = {}         # value name -> its sources
    node_sources = {}
    producer = {}
    for node, kind in zip(live, kinds):
        if kind != "native" or any(a.type in (5, 10) for a in node.attribute):  # GRAPH(S)
            continue
        names = [n for n in node.input if n]
        if node.op_type in _SHAPE_READERS and names:
            src = derived.get(names[0], frozenset([names[0]]))
        elif names and all(is_const(n) or n in derived for n in names):
            src = frozenset().union(*(derived.get(n, frozenset()) for n in names))
            if not src:
                continue
        else:
            continue
        node_sources[id(node)] = src
        for out in node.output:
            if out:
                derived[out] = src
                producer[out] = node
    groups: Dict[frozenset, list] = {}
    for node in live:
        if id(node) in node_sources:
            groups.setdefault(node_sources[id(node)], []).append(node)
    clusters = []
    order = {id(n): k for k, n in enumerate(live)}
    for sources, members in groups.items():
        if len(members) < 2:
            continue
        chosen = {id(n): n for n in members}
        todo = list(members)
        while todo:                              # shape-derived ancestors join the cluster
            node = todo.pop()
            for name in node.input:
                parent = producer.get(name)
                if parent is not None and id(parent) not in chosen:
                    chosen[id(parent)] = parent
                    todo.append(parent)
        nodes = sorted(chosen.values(), key=lambda n: order[id(n)])
        clusters.append({"nodes": nodes, "sources": sorted(sources), "at": members[0]})
    return clusters


def cluster_step(steps: List[Callable], sources: List[int], outs: List[int]) -> Callable:
    """One step for a cluster: its member ``steps`` run once per shape of the ``sources``
    slots; ``outs`` (every member output slot) are replayed from the memo afterwards."""
    memo = {}

    def step(v):
        key = tuple(v[s].shape for s in sources)
        values = memo.get(key)
        if values is None:
            for member in steps:
                member(v)
            if len(memo) >= _MEMO_LIMIT:
                memo.clear()
            memo[key] = [v[o] for o in outs]
            return
        for o, value in zip(outs, values):
            v[o] = value
    return step

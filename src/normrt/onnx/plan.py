"""Execution plan: the graph's nodes in topological order, and when each value dies.

    graph inputs + initializers ──► node₀ ──► node₁ ──► … ──► graph outputs
                                     │ release values whose last reader ran

Computed once at load. `release_after[i]` lists the values no later node (nor
a graph output) reads, so the executor drops them right after step i.
Raises ModelError on a cycle or on a node reading a value nothing provides.
"""
from dataclasses import dataclass, field

from ..errors import ModelError
from ._graph import node_label, node_reads


@dataclass
class Plan:
    nodes: list                 # NodeProto, topologically ordered
    reads: list                 # per node: every value name it reads (explicit + implicit)
    release_after: list         # per node: names to drop once it has run
    graph_inputs: list          # names the caller feeds
    graph_outputs: list
    constants: set = field(default_factory=set)


def topological_order(nodes, available, graph_outputs=()):
    """Nodes sorted so each runs after the producers of what it reads (stable: keeps
    the original order where it is already valid).

    `available` are names provided before any node (graph inputs, initializers,
    outer-scope values). Raises ModelError naming the node on a dangling input,
    and the nodes involved on a cycle.
    """
    producer = {}
    for i, node in enumerate(nodes):
        for o in node.output:
            if not o:
                continue
            if o in producer or o in available:
                other = ("node " + node_label(nodes[producer[o]])) if o in producer else "a graph input or initializer"
                raise ModelError(f"value {o!r} is produced by node {node_label(node)} and also by {other}")
            producer[o] = i
    reads = [node_reads(n) for n in nodes]
    deps = [set() for _ in nodes]
    users = [[] for _ in nodes]
    for i, names in enumerate(reads):
        for name in names:
            if name in available:
                continue
            j = producer.get(name)
            if j is None:
                raise ModelError(
                    f"node {node_label(nodes[i])} reads {name!r}, which no node, graph input or "
                    f"initializer provides (dangling input)")
            if j == i:
                raise ModelError(f"graph has a cycle: node {node_label(nodes[i])} reads its own output {name!r}")
            if j not in deps[i]:
                deps[i].add(j)
                users[j].append(i)
    for name in graph_outputs:
        if name not in available and name not in producer:
            raise ModelError(f"graph output {name!r} is produced by no node and is no graph input or initializer")
    # Kahn's algorithm with a min-heap on the original index: stable order.
    import heapq
    remaining = [len(d) for d in deps]
    ready = [i for i, r in enumerate(remaining) if r == 0]
    heapq.heapify(ready)
    order = []
    while ready:
        i = heapq.heappop(ready)
        order.append(i)
        for u in users[i]:
            remaining[u] -= 1
            if remaining[u] == 0:
                heapq.heappush(ready, u)
    if len(order) != len(nodes):
        stuck = [i for i, r in enumerate(remaining) if r > 0]
        cycle = _find_cycle(stuck, deps)
        names = " -> ".join(node_label(nodes[i]) for i in cycle)
        raise ModelError(f"graph has a cycle: {names}")
    return [nodes[i] for i in order], [reads[i] for i in order]


def _find_cycle(stuck, deps):
    """One cycle among the nodes Kahn's algorithm could not schedule."""
    stuck_set = set(stuck)
    start = stuck[0]
    path, seen = [start], {start: 0}
    node = start
    while True:
        nxt = next(d for d in sorted(deps[node]) if d in stuck_set)
        if nxt in seen:
            cyc = path[seen[nxt]:]
            return list(reversed(cyc)) + [cyc[-1]]
        seen[nxt] = len(path)
        path.append(nxt)
        node = nxt


def build_plan(graph):
    """The Plan of a (checked, optimized) GraphProto."""
    constants = {t.name for t in graph.initializer} | {t.values.name for t in graph.sparse_initializer}
    graph_inputs = [i.name for i in graph.input if i.name not in constants]
    graph_outputs = [o.name for o in graph.output]
    available = set(graph_inputs) | constants
    nodes, reads = topological_order(list(graph.node), available, graph_outputs)
    keep = set(graph_outputs) | constants
    last_use = {}
    for i, (node, names) in enumerate(zip(nodes, reads)):
        for name in names:
            last_use[name] = i
        for o in node.output:
            if o and o not in last_use:
                last_use[o] = i   # produced but never read: drop right away
    for name in graph_inputs:
        last_use.setdefault(name, -1)
    release_after = [[] for _ in nodes]
    for name, i in last_use.items():
        if name in keep or i < 0:
            continue
        release_after[i].append(name)
    return Plan(nodes, reads, release_after, graph_inputs, graph_outputs, constants)


OPAQUE = "opaque"


def overwritable_inputs(plan, aliasing):
    """Per node, the input positions whose memory the node may overwrite (write its
    output into), because nothing reads that memory after it.

    `aliasing[i]` says what node i's outputs may share memory with:
    () - nothing (fresh arrays), a tuple of input positions - views of those
    inputs (Reshape: (0,)), or OPAQUE - anything, including memory that
    outlives the run (a Constant's value, onnx.reference internals).

    Values sharing memory form a group (union-find over the views). A group is
    pinned - never overwritten - when it holds a graph input (the caller's
    array), an initializer, a graph output, an outer-scope value or an OPAQUE
    node's output. An input is overwritable at node i when its group is not
    pinned, its last reader (over the whole group) is node i, and node i reads
    the group through that one input position only.
    """
    parent = {}

    def find(v):
        root = v
        while parent.get(root, root) != root:
            root = parent[root]
        while parent.get(v, v) != root:      # path compression
            parent[v], v = root, parent[v]
        return root

    pinned = set()

    def union(a, b):
        ra, rb = find(a), find(b)
        if ra != rb:
            parent[ra] = rb
            if ra in pinned:
                pinned.add(rb)

    produced = set()
    for i, node in enumerate(plan.nodes):
        outs = [o for o in node.output if o]
        produced.update(outs)
        kind = aliasing[i]
        if kind == OPAQUE:
            for o in outs:
                pinned.add(find(o))
                for name in node.input:
                    if name:
                        union(name, o)
        else:
            for pos in kind:
                if pos < len(node.input) and node.input[pos]:
                    for o in outs:
                        union(node.input[pos], o)
    for name in list(plan.graph_inputs) + list(plan.graph_outputs) + list(plan.constants):
        pinned.add(find(name))
    for names in plan.reads:
        for name in names:
            if name not in produced:
                pinned.add(find(name))       # graph inputs, initializers, outer scope
    pinned = {find(r) for r in pinned}
    group_last = {}
    for i, names in enumerate(plan.reads):
        for name in names:
            r = find(name)
            group_last[r] = max(group_last.get(r, -1), i)
        for o in plan.nodes[i].output:
            if o:
                r = find(o)
                group_last[r] = max(group_last.get(r, -1), i)
    result = []
    for i, node in enumerate(plan.nodes):
        roots = [find(n) if n else None for n in node.input]
        # implicit (subgraph) reads of a group also count as reads by this node
        implicit = {find(n) for n in plan.reads[i]} - {r for r in roots if r is not None}
        ok = []
        for pos, r in enumerate(roots):
            if r is None or r in pinned or group_last.get(r) != i or r in implicit:
                continue
            if roots.count(r) != 1:
                continue
            ok.append(pos)
        result.append(tuple(ok))
    return result

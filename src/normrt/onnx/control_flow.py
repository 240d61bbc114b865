"""If and Loop on normrt's own executor: each branch (and Loop body) a nested Executor, its nodes
on the kernels and numpy ops like the main graph's.

Optimum's merged decoders (`decoder_model_merged.onnx`, what transformers.js and most ONNX LLM
and Whisper repositories on the hub ship) hold the whole model twice, in the two branches of
one If on `use_cache_branch`. onnx.reference ran the If, with every node of the branch taken in
its pure-Python implementations. A branch is a graph like any other, so it runs as one: an
Executor of the branch, whose inputs are the outer-scope names it reads, fed from the values of
the graph around it (the graph's constants as its own, never copied); its kernel, numpy and
reference nodes bound at load, as the main graph's are. The optimizer's passes rewrite the branches too
(optimize_branches.py), so their norms and attention are on the fused kernels.

A Loop runs its body the same way, once per iteration: the body's own inputs (the iteration
number, the condition, the loop-carried values) fed each time, the outer values as for a branch.
A Scan (opset 9 on) likewise: its body once per element of the scan axis, the scan inputs'
slices read as views (no copy), the scan outputs written into their stacked result as each step
gives them. (Scan-8, with its batch axis and sequence lengths, stays on onnx.reference.)
"""
import numpy as np
from onnx import helper

from ..errors import ModelError
from ._graph import free_names
from .initializers import stub


def branch_model(graph, outer_names, outer_constants, opsets):
    """A ModelProto of subgraph `graph` whose graph inputs are its own (a Loop body's) then the
    outer-scope names it reads, but `outer_constants` {name: array}, initializers of it (data-less
    stubs: the executor is handed the arrays); `opsets` {domain: version}: the model's."""
    g = helper.make_graph(list(graph.node), graph.name or "branch",
                          list(graph.input) + [helper.make_empty_tensor_value_info(n) for n in outer_names
                                               if n not in outer_constants],
                          list(graph.output),
                          list(graph.initializer) + [stub(n, v) for n, v in outer_constants.items()],
                          value_info=list(graph.value_info))
    g.sparse_initializer.extend(graph.sparse_initializer)
    return helper.make_model(g, opset_imports=[helper.make_opsetid(d, v) for d, v in opsets.items()])


def _subgraph_executor(graph, opsets, functions, constants):
    """(Executor of `graph` as branch_model makes it, the outer names fed to it on each run)."""
    from .executor import Executor         # (executor binds these classes: imported when bound)
    names = sorted(free_names(graph))
    # the graph's constants the subgraph reads are its constants too (the same arrays): its
    # weights packed once, its plans specialized on its inputs' shapes alone
    given = {n: constants[n] for n in names if constants and n in constants}
    outer = [n for n in names if n not in given]
    return Executor(branch_model(graph, names, given, opsets), given, functions=list(functions)), outer


def _fresh(outs, values):
    """outs, an output copied where it may share memory with a writeable one of `values` (the outer
    values fed to the subgraph, not the graph's constants, which are read-only: a subgraph may hand
    one back as it is, and nothing after the node may write into it)."""
    live = [v for v in values if isinstance(v, np.ndarray) and v.flags.writeable]
    if not live:
        return outs
    return [o.copy() if isinstance(o, np.ndarray) and any(np.may_share_memory(o, v) for v in live) else o
            for o in outs]


class IfNode:
    """An If whose branches run on nested Executors (`kind` "subgraph")."""

    kind = "subgraph"

    def __init__(self, node, opsets, functions=(), constants=None):
        self.node = node
        self.outputs = [o for o in node.output if o]
        self.out_positions = [i for i, o in enumerate(node.output) if o]
        self.branches = {}
        for attr in node.attribute:
            if attr.name in ("then_branch", "else_branch"):
                ex, outer = _subgraph_executor(attr.g, opsets, functions, constants)
                if len(ex.output_names) != len(node.output):
                    raise ModelError(f"If node {node.name!r}: its {attr.name} has {len(ex.output_names)} outputs, "
                                     f"the node {len(node.output)}")
                self.branches[attr.name == "then_branch"] = (ex, outer)
        if len(self.branches) != 2:
            raise ModelError(f"If node {node.name!r} needs then_branch and else_branch")

    def counts(self):
        """Both branches' nodes by kind (Executor.counts)."""
        out = {}
        for ex, _ in self.branches.values():
            for k, n in ex.counts().items():
                out[k] = out.get(k, 0) + n
        return out

    def __call__(self, args, values):
        cond = args[0]
        if np.size(cond) != 1:
            raise ValueError(f"If node {self.node.name!r}: the condition must hold one value, got shape "
                             f"{np.shape(cond)}")
        ex, outer = self.branches[bool(np.asarray(cond).reshape(-1)[0])]
        env = values or {}
        feeds = {n: env[n] for n in outer}
        outs = _fresh(ex.run(feeds), feeds.values())
        return [outs[i] for i in self.out_positions]


class LoopNode:
    """A Loop whose body runs on a nested Executor (`kind` "subgraph"), once per iteration.

    Loop(M, cond, v_initial...) with body(iteration, cond_in, v_in...) -> (cond_out, v_out...,
    scan outputs...): it runs while the iteration is below M (when given) and the condition holds
    (when given); its outputs are the final loop-carried values, then each scan output's values of
    every iteration stacked on a new first axis. Neither M nor cond given is an endless loop: it
    is refused. A loop of no iteration gives scan outputs of no row, shaped as one run of the body
    on the initial values would give them (empty float32 if that run fails). Carried values that
    are not tensors (sequences, optionals) go to onnx.reference (`fallback()` builds that node).
    """

    kind = "subgraph"

    def __init__(self, node, opsets, functions=(), constants=None, fallback=None):
        self.node = node
        self.out_positions = [i for i, o in enumerate(node.output) if o]
        body = next((a.g for a in node.attribute if a.name == "body"), None)
        if body is None:
            raise ModelError(f"Loop node {node.name!r} needs a body")
        self.body, self.outer = _subgraph_executor(body, opsets, functions, constants)
        self.inputs = [i.name for i in body.input]
        self.n_carried = len(node.input) - 2
        if len(self.inputs) != self.n_carried + 2 or len(body.output) < self.n_carried + 1 \
                or len(node.output) != len(body.output) - 1:
            raise ModelError(f"Loop node {node.name!r}: its body takes {len(self.inputs)} inputs and gives "
                             f"{len(body.output)} outputs for {len(node.input)} inputs and {len(node.output)} "
                             f"outputs (iteration, condition and {self.n_carried} carried values)")
        self.fallback = fallback
        self._reference = None

    def counts(self):
        return self.body.counts()

    def _no_rows(self, feeds, carried, n_scan):
        """The scan outputs of a loop of no iteration: no row, each row shaped as a run of the body
        on the initial values gives it."""
        feeds[self.inputs[0]] = np.array(0, np.int64)
        feeds[self.inputs[1]] = np.array(True)
        for name, v in zip(self.inputs[2:], carried):
            feeds[name] = v
        try:
            rows = self.body.run(feeds)[1 + self.n_carried:]
        except Exception:  # noqa: BLE001 - the body may not run on values it was never meant to get
            return [np.empty((0,), np.float32) for _ in range(n_scan)]
        return [np.empty((0,) + np.shape(r), np.asarray(r).dtype) for r in rows]

    def __call__(self, args, values):
        trips, cond = args[0], args[1]
        carried = list(args[2:])
        if trips is None and cond is None:
            raise ValueError(f"Loop node {self.node.name!r} has neither a trip count nor a condition: it never ends")
        if not all(isinstance(v, np.ndarray) for v in carried):
            if self._reference is None:
                self._reference = self.fallback()
            return self._reference(args, values)
        limit = None if trips is None else int(np.asarray(trips).reshape(-1)[0])
        go = True if cond is None else bool(np.asarray(cond).reshape(-1)[0])
        env = values or {}
        feeds = {n: env[n] for n in self.outer}
        scans, i = [], 0
        while go and (limit is None or i < limit):
            feeds[self.inputs[0]] = np.array(i, np.int64)
            feeds[self.inputs[1]] = np.array(go)
            for name, v in zip(self.inputs[2:], carried):
                feeds[name] = v
            outs = self.body.run(feeds)
            go = bool(np.asarray(outs[0]).reshape(-1)[0])
            carried = outs[1:1 + self.n_carried]
            scans.append(outs[1 + self.n_carried:])
            i += 1
        n_scan = len(self.node.output) - self.n_carried
        if n_scan and not scans:
            outs = carried + self._no_rows(feeds, carried, n_scan)
        else:
            outs = carried + [np.stack([s[k] for s in scans]) for k in range(n_scan)]
        outs = _fresh(outs, [feeds[n] for n in self.outer] + list(args))
        return [outs[i] for i in self.out_positions]


def _axes(attrs, name, count, ranks):
    """The `name` attribute (scan axes or directions) of `count` values, default 0; axes made
    non-negative for values of `ranks` (None: directions)."""
    values = list(attrs.get(name, [0] * count))
    if len(values) != count:
        raise ModelError(f"{name} holds {len(values)} values for {count}")
    if ranks is None:
        if any(v not in (0, 1) for v in values):
            raise ModelError(f"{name} must hold 0 (forward) or 1 (reverse), got {values}")
        return values
    out = []
    for v, r in zip(values, ranks):
        if not -r <= v < r:
            raise ModelError(f"{name}: axis {v} is out of range for rank {r}")
        out.append(v % r)
    return out


class ScanNode:
    """A Scan (opset 9 on) whose body runs on a nested Executor (`kind` "subgraph"), once per element.

    Scan(state..., scan inputs...) with body(state..., one slice of each scan input...) ->
    (state..., scan output elements...): the scan inputs are sliced along scan_input_axes
    (scan_input_directions 1: from the last slice), every one the same length; the outputs are
    the final states, then each scan output's elements stacked along scan_output_axes (direction
    1: in reverse order). A scan of no element gives the initial states and scan outputs of no
    element, each element shaped as a run of the body on zeros gives it (empty float32 if that
    run fails). Values that are not tensors go to onnx.reference (`fallback()` builds that node).
    """

    kind = "subgraph"

    def __init__(self, node, opsets, functions=(), constants=None, fallback=None):
        from ._graph import decode_attributes
        self.node = node
        self.out_positions = [i for i, o in enumerate(node.output) if o]
        attrs = decode_attributes(node)
        body = attrs.get("body")
        if body is None:
            raise ModelError(f"Scan node {node.name!r} needs a body")
        self.n_scan = attrs.get("num_scan_inputs")
        if not isinstance(self.n_scan, int) or not 0 < self.n_scan <= len(node.input):
            raise ModelError(f"Scan node {node.name!r}: num_scan_inputs must be 1..{len(node.input)}, "
                             f"got {self.n_scan!r}")
        self.n_state = len(node.input) - self.n_scan
        self.body, self.outer = _subgraph_executor(body, opsets, functions, constants)
        self.inputs = [i.name for i in body.input]
        self.n_out_scan = len(body.output) - self.n_state
        if len(self.inputs) != len(node.input) or self.n_out_scan < 0 or len(node.output) != len(body.output):
            raise ModelError(f"Scan node {node.name!r}: its body takes {len(self.inputs)} inputs and gives "
                             f"{len(body.output)} outputs for {len(node.input)} inputs ({self.n_state} states) "
                             f"and {len(node.output)} outputs")
        try:
            self.in_dirs = _axes(attrs, "scan_input_directions", self.n_scan, None)
            self.out_dirs = _axes(attrs, "scan_output_directions", self.n_out_scan, None)
        except ModelError as e:
            raise ModelError(f"Scan node {node.name!r}: {e}") from None
        self.attrs = attrs
        self.fallback = fallback
        self._reference = None

    def counts(self):
        return self.body.counts()

    def _refer(self, args, values):
        if self._reference is None:
            self._reference = self.fallback()
        return self._reference(args, values)

    def _no_elements(self, feeds, states, xs, in_axes):
        """The scan outputs of a scan of no element: each of no element along its axis, the
        element shaped as a run of the body on the states and slices of zeros gives it."""
        for k, v in enumerate(states):
            feeds[self.inputs[k]] = v
        for k, (x, a) in enumerate(zip(xs, in_axes)):
            feeds[self.inputs[self.n_state + k]] = np.zeros(x.shape[:a] + x.shape[a + 1:], x.dtype)
        try:
            elems = [np.asarray(e) for e in self.body.run(feeds)[self.n_state:]]
            axes = _axes(self.attrs, "scan_output_axes", self.n_out_scan, [e.ndim + 1 for e in elems])
        except Exception:  # noqa: BLE001 - the body may not run on values it was never meant to get
            return [np.empty((0,), np.float32) for _ in range(self.n_out_scan)]
        return [np.empty(e.shape[:a] + (0,) + e.shape[a:], e.dtype) for e, a in zip(elems, axes)]

    def __call__(self, args, values):
        # (a numpy scalar, as some numpy ops give a 0-d result, is a tensor too)
        args = [np.asarray(a) if isinstance(a, np.generic) else a for a in args]
        states, xs = list(args[:self.n_state]), args[self.n_state:]
        if not all(isinstance(v, np.ndarray) for v in states + list(xs)):
            return self._refer(args, values)
        name = self.node.name
        try:
            in_axes = _axes(self.attrs, "scan_input_axes", self.n_scan, [x.ndim for x in xs])
        except ModelError as e:
            raise ValueError(f"Scan node {name!r}: {e}") from None
        lengths = {x.shape[a] for x, a in zip(xs, in_axes)}
        if len(lengths) != 1:
            raise ValueError(f"Scan node {name!r}: the scan inputs' scan axes differ in length: "
                             f"{[x.shape[a] for x, a in zip(xs, in_axes)]}")
        steps = lengths.pop()
        env = values or {}
        feeds = {n: env[n] for n in self.outer}
        if steps == 0:
            outs = _fresh(states + self._no_elements(feeds, states, xs, in_axes), list(args))
            return [outs[i] for i in self.out_positions]
        stacked, out_axes = None, None
        for t in range(steps):
            for k, v in enumerate(states):
                feeds[self.inputs[k]] = v
            for k, (x, a, d) in enumerate(zip(xs, in_axes, self.in_dirs)):
                feeds[self.inputs[self.n_state + k]] = x[(slice(None),) * a + (steps - 1 - t if d else t,)]
            outs = self.body.run(feeds)
            states = outs[:self.n_state]
            elems = [np.asarray(e) for e in outs[self.n_state:]]
            if stacked is None:
                try:
                    out_axes = _axes(self.attrs, "scan_output_axes", self.n_out_scan, [e.ndim + 1 for e in elems])
                except ModelError as e:
                    raise ValueError(f"Scan node {name!r}: {e}") from None
                stacked = [np.empty(e.shape[:a] + (steps,) + e.shape[a:], e.dtype) for e, a in zip(elems, out_axes)]
            for k, (e, a, d) in enumerate(zip(elems, out_axes, self.out_dirs)):
                # (a basic index, not np.moveaxis: that was a third of a small step's time)
                target = stacked[k][(slice(None),) * a + (steps - 1 - t if d else t,)]
                if target.shape != e.shape:
                    raise ValueError(f"Scan node {name!r}: scan output {k} has shape {e.shape} at step {t}, "
                                     f"{target.shape} before")
                target[...] = e
        outs = _fresh(states + stacked, [feeds[n] for n in self.outer] + list(args))
        return [outs[i] for i in self.out_positions]

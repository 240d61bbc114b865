"""A plan compiled into one Python function: the cheapest loop CPython can run.

The executor's steps become straight-line code, each value a local variable
(no dict of values, no per-node bookkeeping), released with `del` right after
its last reader:

    def run(feeds):
        v0 = feeds['x']
        v1, = s0([v0, k0], None)      # generic: the bound node's (args, values) call
        del v0
        v2 = _add(v1, k1, out=b2)     # specialized: a fast step (fast_steps.py)
        ...
        return (v9,)

Two kinds are built:
* the generic plan (`compile_generic`), once at load: every node through its
  bound callable, valid for any inputs;
* a specialized plan per input shapes (`compile_specialized`), from a traced
  run of those shapes: values that depend only on the input shapes (Shape ->
  Gather -> Concat feeding a Reshape...) are computed once and become
  constants, common ops run as direct numpy/kernel calls with their arguments
  checked at build time, and small results are written into buffers
  preallocated once (`out=`) and reused by every run.

An exception raised inside the code is mapped back to its node: the source
line -> step table (`CompiledPlan.node_at`).
"""
import numpy as np
import onnx


FILENAME = "<normrt plan>"


class CompiledPlan:
    """A compiled run function and the table from its source lines to step indices."""

    def __init__(self, fn, line_steps, source, stats=None, buffers=0):
        self.fn = fn
        self.line_steps = line_steps
        self.source = source
        self.stats = stats or {}
        self.buffer_bytes = buffers     # bytes preallocated for its outputs

    def node_at(self, tb):
        """The step index whose code raised, from a traceback (or None)."""
        step = None
        while tb is not None:
            if tb.tb_frame.f_code.co_filename == FILENAME:
                step = self.line_steps.get(tb.tb_lineno, step)
            tb = tb.tb_next
        return step


class _Source:
    """Generated lines, the namespace they read and the line -> step table."""

    def __init__(self, constants):
        self.lines = ["def run(feeds):"]
        self.ns = {"np": np}
        self.line_steps = {}
        self.var = {}
        self.const_ref = {}
        self.constants = constants
        self._n = 0
        self.workspace_size = 0
        self._scratch = []      # (name, slot, shape, dtype) of the views bound at compile()

    def workspace(self, size):
        """The name of the plan's one kernel workspace, grown to at least `size` floats: steps
        run one after another and a run holds the plan's lock, so its GEMMs and convs share it."""
        self.workspace_size = max(self.workspace_size, int(size))
        return "_ws"

    def scratch(self, slot, shape, dtype):
        """The name of a `shape` x `dtype` array on the plan's scratch `slot` (one allocation per
        slot, as big as its largest use): for data a step makes and consumes itself (half-precision
        steps' float32 operands), so steps, which run one after another under the plan's lock,
        share it. Distinct slots never overlap."""
        self._n += 1
        name = f"_scratch{self._n}"
        self._scratch.append((name, slot, tuple(int(d) for d in shape), np.dtype(dtype)))
        return name

    def _bind_scratch(self):
        sizes = {}
        for _, slot, shape, dtype in self._scratch:
            sizes[slot] = max(sizes.get(slot, 0), int(np.prod(shape, dtype=np.int64)) * dtype.itemsize)
        # 64-byte aligned (a cache line; the kernels' vector loads)
        raw = {slot: np.empty(n + 64, np.uint8) for slot, n in sizes.items()}
        for name, slot, shape, dtype in self._scratch:
            buf = raw[slot]
            start = (-buf.ctypes.data) % 64
            nbytes = int(np.prod(shape, dtype=np.int64)) * dtype.itemsize
            self.ns[name] = buf[start:start + nbytes].view(dtype).reshape(shape)

    def bind(self, obj, prefix="k"):
        """A namespace name holding `obj`."""
        self._n += 1
        name = f"{prefix}{self._n}"
        self.ns[name] = obj
        return name

    def ref(self, value_name):
        """The expression reading value `value_name`."""
        if value_name in self.var:
            return self.var[value_name]
        if value_name in self.constants:
            ref = self.const_ref.get(value_name)
            if ref is None:
                ref = self.const_ref[value_name] = self.bind(self.constants[value_name])
            return ref
        raise KeyError(value_name)

    def new_var(self, value_name):
        self._n += 1
        v = self.var[value_name] = f"v{self._n}"
        return v

    def emit(self, line, step=None, indent=1):
        self.lines.append("    " * indent + line)
        if step is not None:
            self.line_steps[len(self.lines)] = step

    def release(self, names):
        local = [self.var.pop(n) for n in names if n in self.var]
        if local:
            self.emit("del " + ", ".join(local))

    def compile(self, output_names, returns=None):
        refs = returns or [self.ref(n) for n in output_names]
        self.emit("return (" + "".join(r + ", " for r in refs) + ")")
        source = "\n".join(self.lines) + "\n"
        if self.workspace_size:
            self.ns["_ws"] = np.empty(self.workspace_size, np.float32)
        self._bind_scratch()
        exec(compile(source, FILENAME, "exec"), self.ns)    # noqa: S102 - our own generated code
        return self.ns["run"], source


def _implicit_reads(plan, i, step):
    """The values a step reads besides its inputs: its subgraphs' outer names. A
    subgraph may also read one of the node's own inputs (a nested If on the outer
    If's condition), so a node with subgraphs gets all it reads."""
    if any(a.type in (onnx.AttributeProto.GRAPH, onnx.AttributeProto.GRAPHS) for a in step.node.attribute):
        return list(plan.reads[i])
    return [n for n in plan.reads[i] if n not in step.inputs]


def generic_call(src, i, step, implicit, run=None):
    """`s{i}([args], env)`: the bound node (or `run`) called as the interpreted loop calls it."""
    fn = src.bind(step.run if run is None else run, "s")
    args = "[" + "".join((src.ref(n) if n else "None") + ", " for n in step.inputs) + "]"
    env = "{" + ", ".join(f"{n!r}: {src.ref(n)}" for n in implicit) + "}" if implicit else "None"
    return f"{fn}({args}, {env})"


def _targets(src, outputs):
    return "".join(src.new_var(o) + ", " for o in outputs) if outputs else "_"


def compile_generic(steps, plan, constants):
    """The generic plan: every step through its bound callable, for any inputs."""
    src = _Source(constants)
    for name in plan.graph_inputs:
        src.emit(f"{src.new_var(name)} = feeds[{name!r}]")
    for i, step in enumerate(steps):
        implicit = _implicit_reads(plan, i, step)
        call = generic_call(src, i, step, implicit)
        src.emit(f"{_targets(src, step.outputs)} = {call}", step=i)
        src.release(step.release)
    fn, source = src.compile(plan.graph_outputs)
    return CompiledPlan(fn, src.line_steps, source)


def compile_specialized(steps, plan, constants, trace, fast_step, n_threads, escaping,
                        buffer_max=1 << 18, buffer_total=1 << 26):
    """The plan specialized to one traced run's shapes.

    `trace` (executor.Trace): metas {name: (shape, dtype)} of every value and
    `folded` {name: read-only array} of the values computed from constants and
    input shapes only. `fast_step(src, step, ins, out_meta, buffer)` returns the
    expression computing a single-output step, or None (the generic call); for a
    step with several outputs `out_meta` is their list of metas, `buffer` None,
    and the expression gives the tuple of its (non-empty) outputs.
    `escaping`: values that may share memory with a graph output (never
    written into a reused buffer).
    """
    consts = dict(constants)
    consts.update(trace.folded)
    src = _Source(consts)
    src.n_threads = n_threads
    total = 0
    for name in plan.graph_inputs:
        src.emit(f"{src.new_var(name)} = feeds[{name!r}]")
    for i, step in enumerate(steps):
        if all(o in trace.folded for o in step.outputs) and step.outputs:
            continue
        implicit = _implicit_reads(plan, i, step)
        expr = None
        if len(step.outputs) == 1 and len(step.node.output) == 1 and not implicit:
            out = step.outputs[0]
            shape, dtype = trace.metas[out]
            buffer = None
            nbytes = int(np.prod(shape, dtype=np.int64)) * dtype.itemsize
            if out not in escaping and 0 < nbytes <= buffer_max and total + nbytes <= buffer_total:
                buffer = _LazyBuffer(src, shape, dtype)
            ins = [None if not n else (src.ref(n), trace.metas.get(n), consts.get(n)) for n in step.inputs]
            expr = fast_step(src, step, ins, (shape, dtype), buffer)
            if buffer is not None and buffer.name is not None:
                total += nbytes
            if expr is not None:
                line = f"{src.new_var(out)} = {expr}"
        elif (len(step.outputs) > 1 or len(step.node.output) > 1) and not implicit \
                and all(o in trace.metas for o in step.outputs):
            # several outputs (a norm and its residual sum; an LSTM's Y_h alone of Y, Y_h, Y_c):
            # fresh arrays from the expression's tuple
            ins = [None if not n else (src.ref(n), trace.metas.get(n), consts.get(n)) for n in step.inputs]
            expr = fast_step(src, step, ins, [trace.metas[o] for o in step.outputs], None)
            if expr is not None:
                line = f"{_targets(src, step.outputs)} = {expr}"
        if expr is None:
            line = f"{_targets(src, step.outputs)} = {generic_call(src, i, step, implicit, step.run)}"
        src.emit(line, step=i)
        src.release(step.release)
    returns = []
    for name in plan.graph_outputs:
        ref = src.ref(name)
        returns.append(ref + ".copy()" if name in trace.folded else ref)   # a fresh array per run, as generic
    fn, source = src.compile(plan.graph_outputs, returns)
    return CompiledPlan(fn, src.line_steps, source, stats=trace.stats, buffers=total)


class _LazyBuffer:
    """A preallocated output buffer, created only if the fast step asks for it."""

    def __init__(self, src, shape, dtype):
        self.src, self.shape, self.dtype = src, tuple(shape), dtype
        self.name = None

    def __str__(self):
        if self.name is None:
            self.name = self.src.bind(np.empty(self.shape, self.dtype), "b")
        return self.name

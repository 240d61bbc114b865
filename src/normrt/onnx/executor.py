"""The executor: runs a Plan, one step per node, values kept by name in a dict.

Each node is bound at load time to one of three implementations:

    domain 'normrt'            -> kernels.KernelNode     (normrt's kernels)
    registry.lookup(OpNode)    -> NumpyNode              (normrt.onnx.ops, numpy)
    anything else              -> fallback.ReferenceNode (onnx.reference)

A node none of them can run raises NotImplementedError here, at load.
While running, every intermediate value is dropped from the dict right after
its last reader (Plan.release_after), so memory holds only live values.

Speed (see also ops/_blas.py, normrt/_thread_policy.py):
* in place: from the plan, each numpy node that supports it is told which of
  its inputs die with it (plan.overwritable_inputs, with view/alias tracking)
  and may write its result there (Relu, Add, Mul, Sigmoid, Softmax...);
* threads: every kernel takes its thread count from its work
  (normrt._thread_policy), inside a graph as outside;
* `run(..., timings=)` times each node for InferenceSession.profile.
* the garbage collector is left alone (no gc.disable/freeze around runs):
  measured with gc.callbacks over 50 two-thread runs each, light_resnet50
  and light_densenet121 triggered no collection at all and style256 two
  generation-0 ones (0.07 ms in all) - a run allocates too few objects to
  pay for touching process-wide state.

The loop itself is compiled (compiled.py): the generic plan, built at load,
is one generated Python function calling each bound node with local
variables for values. The first run of each new set of input shapes is
traced (`run_traced`, the interpreted loop below, which also fills
`last_run_stats`) and yields a plan specialized to those shapes: values that
depend only on the input shapes folded to constants, the common ops as direct
calls (fast_steps.py), small results written into buffers preallocated once.
Later runs of those shapes take it; other shapes, graphs whose value shapes
depend on data (NonZero, a Reshape to a computed shape...) and a second
caller while one run is using the buffers take the generic plan.
"""
import importlib
import pkgutil
import threading
import time
import warnings

import numpy as np
from onnx import numpy_helper

from .. import _memory
from .._thread_policy import allowed_threads
from . import kernels
from ._graph import NORMRT_DOMAIN, NORMRT_OPSET, canonical_domain, decode_attributes, node_label
from .compiled import compile_generic, compile_specialized
from .concat_chain import GrowingConcat, concat_chains
from .fast_steps import fast_step
from .fallback import ReferenceNode, function_evaluators
from .ops import _half, registry
from .plan import OPAQUE, build_plan, overwritable_inputs

_ops_loaded = []


def load_numpy_ops():
    """Import every module of normrt.onnx.ops so its ops register themselves (once)."""
    if _ops_loaded:
        return
    _ops_loaded.append(True)
    from . import ops
    for info in pkgutil.iter_modules(ops.__path__):
        if info.name == "registry" or info.name.startswith(("_", "test")):
            continue
        try:
            importlib.import_module(f"{ops.__name__}.{info.name}")
        except Exception as e:  # noqa: BLE001 - a broken op module must not break loading
            warnings.warn(f"normrt.onnx.ops.{info.name} failed to import ({type(e).__name__}: {e}); "
                          f"its ops fall back to onnx.reference", RuntimeWarning, stacklevel=2)


class NumpyNode:
    """A node run by a registered numpy implementation.

    The registry's implementations take plain numpy tensors. float16/bfloat16
    tensors go to `half_native` implementations as they are and to the others
    widened to float32, their float results rounded back (ops/_half.py). A run
    whose inputs include anything else (a sequence, an optional, a tensor of
    another ml_dtypes type such as float8) goes to onnx.reference instead.
    """

    kind = "numpy"

    def __init__(self, node, impl, opnode, opsets, functions):
        self.node = node
        self.impl = impl
        self.opnode = opnode
        self.n_out = len(node.output)
        self.out_positions = [i for i, o in enumerate(node.output) if o]
        self.named = [i for i, name in enumerate(node.input) if name]
        self._fallback_args = (opsets, functions)
        self._fallback = None
        self.fallback_runs = 0
        self.dead = ()        # input positions the op may overwrite (set from the plan)

    def _kind(self, args):
        """0: plain numpy tensors; 1: some float16/bfloat16 among them; 2: anything else."""
        kind = 0
        for i in self.named:
            a = args[i]
            if not isinstance(a, np.ndarray):
                return 2
            dt = a.dtype
            if dt.isbuiltin != 1 or dt.char == "e":      # float16 is builtin, bfloat16 is not
                if not _half.is_half(dt):
                    return 2
                kind = 1
        return kind

    def __call__(self, args, values):
        kind = self._kind(args)
        if kind == 2:
            if self._fallback is None:
                self._fallback = ReferenceNode(self.node, *self._fallback_args)
            self.fallback_runs += 1
            return self._fallback(args, values)
        if kind == 1 and not self.impl.half_native:
            res = _half.run_in_float32(self.impl, self.opnode, args, self.dead)
        elif self.dead:
            res = self.impl.fn(self.opnode, *args, dead=self.dead)
        else:
            res = self.impl.fn(self.opnode, *args)
        if isinstance(res, tuple) or (isinstance(res, list) and self.n_out > 1):
            res = list(res)
        else:
            res = [res]
        return [res[i] if i < len(res) else None for i in self.out_positions]


def bind_node(node, opsets, functions=(), constants=None):
    """The callable that runs `node`: (args, values) -> list of its non-empty outputs
    (`constants`: the graph's, which an If's branches read as constants of their own)."""
    domain = canonical_domain(node.domain)
    if domain == NORMRT_DOMAIN:
        version = opsets.get(NORMRT_DOMAIN, NORMRT_OPSET)
        if version != NORMRT_OPSET:
            raise NotImplementedError(
                f"op {node.op_type!r} (domain 'normrt', opset version {version}) of node {node_label(node)}: "
                f"this normrt implements normrt opset {NORMRT_OPSET} only")
        return kernels.KernelNode(node, decode_attributes(node))
    if domain == "" and node.op_type == "If":
        from .control_flow import IfNode
        return IfNode(node, opsets, functions, constants or {})
    if domain == "" and node.op_type == "Loop":
        from .control_flow import LoopNode
        return LoopNode(node, opsets, functions, constants or {}, lambda: ReferenceNode(node, opsets, functions))
    if domain == "" and node.op_type == "Scan" and opsets.get("", 1) >= 9:
        from .control_flow import ScanNode
        return ScanNode(node, opsets, functions, constants or {}, lambda: ReferenceNode(node, opsets, functions))
    load_numpy_ops()
    version = opsets.get(domain)
    if version is not None:
        try:
            attrs = decode_attributes(node)
        except ValueError:
            attrs = None
        if attrs is not None:
            opnode = registry.OpNode(node.name, node.op_type, domain, version, attrs, len(node.output),
                                     tuple(bool(i) for i in node.input))
            impl = registry.lookup(opnode)
            if impl is not None:
                return NumpyNode(node, impl, opnode, opsets, functions)
    return ReferenceNode(node, opsets, functions)


# What a numpy op's outputs may share memory with (see plan.overwritable_inputs):
# fresh arrays, or views of the listed inputs; any other op counts as opaque.
_FRESH = frozenset("""
    Conv ConvTranspose MatMul Gemm Add Sub Mul Div Mod Pow Neg Abs Exp Log Sqrt Reciprocal Floor Ceil Tanh
    Sign Round Sin Cos Tan Asin Acos Atan Sinh Cosh Asinh Acosh Atanh Not Erf IsNaN IsInf Equal Less Greater
    LessOrEqual GreaterOrEqual And Or Xor BitShift Where Max Min Sum Mean Cast CastLike Relu LeakyRelu PRelu
    Sigmoid HardSigmoid HardSwish Softplus Softsign Elu Selu Celu ThresholdedRelu Mish Gelu Clip Softmax
    LogSoftmax Hardmax MaxPool AveragePool GlobalAveragePool GlobalMaxPool Resize Shape Size ConstantOfShape
    Range EyeLike ReduceMean ReduceSum ReduceMax ReduceMin ReduceProd ReduceL1 ReduceL2 ReduceLogSumExp
    ReduceSumSquare ReduceLogSum ArgMax ArgMin TopK NonZero GatherND ScatterND ScatterElements OneHot CumSum
    Trilu GatherElements GridSample AffineGrid Col2Im RandomUniform RandomNormal RandomUniformLike
    RandomNormalLike Bernoulli Multinomial LSTM GRU RNN QuantizeLinear DequantizeLinear DynamicQuantizeLinear
    MatMulInteger ConvInteger QLinearMatMul QLinearConv DFT STFT
""".split())
_VIEW_OF_FIRST = frozenset("""
    Reshape Flatten Squeeze Unsqueeze Transpose Identity Slice Split Expand Gather Dropout DepthToSpace
    SpaceToDepth Pad Tile Upsample
""".split())


def aliasing(step_run, node):
    """plan.overwritable_inputs' description of a bound node's outputs."""
    if step_run.kind == "kernel":
        return ()
    if step_run.kind == "numpy" and not canonical_domain(node.domain):
        if node.op_type in _FRESH:
            return ()
        if node.op_type in _VIEW_OF_FIRST:
            return (0,)
        if node.op_type in ("Concat", "Einsum"):
            return tuple(range(len(node.input)))
    return OPAQUE


def profile_key(node):
    """How `profile` names a node's op: 'Conv', 'normrt::GroupNorm', 'com.microsoft::Gelu'."""
    domain = canonical_domain(node.domain)
    return node.op_type if not domain else f"{domain}::{node.op_type}"


class Step:
    __slots__ = ("node", "run", "kind", "inputs", "outputs", "release", "key")

    def __init__(self, node, run, release):
        self.node = node
        self.run = run
        self.kind = run.kind
        self.inputs = list(node.input)
        self.outputs = [o for o in node.output if o]
        self.release = release
        self.key = profile_key(node)


# Ops whose output depends on more than their inputs (never folded into a specialized plan)
_NONDETERMINISTIC = frozenset(("RandomNormal", "RandomUniform", "RandomNormalLike", "RandomUniformLike",
                               "Multinomial", "Bernoulli"))
# Input positions whose *values* set an op's output shape: a plan specializes to its input
# shapes only when each of these is a constant or computed from shapes alone
_SHAPE_INPUTS = {
    "Reshape": (1,), "Expand": (1,), "Tile": (1,), "Slice": (1, 2, 3, 4), "Pad": (1, 2, 3),
    "ConstantOfShape": (0,), "Range": (0, 1, 2), "Resize": (1, 2, 3), "Upsample": (1,), "OneHot": (1,),
    "Squeeze": (1,), "Unsqueeze": (1,), "Split": (1,), "TopK": (1,), "CenterCropPad": (1,),
    "ReduceMean": (1,), "ReduceSum": (1,), "ReduceMax": (1,), "ReduceMin": (1,), "ReduceProd": (1,),
    "ReduceL1": (1,), "ReduceL2": (1,), "ReduceLogSum": (1,), "ReduceLogSumExp": (1,),
    "ReduceSumSquare": (1,), "MaxUnpool": (2,), "DFT": (1, 2), "STFT": (1, 3), "Col2Im": (1, 2),
    "NonMaxSuppression": (0, 1, 2, 3, 4), "NonZero": (0,), "Unique": (0,), "Compress": (0, 1),
    "GridSample": (), "ScatterND": (), "Trilu": (), "AffineGrid": (1,),
}
# Folded values larger than this stay computed at run time
FOLD_MAX_BYTES = 1 << 20
# How many input-shape specializations a session keeps
MAX_SPECIALIZED = 8
# ... and how many it builds before one of them is run again: a generation loop's every step has
# a new cache length, so its shapes never come back, and tracing and compiling a plan for each
# cost 2-10 ms a step (the tiny genai decoders: 5-11 ms for each of their first 7 tokens, 0.3
# ms after); past this many plans none of which was reused, a new shape runs the generic plan,
# and gets its plan when it comes back
MAX_UNUSED_SPECIALIZED = 3


class Trace:
    """What a traced run saw: every value's (shape, dtype), the folded values and the run's stats."""

    def __init__(self):
        self.metas = {}
        self.folded = {}
        self.plain = True          # every value a plain numpy array
        self.stats = {}


class Executor:
    """Runs a checked model's graph. `steps` is the load-time plan with each node's binding."""

    def __init__(self, model, constants=None, *, specialize=True, functions=None):
        """`constants` {name: ndarray}: the initializers' values where `model` holds data-less stubs
        (normrt.onnx.initializers; the session's one copy of its weights). `functions`: the local
        functions' evaluators of the model around a subgraph's (control_flow.IfNode)."""
        self.model = model
        graph = model.graph
        self.opsets = {canonical_domain(o.domain): o.version for o in model.opset_import}
        if functions is not None:
            self.functions = functions
        else:
            self.functions = function_evaluators(model.functions) if len(model.functions) else []
        self.plan = build_plan(graph)
        given = constants or {}
        self.constants = {t.name: given[t.name] if t.name in given else numpy_helper.to_array(t)
                          for t in graph.initializer}
        for value in self.constants.values():
            value.flags.writeable = False     # shared by every run: an op writing into one is a bug
        self.steps = [Step(node, bind_node(node, self.opsets, self.functions, self.constants), release)
                      for node, release in zip(self.plan.nodes, self.plan.release_after)]
        for step in self.steps:
            if step.kind == "kernel" and step.run.packer is not None:
                # an initializer weight is packed once, on the first run
                step.run.weight_is_constant = len(step.inputs) > 1 and step.inputs[1] in self.constants
        if any(s.kind == "numpy" and s.run.impl.gemm for s in self.steps):
            from .ops import _blas
            _blas.private_blas()   # load the GEMM library now, not during the first run
        # in-place hints: a numpy op that can write into an input nothing reads later is told which
        dead = overwritable_inputs(self.plan, [aliasing(s.run, s.node) for s in self.steps])
        for step, positions in zip(self.steps, dead):
            if step.kind == "numpy" and step.run.impl.inplace and positions:
                step.run.dead = positions
            elif step.kind == "kernel" and getattr(step.run, "spec", None) is not None \
                    and step.run.spec.inplace_input in positions:
                # (a specialized plan's fast step then writes Y into that input: fast_steps.py)
                step.run.dead = (step.run.spec.inplace_input,)
        # channel Concat chains (DenseNet's blocks) grow one buffer instead of copying it again
        for i, after in concat_chains(self.plan.nodes).items():
            if self.steps[i].kind == "numpy":
                self.steps[i].run = GrowingConcat(self.steps[i].run, after)
        self.input_names = self.plan.graph_inputs
        self.output_names = self.plan.graph_outputs
        self._out_index = {n: i for i, n in enumerate(self.output_names)}
        self.last_run_stats = {}
        self.generic = compile_generic(self.steps, self.plan, self.constants)
        self.specialize = specialize
        self._static = self._static_values()
        self._specializable = specialize and self._shapes_follow_inputs()
        self._escaping = self._may_alias_outputs() if self._specializable else set()
        self.specialized = {}         # (input shapes, dtypes, threads) -> CompiledPlan
        self._reused = False          # a specialized plan ran again after its first run
        self._unplanned = set()       # shapes run without a plan (MAX_UNUSED_SPECIALIZED reached)
        self._lock = threading.Lock()  # a specialized plan's buffers serve one run at a time

    def rebind(self):
        """Recompile after `steps[i].run` was replaced (instrumentation): the compiled plans
        hold the bound callables, so they are rebuilt (specializations on the next run)."""
        self.generic = compile_generic(self.steps, self.plan, self.constants)
        self.specialized = {}

    # ------------------------------------------------------------ load-time analyses
    def _static_values(self):
        """Values computed from constants and input shapes only (Shape, then arithmetic on it),
        whichever implementation computes them: a dynamic-axes export's shape arithmetic may run
        on a fused elementwise program (T5's relative-position buckets, EnCodec's padding sizes)
        or on onnx.reference (DINOv2's bicubic Resize of its position table to the input's size),
        and is then still computed once per input shape, not on every run. Ops that draw random
        numbers and ops with subgraphs are never static."""
        static = set(self.constants)
        for i, step in enumerate(self.steps):
            node = step.node
            if node.op_type in _NONDETERMINISTIC or node.op_type in ("If", "Loop", "Scan") or not step.outputs:
                continue
            if (node.op_type in ("Shape", "Size") and not canonical_domain(node.domain)) \
                    or all(n in static for n in self.plan.reads[i]):
                static.update(step.outputs)
        return static

    def _shapes_follow_inputs(self):
        """Whether every value's shape is a function of the input shapes (no data-dependent shapes)."""
        for i, step in enumerate(self.steps):
            if step.outputs and all(o in self._static for o in step.outputs):
                continue
            if step.kind == "reference" or step.node.op_type in ("If", "Loop", "Scan"):
                return False
            if step.kind == "numpy" and not canonical_domain(step.node.domain):
                for p in _SHAPE_INPUTS.get(step.node.op_type, ()):
                    if p < len(step.inputs) and step.inputs[p] and step.inputs[p] not in self._static:
                        return False
        return True

    def _may_alias_outputs(self):
        """Values whose memory a graph output may share (views, in-place writes): no reused buffers."""
        esc = set(self.output_names)
        for step in reversed(self.steps):
            if not any(o in esc for o in step.outputs):
                continue
            kind = aliasing(step.run, step.node)
            if kind == OPAQUE:
                esc.update(n for n in step.inputs if n)
                continue
            for p in set(kind) | set(getattr(step.run, "dead", ()) or ()):
                if p < len(step.inputs) and step.inputs[p]:
                    esc.add(step.inputs[p])
        return esc

    def counts(self):
        """How many nodes each implementation kind runs: {'kernel': k, 'numpy': n, 'reference': r}."""
        out = {"kernel": 0, "numpy": 0, "reference": 0}
        for s in self.steps:
            if s.kind == "subgraph":      # an If: its branches' nodes
                for kind, n in s.run.counts().items():
                    out[kind] += n
            else:
                out[s.kind] += 1
        return out

    # ------------------------------------------------------------ running
    def _shape_key(self, feeds):
        key = []
        for name in self.input_names:
            v = feeds[name]
            if type(v) is not np.ndarray:
                return None
            key.append((v.shape, v.dtype))
        key.append(allowed_threads())      # 1 in a forked child under libgomp: a plan of its own
        return tuple(key)

    def run(self, feeds, output_names=None, timings=None, specialize=True):
        """Outputs (list, in `output_names` order) for `feeds` {input name: value} (checked by the caller).

        With `timings` (a dict), each node's wall time is added to
        timings[profile_key(node)] (seconds), through the interpreted loop.
        `specialize=False` runs the generic plan even when a specialized one exists.
        """
        names = self.output_names if output_names is None else output_names
        # the run's arrays from the block cache (normrt._memory): the next run reuses their pages
        previous = _memory.install()
        try:
            return self._run(feeds, names, timings, specialize)
        finally:
            _memory.restore(previous)

    def _run(self, feeds, names, timings, specialize):
        if timings is not None:
            return self.run_traced(feeds, names, timings)
        if specialize and self._specializable:
            key = self._shape_key(feeds)
            if key is not None:
                plan = self.specialized.get(key)
                if plan is None:
                    # a shape seen before without a plan (past the limit) comes back: a reuse too
                    again = key in self._unplanned
                    if len(self.specialized) < (MAX_SPECIALIZED if self._reused or again else MAX_UNUSED_SPECIALIZED):
                        self._reused |= again
                        return self._trace_and_specialize(key, feeds, names)
                    if len(self._unplanned) >= 4 * MAX_SPECIALIZED:
                        self._unplanned.clear()
                    self._unplanned.add(key)
                elif self._lock.acquire(False):
                    self._reused = True
                    try:
                        with np.errstate(all="ignore"):
                            outs = self._call(plan, feeds)
                    finally:
                        self._lock.release()
                    self.last_run_stats = plan.stats
                    return [outs[self._out_index[n]] for n in names]
        outs = self._call(self.generic, feeds)
        return [outs[self._out_index[n]] for n in names]

    def _call(self, plan, feeds):
        try:
            return plan.fn(feeds)
        except Exception as e:
            i = plan.node_at(e.__traceback__)
            if i is not None and hasattr(e, "add_note"):
                step = self.steps[i]
                e.add_note(f"while running node {node_label(step.node)} [{step.kind}]")
            raise

    def _trace_and_specialize(self, key, feeds, names):
        trace = Trace()
        outs = self.run_traced(feeds, names, trace=trace)
        if trace.plain:
            self.specialized[key] = compile_specialized(
                self.steps, self.plan, self.constants, trace, fast_step, key[-1], self._escaping)
        return outs

    def run_traced(self, feeds, names=None, timings=None, trace=None, step_times=None):
        """The interpreted loop (values in a dict, stats in last_run_stats): for profiling
        (`timings` by op type; `step_times`, a list as long as `steps`, by step) and for
        the traced run a specialized plan is built from (`trace`)."""
        names = self.output_names if names is None else names
        values = dict(self.constants)
        values.update(feeds)
        live = len(feeds)
        live_bytes = sum(getattr(v, "nbytes", 0) for v in feeds.values())
        peak, peak_bytes = live, live_bytes
        clock = time.perf_counter
        if trace is not None:
            metas, folded, static = trace.metas, trace.folded, self._static
            for name, v in values.items():
                if type(v) is np.ndarray:
                    metas[name] = (v.shape, v.dtype)
                else:
                    trace.plain = False
        timed = timings is not None or step_times is not None
        for i, step in enumerate(self.steps):
            args = [values[n] if n else None for n in step.inputs]
            try:
                if not timed:
                    outs = step.run(args, values)
                else:
                    t0 = clock()
                    outs = step.run(args, values)
                    dt = clock() - t0
                    if timings is not None:
                        timings[step.key] = timings.get(step.key, 0.0) + dt
                    if step_times is not None:
                        step_times[i] += dt
            except Exception as e:
                if hasattr(e, "add_note"):
                    e.add_note(f"while running node {node_label(step.node)} [{step.kind}]")
                raise
            for name, value in zip(step.outputs, outs):
                values[name] = value          # SSA: a name is written once
                live += 1
                live_bytes += getattr(value, "nbytes", 0)
                if trace is not None:
                    if type(value) is not np.ndarray or (value.dtype.isbuiltin != 1
                                                         and not _half.is_half(value.dtype)):
                        trace.plain = False
                        continue
                    metas[name] = (value.shape, value.dtype)
                    if (name in static and value.nbytes <= FOLD_MAX_BYTES
                            and (step.node.op_type in ("Shape", "Size")
                                 or all(n in folded or n in self.constants for n in step.inputs if n))):
                        # copied now: a later in-place op of this run may write into the value
                        frozen = value.copy()
                        frozen.flags.writeable = False
                        folded[name] = frozen
            if live > peak:
                peak = live
            if live_bytes > peak_bytes:
                peak_bytes = live_bytes
            for name in step.release:
                value = values.pop(name)
                live -= 1
                live_bytes -= getattr(value, "nbytes", 0)
        self.last_run_stats = {"peak_live_values": peak, "peak_live_bytes": peak_bytes,
                               "live_values_at_end": live}
        if trace is not None:
            trace.stats = self.last_run_stats
        return [values[n] for n in names]


def evaluate_node(node, opsets, inputs, outer=None, functions=()):
    """Run one node on concrete inputs (used by constant folding): list of its non-empty outputs."""
    run = bind_node(node, opsets, functions)
    values = dict(outer or {})
    return run(inputs, values), run.kind


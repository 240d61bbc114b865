"""The executor: runs a Plan, one step per node, values kept by name in a dict.

Each node is bound at load time to one of three implementations:

    domain 'normrt'            -> kernels.KernelNode     (normrt's kernels)
    registry.lookup(OpNode)    -> NumpyNode              (normrt.onnx.ops, numpy)
    anything else              -> fallback.ReferenceNode (onnx.reference)

A node none of them can run raises NotImplementedError here, at load.
While running, every intermediate value is dropped from the dict right after
its last reader (Plan.release_after), so memory holds only live values.

Speed (see also ops/_blas.py, ops/_parallel.py):
* in place: from the plan, each numpy node that supports it is told which of
  its inputs die with it (plan.overwritable_inputs, with view/alias tracking)
  and may write its result there (Relu, Add, Mul, Sigmoid, Softmax...);
* threads: memory-bound normrt kernels (the norms) on tensors below
  KERNEL_MT_MIN (2^23) elements run on one thread - a second OpenMP thread costs
  more than it saves there, in a graph whose other ops share the cores;
  compute-bound ones (kernels.COMPUTE_BOUND) choose from their flops;
* `run(..., timings=)` times each node for InferenceSession.profile.
No output buffers are cached across runs: after the first run glibc serves
the same-sized allocations without page faults (measured: 0 minor faults per
run of light_resnet50 / densenet121), and a returned output can never alias
memory a later run writes.
"""
import importlib
import pkgutil
import time
import warnings

import numpy as np
from onnx import numpy_helper

from .._threads import get_num_threads, threads
from . import kernels
from ._graph import NORMRT_DOMAIN, NORMRT_OPSET, canonical_domain, decode_attributes, node_label
from .concat_chain import GrowingConcat, concat_chains
from .fallback import ReferenceNode, function_evaluators
from .ops import registry
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

    The registry's implementations take plain numpy tensors. A run whose
    inputs include anything else (a sequence, an optional, a tensor of an
    ml_dtypes type such as bfloat16 or float8) goes to onnx.reference instead.
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

    def _plain(self, args):
        for i in self.named:
            a = args[i]
            if not isinstance(a, np.ndarray) or a.dtype.isbuiltin == 2:
                return False
        return True

    def __call__(self, args, values):
        if not self._plain(args):
            if self._fallback is None:
                self._fallback = ReferenceNode(self.node, *self._fallback_args)
            self.fallback_runs += 1
            return self._fallback(args, values)
        if self.dead:
            res = self.impl.fn(self.opnode, *args, dead=self.dead)
        else:
            res = self.impl.fn(self.opnode, *args)
        if isinstance(res, tuple) or (isinstance(res, list) and self.n_out > 1):
            res = list(res)
        else:
            res = [res]
        return [res[i] if i < len(res) else None for i in self.out_positions]


def bind_node(node, opsets, functions=()):
    """The callable that runs `node`: (args, values) -> list of its non-empty outputs."""
    domain = canonical_domain(node.domain)
    if domain == NORMRT_DOMAIN:
        version = opsets.get(NORMRT_DOMAIN, NORMRT_OPSET)
        if version != NORMRT_OPSET:
            raise NotImplementedError(
                f"op {node.op_type!r} (domain 'normrt', opset version {version}) of node {node_label(node)}: "
                f"this normrt implements normrt opset {NORMRT_OPSET} only")
        return kernels.KernelNode(node, decode_attributes(node))
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
    Trilu GatherElements
""".split())
_GEMM_OPS = frozenset(("Conv", "ConvTranspose", "MatMul", "Gemm", "Attention"))
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


# A normrt kernel on fewer elements than this runs on one thread: in a graph
# the second thread's wake-up (and the cores' other users: BLAS, the next op)
# costs more than it saves on small tensors. Measured on 2 cores (python -m
# bench.cnn_ops), BatchNorm+relu right after a conv, whose GEMM pool worker
# keeps the other core spinning for NORMRT_POOL_SPIN_US (400 us): 1 thread
# 13-109 us, 2 threads 500-590 us for 0.1M-1.6M elements, although 2 threads
# win when both are idle. The second thread pays off only once one thread
# needs well over twice that wait: ~2^23 elements.
KERNEL_MT_MIN = 1 << 23


class _SmallKernelsSingleThreaded:
    """A KernelNode whose calls on small inputs run on one thread."""

    kind = "kernel"

    def __init__(self, run):
        self.inner = run
        self.kernel = run.kernel

    def __getattr__(self, name):
        return getattr(self.inner, name)

    def __call__(self, args, values):
        x = args[0] if args else None
        if x is not None and getattr(x, "size", KERNEL_MT_MIN) < KERNEL_MT_MIN and get_num_threads() > 1:
            with threads(1):
                return self.inner(args, values)
        return self.inner(args, values)


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


class Executor:
    """Runs a checked model's graph. `steps` is the load-time plan with each node's binding."""

    def __init__(self, model, constants=None):
        """`constants` {name: ndarray}: the initializers' values where `model` holds data-less stubs
        (normrt.onnx.initializers; the session's one copy of its weights)."""
        self.model = model
        graph = model.graph
        self.opsets = {canonical_domain(o.domain): o.version for o in model.opset_import}
        self.functions = function_evaluators(model.functions) if len(model.functions) else []
        self.plan = build_plan(graph)
        given = constants or {}
        self.constants = {t.name: given[t.name] if t.name in given else numpy_helper.to_array(t)
                          for t in graph.initializer}
        for value in self.constants.values():
            value.flags.writeable = False     # shared by every run: an op writing into one is a bug
        self.steps = [Step(node, bind_node(node, self.opsets, self.functions), release)
                      for node, release in zip(self.plan.nodes, self.plan.release_after)]
        for step in self.steps:
            if step.kind == "kernel" and step.run.packer is not None:
                # an initializer weight is packed once, on the first run
                step.run.weight_is_constant = len(step.inputs) > 1 and step.inputs[1] in self.constants
            if step.kind == "kernel" and step.run.memory_bound:
                step.run = _SmallKernelsSingleThreaded(step.run)
        if any(s.node.op_type in _GEMM_OPS and s.kind == "numpy" for s in self.steps):
            from .ops import _blas
            _blas.private_blas()   # load the GEMM library now, not during the first run
        # in-place hints: a numpy op that can write into an input nothing reads later is told which
        dead = overwritable_inputs(self.plan, [aliasing(s.run, s.node) for s in self.steps])
        for step, positions in zip(self.steps, dead):
            if step.kind == "numpy" and step.run.impl.inplace and positions:
                step.run.dead = positions
        # channel Concat chains (DenseNet's blocks) grow one buffer instead of copying it again
        for i, after in concat_chains(self.plan.nodes).items():
            if self.steps[i].kind == "numpy":
                self.steps[i].run = GrowingConcat(self.steps[i].run, after)
        self.input_names = self.plan.graph_inputs
        self.output_names = self.plan.graph_outputs
        self.last_run_stats = {}

    def counts(self):
        """How many nodes each implementation kind runs: {'kernel': k, 'numpy': n, 'reference': r}."""
        out = {"kernel": 0, "numpy": 0, "reference": 0}
        for s in self.steps:
            out[s.kind] += 1
        return out

    def run(self, feeds, output_names=None, timings=None):
        """Outputs (list, in `output_names` order) for `feeds` {input name: value} (checked by the caller).

        With `timings` (a dict), each node's wall time is added to
        timings[profile_key(node)] (seconds); a plain run pays one
        `timings is None` test per node for it.
        """
        names = self.output_names if output_names is None else output_names
        values = dict(self.constants)
        values.update(feeds)
        live = len(feeds)
        live_bytes = sum(getattr(v, "nbytes", 0) for v in feeds.values())
        peak, peak_bytes = live, live_bytes
        clock = time.perf_counter
        for step in self.steps:
            args = [values[n] if n else None for n in step.inputs]
            try:
                if timings is None:
                    outs = step.run(args, values)
                else:
                    t0 = clock()
                    outs = step.run(args, values)
                    timings[step.key] = timings.get(step.key, 0.0) + (clock() - t0)
            except Exception as e:
                if hasattr(e, "add_note"):
                    e.add_note(f"while running node {node_label(step.node)} [{step.kind}]")
                raise
            for name, value in zip(step.outputs, outs):
                values[name] = value          # SSA: a name is written once
                live += 1
                live_bytes += getattr(value, "nbytes", 0)
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
        return [values[n] for n in names]


def evaluate_node(node, opsets, inputs, outer=None, functions=()):
    """Run one node on concrete inputs (used by constant folding): list of its non-empty outputs."""
    run = bind_node(node, opsets, functions)
    values = dict(outer or {})
    return run(inputs, values), run.kind


"""InferenceSession: load, optimize, plan once; run many times.

    model ─► loader.load_detached ─► optimize_detached ─► Executor(plan, bound nodes, the weights' arrays)
    run(output_names, feed) ─► check feed against the graph inputs ─► Executor.run
"""
import hashlib
import os
from contextlib import nullcontext
from dataclasses import dataclass
from time import perf_counter

import numpy as np
import onnx

from .._threads import _check as _check_threads
from .._thread_policy import RunThreads
from .._threads import get_num_threads, override_stack, threads
from ._graph import np_dtype, shape_list, type_string
from .executor import Executor, Trace
from .loader import load_detached
from .initializers import attach
from .optimize import optimize_detached
from .passes.half_regions import DEFAULT_MODE, check_mode


@dataclass(frozen=True)
class NodeArg:
    """Name, shape (ints, dim_param strings, None) and type string ('tensor(float)') of a graph input/output."""
    name: str
    shape: list
    type: str

    def __repr__(self):
        return f"NodeArg(name={self.name!r}, type={self.type!r}, shape={self.shape!r})"


@dataclass(frozen=True)
class NodeTimes:
    """One node of InferenceSession.profile_nodes: its name, op ('Conv', 'normrt::Conv'),
    its inputs' and outputs' shapes and its wall time in each profiled run (seconds)."""
    name: str
    op: str
    input_shapes: tuple
    output_shapes: tuple
    seconds: tuple


@dataclass(frozen=True)
class _FeedCheck:
    """What a graph input's feed is checked against: whether it is a tensor, its numpy dtype
    (None: any), whether the graph gives its shape, and that shape when every dim is an int."""
    tensor: bool
    dtype: object
    has_shape: bool
    dims: tuple

    @classmethod
    def of(cls, tp, arg):
        if tp.WhichOneof("value") != "tensor_type":
            return cls(False, None, False, None)
        has_shape = tp.tensor_type.HasField("shape")
        static = has_shape and all(type(d) is int for d in arg.shape)
        return cls(True, np_dtype(tp.tensor_type.elem_type), has_shape, tuple(arg.shape) if static else None)


def _with_refusals(message, report):
    """An unimplemented node's message, with why a rewrite refused that node (a contrib op in a
    form its pass does not cover says which form, not only that nothing runs it)."""
    reasons = [f"the {r['pass']} pass refused it: {r['reason']}" for r in report.get("refused", ())
               if any(f"'{name}'" in message for name in r["nodes"][:1])]
    return "; ".join([message] + reasons)


class InferenceSession:
    """Runs an ONNX model with normrt: normalizations on normrt's kernels, the rest in numpy
    or onnx.reference.

    `model` is a path (external data is read from its directory), bytes or an
    onnx.ModelProto. `num_threads` (default: normrt's setting) is how many
    threads `run` uses: the kernels' OpenMP threads (small tensors: one),
    the GEMMs of Conv/MatMul/Gemm (normrt's private OpenBLAS, ops/_blas.py)
    and the numpy-level splits of big elementwise/attention work.
    With `adaptive_threads` (the default) that count is the most a run uses: the session
    times its runs and, where other processes keep the cores busy and fewer threads run
    faster, uses fewer (normrt._thread_policy.RunThreads; results are the same bits either
    way). False: every run uses the count.

    `limits` (normrt.Limits) bounds what the model may declare: the largest
    tensor (`max_tensor_bytes`) and how deep subgraphs nest (`max_subgraph_depth`).

    Initializers are constants (folded and rewritten at load): one that the
    graph also lists among its inputs (IR < 4 models do) is not a feed.
    After loading, `optimized_model` is the model that runs, `report` what
    optimize did, and `executor` the plan with each node's implementation.

    `half_compute` says how a float16/bfloat16 model computes: "float32" (the default) keeps
    the values between ops that compute in float32 in float32 and rounds to half only where
    the model's own Casts, ops pinned to half and the graph outputs need it, as onnxruntime's
    CPU provider does (more accurate, fewer conversions; passes/half_regions.py); "per_op"
    widens each op's half inputs to float32 and rounds its result back to half. A float32
    model runs the same either way.

    A session pickles as its model's bytes and options and is rebuilt (loaded
    and optimized again) on the other side, e.g. in another process; unlike
    onnxruntime's, which cannot be pickled. To do so without holding the
    weights twice, it keeps the bytes object it was given, or the path of a
    model file without external data (read again, and checked against its
    sha256, when pickled); only a ModelProto or a model with external data is
    kept serialized.
    """

    def __init__(self, model, *, num_threads=None, limits=None, half_compute=DEFAULT_MODE, adaptive_threads=True):
        self._num_threads = None if num_threads is None else _check_threads(num_threads)
        if not isinstance(adaptive_threads, bool):
            raise TypeError(f"adaptive_threads must be a bool, got {type(adaptive_threads).__name__}")
        self._adaptive_threads = adaptive_threads
        self._run_threads = None
        self._half_compute = check_mode(half_compute)
        # the weights are held once, as the executor's arrays; the protos keep stubs (optimized_model)
        proto, arrays = load_detached(model, limits)
        self._model_source = _pickle_source(model)
        self._model, report, arrays = optimize_detached(proto, constants=arrays, half_compute=half_compute)
        del proto
        self.report = report.as_dict()
        try:
            self._executor = Executor(self._model, constants=arrays)
        except NotImplementedError as e:
            raise NotImplementedError(_with_refusals(str(e), self.report)) from None
        del arrays
        graph = self._model.graph
        feedable = set(self._executor.input_names)
        self._inputs = [NodeArg(vi.name, shape_list(vi.type), type_string(vi.type))
                        for vi in graph.input if vi.name in feedable]
        self._input_types = {vi.name: vi.type for vi in graph.input if vi.name in feedable}
        # what _check_value compares, read from the protos once: reading them each run cost
        # ~2 us of a small model's run (a 1x1 conv's whole run was 9 us)
        self._input_checks = [(arg, _FeedCheck.of(self._input_types[arg.name], arg)) for arg in self._inputs]
        self._outputs = [NodeArg(vi.name, shape_list(vi.type), type_string(vi.type)) for vi in graph.output]

    def __reduce__(self):
        data = self._model_source.read() if self._model_source is not None else None
        if data is None:
            try:
                data = self.optimized_model.SerializeToString()
            except ValueError:      # protobuf refuses messages over 2 GiB
                raise TypeError("this InferenceSession cannot be pickled: its model is over "
                                "protobuf's 2 GiB limit") from None
        return (_rebuild_session, (data, {"num_threads": self._num_threads,
                                          "half_compute": self._half_compute,
                                          "adaptive_threads": self._adaptive_threads}))

    @property
    def optimized_model(self):
        """The model that runs, as a full ModelProto (built on each access: the session itself keeps
        its weights only once, as the executor's arrays)."""
        full = type(self._model)()
        full.CopyFrom(self._model)
        return attach(full, self._executor.constants)

    @property
    def half_compute(self):
        """How half-precision values compute: "per_op" or "float32" (see the class docstring)."""
        return self._half_compute

    def get_inputs(self):
        return list(self._inputs)

    def get_outputs(self):
        return list(self._outputs)

    @property
    def executor(self):
        """The load-time plan and node bindings (introspection: `executor.counts()`, `executor.steps`)."""
        return self._executor

    def _check_feed(self, input_feed):
        if not isinstance(input_feed, dict):
            raise TypeError(f"input_feed must be a dict {{input name: array}}, got {type(input_feed).__name__}")
        if input_feed.keys() != self._input_types.keys():
            expected = [a.name for a in self._inputs]
            unknown = [k for k in input_feed if k not in self._input_types]
            if unknown:
                raise ValueError(f"unknown input name(s) {unknown}; the model's inputs are {expected}")
            missing = [k for k in expected if k not in input_feed]
            if missing:
                raise ValueError(f"missing input(s) {missing}; the model's inputs are {expected}")
        feeds = {}
        for arg, check in self._input_checks:
            feeds[arg.name] = self._check_value(arg, check, input_feed[arg.name])
        return feeds

    @staticmethod
    def _check_value(arg, check, value):
        if not check.tensor:
            return value           # sequences, optionals, maps: passed to the ops as given
        want = check.dtype
        if type(value) is np.ndarray and value.dtype == want and check.dims is not None \
                and value.shape == check.dims:
            return value           # the common case: the static shape and type
        if not isinstance(value, np.ndarray):
            try:
                value = np.asarray(value, dtype=want if want is not None and want != object else None)
            except (TypeError, ValueError) as e:
                raise ValueError(f"input {arg.name!r}: cannot convert {type(value).__name__} to {arg.type}: {e}") from None
        if want is not None:
            if want == object:
                ok = value.dtype.kind in "OUS"
            else:
                ok = value.dtype == want
            if not ok:
                raise ValueError(f"input {arg.name!r} must have type {arg.type} (numpy {want}), got dtype {value.dtype}")
        if check.has_shape:
            dims = arg.shape
            if value.ndim != len(dims):
                raise ValueError(f"input {arg.name!r} must have rank {len(dims)} (shape {dims}), "
                                 f"got shape {value.shape}")
            for i, (d, n) in enumerate(zip(dims, value.shape)):
                if isinstance(d, int) and d != n:
                    raise ValueError(f"input {arg.name!r} must have shape {dims}, got {value.shape} "
                                     f"(dimension {i} must be {d})")
        return value

    def run(self, output_names, input_feed, run_options=None):
        """Outputs named by `output_names` (None: all, in graph order) as a list of numpy arrays."""
        feeds = self._check_feed(input_feed)
        names = self._output_names(output_names)
        limit = self._num_threads if self._num_threads is not None else get_num_threads()
        tuner = self._run_threads
        if self._adaptive_threads and (tuner is None or tuner.limit != limit):
            tuner = self._run_threads = RunThreads(limit)
        n = tuner.threads() if self._adaptive_threads else self._num_threads
        if n is None:
            return self._executor.run(feeds, names)
        # threads(n)'s override without its context manager (~1 us a run)
        overrides = override_stack()
        overrides.append(n)
        start = perf_counter()
        try:
            return self._executor.run(feeds, names)
        finally:
            overrides.pop()
            if self._adaptive_threads:
                tuner.record(perf_counter() - start)

    def profile(self, input_feed, repeat=1):
        """Where a run's time goes: {op type: seconds per run}, summed over the op's nodes,
        averaged over `repeat` runs of `input_feed` (all outputs computed).

        Nodes on normrt's kernels are keyed by their normrt op ('normrt::GroupNorm'),
        other domains as 'domain::Op', the default ONNX domain by the bare op type ('Conv').
        """
        repeat = _check_repeat(repeat)
        feeds = self._check_feed(input_feed)
        names = self._executor.output_names
        totals = {}
        with self._threads():
            for _ in range(repeat):
                self._executor.run(feeds, names, timings=totals)
        return {k: v / repeat for k, v in totals.items()}

    def profile_nodes(self, input_feed, repeat=1):
        """Each node's time, run by run, for lining nodes up with another runtime's
        profile (bench/node_compare.py): [NodeTimes] in execution order over `repeat`
        runs of `input_feed` (all outputs computed, through the same loop as profile),
        with the shape each input and output had (None: not an array, or no input)."""
        repeat = _check_repeat(repeat)
        feeds = self._check_feed(input_feed)
        ex = self._executor
        trace = Trace()           # the values' shapes (recorded outside the timed calls)
        per_run = []
        with self._threads():
            for r in range(repeat):
                times = [0.0] * len(ex.steps)
                ex.run_traced(feeds, ex.output_names, trace=trace if r == 0 else None, step_times=times)
                per_run.append(times)

        def shape(name):
            meta = trace.metas.get(name) if name else None
            return None if meta is None else tuple(meta[0])
        return [NodeTimes(s.node.name, s.key, tuple(shape(n) for n in s.inputs),
                          tuple(shape(n) for n in s.outputs), tuple(run[i] for run in per_run))
                for i, s in enumerate(ex.steps)]

    def _threads(self):
        """The session's thread count (num_threads) for the calls inside, or the process's."""
        return nullcontext() if self._num_threads is None else threads(self._num_threads)

    def _output_names(self, output_names):
        if output_names is None:
            names = self._executor.output_names
        else:
            names = list(output_names)
            known = set(self._executor.output_names)
            bad = [n for n in names if n not in known]
            if bad:
                raise ValueError(f"unknown output name(s) {bad}; the model's outputs are "
                                 f"{self._executor.output_names}")
        return names

    def kernel_nodes(self):
        """[(node name, normrt op, kernel)] of the nodes that run on normrt's kernels."""
        return [(s.node.name, s.node.op_type, s.run.kernel) for s in self._executor.steps if s.kind == "kernel"]


def _check_repeat(repeat):
    repeat = int(repeat)
    if repeat < 1:
        raise ValueError(f"repeat must be >= 1, got {repeat}")
    return repeat


class _PickleSource:
    """The bytes a session loaded, for pickling it without a second copy of its weights:
    the bytes object it was given, or its model file, read again (and checked against
    its sha256) when pickled. None from read(): pickle the optimized model instead."""

    def __init__(self, data=None, path=None, digest=None):
        self.data, self.path, self.digest = data, path, digest

    def read(self):
        if self.data is not None:
            return self.data
        with open(self.path, "rb") as f:
            data = f.read()
        if hashlib.sha256(data).digest() != self.digest:
            raise TypeError(f"this InferenceSession cannot be pickled: its model file {self.path!r} "
                            "changed since the session loaded it")
        from onnx.external_data_helper import uses_external_data
        proto = onnx.load_model_from_string(data)    # reads no external files
        if any(uses_external_data(t) for t in proto.graph.initializer):
            return None       # the file alone is not the model: its tensors live in other files
        return data


def _file_digest(path):
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.digest()


def _pickle_source(model):
    if isinstance(model, (bytes, bytearray, memoryview)):
        return _PickleSource(data=bytes(model))       # bytes: the same object, no copy
    if isinstance(model, (str, os.PathLike)):
        path = os.path.abspath(model)
        return _PickleSource(path=path, digest=_file_digest(path))
    return None       # a ModelProto: the optimized model is pickled (the caller's proto may change)


def _rebuild_session(model_bytes, options):
    """The other side of InferenceSession.__reduce__."""
    return InferenceSession(model_bytes, **options)

"""The `normrt` command: run, inspect and benchmark ONNX models.

    normrt run     [MODEL] [--input NAME=FILE.npy ...] [--random-inputs] [--dim NAME=N ...]
                   [--threads N] [--repeat K] [--save-outputs DIR]
    normrt inspect [MODEL]
    normrt bench   [MODEL] [--compare onnxruntime|none] [--repeat K] [--pause SECONDS] [--threads N]
                   [input options]
    normrt batch       MODEL --input NAME=GLOB_OR_NPY ... --out DIR_OR_ZARR [--workers N | --scheduler ADDR] [--chunk K]
    normrt recalibrate MODEL --input NAME=GLOB_OR_NPY ... --out NEW.onnx [--workers N | --scheduler ADDR] [--chunk K]

Without MODEL the commands use the example models bundled with the package
(a GroupNorm+SiLU CNN and a pre-LN transformer block). Errors print one line
on stderr and exit with status 2; `--verbose` also prints the traceback.
"""
import argparse
import os
import re
import sys
import time
import traceback
from importlib import resources

import numpy as np

from . import timing
from .onnx.passes.half_regions import DEFAULT_MODE as DEFAULT_HALF_COMPUTE
from .onnx.passes.half_regions import MODES as HALF_COMPUTE_MODES

EXIT_ERROR = 2
EXIT_INTERRUPTED = 130
RANDOM_SEED = 0
RANDOM_DIM_DEFAULT = 1   # a symbolic dimension's size under --random-inputs unless --dim gives it
RUN_REPEAT_DEFAULT = 10
BENCH_REPEAT_DEFAULT = 20
PROFILE_REPEAT_MAX = 5
BENCH_BLOCKS = 3             # bench: blocks of --repeat runs per runtime (fewer if --repeat is smaller)
PROGRESS_MIN_SECONDS = 1.0   # bench shows a progress bar (on a terminal) when its timed runs take longer

RANDOM_INPUTS_HELP = (
    f"Inputs not given with --input get random data: floats standard normal "
    f"(numpy default_rng seed {RANDOM_SEED}, inputs drawn in graph order), integers "
    f"uniform in [0, 2), bools uniform. A symbolic dimension takes its size from --dim NAME=N "
    f"or from an --input array that has it; otherwise it is an error, unless --random-inputs "
    f"is given, which sets it to {RANDOM_DIM_DEFAULT}.")


class CliError(Exception):
    """A user-facing error: printed as one line, without a traceback."""


# ---- bundled models -------------------------------------------------------

def bundled_models():
    """Paths of the example models shipped inside the package (sorted by name)."""
    root = resources.files("normrt") / "examples"
    try:
        entries = list(root.iterdir())
    except (FileNotFoundError, NotADirectoryError):
        return []
    return sorted(str(p) for p in entries if p.name.endswith(".onnx"))


def _models(args):
    if args.model:
        path = args.model
        if not os.path.exists(path):
            raise CliError(f"model file {path!r} does not exist")
        if os.path.isdir(path):
            raise CliError(f"model {path!r} is a directory, not an .onnx file")
        args.bundled = False
        return [path]
    args.bundled = True
    if getattr(args, "input", None):
        raise CliError("--input needs a MODEL (without one the bundled examples run on random inputs)")
    models = bundled_models()
    if not models:
        raise CliError("no MODEL given and no bundled example models in the package "
                       "(rebuild them with: python scripts/make_fixtures.py --examples)")
    return models


def _session(path, threads, half_compute=DEFAULT_HALF_COMPUTE):
    import normrt
    return normrt.InferenceSession(path, num_threads=threads, half_compute=half_compute)


# ---- inputs ---------------------------------------------------------------

def _parse_pairs(items, what):
    pairs = {}
    for item in items or ():
        name, sep, value = item.partition("=")
        if not sep or not name or not value:
            raise CliError(f"{what} must look like NAME=VALUE, got {item!r}")
        if name in pairs:
            raise CliError(f"{what} {name} is given twice")
        pairs[name] = value
    return pairs


def _input_dtype(type_str):
    """numpy dtype of an input type string 'tensor(float)', or None (not a numpy tensor)."""
    from onnx import TensorProto
    from .onnx._graph import np_dtype
    m = re.fullmatch(r"tensor\((\w+)\)", type_str)
    if not m:
        return None
    try:
        elem = TensorProto.DataType.Value(m.group(1).upper())
    except ValueError:
        return None
    dt = np_dtype(elem)
    return dt if dt is not None and dt.kind in "fiub" else None


def _load_input(name, path):
    try:
        return np.load(path, allow_pickle=False)
    except FileNotFoundError:
        raise CliError(f"input file {path!r} for {name!r} does not exist") from None
    except IsADirectoryError:
        raise CliError(f"input file {path!r} for {name!r} is a directory") from None
    except (OSError, ValueError, EOFError) as e:
        reason = str(e).splitlines()[0] if str(e) else type(e).__name__
        if "pickle" in reason:      # what np.load says of a file that is not .npy at all
            reason = "not in .npy format"
        raise CliError(f"input file {path!r} for {name!r} is not a readable .npy array ({reason})") from None


def _checked_input(inp, arr, path, dims, dim_source):
    """The --input array cast to the input's dtype (same kind only), its shape checked; binds `dims`."""
    if not isinstance(arr, np.ndarray):   # an .npz archive
        raise CliError(f"input file {path!r} for {inp.name!r} is not a .npy array (an .npz archive?)")
    want = _input_dtype(inp.type)
    if want is not None and arr.dtype != want:
        if arr.dtype.kind == want.kind or np.can_cast(arr.dtype, want, "same_kind"):
            arr = arr.astype(want)   # e.g. numpy's default float64 for a float32 input
        else:
            raise CliError(f"input {inp.name!r} must be {want} ({inp.type}), {path!r} holds {arr.dtype}")
    shape = inp.shape
    if shape:
        if arr.ndim != len(shape):
            raise CliError(f"input {inp.name!r} must have rank {len(shape)} (shape {_fmt_dims(shape)}), "
                           f"{path!r} has shape {list(arr.shape)}")
        for i, (d, n) in enumerate(zip(shape, arr.shape)):
            if isinstance(d, int) and d >= 0 and d != n:
                raise CliError(f"input {inp.name!r} must have shape {_fmt_dims(shape)}, {path!r} has "
                               f"shape {list(arr.shape)} (dimension {i} must be {d})")
            if isinstance(d, str):
                if d in dims and dims[d] != n:
                    raise CliError(f"input {inp.name!r} from {path!r} has {d}={n} (dimension {i}), "
                                   f"but {dim_source[d]} has {d}={dims[d]}")
                dims[d] = n
                dim_source.setdefault(d, repr(path))
    return arr


def _resolve_shape(inp, dims, random_inputs):
    shape = []
    for i, d in enumerate(inp.shape):
        if isinstance(d, int) and d >= 0:
            shape.append(d)
        elif isinstance(d, str) and d in dims:
            shape.append(dims[d])
        elif random_inputs:
            shape.append(RANDOM_DIM_DEFAULT)
        elif isinstance(d, str):
            raise CliError(f"input {inp.name!r} has a symbolic dimension {d!r}: give its size with "
                           f"--dim {d}=N, or use --random-inputs (symbolic dims default to {RANDOM_DIM_DEFAULT})")
        else:
            raise CliError(f"input {inp.name!r} has an unnamed dimension of unknown size (dimension {i}): "
                           f"give the input with --input {inp.name}=FILE.npy, or use --random-inputs "
                           f"(unknown dims default to {RANDOM_DIM_DEFAULT})")
    return tuple(shape)


def random_feed(inputs, dims=None, random_inputs=True, seed=RANDOM_SEED):
    """Random data for `inputs` (NodeArgs): see RANDOM_INPUTS_HELP."""
    rng = np.random.default_rng(seed)
    feed = {}
    for inp in inputs:
        dt = _input_dtype(inp.type)
        if dt is None:
            raise CliError(f"input {inp.name!r} has type {inp.type}, which random inputs cannot make: "
                           f"give it with --input {inp.name}=FILE.npy")
        shape = _resolve_shape(inp, dims or {}, random_inputs)
        if dt.kind == "f":
            feed[inp.name] = rng.standard_normal(shape).astype(dt)
        elif dt.kind == "b":
            feed[inp.name] = rng.integers(0, 2, size=shape).astype(bool)
        else:
            feed[inp.name] = rng.integers(0, 2, size=shape).astype(dt)
    return feed


def build_feed(sess, args):
    """{input name: array} from --input files, --dim and random data; and the names made up."""
    inputs = sess.get_inputs()
    names = [i.name for i in inputs]
    files = _parse_pairs(args.input, "--input")
    dims, dim_source = {}, {}
    for k, v in _parse_pairs(args.dim, "--dim").items():
        dims[k] = _int_value(v, f"--dim {k}", minimum=0)
        dim_source[k] = "--dim"
    symbolic = {d for i in inputs for d in i.shape if isinstance(d, str)}
    unknown_dims = sorted(set(dims) - symbolic)
    if unknown_dims:
        known = ", ".join(sorted(symbolic)) or "none"
        raise CliError(f"--dim {unknown_dims[0]}: the model's inputs have no symbolic dimension of that "
                       f"name (symbolic dims: {known})")
    unknown = [n for n in files if n not in names]
    if unknown:
        raise CliError(f"--input {unknown[0]}: the model has no input of that name (inputs: {', '.join(names)})")
    feed = {}
    by_name = {i.name: i for i in inputs}
    for name, path in files.items():
        feed[name] = _checked_input(by_name[name], _load_input(name, path), path, dims, dim_source)
    missing = [i for i in inputs if i.name not in feed]
    feed.update(random_feed(missing, dims, random_inputs=args.random_inputs or args.bundled))
    return {n: feed[n] for n in names}, [i.name for i in missing]


def _int_value(value, what, minimum):
    try:
        n = int(value)
    except (TypeError, ValueError):
        raise CliError(f"{what} must be an integer, got {value!r}") from None
    if n < minimum:
        raise CliError(f"{what} must be >= {minimum}, got {n}")
    return n


def _positive_int(what):
    def parse(value):
        try:
            n = int(value)
        except ValueError:
            raise argparse.ArgumentTypeError(f"{what} must be an integer, got {value!r}") from None
        if n < 1:
            raise argparse.ArgumentTypeError(f"{what} must be >= 1, got {n}")
        return n
    return parse


# ---- formatting -----------------------------------------------------------

def _fmt_dims(shape):
    return "[" + ", ".join(str(d) if d is not None else "?" for d in shape) + "]"


def _fmt_time(seconds):
    if seconds >= 1.0:
        return f"{seconds:.3f} s"
    return f"{seconds * 1e3:.3f} ms"


def _fmt_array(y):
    y = np.asarray(y)
    head = f"{y.dtype} {list(y.shape)}"
    if not y.size or y.dtype.kind not in "fiub":
        return head
    yf = y.astype(np.float64, copy=False)
    finite = np.isfinite(yf)
    bad = int(y.size - np.count_nonzero(finite))
    if bad:
        yf = yf[finite]
    if not yf.size:
        return f"{head}  (all {bad} values non-finite)"
    text = f"{head}  mean {yf.mean():.4g}  std {yf.std():.4g}  min {yf.min():.4g}  max {yf.max():.4g}"
    return text + (f"  ({bad} non-finite)" if bad else "")


def _table(rows, header, indent="  "):
    rows = [[str(c) for c in r] for r in rows]
    widths = [max(len(header[i]), *(len(r[i]) for r in rows)) if rows else len(header[i])
              for i in range(len(header))]
    lines = [indent + "  ".join(h.ljust(w) for h, w in zip(header, widths)).rstrip()]
    for r in rows:
        lines.append(indent + "  ".join(c.ljust(w) for c, w in zip(r, widths)).rstrip())
    return lines


def _threads_used(threads):
    import normrt
    return threads if threads is not None else normrt.get_num_threads()


def _time_runs(fn, repeat):
    times = []
    for _ in range(repeat):
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
    return times


def _safe(name):
    return "".join(c if c.isalnum() or c in "-_." else "_" for c in name) or "output"


def _describe_model(path, args, details=()):
    details = (["bundled example"] if args.bundled else []) + list(details)
    label = os.path.basename(path) if args.bundled else path
    return f"model: {label}" + (f" ({', '.join(details)})" if details else "")


def _print_inputs(sess, feed, made_up, out):
    for inp in sess.get_inputs():
        x = feed[inp.name]
        note = "  (random)" if inp.name in made_up else ""
        print(f"  input   {inp.name}: {x.dtype} {list(x.shape)}{note}", file=out)


# ---- run ------------------------------------------------------------------

def cmd_run(args, out):
    repeat = args.repeat
    for k, path in enumerate(_models(args)):
        sess = _session(path, args.threads, args.half_compute)
        feed, made_up = build_feed(sess, args)
        outputs = sess.run(None, feed)               # also the warm-up
        times = _time_runs(lambda: sess.run(None, feed), repeat)
        if k:
            print(file=out)
        print(_describe_model(path, args), file=out)
        _print_inputs(sess, feed, made_up, out)
        for meta, y in zip(sess.get_outputs(), outputs):
            print(f"  output  {meta.name}: {_fmt_array(y)}", file=out)
        counts = sess.executor.counts()
        print(f"  nodes:  {counts['kernel']} on normrt kernels, {counts['numpy']} numpy, "
              f"{counts['reference']} reference fallback", file=out)
        print(f"  time:   min {_fmt_time(min(times))}, median {_fmt_time(float(np.median(times)))} "
              f"over {repeat} run(s), {_threads_used(args.threads)} thread(s)", file=out)
        if args.save_outputs:
            try:
                os.makedirs(args.save_outputs, exist_ok=True)
            except OSError as e:
                raise CliError(f"cannot create --save-outputs directory {args.save_outputs!r}: "
                               f"{e.strerror or e}") from None
            stem = os.path.splitext(os.path.basename(path))[0]
            for meta, y in zip(sess.get_outputs(), outputs):
                fname = os.path.join(args.save_outputs, f"{stem}.{_safe(meta.name)}.npy")
                try:
                    np.save(fname, np.asarray(y))
                except OSError as e:
                    raise CliError(f"cannot write {fname!r}: {e.strerror or e}") from None
                print(f"  saved   {fname}", file=out)
    return 0


# ---- inspect --------------------------------------------------------------

_BN_FOLD = re.compile(r"(bn|batch_?norm).*fold|fold.*(bn|batch_?norm)", re.I)


def _node_key(node):
    domain = "" if node.domain in ("", "ai.onnx") else node.domain
    return f"{domain}::{node.op_type}" if domain else node.op_type


def _fmt_nodes(nodes, most=2):
    """Node names for a table cell: all of a few, else the first and last and how many."""
    nodes = list(nodes)
    if not nodes:
        return "-"
    if len(nodes) <= most:
        return ", ".join(nodes)
    return f"{nodes[0]} .. {nodes[-1]} ({len(nodes)} nodes)"


def _fmt_shape(tp):
    from .onnx._graph import shape_list
    return "[" + ", ".join("?" if d is None else str(d) for d in shape_list(tp)) + "]"


def _node_dtypes(node, types):
    """A kernel node's element types: 'float16 -> float16', with its weights' where they differ
    ('float16 (weights float32) -> float16': a mixed-precision export's norm); '-' for no node."""
    from .onnx.report import dtype_name
    if node is None or not node.input:
        return "-"
    x = dtype_name(types.get(node.input[0], 0))
    from .onnx.passes._queries import KERNEL_DTYPES
    # float inputs only: GroupQueryAttention's sequence lengths are int32, not weights
    weights = "/".join(sorted({dtype_name(types.get(i, 0)) for i in node.input[1:]
                               if i and types.get(i, 0) in KERNEL_DTYPES} - {x}))
    y = dtype_name(types.get(node.output[0], 0))
    return f"{x} (weights {weights}) -> {y}" if weights else f"{x} -> {y}"


def cmd_inspect(args, out):
    import normrt
    from .onnx._graph import all_nodes
    from .onnx.executor import Executor
    from .onnx.loader import load_model
    from .onnx.report import dtype_name, is_attention, is_epilogue, value_elem_types

    for k, path in enumerate(_models(args)):
        original = load_model(path)
        n_before = len(original.graph.node)
        model, report = normrt.optimize(original, report=True, half_compute=args.half_compute)
        if k:
            print(file=out)
        opset = next((o.version for o in model.opset_import if o.domain in ("", "ai.onnx")), "?")
        print(_describe_model(path, args, [f"opset {opset}", f"{n_before} nodes -> {len(model.graph.node)} "
                                                              f"after normrt.optimize"]), file=out)

        types = value_elem_types(model)
        nodes = {n.name: n for n in all_nodes(model.graph)}      # If branches' fused nodes too
        feeds = {i.name for i in original.graph.input} - {t.name for t in original.graph.initializer}
        print("inputs: " + ", ".join(f"{vi.name} {dtype_name(vi.type.tensor_type.elem_type)} "
                                     f"{_fmt_shape(vi.type)}" for vi in original.graph.input if vi.name in feeds),
              file=out)
        fused = report.get("fused", [])
        n_epilogues = sum(1 for e in fused if is_epilogue(e))
        n_attention = sum(1 for e in fused if is_attention(e))
        print(f"normalizations on normrt kernels: {len(fused) - n_epilogues}", file=out)
        if n_epilogues - n_attention:
            print(f"Conv/MatMul with fused epilogues (bias, residual, activation): {n_epilogues - n_attention}",
                  file=out)
        if n_attention:
            print(f"attention subgraphs on the fused kernel: {n_attention}", file=out)
        if fused:
            rows = []
            for i, e in enumerate(fused, 1):
                extra = [a for a in (e.get("activation"),) if a]
                if e.get("residual"):
                    extra.append("residual")
                op, pattern = e.get("op") or "?", e.get("pattern")
                if pattern and pattern != op:
                    op = pattern if pattern.startswith(op) else f"{op} ({pattern})"
                rows.append([i, op, _fmt_nodes(e.get("nodes", [])), e.get("normrt_op") or "-",
                             e.get("kernel") or "-", "+".join(extra) or "-",
                             _node_dtypes(nodes.get(e.get("normrt_node")), types)])
            for line in _table(rows, ["#", "op / pattern", "nodes", "normrt op", "kernel", "fused",
                                      "dtype (X -> Y)"]):
                print(line, file=out)

        passes = report.get("passes", {})
        folds = sum(v for name, v in passes.items() if _BN_FOLD.search(name) and isinstance(v, int))
        print(f"BatchNorm folded into Conv/Gemm weights: {folds}", file=out)

        try:
            executor = Executor(model)
        except NotImplementedError as e:
            executor = None
            print(f"nodes per executor: cannot run this model ({str(e).splitlines()[0]})", file=out)
        reference_ops = {}
        if executor is not None:
            c = executor.counts()
            print(f"nodes per executor: normrt kernel {c['kernel']}, numpy {c['numpy']}, "
                  f"reference fallback {c['reference']}", file=out)
            for s in executor.steps:
                if s.kind == "reference":
                    key = _node_key(s.node)
                    reference_ops[key] = reference_ops.get(key, 0) + 1

        regions = report.get("half_compute")
        if regions and (regions["regions"] or regions.get("refused")):     # a model with half values
            print(f"half compute float32: {regions['regions']} region(s), {regions['retyped']} half values "
                  f"computed in float32, {regions['up_casts'] + regions['down_casts']} boundary Casts "
                  f"({regions['up_casts']} up, {regions['down_casts']} down), "
                  f"{regions['widened_constants']} constants widened", file=out)
            for e in regions.get("refused", []):
                print(f"  region left per_op [{_fmt_nodes(e['nodes'])}]: {e['reason']}", file=out)

        refused = report.get("refused", [])
        if not refused and not reference_ops and executor is not None:
            print("not handled: none (every normalization is on a kernel, every other op has a numpy "
                  "implementation)", file=out)
        else:
            print("not handled:", file=out)
            for e in refused:
                nodes = ", ".join(e.get("nodes", []))
                by = f" by {e['pass']}" if e.get("pass") else ""
                print(f"  refused{by}: {e.get('op', '?')} [{nodes}]: {e.get('reason')}", file=out)
            for op, n in sorted(reference_ops.items()):
                print(f"  {op} x{n}: no numpy implementation, runs on onnx.reference", file=out)
        done = [f"{name}={v}" for name, v in passes.items() if v]
        print("rewrites per pass: " + (", ".join(done) if done else "none"), file=out)
    return 0


# ---- bench ----------------------------------------------------------------

class _Progress:
    """A one-line progress bar on a terminal stream (nothing elsewhere)."""

    def __init__(self, total, label, stream):
        self.total, self.label, self.stream = total, label, stream
        self.t0 = time.perf_counter()

    def update(self, done):
        width = 30
        filled = int(width * done / self.total)
        elapsed = time.perf_counter() - self.t0
        eta = elapsed / done * (self.total - done) if done else 0.0
        self.stream.write(f"\r{self.label} [{'#' * filled}{'.' * (width - filled)}] "
                          f"{done}/{self.total}  eta {eta:4.1f} s ")
        if done == self.total:
            self.stream.write("\r" + " " * (len(self.label) + width + 30) + "\r")
        self.stream.flush()


def _want_progress(stream, seconds_per_run, repeat):
    isatty = getattr(stream, "isatty", None)
    return bool(isatty and isatty()) and seconds_per_run * repeat >= PROGRESS_MIN_SECONDS


def _ort_session(path, threads):
    import onnxruntime as ort
    so = ort.SessionOptions()
    so.intra_op_num_threads = threads
    so.inter_op_num_threads = 1
    so.log_severity_level = 3
    return ort.InferenceSession(path, so, providers=["CPUExecutionProvider"])


def _nonnegative_float(what):
    def parse(value):
        try:
            x = float(value)
        except ValueError:
            raise argparse.ArgumentTypeError(f"{what} must be a number, got {value!r}") from None
        if not x >= 0 or x == float("inf"):
            raise argparse.ArgumentTypeError(f"{what} must be a finite number >= 0, got {value}")
        return x
    return parse


def _onnxruntime_version():
    import onnxruntime
    return onnxruntime.__version__


def _have_onnxruntime():
    try:
        import onnxruntime  # noqa: F401
    except ImportError:
        return False
    return True


def _max_abs_diff(a, b):
    a, b = np.asarray(a), np.asarray(b)
    if a.shape != b.shape:
        return float("inf")
    if not a.size:
        return 0.0
    if a.dtype.kind not in "fiub" or b.dtype.kind not in "fiub":
        return 0.0 if np.array_equal(a, b) else float("inf")
    return float(np.max(np.abs(a.astype(np.float64) - b.astype(np.float64))))


def cmd_bench(args, out):
    repeat = args.repeat
    compare = args.compare
    if compare == "onnxruntime" and not _have_onnxruntime():
        raise CliError("--compare onnxruntime needs onnxruntime (pip install onnxruntime)")
    if compare is None:
        compare = "onnxruntime" if _have_onnxruntime() else "none"
        if compare == "none":
            print("(onnxruntime is not installed: timing normrt alone)", file=out)
    threads = _threads_used(args.threads)
    for k, path in enumerate(_models(args)):
        sess = _session(path, threads, args.half_compute)
        feed, made_up = build_feed(sess, args)
        t0 = time.perf_counter()
        ours = sess.run(None, feed)                                   # warm-up
        per_run = time.perf_counter() - t0
        ort_sess = ort_out = None
        if compare == "onnxruntime":
            ort_sess = _ort_session(path, threads)
            t0 = time.perf_counter()
            ort_out = ort_sess.run(None, feed)                        # warm-up
            per_run += time.perf_counter() - t0
        runners = {"normrt": lambda: sess.run(None, feed)}
        if ort_sess is not None:
            runners["onnxruntime"] = lambda: ort_sess.run(None, feed)
        blocks = min(BENCH_BLOCKS, repeat)
        progress = None
        if _want_progress(sys.stderr, per_run, blocks * repeat):
            progress = _Progress(blocks * repeat * len(runners), f"bench {os.path.basename(path)}", sys.stderr)
        done = [0]

        def ran():
            done[0] += 1
            progress.update(done[0])
        # each runtime in its own blocks of runs after a pause (normrt.timing says why)
        timed = timing.time_blocks(runners, repeat, blocks=blocks, pause=args.pause, warmup=0,
                                   on_run=ran if progress is not None else None)

        if k:
            print(file=out)
        print(_describe_model(path, args), file=out)
        _print_inputs(sess, feed, made_up, out)
        print(f"  latency, {threads} thread(s), each runtime in its own blocks of runs after a {args.pause:g} s "
              f"pause\n  ({blocks} block(s) of {repeat} run(s) each; best = min over blocks of the block median):",
              file=out)
        rows = [[name if name == "normrt" else f"{name} {_onnxruntime_version()}", _fmt_time(t.best),
                 _fmt_time(t.min), _fmt_time(t.median)] for name, t in timed.items()]
        for line in _table(rows, ["runtime", "best", "min", "median"], indent="    "):
            print(line, file=out)
        if ort_sess is not None:
            ratio = timed["onnxruntime"].best / timed["normrt"].best
            if ratio >= 1:
                verdict = f"normrt is {ratio:.2f}x faster than onnxruntime (best block medians)"
            else:
                verdict = f"normrt is {1 / ratio:.2f}x slower than onnxruntime (best block medians)"
            names = [o.name for o in sess.get_outputs()]
            diffs = [(_max_abs_diff(a, b), n) for a, b, n in zip(ours, ort_out, names)]
            worst, worst_name = max(diffs)
            print(f"  {verdict}", file=out)
            print(f"  max abs difference vs onnxruntime: {worst:.3g}"
                  + (f" (output {worst_name})" if len(names) > 1 else ""), file=out)

        prof_repeat = max(1, min(repeat, PROFILE_REPEAT_MAX))
        prof = sess.profile(feed, repeat=prof_repeat)
        total = sum(prof.values()) or 1.0
        nodes = {}
        for s in sess.executor.steps:
            key = _node_key(s.node)
            nodes[key] = nodes.get(key, 0) + 1
        rows = [[op, nodes.get(op, "?"), _fmt_time(t), f"{100 * t / total:.1f}%"]
                for op, t in sorted(prof.items(), key=lambda kv: -kv[1])]
        print(f"  normrt time by op type (mean of {prof_repeat} profiled run(s), "
              f"total {_fmt_time(sum(prof.values()))}):", file=out)
        for line in _table(rows, ["op type", "nodes", "time", "share"], indent="    "):
            print(line, file=out)
    return 0


# ---- batch and recalibrate (Dask) -----------------------------------------

BATCH_CHUNK_DEFAULT = 32


def _dask_inputs(sess_inputs, items, chunk):
    """{input name: dask array} from --input NAME=GLOB_OR_NPY: every matching .npy file, in sorted
    order, concatenated along axis 0, read by the workers in partitions of `chunk` rows."""
    import glob

    import dask
    import dask.array as da
    pairs = _parse_pairs(items, "--input")
    names = [i.name for i in sess_inputs]
    unknown = [n for n in pairs if n not in names]
    if unknown:
        raise CliError(f"--input {unknown[0]}: the model has no input of that name (inputs: {', '.join(names)})")
    missing = [n for n in names if n not in pairs]
    if missing:
        raise CliError(f"missing --input for {', '.join(missing)} (give NAME=FILE.npy or NAME='DIR/*.npy')")
    by_name = {i.name: i for i in sess_inputs}
    arrays = {}
    for name, pattern in pairs.items():
        files = sorted(glob.glob(pattern)) if glob.has_magic(pattern) else [pattern]
        if not files:
            raise CliError(f"--input {name}={pattern!r}: no file matches")
        want = _input_dtype(by_name[name].type)
        parts, tail = [], None
        for path in files:
            try:
                header = np.load(path, mmap_mode="r", allow_pickle=False)
            except FileNotFoundError:
                raise CliError(f"input file {path!r} for {name!r} does not exist") from None
            except (OSError, ValueError, EOFError) as e:
                raise CliError(f"input file {path!r} for {name!r} is not a readable .npy array "
                               f"({str(e).splitlines()[0] if str(e) else type(e).__name__})") from None
            if not isinstance(header, np.ndarray) or header.ndim == 0:
                raise CliError(f"input file {path!r} for {name!r} must hold an array with a batch axis 0")
            if tail is not None and header.shape[1:] != tail:
                raise CliError(f"input file {path!r} for {name!r} has shape {list(header.shape)}, the files "
                               f"before it have rows of shape {list(tail)}")
            tail = header.shape[1:]
            if want is not None and header.dtype != want and not (
                    header.dtype.kind == want.kind or np.can_cast(header.dtype, want, "same_kind")):
                raise CliError(f"input {name!r} must be {want} ({by_name[name].type}), {path!r} holds {header.dtype}")
            rows = header.shape[0]
            for start in range(0, rows, chunk):
                stop = min(rows, start + chunk)
                block = dask.delayed(_read_rows, pure=True)(os.path.abspath(path), start, stop)
                parts.append(da.from_delayed(block, (stop - start,) + tail, dtype=header.dtype))
        x = da.concatenate(parts, axis=0) if len(parts) > 1 else parts[0]
        if want is not None and x.dtype != want:
            x = x.astype(want)          # e.g. numpy's default float64 for a float32 input
        arrays[name] = x       # partitions of <= chunk rows, cut at file boundaries (no rechunk tasks)
    return arrays


def _read_rows(path, start, stop):
    """Rows [start, stop) of a .npy file, read on the worker (memory-mapped, then copied)."""
    return np.array(np.load(path, mmap_mode="r", allow_pickle=False)[start:stop])


class _Cluster:
    """A distributed Client on --scheduler ADDRESS, or on a LocalCluster of --workers N
    single-thread processes; --workers 0: no cluster, dask's synchronous scheduler here."""

    def __init__(self, args):
        self.args, self.client, self.cluster = args, None, None

    def __enter__(self):
        import logging
        args = self.args
        if args.scheduler is None and args.workers == 0:
            return self
        try:
            import distributed
        except ImportError:
            raise CliError("this command needs dask and distributed: pip install 'normrt[dask]'") from None
        if args.scheduler is not None:
            try:
                self.client = distributed.Client(args.scheduler, timeout="10s")
            except (OSError, TimeoutError) as e:
                raise CliError(f"cannot connect to the Dask scheduler at {args.scheduler!r}: "
                               f"{str(e).splitlines()[0] if str(e) else type(e).__name__}") from None
        else:
            from ._threads import _usable_cores
            n = args.workers if args.workers is not None else _usable_cores()
            self.cluster = distributed.LocalCluster(n_workers=n, threads_per_worker=1, processes=True,
                                                    dashboard_address=None, silence_logs=logging.ERROR)
            self.client = distributed.Client(self.cluster)
        return self

    def __exit__(self, *exc):
        if self.client is not None:
            self.client.close()
        if self.cluster is not None:
            self.cluster.close()

    def describe(self):
        if self.client is None:
            return "this process (dask synchronous scheduler)"
        workers = self.client.scheduler_info(n_workers=-1)["workers"]
        threads = sum(w["nthreads"] for w in workers.values())
        where = self.args.scheduler or "a LocalCluster"
        return f"{len(workers)} worker(s), {threads} thread(s) on {where}"

    def run(self, collections, progress=True):
        """Compute (or persist, for arrays) `collections` with a progress bar; returns the results."""
        import dask
        if self.client is None:
            if progress:
                from dask.diagnostics import ProgressBar
                with ProgressBar(out=sys.stderr):
                    return dask.compute(*collections, scheduler="synchronous")
            return dask.compute(*collections, scheduler="synchronous")
        futures = self.client.compute(list(collections))
        if progress:
            from distributed import progress as dask_progress
            dask_progress(futures)
            print(file=sys.stdout, flush=True)
        return self.client.gather(futures)


def _progress(args):
    """Progress bars unless --no-progress; --progress forces them off a terminal too."""
    if args.no_progress:
        return False
    return args.progress or bool(getattr(sys.stdout, "isatty", None) and sys.stdout.isatty())


def _model_path(args):
    path = args.model
    if not os.path.exists(path):
        raise CliError(f"model file {path!r} does not exist")
    if os.path.isdir(path):
        raise CliError(f"model {path!r} is a directory, not an .onnx file")
    return path


def cmd_batch(args, out):
    import dask.array as da

    import normrt.dask as nd
    path = _model_path(args)
    sess = _session(path, 1)
    inputs = _dask_inputs(sess.get_inputs(), args.input, args.chunk)
    with _Cluster(args) as cluster:
        t0 = time.perf_counter()
        ys = nd.predict(path, inputs, num_threads=args.threads)
        ys = ys if isinstance(ys, list) else [ys]
        names = [o.name for o in sess.get_outputs()]
        zarr = args.out.rstrip("/").endswith(".zarr")
        if zarr:
            try:
                import zarr as _zarr  # noqa: F401
            except ImportError:
                raise CliError("--out *.zarr needs zarr: pip install zarr") from None
            stores = [da.to_zarr(y, args.out, component=_safe(n), compute=False, mode="w" if not i else "a")
                      for i, (n, y) in enumerate(zip(names, ys))]
            cluster.run(stores, progress=_progress(args))
            targets = [os.path.join(args.out, _safe(n)) for n in names]
        else:
            try:
                os.makedirs(args.out, exist_ok=True)
            except OSError as e:
                raise CliError(f"cannot create --out directory {args.out!r}: {e.strerror or e}") from None
            # dask's npy writer computes as it writes: run the model once for all outputs first
            done = cluster.run(ys, progress=_progress(args))
            targets = []
            for n, y in zip(names, done):
                target = os.path.join(args.out, _safe(n))
                da.to_npy_stack(target, da.from_array(y, chunks=(args.chunk,) + y.shape[1:]), axis=0)
                targets.append(target)
        seconds = time.perf_counter() - t0
        rows = next(iter(inputs.values())).shape[0]
        print(f"model: {path}", file=out)
        for name, x in inputs.items():
            print(f"  input   {name}: {x.dtype} {list(x.shape)} in {x.numblocks[0]} partition(s) of "
                  f"<= {args.chunk} rows", file=out)
        for n, y, t in zip(names, ys, targets):
            shape = [int(d) if d == d else "?" for d in y.shape]
            print(f"  output  {n}: {y.dtype} {shape} -> {t}", file=out)
        print(f"  ran on  {cluster.describe()}", file=out)
        print(f"  time:   {_fmt_time(seconds)} ({rows / seconds:.1f} rows/s; first partitions build each "
              f"worker's session)", file=out)
    return 0


def cmd_recalibrate(args, out):
    import onnx

    import normrt
    import normrt.dask as nd
    from .scaleout.recalibrate import check_has_batch_norm
    from .onnx.loader import load_model
    path = _model_path(args)
    levels = check_has_batch_norm(load_model(path))
    sess = _session(path, 1)
    inputs = _dask_inputs(sess.get_inputs(), args.input, args.chunk)
    with _Cluster(args) as cluster:
        t0 = time.perf_counter()
        if cluster.client is None:
            names = [i.name for i in sess.get_inputs()]

            def batches():
                import dask
                blocks = [x.to_delayed().ravel() for x in inputs.values()]
                for parts in zip(*blocks):
                    yield dict(zip(names, dask.compute(*parts, scheduler="synchronous")))
            new = normrt.recalibrate_batch_norm(path, batches, num_threads=args.threads,
                                                progress=_progress(args))
        else:
            new = nd.recalibrate_batch_norm(path, inputs, num_threads=args.threads, progress=_progress(args))
        try:
            onnx.save(new, args.out)
        except OSError as e:
            raise CliError(f"cannot write {args.out!r}: {e.strerror or e}") from None
        seconds = time.perf_counter() - t0
        n_bn = sum(len(lv) for lv in levels)
        rows = next(iter(inputs.values())).shape[0]
        print(f"model: {path}", file=out)
        print(f"  recalibrated {n_bn} BatchNormalization node(s) in {len(levels)} pass(es) over {rows} rows "
              f"(unbiased running_var, as torch stores it)", file=out)
        print(f"  ran on  {cluster.describe()}", file=out)
        print(f"  saved   {args.out}", file=out)
        print(f"  time:   {_fmt_time(seconds)}", file=out)
    return 0


def _add_scaleout_commands(sub):
    def scaleout_options(sp):
        sp.add_argument("model", metavar="MODEL", help="ONNX model file (every worker must be able to read it)")
        sp.add_argument("--verbose", action="store_true", default=argparse.SUPPRESS,
                        help="show tracebacks on errors")
        sp.add_argument("--input", action="append", required=True, metavar="NAME=GLOB_OR_NPY",
                        help="data for the input NAME: a .npy file or a glob of them (concatenated along "
                             "axis 0 in sorted order); repeat for several inputs")
        where = sp.add_mutually_exclusive_group()
        where.add_argument("--workers", type=_nonnegative_int("--workers"), default=None, metavar="N",
                           help="a LocalCluster of N single-thread worker processes (default: one per core; "
                                "0: no cluster, run in this process)")
        where.add_argument("--scheduler", metavar="ADDRESS", default=None,
                           help="run on an existing Dask cluster (e.g. tcp://10.0.0.1:8786)")
        sp.add_argument("--chunk", type=_positive_int("--chunk"), default=BATCH_CHUNK_DEFAULT, metavar="K",
                        help=f"rows per partition (default {BATCH_CHUNK_DEFAULT})")
        sp.add_argument("--threads", type=_positive_int("--threads"), default=None, metavar="N",
                        help="threads per session (default: each worker's own thread count)")
        bar = sp.add_mutually_exclusive_group()
        bar.add_argument("--no-progress", action="store_true", help="no progress bar")
        bar.add_argument("--progress", action="store_true",
                         help="a progress bar even when stdout is not a terminal (default: on a terminal)")

    batch = sub.add_parser("batch", help="run a model over a dataset on a Dask cluster",
                           description="Run MODEL over every row of the --input arrays, in partitions of "
                                       "--chunk rows on a Dask cluster, and write each output to --out: a "
                                       "directory (one dask npy stack per output, DIR/<output>/0.npy, 1.npy, "
                                       "..., read back with dask.array.from_npy_stack) or a .zarr store "
                                       "(one array per output).")
    scaleout_options(batch)
    batch.add_argument("--out", required=True, metavar="DIR_OR_ZARR", help="output directory or *.zarr store")
    batch.set_defaults(fn=cmd_batch)

    recal = sub.add_parser("recalibrate", help="re-estimate BatchNorm statistics over a dataset",
                           description="Re-estimate every BatchNormalization's running mean and variance of "
                                       "MODEL over the --input data (exact dataset statistics, per-partition "
                                       "moments merged with Chan's formula) and save the new model to --out.")
    scaleout_options(recal)
    recal.add_argument("--out", required=True, metavar="NEW.onnx", help="where to save the recalibrated model")
    recal.set_defaults(fn=cmd_recalibrate)


def _nonnegative_int(what):
    def parse(value):
        try:
            n = int(value)
        except ValueError:
            raise argparse.ArgumentTypeError(f"{what} must be an integer, got {value!r}") from None
        if n < 0:
            raise argparse.ArgumentTypeError(f"{what} must be >= 0, got {n}")
        return n
    return parse


# ---- entry point ----------------------------------------------------------

class _Parser(argparse.ArgumentParser):
    """argparse with one-line usage errors."""

    def error(self, message):
        self.exit(EXIT_ERROR, f"{self.prog}: error: {message} (see '{self.prog} --help')\n")


def version_text():
    """`normrt --version`: the version and normrt.cpu_info(), which kernel build runs."""
    import normrt
    info = normrt.cpu_info()
    forced = f", forced by NORMRT_ISA={info['forced']}" if info["forced"] else ""
    return "\n".join([
        f"normrt {normrt.__version__}",
        f"kernels: {info['level']} (this CPU: {info['cpu_level']}{forced}; "
        f"built: {', '.join(info['built_levels'])})",
        f"cpu: {info['brand'] or 'unknown'}",
        f"features: {' '.join(info['features'])}",
        f"bf16 stores: {info['bf16_store']}{_bf16_store_note(info['bf16_store'])}",
        f"int8 products: {info['int8_dot']}"
        + (" (vpdpbusd)" if info["int8_dot"] == "avx512_vnni" else " (quantized models keep the float32 GEMM)"),
    ])


def _bf16_store_note(store):
    """Why bfloat16 stores round the way they do (normrt._isa.bf16_store)."""
    if store == "avx512_bf16":
        return " (vcvtneps2bf16)"
    return " (forced by NORMRT_BF16_INSTRUCTIONS=0)" if os.environ.get("NORMRT_BF16_INSTRUCTIONS") == "0" else ""


class _VersionAction(argparse.Action):
    """--version, computed only when asked (it imports the kernels)."""

    def __init__(self, option_strings, dest=argparse.SUPPRESS, default=argparse.SUPPRESS, help=None):
        super().__init__(option_strings, dest=dest, default=default, nargs=0, help=help)

    def __call__(self, parser, namespace, values, option_string=None):
        print(version_text())
        parser.exit(0)


def _parser():
    p = _Parser(prog="normrt", description=__doc__.split("\n\n")[0],
                epilog="Run 'normrt COMMAND --help' for a command's options.")
    p.add_argument("--version", action=_VersionAction,
                   help="print the version and the CPU level the kernels run at, and exit")
    p.add_argument("--verbose", action="store_true", help="show tracebacks on errors, and numpy floating-point warnings")
    sub = p.add_subparsers(dest="command", metavar="COMMAND", parser_class=_Parser)
    sub.required = True

    def common(sp, what):
        sp.add_argument("model", nargs="?", metavar="MODEL",
                        help=f"ONNX model file (default: {what} the bundled example models)")
        sp.add_argument("--verbose", action="store_true", default=argparse.SUPPRESS,
                        help="show tracebacks on errors, and numpy floating-point warnings")
        sp.add_argument("--half-compute", choices=list(HALF_COMPUTE_MODES), default=DEFAULT_HALF_COMPUTE,
                        help="how a float16/bfloat16 model computes: float32 (default) keeps values in "
                             "float32 between float32 ops and rounds at the region boundaries, as "
                             "onnxruntime's CPU provider does; per_op rounds each op's result to half")

    def inputs(sp, default_repeat):
        g = sp.add_argument_group("inputs", RANDOM_INPUTS_HELP)
        g.add_argument("--input", action="append", metavar="NAME=FILE.npy",
                       help="data for the input NAME (a .npy file; repeat for several inputs)")
        g.add_argument("--random-inputs", action="store_true",
                       help=f"allow random data with symbolic dims not given by --dim "
                            f"(they default to {RANDOM_DIM_DEFAULT})")
        g.add_argument("--dim", action="append", metavar="NAME=N",
                       help="size of the symbolic dimension NAME (e.g. --dim batch=4)")
        sp.add_argument("--threads", type=_positive_int("--threads"), default=None, metavar="N",
                        help="threads (default: normrt.get_num_threads(), i.e. OMP_NUM_THREADS or the cores)")
        sp.add_argument("--repeat", type=_positive_int("--repeat"), default=default_repeat, metavar="K",
                        help=f"timed runs after one warm-up run (default {default_repeat})")

    run = sub.add_parser("run", help="run a model: outputs, shapes, a summary and timing",
                         description="Run MODEL (or each bundled example) and print its inputs, its outputs' "
                                     "names, shapes and statistics, and the min/median time over K runs.")
    common(run, "run")
    inputs(run, RUN_REPEAT_DEFAULT)
    run.add_argument("--save-outputs", metavar="DIR",
                     help="save each output as DIR/<model name>.<output name>.npy")
    run.set_defaults(fn=cmd_run)

    ins = sub.add_parser("inspect", help="what normrt.optimize does to a model",
                         description="Show each normalization normrt.optimize put on a kernel (op or pattern, "
                                     "nodes, kernel, fused activation/residual), BatchNorm folds, how many "
                                     "nodes run on normrt kernels / numpy / the onnx.reference fallback, "
                                     "and what it could not handle.")
    common(ins, "inspect")
    ins.set_defaults(fn=cmd_inspect)

    bench = sub.add_parser("bench", help="latency of normrt vs onnxruntime, and a per-op-type profile",
                           description="Time MODEL (or each bundled example) with normrt and onnxruntime on the "
                                       "same inputs and thread count, each runtime in its own blocks of K runs "
                                       "after a pause (so neither pays for the other's spinning threads), print "
                                       "the max abs difference of their outputs and where normrt's time goes by "
                                       "op type.")
    common(bench, "benchmark")
    inputs(bench, BENCH_REPEAT_DEFAULT)
    bench.add_argument("--compare", choices=["onnxruntime", "none"], default=None,
                       help="runtime to compare with (default: onnxruntime when installed)")
    bench.add_argument("--pause", type=_nonnegative_float("--pause"), default=timing.PAUSE_SECONDS,
                       metavar="SECONDS",
                       help=f"sleep before each block of runs, so the previous runtime's threads are idle "
                            f"(default {timing.PAUSE_SECONDS:g})")
    bench.set_defaults(fn=cmd_bench)
    _add_scaleout_commands(sub)
    return p


def _one_line(e):
    from .errors import ModelError
    if isinstance(e, (CliError, ModelError)):
        return str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
    text = str(e).strip()
    first = text.splitlines()[0].strip() if text else ""
    if isinstance(e, (FileNotFoundError, PermissionError, IsADirectoryError)) and e.filename:
        first = f"{e.strerror}: {e.filename!r}"
    name = type(e).__name__
    return f"{name}: {first}" if first else name


def main(argv=None, out=None):
    """The `normrt` command; returns the exit status (0 ok, 2 error, 130 interrupted)."""
    out = out or sys.stdout
    args = _parser().parse_args(argv)
    try:
        if args.verbose:
            return args.fn(args, out)
        # numpy's divide-by-zero/overflow warnings from the model's ops (random inputs make
        # them common, e.g. fully masked attention rows): the output summary counts non-finite values
        with np.errstate(all="ignore"):
            return args.fn(args, out)
    except KeyboardInterrupt:
        print("normrt: interrupted", file=sys.stderr)
        return EXIT_INTERRUPTED
    except Exception as e:  # noqa: BLE001 - one clear line, never a traceback unless asked
        if args.verbose:
            traceback.print_exc()
        print(f"normrt: error: {_one_line(e)}", file=sys.stderr)
        return EXIT_ERROR


if __name__ == "__main__":
    sys.exit(main())

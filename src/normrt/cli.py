"""The `normrt` command: run, inspect and benchmark ONNX models.

    normrt run [MODEL] [--input NAME=FILE.npy ...] [--random-inputs] [--dim NAME=N ...]
               [--threads N] [--repeat K] [--save-outputs DIR]
    normrt inspect MODEL
    normrt bench [MODEL] [--compare onnxruntime] [--repeat K] [--threads N]

Without MODEL, `run` and `bench` use the bundled example models. Errors print
one line and exit with status 2 (`--verbose` shows the traceback).
"""
import argparse
import os
import sys
import time
import traceback
from importlib import resources

import numpy as np

EXIT_ERROR = 2
RANDOM_DIM_DEFAULT = 1  # a symbolic dimension's size under --random-inputs unless --dim gives it


class CliError(Exception):
    """A user-facing error: printed as one line."""


# ---- inputs ---------------------------------------------------------------

def bundled_models():
    """Paths of the example models shipped inside the package."""
    root = resources.files("normrt") / "examples"
    return sorted(str(p) for p in root.iterdir() if p.name.endswith(".onnx"))


def _parse_pairs(items, what):
    pairs = {}
    for item in items or ():
        name, sep, value = item.partition("=")
        if not sep or not name or not value:
            raise CliError(f"{what} must look like NAME=VALUE, got {item!r}")
        pairs[name] = value
    return pairs


def _np_dtype(type_str):
    from .onnx.session import numpy_dtype_of
    return numpy_dtype_of(type_str)


def _resolve_shape(inp, dims, random_inputs):
    shape = []
    for d in inp.shape:
        if isinstance(d, int) and d >= 0:
            shape.append(d)
            continue
        key = d if isinstance(d, str) else None
        if key is not None and key in dims:
            shape.append(dims[key])
        elif random_inputs:
            shape.append(RANDOM_DIM_DEFAULT)
        else:
            raise CliError(
                f"input {inp.name!r} has a symbolic dimension {d!r}: give its size with "
                f"--dim {d if key else 'NAME'}=N, or use --random-inputs (symbolic dims default to "
                f"{RANDOM_DIM_DEFAULT})")
    return tuple(shape)


def random_feed(inputs, dims=None, random_inputs=True, seed=0):
    """Random inputs for a session's inputs: normal floats, small non-negative ints, bools."""
    rng = np.random.default_rng(seed)
    feed = {}
    for inp in inputs:
        shape = _resolve_shape(inp, dims or {}, random_inputs)
        dt = _np_dtype(inp.type)
        if dt.kind == "f":
            feed[inp.name] = rng.standard_normal(shape).astype(dt)
        elif dt.kind in "iu":
            feed[inp.name] = rng.integers(0, 2, size=shape).astype(dt)
        elif dt.kind == "b":
            feed[inp.name] = rng.integers(0, 2, size=shape).astype(bool)
        else:
            raise CliError(f"input {inp.name!r} has type {inp.type}; give it with --input {inp.name}=FILE.npy")
    return feed


def build_feed(sess, args):
    files = _parse_pairs(args.input, "--input")
    dims = {k: _int_arg(v, f"--dim {k}") for k, v in _parse_pairs(args.dim, "--dim").items()}
    names = [i.name for i in sess.get_inputs()]
    unknown = sorted(set(files) - set(names))
    if unknown:
        raise CliError(f"--input names {unknown} are not inputs of the model (inputs: {names})")
    feed = {}
    for name, path in files.items():
        try:
            feed[name] = np.load(path, allow_pickle=False)
        except FileNotFoundError:
            raise CliError(f"input file {path!r} for {name!r} does not exist") from None
        except (OSError, ValueError) as e:
            raise CliError(f"input file {path!r} for {name!r} is not a .npy array: {e}") from None
    missing = [i for i in sess.get_inputs() if i.name not in feed]
    if missing and not args.random_inputs and not args.bundled:
        # Shapes fully known: still refuse to invent data silently.
        raise CliError(
            f"no data for inputs {[i.name for i in missing]}: pass --input NAME=FILE.npy or --random-inputs")
    feed.update(random_feed(missing, dims, random_inputs=args.random_inputs or args.bundled))
    return feed


def _int_arg(value, what):
    try:
        n = int(value)
    except ValueError:
        raise CliError(f"{what} must be an integer, got {value!r}") from None
    if n < 0:
        raise CliError(f"{what} must be >= 0, got {n}")
    return n


# ---- commands -------------------------------------------------------------

def _models(args):
    if args.model:
        if not os.path.exists(args.model):
            raise CliError(f"model file {args.model!r} does not exist")
        args.bundled = False
        return [args.model]
    args.bundled = True
    models = bundled_models()
    if not models:
        raise CliError("no MODEL given and no bundled example models found in the package")
    return models


def _session(path, threads):
    import normrt
    return normrt.InferenceSession(path, num_threads=threads)


def _time_runs(fn, repeat):
    times = []
    for _ in range(repeat):
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
    return times


def _fmt_ms(seconds):
    return f"{seconds * 1e3:.3f} ms"


def cmd_run(args, out):
    repeat = max(1, args.repeat)
    for path in _models(args):
        sess = _session(path, args.threads)
        feed = build_feed(sess, args)
        outputs = sess.run(None, feed)  # warm-up, and the outputs reported
        times = _time_runs(lambda: sess.run(None, feed), repeat)
        print(f"model: {path}", file=out)
        for inp in sess.get_inputs():
            print(f"  input  {inp.name}: {feed[inp.name].dtype}{list(feed[inp.name].shape)}", file=out)
        for meta, y in zip(sess.get_outputs(), outputs):
            y = np.asarray(y)
            summary = ""
            if y.size and y.dtype.kind in "fiub":
                yf = y.astype(np.float64)
                summary = f"  min {yf.min():.6g}  max {yf.max():.6g}  mean {yf.mean():.6g}"
            print(f"  output {meta.name}: {y.dtype}{list(y.shape)}{summary}", file=out)
        print(f"  time over {repeat} run(s): min {_fmt_ms(min(times))}, "
              f"median {_fmt_ms(float(np.median(times)))}", file=out)
        if args.save_outputs:
            os.makedirs(args.save_outputs, exist_ok=True)
            stem = os.path.splitext(os.path.basename(path))[0]
            for meta, y in zip(sess.get_outputs(), outputs):
                fname = os.path.join(args.save_outputs, f"{stem}.{_safe(meta.name)}.npy")
                np.save(fname, np.asarray(y))
                print(f"  saved {fname}", file=out)
    return 0


def _safe(name):
    return "".join(c if c.isalnum() or c in "-_." else "_" for c in name)


def cmd_inspect(args, out):
    import normrt
    from .onnx.loader import load_model
    from .onnx.report import format_report
    path = _models(args)[0]
    model = load_model(path)
    _, report = normrt.optimize(model, report=True)
    print(f"model: {path}", file=out)
    print(format_report(report), file=out)
    return 0


def _progress(i, n, label, stream):
    if not stream.isatty() and n < 20:
        return
    width = 30
    done = int(width * (i + 1) / n)
    stream.write(f"\r{label} [{'#' * done}{'.' * (width - done)}] {i + 1}/{n}")
    if i + 1 == n:
        stream.write("\n")
    stream.flush()


def cmd_bench(args, out):
    repeat = max(1, args.repeat)
    threads = args.threads
    for path in _models(args):
        sess = _session(path, threads)
        feed = build_feed(sess, args)
        ours = sess.run(None, feed)
        t_normrt, t_ort = [], []
        ort_sess = None
        if args.compare == "onnxruntime":
            ort_sess = _ort_session(path, threads or _default_threads())
        ort_out = ort_sess.run(None, feed) if ort_sess is not None else None
        for i in range(repeat):
            t0 = time.perf_counter()
            sess.run(None, feed)
            t_normrt.append(time.perf_counter() - t0)
            if ort_sess is not None:
                t0 = time.perf_counter()
                ort_sess.run(None, feed)
                t_ort.append(time.perf_counter() - t0)
            _progress(i, repeat, "bench", sys.stderr)
        print(f"model: {path}", file=out)
        print(f"  normrt       min {_fmt_ms(min(t_normrt))}  median {_fmt_ms(float(np.median(t_normrt)))}", file=out)
        if ort_sess is not None:
            ratio = min(t_normrt) / min(t_ort)
            diff = max((float(np.max(np.abs(np.asarray(a, np.float64) - np.asarray(b, np.float64))))
                        if np.asarray(a).size else 0.0) for a, b in zip(ours, ort_out))
            print(f"  onnxruntime  min {_fmt_ms(min(t_ort))}  median {_fmt_ms(float(np.median(t_ort)))}", file=out)
            print(f"  normrt / onnxruntime latency ratio: {ratio:.2f}x   max abs diff: {diff:.3g}", file=out)
        prof = sess.profile(feed, repeat=max(1, min(repeat, 5)))
        total = sum(prof.values()) or 1.0
        print("  time by op type (normrt):", file=out)
        for op, t in sorted(prof.items(), key=lambda kv: -kv[1])[:12]:
            print(f"    {op:<28} {_fmt_ms(t):>12}  {100 * t / total:5.1f}%", file=out)
    return 0


def _default_threads():
    import normrt
    return normrt.get_num_threads()


def _ort_session(path, threads):
    try:
        import onnxruntime as ort
    except ImportError:
        raise CliError("--compare onnxruntime needs onnxruntime: pip install 'normrt[bench]'") from None
    so = ort.SessionOptions()
    so.intra_op_num_threads = threads
    so.inter_op_num_threads = 1
    return ort.InferenceSession(path, so, providers=["CPUExecutionProvider"])


# ---- entry point ----------------------------------------------------------

def _parser():
    p = argparse.ArgumentParser(prog="normrt", description=__doc__.split("\n\n")[0])
    p.add_argument("--verbose", action="store_true", help="show tracebacks on errors")
    sub = p.add_subparsers(dest="command", required=True)

    def common(sp, model_optional=True):
        sp.add_argument("model", nargs="?" if model_optional else None, metavar="MODEL",
                        help="ONNX model file" + (" (default: the bundled examples)" if model_optional else ""))
        sp.add_argument("--verbose", action="store_true", default=argparse.SUPPRESS,
                        help="show tracebacks on errors")

    def inputs(sp):
        sp.add_argument("--input", action="append", metavar="NAME=FILE.npy", help="an input's data")
        sp.add_argument("--random-inputs", action="store_true",
                        help=f"random data for inputs not given (symbolic dims default to {RANDOM_DIM_DEFAULT})")
        sp.add_argument("--dim", action="append", metavar="NAME=N", help="size of a symbolic dimension")
        sp.add_argument("--threads", type=int, default=None, metavar="N", help="kernel threads")
        sp.add_argument("--repeat", type=int, default=10, metavar="K", help="timed runs (default 10)")

    run = sub.add_parser("run", help="run a model and time it")
    common(run)
    inputs(run)
    run.add_argument("--save-outputs", metavar="DIR", help="save each output as DIR/<model>.<output>.npy")
    run.set_defaults(fn=cmd_run)

    ins = sub.add_parser("inspect", help="show what normrt.optimize does to a model")
    common(ins, model_optional=False)
    ins.set_defaults(fn=cmd_inspect)

    bench = sub.add_parser("bench", help="end-to-end latency vs onnxruntime, and an op-type profile")
    common(bench)
    inputs(bench)
    bench.add_argument("--compare", choices=["onnxruntime", "none"], default="onnxruntime",
                       help="runtime to compare with (default onnxruntime)")
    bench.set_defaults(fn=cmd_bench)
    return p


def main(argv=None, out=None):
    out = out or sys.stdout
    args = _parser().parse_args(argv)
    try:
        if args.threads is not None and args.threads <= 0 if hasattr(args, "threads") else False:
            raise CliError(f"--threads must be >= 1, got {args.threads}")
        return args.fn(args, out)
    except KeyboardInterrupt:
        print("normrt: interrupted", file=sys.stderr)
        return 130
    except Exception as e:  # one clear line, never a traceback unless asked
        if args.verbose:
            traceback.print_exc()
        msg = str(e) if isinstance(e, CliError) else f"{type(e).__name__}: {e}"
        print(f"normrt: error: {msg}", file=sys.stderr)
        return EXIT_ERROR


if __name__ == "__main__":
    sys.exit(main())

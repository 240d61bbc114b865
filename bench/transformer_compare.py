"""Transformer models, normrt vs onnxruntime: end to end, and where the time goes by kind of op.

    python -m bench.transformer_compare                          # bert128 llama128 transformer_block
    python -m bench.transformer_compare llama128 --runs 30 --blocks 5 --threads 2
    python -m bench.transformer_compare bert128 --export legacy17 --ops    # + the op types in each kind
    python -m bench.transformer_compare path/to/model.onnx

Models: bert128 and llama128 are scripts/e2e_bench.py's (transformers, hidden
256, 4 layers, 128 tokens; exported once into its cache, default the dynamo
exporter at opset 23, `--export legacy13|legacy17|dynamo23`); transformer_block
and any other name is a bundled example (src/normrt/examples/NAME.onnx); a path
is taken as it is. Inputs: e2e_bench.random_feeds.

End to end (normrt.timing.time_blocks): each runtime runs in its own blocks of
--runs runs after a pause (onnxruntime's pool threads spin after its runs and
would slow normrt's next ones), --blocks rounds; a time is the min over blocks
of the block median.

The breakdown groups op types into KINDS (MatMul/Gemm, attention, norms,
Softmax, elementwise, other) from normrt's own profile
(InferenceSession.profile: its interpreted loop, every node timed) and
onnxruntime's profiler (a second session with enable_profiling; the
`*_kernel_time` events). Both are means over --profile-runs runs. Profiled
runs cost more than plain ones (a timer around every node), so the shares are
what to compare and the sums are printed beside the end-to-end times.
Each runtime names its fused nodes its own way (normrt::MatMul carries its
bias/activation epilogue, onnxruntime's FusedMatMul / SkipLayerNormalization
theirs): a kind holds whatever node the runtime made of that part of the graph.
"""
import argparse
import json
import os
import sys
import time
from pathlib import Path

import numpy as np

from .conv_shapes import e2e_bench_module, default_cache

DEFAULT_MODELS = ("bert128", "llama128", "transformer_block")
EXAMPLES = Path(__file__).resolve().parents[1] / "src" / "normrt" / "examples"
KINDS = ("MatMul/Gemm", "attention", "norms", "Softmax", "elementwise", "other")

# Op types by kind, without their domain (both runtimes' spellings: onnx, com.microsoft, normrt).
# Conv is a GEMM in normrt (and in onnxruntime's MLAS) and counted with the products.
_PRODUCTS = {"MatMul", "Gemm", "FusedMatMul", "MatMulInteger", "MatMulNBits", "Conv", "FusedConv", "Einsum",
             # normrt's 8-bit products (passes/quantized_products.py)
             "QMatMul", "QBatchedMatMul", "QLinearMatMul", "QLinearConv", "ConvInteger"}
_ATTENTION = {"Attention", "MultiHeadAttention", "GroupQueryAttention", "RotaryEmbedding",
              "PackedMultiHeadAttention", "DecoderMaskedMultiHeadAttention"}
_NORMS = {"LayerNormalization", "SimplifiedLayerNormalization", "SkipLayerNormalization",
          "SkipSimplifiedLayerNormalization", "RMSNormalization", "BatchNormalization",
          "InstanceNormalization", "GroupNormalization", "GroupNorm", "SkipGroupNorm",
          "MeanVarianceNormalization", "LpNormalization", "LRN", "EmbedLayerNormalization"}
_SOFTMAX = {"Softmax", "LogSoftmax"}
_ELEMENTWISE = {"Add", "Sub", "Mul", "Div", "Pow", "Sqrt", "Reciprocal", "Exp", "Log", "Erf", "Tanh",
                "Sigmoid", "Relu", "LeakyRelu", "Elu", "Gelu", "FastGelu", "BiasGelu", "QuickGelu",
                "HardSigmoid", "HardSwish", "Softplus", "Mish", "Neg", "Abs", "Max", "Min", "Where",
                "Equal", "Less", "Greater", "LessOrEqual", "GreaterOrEqual", "Not", "And", "Or",
                "Cast", "Clip", "Sin", "Cos", "BiasAdd", "BiasSplitGelu", "Elementwise",
                # quantize_dynamic's inputs, dequantized again (normrt's fused pair and the ops)
                "FakeQuant", "DynamicFakeQuant", "QuantizeLinear", "DequantizeLinear", "DynamicQuantizeLinear"}


def op_kind(key):
    """The KINDS entry of an op key: 'MatMul', 'normrt::LayerNorm', 'com.microsoft::FastGelu'."""
    op = key.rsplit("::", 1)[-1]
    if key.startswith("normrt::"):
        from normrt.onnx.domain import NORM_OPS
        spec = NORM_OPS.get(op)
        if spec is not None and spec.norm and not spec.compute_bound:
            return "norms"          # normrt's norm ops, as domain.py lists them
    for kind, ops in (("MatMul/Gemm", _PRODUCTS), ("attention", _ATTENTION), ("norms", _NORMS),
                      ("Softmax", _SOFTMAX), ("elementwise", _ELEMENTWISE)):
        if op in ops:
            return kind
    return "other"


def by_kind(per_op):
    """{kind: seconds} (every KINDS entry) from {op key: seconds}."""
    out = dict.fromkeys(KINDS, 0.0)
    for key, seconds in per_op.items():
        out[op_kind(key)] += seconds
    return out


def ort_profile_per_op(events, runs):
    """{op type: seconds per run} from onnxruntime profiler `events` (its JSON list) over `runs` runs:
    the node events' `*_kernel_time` durations (microseconds) summed by their op_name."""
    out = {}
    for e in events:
        if e.get("cat") != "Node" or not e.get("name", "").endswith("_kernel_time"):
            continue
        op = e.get("args", {}).get("op_name", "?")
        out[op] = out.get(op, 0.0) + e["dur"] * 1e-6 / runs
    return out


def resolve(name, cache, export="dynamo23"):
    """The .onnx path of a model argument: an e2e_bench torch model (exported into `cache` by
    `export` if not there yet), a bundled example's name, or a path."""
    e2e = e2e_bench_module()
    if name in e2e.TORCH_MODELS:
        exporter, opset = export.rstrip("0123456789"), int(export[len(export.rstrip("0123456789")):])
        paths = e2e.export_torch(name, cache, exports=[(exporter, opset)])
        if export not in paths:
            raise SystemExit(f"{name}: no {export} export (see the message above)")
        return paths[export]
    if (EXAMPLES / f"{name}.onnx").exists():
        return EXAMPLES / f"{name}.onnx"
    if Path(name).exists():
        return Path(name)
    raise SystemExit(f"unknown model {name!r}: not one of {e2e.TORCH_MODELS}, a bundled example "
                     f"({', '.join(p.stem for p in sorted(EXAMPLES.glob('*.onnx')))}) or a file")


def _sessions(path, threads, profiling_dir=None):
    import onnxruntime as ort

    import normrt
    so = ort.SessionOptions()
    so.intra_op_num_threads = threads
    so.inter_op_num_threads = 1
    so.log_severity_level = 3
    if profiling_dir is not None:
        so.enable_profiling = True
        so.profile_file_prefix = str(Path(profiling_dir) / "ort_profile")
    return (normrt.InferenceSession(str(path), num_threads=threads),
            ort.InferenceSession(str(path), so, providers=["CPUExecutionProvider"]))


def profiles(path, feeds, threads, runs):
    """({op key: s per run} of normrt, {op type: s per run} of onnxruntime), means over `runs`
    profiled runs after one warm-up each."""
    import tempfile
    with tempfile.TemporaryDirectory() as tmp:
        sess, ref = _sessions(path, threads, profiling_dir=tmp)
        sess.profile(feeds)
        normrt_ops = sess.profile(feeds, repeat=runs)
        ref.run(None, feeds)            # (the warm-up is in the profile too: counted in `runs + 1`)
        for _ in range(runs):
            ref.run(None, feeds)
        with open(ref.end_profiling()) as f:
            ort_ops = ort_profile_per_op(json.load(f), runs + 1)
    return normrt_ops, ort_ops


def end_to_end(path, feeds, threads, runs, blocks, pause):
    """{'normrt': Timings, 'onnxruntime': Timings} and the largest relative output difference."""
    from normrt import timing
    sess, ref = _sessions(path, threads)
    fns = {"normrt": lambda: sess.run(None, feeds), "onnxruntime": lambda: ref.run(None, feeds)}
    timed = timing.time_blocks(fns, runs, blocks=blocks, pause=pause, warmup=3)
    rel = 0.0
    for x, y in zip(sess.run(None, feeds), ref.run(None, feeds)):
        scale = float(np.max(np.abs(y))) if y.size else 0.0
        diff = float(np.max(np.abs(x.astype(np.float64) - y))) if y.size else 0.0
        rel = max(rel, diff / scale if scale else diff)
    return timed, rel


def breakdown_rows(normrt_ops, ort_ops):
    """[(kind, normrt s, normrt share, ort s, ort share)] for every KINDS entry, then 'total'."""
    kn, ko = by_kind(normrt_ops), by_kind(ort_ops)
    tn, to = sum(kn.values()) or 1.0, sum(ko.values()) or 1.0
    rows = [(k, kn[k], kn[k] / tn, ko[k], ko[k] / to) for k in KINDS]
    rows.append(("total", sum(kn.values()), 1.0, sum(ko.values()), 1.0))
    return rows


def format_breakdown(rows):
    """Markdown lines of breakdown_rows (ms per run, share, normrt / onnxruntime)."""
    lines = ["| kind | normrt ms | share | onnxruntime ms | share | normrt / ort |", "|---|---|---|---|---|---|"]
    for kind, n, ns, o, os_ in rows:
        ratio = f"{n / o:.2f}x" if o > 0 else "-"
        lines.append(f"| {kind} | {n * 1e3:.3f} | {100 * ns:.0f}% | {o * 1e3:.3f} | {100 * os_:.0f}% | {ratio} |")
    return lines


def format_ops(per_op, runtime):
    """Markdown lines: every op key of one runtime with its kind, ms per run, largest first."""
    lines = [f"| {runtime} op | kind | ms |", "|---|---|---|"]
    for key, s in sorted(per_op.items(), key=lambda kv: -kv[1]):
        lines.append(f"| {key} | {op_kind(key)} | {s * 1e3:.3f} |")
    return lines


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("models", nargs="*", default=list(DEFAULT_MODELS),
                    help=f"model names or .onnx paths (default: {' '.join(DEFAULT_MODELS)})")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--runs", type=int, default=20, help="timed runs per block (default 20)")
    ap.add_argument("--blocks", type=int, default=5, help="blocks per runtime (default 5)")
    ap.add_argument("--pause-ms", type=float, default=200.0, help="sleep before each block (default 200)")
    ap.add_argument("--profile-runs", type=int, default=20, help="profiled runs per runtime (default 20)")
    ap.add_argument("--export", default="dynamo23", choices=[f"{e}{o}" for e, o in e2e_bench_module().EXPORTS],
                    help="which export of bert128 / llama128 (default dynamo23)")
    ap.add_argument("--ops", action="store_true", help="also list every op type of both runtimes")
    ap.add_argument("--cache", type=Path, default=default_cache(), help="scripts/e2e_bench.py's export cache")
    args = ap.parse_args(argv)
    import onnxruntime as ort

    import normrt
    paths = [(name, resolve(name, args.cache, args.export)) for name in args.models]
    load0 = os.getloadavg()[0]
    print(f"normrt {normrt.__version__} ({normrt.cpu_info()['level']}), onnxruntime {ort.__version__}, "
          f"{args.threads} threads; end to end: min over {args.blocks} blocks of the median of {args.runs} "
          f"runs, each runtime in its own blocks after a {args.pause_ms:g} ms pause; load average "
          f"{load0:.2f}")
    summary = []
    for name, path in paths:
        feeds = e2e_bench_module().random_feeds(path)
        t0 = time.perf_counter()
        timed, rel = end_to_end(path, feeds, args.threads, args.runs, args.blocks, args.pause_ms / 1e3)
        normrt_ops, ort_ops = profiles(path, feeds, args.threads, args.profile_runs)
        n, o = timed["normrt"].best, timed["onnxruntime"].best
        summary.append((name, n, o))
        print(f"\n### {name} ({path.name})\n")
        print(f"end to end: normrt {n * 1e3:.3f} ms, onnxruntime {o * 1e3:.3f} ms: {n / o:.2f}x "
              f"(max rel diff {rel:.1e}; {time.perf_counter() - t0:.0f} s)\n")
        print(f"by kind of op (profiled runs, mean of {args.profile_runs}):\n")
        print("\n".join(format_breakdown(breakdown_rows(normrt_ops, ort_ops))))
        if args.ops:
            print()
            print("\n".join(format_ops(normrt_ops, "normrt")))
            print()
            print("\n".join(format_ops(ort_ops, "onnxruntime")))
        sys.stdout.flush()
    print("\n| model | normrt ms | onnxruntime ms | normrt / ort |\n|---|---|---|---|")
    for name, n, o in summary:
        print(f"| {name} | {n * 1e3:.3f} | {o * 1e3:.3f} | {n / o:.2f}x |")
    print(f"\nload average {load0:.2f} at start, {os.getloadavg()[0]:.2f} at end (1 min)")
    return 0


if __name__ == "__main__":
    sys.exit(main())

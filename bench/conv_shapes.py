"""Per-shape convolution benchmark: normrt's conv against onnxruntime's Conv on
the conv shapes of whole CNNs.

Where a CNN's time goes against onnxruntime, conv by conv: every group-1 2-D
Conv of the models (scripts/e2e_bench.py's list, plus the cached style-transfer
exports under its cache when present: tiny-M 9x9 output convs, 3-channel 9x9
input convs), each unique shape once with its count in the model. Each
implementation computes the same conv from the same arrays (normrt: weight
packed once, `normrt.conv2d(..., out=)`; onnxruntime: a one-node Conv model,
io_binding; see bench/gemm.py, whose runners and float64 check this reuses),
each in its own block of calls after a pause (onnxruntime's pool threads spin
after a run), ROUNDS rounds; a time is the minimum over all calls. It prints
per shape both times and their ratio, and per model the count-weighted sums:
the conv time of one inference if every conv ran alone and warm (a model's
convs also stream their weights from memory, which this does not see).

    python -m bench.conv_shapes [--threads 2] [--repeat 10] [--only resnet,densenet] [--markdown]

The fixed list SHAPE_CASES (no model files needed) runs under pytest-benchmark
in bench/test_gemm.py, normrt and onnxruntime.
"""
import argparse
import collections
import os
from pathlib import Path

from .cases import bench_threads
from .gemm import SETTLE, GemmCase, time_case

IMPLS = ("normrt", "ort")
ROUNDS = 3
ROOT = Path(__file__).resolve().parents[1]

# Shapes that decide whole-model ratios, without the model files (pytest-benchmark):
SHAPE_CASES = [
    GemmCase("conv2d", (1, 3, 224, 224), (64, 3, 7, 7), 2, 3, "ResNet/DenseNet stem"),
    GemmCase("conv2d", (1, 128, 14, 14), (32, 128, 3, 3), 1, 1, "DenseNet 3x3 growth conv, 14x14"),
    GemmCase("conv2d", (1, 128, 7, 7), (32, 128, 3, 3), 1, 1, "DenseNet 3x3 growth conv, 7x7"),
    GemmCase("conv2d", (1, 256, 56, 56), (64, 256, 1, 1), note="ResNet 1x1 reduce, C >= 2M"),
    GemmCase("conv2d", (1, 1024, 14, 14), (256, 1024, 1, 1), note="ResNet 1x1 reduce, 14x14"),
    GemmCase("conv2d", (1, 256, 14, 14), (256, 256, 3, 3), 1, 1, "ResNet 3x3, stage 3"),
    GemmCase("conv2d", (1, 8, 64, 64), (3, 8, 3, 3), 1, 1, "UNet/VAE RGB output conv (M = 3)"),
    GemmCase("conv2d", (1, 16, 256, 256), (3, 16, 9, 9), 1, 4, "style net RGB output conv (M = 3, 9x9)"),
    GemmCase("conv2d", (1, 3, 256, 256), (16, 3, 9, 9), 1, 4, "style net input conv (C = 3, 9x9)"),
    GemmCase("conv2d", (1, 64, 64, 64), (64, 64, 3, 3), 1, 1, "style net residual 3x3"),
]


def e2e_bench_module():
    """scripts/e2e_bench.py (its model list and cache)."""
    import importlib.util
    spec = importlib.util.spec_from_file_location("e2e_bench", ROOT / "scripts" / "e2e_bench.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def default_cache():
    return Path(os.environ.get("XDG_CACHE_HOME", Path.home() / ".cache")) / "normrt" / "e2e_bench"


def models(cache):
    """[(name, path)]: scripts/e2e_bench.py's models, then the cached style-transfer export."""
    out = e2e_bench_module().models(cache)
    style = cache / "style256__dynamo23.onnx"
    if style.exists():
        out.append(("style256 (dynamo)", style))
    return out


def model_cases(path):
    """Counter of GemmCase: the model's group-1 2-D Convs with symmetric pads and
    strides and a known weight shape (shapes from onnx shape inference); the
    others are counted in `skipped`."""
    import onnx
    from onnx import helper, shape_inference
    m = shape_inference.infer_shapes(onnx.load(str(path)))
    shapes = {vi.name: [d.dim_value for d in vi.type.tensor_type.shape.dim]
              for vi in list(m.graph.value_info) + list(m.graph.input)}
    weights = {t.name: tuple(t.dims) for t in m.graph.initializer}
    cases, skipped = collections.Counter(), 0
    for node in m.graph.node:
        if node.op_type != "Conv":
            continue
        attrs = {a.name: helper.get_attribute_value(a) for a in node.attribute}
        # (the light models make their weights with ConstantOfShape: inferred shapes)
        x, w = shapes.get(node.input[0]), weights.get(node.input[1]) or tuple(shapes.get(node.input[1]) or ())
        pads, strides = list(attrs.get("pads", [0] * 4)), list(attrs.get("strides", [1, 1]))
        if (attrs.get("group", 1) != 1 or len(w) != 4 or min(w) < 1 or not x or len(x) != 4 or min(x) < 1
                or len(set(pads)) != 1 or len(set(strides)) != 1 or set(attrs.get("dilations", [1])) != {1}
                or attrs.get("auto_pad", b"NOTSET") not in (b"NOTSET", "NOTSET")):
            skipped += 1
            continue
        cases[GemmCase("conv2d", tuple(x), w, strides[0], pads[0])] += 1
    return cases, skipped


def _ratio(best):
    return best["normrt"] / best["ort"] if "ort" in best else float("nan")


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--threads", type=int, default=None, help="default: $NORMRT_BENCH_THREADS or 2")
    ap.add_argument("--repeat", type=int, default=10, help="calls per implementation, case and round")
    ap.add_argument("--rounds", type=int, default=ROUNDS)
    ap.add_argument("--only", default="", help="comma-separated substrings of model names (any case); "
                    "'shapes' for the fixed SHAPE_CASES list")
    ap.add_argument("--cache", type=Path, default=default_cache(), help="scripts/e2e_bench.py's cache")
    args = ap.parse_args(argv)
    threads = args.threads or bench_threads()
    only = [s.strip().lower() for s in args.only.split(",") if s.strip()]
    print(f"{threads} threads, min of {args.rounds} rounds x {args.repeat} calls per implementation, "
          f"each in its own block after a {SETTLE * 1e3:.0f} ms pause; ratio = normrt / onnxruntime")
    todo = []
    if not only or "shapes" in only:
        todo.append(("fixed shapes (SHAPE_CASES)", collections.Counter({c: 1 for c in SHAPE_CASES}), 0))
    for name, path in models(args.cache):
        if only and not any(o in name.lower() for o in only):
            continue
        cases, skipped = model_cases(path)
        todo.append((name, cases, skipped))
    summary = []
    for name, cases, skipped in todo:
        print(f"\n### {name}: {sum(cases.values())} convs, {len(cases)} shapes"
              + (f" ({skipped} others: grouped, asymmetric or dynamic)" if skipped else ""))
        print("| count | x | w | stride | pad | normrt ms | ort ms | ratio | count x (normrt - ort) ms |")
        print("|---|---|---|---|---|---|---|---|---|")
        total = collections.Counter()
        for case, count in sorted(cases.items(), key=lambda kv: -kv[0].flops * kv[1]):
            best = time_case(case, IMPLS, threads, args.repeat, args.rounds)
            for impl, t in best.items():
                total[impl] += count * t
            ort = best.get("ort")
            print(f"| {count} | {case.x} | {case.w} | {case.stride} | {case.pad} | {best['normrt'] * 1e3:.3f} | "
                  + (f"{ort * 1e3:.3f} | {_ratio(best):.2f}x | {count * (best['normrt'] - ort) * 1e3:+.2f} |"
                     if ort else "- | - | - |"), flush=True)
        summary.append((name, total))
    print("\n| model | normrt conv ms (sum) | ort conv ms (sum) | ratio |")
    print("|---|---|---|---|")
    for name, total in summary:
        print(f"| {name} | {total['normrt'] * 1e3:.2f} | {total['ort'] * 1e3:.2f} | "
              f"{total['normrt'] / total['ort']:.2f}x |" if total["ort"] else f"| {name} | "
              f"{total['normrt'] * 1e3:.2f} | - | - |")


if __name__ == "__main__":
    main()

"""Shared by the with/without-a-pass benchmarks (bench.fusions, bench.attention_layout):
an Executor built without some passes, and interleaved timing of the variants."""
import argparse
import time

import numpy as np


def executor_without(path, left_out):
    """An Executor of the model at `path` optimized by the default passes minus those named in left_out."""
    from normrt.onnx.executor import Executor
    from normrt.onnx.loader import load_model
    from normrt.onnx.optimize import default_passes, optimize_model

    passes = [p for p in default_passes() if p.name not in left_out]
    model, _ = optimize_model(load_model(path), passes=passes)
    return Executor(model)


def runner(executor):
    return lambda feeds: executor.run(feeds)


def check_close(runs, feeds, baseline, rtol=1e-4):
    """Every variant's outputs close to the baseline variant's (max abs difference <= rtol * max
    |baseline|): an AssertionError naming the first variant that is not."""
    want = runs[baseline](feeds)
    for name, run in runs.items():
        for g, w in zip(run(feeds), want):
            scale = float(np.max(np.abs(w))) or 1.0
            err = float(np.max(np.abs(g.astype(np.float64) - w)))
            if err > rtol * scale:
                raise AssertionError(f"{name}: max abs difference {err:.3g} vs {baseline} (scale {scale:.3g})")


def benchmark_params(group, models, variants):
    """pytest parameters (model, variant) of a with/without-a-pass suite: one benchmark group per
    model ("{group}-{model}"), warmed up."""
    import pytest
    return [pytest.param(m, v, id=f"{m}-{v}", marks=pytest.mark.benchmark(group=f"{group}-{m}", warmup=True,
                                                                          warmup_iterations=2))
            for m in models for v in variants]


def interleaved_times(runs, feeds, n_runs, warmup=3):
    """{variant: [seconds]}: after a warm-up, `n_runs` rounds, each timing every variant once
    (machine noise hits all alike)."""
    for _ in range(warmup):
        for run in runs.values():
            run(feeds)
    times = {v: [] for v in runs}
    for _ in range(n_runs):
        for v, run in runs.items():
            t0 = time.perf_counter()
            run(feeds)
            times[v].append(time.perf_counter() - t0)
    return times


def print_table_head(version, threads, n_runs, baseline):
    print(f"normrt {version}, {threads} threads, {n_runs} interleaved runs")
    print("| model | variant | min ms | median ms | min vs " + baseline + " |")
    print("|---|---|---|---|---|")


def print_rows(model, times, baseline):
    base = min(times[baseline])
    for v, ts in times.items():
        print(f"| {model} | {v} | {1e3 * min(ts):.2f} | {1e3 * float(np.median(ts)):.2f} | "
              f"{min(ts) / base:.3f}x |")


def variants_main(argv, description, models, build, check, baseline):
    """The command line of a with/without-a-pass benchmark: for each of `models` (or those
    --only names), build(model) -> ({variant: run}, feeds), check(runs, feeds), then one
    table row per variant, timed interleaved."""
    ap = argparse.ArgumentParser(description=description)
    ap.add_argument("--runs", type=int, default=30)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--only", default="", help="comma-separated substrings of model names")
    args = ap.parse_args(argv)
    import normrt

    only = [s for s in args.only.split(",") if s]
    print_table_head(normrt.__version__, args.threads, args.runs, baseline)
    with normrt.threads(args.threads):
        for model in models:
            if only and not any(s in model for s in only):
                continue
            runs, feeds = build(model)
            check(runs, feeds)
            print_rows(model, interleaved_times(runs, feeds, args.runs), baseline)

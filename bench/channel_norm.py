"""Channels-first LayerNorm / RMSNorm (layer_norm_2d, rms_norm_2d) against the copy floor,
onnxruntime and torch, on 1 and 2 threads.

    python -m bench.channel_norm [--threads 1,2] [--runs 60] [--blocks 3]

The cases are bench/cases.py's layer_norm_2d / rms_norm_2d ones plus ConvNeXt's
later stages, the runners bench/backends.py's: `normrt` writes into `out=`,
`copy` is np.copyto of the same bytes (single-threaded), `ort` runs the
decomposed graph the exporters write (no ONNX op normalizes the channel axis),
`torch` permutes the channels last, runs F.layer_norm / F.rms_norm and makes
the result a contiguous NCHW tensor again. Every result is checked against
the float64 reference first. Each implementation runs in its own blocks of
--runs calls after a pause (normrt.timing); a time is the min over --blocks
blocks of the block median. Prints normrt's time over the copy floor's and
the speed-up over onnxruntime and torch (their time over normrt's).
"""
import argparse
import os

import numpy as np

from .backends import Unavailable, make_runner
from .cases import CASES, Case, make_inputs, reference, tolerance

EXTRA = [
    Case("layer_norm_2d", (1, 192, 28, 28)),      # ConvNeXt-T stage 2
    Case("layer_norm_2d", (1, 768, 7, 7)),        # ConvNeXt-T stage 4
]
IMPLS = ("normrt", "copy", "ort", "torch")


def cases():
    return [c for c in CASES if c.kernel in ("layer_norm_2d", "rms_norm_2d")] + EXTRA


def measure(case, threads, runs, blocks):
    """{impl: seconds} of one case (implementations that cannot run here are left out)."""
    from normrt import timing
    arrays = make_inputs(case)
    want = reference(case, arrays)
    rtol, atol = tolerance(case)
    fns = {}
    for impl in IMPLS:
        try:
            runner = make_runner(impl, case, arrays, threads)
        except Unavailable:
            continue
        got = runner.result()
        if got is not None:
            np.testing.assert_allclose(got, want, rtol=rtol, atol=atol, err_msg=f"{impl}: {runner.note}")

        def call(runner=runner):
            with runner.context():
                runner.fn()
        fns[impl] = call
    return {k: t.best for k, t in timing.time_blocks(fns, runs, blocks=blocks).items()}


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--threads", default="1,2", help="thread counts, comma-separated (default 1,2)")
    ap.add_argument("--runs", type=int, default=60, help="timed calls per block (default 60)")
    ap.add_argument("--blocks", type=int, default=3, help="blocks per implementation (default 3)")
    args = ap.parse_args(argv)
    load0 = os.getloadavg()[0]
    print("| case | threads | normrt | normrt/copy | vs ORT | vs torch |")
    print("|---|---:|---:|---:|---:|---:|")
    for case in cases():
        for threads in (int(t) for t in args.threads.split(",")):
            t = measure(case, threads, args.runs, args.blocks)
            n = t["normrt"]
            cells = [f"{t[k] / n:.2f}x" if k in t else "-" for k in ("ort", "torch")]
            print(f"| `{case.id}` | {threads} | {n * 1e6:.1f} us | {n / t['copy']:.2f}x | " + " | ".join(cells)
                  + " |", flush=True)
    print(f"\nmin over {args.blocks} blocks of the median of {args.runs} calls, each implementation in its own "
          f"blocks after a pause; load average {load0:.2f} at start, {os.getloadavg()[0]:.2f} at end")


if __name__ == "__main__":
    main()

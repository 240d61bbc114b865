"""The half-precision fixtures (tests/data/half/, scripts/make_fixtures.py --half) timed:
normrt against onnxruntime on the same file, each runtime in its own block after a pause.

    python -m bench.half_fixtures                    # every fixture, 2 threads
    python -m bench.half_fixtures --only conv_gn_ln --size 128 --threads 1,2

`--size S` feeds the models that take any H x W (issue 11's Conv -> GroupNorm -> SiLU ->
permute -> LayerNorm, legacy export) a random 1 x 3 x S x S input instead of the stored
one. onnxruntime has no CPU kernels for most bfloat16 ops: those rows say n/a. A time is
the minimum over blocks of each block's median (bench.small_models.measure).
"""
import argparse
import json
import os
import sys
from pathlib import Path

import numpy as np

from normrt.timing import time_blocks

from .small_models import measure

HALF_DATA = Path(__file__).resolve().parent.parent / "tests" / "data" / "half"


def fixtures(only=""):
    entries = json.loads((HALF_DATA / "fixtures.json").read_text())["fixtures"]
    names = [n for n in only.split(",") if n]
    return [e for e in entries if not names or e["name"] in names]


def feeds_for(entry, size=None):
    """The stored inputs (bfloat16 viewed back from numpy's raw 2-byte storage), or for a model
    taking any H x W and `size`, a random (1, 3, size, size) input."""
    import ml_dtypes
    half = np.dtype(np.float16) if entry["dtype"] == "float16" else np.dtype(ml_dtypes.bfloat16)
    data = np.load(HALF_DATA / entry["data"])
    feeds = {k[6:]: data[k].view(half) for k in data.files if k.startswith("input:")}
    if size and entry["exporter"] == "legacy" and entry["name"] == "conv_gn_ln":
        feeds = {"x": np.random.default_rng(0).standard_normal((1, 3, size, size)).astype(half)}
    return feeds


def normrt_only(path, feeds, threads, repeat, blocks=3):
    import normrt
    sess = normrt.InferenceSession(str(path), num_threads=threads)
    return time_blocks({"normrt": lambda: sess.run(None, feeds)}, repeat, blocks, pause=0)["normrt"].best


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--only", default="", help="comma-separated fixture names (conv_gn_ln, preln_block, ...)")
    ap.add_argument("--size", type=int, default=0, help="H = W of the conv_gn_ln legacy models' input")
    ap.add_argument("--threads", default="2", help="thread counts, comma-separated")
    ap.add_argument("--repeat", type=int, default=50, help="timed runs per block")
    ap.add_argument("--blocks", type=int, default=3)
    args = ap.parse_args(argv)
    import normrt
    thread_counts = [int(t) for t in args.threads.split(",")]
    print(f"load average {os.getloadavg()[0]:.2f}; min over {args.blocks} blocks of the median of "
          f"{args.repeat} runs, each runtime in its own block after a pause")
    print("| fixture | input | norms on kernels | " + " | ".join(
        f"normrt {t}t | ort {t}t | ratio {t}t" for t in thread_counts) + " |")
    print("|" + "---|" * (3 + 3 * len(thread_counts)))
    for e in fixtures(args.only):
        path, feeds = HALF_DATA / e["file"], feeds_for(e, args.size)
        sess = normrt.InferenceSession(str(path))
        norms = sum(1 for n in sess.kernel_nodes())
        cells = []
        for t in thread_counts:
            try:
                best, _ = measure(path, feeds, t, args.repeat, args.blocks)
                cells.append(f"{best['normrt'] * 1e3:.3f} ms | {best['ort'] * 1e3:.3f} ms | "
                             f"{best['normrt'] / best['ort']:.2f}x")
            except Exception:  # noqa: BLE001 - onnxruntime cannot load the model (bfloat16 ops)
                cells.append(f"{normrt_only(path, feeds, t, args.repeat, args.blocks) * 1e3:.3f} ms | n/a | n/a")
        shape = "x".join(str(d) for d in next(iter(feeds.values())).shape)
        print(f"| {e['file'][:-5]} | {shape} | {norms} | " + " | ".join(cells) + " |", flush=True)
    print(f"load average {os.getloadavg()[0]:.2f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())

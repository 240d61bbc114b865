"""Latency on a machine another process keeps busy: adaptive thread counts against fixed ones.

    python -m bench.busy_machine                       # the bundled examples and a genai fixture
    python -m bench.busy_machine PATH.onnx ... --busy 1 --repeat 50

For each model, two rounds: the machine as it is, then with --busy processes spinning on the
cores (`while True: pass` in another Python process each). In each round, in its own blocks
of runs after a pause (normrt.timing): normrt with adaptive_threads (the default:
_thread_policy.RunThreads measures the runs and takes fewer threads where they run faster),
normrt with the count fixed, and onnxruntime, all at --threads. A time is the min over blocks
of the block median; p90 shows the runs a waiting barrier spoils. The adaptive session is
warmed for --warm runs first (its probes run then).
"""
import argparse
import os
import subprocess
import sys
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
DEFAULT_MODELS = [ROOT / "src" / "normrt" / "examples" / "groupnorm_cnn.onnx",
                  ROOT / "src" / "normrt" / "examples" / "transformer_block.onnx",
                  ROOT / "tests" / "data" / "genai" / "llama_fp32" / "model.onnx"]


def feeds(sess):
    rng = np.random.default_rng(0)
    out = {}
    for i in sess.get_inputs():
        shape = [d if isinstance(d, int) else (0 if "past" in str(d) else 8) for d in i.shape]
        if i.name.startswith("past_key_values."):
            shape[-1] = 16          # the genai fixtures' head size
        if "int64" in i.type:
            out[i.name] = (np.ones(shape, np.int64) if "mask" in i.name
                           else rng.integers(0, 100, shape).astype(np.int64))
        else:
            out[i.name] = rng.standard_normal(shape).astype(np.float32)
    return out


def measure(path, threads, repeat, blocks, warm):
    import onnxruntime as ort
    import normrt
    from normrt.timing import time_blocks
    so = ort.SessionOptions()
    so.intra_op_num_threads = threads
    theirs = ort.InferenceSession(str(path), so, providers=["CPUExecutionProvider"])
    adaptive = normrt.InferenceSession(str(path), num_threads=threads)
    fixed = normrt.InferenceSession(str(path), num_threads=threads, adaptive_threads=False)
    f = feeds(theirs)
    for _ in range(warm):
        adaptive.run(None, f)
    t = time_blocks({"adaptive": lambda: adaptive.run(None, f), "fixed": lambda: fixed.run(None, f),
                     "ort": lambda: theirs.run(None, f)}, repeat=repeat, blocks=blocks)
    p90 = {k: float(np.percentile(v.runs, 90)) for k, v in t.items()}
    return {k: v.best for k, v in t.items()}, p90, adaptive._run_threads.choice


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("models", nargs="*", type=Path)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--busy", type=int, default=1, help="processes spinning during the second round")
    ap.add_argument("--repeat", type=int, default=30)
    ap.add_argument("--blocks", type=int, default=3)
    ap.add_argument("--warm", type=int, default=200, help="runs of the adaptive session before timing")
    args = ap.parse_args()
    print(f"{args.threads} threads; each in its own blocks of {args.repeat} runs after a pause, min over "
          f"{args.blocks} blocks of the block median (p90 over all runs); load average {os.getloadavg()[0]:.2f}")
    print("| model | machine | normrt adaptive ms (p90) | threads chosen | normrt fixed ms (p90) | onnxruntime ms (p90) |")
    print("|---|---|---:|---:|---:|---:|")
    for path in args.models or DEFAULT_MODELS:
        label = path.parent.name if path.name == "model.onnx" else path.stem
        for busy in (0, args.busy):
            spinners = [subprocess.Popen([sys.executable, "-c", "while True: pass"]) for _ in range(busy)]
            try:
                time.sleep(0.5 if busy else 0)
                best, p90, chosen = measure(path, args.threads, args.repeat, args.blocks, args.warm)
            finally:
                for p in spinners:
                    p.kill()
                    p.wait()
            row = [f"{best[k] * 1e3:.3f} ({p90[k] * 1e3:.3f})" for k in ("adaptive", "fixed", "ort")]
            machine = f"{busy} busy process{'es' if busy > 1 else ''}" if busy else "as it is"
            print(f"| {label} | {machine} | {row[0]} | {chosen} | {row[1]} | {row[2]} |")


if __name__ == "__main__":
    main()

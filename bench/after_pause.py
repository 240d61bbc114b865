"""A model's runs right after an idle pause, by libgomp spin count: the numbers behind
normrt/_thread_policy.WAIT_SPINCOUNT.

    python -m bench.after_pause                          # the bundled groupnorm_cnn, 2 threads
    python -m bench.after_pause --spins 1000,3000,10000 --model path/to/model.onnx

A request handler or a batch job idles between calls. On a VM the first runs
after the idle can be far slower than the steady state, and how much depends on
how long the OpenMP team spins after a region before it sleeps (GOMP_SPINCOUNT,
read once when libgomp loads: so each spin count runs in its own process).
Printed per spin count: the median of the first 10 runs after each pause, the
median of the runs after those (steady), and their ratio, over `--pauses` pauses
of `--pause-ms`.
"""
import argparse
import json
import os
import subprocess
import sys

import numpy as np


def measure(model, threads, pauses, pause_ms, runs):
    """(first-10 median ms, steady median ms) of `runs` runs after each of `pauses` pauses."""
    import time
    import normrt
    sess = normrt.InferenceSession(model, num_threads=threads)
    rng = np.random.default_rng(0)
    feeds = {i.name: rng.standard_normal([d if isinstance(d, int) else 1 for d in i.shape]).astype(np.float32)
             for i in sess.get_inputs()}
    for _ in range(30):
        sess.run(None, feeds)
    first, steady = [], []
    clock = time.perf_counter
    for _ in range(pauses):
        time.sleep(pause_ms / 1e3)
        for k in range(runs):
            t0 = clock()
            sess.run(None, feeds)
            (first if k < 10 else steady).append((clock() - t0) * 1e3)
    return float(np.median(first)), float(np.median(steady))


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", default=None, help="an .onnx file (default: the bundled groupnorm_cnn)")
    ap.add_argument("--spins", default="1000,3000,10000,100000", help="GOMP_SPINCOUNT values, comma separated")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--pauses", type=int, default=5)
    ap.add_argument("--pause-ms", type=float, default=200.0)
    ap.add_argument("--runs", type=int, default=30, help="runs after each pause (the first 10 are 'first')")
    ap.add_argument("--child", action="store_true", help=argparse.SUPPRESS)
    args = ap.parse_args(argv)
    if args.model is None:
        from importlib import resources
        args.model = str(resources.files("normrt") / "examples" / "groupnorm_cnn.onnx")
    if args.child:
        print(json.dumps(measure(args.model, args.threads, args.pauses, args.pause_ms, args.runs)))
        return 0
    print(f"{os.path.basename(args.model)}, {args.threads} threads, {args.pauses} pauses of {args.pause_ms:g} ms, "
          f"load average {os.getloadavg()[0]:.2f}")
    print("| GOMP_SPINCOUNT | first 10 runs after a pause (median ms) | steady (median ms) | first / steady |")
    print("|---|---|---|---|")
    for spin in args.spins.split(","):
        env = dict(os.environ, GOMP_SPINCOUNT=spin.strip())
        env.pop("OMP_WAIT_POLICY", None)
        out = subprocess.run([sys.executable, "-m", "bench.after_pause", "--child", "--model", args.model,
                              "--threads", str(args.threads), "--pauses", str(args.pauses),
                              "--pause-ms", str(args.pause_ms), "--runs", str(args.runs)],
                             env=env, capture_output=True, text=True, check=True)
        first, steady = json.loads(out.stdout.strip().splitlines()[-1])
        print(f"| {spin.strip()} | {first:.2f} | {steady:.2f} | {first / steady:.2f}x |", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())

"""Memory a server can plan for: peak RSS against onnxruntime, RSS over varying shapes, and
RSS / tracemalloc over many runs. Every measurement runs in a fresh process.

    python scripts/memory.py peak   [--runs 5] [--threads 2]    # bench models, normrt vs onnxruntime
    python scripts/memory.py shapes [--runs 1000]               # symbolic batch 1..64 x seq 1..512
    python scripts/memory.py steady [--runs 10000]              # small models: RSS and tracemalloc

peak: for each model, a process imports the runtime (its "base" RSS), creates
the session (peak while loading), runs it --runs times on random inputs; the
table gives the peak RSS of the whole process (VmHWM) and the peak over the
base, which is what the model costs.
shapes: tests/reliability_models.py's symbolic pre-LN transformer block (d=64), a new
random (batch, seq) every run, the largest shape never forced first; RSS every
100 runs, for normrt and onnxruntime (whose CPU arena keeps what it grew to).
steady: RSS and tracemalloc's traced total at intervals over --runs runs of
small models, after 100 warm-up runs.
"""
import argparse
import json
import os
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "tests"))
sys.path.insert(0, str(ROOT / "scripts"))


def _status(key):
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith(key):
                return int(line.split()[1]) / 1024
    return 0.0


def _session(runtime, model, threads):
    if runtime == "normrt":
        import normrt
        return normrt.InferenceSession(model, num_threads=threads)
    import onnxruntime as ort
    opts = ort.SessionOptions()
    opts.intra_op_num_threads = threads
    opts.inter_op_num_threads = 1
    return ort.InferenceSession(model if isinstance(model, str) else model.SerializeToString(), opts,
                                providers=["CPUExecutionProvider"])


def _import(runtime):
    import numpy  # noqa: F401
    import onnx  # noqa: F401
    if runtime == "normrt":
        import normrt  # noqa: F401
    else:
        import onnxruntime  # noqa: F401


def child_peak(runtime, path, runs, threads):
    from e2e_bench import random_feeds
    feeds = random_feeds(path)
    _import(runtime)
    base = _status("VmRSS")
    sess = _session(runtime, str(path), threads)
    load_peak = _status("VmHWM")
    for _ in range(runs):
        sess.run(None, feeds)
    weights = sum(getattr(v, "nbytes", 0) for v in sess.executor.constants.values()) if runtime == "normrt" else 0
    return {"base": base, "load_peak": load_peak, "peak": _status("VmHWM"), "rss": _status("VmRSS"),
            "weights": weights / 2**20}


def child_shapes(runtime, runs, threads, max_batch, max_seq):
    import numpy as np
    from reliability_models import symbolic_block_model
    _import(runtime)
    sess = _session(runtime, symbolic_block_model(), threads)
    rng = np.random.default_rng(0)
    x = rng.standard_normal((max_batch, max_seq, 64)).astype(np.float32)
    samples = [(0, _status("VmRSS"))]
    t0 = time.perf_counter()
    for i in range(1, runs + 1):
        b, s = int(rng.integers(1, max_batch + 1)), int(rng.integers(1, max_seq + 1))
        sess.run(None, {"x": x[:b, :s].copy()})
        if i % 100 == 0:
            samples.append((i, _status("VmRSS")))
    return {"samples": samples, "peak": _status("VmHWM"), "seconds": time.perf_counter() - t0}


def child_steady(name, runs, threads):
    import tracemalloc
    import numpy as np
    import normrt
    from reliability_models import small_cnn_model
    if name == "small_cnn":
        model, shape = small_cnn_model(), (1, 8, 16, 16)
    else:
        model, shape = str(ROOT / "src" / "normrt" / "examples" / f"{name}.onnx"), None
    sess = normrt.InferenceSession(model, num_threads=threads)
    if shape is None:
        shape = sess.get_inputs()[0].shape
    x = np.random.default_rng(0).standard_normal(shape).astype(np.float32)
    feed = {sess.get_inputs()[0].name: x}
    for _ in range(100):
        sess.run(None, feed)
    tracemalloc.start()
    samples = []
    step = max(1, runs // 4)
    t0 = time.perf_counter()
    for i in range(runs + 1):
        if i % step == 0:
            samples.append((i, _status("VmRSS"), tracemalloc.get_traced_memory()[0] / 1024))
        if i < runs:
            sess.run(None, feed)
    return {"samples": samples, "seconds": time.perf_counter() - t0}


def _in_child(*args):
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join([str(ROOT / "src"), env.get("PYTHONPATH", "")]).rstrip(os.pathsep)
    out = subprocess.run([sys.executable, __file__, "_child", json.dumps(args)], capture_output=True, text=True,
                         env=env, timeout=3600)
    if out.returncode != 0:
        raise RuntimeError(f"child {args} failed:\n{out.stderr[-2000:]}")
    return json.loads(out.stdout.strip().splitlines()[-1])


def peak_models():
    from e2e_bench import LIGHT
    out = [(name, LIGHT / f"{name}.onnx") for name in ("light_resnet50", "light_densenet121")
           if (LIGHT / f"{name}.onnx").exists()]
    out += [("diffusers UNet2D (fixture)", ROOT / "tests/data/diffusers_unet2d__dynamo23.onnx"),
            ("diffusers VAE (fixture)", ROOT / "tests/data/diffusers_vae__dynamo23.onnx"),
            ("hf_bert (fixture)", ROOT / "tests/data/hf_bert__dynamo23.onnx")]
    out += [(f"example {p.stem}", p) for p in sorted((ROOT / "src/normrt/examples").glob("*.onnx"))]
    return out


def cmd_peak(args):
    print(f"peak RSS, MB: process peak (VmHWM) and peak over the process's RSS after importing the runtime; "
          f"load + {args.runs} runs, {args.threads} threads\n")
    print("| model | weights MB | normrt peak | ORT peak | normrt over base | ORT over base | normrt/ORT (over base) |")
    print("|---|---|---|---|---|---|---|")
    for name, path in peak_models():
        r = {rt: _in_child("peak", rt, str(path), args.runs, args.threads) for rt in ("normrt", "ort")}
        weights = r["normrt"]["weights"]      # after folding (the light models build theirs with ConstantOfShape)
        over = {rt: r[rt]["peak"] - r[rt]["base"] for rt in r}
        print(f"| {name} | {weights:.1f} | {r['normrt']['peak']:.0f} | {r['ort']['peak']:.0f} | "
              f"{over['normrt']:.0f} | {over['ort']:.0f} | {over['normrt'] / over['ort']:.2f} |", flush=True)


def cmd_shapes(args):
    print(f"symbolic block (d=64): {args.runs} runs, batch 1..{args.max_batch} x seq 1..{args.max_seq}, "
          f"{args.threads} threads; RSS MB every 100 runs\n")
    for rt in ("normrt", "ort"):
        r = _in_child("shapes", rt, args.runs, args.threads, args.max_batch, args.max_seq)
        rss = [f"{v:.0f}" for _, v in r["samples"]]
        vals = [v for _, v in r["samples"]]
        half = len(vals) // 2
        print(f"{rt:7s} RSS: {' '.join(rss)}  (process peak {r['peak']:.0f}; max over the first half "
              f"{max(vals[:half + 1]):.0f}, over the second {max(vals[half:]):.0f}; {r['seconds']:.0f} s)", flush=True)


def cmd_steady(args):
    print(f"{args.runs} runs after 100 warm-up runs, {args.threads} threads: RSS MB / tracemalloc KiB\n")
    for name in ("small_cnn", "transformer_block", "groupnorm_cnn"):
        r = _in_child("steady", name, args.runs, args.threads)
        cells = "  ".join(f"{i}: {rss:.1f} / {tm:.1f}" for i, rss, tm in r["samples"])
        print(f"{name:18s} {cells}  ({r['seconds']:.0f} s)", flush=True)


def main(argv=None):
    argv = sys.argv[1:] if argv is None else argv
    if argv and argv[0] == "_child":
        kind, *rest = json.loads(argv[1])
        fn = {"peak": child_peak, "shapes": child_shapes, "steady": child_steady}[kind]
        print(json.dumps(fn(*rest)))
        return 0
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("what", choices=["peak", "shapes", "steady"])
    ap.add_argument("--runs", type=int, default=None)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--max-batch", type=int, default=64)
    ap.add_argument("--max-seq", type=int, default=512)
    args = ap.parse_args(argv)
    if args.runs is None:
        args.runs = {"peak": 5, "shapes": 1000, "steady": 10000}[args.what]
    {"peak": cmd_peak, "shapes": cmd_shapes, "steady": cmd_steady}[args.what](args)
    return 0


if __name__ == "__main__":
    sys.exit(main())

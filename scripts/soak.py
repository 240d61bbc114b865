"""Soak: 4 Python threads x N sessions x mixed models for a fixed time; throughput, RSS over time,
and every output checked against its serial result.

    python scripts/soak.py [--minutes 5] [--threads 4] [--sessions 2] [--interval 20] [--seed 0]

Models: the bundled examples (groupnorm_cnn, transformer_block), fixtures with
normalizations on normrt's kernels (diffusers VAE, hf_bert, hf_llama,
preln_block, groupnorm_silu, rmsnorm_llama), tests/reliability_models.py's small CNN and
its symbolic transformer block (three (batch, seq) shapes). Each model gets
--sessions sessions, alternately with 1 and 2 kernel threads; every session
has three random feeds whose outputs are computed serially first, before any
thread starts. Then --threads Python threads each pick (session, feed) at
random, run it and compare every output bitwise with its serial result, until
--minutes have passed. Every --interval seconds a line gives the runs per
second since the last line and the process RSS. Exits 1 on any mismatch or error.
"""
import argparse
import sys
import threading
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "tests"))
sys.path.insert(0, str(ROOT / "scripts"))

import normrt  # noqa: E402
from reliability_models import rss_mb, small_cnn_model, symbolic_block_model  # noqa: E402
from e2e_bench import random_feeds  # noqa: E402

FIXTURES = ("diffusers_vae__dynamo23", "hf_bert__dynamo23", "hf_llama__dynamo23", "preln_block__dynamo23",
            "groupnorm_silu__dynamo23", "rmsnorm_llama__dynamo23")


def models():
    """[(name, model, [feeds, feeds, feeds])]."""
    out = []
    for p in sorted((ROOT / "src" / "normrt" / "examples").glob("*.onnx")):
        out.append((p.stem, str(p), [random_feeds(p, seed) for seed in range(3)]))
    for name in FIXTURES:
        p = ROOT / "tests" / "data" / f"{name}.onnx"
        if p.exists():
            out.append((name, str(p), [random_feeds(p, seed) for seed in range(3)]))
    rng = np.random.default_rng(0)
    out.append(("small_cnn", small_cnn_model(),
                [{"x": rng.standard_normal((1, 8, 16, 16)).astype(np.float32)} for _ in range(3)]))
    out.append(("symbolic_block", symbolic_block_model(),
                [{"x": rng.standard_normal(shape).astype(np.float32)} for shape in ((1, 7, 64), (4, 33, 64), (2, 128, 64))]))
    return out


class Soak:
    def __init__(self, sessions_per_model, seed):
        self.work = []          # (model name, session, feed, serial outputs)
        for name, model, feeds in models():
            for k in range(sessions_per_model):
                sess = normrt.InferenceSession(model, num_threads=1 + k % 2)
                for feed in feeds:
                    self.work.append((name, sess, feed, sess.run(None, feed)))
        self.seed = seed
        self.runs = 0
        self.runs_by_model = {}
        self.mismatches = []
        self.errors = []
        self.lock = threading.Lock()
        self.stop = threading.Event()

    def worker(self, index):
        rng = np.random.default_rng(self.seed * 1000 + index)
        local = {}
        while not self.stop.is_set():
            name, sess, feed, expected = self.work[int(rng.integers(len(self.work)))]
            try:
                got = sess.run(None, feed)
            except Exception as e:  # noqa: BLE001 - reported, and the run fails
                with self.lock:
                    self.errors.append(f"{name}: {type(e).__name__}: {e}")
                continue
            if len(got) != len(expected) or not all(np.array_equal(a, b, equal_nan=True) for a, b in zip(got, expected)):
                with self.lock:
                    self.mismatches.append(name)
            local[name] = local.get(name, 0) + 1
            with self.lock:
                self.runs += 1
        with self.lock:
            for k, v in local.items():
                self.runs_by_model[k] = self.runs_by_model.get(k, 0) + v


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--minutes", type=float, default=5.0)
    ap.add_argument("--threads", type=int, default=4, help="Python threads running sessions")
    ap.add_argument("--sessions", type=int, default=2, help="sessions per model")
    ap.add_argument("--interval", type=float, default=20.0, help="seconds between report lines")
    ap.add_argument("--seed", type=int, default=0)
    args = ap.parse_args(argv)

    t_load = time.perf_counter()
    soak = Soak(args.sessions, args.seed)
    n_models = len({w[0] for w in soak.work})
    print(f"{n_models} models x {args.sessions} sessions, {len(soak.work)} (session, feed) pairs, serial results "
          f"computed in {time.perf_counter() - t_load:.1f} s; {args.threads} Python threads for "
          f"{args.minutes:g} min; RSS {rss_mb():.0f} MB", flush=True)
    threads = [threading.Thread(target=soak.worker, args=(i,), daemon=True) for i in range(args.threads)]
    t0 = time.perf_counter()
    for t in threads:
        t.start()
    print(f"{'time s':>7} {'runs/s':>8} {'RSS MB':>7} {'mismatches':>10} {'errors':>6}", flush=True)
    samples = []
    last_t, last_runs = t0, 0
    end = t0 + args.minutes * 60
    while True:
        now = time.perf_counter()
        if now >= end:
            break
        time.sleep(min(args.interval, end - now))
        now = time.perf_counter()
        with soak.lock:
            runs, bad, errs = soak.runs, len(soak.mismatches), len(soak.errors)
        rate = (runs - last_runs) / (now - last_t)
        rss = rss_mb()
        samples.append((now - t0, rate, rss))
        print(f"{now - t0:7.0f} {rate:8.1f} {rss:7.0f} {bad:10d} {errs:6d}", flush=True)
        last_t, last_runs = now, runs
    soak.stop.set()
    for t in threads:
        t.join()
    took = time.perf_counter() - t0
    rss = [s[2] for s in samples]
    print(f"\n{soak.runs} runs in {took:.0f} s ({soak.runs / took:.1f}/s), {len(soak.mismatches)} outputs different "
          f"from the serial result, {len(soak.errors)} errors")
    if rss:
        print(f"RSS MB: first sample {rss[0]:.0f}, last {rss[-1]:.0f}, max {max(rss):.0f}")
    print("runs per model: " + ", ".join(f"{k} {v}" for k, v in sorted(soak.runs_by_model.items())))
    for e in soak.errors[:5]:
        print("error:", e)
    return 1 if soak.mismatches or soak.errors else 0


if __name__ == "__main__":
    sys.exit(main())

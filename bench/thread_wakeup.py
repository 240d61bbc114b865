"""What a second thread costs and what it buys: the numbers behind normrt/_thread_policy.py.

    python -m bench.thread_wakeup                 # fork/join cost by idle gap, 1-thread throughputs
    python -m bench.thread_wakeup --calls 5000
    python -m bench.thread_wakeup --gemm-split       # + 1 vs 2 threads on transformer-sized GEMMs

Three measurements, all on the kernels' one OpenMP team:

* fork/join: a parallel region with almost no work (small_gemm on two 4x4
  products) on 1 and on 2 threads, called after `gap` microseconds of busy
  Python work (a model's other nodes). While the team's second thread still
  spins (GOMP_SPINCOUNT pauses after its last region) a 2-thread region costs
  a fraction of a microsecond more; once it sleeps, each region pays a futex
  wake-up. Printed: 10th percentile, median and mean microseconds per call.
* the 1-thread speed of a memory-bound kernel (layer_norm on rows of 768,
  elements per microsecond) and of a compute-bound one (the packed GEMM,
  flops per microsecond, 64 to 256 on a side);
* the work a split must have to pay for a wake-up: with wake-up cost W and
  1-thread time T, two threads take about T / 2 + W, so a split wins from
  T = 2 W; the policy asks for a margin (SPLIT_MIN_US, several W) because
  the wake-up's tail on a shared machine is far longer than its median.
* (--gemm-split) the packed GEMM on 1 and on 2 threads at the products of
  transformer layers (128 or 24 rows; hidden sizes 64 to 1024), each call
  after `gap` microseconds of busy Python work (a model's nodes between two
  products: with GOMP_SPINCOUNT's spin the team is still awake), the policy
  bypassed: where a split starts to pay, the crossover behind
  COMPUTE_BOUND_MIN_FLOPS.
"""
import argparse
import os
import sys
import time

import numpy as np


def _busy(us):
    end = time.perf_counter() + us * 1e-6
    while time.perf_counter() < end:
        pass


def fork_join(threads, gap_us, calls):
    """(p10, median, mean) microseconds of one near-empty parallel region after `gap_us` of busy work."""
    from normrt._kernels import small_gemm
    a = np.random.default_rng(0).standard_normal((2, 4, 4)).astype(np.float32)
    y = np.empty_like(a)
    clock = time.perf_counter
    times = []
    for _ in range(calls):
        if gap_us:
            _busy(gap_us)
        t0 = clock()
        small_gemm.batched_matmul(a, a, y, threads)
        times.append(clock() - t0)
    times = np.sort(np.array(times)) * 1e6
    return float(times[len(times) // 10]), float(np.median(times)), float(times.mean())


def _best(fn, repeat=200):
    fn()
    clock = time.perf_counter
    best = float("inf")
    for _ in range(repeat):
        t0 = clock()
        fn()
        best = min(best, clock() - t0)
    return best * 1e6


def memory_bound_speed():
    """Elements per microsecond of 1-thread layer_norm (rows of 768; the best of three sizes)."""
    import normrt
    speeds = []
    for rows in (64, 256, 1024):
        x = np.random.default_rng(0).standard_normal((rows, 768)).astype(np.float32)
        y = np.empty_like(x)
        g = np.ones(768, np.float32)
        with normrt.threads(1):
            us = _best(lambda: normrt.layer_norm(x, g, g, out=y))
        speeds.append(x.size / us)
    return max(speeds)


def compute_bound_speed():
    """Flops per microsecond of the 1-thread packed GEMM (weights packed once; best of three sizes)."""
    import normrt
    speeds = []
    for n in (64, 128, 256):
        rng = np.random.default_rng(0)
        a = rng.standard_normal((n, n)).astype(np.float32)
        w = normrt.pack_matmul_weight(rng.standard_normal((n, n)).astype(np.float32))
        y = np.empty((n, n), np.float32)
        with normrt.threads(1):
            us = _best(lambda: normrt.matmul(a, w, out=y))
        speeds.append(2 * n ** 3 / us)
    return max(speeds)


GEMM_SPLIT_SHAPES = [(128, 64, 64), (128, 64, 256), (128, 256, 64), (128, 128, 128), (128, 256, 256),
                     (128, 256, 688), (128, 688, 256), (128, 256, 1024), (128, 1024, 256), (24, 64, 64),
                     (24, 128, 64), (24, 64, 128), (64, 64, 64), (64, 256, 256)]


def gemm_split(m, k, n, gap_us, calls):
    """(flops, min us on 1 thread, min us on 2 threads) of a packed (m, k) @ (k, n) product, the
    thread policy bypassed; every call after `gap_us` of busy work, the two counts alternating
    in blocks of 50 calls (machine noise hits both alike)."""
    import normrt
    from normrt import _thread_policy as policy
    rng = np.random.default_rng(0)
    a = rng.standard_normal((m, k)).astype(np.float32)
    w = normrt.pack_matmul_weight(rng.standard_normal((k, n)).astype(np.float32))
    y = np.empty((m, n), np.float32)
    saved = policy.COMPUTE_BOUND_MIN_FLOPS
    best = {1: float("inf"), 2: float("inf")}
    clock = time.perf_counter
    try:
        policy.COMPUTE_BOUND_MIN_FLOPS = 0          # every product may split: the count is normrt.threads'
        for _ in range(max(1, calls // 100)):
            for nt in (1, 2):
                with normrt.threads(nt):
                    normrt.matmul(a, w, out=y)
                    for _ in range(50):
                        if gap_us:
                            _busy(gap_us)
                        t0 = clock()
                        normrt.matmul(a, w, out=y)
                        best[nt] = min(best[nt], clock() - t0)
    finally:
        policy.COMPUTE_BOUND_MIN_FLOPS = saved
    return 2 * m * n * k, best[1] * 1e6, best[2] * 1e6


def print_gemm_split(calls, gaps=(0, 20)):
    print("| M x K x N | Mflop | " + " | ".join(f"gap {g} us: 1 thr / 2 thr (us), speed-up" for g in gaps) + " |")
    print("|---|---|" + "---|" * len(gaps))
    for m, k, n in sorted(GEMM_SPLIT_SHAPES, key=lambda s: s[0] * s[1] * s[2]):
        cells = []
        for gap in gaps:
            flops, one, two = gemm_split(m, k, n, gap, calls)
            cells.append(f"{one:.1f} / {two:.1f}, {one / two:.2f}x")
        print(f"| {m} x {k} x {n} | {flops / 1e6:.2f} | " + " | ".join(cells) + " |", flush=True)


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--calls", type=int, default=3000, help="timed regions per (threads, gap)")
    ap.add_argument("--gaps", default="0,5,20,50,100,300,1000", help="busy microseconds before each region")
    ap.add_argument("--gemm-split", action="store_true",
                    help="only the 1 vs 2 thread GEMM table at transformer shapes (--calls per cell)")
    args = ap.parse_args(argv)
    if args.gemm_split:
        import normrt  # noqa: F401 - sets GOMP_SPINCOUNT (configure_openmp) before the line below reads it
        print(f"load average {os.getloadavg()[0]:.2f}; GOMP_SPINCOUNT={os.environ.get('GOMP_SPINCOUNT')}; "
              f"min over {args.calls} calls per cell")
        print_gemm_split(args.calls)
        return 0
    import normrt
    from normrt import _thread_policy as policy
    print(f"load average {os.getloadavg()[0]:.2f}; GOMP_SPINCOUNT={os.environ.get('GOMP_SPINCOUNT')}; "
          f"OpenMP {normrt.openmp_enabled()}")
    print("| gap (us) | 1 thread p10 / median / mean (us) | 2 threads p10 / median / mean (us) |")
    print("|---|---|---|")
    wake = []
    for gap in (int(g) for g in args.gaps.split(",")):
        one = fork_join(1, gap, args.calls)
        two = fork_join(2, gap, args.calls)
        if gap >= 100:
            wake.append(two[1] - one[1])
        print(f"| {gap} | {one[0]:.2f} / {one[1]:.2f} / {one[2]:.2f} | {two[0]:.2f} / {two[1]:.2f} / {two[2]:.2f} |",
              flush=True)
    mem = memory_bound_speed()
    flop = compute_bound_speed()
    w = float(np.median(wake)) if wake else float("nan")
    print(f"wake-up of the sleeping second thread (median over gaps >= 100 us): {w:.1f} us")
    print(f"1 thread: memory-bound {mem:.0f} elements/us, compute-bound {flop:.0f} flops/us")
    print(f"policy: split from {policy.SPLIT_MIN_US} us of 1-thread work = "
          f"{policy.MEMORY_BOUND_MIN_ELEMENTS} elements (measured speed: {policy.SPLIT_MIN_US * mem:.0f}), "
          f"products from {policy.COMPUTE_BOUND_MIN_FLOPS} flops ({policy.COMPUTE_BOUND_MIN_FLOPS / flop:.0f} us at the measured speed)")
    return 0


if __name__ == "__main__":
    sys.exit(main())

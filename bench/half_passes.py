"""Half-precision norm kernels against a same-size copy, one process, interleaved.

    python -m bench.half_passes [--threads 1] [--rounds 60]

Times layer_norm (1024, 768), GroupNorm and GroupNorm+SiLU (1, 320, 64, 64) in
float16 and bfloat16, each next to np.copyto of an array of the same dtype and
shape, round after round; prints the minimum of each and the ratio. Run it
twice with NORMRT_BF16_INSTRUCTIONS=0 and =1 to compare the two bfloat16
stores (pyx/half.h). Lighter than `python -m bench.report --half` (no
onnxruntime/torch), for A/B of a kernel change on a noisy machine.
"""
import argparse
import time

import ml_dtypes
import numpy as np

import normrt


def cases(rng):
    for dt in (np.dtype(np.float16), np.dtype(ml_dtypes.bfloat16)):
        x = rng.standard_normal((1024, 768)).astype(dt)
        w, b = rng.standard_normal((2, 768)).astype(np.float32)
        yield f"layer_norm (1024, 768) {dt.name}", x, lambda x=x, w=w, b=b: normrt.layer_norm(x, w, b)
        img = rng.standard_normal((1, 320, 64, 64)).astype(dt)
        s, c = rng.standard_normal((2, 320)).astype(np.float32)
        yield f"group_norm (1, 320, 64, 64) {dt.name}", img, lambda img=img, s=s, c=c: normrt.group_norm(img, 32, s, c)
        yield (f"group_norm+silu (1, 320, 64, 64) {dt.name}", img,
               lambda img=img, s=s, c=c: normrt.group_norm(img, 32, s, c, activation="silu"))


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--rounds", type=int, default=60)
    args = p.parse_args(argv)
    normrt.set_num_threads(args.threads)
    table = list(cases(np.random.default_rng(0)))
    best = {}
    for _ in range(args.rounds):
        for name, x, run in table:
            dst = np.empty_like(x)
            for key, fn in ((name, run), ("copy " + name, lambda: np.copyto(dst, x))):
                t = time.perf_counter()
                fn()
                best[key] = min(best.get(key, float("inf")), time.perf_counter() - t)
    print(f"threads {args.threads}, bf16 stores {normrt.cpu_info()['bf16_store']}, min of {args.rounds}")
    for name, *_ in table:
        k, c = best[name], best["copy " + name]
        print(f"  {name:40s} {k * 1e6:8.1f} us   copy {c * 1e6:7.1f} us   {k / c:5.2f}x copy")


if __name__ == "__main__":
    main()

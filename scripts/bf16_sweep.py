"""Every float32 value rounded to bfloat16 by each of normrt's paths, against ml_dtypes.

    python scripts/bf16_sweep.py [--chunk-bits 24] [--start 0] [--stop 4294967296]

pyx/half.h rounds float32 to bfloat16 by one of three paths: the portable scalar
code, the integer vector rounding of the build's ISA level, and AVX-512 BF16's
vcvtneps2bf16 where the CPU has it (treats subnormal inputs as zero; its NaN is
not the integer path's, so those vectors take the integer rounding). This sweeps
all 2^32 bit patterns, in chunks, through each path available here
(`half_convert.bf16_round`) and checks that:
  * every path gives the same 16 bits as the portable code, NaN payloads included;
  * every non-NaN result is ml_dtypes' (round to nearest even), and every NaN is a
    quiet NaN of the input's sign with its top payload bits kept
    (ml_dtypes canonicalizes NaNs to 0x7fc0 / 0xffc0, so NaNs are checked by rule).
Chunks of 2^24 values are laid out in order, so every lane position of a vector
sees every class of value next to every other class only in a limited way; the
unit test (tests/test_bf16_store.py) mixes the classes inside vectors instead.
About a minute per path on one core. Exit status 1 on any mismatch.
"""
import argparse
import sys
import time

import ml_dtypes
import numpy as np

import normrt
from normrt._kernels import half_convert


def check_chunk(start, n, paths):
    """Mismatch counts per path for the float32 bit patterns [start, start + n)."""
    bits = np.arange(start, start + n, dtype=np.uint64).astype(np.uint32)
    f = bits.view(np.float32)
    nan = np.isnan(f)
    with np.errstate(all="ignore"):
        ref = f.astype(ml_dtypes.bfloat16).view(np.uint16)
    nan_rule = ((bits >> 16) | 0x40).astype(np.uint16)     # quiet, sign and top payload kept
    expected = np.where(nan, nan_rule, ref)
    out = np.empty(n, np.uint16)
    bad = {}
    for path in paths:
        half_convert.bf16_round(f, out, path)
        bad[path] = int(np.count_nonzero(out != expected))
    return bad


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--chunk-bits", type=int, default=24)
    p.add_argument("--start", type=int, default=0)
    p.add_argument("--stop", type=int, default=1 << 32)
    args = p.parse_args(argv)
    paths = ["portable", "integer"] + (["instruction"] if half_convert.bf16_instructions() else [])
    info = normrt.cpu_info()
    print(f"normrt {normrt.__version__}, kernels {info['level']}, bf16 stores {info['bf16_store']}; "
          f"paths swept: {', '.join(paths)}")
    chunk = 1 << args.chunk_bits
    total = dict.fromkeys(paths, 0)
    t0 = time.perf_counter()
    for start in range(args.start, args.stop, chunk):
        for path, count in check_chunk(start, min(chunk, args.stop - start), paths).items():
            total[path] += count
    swept = args.stop - args.start
    for path in paths:
        print(f"  {path:12s} {swept} inputs, {total[path]} mismatches")
    print(f"{time.perf_counter() - t0:.0f} s")
    return 1 if any(total.values()) else 0


if __name__ == "__main__":
    sys.exit(main())

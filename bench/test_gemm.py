"""pytest-benchmark suite for the GEMM/conv cases of bench/gemm.py and bench/conv_shapes.py.

One group per case with normrt, numpy and onnxruntime; extra_info carries the
case's flops, so GFLOP/s = flops / time. Each test checks the result against a
float64 reference first.
"""
import functools

import pytest

from .backends import Unavailable
from .conv_shapes import IMPLS as SHAPE_IMPLS
from .conv_shapes import SHAPE_CASES
from .gemm import GEMM_CASES, IMPLS, check, make_inputs, make_runner, reference


@functools.lru_cache(maxsize=1)
def _inputs(case):
    a = make_inputs(case)
    return a, reference(case, a)


@pytest.mark.parametrize("case, impl", [
    pytest.param(case, impl, id=f"{case.id}-{impl}",
                 marks=pytest.mark.benchmark(group=f"gemm-{case.id}", warmup=True, warmup_iterations=3))
    for case in GEMM_CASES for impl in IMPLS
] + [
    # bench/conv_shapes.py's fixed shapes (no numpy: im2col of a 9x9 conv at 256x256 is 340 MB)
    pytest.param(case, impl, id=f"{case.id}-{impl}",
                 marks=pytest.mark.benchmark(group=f"conv_shape-{case.id}", warmup=True, warmup_iterations=3))
    for case in SHAPE_CASES for impl in SHAPE_IMPLS
])
def test_gemm(benchmark, case, impl, threads):
    if impl == "ort":
        pytest.importorskip("onnxruntime")
    a, expected = _inputs(case)
    try:
        runner = make_runner(impl, case, a, threads)
    except Unavailable as exc:
        pytest.skip(str(exc))
    check(case, runner, expected)
    benchmark.extra_info.update(flops=case.flops, threads=threads, note=case.note)
    benchmark(runner)

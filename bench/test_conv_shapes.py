"""pytest-benchmark suite for bench/conv_shapes.py's fixed shapes (SHAPE_CASES).

One group per shape with normrt and onnxruntime; extra_info carries the case's
flops. Each test checks its result against a float64 reference first.
"""
import functools

import pytest

from .backends import Unavailable
from .conv_shapes import IMPLS, SHAPE_CASES
from .gemm import check, make_inputs, make_runner, reference


@functools.lru_cache(maxsize=1)
def _inputs(case):
    a = make_inputs(case)
    return a, reference(case, a)


@pytest.mark.parametrize("case, impl", [
    pytest.param(case, impl, id=f"{case.id}-{impl}",
                 marks=pytest.mark.benchmark(group=f"conv_shape-{case.id}", warmup=True, warmup_iterations=3))
    for case in SHAPE_CASES for impl in IMPLS
])
def test_conv_shape(benchmark, case, impl, threads):
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

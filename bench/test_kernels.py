"""pytest-benchmark suite: every case of bench/cases.py for normrt and its baselines.

One benchmark group per case (e.g. "layer_norm-(1024, 768)") holding normrt,
the copy floor, onnxruntime and torch, so pytest-benchmark's table compares them
directly. Where onnxruntime has a second form of the case (Add + LayerNormalization
beside SkipLayerNormalization, the decomposed RMSNorm, GroupNorm via
InstanceNormalization), "ort-unfused" times that form too. Each test also checks the implementation's result against a float64
numpy reference, so a benchmark cannot silently time the wrong computation.
"""
import numpy as np
import pytest

from .backends import ALL_IMPLS, ORT_UNFUSED, has_unfused_form
from .cases import CASES, tolerance

PARAMS = [
    pytest.param(case, impl, id=f"{case.id}-{impl}",
                 marks=pytest.mark.benchmark(group=case.group, warmup=True, warmup_iterations=5))
    for case in CASES
    for impl in ALL_IMPLS
    if impl != ORT_UNFUSED or has_unfused_form(case)
]


@pytest.mark.parametrize("case, impl", PARAMS)
def test_kernel(benchmark, case, impl, runner, expected, threads):
    benchmark.extra_info.update(bytes=case.nbytes, threads=threads, form=runner.note)
    with runner.context():
        benchmark(runner.fn)
    actual = runner.result()
    if actual is not None:  # the copy floor computes nothing to check
        rtol, atol = tolerance(case)
        np.testing.assert_allclose(actual, expected, rtol=rtol, atol=atol,
                                   err_msg=f"{runner.note}: differs from the numpy reference")

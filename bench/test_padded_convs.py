"""pytest-benchmark suite for bench/padded_convs.py: generated reflect-padded and LeakyRelu conv
blocks with and without their fusions.

One group per model ("padded_convs-reflect_blocks"), one benchmark per variant
(bench.padded_convs.VARIANTS); each checks its outputs against the baseline variant first.
"""
import functools

import pytest

from .padded_convs import BASELINE, MODELS, VARIANTS, build, check
from .pass_variants import benchmark_params


@functools.lru_cache(maxsize=2)
def _model(name):
    runs, feeds = build(name)
    check(runs, feeds)
    return runs, feeds


@pytest.mark.parametrize("model, variant", benchmark_params("padded_convs", MODELS, VARIANTS))
def test_padded_convs(benchmark, model, variant, threads):
    import normrt

    runs, feeds = _model(model)
    assert BASELINE in runs
    with normrt.threads(threads):
        benchmark(runs[variant], feeds)

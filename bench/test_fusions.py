"""pytest-benchmark suite for bench/fusions.py: the light CNNs with and without the Conv graph fusions.

One group per model ("fusions-light_resnet50"), one benchmark per variant
(bench.fusions.VARIANTS); each
checks its outputs against the variant without the fusions first.
"""
import functools

import pytest

from .fusions import BASELINE, MODELS, VARIANTS, check, make_executor, make_feeds, runner
from .pass_variants import benchmark_params


@functools.lru_cache(maxsize=1)
def _model(name):
    runs = {v: runner(make_executor(name, v)) for v in VARIANTS}
    feeds = make_feeds(make_executor(name, BASELINE))
    check(runs, feeds)
    return runs, feeds


@pytest.mark.parametrize("model, variant", benchmark_params("fusions", MODELS, VARIANTS))
def test_fusions(benchmark, model, variant, threads):
    import normrt

    runs, feeds = _model(model)
    with normrt.threads(threads):
        benchmark(runs[variant], feeds)

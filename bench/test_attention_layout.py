"""pytest-benchmark suite for bench/attention_layout.py: models with and without the
attention_layout pass (one group per model, one benchmark per variant; each checks
that both variants give the same bits first)."""
import functools

import pytest

from .attention_layout import VARIANTS, available, check, make_executor, make_feeds, runner


@functools.lru_cache(maxsize=1)
def _model(name):
    runs = {v: runner(make_executor(name, v)) for v in VARIANTS}
    feeds = make_feeds(name)
    check(runs, feeds)
    return runs, feeds


@pytest.mark.parametrize("model, variant", [
    pytest.param(m, v, id=f"{m}-{v}", marks=pytest.mark.benchmark(group=f"attention-layout-{m}", warmup=True,
                                                                  warmup_iterations=2))
    for m in available() for v in VARIANTS
])
def test_attention_layout(benchmark, model, variant, threads):
    import normrt

    runs, feeds = _model(model)
    with normrt.threads(threads):
        benchmark(runs[variant], feeds)

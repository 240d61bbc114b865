"""pytest-benchmark suite for bench/load_time.py: session creation (normrt.optimize included)
beside onnxruntime's, on the same model bytes.

One group per export ("load-bert-4"), two benchmarks: normrt and ort. Building an
export needs torch and transformers (the bench extra); without them the suite is
skipped. The untimed CI run (--benchmark-disable) loads the 4-layer models once.
"""
import functools

import pytest

pytest.importorskip("torch")
pytest.importorskip("transformers")
pytest.importorskip("onnxruntime")

from .load_time import export, normrt_session, ort_session  # noqa: E402

MODELS = [("bert", 4), ("llama", 4), ("bert", 16), ("llama", 16)]


@functools.lru_cache(maxsize=None)
def _bytes(family, layers):
    with open(export(family, layers), "rb") as f:
        return f.read()


@pytest.mark.parametrize("family, layers, runtime", [
    pytest.param(f, n, r, id=f"{f}-{n}-{r}", marks=pytest.mark.benchmark(group=f"load-{f}-{n}"))
    for f, n in MODELS for r in ("normrt", "ort")
])
def test_load_time(benchmark, family, layers, runtime):
    data = _bytes(family, layers)
    make = normrt_session(data) if runtime == "normrt" else ort_session(data)
    sess = benchmark.pedantic(make, rounds=3, iterations=1)
    assert sess.get_inputs()[0].name == "ids"

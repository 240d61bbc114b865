"""pytest-benchmark suite for bench/half_fixtures.py: each half-precision fixture, normrt and
onnxruntime (where it loads the model) in one group; normrt's output is checked against the
stored reference first."""
import functools

import numpy as np
import pytest

from .half_fixtures import HALF_DATA, feeds_for, fixtures

TOL_ULPS = 4      # tests/onnx/test_half_fixtures.py's bound


@functools.lru_cache(maxsize=1)
def _runs(file, threads):
    import normrt
    entry = next(e for e in fixtures() if e["file"] == file)
    feeds = feeds_for(entry)
    sess = normrt.InferenceSession(str(HALF_DATA / file), num_threads=threads)
    want = np.load(HALF_DATA / entry["data"])["output:y"]
    got = sess.run(None, feeds)[0].astype(np.float64)
    eps = 2.0 ** -10 if entry["dtype"] == "float16" else 2.0 ** -7
    assert np.max(np.abs(got - want) / (eps * np.maximum(np.abs(want), 1))) <= TOL_ULPS
    runs = {"normrt": lambda: sess.run(None, feeds)}
    if entry["dtype"] == "float16":
        import onnxruntime as ort
        so = ort.SessionOptions()
        so.intra_op_num_threads = threads
        osess = ort.InferenceSession(str(HALF_DATA / file), so, providers=["CPUExecutionProvider"])
        runs["ort"] = lambda: osess.run(None, feeds)
    return runs


# onnxruntime has no CPU kernels for most bfloat16 ops (it refuses those models): normrt alone there
@pytest.mark.parametrize("file, runtime", [
    pytest.param(e["file"], r, id=f"{e['file'][:-5]}-{r}",
                 marks=pytest.mark.benchmark(group=f"half-{e['file'][:-5]}"))
    for e in fixtures() for r in (("normrt", "ort") if e["dtype"] == "float16" else ("normrt",))
])
def test_half_fixture(benchmark, file, runtime, threads):
    benchmark(_runs(file, threads)[runtime])

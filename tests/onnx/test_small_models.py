"""The small-model suite (bench/small_models.py): every model's normrt outputs match torch's.

Each model is exported from `transformers` (random init, small config) into the
suite's cache on first use (tens of seconds for all of them), then the
session's outputs are compared with the torch outputs saved at export time.
"""
import numpy as np
import pytest

pytest.importorskip("torch")
pytest.importorskip("transformers")

import normrt  # noqa: E402
from bench import small_models  # noqa: E402


@pytest.mark.parametrize("name", list(small_models.MODELS))
def test_small_model_matches_torch(name):
    path, feeds, expected = small_models.load(name)
    sess = normrt.InferenceSession(str(path))
    for _ in range(3):          # the first run traces; later runs take the specialized plan
        got = sess.run(None, feeds)
        assert len(got) == len(expected)
        for g, e in zip(got, expected):
            assert g.shape == e.shape and g.dtype == e.dtype
            scale = max(float(np.abs(e).max()), 1.0)
            np.testing.assert_allclose(g, e, rtol=1e-4, atol=2e-5 * scale)
    # the specialized plan (direct kernel calls prepared once) gives the generic plan's bits
    assert sess.executor.specialized
    generic = sess.executor.run(feeds, specialize=False)
    for g, s in zip(generic, got):
        assert g.dtype == s.dtype and np.array_equal(g, s, equal_nan=True)

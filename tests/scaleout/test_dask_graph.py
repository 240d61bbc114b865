"""The graphs normrt.dask builds (no cluster needed), and its import error."""
import sys

import numpy as np
import pytest

from normrt.scaleout import ModelRef

from bn_models import batched, conv_bn_model, shifted_data

da = pytest.importorskip("dask.array")


def test_the_model_is_one_graph_key_whatever_the_partition_count():
    import normrt.dask as nd
    model, _ = conv_bn_model()
    for rows in (1, 4):
        y = nd.predict(model, batched(shifted_data(40), rows))
        graph = dict(y.__dask_graph__())
        refs = [k for k, v in graph.items() if isinstance(getattr(v, "value", v), ModelRef)]
        assert len(refs) == 1, refs
        assert y.numblocks[0] == 40 // rows


def test_synchronous_scheduler_runs_predict_in_process():
    import dask

    import normrt
    import normrt.dask as nd
    model, _ = conv_bn_model(seed=2)
    x = shifted_data(9)
    with dask.config.set(scheduler="synchronous"):
        got = nd.predict(model, batched(x, 4)).compute()
    np.testing.assert_array_equal(got, normrt.InferenceSession(model).run(None, {"x": x})[0])


def test_missing_dask_names_the_extra(monkeypatch):
    import normrt.dask as nd
    monkeypatch.setitem(sys.modules, "dask", None)
    monkeypatch.setitem(sys.modules, "dask.array", None)
    with pytest.raises(ImportError, match=r"pip install 'normrt\[dask\]'"):
        nd.predict(conv_bn_model()[0], None)

"""The scale-out tests' shared Dask cluster (models and references: bn_models.py)."""
import pytest

import bn_models


@pytest.fixture(scope="session")
def dask_client():
    """One LocalCluster (2 worker processes x 1 thread) shared by every Dask test."""
    distributed = pytest.importorskip("distributed")
    import cloudpickle
    # the workers cannot import the tests' helper module: its functions travel by value
    cloudpickle.register_pickle_by_value(bn_models)
    cluster = distributed.LocalCluster(n_workers=2, threads_per_worker=1, processes=True,
                                       dashboard_address=None, silence_logs=40)
    client = distributed.Client(cluster)
    client.run(__import__, "normrt.dask")     # the workers' imports, once, before any test's timing
    try:
        yield client
    finally:
        client.close()
        cluster.close()
        cloudpickle.unregister_pickle_by_value(bn_models)

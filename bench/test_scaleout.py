"""pytest-benchmark cases for normrt.dask.predict (see bench/scaleout.py for the report).

One LocalCluster of 2 single-thread workers for the module; each case checks
its output against the plain loop's before timing. In CI (--benchmark-disable)
every case runs once.
"""
import numpy as np
import pytest

pytest.importorskip("distributed")

from .scaleout import Scaleout, partition_overhead, start_cluster  # noqa: E402

IMAGES, CHUNK = 32, 8


@pytest.fixture(scope="module")
def scaleout():
    cluster, client = start_cluster(2)
    try:
        yield Scaleout(client, IMAGES, CHUNK)
    finally:
        client.close()
        cluster.close()


@pytest.fixture(scope="module")
def plain_output(scaleout):
    return scaleout.plain()


@pytest.mark.benchmark(group="scaleout-groupnorm_cnn")
def test_plain_loop(benchmark, scaleout, plain_output):
    benchmark.extra_info["images"] = IMAGES
    np.testing.assert_array_equal(benchmark(scaleout.plain), plain_output)


@pytest.mark.parametrize("workers", [1, 2])
@pytest.mark.benchmark(group="scaleout-groupnorm_cnn")
def test_predict(benchmark, scaleout, plain_output, workers):
    benchmark.extra_info["images"] = IMAGES
    np.testing.assert_array_equal(benchmark(scaleout.predict, workers), plain_output)


@pytest.mark.benchmark(group="scaleout-overhead")
def test_partition_overhead(benchmark, scaleout):
    per_part, direct = benchmark.pedantic(partition_overhead, args=(scaleout.client, 50), kwargs={"repeat": 1},
                                          rounds=1, iterations=1)
    assert per_part > direct > 0

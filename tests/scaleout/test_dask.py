"""normrt.dask on a LocalCluster of 2 single-thread worker processes."""
import os
import signal
import time

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import normrt

pytest.importorskip("distributed")
import dask  # noqa: E402
import dask.array as da  # noqa: E402

import normrt.dask as nd  # noqa: E402
from normrt.scaleout import PartitionError  # noqa: E402

from bn_models import (assert_stats_close, batched, bn_statistics, conv_bn_model, conv_bn_reference_stats, multi_io_model,  # noqa: E402
                      shifted_data, slow_block)


def test_predict_equals_a_single_process_run_bitwise(dask_client):
    model, _ = conv_bn_model(hw=16)
    x = shifted_data(37, hw=16)
    y = nd.predict(model, batched(x, 8))
    assert y.chunks[0] == (8, 8, 8, 8, 5) and y.shape == (37, 5, 16, 16) and y.dtype == np.float32
    want = normrt.InferenceSession(model).run(None, {"x": x})[0]
    np.testing.assert_array_equal(y.compute(), want)


@settings(max_examples=6, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(chunks=st.lists(st.integers(1, 9), min_size=1, max_size=6), seed=st.integers(0, 100))
def test_predict_any_partitioning_is_bitwise_a_single_run(dask_client, chunks, seed):
    model = multi_io_model()
    rng = np.random.default_rng(seed)
    n = sum(chunks)
    a = rng.standard_normal((n, 4)).astype(np.float32)
    b = rng.standard_normal((n, 4)).astype(np.float32)
    s, p = nd.predict(model, {"a": da.from_array(a, chunks=(tuple(chunks), 4)), "b": batched(b, 5)})
    assert s.chunks[0] == tuple(chunks)
    want = normrt.InferenceSession(model).run(None, {"a": a, "b": b})
    for got, w in zip(dask.compute(s, p), want):
        np.testing.assert_array_equal(got, w)


def test_sessions_are_cached_per_worker_with_the_worker_thread_count(dask_client):
    from normrt.scaleout.model_ref import ModelRef
    model, _ = conv_bn_model(seed=11)
    nd.predict(model, batched(shifted_data(20), 2)).compute()
    digest = ModelRef.from_model(model).digest
    cached = dask_client.run(lambda: __import__("normrt.scaleout.session_cache", fromlist=["_"]).cache_info())
    assert sum((digest, 1) in v for v in cached.values()) >= 1      # one worker thread -> 1 session thread
    for v in cached.values():
        assert sum(k[0] == digest for k in v) <= 1                   # once per process, not per partition


def test_multi_input_multi_output_symbolic_batch(dask_client):
    model = multi_io_model()
    rng = np.random.default_rng(0)
    a = rng.standard_normal((23, 4)).astype(np.float32)
    b = rng.standard_normal((23, 4)).astype(np.float32)
    s, p = nd.predict(model, {"a": batched(a, 6), "b": batched(b, 10)})
    assert s.chunks == ((6, 6, 6, 5), (4,)) and p.chunks == ((6, 6, 6, 5), (1,))
    assert s.dtype == p.dtype == np.float32
    s_v, p_v = dask.compute(s, p)
    want = normrt.InferenceSession(model).run(None, {"a": a, "b": b})
    np.testing.assert_array_equal(s_v, want[0])
    np.testing.assert_array_equal(p_v, want[1])
    only = nd.predict(model, {"a": batched(a, 6), "b": batched(b, 6)}, output_names=["p"])
    np.testing.assert_array_equal(only.compute(), want[1])


def test_a_killed_worker_loses_no_output(dask_client):
    model, _ = conv_bn_model(seed=4, hw=16)
    x = shifted_data(60, hw=16)
    slow = batched(x, 3).map_blocks(slow_block, dtype=x.dtype)
    future = dask_client.compute(nd.predict(model, slow))
    pids = dask_client.run(os.getpid)
    deadline = time.time() + 30
    while not dask_client.processing() or sum(len(v) for v in dask_client.has_what().values()) < 3:
        assert time.time() < deadline, "the computation never started"
        time.sleep(0.05)
    assert not future.done()
    victim_addr, victim_pid = sorted(pids.items())[0]
    os.kill(victim_pid, signal.SIGKILL)                     # a real worker process, killed mid-computation
    got = future.result(timeout=120)
    np.testing.assert_array_equal(got, normrt.InferenceSession(model).run(None, {"x": x})[0])
    dask_client.wait_for_workers(2, timeout=60)
    assert victim_pid not in dask_client.run(os.getpid).values()


def test_recalibrate_matches_float64_and_is_the_same_on_1_and_2_workers(dask_client):
    model, params = conv_bn_model(seed=7)
    x = shifted_data(45, seed=8)
    ref = conv_bn_reference_stats(params, x)
    two = nd.recalibrate_batch_norm(model, batched(x, 7))
    assert_stats_close(bn_statistics(two), ref)
    with dask.config.set(scheduler="synchronous"):            # one worker: this process, one thread
        one = nd.recalibrate_batch_norm(model, batched(x, 7))
    for name, (m, v) in bn_statistics(two).items():
        np.testing.assert_array_equal(m, bn_statistics(one)[name][0])
        np.testing.assert_array_equal(v, bn_statistics(one)[name][1])
    for chunks in (1, 10, 45):                                # any chunking: the same to rounding
        other = bn_statistics(nd.recalibrate_batch_norm(model, batched(x, chunks)))
        for name, (m, v) in bn_statistics(two).items():
            np.testing.assert_allclose(other[name][0], m, rtol=1e-12, atol=1e-12 * np.sqrt(v).max())
            np.testing.assert_allclose(other[name][1], v, rtol=1e-12)
    single = normrt.recalibrate_batch_norm(model, [x[:20], x[20:]])
    assert_stats_close(bn_statistics(single), bn_statistics(two), rtol=1e-12)


def test_chunks_along_a_non_batch_axis_are_refused(dask_client):
    model, _ = conv_bn_model()
    x = da.from_array(shifted_data(8), chunks=(4, 3, 4, 8))   # split along axis 2 (and 0)
    with pytest.raises(ValueError, match=r"input 'x' is chunked along axis 2 .*rechunk"):
        nd.predict(model, x)
    with pytest.raises(ValueError, match=r"input 'x' is chunked along axis 2"):
        nd.recalibrate_batch_norm(model, x)


def test_missing_and_unknown_inputs(dask_client):
    a = da.zeros((4, 4), chunks=(2, 4), dtype=np.float32)
    with pytest.raises(ValueError, match=r"missing input\(s\) \['b'\]; the model's inputs are \['a', 'b'\]"):
        nd.predict(multi_io_model(), {"a": a})
    with pytest.raises(ValueError, match=r"unknown input name\(s\) \['c'\]"):
        nd.predict(multi_io_model(), {"a": a, "b": a, "c": a})
    with pytest.raises(TypeError, match="dict .* for a model with 2 inputs"):
        nd.predict(multi_io_model(), a)
    with pytest.raises(ValueError, match="input 'a' must have dtype float32, got float64"):
        nd.predict(multi_io_model(), {"a": a.astype(np.float64), "b": a})
    with pytest.raises(TypeError, match="must be a dask array"):
        nd.predict(multi_io_model(), {"a": np.zeros((4, 4), np.float32), "b": a})


def test_a_model_path_the_workers_cannot_read(dask_client, tmp_path):
    model, _ = conv_bn_model()
    path = tmp_path / "gone.onnx"
    path.write_bytes(model.SerializeToString())
    y = nd.predict(str(path), batched(shifted_data(4), 2))
    path.unlink()                           # the client read it; the workers will not find it
    with pytest.raises(PartitionError, match=r"partition \d \(inputs x: float32 \(2, 3, 8, 8\)\).*"
                                             r"cannot read the model file"):
        y.compute()


def test_a_failing_partition_names_its_index_and_shape(dask_client):
    from onnx import TensorProto, helper, numpy_helper
    # Reshape to (-1, 8): a partition with an odd batch cannot be reshaped
    graph = helper.make_graph(
        [helper.make_node("Reshape", ["x", "shape"], ["r"]), helper.make_node("Reshape", ["r", "back"], ["y"])],
        "g", [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", 4])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["N", 4])],
        initializer=[numpy_helper.from_array(np.array([-1, 8], np.int64), "shape"),
                     numpy_helper.from_array(np.array([-1, 4], np.int64), "back")])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    y = nd.predict(model, da.zeros((9, 4), chunks=((4, 3, 2), (4,)), dtype=np.float32))
    with pytest.raises(PartitionError, match=r"partition 1 \(inputs x: float32 \(3, 4\)\)"):
        y.compute()

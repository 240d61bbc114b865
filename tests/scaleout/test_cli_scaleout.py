"""`normrt batch` and `normrt recalibrate`."""
import io

import numpy as np
import onnx
import pytest

import normrt
from normrt.cli import main

from bn_models import assert_stats_close, bn_statistics, conv_bn_model, conv_bn_reference_stats, shifted_data

pytest.importorskip("distributed")


@pytest.fixture
def files(tmp_path):
    model, params = conv_bn_model(seed=3)
    onnx.save(model, tmp_path / "m.onnx")
    x = shifted_data(50, seed=4)
    np.save(tmp_path / "part0.npy", x[:30])
    np.save(tmp_path / "part1.npy", x[30:].astype(np.float64))    # cast to the model's float32
    return tmp_path, model, params, x


def _run(argv):
    out = io.StringIO()
    code = main([str(a) for a in argv], out=out)
    return code, out.getvalue()


def test_batch_to_zarr_on_a_running_cluster(files, dask_client):
    import dask.array as da
    d, model, _, x = files
    code, text = _run(["batch", d / "m.onnx", "--input", f"x={d}/part*.npy", "--out", d / "y.zarr",
                       "--scheduler", dask_client.scheduler.address, "--chunk", "8"])
    assert code == 0, text
    assert "output  y: float32 [50, 5, 8, 8]" in text and "7 partition(s)" in text
    got = da.from_zarr(str(d / "y.zarr"), component="y").compute()
    np.testing.assert_array_equal(got, normrt.InferenceSession(model).run(None, {"x": x})[0])


def test_batch_to_npy_stack_in_process(files):
    import dask.array as da
    d, model, _, x = files
    code, text = _run(["batch", d / "m.onnx", "--input", f"x={d}/part*.npy", "--out", d / "out",
                       "--workers", "0", "--no-progress"])
    assert code == 0, text
    got = da.from_npy_stack(str(d / "out" / "y")).compute()
    np.testing.assert_array_equal(got, normrt.InferenceSession(model).run(None, {"x": x})[0])


def test_recalibrate_on_a_cluster_and_in_process(files, dask_client, capsys):
    d, _, params, x = files
    ref = conv_bn_reference_stats(params, x)
    code, text = _run(["recalibrate", d / "m.onnx", "--input", f"x={d}/part*.npy", "--out", d / "a.onnx",
                       "--scheduler", dask_client.scheduler.address, "--chunk", "9"])
    assert code == 0, text
    assert "recalibrated 2 BatchNormalization node(s) in 2 pass(es) over 50 rows" in text
    assert_stats_close(bn_statistics(onnx.load(d / "a.onnx")), ref)
    code, text = _run(["recalibrate", d / "m.onnx", "--input", f"x={d}/part*.npy", "--out", d / "b.onnx",
                       "--workers", "0", "--progress"])
    assert code == 0, text
    assert "batch" in capsys.readouterr().err              # tqdm's bar
    assert_stats_close(bn_statistics(onnx.load(d / "b.onnx")), ref)


@pytest.mark.parametrize("argv, message", [
    (["batch", "{d}/m.onnx", "--input", "x={d}/none*.npy", "--out", "{d}/o"], "--input x='{d}/none*.npy': no file matches"),
    (["batch", "{d}/m.onnx", "--input", "z={d}/part0.npy", "--out", "{d}/o"], "--input z: the model has no input"),
    (["batch", "{d}/m.onnx", "--input", "x={d}/m.onnx", "--out", "{d}/o"], "is not a readable .npy array"),
    (["batch", "{d}/nope.onnx", "--input", "x={d}/part0.npy", "--out", "{d}/o"], "model file '{d}/nope.onnx' does not exist"),
    (["recalibrate", "{d}/relu.onnx", "--input", "x={d}/part0.npy", "--out", "{d}/o.onnx"],
     "the model has no BatchNormalization node to recalibrate"),
])
def test_errors_are_one_line(files, capsys, argv, message):
    d = files[0]
    from onnx import TensorProto, helper
    g = helper.make_graph([helper.make_node("Relu", ["x"], ["y"])], "g",
                          [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", 3, 8, 8])],
                          [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["N", 3, 8, 8])])
    onnx.save(helper.make_model(g, opset_imports=[helper.make_opsetid("", 17)]), d / "relu.onnx")
    code, _ = _run([a.format(d=d) for a in argv] + ["--workers", "0"])
    err = capsys.readouterr().err.strip().splitlines()
    assert code == 2 and len(err) == 1
    assert err[0].startswith("normrt: error: ") and message.format(d=d) in err[0]

"""Recalibration of torch-exported models against torch forward hooks in float64."""
import io

import numpy as np
import onnx
import pytest

import normrt

from bn_models import bn_statistics, shifted_data

torch = pytest.importorskip("torch")


def _net(seed):
    torch.manual_seed(seed)
    return torch.nn.Sequential(torch.nn.Conv2d(3, 6, 3, padding=1), torch.nn.BatchNorm2d(6), torch.nn.ReLU(),
                               torch.nn.Conv2d(6, 5, 3, padding=1), torch.nn.BatchNorm2d(5)).eval()


def _export(net, **kw):
    f = io.BytesIO()
    torch.onnx.export(net, torch.zeros(1, 3, 8, 8), f, dynamo=False, input_names=["x"], output_names=["y"],
                      dynamic_axes={"x": {0: "N"}, "y": {0: "N"}}, opset_version=17, **kw)
    return onnx.load_from_string(f.getvalue())


def _torch_reference(net, x):
    """Exact statistics in float64: each BN's input captured by a forward hook over all the
    data, BNs in order, each one's new statistics set before the next is measured."""
    net = net.double()
    stats = {}
    for bn in [m for m in net if isinstance(m, torch.nn.BatchNorm2d)]:
        seen = []
        h = bn.register_forward_hook(lambda mod, inp, out: seen.append(inp[0].detach()))
        with torch.no_grad():
            net(torch.from_numpy(x.astype(np.float64)))
        h.remove()
        v = seen[0]
        bn.running_mean.copy_(v.mean(dim=(0, 2, 3)))
        bn.running_var.copy_(v.var(dim=(0, 2, 3), unbiased=True))
        stats[bn] = (bn.running_mean.numpy().copy(), bn.running_var.numpy().copy())
    return list(stats.values())


@pytest.mark.parametrize("export_kw", [{"training": "PRESERVE"}, {"do_constant_folding": False}])
def test_exported_conv_bn_relu_conv_bn_matches_torch_hooks(export_kw):
    if "training" in export_kw:
        export_kw = {"training": torch.onnx.TrainingMode.PRESERVE}
    net = _net(0)
    model = _export(net, **export_kw)
    # a fresh BN: the exporter shares the all-ones / all-zeros tensors through Identity nodes
    assert sum(n.op_type == "Identity" for n in model.graph.node) >= 2
    x = shifted_data(40, seed=3)
    new = normrt.recalibrate_batch_norm(model, [x[:15], x[15:31], x[31:]])
    ref = _torch_reference(net, x)
    got = list(bn_statistics(new).values())
    for (m, v), (m_ref, v_ref) in zip(got, ref):
        np.testing.assert_array_less(np.abs(m - m_ref), 1e-6 * (np.abs(m_ref) + np.sqrt(v_ref)))
        np.testing.assert_allclose(v, v_ref, rtol=1e-6)
    # the recalibrated model agrees with the recalibrated torch model
    y = normrt.InferenceSession(new).run(None, {"x": x[:4]})[0]
    with torch.no_grad():
        y_ref = net(torch.from_numpy(x[:4].astype(np.float64))).numpy()
    np.testing.assert_allclose(y, y_ref, rtol=1e-4, atol=1e-4)


def test_default_eval_export_folds_batch_norm_and_is_refused():
    model = _export(_net(1))
    assert not any(n.op_type == "BatchNormalization" for n in model.graph.node)
    with pytest.raises(normrt.ModelError, match="no BatchNormalization.*TrainingMode.PRESERVE"):
        normrt.recalibrate_batch_norm(model, [shifted_data(4)])

"""Shared helpers for the scale-out tests: small ONNX models built with onnx.helper,
float64 numpy references (the shared Dask cluster is in conftest.py)."""
import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

OPSET = 17


def conv3x3_f64(x, w, b):
    """float64 reference 3x3 convolution, stride 1, padding 1 (NCHW, OIHW)."""
    x = np.asarray(x, np.float64)
    N, C, H, W = x.shape
    xp = np.pad(x, ((0, 0), (0, 0), (1, 1), (1, 1)))
    cols = np.stack([xp[:, :, i:i + H, j:j + W] for i in range(3) for j in range(3)], axis=2)   # N C 9 H W
    y = np.einsum("nckhw,ock->nohw", cols, np.asarray(w, np.float64).reshape(w.shape[0], C, 9))
    return y + np.asarray(b, np.float64)[None, :, None, None]


def bn_f64(x, scale, bias, mean, var, eps):
    shape = (1, -1) + (1,) * (x.ndim - 2)
    return ((x - mean.reshape(shape)) / np.sqrt(var.reshape(shape) + eps) * scale.reshape(shape)
            + bias.reshape(shape))


def conv_bn_model(seed=0, c_in=3, c_mid=6, c_out=5, eps=1e-5, dedup=False, batch="N", hw=8):
    """Conv–BN–ReLU–Conv–BN (stride 1, 3x3, pad 1) with random weights and stale statistics.

    dedup=True: the exporter's deduplicated form: BN1's scale and running_var are
    one all-ones initializer reached through Identity nodes, which a Mul after
    the model also uses (so the shared tensor must never change).
    Returns (model, params) with params holding the float64 weights.
    """
    rng = np.random.default_rng(seed)
    p = {
        "w1": rng.standard_normal((c_mid, c_in, 3, 3)).astype(np.float32) * 0.4,
        "b1": rng.standard_normal(c_mid).astype(np.float32),
        "g1": np.ones(c_mid, np.float32) if dedup else rng.uniform(0.5, 1.5, c_mid).astype(np.float32),
        "be1": rng.standard_normal(c_mid).astype(np.float32),
        "m1": np.zeros(c_mid, np.float32),
        "v1": np.ones(c_mid, np.float32),
        "w2": rng.standard_normal((c_out, c_mid, 3, 3)).astype(np.float32) * 0.3,
        "b2": rng.standard_normal(c_out).astype(np.float32),
        "g2": rng.uniform(0.5, 1.5, c_out).astype(np.float32),
        "be2": rng.standard_normal(c_out).astype(np.float32),
        "m2": rng.standard_normal(c_out).astype(np.float32),
        "v2": rng.uniform(0.5, 2, c_out).astype(np.float32),
    }
    inits = [numpy_helper.from_array(p[k], k) for k in ("w1", "b1", "be1", "m1", "w2", "b2", "g2", "be2", "m2", "v2")]
    nodes = [helper.make_node("Conv", ["x", "w1", "b1"], ["c1"], name="conv1", pads=[1, 1, 1, 1])]
    if dedup:
        inits.append(numpy_helper.from_array(np.ones(c_mid, np.float32), "ones"))
        nodes += [helper.make_node("Identity", ["ones"], ["g1"], name="id_g1"),
                  helper.make_node("Identity", ["ones"], ["v1"], name="id_v1")]
    else:
        inits += [numpy_helper.from_array(p["g1"], "g1"), numpy_helper.from_array(p["v1"], "v1")]
    nodes += [
        helper.make_node("BatchNormalization", ["c1", "g1", "be1", "m1", "v1"], ["n1"], name="bn1", epsilon=eps),
        helper.make_node("Relu", ["n1"], ["r1"], name="relu1"),
        helper.make_node("Conv", ["r1", "w2", "b2"], ["c2"], name="conv2", pads=[1, 1, 1, 1]),
        helper.make_node("BatchNormalization", ["c2", "g2", "be2", "m2", "v2"], ["y"], name="bn2", epsilon=eps),
    ]
    outputs = [helper.make_tensor_value_info("y", TensorProto.FLOAT, [batch, c_out, hw, hw])]
    if dedup:
        # another user of the shared all-ones tensor
        nodes.append(helper.make_node("Mul", ["y", "ones_c"], ["y_scaled"], name="mul_shared"))
        nodes.insert(0, helper.make_node("Identity", ["ones"], ["ones_id"], name="id_shared"))
        nodes.insert(1, helper.make_node("ReduceSum", ["ones_id"], ["ones_sum"], name="sum_shared", keepdims=1))
        nodes.insert(2, helper.make_node("Div", ["ones_sum", "ones_sum"], ["ones_c"], name="div_shared"))
        outputs.append(helper.make_tensor_value_info("ones_sum", TensorProto.FLOAT, [1]))
        outputs.append(helper.make_tensor_value_info("y_scaled", TensorProto.FLOAT, [batch, c_out, hw, hw]))
    graph = helper.make_graph(nodes, "conv_bn", [helper.make_tensor_value_info("x", TensorProto.FLOAT,
                                                                                [batch, c_in, hw, hw])],
                              outputs, initializer=inits)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", OPSET)])
    onnx.checker.check_model(model)
    return model, {k: v.astype(np.float64) for k, v in p.items()} | {"eps": eps}


def conv_bn_reference_stats(p, x):
    """Exact float64 recalibrated statistics of conv_bn_model over x: {bn: (mean, unbiased var)}."""
    c1 = conv3x3_f64(x, p["w1"], p["b1"])
    m1, v1 = c1.mean(axis=(0, 2, 3)), c1.var(axis=(0, 2, 3), ddof=1)
    r1 = np.maximum(bn_f64(c1, p["g1"], p["be1"], m1, v1, p["eps"]), 0)
    c2 = conv3x3_f64(r1, p["w2"], p["b2"])
    m2, v2 = c2.mean(axis=(0, 2, 3)), c2.var(axis=(0, 2, 3), ddof=1)
    return {"bn1": (m1, v1), "bn2": (m2, v2)}


def bn_statistics(model):
    """{BN node name: (running mean, running var)} as float64, resolved through Identity nodes."""
    inits = {t.name: numpy_helper.to_array(t) for t in model.graph.initializer}
    ident = {n.output[0]: n.input[0] for n in model.graph.node if n.op_type == "Identity"}

    def value(name):
        while name not in inits:
            name = ident[name]
        return inits[name].astype(np.float64)

    return {n.name: (value(n.input[3]), value(n.input[4])) for n in model.graph.node
            if n.op_type == "BatchNormalization"}


def assert_stats_close(got, ref, rtol=1e-6):
    """Means to rtol of (|mean| + std) (a mean near 0 has no relative digits), variances to rtol."""
    for name, (m_ref, v_ref) in ref.items():
        m, v = got[name]
        np.testing.assert_array_less(np.abs(m - m_ref), rtol * (np.abs(m_ref) + np.sqrt(v_ref)) + 1e-30,
                                     err_msg=f"{name} running_mean")
        np.testing.assert_allclose(v, v_ref, rtol=rtol, err_msg=f"{name} running_var")


def shifted_data(n, seed=1, c=3, hw=8, shift=2.0, scale=3.0):
    """Data from another distribution than N(0, 1): the domain shift that recalibration fixes."""
    rng = np.random.default_rng(seed)
    return (rng.standard_normal((n, c, hw, hw)) * scale + shift).astype(np.float32)


def multi_io_model():
    """Two inputs a (N, 4), b (N, 4) with a symbolic batch; outputs s = a + b (N, 4) and
    p = sum(a * b, axis 1) (N, 1)."""
    nodes = [helper.make_node("Add", ["a", "b"], ["s"]),
             helper.make_node("Mul", ["a", "b"], ["ab"]),
             helper.make_node("ReduceSum", ["ab", "axes"], ["p"], keepdims=1)]
    graph = helper.make_graph(
        nodes, "multi_io",
        [helper.make_tensor_value_info("a", TensorProto.FLOAT, ["batch", 4]),
         helper.make_tensor_value_info("b", TensorProto.FLOAT, ["batch", 4])],
        [helper.make_tensor_value_info("s", TensorProto.FLOAT, ["batch", 4]),
         helper.make_tensor_value_info("p", TensorProto.FLOAT, ["batch", 1])],
        initializer=[numpy_helper.from_array(np.array([1], np.int64), "axes")])
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", OPSET)])


def slow_block(block, seconds=0.15):
    """Identity that takes a while: keeps a computation running long enough to kill a worker in it."""
    import time
    time.sleep(seconds)
    return block


def batched(x, rows):
    """x as a dask array split along axis 0 only, `rows` per partition."""
    import dask.array as da
    return da.from_array(x, chunks=(rows,) + tuple(x.shape[1:]))

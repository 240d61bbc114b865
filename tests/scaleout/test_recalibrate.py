"""normrt.recalibrate_batch_norm against independent float64 statistics."""
import numpy as np
import onnx
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from onnx import TensorProto, helper, numpy_helper

import normrt
from normrt.scaleout.recalibrate import batch_norm_levels

from bn_models import assert_stats_close, bn_statistics, conv_bn_model, conv_bn_reference_stats, shifted_data


@settings(max_examples=8, deadline=None)
@given(seed=st.integers(0, 1000), n=st.integers(5, 40), data=st.data())
def test_conv_bn_relu_conv_bn_matches_float64_numpy(seed, n, data):
    model, params = conv_bn_model(seed=seed)
    x = shifted_data(n, seed=seed + 1)
    cuts = sorted(data.draw(st.lists(st.integers(1, n - 1), max_size=4, unique=True)))
    new = normrt.recalibrate_batch_norm(model, np.split(x, cuts))
    assert_stats_close(bn_statistics(new), conv_bn_reference_stats(params, x))


def test_shared_deduplicated_tensors_are_never_changed():
    model, params = conv_bn_model(dedup=True)
    x = shifted_data(24)
    before = normrt.InferenceSession(model).run(None, {"x": x[:4]})
    new = normrt.recalibrate_batch_norm(model, [x[:10], x[10:]])
    assert_stats_close(bn_statistics(new), conv_bn_reference_stats(params, x))
    inits = {t.name: numpy_helper.to_array(t) for t in new.graph.initializer}
    np.testing.assert_array_equal(inits["ones"], np.ones(6, np.float32))      # still shared by scale and Mul
    bn1 = next(n for n in new.graph.node if n.name == "bn1")
    assert bn1.input[1] == "g1" and bn1.input[3] != bn1.input[4]
    assert len({bn.input[4] for bn in new.graph.node if bn.op_type == "BatchNormalization"}) == 2
    after = normrt.InferenceSession(new).run(None, {"x": x[:4]})
    np.testing.assert_array_equal(after[1], before[1])           # the Mul's branch of the shared tensor
    assert "ones" in inits and "m1" not in inits                 # dead stale statistics are dropped
    onnx.checker.check_model(new)
    # the input model is not modified
    assert bn_statistics(model)["bn1"][1].tolist() == [1.0] * 6


def _bn_chain_model():
    """x -> BN_a -> BN_b -> Relu -> BN_c: each BN feeds the next directly (3 levels)."""
    rng = np.random.default_rng(5)
    inits, nodes, prev = [], [], "x"
    for k, name in enumerate(("a", "b", "c")):
        for p, v in (("s", rng.uniform(0.5, 2, 4)), ("b", rng.standard_normal(4)), ("m", np.zeros(4)),
                     ("v", np.ones(4))):
            inits.append(numpy_helper.from_array(v.astype(np.float32), f"{p}_{name}"))
        nodes.append(helper.make_node("BatchNormalization", [prev, f"s_{name}", f"b_{name}", f"m_{name}",
                                                             f"v_{name}"], [f"y_{name}"], name=f"bn_{name}"))
        prev = f"y_{name}"
        if name == "b":
            nodes.append(helper.make_node("Relu", [prev], ["r_b"]))
            prev = "r_b"
    graph = helper.make_graph(nodes, "chain", [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", 4])],
                              [helper.make_tensor_value_info(prev, TensorProto.FLOAT, ["N", 4])], initializer=inits)
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])


def test_batch_norms_feeding_batch_norms_take_one_pass_per_level():
    model = _bn_chain_model()
    assert [[n.name for n in lv] for lv in batch_norm_levels(model.graph)] == [["bn_a"], ["bn_b"], ["bn_c"]]
    x = (np.random.default_rng(6).standard_normal((50, 4)) * 4 - 3).astype(np.float32)
    new = normrt.recalibrate_batch_norm(model, lambda: iter([x[:17], x[17:]]))
    got = bn_statistics(new)
    inits = {t.name: numpy_helper.to_array(t).astype(np.float64) for t in model.graph.initializer}
    h, ref = x.astype(np.float64), {}
    for name in ("a", "b", "c"):
        m, v = h.mean(axis=0), h.var(axis=0, ddof=1)
        ref[f"bn_{name}"] = (m, v)
        h = (h - m) / np.sqrt(v + 1e-5) * inits[f"s_{name}"] + inits[f"b_{name}"]
        if name == "b":
            h = np.maximum(h, 0)
    assert_stats_close(got, ref, rtol=1e-6)
    # after recalibration on its own data, BN_a's output is standardized per channel
    y_a = normrt.InferenceSession(new).run(None, {"x": x})[0]
    assert y_a.shape == (50, 4)


def test_one_shot_iterator_refused_when_several_passes_are_needed():
    model = _bn_chain_model()
    x = np.ones((4, 4), np.float32)
    with pytest.raises(ValueError, match="one-shot iterator.*3 passes"):
        normrt.recalibrate_batch_norm(model, (b for b in [x]))


def test_model_without_batch_norm_is_refused(tmp_path):
    graph = helper.make_graph([helper.make_node("Relu", ["x"], ["y"])], "g",
                              [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 2])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 2])])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    with pytest.raises(normrt.ModelError, match="no BatchNormalization.*TrainingMode.PRESERVE"):
        normrt.recalibrate_batch_norm(model, [np.ones((1, 2), np.float32)])


def test_bad_batches():
    model, _ = conv_bn_model()
    with pytest.raises(ValueError, match="batches is empty"):
        normrt.recalibrate_batch_norm(model, [])
    with pytest.raises(ValueError, match=r"batch 0: missing input\(s\) \['x'\]"):
        normrt.recalibrate_batch_norm(model, [{"z": np.ones((2, 3, 8, 8), np.float32)}])
    with pytest.raises(ValueError, match="at least 2"):
        normrt.recalibrate_batch_norm(model.SerializeToString(), [np.ones((1, 3, 8, 8), np.float32)[:, :, :1, :1]
                                                                  .repeat(8, 2).repeat(8, 3)[:0]])


def test_recalibrated_model_runs_and_folds(tmp_path):
    model, params = conv_bn_model()
    x = shifted_data(16)
    new = normrt.recalibrate_batch_norm(model, [x])
    path = tmp_path / "new.onnx"
    onnx.save(new, path)
    sess = normrt.InferenceSession(str(path))
    assert sess.report["passes"].get("fold_batch_norm", 0) >= 1 or any(
        "fold" in k and v for k, v in sess.report["passes"].items())
    y = sess.run(None, {"x": x})[0]
    # second BN normalizes with the data's own statistics: per-channel mean of (y - beta)/gamma ~ 0
    z = (y.astype(np.float64) - params["be2"][None, :, None, None]) / params["g2"][None, :, None, None]
    np.testing.assert_allclose(z.mean(axis=(0, 2, 3)), 0, atol=1e-4)
    np.testing.assert_allclose(z.var(axis=(0, 2, 3), ddof=1), 1, rtol=1e-3)


def test_batch_norms_with_the_same_name_get_their_own_statistics():
    model, params = conv_bn_model(seed=9)
    for node in model.graph.node:
        if node.op_type == "BatchNormalization":
            node.name = "bn"
    x = shifted_data(12, seed=10)
    new = normrt.recalibrate_batch_norm(model, [x])
    inits = {t.name: numpy_helper.to_array(t).astype(np.float64) for t in new.graph.initializer}
    bns = [n for n in new.graph.node if n.op_type == "BatchNormalization"]
    got = {f"bn{k + 1}": (inits[bn.input[3]], inits[bn.input[4]]) for k, bn in enumerate(bns)}
    assert_stats_close(got, conv_bn_reference_stats(params, x))

"""residual_norm: Add(a, b) -> LayerNorm/RMSNorm becomes the norm's residual input (and, when the sum
is read elsewhere, its residual_sum output). Oracle: onnx.reference on the original model."""
import numpy as np
import pytest
from onnx import TensorProto, helper

from half_models import assert_matches_float64
from test_pass_layer_norm_decomposed import const, layer_norm_nodes, make_model, ops, run_and_compare, vi

RNG = np.random.default_rng(9)
F = TensorProto.FLOAT
PASS = "residual_norm"


def fused(report):
    return report["passes"].get(PASS, 0)


def refusals(report):
    return [e["reason"] for e in report["refused"] if e["pass"] == PASS]


def norm_node(op, x, y, opset):
    if op == "LayerNormalization":
        return helper.make_node(op, [x, "scale", "bias"], [y], name="norm", epsilon=1e-5)
    return helper.make_node(op, [x, "scale"], [y], name="norm", epsilon=1e-6)


def residual_model(op="LayerNormalization", *, a_shape=(2, 8, 16), b_shape=(2, 8, 16), sum_read_elsewhere=False,
                   sum_is_output=False, opset=None, elem=F):
    opset = opset or (23 if op == "RMSNormalization" else 17)
    dt = np.float32 if elem == F else np.float64
    nodes = [helper.make_node("Add", ["a", "b"], ["h"], name="add_residual"),
             norm_node(op, "h", "y", opset)]
    outputs = [vi("y", list(a_shape), elem)]
    if sum_read_elsewhere:    # pre-LN: the sum also feeds the next skip connection
        nodes.append(helper.make_node("Add", ["h", "y"], ["next"], name="next_residual"))
        outputs.append(vi("next", list(a_shape), elem))
    if sum_is_output:
        outputs.append(vi("h", list(a_shape), elem))
    inits = [const("scale", RNG.standard_normal(a_shape[-1]).astype(dt)),
             const("bias", RNG.standard_normal(a_shape[-1]).astype(dt))]
    return make_model(nodes, [vi("a", list(a_shape), elem), vi("b", list(b_shape), elem)], outputs, inits, opset)


def norm_of(sess):
    return next(n for n in sess.optimized_model.graph.node if n.domain == "normrt")


@pytest.mark.parametrize("op", ["LayerNormalization", "RMSNormalization"])
def test_sum_read_only_by_the_norm(op):
    sess, report = run_and_compare(residual_model(op))
    assert fused(report) == 1
    assert ops(sess) == [op.replace("Normalization", "Norm")]
    node = norm_of(sess)
    slot = 3 if node.op_type == "LayerNorm" else 2
    assert node.input[0] == "a" and node.input[slot] == "b"
    assert list(node.output) == ["y"]
    (entry,) = report["fused"]
    assert entry["residual"] is True and entry["residual_sum"] is False
    assert entry["nodes"][0] == "add_residual" and entry["pattern"].startswith("Add-")
    assert entry["normrt_node"] == node.name


@pytest.mark.parametrize("op", ["LayerNormalization", "RMSNormalization"])
@pytest.mark.parametrize("how", ["read_elsewhere", "graph_output"])
def test_sum_read_elsewhere_is_written_by_the_norm(op, how):
    model = residual_model(op, sum_read_elsewhere=how == "read_elsewhere", sum_is_output=how == "graph_output")
    sess, report = run_and_compare(model)
    assert fused(report) == 1
    node = norm_of(sess)
    assert node.output[-1] == "h"
    assert len(node.output) == (4 if node.op_type == "LayerNorm" else 2)
    assert "add_residual" not in [n.name for n in sess.optimized_model.graph.node]
    assert report["fused"][0]["residual_sum"] is True


def test_reader_of_the_sum_placed_before_the_norm_is_reordered():
    """Add -> Relu(h) -> LayerNorm(h): after the fusion the Relu must run after the norm writes h."""
    nodes = [helper.make_node("Add", ["a", "b"], ["h"], name="add_residual"),
             helper.make_node("Relu", ["h"], ["r"], name="relu"),
             norm_node("LayerNormalization", "h", "y", 17)]
    inits = [const("scale", RNG.standard_normal(16).astype(np.float32)),
             const("bias", RNG.standard_normal(16).astype(np.float32))]
    model = make_model(nodes, [vi("a", [4, 16]), vi("b", [4, 16])], [vi("y", [4, 16]), vi("r", [4, 16])],
                       inits, 17)
    sess, report = run_and_compare(model)
    assert fused(report) == 1
    assert ops(sess) == ["LayerNorm", "Relu"]


def test_layer_norm_with_statistics_outputs_and_sum():
    nodes = [helper.make_node("Add", ["a", "b"], ["h"], name="add_residual"),
             helper.make_node("LayerNormalization", ["h", "scale"], ["y", "mean", "rstd"], name="norm", axis=-1),
             helper.make_node("Mul", ["h", "y"], ["z"], name="reader")]
    inits = [const("scale", RNG.standard_normal(16).astype(np.float32))]
    model = make_model(nodes, [vi("a", [3, 16]), vi("b", [3, 16])],
                       [vi("z", [3, 16]), vi("mean", [3, 1]), vi("rstd", [3, 1])], inits, 17)
    sess, report = run_and_compare(model)
    assert fused(report) == 1
    node = norm_of(sess)
    assert list(node.input) == ["a", "scale", "", "b"] and list(node.output) == ["y", "mean", "rstd", "h"]


def test_decomposed_layer_norm_and_float64():
    nodes, inits = layer_norm_nodes(x="h", dtype=np.float64)
    nodes.insert(0, helper.make_node("Add", ["a", "b"], ["h"], name="add_residual"))
    inits += [const("scale", RNG.standard_normal(16)), const("bias", RNG.standard_normal(16)),
              const("eps", np.float64(1e-5))]
    D = TensorProto.DOUBLE
    model = make_model(nodes, [vi("a", [4, 16], D), vi("b", [4, 16], D)], [vi("y", [4, 16], D)], inits, 13)
    sess, report = run_and_compare(model, atol=1e-12)
    assert fused(report) == 1 and report["passes"]["recognized_norms"] == 1
    assert ops(sess) == ["LayerNorm"]
    (entry,) = report["fused"]
    assert entry["residual"] is True and "add_residual" in entry["nodes"] and "sub" in entry["nodes"]


def test_symbolic_dims_that_match_are_fused():
    model = residual_model(a_shape=("N", 8, 16), b_shape=("N", 8, 16))
    feed = {"a": RNG.standard_normal((3, 8, 16)).astype(np.float32),
            "b": RNG.standard_normal((3, 8, 16)).astype(np.float32)}
    sess, report = run_and_compare(model, feed)
    assert fused(report) == 1


@pytest.mark.parametrize("op", ["LayerNormalization", "RMSNormalization"])
@pytest.mark.parametrize("a_shape,b_shape", [
    (("N", 8, 16), (1, 8, 16)),                  # position embeddings broadcast over the batch
    ((1, 8, 16), ("N", 8, 16)),                  # ... on either side of the Add
    (("N", 8, 16), (16,)),
    (("N", 8, 16), ("M", 8, 16)),                # may differ from N at run time (here they do not)
    (("N", "S", 16), ("unk_0", "unk_1", 16)),    # a dynamic-axes export's dims under other names
])
@pytest.mark.parametrize("sum_read_elsewhere", [False, True])
def test_summands_that_may_broadcast_are_fused(op, a_shape, b_shape, sum_read_elsewhere):
    """The norm's call adds a residual of another shape as the Add would (kernel_calls.
    _broadcast_residual): the same outputs, the residual sum included, in the traced run and in
    the specialized plan."""
    model = residual_model(op, a_shape=a_shape, b_shape=b_shape, sum_read_elsewhere=sum_read_elsewhere)
    full = (3, 8, 16)

    def concrete(shape):
        return tuple(full[len(full) - len(shape) + i] if isinstance(d, str) else d for i, d in enumerate(shape))
    feed = {"a": RNG.standard_normal(concrete(a_shape)).astype(np.float32),
            "b": RNG.standard_normal(concrete(b_shape)).astype(np.float32)}
    sess, report = run_and_compare(model, feed)
    assert fused(report) == 1, refusals(report)
    assert "Add" not in ops(sess) or sum_read_elsewhere
    first = sess.run(None, feed)
    for got, want in zip(sess.run(None, feed), first):      # the specialized plan
        assert np.array_equal(got, want)


# ---- refusals ---------------------------------------------------------------

def test_a_summand_reshaped_at_run_time_fuses():
    """b from a Reshape to a shape fed at run time: its dims are unknown (its rank known from the
    shape input's length); the norm's call adds it as the Add would."""
    model = residual_model()
    model.graph.input[1].name = "b_flat"
    model.graph.input[1].type.tensor_type.shape.Clear()
    model.graph.input[1].type.tensor_type.shape.dim.add().dim_value = 2 * 8 * 16
    model.graph.input.append(vi("b_shape", [3], TensorProto.INT64))
    model.graph.node.insert(0, helper.make_node("Reshape", ["b_flat", "b_shape"], ["b"], name="reshape_b"))
    feed = {"a": RNG.standard_normal((2, 8, 16)).astype(np.float32),
            "b_flat": RNG.standard_normal(2 * 8 * 16).astype(np.float32), "b_shape": np.array([2, 8, 16])}
    sess, report = run_and_compare(model, feed)
    assert fused(report) == 1, refusals(report)


def test_refuses_sum_used_as_a_norm_parameter_and_fuses_float16():
    nodes = [helper.make_node("Add", ["a", "b"], ["h"], name="add_residual"),
             helper.make_node("RMSNormalization", ["h", "h"], ["y"], name="norm", axis=0)]
    model = make_model(nodes, [vi("a", [16]), vi("b", [16])], [vi("y", [16])], [], 23)
    sess, report = run_and_compare(model)
    assert fused(report) == 0 and any("parameter" in r for r in refusals(report))
    H = TensorProto.FLOAT16
    model = residual_model(elem=F)
    for v in list(model.graph.input) + list(model.graph.output):
        v.type.tensor_type.elem_type = H
    for t in model.graph.initializer:
        t.CopyFrom(const(t.name, np.zeros(16, np.float16) + 1))
    feed = {"a": RNG.standard_normal((2, 8, 16)).astype(np.float16),
            "b": RNG.standard_normal((2, 8, 16)).astype(np.float16)}
    sess, report = run_and_compare(model, feed, atol=5e-3)
    assert fused(report) == 1 and "Add" not in ops(sess)
    # the model rounds the sum to float16 before normalizing it: one such rounding on the output's scale
    assert_matches_float64(sess.run(None, feed), model, feed, ulps=2, f32_rel=2.0 ** -10)


def test_refuses_a_parameter_computed_from_the_sum():
    """LayerNorm(h, scale=ReduceMax(h)): the norm cannot produce h and wait for it."""
    nodes = [helper.make_node("Add", ["a", "b"], ["h"], name="add_residual"),
             helper.make_node("ReduceMax", ["h"], ["hmax"], name="max", axes=[0], keepdims=0),
             helper.make_node("LayerNormalization", ["h", "hmax"], ["y"], name="norm")]
    model = make_model(nodes, [vi("a", [4, 16]), vi("b", [4, 16])], [vi("y", [4, 16])], [], 17)
    sess, report = run_and_compare(model)
    assert fused(report) == 0 and "Add" in ops(sess)
    assert any("computed from the sum" in r for r in refusals(report))

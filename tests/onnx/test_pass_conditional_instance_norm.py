"""conditional_instance_norm: InstanceNormalization -> Mul(gamma) -> Add(beta), gamma/beta per (sample, channel)
(embedding lookups as torch exports them) or per-channel constants, becomes one normrt::InstanceNorm."""
import numpy as np
import pytest
from onnx import TensorProto, helper, numpy_helper
from onnx.reference import ReferenceEvaluator

import normrt
from graph_builder import optimize_and_compare, vi

RNG = np.random.default_rng(3)
PASS = "conditional_instance_norm"
N, C, T = 2, 6, 5


def arr(*shape):
    return RNG.standard_normal(shape).astype(np.float32)


def init(name, value):
    return numpy_helper.from_array(np.asarray(value), name)


def cond_model(lookup="gather_unsqueeze", *, in_scale=None, in_bias=None, mul=True, add=True,
               extra_outputs=(), x_shape=(N, C, 4, 4), opset=13):
    """IN(x) * gamma[style] + beta[style] with the lookup written the way an exporter does."""
    mk = helper.make_node
    inits = [init("ones", in_scale if in_scale is not None else np.ones(C, np.float32)),
             init("zeros", in_bias if in_bias is not None else np.zeros(C, np.float32)),
             init("table_g", 1 + 0.3 * arr(T, C)), init("table_b", arr(T, C))]
    nodes = [mk("InstanceNormalization", ["x", "ones", "zeros"], ["in"], name="inorm", epsilon=1e-5)]
    inputs = [vi("x", list(x_shape)), vi("style", [N], TensorProto.INT64)]
    if lookup == "gather_unsqueeze":            # legacy exporter: Gather, Unsqueeze(2), Unsqueeze(3)
        inits += [init("ax2", np.array([2], np.int64)), init("ax3", np.array([3], np.int64))]
        for p in ("g", "b"):
            nodes += [mk("Gather", [f"table_{p}", "style"], [f"{p}0"], name=f"gather_{p}"),
                      mk("Unsqueeze", [f"{p}0", "ax2"], [f"{p}1"], name=f"unsq_{p}"),
                      mk("Unsqueeze", [f"{p}1", "ax3"], [f"{p}2"], name=f"unsq2_{p}")]
    elif lookup == "gathernd_reshape":          # dynamo exporter: GatherND on style[:, None], Reshape [-1, C, 1, 1]
        inits += [init("axm1", np.array([-1], np.int64)), init("shape4", np.array([-1, C, 1, 1], np.int64))]
        nodes.append(mk("Unsqueeze", ["style", "axm1"], ["idx"], name="unsq_idx"))
        for p in ("g", "b"):
            nodes += [mk("GatherND", [f"table_{p}", "idx"], [f"{p}0"], name=f"gather_{p}"),
                      mk("Reshape", [f"{p}0", "shape4"], [f"{p}2"], name=f"view_{p}", allowzero=1)]
    elif lookup == "inputs":                    # gamma/beta fed directly, shape (N, C, 1, 1) with a symbolic N
        inputs = [vi("x", ["batch", C, 4, 4]), vi("g2", ["batch", C, 1, 1]), vi("b2", ["batch", C, 1, 1])]
    elif lookup == "batch_one":                 # (1, C, 1, 1) runtime values for x of batch N: broadcast
        inputs = [vi("x", list(x_shape)), vi("g2", [1, C, 1, 1]), vi("b2", [1, C, 1, 1])]
    elif lookup == "unknown_shape":
        inputs = [vi("x", list(x_shape)), vi("g2", [None] * 4), vi("b2", [None] * 4)]
    y = "in"
    if mul:
        nodes.append(helper.make_node("Mul", [y, "g2"], ["m"], name="mul"))
        y = "m"
    if add:
        nodes.append(helper.make_node("Add", ["b2", y], ["a"], name="add"))
        y = "a"
    nodes.append(helper.make_node("Identity", [y], ["y"], name="out"))
    outputs = [vi("y", list(x_shape))] + [vi(o, list(s)) for o, s in extra_outputs]
    graph = helper.make_graph(nodes, "cin", inputs, outputs, inits)
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", opset)])


def feed_of(model, n=N):
    feed = {}
    for i in model.graph.input:
        if i.name == "x":
            feed["x"] = arr(n, C, 4, 4) * 2 + 1
        elif i.name == "style":
            feed["style"] = np.array([3, 1], np.int64)[:n]
        elif i.name in ("g2", "b2"):
            lead = 1 if i.type.tensor_type.shape.dim[0].dim_value == 1 else n
            feed[i.name] = arr(lead, C, 1, 1)
    return feed


def run_and_compare(model, n=N):
    return optimize_and_compare(model, feed_of(model, n))


def normrt_nodes(model):
    return [n for n in model.graph.node if n.domain == "normrt"]


@pytest.mark.parametrize("lookup,opset", [("gather_unsqueeze", 13), ("gathernd_reshape", 18), ("inputs", 13)])
def test_conditional_fused(lookup, opset):
    opt, report = run_and_compare(cond_model(lookup, opset=opset))
    assert report["passes"][PASS] == 1
    (node,) = normrt_nodes(opt)
    assert node.op_type == "InstanceNorm" and len(node.input) == 3
    assert not [n for n in opt.graph.node if n.op_type in ("InstanceNormalization", "Mul", "Add")]
    # scale and B are the per-sample (N, C) values, reshaped from (N, C, 1, 1) by a Reshape node
    producers = {o: n for n in opt.graph.node for o in n.output}
    assert producers[node.input[1]].op_type == "Reshape" and producers[node.input[2]].op_type == "Reshape"
    (entry,) = report["fused"]
    assert entry["pattern"] == "ConditionalInstanceNorm" and entry["kernel"] == "instance_norm"
    assert entry["nodes"] == ["inorm", "mul", "add"] and entry["normrt_op"] == "InstanceNorm"


def test_symbolic_batch_runs_for_other_batch_sizes():
    opt, report = run_and_compare(cond_model("inputs"), n=3)
    assert report["passes"][PASS] == 1


def test_conditional_mul_only():
    opt, report = run_and_compare(cond_model("gather_unsqueeze", add=False))
    assert report["passes"][PASS] == 1
    assert [n.op_type for n in opt.graph.node if n.domain == "normrt"] == ["InstanceNorm"]


def test_constant_affine_folded_into_instance_norm():
    """Plain InstanceNormalization with its own scale/B, then Mul/Add by per-channel constants."""
    mk = helper.make_node
    inits = [init("s", 1 + arr(C)), init("b", arr(C)), init("g", 1 + arr(C, 1, 1)), init("h", arr(1, C, 1, 1))]
    graph = helper.make_graph(
        [mk("InstanceNormalization", ["x", "s", "b"], ["in"], name="inorm"),
         mk("Mul", ["g", "in"], ["m"], name="mul"), mk("Add", ["m", "h"], ["y"], name="add")],
        "affine", [vi("x", [N, C, 4, 4])], [vi("y", [N, C, 4, 4])], inits)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 15)])
    opt, report = run_and_compare(model)
    assert report["passes"][PASS] == 1
    assert [n.op_type for n in opt.graph.node] == ["InstanceNorm"]
    consts = {t.name: numpy_helper.to_array(t) for t in opt.graph.initializer}
    node = opt.graph.node[0]
    assert consts[node.input[1]].shape == (C,) and consts[node.input[2]].shape == (C,)
    assert report["fused"][0]["pattern"] == "InstanceNorm+affine"


def test_spatial_modulation_is_not_matched():
    """SPADE: gamma varies over space -> not this pattern; the InstanceNormalization alone becomes a node."""
    mk = helper.make_node
    graph = helper.make_graph(
        [mk("InstanceNormalization", ["x", "ones", "zeros"], ["in"], name="inorm"),
         mk("Mul", ["in", "g"], ["m"], name="mul"), mk("Add", ["m", "h"], ["y"], name="add")],
        "spade", [vi("x", [N, C, 4, 4]), vi("g", [N, C, 4, 4]), vi("h", [N, C, 4, 4])], [vi("y", [N, C, 4, 4])],
        [init("ones", np.ones(C, np.float32)), init("zeros", np.zeros(C, np.float32))])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 15)])
    feed = {"x": arr(N, C, 4, 4), "g": arr(N, C, 4, 4), "h": arr(N, C, 4, 4)}
    opt, report = normrt.optimize(model, report=True)
    assert report["passes"][PASS] == 0 and not report["refused"]
    assert [n.op_type for n in opt.graph.node] == ["InstanceNorm", "Elementwise"]   # the Mul and Add, one pass
    np.testing.assert_allclose(normrt.InferenceSession(opt).run(None, feed)[0],
                               ReferenceEvaluator(model).run(None, feed)[0], rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("kwargs,reason", [
    (dict(in_scale=np.full(C, 2.0, np.float32)), "its own scale/B"),
    (dict(in_bias=np.full(C, 0.5, np.float32), mul=False), "non-zero bias"),
    (dict(lookup="batch_one"), "is not per (sample, channel)"),
    (dict(lookup="unknown_shape"), "unknown"),
])
def test_refused(kwargs, reason):
    opt, report = run_and_compare(cond_model(**kwargs))
    assert report["passes"][PASS] == 0
    refused = [e for e in report["refused"] if e["pass"] == PASS]
    assert len(refused) == 1 and reason in refused[0]["reason"], refused
    # the InstanceNormalization still runs on its kernel (standard_norms), the Mul/Add after it
    assert [n.op_type for n in normrt_nodes(opt) if n.op_type != "Elementwise"] == ["InstanceNorm"]
    assert any(n.op_type in ("Mul", "Add", "Elementwise") for n in opt.graph.node)


def test_stops_before_a_needed_value():
    """The Mul's output is a graph output: the Mul is fused (its output is the node's), the Add stays after."""
    opt, report = run_and_compare(cond_model(extra_outputs=[("m", (N, C, 4, 4))]))
    assert report["passes"][PASS] == 1
    assert report["fused"][0]["nodes"] == ["inorm", "mul"]
    assert [n.op_type for n in opt.graph.node if n.op_type in ("InstanceNorm", "Mul", "Add")] == ["InstanceNorm", "Add"]


def test_instance_norm_output_needed_elsewhere_is_left_alone():
    opt, report = run_and_compare(cond_model(extra_outputs=[("in", (N, C, 4, 4))]))
    assert report["passes"][PASS] == 0
    assert [n.op_type for n in normrt_nodes(opt) if n.op_type != "Elementwise"] == ["InstanceNorm"]


def test_matches_a_converted_instance_norm():
    """standard_norms ran first: the normrt::InstanceNorm form is matched too, one report entry."""
    from normrt.onnx.loader import load_model
    from normrt.onnx.optimize import optimize_model
    from normrt.onnx.passes.conditional_instance_norm import ConditionalInstanceNorm
    from normrt.onnx.passes.constant_folding import ConstantFolding
    from normrt.onnx.passes.standard_norms import StandardNorms

    model = cond_model("gather_unsqueeze")
    opt, report = optimize_model(load_model(model),
                                 passes=[ConstantFolding(), StandardNorms(), ConditionalInstanceNorm()])
    assert report.passes[PASS] == 1 and report.counts() == {"InstanceNorm": 1}
    assert not [n for n in opt.graph.node if n.op_type in ("Mul", "Add")]
    feed = feed_of(model)
    np.testing.assert_allclose(normrt.InferenceSession(opt).run(None, feed)[0],
                               ReferenceEvaluator(model).run(None, feed)[0], rtol=1e-5, atol=1e-5)

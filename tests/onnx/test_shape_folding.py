"""constant_folding on shape arithmetic: Shape/Gather/Slice/ReduceProd/Concat/... chains
feeding a Reshape fold to constants when the input shapes are fixed, and stay (to be
folded per input shape by the specialized plan) when they are symbolic.
Oracle: onnx.reference on the original model; hypothesis draws the chains."""
import numpy as np
from hypothesis import given, settings, strategies as st
from onnx import TensorProto, helper

import normrt
from onnx.reference import ReferenceEvaluator
from test_pass_layer_norm_decomposed import const, make_model, vi

I64 = TensorProto.INT64


@st.composite
def reshape_chains(draw):
    """(nodes, inits, x shape, target shape): x reshaped to its axes merged in contiguous groups,
    the target computed from Shape(x) by a random spelling per group."""
    shape = draw(st.lists(st.integers(1, 5), min_size=2, max_size=4))
    rank = len(shape)
    cuts = sorted(draw(st.sets(st.integers(1, rank - 1), max_size=rank - 1)))
    groups = list(zip([0] + cuts, cuts + [rank]))
    nodes = [helper.make_node("Shape", ["x"], ["s"], name="shape")]
    inits = []
    parts, target = [], []
    minus_one = draw(st.sampled_from([None] + list(range(len(groups)))))
    for g, (a, b) in enumerate(groups):
        out = f"g{g}"
        target.append(int(np.prod(shape[a:b])))
        if g == minus_one:
            inits.append(const(out, np.array([-1], np.int64)))
            parts.append(out)
            continue
        spelling = draw(st.sampled_from(["slice_prod", "gather", "shape_range", "arith"]))
        if spelling == "gather" and b - a == 1:
            inits.append(const(f"i{g}", np.array(a, np.int64)))
            inits.append(const(f"ax{g}", np.array([0], np.int64)))
            nodes += [helper.make_node("Gather", ["s", f"i{g}"], [out + "_d"], name=out + "_gather", axis=0),
                      helper.make_node("Unsqueeze", [out + "_d", f"ax{g}"], [out], name=out + "_unsq")]
        elif spelling == "shape_range":
            # Shape-15's start/end, then ReduceProd
            nodes += [helper.make_node("Shape", ["x"], [out + "_s"], name=out + "_shape", start=a, end=b),
                      helper.make_node("ReduceProd", [out + "_s"], [out], name=out + "_prod", keepdims=1)]
        else:
            inits += [const(f"st{g}", np.array([a], np.int64)), const(f"en{g}", np.array([b], np.int64))]
            nodes += [helper.make_node("Slice", ["s", f"st{g}", f"en{g}"], [out + "_sl"], name=out + "_slice"),
                      helper.make_node("ReduceProd", [out + "_sl"], [out + ("_p" if spelling == "arith" else "")],
                                       name=out + "_prod", keepdims=1)]
            if spelling == "arith":    # (p * 3) / 3 + 0, through a float Cast and back
                inits += [const(f"three{g}", np.array(3, np.int64)), const(f"zero{g}", np.array(0.0, np.float32))]
                nodes += [helper.make_node("Mul", [out + "_p", f"three{g}"], [out + "_m"], name=out + "_mul"),
                          helper.make_node("Div", [out + "_m", f"three{g}"], [out + "_dv"], name=out + "_div"),
                          helper.make_node("Cast", [out + "_dv"], [out + "_f"], name=out + "_cast", to=1),
                          helper.make_node("Add", [out + "_f", f"zero{g}"], [out + "_a"], name=out + "_add"),
                          helper.make_node("Cast", [out + "_a"], [out], name=out + "_back", to=I64)]
        parts.append(out)
    nodes += [helper.make_node("Concat", parts, ["target"], name="concat", axis=0),
              helper.make_node("Reshape", ["x", "target"], ["r"], name="reshape"),
              helper.make_node("Relu", ["r"], ["y"], name="relu")]
    return nodes, inits, shape, target, len(groups) > 1 or minus_one is None


def _model(nodes, inits, x_dims, y_dims):
    return make_model(nodes, [vi("x", x_dims)], [vi("y", y_dims)], inits, opset=17)


@settings(max_examples=40, deadline=None)
@given(chain=reshape_chains())
def test_fixed_shapes_fold_the_chain_to_a_constant(chain):
    nodes, inits, shape, target, _ = chain
    model = _model(nodes, inits, shape, target)
    x = np.random.default_rng(0).standard_normal(shape).astype(np.float32)
    sess = normrt.InferenceSession(model.SerializeToString())
    # (a Reshape to the shape x already has goes too: no_op_views)
    assert [n.op_type for n in sess.optimized_model.graph.node] == (["Relu"] if target == shape else ["Reshape", "Relu"])
    np.testing.assert_array_equal(sess.run(None, {"x": x})[0], ReferenceEvaluator(model).run(None, {"x": x})[0])


@settings(max_examples=15, deadline=None)
@given(chain=reshape_chains())
def test_symbolic_shapes_keep_the_chain_and_run_any_shape(chain):
    nodes, inits, shape, target, reads_shape = chain
    model = _model(nodes, inits, [f"d{i}" for i in range(len(shape))], [f"t{i}" for i in range(len(target))])
    sess = normrt.InferenceSession(model.SerializeToString())
    assert ("Shape" in [n.op_type for n in sess.optimized_model.graph.node]) == reads_shape
    rng = np.random.default_rng(1)
    for dims in (shape, [d + 1 for d in shape], shape):
        x = rng.standard_normal(dims).astype(np.float32)
        np.testing.assert_array_equal(sess.run(None, {"x": x})[0],
                                      ReferenceEvaluator(model).run(None, {"x": x})[0])


def test_shape_of_a_graph_output_or_unknown_dim_is_not_folded():
    from normrt.onnx.passes import PassContext
    from normrt.onnx.passes.constant_folding import static_shape_value
    nodes = [helper.make_node("Shape", ["x"], ["s"], name="shape"),
             helper.make_node("Shape", ["x"], ["tail"], name="tail", start=-2),
             helper.make_node("Size", ["x"], ["n"], name="size")]
    model = make_model(nodes, [vi("x", [2, "k", 4])], [vi("s", [3], I64), vi("tail", [2], I64), vi("n", [], I64)],
                       [], opset=17)
    ctx = PassContext(model)
    assert all(static_shape_value(ctx, n) is None for n in ctx.nodes)
    model = make_model(nodes, [vi("x", [2, 3, 4])], [vi("s", [3], I64), vi("tail", [2], I64), vi("n", [], I64)],
                       [], opset=17)
    ctx = PassContext(model)
    assert [static_shape_value(ctx, n).tolist() for n in ctx.nodes] == [[2, 3, 4], [3, 4], 24]
    # graph outputs stay produced by their nodes
    sess = normrt.InferenceSession(model.SerializeToString())
    assert len(sess.optimized_model.graph.node) == 3
    assert [v.tolist() for v in sess.run(None, {"x": np.zeros((2, 3, 4), np.float32)})] == [[2, 3, 4], [3, 4], 24]


def legacy_group_norm_chain(blocks, groups=2, channels=4):
    """`blocks` GroupNorms one after the other, each as the opset-13 TorchScript exporter writes it:
    Reshape(x, [0, G, -1]) -> InstanceNormalization -> Reshape(., Shape(x)) -> Mul -> Add -> Relu.
    Reshape-13's inference reads a constant shape only: the shape of each block's output is
    known once the Shape of its input is folded, which needs the block before it settled."""
    rng = np.random.default_rng(3)
    inits = [const("target", np.array([0, groups, -1], np.int64)),
             const("ones", np.ones(groups, np.float32)), const("zeros", np.zeros(groups, np.float32))]
    nodes, x = [], "x"
    for b in range(blocks):
        p = f"b{b}_"
        inits += [const(p + "gamma", (1 + 0.3 * rng.standard_normal((channels, 1, 1))).astype(np.float32)),
                  const(p + "beta", rng.standard_normal((channels, 1, 1)).astype(np.float32))]
        nodes += [helper.make_node("Reshape", [x, "target"], [p + "r1"], name=p + "reshape"),
                  helper.make_node("InstanceNormalization", [p + "r1", "ones", "zeros"], [p + "in"],
                                   name=p + "inorm", epsilon=1e-5),
                  helper.make_node("Shape", [x], [p + "shape"], name=p + "shape"),
                  helper.make_node("Reshape", [p + "in", p + "shape"], [p + "r2"], name=p + "reshape_back"),
                  helper.make_node("Mul", [p + "r2", p + "gamma"], [p + "m"], name=p + "mul"),
                  helper.make_node("Add", [p + "m", p + "beta"], [p + "a"], name=p + "add"),
                  helper.make_node("Relu", [p + "a"], [p + "y"], name=p + "relu")]
        x = p + "y"
    nodes.append(helper.make_node("Identity", [x], ["y"], name="out"))
    return make_model(nodes, [vi("x", [1, channels, 5, 6])], [vi("y", [1, channels, 5, 6])], inits, opset=13)


def test_a_long_chain_of_legacy_group_norms_folds_all_its_shapes():
    """More blocks than the folding's refresh rounds (MAX_SHAPE_ROUNDS): the sweep types the nodes
    it keeps as it goes (one-node inference), so every Shape folds and every GroupNorm fuses."""
    from normrt.onnx.passes.constant_folding import MAX_SHAPE_ROUNDS
    blocks = MAX_SHAPE_ROUNDS + 4
    model = legacy_group_norm_chain(blocks)
    sess = normrt.InferenceSession(model.SerializeToString())
    left = [n.op_type for n in sess.optimized_model.graph.node]
    assert "Shape" not in left and left.count("GroupNorm") == blocks, left
    assert not sess.report["refused"]
    x = np.random.default_rng(4).standard_normal((1, 4, 5, 6)).astype(np.float32)
    got = sess.run(None, {"x": x})[0]
    np.testing.assert_allclose(got, ReferenceEvaluator(model).run(None, {"x": x})[0], rtol=1e-5, atol=1e-5)
    one = normrt.InferenceSession(model.SerializeToString(), num_threads=1).run(None, {"x": x})[0]
    two = normrt.InferenceSession(model.SerializeToString(), num_threads=2).run(None, {"x": x})[0]
    np.testing.assert_array_equal(one, two)


def test_the_chain_with_a_symbolic_dim_keeps_its_shapes():
    """Refusing check: one-node inference learns no static shape from a dim_param, so no Shape
    folds (the plan folds them per input shape) and the model runs at other sizes."""
    model = legacy_group_norm_chain(3)
    model.graph.input[0].type.tensor_type.shape.dim[2].dim_param = "h"
    sess = normrt.InferenceSession(model.SerializeToString())
    assert "Shape" in [n.op_type for n in sess.optimized_model.graph.node]
    for h in (5, 7):
        x = np.random.default_rng(h).standard_normal((1, 4, h, 6)).astype(np.float32)
        np.testing.assert_allclose(sess.run(None, {"x": x})[0], ReferenceEvaluator(model).run(None, {"x": x})[0],
                                   rtol=1e-5, atol=1e-5)


@settings(max_examples=40, deadline=None)
@given(shape=st.lists(st.integers(1, 5), min_size=2, max_size=4), data=st.data())
def test_picking_known_dims_of_a_partly_symbolic_shape_folds(shape, data):
    """A dynamic-axes export's `x.shape[-1] // 2`: Gather / Slice of Shape(x) that pick only dims
    shape inference knows fold to constants though other dims are symbolic; a pick that touches
    a symbolic dim stays, computed per input shape. Either way onnx.reference's results."""
    rank = len(shape)
    symbolic = data.draw(st.sets(st.integers(0, rank - 1), max_size=rank - 1))
    dims = [f"d{i}" if i in symbolic else shape[i] for i in range(rank)]
    how = data.draw(st.sampled_from(["gather", "gather_negative", "slice"]))
    if how == "slice":
        a = data.draw(st.integers(0, rank - 1))
        b = data.draw(st.integers(a + 1, rank))
        picked = list(range(a, b))
        inits = [const("st", np.array([a], np.int64)), const("en", np.array([b], np.int64))]
        pick = helper.make_node("Slice", ["s", "st", "en"], ["p"], name="pick")
    else:
        i = data.draw(st.integers(0, rank - 1))
        picked = [i]
        index = i - rank if how == "gather_negative" else i
        inits = [const("ix", np.array([index], np.int64))]
        pick = helper.make_node("Gather", ["s", "ix"], ["p"], name="pick", axis=0)
    # y = x + (the picked dims' product), broadcast: the value is read, not only its shape
    nodes = [helper.make_node("Shape", ["x"], ["s"], name="shape"), pick,
             helper.make_node("ReduceProd", ["p"], ["n"], name="prod", keepdims=1),
             helper.make_node("Cast", ["n"], ["nf"], name="cast", to=TensorProto.FLOAT),
             helper.make_node("Add", ["x", "nf"], ["y"], name="add")]
    model = make_model(nodes, [vi("x", dims)], [vi("y", dims)], inits, opset=17)
    sess = normrt.InferenceSession(model.SerializeToString())
    known = all(i not in symbolic for i in picked)
    assert ("Shape" not in [n.op_type for n in sess.optimized_model.graph.node]) == known
    x = np.random.default_rng(0).standard_normal(shape).astype(np.float32)
    for _ in range(2):
        np.testing.assert_array_equal(sess.run(None, {"x": x})[0], ReferenceEvaluator(model).run(None, {"x": x})[0])

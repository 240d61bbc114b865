"""no_op_views: nodes that hand their input on unchanged are dropped, Transpose pairs composed.
Oracle: onnx.reference on the original model (the results are bitwise equal: only
copies and views go)."""
import itertools

import numpy as np
import pytest
from hypothesis import given, settings, strategies as st
from onnx import TensorProto, helper
from onnx.reference import ReferenceEvaluator

import normrt
from test_pass_layer_norm_decomposed import const, make_model, vi

SHAPE = [2, 3, 4]
PERMS = list(itertools.permutations(range(3)))


def no_op(kind, x, out, k):
    """(nodes, initializers) of a node returning x (shape SHAPE) unchanged."""
    if kind == "pad":
        return [helper.make_node("Pad", [x, f"z{k}"], [out], name=out)], [const(f"z{k}", np.zeros(6, np.int64))]
    if kind == "slice":
        return ([helper.make_node("Slice", [x, f"b{k}", f"e{k}", f"a{k}"], [out], name=out)],
                [const(f"b{k}", np.array([0, -4], np.int64)), const(f"e{k}", np.array([2**62, 4], np.int64)),
                 const(f"a{k}", np.array([0, -1], np.int64))])
    if kind == "reshape":
        return [helper.make_node("Reshape", [x, f"s{k}"], [out], name=out)], [const(f"s{k}", np.array([2, -1, 4]))]
    if kind == "identity":
        return [helper.make_node("Identity", [x], [out], name=out)], []
    if kind in ("mul_ones", "ones_mul", "div_ones"):
        # ones of a shape broadcasting to x's without growing it
        ones = const(f"o{k}", np.ones([(), (4,), (1, 3, 1), (2, 3, 4)][k % 4], np.float32))
        args = [f"o{k}", x] if kind == "ones_mul" else [x, f"o{k}"]
        return [helper.make_node("Div" if kind == "div_ones" else "Mul", args, [out], name=out)], [ones]
    if kind in ("resize_sizes", "resize_scales"):
        # to x's own size at scale 1, under each coordinate transformation that maps y to y
        ctm = ["half_pixel", "half_pixel_symmetric", "pytorch_half_pixel", "align_corners", "asymmetric"][k % 5]
        mode = ["nearest", "linear"][k % 2]
        if kind == "resize_sizes":
            ins, inits = [x, "", "", f"sz{k}"], [const(f"sz{k}", np.array(SHAPE, np.int64))]
        else:
            ins, inits = [x, "", f"sc{k}"], [const(f"sc{k}", np.ones(len(SHAPE), np.float32))]
        return [helper.make_node("Resize", ins, [out], name=out, mode=mode, coordinate_transformation_mode=ctm,
                                 nearest_mode=["floor", "ceil", "round_prefer_floor"][k % 3])], inits
    if kind == "cast":       # float32 -> float32
        return [helper.make_node("Cast", [x], [out], name=out, to=TensorProto.FLOAT)], []
    if kind == "round_trip":  # float32 -> float64 -> float32: every float32 value survives
        return [helper.make_node("Cast", [x], [out + "_w"], name=out + "_w", to=TensorProto.DOUBLE),
                helper.make_node("Cast", [out + "_w"], [out], name=out, to=TensorProto.FLOAT)], []
    # a Transpose pair composing to the identity
    p = PERMS[k % len(PERMS)]
    inverse = [int(i) for i in np.argsort(p)]
    return ([helper.make_node("Transpose", [x], [out + "_t"], name=out + "_t", perm=list(p)),
             helper.make_node("Transpose", [out + "_t"], [out], name=out, perm=inverse)], [])


@settings(max_examples=30, deadline=None)
@given(kinds=st.lists(st.sampled_from(["pad", "slice", "reshape", "identity", "cast", "round_trip", "transposes",
                                       "mul_ones", "ones_mul", "div_ones", "resize_sizes", "resize_scales"]),
                      min_size=1, max_size=5))
def test_generated_no_op_chains_vanish(kinds):
    nodes, inits, x = [], [], "x"
    for k, kind in enumerate(kinds):
        n, i = no_op(kind, x, f"v{k}", k)
        nodes += n
        inits += i
        x = f"v{k}"
    nodes.append(helper.make_node("Neg", [x], ["y"], name="neg"))
    model = make_model(nodes, [vi("x", SHAPE)], [vi("y", SHAPE)], inits, opset=17)
    x = np.random.default_rng(0).standard_normal(SHAPE).astype(np.float32)
    sess = normrt.InferenceSession(model.SerializeToString())
    assert [n.op_type for n in sess.optimized_model.graph.node] == ["Neg"]
    np.testing.assert_array_equal(sess.run(None, {"x": x})[0], ReferenceEvaluator(model).run(None, {"x": x})[0])
    # non-finite values and -0 pass as they are (x * 1 and x / 1 keep them bitwise; a unit Resize
    # is a copy, as onnxruntime makes it, not the NaN a literal 0 * inf interpolation weight gives)
    x.flat[:4] = [np.nan, -0.0, np.inf, -np.inf]
    assert np.array_equal((-x).view(np.uint32), sess.run(None, {"x": x})[0].view(np.uint32))


@settings(max_examples=20, deadline=None)
@given(p1=st.sampled_from(PERMS), p2=st.sampled_from(PERMS))
def test_transpose_pairs_compose(p1, p2):
    nodes = [helper.make_node("Transpose", ["x"], ["t"], name="t1", perm=list(p1)),
             helper.make_node("Transpose", ["t"], ["u"], name="t2", perm=list(p2)),
             helper.make_node("Neg", ["u"], ["y"], name="neg")]
    out_shape = [SHAPE[p1[i]] for i in p2]
    model = make_model(nodes, [vi("x", SHAPE)], [vi("y", out_shape)], [], opset=17)
    feed = {"x": np.random.default_rng(1).standard_normal(SHAPE).astype(np.float32)}
    sess = normrt.InferenceSession(model.SerializeToString())
    ops = [n.op_type for n in sess.optimized_model.graph.node]
    composed = [p1[i] for i in p2]
    assert ops == (["Neg"] if composed == [0, 1, 2] else ["Transpose", "Neg"])
    np.testing.assert_array_equal(sess.run(None, feed)[0], ReferenceEvaluator(model).run(None, feed)[0])


def test_refused_forms_stay():
    from normrt.onnx.passes import PassContext
    from normrt.onnx.passes.no_op_views import NoOpViews, is_no_op
    # a no-op whose output is a graph output; a Pad by non-constant pads; a real Slice; Casts
    # that change the type (float32 -> float16 -> float32 rounds)
    nodes = [helper.make_node("Identity", ["x"], ["y"], name="id"),
             helper.make_node("Pad", ["x", "p"], ["q"], name="pad"),
             helper.make_node("Slice", ["x", "b", "e"], ["r"], name="slice"),
             helper.make_node("Cast", ["x"], ["h"], name="down", to=TensorProto.FLOAT16),
             helper.make_node("Cast", ["h"], ["f"], name="up", to=TensorProto.FLOAT)]
    model = make_model(nodes, [vi("x", SHAPE), vi("p", [6], TensorProto.INT64)],
                       [vi("y", SHAPE), vi("q", None), vi("r", [1, 3, 4]), vi("f", SHAPE)],
                       [const("b", np.array([1])), const("e", np.array([5]))], opset=17)
    ctx = PassContext(model)
    ident, pad, sl, down, up = ctx.nodes
    assert is_no_op(ctx, ident) and not is_no_op(ctx, pad) and not is_no_op(ctx, sl)
    assert not is_no_op(ctx, down) and not is_no_op(ctx, up)
    (m,) = list(NoOpViews().matches(ctx))
    assert NoOpViews().check(ctx, m) == "its output is a graph output"


def test_ones_that_are_not_an_identity_stay():
    """Refusing checks: ones broadcasting x to a bigger shape, a constant not all ones,
    and ones divided by x are no identity."""
    from normrt.onnx.passes import PassContext
    from normrt.onnx.passes.no_op_views import is_no_op
    nodes = [helper.make_node("Mul", ["x", "grow"], ["a"], name="grow"),
             helper.make_node("Mul", ["x", "almost"], ["b"], name="almost"),
             helper.make_node("Div", ["one", "x"], ["c"], name="reciprocal")]
    model = make_model(nodes, [vi("x", SHAPE)], [vi("a", [2] + SHAPE), vi("b", SHAPE), vi("c", SHAPE)],
                       [const("grow", np.ones([2] + SHAPE, np.float32)),
                        const("almost", np.array([1, 1, 1, 0.999], np.float32)),
                        const("one", np.array(1, np.float32))],
                       opset=17)
    ctx = PassContext(model)
    assert not any(is_no_op(ctx, n) for n in ctx.nodes)


@pytest.mark.parametrize("ctm,scale,nearest_mode", [
    ("half_pixel", 1.01, "floor"),            # int(4 * 1.01) = 4: x's size, but the coordinates move
    ("align_corners", 1.1, "floor"),          # the same, nearest: y * 3 / 3.4 floored
])
def test_resizes_to_the_same_size_that_move_values_stay(ctm, scale, nearest_mode):
    x = np.random.default_rng(1).standard_normal((1, 2, 4, 4)).astype(np.float32)
    mode = "linear" if ctm == "half_pixel" else "nearest"
    nodes = [helper.make_node("Resize", ["x", "", "sc"], ["r"], name="r", mode=mode,
                              coordinate_transformation_mode=ctm, nearest_mode=nearest_mode),
             helper.make_node("Neg", ["r"], ["y"], name="neg")]
    nodes[0].input[1] = "roi"          # required before opset 13
    model = make_model(nodes, [vi("x", [1, 2, 4, 4])], [vi("y", [1, 2, 4, 4])],
                       [const("sc", np.array([1, 1, scale, scale], np.float32)),
                        const("roi", np.zeros(0, np.float32))], opset=11)
    sess = normrt.InferenceSession(model.SerializeToString())
    assert [n.op_type for n in sess.optimized_model.graph.node] == ["Resize", "Neg"]
    want = ReferenceEvaluator(model).run(None, {"x": x})[0]
    assert not np.array_equal(want, -x)
    np.testing.assert_allclose(sess.run(None, {"x": x})[0], want, rtol=1e-6, atol=1e-6)


def test_round_trip_cast_whose_wide_value_is_read_elsewhere():
    # the way back goes; the widening Cast stays for its other reader
    nodes = [helper.make_node("Cast", ["x"], ["w"], name="wide", to=TensorProto.DOUBLE),
             helper.make_node("Cast", ["w"], ["b"], name="back", to=TensorProto.FLOAT),
             helper.make_node("Neg", ["b"], ["y"], name="neg"),
             helper.make_node("Abs", ["w"], ["z"], name="abs")]
    model = make_model(nodes, [vi("x", SHAPE)], [vi("y", SHAPE), vi("z", SHAPE, TensorProto.DOUBLE)], [], opset=17)
    sess = normrt.InferenceSession(model.SerializeToString())
    assert sorted(n.op_type for n in sess.optimized_model.graph.node) == ["Abs", "Cast", "Neg"]
    x = np.random.default_rng(2).standard_normal(SHAPE).astype(np.float32)
    for g, w in zip(sess.run(None, {"x": x}), ReferenceEvaluator(model).run(None, {"x": x})):
        assert g.dtype == w.dtype and np.array_equal(g, w)

"""attention_grouped_kv: repeat_kv's Unsqueeze/Expand/Reshape of K and V -> the attention
reads the shared heads. Oracle: onnx.reference on the original model."""
import numpy as np
import onnx
import pytest
from hypothesis import given, settings, strategies as st
from onnx import TensorProto, helper
from onnx.reference import ReferenceEvaluator

import normrt
from test_pass_layer_norm_decomposed import const, make_model, vi

PASS = "attention_grouped_kv"


def repeat_kv(x, n_rep, shape, tag):
    """transformers' repeat_kv on x (B, Hkv, S, D) as the exporters write it."""
    b, h, s, d = shape
    return ([helper.make_node("Unsqueeze", [x, "ax2"], [tag + "_u"], name=tag + "_unsq"),
             helper.make_node("Expand", [tag + "_u", tag + "_shape5"], [tag + "_e"], name=tag + "_expand"),
             helper.make_node("Reshape", [tag + "_e", tag + "_shape4"], [tag + "_r"], name=tag + "_reshape")],
            [const(tag + "_shape5", np.array([b, h, n_rep, s, d], np.int64)),
             const(tag + "_shape4", np.array([b, h * n_rep, s, d], np.int64))])


def gqa_model(b, hkv, n_rep, s, d, *, repeat_v=True, v_rep=None):
    q_shape, kv_shape = [b, hkv * n_rep, s, d], [b, hkv, s, d]
    nodes, inits = [], [const("ax2", np.array([2], np.int64)), const("scale", np.array(d ** -0.5, np.float32))]
    kn, ki = repeat_kv("k", n_rep, kv_shape, "k")
    nodes += kn
    inits += ki
    v = "v"
    if repeat_v:
        vn, vi_ = repeat_kv("v", v_rep or n_rep, kv_shape, "v")
        nodes += vn
        inits += vi_
        v = "v_r"
    nodes += [helper.make_node("Transpose", ["k_r"], ["kt"], name="kt", perm=[0, 1, 3, 2]),
              helper.make_node("MatMul", ["q", "kt"], ["qk"], name="qk"),
              helper.make_node("Mul", ["qk", "scale"], ["sc"], name="scale_mul"),
              helper.make_node("Softmax", ["sc"], ["p"], name="softmax", axis=-1),
              helper.make_node("MatMul", ["p", v], ["y"], name="pv")]
    v_shape = kv_shape if repeat_v else [b, hkv * n_rep, s, d]
    return make_model(nodes, [vi("q", q_shape), vi("k", kv_shape), vi("v", v_shape)], [vi("y", q_shape)],
                      inits, opset=17), q_shape, kv_shape, v_shape


def run(model, shapes):
    rng = np.random.default_rng(0)
    feed = {n: rng.standard_normal(sh).astype(np.float32) for n, sh in zip("qkv", shapes)}
    sess = normrt.InferenceSession(model.SerializeToString())
    np.testing.assert_allclose(sess.run(None, feed)[0], ReferenceEvaluator(model).run(None, feed)[0],
                               rtol=1e-4, atol=1e-5)
    return sess


@settings(max_examples=20, deadline=None)
@given(b=st.integers(1, 2), hkv=st.integers(1, 3), n_rep=st.integers(2, 4), s=st.integers(1, 9),
       d=st.sampled_from([4, 8, 16]))
def test_repeated_heads_are_read_shared(b, hkv, n_rep, s, d):
    model, *shapes = gqa_model(b, hkv, n_rep, s, d)
    sess = run(model, shapes)
    ops = [n.op_type for n in sess.optimized_model.graph.node]
    assert ops == ["Attention"], ops
    att = sess.optimized_model.graph.node[0]
    assert list(att.input[1:3]) == ["k", "v"]
    assert sess.report["passes"][PASS] == 1


def test_only_k_repeated_is_refused():
    from normrt.onnx.passes import PassContext
    from normrt.onnx.passes.attention_grouped_kv import AttentionGroupedKV
    model, *shapes = gqa_model(1, 2, 2, 5, 8, repeat_v=False)
    sess = run(model, shapes)
    assert sess.report["passes"][PASS] == 0 and "Expand" in [n.op_type for n in sess.optimized_model.graph.node]
    opt = sess.optimized_model
    ctx = PassContext(opt)
    (att,) = list(AttentionGroupedKV().matches(ctx))
    assert AttentionGroupedKV().check(ctx, att) == "only one of K and V is repeated"


def test_different_repeat_counts_are_refused():
    # K repeated 2x from 2 heads, V 4x from 1 head (both 4 heads): valid attention, not one grouping
    model, q_shape, kv_shape, _ = gqa_model(1, 2, 2, 5, 8, repeat_v=False)
    g = model.graph
    vn, vi_ = repeat_kv("v", 4, [1, 1, 5, 8], "v")
    g.node[-1].input[1] = "v_r"
    for n in reversed(vn):
        g.node.insert(0, n)
    g.initializer.extend(vi_)
    g.input[2].CopyFrom(vi("v", [1, 1, 5, 8]))
    sess = run(model, [q_shape, kv_shape, [1, 1, 5, 8]])
    assert sess.report["passes"][PASS] == 0


# -- dynamic-axes exports: the Expand / Reshape targets computed from Shapes at run time ------
# Batch and sequence are symbolic ("batch", "sequence"), the heads too where `sym_heads` (the
# TorchScript export's head Reshape(·, [B, S, -1, D]) leaves them unnamed); fed at several sizes.

SIZES = [(1, 1), (2, 5), (3, 17)]
D = 16


class DynamicGraph:
    """Nodes and int64 constants of a hand-written dynamic-axes attention, named by a counter."""

    def __init__(self):
        self.nodes, self.inits, self.n = [], [const("scale", np.array(0.25, np.float32))], 0

    def node(self, op, ins, **attrs):
        self.n += 1
        out = f"{op.lower()}_{self.n}"
        self.nodes.append(helper.make_node(op, list(ins), [out], name=out, **attrs))
        return out

    def ints(self, *values, scalar=False):
        self.n += 1
        self.inits.append(const(f"i_{self.n}", np.array(values[0] if scalar else list(values), np.int64)))
        return f"i_{self.n}"

    def dim(self, x, axis):
        """x.shape[axis] as TorchScript writes it: Gather(Shape(x), axis) (a scalar), unsqueezed."""
        g = self.node("Gather", [self.node("Shape", [x]), self.ints(axis, scalar=True)], axis=0)
        return g, self.node("Unsqueeze", [g, self.ints(0)])

    def torch_expand_target(self, size):
        """aten::expand's export: Where(size == -1, 1, size) (-1 keeps a dim in torch)."""
        size = self.node("Reshape", [size, self.ints(-1)])
        ones = self.node("ConstantOfShape", [self.node("Shape", [size])],
                         value=helper.make_tensor("one", TensorProto.INT64, [1], [1]))
        minus = self.node("Mul", [ones, self.ints(-1, scalar=True)])
        return self.node("Where", [self.node("Equal", [size, minus]), ones, size])

    def repeat_kv(self, x, n_rep, style, hkv=None, merge="heads"):
        """repeat_kv(x, n_rep): Unsqueeze(2) -> Expand -> Reshape, targets as `style` writes them:
        "torchscript": a Gather of Shape(x) per dim, Concat-ed (the reshape's Hkv * n_rep a Mul);
        "dynamo": Shape(q) slices for batch / sequence and constants; "ones": an Expand target of 1s
        and n_rep, a Reshape target [0, Hkv * n_rep, -1, D] (needs `hkv`).
        `merge` (torchscript): "heads" (repeat_kv's); refused: "sequence" (axes 2 and 3 merged,
        (B, Hkv, n_rep * S, D)), "swapped" (viewed as (B, Hkv * n_rep, D, S)), "interleaved"
        (Unsqueeze(1): (B, n_rep, Hkv, S, D) -> (B, n_rep * Hkv, S, D), torch's x.repeat)."""
        if merge == "interleaved":
            (_, b), (g1, h), (_, s), (_, d) = (self.dim(x, a) for a in range(4))
            u = self.node("Unsqueeze", [x, self.ints(1)])
            e = self.torch_expand_target(self.node("Concat", [b, self.ints(n_rep), h, s, d], axis=0))
            hr = self.node("Unsqueeze", [self.node("Mul", [g1, self.ints(n_rep, scalar=True)]), self.ints(0)])
            return self.node("Reshape", [self.node("Expand", [u, e]), self.node("Concat", [b, hr, s, d], axis=0)])
        u = self.node("Unsqueeze", [x, self.ints(2)])
        if style == "ones":
            e = self.ints(1, 1, n_rep, 1, 1)
            r = self.ints(0, hkv * n_rep, -1, D) if merge == "heads" else self.ints(0, hkv, -1, D)
        elif style == "dynamo":
            b, s = (self.node("Shape", ["q"], start=a, end=a + 1) for a in (0, 2))
            e = self.node("Concat", [b, self.ints(hkv), self.ints(n_rep), s, self.ints(D)], axis=0)
            r = self.node("Concat", [b, self.ints(hkv * n_rep), s, self.ints(D)] if merge == "heads" else
                          [b, self.ints(hkv), self.node("Mul", [s, self.ints(n_rep)]), self.ints(D)], axis=0)
        else:
            (_, b), (g1, h), (g2, s), (_, d) = (self.dim(x, a) for a in range(4))
            e = self.torch_expand_target(self.node("Concat", [b, h, self.ints(n_rep), s, d], axis=0))
            if merge in ("heads", "swapped"):
                hr = self.node("Unsqueeze", [self.node("Mul", [g1, self.ints(n_rep, scalar=True)]), self.ints(0)])
                r = self.node("Concat", [b, hr, s, d] if merge == "heads" else [b, hr, d, s], axis=0)
            else:
                sr = self.node("Unsqueeze", [self.node("Mul", [g2, self.ints(n_rep, scalar=True)]), self.ints(0)])
                r = self.node("Concat", [b, h, sr, d], axis=0)
        return self.node("Reshape", [self.node("Expand", [u, e]), r])

    def attention(self, q, k, v, transpose_k=True):
        kt = self.node("Transpose", [k], perm=[0, 1, 3, 2]) if transpose_k else k
        scores = self.node("Mul", [self.node("MatMul", [q, kt]), "scale"])
        return self.node("MatMul", [self.node("Softmax", [scores], axis=-1), v])


def dynamic_model(g, y, inputs):
    (last,) = [n for n in g.nodes if y in n.output]
    last.output[0] = "y"
    return make_model(g.nodes, inputs, [vi("y", None)], g.inits, opset=17)


def dynamic_gqa(hkv, n_rep, style, sym_heads=False, rope=False):
    """(model, {input: (batch, sequence) -> shape}) of q @ repeat_kv(k)^T -> softmax -> @ repeat_kv(v).
    `rope`: k is k_in + pos, pos (1, 1, "sequence", D): k's sequence dim unnamed by inference."""
    hq = hkv * n_rep
    g = DynamicGraph()
    k = g.node("Add", ["k_in", "pos"]) if rope else "k_in"
    y = g.attention("q", g.repeat_kv(k, n_rep, style, hkv), g.repeat_kv("v", n_rep, style, hkv))
    heads = ("q_heads", "kv_heads") if sym_heads else (hq, hkv)
    inputs = [vi("q", ["batch", heads[0], "sequence", D]), vi("v", ["batch", heads[1], "sequence", D]),
              vi("k_in", ["batch", heads[1], "k_sequence" if rope else "sequence", D])]
    shapes = {"q": lambda b, s: (b, hq, s, D), "k_in": lambda b, s: (b, hkv, s, D), "v": lambda b, s: (b, hkv, s, D)}
    if rope:
        inputs.append(vi("pos", [1, 1, "sequence", D]))
        shapes["pos"] = lambda b, s: (1, 1, s, D)
    return dynamic_model(g, y, inputs), shapes


def run_sizes(model, shapes, sizes=SIZES):
    """One normrt session fed every (batch, sequence) of `sizes`, against onnx.reference."""
    sess = normrt.InferenceSession(model.SerializeToString())
    ref = ReferenceEvaluator(model)
    rng = np.random.default_rng(0)
    for b, s in sizes:
        feed = {n: rng.standard_normal(shape(b, s)).astype(np.float32) for n, shape in shapes.items()}
        np.testing.assert_allclose(sess.run(None, feed)[0], ref.run(None, feed)[0], rtol=1e-4, atol=1e-5)
    return sess


def attention_node(sess):
    (att,) = [n for n in sess.optimized_model.graph.node if n.op_type == "Attention"]
    return att


def refusal(model):
    """The pass's reason for refusing the one fused attention of the model optimized without it."""
    from normrt.onnx.optimize import default_passes, optimize_model
    from normrt.onnx.passes import PassContext
    from normrt.onnx.passes.attention_grouped_kv import AttentionGroupedKV
    passes = [p for p in default_passes() if not isinstance(p, AttentionGroupedKV)]
    copy = onnx.ModelProto()
    copy.CopyFrom(model)
    opt, _ = optimize_model(copy, passes)
    ctx = PassContext(opt)
    (att,) = [n for n in ctx.nodes if n.op_type == "Attention"]
    return AttentionGroupedKV().check(ctx, att)


@settings(max_examples=16, deadline=None)
@given(hkv=st.integers(1, 3), n_rep=st.integers(2, 4), style=st.sampled_from(["torchscript", "dynamo", "ones"]),
       sym_heads=st.booleans(), rope=st.booleans())
def test_dynamic_repeat_is_read_shared(hkv, n_rep, style, sym_heads, rope):
    model, shapes = dynamic_gqa(hkv, n_rep, style, sym_heads and style == "torchscript", rope)
    sess = run_sizes(model, shapes)
    ops = [n.op_type for n in sess.optimized_model.graph.node]
    assert "Expand" not in ops and ops.count("Attention") == 1, ops
    att = attention_node(sess)
    assert att.input[1] == ("add_1" if rope else "k_in") and att.input[2] == "v"
    assert sess.report["passes"][PASS] == 1
    if not rope:        # the shape arithmetic went with the repeats
        assert ops == ["Attention"], ops


def assert_refused(model, shapes, reason):
    sess = run_sizes(model, shapes)
    assert sess.report["passes"][PASS] == 0
    assert "Expand" in [n.op_type for n in sess.optimized_model.graph.node]
    assert refusal(model).startswith(reason), refusal(model)


@pytest.mark.parametrize("k_batch, k_sequence, axis", [(1, "sequence", 0), ("batch", "k_sequence", 3)])
def test_dynamic_expand_of_another_axis_is_refused(k_batch, k_sequence, axis):
    # the targets read q's batch and sequence: k's batch of 1 is broadcast over q's; a sequence
    # dim named apart ("k_sequence", nothing relating it to q's) may be a 1 broadcast too (fed so)
    hkv, n_rep = 2, 2
    g = DynamicGraph()
    y = g.attention("q", g.repeat_kv("k", n_rep, "dynamo", hkv), g.repeat_kv("v", n_rep, "dynamo", hkv))
    model = dynamic_model(g, y, [vi("q", ["batch", 4, "sequence", D]), vi("k", [k_batch, 2, k_sequence, D]),
                                 vi("v", [k_batch, 2, k_sequence, D])])
    kv = (lambda b, s: (1, hkv, s, D)) if k_batch == 1 else (lambda b, s: (b, hkv, 1, D))
    assert_refused(model, {"q": lambda b, s: (b, 4, s, D), "k": kv, "v": kv},
                   f"K: the Expand may broadcast axis {axis}")


@pytest.mark.parametrize("merge, reason", [
    ("sequence", "K: the Reshape does not merge axes 1 and 2 (entry 1"),     # the keys repeated along S
    ("swapped", "K: the Reshape does not merge axes 1 and 2 (entry 2"),      # (.., S, D) viewed as (.., D, S)
    ("interleaved", "K: the Unsqueeze inserts axes [1], not axis 2")])      # kv head h % Hkv, not h // n_rep
def test_dynamic_repeat_of_other_layouts_is_refused(merge, reason):
    hkv, n_rep = 2, 3
    hq = hkv if merge == "sequence" else hkv * n_rep
    g = DynamicGraph()
    y = g.attention("q", g.repeat_kv("k", n_rep, "torchscript", merge=merge),
                    g.repeat_kv("v", n_rep, "torchscript", merge="sequence" if merge == "sequence" else "heads"),
                    transpose_k=merge != "swapped")
    model = dynamic_model(g, y, [vi("q", ["batch", hq, "sequence", D])] +
                          [vi(n, ["batch", hkv, "sequence", D]) for n in "kv"])
    kv = lambda b, s: (b, hkv, s, D)     # noqa: E731
    assert_refused(model, {"q": lambda b, s: (b, hq, s, D), "k": kv, "v": kv}, reason)


def test_dynamic_different_repeat_counts_are_refused():
    # K: 2 heads repeated 2x, V: 1 head repeated 4x (4 heads each): valid attention, not one grouping
    g = DynamicGraph()
    y = g.attention("q", g.repeat_kv("k", 2, "torchscript"), g.repeat_kv("v", 4, "torchscript"))
    model = dynamic_model(g, y, [vi("q", ["batch", 4, "sequence", D]), vi("k", ["batch", 2, "sequence", D]),
                                 vi("v", ["batch", 1, "sequence", D])])
    assert_refused(model, {"q": lambda b, s: (b, 4, s, D), "k": lambda b, s: (b, 2, s, D),
                           "v": lambda b, s: (b, 1, s, D)}, "K and V repeated 2 and 4 times")


@settings(max_examples=10, deadline=None)
@given(hkv=st.integers(1, 3), n_rep=st.integers(2, 4), style=st.sampled_from(["torchscript", "dynamo", "ones"]),
       sym_heads=st.booleans())
def test_targets_evaluate_to_what_the_graph_computes(hkv, n_rep, style, sym_heads):
    # target_dims' Dims, their symbolic factors given the fed sizes, against onnx.reference's values
    from normrt.onnx.passes import PassContext
    from normrt.onnx.passes._symbolic_dims import target_dims
    sym_heads = sym_heads and style == "torchscript"
    model, shapes = dynamic_gqa(hkv, n_rep, style, sym_heads)
    targets = [n.input[1] for n in model.graph.node if n.op_type in ("Expand", "Reshape")]
    model.graph.output.extend(vi(t, None, TensorProto.INT64) for t in targets)
    dims = {t: target_dims(PassContext(model), t) for t in targets}
    assert all(d is not None for d in dims.values()), dims
    ref = ReferenceEvaluator(model)
    for b, s in SIZES:
        sizes = {("param", "batch"): b, ("param", "sequence"): s, ("param", "q_heads"): hkv * n_rep,
                 ("param", "kv_heads"): hkv}
        feed = {n: np.zeros(shape(b, s), np.float32) for n, shape in shapes.items()}
        got = dict(zip(["y"] + targets, ref.run(None, feed)))
        for t, d in dims.items():
            assert [e.coef * int(np.prod([sizes[f] for f in e.factors])) for e in d] == got[t].tolist(), t

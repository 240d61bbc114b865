"""common_subexpressions: a node computing what an earlier node computes is dropped, its readers
read the earlier one's outputs. Oracle: onnx.reference on the original model; plus the property
that no two nodes of the optimized model compute the same, and the cases left alone."""
import numpy as np
from hypothesis import given, settings, strategies as st
from onnx import TensorProto, helper, numpy_helper
from onnx.reference import ReferenceEvaluator

import normrt
from graph_builder import const, vi

PASS = "common_subexpressions"


def make_model(nodes, inputs, outputs, inits, opset=17):
    m = helper.make_model(helper.make_graph(nodes, "g", inputs, outputs, inits),
                          opset_imports=[helper.make_opsetid("", opset)])
    m.ir_version = 8
    return m


def run_and_compare(model, feed):
    sess = normrt.InferenceSession(model.SerializeToString())
    for got, want in zip(sess.run(None, feed), ReferenceEvaluator(model).run(None, feed)):
        np.testing.assert_allclose(got, want, rtol=1e-6, atol=1e-6)
    return sess


def computations(sess):
    """(op, inputs, attributes) of every node of the optimized model."""
    return [(n.domain, n.op_type, tuple(n.input), tuple(sorted(a.SerializeToString() for a in n.attribute)))
            for n in sess.optimized_model.graph.node]


UNARY = ["Relu", "Sigmoid", "Softmax", "MatMul"]
BINARY = ["Add", "Mul", "Max"]


@settings(max_examples=40, deadline=None)
@given(st.integers(0, 2**31 - 1), st.integers(2, 12), st.integers(1, 3))
def test_generated_graphs_with_repeats(seed, n_ops, repeats):
    """A random DAG of products with small constant weights, softmaxes, elementwise ops and shape
    arithmetic in which some nodes are written again under new names (their constants copied
    under new names too): outputs as onnx.reference computes them, and no two nodes left that
    compute the same (elementwise runs fuse into programs; the rest is the pass's)."""
    rng = np.random.default_rng(seed)
    values, nodes, inits, made = ["x"], [], [], [0]

    def constant(value):
        made[0] += 1
        inits.append(const(f"c{made[0]}", value))
        return f"c{made[0]}"

    def pick():
        return values[int(rng.integers(len(values)))]

    for k in range(n_ops):
        op = rng.choice(UNARY + BINARY + ["Shape"])
        out = f"v{k}"
        if op == "Shape":
            # a size from a value's shape: Shape -> Gather -> Cast, added to the last value
            shape, g, r = f"s{k}", f"g{k}", f"r{k}"
            new = [helper.make_node("Shape", [pick()], [shape], name=shape),
                   helper.make_node("Gather", [shape, constant(np.array([0], np.int64))], [g], name=g),
                   helper.make_node("Cast", [g], [r], name=r, to=TensorProto.FLOAT),
                   helper.make_node("Add", [values[-1], r], [out], name=out)]
        elif op == "MatMul":
            w = (rng.standard_normal((4, 4)) * 0.5).astype(np.float32)
            new = [helper.make_node("MatMul", [pick(), constant(w)], [out], name=out)]
        elif op == "Softmax":
            new = [helper.make_node("Softmax", [pick()], [out], name=out, axis=-1)]
        elif op in UNARY:
            new = [helper.make_node(op, [pick()], [out], name=out)]
        else:
            new = [helper.make_node(op, [pick(), pick()], [out], name=out)]
        nodes += new
        values.append(out)
        # repeat the new nodes (their constants copied under new names) right after
        for r in range(repeats if rng.random() < 0.5 else 0):
            renamed = {}
            for node in new:
                ins = [renamed.get(i, i) for i in node.input]
                ins = [constant(next(numpy_helper.to_array(t) for t in inits if t.name == i).copy())
                       if i.startswith("c") else i for i in ins]
                copy = helper.make_node(node.op_type, ins, [f"{o}_again{r}" for o in node.output],
                                        name=f"{node.name}_again{r}")
                copy.attribute.extend(node.attribute)
                renamed.update(zip(node.output, copy.output))
                nodes.append(copy)
            values.append(nodes[-1].output[0])
    # every value read once more at the end, so no repeat is dead code
    total = values[1]
    for k, v in enumerate(values[2:]):
        nodes.append(helper.make_node("Add", [total, v], [f"sum{k}"], name=f"sum{k}"))
        total = f"sum{k}"
    nodes.append(helper.make_node("Identity", [total], ["y"], name="y"))
    model = make_model(nodes, [vi("x", [3, 4])], [vi("y", [3, 4])], inits)
    feed = {"x": (rng.standard_normal((3, 4)) * 0.5).astype(np.float32)}
    sess = run_and_compare(model, feed)
    seen = computations(sess)
    assert len(seen) == len(set(seen)), seen


def shape_chain(tag, x="x"):
    """x -> Shape -> Gather([1]) -> Concat([-1], .) : (2,) the target shape (-1, x.shape[1])."""
    inits = [const(f"i_{tag}", np.array([1], np.int64)), const(f"m_{tag}", np.array([-1], np.int64))]
    nodes = [helper.make_node("Shape", [x], [f"s_{tag}"], name=f"shape_{tag}"),
             helper.make_node("Gather", [f"s_{tag}", f"i_{tag}"], [f"g_{tag}"], name=f"gather_{tag}"),
             helper.make_node("Concat", [f"m_{tag}", f"g_{tag}"], [f"t_{tag}"], name=f"concat_{tag}", axis=0)]
    return nodes, inits


def test_a_shape_chain_per_layer_becomes_one():
    """The exporters' per-layer Shape -> Gather -> Concat, each with its own constants: one chain."""
    nodes, inits = [], []
    prev = "x"
    for layer in range(3):
        chain, consts = shape_chain(layer)
        nodes += chain + [helper.make_node("Reshape", [prev, f"t_{layer}"], [f"r{layer}"], name=f"reshape{layer}"),
                          helper.make_node("Relu", [f"r{layer}"], [f"h{layer}"], name=f"relu{layer}")]
        inits += consts
        prev = f"h{layer}"
    # both dims symbolic: the gathered width is not a constant folding can know
    model = make_model(nodes, [vi("x", ["batch", "width"])], [vi(prev, ["batch", "width"])], inits)
    sess = run_and_compare(model, {"x": np.random.default_rng(0).standard_normal((5, 6)).astype(np.float32)})
    ops = [n.op_type for n in sess.optimized_model.graph.node]
    assert ops.count("Shape") <= 1 and ops.count("Gather") <= 1, ops
    assert sess.report["passes"][PASS] >= 6


def test_random_draws_are_not_merged():
    nodes = [helper.make_node("RandomNormalLike", ["x"], ["a"], name="a", seed=1.0),
             helper.make_node("RandomNormalLike", ["x"], ["b"], name="b", seed=1.0),
             helper.make_node("Sub", ["a", "b"], ["y"], name="y")]
    sess = normrt.InferenceSession(make_model(nodes, [vi("x", [4])], [vi("y", [4])], []).SerializeToString())
    assert [n.op_type for n in sess.optimized_model.graph.node].count("RandomNormalLike") == 2


def test_graph_outputs_and_subgraph_reads_are_kept():
    """A repeat that is a graph output, or whose value an If branch reads by name, stays."""
    then = helper.make_graph([helper.make_node("Neg", ["b"], ["t"], name="then_neg")], "then", [], [vi("t", [4])])
    other = helper.make_graph([helper.make_node("Abs", ["b"], ["e"], name="else_abs")], "else", [], [vi("e", [4])])
    nodes = [helper.make_node("Relu", ["x"], ["a"], name="a"),
             helper.make_node("Relu", ["x"], ["b"], name="b"),          # read inside the branches
             helper.make_node("Relu", ["x"], ["c"], name="c"),          # a graph output
             helper.make_node("ReduceSum", ["x"], ["s"], name="s", keepdims=0),
             helper.make_node("Greater", ["s", "zero"], ["cond"], name="cond"),
             helper.make_node("If", ["cond"], ["z"], name="if", then_branch=then, else_branch=other),
             helper.make_node("Add", ["a", "z"], ["y"], name="y")]
    model = make_model(nodes, [vi("x", [4])], [vi("y", [4]), vi("c", [4])], [const("zero", np.float32(0))])
    for sign in (1, -1):
        sess = run_and_compare(model, {"x": (sign * np.arange(1, 5)).astype(np.float32)})
    names = {n.name for n in sess.optimized_model.graph.node}
    assert {"b", "c"} <= names, names


def test_large_constants_count_by_name():
    """Two equal weights of more than SMALL_CONSTANT elements are not compared by value (that
    would read every weight at load): their products stay two."""
    w = np.random.default_rng(1).standard_normal((32, 32)).astype(np.float32)
    nodes = [helper.make_node("MatMul", ["x", "w1"], ["a"], name="a"),
             helper.make_node("MatMul", ["x", "w2"], ["b"], name="b"),
             helper.make_node("Sub", ["a", "b"], ["y"], name="y")]
    model = make_model(nodes, [vi("x", [2, 32])], [vi("y", [2, 32])], [const("w1", w), const("w2", w.copy())])
    sess = run_and_compare(model, {"x": np.ones((2, 32), np.float32)})
    assert sum(n.op_type.endswith("MatMul") for n in sess.optimized_model.graph.node) == 2

"""PassContext's use-def index stays what a rebuild from scratch would give, whatever the edits.

The rewrite layer is linear because producers, readers and node order are kept up to date
by every `replace_nodes` instead of being rebuilt per match. Hypothesis applies random
replacements to random graphs and compares the index with one rebuilt from the node list,
and the node order with the plain list splice `replace_nodes` stands for (new nodes where
the last replaced one was).
"""
import collections

from hypothesis import given, settings, strategies as st
from onnx import TensorProto, helper

from normrt.onnx.passes import PassContext


@st.composite
def graph_and_edits(draw):
    n = draw(st.integers(2, 25))
    nodes, values = [], ["x"]
    for i in range(n):
        ins = draw(st.lists(st.sampled_from(values), min_size=1, max_size=3))
        nodes.append(helper.make_node("Sum", ins, [f"v{i}"], name=f"n{i}"))
        values.append(f"v{i}")
    graph = helper.make_graph(nodes, "g", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [2])],
                              [helper.make_tensor_value_info(values[-1], TensorProto.FLOAT, [2])])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    edits = draw(st.lists(st.tuples(st.lists(st.integers(0, 10 ** 6), min_size=1, max_size=3),
                                    st.integers(0, 2), st.lists(st.sampled_from(values), min_size=1, max_size=2)),
                          max_size=8))
    return model, edits


def _splice(nodes, old, new):
    """The reference: the list splice replace_nodes stands for."""
    ids = {id(n) for n in old}
    pos = max(i for i, n in enumerate(nodes) if id(n) in ids)
    out = []
    for i, n in enumerate(nodes):
        if i == pos:
            out += new
        if id(n) not in ids:
            out.append(n)
    return out


def _readers_by_name(index):
    return {name: collections.Counter(id(n) for n in nodes) for name, nodes in index.items() if nodes}


@settings(max_examples=40, deadline=None)
@given(graph_and_edits())
def test_index_matches_a_rebuild_after_every_edit(case):
    model, edits = case
    ctx = PassContext(model)
    reference = list(ctx.nodes)
    k = 0
    for picks, n_new, reads in edits:
        current = ctx.nodes
        old = list({id(current[p % len(current)]): current[p % len(current)] for p in picks}.values())
        outs = [o for n in old for o in n.output]
        new = []
        for j in range(n_new):
            k += 1
            new.append(helper.make_node("Sum", reads, outs if j == n_new - 1 else [f"t{k}"], name=f"new{k}"))
        ctx.replace_nodes(old, new)
        reference = _splice(reference, old, new)
        assert [id(n) for n in ctx.nodes] == [id(n) for n in reference]
        fresh = PassContext.__new__(PassContext)
        fresh.nodes = reference
        assert _readers_by_name(ctx.consumers()) == _readers_by_name(fresh.consumers())
        assert {k2: id(v) for k2, v in ctx.producer().items()} == {k2: id(v) for k2, v in fresh.producer().items()}
        assert all(ctx.contains(n) for n in reference) and not any(ctx.contains(n) for n in old)
        if not ctx.nodes:
            break

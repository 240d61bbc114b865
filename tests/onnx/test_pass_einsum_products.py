"""einsum_products: two-operand (and one-operand) Einsums as MatMul / Transpose / Reshape /
ReduceSum, against numpy's einsum in float64 on generated equations (every role mix of letters,
ellipses, constant operands, symbolic dims, opsets with ReduceSum's axes as attribute or input),
and the refusals (which still run as numpy's einsum)."""
import numpy as np
import onnx
import pytest
from hypothesis import given, settings, strategies as st
from onnx import TensorProto, helper

import normrt
from graph_builder import const, vi
from normrt.onnx.passes.einsum_products import parse


def einsum_model(equation, shapes, constants=(), opset=13, symbolic=(), elem=TensorProto.FLOAT, values=None):
    """y = Einsum(equation)(x0, x1, ...); inputs listed in `constants` are initializers (from `values`),
    dims at the (input, axis) positions in `symbolic` are declared as names."""
    inputs, inits = [], []
    for i, shape in enumerate(shapes):
        name = f"x{i}"
        if i in constants:
            inits.append(const(name, values[i]))
        else:
            dims = [f"d{i}_{a}" if (i, a) in symbolic else d for a, d in enumerate(shape)]
            inputs.append(vi(name, dims, elem))
    node = helper.make_node("Einsum", [f"x{i}" for i in range(len(shapes))], ["y"], equation=equation, name="einsum")
    graph = helper.make_graph([node], "g", inputs, [vi("y", None, elem)], inits)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", opset)])
    model.ir_version = 8
    return model


def run_and_check(equation, shapes, rng, constants=(), opset=13, symbolic=(), lowered=True):
    values = [rng.standard_normal(s).astype(np.float32) for s in shapes]
    model = einsum_model(equation, shapes, constants, opset, symbolic, values=values)
    sess = normrt.InferenceSession(model)
    ops = [n.op_type for n in sess.optimized_model.graph.node]
    if lowered:
        assert "Einsum" not in ops, (equation, ops)
        assert sess.report["passes"].get("einsum_products") == 1
    else:
        assert ops == ["Einsum"]
    feeds = {f"x{i}": v for i, v in enumerate(values) if i not in constants}
    got = sess.run(None, feeds)[0]
    want = np.einsum(equation, *(v.astype(np.float64) for v in values))
    assert got.dtype == np.float32 and got.shape == want.shape
    terms = max(1, int(np.prod([s for s in shapes[0]])))        # a bound on the terms per sum
    np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-6 * np.sqrt(terms) * 4)
    return sess


LETTERS = "abcdefgh"


@st.composite
def equations(draw):
    """(equation, shapes): two operands, each letter given a role and a size, operands' letters shuffled."""
    n = draw(st.integers(1, 6))
    letters = LETTERS[:n]
    roles = {c: draw(st.sampled_from(["batch", "m", "n", "k", "a_only", "b_only"])) for c in letters}
    sizes = {c: draw(st.integers(1, 5)) for c in letters}
    a = [c for c in letters if roles[c] in ("batch", "m", "k", "a_only")]
    b = [c for c in letters if roles[c] in ("batch", "n", "k", "b_only")]
    out = [c for c in letters if roles[c] in ("batch", "m", "n")]
    a, b, out = (draw(st.permutations(x)) for x in (a, b, out))
    eq = f"{''.join(a)},{''.join(b)}->{''.join(out)}"
    return eq, [tuple(sizes[c] for c in a), tuple(sizes[c] for c in b)]


@settings(max_examples=120, deadline=None)
@given(equations(), st.sampled_from([(), (0,), (1,)]), st.sampled_from([12, 13, 17]), st.integers(0, 2**31 - 1))
def test_generated_equations_match_numpy(case, constants, opset, seed):
    equation, shapes = case
    run_and_check(equation, shapes, np.random.default_rng(seed), constants=constants, opset=opset)


@settings(max_examples=40, deadline=None)
@given(st.sampled_from(["ij->ji", "ijk->kij", "ijk->ik", "ijk->", "ij->j", "ij->ij"]),
       st.integers(0, 2**31 - 1))
def test_one_operand(equation, seed):
    shape = (3, 4, 5)[:len(equation.split("->")[0])]
    run_and_check(equation, [shape], np.random.default_rng(seed))


@pytest.mark.parametrize("equation,shapes", [
    ("...ij,...jk->...ik", [(2, 3, 4, 5), (2, 3, 5, 6)]),
    ("...ij,...jk->...ik", [(2, 1, 4, 5), (3, 5, 6)]),          # ellipsis dims broadcast
    ("...ij,jk", [(2, 3, 4, 5), (5, 6)]),                         # implicit output
    ("ij,jk", [(4, 5), (5, 6)]),
    ("bhqd,bhkd->bhqk", [(2, 4, 7, 8), (2, 4, 9, 8)]),            # attention scores
    ("bhqk,bhkd->bqhd", [(2, 4, 7, 9), (2, 4, 9, 8)]),            # attention context, heads merged after
    ("ibnd,jbnd->bnij", [(7, 1, 4, 16), (9, 1, 4, 16)]),          # XLNet
    ("ibh,hnd->ibnd", [(7, 2, 64), (64, 4, 16)]),
    ("bij,bjk->bik", [(3, 4, 5), (3, 5, 6)]),
    ("bn,anm,bm->ba", [(2, 3), (4, 3, 5), (2, 5)]),               # three operands: refused
    ("ii->i", [(4, 4)]),                                          # a diagonal: refused
])
def test_common_equations(equation, shapes):
    refused = len(shapes) > 2 or equation.startswith("ii")
    run_and_check(equation, shapes, np.random.default_rng(0), lowered=not refused)


@pytest.mark.parametrize("equation,shapes,symbolic,lowered", [
    # dynamic batch and sequence: copied dims need no size
    ("bhqd,bhkd->bhqk", [(2, 4, 7, 8), (2, 4, 9, 8)], {(0, 0), (1, 0), (0, 2), (1, 2)}, True),
    ("ibh,hnd->ibnd", [(7, 2, 64), (64, 4, 16)], {(0, 0), (0, 1)}, True),
    # two merged groups of unknown size: Reshape can infer only one
    ("bijk,bkl->bijl", [(2, 3, 4, 5), (2, 5, 6)], {(0, 1), (0, 2)}, False),
])
def test_symbolic_dims(equation, shapes, symbolic, lowered):
    run_and_check(equation, shapes, np.random.default_rng(1), symbolic=symbolic, lowered=lowered)


def test_constant_weight_becomes_a_packed_product():
    """'ibh,hnd->ibnd' with a constant (h, n, d) weight: a MatMul by the (h, n*d) constant, which the
    GEMM takes packed (a normrt::MatMul), as an exporter's Linear would be."""
    rng = np.random.default_rng(2)
    sess = run_and_check("ibh,hnd->ibnd", [(7, 2, 64), (64, 4, 16)], rng, constants=(1,))
    g = sess.optimized_model.graph
    assert [n.op_type for n in g.node] == ["MatMul", "Reshape"]
    weight = {t.name: t for t in g.initializer}[g.node[0].input[1]]
    assert tuple(weight.dims) == (64, 64)


def test_half_precision_einsum():
    rng = np.random.default_rng(3)
    a, b = rng.standard_normal((2, 4, 7, 8)), rng.standard_normal((2, 4, 9, 8))
    model = einsum_model("bhqd,bhkd->bhqk", [a.shape, b.shape], elem=TensorProto.FLOAT16)
    sess = normrt.InferenceSession(model)
    assert "Einsum" not in [n.op_type for n in sess.optimized_model.graph.node]
    got = sess.run(None, {"x0": a.astype(np.float16), "x1": b.astype(np.float16)})[0]
    want = np.einsum("bhqd,bhkd->bhqk", a.astype(np.float16).astype(np.float64), b.astype(np.float16).astype(np.float64))
    assert got.dtype == np.float16
    np.testing.assert_allclose(got.astype(np.float64), want, rtol=2e-3, atol=1e-2)


@pytest.mark.parametrize("equation,ranks,reason", [
    ("ii->i", [2], "diagonal"),
    ("...ij,jk", [None, 2], "unknown rank"),
    ("ij,jk->ik", [3, 2], "rank 3"),
    ("ij,jk->iz", [2, 2], "names one no operand has"),
])
def test_parse_refusals(equation, ranks, reason):
    assert reason in parse(equation, ranks)


def test_parse_expands_the_ellipsis_right_aligned():
    assert parse("...ij,...jk->...ik", [4, 3]) == (["ABij", "Bjk"], "ABik")
    assert parse("i...,j", [3, 1]) == (["iAB", "j"], "ABij")
    assert parse("A...,B->...AB", [2, 1]) == (["AC", "B"], "CAB")      # letters the equation leaves free


def test_upper_case_letters():
    run_and_check("Bij,Bjk->Bik", [(2, 3, 4), (2, 4, 5)], np.random.default_rng(4))
    run_and_check("...Ij,Jj->...IJ", [(2, 3, 4), (5, 4)], np.random.default_rng(5))

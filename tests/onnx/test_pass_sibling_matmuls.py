"""sibling_matmuls: linear layers reading one input -> one product over the concatenated weights, split.
Oracle: onnx.reference on the original model (float32 products: tolerance scaled by K)."""
import numpy as np
import pytest
from hypothesis import given, settings, strategies as st
from onnx import TensorProto, helper

import normrt
from test_fixtures_transformer import DATA, FIXTURES
from test_pass_layer_norm_decomposed import const, feed_for as feed, make_model, run_and_compare, vi

F, D = TensorProto.FLOAT, TensorProto.DOUBLE
PASS = "sibling_matmuls"


@pytest.fixture(autouse=True)
def _merge_any_rows(monkeypatch, request):
    """The pass merges from MIN_ROWS rows of X (its cost model); these tests build small
    graphs to check what it computes, so they merge from one row, like conftest's thread
    thresholds. test_few_rows_stay_apart checks the real threshold."""
    if "real_min_rows" not in request.keywords:
        from normrt.onnx.passes import sibling_matmuls
        monkeypatch.setattr(sibling_matmuls, "MIN_ROWS", 1)


def merged(report):
    return report["passes"].get(PASS, 0)


def siblings_model(x_shape, widths, *, forms=None, bias=True, elem=F, opset=17, seed=0):
    """x @ W_i [+ b_i] for each width, each output read by its own Neg (so the products are not
    graph outputs). forms[i]: 'matmul', 'gemm' (C as bias), 'gemm_t' (transB, C as bias),
    'runtime' (W_i a graph input)."""
    rng = np.random.default_rng(seed)
    dtype = np.float32 if elem == F else np.float64
    k = x_shape[-1]
    forms = forms or ["matmul"] * len(widths)
    nodes, inits, inputs, outputs = [], [], [vi("x", list(x_shape), elem)], []
    for i, (n, form) in enumerate(zip(widths, forms)):
        w = (rng.standard_normal((k, n)) / np.sqrt(k)).astype(dtype)
        b = rng.standard_normal(n).astype(dtype)
        y = f"p{i}"
        if form.startswith("gemm"):
            t = form == "gemm_t"
            inits += [const(f"W{i}", w.T.copy() if t else w)] + ([const(f"b{i}", b)] if bias else [])
            nodes.append(helper.make_node("Gemm", ["x", f"W{i}"] + ([f"b{i}"] if bias else []), [y],
                                          name=f"mm{i}", transB=int(t)))
        else:
            if form == "runtime":
                inputs.append(vi(f"W{i}", [k, n], elem))
            else:
                inits.append(const(f"W{i}", w))
            nodes.append(helper.make_node("MatMul", ["x", f"W{i}"], [y], name=f"mm{i}"))
            if bias:
                inits.append(const(f"b{i}", b))
                nodes.append(helper.make_node("Add", [y, f"b{i}"], [f"pb{i}"], name=f"bias{i}"))
                y = f"pb{i}"
        nodes.append(helper.make_node("Neg", [y], [f"y{i}"], name=f"neg{i}"))
        outputs.append(vi(f"y{i}", list(x_shape[:-1]) + [n], elem))
    return make_model(nodes, inputs, outputs, inits, opset)



def op_count(sess, op):
    return sum(1 for n in sess.optimized_model.graph.node if n.op_type == op)


@settings(max_examples=25, deadline=None)
@given(count=st.integers(2, 5), rows=st.sampled_from([(3,), (2, 5), (1, 2, 3)]), k=st.integers(1, 40),
       widths=st.lists(st.integers(1, 70), min_size=5, max_size=5), bias=st.booleans(),
       forms=st.lists(st.sampled_from(["matmul", "gemm", "gemm_t"]), min_size=5, max_size=5),
       opset=st.sampled_from([11, 13, 17]))
def test_generated_siblings_merge_into_one_product(count, rows, k, widths, bias, forms, opset):
    x_shape = rows + (k,)
    if len(x_shape) != 2:          # Gemm takes 2-D inputs only
        forms = ["matmul"] * 5
    model = siblings_model(x_shape, widths[:count], forms=forms[:count], bias=bias, opset=opset)
    sess, report = run_and_compare(model, feed(model), atol=1e-5 * max(1, k) ** 0.5)
    assert merged(report) == 1
    # one GEMM left; its bias (when there was one) in the GEMM's store
    assert op_count(sess, "MatMul") + op_count(sess, "Gemm") == 1 and op_count(sess, "Split") == 1
    assert op_count(sess, "Add") == 0


def test_thread_counts_give_identical_results():
    model = siblings_model((4, 64, 96), [96, 48, 48])
    x = feed(model)
    sess = normrt.InferenceSession(model)
    assert merged(sess.report) == 1
    with normrt.threads(1):
        one = sess.run(None, x)
    with normrt.threads(2):
        two = sess.run(None, x)
    for a, b in zip(one, two):
        np.testing.assert_array_equal(a, b)


def test_siblings_with_and_without_bias_merge_apart():
    # mm0, mm1 with a bias Add; mm2, mm3 without (their biased product never exists)
    model = siblings_model((6, 16), [8, 8, 8, 8])
    g = model.graph
    for i in (2, 3):
        (add,) = [n for n in g.node if n.name == f"bias{i}"]
        g.node.remove(add)
        (neg,) = [n for n in g.node if n.name == f"neg{i}"]
        neg.input[0] = f"p{i}"
    sess, report = run_and_compare(model, feed(model))
    assert merged(report) == 2 and op_count(sess, "Split") == 2


@pytest.mark.parametrize("case", ["runtime_weight", "one_constant_left", "float64", "different_inputs",
                                  "gemm_alpha"])
def test_refused_siblings_stay_apart(case):
    forms, elem = ["matmul", "matmul"], F
    if case in ("runtime_weight", "one_constant_left"):
        forms = ["runtime", "matmul"] if case == "one_constant_left" else ["runtime", "runtime"]
    if case == "float64":
        elem = D
    model = siblings_model((6, 16), [8, 12], forms=forms, elem=elem)
    if case == "different_inputs":      # mm1 reads another value of the same shape
        model.graph.input.append(vi("x2", [6, 16]))
        (mm1,) = [n for n in model.graph.node if n.name == "mm1"]
        mm1.input[0] = "x2"
    if case == "gemm_alpha":
        model = siblings_model((6, 16), [8, 12], forms=["gemm", "gemm"])
        for n in model.graph.node:
            if n.op_type == "Gemm":
                n.attribute.append(helper.make_attribute("alpha", 0.5))
    sess, report = run_and_compare(model, feed(model), atol=1e-9 if elem == D else 1e-5)
    assert merged(report) == 0 and op_count(sess, "Split") == 0


def test_product_that_is_a_graph_output_merges():
    # the Split writes p0 under its name: the graph output stays
    model = siblings_model((6, 16), [8, 12], bias=False)
    model.graph.output.append(vi("p0", [6, 8]))
    sess, report = run_and_compare(model, feed(model))
    assert merged(report) == 1


def test_one_column_siblings_read_in_place():
    # widths of 1: the Split's (rows, 1) column views die in their Neg readers, which may
    # write in place (NumPy 2.4's float32 negative mis-writes such a view: ops copy it)
    model = siblings_model((3, 1), [1, 2, 1], bias=False, opset=11)
    sess, report = run_and_compare(model, feed(model))
    assert merged(report) == 1


# per exporter form (TorchScript 17, dynamo 18/23) of the transformers fixtures: Q/K/V in every
# layer (2 layers each; LLaMA's gate keeps its SiLU in the GEMM: gate/up stay apart); their
# outputs vs torch: test_fixture_models
FIXTURE_MERGES = {"hf_bert": 2, "hf_llama": 2}


@pytest.mark.parametrize("entry", [e for e in FIXTURES if e["name"] in FIXTURE_MERGES], ids=lambda e: e["file"])
def test_exporter_fixtures_merge_their_projections(entry):
    _, report = normrt.optimize(str(DATA / entry["file"]), report=True)
    assert merged(report) == FIXTURE_MERGES[entry["name"]]


def test_a_product_with_a_fusable_activation_stays_apart():
    # y0 = silu(x @ W0) keeps its activation in the GEMM's store (matmul_epilogue);
    # the two plain siblings still merge
    model = siblings_model((6, 16), [8, 12, 4], bias=False)
    g = model.graph
    (neg0,) = [n for n in g.node if n.name == "neg0"]
    g.node.remove(neg0)
    g.node.extend([helper.make_node("Sigmoid", ["p0"], ["s0"], name="sig0"),
                   helper.make_node("Mul", ["p0", "s0"], ["y0"], name="silu0")])
    sess, report = run_and_compare(model, feed(model))
    assert merged(report) == 1 and op_count(sess, "MatMul") == 2
    assert report["passes"]["matmul_epilogue"] == 1


@pytest.mark.real_min_rows
@pytest.mark.parametrize("rows, dynamic, merges", [((24,), False, False), ((1, 24), False, False),
                                                   ((128,), False, True), ((2, 64), False, True),
                                                   ((2, 64), True, False)])
def test_few_rows_stay_apart(rows, dynamic, merges):
    """Below MIN_ROWS rows, or with rows not known at load, the products stay apart (the
    strided views cost more than the calls saved); from MIN_ROWS on they merge."""
    from normrt.onnx.passes.sibling_matmuls import MIN_ROWS
    assert MIN_ROWS == 128
    model = siblings_model(rows + (16,), [8, 8, 8])
    if dynamic:
        model.graph.input[0].type.tensor_type.shape.dim[0].dim_param = "batch"
    sess, report = run_and_compare(model, feed(model) if not dynamic else {
        "x": np.random.default_rng(1).standard_normal(rows + (16,)).astype(np.float32)}, atol=1e-5)
    assert merged(report) == (1 if merges else 0)

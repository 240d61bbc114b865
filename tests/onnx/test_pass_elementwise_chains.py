"""elementwise_chains: DAGs of float32 elementwise ops -> one normrt::Elementwise node.

Hypothesis draws the DAGs (ops, operands, broadcast inputs, scalar and per-channel
constants); each must become exactly one node and match onnx.reference on the
original model. Refused and partial groups are checked to stay correct too.
"""
import numpy as np
import pytest
from hypothesis import given, settings, strategies as st
from onnx import TensorProto, helper
from onnx.reference import ReferenceEvaluator

import normrt
from normrt.errors import ModelError
from normrt.onnx.elementwise_program import MAX_INPUTS, OPS, compile_program
from graph_builder import gelu_nodes
from test_pass_layer_norm_decomposed import const, make_model, vi

F = TensorProto.FLOAT
PASS = "elementwise_chains"
SHAPE = (2, 3, 5, 70)      # 70: a last axis that is not a whole number of vector lanes

# ops taking any operand; ops that need a positive one (their operand is drawn from
# the positive inputs / constants, so no cancellation upstream can make the
# reference and the kernel differ by more than rounding)
ANY_UNARY = ["Neg", "Abs", "Exp", "Tanh", "Erf", "Sigmoid", "Relu", "LeakyRelu"]
POSITIVE_UNARY = ["Log", "Sqrt", "Reciprocal"]
ANY_BINARY = ["Add", "Sub", "Mul", "Max", "Min"]


def ops_of(sess):
    return [n.op_type for n in sess.optimized_model.graph.node]


def check_against_reference(model, feed, rtol=2e-5, atol=1e-5, threads=None):
    want = ReferenceEvaluator(model).run(None, feed)
    sess = normrt.InferenceSession(model.SerializeToString(), num_threads=threads)
    with np.errstate(all="ignore"):
        got = sess.run(None, feed)
    for g, w in zip(got, want):
        assert g.shape == w.shape and g.dtype == w.dtype
        np.testing.assert_allclose(g, w, rtol=rtol, atol=atol)
    return sess


@st.composite
def dags(draw, batch=SHAPE[0]):
    """(model, feed): a DAG of elementwise ops over x and xp (full shape; xp positive)
    whose every op result has the full shape and reaches the single output."""
    rng = np.random.default_rng(draw(st.integers(0, 2**32 - 1)))
    shape = (batch,) + SHAPE[1:]
    inputs = [vi("x", list(shape)), vi("xp", list(shape))]
    feed = {"x": rng.uniform(-2, 2, shape).astype(np.float32), "xp": rng.uniform(0.5, 2, shape).astype(np.float32)}
    inits, nodes = [], []
    full = ["x"]                     # values of the full shape
    positive = ["xp"]                # positive values of any broadcasting shape
    n_small = draw(st.integers(0, 2))
    for i in range(n_small):         # runtime inputs that broadcast: (5, 1), (1, 3, 1, 70), (70,)
        small = draw(st.sampled_from([(5, 1), (1, 3, 1, 70), (70,), (batch, 1, 1, 1), shape]))
        name = f"s{i}"
        inputs.append(vi(name, list(small)))
        feed[name] = rng.uniform(0.5, 2, small).astype(np.float32)
        positive.append(name)
    for i, shape in enumerate(draw(st.lists(st.sampled_from([(), (1,), (3, 1, 1), (1, 1, 1, 1, 1)]),
                                            min_size=1, max_size=3))):
        name = f"c{i}"
        inits.append(const(name, rng.uniform(0.5, 2, shape).astype(np.float32)))
        positive.append(name)
    used = set()
    n_ops = draw(st.integers(2, 9))
    for k in range(n_ops):
        out = f"v{k}"
        kind = draw(st.sampled_from(["any_unary", "positive_unary", "binary", "div", "pow"]))
        a = draw(st.sampled_from(full))
        if kind == "any_unary":
            nodes.append(helper.make_node(draw(st.sampled_from(ANY_UNARY)), [a], [out], name=out))
            used.add(a)
        elif kind == "positive_unary":
            # positive unary of the positive full input, then combined with a full value
            p = "xp"
            nodes.append(helper.make_node(draw(st.sampled_from(POSITIVE_UNARY)), [p], [out + "p"], name=out + "p"))
            nodes.append(helper.make_node("Mul", [a, out + "p"], [out], name=out))
            used.add(a)
        elif kind == "binary":
            b = draw(st.sampled_from(full + positive))
            pair = [a, b] if draw(st.booleans()) else [b, a]
            nodes.append(helper.make_node(draw(st.sampled_from(ANY_BINARY)), pair, [out], name=out))
            used.update(pair)
        elif kind == "div":
            nodes.append(helper.make_node("Div", [a, draw(st.sampled_from(positive))], [out], name=out))
            used.add(a)
        else:
            e = draw(st.sampled_from([2.0, 3.0, 1.0]))
            ename = f"e{k}"
            inits.append(const(ename, np.array(e, np.float32)))
            nodes.append(helper.make_node("Pow", [a, ename], [out], name=out))
            used.add(a)
        full.append(out)
    # every result reaches the output: Add the ones nobody read into the last
    last = full[-1]
    for k, v in enumerate(v for v in full[1:-1] if v not in used):
        nodes.append(helper.make_node("Add", [last, v], [f"t{k}"], name=f"t{k}"))
        last = f"t{k}"
    nodes.append(helper.make_node("Identity", [last], ["y"], name="y"))
    # the output: the broadcast of every leaf read (a (1, 1, 1, 1, 1) constant raises the rank)
    read = {i for n in nodes for i in n.input}
    leaves = [feed[i.name].shape for i in inputs if i.name in read]
    leaves += [tuple(t.dims) for t in inits if t.name in read and not t.name.startswith("e")]
    model = make_model(nodes, inputs, [vi("y", list(np.broadcast_shapes(*leaves)))], inits, opset=17)
    return model, feed


@settings(max_examples=60, deadline=None)
@given(case=dags())
def test_generated_dags_become_one_node_matching_the_reference(case):
    model, feed = case
    sess = check_against_reference(model, feed)
    assert ops_of(sess).count("Elementwise") == 1, ops_of(sess)
    assert set(ops_of(sess)) <= {"Elementwise", "Identity"}, ops_of(sess)


@settings(max_examples=10, deadline=None)
@given(case=dags(batch=64), threads=st.sampled_from([2, 3]))
def test_results_do_not_depend_on_the_thread_count(case, threads):
    model, feed = case        # 67k elements: the threaded path
    sess = normrt.InferenceSession(model.SerializeToString())
    with normrt.threads(1), np.errstate(all="ignore"):
        one = sess.run(None, feed)[0]
    with normrt.threads(threads), np.errstate(all="ignore"):
        many = sess.run(None, feed)[0]
    np.testing.assert_array_equal(one.view(np.uint32), many.view(np.uint32))


def _tanh_gelu():
    # gpt2's NewGELU: 0.5 x (1 + tanh(sqrt(2/pi) (x + 0.044715 x^3)))
    nodes = [helper.make_node("Pow", ["x", "three"], ["p"], name="pow"),
             helper.make_node("Mul", ["p", "k"], ["pk"], name="mul_k"),
             helper.make_node("Add", ["x", "pk"], ["inner"], name="add_x"),
             helper.make_node("Mul", ["inner", "s"], ["z"], name="mul_s"),
             helper.make_node("Tanh", ["z"], ["t"], name="tanh"),
             helper.make_node("Add", ["t", "one"], ["t1"], name="add_1"),
             helper.make_node("Mul", ["x", "t1"], ["xt"], name="mul_x"),
             helper.make_node("Mul", ["xt", "half"], ["y"], name="mul_half")]
    inits = [const("three", np.array(3.0, np.float32)), const("k", np.array(0.044715, np.float32)),
             const("s", np.array(np.sqrt(2 / np.pi), np.float32)), const("one", np.array(1.0, np.float32)),
             const("half", np.array(0.5, np.float32))]
    return nodes, inits


def test_tanh_gelu_becomes_one_node_over_a_wide_range():
    nodes, inits = _tanh_gelu()
    model = make_model(nodes, [vi("x", [3, 4096])], [vi("y", [3, 4096])], inits, opset=17)
    x = np.concatenate([np.linspace(-12, 12, 4096), np.geomspace(1e-30, 1e3, 4096),
                        -np.geomspace(1e-30, 1e3, 4096)]).astype(np.float32).reshape(3, 4096)
    # below x ~ -4, 1 + tanh cancels: both float32 evaluations carry ulp(1) |x| / 2 there
    sess = check_against_reference(model, {"x": x}, rtol=1e-5, atol=1e-6)
    assert ops_of(sess) == ["Elementwise"]
    entry = next(e for e in sess.report["fused"] if e["pass"] == PASS)
    assert entry["pattern"] == "Pow-Mul-Add-Mul-Tanh-Add-Mul-Mul"


def test_special_values_propagate_as_in_the_reference():
    nodes = [helper.make_node("Exp", ["x"], ["e"], name="exp"),
             helper.make_node("Sigmoid", ["x"], ["s"], name="sig"),
             helper.make_node("Add", ["e", "s"], ["a"], name="add"),
             helper.make_node("Max", ["a", "x"], ["m"], name="max"),
             helper.make_node("Erf", ["m"], ["y"], name="erf")]
    model = make_model(nodes, [vi("x", [12])], [vi("y", [12])], [], opset=17)
    x = np.array([np.nan, np.inf, -np.inf, 0.0, -0.0, 88.5, 88.8, -90.0, 1e-40, 3e38, -3e38, 1.0], np.float32)
    # (exp of x < -87.3 flushes to 0 where the reference keeps a subnormal: atol FLT_MIN)
    sess = check_against_reference(model, {"x": x}, rtol=1e-6, atol=1.2e-38)
    assert ops_of(sess) == ["Elementwise"]


def test_shared_middle_value_splits_the_chain():
    # s = Sigmoid(x) is also a graph output: the Mul and the Add fuse, the Sigmoid stays
    nodes = [helper.make_node("Sigmoid", ["x"], ["s"], name="sig"),
             helper.make_node("Mul", ["x", "s"], ["m"], name="mul"),
             helper.make_node("Add", ["m", "x"], ["y"], name="add")]
    model = make_model(nodes, [vi("x", [4, 64])], [vi("y", [4, 64]), vi("s", [4, 64])], [], opset=17)
    sess = check_against_reference(model, {"x": np.random.default_rng(0).standard_normal((4, 64), np.float32)})
    assert sorted(ops_of(sess)) == ["Elementwise", "Sigmoid"]


def test_smaller_values_stay_out_of_a_bigger_output():
    # a squeeze-excitation gate: Sigmoid on (N, C, 1, 1) would be recomputed at every pixel
    nodes = [helper.make_node("Sigmoid", ["g"], ["s"], name="sig"),
             helper.make_node("Mul", ["x", "s"], ["m"], name="mul"),
             helper.make_node("Add", ["m", "x"], ["y"], name="add")]
    model = make_model(nodes, [vi("x", [1, 8, 6, 6]), vi("g", [1, 8, 1, 1])], [vi("y", [1, 8, 6, 6])], [],
                       opset=17)
    rng = np.random.default_rng(1)
    sess = check_against_reference(model, {"x": rng.standard_normal((1, 8, 6, 6), np.float32),
                                           "g": rng.standard_normal((1, 8, 1, 1), np.float32)})
    assert sorted(ops_of(sess)) == ["Elementwise", "Sigmoid"]


def test_scalar_constant_of_higher_rank_keeps_the_output_rank():
    nodes = [helper.make_node("Mul", ["x", "c"], ["m"], name="mul"),
             helper.make_node("Tanh", ["m"], ["y"], name="tanh")]
    model = make_model(nodes, [vi("x", [5])], [vi("y", [1, 1, 5])],
                       [const("c", np.full((1, 1, 1), 0.5, np.float32))], opset=17)
    sess = check_against_reference(model, {"x": np.linspace(-3, 3, 5).astype(np.float32)})
    assert ops_of(sess) == ["Elementwise"]


def test_float64_and_integer_chains_are_left_alone():
    for elem, dtype in ((TensorProto.DOUBLE, np.float64), (TensorProto.INT64, np.int64)):
        nodes = [helper.make_node("Add", ["x", "x"], ["a"], name="add"),
                 helper.make_node("Mul", ["a", "x"], ["y"], name="mul")]
        model = make_model(nodes, [vi("x", [6], elem)], [vi("y", [6], elem)], [], opset=17)
        sess = check_against_reference(model, {"x": np.arange(6).astype(dtype)}, rtol=0, atol=0)
        assert ops_of(sess) == ["Add", "Mul"]


def test_too_many_inputs_is_refused_with_its_reason():
    from normrt.onnx.passes import PassContext
    from normrt.onnx.passes.elementwise_chains import ElementwiseChains, find_groups
    n = MAX_INPUTS + 1
    nodes, last = [], "x0"
    for i in range(1, n):
        nodes.append(helper.make_node("Add", [last, f"x{i}"], [f"a{i}"], name=f"add{i}"))
        last = f"a{i}"
    nodes.append(helper.make_node("Neg", [last], ["y"], name="neg"))
    model = make_model(nodes, [vi(f"x{i}", [3]) for i in range(n)], [vi("y", [3])], [], opset=17)
    ctx = PassContext(model)
    (group,) = find_groups(ctx)
    assert "17 distinct inputs" in ElementwiseChains().check(ctx, group)
    feed = {f"x{i}": np.full(3, i, np.float32) for i in range(n)}
    sess = check_against_reference(model, feed)
    assert "Elementwise" not in ops_of(sess)


def test_program_errors_name_the_problem():
    with pytest.raises(ModelError, match="unknown op"):
        compile_program(["frobnicate"], [0, 0], [], 1)
    with pytest.raises(ModelError, match="reads value 3"):
        compile_program(["add"], [0, 3], [], 1)
    with pytest.raises(ModelError, match="2 operands per op"):
        compile_program(["add"], [0], [], 1)


def test_kernel_checks_its_arguments():
    from normrt._kernels import elementwise as k
    x = np.zeros((2, 3), np.float32)
    out = np.empty((2, 3), np.float32)
    code = np.array([0, 1, 0, 0], np.int32)
    none = np.zeros(0, np.float32)
    with pytest.raises(ValueError, match="float32"):
        k.run_program(code, none, 2, (x.astype(np.float64),), out, 1)
    with pytest.raises(ValueError, match="broadcast"):
        k.run_program(code, none, 2, (np.zeros((4,), np.float32),), out, 1)
    with pytest.raises(ValueError, match="opcode"):
        k.run_program(np.array([99, 1, 0, 0], np.int32), none, 2, (x,), out, 1)
    with pytest.raises(ValueError, match="not a temporary"):
        k.run_program(np.array([0, 0, 0, 0], np.int32), none, 2, (x,), out, 1)
    with pytest.raises(ValueError, match="C-contiguous"):
        k.run_program(code, none, 2, (x,), np.empty((3, 2), np.float32).T, 1)


def test_strided_and_broadcast_inputs_read_in_place():
    from normrt._kernels import elementwise as k
    rng = np.random.default_rng(3)
    a = rng.standard_normal((6, 300), np.float32)[:, ::3]         # last-axis stride 3
    b = rng.standard_normal((100, 6), np.float32).T                # transposed
    c = rng.standard_normal((6, 1), np.float32)
    out = np.empty((6, 100), np.float32)
    # (a * b) - c
    code = np.array([2, 3, 0, 1, 1, 3, 3, 2], np.int32)
    k.run_program(code, np.zeros(0, np.float32), 4, (a, b, c), out, 1)
    np.testing.assert_array_equal(out, a * b - c)


@settings(max_examples=60, deadline=None)
@given(shape=st.lists(st.integers(1, 9), min_size=1, max_size=4).map(tuple),
       inner=st.sampled_from([1, 2, 5, 32, 64, 127, 128, 129, 300]),
       views=st.lists(st.sampled_from(["plain", "reversed", "broadcast_outer", "broadcast_inner", "strided",
                                       "transposed"]), min_size=3, max_size=3),
       threads=st.integers(1, 3), seed=st.integers(0, 2 ** 16))
def test_generated_layouts_and_row_lengths_match_numpy(shape, inner, views, threads, seed):
    """run_program over short rows (items of whole rows, run_row_groups) and long ones (tiles
    within a row), with inputs read in place, gathered, broadcast, reversed or transposed:
    (a * b) - c bitwise numpy's, and the same bits for any thread count."""
    from normrt._kernels import elementwise as k
    rng = np.random.default_rng(seed)
    out_shape = shape + (inner,)

    def view(kind):
        if kind == "reversed":                  # rotary's negative stride on an outer axis
            return rng.standard_normal(out_shape).astype(np.float32)[..., ::-1, :] if len(out_shape) > 1 \
                else rng.standard_normal(out_shape).astype(np.float32)[::-1]
        if kind == "broadcast_outer":
            return rng.standard_normal((1,) * len(shape) + (inner,)).astype(np.float32)
        if kind == "broadcast_inner":
            return rng.standard_normal(shape + (1,)).astype(np.float32)
        if kind == "strided":
            return rng.standard_normal(shape + (2 * inner,)).astype(np.float32)[..., ::2]
        if kind == "transposed":
            return np.swapaxes(rng.standard_normal(out_shape[::-1]).astype(np.float32), 0, -1) \
                if len(out_shape) == 2 else rng.standard_normal(out_shape).astype(np.float32)
        return rng.standard_normal(out_shape).astype(np.float32)
    a, b, c = (view(v) for v in views)
    code = np.array([2, 3, 0, 1, 1, 4, 3, 2], np.int32)           # r3 = a * b; r4 = r3 - c
    out = k.run_program(code, np.zeros(0, np.float32), 5, (a, b, c), np.empty(out_shape, np.float32), threads)
    np.testing.assert_array_equal(out, np.broadcast_to(a * b - c, out_shape))
    one = k.run_program(code, np.zeros(0, np.float32), 5, (a, b, c), np.empty(out_shape, np.float32), 1)
    assert np.array_equal(out.view(np.uint32), one.view(np.uint32))


def test_a_hand_made_node_with_bad_inputs_names_the_problem():
    from normrt.onnx.domain import make_node
    node = make_node("Elementwise", ["x", "w"], ["y"], "ew", ops=["mul", "neg"], args=[0, 1, 2, 2])
    model = make_model([node], [vi("x", [2, 3]), vi("w", [4])], [vi("y", [2, 3])], [], opset=17)
    model.opset_import.append(helper.make_opsetid("normrt", 1))
    sess = normrt.InferenceSession(model.SerializeToString())
    x = np.ones((2, 3), np.float32)
    with pytest.raises(ModelError, match="does not broadcast"):
        sess.run(None, {"x": x, "w": np.ones(4, np.float32)})
    bad = make_node("Elementwise", ["x"], ["y"], "ew", ops=["neg", "frobnicate"], args=[0, 0, 1, 1])
    model = make_model([bad], [vi("x", [2, 3])], [vi("y", [2, 3])], [], opset=17)
    model.opset_import.append(helper.make_opsetid("normrt", 1))
    with pytest.raises(ModelError, match="unknown op"):
        normrt.InferenceSession(model.SerializeToString()).run(None, {"x": x})


@settings(max_examples=30, deadline=None)
@given(scale=st.sampled_from([1.0, 10.0, 90.0, 1e30]), seed=st.integers(0, 2**16), threads=st.integers(1, 3))
def test_one_exp_sigmoid_is_within_2_5_ulp_of_float64_for_any_thread_count(scale, seed, threads):
    from normrt._kernels import elementwise as k
    x = (np.random.default_rng(seed).standard_normal((33, 1000)) * scale).astype(np.float32)
    x.flat[:12] = [np.nan, np.inf, -np.inf, 0.0, -0.0, 1e30, -1e30, 88.5, -88.5, 87.0, -87.0, 1e-40]
    prog = compile_program(["sigmoid"], [0, 0], [], 1)
    got = k.run_program(prog.code, prog.constants, prog.n_registers, (x,), np.empty_like(x), threads)
    one = k.run_program(prog.code, prog.constants, prog.n_registers, (x,), np.empty_like(x), 1)
    np.testing.assert_array_equal(got.view(np.uint32), one.view(np.uint32))
    with np.errstate(over="ignore"):
        want = 1.0 / (1.0 + np.exp(-x.astype(np.float64)))
    assert np.array_equal(np.isnan(got), np.isnan(x))
    # below -87.3 the exp flushes to 0 where float64 keeps a value under FLT_MIN
    tiny = want < np.finfo(np.float32).tiny
    np.testing.assert_array_equal(got[tiny & ~np.isnan(x)], 0.0)
    ok = ~tiny & ~np.isnan(x)
    ulp = np.spacing(want[ok].astype(np.float32)).astype(np.float64)
    assert np.max(np.abs(got[ok] - want[ok]) / ulp) <= 2.5


def _run(prog, inputs, threads=1):
    from normrt._kernels import elementwise as k
    return k.run_program(prog.code, prog.constants, prog.n_registers, inputs, np.empty_like(inputs[0]), threads)


@settings(max_examples=30, deadline=None)
@given(swap_silu=st.booleans(), swap_gate=st.booleans(), gated=st.booleans(), seed=st.integers(0, 2**16),
       threads=st.integers(1, 3))
def test_silu_and_swiglu_compile_to_one_instruction_with_the_unfused_rounding(swap_silu, swap_gate, gated, seed,
                                                                               threads):
    # values: 0 g, 1 u, 2 sigmoid(g), 3 g * s, 4 (g * s) * u
    ops, args = ["sigmoid", "mul"], [0, 0] + ([2, 0] if swap_silu else [0, 2])
    if gated:
        ops.append("mul")
        args += [1, 3] if swap_gate else [3, 1]
    prog = compile_program(ops, args, [], 2)
    assert list(prog.code[0::4]) == [OPS["silu_mul" if gated else "silu"][0]]
    rng = np.random.default_rng(seed)
    g = (rng.standard_normal((7, 300)) * 8).astype(np.float32)
    g.flat[:7] = [np.nan, np.inf, -np.inf, -0.0, 1e30, -1e30, -88.0]
    u = rng.standard_normal((7, 300)).astype(np.float32)
    s = _run(compile_program(["sigmoid"], [0, 0], [], 1), (g,))
    with np.errstate(invalid="ignore"):
        want = g * s * u if gated else g * s     # float32 numpy: the unfused ops' rounding
    got = _run(prog, (g, u), threads)
    nan = np.isnan(want)       # (a NaN's sign bit is the vector unit's choice)
    assert np.array_equal(np.isnan(got), nan)
    np.testing.assert_array_equal(got[~nan].view(np.uint32), want[~nan].view(np.uint32))


def test_silu_is_not_fused_where_the_sigmoid_or_product_is_read_again():
    # sigmoid(g) also added to the product; g * s read twice
    for ops, args in ((["sigmoid", "mul", "add"], [0, 0, 0, 2, 3, 2]),
                      (["sigmoid", "mul", "mul", "add"], [0, 0, 0, 2, 3, 1, 4, 3]),
                      (["sigmoid", "mul"], [1, 1, 0, 2])):        # sigmoid(u) * g: another operand
        prog = compile_program(ops, args, [], 2)
        assert OPS["silu_mul"][0] not in prog.code[0::4]
        assert len(prog.code) // 4 >= len(ops) - 1


# ---- one-input programs recognized by what they compute (elementwise_program.recognize) ----

def _program_ops(sess):
    (step,) = [st for st in sess.executor.steps if st.node.op_type == "Elementwise"]
    prog = step.run.attrs["_program"]
    return [int(op) for op in prog.code[0::4]]


@settings(max_examples=30, deadline=None)
@given(form=st.sampled_from(["erf", "tanh"]), order=st.integers(0, 2), cube=st.sampled_from(["pow", "mul", "sq"]),
       scale_by_div=st.booleans(), n=st.integers(1, 300), seed=st.integers(0, 2 ** 16))
def test_gelu_spellings_run_as_one_op(form, order, cube, scale_by_div, n, seed):
    nodes, inits = gelu_nodes(form, order, cube, scale_by_div)
    model = make_model(nodes, [vi("x", [2, n])], [vi("y", [2, n])], inits, opset=17)
    x = (np.random.default_rng(seed).standard_normal((2, n)) * 4).astype(np.float32)
    # (the tanh form's 1 + tanh cancels below x ~ -4: both sides carry ulp(1) |x| / 2 there)
    sess = check_against_reference(model, {"x": x}, rtol=1e-5, atol=2e-6)
    assert ops_of(sess) == ["Elementwise"]
    assert _program_ops(sess) == [OPS["gelu" if form == "erf" else "gelu_tanh"][0]]


@pytest.mark.parametrize("change", [dict(k=0.0447), dict(s=0.8), dict(half=0.49)])
def test_gelu_look_alikes_keep_their_own_ops(change):
    # another constant is another function: the program runs op by op, still right
    nodes, inits = gelu_nodes("tanh", 0, "pow", False, **change)
    model = make_model(nodes, [vi("x", [4, 50])], [vi("y", [4, 50])], inits, opset=17)
    x = (np.random.default_rng(1).standard_normal((4, 50)) * 3).astype(np.float32)
    sess = check_against_reference(model, {"x": x}, rtol=1e-5, atol=2e-6)
    ops = _program_ops(sess)
    assert len(ops) > 1 and OPS["gelu_tanh"][0] not in ops and OPS["gelu"][0] not in ops


def test_recognize_needs_the_function_itself():
    # x / sqrt2 -> erf -> + 1 -> * x -> * 0.5 (values: 0 x, 1..3 the constants, 4.. the results)
    from normrt.onnx.elementwise_program import recognize
    ops = ("div", "erf", "add", "mul", "mul")
    args = (0, 1, 4, 4, 5, 2, 0, 6, 7, 3)
    r2 = float(np.float32(np.sqrt(2)))
    assert recognize(ops, args, (r2, 1.0, 0.5), 1) == "gelu"
    assert recognize(ops, args, (r2 * 1.01, 1.0, 0.5), 1) is None      # another scale
    assert recognize(ops, (0, 1, 4, 4, 5, 2, 2, 6, 7, 3), (r2, 1.0, 0.5), 1) is None   # no * x
    assert recognize(ops, args, (r2, 1.0, 0.5), 2) is None               # two inputs: never


LEAKY_RNG = np.random.default_rng(23)


@pytest.mark.parametrize("alpha", [0.01, 0.2, 1.0, 2.5])
def test_fused_leaky_relu_chain_is_one_node_with_the_unfused_bits(alpha):
    """StyleGAN's fused_leaky_relu, (x + bias) -> LeakyRelu -> * sqrt(2): one node whose values are
    those of the three ops run one by one (LeakyRelu as max(x, alpha x), min above 1), special
    values included."""
    nodes = [helper.make_node("Add", ["x", "b"], ["s"], name="bias"),
             helper.make_node("LeakyRelu", ["s"], ["l"], name="leaky", alpha=alpha),
             helper.make_node("Mul", ["l", "g"], ["y"], name="gain")]
    model = make_model(nodes, [vi("x", list(SHAPE))], [vi("y", list(SHAPE))],
                       [const("b", LEAKY_RNG.standard_normal((1, 3, 1, 1)).astype(np.float32)),
                        const("g", np.array(np.sqrt(2.0), np.float32))], opset=17)
    x = LEAKY_RNG.standard_normal(SHAPE).astype(np.float32) * 3
    x.reshape(-1)[:6] = [np.inf, -np.inf, np.nan, 0.0, -0.0, 3e38]
    sess = normrt.InferenceSession(model.SerializeToString())
    assert ops_of(sess) == ["Elementwise"]
    with np.errstate(all="ignore"):
        s = x + const_value(model, "b")
        want = np.where(s > 0, s, s * np.float32(alpha)) * np.float32(np.sqrt(2.0))
        got = sess.run(None, {"x": x})[0]
    np.testing.assert_array_equal(got, want)
    assert np.array_equal(np.signbit(got), np.signbit(want))


def const_value(model, name):
    from onnx import numpy_helper
    return next(numpy_helper.to_array(t) for t in model.graph.initializer if t.name == name)


def test_leaky_relu_with_alpha_zero_stays_out_of_chains():
    """alpha 0 (0 * inf is NaN where the op gives +inf): not the max form, the op runs alone."""
    nodes = [helper.make_node("Add", ["x", "x"], ["s"], name="add"),
             helper.make_node("LeakyRelu", ["s"], ["y"], name="leaky", alpha=0.0)]
    model = make_model(nodes, [vi("x", list(SHAPE))], [vi("y", list(SHAPE))], [], opset=17)
    sess = normrt.InferenceSession(model.SerializeToString())
    assert "LeakyRelu" in ops_of(sess)
    x = LEAKY_RNG.standard_normal(SHAPE).astype(np.float32)
    s = x + x
    np.testing.assert_array_equal(sess.run(None, {"x": x})[0], np.where(s > 0, s, s * np.float32(0.0)))


@pytest.mark.parametrize("threads", [1, 2])
def test_round_in_a_chain_is_half_to_even_bitwise(threads):
    """Round fuses (what a QDQ pair becomes): ties to even, -0.3 -> -0.0, values from 2^23 on
    (already integers), NaN and inf as np.rint gives them, at any thread count."""
    specials = np.array([0.5, 1.5, 2.5, -0.5, -2.5, 3.5, -0.3, 0.0, -0.0, 2**23 - 0.5, 2**23 - 1.5, 2**23 + 2,
                         -(2**23) + 0.5, 1e30, -1e30, np.nan, np.inf, -np.inf, 1e-40, 4.4999995, 0.49999997],
                        np.float32)
    x = np.concatenate([specials, np.random.default_rng(0).uniform(-300, 300, 70000).astype(np.float32)])
    nodes = [helper.make_node("Mul", ["x", "two"], ["d"], name="mul"),
             helper.make_node("Round", ["d"], ["r"], name="round"),
             helper.make_node("Div", ["r", "two"], ["y"], name="div")]
    model = make_model(nodes, [vi("x", [x.size])], [vi("y", [x.size])], [const("two", np.array(2.0, np.float32))],
                       opset=17)
    with normrt.threads(threads):
        sess = normrt.InferenceSession(model)
        assert ops_of(sess) == ["Elementwise"]
        got = sess.run(None, {"x": x})[0]
    want = np.rint(x * np.float32(2)) / np.float32(2)
    np.testing.assert_array_equal(got.view(np.uint32), want.view(np.uint32))

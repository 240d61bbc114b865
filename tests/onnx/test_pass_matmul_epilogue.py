"""matmul_epilogue: MatMul/Gemm [+bias] [+residual] [+activation] -> one normrt::MatMul.
Oracle: onnx.reference on the original model (float32 products: tolerance scaled by K)."""
import numpy as np
import pytest
from onnx import TensorProto, helper

from test_pass_layer_norm_decomposed import const, make_model, ops, run_and_compare, vi

RNG = np.random.default_rng(21)
F = TensorProto.FLOAT
PASS = "matmul_epilogue"


def fused(report):
    return report["passes"].get(PASS, 0)


def erf_gelu(x, out):
    """torch's legacy Erf GELU: x * (1 + erf(x / sqrt 2)) * 0.5."""
    return ([helper.make_node("Div", [x, "sqrt2"], [out + "_d"], name=out + "_div"),
             helper.make_node("Erf", [out + "_d"], [out + "_e"], name=out + "_erf"),
             helper.make_node("Add", [out + "_e", "one"], [out + "_p"], name=out + "_add1"),
             helper.make_node("Mul", [x, out + "_p"], [out + "_m"], name=out + "_mul"),
             helper.make_node("Mul", [out + "_m", "half"], [out], name=out + "_half")],
            [const("sqrt2", np.array(np.sqrt(2.0), np.float32)), const("one", np.array(1.0, np.float32)),
             const("half", np.array(0.5, np.float32))])


def linear_model(*, x_shape=(2, 7, 24), n=40, bias="add", bias_shape=None, residual=False, act=None,
                 extra_reader=None, opset=17):
    """x @ W [+ b] [+ r] [act]; extra_reader: 'product'/'biased' values also read by another node."""
    k = x_shape[-1]
    out_shape = list(x_shape[:-1]) + [n]
    nodes = [helper.make_node("MatMul", ["x", "W"], ["p"], name="mm")]
    inits = [const("W", (RNG.standard_normal((k, n)) / np.sqrt(k)).astype(np.float32))]
    inputs = [vi("x", list(x_shape))]
    y = "p"
    if bias:
        inits.append(const("b", RNG.standard_normal(bias_shape or (n,)).astype(np.float32)))
        operands = ["b", y] if bias == "add_swapped" else [y, "b"]
        nodes.append(helper.make_node("Add", operands, ["pb"], name="bias"))
        y = "pb"
    if residual:
        inputs.append(vi("r", out_shape))
        nodes.append(helper.make_node("Add", ["r", y], ["pr"], name="residual"))
        y = "pr"
    if act == "relu":
        nodes.append(helper.make_node("Relu", [y], ["out"], name="act"))
    elif act == "silu":
        nodes += [helper.make_node("Sigmoid", [y], ["s"], name="sig"),
                  helper.make_node("Mul", [y, "s"], ["out"], name="silu")]
    elif act == "gelu":
        g_nodes, g_inits = erf_gelu(y, "out")
        nodes += g_nodes
        inits += g_inits
    else:
        nodes.append(helper.make_node("Identity", [y], ["out"], name="id"))
    outputs = [vi("out", out_shape)]
    if extra_reader:
        nodes.append(helper.make_node("Neg", [{"product": "p", "biased": "pb"}[extra_reader]], ["other"],
                                      name="other"))
        outputs.append(vi("other", out_shape))
    return make_model(nodes, inputs, outputs, inits, opset)


def feed(model):
    out = {}
    for i in model.graph.input:
        shape = [d.dim_value for d in i.type.tensor_type.shape.dim]
        out[i.name] = RNG.standard_normal(shape).astype(np.float32)
    return out


def check(model, **kw):
    return run_and_compare(model, feed(model), atol=2e-5, **kw)


def normrt_matmul(sess):
    return [n for n in sess.optimized_model.graph.node if n.domain == "normrt" and n.op_type == "MatMul"]


TAILS = [(b, r, a) for b in ("add", "add_swapped", None) for r in (False, True)
         for a in (None, "relu", "silu", "gelu") if b or r or a]   # bare: test_bare_matmul_left_alone


@pytest.mark.parametrize("bias,residual,act", TAILS)
def test_fuses_bias_residual_activation(bias, residual, act):
    model = linear_model(bias=bias, residual=residual, act=act)
    sess, report = check(model)
    assert fused(report) == 1
    (node,) = normrt_matmul(sess)
    attrs = {a.name: a for a in node.attribute}
    assert (attrs["activation"].s.decode() if "activation" in attrs else "") == (act or "")
    assert (len(node.input) > 2 and bool(node.input[2])) == bool(bias)
    assert (len(node.input) > 3 and node.input[3] == "r") == residual
    assert [o for o in ops(sess) if o != "Identity"] == ["MatMul"]
    entry = next(e for e in report["fused"] if e["pass"] == PASS)
    assert entry["normrt_op"] == "MatMul" and entry["residual"] == residual


def test_two_dimensional_and_bias_of_shape_1_n():
    check(linear_model(x_shape=(33, 17), n=65, bias_shape=(1, 65), act="relu"))


def test_bare_matmul_left_alone():
    sess, report = check(linear_model(bias=None))
    assert fused(report) == 0 and "MatMul" in ops(sess) and not normrt_matmul(sess)


@pytest.mark.parametrize("where", ["product", "biased"])
def test_middle_value_read_elsewhere(where):
    sess, report = check(linear_model(bias="add", act="relu", extra_reader=where))
    if where == "product":
        assert fused(report) == 0
    else:   # the bias still fuses; the activation reads a value another node needs
        assert fused(report) == 0 or all(
            not any(a.name == "activation" for a in n.attribute) for n in normrt_matmul(sess))


def test_bias_varying_along_rows_is_not_a_bias():
    model = linear_model(x_shape=(6, 24), n=40, bias_shape=(6, 1))
    sess, report = check(model)
    assert fused(report) == 0 and "Add" in ops(sess)


@pytest.mark.parametrize("x_shape,r_shape,out_shape", [
    ([2, 7, 24], [7, 40], [2, 7, 40]),              # broadcast over the batch
    (["N", 7, 24], ["unk_a", "unk_b", 40], ["N", 7, 40]),   # a dynamic-axes export's other names
    ([1, 7, 24], [3, 7, 40], [3, 7, 40]),           # the residual raises the product's shape
])
@pytest.mark.parametrize("act", [None, "relu", "leaky"])
def test_residuals_that_may_broadcast_are_fused(x_shape, r_shape, out_shape, act):
    """The call adds a residual of another shape as the Add would, then the activation
    (kernel_calls.matmul); the specialized plan's fast GEMM leaves it to that call."""
    k, n = 24, 40
    nodes = [helper.make_node("MatMul", ["x", "W"], ["p"], name="mm"),
             helper.make_node("Add", ["b", "p"], ["pb"], name="bias"),
             helper.make_node("Add", ["pb", "r"], ["s"], name="residual")]
    if act == "relu":
        nodes.append(helper.make_node("Relu", ["s"], ["out"], name="act"))
    elif act == "leaky":
        nodes.append(helper.make_node("LeakyRelu", ["s"], ["out"], name="act", alpha=0.2))
    else:
        nodes[-1].output[0] = "out"
    inits = [const("W", RNG.standard_normal((k, n)).astype(np.float32)),
             const("b", RNG.standard_normal(n).astype(np.float32))]
    model = make_model(nodes, [vi("x", x_shape), vi("r", r_shape)], [vi("out", out_shape)], inits, 17)

    def concrete(shape):
        return [d if isinstance(d, int) else {"N": 3, "unk_a": 3, "unk_b": 7}[d] for d in shape]
    feeds = {"x": RNG.standard_normal(concrete(x_shape)).astype(np.float32),
             "r": RNG.standard_normal(concrete(r_shape)).astype(np.float32)}
    sess, report = run_and_compare(model, feeds, atol=2e-5)
    assert fused(report) == 1 and ops(sess) == ["MatMul"], ops(sess)
    first = sess.run(None, feeds)
    assert np.array_equal(sess.run(None, feeds)[0], first[0])      # the specialized plan


def test_non_constant_weight_left_alone():
    nodes = [helper.make_node("MatMul", ["x", "w"], ["p"], name="mm"),
             helper.make_node("Relu", ["p"], ["out"], name="act")]
    model = make_model(nodes, [vi("x", [3, 8]), vi("w", [8, 5])], [vi("out", [3, 5])], [], 17)
    sess, report = check(model)
    assert fused(report) == 0 and ops(sess) == ["MatMul", "Relu"]


@pytest.mark.parametrize("trans_b", [0, 1])
def test_gemm_with_bias(trans_b):
    m, k, n = 5, 12, 9
    w = RNG.standard_normal((n, k) if trans_b else (k, n)).astype(np.float32)
    nodes = [helper.make_node("Gemm", ["x", "W", "c"], ["g"], name="gemm", transB=trans_b),
             helper.make_node("Relu", ["g"], ["out"], name="act")]
    inits = [const("W", w), const("c", RNG.standard_normal(n).astype(np.float32))]
    model = make_model(nodes, [vi("x", [m, k])], [vi("out", [m, n])], inits, 13)
    sess, report = check(model)
    assert fused(report) == 1 and ops(sess) == ["MatMul"]


def test_gemm_with_alpha_left_alone():
    nodes = [helper.make_node("Gemm", ["x", "W", "c"], ["out"], name="gemm", alpha=2.0)]
    inits = [const("W", RNG.standard_normal((4, 3)).astype(np.float32)),
             const("c", RNG.standard_normal(3).astype(np.float32))]
    model = make_model(nodes, [vi("x", [2, 4])], [vi("out", [2, 3])], inits, 13)
    sess, report = check(model)
    assert fused(report) == 0 and ops(sess) == ["Gemm"]


def test_float64_left_alone():
    D = TensorProto.DOUBLE
    nodes = [helper.make_node("MatMul", ["x", "W"], ["p"], name="mm"),
             helper.make_node("Add", ["p", "b"], ["out"], name="bias")]
    inits = [const("W", RNG.standard_normal((4, 3))), const("b", RNG.standard_normal(3))]
    model = make_model(nodes, [vi("x", [2, 4], D)], [vi("out", [2, 3], D)], inits, 17)
    f = {"x": RNG.standard_normal((2, 4))}
    sess, report = run_and_compare(model, f)
    assert fused(report) == 0

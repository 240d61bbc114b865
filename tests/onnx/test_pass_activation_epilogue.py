"""activation_epilogue: Relu / Sigmoid / SiLU (x * Sigmoid(x)) / GELU (Erf forms, Gelu op) after a normrt norm
becomes the norm's `activation`; refused when the norm output is needed elsewhere."""
import math

import numpy as np
import pytest
from onnx import TensorProto, helper, numpy_helper

import normrt
from graph_builder import optimize_and_compare

RNG = np.random.default_rng(9)
PASS = "activation_epilogue"
C = 4


def arr(*shape):
    return RNG.standard_normal(shape).astype(np.float32)


def const(name, value):
    return numpy_helper.from_array(np.asarray(value, np.float32), name)


def norm_node(kind):
    """(node, initializers, opset) of a norm writing 'n' from 'x' of shape (2, C, 3, 3)."""
    if kind == "BatchNormalization":
        inits = [const("s", 1 + 0.3 * arr(C)), const("b", arr(C)), const("m", arr(C)), const("v", 0.5 + arr(C) ** 2)]
        return helper.make_node(kind, ["x", "s", "b", "m", "v"], ["n"], name="norm"), inits, 15
    if kind == "LayerNormalization":
        return helper.make_node(kind, ["x", "s", "b"], ["n"], name="norm", axis=-1), \
            [const("s", 1 + arr(3)), const("b", arr(3))], 17
    if kind == "InstanceNormalization":
        return helper.make_node(kind, ["x", "s", "b"], ["n"], name="norm"), \
            [const("s", 1 + arr(C)), const("b", arr(C))], 15
    if kind == "GroupNormalization":
        return helper.make_node(kind, ["x", "s", "b"], ["n"], name="norm", num_groups=2), \
            [const("s", 1 + arr(C)), const("b", arr(C))], 21
    raise ValueError(kind)


def activation_nodes(form):
    """Nodes from 'n' to 'y', plus their constants."""
    mk = helper.make_node
    if form == "relu":
        return [mk("Relu", ["n"], ["y"], name="act")], []
    if form == "sigmoid":
        return [mk("Sigmoid", ["n"], ["y"], name="act")], []
    if form == "silu":
        return [mk("Sigmoid", ["n"], ["sg"], name="sig"), mk("Mul", ["n", "sg"], ["y"], name="act")], []
    if form == "silu_swapped":
        return [mk("Sigmoid", ["n"], ["sg"], name="sig"), mk("Mul", ["sg", "n"], ["y"], name="act")], []
    if form == "gelu_op":
        return [mk("Gelu", ["n"], ["y"], name="act")], []
    if form == "gelu_tanh":
        return [mk("Gelu", ["n"], ["y"], name="act", approximate="tanh")], []
    if form == "elu":
        return [mk("Elu", ["n"], ["y"], name="act")], []
    if form == "elu_alpha":                   # another alpha: not the kernels' ELU
        return [mk("Elu", ["n"], ["y"], name="act", alpha=0.5)], []
    consts = [const("sqrt2", math.sqrt(2.0)), const("inv_sqrt2", 1 / math.sqrt(2.0)), const("one", 1.0),
              const("half", 0.5)]
    head = mk("Div", ["n", "sqrt2"], ["t"], name="div") if "div" in form else \
        mk("Mul", ["inv_sqrt2", "n"], ["t"], name="div")
    erf = [head, mk("Erf", ["t"], ["e"], name="erf"), mk("Add", ["one", "e"], ["p"], name="add1")]
    if form.startswith("gelu_legacy"):        # (n * p) * 0.5
        return erf + [mk("Mul", ["n", "p"], ["q"], name="mulx"), mk("Mul", ["q", "half"], ["y"], name="act")], consts
    if form.startswith("gelu_dynamo"):        # n * (0.5 * p)
        return erf + [mk("Mul", ["half", "p"], ["q"], name="mulh"), mk("Mul", ["n", "q"], ["y"], name="act")], consts
    if form.startswith("gelu_half_first"):    # (n * 0.5) * p
        return erf + [mk("Mul", ["n", "half"], ["h"], name="mulh"), mk("Mul", ["p", "h"], ["y"], name="act")], consts
    if form == "gelu_no_half":                # n * p: 2 * GELU, not GELU
        return erf + [mk("Mul", ["n", "p"], ["y"], name="act")], consts
    raise ValueError(form)


def model_of(kind, form, extra_outputs=(), opset=None):
    norm, inits, version = norm_node(kind)
    act, consts = activation_nodes(form)
    if form.startswith("gelu_op") or form == "gelu_tanh":
        version = max(version, 20)
    shape = [2, C, 3, 3]
    outputs = [helper.make_tensor_value_info(o, TensorProto.FLOAT, shape) for o in ("y",) + tuple(extra_outputs)]
    graph = helper.make_graph([norm] + act, "act", [helper.make_tensor_value_info("x", TensorProto.FLOAT, shape)],
                              outputs, inits + consts)
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", opset or version)])


def run_and_compare(model):
    return optimize_and_compare(model, {"x": arr(2, C, 3, 3) * 2})


def activation_of(node):
    for a in node.attribute:
        if a.name == "activation":
            return a.s.decode()
    return ""


KINDS = ["BatchNormalization", "LayerNormalization", "InstanceNormalization", "GroupNormalization"]
FORMS = {"relu": "relu", "sigmoid": "sigmoid", "silu": "silu", "silu_swapped": "silu", "gelu_op": "gelu",
         "gelu_legacy_div": "gelu", "gelu_legacy_mul": "gelu", "gelu_dynamo_div": "gelu", "gelu_dynamo_mul": "gelu",
         "gelu_half_first_div": "gelu", "gelu_tanh": "gelu_tanh", "elu": "elu"}


@pytest.mark.parametrize("kind", KINDS)
@pytest.mark.parametrize("form", sorted(FORMS))
def test_fused(kind, form):
    opt, report = run_and_compare(model_of(kind, form))
    assert report["passes"][PASS] == 1
    assert len(opt.graph.node) == 1
    node = opt.graph.node[0]
    assert node.domain == "normrt" and activation_of(node) == FORMS[form]
    assert list(node.output) == ["y"]
    (entry,) = report["fused"]
    assert entry["activation"] == FORMS[form] and entry["nodes"][0] == "norm" and "act" in entry["nodes"]
    assert entry["pattern"].endswith({"relu": "+Relu", "sigmoid": "+Sigmoid", "silu": "+SiLU",
                                      "gelu": "+GELU", "gelu_tanh": "+GELU(tanh)", "elu": "+ELU"}[FORMS[form]])
    assert not report["refused"]


@pytest.mark.parametrize("form,reason", [
    ("elu_alpha", "alpha=0.5"),
    ("gelu_no_half", "0.5"),
])
def test_refused_not_this_activation(form, reason):
    opt, report = run_and_compare(model_of("BatchNormalization", form))
    assert report["passes"][PASS] == 0
    refused = [e for e in report["refused"] if e["pass"] == PASS]
    assert len(refused) == 1 and reason in refused[0]["reason"]
    assert not activation_of(opt.graph.node[0])


@pytest.mark.parametrize("form", ["relu", "silu", "gelu_dynamo_div"])
def test_refused_when_norm_output_is_needed(form):
    """The norm output is also a graph output: it must exist, the activation cannot be fused."""
    opt, report = run_and_compare(model_of("InstanceNormalization", form, extra_outputs=("n",)))
    assert report["passes"][PASS] == 0
    assert "graph output" in report["refused"][0]["reason"]


def test_refused_when_norm_output_has_another_consumer():
    model = model_of("BatchNormalization", "relu")
    model.graph.node.append(helper.make_node("Neg", ["n"], ["z"], name="other"))
    model.graph.output.append(helper.make_tensor_value_info("z", TensorProto.FLOAT, [2, C, 3, 3]))
    opt, report = run_and_compare(model)
    assert report["passes"][PASS] == 0
    assert "other consumers" in report["refused"][0]["reason"]


def test_refused_when_sigmoid_output_is_needed():
    model = model_of("GroupNormalization", "silu", extra_outputs=("sg",))
    opt, report = run_and_compare(model)
    assert report["passes"][PASS] == 0
    assert "sg" in report["refused"][0]["reason"]


def test_refused_when_already_activated():
    """Relu -> Relu: the first is fused; the second stays (the norm already has an activation)."""
    model = model_of("BatchNormalization", "relu")
    model.graph.node[-1].output[0] = "r1"
    model.graph.node.append(helper.make_node("Relu", ["r1"], ["y"], name="act2"))
    opt, report = run_and_compare(model)
    assert [n.op_type for n in opt.graph.node] == ["BatchNorm", "Relu"]
    again, report2 = normrt.optimize(opt, report=True)
    assert report2["passes"][PASS] == 0
    assert "already has activation 'relu'" in report2["refused"][0]["reason"]


def test_layer_norm_with_statistics_outputs_refused():
    norm = helper.make_node("LayerNormalization", ["x", "s"], ["n", "mean", "rstd"], name="norm", axis=1)
    graph = helper.make_graph(
        [norm, helper.make_node("Relu", ["n"], ["y"], name="act")], "ln",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, [2, C, 3, 3])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [2, C, 3, 3]),
         helper.make_tensor_value_info("mean", TensorProto.FLOAT, [2, 1, 1, 1]),
         helper.make_tensor_value_info("rstd", TensorProto.FLOAT, [2, 1, 1, 1])],
        [const("s", 1 + arr(C, 3, 3))])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    opt, report = run_and_compare(model)
    assert report["passes"][PASS] == 0
    assert "statistics" in report["refused"][0]["reason"]

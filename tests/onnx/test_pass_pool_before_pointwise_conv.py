"""pool_before_pointwise_conv: Conv 1x1 -> AveragePool becomes AveragePool -> Conv 1x1 (they commute); anything
else stays as it is.

Oracle: onnx.reference on the original model.
"""
import numpy as np
import pytest
from onnx import TensorProto, helper, numpy_helper

from normrt.onnx.loader import load_model
from normrt.onnx.passes import PassContext
from normrt.onnx.passes.pool_before_pointwise_conv import PoolBeforePointwiseConv
from graph_builder import optimize_and_compare

RNG = np.random.default_rng(41)
PASS = "pool_before_pointwise_conv"
mk = helper.make_node


def arr(*shape, dtype=np.float32):
    return RNG.standard_normal(shape).astype(dtype)


def model_of(x_shape, y_shape, w_shape, conv_attrs=None, pool_attrs=None, bias=True, head=(), extra_outputs=(),
             elem=TensorProto.FLOAT, inits=None, opset=17):
    """[head nodes ('x' -> 'h')] Conv('h' or 'x' -> 'c') -> AveragePool('c' -> 'y')."""
    dtype = helper.tensor_dtype_to_np_dtype(elem)
    inits = dict(inits or {})
    inits["w"] = arr(*w_shape).astype(dtype)
    src = "h" if head else "x"
    ins = [src, "w"]
    if bias:
        inits["b"] = arr(w_shape[0]).astype(dtype)
        ins.append("b")
    pool_attrs = {"kernel_shape": [2, 2], "strides": [2, 2], **(pool_attrs or {})}
    nodes = list(head) + [mk("Conv", ins, ["c"], name="conv", **(conv_attrs or {})),
                          mk("AveragePool", ["c"], ["y"], name="pool", **pool_attrs)]
    outputs = [helper.make_tensor_value_info("y", elem, list(y_shape))] + \
        [helper.make_tensor_value_info(n, elem, list(s)) for n, s in extra_outputs]
    graph = helper.make_graph(nodes, "pool_conv", [helper.make_tensor_value_info("x", elem, list(x_shape))],
                              outputs, [numpy_helper.from_array(v, k) for k, v in inits.items()])
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", opset)])


def run_and_compare(model, x, rtol=1e-5, atol=1e-5):
    return optimize_and_compare(model, {"x": x}, rtol, atol)


def ops(model):
    return [n.op_type for n in model.graph.node]


CASES = {
    # name: (x shape, y shape, weight shape, conv attrs, pool attrs, bias)
    "2x2_stride2": ((2, 6, 8, 8), (2, 4, 4, 4), (4, 6, 1, 1), {}, {}, True),
    "odd_sizes_no_bias": ((1, 5, 7, 9), (1, 3, 3, 4), (3, 5, 1, 1), {}, {}, False),
    "grouped": ((1, 8, 6, 6), (1, 4, 3, 3), (4, 4, 1, 1), {"group": 2}, {}, True),
    "3x3_window_stride2": ((1, 4, 9, 7), (1, 6, 4, 3), (6, 4, 1, 1), {}, {"kernel_shape": [3, 3]}, True),
    "count_include_pad_no_pads": ((1, 4, 6, 6), (1, 2, 3, 3), (2, 4, 1, 1), {"pads": [0, 0, 0, 0]},
                                  {"count_include_pad": 1, "auto_pad": "VALID"}, True),
    "explicit_1x1_attrs": ((1, 4, 6, 6), (1, 2, 3, 3), (2, 4, 1, 1),
                           {"kernel_shape": [1, 1], "strides": [1, 1], "dilations": [2, 2]}, {}, True),
}


@pytest.mark.parametrize("case", sorted(CASES))
def test_reordered(case):
    x_shape, y_shape, w_shape, conv_attrs, pool_attrs, bias = CASES[case]
    model = model_of(x_shape, y_shape, w_shape, conv_attrs, pool_attrs, bias)
    opt, report = run_and_compare(model, arr(*x_shape))
    assert ops(opt) == ["AveragePool", "Conv"]
    assert list(opt.graph.node[1].output) == ["y"] and opt.graph.node[0].input[0] == "x"
    assert report["passes"][PASS] == 1 and not report["refused"]


def test_conv1d():
    model = model_of((2, 4, 9), (2, 3, 4), (3, 4, 1), pool_attrs={"kernel_shape": [3], "strides": [2]})
    opt, _ = run_and_compare(model, arr(2, 4, 9))
    assert ops(opt) == ["AveragePool", "Conv"]


def test_float64():
    model = model_of((1, 6, 8, 8), (1, 4, 4, 4), (4, 6, 1, 1), elem=TensorProto.DOUBLE)
    opt, _ = run_and_compare(model, arr(1, 6, 8, 8, dtype=np.float64), rtol=1e-12, atol=1e-12)
    assert ops(opt) == ["AveragePool", "Conv"]


def test_densenet_transition():
    """BN -> Mul -> Add -> Relu -> Conv 1x1 -> AveragePool: normrt::BatchNorm(relu) -> AveragePool -> Conv."""
    c = 6
    inits = {"s": 1 + 0.3 * arr(c), "bb": arr(c), "m": arr(c), "v": 0.5 + arr(c) ** 2, "k": arr(c, 1, 1),
             "d": arr(c, 1, 1)}
    head = [mk("BatchNormalization", ["x", "s", "bb", "m", "v"], ["n"], name="bn"),
            mk("Mul", ["n", "k"], ["p"], name="mul"), mk("Add", ["p", "d"], ["q"], name="add"),
            mk("Relu", ["q"], ["h"], name="relu")]
    model = model_of((1, c, 8, 8), (1, 3, 4, 4), (3, c, 1, 1), head=head, inits=inits, opset=15)
    opt, report = run_and_compare(model, arr(1, c, 8, 8))
    assert ops(opt) == ["BatchNorm", "AveragePool", "Conv"]
    assert report["fused"][0]["activation"] == "relu"


# -- left alone ----------------------------------------------------------------------------------------------

def _unchanged(model, x, want=("Conv", "AveragePool")):
    opt, report = run_and_compare(model, x)
    assert ops(opt) == list(want)
    assert report["passes"].get(PASS, 0) == 0 and not report["refused"]


def test_3x3_conv():
    _unchanged(model_of((1, 4, 8, 8), (1, 2, 3, 3), (2, 4, 3, 3)), arr(1, 4, 8, 8))


def test_strided_conv():
    _unchanged(model_of((1, 4, 8, 8), (1, 2, 2, 2), (2, 4, 1, 1), conv_attrs={"strides": [2, 2]}), arr(1, 4, 8, 8))


def test_padded_conv():
    _unchanged(model_of((1, 4, 6, 6), (1, 2, 4, 4), (2, 4, 1, 1), conv_attrs={"pads": [1, 1, 1, 1]}),
               arr(1, 4, 6, 6))


@pytest.mark.parametrize("pool_attrs, y_shape", [
    ({"pads": [1, 1, 1, 1], "count_include_pad": 1}, (1, 2, 4, 4)),
    ({"pads": [1, 1, 1, 1]}, (1, 2, 4, 4)),
    ({"auto_pad": "SAME_UPPER"}, (1, 2, 4, 4)),
    ({"ceil_mode": 1, "kernel_shape": [3, 3]}, (1, 2, 3, 3)),
])
def test_pool_with_padding_or_partial_windows(pool_attrs, y_shape):
    _unchanged(model_of((1, 4, 7, 7) if "ceil_mode" in pool_attrs else (1, 4, 6, 6), y_shape, (2, 4, 1, 1),
                        pool_attrs=pool_attrs), arr(1, 4, 7, 7) if "ceil_mode" in pool_attrs else arr(1, 4, 6, 6))


def test_pool_stride1_is_no_candidate():
    _unchanged(model_of((1, 4, 6, 6), (1, 2, 5, 5), (2, 4, 1, 1), pool_attrs={"strides": [1, 1]}), arr(1, 4, 6, 6))


def test_conv_output_read_elsewhere():
    _unchanged(model_of((1, 4, 6, 6), (1, 2, 3, 3), (2, 4, 1, 1), extra_outputs=[("c", (1, 2, 6, 6))]),
               arr(1, 4, 6, 6))


def test_float16():
    model = model_of((1, 4, 6, 6), (1, 2, 3, 3), (2, 4, 1, 1), elem=TensorProto.FLOAT16)
    ctx = PassContext(load_model(model))
    p = PoolBeforePointwiseConv()
    (m,) = list(p.matches(ctx))
    assert "not float32/float64" in p.check(ctx, m)
    assert p.run(ctx) == 0 and [n.op_type for n in ctx.nodes] == ["Conv", "AveragePool"]


def test_check_reasons():
    p = PoolBeforePointwiseConv()
    for conv_attrs, pool_attrs, w_shape, reason in [
            ({"pads": [1, 1, 1, 1]}, {}, (2, 4, 1, 1), "Conv pads"),
            ({}, {"ceil_mode": 1}, (2, 4, 1, 1), "ceil_mode"),
            ({}, {}, (2, 4, 3, 3), "1x1 kernel needed")]:
        model = model_of((1, 4, 8, 8), (1, 2, 4, 4), w_shape, conv_attrs, pool_attrs)
        ctx = PassContext(load_model(model))
        (m,) = list(p.matches(ctx))
        assert reason in p.check(ctx, m)

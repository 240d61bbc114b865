"""Shared helpers for tests that write ONNX graphs by hand: value infos, initializers, and a
builder for the statistics subgraphs (ReduceMean at either opset's signature, squares written
as Mul or Pow) that the decomposed-norm passes recognize.
"""
import numpy as np
from hypothesis import strategies as st
from onnx import TensorProto, helper, numpy_helper


def vi(name, shape, elem=TensorProto.FLOAT):
    """A value info; `shape` may hold ints, strings (symbolic dims) or be None (unknown rank)."""
    return helper.make_tensor_value_info(name, elem, shape)


def const(name, value):
    """An initializer holding `value` as numpy stores it (dtype kept)."""
    return numpy_helper.from_array(np.asarray(value), name)


class StatsBuilder:
    """Nodes and initializers of one graph in one float type (`elem`), at one opset.

    Every node is named after its output, so a test can point at the node a pass refuses.
    """

    def __init__(self, opset, elem, np_dtype):
        self.opset, self.elem, self.dtype = opset, elem, np.dtype(np_dtype)
        self.nodes, self.inits = [], []

    def const(self, name, value, dtype=None):
        self.inits.append(numpy_helper.from_array(np.asarray(value, dtype or self.dtype), name))
        return name

    def constant_node(self, name, value, dtype=None):
        """A Constant node (the ONNX function bodies write their constants that way)."""
        self.nodes.append(helper.make_node("Constant", [], [name], name=name,
                                           value=numpy_helper.from_array(np.asarray(value, dtype or self.dtype))))
        return name

    def node(self, op, ins, out, **kw):
        self.nodes.append(helper.make_node(op, ins, [out], name=out, **kw))
        return out

    def reduce_mean(self, x, axes, out, keepdims=1):
        """ReduceMean over `axes`: an attribute before opset 18, an int64 input from 18 on."""
        if self.opset >= 18:
            return self.node("ReduceMean", [x, self.const(out + "_axes", axes, np.int64)], out, keepdims=keepdims)
        return self.node("ReduceMean", [x], out, axes=axes, keepdims=keepdims)

    def square(self, v, out, how):
        """v*v as the exporters write it: Pow(v, 2) (`how="pow"`) or Mul(v, v)."""
        if how == "pow":
            return self.node("Pow", [v, self.const(out + "_two", 2.0)], out)
        return self.node("Mul", [v, v], out)


def optimize_and_compare(model, feed, rtol=1e-5, atol=1e-5):
    """(optimized model, report): normrt.optimize's model passes the checker, and a session on it
    gives onnx.reference's outputs of the original model (same shapes and dtypes, values to rtol/atol)."""
    import onnx
    from onnx.reference import ReferenceEvaluator

    import normrt

    opt, report = normrt.optimize(model, report=True)
    onnx.checker.check_model(opt)
    got = normrt.InferenceSession(opt).run(None, feed)
    want = ReferenceEvaluator(model).run(None, feed)
    assert len(got) == len(want)
    for g, w in zip(got, want):
        assert g.shape == w.shape and g.dtype == w.dtype
        np.testing.assert_allclose(g, w, rtol=rtol, atol=atol)
    return opt, report


class DrawnGraph:
    """Nodes and initializers of a graph a hypothesis test draws (`draw`) node by node: each
    node and constant named by a running number, constants in `elem` (a TensorProto type,
    numpy's dtype from `np_types`) unless told, and an input generator seeded by the draw."""

    def __init__(self, draw, shape, elem, np_types):
        self.draw, self.shape, self.elem, self.np_types = draw, tuple(shape), elem, np_types
        self.nodes, self.inits, self.n = [], [], 0
        self.rng = np.random.default_rng(draw(st.integers(0, 2 ** 16)))

    def node(self, op, inputs, **attrs):
        """The output name of a new `op` node reading `inputs`."""
        self.n += 1
        out = f"{op.lower()}_{self.n}"
        self.nodes.append(helper.make_node(op, list(inputs), [out], name=out, **attrs))
        return out

    def const(self, value, elem=None):
        """The name of a new initializer: `value` in `elem` (default the graph's), or int64 for "int"."""
        self.n += 1
        name = f"c_{self.n}"
        dtype = np.int64 if elem == "int" else self.np_types[elem or self.elem]
        self.inits.append(numpy_helper.from_array(np.asarray(value, dtype), name))
        return name


def gelu_nodes(form, order, cube, scale_by_div, k=0.044715, s=None, half=0.5):
    """GELU as model code spells it. erf form: x * 0.5 * (1 + erf(x / sqrt 2)) or with
    x * (1 / sqrt 2); tanh form: 0.5 x (1 + tanh(s (x + k x^3))) with x^3 from Pow, x*x*x or
    x^2 * x. `order`: where the 0.5 and the (1 + ...) go. Returns (nodes, constants)."""
    mk = helper.make_node
    c = {"one": 1.0, "half": half}
    nodes = []
    if form == "erf":
        if scale_by_div:
            c["r2"] = np.sqrt(2.0)
            nodes.append(mk("Div", ["x", "r2"], ["z"]))
        else:
            c["ir2"] = 1 / np.sqrt(2.0)
            nodes.append(mk("Mul", ["x", "ir2"], ["z"]))
        nodes.append(mk("Erf", ["z"], ["t"]))
    else:
        c["k"], c["s"] = k, np.sqrt(2 / np.pi) if s is None else s
        if cube == "pow":
            c["three"] = 3.0
            nodes.append(mk("Pow", ["x", "three"], ["x3"]))
        elif cube == "mul":
            nodes += [mk("Mul", ["x", "x"], ["x2"]), mk("Mul", ["x2", "x"], ["x3"])]
        else:
            c["two"] = 2.0
            nodes += [mk("Pow", ["x", "two"], ["x2"]), mk("Mul", ["x", "x2"], ["x3"])]
        nodes += [mk("Mul", ["k", "x3"], ["kx3"]), mk("Add", ["x", "kx3"], ["inner"]),
                  mk("Mul", ["inner", "s"], ["z"]), mk("Tanh", ["z"], ["t"])]
    if order == 0:       # (1 + t) * x * 0.5
        nodes += [mk("Add", ["one", "t"], ["p"]), mk("Mul", ["p", "x"], ["q"]), mk("Mul", ["q", "half"], ["y"])]
    elif order == 1:     # 0.5 * x * (t + 1)
        nodes += [mk("Mul", ["half", "x"], ["hx"]), mk("Add", ["t", "one"], ["p"]), mk("Mul", ["hx", "p"], ["y"])]
    else:                # x * (0.5 * t + 0.5)
        nodes += [mk("Mul", ["t", "half"], ["ht"]), mk("Add", ["ht", "half"], ["p"]), mk("Mul", ["x", "p"], ["y"])]
    return nodes, [numpy_helper.from_array(np.array(v, np.float32), n) for n, v in c.items()]

"""Chains of elementwise ops -> one normrt::Elementwise node (one pass over memory).

Not one rule per spelling: any connected DAG of float32 elementwise ops whose
middle values nobody else reads becomes one node. What it computes is written
down as an expression (the node's `ops` / `args` / `constants`, see domain.py)
that the fused kernel evaluates tile by tile, so a tanh-GELU, an Erf-GELU, a
SiLU, a layer-scale Mul + residual Add or a scale/shift chain each cost one
read of their inputs and one write of their output instead of one pass per op:

    x ─┬──────────────────────────────────────────────► Mul ─► Mul(·, 0.5) ─► y
       └─► Pow(·, 3) ─► Mul(·, 0.0447) ─► Add(x, ·) ─► Mul(·, 0.798) ─► Tanh ─► Add(·, 1) ─┘

    ==>  x ─► normrt::Elementwise(ops=[square, mul, mul, add, mul, tanh, add, mul, mul], ...) ─► y

    x ─► Sigmoid ─► Mul(x, ·) ─► Mul(·, gamma) ─► Add(res, ·) ─► y
    ==>  x, gamma, res ─► normrt::Elementwise ─► y        (gamma: any constant broadcasting to y)

The groups are found in one backward sweep: a node joins the group of its
readers when all of them are in one group, its output is no graph output and
has the group's output shape (a smaller value, e.g. a per-channel Sigmoid in a
squeeze-excitation gate, stays its own node: inside the group it would be
recomputed at every element of the larger output). Each group has one output,
the value of its last node. Inputs are the values read from outside the group;
one-element constants become the expression's scalar constants.

The elementwise ops: Add, Sub, Mul, Div, Max and Min of two inputs, Pow, Neg,
Abs, Exp, Log, Sqrt, Reciprocal, Tanh, Erf, Sigmoid, Relu, Round (Pow by a constant
2, 3, 0.5 or 1 becomes the same square/product/sqrt/copy the unfused op computes),
and LeakyRelu with alpha > 0 as max(x, alpha x) (min above 1), the standalone op's
values: StyleGAN's fused_leaky_relu, `(x + bias) -> LeakyRelu -> * sqrt(2)`, is one pass.
A normrt::FakeQuant (a QDQ pair, qdq_pairs) beside other elementwise ops joins their program
as one fake_quant op, the FakeQuant kernel's own loop on each tile (a QDQ transformer's bias
Add and its activation's fake quantization, one pass); alone it keeps its own one-pass kernel.

Refused (reason returned by `check`; the nodes then run one by one): a group
with more distinct inputs or live values than the kernel holds (16 inputs, 48
registers). Groups of one node are not candidates; nor are values other than
float32 or half (float16/bfloat16, computed in float32: _queries.PRODUCT_DTYPES), opset < 7 arithmetic (the legacy `broadcast` attribute) and Max/Min
with other than two inputs (those nodes are simply not elementwise here).
"""
from dataclasses import dataclass, field

import numpy as np
from onnx import TensorProto, helper

from ...errors import ModelError
from ..domain import NORM_OPS, make_node
from ..elementwise_program import MAX_INPUTS, compile_program, leaky_relu_select
from . import GraphPass
from ._queries import (PRODUCT_DTYPES, float_type_reason, fused_name, in_graph_order, is_float, is_normrt,
                       leaky_alpha)

PATTERN = "elementwise chain"

_BINARY = {"Add": "add", "Sub": "sub", "Mul": "mul", "Div": "div", "Max": "max", "Min": "min"}
_UNARY = {"Neg": "neg", "Abs": "abs", "Exp": "exp", "Log": "log", "Sqrt": "sqrt", "Reciprocal": "reciprocal",
          "Tanh": "tanh", "Erf": "erf", "Sigmoid": "sigmoid", "Relu": "relu", "Round": "round"}
# Pow by these constant exponents: the unfused op's own special cases (ops/elementwise.pow_)
_POW_FORMS = {2.0: "square", 0.5: "sqrt", 1.0: "copy"}


@dataclass
class Group:
    nodes: list                    # in graph order; the last writes the output
    plan: dict = field(default_factory=dict)

    @property
    def output(self):
        return self.nodes[-1].output[0]


def _const_scalar(ctx, name):
    """(value, rank) of a one-element numeric constant, else None."""
    v = ctx.constants.get(name) if name else None
    if v is None or v.size != 1 or not (v.dtype.kind in "iu" or is_float(v.dtype)):
        return None
    return float(v.reshape(-1)[0]), v.ndim


def _pow_exponent(ctx, node):
    """The constant scalar exponent of a Pow the generic op special-cases (0-d), else None."""
    v = ctx.constants.get(node.input[1])
    if v is None or v.ndim != 0 or not (v.dtype.kind in "iu" or is_float(v.dtype)):
        return None
    return float(v)


def _elementwise(ctx, node):
    """Whether `node` is an elementwise op this pass fuses (float32 or half values)."""
    if is_normrt(node, "FakeQuant"):
        # a QDQ pair (qdq_pairs): alone it runs on its own kernel; beside other elementwise ops
        # it joins their program as the seven ops it is (same values), one pass and node fewer
        return bool(node.input and node.input[0] and node.output and node.output[0]) and \
            float_type_reason(ctx, [node.input[0], node.output[0]], (TensorProto.FLOAT,)) is None
    if node.domain not in ("", "ai.onnx") or len(node.output) != 1 or not node.output[0]:
        return False
    op = node.op_type
    version = ctx.opsets.get("", 1)
    if op in _BINARY:
        if len(node.input) != 2 or version < (8 if op in ("Max", "Min") else 7):
            return False
        data = list(node.input)
    elif op == "Pow":
        if len(node.input) != 2 or version < 7:
            return False
        # the exponent may be another type when it is a constant (Pow-12: T1 != T2)
        data = [node.input[0]] + ([] if _const_scalar(ctx, node.input[1]) is not None else [node.input[1]])
    elif op in _UNARY:
        if len(node.input) != 1:
            return False
        data = [node.input[0]]
    elif op == "LeakyRelu":
        if len(node.input) != 1 or leaky_alpha(node) is None:
            return False
        data = [node.input[0]]
    else:
        return False
    if not all(data):
        return False
    # one type per node, so one per connected chain (the kernel's result is rounded to it)
    return float_type_reason(ctx, data + [node.output[0]], PRODUCT_DTYPES) is None


def _known_shape(ctx, name):
    """The value's shape without leading 1s (a rank raised by a one-element constant adds
    no elements), if every dim is known (a number or a named dim), else None."""
    s = ctx.shape(name)
    if s is None or any(d is None for d in s):
        return None
    s = tuple(s)
    while s and s[0] == 1:
        s = s[1:]
    return s


def find_groups(ctx):
    """The groups of two or more elementwise nodes (see the module docstring), in graph order."""
    outputs = set(ctx.graph_outputs)
    group_of = {}          # id(node) -> its Group
    sink_shape = {}        # id(Group) -> the group output's shape (None: unknown)
    groups = []
    for node in reversed(ctx.nodes):
        if not _elementwise(ctx, node):
            continue
        out = node.output[0]
        readers = ctx.readers(out)
        joined = None
        if out not in outputs and readers and all(id(r) in group_of for r in readers):
            owners = {id(group_of[id(r)]) for r in readers}
            if len(owners) == 1:
                g = group_of[id(readers[0])]
                shape = _known_shape(ctx, out)
                if shape is not None and shape == sink_shape[id(g)]:
                    joined = g
        if joined is None:
            joined = Group([])
            groups.append(joined)
            sink_shape[id(joined)] = _known_shape(ctx, out)
        joined.nodes.append(node)
        group_of[id(node)] = joined
    found = []
    for g in groups:
        if len(g.nodes) >= 2:
            g.nodes.reverse()
            found.append(g)
    found.reverse()
    return found


def expression(ctx, nodes):
    """(input names, ops, args, constants, out_rank) of the group `nodes` (graph order)."""
    inputs, constants, ops, args = [], [], [], []
    inside = {}            # value name -> ("op", k): a group node's result
    const_index = {}
    out_rank = 0

    def operand(name):
        nonlocal out_rank
        if name in inside:
            return inside[name]
        c = _const_scalar(ctx, name)
        if c is not None:
            value, rank = c
            out_rank = max(out_rank, rank)
            return constant(value)
        if name not in inputs:
            inputs.append(name)
        return ("in", inputs.index(name))

    def constant(value):
        key = np.float32(value).tobytes()
        if key not in const_index:
            const_index[key] = len(constants)
            constants.append(float(np.float32(value)))
        return ("const", const_index[key])

    def constant_block(values):
        """The first of len(values) consecutive constants holding `values` (shared by equal blocks)."""
        key = np.asarray(values, np.float32).tobytes()
        if key not in const_index:
            const_index[key] = len(constants)
            constants.extend(float(np.float32(v)) for v in values)
        return ("const", const_index[key])

    def emit(name, *xs):
        ops.append(name)
        args.extend(xs if len(xs) == 2 else (xs[0], xs[0]))
        return ("op", len(ops) - 1)

    for node in nodes:
        op = node.op_type
        if op in _BINARY:
            r = emit(_BINARY[op], operand(node.input[0]), operand(node.input[1]))
        elif op in _UNARY:
            r = emit(_UNARY[op], operand(node.input[0]))
        elif op == "FakeQuant":
            # (min(max(round(x / s) + z, lo), hi) - z) * s: the FakeQuant kernel's values
            # (one op reading its grid from four consecutive constants: elementwise_program)
            a = {at.name: helper.get_attribute_value(at) for at in node.attribute}
            grid = (a["scale"], a.get("zero_point", 0.0), a["lo"], a["hi"])
            r = emit("fake_quant", operand(node.input[0]), constant_block(grid))
        elif op == "LeakyRelu":
            # max(x, alpha x), min above alpha 1: the standalone op's values (ops/activations.py)
            x = operand(node.input[0])
            alpha = leaky_alpha(node)
            r = emit(leaky_relu_select(alpha), x, emit("mul", x, constant(alpha)))
        else:   # Pow
            x = operand(node.input[0])
            e = _pow_exponent(ctx, node)
            if e in _POW_FORMS:
                r = emit(_POW_FORMS[e], x)
            elif e == 3.0:
                r = emit("mul", emit("square", x), x)        # a * a * a, as the generic op
            else:
                r = emit("pow", x, operand(node.input[1]))
        inside[node.output[0]] = r
    n_in, n_const = len(inputs), len(constants)
    base = {"in": 0, "const": n_in, "op": n_in + n_const}
    numbers = [base[kind] + i for kind, i in args]
    return inputs, ops, numbers, constants, out_rank


class ElementwiseChains(GraphPass):
    name = "elementwise_chains"
    report_refusals = False       # refused groups run node by node, as before

    def matches(self, ctx):
        return find_groups(ctx)

    def describe(self, g):
        return PATTERN, [n.name for n in g.nodes]

    def check(self, ctx, g):
        inputs, ops, args, constants, out_rank = expression(ctx, g.nodes)
        if len(inputs) > MAX_INPUTS:
            return f"{len(inputs)} distinct inputs (the kernel reads at most {MAX_INPUTS})"
        try:
            compile_program(ops, args, constants, len(inputs), where=f"group ending at {g.nodes[-1].name!r}")
        except ModelError as e:
            return str(e)
        g.plan = {"inputs": inputs, "ops": ops, "args": args, "constants": constants, "out_rank": out_rank}
        return None

    def rewrite(self, ctx, g):
        p = g.plan
        removed = in_graph_order(ctx, g.nodes)
        new = make_node("Elementwise", p["inputs"], [g.output], fused_name(ctx, removed, "Elementwise"),
                        ops=p["ops"], args=p["args"], constants=p["constants"], out_rank=p["out_rank"])
        ctx.replace_nodes(removed, [new])
        ctx.report.fused.append({
            "pass": self.name, "op": PATTERN, "pattern": "-".join(n.op_type for n in removed),
            "nodes": [n.name for n in removed], "normrt_op": "Elementwise", "normrt_node": new.name,
            "kernel": NORM_OPS["Elementwise"].kernel, "activation": None, "residual": False,
        })

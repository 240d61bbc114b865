"""A static QDQ model's FakeQuant of a value already on its grid is dropped (no_op_views with
fake_quant_grid), bitwise the model's values (onnx.reference); the FakeQuants that remain run as
one `fake_quant` op of an elementwise program or a prepared kernel step, the pair's values with
the pair's +0.0 (not the -0.0 a literal round(x / s) * s gives)."""
import numpy as np
import pytest
from hypothesis import given, settings, strategies as st
from onnx import TensorProto, helper, numpy_helper
from onnx.reference import ReferenceEvaluator

import normrt
from graph_builder import vi
from normrt.errors import ModelError
from normrt.onnx.elementwise_program import compile_program

C, S = 3, 6
# ops that copy, select or reorder values (the output stays on the input's grid) ...
KEEPS = ["transpose", "reshape", "pad_zero", "pad_edge", "pad_reflect", "maxpool", "relu", "slice", "concat_self",
         "gather", "unsqueeze_squeeze", "resize_nearest", "where_nan_zero", "max_zero"]
# ... and ops whose output leaves it
BREAKS = ["add_const", "avgpool", "pad_off_grid", "concat_raw", "where_off_grid", "max_negative_zero"]


class Chain:
    """x -> Q/DQ(grid 1) -> ops -> Q/DQ(grid 2) -> Mul(1.5) -> y, rank 4 throughout."""

    def __init__(self, ops, scale, zp, itype, second_scale):
        self.nodes, self.inits, self.shape = [], [], [1, C, S, S]
        self.n = 0
        v = self.qdq("x", scale, zp, itype)
        for op in ops:
            v = getattr(self, op)(v)
        v = self.qdq(v, second_scale, zp, itype)
        self.nodes.append(helper.make_node("Mul", [v, self.const(np.float32(1.5))], ["y"], name="out_mul"))
        graph = helper.make_graph(self.nodes, "chain", [vi("x", [1, C, S, S])], [vi("y", None)], self.inits)
        self.model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 19)])
        self.model.ir_version = 9

    def name(self, stem):
        self.n += 1
        return f"{stem}{self.n}"

    def const(self, value):
        name = self.name("c")
        self.inits.append(numpy_helper.from_array(np.asarray(value), name))
        return name

    def node(self, op, ins, **attrs):
        out = self.name(op.lower())
        self.nodes.append(helper.make_node(op, ins, [out], name=out, **attrs))
        return out

    def qdq(self, v, scale, zp, itype):
        s, z = self.const(np.float32(scale)), self.const(np.array(zp, itype))
        return self.node("DequantizeLinear", [self.node("QuantizeLinear", [v, s, z]), s, z])

    def transpose(self, v):
        self.shape = [self.shape[i] for i in (0, 1, 3, 2)]
        return self.node("Transpose", [v], perm=[0, 1, 3, 2])

    def reshape(self, v):
        self.shape = [1, self.shape[1], self.shape[3], self.shape[2]]
        return self.node("Reshape", [v, self.const(np.array(self.shape, np.int64))])

    def _pad(self, v, mode, fill=None):
        self.shape = self.shape[:2] + [self.shape[2] + 2, self.shape[3] + 1]
        ins = [v, self.const(np.array([0, 0, 1, 0, 0, 0, 1, 1], np.int64))]
        if fill is not None:
            ins.append(self.const(np.float32(fill)))
        return self.node("Pad", ins, mode=mode)

    def pad_zero(self, v):
        return self._pad(v, "constant")

    def pad_edge(self, v):
        return self._pad(v, "edge")

    def pad_reflect(self, v):
        return self._pad(v, "reflect")

    def pad_off_grid(self, v):
        return self._pad(v, "constant", fill=0.0123)

    def maxpool(self, v):
        self.shape = self.shape[:2] + [d - 1 for d in self.shape[2:]]
        return self.node("MaxPool", [v], kernel_shape=[2, 2])

    def avgpool(self, v):
        self.shape = self.shape[:2] + [d - 1 for d in self.shape[2:]]
        return self.node("AveragePool", [v], kernel_shape=[2, 2])

    def relu(self, v):
        return self.node("Relu", [v])

    def _where_nan(self, v, fill):
        return self.node("Where", [self.node("IsNaN", [v]), self.const(np.float32(fill)), v])

    def where_nan_zero(self, v):          # attention's NaN guard
        return self._where_nan(v, 0.0)

    def where_off_grid(self, v):
        return self._where_nan(v, 0.0123)

    def max_zero(self, v):
        return self.node("Max", [v, self.const(np.float32(0.0))])

    def max_negative_zero(self, v):       # -0.0 is no grid value (FakeQuant gives +0.0)
        return self.node("Max", [v, self.const(np.float32(-0.0))])

    def add_const(self, v):
        return self.node("Add", [v, self.const(np.float32(0.3))])

    def slice(self, v):
        self.shape = self.shape[:3] + [self.shape[3] - 1]
        return self.node("Slice", [v, self.const(np.array([1], np.int64)), self.const(np.array([99], np.int64)),
                                   self.const(np.array([3], np.int64))])

    def concat_self(self, v):
        self.shape = [1, 2 * self.shape[1]] + self.shape[2:]
        return self.node("Concat", [v, v], axis=1)

    def concat_raw(self, v):
        # v beside x itself (not on the grid), cut to v's spatial size
        raw = self.node("Slice", ["x", self.const(np.array([0, 0], np.int64)),
                                  self.const(np.array(self.shape[2:], np.int64)), self.const(np.array([2, 3], np.int64))])
        raw = self.node("Pad", [raw, self.const(np.array([0, 0, 0, 0, 0, 0, max(0, self.shape[2] - S),
                                                          max(0, self.shape[3] - S)], np.int64))])
        self.shape = [1, self.shape[1] + C] + self.shape[2:]
        return self.node("Concat", [v, raw], axis=1)

    def gather(self, v):
        if self.shape[1] < 3:
            return self.relu(v)
        self.shape = [1, 3] + self.shape[2:]          # three of the channels, reordered
        return self.node("Gather", [v, self.const(np.array([2, 0, 1], np.int64))], axis=1)

    def unsqueeze_squeeze(self, v):
        axis = self.const(np.array([2], np.int64))
        return self.node("Squeeze", [self.node("Unsqueeze", [v, axis]), axis])

    def resize_nearest(self, v):
        self.shape = self.shape[:2] + [2 * d for d in self.shape[2:]]
        return self.node("Resize", [v, "", self.const(np.array([1, 1, 2, 2], np.float32))], mode="nearest")


def fake_quants(sess):
    """FakeQuant nodes plus fake_quant ops of elementwise programs in the optimized graph."""
    count = 0
    for node in sess.optimized_model.graph.node:
        if node.op_type == "FakeQuant":
            count += 1
        elif node.op_type == "Elementwise":
            ops = next(helper.get_attribute_value(a) for a in node.attribute if a.name == "ops")
            count += sum(o == b"fake_quant" for o in ops)
    return count


def same_bits(a, b):
    return a.dtype == b.dtype and a.shape == b.shape and np.array_equal(a.view(np.uint32), b.view(np.uint32))


@settings(max_examples=60, deadline=None)
@given(st.lists(st.sampled_from(KEEPS + BREAKS), max_size=4), st.sampled_from([0.05, 0.1, 1 / 3, 0.0173]),
       st.sampled_from([(np.uint8, 128), (np.uint8, 0), (np.int8, 0), (np.int8, -7), (np.uint16, 3000)]),
       st.booleans(), st.integers(0, 2**31 - 1))
def test_generated_chains_drop_the_repeated_fake_quant(ops, scale, grid_type, same_grid, seed):
    itype, zp = grid_type
    chain = Chain(ops, scale, zp, itype, scale if same_grid else scale * 1.5)
    sess = normrt.InferenceSession(chain.model)
    keeps_grid = same_grid and not set(ops) & set(BREAKS)
    assert fake_quants(sess) == (1 if keeps_grid else 2), [n.op_type for n in sess.optimized_model.graph.node]
    rng = np.random.default_rng(seed)
    info = np.iinfo(itype)
    x = (rng.uniform(-1.2, 1.2, (1, C, S, S)) * (info.max - info.min) * scale).astype(np.float32)
    x.flat[:4] = [-0.2 * scale, 0.0, -0.0, 0.5 * scale]     # -0.0 out of a QDQ pair is +0.0
    want = ReferenceEvaluator(chain.model).run(None, {"x": x})[0]
    first = None
    for threads in (1, 2):
        with normrt.threads(threads):
            generic = sess.executor.run({"x": x}, specialize=False)[0]
            runs = [sess.run(None, {"x": x})[0] for _ in range(2)]      # traced, then the specialized plan
        for got in [generic] + runs:
            first = got if first is None else first
            assert same_bits(got, first)
    if "avgpool" not in ops:
        assert same_bits(first, want)
        return
    # An average of four grid values sums in an order of its own (onnx.reference: along the rows,
    # the pool kernel: columns then rows), and a sum can land an ulp either side of a tie of the
    # next grid: there, and only there, the two may round one step apart (times the final Mul's 1.5).
    step = np.float32(scale if same_grid else scale * 1.5) * np.float32(1.5)
    off = first != want
    slack = step * 1e-4 + 4 * np.spacing(np.abs(want[off]))
    assert np.all(np.abs(first[off] - want[off]) <= step + slack), (first[off], want[off])


@pytest.mark.parametrize("zp", [0, 5])
def test_lone_fake_quant_prepared_step(zp):
    """x -> Q/DQ -> y: the FakeQuant kernel as a prepared plan step, the pair's bits (+0.0 included)."""
    chain = Chain([], 0.0173, zp, np.uint8, 0.0173)
    graph = chain.model.graph
    del graph.node[2:]                        # the second pair and the Mul: y is the first pair's output
    graph.node[-1].output[0] = "y"
    x = np.random.default_rng(3).standard_normal((1, C, S, S)).astype(np.float32) * 3
    x.flat[:3] = [-0.004, -0.0, 0.0]
    sess = normrt.InferenceSession(chain.model)
    assert [n.op_type for n in sess.optimized_model.graph.node] == ["FakeQuant"]
    want = ReferenceEvaluator(chain.model).run(None, {"x": x})[0]
    generic = sess.executor.run({"x": x}, specialize=False)[0]
    first, second = (sess.run(None, {"x": x})[0] for _ in range(2))
    assert "_fake_quant" in next(iter(sess.executor.specialized.values())).source
    for got in (generic, first, second):
        assert same_bits(got, want)


def test_program_fake_quant_grids():
    """compile_program takes a fake_quant's grid from four constants into the program's grid table
    (not the register file: a QDQ GELU's ten grids fit), refuses any other operand (ModelError),
    and the kernel refuses code naming a grid it was not given (ValueError)."""
    from normrt._kernels import elementwise as kernel
    with pytest.raises(ModelError, match="fake_quant"):
        compile_program(["fake_quant"], [0, 1], [0.1, 0.0, 0.0], 1)       # three constants
    with pytest.raises(ModelError, match="fake_quant"):
        compile_program(["fake_quant"], [0, 0], [0.1, 0.0, 0.0, 255.0], 1)  # the grid is the input
    # x -> fq(g0) -> * 2 -> fq(g1) -> ... twelve grids, each op's result on the next
    grids = [(0.5 + k, 3.0, 0.0, 255.0) for k in range(12)]
    ops, args, constants = [], [], [2.0]
    v = 0
    for k, g in enumerate(grids):
        constants += list(g)
    first = 1 + len(constants)
    for k in range(len(grids)):
        ops += ["fake_quant", "mul"]
        args += [v, 2 + 4 * k, first + 2 * k, 1]
        v = first + 2 * k + 1
    program = compile_program(ops, args, constants, 1)
    assert program.n_registers <= 3 and program.grids.size == 48      # input, the 2.0, one temporary
    x = np.array([-1.0, -0.2, 0.26, 1.0, 500.0, np.nan, -np.inf, 7.3], np.float32)
    y = np.empty_like(x)
    kernel.run_program(program.code, program.constants, program.n_registers, (x,), y, 1, program.grids)
    want = x
    for scale, zero, lo, hi in grids:
        s = np.float32(scale)
        want = ((np.clip(np.rint(want / s) + np.float32(zero), lo, hi) - np.float32(zero)) * s).astype(np.float32)
        want = want * np.float32(2.0)
    assert same_bits(y, want)
    with pytest.raises(ValueError, match="fake_quant"):
        kernel.run_program(program.code, program.constants, program.n_registers, (x,), y, 1)   # no grids
    bad = program.code.copy()
    bad[3] = 12                 # grid 12 of 0..11
    with pytest.raises(ValueError, match="fake_quant"):
        kernel.run_program(bad, program.constants, program.n_registers, (x,), y, 1, program.grids)

"""Grid tables (elementwise_program.grid_table_split, quant_grid.h nrt_q_grid_table): a fake_quant
and the tail of a program that reads only its result become one table lookup on the grid's codes.
Generated programs compiled with and without tables give the same bits (the tail's table is the
kernel's own values at the grid's points) - a NaN's sign and payload aside: the table holds one
NaN for every NaN input - on inputs with NaN, infinities, ties and -0.0, at lengths that
exercise the vector steps and the scalar rest, and any thread count."""
import numpy as np
import pytest
from hypothesis import given, settings, strategies as st

from normrt._kernels import elementwise as kernel
from normrt.onnx.elementwise_program import GRID_TABLE_OPCODE, compile_program, grid_table_split

UNARY = ["exp", "erf", "tanh", "sigmoid", "relu", "abs", "neg", "sqrt", "log", "reciprocal", "square", "round"]
BINARY = ["add", "sub", "mul", "div", "max", "min", "pow"]
GRIDS = {"uint8": (0.0, 255.0), "int8": (-128.0, 127.0), "uint4": (0.0, 15.0), "one": (3.0, 3.0)}


def assert_same_values(got, want):
    """NaN where the other has NaN, every other value bitwise (-0.0 included)."""
    np.testing.assert_array_equal(np.isnan(got), np.isnan(want))
    finite = ~np.isnan(want)
    np.testing.assert_array_equal(got[finite].view(np.uint32), want[finite].view(np.uint32))


def run(program, inputs, n, threads):
    out = np.empty(n, np.float32)
    with np.errstate(all="ignore"):
        kernel.run_program(program.code, program.constants, program.n_registers, inputs, out, threads,
                           program.grids)
    return out


@st.composite
def quantized_programs(draw):
    """(ops, args, constants, n_inputs): a head on the inputs ending in a fake_quant, then a tail
    of unary and binary ops on its result, constants and earlier tail results (more fake_quants
    among them), and sometimes a tail op that reads an input (no table then at that point)."""
    n_inputs = draw(st.integers(1, 2))
    lo, hi = GRIDS[draw(st.sampled_from(list(GRIDS)))]
    scale = draw(st.sampled_from([0.0173, 0.5, 3.0, 1e-3]))
    zero = float(draw(st.integers(int(lo), int(hi))))
    constants = [scale, zero, lo, hi] + [draw(st.sampled_from([0.5, 1.0, 1.4142135, -2.0, 0.044715, 3.0]))
                                         for _ in range(3)]
    grid, scalars = n_inputs, list(range(n_inputs + 4, n_inputs + 7))
    first = n_inputs + len(constants)
    ops, args = [], []
    if n_inputs == 2:
        ops, args = ["add"], [0, 1]
    ops.append("fake_quant")
    args += [first + len(ops) - 2 if n_inputs == 2 else 0, grid]
    reads_input = draw(st.booleans()) and draw(st.booleans())
    for _ in range(draw(st.integers(1, 6))):
        last = first + len(ops) - 1
        kind = draw(st.sampled_from(["unary", "binary", "fake_quant"]))
        if kind == "unary":
            ops.append(draw(st.sampled_from(UNARY)))
            args += [last, last]
        elif kind == "fake_quant":
            ops.append("fake_quant")
            args += [last, grid]
        else:
            ops.append(draw(st.sampled_from(BINARY)))
            other = draw(st.sampled_from(scalars + list(range(first + len(ops) - 2, last + 1))))
            args += draw(st.permutations([last, other]))
    if reads_input:
        ops.append("mul")
        args += [first + len(ops) - 2, 0]
    return ops, args, constants, n_inputs


def inputs_for(rng, n, n_inputs, scale):
    xs = []
    for _ in range(n_inputs):
        x = (rng.standard_normal(n) * scale * rng.choice([3, 60, 300])).astype(np.float32)
        special = [np.nan, np.inf, -np.inf, 0.0, -0.0, scale * 0.5, -scale * 2.5, 1e30, -1e30]
        for v in special:
            if n:
                x[rng.integers(n)] = v
        xs.append(x)
    return tuple(xs)


@settings(max_examples=150, deadline=None)
@given(quantized_programs(), st.sampled_from([1, 7, 16, 33, 255, 256, 257, 1000, 5000]), st.integers(1, 3),
       st.integers(0, 2**31 - 1))
def test_table_gives_the_programs_bits(program, n, threads, seed):
    ops, args, constants, n_inputs = program
    plain = compile_program(ops, args, constants, n_inputs)
    tabled = compile_program(ops, args, constants, n_inputs, tables=True)
    inputs = inputs_for(np.random.default_rng(seed), n, n_inputs, constants[0])
    want = run(plain, inputs, n, 1)
    got = run(tabled, inputs, n, threads)
    assert_same_values(got, want)


def qdq_gelu():
    """A static QDQ model's GELU as elementwise_chains writes it: x + bias on grids, then
    x / sqrt 2 -> erf -> + 1 -> * x -> * 0.5 with a fake_quant after each op."""
    g = [0.0173, 128.0, 0.0, 255.0]
    constants = g + [1.4142135, 1.0, 0.5]
    # values: 0 x, 1 bias, 2-5 the grid, 6 sqrt2, 7 one, 8 half, then results from 9
    ops = ["fake_quant", "add", "fake_quant", "div", "erf", "fake_quant", "add", "fake_quant", "mul",
           "fake_quant", "mul"]
    args = [0, 2, 9, 1, 10, 2, 11, 6, 12, 12, 13, 2, 14, 7, 15, 2, 16, 11, 17, 2, 18, 8]
    return ops, args, constants, 2


def test_qdq_gelu_tail_is_one_table():
    ops, args, constants, n_inputs = qdq_gelu()
    assert grid_table_split(ops, args, constants, n_inputs) == (2, list(range(3, 11)))
    program = compile_program(ops, args, constants, n_inputs, tables=True)
    assert program.code.reshape(-1, 4)[:, 0].tolist() == [24, 0, GRID_TABLE_OPCODE]
    rng = np.random.default_rng(0)
    x = (rng.standard_normal((64, 300)) * 2).astype(np.float32)
    bias = (rng.standard_normal(300) * 0.1).astype(np.float32)
    want = np.empty_like(x)
    plain = compile_program(ops, args, constants, n_inputs)
    kernel.run_program(plain.code, plain.constants, plain.n_registers, (x, bias), want, 1, plain.grids)
    for threads in (1, 2):
        got = np.empty_like(x)
        kernel.run_program(program.code, program.constants, program.n_registers, (x, bias), got, threads,
                           program.grids)
        assert_same_values(got, want)


def test_tail_reading_an_input_or_a_wide_grid_is_refused():
    g = [0.5, 0.0, 0.0, 255.0]
    # fake_quant(x0) -> erf -> mul(x1): the tail reads input 1
    assert grid_table_split(["fake_quant", "erf", "mul"], [0, 2, 6, 6, 7, 1], g, 2) is None
    # a 16-bit grid: 65536 codes
    wide = [0.5, 0.0, -32768.0, 32767.0]
    assert grid_table_split(["fake_quant", "erf", "exp"], [0, 1, 5, 5, 6, 6], wide, 1) is None
    # a tail cheaper than the table (one add)
    assert grid_table_split(["fake_quant", "add"], [0, 1, 5, 1], g, 1) is None
    # fake_quant last: nothing to tabulate
    assert grid_table_split(["erf", "fake_quant"], [0, 0, 5, 1], g, 1) is None


def test_kernel_checks_the_table_block():
    code = np.array([25, 1, 0, 0], np.int32)
    x = np.zeros(4, np.float32)
    out = np.empty(4, np.float32)
    none = np.zeros(0, np.float32)
    with pytest.raises(ValueError, match="outside grids"):
        kernel.run_program(code, none, 2, (x,), out, 1, np.zeros(3, np.float32))
    with pytest.raises(ValueError, match="at most 256 codes"):
        kernel.run_program(code, none, 2, (x,), out, 1, np.array([1.0, 0, 0, 1000], np.float32))
    with pytest.raises(ValueError, match="past the end"):
        kernel.run_program(code, none, 2, (x,), out, 1, np.array([1.0, 0, 0, 255, 1, 2], np.float32))

"""A normrt::Elementwise node's expression -> the register code of the fused elementwise kernel.

The node (domain.py) holds its expression as the pass wrote it: `ops` (names
from OPS), `args` (two operand numbers per op: inputs first, then the
`constants`, then the results of earlier ops; a unary op repeats its operand)
and `constants` (float32 scalars). The kernel (pyx/elementwise.pyx,
`run_program`) runs register code: (opcode, dst, a, b) per instruction over
tiles, registers numbered inputs, constants, then temporaries. This module
allocates the temporaries (a register is reused once its value is dead, so
long chains fit the kernel's register file) and is the one place the opcode
numbers are written down, beside the kernel's enum.
"""
import math
from collections import defaultdict
from functools import lru_cache

import numpy as np

from ..errors import ModelError

# name -> (opcode of pyx/elementwise.pyx, number of operands)
OPS = {
    "add": (0, 2), "sub": (1, 2), "mul": (2, 2), "div": (3, 2), "neg": (4, 1), "abs": (5, 1),
    "exp": (6, 1), "log": (7, 1), "sqrt": (8, 1), "reciprocal": (9, 1), "tanh": (10, 1), "erf": (11, 1),
    "sigmoid": (12, 1), "relu": (13, 1), "max": (14, 2), "min": (15, 2), "pow": (16, 2), "square": (17, 1),
    "copy": (18, 1), "silu": (19, 1), "silu_mul": (20, 2), "gelu": (21, 1), "gelu_tanh": (22, 1),
    "round": (23, 1), "fake_quant": (24, 2),
}
# fake_quant's second operand is the first of four consecutive constants: the grid's scale,
# zero point, lo and hi (normrt::FakeQuant's attributes); it computes
# (min(max(round(a / scale) + zero, lo), hi) - zero) * scale, the FakeQuant kernel's values.
# The kernel reads grids from their own table, not from registers (a QDQ GELU has ten grids:
# as constant registers they overflowed the register file)
GRID_CONSTANTS = 4
# nanoseconds per element of each op on one thread (a one-op program over 131,072 cached
# float32 elements, this 2-core EPYC; _thread_policy.elementwise_program splits by them)
_CHEAP = 0.13
OP_NS = {name: _CHEAP for name in OPS}
OP_NS.update({"sqrt": 0.18, "fake_quant": 0.18, "exp": 0.83, "log": 0.83, "erf": 0.72, "tanh": 0.70,
              "sigmoid": 0.55, "silu": 0.6, "silu_mul": 0.6, "gelu": 0.70, "gelu_tanh": 0.70, "pow": 10.0})
# compile_program's own op (never in a node's `ops`): a fake_quant and the rest of the program,
# which reads nothing but its result and constants, as a table of the grid's codes (grid_tables)
GRID_TABLE_OPCODE = 25
GRID_TABLE_NS = 0.25          # its cost: fake_quant's code, then a gather from a 1 KB table
MAX_TABLE_CODES = 256         # 8-bit grids (the kernel's limit)
MAX_INPUTS = 16       # the kernel's limits (pyx/elementwise.pyx)
MAX_REGISTERS = 48
MAX_INSTRUCTIONS = 256


class Program:
    """Register code for `run_program`: `code` (int32, 4 per instruction), `constants`
    (float32: the constant registers), `n_registers`, `n_inputs` the node's input count,
    `grids` (float32, four per fake_quant grid: an instruction's b operand is its grid's index;
    then the grid_table blocks, which their instruction's b operand finds by float offset)
    and `ns_per_element`, its estimated cost on one thread (OP_NS)."""

    __slots__ = ("code", "constants", "n_registers", "n_inputs", "grids", "ns_per_element")

    def __init__(self, code, constants, n_registers, n_inputs, grids=None, ns_per_element=_CHEAP):
        self.code, self.constants, self.n_registers, self.n_inputs = code, constants, n_registers, n_inputs
        self.grids = np.zeros(0, np.float32) if grids is None else grids
        self.ns_per_element = ns_per_element      # one thread's estimated cost (OP_NS)


def leaky_relu_select(alpha):
    """The op that turns (x, alpha x) into LeakyRelu(x) for alpha > 0: max for alpha <= 1, min
    above. Either gives x where x > 0 and alpha x elsewhere, the values of ONNX LeakyRelu's
    where(x > 0, x, alpha x) for any x: +-0 and NaN stay as they are, +-inf too (alpha 0 would
    make 0 * inf a NaN, hence alpha > 0)."""
    return "max" if alpha <= 1.0 else "min"


def operands(name, a, b):
    """The value numbers an op reads (one for a unary op; fake_quant's grid is no read value)."""
    return (a,) if OPS[name][1] == 1 or name == "fake_quant" else (a, b)


def fuse_silu(ops, args, first_result):
    """(ops, args) with SiLU and SwiGLU gates as one op each (their loads, stores and loop
    passes over a tile saved; each op rounds as the ops it replaces, so results are bitwise
    the same):

        v ─► sigmoid ─► s ─► mul(v, s) ─► m ─► mul(m, w)   ==>   silu_mul(v, w)
        v ─► sigmoid ─► s ─► mul(v, s)                     ==>   silu(v)

    s (and m) must have no other reader; operands in either order. `args` are already
    checked (compile_program); values are renumbered past the dropped ops."""
    ops, args = list(ops), list(args)
    uses = defaultdict(int)
    for k, name in enumerate(ops):
        for v in operands(name, args[2 * k], args[2 * k + 1]):
            uses[v] += 1
    made_by = {}                         # value -> op index, for op results
    dropped = set()
    for k, name in enumerate(ops):
        made_by[first_result + k] = k
        if name != "mul" or args[2 * k] == args[2 * k + 1]:
            continue
        for mine, other in ((args[2 * k], args[2 * k + 1]), (args[2 * k + 1], args[2 * k])):
            j = made_by.get(mine)
            if j is None or uses[mine] != 1:
                continue
            if ops[j] == "sigmoid" and args[2 * j] == other:
                ops[k], args[2 * k:2 * k + 2] = "silu", [other, other]
            elif ops[j] == "silu":
                ops[k], args[2 * k:2 * k + 2] = "silu_mul", [args[2 * j], other]
            else:
                continue
            dropped.add(j)
            break
    if not dropped:
        return ops, args
    new_id = {v: v for v in range(first_result)}
    out_ops, out_args = [], []
    for k, name in enumerate(ops):
        if k in dropped:
            continue
        new_id[first_result + k] = first_result + len(out_ops)
        out_ops.append(name)
        out_args += [new_id[args[2 * k]], new_id[args[2 * k + 1]]]
    return out_ops, out_args


# ---- expressions recognized by what they compute ----------------------------
#
# An exporter writes GELU as whatever the model's code spelled: 0.5 * x * (1 + erf(x / sqrt 2)),
# x * 0.5 * (1.0 + erf(x * 0.7071)), GPT-2's 0.5 * x * (1 + tanh(sqrt(2/pi) * (x + 0.044715 *
# x^3))) with pow, square or x * x * x... elementwise_chains gathers each into one program, and
# here a one-input program is compared with the functions below on probe points (in float64:
# what the program computes, its float32 constants as they are): one that agrees everywhere to
# float32's precision is that function, and runs as its one fused op (gelu_f: ~1 ulp; the
# tanh form as x sigmoid(2z): a few ulp) instead of 5-9 passes over each tile. A program that
# agrees only nearly (another constant, the other GELU) is not recognized.

def _erf(v):
    return np.vectorize(math.erf, otypes=[np.float64])(v)


RECOGNIZED = {
    "gelu": lambda x: 0.5 * x * (1.0 + _erf(x / math.sqrt(2.0))),
    "gelu_tanh": lambda x: 0.5 * x * (1.0 + np.tanh(math.sqrt(2.0 / math.pi) * (x + 0.044715 * x ** 3))),
}
# where the probes lie: dense over the functions' bend, then their tails, specials and extremes
_PROBES = np.concatenate([np.linspace(-8.0, 8.0, 1601), np.geomspace(1e-6, 1e3, 60), -np.geomspace(1e-6, 1e3, 60),
                          [0.0, -0.0, 30.0, -30.0, 1e4, -1e4, 1e30, -1e30, np.inf, -np.inf, np.nan]])
_EVAL64 = {
    "add": np.add, "sub": np.subtract, "mul": np.multiply, "div": np.divide, "neg": lambda a, b: -a,
    "abs": lambda a, b: np.abs(a), "exp": lambda a, b: np.exp(a), "log": lambda a, b: np.log(a),
    "sqrt": lambda a, b: np.sqrt(a), "reciprocal": lambda a, b: 1.0 / a, "tanh": lambda a, b: np.tanh(a),
    "erf": lambda a, b: _erf(a), "sigmoid": lambda a, b: 1.0 / (1.0 + np.exp(-a)),
    "relu": lambda a, b: np.where(a < 0, 0.0, a), "max": np.maximum, "min": np.minimum, "pow": np.power,
    "square": lambda a, b: a * a, "copy": lambda a, b: a, "silu": lambda a, b: a / (1.0 + np.exp(-a)),
    "silu_mul": lambda a, b: a / (1.0 + np.exp(-a)) * b,
    "gelu": lambda a, b: RECOGNIZED["gelu"](a), "gelu_tanh": lambda a, b: RECOGNIZED["gelu_tanh"](a),
    "round": lambda a, b: np.rint(a),
}
assert set(_EVAL64) | {"fake_quant"} == set(OPS)  # every op a recognizable program may hold can be probed


def _agree(got, want):
    """Equal to float32's precision on every probe: the same NaNs and infinities, the finite
    values within 2e-6 relative (1e-6 of |x| near a zero of the function)."""
    with np.errstate(all="ignore"):
        if not np.array_equal(np.isnan(got), np.isnan(want)) or not np.array_equal(np.isinf(got), np.isinf(want)):
            return False
        inf = np.isinf(want)
        if not np.array_equal(got[inf], want[inf]):
            return False
        fin = np.isfinite(want)
        tol = 2e-6 * np.abs(want[fin]) + 1e-6 * np.minimum(np.abs(_PROBES[fin]), 1.0) * 1e-6
        return bool(np.all(np.abs(got[fin] - want[fin]) <= tol))


@lru_cache(maxsize=256)
def recognize(ops, args, constants, n_inputs):
    """The name of the RECOGNIZED function a one-input program computes, or None. `ops`, `args`
    and `constants` as compile_program takes them, as tuples (a model's repeated layers are
    probed once). Only programs that could be one: one input, an erf or tanh among 4+ ops."""
    if n_inputs != 1 or len(ops) < 4 or not ({"erf", "tanh"} & set(ops)) or "fake_quant" in ops:
        return None         # (a quantized step inside makes it no smooth function)
    first_result = 1 + len(constants)
    vals = [_PROBES] + [np.full_like(_PROBES, c) for c in np.asarray(constants, np.float32).astype(np.float64)]
    with np.errstate(all="ignore"):
        for k, name in enumerate(ops):
            a, b = vals[args[2 * k]], vals[args[2 * k + 1]]
            vals.append(np.asarray(_EVAL64[name](a, b), np.float64))
        got = vals[first_result + len(ops) - 1]
        for fname, fn in RECOGNIZED.items():
            if _agree(got, fn(_PROBES)):
                return fname
    return None


# ---- grid tables --------------------------------------------------------------
#
# A static QDQ model fake-quantizes after every op, so its GELU is one program of eleven ops:
#
#     x ─► fake_quant ─► add(bias) ─► fake_quant ─► r ─► div(√2) ─► erf ─► fake_quant ─► add(1)
#       ─► fake_quant ─► mul(r) ─► fake_quant ─► mul(0.5) ─► y
#
# From r on, the program reads nothing but r and constants, and r holds one of at most 256
# values (its grid's codes): y is a function of r's code. So the fake_quant making r and all
# that follows it become one grid_table op: r's code (fake_quant's own arithmetic), then a
# table of the tail's value at each code's grid value, computed once here by the kernel
# itself on those values - the same per-element instructions, so the same bits as the
# program computed element by element (a NaN, which fake_quant passes, has its own entry).
# Refused: grids of more than 256 codes; tails that read an input or an earlier op's result;
# tails cheaper than the table's own cost.

def _needed(ops, args, first_result):
    """Op indices the last op's result depends on (itself included)."""
    need, stack = {len(ops) - 1}, [len(ops) - 1]
    while stack:
        k = stack.pop()
        for v in operands(ops[k], args[2 * k], args[2 * k + 1]):
            j = v - first_result
            if j >= 0 and j not in need:
                need.add(j)
                stack.append(j)
    return need


def grid_table_split(ops, args, constants, n_inputs):
    """(k, tail op indices) for the earliest fake_quant k whose result alone (with constants)
    determines the program's result through a tail worth a table, or None."""
    constants = np.asarray(constants, np.float32).reshape(-1)
    first_result = n_inputs + len(constants)
    need = _needed(ops, args, first_result)
    for k in sorted(need):
        if ops[k] != "fake_quant":
            continue
        tail = sorted(j for j in need if j > k)
        if not tail or sum(OP_NS[ops[j]] for j in tail) + OP_NS["fake_quant"] < 2 * GRID_TABLE_NS:
            continue
        own = {first_result + k} | {first_result + j for j in tail}
        if any(not (n_inputs <= v < first_result or v in own)
               for j in tail for v in operands(ops[j], args[2 * j], args[2 * j + 1])):
            continue
        c = args[2 * k + 1] - n_inputs
        scale, _, lo, hi = (float(v) for v in constants[c:c + GRID_CONSTANTS])
        if scale > 0 and lo == int(lo) and hi == int(hi) and 0 <= hi - lo < MAX_TABLE_CODES:
            return k, tail
    return None


def _grid_table(ops, args, constants, n_inputs, k, tail):
    """The grid_table block of fake_quant k and its tail: (scale, zero, lo, hi), the tail's
    value at each code's grid value (fake_quant's (code - zero) * scale in float32), NaN's."""
    from .._kernels import elementwise as _kelementwise
    constants = np.asarray(constants, np.float32).reshape(-1)
    first_result = n_inputs + len(constants)
    c = args[2 * k + 1] - n_inputs
    grid = constants[c:c + GRID_CONSTANTS]
    scale, zero, lo, hi = grid
    codes = np.arange(int(lo), int(hi) + 1).astype(np.float32)
    values = np.append((codes - zero) * scale, np.float32(np.nan)).astype(np.float32)
    # the tail as its own one-input program: input 0 is fake_quant k's result
    renumber = {first_result + k: 0}
    renumber.update({v: v - n_inputs + 1 for v in range(n_inputs, first_result)})
    t_ops, t_args = [], []
    for j in tail:
        t_ops.append(ops[j])
        a, b = args[2 * j], args[2 * j + 1]
        t_args += [renumber[a], b - n_inputs + 1 if ops[j] == "fake_quant" else renumber[b]]
        renumber[first_result + j] = 1 + len(constants) + len(t_ops) - 1
    program = compile_program(t_ops, t_args, constants, 1, recognize_functions=False)
    table = np.empty_like(values)
    with np.errstate(all="ignore"):
        _kelementwise.run_program(program.code, program.constants, program.n_registers, (values,), table, 1,
                                  program.grids)
    return np.concatenate([grid, table]).astype(np.float32)


def compile_program(ops, args, constants, n_inputs, where="normrt Elementwise", *, tables=False,
                    recognize_functions=True):
    """The Program of an expression (see the module docstring); ModelError naming `where`
    for an expression the kernel cannot run. `tables`: a fake_quant and the tail that reads only
    its result as one grid_table op (see grid tables; the executor's programs, not a pass's
    check). `recognize_functions`: one-input programs that compute GELU as its fused op."""
    ops = [o.decode() if isinstance(o, bytes) else str(o) for o in ops]
    args = [int(a) for a in args]
    n_const = len(constants)
    n_ops = len(ops)
    if not ops:
        raise ModelError(f"{where}: 'ops' is empty")
    unknown = sorted({o for o in ops if o not in OPS})
    if unknown:
        raise ModelError(f"{where}: unknown op(s) {unknown} in 'ops'; known: {sorted(OPS)}")
    if len(args) != 2 * n_ops:
        raise ModelError(f"{where}: 'args' must hold 2 operands per op ({2 * n_ops}), got {len(args)}")
    if n_inputs > MAX_INPUTS:
        raise ModelError(f"{where}: {n_inputs} inputs, the kernel takes at most {MAX_INPUTS}")
    if n_ops > MAX_INSTRUCTIONS:
        raise ModelError(f"{where}: {n_ops} ops, the kernel takes at most {MAX_INSTRUCTIONS}")
    first_result = n_inputs + n_const
    if recognize_functions and all(0 <= a < first_result + k // 2 for k, a in enumerate(args)):
        known = recognize(tuple(ops), tuple(args), tuple(float(c) for c in np.asarray(constants).reshape(-1)),
                          n_inputs)
        if known is not None:
            ops, args = [known], [0, 0]
    ops, args = fuse_silu(ops, args, first_result)
    table_blocks = []
    split = grid_table_split(ops, args, constants, n_inputs) if tables and "fake_quant" in ops \
        and all(0 <= a < first_result + k // 2 for k, a in enumerate(args)) else None
    if split is not None:
        k, tail = split
        table_blocks.append(_grid_table(ops, args, constants, n_inputs, k, tail))
        # the head (what makes fake_quant k's input), then the table op in place of k and its tail
        ops, args = ops[:k] + ["grid_table"], args[:2 * k] + [args[2 * k], 0]
    last_use, grid_of, grids = {}, {}, {}
    for k, name in enumerate(ops):
        if name == "grid_table":
            last_use[args[2 * k]] = k
            continue
        for v in operands(name, args[2 * k], args[2 * k + 1]):
            if not 0 <= v < first_result + k:
                raise ModelError(f"{where}: op {k} ({name}) reads value {v}, which is not an input, "
                                 f"a constant or an earlier op's result (0..{first_result - 1 + k})")
            last_use[v] = k
        if name == "fake_quant":
            c = args[2 * k + 1] - n_inputs
            if not 0 <= c <= n_const - GRID_CONSTANTS:
                raise ModelError(f"{where}: op {k} (fake_quant) reads its grid from value {args[2 * k + 1]}: "
                                 f"it must be the first of {GRID_CONSTANTS} constants")
            block = tuple(float(v) for v in np.asarray(constants, np.float32).reshape(-1)[c:c + GRID_CONSTANTS])
            grid_of[k] = grids.setdefault(block, len(grids))
    # registers: the inputs, the constants some op reads as a value, then temporaries (a free
    # list: a register returns to it after its value's last reader)
    kept = sorted(v for v in last_use if n_inputs <= v < first_result)
    reg = {v: v for v in range(n_inputs)}
    reg.update({v: n_inputs + i for i, v in enumerate(kept)})
    free, code = [], []
    n_registers = n_inputs + len(kept)
    table_at = GRID_CONSTANTS * len(grids)        # the table blocks follow the fake_quant grids
    for k, name in enumerate(ops):
        reads = (args[2 * k],) if name == "grid_table" else operands(name, args[2 * k], args[2 * k + 1])
        src = [reg[v] for v in reads]
        for v in set(reads):
            if v >= first_result and last_use[v] == k:
                free.append(reg[v])     # dead after this op: the result may overwrite it in place
        if free:
            dst = free.pop()
        else:
            dst = n_registers
            n_registers += 1
        reg[first_result + k] = dst
        if name == "grid_table":
            code.append((GRID_TABLE_OPCODE, dst, src[0], table_at))
        else:
            code.append((OPS[name][0], dst, src[0], grid_of[k] if name == "fake_quant" else src[-1]))
    if n_registers > MAX_REGISTERS:
        raise ModelError(f"{where}: the expression needs {n_registers} registers, the kernel has {MAX_REGISTERS}")
    values = np.asarray(constants, np.float32).reshape(-1)
    grid_values = np.asarray([x for block in grids for x in block], np.float32)
    return Program(np.asarray(code, np.int32).reshape(-1), values[[v - n_inputs for v in kept]].copy(),
                   n_registers, n_inputs, np.concatenate([grid_values] + table_blocks).astype(np.float32),
                   sum(GRID_TABLE_NS if name == "grid_table" else OP_NS[name] for name in ops))

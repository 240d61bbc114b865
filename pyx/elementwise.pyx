"""Big same-shape binary arithmetic (Add, Sub, Mul, Div) on the kernels' thread team.

numpy's ufuncs run on the calling thread only; a graph's residual adds over
millions of elements are memory-bound passes the second core halves. Each
element is one IEEE operation, exactly numpy's, so results are bitwise equal
to numpy for any thread count.
"""
from cython.parallel cimport prange

ctypedef fused real:
    float
    double

cdef enum:
    PIECE = 16384           # elements per work item
    OP_ADD = 0
    OP_SUB = 1
    OP_MUL = 2
    OP_DIV = 3


def binary(int op,
           const real[::1] a,       # IN  (n,)
           const real[::1] b,       # IN  (n,)
           real[::1] out,           # OUT (n,); may be a or b itself
           int n_threads):
    """out = a (+ - * /) b, elementwise; op 0 add, 1 sub, 2 mul, 3 div."""
    cdef Py_ssize_t n = a.shape[0], p, i, start, stop
    if b.shape[0] != n or out.shape[0] != n:
        raise ValueError("a, b and out must have the same length")
    if op < OP_ADD or op > OP_DIV:
        raise ValueError(f"op must be 0..3, got {op}")
    for p in prange((n + PIECE - 1) // PIECE, nogil=True, schedule="static", num_threads=n_threads):
        start = p * PIECE
        stop = min(start + PIECE, n)
        if op == OP_ADD:
            for i in range(start, stop):
                out[i] = a[i] + b[i]
        elif op == OP_SUB:
            for i in range(start, stop):
                out[i] = a[i] - b[i]
        elif op == OP_MUL:
            for i in range(start, stop):
                out[i] = a[i] * b[i]
        else:
            for i in range(start, stop):
                out[i] = a[i] / b[i]


# ---------------------------------------------------------------------------
# Fused elementwise programs: a DAG of float32 elementwise ops (the
# normrt::Elementwise node) in one pass over memory.
#
# The program is register code: each instruction (opcode, dst, a, b) computes
# one tile of register dst from registers a and b. Registers 0..n_in-1 are the
# inputs, the next n_const the constants, the rest temporaries. The output is
# the last instruction's dst. The output is walked in tiles of TILE elements
# along its (coalesced) last axis: an input whose last-axis stride is 1 is
# read in place, a broadcast or strided one is copied into its register's
# scratch, and the last instruction writes straight into the output. Each
# element is computed by the same per-element code whichever thread runs its
# tile, so results are identical for any thread count.
# ---------------------------------------------------------------------------
from cpython.buffer cimport PyObject_GetBuffer, PyBuffer_Release, PyBUF_RECORDS_RO, PyBUF_WRITABLE
from libc.math cimport fabsf, logf, sqrtf, powf, copysignf
from libc.string cimport memcpy, memset

from moments cimport exp_f, erf_f, gelu_f, sigmoid_f, gelu_tanh_f, tanh_f

cdef extern from "quant_grid.h":
    void nrt_q_dynamic_grid(const float* x, Py_ssize_t n, float* scale, float* zero) noexcept nogil
    # d[:n] = table[code of a on the grid]: compile_program's grid tables (quant_grid.h)
    void grid_table_run "nrt_q_grid_table"(float* d, const float* a, const float* block, Py_ssize_t n) noexcept nogil

cdef enum:
    TILE = 256              # elements per tile and register
    MAX_REGS = 48           # registers (inputs, constants, temporaries) a program may use
    MAX_INPUTS = 16
    MAX_DIMS = 8
    MAX_INSTR = 256
    MIN_ITEMS_PER_THREAD = 8

# opcodes: normrt.onnx.elementwise_program.OPCODES holds the same table
cdef enum:
    EW_ADD = 0
    EW_SUB = 1
    EW_MUL = 2
    EW_DIV = 3
    EW_NEG = 4
    EW_ABS = 5
    EW_EXP = 6
    EW_LOG = 7
    EW_SQRT = 8
    EW_RECIPROCAL = 9
    EW_TANH = 10
    EW_ERF = 11
    EW_SIGMOID = 12
    EW_RELU = 13
    EW_MAX = 14
    EW_MIN = 15
    EW_POW = 16
    EW_SQUARE = 17
    EW_COPY = 18
    EW_SILU = 19            # a * sigmoid(a): the compiler's fusion of Sigmoid + Mul
    EW_SILU_MUL = 20        # (a * sigmoid(a)) * b: a SwiGLU gate, SiLU(g) * u
    EW_GELU = 21            # a Phi(a): a one-input expression recognized as GELU (erf form)
    EW_GELU_TANH = 22       # GELU's tanh approximation, recognized likewise
    EW_ROUND = 23           # round half to even (ONNX Round, numpy rint)
    EW_FAKE_QUANT = 24      # a on grid number b of the program's grids (fake_quant_run)
    EW_GRID_TABLE = 25      # table[code of a on a grid]: the block at float offset b of grids (grid_table_run)
    N_OPCODES = 26
    MAX_TABLE_CODES = 256   # an 8-bit grid's codes

cdef struct Source:
    const float* data
    Py_ssize_t strides[MAX_DIMS]      # elements, over the coalesced output axes; 0: broadcast
    bint flat                         # laid out as the output (C-contiguous, no broadcast)

cdef struct Program:
    const int* code
    int n_instr
    int n_in
    int n_const
    int n_regs
    const float* consts
    const float* grids                # fake_quant's grids: (scale, zero, lo, hi) each
    int ndim                          # coalesced output axes (>= 1)
    Py_ssize_t shape[MAX_DIMS]
    Source src[MAX_INPUTS]
    float* out
    Py_ssize_t tiles_per_row
    Py_ssize_t rows_per_item          # > 1: an item is that many whole short rows (run_row_groups)
    Py_ssize_t n_rows
    Py_ssize_t n_items


cdef inline float exp_inf_f(float x) noexcept nogil:
    """e**x for float32 up to FLT_MAX, inf above. exp_f clamps its argument at 88.376
    (Cephes' MAXLOGF): above 88, exp(x/2)**2 (x/2 is exact; 2 ulp), which also
    overflows to inf where IEEE and numpy do. NaN stays NaN."""
    cdef float h = exp_f(x * <float>0.5)
    cdef float r = exp_f(x)
    return h * h if x > <float>88.0 else r


cdef inline float round_even_f(float x) noexcept nogil:
    """x rounded to the nearest integer, ties to even (rintf in the default rounding mode),
    branch-free: below 2^23 in magnitude, adding and subtracting 2^23 leaves the rounded
    magnitude (the addition rounds to an integer, ties to even); from 2^23 on a float is an
    integer already. The sign is put back, so -0.3 gives -0.0. NaN and +-inf stay."""
    cdef float a = fabsf(x)
    cdef float r = copysignf((a + <float>8388608.0) - <float>8388608.0, x)
    return r if a < <float>8388608.0 else x


cdef inline float max_f(float a, float b) noexcept nogil:
    # NaN in either operand gives NaN (numpy's maximum)
    cdef float r = a if a > b else b
    return a if a != a else r


cdef inline float min_f(float a, float b) noexcept nogil:
    cdef float r = a if a < b else b
    return a if a != a else r


cdef inline void fake_quant_run(float* d, const float* a, const float* grid, Py_ssize_t n) noexcept nogil:
    """d[:n] = (min(max(round(a / scale) + zero, lo), hi) - zero) * scale, grid = (scale, zero, lo,
    hi): the one loop of the FakeQuant kernel below and of the programs' fake_quant op. Plain
    selects: a NaN passes through (the QDQ pair gives some integer for it, the spec none)."""
    cdef float scale = grid[0], zero = grid[1], lo = grid[2], hi = grid[3], v
    cdef Py_ssize_t j
    for j in range(n):
        v = round_even_f(a[j] / scale) + zero
        v = lo if v < lo else v
        v = hi if v > hi else v
        d[j] = (v - zero) * scale


def fake_quant(const float[::1] x,     # IN  (n,)
               float[::1] out,         # OUT (n,); may be x itself
               float scale, float zero, float lo, float hi, int n_threads):
    """out = (min(max(round(x / scale) + zero, lo), hi) - zero) * scale: x on an integer grid
    and back (QuantizeLinear -> DequantizeLinear with a per-tensor scale and zero point, lo and
    hi the integer type's range), one pass, rounding half to even. Every step after the division
    is exact in float32 (integers below 2^24), so this is the pair's values bitwise."""
    cdef Py_ssize_t n = x.shape[0], p, start
    cdef float grid[4]
    if out.shape[0] != n:
        raise ValueError("out must have x's length")
    if n == 0:
        return
    grid[0], grid[1], grid[2], grid[3] = scale, zero, lo, hi
    if n_threads <= 1 or n <= PIECE:
        with nogil:       # no parallel region to enter (~1 us, most of a small call)
            fake_quant_run(&out[0], &x[0], grid, n)
        return
    for p in prange((n + PIECE - 1) // PIECE, nogil=True, schedule="static", num_threads=n_threads):
        start = p * PIECE
        fake_quant_run(&out[start], &x[start], grid, min(<Py_ssize_t>PIECE, n - start))




def dynamic_fake_quant(const float[::1] x,     # IN  (n,)
                       float[::1] out,         # OUT (n,); may be x itself
                       int n_threads):
    """out = DequantizeLinear(DynamicQuantizeLinear(x)): x's own uint8 grid (the range [min(x, 0),
    max(x, 0)] onto 0..255, quant_grid.h, ops.quantize.dynamic_range's arithmetic), then the
    FakeQuant pass on it; returns (scale, zero point). One call where numpy's min, max and
    scalar arithmetic took ~5 us of a small model's activation (quantize_dynamic puts one before
    every Linear). A scale of 0 (a range narrower than the subnormals) maps x > 0 to code 255 and
    the rest (x / 0 = -inf, or NaN for 0) to 0: every output is (code - zero) * 0, a signed zero."""
    cdef Py_ssize_t n = x.shape[0], p, start, j
    cdef float grid[4]
    if out.shape[0] != n:
        raise ValueError("out must have x's length")
    with nogil:
        nrt_q_dynamic_grid(&x[0] if n else NULL, n, &grid[0], &grid[1])
    grid[2], grid[3] = 0.0, 255.0
    if n == 0:
        return grid[0], grid[1]
    if grid[0] == 0.0:
        with nogil:
            for j in range(n):
                out[j] = (<float>(255.0 if x[j] > 0 else 0.0) - grid[1]) * 0.0
        return grid[0], grid[1]
    if n_threads <= 1 or n <= PIECE:
        with nogil:
            fake_quant_run(&out[0], &x[0], grid, n)
    else:
        for p in prange((n + PIECE - 1) // PIECE, nogil=True, schedule="static", num_threads=n_threads):
            start = p * PIECE
            fake_quant_run(&out[start], &x[start], grid, min(<Py_ssize_t>PIECE, n - start))
    return grid[0], grid[1]


cdef void run_instr(int op, float* d, const float* a, const float* b, Py_ssize_t n) noexcept nogil:
    """d[:n] = op(a[:n], b[:n]): one vectorizable loop per opcode."""
    cdef Py_ssize_t j
    if op == EW_ADD:
        for j in range(n):
            d[j] = a[j] + b[j]
    elif op == EW_SUB:
        for j in range(n):
            d[j] = a[j] - b[j]
    elif op == EW_MUL:
        for j in range(n):
            d[j] = a[j] * b[j]
    elif op == EW_DIV:
        for j in range(n):
            d[j] = a[j] / b[j]
    elif op == EW_NEG:
        for j in range(n):
            d[j] = -a[j]
    elif op == EW_ABS:
        for j in range(n):
            d[j] = fabsf(a[j])
    elif op == EW_EXP:
        for j in range(n):
            d[j] = exp_inf_f(a[j])
    elif op == EW_LOG:
        for j in range(n):
            d[j] = logf(a[j])
    elif op == EW_SQRT:
        for j in range(n):
            d[j] = sqrtf(a[j])
    elif op == EW_RECIPROCAL:
        for j in range(n):
            d[j] = <float>1.0 / a[j]
    elif op == EW_TANH:
        for j in range(n):
            d[j] = tanh_f(a[j])
    elif op == EW_ERF:
        for j in range(n):
            d[j] = erf_f(a[j])
    elif op == EW_SIGMOID:
        for j in range(n):
            d[j] = sigmoid_f(a[j])
    elif op == EW_RELU:
        for j in range(n):
            d[j] = <float>0.0 if a[j] < <float>0.0 else a[j]     # NaN stays NaN
    elif op == EW_MAX:
        for j in range(n):
            d[j] = max_f(a[j], b[j])
    elif op == EW_MIN:
        for j in range(n):
            d[j] = min_f(a[j], b[j])
    elif op == EW_POW:
        for j in range(n):
            d[j] = powf(a[j], b[j])
    elif op == EW_SQUARE:
        for j in range(n):
            d[j] = a[j] * a[j]
    elif op == EW_SILU:     # the products of the unfused ops, same rounding: bitwise their result
        for j in range(n):
            d[j] = a[j] * sigmoid_f(a[j])
    elif op == EW_SILU_MUL:
        for j in range(n):
            d[j] = (a[j] * sigmoid_f(a[j])) * b[j]
    elif op == EW_GELU:
        for j in range(n):
            d[j] = gelu_f(a[j])
    elif op == EW_GELU_TANH:
        for j in range(n):
            d[j] = gelu_tanh_f(a[j])
    elif op == EW_ROUND:
        for j in range(n):
            d[j] = round_even_f(a[j])
    else:   # EW_COPY
        for j in range(n):
            d[j] = a[j]


cdef inline void fill_constants(const Program* p, float* scratch) noexcept nogil:
    """The constant registers: each a tile of its value (a thread's scratch, filled once)."""
    cdef int k
    cdef Py_ssize_t j
    for k in range(p.n_const):
        for j in range(TILE):
            scratch[(p.n_in + k) * TILE + j] = p.consts[k]


cdef inline void run_code(const Program* p, float** reg, Py_ssize_t n) noexcept nogil:
    """The program's instructions, in order, over the first n elements of the registers."""
    cdef int k
    for k in range(p.n_instr):
        if p.code[4 * k] == EW_FAKE_QUANT:
            # its b operand is a grid's index, not a register (compile_program)
            fake_quant_run(reg[p.code[4 * k + 1]], reg[p.code[4 * k + 2]], p.grids + 4 * p.code[4 * k + 3], n)
        elif p.code[4 * k] == EW_GRID_TABLE:
            # b: the float offset of its grid and table in grids
            grid_table_run(reg[p.code[4 * k + 1]], reg[p.code[4 * k + 2]], p.grids + p.code[4 * k + 3], n)
        else:
            run_instr(p.code[4 * k], reg[p.code[4 * k + 1]], reg[p.code[4 * k + 2]], reg[p.code[4 * k + 3]], n)


cdef void run_items(const Program* p, Py_ssize_t first, Py_ssize_t last) noexcept nogil:
    """Tiles first..last-1 of the output (row-major: row, then tile within the row)."""
    cdef float scratch[MAX_REGS * TILE]
    cdef float* reg[MAX_REGS]
    cdef Py_ssize_t item, row, rem, j0, n, off, j, st
    cdef Py_ssize_t inner = p.shape[p.ndim - 1]
    cdef int i, d, r
    cdef const float* s
    cdef float* dst
    cdef int result = p.code[4 * (p.n_instr - 1) + 1]
    fill_constants(p, scratch)
    for item in range(first, last):
        row = item // p.tiles_per_row
        j0 = (item - row * p.tiles_per_row) * TILE
        n = min(<Py_ssize_t>TILE, inner - j0)
        for r in range(p.n_regs):
            reg[r] = &scratch[r * TILE]
        for i in range(p.n_in):
            # the row's offset in input i: unravel row over the outer axes
            off = 0
            rem = row
            for d in range(p.ndim - 2, -1, -1):
                off += (rem % p.shape[d]) * p.src[i].strides[d]
                rem = rem // p.shape[d]
            st = p.src[i].strides[p.ndim - 1]
            s = p.src[i].data + off + j0 * st
            if st == 1:
                reg[i] = <float*>s        # read in place (inputs are never written)
            elif st == 0:
                for j in range(n):
                    scratch[i * TILE + j] = s[0]
            else:
                for j in range(n):
                    scratch[i * TILE + j] = s[j * st]
        reg[result] = p.out + row * inner + j0
        run_code(p, reg, n)


cdef void run_row_groups(const Program* p, Py_ssize_t first, Py_ssize_t last) noexcept nogil:
    """Items first..last-1 when rows are short (p.rows_per_item > 1): an item is up to
    rows_per_item consecutive whole rows of the output (in its row-major order, across the
    outer axes), so one pass of the instructions covers them all: per-row dispatch cost most of
    the time on rotary's rows of 32. An input whose rows of the item follow each other in
    memory is read in place; the others' rows are copied into its scratch register one by one,
    their offsets stepped row by row. Every element's arithmetic is run_items': only the
    grouping differs."""
    cdef float scratch[MAX_REGS * TILE]
    cdef float* reg[MAX_REGS]
    cdef Py_ssize_t idx[MAX_DIMS]
    cdef Py_ssize_t idx0[MAX_DIMS]          # the item's first row's index over the outer axes
    cdef Py_ssize_t inner = p.shape[p.ndim - 1]
    cdef Py_ssize_t n_rows = p.n_rows
    cdef Py_ssize_t item, row0, rem, m, count, off, base, j, rr, st
    cdef int i, d, r, pass_, outer_axes = p.ndim - 1
    cdef bint in_place
    cdef const float* s
    cdef float* dst
    cdef int result = p.code[4 * (p.n_instr - 1) + 1]
    fill_constants(p, scratch)
    for item in range(first, last):
        row0 = item * p.rows_per_item
        m = min(p.rows_per_item, n_rows - row0)
        count = m * inner
        for r in range(p.n_regs):
            reg[r] = &scratch[r * TILE]
        rem = row0
        for d in range(outer_axes - 1, -1, -1):
            idx0[d] = rem % p.shape[d]
            rem = rem // p.shape[d]
        for i in range(p.n_in):
            st = p.src[i].strides[outer_axes]
            if p.src[i].flat:
                reg[i] = <float*>(p.src[i].data + row0 * inner)     # read in place
                continue
            # rows that follow each other in this input too (a broadcast over an axis the group
            # does not cross: rotary's cos/sin over the heads) are read in place as well
            base = 0
            for d in range(outer_axes):
                base += idx0[d] * p.src[i].strides[d]
            in_place = st == 1
            for pass_ in range(0 if in_place else 1, 2):     # 0: check, 1: gather
                for d in range(outer_axes):
                    idx[d] = idx0[d]
                for rr in range(m):
                    off = 0
                    for d in range(outer_axes):
                        off += idx[d] * p.src[i].strides[d]
                    if pass_ == 0:
                        if off != base + rr * inner:
                            in_place = False
                            break
                    else:
                        s = p.src[i].data + off
                        dst = &scratch[i * TILE + rr * inner]
                        if st == 1:
                            for j in range(inner):
                                dst[j] = s[j]
                        elif st == 0:
                            for j in range(inner):
                                dst[j] = s[0]
                        else:
                            for j in range(inner):
                                dst[j] = s[j * st]
                    d = outer_axes - 1              # the next row's index
                    while d >= 0:
                        idx[d] += 1
                        if idx[d] < p.shape[d]:
                            break
                        idx[d] = 0
                        d -= 1
                if in_place:
                    reg[i] = <float*>(p.src[i].data + base)
                    break
        reg[result] = p.out + row0 * inner
        run_code(p, reg, count)


cdef void run_part(const Program* p, Py_ssize_t first, Py_ssize_t last) noexcept nogil:
    if p.rows_per_item > 1:
        run_row_groups(p, first, last)
    else:
        run_items(p, first, last)


cdef check_table_block(const float[::1] grids, Py_ssize_t at, int k):
    """A grid_table instruction's block: (scale, zero, lo, hi) of an 8-bit grid at float offset
    `at` of grids, then hi - lo + 2 table entries inside grids (the kernel indexes it unchecked)."""
    cdef float lo, hi
    if grids is None or at < 0 or at + 4 > grids.shape[0]:
        raise ValueError(f"code: instruction {k} (grid_table) reads a block at offset {at} outside grids")
    lo, hi = grids[at + 2], grids[at + 3]
    if not (lo == <int>lo and hi == <int>hi and 0 <= hi - lo < MAX_TABLE_CODES and grids[at] > 0):
        raise ValueError(f"code: instruction {k} (grid_table) has grid (scale {grids[at]}, lo {lo}, hi {hi}): "
                         f"expected a positive scale and integer bounds at most {MAX_TABLE_CODES} codes apart")
    if at + 4 + <Py_ssize_t>(hi - lo) + 2 > grids.shape[0]:
        raise ValueError(f"code: instruction {k} (grid_table) has a table past the end of grids")


def run_program(const int[::1] code,        # IN  (4 * n_instr,): opcode, dst, a, b per instruction
                const float[::1] consts,    # IN  (n_const,): the constant registers' values
                int n_regs,                 # registers: inputs, constants, then temporaries
                tuple inputs,               # IN  float32 arrays, broadcastable to out's shape
                out,                        # OUT float32 C-contiguous array of the broadcast shape
                int n_threads,
                const float[::1] grids=None):   # IN  4 floats per fake_quant grid (scale, zero, lo, hi),
                                                #     then grid_table blocks (grid, table, NaN's value)
    """out = the program's result over the broadcast of `inputs` (see the section comment)."""
    cdef Program p
    cdef Py_buffer views[MAX_INPUTS]
    cdef Py_buffer out_view
    cdef int n_in = len(inputs), n_got = 0, i, k, d, dd, nd, rank
    cdef Py_ssize_t shape[MAX_DIMS]
    cdef Py_ssize_t strides[MAX_INPUTS + 1][MAX_DIMS]
    cdef Py_ssize_t size, per, t0, t1, run
    cdef bint merge
    if n_in > MAX_INPUTS:
        raise ValueError(f"inputs: at most {MAX_INPUTS} arrays, got {n_in}")
    if code.shape[0] == 0 or code.shape[0] % 4 or code.shape[0] // 4 > MAX_INSTR:
        raise ValueError(f"code: 4 ints per instruction, 1 to {MAX_INSTR} instructions, got {code.shape[0]} ints")
    if n_regs > MAX_REGS or n_regs < n_in + consts.shape[0]:
        raise ValueError(f"n_regs must cover the inputs and constants and be at most {MAX_REGS}, got {n_regs}")
    for k in range(code.shape[0] // 4):
        if not 0 <= code[4 * k] < N_OPCODES:
            raise ValueError(f"code: instruction {k} has opcode {code[4 * k]}, expected 0..{N_OPCODES - 1}")
        if not n_in + consts.shape[0] <= code[4 * k + 1] < n_regs:
            raise ValueError(f"code: instruction {k} writes register {code[4 * k + 1]}, not a temporary")
        if not (0 <= code[4 * k + 2] < n_regs and (code[4 * k] in (EW_FAKE_QUANT, EW_GRID_TABLE)
                                                   or 0 <= code[4 * k + 3] < n_regs)):
            raise ValueError(f"code: instruction {k} reads a register outside 0..{n_regs - 1}")
        if code[4 * k] == EW_GRID_TABLE:
            check_table_block(grids, code[4 * k + 3], k)
        if code[4 * k] == EW_FAKE_QUANT and not (
                grids is not None and 0 <= code[4 * k + 3] and 4 * code[4 * k + 3] + 4 <= grids.shape[0]):
            raise ValueError(f"code: instruction {k} (fake_quant) reads grid {code[4 * k + 3]}, which grids "
                             f"(4 floats each) does not hold")
    try:
        for i in range(n_in):
            PyObject_GetBuffer(inputs[i], &views[i], PyBUF_RECORDS_RO)
            n_got += 1
            if views[i].itemsize != 4 or views[i].format is NULL or views[i].format[0] != b"f" \
                    or views[i].format[1] != 0:
                raise ValueError(f"inputs[{i}] must be float32")
            if views[i].ndim > MAX_DIMS:
                raise ValueError(f"inputs[{i}] has {views[i].ndim} axes, at most {MAX_DIMS}")
        PyObject_GetBuffer(out, &out_view, PyBUF_RECORDS_RO | PyBUF_WRITABLE)
        try:
            if out_view.itemsize != 4 or out_view.format is NULL or out_view.format[0] != b"f" \
                    or out_view.format[1] != 0:
                raise ValueError("out must be float32")
            rank = out_view.ndim
            if rank > MAX_DIMS:
                raise ValueError(f"out has {rank} axes, at most {MAX_DIMS}")
            size = 1
            for d in range(rank):
                shape[d] = out_view.shape[d]
                size *= shape[d]
            # out C-contiguous: its strides follow from its shape
            dd = 4
            for d in range(rank - 1, -1, -1):
                if shape[d] > 1 and out_view.strides[d] != dd:
                    raise ValueError("out must be C-contiguous")
                dd *= shape[d]
            # each input aligned to out's trailing axes: size-1 (or missing) axes broadcast
            for i in range(n_in):
                if views[i].ndim > rank:
                    raise ValueError(f"inputs[{i}] has more axes ({views[i].ndim}) than out ({rank})")
                for d in range(rank):
                    dd = d - (rank - views[i].ndim)
                    if dd < 0 or views[i].shape[dd] == 1:
                        strides[i][d] = 0
                    elif views[i].shape[dd] == shape[d]:
                        if views[i].strides[dd] % 4:
                            raise ValueError(f"inputs[{i}] has strides that are not whole elements")
                        strides[i][d] = views[i].strides[dd] // 4
                    else:
                        raise ValueError(f"inputs[{i}] of shape {tuple(views[i].shape[k] for k in range(views[i].ndim))}"
                                         f" does not broadcast to out's {tuple(shape[k] for k in range(rank))}")
            if size == 0:
                return out
            # coalesce: drop size-1 axes, merge an axis into the next where every input
            # steps over both as one (out is contiguous, so it always can)
            nd = 0
            for d in range(rank):
                if shape[d] == 1:
                    continue
                merge = nd > 0
                if merge:
                    for i in range(n_in):
                        if strides[i][nd - 1] != strides[i][d] * shape[d]:
                            merge = False
                            break
                if merge:
                    p.shape[nd - 1] *= shape[d]
                    for i in range(n_in):
                        p.src[i].strides[nd - 1] = strides[i][d]
                        strides[i][nd - 1] = strides[i][d]
                else:
                    p.shape[nd] = shape[d]
                    for i in range(n_in):
                        p.src[i].strides[nd] = strides[i][d]
                        strides[i][nd] = strides[i][d]
                    nd += 1
            if nd == 0:
                nd = 1
                p.shape[0] = 1
                for i in range(n_in):
                    p.src[i].strides[0] = 0
            p.ndim = nd
            for i in range(n_in):
                p.src[i].data = <const float*>views[i].buf
            p.code = &code[0]
            p.n_instr = code.shape[0] // 4
            p.n_in = n_in
            p.n_const = consts.shape[0]
            p.consts = &consts[0] if consts.shape[0] else NULL
            p.grids = &grids[0] if grids is not None and grids.shape[0] else NULL
            p.n_regs = n_regs
            p.out = <float*>out_view.buf
            p.tiles_per_row = (p.shape[nd - 1] + TILE - 1) // TILE
            p.n_items = size // p.shape[nd - 1] * p.tiles_per_row
            p.rows_per_item = 1
            p.n_rows = size // p.shape[nd - 1]
            if nd >= 2 and 2 * p.shape[nd - 1] <= TILE:
                # short rows: items of whole rows (run_row_groups)
                p.rows_per_item = TILE // p.shape[nd - 1]
                p.n_items = (p.n_rows + p.rows_per_item - 1) // p.rows_per_item
                for i in range(n_in):
                    run = 1
                    p.src[i].flat = True
                    for d in range(nd - 1, -1, -1):
                        if p.src[i].strides[d] != run:
                            p.src[i].flat = False
                        run *= p.shape[d]
            if n_threads > p.n_items // MIN_ITEMS_PER_THREAD:
                n_threads = max(1, <int>(p.n_items // MIN_ITEMS_PER_THREAD))
            with nogil:
                if n_threads <= 1:
                    run_part(&p, 0, p.n_items)
                else:
                    per = (p.n_items + n_threads - 1) // n_threads
                    for k in prange(n_threads, schedule="static", num_threads=n_threads):
                        run_part(&p, min(k * per, p.n_items), min((k + 1) * per, p.n_items))
        finally:
            PyBuffer_Release(&out_view)
    finally:
        for i in range(n_got):
            PyBuffer_Release(&views[i])
    return out


def broadcast_shape(tuple inputs, int min_rank):
    """The numpy broadcast of the inputs' shapes, raised to at least `min_rank` axes
    (np.broadcast_shapes costs microseconds; a program's inputs are few)."""
    cdef Py_ssize_t shape[MAX_DIMS]
    cdef int rank = min_rank, i, d, nd
    cdef Py_ssize_t n
    cdef tuple s
    for x in inputs:
        s = x.shape
        if len(s) > rank:
            rank = len(s)
    if rank > MAX_DIMS:
        raise ValueError(f"inputs: at most {MAX_DIMS} axes, got {rank}")
    for d in range(rank):
        shape[d] = 1
    for i, x in enumerate(inputs):
        s = x.shape
        nd = len(s)
        for d in range(nd):
            n = s[d]
            if n == shape[rank - nd + d] or n == 1:
                continue
            if shape[rank - nd + d] != 1:
                raise ValueError(f"inputs[{i}] of shape {s} does not broadcast with the others")
            shape[rank - nd + d] = n
    return tuple(shape[d] for d in range(rank))

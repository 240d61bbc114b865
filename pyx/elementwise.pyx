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

"""Batched small float32 products: y[b] = a[b] @ b[b] for tiny matrices (attention's
per-head Q @ K^T and P @ V in small models, 8 to 64 on a side).

At these sizes a packed GEMM spends more time packing and dispatching than
multiplying, and a call per product costs more than the product. One call
runs the whole batch: for each output row, y[i, :] accumulates a[i, k] * b[k, :]
over k in order (the inner loop runs along contiguous rows of b and y, which the
compiler vectorizes). Products are split over threads by batch index; each
output is summed by one thread in the fixed k order, so results do not depend
on the thread count.
"""
from cython.parallel cimport prange

cdef extern from "small_kernels.h" nogil:
    void nrt_small_matmul(float* y, const float* a, const float* b, Py_ssize_t M, Py_ssize_t K, Py_ssize_t N)


def batched_matmul(const float[:, :, ::1] a,     # IN  (B, M, K)
                   const float[:, :, ::1] b,     # IN  (B, K, N)
                   float[:, :, ::1] y,           # OUT (B, M, N)
                   int n_threads):
    cdef Py_ssize_t B = y.shape[0], M = y.shape[1], N = y.shape[2], K = a.shape[2]
    if a.shape[0] != B or b.shape[0] != B or a.shape[1] != M or b.shape[1] != K or b.shape[2] != N:
        raise ValueError(f"batched_matmul: a ({a.shape[0]}, {a.shape[1]}, {K}) @ b ({b.shape[0]}, {b.shape[1]}, "
                         f"{b.shape[2]}) does not give y ({B}, {M}, {N})")
    if n_threads < 1:
        raise ValueError("batched_matmul: n_threads must be >= 1")
    if B == 0 or M == 0 or N == 0:
        return
    if K == 0:
        y[:, :, :] = 0
        return
    cdef Py_ssize_t p
    with nogil:
        for p in prange(B, schedule="static", num_threads=n_threads):
            nrt_small_matmul(&y[p, 0, 0], &a[p, 0, 0], &b[p, 0, 0], M, K, N)

"""A float32 GEMM call bound once: y = act(a @ B + bias + residual) with a packed constant B.

A specialized plan (normrt.onnx.fast_steps) knows a MatMul's shapes, weight, bias,
activation and thread count before its first run. `gemm.gemm` takes all of them
per call as typed memoryviews: six buffer acquisitions, the size checks and the
job-grid search cost ~2 us a call, more than the product of a small model's
24x64 by 64x64 MatMul. A PreparedGemm checks and keeps them once (the job grid
too); a call reads the three run-time arrays' data pointers through the numpy
C API and runs the same blocked product (gemm_core.pxd) on the same Problem and
grid as gemm.gemm: bitwise the same result.
"""
cimport numpy as cnp
from kernel_args cimport is_f32_c

from gemm_core cimport *

cnp.import_array()


cdef class PreparedGemm:
    """PreparedGemm(b, m, n, k, bias, act, n_threads): b the packed_b_size(k, n) floats of
    gemm.pack_b, bias a float32 (n,) array or None, act the activation code; then
    `prepared(a, y, work, residual=None)` computes y (m*n float32, C-contiguous) from
    a (m*k float32; a copy is made if it is not C-contiguous), with `work` a float32
    array of at least gemm.workspace_size(n_threads) floats."""
    cdef Problem g
    cdef Split s
    cdef int nt
    cdef object b, bias          # the arrays g points into, kept alive
    cdef Py_ssize_t work_size

    def __init__(self, cnp.ndarray b, Py_ssize_t m, Py_ssize_t n, Py_ssize_t k, bias, int act, int n_threads,
                 float alpha=0.01):
        if m <= 0 or n <= 0 or k <= 0:
            raise ValueError("PreparedGemm: m, n and k must be >= 1")
        if not is_f32_c(b, panels_b_size(k, n)):
            raise ValueError(f"PreparedGemm: b must be the {panels_b_size(k, n)} float32 floats of a packed "
                             f"({k}, {n}) weight")
        if bias is not None and not is_f32_c(bias, n):
            raise ValueError(f"PreparedGemm: bias must be a contiguous float32 array of {n} elements or None")
        self.nt = max(1, min(n_threads, 64))
        self.b, self.bias = b, bias
        self.work_size = self.nt * thread_workspace()
        self.g.m, self.g.n, self.g.k = m, n, k
        self.g.mr = MR
        self.g.a = NULL
        self.g.lda = k
        self.g.a_src = SRC_MATRIX
        self.g.b = <const float*>cnp.PyArray_DATA(b)
        self.g.ldb = n
        self.g.b_src = SRC_PACKED
        self.g.c = NULL
        self.g.ldc = n
        self.g.c_row0 = 0
        self.g.c_col0 = 0
        self.g.transposed = False
        self.g.bias = NULL if bias is None else <const float*>cnp.PyArray_DATA(<cnp.ndarray>bias)
        self.g.bias_axis = 1
        self.g.res = NULL
        self.g.act = act
        self.g.alpha = alpha          # (act == ACT_LEAKY_RELU: its slope)
        self.s = choose_split(&self.g, 1, self.nt)

    def __call__(self, a, y, work, residual=None):
        cdef Problem g = self.g
        cdef float* work_p
        cdef Py_ssize_t mk = g.m * g.k, mn = g.m * g.n
        if not is_f32_c(a, mk):
            import numpy as np
            a = np.ascontiguousarray(a, dtype=np.float32)
            if cnp.PyArray_SIZE(<cnp.ndarray>a) != mk:
                raise ValueError(f"PreparedGemm: a must have {mk} elements")
        if not is_f32_c(y, mn) or not cnp.PyArray_ISWRITEABLE(<cnp.ndarray>y):
            raise ValueError(f"PreparedGemm: y must be a writeable C-contiguous float32 array of {mn} elements")
        if not is_f32_c(work, cnp.PyArray_SIZE(<cnp.ndarray>work) if type(work) is cnp.ndarray else -1) \
                or cnp.PyArray_SIZE(<cnp.ndarray>work) < self.work_size or not cnp.PyArray_ISWRITEABLE(<cnp.ndarray>work):
            raise ValueError(f"PreparedGemm: work must be a writeable float32 array of >= {self.work_size} floats")
        if residual is not None:
            if not is_f32_c(residual, mn):
                raise ValueError(f"PreparedGemm: residual must be a C-contiguous float32 array of {mn} elements")
            g.res = <const float*>cnp.PyArray_DATA(<cnp.ndarray>residual)
        g.a = <const float*>cnp.PyArray_DATA(<cnp.ndarray>a)
        g.c = <float*>cnp.PyArray_DATA(<cnp.ndarray>y)
        work_p = <float*>cnp.PyArray_DATA(<cnp.ndarray>work)
        with nogil:
            run_gemm(&g, self.s, work_p, self.nt)
        return y

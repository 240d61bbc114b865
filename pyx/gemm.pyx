"""Packed float32 GEMM: c = act(a @ b + bias + residual) (normrt.matmul).

The blocked product, packing and micro-kernels are shared with the
convolution (conv.pyx) through gemm_core.pxd and gemm_microkernel.h. A
constant operand (a MatMul weight: B) is packed once by pack_b and passed
back on every call.

Python (normrt.api.gemm) checks every argument; these kernels trust them
(sizes are re-checked here, cheaply).
"""
import numpy as np

from gemm_core cimport *

def isa():
    """The micro-kernel variant compiled in: "avx512", "avx2" or "generic"."""
    return NRT_ISA.decode()


def block_sizes():
    """(MR, NR, KC): register block rows and columns, K block."""
    return MR, NR, KC


def packed_a_size(Py_ssize_t m, Py_ssize_t k):
    return panels_a_size(m, k)


def packed_b_size(Py_ssize_t k, Py_ssize_t n):
    return panels_b_size(k, n)


def workspace_size(int n_threads):
    """Floats of workspace a call with n_threads needs (B block, A block, edge tiles)."""
    return max(1, n_threads) * thread_workspace()



def pack_a(const float[:, ::1] a,     # IN  (M, K)
           float[::1] out):           # OUT packed_a_size(M, K)
    """Pack a constant A (conv weights as (M, C*kh*kw)) into MR-row panels, K block
    by K block: block pc holds every panel's rows pc..pc+kc, one after the other,
    so a product streams it front to back (weights too big for the caches come
    from memory in one sequential pass the prefetchers follow)."""
    cdef Py_ssize_t m = a.shape[0], k = a.shape[1], pc, kc, mp = (m + MR - 1) // MR
    if out.shape[0] != packed_a_size(m, k):
        raise ValueError("out must have packed_a_size(M, K) floats")
    if m == 0 or k == 0:
        return
    with nogil:
        pc = 0
        while pc < k:        # (while: a range step must be a literal)
            kc = min(<Py_ssize_t>KC, k - pc)
            pack_a_panels(&a[0, 0], k, m, 0, m, pc, kc, &out[pc * mp * MR], MR * kc)
            pc += KC


def pack_b(const float[:, ::1] b,     # IN  (K, N)
           float[::1] out):           # OUT packed_b_size(K, N)
    """Pack a constant B (a MatMul weight) into NR-column panels, K block by K block
    (like pack_a)."""
    cdef Py_ssize_t k = b.shape[0], n = b.shape[1], pc, kc, np_ = (n + NR - 1) // NR
    if out.shape[0] != packed_b_size(k, n):
        raise ValueError("out must have packed_b_size(K, N) floats")
    if n == 0 or k == 0:
        return
    with nogil:
        pc = 0
        while pc < k:        # (while: a range step must be a literal)
            kc = min(<Py_ssize_t>KC, k - pc)
            pack_b_matrix(&b[0, 0], n, n, 0, n, pc, kc, &out[pc * np_ * NR], NR * kc, NR)
            pc += KC



# the GEMM / conv epilogues' LeakyRelu code (gemm_core.pxd ACT_LEAKY_RELU), for normrt.matmul and
# normrt.conv2d
LEAKY_RELU = ACT_LEAKY_RELU


def gemm(const float[::1] a,          # IN  (M*K,) row-major, or packed_a_size(M, K) if a_packed
         bint a_packed,
         const float[::1] b,          # IN  (K*N,) row-major, or packed_b_size(K, N) if b_packed
         bint b_packed,
         Py_ssize_t m, Py_ssize_t n, Py_ssize_t k,
         float[::1] c,                # OUT (M*N,) row-major; must not overlap a, b
         const float[::1] bias,       # IN  empty, (M,) with bias_axis 0, or (N,) with bias_axis 1
         int bias_axis,
         const float[::1] residual,   # IN  empty or (M*N,); may be c itself
         int act,
         float[::1] work,             # workspace_size(n_threads) floats
         int n_threads,
         float alpha=0.01):           # act == LEAKY_RELU: its slope
    """c = act(a @ b + bias + residual)."""
    cdef Problem g
    cdef Split s
    cdef int nt
    if m <= 0 or n <= 0 or k <= 0:
        raise ValueError("m, n and k must be >= 1")
    if a.shape[0] != (packed_a_size(m, k) if a_packed else m * k):
        raise ValueError("a has the wrong size")
    if b.shape[0] != (packed_b_size(k, n) if b_packed else k * n):
        raise ValueError("b has the wrong size")
    if c.shape[0] != m * n:
        raise ValueError("c must have m*n elements")
    if bias.shape[0] != 0 and bias.shape[0] != (m if bias_axis == 0 else n):
        raise ValueError("bias has the wrong length")
    if residual.shape[0] != 0 and residual.shape[0] != m * n:
        raise ValueError("residual must have m*n elements")
    nt = max(1, min(n_threads, 64))
    if work.shape[0] < workspace_size(nt):
        raise ValueError("work is smaller than workspace_size(n_threads)")
    g.m = m
    g.n = n
    g.k = k
    g.mr = MR
    g.a = &a[0]
    g.lda = k
    g.a_src = SRC_PACKED if a_packed else SRC_MATRIX
    g.b = &b[0]
    g.ldb = n
    g.b_src = SRC_PACKED if b_packed else SRC_MATRIX
    g.c = &c[0]
    g.ldc = n
    g.c_row0 = 0
    g.c_col0 = 0
    g.transposed = False
    g.bias = &bias[0] if bias.shape[0] else NULL
    g.bias_axis = bias_axis
    g.res = &residual[0] if residual.shape[0] else NULL
    g.act = act
    g.alpha = alpha
    with nogil:
        s = choose_split(&g, 1, nt)
        run_gemm(&g, s, &work[0], nt)


cdef struct BatchedJobs:
    Problem* g              # one problem per product
    Split s                 # the job grid of each
    Py_ssize_t per          # jobs per product (s.mb * s.nb)
    float* work


cdef inline void batched_job(void* ctx, long j, int slot) noexcept nogil:
    cdef BatchedJobs* c = <BatchedJobs*>ctx
    cdef Py_ssize_t p = j // c.per
    run_jobs(&c.g[p], c.s, j - p * c.per, c.per, thread_work(c.work, slot))


def batched_gemm(const float[:, ::1] a,     # IN  (count, M*K) the products' left operands, or (1, M*K): one for all
                 const float[:, ::1] b,     # IN  (count, K*N) their right operands, or (1, K*N): one for all
                 Py_ssize_t m, Py_ssize_t n, Py_ssize_t k,
                 float[:, ::1] c,           # OUT (count, M*N); must not overlap a, b
                 float[::1] work,           # workspace_size(n_threads) floats
                 int n_threads):
    """c[p] = a[p] @ b[p] for every product p: the jobs of all products' grids in one parallel
    loop (a batch of attention-head products each too small to split alone). Each product is
    computed as gemm computes it, whatever the grid: bitwise gemm's result per product, for
    any thread count."""
    cdef Py_ssize_t count = c.shape[0], p
    cdef Py_ssize_t a_step = 0 if a.shape[0] == 1 else 1, b_step = 0 if b.shape[0] == 1 else 1
    cdef BatchedJobs bj
    cdef int nt
    if m <= 0 or n <= 0 or k <= 0:
        raise ValueError("m, n and k must be >= 1")
    if a.shape[0] not in (1, count) or b.shape[0] not in (1, count):
        raise ValueError("a and b must hold c's number of products, or one for all")
    if a.shape[1] != m * k or b.shape[1] != k * n or c.shape[1] != m * n:
        raise ValueError("a, b or c has the wrong size for (m, n, k)")
    nt = max(1, min(n_threads, 64))
    if work.shape[0] < workspace_size(nt):
        raise ValueError("work is smaller than workspace_size(n_threads)")
    if count == 0:
        return
    problems = np.zeros(count * sizeof(Problem), np.uint8)      # freed by Python, whatever happens
    cdef unsigned char[::1] raw = problems
    bj.g = <Problem*>&raw[0]
    for p in range(count):
        bj.g[p].m = m
        bj.g[p].n = n
        bj.g[p].k = k
        bj.g[p].mr = MR
        bj.g[p].a = &a[p * a_step, 0]
        bj.g[p].lda = k
        bj.g[p].a_src = SRC_MATRIX
        bj.g[p].b = &b[p * b_step, 0]
        bj.g[p].ldb = n
        bj.g[p].b_src = SRC_MATRIX
        bj.g[p].c = &c[p, 0]
        bj.g[p].ldc = n
        bj.g[p].c_row0 = 0
        bj.g[p].c_col0 = 0
        bj.g[p].transposed = False
        bj.g[p].bias = NULL
        bj.g[p].bias_axis = 1
        bj.g[p].res = NULL
        bj.g[p].act = 0
        bj.g[p].alpha = 0.0
    bj.work = &work[0]
    with nogil:
        bj.s = choose_split(&bj.g[0], count, nt)
        bj.per = bj.s.mb * bj.s.nb
        run_parallel(batched_job, &bj, count * bj.per, nt)

"""Local response normalization across channels (ONNX LRN).

x is viewed as (N, C, S), S the product of the spatial sizes. For channel c,
  square_sum = sum of x[c']^2 for c' in [c - floor((size-1)/2), c + ceil((size-1)/2)] ∩ [0, C)
  y[c]       = x[c] / (bias + alpha / size * square_sum)^beta
Python (normrt.api.lrn) checks every argument; this kernel trusts them.

Window sums (van Herk / Gil-Werman): pad the channels with zeros so that every
window has the same width w, cut the padded axis into blocks of w; a window then
starts in block k and ends in block k + 1, and its sum is the suffix sum of
block k from its start plus the prefix sum of block k + 1 up to its end. Three
additions per element whatever the size, and no subtraction: unlike a running
add/subtract sum nothing drifts or cancels, and an inf or NaN channel only
reaches the windows that contain it.

A work item is one spatial block of B positions of one sample, walked channel
block by channel block, vectorized over the contiguous spatial axis. Every
position's arithmetic is the same whatever B and whichever thread runs it, so
outputs are bitwise identical for any thread count.
"""
from cython.parallel cimport prange
from libc.stdlib cimport malloc, free
from libc.math cimport pow, sqrt

from moments cimport real
from omp cimport omp_get_thread_num


cdef inline double lrn_power(double d, double beta, int mode) noexcept nogil:
    """d ** beta; the common exponents by correctly rounded sqrt (vectorizable)."""
    if mode == 1:
        return sqrt(d) * sqrt(sqrt(d))  # beta = 0.75, the AlexNet/GoogLeNet default
    if mode == 2:
        return sqrt(d)                  # beta = 0.5
    if mode == 3:
        return d                        # beta = 1
    return pow(d, beta)


cdef inline void load_squares(const real* x, Py_ssize_t C, Py_ssize_t S, Py_ssize_t nb,
                              Py_ssize_t j0, Py_ssize_t lo, Py_ssize_t w,
                              double* sq) noexcept nogil:
    """sq[jj, s] = x[j0 + jj - lo, s]^2 for padded channels j0 .. j0 + w - 1 (0 outside [0, C))."""
    cdef Py_ssize_t jj, s, ch
    cdef const real* r
    cdef double* q
    for jj in range(w):
        ch = j0 + jj - lo
        q = sq + jj * nb
        if ch < 0 or ch >= C:
            for s in range(nb):
                q[s] = 0.0
        else:
            r = x + ch * S
            for s in range(nb):
                q[s] = <double>r[s] * <double>r[s]


cdef inline void suffix_sums(const double* sq, double* suf, Py_ssize_t w, Py_ssize_t nb) noexcept nogil:
    """suf[jj] = sq[jj] + sq[jj + 1] + ... + sq[w - 1], added from the end."""
    cdef Py_ssize_t jj, s
    for s in range(nb):
        suf[(w - 1) * nb + s] = sq[(w - 1) * nb + s]
    for jj in range(w - 2, -1, -1):
        for s in range(nb):
            suf[jj * nb + s] = sq[jj * nb + s] + suf[(jj + 1) * nb + s]


cdef inline void prefix_sums_inplace(double* sq, Py_ssize_t w, Py_ssize_t nb) noexcept nogil:
    """sq[jj] <- sq[0] + ... + sq[jj], added from the start."""
    cdef Py_ssize_t jj, s
    for jj in range(1, w):
        for s in range(nb):
            sq[jj * nb + s] = sq[(jj - 1) * nb + s] + sq[jj * nb + s]


cdef inline void lrn_block(const real* x, real* y, Py_ssize_t C, Py_ssize_t S, Py_ssize_t nb,
                           Py_ssize_t lo, Py_ssize_t w, double coef, double bias, double beta,
                           int mode, double* buf) noexcept nogil:
    """All C channels of nb contiguous spatial positions (x, y point at channel 0).

    buf holds 3 * w * nb doubles. Output block k (channels [k w, k w + w)) is
    written only after the squares of padded block k + 1 are loaded, and later
    loads read channels >= (k + 2) w - lo > (k + 1) w, so y may alias x.
    """
    cdef double* suf = buf                # suffix sums of the current block
    cdef double* suf_next = buf + w * nb  # suffix sums of the next block
    cdef double* pre = buf + 2 * w * nb   # squares, then prefix sums, of the next block
    cdef double* tmp
    cdef Py_ssize_t k, jj, s, c, c_end
    cdef double ss
    cdef const real* r
    cdef real* o
    load_squares(x, C, S, nb, 0, lo, w, pre)
    suffix_sums(pre, suf, w, nb)
    k = 0
    while k * w < C:
        load_squares(x, C, S, nb, (k + 1) * w, lo, w, pre)
        suffix_sums(pre, suf_next, w, nb)
        prefix_sums_inplace(pre, w, nb)
        c_end = min((k + 1) * w, C)
        for c in range(k * w, c_end):
            jj = c - k * w
            r = x + c * S
            o = y + c * S
            if jj == 0:
                # the window is exactly block k
                for s in range(nb):
                    ss = suf[s]
                    o[s] = <real>(<double>r[s] / lrn_power(bias + coef * ss, beta, mode))
            else:
                for s in range(nb):
                    ss = suf[jj * nb + s] + pre[(jj - 1) * nb + s]
                    o[s] = <real>(<double>r[s] / lrn_power(bias + coef * ss, beta, mode))
        tmp = suf
        suf = suf_next
        suf_next = tmp
        k += 1


def lrn(const real[:, :, ::1] x,   # IN  (N, C, S)
        real[:, :, ::1] out,       # OUT (N, C, S); may alias x
        Py_ssize_t lo,             # IN  window reaches lo channels down: min(floor((size-1)/2), C-1)
        Py_ssize_t hi,             # IN  and hi channels up: min(ceil((size-1)/2), C-1)
        double coef,               # IN  alpha / size
        double beta, double bias, int n_threads):
    cdef Py_ssize_t N = x.shape[0], C = x.shape[1], S = x.shape[2]
    cdef Py_ssize_t w = lo + hi + 1, nb, nsb, items, item, n, s0
    cdef int mode = 0
    cdef double* buf
    if N == 0 or C == 0 or S == 0:
        return
    if beta == 0.75:
        mode = 1
    elif beta == 0.5:
        mode = 2
    elif beta == 1.0:
        mode = 3
    # spatial block: buffers around L1/L2 size, at least 8 positions to vectorize,
    # small enough to give every thread work (B does not change any result)
    nb = max(<Py_ssize_t>8, min(<Py_ssize_t>128, (<Py_ssize_t>2048 // w) // 8 * 8))
    if N * ((S + nb - 1) // nb) < n_threads:
        nb = max(<Py_ssize_t>8, (S * N + n_threads - 1) // n_threads)
    nb = min(nb, S)
    nsb = (S + nb - 1) // nb
    items = N * nsb
    # one scratch area per thread of the team (no team larger than the work)
    n_threads = <int>min(<Py_ssize_t>n_threads, items)

    buf = <double*>malloc(n_threads * 3 * w * nb * sizeof(double))
    if buf == NULL:
        raise MemoryError()
    try:
        for item in prange(items, nogil=True, schedule="static", num_threads=n_threads):
            n = item // nsb
            s0 = (item % nsb) * nb
            lrn_block(&x[n, 0, s0], &out[n, 0, s0], C, S, min(nb, S - s0), lo, w, coef, bias, beta,
                      mode, buf + omp_get_thread_num() * 3 * w * nb)
    finally:
        free(buf)

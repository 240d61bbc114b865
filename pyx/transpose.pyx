"""Transpose kernel: a permuted copy of an array in cache-sized tiles.

numpy copies a transposed view element by element in the output's order, so the reads stride
through the input a cache line per element: (1, 128, 1024) -> (1, 1024, 128) took 377 us
where a plain copy of the same bytes takes 15 (SegFormer's and PVT's flatten(2).transpose(1, 2)
after every conv, channels-last round trips). Here the permutation is first simplified (size-1
axes dropped, axes that stay adjacent and in order merged); when the innermost axis moves, the
copy runs as 2-D transposes of TILE x TILE blocks between the input's innermost axis and the
output's, so both sides touch whole cache lines. Every element is copied exactly once, bits
unchanged, so the result is the same for any thread count (the outer index and the row tiles
split statically). Elements of 1, 2, 4 or 8 bytes (float32, float16 / bfloat16 words, int64...).
The 8 x 8 blocks of 4- and 2-byte tiles move through vector registers (transpose_tile.h: loads,
shuffles, stores; the same bits), the tiles' ragged edges and other sizes element by element.
"""
cimport numpy as cnp
from cython.parallel cimport prange
from libc.stdint cimport uint8_t, uint16_t, uint32_t, uint64_t

cnp.import_array()

cdef extern from "transpose_tile.h" nogil:
    int nrt_tr8_available(int word_size)
    void nrt_tr8_u32(const uint32_t* src, Py_ssize_t ss, uint32_t* dst, Py_ssize_t ds)
    void nrt_tr8_u16(const uint16_t* src, Py_ssize_t ss, uint16_t* dst, Py_ssize_t ds)

cdef enum:
    TILE = 16
    MAX_DIMS = 8


ctypedef fused word:
    uint8_t
    uint16_t
    uint32_t
    uint64_t


cdef inline void tile_body(const word* src, word* dst, Py_ssize_t rows, Py_ssize_t cols,
                           Py_ssize_t src_col_stride, Py_ssize_t dst_row_stride) noexcept nogil:
    """dst[r * dst_row_stride + c] = src[c * src_col_stride + r] for r < rows, c < cols: the
    source rows read whole into a tile in L1 (contiguous loads), then the tile's columns
    written as destination rows (contiguous stores)."""
    cdef word tile[TILE][TILE]
    cdef Py_ssize_t r, c
    cdef const word* s
    cdef word* d
    for c in range(cols):
        s = src + c * src_col_stride
        for r in range(rows):
            tile[r][c] = s[r]
    for r in range(rows):
        d = dst + r * dst_row_stride
        for c in range(cols):
            d[c] = tile[r][c]


cdef inline void edge_copy(const word* src, word* dst, Py_ssize_t r0, Py_ssize_t rows, Py_ssize_t c0,
                           Py_ssize_t cols, Py_ssize_t src_col_stride, Py_ssize_t dst_row_stride) noexcept nogil:
    """tile_body's copy of rows [r0, rows) x cols [c0, cols), element by element (a tile's ragged
    edge: at most 7 rows or columns)."""
    cdef Py_ssize_t r, c
    for c in range(c0, cols):
        for r in range(r0, rows):
            dst[r * dst_row_stride + c] = src[c * src_col_stride + r]


cdef inline void tile_copy(const word* src, word* dst, Py_ssize_t rows, Py_ssize_t cols,
                           Py_ssize_t src_col_stride, Py_ssize_t dst_row_stride) noexcept nogil:
    """tile_body; 4- and 2-byte words in 8 x 8 vector blocks where the ISA has them (the
    edges element by element), a whole tile of other words with constant bounds, which the
    compiler unrolls."""
    cdef Py_ssize_t r, c, r8 = rows & ~(<Py_ssize_t>7), c8 = cols & ~(<Py_ssize_t>7)
    if (word is uint32_t or word is uint16_t) and nrt_tr8_available(sizeof(word)):
        for r in range(0, r8, 8):
            for c in range(0, c8, 8):
                if word is uint32_t:
                    nrt_tr8_u32(src + c * src_col_stride + r, src_col_stride, dst + r * dst_row_stride + c,
                                dst_row_stride)
                else:
                    nrt_tr8_u16(src + c * src_col_stride + r, src_col_stride, dst + r * dst_row_stride + c,
                                dst_row_stride)
        edge_copy(src, dst, r8, rows, 0, cols, src_col_stride, dst_row_stride)
        edge_copy(src, dst, 0, r8, c8, cols, src_col_stride, dst_row_stride)
        return
    if rows == TILE and cols == TILE:
        tile_body(src, dst, TILE, TILE, src_col_stride, dst_row_stride)
    else:
        tile_body(src, dst, rows, cols, src_col_stride, dst_row_stride)


cdef inline void run_item(const word* src, word* dst, Py_ssize_t item, Py_ssize_t n_it,
                          const Py_ssize_t* outer_dims, const Py_ssize_t* outer_src_strides,
                          const Py_ssize_t* outer_dst_strides, int n_outer_dims, Py_ssize_t I, Py_ssize_t J,
                          Py_ssize_t src_j_stride, Py_ssize_t dst_i_stride) noexcept nogil:
    """One work item: the row tile item % n_it of outer index item // n_it, across all of J."""
    cdef Py_ssize_t rem = item // n_it, s_off = 0, d_off = 0, k, i0, j0
    cdef int d
    for d in range(n_outer_dims - 1, -1, -1):
        k = rem % outer_dims[d]
        rem = rem // outer_dims[d]
        s_off = s_off + k * outer_src_strides[d]
        d_off = d_off + k * outer_dst_strides[d]
    i0 = (item % n_it) * TILE
    j0 = 0
    while j0 < J:
        tile_copy(src + s_off + j0 * src_j_stride + i0, dst + d_off + i0 * dst_i_stride + j0,
                  min(<Py_ssize_t>TILE, I - i0), min(<Py_ssize_t>TILE, J - j0), src_j_stride, dst_i_stride)
        j0 = j0 + TILE


def transpose_into(x, out, shape, perm, int n_threads):
    """out[...] = x.transpose(...): x and out C-contiguous ndarrays of one itemsize (1, 2, 4 or 8
    bytes) and size; `shape`, `perm` the permutation simplified (normrt.onnx.ops.shape_ops.
    simplified_permutation: no size-1 axes, no two axes that stay adjacent and in order), at
    most MAX_DIMS axes, the innermost axis moving. Returns out."""
    cdef Py_ssize_t dims[MAX_DIMS]
    cdef Py_ssize_t src_strides[MAX_DIMS]
    cdef Py_ssize_t dst_strides[MAX_DIMS]
    cdef Py_ssize_t odims[MAX_DIMS]
    cdef Py_ssize_t osrc[MAX_DIMS]
    cdef Py_ssize_t odst[MAX_DIMS]
    cdef Py_ssize_t n_outer = 1, I, J, src_j, dst_i, s
    cdef int k, t, a, b, last, n_od = 0
    cdef int size = cnp.PyArray_ITEMSIZE(<cnp.ndarray>x) if type(x) is cnp.ndarray else 0
    cdef const unsigned char* sp
    cdef unsigned char* dp
    if type(x) is not cnp.ndarray or type(out) is not cnp.ndarray \
            or not cnp.PyArray_IS_C_CONTIGUOUS(<cnp.ndarray>x) or not cnp.PyArray_IS_C_CONTIGUOUS(<cnp.ndarray>out) \
            or not cnp.PyArray_ISWRITEABLE(<cnp.ndarray>out) or cnp.PyArray_ITEMSIZE(<cnp.ndarray>out) != size \
            or size not in (1, 2, 4, 8) or cnp.PyArray_SIZE(<cnp.ndarray>out) != cnp.PyArray_SIZE(<cnp.ndarray>x):
        raise ValueError("transpose_into: x and out must be C-contiguous arrays of one itemsize (1/2/4/8), "
                         "out writeable and of x's size")
    k = len(shape)
    p = list(perm)
    if k < 2 or k > MAX_DIMS or p[k - 1] == k - 1 or sorted(p) != list(range(k)):
        raise ValueError(f"transpose_into: a simplified permutation of 2 to {MAX_DIMS} axes moving the "
                         f"innermost one, got shape {shape}, perm {perm}")
    s = 1
    for a in range(k):
        s *= shape[a]
    if s != cnp.PyArray_SIZE(<cnp.ndarray>x):
        raise ValueError(f"transpose_into: shape {shape} is not x's {x.size} elements")
    if s == 0:
        return out
    s = 1
    for a in range(k - 1, -1, -1):
        dims[a] = shape[a]
        src_strides[a] = s
        s *= shape[a]
    s = 1
    for t in range(k - 1, -1, -1):
        dst_strides[t] = s                      # output axis t (input axis p[t])
        s *= shape[p[t]]
    last = k - 1
    b = 0
    for t in range(k):
        if p[t] == last:
            b = t                               # where the input's innermost axis lands
    a = p[k - 1]                                # the input axis the output's innermost comes from
    I = dims[last]
    J = dims[a]
    src_j = src_strides[a]
    dst_i = dst_strides[b]
    for t in range(k):
        if t != b and t != k - 1:
            odims[n_od] = dims[p[t]]
            osrc[n_od] = src_strides[p[t]]
            odst[n_od] = dst_strides[t]
            n_outer *= dims[p[t]]
            n_od += 1
    sp = <const unsigned char*>cnp.PyArray_DATA(<cnp.ndarray>x)
    dp = <unsigned char*>cnp.PyArray_DATA(<cnp.ndarray>out)
    n_threads = max(1, n_threads)
    with nogil:
        if size == 4:
            run(<const uint32_t*>sp, <uint32_t*>dp, n_outer, odims, osrc, odst, n_od, I, J, src_j, dst_i, n_threads)
        elif size == 2:
            run(<const uint16_t*>sp, <uint16_t*>dp, n_outer, odims, osrc, odst, n_od, I, J, src_j, dst_i, n_threads)
        elif size == 8:
            run(<const uint64_t*>sp, <uint64_t*>dp, n_outer, odims, osrc, odst, n_od, I, J, src_j, dst_i, n_threads)
        else:
            run(<const uint8_t*>sp, <uint8_t*>dp, n_outer, odims, osrc, odst, n_od, I, J, src_j, dst_i, n_threads)
    return out


cdef void run(const word* src, word* dst, Py_ssize_t n_outer, const Py_ssize_t* outer_dims,
              const Py_ssize_t* outer_src_strides, const Py_ssize_t* outer_dst_strides, int n_outer_dims,
              Py_ssize_t I, Py_ssize_t J, Py_ssize_t src_j_stride, Py_ssize_t dst_i_stride,
              int n_threads) noexcept nogil:
    """For every outer index: dst[i * dst_i_stride + j] = src[j * src_j_stride + i], i < I (the
    input's innermost axis), j < J (the output's), in TILE x TILE blocks. Work items: (outer
    index, row tile) pairs, split statically."""
    cdef Py_ssize_t n_it = (I + TILE - 1) // TILE
    cdef Py_ssize_t item
    if n_threads <= 1:                   # (no parallel region to enter)
        for item in range(n_outer * n_it):
            run_item(src, dst, item, n_it, outer_dims, outer_src_strides, outer_dst_strides, n_outer_dims,
                     I, J, src_j_stride, dst_i_stride)
        return
    for item in prange(n_outer * n_it, schedule="static", num_threads=n_threads):
        run_item(src, dst, item, n_it, outer_dims, outer_src_strides, outer_dst_strides, n_outer_dims,
                 I, J, src_j_stride, dst_i_stride)


def vector_blocks(int itemsize):
    """Whether tiles of `itemsize`-byte elements move in 8 x 8 vector blocks here
    (transpose_tile.h: 4- and 2-byte words on x86 builds); the others go element by element."""
    return bool(nrt_tr8_available(itemsize))

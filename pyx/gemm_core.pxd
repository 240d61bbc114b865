# The packed float32 GEMM shared by normrt._kernels.gemm (matmul) and
# normrt._kernels.conv (2-D convolution): operand sources, packing, the
# blocked product over MR x NR micro-kernel tiles, the job grid, and the
# parallel loop. Everything here is inline: each module compiles its own copy.
#
# C[M, N] = act(A[M, K] @ B[K, N] + bias + residual), BLIS style: B is packed
# into K-blocked column panels of NR floats, A into row panels of MR floats, and
# a register-blocked MR x NR micro-kernel (gemm_microkernel.h) runs over the
# panels.
#
# Determinism: every output element is one micro-kernel lane whose K sum runs
# k = 0..K-1 in order, in fixed KC blocks added to C in order; threads only
# split M/N panel ranges. So results never depend on the thread count.
from cython.parallel cimport prange
from libc.string cimport memcpy

from omp cimport omp_get_thread_num
from moments cimport activate_span, ACT_RELU

cdef extern from "gemm_microkernel.h":
    const int MR "NRT_MR"
    const int NR "NRT_NR"
    const int K_FIRST "NRT_FIRST"
    const int K_LAST "NRT_LAST"
    const int K_RELU "NRT_RELU"
    const char* NRT_ISA
    void nrt_copy_nr(float* d, const float* s) noexcept nogil
    void nrt_gemv_panels(long m, long k, long n, long kcb, const float* a, long lda, const float* bpk,
                         long jp0, long jp1, float* c, long ldc, const float* bias_row, const float* bias_col,
                         const float* res, int relu) noexcept nogil
    void nrt_pad_planes(const float* x, float* xp, Py_ssize_t p0, Py_ssize_t p1, Py_ssize_t h, Py_ssize_t w,
                        Py_ssize_t hp, Py_ssize_t wp, Py_ssize_t pt, Py_ssize_t pl) noexcept nogil
    void nrt_pad_rows(const float* x, float* xp, Py_ssize_t p, Py_ssize_t y0, Py_ssize_t y1, Py_ssize_t h,
                      Py_ssize_t w, Py_ssize_t hp, Py_ssize_t wp, Py_ssize_t pt, Py_ssize_t pl) noexcept nogil
    bint nrt_pad_phases(const float* x, float* xp, Py_ssize_t p0, Py_ssize_t p1, Py_ssize_t h, Py_ssize_t w,
                        Py_ssize_t hq, Py_ssize_t wq, Py_ssize_t pt, Py_ssize_t pl, Py_ssize_t sh,
                        Py_ssize_t sw) noexcept nogil
    void nrt_pad_mirror(const float* x, float* xp, Py_ssize_t p0, Py_ssize_t p1, Py_ssize_t y0, Py_ssize_t y1,
                        Py_ssize_t h, Py_ssize_t w, Py_ssize_t hq, Py_ssize_t wq, Py_ssize_t pt, Py_ssize_t pl,
                        Py_ssize_t pb, Py_ssize_t pr, Py_ssize_t sh, Py_ssize_t sw, int mode) noexcept nogil
    void nrt_prefetch_l2 "__builtin_prefetch"(const void* p, int rw, int locality) noexcept nogil
    void nrt_kernel(long kc, const float* a, const float* b, float* c, long ldc, int flags,
                    const float* bias_row, const float* bias_col, const float* res, long ldr) noexcept nogil
    void nrt_kernel_t(long kc, const float* x, const Py_ssize_t* koff, const Py_ssize_t* off,
                      const float* b, float* c, long ldc, int flags, const float* bias_col) noexcept nogil
    void nrt_kernel_tc(long kc, const float* x, const Py_ssize_t* koff, const Py_ssize_t* off,
                       const float* b, float* c, long ldc, int flags, const float* bias_col) noexcept nogil
    void nrt_kernel_tc1(long kc, const float* x, const Py_ssize_t* koff, const Py_ssize_t* off,
                        const float* b, float* c, long ldc, int flags, const float* bias_col) noexcept nogil
    void nrt_kernel_t_few(int rows, long kc, const float* x, const Py_ssize_t* koff, const Py_ssize_t* off,
                          const float* b, float* c, long ldc, int flags, const float* bias_col) noexcept nogil
    void nrt_kernel_t1(long kc, const float* x, const Py_ssize_t* koff, const Py_ssize_t* off,
                       const float* b, float* c, long ldc, int flags, const float* bias_col) noexcept nogil
    void nrt_kernel_off(long kc, const float* a, const float* b, const Py_ssize_t* boff, float* c,
                        long ldc, int flags, const float* bias_row) noexcept nogil
    const int TT "NRT_TT"
    void nrt_transpose_tile(const float* s, long lds, float* d, long ldd, const float* res,
                            int relu) noexcept nogil

cdef extern from "gemm_pack_a.h":
    void nrt_pack_a_panel(const float* a, Py_ssize_t lda, Py_ssize_t rows, Py_ssize_t kc, float* d) noexcept nogil

# The job grid's threads: one OpenMP team (the runtime every normrt kernel
# uses; why OpenMP and not a private pool: normrt/_thread_policy.py). Jobs are
# handed out one at a time (schedule dynamic): a thread whose core is busy
# takes fewer. Which thread runs a job never changes its result (jobs write
# disjoint outputs with fixed arithmetic).
ctypedef void (*nrt_job_fn)(void* ctx, long job, int slot) noexcept nogil


cdef enum:
    # an activation of the GEMM / conv epilogues only, beside moments.pxd's ACT_* (which every
    # kernel takes): LeakyRelu with Problem.alpha, a parameter the shared codes have no room for
    ACT_LEAKY_RELU = 16


cdef enum:
    # K block: a B micro-panel (KC x NR floats, 16 KiB) stays in L1 beside the
    # A reads. 256 (32 KiB) left a 48 KiB L1 too full: one thread,
    # light_resnet50 62.0 -> 58.3 ms (KC 192: 60.2, 64: 59.0), transformer
    # products unchanged (bert128, llama128 at 2 threads within noise).
    KC = 128
    MC_PANELS = 16      # A rows packed per call in blocks of MC_PANELS * MR (L2)
    NC_PANELS = 8       # B columns per job and K block: NC_PANELS * NR
    MAX_JOBS_M = 8
    # rows of a thread's wide C block (stride-1 convs computed on the padded width)
    WIDE_ROWS = 512

cdef enum:
    SRC_MATRIX = 0      # row-major matrix, packed per call
    SRC_PACKED = 1      # packed once by pack_a / pack_b
    SRC_IMAGE = 2       # (B only) implicit im2col of a zero-padded CHW image (runs along
                        # output rows)
    SRC_WIDE = 3        # (B only) a zero-padded CHW image, stride 1: B rows are shifted
                        # slices of it, read in place, output columns on the padded width
                        # (see conv2d)
    # (A only, the transposed conv y^T = im2col(x)^T W^T: pixels are the rows,
    # read in place by run_block_t)
    SRC_MATRIX_T = 4    # x as a (K, pixels) matrix
    SRC_IMAGE_T = 5     # implicit im2col of a zero-padded CHW image (pixel offset table)


cdef struct Problem:
    Py_ssize_t m, n, k
    Py_ssize_t mr             # rows per A panel: MR (the transposed conv: MR or MR - 1)
    # A: SRC_MATRIX (a, lda) or SRC_PACKED (panels of MR over all of K)
    const float* a
    Py_ssize_t lda
    int a_src
    # B: SRC_MATRIX (b, ldb), SRC_PACKED (panels of NR over all of K) or SRC_IMAGE
    const float* b
    Py_ssize_t ldb
    int b_src
    # image geometry (SRC_IMAGE): b points at channel 0 of this group
    Py_ssize_t ih, iw, kh, kw, sh, sw, ph, pw, dh, dw, oh, ow
    Py_ssize_t wp, plane      # SRC_WIDE: padded row width, padded channel size
    Py_ssize_t pq             # SRC_WIDE: floats per stride phase (plane = sh*sw*pq)
    float* c
    Py_ssize_t ldc
    Py_ssize_t c_row0, c_col0  # c holds rows from c_row0, columns from c_col0
    const float* bias      # NULL, per row (bias_axis 0) or per column (1)
    int bias_axis
    const float* res       # NULL or (m, n) with row stride ldc
    int act
    float alpha           # ACT_LEAKY_RELU's slope (read for that activation only)
    bint transposed       # C is y^T: rows are pixels, columns channels (y[col, row])


cdef inline void act_span(const Problem* g, float* y, Py_ssize_t n) noexcept nogil:
    """y[i] = act(y[i]) for the problem's activation (not ReLU, which the stores apply): a shared
    one (activate_span) or LeakyRelu as max(v, alpha v) (min above alpha 1), the values of ONNX
    LeakyRelu's where(v > 0, v, alpha v) for any v (signed zeros, infinities, NaN)."""
    cdef Py_ssize_t i
    cdef float v, t, a = g.alpha
    if g.act != ACT_LEAKY_RELU:
        activate_span(y, n, g.act)
    elif a <= <float>1.0:
        for i in range(n):
            v = y[i]
            t = v * a
            y[i] = t if t > v else v
    else:
        for i in range(n):
            v = y[i]
            t = v * a
            y[i] = t if t < v else v


cdef inline Py_ssize_t panels_a_size(Py_ssize_t m, Py_ssize_t k) noexcept nogil:
    """Floats of A (M, K) packed in MR-row panels."""
    return ((m + MR - 1) // MR) * MR * k


cdef inline Py_ssize_t panels_b_size(Py_ssize_t k, Py_ssize_t n) noexcept nogil:
    """Floats of B (K, N) packed in NR-column panels."""
    return ((n + NR - 1) // NR) * NR * k


cdef inline Py_ssize_t thread_workspace() noexcept nogil:
    # + 16: each thread's slice is rounded up to a 64-byte boundary
    return (KC * NC_PANELS * NR + KC * MC_PANELS * MR + 4 * MR * NR + 2 * (MR + NR)
            + WIDE_ROWS * NC_PANELS * NR + 16)


cdef inline float* cptr(const Problem* g, Py_ssize_t r, Py_ssize_t col) noexcept nogil:
    return g.c + (r - g.c_row0) * g.ldc + (col - g.c_col0)


# ---- packing -----------------------------------------------------------------

cdef inline void pack_a_panels(const float* a, Py_ssize_t lda, Py_ssize_t m, Py_ssize_t row0,
                        Py_ssize_t rows, Py_ssize_t k0, Py_ssize_t kc, float* dst,
                        Py_ssize_t panel_stride) noexcept nogil:
    """Rows [row0, row0 + rows) (row0 a multiple of MR), columns [k0, k0 + kc) of
    the row-major a into MR-row panels: dst[p*panel_stride + kk*MR + i]; rows at
    or past m are zeros (nrt_pack_a_panel: 8 x 8 register transposes)."""
    cdef Py_ssize_t p, r, npan = (rows + MR - 1) // MR
    for p in range(npan):
        r = row0 + p * MR
        nrt_pack_a_panel(a + r * lda + k0, lda, max(0, min(<Py_ssize_t>MR, m - r)), kc,
                         dst + p * panel_stride)


cdef inline void pack_b_matrix(const float* b, Py_ssize_t ldb, Py_ssize_t n, Py_ssize_t col0,
                        Py_ssize_t cols, Py_ssize_t k0, Py_ssize_t kc, float* dst,
                        Py_ssize_t panel_stride, Py_ssize_t width) noexcept nogil:
    """Columns [col0, col0 + cols) (col0 a multiple of width), rows [k0, k0 + kc)
    of the row-major b into width-column panels: dst[p*panel_stride + kk*width + j];
    columns at or past n are zeros (width: NR, the B panels)."""
    cdef Py_ssize_t p, kk, j, c0, w, npan = (cols + width - 1) // width
    cdef const float* src
    cdef float* d
    for p in range(npan):
        c0 = col0 + p * width
        w = min(width, n - c0)
        d = dst + p * panel_stride
        if w == NR and width == NR:
            for kk in range(kc):
                nrt_copy_nr(d + kk * NR, b + (k0 + kk) * ldb + c0)
        else:
            for kk in range(kc):
                src = b + (k0 + kk) * ldb + c0
                for j in range(w):
                    d[kk * width + j] = src[j]
                for j in range(w, width):
                    d[kk * width + j] = 0.0


cdef inline void pack_b_padded(const Problem* g, Py_ssize_t col0, Py_ssize_t cols, Py_ssize_t k0,
                        Py_ssize_t kc, float* dst, Py_ssize_t panel_stride) noexcept nogil:
    """SRC_IMAGE: implicit im2col from the zero-padded input (row stride wp, plane
    stride plane): B[k, p] = xpad[c, oy*sh + ky*dh, ox*sw + kx*dw]. Each panel's
    pixels split into runs along output rows once per block; a row of K is
    then one fixed-stride copy per run, no bounds tests."""
    cdef Py_ssize_t koff[KC]
    cdef Py_ssize_t run_t[NC_PANELS * NR]
    cdef Py_ssize_t run_len[NC_PANELS * NR]
    cdef Py_ssize_t run_off[NC_PANELS * NR]
    cdef Py_ssize_t run_first[NC_PANELS + 1]
    cdef Py_ssize_t fill[NC_PANELS]          # columns [fill, NR) of the panel are past the last pixel
    cdef Py_ssize_t taps = g.kh * g.kw, n = g.n, sw = g.sw
    cdef Py_ssize_t p, kk, kidx, ci, ky, kx, r, nr_, c0, pend, q, t, oy, ox, ln, j, o, tt
    cdef const float* base
    cdef const float* src
    cdef float* d
    cdef Py_ssize_t npan = (cols + NR - 1) // NR
    nr_ = 0
    for p in range(npan):               # (a job packs at most NC_PANELS panels)
        run_first[p] = nr_
        c0 = col0 + p * NR
        pend = min(c0 + NR, n)
        oy = c0 // g.ow
        ox = c0 - oy * g.ow
        q = c0
        t = 0
        while q < pend:
            ln = min(g.ow - ox, pend - q)
            run_t[nr_] = t
            run_len[nr_] = ln
            run_off[nr_] = oy * g.sh * g.wp + ox * sw
            nr_ += 1
            t += ln
            q += ln
            ox = 0
            oy += 1
        fill[p] = t
    run_first[npan] = nr_
    for kk in range(kc):
        kidx = k0 + kk
        ci = kidx // taps
        ky = (kidx - ci * taps) // g.kw
        kx = kidx - ci * taps - ky * g.kw
        koff[kk] = ci * g.plane + ky * g.dh * g.wp + kx * g.dw
    for kk in range(kc):
        base = g.b + koff[kk]
        for p in range(npan):
            d = dst + p * panel_stride + kk * NR
            for r in range(run_first[p], run_first[p + 1]):
                src = base + run_off[r]
                tt = run_t[r]
                ln = run_len[r]
                if sw == 1:
                    for j in range(ln):
                        d[tt + j] = src[j]
                elif sw == 2:       # a constant stride vectorizes (permutes)
                    for j in range(ln):
                        d[tt + j] = src[2 * j]
                else:
                    for j in range(ln):
                        d[tt + j] = src[j * sw]
            for j in range(fill[p], NR):
                d[j] = 0.0


cdef inline void wide_offsets(const Problem* g, Py_ssize_t k0, Py_ssize_t kc, Py_ssize_t* koff) noexcept nogil:
    """SRC_WIDE: koff[kk] = where B row k0 + kk = (c, ky, kx) starts in the padded
    image, relative to the column: B[k, q] = g.b[koff[k - k0] + q]. A strided
    conv's padded image is split by stride phase (see pad_phases): tap row
    ky*dh is phase (ky*dh) % sh, shifted by (ky*dh) // sh rows (columns alike)."""
    cdef Py_ssize_t taps = g.kh * g.kw, kk, ci, ky, kx, ty, tx
    ci = k0 // taps
    ky = (k0 - ci * taps) // g.kw
    kx = k0 - ci * taps - ky * g.kw
    for kk in range(kc):            # (counters: no divisions per row at stride 1)
        ty = ky * g.dh
        tx = kx * g.dw
        if g.sh == 1 and g.sw == 1:
            koff[kk] = ci * g.plane + ty * g.wp + tx
        else:
            koff[kk] = (ci * g.plane + ((ty % g.sh) * g.sw + tx % g.sw) * g.pq
                        + ty // g.sh * g.wp + tx // g.sw)
        kx += 1
        if kx == g.kw:
            kx = 0
            ky += 1
            if ky == g.kh:
                ky = 0
                ci += 1


cdef inline void image_offsets(const Problem* g, Py_ssize_t k0, Py_ssize_t kc, Py_ssize_t* koff) noexcept nogil:
    """SRC_IMAGE_T: koff[kk] = tap k0 + kk = (c, ky, kx)'s offset in the padded
    image (row stride wp, plane stride plane), to add to a pixel's."""
    cdef Py_ssize_t taps = g.kh * g.kw, kk, kidx, ci, ky, kx
    for kk in range(kc):
        kidx = k0 + kk
        ci = kidx // taps
        ky = (kidx - ci * taps) // g.kw
        kx = kidx - ci * taps - ky * g.kw
        koff[kk] = ci * g.plane + ky * g.dh * g.wp + kx * g.dw


# ---- the blocked product -----------------------------------------------------

cdef inline void edge_tile(const Problem* g, const float* ap, const float* bp, Py_ssize_t kc, int flags,
                    Py_ssize_t r0, Py_ssize_t c0, Py_ssize_t mr, Py_ssize_t nr, float* tile) noexcept nogil:
    """A tile cut by the edge of C: the same micro-kernel on a padded copy, so edge
    elements get exactly the arithmetic of interior ones."""
    cdef float* t_c = tile
    cdef float* t_res = tile + MR * NR
    cdef float* t_brow = tile + 2 * MR * NR
    cdef float* t_bcol = t_brow + MR
    cdef const float* brow = NULL
    cdef const float* bcol = NULL
    cdef const float* res = NULL
    cdef Py_ssize_t i, j
    cdef float* crow
    if not (flags & K_FIRST):
        for i in range(mr):
            crow = cptr(g, r0 + i, c0)
            for j in range(nr):
                t_c[i * NR + j] = crow[j]
    if flags & K_LAST:
        if g.bias != NULL and g.bias_axis == 0:
            for i in range(MR):
                t_brow[i] = g.bias[r0 + i] if i < mr else 0.0
            brow = t_brow
        elif g.bias != NULL:
            for j in range(NR):
                t_bcol[j] = g.bias[c0 + j] if j < nr else 0.0
            bcol = t_bcol
        if g.res != NULL:
            for i in range(mr):
                for j in range(nr):
                    t_res[i * NR + j] = g.res[(r0 + i) * g.ldc + c0 + j]
            res = t_res
    nrt_kernel(kc, ap, bp, t_c, NR, flags, brow, bcol, res, NR)
    for i in range(mr):
        crow = cptr(g, r0 + i, c0)
        for j in range(nr):
            crow[j] = t_c[i * NR + j]


cdef inline void run_job(const Problem* g, Py_ssize_t mp0, Py_ssize_t mp1, Py_ssize_t np0, Py_ssize_t np1,
                  float* work) noexcept nogil:
    """C panels [mp0, mp1) x [np0, np1) (MR x NR units), all of K.

    SRC_WIDE / transposed: the block is computed (with its bias) into the
    thread's wide C block, then copied to y with residual and activation: the
    valid columns of the padded width / the transpose."""
    cdef Problem lg
    if g.b_src != SRC_WIDE and not g.transposed:
        run_block(g, mp0, mp1, np0, np1, work)
        return
    lg = g[0]
    lg.c = work + KC * NC_PANELS * NR + KC * MC_PANELS * MR + 4 * MR * NR + 2 * (MR + NR)
    lg.ldc = (np1 - np0) * NR
    lg.c_row0 = mp0 * g.mr
    lg.c_col0 = np0 * NR
    lg.res = NULL
    lg.act = 0
    if g.transposed:
        run_block_t(&lg, mp0, mp1, np0, np1)
    else:
        run_block(&lg, mp0, mp1, np0, np1, work)
    if g.transposed:
        transpose_out(g, &lg, mp0 * g.mr, min(mp1 * g.mr, g.m), np0 * NR, min(np1 * NR, g.n))
    else:
        wide_compact(g, &lg, mp0 * MR, min(mp1 * MR, g.m), np0 * NR, min(np1 * NR, g.oh * g.wp))


cdef inline const float* padded_bias(const float* bias, Py_ssize_t valid, Py_ssize_t n, float* pad) noexcept nogil:
    """The n bias values a whole tile adds from `bias`: bias itself, or when only
    `valid` < n of them exist (the edge of M or N) a zero-padded copy in pad."""
    cdef Py_ssize_t j
    if valid >= n:
        return bias
    for j in range(n):
        pad[j] = bias[j] if j < valid else 0.0
    return pad


cdef inline void run_block_t(const Problem* g, Py_ssize_t mp0, Py_ssize_t mp1, Py_ssize_t np0,
                      Py_ssize_t np1) noexcept nogil:
    """The transposed conv into the thread's C block g.c (whole panels): C[p, ch]
    for pixel panels [mp0, mp1), channel panels [np0, np1), all of K. A is read
    in place (nrt_kernel_t: no packed copy); rows past the last pixel repeat it
    and channels past the last are the weight's zero columns: scratch that
    transpose_out never copies, so every tile is whole."""
    cdef Py_ssize_t off[WIDE_ROWS]
    cdef Py_ssize_t koff[KC]
    cdef float bias_pad[NR]
    cdef Py_ssize_t np_ = (g.n + NR - 1) // NR
    cdef Py_ssize_t r, p, oy, kb, pc, kc, kk, jp, ip, c0, pf, pf_share
    cdef int flags
    cdef const float* bp
    cdef const float* bcol
    cdef const float* pf_next
    cdef bint contiguous
    for r in range(mp0 * g.mr, mp1 * g.mr):
        p = min(r, g.m - 1)
        if g.a_src == SRC_MATRIX_T:
            off[r - mp0 * g.mr] = p
        else:
            oy = p // g.ow
            off[r - mp0 * g.mr] = oy * g.sh * g.wp + (p - oy * g.ow) * g.sw
    for kb in range((g.k + KC - 1) // KC):
        pc = kb * KC
        kc = min(<Py_ssize_t>KC, g.k - pc)
        flags = (K_FIRST if pc == 0 else 0) | (K_LAST if pc + kc == g.k else 0)
        if g.a_src == SRC_MATRIX_T:
            for kk in range(kc):
                koff[kk] = (pc + kk) * g.lda
        else:
            image_offsets(g, pc, kc, koff)
        pf_share = (NR * kc + (mp1 - mp0) * 16 - 1) // ((mp1 - mp0) * 16) * 16
        for jp in range(np0, np1):
            bp = g.b + pc * np_ * NR + jp * NR * kc
            c0 = jp * NR
            bcol = NULL
            if (flags & K_LAST) and g.bias != NULL:
                bcol = padded_bias(g.bias + c0, min(<Py_ssize_t>NR, g.n - c0), NR, bias_pad)
            # the weight (often streamed from memory): its next panel is fetched
            # into L2 while this one is used, in even shares
            pf_next = bp + NR * kc if jp + 1 < np1 else NULL
            for ip in range(mp0, mp1):
                if pf_next != NULL:
                    for pf in range((ip - mp0) * pf_share, min((ip - mp0 + 1) * pf_share, NR * kc), 16):
                        nrt_prefetch_l2(pf_next + pf, 0, 1)
                contiguous = g.a_src == SRC_MATRIX_T and (ip + 1) * g.mr <= g.m
                if g.mr < MR - 1:
                    nrt_kernel_t_few(<int>g.mr, kc, g.a, koff, &off[(ip - mp0) * g.mr], bp, cptr(g, ip * g.mr, c0),
                                     g.ldc, flags, bcol)
                elif g.mr == MR and contiguous:
                    nrt_kernel_tc(kc, g.a, koff, &off[(ip - mp0) * MR], bp, cptr(g, ip * MR, c0), g.ldc,
                                  flags, bcol)
                elif contiguous:
                    nrt_kernel_tc1(kc, g.a, koff, &off[(ip - mp0) * g.mr], bp, cptr(g, ip * g.mr, c0),
                                   g.ldc, flags, bcol)
                elif g.mr == MR:
                    nrt_kernel_t(kc, g.a, koff, &off[(ip - mp0) * MR], bp, cptr(g, ip * MR, c0), g.ldc,
                                 flags, bcol)
                else:
                    nrt_kernel_t1(kc, g.a, koff, &off[(ip - mp0) * g.mr], bp, cptr(g, ip * g.mr, c0),
                                  g.ldc, flags, bcol)


cdef inline void transpose_out(const Problem* g, const Problem* lg, Py_ssize_t r0, Py_ssize_t r1,
                        Py_ssize_t q0, Py_ssize_t q1) noexcept nogil:
    """y[ch, p] = act(t[p, ch] + res[ch, p]) for pixels [r0, r1), channels [q0, q1):
    a transpose in TT x TT register tiles (16 x 16 with AVX-512: whole cache
    lines on both sides; the edges float by float) that adds the residual and
    applies ReLU as it stores (other activations: a pass along y's rows after).
    Each residual element is read before its y element is written: the
    residual may be y's own buffer."""
    cdef Py_ssize_t cb, pb, ch, p, c1, p1
    cdef const float* src = cptr(lg, r0, q0)
    cdef const float* res = NULL
    cdef float* dst
    cdef float v
    cdef bint relu = g.act == ACT_RELU
    if g.act != 0 and not relu and g.res == NULL:
        # other activations on the C block, along its channel rows (one span of q1 - q0
        # values per pixel), before the transpose - a pure copy, so the same bits as
        # along y's pixel rows, which a 2x2 map makes 4 values long (a GELU on
        # 512 channels x 4 pixels took 10 us in 512 short calls)
        for p in range(r0, r1):
            act_span(g, <float*>src + (p - r0) * lg.ldc, q1 - q0)
    pb = r0
    while pb < r1:        # (while: Cython wants a literal range step)
        p1 = min(pb + TT, r1)
        cb = q0
        while cb < q1:
            c1 = min(cb + TT, q1)
            if p1 - pb == TT and c1 - cb == TT:
                nrt_transpose_tile(src + (pb - r0) * lg.ldc + (cb - q0), lg.ldc, g.c + cb * g.ldc + pb, g.ldc,
                                   g.res + cb * g.ldc + pb if g.res != NULL else NULL, relu)
            else:
                for ch in range(cb, c1):
                    dst = g.c + ch * g.ldc
                    if g.res != NULL:
                        res = g.res + ch * g.ldc
                    for p in range(pb, p1):
                        v = src[(p - r0) * lg.ldc + (ch - q0)]
                        if g.res != NULL:
                            v = v + res[p]
                        if relu and v < 0:
                            v = 0.0
                        dst[p] = v
            cb = c1
        pb = p1
    if g.act != 0 and not relu and g.res != NULL:
        for ch in range(q0, q1):
            act_span(g, g.c + ch * g.ldc + r0, r1 - r0)


cdef inline void wide_compact(const Problem* g, const Problem* lg, Py_ssize_t r0, Py_ssize_t r1,
                       Py_ssize_t q0, Py_ssize_t q1) noexcept nogil:
    """y[r, oy*ow + ox] = act(wide[r, oy*wp + ox] + res[r, oy*ow + ox]) for the wide
    columns [q0, q1) whose ox < ow (the rest are the padded width's spill)."""
    cdef Py_ssize_t oy = q0 // g.wp, a, b, r, j, n_
    cdef const float* src
    cdef const float* res
    cdef float* dst
    cdef float v
    while oy * g.wp < q1:
        a = max(q0, oy * g.wp)
        b = min(q1, oy * g.wp + g.ow)
        if b > a:
            n_ = b - a
            for r in range(r0, r1):
                src = cptr(lg, r, a)
                dst = g.c + r * g.ldc + oy * g.ow + (a - oy * g.wp)
                if g.res != NULL:
                    res = g.res + r * g.ldc + oy * g.ow + (a - oy * g.wp)
                    if g.act == ACT_RELU:
                        for j in range(n_):
                            v = src[j] + res[j]
                            dst[j] = <float>0.0 if v < <float>0.0 else v
                    else:
                        for j in range(n_):
                            dst[j] = src[j] + res[j]
                elif g.act == ACT_RELU:
                    for j in range(n_):
                        v = src[j]
                        dst[j] = <float>0.0 if v < <float>0.0 else v
                else:
                    memcpy(dst, src, n_ * sizeof(float))
                if g.act != 0 and g.act != ACT_RELU:
                    act_span(g, dst, n_)
        oy += 1


cdef inline void prefetch_rows(const float* p, Py_ssize_t ld, Py_ssize_t rows, Py_ssize_t cols) noexcept nogil:
    """Fetch rows x cols floats at p (row stride ld) into L2: every cache line a
    tile's row may touch (an unaligned NR-float row spans up to three)."""
    cdef Py_ssize_t i, j
    for i in range(rows):
        j = 0
        while j < cols:
            nrt_prefetch_l2(p + i * ld + j, 0, 2)
            j += 16
        nrt_prefetch_l2(p + i * ld + cols - 1, 0, 2)


cdef inline void tile_at(Py_ssize_t t, bint by_rows, Py_ssize_t ic, Py_ssize_t ic1, Py_ssize_t np0,
                         Py_ssize_t np1, Py_ssize_t* ip, Py_ssize_t* jp) noexcept nogil:
    """The t-th tile (M panel ip, N panel jp) of run_block's block of M panels [ic, ic1) by
    N panels [np0, np1): down the columns (each N panel through every M panel), or
    with by_rows along the rows (each M panel through every N panel)."""
    if by_rows:
        ip[0] = ic + t // (np1 - np0)
        jp[0] = np0 + t % (np1 - np0)
    else:
        jp[0] = np0 + t // (ic1 - ic)
        ip[0] = ic + t % (ic1 - ic)


cdef inline void prefetch_tile(const Problem* g, Py_ssize_t ip, Py_ssize_t jp, int flags) noexcept nogil:
    """Fetch the C rows (and on the last K block the residual rows) of tile (ip,
    jp) a tile or two before run_block computes it. The output is written once
    per K block, the residual read once: both mostly come from memory (a 56x56
    1x1 conv's y is 3 MB), and with a tile of FMAs ahead the fetch is done
    before the tile needs it. Only speed depends on it."""
    cdef Py_ssize_t r0 = ip * MR, c0 = jp * NR
    if r0 >= g.m or c0 >= g.n:
        return
    prefetch_rows(cptr(g, r0, c0), g.ldc, min(<Py_ssize_t>MR, g.m - r0), min(<Py_ssize_t>NR, g.n - c0))
    if (flags & K_LAST) and g.res != NULL:
        prefetch_rows(g.res + r0 * g.ldc + c0, g.ldc, min(<Py_ssize_t>MR, g.m - r0),
                      min(<Py_ssize_t>NR, g.n - c0))


cdef inline void run_block(const Problem* g, Py_ssize_t mp0, Py_ssize_t mp1, Py_ssize_t np0, Py_ssize_t np1,
                    float* work) noexcept nogil:
    cdef float* wb = work
    cdef float* wa = work + KC * NC_PANELS * NR
    cdef float* tile = wa + KC * MC_PANELS * MR
    cdef Py_ssize_t pc, kc, ic, ic1, jp, ip, r0, c0, mr, nr, i, pf, pf_share
    cdef const float* pf_next
    cdef Py_ssize_t a_stride, b_stride
    cdef const float* ablk
    cdef const float* bblk
    cdef const float* ap
    cdef const float* bp
    cdef const float* brow
    cdef const float* bcol
    cdef const float* res
    cdef int flags
    cdef Py_ssize_t kb
    cdef Py_ssize_t koff[KC]
    cdef float bias_pad[MR]
    cdef bint wide = g.b_src == SRC_WIDE
    # B packed per call (a 1x1 conv's image, implicit im2col, a matmul's activation) fits L2
    # whole, so tiles run along C's rows: a row of C is then written (and its residual read)
    # in one sequential run per block, NC_PANELS * NR floats, where down the columns every
    # tile starts MR new rows. A 1x1 conv of K = 64 into 3 MB of y (ResNet-50's 64 -> 256
    # at 56x56, residual and ReLU, 1 thread) is bound by those misses: 1116-1361 ->
    # 1015-1040 us, light_resnet50 86-87 -> 83-85 ms. A prepacked B (a weight) keeps
    # each panel in L1 down the columns.
    cdef bint by_rows = not wide and g.b_src != SRC_PACKED
    cdef Py_ssize_t pf_ahead = 2 if by_rows else 1
    cdef Py_ssize_t t, tiles, ip_pf, jp_pf
    cdef Py_ssize_t row_start[KC]      # (wide) where the K block's tap rows start: koff jumps
    cdef Py_ssize_t nrows = 0
    cdef const float* bq
    for kb in range((g.k + KC - 1) // KC):
        pc = kb * KC
        kc = min(<Py_ssize_t>KC, g.k - pc)
        flags = (K_FIRST if pc == 0 else 0) | (K_LAST if pc + kc == g.k else 0)
        if (flags & K_LAST) and g.act == ACT_RELU:
            flags |= K_RELU     # in the micro-kernel's store (edge tiles too: edge_tile runs it)
        if wide:
            # B rows read in place from the padded image (see nrt_kernel), every
            # tile (no packed copy at all)
            wide_offsets(g, pc, kc, koff)
            nrows = 0
            for i in range(kc):
                if i == 0 or koff[i] != koff[i - 1] + 1:
                    row_start[nrows] = koff[i]
                    nrows += 1
            bblk = wb
            b_stride = 0
        elif g.b_src == SRC_PACKED:
            bblk = g.b + pc * ((g.n + NR - 1) // NR) * NR + np0 * NR * kc
            b_stride = NR * kc
        else:
            if g.b_src == SRC_MATRIX:
                pack_b_matrix(g.b, g.ldb, g.n, np0 * NR, (np1 - np0) * NR, pc, kc, wb, NR * kc, NR)
            else:
                pack_b_padded(g, np0 * NR, (np1 - np0) * NR, pc, kc, wb, NR * kc)
            bblk = wb
            b_stride = NR * kc
        ic = mp0
        while ic < mp1:
            ic1 = min(ic + MC_PANELS, mp1)
            if g.a_src == SRC_PACKED:
                ablk = g.a + pc * ((g.m + MR - 1) // MR) * MR + ic * MR * kc
            else:       # SRC_MATRIX (the transposed conv's A: run_block_t)
                pack_a_panels(g.a, g.lda, g.m, ic * MR, (ic1 - ic) * MR, pc, kc, wa, MR * kc)
                ablk = wa
            a_stride = MR * kc
            tiles = (ic1 - ic) * (np1 - np0)
            pf_share = (NR * kc + (ic1 - ic) * 16 - 1) // ((ic1 - ic) * 16) * 16
            for t in range(tiles):
                tile_at(t, by_rows, ic, ic1, np0, np1, &ip, &jp)
                if wide and ip == ic and jp + 1 < np1:
                    # the next panel's image rows, one stream per channel and tap row of the K
                    # block (42 for a 3x3 conv's 14 channels): more than the hardware prefetchers
                    # follow, and the padded image (8.5 MB for 32 channels at 256 x 256) is past
                    # L2. 1 thread, 32 -> 16 3x3 at 256 x 256: 7.65 -> 7.02 ms.
                    for i in range(nrows):
                        bq = g.b + row_start[i] + (jp + 1) * NR
                        nrt_prefetch_l2(bq, 0, 3)
                        nrt_prefetch_l2(bq + 16, 0, 3)
                        nrt_prefetch_l2(bq + 32, 0, 3)
                bp = bblk + (jp - np0) * b_stride
                c0 = jp * NR
                nr = min(<Py_ssize_t>NR, g.n - c0)
                # a prepacked B (a weight, often streamed from memory; down the
                # columns): the next panel is fetched into L2 while this one is
                # used, in even shares
                if g.b_src == SRC_PACKED and jp + 1 < np1:
                    pf_next = bp + b_stride
                    for pf in range((ip - ic) * pf_share, min((ip - ic + 1) * pf_share, NR * kc), 16):
                        nrt_prefetch_l2(pf_next + pf, 0, 1)
                if t + pf_ahead < tiles:
                    tile_at(t + pf_ahead, by_rows, ic, ic1, np0, np1, &ip_pf, &jp_pf)
                    prefetch_tile(g, ip_pf, jp_pf, flags)
                ap = ablk + (ip - ic) * a_stride
                r0 = ip * MR
                mr = min(<Py_ssize_t>MR, g.m - r0)
                if wide:
                    # (whole panels: C is the thread's wide block, MR-row panels
                    # high, so an edge panel - M not a multiple of MR, a 3-channel
                    # RGB output - runs the same in-place kernel; its rows past M,
                    # the packed A's zero rows, are never copied out)
                    brow = NULL
                    if (flags & K_LAST) and g.bias != NULL:
                        brow = padded_bias(g.bias + r0, mr, MR, bias_pad)
                    nrt_kernel_off(kc, ap, g.b + c0, koff, cptr(g, r0, c0), g.ldc, flags, brow)
                elif mr == MR and nr == NR:
                    brow = NULL
                    bcol = NULL
                    res = NULL
                    if flags & K_LAST:
                        if g.bias != NULL:
                            if g.bias_axis == 0:
                                brow = g.bias + r0
                            else:
                                bcol = g.bias + c0
                        if g.res != NULL:
                            res = g.res + r0 * g.ldc + c0
                    nrt_kernel(kc, ap, bp, cptr(g, r0, c0), g.ldc, flags,
                               brow, bcol, res, g.ldc)
                else:
                    edge_tile(g, ap, bp, kc, flags, r0, c0, mr, nr, tile)
            if (flags & K_LAST) and g.act != 0 and not (flags & K_RELU):
                # the block's rows are final now (while in L2): one span per row of C, not one
                # per tile row (32 floats: the calls cost ConvNeXt's 96 -> 384 1x1 conv at 56 x 56
                # as much as its GELU, 2.7 -> 4.0 ms)
                c0 = np0 * NR
                nr = min(np1 * NR, g.n) - c0
                for i in range(ic * MR, min(ic1 * MR, g.m)):
                    act_span(g, cptr(g, i, c0), nr)
            ic = ic1


cdef struct Split:
    Py_ssize_t mb, nb       # job grid: M panel groups x N panel groups


cdef inline Py_ssize_t group_size(Py_ssize_t total, Py_ssize_t groups, Py_ssize_t idx) noexcept nogil:
    return total // groups + (1 if idx < total % groups else 0)


cdef inline Py_ssize_t group_start(Py_ssize_t total, Py_ssize_t groups, Py_ssize_t idx) noexcept nogil:
    return idx * (total // groups) + min(idx, total % groups)


cdef inline Split choose_split(const Problem* g, Py_ssize_t reps, int n_threads) noexcept nogil:
    """The job grid for n_threads: the one whose busiest thread (round robin over
    reps copies of the grid: images x groups) has the least estimated work,
    counting compute on padded panels plus per-job packing. Only the speed
    depends on it, never the result."""
    cdef Py_ssize_t mp = (g.m + g.mr - 1) // g.mr, np_ = (g.n + NR - 1) // NR
    # (a transposed conv's job must fit the thread's C block: NC_PANELS panels
    # wide, WIDE_ROWS rows high)
    cdef Py_ssize_t nb_min = (np_ + NC_PANELS - 1) // NC_PANELS if (g.b_src != SRC_PACKED or g.transposed) else 1
    cdef Py_ssize_t mb_min = (mp + WIDE_ROWS // g.mr - 1) // (WIDE_ROWS // g.mr) if g.transposed else 1
    cdef Py_ssize_t mb, nb, j, jobs, t, mrows, ncols, nb_max
    cdef double cost, worst, best = -1.0
    cdef double load[64]
    cdef Split s
    s.mb = mb_min
    s.nb = nb_min
    if n_threads <= 1:
        return s
    if n_threads > 64:
        n_threads = 64
    if mb_min * nb_min * reps >= 4 * n_threads:
        # plenty of jobs: a whole number of rounds when the N panels allow it
        nb = ((nb_min + n_threads - 1) // n_threads) * n_threads
        if reps == 1 and nb <= np_ and mb_min == 1:
            s.nb = nb
        return s
    nb_max = min(np_, nb_min + 2 * n_threads)
    for mb in range(mb_min, max(mb_min, min(mp, <Py_ssize_t>MAX_JOBS_M)) + 1):
        for nb in range(nb_min, nb_max + 1):
            for t in range(n_threads):
                load[t] = 0.0
            jobs = mb * nb * reps
            for j in range(jobs):
                mrows = group_size(mp, mb, (j // nb) % mb) * g.mr
                ncols = group_size(np_, nb, j % nb) * NR
                cost = mrows * ncols * <double>g.k / 32.0       # ~flops per cycle / 2
                if g.b_src != SRC_PACKED and g.b_src != SRC_WIDE:      # (wide: read in place)
                    cost += ncols * <double>g.k * (2.0 if g.b_src == SRC_IMAGE else 0.5)
                if g.a_src == SRC_MATRIX:
                    cost += mrows * <double>g.k
                cost += 2000.0                                  # per-job overhead
                load[j % n_threads] += cost
            worst = 0.0
            for t in range(n_threads):
                if load[t] > worst:
                    worst = load[t]
            if best < 0.0 or worst < best:
                best = worst
                s.mb = mb
                s.nb = nb
    return s


cdef inline float* thread_work(float* work, int tid) noexcept nogil:
    cdef float* w = work + tid * thread_workspace()
    return <float*>((<size_t>w + 63) & ~(<size_t>63))


cdef inline void run_jobs(Problem* g, Split s, Py_ssize_t job0, Py_ssize_t step, float* work) noexcept nogil:
    """Jobs job0, job0 + step, ... of one problem's grid."""
    cdef Py_ssize_t mp = (g.m + g.mr - 1) // g.mr, np_ = (g.n + NR - 1) // NR
    cdef Py_ssize_t j, im, in_, m0, n0
    j = job0
    while j < s.mb * s.nb:
        im = j // s.nb
        in_ = j - im * s.nb
        m0 = group_start(mp, s.mb, im)
        n0 = group_start(np_, s.nb, in_)
        run_job(g, m0, m0 + group_size(mp, s.mb, im), n0, n0 + group_size(np_, s.nb, in_), work)
        j += step


cdef inline void run_parallel(nrt_job_fn fn, void* ctx, long njobs, int nt) noexcept nogil:
    """fn(ctx, j, slot) for every job j on nt threads, slot being the thread's
    workspace index (nt: normrt._thread_policy's choice, passed down)."""
    cdef long j
    if nt <= 1 or njobs <= 1:
        for j in range(njobs):
            fn(ctx, j, 0)
    else:
        for j in prange(njobs, schedule="dynamic", num_threads=nt):
            fn(ctx, j, omp_get_thread_num())


cdef struct GemmJobs:
    Problem* g
    Split s
    float* work


cdef inline void gemm_job(void* ctx, long j, int slot) noexcept nogil:
    cdef GemmJobs* c = <GemmJobs*>ctx
    run_jobs(c.g, c.s, j, c.s.mb * c.s.nb, thread_work(c.work, slot))


cdef enum:
    GEMV_ROWS = 4       # products of at most this many rows against a prepacked B: run_gemv
    GEMV_JOB_PANELS = 8 # B panels per run_gemv job (gemm_microkernel.h's NRT_GEMV_PANELS)


cdef inline void gemv_job(void* ctx, long j, int slot) noexcept nogil:
    cdef Problem* g = <Problem*>ctx
    cdef Py_ssize_t np_ = (g.n + NR - 1) // NR
    nrt_gemv_panels(g.m, g.k, g.n, KC, g.a, g.lda, g.b, j * GEMV_JOB_PANELS,
                    min(np_, (j + 1) * GEMV_JOB_PANELS), g.c, g.ldc,
                    g.bias if g.bias != NULL and g.bias_axis == 0 else NULL,
                    g.bias if g.bias != NULL and g.bias_axis == 1 else NULL, g.res, g.act == ACT_RELU)


cdef inline bint run_gemv(Problem* g, int nt) noexcept nogil:
    """A product of at most GEMV_ROWS rows against a prepacked B (a batch-1 Linear layer):
    nrt_gemv_panels over groups of B panels, the packed GEMM's bits for each output, B read
    once; False (nothing done) for any other problem."""
    cdef Py_ssize_t np_, r
    if g.m > GEMV_ROWS or g.b_src != SRC_PACKED or g.a_src != SRC_MATRIX or g.transposed \
            or g.c_row0 != 0 or g.c_col0 != 0 or g.m == 0 or g.n == 0 or g.k == 0:
        return False
    np_ = (g.n + NR - 1) // NR
    run_parallel(gemv_job, g, (np_ + GEMV_JOB_PANELS - 1) // GEMV_JOB_PANELS, nt)
    if g.act != 0 and g.act != ACT_RELU:
        for r in range(g.m):
            act_span(g, g.c + r * g.ldc, g.n)
    return True


cdef inline void run_gemm(Problem* g, Split s, float* work, int nt) noexcept nogil:
    """One GEMM problem's job grid `s` on nt threads (gemm.gemm, prepared_gemm)."""
    cdef GemmJobs gj
    if run_gemv(g, nt):
        return
    gj.g = g
    gj.s = s
    gj.work = work
    run_parallel(gemm_job, &gj, s.mb * s.nb, nt)

"""2-D convolution on the packed GEMM (normrt.conv2d).

The convolution is C = W (M x C*kh*kw) @ im2col(x[n]) with the B panels packed
straight from the image (implicit im2col: stride, padding and dilation are
applied while packing, padding written as zeros), one image and group at a time.
Stride-1 convs compute on the padded width instead (see use_wide): there a B
row is NR contiguous floats of the zero-padded image, read in place. The
weights (A, or with the transposed conv B) are packed once by
normrt._kernels.gemm.pack_a / pack_at here.

Results never depend on the thread count (see gemm_core.pxd).

Python (normrt.api.conv) checks every argument; these kernels trust them
(sizes are re-checked here, cheaply).
"""
cimport numpy as cnp
from kernel_args cimport is_f32_c

from gemm_core cimport *

cnp.import_array()

def pack_at(const float[:, ::1] a,    # IN  (M, K)
            float[::1] out):          # OUT packed_b_size(K, M)
    """Pack A^T (conv weights (M, C*kh*kw), transposed) as B panels of NR output
    channels, K block by K block: the transposed conv's weight."""
    cdef Py_ssize_t m = a.shape[0], k = a.shape[1], pc, kc, p, kk, j, c0
    cdef Py_ssize_t np_ = (m + NR - 1) // NR
    cdef float* d
    if out.shape[0] != panels_b_size(k, m):
        raise ValueError("out must have packed_b_size(K, M) floats")
    if m == 0 or k == 0:
        return
    with nogil:
        pc = 0
        while pc < k:        # (while: a range step must be a literal)
            kc = min(<Py_ssize_t>KC, k - pc)
            for p in range(np_):
                d = &out[pc * np_ * NR + p * NR * kc]
                for kk in range(kc):
                    for j in range(NR):
                        c0 = p * NR + j
                        d[kk * NR + j] = a[c0, pc + kk] if c0 < m else 0.0
            pc += KC



def conv2d(const float[:, :, :, ::1] x,     # IN  (N, C, H, W)
           const float[::1] w,              # IN  group * packed_a_size(M/group, C/group*kh*kw)
           Py_ssize_t kh, Py_ssize_t kw,
           Py_ssize_t sh, Py_ssize_t sw,
           Py_ssize_t ph, Py_ssize_t pw,    # leading pads (trailing ones only shape the output)
           Py_ssize_t dh, Py_ssize_t dw,
           Py_ssize_t group,
           bint transposed,                 # w is group * packed_b_size(C/group*kh*kw, M/group)
                                            # (pack_at): y^T = im2col(x)^T W^T, see conv_transposed
           float[:, :, :, ::1] y,           # OUT (N, M, OH, OW); must not overlap x
           const float[::1] bias,           # IN  empty or (M,)
           const float[::1] residual,       # IN  empty or (N*M*OH*OW,); y itself only where
                                            # residual_may_be_y(...)
           int act,
           float[::1] work,                 # workspace_size(n_threads) floats
           int n_threads,
           int pad_mode=0,                  # 0 zeros, 1 reflect, 2 edge (NRT_PAD_*)
           Py_ssize_t pb=0, Py_ssize_t pr=0,    # trailing pads (the mirrored rows / columns)
           float alpha=0.01):               # act == LEAKY_RELU: its slope
    """y = act(conv(x, w) + bias + residual), one GEMM per image and group, on x padded by
    (ph, pw, pb, pr) with zeros or, with pad_mode, its mirrored or repeated border."""
    cdef ConvPlan p
    cdef Py_ssize_t nimg = x.shape[0], c = x.shape[1], h = x.shape[2], wd = x.shape[3]
    cdef Py_ssize_t m = y.shape[1], oh = y.shape[2], ow = y.shape[3]
    check_conv(nimg, c, h, wd, m, oh, ow, kh, kw, sh, sw, ph, pw, pb, pr, dh, dw, group, transposed, pad_mode,
               w.shape[0], bias.shape[0], residual.shape[0], y.shape[0], work.shape[0], n_threads)
    if nimg == 0 or m == 0 or oh * ow == 0:
        return
    plan_conv(&p, nimg, c, h, wd, m, oh, ow, kh, kw, sh, sw, ph, pw, pb, pr, dh, dw, group, transposed, act, alpha,
              pad_mode, n_threads)
    with nogil:
        run_conv(&p, &x[0, 0, 0, 0], &w[0], &y[0, 0, 0, 0], &bias[0] if bias.shape[0] else NULL,
                 &residual[0] if residual.shape[0] else NULL, &work[0])


cdef int check_conv(Py_ssize_t nimg, Py_ssize_t c, Py_ssize_t h, Py_ssize_t wd, Py_ssize_t m, Py_ssize_t oh,
                    Py_ssize_t ow, Py_ssize_t kh, Py_ssize_t kw, Py_ssize_t sh, Py_ssize_t sw, Py_ssize_t ph,
                    Py_ssize_t pw, Py_ssize_t pb, Py_ssize_t pr, Py_ssize_t dh, Py_ssize_t dw, Py_ssize_t group,
                    bint transposed, int pad_mode, Py_ssize_t w_size, Py_ssize_t bias_size, Py_ssize_t res_size,
                    Py_ssize_t y_images, Py_ssize_t work_size, int n_threads) except -1:
    """conv2d's (and PreparedConv's) re-check of the sizes Python checked."""
    cdef Py_ssize_t cg, mg, kg, wsize
    if group < 1 or c % group or m % group or y_images != nimg:
        raise ValueError("inconsistent group / channel counts")
    if pad_mode < 0 or pad_mode > 2 or min(ph, pw, pb, pr) < 0 or (
            pad_mode == 1 and (max(ph, pb) >= h or max(pw, pr) >= wd)):
        raise ValueError("bad pad_mode or pads (reflect needs pads < the image's size)")
    cg = c // group
    mg = m // group
    kg = cg * kh * kw
    wsize = panels_b_size(kg, mg) if transposed else panels_a_size(mg, kg)
    if w_size != group * wsize:
        raise ValueError("w has the wrong packed size")
    if bias_size != 0 and bias_size != m:
        raise ValueError("bias must have M elements")
    if res_size != 0 and res_size != nimg * m * oh * ow:
        raise ValueError("residual must have y's size")
    if work_size < conv_workspace_size(nimg, c, oh, ow, kh, kw, sh, sw, ph, pw, dh, dw, mg, n_threads):
        raise ValueError("work is smaller than conv_workspace_size(...)")
    return 0


cdef struct ConvJobs:
    const Problem* proto
    Split s
    const float* x
    const float* w
    float* y
    const float* bias
    const float* res
    Py_ssize_t nimg, group, cg, m, total
    float* work


cdef enum:
    PAD_PLANES = 16     # input planes per padding job
    PAD_SPLIT_FLOATS = 1 << 17  # a padded copy this large (512 KiB) is split in row bands


cdef struct PadJobs:
    const float* x
    float* xp
    Py_ssize_t planes, h, w, hp, wp, pt, pl, pb, pr, sh, sw
    int mode                # pad_mode: zeros (0) or nrt_pad_mirror's modes
    Py_ssize_t bands        # > 1: a job is one band of rows of one plane
    Py_ssize_t per_job      # else planes per job


cdef struct ConvPlan:
    Problem proto           # one image and group's GEMM (its pointers set per job)
    Split s
    PadJobs pj              # the padded copy (pointers set per run)
    bint padded
    long pad_jobs
    Py_ssize_t nimg, c, m, group, cg
    int nt


cdef void plan_conv(ConvPlan* p, Py_ssize_t nimg, Py_ssize_t c, Py_ssize_t h, Py_ssize_t wd, Py_ssize_t m,
                    Py_ssize_t oh, Py_ssize_t ow, Py_ssize_t kh, Py_ssize_t kw, Py_ssize_t sh, Py_ssize_t sw,
                    Py_ssize_t ph, Py_ssize_t pw, Py_ssize_t pb, Py_ssize_t pr, Py_ssize_t dh, Py_ssize_t dw,
                    Py_ssize_t group, bint transposed, int act, float alpha, int pad_mode,
                    int n_threads) noexcept nogil:
    """Everything of a conv but its arrays: the GEMM problem, the job grid, the padded copy's jobs
    (conv2d plans per call, PreparedConv once). Sizes checked (check_conv), not empty."""
    cdef Problem* proto = &p.proto
    cdef PadJobs* pj = &p.pj
    cdef Py_ssize_t mg = m // group, hp
    cdef bint direct, wide
    p.nimg, p.c, p.m, p.group, p.cg = nimg, c, m, group, c // group
    p.nt = max(1, min(n_threads, 64))
    # 1x1, stride 1, no padding: x[n] is B as it is
    direct = kh == 1 and kw == 1 and sh == 1 and sw == 1 and ph == 0 and pw == 0 and oh == h and ow == wd
    wide = use_wide(oh, ow, kh, kw, sh, sw, ph, pw, dh, dw, mg) and not transposed
    proto.transposed = transposed
    proto.m = mg
    proto.mr = MR
    proto.n = oh * ow
    proto.c_row0 = 0
    proto.c_col0 = 0
    # every conv but the direct 1x1 reads a zero-padded copy of x (x itself when
    # no tap leaves the image: then the row stride is x's width)
    proto.wp = padded_cols(ow, kw, sw, dw, wide)
    hp = padded_rows(oh, kh, sh, dh, wide, proto.wp)
    proto.pq = hp * proto.wp
    p.padded = not direct
    if not wide and ph == 0 and pw == 0 and hp <= h and proto.wp <= wd:
        p.padded = False
        proto.wp = wd
        hp = h
    proto.plane = hp * proto.wp * (sh * sw if wide else 1)
    if wide:
        # a whole number of NR panels (no edge tiles): the spare columns read
        # the padded input's extra rows and are thrown away like the spill
        proto.n = (oh * proto.wp + NR - 1) // NR * NR
    proto.k = p.cg * kh * kw
    proto.lda = proto.k
    proto.a_src = SRC_PACKED
    proto.ldb = h * wd
    proto.b_src = SRC_MATRIX if direct else (SRC_WIDE if wide else SRC_IMAGE)
    if transposed:
        proto.m = oh * ow
        proto.mr = t_panel_rows(oh * ow)
        proto.n = mg
        proto.a_src = SRC_MATRIX_T if direct else SRC_IMAGE_T
        proto.lda = h * wd
        proto.b_src = SRC_PACKED
    proto.ih = h
    proto.iw = wd
    proto.kh = kh
    proto.kw = kw
    proto.sh = sh
    proto.sw = sw
    proto.ph = ph
    proto.pw = pw
    proto.dh = dh
    proto.dw = dw
    proto.oh = oh
    proto.ow = ow
    proto.ldc = oh * ow
    proto.bias_axis = 1 if transposed else 0
    proto.act = act
    proto.alpha = alpha
    p.pad_jobs = 0
    if p.padded:
        pj.planes = nimg * c
        pj.h = h
        pj.w = wd
        pj.hp = hp
        pj.wp = proto.wp
        pj.pt = ph
        pj.pl = pw
        pj.pb = pb
        pj.pr = pr
        pj.mode = pad_mode
        pj.sh = sh if wide else 1
        pj.sw = sw if wide else 1
        pj.bands = pad_bands(nimg * c, hp, proto.wp, pj.sh * pj.sw, p.nt)
        pj.per_job = pad_job_planes(nimg * c, hp, proto.wp, pj.sh * pj.sw, p.nt)
        p.pad_jobs = nimg * c * pj.bands if pj.bands > 1 else (nimg * c + pj.per_job - 1) // pj.per_job
    p.s = choose_split(proto, nimg * group, p.nt)


cdef void run_conv(const ConvPlan* p, const float* x, const float* w, float* y, const float* bias, const float* res,
                   float* work) noexcept nogil:
    """The planned conv on these arrays: the padded copy (into work, after the threads' slices),
    then the (image, group, job) round robin."""
    cdef ConvJobs cj
    cdef PadJobs pj
    cdef const float* xp = x
    if p.padded:
        pj = p.pj           # (a copy: the plan stays read-only, a PreparedConv callable from any thread)
        pj.x = x
        pj.xp = thread_work(work, p.nt)
        xp = pj.xp
        run_parallel(pad_job, &pj, p.pad_jobs, p.nt)
    cj.proto = &p.proto
    cj.s = p.s
    cj.x = xp
    cj.w = w
    cj.y = y
    cj.bias = bias
    cj.res = res
    cj.nimg = p.nimg
    cj.group = p.group
    cj.cg = p.cg
    cj.m = p.m
    cj.total = p.s.mb * p.s.nb * p.nimg * p.group
    cj.work = work
    run_parallel(conv_job, &cj, cj.total, p.nt)


cdef class PreparedConv:
    """PreparedConv(w, x_shape, y_shape, kh, kw, sh, sw, ph, pw, dh, dw, group, transposed, bias,
    act, n_threads, pad_mode=0, pb=0, pr=0, alpha=0.01): conv2d with everything but its arrays
    bound once - w (the packed weight conv2d takes) and bias (float32 (M,) or None) kept - so
    that `prepared(x, y, work, residual=None)` only reads the arrays' data pointers (numpy's C
    API: no typed memoryviews, whose acquisition and conv2d's 20 arguments cost ~2 us, as much as
    a 96 -> 24 1x1 conv on a 4 x 4 map). The same plan_conv / run_conv as conv2d: the same bits.
    x: (N*C*H*W) float32 C-contiguous (copied if not); y and residual: y's size."""
    cdef ConvPlan p
    cdef object w, bias
    cdef Py_ssize_t x_size, y_size, work_size
    cdef bint empty

    def __init__(self, cnp.ndarray w, x_shape, y_shape, Py_ssize_t kh, Py_ssize_t kw, Py_ssize_t sh,
                 Py_ssize_t sw, Py_ssize_t ph, Py_ssize_t pw, Py_ssize_t dh, Py_ssize_t dw, Py_ssize_t group,
                 bint transposed, bias, int act, int n_threads, int pad_mode=0, Py_ssize_t pb=0,
                 Py_ssize_t pr=0, float alpha=0.01):
        cdef Py_ssize_t nimg, c, h, wd, m, oh, ow
        nimg, c, h, wd = x_shape
        _, m, oh, ow = y_shape
        if cnp.PyArray_TYPE(w) != cnp.NPY_FLOAT32 or not cnp.PyArray_IS_C_CONTIGUOUS(w):
            raise ValueError("PreparedConv: w must be a contiguous float32 array")
        if bias is not None and not is_f32_c(bias, m):
            raise ValueError(f"PreparedConv: bias must be a contiguous float32 array of {m} elements or None")
        self.work_size = conv_workspace_size(nimg, c, oh, ow, kh, kw, sh, sw, ph, pw, dh, dw,
                                             m // max(1, group), n_threads)
        check_conv(nimg, c, h, wd, m, oh, ow, kh, kw, sh, sw, ph, pw, pb, pr, dh, dw, group, transposed, pad_mode,
                   cnp.PyArray_SIZE(w), 0 if bias is None else m, 0, y_shape[0], self.work_size, n_threads)
        self.w, self.bias = w, bias
        self.x_size, self.y_size = nimg * c * h * wd, nimg * m * oh * ow
        self.empty = nimg == 0 or m == 0 or oh * ow == 0
        if not self.empty:
            plan_conv(&self.p, nimg, c, h, wd, m, oh, ow, kh, kw, sh, sw, ph, pw, pb, pr, dh, dw, group,
                      transposed, act, alpha, pad_mode, n_threads)

    @property
    def workspace_size(self):
        """Floats of the `work` array a call needs."""
        return self.work_size

    def __call__(self, x, y, work, residual=None):
        cdef const float* res = NULL
        if not is_f32_c(x, self.x_size):
            import numpy as np
            x = np.ascontiguousarray(x, dtype=np.float32)
            if cnp.PyArray_SIZE(<cnp.ndarray>x) != self.x_size:
                raise ValueError(f"PreparedConv: x must have {self.x_size} elements")
        if not is_f32_c(y, self.y_size) or not cnp.PyArray_ISWRITEABLE(<cnp.ndarray>y):
            raise ValueError(f"PreparedConv: y must be a writeable C-contiguous float32 array of {self.y_size} "
                             f"elements")
        if type(work) is not cnp.ndarray or not is_f32_c(work, cnp.PyArray_SIZE(<cnp.ndarray>work)) \
                or cnp.PyArray_SIZE(<cnp.ndarray>work) < self.work_size \
                or not cnp.PyArray_ISWRITEABLE(<cnp.ndarray>work):
            raise ValueError(f"PreparedConv: work must be a writeable float32 array of >= {self.work_size} floats")
        if residual is not None:
            if not is_f32_c(residual, self.y_size):
                raise ValueError(f"PreparedConv: residual must be a C-contiguous float32 array of {self.y_size} "
                                 f"elements")
            res = <const float*>cnp.PyArray_DATA(<cnp.ndarray>residual)
        if self.empty:
            return y
        with nogil:
            run_conv(&self.p, <const float*>cnp.PyArray_DATA(<cnp.ndarray>x),
                     <const float*>cnp.PyArray_DATA(<cnp.ndarray>self.w), <float*>cnp.PyArray_DATA(<cnp.ndarray>y),
                     NULL if self.bias is None else <const float*>cnp.PyArray_DATA(<cnp.ndarray>self.bias), res,
                     <float*>cnp.PyArray_DATA(<cnp.ndarray>work))
        return y


# the conv / GEMM epilogues' LeakyRelu code (gemm_core.pxd), for normrt.conv2d
LEAKY_RELU = ACT_LEAKY_RELU


cdef void conv_job(void* ctx, long j, int slot) noexcept nogil:
    cdef ConvJobs* c = <ConvJobs*>ctx
    conv_jobs(c.proto, c.s, c.x, c.w, c.y, c.bias, c.res, c.nimg, c.group, c.cg, c.m,
              j, c.total, c.work, slot)


cdef inline Py_ssize_t pad_bands(Py_ssize_t planes, Py_ssize_t hp, Py_ssize_t wp, Py_ssize_t phases,
                                  int nt) noexcept nogil:
    """Row bands per plane for the padding jobs: 1 (jobs of PAD_PLANES whole planes) unless
    there are too few planes to keep nt threads busy and the copy is large - a 3-channel
    stem's image, which one thread copied while the other waited (3 planes of 518 x 518 for
    SegFormer's 7x7 stride-4 stem at 512 x 512: 2 threads 1.09 -> 0.95 ms). A small copy stays
    whole: split, a 3x3 stem's 3 planes of 67 x 66 took 30 us longer (72-82 -> 104-114 us).
    Bands of at least 8 rows; the stride-phase copy (phases > 1) keeps whole planes."""
    if nt <= 1 or phases > 1 or planes >= 4 * nt or planes * hp * wp < PAD_SPLIT_FLOATS:
        return 1
    return max(1, min((4 * nt + planes - 1) // planes, hp // 8))


cdef inline Py_ssize_t pad_job_planes(Py_ssize_t planes, Py_ssize_t hp, Py_ssize_t wp, Py_ssize_t phases,
                                      int nt) noexcept nogil:
    """Planes per padding job: PAD_PLANES, or for a large copy (PAD_SPLIT_FLOATS) of fewer than
    4 * nt * PAD_PLANES planes as many as make 4 jobs per thread. With 16 planes per job, the 16
    planes of 258 x 258 a style-transfer net's stride-2 conv pads (4.2 MB) were one job: one
    thread copied while the other waited (16 -> 32 3x3/2 at 256 x 256, 2 threads, in the model:
    ~2.0 ms against onnxruntime's 0.85)."""
    if nt <= 1 or planes * hp * wp * phases < PAD_SPLIT_FLOATS:
        return PAD_PLANES
    return max(1, min(<Py_ssize_t>PAD_PLANES, planes // (4 * nt)))


cdef void pad_job(void* ctx, long j, int slot) noexcept nogil:
    cdef PadJobs* c = <PadJobs*>ctx
    cdef Py_ssize_t p, b
    if c.mode != 0:
        if c.bands > 1:
            p = j // c.bands
            b = j - p * c.bands
            nrt_pad_mirror(c.x, c.xp, p, p + 1, b * c.hp // c.bands, (b + 1) * c.hp // c.bands, c.h, c.w, c.hp,
                           c.wp, c.pt, c.pl, c.pb, c.pr, 1, 1, c.mode)
        else:
            nrt_pad_mirror(c.x, c.xp, j * c.per_job, min((j + 1) * c.per_job, c.planes), 0, c.hp, c.h, c.w,
                           c.hp, c.wp, c.pt, c.pl, c.pb, c.pr, c.sh, c.sw, c.mode)
        return
    if c.bands > 1:
        p = j // c.bands
        b = j - p * c.bands
        nrt_pad_rows(c.x, c.xp, p, b * c.hp // c.bands, (b + 1) * c.hp // c.bands, c.h, c.w, c.hp, c.wp,
                     c.pt, c.pl)
        return
    if c.sh * c.sw > 1:
        if nrt_pad_phases(c.x, c.xp, j * c.per_job, min((j + 1) * c.per_job, c.planes), c.h, c.w, c.hp, c.wp,
                          c.pt, c.pl, c.sh, c.sw):
            return
        pad_phases(c.x, c.xp, j * c.per_job, min((j + 1) * c.per_job, c.planes), c.h, c.w, c.hp, c.wp,
                   c.pt, c.pl, c.sh, c.sw)
        return
    nrt_pad_planes(c.x, c.xp, j * c.per_job, min((j + 1) * c.per_job, c.planes), c.h, c.w, c.hp, c.wp,
               c.pt, c.pl)



cdef inline bint use_wide(Py_ssize_t oh, Py_ssize_t ow, Py_ssize_t kh, Py_ssize_t kw, Py_ssize_t sh,
                          Py_ssize_t sw, Py_ssize_t ph, Py_ssize_t pw, Py_ssize_t dh, Py_ssize_t dw,
                          Py_ssize_t mg) noexcept nogil:
    """Convs with taps to shift: B from a zero-padded copy of the input, output
    on its padded width (wp = ow + (kw-1)*dw columns, the last ones thrown
    away) - every B row is then NR contiguous floats of the padded image,
    which the micro-kernel reads in place (no packing), where implicit im2col
    costs about as much as a few output channels' worth of FMAs. A strided
    conv's copy is split by stride phase (pad_phases), which makes its taps
    plain shifts too (wp = ow + (kw-1)*dw // sw). Chosen when the thrown-away
    columns cost less than that; not for 1x1 kernels without padding (stride
    1: x is B as it is; strided: the copy would be mostly unused phases), nor
    for strided kernels that do not overlap (kernel <= stride, no spill: a
    patch embedding): their phase copy, sh * sw phases each padded by the rows
    a whole NR panel reads, was 3x the input for a 4x4 stride-4 conv on a 16 x
    16 map, gathered four floats at a time (36 us for 65k multiply-adds;
    implicit im2col: 18 us)."""
    cdef Py_ssize_t spill = (kw - 1) * dw // sw, wp = ow + (kw - 1) * dw // sw
    if kh == 1 and kw == 1 and (sh != 1 or sw != 1 or (ph == 0 and pw == 0)):
        return False
    if ((mg + MR - 1) // MR) * MR > WIDE_ROWS:
        return False
    if spill == 0 and (sh > 1 or sw > 1):
        return False
    return spill * 8 <= wp or (mg <= 128 and spill * 3 <= wp)


def conv_transposed(Py_ssize_t oh, Py_ssize_t ow, Py_ssize_t kh, Py_ssize_t kw, Py_ssize_t sh,
                    Py_ssize_t sw, Py_ssize_t ph, Py_ssize_t pw, Py_ssize_t dh, Py_ssize_t dw,
                    Py_ssize_t mg, Py_ssize_t cg):
    """Whether conv2d should run transposed (y^T = im2col(x)^T W^T, weight from
    pack_at; mg output, cg input channels per group), which needs at least NR
    output channels to fill its weight panels. Only the speed depends on it:
    both products give the same bits (each lane's K sum in the same order).

    Transposed, the weight is the vector operand (aligned panel loads) and the
    pixels are broadcast; on the padded width the image rows are the vector
    operand, read in place at unaligned offsets. Measured (1 thread, AVX-512,
    ms direct / transposed): 3x3 3->32 at 256x256 14.5 / 10.9, the 7x7
    stride-2 stem 2.76 / 2.64, 3x3 128->32 at 14x14 0.162 / 0.150 and at
    56x56 2.31 / 2.25, 64->64 at 56x56 2.19 / 2.21 (4% fewer padded elements
    transposed). So against the padded width: transposed when it computes
    fewer padded elements. A 1x1 conv read as a matrix packs its B (C x
    pixels) on every call, which the transposed product does not: transposed
    when C >= 2 M (256->64 at 56x56 1.07 / 0.98, 512->128 at 28x28 1.08 /
    1.01; 64->256 0.94 / 1.26), or when the pixels pad badly to NR-wide
    panels (7x7 = 49 pixels: 64 columns of work, 49 rows transposed). And a
    strided conv without padding transposed: it reads x in place, no copy and
    no packing, where implicit im2col gathers every strided tap (8x8 stride-8
    32->32 at 64x64: 166 -> 93 us, 4x4 stride-4 3->96 at 224x224: 354 -> 324)."""
    cdef Py_ssize_t pix = oh * ow, wp = padded_cols(ow, kw, sw, dw, True)
    cdef Py_ssize_t tr_rows = (pix + t_panel_rows(pix) - 1) // t_panel_rows(pix) * t_panel_rows(pix)
    cdef Py_ssize_t tr_work = tr_rows * (((mg + NR - 1) // NR) * NR)
    if mg < NR:
        return False
    if use_wide(oh, ow, kh, kw, sh, sw, ph, pw, dh, dw, mg):
        return tr_work < ((oh * wp + NR - 1) // NR) * NR * (((mg + MR - 1) // MR) * MR)
    if kh == 1 and kw == 1 and sh == 1 and sw == 1 and ph == 0 and pw == 0 and cg >= 2 * mg:
        return True
    if ph == 0 and pw == 0 and (sh > 1 or sw > 1):
        return True
    return ((pix + NR - 1) // NR) * NR * 10 > tr_rows * 11


def residual_may_be_y(Py_ssize_t oh, Py_ssize_t ow, Py_ssize_t kh, Py_ssize_t kw, Py_ssize_t sh,
                      Py_ssize_t sw, Py_ssize_t ph, Py_ssize_t pw, Py_ssize_t dh, Py_ssize_t dw,
                      Py_ssize_t mg, Py_ssize_t cg, bint transposed):
    """Whether conv2d may be given y itself as its residual (y written into the
    residual's buffer: no second output array, and the residual's cache lines
    are the ones written). Each residual element must be read before its y
    element is first written: true where the K sum runs in the thread's C
    block (transposed, wide: transpose_out / wide_compact add it while
    copying out), and where it runs in y with one K block (the tile reads its
    residual in the store that first writes it). With several K blocks y holds
    partial sums before the residual is read."""
    if transposed or use_wide(oh, ow, kh, kw, sh, sw, ph, pw, dh, dw, mg):
        return True
    return cg * kh * kw <= KC


cdef inline Py_ssize_t t_panel_rows(Py_ssize_t pix) noexcept nogil:
    """Pixels per A panel of the transposed conv: MR, or MR - 1 when that pads
    the pixel count by 5% less (49 = 7 x 7: 49 rows, not 56). Measured (1x1,
    256 -> 1024 channels): 7 rows of 196 pixels are 3% slower than 200 in 8. At
    most 4 pixels: 1, 2 or 4 rows (nrt_kernel_t_few), not a tile of repeats."""
    if pix <= 4 and MR > 4:
        return 1 if pix == 1 else (2 if pix == 2 else 4)
    if (pix + MR - 2) // (MR - 1) * (MR - 1) * 20 < (pix + MR - 1) // MR * MR * 19:
        return MR - 1
    return MR


def conv_workspace_size(Py_ssize_t nimg, Py_ssize_t c, Py_ssize_t oh, Py_ssize_t ow, Py_ssize_t kh,
                        Py_ssize_t kw, Py_ssize_t sh, Py_ssize_t sw, Py_ssize_t ph, Py_ssize_t pw,
                        Py_ssize_t dh, Py_ssize_t dw, Py_ssize_t mg, int n_threads):
    """Floats of workspace conv2d needs: the threads' slices, then the padded input."""
    cdef Py_ssize_t size = (max(1, n_threads) + 1) * thread_workspace()
    cdef bint wide = use_wide(oh, ow, kh, kw, sh, sw, ph, pw, dh, dw, mg)
    # (room for the padded input always: whether a 1x1 conv reads x directly
    # also depends on its trailing pads)
    size += nimg * c * padded_rows(oh, kh, sh, dh, wide, padded_cols(ow, kw, sw, dw, wide)) \
        * padded_cols(ow, kw, sw, dw, wide) * (sh * sw if wide else 1)
    return size


cdef inline Py_ssize_t padded_rows(Py_ssize_t oh, Py_ssize_t kh, Py_ssize_t sh, Py_ssize_t dh,
                                   bint wide, Py_ssize_t wp) noexcept nogil:
    """Rows of the zero-padded input: what the taps reach (wide: of each stride
    phase, plus the rows the last wide row's spill and the columns up to a
    whole NR panel read)."""
    if wide:
        return oh + (kh - 1) * dh // sh + 1 + (NR + wp - 1) // wp
    return (oh - 1) * sh + (kh - 1) * dh + 1


cdef inline Py_ssize_t padded_cols(Py_ssize_t ow, Py_ssize_t kw, Py_ssize_t sw, Py_ssize_t dw,
                                   bint wide) noexcept nogil:
    return ow + (kw - 1) * dw // sw if wide else (ow - 1) * sw + (kw - 1) * dw + 1


cdef void pad_phases(const float* x, float* xp, Py_ssize_t p0, Py_ssize_t p1, Py_ssize_t h, Py_ssize_t w,
                     Py_ssize_t hq, Py_ssize_t wq, Py_ssize_t pt, Py_ssize_t pl, Py_ssize_t sh,
                     Py_ssize_t sw) noexcept nogil:
    """Planes [p0, p1) of x (h, w), zero-padded by (pt, pl) in front, split by
    stride phase: xp[p, a, b, i, j] = xpad[p, i*sh + a, j*sw + b] (each phase
    hq x wq, zeros outside x). A stride-(sh, sw) tap is then a plain shift
    within one phase (wide_offsets)."""
    cdef Py_ssize_t p, a, b, i, j, sy, sx
    cdef const float* src
    cdef float* row
    for p in range(p0, p1):
        for a in range(sh):
            for b in range(sw):
                for i in range(hq):
                    row = xp + (((p * sh + a) * sw + b) * hq + i) * wq
                    sy = i * sh + a - pt
                    if sy < 0 or sy >= h:
                        for j in range(wq):
                            row[j] = 0.0
                        continue
                    src = x + (p * h + sy) * w
                    for j in range(wq):
                        sx = j * sw + b - pl
                        row[j] = src[sx] if 0 <= sx < w else 0.0


cdef void conv_jobs(const Problem* proto, Split s, const float* x, const float* w, float* y,
                    const float* bias, const float* res, Py_ssize_t nimg, Py_ssize_t group,
                    Py_ssize_t cg, Py_ssize_t m, Py_ssize_t first, Py_ssize_t step,
                    float* work, int tid) noexcept nogil:
    """Jobs first, first + step, ... of the (image, group, job) round robin: every
    thread stays busy even for many small images."""
    cdef Problem g = proto[0]
    cdef Py_ssize_t jobs = s.mb * s.nb, pix = g.oh * g.ow, img, gi, j
    cdef Py_ssize_t mg = g.n if g.transposed else g.m
    cdef Py_ssize_t wsize = (((mg + NR - 1) // NR) * NR * g.k if g.transposed
                             else ((mg + MR - 1) // MR) * MR * g.k)
    cdef Py_ssize_t plane = g.plane if (g.b_src == SRC_WIDE or g.b_src == SRC_IMAGE or g.a_src == SRC_IMAGE_T) \
        else g.ih * g.iw
    cdef Py_ssize_t total = jobs * group * nimg
    j = first
    while j < total:
        img = j // (jobs * group)
        gi = (j // jobs) % group
        if g.transposed:
            g.b = w + gi * wsize
            g.a = x + (img * group + gi) * cg * plane
        else:
            g.a = w + gi * wsize
            g.b = x + (img * group + gi) * cg * plane
        g.c = y + (img * m + gi * mg) * pix
        g.bias = bias + gi * mg if bias != NULL else NULL
        g.res = res + (img * m + gi * mg) * pix if res != NULL else NULL
        run_jobs(&g, s, j % jobs, jobs, thread_work(work, tid))
        j += step

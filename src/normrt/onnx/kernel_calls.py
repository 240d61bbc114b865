"""The kernel call of each normrt op: a normrt-domain node's decoded attributes and runtime
inputs -> the call of its normrt kernel function.

One function per op of domain.py (which names them on its NormOp specs, with the
op's thread policy and weight packing): `call(attrs, n_out, *inputs[, packed=])`
returns one value per node output. Kept apart from domain.py so the spec table
can name them without the passes that build nodes importing the kernels.
"""
import numpy as np

from .._checks import activation as act_code
from .._kernels import elementwise as _kelementwise
from .._kernels import int8_gemm as _kint8
from .._kernels import nbits_gemm as _knbits
from .._thread_policy import compute_bound, elementwise_program, memory_bound, nbits_product
from ..api.conv import PAD_MODES as _PAD_MODES
from ..errors import ModelError
from ._graph import np_dtype as _np_dtype
from ._masks import causal_pattern_reason
from .elementwise_program import compile_program
from .ops import _blas
from .ops.activations import leaky_relu_float32
from .ops.conv import on_small_conv, small_conv_epilogue
from .ops.quantize import dynamic_range
from .ops.shape_ops import mirror_pad


def _normrt():
    # imported lazily: normrt/__init__ imports this package
    import normrt
    return normrt


def _act(attrs):
    return attrs.get("activation") or None


def batch_norm(attrs, n_out, x, scale, bias, mean, var):
    nr = _normrt()
    eps = attrs.get("epsilon", 1e-5)
    if not attrs.get("training_mode", 0):
        return (nr.batch_norm(x, scale, bias, mean, var, eps=eps, activation=_act(attrs)),)
    batch_mean, batch_var = nr.batch_norm_stats(x, dtype=np.float64)   # no float32 rounding of the mean
    y = nr.batch_norm(x, scale, bias, batch_mean, batch_var, eps=eps, activation=_act(attrs))
    if n_out == 1:
        return (y,)
    momentum = attrs.get("momentum", 0.9)
    running_mean = mean * momentum + batch_mean * (1 - momentum)
    running_var = var * momentum + batch_var * (1 - momentum)
    return y, running_mean.astype(mean.dtype, copy=False), running_var.astype(var.dtype, copy=False)


def _residual_sum(x, residual):
    """(buffer the kernel writes x + residual into, or None; the residual_sum output)."""
    if residual is None:          # nothing added: the sum is X itself
        return None, np.array(x, copy=True)
    buf = np.empty(np.shape(x), np.asarray(x).dtype)
    return buf, buf


def _broadcast_residual(x, residual):
    """(x, residual) for the norm's kernel: a residual of another shape than x (residual_norm fuses
    an Add whose summands shape inference could not prove alike: a dynamic-axes export's dims
    under different names, a position table broadcast over the batch) is added here as the Add
    would, the sum becoming the kernel's X: the same result, the kernel's fused add skipped."""
    if residual is None or np.shape(residual) == np.shape(x):
        return x, residual
    return np.add(x, residual), None


def layer_norm(attrs, n_out, x, scale=None, bias=None, residual=None):
    x, residual = _broadcast_residual(x, residual)
    # statistics are accumulated in float64 whatever stash_type says (at least its precision)
    kw = dict(axis=attrs.get("axis", -1), eps=attrs.get("epsilon", 1e-5),
              residual=residual, activation=_act(attrs))
    extra = ()
    if n_out > 3:                 # residual_sum requested
        kw["residual_out"], total = _residual_sum(x, residual)
        extra = (total,)
    if attrs.get("_stats", n_out > 1):
        y, mean, inv_std = _normrt().layer_norm(x, scale, bias, return_stats=True, **kw)
        stats_dtype = _np_dtype(attrs.get("stash_type", 1)) or x.dtype
        return (y, mean.astype(stats_dtype, copy=False), inv_std.astype(stats_dtype, copy=False)) + extra
    return (_normrt().layer_norm(x, scale, bias, **kw), None, None) + extra


def rms_norm(attrs, n_out, x, scale=None, residual=None):
    x, residual = _broadcast_residual(x, residual)
    buf, total = _residual_sum(x, residual) if n_out > 1 else (None, None)
    y = _normrt().rms_norm(x, scale, axis=attrs.get("axis", -1), eps=attrs.get("epsilon", 1e-5),
                           residual=residual, residual_out=buf)
    return (y,) if n_out == 1 else (y, total)


def channel_norm(attrs, n_out, x, scale=None, bias=None):
    mode = attrs.get("mode", "layer")
    mode = mode.decode() if isinstance(mode, bytes) else mode
    fn = {"layer": _normrt().layer_norm_2d, "rms": _normrt().rms_norm_2d}.get(mode)
    if fn is None:
        raise ModelError(f"normrt ChannelNorm mode must be 'layer' or 'rms', got {mode!r}")
    return (fn(x, scale, bias, eps=attrs.get("epsilon", 1e-6), activation=_act(attrs)),)


def instance_norm(attrs, n_out, x, scale=None, bias=None):
    return (_normrt().instance_norm(x, scale, bias, eps=attrs.get("epsilon", 1e-5), activation=_act(attrs)),)


def group_norm(attrs, n_out, x, scale=None, bias=None):
    groups = attrs["num_groups"]
    if x.ndim > 1:
        scale, bias = _per_group(attrs, x.shape[1], scale, bias)
    return (_normrt().group_norm(x, groups, scale, bias, eps=attrs.get("epsilon", 1e-5),
                                 activation=_act(attrs)),)


def mean_variance_norm(attrs, n_out, x):
    return (_normrt().mean_variance_norm(x, axes=tuple(attrs.get("axes", (0, 2, 3))),
                                         eps=attrs.get("epsilon", 1e-9)),)


def lp_norm(attrs, n_out, x):
    nan_on_zero = attrs.get("nan_on_zero", 0)
    if type(nan_on_zero) is not int or nan_on_zero not in (0, 1):
        raise ModelError(f"normrt LpNorm nan_on_zero must be 0 or 1, got {nan_on_zero!r}")
    return (_normrt().lp_norm(x, p=attrs.get("p", 2), axis=attrs.get("axis", -1),
                              eps=attrs.get("epsilon", 0.0), nan_on_zero=bool(nan_on_zero)),)


def grn(attrs, n_out, x, gamma, beta):
    return (_normrt().grn(x, gamma, beta, eps=attrs.get("epsilon", 1e-6)),)


def lrn(attrs, n_out, x):
    return (_normrt().lrn(x, attrs["size"], alpha=attrs.get("alpha", 1e-4), beta=attrs.get("beta", 0.75),
                          bias=attrs.get("bias", 1.0)),)


def adain(attrs, n_out, content, style):
    return (_normrt().adain(content, style, eps=attrs.get("epsilon", 1e-5),
                            unbiased=bool(attrs.get("unbiased", 0))),)


# normrt Attention layouts -> the axes that view the input as (B, H, S, D) (K: as Kt (B, H, D, S))
_ATTENTION_VIEWS = {"BHSD": (0, 1, 2, 3), "BSHD": (0, 2, 1, 3)}
_ATTENTION_KT_VIEWS = {"BHDS": (0, 1, 2, 3), "BHSD": (0, 1, 3, 2), "BSHD": (0, 2, 3, 1)}


def _split_heads(x, heads, name):
    """(B, S, heads * D) -> the view (B, S, heads, D)."""
    if heads < 0 or np.ndim(x) != 3 or x.shape[2] % heads:
        raise ModelError(f"normrt Attention: {name} must be (B, S, {heads} * D) with its heads merged, "
                         f"got shape {np.shape(x)}")
    return x.reshape(x.shape[0], x.shape[1], heads, x.shape[2] // heads)


def _broadcast_attention(q, kt, v, bias):
    """q (B, H, S, D), kt (B, H, D, T), v (B, H, T, Dv) and the bias with their MatMuls'
    broadcasting of the batch and head dims, and a bias's rows raising the query rows, as views
    (zero strides, no copy). attention_decomposed fuses a graph whose dims shape inference could
    not name (a dynamic-axes export builds its head Reshapes from Shape values): the fused node
    computes what the MatMuls, the Add and the Softmax would have for whatever dims arrive. One
    K/V head shared by every query head stays one (the kernel's grouped path reads it once)."""
    b4 = None if bias is None or np.ndim(bias) > 4 else (1,) * (4 - np.ndim(bias)) + np.shape(bias)
    try:
        lead = np.broadcast_shapes(q.shape[:2], kt.shape[:2], v.shape[:2], *([b4[:2]] if b4 else []))
        rows = np.broadcast_shapes(q.shape[2:3], b4[2:3]) if b4 else q.shape[2:3]
    except ValueError:
        return q, kt, v     # the kernel's checks name the mismatch
    if q.shape[:3] != lead + rows:
        q = np.broadcast_to(q, lead + rows + q.shape[3:])
    kv_lead = (lead[0], 1) if kt.shape[1] == v.shape[1] == 1 else lead
    if kt.shape[:2] != kv_lead:
        kt = np.broadcast_to(kt, kv_lead + kt.shape[2:])
    if v.shape[:2] != kv_lead:
        v = np.broadcast_to(v, kv_lead + v.shape[2:])
    return q, kt, v


def _nan_rows(y, bias):
    """y (..., Sq, Dv) with NaN in the rows whose bias is -inf for every key: what Softmax gives
    a row of -inf scores (the kernel writes zeros there, torch's masked rows)."""
    bias = np.asarray(bias)
    if bias.size and np.min(bias) > -np.inf:
        # no -inf at all (the usual run-time bias: WavLM's gated positions): one vectorized pass
        # instead of isneginf's two, a boolean array and a reduction per row (~40 us a call for
        # 4 x 159 x 159)
        return y
    rows = np.isneginf(bias).all(axis=-1)
    if rows.any():
        y[np.broadcast_to(rows, y.shape[:-1])] = np.nan
    return y


def attention(attrs, n_out, q, kt, v, bias=None):
    y, heads_view = _attention(attrs, q, kt, v, bias)
    if attrs.get("nan_rows", 0) and bias is not None:
        _nan_rows(heads_view, bias)
    return (y,)


def _attention(attrs, q, kt, v, bias):
    """(Y as the node returns it, Y's (B, H, Sq, Dv) view of the same memory)."""
    from ..api.attention import attention_kt
    layouts = [attrs.get(k, d) for k, d in (("q_layout", "BHSD"), ("k_layout", "BHDS"),
                                             ("v_layout", "BHSD"), ("y_layout", "BHSD"))]
    scale, causal = attrs["scale"], bool(attrs.get("is_causal", 0))
    q_heads, kv_heads, merge = attrs.get("q_heads", 0), attrs.get("kv_heads", 0), attrs.get("merge_heads", 0)
    if (q_heads and layouts[0] != "BSHD") or (kv_heads and (layouts[1], layouts[2]) != ("BSHD", "BSHD")) \
            or (merge and layouts[3] != "BSHD"):
        raise ModelError(f"normrt Attention: merged heads need the BSHD layouts, got {layouts}")
    if q_heads:
        q = _split_heads(q, q_heads, "Q")
    if kv_heads:
        kt, v = _split_heads(kt, kv_heads, "K"), _split_heads(v, kv_heads, "V")
    three_d = np.ndim(q) == 3          # (batch * heads, S, D): one batch of heads
    if three_d:
        if layouts != ["BHSD", "BHDS", "BHSD", "BHSD"]:
            raise ModelError(f"normrt Attention with 3-D inputs takes the default layouts, got {layouts}")
        q, kt, v = _broadcast_attention(q[None], kt[None], v[None], None if bias is None else bias[None])
        y = attention_kt(q, kt, v, scale=scale, bias=bias, is_causal=causal)
        return y[0], y
    q_l, k_l, v_l, y_l = layouts
    try:
        q = q.transpose(_ATTENTION_VIEWS[q_l])
        kt = kt.transpose(_ATTENTION_KT_VIEWS[k_l])
        v = v.transpose(_ATTENTION_VIEWS[v_l])
        y_view = _ATTENTION_VIEWS[y_l]
    except KeyError as e:
        raise ModelError(f"normrt Attention: unknown layout {e.args[0]!r} (q/v/y: BHSD, BSHD; "
                         f"k: BHDS, BHSD, BSHD)") from None
    except ValueError as e:            # transpose of an array whose rank is not 4
        raise ModelError(f"normrt Attention: inputs must have rank 3 or 4 ({e})") from None
    q, kt, v = _broadcast_attention(q, kt, v, bias)
    if y_view == (0, 1, 2, 3):
        y = attention_kt(q, kt, v, scale=scale, bias=bias, is_causal=causal)
        return y, y
    # Y allocated in its layout (contiguous: a Reshape merging its heads is a view);
    # the kernel writes it through the transposed view
    y = np.empty((q.shape[0], q.shape[2], q.shape[1], v.shape[3]), q.dtype)
    attention_kt(q, kt, v, scale=scale, bias=bias, is_causal=causal, out=y.transpose(y_view))
    return (y.reshape(y.shape[0], y.shape[1], y.shape[2] * y.shape[3]) if merge else y), y.transpose(y_view)


def conv(attrs, n_out, x, w, bias=None, residual=None, *, packed=None):
    pad_mode = attrs.get("pad_mode", "constant")
    pad_mode = pad_mode.decode() if isinstance(pad_mode, bytes) else pad_mode
    if pad_mode not in _PAD_MODES:
        raise ModelError(f"normrt Conv: pad_mode {pad_mode!r}, expected one of {sorted(_PAD_MODES)}")
    if getattr(x, "ndim", 0) == 3:
        # 1-D (N, C, L): the 2-D conv of one row, as the standard Conv runs it
        strides, pads, dilations = (list(attrs.get(k) or d) for k, d in (("strides", [1]), ("pads", [0, 0]),
                                                                        ("dilations", [1])))
        if len(strides) != 1 or len(pads) != 2 or len(dilations) != 1:
            raise ModelError(f"normrt Conv on a 1-D X: strides {strides}, dilations {dilations} (one value "
                             f"each) and pads {pads} (two) expected")
        attrs2 = dict(attrs, strides=[1] + strides, pads=[0, pads[0], 0, pads[1]], dilations=[1] + dilations)
        w2 = w[:, :, None] if getattr(w, "ndim", 0) == 3 else w
        r2 = residual[:, :, None] if getattr(residual, "ndim", 0) == 3 else residual
        (y,) = conv(attrs2, n_out, x[:, :, None], w2, bias, r2, packed=packed)
        return (y.reshape(y.shape[0], y.shape[1], y.shape[3]),)
    act = _act(attrs)
    leaky = act == "leaky_relu"
    alpha = float(attrs.get("alpha", 0.01))
    if residual is None:
        # a depthwise conv and its activation (conv_epilogue) on small_conv, as the standard Conv;
        # mirrored pads there as the unfused Pad wrote them (small_conv reads zeros in place), a
        # LeakyRelu (not one of small_conv's activations) after it as the standalone op computes it
        pads = tuple(attrs["pads"])
        xs = x
        if pad_mode != "constant" and isinstance(x, np.ndarray) and x.ndim == 4 and getattr(w, "ndim", 0) == 4 \
                and on_small_conv(w.shape[1], attrs["group"]):
            xs = mirror_pad(x, (0, 0, pads[0], pads[1]), (0, 0, pads[2], pads[3]), pad_mode)
            pads = (0, 0, 0, 0)
        if xs is not x or pad_mode == "constant":
            y = small_conv_epilogue(xs, w, bias, tuple(attrs["strides"]), pads, tuple(attrs["dilations"]),
                                    attrs["group"], 0 if leaky else act_code(act))
            if y is not None:
                return (leaky_relu_float32(y, alpha) if leaky else y,)
    try:
        return (_normrt().conv2d(x, w if packed is None else packed, bias, strides=tuple(attrs["strides"]),
                                 pads=tuple(attrs["pads"]), dilations=tuple(attrs["dilations"]),
                                 group=attrs["group"], activation=act, residual=residual,
                                 pad_mode=pad_mode, alpha=alpha),)
    except (TypeError, ValueError) as e:
        if leaky and "alpha" in str(e):
            raise ModelError(f"normrt Conv: {e}") from None
        raise


def _product_shape(a, b):
    """The shape of a @ b (MatMul's broadcasting of the leading dims), or None."""
    try:
        if np.ndim(b) == 2 and np.ndim(a) >= 1:
            return np.shape(a)[:-1] + (np.shape(b)[1],)
        if np.ndim(a) >= 2 and np.ndim(b) >= 2:
            return np.broadcast_shapes(np.shape(a)[:-2], np.shape(b)[:-2]) + (np.shape(a)[-2], np.shape(b)[-1])
    except ValueError:
        pass
    return None


def matmul(attrs, n_out, a, b, bias=None, residual=None, *, packed=None):
    if residual is not None and np.shape(residual) != _product_shape(a, b):
        # a residual of another shape (matmul_epilogue fuses an Add whose shapes shape inference
        # could not prove alike): added as the Add would, then the activation
        (y,) = matmul(dict(attrs, activation=""), n_out, a, b, bias, packed=packed)
        y = np.add(y, residual)
        act = _act(attrs)
        if act == "leaky_relu":
            y = np.where(y < 0, y * np.float32(attrs.get("alpha", 0.01)), y)
        elif act:
            y = _normrt().activate(y, act)
        return (y,)
    try:
        return (_normrt().matmul(a, b if packed is None else packed, bias=bias, activation=_act(attrs),
                                 residual=residual, alpha=float(attrs.get("alpha", 0.01))),)
    except (TypeError, ValueError) as e:
        if _act(attrs) == "leaky_relu" and "alpha" in str(e):
            raise ModelError(f"normrt MatMul: {e}") from None
        raise


def pack_matmul(w, attrs):
    """MatMul's packed weight, from the cache the numpy MatMul op uses too (one packed copy per initializer)."""
    return _blas.packed_matmul_weight(w)


def qmatmul(attrs, n_out, a, w, w_scale, bias=None, *, packed=None):
    """normrt::QMatMul (quantized_products): a (..., K) float32 quantized to 8-bit codes on the
    attributes' grid (dynamic=1: DynamicQuantizeLinear's grid of a's own range, the kernel's
    nrt_q_dynamic_grid = ops.quantize.dynamic_range) times the int8 weight w (K, N): exact int32
    sums scaled by the activation scale times w_scale (one value or N), plus bias, then the
    activation (pyx/int8_gemm)."""
    pk, colsum = packed if packed is not None else pack_qmatmul(w, attrs)
    K, N = w.shape
    a = np.ascontiguousarray(a, np.float32)
    if a.ndim < 2 or a.shape[-1] != K:
        raise ModelError(f"normrt QMatMul: A must be (..., {K}), got {a.shape}")
    grid = None if attrs.get("dynamic", 0) else (attrs["a_scale"], attrs["a_zero"], attrs["a_lo"], attrs["a_hi"])
    y = np.empty(a.shape[:-1] + (N,), np.float32)
    rows = int(np.prod(a.shape[:-1], dtype=np.int64))
    bias = np.zeros(0, np.float32) if bias is None else np.ascontiguousarray(bias, np.float32).reshape(-1)
    w_scale = np.ascontiguousarray(np.broadcast_to(np.asarray(w_scale, np.float32).reshape(-1), (N,)))
    used = _kint8.qmatmul(a.reshape(rows, K), pk, colsum, K, grid, w_scale, bias, y.reshape(rows, N),
                          act_code(_act(attrs)), compute_bound(2 * rows * K * N))
    if used is None:
        # all of `a` within a subnormal range of 0: no 8-bit grid that fine in the kernel. The
        # integer graph as the spec computes it (rare: numpy): DynamicQuantizeLinear's codes (a
        # NaN quotient cast to 0, as numpy casts it), the exact integer product, the scales
        scale, zero = dynamic_range(a)
        with np.errstate(all="ignore"):
            codes = np.nan_to_num(np.clip(np.rint(a.reshape(rows, K) / scale) + zero, 0, 255), nan=0.0)
        acc = (codes.astype(np.int64) - int(zero)) @ w.astype(np.int64)
        out = acc.astype(np.float32) * (np.float32(scale) * w_scale)
        if bias.size:
            out = out + bias
        y = (_normrt().activate(out, _act(attrs)) if _act(attrs) else out).reshape(y.shape).astype(np.float32)
    return (y,)


def qbatched_matmul(attrs, n_out, a, b):
    """normrt::QBatchedMatMul (quantized_products): a (..., M, K) @ b (..., K, N), both activations
    on their 8-bit grids (the attributes), the same leading dims: exact int32 sums of their codes
    scaled by the two scales (pyx/int8_gemm qmatmul_batched)."""
    a = np.ascontiguousarray(a, np.float32)
    b = np.ascontiguousarray(b, np.float32)
    if a.ndim < 2 or b.ndim != a.ndim or a.shape[:-2] != b.shape[:-2] or a.shape[-1] != b.shape[-2]:
        raise ModelError(f"normrt QBatchedMatMul: A {a.shape} and B {b.shape} are not (..., M, K) and (..., K, N)")
    M, K, N = a.shape[-2], a.shape[-1], b.shape[-1]
    count = int(np.prod(a.shape[:-2], dtype=np.int64))
    y = np.empty(a.shape[:-1] + (N,), np.float32)
    grid_a = (attrs["a_scale"], attrs["a_zero"], attrs["a_lo"], attrs["a_hi"])
    grid_b = (attrs["b_scale"], attrs["b_zero"], attrs["b_lo"], attrs["b_hi"])
    _kint8.qmatmul_batched(a.reshape(count, M, K), b.reshape(count, K, N), grid_a, grid_b, y.reshape(count, M, N),
                           compute_bound(2 * count * M * K * N))
    return (y,)


def pack_qmatmul(w, attrs):
    """QMatMul's int8 weight in the kernel's panels, with its column sums (once per initializer)."""
    return _blas.packed_int8_weight(w)


def matmul_nbits(attrs, n_out, a, b, scales, zero_points=None, bias=None, *, packed=None):
    """normrt::MatMulNBits (matmul_nbits): a (..., K) float32 times the weight of 4-bit codes b
    (MatMulNBits' B, [N, k_blocks, block_size / 2] uint8), w[k, n] = (code - zero) * scale per block
    of block_size rows of K (scales, zero_points float32 [N, k_blocks]; no zero points: 8), plus
    bias (pyx/nbits_gemm). The codes are read as they are, never dequantized to a float32 weight.
    accuracy_level 4 (onnxruntime's int8 compute): A's rows are quantized to int8 per block and
    multiplied in integers, as onnxruntime does, where the CPU has VNNI (int8_path)."""
    K, N, block = attrs["K"], attrs["N"], attrs["block_size"]
    int8_a = attrs.get("accuracy_level", 0) == 4
    k_blocks = -(-K // block)
    codes = packed if packed is not None else pack_matmul_nbits(b, attrs)
    scale = _blas.packed_nbits_blocks(scales, N, k_blocks)
    zero = None if zero_points is None else _blas.packed_nbits_blocks(zero_points, N, k_blocks)
    a = np.ascontiguousarray(a, np.float32)
    if a.ndim < 1 or a.shape[-1] != K:
        raise ModelError(f"normrt MatMulNBits: A must be (..., {K}), got {a.shape}")
    y = np.empty(a.shape[:-1] + (N,), np.float32)
    rows = int(np.prod(a.shape[:-1], dtype=np.int64))
    if bias is not None:
        bias = np.ascontiguousarray(bias, np.float32).reshape(-1)
    integer = int8_a and _knbits.int8_path(block)
    _knbits.matmul_nbits(a.reshape(rows, K), codes, scale, zero, 8.0, block, bias, y.reshape(rows, N),
                         nbits_product(rows, K, N, rows <= _knbits.DIRECT_MAX_ROWS, integer), integer)
    return (y,)


def pack_matmul_nbits(b, attrs):
    """MatMulNBits' 4-bit codes in the kernel's tiles (once per initializer)."""
    return _blas.packed_nbits_codes(b, attrs["K"])


def pack_conv(w, attrs):
    """Conv's packed weight (packed per group), from the numpy Conv op's cache (a 1-D conv's
    (M, C/group, k) weight as the (M, C/group, 1, k) of its one-row 2-D conv)."""
    if w.ndim == 3:
        return _blas.packed_conv_weight(w, attrs.get("group", 1), one_row=True)
    return _blas.packed_conv_weight(w, attrs.get("group", 1))


def _program(attrs, n_inputs):
    """An Elementwise node's compiled program: compiled at the first call and kept on the node's
    attributes (it depends on them only), a quantized tail as its grid's table."""
    program = attrs.get("_program")
    if program is None or program.n_inputs != n_inputs:
        program = attrs["_program"] = compile_program(attrs["ops"], attrs["args"], attrs.get("constants", ()),
                                                      n_inputs, tables=True)
    return program


def elementwise(attrs, n_out, *inputs):
    """The fused elementwise kernel over the inputs' broadcast shape (float32)."""
    program = _program(attrs, len(inputs))
    try:
        # the kernel checks the inputs (float32, broadcasting): no per-call Python checks here
        out = np.empty(_kelementwise.broadcast_shape(inputs, attrs.get("out_rank", 0)), np.float32)
        _kelementwise.run_program(program.code, program.constants, program.n_registers, inputs, out,
                                  elementwise_program(out.size, program.ns_per_element), program.grids)
    except (ValueError, AttributeError) as e:
        raise ModelError(f"normrt Elementwise: {e}") from e
    return (out,)


def prepared_elementwise(attrs, n_inputs, out_size):
    """run(inputs tuple, out) -> out: `elementwise` above for a specialized plan, its program compiled
    and its threads decided once (the kernel still checks the inputs' shapes against out's)."""
    program = _program(attrs, n_inputs)
    code, constants, n_regs, grids = program.code, program.constants, program.n_registers, program.grids
    nt = elementwise_program(out_size, program.ns_per_element)
    kernel = _kelementwise.run_program

    def run(inputs, out):
        kernel(code, constants, n_regs, inputs, out, nt, grids)
        return out
    return run


def _float32_x(op_type, x):
    if x.dtype != np.float32:
        raise ModelError(f"normrt {op_type}: X must be float32, got {x.dtype}")
    return np.ascontiguousarray(x)


def _fake_quant(x, scale, zero, lo, hi):
    """float32 x on the integer grid (scale, zero point, [lo, hi]) and back, one kernel pass."""
    out = np.empty(x.shape, np.float32)
    _kelementwise.fake_quant(x.reshape(-1), out.reshape(-1), scale, zero, lo, hi, memory_bound(x.size))
    return (out,)


def fake_quant(attrs, n_out, x):
    """QuantizeLinear -> DequantizeLinear with per-tensor constants (qdq_pairs): the pair's values
    bitwise (pyx/elementwise.pyx fake_quant)."""
    return _fake_quant(_float32_x("FakeQuant", x), attrs["scale"], attrs.get("zero_point", 0.0), attrs["lo"],
                       attrs["hi"])


def prepared_fake_quant(attrs, x_shape, dtype, n_threads):
    """run(x, y) -> y: `fake_quant` above for a specialized plan, its grid and threads decided
    once (a static QDQ transformer runs a dozen per layer on a few thousand values each: the
    generic call's checks and allocation were most of their ~2.6 us)."""
    if dtype != np.float32:
        return None
    size = int(np.prod(x_shape, dtype=np.int64))
    grid = (float(attrs["scale"]), float(attrs.get("zero_point", 0.0)), float(attrs["lo"]), float(attrs["hi"]))
    nt = min(n_threads, memory_bound(size))
    kernel = _kelementwise.fake_quant

    def run(x, y):
        kernel(np.ascontiguousarray(x).reshape(-1), y.reshape(-1), *grid, nt)
        return y
    return run


def dynamic_fake_quant(attrs, n_out, x):
    """DequantizeLinear(DynamicQuantizeLinear(x)): the op's own range and the FakeQuant pass in one
    kernel call (pyx/elementwise.pyx, the range as ops.quantize.dynamic_range computes it) -
    bitwise the two ops' values, signed zeros of a range narrower than the subnormals included."""
    x = _float32_x("DynamicFakeQuant", x)
    out = np.empty(x.shape, np.float32)
    _kelementwise.dynamic_fake_quant(x.reshape(-1), out.reshape(-1), memory_bound(x.size))
    return (out,)


# ------------------------------------------------------------ prepared calls (specialized plans)
# A specialized plan knows its values' shapes and its constants before the first run: these
# build, once, a callable doing only the kernel call of the op above for those shapes. Every
# check and decision the op's call makes per run (layouts, head splits, bias broadcast,
# threads) is made here instead; the kernel and its arguments are the same, so the results
# are bitwise the generic call's. None when a form is not covered (the plan keeps the call).

def prepared_attention(attrs, q_shape, kt_shape, v_shape, bias, n_threads, bias_shape=None):
    """run(q, kt, v) -> Y for float32 inputs of these shapes (bias: a constant or None), or with
    `bias_shape` (a float32 bias computed at run time, of that shape: a padding mask, a masked_fill
    condition's Where) run(q, kt, v, bias): the generic call's checks and broadcasts of the bias
    made once, a decode step of a small decoder spends ~20 us less per attention."""
    from ..api.attention import _NO_BIAS, _bias4
    from .._kernels import attention as _ka
    from .._thread_policy import compute_bound
    layouts = [attrs.get(k, d) for k, d in (("q_layout", "BHSD"), ("k_layout", "BHDS"),
                                             ("v_layout", "BHSD"), ("y_layout", "BHSD"))]
    if any(l not in _ATTENTION_VIEWS for l in (layouts[0], layouts[2], layouts[3])) \
            or layouts[1] not in _ATTENTION_KT_VIEWS:
        return None
    q_heads, kv_heads, merge = attrs.get("q_heads", 0), attrs.get("kv_heads", 0), attrs.get("merge_heads", 0)
    if (q_heads and layouts[0] != "BSHD") or (kv_heads and (layouts[1], layouts[2]) != ("BSHD", "BSHD")) \
            or (merge and layouts[3] != "BSHD"):
        return None

    def split(shape, heads):
        if not heads:
            return tuple(shape)
        if len(shape) != 3 or heads < 0 or shape[2] % heads:
            return None
        return (shape[0], shape[1], heads, shape[2] // heads)

    q4, kt4, v4 = split(q_shape, q_heads), split(kt_shape, kv_heads), split(v_shape, kv_heads)
    if q4 is None or kt4 is None or v4 is None or not len(q4) == len(kt4) == len(v4) == 4:
        return None
    qv, kv, vv, yv = (_ATTENTION_VIEWS[layouts[0]], _ATTENTION_KT_VIEWS[layouts[1]],
                      _ATTENTION_VIEWS[layouts[2]], _ATTENTION_VIEWS[layouts[3]])
    B, Hq, Sq, D = (q4[a] for a in qv)
    Bk, Hkv, Dk, Skv = (kt4[a] for a in kv)
    Bv, Hv, Sv, Dv = (v4[a] for a in vv)
    scale, causal = float(attrs["scale"]), bool(attrs.get("is_causal", 0))
    if bias is not None and not causal and np.ndim(bias) >= 2 and np.shape(bias)[-2:] == (Sq, Skv) \
            and causal_pattern_reason(np.asarray(bias)) is None:
        # a causal mask the plan folded from shapes (a decoder exported with dynamic axes builds
        # it at run time, so causal_mask could not take it at load): the kernel's causal loop,
        # which skips the masked half, not a bias read for every score
        causal, bias = True, None
    # batch dims that broadcast (a dynamic-axes export's fused node): the generic call
    if Bk != B or Bv != B or Dk != D or (Hv, Sv) != (Hkv, Skv) or not Hkv or Hq % Hkv or 0 in (B, Hq, Sq, Dv):
        return None
    nan_rows = bool(attrs.get("nan_rows", 0))
    b4 = _NO_BIAS
    if bias is not None:
        try:
            b4 = _bias4(bias, (B, Hq, Sq, Skv), np.float32)
        except (TypeError, ValueError):
            return None
        # the rows the constant hides from every key (nan_rows: NaN there, as _nan_rows writes)
        dead = np.broadcast_to(np.isneginf(b4).all(axis=-1), (B, Hq, Sq)) if nan_rows else None
        nan_rows = dead is not None and bool(dead.any())
    elif bias_shape is not None:
        # the bias's (1|B, 1|Hq, 1|Sq, Skv) form, as _bias4 makes it, checked on a stand-in now
        if len(bias_shape) > 4:
            return None
        shape4 = (1,) * (4 - len(bias_shape)) + tuple(int(d) for d in bias_shape)
        try:
            _bias4(np.zeros(shape4, np.float32), (B, Hq, Sq, Skv), np.float32)
        except ValueError:
            return None
        keys_broadcast = shape4[3] != Skv
    else:
        nan_rows = False        # no bias (or a causal one the kernel's loop takes): no row hidden
    nt = min(n_threads, compute_bound(2 * B * Hq * Sq * Skv * (D + Dv)))
    kernel = _ka.attention_fwd
    y_shape = (B, Sq, Hq, Dv) if yv != (0, 1, 2, 3) else (B, Hq, Sq, Dv)
    merged = (B, Sq, Hq * Dv) if merge else y_shape
    k_to_bhsd = tuple(kv[a] for a in (0, 1, 3, 2))     # (B, Hkv, Skv, D): the kernel's K view

    def run(q, kt, v, bias=None):
        """(bias: the run-time bias, when the plan was prepared with bias_shape)"""
        if q_heads:
            q = q.reshape(q4)
        if kv_heads:
            kt, v = kt.reshape(kt4), v.reshape(v4)
        b = b4
        if bias is not None:
            b = bias.reshape(shape4)
            b = np.ascontiguousarray(np.broadcast_to(b, shape4[:3] + (Skv,)) if keys_broadcast else b)
        y = np.empty(y_shape, np.float32)
        kernel(q.transpose(qv), kt.transpose(k_to_bhsd), v.transpose(vv), b, y.transpose(yv), scale, causal, nt)
        if nan_rows:
            if bias is None:
                y.transpose(yv)[dead] = np.nan
            else:
                _nan_rows(y.transpose(yv), b)
        return y.reshape(merged) if merge else y

    return run


def prepared_channel_norm(attrs, x_shape, dtype, scale, bias, n_threads):
    """run(x, y) -> y for a ChannelNorm of float32/float64 x (`x_shape`, rank >= 3) with constant
    scale and bias (or None): channel_norm's kernel call above, its arguments checked, its mode,
    activation and threads decided once (a ConvNeXt block's norm on a 64 x 4 x 4 map: ~2 us of
    the ~5 us the generic call spends). None where the generic call's checks would refuse."""
    from .. import _checks as chk
    from ..api.channel_norm import _channel_param
    from .._kernels import channel_norm as _kcn
    dtype = np.dtype(dtype)
    mode = attrs.get("mode", "layer")
    mode = mode.decode() if isinstance(mode, bytes) else mode
    if dtype not in (np.float32, np.float64) or len(x_shape) < 3 or mode not in ("layer", "rms"):
        return None
    N, C = int(x_shape[0]), int(x_shape[1])
    S = int(np.prod(x_shape[2:], dtype=np.int64))
    if not (N and C and S):
        return None
    try:
        eps = chk.eps_value(attrs.get("epsilon", 1e-6))
        act = chk.activation(_act(attrs))
        scale = _channel_param(scale, "scale", C, dtype, len(x_shape))
        bias = _channel_param(bias, "bias", C, dtype, len(x_shape))
    except (TypeError, ValueError):
        return None
    nt = min(n_threads, memory_bound(N * C * S))
    rms = mode == "rms"
    kernel = _kcn.channel_norm

    def run(x, y):
        kernel(np.ascontiguousarray(x).reshape(N, C, S), y.reshape(N, C, S), scale, bias, eps, act, rms, nt)
        return y
    return run


def _per_group(attrs, C, scale, bias):
    """GroupNormalization-18's per-group scale/bias (per_group_affine=1) as per-channel ones."""
    groups = attrs["num_groups"]
    if not attrs.get("per_group_affine", 0):
        return scale, bias
    reps = C // groups if groups else 1
    return (None if scale is None else np.repeat(scale, reps)), (None if bias is None else np.repeat(bias, reps))


def _prepared_rows(x_shape, dtype, groups, scale, bias, eps, activation, min_rank, n_threads):
    """run(x, y) -> y: group_norm's kernel call (api/group_norm.py's _rows_kernel) for x of
    `x_shape` and `dtype` with constant scale and bias (C,) (or None), its arguments checked and
    converted once (float16/bfloat16 x: float32 parameters, as the generic call widens them).
    None where the generic call's checks would refuse (it then raises what they find)."""
    from .. import _checks as chk
    from ..api import group_norm as _gn
    from .._kernels import group_norm as _kgn
    dtype = np.dtype(dtype)
    kind = chk.half_kind(dtype)
    if (dtype not in chk.FLOAT_DTYPES and kind < 0) or len(x_shape) < min_rank:
        return None
    shape = tuple(int(d) for d in x_shape)
    N, C = shape[0], shape[1]
    size = int(np.prod(shape, dtype=np.int64))
    try:
        G = _gn._num_groups(groups, C)
        pdt = _gn._param_dtype(dtype)
        scale = chk.param(scale, "scale", (C,), pdt)
        bias = chk.param(bias, "bias", (C,), pdt)
        eps = chk.eps_value(eps)
        act = chk.activation(activation)
    except (TypeError, ValueError):
        return None
    if not (N and size):
        return None
    R = N * G
    L = size // R
    scale, bias = _gn._flat(scale, pdt), _gn._flat(bias, pdt)
    nt = min(n_threads, memory_bound(size))
    kernel = _kgn.group_norm
    nseg, k = C // G, max(kind, 0)
    if kind >= 0:
        def run(x, y):
            # the kernel reads float16/bfloat16 as their 16-bit words
            kernel(np.ascontiguousarray(x).view(np.uint16).reshape(R, L), scale, bias,
                   y.view(np.uint16).reshape(R, L), nseg, eps, act, nt, k)
            return y
    else:
        def run(x, y):
            kernel(np.ascontiguousarray(x).reshape(R, L), scale, bias, y.reshape(R, L), nseg, eps, act, nt, 0)
            return y
    return run


def prepared_group_norm(attrs, x_shape, dtype, scale, bias, n_threads):
    """run(x, y) -> y for a GroupNorm with constant scale and bias (or None): a UNet's GroupNorm
    on a 16 x 8 x 8 map normalizes in ~1.5 us, and the generic call spent ~5 us around it."""
    if len(x_shape) < 2:
        return None
    scale, bias = _per_group(attrs, int(x_shape[1]), scale, bias)
    return _prepared_rows(x_shape, dtype, attrs["num_groups"], scale, bias, attrs.get("epsilon", 1e-5),
                          _act(attrs), 2, n_threads)


def prepared_instance_norm(attrs, x_shape, dtype, scale, bias, n_threads):
    """run(x, y) -> y for an InstanceNorm with constant per-channel scale and bias (or None):
    GroupNorm's kernel call with one channel per group, as instance_norm makes it."""
    if len(x_shape) < 3:
        return None
    return _prepared_rows(x_shape, dtype, int(x_shape[1]), scale, bias, attrs.get("epsilon", 1e-5),
                          _act(attrs), 3, n_threads)


def prepared_batch_norm(attrs, x_shape, dtype, scale, bias, mean, var, n_threads):
    """run(x, y) -> y for an inference BatchNorm with constant statistics: batch_norm's kernel
    call (api/batch_norm.py), its four vectors checked and given one dtype once."""
    from .. import _checks as chk
    from ..api import batch_norm as _bn
    from .._kernels import batch_norm as _kbn
    dtype = np.dtype(dtype)
    kind = chk.half_kind(dtype)
    if attrs.get("training_mode", 0) or (dtype not in chk.FLOAT_DTYPES and kind < 0) or len(x_shape) < 2 \
            or any(p is None for p in (scale, bias, mean, var)):
        return None
    shape = tuple(int(d) for d in x_shape)
    N, C = shape[0], shape[1]
    S = int(np.prod(shape[2:], dtype=np.int64))
    try:
        params = [_bn._statistic(p, name, C) for p, name in
                  ((scale, "scale"), (bias, "bias"), (mean, "mean"), (var, "var"))]
        eps = chk.eps_value(attrs.get("epsilon", 1e-5))
        act = chk.activation(_act(attrs))
    except (TypeError, ValueError):
        return None
    if any(p.dtype != params[0].dtype for p in params):
        params = [p.astype(np.float64) for p in params]     # (as batch_norm: one type for all four)
    if not (N and C and S):
        return None
    nt = min(n_threads, memory_bound(N * C * S))
    kernel = _kbn.batch_norm
    sc, bi, mu, va = params
    if kind >= 0:
        def run(x, y):
            kernel(np.ascontiguousarray(x).view(np.uint16).reshape(N, C, S), sc, bi, mu, va, eps,
                   y.view(np.uint16).reshape(N, C, S), act, nt, kind)
            return y
    else:
        def run(x, y):
            kernel(np.ascontiguousarray(x).reshape(N, C, S), sc, bi, mu, va, eps, y.reshape(N, C, S), act, nt)
            return y
    return run


def prepared_norm_with_sum(op, attrs, x_shape, dtype, scale, bias, n_threads):
    """run(x, residual) -> (Y, X + residual) for a LayerNorm/RMSNorm computing its residual sum
    (outputs Y and residual_sum only), x and residual of `x_shape` and float32/float64 `dtype`,
    scale and bias constants (or None): the kernel call of layer_norm/rms_norm above."""
    from .. import _checks as chk
    from .._kernels import layer_norm as _kln
    from .._thread_policy import memory_bound
    dtype = np.dtype(dtype)
    if dtype not in (np.float32, np.float64) or not x_shape:
        return None
    try:
        axis = chk.axis_index(attrs.get("axis", -1), len(x_shape))
        eps = chk.eps_value(attrs.get("epsilon", 1e-5))
        act = chk.activation(_act(attrs)) if op == "LayerNorm" else 0
        norm_shape = tuple(x_shape[axis:])
        scale = chk.param(scale, "scale", norm_shape, dtype, broadcast=True)
        bias = chk.param(bias, "bias", norm_shape, dtype, broadcast=True) if op == "LayerNorm" else None
    except (TypeError, ValueError):
        return None
    L = int(np.prod(norm_shape, dtype=np.int64))
    G = int(np.prod(x_shape, dtype=np.int64)) // L if L else 0
    if not G or not L:
        return None
    scale = None if scale is None else np.ascontiguousarray(scale).reshape(-1)
    bias = None if bias is None else np.ascontiguousarray(bias).reshape(-1)
    nt = min(n_threads, memory_bound(G * L))
    shape = tuple(int(d) for d in x_shape)
    rows = (G, L)

    if op == "LayerNorm":
        def run(x, residual):
            y, total = np.empty(shape, dtype), np.empty(shape, dtype)
            _kln.layer_norm(np.ascontiguousarray(x).reshape(rows), y.reshape(rows), scale, bias,
                            np.ascontiguousarray(residual).reshape(rows), total.reshape(rows), None, eps, act, nt)
            return y, total
    else:
        def run(x, residual):
            y, total = np.empty(shape, dtype), np.empty(shape, dtype)
            _kln.rms_norm(np.ascontiguousarray(x).reshape(rows), y.reshape(rows), scale,
                          np.ascontiguousarray(residual).reshape(rows), total.reshape(rows), eps, 0, nt)
            return y, total
    return run

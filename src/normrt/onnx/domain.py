"""The normrt ONNX domain: the custom ops normalizations are rewritten into.

Passes build these nodes with `make_node`; `kernels.py` runs them. Neither
needs the other: this table is the contract between them. Each op's spec also
holds what the executor needs to run it: `call` (kernel_calls.py: attributes
and inputs -> the kernel call), `compute_bound` (the kernel picks its threads
from its flops; memory-bound ones run on one thread on small tensors),
`packer` (a constant weight, input 1, packed once for the kernel), `prepare` (the
kernel call with its constant inputs checked once, for a plan that knows X's shape) and
`half_native` (the kernel reads and writes float16/bfloat16 itself, with float32
or half weights; the products do not: the executor widens their half inputs to
float32 and rounds Y back, kernels.py).

The normrt domain (opset version 1)
-----------------------------------
BatchNorm(X, scale, B, mean, var) -> Y [, running_mean, running_var]
    epsilon=1e-5, momentum=0.9, training_mode=0, activation=""
LayerNorm(X [, Scale, B, residual]) -> Y [, Mean, InvStdDev, residual_sum]
    axis=-1, epsilon=1e-5, activation="", stash_type=1 (TensorProto type of Mean, InvStdDev)
RMSNorm(X [, Scale, residual]) -> Y [, residual_sum]  axis=-1, epsilon=1e-5
    (residual: normalizes X + residual, both of X's shape; residual_sum: that sum, for
    the graph's other readers -- the pre-LN transformer's next skip connection)
InstanceNorm(X [, scale, B]) -> Y                    epsilon=1e-5, activation=""
ChannelNorm(X [, scale, B]) -> Y                     mode="layer", epsilon=1e-6, activation=""
    (channels-first: X (N, C, *spatial), statistics over C at each (n, position); mode "layer"
    centres and scales (ConvNeXt LayerNorm2d), "rms" scales only (PixelNorm); scale, B (C,))
GroupNorm(X [, scale, bias]) -> Y
    num_groups, epsilon=1e-5, activation="", per_group_affine=0 (1: scale/bias are (G,))
MeanVarianceNorm(X) -> Y                             axes=[0, 2, 3], epsilon=1e-9
LpNorm(X) -> Y                                       p=2, axis=-1, epsilon=0.0, nan_on_zero=0
    (epsilon > 0: divide by max(norm, epsilon), torch's F.normalize; a zero vector gives
    zeros (ONNX LpNormalization), or with nan_on_zero=1 NaN, as the division x / norm does)
GRN(X, gamma, beta) -> Y                             epsilon=1e-6
    (ConvNeXt V2's global response normalization of channels-last X (N, *spatial, C): G = the
    L2 norm over the spatial axes per (n, c), Y = gamma * (X * G / (mean over c of G +
    epsilon)) + beta + X; gamma, beta (C,); grn_decomposed)
LRN(X) -> Y                                          size, alpha=1e-4, beta=0.75, bias=1.0
AdaIN(content, style) -> Y                           epsilon=1e-5, unbiased=0
    (unbiased=1: variances m2 / (n - 1), torch's default .var())
Attention(Q, Kt, V [, bias]) -> Y                    scale, is_causal=0,
    q_layout="BHSD", k_layout="BHDS", v_layout="BHSD", y_layout="BHSD", q_heads=0, kv_heads=0, merge_heads=0,
    nan_rows=0
    (Y = softmax(Q @ Kt * scale + bias) @ V over the last axis; Q (B, H, Sq, D) or (BH, Sq, D),
    Kt the keys transposed (B, Hkv, D, Skv), V (B, Hkv, Skv, Dv), bias additive, broadcasting
    with the scores (B, H, Sq, Skv), batch and head dims broadcasting as MatMuls do; a query
    seeing no key (its bias -inf for every key) gives zeros, or with nan_rows=1 NaN (what a
    plain Softmax gives there). Rank-4 inputs and Y may
    come in other axis orders, read and written in place: q_layout / v_layout / y_layout
    "BSHD" (heads interleaved: Q (B, Sq, H, D), V (B, Skv, Hkv, Dv), Y (B, Sq, H, Dv)),
    k_layout "BHSD" (K untransposed) or "BSHD" (K (B, Skv, Hkv, D)). With the BSHD layouts the
    heads may also come merged: q_heads > 0: Q is (B, Sq, q_heads * D); kv_heads > 0: K and V
    are (B, Skv, kv_heads * D) and (B, Skv, kv_heads * Dv); merge_heads=1: Y is (B, Sq, H * Dv))
GroupQueryAttention(query [, key, value, past_key, past_value], seqlens_k, total_sequence_length
                    [, cos_cache, sin_cache]) -> output [, present_key, present_value]
    num_heads, kv_num_heads, head_size, scale, do_rotary=0, rotary_interleaved=0,
    local_window_size=-1, window_from_valid=0
    (onnxruntime's GroupQueryAttention step (com.microsoft), but softcap: the KV cache update, the
    rotary embedding and the mask from seqlens_k around one call of the attention kernel, the
    query heads of each KV head reading it in place; scale already resolved (1/sqrt(H) when the
    contrib node's is 0); window_from_valid: a local window counted from a row's valid length
    (onnxruntime's non-flash kernel) rather than its position; group_query_attention,
    grouped_query_call.py)
Conv(X, W [, B, residual]) -> Y
    strides=[1, 1], pads=[0, 0, 0, 0], dilations=[1, 1], group=1, activation="", pad_mode="constant",
    alpha=0.01
    (2-D NCHW: Y = act(conv(X, W) + B + residual); pads (h_begin, w_begin, h_end, w_end);
    or 1-D NCL, X (N, C, L) and W (M, C/group, k), with one stride and dilation and pads
    (begin, end), run as the 2-D conv of one row;
    residual of Y's shape; pad_mode what the pads hold, as ONNX Pad's modes: "constant" (zeros),
    "reflect" or "edge" - a Pad of that mode fused by pad_into_conv; activation may also be
    "leaky_relu", with alpha its slope, > 0: conv_epilogue's LeakyRelu)
MatMul(A, B [, bias, residual]) -> Y                 activation="", alpha=0.01
    (Y = act(A @ B + bias + residual); B a 2-D constant, bias (N,), residual of Y's shape;
    activation may also be "leaky_relu", alpha its slope: matmul_epilogue's LeakyRelu)
QMatMul(A, W, w_scale [, bias]) -> Y                a_scale=1, a_zero=0, a_lo=0, a_hi=255, dynamic=0,
                                                     activation=""
    (a quantized model's product: A (..., K) float32 quantized to 8-bit codes on the grid
    (a_scale, a_zero, [a_lo, a_hi]) - or, dynamic=1, on DynamicQuantizeLinear's uint8 grid of A's
    own range; W (K, N) an int8 constant; Y = act((codes(A) - zero) @ W * (scale * w_scale) +
    bias), the integer sums exact, w_scale one value or one per column, bias (N,);
    quantized_products)
MatMulNBits(A, B, scales [, zero_points, bias]) -> Y   K, N, block_size, accuracy_level=0
    (onnxruntime's 4-bit MatMulNBits kept in its codes: A (..., K) float32, B its uint8 codes
    [N, k_blocks, block_size / 2] (row n's codes in K order, low nibble first), scales and
    zero_points float32 [N, k_blocks] (no zero points: 8); Y = A @ W + bias, W[k, n] =
    (code[n, k] - zero[n, k // block_size]) * scale[n, k // block_size]; accuracy_level 4: A
    quantized to int8 per row and block and the sums integer, as onnxruntime's level 4,
    where the CPU has VNNI; matmul_nbits)
QBatchedMatMul(A, B) -> Y                           a_scale, a_zero=0, a_lo, a_hi, b_scale, b_zero=0, b_lo, b_hi
    (a static QDQ model's product of two activations, attention's Q K^T and P V: A (..., M, K) and
    B (..., K, N) on their 8-bit grids, the same leading dims; Y = (codes(A) - a_zero) @
    (codes(B) - b_zero) * a_scale * b_scale, the integer sums exact; quantized_products)
Elementwise(X0, X1, ...) -> Y                        ops, args, constants=[], out_rank=0
    (a DAG of float32 elementwise ops in one pass: `ops` names them in order (add, sub, mul,
    div, max, min, pow, neg, abs, exp, log, sqrt, reciprocal, tanh, erf, sigmoid, relu,
    square, copy, round, fake_quant), `args` gives each op two operand numbers (the inputs
    X0..Xn-1, then the `constants` scalars, then earlier ops' results; a unary op repeats its
    operand; fake_quant's second is the first of four constants: scale, zero point, lo, hi); Y is the
    last op's result, of the inputs' broadcast shape raised to at least `out_rank` axes.
    See elementwise_program.py)
FakeQuant(X) -> Y                                    scale, zero_point=0.0, lo, hi
    (DequantizeLinear(QuantizeLinear(X)) with per-tensor constants, float32: (min(max(round(X /
    scale) + zero_point, lo), hi) - zero_point) * scale, rounding half to even, [lo, hi] the
    integer type's range; the pair's values; qdq_pairs)
DynamicFakeQuant(X) -> Y
    (DequantizeLinear(DynamicQuantizeLinear(X)), float32: X rounded to the uint8 grid of its own
    range [min(X, 0), max(X, 0)] and back, the two ops' values; dynamic_qdq_pairs)
"""
from dataclasses import dataclass

from onnx import helper

from .. import _checks
from . import kernel_calls as _calls
from .grouped_query_call import group_query_attention as _group_query_attention
from ._graph import NORMRT_DOMAIN

# the `activation` attribute's values: the kernels' epilogues ("" for none)
ACTIVATIONS = ("",) + _checks.ACTIVATION_NAMES


@dataclass(frozen=True)
class NormOp:
    op_type: str
    kernel: str            # the normrt function it calls
    inputs: tuple          # input names; the first is required
    outputs: tuple
    defaults: dict         # attribute -> default (None: required)
    call: object = None    # kernel_calls function: (attrs, n_out, *inputs[, packed=]) -> outputs
    compute_bound: bool = False   # a product (not a norm): the kernel chooses its threads from its flops
    packer: object = None  # (weight, attrs) -> the packed weight the call takes as `packed=`
    variadic: bool = False  # any number of inputs, all like the first
    norm: bool = True      # False: not a normalization (reports count it apart)
    half_native: bool = True   # takes float16/bfloat16 X as it is (False: computed in float32)
    # the input position whose buffer Y may be written into when nothing reads it later (a fused
    # residual, added element by element as Y is stored: the executor's in-place hint), or -1
    inplace_input: int = -1
    # kernel_calls function for a specialized plan: (attrs, x_shape, dtype, *constant inputs
    # after X (None: omitted), n_threads) -> run(x, y) -> y, the kernel call with every argument
    # checked once, or None (the generic `call` then runs)
    prepare: object = None
    # `activation` values the op's own kernel takes beyond the shared ACTIVATIONS (the conv
    # epilogue's parameterized "leaky_relu", with its `alpha` attribute)
    activations: tuple = ()


NORM_OPS = {op.op_type: op for op in (
    NormOp("BatchNorm", "batch_norm", ("X", "scale", "B", "mean", "var"), ("Y", "running_mean", "running_var"),
           {"epsilon": 1e-5, "momentum": 0.9, "training_mode": 0, "activation": ""}, call=_calls.batch_norm,
           prepare=_calls.prepared_batch_norm),
    NormOp("LayerNorm", "layer_norm", ("X", "Scale", "B", "residual"), ("Y", "Mean", "InvStdDev", "residual_sum"),
           {"axis": -1, "epsilon": 1e-5, "activation": "", "stash_type": 1}, call=_calls.layer_norm),
    NormOp("RMSNorm", "rms_norm", ("X", "Scale", "residual"), ("Y", "residual_sum"),
           {"axis": -1, "epsilon": 1e-5}, call=_calls.rms_norm),
    NormOp("ChannelNorm", "layer_norm_2d", ("X", "scale", "B"), ("Y",),
           {"mode": "layer", "epsilon": 1e-6, "activation": ""}, call=_calls.channel_norm,
           prepare=_calls.prepared_channel_norm),
    NormOp("InstanceNorm", "instance_norm", ("X", "scale", "B"), ("Y",),
           {"epsilon": 1e-5, "activation": ""}, call=_calls.instance_norm,
           prepare=_calls.prepared_instance_norm),
    NormOp("GroupNorm", "group_norm", ("X", "scale", "bias"), ("Y",),
           {"num_groups": None, "epsilon": 1e-5, "activation": "", "per_group_affine": 0},
           call=_calls.group_norm, prepare=_calls.prepared_group_norm),
    NormOp("MeanVarianceNorm", "mean_variance_norm", ("X",), ("Y",),
           {"axes": [0, 2, 3], "epsilon": 1e-9}, call=_calls.mean_variance_norm),
    NormOp("LpNorm", "lp_norm", ("X",), ("Y",), {"p": 2, "axis": -1, "epsilon": 0.0, "nan_on_zero": 0},
           call=_calls.lp_norm),
    NormOp("GRN", "grn", ("X", "gamma", "beta"), ("Y",), {"epsilon": 1e-6}, call=_calls.grn),
    NormOp("LRN", "lrn", ("X",), ("Y",), {"size": None, "alpha": 1e-4, "beta": 0.75, "bias": 1.0}, call=_calls.lrn),
    NormOp("AdaIN", "adain", ("content", "style"), ("Y",), {"epsilon": 1e-5, "unbiased": 0}, call=_calls.adain),
    NormOp("Attention", "attention", ("Q", "Kt", "V", "bias"), ("Y",),
           {"scale": None, "is_causal": 0, "q_layout": "BHSD", "k_layout": "BHDS", "v_layout": "BHSD",
            "y_layout": "BHSD", "q_heads": 0, "kv_heads": 0, "merge_heads": 0, "nan_rows": 0},
           call=_calls.attention, compute_bound=True, half_native=False),
    NormOp("GroupQueryAttention", "attention",
           ("query", "key", "value", "past_key", "past_value", "seqlens_k", "total_sequence_length",
            "cos_cache", "sin_cache"), ("output", "present_key", "present_value"),
           {"num_heads": None, "kv_num_heads": None, "head_size": None, "scale": None, "do_rotary": 0,
            "rotary_interleaved": 0, "local_window_size": -1, "window_from_valid": 0},
           call=_group_query_attention, compute_bound=True, half_native=False, norm=False),
    NormOp("Conv", "conv2d", ("X", "W", "B", "residual"), ("Y",),
           {"strides": [1, 1], "pads": [0, 0, 0, 0], "dilations": [1, 1], "group": 1, "activation": "",
            "pad_mode": "constant", "alpha": 0.01},
           call=_calls.conv, compute_bound=True, packer=_calls.pack_conv, half_native=False, inplace_input=3,
           activations=("leaky_relu",)),
    NormOp("MatMul", "matmul", ("A", "B", "bias", "residual"), ("Y",), {"activation": "", "alpha": 0.01},
           call=_calls.matmul, compute_bound=True, packer=_calls.pack_matmul, half_native=False,
           activations=("leaky_relu",)),
    NormOp("QMatMul", "int8_gemm", ("A", "W", "w_scale", "bias"), ("Y",),
           {"a_scale": 1.0, "a_zero": 0.0, "a_lo": 0.0, "a_hi": 255.0, "dynamic": 0, "activation": ""},
           call=_calls.qmatmul, compute_bound=True, packer=_calls.pack_qmatmul, half_native=False, norm=False),
    NormOp("MatMulNBits", "nbits_gemm", ("A", "B", "scales", "zero_points", "bias"), ("Y",),
           {"K": None, "N": None, "block_size": None, "accuracy_level": 0},
           call=_calls.matmul_nbits, compute_bound=True, packer=_calls.pack_matmul_nbits, half_native=False,
           norm=False),
    NormOp("QBatchedMatMul", "int8_gemm", ("A", "B"), ("Y",),
           {"a_scale": None, "a_zero": 0.0, "a_lo": None, "a_hi": None, "b_scale": None, "b_zero": 0.0,
            "b_lo": None, "b_hi": None},
           call=_calls.qbatched_matmul, compute_bound=True, half_native=False, norm=False),
    NormOp("Elementwise", "elementwise", ("X",), ("Y",),
           {"ops": None, "args": None, "constants": [], "out_rank": 0}, call=_calls.elementwise, variadic=True,
           norm=False, half_native=False),
    NormOp("FakeQuant", "elementwise", ("X",), ("Y",), {"scale": None, "zero_point": 0.0, "lo": None, "hi": None},
           call=_calls.fake_quant, norm=False, half_native=False, prepare=_calls.prepared_fake_quant),
    NormOp("DynamicFakeQuant", "elementwise", ("X",), ("Y",), {}, call=_calls.dynamic_fake_quant, norm=False,
           half_native=False),
)}


def make_node(op_type, inputs, outputs, name, **attrs):
    """A normrt-domain NodeProto; attributes equal to their default are left out."""
    spec = NORM_OPS[op_type]
    unknown = set(attrs) - set(spec.defaults)
    if unknown:
        raise ValueError(f"normrt {op_type} has no attribute(s) {sorted(unknown)}")
    missing = [k for k, d in spec.defaults.items() if d is None and attrs.get(k) is None]
    if missing:
        raise ValueError(f"normrt {op_type} needs attribute(s) {missing}")
    kept = {k: v for k, v in attrs.items() if spec.defaults[k] is None or v != spec.defaults[k]}
    if kept.get("activation", "") not in ACTIVATIONS + spec.activations:
        raise ValueError(f"unknown activation {kept['activation']!r}")
    inputs = list(inputs)
    while inputs and not inputs[-1]:
        inputs.pop()
    outputs = list(outputs)
    while len(outputs) > 1 and not outputs[-1]:
        outputs.pop()
    return helper.make_node(op_type, inputs, outputs, name=name, domain=NORMRT_DOMAIN, **kept)




# normrt ops that are not a norm: a product with its epilogue, the fused attention, a fused
# elementwise chain
COMPUTE_OPS = frozenset(op for op, spec in NORM_OPS.items() if spec.compute_bound or not spec.norm)

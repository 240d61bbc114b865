"""onnxruntime's MatMulNBits (com.microsoft) -> a standard MatMul with the weight dequantized at load.

LLMs shipped for CPU as ONNX (onnxruntime-genai's model builder `-p int4`, Olive,
onnxruntime.quantization's MatMulNBitsQuantizer) store each linear layer's weight as 2/4/8-bit
codes in blocks along K, a scale per block and optionally a zero point per block:

    A [..., K] ──► MatMulNBits(B, scales [, zero_points] [, g_idx] [, bias]; K, N, bits, block_size) ──► Y [..., N]

    4 bits, no g_idx (what onnxruntime-genai's builder and the quantizers write):
    ==>  A ──► normrt::MatMulNBits(B, scales32 [, zero32] [, bias]) ──► Y
                                                     the codes kept: pyx/nbits_gemm reads them
    the other forms (2 or 8 bits, g_idx), dequantized once at load:
    ==>  A ──► MatMul(W) ──► Y                      W: float32 [K, N] constant, computed here once
    ==>  A ──► MatMul(W) ──► Add(bias) ──► Y        with a bias
    ==>  A ──► Cast(float) ──► MatMul(W) [──► Add(float32 bias)] ──► Cast(A's type) ──► Y
                                                     A float16 / bfloat16

    W[k, n] = (code[n, k] - zero[n, g(k)]) * scale[n, g(k)],   g(k) = g_idx[k] or k // block_size

The layout (onnxruntime's docs/ContribOperators.md and its CPU kernel):
* B [N, k_blocks, block_size * bits / 8] uint8: row n's codes in K order, several to a byte,
  the first in the lowest bits (4 bits: low nibble first). The last block is padded past K.
* scales [N, k_blocks] or flat [N * k_blocks], A's type.
* zero_points: uint8 [N, ceil(k_blocks * bits / 8)] (or flat), the codes of row n packed like B,
  each row starting on a byte; or A's type, scales' shape (a float zero point, GPTQ exports).
  Absent: 2^(bits - 1), the middle of the code range (symmetric quantization).
* g_idx int32 [K] (or [k_blocks * block_size], padded): act-order GPTQ, the block of each K row
  when rows were quantized out of order.

Half A: onnxruntime's CPU kernel (x86) widens A, scales and bias to float32, dequantizes the
weight to float32, multiplies in float32 and rounds Y once to A's type. The rewrite does the
same: a float16 weight would round every weight once more (a float16 scale times a code
difference is exact in float32, not in float16), and normrt widens a half MatMul's constant
weight to float32 anyway, so it would not save memory either. accuracy_level: onnxruntime's
level 4 quantizes A to int8 per block and multiplies in integers; the 4-bit node keeps the level
(normrt::MatMulNBits' accuracy_level) and its kernel does the same (pyx/nbits_gemm's integer
path, where the CPU has VNNI); levels 0-3 and the dequantized forms
keep A in float32.

Refused (the node keeps no implementation and loading fails naming it): B, scales, zero points
or g_idx not constants (the weight is computed at load); bits other than 2, 4, 8 (the widths
onnxruntime's CPU kernel runs; how 3/5/6/7-bit codes cross bytes is not specified); a block size
not a power of two >= 16; shapes or types not the documented ones; g_idx out of range; a
prepacked weight (weight_prepacked: an execution provider's own layout); a second output.

The 4-bit node keeps B as it is (the kernel packs it into its tiles at the first run: B's pairing
of k, k + 1 in one byte is the kernel's too, packing transposes bytes); its scales become
float32 [N, k_blocks] and its zero points, packed or float, float32 of the same shape: a few
percent of the codes. A half A: the executor widens A to float32 and rounds Y once to A's type
(the product's spec half_native=False), as the dequantized path's Casts do.

Memory: the float32 weight is 8x the 4-bit codes (a 7B model's 3.5 GB becomes 28 GB): only the
forms the kernel does not take pay it. The codes are dropped once no node reads them.
"""
import ml_dtypes
import numpy as np
from onnx import TensorProto, helper

from .._graph import canonical_domain
from ..domain import make_node
from . import GraphPass, ValueType
from ._queries import node_attrs, present

MS = "com.microsoft"
BITS = (2, 4, 8)
KEPT_BITS = 4         # the width normrt::MatMulNBits reads as codes (pyx/nbits_gemm)
FLOAT_TYPES = (np.dtype(np.float32), np.dtype(np.float16), np.dtype(ml_dtypes.bfloat16))
ELEM = {np.dtype(np.float32): TensorProto.FLOAT, np.dtype(np.float16): TensorProto.FLOAT16,
        np.dtype(ml_dtypes.bfloat16): TensorProto.BFLOAT16}


def _ours(node):
    return canonical_domain(node.domain) == MS and node.op_type == "MatMulNBits"


def _inputs(node):
    """(A, B, scales, zero_points, g_idx, bias): '' for an input left out."""
    ins = list(node.input) + [""] * (6 - len(node.input))
    return ins[:6]


def unpack_codes(packed, bits, count):
    """The `count` first codes of each row of `packed` [..., bytes] uint8, the first code of a
    byte in its lowest bits: [..., count] uint8."""
    if bits == 8:
        return packed[..., :count]
    shifts = np.arange(0, 8, bits, dtype=np.uint8)
    codes = (packed[..., :, None] >> shifts) & np.uint8((1 << bits) - 1)
    return codes.reshape(*packed.shape[:-1], -1)[..., :count]


def _codes_by_k(packed, bits):
    """The codes of `packed` [N, bytes] as [bytes * 8 / bits, N] uint8 (the weight's [K, N] layout).

    The bytes are transposed before unpacking: a strided uint8 transpose is the slow step, and
    the packed bytes are a half (4 bits) or a quarter (2 bits) of the codes; the float weight is
    then written in its final layout, without a float32 transpose copy."""
    by_k = np.ascontiguousarray(packed.T)
    if bits == 8:
        return by_k
    shifts = np.arange(0, 8, bits, dtype=np.uint8)
    codes = (by_k[:, None, :] >> shifts[:, None]) & np.uint8((1 << bits) - 1)     # [bytes, codes a byte, N]
    return codes.reshape(-1, packed.shape[0])


class _Layout:
    """The node's attributes and the sizes they imply."""

    def __init__(self, attrs):
        self.K, self.N = int(attrs["K"]), int(attrs["N"])
        self.bits, self.block = int(attrs.get("bits", 4)), int(attrs["block_size"])
        self.k_blocks = -(-self.K // self.block)
        self.blob = self.block * self.bits // 8
        self.zp_blob = -(-self.k_blocks * self.bits // 8)
        self.accuracy_level = int(attrs.get("accuracy_level", 0))


def dequantize(lay, B, scales, zero_points=None, g_idx=None):
    """The float32 weight [K, N] of MatMulNBits' B, scales, zero points and g_idx (numpy arrays)."""
    N, K, kb, bs = lay.N, lay.K, lay.k_blocks, lay.block
    scale = np.asarray(scales).reshape(N, kb).astype(np.float32)
    if zero_points is None:
        zero = np.full((N, kb), float(1 << (lay.bits - 1)), np.float32)
    elif zero_points.dtype == np.uint8:
        zero = unpack_codes(zero_points.reshape(N, lay.zp_blob), lay.bits, kb).astype(np.float32)
    else:
        zero = zero_points.reshape(N, kb).astype(np.float32)
    codes = _codes_by_k(B.reshape(N, kb * lay.blob), lay.bits)
    w = codes.astype(np.float32)            # [kb * bs, N]
    del codes
    if g_idx is None:
        blocks = w.reshape(kb, bs, N)
        blocks -= zero.T[:, None, :]
        blocks *= scale.T[:, None, :]
        return w[:K]
    groups = np.asarray(g_idx).reshape(-1)[:K].astype(np.intp)
    w = w[:K]
    w -= zero.T[groups]
    w *= scale.T[groups]
    return w


class MatMulNBits(GraphPass):
    name = "matmul_nbits"

    def matches(self, ctx):
        return [n for n in ctx.nodes if _ours(n)]

    def describe(self, node):
        return node.op_type, [node.name]

    def check(self, ctx, node):
        if not present(ctx, [node]):
            return "node already rewritten"
        attrs, reason = node_attrs(node)
        if reason:
            return reason
        missing = [a for a in ("K", "N", "block_size") if a not in attrs]
        if missing:
            return f"required attribute {missing[0]} missing"
        lay = _Layout(attrs)
        if attrs.get("weight_prepacked", 0):
            return f"weight_prepacked={attrs['weight_prepacked']}: B is in an execution provider's own layout"
        if lay.bits not in BITS:
            return f"bits={lay.bits} (onnxruntime's CPU kernel, and this rewrite, take {'/'.join(map(str, BITS))})"
        if lay.block < 16 or lay.block & (lay.block - 1):
            return f"block_size={lay.block} is not a power of two >= 16"
        if lay.K <= 0 or lay.N <= 0:
            return f"K={lay.K}, N={lay.N}"
        if len([o for o in node.output if o]) != 1 or not node.output[0]:
            return "more than one output"
        a, b, scales, zp, g_idx, bias = _inputs(node)
        for role, name in (("B", b), ("scales", scales), ("zero_points", zp), ("g_idx", g_idx)):
            if name and not ctx.is_constant(name):
                return f"{role} {name!r} is not a constant (the weight is dequantized at load)"
        if not b or not scales:
            return "B or scales missing"
        B, S = ctx.constants[b], ctx.constants[scales]
        if B.dtype != np.uint8 or B.shape != (lay.N, lay.k_blocks, lay.blob):
            return (f"B of {B.dtype} {B.shape}, not uint8 (N, k_blocks, blob_size) = "
                    f"{(lay.N, lay.k_blocks, lay.blob)}")
        if S.dtype not in FLOAT_TYPES:
            return f"scales of type {S.dtype} (float32/float16/bfloat16)"
        per_block = ((lay.N * lay.k_blocks,), (lay.N, lay.k_blocks))
        if S.shape not in per_block:
            return f"scales of shape {S.shape}, not {per_block[1]} or {per_block[0]}"
        # scales are A's type (T1): A's own type is unknown when another contrib op writes it
        a_type = ctx.elem_type(a)
        if a_type and a_type != ELEM[S.dtype]:
            return f"A of type {TensorProto.DataType.Name(a_type)}, scales of {S.dtype}"
        if zp:
            Z = ctx.constants[zp]
            if Z.dtype == np.uint8:
                packed = ((lay.N * lay.zp_blob,), (lay.N, lay.zp_blob))
                if Z.shape not in packed:
                    return f"packed zero_points of shape {Z.shape}, not {packed[1]} or {packed[0]}"
            elif Z.dtype != S.dtype:
                return f"zero_points of type {Z.dtype}: neither uint8 nor the scales' {S.dtype}"
            elif Z.shape not in per_block:
                return f"zero_points of shape {Z.shape}, not {per_block[1]} or {per_block[0]}"
        if g_idx:
            G = ctx.constants[g_idx]
            if G.dtype != np.int32 or G.shape not in ((lay.K,), (lay.k_blocks * lay.block,)):
                return f"g_idx of {G.dtype} {G.shape}, not int32 ({lay.K},)"
            if G.size and (G.min() < 0 or G.max() >= lay.k_blocks):
                return f"g_idx holds blocks outside [0, {lay.k_blocks})"
        if bias:
            shape = ctx.shape(bias)
            if shape is not None and (len(shape) != 1 or (isinstance(shape[0], int) and shape[0] != lay.N)):
                return f"bias of shape {tuple(shape)}, not ({lay.N},)"
            if ctx.elem_type(bias) and ctx.elem_type(bias) != ELEM[S.dtype]:
                return f"bias of type {TensorProto.DataType.Name(ctx.elem_type(bias))}, scales of {S.dtype}"
        return None

    def rewrite(self, ctx, node):
        attrs, _ = node_attrs(node)
        lay = _Layout(attrs)
        a, b, scales, zp, g_idx, bias = _inputs(node)
        if lay.bits == KEPT_BITS and not g_idx:
            self._keep_codes(ctx, node, lay)
            return
        const = ctx.constants
        S = const[scales]
        weight = dequantize(lay, const[b], S, const[zp] if zp else None, const[g_idx] if g_idx else None)
        w = ctx.add_constant(f"{node.name}_weight", weight)
        half = S.dtype != np.float32
        new = []

        def emit(op_type, inputs, out=None, **kw):
            out = out or ctx.new_name(f"{node.name}_{op_type.lower()}")
            new.append(helper.make_node(op_type, inputs, [out], name=ctx.new_name(f"{node.name}_{op_type}"), **kw))
            return out
        y = node.output[0]
        x = emit("Cast", [a], to=TensorProto.FLOAT) if half else a
        product = y if not bias and not half else None
        out = emit("MatMul", [x, w], product)
        if bias:
            if half and bias in const:
                bias_in = ctx.add_constant(f"{node.name}_bias", np.asarray(const[bias], np.float32))
            elif half:
                bias_in = emit("Cast", [bias], to=TensorProto.FLOAT)
            else:
                bias_in = bias
            out = emit("Add", [out, bias_in], None if half else y)
        if half:
            emit("Cast", [out], y, to=ELEM[S.dtype])
        ctx.replace_nodes([node], new)
        # onnx's inference stopped at the contrib op: Y's readers can be typed now
        ctx.mark_types_stale()

    def _keep_codes(self, ctx, node, lay):
        """normrt::MatMulNBits reading B's codes: scales and zero points as float32 [N, k_blocks]."""
        a, b, scales, zp, _, bias = _inputs(node)
        const = ctx.constants
        N, kb = lay.N, lay.k_blocks
        S = const[scales]
        scale32 = ctx.add_constant(f"{node.name}_scales", np.asarray(S, np.float32).reshape(N, kb))
        zero32 = ""
        if zp:
            Z = const[zp]
            if Z.dtype == np.uint8:
                zero = unpack_codes(Z.reshape(N, lay.zp_blob), lay.bits, kb).astype(np.float32)
            else:
                zero = np.asarray(Z, np.float32).reshape(N, kb)
            zero32 = ctx.add_constant(f"{node.name}_zero_points", zero)
        if bias and S.dtype != np.float32 and bias in const:
            bias = ctx.add_constant(f"{node.name}_bias", np.asarray(const[bias], np.float32))
        y = node.output[0]
        new = make_node("MatMulNBits", [a, b, scale32, zero32, bias], [y], ctx.new_name(f"{node.name}_nbits"),
                        K=lay.K, N=N, block_size=lay.block, accuracy_level=lay.accuracy_level)
        ctx.replace_nodes([node], [new])
        # inference cannot type normrt nodes: Y is A's type (the scales' type), A's shape but N
        shape = ctx.shape(a)
        ctx.types[y] = ValueType(ELEM[S.dtype], None if shape is None else tuple(shape[:-1]) + (N,))
        ctx.mark_types_stale()


__all__ = ["MatMulNBits", "dequantize", "unpack_codes"]

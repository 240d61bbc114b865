"""A static QDQ model's linear layer -> normrt::QMatMul, the 8-bit product it was quantized for.

    a (on grid g = (sa, za, lo, hi): a FakeQuant's output, fake_quant_grid) ──┐
    Wq (int8 constant) ─► DequantizeLinear(sw, 0) ─► W (folded) ─────────────┴─► MatMul ─► y
                                                                   (or Gemm(a, W[, C]), transB)
    ==>   a, Wq, cs ─► normrt::QMatMul(a_scale=sa, a_zero=za, a_lo=lo, a_hi=hi[, C]) ─► y

onnxruntime's quantize_static writes every MatMul as this: its input fake-quantized (a QDQ
pair, a normrt::FakeQuant after qdq_pairs) and its weight DequantizeLinear(int8, scale), which
constant_folding turns into float32 (recording the int8 values, ctx.dequantized). What the
subgraph computes is sum_k (qa - za) sa * wq sw: the integer products summed and scaled. The
float graph sums the rounded float terms; QMatMul sums the integers exactly (int32) and scales
once, cs = sa * sw per column, on the 8-bit kernel (pyx/int8_gemm.h: AVX-512 VNNI, 4x the
multiply-adds of a float32 FMA per instruction). A float32 Linear layer's rounding error
separates the two (~1e-7 relative), the same order as between two GEMMs.

Taken only where the CPU has the int8 dot product (normrt.cpu_info()["int8_dot"]); elsewhere the
float32 GEMM is faster than the portable integer loops, and the MatMul stays.

Refused (reason in the report): a weight that is not a folded DequantizeLinear of a 2-D int8
constant; a weight zero point other than 0 (asymmetric weights); a weight scale other than one
value or one per output column; an input not known to be on an 8-bit grid (hi - lo > 255); an
input that is not float32 of rank >= 2; K >= 65536 (int32 sums stop being exact); a Gemm with
alpha or beta != 1, transA, or a C that is not a constant of N values.
"""
import numpy as np
from onnx import TensorProto

from ..domain import NORM_OPS, make_node
from . import GraphPass
from ._queries import fused_name, is_op, node_attrs, present
from .fake_quant_grid import grid_of

PATTERN = "8-bit product (static QDQ)"
MAX_K = 65535


def int8_dot_available():
    """Whether this CPU runs the 8-bit products fast (the kernels' choice, normrt.cpu_info)."""
    from ... import cpu_info
    return cpu_info().get("int8_dot") == "avx512_vnni"


class QuantizedProducts(GraphPass):
    name = "quantized_products"

    def __init__(self, require_int8_dot=True):
        """`require_int8_dot=False` rewrites whatever the CPU (tests of the portable path)."""
        self.require_int8_dot = require_int8_dot

    def matches(self, ctx):
        for node in ctx.nodes:
            if (is_op(node, "MatMul") or is_op(node, "Gemm")) and len(node.input) >= 2 \
                    and node.input[1] in ctx.dequantized:
                yield node

    def describe(self, node):
        return f"{node.op_type} (static QDQ)", [node.name]

    def run(self, ctx):
        if self.require_int8_dot and not int8_dot_available():
            return 0
        return super().run(ctx)

    def _weight(self, ctx, node):
        """(Wq (K, N) int8, per-column scale (N,) float32, bias name or "") or a reason string."""
        attrs, reason = node_attrs(node)
        if reason:
            return reason
        trans_b = False
        bias = ""
        if is_op(node, "Gemm"):
            if attrs.get("alpha", 1.0) != 1.0 or attrs.get("beta", 1.0) != 1.0 or attrs.get("transA", 0):
                return "Gemm with alpha or beta != 1 or transA"
            trans_b = bool(attrs.get("transB", 0))
            if len(node.input) > 2 and node.input[2]:
                bias = node.input[2]
        q, scale, zero, axis = ctx.dequantized[node.input[1]]
        if q.dtype != np.int8 or q.ndim != 2 or q.size == 0:
            return f"weight {node.input[1]!r} is not a 2-D int8 constant"
        if zero is not None and np.any(np.asarray(zero) != 0):
            return "weight zero point is not 0 (asymmetric weights)"
        scale = np.asarray(scale, np.float32)
        n_axis = 0 if trans_b else 1
        if scale.size != 1 and (scale.ndim != 1 or axis % 2 != n_axis or scale.size != q.shape[n_axis]):
            return "weight scale is neither one value nor one per output column"
        wq = np.ascontiguousarray(q.T if trans_b else q)
        K, N = wq.shape
        if K > MAX_K:
            return f"K = {K}: int32 sums are exact up to {MAX_K}"
        if bias:
            c = ctx.constants.get(bias)
            if c is None or c.dtype != np.float32 or c.size != N or not all(d == 1 for d in c.shape[:-1]):
                return f"Gemm C {bias!r} is not a float32 constant of {N} values"
        return wq, np.broadcast_to(scale.reshape(-1), (N,)).astype(np.float32), bias

    def check(self, ctx, node):
        if not present(ctx, [node]):
            return "node already rewritten"
        a = node.input[0]
        if ctx.elem_type(a) != TensorProto.FLOAT or ctx.shape(a) is None or len(ctx.shape(a)) < 2:
            return f"input {a!r} is not float32 of rank >= 2"
        grid = grid_of(ctx, a)
        if grid is None:
            return f"input {a!r} is not known to be on a quantization grid"
        sa, za, lo, hi = grid
        if not (hi - lo <= 255 and lo <= za <= hi and float(za).is_integer() and float(lo).is_integer()):
            return f"input grid {grid} is not an 8-bit one"
        found = self._weight(ctx, node)
        if isinstance(found, str):
            return found
        self._found = found
        return None

    def rewrite(self, ctx, node):
        wq, wscale, bias = self._found
        sa, za, lo, hi = grid_of(ctx, node.input[0])
        w = ctx.add_constant(node.input[1] + "_int8", wq)
        cs = ctx.add_constant(node.input[1] + "_scale", (np.float32(sa) * wscale).astype(np.float32))
        if bias and ctx.constants[bias].ndim != 1:
            bias = ctx.add_constant(bias + "_row", ctx.constants[bias].reshape(-1))
        new = make_node("QMatMul", [node.input[0], w, cs] + ([bias] if bias else []), [node.output[0]],
                        fused_name(ctx, [node], "QMatMul"), a_scale=float(sa), a_zero=float(za), a_lo=float(lo),
                        a_hi=float(hi))
        ctx.replace_nodes([node], [new])
        ctx.report.fused.append({
            "pass": self.name, "op": PATTERN, "pattern": node.op_type, "nodes": [node.name], "normrt_op": "QMatMul",
            "normrt_node": new.name, "kernel": NORM_OPS["QMatMul"].kernel, "activation": None, "residual": False,
        })

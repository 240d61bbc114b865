"""A quantized model's linear layer -> normrt::QMatMul, the 8-bit product it was quantized for.

    a (on grid g = (sa, za, lo, hi): a FakeQuant's output, fake_quant_grid) ──┐
    Wq (int8 constant) ─► DequantizeLinear(sw, 0) ─► W (folded) ─────────────┴─► MatMul ─► y
                                                                   (or Gemm(a, W[, C]), transB)
    ==>   a, Wq, sw ─► normrt::QMatMul(a_scale=sa, a_zero=za, a_lo=lo, a_hi=hi[, C]) ─► y

    x ─► normrt::DynamicFakeQuant ─► a ─► MatMul(a, W') ─► [Add(·, bias)] ─► [activation] ─► y
         (quantize_dynamic's DynamicQuantizeLinear -> MatMulInteger -> Cast -> Mul after
         integer_products and dynamic_qdq_pairs; W' = Wq sw recorded as dequantized)
    ==>   x, Wq, sw ─► normrt::QMatMul(dynamic=1[, bias], activation) ─► y
          (the activation: the forms activation_epilogue reads, applied as each block is stored;
          also after the first form's product, where one reads it directly)

    a (on grid ga) ──┐
    b (on grid gb) ──┴─► MatMul ─► y    ==>   a, b ─► normrt::QBatchedMatMul(ga, gb) ─► y
         (a static QDQ model's attention: Q K^T and P V, both operands fake-quantized
         activations; their codes quantized per call, B's packed per call)

An input that is a FakeQuant's output on the product's grid is read before it: its codes are
the same (FakeQuant is the identity on its grid), and a FakeQuant read by products alone then
goes dead (one pass less).

onnxruntime's quantize_static writes every MatMul as the first form: its input fake-quantized (a
QDQ pair, a normrt::FakeQuant after qdq_pairs) and its weight DequantizeLinear(int8, scale),
which constant_folding turns into float32 (recording the int8 values, ctx.dequantized);
quantize_dynamic writes the second, its activations quantized on their own range at run time.
What the subgraph computes is sum_k (qa - za) sa * wq sw: the integer products summed and
scaled. The float graph sums the rounded float terms; QMatMul sums the integers exactly (int32)
and scales once by sa * sw (per column) on the 8-bit kernel (pyx/int8_gemm.h: AVX-512 VNNI, 4x
the multiply-adds of a float32 FMA per instruction); the dynamic form computes the range and
the codes itself, as DynamicFakeQuant does (the same grid, the same codes). A float32 Linear
layer's rounding error separates the two (~1e-7 relative), the order between two GEMMs.

Taken only where the CPU has the int8 dot product (normrt.cpu_info()["int8_dot"]); elsewhere the
float32 GEMM is faster than the portable integer loops, and the MatMul stays.

Refused (reason in the report): a product of fewer than MIN_MACS multiply-adds (or, rows
unknown, a weight under MIN_WEIGHT values); a weight that is not a dequantized 2-D int8
constant; a weight zero point other than 0 (asymmetric weights); a weight scale other than one
value or one per output column; an input not known to be on an 8-bit grid (hi - lo > 255); an
input that is not float32 of rank >= 2; K >= 65536 (int32 sums stop being exact; 32768 for two
activations); a Gemm with alpha or beta != 1, transA, or a C that is not a constant of N values;
two activations whose leading dims differ (broadcasting) or are not static. A product of two
activations not both on grids is no candidate (a float model's attention: nothing reported).
"""
import numpy as np
from onnx import TensorProto

from ..domain import NORM_OPS, make_node
from . import GraphPass
from ._queries import fused_name, is_normrt, is_op, node_attrs, present, private_reason
from .activation_epilogue import match_activation
from .matmul_epilogue import ACTIVATION_OPS
from .fake_quant_grid import grid as fq_grid, grid_of

PATTERN = "8-bit product (quantized model)"
MAX_K = 65535
# Products below this many multiply-adds stay on the float32 GEMM: there a call's fixed costs
# decide, and the float path keeps its fusions (Q/K/V merged, bias and GELU in the store,
# fused attention). quantize_dynamic DeiT/BERT-tiny (17-24 rows, 64 x 64-256 weights, 0.1-0.4M
# multiply-adds): 1.1-1.5x onnxruntime on the float GEMM, 1.6-2.9x on the 8-bit one
# (scripts/zoo_sweep.py --quantize dynamic); BERT at 128 tokens, hidden 256 (8-34M): 5.5 ->
# 2.7-3.2 ms (README, "Quantized models"). With the rows unknown (a symbolic batch or sequence)
# the weight alone decides: from 256 x 256.
MIN_MACS = 1 << 20
MIN_WEIGHT = 1 << 16


def int8_weight(ctx, node):
    """(Wq (K, N) int8, per-column scale (N,) float32, Gemm bias name or "") of a MatMul / Gemm whose
    weight is a dequantized int8 constant (ctx.dequantized) with zero point 0, or a reason string
    (also sibling_matmuls', which merges such weights as their integers)."""
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
    if node.input[1] not in ctx.dequantized:
        return f"weight {node.input[1]!r} is not a dequantized integer constant"
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


def int8_dot_available():
    """Whether this CPU runs the 8-bit products fast (the kernels' choice, normrt.cpu_info)."""
    from ... import cpu_info
    return cpu_info().get("int8_dot") == "avx512_vnni"


class QuantizedProducts(GraphPass):
    name = "quantized_products"

    def matches(self, ctx):
        for node in ctx.nodes:
            if (is_op(node, "MatMul") or is_op(node, "Gemm")) and len(node.input) >= 2 \
                    and node.input[1] in ctx.dequantized:
                yield node
            elif is_op(node, "MatMul") and len(node.input) == 2 and not any(ctx.is_constant(i) for i in node.input) \
                    and all(grid_of(ctx, i) is not None for i in node.input):
                yield node        # two fake-quantized activations (a static QDQ model's attention)

    def describe(self, node):
        return f"{node.op_type} (quantized)", [node.name]

    def run(self, ctx):
        if not int8_dot_available():
            return 0
        return super().run(ctx)

    def _activations_check(self, ctx, node):
        """(grid of A, grid of B) of a product of two activations both on 8-bit grids, with the same
        static leading dims and enough multiply-adds, or a reason string."""
        a, b = node.input
        sa, sb = ctx.shape(a), ctx.shape(b)
        if ctx.elem_type(a) != TensorProto.FLOAT or ctx.elem_type(b) != TensorProto.FLOAT:
            return "inputs are not float32"
        if not (sa and sb and len(sa) == len(sb) >= 2 and all(isinstance(d, int) for d in sa + sb)):
            return "input shapes not static, or of different ranks"
        if tuple(sa[:-2]) != tuple(sb[:-2]) or sa[-1] != sb[-2]:
            return f"shapes {list(sa)} and {list(sb)} broadcast or do not chain"
        if sa[-1] > 32767:
            return f"K = {sa[-1]}: two activations' code sums are exact up to 32767"
        if int(np.prod(sa, dtype=np.int64)) * sb[-1] < MIN_MACS:
            return f"{list(sa)} @ {list(sb)}: too small to gain (MIN_MACS)"
        grids = []
        for name in (a, b):
            g = grid_of(ctx, name)
            if g is None or not (g[3] - g[2] <= 255 and g[2] <= g[1] <= g[3] and float(g[1]).is_integer()
                                 and float(g[2]).is_integer() and 0 < g[0] < float("inf")):
                return f"input {name!r} is not known to be on an 8-bit grid"
            grids.append(g)
        return tuple(grids)

    def check(self, ctx, node):
        if not present(ctx, [node]):
            return "node already rewritten"
        if node.input[1] not in ctx.dequantized:
            found = self._activations_check(ctx, node)
            if isinstance(found, str):
                return found
            self._found = ("activations", found)
            return None
        a = node.input[0]
        if ctx.elem_type(a) != TensorProto.FLOAT or ctx.shape(a) is None or len(ctx.shape(a)) < 2:
            return f"input {a!r} is not float32 of rank >= 2"
        source = ctx.producer().get(a)
        if is_normrt(source, "DynamicFakeQuant"):
            grid = "dynamic"
        else:
            grid = grid_of(ctx, a)
            if grid is None:
                return f"input {a!r} is not known to be on a quantization grid"
            sa, za, lo, hi = grid
            if not (hi - lo <= 255 and lo <= za <= hi and float(za).is_integer() and float(lo).is_integer()
                    and 0 < sa < float("inf")):
                return f"input grid {grid} is not an 8-bit one"
        found = int8_weight(ctx, node)
        if isinstance(found, str):
            return found
        wq, wscale, bias = found
        K, N = wq.shape
        lead = ctx.shape(a)[:-1]
        if all(isinstance(d, int) for d in lead):
            if int(np.prod(lead, dtype=np.int64)) * K * N < MIN_MACS:
                return f"{int(np.prod(lead, dtype=np.int64))} x {K} x {N}: too small to gain (MIN_MACS)"
        elif K * N < MIN_WEIGHT:
            return f"a {K} x {N} weight with rows unknown: too small to gain (MIN_WEIGHT)"
        add = None if bias else self._bias_add(ctx, node, wq.shape[1])
        y = add.output[0] if add is not None else node.output[0]
        act = self._activation(ctx, y, [node] + ([add] if add is not None else []))
        self._found = (grid, wq, wscale, bias, add, act)
        return None

    @staticmethod
    def _activation(ctx, y, chain):
        """(name, nodes, output) of the activation reading `y` alone (the kernel applies it as it
        stores each block), or None."""
        readers = ctx.consumers().get(y, [])
        if not readers or y in ctx.graph_outputs or not any(r.op_type in ACTIVATION_OPS for r in readers):
            return None
        found = match_activation(ctx, ctx.consumers(), y, readers)
        if isinstance(found, str) or private_reason(ctx, ctx.consumers(), y, found[1]):
            return None
        return found

    @staticmethod
    def _bias_add(ctx, node, n):
        """The Add of a constant (n,) float32 bias reading the product alone (taken into it), or None."""
        y = node.output[0]
        readers = ctx.readers(y)
        if y in ctx.graph_outputs or len(readers) != 1 or not is_op(readers[0], "Add"):
            return None
        add = readers[0]
        other = add.input[1] if add.input[0] == y else add.input[0]
        c = ctx.constants.get(other)
        if c is None or c.dtype != np.float32 or c.size != n or not all(d == 1 for d in c.shape[:-1]) \
                or c.ndim > len(ctx.shape(node.input[0])):
            return None
        return add

    @staticmethod
    def _before_fake_quant(ctx, name, grid):
        """The FakeQuant(grid)'s input when `name` is its output: the kernel's codes of it are the
        same (FakeQuant is the identity on its grid), and the FakeQuant may then go dead."""
        source = ctx.producer().get(name)
        if is_normrt(source, "FakeQuant") and fq_grid(source) == tuple(grid):
            return source.input[0]
        return name

    def rewrite(self, ctx, node):
        if self._found[0] == "activations":
            (sa, za, la, ha), (sb, zb, lb, hb) = self._found[1]
            ins = [self._before_fake_quant(ctx, n, g) for n, g in zip(node.input, self._found[1])]
            new = make_node("QBatchedMatMul", ins, [node.output[0]],
                            fused_name(ctx, [node], "QBatchedMatMul"), a_scale=float(sa), a_zero=float(za),
                            a_lo=float(la), a_hi=float(ha), b_scale=float(sb), b_zero=float(zb), b_lo=float(lb),
                            b_hi=float(hb))
            ctx.replace_nodes([node], [new])
            ctx.report.fused.append({
                "pass": self.name, "op": PATTERN, "pattern": "MatMul", "nodes": [node.name],
                "normrt_op": "QBatchedMatMul", "normrt_node": new.name, "kernel": NORM_OPS["QBatchedMatMul"].kernel,
                "activation": None, "residual": False,
            })
            return
        grid, wq, wscale, bias, add, act = self._found
        a = node.input[0]
        if grid == "dynamic":
            a = ctx.producer()[a].input[0]          # the codes come from x's own range, in the kernel
            attrs = {"dynamic": 1}
        else:
            attrs = dict(zip(("a_scale", "a_zero", "a_lo", "a_hi"), (float(v) for v in grid)))
            a = self._before_fake_quant(ctx, a, grid)
        w = ctx.add_constant(node.input[1] + "_int8", wq)
        ws = ctx.add_constant(node.input[1] + "_scale", wscale)
        nodes, out = [node], node.output[0]
        if add is not None:
            bias = add.input[1] if add.input[0] == out else add.input[0]
            nodes, out = [node, add], add.output[0]
        if act is not None:
            attrs["activation"] = act[0]
            nodes, out = nodes + list(act[1]), act[2]
        if bias and ctx.constants[bias].ndim != 1:
            bias = ctx.add_constant(bias + "_row", ctx.constants[bias].reshape(-1))
        new = make_node("QMatMul", [a, w, ws] + ([bias] if bias else []), [out],
                        fused_name(ctx, nodes, "QMatMul"), **attrs)
        ctx.replace_nodes(nodes, [new])
        ctx.report.fused.append({
            "pass": self.name, "op": PATTERN, "pattern": "-".join(n.op_type for n in nodes),
            "nodes": [n.name for n in nodes], "normrt_op": "QMatMul", "normrt_node": new.name,
            "kernel": NORM_OPS["QMatMul"].kernel, "activation": act[0] if act else None, "residual": False,
        })

"""Average pooling after a 1x1 Conv -> pooling first: the Conv then runs on stride-product times fewer pixels.

    x ──► Conv(W: (M, C/g, 1, ..., 1), b; strides 1, no pads) ── y ──► AveragePool(k, s; no pads) ──► z

    ==>   x ──► AveragePool(k, s) ── x' ──► Conv(W, b) ──► z

A 1x1 Conv is the same affine map W.x + b applied to every pixel, so the mean
over a pooling window of its outputs is W.(mean of the window's inputs) + b:
the two commute, up to rounding. DenseNet's transition layers (BN -> Relu ->
Conv 1x1 -> AveragePool 2x2 stride 2) then run their Conv on a quarter of the
pixels; the pooling works on C instead of M channels (DenseNet halves the
channels there), far less work than the GEMM it saves.

Candidates: a Conv whose output is read only by an AveragePool with strides
whose product is > 1 (else nothing is saved). Refused (`check` gives the
reason; not reported, as nothing is left to onnx.reference: the two nodes stay
as they are):
- a Conv with another kernel size, strides other than 1, pads, or an auto_pad
  that pads; a weight of unknown shape;
- an AveragePool with pads or an auto_pad other than NOTSET/VALID, ceil_mode=1,
  dilations other than 1 (the windows then differ in size or position);
- element types other than float32/float64; the Conv output a graph output.
"""
from dataclasses import dataclass

import numpy as np
import onnx

from . import GraphPass
from ._queries import WIDE_DTYPES, float_type_reason, is_op, node_attrs, present, private_reason


@dataclass
class PoolMatch:
    conv: object
    pool: object

    @property
    def nodes(self):
        return [self.conv, self.pool]


class PoolBeforePointwiseConv(GraphPass):
    name = "pool_before_pointwise_conv"
    report_refusals = False      # a refused candidate still runs, unfused

    def matches(self, ctx):
        consumers = ctx.consumers()
        for node in ctx.nodes:
            if not is_op(node, "Conv") or not node.output or not node.output[0]:
                continue
            readers = consumers.get(node.output[0], [])
            if len(readers) == 1 and is_op(readers[0], "AveragePool"):
                attrs, reason = node_attrs(readers[0])
                if reason is None and int(np.prod(attrs.get("strides") or [1])) > 1:
                    yield PoolMatch(node, readers[0])

    def describe(self, m):
        return "Conv+AveragePool", [m.conv.name, m.pool.name]

    # -- check ---------------------------------------------------------------
    def check(self, ctx, m):
        if not present(ctx, m.nodes):
            return "nodes already rewritten by an earlier match"
        conv, pool = m.conv, m.pool
        y = conv.output[0]
        reason = private_reason(ctx, ctx.consumers(), y, [pool])
        if reason:
            return reason
        if len([o for o in conv.output if o]) != 1 or len([o for o in pool.output if o]) != 1:
            return "Conv or AveragePool with more than one output"
        reason = float_type_reason(ctx, [conv.input[0], y], WIDE_DTYPES)
        if reason:
            return reason
        w_shape = ctx.shape(conv.input[1]) if len(conv.input) > 1 else None
        if w_shape is None or len(w_shape) < 3 or any(d != 1 for d in w_shape[2:]):
            return f"Conv weight of shape {w_shape} (a 1x1 kernel needed)"
        nsp = len(w_shape) - 2
        cattrs, reason = node_attrs(conv)
        if reason:
            return reason
        if cattrs.get("kernel_shape") is not None and list(cattrs["kernel_shape"]) != [1] * nsp:
            return f"Conv kernel_shape {cattrs['kernel_shape']}"
        if any(s != 1 for s in cattrs.get("strides") or []):
            return f"Conv strides {cattrs['strides']}"
        if any(p != 0 for p in cattrs.get("pads") or []):
            return f"Conv pads {cattrs['pads']}"
        if cattrs.get("auto_pad", "NOTSET") not in ("NOTSET", "VALID", "SAME_UPPER", "SAME_LOWER"):
            return f"Conv auto_pad={cattrs['auto_pad']!r}"       # SAME_*: a 1x1 stride-1 window pads nothing
        pattrs, reason = node_attrs(pool)
        if reason:
            return reason
        if pattrs.get("auto_pad", "NOTSET") not in ("NOTSET", "VALID"):
            return f"AveragePool auto_pad={pattrs['auto_pad']!r}"
        if any(p != 0 for p in pattrs.get("pads") or []):
            return f"AveragePool pads {pattrs['pads']}"
        if pattrs.get("ceil_mode", 0):
            return "AveragePool ceil_mode=1 (the last windows may be partial)"
        if any(d != 1 for d in pattrs.get("dilations") or []):
            return f"AveragePool dilations {pattrs['dilations']}"
        kernel = pattrs.get("kernel_shape")
        if kernel is None or len(kernel) != nsp:
            return f"AveragePool kernel_shape {kernel} for {nsp} spatial axes"
        return None

    # -- rewrite -------------------------------------------------------------
    def rewrite(self, ctx, m):
        conv, pool = m.conv, m.pool
        pooled = ctx.new_name(f"{conv.input[0]}_pooled")
        new_pool = onnx.NodeProto()
        new_pool.CopyFrom(pool)                  # attributes exactly as they were
        del new_pool.input[:], new_pool.output[:]
        new_pool.input.append(conv.input[0])
        new_pool.output.append(pooled)
        new_conv = onnx.NodeProto()
        new_conv.CopyFrom(conv)
        del new_conv.input[:], new_conv.output[:]
        new_conv.input.extend([pooled] + list(conv.input[1:]))
        new_conv.output.append(pool.output[0])
        ctx.replace_nodes(m.nodes, [new_pool, new_conv])

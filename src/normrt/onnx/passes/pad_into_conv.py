"""A Pad of the spatial axes before a Conv -> the Conv's own pads.

    x ─► Pad(mode=constant, value 0, pads only on axes 2..) ─► Conv(auto_pad NOTSET/VALID, pads p) ─► y

    ==>  x ─► Conv(pads = p + the Pad's) ─► y

    x ─► Pad(mode=reflect | edge, pads q on axes 2.. of a 1-D or 2-D conv) ─► Conv(no pads of its own) ─► y

    ==>  x ─► normrt::Conv(pads = q, pad_mode = the Pad's mode) ─► y

    x (half) ─► Pad ─► Cast(to float32) ─► Conv        (half_regions' widening of a half model's Conv)

    ==>  x ─► Cast(to float32) ─► Conv or normrt::Conv, as above

TensorFlow-style "same" padding (EfficientNet's depthwise convs, its stem) is
exported as an explicit Pad, often asymmetric (0 before, 1 after). Conv pads
with zeros itself, per side, so the Pad's copy of the whole tensor goes away.
Style-transfer, CycleGAN/pix2pix and SPADE generators pad with
`nn.ReflectionPad2d` / `nn.ReplicationPad2d` (or `padding_mode="reflect"`), and
MelGAN / HiFi-GAN vocoders with `ReflectionPad1d` before dilated Conv1ds,
exported as a reflect / edge Pad before every conv: the conv kernel's own
padded copy of its input writes the mirrored border instead of zeros, so the
Pad node, a full pass writing a larger tensor, goes away (style256: the Pads
were ~7 ms of a ~45 ms run). A Cast from half to float32 commutes with any Pad
(the padded values are copies, exact in either type), so it moves first.

Candidates: a Pad whose output only Convs read as their input X, directly or
through one Cast. Refused (`check` gives the reason; not reported, the nodes
then run as they are): a constant pad value that is not a constant 0; the wrap
mode; pads that are not constant, negative (cropping), or touch the batch or
channel axes; an `axes` input; a Conv with auto_pad SAME_UPPER/SAME_LOWER; an
input of unknown rank; the Pad's (or the Cast's) output a graph output; a Cast
other than half -> float32. For reflect / edge also: a value that is not rank
3 or 4, or not float32 / float16 / bfloat16 (normrt::Conv is the float32 kernel
of 2-D convs, a 1-D conv its one-row case, half computed in float32); a Conv
with pads of its own (zeros outside the mirrored border are no single pad
mode); a weight of unknown shape; reflect pads not smaller than a static
spatial size (ONNX's Pad rejects those too).
"""
from dataclasses import dataclass

import numpy as np
from onnx import TensorProto, helper

from ..domain import make_node
from . import GraphPass
from ._queries import is_op, node_attrs
from .conv_epilogue import ConvEpilogue

HALF_TYPES = (TensorProto.FLOAT16, TensorProto.BFLOAT16)


@dataclass
class PadMatch:
    pad: object
    convs: list
    cast: object = None     # a Cast to float32 between the Pad and the Convs (a half model's)


class PadIntoConv(GraphPass):
    name = "pad_into_conv"
    report_refusals = False      # a refused candidate still runs, unfused

    def matches(self, ctx):
        for node in ctx.nodes:
            if not is_op(node, "Pad") or len(node.output) != 1 or not node.output[0] or not node.input:
                continue
            value, cast = node.output[0], None
            readers = ctx.readers(value)
            if len(readers) == 1 and is_op(readers[0], "Cast") and readers[0].output and readers[0].output[0]:
                # half models: half_regions computes the Conv in float32 behind a Cast, which
                # commutes with any Pad (mirrored or zero values are exact in float32)
                cast, value = readers[0], readers[0].output[0]
                readers = ctx.readers(value)
            if readers and all(is_op(r, "Conv") and r.input and r.input[0] == value
                               and value not in r.input[1:] for r in readers):
                yield PadMatch(node, readers, cast)

    def describe(self, m):
        return "Pad+Conv", [m.pad.name] + ([m.cast.name] if m.cast is not None else []) + [c.name for c in m.convs]

    def _spatial_pads(self, ctx, pad, conv_input):
        """(the Pad's begin/end amounts on axes 2.. and its mode, None) or (None, why not);
        conv_input: the value the Convs read (the Pad's output, or the Cast's after it)."""
        attrs, reason = node_attrs(pad)
        if reason:
            return None, reason
        mode = attrs.get("mode", "constant")
        mode = mode.decode() if isinstance(mode, bytes) else mode
        if mode not in ("constant", "reflect", "edge"):
            return None, f"mode {mode!r} (the conv kernel pads with zeros, a reflection or the edge)"
        if ctx.opsets.get("", 1) < 11:
            pads, value = attrs.get("pads"), attrs.get("value", 0.0)
        else:
            if len(pad.input) > 3 and pad.input[3]:
                return None, "an axes input"
            if len(pad.input) < 2 or not ctx.is_constant(pad.input[1]):
                return None, "pads not constant"
            pads = ctx.constants[pad.input[1]]
            value = 0.0
            if len(pad.input) > 2 and pad.input[2]:
                if not ctx.is_constant(pad.input[2]):
                    return None, "pad value not constant"
                v = ctx.constants[pad.input[2]]
                if v.size != 1:
                    return None, "pad value not a scalar"
                value = v.reshape(-1)[0]
        if pads is None:
            return None, "no pads"
        pads = [int(p) for p in np.asarray(pads).reshape(-1)]
        if mode == "constant" and float(value) != 0.0:
            return None, f"pad value {float(value)} (a Conv pads with 0)"
        shape = ctx.shape(pad.input[0])
        if shape is None or len(pads) != 2 * len(shape) or len(shape) < 3:
            return None, "input of unknown rank (or pads not 2 per axis)"
        rank = len(shape)
        begin, end = pads[:rank], pads[rank:]
        if any(p < 0 for p in pads):
            return None, "negative pads (cropping)"
        if begin[:2] != [0, 0] or end[:2] != [0, 0]:
            return None, "pads on the batch or channel axis"
        if mode != "constant":
            if rank not in (3, 4) or ctx.elem_type(conv_input) not in (TensorProto.FLOAT,) + HALF_TYPES:
                return None, f"a {mode} Pad of a rank-{rank} value of type {ctx.elem_type(conv_input)} " \
                             "(normrt::Conv's mirrored pads: 1-D or 2-D float32, or half computed in float32)"
            too_big = [(p, d) for p, d in zip(begin[2:] + end[2:], list(shape[2:]) * 2)
                       if mode == "reflect" and isinstance(d, int) and p >= d]
            if too_big:
                return None, f"reflect pads {too_big[0][0]} not smaller than the spatial size {too_big[0][1]}"
        return (begin[2:], end[2:], mode), None

    def check(self, ctx, m):
        if m.pad.output[0] in ctx.graph_outputs:
            return "the Pad's output is a graph output"
        if m.cast is not None:
            attrs, reason = node_attrs(m.cast)
            if reason:
                return reason
            if attrs.get("to") != TensorProto.FLOAT or ctx.elem_type(m.pad.input[0]) not in HALF_TYPES:
                return f"a Cast to {attrs.get('to')} of a {ctx.elem_type(m.pad.input[0])} Pad (only half " \
                       "values widened to float32 are exact either way round)"
            if m.cast.output[0] in ctx.graph_outputs:
                return "the Cast's output is a graph output"
        spatial, reason = self._spatial_pads(ctx, m.pad, m.convs[0].input[0])
        if reason:
            return reason
        m.spatial = spatial
        m.conv_attrs = []
        for conv in m.convs:
            attrs, reason = node_attrs(conv)
            if reason:
                return reason
            auto = attrs.get("auto_pad", "NOTSET")
            auto = auto.decode() if isinstance(auto, bytes) else auto
            if auto not in ("NOTSET", "VALID"):
                return f"{conv.name!r}: auto_pad {auto}"
            if spatial[2] != "constant":
                if auto == "NOTSET" and any(attrs.get("pads") or []):
                    return f"{conv.name!r} pads {list(attrs['pads'])} of its own (zeros outside the " \
                           f"{spatial[2]} border)"
                x_shape = ctx.shape(conv.input[0])
                rank = len(spatial[0]) + 2
                if x_shape is None or len(x_shape) != rank:
                    return f"{conv.name!r}: input of shape {x_shape} (rank {rank} needed)"
                w_shape = ctx.shape(conv.input[1]) if len(conv.input) > 1 else None
                if w_shape is None or len(w_shape) != rank or not all(isinstance(d, int) for d in w_shape):
                    return f"{conv.name!r}: weight of shape {w_shape} ({rank}-D static needed)"
                conv_attrs = ConvEpilogue.conv_attrs(ctx, conv, attrs, tuple(w_shape))
                if isinstance(conv_attrs, str):
                    return f"{conv.name!r}: {conv_attrs}"
                m.conv_attrs.append(conv_attrs)
        return None

    def rewrite(self, ctx, m):
        begin, end, mode = m.spatial
        new_convs = []
        x = m.pad.input[0]
        replaced = [m.pad] + ([m.cast] if m.cast is not None else [])
        widen = []
        if m.cast is not None:
            # the Cast moves before the (now fused) Pad: x -> Cast -> Convs
            x = ctx.new_name(m.cast.output[0] + "_unpadded")
            widen = [helper.make_node("Cast", [m.pad.input[0]], [x], name=m.cast.name, to=TensorProto.FLOAT)]
        if mode != "constant":
            # normrt::Conv: the Pad's amounts are its pads, which its padded copy mirrors
            for conv, attrs in zip(m.convs, m.conv_attrs):
                attrs["pads"] = list(begin) + list(end)
                name = conv.name or ctx.new_name("Conv")
                new_convs.append(make_node("Conv", [x] + list(conv.input[1:3]), list(conv.output),
                                           name, pad_mode=mode, **attrs))
                ctx.report.fused.append({
                    "pass": self.name, "op": "Conv", "pattern": f"Pad({mode})+Conv",
                    "nodes": [m.pad.name, conv.name], "normrt_op": "Conv", "normrt_node": name,
                    "kernel": "conv2d"})
            ctx.replace_nodes(replaced + m.convs, widen + new_convs)
            if len(new_convs) > 1 or widen:
                ctx.mark_unordered()
            return
        for conv in m.convs:
            attrs, _ = node_attrs(conv)
            auto = attrs.pop("auto_pad", "NOTSET")
            auto = auto.decode() if isinstance(auto, bytes) else auto
            old = attrs.get("pads") if auto != "VALID" else None
            old = list(old) if old else [0] * (2 * len(begin))
            k = len(begin)
            attrs["pads"] = [old[i] + begin[i] for i in range(k)] + [old[k + i] + end[i] for i in range(k)]
            new_convs.append(helper.make_node("Conv", [x] + list(conv.input[1:]), list(conv.output),
                                              name=conv.name, domain=conv.domain, **attrs))
        ctx.replace_nodes(replaced + m.convs, widen + new_convs)
        if len(new_convs) > 1 or widen:
            ctx.mark_unordered()        # all placed where the last Conv was: readers may now precede them

"""Conv epilogue: a float32 1-D or 2-D Conv and the elementwise ops after it -> one normrt::Conv.

    x ──► Conv(W [, b]) ── y ──► Add | Sum (y, r) ── s ──► activation ──► z
                                  (optional residual)       (optional)

        activation: Relu; Sigmoid; Sigmoid + Mul (SiLU); Gelu(approximate="none")
        or its Erf forms; Clip(0, 6) (ReLU6) or Clip(0); HardSigmoid(1/6, 1/2),
        HardSwish or HardSigmoid + Mul (matched as activation_epilogue matches them);
        LeakyRelu(alpha > 0), the conv kernel's own (YOLO's Conv -> LeakyRelu(0.1), GAN
        and vocoder blocks)

    ==>   x ──► normrt::Conv(X=x, W, B=b, residual=r;
                             strides, pads, dilations, group, activation) ──► z

ResNet's `Conv -> Sum(y, shortcut) -> Relu` and the `Conv -> Relu` everywhere
(BatchNorm and per-channel affine constants already folded into the Conv by
fold_batch_norm and fold_channel_affine, which run before) become one node:
the kernel adds the bias and residual and applies the activation as it writes
its output, instead of three more passes over memory. A Conv with nothing to
fuse stays a standard Conv (it runs on the same kernel). 1-D convs (audio: HiFi-GAN's
and MelGAN's residual blocks, `LeakyRelu -> Conv1d -> LeakyRelu -> Conv1d -> Add`;
EnCodec's and DAC's encoders) fuse the same way, normrt::Conv running them as 2-D convs
of one row.

Candidates: a Conv on rank-3 or rank-4 float32 values whose output y has one reader, an
Add/Sum or an activation (anything else leaves y alone; grouped convs with
fewer than 8 input channels per group -- depthwise convs, on the small_conv
kernel -- take an activation only: EfficientNet's and MobileViT's depthwise
Conv -> SiLU). The residual is fused only with the very
same static shape as y (equal ints or the same symbolic dims); an Add that may
broadcast, or a Sum of more than two inputs, ends the epilogue before it. The
residual may be the Conv's own input x (an identity shortcut around one conv):
the kernel writes a new y and reads x and r only, and the executor lets a node
overwrite an input only where it is that input's last reader, so no other
node writes x while the conv reads it.

Attributes are normalized: auto_pad VALID -> zero pads, SAME_UPPER/SAME_LOWER ->
explicit pads from x's static spatial shape; strides/dilations default to 1.

Refused (`check` gives the reason; not reported: a refused Conv still runs, on
the same kernel through the standard op, and the report's refusals are the
normalizations left to onnx.reference -- matmul_epilogue does the same):
- a middle value (y, the sum) read elsewhere or a graph output;
- auto_pad SAME_* with x's spatial shape not static, an unknown auto_pad,
  negative pads, kernel_shape other than W's, attributes of the wrong length;
- W of unknown shape or not of x's rank, a bias not of shape (M,), group not dividing
  M or not matching x's channels, an input not float32.
"""
from dataclasses import dataclass, field

from onnx import TensorProto

from ..domain import make_node
from . import GraphPass
from ._queries import is_op, leaky_alpha, node_attrs, other_input, present, private_reason
from .activation_epilogue import ACTIVATION_OPS as ACTIVATIONS_STARTING, PATTERN_NAMES, match_activation

MIN_GROUP_CHANNELS = 8          # grouped convs with fewer input channels per group stay standard Convs
FLOAT = TensorProto.FLOAT       # the kernel's type (float64 Convs stay on numpy)
# an activation, or the Div/Mul that starts an Erf GELU
ACTIVATION_OPS = ACTIVATIONS_STARTING + ("Div", "Mul", "LeakyRelu")


@dataclass
class ConvMatch:
    conv: object
    residual_node: object = None     # the Add/Sum
    residual: str = ""               # its other summand
    activation: str = ""
    alpha: float = 0.0               # the LeakyRelu's
    act_nodes: list = field(default_factory=list)
    out: str = ""
    attrs: dict = field(default_factory=dict)

    @property
    def nodes(self):
        return [self.conv] + ([self.residual_node] if self.residual_node is not None else []) + self.act_nodes


def _static_equal(a, b):
    """Whether two shapes are known to be equal (ints equal or the same symbolic dim on every axis)."""
    return a is not None and b is not None and len(a) == len(b) and \
        all(x is not None and x == y for x, y in zip(a, b))


def same_pads(auto_pad, in_shape, kernel, strides, dilations):
    """(h_begin, w_begin, h_end, w_end) of auto_pad SAME_UPPER / SAME_LOWER (the extra pad at the end / begin)."""
    begin, end = [], []
    for n, k, s, d in zip(in_shape, kernel, strides, dilations):
        out = -(-n // s)
        total = max(0, (out - 1) * s + (k - 1) * d + 1 - n)
        small, big = total // 2, total - total // 2
        begin.append(small if auto_pad == "SAME_UPPER" else big)
        end.append(big if auto_pad == "SAME_UPPER" else small)
    return tuple(begin + end)


class ConvEpilogue(GraphPass):
    name = "conv_epilogue"
    report_refusals = False      # a refused candidate still runs, unfused

    def matches(self, ctx):
        consumers = ctx.consumers()
        claimed = set()      # Add/Sum of two Conv outputs (ResNet's projection shortcut): the first Conv takes it
        for node in ctx.nodes:
            if not is_op(node, "Conv") or len(node.input) < 2 or not node.output or not node.output[0]:
                continue
            x_shape, w_shape = ctx.shape(node.input[0]), ctx.shape(node.input[1])
            if x_shape is None or len(x_shape) not in (3, 4) or ctx.elem_type(node.input[0]) != FLOAT:
                continue
            # grouped convs of few channels per group (depthwise) run on small_conv, whose
            # epilogue is the activation alone
            few = w_shape is not None and len(w_shape) == len(x_shape) and isinstance(w_shape[1], int) and \
                self._group(node) > 1 and w_shape[1] < MIN_GROUP_CHANNELS
            m = self._epilogue(ctx, consumers, node, residual=not few)
            if (m.residual_node is not None or m.activation) and not claimed & {id(n) for n in m.nodes}:
                claimed.update(id(n) for n in m.nodes)
                yield m

    @staticmethod
    def _group(node):
        attrs, reason = node_attrs(node)
        return 1 if reason else int(attrs.get("group", 1))

    def _epilogue(self, ctx, consumers, conv, residual=True):
        """The longest fusable epilogue after `conv` (possibly none: a ConvMatch with nothing after the Conv);
        without `residual`, an activation right after the Conv only."""
        m = ConvMatch(conv, out=conv.output[0])
        y = conv.output[0]
        readers = consumers.get(y, [])
        if not readers or y in ctx.graph_outputs:
            return m
        add = readers[0]
        if len(readers) == 1 and (is_op(add, "Add") or is_op(add, "Sum")) and len(add.input) == 2:
            if not residual:
                return m
            r = other_input(add, y)
            s = add.output[0]
            if r and ctx.elem_type(r) == FLOAT and _static_equal(ctx.shape(r), ctx.shape(y)) and \
                    _static_equal(ctx.shape(s), ctx.shape(y)):
                m.residual_node, m.residual, m.out = add, r, s
                readers = consumers.get(s, [])
                if s in ctx.graph_outputs:
                    return m
            else:
                return m
        v = m.out
        if not readers or not any(is_op(r, op) for r in readers for op in ACTIVATION_OPS):
            return m
        found = match_activation(ctx, consumers, v, readers, leaky=True)
        if isinstance(found, str):
            return m
        act, nodes, out = found
        if private_reason(ctx, consumers, v, nodes) or \
                any(private_reason(ctx, consumers, n.output[0], nodes) for n in nodes if n.output[0] != out):
            return m
        m.activation, m.act_nodes, m.out = act, list(nodes), out
        m.alpha = leaky_alpha(nodes[0]) if act == "leaky_relu" else 0.0
        return m

    def describe(self, m):
        return self._pattern(m), [n.name for n in m.nodes]

    @staticmethod
    def _pattern(m):
        parts = ["Conv"]
        if m.residual_node is not None:
            parts.append(m.residual_node.op_type)
        if m.activation:
            parts.append(PATTERN_NAMES[m.activation])
        return "+".join(parts)

    # -- check ---------------------------------------------------------------
    def check(self, ctx, m):
        if not present(ctx, m.nodes):
            return "nodes already rewritten by an earlier match"
        conv = m.conv
        consumers = ctx.consumers()
        for n in m.nodes[:-1]:                 # every value but the last output disappears
            reason = private_reason(ctx, consumers, n.output[0], m.nodes)
            if reason:
                return reason
        if len([o for o in conv.output if o]) != 1:
            return "Conv has more than one output"
        x, w = conv.input[0], conv.input[1]
        b = conv.input[2] if len(conv.input) > 2 and conv.input[2] else ""
        w_shape, rank = ctx.shape(w), len(ctx.shape(x))
        if w_shape is None or len(w_shape) != rank or not all(isinstance(d, int) for d in w_shape):
            return f"shape of the weight {w!r} is {w_shape} ({rank}-D static needed, as x)"
        M = w_shape[0]
        if b and tuple(ctx.shape(b) or ()) != (M,):
            return f"bias {b!r} of shape {ctx.shape(b)}, expected ({M},)"
        attrs, reason = node_attrs(conv)
        if reason:
            return reason
        spec = self.conv_attrs(ctx, conv, attrs, tuple(w_shape))
        if isinstance(spec, str):
            return spec
        for name in [x, w, b, m.residual, conv.output[0]]:
            if name and ctx.elem_type(name) != FLOAT:
                return f"element type of {name!r} is not float32"
        m.attrs = spec
        return None

    @staticmethod
    def conv_attrs(ctx, conv, attrs, w_shape):
        """normrt::Conv attributes (explicit pads) of a 1-D or 2-D Conv (w_shape (M, C / group,
        *kernel)), or a refusal reason."""
        M, cg, kernel_w = w_shape[0], w_shape[1], list(w_shape[2:])
        n = len(kernel_w)
        group = int(attrs.get("group", 1))
        if group < 1 or M % group:
            return f"group={group} does not divide the weight's {M} output channels"
        x_shape = ctx.shape(conv.input[0])
        if isinstance(x_shape[1], int) and x_shape[1] != cg * group:
            return f"x has {x_shape[1]} channels; the weight with group={group} needs {cg * group}"
        kernel = attrs.get("kernel_shape")
        if kernel is not None and list(kernel) != kernel_w:
            return f"kernel_shape {list(kernel)} is not the weight's {kernel_w}"
        strides = list(attrs.get("strides") or [1] * n)
        dilations = list(attrs.get("dilations") or [1] * n)
        if len(strides) != n or len(dilations) != n or min(strides + dilations) < 1:
            return f"strides {strides} / dilations {dilations} ({n} values >= 1 needed)"
        auto_pad = attrs.get("auto_pad", "NOTSET")
        if auto_pad == "NOTSET":
            pads = list(attrs.get("pads") or [0] * 2 * n)
            if len(pads) != 2 * n or min(pads) < 0:
                return f"pads {pads} ({2 * n} values >= 0 needed)"
        elif auto_pad == "VALID":
            pads = [0] * 2 * n
        elif auto_pad in ("SAME_UPPER", "SAME_LOWER"):
            spatial = x_shape[2:]
            if not all(isinstance(d, int) for d in spatial):
                return f"auto_pad={auto_pad} with x's spatial shape {list(spatial)} not static"
            pads = list(same_pads(auto_pad, spatial, kernel_w, strides, dilations))
        else:
            return f"auto_pad={auto_pad!r}"
        return {"strides": strides, "pads": pads, "dilations": dilations, "group": group}

    # -- rewrite -------------------------------------------------------------
    def rewrite(self, ctx, m):
        conv = m.conv
        b = conv.input[2] if len(conv.input) > 2 else ""
        name = conv.name or ctx.new_name("Conv")
        extra = {"alpha": m.alpha} if m.activation == "leaky_relu" else {}
        new = make_node("Conv", [conv.input[0], conv.input[1], b, m.residual], [m.out], name,
                        activation=m.activation, **extra, **m.attrs)
        ctx.replace_nodes(m.nodes, [new])
        ctx.report.fused.append({
            "pass": self.name, "op": "Conv", "pattern": self._pattern(m), "nodes": [n.name for n in m.nodes],
            "normrt_op": "Conv", "normrt_node": name, "kernel": "conv2d",
            "activation": m.activation or None, "residual": m.residual_node is not None,
        })

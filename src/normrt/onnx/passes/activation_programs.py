"""An elementwise program that computes an activation -> the activation epilogue of the kernel before it.

activation_epilogue, conv_epilogue and matmul_epilogue match the activations' usual spellings
node by node (Relu, Sigmoid + Mul, the Erf GELU's forms, Clip(0, 6), ...). Any other spelling
of GELU - the tanh approximation as GPT-2, BLOOM or GPT-NeoX write it, an Erf GELU with its
factors in another order - ends up as one normrt::Elementwise node (elementwise_chains), whose
expression elementwise_program.recognize evaluates on probe points to tell what it computes.
When that is a function the kernels apply as their store's epilogue, and the node's one input
is the output of a normrt MatMul, Conv or norm, or of a standard float32 Conv (made a
normrt::Conv as conv_epilogue makes it), read by nothing else, the node goes:

    normrt::{MatMul, Conv, LayerNorm, GroupNorm, ...}(activation="") | Conv ── y ──►
        normrt::Elementwise(y; ops/args/constants computing GELU or its tanh form) ──► z

    ==>  normrt::{...}(activation="gelu" | "gelu_tanh") ──► z

Refused (`check` gives the reason; the Elementwise node then runs as it is): y read by other
nodes or a graph output; a producer that already has an activation or more outputs than y
(statistics); an expression that is no recognized activation (look-alike constants: 0.0447
for 0.044715 stays a program); an element type change between y and z, or z's shape not
known to be y's (a constant of higher rank raises the program's output rank).
"""
from ..domain import NORM_OPS, make_node
from ..elementwise_program import recognize
from .._graph import NORMRT_DOMAIN, canonical_domain
from . import GraphPass
from ._queries import is_normrt, is_op, node_attrs, take_fused_entry
from .activation_epilogue import report_activation
from .conv_epilogue import ConvEpilogue, ConvMatch

# elementwise_program.RECOGNIZED's names that are kernel activations (normrt.ACTIVATIONS)
KERNEL_ACTIVATIONS = {"gelu": "gelu", "gelu_tanh": "gelu_tanh"}


def recognized_activation(node):
    """The kernel activation a normrt::Elementwise node of one input computes, or None."""
    attrs, reason = node_attrs(node)
    if reason or len(node.input) != 1:
        return None
    ops = tuple(o.decode() if isinstance(o, bytes) else str(o) for o in attrs.get("ops", ()))
    args = tuple(int(a) for a in attrs.get("args", ()))
    constants = tuple(float(c) for c in attrs.get("constants", ()))
    if any(not 0 <= a < 1 + len(constants) + k // 2 for k, a in enumerate(args)):
        return None
    return KERNEL_ACTIVATIONS.get(recognize(ops, args, constants, 1))


class ActivationPrograms(GraphPass):
    name = "activation_programs"
    report_refusals = False     # a refused program still runs, on the elementwise kernel

    def matches(self, ctx):
        producer = ctx.producer()
        for node in ctx.nodes:
            if is_normrt(node, "Elementwise") and len(node.input) == 1:
                host = producer.get(node.input[0])
                if host is not None and (is_op(host, "Conv") or canonical_domain(host.domain) == NORMRT_DOMAIN and
                                         "activation" in getattr(NORM_OPS.get(host.op_type), "defaults", {})):
                    yield (host, node)

    def describe(self, m):
        return f"{m[0].op_type}+activation program", [m[0].name, m[1].name]

    def check(self, ctx, m):
        host, program = m
        if not (ctx.contains(host) and ctx.contains(program)):
            return "node already rewritten"
        y = program.input[0]
        if y != host.output[0] or len([o for o in host.output if o]) != 1:
            return "the producer has outputs besides Y (statistics)"
        if y in ctx.graph_outputs or len(ctx.readers(y)) != 1:
            return f"{y!r} is read by other nodes or is a graph output"
        act = recognized_activation(program)
        if act is None:
            return "the program computes no kernel activation"
        if ctx.elem_type(y) != ctx.elem_type(program.output[0]):
            return "the program changes the element type"
        if ctx.shape(y) is None or ctx.shape(program.output[0]) != ctx.shape(y):
            # (a constant of higher rank raises the program's output rank: out_rank)
            return "the program's output shape is not known to be y's"
        if is_op(host, "Conv"):            # a standard Conv: conv_epilogue's checks and node
            conv_match = ConvMatch(host, activation=act, act_nodes=[program], out=program.output[0])
            reason = ConvEpilogue().check(ctx, conv_match)
            if reason is None:
                self._plans[id(program)] = {"conv": conv_match, "activation": act}
            return reason
        attrs, reason = node_attrs(host)
        if reason:
            return reason
        if attrs.get("activation", ""):
            return f"{host.name!r} already has activation {attrs['activation']!r}"
        self._plans[id(program)] = {"activation": act, "attrs": attrs}
        return None

    def rewrite(self, ctx, m):
        host, program = m
        plan = self._plans.pop(id(program))
        absorbed = take_fused_entry(ctx, program.name)
        if "conv" in plan:
            ConvEpilogue().rewrite(ctx, plan["conv"])
            entry = ctx.report.fused[-1]
            entry["pass"] = self.name
            entry["nodes"] = [host.name] + list((absorbed or {}).get("nodes", [program.name]))
            return
        attrs = dict(plan["attrs"], activation=plan["activation"])
        new = make_node(host.op_type, list(host.input), [program.output[0]], host.name, **attrs)
        ctx.replace_nodes([host, program], [new])
        report_activation(ctx, self.name, host, plan["activation"], (absorbed or {}).get("nodes", [program.name]))

    def run(self, ctx):
        self._plans = {}
        return super().run(ctx)

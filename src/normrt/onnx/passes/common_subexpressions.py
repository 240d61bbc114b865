"""Common subexpressions: a node computing what an earlier node computes is dropped, and its
readers read the earlier node's outputs.

    x ──► Shape ──► Gather(c0) ──► a ──► ...          x ──► Shape ──► Gather(c0) ──► a ──► ...
    x ──► Shape ──► Gather(c1) ──► b ──► ...   ==>                                  └──► ... (b's readers)
                   (c0, c1: two constants [0])

Exporters and rewrites repeat work per layer: the TorchScript exporter's Shape -> Gather ->
Unsqueeze -> Concat chains before each attention's Reshape, onnxruntime-genai's builder and
the contrib-op rewrites (passes/group_query_attention.py: every layer's positions, mask and cache
rows from the same seqlens_k), an attention mask expanded once per layer. Each repeat is a few
microseconds of dispatch in every run; a small model's decode step is mostly such nodes.

Two nodes compute the same when they have the same op, domain, attributes and inputs, an input
being a value (after the renaming of earlier duplicates, so a repeated chain goes in one sweep)
or, for a constant of at most SMALL_CONSTANT elements, its dtype, shape and bytes (each layer's
own copy of [0] is the same input). Large constants count by name: comparing weights by value
would read every weight at load, and tied weights share a name anyway.

Left alone: ops that draw random numbers (two draws differ), ops with subgraphs (If / Loop / Scan:
their bodies read outer values by name, which a renaming does not reach), a node with an output
that is a graph output or that a subgraph reads, and a node writing an output the earlier one
does not (an optional output it leaves empty).
"""
from .._graph import canonical_domain, node_reads
from . import GraphPass

SMALL_CONSTANT = 256
RANDOM_OPS = {"RandomNormal", "RandomUniform", "RandomNormalLike", "RandomUniformLike", "Bernoulli",
              "Multinomial"}


def _has_subgraph(node):
    return any(a.g.ByteSize() or len(a.graphs) for a in node.attribute)


class CommonSubexpressions(GraphPass):
    name = "common_subexpressions"

    def run(self, ctx):
        nodes = ctx.nodes
        # values a subgraph reads by name (implicitly): never renamed
        implicit = {name for n in nodes if _has_subgraph(n) for name in node_reads(n) if name not in n.input}
        protected = implicit | set(ctx.graph_outputs)
        alias, seen, gone, constant_keys = {}, {}, [], {}
        for node in nodes:
            if node.op_type in RANDOM_OPS or _has_subgraph(node) or not any(node.output):
                continue
            key = (canonical_domain(node.domain), node.op_type,
                   tuple(self._input_key(ctx, alias.get(i, i), constant_keys) for i in node.input),
                   tuple(sorted((a.name, a.SerializeToString()) for a in node.attribute)))
            first = seen.setdefault(key, node)
            if first is node or not self._same_outputs(first, node, protected):
                continue
            for k, out in enumerate(node.output):
                if out:
                    alias[out] = first.output[k]
            gone.append(node)
        if gone:
            ctx.replace_nodes(gone, [])
            ctx.rename_reads(alias)
        ctx.report.passes[self.name] = ctx.report.passes.get(self.name, 0) + len(gone)
        return len(gone)

    @staticmethod
    def _input_key(ctx, name, constant_keys):
        if not name or not ctx.is_constant(name):
            return name
        if name not in constant_keys:
            value = ctx.constants[name]
            constant_keys[name] = (("constant", value.dtype.str, value.shape, value.tobytes())
                                   if value.size <= SMALL_CONSTANT else name)
        return constant_keys[name]

    @staticmethod
    def _same_outputs(first, node, protected):
        """Whether node's outputs can all be read from first's instead."""
        for k, out in enumerate(node.output):
            if not out:
                continue
            if out in protected or k >= len(first.output) or not first.output[k]:
                return False
        return True

"""If on normrt's own executor: each branch a nested Executor, its nodes on the kernels and numpy
ops like the main graph's.

Optimum's merged decoders (`decoder_model_merged.onnx`, what transformers.js and most ONNX LLM
and Whisper repositories on the hub ship) hold the whole model twice, in the two branches of
one If on `use_cache_branch`. onnx.reference ran the If, with every node of the branch taken in
its pure-Python implementations. A branch is a graph like any other, so it runs as one: an
Executor of the branch, whose inputs are the outer-scope names it reads, fed from the values of
the graph around it (the graph's constants as its own, never copied); its kernel, numpy and reference nodes
bound at load, as the main graph's are. The optimizer's passes rewrite the branches too
(optimize_branches.py), so their norms and attention are on the fused kernels.

Loop and Scan stay on onnx.reference (fallback.py).
"""
import numpy as np
from onnx import helper

from ._graph import free_names
from .initializers import stub


def branch_model(graph, outer_names, outer_constants, opsets):
    """A ModelProto of subgraph `graph` whose graph inputs are the outer-scope names it reads,
    but `outer_constants` {name: array}, initializers of it (data-less stubs: the executor is
    handed the arrays); `opsets` {domain: version}: the model's."""
    g = helper.make_graph(list(graph.node), graph.name or "branch",
                          [helper.make_empty_tensor_value_info(n) for n in outer_names if n not in outer_constants],
                          list(graph.output),
                          list(graph.initializer) + [stub(n, v) for n, v in outer_constants.items()],
                          value_info=list(graph.value_info))
    g.sparse_initializer.extend(graph.sparse_initializer)
    return helper.make_model(g, opset_imports=[helper.make_opsetid(d, v) for d, v in opsets.items()])


class IfNode:
    """An If whose branches run on nested Executors (`kind` "subgraph")."""

    kind = "subgraph"

    def __init__(self, node, opsets, functions=(), constants=None):
        from .executor import Executor         # (executor binds this class: imported when bound)
        self.node = node
        self.outputs = [o for o in node.output if o]
        self.out_positions = [i for i, o in enumerate(node.output) if o]
        self.branches = {}
        for attr in node.attribute:
            if attr.name in ("then_branch", "else_branch"):
                names = sorted(free_names(attr.g))
                # the graph's constants the branch reads are its constants too (the same arrays):
                # its weights packed once, its plans specialized on its inputs' shapes alone
                given = {n: constants[n] for n in names if constants and n in constants}
                outer = [n for n in names if n not in given]
                ex = Executor(branch_model(attr.g, names, given, opsets), given, functions=list(functions))
                if len(ex.output_names) != len(node.output):
                    from ..errors import ModelError
                    raise ModelError(f"If node {node.name!r}: its {attr.name} has {len(ex.output_names)} outputs, "
                                     f"the node {len(node.output)}")
                self.branches[attr.name == "then_branch"] = (ex, outer)
        if len(self.branches) != 2:
            from ..errors import ModelError
            raise ModelError(f"If node {node.name!r} needs then_branch and else_branch")

    def counts(self):
        """Both branches' nodes by kind (Executor.counts)."""
        out = {}
        for ex, _ in self.branches.values():
            for k, n in ex.counts().items():
                out[k] = out.get(k, 0) + n
        return out

    def __call__(self, args, values):
        cond = args[0]
        if np.size(cond) != 1:
            raise ValueError(f"If node {self.node.name!r}: the condition must hold one value, got shape "
                             f"{np.shape(cond)}")
        ex, outer = self.branches[bool(np.asarray(cond).reshape(-1)[0])]
        env = values or {}
        outs = ex.run({n: env[n] for n in outer})
        # a branch may hand back an outer value (or a view of one) as it is: copied when writeable,
        # so an op after the If that writes into its input cannot write into the outer value
        live = [v for v in env.values() if isinstance(v, np.ndarray) and v.flags.writeable]
        if live:
            outs = [o.copy() if isinstance(o, np.ndarray) and any(np.may_share_memory(o, v) for v in live) else o
                    for o in outs]
        return [outs[i] for i in self.out_positions]

"""Run one standard node with onnx.reference (the executor's fallback).

Each fallback node gets its own one-node `ReferenceEvaluator` built at load
time over a GraphProto holding just that node, with the model's opsets and
local functions. That is the public, version-aware way to get onnx.reference's
implementation (it picks the op version, expands schema functions such as
GroupNormalization or MeanVarianceNormalization, and runs If/Loop/Scan bodies,
which read outer-scope values from the feed we pass).
"""
from onnx import TypeProto, helper
from onnx.reference import ReferenceEvaluator

from ._graph import canonical_domain, implicit_inputs, node_label


def function_evaluators(functions):
    """ReferenceEvaluators for a model's local functions, built once and shared by every fallback node."""
    built = []
    for f in functions:
        built.append(ReferenceEvaluator(f, functions=list(built)))
    return built


class ReferenceNode:
    """A node run by onnx.reference. Construction fails (NotImplementedError) if it cannot run it."""

    kind = "reference"

    def __init__(self, node, opsets, functions=()):
        self.node = node
        self.outputs = [o for o in node.output if o]
        self.implicit = implicit_inputs(node)
        # outputs typed as "unknown" so context-dependent schema functions are resolved at run time
        graph = helper.make_graph(
            [node], f"normrt_fallback_{node.name}", [],
            [helper.make_value_info(o, TypeProto()) for o in self.outputs])
        opsets = dict(opsets)
        if "" in opsets:
            opsets.setdefault("ai.onnx", opsets[""])
        try:
            self.evaluator = ReferenceEvaluator(graph, opsets=opsets, functions=list(functions))
        except Exception as e:  # noqa: BLE001 - any failure means "cannot run this node"
            dom = canonical_domain(node.domain)
            version = opsets.get(dom)
            raise NotImplementedError(
                f"op {node.op_type!r} (domain {dom or 'ai.onnx'!r}, opset version {version}) of node "
                f"{node_label(node)} is implemented neither by normrt nor by onnx.reference: "
                f"{type(e).__name__}: {str(e).splitlines()[0] if str(e) else ''}") from e

    def __call__(self, args, values):
        feed = {name: value for name, value in zip(self.node.input, args) if name}
        for name in self.implicit:
            feed[name] = values[name]
        return self.evaluator.run(self.outputs, feed)

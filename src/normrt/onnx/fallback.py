"""Run one standard node with onnx.reference (the executor's fallback).

Each fallback node gets its own one-node `ReferenceEvaluator` built at load
time over a GraphProto holding just that node, with the model's opsets and
local functions. That is the public, version-aware way to get onnx.reference's
implementation (it picks the op version, expands schema functions such as
GroupNormalization or MeanVarianceNormalization, and runs If/Loop/Scan bodies,
which read outer-scope values from the feed we pass).

Half precision: onnx.reference computes a float16/bfloat16 node in numpy in that
dtype (bfloat16 emulated, element by element, its sums accumulated in bfloat16:
an InstanceNormalization's statistics lose every digit). A single-output node
whose output type follows its inputs (no `to`/`dtype`-like attribute) runs
instead as the executor's own ops do (ops/_half.py): half inputs widened to
float32, a float32 result rounded once to the data input's half dtype.
"""
from onnx import AttributeProto, TypeProto, helper
from onnx.reference import ReferenceEvaluator

from ._graph import canonical_domain, implicit_inputs, node_label
from .ops import _half

# attributes that choose a node's output type, and ops typed by another input than their data:
# such a node runs on its half inputs as they are
_TYPE_ATTRIBUTES = frozenset(("to", "dtype", "output_dtype", "output_datatype", "stash_type", "saturate"))
_TYPED_BY_OTHER_INPUT = frozenset(("CastLike",))


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

        # whether a half-precision run may compute in float32 (see the module docstring)
        self.widens = (len(self.outputs) == 1 and not self.implicit and node.op_type not in _TYPED_BY_OTHER_INPUT
                       and not any(a.name in _TYPE_ATTRIBUTES or a.type in (AttributeProto.GRAPH,
                                                                            AttributeProto.GRAPHS)
                                   for a in node.attribute))

    def __call__(self, args, values):
        half = None
        if self.widens:
            half = _half.result_dtype(args)
            if half is not None:
                args = _half.widen_args(args)[0]
        feed = {name: value for name, value in zip(self.node.input, args) if name}
        for name in self.implicit:
            feed[name] = values[name]
        res = self.evaluator.run(self.outputs, feed)
        return res if half is None else _half.narrow_results(list(res), half)

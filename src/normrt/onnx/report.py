"""What normrt.optimize did to a model: the Report the passes fill, and its text form.

Report.as_dict() (returned by `normrt.optimize(model, report=True)`):
    fused    one dict per normalization put on a kernel: pass, op (the ONNX op or
             pattern name), pattern, nodes (names of the replaced nodes),
             normrt_op, normrt_node, kernel, activation (fused, or None), residual (bool);
             also one per Conv / MatMul whose epilogue (bias, residual, activation) was
             fused into a normrt node, and one per attention subgraph put on the fused
             attention kernel and one per elementwise chain put on the fused elementwise
             kernel (normrt_op in COMPUTE_OPS: not normalizations)
    refused  one dict per normalization left to onnx.reference: pass, op, nodes, reason
    passes   rewrite count per pass (constant_folding: nodes folded, dead_nodes: removed)
    counts   number of normrt nodes per normrt op
    half_compute  (only with half_compute="float32") regions, retyped (half values now float32),
             up_casts / down_casts (boundary Casts added), widened_constants, refused regions
"""
from dataclasses import dataclass, field

from .domain import COMPUTE_OPS  # noqa: F401 - re-exported: normrt ops that are not a norm


# normrt ops that run the fused attention kernel (an attention subgraph, onnxruntime's GQA step)
ATTENTION_OPS = frozenset(("Attention", "GroupQueryAttention"))


def is_attention(entry):
    """Whether a `fused` entry put an attention on the fused attention kernel."""
    return entry.get("normrt_op") in ATTENTION_OPS


def is_epilogue(entry):
    """Whether a `fused` entry is a Conv/MatMul epilogue fusion (or a fused attention) rather than a normalization."""
    return entry.get("normrt_op") in COMPUTE_OPS


@dataclass
class Report:
    fused: list = field(default_factory=list)
    refused: list = field(default_factory=list)
    passes: dict = field(default_factory=dict)
    # half_compute="float32" (passes/half_regions.py): regions, retyped values, boundary Casts
    half_compute: dict = field(default_factory=dict)

    def counts(self):
        out = {}
        for entry in self.fused:
            if entry.get("normrt_op") is None:     # folded away (e.g. BatchNorm into a Conv): no node
                continue
            out[entry["normrt_op"]] = out.get(entry["normrt_op"], 0) + 1
        return out

    def as_dict(self):
        out = {"fused": [dict(e) for e in self.fused], "refused": [dict(e) for e in self.refused],
               "passes": dict(self.passes), "counts": self.counts()}
        if self.half_compute:
            out["half_compute"] = dict(self.half_compute)
        return out


def format_report(report):
    """The report (a Report or its dict) as text, for `normrt inspect`."""
    if isinstance(report, Report):
        report = report.as_dict()
    fused, refused = report.get("fused", []), report.get("refused", [])
    folded = sum(1 for e in fused if e.get("normrt_op") is None)
    epilogues = sum(1 for e in fused if is_epilogue(e))
    attention = sum(1 for e in fused if is_attention(e))
    lines = [f"normalizations: {len(fused) - folded - epilogues} on normrt kernels, "
             + (f"{folded} folded into weights, " if folded else "")
             + f"{len(refused)} left to onnx.reference"]
    if epilogues - attention:
        lines.append(f"Conv/MatMul with fused epilogues: {epilogues - attention}")
    if attention:
        lines.append(f"attention subgraphs on the fused kernel: {attention}")
    for op, n in sorted(report.get("counts", {}).items()):
        lines.append(f"  {op:<18} x{n}")
    if fused:
        lines.append("fused:")
        for e in fused:
            extra = ""
            if e.get("activation"):
                extra += f" +{e['activation']}"
            if e.get("residual"):
                extra += " +residual"
            nodes = ", ".join(repr(n) for n in e.get("nodes", []))
            if e.get("normrt_op") is None:
                lines.append(f"  {e.get('op', '?')} [{nodes}] -> {e.get('kernel')}")
                continue
            lines.append(f"  {e.get('op', '?')} [{nodes}] -> normrt::{e.get('normrt_op')} "
                         f"'{e.get('normrt_node')}' (kernel {e.get('kernel')}){extra}")
    if refused:
        lines.append("left to onnx.reference:")
        for e in refused:
            nodes = ", ".join(repr(n) for n in e.get("nodes", []))
            lines.append(f"  {e.get('op', '?')} [{nodes}]: {e.get('reason')}")
    passes = report.get("passes", {})
    if passes:
        lines.append("passes: " + ", ".join(f"{k}={v}" for k, v in passes.items()))
    return "\n".join(lines)


def value_elem_types(model):
    """{value name: TensorProto element type} of a (rewritten) model, known statically: declared
    inputs, initializers and value_info, then node by node in graph order, normrt nodes typing their
    outputs like X (LayerNorm's Mean / InvStdDev: stash_type) and standard ones by onnx's per-node
    inference, an If's branches too. A value it cannot type is absent (custom domains, functions,
    Loop / Scan bodies)."""
    from ._graph import opset_versions

    g = model.graph
    types = {}
    for vi in list(g.input) + list(g.value_info) + list(g.output):
        if vi.type.HasField("tensor_type") and vi.type.tensor_type.elem_type:
            types[vi.name] = vi.type
    _type_graph(g, types, opset_versions(model), model)
    return {name: tp.tensor_type.elem_type for name, tp in types.items()}


def _type_graph(g, types, opsets, model):
    """value_elem_types' node-by-node typing of graph `g` into `types`; an If's branches in turn
    (control_flow.py runs them, optimize_branches.py fuses in them), its outputs typed as theirs."""
    from onnx import defs, helper, shape_inference

    from ._graph import NORMRT_DOMAIN, canonical_domain

    for t in g.initializer:
        types[t.name] = helper.make_tensor_type_proto(t.data_type, list(t.dims))
    for node in g.node:
        domain = canonical_domain(node.domain)
        if not domain and node.op_type == "If":
            for attr in node.attribute:
                if attr.name in ("then_branch", "else_branch"):
                    _type_graph(attr.g, types, opsets, model)
                    for o, bo in zip(node.output, attr.g.output):
                        if o and bo.name in types:
                            types.setdefault(o, types[bo.name])
            continue
        if domain == NORMRT_DOMAIN:
            x = types.get(node.input[0]) if node.input else None
            if x is None:
                continue
            stash = next((a.i for a in node.attribute if a.name == "stash_type"), 1)
            for k, o in enumerate(node.output):
                if o:
                    stats = node.op_type == "LayerNorm" and k in (1, 2)
                    # X's element type, not its shape: a MatMul, Conv or Attention output has
                    # another, with which the next node's inference would fail
                    types[o] = helper.make_tensor_type_proto(stash if stats else x.tensor_type.elem_type, None)
            continue
        known = {i: types[i] for i in node.input if i in types}
        if len(known) != len([i for i in node.input if i]):
            continue
        out = None
        # the model's opset first; then the op's newest schema, for types it lacks and normrt runs
        # (a bfloat16 Conv at opset 18: Conv took bfloat16 in opset 22)
        for version in (opsets.get(domain, 1), None):
            try:
                schema = defs.get_schema(node.op_type, version, domain) if version is not None \
                    else defs.get_schema(node.op_type, domain)
                out = shape_inference.infer_node_outputs(schema, node, known,
                                                         opset_imports=list(model.opset_import))
                break
            except Exception:  # noqa: BLE001 - best effort: an untyped value shows as '?'
                continue
        if out is None:
            continue
        for name, tp in out.items():
            if tp.HasField("tensor_type") and tp.tensor_type.elem_type:
                types[name] = tp


def dtype_name(elem_type):
    """'float16', 'bfloat16', 'int64'... for a TensorProto element type; '?' if unknown (0)."""
    from ._graph import np_dtype
    dt = np_dtype(elem_type) if elem_type else None
    return dt.name if dt is not None else "?"

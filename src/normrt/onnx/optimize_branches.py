"""The rewrite passes on the branches of If nodes (and Loop and Scan bodies): each optimized as a model of its own.

Optimum's merged decoders hold the whole model in the two branches of one If (control_flow.py
runs them on nested executors); the passes only walked the main graph, so the branches' norms,
attention and products stayed decomposed. A branch reads the values around it by name (graph
inputs, activations, the weights as outer-scope initializers). Here it becomes a model whose
inputs are those names, typed as the main graph types them, and whose initializers include the
outer constants it reads (the same arrays, no copy), so the passes see weights as constants;
`optimize_detached` runs on it (nested Ifs recursively), and the result goes back into the If:

    If(cond) then_branch = g  ──►  model(inputs: outer names g reads, initializers: g's + the
                                          outer constants g reads, nodes of g, outputs of g)
                               ──►  optimize_detached ──► g' = its nodes and outputs; its
                                    initializers but the untouched outer constants (embedded:
                                    the branch's executor reads its own), the names it made that
                                    the model already uses renamed

The report gets the branch's fusions (their node names as the branch has them).
"""
import numpy as np
from onnx import helper, numpy_helper

from ._graph import NameGen, all_nodes, canonical_domain, free_names, subgraphs
from .initializers import is_stub, stub


def optimize_branches(ctx, optimize_detached, passes, half_compute):
    """Rewrite the branches of ctx's If nodes and the bodies of its Loops and Scans in place (ctx: the main
    graph's PassContext, its passes done); True when one holds normrt nodes now. A body's own
    inputs (iteration, condition, carried values) stay its inputs."""
    ifs = [n for n in ctx.nodes if n.op_type in ("If", "Loop", "Scan") and not canonical_domain(n.domain)]
    if not ifs:
        return False
    names = NameGen(ctx.graph)
    normrt_nodes = False
    for node in ifs:
        for attr in node.attribute:
            if attr.name in ("then_branch", "else_branch", "body"):
                try:
                    graph, report = _optimize_branch(ctx, attr.g, optimize_detached, passes, half_compute, names)
                except Exception as e:  # noqa: BLE001 - the branch then runs as written, as before
                    ctx.report.refused.append({"pass": "optimize_branches", "op": node.op_type, "nodes": [node.name],
                                               "reason": f"{attr.name} left as written: {type(e).__name__}: "
                                                         f"{str(e).splitlines()[0] if str(e) else ''}"})
                    continue
                attr.g.CopyFrom(graph)
                normrt_nodes |= any(canonical_domain(n.domain) == "normrt" for n in all_nodes(graph))
                for entry in report.fused:
                    ctx.report.fused.append(dict(entry, branch=f"{node.name}/{attr.name}"))
                for entry in report.refused:
                    ctx.report.refused.append(dict(entry, branch=f"{node.name}/{attr.name}"))
                for name, count in report.passes.items():
                    ctx.report.passes[name] = ctx.report.passes.get(name, 0) + count
    ctx.nodes = ctx.nodes          # the If nodes' implicit reads changed: index them again
    return normrt_nodes


def _optimize_branch(ctx, g, optimize_detached, passes, half_compute, names):
    outer = sorted(free_names(g))
    constants = {n: ctx.constants[n] for n in outer if n in ctx.constants}
    inputs = []
    for n in outer:
        if n in constants:
            continue
        t = ctx.types.get(n)
        shape = None if t is None or t.shape is None else [d if isinstance(d, (int, str)) else None for d in t.shape]
        inputs.append(helper.make_tensor_value_info(n, t.elem_type, shape) if t is not None and t.elem_type
                      else helper.make_empty_tensor_value_info(n))
    own = {t.name for t in g.initializer} | {i.name for i in g.input}
    inits = list(g.initializer) + [stub(n, v) for n, v in constants.items()]
    model = helper.make_model(
        helper.make_graph(list(g.node), g.name or "branch", list(g.input) + inputs, list(g.output), inits,
                          value_info=list(g.value_info)),
        opset_imports=list(ctx.model.opset_import), functions=list(ctx.model.functions))
    model.ir_version = ctx.model.ir_version
    defined_before = own | {o for n in g.node for o in n.output if o}
    opt, report, arrays = optimize_detached(model, passes, constants=constants, half_compute=half_compute)
    og = opt.graph
    kept = []
    for t in og.initializer:
        value = arrays[t.name] if t.name in arrays else numpy_helper.to_array(t)
        if t.name in constants and value is constants[t.name]:
            continue                            # read from the outer scope, as before
        kept.append(numpy_helper.from_array(np.asarray(value), t.name) if is_stub(t) else t)
    # names the passes made (and outer constants the branch changed): fresh in the whole model
    made = ({t.name for t in kept} | {o for n in og.node for o in n.output if o}) - defined_before
    rename = {}
    for n in sorted(made):
        fresh = names(n)
        if fresh != n:
            rename[n] = fresh
    body_inputs = {i.name for i in g.input}        # a Loop / Scan body's own (an If branch has none)
    graph = helper.make_graph(list(og.node), og.name, [i for i in og.input if i.name in body_inputs],
                              list(og.output), kept)
    if rename:
        _rename(graph, rename)
    return graph, report


def _rename(graph, mapping):
    """Every use and definition of the names in `mapping` in `graph` and its subgraphs."""
    for t in graph.initializer:
        t.name = mapping.get(t.name, t.name)
    for node in graph.node:
        for i, n in enumerate(node.input):
            node.input[i] = mapping.get(n, n)
        for i, n in enumerate(node.output):
            node.output[i] = mapping.get(n, n)
        for g in subgraphs(node):
            _rename(g, mapping)
    for o in graph.output:
        o.name = mapping.get(o.name, o.name)

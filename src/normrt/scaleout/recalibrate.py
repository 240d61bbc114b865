"""Re-estimating every BatchNormalization's running statistics over a dataset.

The exact dataset statistics: for each BN, over all samples and positions of
its input, per channel, the mean and the unbiased (n − 1) variance, as torch
stores running_var. A BN's input depends on the BNs before it, so the BNs are
recalibrated in topological passes:

    level(BN) = number of BNs on the longest path from the graph inputs to it
    pass k:  stats model = the graph cut at the inputs of the level-k BNs, with
             every earlier BN already carrying its new statistics
             ─► run it over the whole dataset, PartialMoments per BN, merged
             ─► write the level-k BNs' new statistics

A Conv–BN–ReLU–Conv–BN model takes two passes over the data. The per-pass work
is scheduler-agnostic: `run_pass(stats_model, stat_names)` returns one merged
PartialMoments per name; `recalibrate_with` drives the passes and rewrites the
model, the single-process `recalibrate_batch_norm` and normrt.dask plug in.

Exporters deduplicate equal tensors (a fresh BN's scale and running_var, both
ones, become one initializer behind Identity nodes): every BN gets new
initializers of its own for mean and var, and the tensors it used are left as
they are (removed only when nothing else uses them).
"""
import numpy as np
import onnx
from onnx import helper, numpy_helper

from ..errors import ModelError
from ..onnx.loader import load_model
from .moments import PartialMoments

BN_OP = "BatchNormalization"

NO_BN_HINT = ("torch.onnx.export folds BatchNorm into the preceding Conv in eval mode: export with "
              "training=torch.onnx.TrainingMode.PRESERVE (or do_constant_folding=False) to keep the "
              "BatchNormalization nodes")


def _is_bn(node):
    return node.op_type == BN_OP and node.domain in ("", "ai.onnx")


def batch_norm_levels(graph):
    """[[BN node, ...] per level], level k holding the BNs with k BNs upstream of them."""
    return [[graph.node[i] for i in level] for level in batch_norm_level_indices(graph)]


def batch_norm_level_indices(graph):
    """batch_norm_levels as node indices (node names need not be unique)."""
    producer = {}
    level = {}          # node index -> number of BNs on the longest path into the node's inputs
    for i, node in enumerate(graph.node):
        deps = [producer[name] for name in node.input if name in producer]
        level[i] = max((level[j] + (1 if _is_bn(graph.node[j]) else 0) for j in deps), default=0)
        for out in node.output:
            if out:
                producer[out] = i
    levels = {}
    for i, node in enumerate(graph.node):
        if _is_bn(node):
            levels.setdefault(level[i], []).append(i)
    return [levels[k] for k in sorted(levels)]


def check_has_batch_norm(proto):
    levels = batch_norm_levels(proto.graph)
    if not levels:
        raise ModelError(f"the model has no BatchNormalization node to recalibrate ({NO_BN_HINT})")
    for bns in levels:
        for bn in bns:
            if len(bn.input) < 5 or not all(bn.input[:5]):
                raise ModelError(f"BatchNormalization node {bn.name!r} needs 5 inputs "
                                 f"(X, scale, B, mean, var), has {list(bn.input)}")
    return levels


def stats_output_names(bns):
    return [f"normrt_recalibrate.{k}.input" for k in range(len(bns))]


def stats_model(proto, bns):
    """The part of the model that computes the inputs of `bns`, each exposed through an
    Identity as a graph output (named by `stats_output_names`); nodes not upstream are dropped."""
    graph = proto.graph
    targets = [bn.input[0] for bn in bns]
    producer = {}
    for i, node in enumerate(graph.node):
        for out in node.output:
            if out:
                producer[out] = i
    keep, stack = set(), [producer[t] for t in targets if t in producer]
    while stack:
        i = stack.pop()
        if i in keep:
            continue
        keep.add(i)
        stack.extend(producer[name] for name in graph.node[i].input if name in producer and producer[name] not in keep)
    types = _value_types(proto)
    names = stats_output_names(bns)
    nodes = [graph.node[i] for i in sorted(keep)]
    nodes += [helper.make_node("Identity", [t], [n], name=n) for t, n in zip(targets, names)]
    outputs = []
    for t, n in zip(targets, names):
        vi = onnx.ValueInfoProto(name=n)
        if t in types:
            vi.type.CopyFrom(types[t])
        else:   # a rank nobody could infer: declared as (N, C, ...) of unknown sizes, checked at run time
            vi.type.CopyFrom(helper.make_tensor_type_proto(onnx.TensorProto.FLOAT, ["N", "C"]))
        outputs.append(vi)
    sub = helper.make_graph(nodes, graph.name + "_bn_inputs", list(graph.input), outputs,
                            initializer=list(graph.initializer), value_info=list(graph.value_info))
    sub.sparse_initializer.extend(graph.sparse_initializer)
    model = helper.make_model(sub, opset_imports=list(proto.opset_import), ir_version=proto.ir_version)
    model.functions.extend(proto.functions)
    return model


def _value_types(proto):
    """{value name: TypeProto with element type and shape} from ONNX shape inference."""
    types = {}
    try:
        inferred = onnx.shape_inference.infer_shapes(proto)
    except Exception:       # noqa: BLE001 - inference is only a hint for the output dtypes
        inferred = proto
    g = inferred.graph
    for vi in list(g.input) + list(g.value_info) + list(g.output):
        tt = vi.type.tensor_type
        if vi.type.HasField("tensor_type") and tt.elem_type and tt.HasField("shape"):
            types[vi.name] = vi.type
    return types


def _constant_dtype(proto, name):
    """numpy dtype of the tensor behind `name` (through Identity/Constant), float32 if unknown."""
    graph = proto.graph
    inits = {t.name: t for t in graph.initializer}
    producer = {o: n for n in graph.node for o in n.output}
    for _ in range(len(graph.node) + 1):
        if name in inits:
            return numpy_helper.to_array(inits[name]).dtype
        node = producer.get(name)
        if node is None:
            break
        if node.op_type == "Identity":
            name = node.input[0]
            continue
        if node.op_type == "Constant":
            for a in node.attribute:
                if a.name == "value":
                    return numpy_helper.to_array(a.t).dtype
        break
    return np.dtype(np.float32)


def _channel_count(proto, bn):
    """Length of the BN's running mean where it is a constant (through Identity), else None."""
    graph = proto.graph
    inits = {t.name: t for t in graph.initializer}
    producer = {o: n for n in graph.node for o in n.output}
    name = bn.input[3]
    for _ in range(len(graph.node) + 1):
        if name in inits:
            return int(np.prod(inits[name].dims))
        node = producer.get(name)
        if node is None or node.op_type != "Identity":
            return None
        name = node.input[0]
    return None


def _fresh_name(base, taken):
    name, k = base, 1
    while name in taken:
        name, k = f"{base}_{k}", k + 1
    taken.add(name)
    return name


def apply_statistics(proto, stats):
    """A copy of proto in which each BN {node index: (mean, var)} of `stats` reads new
    initializers of its own; tensors and nodes nothing uses any more are removed."""
    model = onnx.ModelProto()
    model.CopyFrom(proto)
    graph = model.graph
    taken = {t.name for t in graph.initializer} | {vi.name for vi in graph.input}
    taken |= {o for n in graph.node for o in n.output} | {n.name for n in graph.node}
    old = set()
    for i, node in enumerate(graph.node):
        if not _is_bn(node) or i not in stats:
            continue
        mean, var = stats[i]
        dt = _constant_dtype(model, node.input[3])
        for slot, value, what in ((3, mean, "running_mean"), (4, var, "running_var")):
            name = _fresh_name(f"{node.name or 'bn'}.{what}.recalibrated", taken)
            graph.initializer.append(numpy_helper.from_array(np.asarray(value, dtype=dt), name))
            old.add(node.input[slot])
            node.input[slot] = name
    _remove_unused(graph, old)
    return model


def _remove_unused(graph, candidates):
    """Drop the Identity/Constant chains and initializers behind `candidates` that nothing uses."""
    keep = {vi.name for vi in graph.output} | {vi.name for vi in graph.input}
    while candidates:
        used = {name for n in graph.node for name in n.input} | keep
        dead = {c for c in candidates if c not in used}
        if not dead:
            break
        nxt = set()
        for i in reversed(range(len(graph.node))):
            node = graph.node[i]
            if node.op_type in ("Identity", "Constant") and list(node.output) and set(node.output) <= dead:
                nxt.update(node.input)
                del graph.node[i]
        for i in reversed(range(len(graph.initializer))):
            if graph.initializer[i].name in dead:
                del graph.initializer[i]
        candidates = nxt


def recalibrate_with(model, run_pass, passes_hint=None):
    """Drive the passes: `run_pass(stats_model, stat_names)` -> [merged PartialMoments per name].

    Returns the recalibrated ModelProto. `passes_hint(n)` is called once with the
    number of passes before the first (e.g. to check a one-shot data source).
    """
    proto = load_model(model)
    levels = check_has_batch_norm(proto)
    if passes_hint is not None:
        passes_hint(len(levels))
    for k, _ in enumerate(levels):
        # indices into the current model, used before apply_statistics removes dead nodes
        indices = batch_norm_level_indices(proto.graph)[k]
        bns = [proto.graph.node[i] for i in indices]
        names = stats_output_names(bns)
        merged = run_pass(stats_model(proto, bns), names)
        stats = {}
        for i, bn, m in zip(indices, bns, merged):
            channels = _channel_count(proto, bn)
            if channels is not None and m.shape != (channels,):
                raise ModelError(f"BatchNormalization {bn.name!r}: its input has {m.shape[0]} channels, "
                                 f"its scale {channels}")
            if m.count < 2:
                raise ValueError(f"BatchNormalization {bn.name!r}: {m.count} value(s) per channel in the whole "
                                 f"dataset, the unbiased variance needs at least 2")
            stats[i] = (m.mean, m.var(ddof=1))
        proto = apply_statistics(proto, stats)
    return proto


def _feeds(batches):
    if callable(batches):
        return batches()
    return iter(batches)


def recalibrate_batch_norm(model, batches, *, num_threads=None, progress=False):
    """Re-estimate every BatchNormalization's running mean and var over `batches`.

    `model` is a path, bytes or onnx.ModelProto; `batches` an iterable of feeds
    ({input name: array}, or an array for a single-input model), re-iterated
    once per pass (a list, or a callable returning a fresh iterator; a one-shot
    generator works only for a model whose BNs do not feed each other). The new
    statistics are the exact ones over all the data: per channel, the mean and
    the unbiased (n − 1) variance, as torch stores running_var. Returns a new
    ModelProto (the BNs read new initializers; the input model is not changed).
    `progress=True` shows a tqdm bar per pass.
    """
    from ..onnx.session import InferenceSession

    def check_passes(n):
        if n > 1 and not callable(batches) and iter(batches) is batches:
            raise ValueError(f"batches is a one-shot iterator, but this model needs {n} passes over the data "
                             f"(BatchNorms feed BatchNorms): pass a list or a callable returning a fresh iterator")

    def run_pass(sub, names):
        sess = InferenceSession(sub, num_threads=num_threads)
        inputs = [i.name for i in sess.get_inputs()]
        merged = None
        feeds = _feeds(batches)
        if progress:
            from tqdm.auto import tqdm
            feeds = tqdm(feeds, desc=f"recalibrate {names[0].split('.')[1]}", unit="batch")
        for b, feed in enumerate(feeds):
            feed = _as_feed(feed, inputs, b)
            values = sess.run(names, {n: feed[n] for n in inputs})
            parts = [PartialMoments.from_batch(np.asarray(v, dtype=np.float64) if v.dtype not in
                                               (np.float32, np.float64) else v) for v in values]
            merged = parts if merged is None else [a.merge(p) for a, p in zip(merged, parts)]
        if merged is None:
            raise ValueError("batches is empty: no data to estimate the statistics from")
        return merged

    return recalibrate_with(model, run_pass, check_passes)


def _as_feed(feed, inputs, index):
    if isinstance(feed, dict):
        missing = [n for n in inputs if n not in feed]
        if missing:
            raise ValueError(f"batch {index}: missing input(s) {missing}; the model's inputs are {inputs}")
        return feed
    if len(inputs) != 1:
        raise ValueError(f"batch {index}: the model has {len(inputs)} inputs {inputs}: give each batch as a dict "
                         f"{{input name: array}}")
    return {inputs[0]: feed}

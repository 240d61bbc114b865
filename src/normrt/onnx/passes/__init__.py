"""Graph rewrites, one module per rewrite.

A pass is a `GraphPass` subclass in its own module, whose docstring draws the
subgraph it matches. It finds candidates (`matches`), refuses anything it does
not fully understand (`check` returns the reason, recorded in the report),
rewrites the rest (`rewrite`) and `run` returns how many it rewrote:

    class MyFusion(GraphPass):
        name = "my_fusion"
        def matches(self, ctx): ...          # yields candidate matches
        def check(self, ctx, match): ...     # None if OK, else why not
        def rewrite(self, ctx, match): ...   # edits ctx (replace_nodes, add_constant, ...)

Passes edit a `PassContext`: the graph's node list, its constants (initializer
values by name; never modified in place -- add new ones with `add_constant`),
value types from shape inference, and the report. A pass knows nothing of
kernels or Cython: normrt nodes are built with `normrt.onnx.domain.make_node`
and run later by `normrt.onnx.kernels`. Fusions append their entry to
`ctx.report.fused` (see normrt.onnx.report for the fields).
"""
from dataclasses import dataclass

import numpy as np
import onnx
from onnx import helper, numpy_helper

from .._graph import NameGen, canonical_domain, node_reads, opset_versions
from ..initializers import (DETACH_MIN_ELEMENTS, big_initializer_names, detachable, is_stub, stub,
                            without_initializers)
from ..report import Report
from ._queries import is_static


@dataclass
class ValueType:
    elem_type: int            # TensorProto.DataType, 0 if unknown
    shape: tuple = None       # ints / dim_param strings / None per dim; None if rank unknown


class PassContext:
    """The graph being rewritten (the ModelProto is rebuilt from it by `commit`)."""

    def __init__(self, model, report=None, constants=None):
        """`constants`: the values of `model`'s stub initializers (loader.load_detached)."""
        self.model = model
        self.graph = model.graph
        self.nodes = list(model.graph.node)       # builds the use-def index (see `nodes`)
        self.opsets = opset_versions(model)
        given = constants or {}
        self.constants = {t.name: given[t.name] if t.name in given else numpy_helper.to_array(t)
                          for t in model.graph.initializer}
        # the arrays are the one copy of the weights: the proto keeps data-less stubs (see ..initializers)
        for i, t in enumerate(model.graph.initializer):
            if not is_stub(t) and detachable(self.constants[t.name]):
                model.graph.initializer[i].CopyFrom(stub(t.name, self.constants[t.name]))
        self.graph_inputs = {i.name for i in model.graph.input} - set(self.constants)
        self._initializer_names = set(self.constants)
        self.graph_outputs = [o.name for o in model.graph.output]
        self.report = report if report is not None else Report()
        self.new_name = NameGen(model.graph)
        self.types = {}
        # folded DequantizeLinear outputs -> (integer values, scale, zero point or None, axis): the
        # 8-bit weights a static QDQ model's products quantize to (constant_folding records them)
        self.dequantized = {}
        self._dirty = True         # nodes or constants changed since the last commit
        self._untyped = set()      # values written by nodes added since the last refresh_types
        self._retype = False       # set by mark_types_stale
        self.refresh_types()

    # -- types ---------------------------------------------------------------
    def refresh_types(self):
        """Value types from the graph's declarations and onnx shape inference (best effort)."""
        self.commit()
        types = {}
        for vi in list(self.graph.input) + list(self.graph.output):
            types[vi.name] = _value_type(vi.type)
        # the file's own value_info: what inference cannot work out itself (a custom-domain op's
        # outputs), but not authoritative where it can. Tools write stale or vaguer shapes there
        # (onnxruntime's quantization tools: 'unk__1' for a static batch of 1), which would hide
        # the static shapes the fusions need; inference runs without the others, then they fill gaps.
        declared = {vi.name: _value_type(vi.type) for vi in self.graph.value_info
                    if vi.name not in types or types[vi.name].shape is None}
        for name in [n for n in declared if n in types]:
            # a graph output declared without a shape, which value_info gives (a user's extra
            # output reading an intermediate value)
            types[name] = _more_specific(declared.pop(name), types[name])
        for name, value in self.constants.items():
            try:
                elem = onnx.helper.np_dtype_to_tensor_dtype(value.dtype)
            except (KeyError, TypeError, ValueError):
                elem = 0
            types[name] = ValueType(elem, tuple(value.shape))
        # onnx cannot infer through normrt (or other custom-domain) nodes: their outputs keep the
        # types known before the rewrite (same names), declared for the inference so it goes on past them
        custom = [o for node in self.nodes if canonical_domain(node.domain) != "" for o in node.output
                  if o and o not in types and self.types.get(o) is not None and self.types[o].elem_type]
        n_declared, n_opsets = len(self.graph.value_info), len(self.model.opset_import)
        # commit drops initializers from graph.input: IR < 4 inference would take them for unknowns
        ir_version = self.model.ir_version
        self.model.ir_version = max(ir_version, 4)
        for name in custom:
            t = self.types[name]
            types[name] = t
            shape = None if t.shape is None else [d if isinstance(d, (int, str)) else None for d in t.shape]
            self.graph.value_info.append(onnx.helper.make_tensor_value_info(name, t.elem_type, shape))
        imported = {canonical_domain(o.domain) for o in self.model.opset_import}
        for domain in sorted({canonical_domain(n.domain) for n in self.nodes} - imported):
            self.model.opset_import.append(onnx.helper.make_opsetid(domain, 1))   # else inference stops
        try:
            small = _without_initializer_data(self.model)
            if small is self.model:
                # no big initializers: that is the model itself, whose own value_info the lines
                # below must not rewrite (they would drop the file's declarations for good: a
                # second refresh of a dynamo export then lost half its types)
                small = onnx.ModelProto()
                small.CopyFrom(self.model)
            # keep the declarations of custom-domain outputs: inference goes on past them
            custom_outputs = {o for node in self.nodes if canonical_domain(node.domain) != "" for o in node.output}
            kept = [v for v in small.graph.value_info[:n_declared] if v.name in custom_outputs]
            rest = list(small.graph.value_info[n_declared:])
            del small.graph.value_info[:]
            small.graph.value_info.extend(kept + rest)
            inferred = _infer_shapes(small)
            for vi in inferred.graph.value_info:
                if vi.name not in types:
                    types[vi.name] = _more_specific(_value_type(vi.type), declared.get(vi.name))
            for vi in inferred.graph.output:
                t = _value_type(vi.type)
                if types.get(vi.name) is None or types[vi.name].elem_type == 0:
                    types[vi.name] = t
                elif types[vi.name].shape is None and t.shape is not None:
                    # an output declared without a shape (a user's extra output reading an
                    # intermediate value): what inference knows of it, as for any value
                    types[vi.name] = _more_specific(t, types[vi.name])
        except Exception:  # noqa: BLE001 - inference is best effort; unknown types make passes refuse
            pass
        finally:
            del self.graph.value_info[n_declared:]
            del self.model.opset_import[n_opsets:]
            self.model.ir_version = ir_version
        for name, t in declared.items():
            types.setdefault(name, t)
        self.types = types
        self._untyped = set()
        self._retype = False

    def infer_node_types(self, node):
        """Type `node`'s outputs from its inputs' known types (and the values of its small constant
        inputs) by onnx's inference of that one node; True if an output's shape became better known.

        Whole-model inference learns a shape computed from a Shape only once the Shape is folded
        (Reshape-13 reads constant shapes, not propagated ones), one link of a chain per
        refresh: a sweep typing nodes in order as it folds them settles the whole chain at once.
        """
        if canonical_domain(node.domain) != "" or not node.output:
            return False
        outs = [o for o in node.output if o]
        if all(is_static(self.shape(o)) for o in outs):
            return False
        reads = [i for i in node.input if i]
        if any(self.elem_type(i) == 0 or self.shape(i) is None for i in reads):
            return False
        try:
            schema = onnx.defs.get_schema(node.op_type, self.opsets.get("", 1), "")
            input_types = {i: onnx.helper.make_tensor_type_proto(
                self.elem_type(i), [d if isinstance(d, (int, str)) else None for d in self.shape(i)])
                for i in reads}
            data = {i: numpy_helper.from_array(np.asarray(self.constants[i]), i) for i in reads
                    if i in self.constants and np.size(self.constants[i]) <= MAX_INFERENCE_DATA}
            inferred = onnx.shape_inference.infer_node_outputs(schema, node, input_types, data)
        except Exception:  # noqa: BLE001 - best effort, like the whole-model inference
            return False
        better = False
        for name, tp in inferred.items():
            t = _value_type(tp)
            if t.elem_type and _known_dims(t.shape) > _known_dims(self.shape(name)):
                self.types[name] = t
                better = True
        return better

    def mark_types_stale(self):
        """Inference may now know more (e.g. constant folding turned a Shape computation into
        constants, which data propagation reads as a static shape): refresh after this pass."""
        self._retype = True

    def elem_type(self, name):
        t = self.types.get(name)
        return t.elem_type if t else 0

    def shape(self, name):
        t = self.types.get(name)
        return t.shape if t else None

    # -- the node list and its use-def index --------------------------------
    # The index is kept up to date by every edit (replace_nodes, assigning `nodes`), so a
    # query costs O(1) and a pass O(nodes): no map is rebuilt per match. Each node has an
    # order key, a tuple: a replacement takes the key of the last node it replaces with
    # one more component per new node, so keys stay in graph order without renumbering.
    @property
    def nodes(self):
        """The nodes in graph order (a fresh list: editing it does not edit the graph; assign it)."""
        if self._ordered is None:
            self._ordered = sorted(self._node_of.values(), key=lambda n: self._key[id(n)])
        return list(self._ordered)

    @nodes.setter
    def nodes(self, nodes):
        self._node_of, self._key, self._reads = {}, {}, {}
        self._producer, self._readers = {}, {}
        self._ordered = None
        self._unordered = False
        self._dirty = True
        for i, node in enumerate(nodes):
            self._index(node, (i,))

    def _index(self, node, key):
        nid = id(node)
        self._node_of[nid] = node
        self._key[nid] = key
        reads = node_reads(node)
        self._reads[nid] = reads
        for name in node.output:
            if name:
                self._producer[name] = node
        for name in reads:
            # copy on write: a reader list a pass holds stays as it was
            self._readers[name] = self._readers.get(name, ()) + (node,)

    def _unindex(self, node):
        nid = id(node)
        del self._node_of[nid]
        del self._key[nid]
        for name in node.output:
            if name and self._producer.get(name) is node:
                del self._producer[name]
        for name in set(self._reads.pop(nid)):
            kept = tuple(r for r in self._readers.get(name, ()) if r is not node)
            if kept:
                self._readers[name] = kept
            else:
                self._readers.pop(name, None)

    def consumers(self):
        """{value name: (nodes reading it, once per read)} (explicit and implicit reads).

        The live index: read it, never modify it; it follows the graph's edits.
        """
        return self._readers

    def readers(self, name):
        """The distinct nodes reading `name`, in the order they were indexed."""
        seen, out = set(), []
        for n in self._readers.get(name, ()):
            if id(n) not in seen:
                seen.add(id(n))
                out.append(n)
        return out

    def producer(self):
        """{value name: the node writing it} (the live index: read it, never modify it)."""
        return self._producer

    def contains(self, node):
        """Whether `node` is in the graph now (an earlier rewrite may have replaced it)."""
        return self._node_of.get(id(node)) is node

    def order_key(self, node):
        """A key sorting nodes in graph order (None for a node not in the graph)."""
        return self._key.get(id(node))

    def in_graph_order(self, nodes):
        """The distinct `nodes` in graph order (nodes no longer in the graph first)."""
        unique = {id(n): n for n in nodes}.values()
        return sorted(unique, key=lambda n: (1,) + self._key[id(n)] if self.contains(n) else (0,))

    def is_constant(self, name):
        return name in self.constants

    # -- edits ---------------------------------------------------------------
    def replace_nodes(self, old, new):
        """Replace the nodes `old` by `new`, placed where the last of `old` was."""
        old = [n for n in {id(n): n for n in old}.values()]
        missing = [n.name for n in old if not self.contains(n)]
        if missing:
            raise ValueError(f"replace_nodes: nodes {missing} are not in the graph")
        last = max(self._key[id(n)] for n in old)
        for n in old:
            self._unindex(n)
        for i, n in enumerate(new):
            self._index(n, last + (i,))
            self._untyped.update(o for o in n.output if o and o not in self.types)
        self._ordered = None
        self._dirty = True

    def rename_reads(self, alias):
        """Every node reading a name of `alias` ({old name: new name}) reads the new name instead
        (the readers are rebuilt in place, their order kept). Implicit reads of a subgraph are not
        renamed: callers leave out names a subgraph reads."""
        readers = {id(r): r for name in alias for r in self.readers(name)}
        for reader in self.in_graph_order(readers.values()):
            renamed = helper.make_node(reader.op_type, [alias.get(i, i) for i in reader.input],
                                       list(reader.output), name=reader.name, domain=reader.domain)
            renamed.attribute.extend(reader.attribute)
            self.replace_nodes([reader], [renamed])

    def mark_unordered(self):
        """A rewrite may have put a reader before its producer: `commit` restores topological order."""
        self._unordered = True

    def _restore_order(self):
        from ..plan import topological_order    # the executor's own ordering (stable)
        available = set(self.graph_inputs) | set(self.constants) | self._initializer_names
        self.nodes, _ = topological_order(self.nodes, available, self.graph_outputs)

    def add_constant(self, base_name, value):
        name = self.new_name(base_name)
        self.constants[name] = np.asarray(value)
        self._untyped.add(name)
        self._dirty = True
        return name

    def types_stale(self):
        """Whether values added since the last refresh_types lack a type (rewrites keep the
        names, and so the types, of the values they replace: most need no new inference)."""
        if self._retype or any(name not in self.types for name in self._untyped):
            return True
        # constants folded under a name inference could not type
        return any(self.types.get(name) is None or self.types[name].shape is None for name in self.constants)

    def commit(self):
        """Write nodes and constants back into the ModelProto (dropping unused initializers)."""
        if not self._dirty and not self._unordered:
            return
        self._dirty = False
        if self._unordered:
            self._restore_order()
        used = set(self.graph_outputs)
        used.update(self._readers)
        del self.graph.node[:]
        self.graph.node.extend(self.nodes)
        present = set()
        for i in reversed(range(len(self.graph.initializer))):   # drop unused ones in place
            name = self.graph.initializer[i].name
            if name not in used or name not in self.constants or name in present:
                del self.graph.initializer[i]
            else:
                present.add(name)
        for name, value in self.constants.items():
            if name in used and name not in present:
                value = np.asarray(value)
                self.graph.initializer.append(stub(name, value) if detachable(value)
                                              else numpy_helper.from_array(value, name))
        self.constants = {k: v for k, v in self.constants.items() if k in used}
        self._initializer_names |= set(self.constants)
        # initializers are constants in normrt: drop them from the inputs (IR < 4 lists them there)
        inputs = [i for i in self.graph.input
                  if i.name not in self.constants and i.name not in self._initializer_names]
        if len(inputs) != len(self.graph.input):
            del self.graph.input[:]
            self.graph.input.extend(inputs)


MAX_INFERENCE_DATA = 64     # elements of a constant input handed to a node's inference (shape vectors)


def _known_dims(shape):
    """-1 for an unknown rank, else the number of dims known as ints."""
    return -1 if shape is None else sum(isinstance(d, int) for d in shape)


def _value_type(tp):
    if tp.WhichOneof("value") != "tensor_type":
        return ValueType(0, None)
    tt = tp.tensor_type
    if not tt.HasField("shape"):
        return ValueType(tt.elem_type, None)
    dims = []
    for d in tt.shape.dim:
        dims.append(int(d.dim_value) if d.HasField("dim_value") else (d.dim_param or None))
    return ValueType(tt.elem_type, tuple(dims))


def _more_specific(inferred, declared):
    """The type of a value from onnx's inference and the file's value_info (or None): per dim,
    a known size from either (inference's where both are known), so a vaguer declaration
    ('unk__1', None) never hides a size inference found, nor the reverse."""
    if declared is None or declared.shape is None or (inferred.elem_type and declared.elem_type
                                                      and inferred.elem_type != declared.elem_type):
        return inferred
    if inferred.shape is None:
        return ValueType(inferred.elem_type or declared.elem_type, declared.shape)
    if len(inferred.shape) != len(declared.shape):
        return inferred
    dims = tuple(i if isinstance(i, int) or not isinstance(d, int) else d
                 for i, d in zip(inferred.shape, declared.shape))
    return ValueType(inferred.elem_type or declared.elem_type, dims)


def _infer_shapes(model):
    """onnx shape inference with data propagation (Shape -> Gather -> Concat -> Reshape targets
    become static shapes, as the legacy exporter writes them), without it if that fails."""
    if _data_propagation_is_bounded(model):
        try:
            return onnx.shape_inference.infer_shapes(model, check_type=False, strict_mode=False, data_prop=True)
        except Exception:  # noqa: BLE001 - retried without data propagation
            pass
    return onnx.shape_inference.infer_shapes(model, check_type=False, strict_mode=False)


# Data propagation tracks a value per element of every 1-D tensor it meets: a ConstantOfShape whose
# constant shape is [2^40], or a 1-D graph input declared [2^31 - 1], makes onnx's inference run for
# hours (both found by fuzzing: tests/data/fuzz/hang-*). Shape vectors, which data propagation is
# for, are short; ~1 us per element tracked.
MAX_PROPAGATED_ELEMENTS = 1 << 12
MAX_PROPAGATED_INPUT = 1 << 18


def _data_propagation_is_bounded(model):
    graph = model.graph
    for vi in graph.input:
        dims = vi.type.tensor_type.shape.dim if vi.type.HasField("tensor_type") else ()
        if len(dims) == 1 and dims[0].HasField("dim_value") and dims[0].dim_value > MAX_PROPAGATED_INPUT:
            return False
    for t in graph.initializer:
        if len(t.dims) == 1 and t.dims[0] > MAX_PROPAGATED_INPUT:
            return False
    values = {t.name: t for t in graph.initializer}
    for node in graph.node:
        if node.op_type == "Constant" and node.output:
            for a in node.attribute:
                if a.name == "value" and a.type == onnx.AttributeProto.TENSOR:
                    values[node.output[0]] = a.t
    for node in graph.node:
        if node.op_type != "ConstantOfShape" or not node.input or node.input[0] not in values:
            continue
        t = values[node.input[0]]
        if int(np.prod(t.dims)) > 8:
            return False
        try:
            shape = numpy_helper.to_array(t).astype(np.float64)
        except Exception:  # noqa: BLE001 - not readable: inference will refuse it anyway
            return False
        if np.prod(np.maximum(shape, 0)) > MAX_PROPAGATED_ELEMENTS:
            return False
    return True


BIG_INITIALIZER = DETACH_MIN_ELEMENTS   # elements: weights. Shape/axes constants, whose values data propagation reads, are smaller


def _without_initializer_data(model):
    """A copy of the model for shape inference, big initializers (weights) replaced by typed graph inputs.

    Inference serializes the model it is given: without the weights that is
    kilobytes instead of (for ResNet-50) 100 MB, for every pass that rewrote something.
    """
    return without_initializers(model, big_initializer_names(model.graph))


class GraphPass:
    """Base class of a rewrite (see the module docstring)."""

    name = "pass"
    # False for fusions whose refused candidates still run fine as they are (a Conv or MatMul
    # without its epilogue): the report's refusals are the normalizations left to onnx.reference
    report_refusals = True

    def matches(self, ctx):
        return ()

    def check(self, ctx, match):
        return None

    def rewrite(self, ctx, match):
        raise NotImplementedError

    def describe(self, match):
        """(op or pattern name, node names) for the report."""
        nodes = match if isinstance(match, (list, tuple)) else [match]
        return nodes[0].op_type, [n.name for n in nodes]

    def report_refusal(self, ctx, match, reason):
        """The refusal in the report, once (a pass that runs twice refuses a candidate once)."""
        op, names = self.describe(match)
        entry = {"pass": self.name, "op": op, "nodes": names, "reason": reason}
        if entry not in ctx.report.refused:
            ctx.report.refused.append(entry)

    def run(self, ctx):
        count = 0
        for match in list(self.matches(ctx)):
            reason = self.check(ctx, match)
            if reason:
                if self.report_refusals:
                    self.report_refusal(ctx, match, reason)
                continue
            self.rewrite(ctx, match)
            count += 1
        ctx.report.passes[self.name] = ctx.report.passes.get(self.name, 0) + count
        return count


__all__ = ["GraphPass", "PassContext", "Report", "ValueType"]

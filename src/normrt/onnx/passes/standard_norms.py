"""Standard ONNX normalization ops -> normrt-domain nodes (one node for one node).

    X ──► BatchNormalization(scale, B, mean, var) ──► Y    ==>  X ──► normrt::BatchNorm ──► Y
    X ──► LayerNormalization(Scale, B)  ──► Y, Mean, InvStdDev  ==>  normrt::LayerNorm
    X ──► RMSNormalization(Scale)       ──► Y                   ==>  normrt::RMSNorm
    X ──► InstanceNormalization(s, B)   ──► Y                   ==>  normrt::InstanceNorm
    X ──► GroupNormalization(s, b)      ──► Y                   ==>  normrt::GroupNorm
    X ──► MeanVarianceNormalization     ──► Y                   ==>  normrt::MeanVarianceNorm
    X ──► LpNormalization               ──► Y                   ==>  normrt::LpNorm
    X ──► LRN                           ──► Y                   ==>  normrt::LRN

Inputs are carried over as they are (an initializer stays an initializer, a
graph input stays an input of the normrt node); attributes are copied with
their ONNX defaults made explicit where the normrt default differs.

Refused (left to onnx.reference), each with its reason in the report:
- element types other than float32/float64/float16/bfloat16, or parameters of
  another type than X's (float32 parameters with half X are taken), or a type
  shape inference cannot tell;
- op versions whose semantics differ (BatchNormalization < 7 or `spatial=0`,
  its training outputs before opset 14, MeanVarianceNormalization < 9);
- attribute values the kernels do not take (LpNormalization p not 1 or 2, ...).
"""
import numpy as np
from onnx import TensorProto, helper

from .._graph import canonical_domain, decode_attributes
from ..domain import NORM_OPS, make_node
from . import GraphPass
from ._queries import HALF_DTYPES, KERNEL_DTYPES, WIDE_DTYPES, type_names
MIN_RANK = {"BatchNorm": 2, "InstanceNorm": 3, "GroupNorm": 2, "LRN": 3}


def _n_outputs(node):
    return sum(1 for o in node.output if o)


class StandardNorms(GraphPass):
    name = "standard_norms"

    def matches(self, ctx):
        for node in ctx.nodes:
            if canonical_domain(node.domain) == "" and hasattr(self, "_map_" + node.op_type):
                yield node

    # -- check ---------------------------------------------------------------
    def _dtype_reason(self, ctx, node, names):
        """X (names[0]) of a kernel type and the parameters of X's, or float32 with half X
        (BatchNormalization-15's T1/T2; the kernels take float32 parameters with half X)."""
        types = []
        for name in names:
            if not name:
                continue
            t = ctx.elem_type(name)
            if t == 0:
                return f"element type of {name!r} is unknown"
            if t not in KERNEL_DTYPES:
                return (f"element type {helper.tensor_dtype_to_string(t)} of {name!r} "
                        f"(kernels take {type_names(KERNEL_DTYPES)})")
            types.append(t)
        allowed = {types[0], TensorProto.FLOAT} if types and types[0] in HALF_DTYPES else set(types[:1])
        if any(t not in allowed for t in types[1:]):
            return "inputs of mixed element types " + ", ".join(
                f"{n}:{type_names([t])}" for n, t in zip([n for n in names if n], types))
        return None

    def check(self, ctx, node):
        version = ctx.opsets.get("", 0)
        try:
            attrs = decode_attributes(node)
        except ValueError as e:
            return f"attribute not constant: {e}"
        mapped = getattr(self, "_map_" + node.op_type)(ctx, node, attrs, version, dry_run=True)
        if isinstance(mapped, str):
            return mapped
        min_rank = MIN_RANK.get(mapped["op"], 1)
        shape = ctx.shape(node.input[0])
        if shape is not None and len(shape) < min_rank:
            return f"X of rank {len(shape)} (the kernel needs rank >= {min_rank})"
        return self._dtype_reason(ctx, node, mapped["dtype_inputs"])

    # -- rewrite -------------------------------------------------------------
    def rewrite(self, ctx, node):
        version = ctx.opsets.get("", 0)
        attrs = decode_attributes(node)
        mapped = getattr(self, "_map_" + node.op_type)(ctx, node, attrs, version, dry_run=False)
        new = make_node(mapped["op"], mapped["inputs"], list(node.output), node.name, **mapped["attrs"])
        ctx.replace_nodes([node], [new])
        ctx.report.fused.append({
            "pass": self.name, "op": node.op_type, "pattern": node.op_type, "nodes": [node.name],
            "normrt_op": mapped["op"], "normrt_node": new.name, "kernel": NORM_OPS[mapped["op"]].kernel,
            "activation": None, "residual": False,
        })

    # -- one mapping per op: returns a refusal reason (str) or the normrt node description
    def _map_BatchNormalization(self, ctx, node, attrs, version, dry_run):
        if version < 7:
            return f"BatchNormalization-{version} (opset < 7: is_test/consumed_inputs form)"
        if version < 9 and attrs.get("spatial", 1) == 0:
            return "spatial=0 (per-activation statistics)"
        training = attrs.get("training_mode", 0) if version >= 14 else 0
        if version < 14 and _n_outputs(node) > 1:
            return "training outputs of BatchNormalization before opset 14"
        if not training and _n_outputs(node) > 1:
            return "running mean/var outputs requested with training_mode=0"
        if len(node.input) < 5 or not all(node.input[:5]):
            return "missing inputs"
        out = {"epsilon": attrs.get("epsilon", 1e-5)}
        if training:
            out["training_mode"] = 1
            out["momentum"] = attrs.get("momentum", 0.9)
        return {"op": "BatchNorm", "inputs": list(node.input[:5]), "attrs": out,
                "dtype_inputs": list(node.input[:5])}

    def _map_LayerNormalization(self, ctx, node, attrs, version, dry_run):
        out = {"axis": attrs.get("axis", -1), "epsilon": attrs.get("epsilon", 1e-5)}
        if _n_outputs(node) > 1:
            stash = attrs.get("stash_type", 1)
            if stash not in WIDE_DTYPES:
                return f"stash_type={stash} for the Mean/InvStdDev outputs"
            out["stash_type"] = stash
        inputs = list(node.input[:3])
        return {"op": "LayerNorm", "inputs": inputs, "attrs": out, "dtype_inputs": inputs}

    def _map_RMSNormalization(self, ctx, node, attrs, version, dry_run):
        inputs = list(node.input[:2])
        return {"op": "RMSNorm", "inputs": inputs,
                "attrs": {"axis": attrs.get("axis", -1), "epsilon": attrs.get("epsilon", 1e-5)},
                "dtype_inputs": inputs}

    def _map_InstanceNormalization(self, ctx, node, attrs, version, dry_run):
        if version < 6:
            return "InstanceNormalization-1 (consumed_inputs form)"
        inputs = list(node.input[:3])
        return {"op": "InstanceNorm", "inputs": inputs, "attrs": {"epsilon": attrs.get("epsilon", 1e-5)},
                "dtype_inputs": inputs}

    def _map_GroupNormalization(self, ctx, node, attrs, version, dry_run):
        groups = attrs.get("num_groups")
        if not isinstance(groups, int) or groups < 1:
            return f"num_groups={groups!r}"
        inputs = list(node.input[:3])
        out = {"num_groups": groups, "epsilon": attrs.get("epsilon", 1e-5)}
        if version < 21:
            # GroupNormalization-18: scale and bias hold one value per group
            shape = ctx.shape(inputs[0])
            C = shape[1] if shape is not None and len(shape) > 1 and isinstance(shape[1], int) else None
            params_const = all(n and ctx.is_constant(n) for n in inputs[1:3])
            if params_const and C is not None and C % groups == 0:
                if not dry_run:
                    for k in (1, 2):
                        per_channel = np.repeat(ctx.constants[inputs[k]], C // groups)
                        inputs[k] = ctx.add_constant(inputs[k] + "_per_channel", per_channel)
            else:
                out["per_group_affine"] = 1
        return {"op": "GroupNorm", "inputs": inputs, "attrs": out, "dtype_inputs": list(node.input[:3])}

    def _map_MeanVarianceNormalization(self, ctx, node, attrs, version, dry_run):
        if version < 9:
            return f"MeanVarianceNormalization-{version} (across_channels/normalize_variance form)"
        axes = attrs.get("axes", [0, 2, 3])
        shape = ctx.shape(node.input[0])
        if shape is not None and not all(-len(shape) <= a < len(shape) for a in axes):
            return f"axes {list(axes)} out of range for X of rank {len(shape)}"
        return {"op": "MeanVarianceNorm", "inputs": [node.input[0]], "attrs": {"axes": list(axes)},
                "dtype_inputs": [node.input[0]]}

    def _map_LpNormalization(self, ctx, node, attrs, version, dry_run):
        p = attrs.get("p", 2)
        if p not in (1, 2):
            return f"p={p} (kernels take p=1 or p=2)"
        return {"op": "LpNorm", "inputs": [node.input[0]],
                "attrs": {"p": p, "axis": attrs.get("axis", -1)}, "dtype_inputs": [node.input[0]]}

    def _map_LRN(self, ctx, node, attrs, version, dry_run):
        size = attrs.get("size")
        if not isinstance(size, int) or size < 1:
            return f"size={size!r}"
        return {"op": "LRN", "inputs": [node.input[0]],
                "attrs": {"size": size, "alpha": attrs.get("alpha", 1e-4), "beta": attrs.get("beta", 0.75),
                          "bias": attrs.get("bias", 1.0)},
                "dtype_inputs": [node.input[0]]}

"""normrt-domain nodes bound to their kernel calls (domain.NORM_OPS: each op's `call`,
whether it is `compute_bound`, its weight `packer` and whether it is `half_native`)."""
from ..errors import ModelError
from .domain import NORM_OPS
from .ops import _half


class KernelNode:
    """A normrt-domain node bound to its kernel call."""

    kind = "kernel"

    def __init__(self, node, attrs):
        spec = NORM_OPS.get(node.op_type)
        if spec is None:
            raise NotImplementedError(
                f"op {node.op_type!r} (domain 'normrt', opset version 1) of node {node.name!r} is not a "
                f"normrt op; known: {sorted(NORM_OPS)}")
        if (len(node.input) > len(spec.inputs) and not spec.variadic) or len(node.output) > len(spec.outputs):
            raise NotImplementedError(
                f"normrt {node.op_type} node {node.name!r} has {len(node.input)} inputs / "
                f"{len(node.output)} outputs; at most {len(spec.inputs)} / {len(spec.outputs)}")
        self.spec = spec
        self.call = spec.call
        self.kernel = spec.kernel
        self.attrs = {k: v for k, v in spec.defaults.items() if v is not None}
        self.attrs.update(attrs)
        missing = [k for k, v in spec.defaults.items() if v is None and k not in attrs]
        if missing:
            raise ModelError(f"normrt {node.op_type} node {node.name!r} lacks attribute(s) {missing}")
        self.n_out = len(node.output)
        if node.op_type == "LayerNorm":
            # Mean/InvStdDev named? (residual_sum alone leaves them empty: no statistics to compute)
            self.attrs["_stats"] = any(list(node.output)[1:3])
        self.out_positions = [i for i, o in enumerate(node.output) if o]
        self.packer = spec.packer
        self.weight_is_constant = False      # set by the executor when input 1 is an initializer
        self.dead = ()       # (spec.inplace_input,) when nothing reads that input later (executor)

    def __call__(self, args, values):
        half = None
        if not self.spec.half_native:
            # the products compute in float32: half inputs widened once (a constant weight once
            # per session, before its packing), Y rounded once to X's half dtype
            half = _half.result_dtype(args[:1])
            if half is not None or any(a is not None and _half.is_half(a.dtype) for a in args):
                args = _half.widen_args(args)[0]
        if self.packer is None or not self.weight_is_constant:
            res = self.call(self.attrs, self.n_out, *args)
        else:
            res = self.call(self.attrs, self.n_out, *args, packed=self.packer(args[1], self.attrs))
        res = [res[i] for i in self.out_positions]
        return res if half is None else _half.narrow_results(res, half)

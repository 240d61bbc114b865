"""onnxruntime's Stable Diffusion contrib ops (com.microsoft) -> standard ops and normrt's GroupNorm.

onnxruntime's Stable Diffusion optimizer fuses the UNet's and VAE's GroupNorms (channels-last,
SiLU included), their residual adds and the GEGLU's split; onnxruntime runs them on CUDA only.
Each becomes what its definition computes:

    X, bias, skip ──► BiasAdd ──► Y            ==>  (X + bias) + skip ──► Y

    X, bias ──► BiasSplitGelu ──► Y (..., D/2)
    ==>  X + bias ──► Slice [0, D/2) ──────────────────────────────► Mul ──► Y
                  └─► Slice [D/2, D) ──► 0.5 x (1 + erf(x / sqrt 2)) ──┘

    X (N, H, W, C) ──► GroupNorm(gamma, beta, groups, epsilon, activation, channels_last) ──► Y
    ==>  Transpose (N, C, H, W) ──► normrt::GroupNorm(gamma, beta, num_groups, epsilon)
           [──► Mul(y, Sigmoid(y)): activation 1, SiLU, which activation_epilogue folds into it]
           ──► Transpose (N, H, W, C) ──► Y                 (channels_last 0: no Transposes)

    X, skip, bias ──► SkipGroupNorm(...) ──► Y [, S]
    ==>  S = (X + skip') + bias ──► the GroupNorm above ──► Y
         (skip' = skip, or a (N, C) skip as (N, 1, 1, C) -- (N, C, 1, 1) channels first)

Refused (the node stays, and loading fails naming it): an activation other than 0 / 1, groups
< 1 or not dividing a known channel count, X of unknown rank or rank < 3, a skip of another rank
than X's or 2, BiasSplitGelu of an unknown or odd last dim, any node whose float type is unknown
where a constant needs it.
"""
from . import ValueType
from .onnxruntime_transformer_ops import ContribOps, float_dtype, input_at, output_at, rank


class OnnxruntimeDiffusionOps(ContribOps):
    name = "onnxruntime_diffusion_ops"
    OPS = ("BiasAdd", "BiasSplitGelu", "GroupNorm", "SkipGroupNorm")

    # -- BiasAdd ----------------------------------------------------------------
    def _check_BiasAdd(self, ctx, node, attrs):
        return None

    def _rewrite_BiasAdd(self, ctx, node, attrs, emit):
        x, bias, skip = node.input[:3]
        emit("Add", [emit("Add", [x, bias]), skip], node.output[0])

    # -- BiasSplitGelu --------------------------------------------------------
    def _width(self, ctx, node):
        """D: the bias's length, or X's last dim."""
        for name, axis in ((node.input[1], 0), (node.input[0], -1)):
            shape = ctx.shape(name)
            if shape is not None and len(shape) and isinstance(shape[axis], int):
                return shape[axis]
        return None

    def _check_BiasSplitGelu(self, ctx, node, attrs):
        if self._dtype(ctx, node) is None:
            return f"no input of a known float type (inputs {list(node.input)})"
        width = self._width(ctx, node)
        if width is None or width % 2:
            return f"hidden dim {width}: not known, or odd"
        return None

    def _rewrite_BiasSplitGelu(self, ctx, node, attrs, emit):
        half = self._width(ctx, node) // 2
        biased = emit("Add", node.input[:2])
        gate = emit.erf_gelu(emit.slice_last(biased, half, 2 * half))
        emit("Mul", [emit.slice_last(biased, 0, half), gate], node.output[0])

    # -- GroupNorm, SkipGroupNorm -------------------------------------------------
    def _check_GroupNorm(self, ctx, node, attrs):
        x = node.input[0]
        if float_dtype(ctx, [x]) is None:
            return f"X {x!r} of unknown or non-float type"
        if attrs.get("activation", 0) not in (0, 1):
            return f"activation {attrs.get('activation')} (0: none, 1: SiLU are defined)"
        r, groups = rank(ctx, x), int(attrs.get("groups", 0))
        if r is None or r < 3:
            return f"X of rank {r}, not (N, H, W, C) or (N, C, H, W)"
        channels = ctx.shape(x)[-1 if attrs.get("channels_last", 1) else 1]
        if groups < 1 or (isinstance(channels, int) and channels % groups):
            return f"groups {groups} for {channels} channels"
        return None

    def _check_SkipGroupNorm(self, ctx, node, attrs):
        skip_rank = rank(ctx, node.input[3])
        if skip_rank not in (2, rank(ctx, node.input[0])):
            return f"skip of rank {skip_rank}, not X's or 2 (N, C)"
        return self._check_GroupNorm(ctx, node, attrs)

    def _rewrite_SkipGroupNorm(self, ctx, node, attrs, emit):
        x, skip, bias = node.input[0], node.input[3], input_at(node, 4)
        r, channels_last = rank(ctx, x), attrs.get("channels_last", 1)
        if rank(ctx, skip) == 2 and r != 2:     # (N, C) over the spatial axes
            spatial = [1] * (r - 2)
            skip = emit("Reshape", [skip, emit.ints([0] + spatial + [-1] if channels_last else [0, -1] + spatial)])
        total = output_at(node, 1) or None
        summed = emit("Add", [x, skip], None if bias else total)
        if bias:
            if not channels_last:   # (C,) over the channels axis
                bias = emit("Reshape", [bias, emit.ints([-1] + [1] * (r - 2))])
            summed = emit("Add", [summed, bias], total)
        self._group_norm(ctx, node, attrs, emit, summed)

    def _rewrite_GroupNorm(self, ctx, node, attrs, emit):
        self._group_norm(ctx, node, attrs, emit, node.input[0])

    def _group_norm(self, ctx, node, attrs, emit, x):
        r, channels_last = rank(ctx, node.input[0]), attrs.get("channels_last", 1)
        if channels_last:
            x = emit("Transpose", [x], perm=[0, r - 1] + list(range(1, r - 1)))
        y = ctx.new_name(f"{node.name}_normalized")
        norm = emit.norm("GroupNorm", [x, node.input[1], node.input[2]], [y], num_groups=int(attrs["groups"]),
                         epsilon=float(attrs.get("epsilon", 1e-5)))
        shape = ctx.shape(node.input[0])
        if channels_last and shape is not None:
            shape = (shape[0], shape[-1]) + tuple(shape[1:-1])
        ctx.types[y] = ValueType(ctx.elem_type(node.input[0]), shape)   # inference cannot type normrt nodes
        if attrs.get("activation", 0):
            y = emit("Mul", [y, emit("Sigmoid", [y])])
        if channels_last:
            y = emit("Transpose", [y], perm=[0] + list(range(2, r)) + [1])
        emit.nodes[-1].output[0] = node.output[0]
        if emit.nodes[-1] is norm:
            ctx.types[node.output[0]] = ctx.types[y]
        self._report_norm(ctx, node, norm)

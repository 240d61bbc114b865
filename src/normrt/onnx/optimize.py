"""normrt.optimize: a model rewritten so every normalization runs on normrt's kernels.

    load (checked) ─► inline local functions ─► onnxruntime's contrib ops as standard ops
                      (EmbedLayerNormalization, FusedMatMul, RotaryEmbedding, the diffusion ops,
                      GroupQueryAttention, Attention / MultiHeadAttention, MatMulNBits)
                   ─► onnxruntime's fused norms and GELUs as normrt's
                   ─► QOperator contrib ops as their QDQ form
                   ─► constant folding ─► dynamically quantized
                      products and LSTMs as float ones ─► per-tensor dequantization before
                      views ─► QDQ pairs (fake quantization;
                      repeated grids dropped) ─► zero Pads into Convs
                   ─► pattern fusions (exporters' decomposed norms, BN and per-channel affine folding)
                   ─► standard norms ─► no-op views dropped (after the norm patterns that
                      include them: torch's LRN pads by 0 for size 1) ─► attention (rank-3
                      batch*heads forms as rank 4, then the head layouts; a constant causal
                      mask as is_causal)
                   ─► Cast islands (a float32 norm between half Casts -> one half node)
                   ─► activation / residual epilogues ─► Cast islands again
                   ─► sibling MatMuls merged (Q/K/V, gate/up) ─► quantized models' products
                      on the 8-bit kernel ─► MatMul epilogues
                   ─► rotary rotate_half as views ─► elementwise chains (what no fusion above
                      took, one pass each)
                   ─► [half_compute="float32" (the default): half values kept in float32
                      between float32 ops, Casts at the regions' boundaries
                      (passes/half_regions.py); where a region formed, the float32-only
                      folds and epilogues again (after_half_regions)]
                   ─► common subexpressions (a repeated computation read from its first copy)
                   ─► dead code removal ─► onnx.checker

The result imports the custom domain 'normrt' (version 1), passes
onnx.checker, can be saved, and loads back into InferenceSession.
"""
import onnx

from ..errors import ModelError
from ._graph import NORMRT_DOMAIN, NORMRT_OPSET, name_unnamed_nodes, node_reads
from .initializers import attach
from .optimize_branches import optimize_branches
from .loader import check, check_structure, load_detached
from .passes import PassContext
from .report import Report
from .passes.constant_folding import ConstantFolding
from .passes.common_subexpressions import CommonSubexpressions
from .passes.lp_normalize import LpNormalize
from .passes.grn_decomposed import GrnDecomposed
from .passes.lrn_decomposed import LrnDecomposed
from .passes.adain import AdaIN
from .passes.mvn_decomposed import MvnDecomposed
from .passes.standard_norms import StandardNorms
from .passes.recognized_norms import RecognizedNorms
from .passes.affine_before_conv import AffineBeforeConv
from .passes.residual_norm import ResidualNorm
from .passes.group_norm_instance import GroupNormInstance
from .passes.conditional_instance_norm import ConditionalInstanceNorm
from .passes.fold_batch_norm import FoldBatchNorm
from .passes.fold_channel_affine import FoldChannelAffine
from .passes.pool_before_pointwise_conv import PoolBeforePointwiseConv
from .passes.activation_epilogue import ActivationEpilogue
from .passes.cast_islands import CastIslands
from .passes.activation_programs import ActivationPrograms
from .passes.attention_decomposed import AttentionDecomposed
from .passes.attention_layout import AttentionLayout
from .passes.conv_epilogue import ConvEpilogue
from .passes.matmul_epilogue import MatMulEpilogue
from .passes.sibling_matmuls import SiblingMatMuls
from .passes.rotary_half import RotaryHalf
from .passes.elementwise_chains import ElementwiseChains
from .passes.pad_into_conv import PadIntoConv
from .passes.no_op_views import NoOpViews
from .passes.attention_grouped_kv import AttentionGroupedKV
from .passes.attention_head_batch import AttentionHeadBatch
from .passes.causal_mask import CausalMask
from .passes.channels_first_blocks import ChannelsFirstBlocks
from .passes.integer_products import IntegerProducts
from .passes.quantized_lstm import QuantizedLstm
from .passes.qlinear_operators import QLinearOperators
from .passes.onnxruntime_fused_ops import OnnxruntimeFusedOps
from .passes.onnxruntime_attention import OnnxruntimeAttention
from .passes.onnxruntime_transformer_ops import OnnxruntimeTransformerOps
from .passes.onnxruntime_diffusion_ops import OnnxruntimeDiffusionOps
from .passes.matmul_nbits import MatMulNBits
from .passes.group_query_attention import GroupQueryAttention
from .passes.dequantize_before_views import DequantizeBeforeViews
from .passes.qdq_pairs import QdqPairs
from .passes.dynamic_qdq_pairs import DynamicQdqPairs
from .passes.einsum_products import EinsumProducts
from .passes.quantized_products import QuantizedProducts
from .passes.half_regions import DEFAULT_MODE, HalfRegions, check_mode


def default_passes():
    """The rewrites optimize applies, in order (each a GraphPass)."""
    # onnxruntime's contrib ops as standard ops first (their outputs type the fused norms' inputs)
    return [OnnxruntimeTransformerOps(), OnnxruntimeDiffusionOps(), GroupQueryAttention(), OnnxruntimeAttention(), MatMulNBits(),
            OnnxruntimeFusedOps(), QLinearOperators(), ConstantFolding(), IntegerProducts(), QuantizedLstm(), DequantizeBeforeViews(),
            QdqPairs(), DynamicQdqPairs(),
            # einsum as the MatMul it computes, before the fusions that take MatMuls; no-op views
            # out of the way of the first fusions (EnCodec's reflect Pad -> full Slice -> Conv; a
            # static QDQ model's Pad -> FakeQuant -> Conv whose FakeQuant repeats the Pad's grid)
            EinsumProducts(), NoOpViews(only=("Slice", "FakeQuant")), PadIntoConv(), AdaIN(), LpNormalize(), GrnDecomposed(), LrnDecomposed(), MvnDecomposed(),
            GroupNormInstance(), ConditionalInstanceNorm(), FoldBatchNorm(), FoldChannelAffine(), AffineBeforeConv(),
            PoolBeforePointwiseConv(), RecognizedNorms(), StandardNorms(),
            # ConvNeXt's channels-last blocks as Convs, then their layer scales fold into them
            ChannelsFirstBlocks(), FoldChannelAffine(),
            NoOpViews(), AttentionDecomposed(),
            AttentionHeadBatch(),   # a rank-3 (batch*heads) attention as rank 4, so its layouts are taken next
            AttentionLayout(), AttentionGroupedKV(), AttentionLayout(), CausalMask(),
            # islands first, so a half activation after the down Cast fuses; again after the
            # epilogues, which may have taken a float32 activation inside an island
            CastIslands(), ActivationEpilogue(), ResidualNorm(), CastIslands(), ConvEpilogue(),
            # siblings merge first: their concatenated bias then folds into the one GEMM; a
            # quantized model's products (merged or not) take the 8-bit kernel before the float
            # epilogues would take them
            SiblingMatMuls(), QuantizedProducts(), MatMulEpilogue(),
            NoOpViews(), RotaryHalf(), ElementwiseChains(),
            # what the programs compute: a GELU in any spelling becomes its producer's epilogue
            ActivationPrograms(),
            # repeated computations, once the fusions have taken their patterns as written (an
            # earlier merge would give a pattern's inner values readers outside it): shape
            # arithmetic per layer, the contrib rewrites' masks and positions per attention
            CommonSubexpressions()]


def _run_passes(ctx, passes):
    for p in passes:
        changed = p.run(ctx)
        ctx.commit()
        # shape inference over the whole model is the slow part of loading big models: only
        # when a rewrite wrote values of new names
        if changed and ctx.types_stale():
            ctx.refresh_types()


def after_half_regions():
    """The rewrites that take float32 values only, again once half_regions has retyped a half
    model's float32-computing regions: the BatchNorm and per-channel affine folds into the
    (widened, float32) Conv weights, and the Conv/MatMul/activation epilogues, so a half model's
    regions fuse as the float32 model does; and a reflect / edge Pad before such a Conv (through the
    Cast to float32 half_regions put between them) into the Conv's padded copy."""
    return [PadIntoConv(), FoldBatchNorm(), FoldChannelAffine(), ActivationEpilogue(), ResidualNorm(), ConvEpilogue(),
            MatMulEpilogue(), ElementwiseChains(), ActivationPrograms()]


def _inline_functions(model):
    if not len(model.functions):
        return model
    try:
        from onnx import inliner
        inlined = inliner.inline_local_functions(model)
    except Exception:  # noqa: BLE001 - functions then run through onnx.reference
        return model
    name_unnamed_nodes(inlined.graph)
    return inlined


def _remove_dead_nodes(ctx):
    """Drop nodes none of whose outputs is read or is a graph output (ONNX ops have no side effects)."""
    needed = set(ctx.graph_outputs)
    kept = []
    for node in reversed(ctx.nodes):
        if any(o in needed for o in node.output if o):
            kept.append(node)
            needed.update(node_reads(node))
    removed = len(ctx.nodes) - len(kept)
    ctx.nodes = kept[::-1]
    return removed


def optimize_model(proto, passes=None, half_compute=DEFAULT_MODE):
    """(optimized ModelProto, Report) of an already loaded and checked ModelProto (modified in place)."""
    model, report, arrays = optimize_detached(proto, passes, half_compute=half_compute)
    return attach(model, arrays), report


def optimize_detached(proto, passes=None, constants=None, half_compute=DEFAULT_MODE):
    """(optimized ModelProto whose big initializers are stubs, Report, {initializer name: ndarray}).

    `constants` are the values of `proto`'s stub initializers (loader.load_detached).
    `half_compute` "float32" runs the half_regions pass after the others (see `optimize`) and,
    when it formed a region, the float32-only fusions again (after_half_regions; with the
    default passes only).
    The arrays are the only copy of the weights (see normrt.onnx.initializers):
    InferenceSession hands them to the executor as they are.
    """
    check_mode(half_compute)
    given_passes = passes
    again = after_half_regions() if passes is None else []
    passes = default_passes() if passes is None else list(passes)
    if half_compute == "float32":
        passes.append(HalfRegions())
    report = Report()
    proto = _inline_functions(proto)
    ctx = PassContext(proto, report, constants)
    del constants
    removed = _remove_dead_nodes(ctx)
    ctx.commit()
    _run_passes(ctx, passes)
    if report.half_compute.get("regions"):
        # decided again on the retyped graph: the first run's refusals ("not float32") are stale
        names = {p.name for p in again}
        report.refused = [e for e in report.refused if e["pass"] not in names]
        _run_passes(ctx, again)
    # If nodes' branches (Optimum's merged decoders hold the model there): the same passes
    branch_kernels = optimize_branches(ctx, optimize_detached, given_passes, half_compute)
    removed += _remove_dead_nodes(ctx)
    ctx.commit()
    report.passes["dead_nodes"] = removed
    model = ctx.model
    if report.fused or branch_kernels or any(node.domain == NORMRT_DOMAIN for node in model.graph.node):
        if not any(o.domain == NORMRT_DOMAIN for o in model.opset_import):
            model.opset_import.append(onnx.helper.make_opsetid(NORMRT_DOMAIN, NORMRT_OPSET))
    if model.ir_version < 4:
        # initializers were dropped from graph.input; IR 4 is where that became legal
        model.ir_version = 4
    del model.graph.value_info[:]   # may describe values that no longer exist
    try:
        check_structure(model)
    except ModelError as e:
        raise RuntimeError(f"normrt.optimize produced an invalid graph (a bug): {e}") from e
    check(model, "optimized model")
    return model, report, ctx.constants


def optimize(model, *, report=False, limits=None, half_compute=DEFAULT_MODE):
    """The model (path, bytes or ModelProto) rewritten onto normrt's kernels, as a ModelProto.

    Every normalization the kernels can take becomes a node of domain 'normrt'
    (BatchNorm, LayerNorm, RMSNorm, ChannelNorm, InstanceNorm, GroupNorm, MeanVarianceNorm,
    LpNorm, LRN, AdaIN); initializer-only subgraphs are folded into initializers.
    With `report=True` returns `(model, report)`, the report a dict: `fused`
    (one entry per normalization: op or pattern, node names, normrt op, kernel,
    fused activation/residual), `refused` (normalizations left to onnx.reference,
    with the reason), `passes` (rewrite count per pass) and `counts` (per normrt op).
    `limits` (normrt.Limits) bounds the tensors and subgraph nesting the model may declare.
    `half_compute` ("float32", the default, or "per_op"): how a float16/bfloat16 model
    computes. "float32" keeps the half values between float32-computing ops in float32 and
    rounds at the boundaries only, as onnxruntime's CPU provider does
    (passes/half_regions.py; the report's `half_compute` counts the regions); "per_op"
    rounds each such op's result to half.
    """
    check_mode(half_compute)
    proto, arrays = load_detached(model, limits)
    optimized, rep, arrays = optimize_detached(proto, constants=arrays, half_compute=half_compute)
    optimized = attach(optimized, arrays)
    return (optimized, rep.as_dict()) if report else optimized

"""Every exporter fixture in tests/data runs on normrt like it ran in torch, with every norm on a kernel.

For each fixture of tests/data/fixtures.json (made by scripts/make_fixtures.py from
real torch.onnx.export output, legacy and dynamo exporters):

(a) normrt.InferenceSession reproduces the stored torch output,
    max abs err <= 1e-4 * max(1, max|out|) (the fixtures' own tolerance);
(b) normrt.optimize(model, report=True) leaves no normalization behind: no standard
    ONNX normalization op, no ReduceMean/ReduceL2 node (in these fixtures every one
    belongs to a norm, except the ConvNeXt (V1, V2) poolers' global average -- see
    NON_NORM_REDUCTIONS), each norm a `normrt` node of the expected op, with the
    activation fused where the module applies one to the norm's output and the
    residual Add fused where the module adds one right before a LayerNorm.

What each case holds is read from the module definitions in scripts/make_fixtures.py.
"""
import collections
import json
from pathlib import Path

import numpy as np
import onnx
import pytest

import normrt
from normrt.onnx.report import COMPUTE_OPS

DATA = Path(__file__).parent.parent / "data"
FIXTURES = json.loads((DATA / "fixtures.json").read_text())["fixtures"]
BY_FILE = {e["file"]: e for e in FIXTURES}
REL_TOL = 1e-4

STANDARD_NORMS = {"BatchNormalization", "LayerNormalization", "InstanceNormalization", "GroupNormalization",
                  "RMSNormalization", "MeanVarianceNormalization", "LpNormalization", "LRN"}
REDUCTIONS = {"ReduceMean", "ReduceL2"}

# ReduceMean nodes that are not part of a normalization: ConvNextModel's pooler averages the
# last stage over (H, W) (`last_hidden_state.mean([-2, -1])`) before its final LayerNorm.
NON_NORM_REDUCTIONS = {"hf_convnext": 1, "hf_convnextv2": 1}

# case name -> {normrt op: count}; a (lo, hi) pair where another rewrite may legitimately
# remove the norm altogether (an eval BatchNorm after a Linear folds into the Gemm).
EXPECTED_OPS = {
    "conv_bn2d": {},                       # the exporters fold BatchNorm2d into the Conv
    "bn2d": {"BatchNorm": 1},
    "linear_bn1d": {"BatchNorm": (0, 1)},  # legacy writes BatchNormalization; may fold into the Gemm
    "layernorm": {"LayerNorm": 1},
    "rmsnorm": {"RMSNorm": 1},
    "rmsnorm_llama": {"RMSNorm": 1},
    "rmsnorm_t5": {"RMSNorm": 1},
    "groupnorm": {"GroupNorm": 1},
    "groupnorm_silu": {"GroupNorm": 1},
    "instancenorm2d": {"InstanceNorm": 1},
    "cond_instancenorm_embedding": {"InstanceNorm": 1},
    "cond_instancenorm_index": {"InstanceNorm": 1},
    "adain": {"AdaIN": 1},
    "adain_biased": {"AdaIN": 1},
    "spade_bn": {"BatchNorm": 1},
    "spade_in": {"InstanceNorm": 1},
    "weightnorm_conv": {},                 # weight norm of constant weights: folded at load
    "reflect_pad_conv": {"InstanceNorm": 1},   # (its Pads and LeakyReLU go into the convs: test_pass_pad_into_conv)
    "wsconv_gn": {"GroupNorm": 1},         # weight standardization folded; the GroupNorm stays
    "normalize_head": {"LpNorm": 1},
    "lrn": {"LRN": 1},
    "preln_block": {"LayerNorm": 2},
    "preln_block_eager": {"LayerNorm": 2},
    "residual_layernorm": {"LayerNorm": 1},
    "hf_bert": {"LayerNorm": 5},
    "hf_llama": {"RMSNorm": 5},
    "hf_vit": {"LayerNorm": 5},
    "hf_convnext": {"LayerNorm": 1, "ChannelNorm": 4},   # the blocks' channels-last LayerNorms run channels-first
    # (V2: a block with its GRN stays channels-last; the GRNs on their kernel: grn_decomposed)
    "hf_convnextv2": {"LayerNorm": 3, "ChannelNorm": 2, "GRN": 2},
    "mingpt": {"LayerNorm": 5},
    "diffusers_unet2d": {"GroupNorm": 21},
    "diffusers_vae": {"GroupNorm": 24},
}

# case name -> (normrt op, activation, minimum number of such nodes)
EXPECTED_ACTIVATIONS = {
    "groupnorm_silu": ("GroupNorm", "silu", 1),
    "wsconv_gn": ("GroupNorm", "relu", 1),
    # ResnetBlock2D: norm1 -> SiLU and norm2 -> SiLU; conv_norm_out -> SiLU
    "diffusers_unet2d": ("GroupNorm", "silu", 1),
    "diffusers_vae": ("GroupNorm", "silu", 1),
}

# case name -> minimum number of LayerNorms with the residual Add fused
EXPECTED_RESIDUALS = {
    "residual_layernorm": 1,    # LayerNorm(residual + Linear(x))
    "preln_block": 1,           # ln2(x + proj(attention))
    "preln_block_eager": 1,
    "mingpt": 2,                # ln_2(x + attention) in each block
}


def _load(entry):
    model = onnx.load(str(DATA / entry["file"]))
    data = np.load(DATA / entry["data"])
    feeds = {k[len("input:"):]: data[k] for k in data.files if k.startswith("input:")}
    outputs = {k[len("output:"):]: data[k] for k in data.files if k.startswith("output:")}
    return model, feeds, outputs


def _count_nodes(graph, counter):
    for node in graph.node:
        counter[(node.domain or "", node.op_type)] += 1
        for attr in node.attribute:
            if attr.type == onnx.AttributeProto.GRAPH:
                _count_nodes(attr.g, counter)
            elif attr.type == onnx.AttributeProto.GRAPHS:
                for g in attr.graphs:
                    _count_nodes(g, counter)
    return counter


def test_every_case_has_expectations():
    assert {e["name"] for e in FIXTURES} <= set(EXPECTED_OPS)


@pytest.mark.parametrize("file", sorted(BY_FILE))
def test_fixture_runs_like_torch(file):
    model, feeds, want = _load(BY_FILE[file])
    sess = normrt.InferenceSession(model)
    names = [o.name for o in sess.get_outputs()]
    got = sess.run(None, feeds)
    for name, g in zip(names, got):
        w = want[name]
        assert g.shape == w.shape, f"{name}: shape {g.shape}, torch {w.shape}"
        scale = max(1.0, float(np.max(np.abs(w)))) if w.size else 1.0
        err = float(np.max(np.abs(g.astype(np.float64) - w.astype(np.float64)))) if w.size else 0.0
        assert err <= REL_TOL * scale, f"{name}: max abs err {err:.3g} > {REL_TOL * scale:.3g}"


def _in_range(n, want):
    lo, hi = want if isinstance(want, tuple) else (want, want)
    return lo <= n <= hi


@pytest.mark.parametrize("file", sorted(BY_FILE))
def test_fixture_norms_all_on_kernels(file):
    entry = BY_FILE[file]
    name = entry["name"]
    model, _, _ = _load(entry)
    opt, report = normrt.optimize(model, report=True)
    counts = _count_nodes(opt.graph, collections.Counter())
    problems = []

    left = {op: n for (dom, op), n in counts.items() if dom in ("", "ai.onnx") and op in STANDARD_NORMS}
    if left:
        problems.append(f"standard normalization ops left: {left}")
    reductions = sum(n for (dom, op), n in counts.items() if dom in ("", "ai.onnx") and op in REDUCTIONS)
    if reductions != NON_NORM_REDUCTIONS.get(name, 0):
        problems.append(f"{reductions} ReduceMean/ReduceL2 node(s) left "
                        f"(expected {NON_NORM_REDUCTIONS.get(name, 0)})")

    normrt_ops = {op: n for (dom, op), n in counts.items() if dom == "normrt" and op not in COMPUTE_OPS}
    expected = EXPECTED_OPS[name]
    for op in set(expected) | set(normrt_ops):
        if not _in_range(normrt_ops.get(op, 0), expected.get(op, 0)):
            problems.append(f"normrt::{op} x{normrt_ops.get(op, 0)}, expected {expected.get(op, 0)}")

    fused = report["fused"]
    if name in EXPECTED_ACTIVATIONS:
        op, act, least = EXPECTED_ACTIVATIONS[name]
        n = sum(1 for e in fused if e["normrt_op"] == op and e.get("activation") == act)
        if n < least:
            problems.append(f"{n} {op} with activation {act!r} fused (expected >= {least})")
    if name in EXPECTED_RESIDUALS:
        least = EXPECTED_RESIDUALS[name]
        n = sum(1 for e in fused if e["normrt_op"] == "LayerNorm" and e.get("residual"))
        if n < least:
            problems.append(f"{n} LayerNorm with the residual fused (expected >= {least})")

    if problems:
        refused = "; ".join(f"{e['op']} {e['nodes'][:3]}: {e['reason']}" for e in report["refused"])
        pytest.fail(f"{file}: " + " | ".join(problems) + (f" || refused: {refused}" if refused else ""))

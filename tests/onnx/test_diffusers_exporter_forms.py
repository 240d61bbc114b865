"""A diffusers UNet (GroupNorm + SiLU resnets, attention blocks, nearest 2x upsampling) exported by
the TorchScript exporter at opsets 13 and 17 optimizes to the same graph: every GroupNorm fused
(opset 13 writes the back-Reshape's target as Shape(x), which Reshape-13's inference does not
propagate), every attention on the fused kernel with its head Transposes absorbed (opset 13
writes diffusers' baddbmm(beta=0) attention over batch*heads, with identity Casts around the
Softmax), the residual `/ output_scale_factor` of 1 gone. Oracle: torch in float64."""
import sys
from pathlib import Path

import numpy as np
import pytest

import normrt

sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "scripts"))


@pytest.fixture(scope="module")
def unet_exports(tmp_path_factory):
    torch = pytest.importorskip("torch")
    diffusers = pytest.importorskip("diffusers")
    from diffusers.models.attention_processor import AttnProcessor
    import make_fixtures as mf
    torch.manual_seed(0)
    unet = diffusers.UNet2DModel(
        sample_size=16, in_channels=3, out_channels=3, layers_per_block=1, block_out_channels=(8, 16),
        norm_num_groups=4, down_block_types=("DownBlock2D", "AttnDownBlock2D"),
        up_block_types=("AttnUpBlock2D", "UpBlock2D"), attention_head_dim=8).eval()
    for m in unet.modules():          # the eager processor: what an opset-13 export can write
        if hasattr(m, "set_processor"):
            m.set_processor(AttnProcessor())
    g = torch.Generator().manual_seed(1)
    inputs = {"sample": torch.randn(1, 3, 16, 16, generator=g), "timestep": torch.tensor([10.0])}
    built = mf.Built(mf.OutputsOf(unet, ["sample", "timestep"], ["sample"]), inputs, ["out_sample"])
    out = tmp_path_factory.mktemp("unet")
    paths = {}
    for opset in (13, 17):
        paths[opset] = out / f"unet__legacy{opset}.onnx"
        with torch.no_grad(), mf.quiet():
            mf.export_one(built, "legacy", opset, paths[opset])
    with torch.no_grad():
        want = built.module.double()(*(t.double() for t in inputs.values())).numpy()
    feeds = {k: v.numpy() for k, v in inputs.items()}
    return paths, feeds, want


@pytest.mark.parametrize("opset", [13, 17])
def test_legacy_exports_fuse_every_norm_and_attention(unet_exports, opset):
    paths, feeds, want = unet_exports
    sess = normrt.InferenceSession(str(paths[opset]), num_threads=2)
    report = sess.report
    ops = [n.op_type for n in sess.optimized_model.graph.node]
    assert not report["refused"], report["refused"]
    assert ops.count("GroupNorm") == 21 and "InstanceNormalization" not in ops
    assert ops.count("Attention") == 4 and "Softmax" not in ops
    assert "Div" not in ops and "Shape" not in ops
    for node in sess.optimized_model.graph.node:
        if node.op_type == "Attention":     # the head split/merge went into the layouts
            layouts = {a.name: a.s for a in node.attribute if a.type == a.STRING}
            assert layouts.get("q_layout") == b"BSHD" and layouts.get("y_layout") == b"BSHD"
    got = sess.run(None, feeds)[0]
    assert np.abs(got - want).max() <= 2e-5 * np.abs(want).max()
    one = normrt.InferenceSession(str(paths[opset]), num_threads=1).run(None, feeds)[0]
    np.testing.assert_array_equal(one, got)


def test_opset_13_optimizes_to_no_more_nodes_than_opset_17(unet_exports):
    paths, _, _ = unet_exports
    n = {o: len(normrt.InferenceSession(str(p)).optimized_model.graph.node) for o, p in paths.items()}
    assert n[13] <= n[17], n

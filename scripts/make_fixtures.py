#!/usr/bin/env python3
"""Build the exporter-output fixtures under tests/data/.

Small PyTorch modules with normalization layers (random init from fixed seeds,
eval mode) are exported with ``torch.onnx.export`` both ways:

* legacy TorchScript exporter (``dynamo=False``) at opsets 13 and 17,
* dynamo exporter (``dynamo=True``) at opsets 18 and 23.

For every model/exporter/opset combination that exports, this writes

* ``tests/data/<name>__<exporter><opset>.onnx`` (weights embedded, no external data),
* ``tests/data/<name>__<exporter><opset>.npz`` with the inputs under ``input:<onnx input name>``
  and the PyTorch outputs under ``output:<onnx output name>``,

and indexes them all in ``tests/data/fixtures.json``.  Every saved model is loaded
back with ``onnx.load`` + ``onnx.checker.check_model`` and run with
``onnx.reference.ReferenceEvaluator`` and onnxruntime; the run fails unless the
reference evaluator reproduces the torch output within
``1e-4 * max(1, max|out|)`` (max abs error).  A node-type summary is printed at the end.

Notes

* Norm layers get random γ/β/running statistics (not the 1/0 defaults) so a runtime that
  drops them fails; everything is seeded from the case name, and reruns are byte-identical.
* Combinations an exporter cannot do (nn.RMSNorm and SDPA on the legacy exporter, ...) are
  skipped with the exporter's reason, printed and kept under "skipped" in the index.
* Dynamo output is saved with weights embedded; its per-node debug metadata (stack traces
  with local paths, FX dumps) is dropped to keep files small, `namespace` is kept.
* Verification overrides onnx.reference's BatchNormalization (wrong for opsets 9-13, see
  ``_reference_overrides``); tests/test_fixtures.py does the same.

Needs the ``fixtures`` extra (torch==2.13.0, transformers, diffusers, onnxscript); the
tests use only the saved files.  Models are built from configs (no hub access).

Usage::

    python scripts/make_fixtures.py                 # rebuild everything
    python scripts/make_fixtures.py --only layernorm,groupnorm   # rebuild some (merged into the index)
    python scripts/make_fixtures.py --list          # list the cases
    python scripts/make_fixtures.py --examples      # only the bundled models in src/normrt/examples/
    python scripts/make_fixtures.py --half          # only the half-precision models in tests/data/half/
"""
from __future__ import annotations

import argparse
import collections
import contextlib
import io
import json
import logging
import math
import os
import sys
import time
import traceback
import warnings
import zlib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

import numpy as np

REPO = Path(__file__).resolve().parent.parent
DEFAULT_OUT = REPO / "tests" / "data"

COMBOS = [("legacy", 13), ("legacy", 17), ("dynamo", 18), ("dynamo", 23)]
REL_TOL = 1e-4  # max abs err <= REL_TOL * max(1, max|out|)


def scale_of(out: np.ndarray) -> float:
    return max(1.0, float(np.max(np.abs(out))) if out.size else 1.0)


def rel_err(got, want: np.ndarray) -> float:
    """max |got - want| / max(1, max |want|); inf on a shape mismatch."""
    return max_err(got, want) / scale_of(want)


# ---------------------------------------------------------------------------
# modules
# ---------------------------------------------------------------------------
import torch  # noqa: E402
import torch.nn as nn  # noqa: E402
import torch.nn.functional as F  # noqa: E402


def seed_for(name: str) -> int:
    return zlib.crc32(name.encode()) & 0x7FFFFFFF


def randomize_norms(model: nn.Module, gen: torch.Generator) -> None:
    """Give every normalization layer non-trivial affine parameters and running stats.

    Default inits (γ = 1, β = 0, mean 0, var 1) would hide a runtime that drops or
    misapplies them; the fixtures should not.
    """
    for mod in model.modules():
        cls = type(mod).__name__
        is_norm = isinstance(
            mod,
            (nn.modules.batchnorm._NormBase, nn.LayerNorm, nn.GroupNorm, nn.RMSNorm),
        ) or cls.endswith(("Norm", "LayerNorm", "RMSNorm", "Normalization", "GRN"))
        if not is_norm:
            continue
        with torch.no_grad():
            w = getattr(mod, "weight", None)
            if isinstance(w, nn.Parameter):
                w.copy_(1.0 + 0.2 * torch.randn(w.shape, generator=gen))
            b = getattr(mod, "bias", None)
            if isinstance(b, nn.Parameter):
                b.copy_(0.2 * torch.randn(b.shape, generator=gen))
            rm = getattr(mod, "running_mean", None)
            if isinstance(rm, torch.Tensor):
                rm.copy_(0.2 * torch.randn(rm.shape, generator=gen))
            rv = getattr(mod, "running_var", None)
            if isinstance(rv, torch.Tensor):
                rv.copy_(0.5 + torch.rand(rv.shape, generator=gen))


class ConvBN(nn.Module):
    def __init__(self):
        super().__init__()
        self.conv = nn.Conv2d(3, 8, 3, padding=1)
        self.bn = nn.BatchNorm2d(8)

    def forward(self, x):
        return self.bn(self.conv(x))


class ReflectPadBlock(nn.Module):
    """A style-transfer / CycleGAN generator block: mirrored pads before unpadded convs, then a
    GAN's LeakyReLU (pad_into_conv's pad_mode, conv_epilogue's leaky_relu)."""

    def __init__(self):
        super().__init__()
        self.conv1 = nn.Sequential(nn.ReflectionPad2d(1), nn.Conv2d(4, 8, 3), nn.InstanceNorm2d(8, affine=True),
                                   nn.ReLU())
        self.conv2 = nn.Sequential(nn.ReplicationPad2d((1, 2, 0, 1)), nn.Conv2d(8, 6, 3, stride=2),
                                   nn.LeakyReLU(0.2))

    def forward(self, x):
        return self.conv2(self.conv1(x))


class LinearBN1d(nn.Module):
    def __init__(self):
        super().__init__()
        self.fc = nn.Linear(16, 12)
        self.bn = nn.BatchNorm1d(12)

    def forward(self, x):
        return self.bn(self.fc(x))


class RMSNormLlama(nn.Module):
    """LLaMA-style: x * rsqrt(mean(x^2) + eps) * w (computed in float32)."""

    def __init__(self, d, eps=1e-6):
        super().__init__()
        self.weight = nn.Parameter(torch.ones(d))
        self.eps = eps

    def forward(self, x):
        dtype = x.dtype
        h = x.to(torch.float32)
        var = h.pow(2).mean(-1, keepdim=True)
        h = h * torch.rsqrt(var + self.eps)
        return self.weight * h.to(dtype)


class RMSNormT5(nn.Module):
    """T5-style written with a division: x / sqrt(mean(x^2) + eps) * w."""

    def __init__(self, d, eps=1e-6):
        super().__init__()
        self.weight = nn.Parameter(torch.ones(d))
        self.eps = eps

    def forward(self, x):
        var = x.pow(2).mean(-1, keepdim=True)
        return self.weight * (x / torch.sqrt(var + self.eps))


class GroupNormSiLU(nn.Module):
    def __init__(self):
        super().__init__()
        self.norm = nn.GroupNorm(4, 16)

    def forward(self, x):
        return F.silu(self.norm(x))


class CondInstanceNormEmbedding(nn.Module):
    """Conditional instance norm: IN without affine, γ/β rows picked by nn.Embedding."""

    def __init__(self, c=8, n_styles=5):
        super().__init__()
        self.conv = nn.Conv2d(3, c, 3, padding=1)
        self.norm = nn.InstanceNorm2d(c, affine=False)
        self.gamma = nn.Embedding(n_styles, c)
        self.beta = nn.Embedding(n_styles, c)
        with torch.no_grad():
            self.gamma.weight.mul_(0.2).add_(1.0)
            self.beta.weight.mul_(0.2)

    def forward(self, x, style):
        h = self.norm(self.conv(x))
        g = self.gamma(style)[:, :, None, None]
        b = self.beta(style)[:, :, None, None]
        return h * g + b


class CondInstanceNormIndex(nn.Module):
    """Conditional instance norm with γ/β tables indexed directly (Gather on a Parameter)."""

    def __init__(self, c=8, n_styles=5):
        super().__init__()
        self.norm = nn.InstanceNorm2d(c, affine=False)
        self.gamma = nn.Parameter(1.0 + 0.2 * torch.randn(n_styles, c))
        self.beta = nn.Parameter(0.2 * torch.randn(n_styles, c))

    def forward(self, x, style):
        h = self.norm(x)
        return h * self.gamma[style].view(-1, h.shape[1], 1, 1) + self.beta[style].view(-1, h.shape[1], 1, 1)


def calc_mean_std(feat, eps=1e-5):
    # as in the reference AdaIN implementation: unbiased variance over the flattened spatial axis
    n, c = feat.shape[:2]
    var = feat.view(n, c, -1).var(dim=2) + eps
    std = var.sqrt().view(n, c, 1, 1)
    mean = feat.view(n, c, -1).mean(dim=2).view(n, c, 1, 1)
    return mean, std


class AdaIN(nn.Module):
    """Hand-written AdaIN (Huang & Belongie reference code, unbiased variance)."""

    def forward(self, content, style):
        size = content.size()
        s_mean, s_std = calc_mean_std(style)
        c_mean, c_std = calc_mean_std(content)
        normalized = (content - c_mean.expand(size)) / c_std.expand(size)
        return normalized * s_std.expand(size) + s_mean.expand(size)


class AdaINBiased(nn.Module):
    """AdaIN with keepdim mean/var over (H, W), population variance."""

    eps = 1e-5

    def forward(self, content, style):
        eps = self.eps
        cm = content.mean((2, 3), keepdim=True)
        cv = content.var((2, 3), keepdim=True, unbiased=False)
        sm = style.mean((2, 3), keepdim=True)
        sv = style.var((2, 3), keepdim=True, unbiased=False)
        return (content - cm) / torch.sqrt(cv + eps) * torch.sqrt(sv + eps) + sm


class SPADE(nn.Module):
    """SPADE: param-free norm, then x̂·(1 + γ(seg)) + β(seg) with small convs."""

    def __init__(self, c=8, label_nc=3, hidden=8, norm="batch"):
        super().__init__()
        if norm == "batch":
            self.param_free_norm = nn.BatchNorm2d(c, affine=False)
        else:
            self.param_free_norm = nn.InstanceNorm2d(c, affine=False)
        self.mlp_shared = nn.Sequential(nn.Conv2d(label_nc, hidden, 3, padding=1), nn.ReLU())
        self.mlp_gamma = nn.Conv2d(hidden, c, 3, padding=1)
        self.mlp_beta = nn.Conv2d(hidden, c, 3, padding=1)

    def forward(self, x, segmap):
        normalized = self.param_free_norm(x)
        segmap = F.interpolate(segmap, size=x.shape[2:], mode="nearest")
        actv = self.mlp_shared(segmap)
        gamma = self.mlp_gamma(actv)
        beta = self.mlp_beta(actv)
        return normalized * (1 + gamma) + beta


class WeightNormConv(nn.Module):
    def __init__(self):
        super().__init__()
        self.conv = nn.utils.parametrizations.weight_norm(nn.Conv2d(4, 8, 3, padding=1))
        with torch.no_grad():  # make g differ from ||v|| so the reparametrization matters
            g = self.conv.parametrizations.weight.original0
            g.mul_(0.5 + torch.rand(g.shape))

    def forward(self, x):
        return self.conv(x)


class WSConv2d(nn.Conv2d):
    """Weight-standardized convolution (BiT / GN+WS style)."""

    def forward(self, x):
        w = self.weight
        m = w.mean(dim=(1, 2, 3), keepdim=True)
        v = w.var(dim=(1, 2, 3), keepdim=True, unbiased=False)
        w = (w - m) / torch.sqrt(v + 1e-10)
        return F.conv2d(x, w, self.bias, self.stride, self.padding, self.dilation, self.groups)


class WSConvGN(nn.Module):
    def __init__(self):
        super().__init__()
        self.conv = WSConv2d(4, 8, 3, padding=1)
        self.gn = nn.GroupNorm(2, 8)

    def forward(self, x):
        return F.relu(self.gn(self.conv(x)))


class NormalizeHead(nn.Module):
    def __init__(self):
        super().__init__()
        self.fc = nn.Linear(16, 8)

    def forward(self, x):
        return F.normalize(self.fc(x), dim=-1)


class PreLNBlock(nn.Module):
    """Pre-LN transformer block: LN -> MHA -> +res -> LN -> MLP(GELU) -> +res."""

    def __init__(self, d=32, heads=4, mlp=64):
        super().__init__()
        self.ln1 = nn.LayerNorm(d)
        self.qkv = nn.Linear(d, 3 * d)
        self.proj = nn.Linear(d, d)
        self.ln2 = nn.LayerNorm(d)
        self.fc1 = nn.Linear(d, mlp)
        self.fc2 = nn.Linear(mlp, d)
        self.heads = heads

    def forward(self, x):
        b, t, d = x.shape
        h = self.ln1(x)
        q, k, v = self.qkv(h).split(d, dim=-1)
        q = q.view(b, t, self.heads, d // self.heads).transpose(1, 2)
        k = k.view(b, t, self.heads, d // self.heads).transpose(1, 2)
        v = v.view(b, t, self.heads, d // self.heads).transpose(1, 2)
        a = F.scaled_dot_product_attention(q, k, v)
        a = a.transpose(1, 2).reshape(b, t, d)
        x = x + self.proj(a)
        x = x + self.fc2(F.gelu(self.fc1(self.ln2(x))))
        return x


class PreLNBlockEager(PreLNBlock):
    """The same block with attention written out: softmax(q k^T / sqrt(d)) v (MatMul/Softmax)."""

    def forward(self, x):
        b, t, d = x.shape
        hd = d // self.heads
        h = self.ln1(x)
        q, k, v = self.qkv(h).split(d, dim=-1)
        q = q.view(b, t, self.heads, hd).transpose(1, 2)
        k = k.view(b, t, self.heads, hd).transpose(1, 2)
        v = v.view(b, t, self.heads, hd).transpose(1, 2)
        att = torch.softmax(q @ k.transpose(-2, -1) * (1.0 / math.sqrt(hd)), dim=-1)
        a = (att @ v).transpose(1, 2).reshape(b, t, d)
        x = x + self.proj(a)
        x = x + self.fc2(F.gelu(self.fc1(self.ln2(x))))
        return x


class ResidualLN(nn.Module):
    """Post-LN residual: LayerNorm(x + Linear(y))."""

    def __init__(self, d=32):
        super().__init__()
        self.fc = nn.Linear(d, d)
        self.ln = nn.LayerNorm(d)

    def forward(self, x, residual):
        return self.ln(residual + self.fc(x))


class MinGPT(nn.Module):
    """A minGPT / nanoGPT decoder as its users write it: attention by hand, the causal mask a
    masked_fill of the scores with -inf by a registered tril buffer (nanoGPT's path without flash
    attention), pre-LN blocks, a GELU MLP, the final LayerNorm. `vocab` 0: the input is the
    embedded sequence (N, T, width) itself."""

    class Attention(nn.Module):
        def __init__(self, width, heads, block):
            super().__init__()
            self.heads = heads
            self.c_attn, self.c_proj = nn.Linear(width, 3 * width), nn.Linear(width, width)
            self.register_buffer("bias", torch.tril(torch.ones(block, block)).view(1, 1, block, block))

        def forward(self, x):
            B, T, C = x.size()
            q, k, v = self.c_attn(x).split(C, dim=2)
            q, k, v = (t.view(B, T, self.heads, C // self.heads).transpose(1, 2) for t in (q, k, v))
            att = (q @ k.transpose(-2, -1)) * (1.0 / math.sqrt(k.size(-1)))
            att = att.masked_fill(self.bias[:, :, :T, :T] == 0, float("-inf"))
            y = F.softmax(att, dim=-1) @ v
            return self.c_proj(y.transpose(1, 2).contiguous().view(B, T, C))

    class Block(nn.Module):
        def __init__(self, width, heads, block):
            super().__init__()
            self.ln_1, self.ln_2 = nn.LayerNorm(width), nn.LayerNorm(width)
            self.attn = MinGPT.Attention(width, heads, block)
            self.mlp = nn.Sequential(nn.Linear(width, 4 * width), nn.GELU(), nn.Linear(4 * width, width))

        def forward(self, x):
            x = x + self.attn(self.ln_1(x))
            return x + self.mlp(self.ln_2(x))

    def __init__(self, width=32, layers=2, heads=4, block=16, vocab=0):
        super().__init__()
        self.wte = nn.Embedding(vocab, width) if vocab else None
        self.wpe = nn.Embedding(block, width) if vocab else None
        self.h = nn.ModuleList(MinGPT.Block(width, heads, block) for _ in range(layers))
        self.ln_f = nn.LayerNorm(width)

    def forward(self, x):
        if self.wte is not None:
            x = self.wte(x) + self.wpe(torch.arange(x.shape[1], device=x.device))
        for b in self.h:
            x = b(x)
        return self.ln_f(x)


class OutputsOf(nn.Module):
    """Call a transformers/diffusers model with keyword inputs and return chosen output fields."""

    def __init__(self, model, input_keys, output_keys, **extra):
        super().__init__()
        self.model = model
        self.input_keys = list(input_keys)
        self.output_keys = list(output_keys)
        self.extra = extra

    def forward(self, *args):
        out = self.model(**dict(zip(self.input_keys, args)), **self.extra)
        res = tuple(getattr(out, k) for k in self.output_keys)
        return res[0] if len(res) == 1 else res


class VAERoundTrip(nn.Module):
    """AutoencoderKL encode -> posterior mode -> decode."""

    def __init__(self, vae):
        super().__init__()
        self.vae = vae

    def forward(self, sample):
        return self.vae(sample, sample_posterior=False).sample


# ---------------------------------------------------------------------------
# cases
# ---------------------------------------------------------------------------
@dataclass
class Built:
    module: nn.Module
    inputs: dict  # name -> torch.Tensor, in forward-argument order
    outputs: list  # output names


@dataclass
class Case:
    name: str
    description: str
    build: Callable[[torch.Generator], Built]
    tags: list = field(default_factory=list)


def rn(gen, *shape, scale=1.0, shift=0.0):
    return torch.randn(*shape, generator=gen) * scale + shift


def _simple(module_fn, inputs_fn, outputs=("y",)):
    def build(gen):
        return Built(module_fn(), inputs_fn(gen), list(outputs))

    return build


def build_bert(gen):
    from transformers import BertConfig, BertModel

    cfg = BertConfig(
        vocab_size=100, hidden_size=32, num_hidden_layers=2, num_attention_heads=2,
        intermediate_size=64, max_position_embeddings=32, type_vocab_size=2,
        hidden_dropout_prob=0.0, attention_probs_dropout_prob=0.0,
    )
    model = BertModel(cfg, add_pooling_layer=False)
    ids = torch.randint(0, 100, (2, 8), generator=gen)
    mask = torch.ones(2, 8, dtype=torch.int64)
    mask[1, 6:] = 0
    return Built(
        OutputsOf(model, ["input_ids", "attention_mask"], ["last_hidden_state"]),
        {"input_ids": ids, "attention_mask": mask},
        ["last_hidden_state"],
    )


def build_llama(gen):
    from transformers import LlamaConfig, LlamaModel

    cfg = LlamaConfig(
        vocab_size=100, hidden_size=32, intermediate_size=64, num_hidden_layers=2,
        num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=64,
        rms_norm_eps=1e-6, use_cache=False,
    )
    model = LlamaModel(cfg)
    ids = torch.randint(0, 100, (1, 8), generator=gen)
    # An explicit attention_mask keeps transformers from probing position_ids for packed
    # sequences (torch.diff), which the legacy exporter cannot translate.
    mask = torch.ones(1, 8, dtype=torch.int64)
    return Built(
        OutputsOf(model, ["input_ids", "attention_mask"], ["last_hidden_state"], use_cache=False),
        {"input_ids": ids, "attention_mask": mask},
        ["last_hidden_state"],
    )


def build_vit(gen):
    from transformers import ViTConfig, ViTModel

    cfg = ViTConfig(
        image_size=16, patch_size=4, num_channels=3, hidden_size=32, num_hidden_layers=2,
        num_attention_heads=2, intermediate_size=64,
        hidden_dropout_prob=0.0, attention_probs_dropout_prob=0.0,
    )
    model = ViTModel(cfg, add_pooling_layer=False)
    return Built(
        OutputsOf(model, ["pixel_values"], ["last_hidden_state"]),
        {"pixel_values": rn(gen, 1, 3, 16, 16)},
        ["last_hidden_state"],
    )


def build_convnext(gen):
    from transformers import ConvNextConfig, ConvNextModel

    cfg = ConvNextConfig(
        num_channels=3, patch_size=4, num_stages=2, hidden_sizes=[16, 32], depths=[1, 1],
        image_size=32, layer_scale_init_value=1.0, drop_path_rate=0.0,
    )
    model = ConvNextModel(cfg)
    return Built(
        OutputsOf(model, ["pixel_values"], ["last_hidden_state", "pooler_output"]),
        {"pixel_values": rn(gen, 1, 3, 32, 32)},
        ["last_hidden_state", "pooler_output"],
    )


def build_convnextv2(gen):
    from transformers import ConvNextV2Config, ConvNextV2Model

    cfg = ConvNextV2Config(
        num_channels=3, patch_size=4, num_stages=2, hidden_sizes=[16, 32], depths=[1, 1],
        image_size=32, drop_path_rate=0.0,
    )
    model = ConvNextV2Model(cfg)
    return Built(
        OutputsOf(model, ["pixel_values"], ["last_hidden_state", "pooler_output"]),
        {"pixel_values": rn(gen, 1, 3, 32, 32)},
        ["last_hidden_state", "pooler_output"],
    )


def build_unet(gen):
    from diffusers import UNet2DModel

    model = UNet2DModel(
        sample_size=16, in_channels=3, out_channels=3, layers_per_block=1,
        block_out_channels=(8, 16), norm_num_groups=4,
        down_block_types=("DownBlock2D", "AttnDownBlock2D"),
        up_block_types=("AttnUpBlock2D", "UpBlock2D"),
        attention_head_dim=8,
    )
    return Built(
        OutputsOf(model, ["sample", "timestep"], ["sample"]),
        {"sample": rn(gen, 1, 3, 16, 16), "timestep": torch.tensor([10.0])},
        ["out_sample"],
    )


def build_vae(gen):
    from diffusers import AutoencoderKL

    vae = AutoencoderKL(
        in_channels=3, out_channels=3, latent_channels=4, layers_per_block=1,
        block_out_channels=(8, 16), norm_num_groups=4, sample_size=16,
        down_block_types=("DownEncoderBlock2D", "DownEncoderBlock2D"),
        up_block_types=("UpDecoderBlock2D", "UpDecoderBlock2D"),
    )
    return Built(VAERoundTrip(vae), {"sample": rn(gen, 1, 3, 16, 16)}, ["out_sample"])


CASES: list[Case] = [
    Case("conv_bn2d", "Conv2d -> BatchNorm2d (eval)",
         _simple(ConvBN, lambda g: {"x": rn(g, 2, 3, 8, 8)})),
    Case("bn2d", "BatchNorm2d alone (eval, running stats)",
         _simple(lambda: nn.BatchNorm2d(8), lambda g: {"x": rn(g, 2, 8, 6, 6)})),
    Case("linear_bn1d", "Linear -> BatchNorm1d (eval)",
         _simple(LinearBN1d, lambda g: {"x": rn(g, 4, 16)})),
    Case("layernorm", "nn.LayerNorm(32) on [2, 8, 32]",
         _simple(lambda: nn.LayerNorm(32), lambda g: {"x": rn(g, 2, 8, 32)})),
    Case("rmsnorm", "nn.RMSNorm(32, eps=1e-6) on [2, 8, 32]",
         _simple(lambda: nn.RMSNorm(32, eps=1e-6), lambda g: {"x": rn(g, 2, 8, 32)})),
    Case("rmsnorm_llama", "hand-written LLaMA RMSNorm: x * rsqrt(mean(x^2) + eps) * w",
         _simple(lambda: RMSNormLlama(32), lambda g: {"x": rn(g, 2, 8, 32)})),
    Case("rmsnorm_t5", "hand-written T5-style RMSNorm: w * x / sqrt(mean(x^2) + eps)",
         _simple(lambda: RMSNormT5(32), lambda g: {"x": rn(g, 2, 8, 32)})),
    Case("groupnorm", "nn.GroupNorm(4, 16) on [2, 16, 8, 8]",
         _simple(lambda: nn.GroupNorm(4, 16), lambda g: {"x": rn(g, 2, 16, 8, 8)})),
    Case("groupnorm_silu", "nn.GroupNorm(4, 16) -> SiLU",
         _simple(GroupNormSiLU, lambda g: {"x": rn(g, 2, 16, 8, 8)})),
    Case("instancenorm2d", "nn.InstanceNorm2d(8, affine=True)",
         _simple(lambda: nn.InstanceNorm2d(8, affine=True), lambda g: {"x": rn(g, 2, 8, 6, 6)})),
    Case("cond_instancenorm_embedding",
         "conditional IN: Conv -> InstanceNorm2d(affine=False) -> * Embedding(style) + Embedding(style)",
         _simple(CondInstanceNormEmbedding,
                 lambda g: {"x": rn(g, 2, 3, 8, 8), "style": torch.tensor([3, 1], dtype=torch.int64)})),
    Case("cond_instancenorm_index",
         "conditional IN: InstanceNorm2d(affine=False) -> * gamma[style] + beta[style] (Parameter tables)",
         _simple(CondInstanceNormIndex,
                 lambda g: {"x": rn(g, 2, 8, 6, 6), "style": torch.tensor([4, 0], dtype=torch.int64)})),
    Case("adain", "hand-written AdaIN(content, style), unbiased variance (reference code)",
         _simple(AdaIN, lambda g: {"content": rn(g, 2, 8, 6, 6),
                                   "style": rn(g, 2, 8, 5, 5, scale=2.0, shift=0.5)})),
    Case("adain_biased", "hand-written AdaIN(content, style), keepdim mean/var, population variance",
         _simple(AdaINBiased, lambda g: {"content": rn(g, 2, 8, 6, 6),
                                         "style": rn(g, 2, 8, 5, 5, scale=2.0, shift=0.5)})),
    Case("spade_bn", "SPADE: BatchNorm2d(affine=False) then x*(1+gamma(seg))+beta(seg), seg resized",
         _simple(lambda: SPADE(norm="batch"),
                 lambda g: {"x": rn(g, 2, 8, 8, 8), "segmap": rn(g, 2, 3, 16, 16)})),
    Case("spade_in", "SPADE: InstanceNorm2d(affine=False) then x*(1+gamma(seg))+beta(seg), seg resized",
         _simple(lambda: SPADE(norm="instance"),
                 lambda g: {"x": rn(g, 2, 8, 8, 8), "segmap": rn(g, 2, 3, 16, 16)})),
    Case("reflect_pad_conv", "ReflectionPad2d -> Conv2d -> InstanceNorm2d -> ReLU -> ReplicationPad2d -> Conv2d/2 "
         "-> LeakyReLU(0.2)",
         _simple(ReflectPadBlock, lambda g: {"x": rn(g, 2, 4, 10, 10)})),
    Case("weightnorm_conv", "Conv2d with parametrizations.weight_norm",
         _simple(WeightNormConv, lambda g: {"x": rn(g, 2, 4, 8, 8)})),
    Case("wsconv_gn", "weight-standardized Conv2d subclass -> GroupNorm(2, 8) -> ReLU",
         _simple(WSConvGN, lambda g: {"x": rn(g, 2, 4, 8, 8)})),
    Case("normalize_head", "Linear -> F.normalize(dim=-1)",
         _simple(NormalizeHead, lambda g: {"x": rn(g, 4, 16)})),
    Case("lrn", "nn.LocalResponseNorm(size=5, alpha=1e-2, beta=0.75, k=1.0)",
         _simple(lambda: nn.LocalResponseNorm(5, alpha=1e-2, beta=0.75, k=1.0),
                 lambda g: {"x": rn(g, 2, 8, 6, 6, scale=2.0)})),
    Case("preln_block", "pre-LN transformer block (LN -> SDPA attention -> +res -> LN -> MLP GELU -> +res)",
         _simple(PreLNBlock, lambda g: {"x": rn(g, 2, 8, 32)})),
    Case("preln_block_eager", "pre-LN transformer block with attention written out (MatMul/Softmax)",
         _simple(PreLNBlockEager, lambda g: {"x": rn(g, 2, 8, 32)})),
    Case("residual_layernorm", "LayerNorm(residual + Linear(x))",
         _simple(ResidualLN, lambda g: {"x": rn(g, 2, 8, 32), "residual": rn(g, 2, 8, 32)})),
    Case("hf_bert", "transformers BertModel, hidden 32, 2 layers, vocab 100 (last_hidden_state)",
         build_bert, ["transformers"]),
    Case("hf_llama", "transformers LlamaModel, hidden 32, 2 layers, GQA 4/2 heads, vocab 100",
         build_llama, ["transformers"]),
    Case("hf_vit", "transformers ViTModel, 16x16 image, patch 4, hidden 32, 2 layers",
         build_vit, ["transformers"]),
    Case("hf_convnext", "transformers ConvNextModel, 32x32 image, hidden_sizes (16, 32), depths (1, 1)",
         build_convnext, ["transformers"]),
    Case("mingpt", "minGPT decoder on an embedded sequence: 2 blocks of width 32, 4 heads, attention a "
         "masked_fill(-inf) of the scores by a tril buffer",
         _simple(lambda: MinGPT(width=32, layers=2, heads=4, block=16), lambda g: {"x": rn(g, 2, 8, 32)})),
    Case("hf_convnextv2", "transformers ConvNextV2Model (global response normalization), 32x32 image, "
         "hidden_sizes (16, 32), depths (1, 1)",
         build_convnextv2, ["transformers"]),
    Case("diffusers_unet2d", "diffusers UNet2DModel, 16x16, block_out_channels (8, 16), 4 groups, attention",
         build_unet, ["diffusers"]),
    Case("diffusers_vae", "diffusers AutoencoderKL encode+decode, 16x16, block_out_channels (8, 16), 4 groups",
         build_vae, ["diffusers"]),
]


# ---------------------------------------------------------------------------
# export, verification, bookkeeping
# ---------------------------------------------------------------------------
def flatten_outputs(out) -> list[torch.Tensor]:
    if isinstance(out, torch.Tensor):
        return [out]
    res = []
    for o in out:
        res.extend(flatten_outputs(o))
    return res


def count_nodes(graph, counter=None) -> collections.Counter:
    """Counted op types, including nodes of subgraphs (If/Loop bodies)."""
    import onnx

    counter = collections.Counter() if counter is None else counter
    for node in graph.node:
        key = node.op_type if node.domain in ("", "ai.onnx") else f"{node.domain}::{node.op_type}"
        counter[key] += 1
        for attr in node.attribute:
            if attr.type == onnx.AttributeProto.GRAPH:
                count_nodes(attr.g, counter)
            elif attr.type == onnx.AttributeProto.GRAPHS:
                for g in attr.graphs:
                    count_nodes(g, counter)
    return counter


def format_counts(counter: dict, skip=("Constant",)) -> str:
    parts = []
    for op, n in sorted(counter.items(), key=lambda kv: (-kv[1], kv[0])):
        if op in skip:
            continue
        parts.append(op if n == 1 else f"{op}×{n}")
    return ", ".join(parts)


@contextlib.contextmanager
def quiet():
    """Silence the exporters' chatter (progress lines, deprecation warnings)."""
    buf_out, buf_err = io.StringIO(), io.StringIO()
    sys.stdout.flush()
    sys.stderr.flush()
    saved = [os.dup(1), os.dup(2)]
    devnull = os.open(os.devnull, os.O_WRONLY)
    try:
        os.dup2(devnull, 1)  # also what C++ code prints (e.g. the legacy exporter's IR dumps)
        os.dup2(devnull, 2)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            with contextlib.redirect_stdout(buf_out), contextlib.redirect_stderr(buf_err):
                yield
    finally:
        os.dup2(saved[0], 1)
        os.dup2(saved[1], 2)
        for fd in saved + [devnull]:
            os.close(fd)


# Per-node metadata the dynamo exporter writes: Python stack traces (with this machine's
# paths), FX node dumps and two restatements of the module scope.  They are most of the
# file size and carry no semantics; `namespace` (module path and class, the one place the
# dynamo output records which module a node came from) is kept.
STRIPPED_METADATA = (
    "pkg.torch.onnx.stack_trace",
    "pkg.torch.onnx.fx_node",
    "pkg.torch.onnx.class_hierarchy",
    "pkg.torch.onnx.name_scopes",
)


def strip_debug_metadata(graph) -> bool:
    import onnx

    changed = False
    for node in graph.node:
        keep = [p for p in node.metadata_props if p.key not in STRIPPED_METADATA]
        if len(keep) != len(node.metadata_props):
            changed = True
            props = [(p.key, p.value) for p in keep]
            del node.metadata_props[:]
            for k, v in props:
                node.metadata_props.add(key=k, value=v)
        for attr in node.attribute:
            if attr.type == onnx.AttributeProto.GRAPH:
                changed |= strip_debug_metadata(attr.g)
            elif attr.type == onnx.AttributeProto.GRAPHS:
                for g in attr.graphs:
                    changed |= strip_debug_metadata(g)
    return changed


def export_one(built: Built, exporter: str, opset: int, path: Path) -> None:
    import onnx

    args = tuple(built.inputs.values())
    names_in = list(built.inputs)
    if exporter == "legacy":
        torch.onnx.export(
            built.module, args, str(path), dynamo=False, opset_version=opset,
            input_names=names_in, output_names=built.outputs, do_constant_folding=True,
        )
    else:
        prog = torch.onnx.export(
            built.module, args, dynamo=True, opset_version=opset, verbose=False,
            input_names=names_in, output_names=built.outputs, external_data=False,
        )
        prog.save(str(path), external_data=False)
        model = onnx.load(str(path))
        if strip_debug_metadata(model.graph):
            onnx.save(model, str(path))
    stray = Path(str(path) + ".data")
    if stray.exists():
        raise RuntimeError(f"external data written next to {path.name}")


def _reference_overrides():
    """Ops whose onnx.reference implementation is wrong for these models.

    BatchNormalization-9 (opsets 9-13): onnx's reference picks training mode whenever the
    `momentum` attribute is set (the legacy exporter always sets it), but before opset 14 the
    mode is given by the output count, and a one-output node is inference (onnx/onnx#5799,
    fix proposed in onnx/onnx#8442).  tests/test_fixtures.py carries the same override.
    """
    from onnx.reference.op_run import OpRun
    from onnx.reference.ops.op_batch_normalization import _batchnorm_test_mode

    class BatchNormalization(OpRun):
        op_domain = ""

        def _run(self, x, scale, bias, mean, var, epsilon=None, momentum=None,  # noqa: ARG002
                 training_mode=None, is_test=None, spatial=None):  # noqa: ARG002
            if training_mode or len([o for o in self.onnx_node.output if o]) > 1:
                raise NotImplementedError("training-mode BatchNormalization")
            eps = 1e-5 if epsilon is None else epsilon
            return (_batchnorm_test_mode(x, scale, bias, mean, var, epsilon=eps),)

    return [BatchNormalization]


def run_reference(model, feeds):
    from onnx.reference import ReferenceEvaluator

    sess = ReferenceEvaluator(model, new_ops=_reference_overrides())
    return sess.run(None, feeds)


def run_ort(path: Path, feeds):
    import onnxruntime as ort

    so = ort.SessionOptions()
    so.intra_op_num_threads = 1
    sess = ort.InferenceSession(str(path), so, providers=["CPUExecutionProvider"])
    return sess.run(None, feeds)


def max_err(got, want) -> float:
    got = np.asarray(got, dtype=np.float64)
    want = np.asarray(want, dtype=np.float64)
    if got.shape != want.shape:
        return math.inf
    return float(np.max(np.abs(got - want))) if want.size else 0.0


def short_reason(exc: BaseException) -> str:
    msg = str(exc).strip()
    for line in msg.splitlines():
        line = line.strip()
        if line and not line.startswith(("Traceback", "File ")):
            msg = line
            break
    return f"{type(exc).__name__}: {msg[:300]}"


def make_case(case: Case, out_dir: Path, verbose: bool, combos=COMBOS) -> tuple[list[dict], list[dict], list[str]]:
    import onnx

    entries, skipped, failures = [], [], []
    torch.manual_seed(seed_for(case.name))
    gen = torch.Generator().manual_seed(seed_for(case.name))
    with quiet():
        built = case.build(gen)
    built.module.eval()
    if not case.tags or "spelling" not in case.tags:
        randomize_norms(built.module, gen)
    with torch.no_grad():
        ref = [t.detach().numpy().copy() for t in flatten_outputs(built.module(*built.inputs.values()))]
    if len(ref) != len(built.outputs):
        raise RuntimeError(f"{case.name}: {len(ref)} outputs but {len(built.outputs)} names")
    in_np = {k: v.detach().numpy().copy() for k, v in built.inputs.items()}

    for exporter, opset in combos:
        stem = f"{case.name}__{exporter}{opset}"
        onnx_path = out_dir / f"{stem}.onnx"
        npz_path = out_dir / f"{stem}.npz"
        for p in (onnx_path, npz_path, Path(str(onnx_path) + ".data")):
            p.unlink(missing_ok=True)
        t0 = time.time()
        try:
            with quiet(), torch.no_grad():
                export_one(built, exporter, opset, onnx_path)
        except Exception as exc:  # noqa: BLE001 - any exporter failure is a skip with a reason
            reason = short_reason(exc)
            if verbose:
                traceback.print_exc()
            for p in (onnx_path, Path(str(onnx_path) + ".data")):
                p.unlink(missing_ok=True)
            print(f"  SKIP {stem}: export failed: {reason}", flush=True)
            skipped.append({"name": case.name, "exporter": exporter, "opset": opset, "reason": reason})
            continue
        t_export = time.time() - t0

        model = onnx.load(str(onnx_path))
        onnx.checker.check_model(model)
        graph_opset = next((o.version for o in model.opset_import if o.domain in ("", "ai.onnx")), None)
        g_inputs = [i.name for i in model.graph.input]
        g_outputs = [o.name for o in model.graph.output]
        # Feed by ONNX input name; an input the exporter dropped (unused) is not fed.
        feeds = {}
        for name in g_inputs:
            if name not in in_np:
                raise RuntimeError(f"{stem}: graph input {name!r} is not one of {list(in_np)}")
            feeds[name] = in_np[name]
        if len(g_outputs) != len(ref):
            raise RuntimeError(f"{stem}: graph has outputs {g_outputs}, torch gave {len(ref)}")
        outs = dict(zip(g_outputs, ref))

        t0 = time.time()
        got_ref = run_reference(model, feeds)
        t_ref = time.time() - t0
        err_ref = max(rel_err(g, w) for g, w in zip(got_ref, ref))
        ok_ref = err_ref <= REL_TOL
        try:
            got_ort = run_ort(onnx_path, feeds)
            err_ort = max(rel_err(g, w) for g, w in zip(got_ort, ref))
            ort_note = f"{err_ort:.1e}"
        except Exception as exc:  # noqa: BLE001
            err_ort = None
            ort_note = "n/a (" + short_reason(exc)[:80] + ")"

        np.savez(
            npz_path,
            **{f"input:{k}": v for k, v in feeds.items()},
            **{f"output:{k}": v for k, v in outs.items()},
        )
        counts = count_nodes(model.graph)
        size = onnx_path.stat().st_size + npz_path.stat().st_size
        status = "ok" if ok_ref else "MISMATCH"
        print(
            f"  {status:8s} {stem:45s} opset={graph_opset} {size/1024:7.1f} KiB  "
            f"export {t_export:5.1f}s  ref {t_ref:5.2f}s  rel.err ref {err_ref:.1e} ort {ort_note}",
            flush=True,
        )
        if not ok_ref:
            failures.append(f"{stem}: reference evaluator error {err_ref:.2e} (relative) over tolerance")
        entries.append({
            "file": onnx_path.name,
            "data": npz_path.name,
            "name": case.name,
            "module": case.description,
            "exporter": exporter,
            "opset": opset,
            "graph_opset": graph_opset,
            "inputs": [{"name": k, "shape": list(v.shape), "dtype": str(v.dtype)} for k, v in feeds.items()],
            "outputs": [{"name": k, "shape": list(v.shape), "dtype": str(v.dtype)} for k, v in outs.items()],
            "torch": torch.__version__,
            "node_counts": dict(sorted(counts.items())),
            "max_rel_err_reference": err_ref,
            "max_rel_err_onnxruntime": err_ort,
        })
    return entries, skipped, failures


def versions() -> dict:
    import onnx

    v = {"torch": torch.__version__, "onnx": onnx.__version__, "numpy": np.__version__}
    for mod in ("onnxscript", "onnxruntime", "transformers", "diffusers"):
        try:
            v[mod] = __import__(mod).__version__
        except Exception:  # noqa: BLE001
            v[mod] = None
    return v


def print_summary(entries: list[dict], skipped: list[dict]) -> None:
    """Markdown table of counted node types (Constant nodes left out), like shared/EXPORTS.md."""
    by_case = collections.OrderedDict()
    for e in entries:
        by_case.setdefault(e["name"], {})[f"{e['exporter']}{e['opset']}"] = format_counts(e["node_counts"])
    for s in skipped:
        by_case.setdefault(s["name"], {})[f"{s['exporter']}{s['opset']}"] = "not exported: " + s["reason"][:90]
    keys = [f"{e}{o}" for e, o in COMBOS]
    print("\nCounted node types per fixture (Constant nodes not shown):\n")
    print("| fixture | " + " | ".join(f"{e}, opset {o}" for e, o in COMBOS) + " |")
    print("|---" * (len(keys) + 1) + "|")
    for name, cols in by_case.items():
        print(f"| {name} | " + " | ".join(cols.get(k, "-").replace("|", "/") for k in keys) + " |")


# ---------------------------------------------------------------------------
# bundled example models (src/normrt/examples/, shipped as package data)
# ---------------------------------------------------------------------------
EXAMPLES_OUT = REPO / "src" / "normrt" / "examples"
EXAMPLE_OPSET = 17


class GNResBlock(nn.Module):
    """Diffusion-UNet-style resnet block: (GroupNorm -> SiLU -> Conv3x3) x 2, + residual."""

    def __init__(self, c, groups):
        super().__init__()
        self.norm1 = nn.GroupNorm(groups, c)
        self.conv1 = nn.Conv2d(c, c, 3, padding=1)
        self.norm2 = nn.GroupNorm(groups, c)
        self.conv2 = nn.Conv2d(c, c, 3, padding=1)

    def forward(self, x):
        h = self.conv1(F.silu(self.norm1(x)))
        h = self.conv2(F.silu(self.norm2(h)))
        return x + h


class GroupNormCNN(nn.Module):
    """Conv3x3 stem (3->32), resblock(32), stride-2 Conv3x3 (32->64), resblock(64),
    GroupNorm -> SiLU -> Conv3x3 (64->3); GroupNorm with 8/16 groups."""

    def __init__(self):
        super().__init__()
        self.stem = nn.Conv2d(3, 32, 3, padding=1)
        self.block1 = GNResBlock(32, 8)
        self.down = nn.Conv2d(32, 64, 3, stride=2, padding=1)
        self.block2 = GNResBlock(64, 16)
        self.norm_out = nn.GroupNorm(16, 64)
        self.conv_out = nn.Conv2d(64, 3, 3, padding=1)

    def forward(self, x):
        h = self.block1(self.stem(x))
        h = self.block2(self.down(h))
        return self.conv_out(F.silu(self.norm_out(h)))


EXAMPLES = [
    # (file stem, description, module factory, input name, input shape)
    ("groupnorm_cnn", "UNet-like CNN: Conv3x3 + GroupNorm + SiLU resblocks (32/64 channels)",
     GroupNormCNN, "x", (1, 3, 64, 64)),
    ("transformer_block", "pre-LN transformer block: LN -> attention -> +res -> LN -> MLP(GELU) -> +res",
     lambda: PreLNBlockEager(d=128, heads=4, mlp=512), "x", (1, 64, 128)),
]


def make_examples(out_dir: Path = EXAMPLES_OUT) -> int:
    """Export the bundled example models (legacy exporter, opset 17, static shapes, fixed seeds)
    and check normrt.InferenceSession and onnxruntime against torch."""
    import onnx

    out_dir.mkdir(parents=True, exist_ok=True)
    failures = []
    for stem, desc, factory, in_name, shape in EXAMPLES:
        path = out_dir / f"{stem}.onnx"
        torch.manual_seed(seed_for(stem))
        gen = torch.Generator().manual_seed(seed_for(stem))
        module = factory().eval()
        randomize_norms(module, gen)
        x = torch.randn(*shape, generator=gen)
        with torch.no_grad():
            want = module(x).numpy()
        with quiet(), torch.no_grad():
            torch.onnx.export(module, (x,), str(path), dynamo=False, opset_version=EXAMPLE_OPSET,
                              input_names=[in_name], output_names=["y"], do_constant_folding=True)
        model = onnx.load(str(path))
        model.doc_string = f"normrt bundled example: {desc}"
        onnx.save(model, str(path))
        onnx.checker.check_model(model)
        dims = [d.dim_value if d.HasField("dim_value") else None
                for d in model.graph.input[0].type.tensor_type.shape.dim]
        if dims != list(shape):
            failures.append(f"{stem}: input shape {dims} is not the static {list(shape)}")
        feeds = {in_name: x.numpy()}
        errs = {}
        try:
            import normrt
            errs["normrt"] = rel_err(normrt.InferenceSession(str(path)).run(None, feeds)[0], want)
        except ImportError:
            print("  (normrt not importable: not checked)")
        try:
            errs["onnxruntime"] = rel_err(run_ort(path, feeds)[0], want)
        except ImportError:
            print("  (onnxruntime not installed: not checked)")
        bad = {k: v for k, v in errs.items() if not v <= REL_TOL}
        if bad:
            failures.append(f"{stem}: rel. error over {REL_TOL}: {bad}")
        size = path.stat().st_size
        print(f"  {'ok' if not bad else 'MISMATCH':8s} {path.name:24s} {size / 1024:7.1f} KiB  "
              f"input {in_name}{list(shape)}  nodes: {format_counts(count_nodes(model.graph))}  "
              + "  ".join(f"rel.err {k} {v:.1e}" for k, v in errs.items()), flush=True)
    for f in failures:
        print("FAILURE: " + f)
    return 1 if failures else 0


SPELLINGS_OUT = DEFAULT_OUT / "spellings"
SPELLING_COMBOS = [("legacy", 17), ("dynamo", 18)]


def make_spellings(out_dir: Path, only: str, verbose: bool) -> int:
    """Hand-written normalizations of scripts/norm_spellings.py, both exporters, into out_dir/index.json."""
    sys.path.insert(0, str(Path(__file__).resolve().parent))
    import norm_spellings as ns

    out_dir.mkdir(parents=True, exist_ok=True)
    index_path = out_dir / "index.json"
    names = set(filter(None, only.split(",")))
    old = json.loads(index_path.read_text()) if names and index_path.exists() else {"fixtures": [], "skipped": []}
    entries = [e for e in old["fixtures"] if e["name"] not in names]
    skipped = [s for s in old["skipped"] if s["name"] not in names]
    failures = []
    for sp in ns.CASES:
        if names and sp.name not in names:
            continue
        print(f"[{sp.name}] {sp.source}", flush=True)

        def build(gen, sp=sp):
            return Built(ns.SpellingModule(sp, gen), sp.inputs(gen), ["y"])
        case = Case(sp.name, sp.source, build, tags=["spelling"])
        e, s, f = make_case(case, out_dir, verbose, combos=SPELLING_COMBOS)
        for entry in e:
            entry["expect"] = sp.expect
            del entry["torch"], entry["max_rel_err_onnxruntime"]
        entries += e
        skipped += s
        failures += f
    order = {sp.name: i for i, sp in enumerate(ns.CASES)}
    entries.sort(key=lambda e: (order.get(e["name"], 1 << 30), e["exporter"]))
    index_path.write_text(json.dumps({"generator": "scripts/make_fixtures.py --spellings",
                                      "versions": versions(), "fixtures": entries, "skipped": skipped},
                                     indent=1) + "\n")
    total = sum(p.stat().st_size for p in out_dir.iterdir() if p.is_file())
    print(f"{len(entries)} spelling fixtures, {len(skipped)} not exported, {total / 2**10:.0f} KiB")
    for f in failures:
        print("FAILURE " + f)
    return 1 if failures else 0


# ---------------------------------------------------------------------------
# half-precision fixtures (tests/data/half/, their own index: the float32 fixture tests
# compare with 1e-4 tolerances that half models do not meet)
# ---------------------------------------------------------------------------
HALF_OUT = DEFAULT_OUT / "half"
# |normrt - reference| <= HALF_TOL_ULPS * eps(dtype) * max(|reference|, 1), eps = 2^-10 (float16),
# 2^-7 (bfloat16): each op of a half model rounds to half, a few roundings deep
HALF_TOL_ULPS = 4
HALF_REFERENCE = "torch in float32 on the half weights and inputs (the half model's exact value)"


class ConvGNLN(nn.Module):
    """issue 11's model: Conv3x3 (3 -> 8) -> GroupNorm(4, 8) -> SiLU -> permute to NHWC -> LayerNorm(8)."""

    def __init__(self, c=8, groups=4):
        super().__init__()
        self.conv = nn.Conv2d(3, c, 3, padding=1)
        self.gn = nn.GroupNorm(groups, c)
        self.ln = nn.LayerNorm(c)

    def forward(self, x):
        return self.ln(F.silu(self.gn(self.conv(x))).permute(0, 2, 3, 1))


class GroupNorm32(nn.GroupNorm):
    """guided-diffusion / LDM's GroupNorm32: the norm in float32 inside a half model."""

    def forward(self, x):
        return super().forward(x.float()).type(x.dtype)


class FP32LayerNorm(nn.LayerNorm):
    """diffusers' FP32LayerNorm: F.layer_norm on float32 copies of x and the weights."""

    def forward(self, x):
        return F.layer_norm(x.float(), self.normalized_shape, self.weight.float(), self.bias.float(),
                            self.eps).to(x.dtype)


class LlamaBlock(nn.Module):
    """LLaMA decoder block: RMSNorm (upcast to float32, weight after the down cast) -> attention
    -> +res -> RMSNorm -> SwiGLU MLP -> +res."""

    def __init__(self, d=32, heads=4, mlp=64):
        super().__init__()
        self.norm1, self.norm2 = RMSNormLlama(d), RMSNormLlama(d)
        self.q, self.k, self.v, self.o = (nn.Linear(d, d, bias=False) for _ in range(4))
        self.gate, self.up = nn.Linear(d, mlp, bias=False), nn.Linear(d, mlp, bias=False)
        self.down = nn.Linear(mlp, d, bias=False)
        self.heads = heads

    def forward(self, x):
        b, t, d = x.shape
        h = self.norm1(x)
        q, k, v = (p(h).view(b, t, self.heads, d // self.heads).transpose(1, 2) for p in (self.q, self.k, self.v))
        a = F.scaled_dot_product_attention(q, k, v, is_causal=True).transpose(1, 2).reshape(b, t, d)
        x = x + self.o(a)
        h = self.norm2(x)
        return x + self.down(F.silu(self.gate(h)) * self.up(h))


class MixedPrecisionNet(nn.Module):
    """A half model computing its norms in float32 between Casts, as mixed-precision code writes
    them: Conv -> GroupNorm32 -> SiLU -> Conv, tokens -> FP32LayerNorm -> Linear -> LLaMA RMSNorm."""

    def __init__(self, c=16):
        super().__init__()
        self.conv1 = nn.Conv2d(4, c, 3, padding=1)
        self.gn = GroupNorm32(4, c)
        self.conv2 = nn.Conv2d(c, c, 3, padding=1)
        self.ln = FP32LayerNorm(c)
        self.fc = nn.Linear(c, c)
        self.rms = RMSNormLlama(c)

    def forward(self, x):
        h = self.conv2(F.silu(self.gn(self.conv1(x))))
        t = h.flatten(2).transpose(1, 2)
        return self.rms(self.fc(self.ln(t)))


@dataclass
class HalfCase:
    name: str
    description: str
    module: Callable[[], nn.Module]
    inputs: dict                  # input name -> (shape, scale, shift)
    dtypes: tuple = ("float16", "bfloat16")
    combos: tuple = (("legacy", 17), ("dynamo", 18))
    dynamic: dict = None          # legacy exporter's dynamic_axes


HALF_CASES = [
    HalfCase("conv_gn_ln", "Conv3x3 -> GroupNorm -> SiLU -> permute -> LayerNorm (issue 11; legacy: any HxW)",
             ConvGNLN, {"x": ((1, 3, 24, 24), 1.0, 0.0)},
             dynamic={"x": {2: "height", 3: "width"}, "y": {1: "height", 2: "width"}}),
    HalfCase("preln_block", "pre-LN transformer block: LN -> SDPA attention -> +res -> LN -> MLP(GELU) -> +res",
             PreLNBlock, {"x": ((2, 8, 32), 1.0, 0.0)}, dtypes=("float16",)),
    HalfCase("llama_block", "LLaMA block: RMSNorm in float32 (weight after the down cast) -> causal "
             "attention -> +res -> RMSNorm -> SwiGLU -> +res", LlamaBlock, {"x": ((2, 8, 32), 1.0, 0.0)},
             dtypes=("float16",)),
    HalfCase("mixed_fp32_norms", "half model with float32 norms between Casts (GroupNorm32, FP32LayerNorm, "
             "LLaMA RMSNorm): Cast islands", MixedPrecisionNet, {"x": ((1, 4, 8, 8), 1.0, 0.0)}),
]
TORCH_DTYPES = {"float16": torch.float16, "bfloat16": torch.bfloat16}


def _half_numpy(t):
    """A torch half tensor as numpy (bfloat16 as ml_dtypes.bfloat16, the dtype onnx uses)."""
    if t.dtype == torch.bfloat16:
        import ml_dtypes
        return t.view(torch.int16).numpy().view(ml_dtypes.bfloat16)
    return t.numpy()


def half_ulps(got, want, dtype: str) -> float:
    """max |got - want| / (eps(dtype) * max(|want|, 1)): the unit of HALF_TOL_ULPS."""
    eps = {"float16": 2.0 ** -10, "bfloat16": 2.0 ** -7}[dtype]
    got, want = np.asarray(got, np.float64), np.asarray(want, np.float64)
    if got.shape != want.shape:
        return math.inf
    return float(np.max(np.abs(got - want) / (eps * np.maximum(np.abs(want), 1.0))))


def make_half(out_dir: Path, only: str, verbose: bool) -> int:
    """Export the half-precision fixtures: each case in float16 / bfloat16 by each exporter, with
    the inputs (in half) and the reference (HALF_REFERENCE, float32) in the .npz; checked against
    normrt (HALF_TOL_ULPS) and, for the record, torch's own half result and onnxruntime."""
    import copy

    import onnx

    out_dir.mkdir(parents=True, exist_ok=True)
    entries, failures = [], []
    for case in HALF_CASES:
        if only and case.name not in only.split(","):
            continue
        for dtype in case.dtypes:
            torch.manual_seed(seed_for(case.name))
            gen = torch.Generator().manual_seed(seed_for(case.name))
            module = case.module().eval()
            randomize_norms(module, gen)
            module = module.to(TORCH_DTYPES[dtype])
            for m in module.modules():
                if isinstance(m, GroupNorm32):
                    m.float()       # LDM's convert_to_fp16 leaves the norms' weights in float32
            inputs = {k: rn(gen, *shape, scale=scale, shift=shift).to(TORCH_DTYPES[dtype])
                      for k, (shape, scale, shift) in case.inputs.items()}
            with torch.no_grad():
                want = copy.deepcopy(module).float()(*(v.float() for v in inputs.values())).numpy()
                torch_half = module(*inputs.values()).float().numpy()
            feeds = {k: _half_numpy(v) for k, v in inputs.items()}
            for exporter, opset in case.combos:
                stem = f"{case.name}_{dtype}__{exporter}{opset}"
                path, npz = out_dir / f"{stem}.onnx", out_dir / f"{stem}.npz"
                try:
                    with quiet(), torch.no_grad():
                        if exporter == "legacy":
                            torch.onnx.export(module, tuple(inputs.values()), str(path), dynamo=False,
                                              opset_version=opset, input_names=list(inputs), output_names=["y"],
                                              dynamic_axes=case.dynamic)
                        else:
                            export_one(Built(module, inputs, ["y"]), exporter, opset, path)
                except Exception as exc:  # noqa: BLE001 - an exporter that cannot do it is a skip
                    if verbose:
                        traceback.print_exc()
                    print(f"  SKIP {stem}: {short_reason(exc)}", flush=True)
                    continue
                model = onnx.load(str(path))
                onnx.checker.check_model(model)
                np.savez(npz, **{f"input:{k}": v for k, v in feeds.items()}, **{"output:y": want})
                errs = {"torch_half": half_ulps(torch_half, want, dtype)}
                try:
                    errs["onnxruntime"] = half_ulps(run_ort(path, feeds)[0].astype(np.float64), want, dtype)
                except Exception as exc:  # noqa: BLE001 - ORT lacks some half kernels on CPU
                    errs["onnxruntime"] = None
                    print(f"    (onnxruntime: {short_reason(exc)[:100]})")
                try:
                    import normrt
                    errs["normrt"] = half_ulps(normrt.InferenceSession(str(path)).run(None, feeds)[0]
                                               .astype(np.float64), want, dtype)
                except ImportError:
                    print("    (normrt not importable: not checked)")
                bad = errs.get("normrt", 0.0) > HALF_TOL_ULPS
                if bad:
                    failures.append(f"{stem}: normrt {errs['normrt']:.2f} ulps > {HALF_TOL_ULPS}")
                size = path.stat().st_size + npz.stat().st_size
                print(f"  {'MISMATCH' if bad else 'ok':8s} {stem:40s} {size / 1024:6.1f} KiB  ulps: "
                      + "  ".join(f"{k} {v:.2f}" for k, v in errs.items() if v is not None)
                      + f"  nodes: {format_counts(count_nodes(model.graph))}", flush=True)
                entries.append({
                    "file": path.name, "data": npz.name, "name": case.name, "module": case.description,
                    "dtype": dtype, "exporter": exporter, "opset": opset,
                    "inputs": [{"name": k, "shape": list(v.shape), "dtype": dtype} for k, v in feeds.items()],
                    "node_counts": dict(sorted(count_nodes(model.graph).items())),
                    "errors_ulps": errs,
                })
    index_path = out_dir / "fixtures.json"
    old = json.loads(index_path.read_text())["fixtures"] if only and index_path.exists() else []
    names = {e["file"] for e in entries}
    index = {
        "generator": "scripts/make_fixtures.py --half",
        "reference": HALF_REFERENCE + ", stored as float32 under 'output:y'; inputs in half under 'input:<name>' "
                     "(numpy stores bfloat16 as raw 2-byte values: view them as ml_dtypes.bfloat16)",
        "tolerance": f"max |y - reference| / (eps(dtype) * max(|reference|, 1)) <= {HALF_TOL_ULPS} "
                     f"(eps 2^-10 float16, 2^-7 bfloat16); errors_ulps records normrt, torch's own half "
                     f"result and onnxruntime in that unit",
        "versions": versions(),
        "fixtures": sorted([e for e in old if e["file"] not in names] + entries, key=lambda e: e["file"]),
    }
    index_path.write_text(json.dumps(index, indent=1) + "\n")
    total = sum(p.stat().st_size for p in out_dir.iterdir() if p.is_file())
    print(f"{len(index['fixtures'])} half fixtures, {out_dir} holds {total / 1024:.0f} KiB")
    for f in failures:
        print("FAILURE: " + f)
    return 1 if failures else 0


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--out", type=Path, default=DEFAULT_OUT, help="output folder (default tests/data)")
    ap.add_argument("--only", default="", help="comma-separated case names to rebuild (merged into the index)")
    ap.add_argument("--list", action="store_true", help="list the cases and exit")
    ap.add_argument("-v", "--verbose", action="store_true", help="print exporter tracebacks")
    ap.add_argument("--examples", action="store_true",
                    help="build only the bundled example models into src/normrt/examples/ (or --out)")
    ap.add_argument("--half", action="store_true",
                    help="build only the half-precision fixtures into tests/data/half/ (or --out); --only selects some")
    ap.add_argument("--spellings", action="store_true",
                    help="build only the hand-written normalizations (scripts/norm_spellings.py) "
                         "into tests/data/spellings/ (or --out); --only selects some")
    args = ap.parse_args(argv)

    if args.list:
        for c in CASES:
            print(f"{c.name:30s} {c.description}")
        return 0

    for name in ("torch.onnx", "onnxscript", "onnx_ir", "transformers", "diffusers"):
        logging.getLogger(name).setLevel(logging.ERROR)
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    torch.set_num_threads(max(1, min(2, os.cpu_count() or 1)))

    if torch.__version__.split("+")[0] != "2.13.0":
        print(f"warning: fixtures are meant to come from torch 2.13.0, this is {torch.__version__}", file=sys.stderr)

    if args.examples:
        out = args.out if args.out != DEFAULT_OUT else EXAMPLES_OUT
        return make_examples(out)
    if args.half:
        return make_half(args.out if args.out != DEFAULT_OUT else HALF_OUT, args.only, args.verbose)
    if args.spellings:
        return make_spellings(args.out if args.out != DEFAULT_OUT else SPELLINGS_OUT, args.only, args.verbose)

    out_dir = args.out
    out_dir.mkdir(parents=True, exist_ok=True)
    index_path = out_dir / "fixtures.json"
    selected = [c for c in CASES if not args.only or c.name in args.only.split(",")]
    unknown = set(filter(None, args.only.split(","))) - {c.name for c in CASES}
    if unknown:
        ap.error(f"unknown case(s): {', '.join(sorted(unknown))}")

    old_entries, old_skipped = [], []
    if args.only and index_path.exists():
        old = json.loads(index_path.read_text())
        names = {c.name for c in selected}
        old_entries = [e for e in old.get("fixtures", []) if e["name"] not in names]
        old_skipped = [s for s in old.get("skipped", []) if s["name"] not in names]
    elif not args.only:
        # full rebuild: remove fixtures of cases that no longer exist
        for p in list(out_dir.glob("*__*.onnx")) + list(out_dir.glob("*__*.npz")) + list(out_dir.glob("*.onnx.data")):
            p.unlink()

    entries, skipped, failures = [], [], []
    t_start = time.time()
    for case in selected:
        print(f"[{case.name}] {case.description}", flush=True)
        try:
            e, s, f = make_case(case, out_dir, args.verbose)
        except Exception as exc:  # noqa: BLE001 - building the torch module itself failed
            traceback.print_exc()
            failures.append(f"{case.name}: {short_reason(exc)}")
            continue
        entries += e
        skipped += s
        failures += f

    order = {c.name: i for i, c in enumerate(CASES)}
    combo_order = {f"{e}{o}": i for i, (e, o) in enumerate(COMBOS)}

    def key(e):
        return (order.get(e["name"], 1 << 30), combo_order[f"{e['exporter']}{e['opset']}"])

    all_entries = sorted(old_entries + entries, key=key)
    all_skipped = sorted(old_skipped + skipped, key=key)
    index = {
        "generator": "scripts/make_fixtures.py",
        "layout": {
            "onnx": "<name>__<exporter><opset>.onnx, weights embedded",
            "npz": "inputs under 'input:<onnx input name>', torch outputs under 'output:<onnx output name>'",
            "tolerance": "max abs err <= 1e-4 * max(1, max|torch output|)",
        },
        "versions": versions(),
        "fixtures": all_entries,
        "skipped": all_skipped,
    }
    index_path.write_text(json.dumps(index, indent=1) + "\n")

    print_summary(all_entries, all_skipped)
    total = sum(p.stat().st_size for p in out_dir.iterdir() if p.is_file())
    print(f"\n{len(all_entries)} fixtures, {len(all_skipped)} combinations not exported, "
          f"{out_dir} holds {total / 2**20:.2f} MiB; took {time.time() - t_start:.0f}s")
    if failures:
        print("\nFAILURES:")
        for f in failures:
            print("  " + f)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())

"""Normalizations written by hand the way well-known model code writes them.

Each case is a tiny module whose forward is the normalization as its source
repository spells it (weights random, not 1/0), with what normrt should make of
it: `expect` maps a normrt op to its count in the optimized graph (a list: any of them), or
{"refused": text} for a look-alike or a layout no kernel takes (the report must
give a reason containing the text); "ops" lists the whole optimized graph's op types
where that is the point (an affine folded into a Conv). `python scripts/make_fixtures.py --spellings` exports each with the
legacy (opset 17) and dynamo (opset 18) exporters into tests/data/spellings/;
tests/onnx/test_spelling_fixtures.py checks them.
"""
from dataclasses import dataclass, field
from typing import Callable

import torch
import torch.nn as nn
import torch.nn.functional as F

N, C, H, W = 2, 8, 4, 4      # images
B, T, D = 2, 5, 16           # sequences
G = 4                        # groups


def _param(gen, *shape, base=1.0):
    return nn.Parameter(base + 0.3 * torch.randn(*shape, generator=gen))


@dataclass
class Spelling:
    name: str
    source: str                      # where this spelling comes from
    forward: Callable                # forward(self, *inputs)
    inputs: Callable                 # gen -> dict of input tensors
    params: dict = field(default_factory=dict)    # name -> shape of a random parameter
    expect: object = field(default_factory=dict)   # a dict, or a list of acceptable dicts


def image(gen):
    return {"x": torch.randn(N, C, H, W, generator=gen) * 2 + 0.5}


def seq(gen):
    return {"x": torch.randn(B, T, D, generator=gen) * 2 + 0.5}


def seq_and_cond(gen):
    return {"x": torch.randn(B, T, D, generator=gen), "c": torch.randn(B, D, generator=gen)}


def image_and_style(gen):
    return {"x": torch.randn(N, C, H, W, generator=gen), "s": torch.randn(N, C, H, W, generator=gen) * 2 + 1}


def image_and_gamma(gen):
    return {"x": torch.randn(N, C, H, W, generator=gen), "g": torch.randn(N, C, generator=gen),
            "b": torch.randn(N, C, generator=gen)}


# -- forwards (self holds the parameters) -------------------------------------------------

def convnext_layernorm2d(self, x):       # ConvNeXt LayerNorm(data_format="channels_first")
    u = x.mean(1, keepdim=True)
    s = (x - u).pow(2).mean(1, keepdim=True)
    x = (x - u) / torch.sqrt(s + 1e-6)
    return self.w[:, None, None] * x + self.b[:, None, None]


def sam_layernorm2d(self, x):            # segment-anything LayerNorm2d
    u = x.mean(1, keepdim=True)
    s = (x - u).pow(2).mean(1, keepdim=True)
    x = (x - u) / torch.sqrt(s + 1e-6)
    return self.w[:, None, None] * x + self.b[:, None, None]


def convnext_channels_last(self, x):     # ConvNeXt LayerNorm(data_format="channels_last")
    return F.layer_norm(x, (D,), self.w, self.b, 1e-6)


def t5_rmsnorm(self, x):                 # transformers T5LayerNorm
    variance = x.to(torch.float32).pow(2).mean(-1, keepdim=True)
    x = x * torch.rsqrt(variance + 1e-6)
    return self.w * x


def llama_rmsnorm(self, x):              # transformers LlamaRMSNorm
    dtype = x.dtype
    h = x.to(torch.float32)
    variance = h.pow(2).mean(-1, keepdim=True)
    h = h * torch.rsqrt(variance + 1e-6)
    return self.w * h.to(dtype)


def gemma_rmsnorm(self, x):              # transformers GemmaRMSNorm: (1 + w)
    out = x.float() * torch.rsqrt(x.float().pow(2).mean(-1, keepdim=True) + 1e-6)
    out = out * (1.0 + self.w.float())
    return out.type_as(x)


def mamba_rmsnorm(self, x):              # mamba_ssm RMSNorm reference
    return x * torch.rsqrt(x.pow(2).mean(-1, keepdim=True) + 1e-5) * self.w


def old_t5_div(self, x):                 # x / sqrt(mean(x²) + eps) * w
    return x / torch.sqrt(x.pow(2).mean(-1, keepdim=True) + 1e-6) * self.w


def stylegan_pixelnorm(self, x):         # StyleGAN2 PixelNorm
    return x * torch.rsqrt(torch.mean(x ** 2, dim=1, keepdim=True) + 1e-8)


def progan_pixelnorm(self, x):           # ProGAN pixel-wise feature vector normalization
    return x / torch.sqrt(torch.mean(x ** 2, dim=1, keepdim=True) + 1e-8)


def var_mean_layernorm(self, h):         # torch.var_mean LayerNorm
    var, mean = torch.var_mean(h, -1, unbiased=False, keepdim=True)
    return (h - mean) / torch.sqrt(var + 1e-5) * self.w + self.b


def sum_over_n_layernorm(self, h):       # the mean written as a sum over n
    mean = h.sum(-1, keepdim=True) / D
    var = ((h - mean) ** 2).sum(-1, keepdim=True) / D
    return self.w * ((h - mean) / (var + 1e-5).sqrt()) + self.b


def bert_tf_layernorm(self, x):          # BertLayerNorm of the TF-style port (pytorch-pretrained-bert)
    u = x.mean(-1, keepdim=True)
    s = (x - u).pow(2).mean(-1, keepdim=True)
    x = (x - u) / torch.sqrt(s + 1e-12)
    return self.w * x + self.b


def layernorm_rsqrt(self, x):            # (x - u) * rsqrt(var + eps) * w + b
    u = x.mean(-1, keepdim=True)
    v = ((x - u) * (x - u)).mean(-1, keepdim=True)
    return (x - u) * torch.rsqrt(v + 1e-5) * self.w + self.b


def layernorm_no_keepdim(self, x):       # statistics without keepdim, unsqueezed back
    u = x.mean(-1)
    v = (x - u.unsqueeze(-1)).pow(2).mean(-1)
    return (x - u[..., None]) / torch.sqrt(v[..., None] + 1e-5) * self.w + self.b


def layernorm_two_axes(self, x):         # normalized over the last two axes
    u = x.mean((-2, -1), keepdim=True)
    v = (x - u).pow(2).mean((-2, -1), keepdim=True)
    return (x - u) / torch.sqrt(v + 1e-5)


def layernorm_var_method(self, x):       # x.var(unbiased=False)
    u = x.mean(-1, keepdim=True)
    v = x.var(-1, unbiased=False, keepdim=True)
    return (x - u) / torch.sqrt(v + 1e-5) * self.w + self.b


def clip_fp32_layernorm(self, x):        # CLIP LayerNorm subclass: computed in float32, cast back
    orig = x.dtype
    ret = F.layer_norm(x.type(torch.float32), (D,), self.w, self.b, 1e-5)
    return ret.type(orig)


def dit_adaln(self, x, c):               # DiT: LayerNorm without affine, then modulate
    shift, scale = (c @ self.proj).chunk(2, dim=-1)
    h = F.layer_norm(x, (D,), None, None, 1e-6)
    return h * (1 + scale.unsqueeze(1)) + shift.unsqueeze(1)


def dit_adaln_hand(self, x, c):          # the same with the LayerNorm written out
    shift, scale = (c @ self.proj).chunk(2, dim=-1)
    u = x.mean(-1, keepdim=True)
    v = (x - u).pow(2).mean(-1, keepdim=True)
    h = (x - u) / torch.sqrt(v + 1e-6)
    return h * (1 + scale.unsqueeze(1)) + shift.unsqueeze(1)


def clip_l2(self, x):                    # CLIP: features / features.norm(dim=-1, keepdim=True)
    return x / x.norm(dim=-1, keepdim=True)


def lucidrains_rmsnorm(self, x):         # F.normalize(x, dim=-1) * sqrt(d) * gamma
    return F.normalize(x, dim=-1) * (D ** 0.5) * self.w


def qk_norm(self, x):                    # F.normalize on queries
    return F.normalize(x, dim=-1)


def hand_groupnorm(self, x):             # GroupNorm by hand: view(N, G, -1), mean, var
    n, c, h, w = x.shape
    g = x.view(n, G, -1)
    m = g.mean(-1, keepdim=True)
    v = g.var(-1, unbiased=False, keepdim=True)
    g = (g - m) / (v + 1e-5).sqrt()
    x = g.view(n, c, h, w)
    return F.silu(x * self.w.view(1, C, 1, 1) + self.b.view(1, C, 1, 1))


def hand_instancenorm(self, x):          # InstanceNorm by hand, then ReLU
    m = x.mean((2, 3), keepdim=True)
    v = ((x - m) ** 2).mean((2, 3), keepdim=True)
    y = (x - m) / torch.sqrt(v + 1e-5)
    return F.relu(y * self.w.view(1, C, 1, 1) + self.b.view(1, C, 1, 1))


def instancenorm_var_mean(self, x):      # torch.var_mean over the spatial axes
    v, m = torch.var_mean(x, dim=(2, 3), unbiased=False, keepdim=True)
    return (x - m) * torch.rsqrt(v + 1e-5)


def cond_instancenorm_hand(self, x, g, b):   # conditional IN: per-sample gamma/beta at run time
    m = x.mean((2, 3), keepdim=True)
    v = ((x - m) ** 2).mean((2, 3), keepdim=True)
    y = (x - m) / torch.sqrt(v + 1e-5)
    return y * g[:, :, None, None] + b[:, :, None, None]


def adain_reassociated(self, x, s):      # AdaIN: sy * (x - mx) / sx + my
    mx = x.mean((2, 3), keepdim=True)
    sx = torch.sqrt(((x - mx) ** 2).mean((2, 3), keepdim=True) + 1e-5)
    my = s.mean((2, 3), keepdim=True)
    sy = torch.sqrt(((s - my) ** 2).mean((2, 3), keepdim=True) + 1e-5)
    return sy * (x - mx) / sx + my


def torchvision_normalize_conv(self, x):     # torchvision Normalize in front of the first Conv
    mean = torch.tensor([0.485, 0.456, 0.406, 0.5, 0.5, 0.5, 0.5, 0.5]).view(1, C, 1, 1)
    std = torch.tensor([0.229, 0.224, 0.225, 0.25, 0.25, 0.25, 0.25, 0.25]).view(1, C, 1, 1)
    return self.conv((x - mean) / std)


def eps_outside_root(self, x):           # (x - u) / (std + eps): not a LayerNorm
    u = x.mean(-1, keepdim=True)
    s = (x - u).pow(2).mean(-1, keepdim=True).sqrt()
    return (x - u) / (s + 1e-5)


def scale_without_centring(self, x):     # x / std(x): not a LayerNorm
    u = x.mean(-1, keepdim=True)
    v = (x - u).pow(2).mean(-1, keepdim=True)
    return x / torch.sqrt(v + 1e-5)


def mean_var_axes_differ(self, x):       # mean over the last axis, variance over two
    u = x.mean(-1, keepdim=True)
    v = (x - u).pow(2).mean((-2, -1), keepdim=True)
    return (x - u) / torch.sqrt(v + 1e-5)


CASES = [
    Spelling("convnext_layernorm2d", "ConvNeXt LayerNorm channels_first", convnext_layernorm2d, image,
             {"w": (C,), "b": (C,)}, {"ChannelNorm": 1}),
    Spelling("sam_layernorm2d", "segment-anything LayerNorm2d", sam_layernorm2d, image,
             {"w": (C,), "b": (C,)}, {"ChannelNorm": 1}),
    Spelling("convnext_channels_last", "ConvNeXt LayerNorm channels_last (F.layer_norm)", convnext_channels_last,
             seq, {"w": (D,), "b": (D,)}, {"LayerNorm": 1}),
    Spelling("t5_rmsnorm", "transformers T5LayerNorm", t5_rmsnorm, seq, {"w": (D,)}, {"RMSNorm": 1}),
    Spelling("llama_rmsnorm", "transformers LlamaRMSNorm", llama_rmsnorm, seq, {"w": (D,)}, {"RMSNorm": 1}),
    Spelling("gemma_rmsnorm", "transformers GemmaRMSNorm (1 + w)", gemma_rmsnorm, seq, {"w": (D,)},
             {"RMSNorm": 1}),
    Spelling("mamba_rmsnorm", "mamba_ssm RMSNorm", mamba_rmsnorm, seq, {"w": (D,)}, {"RMSNorm": 1}),
    Spelling("old_t5_div", "T5 RMSNorm with a division", old_t5_div, seq, {"w": (D,)}, {"RMSNorm": 1}),
    Spelling("stylegan_pixelnorm", "StyleGAN2 PixelNorm", stylegan_pixelnorm, image, {},
             {"ChannelNorm": 1}),
    Spelling("progan_pixelnorm", "ProGAN PixelNorm", progan_pixelnorm, image, {}, {"ChannelNorm": 1}),
    Spelling("var_mean_layernorm", "torch.var_mean LayerNorm", var_mean_layernorm, seq,
             {"w": (D,), "b": (D,)}, {"LayerNorm": 1}),
    Spelling("sum_over_n_layernorm", "LayerNorm with sum / n", sum_over_n_layernorm, seq,
             {"w": (D,), "b": (D,)}, {"LayerNorm": 1}),
    # the dynamo exporter drops the + 1e-12 (no float32 effect here): eps 0, where LayerNorm and
    # ONNX MVN are the same function and mvn_decomposed takes it first
    Spelling("bert_tf_layernorm", "pytorch-pretrained-bert BertLayerNorm", bert_tf_layernorm, seq,
             {"w": (D,), "b": (D,)}, [{"LayerNorm": 1}, {"MeanVarianceNorm": 1}]),
    Spelling("layernorm_rsqrt", "LayerNorm with rsqrt and (x-u)*(x-u)", layernorm_rsqrt, seq,
             {"w": (D,), "b": (D,)}, {"LayerNorm": 1}),
    Spelling("layernorm_no_keepdim", "LayerNorm statistics without keepdim", layernorm_no_keepdim, seq,
             {"w": (D,), "b": (D,)}, {"LayerNorm": 1}),
    Spelling("layernorm_two_axes", "LayerNorm over the last two axes", layernorm_two_axes, seq, {},
             {"LayerNorm": 1}),
    Spelling("layernorm_var_method", "LayerNorm with x.var(unbiased=False)", layernorm_var_method, seq,
             {"w": (D,), "b": (D,)}, {"LayerNorm": 1}),
    Spelling("clip_fp32_layernorm", "CLIP LayerNorm in float32", clip_fp32_layernorm, seq,
             {"w": (D,), "b": (D,)}, {"LayerNorm": 1}),
    Spelling("dit_adaln", "DiT adaLN modulate", dit_adaln, seq_and_cond, {"proj": (D, 2 * D)}, {"LayerNorm": 1}),
    Spelling("dit_adaln_hand", "DiT adaLN, LayerNorm written out", dit_adaln_hand, seq_and_cond,
             {"proj": (D, 2 * D)}, {"LayerNorm": 1}),
    Spelling("clip_l2", "CLIP h / h.norm(dim=-1, keepdim=True)", clip_l2, seq, {}, {"LpNorm": 1}),
    Spelling("lucidrains_rmsnorm", "F.normalize RMSNorm (x-transformers)", lucidrains_rmsnorm, seq, {"w": (D,)},
             {"LpNorm": 1}),
    Spelling("qk_norm", "F.normalize on queries", qk_norm, seq, {}, {"LpNorm": 1}),
    Spelling("hand_groupnorm", "GroupNorm by hand + SiLU", hand_groupnorm, image, {"w": (C,), "b": (C,)},
             {"GroupNorm": 1}),
    Spelling("hand_instancenorm", "InstanceNorm by hand + ReLU", hand_instancenorm, image,
             {"w": (C,), "b": (C,)}, {"InstanceNorm": 1}),
    Spelling("instancenorm_var_mean", "InstanceNorm with torch.var_mean", instancenorm_var_mean, image, {},
             {"InstanceNorm": 1}),
    Spelling("cond_instancenorm_hand", "conditional InstanceNorm, per-sample gamma/beta", cond_instancenorm_hand,
             image_and_gamma, {}, {"InstanceNorm": 1, "ops": ["InstanceNorm"]}),
    Spelling("adain_reassociated", "AdaIN as sy * (x - mx) / sx + my", adain_reassociated, image_and_style, {},
             {"AdaIN": 1}),
    Spelling("torchvision_normalize_conv", "torchvision Normalize before a Conv", torchvision_normalize_conv,
             image, {}, {"ops": ["Conv"]}),
    Spelling("eps_outside_root", "(x - u) / (std + eps): ONNX MVN's function", eps_outside_root, seq, {},
             {"MeanVarianceNorm": 1}),
    Spelling("scale_without_centring", "x / std look-alike", scale_without_centring, seq, {},
             {"refused": "without centring"}),
    Spelling("mean_var_axes_differ", "mean and variance over different axes", mean_var_axes_differ, seq, {},
             {"refused": "do not line up"}),
]


class SpellingModule(nn.Module):
    def __init__(self, case, gen):
        super().__init__()
        self.case = case
        for pname, shape in case.params.items():
            setattr(self, pname, _param(gen, *shape, base=0.0 if pname in ("b", "proj") else 1.0))
        if case.name == "torchvision_normalize_conv":
            self.conv = nn.Conv2d(C, 4, 3)        # no padding: folding the affine into it is exact

    def forward(self, *inputs):
        return self.case.forward(self, *inputs)

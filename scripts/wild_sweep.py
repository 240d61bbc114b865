"""Sweep normrt over small torch models written the way users write them, exported both ways.

A developer tool, not a unit test: it plays the reviewer who brings models nobody here wrote.
Every case is a tiny torch module whose normalization is spelled as in user code (by hand,
with torch.nn layers, with casts, permutes, look-alikes), inside typical neighbours (Conv or
Linear before, SiLU/GELU/ReLU/residual after), at generated shapes (odd channel counts, S=1,
D=7, batch 1 and >1, 3-D and 5-D). Each is exported with the legacy exporter
(`dynamo=False`) at opsets 13 and 17 and with the dynamo exporter, optionally also after
`.half()`, then run by `normrt.InferenceSession` and onnxruntime on the same random inputs.

Per export the table gives:
  status    ok, or where it broke (export / normrt load / normrt run / ort)
  err       max |normrt - onnxruntime| / max(1, max |onnxruntime|) (float32 ~1e-6; half ~1e-3)
  norms     normalizations normrt put on a kernel (or folded into weights) / those the case holds
  left      norm-shaped ops still in the optimized graph (a norm left decomposed or unfused)
  fallback  ops running on onnx.reference
and a "!" marks a row to triage (error, err over the dtype's tolerance, a norm not on a kernel,
a look-alike rewritten, a fallback).

    python scripts/wild_sweep.py                     # every case, legacy13/legacy17/dynamo
    python scripts/wild_sweep.py --half --only rms   # cases whose name contains "rms", also .half()
    python scripts/wild_sweep.py --dynamic           # also a symbolic batch axis (dynamic_axes / dynamic_shapes)
    python scripts/wild_sweep.py --keep /tmp/wild    # keep the exported models for `normrt inspect`
"""
import argparse
import contextlib
import io
import math
import os
import sys
import tempfile
import time
import warnings
from dataclasses import dataclass

import numpy as np
import torch
import torch.nn as nn
import torch.nn.functional as F

EXPORTS = [("legacy", 13), ("legacy", 17), ("dynamo", 18)]
# ops that, left in an optimized graph, mean some normalization (or part of one) was not fused
NORM_SHAPED_OPS = {"ReduceMean", "ReduceSumSquare", "ReduceL2", "ReduceL1", "ReduceSum", "Sqrt",
                   "Reciprocal", "Pow", "LayerNormalization", "InstanceNormalization",
                   "BatchNormalization", "GroupNormalization", "LpNormalization", "LRN",
                   "MeanVarianceNormalization", "RMSNormalization"}
TOLERANCE = {torch.float32: 1e-4, torch.float16: 1e-2}


@dataclass
class Case:
    name: str
    module: nn.Module
    inputs: tuple            # example tensors (float32)
    norms: int               # normalizations a complete runtime puts on kernels (0: a look-alike)


# -- the normalizations, written as user code writes them ---------------------------------------

class Fn(nn.Module):
    """forward(x, ...) = fn(self, x, ...); parameters given by shape get random values."""

    def __init__(self, fn, gen, **params):
        super().__init__()
        self.fn = fn
        for name, shape in params.items():
            setattr(self, name, nn.Parameter(1 + 0.3 * torch.randn(*shape, generator=gen)))

    def forward(self, *xs):
        return self.fn(self, *xs)


def ln_var(m, x, eps=1e-5):
    mu = x.mean(-1, keepdim=True)
    return (x - mu) / torch.sqrt(x.var(-1, keepdim=True, unbiased=False) + eps) * m.w + m.b


def ln_sub_div(m, x, eps=1e-6):
    mu = x.mean(-1, keepdim=True)
    return x.sub(mu).div((x.sub(mu).pow(2).mean(-1, keepdim=True) + eps).sqrt()) * m.w + m.b


def ln_rsqrt(m, x, eps=1e-12):
    xc = x - x.mean(-1, keepdim=True)
    return m.w * (xc * torch.rsqrt((xc * xc).mean(-1, keepdim=True) + eps)) + m.b


def ln_var_mean(m, x):
    var, mu = torch.var_mean(x, -1, keepdim=True, unbiased=False)
    return (x - mu) / (var + 1e-5).sqrt() * m.w


def ln_bias_only(m, x):
    return F.layer_norm(x, x.shape[-1:], None, m.b, 1e-5)


def ln_weight_only(m, x):
    return F.layer_norm(x, x.shape[-1:], m.w, None, 1e-5)


def ln_plain(m, x):
    return F.layer_norm(x, x.shape[-1:], eps=1e-6)


def ln_last2(m, x):
    return F.layer_norm(x, x.shape[-2:], m.w2, m.b2, 1e-5)


def ln_last2_hand(m, x):
    mu = x.mean((-2, -1), keepdim=True)
    var = ((x - mu) ** 2).mean((-2, -1), keepdim=True)
    return (x - mu) / torch.sqrt(var + 1e-5)


def ln_unbiased(m, x):      # look-alike: unbiased variance
    mu = x.mean(-1, keepdim=True)
    return (x - mu) / torch.sqrt(x.var(-1, keepdim=True, unbiased=True) + 1e-5)


def mvn_eps_outside(m, x):  # eps outside the root (std + eps): ONNX MeanVarianceNormalization's form
    mu = x.mean(-1, keepdim=True)
    return (x - mu) / (x.std(-1, keepdim=True, unbiased=False) + 1e-5) * m.w + m.b


def ln_std_eps_unbiased(m, x):   # annotated-transformer LayerNorm: a_2 * (x - mean) / (std + eps) + b_2
    mu = x.mean(-1, keepdim=True)
    return m.w * (x - mu) / (x.std(-1, keepdim=True) + 1e-6) + m.b


def rms_t5(m, x):
    var = x.pow(2).mean(-1, keepdim=True)
    return m.w * (x * torch.rsqrt(var + 1e-6))


def rms_llama(m, x):
    dtype = x.dtype
    h = x.to(torch.float32)
    h = h * torch.rsqrt(h.pow(2).mean(-1, keepdim=True) + 1e-5)
    return m.w * h.to(dtype)


def rms_gemma(m, x):
    h = x.float()
    h = h * torch.rsqrt(h.pow(2).mean(-1, keepdim=True) + 1e-6)
    return (h * (1.0 + (m.w - 1).float())).type_as(x)


def rms_norm_scaled(m, x):
    return x / x.norm(dim=-1, keepdim=True) * math.sqrt(x.shape[-1]) * m.w


def rms_div_sqrt(m, x):
    return x / torch.sqrt((x * x).mean(-1, keepdim=True) + 1e-8)


def rms_no_eps(m, x):
    return x * torch.rsqrt(x.pow(2).mean(-1, keepdim=True))


def gn_hand(m, x, groups=4):
    n, c = x.shape[:2]
    h = x.reshape(n, groups, -1)
    mu = h.mean(-1, keepdim=True)
    var = h.var(-1, keepdim=True, unbiased=False)
    h = ((h - mu) / torch.sqrt(var + 1e-5)).reshape(x.shape)
    shape = (1, c) + (1,) * (x.dim() - 2)
    return h * m.gw.reshape(shape) + m.gb.reshape(shape)


def in_hand(m, x):
    dims = tuple(range(2, x.dim()))
    mu = x.mean(dims, keepdim=True)
    var = x.var(dims, keepdim=True, unbiased=False)
    return (x - mu) / (var + 1e-5).sqrt()


def ln2d_convnext(m, x):
    u = x.mean(1, keepdim=True)
    s = (x - u).pow(2).mean(1, keepdim=True)
    x = (x - u) / torch.sqrt(s + 1e-6)
    return m.cw[:, None, None] * x + m.cb[:, None, None]


def adain_hand(m, x, s):
    n, c = x.shape[:2]
    xm = x.reshape(n, c, -1).mean(-1).reshape(n, c, 1, 1)
    xs = (x.reshape(n, c, -1).var(-1) + 1e-5).sqrt().reshape(n, c, 1, 1)
    sm = s.reshape(n, c, -1).mean(-1).reshape(n, c, 1, 1)
    ss = (s.reshape(n, c, -1).var(-1) + 1e-5).sqrt().reshape(n, c, 1, 1)
    return (x - xm) / xs * ss + sm


def rms_t5_exact(m, x):
    """transformers' T5LayerNorm: variance in float32, the weight's dtype back before the scale."""
    variance = x.to(torch.float32).pow(2).mean(-1, keepdim=True)
    h = x * torch.rsqrt(variance + 1e-6)
    if m.w.dtype in (torch.float16, torch.bfloat16):
        h = h.to(m.w.dtype)
    return m.w * h


def f_rms_norm(m, x):
    return F.rms_norm(x, x.shape[-1:], m.w, 1e-6)


def ln_autocast(m, x):
    """autocast-style: LayerNorm computed in float32 on a half tensor, the result cast back."""
    return F.layer_norm(x.float(), x.shape[-1:], m.w.float(), m.b.float(), 1e-5).to(x.dtype)


# -- layer-module cases ----------------------------------------------------------------------

class ConvNeXtBlock(nn.Module):
    """ConvNeXt: depthwise Conv, channels-last LayerNorm, pointwise MLP with GELU, residual."""

    def __init__(self, c):
        super().__init__()
        self.dw = nn.Conv2d(c, c, 7, padding=3, groups=c)
        self.ln = nn.LayerNorm(c, eps=1e-6)
        self.fc1, self.fc2 = nn.Linear(c, 4 * c), nn.Linear(4 * c, c)

    def forward(self, x):
        h = self.ln(self.dw(x).permute(0, 2, 3, 1))
        return x + self.fc2(F.gelu(self.fc1(h))).permute(0, 3, 1, 2)


class UNetResBlock(nn.Module):
    """diffusers-style: GroupNorm -> SiLU -> Conv, + time embedding, GroupNorm -> SiLU -> Conv, residual."""

    def __init__(self, c, groups):
        super().__init__()
        self.n1, self.n2 = nn.GroupNorm(groups, c), nn.GroupNorm(groups, c)
        self.c1, self.c2 = nn.Conv2d(c, c, 3, padding=1), nn.Conv2d(c, c, 3, padding=1)
        self.t = nn.Linear(c, c)

    def forward(self, x, temb):
        h = self.c1(F.silu(self.n1(x))) + self.t(F.silu(temb))[:, :, None, None]
        return x + self.c2(F.silu(self.n2(h)))


class Permuted(nn.Module):
    """Channels-last LayerNorm on an NCHW tensor: permute, nn.LayerNorm, permute back."""

    def __init__(self, c):
        super().__init__()
        self.ln = nn.LayerNorm(c)

    def forward(self, x):
        return self.ln(x.permute(0, 2, 3, 1)).permute(0, 3, 1, 2)


class RecurrentNorm(nn.Module):
    """Speech / OCR / time-series style: a (bidirectional) LSTM or GRU, then LayerNorm on its output."""

    def __init__(self, kind, d, hidden, bidirectional):
        super().__init__()
        self.rnn = getattr(nn, kind)(d, hidden, num_layers=2, batch_first=True, bidirectional=bidirectional)
        self.ln = nn.LayerNorm(hidden * (2 if bidirectional else 1))

    def forward(self, x):
        return self.ln(self.rnn(x)[0])


class WarpNorm(nn.Module):
    """Optical-flow / spatial-transformer style: a flow from a Conv warps x (grid_sample), then
    InstanceNorm; with fold=True also MobileViT-v2's unfold -> fold round trip."""

    def __init__(self, c, mode, padding, fold):
        super().__init__()
        self.flow = nn.Conv2d(c, 2, 3, padding=1)
        self.norm = nn.InstanceNorm2d(c, affine=True)
        self.mode, self.padding, self.fold = mode, padding, fold

    def forward(self, x):
        grid = torch.tanh(self.flow(x)).permute(0, 2, 3, 1)
        y = F.grid_sample(x, grid, mode=self.mode, padding_mode=self.padding, align_corners=False)
        if self.fold:
            y = F.fold(F.unfold(y, 2, stride=2), x.shape[-2:], 2, stride=2)
        return self.norm(y)


class Block(nn.Module):
    """before -> norm -> after (+ x when residual): the neighbours a norm usually has."""

    def __init__(self, before, norm, after, residual=False):
        super().__init__()
        self.before, self.norm, self.after, self.residual = before, norm, after, residual

    def forward(self, x):
        h = self.after(self.norm(self.before(x)))
        return h + x if self.residual else h


def randomize(module, gen):
    """Random affine parameters and running statistics, so a runtime that drops them fails."""
    for m in module.modules():
        for name in ("weight", "bias"):
            p = getattr(m, name, None)
            if isinstance(m, (nn.Linear, nn.Conv1d, nn.Conv2d, nn.Conv3d)) or not isinstance(p, torch.Tensor):
                continue
            with torch.no_grad():
                p.copy_(1.0 * (name == "weight") + 0.3 * torch.randn(p.shape, generator=gen))
        if getattr(m, "running_mean", None) is not None:
            m.running_mean.copy_(0.5 * torch.randn(m.running_mean.shape, generator=gen))
            m.running_var.copy_(0.5 + torch.rand(m.running_var.shape, generator=gen))
    return module


def activation(kind):
    return {"silu": nn.SiLU(), "relu": nn.ReLU(), "gelu": nn.GELU(), "gelu_tanh": nn.GELU("tanh"),
            "none": nn.Identity()}[kind]


def generate_cases(seed):
    """The cases, their shapes drawn from `seed` (same seed, same cases)."""
    rng = np.random.default_rng(seed)
    gen = torch.Generator().manual_seed(seed)
    pick = lambda xs: xs[int(rng.integers(len(xs)))]     # noqa: E731
    cases = []

    def seq_shape():
        return (pick([1, 2, 3]), pick([1, 5, 9]), pick([7, 16, 33, 64]))

    def image_shape():
        return (pick([1, 2]), pick([6, 12, 32]), pick([1, 5, 8]), pick([3, 8]))

    def add(name, module, shapes, norms):
        module = randomize(module, gen).eval()
        inputs = tuple(torch.randn(*s, generator=gen) * 2 + 0.5 for s in shapes)
        cases.append(Case(name, module, inputs, norms))

    # LayerNorm spelled by hand and through F.layer_norm, in a Linear -> norm -> GELU block
    hand_ln = {"ln_var": ln_var, "ln_sub_div": ln_sub_div, "ln_rsqrt": ln_rsqrt, "ln_var_mean": ln_var_mean,
               "ln_bias_only": ln_bias_only, "ln_weight_only": ln_weight_only, "ln_plain": ln_plain}
    for name, fn in hand_ln.items():
        s = seq_shape()
        d = s[-1]
        act = pick(["gelu", "gelu_tanh", "silu", "none"])
        add(f"{name}_{act}_{'x'.join(map(str, s))}",
            Block(nn.Linear(d, d), Fn(fn, gen, w=(d,), b=(d,)), activation(act), residual=bool(rng.integers(2))),
            [s], 1)
    s = seq_shape()
    add(f"ln_last2_{'x'.join(map(str, s))}", Fn(ln_last2, gen, w2=s[-2:], b2=s[-2:]), [s], 1)
    s = seq_shape()
    add(f"ln_last2_hand_{'x'.join(map(str, s))}", Fn(ln_last2_hand, gen), [s], 1)
    for kw in ({"elementwise_affine": False}, {"bias": False}, {"eps": 1e-12}):
        s = seq_shape()
        tag = "_".join(f"{k}{v}" for k, v in kw.items())
        add(f"nn_layernorm_{tag}_{'x'.join(map(str, s))}",
            Block(nn.Identity(), nn.LayerNorm(s[-1], **kw), activation(pick(["relu", "none"]))), [s], 1)
    s = seq_shape()
    add(f"mvn_eps_outside_{'x'.join(map(str, s))}", Fn(mvn_eps_outside, gen, w=(s[-1],), b=(s[-1],)), [s], 1)
    for name, fn in {"lookalike_ln_unbiased": ln_unbiased, "lookalike_ln_std_unbiased": ln_std_eps_unbiased}.items():
        s = seq_shape()
        add(f"{name}_{'x'.join(map(str, s))}", Fn(fn, gen, w=(s[-1],), b=(s[-1],)), [s], 0)

    # RMSNorm: T5, LLaMA (float32 inside), Gemma (1 + w), nn.RMSNorm, norm * sqrt(d)
    for name, fn in {"rms_t5": rms_t5, "rms_llama": rms_llama, "rms_gemma": rms_gemma,
                     "rms_norm_scaled": rms_norm_scaled, "rms_div_sqrt": rms_div_sqrt,
                     "rms_no_eps": rms_no_eps}.items():
        s = seq_shape()
        d = s[-1]
        add(f"{name}_{'x'.join(map(str, s))}",
            Block(nn.Linear(d, d, bias=False), Fn(fn, gen, w=(d,)), activation(pick(["silu", "none"])),
                  residual=bool(rng.integers(2))), [s], 1)
    for name, fn in {"rms_t5_exact": rms_t5_exact, "f_rms_norm": f_rms_norm, "ln_autocast": ln_autocast}.items():
        s = seq_shape()
        add(f"{name}_{'x'.join(map(str, s))}", Fn(fn, gen, w=(s[-1],), b=(s[-1],)), [s], 1)
    n, c, h, w = image_shape()
    add(f"convnext_block_{n}x{c}x{h}x{w}", ConvNeXtBlock(c), [(n, c, h, w)], 1)
    add("unet_resblock_2x32x8x8", UNetResBlock(32, 8), [(2, 32, 8, 8), (2, 32)], 2)
    add("conv_relu_batchnorm2d_2x6x5x5", Block(nn.Conv2d(6, 6, 3, padding=1), nn.ReLU(), nn.BatchNorm2d(6)),
        [(2, 6, 5, 5)], 1)
    add("layernorm_4d_channels_last_2x4x5x12", nn.LayerNorm(12), [(2, 4, 5, 12)], 1)
    s = seq_shape()
    add(f"nn_rmsnorm_{'x'.join(map(str, s))}", nn.RMSNorm(s[-1], eps=1e-6), [s], 1)
    s = seq_shape()
    add(f"nn_rmsnorm_noeps_noaffine_{'x'.join(map(str, s))}", nn.RMSNorm(s[-1], elementwise_affine=False), [s], 1)

    # GroupNorm: nn (G=1, G=C, G between) after a Conv, by hand, 3-D and 5-D
    for g_kind in ("1", "C", "mid"):
        n, c, h, w = image_shape()
        groups = {"1": 1, "C": c, "mid": 3 if c % 3 == 0 else 2}[g_kind]
        act = pick(["silu", "none"])
        add(f"conv_groupnorm_G{g_kind}_{act}_{n}x{c}x{h}x{w}",
            Block(nn.Conv2d(c, c, 3, padding=1), nn.GroupNorm(groups, c), activation(act),
                  residual=bool(rng.integers(2))), [(n, c, h, w)], 1)
    add("groupnorm_3d_2x6x9", nn.GroupNorm(3, 6), [(2, 6, 9)], 1)
    add("groupnorm_5d_1x6x3x4x5", nn.GroupNorm(2, 6), [(1, 6, 3, 4, 5)], 1)
    n, c, h, w = image_shape()
    add(f"gn_hand_{n}x{c}x{h}x{w}", Fn(lambda m, x: gn_hand(m, x, 2), gen, gw=(c,), gb=(c,)), [(n, c, h, w)], 1)

    # InstanceNorm 1d/2d, affine or not, track_running_stats (eval: a BatchNorm), and by hand
    for dim, shape in ((1, (2, 6, 11)), (2, (1, 12, 5, 8))):
        cls = nn.InstanceNorm1d if dim == 1 else nn.InstanceNorm2d
        for affine in (False, True):
            for track in (False, True):
                add(f"instancenorm{dim}d_affine{int(affine)}_track{int(track)}",
                    cls(shape[1], affine=affine, track_running_stats=track), [shape], 1)
    n, c, h, w = image_shape()
    add(f"in_hand_{n}x{c}x{h}x{w}", Fn(in_hand, gen), [(n, c, h, w)], 1)

    # BatchNorm in eval: alone (a norm on a kernel) and after Conv/Linear (folded into weights)
    add("batchnorm1d_2d_input_3x10", nn.BatchNorm1d(10), [(3, 10)], 1)
    add("batchnorm1d_3x10x7", nn.BatchNorm1d(10), [(3, 10, 7)], 1)
    add("batchnorm2d_2x6x5x5", nn.BatchNorm2d(6), [(2, 6, 5, 5)], 1)
    add("batchnorm3d_1x4x3x4x5", nn.BatchNorm3d(4), [(1, 4, 3, 4, 5)], 1)
    add("linear_batchnorm1d_relu_4x12", Block(nn.Linear(12, 12), nn.BatchNorm1d(12), nn.ReLU()), [(4, 12)], 1)
    add("conv_batchnorm2d_relu_2x6x8x8", Block(nn.Conv2d(6, 6, 3, padding=1), nn.BatchNorm2d(6), nn.ReLU()),
        [(2, 6, 8, 8)], 1)

    # channels-last LayerNorm, ConvNeXt LayerNorm2d
    n, c, h, w = image_shape()
    add(f"permute_layernorm_{n}x{c}x{h}x{w}", Permuted(c), [(n, c, h, w)], 1)
    n, c, h, w = image_shape()
    add(f"ln2d_convnext_{n}x{c}x{h}x{w}", Fn(ln2d_convnext, gen, cw=(c,), cb=(c,)), [(n, c, h, w)], 1)

    # F.normalize (L1/L2 over various dims), LocalResponseNorm, AdaIN by hand
    for p, dim, shape in ((2, -1, seq_shape()), (2, 1, image_shape()), (1, -1, seq_shape()), (2, 1, seq_shape())):
        add(f"f_normalize_p{p}_dim{dim}_{'x'.join(map(str, shape))}",
            Fn(lambda m, x, p=p, dim=dim: F.normalize(x, p=p, dim=dim), gen), [shape], 1)
    s = seq_shape()
    add(f"clip_l2_{'x'.join(map(str, s))}", Fn(lambda m, x: x / x.norm(dim=-1, keepdim=True), gen), [s], 1)
    for size in (3, 5):
        add(f"lrn_size{size}", nn.LocalResponseNorm(size), [image_shape()], 1)
    n, c, h, w = image_shape()
    add(f"adain_hand_{n}x{c}x{h}x{w}", Fn(adain_hand, gen), [(n, c, h, w), (n, c, h, w)], 1)

    # recurrent layers and warps around a norm (LSTM / GRU, grid_sample, fold)
    for kind in ("LSTM", "GRU"):
        b, t, d = pick([1, 2]), pick([5, 9]), pick([7, 16])
        bidir = bool(rng.integers(2))
        add(f"{kind.lower()}{'_bi' if bidir else ''}_layernorm_{b}x{t}x{d}", RecurrentNorm(kind, d, 12, bidir),
            [(b, t, d)], 1)
    for mode, padding, fold in (("bilinear", "zeros", False), ("bicubic", "border", True),
                                ("nearest", "reflection", False)):
        n, c = pick([1, 2]), pick([3, 8])
        add(f"grid_sample_{mode}_{padding}{'_fold' if fold else ''}_instancenorm_{n}x{c}x8x8",
            WarpNorm(c, mode, padding, fold), [(n, c, 8, 8)], 1)

    # weight_norm: a normalization of the weights, folded to constants at export
    lin = nn.utils.parametrizations.weight_norm(nn.Linear(16, 16))
    add("weight_norm_linear_2x16", lin, [(2, 16)], 0)
    return cases


# -- export, run, compare ------------------------------------------------------------------------

@contextlib.contextmanager
def quiet_fds():
    """Silence file descriptors 1 and 2 (the legacy exporter prints its TorchScript graph from C++ on failure)."""
    sys.stdout.flush()
    sys.stderr.flush()
    saved = [os.dup(1), os.dup(2)]
    with open(os.devnull, "w") as null:
        os.dup2(null.fileno(), 1)
        os.dup2(null.fileno(), 2)
        try:
            yield
        finally:
            os.dup2(saved[0], 1)
            os.dup2(saved[1], 2)
            for fd in saved:
                os.close(fd)


def export(case, exporter, opset, path, half, dynamic=False):
    """Export `case` to `path`; `dynamic`: the batch axis (axis 0) symbolic."""
    module = case.module.half() if half else case.module.float()
    inputs = tuple(x.half() if half else x for x in case.inputs)
    names = [f"x{i}" for i in range(len(inputs))]
    extra = {}
    if dynamic and exporter == "legacy":
        extra["dynamic_axes"] = {n: {0: "batch"} for n in names + ["y"]}
    elif dynamic:
        batch = torch.export.Dim("batch", min=1, max=64)
        extra["dynamic_shapes"] = tuple({0: batch} for _ in inputs)
    with warnings.catch_warnings(), quiet_fds(), contextlib.redirect_stdout(io.StringIO()), \
            contextlib.redirect_stderr(io.StringIO()):
        warnings.simplefilter("ignore")
        if exporter == "legacy":
            torch.onnx.export(module, inputs, path, dynamo=False, opset_version=opset,
                              input_names=names, output_names=["y"], do_constant_folding=True, **extra)
        else:
            prog = torch.onnx.export(module, inputs, dynamo=True, opset_version=opset, verbose=False,
                                     input_names=names, output_names=["y"], external_data=False, **extra)
            prog.save(path, external_data=False)
    return {n: x.numpy() for n, x in zip(names, inputs)}


def norms_on_kernels(report):
    from normrt.onnx.report import is_epilogue
    return sum(1 for e in report["fused"] if not is_epilogue(e))


def check(case, exporter, opset, half, keep_dir, dynamic=False):
    import onnx
    import onnxruntime as ort

    import normrt

    tag = f"{exporter}{opset}{'_half' if half else ''}{'_dyn' if dynamic else ''}"
    row = {"case": case.name, "export": tag, "status": "ok", "err": None, "norms": None, "left": "",
           "fallback": "", "detail": ""}
    path = os.path.join(keep_dir, f"{case.name}__{tag}.onnx")
    try:
        feed = export(case, exporter, opset, path, half, dynamic)
    except Exception as e:  # noqa: BLE001 - a sweep records every failure and goes on
        row.update(status="export-fail", detail=f"{type(e).__name__}: {str(e).splitlines()[0][:120]}")
        return row
    try:
        opts = ort.SessionOptions()
        opts.graph_optimization_level = ort.GraphOptimizationLevel.ORT_DISABLE_ALL
        want = ort.InferenceSession(path, opts, providers=["CPUExecutionProvider"]).run(None, feed)[0]
    except Exception as e:  # noqa: BLE001
        row.update(status="ort-fail", detail=f"{type(e).__name__}: {str(e).splitlines()[0][:120]}")
        return row
    try:
        sess = normrt.InferenceSession(path)
    except Exception as e:  # noqa: BLE001
        row.update(status="LOAD-ERROR", detail=f"{type(e).__name__}: {str(e).splitlines()[0][:160]}")
        return row
    try:
        with np.errstate(all="ignore"):
            got = sess.run(None, feed)[0]
    except Exception as e:  # noqa: BLE001
        row.update(status="RUN-ERROR", detail=f"{type(e).__name__}: {str(e).splitlines()[0][:160]}")
        return row
    want64, got64 = np.asarray(want, np.float64), np.asarray(got, np.float64)
    if want64.shape != got64.shape:
        row.update(status="SHAPE", detail=f"{got64.shape} vs {want64.shape}")
        return row
    row["err"] = float(np.max(np.abs(got64 - want64), initial=0.0) / max(1.0, np.max(np.abs(want64), initial=0.0)))
    row["norms"] = norms_on_kernels(sess.report)
    exported_ops = {n.op_type for n in onnx.load(path).graph.node}
    expected = case.norms if exported_ops & NORM_SHAPED_OPS else 0   # the exporter folded it (BN into Conv)
    if expected != case.norms:
        row["detail"] = "the exporter folded the norm away"
    left = [n.op_type for n in sess.optimized_model.graph.node
            if n.domain in ("", "ai.onnx") and n.op_type in NORM_SHAPED_OPS]
    row["left"] = ",".join(sorted(set(left)))
    fallback = sorted({s.node.op_type for s in sess.executor.steps if s.kind == "reference"})
    row["fallback"] = ",".join(fallback)
    row["refused"] = "; ".join(f"{e.get('pass')}: {e.get('reason')}"[:140] for e in sess.report["refused"])
    tol = TOLERANCE[torch.float16 if half else torch.float32]
    problems = []
    if row["err"] > tol or not np.isfinite(row["err"]):
        problems.append("error")
    if expected and (row["norms"] < expected or left):
        problems.append("norm not on a kernel")
    if not expected and row["norms"]:
        problems.append("look-alike rewritten")
    if fallback:
        problems.append("fallback")
    row["problems"] = problems
    onnx.checker.check_model(path)
    return row


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--seed", type=int, default=0, help="draws the shapes and parameters")
    ap.add_argument("--only", default="", help="run the cases whose name contains this text")
    ap.add_argument("--half", action="store_true", help="also export .half() variants (legacy17, dynamo)")
    ap.add_argument("--dynamic", action="store_true",
                    help="also export with a symbolic batch axis (legacy17, dynamo)")
    ap.add_argument("--exporters", default="legacy13,legacy17,dynamo18",
                    help="comma separated: legacy13, legacy17, dynamo18")
    ap.add_argument("--keep", default=None, help="directory to keep the exported models in")
    ap.add_argument("--problems-only", action="store_true", help="print only rows marked '!'")
    args = ap.parse_args(argv)

    exports = [e for e in EXPORTS if f"{e[0]}{e[1]}" in args.exporters.split(",")]
    cases = [c for c in generate_cases(args.seed) if args.only in c.name]
    keep_dir = args.keep or tempfile.mkdtemp(prefix="wild_sweep_")
    os.makedirs(keep_dir, exist_ok=True)
    rows, started = [], time.time()
    for case in cases:
        variants = [(e, o, False, False) for e, o in exports]
        if args.half:
            variants += [(e, o, True, False) for e, o in exports if o >= 17]
        if args.dynamic:
            variants += [(e, o, half, True) for half in (False, True)[:1 + args.half] for e, o in exports if o >= 17]
        for exporter, opset, half, dynamic in variants:
            row = check(case, exporter, opset, half, keep_dir, dynamic)
            rows.append(row)
            flag = "!" if row["status"] not in ("ok", "export-fail") or row.get("problems") else " "
            if args.problems_only and flag != "!":
                continue
            err = "-" if row["err"] is None else f"{row['err']:.1e}"
            norms = "-" if row["norms"] is None else f"{row['norms']}/{case.norms}"
            print(f"{flag} {row['case']:<44} {row['export']:<14} {row['status']:<11} {err:>8} {norms:>5} "
                  f"{row['left'] or '-':<22} {row['fallback'] or '-':<10} "
                  f"{' '.join(row.get('problems', [])) or ''} {row['detail']}", flush=True)
    bad = [r for r in rows if r["status"] not in ("ok", "export-fail") or r.get("problems")]
    print(f"\n{len(rows)} exports of {len(cases)} cases in {time.time() - started:.0f} s: "
          f"{sum(r['status'] == 'export-fail' for r in rows)} did not export, {len(bad)} to triage; "
          f"models in {keep_dir}")
    return 1 if bad else 0


if __name__ == "__main__":
    sys.exit(main())

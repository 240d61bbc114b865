"""Random generators (numpy): RandomUniform(Like), RandomNormal(Like), Bernoulli, Multinomial.

Exported models draw noise where the source model did: a VAE's latent sample, a masked
autoencoder's patch shuffle (ViT-MAE's RandomUniformLike), a diffusion step, dropout left in
training mode. A node with a `seed` attribute draws the same values on every run (a fresh
PCG64 stream from that seed, as onnx.reference reseeds each call), so a seeded model is
reproducible; without one each run draws new values from one process-wide generator seeded
from the operating system. No runtime promises the same values as another: the ONNX spec
leaves the generator open. The executor never folds these ops into constants
(executor._NONDETERMINISTIC, passes.constant_folding).
"""
import threading

import numpy as np

from ._util import TENSOR_TYPES, op

_UNSEEDED = np.random.default_rng()
_UNSEEDED_LOCK = threading.Lock()       # Generator is not thread-safe; sessions may run concurrently
_FLOAT_TYPES = {1, 10, 11, 16}          # float, float16, double, bfloat16
_INT_TYPES = {6, 7}                     # Multinomial's int32, int64


def _draw(node, fn):
    """fn(generator) with the node's seeded stream, or the shared unseeded one."""
    seed = node.attrs.get("seed")
    if seed is not None:
        # a float attribute; its bits, not its truncation, so seeds 1.2 and 1.7 differ
        return fn(np.random.Generator(np.random.PCG64(np.frombuffer(np.float64(seed).tobytes(), np.uint64))))
    with _UNSEEDED_LOCK:
        return fn(_UNSEEDED)


def _dtype_ok(node, allowed=_FLOAT_TYPES, required=False):
    dtype = node.attrs.get("dtype")
    if dtype is None:
        return not required
    return int(dtype) in allowed


def _out_dtype(node, like=None, default=1):
    dtype = node.attrs.get("dtype")
    if dtype is not None:
        return TENSOR_TYPES[int(dtype)]
    if like is not None:
        return like.dtype
    return TENSOR_TYPES[default]


def _shape_attr(node):
    shape = [int(s) for s in node.attrs.get("shape", ())]
    if any(s < 0 for s in shape):
        raise ValueError(f"{node.op_type}: shape {shape} has a negative dimension")
    return tuple(shape)


def _uniform(node, shape, dtype):
    low, high = float(node.attrs.get("low", 0.0)), float(node.attrs.get("high", 1.0))
    return _draw(node, lambda g: g.uniform(low, high, shape)).astype(dtype)


def _normal(node, shape, dtype):
    mean, scale = float(node.attrs.get("mean", 0.0)), float(node.attrs.get("scale", 1.0))
    return _draw(node, lambda g: g.normal(mean, scale, shape)).astype(dtype)


def _float_like_supported(node):
    return _dtype_ok(node)


@op("RandomUniform", since=1, supports=_float_like_supported)
def random_uniform(node):
    return _uniform(node, _shape_attr(node), _out_dtype(node))


@op("RandomNormal", since=1, supports=_float_like_supported)
def random_normal(node):
    return _normal(node, _shape_attr(node), _out_dtype(node))


@op("RandomUniformLike", since=1, supports=_float_like_supported, half_native=True)
def random_uniform_like(node, x):
    return _uniform(node, x.shape, _out_dtype(node, x))


@op("RandomNormalLike", since=1, supports=_float_like_supported, half_native=True)
def random_normal_like(node, x):
    return _normal(node, x.shape, _out_dtype(node, x))


def _bernoulli_supported(node):
    dtype = node.attrs.get("dtype")
    return dtype is None or int(dtype) in TENSOR_TYPES


@op("Bernoulli", since=15, supports=_bernoulli_supported, half_native=True)
def bernoulli(node, p):
    """1 with probability p (each element its own draw), else 0, in `dtype` (default p's)."""
    prob = p.astype(np.float64)
    draws = _draw(node, lambda g: g.random(prob.shape))
    return (draws < prob).astype(_out_dtype(node, p))


def _multinomial_supported(node):
    return _dtype_ok(node, _INT_TYPES)


@op("Multinomial", since=7, supports=_multinomial_supported, half_native=True)
def multinomial(node, logits):
    """`sample_size` class indices per row, drawn with probabilities softmax(row)."""
    if logits.ndim != 2:
        raise ValueError(f"Multinomial: input must be (batch_size, class_size), got shape {logits.shape}")
    samples = int(node.attrs.get("sample_size", 1))
    z = logits.astype(np.float64)
    z = np.exp(z - z.max(axis=1, keepdims=True))
    cdf = np.cumsum(z, axis=1)
    cdf /= cdf[:, -1:]
    draws = _draw(node, lambda g: g.random((z.shape[0], samples)))
    picks = np.stack([np.searchsorted(cdf[b], draws[b], side="right") for b in range(z.shape[0])]) \
        if z.shape[0] else np.zeros((0, samples), np.int64)
    dtype = TENSOR_TYPES[int(node.attrs.get("dtype", 6))]
    return np.minimum(picks, z.shape[1] - 1).astype(dtype)

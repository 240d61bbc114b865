"""The benchmark matrix: one list of cases, shared by the pytest-benchmark suite
(bench/test_kernels.py) and the standalone report (python -m bench.report).

A Case only describes the work (kernel, shape, dtype, options); `make_inputs`
builds its arrays, deterministically. How each implementation runs a case
lives in bench/backends.py.
"""
import dataclasses
import math
import os
import zlib

import ml_dtypes  # noqa: F401  (registers "bfloat16" with numpy)
import numpy as np

DEFAULT_THREADS = 2  # the benchmark machine has 2 cores
THREADS_ENV = "NORMRT_BENCH_THREADS"

EPS = 1e-5


def bench_threads():
    """Thread count for every implementation: $NORMRT_BENCH_THREADS, else 2."""
    value = os.environ.get(THREADS_ENV, "").strip()
    if not value:
        return DEFAULT_THREADS
    try:
        n = int(value)
    except ValueError:
        raise ValueError(f"{THREADS_ENV} must be a positive int, got {value!r}") from None
    if n < 1:
        raise ValueError(f"{THREADS_ENV} must be a positive int, got {value!r}")
    return n


@dataclasses.dataclass(frozen=True)
class Case:
    kernel: str  # normrt function name: batch_norm, layer_norm, rms_norm, group_norm, instance_norm,
    #              layer_norm_2d / rms_norm_2d (channels-first statistics over axis 1),
    #              attention (shape (B, H, S, D) of q, k and v)
    shape: tuple
    dtype: str = "float32"
    axis: int = -1  # layer_norm / rms_norm: normalize over axes [axis, rank)
    residual: bool = False  # layer_norm: normalize x + residual
    activation: str = None  # fused activation (group_norm: "silu")
    num_groups: int = None  # group_norm
    large: bool = False  # included in the report's 1-thread vs N-thread scaling section

    @property
    def label(self):
        """Kernel plus the options that distinguish cases of the same kernel."""
        parts = [self.kernel]
        if self.kernel in ("layer_norm", "rms_norm") and self.axis != -1:
            parts.append(f"axis={self.axis}")
        if self.residual:
            parts.append("residual")
        if self.num_groups is not None:
            parts.append(f"G={self.num_groups}")
        if self.activation:
            parts.append(self.activation)
        if self.dtype != "float32":
            parts.append(self.dtype)
        return parts[0] + (f"[{','.join(parts[1:])}]" if len(parts) > 1 else "")

    @property
    def base_label(self):
        """label without the dtype (the report shows the dtype in its own column)."""
        return self.label.replace(f",{self.dtype}]", "]").replace(f"[{self.dtype}]", "")

    @property
    def group(self):
        """pytest-benchmark group: normrt, copy, ort and torch of one case sit together."""
        return f"{self.label}-{self.shape}"

    @property
    def id(self):
        """A test id without spaces or parentheses (easy to select with -k)."""
        opts = self.label[len(self.kernel):].strip("[]").replace("=", "").split(",")
        shape = "x".join(map(str, self.shape))
        return "-".join(p for p in (self.kernel, *opts, shape) if p)

    @property
    def numel(self):
        return math.prod(self.shape)

    @property
    def nbytes(self):
        """Bytes a kernel must move at least: read x, write y, read the residual if any.

        Parameters (scale, bias, mean, var) are not counted; they are small except
        for layer_norm over axis=1, whose scale and bias are each as large as x.
        """
        n = self.numel * np.dtype(self.dtype).itemsize
        if self.kernel == "attention":
            return 4 * n            # read q, k, v, write y
        return n * (3 if self.residual else 2)

    @property
    def copy_nbytes(self):
        """Bytes the copy floor moves (read x, write dst)."""
        return 2 * self.numel * np.dtype(self.dtype).itemsize


def _rng(case):
    # deterministic per case, independent of list order
    seed = zlib.crc32(repr(case).encode())
    return np.random.default_rng(seed)


def make_inputs(case):
    """The case's arrays: x, the kernel's parameters and (where used) residual.

    Returns a dict with keys among x, residual, scale, bias, mean, var.
    Parameter shapes follow the normrt API (also valid for ONNX and torch):
    per channel (C,) for batch/group/instance norm, the normalized shape for
    layer/rms norm.
    """
    rng = _rng(case)
    dt = np.dtype(case.dtype)
    x = rng.standard_normal(case.shape, dtype=np.float32).astype(dt, copy=False)
    arrays = {"x": x}
    if case.kernel == "attention":      # x is q
        arrays["k"] = rng.standard_normal(case.shape, dtype=np.float32).astype(dt, copy=False)
        arrays["v"] = rng.standard_normal(case.shape, dtype=np.float32).astype(dt, copy=False)
        return arrays
    if case.kernel in ("layer_norm", "rms_norm"):
        pshape = case.shape[case.axis:]
        arrays["scale"] = (1.0 + 0.1 * rng.standard_normal(pshape)).astype(dt)
        if case.kernel == "layer_norm":
            arrays["bias"] = (0.1 * rng.standard_normal(pshape)).astype(dt)
        if case.residual:
            arrays["residual"] = rng.standard_normal(case.shape, dtype=np.float32).astype(dt)
    else:
        C = case.shape[1]
        arrays["scale"] = (1.0 + 0.1 * rng.standard_normal(C)).astype(dt)
        arrays["bias"] = (0.1 * rng.standard_normal(C)).astype(dt)
        if case.kernel == "rms_norm_2d":
            del arrays["bias"]
        if case.kernel == "batch_norm":
            arrays["mean"] = (0.1 * rng.standard_normal(C)).astype(dt)
            arrays["var"] = (0.5 + rng.random(C)).astype(dt)
    return arrays


def reference(case, arrays):
    """The case's result in float64 numpy, to check every implementation computes it."""
    x = arrays["x"].astype(np.float64)
    if case.kernel == "attention":      # softmax(q k^T / sqrt(D)) v
        s = x @ arrays["k"].astype(np.float64).swapaxes(-1, -2) / np.sqrt(x.shape[-1])
        e = np.exp(s - s.max(axis=-1, keepdims=True))
        return (e / e.sum(axis=-1, keepdims=True)) @ arrays["v"].astype(np.float64)
    if case.residual:
        r = arrays["residual"]
        # half precision: the skip connection is an add in x's dtype (ONNX's Add)
        x = (arrays["x"] + r).astype(np.float64) if np.dtype(case.dtype).itemsize == 2 else x + r
    p = {k: v.astype(np.float64) for k, v in arrays.items() if k not in ("x", "residual")}
    k = case.kernel
    if k in ("layer_norm", "rms_norm"):
        axes = tuple(range(case.axis % x.ndim, x.ndim))
        if k == "layer_norm":
            x = x - x.mean(axis=axes, keepdims=True)
        y = x / np.sqrt((x * x).mean(axis=axes, keepdims=True) + EPS) * p["scale"]
        if "bias" in p:
            y += p["bias"]
    elif k in ("layer_norm_2d", "rms_norm_2d"):
        bshape = (x.shape[1],) + (1,) * (x.ndim - 2)
        if k == "layer_norm_2d":
            x = x - x.mean(axis=1, keepdims=True)
        y = x / np.sqrt((x * x).mean(axis=1, keepdims=True) + EPS) * p["scale"].reshape(bshape)
        if "bias" in p:
            y += p["bias"].reshape(bshape)
    else:
        N, C = x.shape[:2]
        bshape = (C,) + (1,) * (x.ndim - 2)
        if k == "batch_norm":
            y = (x - p["mean"].reshape(bshape)) / np.sqrt(p["var"].reshape(bshape) + EPS)
        else:
            G = case.num_groups if k == "group_norm" else C
            rows = x.reshape(N * G, -1)
            rows = rows - rows.mean(axis=1, keepdims=True)
            rows /= np.sqrt((rows * rows).mean(axis=1, keepdims=True) + EPS)
            y = rows.reshape(x.shape)
        y = y * p["scale"].reshape(bshape) + p["bias"].reshape(bshape)
    if case.activation == "silu":
        y = y / (1.0 + np.exp(-y))
    elif case.activation:
        raise ValueError(f"no reference for activation {case.activation!r}")
    return y


def tolerance(case):
    """(rtol, atol) for comparing an implementation's result with `reference`."""
    return {"float64": (1e-9, 1e-9), "float16": (1e-2, 1e-2), "bfloat16": (4e-2, 4e-2)}.get(case.dtype, (2e-3, 2e-3))


# every half-precision case once per dtype, beside its float32 case above
HALF_CASES = [
    Case(kernel, shape, dtype=dt, num_groups=g, activation=act, residual=res)
    for kernel, shape, g, act, res in [
        ("batch_norm", (8, 256, 28, 28), None, None, False),
        ("layer_norm", (1024, 768), None, None, False),
        ("layer_norm", (1024, 768), None, None, True),
        ("rms_norm", (2048, 4096), None, None, False),
        ("group_norm", (1, 320, 64, 64), 32, None, False),
        ("group_norm", (1, 320, 64, 64), 32, "silu", False),
        ("instance_norm", (8, 128, 64, 64), None, None, False),
    ]
    for dt in ("float16", "bfloat16")
]

CASES = [
    Case("batch_norm", (1, 64, 112, 112)),
    Case("batch_norm", (8, 256, 28, 28)),
    Case("batch_norm", (32, 64, 56, 56), large=True),
    Case("layer_norm", (1, 768)),
    Case("layer_norm", (1024, 768)),
    Case("layer_norm", (2048, 4096), large=True),
    Case("layer_norm", (1, 256, 64, 64), axis=1),
    Case("layer_norm", (1024, 768), residual=True),
    Case("layer_norm_2d", (1, 96, 56, 56)),          # ConvNeXt-T stage 1 / SAM neck LayerNorm2d
    Case("layer_norm_2d", (8, 256, 32, 32)),
    Case("rms_norm_2d", (4, 512, 32, 32)),           # StyleGAN PixelNorm
    Case("rms_norm", (1, 4096)),
    Case("rms_norm", (2048, 4096), large=True),
    Case("group_norm", (1, 320, 64, 64), num_groups=32),
    Case("group_norm", (2, 640, 32, 32), num_groups=32),
    Case("group_norm", (1, 128, 256, 256), num_groups=32, large=True),
    Case("group_norm", (1, 320, 64, 64), num_groups=32, activation="silu"),
    Case("instance_norm", (1, 64, 256, 256)),
    Case("instance_norm", (8, 128, 64, 64), large=True),
    Case("layer_norm", (1024, 768), dtype="float64"),
    # the fp32 tail: odd small shapes, few groups
    Case("batch_norm", (3, 37, 19, 23)),
    Case("layer_norm", (17, 1023)),
    Case("group_norm", (4, 96, 24, 24), num_groups=3),
    # half precision: groups that fit in L2 (see HALF_CASES)
    *HALF_CASES,
    Case("attention", (1, 1, 1024, 16)),     # a UNet/VAE mid-block self-attention over 32x32 pixels
    Case("attention", (1, 2, 1024, 8)),      # unet64's four self-attentions (2 heads of 8 over 32x32)
    Case("attention", (1, 8, 1024, 64)),
]

# per-call overhead cases for the report's small-call table
SMALL_CALL_CASES = [
    Case("layer_norm", (1, 768)),
    Case("rms_norm", (1, 4096)),
]


def find_case(id_or_group):
    """The case in CASES whose id or group is `id_or_group`."""
    for case in CASES:
        if id_or_group in (case.id, case.group):
            return case
    raise KeyError(id_or_group)

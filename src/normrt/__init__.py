"""normrt: a CPU inference runtime for the normalization layers of neural networks."""
from ._thread_policy import configure_openmp as _configure_openmp

_configure_openmp()     # libgomp's wait policy, before any kernel module loads it
from ._kernels import cpu_info as _kernels_cpu_info
from ._kernels.openmp_info import openmp_enabled
from ._threads import get_num_threads, set_num_threads, threads
from ._memory import block_cache_stats, release_memory, set_block_cache_limit
from .errors import ModelError
from .api.layer_norm import layer_norm, rms_norm
from .api.channel_norm import layer_norm_2d, rms_norm_2d
from .api.group_norm import group_norm, instance_norm, adain
from .api.batch_norm import batch_norm, batch_norm_stats, spade
from .api.moments import moments, mean_variance_norm
from .api.lp_norm import grn, lp_norm
from .api.lrn import lrn
from .api.weights import fold_batch_norm, weight_norm, weight_standardize
from .api.activations import activate, erf
from ._checks import ACTIVATION_NAMES as ACTIVATIONS
from .api.softmax import softmax
from .api.gemm import matmul, pack_matmul_weight, PackedMatmulWeight
from .api.conv import conv2d, pack_conv_weight, PackedConvWeight
from .api.attention import attention
from .onnx import InferenceSession, Limits, optimize  # (normrt.onnx also loads the normrt.backend module)
from .scaleout import PartialMoments, recalibrate_batch_norm

__version__ = "0.1.0"


def cpu_info():
    """Which build of the kernels this process runs, and why.

    A dict: "level", the ISA level in use ("x86-64", "x86-64-v2", "x86-64-v3",
    "x86-64-v4", "native" for a NORMRT_NATIVE=1 build, "generic" off x86-64);
    "cpu_level", the highest level this CPU supports; "features", the CPU
    features found by cpuid that the OS enables (Linux /proc/cpuinfo names);
    "built_levels", the levels this install has; "forced", the NORMRT_ISA
    value or None; "brand", the CPU's name; "modules", the kernel modules
    loaded; "bf16_store", how bfloat16 stores round; "int8_dot", the path of
    the 8-bit products of static QDQ models ("avx512_vnni": vpdpbusd, which
    quantized models' MatMuls run on; "portable": C loops, so those MatMuls
    keep the float32 GEMM). The level is chosen once, at import.
    """
    return _kernels_cpu_info()

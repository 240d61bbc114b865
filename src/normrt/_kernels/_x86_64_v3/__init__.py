"""normrt's kernels compiled for x86-64-v3 (AVX2, FMA, F16C). Loaded by normrt._kernels, never directly."""

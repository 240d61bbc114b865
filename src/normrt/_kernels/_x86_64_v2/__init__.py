"""normrt's kernels compiled for x86-64-v2 (SSE4.2, POPCNT). Loaded by normrt._kernels, never directly."""

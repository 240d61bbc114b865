"""normrt's kernels compiled for x86-64 (baseline: SSE2). Loaded by normrt._kernels, never directly."""

"""normrt's kernels compiled for the compiler's default target (not x86-64). Loaded by normrt._kernels, never directly."""

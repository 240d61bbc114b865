"""normrt's kernels compiled for -march=native (the build machine's own features; NORMRT_NATIVE=1). Loaded by normrt._kernels, never directly."""

"""Compiled Cython kernels (built from pyx/). Private: use the functions in normrt."""

"""Numpy op implementations for the executor.

Importing this package registers every op module below with `registry`.
"""
from . import registry  # noqa: F401
from . import (  # noqa: F401
    activations,
    constants,
    conv,
    elementwise,
    indexing,
    matmul,
    pool,
    quantize,
    random,
    recurrent,
    reduce,
    resize,
    sampling,
    shape_ops,
    softmax,
    spectral,
)

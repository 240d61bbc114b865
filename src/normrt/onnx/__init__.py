"""Running ONNX models with normrt: load, rewrite normalizations onto the kernels, execute.

    path/bytes/proto ─► loader ─► passes ─────────────────────► plan ─► executor ─► outputs
                        (check)   constant_folding               (topo    kernel   (kernels.py)
                                  standard_norms                  order,  numpy    (ops/, registry)
                                  (pattern fusions)               last    reference (fallback.py)
                                                                  use)
    optimize = loader + passes; InferenceSession = optimize + plan + executor.

Modules: loader (ModelProto, ModelError), passes/ (one rewrite per module),
domain (the 'normrt' custom ops), kernels (normrt op -> kernel call, the only
caller of the kernels here), plan, executor, fallback (onnx.reference),
report (what optimize did), session (InferenceSession), optimize.
"""
from .model_checks import Limits
from .optimize import optimize
from .session import InferenceSession, NodeArg

from .. import backend  # noqa: E402,F401 - so `normrt.backend` exists after `import normrt`

__all__ = ["InferenceSession", "Limits", "NodeArg", "optimize"]

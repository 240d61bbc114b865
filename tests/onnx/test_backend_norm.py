"""ONNX backend conformance (onnx.backend.test) for the normalization ops.

Every included case must pass, and each case that tests a normalization op
itself (not its `_expanded` function form) must run that op on a normrt kernel,
not on the onnx.reference fallback.
"""
import re

import onnx.backend.test

import normrt
from normrt.backend import NormrtBackend

NORM_CASES = ("batchnorm", "group_normalization", "instancenorm", "layer_normalization",
              "rms_normalization", "mvn", "lrn", "l1normalization", "l2normalization", "lpnormalization")
NORM_OPS = {"BatchNormalization", "GroupNormalization", "InstanceNormalization", "LayerNormalization",
            "RMSNormalization", "MeanVarianceNormalization", "LpNormalization", "LRN"}
EXPECTED_CASES = 116   # onnx 1.23: cpu cases whose names match NORM_CASES, incl. _expanded



class KernelCheckingBackend(NormrtBackend):
    """normrt.backend, asserting that each normalization node landed on a kernel."""

    @classmethod
    def prepare(cls, model, device="CPU", **kwargs):
        rep = super().prepare(model, device, **kwargs)
        n_norms = sum(1 for n in model.graph.node if n.op_type in NORM_OPS and n.domain in ("", "ai.onnx"))
        if n_norms:
            session = rep.session
            assert not session.report["refused"], session.report["refused"]
            kernels = session.kernel_nodes()
            assert len(kernels) == n_norms, (kernels, session.executor.counts())
        return rep


backend_test = onnx.backend.test.BackendTest(KernelCheckingBackend, __name__)
for _pattern in NORM_CASES:
    backend_test.include(_pattern)

# Keep only the included CPU cases: the suite would otherwise collect its other
# ~4000 cases (and the CUDA twins) as skipped tests.
# (test_cases builds new classes on every access: filter one set and export it)
_wanted = re.compile("|".join(NORM_CASES))
_cases = backend_test.test_cases
for _case in _cases.values():
    for _name in [n for n in vars(_case) if n.startswith("test_")]:
        if not (_name.endswith("_cpu") and _wanted.search(_name)):
            delattr(_case, _name)
globals().update(_cases)


def test_included_case_count():
    pattern = re.compile("|".join(NORM_CASES))
    names = [name for case in backend_test.test_cases.values() for name in dir(case)
             if name.startswith("test_") and name.endswith("_cpu") and pattern.search(name)]
    assert len(names) == EXPECTED_CASES, sorted(names)


def test_backend_module_interface():
    assert normrt.backend.supports_device("CPU")
    assert not normrt.backend.supports_device("CUDA")
    assert isinstance(normrt.backend.NormrtBackend(), onnx.backend.base.Backend)


def test_backend_run_node_and_run_model():
    import numpy as np
    from onnx import TensorProto, helper

    x = np.random.default_rng(0).standard_normal((2, 6)).astype(np.float32)
    node = helper.make_node("LayerNormalization", ["x", "s"], ["y"], axis=-1)
    (y,) = normrt.backend.run_node(node, [x, np.ones(6, np.float32)])
    np.testing.assert_allclose(y.mean(axis=-1), 0, atol=1e-6)
    np.testing.assert_allclose(y.std(axis=-1), 1, atol=1e-3)
    graph = helper.make_graph([helper.make_node("LpNormalization", ["x"], ["y"], p=2)], "lp",
                              [helper.make_tensor_value_info("x", TensorProto.FLOAT, [2, 6])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, [2, 6])])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 22)])
    (y,) = normrt.backend.run_model(model, [x])
    np.testing.assert_allclose(np.linalg.norm(y, axis=-1), 1, rtol=1e-6)
    rep = normrt.backend.prepare(model)
    assert [k for _, k, _ in rep.session.kernel_nodes()] == ["LpNorm"]

"""Shared helpers of the tests of onnxruntime's contrib ops (com.microsoft domain): a model that
imports that domain, and the check that normrt rewrote every contrib node and matches onnxruntime,
which defines them."""
import numpy as np
from onnx import helper

import normrt

MS = "com.microsoft"


def contrib_model(nodes, inputs, outputs, inits=(), opset=17, ir_version=8):
    """A model of `nodes` importing the standard domain at `opset` and com.microsoft 1."""
    m = helper.make_model(helper.make_graph(nodes, "g", inputs, outputs, list(inits)),
                          opset_imports=[helper.make_opsetid("", opset), helper.make_opsetid(MS, 1)])
    m.ir_version = ir_version
    return m


def assert_matches_onnxruntime(m, feeds, ort_cpu_run, rtol=2e-5, atol=2e-5, **session_kwargs):
    """normrt's outputs of `m` against onnxruntime's (ort_cpu_run: tests/onnx/conftest.py's
    fixture); no com.microsoft node may remain in normrt's optimized model. Returns the
    optimized model's op types and normrt's outputs."""
    sess = normrt.InferenceSession(m.SerializeToString(), **session_kwargs)
    ops = {(n.domain, n.op_type) for n in sess.optimized_model.graph.node}
    assert not any(d == MS for d, _ in ops), ops
    got = sess.run(None, feeds)
    want = ort_cpu_run(m.SerializeToString(), feeds)
    assert len(got) == len(want)
    for g, w in zip(got, want):
        assert g.shape == w.shape and g.dtype == w.dtype, (g.shape, g.dtype, w.shape, w.dtype)
        np.testing.assert_allclose(g, w, rtol=rtol, atol=atol)
    return {op for _, op in ops}, got

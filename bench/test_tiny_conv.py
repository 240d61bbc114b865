"""bench.tiny_conv: each case's model agrees with onnx.reference, and the CLI prints one row per case."""
import re

import numpy as np
import pytest
from onnx.reference import ReferenceEvaluator

from bench import tiny_conv


@pytest.mark.parametrize("case", sorted(tiny_conv.CASES))
def test_case_models_run_like_the_reference(case):
    import normrt
    x_shape, w_shape, group, pads, strides = tiny_conv.CASES[case]
    model = tiny_conv.conv_model(x_shape, w_shape, group, pads, strides)
    x = np.random.default_rng(2).standard_normal(x_shape).astype(np.float32)
    want = ReferenceEvaluator(model).run(None, {"x": x})[0]
    got = normrt.InferenceSession(model, num_threads=1).run(None, {"x": x})[0]
    np.testing.assert_allclose(got, want, rtol=1e-4, atol=1e-4)


def test_one_row_per_case(capsys):
    assert tiny_conv.main(["--threads", "1", "--case", "trivial1x1", "depthwise7", "--repeat", "3",
                           "--blocks", "1"]) == 0
    rows = re.findall(r"^\| 1 \| (\w+) \| .* \| ([\d.]+) \| ([\d.]+) \| ([\d.]+)x \|$", capsys.readouterr().out, re.M)
    assert [r[0] for r in rows] == ["trivial1x1", "depthwise7"]

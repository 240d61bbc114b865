"""bench/transformer_compare.py's bookkeeping (no timing): op kinds, onnxruntime's profile, the table."""
import json

import numpy as np
import onnx
import pytest
from hypothesis import given
from hypothesis import strategies as st
from onnx import TensorProto, helper

from . import transformer_compare as tc

KNOWN = {
    "MatMul": "MatMul/Gemm", "Gemm": "MatMul/Gemm", "normrt::MatMul": "MatMul/Gemm",
    "com.microsoft::FusedMatMul": "MatMul/Gemm", "FusedMatMul": "MatMul/Gemm",
    "normrt::Attention": "attention", "com.microsoft::MultiHeadAttention": "attention", "Attention": "attention",
    "normrt::LayerNorm": "norms", "normrt::RMSNorm": "norms", "LayerNormalization": "norms",
    "SkipSimplifiedLayerNormalization": "norms", "RMSNormalization": "norms",
    "Softmax": "Softmax", "Add": "elementwise", "com.microsoft::FastGelu": "elementwise",
    "normrt::Elementwise": "elementwise", "Reshape": "other", "Transpose": "other", "Gather": "other",
}


@pytest.mark.parametrize("key", sorted(KNOWN))
def test_op_kind(key):
    assert tc.op_kind(key) == KNOWN[key]


def test_every_normrt_op_has_a_kind_that_is_not_other():
    from normrt.onnx.domain import NORM_OPS
    for op, spec in NORM_OPS.items():
        kind = tc.op_kind(f"normrt::{op}")
        assert kind != "other", op
        if spec.norm and not spec.compute_bound:
            assert kind == "norms", op


_keys = st.sampled_from(sorted(KNOWN) + ["Slice", "Concat", "Unknown::Op"])


@given(st.dictionaries(_keys, st.floats(0, 1, allow_nan=False)))
def test_by_kind_keeps_the_total_and_matches_a_direct_sum(per_op):
    kinds = tc.by_kind(per_op)
    assert list(kinds) == list(tc.KINDS)
    for kind in tc.KINDS:
        want = sum(s for k, s in per_op.items() if KNOWN.get(k, "other") == kind)
        assert kinds[kind] == pytest.approx(want)
    assert sum(kinds.values()) == pytest.approx(sum(per_op.values()))


@given(st.lists(st.tuples(st.sampled_from(["MatMul", "Add", "Softmax"]), st.integers(0, 10_000)), max_size=30),
       st.integers(1, 5))
def test_ort_profile_per_op_sums_kernel_times_only(nodes, runs):
    events = [{"cat": "Session", "name": "model_run", "dur": 999_999}]
    want = {}
    for i, (op, us) in enumerate(nodes):
        events.append({"cat": "Node", "name": f"n{i}_fence_before", "dur": 7, "args": {"op_name": op}})
        events.append({"cat": "Node", "name": f"n{i}_kernel_time", "dur": us, "args": {"op_name": op}})
        want[op] = want.get(op, 0.0) + us * 1e-6 / runs
    got = tc.ort_profile_per_op(events, runs)
    assert set(got) == set(want)
    for op in want:
        assert got[op] == pytest.approx(want[op])


def test_breakdown_rows_shares_and_table():
    rows = tc.breakdown_rows({"normrt::MatMul": 0.003, "normrt::LayerNorm": 0.001},
                             {"MatMul": 0.002, "LayerNormalization": 0.001, "Reshape": 0.001})
    by = {r[0]: r for r in rows}
    assert [r[0] for r in rows] == list(tc.KINDS) + ["total"]
    assert by["MatMul/Gemm"][1:] == pytest.approx((0.003, 0.75, 0.002, 0.5))
    assert by["other"][1:] == pytest.approx((0.0, 0.0, 0.001, 0.25))
    assert by["total"][1] == pytest.approx(0.004) and by["total"][3] == pytest.approx(0.004)
    lines = tc.format_breakdown(rows)
    assert len(lines) == 2 + len(rows)
    assert "| MatMul/Gemm | 3.000 | 75% | 2.000 | 50% | 1.50x |" in lines
    assert "| attention | 0.000 | 0% | 0.000 | 0% | - |" in lines


def test_profiles_of_a_real_model_cover_its_op_kinds(tmp_path):
    """Both profilers on a tiny graph (MatMul -> Softmax -> Add): every kind they report is the
    graph's, and onnxruntime's profile file is read back."""
    pytest.importorskip("onnxruntime")
    w = np.random.default_rng(0).standard_normal((8, 8)).astype(np.float32)
    graph = helper.make_graph(
        [helper.make_node("MatMul", ["x", "w"], ["h"]), helper.make_node("Softmax", ["h"], ["s"], axis=-1),
         helper.make_node("Add", ["s", "x"], ["y"])],
        "g", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [4, 8])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [4, 8])],
        [onnx.numpy_helper.from_array(w, "w")])
    path = tmp_path / "m.onnx"
    onnx.save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)]), path)
    feeds = {"x": np.ones((4, 8), np.float32)}
    normrt_ops, ort_ops = tc.profiles(path, feeds, threads=1, runs=2)
    for per_op in (normrt_ops, ort_ops):
        kinds = tc.by_kind(per_op)
        assert kinds["MatMul/Gemm"] > 0 and sum(kinds.values()) > 0
        assert {tc.op_kind(k) for k in per_op} <= {"MatMul/Gemm", "Softmax", "elementwise"}
    assert set(ort_ops) == {"MatMul", "Softmax", "Add"}


def test_resolve_finds_examples_and_paths_and_refuses_the_rest(tmp_path):
    assert tc.resolve("transformer_block", tmp_path).name == "transformer_block.onnx"
    p = tmp_path / "x.onnx"
    p.write_bytes(b"")
    assert tc.resolve(str(p), tmp_path) == p
    with pytest.raises(SystemExit, match="unknown model 'nope'"):
        tc.resolve("nope", tmp_path)


def test_ort_profile_events_round_trip_through_json():
    events = [{"cat": "Node", "name": "a_kernel_time", "dur": 1500, "args": {"op_name": "Gemm"}}]
    assert tc.ort_profile_per_op(json.loads(json.dumps(events)), 1) == pytest.approx({"Gemm": 0.0015})

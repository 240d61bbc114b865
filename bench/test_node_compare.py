"""bench.node_compare lines up normrt's and onnxruntime's convs by op and shapes (no timing assertions)."""
import re

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

from bench import node_compare


def _tiny_cnn(path):
    """x 1x3x12x12 -> Conv 3x3 (8) -> Relu -> zero Pad -> Conv 3x3 (8) + x' -> Relu
    -> Conv 1x1 (4): three convs, one with a residual, one behind a Pad."""
    rng = np.random.default_rng(0)

    def w(*shape):
        return numpy_helper.from_array(rng.standard_normal(shape).astype(np.float32) * 0.2, f"w{len(inits)}")
    inits = []
    for shape in ((8, 3, 3, 3), (8, 8, 3, 3), (4, 8, 1, 1)):
        inits.append(w(*shape))
    inits.append(numpy_helper.from_array(np.array([0, 0, 1, 1, 0, 0, 1, 1], np.int64), "pads"))
    nodes = [
        helper.make_node("Conv", ["x", "w0"], ["a"], name="c0", pads=[1, 1, 1, 1]),
        helper.make_node("Relu", ["a"], ["ar"]),
        helper.make_node("Pad", ["ar", "pads"], ["ap"]),
        helper.make_node("Conv", ["ap", "w1"], ["b"], name="c1"),
        helper.make_node("Add", ["b", "ar"], ["s"]),
        helper.make_node("Relu", ["s"], ["sr"]),
        helper.make_node("Conv", ["sr", "w2"], ["y"], name="c2"),
    ]
    graph = helper.make_graph(nodes, "tiny", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 3, 12, 12])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 4, 12, 12])], inits)
    onnx.save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)]), str(path))


def test_match_pairs_exact_shapes_then_padded_channels_then_weight_and_output():
    node = node_compare.ConvNode
    ours = [node("a", "Conv", (1, 3, 8, 8), (4, 3, 3, 3), (1, 4, 8, 8), [[2.0, 3.0]]),
            node("b", "Conv", (1, 4, 8, 8), (4, 4, 3, 3), (1, 4, 8, 8), [[1.0]]),       # its Pad folded in
            node("c", "ConvTranspose", (1, 4, 8, 8), (4, 2, 2, 2), (1, 2, 16, 16), [[5.0]]),
            node("d", "Conv", (1, 4, 8, 8), (8, 4, 1, 1), (1, 8, 8, 8), [[1.0]]),
            node("e", "Conv", (1, 4, 8, 8), (32, 4, 1, 1), (1, 32, 8, 8), [[1.0]])]
    theirs = [node("p", "Conv", (1, 3, 8, 8), (4, 3, 3, 3), (1, 4, 8, 8), [[1.0], [2.0]]),
              node("q", "Conv", (1, 4, 10, 10), (4, 4, 3, 3), (1, 4, 8, 8), [[0.5]]),
              node("r", "ConvTranspose", (1, 4, 8, 8), (4, 2, 2, 2), (1, 2, 16, 16), [[4.0]]),
              node("s", "Conv", (1, 4, 8, 8), (16, 4, 1, 1), (1, 16, 8, 8), [[0.25]]),   # NCHWc: M padded
              node("t", "Conv", (1, 4, 8, 8), (4, 4, 5, 5), (1, 4, 8, 8), [[1.0]])]
    rows, left_n, left_o = node_compare.match(ours, theirs)
    got = {(tuple(n.name for n in r.normrt), tuple(n.name for n in r.ort), r.how) for r in rows}
    assert got == {(("a",), ("p",), "exact"), (("b",), ("q",), "input differs"), (("c",), ("r",), "exact"),
                   (("d",), ("s",), "channels padded")}
    assert [n.name for n in left_n] == ["e"] and [n.name for n in left_o] == ["t"]
    # rows show normrt's shapes
    assert next(r for r in rows if r.how == "channels padded").w == (8, 4, 1, 1)
    # a node's time: the min over blocks of its block median
    assert ours[0].best == 2.5 and theirs[0].best == 1.0
    # sorted by time lost: a loses 1.5, c 1.0, d 0.75, b 0.5
    assert [r.normrt[0].name for r in rows] == ["a", "c", "d", "b"]
    assert [r.lost_s for r in rows] == [1.5, 1.0, 0.75, 0.5]


def test_ort_runs_split_node_events_by_model_run():
    events = [{"cat": "Session", "name": "model_run", "ts": 100, "dur": 50},
              {"cat": "Session", "name": "model_run", "ts": 200, "dur": 50},
              {"cat": "Node", "name": "c_fence_before", "ts": 110, "dur": 0},
              {"cat": "Node", "name": "c_kernel_time", "ts": 110, "dur": 30,
               "args": {"op_name": "FusedConv", "input_type_shape": [{"float": [1, 2, 4, 4]}, {"float": [3, 2, 1, 1]}],
                        "output_type_shape": [{"float": [1, 3, 4, 4]}]}},
              {"cat": "Node", "name": "r_kernel_time", "ts": 141, "dur": 5, "args": {"op_name": "ReorderOutput"}},
              {"cat": "Node", "name": "c_kernel_time", "ts": 205, "dur": 20,
               "args": {"op_name": "FusedConv", "input_type_shape": [{"float": [1, 2, 4, 4]}, {"float": [3, 2, 1, 1]}],
                        "output_type_shape": [{"float": [1, 3, 4, 4]}]}}]
    runs = node_compare.ort_runs(events)
    assert [[e["name"] for e in r] for r in runs] == [["c_kernel_time", "r_kernel_time"], ["c_kernel_time"]]
    convs, reorders, rest = node_compare.ort_convs(runs)
    assert len(convs) == 1 and convs[0].op == "Conv" and convs[0].w == (3, 2, 1, 1)
    np.testing.assert_allclose(convs[0].blocks, [[30e-6, 20e-6]])
    np.testing.assert_allclose(reorders, [5e-6, 0.0])
    np.testing.assert_allclose(rest, [0.0, 0.0])


def test_tiny_model_every_conv_matched(tmp_path, capsys):
    path = tmp_path / "tiny.onnx"
    _tiny_cnn(path)
    ours, theirs, other = node_compare.profile(path, threads=2, runs=2, blocks=2, pause=0.0)
    # normrt: the Relu and the residual Add fused into its convs; three convs either way
    assert len(ours) == 3 and len(theirs) == 3
    assert all(len(n.blocks) == 2 and len(n.blocks[0]) == 2 for n in ours + theirs)
    rows, left_n, left_o = node_compare.match(ours, theirs)
    assert not left_n and not left_o
    assert sorted((r.w, r.y) for r in rows) == [((4, 8, 1, 1), (1, 4, 12, 12)), ((8, 3, 3, 3), (1, 8, 12, 12)),
                                                ((8, 8, 3, 3), (1, 8, 12, 12))]
    assert all(len(r.normrt) == len(r.ort) == 1 for r in rows)
    assert set(other) == {"normrt other", "ort other", "ort reorders"}
    node_compare.report(rows, left_n, left_o, other)
    out = capsys.readouterr().out
    assert len(re.findall(r"^\| Conv \|", out, re.M)) == 3 and "matched total** | | | | 3 / 3" in out


def test_main_prints_the_table(tmp_path, capsys):
    path = tmp_path / "tiny.onnx"
    _tiny_cnn(path)
    assert node_compare.main([str(path), "--runs", "1", "--blocks", "1", "--pause-ms", "0"]) == 0
    out = capsys.readouterr().out
    assert out.startswith("tiny.onnx: 2 threads") and "| **matched total** |" in out

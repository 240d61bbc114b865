"""If, Loop and Scan nodes on normrt's executor (control_flow.py), their subgraphs rewritten by the passes
(optimize_branches.py): exported models wrapped as the branches of an If, their weights in the
outer scope, as Optimum's merged decoders hold a whole model twice; nested Ifs, branches reading
outer activations and handing them back; loops of M steps or stopped by their condition, with
carried values and scan outputs; scans over generated axes and directions; against the plain
model's outputs, onnx.reference and onnxruntime."""
import collections
import json
import sys
from pathlib import Path

import numpy as np
import onnx
import pytest
from hypothesis import given, settings, strategies as st
from onnx import TensorProto, helper, numpy_helper
from onnx.reference import ReferenceEvaluator

import normrt

REPO = Path(__file__).resolve().parents[2]
if str(REPO) not in sys.path:  # bench/ is a package at the repo root, not installed
    sys.path.insert(0, str(REPO))

from bench.if_branches import wrap_in_if  # noqa: E402

DATA = Path(__file__).parent.parent / "data"
FIXTURES = {e["file"]: e for e in json.loads((DATA / "fixtures.json").read_text())["fixtures"]}
WRAPPED = ["hf_llama__legacy17.onnx", "hf_bert__legacy17.onnx", "preln_block__dynamo18.onnx"]


@pytest.mark.parametrize("file", WRAPPED)
def test_an_exported_model_as_both_branches_fuses_and_matches(file):
    model = onnx.load(str(DATA / file))
    data = np.load(DATA / file.replace(".onnx", ".npz"))
    feeds = {k.removeprefix("input:"): v for k, v in data.items() if k.startswith("input:")}
    want = [data[f"output:{o.name}"] for o in model.graph.output]
    plain = normrt.InferenceSession(str(DATA / file))
    plain_ops = collections.Counter(n.op_type for n in plain.optimized_model.graph.node if n.domain == "normrt")
    merged = wrap_in_if(model)
    onnx.checker.check_model(merged)
    sess = normrt.InferenceSession(merged.SerializeToString())
    opt = sess.optimized_model
    onnx.checker.check_model(opt)
    for attr in opt.graph.node[0].attribute:
        # each branch fused as the plain model is
        ops = collections.Counter(n.op_type for n in attr.g.node if n.domain == "normrt")
        assert ops == plain_ops, (attr.name, ops, plain_ops)
    assert sess.executor.counts()["reference"] == 0
    _, report = normrt.optimize(merged, report=True)
    assert {e.get("branch") for e in report["fused"]} == {"merged/then_branch", "merged/else_branch"}
    for flag in (True, False):
        got = sess.run(None, dict(feeds, use_first=np.array(flag)))
        for g_, w in zip(got, want):
            np.testing.assert_allclose(g_, w, rtol=1e-4, atol=1e-4)


def _ln(prefix, x, out, w, b):
    """A written-out LayerNorm: ReduceMean, Sub, Mul, ReduceMean, Add eps, Sqrt, Div, Mul, Add."""
    p = prefix
    return [helper.make_node("ReduceMean", [x], [p + "m"], axes=[-1]), helper.make_node("Sub", [x, p + "m"], [p + "d"]),
            helper.make_node("Mul", [p + "d", p + "d"], [p + "d2"]),
            helper.make_node("ReduceMean", [p + "d2"], [p + "v"], axes=[-1]),
            helper.make_node("Add", [p + "v", "eps"], [p + "ve"]), helper.make_node("Sqrt", [p + "ve"], [p + "s"]),
            helper.make_node("Div", [p + "d", p + "s"], [p + "n"]), helper.make_node("Mul", [p + "n", w], [p + "nw"]),
            helper.make_node("Add", [p + "nw", b], [out])]


def nested_model(width, passthrough):
    """y = If(c1): then (If(c2): then LN(x @ W), else LN(relu(h))) where h = x + 1 computed outside;
    else Identity(h) (an outer activation handed back as it is, `passthrough`) or LN(h). z = Relu(y)."""
    f = TensorProto.FLOAT
    inner_then = helper.make_graph([helper.make_node("MatMul", ["x", "W"], ["a_h"])] + _ln("a_", "a_h", "a_y", "g", "b"),
                                   "inner_then", [], [helper.make_tensor_value_info("a_y", f, None)])
    inner_else = helper.make_graph([helper.make_node("Relu", ["h"], ["b_h"])] + _ln("b_", "b_h", "b_y", "g", "b"),
                                   "inner_else", [], [helper.make_tensor_value_info("b_y", f, None)])
    then_g = helper.make_graph([helper.make_node("If", ["c2"], ["t_y"], then_branch=inner_then,
                                                 else_branch=inner_else)],
                               "then", [], [helper.make_tensor_value_info("t_y", f, None)])
    else_nodes = [helper.make_node("Identity", ["h"], ["e_y"])] if passthrough else _ln("e_", "h", "e_y", "g", "b")
    else_g = helper.make_graph(else_nodes, "else", [], [helper.make_tensor_value_info("e_y", f, None)])
    rng = np.random.default_rng(width)
    inits = [numpy_helper.from_array(rng.standard_normal((width, width)).astype(np.float32), "W"),
             numpy_helper.from_array(rng.uniform(0.5, 1.5, width).astype(np.float32), "g"),
             numpy_helper.from_array(rng.standard_normal(width).astype(np.float32), "b"),
             numpy_helper.from_array(np.array(1e-5, np.float32), "eps"),
             numpy_helper.from_array(np.array(1.0, np.float32), "one")]
    nodes = [helper.make_node("Add", ["x", "one"], ["h"]),
             helper.make_node("If", ["c1"], ["y"], then_branch=then_g, else_branch=else_g),
             helper.make_node("Relu", ["y"], ["z"])]
    graph = helper.make_graph(nodes, "g", [helper.make_tensor_value_info("c1", TensorProto.BOOL, []),
                                           helper.make_tensor_value_info("c2", TensorProto.BOOL, []),
                                           helper.make_tensor_value_info("x", f, ["n", width])],
                              [helper.make_tensor_value_info("z", f, ["n", width]),
                               helper.make_tensor_value_info("h", f, ["n", width])], inits)
    m = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    m.ir_version = 8
    return m


@settings(max_examples=12, deadline=None)
@given(st.sampled_from([8, 33, 64]), st.booleans(), st.integers(1, 5), st.integers(0, 2 ** 16))
def test_nested_ifs_and_outer_activations(width, passthrough, rows, seed):
    m = nested_model(width, passthrough)
    sess = normrt.InferenceSession(m.SerializeToString())
    assert sess.executor.counts()["reference"] == 0
    assert sess.executor.counts()["kernel"] == 2 + (0 if passthrough else 1)       # each LN on the kernel
    ref = ReferenceEvaluator(m)
    x = np.random.default_rng(seed).standard_normal((rows, width)).astype(np.float32)
    for c1 in (True, False):
        for c2 in (True, False):
            feeds = {"c1": np.array(c1), "c2": np.array(c2), "x": x}
            got, want = sess.run(None, feeds), ref.run(None, feeds)
            for g_, w in zip(got, want):
                np.testing.assert_allclose(g_, w, rtol=1e-4, atol=1e-4)
            # h, handed back through the else branch, is still x + 1 after the Relu read y
            np.testing.assert_array_equal(got[1], x + np.float32(1))


def test_a_condition_of_more_than_one_value_is_refused():
    m = nested_model(8, True)
    m.graph.input[0].CopyFrom(helper.make_tensor_value_info("c1", TensorProto.BOOL, ["k"]))
    sess = normrt.InferenceSession(m.SerializeToString())
    with pytest.raises(ValueError, match="condition must hold one value"):
        sess.run(None, {"c1": np.array([True, False]), "c2": np.array(True),
                        "x": np.zeros((2, 8), np.float32)})


def test_inspect_lists_the_branch_fusions_with_their_dtypes(tmp_path, capsys):
    from normrt import cli
    path = tmp_path / "merged.onnx"
    onnx.save(wrap_in_if(onnx.load(str(DATA / "hf_llama__legacy17.onnx"))), str(path))
    assert cli.main(["inspect", str(path)]) == 0
    out = capsys.readouterr().out
    assert "normalizations on normrt kernels: 10" in out and "attention subgraphs on the fused kernel: 4" in out
    rows = [line for line in out.splitlines() if "__then" in line or "__else" in line]
    assert len(rows) == 26 and all(line.rstrip().endswith("float32 -> float32") for line in rows)


def test_a_branch_the_passes_cannot_take_runs_as_written(monkeypatch):
    """A failure optimizing a branch leaves that branch as written (reported), never the model unloaded."""
    from normrt.onnx import optimize_branches

    def broken(*args, **kwargs):
        raise RuntimeError("boom")
    monkeypatch.setattr(optimize_branches, "_optimize_branch", broken)
    m = nested_model(8, False)
    _, report = normrt.optimize(m, report=True)
    refused = [r for r in report["refused"] if r["pass"] == "optimize_branches"]
    assert len(refused) == 2 and "boom" in refused[0]["reason"]
    sess = normrt.InferenceSession(m.SerializeToString())
    x = np.random.default_rng(0).standard_normal((3, 8)).astype(np.float32)
    feeds = {"c1": np.array(False), "c2": np.array(True), "x": x}
    for g_, w in zip(sess.run(None, feeds), ReferenceEvaluator(m).run(None, feeds)):
        np.testing.assert_allclose(g_, w, rtol=1e-4, atol=1e-4)


def loop_model(width, trips, with_cond, n_scan):
    """h_{i+1} = LN(h_i @ W + x) (a written-out LayerNorm), carried; `with_cond`: the loop also
    stops once the step count reaches `limit` (an input); `n_scan` scan outputs: h_{i+1} and
    its row sums. Outputs: the final h, then the scans."""
    f = TensorProto.FLOAT
    nodes = [helper.make_node("MatMul", ["h_in", "W"], ["p"]), helper.make_node("Add", ["p", "x"], ["q"])]
    nodes += _ln("l_", "q", "h_out", "g", "b")
    nodes += [helper.make_node("Add", ["i", "one_i"], ["next_i"]),
              helper.make_node("Less", ["next_i", "limit"], ["cond_out"]) if with_cond
              else helper.make_node("Identity", ["cond_in"], ["cond_out"])]
    scan_outs = []
    if n_scan >= 1:
        nodes.append(helper.make_node("Identity", ["h_out"], ["scan_h"]))
        scan_outs.append(helper.make_tensor_value_info("scan_h", f, None))
    if n_scan >= 2:
        nodes.append(helper.make_node("ReduceSum", ["h_out", "axes"], ["scan_s"], keepdims=0))
        scan_outs.append(helper.make_tensor_value_info("scan_s", f, None))
    body = helper.make_graph(nodes, "body", [helper.make_tensor_value_info("i", TensorProto.INT64, []),
                                             helper.make_tensor_value_info("cond_in", TensorProto.BOOL, []),
                                             helper.make_tensor_value_info("h_in", f, ["n", width])],
                             [helper.make_tensor_value_info("cond_out", TensorProto.BOOL, []),
                              helper.make_tensor_value_info("h_out", f, ["n", width])] + scan_outs)
    rng = np.random.default_rng(width)
    inits = [numpy_helper.from_array((rng.standard_normal((width, width)) / np.sqrt(width)).astype(np.float32), "W"),
             numpy_helper.from_array(rng.uniform(0.5, 1.5, width).astype(np.float32), "g"),
             numpy_helper.from_array(rng.standard_normal(width).astype(np.float32), "b"),
             numpy_helper.from_array(np.array(1e-5, np.float32), "eps"),
             numpy_helper.from_array(np.array(1, np.int64), "one_i"),
             numpy_helper.from_array(np.array([1], np.int64), "axes"),
             numpy_helper.from_array(np.array(trips, np.int64), "trips"),
             numpy_helper.from_array(np.array(True), "go")]
    outs = ["h"] + [f"scan{k}" for k in range(n_scan)]
    loop = helper.make_node("Loop", ["trips", "go" if with_cond else "", "x"], outs, name="loop", body=body)
    graph = helper.make_graph([loop], "g", [helper.make_tensor_value_info("x", f, ["n", width]),
                                            helper.make_tensor_value_info("limit", TensorProto.INT64, [])],
                              [helper.make_tensor_value_info(o, f, None) for o in outs], inits)
    m = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    m.ir_version = 8
    return m


@settings(max_examples=15, deadline=None)
@given(st.sampled_from([8, 32]), st.integers(1, 6), st.booleans(), st.integers(0, 2), st.integers(0, 7),
       st.integers(1, 4), st.integers(0, 2 ** 16))
def test_loops_match_onnxruntime(ort_cpu_run, width, trips, with_cond, n_scan, limit, rows, seed):
    """Loops of M steps, or fewer when the body's condition stops them first, carried values and
    stacked scan outputs, the body's LayerNorm on the kernel; against onnxruntime (onnx.reference
    runs no iteration when the condition input is omitted, which the specification and
    onnxruntime read as a for loop of M steps)."""
    m = loop_model(width, trips, with_cond, n_scan)
    sess = normrt.InferenceSession(m.SerializeToString())
    assert sess.executor.counts()["kernel"] >= 1          # the body's LayerNorm
    feeds = {"x": np.random.default_rng(seed).standard_normal((rows, width)).astype(np.float32),
             "limit": np.array(limit, np.int64)}
    stops = min(trips, max(limit, 1)) if with_cond else trips
    got, want = sess.run(None, feeds), ort_cpu_run(m.SerializeToString(), feeds)
    for g_, w in zip(got, want):
        assert g_.shape == w.shape
        np.testing.assert_allclose(g_, w, rtol=1e-4, atol=1e-4)
    if n_scan:
        assert got[1].shape[0] == stops


def test_a_loop_of_no_step_falls_back_for_its_scan_shapes(ort_cpu_run):
    m = loop_model(8, 0, False, 1)
    sess = normrt.InferenceSession(m.SerializeToString())
    feeds = {"x": np.ones((2, 8), np.float32), "limit": np.array(3, np.int64)}
    got, want = sess.run(None, feeds), ort_cpu_run(m.SerializeToString(), feeds)
    np.testing.assert_array_equal(got[0], want[0])
    assert got[1].size == 0


def test_a_loop_without_trip_count_or_condition_is_refused_not_run_forever():
    m = loop_model(8, 3, False, 0)
    m.graph.node[0].input[0] = ""            # no M, no cond: the specification's endless loop
    sess = normrt.InferenceSession(m.SerializeToString())
    with pytest.raises(ValueError, match="neither a trip count nor a condition"):
        sess.run(None, {"x": np.ones((2, 8), np.float32), "limit": np.array(3, np.int64)})


def scan_model(width, n_state, n_in, n_out, in_axes, in_dirs, out_axes, out_dirs):
    """A Scan (opset 17) over n_in inputs x0.. whose slices are (n, width), their scan axis at
    in_axes (directions in_dirs), n_state states s0.. (n, width), n_out scan outputs (out_axes,
    out_dirs). Body: h = LN(x0 [+ x1]) (a written-out LayerNorm, weights outer constants),
    s_k' = s_k * 0.5 + h + bias (bias: an outer graph input), outputs y0 = tanh(h + s0'
    or h), y1 = h * h."""
    f = TensorProto.FLOAT
    nodes = [helper.make_node("Add", ["x0_t", "x1_t"], ["xs"]) if n_in == 2
             else helper.make_node("Identity", ["x0_t"], ["xs"])]
    nodes += _ln("l_", "xs", "h", "g", "b")
    for k in range(n_state):
        nodes += [helper.make_node("Mul", [f"s{k}_in", "half"], [f"s{k}_h"]),
                  helper.make_node("Add", [f"s{k}_h", "h"], [f"s{k}_a"]),
                  helper.make_node("Add", [f"s{k}_a", "bias"], [f"s{k}_out"])]
    if n_out >= 1:
        nodes += [helper.make_node("Add", ["h", "s0_out"], ["y0_p"]) if n_state
                  else helper.make_node("Identity", ["h"], ["y0_p"]), helper.make_node("Tanh", ["y0_p"], ["y0_t"])]
    if n_out >= 2:
        nodes.append(helper.make_node("Mul", ["h", "h"], ["y1_t"]))
    row = helper.make_tensor_value_info
    body = helper.make_graph(
        nodes, "scan_body",
        [row(f"s{k}_in", f, ["n", width]) for k in range(n_state)] + [row(f"x{j}_t", f, ["n", width]) for j in range(n_in)],
        [row(f"s{k}_out", f, ["n", width]) for k in range(n_state)] + [row(f"y{j}_t", f, ["n", width]) for j in range(n_out)])
    rng = np.random.default_rng(width)
    inits = [numpy_helper.from_array(rng.uniform(0.5, 1.5, width).astype(np.float32), "g"),
             numpy_helper.from_array(rng.standard_normal(width).astype(np.float32), "b"),
             numpy_helper.from_array(np.array(1e-5, np.float32), "eps"),
             numpy_helper.from_array(np.array(0.5, np.float32), "half")]
    attrs = dict(num_scan_inputs=n_in, scan_input_axes=in_axes, scan_input_directions=in_dirs)
    if n_out:
        attrs.update(scan_output_axes=out_axes, scan_output_directions=out_dirs)
    outs = [f"s{k}" for k in range(n_state)] + [f"y{j}" for j in range(n_out)]
    scan = helper.make_node("Scan", [f"s{k}_0" for k in range(n_state)] + [f"x{j}" for j in range(n_in)], outs,
                            name="scan", body=body, **attrs)
    graph = helper.make_graph([scan], "g",
                              [row(f"s{k}_0", f, None) for k in range(n_state)]
                              + [row(f"x{j}", f, None) for j in range(n_in)] + [row("bias", f, [width])],
                              [row(o, f, None) for o in outs], inits)
    m = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    m.ir_version = 8
    return m


def _scan_feeds(rng, rows, width, steps, n_state, in_axes):
    feeds = {f"s{k}_0": rng.standard_normal((rows, width)).astype(np.float32) for k in range(n_state)}
    for j, a in enumerate(in_axes):
        shape = [rows, width]
        shape.insert(a % 3, steps)
        feeds[f"x{j}"] = rng.standard_normal(shape).astype(np.float32)
    feeds["bias"] = rng.standard_normal(width).astype(np.float32)
    return feeds


@settings(max_examples=25, deadline=None)
@given(st.sampled_from([8, 32]), st.integers(0, 2), st.integers(1, 2), st.integers(0, 2), st.integers(1, 5),
       st.integers(1, 3), st.data())
def test_scans_match_onnxruntime(ort_cpu_run, width, n_state, n_in, n_out, steps, rows, data):
    """Scans of 0-2 states, 1-2 scan inputs and 0-2 scan outputs on generated axes (negative ones
    included) and directions, the body's LayerNorm on the kernel and nothing on onnx.reference;
    against onnxruntime, and onnx.reference where it runs them (it refuses other axes than 0 and
    reverse directions: normrt's fallback to it could not run such a Scan at all)."""
    if n_state + n_out == 0:
        n_out = 1
    in_axes = data.draw(st.lists(st.integers(-3, 2), min_size=n_in, max_size=n_in))
    in_dirs = data.draw(st.lists(st.integers(0, 1), min_size=n_in, max_size=n_in))
    out_axes = data.draw(st.lists(st.integers(-3, 2), min_size=n_out, max_size=n_out))
    out_dirs = data.draw(st.lists(st.integers(0, 1), min_size=n_out, max_size=n_out))
    m = scan_model(width, n_state, n_in, n_out, in_axes, in_dirs, out_axes, out_dirs)
    sess = normrt.InferenceSession(m.SerializeToString())
    assert sess.executor.counts()["reference"] == 0
    assert sess.executor.counts()["kernel"] >= 1          # the body's LayerNorm
    feeds = _scan_feeds(np.random.default_rng(data.draw(st.integers(0, 2 ** 16))), rows, width, steps, n_state,
                        in_axes)
    got = sess.run(None, feeds)
    wants = [ort_cpu_run(m.SerializeToString(), feeds)]
    if not any(in_axes + in_dirs + out_axes + out_dirs):
        wants.append(ReferenceEvaluator(m).run(None, feeds))    # (onnx.reference: axes 0, forward only)
    for want in wants:
        for g_, w in zip(got, want):
            assert g_.shape == w.shape
            np.testing.assert_allclose(g_, w, rtol=1e-4, atol=1e-4)
    assert all(np.array_equal(a, b) for a, b in zip(got, sess.run(None, feeds)))


def test_a_scan_of_no_element_and_bad_axes():
    m = scan_model(8, 1, 1, 1, [0], [0], [0], [0])
    sess = normrt.InferenceSession(m.SerializeToString())
    feeds = _scan_feeds(np.random.default_rng(0), 2, 8, 0, 1, [0])
    got = sess.run(None, feeds)       # (onnxruntime 1.x fails on a scan axis of 0)
    np.testing.assert_array_equal(got[0], feeds["s0_0"])                  # the initial state
    assert got[1].shape == (0, 2, 8) and got[1].dtype == np.float32       # no element of (2, 8)
    feeds["x0"] = np.ones((3, 2, 8), np.float32)
    bad = scan_model(8, 1, 1, 1, [3], [0], [0], [0])
    with pytest.raises(ValueError, match="Scan node 'scan': scan_input_axes: axis 3 is out of range for rank 3"):
        normrt.InferenceSession(bad.SerializeToString()).run(None, feeds)
    two = scan_model(8, 0, 2, 1, [0, 0], [0, 0], [0], [0])
    feeds2 = {"x0": np.ones((3, 2, 8), np.float32), "x1": np.ones((4, 2, 8), np.float32),
              "bias": np.zeros(8, np.float32)}
    with pytest.raises(ValueError, match="scan axes differ in length"):
        normrt.InferenceSession(two.SerializeToString()).run(None, feeds2)


@pytest.mark.parametrize("break_it,match", [
    (lambda n: setattr(next(a for a in n.attribute if a.name == "num_scan_inputs"), "i", 5),
     "num_scan_inputs must be 1..2"),
    (lambda n: n.input.append("x0"), "its body takes 2 inputs"),
    (lambda n: next(a for a in n.attribute if a.name == "scan_input_directions").ints.__setitem__(0, 2),
     "scan_input_directions must hold 0"),
])
def test_a_malformed_scan_is_a_model_error_naming_it(break_it, match):
    m = scan_model(8, 1, 1, 1, [0], [0], [0], [0])
    break_it(m.graph.node[0])
    with pytest.raises(normrt.ModelError, match=f"Scan node 'scan'.*{match}"):
        normrt.InferenceSession(m.SerializeToString())


MERGED = DATA / "merged_decoder" / "decoder_model_merged.onnx"


@pytest.mark.parametrize("batch,padded", [(1, False), (2, False), (2, True)])
def test_an_optimum_merged_decoder_generates_as_onnxruntime(ort_cpu_run, batch, padded):
    """Optimum's merge_decoders output (scripts/make_merged_decoder.py): a prompt on the no-cache
    branch, then decode steps on the cache branch, each runtime feeding its own present K/V back;
    both branches fused as their plain exports are (the attention's masked_fill with finfo.min
    included), nothing on onnx.reference. padded: the first row's prompt left-padded by 2 tokens,
    whose query rows see no key (softmax of finfo.min throughout: the mean of V, not zeros)."""
    import onnxruntime as ort
    sess = normrt.InferenceSession(str(MERGED))
    assert sess.executor.counts()["reference"] == 0
    for attr in sess.optimized_model.graph.node[0].attribute:
        ops = collections.Counter(n.op_type for n in attr.g.node if n.domain == "normrt")
        assert ops["LayerNorm"] == 5, (attr.name, ops)          # 2 blocks x 2 + the final one
        assert ops["Attention"] == 2, (attr.name, ops)
    reference = ort.InferenceSession(str(MERGED), providers=["CPUExecutionProvider"])
    names = [i.name for i in reference.get_inputs() if i.name.startswith("past_key_values.")]
    rng = np.random.default_rng(batch)
    ids, length = rng.integers(0, 64, (batch, 6)).astype(np.int64), 6
    pasts = [{n: np.zeros((batch, 4, 0, 8), np.float32) for n in names} for _ in range(2)]
    pad = np.zeros((batch, 0), np.int64) if not padded else np.array([[0, 0], [1, 1]], np.int64)
    for step in range(5):
        mask = np.concatenate([pad, np.ones((batch, length - pad.shape[1]), np.int64)], axis=1)
        feeds = [dict(p, input_ids=ids, attention_mask=mask,
                      use_cache_branch=np.array([step > 0])) for p in pasts]
        got, want = sess.run(None, feeds[0]), reference.run(None, feeds[1])
        for g_, w in zip(got, want):
            np.testing.assert_allclose(g_, w, rtol=1e-4, atol=1e-5, err_msg=f"step {step}")
        pasts = [dict(zip(names, got[1:])), dict(zip(names, want[1:]))]
        ids = want[0][:, -1:].argmax(-1).astype(np.int64)
        length += 1

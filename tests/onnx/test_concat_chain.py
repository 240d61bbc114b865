"""Channel Concat chains growing one buffer (normrt.onnx.concat_chain) vs onnx.reference."""
import numpy as np
import pytest
from onnx import TensorProto, helper
from onnx.reference import ReferenceEvaluator

import normrt
from normrt.onnx.concat_chain import GrowingConcat, concat_chains

RNG = np.random.default_rng(11)


def model_of(nodes, inputs, outputs, opset=17):
    graph = helper.make_graph(
        nodes, "g", [helper.make_tensor_value_info(k, TensorProto.FLOAT, list(v.shape)) for k, v in inputs.items()],
        [helper.make_tensor_value_info(o, TensorProto.FLOAT, ["n", "c", "h", "w"]) for o in outputs])
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", opset)])


def run_both(nodes, inputs, outputs, threads=2):
    model = model_of(nodes, inputs, outputs)
    sess = normrt.InferenceSession(model, num_threads=threads)
    got = sess.run(None, inputs)
    want = ReferenceEvaluator(model).run(None, inputs)
    return sess, got, want


def dense_block(layers, growth=3, axis=1):
    """x0 -> [y_i = Sigmoid(Slice(x_{i-1}, channels i-1 .. i-1+growth)) * (i+1); x_i = Concat(x_{i-1}, y_i)]."""
    nodes, consts, x = [], [helper.make_node("Constant", [], ["ax"], value_ints=[1])], "x0"
    for i in range(1, layers + 1):
        nodes += [
            helper.make_node("Slice", [x, f"s{i}", f"e{i}", "ax"], [f"sl{i}"]),
            helper.make_node("Sigmoid", [f"sl{i}"], [f"sg{i}"]),
            helper.make_node("Mul", [f"sg{i}", f"k{i}"], [f"y{i}"]),
            helper.make_node("Concat", [x, f"y{i}"], [f"x{i}"], axis=axis),
        ]
        consts += [helper.make_node("Constant", [], [f"s{i}"], value_ints=[i - 1]),
                   helper.make_node("Constant", [], [f"e{i}"], value_ints=[i - 1 + growth]),
                   helper.make_node("Constant", [], [f"k{i}"], value_float=float(i + 1))]
        x = f"x{i}"
    return consts + nodes, x


def growing(sess):
    return sum(isinstance(s.run, GrowingConcat) for s in sess.executor.steps)


@pytest.mark.parametrize("threads", [1, 2])
@pytest.mark.parametrize("shape", [(1, 4, 5, 7), (1, 3, 1, 1), (1, 6, 16, 16)])
def test_dense_block_matches_reference(shape, threads):
    nodes, last = dense_block(6)
    x0 = RNG.standard_normal(shape).astype(np.float32)
    keep = x0.copy()
    sess, got, want = run_both(nodes, {"x0": x0}, [last, "x2", "x4"], threads)
    assert growing(sess) == 6
    for g, w in zip(got, want):
        assert g.shape == w.shape and g.flags.c_contiguous
        np.testing.assert_allclose(g, w, rtol=1e-6, atol=1e-7)
    np.testing.assert_array_equal(x0, keep)                  # the caller's array is copied, never grown
    # every block tensor is a prefix of the first Concat's buffer: one allocation, no re-copies
    assert got[0].base is got[1].base is got[2].base


def test_repeated_runs_and_views_of_earlier_outputs_stay_intact():
    nodes, last = dense_block(4)
    x0 = RNG.standard_normal((1, 5, 4, 4)).astype(np.float32)
    model = model_of(nodes, {"x0": x0}, [last, "x1"])
    sess = normrt.InferenceSession(model)
    first = sess.run(None, {"x0": x0})
    saved = [a.copy() for a in first]
    second = sess.run(None, {"x0": x0 * 2})
    for a, b in zip(first, saved):
        np.testing.assert_array_equal(a, b)                  # a later run never writes the earlier buffers
    want = ReferenceEvaluator(model).run(None, {"x0": x0 * 2})
    for g, w in zip(second, want):
        np.testing.assert_allclose(g, w, rtol=1e-6, atol=1e-7)
    # an output fed back as the chain's start: copied into a fresh buffer, the caller's untouched
    again = sess.run(None, {"x0": np.ascontiguousarray(first[1][:, :5])})
    np.testing.assert_array_equal(first[1], saved[1])
    np.testing.assert_allclose(again[0], ReferenceEvaluator(model).run(None, {"x0": first[1][:, :5].copy()})[0],
                               rtol=1e-6, atol=1e-7)


def test_branch_extending_the_same_tensor_twice_gets_its_own_buffer():
    # x1 is the first input of two Concats: the second cannot write past x1 into x2's channels
    x0, a, b = (RNG.standard_normal(s).astype(np.float32) for s in ((1, 3, 4, 4), (1, 2, 4, 4), (1, 5, 4, 4)))
    nodes = [helper.make_node("Relu", ["x0"], ["r"]),
             helper.make_node("Concat", ["r", "a"], ["x1"], axis=1),
             helper.make_node("Concat", ["x1", "a"], ["x2"], axis=1),
             helper.make_node("Concat", ["x1", "b"], ["x3"], axis=1),
             helper.make_node("Concat", ["x2", "b", "a"], ["x4"], axis=1),
             helper.make_node("Neg", ["x3"], ["n3"])]
    sess, got, want = run_both(nodes, {"x0": x0, "a": a, "b": b}, ["x2", "x3", "x4", "n3", "x1"])
    assert growing(sess) == 4
    for g, w in zip(got, want):
        np.testing.assert_array_equal(g, w)


def test_in_place_ops_after_the_chain_do_not_corrupt_it():
    # Relu/Add may write into an input that dies with them: a block tensor must not be one
    # while a longer view of its buffer is still read
    x0, y = RNG.standard_normal((1, 4, 3, 3)).astype(np.float32), RNG.standard_normal((1, 2, 3, 3)).astype(np.float32)
    nodes = [helper.make_node("Constant", [], ["st"], value_ints=[0]),
             helper.make_node("Constant", [], ["en"], value_ints=[4]),
             helper.make_node("Constant", [], ["ax"], value_ints=[1]),
             helper.make_node("Sigmoid", ["x0"], ["s"]),
             helper.make_node("Concat", ["s", "y"], ["x1"], axis=1),
             helper.make_node("Concat", ["x1", "y"], ["x2"], axis=1),
             helper.make_node("Slice", ["x2", "st", "en", "ax"], ["head"]),
             helper.make_node("Relu", ["head"], ["r"]),           # head dies here, x2 is read after
             helper.make_node("Concat", ["x2", "y"], ["x3"], axis=1),
             helper.make_node("Add", ["x3", "x3"], ["z"]),
             helper.make_node("Concat", ["r", "y"], ["w"], axis=1)]
    sess, got, want = run_both(nodes, {"x0": x0, "y": y}, ["z", "w", "x1"])
    for g, w in zip(got, want):
        np.testing.assert_allclose(g, w, rtol=1e-6, atol=1e-7)     # Sigmoid: a few ulp apart


@pytest.mark.parametrize("case", ["batch2", "axis2", "axis-3", "mixed_hw", "float64"])
def test_other_concats_fall_back_or_match(case):
    shape = (2, 4, 5, 5) if case == "batch2" else (1, 4, 5, 5)
    nodes, last = dense_block(3, axis=-3 if case == "axis-3" else 1)
    x0 = RNG.standard_normal(shape).astype(np.float32)
    if case == "axis2":      # not channels: a plain Concat
        nodes = [helper.make_node("Concat", ["x0", "x0"], ["c1"], axis=2),
                 helper.make_node("Concat", ["c1", "x0"], ["c2"], axis=2)]
        last = "c2"
    if case == "mixed_hw":   # an input of another spatial size: np.concatenate's own error (bad model)
        nodes = [helper.make_node("Concat", ["x0", "x0"], ["c1"], axis=1),
                 helper.make_node("Concat", ["c1", "z"], ["c2"], axis=1)]
        model = model_of(nodes, {"x0": x0, "z": RNG.standard_normal((1, 2, 5, 6)).astype(np.float32)}, ["c2"])
        sess = normrt.InferenceSession(model)
        with pytest.raises(ValueError):
            sess.run(None, {"x0": x0, "z": RNG.standard_normal((1, 2, 5, 6)).astype(np.float32)})
        return
    if case == "float64":    # dtypes differ from the buffer's: a plain Concat
        nodes = [helper.make_node("Concat", ["x0", "x0"], ["c1"], axis=1),
                 helper.make_node("Cast", ["c1"], ["d"], to=TensorProto.DOUBLE),
                 helper.make_node("Concat", ["d", "d"], ["c2"], axis=1),
                 helper.make_node("Cast", ["c2"], ["out"], to=TensorProto.FLOAT)]
        last = "out"
    sess, got, want = run_both(nodes, {"x0": x0}, [last])
    np.testing.assert_allclose(got[0], want[0], rtol=1e-6, atol=1e-7)


def test_chain_lengths():
    nodes, _ = dense_block(5)
    concats = [n for n in nodes if n.op_type == "Concat"]
    chains = concat_chains(concats)
    assert chains == {0: 4, 1: 3, 2: 2, 3: 1, 4: 0}
    lone = [helper.make_node("Concat", ["a", "b"], ["c"], axis=1)]
    assert concat_chains(lone) == {}                        # a single Concat: left as it is


@pytest.mark.parametrize("name", ["densenet121", "inception_v1"])
def test_light_models_same_bits_as_plain_concat(name):
    # every dense block of light_densenet121 grows one buffer; Inception's one-off Concats
    # (no chains) stay plain. Same bits either way.
    import os

    import onnx
    path = os.path.join(os.path.dirname(onnx.__file__), "backend", "test", "data", "light", f"light_{name}.onnx")
    sess = normrt.InferenceSession(path)
    inp = sess.get_inputs()[0]
    x = RNG.standard_normal([int(d) for d in inp.shape]).astype(np.float32)
    seen = []                      # every Concat's result, copied (the model's output is a constant)

    def recording(run):
        def rec(args, values):
            outs = run(args, values)
            seen.append([o.copy() for o in outs])
            return outs
        rec.kind = run.kind
        return rec

    assert growing(sess) == (58 if name == "densenet121" else 0)
    concats = [s for s in sess.executor.steps if s.key == "Concat"]
    bound = [s.run for s in concats]
    for step, run in zip(concats, bound):
        step.run = recording(run)
    sess.executor.rebind()
    grown = sess.run(None, {inp.name: x})[0]
    grown_seen, seen = seen, []
    for step, run in zip(concats, bound):     # now the plain np.concatenate
        step.run = recording(run.inner if isinstance(run, GrowingConcat) else run)
    sess.executor.rebind()
    assert np.array_equal(grown, sess.run(None, {inp.name: x})[0])
    assert len(seen) == len(grown_seen) > 0
    for a, b in zip(grown_seen, seen):
        assert all(np.array_equal(u, v) for u, v in zip(a, b))

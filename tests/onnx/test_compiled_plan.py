"""The compiled plans (onnx/compiled.py, fast_steps.py): the plan specialized to the input
shapes gives bitwise the generic plan's results, a new shape after specialization still runs
correctly, and reused buffers never leak into returned outputs."""
import glob
import os
import re

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from onnx import TensorProto, helper, numpy_helper
from onnx.reference import ReferenceEvaluator

import normrt

DATA = os.path.join(os.path.dirname(__file__), os.pardir, "data")


def _one_per_family():
    seen, out = set(), []
    for path in sorted(glob.glob(os.path.join(DATA, "*.onnx"))):
        family = os.path.basename(path).split("__")[0]
        if family not in seen:
            seen.add(family)
            out.append(path)
    return out


def _generic_and_specialized(sess, feeds):
    ex = sess.executor
    generic = ex.run(feeds, specialize=False)
    first = sess.run(None, feeds)           # traced: builds the specialized plan
    second = sess.run(None, feeds)          # the specialized plan
    return generic, first, second


@pytest.mark.parametrize("path", _one_per_family(), ids=lambda p: os.path.basename(p)[:-5])
def test_fixture_models_specialized_bitwise_generic(path):
    data = np.load(path[:-5] + ".npz")
    sess = normrt.InferenceSession(path)
    feeds = {k[len("input:"):]: data[k] for k in data.files if k.startswith("input:")}
    generic, first, second = _generic_and_specialized(sess, feeds)
    assert sess.executor.specialized, "a fixed-shape model gets a specialized plan"
    for g, a, b in zip(generic, first, second):
        assert g.dtype == b.dtype and g.shape == b.shape
        assert np.array_equal(g, a, equal_nan=True) and np.array_equal(g, b, equal_nan=True)


# ------------------------------------------------------------ generated graphs
def _graph_from_ops(ops, width, rng):
    """A chain over x (batch, width) of the listed ops; the batch dim is symbolic."""
    nodes, inits = [], []
    cur, n = "x", 0

    def fresh():
        nonlocal n
        n += 1
        return f"t{n}"

    def const(arr):
        name = f"c{len(inits)}"
        inits.append(numpy_helper.from_array(np.asarray(arr), name))
        return name

    for op in ops:
        out = fresh()
        if op in ("Add", "Mul", "Sub", "Div"):
            c = rng.uniform(0.5, 1.5, (width,)).astype(np.float32)
            nodes.append(helper.make_node(op, [cur, const(c)], [out]))
        elif op in ("Relu", "Sigmoid", "Neg", "Tanh", "Abs"):
            nodes.append(helper.make_node(op, [cur], [out]))
        elif op == "MatMul":
            w = (rng.standard_normal((width, width)) / np.sqrt(width)).astype(np.float32)
            nodes.append(helper.make_node("MatMul", [cur, const(w)], [out]))
        elif op == "Gemm":                  # GPT-2's Conv1D: Gemm with B transposed and a bias C
            w = (rng.standard_normal((width, width)) / np.sqrt(width)).astype(np.float32)
            nodes.append(helper.make_node("Gemm", [cur, const(w), const(rng.standard_normal(width).astype(np.float32))],
                                          [out], transB=int(rng.integers(0, 2)), beta=float(rng.choice([1.0, 0.5]))))
        elif op == "Softmax":
            nodes.append(helper.make_node("Softmax", [cur], [out], axis=-1))
        elif op == "ReshapeViaShape":       # Shape -> Gather -> Concat -> Reshape (b, 2, w/2) -> back
            s, g, cat, mid = fresh(), fresh(), fresh(), fresh()
            nodes += [helper.make_node("Shape", [cur], [s]),
                      helper.make_node("Gather", [s, const(np.array([0], np.int64))], [g], axis=0),
                      helper.make_node("Concat", [g, const(np.array([2, width // 2], np.int64))], [cat], axis=0),
                      helper.make_node("Reshape", [cur, cat], [mid]),
                      helper.make_node("Transpose", [mid], [fresh()], perm=[0, 2, 1])]
            tr = f"t{n}"
            nodes.append(helper.make_node("Reshape", [tr, const(np.array([0, -1], np.int64))], [out]))
        elif op == "SliceConcat":           # rotary-style halves swapped
            a, b = fresh(), fresh()
            h = width // 2
            nodes += [helper.make_node("Slice", [cur, const(np.array([0], np.int64)),
                                                 const(np.array([h], np.int64)), const(np.array([1], np.int64))], [a]),
                      helper.make_node("Slice", [cur, const(np.array([h], np.int64)),
                                                 const(np.array([width], np.int64)), const(np.array([1], np.int64))], [b]),
                      helper.make_node("Concat", [b, a], [out], axis=1)]
        elif op == "PowExpand":             # x ** 2 (tanh-GELU's form), Expand to x's shape (repeat_kv's)
            sq = fresh()
            nodes += [helper.make_node("Pow", [cur, const(np.array(2.0, np.float32))], [sq]),
                      helper.make_node("Expand", [cur, const(np.array([1, width], np.int64))], [fresh()])]
            nodes.append(helper.make_node("Add", [sq, f"t{n}"], [out]))
        elif op == "UnsqueezeSqueeze":
            mid = fresh()
            nodes += [helper.make_node("Unsqueeze", [cur, const(np.array([1], np.int64))], [mid]),
                      helper.make_node("Squeeze", [mid, const(np.array([1], np.int64))], [out])]
        cur = out
    nodes.append(helper.make_node("Identity", [cur], ["y"]))
    graph = helper.make_graph(nodes, "generated", [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["b", width])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["b", width])], inits)
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])


OPS = ["Add", "Mul", "Sub", "Div", "Relu", "Sigmoid", "Neg", "Tanh", "Abs", "MatMul", "Gemm", "Softmax",
       "ReshapeViaShape", "SliceConcat", "UnsqueezeSqueeze", "PowExpand"]


@settings(max_examples=25, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(ops=st.lists(st.sampled_from(OPS), min_size=1, max_size=12), batch=st.integers(1, 5),
       batch2=st.integers(1, 5), seed=st.integers(0, 2 ** 16))
def test_generated_graphs_specialized_bitwise_and_new_shapes(ops, batch, batch2, seed):
    rng = np.random.default_rng(seed)
    width = 8
    model = _graph_from_ops(ops, width, rng)
    sess = normrt.InferenceSession(model)
    ref = ReferenceEvaluator(model)
    for b in (batch, batch2, batch):           # a new shape after specialization, then the first again
        x = rng.standard_normal((b, width)).astype(np.float32)
        generic, first, second = _generic_and_specialized(sess, {"x": x})
        assert np.array_equal(generic[0], first[0]) and np.array_equal(generic[0], second[0])
        np.testing.assert_allclose(second[0], ref.run(None, {"x": x})[0], rtol=1e-5, atol=1e-5)
    assert len(sess.executor.specialized) == len({batch, batch2})


def test_returned_outputs_are_never_reused_buffers():
    """An output that is a view (Reshape) of an Add result: later runs must not write into it."""
    c = numpy_helper.from_array(np.ones((1, 6), np.float32), "c")
    shape = numpy_helper.from_array(np.array([2, 3], np.int64), "s")
    nodes = [helper.make_node("Add", ["x", "c"], ["a"]), helper.make_node("Reshape", ["a", "s"], ["y"]),
             helper.make_node("Mul", ["x", "c"], ["z"])]
    graph = helper.make_graph(nodes, "g", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 6])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, [2, 3]),
                               helper.make_tensor_value_info("z", TensorProto.FLOAT, [1, 6])], [c, shape])
    sess = normrt.InferenceSession(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)]))
    outs = [sess.run(None, {"x": np.full((1, 6), float(i), np.float32)}) for i in range(4)]
    for i, (y, z) in enumerate(outs):
        assert np.array_equal(y, np.full((2, 3), i + 1.0, np.float32))
        assert np.array_equal(z, np.full((1, 6), float(i), np.float32))


def test_data_dependent_shapes_stay_generic():
    """NonZero's output shape depends on the data: no specialized plan, correct results."""
    nodes = [helper.make_node("NonZero", ["x"], ["nz"]), helper.make_node("Shape", ["nz"], ["y"])]
    graph = helper.make_graph(nodes, "g", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [4])],
                              [helper.make_tensor_value_info("y", TensorProto.INT64, [2])])
    sess = normrt.InferenceSession(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)]))
    for k in (1, 3, 0, 4):
        x = np.zeros(4, np.float32)
        x[:k] = 1
        assert sess.run(None, {"x": x})[0].tolist() == [1, k]
    assert not sess.executor.specialized


def test_errors_name_the_node_in_compiled_plans():
    """An exception inside the compiled code still names the node that raised."""
    nodes = [helper.make_node("Relu", ["x"], ["r"], name="first"),
             helper.make_node("MatMul", ["r", "w"], ["y"], name="the_matmul")]
    graph = helper.make_graph(nodes, "g", [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["b", 3])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["b", 2])],
                              [numpy_helper.from_array(np.ones((4, 2), np.float32), "w")])
    sess = normrt.InferenceSession(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)]))
    for run in (lambda f: sess.run(None, f), lambda f: sess.executor.run(f, specialize=False)):   # traced, compiled
        with pytest.raises(Exception) as info:
            run({"x": np.ones((2, 3), np.float32)})
        assert any("the_matmul" in note for note in getattr(info.value, "__notes__", []))


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.lists(st.integers(1, 5), min_size=1, max_size=4), st.integers(1, 4), st.sampled_from(["box", "rows", "negative"]),
       st.integers(0, 2**31 - 1))
def test_constant_scatter_nd_specialized(shape, q, form, seed):
    """ScatterND by constant indices (RWKV's `shifted[:, 0] = state`, written into a Pad's output):
    the specialized plan's prepared assignment (slices for a box, index arrays otherwise) gives the
    generic op's values and onnx.reference's."""
    rng = np.random.default_rng(seed)
    shape = tuple(shape)
    q = min(q, len(shape))
    if form == "box":        # a row-major box of index rows (x[a:b, c:d] = ...)
        lo = [int(rng.integers(0, d)) for d in shape[:q]]
        hi = [int(rng.integers(l, d)) + 1 for l, d in zip(lo, shape[:q])]
        grid = np.stack(np.meshgrid(*(np.arange(l, h) for l, h in zip(lo, hi)), indexing="ij"), -1)
        ids = grid.reshape(grid.shape[:-1] + (q,))
    else:                    # distinct rows in any order, some written as negative indices
        cells = np.stack(np.unravel_index(np.arange(int(np.prod(shape[:q]))), shape[:q]), -1)
        pick = rng.permutation(len(cells))[:int(rng.integers(1, len(cells) + 1))]
        ids = cells[pick]
        if form == "negative":
            ids = np.where(rng.random(ids.shape) < 0.5, ids - np.array(shape[:q]), ids)
    ids = ids.astype(np.int64)
    upd_shape = ids.shape[:-1] + shape[q:]
    nodes = [helper.make_node("Relu", ["x"], ["r"]),
             helper.make_node("ScatterND", ["r", "ids", "u"], ["s"]),
             helper.make_node("Neg", ["s"], ["y"])]
    graph = helper.make_graph(nodes, "g", [helper.make_tensor_value_info("x", TensorProto.FLOAT, shape),
                                           helper.make_tensor_value_info("u", TensorProto.FLOAT, upd_shape)],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, shape)],
                              [numpy_helper.from_array(ids, "ids")])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 16)])
    model.ir_version = 8
    feeds = {"x": rng.standard_normal(shape).astype(np.float32), "u": rng.standard_normal(upd_shape).astype(np.float32)}
    sess = normrt.InferenceSession(model)
    generic, first, second = _generic_and_specialized(sess, feeds)
    assert sess.executor.specialized
    want = ReferenceEvaluator(model).run(None, feeds)[0]
    for got in (generic[0], first[0], second[0]):
        assert np.array_equal(got, want)


@pytest.mark.parametrize("approximate", ["none", "tanh"])
@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_gelu_op_is_the_activation_kernel(approximate, dtype):
    """Opset 20's Gelu after a Transpose (dynamo's PVTv2 / SegFormer Mix-FFN: no epilogue reaches it)
    runs the activation kernel, generic and specialized alike: normrt.activate's bits, and within a
    few ulp of the float64 formula."""
    from math import erf, sqrt, tanh, pi
    elem = TensorProto.FLOAT if dtype == np.float32 else TensorProto.DOUBLE
    nodes = [helper.make_node("Transpose", ["x"], ["t"], perm=[0, 2, 1]),
             helper.make_node("Gelu", ["t"], ["y"], approximate=approximate)]
    graph = helper.make_graph(nodes, "g", [helper.make_tensor_value_info("x", elem, [1, 64, 40])],
                              [helper.make_tensor_value_info("y", elem, [1, 40, 64])])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 20)])
    model.ir_version = 9
    x = (np.random.default_rng(0).standard_normal((1, 64, 40)) * 3).astype(dtype)
    sess = normrt.InferenceSession(model)
    generic, first, second = _generic_and_specialized(sess, {"x": x})
    want = normrt.activate(np.ascontiguousarray(x.transpose(0, 2, 1)), "gelu_tanh" if approximate == "tanh" else "gelu")
    for got in (generic[0], first[0], second[0]):
        assert got.dtype == dtype and np.array_equal(got, want)
    t = x.transpose(0, 2, 1).astype(np.float64).reshape(-1)
    if approximate == "tanh":
        ref = [0.5 * v * (1 + tanh(sqrt(2 / pi) * (v + 0.044715 * v ** 3))) for v in t]
    else:
        ref = [0.5 * v * (1 + erf(v / sqrt(2))) for v in t]
    np.testing.assert_allclose(generic[0].reshape(-1), ref, rtol=2e-6 if dtype == np.float32 else 1e-12,
                               atol=1e-7 if dtype == np.float32 else 1e-15)


@pytest.mark.parametrize("half", [TensorProto.FLOAT16, TensorProto.BFLOAT16])
def test_half_casts_specialized_bitwise_generic(half):
    """float32 -> half -> float32 Casts (a half model's region boundaries: RWKV float16 has 301 of
    them): the specialized steps call the conversion loop directly, with the generic Cast's bits,
    rounding to nearest even with infinities, NaN and subnormals, and widening exactly."""
    import ml_dtypes
    nodes = [helper.make_node("Relu", ["x"], ["r"]), helper.make_node("Cast", ["r"], ["h"], to=half),
             helper.make_node("Cast", ["h"], ["y"], to=TensorProto.FLOAT)]
    graph = helper.make_graph(nodes, "g", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [3, 700])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, [3, 700]),
                               helper.make_tensor_value_info("h", half, [3, 700])])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 9
    rng = np.random.default_rng(0)
    x = (rng.standard_normal((3, 700)) * np.exp2(rng.integers(-30, 20, (3, 700)))).astype(np.float32)
    x.reshape(-1)[:6] = [np.inf, np.nan, 7e4, 1e-8, 65519.0, 3.0e38]
    sess = normrt.InferenceSession(model)
    generic, first, second = _generic_and_specialized(sess, {"x": x})
    source = next(iter(sess.executor.specialized.values())).source
    assert "_narrow_into" in source and "_widen_into" in source
    np_half = np.float16 if half == TensorProto.FLOAT16 else ml_dtypes.bfloat16
    want = np.maximum(x, 0).astype(np_half)
    for y, h in (generic, first, second):
        assert h.dtype == np_half and np.array_equal(h.view(np.uint16), generic[1].view(np.uint16))
        assert np.array_equal(y, generic[0], equal_nan=True)
        assert np.array_equal(h.astype(np.float32), want.astype(np.float32), equal_nan=True)
        assert np.array_equal(y, want.astype(np.float32), equal_nan=True)


@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(shape=st.lists(st.integers(1, 5), min_size=1, max_size=4), data=st.data(), seed=st.integers(0, 2**31 - 1))
def test_constant_pad_specialized(shape, data, seed):
    """A constant-mode Pad with constant pads (RWKV's time shift: one row in front, one cropped at the
    end), any axes input and value: the prepared fill-and-copy gives the generic Pad's values and
    onnx.reference's."""
    rank = len(shape)
    axes = data.draw(st.one_of(st.none(), st.lists(st.integers(-rank, rank - 1), min_size=1, max_size=rank,
                                                    unique_by=lambda a: a % rank)))
    n = rank if axes is None else len(axes)
    pads = data.draw(st.lists(st.integers(-1, 3), min_size=2 * n, max_size=2 * n))
    dims = [a % rank for a in axes] if axes is not None else list(range(rank))
    pads = [max(p, -(shape[d] - 1) // 2) for p, d in zip(pads, dims + dims)]     # crop at most half
    value = data.draw(st.sampled_from([None, 0.0, -2.5]))
    inits = [numpy_helper.from_array(np.array(pads, np.int64), "pads")]
    ins = ["r", "pads", "v" if value is not None else ""]
    if value is not None:
        inits.append(numpy_helper.from_array(np.array(value, np.float32), "v"))
    if axes is not None:
        ins.append("axes")
        inits.append(numpy_helper.from_array(np.array(axes, np.int64), "axes"))
    while ins[-1] == "":
        ins.pop()
    nodes = [helper.make_node("Relu", ["x"], ["r"]), helper.make_node("Pad", ins, ["p"], mode="constant"),
             helper.make_node("Neg", ["p"], ["y"])]
    graph = helper.make_graph(nodes, "g", [helper.make_tensor_value_info("x", TensorProto.FLOAT, shape)],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, None)], inits)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 18)])
    model.ir_version = 9
    x = np.random.default_rng(seed).standard_normal(shape).astype(np.float32)
    sess = normrt.InferenceSession(model)
    generic, first, second = _generic_and_specialized(sess, {"x": x})
    if any(n.op_type == "Pad" for n in sess.optimized_model.graph.node):     # (all-zero pads: dropped)
        assert "_pad_into" in next(iter(sess.executor.specialized.values())).source
    # the reference: crop by the negative amounts, then numpy's constant pad by the positive ones
    before, after = [0] * rank, [0] * rank
    for i, d in enumerate(dims):
        before[d], after[d] = pads[i], pads[n + i]
    r = np.maximum(x, 0)[tuple(slice(max(0, -b), r_len - max(0, -a)) for b, a, r_len in zip(before, after, shape))]
    want = -np.pad(r, [(max(0, b), max(0, a)) for b, a in zip(before, after)], constant_values=value or 0.0)
    for got in (generic[0], first[0], second[0]):
        assert got.shape == want.shape and np.array_equal(got, want)


@pytest.mark.parametrize("op", ["Max", "Min"])
@pytest.mark.parametrize("dtype", [np.float32, np.int64])
def test_two_input_max_min_specialized(op, dtype):
    """Max / Min of two inputs (RWKV's 45 running maxima) as one numpy call in the specialized plan:
    the generic variadic op's values, NaN propagated, broadcasting kept."""
    elem = TensorProto.FLOAT if dtype == np.float32 else TensorProto.INT64
    nodes = [helper.make_node(op, ["a", "b"], ["y"])]        # (alone: no elementwise program takes it)
    graph = helper.make_graph(nodes, "g", [helper.make_tensor_value_info("a", elem, [4, 64]),
                                           helper.make_tensor_value_info("b", elem, [1, 64])],
                              [helper.make_tensor_value_info("y", elem, [4, 64])])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 13)])
    model.ir_version = 8
    rng = np.random.default_rng(0)
    a = (rng.standard_normal((4, 64)) * 10).astype(dtype)
    b = (rng.standard_normal((1, 64)) * 10).astype(dtype)
    if dtype == np.float32:
        a[0, :3] = [np.nan, 1.0, -np.inf]
        b[0, :3] = [0.0, np.nan, 2.0]
    sess = normrt.InferenceSession(model)
    generic, first, second = _generic_and_specialized(sess, {"a": a, "b": b})
    assert f"_{op.lower()}" in next(iter(sess.executor.specialized.values())).source
    fn = np.maximum if op == "Max" else np.minimum
    for got in (generic[0], first[0], second[0]):
        assert got.dtype == dtype and np.array_equal(got, fn(a, b), equal_nan=True)


@pytest.mark.parametrize("alpha", [0.1, 0.2, 2.0])
def test_leaky_relu_specialized(alpha):
    """A lone float32 LeakyRelu (a vocoder's, before each conv) as one elementwise-kernel call into
    the plan's buffer: the values of np.where(x > 0, x, alpha x), +-0, +-inf and NaN included."""
    # (between Transposes: no elementwise chain takes it)
    nodes = [helper.make_node("Transpose", ["x"], ["n"], perm=[1, 0]),
             helper.make_node("LeakyRelu", ["n"], ["l"], alpha=alpha),
             helper.make_node("Transpose", ["l"], ["y"], perm=[1, 0])]
    graph = helper.make_graph(nodes, "g", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [3, 40])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, [3, 40])])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 16)])
    model.ir_version = 8
    x = np.random.default_rng(0).standard_normal((3, 40)).astype(np.float32) * 5
    x[0, :6] = [0.0, -0.0, np.inf, -np.inf, np.nan, 1e-42]
    sess = normrt.InferenceSession(model)
    generic, first, second = _generic_and_specialized(sess, {"x": x})
    assert "_leaky_relu" in next(iter(sess.executor.specialized.values())).source
    want = np.where(x > 0, x, x * np.float32(alpha))
    for got in (generic[0], first[0], second[0]):
        assert got.dtype == np.float32 and np.array_equal(got, want, equal_nan=True)
        assert np.array_equal(np.signbit(got), np.signbit(want))


@settings(max_examples=30, deadline=None)
@given(shape=st.lists(st.integers(1, 5), min_size=1, max_size=4), data=st.data(), seed=st.integers(0, 2**31 - 1))
def test_constant_scalar_gather_is_a_view(shape, data, seed):
    """Gather of one constant index (an unrolled scan's step, a CLS token) as basic indexing in the
    specialized plan: the generic op's values, the index negative or not, and the value read again
    after a later step that may write in place (Relu) still the gathered one."""
    axis = data.draw(st.integers(-len(shape), len(shape) - 1))
    k = data.draw(st.integers(-shape[axis], shape[axis] - 1))
    rank = len(shape)
    out_shape = shape[:axis % rank] + shape[axis % rank + 1:]
    nodes = [helper.make_node("Neg", ["x"], ["n"]),
             helper.make_node("Gather", ["n", "k"], ["g"], axis=axis),
             helper.make_node("Relu", ["n"], ["r"]),             # n's last reader: may overwrite it
             helper.make_node("ReduceSum", ["r"], ["s"], keepdims=0),
             helper.make_node("Add", ["g", "g"], ["y"])]
    graph = helper.make_graph(nodes, "g", [helper.make_tensor_value_info("x", TensorProto.FLOAT, shape)],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, out_shape),
                               helper.make_tensor_value_info("s", TensorProto.FLOAT, [])],
                              [numpy_helper.from_array(np.array(k, np.int64), "k")])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 13)])
    model.ir_version = 8
    x = np.random.default_rng(seed).standard_normal(shape).astype(np.float32)
    sess = normrt.InferenceSession(model)
    generic, first, second = _generic_and_specialized(sess, {"x": x})
    want = 2 * np.take(-x, k, axis=axis)
    for got in (generic, first, second):
        assert np.array_equal(got[0], want)
        np.testing.assert_allclose(got[1], np.maximum(-x, 0).sum(), rtol=1e-5, atol=1e-5)
    assert "np.take" not in next(iter(sess.executor.specialized.values())).source


def test_elementwise_program_prepared():
    """A normrt::Elementwise program (x * sigmoid(x) + b, b broadcast, x a transposed view) as a
    prepared kernel call into the plan's buffer: the generic call's bits."""
    nodes = [helper.make_node("Transpose", ["x"], ["t"], perm=[0, 2, 1]),
             helper.make_node("Sigmoid", ["t"], ["s"]), helper.make_node("Mul", ["t", "s"], ["m"]),
             helper.make_node("Add", ["m", "b"], ["y"])]
    graph = helper.make_graph(nodes, "g", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [2, 64, 24]),
                                           helper.make_tensor_value_info("b", TensorProto.FLOAT, [1, 1, 64])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, [2, 24, 64])])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    rng = np.random.default_rng(1)
    feeds = {"x": rng.standard_normal((2, 64, 24)).astype(np.float32),
             "b": rng.standard_normal((1, 1, 64)).astype(np.float32)}
    sess = normrt.InferenceSession(model)
    assert [n.op_type for n in sess.optimized_model.graph.node][-1] == "Elementwise"
    generic, first, second = _generic_and_specialized(sess, feeds)
    assert "_elementwise" in next(iter(sess.executor.specialized.values())).source
    t = feeds["x"].transpose(0, 2, 1).astype(np.float64)
    for got in (generic[0], first[0], second[0]):
        assert np.array_equal(got, generic[0])
        np.testing.assert_allclose(got, t / (1 + np.exp(-t)) + feeds["b"], rtol=1e-6, atol=1e-6)


@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(shape=st.lists(st.integers(1, 6), min_size=1, max_size=4), data=st.data(),
       form=st.sampled_from(["input", "attribute", "num_outputs", "equal"]), seed=st.integers(0, 2**31 - 1))
def test_split_specialized(shape, data, form, seed):
    """A Split by constant sizes (opset 13's input, opset 11's attribute, opset 18's num_outputs,
    or equal parts) runs as views of its input decided once: the generic Split's values and
    numpy's, for each output (also ones another step reads after the split input is reused)."""
    rank = len(shape)
    axis = data.draw(st.integers(-rank, rank - 1))
    dim = shape[axis % rank]
    if form in ("input", "attribute"):
        cuts = sorted(data.draw(st.lists(st.integers(0, dim), min_size=1, max_size=3)))
        sizes = [b - a for a, b in zip([0] + cuts, cuts + [dim])]
    elif form == "num_outputs":
        num = data.draw(st.integers(1, dim))
        chunk = -(-dim // num)
        sizes = [chunk] * (dim // chunk) + ([dim % chunk] if dim % chunk else [])
    else:
        num = data.draw(st.sampled_from([d for d in range(1, dim + 1) if dim % d == 0]))
        sizes = [dim // num] * num
    outs = [f"s{i}" for i in range(len(sizes))]
    inits, ins, attrs, opset = [], ["r"], {"axis": axis}, 13
    if form == "input":
        inits.append(numpy_helper.from_array(np.array(sizes, np.int64), "sizes"))
        ins.append("sizes")
    elif form == "attribute":
        attrs["split"], opset = sizes, 11
    elif form == "num_outputs":
        attrs["num_outputs"], opset = len(sizes), 18
    nodes = [helper.make_node("Relu", ["x"], ["r"]), helper.make_node("Split", ins, outs, **attrs)] + \
        [helper.make_node("Neg", [o], [f"y{i}"]) for i, o in enumerate(outs)]
    graph = helper.make_graph(nodes, "g", [helper.make_tensor_value_info("x", TensorProto.FLOAT, shape)],
                              [helper.make_tensor_value_info(f"y{i}", TensorProto.FLOAT, None)
                               for i in range(len(outs))], inits)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", opset)])
    model.ir_version = 9
    x = np.random.default_rng(seed).standard_normal(shape).astype(np.float32)
    sess = normrt.InferenceSession(model)
    generic, first, second = _generic_and_specialized(sess, {"x": x})
    source = next(iter(sess.executor.specialized.values())).source
    views = r"= \((v\d+\[k\d+\], )+\)" if len(sizes) > 1 else r"= v\d+\[k\d+\]\n"
    assert re.search(views, source), "the Split is its views of the input, not the generic call"
    starts = np.cumsum([0] + sizes)
    want = [-np.take(np.maximum(x, 0), np.arange(a, b), axis=axis) for a, b in zip(starts, starts[1:])]
    for got in (generic, first, second):
        assert len(got) == len(want)
        for g, w in zip(got, want):
            assert g.shape == w.shape and np.array_equal(g, w)


# ------------------------------------------------------------ shape-only values on kernels
def _shape_arithmetic_model():
    """x (batch, 6): a size computed from x's batch on float arithmetic (Cast -> Mul -> Add ->
    Ceil: an elementwise program once fused, as T5's position buckets and EnCodec's padding
    sizes are) and a position table resized to it by a cubic Resize (onnx.reference runs cubic,
    as DINOv2's interpolate_pos_encoding), added to x's rows."""
    f32, i64 = TensorProto.FLOAT, TensorProto.INT64
    table = np.linspace(-1, 1, 24, dtype=np.float32).reshape(1, 1, 4, 6)
    nodes = [helper.make_node("Shape", ["x"], ["s"], start=0, end=1),
             helper.make_node("Cast", ["s"], ["sf"], to=f32),
             helper.make_node("Mul", ["sf", "half"], ["m"]),
             helper.make_node("Add", ["m", "quarter"], ["a"]),
             helper.make_node("Ceil", ["a"], ["c"]),
             helper.make_node("Mul", ["c", "two"], ["rows_f"]),          # 2 * ceil(batch / 2 + 0.25)
             helper.make_node("Cast", ["rows_f"], ["rows"], to=i64),
             helper.make_node("Concat", ["one_one", "rows", "six"], ["sizes"], axis=0),
             helper.make_node("Resize", ["table", "", "", "sizes"], ["r"], mode="cubic"),
             helper.make_node("Reshape", ["r", "flat"], ["r2"]),
             helper.make_node("Slice", ["r2", "zero", "s", "zero"], ["pos"]),
             helper.make_node("Add", ["x", "pos"], ["y"])]
    inits = [numpy_helper.from_array(v, k) for k, v in {
        "half": np.array([0.5], np.float32), "quarter": np.array([0.25], np.float32),
        "two": np.array([2.0], np.float32), "one_one": np.array([1, 1], np.int64),
        "six": np.array([6], np.int64), "table": table, "flat": np.array([-1, 6], np.int64),
        "zero": np.array([0], np.int64)}.items()]
    graph = helper.make_graph(nodes, "g", [helper.make_tensor_value_info("x", f32, ["batch", 6])],
                              [helper.make_tensor_value_info("y", f32, ["batch", 6])], inits)
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 18)])


def test_shape_arithmetic_on_kernels_and_reference_ops_is_computed_once_per_shape():
    """Values that depend on the input shapes only are folded into the specialized plan whatever
    runs them (a fused program, onnx.reference): the plan's steps are those of the Add alone."""
    model = _shape_arithmetic_model()
    sess = normrt.InferenceSession(model.SerializeToString())
    kinds = {s.kind for s in sess.executor.steps}
    assert "reference" in kinds, kinds          # the cubic Resize
    for batch in (1, 3, 4, 7):
        x = np.random.default_rng(batch).standard_normal((batch, 6)).astype(np.float32)
        generic, first, second = _generic_and_specialized(sess, {"x": x})
        want = ReferenceEvaluator(model).run(None, {"x": x})[0]
        np.testing.assert_allclose(second[0], want, rtol=1e-6, atol=1e-6)
        assert np.array_equal(generic[0], second[0]) and np.array_equal(first[0], second[0])
    plans = list(sess.executor.specialized.values())
    assert len(plans) == 4
    for plan in plans:
        ran = {sess.executor.steps[i].node.op_type for i in plan.line_steps.values()}
        assert ran <= {"Add"}, ran


# ------------------------------------------------------------ recurrent layers prepared once

@settings(max_examples=25, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(kind=st.sampled_from(["LSTM", "GRU", "RNN"]), direction=st.sampled_from(["forward", "reverse", "bidirectional"]),
       seq=st.integers(1, 4), batch=st.integers(1, 5), hidden=st.sampled_from([3, 32, 40]),
       layout=st.integers(0, 1), runtime=st.sets(st.sampled_from(["lens", "h0", "c0"])),
       outputs=st.sampled_from([(1, 0, 0), (1, 1, 1), (0, 1, 1), (1, 0, 1)]), dtype=st.sampled_from([np.float32, np.float64]),
       seed=st.integers(0, 2**31 - 1))
def test_recurrent_prepared_step_bitwise_generic(kind, direction, seq, batch, hidden, layout, runtime, outputs, dtype,
                                                 seed):
    """An LSTM / GRU / RNN with constant weights runs a prepared step (ops.recurrent.Recurrent: the
    weights packed and the biases folded once, the input projection's GEMM bound): the generic op's
    values bit for bit, with run-time sequence lengths and initial states, any subset of outputs,
    both layouts, float32 and float64 - and onnx.reference's."""
    rng = np.random.default_rng(seed)
    gates, dirs = {"LSTM": 4, "GRU": 3, "RNN": 1}[kind], 2 if direction == "bidirectional" else 1
    tdt = helper.np_dtype_to_tensor_dtype(np.dtype(dtype))
    inputs = 6
    consts = {"w": rng.standard_normal((dirs, gates * hidden, inputs)) * 0.3,
              "r": rng.standard_normal((dirs, gates * hidden, hidden)) * 0.3,
              "b": rng.standard_normal((dirs, 2 * gates * hidden)) * 0.3}
    feeds = {"x": rng.standard_normal((batch, seq, inputs) if layout else (seq, batch, inputs)).astype(dtype)}
    state = (batch, dirs, hidden) if layout else (dirs, batch, hidden)
    if "lens" in runtime:
        feeds["lens"] = rng.integers(0, seq + 1, batch).astype(np.int32)
    for name in ("h0", "c0") if kind == "LSTM" else ("h0",):
        if name in runtime:
            feeds[name] = rng.standard_normal(state).astype(dtype)
    node_in = ["x", "w", "r", "b", "lens" if "lens" in feeds else "", "h0" if "h0" in feeds else "",
               "c0" if "c0" in feeds else ""][:7 if kind == "LSTM" else 6]
    while node_in[-1] == "":
        node_in.pop()
    names = ["y", "yh", "yc"][:3 if kind == "LSTM" else 2]
    wanted = [n if keep else "" for n, keep in zip(names, outputs)]
    if not any(wanted):
        wanted[0] = "y"
    while wanted[-1] == "":
        wanted.pop()
    attrs = dict(hidden_size=hidden, direction=direction, layout=layout)
    if kind == "GRU":
        attrs["linear_before_reset"] = seed % 2
    graph = helper.make_graph(
        [helper.make_node(kind, node_in, wanted, **attrs)], "g",
        [helper.make_tensor_value_info(k, TensorProto.INT32 if k == "lens" else tdt, v.shape) for k, v in feeds.items()],
        [helper.make_tensor_value_info(n, tdt, None) for n in wanted if n],
        [numpy_helper.from_array(v.astype(dtype), k) for k, v in consts.items()])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 14)])
    model.ir_version = 8
    sess = normrt.InferenceSession(model)
    generic, first, second = _generic_and_specialized(sess, feeds)
    source = next(iter(sess.executor.specialized.values())).source
    assert f"_{kind.lower()}" in source, "the recurrent node is a prepared step, not the generic call"
    for g, a, b in zip(generic, first, second):
        assert g.dtype == b.dtype == dtype and g.shape == b.shape
        assert np.array_equal(g, a) and np.array_equal(g, b)
    if layout == 0 and "lens" not in feeds:      # (onnx.reference: layout 0, no sequence_lens)
        want = ReferenceEvaluator(model).run(None, feeds)
        for g, w in zip(second, want):
            np.testing.assert_allclose(g, w, rtol=2e-5 if dtype == np.float32 else 1e-10, atol=2e-6)


# ------------------------------------------------------------ fused convs: 1-D, mirrored pads

@settings(max_examples=30, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(one_d=st.booleans(), cin=st.sampled_from([1, 3, 8]), depthwise=st.booleans(),
       mode=st.sampled_from(["constant", "reflect", "edge"]), act=st.sampled_from([None, "Relu", "Elu", "LeakyRelu"]),
       residual=st.booleans(), k=st.sampled_from([1, 3, 4]), seed=st.integers(0, 2**31 - 1))
def test_fused_conv_prepared_step_bitwise_generic(one_d, cin, depthwise, mode, act, residual, k, seed):
    """Pad(mode) -> Conv [-> Add(x)] [-> activation], 1-D (an audio encoder's) or 2-D, few input
    channels (small_conv) or more (the GEMM): conv_epilogue fuses it into normrt::Conv, whose
    specialized step calls the kernel directly (mirrored pads around small_conv copied first, as
    the generic call does): the generic plan's values bit for bit, and onnx.reference's."""
    rng = np.random.default_rng(seed)
    group = cin if depthwise and cin > 1 else 1
    cout = cin if residual or group > 1 else 5
    length = 9
    sp = [length] if one_d else [6, length]
    xshape = [1, cin] + sp
    pads_sp = [int(v) for v in rng.integers(0, 3, 2 * len(sp))]
    pads = [0, 0] + pads_sp[:len(sp)] + [0, 0] + pads_sp[len(sp):]
    kernel = [k] * len(sp)
    out_sp = [n + pads_sp[i] + pads_sp[len(sp) + i] - k + 1 for i, n in enumerate(sp)]
    if residual and out_sp != sp:
        pads = [0, 0] + [(k - 1) // 2] * len(sp) + [0, 0] + [k // 2] * len(sp)
    inits = [numpy_helper.from_array(np.array(pads, np.int64), "pads"),
             numpy_helper.from_array(rng.standard_normal([cout, cin // group] + kernel).astype(np.float32), "w"),
             numpy_helper.from_array(rng.standard_normal(cout).astype(np.float32), "b")]
    nodes = [helper.make_node("Pad", ["x", "pads"], ["xp"], mode=mode),
             helper.make_node("Conv", ["xp", "w", "b"], ["c"], group=group)]
    last = "c"
    if residual:
        nodes.append(helper.make_node("Add", ["c", "x"], ["s"]))
        last = "s"
    if act:
        nodes.append(helper.make_node(act, [last], ["y"], **({"alpha": 0.2} if act == "LeakyRelu" else {})))
    else:
        nodes.append(helper.make_node("Identity", [last], ["y"]))
    graph = helper.make_graph(nodes, "g", [helper.make_tensor_value_info("x", TensorProto.FLOAT, xshape)],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, None)], inits)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    x = rng.standard_normal(xshape).astype(np.float32)
    sess = normrt.InferenceSession(model)
    generic, first, second = _generic_and_specialized(sess, {"x": x})
    source = next(iter(sess.executor.specialized.values())).source
    from normrt.onnx.ops.conv import on_small_conv
    if not (act == "LeakyRelu" and on_small_conv(cin // group, group)):   # (that one stays generic)
        assert "_call" not in source, f"every step a prepared call:\n{source}"
    assert np.array_equal(generic[0], first[0]) and np.array_equal(generic[0], second[0])
    want = ReferenceEvaluator(model).run(None, {"x": x})[0]
    np.testing.assert_allclose(second[0], want, rtol=1e-5, atol=1e-5)

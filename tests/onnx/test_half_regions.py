"""half_compute="float32" (passes/half_regions.py): a half model's values stay in float32 between
the ops normrt computes in float32, rounded to half at the regions' boundaries only.

hypothesis draws DAGs of float16/bfloat16 Conv, MatMul, Add/Mul, Sigmoid, Softmax, LayerNormalization,
Transpose/Reshape and the model's own Cast(FLOAT) -> Mul -> Cast(half) (conftest.HalfDag), and checks:
- against the DAG's float64 numpy reference (rounded where the model rounds: its Casts, its outputs):
  within one rounding of the output dtype plus float32 arithmetic -- per_op would add a rounding per op;
- against onnxruntime's float16 CPU run of the same file, which casts around its float32 kernels the
  same way: within one float16 unit in the last place of the output's scale, not bitwise -- onnxruntime's
  Conv (MLAS), MatMul and Softmax sum in another order than normrt's kernels, so a float32 result
  close to a half tie rounds the other way now and then (test_example_model_matches_onnxruntime
  measures how often on a whole model);
- the refusals: the model's Casts kept and still reading half values, pinned ops left in half, graph
  outputs of their declared dtype, one-op regions left per_op;
- the specialized (compiled) plan gives the generic plan's bits, and any thread count the same bits.
"""
import io

import ml_dtypes
import numpy as np
import onnx
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from onnx import TensorProto, helper, numpy_helper

import normrt
from dtype_checks import assert_close_in_dtype, assert_same_bits_for_threads, dtype_eps, same_bits

SETTINGS = settings(max_examples=25, deadline=None,
                    suppress_health_check=[HealthCheck.too_slow, HealthCheck.function_scoped_fixture])
DTYPES = (np.dtype(np.float16), np.dtype(ml_dtypes.bfloat16))
# the ops the DAGs draw from (conftest.HalfDag builds each); "cast" is the model's own
# Cast(FLOAT) -> Mul(3) -> Cast(half)
DAG_OPS = ("conv", "matmul", "add", "mul", "sigmoid", "softmax", "norm", "transpose", "reshape", "cast")
# onnxruntime's CPU provider has a float16 LayerNormalization kernel (it reads half values: the
# norm is a region boundary there, not in normrt, and a norm magnifies its input's rounding by
# 1/std): the DAGs compared with onnxruntime leave it out, the float64 comparison covers it
ORT_DAG_OPS = tuple(op for op in DAG_OPS if op != "norm")


@st.composite
def dags(draw, dtypes=DTYPES, ops=DAG_OPS):
    steps = draw(st.lists(st.tuples(st.sampled_from(ops), st.integers(0, 1000)), min_size=1, max_size=8))
    return dict(steps=steps, dtype=draw(st.sampled_from(dtypes)), channels=draw(st.sampled_from([2, 4])),
                size=draw(st.sampled_from([4, 6, 8])), seed=draw(st.integers(0, 2 ** 16)),
                extra_output=draw(st.booleans()))


def _sessions(model, **kw):
    data = model.SerializeToString()
    return (normrt.InferenceSession(data, half_compute="per_op", **kw),
            normrt.InferenceSession(data, half_compute="float32", **kw))


def _generic_and_specialized(sess, feeds):
    generic = sess.executor.run(feeds, sess.executor.output_names, specialize=False)
    sess.run(None, feeds)                       # traced: builds the specialized plan
    return generic, sess.run(None, feeds)


def _error_in_units(y, ref, dtype):
    """max |y - ref| in units of dtype's eps times the reference's scale."""
    ref = np.asarray(ref, np.float64)
    return float(np.abs(np.asarray(y, np.float64) - ref).max() / (dtype_eps(dtype) * max(np.abs(ref).max(), 1e-30)))


@SETTINGS
@given(spec=dags())
def test_float32_mode_matches_float64_reference(spec, half_dag):
    dag = half_dag(**spec)
    _, sess = _sessions(dag.model())
    generic, ys = _generic_and_specialized(sess, dag.feeds())
    for g, y, want, vi in zip(generic, ys, dag.expected, dag.model().graph.output):
        assert y.dtype == dag.dtype                 # graph outputs keep their declared dtype
        assert same_bits(g, y), "the specialized plan differs from the generic plan"
        # one rounding of the output, plus float32 arithmetic; a value the model rounds at its own
        # Cast may sit at a half tie that float32 rounds the other way: one unit there, carried on
        ulps = 1.0 if not dag.uses_model_casts() else 2.0
        assert_close_in_dtype(y, want, dag.dtype, ulps=ulps, f32_rel=2.0 ** -16 + (
            dtype_eps(dag.dtype) if dag.uses_model_casts() else 0.0))


@SETTINGS
@given(spec=dags(dtypes=(np.dtype(np.float16),), ops=ORT_DAG_OPS))
def test_float32_mode_matches_onnxruntime(spec, half_dag, ort_cpu_run):
    dag = half_dag(**spec)
    model = dag.model()
    _, sess = _sessions(model)
    ys = sess.run(None, dag.feeds())
    theirs = ort_cpu_run(model.SerializeToString(), dag.feeds())
    for y, yo, want in zip(ys, theirs, dag.expected):
        assert y.dtype == yo.dtype == np.float16
        scale = float(np.abs(yo.astype(np.float64)).max())
        # one float16 unit of the output's scale (twice across a model Cast: a flip there moves on)
        units = 1.0 if not dag.uses_model_casts() else 2.0
        tol = units * dtype_eps(np.float16) * max(scale, 2.0 ** -14)
        diff = np.abs(y.astype(np.float64) - yo.astype(np.float64))
        if diff.max() > tol and dag.uses_model_casts():
            # a value rounded at one of the model's Casts and then magnified (x 3 per Cast, a conv's
            # cancellation) can move the output by more; then normrt must be at least as close
            # to the float64 reference as onnxruntime (seen: normrt exact, onnxruntime 3.5 units off)
            want = want.astype(np.float64)
            err, err_ort = np.abs(y - want).max(), np.abs(yo - want).max()
            assert err <= max(err_ort, tol), (err, err_ort, diff.max(), scale)
            continue
        assert diff.max() <= tol, (diff.max(), scale)


def test_float32_mode_is_more_accurate_on_a_deep_chain(half_dag):
    """Eight products and norms in a row: per_op rounds eight times, float32 once."""
    steps = [("conv", 0), ("sigmoid", 0), ("conv", 0), ("norm", 0), ("matmul", 0), ("softmax", 0),
             ("conv", 0), ("add", 1), ("norm", 0), ("matmul", 0)]
    for dtype in DTYPES:
        dag = half_dag(steps, dtype, channels=8, size=8, seed=3)
        per_op, f32 = _sessions(dag.model())
        err_per_op = _error_in_units(per_op.run(None, dag.feeds())[0], dag.expected[0], dtype)
        err_f32 = _error_in_units(f32.run(None, dag.feeds())[0], dag.expected[0], dtype)
        # float32 mode: the output's own rounding (half a unit at most of the scale)
        assert err_f32 <= 0.5 + 1e-3, (dtype, err_f32)
        assert err_f32 < err_per_op, (dtype, err_f32, err_per_op)


def test_regions_and_boundaries(half_dag):
    """conv -> sigmoid -> model Cast pair -> conv -> softmax: two regions around the model's Casts,
    constants widened, the model's Casts kept reading and writing half values."""
    dag = half_dag([("conv", 0), ("sigmoid", 0), ("cast", 0), ("conv", 0), ("softmax", 0)], np.float16)
    model, report = normrt.optimize(dag.model(), report=True, half_compute="float32")
    hc = report["half_compute"]
    assert hc["regions"] == 2 and hc["mode"] == "float32"
    assert hc["up_casts"] == 2          # x, and the model's down Cast's half value
    assert hc["down_casts"] == 2        # before the model's Cast up, and the graph output
    types = _value_types(model)
    kept = {n.name: n for n in model.graph.node if n.name in dag.cast_nodes}
    assert set(kept) == set(dag.cast_nodes), "the model's Casts are kept"
    up, down = kept["cast2_up"], kept["cast2_down"]
    assert types[up.input[0]] == TensorProto.FLOAT16 and up.attribute[0].i == TensorProto.FLOAT
    assert down.attribute[0].i == TensorProto.FLOAT16
    assert model.graph.output[0].type.tensor_type.elem_type == TensorProto.FLOAT16
    # the products read float32 weights (widened once), the half ones are gone
    for node in model.graph.node:
        if node.op_type == "Conv":
            assert all(types.get(n) == TensorProto.FLOAT for n in node.input if n), node
    # per_op: no region, the model as before; float32 is the default
    _, report = normrt.optimize(dag.model(), report=True, half_compute="per_op")
    assert "half_compute" not in report
    _, default = normrt.optimize(dag.model(), report=True)
    assert default["half_compute"] == hc


def test_pinned_ops_stay_half():
    """Floor (discontinuous: a float32 input would move results by a whole unit) and a Less feeding Where
    keep reading half values; the Convs around them are regions of their own."""
    rng = np.random.default_rng(0)
    w = (rng.standard_normal((4, 4, 3, 3)) / 6).astype(np.float16)
    nodes = [helper.make_node("Conv", ["x", "w"], ["a"], name="conv0", pads=[1, 1, 1, 1]),
             helper.make_node("Sigmoid", ["a"], ["b"], name="sig0"),
             helper.make_node("Mul", ["b", "ten"], ["c"], name="mul0"),
             helper.make_node("Floor", ["c"], ["d"], name="floor"),
             helper.make_node("Less", ["c", "d"], ["m"], name="less"),
             helper.make_node("Conv", ["d", "w"], ["e"], name="conv1", pads=[1, 1, 1, 1]),
             helper.make_node("Relu", ["e"], ["f"], name="relu1"),
             helper.make_node("Where", ["m", "f", "c"], ["y"], name="where")]
    graph = helper.make_graph(nodes, "g", [helper.make_tensor_value_info("x", TensorProto.FLOAT16, [1, 4, 6, 6])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT16, [1, 4, 6, 6])],
                              [numpy_helper.from_array(w, "w"), numpy_helper.from_array(np.float16(10), "ten")])
    m = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 18)])
    model, report = normrt.optimize(m, report=True, half_compute="float32")
    types = _value_types(model)
    by_name = {n.name: n for n in model.graph.node}
    for name in ("floor", "less"):
        assert all(types[i] == TensorProto.FLOAT16 for i in by_name[name].input), name
    assert types[by_name["floor"].output[0]] == TensorProto.FLOAT16
    x = rng.standard_normal((1, 4, 6, 6)).astype(np.float16)
    y = normrt.InferenceSession(m.SerializeToString(), half_compute="float32").run(None, {"x": x})[0]
    # reference: the Floor sees the half value of c, as the model says
    c32 = _sigmoid64(_conv64(x, w)) * 10
    c = c32.astype(np.float16).astype(np.float64)
    d = np.floor(c)
    f = np.maximum(_conv64(d.astype(np.float16), w), 0)
    want = np.where(c < d, f, c).astype(np.float16)
    assert y.dtype == np.float16
    assert_close_in_dtype(y, want.astype(np.float64), np.float16, ulps=1.0)


def test_one_op_regions_are_refused(half_dag):
    """A lone Conv between the graph's input and output: per_op rounds it once already."""
    dag = half_dag([("conv", 0)], np.float16)
    model, report = normrt.optimize(dag.model(), report=True, half_compute="float32")
    hc = report["half_compute"]
    assert hc["regions"] == 0 and len(hc["refused"]) == 1
    assert "per_op rounds its result once" in hc["refused"][0]["reason"]
    assert not any(n.op_type == "Cast" for n in model.graph.node)
    per_op, f32 = _sessions(dag.model())
    assert same_bits(per_op.run(None, dag.feeds())[0], f32.run(None, dag.feeds())[0])


def test_float32_model_is_unchanged(half_dag):
    dag = half_dag([("conv", 0), ("norm", 0), ("softmax", 0)], np.float16)
    m32 = dag.model()
    m32.graph.input[0].type.tensor_type.elem_type = TensorProto.FLOAT
    m32.graph.output[0].type.tensor_type.elem_type = TensorProto.FLOAT
    for i, t in enumerate(m32.graph.initializer):
        if t.data_type == TensorProto.FLOAT16:
            m32.graph.initializer[i].CopyFrom(numpy_helper.from_array(numpy_helper.to_array(t).astype(np.float32),
                                                                      t.name))
    per_op, f32 = _sessions(m32)
    assert f32.report["half_compute"]["regions"] == 0
    x = dag.x.astype(np.float32)
    assert same_bits(per_op.run(None, {"x": x})[0], f32.run(None, {"x": x})[0])


def test_bitwise_across_thread_counts(half_dag):
    """Big enough for the kernels to split their work (conftest lowers the split threshold)."""
    for dtype in DTYPES:
        dag = half_dag([("conv", 0), ("norm", 0), ("sigmoid", 0), ("conv", 0), ("add", 1), ("softmax", 0)],
                       dtype, channels=16, size=48, seed=1)
        _, sess = _sessions(dag.model())
        assert sess.report["half_compute"]["regions"] == 1
        assert_same_bits_for_threads(lambda: tuple(sess.run(None, dag.feeds())))


@pytest.mark.parametrize("dtype", DTYPES, ids=lambda d: d.name)
def test_saved_fused_model_forms_regions(dtype, half_dag, tmp_path):
    """A file saved by normrt.optimize holds normrt nodes whose outputs onnx cannot type: their types
    are inferred (X's), so float32 mode still forms its regions, with the original file's bits."""
    dag = half_dag([("conv", 0), ("norm", 0), ("sigmoid", 0), ("matmul", 0), ("norm", 0), ("softmax", 0)],
                   dtype, seed=5)
    fused = normrt.optimize(dag.model(), half_compute="per_op")     # the file as fused, still all half
    assert any(n.domain == "normrt" for n in fused.graph.node)
    path = tmp_path / "fused.onnx"
    onnx.save(fused, path)
    saved = normrt.InferenceSession(str(path), half_compute="float32")
    direct = normrt.InferenceSession(dag.model().SerializeToString(), half_compute="float32")
    assert saved.report["half_compute"]["regions"] == 1
    assert saved.report["half_compute"]["retyped"] == direct.report["half_compute"]["retyped"]
    assert same_bits(saved.run(None, dag.feeds())[0], direct.run(None, dag.feeds())[0])


def test_example_model_matches_onnxruntime(ort_cpu_run):
    """The bundled groupnorm_cnn in float16: float32 mode against onnxruntime's run of the same file."""
    from half_models import to_half
    from normrt.cli import bundled_models
    path = next(p for p in bundled_models() if "groupnorm_cnn" in str(p))
    model = to_half(onnx.load(path), np.float16)
    rng = np.random.default_rng(0)
    x = rng.standard_normal([d.dim_value for d in model.graph.input[0].type.tensor_type.shape.dim]).astype(np.float16)
    feeds = {model.graph.input[0].name: x}
    per_op, f32 = _sessions(model)
    theirs = ort_cpu_run(model.SerializeToString(), feeds)[0].astype(np.float64)
    y = f32.run(None, feeds)[0].astype(np.float64)
    y_per_op = per_op.run(None, feeds)[0].astype(np.float64)
    unit = dtype_eps(np.float16) * np.abs(theirs).max()
    assert np.abs(y - theirs).max() <= unit
    # the same roundings as onnxruntime: (nearly) every value equal, where per_op's are not
    assert np.mean(y == theirs) >= 0.99 > np.mean(y_per_op == theirs)


def test_half_compute_argument_is_checked(half_dag, tmp_path):
    data = half_dag([("conv", 0)], np.float16).model().SerializeToString()
    for bad in ("float16", "", None, 32):
        with pytest.raises(ValueError, match="half_compute"):
            normrt.InferenceSession(data, half_compute=bad)
        with pytest.raises(ValueError, match="half_compute"):
            normrt.optimize(data, half_compute=bad)


def test_session_pickles_its_mode(half_dag):
    import pickle
    dag = half_dag([("conv", 0), ("sigmoid", 0), ("conv", 0)], np.float16)
    _, sess = _sessions(dag.model())
    again = pickle.loads(pickle.dumps(sess))
    assert again.half_compute == "float32"
    per_op = normrt.InferenceSession(dag.model().SerializeToString(), half_compute="per_op")
    assert pickle.loads(pickle.dumps(per_op)).half_compute == "per_op"
    assert normrt.InferenceSession(dag.model().SerializeToString()).half_compute == "float32"
    assert same_bits(again.run(None, dag.feeds())[0], sess.run(None, dag.feeds())[0])


def test_cli_half_compute(half_dag, tmp_path):
    from normrt.cli import main
    dag = half_dag([("conv", 0), ("sigmoid", 0), ("conv", 0), ("cast", 0), ("softmax", 0)], np.float16)
    path = tmp_path / "m.onnx"
    onnx.save(dag.model(), path)
    out = io.StringIO()
    assert main(["inspect", str(path), "--half-compute", "float32"], out=out) == 0
    text = out.getvalue()
    assert "half compute float32: 1 region(s)" in text and "boundary Casts" in text
    assert "region left per_op" in text          # the lone Softmax after the model's Casts
    out = io.StringIO()
    assert main(["run", str(path), "--half-compute", "float32", "--repeat", "1"], out=out) == 0
    out = io.StringIO()
    assert main(["inspect", str(path)], out=out) == 0          # float32 is the default
    assert out.getvalue() == text
    out = io.StringIO()
    assert main(["inspect", str(path), "--half-compute", "per_op"], out=out) == 0
    assert "half compute" not in out.getvalue()
    with pytest.raises(SystemExit):
        main(["run", str(path), "--half-compute", "float16"])
    out = io.StringIO()
    assert main(["inspect"], out=out) == 0                     # the float32 examples: no half line
    assert "half compute" not in out.getvalue()


# -- helpers ------------------------------------------------------------------
def _value_types(model):
    inferred = onnx.shape_inference.infer_shapes(model)
    types = {}
    for vi in list(inferred.graph.input) + list(inferred.graph.value_info) + list(inferred.graph.output):
        types[vi.name] = vi.type.tensor_type.elem_type
    for t in model.graph.initializer:
        types[t.name] = t.data_type
    return types


def _conv64(x, w):
    from numpy.lib.stride_tricks import sliding_window_view
    x = np.asarray(x, np.float64)
    win = sliding_window_view(np.pad(x, ((0, 0), (0, 0), (1, 1), (1, 1))), (3, 3), axis=(2, 3))
    return np.einsum("nchwij,mcij->nmhw", win, np.asarray(w, np.float64))


def _sigmoid64(v):
    return 1 / (1 + np.exp(-v))

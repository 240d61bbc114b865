"""Kernel nodes of specialized plans called through calls prepared once (kernel_calls.prepared_*,
domain.py's `prepare`): bitwise the generic plan's results (the normrt op's full call), right
against onnx.reference or a float64 numpy reference, for new input shapes after specialization too."""
import math

import ml_dtypes
import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from onnx import TensorProto, helper, numpy_helper
from onnx.reference import ReferenceEvaluator
from test_pass_attention_layout import feeds_for, heads_model

import normrt
from dtype_checks import ALL_FLOAT_DTYPES, assert_close_in_dtype, dtype_name, ref_act
from normrt.onnx.domain import make_node as normrt_node


def _specialized_and_generic(sess, feeds):
    sess.run(None, feeds)                        # traced: builds the specialized plan
    special = sess.run(None, feeds)
    generic = sess.executor.run(feeds, specialize=False)
    for g, s in zip(generic, special):
        assert g.dtype == s.dtype and np.array_equal(g, s, equal_nan=True)
    return special


def _prepared(sess, name):
    return [src for src in (p.source for p in sess.executor.specialized.values()) if name in src]


@settings(max_examples=25, deadline=None)
@given(form=st.sampled_from(["onnx", "matmul"]), b=st.integers(1, 2), sq=st.integers(1, 80), skv=st.integers(1, 80),
       h=st.sampled_from([1, 2, 4]), grouped=st.booleans(), d=st.sampled_from([4, 8, 16]), causal=st.booleans())
def test_prepared_attention_bitwise_generic(form, b, sq, skv, h, grouped, d, causal):
    hkv = h // 2 if grouped and h > 1 and form == "onnx" else h
    attrs = {"is_causal": int(causal)} if form == "onnx" else {}
    model = heads_model(B=b, Sq=sq, Skv=skv, H=h, Hkv=hkv, D=d, Dv=d, form=form, **attrs)
    feeds = feeds_for(model)
    sess = normrt.InferenceSession(model)
    got = _specialized_and_generic(sess, feeds)
    if any(n.op_type == "Attention" and n.domain == "normrt" for n in sess.optimized_model.graph.node):
        assert _prepared(sess, "_attention"), "the fused attention runs its prepared call"
    np.testing.assert_allclose(got[0], ReferenceEvaluator(model).run(None, feeds)[0], rtol=2e-5, atol=2e-6)


@pytest.mark.filterwarnings("ignore:invalid value encountered:RuntimeWarning")   # the reference's -inf rows
@settings(max_examples=20, deadline=None)
@given(mask_shape=st.sampled_from([(40, 50), (2, 1, 40, 50), (1, 3, 1, 50), (50,), (3, 40, 50), (2, 3, 40, 1)]),
       hidden_rows=st.booleans(), where=st.booleans(), seed=st.integers(0, 2 ** 16))
def test_prepared_attention_with_a_run_time_mask_bitwise_generic(mask_shape, hidden_rows, where, seed):
    """A mask fed at run time (a padding mask): the prepared call takes it, its broadcast decided
    once, and writes NaN in the rows it hides from every key (nan_rows) or zeros after the
    Where(IsNaN) - bitwise the generic call, and onnx.reference's values."""
    from test_pass_attention_decomposed import attention_model
    model = attention_model(q_shape=(2, 3, 40, 16), kv_shape=(2, 3, 50, 16), mask=mask_shape, where=where)
    rng = np.random.default_rng(seed)
    feeds = {i.name: rng.standard_normal([d.dim_value for d in i.type.tensor_type.shape.dim]).astype(np.float32)
             for i in model.graph.input}
    feeds["M"] = np.where(rng.random(mask_shape) < 0.3, -np.inf, feeds["M"]).astype(np.float32)
    if hidden_rows and mask_shape[-1] > 1:
        # a query seeing no key (a mask shared by the rows: every query of its batch / head)
        rows = (Ellipsis, 3, slice(None)) if len(mask_shape) > 1 and mask_shape[-2] > 3 \
            else (0,) * (len(mask_shape) - 1) + (slice(None),)
        feeds["M"][rows] = -np.inf
    sess = normrt.InferenceSession(model)
    got = _specialized_and_generic(sess, feeds)
    assert _prepared(sess, "_attention"), "the fused attention runs its prepared call"
    np.testing.assert_allclose(got[0], ReferenceEvaluator(model).run(None, feeds)[0], rtol=2e-5, atol=2e-6)


def _pre_ln_block(width, rms, rng):
    """x -> (x + r) -> LayerNorm/RMSNorm, the sum also used: the residual-norm fusion's form."""
    nodes = [helper.make_node("Add", ["x", "r"], ["s"])]
    inits = [numpy_helper.from_array(rng.standard_normal(width).astype(np.float32), "g")]
    if rms:
        nodes += [helper.make_node("RMSNormalization", ["s", "g"], ["n"], axis=-1, epsilon=1e-5)]
    else:
        inits.append(numpy_helper.from_array(rng.standard_normal(width).astype(np.float32), "b"))
        nodes += [helper.make_node("LayerNormalization", ["s", "g", "b"], ["n"], axis=-1, epsilon=1e-5)]
    nodes += [helper.make_node("Mul", ["s", "n"], ["y"])]        # the sum read after the norm
    vi = helper.make_tensor_value_info
    graph = helper.make_graph(nodes, "block", [vi("x", TensorProto.FLOAT, ["b", 5, width]),
                                               vi("r", TensorProto.FLOAT, ["b", 5, width])],
                              [vi("y", TensorProto.FLOAT, ["b", 5, width])], inits)
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 23)])


@settings(max_examples=20, deadline=None)
@given(rms=st.booleans(), width=st.integers(1, 70), batches=st.lists(st.integers(1, 3), min_size=2, max_size=3),
       seed=st.integers(0, 2 ** 16))
def test_prepared_norm_with_residual_sum_bitwise_generic(rms, width, batches, seed):
    rng = np.random.default_rng(seed)
    model = _pre_ln_block(width, rms, rng)
    sess = normrt.InferenceSession(model)
    ref = ReferenceEvaluator(model)
    for b in batches:
        feeds = {n: (rng.standard_normal((b, 5, width)) * 3 + 1).astype(np.float32) for n in ("x", "r")}
        got = _specialized_and_generic(sess, feeds)
        np.testing.assert_allclose(got[0], ref.run(None, feeds)[0], rtol=1e-4, atol=1e-4)
    if any(len(n.output) > 1 and n.domain == "normrt" for n in sess.optimized_model.graph.node):
        assert _prepared(sess, "_norm_sum"), "the norm with its residual sum runs its prepared call"


@settings(max_examples=25, deadline=None)
@given(mode=st.sampled_from(["nearest", "linear"]),
       ctm=st.sampled_from(["half_pixel", "pytorch_half_pixel", "align_corners", "asymmetric"]),
       by_sizes=st.booleans(), h=st.integers(1, 12), w=st.integers(1, 12), oh=st.integers(1, 24),
       ow=st.integers(1, 24), batches=st.lists(st.integers(1, 3), min_size=2, max_size=3),
       seed=st.integers(0, 2 ** 16))
def test_prepared_resize_bitwise_generic(mode, ctm, by_sizes, h, w, oh, ow, batches, seed):
    """Resize on the kernels with its index tables made once per input shape (scales, or sizes
    of the two spatial axes)."""
    rng = np.random.default_rng(seed)
    if by_sizes:
        inits = [numpy_helper.from_array(np.array([oh, ow], np.int64), "sizes")]
        node = helper.make_node("Resize", ["x", "", "", "sizes"], ["y"], mode=mode, axes=[2, 3],
                                coordinate_transformation_mode=ctm)
    else:
        inits = [numpy_helper.from_array(np.array([1, 1, oh / h, ow / w], np.float32), "scales")]
        node = helper.make_node("Resize", ["x", "", "scales"], ["y"], mode=mode, coordinate_transformation_mode=ctm)
    vi = helper.make_tensor_value_info
    graph = helper.make_graph([node], "resize", [vi("x", TensorProto.FLOAT, ["b", 3, h, w])],
                              [vi("y", TensorProto.FLOAT, ["b", 3, "oh", "ow"])], inits)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 19)])
    sess = normrt.InferenceSession(model)
    ref = ReferenceEvaluator(model)
    for b in batches:
        feeds = {"x": rng.standard_normal((b, 3, h, w)).astype(np.float32)}
        got = _specialized_and_generic(sess, feeds)
        if mode == "linear" or (oh % h == 0 and ow % w == 0):
            # (nearest at fractional scales: normrt's float64 coordinates and the reference's
            # float32 ones may round a tie apart; the generic op's known difference)
            want = ref.run(None, feeds)[0]
            if mode == "linear" and not np.allclose(got[0], want, rtol=1e-5, atol=1e-5):
                # onnx.reference is off on some `sizes` ratios (10 -> 14 half_pixel: 6.0 where
                # onnxruntime and torch give 7.0, see test_resize_kernel): onnxruntime decides
                want = _ort_session(model).run(None, feeds)[0]
            np.testing.assert_allclose(got[0], want, rtol=1e-5, atol=1e-5)
    assert _prepared(sess, "_resize"), "Resize runs its prepared call"


def _ort_session(model):
    ort = pytest.importorskip("onnxruntime")
    return ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"])


def _batched_matmul_model(batch, b_batch, m, k, n, b_value=None):
    """y = a @ b for a (*batch, m, k) and b (*b_batch, k, n); b a constant when b_value is given."""
    vi = helper.make_tensor_value_info
    inputs = [vi("a", TensorProto.FLOAT, batch + [m, k])]
    inits = [numpy_helper.from_array(b_value, "b")] if b_value is not None else []
    if b_value is None:
        inputs.append(vi("b", TensorProto.FLOAT, b_batch + [k, n]))
    graph = helper.make_graph([helper.make_node("MatMul", ["a", "b"], ["y"])], "mm", inputs,
                              [vi("y", TensorProto.FLOAT, batch + [m, n])], inits)
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])


@settings(max_examples=25, deadline=None)
@given(batch=st.lists(st.integers(1, 4), min_size=1, max_size=2), m=st.integers(1, 24), k=st.integers(1, 24),
       n=st.integers(1, 24), b_ones=st.booleans(), seed=st.integers(0, 2 ** 16))
def test_prepared_small_batched_matmul_bitwise_generic(batch, m, k, n, b_ones, seed):
    """Batched small products (window / head attention) with their broadcast decided once."""
    rng = np.random.default_rng(seed)
    b_batch = [1] * len(batch) if b_ones else batch
    model = _batched_matmul_model(batch, b_batch, m, k, n)
    feeds = {"a": rng.standard_normal(batch + [m, k]).astype(np.float32),
             "b": rng.standard_normal(b_batch + [k, n]).astype(np.float32)}
    sess = normrt.InferenceSession(model)
    got = _specialized_and_generic(sess, feeds)
    np.testing.assert_allclose(got[0], feeds["a"].astype(np.float64) @ feeds["b"], rtol=1e-5, atol=1e-5 * k)
    assert _prepared(sess, "_batched")


@settings(max_examples=12, deadline=None)
@given(batch=st.lists(st.integers(1, 4), min_size=1, max_size=2), m=st.integers(64, 170), k=st.integers(16, 170),
       n=st.integers(128, 330), b_ones=st.booleans(), b_const=st.booleans(), seed=st.integers(0, 2 ** 16))
def test_batched_gemm_products_bitwise_for_any_thread_count(batch, m, k, n, b_ones, b_const, seed):
    """Batched products above the small kernel's size (wav2vec2-conformer's relative-position
    scores, 4 x 159x16x317) run all products' GEMM jobs in one parallel loop: bitwise the same for
    1, 2 and 3 threads, specialized or generic, B an input or a constant, and each product what
    normrt.matmul computes."""
    rng = np.random.default_rng(seed)
    b_batch = [1] * len(batch) if b_ones else batch
    a = rng.standard_normal(batch + [m, k]).astype(np.float32)
    b = rng.standard_normal(b_batch + [k, n]).astype(np.float32)
    model = _batched_matmul_model(batch, b_batch, m, k, n, b if b_const else None)
    feeds = {"a": a} if b_const else {"a": a, "b": b}
    results = []
    for threads in (1, 2, 3):
        sess = normrt.InferenceSession(model, num_threads=threads)
        results.append(_specialized_and_generic(sess, feeds)[0])
        assert m * n * k < 1 << 18 or _prepared(sess, "_batched")
    for r in results[1:]:
        assert np.array_equal(r, results[0])
    if m * n * k < 1 << 18:
        return                     # (the small kernel's: test_prepared_small_batched_matmul_bitwise_generic)
    bb = np.broadcast_to(b, tuple(batch) + (k, n))
    for idx in np.ndindex(*batch):
        assert np.array_equal(results[0][idx], normrt.matmul(a[idx], np.ascontiguousarray(bb[idx])))


@settings(max_examples=25, deadline=None)
@given(mode=st.sampled_from(["layer", "rms"]), c=st.integers(1, 40), hw=st.tuples(st.integers(1, 9), st.integers(1, 9)),
       affine=st.sampled_from(["none", "scale", "both"]), act=st.sampled_from(["", "gelu", "relu"]),
       batches=st.lists(st.integers(1, 3), min_size=1, max_size=2), seed=st.integers(0, 2 ** 16))
def test_prepared_channel_norm_bitwise_generic(mode, c, hw, affine, act, batches, seed):
    # normrt::ChannelNorm (what channels_first_blocks and the LayerNorm2d recognizers emit)
    rng = np.random.default_rng(seed)
    inits, ins = [], ["x"]
    scale = rng.standard_normal(c).astype(np.float32)
    bias = rng.standard_normal(c).astype(np.float32)
    if affine != "none":
        inits.append(numpy_helper.from_array(scale, "s"))
        ins.append("s")
    if affine == "both":
        inits.append(numpy_helper.from_array(bias, "b"))
        ins.append("b")
    node = helper.make_node("ChannelNorm", ins, ["y"], domain="normrt", mode=mode, epsilon=1e-5, activation=act)
    vi = helper.make_tensor_value_info
    graph = helper.make_graph([node], "cn", [vi("x", TensorProto.FLOAT, ["n", c, *hw])],
                              [vi("y", TensorProto.FLOAT, ["n", c, *hw])], inits)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 18), helper.make_opsetid("normrt", 1)])
    sess = normrt.InferenceSession(model.SerializeToString())
    for b in batches:
        x = (rng.standard_normal((b, c, *hw)) * 2 + 3).astype(np.float32)
        got = _specialized_and_generic(sess, {"x": x})[0]
        x64 = x.astype(np.float64)
        if mode == "layer":
            x64 = x64 - x64.mean(axis=1, keepdims=True)
        want = x64 / np.sqrt((x64 ** 2).mean(axis=1, keepdims=True) + 1e-5)
        if affine != "none":
            want = want * scale.reshape(1, c, 1, 1)
        if affine == "both":
            want = want + bias.reshape(1, c, 1, 1)
        if act == "relu":
            want = np.maximum(want, 0)
        elif act == "gelu":
            erf = np.vectorize(math.erf)
            want = 0.5 * want * (1 + erf(want / np.sqrt(2)))
        np.testing.assert_allclose(got, want, rtol=2e-5, atol=2e-5)
    assert _prepared(sess, "_channel_norm"), "ChannelNorm runs its prepared call"


@settings(max_examples=60, deadline=None)
@given(op=st.sampled_from(["ReduceMean", "ReduceSum", "ReduceMax", "ReduceMin", "ReduceL2", "ReduceSumSquare"]),
       opset=st.sampled_from([13, 18]),
       shape=st.lists(st.integers(1, 6), min_size=1, max_size=4), data=st.data(), keepdims=st.booleans(),
       dtype=st.sampled_from([np.float32, np.float64]), seed=st.integers(0, 2 ** 16))
def test_reduce_mean_sum_fast_step_bitwise_generic(op, opset, shape, data, keepdims, dtype, seed):
    # the specialized plan's reductions (np.add.reduce, np.mean's own division, ufunc reduces)
    axes = data.draw(st.lists(st.integers(-len(shape), len(shape) - 1), min_size=1, max_size=len(shape),
                              unique_by=lambda a: a % len(shape)))
    rng = np.random.default_rng(seed)
    vi = helper.make_tensor_value_info
    elem = TensorProto.FLOAT if dtype == np.float32 else TensorProto.DOUBLE
    axes_as_input = op == "ReduceSum" or opset >= 18
    inits = [numpy_helper.from_array(np.array(axes, np.int64), "axes")] if axes_as_input else []
    attrs = {"keepdims": int(keepdims)} if axes_as_input else {"keepdims": int(keepdims), "axes": axes}
    node = helper.make_node(op, ["x", "axes"] if axes_as_input else ["x"], ["y"], **attrs)
    graph = helper.make_graph([node], "r", [vi("x", elem, shape)], [vi("y", elem, None)], inits)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", opset)])
    sess = normrt.InferenceSession(model.SerializeToString())
    x = (rng.standard_normal(shape) * 3 + 1).astype(dtype)
    got = _specialized_and_generic(sess, {"x": x})[0]
    want = ReferenceEvaluator(model).run(None, {"x": x})[0]
    assert got.shape == want.shape and got.dtype == want.dtype
    np.testing.assert_allclose(got, want, rtol=1e-5 if dtype == np.float32 else 1e-12, atol=1e-6)
    if want.ndim:      # (a 0-d result takes the generic call: np.mean's scalar branch)
        assert _prepared(sess, {"ReduceMean": "_reduce_mean", "ReduceSum": "np.add.reduce", "ReduceMax": "np.maximum",
                                "ReduceMin": "np.minimum"}.get(op, "_sum_squares"))


@settings(max_examples=25, deadline=None)
@given(shape=st.lists(st.integers(1, 9), min_size=3, max_size=5), dtype=st.sampled_from([np.float32, np.float64]),
       seed=st.integers(0, 2 ** 16))
def test_global_average_pool_fast_step_bitwise_generic(shape, dtype, seed):
    # EfficientNet's squeeze-excite squeezes: the pool kernel called straight from the plan
    vi = helper.make_tensor_value_info
    elem = TensorProto.FLOAT if dtype == np.float32 else TensorProto.DOUBLE
    out_shape = shape[:2] + [1] * (len(shape) - 2)
    node = helper.make_node("GlobalAveragePool", ["x"], ["p"])
    relu = helper.make_node("Relu", ["p"], ["y"])      # p inside the plan: a reused buffer
    graph = helper.make_graph([node, relu], "gap", [vi("x", elem, shape)], [vi("y", elem, out_shape)])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    sess = normrt.InferenceSession(model.SerializeToString())
    x = (np.random.default_rng(seed).standard_normal(shape) * 3 + 1).astype(dtype)
    got = _specialized_and_generic(sess, {"x": x})[0]
    # (a plane whose mean cancels to ~0 carries its terms' rounding: atol from their magnitude)
    atol = 16 * np.finfo(dtype).eps * float(np.abs(x).max())
    np.testing.assert_allclose(got, ReferenceEvaluator(model).run(None, {"x": x})[0], rtol=1e-6, atol=atol)
    assert _prepared(sess, "_global_average")


@settings(max_examples=40, deadline=None)
@given(op=st.sampled_from(["MaxPool", "AveragePool"]), c=st.integers(1, 6), hw=st.tuples(st.integers(1, 12),
       st.integers(1, 12)), k=st.tuples(st.integers(1, 4), st.integers(1, 4)), s=st.tuples(st.integers(1, 3),
       st.integers(1, 3)), pads=st.lists(st.integers(0, 2), min_size=4, max_size=4), ceil=st.booleans(),
       dil=st.sampled_from([(1, 1), (2, 1)]), include_pad=st.booleans(), dtype=st.sampled_from([np.float32, np.float64]),
       seed=st.integers(0, 2 ** 16))
def test_pool_fast_step_bitwise_generic(op, c, hw, k, s, pads, ceil, dil, include_pad, dtype, seed):
    # a ResNet stem's MaxPool, MobileNet-style AveragePools: geometry worked out once, the plane
    # kernel called straight from the plan, into the plan's buffer
    pads = [min(p, kk - 1) for p, kk in zip(pads, k + k)]          # ONNX: pads smaller than the kernel
    attrs = dict(kernel_shape=list(k), strides=list(s), pads=pads, ceil_mode=int(ceil))
    if op == "MaxPool":
        attrs["dilations"] = list(dil)
    else:
        attrs["count_include_pad"] = int(include_pad)
    span = [(kk - 1) * (dd if op == "MaxPool" else 1) + 1 for kk, dd in zip(k, dil)]
    if any(h + pads[i] + pads[i + 2] < sp for i, (h, sp) in enumerate(zip(hw, span))):
        return                                                      # no window fits
    def model_of(elem):
        vi = helper.make_tensor_value_info
        nodes = [helper.make_node(op, ["x"], ["p"], **attrs), helper.make_node("Relu", ["p"], ["y"])]
        graph = helper.make_graph(nodes, "pool", [vi("x", elem, [2, c, *hw])], [vi("y", elem, None)])
        return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 19)])
    model = model_of(TensorProto.FLOAT if dtype == np.float32 else TensorProto.DOUBLE)
    sess = normrt.InferenceSession(model.SerializeToString())
    x = (np.random.default_rng(seed).standard_normal((2, c, *hw)) * 3).astype(np.float32)
    got = _specialized_and_generic(sess, {"x": x.astype(dtype)})[0]
    # oracle: onnxruntime's float32 run (onnx.reference mis-sizes some ceil_mode windows)
    want = _ort_session(model_of(TensorProto.FLOAT)).run(None, {"x": x})[0]
    assert got.shape == want.shape
    np.testing.assert_allclose(got, want, rtol=1e-6, atol=1e-6)
    out_hw = got.shape[2:]
    if op == "MaxPool" or tuple(out_hw) != (1, 1):
        assert _prepared(sess, "_pool_into")
    elif not any(pads) and all(kk == h for kk, h in zip(k, hw)):
        assert _prepared(sess, "_global_average")       # one window, the whole plane: its mean


@pytest.mark.parametrize("shape,kernel,pads,include_pad,whole", [
    ((1, 64, 7, 7), (7, 7), (0, 0, 0, 0), 0, True),
    ((2, 8, 5, 3), (5, 3), (0, 0, 0, 0), 1, True),
    ((1, 8, 2, 2), (3, 3), (0, 0, 1, 1), 0, True),       # trailing padding outside the count
    ((1, 8, 2, 2), (3, 3), (0, 0, 1, 1), 1, False),      # ... inside it: a rescaled mean
    ((1, 8, 7, 7), (7, 7), (1, 1, 1, 1), 0, False)])     # several windows
def test_whole_plane_average_pool_fast_step(shape, kernel, pads, include_pad, whole):
    # ResNet's 7x7 AveragePool over a 7x7 map: the plane means from the plan, into its buffer;
    # rescaled means (padding in the count) and several windows keep their own paths
    vi = helper.make_tensor_value_info
    nodes = [helper.make_node("AveragePool", ["x"], ["p"], kernel_shape=list(kernel), pads=list(pads),
                              count_include_pad=include_pad),
             helper.make_node("Relu", ["p"], ["y"])]
    graph = helper.make_graph(nodes, "pool", [vi("x", TensorProto.FLOAT, list(shape))],
                              [vi("y", TensorProto.FLOAT, None)])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 19)])
    sess = normrt.InferenceSession(model.SerializeToString())
    x = (np.random.default_rng(7).standard_normal(shape) * 3 + 1).astype(np.float32)
    got = _specialized_and_generic(sess, {"x": x})[0]
    np.testing.assert_allclose(got, _ort_session(model).run(None, {"x": x})[0], rtol=1e-6, atol=1e-6)
    assert bool(_prepared(sess, "_global_average")) == whole


@settings(max_examples=40, deadline=None)
@given(form=st.sampled_from(["HardSwish", "HardSigmoid", "HardSigmoid_keras", "Clip_0_6", "Clip_0", "Clip_-1_1"]),
       shape=st.lists(st.integers(1, 40), min_size=1, max_size=4), dtype=st.sampled_from([np.float32, np.float64]),
       specials=st.booleans(), seed=st.integers(0, 2 ** 16))
def test_standalone_hard_activations_fast_step_bitwise_generic(form, shape, dtype, specials, seed):
    # LeViT's HardSwish after its attention, MobileNet's ReLU6 after a non-conv: the activation
    # kernel straight from the plan where it computes the generic op's very operations
    vi = helper.make_tensor_value_info
    elem = TensorProto.FLOAT if dtype == np.float32 else TensorProto.DOUBLE
    inits = []
    if form.startswith("Clip"):
        bounds = [float(v) for v in form.split("_")[1:]]
        names = [f"bound{i}" for i in range(len(bounds))]
        inits = [numpy_helper.from_array(np.array(v, dtype), n) for n, v in zip(names, bounds)]
        act = helper.make_node("Clip", ["x"] + names, ["a"])
    elif form == "HardSigmoid_keras":
        act = helper.make_node("HardSigmoid", ["x"], ["a"], alpha=0.2, beta=0.5)
    elif form == "HardSigmoid":
        act = helper.make_node("HardSigmoid", ["x"], ["a"], alpha=1.0 / 6.0, beta=0.5)
    else:
        act = helper.make_node("HardSwish", ["x"], ["a"])
    nodes = [act, helper.make_node("Neg", ["a"], ["y"])]
    graph = helper.make_graph(nodes, "act", [vi("x", elem, shape)], [vi("y", elem, shape)], inits)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    rng = np.random.default_rng(seed)
    x = (rng.standard_normal(shape) * 5).astype(dtype)
    if specials:
        x.reshape(-1)[rng.integers(x.size)] = np.nan
        x.reshape(-1)[rng.integers(x.size)] = -0.0
    sess = normrt.InferenceSession(model.SerializeToString())
    got = _specialized_and_generic(sess, {"x": x})[0]
    want = ReferenceEvaluator(model).run(None, {"x": x})[0]
    np.testing.assert_allclose(got, want, rtol=1e-6, atol=1e-7)
    kernel = form in ("HardSwish", "Clip_0_6", "Clip_0") or (form == "HardSigmoid" and dtype == np.float32)
    assert bool(_prepared(sess, "_activation_into")) == kernel


@settings(max_examples=30, deadline=None)
@given(vocab=st.integers(1, 50), width=st.integers(1, 20), ids=st.lists(st.integers(1, 12), min_size=1, max_size=2),
       axis=st.sampled_from([0, 1]), idx_type=st.sampled_from([np.int64, np.int32]), seed=st.integers(0, 2 ** 16))
def test_gather_of_run_time_indices_fast_step_bitwise_generic(vocab, width, ids, axis, idx_type, seed):
    # an embedding lookup: token ids fed at run time, negative ones wrapping as in the generic op
    vi = helper.make_tensor_value_info
    rng = np.random.default_rng(seed)
    table = rng.standard_normal((vocab, width)).astype(np.float32)
    n = (vocab, width)[axis]
    elem = TensorProto.INT64 if idx_type == np.int64 else TensorProto.INT32
    nodes = [helper.make_node("Gather", ["table", "ids"], ["e"], axis=axis), helper.make_node("Neg", ["e"], ["y"])]
    graph = helper.make_graph(nodes, "emb", [vi("ids", elem, ids)], [vi("y", TensorProto.FLOAT, None)],
                              [numpy_helper.from_array(table, "table")])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    sess = normrt.InferenceSession(model.SerializeToString())
    feed = {"ids": rng.integers(-n, n, ids).astype(idx_type)}
    got = _specialized_and_generic(sess, feed)[0]
    np.testing.assert_array_equal(got, -np.take(table, feed["ids"], axis=axis))
    assert _prepared(sess, "np.take(")
    with pytest.raises(Exception):
        sess.run(None, {"ids": np.full(ids, n, idx_type)})


# ------------------------------------------ GroupNorm, InstanceNorm, BatchNorm (domain.py's `prepare`)
ELEM = {np.dtype(np.float32): TensorProto.FLOAT, np.dtype(np.float64): TensorProto.DOUBLE,
        np.dtype(np.float16): TensorProto.FLOAT16, np.dtype(ml_dtypes.bfloat16): TensorProto.BFLOAT16}
NORM_SETTINGS = settings(max_examples=20, deadline=None, suppress_health_check=[HealthCheck.too_slow])
NORM_DTYPES = pytest.mark.parametrize("dtype", ALL_FLOAT_DTYPES, ids=dtype_name)
EPS = 1e-5


def _norm_model(node, x_shape, dtype, inits):
    elem = ELEM[np.dtype(dtype)]
    graph = helper.make_graph([node], "g", [helper.make_tensor_value_info("x", elem, list(x_shape))],
                              [helper.make_tensor_value_info("y", elem, list(x_shape))],
                              [numpy_helper.from_array(np.asarray(v), k) for k, v in inits.items()])
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 18), helper.make_opsetid("normrt", 1)])


def _run(model, x, name):
    """The specialized plan's output (bitwise the generic one's), after checking it took the
    prepared call bound as `name`."""
    sess = normrt.InferenceSession(model.SerializeToString())
    y = _specialized_and_generic(sess, {"x": x})[0]
    assert _prepared(sess, name), f"the node runs its prepared call {name}"
    return y


def _params(rng, n, dtype, pdt):
    """scale, bias of n entries in pdt (float32 or X's dtype), values X's dtype holds exactly."""
    return [(rng.standard_normal(n) * s + o).astype(dtype).astype(pdt) for s, o in ((0.5, 1.0), (0.5, 0.0))]


def _check_norm(y, ref, dtype):
    # float32 arithmetic before the one rounding to the output dtype (float64: exact statistics)
    assert_close_in_dtype(y, ref, dtype, ulps=1.0 if np.dtype(dtype).itemsize == 2 else 64.0, f32_rel=2.0 ** -19)


def _grouped_ref(x, groups, scale, bias, act):
    x64 = np.asarray(x, np.float64)
    N, C = x64.shape[:2]
    g = x64.reshape(N, groups, -1)
    mean = g.mean(axis=2, keepdims=True)
    var = g.var(axis=2, keepdims=True)
    z = ((g - mean) / np.sqrt(var + EPS)).reshape(x64.shape)
    cshape = (1, C) + (1,) * (x64.ndim - 2)
    return ref_act(z * np.asarray(scale, np.float64).reshape(cshape) + np.asarray(bias, np.float64).reshape(cshape),
                   act or None)


@NORM_DTYPES
@NORM_SETTINGS
@given(n=st.integers(1, 3), groups=st.integers(1, 4), per=st.integers(1, 4),
       spatial=st.lists(st.integers(1, 9), min_size=1, max_size=2), act=st.sampled_from(["", "relu", "silu"]),
       params_in_x_dtype=st.booleans(), per_group=st.booleans(), seed=st.integers(0, 2 ** 16))
def test_group_norm(dtype, n, groups, per, spatial, act, params_in_x_dtype, per_group, seed):
    rng = np.random.default_rng(seed)
    C = groups * per
    x = (rng.standard_normal((n, C, *spatial)) * 3 + 2).astype(dtype)
    pdt = dtype if params_in_x_dtype else (np.float64 if np.dtype(dtype) == np.float64 else np.float32)
    scale, bias = _params(rng, groups if per_group else C, dtype, pdt)
    node = normrt_node("GroupNorm", ["x", "s", "b"], ["y"], "gn", num_groups=groups, epsilon=EPS,
                       activation=act, per_group_affine=int(per_group))
    y = _run(_norm_model(node, x.shape, dtype, {"s": scale, "b": bias}), x, "_group_norm")
    if per_group:
        scale, bias = np.repeat(scale, per), np.repeat(bias, per)
    _check_norm(y, _grouped_ref(x, groups, scale, bias, act), dtype)


@NORM_DTYPES
@NORM_SETTINGS
@given(n=st.integers(1, 3), c=st.integers(1, 6), spatial=st.lists(st.integers(1, 9), min_size=1, max_size=2),
       act=st.sampled_from(["", "relu", "silu"]), affine=st.booleans(), seed=st.integers(0, 2 ** 16))
def test_instance_norm(dtype, n, c, spatial, act, affine, seed):
    rng = np.random.default_rng(seed)
    x = (rng.standard_normal((n, c, *spatial)) * 2 - 1).astype(dtype)
    pdt = np.float64 if np.dtype(dtype) == np.float64 else np.float32
    scale, bias = _params(rng, c, dtype, pdt)
    ins, inits = (["x", "s", "b"], {"s": scale, "b": bias}) if affine else (["x"], {})
    node = normrt_node("InstanceNorm", ins, ["y"], "in", epsilon=EPS, activation=act)
    y = _run(_norm_model(node, x.shape, dtype, inits), x, "_instance_norm")
    if not affine:
        scale, bias = np.ones(c), np.zeros(c)
    _check_norm(y, _grouped_ref(x, c, scale, bias, act), dtype)


@NORM_DTYPES
@NORM_SETTINGS
@given(n=st.integers(1, 3), c=st.integers(1, 6), spatial=st.lists(st.integers(1, 9), min_size=0, max_size=2),
       act=st.sampled_from(["", "relu"]), stats_dtype=st.sampled_from(["float32", "float64", "mixed"]),
       seed=st.integers(0, 2 ** 16))
def test_batch_norm(dtype, n, c, spatial, act, stats_dtype, seed):
    rng = np.random.default_rng(seed)
    x = (rng.standard_normal((n, c, *spatial)) * 2 + 1).astype(dtype)
    scale, bias, mean = (rng.standard_normal(c) for _ in range(3))
    var = rng.uniform(0.1, 3.0, c)
    dts = {"float32": [np.float32] * 4, "float64": [np.float64] * 4,
           "mixed": [np.float32, np.float64, np.float32, np.float64]}[stats_dtype]
    params = [p.astype(d) for p, d in zip((scale, bias, mean, var), dts)]
    node = normrt_node("BatchNorm", ["x", "s", "b", "m", "v"], ["y"], "bn", epsilon=EPS, activation=act)
    y = _run(_norm_model(node, x.shape, dtype, dict(zip("sbmv", params))), x, "_batch_norm")
    cshape = (1, c) + (1,) * len(spatial)
    s64, b64, m64, v64 = (np.asarray(p, np.float64).reshape(cshape) for p in params)
    ref = ref_act((np.asarray(x, np.float64) - m64) * (s64 / np.sqrt(v64 + EPS)) + b64, act or None)
    _check_norm(y, ref, dtype)


def test_prepared_call_refuses_what_the_generic_call_refuses():
    """A GroupNorm whose num_groups does not divide C gets no prepared call: the run raises the
    generic call's error, naming the node."""
    x = np.ones((1, 6, 2, 2), np.float32)
    node = normrt_node("GroupNorm", ["x", "s", "b"], ["y"], "bad_gn", num_groups=4)
    model = _norm_model(node, x.shape, np.float32, {"s": np.ones(6, np.float32), "b": np.zeros(6, np.float32)})
    sess = normrt.InferenceSession(model.SerializeToString())
    with pytest.raises(Exception, match="bad_gn"):
        sess.run(None, {"x": x})

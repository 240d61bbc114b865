"""The 8-bit product of static QDQ models: the kernel (pyx/int8_gemm) against exact integer sums
in numpy, on both paths and any thread count; quantized_products rewriting a QDQ MatMul / Gemm
to it (against onnx.reference's float evaluation of the QDQ graph), and its refusals."""
import contextlib

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings, strategies as st
from onnx import TensorProto, helper, numpy_helper
from onnx.reference import ReferenceEvaluator

import normrt
from graph_builder import vi
from test_pass_integer_products import quantized_linear
from normrt._kernels import int8_gemm as kernel
from normrt.onnx.passes import quantized_products

PATHS = ["portable"] + (["avx512_vnni"] if normrt.cpu_info()["int8_dot"] == "avx512_vnni" else [])
GRIDS = {"uint8": (0.0, 255.0), "int8": (-128.0, 127.0)}


@contextlib.contextmanager
def int8_path(path):
    """The products on `path` inside the block (the previous path restored after)."""
    before = kernel.set_int8_dot(path)
    try:
        yield
    finally:
        kernel.set_int8_dot(before)


def exact_product(codes, zero, w, col_scale, bias):
    """float32((codes - zero) @ w, summed exactly) * col_scale + bias, in float32 as the kernel rounds."""
    acc = (codes.astype(np.int64) - int(zero)) @ w.astype(np.int64)
    y = acc.astype(np.float32) * col_scale
    return y + bias if bias is not None else y


@settings(max_examples=40, deadline=None)
@given(m=st.integers(1, 70), k=st.integers(1, 300), n=st.integers(1, 100), grid=st.sampled_from(list(GRIDS)),
       with_bias=st.booleans(), seed=st.integers(0, 2**31 - 1))
def test_kernel_is_the_exact_integer_product(m, k, n, grid, with_bias, seed):
    rng = np.random.default_rng(seed)
    lo, hi = GRIDS[grid]
    zero = float(rng.integers(lo, hi, endpoint=True))
    scale = np.float32(rng.choice([0.01, 0.0173, 0.5]))
    codes = rng.integers(lo, hi, (m, k), endpoint=True)
    x = ((codes - zero) * scale).astype(np.float32)            # on the grid
    w = rng.integers(-128, 128, (k, n)).astype(np.int8)
    w_scale = rng.uniform(1e-3, 1e-2, n).astype(np.float32)
    bias = rng.standard_normal(n).astype(np.float32) if with_bias else None
    want = exact_product(codes, zero, w, scale * w_scale, bias)
    packed, colsum = kernel.pack_weight(w)
    np.testing.assert_array_equal(colsum, w.astype(np.int64).sum(0))
    for path in PATHS:
        for threads in (1, 2, 3):
            y = np.full((m, n), np.nan, np.float32)
            with int8_path(path):
                grid = kernel.qmatmul(x, packed, colsum, k, (scale, zero, lo, hi), w_scale,
                                      bias if bias is not None else np.zeros(0, np.float32), y, 0, threads)
            assert grid == (scale, zero, lo, hi)
            assert np.array_equal(y, want), (path, threads)


def test_kernel_quantizes_off_grid_rows_and_keeps_nan():
    """Rows off the grid are quantized as QuantizeLinear does (round half to even, saturate); a row
    holding a NaN gives NaN across (the float product's), the other rows are untouched."""
    scale, zero = np.float32(0.5), 10.0
    x = np.array([[0.25, 0.75, -0.25, 1000.0], [np.nan, 1.0, 2.0, 3.0], [-1000.0, 0.1, 0.2, 0.3]], np.float32)
    w = np.array([[1, -2], [3, 4], [-5, 6], [7, -8]], np.int8)
    codes = np.clip(np.rint(x / scale) + zero, 0, 255)
    want = exact_product(np.nan_to_num(codes), zero, w, scale * np.full(2, 0.5, np.float32), None)
    want[1] = np.nan
    packed, colsum = kernel.pack_weight(w)
    for path in PATHS:
        y = np.empty((3, 2), np.float32)
        with int8_path(path):
            kernel.qmatmul(x, packed, colsum, 4, (scale, zero, 0.0, 255.0), np.full(2, 0.5, np.float32),
                           np.zeros(0, np.float32), y, 0, 1)
        np.testing.assert_array_equal(y, want)


def test_kernel_checks_its_arguments():
    w = np.ones((8, 3), np.int8)
    packed, colsum = kernel.pack_weight(w)
    x, y, ws, none = np.zeros((2, 8), np.float32), np.empty((2, 3), np.float32), np.ones(3, np.float32), \
        np.zeros(0, np.float32)
    with pytest.raises(ValueError, match="columns"):
        kernel.qmatmul(np.zeros((2, 5), np.float32), packed, colsum, 8, (0.1, 0.0, 0.0, 255.0), ws, none, y, 0, 1)
    with pytest.raises(ValueError, match="grid"):
        kernel.qmatmul(x, packed, colsum, 8, (0.1, 0.0, 0.0, 65535.0), ws, none, y, 0, 1)       # 16-bit
    with pytest.raises(ValueError, match="grid"):
        kernel.qmatmul(x, packed, colsum, 8, (0.0, 0.0, 0.0, 255.0), ws, none, y, 0, 1)         # scale 0
    with pytest.raises(ValueError, match="bias"):
        kernel.qmatmul(x, packed, colsum, 8, (0.1, 0.0, 0.0, 255.0), ws, np.ones(2, np.float32), y, 0, 1)
    with pytest.raises(ValueError, match="path"):
        kernel.set_int8_dot("avx9000")


# ---------------------------------------------------------------------------- the pass
def qdq_linear(kind, k, n, rng, per_channel=False, w_zero=0, grid="uint8", trans_b=True, with_bias=True):
    """x -> Q/DQ -> MatMul(DQ(Wq)) | Gemm(DQ(Wq), C) -> y, as onnxruntime's quantize_static writes it."""
    lo, hi = GRIDS[grid]
    itype = np.uint8 if grid == "uint8" else np.int8
    zero = int(rng.integers(lo, hi, endpoint=True))
    wq = rng.integers(-127, 128, (n, k) if kind == "Gemm" and trans_b else (k, n)).astype(np.int8)
    axis = 0 if kind == "Gemm" and trans_b else 1
    ws = rng.uniform(1e-3, 1e-2, n if per_channel else ()).astype(np.float32)
    inits = [numpy_helper.from_array(np.array(0.02, np.float32), "xs"), numpy_helper.from_array(np.array(zero, itype), "xz"),
             numpy_helper.from_array(wq, "wq"), numpy_helper.from_array(ws, "ws"),
             numpy_helper.from_array(np.full(ws.shape, w_zero, np.int8), "wz")]
    nodes = [helper.make_node("QuantizeLinear", ["x", "xs", "xz"], ["xq"]),
             helper.make_node("DequantizeLinear", ["xq", "xs", "xz"], ["xd"]),
             helper.make_node("DequantizeLinear", ["wq", "ws", "wz"], ["w"], axis=axis)]
    if kind == "Gemm":
        ins = ["xd", "w"]
        if with_bias:
            inits.append(numpy_helper.from_array(rng.standard_normal(n).astype(np.float32), "c"))
            ins.append("c")
        nodes.append(helper.make_node("Gemm", ins, ["y"], transB=int(trans_b)))
        shape = [3, k]
    else:
        nodes.append(helper.make_node("MatMul", ["xd", "w"], ["y"]))
        shape = [2, 5, k]
    graph = helper.make_graph(nodes, "qdq", [vi("x", shape)], [vi("y", None)], inits)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 19)])
    model.ir_version = 9
    return model, shape


@pytest.fixture
def rewrite_anywhere(monkeypatch):
    """quantized_products rewrites whatever the CPU (the portable kernel runs where VNNI is missing)
    and whatever the product's size (the generated ones are small)."""
    monkeypatch.setattr(quantized_products, "int8_dot_available", lambda: True)
    monkeypatch.setattr(quantized_products, "MIN_MACS", 0)
    monkeypatch.setattr(quantized_products, "MIN_WEIGHT", 0)


@settings(max_examples=30, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(kind=st.sampled_from(["MatMul", "Gemm"]), k=st.integers(1, 80), n=st.integers(1, 70), per_channel=st.booleans(),
       grid=st.sampled_from(list(GRIDS)), trans_b=st.booleans(), with_bias=st.booleans(), seed=st.integers(0, 2**31 - 1))
def test_qdq_linear_runs_on_the_8bit_product(rewrite_anywhere, kind, k, n, per_channel, grid, trans_b, with_bias,
                                             seed):
    rng = np.random.default_rng(seed)
    model, shape = qdq_linear(kind, k, n, rng, per_channel, grid=grid, trans_b=trans_b, with_bias=with_bias)
    sess = normrt.InferenceSession(model)
    assert "QMatMul" in [node.op_type for node in sess.optimized_model.graph.node]
    x = (rng.standard_normal(shape) * 3).astype(np.float32)
    want = ReferenceEvaluator(model).run(None, {"x": x})[0]
    got = sess.run(None, {"x": x})[0]
    assert got.shape == want.shape
    # the float graph sums rounded float terms, the kernel the exact integers: a GEMM's rounding apart
    np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-5 * max(1.0, float(np.abs(want).max())))


@pytest.mark.parametrize("change", ["asymmetric_weight", "16bit_grid", "not_on_a_grid"])
def test_refused_products_stay_float(rewrite_anywhere, change):
    rng = np.random.default_rng(5)
    model, shape = qdq_linear("MatMul", 16, 8, rng, w_zero=3 if change == "asymmetric_weight" else 0)
    g = model.graph
    if change == "16bit_grid":
        for t in g.initializer:
            if t.name == "xz":
                t.CopyFrom(numpy_helper.from_array(np.array(100, np.uint16), "xz"))
    elif change == "not_on_a_grid":
        g.node[3].input[0] = "x"          # the MatMul reads x itself
    sess = normrt.InferenceSession(model)
    ops = [node.op_type for node in sess.optimized_model.graph.node]
    assert "QMatMul" not in ops and "MatMul" in ops
    refused = [e for e in sess.report["refused"] if e["pass"] == "quantized_products"]
    assert refused and refused[0]["reason"]
    x = rng.standard_normal(shape).astype(np.float32)
    np.testing.assert_allclose(sess.run(None, {"x": x})[0], ReferenceEvaluator(model).run(None, {"x": x})[0],
                               rtol=1e-5, atol=1e-6)


def test_products_stay_float_without_the_int8_dot_product(monkeypatch):
    """Where the CPU has no VNNI the float32 GEMM is the faster one: the MatMul is left as it is."""
    monkeypatch.setattr(quantized_products, "int8_dot_available", lambda: False)
    model, _ = qdq_linear("MatMul", 16, 8, np.random.default_rng(1))
    ops = [node.op_type for node in normrt.InferenceSession(model).optimized_model.graph.node]
    assert "QMatMul" not in ops and "MatMul" in ops


@settings(max_examples=30, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(m=st.integers(1, 20), k=st.integers(1, 90), n=st.integers(1, 40), per_column=st.booleans(),
       relu=st.booleans(), seed=st.integers(0, 2**31 - 1))
def test_dynamic_quantization_is_the_integer_graph_bitwise(rewrite_anywhere, m, k, n, per_column, relu, seed):
    """quantize_dynamic's DynamicQuantizeLinear -> MatMulInteger -> Cast -> Mul -> Add(bias) [-> Relu]
    as one QMatMul(dynamic=1) with the bias and activation: the codes of x's own range, the exact
    integer sums, then the model's own float32 scale product and bias add - onnx.reference's values
    bit for bit."""
    rng = np.random.default_rng(seed)
    model, _ = quantized_linear(m, k, n, np.int8, per_column, False, rng)
    if relu:
        model.graph.node[-1].output[0] = "pre"
        model.graph.node.append(helper.make_node("Relu", ["pre"], ["y"], name="relu"))
    sess = normrt.InferenceSession(model)
    ops = [node.op_type for node in sess.optimized_model.graph.node]
    assert ops == ["QMatMul"], ops            # the bias Add (and Relu) taken in
    x = (rng.standard_normal((m, k)) * rng.uniform(0.1, 10)).astype(np.float32)
    want = ReferenceEvaluator(model).run(None, {"x": x})[0]
    for threads in (1, 2):
        with normrt.threads(threads):
            got = sess.run(None, {"x": x})[0]
        assert np.array_equal(got, want)


def test_small_products_stay_float(monkeypatch):
    """Below MIN_MACS multiply-adds (rows known) or MIN_WEIGHT weights (rows unknown) the float GEMM
    keeps the product: its call costs less and its fusions stay."""
    monkeypatch.setattr(quantized_products, "int8_dot_available", lambda: True)
    rng = np.random.default_rng(3)
    model, shape = qdq_linear("MatMul", 64, 64, rng)            # 10 rows x 64 x 64
    sess = normrt.InferenceSession(model)
    assert "QMatMul" not in [node.op_type for node in sess.optimized_model.graph.node]
    assert any("too small" in e["reason"] for e in sess.report["refused"] if e["pass"] == "quantized_products")
    model.graph.input[0].type.tensor_type.shape.dim[0].dim_param = "batch"    # rows unknown, 4096 weights
    sess = normrt.InferenceSession(model)
    assert "QMatMul" not in [node.op_type for node in sess.optimized_model.graph.node]
    big, _ = qdq_linear("MatMul", 256, 256, rng)
    big.graph.input[0].type.tensor_type.shape.dim[0].dim_param = "batch"      # 65536 weights
    x = rng.standard_normal((7, 5, 256)).astype(np.float32)
    sess = normrt.InferenceSession(big)
    assert "QMatMul" in [node.op_type for node in sess.optimized_model.graph.node]
    np.testing.assert_allclose(sess.run(None, {"x": x})[0], ReferenceEvaluator(big).run(None, {"x": x})[0],
                               rtol=1e-5, atol=1e-5)


@settings(max_examples=40, deadline=None)
@given(shape=st.tuples(st.integers(1, 40), st.integers(1, 50)),
       kind=st.sampled_from(["normal", "positive", "negative", "zeros", "nan", "huge"]), seed=st.integers(0, 2**31 - 1))
def test_dynamic_grid_is_dynamic_quantize_linears(shape, kind, seed):
    """grid=None: the kernel's own DynamicQuantizeLinear grid is ops.quantize.dynamic_range's, bit for
    bit (empty ranges, NaN, one-signed data), and the product uses it."""
    from normrt.onnx.ops.quantize import dynamic_range
    rng = np.random.default_rng(seed)
    x = (rng.standard_normal(shape) * rng.uniform(0.01, 100)).astype(np.float32)
    x = {"positive": np.abs(x), "negative": -np.abs(x), "zeros": np.zeros_like(x),
         "huge": x * np.float32(1e30)}.get(kind, x)
    if kind == "nan":
        x.flat[rng.integers(x.size)] = np.nan
    w = rng.integers(-128, 128, (shape[1], 3)).astype(np.int8)
    packed, colsum = kernel.pack_weight(w)
    y = np.empty((shape[0], 3), np.float32)
    grid = kernel.qmatmul(x, packed, colsum, shape[1], None, np.ones(3, np.float32), np.zeros(0, np.float32), y, 0, 1)
    scale, zero = dynamic_range(x)
    assert grid == (float(scale), float(zero), 0.0, 255.0)
    y2 = np.empty_like(y)
    kernel.qmatmul(x, packed, colsum, shape[1], grid, np.ones(3, np.float32), np.zeros(0, np.float32), y2, 0, 1)
    assert np.array_equal(y, y2, equal_nan=True)


@pytest.mark.parametrize("activation", ["relu", "gelu", "silu", "sigmoid", "hardswish"])
def test_activation_epilogue_is_the_activation_kernels(activation):
    """act != 0: each block activated as it is stored, the activation kernel's values (normrt.activate)."""
    from normrt._checks import activation as code
    rng = np.random.default_rng(7)
    x = rng.standard_normal((150, 70)).astype(np.float32)
    w = rng.integers(-128, 128, (70, 45)).astype(np.int8)
    packed, colsum = kernel.pack_weight(w)
    ws, bias = np.full(45, 0.003, np.float32), rng.standard_normal(45).astype(np.float32)
    plain, fused = np.empty((150, 45), np.float32), np.empty((150, 45), np.float32)
    kernel.qmatmul(x, packed, colsum, 70, None, ws, bias, plain, 0, 2)
    kernel.qmatmul(x, packed, colsum, 70, None, ws, bias, fused, code(activation), 2)
    assert np.array_equal(fused, normrt.activate(plain, activation))


@settings(max_examples=40, deadline=None)
@given(nb=st.integers(1, 5), m=st.integers(1, 40), k=st.integers(1, 90), n=st.integers(1, 70),
       grids=st.tuples(st.sampled_from(list(GRIDS)), st.sampled_from(list(GRIDS))), nan=st.booleans(),
       seed=st.integers(0, 2**31 - 1))
def test_batched_activation_product_is_exact(nb, m, k, n, grids, nan, seed):
    """Two activations' product (qmatmul_batched): B quantized and packed per call, the sums of
    (ua - za)(ub - zb) exact through the row term; a NaN in A's row or B's column gives NaN
    there, as the float product would; any path and thread count the same bits."""
    rng = np.random.default_rng(seed)
    ga, gb = [(float(s),) + (float(rng.integers(*GRIDS[g], endpoint=True)),) + GRIDS[g]
              for s, g in zip(rng.choice([0.01, 0.0173, 0.5], 2), grids)]
    ca = rng.integers(ga[2], ga[3], (nb, m, k), endpoint=True)
    cb = rng.integers(gb[2], gb[3], (nb, k, n), endpoint=True)
    a = ((ca - ga[1]) * np.float32(ga[0])).astype(np.float32)
    b = ((cb - gb[1]) * np.float32(gb[0])).astype(np.float32)
    exact = np.einsum("bmk,bkn->bmn", (ca - ga[1]).astype(np.int64), (cb - gb[1]).astype(np.int64))
    want = exact.astype(np.float32) * (np.float32(ga[0]) * np.float32(gb[0]))
    if nan:
        i, r, c = rng.integers(nb), rng.integers(m), rng.integers(n)
        a[i, r, rng.integers(k)] = np.nan
        b[i, rng.integers(k), c] = np.nan
        want[i, r, :] = np.nan
        want[i, :, c] = np.nan
    for path in PATHS:
        for threads in (1, 2, 3):
            y = np.full((nb, m, n), 7.0, np.float32)
            with int8_path(path):
                kernel.qmatmul_batched(a, b, ga, gb, y, threads)
            assert np.array_equal(y, want, equal_nan=True), (path, threads)


def qdq_attention_product(shape_a, shape_b, rng, grid_b="uint8"):
    """a -> Q/DQ, b -> Q/DQ(grid_b) -> MatMul -> y: a static QDQ model's Q K^T."""
    inits, nodes = [], []
    for name, grid, scale in (("a", "uint8", 0.02), ("b", grid_b, 0.03)):
        lo, hi = GRIDS[grid]
        itype = np.uint8 if grid == "uint8" else np.int8
        inits += [numpy_helper.from_array(np.array(scale, np.float32), f"{name}s"),
                  numpy_helper.from_array(np.array(rng.integers(lo, hi, endpoint=True), itype), f"{name}z")]
        nodes += [helper.make_node("QuantizeLinear", [name, f"{name}s", f"{name}z"], [f"{name}q"]),
                  helper.make_node("DequantizeLinear", [f"{name}q", f"{name}s", f"{name}z"], [f"{name}d"])]
    nodes.append(helper.make_node("MatMul", ["ad", "bd"], ["y"]))
    graph = helper.make_graph(nodes, "qk", [vi("a", shape_a), vi("b", shape_b)], [vi("y", None)], inits)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 19)])
    model.ir_version = 9
    return model


@settings(max_examples=25, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(batch=st.lists(st.integers(1, 4), min_size=0, max_size=2), m=st.integers(1, 30), k=st.integers(1, 40),
       n=st.integers(1, 30), grid_b=st.sampled_from(list(GRIDS)), seed=st.integers(0, 2**31 - 1))
def test_qdq_attention_products_run_on_the_8bit_kernel(rewrite_anywhere, batch, m, k, n, grid_b, seed):
    rng = np.random.default_rng(seed)
    model = qdq_attention_product(batch + [m, k], batch + [k, n], rng, grid_b)
    sess = normrt.InferenceSession(model)
    assert "QBatchedMatMul" in [node.op_type for node in sess.optimized_model.graph.node]
    feeds = {"a": (rng.standard_normal(batch + [m, k]) * 2).astype(np.float32),
             "b": (rng.standard_normal(batch + [k, n]) * 2).astype(np.float32)}
    want = ReferenceEvaluator(model).run(None, feeds)[0]
    got = sess.run(None, feeds)[0]
    np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-5 * max(1.0, float(np.abs(want).max())))


@pytest.mark.parametrize("change", ["broadcast_batch", "b_not_on_a_grid"])
def test_activation_products_refused(rewrite_anywhere, change):
    rng = np.random.default_rng(2)
    model = qdq_attention_product([2, 3, 8, 16] if change == "broadcast_batch" else [2, 8, 16],
                                  [1, 3, 16, 8] if change == "broadcast_batch" else [2, 16, 8], rng)
    if change == "b_not_on_a_grid":
        model.graph.node[-1].input[1] = "b"
    sess = normrt.InferenceSession(model)
    assert "QBatchedMatMul" not in [node.op_type for node in sess.optimized_model.graph.node]
    reasons = [e["reason"] for e in sess.report["refused"] if e["pass"] == "quantized_products"]
    # broadcasting operands on grids: refused and reported; an operand off any grid (a float
    # model's attention product): no candidate, nothing reported
    assert (len(reasons) == 1 and "broadcast" in reasons[0]) if change == "broadcast_batch" else not reasons
    feeds = {i.name: rng.standard_normal([d.dim_value for d in i.type.tensor_type.shape.dim]).astype(np.float32)
             for i in model.graph.input}
    np.testing.assert_allclose(sess.run(None, feeds)[0], ReferenceEvaluator(model).run(None, feeds)[0],
                               rtol=1e-5, atol=1e-6)


def test_cpu_info_and_version_name_the_int8_path():
    """normrt.cpu_info()["int8_dot"] is what the kernel module chose for this CPU (VNNI exactly when
    cpuid has avx512_vnni on an AVX-512 build), and `normrt --version` prints it."""
    from normrt import cli
    info = normrt.cpu_info()
    assert info["int8_dot"] == kernel.int8_dot()
    vnni_build = info["level"] in ("x86-64-v4", "native") and "avx512bw" in info["features"]
    assert (info["int8_dot"] == "avx512_vnni") == (vnni_build and "avx512_vnni" in info["features"])
    assert f"int8 products: {info['int8_dot']}" in cli.version_text()


@pytest.mark.parametrize("magnitude", [0.0, 1e-44, 1e-39])
def test_dynamic_range_too_narrow_for_a_grid(rewrite_anywhere, magnitude):
    """x within a subnormal range of 0: DynamicQuantizeLinear's scale falls below float32's normal
    range, the kernel has no grid for it (returns None) and the op computes the graph's float
    product instead - the integer graph's values (onnx.reference), no error."""
    rng = np.random.default_rng(4)
    model, _ = quantized_linear(6, 40, 9, np.int8, True, False, rng)
    sess = normrt.InferenceSession(model)
    assert [node.op_type for node in sess.optimized_model.graph.node] == ["QMatMul"]
    x = (rng.standard_normal((6, 40)) * magnitude).astype(np.float32)
    want = ReferenceEvaluator(model).run(None, {"x": x})[0]
    np.testing.assert_allclose(sess.run(None, {"x": x})[0], want, rtol=1e-6, atol=1e-6)
    w = np.ones((40, 9), np.int8)
    packed, colsum = kernel.pack_weight(w)
    y = np.full((6, 9), 3.0, np.float32)
    got = kernel.qmatmul(x, packed, colsum, 40, None, np.ones(9, np.float32), np.zeros(0, np.float32), y, 0, 1)
    assert (got is None) == (magnitude > 0) and (got is None) <= bool(np.all(y == 3.0))

"""pytest-benchmark suite for half-precision models (bench/half_models.py): per model and dtype one group
`half_model-NAME-DTYPE` holding normrt, normrt on the fused graph (see half_models.py), onnxruntime on
the same file (float16) and normrt's float32 run.

Each benchmark checks normrt's half result first (the plain file's and the fused graph's): within
twice onnxruntime's own distance from the float32 result plus 2^-8 of the output scale (float16), within 2^-4 of the output's scale of it
(bfloat16; the plain file only when no node fell back: onnx.reference computes a bfloat16 norm in bfloat16). The
float32 model differs from the bfloat16 one by its weights' 8-bit rounding: through the VAE's 30 convs that alone
moves the output by ~3% of its scale, whichever way normrt rounds (its distance to the bfloat16 model's exact value,
its float64 twin, is below 2%: tests/onnx/test_half_products.py checks that against per-op rounding).
"""
import pytest

from . import half_models


# onnxruntime's CPU provider has no bfloat16 kernels for these models: no ort case in bfloat16
CASES = [(name, dtype, impl) for name in half_models.MODELS for dtype in half_models.DTYPES
         for impl in ("normrt", "normrt fused", "ort", "normrt float32") if not (impl == "ort" and dtype == "bfloat16")]


@pytest.mark.parametrize("name,dtype,impl", CASES)
def test_half_model(benchmark, name, dtype, impl, threads):
    if impl == "ort":
        pytest.importorskip("onnxruntime")
    runs, sess = half_models.sessions(name, half_models.DTYPES[dtype], threads)
    for which in ("normrt", "normrt fused"):
        err_ort, err32, scale, ort_err32 = half_models.errors(runs, which)
        if err_ort is not None:
            assert err_ort <= 2.0 ** -6 * scale, (which, err_ort, scale)
            # (the plain file rounds the norms' decomposed pieces apart: a few float16 units more)
            assert err32 <= 2 * ort_err32 + 2.0 ** -8 * scale, (which, err32, ort_err32)
        elif which == "normrt fused" or sess.executor.counts()["reference"] == 0:
            assert err32 <= 2.0 ** -4 * scale, (which, err32, scale)
    benchmark.group = f"half_model-{name}-{dtype}"
    benchmark.extra_info.update(threads=threads, fallback_nodes=sess.executor.counts()["reference"])
    benchmark(runs[impl])


def test_product_accuracy():
    """The README's Conv/MatMul accuracy table: below one unit of the dtype's eps of the output scale, and
    (almost) every result the correctly rounded one."""
    import ml_dtypes
    for op, dname, rel, same in half_models.accuracy():
        assert rel < float(ml_dtypes.finfo(half_models.DTYPES[dname]).eps), (op, dname, rel)
        assert same > 0.99, (op, dname, same)

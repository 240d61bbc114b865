"""pytest-benchmark suite for onnxruntime-genai's LLMs (bench/genai_decode.py): one decode step
after a cached past, and a generation loop whose KV cache grows by a position each step (every
run a new shape), on the tiny fixtures of tests/data/genai, normrt and onnxruntime in one group
each. Each benchmark first checks the logits against onnxruntime's on the same feeds."""
import numpy as np
import pytest

from . import genai_decode

MODELS = ["llama_fp32", "llama_int4", "qwen2_fp32"]
STEPS = 8


def sessions(name, threads):
    ort = pytest.importorskip("onnxruntime")
    import normrt
    path = genai_decode.GENAI / name / "model.onnx"
    so = ort.SessionOptions()
    so.intra_op_num_threads = threads
    return path, {"normrt": normrt.InferenceSession(str(path), num_threads=threads),
                  "ort": ort.InferenceSession(str(path), so, providers=["CPUExecutionProvider"])}


@pytest.mark.parametrize("impl", ["normrt", "ort"])
@pytest.mark.parametrize("name", MODELS)
def test_decode_step(benchmark, name, impl, threads):
    path, sess = sessions(name, threads)
    feeds = genai_decode.feeds_for(sess["ort"], 1, 1, 64, genai_decode.head_size(path))
    want = sess["ort"].run(["logits"], feeds)[0]
    got = sess[impl].run(["logits"], feeds)[0]
    np.testing.assert_allclose(got, want, rtol=1e-4, atol=1e-4 * max(float(np.abs(want).max()), 1.0))
    benchmark.group = f"genai_decode-{name}"
    benchmark.extra_info.update(threads=threads, past=64)
    benchmark(sess[impl].run, None, feeds)


@pytest.mark.parametrize("impl", ["normrt", "ort"])
@pytest.mark.parametrize("name", MODELS)
def test_generation_loop(benchmark, name, impl, threads):
    path, sess = sessions(name, threads)
    prompt = genai_decode.feeds_for(sess["ort"], 1, 16, 0, genai_decode.head_size(path))
    loops = {k: genai_decode.generation(s, prompt, STEPS) for k, s in sess.items()}
    want = loops["ort"]()
    np.testing.assert_allclose(loops[impl](), want, rtol=1e-4, atol=1e-4 * max(float(np.abs(want).max()), 1.0))
    benchmark.group = f"genai_generate-{name}"
    benchmark.extra_info.update(threads=threads, tokens=STEPS)
    benchmark(loops[impl])

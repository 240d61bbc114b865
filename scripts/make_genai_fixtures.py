#!/usr/bin/env python3
"""Build the onnxruntime-genai fixtures under tests/data/genai/.

LLMs users run on CPU are often the ONNX files of onnxruntime-genai's model builder
(`python -m onnxruntime_genai.models.builder -p int4 -e cpu`): every attention a
com.microsoft::GroupQueryAttention with a KV cache, every projection a 4-bit MatMulNBits
(int4) or a MatMul (fp32), the norms SimplifiedLayerNormalization /
SkipSimplifiedLayerNormalization; its fp16 CPU models write MultiHeadAttention and
RotaryEmbedding instead. This script builds tiny models of that kind from transformers
configs (random weights from a fixed seed, no hub access) and a word-level tokenizer of
its own (the builder copies a tokenizer), so tests run the builder's real output:

    tests/data/genai/<arch>_<precision>/model.onnx (+ model.onnx.data, genai_config.json)

for arch in llama, qwen2 and precision in int4, fp32, fp16. The files are small (hidden 64,
2 layers, 4 heads over 2 KV heads, vocabulary 128).

Needs torch, transformers and onnxruntime-genai (not a normrt dependency; install it into a
scratch directory: `pip install --no-deps --target /tmp/genai_pkg onnxruntime-genai`, then
run with `PYTHONPATH=/tmp/genai_pkg python scripts/make_genai_fixtures.py`).
"""
import argparse
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
OUT = ROOT / "tests" / "data" / "genai"
ARCHS = ("llama", "qwen2")
PRECISIONS = ("int4", "fp32", "fp16")
KEEP = ("model.onnx", "model.onnx.data", "genai_config.json")


def source_model(arch, folder):
    """A tiny transformers model of `arch` with a word-level tokenizer, saved to `folder`."""
    import torch
    from tokenizers import Tokenizer, models, pre_tokenizers
    from transformers import (LlamaConfig, LlamaForCausalLM, PreTrainedTokenizerFast, Qwen2Config,
                              Qwen2ForCausalLM)
    torch.manual_seed(0)
    sizes = dict(vocab_size=128, hidden_size=64, intermediate_size=160, num_hidden_layers=2,
                 num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=256)
    config, cls = {"llama": (LlamaConfig, LlamaForCausalLM), "qwen2": (Qwen2Config, Qwen2ForCausalLM)}[arch]
    cls(config(**sizes)).eval().save_pretrained(folder)
    vocab = {f"t{i}": i for i in range(sizes["vocab_size"])}
    words = Tokenizer(models.WordLevel(vocab=vocab, unk_token="t0"))
    words.pre_tokenizer = pre_tokenizers.Whitespace()
    PreTrainedTokenizerFast(tokenizer_object=words, unk_token="t0", bos_token="t1", eos_token="t2",
                            pad_token="t0").save_pretrained(folder)


def build(arch, precision, src, cache):
    out = OUT / f"{arch}_{precision}"
    with tempfile.TemporaryDirectory() as tmp:
        cmd = [sys.executable, "-m", "onnxruntime_genai.models.builder", "-i", str(src), "-o", tmp,
               "-p", precision, "-e", "cpu", "-c", str(cache)]
        done = subprocess.run(cmd, capture_output=True, text=True)
        if done.returncode:
            raise SystemExit(f"{' '.join(cmd)} failed:\n{done.stdout[-2000:]}\n{done.stderr[-2000:]}")
        if out.exists():
            shutil.rmtree(out)
        out.mkdir(parents=True)
        for name in KEEP:
            if (Path(tmp) / name).exists():
                shutil.copy(Path(tmp) / name, out / name)
    print(f"{out.relative_to(ROOT)}: {sum(f.stat().st_size for f in out.iterdir()) / 1024:.0f} KiB")


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--only", default="", help="comma separated archs (default: all)")
    args = ap.parse_args()
    archs = [a for a in args.only.split(",") if a] or ARCHS
    with tempfile.TemporaryDirectory() as tmp:
        for arch in archs:
            src = Path(tmp) / arch
            source_model(arch, src)
            for precision in PRECISIONS:
                build(arch, precision, src, Path(tmp) / "cache")


if __name__ == "__main__":
    main()

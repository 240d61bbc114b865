"""Small real architectures from `transformers` (random init, small configs), exported to ONNX.

    python -m bench.small_models --export            # export every model into the cache (once)
    python -m bench.small_models                     # latency normrt vs onnxruntime, 1 and 2 threads
    python -m bench.small_models --only gpt2,bert --threads 1 --repeat 200

The suite is where per-node cost decides everything: each model runs in well
under a millisecond in onnxruntime. Each model is built with a fixed torch
seed, put in eval mode and exported with `torch.onnx.export` (the TorchScript
exporter, opset 17, or where it fails - transformers 5's decoders - the dynamo
exporter, opset 18; eager attention so the attention is the exporters' usual
MatMul/Softmax chain). The cache dir (default ~/.cache/normrt-bench/small_models,
`--cache` or NORMRT_SMALL_MODELS_CACHE) holds per model `NAME.onnx` and
`NAME.npz`: the inputs (`in:NAME`) and torch's float32 outputs (`out:i`),
the reference tests/onnx/test_small_models.py compares normrt with.

Timing: for each model and thread count, normrt's runs form one block and
onnxruntime's another, each after a pause (onnxruntime's pool threads spin
for a while after a run and would slow whoever runs next); a time is the
minimum over `--blocks` blocks of each block's median of `--repeat` runs.
Ratios are normrt / onnxruntime (< 1: normrt faster), geometric mean last.
"""
import argparse
import os
import sys
import time
from pathlib import Path

import numpy as np

DEFAULT_CACHE = Path(os.environ.get("NORMRT_SMALL_MODELS_CACHE",
                                    Path(os.environ.get("XDG_CACHE_HOME", Path.home() / ".cache"))
                                    / "normrt-bench" / "small_models"))


# ----------------------------------------------------------------- the models
def _image(size=32, channels=3):
    import torch
    return {"pixel_values": torch.randn(1, channels, size, size)}


def _tokens(n=24, vocab=256):
    import torch
    return {"input_ids": torch.randint(0, vocab, (1, n))}


def _vit():
    import transformers as t
    cfg = t.ViTConfig(image_size=32, patch_size=4, hidden_size=64, num_hidden_layers=4, num_attention_heads=4,
                      intermediate_size=128)
    return t.ViTModel(cfg, add_pooling_layer=False), _image(32)


def _swin():
    import transformers as t
    cfg = t.SwinConfig(image_size=32, patch_size=2, embed_dim=16, depths=[1, 1, 2], num_heads=[2, 2, 4],
                       window_size=4)
    return t.SwinModel(cfg), _image(32)


def _convnext():
    import transformers as t
    cfg = t.ConvNextConfig(num_channels=3, hidden_sizes=[16, 32, 64, 128], depths=[1, 1, 2, 1])
    return t.ConvNextModel(cfg), _image(64)


def _mobilevit():
    import transformers as t
    cfg = t.MobileViTConfig(image_size=64, patch_size=2, hidden_sizes=[32, 48, 64],
                            neck_hidden_sizes=[8, 8, 16, 16, 24, 32, 64], num_attention_heads=2)
    return t.MobileViTModel(cfg), _image(64)


def _efficientnet():
    import transformers as t
    cfg = t.EfficientNetConfig(image_size=64, width_coefficient=0.25, depth_coefficient=0.25, hidden_dim=320)
    return t.EfficientNetModel(cfg), _image(64)


def _segformer():
    import transformers as t
    cfg = t.SegformerConfig(num_encoder_blocks=2, depths=[1, 1], sr_ratios=[4, 2], hidden_sizes=[16, 32],
                            num_attention_heads=[1, 2], mlp_ratios=[2, 2], decoder_hidden_size=32,
                            patch_sizes=[7, 3], strides=[4, 2])
    return t.SegformerForSemanticSegmentation(cfg), _image(64)


def _wav2vec2():
    import torch
    import transformers as t
    cfg = t.Wav2Vec2Config(hidden_size=64, num_hidden_layers=2, num_attention_heads=4, intermediate_size=128,
                           conv_dim=(32, 32, 32), conv_stride=(5, 2, 2), conv_kernel=(10, 3, 3),
                           num_conv_pos_embeddings=16, num_conv_pos_embedding_groups=4,
                           feat_extract_norm="layer", do_stable_layer_norm=True)
    return t.Wav2Vec2Model(cfg), {"input_values": torch.randn(1, 1600)}


def _whisper_encoder():
    import torch
    import transformers as t
    cfg = t.WhisperConfig(num_mel_bins=16, d_model=64, encoder_layers=2, encoder_attention_heads=4,
                          encoder_ffn_dim=128, decoder_layers=1, decoder_attention_heads=4, decoder_ffn_dim=128,
                          max_source_positions=32, vocab_size=256, pad_token_id=0,
                          bos_token_id=1, eos_token_id=2, decoder_start_token_id=1)
    return t.WhisperModel(cfg).get_encoder(), {"input_features": torch.randn(1, 16, 64)}


def _gpt2():
    import transformers as t
    cfg = t.GPT2Config(vocab_size=256, n_positions=64, n_embd=64, n_layer=2, n_head=4,
                       attn_implementation="eager", use_cache=False)
    return t.GPT2Model(cfg), _tokens()


def _gemma():
    import transformers as t
    cfg = t.GemmaConfig(vocab_size=256, hidden_size=64, intermediate_size=128, num_hidden_layers=2,
                        num_attention_heads=4, num_key_value_heads=2, head_dim=16, max_position_embeddings=64,
                        attn_implementation="eager", use_cache=False)
    return t.GemmaModel(cfg), _tokens()


def _qwen2():
    import transformers as t
    cfg = t.Qwen2Config(vocab_size=256, hidden_size=64, intermediate_size=128, num_hidden_layers=2,
                        num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=64,
                        attn_implementation="eager", use_cache=False)
    return t.Qwen2Model(cfg), _tokens()


def _bert():
    import transformers as t
    cfg = t.BertConfig(vocab_size=256, hidden_size=64, num_hidden_layers=2, num_attention_heads=4,
                       intermediate_size=128, max_position_embeddings=64, attn_implementation="eager")
    return t.BertModel(cfg, add_pooling_layer=False), _tokens()


def _bert64():
    """The deep one: 64 layers of hidden size 64 (thousands of tiny nodes)."""
    import transformers as t
    cfg = t.BertConfig(vocab_size=256, hidden_size=64, num_hidden_layers=64, num_attention_heads=4,
                       intermediate_size=128, max_position_embeddings=64, attn_implementation="eager")
    return t.BertModel(cfg, add_pooling_layer=False), _tokens()


MODELS = {
    "vit": _vit, "swin": _swin, "convnext": _convnext, "mobilevit": _mobilevit, "efficientnet": _efficientnet,
    "segformer": _segformer, "wav2vec2": _wav2vec2, "whisper_encoder": _whisper_encoder, "gpt2": _gpt2,
    "gemma": _gemma, "qwen2": _qwen2, "bert": _bert, "bert64": _bert64,
}
SUITE = [m for m in MODELS if m != "bert64"]     # the geometric-mean suite; bert64 is reported apart


class _Outputs:
    """Wraps a model so it returns a flat tuple of tensors (the ONNX graph's outputs)."""

    def __new__(cls, model):
        import torch

        class Wrapped(torch.nn.Module):
            def __init__(self):
                super().__init__()
                self.model = model

            def forward(self, *args):
                out = self.model(*args, return_dict=True)
                return tuple(v for v in out.values() if isinstance(v, torch.Tensor))
        return Wrapped()


def export(name, cache=DEFAULT_CACHE, force=False):
    """Export model `name` into `cache` (if not there yet); its (onnx path, npz path)."""
    cache = Path(cache)
    onnx_path, npz_path = cache / f"{name}.onnx", cache / f"{name}.npz"
    if onnx_path.exists() and npz_path.exists() and not force:
        return onnx_path, npz_path
    import torch
    torch.manual_seed(0)
    model, inputs = MODELS[name]()
    model.eval()
    wrapped = _Outputs(model).eval()
    names = list(inputs)
    args = tuple(inputs[n] for n in names)
    with torch.inference_mode():
        outs = wrapped(*args)
    cache.mkdir(parents=True, exist_ok=True)
    tmp = onnx_path.with_suffix(".tmp.onnx")
    out_names = [f"out{i}" for i in range(len(outs))]
    try:
        torch.onnx.export(wrapped, args, str(tmp), input_names=names, output_names=out_names, opset_version=17,
                          dynamo=False)
    except Exception:  # noqa: BLE001 - e.g. transformers 5's decoders (aten::diff): the dynamo exporter
        torch.onnx.export(wrapped, args, str(tmp), input_names=names, output_names=out_names, opset_version=18,
                          dynamo=True, optimize=True, verbose=False)
    np.savez(npz_path, **{f"in:{n}": inputs[n].numpy() for n in names},
             **{f"out:{i}": o.float().numpy() for i, o in enumerate(outs)})
    tmp.replace(onnx_path)
    return onnx_path, npz_path


def load(name, cache=DEFAULT_CACHE):
    """(onnx path, {input name: array}, [torch output arrays]) of an exported model."""
    onnx_path, npz_path = export(name, cache)
    data = np.load(npz_path)
    feeds = {k[3:]: data[k] for k in data.files if k.startswith("in:")}
    outs = [data[f"out:{i}"] for i in range(sum(k.startswith("out:") for k in data.files))]
    return onnx_path, feeds, outs


# ----------------------------------------------------------------- timing
def measure(path, feeds, threads, repeat, blocks=3, pause=0.2):
    """{'normrt': s, 'ort': s}: the min over `blocks` of each runtime's block median, blocks alternating."""
    import onnxruntime as ort

    import normrt
    from normrt import timing
    sess = normrt.InferenceSession(str(path), num_threads=threads)
    so = ort.SessionOptions()
    so.intra_op_num_threads = threads
    so.inter_op_num_threads = 1
    osess = ort.InferenceSession(str(path), so, providers=["CPUExecutionProvider"])
    runs = {"normrt": lambda: sess.run(None, feeds), "ort": lambda: osess.run(None, feeds)}
    timed = timing.time_blocks(runs, repeat, blocks=blocks, pause=pause)
    return {k: t.best for k, t in timed.items()}, len(sess.optimized_model.graph.node)


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--export", action="store_true", help="only export the models into the cache")
    ap.add_argument("--force", action="store_true", help="re-export even if cached")
    ap.add_argument("--cache", type=Path, default=DEFAULT_CACHE)
    ap.add_argument("--only", default="", help="comma-separated model names")
    ap.add_argument("--threads", default="1,2", help="thread counts, comma-separated")
    ap.add_argument("--repeat", type=int, default=100, help="timed runs per block")
    ap.add_argument("--blocks", type=int, default=3)
    args = ap.parse_args(argv)
    names = [n for n in args.only.split(",") if n] or list(MODELS)
    unknown = [n for n in names if n not in MODELS]
    if unknown:
        ap.error(f"unknown model(s) {unknown}; known: {list(MODELS)}")
    if args.export:
        failed = []
        for n in names:
            t0 = time.perf_counter()
            try:
                export(n, args.cache, force=args.force)
            except Exception as e:  # noqa: BLE001 - report and go on with the others
                print(f"{n}: FAILED {type(e).__name__}: {str(e)[:300]}", flush=True)
                failed.append(n)
                continue
            print(f"{n}: {time.perf_counter() - t0:.1f} s", flush=True)
        return 1 if failed else 0
    thread_counts = [int(t) for t in args.threads.split(",")]
    print(f"load average {os.getloadavg()[0]:.2f}; min over {args.blocks} blocks of the median of "
          f"{args.repeat} runs, each runtime in its own block after a pause")
    header = "| model | nodes | " + " | ".join(f"normrt {t}t | ort {t}t | ratio {t}t" for t in thread_counts) + " |"
    print(header)
    print("|" + "---|" * (2 + 3 * len(thread_counts)))
    ratios = {t: {} for t in thread_counts}
    for n in names:
        path, feeds, _ = load(n, args.cache)
        cells = []
        nodes = 0
        for t in thread_counts:
            best, nodes = measure(path, feeds, t, args.repeat, args.blocks)
            ratios[t][n] = best["normrt"] / best["ort"]
            cells.append(f"{best['normrt'] * 1e3:.3f} ms | {best['ort'] * 1e3:.3f} ms | {ratios[t][n]:.2f}x")
        print(f"| {n} | {nodes} | " + " | ".join(cells) + " |", flush=True)
    suite = [n for n in names if n in SUITE]
    if suite:
        gm = [float(np.exp(np.mean(np.log([ratios[t][n] for n in suite])))) for t in thread_counts]
        print(f"| geometric mean ({len(suite)} models, without bert64) | | "
              + " | ".join(f" | | {g:.2f}x" for g in gm) + " |")
    print(f"load average {os.getloadavg()[0]:.2f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())

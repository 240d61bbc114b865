"""Sweep whole `transformers` architectures nobody here wrote through normrt and onnxruntime.

A developer tool, not a unit test: where scripts/wild_sweep.py brings normalizations written
the way users write them, this brings whole models - CNNs (ResNet, RegNet, MobileNet V1/V2,
ConvNeXt V2, PoolFormer, FocalNet), vision transformers (DeiT, BEiT, DINOv2, CLIP, YOLOS,
LeViT), encoders (DistilBERT, RoBERTa, ALBERT, DeBERTa-v2, ELECTRA, MPNet, SqueezeBERT, T5),
decoders (Mistral, Phi, Falcon, BLOOM, OPT, GPT-NeoX) and speech encoders (HuBERT,
UniSpeech) - none of them among bench.small_models' suite or the fixtures; and a second set
(`--set second`): BiT (weight-standardized convs), Swin V2, SegFormer, ConvNeXt, MobileViT,
PVTv2, GLPN, DPT, AST, wav2vec2 (group norm), wav2vec2-conformer (relative positions),
data2vec-audio, SEW, EnCodec's encoder (reflect pads, ELU, LSTM), GPT-2, BART, FNet (DFT),
Funnel and XLNet (einsum), Gemma, Qwen2, Cohere, StableLM, OLMo, GPT-J, Mamba, RWKV (their
recurrences unrolled), CANINE and Perceiver; and a third (`--set third`) of norms written still
otherwise and blocks neither has: MobileBERT (NoNorm), Nemotron (LayerNorm1P), Persimmon, Qwen3
and OLMo2 (q/k norms), MPT, Gemma2 (sandwich norms), StarCoder2, Phi-3, CodeGen, XGLM,
GPTBigCode (multi-query), ModernBERT, ConvBERT, RoFormer, ESM, SwiftFormer, PVT, SigLIP,
Data2Vec-vision, ViTDet, VideoMAE and TimeSformer (video), EfficientNet, HGNetV2, WavLM, SEW-D,
DAC's encoder (Snake, weight norm), a HiFi-GAN vocoder (ConvTranspose1d, LeakyRelu),
PatchTST and PatchTSMixer (time series). Each is built
from a small config with random weights (fixed seed), exported with the TorchScript exporter
at opset 17 (the dynamo exporter at 18 where that fails), optionally after `.half()`, and run
by both runtimes on the same inputs, 2 threads, each runtime's runs in their own block after
a pause (min of `--runs`).

Per model: the largest difference from onnxruntime relative to its largest output (float16 and
quantized: also both against torch's float32 model), normalizations on kernels, norm-shaped ops left in
the optimized graph, ops on onnx.reference, both latencies and their ratio.

    python scripts/zoo_sweep.py                       # the first set, float32
    python scripts/zoo_sweep.py --set second          # the second set (--set third, or --set all)
    python scripts/zoo_sweep.py --half --only deit,t5  # also .half() exports of these
    python scripts/zoo_sweep.py --threads 1 --runs 100
    python scripts/zoo_sweep.py --quantize dynamic     # as onnxruntime.quantization.quantize_dynamic leaves them
    python scripts/zoo_sweep.py --dynamic --keep /tmp/zdyn   # exported with dynamic axes, as users export them

`--dynamic` exports as Optimum and `torch.onnx.export(..., dynamic_axes=...)` users do: every
input's batch dim dynamic ("batch"), and token inputs' sequence dim too ("sequence"; audio: the
samples axis; images and AST's fixed-size spectrogram: the batch only) - `dynamic_axes` for the
TorchScript exporter, `dynamic_shapes` (torch.export.Dim of the same names) for the dynamo fallback,
which also takes the TorchScript exports onnxruntime cannot run (shapes the tracer baked in). Shape
inference then leaves many dims symbolic, which is where fusions that must prove shapes miss.
The models are then saved as <name>_dyn.onnx (run on the same inputs as the static exports).
"""
import argparse
import contextlib
import copy
import io
import os
import sys
import tempfile
import time
import warnings

import numpy as np

NORM_SHAPED_OPS = {"ReduceMean", "ReduceSumSquare", "ReduceL2", "Sqrt", "Reciprocal", "Pow", "LayerNormalization",
                   "InstanceNormalization", "BatchNormalization", "GroupNormalization", "LpNormalization", "LRN",
                   "MeanVarianceNormalization", "RMSNormalization"}


def _image(size=64):
    import torch
    return {"pixel_values": torch.randn(1, 3, size, size)}


def _tokens(n=24):
    import torch
    return {"input_ids": torch.randint(0, 256, (1, n))}


def _audio():
    import torch
    return {"input_values": torch.randn(1, 1600)}


# the small configs both sets build from
_STAGES = dict(hidden_sizes=[16, 32, 64, 128], depths=[1, 1, 1, 1])
_VIT = dict(image_size=32, patch_size=4, hidden_size=64, num_hidden_layers=2, num_attention_heads=4,
            intermediate_size=128)
_SPEECH = dict(hidden_size=64, num_hidden_layers=2, num_attention_heads=4, intermediate_size=128,
               conv_dim=(32, 32), conv_stride=(5, 2), conv_kernel=(10, 3), num_conv_pos_embeddings=16,
               num_conv_pos_embedding_groups=4)


def _lm(cfg, model, **kw):
    """A small language model of `cfg` (hidden 64, 2 layers, 4 heads) on 24 tokens."""
    base = dict(vocab_size=256, hidden_size=64, num_hidden_layers=2, num_attention_heads=4, intermediate_size=128)
    return lambda: (model(cfg(**{**base, **kw})), _tokens())


def models():
    """{name: () -> (torch module, {input name: tensor})}: small configs of each architecture."""
    import transformers as t

    lm, vit, stages, speech = _lm, _VIT, _STAGES, _SPEECH
    return {
        "resnet": lambda: (t.ResNetModel(t.ResNetConfig(embedding_size=16, **stages)), _image()),
        "regnet": lambda: (t.RegNetModel(t.RegNetConfig(embedding_size=16, groups_width=8, **stages)), _image()),
        "mobilenet_v1": lambda: (t.MobileNetV1Model(t.MobileNetV1Config(image_size=64, depth_multiplier=0.25)),
                                 _image()),
        "mobilenet_v2": lambda: (t.MobileNetV2Model(t.MobileNetV2Config(image_size=64, depth_multiplier=0.35)),
                                 _image()),
        "convnextv2": lambda: (t.ConvNextV2Model(t.ConvNextV2Config(hidden_sizes=[16, 32, 64, 128],
                                                                    depths=[1, 1, 2, 1])), _image()),
        "poolformer": lambda: (t.PoolFormerModel(t.PoolFormerConfig(**stages)), _image()),
        "focalnet": lambda: (t.FocalNetModel(t.FocalNetConfig(image_size=64, embed_dim=16, depths=[1, 1, 1, 1])),
                             _image()),
        "levit": lambda: (t.LevitModel(t.LevitConfig(image_size=64, hidden_sizes=[32, 48, 64], num_attention_heads=[1, 2, 2],
                                                     depths=[1, 1, 1], key_dim=[8, 8, 8])), _image()),
        "deit": lambda: (t.DeiTModel(t.DeiTConfig(**vit), add_pooling_layer=False), _image(32)),
        "beit": lambda: (t.BeitModel(t.BeitConfig(**vit), add_pooling_layer=False), _image(32)),
        "dinov2": lambda: (t.Dinov2Model(t.Dinov2Config(**vit)), _image(32)),
        "clip_vision": lambda: (t.CLIPVisionModel(t.CLIPVisionConfig(**vit)), _image(32)),
        "yolos": lambda: (t.YolosModel(t.YolosConfig(**{**vit, "image_size": [32, 32]}, num_detection_tokens=5),
                                       add_pooling_layer=False), _image(32)),
        "distilbert": lambda: (t.DistilBertModel(t.DistilBertConfig(vocab_size=256, dim=64, n_layers=2, n_heads=4,
                                                                    hidden_dim=128)), _tokens()),
        "roberta": lm(t.RobertaConfig, t.RobertaModel),
        "albert": lm(t.AlbertConfig, t.AlbertModel, embedding_size=32),
        "deberta_v2": lm(t.DebertaV2Config, t.DebertaV2Model),
        "electra": lm(t.ElectraConfig, t.ElectraModel, embedding_size=32),
        "mpnet": lm(t.MPNetConfig, t.MPNetModel),
        "squeezebert": lm(t.SqueezeBertConfig, t.SqueezeBertModel, embedding_size=64),
        "t5_encoder": lambda: (t.T5EncoderModel(t.T5Config(vocab_size=256, d_model=64, d_kv=16, d_ff=128,
                                                           num_layers=2, num_heads=4)), _tokens()),
        "mistral": lm(t.MistralConfig, t.MistralModel, num_key_value_heads=2),
        "phi": lm(t.PhiConfig, t.PhiModel),
        "falcon": lambda: (t.FalconModel(t.FalconConfig(vocab_size=256, hidden_size=64, num_hidden_layers=2,
                                                        num_attention_heads=4)), _tokens()),
        "bloom": lambda: (t.BloomModel(t.BloomConfig(vocab_size=256, hidden_size=64, n_layer=2, n_head=4)), _tokens()),
        "opt": lm(t.OPTConfig, t.OPTModel, ffn_dim=128, word_embed_proj_dim=64),
        "gpt_neox": lm(t.GPTNeoXConfig, t.GPTNeoXModel),
        "hubert": lambda: (t.HubertModel(t.HubertConfig(**speech)), _audio()),
        "unispeech": lambda: (t.UniSpeechModel(t.UniSpeechConfig(**speech, feat_extract_norm="layer")), _audio()),
    }


def second_models():
    """The second set: architectures with other building blocks (see the module docstring)."""
    import torch
    import transformers as t

    lm, vit, stages, speech = _lm, _VIT, _STAGES, _SPEECH
    mix = dict(**stages, num_attention_heads=[1, 2, 2, 4])
    return {
        "bit": lambda: (t.BitModel(t.BitConfig(embedding_size=16, num_groups=8, **stages)), _image()),
        "swinv2": lambda: (t.Swinv2Model(t.Swinv2Config(image_size=64, embed_dim=16, depths=[1, 1, 2, 1],
                                                        num_heads=[1, 2, 2, 4], window_size=4)), _image()),
        "segformer": lambda: (t.SegformerModel(t.SegformerConfig(decoder_hidden_size=64, **mix)), _image()),
        "convnext": lambda: (t.ConvNextModel(t.ConvNextConfig(hidden_sizes=[16, 32, 64, 128], depths=[1, 1, 2, 1])),
                             _image()),
        "mobilevit": lambda: (t.MobileViTModel(t.MobileViTConfig(image_size=64, hidden_sizes=[32, 48, 64],
                                                                 neck_hidden_sizes=[8, 16, 24, 32, 48, 64, 80])),
                              _image()),
        "pvt_v2": lambda: (t.PvtV2Model(t.PvtV2Config(**mix)), _image()),
        "glpn": lambda: (t.GLPNModel(t.GLPNConfig(decoder_hidden_size=32, **mix)), _image()),
        "dpt": lambda: (t.DPTModel(t.DPTConfig(**vit, out_indices=[0, 1])), _image(32)),
        "ast": lambda: (t.ASTModel(t.ASTConfig(hidden_size=64, num_hidden_layers=2, num_attention_heads=4,
                                               intermediate_size=128, max_length=64, num_mel_bins=32, patch_size=8,
                                               frequency_stride=8, time_stride=8)),
                        {"input_values": torch.randn(1, 64, 32)}),
        "wav2vec2_group": lambda: (t.Wav2Vec2Model(t.Wav2Vec2Config(**speech, feat_extract_norm="group")), _audio()),
        "wav2vec2_conformer": lambda: (t.Wav2Vec2ConformerModel(t.Wav2Vec2ConformerConfig(**speech)), _audio()),
        "data2vec_audio": lambda: (t.Data2VecAudioModel(t.Data2VecAudioConfig(**speech)), _audio()),
        "sew": lambda: (t.SEWModel(t.SEWConfig(**speech, squeeze_factor=2)), _audio()),
        "encodec": lambda: (t.EncodecModel(t.EncodecConfig(num_filters=8, hidden_size=32, upsampling_ratios=[4, 2],
                                                           codebook_size=64, num_lstm_layers=1)).encoder,
                            {"x": torch.randn(1, 1, 800)}),
        "gpt2": lambda: (t.GPT2Model(t.GPT2Config(vocab_size=256, n_embd=64, n_layer=2, n_head=4)), _tokens()),
        "bart": lambda: (t.BartModel(t.BartConfig(vocab_size=256, d_model=64, encoder_layers=2, decoder_layers=2,
                                                  encoder_attention_heads=4, decoder_attention_heads=4,
                                                  encoder_ffn_dim=128, decoder_ffn_dim=128)), _tokens()),
        "fnet": lm(t.FNetConfig, t.FNetModel),
        "funnel": lambda: (t.FunnelModel(t.FunnelConfig(vocab_size=256, d_model=64, n_head=4, d_head=16, d_inner=128,
                                                        block_sizes=[1, 1])), _tokens()),
        "xlnet": lambda: (t.XLNetModel(t.XLNetConfig(vocab_size=256, d_model=64, n_layer=2, n_head=4, d_inner=128)),
                          _tokens()),
        "gemma": lm(t.GemmaConfig, t.GemmaModel, num_key_value_heads=2, head_dim=16),
        "qwen2": lm(t.Qwen2Config, t.Qwen2Model, num_key_value_heads=2),
        "cohere": lm(t.CohereConfig, t.CohereModel, num_key_value_heads=2),
        "stablelm": lm(t.StableLmConfig, t.StableLmModel, num_key_value_heads=2),
        "olmo": lm(t.OlmoConfig, t.OlmoModel),
        "gptj": lambda: (t.GPTJModel(t.GPTJConfig(vocab_size=256, n_embd=64, n_layer=2, n_head=4, rotary_dim=8)),
                         _tokens()),
        "mamba": lambda: (t.MambaModel(t.MambaConfig(vocab_size=256, hidden_size=64, num_hidden_layers=2,
                                                     state_size=8)), _tokens()),
        "rwkv": lambda: (t.RwkvModel(t.RwkvConfig(vocab_size=256, hidden_size=64, num_hidden_layers=2,
                                                  attention_hidden_size=64, intermediate_size=128)), _tokens()),
        "canine": lambda: (t.CanineModel(t.CanineConfig(hidden_size=64, num_hidden_layers=2, num_attention_heads=4,
                                                        intermediate_size=128, num_hash_buckets=64,
                                                        downsampling_rate=2)), _tokens(32)),
        "perceiver": lambda: (t.PerceiverModel(t.PerceiverConfig(num_latents=16, d_latents=64, d_model=32, num_blocks=1,
                                                                 num_self_attends_per_block=2,
                                                                 num_self_attention_heads=4,
                                                                 num_cross_attention_heads=1)),
                              {"inputs": torch.randn(1, 24, 32)}),
    }


def third_models():
    """The third set: norms and blocks neither set has (see the module docstring)."""
    import torch
    import transformers as t

    lm, vit, speech = _lm, _VIT, _SPEECH
    video = dict(image_size=32, patch_size=8, num_frames=2, hidden_size=64, num_hidden_layers=2,
                 num_attention_heads=4, intermediate_size=128)
    series = dict(context_length=32, patch_length=8, num_input_channels=3)
    return {
        # norms written differently: NoNorm (an elementwise affine), LayerNorm1P (weight + 1), LayerNorm
        # without bias, per-head q/k LayerNorm / RMSNorm, RMSNorm over all heads, sandwich norms
        "mobilebert": lm(t.MobileBertConfig, t.MobileBertModel, intermediate_size=64, embedding_size=32,
                         intra_bottleneck_size=32, true_hidden_size=32, num_feedforward_networks=2,
                         normalization_type="no_norm"),
        "nemotron": lm(t.NemotronConfig, t.NemotronModel, num_key_value_heads=2),
        "persimmon": lm(t.PersimmonConfig, t.PersimmonModel, qk_layernorm=True),
        "mpt": lambda: (t.MptModel(t.MptConfig(vocab_size=256, d_model=64, n_heads=4, n_layers=2)), _tokens()),
        "qwen3": lm(t.Qwen3Config, t.Qwen3Model, num_key_value_heads=2, head_dim=16),
        "olmo2": lm(t.Olmo2Config, t.Olmo2Model),
        "gemma2": lm(t.Gemma2Config, t.Gemma2Model, num_key_value_heads=2, head_dim=16),
        "starcoder2": lm(t.Starcoder2Config, t.Starcoder2Model, num_key_value_heads=2),
        "phi3": lm(t.Phi3Config, t.Phi3Model, num_key_value_heads=2, pad_token_id=0),
        "codegen": lambda: (t.CodeGenModel(t.CodeGenConfig(vocab_size=256, n_embd=64, n_layer=2, n_head=4,
                                                           rotary_dim=8)), _tokens()),
        "xglm": lambda: (t.XGLMModel(t.XGLMConfig(vocab_size=256, d_model=64, num_layers=2, attention_heads=4,
                                                  ffn_dim=128)), _tokens()),
        "gpt_bigcode": lambda: (t.GPTBigCodeModel(t.GPTBigCodeConfig(vocab_size=256, n_embd=64, n_layer=2,
                                                                     n_head=4)), _tokens()),
        "modernbert": lm(t.ModernBertConfig, t.ModernBertModel, global_attn_every_n_layers=2, local_attention=8,
                         pad_token_id=0),
        "convbert": lm(t.ConvBertConfig, t.ConvBertModel, embedding_size=64),
        "roformer": lm(t.RoFormerConfig, t.RoFormerModel, embedding_size=64),
        "esm": lambda: (t.EsmModel(t.EsmConfig(vocab_size=33, hidden_size=64, num_hidden_layers=2,
                                               num_attention_heads=4, intermediate_size=128, pad_token_id=1,
                                               position_embedding_type="rotary")),
                        {"input_ids": torch.randint(4, 30, (1, 24))}),
        # vision: additive attention (SwiftFormer), spatial-reduction attention, window
        # attention with relative positions, Conv3d tubelets
        "swiftformer": lambda: (t.SwiftFormerModel(t.SwiftFormerConfig(depths=[1, 1, 1, 1],
                                                                       embed_dims=[16, 32, 64, 128])), _image()),
        "pvt": lambda: (t.PvtModel(t.PvtConfig(image_size=64, hidden_sizes=[16, 32, 64, 128], depths=[1, 1, 1, 1],
                                               num_attention_heads=[1, 2, 2, 4])), _image()),
        "siglip_vision": lambda: (t.SiglipVisionModel(t.SiglipVisionConfig(**vit)), _image(32)),
        "data2vec_vision": lambda: (t.Data2VecVisionModel(t.Data2VecVisionConfig(**vit), add_pooling_layer=False),
                                    _image(32)),
        "vitdet": lambda: (t.VitDetModel(t.VitDetConfig(**{**vit, "pretrain_image_size": 32},
                                                        use_relative_position_embeddings=True,
                                                        window_size=4, window_block_indices=[0])), _image(32)),
        "videomae": lambda: (t.VideoMAEModel(t.VideoMAEConfig(**video, tubelet_size=2)),
                             {"pixel_values": torch.randn(1, 2, 3, 32, 32)}),
        "timesformer": lambda: (t.TimesformerModel(t.TimesformerConfig(**video)),
                                {"pixel_values": torch.randn(1, 2, 3, 32, 32)}),
        "efficientnet": lambda: (t.EfficientNetModel(t.EfficientNetConfig(image_size=64, width_coefficient=0.25,
                                                                          depth_coefficient=0.25, hidden_dim=320)),
                                 _image()),
        "hgnet_v2": lambda: (t.HGNetV2ForImageClassification(t.HGNetV2Config(num_labels=10)), _image()),
        # speech and audio: gated relative positions, DeBERTa-style attention, weight-normed convs with
        # Snake activations, a HiFi-GAN vocoder's transposed convs
        "wavlm": lambda: (t.WavLMModel(t.WavLMConfig(**speech)), _audio()),
        "sew_d": lambda: (t.SEWDModel(t.SEWDConfig(**speech, squeeze_factor=2)), _audio()),
        "dac_encoder": lambda: (t.DacModel(t.DacConfig(encoder_hidden_size=8, downsampling_ratios=[2, 4],
                                                       decoder_hidden_size=32, upsampling_ratios=[4, 2],
                                                       hidden_size=32, codebook_size=64, n_codebooks=2)).encoder,
                                {"input_values": torch.randn(1, 1, 800)}),
        "hifigan": lambda: (t.SpeechT5HifiGan(t.SpeechT5HifiGanConfig(model_in_dim=16, upsample_initial_channel=32,
                                                                      upsample_rates=[4, 4],
                                                                      upsample_kernel_sizes=[8, 8],
                                                                      resblock_kernel_sizes=[3, 5],
                                                                      resblock_dilation_sizes=[[1, 3], [1, 3]])),
                            {"spectrogram": torch.randn(20, 16)}),
        # time series: BatchNorm over patches, MLP-Mixer blocks
        "patchtst": lambda: (t.PatchTSTModel(t.PatchTSTConfig(**series, stride=8, d_model=32,
                                                               num_attention_heads=4, num_hidden_layers=2,
                                                               ffn_dim=64, norm_type="batchnorm")),
                             {"past_values": torch.randn(1, 32, 3)}),
        "patchtsmixer": lambda: (t.PatchTSMixerModel(t.PatchTSMixerConfig(**series, patch_stride=8, d_model=16,
                                                                          num_layers=2)),
                                 {"past_values": torch.randn(1, 32, 3)}),
    }


# --dynamic: {input name: {axis: name}} of the inputs whose axes are not the default's (batch only
# for rank > 2 inputs, i.e. images; batch and sequence for rank-2 token / audio inputs)
_DYNAMIC_AXES = {
    "x": {0: "batch", 2: "sequence"},               # EnCodec's (batch, channels, samples)
    "inputs": {0: "batch", 1: "sequence"},          # Perceiver's (batch, sequence, d_model)
}


def dynamic_axes(inputs):
    """{input name: {axis: axis name}} for `--dynamic`: the batch dim of every input, and the
    sequence (samples) dim of token / audio inputs."""
    out = {}
    for name, v in inputs.items():
        out[name] = dict(_DYNAMIC_AXES.get(name) or ({0: "batch", 1: "sequence"} if v.dim() == 2 else {0: "batch"}))
    return out


def _first_output(model):
    import torch

    class First(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.m = model

        def forward(self, *args):
            out = self.m(*args)
            out = out.to_tuple() if hasattr(out, "to_tuple") else out
            out = out if isinstance(out, (tuple, list)) else (out,)
            return next(v for v in out if isinstance(v, torch.Tensor))
    return First().eval()


def export(name, make, folder, half, dynamic=False):
    """(path of the exported model, feeds as numpy, torch's float32 output as float64).

    `dynamic`: batch (and sequence) axes dynamic, see `dynamic_axes`."""
    import torch
    torch.manual_seed(0)
    module, inputs = make()
    with contextlib.suppress(Exception):
        module.config._attn_implementation = "eager"    # the exporters' usual MatMul/Softmax attention
    module = _first_output(module.eval())
    with torch.no_grad():
        ref = module(*inputs.values()).double().numpy()
    if half:
        module = copy.deepcopy(module).half()
        inputs = {k: v.half() if v.is_floating_point() else v for k, v in inputs.items()}
        with torch.no_grad():
            ref = _first_output(copy.deepcopy(module.m).float())(*(v.float() if v.is_floating_point() else v
                                                                    for v in inputs.values())).double().numpy()
    path = os.path.join(folder, f"{name}{'_f16' if half else ''}{'_dyn' if dynamic else ''}.onnx")
    axes = dynamic_axes(inputs) if dynamic else None
    if not os.path.exists(path):
        with torch.no_grad(), contextlib.redirect_stdout(io.StringIO()), contextlib.redirect_stderr(io.StringIO()):
            try:
                torch.onnx.export(module, tuple(inputs.values()), path, input_names=list(inputs),
                                  output_names=["y"], opset_version=17, dynamo=False, dynamic_axes=axes)
                if dynamic:
                    _check_runs(path, inputs)
            except Exception:  # noqa: BLE001 - transformers' newer decoders: the dynamo exporter
                shapes = None
                if dynamic:     # min=1: the size-1 example batch is not specialized away
                    dims = {n: torch.export.Dim(n, min=1) for ax in axes.values() for n in ax.values()}
                    # one entry per parameter of forward: First's *args takes them all
                    shapes = (tuple({a: dims[n] for a, n in ax.items()} for ax in axes.values()),)
                torch.onnx.export(module, tuple(inputs.values()), path, input_names=list(inputs),
                                  output_names=["y"], opset_version=18, dynamo=True, dynamic_shapes=shapes)
    return path, {k: v.numpy() for k, v in inputs.items()}, ref


def _check_runs(path, inputs):
    """Raises when onnxruntime cannot run the export on the example: with dynamic axes the
    TorchScript tracer bakes some shapes into constants (Cohere's rotary, CANINE's
    downsampling), a graph no runtime can run; the dynamo exporter then exports it."""
    import onnxruntime as ort
    opts = ort.SessionOptions()
    opts.log_severity_level = 4
    try:
        ort.InferenceSession(path, opts, providers=["CPUExecutionProvider"]).run(
            None, {k: v.numpy() for k, v in inputs.items()})
    except Exception:
        os.remove(path)
        raise


def _min_time(run, runs):
    run()
    best = float("inf")
    for _ in range(runs):
        t0 = time.perf_counter()
        run()
        best = min(best, time.perf_counter() - t0)
    return best


def quantized(path, feeds, how):
    """`path` quantized by onnxruntime.quantization as users do it: "dynamic" (quantize_dynamic,
    int8 weights; MatMulInteger / ConvInteger) or "static" (quantize_static, QDQ, calibrated on
    the example input and 3 noisy copies of it)."""
    import numpy as np
    from onnxruntime import quantization as q
    out = path.replace(".onnx", f"_{how}.onnx")
    if os.path.exists(out):
        return out
    with contextlib.redirect_stdout(io.StringIO()), contextlib.redirect_stderr(io.StringIO()):
        if how == "dynamic":
            q.quantize_dynamic(path, out, weight_type=q.QuantType.QInt8)
        else:
            rng = np.random.default_rng(0)
            batches = [feeds] + [{k: v + rng.normal(0, 0.1, v.shape).astype(v.dtype) if v.dtype.kind == "f" else v
                                  for k, v in feeds.items()} for _ in range(3)]

            class Reader(q.CalibrationDataReader):
                def __init__(self):
                    self.it = iter(batches)

                def get_next(self):
                    return next(self.it, None)
            q.quantize_static(path, out, Reader(), quant_format=q.QuantFormat.QDQ,
                              activation_type=q.QuantType.QUInt8, weight_type=q.QuantType.QInt8)
    return out


def check(name, make, folder, half, threads, runs, quantize=None, dynamic=False):
    import normrt
    import onnxruntime as ort
    from normrt.onnx.report import is_epilogue

    row = {"model": name + (" f16" if half else "") + (f" int8-{quantize}" if quantize else "")}
    try:
        path, feeds, ref = export(name, make, folder, half, dynamic)
    except Exception as e:  # noqa: BLE001 - an architecture the exporters cannot take
        return {**row, "status": f"export-fail: {type(e).__name__}"}
    if quantize:
        try:
            path = quantized(path, feeds, quantize)
        except Exception as e:  # noqa: BLE001 - a graph onnxruntime's quantizer cannot take
            return {**row, "status": f"quantize-fail: {type(e).__name__}"}
    sess = normrt.InferenceSession(path, num_threads=threads)
    opts = ort.SessionOptions()
    opts.intra_op_num_threads = threads
    opts.log_severity_level = 3
    try:
        ort_sess = ort.InferenceSession(path, opts, providers=["CPUExecutionProvider"])
        want = ort_sess.run(None, feeds)[0].astype(np.float64)
    except Exception as e:  # noqa: BLE001 - a model onnxruntime cannot run (a quantizer's broken graph,
        # an export its shape inference rejects): normrt's output against torch's, normrt timed alone
        ort_sess, row["ort_fails"] = None, type(e).__name__
        if quantize:
            return {**row, "status": f"onnxruntime fails too: {type(e).__name__}"}
        want = ref
    try:
        got = sess.run(None, feeds)[0].astype(np.float64)
    except Exception as e:  # noqa: BLE001 - an export no runtime can run (Mamba's TorchScript one)
        if ort_sess is not None:
            raise
        return {**row, "status": f"invalid export: onnxruntime fails ({row['ort_fails']}), normrt raises "
                                 f"{type(e).__name__}: {str(e).splitlines()[0][:80]}"}
    scale = max(np.abs(want).max(), 1e-30)
    row["err"] = float(np.abs(got - want).max() / scale)
    if half or quantize:          # both half / int8 runs against the float32 model
        s = max(np.abs(ref).max(), 1e-30)
        row["vs_f32"] = f"{np.abs(got - ref).max() / s:.1e} / {np.abs(want - ref).max() / s:.1e}"
    row["norms"] = sum(1 for e in sess.report["fused"] if not is_epilogue(e))
    row["left"] = ",".join(sorted({n.op_type for n in sess.optimized_model.graph.node
                                   if n.op_type in NORM_SHAPED_OPS})) or "-"
    row["fallback"] = ",".join(sorted({s.node.op_type for s in sess.executor.steps if s.kind == "reference"})) or "-"
    time.sleep(0.3)
    row["normrt_ms"] = _min_time(lambda: sess.run(None, feeds), runs) * 1e3
    if ort_sess is None:
        row["status"] = f"onnxruntime fails: {row['ort_fails']}; err vs torch"
        return row
    time.sleep(0.3)           # onnxruntime's pool threads spin after its runs: its own block, after a pause
    row["ort_ms"] = _min_time(lambda: ort_sess.run(None, feeds), runs) * 1e3
    time.sleep(0.3)
    row["normrt_ms"] = min(row["normrt_ms"], _min_time(lambda: sess.run(None, feeds), runs) * 1e3)
    row["status"] = "ok"
    return row


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--only", default="", help="comma separated model names")
    ap.add_argument("--set", choices=["first", "second", "third", "all"], default="first",
                    help="which set of architectures (default: the first; see the module docstring)")
    ap.add_argument("--half", action="store_true", help="also the .half() exports")
    ap.add_argument("--quantize", choices=["dynamic", "static"], default=None,
                    help="run each export quantized by onnxruntime.quantization instead (quantize_dynamic, or "
                         "quantize_static QDQ calibrated on the example input)")
    ap.add_argument("--dynamic", action="store_true",
                    help="export with dynamic batch (and sequence) axes, as users export (see the module docstring)")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--runs", type=int, default=50, help="timed runs per block (the min is kept)")
    ap.add_argument("--keep", default=None, help="directory for the exported models (default: a temporary one)")
    args = ap.parse_args(argv)
    warnings.filterwarnings("ignore")
    folder = args.keep or tempfile.mkdtemp(prefix="zoo_sweep_")
    os.makedirs(folder, exist_ok=True)
    only = [o for o in args.only.split(",") if o]
    print("| model | status | err vs ort | f16 / int8 vs torch f32 (normrt / ort) | norms | left | fallback "
          "| normrt ms | ort ms | normrt / ort |")
    print("|---|---|---:|---|---:|---|---|---:|---:|---:|")
    ratios = []
    chosen = {}
    if args.set in ("first", "all"):
        chosen.update(models())
    if args.set in ("second", "all"):
        chosen.update(second_models())
    if args.set in ("third", "all"):
        chosen.update(third_models())
    for name, make in chosen.items():
        if only and name not in only:
            continue
        for half in (False, True)[:1 + args.half]:
            r = check(name, make, folder, half, args.threads, args.runs, args.quantize, args.dynamic)
            if r["status"] != "ok" and "ort_ms" not in r and "normrt_ms" in r:      # onnxruntime cannot run it
                print(f"| {r['model']} | {r['status']} | {r['err']:.1e} | {r.get('vs_f32', '-')} | {r['norms']} | "
                      f"{r['left']} | {r['fallback']} | {r['normrt_ms']:.3f} | - | - |", flush=True)
                continue
            if r["status"] != "ok":
                print(f"| {r['model']} | {r['status']} |" + " |" * 8, flush=True)
                continue
            ratios.append(r["normrt_ms"] / r["ort_ms"])
            print(f"| {r['model']} | ok | {r['err']:.1e} | {r.get('vs_f32', '-')} | {r['norms']} | {r['left']} | "
                  f"{r['fallback']} | {r['normrt_ms']:.3f} | {r['ort_ms']:.3f} | {ratios[-1]:.2f}x |", flush=True)
    if ratios:
        print(f"\ngeometric mean normrt / onnxruntime: {np.exp(np.mean(np.log(ratios))):.2f}x over {len(ratios)} "
              f"runs; models in {folder}")
    return 0


if __name__ == "__main__":
    sys.exit(main())

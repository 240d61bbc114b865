#!/usr/bin/env python3
"""Build tests/data/merged_decoder/decoder_model_merged.onnx: a decoder merged by Optimum.

Optimum's exporter writes a text-generation model as two graphs (the first prompt without a
cache, the later steps with past_key_values) and `merge_decoders` joins them into one model
whose If on `use_cache_branch` holds each graph as a branch, the weights deduplicated into the
outer scope: `decoder_model_merged.onnx`, what transformers.js and most ONNX LLM repositories
on the hub ship. This script exports a tiny GPT-style decoder written here (pre-LN blocks,
attention over Concat(past, new) keys with a causal and padding mask, GELU MLP; hidden 32, 2
layers, 4 heads, vocabulary 64, random weights from a fixed seed) both ways with
torch.onnx.export and merges them with Optimum's own `merge_decoders`.

Needs torch and optimum-onnx (not normrt dependencies; its graph transformations need only
onnx: `pip install --no-deps --target /tmp/optimum_onnx_pkg optimum-onnx optimum`, then
`PYTHONPATH=/tmp/optimum_onnx_pkg python scripts/make_merged_decoder.py`).
"""
import math
import tempfile
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

OUT = Path(__file__).resolve().parents[1] / "tests" / "data" / "merged_decoder"
VOCAB, WIDTH, HEADS, LAYERS = 64, 32, 4, 2


class Block(nn.Module):
    def __init__(self):
        super().__init__()
        self.ln1, self.ln2 = nn.LayerNorm(WIDTH), nn.LayerNorm(WIDTH)
        self.qkv, self.o = nn.Linear(WIDTH, 3 * WIDTH), nn.Linear(WIDTH, WIDTH)
        self.fc, self.proj = nn.Linear(WIDTH, 4 * WIDTH), nn.Linear(4 * WIDTH, WIDTH)

    def forward(self, x, mask, past_k, past_v):
        B, T, _ = x.shape
        hd = WIDTH // HEADS
        q, k, v = (t.view(B, T, HEADS, hd).transpose(1, 2) for t in self.qkv(self.ln1(x)).split(WIDTH, dim=-1))
        if past_k is not None:
            k, v = torch.cat([past_k, k], dim=2), torch.cat([past_v, v], dim=2)
        L = k.shape[2]
        scores = (q @ k.transpose(-2, -1)) / math.sqrt(hd)
        keep = torch.ones(L, L, dtype=torch.bool).tril()[L - T:L][None, None] & mask[:, None, None, :].bool()
        scores = scores.masked_fill(~keep, torch.finfo(scores.dtype).min)
        x = x + self.o((scores.softmax(-1) @ v).transpose(1, 2).reshape(B, T, WIDTH))
        return x + self.proj(F.gelu(self.fc(self.ln2(x)))), k, v


class Decoder(nn.Module):
    def __init__(self):
        super().__init__()
        self.emb, self.pos = nn.Embedding(VOCAB, WIDTH), nn.Embedding(128, WIDTH)
        self.blocks = nn.ModuleList(Block() for _ in range(LAYERS))
        self.lnf, self.head = nn.LayerNorm(WIDTH), nn.Linear(WIDTH, VOCAB, bias=False)

    def forward(self, input_ids, attention_mask, *past):
        T, P = input_ids.shape[1], (past[0].shape[2] if past else 0)
        x = self.emb(input_ids) + self.pos(torch.arange(P, P + T))[None]
        presents = []
        for i, block in enumerate(self.blocks):
            x, k, v = block(x, attention_mask, *(past[2 * i:2 * i + 2] if past else (None, None)))
            presents += [k, v]
        return (self.head(self.lnf(x)), *presents)


def main():
    from optimum.onnx.graph_transformations import merge_decoders
    torch.manual_seed(0)
    model = Decoder().eval()
    outputs = ["logits"] + [f"present.{i}.{kv}" for i in range(LAYERS) for kv in ("key", "value")]
    pasts = [f"past_key_values.{i}.{kv}" for i in range(LAYERS) for kv in ("key", "value")]
    axes = {"input_ids": {0: "batch_size", 1: "sequence_length"},
            "attention_mask": {0: "batch_size", 1: "total_sequence_length"},
            "logits": {0: "batch_size", 1: "sequence_length"}}
    axes.update({o: {0: "batch_size", 2: "total_sequence_length"} for o in outputs[1:]})
    ids = torch.randint(0, VOCAB, (1, 5))
    past = [torch.randn(1, HEADS, 3, WIDTH // HEADS) for _ in pasts]
    OUT.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory() as tmp:
        plain, with_past = Path(tmp) / "decoder_model.onnx", Path(tmp) / "decoder_with_past_model.onnx"
        torch.onnx.export(model, (ids, torch.ones(1, 5, dtype=torch.int64)), str(plain),
                          input_names=["input_ids", "attention_mask"], output_names=outputs, dynamic_axes=axes,
                          opset_version=17, dynamo=False)
        torch.onnx.export(model, (ids, torch.ones(1, 8, dtype=torch.int64), *past), str(with_past),
                          input_names=["input_ids", "attention_mask"] + pasts, output_names=outputs,
                          dynamic_axes=dict(axes, **{p: {0: "batch_size", 2: "past_sequence_length"} for p in pasts}),
                          opset_version=17, dynamo=False)
        merge_decoders(plain, with_past, save_path=str(OUT / "decoder_model_merged.onnx"))
    print(f"wrote {OUT / 'decoder_model_merged.onnx'}")


if __name__ == "__main__":
    main()

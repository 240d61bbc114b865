"""LLMs as onnxruntime-genai's model builder writes them: prompt and decode latency, normrt vs onnxruntime.

    python -m bench.genai_decode                                # tests/data/genai's tiny models
    python -m bench.genai_decode DIR_OR_MODEL.onnx ... --threads 2 --prompt 64 --past 128

A model is the builder's output folder (model.onnx, its .data file): GroupQueryAttention with a
KV cache, MatMulNBits (int4) or MatMul (fp32), or in fp16 MultiHeadAttention + RotaryEmbedding
(scripts/make_genai_fixtures.py builds the tiny ones; a bigger one comes from the same builder:
`python -m onnxruntime_genai.models.builder -i HF_FOLDER -o OUT -p int4 -e cpu`). Two cases per
model, both one `run` with fixed feeds:
  * prompt: --prompt tokens of one sequence, empty past;
  * decode: one token after a past of --past positions (random K/V), the per-token cost of
    generation.
  * generate: --generate tokens after the prompt, one run each, every step feeding the present
    K/V its runtime returned back as the next past (the cache grows by one position a step, as
    in a real generation loop, so no two runs have the same shapes); the time per token.
Timing (normrt.timing): each runtime in its own blocks of --repeat runs after a pause, --blocks
rounds; a time is the min over blocks of the block median. Both runtimes run the file as shipped
(int4: accuracy_level 4, 8-bit activation products; normrt's on pyx/nbits_gemm where the CPU has
AVX-512 VNNI and VBMI, in float32 elsewhere).
"""
import argparse
import json
import os
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
GENAI = ROOT / "tests" / "data" / "genai"


def model_path(arg):
    p = Path(arg)
    return p / "model.onnx" if p.is_dir() else p


def head_size(path):
    """The KV cache's head size (a symbolic dim in the model): genai_config.json beside it says."""
    config = path.parent / "genai_config.json"
    if not config.exists():
        raise SystemExit(f"{path}: no genai_config.json beside it to read the head size from")
    return int(json.loads(config.read_text())["model"]["decoder"]["head_size"])


def feeds_for(sess, batch, new, past, head):
    """Feeds for `new` tokens after `past` cached positions (random K/V, seeded)."""
    rng = np.random.default_rng(0)
    feeds = {}
    for i in sess.get_inputs():
        if i.name == "input_ids":
            feeds[i.name] = rng.integers(3, 100, (batch, new)).astype(np.int64)
        elif i.name == "attention_mask":
            feeds[i.name] = np.ones((batch, past + new), np.int64)
        elif i.name == "position_ids":
            feeds[i.name] = np.broadcast_to(np.arange(past, past + new), (batch, new)).astype(np.int64)
        elif i.name.startswith("past_key_values."):
            kv_heads = i.shape[1]
            dtype = np.float16 if "float16" in i.type else np.float32
            feeds[i.name] = rng.standard_normal((batch, kv_heads, past, head)).astype(dtype)
        else:
            raise SystemExit(f"{i.name}: an input this benchmark does not know how to feed")
    return feeds


def step_feeds(input_names, tokens, past, outputs):
    """The feeds of one generation step: `tokens` (B, S) after `past` cached positions, the past
    K/V the previous step's present ({output name: array}: present.N.key feeds past_key_values.N.key)."""
    batch, new = tokens.shape
    feeds = {}
    for name in input_names:
        if name == "input_ids":
            feeds[name] = tokens
        elif name == "attention_mask":
            feeds[name] = np.ones((batch, past + new), np.int64)
        elif name == "position_ids":
            feeds[name] = np.broadcast_to(np.arange(past, past + new), (batch, new)).astype(np.int64)
        elif name.startswith("past_key_values."):
            feeds[name] = outputs[name.replace("past_key_values.", "present.", 1)]
        else:
            raise SystemExit(f"{name}: an input this benchmark does not know how to feed")
    return feeds


def generation(sess, prompt_feeds, steps, seed=1):
    """fn() running `steps` decode steps of `sess` after its own run of the prompt (each step
    feeding back the present it returned); fn returns the last step's logits."""
    input_names = [i.name for i in sess.get_inputs()]
    output_names = [o.name for o in sess.get_outputs()]
    prompt = dict(zip(output_names, sess.run(None, prompt_feeds)))
    tokens = np.random.default_rng(seed).integers(3, 100, (steps, 1, 1)).astype(np.int64)
    start = prompt_feeds["input_ids"].shape[1]

    def fn():
        outputs = prompt
        for i in range(steps):
            outputs = dict(zip(output_names, sess.run(None, step_feeds(input_names, tokens[i], start + i, outputs))))
        return outputs["logits"]
    return fn


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("models", nargs="*", help="model folders or .onnx files (default: tests/data/genai/*)")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--prompt", type=int, default=32, help="prompt tokens")
    ap.add_argument("--past", type=int, default=128, help="cached positions before the decoded token")
    ap.add_argument("--generate", type=int, default=32, help="tokens of the generation case (0: none)")
    ap.add_argument("--repeat", type=int, default=20)
    ap.add_argument("--blocks", type=int, default=3)
    args = ap.parse_args()

    import onnxruntime as ort
    import normrt
    from normrt.timing import time_blocks

    paths = [model_path(m) for m in args.models] or sorted(GENAI.glob("*/model.onnx"))
    print(f"{args.threads} threads; each runtime in its own blocks of {args.repeat} runs after a pause, "
          f"min over {args.blocks} blocks of the block median; load average {os.getloadavg()[0]:.2f}")
    print("| model | case | normrt ms | onnxruntime ms | normrt / onnxruntime | max abs diff / max abs |")
    print("|---|---|---:|---:|---:|---:|")
    so = ort.SessionOptions()
    so.intra_op_num_threads = args.threads
    for path in paths:
        theirs = ort.InferenceSession(str(path), so, providers=["CPUExecutionProvider"])
        ours = normrt.InferenceSession(str(path), num_threads=args.threads)
        label = path.parent.name if path.name == "model.onnx" else path.stem
        for case, (new, past) in (("prompt", (args.prompt, 0)), ("decode", (1, args.past))):
            feeds = feeds_for(theirs, 1, new, past, head_size(path))
            shape = f"{new} token{'s' if new > 1 else ''}" + (f" after {past}" if past else "")
            got = ours.run(["logits"], feeds)[0].astype(np.float64)
            fns = {"normrt": lambda: ours.run(None, feeds), "ort": lambda: theirs.run(None, feeds)}
            try:
                want = theirs.run(["logits"], feeds)[0].astype(np.float64)
            except Exception as e:  # noqa: BLE001 - onnxruntime's own failure is a row of the table
                del fns["ort"]
                failed = str(e).split("Status Message: ")[-1].splitlines()[0][:90]
            t = time_blocks(fns, repeat=args.repeat, blocks=args.blocks)
            a = t["normrt"].best * 1e3
            if "ort" not in t:
                print(f"| {label} | {case} ({shape}) | {a:.3f} | fails: {failed} | - | - |")
                continue
            b = t["ort"].best * 1e3
            diff = float(np.abs(got - want).max() / max(np.abs(want).max(), 1e-30))
            print(f"| {label} | {case} ({shape}) | {a:.3f} | {b:.3f} | {a / b:.2f}x | {diff:.1e} |")
        if args.generate > 0:
            feeds = feeds_for(theirs, 1, args.prompt, 0, head_size(path))
            case = f"generate ({args.generate} tokens after {args.prompt}, per token)"
            fns = {"normrt": generation(ours, feeds, args.generate)}
            got = fns["normrt"]().astype(np.float64)
            try:
                fns["ort"] = generation(theirs, feeds, args.generate)
                want = fns["ort"]().astype(np.float64)
            except Exception as e:  # noqa: BLE001 - onnxruntime's own failure is a row of the table
                fns.pop("ort", None)
                failed = str(e).split("Status Message: ")[-1].splitlines()[0][:90]
            t = time_blocks(fns, repeat=max(1, args.repeat // 4), blocks=args.blocks)
            a = t["normrt"].best * 1e3 / args.generate
            if "ort" not in t:
                print(f"| {label} | {case} | {a:.3f} | fails: {failed} | - | - |")
                continue
            b = t["ort"].best * 1e3 / args.generate
            diff = float(np.abs(got - want).max() / max(np.abs(want).max(), 1e-30))
            print(f"| {label} | {case} | {a:.3f} | {b:.3f} | {a / b:.2f}x | {diff:.1e} |")


if __name__ == "__main__":
    main()

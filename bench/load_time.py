"""Load time of big transformer exports: normrt.InferenceSession (normrt.optimize included)
beside onnxruntime's session creation, on the same model bytes.

    python -m bench.load_time                      # BERT and Llama, 4/16/64 layers
    python -m bench.load_time --layers 4 16 --repeat 5

The models are `transformers` BERT / Llama with random weights and a small hidden
size (64), exported once with torch.onnx.export (legacy exporter, opset 17) into a
cache folder (NORMRT_BENCH_CACHE, default ~/.cache/normrt-bench); building them
needs torch and transformers. Load time should grow linearly in the node count:
the table prints ms per 1000 nodes.
"""
import argparse
import gc
import os
import time

import onnx

CACHE = os.environ.get("NORMRT_BENCH_CACHE", os.path.expanduser("~/.cache/normrt-bench"))
FAMILIES = ("bert", "llama")


def _module(family, layers, **config):
    """A random-weight `transformers` BertModel / LlamaModel of `layers` layers, in eval mode.

    Hidden size 64 unless `config` overrides fields of the transformers config
    (scripts/e2e_bench.py builds its bert128 / llama128 with bigger ones)."""
    import torch
    import transformers

    torch.manual_seed(0)
    if family == "bert":
        cfg = dict(hidden_size=64, num_hidden_layers=layers, num_attention_heads=4,
                   intermediate_size=128, vocab_size=256, max_position_embeddings=64)
        model = transformers.BertModel(transformers.BertConfig(**{**cfg, **config}))
    elif family == "llama":
        cfg = dict(hidden_size=64, num_hidden_layers=layers, num_attention_heads=4,
                   num_key_value_heads=2, intermediate_size=128, vocab_size=256,
                   max_position_embeddings=64)
        model = transformers.LlamaModel(transformers.LlamaConfig(**{**cfg, **config}))
    else:
        raise ValueError(f"family: expected one of {FAMILIES}, got {family!r}")
    model.config.return_dict = False
    model.config.use_cache = False
    return model.eval()


def first_output(model):
    """`model` as a module of the token ids alone that returns its first output (the last hidden state)."""
    import torch

    class FirstOutput(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.model = model

        def forward(self, ids):
            # an explicit mask: the legacy exporter cannot trace transformers' mask from lengths
            return self.model(input_ids=ids, attention_mask=torch.ones_like(ids))[0]
    return FirstOutput().eval()


def export(family, layers, folder=CACHE):
    """Path of the ONNX export of a `layers`-layer model of `family` (built and cached on first use)."""
    path = os.path.join(folder, f"{family}_{layers}.onnx")
    if os.path.exists(path):
        return path
    import torch

    os.makedirs(folder, exist_ok=True)
    model = first_output(_module(family, layers))
    ids = torch.randint(0, 256, (1, 16))
    tmp = path + ".tmp"
    with torch.no_grad():
        torch.onnx.export(model, (ids,), tmp, input_names=["ids"], output_names=["y"],
                          opset_version=17, dynamo=False)
    os.replace(tmp, path)
    return path


def node_count(path):
    return len(onnx.load(path, load_external_data=False).graph.node)


def time_load(make, repeat):
    """min seconds of `repeat` calls of make() (each builds and drops a session)."""
    best = float("inf")
    for _ in range(repeat):
        gc.collect()
        t0 = time.perf_counter()
        sess = make()
        best = min(best, time.perf_counter() - t0)
        del sess
    return best


def normrt_session(data):
    import normrt
    return lambda: normrt.InferenceSession(data, num_threads=2)


def ort_session(data):
    import onnxruntime as ort
    opts = ort.SessionOptions()
    opts.intra_op_num_threads = 2
    return lambda: ort.InferenceSession(data, opts, providers=["CPUExecutionProvider"])


def measure(family, layers, repeat=3, pause=0.5):
    """dict(model, nodes, normrt s, ort s) for one export (each runtime timed in its own block)."""
    path = export(family, layers)
    with open(path, "rb") as f:
        data = f.read()
    row = {"model": f"{family}-{layers}", "nodes": node_count(path)}
    row["normrt"] = time_load(normrt_session(data), repeat)
    time.sleep(pause)
    row["ort"] = time_load(ort_session(data), repeat)
    return row


def format_rows(rows):
    lines = ["| model | nodes | normrt load ms | onnxruntime session ms | normrt / ort | normrt ms per 1k nodes |",
             "|---|---|---|---|---|---|"]
    for r in rows:
        lines.append(f"| {r['model']} | {r['nodes']} | {1e3 * r['normrt']:.0f} | {1e3 * r['ort']:.0f} | "
                     f"{r['normrt'] / r['ort']:.2f}x | {1e6 * r['normrt'] / r['nodes']:.0f} |")
    return "\n".join(lines)


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--family", nargs="+", default=list(FAMILIES), choices=FAMILIES)
    ap.add_argument("--layers", nargs="+", type=int, default=[4, 16, 64])
    ap.add_argument("--repeat", type=int, default=3, help="loads per runtime and model; the min is kept")
    args = ap.parse_args(argv)
    rows = [measure(f, n, args.repeat) for f in args.family for n in args.layers]
    print(f"min of {args.repeat} loads each, 2 threads")
    print(format_rows(rows))


if __name__ == "__main__":
    main()

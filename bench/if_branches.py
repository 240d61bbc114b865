"""A model as Optimum's merged decoders hold it: the graph as both branches of an If, the weights
in the outer scope (control_flow.py, optimize_branches.py). Times the plain export and its
If-wrapped form in normrt, and the wrapped form in onnxruntime, each runtime in its own blocks
after a pause.

    python -m bench.if_branches                   # tests/data's LLaMA, BERT and pre-LN block exports
    python -m bench.if_branches FILE.onnx ... --runs 50 --blocks 3 --threads 2

Two last rows time Optimum's own merged decoder (tests/data/merged_decoder, made by
scripts/make_merged_decoder.py), one token after 32 cached on its cache branch, and a Scan of 16
steps whose body normalizes a (8, 64) slice and adds it to the state (neither has a plain form).
"""
import argparse
from pathlib import Path

import numpy as np
import onnx
from onnx import TensorProto, helper

DATA = Path(__file__).resolve().parents[1] / "tests" / "data"
DEFAULT = ["hf_llama__legacy17.onnx", "hf_bert__legacy17.onnx", "preln_block__dynamo18.onnx"]


def _renamed(graph, suffix, keep):
    """graph's nodes with every value and node name but `keep` suffixed (a sibling branch's copy)."""
    nodes = []
    for n in graph.node:
        c = onnx.NodeProto()
        c.CopyFrom(n)
        c.name = n.name + suffix
        c.input[:] = [i if not i or i in keep else i + suffix for i in n.input]
        c.output[:] = [o if not o or o in keep else o + suffix for o in n.output]
        nodes.append(c)
    return nodes


def wrap_in_if(model):
    """model's graph as both branches of an If on a new bool input `use_first`: the weights and
    the inputs in the outer scope, the else branch a renamed copy; the If writes the outputs."""
    g = model.graph
    outer = {t.name for t in g.initializer} | {i.name for i in g.input}
    outs = [o.name for o in g.output]
    then_g = helper.make_graph(_renamed(g, "__then", outer), "then", [],
                               [helper.make_tensor_value_info(o + "__then", o_.type.tensor_type.elem_type, None)
                                for o, o_ in zip(outs, g.output)])
    else_g = helper.make_graph(_renamed(g, "__else", outer), "else", [],
                               [helper.make_tensor_value_info(o + "__else", o_.type.tensor_type.elem_type, None)
                                for o, o_ in zip(outs, g.output)])
    node = helper.make_node("If", ["use_first"], outs, name="merged", then_branch=then_g, else_branch=else_g)
    graph = helper.make_graph([node], "merged", [helper.make_tensor_value_info("use_first", TensorProto.BOOL, [])]
                              + list(g.input), list(g.output), list(g.initializer))
    m = helper.make_model(graph, opset_imports=list(model.opset_import))
    m.ir_version = model.ir_version
    return m


def feeds_of(path):
    """The inputs stored beside a tests/data export (its .npz)."""
    data = np.load(str(path).replace(".onnx", ".npz"))
    return {k.removeprefix("input:"): v for k, v in data.items() if k.startswith("input:")}


MERGED = DATA / "merged_decoder" / "decoder_model_merged.onnx"


def merged_decoder_step(past=32, seed=0):
    """Feeds of one decode step of the merged decoder fixture: one token after `past` cached."""
    model = onnx.load(str(MERGED), load_external_data=False)
    names = [i.name for i in model.graph.input if i.name.startswith("past_key_values.")]
    rng = np.random.default_rng(seed)
    feeds = {n: rng.standard_normal((1, 4, past, 8)).astype(np.float32) for n in names}
    feeds.update(input_ids=np.array([[5]], np.int64), attention_mask=np.ones((1, past + 1), np.int64),
                 use_cache_branch=np.array([True]))
    return feeds


def scan_model(steps=16, rows=8, width=64, seed=0):
    """(a Scan model, its feeds): state s (rows, width), a scan input x (steps, rows, width); per step
    h = LayerNormalization(x_t) * 0.5 + s, s' = h, scan output h: a recurrence over a sequence."""
    f = TensorProto.FLOAT
    rng = np.random.default_rng(seed)
    body = helper.make_graph(
        [helper.make_node("LayerNormalization", ["x_t", "g", "b"], ["n"], axis=-1),
         helper.make_node("Mul", ["n", "half"], ["nh"]), helper.make_node("Add", ["nh", "s_in"], ["s_out"]),
         helper.make_node("Identity", ["s_out"], ["y_t"])], "body",
        [helper.make_tensor_value_info("s_in", f, [rows, width]), helper.make_tensor_value_info("x_t", f, [rows, width])],
        [helper.make_tensor_value_info("s_out", f, [rows, width]), helper.make_tensor_value_info("y_t", f, [rows, width])])
    inits = [onnx.numpy_helper.from_array(rng.uniform(0.5, 1.5, width).astype(np.float32), "g"),
             onnx.numpy_helper.from_array(rng.standard_normal(width).astype(np.float32), "b"),
             onnx.numpy_helper.from_array(np.array(0.5, np.float32), "half")]
    graph = helper.make_graph(
        [helper.make_node("Scan", ["s0", "x"], ["s", "y"], name="scan", body=body, num_scan_inputs=1)], "scan",
        [helper.make_tensor_value_info("s0", f, [rows, width]), helper.make_tensor_value_info("x", f, [steps, rows, width])],
        [helper.make_tensor_value_info("s", f, [rows, width]), helper.make_tensor_value_info("y", f, [steps, rows, width])],
        inits)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    feeds = {"s0": rng.standard_normal((rows, width)).astype(np.float32),
             "x": rng.standard_normal((steps, rows, width)).astype(np.float32)}
    return model, feeds


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("models", nargs="*", help=f"exports with an .npz of inputs beside them (default: {DEFAULT})")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--runs", type=int, default=50)
    ap.add_argument("--blocks", type=int, default=3)
    args = ap.parse_args()

    import onnxruntime as ort
    import normrt
    from normrt.timing import time_blocks

    print(f"{args.threads} threads; min over {args.blocks} blocks of the block median of {args.runs} runs")
    print("| model | normrt plain ms | normrt in an If ms | onnxruntime in an If ms |")
    print("|---|---:|---:|---:|")
    so = ort.SessionOptions()
    so.intra_op_num_threads = args.threads
    for name in args.models or DEFAULT:
        path = Path(name) if Path(name).exists() else DATA / name
        feeds = feeds_of(path)
        merged = wrap_in_if(onnx.load(str(path))).SerializeToString()
        wrapped = dict(feeds, use_first=np.array(True))
        plain = normrt.InferenceSession(str(path), num_threads=args.threads)
        ours = normrt.InferenceSession(merged, num_threads=args.threads)
        theirs = ort.InferenceSession(merged, so, providers=["CPUExecutionProvider"])
        for got, want in zip(ours.run(None, wrapped), theirs.run(None, wrapped)):
            np.testing.assert_allclose(got, want, rtol=1e-4, atol=1e-4)
        t = time_blocks({"plain": lambda: plain.run(None, feeds), "if": lambda: ours.run(None, wrapped),
                         "ort": lambda: theirs.run(None, wrapped)}, repeat=args.runs, blocks=args.blocks)
        print(f"| {path.stem} | {t['plain'].best * 1e3:.3f} | {t['if'].best * 1e3:.3f} | {t['ort'].best * 1e3:.3f} |")
    if not args.models:
        feeds = merged_decoder_step()
        ours = normrt.InferenceSession(str(MERGED), num_threads=args.threads)
        theirs = ort.InferenceSession(str(MERGED), so, providers=["CPUExecutionProvider"])
        for got, want in zip(ours.run(None, feeds), theirs.run(None, feeds)):
            np.testing.assert_allclose(got, want, rtol=1e-4, atol=1e-5)
        t = time_blocks({"if": lambda: ours.run(None, feeds), "ort": lambda: theirs.run(None, feeds)},
                        repeat=args.runs, blocks=args.blocks)
        print(f"| merged decoder, a token after 32 cached | - | {t['if'].best * 1e3:.3f} | {t['ort'].best * 1e3:.3f} |")
        model, feeds = scan_model()
        data = model.SerializeToString()
        ours = normrt.InferenceSession(data, num_threads=args.threads)
        theirs = ort.InferenceSession(data, so, providers=["CPUExecutionProvider"])
        for got, want in zip(ours.run(None, feeds), theirs.run(None, feeds)):
            np.testing.assert_allclose(got, want, rtol=1e-4, atol=1e-4)
        t = time_blocks({"scan": lambda: ours.run(None, feeds), "ort": lambda: theirs.run(None, feeds)},
                        repeat=args.runs, blocks=args.blocks)
        print(f"| Scan, 16 steps of LayerNorm + state on (8, 64) | - | {t['scan'].best * 1e3:.3f} | "
              f"{t['ort'].best * 1e3:.3f} |")


if __name__ == "__main__":
    main()

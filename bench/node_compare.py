"""Convolution time node by node: normrt's per-node profile lined up against onnxruntime's profiler.

    python -m bench.node_compare light_resnet50|light_densenet121|vaedec64|style256|unet64|PATH.onnx
        [--threads 2] [--runs 10] [--blocks 3] [--pause-ms 200] [--export dynamo23] [--cache DIR]

Where a model's convolution time goes against onnxruntime, shape by shape.
normrt's side is InferenceSession.profile_nodes (the executor's profiling loop,
each node timed alone: the kernel and the node's Python dispatch); onnxruntime's
is its own profiler (SessionOptions.enable_profiling: each node's kernel time).
The two graphs differ after fusion (normrt::Conv with its epilogue, onnxruntime's
FusedConv and NCHWc Conv with Sum and activation), and so do node names, so
nodes are matched by what they compute: op (Conv or ConvTranspose) and the
shapes of input, weight and output (onnxruntime reports NCHWc tensors by their
logical NCHW shape, output channels rounded up to its block). Nodes left over
are matched again with output channel counts rounded up to that block, then
by weight and output shape alone (a Pad folded into the conv by one runtime and
not the other); the rest are listed as unmatched. onnxruntime's NCHWc layout changes (ReorderInput,
ReorderOutput: work its convs cause) are summed on a line of their own.

Timing: each runtime runs in its own blocks of --runs runs after a pause
(onnxruntime's pool threads spin after a run; scripts/e2e_bench.py's method),
--blocks rounds; a node's time is the minimum over blocks of its median within
the block. Printed per shape: node counts, both times (summed over the shape's
nodes), their ratio and the time normrt loses there, sorted by time lost; then
the totals. Model names are scripts/e2e_bench.py's (torch models exported into
its cache; --export picks the exporter, default dynamo23).
"""
import argparse
import collections
import json
import os
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from .conv_shapes import default_cache, e2e_bench_module

ROOT = Path(__file__).resolve().parents[1]
CONV_OPS = {"Conv": "Conv", "FusedConv": "Conv", "normrt::Conv": "Conv", "ConvTranspose": "ConvTranspose"}
ORT_REORDERS = ("ReorderInput", "ReorderOutput")


def model_path(name, cache, export="dynamo23"):
    """The .onnx file of `name`: a path, a light model of the onnx package, or one of
    scripts/e2e_bench.py's torch models exported by `export` ('dynamo23', 'legacy17')."""
    if name.endswith(".onnx") or os.sep in name:
        return Path(name)
    e2e = e2e_bench_module()
    light = e2e.LIGHT / f"{name}.onnx"
    if light.exists():
        return light
    if name in e2e.TORCH_MODELS:
        exporter = export.rstrip("0123456789")
        opset = int(export[len(exporter):])
        paths = e2e.export_torch(name, cache, exports=[(exporter, opset)])
        if export in paths:
            return paths[export]
        raise SystemExit(f"{name}: no {export} export (see the messages above)")
    raise SystemExit(f"unknown model {name!r}: a path to an .onnx file, one of the onnx package's light "
                     f"models or one of {', '.join(e2e.TORCH_MODELS)}")


# ---------------------------------------------------------------- matching
@dataclass
class ConvNode:
    """One conv of one runtime: its op ('Conv' / 'ConvTranspose'), the shapes of input x,
    weight w and output y, and its time per run, block by block (seconds)."""
    name: str
    op: str
    x: tuple
    w: tuple
    y: tuple
    blocks: list = field(default_factory=list)

    @property
    def best(self):
        """The minimum over blocks of the block's median."""
        return min(float(np.median(b)) for b in self.blocks)


@dataclass
class Row:
    """One shape: the nodes of each runtime computing it, and how they were matched."""
    op: str
    x: tuple
    w: tuple
    y: tuple
    normrt: list
    ort: list
    how: str = "exact"

    @property
    def normrt_s(self):
        return sum(n.best for n in self.normrt)

    @property
    def ort_s(self):
        return sum(n.best for n in self.ort)

    @property
    def lost_s(self):
        return self.normrt_s - self.ort_s


# onnxruntime's NCHWc convs compute (and report) output channel counts rounded up
# to its block (8 floats with AVX2, 16 with AVX-512; the input's count as it is): a
# second pass rounds both sides' output channel counts up to 16
NCHWC_BLOCK = 16


def _blocked(shape, dims):
    if shape is None:
        return None
    return tuple(-(-d // NCHWC_BLOCK) * NCHWC_BLOCK if i in dims else d for i, d in enumerate(shape))


MATCH_PASSES = (
    ("exact", lambda n: (n.op, n.x, n.w, n.y)),
    ("channels padded", lambda n: (n.op, n.x, _blocked(n.w, (0,)), _blocked(n.y, (1,)))),
    ("input differs", lambda n: (n.op, _blocked(n.w, (0,)), _blocked(n.y, (1,)))),   # a Pad folded in
)


def match(normrt_nodes, ort_nodes):
    """(rows, normrt's unmatched nodes, onnxruntime's unmatched nodes): the two runtimes'
    convs grouped by op and (x, w, y) shapes, the leftovers by those shapes with output
    channel counts rounded up to NCHWC_BLOCK, then by w and y alone; rows sorted by time lost."""
    def groups(nodes, key):
        out = collections.defaultdict(list)
        for n in nodes:
            out[key(n)].append(n)
        return out

    rows = []
    for how, key in MATCH_PASSES:
        ours = groups(normrt_nodes, key)
        theirs = groups(ort_nodes, key)
        for k in [k for k in ours if k in theirs]:
            a, b = ours.pop(k), theirs.pop(k)
            rows.append(Row(a[0].op, a[0].x, a[0].w, a[0].y, a, b, how))
        normrt_nodes = [n for v in ours.values() for n in v]
        ort_nodes = [n for v in theirs.values() for n in v]
    rows.sort(key=lambda r: -r.lost_s)
    return rows, normrt_nodes, ort_nodes


# ---------------------------------------------------------------- the two profiles
def normrt_convs(node_times):
    """[ConvNode] of normrt's profile_nodes rows that are convolutions (timings per run,
    one block); the other rows' total time per run."""
    convs, rest = [], np.zeros(len(node_times[0].seconds)) if node_times else np.zeros(0)
    for i, nt in enumerate(node_times):
        op = CONV_OPS.get(nt.op)
        if op is not None and len(nt.input_shapes) >= 2 and nt.output_shapes:
            convs.append(ConvNode(nt.name or f"#{i}", op, nt.input_shapes[0], nt.input_shapes[1],
                                  nt.output_shapes[0], [list(nt.seconds)]))
        else:
            rest += np.asarray(nt.seconds)
    return convs, rest


def ort_runs(events):
    """The profile's node events run by run: [[event, ...] per model_run], in run order."""
    runs = sorted((e for e in events if e.get("cat") == "Session" and e.get("name") == "model_run"),
                  key=lambda e: e["ts"])
    nodes = sorted((e for e in events if e.get("cat") == "Node" and e.get("name", "").endswith("_kernel_time")),
                   key=lambda e: e["ts"])
    out, i = [[] for _ in runs], 0
    for e in nodes:
        while i < len(runs) and e["ts"] > runs[i]["ts"] + runs[i]["dur"]:
            i += 1
        if i < len(runs) and e["ts"] >= runs[i]["ts"]:
            out[i].append(e)
    return out


def _shape(entry):
    """{'float': [1, 64, 56, 56]} -> (1, 64, 56, 56)"""
    return tuple(next(iter(entry.values()))) if entry else None


def ort_convs(runs):
    """[ConvNode] of onnxruntime's conv nodes over `runs` (lists of node events, one per run;
    one block), the layout reorders' and the other nodes' total time per run (seconds)."""
    convs = {}
    reorders, rest = np.zeros(len(runs)), np.zeros(len(runs))
    for r, events in enumerate(runs):
        for e in events:
            args = e.get("args", {})
            op = CONV_OPS.get(args.get("op_name"))
            dur = e["dur"] * 1e-6
            name = e["name"][:-len("_kernel_time")]
            ins, outs = args.get("input_type_shape", []), args.get("output_type_shape", [])
            if op is not None and len(ins) >= 2 and outs:
                node = convs.get(name)
                if node is None:
                    node = convs[name] = ConvNode(name, op, _shape(ins[0]), _shape(ins[1]), _shape(outs[0]),
                                                  [[0.0] * len(runs)])
                node.blocks[0][r] += dur
            elif args.get("op_name") in ORT_REORDERS:
                reorders[r] += dur
            else:
                rest[r] += dur
    return list(convs.values()), reorders, rest


def _block_best(per_block):
    """min over blocks of the block median of per-run totals."""
    return min(float(np.median(b)) for b in per_block)


def profile(path, threads, runs, blocks, pause):
    """(normrt ConvNodes, ort ConvNodes, {'normrt other', 'ort other', 'ort reorders': seconds}):
    both runtimes profiled in their own blocks of `runs` runs after a `pause`, taking turns."""
    import onnxruntime as ort

    import normrt
    feeds = e2e_bench_module().random_feeds(path)
    sess = normrt.InferenceSession(str(path), num_threads=threads)
    prefix = tempfile.mkdtemp(prefix="node_compare_")
    so = ort.SessionOptions()
    so.intra_op_num_threads = threads
    so.inter_op_num_threads = 1
    so.log_severity_level = 3
    so.enable_profiling = True
    so.profile_file_prefix = os.path.join(prefix, "ort")
    ref = ort.InferenceSession(str(path), so, providers=["CPUExecutionProvider"])
    warmup = 3
    for _ in range(warmup):
        sess.run(None, feeds)
        ref.run(None, feeds)
    ours, other_n = [], []
    for _ in range(blocks):
        time.sleep(pause)
        rows = sess.profile_nodes(feeds, repeat=runs)
        convs, rest = normrt_convs(rows)
        ours.append(convs)
        other_n.append(rest)
        time.sleep(pause)
        for _ in range(runs):
            ref.run(None, feeds)
    prof = ref.end_profiling()
    with open(prof) as f:
        events = json.load(f)
    os.unlink(prof)
    os.rmdir(prefix)
    ort_by_run = ort_runs(events)[warmup:]
    if len(ort_by_run) != blocks * runs:
        raise RuntimeError(f"onnxruntime's profile holds {len(ort_by_run) + warmup} runs, "
                           f"expected {blocks * runs + warmup}")
    theirs, other_o, reorder_o = [], [], []
    for b in range(blocks):
        convs, reorders, rest = ort_convs(ort_by_run[b * runs:(b + 1) * runs])
        theirs.append(convs)
        other_o.append(rest)
        reorder_o.append(reorders)
    return (_merge_blocks(ours), _merge_blocks(theirs),
            {"normrt other": _block_best(other_n), "ort other": _block_best(other_o),
             "ort reorders": _block_best(reorder_o)})


def _merge_blocks(per_block):
    """One ConvNode per node from the blocks' lists (same nodes, same order in every block)."""
    out = per_block[0]
    for block in per_block[1:]:
        for node, again in zip(out, block):
            assert node.name == again.name
            node.blocks += again.blocks
    return out


# ---------------------------------------------------------------- report
def _fmt(shape):
    return "-" if shape is None else "x".join(str(d) for d in shape)


def report(rows, left_normrt, left_ort, other, out=None):
    """The markdown table of `rows` and the totals, to `out` (default: stdout)."""
    out = sys.stdout if out is None else out
    print("| op | x | w | y | nodes normrt / ort | normrt ms | ort ms | ratio | lost ms | matched |", file=out)
    print("|---|---|---|---|---|---|---|---|---|---|", file=out)
    for r in rows:
        counts = f"{len(r.normrt)} / {len(r.ort)}" + ("" if len(r.normrt) == len(r.ort) else " (!)")
        print(f"| {r.op} | {_fmt(r.x)} | {_fmt(r.w)} | {_fmt(r.y)} | {counts} "
              f"| {r.normrt_s * 1e3:.3f} | {r.ort_s * 1e3:.3f} | {r.normrt_s / r.ort_s:.2f}x "
              f"| {r.lost_s * 1e3:+.3f} | {r.how} |", file=out)
    n = sum(r.normrt_s for r in rows)
    o = sum(r.ort_s for r in rows)
    print(f"| **matched total** | | | | {sum(len(r.normrt) for r in rows)} / {sum(len(r.ort) for r in rows)} "
          f"| {n * 1e3:.3f} | {o * 1e3:.3f} | {n / o if o else float('nan'):.2f}x | {(n - o) * 1e3:+.3f} | |",
          file=out)
    for who, left in (("normrt", left_normrt), ("onnxruntime", left_ort)):
        for node in left:
            print(f"unmatched {who} {node.op} {node.name}: x {_fmt(node.x)}, w {_fmt(node.w)}, y {_fmt(node.y)}: "
                  f"{node.best * 1e3:.3f} ms", file=out)
    print(f"onnxruntime NCHWc reorders (ReorderInput/Output): {other['ort reorders'] * 1e3:.3f} ms; "
          f"other nodes: normrt {other['normrt other'] * 1e3:.3f} ms, onnxruntime {other['ort other'] * 1e3:.3f} ms",
          file=out)


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("model", help="light_resnet50, vaedec64, style256, ... or a path to an .onnx file")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--runs", type=int, default=10, help="profiled runs per block (default 10)")
    ap.add_argument("--blocks", type=int, default=3, help="blocks per runtime (default 3)")
    ap.add_argument("--pause-ms", type=float, default=200.0, help="sleep before each block (default 200)")
    ap.add_argument("--export", default="dynamo23", help="the torch models' export: dynamo23, legacy17, legacy13")
    ap.add_argument("--cache", type=Path, default=default_cache(), help="scripts/e2e_bench.py's export cache")
    args = ap.parse_args(argv)
    path = model_path(args.model, args.cache, args.export)
    load0 = os.getloadavg()[0]
    ours, theirs, other = profile(path, args.threads, args.runs, args.blocks, args.pause_ms / 1e3)
    rows, left_n, left_o = match(ours, theirs)
    print(f"{path.name}: {args.threads} threads; each runtime in its own blocks of {args.runs} profiled runs after "
          f"a {args.pause_ms:g} ms pause, a node's time the min over {args.blocks} blocks of its block median; "
          f"load average {load0:.2f} -> {os.getloadavg()[0]:.2f}; sorted by time lost")
    report(rows, left_n, left_o, other)
    return 0


if __name__ == "__main__":
    sys.exit(main())

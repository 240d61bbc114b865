"""Per-node cost of the executor: a chain of tiny Add nodes, normrt vs onnxruntime vs bare numpy.

    python -m bench.node_overhead                  # 1,000 Adds on a (1, 16) float32 tensor, 1 thread
    python -m bench.node_overhead --nodes 2000 --size 64 --threads 2

The graph is y = ((x + c0) + c1) + ... + c999 with each c_i a constant: one
node per step, no fusion possible (optimize folds nothing: x is a graph input),
so the run time over the node count is the executor's per-node cost plus one
tiny numpy add. Printed: microseconds per node for normrt, onnxruntime, and
`np.add(a, c, out=buf)` in a Python loop (the floor a Python-level executor
can reach), each the minimum over blocks of the median of `--repeat` runs,
each runtime in its own block after a pause.
"""
import argparse
import sys
import time

import numpy as np
from onnx import TensorProto, helper, numpy_helper


def add_chain(n_nodes=1000, size=16):
    """The ModelProto of the chain of `n_nodes` Adds on a (1, size) float32 input."""
    rng = np.random.default_rng(0)
    inits, nodes = [], []
    prev = "x"
    for i in range(n_nodes):
        c = f"c{i}"
        inits.append(numpy_helper.from_array(rng.standard_normal((1, size)).astype(np.float32) * 1e-3, c))
        out = "y" if i == n_nodes - 1 else f"t{i}"
        nodes.append(helper.make_node("Add", [prev, c], [out], name=f"add{i}"))
        prev = out
    graph = helper.make_graph(nodes, "add_chain", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, size])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, size])], inits)
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])


def _block(fn, repeat):
    fn()
    clock = time.perf_counter
    times = []
    for _ in range(repeat):
        t0 = clock()
        fn()
        times.append(clock() - t0)
    return float(np.median(times))


def measure(n_nodes=1000, size=16, threads=1, repeat=50, blocks=5, pause=0.2):
    """{'normrt': s, 'onnxruntime': s, 'numpy loop': s} per run of the whole chain."""
    import normrt
    model = add_chain(n_nodes, size)
    x = np.random.default_rng(1).standard_normal((1, size)).astype(np.float32)
    sess = normrt.InferenceSession(model, num_threads=threads)
    consts = [numpy_helper.to_array(t) for t in model.graph.initializer]
    bufs = [np.empty_like(x) for _ in consts]

    def numpy_loop():
        a = x
        for c, b in zip(consts, bufs):
            a = np.add(a, c, out=b)
        return a

    runs = {"normrt": lambda: sess.run(None, {"x": x}), "numpy loop": numpy_loop}
    try:
        import onnxruntime as ort
        so = ort.SessionOptions()
        so.intra_op_num_threads = threads
        so.inter_op_num_threads = 1
        osess = ort.InferenceSession(model.SerializeToString(), so, providers=["CPUExecutionProvider"])
        runs["onnxruntime"] = lambda: osess.run(None, {"x": x})
        np.testing.assert_allclose(sess.run(None, {"x": x})[0], osess.run(None, {"x": x})[0], rtol=1e-5, atol=1e-6)
    except ImportError:
        pass
    np.testing.assert_array_equal(sess.run(None, {"x": x})[0], numpy_loop())
    best = {k: float("inf") for k in runs}
    for _ in range(blocks):
        for k, fn in runs.items():
            time.sleep(pause)
            best[k] = min(best[k], _block(fn, repeat))
    return best


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--nodes", type=int, default=1000)
    ap.add_argument("--size", type=int, default=16)
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--repeat", type=int, default=50)
    ap.add_argument("--blocks", type=int, default=5)
    args = ap.parse_args(argv)
    best = measure(args.nodes, args.size, args.threads, args.repeat, args.blocks)
    print(f"chain of {args.nodes} Add nodes on (1, {args.size}) float32, {args.threads} thread(s)")
    for k, s in best.items():
        print(f"  {k:<12} {s * 1e3:8.3f} ms per run  {s / args.nodes * 1e6:6.2f} us per node")
    return 0


if __name__ == "__main__":
    sys.exit(main())

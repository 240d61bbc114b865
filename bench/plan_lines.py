"""Where a run's time goes, line by line of the plan `InferenceSession.run` executes.

    python -m bench.plan_lines MODEL.onnx [--threads 1] [--runs 200] [--top 25]

`InferenceSession.profile_nodes` (and bench.node_compare, built on it) times
the interpreted loop, node by node through each node's generic call; a run
goes through the specialized plan instead (src/normrt/onnx/compiled.py: the
prepared kernel calls, preallocated buffers, shape-only values folded). Small
models are decided by those per-call costs, so this tool times the plan
itself: the specialized plan's source with a clock read after every statement,
the minimum of each line over `--runs` runs (one thread by default: the
minimum is then what the line costs without the machine's noise). Prints the
sum of the per-line minimums and the `--top` most expensive lines with the
node each one runs. Inputs are random (scripts/e2e_bench.py's `random_feeds`).
"""
import argparse
import sys
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]


def plan_line_times(sess, feeds, threads, runs):
    """([(seconds, source line, step index)], outputs) of the specialized plan for these feeds: per
    line the minimum over `runs` runs of the time from the previous statement's end to its own, and
    what the timed plan returned on its last run (the run's outputs, in the plan's order)."""
    from normrt._threads import threads as thread_count
    with thread_count(threads):
        sess.run(None, feeds)
        sess.run(None, feeds)
    ex = sess.executor
    plans = list(ex.specialized.values())
    if not plans:
        raise SystemExit("the model runs no specialized plan (data-dependent shapes): use profile_nodes")
    plan = plans[-1]
    lines = plan.source.splitlines()
    out, timed = [lines[0], "    _T.append(_pc())"], []
    for i, line in enumerate(lines[1:], 2):
        out.append(line)
        body = line.strip()
        # one statement per line at the function's indent (a line of a wrapped call is deeper)
        if line.startswith("    ") and not line.startswith("     ") and not body.startswith(("return", "del ")):
            out.append("    _T.append(_pc())")
            timed.append((body, plan.line_steps.get(i)))
    stamps = []
    ns = dict(plan.fn.__globals__, _T=stamps, _pc=time.perf_counter)
    exec(compile("\n".join(out), "<normrt plan, timed>", "exec"), ns)
    fn = ns["run"]
    best, outputs = None, None
    with thread_count(threads):
        for _ in range(runs):
            stamps.clear()
            outputs = fn(feeds)
            d = np.diff(stamps)
            best = d if best is None else np.minimum(best, d)
    return [(float(t), body, step) for t, (body, step) in zip(best, timed)], outputs


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("model", help="an .onnx file")
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--runs", type=int, default=200)
    ap.add_argument("--top", type=int, default=25)
    args = ap.parse_args(argv)
    sys.path.insert(0, str(ROOT / "scripts"))
    import normrt
    from e2e_bench import random_feeds
    feeds = random_feeds(args.model)
    sess = normrt.InferenceSession(args.model, num_threads=args.threads)
    rows, _ = plan_line_times(sess, feeds, args.threads, args.runs)
    steps = sess.executor.steps
    print(f"{Path(args.model).name}: {args.threads} thread(s), min of {args.runs} runs per line; "
          f"sum of the lines' minimums {sum(r[0] for r in rows) * 1e6:.1f} us over {len(rows)} lines")
    print("| us | node | op | plan line |")
    print("|---:|---|---|---|")
    for t, body, step in sorted(rows, key=lambda r: -r[0])[:args.top]:
        node = steps[step].node if step is not None else None
        name = node.name if node is not None else "-"
        op = steps[step].key if step is not None else "-"
        print(f"| {t * 1e6:.1f} | {name} | {op} | `{body[:110]}` |")


if __name__ == "__main__":
    main()

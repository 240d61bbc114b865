"""Run the whole onnx backend *node* suite through normrt.backend; print pass/fail counts and reasons.

    python scripts/node_suite.py [-k SUBSTRING] [-v]

Not part of CI. Last recorded run (onnx 1.23.2): 1868/1884 pass. The 16 failures:
- 6 test_bernoulli*: random output, cannot match (onnx.reference fails them too);
- 2 test_scatter_*: deprecated Scatter has no onnx.reference implementation ->
  NotImplementedError at load, as designed;
- 7 that onnx.reference itself fails the same way (test_if_opt, test_loop16_seq_none,
  test_scan_sum, 4 x test_range_*_expanded);
- test_spacetodepth_crd_mode_example: the numpy SpaceToDepth ignores opset 28's `mode`.
Each case is prepared with normrt.backend.prepare and compared with the
suite's expected outputs using the suite's own comparison and tolerances.
"""
import argparse
import collections
import sys
import time
import traceback
import warnings

import onnx
from onnx.backend.test.loader import load_model_tests
from onnx.backend.test.runner import Runner

import normrt.backend


def _arrays(items):
    return [onnx.numpy_helper.to_array(i) if isinstance(i, onnx.TensorProto) else i for i in items]


def run_case(case):
    rep = normrt.backend.prepare(case.model, "CPU")
    for inputs, expected in case.data_sets:
        got = rep.run(_arrays(inputs))
        Runner.assert_similar_outputs(_arrays(expected), list(got), rtol=case.rtol, atol=case.atol)
    return rep.session.executor.counts()


def category(exc):
    text = f"{type(exc).__name__}: {exc}".splitlines()[0]
    if isinstance(exc, AssertionError):
        return "wrong result"
    if isinstance(exc, NotImplementedError):
        return "not implemented"
    if isinstance(exc, normrt.ModelError):
        return "model rejected"
    if isinstance(exc, ValueError) and "input" in text:
        return "feed rejected"
    return type(exc).__name__


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("-k", default="", help="only cases whose name contains this")
    ap.add_argument("-v", action="store_true", help="print every failure with its message")
    args = ap.parse_args(argv)
    warnings.simplefilter("ignore")
    cases = [c for c in load_model_tests(kind="node") if args.k in c.name]
    passed, failures = 0, []
    kinds = collections.Counter()
    t0 = time.time()
    for case in cases:
        try:
            counts = run_case(case)
            kinds.update({k: v for k, v in counts.items() if v})
            passed += 1
        except Exception as e:  # noqa: BLE001
            failures.append((case.name, category(e), f"{type(e).__name__}: {str(e).strip()}".splitlines()[0][:240]))
            if args.v:
                traceback.print_exc(limit=2)
    print(f"node suite: {passed}/{len(cases)} passed, {len(failures)} failed ({time.time() - t0:.0f}s)")
    print(f"node kinds in passing cases: {dict(kinds)}")
    by_cat = collections.defaultdict(list)
    for name, cat, msg in failures:
        by_cat[cat].append((name, msg))
    for cat, items in sorted(by_cat.items(), key=lambda kv: -len(kv[1])):
        print(f"\n== {cat}: {len(items)}")
        for name, msg in items:
            print(f"  {name}: {msg}")
    return 0 if not failures else 1


if __name__ == "__main__":
    sys.exit(main())

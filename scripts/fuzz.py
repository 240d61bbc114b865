"""Long fuzz run: mutated models into normrt.InferenceSession, each case in a worker process.

    python scripts/fuzz.py --minutes 30 [--seed 0] [--timeout 20] [--save tests/data/fuzz]

Cases come from tests/fuzz_target.py (protobuf-level mutations of the fixtures
in tests/data and src/normrt/examples: dims, dtypes, tensor data, attributes,
node wiring, op types, opsets, graph outputs; and byte-level ones). A case
ends in a result or a Python exception (allowed), or in a finding: the worker
died on a signal ("crash"), did not answer within --timeout seconds twice
("hang"), grew its peak RSS far beyond the model's size ("memory"), or hit a
SystemError / normrt's own "(a bug)" RuntimeError ("bug"). Findings are saved
under --save as <kind>-<hash>.onnx with a .txt saying what was mutated (at most
--keep per distinct crash site); a fixed one stays there as a regression case
that tests/test_fuzz.py replays.
"""
import argparse
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "tests"))

import fuzz_target  # noqa: E402


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--minutes", type=float, default=10.0)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--timeout", type=float, default=20.0, help="seconds before a case counts as hanging")
    ap.add_argument("--save", type=Path, default=fuzz_target.CRASHERS, help="where findings are written")
    ap.add_argument("--keep", type=int, default=2, help="findings kept per distinct crash site")
    ap.add_argument("--byte-level", type=float, default=0.25, help="share of byte-level mutations")
    args = ap.parse_args(argv)

    t0 = time.monotonic()
    sites = {}
    last = [t0]

    def on_case(i, case, out):
        if out.is_finding:
            site = (out.kind, out.detail.split(" for a ")[0] if out.kind != "error" else "")
            sites[site] = sites.get(site, 0) + 1
            saved = ""
            if sites[site] <= args.keep:
                saved = f" -> {fuzz_target.save_crasher(case, out, args.save)}"
            print(f"[{time.monotonic() - t0:7.0f}s] case {i}: {out.kind}: {out.detail} "
                  f"(seed {case.seed}; {'; '.join(case.mutations)[:200]}){saved}", flush=True)
        if time.monotonic() - last[0] > 60:
            last[0] = time.monotonic()
            print(f"[{last[0] - t0:7.0f}s] {i + 1} cases", flush=True)

    counts, findings, errors = fuzz_target.fuzz(args.minutes * 60, seed=args.seed, timeout=args.timeout,
                                                on_case=on_case, byte_level_share=args.byte_level)
    total = sum(counts.values())
    took = time.monotonic() - t0
    print(f"\n{total} cases in {took:.0f} s ({total / took:.0f}/s), seed {args.seed}")
    print("outcomes: " + ", ".join(f"{k} {v}" for k, v in sorted(counts.items(), key=lambda kv: -kv[1])))
    print("exceptions: " + ", ".join(f"{k} {v}" for k, v in sorted(errors.items(), key=lambda kv: -kv[1])))
    print(f"findings: {len(findings)} at {len(sites)} distinct site(s)")
    for (kind, detail), n in sorted(sites.items(), key=lambda kv: -kv[1]):
        print(f"  {n:5d}  {kind}: {detail}")
    return 1 if findings else 0


if __name__ == "__main__":
    sys.exit(main())

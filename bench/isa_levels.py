"""normrt at each ISA level of this install, in one run: the bench matrix
(bench/cases.py), the GEMM/conv cases of bench/gemm.py and the standalone
activations, as ratios to the highest level.

    python -m bench.isa_levels                       # every level this CPU runs, ~3-5 min
    python -m bench.isa_levels --levels x86-64,x86-64-v4 --only gemm --rounds 2
    python -m bench.isa_levels --markdown            # tables for the README
    python -m bench.isa_levels --models --only models   # whole models (scripts/e2e_bench.py's)

The level is chosen once per process (at import), so each level runs in a
worker process (NORMRT_ISA=level python -m bench.isa_levels --worker). The
workers run in rounds, every level once per round, and a case's time at a
level is the minimum over all rounds (each round itself the minimum of many
calls, batched below ~50 us): noise from other processes spoils one visit,
not the ratio. Every worker checks each result against the float64
reference before timing it.
"""
import argparse
import json
import math
import os
import subprocess
import sys
import time

import numpy as np

from .conv_shapes import e2e_bench_module

ACT_SHAPE = (1024, 768)
ACTIVATIONS = ("gelu", "silu")
SETTLE = 0.5          # seconds between workers: the previous one's threads go quiet
ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
E2E_CACHE = None      # set from --cache (scripts/e2e_bench.py's default)


class _ModelRunner:
    """A whole model on normrt.InferenceSession (its outputs are compared
    with onnxruntime's in scripts/e2e_bench.py; here every level runs the
    same session code, so only the time is new)."""

    def __init__(self, path, threads):
        import normrt
        self.feeds = e2e_bench_module().random_feeds(path)
        self.sess = normrt.InferenceSession(str(path), num_threads=threads)
        self.sess.run(None, self.feeds)

    def fn(self):
        self.sess.run(None, self.feeds)

    def context(self):
        import contextlib
        return contextlib.nullcontext()


def _norm_cases():
    from .cases import CASES
    return [c for c in CASES if c.kernel != "attention"], [c for c in CASES if c.kernel == "attention"]


def _gemm_cases():
    from .gemm import GEMM_CASES
    return GEMM_CASES


def _timer(runners, budget):
    from .report import Interleaved
    timer = Interleaved(runners, budget=budget)
    timer.round(0, 1)
    return timer.best


def worker(only, threads, budget, models=False):
    """Time every case at this process's level; {group: {case id: seconds}}."""
    import normrt
    from . import gemm
    from .backends import make_runner
    from .cases import make_inputs, reference, tolerance

    out = {"level": normrt.cpu_info()["level"], "times": {}}
    norms, attention = _norm_cases()
    groups = [("norms", c, "matrix") for c in norms] + [("attention", c, "matrix") for c in attention]
    groups += [("gemm/conv", c, "gemm") for c in _gemm_cases()]
    groups += [("activations", a, "act") for a in ACTIVATIONS]
    if models:
        groups += [("models", m, "model") for m in e2e_bench_module().models(E2E_CACHE)]
    for group, case, kind in groups:
        if kind == "act":
            ident = f"activate {case} {ACT_SHAPE}"
        elif kind == "model":
            ident = case[0]
        else:
            ident = case.id if kind == "gemm" else f"{case.label} {case.shape}"
        if only and not any(o in ident or o in group for o in only):
            continue
        if kind == "matrix":
            arrays = make_inputs(case)
            runner = make_runner("normrt", case, arrays, threads)
            rtol, atol = tolerance(case)
            runner.fn()
            np.testing.assert_allclose(runner.result(), reference(case, arrays), rtol=rtol, atol=atol,
                                       err_msg=f"{ident} at {out['level']}")
        elif kind == "gemm":
            a = gemm.make_inputs(case)
            runner = gemm.make_runner("normrt", case, a, threads)
            gemm.check(case, runner, gemm.reference(case, a))
        elif kind == "model":
            runner = _ModelRunner(case[1], threads)
        else:
            runner = _activation_runner(case, threads)
        out["times"].setdefault(group, {})[ident] = _timer({"normrt": runner}, budget)["normrt"]
    return out


def _act_reference(x, act):
    v = x.astype(np.float64)
    if act == "gelu":
        erfc = np.vectorize(math.erfc, otypes=[np.float64])   # the negative tail keeps its digits
        return 0.5 * v * erfc(-v / math.sqrt(2.0))
    return v / (1.0 + np.exp(-v))


class _ActRunner:
    def __init__(self, act, threads):
        import normrt
        self.x = np.random.default_rng(0).standard_normal(ACT_SHAPE).astype(np.float32) * 3
        self.out = np.empty_like(self.x)
        self.act, self.threads = act, threads
        self._normrt = normrt

    def fn(self):
        self._normrt.activate(self.x, self.act, out=self.out)

    def context(self):
        return self._normrt.threads(self.threads)

    def check(self):
        with self.context():
            self.fn()
        np.testing.assert_allclose(self.out, _act_reference(self.x, self.act), rtol=2e-6, atol=1e-30)


def _activation_runner(act, threads):
    runner = _ActRunner(act, threads)
    runner.check()
    return runner


# ---------------------------------------------------------------- the parent

def _levels(requested):
    import normrt
    from normrt import _isa
    info = normrt.cpu_info()
    runnable = [lv for lv in info["built_levels"] if _isa.rank(lv) <= _isa.rank(info["level"])]
    if requested:
        bad = [lv for lv in requested if lv not in runnable]
        if bad:
            raise SystemExit(f"--levels: {', '.join(bad)} not runnable here (built and runnable: "
                             f"{', '.join(runnable)})")
        return requested
    return runnable


def run(levels, rounds, threads, only, budget, models=False):
    """{level: {group: {case: seconds}}}, min over rounds."""
    best = {}
    for r in range(rounds):
        for level in levels:
            time.sleep(SETTLE)
            env = dict(os.environ, NORMRT_ISA=level)
            cmd = [sys.executable, "-m", "bench.isa_levels", "--worker", "--threads", str(threads),
                   "--budget", str(budget), "--cache", str(E2E_CACHE)] + (["--only", ",".join(only)] if only else []) \
                + (["--models"] if models else [])
            p = subprocess.run(cmd, env=env, capture_output=True, text=True,
                               cwd=os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
            if p.returncode != 0:
                raise SystemExit(f"worker at {level} failed:\n{p.stderr[-3000:]}")
            res = json.loads(p.stdout.strip().splitlines()[-1])
            if res["level"] != level:
                raise SystemExit(f"worker asked for {level} ran {res['level']}")
            for group, cases in res["times"].items():
                for case, t in cases.items():
                    slot = best.setdefault(level, {}).setdefault(group, {})
                    slot[case] = min(slot.get(case, math.inf), t)
            print(f"round {r + 1}/{rounds}: {level} done", file=sys.stderr)
    return best


def _geomean(values):
    values = [v for v in values if v and math.isfinite(v)]
    return math.exp(sum(map(math.log, values)) / len(values)) if values else math.nan


def format_tables(best, levels, markdown=False):
    top = levels[-1]
    lines = []
    groups = list(best[top])
    header = ["case", *[f"{lv} (ms)" for lv in levels], *[f"{lv} / {top}" for lv in levels[:-1]]]
    summary = []
    for group in groups:
        rows = []
        for case in best[top][group]:
            times = [best[lv][group][case] for lv in levels]
            rows.append([case, *[f"{t * 1e3:.3f}" for t in times],
                         *[f"{t / times[-1]:.2f}x" for t in times[:-1]]])
        geo = [_geomean([best[lv][group][c] / best[top][group][c] for c in best[top][group]])
               for lv in levels[:-1]]
        rows.append([f"geomean ({group})", *["" for _ in levels], *[f"{g:.2f}x" for g in geo]])
        summary.append([group, *[f"{g:.2f}x" for g in geo]])
        lines += _table(header, rows, markdown) + [""]
    lines += _table(["group (geomean)", *[f"{lv} / {top}" for lv in levels[:-1]]], summary, markdown)
    return "\n".join(lines)


def _table(header, rows, markdown):
    if markdown:
        out = ["| " + " | ".join(header) + " |", "|" + "|".join("---" for _ in header) + "|"]
        return out + ["| " + " | ".join(r) + " |" for r in rows]
    widths = [max(len(str(r[i])) for r in [header] + rows) for i in range(len(header))]
    fmt = lambda r: "  ".join(str(v).ljust(w) if i == 0 else str(v).rjust(w)   # noqa: E731
                              for i, (v, w) in enumerate(zip(r, widths)))
    return [fmt(header)] + [fmt(r) for r in rows]


def main(argv=None):
    from .cases import bench_threads
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--levels", default="", help="comma-separated levels (default: all this CPU runs)")
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--threads", type=int, default=None)
    ap.add_argument("--only", default="", help="comma-separated substrings of case ids or groups")
    ap.add_argument("--budget", type=float, default=0.15, help="seconds of timed calls per case per round")
    ap.add_argument("--markdown", action="store_true")
    ap.add_argument("--models", action="store_true",
                    help="also time whole models (scripts/e2e_bench.py's list; diffusers exports cached)")
    ap.add_argument("--cache", default=os.path.join(os.environ.get("XDG_CACHE_HOME", os.path.expanduser("~/.cache")),
                                                    "normrt", "e2e_bench"))
    ap.add_argument("--worker", action="store_true", help=argparse.SUPPRESS)
    args = ap.parse_args(argv)
    threads = args.threads or bench_threads()
    only = [o for o in args.only.split(",") if o]
    global E2E_CACHE
    from pathlib import Path
    E2E_CACHE = Path(args.cache)
    if args.worker:
        print(json.dumps(worker(only, threads, args.budget, args.models)))
        return 0
    levels = _levels([lv.strip() for lv in args.levels.split(",") if lv.strip()])
    best = run(levels, args.rounds, threads, only, args.budget, args.models)
    import normrt
    info = normrt.cpu_info()
    print(f"normrt at each ISA level: {threads} thread(s), min over {args.rounds} round(s); "
          f"cpu {info['brand'] or '?'} ({info['cpu_level']}); load average {os.getloadavg()[0]:.1f}")
    print(format_tables(best, levels, args.markdown))
    return 0


if __name__ == "__main__":
    sys.exit(main())

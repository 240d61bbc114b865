"""Benchmark report: where normrt stands against the copy floor, onnxruntime and torch.

    python -m bench.report [--threads N] [--repeat K] [--png PATH | --no-png] [--markdown]
                           [--only SUBSTRING] [--half]

Runs the whole matrix of bench/cases.py itself (not through pytest). Every case
is built (and its results checked) first; then PASSES passes over the whole
matrix each visit every case for ROUNDS rounds, a round timing normrt, the copy
floor, ORT (both forms) and torch in turn after a warm-up call. So the
implementations of a case are interleaved, and each measurement is spread over
the whole run: a burst of load on a shared machine spoils one visit, not the
result. A time is the minimum over all timed calls (>= MIN_REPEAT per
implementation, more for fast cases, about BUDGET seconds each); calls shorter
than ~50 us are timed in batches and divided, as timeit does.

Prints one table (normrt time, GB/s, ratio to the copy floor, speed-up over
onnxruntime and torch, geometric means), a small-call table (per-call
microseconds via timeit) and the 1-thread -> N-thread scaling of the large
cases. Also writes a PNG bar chart when matplotlib is installed, and prints
markdown instead of text with --markdown.

The core is importable: run(...) returns a Report; format_text, format_markdown
and save_png render it.
"""
import argparse
import dataclasses
import gc
import math
import os
import platform
import sys
import time
import timeit
from pathlib import Path

import numpy as np

from .backends import ALL_IMPLS, IMPLS, ORT_UNFUSED, Unavailable, _normrt_runner, make_runner
from .cases import CASES, SMALL_CALL_CASES, bench_threads, make_inputs, reference, tolerance

BUDGET = 0.4  # seconds of timed calls per implementation per case (adaptive mode)
MIN_REPEAT = 30  # timed samples per implementation per case, at least
MAX_REPEAT = 3000
PASSES = 3  # passes over the whole matrix
ROUNDS = 2  # interleaving rounds per case and pass
MIN_SAMPLE = 50e-6  # shorter calls are timed in batches of this duration
SMALL_CALL_NUMBER = 5000  # timeit calls per repeat in the small-call table
SMALL_CALL_REPEAT = 7
DEFAULT_PNG = Path(__file__).resolve().parent / "report.png"

LABELS = {"normrt": "normrt", "copy": "copy floor", "ort": "onnxruntime", "torch": "torch"}


@dataclasses.dataclass
class CaseResult:
    case: object
    seconds: dict  # impl -> min seconds per call, None when the impl could not run
    notes: dict  # impl -> the form used, or why it could not run
    mismatches: list  # "impl: message" for results that differ from the reference

    def time(self, impl):
        """Min seconds per call; for "ort", of the faster of its forms."""
        if impl == "ort":
            return _min_known(self.seconds.get("ort"), self.seconds.get(ORT_UNFUSED))
        return self.seconds.get(impl)

    def ort_forms(self):
        """[(note, seconds)] of the ORT forms measured, the faster first."""
        forms = [(self.notes[i], self.seconds[i]) for i in ("ort", ORT_UNFUSED)
                 if self.seconds.get(i) is not None]
        return sorted(forms, key=lambda f: f[1])

    @property
    def gbps(self):
        t = self.time("normrt")
        return None if t is None else self.case.nbytes / t / 1e9

    def ratio_to_copy(self, impl="normrt"):
        """impl's time over the copy floor's (1.0 = as fast as copying x once)."""
        return _ratio(self.time(impl), self.time("copy"))

    def speedup_over(self, other):
        """other's time over normrt's (> 1: normrt is faster)."""
        return _ratio(self.time(other), self.time("normrt"))


@dataclasses.dataclass
class SmallCallResult:
    case: object
    microseconds: dict  # label -> per-call us (None: not available)


@dataclasses.dataclass
class ScalingResult:
    case: object
    normrt_1: float
    normrt_n: float
    copy_1: float
    copy_n: float

    @property
    def normrt_speedup(self):
        return _ratio(self.normrt_1, self.normrt_n)

    @property
    def copy_speedup(self):
        return _ratio(self.copy_1, self.copy_n)


@dataclasses.dataclass
class Report:
    threads: int
    repeat: object  # the fixed repeat, or None for adaptive
    results: list
    small_calls: list
    scaling: list
    versions: dict
    elapsed: float = 0.0
    load: tuple = (None, None)  # 1-minute load average at the start and the end

    def geomean_speedup(self, other):
        return _geomean([r.speedup_over(other) for r in self.results])

    def geomean_ratio_to_copy(self, impl="normrt"):
        return _geomean([r.ratio_to_copy(impl) for r in self.results])


def _min_known(*values):
    known = [v for v in values if v is not None]
    return min(known) if known else None


def _ratio(a, b):
    return None if a is None or b is None or b <= 0 else a / b


def _geomean(values):
    values = [v for v in values if v is not None and v > 0]
    if not values:
        return None
    return math.exp(sum(math.log(v) for v in values) / len(values))


# ---------------------------------------------------------------- timing

def _batch_size(runner):
    """Calls per timed sample so that a sample lasts >= MIN_SAMPLE; also warms up."""
    with runner.context():
        runner.fn()
        best = math.inf
        for _ in range(3):
            t0 = time.perf_counter()
            runner.fn()
            best = min(best, time.perf_counter() - t0)
    return best, max(1, math.ceil(MIN_SAMPLE / max(best, 1e-9)))


class Interleaved:
    """Min seconds per call of a few runners (dict name -> Runner), timed in rounds.

    Calibration decides each runner's batch size (calls per sample) and number
    of samples: `repeat` if given, else enough for `budget` seconds, clamped to
    [MIN_REPEAT, MAX_REPEAT]. The samples are then spread over `total_rounds`
    calls of round(): each round times every runner in turn, after one warm-up
    call, and keeps the minimum per runner in `best`.
    """

    def __init__(self, runners, repeat=None, budget=BUDGET):
        self.runners = runners
        self.plan = {}
        for name, runner in runners.items():
            one, number = _batch_size(runner)
            if repeat is None:
                samples = min(MAX_REPEAT, max(MIN_REPEAT, math.ceil(budget / (one * number))))
            else:
                samples = max(1, int(repeat))
            self.plan[name] = (number, samples)
        self.best = {name: math.inf for name in runners}

    def round(self, index, total_rounds):
        for name, runner in self.runners.items():
            number, samples = self.plan[name]
            # this round's share of the samples (the first rounds take the remainder)
            share = samples // total_rounds + (1 if index < samples % total_rounds else 0)
            if not share:
                continue
            fn = runner.fn
            with runner.context():
                fn()  # warm-up: caches, and the thread pools of whoever ran before
                for _ in range(share):
                    t0 = time.perf_counter()
                    for _ in range(number):
                        fn()
                    self.best[name] = min(self.best[name], (time.perf_counter() - t0) / number)


def time_passes(entries, passes=PASSES, rounds=ROUNDS, progress=None):
    """Run the rounds of several Interleaved timers, `passes` times over all of them.

    Each pass visits every entry and runs `rounds` consecutive rounds of it, so
    each measurement is spread over the whole run: a burst of load from other
    processes on a shared machine spoils one visit, not all of them.
    """
    total = passes * rounds
    gc_was_enabled = gc.isenabled()
    gc.disable()
    try:
        for p in range(passes):
            for k, (label, timer) in enumerate(entries, 1):
                if progress:
                    progress(f"pass {p + 1}/{passes} [{k}/{len(entries)}] {label}")
                for r in range(rounds):
                    timer.round(p * rounds + r, total)
    finally:
        if gc_was_enabled:
            gc.enable()


def time_interleaved(runners, repeat=None, budget=BUDGET, passes=1, rounds=ROUNDS):
    """Min seconds per call for each runner (dict name -> Runner), interleaved."""
    if not runners:
        return {}
    timer = Interleaved(runners, repeat, budget)
    time_passes([("", timer)], passes, rounds)
    return timer.best


# ---------------------------------------------------------------- the report

def _runners(case, arrays, threads, impls):
    runners, notes = {}, {}
    for impl in impls:
        try:
            runners[impl] = make_runner(impl, case, arrays, threads)
            notes[impl] = runners[impl].note
        except Unavailable as exc:
            notes[impl] = f"n/a: {exc}"
    return runners, notes


def _check(case, arrays, runners):
    expected = reference(case, arrays)
    rtol, atol = tolerance(case)
    mismatches = []
    for impl, runner in runners.items():
        actual = runner.result()
        if actual is None:
            continue
        if not np.allclose(actual, expected, rtol=rtol, atol=atol):
            err = float(np.max(np.abs(actual.astype(np.float64) - expected)))
            mismatches.append(f"{impl} ({runner.note}): max abs error {err:.3g}")
    return mismatches


def _versions():
    import normrt

    v = {"normrt": f"{normrt.__version__} (OpenMP {'on' if normrt.openmp_enabled() else 'OFF'})",
         "numpy": np.__version__}
    for mod in ("onnxruntime", "torch"):
        try:
            v[mod] = __import__(mod).__version__
        except ImportError:
            v[mod] = "not installed"
    v["python"] = platform.python_version()
    try:
        cores = len(os.sched_getaffinity(0))
    except (AttributeError, OSError):
        cores = os.cpu_count()
    v["machine"] = f"{platform.machine()}, {cores} usable cores"
    return v


def run(cases=None, *, threads=None, repeat=None, impls=ALL_IMPLS, small_call_cases=None,
        small_call_number=None, scaling_cases=None, check=True, budget=BUDGET,
        passes=PASSES, rounds=ROUNDS, progress=False):
    """Measure `cases` (default: all of CASES) and return a Report.

    threads: for every implementation (default $NORMRT_BENCH_THREADS or 2).
    repeat: timed samples per implementation per case (default: adaptive, >= 30).
    small_call_cases: cases for the timeit table (default SMALL_CALL_CASES; [] skips).
    small_call_number: timeit calls per repeat there (default SMALL_CALL_NUMBER).
    scaling_cases: cases timed at 1 and `threads` threads (default: the large ones
    among `cases`; [] skips; nothing to do at threads=1).
    check: compare every result with the float64 numpy reference (once per case).
    budget, passes, rounds: see Interleaved and time_passes.
    """
    start = time.perf_counter()
    load_start = _load()
    cases = list(CASES if cases is None else cases)
    threads = bench_threads() if threads is None else int(threads)
    small_call_cases = list(SMALL_CALL_CASES if small_call_cases is None else small_call_cases)
    if small_call_number is None:
        small_call_number = SMALL_CALL_NUMBER
    if scaling_cases is None:
        scaling_cases = [c for c in cases if c.large]
    scaling_cases = list(scaling_cases) if threads > 1 else []
    log = (lambda msg: print(msg, file=sys.stderr, flush=True)) if progress else None

    # build (and check) every case first: all of them stay in memory, so the
    # timing passes can revisit each case several times
    entries, results = [], []
    for i, case in enumerate(cases, 1):
        if log:
            log(f"setup [{i}/{len(cases)}] {case.group}")
        arrays = make_inputs(case)
        runners, notes = _runners(case, arrays, threads, impls)
        mismatches = _check(case, arrays, runners) if check else []
        results.append(CaseResult(case, {}, notes, mismatches))
        entries.append((case.group, Interleaved(runners, repeat, budget)))
    scaling_entries = []
    for case in scaling_cases:
        if log:
            log(f"setup [scaling 1 -> {threads} threads] {case.group}")
        arrays = make_inputs(case)
        try:
            runners = {"normrt_1": _normrt_runner(case, arrays, 1),
                       "normrt_n": _normrt_runner(case, arrays, threads)}
        except Unavailable:
            continue
        runners["copy_1"] = make_runner("copy", case, arrays, 1)
        runners["copy_n"] = make_runner("copy", case, arrays, threads)
        scaling_entries.append((case, Interleaved(runners, repeat, budget)))

    time_passes(entries + [(f"scaling {c.group}", t) for c, t in scaling_entries],
                passes, rounds, log)
    for result, (_, timer) in zip(results, entries):
        result.seconds = {impl: timer.best.get(impl) for impl in impls}
    scaling = [ScalingResult(case, **timer.best) for case, timer in scaling_entries]
    del entries, scaling_entries

    small = []
    for case in small_call_cases:
        if log:
            log(f"small calls: {case.group}")
        small.append(_small_calls(case, threads, impls, small_call_number))

    return Report(threads, repeat, results, small, scaling, _versions(),
                  time.perf_counter() - start, (load_start, _load()))


def _load():
    try:
        return os.getloadavg()[0]
    except (AttributeError, OSError):
        return None


def _small_calls(case, threads, impls, number):
    """Per-call microseconds with timeit: normrt with and without out=, and the baselines."""
    arrays = make_inputs(case)
    runners = {}
    variants = [("normrt", "normrt out="), ("normrt-alloc", "normrt (allocating)")]
    variants += [(impl, LABELS[impl]) for impl in impls if impl in IMPLS and impl != "normrt"]
    for impl, label in variants:
        if impl == "normrt-alloc" and "normrt" not in impls:
            continue
        try:
            if impl == "normrt-alloc":
                runners[label] = _normrt_runner(case, arrays, threads, out=False)
            else:
                runners[label] = make_runner(impl, case, arrays, threads)
        except Unavailable:
            runners[label] = None
    best = {label: math.inf for label in runners}
    for _ in range(SMALL_CALL_REPEAT):  # interleaved repeats
        for label, runner in runners.items():
            if runner is None:
                continue
            with runner.context():
                timer = timeit.Timer(runner.fn)
                timer.timeit(max(1, number // 10))  # warm-up
                best[label] = min(best[label], timer.timeit(number) / number)
    us = {label: (None if runners[label] is None else best[label] * 1e6) for label in runners}
    return SmallCallResult(case, us)


# ---------------------------------------------------------------- rendering

def _fmt_time(seconds):
    if seconds is None:
        return "n/a"
    if seconds < 1e-3:
        return f"{seconds * 1e6:.1f} us"
    if seconds < 1:
        return f"{seconds * 1e3:.2f} ms"
    return f"{seconds:.2f} s"


def _fmt_x(value):
    return "-" if value is None else f"{value:.2f}x"


def _fmt_num(value, spec=".1f"):
    return "-" if value is None else format(value, spec)


HEADER = ("case", "dtype", "normrt", "GB/s", "normrt/copy", "vs ORT", "vs torch", "vs float32")


def _float32_times(report):
    """normrt's time of each float32 case, by (label without dtype, shape)."""
    return {(r.case.base_label, r.case.shape): r.time("normrt") for r in report.results
            if r.case.dtype == "float32"}


def speedup_over_float32(report, result):
    """normrt's time on the float32 case of the same kernel and shape over its time on
    this one (> 1: this dtype is faster); None for float32 cases or without that case."""
    if result.case.dtype == "float32":
        return None
    return _ratio(_float32_times(report).get((result.case.base_label, result.case.shape)),
                  result.time("normrt"))


def _rows(report):
    rows = []
    for r in report.results:
        flag = " *" if r.mismatches else ""
        rows.append((f"{r.case.base_label}-{r.case.shape}{flag}", r.case.dtype,
                     _fmt_time(r.time("normrt")), _fmt_num(r.gbps),
                     _fmt_x(r.ratio_to_copy()), _fmt_x(r.speedup_over("ort")),
                     _fmt_x(r.speedup_over("torch")), _fmt_x(speedup_over_float32(report, r))))
    return rows


def _geomean_row(report):
    return ("geometric mean", "", "", "", _fmt_x(report.geomean_ratio_to_copy()),
            _fmt_x(report.geomean_speedup("ort")), _fmt_x(report.geomean_speedup("torch")),
            _fmt_x(_geomean([speedup_over_float32(report, r) for r in report.results])))


def _text_table(header, rows, left=1):
    widths = [max(len(str(row[i])) for row in [header, *rows]) for i in range(len(header))]

    def line(row):
        return "  ".join(str(c).ljust(w) if i < left else str(c).rjust(w)
                         for i, (c, w) in enumerate(zip(row, widths)))
    rule = "-" * len(line(header))
    return [line(header), rule, *(line(r) for r in rows)]


def _mode(report):
    if report.repeat is None:
        return f"min of >= {MIN_REPEAT} timed calls per implementation and case (adaptive)"
    return f"min of {report.repeat} timed calls per implementation and case"


def _load_text(report):
    start, end = report.load
    if start is None:
        return ""
    return f"load average {start:.1f} at start, {end:.1f} at end"


def _forms(report):
    """How ORT and torch expressed each kind of case, as lines.

    A kind whose ORT has two forms gets one indented line per case with both
    forms' times, the faster (the one compared) first.
    """
    by_label = {}
    for r in report.results:
        by_label.setdefault(r.case.label, []).append(r)
    out = []
    for label, results in by_label.items():
        first = results[0]
        torch_note = first.notes.get("torch", "-")
        if all(len(r.ort_forms()) <= 1 for r in results):
            forms = first.ort_forms()
            ort_note = forms[0][0] if forms else first.notes.get("ort", "-")
            out.append(f"{label}: ORT {ort_note}; torch {torch_note}")
            continue
        out.append(f"{label}: torch {torch_note}; ORT, per case:")
        for r in results:
            out.append(f"    {r.case.shape}: " + " < ".join(
                f"{note} {_fmt_time(t)}" for note, t in r.ort_forms()))
    return out


def _notes(report):
    n = report.threads
    return [
        f"normrt/copy: normrt time over np.copyto(dst, x) (the same bytes copied once,"
        f" single-threaded); < 1.00x is possible with {n} threads.",
        "vs ORT / vs torch: their time over normrt's (> 1.00x: normrt is faster), in the"
        " same dtype (ORT's CPU kernels have no bfloat16).",
        "vs float32: normrt's time on the float32 case of the same shape over this one"
        " (the copy floor copies the dtype's own, smaller, bytes).",
        "GB/s counts x read + y written (+ residual read); parameters are not counted.",
        "ORT: single-node models, io_binding to preallocated buffers, the faster of the fused"
        " op and its decomposed form; torch: F.* under inference_mode, output allocation"
        " included (no out=).",
    ]


def format_text(report):
    v = report.versions
    lines = [
        f"normrt benchmark report: {report.threads} threads, {_mode(report)}",
        ", ".join(f"{k} {val}" for k, val in v.items()),
        "",
        *_text_table(HEADER, _rows(report) + [_geomean_row(report)]),
        "",
        *("  " + note for note in _notes(report)),
    ]
    mismatches = [(r.case.group, m) for r in report.results for m in r.mismatches]
    if mismatches:
        lines += ["", "* results differing from the float64 numpy reference:"]
        lines += [f"  {group}: {m}" for group, m in mismatches]
    missing = [(r.case.group, impl, note) for r in report.results
               for impl, note in r.notes.items() if note.startswith("n/a") and impl != ORT_UNFUSED]
    if missing:
        lines += ["", "not measured:"] + [f"  {g} {impl}: {note[5:]}" for g, impl, note in missing]

    if report.small_calls:
        labels = list(report.small_calls[0].microseconds)
        header = ("small call (us per call)", *labels)
        rows = [(s.case.group, *(_fmt_num(s.microseconds.get(lab), ".2f") for lab in labels))
                for s in report.small_calls]
        lines += ["", *_text_table(header, rows)]

    if report.scaling:
        n = report.threads
        lines += ["", f"scaling 1 -> {n} threads (np.copyto is single-threaded: its ratio"
                      f" only shows the noise; normrt can beat the copy floor at {n} threads)"]
        header = ("case", "normrt 1 thr", f"normrt {n} thr", "speed-up", "copy speed-up")
        rows = [(s.case.group, _fmt_time(s.normrt_1), _fmt_time(s.normrt_n),
                 _fmt_x(s.normrt_speedup), _fmt_x(s.copy_speedup)) for s in report.scaling]
        rows.append(("geometric mean", "", "", _fmt_x(_geomean([s.normrt_speedup for s in report.scaling])),
                     _fmt_x(_geomean([s.copy_speedup for s in report.scaling]))))
        lines += _text_table(header, rows)

    lines += ["", "forms (where ORT has two, the faster is compared):"]
    lines += ["  " + f for f in _forms(report)]
    lines += [f"report took {report.elapsed:.0f} s; {_load_text(report)}"]
    return "\n".join(lines)


def _md_table(header, rows):
    out = ["| " + " | ".join(header) + " |",
           "|" + "|".join(["---"] + ["---:"] * (len(header) - 1)) + "|"]
    out += ["| " + " | ".join(str(c) for c in row) + " |" for row in rows]
    return out


def format_markdown(report):
    v = report.versions
    rows = [(f"`{r[0]}`",) + r[1:] for r in _rows(report)]
    geo = _geomean_row(report)
    rows.append((f"**{geo[0]}**",) + geo[1:])
    lines = [
        f"{report.threads} threads, {_mode(report)}; "
        + ", ".join(f"{k} {val}" for k, val in v.items()) + ".",
        "",
        *_md_table(HEADER, rows),
        "",
        *("- " + note for note in _notes(report)),
    ]
    if report.small_calls:
        labels = list(report.small_calls[0].microseconds)
        lines += ["", *_md_table(("small call (µs per call)", *labels),
                                 [(f"`{s.case.group}`",
                                   *(_fmt_num(s.microseconds.get(lab), ".2f") for lab in labels))
                                  for s in report.small_calls])]
    if report.scaling:
        n = report.threads
        lines += ["", *_md_table(
            ("case", "normrt 1 thread", f"normrt {n} threads", "speed-up",
             "np.copyto speed-up (single-threaded)"),
            [(f"`{s.case.group}`", _fmt_time(s.normrt_1), _fmt_time(s.normrt_n),
              _fmt_x(s.normrt_speedup), _fmt_x(s.copy_speedup)) for s in report.scaling])]
    lines += ["", "Forms (where ORT has two, the faster is compared):", ""]
    lines += [("  - " + f[4:]) if f.startswith("    ") else ("- " + f) for f in _forms(report)]
    return "\n".join(lines)


def save_png(report, path):
    """Bar chart of each implementation's time over the copy floor, log scale.

    Returns the path written, or None when matplotlib is not installed.
    """
    try:
        import matplotlib
        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        return None
    impls = [impl for impl in IMPLS if impl != "copy"]
    groups = [r.case.group for r in report.results]
    width = 0.8 / len(impls)
    fig, ax = plt.subplots(figsize=(max(8, 0.7 * len(groups) + 2), 5.5))
    for j, impl in enumerate(impls):
        xs, ys = [], []
        for i, r in enumerate(report.results):
            ratio = r.ratio_to_copy(impl)
            if ratio is not None:
                xs.append(i + (j - (len(impls) - 1) / 2) * width)
                ys.append(ratio)
        ax.bar(xs, ys, width, label=LABELS[impl])
    ax.axhline(1.0, color="black", linewidth=1, linestyle="--",
               label="copy floor (np.copyto, 1 thread)")
    ax.set_yscale("log")
    ax.set_ylabel("time / copy-floor time (lower is better)")
    ax.set_xticks(range(len(groups)))
    ax.set_xticklabels(groups, rotation=60, ha="right", fontsize=8)
    ax.set_title(f"normrt vs onnxruntime vs torch, {report.threads} threads (min of repeats)")
    ax.legend(fontsize=8)
    ax.grid(axis="y", which="both", alpha=0.3)
    fig.tight_layout()
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return path


# ---------------------------------------------------------------- CLI

def half_and_float32_cases(cases):
    """The float16/bfloat16 cases among `cases` and the float32 cases of the same kernel,
    options and shape (their "vs float32" reference), float32 first."""
    half = [c for c in cases if c.dtype in ("float16", "bfloat16")]
    keys = {(c.base_label, c.shape) for c in half}
    return [c for c in cases if c.dtype == "float32" and (c.base_label, c.shape) in keys] + half


def main(argv=None):
    parser = argparse.ArgumentParser(prog="python -m bench.report", description=__doc__.split("\n\n")[0])
    parser.add_argument("--threads", type=int, default=None,
                        help="threads for every implementation (default: $NORMRT_BENCH_THREADS or 2)")
    parser.add_argument("--repeat", type=int, default=None,
                        help=f"timed calls per implementation per case (default: adaptive, >= {MIN_REPEAT})")
    parser.add_argument("--png", default=str(DEFAULT_PNG),
                        help="where to write the bar chart (default: %(default)s)")
    parser.add_argument("--no-png", action="store_true", help="do not write the bar chart")
    parser.add_argument("--markdown", action="store_true",
                        help="print markdown tables (for the README) instead of text")
    parser.add_argument("--only", metavar="SUBSTRING", default=None,
                        help="only the cases whose group or id contains SUBSTRING")
    parser.add_argument("--half", action="store_true",
                        help="only the float16/bfloat16 cases and the float32 cases of the same shapes")
    args = parser.parse_args(argv)
    if args.threads is not None and args.threads < 1:
        parser.error("--threads must be >= 1")
    if args.repeat is not None and args.repeat < 1:
        parser.error("--repeat must be >= 1")

    cases = CASES
    if args.half:
        cases = half_and_float32_cases(cases)
    if args.only:
        cases = [c for c in CASES if args.only in c.group or args.only in c.id]
        if not cases:
            parser.error(f"no case matches {args.only!r}")
    report = run(cases, threads=args.threads, repeat=args.repeat, progress=True)
    print(format_markdown(report) if args.markdown else format_text(report))
    if not args.no_png:
        written = save_png(report, args.png)
        if written is None:
            print("(matplotlib is not installed: no PNG)", file=sys.stderr)
        else:
            print(f"(bar chart written to {written})", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())

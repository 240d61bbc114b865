"""Fuzzing InferenceSession (tests/fuzz_target.py): a short run in CI, the saved crashers replayed,
and the harness itself shown to catch crashes, hangs and runaway memory.

The long run is scripts/fuzz.py. Here the random run is a fixed prefix of one
sequence: NORMRT_FUZZ_CASES cases (default 40,000, about 80 s on the 2-core
machine), capped at NORMRT_FUZZ_SECONDS (default 120); NORMRT_FUZZ_SEED its seed.
"""
import os
import time

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import fuzz_target as F


@pytest.fixture(scope="module")
def worker():
    with F.Worker(timeout=20.0) as w:
        yield w


@pytest.fixture(scope="module")
def small_seeds():
    return F.seed_models(max_bytes=60_000)


def describe(case, out):
    return f"{out.kind}: {out.detail} (seed model {case.seed}, mutations {case.mutations})"


def test_harness_catches_crash_hang_and_memory():
    case = F.Case("selftest", b"", [])
    with F.Worker(timeout=30.0, memory_slack_mb=128) as w:
        assert w.run(case, selftest="ok").kind == "ok"
        grow = w.run(case, selftest="grow")       # 512 MiB touched for a 0-byte model
        assert grow.kind == "memory" and grow.rss_growth_mb >= 500, grow
        alloc = w.run(case, selftest="alloc")     # RLIMIT_AS turns a huge allocation into MemoryError
        assert alloc.kind == "error" and "MemoryError" in alloc.detail
        crash = w.run(case, selftest="crash")
        assert crash.kind == "crash" and "SIGSEGV" in crash.detail and "_selftest" in crash.detail, crash
        assert w.run(case, selftest="hang", timeout=1.0).kind == "hang"
        # a hang is re-run in a fresh worker before it counts (here b"" is simply no model)
        assert w.confirm(case, F.Outcome("hang")).kind == "error"
        assert w.run(case, selftest="ok").kind == "ok"      # the worker restarts after each


@pytest.mark.parametrize("path", sorted(F.CRASHERS.glob("*.onnx")), ids=lambda p: p.name)
def test_saved_crashers_are_fixed(worker, path):
    for threads in (1, 2):
        out = worker.run(F.Case(path.name, path.read_bytes(), [], threads))
        assert not out.is_finding, f"{path.name}: {out.kind}: {out.detail}"


# derandomized: CI replays the same examples every run (new ground is the long run's,
# scripts/fuzz.py), so a red CI means a regression, not a lucky draw
@settings(max_examples=int(os.environ.get("NORMRT_FUZZ_EXAMPLES", "150")), deadline=None, database=None,
          derandomize=True, suppress_health_check=list(HealthCheck))
@given(data=st.data())
def test_protobuf_mutations(worker, small_seeds, data):
    """Hypothesis drives the protobuf-level mutations (and shrinks a finding to its fewest)."""
    ch = F.HypothesisChooser(data)
    name, seed_bytes = ch.choice(small_seeds)
    mutated, done = F.mutate_proto(seed_bytes, ch)
    case = F.Case(name, mutated, done, threads=ch.integer(1, 2))
    out = worker.confirm(case, worker.run(case))
    assert not out.is_finding, describe(case, out)


def test_random_fuzz_smoke(worker):
    """Protobuf- and byte-level mutations of every fixture: a fixed seed and a fixed
    number of cases (a prefix of one sequence, whatever the machine's speed), with a
    time cap for slow machines."""
    seconds = float(os.environ.get("NORMRT_FUZZ_SECONDS", "120"))
    cases = int(os.environ.get("NORMRT_FUZZ_CASES", "40000"))
    seed = int(os.environ.get("NORMRT_FUZZ_SEED", "0"))
    seeds = F.seed_models()
    ch = F.RandomChooser(seed)
    counts, findings = {}, []
    end = time.monotonic() + seconds
    while time.monotonic() < end and sum(counts.values()) < cases:
        case = F.make_case(seeds, ch)
        out = worker.confirm(case, worker.run(case))
        counts[out.kind] = counts.get(out.kind, 0) + 1
        if out.is_finding:
            findings.append(describe(case, out))
            F.save_crasher(case, out)     # kept for the replay test once fixed
    assert sum(counts.values()) > 100, counts
    assert counts.get("ok", 0) > 0, counts          # some mutants load and run, not just fail
    assert not findings, "\n".join(findings)

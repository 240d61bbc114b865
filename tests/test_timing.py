"""normrt.timing: each runtime in its own blocks after a pause; best = min over blocks of the block median."""
import itertools

import numpy as np
import pytest
from hypothesis import given, settings, strategies as st

from normrt import timing


class FakeClock:
    """time.perf_counter / time.sleep stand-ins: a run of callable `name` lasts the next of its
    durations; a log records every call and sleep in order."""

    def __init__(self, monkeypatch, durations):
        self.now = 0.0
        self.log = []
        self.durations = {k: iter(v) for k, v in durations.items()}
        monkeypatch.setattr(timing.time, "perf_counter", lambda: self.now)
        monkeypatch.setattr(timing.time, "sleep", self.sleep)

    def sleep(self, s):
        self.log.append(("sleep", s))

    def fn(self, name):
        def run():
            self.log.append(name)
            self.now += next(self.durations[name])
        return run


def test_blocks_alternate_runtimes_after_a_pause(monkeypatch):
    clock = FakeClock(monkeypatch, {"a": itertools.repeat(1.0), "b": itertools.repeat(2.0)})
    out = timing.time_blocks({"a": clock.fn("a"), "b": clock.fn("b")}, repeat=3, blocks=2, pause=0.5, warmup=1)
    block = lambda name: [("sleep", 0.5)] + [name] * 3      # noqa: E731
    assert clock.log == ["a", "b"] + block("a") + block("b") + block("a") + block("b")
    assert out["a"].blocks == [[1.0] * 3] * 2 and out["b"].best == 2.0


@settings(max_examples=50, deadline=None)
@given(st.lists(st.lists(st.floats(1e-6, 10.0), min_size=1, max_size=7), min_size=1, max_size=5))
def test_best_is_min_over_blocks_of_block_median(blocks):
    t = timing.Timings([list(b) for b in blocks])
    assert t.best == min(float(np.median(b)) for b in blocks)
    flat = [x for b in blocks for x in b]
    assert t.min == min(flat) and t.median == float(np.median(flat)) and t.runs == flat


def test_a_spoiled_block_does_not_count(monkeypatch):
    # the second block ran under load: every run 10x slower; its first run is an outlier
    durations = [1.0, 1.1, 0.9, 10.0, 11.0, 12.0]
    clock = FakeClock(monkeypatch, {"a": iter([5.0] + durations)})
    out = timing.time_blocks({"a": clock.fn("a")}, repeat=3, blocks=2, pause=0.0)
    assert out["a"].best == 1.0 and ("sleep", 0.0) not in clock.log


def test_interleaved_runs_in_turn_with_settle(monkeypatch):
    clock = FakeClock(monkeypatch, {"a": itertools.repeat(1.0), "b": itertools.repeat(3.0)})
    out = timing.time_interleaved({"a": clock.fn("a"), "b": clock.fn("b")}, repeat=2, settle=0.1, warmup=0)
    assert clock.log == [("sleep", 0.1), "a", ("sleep", 0.1), "b"] * 2
    assert out["a"].blocks == [[1.0, 1.0]] and out["b"].best == 3.0


def test_on_run_is_called_after_every_timed_run(monkeypatch):
    clock = FakeClock(monkeypatch, {"a": itertools.repeat(1.0)})
    calls = []
    timing.time_blocks({"a": clock.fn("a")}, repeat=4, blocks=2, pause=0.0, warmup=2,
                       on_run=lambda: calls.append(len(clock.log)))
    assert calls == [3, 4, 5, 6, 7, 8, 9, 10]      # never for the 2 warm-up runs


@pytest.mark.parametrize("kw", [dict(repeat=0), dict(repeat=2, blocks=0)])
def test_bad_counts(kw):
    with pytest.raises(ValueError, match="repeat and blocks must be >= 1"):
        timing.time_blocks({"a": lambda: None}, **kw)
    with pytest.raises(ValueError, match="repeat must be >= 1"):
        timing.time_interleaved({"a": lambda: None}, repeat=0)

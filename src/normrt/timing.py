"""Latency of several runtimes on one machine, each timed in its own blocks of runs after a pause.

The one timing method of `normrt bench`, scripts/e2e_bench.py and the
bench/ scripts that compare normrt with onnxruntime or a copy floor.

Why blocks after a pause, not runs interleaved one by one: onnxruntime's pool
threads (and OpenMP's, for GOMP_SPINCOUNT) keep spinning on the cores for a
while after a run returns (~35 ms measured for onnxruntime 1.32), and whichever
runtime runs next on a 2-core machine pays for it. Timed run by run, each
runtime's figure then includes the other's spinning threads. So every runtime
runs `repeat` times in a row (a block) after `pause` seconds of sleep, the
runtimes take turns block by block, and a runtime's time is the minimum over
its blocks of each block's median: the median ignores a stray slow run within
a block, the minimum over blocks the blocks that a burst of load from other
processes spoiled.
"""
import time
from dataclasses import dataclass, field

import numpy as np

PAUSE_SECONDS = 0.2    # outlasts onnxruntime's spinning pool threads (~35 ms) with margin
BLOCKS_DEFAULT = 3


@dataclass
class Timings:
    """One runtime's timed runs (seconds), block by block."""

    blocks: list = field(default_factory=list)

    @property
    def runs(self):
        return [t for b in self.blocks for t in b]

    @property
    def best(self):
        """The minimum over blocks of the block's median: the method's figure."""
        return min(float(np.median(b)) for b in self.blocks)

    @property
    def min(self):
        return min(self.runs)

    @property
    def median(self):
        return float(np.median(self.runs))


def time_blocks(fns, repeat, blocks=BLOCKS_DEFAULT, pause=PAUSE_SECONDS, warmup=1, on_run=None):
    """{name: Timings} for the callables `fns` ({name: fn()}), each timed in its own blocks.

    Every callable is first called `warmup` times. Then `blocks` rounds: in each,
    every callable in turn sleeps `pause` seconds and runs `repeat` times, each
    run timed alone. `on_run()` (e.g. a progress bar) is called after every
    timed run, outside the timed interval.
    """
    if repeat < 1 or blocks < 1:
        raise ValueError(f"repeat and blocks must be >= 1, got repeat={repeat}, blocks={blocks}")
    for fn in fns.values():
        for _ in range(warmup):
            fn()
    out = {name: Timings() for name in fns}
    clock = time.perf_counter
    for _ in range(blocks):
        for name, fn in fns.items():
            if pause:
                time.sleep(pause)
            block = []
            for _ in range(repeat):
                t0 = clock()
                fn()
                block.append(clock() - t0)
                if on_run is not None:
                    on_run()
            out[name].blocks.append(block)
    return out


def time_interleaved(fns, repeat, settle=0.0, warmup=1):
    """{name: Timings} with the callables run in turn, run by run, one block each; with
    `settle` > 0, sleeping that long before each run (then every run starts with all
    threads asleep: a cold-start latency, not a served-in-a-loop one)."""
    if repeat < 1:
        raise ValueError(f"repeat must be >= 1, got {repeat}")
    for fn in fns.values():
        for _ in range(warmup):
            fn()
    runs = {name: [] for name in fns}
    clock = time.perf_counter
    for _ in range(repeat):
        for name, fn in fns.items():
            if settle:
                time.sleep(settle)
            t0 = clock()
            fn()
            runs[name].append(clock() - t0)
    return {name: Timings([r]) for name, r in runs.items()}

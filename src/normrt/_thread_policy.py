"""How many threads a kernel call gets, decided from its work: the one place.

normrt runs every parallel kernel - the norms, GEMM/conv, attention, pooling,
softmax, activations - on one thread runtime, OpenMP (one team, libgomp with
GCC). The user's setting (`normrt.set_num_threads`, `normrt.threads(n)`,
`InferenceSession(num_threads=)`, OMP_NUM_THREADS; see normrt._threads) is the
most any call uses; the functions below give a call fewer when its work is too
small to pay for waking a second thread. They never change a result: every
kernel is bitwise identical for any thread count (fixed chunking and merge
order), so these thresholds only move time.

Why one OpenMP team and not the GEMM's former private POSIX pool (or both).
Measured on this 2-core VM, 2 threads, min over back-to-back runs; the machine
was shared with five other builds and test runs all session (load average
1.4 at best, 8-13 for most of it), so only ratios within one sweep mean
anything. Sweep 1 (load ~1.4, min of 30 runs, ms):

====================  =========  ===========  ================  =============
model                 pool+OMP   pool+OMP,    OMP, spin 10000   OMP, passive
                      (before)   norms 2 thr
====================  =========  ===========  ================  =============
light_resnet50        45.1       44.8         45.2              49.6
diffusers VAE 64x64   6.9        11.9         18.1              5.8
====================  =========  ===========  ================  =============

("pool+OMP": the GEMM on the pool, the norms on OpenMP, which the executor
forced onto one thread in graphs below 2^23 elements to keep the two runtimes
from fighting; with the norms on 2 threads the VAE took 11.9 ms: two runtimes
contending for two cores. The ops' helper thread for big numpy ufuncs was
still on in this sweep.) scripts/e2e_bench.py --alone --runs 30, the code
before this change against this one (before the elementwise kernel), two
rounds of the four variants interleaved, load 8-13 (normrt min ms, round 1 /
round 2; the README's quiet-machine figures are 4-20x lower):

=========================  ===========  ===========  ===========  ===========
model                      before       spin 0       spin 1000    spin 10000
=========================  ===========  ===========  ===========  ===========
light_resnet50             384 / 456    97 / 100     106 / 102    318 / 148
light_densenet121          279 / 335    81 / 72      91 / 86      472 / 437
diffusers UNet2D 64x64     65 / 27      17 / 17      13 / 12      84 / 57
diffusers VAE 64x64        92 / 40      5.7 / 10     9.2 / 7.8    38 / 50
example groupnorm_cnn      17 / 26      5.7 / 5.8    7.6 / 6.0    3.1 / 28
example transformer_block  6.2 / 0.38   0.52 / 0.69  0.68 / 0.42  0.32 / 3.0
=========================  ===========  ===========  ===========  ===========

So: two runtimes contend; threads that spin long after a region (libgomp's
default, or GOMP_SPINCOUNT 10000) take the cores from the caller's next op
and from other processes, which costs most on a busy machine; threads that
sleep at once pay a futex wake-up per region (~10% on ResNet-50's ~100 GEMM
regions on the quiet machine). A short spin (1000 `pause`s, tens of
microseconds) keeps a model's back-to-back regions on awake threads and
still gives the cores back. Moving the norms' 34 parallel loops onto the pool
instead would have rewritten every kernel's scaffolding; the pool's one
advantage (its caller never waits at a barrier for a late worker) did not
show in these figures.

Those sweeps ran on a loaded machine. On a quiet one, what decides is the first
runs after an idle pause (a request handler between calls, a benchmark block):
with 1000 spins the team sleeps between the regions of one run, and on this VM
each wake-up of a sleeping vCPU is slow until the guest's idle polling adapts,
~10 runs later. `python -m bench.after_pause` (2 threads, 5 pauses of 200 ms,
load average 0.95; median ms of the first 10 runs after a pause / steady):

==========================  ============  ============  ============  =============
model                       spin 1000     spin 3000     spin 10000    spin 100000
==========================  ============  ============  ============  =============
example groupnorm_cnn       4.64 / 2.67   2.98 / 2.50   2.73 / 2.61   2.49 / 2.44
diffusers VAE 64x64         5.16 / 3.61                 3.20 / 3.11
example transformer_block   0.37 / 0.35                 0.35 / 0.33
==========================  ============  ============  ============  =============

So 10000 spins (a few hundred microseconds): a run's regions find the team
awake, and the cores still go back well within a millisecond of the last
region. On a machine shared with other busy processes, set GOMP_SPINCOUNT=1000
(or OMP_WAIT_POLICY=passive) yourself, per the loaded-machine table above.

The wait policy: WAIT_SPINCOUNT below, applied as GOMP_SPINCOUNT before
libgomp loads (configure_openmp, called by normrt/__init__) unless the user
set GOMP_SPINCOUNT or OMP_WAIT_POLICY themselves. libgomp reads it once, when
it loads: a process that loaded libgomp earlier (sklearn, a C extension) keeps
its own setting.

Fork (os.fork, multiprocessing's fork start method, gunicorn --preload,
Celery prefork): GNU libgomp keeps the forking thread's team in thread-local
state whose threads do not exist in the child; the child's first parallel
region from that thread would wait for them forever. A thread created after
the fork has no team yet and builds a new one. So in a forked child, calls
from the thread that forked run on one thread (`serial_after_fork`); threads
started in the child use the full team. This holds whether or not normrt
itself had started a team before the fork: any library on the same libgomp
(scikit-learn, another extension) may have. LLVM's libomp (clang builds)
resets itself in an at-fork handler and is not restricted.
"""
import os
import threading

from ._threads import get_num_threads

# libgomp spin iterations (each one `pause`) before a team thread sleeps
# (see the tables above: 10000 for the quiet machine's after-pause runs).
WAIT_SPINCOUNT = 10000

# When a second thread pays. Measured with `python -m bench.thread_wakeup`
# (this 2-core VM, 18:40 UTC, shared with six other engineers' builds, load
# average ~3; microseconds per near-empty region, p10 / median / mean):
#
#   idle gap before the region   1 thread             2 threads
#   0 us (back to back)          1.25 / 1.27 / 1.28   56 / 88 / 168
#   100 us                       1.31 / 1.35 / 2.03   61 / 88 / 377
#   1000 us                      1.71 / 2.61 / 9.52   25 / 45 / 1314
#
# and at load ~0.5 (an earlier run of the same loop): back to back 1.6 us on
# 2 threads (0.35 us over 1), but from a 50 us gap on - the spin is over,
# the second thread sleeps - 15 / 23 / 56 us. A small model calls its few
# large-enough kernels between tens of small numpy nodes, so nearly every
# 2-thread region there pays that wake-up (convnext: 4 such convs made the
# 2-thread run 0.90 ms against 0.52 ms on 1 thread). With 1-thread time T and
# wake-up W, two threads take ~T/2 + W: a split wins from T = 2W, and W's
# tail on a shared machine is several times its median. So a kernel splits
# only from SPLIT_MIN_US of 1-thread work (4x the quiet machine's median
# wake-up): below that the second thread cannot win back its wake-up.
SPLIT_MIN_US = 100

# 1-thread speeds (bench.thread_wakeup, same run): layer_norm on
# cache-resident rows of 768, 4,100 elements/us (memory-bound kernels out of
# DRAM are slower, so their real 1-thread time at the threshold is longer:
# the threshold errs towards staying on one thread, never towards a split
# that cannot pay); the packed GEMM, 64-256 on a side, 107,000 flops/us.
MEMORY_BOUND_ELEMENTS_PER_US = 4_100
COMPUTE_BOUND_FLOPS_PER_US = 107_000

# Memory-bound kernels (norms, activations, softmax, pooling, large
# elementwise ops) split from this many elements touched (~410K: 100 us of
# one thread). It was 2^15 (8 us), which made every mid-sized LayerNorm and
# Softmax of a small model wake the second thread for nothing.
MEMORY_BOUND_MIN_ELEMENTS = SPLIT_MIN_US * MEMORY_BOUND_ELEMENTS_PER_US

# Compute-bound kernels (GEMM/conv, attention) split from this many flops
# (2*M*N*K counted on the padded tiles the micro-kernel computes; ~10.7
# Mflop: 100 us of one thread). It was 4 Mflop (37 us).
#
# Re-examined for transformer layers (issue 14), whose products of 128 tokens
# at hidden 64-256 are 1-8.4 Mflop and so run on one thread: a single earlier
# run with 3 Mflop gave transformer_block 0.73x of onnxruntime instead of
# 1.57x. The cost that decides is a region's while the team is still awake (a
# model's products follow each other within the spin): `python -m
# bench.thread_wakeup` at load ~4.8 gave 1.34 us on 1 thread and p10 3.2 us on
# 2 after a 20 us gap, so on a free second core a split of T us of work pays
# from T ~ 5 us. But that needs the second core free. `python -m
# bench.thread_wakeup --gemm-split` (min over 300 calls per cell, the policy
# bypassed; this VM shared with other engineers' builds, load 14):
#
#   M x K x N        Mflop   1 thread   2 threads
#   128 x 64 x 64    1.05    15 us      516 us
#   128 x 128 x 128  4.19    45 us      546 us
#   64 x 256 x 256   8.39    82 us      588 us
#   128 x 256 x 256  16.8    159 us     679 us
#   128 x 256 x 1024 67.1    599 us     1163 us
#
# (at load 4.3: the same picture, 2 threads 300-500 us below 8.4 Mflop): a
# region whose second thread's core is taken waits a scheduler slice, ~0.5 ms,
# far more than any of these products. The end to end sweep agreed
# (transformer_block at load 9, min over 5 blocks of the median of 20 runs,
# normrt / onnxruntime: 1.20x at 10.7 Mflop, 1.47x at 1.5 Mflop). On the
# quiet machine (load 1.1, same sweep) 3 Mflop did win: transformer_block
# 0.85x against 0.99x at 10.7 Mflop. One quiet run, and bench.small_models not
# yet rerun at 3 Mflop.
#
# Both were rerun on the quiet machine (2026-12-05 19:02-19:06 UTC, load
# 0.1-0.8), two alternating rounds of each threshold in one session, outputs
# bitwise equal. `python -m bench.small_models --threads 2 --blocks 5`: every
# model's normrt time within 3% between the two (their products are below 3
# Mflop or far above 10.7; the ratio column moves only with onnxruntime's own
# noise). `scripts/e2e_bench.py --runs 20 --blocks 5`, normrt ms at 10.7 /
# 3 Mflop: transformer_block 0.33, 0.32 / 0.21, 0.27 (onnxruntime 0.22);
# bert128 and llama128 unchanged within noise (4.6-5.2 ms both ways). So
# products split from 3 Mflop (~28 us of one thread): they come back to back
# inside a layer, where the team is awake and a split costs the ~3 us of an
# awake region, not the wake-up SPLIT_MIN_US is sized for. On a loaded
# machine (the 10-30x rows above) set normrt.threads(1) or GOMP_SPINCOUNT.
COMPUTE_BOUND_MIN_FLOPS = 3_000_000


# Recurrent layers (LSTM / GRU / RNN) with one direction split each time step's hidden units
# over the threads: one parallel region per step, back to back, so the team is awake and a
# region costs a few microseconds; on one thread a step runs without a region. A bidirectional
# layer runs its two directions on two threads instead. Measured on the kernel alone
# (pyx/recurrent.pyx, this 2-core EPYC, min of 20 calls, two runs, ms for 1 / 2 threads; a
# step is 2 * gates * H * H flops per batch row):
#
#   LSTM H=64, 100 steps    0.158 / 0.223, 0.197 / 0.243     GRU H=128, 100 steps   0.346 / 0.323, 0.458 / 0.405
#   LSTM H=96, 100 steps    0.260 / 0.293, 0.398 / 0.431     GRU H=192, 100 steps   0.621 / 0.507, 0.876 / 0.606
#   LSTM H=128, 100 steps   0.446 / 0.396, 0.607 / 0.476     RNN H=256, 100 steps   0.322 / 0.318, 0.431 / 0.334
#   LSTM H=256, 64 steps    1.186 / 0.678, 1.394 / 0.699
#
# (H=256: each core's L2 holds its half of R, 1 MiB in all, where one core streamed it from L3.)
# So a step splits from 98,304 flops (GRU H=128; LSTM H=96 is 73,728 and loses).
# A step's flops count all its batch rows: the kernel computes them in one region per step
# (one pass over R for all rows). Before, it ran a region per batch row, so a batch split
# lost even above the threshold (LSTM H=64, 4 rows, 100 steps, 131,072 flops: 0.39 ms on one
# thread, 1.31 on two); now 0.36 / 0.37, the same balance as one row of the same flops.
RECURRENT_STEP_MIN_FLOPS = 98_304


def _gnu_openmp():
    from ._kernels.openmp_info import openmp_runtime
    return openmp_runtime() == "libgomp"


class _ForkState:
    """The thread that forked this process (in a child), else None."""

    forked_thread = None


def _after_fork_in_child():
    _ForkState.forked_thread = threading.get_ident()


if hasattr(os, "register_at_fork"):
    os.register_at_fork(after_in_child=_after_fork_in_child)


def serial_after_fork():
    """True when this call comes from the thread that forked this process and
    the OpenMP runtime is GNU libgomp (whose team does not survive a fork)."""
    return _ForkState.forked_thread == threading.get_ident() and _gnu_openmp()


def allowed_threads():
    """The most threads a call from this Python thread may use right now."""
    if serial_after_fork():
        return 1
    return get_num_threads()


def memory_bound(elements):
    """Threads for a memory-bound kernel touching `elements` elements."""
    return 1 if elements < MEMORY_BOUND_MIN_ELEMENTS else allowed_threads()


# Elementwise programs (normrt::Elementwise) cost what their ops cost, not what they touch: on
# one thread (pyx/elementwise.pyx run_program, 131,072 float32 elements in cache, min of 50
# calls, this 2-core EPYC) a one-op add streams 7,800 elements/us, fake_quant 5,600, erf 1,390,
# exp 1,200, powf 97. A static QDQ BERT's GELU, ten ops with six fake quantizations and an erf,
# took 255 us per layer on one thread under memory_bound (131,072 elements < 410K). So a
# program also splits from PROGRAM_SPLIT_MIN_US of its estimated one-thread time, elements
# times the sum of its ops' nanoseconds (elementwise_program.OP_NS, from those measurements).
# Such programs sit between a layer's products, where the team is awake (as for
# COMPUTE_BOUND_MIN_FLOPS below): the threshold is the products' ~28 us, not SPLIT_MIN_US's
# wake-up. A BERT bias + GELU program of 131,072 values (estimated 109 us): 123 us on one
# thread, 63 on two (run_program alone, min of 200 calls).
PROGRAM_SPLIT_MIN_US = 28
def elementwise_program(elements, ns_per_element):
    """Threads for an elementwise program over `elements` elements whose ops cost `ns_per_element`
    on one thread (elementwise_program.Program.ns_per_element): a memory-bound kernel's, or all
    from PROGRAM_SPLIT_MIN_US of estimated one-thread time (the comment above)."""
    if elements >= MEMORY_BOUND_MIN_ELEMENTS or elements * ns_per_element >= PROGRAM_SPLIT_MIN_US * 1000:
        return allowed_threads()
    return 1


# Softmax rows cost an exp per element as much as their bytes: 0.46 ns per float32 element on one
# thread (pyx/softmax.pyx softmax_rows, (512, 128) in cache, min of 7 x 200 calls: 30.4 us; 15.6
# on two). An unfused attention's Softmax (a static QDQ model's: 4 heads x 128 x 128) sits
# between its layer's products like the programs above, so it splits by the same threshold.
SOFTMAX_NS_PER_ELEMENT = 0.46


def softmax_rows(elements):
    """Threads for softmax over `elements` elements: elementwise_program's rule at its cost."""
    return elementwise_program(elements, SOFTMAX_NS_PER_ELEMENT)


# GatherElements reads one scattered element per output: 0.72 ns per output on one thread with
# the data in L2 (pyx/gather.pyx, DeBERTa's (4, 79, 79) of (4, 79, 512): 18.0 us; 11.8 on two),
# 1.22 ns once it spills ((12, 128, 128) of (12, 128, 512), 3 MB: 240 us; 115 on two). Like
# Softmax, it sits between an attention's products, so it splits by the programs' threshold.
GATHER_NS_PER_ELEMENT = 0.72


def gather(elements):
    """Threads for a gather writing `elements` outputs: elementwise_program's rule at its cost."""
    return elementwise_program(elements, GATHER_NS_PER_ELEMENT)


def compute_bound(flops):
    """Threads for a compute-bound kernel doing `flops` floating-point operations."""
    return 1 if flops < COMPUTE_BOUND_MIN_FLOPS else allowed_threads()


# A float32 product of few rows (an LLM decode step's projections: one row per token) streams its
# weight once and does 2 flops a weight: its time is the weight's bytes, not its flops, and it
# falls under COMPUTE_BOUND_MIN_FLOPS long before it is short. One row by a packed (K, N) weight,
# min of 5 passes (this 2-core EPYC Zen 4; "cold": 200 MB of distinct weights in turn, as a
# model's layers stream them from DRAM; "warm": one weight again and again), us, 1 / 2 threads:
#
#   K x N         cold          warm
#   256 x 256     16.4 / 16.3   6.0 / 5.8
#   512 x 512     63.0 / 42.4   17.8 / 10.6
#   1024 x 512    95.3 / 77.1   27.0 / 17.3
#   1024 x 1024   209 / 152     51.9 / 31.1
#   2048 x 1024   422 / 301     118 / 61
#
# So a product whose weight has 2^18 elements (1 MB) or more splits whatever its flops: the mid
# genai Llama's 1024 x 1024 output projections ran on one thread.
PRODUCT_SPLIT_WEIGHTS = 1 << 18


def product(rows, k, n):
    """Threads for a float32 product of (rows, k) by a (k, n) weight (pyx/gemm)."""
    if k * n >= PRODUCT_SPLIT_WEIGHTS:
        return allowed_threads()
    return compute_bound(2 * rows * k * n)


# The 4-bit product (pyx/nbits_gemm, MatMulNBits' codes) of a decode step's few rows (its direct
# path) is bound by unpacking the codes, not by its flops: one thread reads ~21,000 weights/us
# for one row, each further row adding ~40% (this 2-core EPYC Zen 4, AVX-512; min
# of 20 x 20 back-to-back calls, 1 / 2 threads): M=1 256x256 4.4 / 3.3 us, 512x512 13.0 / 7.8,
# 1024x512 24.7 / 13.6, 1024x1024 48.7 / 25.7, 2048x2048 192 / 98; M=4 1024x1024 107 / 54.
# Those 2 Mflop of a 1024x1024 product fall under COMPUTE_BOUND_MIN_FLOPS, which would keep a
# small model's attention output projection on one thread at half speed. A decode step's
# products follow each other within a layer (the team awake, as for PROGRAM_SPLIT_MIN_US), so
# they split from that threshold's 28 us of estimated one-thread time: K x N from 588K weights.
# More rows (a prompt) run the float micro-kernel: compute-bound, the flops rule.
NBITS_WEIGHTS_PER_US = 21_000
# The integer path (accuracy_level 4, vpdpbusd) reads ~3x faster (M=1, one thread: 1024x1024
# 17 us, 1024x2816 42 us, against 49 / 133 us for the float path; two threads 10 / 22 us): its
# split keeps the weight count threshold above, a 1024x1024 product still gaining 1.7x from two
# threads.
NBITS_INT8_WEIGHTS_PER_US = NBITS_WEIGHTS_PER_US


def nbits_product(rows, k, n, direct, integer=False):
    """Threads for the 4-bit product (pyx/nbits_gemm) of `rows` rows and a (k, n) weight;
    `direct`: the kernel reads the codes per row (its DIRECT_MAX_ROWS), else it is a float GEMM;
    `integer`: its integer path (int8 A, vpdpbusd)."""
    if direct:
        rate = NBITS_INT8_WEIGHTS_PER_US if integer else NBITS_WEIGHTS_PER_US
        return allowed_threads() if k * n >= PROGRAM_SPLIT_MIN_US * rate else 1
    return compute_bound(2 * rows * k * n)


def recurrent_step(flops):
    """Threads for a one-direction recurrent layer whose every step does `flops` (all batch rows)."""
    return 1 if flops < RECURRENT_STEP_MIN_FLOPS else allowed_threads()


def configure_openmp(environ=os.environ):
    """Set libgomp's wait policy (WAIT_SPINCOUNT) unless the user chose one.
    Must run before the first kernel module loads libgomp."""
    if "GOMP_SPINCOUNT" not in environ and "OMP_WAIT_POLICY" not in environ:
        environ["GOMP_SPINCOUNT"] = str(WAIT_SPINCOUNT)


# -- runs on a machine other processes share ---------------------------------------------------
# Every parallel region ends at a barrier that waits for each team thread. When other processes
# keep the cores busy, a team thread waits for a scheduler slice before it even starts, and the
# caller spins at the barrier on the core that thread could have used: a model of many short
# regions then runs several times slower on 2 threads than on 1. Measured on this 2-core EPYC
# while other sessions' builds and sweeps ran (300 runs each, ms, p10 / p50 / p90):
#
#   model (dynamic-axes export, 1 x 128 tokens)   1 thread            2 threads
#   BERT, 2 layers, hidden 128                    1.07 / 1.11 / 1.21  0.92 / 1.09 / 12.75
#   Llama, 2 layers, hidden 128                   1.48 / 2.20 / 2.48  10.85 / 11.40 / 12.94
#
# (onnxruntime 0.9 ms for both: its caller runs the work items no worker has picked up, so it
# never waits for a descheduled one.) No fixed threshold can know the other processes' load, so
# a session measures it: RunThreads keeps the time of its recent runs, now and then runs a few
# at the next smaller thread count, and keeps whichever count ran faster. Results do not move
# (every kernel is bitwise identical for any thread count); only the time does.
PROBE_RUNS = 4            # runs at the probed count; the first is not counted (a team that
                          # slept while fewer threads ran wakes in it), the others' median is
                          # compared with the recent runs'
RECENT_RUNS = 8           # the runs whose median stands for the current count
FIRST_PROBE_AFTER = 32    # runs before the first probe; doubled after each probe that changes nothing
MAX_PROBE_INTERVAL = 4096   # at the limit: a quiet machine's probes become rare
MAX_PROBE_INTERVAL_BELOW = 256   # below it: the load that made fewer threads faster may have left
SLOWER = 1.5              # the recent median this much over the one the last decision saw: probe now
FASTER = 0.9              # a probe's median at most this share of the recent one: switch


class RunThreads:
    """The thread count of a session's runs, chosen by measuring them (see the figures above).

    `limit` is the most threads a run may use (the session's num_threads, or the process
    setting). Candidates are limit, limit // 2, ..., 1. Call `threads()` for the next run's
    count and `record(seconds)` with its wall time. A probe runs PROBE_RUNS runs at the next
    smaller count (or, when that was tried last and lost, the next larger one) and switches when
    their median (the first run left out) beats the recent runs' by FASTER. Probes come after FIRST_PROBE_AFTER runs,
    then at doubling intervals while they change nothing (a quiet machine pays a few slower
    runs in thousands), and at once when the runs slow down by SLOWER (load arrived).
    """

    def __init__(self, limit):
        self.limit = max(1, int(limit))
        self.choice = self.limit
        self.recent = []
        self.settled = None         # the recent median when the last decision was made
        self.interval = FIRST_PROBE_AFTER
        self.until_probe = FIRST_PROBE_AFTER
        self.probe = None           # (count being probed, its times so far)
        self.last_lost = None       # the count the last probe tried and rejected

    def threads(self):
        return self.probe[0] if self.probe is not None else self.choice

    def _neighbour(self):
        down = max(1, self.choice // 2)
        up = min(self.limit, self.choice * 2)
        if down != self.choice and down != self.last_lost:
            return down
        if up != self.choice:
            return up
        return down if down != self.choice else None

    def record(self, seconds):
        if self.limit == 1:
            return
        if self.probe is not None:
            count, times = self.probe
            times.append(seconds)
            if len(times) < PROBE_RUNS:
                return
            self.probe = None
            mine, theirs = _median(times[1:]), _median(self.recent)
            if mine <= FASTER * theirs:
                self.choice, self.recent, self.last_lost = count, [], None
                self.interval = FIRST_PROBE_AFTER
            else:
                self.last_lost = count
                cap = MAX_PROBE_INTERVAL if self.choice == self.limit else MAX_PROBE_INTERVAL_BELOW
                self.interval = min(cap, self.interval * 2)
            self.settled = None
            self.until_probe = self.interval
            return
        self.recent = (self.recent + [seconds])[-RECENT_RUNS:]
        if len(self.recent) == RECENT_RUNS and self.settled is None:
            self.settled = _median(self.recent)
        self.until_probe -= 1
        slowed = self.settled is not None and _median(self.recent) > SLOWER * self.settled
        if len(self.recent) == RECENT_RUNS and (self.until_probe <= 0 or slowed):
            count = self._neighbour()
            if count is not None:
                self.probe = (count, [])
            else:
                self.until_probe = self.interval


def _median(values):
    s = sorted(values)
    n = len(s)
    return s[n // 2] if n % 2 else 0.5 * (s[n // 2 - 1] + s[n // 2])

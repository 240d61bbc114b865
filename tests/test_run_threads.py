"""RunThreads (normrt._thread_policy): a session's thread count chosen from its measured runs.
The tuner is fed run times from a model of the machine (not timed here): a quiet machine where
more threads are faster, a shared one where fewer are, and load that comes and goes. Then the
session: the chosen count only moves time, never a result."""
import pickle

import numpy as np
import pytest
from hypothesis import given, settings, strategies as st

import normrt
from normrt import _thread_policy as tp


def drive(tuner, cost, runs, rng=None):
    """Feed `runs` runs timed by cost(threads, run index) (+ 5% noise); return the counts used."""
    rng = rng or np.random.default_rng(0)
    used = []
    for i in range(runs):
        n = tuner.threads()
        used.append(n)
        tuner.record(cost(n, i) * (1 + 0.05 * rng.random()))
    return used


def quiet(n, i):
    return 1.0 / n ** 0.8            # more threads, faster


def shared(n, i, free=1):
    """`free` cores left by another process: a team larger than that waits for its core."""
    return 1.0 / n ** 0.8 if n <= free else 6.0


@pytest.mark.parametrize("limit", [2, 4, 8])
def test_a_quiet_machine_keeps_the_limit_and_probes_ever_more_rarely(limit):
    tuner = tp.RunThreads(limit)
    used = drive(tuner, quiet, 20000)
    assert tuner.choice == limit
    probes = sum(1 for n in used if n != limit)
    # the first probes come early, then at doubling intervals: a handful of slower runs in 20000
    assert probes <= tp.PROBE_RUNS * 12, probes
    assert used[:tp.FIRST_PROBE_AFTER] == [limit] * tp.FIRST_PROBE_AFTER


@pytest.mark.parametrize("limit,best", [(2, 1), (4, 2), (8, 4)])
def test_a_shared_machine_moves_to_the_count_its_free_cores_run(limit, best):
    """One core taken by another process: the largest candidate (limit, limit / 2, ..., 1) that
    fits in the rest."""
    tuner = tp.RunThreads(limit)
    used = drive(tuner, lambda n, i: shared(n, i, free=limit - 1), 600)
    assert tuner.choice == best
    assert used[-100:].count(best) >= 90


def test_load_that_arrives_and_leaves_is_followed():
    """Quiet, then a busy neighbour for a while, then quiet again: the count follows, the
    slowdown itself triggering the probe (no waiting for the long interval)."""
    tuner = tp.RunThreads(2)

    def cost(n, i):
        return shared(n, i) if 3000 <= i < 3500 else quiet(n, i)
    used = drive(tuner, cost, 7000)
    assert used[2990] == 2
    assert used[3100:3500].count(1) >= 350          # switched within ~100 runs of the load
    assert used[-100:].count(2) >= 90               # and back once it left


def test_a_long_load_still_lets_the_count_come_back_soon():
    """Under load for 20000 runs, fewer threads; the probes up back off only to
    MAX_PROBE_INTERVAL_BELOW, so the count is back within that many runs of the load leaving."""
    tuner = tp.RunThreads(2)

    def cost(n, i):
        return shared(n, i) if i < 20000 else quiet(n, i)
    used = drive(tuner, cost, 20000 + 2 * tp.MAX_PROBE_INTERVAL_BELOW + 200)
    assert used[19000:20000].count(1) >= 950
    assert used[-100:].count(2) >= 90


def test_a_waking_team_does_not_decide_a_probe():
    """The first run at more threads after runs at fewer pays the team's wake-up: a quiet machine
    where two threads run faster once awake stays at (or comes back to) two."""
    tuner = tp.RunThreads(2)
    last = [2]

    def cost(n, i):
        wake = 1.5 if n == 2 and last[0] == 1 else 0.0
        last[0] = n
        return quiet(n, i) + wake
    used = drive(tuner, cost, 3000)
    assert tuner.choice == 2
    assert used[-500:].count(2) >= 490


def test_one_thread_never_probes():
    tuner = tp.RunThreads(1)
    assert set(drive(tuner, shared, 500)) == {1}


@settings(max_examples=30, deadline=None)
@given(st.integers(2, 16), st.lists(st.floats(1e-6, 10.0), min_size=1, max_size=300))
def test_any_times_give_a_count_between_one_and_the_limit(limit, times):
    tuner = tp.RunThreads(limit)
    for t in times:
        assert 1 <= tuner.threads() <= limit
        tuner.record(t)


def test_session_results_do_not_depend_on_the_chosen_count(tmp_path):
    from importlib import resources
    path = resources.files("normrt") / "examples" / "groupnorm_cnn.onnx"
    sess = normrt.InferenceSession(str(path), num_threads=2)
    x = np.random.default_rng(0).standard_normal([d if isinstance(d, int) else 1 for d in
                                                  sess.get_inputs()[0].shape]).astype(np.float32)
    feed = {sess.get_inputs()[0].name: x}
    first = sess.run(None, feed)
    # force the other count through the tuner's own state, as a probe would
    for choice in (1, 2, 1):
        sess._run_threads.choice = choice
        for got, want in zip(sess.run(None, feed), first):
            assert got.tobytes() == want.tobytes()
    fixed = normrt.InferenceSession(str(path), num_threads=2, adaptive_threads=False)
    assert fixed.run(None, feed)[0].tobytes() == first[0].tobytes() and fixed._run_threads is None
    again = pickle.loads(pickle.dumps(fixed))
    assert again._adaptive_threads is False
    with pytest.raises(TypeError, match="adaptive_threads"):
        normrt.InferenceSession(str(path), adaptive_threads="yes")

"""Fork safety: a process that ran kernels on 2 threads forks; the child's
kernels work and give the parent's results, and the parent keeps working.

Each scenario runs in its own Python process with a timeout, and every forked
child arms an alarm, so a hang (GNU libgomp's team does not survive a fork)
fails the test instead of blocking the suite.
"""
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from reliability_models import normrt_import_root

pytestmark = pytest.mark.skipif(not hasattr(os, "fork"), reason="needs os.fork")

ROOT = Path(__file__).resolve().parents[1]
EXAMPLE = ROOT / "src" / "normrt" / "examples" / "groupnorm_cnn.onnx"

# shared by every scenario: the work a server would do before and after a fork
PRELUDE = textwrap.dedent('''
    import os, signal, sys
    import numpy as np
    import normrt

    rng = np.random.default_rng(0)
    X = rng.standard_normal((8, 256, 32, 32)).astype(np.float32)   # the issue's GroupNorm
    S = rng.standard_normal(256).astype(np.float32)
    B = rng.standard_normal(256).astype(np.float32)
    W = rng.standard_normal((32, 256, 3, 3)).astype(np.float32)
    A = rng.standard_normal((96, 200)).astype(np.float32)
    M = rng.standard_normal((200, 300)).astype(np.float32)

    def work():
        """One call per parallel kernel family, on 2 threads."""
        with normrt.threads(2):
            return [normrt.group_norm(X, 32, S, B, activation="silu"),
                    normrt.layer_norm(X.reshape(2048, 1024)),
                    normrt.conv2d(X[:2], W, pads=(1, 1, 1, 1)),
                    normrt.matmul(A, M),
                    normrt.softmax(X.reshape(-1, 1024), axis=-1)]

    def same(a, b):
        return len(a) == len(b) and all(np.array_equal(x, y) for x, y in zip(a, b))

    def child_alarm():
        # a hung child dies by itself instead of outliving the test
        signal.alarm(60)
''')


def run_scenario(tmp_path, body, timeout=180):
    script = tmp_path / "scenario.py"
    script.write_text(PRELUDE + textwrap.dedent(body))
    env = dict(os.environ, PYTHONPATH=normrt_import_root() + os.pathsep + os.environ.get("PYTHONPATH", ""))
    try:
        r = subprocess.run([sys.executable, str(script)], capture_output=True, text=True,
                           timeout=timeout, env=env, cwd=str(tmp_path))
    except subprocess.TimeoutExpired as e:
        pytest.fail(f"scenario hung (no result in {timeout} s): {e.stdout!r} {e.stderr!r}")
    assert r.returncode == 0, r.stdout + r.stderr
    assert r.stdout.strip().endswith("OK"), r.stdout + r.stderr


def test_os_fork_child_computes_the_parents_results_and_parent_keeps_working(tmp_path):
    run_scenario(tmp_path, '''
        want = work()
        pid = os.fork()
        if pid == 0:
            child_alarm()
            ok = same(work(), want)
            # a thread started in the child gets a fresh thread team
            import threading
            got = []
            t = threading.Thread(target=lambda: got.append(work()))
            t.start()
            t.join()
            ok = ok and same(got[0], want)
            os._exit(0 if ok else 1)
        _, status = os.waitpid(pid, 0)
        assert os.WIFEXITED(status), status
        assert os.WEXITSTATUS(status) == 0, "child computed different results"
        assert same(work(), want), "parent changed after the fork"
        print("OK")
    ''')


def test_fork_of_a_fork(tmp_path):
    run_scenario(tmp_path, '''
        want = work()
        pid = os.fork()
        if pid == 0:
            child_alarm()
            ok = same(work(), want)
            pid2 = os.fork()
            if pid2 == 0:
                child_alarm()
                os._exit(0 if same(work(), want) else 1)
            _, st = os.waitpid(pid2, 0)
            os._exit(0 if ok and os.WIFEXITED(st) and os.WEXITSTATUS(st) == 0 else 1)
        _, status = os.waitpid(pid, 0)
        assert os.WIFEXITED(status) and os.WEXITSTATUS(status) == 0, status
        print("OK")
    ''')


@pytest.mark.parametrize("method", ["fork", "forkserver"])
def test_multiprocessing_pool(tmp_path, method):
    if method not in __import__("multiprocessing").get_all_start_methods():
        pytest.skip(f"no {method} start method here")
    run_scenario(tmp_path, f'''
        import multiprocessing as mp

        def task(i):
            child_alarm()
            return work()

        if __name__ == "__main__":
            want = work()
            with mp.get_context("{method}").Pool(2) as pool:
                results = pool.map(task, range(4))
            assert all(same(r, want) for r in results), "a worker computed different results"
            assert same(work(), want)
            print("OK")
    ''')


def test_session_created_before_fork_runs_in_children(tmp_path):
    run_scenario(tmp_path, f'''
        import multiprocessing as mp

        sess = normrt.InferenceSession({str(EXAMPLE)!r}, num_threads=2)
        feed = {{"x": np.random.default_rng(1).standard_normal((1, 3, 64, 64)).astype(np.float32)}}

        def task(i):
            child_alarm()
            return sess.run(None, feed)

        if __name__ == "__main__":
            want = sess.run(None, feed)
            with mp.get_context("fork").Pool(2) as pool:
                results = pool.map(task, range(4))
            assert all(same(r, want) for r in results), "a worker's session computed different results"
            assert same(sess.run(None, feed), want)
            print("OK")
    ''')

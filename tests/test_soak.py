"""A short soak (scripts/soak.py runs it for minutes): 4 Python threads sharing sessions of mixed models,
every output bitwise equal to the serial result computed before the threads started."""
import sys
import threading
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "scripts"))

import soak  # noqa: E402


def test_threads_sharing_sessions_get_their_serial_results():
    s = soak.Soak(sessions_per_model=1, seed=0)
    threads = [threading.Thread(target=s.worker, args=(i,)) for i in range(4)]
    for t in threads:
        t.start()
    time.sleep(8)
    s.stop.set()
    for t in threads:
        t.join()
    assert not s.errors, s.errors[:3]
    assert not s.mismatches, s.mismatches[:10]
    assert s.runs > 100 and len(s.runs_by_model) == len({w[0] for w in s.work})

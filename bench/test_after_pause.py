"""bench.after_pause runs each spin count in its own process and prints one row per count."""
import re

from bench import after_pause


def test_one_row_per_spin_count(capsys):
    assert after_pause.main(["--spins", "1000,10000", "--pauses", "1", "--pause-ms", "20", "--runs", "12"]) == 0
    out = capsys.readouterr().out
    rows = re.findall(r"^\| (\d+) \| ([\d.]+) \| ([\d.]+) \| ([\d.]+)x \|$", out, re.M)
    assert [r[0] for r in rows] == ["1000", "10000"]
    for _, first, steady, ratio in rows:
        # (the ratio is of the unrounded medians, printed to 0.01)
        assert abs(float(ratio) - float(first) / float(steady)) < 0.02

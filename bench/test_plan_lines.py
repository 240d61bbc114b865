"""bench.plan_lines: the timed plan is the plan a run executes (same outputs, every node's line timed)."""
import re
from pathlib import Path

import numpy as np

from bench import plan_lines

EXAMPLES = Path(__file__).resolve().parents[1] / "src" / "normrt" / "examples"


def test_timed_plan_computes_the_run_and_times_every_step():
    import normrt
    model = str(EXAMPLES / "transformer_block.onnx")
    sess = normrt.InferenceSession(model, num_threads=1)
    x = {i.name: np.random.default_rng(0).standard_normal([d if isinstance(d, int) and d > 0 else 2
                                                           for d in i.shape]).astype(np.float32)
         for i in sess.get_inputs()}
    rows, outputs = plan_lines.plan_line_times(sess, x, threads=1, runs=3)
    want = sess.run(None, x)
    assert len(outputs) == len(want)
    for got, w in zip(outputs, want):
        assert np.array_equal(got, w)
    assert all(t >= 0 for t, _, _ in rows)
    # every node the plan runs has its line (shape-only values are folded out of the plan)
    timed = {step for _, _, step in rows if step is not None}
    plan = list(sess.executor.specialized.values())[-1]
    assert timed == set(plan.line_steps.values())


def test_cli_prints_the_top_lines(capsys):
    plan_lines.main([str(EXAMPLES / "groupnorm_cnn.onnx"), "--runs", "2", "--top", "3"])
    out = capsys.readouterr().out
    assert re.search(r"sum of the lines' minimums [\d.]+ us over \d+ lines", out)
    assert len(re.findall(r"^\| [\d.]+ \| ", out, re.M)) == 3

"""tools/gpu/experts_ncu.py: an ncu log maps onto the single-launch expert rows in launch order; a log that does not
fit the rows is refused."""

import importlib.util
from pathlib import Path

spec = importlib.util.spec_from_file_location("experts_ncu", Path(__file__).with_name("gpu") / "experts_ncu.py")
en = importlib.util.module_from_spec(spec)
spec.loader.exec_module(en)


def _log(path, times_us):
    lines = ['==PROF== Connected to process 1\n', '"ID","Kernel Name","Metric Name","Metric Unit","Metric Value"\n']
    lines += [f'"{i}","zmlx_moe_x_{i}","gpu__time_duration.sum","usecond","{t}"\n' for i, t in enumerate(times_us)]
    lines.append('"99","gemv_other","gpu__time_duration.sum","usecond","1000"\n')  # not ours: left out
    path.write_text("".join(lines))


def test_rows_are_the_single_launch_expert_cases():
    labels = [label for label, _, _ in en.rows()]
    assert labels and all(("gate+up (" in x or "down+combine (" in x or "dense" in x) for x in labels)
    assert any("mixtral" in x and "down+combine (qmv core, batch)" in x for x in labels)


def test_summary_takes_each_rows_median_after_its_first_launch(tmp_path, capsys):
    n = len(en.rows())
    # row i: a slow first launch, then i+10 us (the median of the rest)
    _log(tmp_path / "e.csv", [t for i in range(n) for t in (500.0, i + 10.0, i + 10.0)])
    assert en.summarize(str(tmp_path / "e.csv"), 3) == 0
    out = capsys.readouterr().out.splitlines()
    assert len(out) == n + 2 and "| 10.0 |" in out[2] and f"| {n + 9}.0 |" in out[-1]


def test_a_log_of_another_run_is_refused(tmp_path, capsys):
    _log(tmp_path / "e.csv", [10.0] * 7)
    assert en.summarize(str(tmp_path / "e.csv"), 3) == 1
    assert "expected 3 x" in capsys.readouterr().err

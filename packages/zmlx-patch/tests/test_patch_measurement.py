"""zmlx.patch.measurement: the recorded switch defaults are the pattern modules' own, and changes are reported."""

import subprocess
import sys

from zmlx.patch import measurement


def test_defaults_are_what_a_fresh_process_runs():
    # a fresh interpreter: other tests may have flipped a switch in this one
    code = "from zmlx.patch.measurement import measurement_flags as f; print(sorted(f().items()))"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.strip() == str(sorted(measurement.DEFAULTS.items()))
    assert set(measurement.DEFAULTS) == {f"{m}.{f}" for m, f in measurement.FLAGS}


def test_changed_keeps_what_differs_and_unknown_names(monkeypatch):
    from zmlx.patch.patterns import _experts

    monkeypatch.setattr(_experts, "Q4_BATCH", False)
    flags = measurement.measurement_flags()
    assert measurement.changed(flags) == {"_experts.Q4_BATCH": False}
    assert measurement.changed({"_experts.QMV_CORE": False, "gone.FLAG": True}) == {
        "_experts.QMV_CORE": False, "gone.FLAG": True}

"""run_fidelity's two ways of alternating sides: zmlx's patch held once (baseline runs inside suspended, traces
reused), or, with injected patch functions, patched and unpatched around every patched run."""

from __future__ import annotations

import pytest
from zmlx.patch import patch, suspended, unpatch
from zmlx.patch._swap import original_class
from zmlx.validate import load_model
from zmlx.validate.fidelity import run_fidelity

PROMPT = [1, 5, 9, 14, 3, 27, 8]


@pytest.fixture(scope="module")
def model(tmp_path_factory):
    model, _, _ = load_model("synthetic:qwen3-moe-tiny", cache_dir=str(tmp_path_factory.mktemp("synth")))
    return model


def _counting(fn, calls: list):
    def wrapped(model, **kw):
        calls.append(fn.__name__)
        return fn(model, **kw)
    return wrapped


def _patched_modules(model) -> int:
    return sum(original_class(m) is not None for _, m in model.named_modules())


@pytest.mark.parametrize(("suspend", "patches"), [(suspended, 1), (None, 1 + 3)], ids=["held", "re-patched"])
def test_sides_alternate_and_the_model_ends_unpatched(model, suspend, patches):
    calls: list[str] = []
    res = run_fidelity(model, prompt_ids=PROMPT, max_tokens=12, runs=3, warmup=1,
                       patch_fn=_counting(patch, calls), unpatch_fn=unpatch, suspend_fn=suspend)
    assert res.fidelity.verdict == "PASS"
    assert calls.count("patch") == patches, "held: one patch for warm-up and every run; else one per patched run"
    assert _patched_modules(model) == 0, "the model is left unpatched"
    assert len(res.baseline.decode_tps) == len(res.patched.decode_tps) == 3


def test_default_functions_hold_the_patch(model, monkeypatch):
    import zmlx.patch as zp

    calls: list[str] = []
    real = zp.suspended

    def spy(m):
        calls.append("suspended")
        return real(m)

    monkeypatch.setattr(zp, "suspended", spy)
    res = run_fidelity(model, prompt_ids=PROMPT, max_tokens=8, runs=2, warmup=1)
    assert res.fidelity.verdict == "PASS"
    assert calls == ["suspended"] * 2, "every measured baseline run after the warm-up's patch runs suspended"
    assert _patched_modules(model) == 0

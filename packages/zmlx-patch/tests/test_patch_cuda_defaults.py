"""Perf exclusions measured on CUDA apply only there, name their capsule, and explicit patterns= overrides them."""

from pathlib import Path

import zmlx.patch.core as core
import zmlx_patch_tiny as tiny
from zmlx.patch import patch
from zmlx.patch.registry import FAMILIES

ROOT = Path(__file__).resolve().parents[3]


def test_gpt_oss_moe_mlp_off_by_default_on_cuda_only(monkeypatch):
    model = tiny.build("gpt_oss", quantized=True)
    assert patch(model, verbose=False).counts == {"moe_mlp": 2}  # this machine: CPU, no exclusion
    from zmlx.patch import unpatch

    unpatch(model)
    monkeypatch.setattr(core, "gpu_backend", lambda: "cuda")
    result = patch(model, verbose=False)
    assert result.counts == {} and "moe_mlp" in result.not_applied
    assert "capsules/" in result.not_applied["moe_mlp"]
    unpatch(model)
    assert patch(model, patterns=["moe_mlp"], verbose=False).counts == {"moe_mlp": 2}


def test_every_cuda_exclusion_names_a_committed_capsule():
    for fam in FAMILIES.values():
        for pattern, reason in fam.slow_on_cuda.items():
            name = next(w for w in reason.replace(";", " ").split() if w.startswith("capsules/"))
            assert (ROOT / name).is_file(), f"{fam.model_type}/{pattern}: {name} is not committed"

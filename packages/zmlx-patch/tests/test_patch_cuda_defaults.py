"""Per-family CUDA defaults measured on the H100 apply only there, name their capsules, and explicit arguments
override them: moe_mlp off for gpt_oss and mixtral unless their projections are fused, fuse_projections on
for the families in registry.FUSE_ON_CUDA, the opt-ins of registry.ON_CUDA on."""

from pathlib import Path

import pytest
import zmlx.patch.core as core
import zmlx_patch_tiny as tiny
from zmlx.patch import patch, unpatch
from zmlx.patch.registry import FAMILIES, FUSE_ON_CUDA, ON_CUDA

ROOT = Path(__file__).resolve().parents[3]


def _on_cuda(monkeypatch):
    monkeypatch.setattr(core, "gpu_backend", lambda: "cuda")


def test_gpt_oss_moe_mlp_needs_fused_projections_on_cuda(monkeypatch):
    model = tiny.build("gpt_oss", quantized=True)
    result = patch(model, verbose=False)  # this machine: CPU, nothing per-backend applies
    assert result.counts == {"moe_mlp": 2} and result.fuse_projections is False
    unpatch(model)
    _on_cuda(monkeypatch)
    result = patch(model, verbose=False)  # with gpt_oss's ON_CUDA opt-ins: every attention layer traced
    assert result.counts == {"moe_mlp": 2, "attention_layer": 2, "quantized_linear": 9}
    assert result.fuse_projections is True
    unpatch(model)
    result = patch(model, verbose=False, fuse_projections=False)
    assert "moe_mlp" not in result.counts and "capsules/" in result.not_applied["moe_mlp"]
    unpatch(model)
    assert patch(model, patterns=["moe_mlp"], fuse_projections=False, verbose=False).counts == {"moe_mlp": 2}


def test_gpt_oss_blocks_whose_experts_cannot_be_fused_keep_their_own_code_on_cuda(monkeypatch, capsys):
    """MXFP4 experts (what real gpt-oss checkpoints ship) cannot take the fused kernels, and unfused moe_mlp is the
    slower path on CUDA: those blocks are skipped with the reason, unless patterns= asks for moe_mlp."""
    model = tiny.build("gpt_oss", quantized=True, mode="mxfp4")
    _on_cuda(monkeypatch)
    result = patch(model)
    assert result.fuse_projections is True and "moe_mlp" not in result.counts
    moe = [why for _, why in result.skipped if why.startswith("moe_mlp")]
    assert len(moe) == 2 and all("not fusable" in why and "capsules/" in why for why in moe)
    out = capsys.readouterr().out  # one line a reason, and no claim of fused projections where none were
    assert "skipped 2 modules: moe_mlp: projections not fusable here" in out and "projections fused" not in out
    unpatch(model)
    assert patch(model, patterns=["moe_mlp"], verbose=False).counts == {"moe_mlp": 2}


@pytest.mark.parametrize("family,fused", [("qwen3_moe", True), ("lfm2_moe", True), ("mixtral", True),
                                          ("llama", False)])
def test_fuse_projections_default_per_family_on_cuda(family, fused, monkeypatch, capsys):
    model = tiny.build(family, quantized=True)
    assert patch(model, verbose=False).fuse_projections is False  # CPU: off for every family
    unpatch(model)
    _on_cuda(monkeypatch)
    assert patch(model).fuse_projections is fused
    assert ("quantized projections fused" in capsys.readouterr().out) is fused
    unpatch(model)
    assert patch(model, verbose=False, fuse_projections=not fused).fuse_projections is (not fused)
    unpatch(model)


def test_mixtral_on_cuda_fuses_its_experts_and_leaves_unfused_moe_mlp_out(monkeypatch, capsys):
    model = tiny.build("mixtral", quantized=True)
    assert patch(model, verbose=False).counts == {"moe_mlp": 2}  # CPU: nothing per-backend applies
    unpatch(model)
    _on_cuda(monkeypatch)
    result = patch(model, verbose=False)  # the x1.321 capsule's configuration
    assert result.fuse_projections is True
    assert set(result.counts) == {"moe_mlp", "attention_layer", "quantized_linear"} and result.counts["moe_mlp"] == 2
    unpatch(model)
    result = patch(model, fuse_projections=False)  # unfused it measured x0.750: left out, with the reason
    assert "moe_mlp" not in result.counts and "x0.750" in result.not_applied["moe_mlp"]
    assert "left out on CUDA, measured slower here: moe_mlp" in capsys.readouterr().out
    unpatch(model)
    assert patch(model, patterns=["moe_mlp"], fuse_projections=False, verbose=False).counts == {"moe_mlp": 2}


def _capsules(reason: str) -> list[str]:
    return [w.rstrip(",:") for w in reason.replace(";", " ").split() if w.startswith("capsules/")]


def test_every_cuda_default_names_a_committed_capsule():
    reasons = [(f"{fam.model_type}/{p}", r) for fam in FAMILIES.values() for p, r in fam.slow_on_cuda.items()]
    reasons += [(f"{m}/fuse_projections", r) for m, r in FUSE_ON_CUDA.items()]
    reasons += [(f"{m}/{p}", r) for m, on in ON_CUDA.items() for p, r in on.items()]
    assert reasons
    for what, reason in reasons:
        names = _capsules(reason)
        assert names, f"{what}: names no capsule"
        for name in names:
            assert (ROOT / name).is_file(), f"{what}: {name} is not committed"


@pytest.mark.parametrize("family", sorted(ON_CUDA))
def test_opt_ins_measured_faster_are_defaults_on_cuda_only(family, monkeypatch):
    model = tiny.build(family, quantized=True)
    on_cpu = patch(model, verbose=False)
    assert not set(ON_CUDA[family]) & set(on_cpu.counts) and set(ON_CUDA[family]) <= set(on_cpu.not_applied)
    unpatch(model)
    _on_cuda(monkeypatch)
    result = patch(model, verbose=False)
    assert set(ON_CUDA[family]) <= set(result.counts) and not set(ON_CUDA[family]) & set(result.not_applied)
    unpatch(model)
    # exclude= still takes them out
    assert "quantized_linear" not in patch(model, verbose=False, exclude=["quantized_linear"]).counts
    unpatch(model)


def test_opt_ins_stay_opt_in_on_cuda_where_unmeasured(monkeypatch):
    _on_cuda(monkeypatch)
    model = tiny.build("olmoe", quantized=True)
    result = patch(model, verbose=False)
    assert "quantized_linear" not in result.counts and "quantized_linear" in result.not_applied
    unpatch(model)

"""Every registered family on a tiny real mlx-lm model: counts, exact logits, unpatch, idempotence."""

from __future__ import annotations

import mlx.core as mx
import mlx.nn as nn
import pytest
import zmlx_patch_tiny as tiny
from zmlx.patch import patch, unpatch
from zmlx.patch.registry import FAMILIES, detect_model_type

# M=1 and M=7 take the fused path (<= 32 tokens); M=40 is past the guard and runs mlx-lm's own code.
LENGTHS = (1, 7, 40)


def _classes(model: nn.Module) -> dict[str, type]:
    return {path: type(m) for path, m in model.named_modules()}


def _outputs(model: nn.Module) -> list[mx.array]:
    return [tiny.logits(model, tiny.tokens(n, seed=n)) for n in LENGTHS]


def test_every_registered_family_has_a_tiny_model():
    # qwen3_5 (dense) runs the same qwen3_next classes as qwen3_5_moe, which is covered
    assert set(FAMILIES) - {"qwen3_5"} <= set(tiny.FAMILIES)
    assert detect_model_type(tiny.build("mistral")) == "llama"


@pytest.mark.parametrize("quantized", [False, True], ids=["f32", "q4bf16"])
@pytest.mark.parametrize("family", tiny.FAMILIES)
def test_family_patch_is_exact_and_reversible(family, quantized):
    model = tiny.build(family, quantized=quantized)
    before_classes = _classes(model)
    before_params = dict(model.parameters())
    ref = _outputs(model)

    result = patch(model, verbose=False)
    assert result.model_type == ("llama" if family == "mistral" else family)
    assert result.counts == tiny.CONFIGS[family][1], result.skipped
    assert not result.skipped
    patched = [m for _, m in model.named_modules() if type(m).__dict__.get("_zmlx_original")]
    assert len(patched) == result.total
    for m in patched:  # subclass of the original: isinstance, parameters, attributes unchanged
        assert isinstance(m, type(m).__dict__["_zmlx_original"])
    assert dict(model.parameters()).keys() == before_params.keys()

    for n, want, got in zip(LENGTHS, ref, _outputs(model), strict=True):
        assert got.dtype == want.dtype
        assert mx.array_equal(got, want).item(), f"{family}: patched logits differ at M={n}"

    again = patch(model, verbose=False)  # idempotent: nothing new, classes unchanged
    assert again.total == 0
    assert f"{result.total} modules were already patched" in again.message

    assert unpatch(model) == result.total
    assert _classes(model) == before_classes
    for want, got in zip(ref, _outputs(model), strict=True):
        assert mx.array_equal(got, want).item()
    assert unpatch(model) == 0


@pytest.mark.parametrize("family", tiny.FAMILIES)
def test_family_with_every_opt_in_is_exact(family):
    """fuse_projections and every opt-in fusion together on every quantized family: the same logits at every
    length (on the CPU each fused op is its reference, so any wiring slip shows), and unpatch restores."""
    model = tiny.build(family, quantized=True)
    before_classes = _classes(model)
    ref = _outputs(model)
    result = patch(model, verbose=False, fuse_projections=True, fuse_router=True, fuse_qkv=True,
                   fuse_conv_proj=True)
    assert result.counts == tiny.CONFIGS[family][1], result.skipped
    for n, want, got in zip(LENGTHS, ref, _outputs(model), strict=True):
        assert mx.array_equal(got, want).item(), f"{family}: logits differ at M={n} with every opt-in"
    assert unpatch(model) == result.total and _classes(model) == before_classes

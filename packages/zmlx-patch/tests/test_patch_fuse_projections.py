"""patch(fuse_projections=True): quantized projections fused at one token; off by default off CUDA; exact on the CPU."""

import mlx.core as mx
import pytest
import zmlx_patch_tiny as tiny
from zmlx.patch import patch, unpatch

FAMILIES = ["qwen3_moe", "gpt_oss", "mixtral", "lfm2_moe", "llama", "gemma2"]


def _spy(monkeypatch):
    return tiny.count_kernel_calls(monkeypatch, ("moe_gate_up", "dense_gate_up"))


@pytest.mark.parametrize("family", FAMILIES)
def test_fused_projections_exact_and_only_when_asked(family, monkeypatch):
    model = tiny.build(family, quantized=True)
    one, many = tiny.tokens(1), tiny.tokens(5)
    want_one, want_many = model(one), model(many)
    calls = _spy(monkeypatch)

    patch(model, verbose=False)
    assert mx.array_equal(model(one), want_one).item()
    assert sum(calls.values()) == 0, "fused projections must be off by default off CUDA"
    unpatch(model)

    patch(model, verbose=False, fuse_projections=True)
    assert mx.array_equal(model(one), want_one).item()
    n_one = sum(calls.values())
    assert n_one > 0, "one token must take the fused projections"
    assert mx.array_equal(model(many), want_many).item()
    assert sum(calls.values()) == n_one, "more than one token must keep the block's own projections"
    unpatch(model)


@pytest.mark.parametrize("family", ["gpt_oss", "qwen3_moe", "llama"])
def test_non_affine_quantization_keeps_the_blocks_own_projections(family, monkeypatch):
    """Real gpt-oss checkpoints ship MXFP4 experts: the fused kernels dequantize affine weights only, so such
    projections must take MLX's own path even where fuse_projections is on (the CUDA default for gpt_oss)."""
    model = tiny.build(family, quantized=True, mode="mxfp4")
    one = tiny.tokens(1)
    want = model(one)
    calls = _spy(monkeypatch)
    patch(model, verbose=False, fuse_projections=True)
    assert mx.array_equal(model(one), want).item()
    assert sum(calls.values()) == 0
    unpatch(model)

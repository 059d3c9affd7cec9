"""With ``patch(fuse_qkv=True)`` (off by default: not yet run on a GPU), the qk_norm_rope pattern computes the
q/k/v projections in its launch (zk.qkv_norm_rope) exactly where all three are affine QuantizedLinear without bias;
the block's output is the unpatched one (on the CPU, bit for bit)."""

import mlx.core as mx
import mlx.nn as nn
import pytest
import zmlx_patch_tiny as tiny
from zmlx.patch import patch, unpatch


def _spy(monkeypatch):
    return tiny.count_kernel_calls(monkeypatch, ("qkv_norm_rope",))


@pytest.mark.parametrize("family", ["qwen3", "qwen3_moe", "lfm2", "lfm2_moe"])
def test_fused_projections_taken_and_exact(family, monkeypatch):
    model = tiny.build(family, quantized=True)
    one, many = tiny.tokens(1), tiny.tokens(5)
    want_one, want_many = model(one), model(many)
    calls = _spy(monkeypatch)
    patch(model, verbose=False, fuse_qkv=True)
    assert mx.array_equal(model(one), want_one).item()
    assert mx.array_equal(model(many), want_many).item()
    assert calls["qkv_norm_rope"] > 0
    unpatch(model)


def test_off_by_default_keeps_the_blocks_projections(monkeypatch):
    model = tiny.build("qwen3", quantized=True)
    one = tiny.tokens(1)
    want = model(one)
    calls = _spy(monkeypatch)
    patch(model, verbose=False)
    assert mx.array_equal(model(one), want).item()
    assert calls["qkv_norm_rope"] == 0
    unpatch(model)


@pytest.mark.parametrize("case", ["float", "mixed_bits"])
def test_other_projections_keep_their_own_path(case, monkeypatch):
    model = tiny.build("qwen3")
    if case == "mixed_bits":  # q and k at 4 bits, v at 8: no single launch reproduces both widths here
        nn.quantize(model, group_size=64, bits=4, class_predicate=lambda p, m: p.endswith(("q_proj", "k_proj")))
        nn.quantize(model, group_size=64, bits=8, class_predicate=lambda p, m: p.endswith("v_proj"))
    one = tiny.tokens(1)
    want = model(one)
    calls = _spy(monkeypatch)
    patch(model, verbose=False, fuse_qkv=True)
    assert mx.array_equal(model(one), want).item()
    assert calls["qkv_norm_rope"] == 0
    unpatch(model)

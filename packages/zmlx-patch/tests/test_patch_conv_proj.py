"""With ``patch(fuse_conv_proj=True)`` (off by default: not yet run on a GPU), conv_layer computes LFM2's in_proj
inside the short-conv launch (zk.short_conv_proj) exactly where in_proj is an affine QuantizedLinear without bias;
decode is the unpatched one (on the CPU, bit for bit), conv state included."""

import mlx.core as mx
import pytest
import zmlx_patch_tiny as tiny
from mlx_lm.models.cache import ArraysCache, make_prompt_cache
from zmlx.patch import patch, unpatch


def _decode(model, seq: mx.array, prefill: int = 7):
    cache = make_prompt_cache(model)
    out = [model(seq[:, :prefill], cache=cache)]
    out += [model(seq[:, i : i + 1], cache=cache) for i in range(prefill, seq.shape[1])]
    mx.eval(out)
    return out, [c[0] for c in cache if isinstance(c, ArraysCache)]


def _spy(monkeypatch):
    return tiny.count_kernel_calls(monkeypatch, ("short_conv_proj",))


@pytest.mark.parametrize("compile_blocks", [True, False], ids=["traced", "eager"])
@pytest.mark.parametrize("family", ["lfm2", "lfm2_moe"])
def test_fused_in_proj_taken_and_exact(family, compile_blocks, monkeypatch):
    model = tiny.build(family, quantized=True, seed=3)
    seq = tiny.tokens(20, seed=9)
    want, want_states = _decode(model, seq)
    calls = _spy(monkeypatch)
    patch(model, verbose=False, fuse_conv_proj=True, compile_blocks=compile_blocks)
    got, got_states = _decode(model, seq)
    unpatch(model)
    assert calls["short_conv_proj"] > 0
    assert all(mx.array_equal(a, b).item() for a, b in zip(want, got, strict=True))
    assert all(mx.array_equal(a, b).item() for a, b in zip(want_states, got_states, strict=True))


@pytest.mark.parametrize("quantized,flag", [(True, False), (False, True)], ids=["off-by-default", "float-in-proj"])
def test_otherwise_the_layers_own_in_proj(quantized, flag, monkeypatch):
    model = tiny.build("lfm2", quantized=quantized)
    seq = tiny.tokens(12, seed=2)
    want, _ = _decode(model, seq)
    calls = _spy(monkeypatch)
    patch(model, verbose=False, fuse_conv_proj=flag)
    got, _ = _decode(model, seq)
    unpatch(model)
    assert calls["short_conv_proj"] == 0
    assert all(mx.array_equal(a, b).item() for a, b in zip(want, got, strict=True))

"""conv_layer: LFM2 short-conv decoder layers traced at decode, exact against mlx-lm, original path elsewhere."""

import mlx.core as mx
import pytest
import zmlx_patch_tiny as tiny
from mlx_lm.models.cache import ArraysCache, make_prompt_cache
from zmlx.patch import patch, unpatch


def _run(model, seq: mx.array, prefill: int, cache=None) -> tuple[list[mx.array], list]:
    cache = cache if cache is not None else make_prompt_cache(model)
    out = [model(seq[:, :prefill], cache=cache)]
    out += [model(seq[:, i : i + 1], cache=cache) for i in range(prefill, seq.shape[1])]
    mx.eval(out)
    return out, cache


def _states(cache) -> list[mx.array]:
    return [c[0] for c in cache if isinstance(c, ArraysCache)]


@pytest.mark.parametrize("compile_blocks", [True, False], ids=["traced", "eager"])
@pytest.mark.parametrize("quantized", [False, True], ids=["fp32", "q4"])
@pytest.mark.parametrize("family", ["lfm2", "lfm2_moe"])
def test_conv_layer_decode_is_exact_and_keeps_the_cache(family, quantized, compile_blocks):
    model = tiny.build(family, quantized=quantized, seed=5)
    seq = tiny.tokens(33, seed=7)  # an odd prompt length, then 26 decode steps
    want, want_cache = _run(model, seq, prefill=7)

    result = patch(model, patterns=["conv_layer"], compile_blocks=compile_blocks, verbose=False)
    assert result.counts == {"conv_layer": 2} and not result.skipped  # the attention layer is not its business
    got, got_cache = _run(model, seq, prefill=7)
    traced = tiny.traced_paths(model)
    assert unpatch(model) == 2 and not tiny.traced_paths(model)

    assert traced == (["model.layers.2", "model.layers.0"] if compile_blocks else [])
    assert all(mx.array_equal(a, b).item() for a, b in zip(want, got, strict=True))
    # the conv state after the last step (what the trace hands back) is the cache mlx-lm would hold
    assert all(mx.array_equal(a, b).item() for a, b in zip(_states(want_cache), _states(got_cache), strict=True))
    assert [c.offset for c in got_cache if hasattr(c, "offset")] == [33]


def test_conv_layer_takes_the_original_path_for_batched_caches(monkeypatch):
    from zmlx.patch.patterns import conv_layer

    model = tiny.build("lfm2_moe", quantized=True, seed=2)
    seq = mx.concatenate([tiny.tokens(9, seed=3), tiny.tokens(9, seed=4)])
    want, _ = _run(model, seq, prefill=5)
    patch(model, verbose=False)
    steps: list[int] = []
    real = conv_layer.step
    monkeypatch.setattr(conv_layer, "step", lambda layer, x, s: steps.append(1) or real(layer, x, s))
    cache = make_prompt_cache(model)
    for c in cache:  # a batch whose caches carry lengths (mlx-lm's batched generation) is masked: not traced
        if isinstance(c, ArraysCache):
            c.lengths = mx.array([9, 9])
    got, _ = _run(model, seq, prefill=5, cache=cache)
    unpatch(model)
    assert steps == []
    assert all(mx.allclose(a, b).item() for a, b in zip(want, got, strict=True))


@pytest.mark.parametrize("family", ["lfm2", "lfm2_moe"])
def test_residual_norm_rides_on_conv_layer_for_every_layer(family, monkeypatch):
    model = tiny.build(family, quantized=True, seed=6)
    seq = tiny.tokens(31, seed=8)
    want, _ = _run(model, seq, prefill=5)
    calls = tiny.count_kernel_calls(monkeypatch, ["add_rms_norm"])
    result = patch(model, patterns=["conv_layer", "residual_norm"], compile_blocks=False, verbose=False)
    got, _ = _run(model, seq, prefill=5)
    monkeypatch.undo()
    assert unpatch(model) == 3
    assert result.counts == {"conv_layer": 3} and not result.skipped  # the attention layer too
    # every layer at each of the 26 one-token steps, and the attention layer at the 5-token prefill (<= 32 tokens)
    assert calls["add_rms_norm"] == 3 * 26 + 1
    assert all(mx.array_equal(a, b).item() for a, b in zip(want, got, strict=True))
    assert "residual_norm" not in patch(tiny.build(family), verbose=False).patterns  # opt-in, as elsewhere


def test_traced_conv_layers_fold_the_residual_into_the_fused_experts(monkeypatch):
    import zmlx.kernels as zk

    model = tiny.build("lfm2_moe", quantized=True, seed=9)
    seq = tiny.tokens(12, seed=10)
    want, _ = _run(model, seq, prefill=4)
    seen: list[bool] = []
    real = zk.moe_down_combine
    monkeypatch.setattr(zk, "moe_down_combine", lambda *a, **kw: seen.append(kw.get("residual") is not None)
                        or real(*a, **kw))
    patch(model, compile_blocks=False, fuse_projections=True, verbose=False)
    got, _ = _run(model, seq, prefill=4)
    unpatch(model)
    # 8 one-token steps: conv layer 2 folds `h + moe` into down+combine; attention layer 1 adds it itself
    assert seen.count(True) == 8 and seen.count(False) == 8
    assert all(mx.array_equal(a, b).item() for a, b in zip(want, got, strict=True))


@pytest.mark.parametrize("backend,kernel_calls", [("cuda", 8), ("metal", 0)])
def test_the_conv_kernel_is_used_where_it_was_checked_against_mlx(backend, kernel_calls, monkeypatch):
    # CUDA: zk.short_conv (bit-exact against MLX's CUDA conv on the H100); Metal: unverified, the eager ops instead
    from zmlx.patch.patterns import conv_layer

    model = tiny.build("lfm2", quantized=True, seed=12)
    seq = tiny.tokens(10, seed=13)
    want, _ = _run(model, seq, prefill=6)
    calls = tiny.count_kernel_calls(monkeypatch, ["short_conv"])
    monkeypatch.setattr(conv_layer, "target_for", lambda stream=None: backend)
    patch(model, patterns=["conv_layer"], compile_blocks=False, verbose=False)
    got, _ = _run(model, seq, prefill=6)
    unpatch(model)
    assert calls["short_conv"] == kernel_calls  # 2 conv layers x 4 one-token steps
    assert all(mx.array_equal(a, b).item() for a, b in zip(want, got, strict=True))

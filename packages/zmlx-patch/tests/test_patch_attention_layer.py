"""attention_layer (opt-in): a qk-norm decoder layer's decode step traced in two graphs around the KV-cache update
and SDPA. On the CPU every op is its reference, so patched decoding must equal stock bit for bit."""

import mlx.core as mx
import mlx.nn as nn
import pytest
import zmlx_patch_tiny as tiny
from mlx_lm.models.cache import make_prompt_cache
from zmlx.patch import list_patterns, patch, unpatch
from zmlx.patch.registry import FAMILIES

FAMILIES_WITH_IT = ["qwen3", "qwen3_moe", "llama", "qwen2", "mixtral", "gpt_oss"]  # LFM2's: the last test


def _decode(model, seq: mx.array, prompt: int = 3) -> list[mx.array]:
    cache = make_prompt_cache(model)
    out = [model(seq[:, :prompt], cache=cache)]  # a short prefill (the layer's own code), then one token a step
    out += [model(seq[:, i : i + 1], cache=cache) for i in range(prompt, seq.shape[1])]
    mx.eval(out)
    return out


def _with_layer(family: str, *extra: str) -> list[str]:
    return [*FAMILIES[family].default_patterns(), "attention_layer", *extra]


def _layers(model) -> list[nn.Module]:
    return list(model.model.layers if hasattr(model, "model") else model.layers)


@pytest.mark.parametrize("opts", [{}, {"fuse_qkv": True}, {"residual_norm": True}], ids=["plain", "qkv", "resnorm"])
@pytest.mark.parametrize("quantized", [False, True], ids=["fp32", "q4"])
@pytest.mark.parametrize("family", FAMILIES_WITH_IT)
def test_decode_is_stock_bit_for_bit_and_every_layer_is_traced(family, quantized, opts):
    model = tiny.build(family, quantized=quantized)
    seq = tiny.tokens(9, seed=5)
    want = _decode(model, seq)
    extra = ("residual_norm",) if opts.get("residual_norm") else ()
    result = patch(model, verbose=False, patterns=_with_layer(family, *extra), fuse_qkv=opts.get("fuse_qkv", False))
    got = _decode(model, seq)
    n_layers = len(_layers(model))
    assert result.counts["attention_layer"] == n_layers and "residual_norm" not in result.counts
    traced = [p for p in tiny.traced_paths(model) if p.count(".") == 2]  # model.layers.<i>
    assert len(traced) == n_layers, "each decoder layer holds its two traced graphs"
    assert all(mx.array_equal(a, b).item() for a, b in zip(want, got, strict=True))
    assert unpatch(model) == result.total and tiny.traced_paths(model) == []
    assert all(mx.array_equal(a, b).item() for a, b in zip(want, _decode(model, seq), strict=True))


def test_opt_in_not_applied_by_default():
    for family in FAMILIES_WITH_IT:
        assert "attention_layer" in FAMILIES[family].sites and "attention_layer" in FAMILIES[family].opt_in
        assert "attention_layer" not in list_patterns(family)  # the defaults
    model = tiny.build("qwen3_moe", quantized=True)
    assert "attention_layer" not in patch(model, verbose=False).counts
    unpatch(model)


@pytest.mark.parametrize("extra", [(), ("residual_norm",)], ids=["plain", "resnorm"])
def test_without_compile_blocks_the_layer_runs_its_own_code(extra, monkeypatch):
    model = tiny.build("qwen3_moe", quantized=True)
    seq = tiny.tokens(6, seed=3)
    want = _decode(model, seq)
    patch(model, verbose=False, patterns=_with_layer("qwen3_moe", *extra), compile_blocks=False)
    calls = tiny.count_kernel_calls(monkeypatch, ["add_rms_norm"])
    got = _decode(model, seq)
    assert tiny.traced_paths(model) == []
    assert (calls["add_rms_norm"] > 0) == bool(extra), "residual_norm still fuses the add + norm, untraced"
    assert all(mx.array_equal(a, b).item() for a, b in zip(want, got, strict=True))
    unpatch(model)


@pytest.mark.parametrize("module", ["self_attn.v_proj", "self_attn.o_proj", "mlp.switch_mlp.down_proj"])
def test_traced_layers_see_weight_updates(module):
    tiny.check_sees_weight_update(tiny.build("qwen3_moe", quantized=True), module,
                                  patterns=_with_layer("qwen3_moe"))


def test_a_layer_whose_attention_does_not_fit_is_skipped_with_the_reason():
    model = tiny.build("qwen3", quantized=True)
    attention = _layers(model)[0].self_attn
    attention.rope = nn.RoPE(attention.rope.dims // 2, base=attention.rope.base)  # partial rotation: not fused
    result = patch(model, verbose=False, patterns=_with_layer("qwen3"))
    assert result.counts["attention_layer"] == len(_layers(model)) - 1
    assert any("attention_layer" in why and "rotates" in why for _, why in result.skipped)
    unpatch(model)


def test_a_llama_layer_whose_rope_computes_with_its_offset_is_skipped():
    class OwnRoPE(nn.RoPE):  # stands for SuScaledRoPE & co., which branch on the offset in Python
        pass

    model = tiny.build("llama", quantized=True)
    attention = _layers(model)[1].self_attn
    attention.rope = OwnRoPE(attention.rope.dims, base=attention.rope.base)
    result = patch(model, verbose=False, patterns=_with_layer("llama"))
    assert result.counts["attention_layer"] == len(_layers(model)) - 1
    assert any("attention_layer" in why and "OwnRoPE" in why for _, why in result.skipped)
    unpatch(model)


@pytest.mark.parametrize("extra", [(), ("residual_norm",)], ids=["plain", "resnorm"])
@pytest.mark.parametrize("quantized", [False, True], ids=["fp32", "q4"])
@pytest.mark.parametrize("family", ["lfm2", "lfm2_moe"])
def test_lfm2_attention_layers_traced_by_conv_layer(family, quantized, extra):
    # LFM2's attention and conv layers share one class, conv_layer's: attention_layer is its flag there
    model = tiny.build(family, quantized=quantized)
    seq = tiny.tokens(9, seed=5)
    want = _decode(model, seq)
    result = patch(model, verbose=False, patterns=_with_layer(family, *extra))
    got = _decode(model, seq)
    layers = _layers(model)
    assert result.counts["conv_layer"] == len(layers) and "attention_layer" not in result.counts
    traced = set(tiny.traced_paths(model))
    assert all(f"model.layers.{i}" in traced for i, layer in enumerate(layers) if layer.is_attention_layer)
    assert all(mx.array_equal(a, b).item() for a, b in zip(want, got, strict=True))
    unpatch(model)


@pytest.mark.parametrize("module", ["self_attn.v_proj", "self_attn.out_proj", "feed_forward.switch_mlp.down_proj"])
def test_lfm2_traced_attention_layers_see_weight_updates(module):
    model = tiny.build("lfm2_moe", quantized=True)
    index = next(i for i, layer in enumerate(_layers(model)) if layer.is_attention_layer)
    tiny.check_sees_weight_update(model, module, layer=index, patterns=_with_layer("lfm2_moe"))


def test_gpt_oss_past_its_sliding_window():
    # the sliding layers' RotatingKVCache wraps around (window 16 in the tiny config) while the traced graphs replay
    model = tiny.build("gpt_oss", quantized=True)
    seq = tiny.tokens(40, seed=8)
    want = _decode(model, seq)
    patch(model, verbose=False, patterns=_with_layer("gpt_oss"))
    got = _decode(model, seq)
    unpatch(model)
    assert all(mx.array_equal(a, b).item() for a, b in zip(want, got, strict=True))


@pytest.mark.parametrize("family", ["qwen3", "qwen3_moe", "lfm2_moe"])
def test_with_fuse_qkv_the_input_norm_joins_the_prologue_launch(family, monkeypatch):
    """A traced layer hands its un-normalised row and its input RMSNorm to zk.qkv_norm_rope (one launch for the
    norm, the projections, q/k norm and RoPE); decoding stays stock bit for bit."""
    import zmlx.kernels as zk

    model = tiny.build(family, quantized=True, seed=2)
    seq = tiny.tokens(9, seed=4)
    want = _decode(model, seq)
    seen = []
    real = zk.qkv_norm_rope

    def spy(*a, **kw):
        seen.append(kw.get("input_norm"))
        return real(*a, **kw)

    monkeypatch.setattr(zk, "qkv_norm_rope", spy)
    patch(model, verbose=False, patterns=_with_layer(family), fuse_qkv=True)
    got = _decode(model, seq)
    unpatch(model)
    assert all(mx.array_equal(a, b).item() for a, b in zip(want, got, strict=True))
    traced = [n for n in seen if n is not None]
    assert traced and all(isinstance(w, mx.array) and isinstance(eps, float) for w, eps in traced)


LLAMA3_SCALING = {"rope_type": "llama3", "factor": 8.0, "low_freq_factor": 1.0, "high_freq_factor": 4.0,
                  "original_max_position_embeddings": 64}
YARN_SCALING = {"rope_type": "yarn", "factor": 32.0, "beta_fast": 32.0, "beta_slow": 1.0,
                "original_max_position_embeddings": 64, "truncate": False}
PLAIN_CASES = [("llama", {}), ("llama", {"rope_scaling": LLAMA3_SCALING}), ("qwen2", {}), ("mixtral", {}),
               ("gpt_oss", {}), ("gpt_oss", {"rope_scaling": YARN_SCALING})]


@pytest.mark.parametrize("family,overrides", PLAIN_CASES,
                         ids=["llama", "llama3-rope", "qwen2", "mixtral", "gpt_oss", "gpt_oss-yarn"])
def test_with_fuse_qkv_a_llama_style_prologue_is_one_launch(family, overrides, monkeypatch):
    """fuse_qkv in a traced Llama-style layer: input norm, q/k/v (+ qwen2's and gpt-oss's biases) and RoPE
    (nn.RoPE, Llama3RoPE, YarnRoPE with its mscale: gpt-oss's real config) through zk.qkv_rope. Stock bit for bit."""
    from mlx_lm.models.rope_utils import Llama3RoPE, YarnRoPE

    model = tiny.build(family, quantized=True, seed=5, **overrides)
    rope = _layers(model)[0].self_attn.rope
    yarn = isinstance(rope, YarnRoPE)
    if overrides:  # the scaled RoPE the real checkpoints configure
        assert isinstance(rope, YarnRoPE if family == "gpt_oss" else Llama3RoPE)
    seq = tiny.tokens(9, seed=7)
    want = _decode(model, seq)
    calls = tiny.count_kernel_calls(monkeypatch, ("qkv_rope",))
    patch(model, verbose=False, patterns=_with_layer(family), fuse_qkv=True)
    got = _decode(model, seq)
    unpatch(model)
    assert all(mx.array_equal(a, b).item() for a, b in zip(want, got, strict=True))
    assert calls["qkv_rope"] > 0 and (not yarn or rope.mscale != 1.0), calls

"""patch(compile_blocks=...): patched MoE blocks traced by mx.compile at decode (the default); exact, reversible,
live, and never for dense MLPs, sharded blocks or sigmoid-gated shared experts."""

import mlx.core as mx
import mlx.nn as nn
import pytest
import zmlx_patch_tiny as tiny
from mlx_lm.models.cache import make_prompt_cache
from zmlx.patch import patch, unpatch
from zmlx.patch._swap import has_collectives

# blocks whose fused path stays eager under compile_blocks (moe_mlp.compilable: sigmoid-gated shared experts)
EAGER = {"qwen2_moe": "moe_mlp"}
FAMILIES = ["qwen3_moe", "qwen2_moe", "gpt_oss", "mixtral", "lfm2_moe", "deepseek_v3", "llama", "phi3", "gemma2"]


def _decode(model, seq: mx.array) -> list[mx.array]:
    cache = make_prompt_cache(model)
    out = [model(seq[:, i : i + 1], cache=cache) for i in range(seq.shape[1])]
    mx.eval(out)
    return out


def _traced(model) -> list[str]:
    return tiny.traced_paths(model)


@pytest.mark.parametrize("quantized", [False, True], ids=["fp32", "q4"])
@pytest.mark.parametrize("family", FAMILIES)
def test_compiled_blocks_exact_at_decode_and_prefill(family, quantized):
    model = tiny.build(family, quantized=quantized)
    seq, many = tiny.tokens(7, seed=11), tiny.tokens(40, seed=12)
    want, want_many = _decode(model, seq), model(many)

    result = patch(model, verbose=False, compile_blocks=True)
    got = _decode(model, seq)
    traced = _traced(model)
    got_many = model(many)
    restored = unpatch(model)

    feed_forward = sum(n for p, n in result.counts.items() if p == "moe_mlp" and p != EAGER.get(family))
    layers = result.counts.get("conv_layer", 0)  # LFM2 short-conv layers trace their whole decode step
    prologues = result.counts.get("qk_norm_rope", 0)  # attention up to the cache update, the position an input
    assert len(traced) == feed_forward + layers + prologues, \
        "every patched MoE block, conv layer and attention prologue (nothing else) is traced"
    assert all(mx.array_equal(a, b).item() for a, b in zip(want, got, strict=True))
    assert mx.array_equal(got_many, want_many).item(), "prefill (M > max_fused_tokens) takes the original path"
    assert restored == result.total and _traced(model) == [], "unpatch must drop every traced function"
    assert all(mx.array_equal(a, b).item() for a, b in zip(want, _decode(model, seq), strict=True))


# v_proj: at the first position attention returns v whatever q and k are
@pytest.mark.parametrize("module", ["mlp.switch_mlp.down_proj", "self_attn.v_proj"])
def test_compiled_block_sees_weight_updates(module):
    tiny.check_sees_weight_update(tiny.build("qwen3_moe", quantized=True), module, compile_blocks=True)


def test_on_by_default_off_when_asked_and_idempotent():
    model = tiny.build("mixtral", quantized=True)
    patch(model, verbose=False, compile_blocks=False)
    model(tiny.tokens(1))
    assert _traced(model) == []
    unpatch(model)
    first = patch(model, verbose=False)
    second = patch(model, verbose=False)
    model(tiny.tokens(1))
    assert first.total > 0 and second.total == 0
    assert len(_traced(model)) == first.counts["moe_mlp"]


def test_sharded_blocks_stay_eager():
    block = nn.Sequential(nn.Linear(4, 4))
    assert not has_collectives(block)
    block.layers[0].group = object()  # what mlx-lm's sharded linears carry
    assert has_collectives(block)
    moe = nn.Module()
    moe.sharding_group = object()
    assert has_collectives(moe)

"""The opt-in fusions, off by default: ``patch(fuse_router=True)`` (zk.quantized_router: slower on the H100's device,
docs/perf-notes.md v7), ``fuse_qkv`` (zk.qkv_norm_rope) and ``fuse_conv_proj`` (zk.short_conv_proj), both not yet
run on a GPU. Each is taken exactly where its projection is an affine-quantized ``QuantizedLinear`` of that exact
class, and decode is the unpatched one (on the CPU, bit for bit, conv state included)."""

import mlx.core as mx
import mlx.nn as nn
import pytest
import zmlx_patch_tiny as tiny
from mlx_lm.models.cache import ArraysCache, make_prompt_cache
from zmlx.patch import patch, unpatch

# patch() argument -> (the zmlx.kernels op it routes through, tiny families that have such a projection)
OPT_INS = {
    "fuse_router": ("quantized_router", ["qwen3_moe", "gpt_oss", "mixtral", "lfm2_moe"]),  # gpt_oss: biased router
    "fuse_qkv": ("qkv_norm_rope", ["qwen3", "qwen3_moe", "lfm2", "lfm2_moe"]),
    "fuse_conv_proj": ("short_conv_proj", ["lfm2", "lfm2_moe"]),
}
CASES = [(flag, family) for flag, (_, families) in OPT_INS.items() for family in families]


def _decode(model, seq: mx.array, prefill: int = 7):
    """Prefill, then one token a step (the fused paths), with a cache: logits and the conv states at the end."""
    cache = make_prompt_cache(model)
    out = [model(seq[:, :prefill], cache=cache)]
    out += [model(seq[:, i : i + 1], cache=cache) for i in range(prefill, seq.shape[1])]
    mx.eval(out)
    return out, [c[0] for c in cache if isinstance(c, ArraysCache)]


def _same(a: list[mx.array], b: list[mx.array]) -> bool:
    return len(a) == len(b) and all(mx.array_equal(x, y).item() for x, y in zip(a, b, strict=True))


def _calls(model, seq, monkeypatch, op: str, **kwargs) -> tuple[int, bool]:
    """(calls of ``op`` while decoding patched with ``kwargs``, whether logits and states equal the unpatched)."""
    want = _decode(model, seq)
    calls = tiny.count_kernel_calls(monkeypatch, (op,))
    patch(model, verbose=False, **kwargs)
    got = _decode(model, seq)
    unpatch(model)
    return calls[op], _same(want[0], got[0]) and _same(want[1], got[1])


@pytest.mark.parametrize("flag,family", CASES, ids=[f"{f}-{fam}" for f, fam in CASES])
def test_opt_in_taken_and_exact(flag, family, monkeypatch):
    model = tiny.build(family, quantized=True, seed=3)  # 4-bit, routers 8-bit (mlx-lm's quant predicate)
    n, exact = _calls(model, tiny.tokens(16, seed=9), monkeypatch, OPT_INS[flag][0], **{flag: True})
    assert n > 0 and exact


@pytest.mark.parametrize("flag", list(OPT_INS))
def test_opt_in_off_by_default(flag, monkeypatch):
    op, families = OPT_INS[flag]
    n, exact = _calls(tiny.build(families[-1], quantized=True), tiny.tokens(10), monkeypatch, op)
    assert n == 0 and exact


@pytest.mark.parametrize("flag", list(OPT_INS))
def test_float_projections_keep_their_own_path(flag, monkeypatch):
    op, families = OPT_INS[flag]
    n, exact = _calls(tiny.build(families[-1]), tiny.tokens(10), monkeypatch, op, **{flag: True})
    assert n == 0 and exact


@pytest.mark.parametrize("mode", ["affine", "mxfp4"])
def test_only_affine_routers_are_fused(mode, monkeypatch):
    model = tiny.build("qwen3_moe")  # float32, then only the routers quantized
    nn.quantize(model, group_size=32 if mode == "mxfp4" else 64, bits=4 if mode == "mxfp4" else 8, mode=mode,
                class_predicate=lambda path, m: path.endswith("mlp.gate"))
    routers = [m for p, m in model.named_modules() if p.endswith("mlp.gate")]
    assert routers and all(isinstance(r, nn.QuantizedLinear) and r.mode == mode for r in routers)
    n, exact = _calls(model, tiny.tokens(10), monkeypatch, "quantized_router", fuse_router=True)
    assert (n > 0) == (mode == "affine") and exact


def test_a_projection_subclass_keeps_its_own_call(monkeypatch):
    """Only the exact QuantizedLinear class: a subclass (an adapter, say) may compute something else."""

    class Scaled(nn.QuantizedLinear):
        def __call__(self, x):
            return super().__call__(x) * 2

    model = tiny.build("qwen3_moe", quantized=True)
    for _, layer in model.named_modules():
        if type(getattr(layer, "gate", None)) is nn.QuantizedLinear:
            layer.gate.__class__ = Scaled
    n, exact = _calls(model, tiny.tokens(10), monkeypatch, "quantized_router", fuse_router=True)
    assert n == 0 and exact


def test_mixed_width_qkv_keeps_the_blocks_projections(monkeypatch):
    model = tiny.build("qwen3")  # q and k at 4 bits, v at 8: no single launch reproduces both widths here
    nn.quantize(model, group_size=64, bits=4, class_predicate=lambda p, m: p.endswith(("q_proj", "k_proj")))
    nn.quantize(model, group_size=64, bits=8, class_predicate=lambda p, m: p.endswith("v_proj"))
    n, exact = _calls(model, tiny.tokens(10), monkeypatch, "qkv_norm_rope", fuse_qkv=True)
    assert n == 0 and exact


NORM_ROUTER_CASES = [("qwen3_moe", "traced"), ("qwen3_moe", "eager"), ("mixtral", "traced"), ("mixtral", "eager"),
                     ("gpt_oss", "traced"), ("lfm2_moe", "traced"), ("lfm2_moe", "eager")]


@pytest.mark.parametrize("family,layer", NORM_ROUTER_CASES, ids=[f"{f}-{m}" for f, m in NORM_ROUTER_CASES])
def test_fuse_router_with_residual_norm_is_one_launch_for_add_norm_and_routing(family, layer, monkeypatch):
    """Both opt-ins asked: at decode a MoE layer's ``h = x + r``, its norm and its routing go through one
    zk.add_norm_router (traced: attention_layer / LFM2's conv_layer; eager: residual_norm's own path, or
    conv_layer's untraced step). gpt-oss has no eager residual_norm (its layers are not the ResidualSite shape)."""
    from zmlx.patch.registry import FAMILIES

    model = tiny.build(family, quantized=True, seed=4)
    patterns = [*FAMILIES[family].default_patterns(), "residual_norm"]
    if layer == "traced" and family != "lfm2_moe":  # LFM2: conv_layer traces the layers and takes the flag
        patterns.insert(0, "attention_layer")  # before residual_norm: the order of `patterns` must not matter
    seq = tiny.tokens(12, seed=6)
    want = _decode(model, seq)
    patch(model, verbose=False, patterns=patterns, fuse_router=True, compile_blocks=layer == "traced")
    cache = make_prompt_cache(model)
    got = [model(seq[:, :7], cache=cache)]  # prefill: the layers' own code
    calls = tiny.count_kernel_calls(monkeypatch, ("add_norm_router", "add_rms_norm", "quantized_router"))
    got += [model(seq[:, i : i + 1], cache=cache) for i in range(7, seq.shape[1])]
    mx.eval(got)
    unpatch(model)
    assert calls["add_norm_router"] > 0 and calls["quantized_router"] == 0, calls
    assert _same(want[0], got)

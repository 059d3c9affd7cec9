"""The quantized_linear pattern (opt-in): every affine 4-bit QuantizedLinear swapped, decode unchanged bit for bit
(on the CPU the plan runs MLX's quantized_matmul; the kernel's identity is test_kernels_gpu.py's and
test_patch_gpu.py's), weights replaced after patching are seen, unpatch restores the classes, patching twice is a
no-op, and the other fusions still see the projections as QuantizedLinear."""

import mlx.core as mx
import mlx.nn as nn
import pytest
import zmlx_patch_tiny as tiny
from mlx_lm.models.cache import make_prompt_cache
from zmlx.patch import _swap, patch, unpatch
from zmlx.patch.patterns._structure import affine_quantized
from zmlx.patch.registry import FAMILIES


def _decode(model, seq, prefill=5):
    cache = make_prompt_cache(model)
    out = [model(seq[:, :prefill], cache=cache)]
    out += [model(seq[:, i : i + 1], cache=cache) for i in range(prefill, seq.shape[1])]
    mx.eval(out)
    return out


@pytest.mark.parametrize("family", ["llama", "qwen3_moe", "gpt_oss", "lfm2"])
def test_every_4bit_projection_swapped_and_exact(family):
    model = tiny.build(family, quantized=True, seed=5)
    seq = tiny.tokens(12, seed=2)
    want = _decode(model, seq)
    four_bit = [p for p, m in model.named_modules() if type(m) is nn.QuantizedLinear and m.bits == 4]
    other = [p for p, m in model.named_modules() if type(m) is nn.QuantizedLinear and m.bits != 4]
    result = patch(model, patterns=["quantized_linear"], verbose=False)
    assert result.counts == {"quantized_linear": len(four_bit)} and len(four_bit) > 0
    assert sorted(p for p, r in result.skipped if r.startswith("quantized_linear")) == sorted(other)
    got = _decode(model, seq)
    assert all(mx.array_equal(a, b).item() for a, b in zip(want, got, strict=True))
    assert patch(model, patterns=["quantized_linear"], verbose=False).total == 0  # idempotent
    assert unpatch(model) == len(four_bit)
    assert all(type(m) is nn.QuantizedLinear for p, m in model.named_modules() if p in four_bit)
    assert not any("_zmlx_compiled" in m.__dict__ for _, m in model.named_modules())


def test_sees_replaced_weights():
    tiny.check_sees_weight_update(tiny.build("llama", quantized=True, seed=1), "self_attn.o_proj",
                                  patterns=["quantized_linear"])


def test_other_fusions_still_see_a_quantized_linear():
    model = tiny.build("llama", quantized=True, seed=1)
    proj = model.model.layers[0].self_attn.q_proj
    before = affine_quantized(proj)
    patch(model, patterns=["quantized_linear"], verbose=False)
    assert type(proj) is not nn.QuantizedLinear and affine_quantized(proj) == before
    unpatch(model)


def test_off_by_default_and_stacks_with_the_layer_patterns():
    model = tiny.build("qwen3", quantized=True, seed=7)
    assert "quantized_linear" not in patch(model, verbose=False).counts
    unpatch(model)
    seq = tiny.tokens(10, seed=3)
    want = _decode(model, seq)
    result = patch(model, patterns=["qk_norm_rope", "swiglu_mlp", "attention_layer", "quantized_linear"],
                   verbose=False, fuse_qkv=True)
    assert result.counts["quantized_linear"] > 0 and result.counts["attention_layer"] > 0
    got = _decode(model, seq)
    unpatch(model)
    assert all(mx.array_equal(a, b).item() for a, b in zip(want, got, strict=True))


@pytest.mark.parametrize("family", ["llama", "qwen3"])
def test_qkv_and_gate_up_go_through_one_plan(family, monkeypatch):
    """Under quantized_linear, attention's q/k/v (and a SwiGLU MLP's gate/up) are projected by one QmvManyPlan
    (one zk.qmv_many launch on CUDA); the decode is unchanged; a projection left unpatched keeps its own call."""
    from zmlx.kernels.ops.qmv import QmvManyPlan

    model = tiny.build(family, quantized=True, seed=2)
    seq = tiny.tokens(9, seed=4)
    want = _decode(model, seq)
    widths = []
    real = QmvManyPlan.__call__
    monkeypatch.setattr(QmvManyPlan, "__call__", lambda self, x: widths.append(len(self.n)) or real(self, x))
    patch(model, patterns=["qk_norm_rope", "swiglu_mlp", "quantized_linear"], verbose=False)
    got = _decode(model, seq)
    assert all(mx.array_equal(a, b).item() for a, b in zip(want, got, strict=True))
    # qwen3's attention is qk_norm_rope's: q/k/v in one plan; llama's attention is patched only by attention_layer
    assert (widths.count(3) > 0) == (family == "qwen3")
    assert widths.count(2) > 0  # gate/up of every swiglu_mlp call
    unpatch(model)
    widths.clear()
    patch(model, patterns=["qk_norm_rope", "swiglu_mlp"], verbose=False)  # projections unpatched: no plan
    _decode(model, seq)
    unpatch(model)
    assert widths == []


@pytest.mark.parametrize("family", ["mixtral", "gpt_oss", "lfm2_moe"])
def test_switch_linears_swapped_and_exact(family, monkeypatch):
    """quantized_switch_linear: the experts' QuantizedSwitchLinear layers (called by SwitchGLU where the projections
    stay unfused) swapped, decode unchanged bit for bit (gpt_oss: biased experts), unpatch restores."""
    from mlx_lm.models.switch_layers import QuantizedSwitchLinear

    model = tiny.build(family, quantized=True, seed=6)
    seq = tiny.tokens(10, seed=7)
    want = _decode(model, seq)
    switch = [p for p, m in model.named_modules() if type(m) is QuantizedSwitchLinear]
    result = patch(model, patterns=["moe_mlp", "quantized_switch_linear"], fuse_projections=False, verbose=False)
    assert result.counts["quantized_switch_linear"] == len(switch) > 0
    calls = tiny.count_kernel_calls(monkeypatch, ("gather_qmv",))
    got = _decode(model, seq)
    assert calls["gather_qmv"] >= 3 * tiny.config(family)["num_hidden_layers"]  # up, gate, down of every MoE layer
    assert all(mx.array_equal(a, b).item() for a, b in zip(want, got, strict=True))
    assert unpatch(model) == result.total
    assert all(type(m) is QuantizedSwitchLinear for p, m in model.named_modules() if p in switch)


def test_metal_keeps_mlx_own_projections(monkeypatch):
    """On Metal MLX's qmv sums in another order: the qmv patterns skip every projection, saying why."""
    import zmlx.kernels.backend as backend

    monkeypatch.setattr(backend, "gpu_backend", lambda: "metal")
    model = tiny.build("mixtral", quantized=True, seed=1)
    result = patch(model, patterns=["quantized_linear", "quantized_switch_linear"], verbose=False)
    assert result.counts == {} and result.skipped
    assert all("Metal" in why for _, why in result.skipped)
    unpatch(model)


@pytest.mark.parametrize("family", ["llama", "qwen3", "qwen3_moe"])
def test_fold_projections_adds_the_residuals_in_the_projection_calls_exactly(family, monkeypatch):
    """_layer.FOLD_PROJECTIONS (ab_decode's 'projfold'): in a traced layer, h = x + o_proj(a) and (dense MLPs)
    h + down_proj(m) go through QmvPlan.residual (one zk.qmv_residual launch on CUDA); the decode is unchanged."""
    from zmlx.kernels.ops.qmv import QmvPlan
    from zmlx.patch.patterns import _layer

    model = tiny.build(family, quantized=True, seed=3)
    seq = tiny.tokens(9, seed=6)
    want = _decode(model, seq)
    folded = []
    real = QmvPlan.residual
    monkeypatch.setattr(QmvPlan, "residual", lambda self, x, r: folded.append(self.n) or real(self, x, r))
    monkeypatch.setattr(_layer, "FOLD_PROJECTIONS", True)
    patch(model, patterns=[*FAMILIES[family].default_patterns(), "attention_layer", "quantized_linear"],
          verbose=False)
    layers = model.model.layers
    dense = sum(_swap.pattern_of(layer.mlp) == "swiglu_mlp" for layer in layers)
    try:
        got = _decode(model, seq)
    finally:
        unpatch(model)
    assert all(mx.array_equal(a, b).item() for a, b in zip(want, got, strict=True))
    # traced once per layer: o_proj in every layer, down_proj too where the MLP is dense (all of llama's, qwen3's)
    assert dense == len(layers) or family == "qwen3_moe"
    assert folded.count(tiny.config(family)["hidden_size"]) == len(layers) + dense


@pytest.mark.parametrize("fold_projections", [False, True], ids=["norms", "norms+projections"])
@pytest.mark.parametrize("family", ["llama", "qwen3"])
def test_fold_norms_projects_the_unnormalised_row_exactly(family, fold_projections, monkeypatch):
    """_layer.FOLD_NORMS (ab_decode's 'normfold'): a traced layer's input norm and a dense MLP's post-attention norm
    go into their projection group's launch (zk.qmv_many_norm via plan_normed); the decode is unchanged."""
    from zmlx.patch.patterns import _layer
    from zmlx.patch.patterns import quantized_linear as QL

    model = tiny.build(family, quantized=True, seed=4)
    seq = tiny.tokens(9, seed=7)
    want = _decode(model, seq)
    widths = []
    real = QL.plan_normed
    monkeypatch.setattr(QL, "plan_normed", lambda plan, *a: widths.append(len(plan.n)) or real(plan, *a))
    monkeypatch.setattr(_layer, "FOLD_NORMS", True)
    monkeypatch.setattr(_layer, "FOLD_PROJECTIONS", fold_projections)
    patch(model, patterns=[*FAMILIES[family].default_patterns(), "attention_layer", "quantized_linear"],
          verbose=False)
    try:
        got = _decode(model, seq)
    finally:
        unpatch(model)
    assert all(mx.array_equal(a, b).item() for a, b in zip(want, got, strict=True))
    layers = tiny.config(family)["num_hidden_layers"]
    # traced once per layer: gate/up after the post-attention norm, q/k/v after the input norm (llama's own
    # prologue, qwen3's qk_norm_rope prologue)
    assert widths.count(2) == layers and widths.count(3) == layers


@pytest.mark.parametrize("family", ["llama", "mixtral", "gpt_oss", "qwen2"])
def test_fold_rope_rotates_q_and_k_in_one_call_exactly(family, monkeypatch):
    """_layer.FOLD_ROPE (ab_decode's 'ropefold'): a traced Llama-style layer's two mx.fast.rope calls become one
    zk.rope_qk call (nn.RoPE, Llama3RoPE or YarnRoPE arguments); the decode is unchanged."""
    from zmlx import kernels as zk
    from zmlx.patch.patterns import _layer

    model = tiny.build(family, quantized=True, seed=5)
    seq = tiny.tokens(9, seed=8)
    want = _decode(model, seq)
    calls = []
    real = zk.rope_qk
    monkeypatch.setattr(zk, "rope_qk", lambda *a, **kw: calls.append(kw) or real(*a, **kw))
    monkeypatch.setattr(_layer, "FOLD_ROPE", True)
    patch(model, patterns=[*FAMILIES[family].default_patterns(), "attention_layer"], verbose=False)
    try:
        got = _decode(model, seq)
    finally:
        unpatch(model)
    assert all(mx.array_equal(a, b).item() for a, b in zip(want, got, strict=True))
    assert len(calls) == tiny.config(family)["num_hidden_layers"]  # traced once per layer

"""patch() behaviour: messages, guard, GELU choice, selection, sharding-safe subclassing, support matrix."""

from __future__ import annotations

import mlx.core as mx
import mlx.nn as nn
import pytest
import zmlx.kernels as zk
import zmlx_patch_tiny as tiny
from zmlx.patch import PatchResult, list_patterns, patch, unpatch
from zmlx.patch.__main__ import main as list_main
from zmlx.patch._version import _parse, check_mlx_lm_version
from zmlx.patch.registry import FAMILIES, supported_model_types


def _spy(monkeypatch, name: str) -> list[tuple]:
    calls: list[tuple] = []
    real = getattr(zk, name)

    def spy(*args, **kwargs):
        calls.append((args, kwargs))
        return real(*args, **kwargs)

    monkeypatch.setattr(zk, name, spy)
    return calls


def test_verbose_output_has_the_tour_shape(capsys):
    model = tiny.build("lfm2_moe")
    result = patch(model)
    out = capsys.readouterr().out.splitlines()
    assert out == [
        "[zmlx.patch] Applying 5 patterns: ['swiglu_mlp', 'geglu_mlp', 'moe_mlp', 'qk_norm_rope', 'conv_layer']",
        "Patched 6 modules:",
        "  conv_layer: 2",
        "  moe_mlp: 2",
        "  qk_norm_rope: 1",
        "  swiglu_mlp: 1",
    ]
    assert isinstance(result, PatchResult) and result.total == 6
    assert set(result.not_applied) == {"residual_norm", "attention_layer", "quantized_linear",
                                       "quantized_switch_linear"}  # opt-in
    assert result.opt_ins == []


def test_verbose_output_names_the_opt_ins_asked_for(capsys):
    model = tiny.build("lfm2_moe")
    result = patch(model, fuse_conv_proj=True, fuse_router=True)
    out = capsys.readouterr().out.splitlines()
    assert result.opt_ins == ["fuse_router", "fuse_conv_proj"]
    assert out[-1] == ("[zmlx.patch] opt-in fusions (bit-exact where they run; see docs/perf-notes.md): "
                       "fuse_router, fuse_conv_proj")


@pytest.mark.parametrize("family,approximate", [("gemma", False), ("gemma2", True), ("gemma3_text", True)])
def test_gemma_gets_geglu_with_its_gelu_never_silu(monkeypatch, family, approximate):
    geglu = _spy(monkeypatch, "geglu")
    swiglu = _spy(monkeypatch, "swiglu")
    model = tiny.build(family)
    result = patch(model, verbose=False)
    assert result.counts == {"geglu_mlp": 2}
    tiny.logits(model, tiny.tokens(1))
    assert len(geglu) == 2 and not swiglu
    assert all(kw == {"approximate": approximate} for _, kw in geglu)
    # asking for swiglu_mlp explicitly still never gives a Gemma MLP SiLU
    unpatch(model)
    assert patch(model, patterns=["swiglu_mlp"], verbose=False).total == 0


def test_unknown_architecture_is_a_clear_no_op(capsys):
    model = tiny.build("llama")
    model.model_type = "bert"
    result = patch(model)
    line = capsys.readouterr().out.strip()
    assert result.total == 0 and result.model_type == "bert"
    assert line.startswith("[zmlx.patch] model_type 'bert' is not supported; nothing patched. Supported: ")
    assert "llama" in line and "qwen3_moe" in line and "\n" not in line


def test_custom_module_tree_is_a_clear_no_op(capsys):
    class Block(nn.Module):
        def __init__(self):
            super().__init__()
            self.gate_proj = nn.Linear(8, 16)
            self.up_proj = nn.Linear(8, 16)
            self.down_proj = nn.Linear(16, 8)

        def __call__(self, x):
            return self.down_proj(nn.silu(self.gate_proj(x)) * self.up_proj(x))

    class Custom(nn.Module):
        def __init__(self):
            super().__init__()
            self.layers = [Block(), Block()]

    model = Custom()
    result = patch(model)
    assert result.total == 0 and result.model_type is None
    assert "a model without a model_type is not supported" in capsys.readouterr().out
    # even claiming a supported model_type patches nothing: sites match exact mlx-lm classes, not names
    model.model_type = "llama"
    assert patch(model, verbose=False).total == 0
    assert all(type(b) is Block for b in model.layers)


@pytest.mark.parametrize("family,op", [("qwen3_moe", "moe_combine"), ("llama", "swiglu"), ("gemma2", "geglu")])
def test_fused_path_runs_only_within_max_fused_tokens(monkeypatch, family, op):
    calls = _spy(monkeypatch, op)
    model = tiny.build(family)
    patch(model, max_fused_tokens=4, verbose=False)
    per_call = 2  # two patched blocks of this kind in every tiny model
    for n, fused in ((1, True), (4, True), (5, False), (40, False)):
        calls.clear()
        tiny.logits(model, tiny.tokens(n))
        assert len(calls) == (per_call if fused else 0), f"M={n}"
    unpatch(model)
    patch(model, max_fused_tokens=0, verbose=False)  # 0 disables the fused path entirely
    calls.clear()
    tiny.logits(model, tiny.tokens(1))
    assert not calls


def test_batch_counts_as_tokens(monkeypatch):
    calls = _spy(monkeypatch, "swiglu")
    model = tiny.build("qwen3")
    patch(model, max_fused_tokens=4, verbose=False)
    toks = mx.random.randint(0, tiny.V, (3, 2), key=mx.random.key(0))  # 3 x 2 = 6 tokens > 4
    mx.eval(model(toks))
    assert not calls


def test_patterns_and_exclude_select(capsys):
    model = tiny.build("qwen3_moe")
    assert patch(model, exclude=["moe_mlp"], verbose=False).counts == {"qk_norm_rope": 3, "swiglu_mlp": 1}
    unpatch(model)
    result = patch(model, patterns="moe_mlp", verbose=False)
    assert result.patterns == ["moe_mlp"] and result.counts == {"moe_mlp": 2}
    unpatch(model)
    with pytest.raises(ValueError, match="unknown patterns"):
        patch(model, patterns=["fast_everything"])
    with pytest.raises(ValueError, match="max_fused_tokens"):
        patch(model, max_fused_tokens=-1)
    with pytest.raises(TypeError):
        patch("not a model")


def test_explicit_pattern_overrides_an_exclusion_with_a_warning(monkeypatch, capsys):
    fam = FAMILIES["qwen3_moe"]
    monkeypatch.setitem(fam.excluded, "moe_mlp", "measured break (test)")
    model = tiny.build("qwen3_moe")
    assert patch(model, verbose=False).counts == {"qk_norm_rope": 3, "swiglu_mlp": 1}
    unpatch(model)
    result = patch(model, patterns=["moe_mlp"])
    assert result.counts == {"moe_mlp": 2}
    assert "warning: 'moe_mlp' is excluded by default for qwen3_moe (measured break (test))" in capsys.readouterr().out


@pytest.mark.parametrize("family", ["llama", "qwen3_moe", "mixtral"])
def test_residual_norm_is_opt_in_and_exact_on_cpu(monkeypatch, family):
    calls = _spy(monkeypatch, "add_rms_norm")
    model = tiny.build(family, quantized=True)
    ref = [tiny.logits(model, tiny.tokens(n)) for n in (1, 40)]
    result = patch(model, verbose=False)
    assert "residual_norm" not in result.counts and "residual_norm" in result.not_applied
    unpatch(model)
    result = patch(model, patterns=["residual_norm", "swiglu_mlp", "moe_mlp"], verbose=False)
    n_layers = tiny.config(family)["num_hidden_layers"]
    assert result.counts["residual_norm"] == n_layers
    got = [tiny.logits(model, tiny.tokens(n)) for n in (1, 40)]
    assert all(mx.array_equal(a, b).item() for a, b in zip(ref, got, strict=True))
    assert len(calls) == n_layers  # the M=1 call only


def test_sharding_group_keeps_all_sum(monkeypatch):
    """A patched MoE block with a sharding_group still reduces its output across the group."""
    model = tiny.build("qwen3_moe")
    block = model.model.layers[1].mlp
    x = mx.random.normal((1, 1, tiny.D), key=mx.random.key(3))
    want = block(x)
    patch(model, verbose=False)
    seen: list = []
    real = mx.distributed.all_sum
    group = mx.distributed.init()  # singleton group: all_sum is the identity, the call is what we check
    monkeypatch.setattr(mx.distributed, "all_sum", lambda y, group=None: seen.append(group) or real(y, group=group))
    block.sharding_group = group
    got = block(x)
    assert seen == [group] and mx.array_equal(got, want).item()


def test_list_patterns_and_support_matrix(capsys):
    assert list_patterns() == ["swiglu_mlp", "geglu_mlp", "moe_mlp", "qk_norm_rope", "conv_layer", "attention_layer",
                               "residual_norm", "quantized_linear", "quantized_switch_linear"]
    assert list_patterns("mistral") == ["swiglu_mlp"]
    assert list_patterns("gemma2") == ["geglu_mlp"]
    assert list_patterns("qwen3_moe") == ["swiglu_mlp", "moe_mlp", "qk_norm_rope"]
    assert list_patterns("llama") == ["swiglu_mlp"]  # no per-head q/k norm: nothing for qk_norm_rope
    assert list_patterns("lfm2_moe") == ["swiglu_mlp", "moe_mlp", "qk_norm_rope", "conv_layer"]
    assert list_patterns("bert") == []
    assert list_main(["list"]) == 0
    out = capsys.readouterr().out
    for name in supported_model_types():
        assert name in out
    assert "residual_norm (opt-in)" in out and "excluded for fidelity" in out
    assert "attention_layer (opt-in)" in out  # qwen3 and others
    # opt-ins a capsule made CUDA defaults say so, with their measurement
    assert "attention_layer (opt-in; on by default on CUDA)" in out
    assert "why: gpt_oss quantized_linear on by default on CUDA: with both and the experts on zk.qmv's core" in out
    traced_off = {line.split()[0] for line in out.splitlines() if line.rstrip().endswith("moe_mlp not traced")}
    assert traced_off == {"qwen2_moe", "qwen3_next", "qwen3_5", "qwen3_5_moe"}, "sigmoid-gated shared experts only"
    fused = {line.split()[0] for line in out.splitlines() if "projections fused on CUDA" in line
             and not line.startswith("why")}
    assert fused == {"qwen3_moe", "lfm2_moe", "gpt_oss", "mixtral"}  # registry.FUSE_ON_CUDA, each with its capsules
    assert "gpt_oss moe_mlp off on CUDA: unfused" in out
    assert list_main(["bogus"]) == 2


def test_version_parse():
    assert _parse("0.32.2") == (0, 32, 2)
    assert _parse("0.33.0rc1") == (0, 33, 0)
    assert _parse("1.0") == (1, 0)


def test_version_guard_names_the_supported_range(monkeypatch):
    import mlx_lm

    assert check_mlx_lm_version() == mlx_lm.__version__
    monkeypatch.setattr(mlx_lm, "__version__", "0.33.1")
    with pytest.raises(ImportError, match=r"supports mlx-lm >=0.32,<0.33 .*found mlx-lm 0.33.1"):
        check_mlx_lm_version()

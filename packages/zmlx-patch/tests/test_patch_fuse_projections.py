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


@pytest.mark.parametrize("core", [False, True])
def test_qmv_core_switch_reaches_both_expert_launches_exactly(core, monkeypatch):
    """_experts.QMV_CORE (on by default; ab_decode's 'noq4core' turns it off) hands qmv_core to both fused expert
    ops; results are unchanged."""
    from zmlx import kernels as zk
    from zmlx.patch.patterns import _experts

    model = tiny.build("lfm2_moe", quantized=True)
    one = tiny.tokens(1)
    want = model(one)
    seen = []
    for name in ("moe_gate_up", "moe_down_combine"):
        real = getattr(zk, name)

        def spy(*a, _real=real, _name=name, **kw):
            seen.append((_name, kw.get("qmv_core")))
            return _real(*a, **kw)

        monkeypatch.setattr(zk, name, spy)
    monkeypatch.setattr(_experts, "QMV_CORE", core)
    patch(model, verbose=False, fuse_projections=True, compile_blocks=False)
    try:
        assert mx.array_equal(model(one), want).item()
    finally:
        unpatch(model)
    assert {n for n, _ in seen} == {"moe_gate_up", "moe_down_combine"} and {c for _, c in seen} == {core}


def test_qmv_core_switch_reaches_the_dense_gate_up(monkeypatch):
    from zmlx import kernels as zk
    from zmlx.patch.patterns import _experts

    model = tiny.build("llama", quantized=True)
    one = tiny.tokens(1)
    want = model(one)
    seen = []
    real = zk.dense_gate_up
    monkeypatch.setattr(zk, "dense_gate_up", lambda *a, **kw: seen.append(kw.get("qmv_core")) or real(*a, **kw))
    monkeypatch.setattr(_experts, "QMV_CORE", True)
    patch(model, verbose=False, fuse_projections=True)
    try:
        assert mx.array_equal(model(one), want).item()
    finally:
        unpatch(model)
    assert seen and set(seen) == {True}

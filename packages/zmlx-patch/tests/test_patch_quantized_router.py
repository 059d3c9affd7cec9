"""With ``patch(fuse_router=True)`` (off by default: slower on the H100's device, docs/perf-notes.md v7), moe_mlp
routes through zk.quantized_router (router projection + routing, one launch on CUDA) exactly where the router is an
affine-quantized ``QuantizedLinear``; the block's output is the unpatched one (on the CPU, bit for bit)."""

import mlx.core as mx
import pytest
import zmlx_patch_tiny as tiny
from zmlx.patch import patch, unpatch


def _spy(monkeypatch):
    return tiny.count_kernel_calls(monkeypatch, ("quantized_router",))


@pytest.mark.parametrize("family", ["qwen3_moe", "gpt_oss", "mixtral", "lfm2_moe"])
def test_quantized_router_taken_and_exact(family, monkeypatch):
    model = tiny.build(family, quantized=True)  # mlx-lm's quant predicate: 8-bit routers (gpt_oss: with a bias)
    one, many = tiny.tokens(1), tiny.tokens(5)
    want_one, want_many = model(one), model(many)
    calls = _spy(monkeypatch)
    patch(model, verbose=False, fuse_router=True)
    assert mx.array_equal(model(one), want_one).item()
    assert mx.array_equal(model(many), want_many).item()
    assert calls["quantized_router"] > 0
    unpatch(model)


def test_off_by_default_routes_the_logits_as_before(monkeypatch):
    model = tiny.build("qwen3_moe", quantized=True)
    one = tiny.tokens(1)
    want = model(one)
    calls = _spy(monkeypatch)
    patch(model, verbose=False)
    assert mx.array_equal(model(one), want).item()
    assert calls["quantized_router"] == 0
    unpatch(model)


@pytest.mark.parametrize("mode", ["affine", "mxfp4"])
def test_only_affine_routers_are_fused(mode, monkeypatch):
    """A float router keeps its projection; so does one quantized in another mode (its numerics are not qmv's)."""
    import mlx.nn as nn

    model = tiny.build("qwen3_moe")  # float32: routers are nn.Linear
    nn.quantize(model, group_size=32 if mode == "mxfp4" else 64, bits=4 if mode == "mxfp4" else 8, mode=mode,
                class_predicate=lambda path, m: path.endswith("mlp.gate"))
    routers = [m for p, m in model.named_modules() if p.endswith("mlp.gate")]
    assert routers and all(isinstance(r, nn.QuantizedLinear) and r.mode == mode for r in routers)
    one = tiny.tokens(1)
    want = model(one)
    calls = _spy(monkeypatch)
    patch(model, verbose=False, fuse_router=True)
    assert mx.array_equal(model(one), want).item()
    assert (calls["quantized_router"] > 0) == (mode == "affine")
    unpatch(model)


def test_float_router_keeps_its_projection(monkeypatch):
    model = tiny.build("qwen3_moe")
    one = tiny.tokens(1)
    want = model(one)
    calls = _spy(monkeypatch)
    patch(model, verbose=False, fuse_router=True)
    assert mx.array_equal(model(one), want).item()
    assert calls["quantized_router"] == 0
    unpatch(model)


def test_a_router_subclass_keeps_its_own_call(monkeypatch):
    """Only the exact QuantizedLinear class: a subclass (an adapter, say) may compute something else."""
    import mlx.nn as nn

    class Scaled(nn.QuantizedLinear):
        def __call__(self, x):
            return super().__call__(x) * 2

    model = tiny.build("qwen3_moe", quantized=True)
    for _, layer in model.named_modules():
        if type(getattr(layer, "gate", None)) is nn.QuantizedLinear:
            layer.gate.__class__ = Scaled
    one = tiny.tokens(1)
    want = model(one)
    calls = _spy(monkeypatch)
    patch(model, verbose=False, fuse_router=True)
    assert mx.array_equal(model(one), want).item()
    assert calls["quantized_router"] == 0
    unpatch(model)

"""Fused expert ops on the CPU (their references): the residual epilogue of down+combine, and its guards."""

import mlx.core as mx
import pytest
from zmlx import kernels as zk
from zmlx.kernels.ops import moe_experts


@pytest.mark.parametrize("fp32", [False, True])
def test_down_combine_residual_is_the_layers_add_after_the_combine(fp32):
    x, inds, scores, gate, up, down, _ = moe_experts.make_case(8, 3, 256, 128, 64, 4, False, mx.random.key(3))
    kw = dict(group_size=64, bits=4)
    h = zk.moe_gate_up(x, inds, gate, up, activation="swiglu", **kw)
    sc = scores.astype(mx.float32) if fp32 else scores
    y = zk.moe_down_combine(h, inds, down, sc, fp32=fp32, **kw)
    res = mx.where(mx.arange(256) % 3 == 0, y, mx.random.normal((256,), key=mx.random.key(4)).astype(y.dtype))
    got = zk.moe_down_combine(h, inds, down, sc, fp32=fp32, residual=res, **kw)
    assert got.dtype == y.dtype and mx.array_equal(got, res + y).item()


def test_down_combine_rejects_a_residual_it_would_round_differently():
    x, inds, scores, gate, up, down, _ = moe_experts.make_case(8, 2, 256, 128, 64, 4, False, mx.random.key(5))
    kw = dict(group_size=64, bits=4, fp32=True)
    h = zk.moe_gate_up(x, inds, gate, up, activation="swiglu", group_size=64, bits=4)
    with pytest.raises(ValueError, match="residual"):
        zk.moe_down_combine(h, inds, down, scores, residual=mx.zeros((256,), mx.float32), **kw)
    with pytest.raises(ValueError, match="residual"):
        zk.moe_down_combine(h, inds, down, scores, residual=mx.zeros((255,), mx.bfloat16), **kw)


def test_every_down_combine_kernel_has_a_residual_case():
    variants = [c.variant for c in moe_experts.check_cases(seed=0) if c.variant.startswith("down_combine")]
    with_res = [v for v in variants if v.endswith("+residual")]
    assert with_res and len(with_res) == len(moe_experts.CASES)
    assert any("mma" in v for v in with_res) and any("qmv" in v for v in with_res)

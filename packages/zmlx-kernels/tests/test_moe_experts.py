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
    # 4-bit top-k < 8 cases also run on zk.qmv's core (moe_experts_q4), in both loop forms
    q4 = [c for c in moe_experts.CASES if c[6] == 4 and c[2] < 8]
    assert with_res and len(with_res) == len(moe_experts.CASES) + 2 * len(q4) and q4
    assert any("mma" in v for v in with_res) and any("qmv" in v for v in with_res)
    assert sum("qmv_core" in v for v in with_res) == 2 * len(q4)
    assert sum(v.endswith("qmv_core batch fp32=True +residual") for v in with_res) == len(q4)


def test_qmv_core_is_a_launch_choice_the_cpu_ignores():
    # off the GPU both paths are the reference: identical results, whatever the flag
    x, inds, scores, gate, up, down, (gb, ub, db) = moe_experts.make_case(31, 3, 192, 320, 64, 4, True,
                                                                         mx.random.key(7))
    kw = dict(group_size=64, bits=4)
    h = [zk.moe_gate_up(x, inds, gate, up, activation="swiglu_oai", gate_bias=gb, up_bias=ub, qmv_core=c, **kw)
         for c in (False, True)]
    y = [zk.moe_down_combine(h[0], inds, down, scores, fp32=True, down_bias=db, qmv_core=c, **kw)
         for c in (False, True)]
    assert mx.array_equal(h[0], h[1]).item() and mx.array_equal(y[0], y[1]).item()
    assert mx.array_equal(h[0], moe_experts.moe_gate_up_reference(x, inds, gate, up, activation="swiglu_oai",
                                                                  gate_bias=gb, up_bias=ub, **kw)).item()

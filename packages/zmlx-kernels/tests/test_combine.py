"""MoE combine reference on the CPU: bit-identical to the families' expressions, right against float64."""

import mlx.core as mx
import numpy as np
import pytest
from zmlx.kernels.emit import emit
from zmlx.kernels.ops import combine as C

DTYPES = (mx.float32, mx.float16, mx.bfloat16)


def _same(a, b):
    mx.eval(a, b)
    assert a.dtype == b.dtype and a.shape == b.shape
    assert np.array_equal(np.array(a.astype(mx.float32)), np.array(b.astype(mx.float32)))


def _inputs(lead, k, d, ydtype, sdtype, seed):
    k1, k2 = mx.random.split(mx.random.key(seed))
    y = (3 * mx.random.normal((*lead, k, d), key=k1)).astype(ydtype)
    scores = mx.softmax(mx.random.normal((*lead, k), key=k2), axis=-1).astype(sdtype)
    return y, scores


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("lead,k,d", [((1, 1), 8, 64), ((2, 3), 4, 33), ((5,), 1, 31), ((2,), 16, 123)])
def test_matches_family_expressions(dtype, lead, k, d):
    y, s = _inputs(lead, k, d, dtype, dtype, k * d)
    # qwen3_moe / deepseek_v3 / glm4_moe / granitemoe
    _same(C.moe_combine(y, s, fp32=True), (y * s[..., None]).sum(axis=-2).astype(y.dtype))
    # mixtral / qwen2_moe / olmoe / lfm2_moe / minimax / qwen3_next
    _same(C.moe_combine(y, s, fp32=False), (y * s[..., None]).sum(axis=-2))
    # gpt_oss
    _same(C.moe_combine(y, s, fp32=False), (y * mx.expand_dims(s, axis=-1)).sum(axis=-2))


@pytest.mark.parametrize("dtype", (mx.float16, mx.bfloat16))
def test_float32_scores_promote(dtype):
    # granitemoe / deepseek: float32 weights make the products and the sum float32, cast once at the end.
    y, s = _inputs((3,), 8, 64, dtype, mx.float32, 1)
    assert C.moe_combine(y, s, fp32=False).dtype == mx.float32
    out = C.moe_combine(y, s, fp32=True)
    assert out.dtype == dtype
    _same(out, (y * s[..., None]).sum(axis=-2).astype(y.dtype))


@pytest.mark.parametrize("check", C.reference_checks(seed=11), ids=lambda c: f"{c.variant}/{c.dtype}")
def test_reference_against_float64(check):
    assert check.passed, f"{check.variant}/{check.dtype}: error {check.max_error} > {check.tolerance}"


def test_rejects_mismatched_shapes():
    y, s = _inputs((2,), 4, 8, mx.float32, mx.float32, 0)
    with pytest.raises(ValueError, match="moe_combine"):
        C.moe_combine(y, s[..., :3], fp32=False)


@pytest.mark.parametrize("backend", ["metal", "cuda"])
def test_emission(backend):
    specs = C.kernel_specs()
    assert set(specs) == {"moe_combine"}
    src = emit(specs["moe_combine"], backend)
    assert specs["moe_combine"].body in src.source and "zm_bid" in src.source


def test_check_cases_run_on_cpu():
    for case in C.check_cases(seed=2):
        for a, b in zip(case.kernel(), case.reference(), strict=True):
            _same(a, b)

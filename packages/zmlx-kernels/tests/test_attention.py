"""q/k per-head RMSNorm + RoPE: the reference is the attention block's own primitives, op for op."""

import mlx.core as mx
import numpy as np
import pytest
from zmlx import kernels as zk
from zmlx.kernels.ops import attention

DTYPES = [mx.float32, mx.float16, mx.bfloat16]


def _qk(b, seq, hq, hk, d, dtype, seed=0):
    k = mx.random.split(mx.random.key(seed), 4)
    q = (4 * mx.random.normal((b, seq, hq, d), key=k[0])).astype(dtype)
    kk = mx.random.normal((b, seq, hk, d), key=k[1]).astype(dtype)
    qw = (1 + 0.2 * mx.random.normal((d,), key=k[2])).astype(dtype)
    kw = (1 + 0.2 * mx.random.normal((d,), key=k[3])).astype(dtype)
    return q, kk, qw, kw


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("shape", [(1, 1, 31, 1, 64), (2, 33, 6, 2, 128), (1, 3, 5, 3, 32)])
@pytest.mark.parametrize("traditional", [False, True])
def test_matches_the_attention_blocks_own_ops(dtype, shape, traditional):
    q, k, qw, kw = _qk(*shape, dtype)
    got_q, got_k = zk.qk_norm_rope(q, k, qw, kw, 1e-6, 1e-5, offset=123, base=1e6, scale=1.0,
                                   traditional=traditional)
    # what mlx_lm.models.qwen3.Attention does between its projections and the cache
    rope = lambda x: mx.fast.rope(x, shape[-1], traditional=traditional, base=1e6, scale=1.0, offset=123)  # noqa: E731
    want_q = rope(mx.fast.rms_norm(q, qw, 1e-6).transpose(0, 2, 1, 3))
    want_k = rope(mx.fast.rms_norm(k, kw, 1e-5).transpose(0, 2, 1, 3))
    assert got_q.shape == (shape[0], shape[2], shape[1], shape[4]) and got_k.shape == want_k.shape
    assert got_q.dtype == dtype
    assert mx.array_equal(got_q, want_q).item() and mx.array_equal(got_k, want_k).item()


def test_offset_moves_the_rotation():
    q, k, qw, kw = _qk(1, 1, 4, 2, 64, mx.float32)
    a, _ = zk.qk_norm_rope(q, k, qw, kw, 1e-6, 1e-6, offset=5, base=10000.0)
    b, _ = zk.qk_norm_rope(q, k, qw, kw, 1e-6, 1e-6, offset=6, base=10000.0)
    assert not np.allclose(np.array(a), np.array(b))
    # the norm is rotation-invariant: both keep the RMSNorm'd length per head
    na = np.linalg.norm(np.array(a), axis=-1)
    nb = np.linalg.norm(np.array(b), axis=-1)
    np.testing.assert_allclose(na, nb, rtol=1e-5)


def test_reference_against_float64():
    checks = attention.reference_checks(seed=3)
    assert len(checks) == 3
    assert all(c.passed for c in checks), checks


@pytest.mark.parametrize("bad", ["rank", "heads_dim", "dtype", "odd"])
def test_bad_shapes_raise(bad, monkeypatch):
    q, k, qw, kw = _qk(1, 1, 4, 2, 64, mx.float16)
    if bad == "rank":
        q = q.reshape(1, 4, 64)
    elif bad == "heads_dim":
        k = mx.zeros((1, 1, 2, 32), dtype=mx.float16) + 1
    elif bad == "dtype":
        kw = kw.astype(mx.float32)
    else:
        q, k, qw, kw = _qk(1, 1, 4, 2, 63, mx.float16)
    # the checks guard the kernel path; force it (the CPU would take the reference)
    monkeypatch.setattr(attention, "target_for", lambda stream=None: "cuda")
    with pytest.raises(ValueError, match="qk_norm_rope"):
        zk.qk_norm_rope(q, k, qw, kw, 1e-6, 1e-6, offset=0, base=10000.0)


def test_log2_base_is_float32_log2():
    for base in (10000.0, 1e6, 500000.0, 8.0):
        got = attention._log2f(base)
        assert np.float32(got) == got
        assert abs(got - np.log2(base)) <= 2 * np.spacing(np.float32(np.log2(base)))
    assert attention._log2f(8.0) == 3.0


@pytest.mark.parametrize("offset", [0, 31, 4097])
def test_offset_as_a_device_array_rotates_as_the_int(offset):
    # a traced decode step passes its position in as one int32
    q, k, qw, kw = _qk(1, 1, 6, 2, 64, mx.bfloat16)
    args = dict(base=1e6, scale=1.0)
    want = zk.qk_norm_rope(q, k, qw, kw, 1e-6, 1e-6, offset=offset, **args)
    got = zk.qk_norm_rope(q, k, qw, kw, 1e-6, 1e-6, offset=mx.array([offset], dtype=mx.int32), **args)
    assert all(mx.array_equal(a, b).item() for a, b in zip(got, want, strict=True))

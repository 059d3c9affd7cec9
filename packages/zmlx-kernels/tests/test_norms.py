"""Residual add + RMSNorm reference: the decoder layer's own two ops."""

import mlx.core as mx
import numpy as np
import pytest
from zmlx import kernels as zk
from zmlx.kernels.ops import norms

DTYPES = [mx.float32, mx.float16, mx.bfloat16]


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("shape", [(1, 31), (3, 33), (2, 3, 123)])
def test_add_rms_norm_is_add_then_fast_rms_norm(dtype, shape):
    k = mx.random.split(mx.random.key(0), 3)
    x = mx.random.normal(shape, key=k[0]).astype(dtype)
    r = (3 * mx.random.normal(shape, key=k[1])).astype(dtype)
    w = (1 + 0.1 * mx.random.normal((shape[-1],), key=k[2])).astype(dtype)
    h, normed = zk.add_rms_norm(x, r, w, 1e-6)
    assert mx.array_equal(h, x + r).item()
    assert mx.array_equal(normed, mx.fast.rms_norm(x + r, w, 1e-6)).item()
    assert h.dtype == dtype and normed.dtype == dtype


def test_reference_against_float64():
    checks = norms.reference_checks(seed=3)
    assert len(checks) == 3
    assert all(c.passed for c in checks), checks


def test_reference_detects_wrong_eps():
    x = mx.random.normal((2, 33), key=mx.random.key(1))
    r = mx.random.normal((2, 33), key=mx.random.key(2))
    w = mx.ones((33,))
    _, a = zk.add_rms_norm(x * 1e-3, r * 1e-3, w, 1e-6)
    _, b = zk.add_rms_norm(x * 1e-3, r * 1e-3, w, 1e-2)
    assert not np.allclose(np.array(a), np.array(b))

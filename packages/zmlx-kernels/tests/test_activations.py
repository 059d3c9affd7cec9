"""Gated activations: references are mlx-lm's own math; CPU dispatch returns the reference exactly."""

import math

import mlx.core as mx
import mlx.nn as nn
import numpy as np
import pytest
from zmlx import kernels as zk
from zmlx.kernels.ops import activations as act

DTYPES = [mx.float32, mx.float16, mx.bfloat16]
SHAPES = [(1, 31), (3, 33), (2, 2, 123)]


def _pair(shape, dtype, seed):
    k1, k2 = mx.random.split(mx.random.key(seed))
    return (4 * mx.random.normal(shape, key=k1)).astype(dtype), (4 * mx.random.normal(shape, key=k2)).astype(dtype)


def _f64(a):
    return np.array(a.astype(mx.float32), dtype=np.float64)


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("shape", SHAPES)
def test_swiglu_is_mlx_lm_swiglu(dtype, shape):
    mlx_lm_swiglu = pytest.importorskip("mlx_lm.models.activations").swiglu

    g, u = _pair(shape, dtype, 1)
    out = zk.swiglu(g, u)
    assert out.dtype == dtype and out.shape == shape
    assert mx.array_equal(out, mlx_lm_swiglu(g, u)).item()


@pytest.mark.parametrize("dtype", DTYPES)
def test_swiglu_oai_is_mlx_lm_swiglu_oai(dtype):
    mlx_lm_oai = pytest.importorskip("mlx_lm.models.activations").swiglu_oai

    g, u = _pair((5, 123), dtype, 2)
    assert mx.array_equal(zk.swiglu_oai(g, u), mlx_lm_oai(g, u)).item()
    # the clamp is exercised: some |up| and gate values exceed the limit of 7
    assert (mx.abs(u) > 7).any().item() and (g > 7).any().item()
    assert mx.array_equal(zk.swiglu_oai(g, u, alpha=1.5, limit=3.0), mlx_lm_oai(g, u, alpha=1.5, limit=3.0)).item()


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("approximate", [False, True])
def test_geglu_matches_nn_gelu_variant(dtype, approximate):
    g, u = _pair((3, 33), dtype, 3)
    want = (nn.gelu_approx if approximate else nn.gelu)(g) * u
    assert mx.array_equal(zk.geglu(g, u, approximate=approximate), want).item()


def test_geglu_exact_and_tanh_differ():
    # Gemma (erf) and Gemma 2 (tanh) must not be interchangeable: the two GELUs differ measurably in float32.
    g, u = _pair((4, 123), mx.float32, 4)
    diff = mx.abs(zk.geglu(g, u, approximate=False) - zk.geglu(g, u, approximate=True)).max().item()
    assert diff > 1e-5


@pytest.mark.parametrize("dtype", DTYPES)
def test_references_against_float64(dtype):
    g, u = _pair((7, 123), dtype, 5)
    gd, ud = _f64(g), _f64(u)
    tol = {mx.float32: 1e-5, mx.float16: 4e-3, mx.bfloat16: 3e-2}[dtype]
    erf = np.vectorize(math.erf)
    want = {
        "swiglu": gd / (1 + np.exp(-gd)) * ud,
        "geglu_erf": 0.5 * gd * (1 + erf(gd / math.sqrt(2))) * ud,
        "geglu_tanh": 0.5 * gd * (1 + np.tanh(math.sqrt(2 / math.pi) * (gd + 0.044715 * gd**3))) * ud,
    }
    got = {
        "swiglu": zk.swiglu(g, u),
        "geglu_erf": zk.geglu(g, u, approximate=False),
        "geglu_tanh": zk.geglu(g, u, approximate=True),
    }
    for name in want:
        err = np.max(np.abs(_f64(got[name]) - want[name]) / (np.abs(want[name]) + 1))
        assert err < tol, (name, err)


def test_reference_checks_all_pass():
    checks = act.reference_checks(seed=7)
    assert len(checks) == len(act.SPECS) * len(DTYPES)
    assert all(c.passed for c in checks), [c for c in checks if not c.passed]


def test_shape_mismatch_rejected_on_gpu_path():
    g, u = _pair((2, 31), mx.float32, 6)
    with pytest.raises(ValueError, match="share shape"):
        act._run("swiglu", g, u[:, :30], (), None)

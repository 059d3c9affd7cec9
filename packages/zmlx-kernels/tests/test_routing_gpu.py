"""On the GPU: the fused routing and combine kernels against their references, family by family.

Fresh random inputs with many exact ties, outputs poisoned with NaN first. Indices must be identical (same
experts, same order); weights and combine outputs bit-identical on CUDA (see routing_kernels.py, combine.py).
"""

import mlx.core as mx
import numpy as np
import pytest
from zmlx.kernels.backend import gpu_backend, poison_outputs
from zmlx.kernels.ops import combine as C
from zmlx.kernels.ops import routing as R
from zmlx.kernels.ops._base import TOLERANCE

pytestmark = [pytest.mark.gpu, pytest.mark.skipif(gpu_backend() is None, reason="needs a Metal or CUDA GPU")]

DTYPES = (mx.float32, mx.float16, mx.bfloat16)
# (family, op, keyword arguments); "bias" is filled with a random float32 bias.
FAMILIES = [
    ("qwen3_moe", "softmax_topk", dict(renormalize=True)),
    ("qwen3_next", "softmax_topk", dict(renormalize=False)),
    ("qwen2_moe", "softmax_topk", dict(renormalize=False, neg_select=True)),
    ("olmoe", "softmax_topk", dict(renormalize=True, neg_select=True)),
    ("mixtral", "topk_softmax", dict(neg_select=True)),
    ("gpt_oss", "topk_softmax", dict()),
    ("granitemoe", "topk_softmax", dict(fp32=True)),
    ("lfm2_moe", "sigmoid_topk", dict(bias=True, renormalize=True, eps=1e-6, scale=2.5)),
    ("lfm2_nobias", "sigmoid_topk", dict(renormalize=True, eps=1e-6, scale=1.0)),
    ("minimax", "sigmoid_topk", dict(bias=True, renormalize=True, eps=1e-20, neg_select=True)),
    ("deepseek_v3", "grouped_sigmoid_topk", dict(n_group=8, topk_group=4, renormalize=True, scale=2.5)),
    ("glm4_moe", "grouped_sigmoid_topk", dict(n_group=1, topk_group=1, renormalize=True, scale=1.0)),
]
SHAPES = [((1, 1), 128, 8), ((3,), 33, 2), ((2, 5), 123, 4), ((4,), 512, 16), ((2,), 64, 6), ((7,), 31, 1)]
OPS = {"softmax_topk": R.softmax_topk, "topk_softmax": R.topk_softmax, "sigmoid_topk": R.sigmoid_topk,
       "grouped_sigmoid_topk": R.grouped_sigmoid_topk}
REFS = {"softmax_topk": R.softmax_topk_reference, "topk_softmax": R.topk_softmax_reference,
        "sigmoid_topk": R.sigmoid_topk_reference, "grouped_sigmoid_topk": R.grouped_sigmoid_topk_reference}


def _np(a):
    return np.array(a.astype(mx.float32)) if a.dtype != mx.uint32 else np.array(a)


@pytest.mark.parametrize("dtype", DTYPES, ids=str)
@pytest.mark.parametrize("lead,e,k", SHAPES)
@pytest.mark.parametrize("family,op,kw0", FAMILIES, ids=[f[0] for f in FAMILIES])
def test_routing_kernel_matches_reference(family, op, kw0, lead, e, k, dtype):
    if op == "grouped_sigmoid_topk" and e % kw0["n_group"]:
        pytest.skip("experts not divisible by n_group")
    for seed in range(3):
        logits, kw = R.make_inputs(op, e, lead, kw0, dtype, mx.random.key(1000 * seed + e + k))
        with mx.stream(mx.gpu), poison_outputs():
            got = OPS[op](logits, k, **kw)
            want = REFS[op](logits, k, **kw)
            mx.eval(got, want)
        assert got[0].dtype == want[0].dtype and got[1].dtype == want[1].dtype
        gi, wi = _np(got[0]), _np(want[0])
        assert np.array_equal(gi, wi), f"{family}: indices differ\n{gi}\n{wi}"
        gw, ww = _np(got[1]), _np(want[1])
        assert not np.isnan(gw).any(), "kernel left weights unwritten"
        exact = gpu_backend() == "cuda" or op == "topk_softmax" or not kw.get("renormalize", True)
        if exact:
            assert np.array_equal(gw, ww), f"{family}: weights not bit-identical, max diff {np.abs(gw - ww).max()}"
        else:
            assert np.abs(gw - ww).max() <= TOLERANCE[want[1].dtype]


@pytest.mark.parametrize("dtype", DTYPES, ids=str)
@pytest.mark.parametrize("scores_f32", [False, True])
@pytest.mark.parametrize("fp32", [False, True])
@pytest.mark.parametrize("lead,k,d", [((1, 1), 8, 64), ((3,), 4, 96), ((2, 2), 16, 128), ((5,), 1, 32)])
def test_combine_kernel_bit_identical(lead, k, d, fp32, scores_f32, dtype):
    y, s = C.make_inputs(lead, k, d, scores_f32, dtype, mx.random.key(k * d))
    with mx.stream(mx.gpu), poison_outputs():
        got = C.moe_combine(y, s, fp32=fp32)
        want = C.moe_combine_reference(y, s, fp32=fp32)
        mx.eval(got, want)
    assert got.dtype == want.dtype and got.shape == want.shape
    g, w = _np(got), _np(want)
    assert not np.isnan(g).any(), "kernel left outputs unwritten"
    if gpu_backend() == "cuda":
        assert np.array_equal(g, w), f"max diff {np.abs(g - w).max()}"
    else:
        assert np.abs(g - w).max() <= TOLERANCE[want.dtype] * k

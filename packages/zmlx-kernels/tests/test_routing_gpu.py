"""On the GPU: the fused routing and combine kernels against their references, family by family.

Fresh random inputs with many exact ties (one row entirely tied), outputs poisoned with NaN first. Indices must
be identical (same experts, same order); weights and combine outputs bit-identical on CUDA (see
routing_kernels.py, combine.py). Each routing instantiation (dtype + template constants: E, k, flags) is a
separate NVRTC compile of ~0.5-2 s on CUDA, so every family runs once, at the (E, k) its models decode with, in
one dtype; the dtypes rotate so each kernel variant meets every dtype. Odd sizes per variant x dtype are in
routing.check_cases (test_kernels_gpu.py).

Kernel instantiations triggered here: routing 12 (one per family); combine 0 new (its 5 (P, O) templates are
the ones combine.check_cases compiles; 5 if this module runs alone). Before this cut: 186.
"""

import mlx.core as mx
import numpy as np
import pytest
from zmlx.kernels.backend import gpu_backend, poison_outputs
from zmlx.kernels.ops import combine as C
from zmlx.kernels.ops import routing as R
from zmlx.kernels.ops._base import TOLERANCE

pytestmark = [pytest.mark.gpu, pytest.mark.skipif(gpu_backend() is None, reason="needs a Metal or CUDA GPU")]

F32, F16, BF16 = mx.float32, mx.float16, mx.bfloat16
# (family, op, keyword arguments, logits dtype, experts, k): the decode shape of a model of that family.
# "bias" is filled with a random float32 bias. Per op the three dtypes each appear at least once.
FAMILIES = [
    ("qwen3_moe", "softmax_topk", dict(renormalize=True), BF16, 128, 8),  # Qwen3-30B-A3B
    ("qwen3_next", "softmax_topk", dict(renormalize=False), F32, 512, 10),  # Qwen3-Next: the 512-expert limit
    ("qwen2_moe", "softmax_topk", dict(renormalize=False, neg_select=True), F16, 60, 4),  # Qwen1.5-MoE-A2.7B
    ("olmoe", "softmax_topk", dict(renormalize=True, neg_select=True), BF16, 64, 8),
    ("mixtral", "topk_softmax", dict(neg_select=True), BF16, 8, 2),  # Mixtral 8x7B
    ("gpt_oss", "topk_softmax", dict(), F16, 32, 4),  # gpt-oss-20b
    ("granitemoe", "topk_softmax", dict(fp32=True), F32, 40, 8),
    ("lfm2_moe", "sigmoid_topk", dict(bias=True, renormalize=True, eps=1e-6, scale=2.5), BF16, 32, 4),  # LFM2-8B
    ("lfm2_nobias", "sigmoid_topk", dict(renormalize=True, eps=1e-6, scale=1.0), F16, 33, 3),  # odd size
    ("minimax", "sigmoid_topk", dict(bias=True, renormalize=True, eps=1e-20, neg_select=True, out_dtype=BF16),
     F32, 256, 8),  # MiniMax-M2: float32 router logits, weights cast to the activations' bf16
    ("deepseek_v3", "grouped_sigmoid_topk", dict(n_group=8, topk_group=4, renormalize=True, scale=2.5),
     BF16, 256, 8),  # DeepSeek-V3 / Kimi-K2 layout
    ("glm4_moe", "grouped_sigmoid_topk", dict(n_group=1, topk_group=1, renormalize=True, scale=1.0),
     F16, 128, 8),  # GLM-4.5-Air
]
LEAD = (3, 11)  # 33 token rows, [B, L, E] as a model's router sees them; row count is a runtime size (free)
OPS = {"softmax_topk": R.softmax_topk, "topk_softmax": R.topk_softmax, "sigmoid_topk": R.sigmoid_topk,
       "grouped_sigmoid_topk": R.grouped_sigmoid_topk}
REFS = {"softmax_topk": R.softmax_topk_reference, "topk_softmax": R.topk_softmax_reference,
        "sigmoid_topk": R.sigmoid_topk_reference, "grouped_sigmoid_topk": R.grouped_sigmoid_topk_reference}


def _np(a):
    return np.array(a.astype(mx.float32)) if a.dtype != mx.uint32 else np.array(a)


@pytest.mark.parametrize("family,op,kw0,dtype,e,k", FAMILIES, ids=[f[0] for f in FAMILIES])
def test_routing_kernel_matches_reference(family, op, kw0, dtype, e, k):
    for seed in range(3):  # same instantiation: fresh inputs cost no compile
        logits, kw = R.make_inputs(op, e, LEAD, kw0, dtype, mx.random.key(1000 * seed + e + k))
        # One row where every expert ties: selection is decided by the index order alone.
        logits = mx.concatenate([mx.full((1, 1, e), 0.75, dtype=dtype), logits.reshape(1, -1, e)[:, 1:]], axis=1)
        logits = logits.reshape(*LEAD, e)
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


# (leading shape, k, D): decode shapes of the families above; odd D where the CUDA kernel applies (D % 8 == 0).
COMBINE_SHAPES = [((1, 1), 8, 128), ((3,), 4, 96), ((5,), 2, 33 * 8), ((2, 2), 10, 64)]


@pytest.mark.parametrize("dtype", (F32, F16, BF16), ids=str)
@pytest.mark.parametrize("scores_f32,fp32", [(False, False), (False, True), (True, False), (True, True)])
@pytest.mark.parametrize("lead,k,d", COMBINE_SHAPES)
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

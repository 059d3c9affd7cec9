"""Routing references on the CPU: bit-identical to each mlx-lm family's own gating code, right against float64."""

import mlx.core as mx
import numpy as np
import pytest
from zmlx.kernels.emit import emit
from zmlx.kernels.ops import routing as R
from zmlx.kernels.ops.routing_kernels import geometry

DTYPES = (mx.float32, mx.float16, mx.bfloat16)
SIZES = ((31, 1), (33, 2), (123, 4), (128, 8))


def _logits(e, dtype, seed, lead=(3,)):
    return R.tied_logits((*lead, e), dtype, mx.random.key(seed))


def _same(a, b):
    mx.eval(a, b)
    assert a.dtype == b.dtype and a.shape == b.shape
    assert np.array_equal(np.array(a.astype(mx.float32)), np.array(b.astype(mx.float32)))


def _pair(got, want):
    _same(got[0], want[0])
    _same(got[1], want[1])


# --- each family's gating, copied from mlx_lm/models/<family>.py ---------------------------------------


def qwen3_moe(gates, k, norm_topk_prob):
    gates = mx.softmax(gates, axis=-1, precise=True)
    inds = mx.argpartition(gates, kth=-k, axis=-1)[..., -k:]
    scores = mx.take_along_axis(gates, inds, axis=-1)
    if norm_topk_prob:
        scores /= mx.sum(scores, axis=-1, keepdims=True)
    return inds, scores


def qwen3_next(gates, k, norm_topk_prob):
    gates = mx.softmax(gates, axis=-1, precise=True)
    inds = mx.argpartition(gates, kth=-k, axis=-1)[..., -k:]
    scores = mx.take_along_axis(gates, inds, axis=-1)
    if norm_topk_prob:
        scores = scores / scores.sum(axis=-1, keepdims=True)
    return inds, scores


def qwen2_moe(gates, k):
    gates = mx.softmax(gates, axis=-1, precise=True)
    inds = mx.stop_gradient(mx.argpartition(-gates, kth=k - 1, axis=-1)[..., :k])
    return inds, mx.take_along_axis(gates, inds, axis=-1)


def olmoe(router_logits, k, norm_topk_prob):
    routing_weights = mx.softmax(router_logits, axis=1, precise=True)
    indices = mx.stop_gradient(mx.argpartition(-routing_weights, kth=k - 1, axis=-1)[..., :k])
    scores = mx.take_along_axis(routing_weights, indices, axis=-1)
    if norm_topk_prob:
        scores = scores / scores.sum(axis=-1, keepdims=True)
    return indices, scores


def mixtral(gates, k):
    inds = mx.stop_gradient(mx.argpartition(-gates, kth=k - 1, axis=-1)[..., :k])
    scores = mx.take_along_axis(gates, inds, axis=-1)
    return inds, mx.softmax(scores, axis=-1, precise=True)


def gpt_oss(g, k):
    partitioned_indices = mx.argpartition(g, kth=-k, axis=-1)
    indices = mx.stop_gradient(partitioned_indices[..., -k:])
    experts = mx.take_along_axis(g, indices, axis=-1)
    return indices, mx.softmax(experts, axis=-1, precise=True)


def granitemoe(logits, top_k):
    top_k_idx = mx.stop_gradient(mx.argpartition(logits, kth=-top_k, axis=-1)[..., -top_k:])
    top_k_logits = mx.take_along_axis(logits, top_k_idx, axis=-1)
    return top_k_idx, mx.softmax(top_k_logits.astype(mx.float32), axis=-1)


def lfm2_moe(gate_out, k, expert_bias, norm_topk_prob, routed_scaling_factor, x_dtype):
    routing_weights = mx.sigmoid(gate_out)
    if expert_bias is not None:
        scores_for_routing = routing_weights.astype(mx.float32) + expert_bias
        inds = mx.argpartition(scores_for_routing, kth=-k, axis=-1)[..., -k:]
    else:
        inds = mx.argpartition(routing_weights, kth=-k, axis=-1)[..., -k:]
    scores = mx.take_along_axis(routing_weights, inds, axis=-1)
    if norm_topk_prob:
        scores = scores / (mx.sum(scores, axis=-1, keepdims=True) + 1e-6)
    scores = scores * routed_scaling_factor
    return inds, scores.astype(x_dtype)


def minimax(gates, k, e_score_correction_bias, x_dtype):
    scores = mx.sigmoid(gates)
    orig_scores = scores
    scores = scores + e_score_correction_bias
    inds = mx.argpartition(-scores, kth=k - 1, axis=-1)[..., :k]
    scores = mx.take_along_axis(orig_scores, inds, axis=-1)
    scores = scores / (mx.sum(scores, axis=-1, keepdims=True) + 1e-20)
    return inds, scores.astype(x_dtype)


@mx.compile
def group_expert_select(gates, e_score_correction_bias, top_k, n_group, topk_group, routed_scaling_factor,
                        norm_topk_prob):
    scores = mx.sigmoid(gates.astype(mx.float32))
    orig_scores = scores
    scores = scores + e_score_correction_bias
    if n_group > 1:
        scores = mx.unflatten(scores, axis=-1, shape=(n_group, -1))
        group_scores = mx.topk(scores, 2, axis=-1).sum(axis=-1, keepdims=True)
        k = n_group - topk_group
        group_idx = mx.argpartition(group_scores, kth=k - 1, axis=-2)[..., :k, :]
        scores = mx.put_along_axis(scores, mx.stop_gradient(group_idx), mx.array(0.0), axis=-2)
        scores = mx.flatten(scores, -2, -1)
    k = top_k
    inds = mx.argpartition(-scores, kth=k - 1, axis=-1)[..., :k]
    inds = mx.stop_gradient(inds)
    scores = mx.take_along_axis(orig_scores, inds, axis=-1)
    if top_k > 1 and norm_topk_prob:
        denominator = scores.sum(axis=-1, keepdims=True)
        scores = scores / denominator
    scores = scores * routed_scaling_factor
    return inds, scores


# --- the table in routing.py's docstring, family by family -------------------------------------------


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("e,k", SIZES)
def test_softmax_families(dtype, e, k):
    g = _logits(e, dtype, e * 7 + k)
    for norm in (True, False):
        _pair(R.softmax_topk(g, k, renormalize=norm), qwen3_moe(g, k, norm))
        _pair(R.softmax_topk(g, k, renormalize=norm), qwen3_next(g, k, norm))
        _pair(R.softmax_topk(g, k, renormalize=norm, neg_select=True), olmoe(g, k, norm))
    _pair(R.softmax_topk(g, k, renormalize=False, neg_select=True), qwen2_moe(g, k))
    g3 = _logits(e, dtype, e, lead=(2, 3))  # [B, L, E] as the models call it
    _pair(R.softmax_topk(g3, k, renormalize=True), qwen3_moe(g3, k, True))


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("e,k", SIZES)
def test_topk_softmax_families(dtype, e, k):
    g = _logits(e, dtype, e * 11 + k)
    _pair(R.topk_softmax(g, k, neg_select=True), mixtral(g, k))
    _pair(R.topk_softmax(g, k), gpt_oss(g, k))
    _pair(R.topk_softmax(g, k, fp32=True), granitemoe(g, k))


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("e,k", SIZES)
def test_sigmoid_families(dtype, e, k):
    g = _logits(e, dtype, e * 13 + k)
    bias = R.tied_logits((e,), mx.float32, mx.random.key(e), levels=8.0) / 4
    for b in (bias, None):
        for norm in (True, False):
            for rsf in (1.0, 2.5):
                got = R.sigmoid_topk(g, k, bias=b, renormalize=norm, eps=1e-6, scale=rsf, out_dtype=dtype)
                _pair(got, lfm2_moe(g, k, b, norm, rsf, dtype))
    g32 = g.astype(mx.float32)  # minimax: gate(x.astype(float32))
    got = R.sigmoid_topk(g32, k, bias=bias, renormalize=True, eps=1e-20, neg_select=True, out_dtype=dtype)
    _pair(got, minimax(g32, k, bias, dtype))


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("e,k,n_group,topk_group", [(64, 6, 8, 4), (256, 8, 8, 4), (33, 4, 1, 1), (32, 1, 4, 2)])
def test_grouped_families(dtype, e, k, n_group, topk_group):
    g = _logits(e, dtype, e * 17 + k)
    bias = R.tied_logits((e,), mx.float32, mx.random.key(e + 1), levels=8.0) / 4
    for norm in (True, False):
        for rsf in (1.0, 2.5):
            got = R.grouped_sigmoid_topk(g, k, bias=bias, n_group=n_group, topk_group=topk_group,
                                         renormalize=norm, scale=rsf)
            _pair(got, group_expert_select(g, bias, k, n_group, topk_group, rsf, norm))


def test_grouped_rejects_bad_groups():
    with pytest.raises(ValueError, match="n_group"):
        R.grouped_sigmoid_topk(_logits(33, mx.float32, 0), 2, bias=mx.zeros((33,)), n_group=4, topk_group=2,
                               renormalize=True, scale=1.0)


def test_ties_are_exercised():
    # The check inputs must actually contain ties among the top-k candidates, or the order tests prove little.
    p = mx.softmax(_logits(123, mx.bfloat16, 5), axis=-1, precise=True)
    vals = np.array(p.astype(mx.float32))
    assert any(len(np.unique(row)) < row.size // 4 for row in vals)


# --- references against float64 ------------------------------------------------------------------------


@pytest.mark.parametrize("check", R.reference_checks(seed=7), ids=lambda c: f"{c.variant}/{c.dtype}")
def test_reference_against_float64(check):
    assert check.passed, f"{check.variant}/{check.dtype}: error {check.max_error} > {check.tolerance}"


# --- kernels: emission and launch geometry (the kernels themselves run in test_routing_gpu.py) -----------


def test_kernel_specs_cover_every_variant():
    specs = R.kernel_specs()
    assert set(specs) == {"softmax_topk", "topk_softmax", "sigmoid_topk", "grouped_sigmoid_topk"}
    assert len({s.kernel_name for s in specs.values()}) == 4


@pytest.mark.parametrize("backend", ["metal", "cuda"])
@pytest.mark.parametrize("variant", sorted(R.kernel_specs()))
def test_emission(backend, variant):
    spec = R.kernel_specs()[variant]
    src = emit(spec, backend)
    assert spec.body in src.source and "zm_tid" in src.source
    assert "zmr_better" in src.header and "zmr_warp_sum" in src.header


def test_geometry_matches_mlx_softmax_launch():
    # CUDA: 16 bytes per thread, block = next power of two >= ceil(E / n) (min 32); Metal: 4 per thread, simd-rounded.
    assert geometry("softmax_topk", "cuda", mx.bfloat16, 128) == (32, 8)
    assert geometry("softmax_topk", "cuda", mx.bfloat16, 512) == (64, 8)
    assert geometry("softmax_topk", "cuda", mx.float32, 512) == (128, 4)
    assert geometry("softmax_topk", "cuda", mx.float32, 33) == (32, 4)
    assert geometry("softmax_topk", "metal", mx.float16, 129) == (64, 4)
    assert geometry("topk_softmax", "cuda", mx.float32, 512) == (32, 1)


def test_check_cases_run_on_cpu():
    # On the CPU the public ops are the references, so every case must agree exactly.
    for case in R.check_cases(seed=3)[:12]:
        got, want = case.kernel(), case.reference()
        for a, b in zip(got, want, strict=True):
            _same(a, b)

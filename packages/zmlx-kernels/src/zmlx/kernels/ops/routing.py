"""MoE routing: router logits -> (expert indices, expert weights), exactly as each mlx-lm family computes them.

Every op returns ``(inds, weights)``: ``inds`` is uint32 ``[..., k]`` in the order ``mx.argpartition`` returns
it (the combine sums expert outputs in that order), ``weights`` has the dtype the family's code leaves.
Two selection idioms exist in mlx-lm and they break ties and order differently, hence ``neg_select``:
``argpartition(s, kth=-k)[..., -k:]`` (False) or ``argpartition(-s, kth=k-1)[..., :k]`` (True).

Family -> exact call (``g`` = router logits as the family computes them; ``cfg`` = its config):

=============================  ==================================================================================
qwen3_moe, qwen3_next          ``softmax_topk(g, k, renormalize=cfg.norm_topk_prob)``
(qwen3_5 / qwen3_5_moe)        (combine: qwen3_moe ``moe_combine(..., fp32=True)``, qwen3_next ``fp32=False``)
qwen2_moe                      ``softmax_topk(g, k, renormalize=False, neg_select=True)``
olmoe                          ``softmax_topk(g, k, renormalize=cfg.norm_topk_prob, neg_select=True)``
mixtral                        ``topk_softmax(g, k, neg_select=True)``
gpt_oss                        ``topk_softmax(g, k)``
granitemoe                     ``topk_softmax(g, k, fp32=True)``   (weights float32; combine ``fp32=True``)
lfm2_moe                       ``sigmoid_topk(g, k, bias=expert_bias if cfg.use_expert_bias else None,
                               renormalize=cfg.norm_topk_prob, eps=1e-6, scale=cfg.routed_scaling_factor,
                               out_dtype=x.dtype)``
minimax                        ``sigmoid_topk(g, k, bias=e_score_correction_bias, renormalize=True, eps=1e-20,
                               neg_select=True, out_dtype=x.dtype)`` with ``g = gate(x.astype(float32))``
deepseek_v3, glm4_moe          ``grouped_sigmoid_topk(g, k, bias=e_score_correction_bias, n_group=cfg.n_group,
                               topk_group=cfg.topk_group, renormalize=cfg.norm_topk_prob,
                               scale=cfg.routed_scaling_factor)``  (weights float32; combine ``fp32=True``)
=============================  ==================================================================================

The references below are op for op those families' code (tests/test_routing.py copies each family's lines
and checks ``array_equal``). The fused kernels (routing_kernels.py) reproduce MLX 0.32.4's GPU ops: the
selection rule of ``mx.argpartition`` (a stable ascending sort on CUDA and Metal), the CUDA softmax and small
row-reduce orders, and MLX's elementwise functors. Outside the kernel's range (E > 512, k > 16, dtypes other
than float32/float16/bfloat16) the ops run the reference on every backend.
"""

from __future__ import annotations

import mlx.core as mx
import numpy as np

from ..backend import constant, gpu_backend, launch, target_for
from ._base import DTYPES, REF_TOLERANCE, TOLERANCE, CheckCase, OpInfo, RefCheck, dtype_name
from .routing_kernels import MAX_EXPERTS, MAX_K, SPECS, template

_FLOATS = (mx.float32, mx.float16, mx.bfloat16)

# --- references (pure MLX, op for op the mlx-lm family code) -------------------------------------------


def _select(scores: mx.array, k: int, neg_select: bool) -> mx.array:
    if neg_select:
        return mx.argpartition(-scores, kth=k - 1, axis=-1)[..., :k]
    return mx.argpartition(scores, kth=-k, axis=-1)[..., -k:]


def softmax_topk_reference(logits: mx.array, k: int, *, renormalize: bool, neg_select: bool = False):
    gates = mx.softmax(logits, axis=-1, precise=True)
    inds = _select(gates, k, neg_select)
    scores = mx.take_along_axis(gates, inds, axis=-1)
    if renormalize:
        scores = scores / mx.sum(scores, axis=-1, keepdims=True)
    return inds, scores


def topk_softmax_reference(logits: mx.array, k: int, *, neg_select: bool = False, fp32: bool = False):
    inds = _select(logits, k, neg_select)
    scores = mx.take_along_axis(logits, inds, axis=-1)
    if fp32:
        return inds, mx.softmax(scores.astype(mx.float32), axis=-1)  # granitemoe
    return inds, mx.softmax(scores, axis=-1, precise=True)


def sigmoid_topk_reference(
    logits: mx.array, k: int, *, bias: mx.array | None = None, renormalize: bool = True, eps: float = 1e-6,
    scale: float = 1.0, neg_select: bool = False, out_dtype: mx.Dtype | None = None,
):
    weights = mx.sigmoid(logits)
    sel = weights if bias is None else weights.astype(mx.float32) + bias
    inds = _select(sel, k, neg_select)
    scores = mx.take_along_axis(weights, inds, axis=-1)
    if renormalize:
        scores = scores / (mx.sum(scores, axis=-1, keepdims=True) + eps)
    if scale != 1.0:  # x * 1.0 is x bit for bit; lfm2 multiplies, minimax does not
        scores = scores * scale
    if out_dtype is not None:
        scores = scores.astype(out_dtype)
    return inds, scores


@mx.compile
def _group_expert_select(gates, e_score_correction_bias, top_k, n_group, topk_group, routed_scaling_factor,
                         norm_topk_prob):
    # mlx_lm.models.deepseek_v3.group_expert_select (also glm4_moe), compiled as there.
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
    scores = mx.take_along_axis(orig_scores, inds, axis=-1)
    if top_k > 1 and norm_topk_prob:
        scores = scores / scores.sum(axis=-1, keepdims=True)
    scores = scores * routed_scaling_factor
    return inds, scores


def grouped_sigmoid_topk_reference(
    logits: mx.array, k: int, *, bias: mx.array, n_group: int, topk_group: int, renormalize: bool, scale: float
):
    return _group_expert_select(logits, bias, k, n_group, topk_group, scale, renormalize)


# --- kernels ----------------------------------------------------------------------------------------------

_NO_BIAS = mx.zeros((1,), dtype=mx.float32)


def _fits(logits: mx.array, k: int) -> bool:
    e = logits.shape[-1] if logits.ndim else 0
    return logits.dtype in _FLOATS and 1 <= k <= min(MAX_K, e) and e <= MAX_EXPERTS


def plan(variant, backend, dtype, experts, flat, k, *, wdtype, sum_dtype=None, soft_dtype=None, neg=False,
         renorm=False, bias=None, eps=0.0, scale=1.0, n_group=1, topk_group=1):
    """(template, threads per row, bias input, params input) of a routing launch; router.py shares it."""
    tmpl, tg = template(
        variant, backend, dtype=dtype, wdtype=wdtype, sum_dtype=sum_dtype or dtype, soft_dtype=soft_dtype or dtype,
        experts=experts, k=k, neg=neg, renorm=renorm, has_bias=bias is not None, scale=scale != 1.0,
        n_group=n_group, topk_group=topk_group, flat=flat,
    )
    bias_in = _NO_BIAS if bias is None else bias.astype(mx.float32)
    return tmpl, tg, bias_in, constant((eps, scale))


def _run(variant, logits, k, stream, *, wdtype, **kw):
    backend = target_for(stream)
    tmpl, tg, bias_in, params = plan(variant, backend, logits.dtype, logits.shape[-1], logits.ndim == 1, k,
                                     wdtype=wdtype, **kw)
    rows = logits.size // logits.shape[-1]
    out_shape = (*logits.shape[:-1], k)
    inds, weights = launch(
        SPECS[variant], backend, inputs=(logits, bias_in, params), output_shapes=[out_shape, out_shape],
        output_dtypes=[mx.uint32, wdtype], threads=rows * tg, threadgroup=tg, template=tmpl, stream=stream,
    )
    return inds, weights


# --- public ops -------------------------------------------------------------------------------------------


def softmax_topk(logits: mx.array, k: int, *, renormalize: bool, neg_select: bool = False,
                 stream: mx.Stream | None = None):
    """softmax(precise) over experts, top-k, optional renormalisation (qwen3_moe, qwen2_moe, olmoe, ...)."""
    if target_for(stream) == "cpu" or not _fits(logits, k):
        return softmax_topk_reference(logits, k, renormalize=renormalize, neg_select=neg_select)
    return _run("softmax_topk", logits, k, stream, wdtype=logits.dtype, neg=neg_select, renorm=renormalize)


def topk_softmax(logits: mx.array, k: int, *, neg_select: bool = False, fp32: bool = False,
                 stream: mx.Stream | None = None):
    """top-k on logits, then softmax over the k (mixtral, gpt_oss; granitemoe with ``fp32=True``)."""
    if target_for(stream) == "cpu" or not _fits(logits, k):
        return topk_softmax_reference(logits, k, neg_select=neg_select, fp32=fp32)
    soft = mx.float32 if fp32 else logits.dtype
    return _run("topk_softmax", logits, k, stream, wdtype=soft, soft_dtype=soft, neg=neg_select)


def sigmoid_topk(
    logits: mx.array, k: int, *, bias: mx.array | None = None, renormalize: bool = True, eps: float = 1e-6,
    scale: float = 1.0, neg_select: bool = False, out_dtype: mx.Dtype | None = None,
    stream: mx.Stream | None = None,
):
    """sigmoid scores, float32 bias for selection only, ``/(sum + eps)``, ``* scale`` (lfm2_moe, minimax)."""
    if target_for(stream) == "cpu" or not _fits(logits, k):
        return sigmoid_topk_reference(logits, k, bias=bias, renormalize=renormalize, eps=eps, scale=scale,
                                      neg_select=neg_select, out_dtype=out_dtype)
    return _run("sigmoid_topk", logits, k, stream, wdtype=out_dtype or logits.dtype, neg=neg_select,
                renorm=renormalize, bias=bias, eps=eps, scale=scale)


def grouped_sigmoid_topk(
    logits: mx.array, k: int, *, bias: mx.array, n_group: int, topk_group: int, renormalize: bool, scale: float,
    stream: mx.Stream | None = None,
):
    """DeepSeek-V3 noaux_tc routing (deepseek_v3, glm4_moe): float32 weights."""
    e = logits.shape[-1]
    if n_group < 1 or e % n_group or not 1 <= topk_group <= n_group:
        raise ValueError(f"grouped_sigmoid_topk: {e} experts, n_group={n_group}, topk_group={topk_group} invalid")
    if target_for(stream) == "cpu" or not _fits(logits, k):
        return grouped_sigmoid_topk_reference(logits, k, bias=bias, n_group=n_group, topk_group=topk_group,
                                              renormalize=renormalize, scale=scale)
    return _run("grouped_sigmoid_topk", logits, k, stream, wdtype=mx.float32, sum_dtype=mx.float32, neg=True,
                renorm=renormalize and k > 1, bias=bias, scale=scale, n_group=n_group, topk_group=topk_group)


def kernel_specs():
    return dict(SPECS)


# --- checks -----------------------------------------------------------------------------------------------

# (variant, experts, k, leading shape, keyword arguments, dtype of the GPU check); bias=True means a random
# float32 bias. Each GPU case is one NVRTC compile on CUDA (template: dtype, E, k, flags), so each runs in one
# dtype, rotated so every variant meets all three; reference_checks (CPU-cheap) run every case in every dtype.
# Model decode shapes per family are in tests/test_routing_gpu.py.
_CASES = (
    ("softmax_topk", 33, 2, (3,), dict(renormalize=True), mx.float32),
    ("softmax_topk", 123, 4, (2, 2), dict(renormalize=False, neg_select=True), mx.float16),
    ("softmax_topk", 31, 4, (), dict(renormalize=True), mx.bfloat16),
    ("softmax_topk", 512, 16, (2,), dict(renormalize=True, neg_select=True), mx.bfloat16),  # E and k limits
    ("topk_softmax", 31, 2, (3,), dict(neg_select=True), mx.bfloat16),
    ("topk_softmax", 33, 4, (2, 2), dict(), mx.float32),
    ("topk_softmax", 123, 8, (3,), dict(fp32=True), mx.float16),
    ("sigmoid_topk", 31, 4, (3,), dict(bias=True, renormalize=True, eps=1e-6, scale=2.5), mx.float16),
    ("sigmoid_topk", 123, 8, (2, 2), dict(renormalize=False), mx.bfloat16),
    ("sigmoid_topk", 256, 8, (3,), dict(bias=True, eps=1e-20, neg_select=True, out_dtype=mx.bfloat16), mx.float32),
    ("grouped_sigmoid_topk", 64, 6, (3,), dict(n_group=8, topk_group=4, renormalize=True, scale=2.5), mx.float16),
    ("grouped_sigmoid_topk", 33, 4, (2, 2), dict(n_group=1, topk_group=1, renormalize=False, scale=1.0),
     mx.bfloat16),
    ("grouped_sigmoid_topk", 256, 8, (2,), dict(n_group=8, topk_group=4, renormalize=True, scale=1.0), mx.float32),
)
_OPS = {"softmax_topk": softmax_topk, "topk_softmax": topk_softmax, "sigmoid_topk": sigmoid_topk,
        "grouped_sigmoid_topk": grouped_sigmoid_topk}
_REFS = {"softmax_topk": softmax_topk_reference, "topk_softmax": topk_softmax_reference,
         "sigmoid_topk": sigmoid_topk_reference, "grouped_sigmoid_topk": grouped_sigmoid_topk_reference}


def tied_logits(shape, dtype, key, levels: float = 2.0) -> mx.array:
    """Random logits on a coarse grid (many exact ties after softmax/sigmoid), never exactly zero."""
    return ((mx.round(mx.random.normal(shape, key=key) * levels) + 0.25) / levels).astype(dtype)


def make_inputs(variant, experts, lead, kw, dtype, key, tied=True):
    k1, k2 = mx.random.split(key)
    shape = (*lead, experts)
    logits = tied_logits(shape, dtype, k1) if tied else (2 * mx.random.normal(shape, key=k1)).astype(dtype)
    kw = dict(kw)
    if kw.pop("bias", False) or variant == "grouped_sigmoid_topk":
        kw["bias"] = tied_logits((experts,), mx.float32, k2, levels=8.0) / 4
    return logits, kw


def _uses_sum(variant, kw) -> bool:
    return variant != "topk_softmax" and bool(kw.get("renormalize", variant == "sigmoid_topk"))


def check_cases(seed: int) -> list[CheckCase]:
    cases = []
    key = mx.random.key(seed)
    metal = gpu_backend() == "metal"
    for variant, experts, k, lead, kw0, dtype in _CASES:
        key, sub = mx.random.split(key)
        logits, kw = make_inputs(variant, experts, lead, kw0, dtype, sub)
        wdtype = _REFS[variant](logits, k, **kw)[1].dtype
        # Indices are exact everywhere; Metal weights after a k-sum follow a guessed order (see docstring).
        exact = not (metal and _uses_sum(variant, kw))
        cases.append(CheckCase(
            op="routing", variant=variant, dtype=dtype_name(dtype),
            kernel=lambda v=variant, x=logits, k=k, kw=kw: list(_OPS[v](x, k, **kw)),
            reference=lambda v=variant, x=logits, k=k, kw=kw: list(_REFS[v](x, k, **kw)),
            exact=exact, atol=TOLERANCE[wdtype],
        ))
    return cases


def _float64(variant, x, k, kw):
    """Selection keys and the weight function, in float64, straight from the formulas."""
    bias = np.array(kw["bias"], np.float64) if kw.get("bias") is not None else 0.0
    if variant == "softmax_topk":
        p = np.exp(x - x.max(-1, keepdims=True))
        p /= p.sum(-1, keepdims=True)
        return p, lambda idx: p[idx] / (p[idx].sum() if kw["renormalize"] else 1.0)
    if variant == "topk_softmax":
        return x, lambda idx: np.exp(x[idx] - x[idx].max()) / np.exp(x[idx] - x[idx].max()).sum()
    s = 1 / (1 + np.exp(-x))
    if variant == "sigmoid_topk":
        def weights(idx):
            w = s[idx] / (s[idx].sum() + kw.get("eps", 1e-6)) if kw.get("renormalize", True) else s[idx]
            return w * kw.get("scale", 1.0)
        return s + bias, weights
    sel = (s + bias).reshape(kw["n_group"], -1)
    if kw["n_group"] > 1:
        top2 = np.sort(sel, -1)[:, -2:].sum(-1)
        sel = sel.copy()
        sel[np.argsort(top2, kind="stable")[: kw["n_group"] - kw["topk_group"]]] = 0.0
    renorm = kw["renormalize"] and k > 1
    return sel.reshape(-1), lambda idx: s[idx] / (s[idx].sum() if renorm else 1.0) * kw["scale"]


def reference_checks(seed: int) -> list[RefCheck]:
    """Each reference against float64 math: weights of its picks, and its picks being a top-k (up to rounding)."""
    out = []
    key = mx.random.key(seed)
    for variant, experts, k, _, kw0, _ in _CASES:
        for dtype in DTYPES:
            key, sub = mx.random.split(key)
            logits, kw = make_inputs(variant, experts, (4,), kw0, dtype, sub, tied=False)
            inds, weights = _REFS[variant](logits, k, **kw)
            x64 = np.array(logits.astype(mx.float32), np.float64)
            i64, w64 = np.array(inds).astype(np.int64), np.array(weights.astype(mx.float32), np.float64)
            err = 0.0
            for r in range(x64.shape[0]):
                keys, wfn = _float64(variant, x64[r], k, kw)
                want = wfn(i64[r])
                err = max(err, float(np.max(np.abs(w64[r] - want) / (np.abs(want) + 1e-3))))
                rest = np.delete(keys, i64[r])
                gap = (rest.max() - keys[i64[r]].min()) if rest.size else 0.0
                err = max(err, float(gap) / (abs(float(keys[i64[r]].min())) + 1e-3))
            tol = max(REF_TOLERANCE[dtype], REF_TOLERANCE[weights.dtype])  # out_dtype may round the weights further
            out.append(RefCheck("routing", variant, dtype_name(dtype), err, tol))
    return out


OP = OpInfo(
    name="routing",
    summary="MoE router: scores + top-k + weights (softmax/sigmoid, grouped DeepSeek-V3), argpartition order",
    variants=tuple(SPECS),
    reference="zmlx.kernels.ops.routing.*_reference",
    kernel_specs=kernel_specs,
    check_cases=check_cases,
    reference_checks=reference_checks,
)

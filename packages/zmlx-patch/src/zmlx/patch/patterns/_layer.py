"""The feed-forward half of a pre-norm decoder layer, shared by the patterns that trace whole layers at one token
(conv_layer for LFM2, attention_layer): ``h = x + r; out = h + ffn(norm(h))``."""

from __future__ import annotations

import mlx.core as mx
import mlx.nn as nn
from zmlx import kernels as zk

from .. import _swap
from . import moe_mlp, swiglu_mlp

# Whether a traced layer hands `h` to a patched MoE feed-forward to add in its last launch (tools/gpu/ab_decode.py
# turns it off with the config part "nofold" to measure it; bit-exact either way)
FOLD_RESIDUAL = True
# Measurement switch (ab_decode part "projfold"): inside a traced layer, the residual adds after o_proj and after a
# patched dense MLP's down_proj run in the projection's launch (zk's qmv_residual, where quantized_linear patched it).
# Bit-exact on the H100, slower in llama's and qwen3's decode A/Bs (docs/perf-notes.md v11): off
FOLD_PROJECTIONS = False
# Measurement switch (ab_decode part "normfold"): inside a traced layer, a norm whose only reader is a projection group
# patched by quantized_linear (q/k/v after input_layernorm, a dense MLP's gate/up after the post-attention norm) runs
# inside that group's launch (zk.qmv_many_norm). Bit-exact on the H100, slower with projfold (v11): off
FOLD_NORMS = False
# Measurement switch (ab_decode part "ropefold"): a traced Llama-style layer's two mx.fast.rope calls (q, k) as one
# zk.rope_qk launch. Bit-exact on the H100, slower still with the other two folds (v11): off
FOLD_ROPE = False


def residual_ffn(layer: nn.Module, x: mx.array, r: mx.array | None, norm: str, ffn: str, *, residual_norm: bool,
                 fold: bool = False, h: mx.array | None = None) -> mx.array:
    """``h = x + r; out = h + layer.<ffn>(layer.<norm>(h))``; with ``residual_norm`` the add and the (RMS) norm are
    one ``zk.add_rms_norm`` (with a fused router, the routing too: ``zk.add_norm_router``); with ``fold`` (inside a
    traced step) a patched MoE feed-forward adds ``h`` in its own last launch (the fused down+combine's epilogue,
    the same rounding as the add), and under FOLD_PROJECTIONS a patched dense MLP in its down projection's. ``h``
    given (already ``x + r``, e.g. from o_proj's launch) replaces the add; not with ``residual_norm``."""
    ff = getattr(layer, ffn)
    if h is not None:
        if residual_norm:
            raise ValueError("residual_ffn: h is the add that residual_norm fuses with the norm")
        return _ffn_add(ff, h, getattr(layer, norm)(h), fold, getattr(layer, norm))
    moe = _swap.site_of(ff) if _swap.pattern_of(ff) == "moe_mlp" else None
    if residual_norm and moe is not None:
        # with patch(fuse_router=True) too: the add, the norm, the router and the routing in one launch
        got = moe_mlp.norm_route(ff, moe, x, r, getattr(layer, norm))
        if got is not None:
            h, normed, routed = got
            y = moe_mlp.fused(ff, moe, normed, residual=h if fold else None, routed=routed)
            return y if fold else h + y
    if residual_norm:
        n = getattr(layer, norm)
        h, normed = zk.add_rms_norm(x, r, n["weight"], n.eps)
    else:
        h = x + r
        normed = getattr(layer, norm)(h)
        return _ffn_add(ff, h, normed, fold, getattr(layer, norm))
    return _ffn_add(ff, h, normed, fold)


def _ffn_add(ff: nn.Module, h: mx.array, normed: mx.array, fold: bool, norm: nn.Module | None = None) -> mx.array:
    """``h + ff(normed)``, the add in the feed-forward's last launch where ``fold`` allows it, and (FOLD_NORMS,
    ``norm`` given) the norm in its first: ``normed`` is then never read, and a trace drops it."""
    if fold and _swap.pattern_of(ff) == "moe_mlp":
        return moe_mlp.fused(ff, _swap.site_of(ff), normed, residual=h)
    if fold and (FOLD_PROJECTIONS or FOLD_NORMS) and _swap.pattern_of(ff) == "swiglu_mlp":
        pre = (h, norm) if FOLD_NORMS and norm is not None else None
        y = swiglu_mlp.fused(ff, _swap.site_of(ff), normed, residual=h if FOLD_PROJECTIONS else None, pre_norm=pre)
        return y if FOLD_PROJECTIONS else h + y
    return h + ff(normed)

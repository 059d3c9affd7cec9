"""The feed-forward half of a pre-norm decoder layer, shared by the patterns that trace whole layers at one token
(conv_layer for LFM2, attention_layer): ``h = x + r; out = h + ffn(norm(h))``."""

from __future__ import annotations

import mlx.core as mx
import mlx.nn as nn
from zmlx import kernels as zk

from .. import _swap
from . import moe_mlp

# Whether a traced layer hands `h` to a patched MoE feed-forward to add in its last launch (tools/gpu/ab_decode.py
# turns it off with the config part "nofold" to measure it; bit-exact either way)
FOLD_RESIDUAL = True


def residual_ffn(layer: nn.Module, x: mx.array, r: mx.array, norm: str, ffn: str, *, residual_norm: bool,
                 fold: bool = False) -> mx.array:
    """``h = x + r; out = h + layer.<ffn>(layer.<norm>(h))``; with ``residual_norm`` the add and the (RMS) norm are
    one ``zk.add_rms_norm`` (with a fused router, the routing too: ``zk.add_norm_router``); with ``fold`` (inside a
    traced step) a patched MoE feed-forward adds ``h`` in its own last launch (the fused down+combine's epilogue,
    the same rounding as the add)."""
    ff = getattr(layer, ffn)
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
    if fold and moe is not None:
        return moe_mlp.fused(ff, moe, normed, residual=h)
    return h + ff(normed)

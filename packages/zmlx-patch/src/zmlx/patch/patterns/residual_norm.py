"""residual_norm: a pre-norm decoder layer's ``h = x + attn; normed = rms_norm(h)`` as one zk.add_rms_norm call.

Only for layers whose ``__call__`` is exactly the ResidualSite shape (families.RESIDUAL lists them); the attention
and the feed-forward blocks are called unchanged, so patched feed-forwards (moe_mlp, swiglu_mlp) still apply. With
``patch(fuse_router=True)`` a patched MoE feed-forward's routing joins the add + norm (zk.add_norm_router).
"""

from __future__ import annotations

from typing import Any

import mlx.core as mx
import mlx.nn as nn

from ..families import ResidualSite
from . import _layer
from ._structure import missing_modules

SUMMARY = "decoder layer: residual add + post-attention RMSNorm fused (zk.add_rms_norm)"


def check(module: nn.Module, site: ResidualSite) -> str | None:
    reason = missing_modules(module, (site.attn, site.ffn, "input_layernorm", "post_attention_layernorm"))
    if reason:
        return reason
    if type(module.post_attention_layernorm) is not nn.RMSNorm:
        return "post_attention_layernorm is not an nn.RMSNorm"
    return None


def fused(self: nn.Module, site: ResidualSite, x: mx.array, mask: Any = None, cache: Any = None) -> mx.array:
    r = getattr(self, site.attn)(self.input_layernorm(x), mask, cache)
    return _layer.residual_ffn(self, x, r, "post_attention_layernorm", site.ffn, residual_norm=True)

"""attention_layer: a qk-norm decoder layer's decode step as two traced graphs around the KV-cache update and SDPA.

At one token a Qwen3 layer is ``input_layernorm``, the attention prologue (projections, q/k RMSNorm, RoPE),
``cache.update_and_fetch``, SDPA, ``o_proj``, ``h = x + r``, ``post_attention_layernorm``, the feed-forward and
``h + ffn``. Only the cache update and SDPA see arrays whose shape grows every step, so the rest is two pure
functions traced once by ``mx.compile``: ``(x, position) -> (q, k, v)`` before and ``(x, attention) -> out`` after,
with the position a device int32 (``zk`` kernels read it there). Each step then builds two traced calls plus the
cache update and SDPA in Python instead of the whole layer. The arithmetic is the layer's own (qk_norm_rope's
kernel for the norm + RoPE, the feed-forward as patched); ``residual_norm`` among the patterns makes the post-attention
add + norm one ``zk.add_rms_norm``. Prefill, caches whose offset is not an int, and patch(compile_blocks=False) run
the layer's own code.
"""

from __future__ import annotations

import dataclasses
from typing import Any

import mlx.core as mx
import mlx.nn as nn
from mlx_lm.models.base import scaled_dot_product_attention
from zmlx import kernels as zk
from zmlx.kernels.backend import positions

from .._swap import compiled_fn, original_class
from ..families import LayerSite, resolve_class
from . import qk_norm_rope
from ._structure import missing_modules

SUMMARY = ("decoder layer at one token: everything but the KV-cache update and SDPA traced by mx.compile in two "
           "graphs (norm + attention prologue; o_proj, residuals, norm, feed-forward)")


def check(module: nn.Module, site: LayerSite) -> str | None:
    reason = missing_modules(module, (site.attn, site.ffn, "input_layernorm", "post_attention_layernorm"))
    if reason:
        return reason
    if site.residual_norm and type(module.post_attention_layernorm) is not nn.RMSNorm:
        return "post_attention_layernorm is not an nn.RMSNorm"
    attention = getattr(module, site.attn)
    if (original_class(attention) or type(attention)) is not resolve_class(site.attention.block):
        return f"{site.attn} is {type(attention).__name__}, not the family's attention block"
    return qk_norm_rope.check(attention, site.attention)


def _attention_site(site: LayerSite):
    return dataclasses.replace(site.attention, fuse_qkv=site.fuse_qkv)


def _before(layer: nn.Module, site: LayerSite, x: mx.array, pos: mx.array):
    return qk_norm_rope._prologue(getattr(layer, site.attn), _attention_site(site), layer.input_layernorm(x), pos)


def _after(layer: nn.Module, site: LayerSite, x: mx.array, attended: mx.array) -> mx.array:
    attention = getattr(layer, site.attn)
    B, _, L, _ = attended.shape  # (B, H, 1, D): at one token the transpose back is a reshape
    r = attention[site.attention.out](attended.reshape(B, L, -1))
    norm = layer.post_attention_layernorm
    if site.residual_norm:
        h, normed = zk.add_rms_norm(x, r, norm["weight"], norm.eps)
    else:
        h = x + r
        normed = norm(h)
    return h + getattr(layer, site.ffn)(normed)


def _trace(layer: nn.Module, site: LayerSite):
    # inputs=layer: every array of the layer (attention, norms, feed-forward) is read at every call, never stale
    return (mx.compile(lambda x, pos: _before(layer, site, x, pos), inputs=layer),
            mx.compile(lambda x, attended: _after(layer, site, x, attended), inputs=layer))


def fused(self: nn.Module, site: LayerSite, x: mx.array, mask: Any = None, cache: Any = None) -> mx.array:
    offset = None if cache is None else getattr(cache, "offset", None)
    if not site.traced or x.ndim != 3 or x.shape[1] != 1 or type(offset) is not int:
        return original_class(self).__call__(self, x, mask, cache)
    before, after = compiled_fn(self, _trace, self, site)
    queries, keys, values = before(x, positions(offset))
    keys, values = cache.update_and_fetch(keys, values)
    attention = getattr(self, site.attn)
    attended = scaled_dot_product_attention(queries, keys, values, cache=cache, scale=attention.scale, mask=mask)
    return after(x, attended)

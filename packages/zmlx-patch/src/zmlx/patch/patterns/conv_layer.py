"""conv_layer: an LFM2 short-convolution decoder layer's decode step traced by ``mx.compile`` as one graph.

At decode the layer's conv state has a fixed shape, so the whole layer (operator norm, ``in_proj``, the gated
depthwise conv over ``[state, B*x]``, ``out_proj``, both residual adds, the feed-forward, patched or not) is a pure
function ``(x, state) -> (out, new_state)``: traced once, replayed every step without rebuilding ~15 primitives in
Python. The ops are the layer's own, in its order; the cache bookkeeping (``cache[0] = ...``, ``advance``) stays
outside the trace, exactly as ``ShortConv`` does it. Attention layers, prefill, masks and batched caches with
lengths take the original code.
"""

from __future__ import annotations

from typing import Any

import mlx.core as mx
import mlx.nn as nn

from .. import _swap
from ..families import ConvLayerSite
from ._structure import missing_modules

SUMMARY = ("LFM2 short-conv decoder layer: the decode step (norms, conv, projections, residuals, feed-forward) "
           "traced by mx.compile as one graph, conv state in and out")


def applies(module: nn.Module, site: ConvLayerSite) -> bool:
    # the attention layers share the class; they are not this pattern's business
    return getattr(module, "is_attention_layer", None) is not True


def check(module: nn.Module, site: ConvLayerSite) -> str | None:
    if getattr(module, "is_attention_layer", None) is not False:
        return "no is_attention_layer flag"
    reason = missing_modules(module, ("conv", "conv.conv", "conv.in_proj", "conv.out_proj", "operator_norm",
                                      "ffn_norm", "feed_forward"))
    if reason:
        return reason
    if not isinstance(getattr(module.conv, "L_cache", None), int) or module.conv.L_cache < 2:
        return "conv.L_cache is not an int >= 2"
    return None


def step(layer: nn.Module, x: mx.array, state: mx.array) -> tuple[mx.array, mx.array]:
    """Lfm2DecoderLayer.__call__ + ShortConv.__call__ for a cache that holds a state, no mask, no lengths."""
    conv = layer.conv
    BCx = conv.in_proj(layer.operator_norm(x))
    B, C, v = mx.split(BCx, 3, axis=-1)
    Bx = mx.concatenate([state, B * v], axis=1)
    r = conv.out_proj(C * conv.conv(Bx))
    h = x + r
    return h + layer.feed_forward(layer.ffn_norm(h)), Bx[:, -(conv.L_cache - 1):, :]


def _traceable(cache: Any, mask: Any) -> bool:
    return (mask is None and cache is not None and getattr(cache, "lengths", 1) is None
            and getattr(cache, "left_padding", 1) is None and cache[0] is not None)


def fused(self: nn.Module, site: ConvLayerSite, x: mx.array, mask: Any = None, cache: Any = None) -> mx.array:
    if not _traceable(cache, mask):
        return _swap.original_class(self).__call__(self, x, mask, cache)
    if site.traced:
        out, state = _swap.compiled_fn(self, lambda: mx.compile(lambda x, s: step(self, x, s), inputs=self))(
            x, cache[0])
    else:
        out, state = step(self, x, cache[0])
    cache[0] = state
    cache.advance(x.shape[1])
    return out

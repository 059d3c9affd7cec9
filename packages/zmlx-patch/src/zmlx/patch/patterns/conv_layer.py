"""conv_layer: an LFM2 short-convolution decoder layer's decode step, its conv in one launch, traced as one graph.

At one token the gated depthwise conv (``B * v``, concatenate with the state, ``conv1d``, ``C *``) is one
``zk.short_conv`` launch instead of four-plus (a cuDNN plan among them). The conv state has a fixed shape, so the
whole layer (operator norm, ``in_proj``, the conv, ``out_proj``, both residual adds, the feed-forward, patched or
not) is a pure function ``(x, state) -> (out, new_state)``, traced by ``mx.compile`` once and replayed every step.
The cache bookkeeping (``cache[0] = ...``, ``advance``) stays outside the trace, as ``ShortConv`` does it.
Prefill, masks and batched caches with lengths take the original code. With ``residual_norm`` among the patterns,
every layer (attention layers too) computes ``h = x + r; ffn_norm(h)`` as one ``zk.add_rms_norm``; with the opt-in
``attention_layer``, the attention layers' decode step runs as two traced graphs around the KV-cache update and SDPA.
"""

from __future__ import annotations

from typing import Any

import mlx.core as mx
import mlx.nn as nn
from mlx_lm.models.base import scaled_dot_product_attention
from zmlx import kernels as zk
from zmlx.kernels.backend import positions, target_for
from zmlx.kernels.ops.conv import short_conv_reference

from .. import _swap
from ..families import ConvLayerSite
from . import _layer, qk_norm_rope
from ._structure import affine_quantized, missing_modules

SUMMARY = ("LFM2 short-conv decoder layer at one token: the gated depthwise conv in one launch (zk.short_conv), the "
           "whole layer traced by mx.compile (conv state in and out), h + moe(x) folded into the expert launch")


def applies(module: nn.Module, site: ConvLayerSite) -> bool:
    # the attention layers share the class; only the residual fusion and the attention_layer trace concern them
    return site.residual_norm or site.trace_attention or getattr(module, "is_attention_layer", None) is not True


def check(module: nn.Module, site: ConvLayerSite) -> str | None:
    attention = getattr(module, "is_attention_layer", None)
    if not isinstance(attention, bool):
        return "no is_attention_layer flag"
    reason = missing_modules(module, ("self_attn" if attention else "conv", "operator_norm", "ffn_norm",
                                      "feed_forward"))
    if reason:
        return reason
    if site.residual_norm and type(module.ffn_norm) is not nn.RMSNorm:
        return "ffn_norm is not an nn.RMSNorm"
    if attention:
        if site.trace_attention and site.attention is not None:
            return qk_norm_rope.check(module.self_attn, site.attention)
        return None
    reason = missing_modules(module, ("conv.conv", "conv.in_proj", "conv.out_proj"))
    if reason:
        return reason
    k = getattr(module.conv, "L_cache", None)
    if not isinstance(k, int) or k < 2:
        return "conv.L_cache is not an int >= 2"
    conv = module.conv.conv
    d = conv.weight.shape[0]
    if type(conv) is not nn.Conv1d or conv.weight.shape != (d, k, 1) or conv.groups != d:
        return "conv.conv is not a depthwise nn.Conv1d with L_cache taps"
    if (conv.stride, conv.padding, conv.dilation) != (1, 0, 1):
        return "conv.conv has a stride, padding or dilation"
    return None


def _residual(layer: nn.Module, site: ConvLayerSite, x: mx.array, r: mx.array, fold: bool = False) -> mx.array:
    return _layer.residual_ffn(layer, x, r, "ffn_norm", "feed_forward", residual_norm=site.residual_norm, fold=fold)


def step(layer: nn.Module, site: ConvLayerSite, x: mx.array, state: mx.array) -> tuple[mx.array, mx.array]:
    """Lfm2DecoderLayer.__call__ + ShortConv.__call__ at one token, for a cache that holds a state, no mask."""
    conv = layer.conv
    # The kernel reproduces MLX's CUDA convolution (checked on the H100). MLX's Metal convolution is a simdgroup-matrix
    # GEMM whose accumulation order is not mirrored and no Apple GPU has checked it, so Metal runs the eager ops.
    metal = target_for() == "metal"
    normed, p = layer.operator_norm(x), conv.in_proj
    quant = affine_quantized(p) if site.fuse_conv_proj and not metal else None
    if quant is not None:
        # patch(fuse_conv_proj=True): in_proj inside the conv launch (its rows are per channel); GPU-exact, but
        # device-slower (32 vs 11 us) and no decode gain (perf-notes v8d), so opt-in
        y, new_state = zk.short_conv_proj(normed, quant, state, conv.conv.weight, conv.conv.get("bias"),
                                          group_size=p.group_size, bits=p.bits)
    else:
        short_conv = short_conv_reference if metal else zk.short_conv
        y, new_state = short_conv(p(normed), state, conv.conv.weight, conv.conv.get("bias"))
    return _residual(layer, site, x, conv.out_proj(y), fold=_layer.FOLD_RESIDUAL), new_state


def _trace(layer: nn.Module, site: ConvLayerSite):
    # inputs=layer: its arrays (the feed-forward's included) are read at every call, never stale
    return mx.compile(lambda x, s: step(layer, site, x, s), inputs=layer)


def _traceable(x: mx.array, cache: Any, mask: Any) -> bool:
    # one token, no mask, and a cache that already holds a state (mlx-lm's batched caches carry lengths/padding)
    return (x.ndim == 3 and x.shape[1] == 1 and mask is None and cache is not None
            and getattr(cache, "lengths", 1) is None and getattr(cache, "left_padding", 1) is None
            and cache[0] is not None)


def _attention_site(layer: nn.Module, site: ConvLayerSite):
    # the attention block's own site when qk_norm_rope patched it (fuse_qkv set there), else the family's
    return _swap.site_of(layer.self_attn) or site.attention


def _trace_attention(layer: nn.Module, site: ConvLayerSite):
    # an attention layer at one token, around the KV-cache update and SDPA (attention_layer.py for other families)
    def before(x, pos):
        return qk_norm_rope._prologue(layer.self_attn, _attention_site(layer, site), x, pos,
                                      input_norm=layer.operator_norm)

    def after(x, attended):
        B, _, L, _ = attended.shape
        r = layer.self_attn.out_proj(attended.transpose(0, 2, 1, 3).reshape(B, L, -1))
        return _residual(layer, site, x, r, fold=_layer.FOLD_RESIDUAL)

    # each graph's own modules as live inputs (attention_layer._trace says why)
    return (mx.compile(before, inputs=[layer.operator_norm, layer.self_attn]),
            mx.compile(after, inputs=[layer.self_attn.out_proj, layer.ffn_norm, layer.feed_forward]))


def _attention_step(self: nn.Module, site: ConvLayerSite, x: mx.array, mask: Any, cache: Any) -> mx.array:
    if not (site.trace_attention and site.traced and x.ndim == 3 and x.shape[1] == 1 and cache is not None
            and type(getattr(cache, "offset", None)) is int):
        return _residual(self, site, x, self.self_attn(self.operator_norm(x), mask=mask, cache=cache))
    before, after = _swap.compiled_fn(self, _trace_attention, self, site)
    queries, keys, values = before(x, positions(cache.offset))
    keys, values = cache.update_and_fetch(keys, values)
    attended = scaled_dot_product_attention(queries, keys, values, cache=cache, scale=self.self_attn.scale,
                                            mask=mask)
    return after(x, attended)


def fused(self: nn.Module, site: ConvLayerSite, x: mx.array, mask: Any = None, cache: Any = None) -> mx.array:
    if self.is_attention_layer:  # patched for residual_norm and attention_layer only
        return _attention_step(self, site, x, mask, cache)
    if not _traceable(x, cache, mask):
        return _swap.original_class(self).__call__(self, x, mask, cache)
    if site.traced:
        out, state = _swap.compiled_fn(self, _trace, self, site)(x, cache[0])
    else:
        out, state = step(self, site, x, cache[0])
    cache[0] = state
    cache.advance(x.shape[1])
    return out

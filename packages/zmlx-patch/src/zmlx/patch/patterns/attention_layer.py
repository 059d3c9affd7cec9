"""attention_layer: a decoder layer's decode step as two traced graphs around the KV-cache update and SDPA.

For pre-norm layers whose attention is Qwen3's (q/k RMSNorm, qk_norm_rope's launch) or Llama's (llama, qwen2,
mixtral; gpt-oss's, with its sinks). At one token a Qwen3 layer is ``input_layernorm``, the attention prologue (projections, q/k RMSNorm, RoPE),
``cache.update_and_fetch``, SDPA, ``o_proj``, ``h = x + r``, ``post_attention_layernorm``, the feed-forward and
``h + ffn`` (added in a fused MoE's last launch, as conv_layer does). Only the cache update and SDPA see arrays whose
shape grows every step, so the rest is two pure functions traced once by ``mx.compile``: ``(x, position) -> (q, k,
v)`` before and ``(x, attention) -> out`` after, the position a device int32 (``zk`` kernels and ``mx.fast.rope``
read it there). Each step then builds two traced calls plus the cache update and SDPA in Python instead of the
whole layer. The arithmetic is the layer's own (qk_norm_rope's kernel for the norm + RoPE, the feed-forward as
patched); ``residual_norm`` among the patterns makes the post-attention add + norm one ``zk.add_rms_norm`` (traced
or not). Prefill, caches whose offset is not an int, and patch(compile_blocks=False) run the layer's own code.
"""

from __future__ import annotations

import dataclasses
from typing import Any

import mlx.core as mx
import mlx.nn as nn
from mlx_lm.models.base import scaled_dot_product_attention
from mlx_lm.models.rope_utils import Llama3RoPE, YarnRoPE
from zmlx import kernels as zk
from zmlx.kernels.backend import positions

from .._swap import compiled_fn, original_class
from ..families import AttentionSite, LayerSite, resolve_class
from . import _layer, qk_norm_rope
from ._structure import affine_quantized, missing_modules
from .quantized_linear import project, project_normed, project_residual

# RoPE classes whose __call__ only hands the offset to mx.fast.rope (Llama3RoPE, YarnRoPE: precomputed freqs)
_ROPES = (nn.RoPE, Llama3RoPE, YarnRoPE)

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
    if isinstance(site.attention, AttentionSite):
        return qk_norm_rope.check(attention, site.attention)
    reason = missing_modules(attention, ("q_proj", "k_proj", "v_proj", site.attention.out, "rope"))
    if reason:
        return reason
    if type(attention.rope) not in _ROPES:  # others compute with the offset in Python (a traced array there)
        return f"rope is {type(attention.rope).__name__}, not one that passes its offset to mx.fast.rope"
    if not all(isinstance(getattr(attention, a, None), int) for a in site.attention.heads):
        return f"no integer {' / '.join(site.attention.heads)}"
    if not isinstance(getattr(attention, site.attention.scale, None), float):
        return f"no float {site.attention.scale}"
    if site.attention.sinks and not isinstance(getattr(attention, "sinks", None), mx.array):
        return "no sinks array"
    return None


def _attention_site(site: LayerSite):
    return dataclasses.replace(site.attention, fuse_qkv=site.fuse_qkv)


def _before(layer: nn.Module, site: LayerSite, x: mx.array, pos: mx.array):
    attention = getattr(layer, site.attn)
    if isinstance(site.attention, AttentionSite):  # with fuse_qkv the input norm joins the prologue's launch
        return qk_norm_rope._prologue(attention, _attention_site(site), x, pos, input_norm=layer.input_layernorm)
    n_heads, n_kv_heads = (getattr(attention, a) for a in site.attention.heads)
    fused = _fused_prologue(layer, attention, x, pos, n_heads, n_kv_heads) if site.fuse_qkv else None
    if fused is not None:
        return fused
    # Llama's attention line for line up to the cache update, the rope's offset an array
    B, L, _ = x.shape
    projs = (attention.q_proj, attention.k_proj, attention.v_proj)
    if _layer.FOLD_NORMS:  # the input norm inside the projections' launch (zk.qmv_many_norm)
        queries, keys, values = project_normed(projs, x, layer.input_layernorm)
    else:  # one zk.qmv_many launch where quantized_linear patched all three (else each projection's own call)
        queries, keys, values = project(projs, layer.input_layernorm(x))
    queries = queries.reshape(B, L, n_heads, -1)
    keys = keys.reshape(B, L, n_kv_heads, -1)
    values = values.reshape(B, L, n_kv_heads, -1).transpose(0, 2, 1, 3)
    rope_kw = _rope_kw(attention.rope) if _layer.FOLD_ROPE and attention.rope.dims == queries.shape[-1] else None
    if rope_kw is not None:  # q's and k's rotations as one launch (zk.rope_qk; opt-in measurement switch)
        return (*zk.rope_qk(queries, keys, offset=pos, traditional=attention.rope.traditional, **rope_kw), values)
    queries, keys = queries.transpose(0, 2, 1, 3), keys.transpose(0, 2, 1, 3)
    return attention.rope(queries, offset=pos), attention.rope(keys, offset=pos), values


def _rope_kw(rope: nn.Module) -> dict | None:
    """zk's arguments for the rotation ``rope`` performs (nn.RoPE: base and scale; Llama3RoPE: its precomputed
    freqs; YarnRoPE: freqs, q and k first scaled by its mscale), or None for another RoPE."""
    if type(rope) is nn.RoPE:
        return dict(base=rope.base, scale=rope.scale)
    if type(rope) is Llama3RoPE:  # its freqs precomputed once, read at trace time
        return dict(freqs=rope._freqs)
    if type(rope) is YarnRoPE:  # gpt-oss: freqs, and q/k scaled by mscale first
        return dict(freqs=rope._freqs, mscale=rope.mscale)
    return None


def _fused_prologue(layer: nn.Module, attention: nn.Module, x: mx.array, pos: mx.array, n_heads: int,
                    n_kv_heads: int):
    """patch(fuse_qkv=True) on a Llama-style block: input norm, q/k/v projections (+ biases) and RoPE (nn.RoPE,
    Llama3RoPE, YarnRoPE) as one zk.qkv_rope launch, or None where it does not take this block (another RoPE,
    partial rotary, projections not affine-quantized alike)."""
    rope = attention.rope
    rope_kw = _rope_kw(rope)
    if rope_kw is None:
        return None
    projs = (attention.q_proj, attention.k_proj, attention.v_proj)
    quant = [affine_quantized(p, bias=True) for p in projs]
    if any(q is None for q in quant) or len({(p.group_size, p.bits) for p in projs}) != 1:
        return None
    if rope.dims * n_heads != quant[0][0].shape[0]:
        return None
    norm = layer.input_layernorm
    input_norm = (norm["weight"], norm.eps) if type(norm) is nn.RMSNorm else None
    return zk.qkv_rope(x if input_norm else norm(x), *quant, n_heads=n_heads, n_kv_heads=n_kv_heads,
                       group_size=projs[0].group_size, bits=projs[0].bits, offset=pos,
                       traditional=rope.traditional, input_norm=input_norm,
                       biases=tuple(p["bias"] if "bias" in p else None for p in projs), **rope_kw)


def _after(layer: nn.Module, site: LayerSite, x: mx.array, attended: mx.array) -> mx.array:
    attention = getattr(layer, site.attn)
    B, _, L, _ = attended.shape
    flat = attended.transpose(0, 2, 1, 3).reshape(B, L, -1)
    if _layer.FOLD_PROJECTIONS and not site.residual_norm:  # h = x + o_proj(a) in o_proj's launch
        h = project_residual(attention[site.attention.out], flat, x)
        return _layer.residual_ffn(layer, x, None, "post_attention_layernorm", site.ffn, residual_norm=False,
                                   fold=_layer.FOLD_RESIDUAL, h=h)
    r = attention[site.attention.out](flat)
    return _layer.residual_ffn(layer, x, r, "post_attention_layernorm", site.ffn, residual_norm=site.residual_norm,
                               fold=_layer.FOLD_RESIDUAL)


def _attend(attention: nn.Module, site: LayerSite):
    """mlx-lm's SDPA as the block calls it, resolved once per layer: the scale's attribute, gpt-oss's sinks (both
    read at each call, so replaced weights are seen)."""
    scale = getattr(site.attention, "scale", "scale")
    if getattr(site.attention, "sinks", False):
        return lambda q, k, v, cache, mask: scaled_dot_product_attention(
            q, k, v, cache=cache, scale=getattr(attention, scale), mask=mask, sinks=attention.sinks)
    return lambda q, k, v, cache, mask: scaled_dot_product_attention(
        q, k, v, cache=cache, scale=getattr(attention, scale), mask=mask)


def _trace(layer: nn.Module, site: LayerSite):
    # (before, SDPA, after), built on the layer's first decode step. Each graph's inputs are the modules it reads,
    # their arrays read at every call (never stale); only its own, as flattening a whole MoE layer costs ~5 us more
    attention = getattr(layer, site.attn)
    before_reads = [layer.input_layernorm, attention]
    after_reads = [attention[site.attention.out], layer.post_attention_layernorm, getattr(layer, site.ffn)]
    return (mx.compile(lambda x, pos: _before(layer, site, x, pos), inputs=before_reads),
            _attend(attention, site),
            mx.compile(lambda x, attended: _after(layer, site, x, attended), inputs=after_reads))


def fused(self: nn.Module, site: LayerSite, x: mx.array, mask: Any = None, cache: Any = None) -> mx.array:
    offset = None if cache is None else getattr(cache, "offset", None)
    if not site.traced or x.ndim != 3 or x.shape[1] != 1 or type(offset) is not int:
        # the layer's own code (ResidualSite's shape), the add + norm fused when residual_norm was asked for too
        r = getattr(self, site.attn)(self.input_layernorm(x), mask, cache)
        return _layer.residual_ffn(self, x, r, "post_attention_layernorm", site.ffn, residual_norm=site.residual_norm)
    before, attend, after = compiled_fn(self, _trace, self, site)
    queries, keys, values = before(x, positions(offset))
    keys, values = cache.update_and_fetch(keys, values)
    return after(x, attend(queries, keys, values, cache, mask))

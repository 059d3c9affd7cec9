"""qk_norm_rope: an attention block's per-head q/k RMSNorm and RoPE as one zk.qk_norm_rope launch.

The rest of the block is its own code, line for line (families.AttentionSite): projections, the value transpose,
``cache.update_and_fetch``, mlx-lm's ``scaled_dot_product_attention`` and the output projection; at one token the
two (B, L, H, D) <-> (B, H, L, D) transposes, which move no data there, are single reshapes, and with
``compile_blocks`` the prologue (projections, reshapes, the launch) is traced by ``mx.compile`` once, the position
an input (``zk`` kernels read it from a device array), so no step rebuilds it in Python. Caches whose
``offset`` is not a plain int (batched generation keeps one offset per sequence) take the block's original path.
"""

from __future__ import annotations

from typing import Any

import mlx.core as mx
import mlx.nn as nn
from mlx_lm.models.base import scaled_dot_product_attention
from zmlx import kernels as zk
from zmlx.kernels.backend import positions

from .._swap import compiled_fn, original_class
from ..families import AttentionSite
from . import _layer
from ._structure import affine_quantized, missing_modules
from .quantized_linear import project, project_normed

# Whether compile_blocks traces the prologue at one token (tools/gpu/ab_decode.py turns it off with the config part
# "noprologue" to measure it; bit-exact either way)
TRACE_PROLOGUE = True

SUMMARY = "attention: per-head q/k RMSNorm + RoPE in one launch (zk.qk_norm_rope), output in the cache's layout"


def _quantized_qkv(module: nn.Module) -> list | None:
    """The q/k/v projections' (weight, scales, biases) when all three are affine-quantized alike, without bias."""
    projs = (module.q_proj, module.k_proj, module.v_proj)
    quant = [affine_quantized(p) for p in projs]
    if any(q is None for q in quant) or len({(p.group_size, p.bits) for p in projs}) != 1:
        return None
    return quant


def check(module: nn.Module, site: AttentionSite) -> str | None:
    reason = missing_modules(module, ("q_proj", "k_proj", "v_proj", site.out, site.q_norm, site.k_norm, "rope"))
    if reason:
        return reason
    for name in (site.q_norm, site.k_norm):
        if type(module[name]) is not nn.RMSNorm:
            return f"{name} is not an nn.RMSNorm"
    if type(module.rope) is not nn.RoPE:  # scaled variants (Llama3RoPE, YarnRoPE...) compute their own freqs
        return f"rope is {type(module.rope).__name__}, not nn.RoPE"
    head_dim = module[site.q_norm]["weight"].shape[-1]
    if module.rope.dims != head_dim or module[site.k_norm]["weight"].shape[-1] != head_dim:
        return f"rope rotates {module.rope.dims} of {head_dim} dims (only full-width RoPE is fused)"
    if not all(isinstance(getattr(module, a, None), int) for a in ("n_heads", "n_kv_heads")):
        return "no integer n_heads / n_kv_heads"
    return None


def _prologue(self: nn.Module, site: AttentionSite, x: mx.array, offset: int | mx.array,
              input_norm: nn.Module | None = None):
    """q, k, v in the cache's (B, H, L, D) layout; ``offset`` an int or, in the traced step, one int32 array.
    ``input_norm``: the decoder layer's norm still to apply to ``x`` (a whole-layer trace passes it)."""
    q_norm, k_norm, rope = self[site.q_norm], self[site.k_norm], self.rope
    # patch(fuse_qkv=True): 3 projections, 6 reshapes/transposes and the norm + RoPE launch as one launch
    # (zk.qkv_norm_rope); opt-in: slower on the device than the three qmv launches it replaces (v8)
    quant = _quantized_qkv(self) if site.fuse_qkv else None
    projs = (self.q_proj, self.k_proj, self.v_proj)
    if input_norm is not None and quant is None and _layer.FOLD_NORMS:
        # the input norm inside the q/k/v launch (zk.qmv_many_norm; opt-in measurement switch)
        return _norm_rope(self, site, *project_normed(projs, x, input_norm), offset)
    if input_norm is not None and (quant is None or type(input_norm) is not nn.RMSNorm):
        x, input_norm = input_norm(x), None
    if quant is not None:
        # with the layer's RMSNorm too: one launch for norm, projections, q/k norm and RoPE
        return zk.qkv_norm_rope(
            x, *quant, q_norm["weight"], k_norm["weight"], q_norm.eps, k_norm.eps, n_heads=self.n_heads,
            n_kv_heads=self.n_kv_heads, group_size=self.q_proj.group_size, bits=self.q_proj.bits,
            offset=offset, base=rope.base, scale=rope.scale, traditional=rope.traditional,
            input_norm=None if input_norm is None else (input_norm["weight"], input_norm.eps),
        )
    return _norm_rope(self, site, *project(projs, x), offset)  # one projection launch under quantized_linear


def _norm_rope(self: nn.Module, site: AttentionSite, queries: mx.array, keys: mx.array, values: mx.array,
               offset: int | mx.array):
    """The projections' rows to q, k (per-head RMSNorm + RoPE, one zk launch) and v in the cache's layout."""
    B, L, _ = queries.shape
    q_norm, k_norm, rope = self[site.q_norm], self[site.k_norm], self.rope
    queries, keys = zk.qk_norm_rope(
        queries.reshape(B, L, self.n_heads, -1), keys.reshape(B, L, self.n_kv_heads, -1),
        q_norm["weight"], k_norm["weight"], q_norm.eps, k_norm.eps,
        offset=offset, base=rope.base, scale=rope.scale, traditional=rope.traditional,
    )
    return queries, keys, _heads_first(values, B, L, self.n_kv_heads)


def _trace_prologue(self: nn.Module, site: AttentionSite):
    # inputs=self: the projections' and norms' arrays are read at every call, never stale
    return mx.compile(lambda x, pos: _prologue(self, site, x, pos), inputs=self)


def fused(self: nn.Module, site: AttentionSite, x: mx.array, mask: Any = None, cache: Any = None) -> mx.array:
    offset = 0 if cache is None else getattr(cache, "offset", None)
    if type(offset) is not int:
        return original_class(self).__call__(self, x, mask, cache)
    if site.traced and TRACE_PROLOGUE and x.shape[1] == 1:
        # one token: the prologue's graph is the same every step but for the position, passed in as an array
        queries, keys, values = compiled_fn(self, _trace_prologue, self, site)(x, positions(offset))
    else:
        queries, keys, values = _prologue(self, site, x, offset)
    return _attend(self, site, queries, keys, values, mask, cache)


def _attend(self: nn.Module, site: AttentionSite, queries, keys, values, mask: Any, cache: Any) -> mx.array:
    """The block's own code after q/k/v are in the cache's (B, H, L, D) layout."""
    B, _, L, _ = queries.shape
    if cache is not None:
        keys, values = cache.update_and_fetch(keys, values)
    output = scaled_dot_product_attention(queries, keys, values, cache=cache, scale=self.scale, mask=mask)
    # (B, H, L, D) -> (B, L, H * D): at one token the transpose moves nothing, so one reshape (one graph node) does
    out = output.reshape(B, L, -1) if L == 1 else output.transpose(0, 2, 1, 3).reshape(B, L, -1)
    return self[site.out](out)


def _heads_first(values: mx.array, B: int, L: int, heads: int) -> mx.array:
    """``values.reshape(B, L, heads, -1).transpose(0, 2, 1, 3)``; at one token the same memory as one reshape."""
    if L == 1:
        return values.reshape(B, heads, 1, -1)
    return values.reshape(B, L, heads, -1).transpose(0, 2, 1, 3)

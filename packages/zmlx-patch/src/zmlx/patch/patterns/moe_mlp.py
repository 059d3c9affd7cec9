"""moe_mlp: the family's own sparse-MoE block with routing and combine replaced by zmlx.kernels calls.

Everything else is the block's code: the router module computes the logits, the existing ``switch_mlp`` /
``experts`` (SwitchGLU, quantized or not) runs the experts, the shared expert is added as the family does, and
``sharding_group`` keeps its ``sum_gradients`` / ``all_sum`` semantics. On the CPU each zk op is the reference, so
the fused path is op-for-op the original block.
"""

from __future__ import annotations

import functools

import mlx.core as mx
import mlx.nn as nn
from mlx.nn.layers.distributed import sum_gradients
from mlx_lm.models.switch_layers import SwitchGLU
from zmlx import kernels as zk
from zmlx.kernels.ops.router import VARIANTS as QUANTIZED_ROUTER_VARIANTS

from ..families import Attr, MoeSite, XDtype
from ._experts import fused_experts, plan_for
from ._structure import affine_quantized, lookup, missing_modules

SUMMARY = (
    "sparse MoE block: gating (zk routing op per family) and expert combine (zk.moe_combine) fused, the decode "
    "path traced by mx.compile (compile_blocks); with fused projections (fuse_projections), at one token the "
    "quantized experts run as two launches (gate+up+act, down+combine)"
)


def _arg_paths(site: MoeSite) -> list[str]:
    return [v.path for _, v in site.gating.args if isinstance(v, Attr)]


def check(module: nn.Module, site: MoeSite) -> str | None:
    needed = (site.experts,) if site.logits == "weight" else (site.router, site.experts)
    reason = missing_modules(module, needed)
    if reason:
        return reason
    if not isinstance(lookup(module, site.experts), SwitchGLU):
        return f"'{site.experts}' is not a SwitchGLU"
    if site.logits == "weight" and not isinstance(lookup(module, f"{site.router}.weight"), mx.array):
        return f"router '{site.router}' has no weight array"
    for path in _arg_paths(site):
        if lookup(module, path) is None and not _optional(site, path):
            return f"no attribute '{path}'"
    if site.shared == "sigmoid_gated":
        return missing_modules(module, ("shared_expert", "shared_expert_gate"))
    return None


def compilable(site: MoeSite) -> bool:
    # Traced, `y + sigmoid(g) * shared` becomes one fused elementwise kernel whose rounding differs from the eager
    # ops: on the H100 (4fe8dfe) qwen2_moe / qwen3_next / qwen3_5_moe tokens diverged at 61-94. Those stay eager.
    return site.shared != "sigmoid_gated"


def _optional(site: MoeSite, path: str) -> bool:
    # lfm2_moe's expert_bias only exists with use_expert_bias
    return path == "expert_bias"


def _logits(self: nn.Module, site: MoeSite, x: mx.array) -> mx.array:
    if site.logits == "weight":  # deepseek_v3 / glm4_moe MoEGate: x @ weight.T
        return x @ lookup(self, site.router).weight.T
    router = lookup(self, site.router)
    return router(x.astype(mx.float32) if site.logits == "linear_fp32" else x)


_LITERAL, _ATTR, _XDTYPE = 0, 1, 2


@functools.cache
def _recipe(site: MoeSite) -> tuple[tuple[str, int, object], ...]:
    # the gating arguments, pre-split once per site: _route runs for every MoE layer at every token
    return tuple((name, _ATTR, tuple(v.path.split("."))) if isinstance(v, Attr) else
                 (name, _XDTYPE, None) if isinstance(v, XDtype) else (name, _LITERAL, v)
                 for name, v in site.gating.args)


def _gating_kwargs(self: nn.Module, site: MoeSite, dtype: mx.Dtype) -> dict:
    kwargs = {}
    for name, kind, value in _recipe(site):
        if kind == _ATTR:
            obj = self
            for part in value:
                obj = getattr(obj, part, None)
                if obj is None:
                    break
            kwargs[name] = obj
        else:
            kwargs[name] = dtype if kind == _XDTYPE else value
    return kwargs


def _fused_router(self: nn.Module, site: MoeSite):
    """``(router, (w, scales, biases))`` where patch(fuse_router=True) computes the logits inside the routing
    launch (an affine-quantized ``QuantizedLinear`` router whose gating the kernel has), else None."""
    if not (site.fuse_router and site.logits == "linear" and site.gating.op in QUANTIZED_ROUTER_VARIANTS):
        return None
    router = lookup(self, site.router)
    quant = affine_quantized(router, bias=True)
    return None if quant is None else (router, quant)


def _route(self: nn.Module, site: MoeSite, x: mx.array) -> tuple[mx.array, mx.array]:
    kwargs = _gating_kwargs(self, site, x.dtype)
    # patch(fuse_router=True): off by default, one block reading the whole router is slower on the H100's device
    # than MLX's qmv + the routing kernel (17.8-49 us against 15.5-19.4, docs/perf-notes.md v7)
    fused_router = _fused_router(self, site)
    if fused_router is not None:
        router, quant = fused_router
        # routing(router(x)) as QuantizedLinear computes the logits; the op falls back to exactly that elsewhere
        return zk.quantized_router(x, quant, group_size=router.group_size, bits=router.bits, variant=site.gating.op,
                                   router_bias=router["bias"] if "bias" in router else None, **kwargs)
    return getattr(zk, site.gating.op)(_logits(self, site, x), **kwargs)


def norm_route(self: nn.Module, site: MoeSite, x: mx.array, r: mx.array, norm: nn.Module):
    """A decoder layer's ``h = x + r``, ``normed = norm(h)`` and this block's routing of ``normed`` as one
    ``zk.add_norm_router`` launch: ``(h, normed, (inds, scores))``, or None where the router is not fused
    (patch(fuse_router=True)) or the block reshapes, shards or the norm is not an ``nn.RMSNorm``."""
    if type(norm) is not nn.RMSNorm or site.flatten_tokens or getattr(self, "sharding_group", None) is not None:
        return None
    fused_router = _fused_router(self, site)
    if fused_router is None:
        return None
    router, quant = fused_router
    h, normed, inds, scores = zk.add_norm_router(
        x, r, norm["weight"], norm.eps, quant, group_size=router.group_size, bits=router.bits,
        variant=site.gating.op, router_bias=router["bias"] if "bias" in router else None,
        **_gating_kwargs(self, site, x.dtype))
    return h, normed, (inds, scores)


def fusable(module: nn.Module, site: MoeSite) -> bool:
    """Whether the experts are quantized in a form the fused expert kernels take (affine, one group size/bits)."""
    return plan_for(getattr(module, site.experts)) is not None


def fused(self: nn.Module, site: MoeSite, x: mx.array, residual: mx.array | None = None,
          routed: tuple[mx.array, mx.array] | None = None) -> mx.array:
    """The block's output, or ``residual + output`` (a decoder layer's ``h + moe(x)``) when ``residual`` is given:
    with fused projections the add is the down+combine launch's last rounding. ``routed``: ``(inds, scores)``
    already computed for ``x`` (norm_route's launch)."""
    group = getattr(self, "sharding_group", None)
    if group is not None:
        x = sum_gradients(group)(x)
    shape = x.shape
    if site.flatten_tokens:  # olmoe routes the flattened tokens and reshapes back
        x = x.reshape(-1, shape[-1])

    inds, scores = routed if routed is not None else _route(self, site, x)
    experts = getattr(self, site.experts)
    plan = plan_for(experts) if site.fuse_projections and x.size == x.shape[-1] else None  # one token
    if plan is not None:
        # the combine comes out in x's dtype (fp32 combine cast back, or weights already in x's dtype)
        same = site.combine_fp32 or scores.dtype == x.dtype
        fold = (residual is not None and same and site.shared == "none" and group is None
                and not site.flatten_tokens and residual.shape == x.shape and residual.dtype == x.dtype)
        # inds as they are: the launches have no gradient to stop, and a StopGradient is one more primitive a step
        y = fused_experts(plan, x, inds, scores, site.combine_fp32, residual if fold else None)
        if fold:
            return y
    else:
        y = experts(x, mx.stop_gradient(inds))
        y = zk.moe_combine(y, scores, fp32=site.combine_fp32)

    if site.shared == "sigmoid_gated":
        shared = self.shared_expert(x)
        y = y + mx.sigmoid(self.shared_expert_gate(x)) * shared
    elif site.shared == "plain" and "shared_experts" in self:
        y = y + self.shared_experts(x)

    if site.flatten_tokens:
        y = y.reshape(shape)
    if group is not None:
        y = mx.distributed.all_sum(y, group=group)
    return y if residual is None else residual + y


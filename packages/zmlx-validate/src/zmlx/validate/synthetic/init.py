"""Deterministic, scaled random weights for a synthetic checkpoint.

Every parameter is drawn from its own key, derived from ``(seed, parameter path)``, so a weight never depends on
the order in which parameters are built (a full-size model can be built layer by layer) and one seed always gives
the same bytes. The scales are chosen so that greedy decoding looks like a trained model's: varied tokens and
top-1/top-2 margins of a few tenths to a few nats, neither coin tosses nor certainties.
"""

from __future__ import annotations

import hashlib
import math
from dataclasses import dataclass

import mlx.core as mx
import mlx.nn as nn
from mlx.utils import tree_flatten, tree_unflatten


@dataclass(frozen=True)
class Gains:
    """Init scales, as multiples of ``1/sqrt(fan_in)`` unless noted."""

    embed_std: float = 1.0  # absolute std of the embedding table
    out_gain: float = 1.0  # projections writing into the residual stream (o_proj, down_proj, w2 ...)
    lm_gain: float = 8.0  # lm_head: sets the logit scale, hence the top-1/top-2 margins
    router_gain: float = 2.0  # MoE router: how peaked the expert choice is
    norm_noise: float = 0.1  # relative noise on norm weights (trained norms are not all ones)
    bias_std: float = 0.02  # absolute std of linear biases
    route_bias_std: float = 0.05  # selection biases (expert_bias, e_score_correction_bias)
    final_norm_gain: float = 1.0  # the final norm's scale: with tied embeddings it sets the logit scale
    post_norm_gain: float = 1.0  # `post_*` norms (only gemma2-style blocks normalise what a layer adds)


_OUT_PROJ = {"o_proj", "out_proj", "down_proj", "w2", "fc2", "c_proj", "dense"}
_EMBED = {"embed_tokens", "wte", "embedding", "embeddings"}
_ROUTE_BIAS = {"expert_bias", "e_score_correction_bias"}
_FINAL_NORM = {"model.norm.weight", "model.embedding_norm.weight", "model.final_layernorm.weight"}


def param_key(seed: int, path: str) -> mx.array:
    digest = hashlib.sha256(f"{seed}/{path}".encode()).digest()
    return mx.random.key(int.from_bytes(digest[:8], "little") >> 1)


def _is_router(path: str, parent: str, shape: tuple[int, ...], num_experts: int) -> bool:
    # The MoE router: `*.gate.weight` (not gate_proj), `router.weight`, `router.layer.weight`, DeepSeek's raw gate.
    if not path.endswith("weight") or len(shape) != 2 or shape[0] != num_experts:
        return False
    return parent in {"gate", "router"} or path.endswith("router.layer.weight")


def init_value(path: str, default: mx.array, gains: Gains, seed: int, num_experts: int) -> mx.array:
    """The synthetic value of one parameter (lazy; nothing is computed until evaluated)."""
    if not mx.issubdtype(default.dtype, mx.floating):
        return default
    parts = path.split(".")
    leaf, parent = parts[-1], (parts[-2] if len(parts) > 1 else "")
    shape = tuple(default.shape)
    key = param_key(seed, path)

    def normal(std: float) -> mx.array:
        return (std * mx.random.normal(shape, dtype=mx.float32, key=key)).astype(default.dtype)

    if leaf in _ROUTE_BIAS:
        return normal(gains.route_bias_std)
    if leaf == "sinks":
        return normal(0.5)
    if len(shape) >= 2:
        if parent in _EMBED or leaf in _EMBED:
            return normal(gains.embed_std)
        fan_in = math.prod(shape[1:]) if "conv" in path else shape[-1]
        if parent == "lm_head":
            gain = gains.lm_gain
        elif _is_router(path, parent, shape, num_experts):
            gain = gains.router_gain
        elif parent in _OUT_PROJ:
            gain = gains.out_gain
        else:
            gain = 1.0
        return normal(gain / math.sqrt(fan_in))
    if leaf == "bias":
        return default + normal(gains.bias_std)
    if "norm" in parent or "norm" in leaf or parent.endswith("ln"):
        # Keep the family's own init (ones, or zeros for gemma's `1 + w`) and vary it a little.
        offset = 1.0 if leaf == "weight" and not mx.any(default).item() else 0.0
        gain = gains.final_norm_gain if path in _FINAL_NORM else gains.post_norm_gain if parent.startswith("post_") else 1.0
        effective = (offset + default) * gain
        return (effective + normal(gains.norm_noise) * abs(gain) - offset).astype(default.dtype)
    return default


def apply_synthetic_init(model: nn.Module, gains: Gains, seed: int, num_experts: int) -> None:
    """Replace every parameter of ``model`` by its synthetic value, lazily."""
    flat = tree_flatten(model.parameters())
    new = [(p, init_value(p, v, gains, seed, num_experts)) for p, v in flat]
    model.update(tree_unflatten(new))


def cast_like_convert(model: nn.Module, dtype: mx.Dtype) -> None:
    """Cast floating parameters as ``mlx_lm.convert`` does, honouring the model's ``cast_predicate``
    (e.g. lfm2_moe keeps ``expert_bias`` in float32)."""
    keep = getattr(model, "cast_predicate", lambda _k: True)
    flat = tree_flatten(model.parameters())
    new = [(k, v.astype(dtype) if keep(k) and mx.issubdtype(v.dtype, mx.floating) else v) for k, v in flat]
    model.update(tree_unflatten(new))

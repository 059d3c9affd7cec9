"""geglu_mlp: ``down(gelu(gate(x)) * up(x))`` with the GELU the family uses (gemma: exact erf; gemma2/3: tanh)."""

from __future__ import annotations

import mlx.core as mx
import mlx.nn as nn
from zmlx import kernels as zk

from ..families import DenseSite
from . import _dense
from ._structure import missing_modules

SUMMARY = (
    "gated GELU MLP: gelu(gate) * up fused (zk.geglu, exact or tanh as the family uses); with "
    "fused projections (fuse_projections), gate+up projections + GELU in one launch at one token"
)


def check(module: nn.Module, site: DenseSite) -> str | None:
    if site.activation not in ("gelu", "gelu_approx"):
        return f"activation is {site.activation}, not GELU"
    if site.layout != "gate_up_down":
        return f"layout {site.layout} is not supported by geglu_mlp"
    return missing_modules(module, ("gate_proj", "up_proj", "down_proj"))


def fused(self: nn.Module, site: DenseSite, x: mx.array) -> mx.array:
    approximate = site.activation == "gelu_approx"
    one = site.fuse_projections and x.size == x.shape[-1]
    plan = _dense.plan_for(self, "gate_proj", "up_proj") if one else None
    if plan is not None:  # one token: both quantized projections and the GELU product in one launch
        return self.down_proj(_dense.gate_up(plan, x, "geglu_tanh" if approximate else "geglu_erf"))
    return self.down_proj(zk.geglu(self.gate_proj(x), self.up_proj(x), approximate=approximate))

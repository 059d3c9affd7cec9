"""swiglu_mlp: ``down(silu(gate(x)) * up(x))`` with the activation product from ``zmlx.kernels.swiglu``."""

from __future__ import annotations

import mlx.core as mx
import mlx.nn as nn
from zmlx import kernels as zk

from ..families import DenseSite
from . import _dense
from ._structure import missing_modules
from .quantized_linear import project, project_normed, project_residual

SUMMARY = (
    "gated SiLU MLP: silu(gate) * up fused (zk.swiglu); with fused projections (fuse_projections), at one token "
    "the quantized gate+up projections and silu run as one launch (zk.dense_gate_up)"
)

_NAMES = {
    "gate_up_down": ("gate_proj", "up_proj", "down_proj"),
    "w1_w3_w2": ("w1", "w3", "w2"),
    "fused_gate_up": ("gate_up_proj", "down_proj"),
}


def check(module: nn.Module, site: DenseSite) -> str | None:
    if site.activation != "silu":
        return f"activation is {site.activation}, not SiLU"
    return missing_modules(module, _NAMES[site.layout])


def fused(self: nn.Module, site: DenseSite, x: mx.array, residual: mx.array | None = None,
          pre_norm: tuple[mx.array, nn.Module] | None = None) -> mx.array:
    """The MLP at ``x``; with ``residual`` (a traced layer's ``h``), ``residual + mlp(x)``, the add in the down
    projection's launch where quantized_linear patched it; with ``pre_norm = (h, norm)`` (x is ``norm(h)``), gate
    and up project ``h`` normalised in their own launch (quantized_linear's project_normed)."""
    if site.layout in ("gate_up_down", "w1_w3_w2"):  # lfm2: w1 = gate, w3 = up, w2 = down
        gate, up, down = _NAMES[site.layout]
        plan = _dense.plan_for(self, gate, up) if site.fuse_projections and x.size == x.shape[-1] else None
        if plan is not None:  # one token: both quantized projections and the activation in one launch
            act = _dense.gate_up(plan, x, "swiglu")
        elif pre_norm is not None:
            act = zk.swiglu(*project_normed((self[gate], self[up]), *pre_norm))
        else:
            act = zk.swiglu(*project((self[gate], self[up]), x))  # one launch under quantized_linear
        return self[down](act) if residual is None else project_residual(self[down], act, residual)
    # phi3: one projection, first half gate, second half up (mx.split as the block does)
    gate, up = mx.split(self.gate_up_proj(x), 2, axis=-1)
    act = zk.swiglu(gate, up)
    return self.down_proj(act) if residual is None else project_residual(self.down_proj, act, residual)

"""The fused quantized-expert path of ``moe_mlp`` at decode: ``SwitchGLU`` + combine in two zk launches.

Used only for one token (decode) with affine-quantized experts and an activation zk mirrors; anything else keeps
the block's own ``switch_mlp`` + ``zk.moe_combine``. zk chooses the numerics MLX itself would use for the same
call (qmv for top-k < 8, the tensor-core tile path for top-k >= 8), so tokens stay identical.
"""

from __future__ import annotations

import weakref
from dataclasses import dataclass

import mlx.core as mx
import mlx.nn as nn
from mlx_lm.models.activations import SwigluOAI
from mlx_lm.models.switch_layers import QuantizedSwitchLinear, SwiGLU, SwitchGLU
from zmlx import kernels as zk

# Measurement switch (tools/gpu/ab_decode.py part 'noq4core' turns it off), read when a block is traced: 4-bit
# top-k < 8 experts and dense gate+up (_dense.py) on moe_experts_q4.py's kernels (zk.qmv's launch shape, the same
# per-row arithmetic). On: GPU tests bit-exact, lfm2 x2.231 and gpt-oss x1.582 capsules (docs/perf-notes.md v11).
QMV_CORE = True
# Measurement switch ('q4step' turns it off): those launches in their batch loop form (zk's q4_form="batch"), bit-exact
# on the GPU; experts 1.3-1.5x less device time than the step form, mixtral x1.321 capsule (perf-notes v12).
Q4_BATCH = True


def q4_form() -> str:
    """zk's ``q4_form`` for the qmv-core launches under the Q4_BATCH switch (read when a block is traced)."""
    return "batch" if Q4_BATCH else "step"


@dataclass(frozen=True)
class ExpertPlan:
    """Everything the two launches need, read once from a SwitchGLU (arrays are references, not copies)."""

    gate: tuple[mx.array, mx.array, mx.array]
    up: tuple[mx.array, mx.array, mx.array]
    down: tuple[mx.array, mx.array, mx.array]
    biases: tuple[mx.array | None, mx.array | None, mx.array | None]
    group_size: int
    bits: int
    activation: str
    alpha: float = 1.702
    limit: float = 7.0


# id(SwitchGLU) -> (weakref to it, plan or None when it cannot be fused); the weakref guards against id reuse and
# the gate weight's identity against weights replaced after patching
_PLANS: dict[int, tuple[weakref.ref, ExpertPlan | None]] = {}


def _activation(act: nn.Module) -> tuple[str, float, float] | None:
    if type(act) is SwiGLU:
        return "swiglu", 1.702, 7.0
    if type(act) is SwigluOAI:
        return "swiglu_oai", float(act._alpha), float(act._limit)
    return None


def _build(experts: SwitchGLU) -> ExpertPlan | None:
    projs = (experts.gate_proj, experts.up_proj, experts.down_proj)
    if not all(type(p) is QuantizedSwitchLinear for p in projs):
        return None
    if any(p.mode != "affine" or p.get("biases") is None or p.global_scale is not None for p in projs):
        return None
    if len({(p.group_size, p.bits) for p in projs}) != 1:
        return None
    act = _activation(experts.activation)
    if act is None:
        return None
    quant = [(p["weight"], p["scales"], p["biases"]) for p in projs]
    biases = tuple(p["bias"] if "bias" in p else None for p in projs)
    if (biases[0] is None) != (biases[1] is None):
        return None
    return ExpertPlan(*quant, biases, projs[0].group_size, projs[0].bits, *act)


def plan_for(experts: nn.Module) -> ExpertPlan | None:
    hit = _PLANS.get(id(experts))
    if hit is not None and hit[0]() is experts:
        plan = hit[1]
        if plan is None or plan.gate[0] is experts.gate_proj["weight"]:
            return plan
    plan = _build(experts) if isinstance(experts, SwitchGLU) else None
    _PLANS[id(experts)] = (weakref.ref(experts), plan)
    return plan


def fused_experts(plan: ExpertPlan, x: mx.array, inds: mx.array, scores: mx.array, fp32: bool,
                  residual: mx.array | None = None) -> mx.array:
    """``combine(switch_mlp(x, inds), scores)`` for one token, as ``[..., D]`` like the block's own path
    (``residual +`` that, when given)."""
    gb, ub, db = plan.biases
    h = zk.moe_gate_up(x, inds, plan.gate, plan.up, group_size=plan.group_size, bits=plan.bits,
                       activation=plan.activation, gate_bias=gb, up_bias=ub, alpha=plan.alpha, limit=plan.limit,
                       qmv_core=QMV_CORE, q4_form=q4_form())
    return zk.moe_down_combine(h, inds, plan.down, scores, group_size=plan.group_size, bits=plan.bits, fp32=fp32,
                               down_bias=db, residual=residual, out_shape=(*x.shape[:-1], plan.down[0].shape[-2]),
                               qmv_core=QMV_CORE, q4_form=q4_form())

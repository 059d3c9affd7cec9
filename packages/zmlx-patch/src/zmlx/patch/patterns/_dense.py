"""The fused quantized projections of a dense gated MLP at decode: ``act(gate(x), up(x))`` in one zk launch.

Only for one token with affine-quantized, bias-free ``gate``/``up`` projections of one format; otherwise the
pattern keeps the block's projections and fuses just the activation.
"""

from __future__ import annotations

import weakref
from dataclasses import dataclass

import mlx.core as mx
import mlx.nn as nn
from zmlx import kernels as zk

from . import _experts
from ._structure import affine_quantized


@dataclass(frozen=True)
class DensePlan:
    gate: tuple[mx.array, mx.array, mx.array]
    up: tuple[mx.array, mx.array, mx.array]
    group_size: int
    bits: int


# id(block) -> (weakref to it, plan or None when it cannot be fused); see _experts.py
_PLANS: dict[int, tuple[weakref.ref, DensePlan | None]] = {}


def _build(gate: nn.Module, up: nn.Module) -> DensePlan | None:
    quant = [affine_quantized(p) for p in (gate, up)]
    if any(q is None for q in quant) or (gate.group_size, gate.bits) != (up.group_size, up.bits):
        return None
    return DensePlan(*quant, gate.group_size, gate.bits)


def plan_for(block: nn.Module, gate_name: str, up_name: str) -> DensePlan | None:
    hit = _PLANS.get(id(block))
    if hit is not None and hit[0]() is block:
        plan = hit[1]
        if plan is None or plan.gate[0] is block[gate_name]["weight"]:
            return plan
    plan = _build(block[gate_name], block[up_name])
    _PLANS[id(block)] = (weakref.ref(block), plan)
    return plan


def gate_up(plan: DensePlan, x: mx.array, activation: str) -> mx.array:
    return zk.dense_gate_up(x, plan.gate, plan.up, group_size=plan.group_size, bits=plan.bits,
                            activation=activation, qmv_core=_experts.QMV_CORE,
                            q4_form=_experts.q4_form())

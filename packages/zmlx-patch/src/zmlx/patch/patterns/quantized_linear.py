"""quantized_linear: every affine 4-bit ``nn.QuantizedLinear`` at decode through ``zk.qmv`` (MLX's CUDA qmv numerics,
more rows in flight). Architecture-independent: attention and dense-MLP projections, shared experts, the LM head."""

from __future__ import annotations

import mlx.core as mx
import mlx.nn as nn
from zmlx.kernels.ops.qmv import QmvManyPlan, QmvPlan
from zmlx.kernels.ops.qmv_norm import plan_normed

from .. import _swap
from ..families import LinearSite
from ._structure import four_bit_affine_reason

SUMMARY = ("affine 4-bit QuantizedLinear at decode: zk.qmv, MLX's CUDA qmv arithmetic with more rows in flight "
           "(bit-identical; CUDA, bf16; elsewhere MLX's own quantized_matmul)")


def check(module: nn.Module, site: LinearSite) -> str | None:
    return four_bit_affine_reason(module, "weights")


def _build(module: nn.Module) -> QmvPlan:
    return QmvPlan((module["weight"], module["scales"], module["biases"]), group_size=module.group_size,
                   bits=module.bits, bias=module.get("bias"))


def _plan(module: nn.Module) -> QmvPlan:
    plan = _swap.compiled_fn(module, _build, module)  # built once, dropped by unpatch
    w = plan.w
    if w[0] is not module["weight"] or w[1] is not module["scales"] or w[2] is not module["biases"] \
            or plan.bias is not module.get("bias"):  # arrays replaced (load_weights, update): a new plan
        _swap.forget_compiled(module)
        plan = _swap.compiled_fn(module, _build, module)
    return plan


def fused(self: nn.Module, site: LinearSite, x: mx.array) -> mx.array:
    return _plan(self)(x)


def project(modules: tuple[nn.Module, ...], x: mx.array) -> tuple[mx.array, ...]:
    """``tuple(m(x) for m in modules)``. Where all are projections this pattern patched (q/k/v, gate/up), one
    ``zk.qmv_many`` launch at decode instead of one each, every row computed as ``zk.qmv`` computes it."""
    group = _group(modules)
    return tuple(m(x) for m in modules) if group is None else group(x)


def _group(modules: tuple[nn.Module, ...]) -> QmvManyPlan | None:
    """The one-launch plan of 2 or 3 projections this pattern patched alike, kept with the first (None otherwise)."""
    if len(modules) not in (2, 3) or any(_swap.pattern_of(m) != "quantized_linear" for m in modules):
        return None
    plans = [_plan(m) for m in modules]
    lead = plans[0]
    group = lead.group
    arrays = tuple(a for p in plans for a in p.w) + tuple(p.bias for p in plans)
    if group is None or len(group.arrays) != len(arrays) or any(a is not b for a, b in zip(group.arrays, arrays)):
        if len({(p.group_size, p.bits, p.k) for p in plans}) != 1:
            return None
        group = lead.group = QmvManyPlan(tuple(p.w for p in plans), group_size=lead.group_size, bits=lead.bits,
                                         biases=tuple(p.bias for p in plans))
    return group


def project_normed(modules: tuple[nn.Module, ...], x: mx.array, norm: nn.Module) -> tuple[mx.array, ...]:
    """``project(modules, norm(x))``; where ``norm`` is an ``nn.RMSNorm`` and this pattern patched the projections,
    one launch that normalises the row itself (zk.qmv_many_norm, MLX's rms_norm order and rounding)."""
    group = _group(modules) if type(norm) is nn.RMSNorm else None
    if group is None:
        return project(modules, norm(x))
    return plan_normed(group, x, norm["weight"], norm.eps)


def project_residual(module: nn.Module, x: mx.array, residual: mx.array) -> mx.array:
    """``residual + module(x)`` (a decoder layer's add after o_proj or down_proj): one launch where this pattern
    patched ``module`` (zk.qmv's core, the add its last rounding, kernels/ops/qmv_residual.py), else the two ops."""
    if _swap.pattern_of(module) != "quantized_linear":
        return residual + module(x)
    return _plan(module).residual(x, residual)

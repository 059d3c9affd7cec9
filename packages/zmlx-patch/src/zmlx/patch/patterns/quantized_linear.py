"""quantized_linear: every affine 4-bit ``nn.QuantizedLinear`` at decode through ``zk.qmv`` (MLX's CUDA qmv numerics,
more rows in flight). Architecture-independent: attention and dense-MLP projections, shared experts, the LM head."""

from __future__ import annotations

import mlx.core as mx
import mlx.nn as nn
from zmlx.kernels.backend import gpu_backend
from zmlx.kernels.ops.qmv import QmvPlan

from .. import _swap
from ..families import LinearSite

SUMMARY = ("affine 4-bit QuantizedLinear at decode: zk.qmv, MLX's CUDA qmv arithmetic with more rows in flight "
           "(bit-identical; CUDA, bf16; elsewhere MLX's own quantized_matmul)")


def check(module: nn.Module, site: LinearSite) -> str | None:
    if gpu_backend() == "metal":
        return "Metal: MLX's Metal qmv sums in another order than the kernel reproduces (CUDA's)"
    if getattr(module, "mode", "affine") != "affine" or module.get("biases") is None:
        return f"quantization mode {getattr(module, 'mode', '?')!r}, not affine"
    if module.bits != 4:
        return f"{module.bits}-bit weights (the kernel covers 4-bit)"
    return None


def _build(module: nn.Module) -> QmvPlan:
    return QmvPlan((module["weight"], module["scales"], module["biases"]), group_size=module.group_size,
                   bits=module.bits, bias=module.get("bias"))


def fused(self: nn.Module, site: LinearSite, x: mx.array) -> mx.array:
    plan = _swap.compiled_fn(self, _build, self)  # built once, dropped by unpatch
    w = plan.w
    if w[0] is not self["weight"] or w[1] is not self["scales"] or w[2] is not self["biases"] \
            or plan.bias is not self.get("bias"):  # arrays replaced (load_weights, update): a new plan
        self.__dict__.pop(_swap.COMPILED, None)
        plan = _swap.compiled_fn(self, _build, self)
    return plan(x)


"""quantized_switch_linear (opt-in): mlx-lm's ``QuantizedSwitchLinear`` (an MoE block's expert projections, called by
``SwitchGLU``) at decode with top-k < 8 through ``zk.gather_qmv``: MLX's gather_qmv arithmetic with zk.qmv's faster
core. Where ``fuse_projections`` fuses a block's experts this layer is not called at decode; it is for the blocks that
keep MLX's SwitchGLU (mixtral, or any family with ``fuse_projections=False``). Token- and logit-identical on the GPU
(its test mode, 5d210df); its speed is not yet measured."""

from __future__ import annotations

import mlx.core as mx
import mlx.nn as nn
from zmlx import kernels as zk

from ..families import LinearSite
from ._structure import four_bit_affine_reason

SUMMARY = ("affine 4-bit QuantizedSwitchLinear (experts) at decode, top-k < 8: zk.gather_qmv, MLX's CUDA gather_qmv "
           "arithmetic with more rows in flight (opt-in; GPU-exact, speed not yet measured)")


def check(module: nn.Module, site: LinearSite) -> str | None:
    return four_bit_affine_reason(module, "experts")


def fused(self: nn.Module, site: LinearSite, x: mx.array, indices: mx.array, sorted_indices: bool = False):
    # QuantizedSwitchLinear.__call__ line for line; sorted_indices only orders MLX's own kernel (never at decode)
    y = zk.gather_qmv(x, (self["weight"], self["scales"], self["biases"]), indices, group_size=self.group_size,
                      bits=self.bits)
    if "bias" in self:
        y = y + mx.expand_dims(self["bias"][indices], -2)
    return y

"""quantized_switch_linear (opt-in): mlx-lm's ``QuantizedSwitchLinear`` (an MoE block's expert projections, called by
``SwitchGLU``) at decode with top-k < 8 through ``zk.gather_qmv``: MLX's gather_qmv arithmetic with zk.qmv's faster
core. Where ``fuse_projections`` fuses a block's experts this layer is not called at decode; it is for the blocks that
keep MLX's SwitchGLU (mixtral, or any family with ``fuse_projections=False``). Not yet run on a GPU."""

from __future__ import annotations

import mlx.core as mx
import mlx.nn as nn
from zmlx import kernels as zk
from zmlx.kernels.backend import gpu_backend

from ..families import LinearSite

SUMMARY = ("affine 4-bit QuantizedSwitchLinear (experts) at decode, top-k < 8: zk.gather_qmv, MLX's CUDA gather_qmv "
           "arithmetic with more rows in flight (opt-in; not yet GPU-run)")


def check(module: nn.Module, site: LinearSite) -> str | None:
    if gpu_backend() == "metal":
        return "Metal: MLX's Metal qmv sums in another order than the kernel reproduces (CUDA's)"
    if getattr(module, "mode", "affine") != "affine" or module.get("biases") is None:
        return f"quantization mode {getattr(module, 'mode', '?')!r}, not affine"
    if module.bits != 4:
        return f"{module.bits}-bit experts (the kernel covers 4-bit)"
    return None


def fused(self: nn.Module, site: LinearSite, x: mx.array, indices: mx.array, sorted_indices: bool = False):
    # QuantizedSwitchLinear.__call__ line for line; sorted_indices only orders MLX's own kernel (never at decode)
    y = zk.gather_qmv(x, (self["weight"], self["scales"], self["biases"]), indices, group_size=self.group_size,
                      bits=self.bits)
    if "bias" in self:
        y = y + mx.expand_dims(self["bias"][indices], -2)
    return y

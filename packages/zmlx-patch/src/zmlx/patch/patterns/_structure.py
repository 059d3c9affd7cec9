"""Structural checks shared by the patterns."""

from __future__ import annotations

from typing import Any

import mlx.nn as nn


def lookup(obj: Any, path: str) -> Any:
    """``lookup(block, "gate.top_k")``; None when any part is missing."""
    for part in path.split("."):
        obj = getattr(obj, part, None)
        if obj is None:
            return None
    return obj


def missing_modules(module: nn.Module, names: tuple[str, ...]) -> str | None:
    """None when every named attribute exists and is a module, else the reason to skip."""
    for name in names:
        if not isinstance(lookup(module, name), nn.Module):
            return f"no submodule '{name}'"
    return None


def affine_quantized(module: Any, *, bias: bool = False) -> tuple[Any, Any, Any] | None:
    """``(weight, scales, biases)`` of an affine-quantized ``nn.QuantizedLinear`` (that exact class: a subclass may
    compute something else in ``__call__``), else None; with a linear bias (``"bias"``) only when ``bias`` allows it."""
    # a QuantizedLinear the quantized_linear pattern swapped computes the same: its original class counts
    cls = type(module).__dict__.get("_zmlx_original", type(module))
    if cls is not nn.QuantizedLinear or module.mode != "affine" or module.get("biases") is None:
        return None
    if not bias and "bias" in module:
        return None
    return module["weight"], module["scales"], module["biases"]


def four_bit_affine_reason(module: Any, what: str) -> str | None:
    """Why the zk.qmv kernels cannot take ``module`` (a QuantizedLinear or QuantizedSwitchLinear), or None: they
    reproduce MLX's CUDA qmv for affine 4-bit weights, and nothing of Metal's (which sums in another order)."""
    from zmlx.kernels.backend import gpu_backend

    if gpu_backend() == "metal":
        return "Metal: MLX's Metal qmv sums in another order than the kernel reproduces (CUDA's)"
    if getattr(module, "mode", "affine") != "affine" or module.get("biases") is None:
        return f"quantization mode {getattr(module, 'mode', '?')!r}, not affine"
    if module.bits != 4:
        return f"{module.bits}-bit {what} (the kernel covers 4-bit)"
    return None

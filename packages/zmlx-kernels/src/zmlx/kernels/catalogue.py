"""The op catalogue: every op family module, in display order."""

from __future__ import annotations

from importlib import import_module

from .ops._base import OpInfo

_FAMILIES = ("routing", "router", "norm_router", "combine", "activations", "norms", "qmv", "qmv_residual", "qmv_norm", "qmv_tuning", "gather_qmv", "attention", "qkv", "qkv_rope", "rope_qk", "conv", "moe_experts")


def ops() -> list[OpInfo]:
    return [import_module(f"zmlx.kernels.ops.{name}").OP for name in _FAMILIES]


def find(name: str) -> OpInfo:
    for op in ops():
        if op.name == name or name in op.variants:
            return op
    known = ", ".join(op.name for op in ops())
    raise KeyError(f"unknown op {name!r}; known ops: {known}")

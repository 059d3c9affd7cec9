"""zmlx.patch: detect an mlx-lm model's architecture and swap its blocks for fused-kernel versions, reversibly.

>>> from zmlx.patch import patch, unpatch
>>> result = patch(model)        # fused decode path, original code for prefill
>>> unpatch(model)               # every patched module gets its original class back

The names below load on first use (``core`` imports mlx-lm and checks its version, ~1.7 s), so command lines can
read ``zmlx.patch.switches`` for their flags without paying that for ``--help`` or a usage error.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from .core import MLX_LM_VERSION, PatchResult, list_patterns, patch, suspended, unpatch

__all__ = ["MLX_LM_VERSION", "PatchResult", "list_patterns", "patch", "suspended", "unpatch"]


def __getattr__(name: str) -> Any:
    if name in __all__:
        from . import core

        return getattr(core, name)
    raise AttributeError(f"module 'zmlx.patch' has no attribute {name!r}")

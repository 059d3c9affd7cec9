"""zmlx.patch: detect an mlx-lm model's architecture and swap its blocks for fused-kernel versions, reversibly.

>>> from zmlx.patch import patch, unpatch
>>> result = patch(model)        # fused decode path, original code for prefill
>>> unpatch(model)               # every patched module gets its original class back
"""

from __future__ import annotations

from ._version import check_mlx_lm_version

MLX_LM_VERSION = check_mlx_lm_version()

from .core import PatchResult, list_patterns, patch, suspended, unpatch  # noqa: E402

__all__ = ["PatchResult", "list_patterns", "patch", "suspended", "unpatch"]

"""Refuse to patch an mlx-lm whose block code zmlx has not been checked against."""

from __future__ import annotations

import re

SUPPORTED_MLX_LM = (">=0.32", "<0.33")


def _parse(version: str) -> tuple[int, ...]:
    parts = []
    for piece in version.split(".")[:3]:
        digits = re.match(r"\d*", piece).group()  # leading digits: "0rc1" -> 0
        parts.append(int(digits) if digits else 0)
    return tuple(parts)


def check_mlx_lm_version() -> str:
    try:
        import mlx_lm
    except ImportError as e:  # pragma: no cover - a dependency of this package
        raise ImportError("zmlx.patch needs mlx-lm >=0.32,<0.33; it is not installed") from e
    found = getattr(mlx_lm, "__version__", "0")
    if not (0, 32) <= _parse(found)[:2] < (0, 33):
        raise ImportError(
            f"zmlx.patch supports mlx-lm >=0.32,<0.33 (its block code is what the patterns reproduce); "
            f"found mlx-lm {found}. Install a supported version: pip install 'mlx-lm>=0.32,<0.33'"
        )
    return found

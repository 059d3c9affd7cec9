"""Fail at import, with a clear message, on an MLX outside the tested range."""

from __future__ import annotations

import mlx.core as mx

SUPPORTED_MLX = ((0, 32), (0, 33))  # [low, high): the 0.32.x series, the one tested


def _parse(version: str) -> tuple[int, ...]:
    parts = []
    for piece in version.split(".")[:3]:
        digits = "".join(ch for ch in piece if ch.isdigit())
        parts.append(int(digits) if digits else 0)
    return tuple(parts)


def check_mlx_version(version: str | None = None) -> None:
    version = version or mx.__version__
    low, high = SUPPORTED_MLX
    if not (low <= _parse(version)[:2] < high):
        raise ImportError(
            f"zmlx-kernels supports mlx >= {low[0]}.{low[1]}, < {high[0]}.{high[1]} (tested); found mlx {version}. "
            f"Install a supported one: pip install 'mlx>={low[0]}.{low[1]},<{high[0]}.{high[1]}'"
        )

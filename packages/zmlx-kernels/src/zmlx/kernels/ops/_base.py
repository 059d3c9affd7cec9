"""What every op family module exposes to the catalogue (``python -m zmlx.kernels list|emit|check``)."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass

import mlx.core as mx
import numpy as np

from ..emit import KernelSpec

# Per-dtype absolute tolerances for ops that are not bit-exact (as MLX's own tests use).
TOLERANCE: dict[mx.Dtype, float] = {mx.float32: 1e-6, mx.float16: 1e-3, mx.bfloat16: 1e-2}
DTYPES: tuple[mx.Dtype, ...] = (mx.float32, mx.float16, mx.bfloat16)
# Relative error allowed for a reference against float64 math: a few roundings in the array dtype.
REF_TOLERANCE: dict[mx.Dtype, float] = {mx.float32: 1e-5, mx.float16: 4e-3, mx.bfloat16: 3e-2}


def as_float64(a: mx.array) -> np.ndarray:
    """An array's values as float64 numpy (via float32, exact for every supported dtype), for reference checks."""
    return np.array(a.astype(mx.float32), dtype=np.float64)


def dtype_name(dtype: mx.Dtype) -> str:
    return str(dtype).removeprefix("mlx.core.")


@dataclass(frozen=True)
class CheckCase:
    """One kernel-vs-reference comparison on fresh random inputs.

    ``kernel`` runs the fused kernel on the GPU; ``reference`` runs the pure-MLX reference on the same
    inputs and device. ``exact`` cases must match bit for bit; others within ``atol``.
    """

    op: str
    variant: str
    dtype: str
    kernel: Callable[[], Sequence[mx.array]]
    reference: Callable[[], Sequence[mx.array]]
    exact: bool
    atol: float = 0.0


@dataclass(frozen=True)
class RefCheck:
    """A reference checked against an independent float64 computation (runs anywhere, CPU included)."""

    op: str
    variant: str
    dtype: str
    max_error: float
    tolerance: float

    @property
    def passed(self) -> bool:
        return self.max_error <= self.tolerance


@dataclass(frozen=True)
class OpInfo:
    """A catalogue entry: the op, its variants, its reference, its kernels and its checks."""

    name: str
    summary: str
    variants: tuple[str, ...]
    reference: str
    kernel_specs: Callable[[], dict[str, KernelSpec]]
    check_cases: Callable[[int], list[CheckCase]]
    reference_checks: Callable[[int], list[RefCheck]]

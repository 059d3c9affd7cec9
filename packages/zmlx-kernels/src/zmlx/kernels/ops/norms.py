"""Residual add + RMSNorm: ``h = x + residual; normed = rms_norm(h, weight, eps)``, one launch for both.

The reference is what an mlx-lm decoder layer does (``h = x + r`` then ``mx.fast.rms_norm``). The kernel rounds
``h`` to the array dtype before normalising (as the reference does) and finishes exactly as MLX's CUDA
``rms_norm`` does: ``w * T(float(h) * rsqrt(sum(h^2) / D + eps))``. The float32 sum of squares may be
accumulated in a different order than MLX's, so the normed output is checked within per-dtype tolerances.
"""

from __future__ import annotations

import mlx.core as mx
import numpy as np

from ..backend import constant, launch, target_for
from ..emit import KernelSpec, Param
from ._base import DTYPES, REF_TOLERANCE, TOLERANCE, CheckCase, OpInfo, RefCheck, dtype_name


def add_rms_norm_reference(
    x: mx.array, residual: mx.array, weight: mx.array, eps: float
) -> tuple[mx.array, mx.array]:
    h = x + residual
    return h, mx.fast.rms_norm(h, weight, eps)


# One threadgroup per row; each thread strides over the row, then a simdgroup + threadgroup reduction.
_BODY = """\
  const int D = x_shape[x_ndim - 1];
  int rows = 1;
  for (int d = 0; d < x_ndim - 1; ++d) rows *= x_shape[d];
  const int row = int(zm_bid);
  ZM_SHARED float partial[32];
  float ss = 0.0f;
  if (row < rows) {
    const int base = row * D;
    for (int j = int(zm_tid); j < D; j += int(zm_bdim)) {
      const T h = zm_add(x[base + j], residual[base + j]);
      h_out[base + j] = h;
      const float hf = static_cast<float>(h);
      ss += hf * hf;
    }
  }
  ss = zm_simd_sum(ss);
  if (zm_lane == 0) partial[zm_warp] = ss;
  ZM_BARRIER();
  const int nwarps = int((zm_bdim + 31u) / 32u);
  ss = (int(zm_lane) < nwarps) ? partial[zm_lane] : 0.0f;
  ss = zm_simd_sum(ss);
  if (row >= rows) return;
  const float inv = zm_rsqrt(ss / float(D) + eps[0]);
  const int base = row * D;
  for (int j = int(zm_tid); j < D; j += int(zm_bdim)) {
    // Re-read h from this thread's own writes: same thread, same index, so no barrier is needed.
    const float y = static_cast<float>(h_out[base + j]) * inv;
    normed[base + j] = zm_mul(weight[j], static_cast<T>(y));
  }
"""

SPEC = KernelSpec(
    name="add_rms_norm",
    inputs=(Param("x"), Param("residual"), Param("weight"), Param("eps", "float")),
    outputs=(Param("h_out"), Param("normed")),
    body=_BODY,
    templates=(("T", "float"),),
)


def add_rms_norm(
    x: mx.array, residual: mx.array, weight: mx.array, eps: float, *, stream: mx.Stream | None = None
) -> tuple[mx.array, mx.array]:
    """Return ``(x + residual, rms_norm(x + residual, weight, eps))`` in one pass over the row."""
    target = target_for(stream)
    if target == "cpu":
        return add_rms_norm_reference(x, residual, weight, eps)
    if x.shape != residual.shape or x.dtype != residual.dtype or weight.dtype != x.dtype:
        raise ValueError("add_rms_norm: x and residual must share shape and dtype, and weight must match dtype")
    eps_arr = constant((eps,))
    d = x.shape[-1]
    rows = x.size // d
    threads = 1024 if d >= 4096 else 256 if d >= 1024 else 128 if d >= 256 else 32
    h, normed = launch(
        SPEC, target, inputs=(x, residual, weight, eps_arr), output_shapes=[x.shape, x.shape],
        output_dtypes=[x.dtype, x.dtype], threads=rows * threads, threadgroup=threads,
        template=[("T", x.dtype)], stream=stream,
    )
    return h, normed


# Template is the dtype alone (3 instantiations); the widths pick 32, 256 and 1024 threads per row (one warp,
# several, the most), an odd width included.
_SHAPES = ((3, 123), (5, 2880), (2, 4096))


def _inputs(shape, dtype, key):
    k1, k2, k3 = mx.random.split(key, 3)
    x = mx.random.normal(shape, key=k1).astype(dtype)
    r = (3 * mx.random.normal(shape, key=k2)).astype(dtype)
    w = (1 + 0.1 * mx.random.normal((shape[-1],), key=k3)).astype(dtype)
    return x, r, w


def check_cases(seed: int) -> list[CheckCase]:
    cases = []
    key = mx.random.key(seed)
    for dtype in DTYPES:
        for shape in _SHAPES:
            key, sub = mx.random.split(key)
            x, r, w = _inputs(shape, dtype, sub)
            cases.append(CheckCase(
                op="norms", variant="add_rms_norm", dtype=dtype_name(dtype),
                kernel=lambda x=x, r=r, w=w: list(add_rms_norm(x, r, w, 1e-6)),
                reference=lambda x=x, r=r, w=w: list(add_rms_norm_reference(x, r, w, 1e-6)),
                exact=False, atol=TOLERANCE[dtype],
            ))
    return cases


def reference_checks(seed: int) -> list[RefCheck]:
    out = []
    key = mx.random.key(seed)
    for dtype in DTYPES:
        key, sub = mx.random.split(key)
        x, r, w = _inputs((7, 123), dtype, sub)
        h, normed = add_rms_norm_reference(x, r, w, 1e-5)
        f64 = lambda a: np.array(a.astype(mx.float32), dtype=np.float64)  # noqa: E731
        hh = f64(x) + f64(r)
        want = f64(w) * hh / np.sqrt(np.mean(hh * hh, axis=-1, keepdims=True) + 1e-5)
        err = max(float(np.max(np.abs(f64(h) - hh) / (np.abs(hh) + 1))),
                  float(np.max(np.abs(f64(normed) - want) / (np.abs(want) + 1))))
        out.append(RefCheck("norms", "add_rms_norm", dtype_name(dtype), err, REF_TOLERANCE[dtype]))
    return out


OP = OpInfo(
    name="norms",
    summary="residual add + RMSNorm in one launch: returns (x + r, rms_norm(x + r, w, eps))",
    variants=("add_rms_norm",),
    reference="zmlx.kernels.ops.norms.add_rms_norm_reference",
    kernel_specs=lambda: {"add_rms_norm": SPEC},
    check_cases=check_cases,
    reference_checks=reference_checks,
)

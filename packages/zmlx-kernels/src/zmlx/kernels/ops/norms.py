"""Residual add + RMSNorm: ``h = x + residual; normed = rms_norm(h, weight, eps)``, one launch for both.

The reference is what an mlx-lm decoder layer does (``h = x + r`` then ``mx.fast.rms_norm``). The kernel rounds
``h`` to the array dtype before normalising (as the reference does) and reduces the float32 sum of squares in the
order MLX's CUDA ``rms_norm_small`` / ``rms_norm`` kernels use (``mlx_rms_layout``: which thread sums which
16-byte vectors, then warp and block butterflies), finishing as they do: ``w * T(float(h) * rsqrt(ss / D + eps))``.
So on CUDA it is meant to be bit-identical to the two stock primitives (checked on the GPU); Metal's MLX sums in
another order, so there the normed output is within a tolerance.
"""

from __future__ import annotations

import mlx.core as mx
import numpy as np

from ..backend import constant, gpu_backend, launch, target_for
from ..emit import KernelSpec, Param
from ._base import DTYPES, REF_TOLERANCE, TOLERANCE, CheckCase, OpInfo, RefCheck, as_float64, dtype_name


def add_rms_norm_reference(
    x: mx.array, residual: mx.array, weight: mx.array, eps: float
) -> tuple[mx.array, mx.array]:
    h = x + residual
    return h, mx.fast.rms_norm(h, weight, eps)


def mlx_rms_layout(d: int, dtype: mx.Dtype) -> tuple[int, int, int]:
    """``(threads, chunks, reads)`` of MLX's CUDA RMSNorm for a row of ``d`` (mlx/backend/cuda/rms_norm.cu, 0.32):
    thread t sums elements ``(threads * i + t) * reads + j`` for chunk i, read j, in that order."""
    reads = 16 // dtype.size
    if d > reads * 128 * 8:  # the large-row kernel: 1024 threads looping over the row
        return 1024, -(-d // (1024 * reads)), reads
    nvec = -(-d // reads)
    if d <= reads * 64:
        return 64, 1, reads
    if nvec % 128 == 0 and nvec // 128 <= 8:
        return 128, nvec // 128, reads
    if nvec % 64 == 0 and nvec // 64 <= 8:
        return 64, nvec // 64, reads
    return 128, -(-nvec // 128), reads


# The float32 sum of squares of row `src` (length D) in MLX's order, left in `ss` on every thread. Needs the
# template constants BS (threads), NCH (chunks), NR (reads) and a ZM_SHARED float rms_partial[32].
RMS_SUM_OF_SQUARES = """\
  float ss = 0.0f;
  for (int i = 0; i < NCH; ++i) {
    for (int j = 0; j < NR; ++j) {
      const int e = (BS * i + int(zm_tid)) * NR + j;
      if (e < D) {
        const float t = static_cast<float>(src[e]);
        ss += t * t;
      }
    }
  }
  ss = zm_simd_sum(ss);
  if (BS > 32) {
    if (zm_lane == 0) rms_partial[zm_warp] = ss;
    ZM_BARRIER();
    ss = (int(zm_lane) < BS / 32) ? rms_partial[zm_lane] : 0.0f;
    ss = zm_simd_sum(ss);
  }
"""

# One threadgroup per row: write h, then normalise h re-read from this thread's own writes (no barrier needed).
_BODY = """\
  const int D = x_shape[x_ndim - 1];
  int rows = 1;
  for (int d = 0; d < x_ndim - 1; ++d) rows *= x_shape[d];
  const int row = int(zm_bid);
  if (row >= rows) return;  // whole threadgroups only: the grid is exactly `rows` groups
  ZM_SHARED float rms_partial[32];
  const int base = row * D;
  ZM_DEVICE T* src = h_out + base;
  for (int i = 0; i < NCH; ++i) {
    for (int j = 0; j < NR; ++j) {
      const int e = (BS * i + int(zm_tid)) * NR + j;
      if (e < D) h_out[base + e] = zm_add(x[base + e], residual[base + e]);
    }
  }
""" + RMS_SUM_OF_SQUARES + """\
  const float inv = zm_rsqrt(ss / float(D) + eps[0]);
  for (int i = 0; i < NCH; ++i) {
    for (int j = 0; j < NR; ++j) {
      const int e = (BS * i + int(zm_tid)) * NR + j;
      if (e < D) normed[base + e] = zm_mul(weight[e], static_cast<T>(static_cast<float>(src[e]) * inv));
    }
  }
"""

SPEC = KernelSpec(
    name="add_rms_norm",
    inputs=(Param("x"), Param("residual"), Param("weight"), Param("eps", "float")),
    outputs=(Param("h_out"), Param("normed")),
    body=_BODY,
    templates=(("T", "float"), ("BS", 64), ("NCH", 1), ("NR", 4)),
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
    d = x.shape[-1]
    threads, chunks, reads = mlx_rms_layout(d, x.dtype)
    h, normed = launch(
        SPEC, target, inputs=(x, residual, weight, constant((eps,))), output_shapes=[x.shape, x.shape],
        output_dtypes=[x.dtype, x.dtype], threads=(x.size // d) * threads, threadgroup=threads,
        template=[("T", x.dtype), ("BS", threads), ("NCH", chunks), ("NR", reads)], stream=stream,
    )
    return h, normed


# Widths that take every branch of mlx_rms_layout: one 64-thread chunk (odd 123), 64 x 2 chunks (1024 fp32),
# 128 x 3 unaligned (2880, gpt-oss), 128 x 2 / 4 aligned (2048 qwen3, 4096 llama), the 1024-thread loop (12288).
_SHAPES = ((3, 123), (2, 1024), (5, 2880), (1, 2048), (2, 4096), (1, 12288))


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
                exact=gpu_backend() == "cuda", atol=TOLERANCE[dtype],
            ))
    return cases


def reference_checks(seed: int) -> list[RefCheck]:
    out = []
    key = mx.random.key(seed)
    for dtype in DTYPES:
        key, sub = mx.random.split(key)
        x, r, w = _inputs((7, 123), dtype, sub)
        h, normed = add_rms_norm_reference(x, r, w, 1e-5)
        out.append(RefCheck("norms", "add_rms_norm", dtype_name(dtype), add_rms_norm_error(x, r, w, 1e-5, h, normed),
                            REF_TOLERANCE[dtype]))
    return out


def add_rms_norm_error(x, r, w, eps: float, h: mx.array, normed: mx.array) -> float:
    """Largest relative error of ``(h, normed)`` against float64 math for ``x + r`` and its RMSNorm."""
    hh = as_float64(x) + as_float64(r)
    want = as_float64(w) * hh / np.sqrt(np.mean(hh * hh, axis=-1, keepdims=True) + eps)
    return max(float(np.max(np.abs(as_float64(h) - hh) / (np.abs(hh) + 1))),
               float(np.max(np.abs(as_float64(normed) - want) / (np.abs(want) + 1))))


OP = OpInfo(
    name="norms",
    summary="residual add + RMSNorm in one launch: returns (x + r, rms_norm(x + r, w, eps))",
    variants=("add_rms_norm",),
    reference="zmlx.kernels.ops.norms.add_rms_norm_reference",
    kernel_specs=lambda: {"add_rms_norm": SPEC},
    check_cases=check_cases,
    reference_checks=reference_checks,
)

"""Per-head RMSNorm of queries and keys, then RoPE, in one launch (Qwen3 / LFM2 attention before the KV cache).

The reference is what those mlx-lm attention blocks do between the projections and the cache:
``rope(rms_norm(q.reshape(B, L, H, D)).transpose(0, 2, 1, 3), offset)`` for q and for k, i.e. four MLX
primitives (two ``rms_norm``, two ``rope``) and two transposes. The kernel normalises each head row as MLX's CUDA
RMSNorm does (``norms.RMS_SUM_OF_SQUARES``, same reduction order), rounds it to the array dtype, then rotates
pairs exactly as MLX's CUDA ``rope_single`` / ``rope``: ``inv_freq = exp2(-(i / (D/2)) * log2(base))``,
``theta = scale * (offset + l) * inv_freq``, float32 ``cos``/``sin``, one rounding per output. Outputs are
written in the transposed ``(B, H, L, D)`` layout, so no copy follows. Full-width RoPE only (``dims == D``).
"""

from __future__ import annotations

import ctypes
import ctypes.util
import functools
import math

import mlx.core as mx
import numpy as np

from ..backend import constant, gpu_backend, launch, position_input, target_for
from ..emit import KernelSpec, Param
from ._base import DTYPES, REF_TOLERANCE, TOLERANCE, CheckCase, OpInfo, RefCheck, as_float64, dtype_name
from .norms import RMS_SUM_OF_SQUARES, mlx_rms_layout


def qk_norm_rope_reference(
    q: mx.array, k: mx.array, q_weight: mx.array, k_weight: mx.array, q_eps: float, k_eps: float, *,
    offset: int | mx.array, base: float, scale: float = 1.0, traditional: bool = False,
) -> tuple[mx.array, mx.array]:
    dims = q.shape[-1]

    def one(x: mx.array, w: mx.array, eps: float) -> mx.array:
        x = mx.fast.rms_norm(x, w, eps).transpose(0, 2, 1, 3)
        return mx.fast.rope(x, dims, traditional=traditional, base=base, scale=scale, offset=offset)

    return one(q, q_weight, q_eps), one(k, k_weight, k_eps)


@functools.cache
def _log2f(base: float) -> float:
    """``std::log2(float(base))`` as MLX computes it on the host (libm's log2f), so theta matches to the bit."""
    libm = ctypes.util.find_library("m")
    if libm:
        fn = ctypes.CDLL(libm).log2f
        fn.restype, fn.argtypes = ctypes.c_float, [ctypes.c_float]
        return float(fn(float(np.float32(base))))
    return float(np.float32(math.log2(float(np.float32(base)))))


# After the sum of squares: normalise the row into shared memory (rounded to T, as the rms_norm primitive's output
# is), then rotate pairs and write them at (b, h, l, :). Shared with qkv.py, which projects the row first.
NORM_ROPE = """\
  const float inv = zm_rsqrt(ss / float(D) + (is_q ? params[0] : params[1]));
  for (int i = 0; i < NCH; ++i) {
    for (int j = 0; j < NR; ++j) {
      const int e = (BS * i + int(zm_tid)) * NR + j;
      if (e < D) nrm[e] = zm_mul(w[e], static_cast<T>(static_cast<float>(src[e]) * inv));
    }
  }
  ZM_BARRIER();
  ZM_DEVICE T* dst = (is_q ? q_out : k_out) + ((b * H + h) * L + l) * HD;
  const float pos = params[3] * static_cast<float>(pos0[0] + l);
  for (int p = int(zm_tid); p < HD / 2; p += BS) {
    const float d = static_cast<float>(p) / static_cast<float>(HD / 2);
    const float inv_freq = zm_exp2f(-d * params[2]);
    const float theta = pos * inv_freq;
    const float costheta = zm_cosf(theta);
    const float sintheta = zm_sinf(theta);
    const int i1 = TRADITIONAL ? 2 * p : p;
    const int i2 = TRADITIONAL ? i1 + 1 : i1 + HD / 2;
    const float x1 = static_cast<float>(nrm[i1]);
    const float x2 = static_cast<float>(nrm[i2]);
    const float rx1 = x1 * costheta - x2 * sintheta;
    const float rx2 = x1 * sintheta + x2 * costheta;
    dst[i1] = static_cast<T>(rx1);
    dst[i2] = static_cast<T>(rx2);
  }
"""

# One threadgroup per (token, head) row, q rows first. Normalise into shared memory (rounded to T, as the
# rms_norm primitive's output is), then each thread rotates pairs and writes them at (b, h, l, :).
_BODY = """\
  const int L = q_shape[1];
  const int rows = q_shape[0] * L * (HQ + HK);
  const int row = int(zm_bid);
  if (row >= rows) return;
  ZM_SHARED float rms_partial[32];
  ZM_SHARED T nrm[HD];
  const int per_token = HQ + HK;
  const int token = row / per_token;          // b * L + l
  const int head = row % per_token;
  const bool is_q = head < HQ;
  const int h = is_q ? head : head - HQ;
  const int H = is_q ? HQ : HK;
  const int b = token / L;
  const int l = token % L;
  const int D = HD;
  ZM_DEVICE const T* src = is_q ? q + (token * HQ + h) * HD : k + (token * HK + h) * HD;
  ZM_DEVICE const T* w = is_q ? q_weight : k_weight;
""" + RMS_SUM_OF_SQUARES + NORM_ROPE

SPEC = KernelSpec(
    name="qk_norm_rope",
    inputs=(Param("q"), Param("k"), Param("q_weight"), Param("k_weight"), Param("params", "float"),
            Param("pos0", "int32_t")),
    outputs=(Param("q_out"), Param("k_out")),
    body=_BODY,
    templates=(("T", "float"), ("HD", 128), ("HQ", 4), ("HK", 2), ("BS", 64), ("NCH", 1), ("NR", 4),
               ("TRADITIONAL", False)),
)


def qk_norm_rope(
    q: mx.array, k: mx.array, q_weight: mx.array, k_weight: mx.array, q_eps: float, k_eps: float, *,
    offset: int | mx.array, base: float, scale: float = 1.0, traditional: bool = False,
    stream: mx.Stream | None = None,
) -> tuple[mx.array, mx.array]:
    """``q``: (B, L, HQ, D), ``k``: (B, L, HK, D) -> RMSNorm'd and rotated, as (B, HQ, L, D) and (B, HK, L, D).

    ``offset`` is the position of the first token (``cache.offset``), an int or one int32 on the device (what a
    traced decode step passes in); ``base``/``scale``/``traditional`` are
    ``nn.RoPE``'s, rotating all ``D`` dimensions.
    """
    target = target_for(stream)
    if target == "cpu":
        return qk_norm_rope_reference(q, k, q_weight, k_weight, q_eps, k_eps, offset=offset, base=base,
                                      scale=scale, traditional=traditional)
    if q.ndim != 4 or k.ndim != 4 or q.shape[:2] != k.shape[:2] or q.shape[-1] != k.shape[-1]:
        raise ValueError(f"qk_norm_rope: q (B, L, HQ, D) and k (B, L, HK, D) expected, got {q.shape}, {k.shape}")
    if not (q.dtype == k.dtype == q_weight.dtype == k_weight.dtype) or q.shape[-1] % 2:
        raise ValueError("qk_norm_rope: q, k and both weights must share a dtype, and D must be even")
    b, seq, hq, d = q.shape
    hk = k.shape[2]
    threads, chunks, reads = mlx_rms_layout(d, q.dtype)
    rows = b * seq * (hq + hk)
    params = constant((q_eps, k_eps, _log2f(base), scale))
    q_out, k_out = launch(
        SPEC, target,
        inputs=(q, k, q_weight, k_weight, params, position_input(offset)),
        output_shapes=[(b, hq, seq, d), (b, hk, seq, d)], output_dtypes=[q.dtype, q.dtype],
        threads=rows * threads, threadgroup=threads,
        template=[("T", q.dtype), ("HD", d), ("HQ", hq), ("HK", hk), ("BS", threads), ("NCH", chunks),
                  ("NR", reads), ("TRADITIONAL", traditional)],
        stream=stream,
    )
    return q_out, k_out


# (B, L, HQ, HK, D): decode at qwen3-30b-a3b (32/4 x 128) and lfm2 (32/8 x 64) shapes, a short prefill with an odd
# length, and an odd head count; offsets large enough that theta is far from zero.
_SHAPES = ((1, 1, 32, 4, 128, 517), (1, 1, 32, 8, 64, 3001), (2, 33, 6, 2, 128, 31), (1, 3, 5, 1, 64, 123))


def _inputs(b, seq, hq, hk, d, dtype, key):
    k1, k2, k3, k4 = mx.random.split(key, 4)
    q = (4 * mx.random.normal((b, seq, hq, d), key=k1)).astype(dtype)
    k = mx.random.normal((b, seq, hk, d), key=k2).astype(dtype)
    qw = (1 + 0.2 * mx.random.normal((d,), key=k3)).astype(dtype)
    kw = (1 + 0.2 * mx.random.normal((d,), key=k4)).astype(dtype)
    return q, k, qw, kw


def check_cases(seed: int) -> list[CheckCase]:
    cases = []
    key = mx.random.key(seed)
    exact = gpu_backend() == "cuda"
    for dtype in DTYPES:
        for i, (b, seq, hq, hk, d, offset) in enumerate(_SHAPES):
            key, sub = mx.random.split(key)
            q, k, qw, kw = _inputs(b, seq, hq, hk, d, dtype, sub)
            kw_args = dict(offset=offset, base=1e6 if i % 2 == 0 else 10000.0, scale=1.0, traditional=i == 3)
            # odd shapes take the position as a device array, as a traced decode step passes it
            pos = dict(kw_args, offset=mx.array([offset], dtype=mx.int32)) if i % 2 else kw_args
            cases.append(CheckCase(
                op="attention", variant="qk_norm_rope", dtype=dtype_name(dtype),
                kernel=lambda q=q, k=k, qw=qw, kw=kw, a=pos: list(qk_norm_rope(q, k, qw, kw, 1e-6, 1e-5, **a)),
                reference=lambda q=q, k=k, qw=qw, kw=kw, a=kw_args: list(
                    qk_norm_rope_reference(q, k, qw, kw, 1e-6, 1e-5, **a)),
                exact=exact, atol=TOLERANCE[dtype] * 8,
            ))
    return cases


def reference_checks(seed: int) -> list[RefCheck]:
    """The reference against float64 math: per-head RMSNorm, then the rotation of pairs (i, i + D/2)."""
    out = []
    key = mx.random.key(seed)
    for dtype in DTYPES:
        key, sub = mx.random.split(key)
        q, k, qw, kw = _inputs(1, 3, 4, 2, 64, dtype, sub)
        got_q, _ = qk_norm_rope_reference(q, k, qw, kw, 1e-6, 1e-6, offset=7, base=10000.0)
        x, w = as_float64(q), as_float64(qw)
        n = w * x / np.sqrt(np.mean(x * x, axis=-1, keepdims=True) + 1e-6)
        half = 32
        inv_freq = 10000.0 ** (-np.arange(half) / half)
        theta = (7 + np.arange(3))[:, None] * inv_freq[None, :]  # (L, half)
        c, s = np.cos(theta)[None, :, None, :], np.sin(theta)[None, :, None, :]
        x1, x2 = n[..., :half], n[..., half:]
        want = np.concatenate([x1 * c - x2 * s, x1 * s + x2 * c], axis=-1).transpose(0, 2, 1, 3)
        got = as_float64(got_q)
        err = float(np.max(np.abs(got - want) / (np.abs(want) + 1)))
        out.append(RefCheck("attention", "qk_norm_rope", dtype_name(dtype), err, REF_TOLERANCE[dtype] * 2))
    return out


OP = OpInfo(
    name="attention",
    summary="q/k per-head RMSNorm + RoPE in one launch, written in (B, H, L, D) layout",
    variants=("qk_norm_rope",),
    reference="zmlx.kernels.ops.attention.qk_norm_rope_reference",
    kernel_specs=lambda: {"qk_norm_rope": SPEC},
    check_cases=check_cases,
    reference_checks=reference_checks,
)

"""Short convolution at decode: LFM2's gated depthwise conv step in one launch.

mlx-lm's ``ShortConv`` at one token: ``B, C, v = split(in_proj(x), 3)``; ``Bx = concat([state, B * v])``;
``y = C * conv1d(Bx, w, groups=D)`` (``+ bias`` after the conv when it has one); the new state is
``Bx[:, -(K-1):]``. That is a multiply, a concatenate, a convolution (cuDNN, or MLX's unfold + batched GEMM) and a
multiply: four-plus launches and a cuDNN plan per layer per token. The kernel does it per channel in one launch:
``B * v`` and ``C * conv`` round to the array dtype as the eager multiplies do; the K-tap sum runs in float32 (the
convolution's compute type), each bf16/fp16 product exact in float32, so only the summation order is a choice:
``ORDER`` 0 adds the taps first to last, 1 last to first. On the H100 order 0 matches MLX's convolution in every
one of a million bf16 and fp16 outputs (order 1 does not: tools/gpu/probe_conv_order.py). float32 products are not
exact and MLX's float32 convolution sums them its own way (a third of the outputs differ in the last bit), so for
float32 the op runs the reference ops on every device.
"""

from __future__ import annotations

import mlx.core as mx
import numpy as np

from ..backend import launch, target_for
from ..emit import KernelSpec, Param
from ._base import DTYPES, REF_TOLERANCE, CheckCase, OpInfo, RefCheck, as_float64, dtype_name

# --- reference (pure MLX, op for op what mlx-lm's ShortConv computes with a cache, one token, no mask) ----------


def short_conv_reference(
    bcx: mx.array, state: mx.array, weight: mx.array, bias: mx.array | None = None
) -> tuple[mx.array, mx.array]:
    """``(C * conv1d([state, B * v]), new_state)`` for ``bcx = in_proj(x)`` of shape ``[N, L, 3D]``."""
    b, c, v = mx.split(bcx, 3, axis=-1)
    bx = mx.concatenate([state, b * v], axis=1)
    y = mx.conv1d(bx, weight, groups=bx.shape[-1])
    if bias is not None:
        y = y + bias
    return c * y, bx[:, -state.shape[1]:, :]


# --- kernel: one thread per (row, channel) ------------------------------------------------------------------

_BODY = """\
  const int D = state_shape[2];
  const int KM1 = state_shape[1];  // taps - 1 (the state rows)
  const int n = state_shape[0] * D;
  const int i = int(zm_bid * zm_bdim + zm_tid);
  if (i >= n) return;
  const int row = i / D;
  const int d = i - row * D;
  ZM_DEVICE const T* in = bcx + row * 3 * D;
  ZM_DEVICE const T* st = state + row * KM1 * D;
  const T bx = zm_mul(in[d], in[2 * D + d]);  // B * v, rounded to T as the eager multiply
  float acc = 0.0f;
  for (int t = 0; t <= KM1; ++t) {
    const int k = ORDER == 0 ? t : KM1 - t;
    const T tap = k < KM1 ? st[k * D + d] : bx;
    acc = zm_fadd(acc, zm_fmul(static_cast<float>(weight[d * (KM1 + 1) + k]), static_cast<float>(tap)));
  }
  T conv = static_cast<T>(acc);
  if (HAS_BIAS) conv = zm_add(conv, static_cast<T>(bias[d]));
  out[i] = zm_mul(in[D + d], conv);  // C * conv
  ZM_DEVICE T* ns = new_state + row * KM1 * D;
  for (int k = 0; k < KM1; ++k) ns[k * D + d] = k + 1 < KM1 ? st[(k + 1) * D + d] : bx;
"""

SPEC = KernelSpec(
    name="short_conv",
    inputs=(Param("bcx"), Param("state"), Param("weight", "W"), Param("bias", "W")),
    outputs=(Param("out"), Param("new_state")),
    body=_BODY,
    templates=(("T", "float"), ("W", "float"), ("HAS_BIAS", False), ("ORDER", 0)),
)
_THREADS = 256
# The tap order that reproduces MLX's bf16/fp16 convolution on CUDA (H100, probe_conv_order.py: 0 of 2^20 differ).
CUDA_ORDER = 0
EXACT_DTYPES = (mx.bfloat16, mx.float16)


def _validate(bcx: mx.array, state: mx.array, weight: mx.array, bias: mx.array | None) -> None:
    if bcx.ndim != 3 or bcx.shape[1] != 1 or bcx.shape[2] % 3:
        raise ValueError(f"short_conv: bcx must be [N, 1, 3D] (one token), got {bcx.shape}")
    n, d = bcx.shape[0], bcx.shape[2] // 3
    if state.ndim != 3 or state.shape[0] != n or state.shape[2] != d or state.shape[1] < 1:
        raise ValueError(f"short_conv: state must be [{n}, K-1, {d}], got {state.shape}")
    if weight.shape != (d, state.shape[1] + 1, 1):
        raise ValueError(f"short_conv: weight must be [{d}, {state.shape[1] + 1}, 1] (depthwise), got {weight.shape}")
    if bias is not None and (bias.shape != (d,) or bias.dtype != weight.dtype):
        raise ValueError(f"short_conv: bias must be [{d}] in the weight's dtype, got {bias.shape} {bias.dtype}")
    if state.dtype != bcx.dtype:
        raise ValueError(f"short_conv: state dtype {state.dtype} differs from bcx dtype {bcx.dtype}")


def short_conv(
    bcx: mx.array, state: mx.array, weight: mx.array, bias: mx.array | None = None, *,
    order: int | None = None, stream: mx.Stream | None = None,
) -> tuple[mx.array, mx.array]:
    """LFM2's short-conv step at one token: ``(C * conv1d([state, B * v], weight), new_state)``.

    ``bcx`` is ``in_proj(x)``, ``[N, 1, 3D]``; ``state`` the cache's ``[N, K-1, D]``; ``weight`` the depthwise
    ``nn.Conv1d`` weight ``[D, K, 1]``. ``order`` overrides the tap order (0 first to last, 1 last to first).
    float32, and weights in another dtype than the activations, run the reference ops (MLX's convolution then
    rounds in ways the kernel does not reproduce).
    """
    _validate(bcx, state, weight, bias)
    if target_for(stream) == "cpu" or bcx.dtype not in EXACT_DTYPES or weight.dtype != bcx.dtype:
        return short_conv_reference(bcx, state, weight, bias)
    has_bias = bias is not None
    out, new_state = launch(
        SPEC, target_for(stream), inputs=(bcx, state, weight, bias if has_bias else weight),
        output_shapes=[(bcx.shape[0], 1, state.shape[2]), state.shape], output_dtypes=[bcx.dtype, bcx.dtype],
        threads=state.shape[0] * state.shape[2], threadgroup=_THREADS,
        template=[("T", bcx.dtype), ("W", weight.dtype), ("HAS_BIAS", has_bias),
                  ("ORDER", CUDA_ORDER if order is None else order)],
        stream=stream,
    )
    return out, new_state


# --- checks: odd widths, LFM2's K=3 and a longer K, with and without bias ----------------------------------------

_SHAPES = ((1, 33, 3, False), (3, 123, 3, True), (2, 31, 4, False), (1, 2048, 3, False))


def _inputs(n: int, d: int, k: int, bias: bool, dtype: mx.Dtype, key: mx.array):
    ks = mx.random.split(key, 4)
    bcx = (2 * mx.random.normal((n, 1, 3 * d), key=ks[0])).astype(dtype)
    state = mx.random.normal((n, k - 1, d), key=ks[1]).astype(dtype)
    # a few repeated values: equal taps and equal products, where a different summation order could show
    state = mx.where(mx.arange(d) % 7 == 0, state[:, :1, :], state)
    weight = mx.random.normal((d, k, 1), key=ks[2]).astype(dtype)
    b = mx.random.normal((d,), key=ks[3]).astype(dtype) if bias else None
    return bcx, state, weight, b


def check_cases(seed: int) -> list[CheckCase]:
    cases = []
    key = mx.random.key(seed)
    for dtype in EXACT_DTYPES:  # float32 runs the reference itself: nothing to compare
        for n, d, k, bias in _SHAPES:
            key, sub = mx.random.split(key)
            args = _inputs(n, d, k, bias, dtype, sub)
            cases.append(CheckCase(
                op="conv", variant=f"short_conv_n{n}_d{d}_k{k}{'_bias' if bias else ''}", dtype=dtype_name(dtype),
                kernel=lambda a=args: list(short_conv(*a)),
                reference=lambda a=args: list(short_conv_reference(*a)),
                exact=True,
            ))
    return cases


def reference_checks(seed: int) -> list[RefCheck]:
    out = []
    key = mx.random.key(seed)
    for dtype in DTYPES:
        key, sub = mx.random.split(key)
        bcx, state, weight, bias = _inputs(5, 123, 3, True, dtype, sub)
        got, new_state = short_conv_reference(bcx, state, weight, bias)
        f = as_float64
        x, s, w, b = f(bcx), f(state), f(weight), f(bias)
        bx = x[:, :, :123] * x[:, :, 246:]
        taps = np.concatenate([s, bx], axis=1)  # [N, K, D]
        terms = taps * w[:, :, 0].T[None]
        want = x[:, 0, 123:246] * (terms.sum(axis=1) + b)
        # relative to the magnitudes summed (a cancelling sum has a tiny result but the roundings of its terms)
        scale = np.abs(x[:, 0, 123:246]) * (np.abs(terms).sum(axis=1) + np.abs(b)) + 1.0
        err = float(np.max(np.abs(f(got)[:, 0] - want) / scale))
        err = max(err, float(np.max(np.abs(f(new_state) - taps[:, 1:]) / (np.abs(taps[:, 1:]) + 1.0))))
        out.append(RefCheck("conv", "short_conv", dtype_name(dtype), err, REF_TOLERANCE[dtype]))
    return out


OP = OpInfo(
    name="conv",
    summary="LFM2 short conv at one token: B*v, depthwise conv over [state, B*v], C*, new state (one launch)",
    variants=("short_conv",),
    reference="zmlx.kernels.ops.conv.short_conv_reference",
    kernel_specs=lambda: {"short_conv": SPEC},
    check_cases=check_cases,
    reference_checks=reference_checks,
)

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
from ._qmv import qmv_rows, rows_per_warp
from .moe_experts import Quant, mlx_numerics

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


# --- in_proj inside the same launch: in_proj's rows are per channel (B, C, v of channel d are rows d, D+d, 2D+d), so a
# block computes its channels' three rows (MLX's qmv numerics, _qmv.py) into shared memory and runs the tail of
# _BODY above on them, text for text.

_TAIL = _BODY[_BODY.index("  ZM_DEVICE const T* st"):]
for _old, _new in (("in[d], in[2 * D + d]", "sh_b[ch], sh_v[ch]"), ("in[D + d]", "sh_c[ch]")):
    if _TAIL.count(_old) != 1:  # the conv body changed shape: fail at import, not with wrong results
        raise RuntimeError(f"short_conv body no longer reads {_old!r} once")
    _TAIL = _TAIL.replace(_old, _new)

_PROJ_BODY = """\
  const int D = state_shape[2];
  const int KM1 = state_shape[1];
  const int c0 = int(zm_bid) * CB;  // this block's channels [c0, c0 + CB)
  if (c0 >= D) return;
  ZM_SHARED T sh_b[CB];
  ZM_SHARED T sh_c[CB];
  ZM_SHARED T sh_v[CB];
  ZM_DEVICE const uint32_t* qmv_w = w_in;
  ZM_DEVICE const T* qmv_s = s_in;
  ZM_DEVICE const T* qmv_b = b_in;
  const int qmv_kw = w_in_shape[w_in_ndim - 1];
  ZM_DEVICE const T* qmv_x = x;
  const int qmv_rows = D - c0 < CB ? D - c0 : CB;
  {
    const int qmv_row0 = c0;  // B rows
""" + qmv_rows("sh_b[e] = g;") + """\
  }
  {
    const int qmv_row0 = D + c0;  // C rows
""" + qmv_rows("sh_c[e] = g;") + """\
  }
  {
    const int qmv_row0 = 2 * D + c0;  // v rows
""" + qmv_rows("sh_v[e] = g;") + """\
  }
  ZM_BARRIER();
  const int ch = int(zm_tid);
  if (ch >= qmv_rows) return;
  const int row = 0;  // one token
  const int d = c0 + ch;
  const int i = d;
""" + _TAIL

PROJ_SPEC = KernelSpec(
    name="short_conv_proj",
    inputs=(Param("x"), Param("w_in", "uint32_t"), Param("s_in"), Param("b_in"), Param("state"),
            Param("weight", "W"), Param("bias", "W")),
    outputs=(Param("out"), Param("new_state")),
    body=_PROJ_BODY,
    templates=(("T", "float"), ("W", "float"), ("HAS_BIAS", False), ("ORDER", 0), ("A", "float"), ("BITS", 4),
               ("QGS", 64), ("R", 2), ("CB", 16)),
)
_CHANNELS_PER_BLOCK = 16  # x 3 rows: 48 projection rows a block of 8 warps


def short_conv_proj_reference(x: mx.array, in_proj: Quant, state: mx.array, weight: mx.array,
                              bias: mx.array | None = None, *, group_size: int, bits: int):
    """``short_conv_reference(QuantizedLinear(x), ...)``: mlx-lm's in_proj, then its short-conv step."""
    w, s, b = in_proj
    bcx = mx.quantized_matmul(x, w, scales=s, biases=b, transpose=True, group_size=group_size, bits=bits)
    return short_conv_reference(bcx, state, weight, bias)


def _proj_fits(x: mx.array, in_proj: Quant, state: mx.array, weight: mx.array, bias: mx.array | None,
               group_size: int, bits: int) -> bool:
    # anything else (malformed shapes included) takes the projection + short_conv, whose checks raise
    w, s, b = in_proj
    kdim, d = x.shape[-1], state.shape[-1]
    return (x.ndim == 3 and x.shape[:2] == (1, 1) and state.ndim == 3 and state.shape[0] == 1
            and state.shape[1] >= 1 and weight.shape == (d, state.shape[1] + 1, 1)
            and (bias is None or (bias.shape == (d,) and bias.dtype == weight.dtype)) and x.dtype == mx.bfloat16
            and state.dtype == x.dtype and weight.dtype == x.dtype and s.dtype == x.dtype and b is not None
            and b.dtype == x.dtype and w.shape == (3 * d, kdim * bits // 32) and kdim > group_size
            and mlx_numerics(1, 3 * d, kdim, group_size, bits) == "qmv")


def short_conv_proj(x: mx.array, in_proj: Quant, state: mx.array, weight: mx.array, bias: mx.array | None = None,
                    *, group_size: int, bits: int, stream: mx.Stream | None = None) -> tuple[mx.array, mx.array]:
    """``short_conv(QuantizedLinear(x), state, weight, bias)`` for an affine-quantized ``in_proj`` ``(w, scales,
    biases)``: one launch for one bf16 token on CUDA; elsewhere the projection, then ``short_conv``."""
    target = target_for(stream)
    if target == "cpu":
        return short_conv_proj_reference(x, in_proj, state, weight, bias, group_size=group_size, bits=bits)
    if target != "cuda" or not _proj_fits(x, in_proj, state, weight, bias, group_size, bits):
        w, s, b = in_proj
        bcx = mx.quantized_matmul(x, w, scales=s, biases=b, transpose=True, group_size=group_size, bits=bits)
        return short_conv(bcx, state, weight, bias, stream=stream)
    d, has_bias = state.shape[2], bias is not None
    blocks = -(-d // _CHANNELS_PER_BLOCK)
    out, new_state = launch(
        PROJ_SPEC, "cuda", inputs=(x, *in_proj, state, weight, bias if has_bias else weight),
        output_shapes=[(1, 1, d), state.shape], output_dtypes=[x.dtype, x.dtype],
        threads=blocks * 256, threadgroup=256,
        template=[("T", x.dtype), ("W", weight.dtype), ("HAS_BIAS", has_bias), ("ORDER", CUDA_ORDER),
                  ("A", mx.float32 if bits == 8 else x.dtype), ("BITS", bits), ("QGS", group_size),
                  ("R", rows_per_warp(bits, _CHANNELS_PER_BLOCK, 8)), ("CB", _CHANNELS_PER_BLOCK)],
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
    for d, kdim, gs, bits, k, bias in _PROJ_SHAPES:  # the fused in_proj: bf16, one token
        key, sub, kq = mx.random.split(key, 3)
        _, state, weight, b = _inputs(1, d, k, bias, mx.bfloat16, sub)
        x = mx.random.normal((1, 1, kdim), key=kq).astype(mx.bfloat16)
        w_in = mx.quantize((mx.random.normal((3 * d, kdim), key=sub) * 0.05).astype(mx.bfloat16), group_size=gs,
                           bits=bits)
        args, kw = (x, w_in, state, weight, b), dict(group_size=gs, bits=bits)
        cases.append(CheckCase(
            op="conv", variant=f"short_conv_proj_d{d}_K{kdim}_g{gs}_{bits}bit_k{k}{'_bias' if bias else ''}",
            dtype="bfloat16",
            kernel=lambda a=args, kw=kw: list(short_conv_proj(*a, **kw)),
            reference=lambda a=args, kw=kw: list(short_conv_proj_reference(*a, **kw)),
            exact=True,
        ))
    return cases


# (D channels, K hidden, group size, bits, taps, bias): LFM2-8B-A1B's conv layer, and odd sizes with tail steps
_PROJ_SHAPES = ((2048, 2048, 64, 4, 3, False), (123, 320, 32, 8, 3, True), (33, 128, 64, 4, 4, False))


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
    summary="LFM2 short conv at one token: B*v, depthwise conv over [state, B*v], C*, new state (one launch); "
            "short_conv_proj: with the quantized in_proj in the same launch",
    variants=("short_conv", "short_conv_proj"),
    reference="zmlx.kernels.ops.conv.short_conv_reference, short_conv_proj_reference",
    kernel_specs=lambda: {"short_conv": SPEC, "short_conv_proj": PROJ_SPEC},
    check_cases=check_cases,
    reference_checks=reference_checks,
)

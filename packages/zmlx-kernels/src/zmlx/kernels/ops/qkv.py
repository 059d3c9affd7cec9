"""An attention block's prologue at one token in one launch: q/k/v projections, per-head q/k RMSNorm, RoPE.

The reference is what qwen3 / lfm2 attention (and zmlx-patch's ``qk_norm_rope`` pattern) compute before the KV
cache: three affine-quantized ``QuantizedLinear`` projections (three MLX ``qmv`` launches), the reshapes, then
``qk_norm_rope`` (q/k RMSNorm + RoPE in the ``(B, H, L, D)`` layout) and the value transpose. The kernel runs one
threadgroup per head (q heads, then k heads, then v heads): the head's ``D`` projection rows in MLX's CUDA qmv
numerics (_qmv.py) into shared memory, rounded to the activations' dtype as the projection's output is; v heads
write them out, q/k heads then run attention.py's own RMSNorm sum (MLX's reduction order) and normalise + rotate
code on them (``NORM_ROPE``). So the outputs are bit-identical to the reference wherever MLX runs qmv.

Kernel path: CUDA, one token (``B * L == 1``), bf16 activations/scales/biases, the three projections affine with
one group size and bit width and no bias. Everything else runs the projections and ``qk_norm_rope``. Not yet run on a
GPU (written 2026-11-27 with the device budget spent): zmlx-patch uses it only under ``patch(model, fuse_qkv=True)``.
"""

from __future__ import annotations

import re

import mlx.core as mx

from ..backend import constant, launch, position_input, target_for
from ..emit import KernelSpec, Param
from ._base import REF_TOLERANCE, CheckCase, OpInfo, RefCheck, dtype_name
from ._qmv import qmv_rows, rows_per_warp
from .attention import NORM_ROPE, _log2f, qk_norm_rope, qk_norm_rope_reference
from .moe_experts import Quant, mlx_numerics
from .norms import RMS_SUM_OF_SQUARES, mlx_rms_layout
from .qmv import projection_error

_BODY = """\
  const int hb = int(zm_bid);  // q heads, then k heads, then v heads
  if (hb >= HQ + 2 * HK) return;
  ZM_SHARED float rms_partial[32];
  ZM_SHARED T proj[HD];
  ZM_SHARED T nrm[HD];
  const int which = hb < HQ ? 0 : (hb < HQ + HK ? 1 : 2);
  const int h = which == 0 ? hb : (which == 1 ? hb - HQ : hb - HQ - HK);
  ZM_DEVICE const uint32_t* qmv_w = which == 0 ? w_q : (which == 1 ? w_k : w_v);
  ZM_DEVICE const T* qmv_s = which == 0 ? s_q : (which == 1 ? s_k : s_v);
  ZM_DEVICE const T* qmv_b = which == 0 ? b_q : (which == 1 ? b_k : b_v);
  const int qmv_kw = w_q_shape[w_q_ndim - 1];
  ZM_DEVICE const T* qmv_x = x;
  const int qmv_rows = HD;
  const int qmv_row0 = h * HD;
""" + qmv_rows("proj[e] = g;") + """\
  ZM_BARRIER();
  if (which == 2) {  // v: the projection itself, at (b, h, l) = (0, h, 0)
    for (int e = int(zm_tid); e < HD; e += int(zm_bdim)) v_out[h * HD + e] = proj[e];
    return;
  }
  // attention.py's per-head norm + RoPE on the shared row (threads past BS add nothing it reads)
  const bool is_q = which == 0;
  const int H = is_q ? HQ : HK;
  const int b = 0, l = 0, L = 1;
  const int D = HD;
  const auto src = proj;
  ZM_DEVICE const T* w = is_q ? q_weight : k_weight;
""" + RMS_SUM_OF_SQUARES + NORM_ROPE

SPEC = KernelSpec(
    name="qkv_norm_rope",
    inputs=(Param("x"), Param("w_q", "uint32_t"), Param("s_q"), Param("b_q"), Param("w_k", "uint32_t"),
            Param("s_k"), Param("b_k"), Param("w_v", "uint32_t"), Param("s_v"), Param("b_v"), Param("q_weight"),
            Param("k_weight"), Param("params", "float"), Param("pos0", "int32_t")),
    outputs=(Param("q_out"), Param("k_out"), Param("v_out")),
    body=_BODY,
    templates=(("T", "float"), ("A", "float"), ("BITS", 4), ("QGS", 64), ("R", 4), ("HD", 128), ("HQ", 4),
               ("HK", 2), ("BS", 64), ("NCH", 1), ("NR", 4), ("TRADITIONAL", False)),
)
# The same launch from the layer's un-normalised row: each block first runs input_layernorm (MLX's rms_norm order,
# norms.py's sum under the names IBS/ICH/IRD, as BS/NCH/NR are the head norm's) into its own row of `xn`, then
# projects that row, re-read after a device-memory barrier (no block reads another's row)
QMV_X = "  ZM_DEVICE const T* qmv_x = x;\n"
# needs inputs x, in_w, in_eps, an output xn of (blocks, D), `hb` (this block) and rms_partial[32]; declares qmv_x
INPUT_NORM = """\
  ZM_DEVICE T* xrow = xn + size_t(hb) * size_t(qmv_kw * (32 / BITS));
  {
    const int D = qmv_kw * (32 / BITS);
    ZM_DEVICE const T* src = x;
""" + re.sub(r"\bBS\b", "IBS", re.sub(r"\bNCH\b", "ICH", re.sub(r"\bNR\b", "IRD", RMS_SUM_OF_SQUARES))) + """\
    const float inv = zm_rsqrt(ss / float(D) + in_eps[0]);
    if (int(zm_tid) < IBS) {
      for (int i = 0; i < ICH; ++i) {
        for (int j = 0; j < IRD; ++j) {
          const int e = (IBS * i + int(zm_tid)) * IRD + j;
          if (e < D) xrow[e] = zm_mul(in_w[e], static_cast<T>(static_cast<float>(src[e]) * inv));
        }
      }
    }
  }
  ZM_DEVICE_BARRIER();
  ZM_DEVICE const T* qmv_x = xrow;
"""
if _BODY.count(QMV_X) != 1:  # the body changed shape: fail at import, not with wrong results
    raise RuntimeError("qkv_norm_rope's body no longer reads x through one qmv_x line")

SPEC_IN = KernelSpec(
    name="qkv_norm_rope_in",
    inputs=(SPEC.inputs[0], Param("in_w"), Param("in_eps", "float"), *SPEC.inputs[1:]),
    outputs=(*SPEC.outputs, Param("xn")),
    body=_BODY.replace(QMV_X, INPUT_NORM),
    templates=(*SPEC.templates, ("IBS", 128), ("ICH", 2), ("IRD", 8)),
)

_THREADS = 256  # 8 warps a head; the router kernel failed to launch at 1024 (registers)


def _project(x: mx.array, q: Quant, group_size: int, bits: int) -> mx.array:
    return mx.quantized_matmul(x, q[0], scales=q[1], biases=q[2], transpose=True, group_size=group_size, bits=bits)


def qkv_norm_rope_reference(
    x: mx.array, q: Quant, k: Quant, v: Quant, q_weight: mx.array, k_weight: mx.array, q_eps: float, k_eps: float,
    *, n_heads: int, n_kv_heads: int, group_size: int, bits: int, offset: int | mx.array, base: float,
    scale: float = 1.0,
    traditional: bool = False, input_norm: tuple[mx.array, float] | None = None,
) -> tuple[mx.array, mx.array, mx.array]:
    """The projections as ``QuantizedLinear``, then ``qk_norm_rope_reference`` and the value transpose;
    ``input_norm = (weight, eps)``: ``x`` is first ``mx.fast.rms_norm``-ed, as the layer's input norm does."""
    if input_norm is not None:
        x = mx.fast.rms_norm(x, *input_norm)
    b, seq, _ = x.shape
    qs, ks, vs = (_project(x, p, group_size, bits) for p in (q, k, v))
    qo, ko = qk_norm_rope_reference(qs.reshape(b, seq, n_heads, -1), ks.reshape(b, seq, n_kv_heads, -1), q_weight,
                                    k_weight, q_eps, k_eps, offset=offset, base=base, scale=scale,
                                    traditional=traditional)
    return qo, ko, vs.reshape(b, seq, n_kv_heads, -1).transpose(0, 2, 1, 3)


def projections_fit(x, quants, head_dim, n_heads, n_kv_heads, group_size, bits) -> bool:
    """One bf16 token and three affine projections the per-head qmv rows reproduce (qkv.py's and qkv_rope.py's)."""
    kdim = x.shape[-1]
    rows = (n_heads * head_dim, n_kv_heads * head_dim, n_kv_heads * head_dim)
    return (x.ndim == 3 and x.shape[0] * x.shape[1] == 1 and x.dtype == mx.bfloat16 and head_dim % 2 == 0
            and kdim > group_size
            and all(p[0].ndim == 2 and p[0].shape == (n, kdim * bits // 32) and p[1].dtype == x.dtype
                    and p[2] is not None and p[2].dtype == x.dtype
                    and mlx_numerics(1, n, kdim, group_size, bits) == "qmv" for p, n in zip(quants, rows, strict=True)))


def _fits(x, quants, q_weight, k_weight, head_dim, n_heads, n_kv_heads, group_size, bits) -> bool:
    return (q_weight.dtype == x.dtype and k_weight.dtype == x.dtype
            and projections_fit(x, quants, head_dim, n_heads, n_kv_heads, group_size, bits))


def qkv_norm_rope(
    x: mx.array, q: Quant, k: Quant, v: Quant, q_weight: mx.array, k_weight: mx.array, q_eps: float, k_eps: float,
    *, n_heads: int, n_kv_heads: int, group_size: int, bits: int, offset: int | mx.array, base: float,
    scale: float = 1.0,
    traditional: bool = False, input_norm: tuple[mx.array, float] | None = None, stream: mx.Stream | None = None,
) -> tuple[mx.array, mx.array, mx.array]:
    """``x``: (B, L, D) -> q (B, HQ, L, HD), k and v (B, HK, L, HD): projected, q/k normalised and rotated.

    ``q``/``k``/``v`` are the projections' ``(weight, scales, biases)``; the rest as ``zk.qk_norm_rope``.
    ``input_norm = (weight, eps)``: ``x`` is the layer's un-normalised row and its RMSNorm (the decoder layer's
    input norm) is computed in the same launch.
    """
    head_dim = q_weight.shape[-1]
    if x.ndim != 3 or k_weight.shape != q_weight.shape:
        raise ValueError(f"qkv_norm_rope: x must be (B, L, D) and both norm weights (HD,), got {x.shape}, "
                         f"{q_weight.shape}, {k_weight.shape}")
    kw = dict(offset=offset, base=base, scale=scale, traditional=traditional)
    target = target_for(stream)
    if target == "cpu":
        return qkv_norm_rope_reference(x, q, k, v, q_weight, k_weight, q_eps, k_eps, n_heads=n_heads,
                                       n_kv_heads=n_kv_heads, group_size=group_size, bits=bits,
                                       input_norm=input_norm, **kw)
    fits = target == "cuda" and _fits(x, (q, k, v), q_weight, k_weight, head_dim, n_heads, n_kv_heads, group_size, bits)
    tb = max(mlx_rms_layout(head_dim, x.dtype)[0], _THREADS)
    if input_norm is not None and not (fits and input_norm_fits(x, input_norm[0], tb)):
        x, input_norm = mx.fast.rms_norm(x, *input_norm, stream=stream), None  # the layer's norm, as it runs it
    if not fits:
        # Metal's qmv sums in another order: the projections stay MLX's, the norm + RoPE is one launch anyway
        b, seq, _ = x.shape
        qs, ks, vs = (_project(x, p, group_size, bits) for p in (q, k, v))
        qo, ko = qk_norm_rope(qs.reshape(b, seq, n_heads, -1), ks.reshape(b, seq, n_kv_heads, -1), q_weight,
                              k_weight, q_eps, k_eps, stream=stream, **kw)
        return qo, ko, vs.reshape(b, seq, n_kv_heads, -1).transpose(0, 2, 1, 3)
    threads, chunks, reads = mlx_rms_layout(head_dim, x.dtype)
    b, blocks = x.shape[0], n_heads + 2 * n_kv_heads
    shapes = [(b, n_heads, 1, head_dim), (b, n_kv_heads, 1, head_dim), (b, n_kv_heads, 1, head_dim)]
    template = [("T", x.dtype), ("A", mx.float32 if bits == 8 else x.dtype), ("BITS", bits), ("QGS", group_size),
                ("R", rows_per_warp(bits, head_dim, tb // 32)), ("HD", head_dim), ("HQ", n_heads),
                ("HK", n_kv_heads), ("BS", threads), ("NCH", chunks), ("NR", reads), ("TRADITIONAL", traditional)]
    params = (q_eps, k_eps, _log2f(base), scale)
    if input_norm is None:
        spec, inputs, extra = SPEC, (x, *q, *k, *v), []
    else:  # one scratch row per block for its normalised x
        spec, extra = SPEC_IN, [(blocks, x.shape[-1])]
        inputs = (x, input_norm[0], constant((input_norm[1],)), *q, *k, *v)
        template += list(zip(("IBS", "ICH", "IRD"), mlx_rms_layout(x.shape[-1], x.dtype), strict=True))
    out = launch(
        spec, "cuda", inputs=(*inputs, q_weight, k_weight, constant(params), position_input(offset)),
        output_shapes=shapes + extra, output_dtypes=[x.dtype] * (3 + len(extra)),
        threads=blocks * tb, threadgroup=tb, template=template, stream=stream,
    )
    return tuple(out[:3])


def input_norm_fits(x: mx.array, weight: mx.array, threads: int) -> bool:
    # MLX's rms_norm for the row must run on threads the block has (its 1024-thread kernel past 8192 bf16 does not)
    return weight.dtype == x.dtype and weight.shape == x.shape[-1:] and mlx_rms_layout(x.shape[-1], x.dtype)[0] <= threads


# --- checks: decode shapes of qwen3-30b-a3b (32/4 heads x 128, D 2048, 4-bit) and lfm2 (32/8 x 64), and odd ones --

# (HQ, HK, HD, D, group size, bits, offset, base, traditional)
CASES = (
    (32, 4, 128, 2048, 64, 4, 517, 1e6, False),
    (32, 8, 64, 2048, 64, 4, 3001, 1e6, False),
    (5, 1, 64, 320, 32, 8, 123, 10000.0, True),
    (3, 3, 128, 640, 128, 4, 31, 10000.0, False),
)


def make_case(hq, hk, hd, d, group_size, bits, key, dtype=mx.bfloat16):
    ks = mx.random.split(key, 6)
    x = mx.random.normal((1, 1, d), key=ks[0]).astype(dtype)
    quants = tuple(mx.quantize((mx.random.normal((n * hd, d), key=kk) * 0.05).astype(dtype), group_size=group_size,
                               bits=bits) for n, kk in ((hq, ks[1]), (hk, ks[2]), (hk, ks[3])))
    qw = (1 + 0.2 * mx.random.normal((hd,), key=ks[4])).astype(dtype)
    kw = (1 + 0.2 * mx.random.normal((hd,), key=ks[5])).astype(dtype)
    return x, quants, qw, kw


def check_cases(seed: int) -> list[CheckCase]:
    cases = []
    key = mx.random.key(seed)
    for hq, hk, hd, d, gs, bits, offset, base, trad in CASES:
        key, sub = mx.random.split(key)
        x, (q, k, v), qw, kw = make_case(hq, hk, hd, d, gs, bits, sub)
        args = dict(n_heads=hq, n_kv_heads=hk, group_size=gs, bits=bits, offset=offset, base=base, traditional=trad)
        # the lfm2 shape takes the position as a device array, as a traced decode step passes it
        pos = dict(args, offset=mx.array([offset], dtype=mx.int32)) if hd == 64 else args
        cases.append(CheckCase(
            op="qkv", variant=f"qkv_norm_rope HQ{hq} HK{hk} HD{hd} D{d} g{gs} {bits}-bit", dtype="bfloat16",
            kernel=lambda a=(x, q, k, v, qw, kw), kw_=pos: list(qkv_norm_rope(*a, 1e-6, 1e-5, **kw_)),
            reference=lambda a=(x, q, k, v, qw, kw), kw_=args: list(qkv_norm_rope_reference(*a, 1e-6, 1e-5, **kw_)),
            exact=True,
        ))
        # the decoder layer's input RMSNorm in the same launch: x un-normalised (scaled, so the norm matters)
        xr = 3 * x
        iw = (1 + 0.1 * mx.random.normal((d,), key=mx.random.split(sub)[1])).astype(x.dtype)
        cases.append(CheckCase(
            op="qkv", variant=f"qkv_norm_rope + input norm HQ{hq} HK{hk} HD{hd} D{d} g{gs} {bits}-bit",
            dtype="bfloat16",
            kernel=lambda a=(xr, q, k, v, qw, kw), kw_=dict(pos, input_norm=(iw, 1e-6)): list(
                qkv_norm_rope(*a, 1e-6, 1e-5, **kw_)),
            reference=lambda a=(xr, q, k, v, qw, kw), kw_=dict(args, input_norm=(iw, 1e-6)): list(
                qkv_norm_rope_reference(*a, 1e-6, 1e-5, **kw_)),
            exact=True,
        ))
    return cases


# the reference checks' prologue shape: 4 q heads, 2 kv heads of 64, width 256, 4-bit g64
CHECK_SHAPE = (4, 2, 64, 256, 64, 4)


def value_checks(op: str, variant: str, seed: int, run) -> list[RefCheck]:
    """A prologue reference's v (a plain projection, + bias) against float64 math, in float32 and bf16:
    ``run(dtype, key) -> (x, v quant, v got, bias or None)`` at CHECK_SHAPE."""
    out = []
    key = mx.random.key(seed)
    for dtype in (mx.float32, mx.bfloat16):
        key, sub = mx.random.split(key)
        x, v, got, bias = run(dtype, sub)
        gs, bits = CHECK_SHAPE[4:]
        out.append(RefCheck(op, variant, dtype_name(dtype), projection_error(x, v, got, gs, bits, bias),
                            REF_TOLERANCE[dtype]))
    return out


def reference_checks(seed: int) -> list[RefCheck]:
    """The reference's v (the projection) against float64 math on the dequantized weights; q/k are
    qk_norm_rope_reference of the same projections, checked in attention.py."""
    hq, hk, hd, d, gs, bits = CHECK_SHAPE

    def run(dtype, key):
        x, (q, k, v), qw, kw = make_case(hq, hk, hd, d, gs, bits, key, dtype)
        _, _, got = qkv_norm_rope_reference(x, q, k, v, qw, kw, 1e-6, 1e-6, n_heads=hq, n_kv_heads=hk,
                                            group_size=gs, bits=bits, offset=5, base=10000.0)
        return x, v, got, None

    return value_checks("qkv", "qkv_norm_rope v", seed, run)


OP = OpInfo(
    name="qkv",
    summary="attention prologue at one token: q/k/v projections (MLX's CUDA qmv numerics) + q/k RMSNorm + RoPE",
    variants=("qkv_norm_rope", "qkv_norm_rope_in"),
    reference="zmlx.kernels.ops.qkv.qkv_norm_rope_reference",
    kernel_specs=lambda: {"qkv_norm_rope": SPEC, "qkv_norm_rope_in": SPEC_IN},
    check_cases=check_cases,
    reference_checks=reference_checks,
)

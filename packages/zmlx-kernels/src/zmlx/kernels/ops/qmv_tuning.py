"""zk.qmv's other kernel shapes, for tuning on the device (tools/gpu/qmv_bench.py): each row computed exactly as
``zk.qmv`` computes it (MLX's CUDA qmv), so any of them can replace qmv.py's kernel once measured faster. Used by
nothing by default; bit-exact on the GPU (its check cases, 5d210df, H200), speed not yet measured (qmv_bench.py).

batch: all ``U`` unrolled steps' loads issued before the first step's arithmetic (ptxas keeps ~1-2 of the measured
loop's steps in flight: SASS of qmv at R1 U4), then the steps in order.
half: a half-warp per row, each thread two of MLX's lanes (codes ``32t .. 32t + 31`` of a step: one 16-byte weight
load where qmv makes two 8-byte ones), the butterfly over MLX's lanes 16, 8, 4, 2 done as shuffles over 8, 4, 2, 1
and the last level (lanes 2t, 2t + 1) in the thread: every add the same two values as MLX's. Needs K % 32 == 0,
which every group size MLX quantizes with (32, 64, 128) implies.
"""

from __future__ import annotations

import re

import mlx.core as mx

from ..backend import launch, target_for
from ..emit import KernelSpec
from . import qmv as Q
from . import qmv_kernels as K
from ._base import CheckCase, OpInfo, RefCheck
from .moe_experts import Quant


def batched_loop(loads: str) -> str:
    """The batch form of qmv.py's loop around ``loads`` (text that defines xa, xb and wv/sv/bv[R] for step k0)."""
    return """\
  for (int kb = lane * 16; kb < K; kb += 512 * U) {
    uint4 xa_[U], xb_[U];
    uint2 wv_[U][R];
    T sv_[U][R], bv_[U][R];
#pragma unroll
    for (int u = 0; u < U; ++u) {
      const int k0 = kb + 512 * u;
      if (k0 < K) {  // lanes past K skip the residue step, as MLX's do
""" + loads + """\
        xa_[u] = xa; xb_[u] = xb;
#pragma unroll
        for (int r = 0; r < R; ++r) { wv_[u][r] = wv[r]; sv_[u][r] = sv[r]; bv_[u][r] = bv[r]; }
      }
    }
#pragma unroll
    for (int u = 0; u < U; ++u) {
      const int k0 = kb + 512 * u;
      if (k0 < K) {
        const uint4 xa = xa_[u], xb = xb_[u];
        uint2 wv[R];
        T sv[R], bv[R];
#pragma unroll
        for (int r = 0; r < R; ++r) { wv[r] = wv_[u][r]; sv[r] = sv_[u][r]; bv[r] = bv_[u][r]; }
""" + K.MATH + """\
      }
    }
  }
"""


# qmv_batch: U steps' loads issued before the first step's arithmetic (SASS: all 20 loads ahead of the first
# HFMA2 at R1 U4), then the steps in order: the same sums per code
_BATCHED = batched_loop(K.LOADS)

SPEC_BATCH = KernelSpec(name="qmv_batch", inputs=K.SPEC.inputs, outputs=K.SPEC.outputs,
                        body=K.ONE + K.CORE_HEAD + _BATCHED + K.CORE_TAIL, templates=K.SPEC.templates)


def _lane(text: str, v: int) -> str:
    """qmv.py's per-step text for virtual lane ``v`` of a thread's two: its own x, words, scale and accumulators."""
    for name in ("xa", "xb", "wv", "sv", "bv", "acc", "xp"):
        text = re.sub(rf"\b{name}\b", f"{name}{v}", text)
    return text.replace("r < R;", "r < 1;")


# R = 2 here: rows a warp (one a half-warp); the head (qmv.py's _ONE) computes row0 for the warp's two
_HALF = """\
  const int K = KW * 8;
  const int G = K / QGS;
  const int lane = int(zm_lane);
  const int half = lane >> 4, t = lane & 15;
  const int m = int(zm_bid_y);
  ZM_DEVICE const T* xr = x + size_t(m) * size_t(K);
  const int row = row0 + half;
  const size_t wrow[1] = {size_t(row < N ? row : N - 1) * size_t(KW)};
  const size_t grow[1] = {size_t(row < N ? row : N - 1) * size_t(G)};
  uint32_t acc0[1][8], acc1[1][8];
#pragma unroll
  for (int i = 0; i < 8; ++i) { acc0[0][i] = 0u; acc1[0][i] = 0u; }
#pragma unroll U
  for (int k0 = t * 32; k0 < K; k0 += 512) {  // K % 32 == 0: both of the thread's lanes take the residue step or not
    const uint4 w4 = zm_load16(wq + wrow[0] + size_t(k0 / 8));
    const uint4 xa0 = zm_load16(xr + k0), xb0 = zm_load16(xr + k0 + 8);
    const uint4 xa1 = zm_load16(xr + k0 + 16), xb1 = zm_load16(xr + k0 + 24);
    const T sc = sq[grow[0] + size_t(k0 / QGS)], bi = bq[grow[0] + size_t(k0 / QGS)];  // one group (QGS >= 32)
    uint2 wv0[1], wv1[1];
    T sv0[1] = {sc}, bv0[1] = {bi}, sv1[1] = {sc}, bv1[1] = {bi};
    wv0[0].x = w4.x; wv0[0].y = w4.y; wv1[0].x = w4.z; wv1[0].y = w4.w;
""" + _lane(K.MATH, 0) + _lane(K.MATH, 1) + """\
  }
  float tot0 = 0.0f, tot1 = 0.0f;  // each lane's 16 accumulators in code order, from +0
#pragma unroll
  for (int i = 0; i < 16; ++i) {
    const uint32_t p0 = acc0[0][4 * (i / 8) + (i % 4)], p1 = acc1[0][4 * (i / 8) + (i % 4)];
    tot0 = zm_fadd(tot0, (i % 8) < 4 ? zm_bf2_lo(p0) : zm_bf2_hi(p0));
    tot1 = zm_fadd(tot1, (i % 8) < 4 ? zm_bf2_lo(p1) : zm_bf2_hi(p1));
  }
  for (int o = 8; o > 0; o /= 2) {  // MLX's lane offsets 16, 8, 4, 2 within this half-warp
    tot0 = zm_fadd(tot0, zm_shfl_xor(tot0, o));
    tot1 = zm_fadd(tot1, zm_shfl_xor(tot1, o));
  }
  if (t == 0 && row < N) {
    T g = T(zm_fadd(tot0, tot1));  // MLX's last level: lane 0 + lane 1
    if (HAS_BIAS) g = zm_add_rn(g, biasq[row]);
    outq[size_t(m) * size_t(N) + size_t(row)] = g;
  }
"""
SPEC_HALF = KernelSpec(name="qmv_half", inputs=K.SPEC.inputs, outputs=K.SPEC.outputs, body=K.ONE + _HALF,
                       templates=(("T", "float"), ("QGS", 64), ("R", 2), ("U", 4), ("HAS_BIAS", False)))
VARIANTS = ("batch", "half")


def fits(x: mx.array, w: Quant, group_size: int, bits: int, bias: mx.array | None, variant: str) -> bool:
    return Q.fits(x, w, group_size, bits, bias) and (variant != "half" or (x.shape[-1] % 32 == 0 and group_size >= 32))


def qmv_variant(x: mx.array, w: Quant, *, group_size: int, bits: int, variant: str, bias: mx.array | None = None,
                rows_per_warp: int = 1, unroll: int = 4, warps: int = 4, stream: mx.Stream | None = None) -> mx.array:
    """``zk.qmv`` through another kernel shape (``variant``: batch or half); the result is qmv's."""
    if variant not in VARIANTS:
        raise ValueError(f"qmv_variant: variant must be one of {VARIANTS}, got {variant!r}")
    if warps not in (1, 2, 4, 8, 16, 32) or rows_per_warp not in (1, 2, 4) or unroll not in (1, 2, 4, 8):
        raise ValueError(f"qmv_variant: warps must be a power of two up to 32, rows_per_warp 1, 2 or 4, unroll 1, 2, "
                         f"4 or 8; got {warps}, {rows_per_warp}, {unroll}")
    if target_for(stream) != "cuda" or not fits(x, w, group_size, bits, bias, variant):
        return Q.qmv_reference(x, w, group_size=group_size, bits=bits, bias=bias)
    n, k = w[0].shape[0], x.shape[-1]
    r = 2 if variant == "half" else rows_per_warp
    (out,) = launch(
        SPEC_HALF if variant == "half" else SPEC_BATCH, "cuda", inputs=(x, *w, bias if bias is not None else w[1]),
        output_shapes=[(*x.shape[:-1], n)], output_dtypes=[x.dtype], threads=-(-n // (r * warps)) * warps * 32,
        threadgroup=warps * 32, blocks_y=x.size // k,
        template=[("T", x.dtype), ("QGS", group_size), ("R", r), ("U", unroll), ("HAS_BIAS", bias is not None)],
        stream=stream,
    )
    return out


def kernel_specs():
    return {"qmv_batch": SPEC_BATCH, "qmv_half": SPEC_HALF}


def check_cases(seed: int) -> list[CheckCase]:
    cases = []
    for i, (n, k, gs, rows, bias) in enumerate(Q.CASES):
        x, q, b = Q.make_case(n, k, gs, rows, bias, mx.random.key(seed + i))
        for variant, r in (("batch", 1), ("batch", 4), ("half", 1)):
            cases.append(CheckCase(
                "qmv_tuning", f"{variant}_{n}x{k}_g{gs}_m{rows}_r{r}", "bfloat16",
                kernel=lambda x=x, q=q, b=b, gs=gs, v=variant, r=r: [
                    qmv_variant(x, q, group_size=gs, bits=4, variant=v, bias=b, rows_per_warp=r)],
                reference=lambda x=x, q=q, b=b, gs=gs: [Q.qmv_reference(x, q, group_size=gs, bits=4, bias=b)],
                exact=True))
    return cases


def reference_checks(seed: int) -> list[RefCheck]:
    return []  # the reference is qmv's (QuantizedLinear's), checked in qmv.py


OP = OpInfo(
    name="qmv_tuning",
    summary="zk.qmv's other kernel shapes (loads batched; a half-warp a row, 16-byte loads), for device tuning",
    variants=VARIANTS,
    reference="zmlx.kernels.ops.qmv.qmv_reference",
    kernel_specs=kernel_specs,
    check_cases=check_cases,
    reference_checks=reference_checks,
)

"""The fused expert launches of 4-bit bf16 top-k < 8 MoE blocks (and dense gate+up) on ``zk.qmv``'s core.

The ``qmv`` kernels of moe_experts_kernels.py reproduce MLX's gather_qmv per row but move 4-bit weights at
130-600 GB/s against MLX's 600-760 (down+combine the slowest: one block per output row, its k warps idle behind a
barrier; perf-notes v5, v9). These keep the per-row arithmetic (lane ``l`` owns codes ``l*16 + i + 512*r``, bf16
``fma(x, fma(q, scale, bias), acc)`` per code, the 16 accumulators summed in float from +0 in order, a butterfly over
16..1 lanes, one rounding) and take qmv.py's launch shape and dequantisation (qmv_kernels.py's ``MATH``: codes two
at a time in packed bf16, x loaded 16 bytes at a time), which zk.qmv runs bit-identically to MLX at 1.1-2.1x less
device time:

- gate+up: one warp per output row ``n`` of slot ``l``, computing the gate row and the up row together (``R = 2``
  rows sharing x), then the activation epilogue of activations.py;
- down+combine: one warp per output row ``d`` over all ``KTOP`` slots (``KTOP`` rows, each with its own h row, all
  their loads of a step in flight), then lane 0 adds each slot's bias and combines in slot order; no block barrier.

Each in two loop forms (``FORMS``): ``step``, zk.qmv's unrolled loop, and ``batch``, every unrolled step's loads
issued before the first step's arithmetic (qmv_tuning.py's batch loop); the same sums per code in both.
"""

from __future__ import annotations

from ..emit import KernelSpec, Param
from .moe_experts_kernels import ACTIVATIONS, DOWN_INPUTS, GATE_UP_INPUTS, act_block
from .qmv_kernels import MATH
from .qmv_tuning import batched_loop

WARPS = 4  # warps a block, as zk.qmv

_GATE_UP = """\
  // grid: x = blocks of WARPS rows, y = expert slot l. One warp per output row n: its gate row and its up row.
  constexpr int R = 2;
  const int N = w_gate_shape[w_gate_ndim - 2];  // [E, N, KW] experts, or [N, KW] for a dense layer
  const int KW = w_gate_shape[w_gate_ndim - 1];
  const int K = KW * 8;
  const int G = K / GS;
  const int l = int(zm_bid_y);
  const int n = int(zm_bid) * int(zm_bdim / 32u) + int(zm_warp);
  if (n >= N) return;  // warp-uniform
  const int lane = int(zm_lane);
  const uint32_t e = inds[l];
  const size_t wrow = (size_t(e) * size_t(N) + size_t(n)) * size_t(KW);
  const size_t grow = (size_t(e) * size_t(N) + size_t(n)) * size_t(G);
  ZM_DEVICE const T* xr = x + size_t(X_PER_EXPERT ? l : 0) * size_t(K);
  uint32_t acc[R][8];  // acc[r][4j + s]: packed bf16 accumulators of codes (8j + s, 8j + s + 4) of a step's 16
#pragma unroll
  for (int i = 0; i < 8; ++i) { acc[0][i] = 0u; acc[1][i] = 0u; }
@LOOP@
  float tot[R];
#pragma unroll
  for (int r = 0; r < R; ++r) {
    tot[r] = 0.0f;  // the lane's 16 accumulators in code order, from +0
#pragma unroll
    for (int i = 0; i < 16; ++i) {
      const uint32_t p = acc[r][4 * (i / 8) + (i % 4)];
      tot[r] = zm_fadd(tot[r], (i % 8) < 4 ? zm_bf2_lo(p) : zm_bf2_hi(p));
    }
    for (int o = 16; o > 0; o /= 2) tot[r] = zm_fadd(tot[r], zm_shfl_xor(tot[r], o));
  }
  if (lane != 0) return;
  T g = T(tot[0]), u = T(tot[1]);
  if (HAS_BIAS) { g = zm_add_rn(g, gate_bias[size_t(e) * N + n]); u = zm_add_rn(u, up_bias[size_t(e) * N + n]); }
@ACT@
  h[size_t(l) * N + n] = y;
"""

# gate+up's step k0: x once, the gate row's and the up row's words, scales and biases
_GATE_UP_LOADS = """\
    const uint4 xa = zm_load16(xr + k0);
    const uint4 xb = zm_load16(xr + k0 + 8);
    uint2 wv[R];
    T sv[R], bv[R];
    wv[0] = zm_load8(w_gate + wrow + size_t(k0 / 8));
    wv[1] = zm_load8(w_up + wrow + size_t(k0 / 8));
    sv[0] = s_gate[grow + size_t(k0 / GS)]; bv[0] = b_gate[grow + size_t(k0 / GS)];
    sv[1] = s_up[grow + size_t(k0 / GS)]; bv[1] = b_up[grow + size_t(k0 / GS)];
"""
_STEP_LOOP = """\
#pragma unroll U
  for (int k0 = lane * 16; k0 < K; k0 += 512) {  // lanes past K skip the residue step, as MLX's do
""" + _GATE_UP_LOADS + MATH + """\
  }
"""

_DOWN = """\
  // One warp per output row d, all KTOP slots at once (slot j: expert inds[j]'s row d times h row j).
  const int N = w_down_shape[w_down_ndim - 2];
  const int KW = w_down_shape[w_down_ndim - 1];
  const int K = KW * 8;
  const int G = K / GS;
  const int d = int(zm_bid) * int(zm_bdim / 32u) + int(zm_warp);
  if (d >= N) return;  // warp-uniform, and no barrier follows
  const int lane = int(zm_lane);
  size_t wrow[KTOP], grow[KTOP];
  uint32_t acc[KTOP][8];
#pragma unroll
  for (int j = 0; j < KTOP; ++j) {
    const size_t row = size_t(inds[j]) * size_t(N) + size_t(d);
    wrow[j] = row * size_t(KW);
    grow[j] = row * size_t(G);
#pragma unroll
    for (int i = 0; i < 8; ++i) acc[j][i] = 0u;
  }
@LOOP@
  float ys[KTOP];
#pragma unroll
  for (int j = 0; j < KTOP; ++j) {
    float tot = 0.0f;
#pragma unroll
    for (int i = 0; i < 16; ++i) {
      const uint32_t p = acc[j][4 * (i / 8) + (i % 4)];
      tot = zm_fadd(tot, (i % 8) < 4 ? zm_bf2_lo(p) : zm_bf2_hi(p));
    }
    for (int o = 16; o > 0; o /= 2) tot = zm_fadd(tot, zm_shfl_xor(tot, o));
    T yv = T(tot);
    if (HAS_BIAS) yv = zm_add_rn(yv, down_bias[size_t(inds[j]) * N + d]);
    ys[j] = float(yv);
  }
  if (lane != 0) return;
  P acc_c = P(0.0f);
  for (int j = 0; j < KTOP; ++j) acc_c = zm_add_rn(acc_c, zm_mul_rn(P(ys[j]), P(float(scores[j]))));
  // the decoder layer's `h + moe(x)`: one more rounding in O, as the eager add
  out[d] = HAS_RES ? zm_add_rn(residual[d], O(float(acc_c))) : O(float(acc_c));
"""


# down+combine's step k0: every slot's h, words, scale and bias, then each slot's arithmetic in slot order
_DOWN_LOADS = """\
    uint4 xa[KTOP], xb[KTOP];
    uint2 wv[KTOP];
    T sv[KTOP], bv[KTOP];
#pragma unroll
    for (int j = 0; j < KTOP; ++j) {  // every load of the step before its arithmetic
      xa[j] = zm_load16(h + size_t(j) * size_t(K) + size_t(k0));
      xb[j] = zm_load16(h + size_t(j) * size_t(K) + size_t(k0 + 8));
      wv[j] = zm_load8(w_down + wrow[j] + size_t(k0 / 8));
      sv[j] = s_down[grow[j] + size_t(k0 / GS)];
      bv[j] = b_down[grow[j] + size_t(k0 / GS)];
    }
"""
_DOWN_MATH = """\
#pragma unroll
    for (int j = 0; j < KTOP; ++j) {
      // h pairs (h[8t + s], h[8t + s + 4]) matching the code pairs, as qmv.py's _MATH
      uint32_t xp[8];
      xp[0] = zm_perm(xa[j].x, xa[j].z, 0x5410u); xp[1] = zm_perm(xa[j].x, xa[j].z, 0x7632u);
      xp[2] = zm_perm(xa[j].y, xa[j].w, 0x5410u); xp[3] = zm_perm(xa[j].y, xa[j].w, 0x7632u);
      xp[4] = zm_perm(xb[j].x, xb[j].z, 0x5410u); xp[5] = zm_perm(xb[j].x, xb[j].z, 0x7632u);
      xp[6] = zm_perm(xb[j].y, xb[j].w, 0x5410u); xp[7] = zm_perm(xb[j].y, xb[j].w, 0x7632u);
      const uint32_t s2 = zm_pack2(sv[j], sv[j]);
      const uint32_t b2 = zm_pack2(bv[j], bv[j]);
#pragma unroll
      for (int t = 0; t < 2; ++t) {
        const uint32_t word = t == 0 ? wv[j].x : wv[j].y;
#pragma unroll
        for (int sh = 0; sh < 4; ++sh) {
          const uint32_t q2 = zm_bf2_sub(((word >> (4 * sh)) & 0x000F000Fu) | 0x43004300u, 0x43004300u);
          acc[j][4 * t + sh] = zm_bf2_fma(xp[4 * t + sh], zm_bf2_fma(q2, s2, b2), acc[j][4 * t + sh]);
        }
      }
    }
"""
_DOWN_STEP_LOOP = """\
#pragma unroll U
  for (int k0 = lane * 16; k0 < K; k0 += 512) {
""" + _DOWN_LOADS + _DOWN_MATH + """\
  }
"""

# batch form: U steps' loads issued before the first step's arithmetic, then the steps in order (the same sums per
# code; qmv_tuning.py's batch form of zk.qmv, whose SASS has every load ahead of the first HFMA2)
_DOWN_BATCH_LOOP = """\
  for (int kb = lane * 16; kb < K; kb += 512 * U) {
    uint4 xa_[U][KTOP], xb_[U][KTOP];
    uint2 wv_[U][KTOP];
    T sv_[U][KTOP], bv_[U][KTOP];
#pragma unroll
    for (int u = 0; u < U; ++u) {
      const int k0 = kb + 512 * u;
      if (k0 < K) {  // lanes past K skip the residue step, as MLX's do
""" + _DOWN_LOADS + """\
#pragma unroll
        for (int j = 0; j < KTOP; ++j) {
          xa_[u][j] = xa[j]; xb_[u][j] = xb[j]; wv_[u][j] = wv[j]; sv_[u][j] = sv[j]; bv_[u][j] = bv[j];
        }
      }
    }
#pragma unroll
    for (int u = 0; u < U; ++u) {
      const int k0 = kb + 512 * u;
      if (k0 < K) {
        uint4 xa[KTOP], xb[KTOP];
        uint2 wv[KTOP];
        T sv[KTOP], bv[KTOP];
#pragma unroll
        for (int j = 0; j < KTOP; ++j) {
          xa[j] = xa_[u][j]; xb[j] = xb_[u][j]; wv[j] = wv_[u][j]; sv[j] = sv_[u][j]; bv[j] = bv_[u][j];
        }
""" + _DOWN_MATH + """\
      }
    }
  }
"""
FORMS = ("step", "batch")  # the loop of both launches: qmv.py's (step) or qmv_tuning.py's batch form


def suffix(form: str) -> str:
    """The SPECS key suffix of a loop form."""
    if form not in FORMS:
        raise ValueError(f"q4_form must be one of {FORMS}, got {form!r}")
    return "" if form == "step" else f"_{form}"


def down_unroll(form: str, k: int) -> int:
    # batch: U x KTOP steps' loads live at once: 4 steps at top-2, 2 to top-4, 1 above (top-7 at 2 spills); step: 2
    if form == "step":
        return 2
    return 4 if k <= 2 else 2 if k <= 4 else 1


def gate_up_spec(act: str, form: str = "step") -> KernelSpec:
    loop = _STEP_LOOP if form == "step" else batched_loop(_GATE_UP_LOADS)
    return KernelSpec(
        name=f"moe_gate_up_q4_{act}{suffix(form)}",
        inputs=GATE_UP_INPUTS,
        outputs=(Param("h", "T"),),
        body=_GATE_UP.replace("@LOOP@", loop.rstrip("\n")).replace("@ACT@", act_block(act)),
        templates=(("T", "bfloat16"), ("GS", 64), ("U", 4), ("HAS_BIAS", False), ("X_PER_EXPERT", False)),
    )


def down_spec(form: str = "step") -> KernelSpec:
    loop = _DOWN_STEP_LOOP if form == "step" else _DOWN_BATCH_LOOP
    return KernelSpec(
        name=f"moe_down_combine_q4{suffix(form)}",
        inputs=DOWN_INPUTS,
        outputs=(Param("out", "O"),),
        body=_DOWN.replace("@LOOP@", loop.rstrip("\n")),
        templates=(("T", "bfloat16"), ("P", "bfloat16"), ("O", "bfloat16"), ("GS", 64), ("KTOP", 4), ("U", 2),
                   ("HAS_BIAS", False), ("HAS_RES", False)),
    )


DOWN_SPEC = down_spec()
SPECS: dict[str, KernelSpec] = {
    **{f"gate_up_q4_{act}{suffix(f)}": gate_up_spec(act, f) for act in ACTIVATIONS for f in FORMS},
    **{f"down_combine_q4{suffix(f)}": down_spec(f) for f in FORMS},
}

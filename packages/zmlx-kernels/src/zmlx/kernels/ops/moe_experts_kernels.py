"""Kernel bodies for the fused MoE expert path at decode (one token): gate+up+activation, and down+combine.

Two numerics, each reproducing what MLX's CUDA ``gather_qmm`` computes for the same call (see
docs/notes-mlx-cuda-qmv.md):

- ``qmv`` (tokens x top_k < 8, e.g. top-4 models, and dense layers): one warp per output row; lane t owns
  16 (4-bit) or 8 (8-bit) consecutive k per step; per-element accumulators in the weights' type (4-bit, fma.rn in
  bf16) or float (8-bit); lane total summed in order from +0; butterfly over the warp (16, 8, 4, 2, 1).
- ``mma`` (tokens x top_k >= 8, e.g. Qwen3-30B-A3B's top-8, where MLX runs its qmm_sm80 tile GEMM): one warp per
  8 output rows; for each 16-wide k block in ascending order one ``mma.sync m16n8k16`` with row 0 of A = x and the
  running fp32 accumulator; the same instruction fed the same chunks gives the same bits.

Both dequantize as one bf16 fma: ``w = fma(q, scale, bias)``. The activation epilogue is activations.py's
expression, and the combine is combine.py's sequential sum, so every rounding point matches the unfused ops.
"""

from __future__ import annotations

from ..emit import KernelSpec, Param
from .activations import _EXPR as ACT_EXPR
from .moe_experts_mma import DOWN_MMA, GATE_UP_MMA

ACTIVATIONS = ("swiglu", "swiglu_oai", "geglu_tanh", "geglu_erf")

# q_k of row `wrow` (4- or 8-bit codes packed little-endian in uint32 words, element 0 in the low bits)
_QUANT_HELPERS = """\
#define ZM_Q(wrow, k) ((wrow[(k) / (32 / BITS)] >> (((k) % (32 / BITS)) * BITS)) & ((1u << BITS) - 1u))
"""

# ---- gate + up + activation --------------------------------------------------------------------------------

_GATE_UP_QMV = """\
  // grid: x = row blocks of (warps per block) rows, y = expert slot l. One warp per output row n.
  const int N = w_gate_shape[w_gate_ndim - 2];  // [E, N, KW] experts, or [N, KW] for a dense layer
  const int KW = w_gate_shape[w_gate_ndim - 1];
  const int K = KW * (32 / BITS);
  const int G = K / GS;
  const int l = int(zm_bid_y);
  const int n = int(zm_bid) * int(zm_bdim / 32u) + int(zm_warp);
  if (n >= N) return;  // warp-uniform
  const uint32_t e = inds[l];
  const size_t row = size_t(e) * size_t(N) + size_t(n);
  const auto wg = w_gate + row * size_t(KW);
  const auto wu = w_up + row * size_t(KW);
  const auto xr = x + size_t(X_PER_EXPERT ? l : 0) * size_t(K);
  constexpr int EPT = BITS == 4 ? 16 : 8;
  A acc_g[EPT], acc_u[EPT];
  for (int i = 0; i < EPT; ++i) { acc_g[i] = A(0.0f); acc_u[i] = A(0.0f); }
  // unrolled so the next steps' weight and scale loads are issued before this step's fmas wait on them
#pragma unroll 4
  for (int k0 = int(zm_lane) * EPT; k0 < K; k0 += 32 * EPT) {
    const int grp = k0 / GS;
    const T sg = s_gate[row * G + grp], bg = b_gate[row * G + grp];
    const T su = s_up[row * G + grp], bu = b_up[row * G + grp];
    for (int i = 0; i < EPT; ++i) {
      const A xv = A(float(xr[k0 + i]));
      acc_g[i] = zm_fma(xv, A(float(zm_fma(T(float(ZM_Q(wg, k0 + i))), sg, bg))), acc_g[i]);
      acc_u[i] = zm_fma(xv, A(float(zm_fma(T(float(ZM_Q(wu, k0 + i))), su, bu))), acc_u[i]);
    }
  }
  float tg = 0.0f, tu = 0.0f;
  for (int i = 0; i < EPT; ++i) { tg = zm_fadd(tg, float(acc_g[i])); tu = zm_fadd(tu, float(acc_u[i])); }
  for (int o = 16; o > 0; o /= 2) {
    tg = zm_fadd(tg, zm_shfl_xor(tg, o));
    tu = zm_fadd(tu, zm_shfl_xor(tu, o));
  }
  if (zm_lane != 0) return;
  T g = T(tg), u = T(tu);
  if (HAS_BIAS) { g = zm_add_rn(g, gate_bias[size_t(e) * N + n]); u = zm_add_rn(u, up_bias[size_t(e) * N + n]); }
@ACT@
  h[size_t(l) * N + n] = y;
"""

# ---- down + weighted combine -------------------------------------------------------------------------------

_DOWN_QMV = """\
  // one block per output row d; warp l computes expert slot l's down row, then thread 0 combines in slot order.
  const int N = w_down_shape[w_down_ndim - 2];
  const int KW = w_down_shape[w_down_ndim - 1];
  const int K = KW * (32 / BITS);
  const int G = K / GS;
  const int d = int(zm_bid);
  const int l = int(zm_warp);
  ZM_SHARED float ys[KTOP];
  if (d < N && l < KTOP) {
    const uint32_t e = inds[l];
    const size_t row = size_t(e) * size_t(N) + size_t(d);
    const auto wd = w_down + row * size_t(KW);
    const auto hr = h + size_t(l) * size_t(K);
    constexpr int EPT = BITS == 4 ? 16 : 8;
    A acc[EPT];
    for (int i = 0; i < EPT; ++i) acc[i] = A(0.0f);
    // unrolled so the next steps' weight and scale loads are issued before this step's fmas wait on them
#pragma unroll 4
    for (int k0 = int(zm_lane) * EPT; k0 < K; k0 += 32 * EPT) {
      const int grp = k0 / GS;
      const T sd = s_down[row * G + grp], bd = b_down[row * G + grp];
      for (int i = 0; i < EPT; ++i)
        acc[i] = zm_fma(A(float(hr[k0 + i])), A(float(zm_fma(T(float(ZM_Q(wd, k0 + i))), sd, bd))), acc[i]);
    }
    float t = 0.0f;
    for (int i = 0; i < EPT; ++i) t = zm_fadd(t, float(acc[i]));
    for (int o = 16; o > 0; o /= 2) t = zm_fadd(t, zm_shfl_xor(t, o));
    T yv = T(t);
    if (HAS_BIAS) yv = zm_add_rn(yv, down_bias[size_t(e) * N + d]);
    if (zm_lane == 0) ys[l] = float(yv);
  }
  ZM_BARRIER();
  if (zm_tid != 0 || d >= N) return;
  P acc_c = P(0.0f);
  for (int j = 0; j < KTOP; ++j) acc_c = zm_add_rn(acc_c, zm_mul_rn(P(ys[j]), P(float(scores[j]))));
  // the decoder layer's `h + moe(x)`: one more rounding in O, as the eager add
  out[d] = HAS_RES ? zm_add_rn(residual[d], O(float(acc_c))) : O(float(acc_c));
"""


def act_block(act: str) -> str:
    # activations.py's expression (g = gate, u = up -> y), indented for the epilogue
    return "\n".join("  " + line for line in ACT_EXPR[act].splitlines())


# the two launches' arguments, shared by every kernel form (here and moe_experts_q4.py)
GATE_UP_INPUTS = (Param("x", "T"), Param("inds", "uint32_t"),
                  Param("w_gate", "uint32_t"), Param("s_gate", "T"), Param("b_gate", "T"),
                  Param("w_up", "uint32_t"), Param("s_up", "T"), Param("b_up", "T"),
                  Param("gate_bias", "T"), Param("up_bias", "T"), Param("params", "float"))
DOWN_INPUTS = (Param("h", "T"), Param("inds", "uint32_t"), Param("w_down", "uint32_t"), Param("s_down", "T"),
               Param("b_down", "T"), Param("down_bias", "T"), Param("scores", "S"), Param("residual", "O"))


def gate_up_spec(numerics: str, act: str) -> KernelSpec:
    body = {"qmv": _GATE_UP_QMV, "mma": GATE_UP_MMA}[numerics].replace("@ACT@", act_block(act))
    return KernelSpec(
        name=f"moe_gate_up_{numerics}_{act}",
        inputs=GATE_UP_INPUTS,
        outputs=(Param("h", "T"),),
        body=body,
        header=_QUANT_HELPERS,
        templates=(("T", "bfloat16"), ("A", "bfloat16"), ("BITS", 4), ("GS", 64), ("HAS_BIAS", False),
                   ("X_PER_EXPERT", False)),
    )


def down_spec(numerics: str) -> KernelSpec:
    return KernelSpec(
        name=f"moe_down_combine_{numerics}",
        inputs=DOWN_INPUTS,
        outputs=(Param("out", "O"),),
        body={"qmv": _DOWN_QMV, "mma": DOWN_MMA}[numerics],
        header=_QUANT_HELPERS,
        templates=(("T", "bfloat16"), ("A", "bfloat16"), ("P", "bfloat16"), ("O", "bfloat16"), ("BITS", 4),
                   ("GS", 64), ("KTOP", 8), ("HAS_BIAS", False), ("HAS_RES", False)),
    )


SPECS: dict[str, KernelSpec] = {
    **{f"gate_up_{num}_{act}": gate_up_spec(num, act) for num in ("qmv", "mma") for act in ACTIVATIONS},
    "down_combine_qmv": down_spec("qmv"),
    "down_combine_mma": down_spec("mma"),
}

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

_GATE_UP_MMA = """\
  // grid: x = tiles of 4 warps x 8 rows, y = expert slot l. One warp per 8 rows; gate and up chains.
  // The MMA chain is sequential over k, so it must never wait on memory: each chunk of CW words per row (weights,
  // this warp's scales and biases, the block's x) is staged in shared memory, and every load of the next chunk is
  // issued before this chunk's chain runs. Numerics are unchanged: same instruction, same k order, same dequant
  // (4-bit: two codes a packed bf16 fma, one rounding each, as the scalar fma).
  constexpr int WARPS = 4;
  constexpr int CW = 128;                 // words per row per chunk (1024 k at 4 bits, 512 at 8)
  constexpr int PER = 32 / BITS;
  constexpr int GMAX = CW * PER / GS;     // quantization groups per row per chunk
  constexpr int NV = 8 * (CW / 4) / 32;   // 16-byte weight vectors per lane per matrix per full chunk
  constexpr int NS = (8 * GMAX + 31) / 32;          // scales (and biases) per lane per matrix per full chunk
  constexpr int NX = CW * PER / 2 / (WARPS * 32);   // x pairs per thread per full chunk
  // rows padded by 4 words / 2 values: the 8 lanes groups (g8) read 8 different rows at the same k, which
  // would otherwise fall into one shared-memory bank (an 8-way conflict on every read of the chain)
  ZM_SHARED uint4 sw4[WARPS][2][8][CW / 4 + 1];
  ZM_SHARED T ssb[WARPS][4][8][GMAX + 2];  // gate scale, gate bias, up scale, up bias
  ZM_SHARED uint32_t xs[CW * PER / 2];    // the chunk of x as bf16 pairs
  const int N = w_gate_shape[w_gate_ndim - 2];
  const int KW = w_gate_shape[w_gate_ndim - 1];
  const int K = KW * PER;
  const int G = K / GS;
  const int l = int(zm_bid_y);
  const int warp = int(zm_warp);
  const int tid = int(zm_tid), lane = int(zm_lane);
  const int n0 = (int(zm_bid) * WARPS + warp) * 8;
  const bool active = n0 < N;  // warp-uniform; idle warps still stage x and meet the block barriers
  const int g8 = lane / 4, c = lane % 4;
  const uint32_t e = inds[l];
  const size_t row0 = size_t(e) * size_t(N) + size_t(n0);
  const auto xr = x + size_t(X_PER_EXPERT ? l : 0) * size_t(K);
  float dg0 = 0.0f, dg1 = 0.0f, dg2 = 0.0f, dg3 = 0.0f, du0 = 0.0f, du1 = 0.0f, du2 = 0.0f, du3 = 0.0f;
  uint4 va[NV], vb[NV];  // the next chunk's loads, in flight during the chain
  T sv[4][NS];
  uint32_t xv[NX];
  const int nch = (KW + CW - 1) / CW;
  for (int ch = 0; ch <= nch; ++ch) {
    if (ch > 0) {  // chunk ch - 1 into shared memory
      const int cw0 = (ch - 1) * CW;
      const int cw = KW - cw0 < CW ? KW - cw0 : CW;  // a multiple of 8 words, whole groups (K % max(64, GS) == 0)
      const int q4 = cw / 4, gpc = cw * PER / GS;    // 16-byte vectors and groups per row in this chunk
      ZM_BARRIER();  // every warp is done with chunk ch - 2
#pragma unroll
      for (int j = 0; j < NX; ++j) {
        if (tid + WARPS * 32 * j < cw * PER / 2) xs[tid + WARPS * 32 * j] = xv[j];
      }
      if (active) {
#pragma unroll
        for (int j = 0; j < NV; ++j) {
          const int v = lane + 32 * j;
          if (v < 8 * q4) { sw4[warp][0][v / q4][v % q4] = va[j]; sw4[warp][1][v / q4][v % q4] = vb[j]; }
        }
#pragma unroll
        for (int j = 0; j < NS; ++j) {
          const int i = lane + 32 * j;
          if (i < 8 * gpc) {
            for (int a = 0; a < 4; ++a) ssb[warp][a][i / gpc][i % gpc] = sv[a][j];
          }
        }
      }
      ZM_BARRIER();
    }
    if (ch < nch) {  // every load of chunk ch issued together
      const int cw0 = ch * CW;
      const int cw = KW - cw0 < CW ? KW - cw0 : CW;
      const int q4 = cw / 4, gpc = cw * PER / GS, g0 = cw0 * PER / GS;
#pragma unroll
      for (int j = 0; j < NX; ++j) {
        const int i = tid + WARPS * 32 * j;
        if (i < cw * PER / 2) xv[j] = zm_load4(xr + cw0 * PER + 2 * i);
      }
      if (active) {
#pragma unroll
        for (int j = 0; j < NV; ++j) {
          const int v = lane + 32 * j;
          if (v < 8 * q4) {
            const size_t off = (row0 + v / q4) * size_t(KW) + cw0 + (v % q4) * 4;
            va[j] = zm_load16(w_gate + off);
            vb[j] = zm_load16(w_up + off);
          }
        }
#pragma unroll
        for (int j = 0; j < NS; ++j) {
          const int i = lane + 32 * j;
          if (i < 8 * gpc) {
            const size_t idx = (row0 + i / gpc) * size_t(G) + g0 + i % gpc;
            sv[0][j] = s_gate[idx]; sv[1][j] = b_gate[idx]; sv[2][j] = s_up[idx]; sv[3][j] = b_up[idx];
          }
        }
      }
    }
    if (ch == 0 || !active) continue;
    const int cw = KW - (ch - 1) * CW < CW ? KW - (ch - 1) * CW : CW;
    const ZM_TG uint32_t* wg = reinterpret_cast<const ZM_TG uint32_t*>(&sw4[warp][0][g8][0]);
    const ZM_TG uint32_t* wu = reinterpret_cast<const ZM_TG uint32_t*>(&sw4[warp][1][g8][0]);
    const ZM_TG uint2* wg2 = reinterpret_cast<const ZM_TG uint2*>(&sw4[warp][0][g8][0]);
    const ZM_TG uint2* wu2 = reinterpret_cast<const ZM_TG uint2*>(&sw4[warp][1][g8][0]);
    for (int gi = 0; gi < cw * PER / GS; ++gi) {
      const T sg = ssb[warp][0][g8][gi], bg = ssb[warp][1][g8][gi];
      const T su = ssb[warp][2][g8][gi], bu = ssb[warp][3][g8][gi];
      const uint32_t sg2 = zm_pack2(sg, sg), bg2 = zm_pack2(bg, bg), su2 = zm_pack2(su, su), bu2 = zm_pack2(bu, bu);
#pragma unroll
      for (int kk = 0; kk < GS; kk += 16) {
        const int kb = gi * GS + kk;
        const int k0 = kb + 2 * c, k1 = kb + 2 * c + 8;  // within the chunk
        uint32_t bg0, bg1, bu0, bu1;
        if (BITS == 4) {  // k0, k0 + 1 are byte c of word kb / 8; k1, k1 + 1 byte c of the next word
          const uint2 vg = wg2[kb / 16], vu = wu2[kb / 16];
          bg0 = zm_bf2_fma(zm_q4pair(vg.x >> (8 * c)), sg2, bg2);
          bg1 = zm_bf2_fma(zm_q4pair(vg.y >> (8 * c)), sg2, bg2);
          bu0 = zm_bf2_fma(zm_q4pair(vu.x >> (8 * c)), su2, bu2);
          bu1 = zm_bf2_fma(zm_q4pair(vu.y >> (8 * c)), su2, bu2);
        } else {
          bg0 = zm_pack2(zm_fma(T(float(ZM_Q(wg, k0))), sg, bg), zm_fma(T(float(ZM_Q(wg, k0 + 1))), sg, bg));
          bg1 = zm_pack2(zm_fma(T(float(ZM_Q(wg, k1))), sg, bg), zm_fma(T(float(ZM_Q(wg, k1 + 1))), sg, bg));
          bu0 = zm_pack2(zm_fma(T(float(ZM_Q(wu, k0))), su, bu), zm_fma(T(float(ZM_Q(wu, k0 + 1))), su, bu));
          bu1 = zm_pack2(zm_fma(T(float(ZM_Q(wu, k1))), su, bu), zm_fma(T(float(ZM_Q(wu, k1 + 1))), su, bu));
        }
        // A: row 0 is x (lanes 0-3 hold it), rows 1..15 are zero
        const uint32_t a0 = g8 == 0 ? xs[k0 / 2] : 0u;
        const uint32_t a2 = g8 == 0 ? xs[k1 / 2] : 0u;
        zm_mma_bf16_16816(dg0, dg1, dg2, dg3, a0, 0u, a2, 0u, bg0, bg1, zm_lane);
        zm_mma_bf16_16816(du0, du1, du2, du3, a0, 0u, a2, 0u, bu0, bu1, zm_lane);
      }
    }
  }
  if (!active || g8 != 0) return;  // row 0 of D lives in lanes 0-3: columns 2c and 2c + 1
  for (int r = 0; r < 2; ++r) {
    const int n = n0 + 2 * c + r;
    T g = T(r == 0 ? dg0 : dg1), u = T(r == 0 ? du0 : du1);
    if (HAS_BIAS) { g = zm_add_rn(g, gate_bias[size_t(e) * N + n]); u = zm_add_rn(u, up_bias[size_t(e) * N + n]); }
@ACT@
    h[size_t(l) * N + n] = y;
  }
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

_DOWN_MMA = """\
  // one block per 8 output rows; warp l computes expert slot l's 8 down rows, its chunk inputs (weights, scales,
  // biases, h) staged in shared memory as in the gate/up kernel, the next chunk's loads in flight during the
  // chain; then 8 threads combine in slot order.
  constexpr int CW = KTOP > 8 ? 32 : 64;  // words per row per chunk: KTOP warps share the block's 48 KB
  constexpr int PER = 32 / BITS;
  constexpr int GMAX = CW * PER / GS;
  constexpr int NV = 8 * (CW / 4) / 32;
  constexpr int NS = (8 * GMAX + 31) / 32;
  constexpr int NH = CW * PER / 2 / 32;   // h pairs per lane per full chunk
  ZM_SHARED uint4 sw4[KTOP][8][CW / 4 + 1];  // rows padded: no bank conflicts across the 8 lane groups
  ZM_SHARED T ssb[KTOP][2][8][GMAX + 2];
  ZM_SHARED uint32_t hs[KTOP][CW * PER / 2];
  ZM_SHARED float ys[KTOP * 8];
  const int N = w_down_shape[w_down_ndim - 2];
  const int KW = w_down_shape[w_down_ndim - 1];
  const int K = KW * PER;
  const int G = K / GS;
  const int n0 = int(zm_bid) * 8;
  const int l = int(zm_warp);
  const int lane = int(zm_lane);
  const int g8 = lane / 4, c = lane % 4;
  if (n0 < N && l < KTOP) {
    const uint32_t e = inds[l];
    const size_t row0 = size_t(e) * size_t(N) + size_t(n0);
    const auto hr = h + size_t(l) * size_t(K);
    float d0 = 0.0f, d1 = 0.0f, d2 = 0.0f, d3 = 0.0f;
    uint4 va[NV];  // the next chunk's loads, in flight during the chain
    T sv[2][NS];
    uint32_t hv[NH];
    const int nch = (KW + CW - 1) / CW;
    for (int ch = 0; ch <= nch; ++ch) {
      if (ch > 0) {  // chunk ch - 1 into this warp's shared memory
        const int cw0 = (ch - 1) * CW;
        const int cw = KW - cw0 < CW ? KW - cw0 : CW;
        const int q4 = cw / 4, gpc = cw * PER / GS;
        ZM_WARP_SYNC();  // this warp is done with chunk ch - 2
#pragma unroll
        for (int j = 0; j < NV; ++j) {
          const int v = lane + 32 * j;
          if (v < 8 * q4) sw4[l][v / q4][v % q4] = va[j];
        }
#pragma unroll
        for (int j = 0; j < NS; ++j) {
          const int i = lane + 32 * j;
          if (i < 8 * gpc) { ssb[l][0][i / gpc][i % gpc] = sv[0][j]; ssb[l][1][i / gpc][i % gpc] = sv[1][j]; }
        }
#pragma unroll
        for (int j = 0; j < NH; ++j) {
          if (lane + 32 * j < cw * PER / 2) hs[l][lane + 32 * j] = hv[j];
        }
        ZM_WARP_SYNC();
      }
      if (ch < nch) {  // every load of chunk ch issued together
        const int cw0 = ch * CW;
        const int cw = KW - cw0 < CW ? KW - cw0 : CW;
        const int q4 = cw / 4, gpc = cw * PER / GS, g0 = cw0 * PER / GS;
#pragma unroll
        for (int j = 0; j < NV; ++j) {
          const int v = lane + 32 * j;
          if (v < 8 * q4) va[j] = zm_load16(w_down + (row0 + v / q4) * size_t(KW) + cw0 + (v % q4) * 4);
        }
#pragma unroll
        for (int j = 0; j < NS; ++j) {
          const int i = lane + 32 * j;
          if (i < 8 * gpc) {
            const size_t idx = (row0 + i / gpc) * size_t(G) + g0 + i % gpc;
            sv[0][j] = s_down[idx]; sv[1][j] = b_down[idx];
          }
        }
#pragma unroll
        for (int j = 0; j < NH; ++j) {
          const int i = lane + 32 * j;
          if (i < cw * PER / 2) hv[j] = zm_load4(hr + cw0 * PER + 2 * i);
        }
      }
      if (ch == 0) continue;
      const int cw = KW - (ch - 1) * CW < CW ? KW - (ch - 1) * CW : CW;
      const ZM_TG uint32_t* wd = reinterpret_cast<const ZM_TG uint32_t*>(&sw4[l][g8][0]);
      const ZM_TG uint2* wd2 = reinterpret_cast<const ZM_TG uint2*>(&sw4[l][g8][0]);
      for (int gi = 0; gi < cw * PER / GS; ++gi) {
        const T sd = ssb[l][0][g8][gi], bd = ssb[l][1][g8][gi];
        const uint32_t sd2 = zm_pack2(sd, sd), bd2 = zm_pack2(bd, bd);
#pragma unroll
        for (int kk = 0; kk < GS; kk += 16) {
          const int kb = gi * GS + kk;
          const int k0 = kb + 2 * c, k1 = kb + 2 * c + 8;
          uint32_t b0, b1;
          if (BITS == 4) {  // k0, k0 + 1 are byte c of word kb / 8; k1, k1 + 1 byte c of the next word
            const uint2 v = wd2[kb / 16];
            b0 = zm_bf2_fma(zm_q4pair(v.x >> (8 * c)), sd2, bd2);
            b1 = zm_bf2_fma(zm_q4pair(v.y >> (8 * c)), sd2, bd2);
          } else {
            b0 = zm_pack2(zm_fma(T(float(ZM_Q(wd, k0))), sd, bd), zm_fma(T(float(ZM_Q(wd, k0 + 1))), sd, bd));
            b1 = zm_pack2(zm_fma(T(float(ZM_Q(wd, k1))), sd, bd), zm_fma(T(float(ZM_Q(wd, k1 + 1))), sd, bd));
          }
          const uint32_t a0 = g8 == 0 ? hs[l][k0 / 2] : 0u;
          const uint32_t a2 = g8 == 0 ? hs[l][k1 / 2] : 0u;
          zm_mma_bf16_16816(d0, d1, d2, d3, a0, 0u, a2, 0u, b0, b1, zm_lane);
        }
      }
    }
    if (g8 == 0) {
      for (int r = 0; r < 2; ++r) {
        T yv = T(r == 0 ? d0 : d1);
        if (HAS_BIAS) yv = zm_add_rn(yv, down_bias[size_t(e) * N + n0 + 2 * c + r]);
        ys[l * 8 + 2 * c + r] = float(yv);
      }
    }
  }
  ZM_BARRIER();
  const int t = int(zm_tid);
  if (t >= 8 || n0 + t >= N) return;
  P acc_c = P(0.0f);
  for (int j = 0; j < KTOP; ++j) acc_c = zm_add_rn(acc_c, zm_mul_rn(P(ys[j * 8 + t]), P(float(scores[j]))));
  out[n0 + t] = HAS_RES ? zm_add_rn(residual[n0 + t], O(float(acc_c))) : O(float(acc_c));
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
    body = {"qmv": _GATE_UP_QMV, "mma": _GATE_UP_MMA}[numerics].replace("@ACT@", act_block(act))
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
        body={"qmv": _DOWN_QMV, "mma": _DOWN_MMA}[numerics],
        header=_QUANT_HELPERS,
        templates=(("T", "bfloat16"), ("A", "bfloat16"), ("P", "bfloat16"), ("O", "bfloat16"), ("BITS", 4),
                   ("GS", 64), ("KTOP", 8), ("HAS_BIAS", False), ("HAS_RES", False)),
    )


SPECS: dict[str, KernelSpec] = {
    **{f"gate_up_{num}_{act}": gate_up_spec(num, act) for num in ("qmv", "mma") for act in ACTIVATIONS},
    "down_combine_qmv": down_spec("qmv"),
    "down_combine_mma": down_spec("mma"),
}

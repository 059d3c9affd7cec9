"""The tensor-core bodies of the fused expert launches (``mma`` numerics: tokens x top_k >= 8, where MLX's CUDA
``gather_qmm`` runs its qmm_sm80 tile GEMM): one warp per 8 output rows, for each 16-wide k block in ascending order
one ``mma.sync m16n8k16`` with row 0 of A = x and the running fp32 accumulator, each chunk's weights, scales, biases
and x staged in shared memory with the next chunk's loads in flight during the chain (perf-notes v2d, v10).
moe_experts_kernels.py wraps them into specs with the qmv-numerics bodies; docs/notes-mlx-cuda-qmv.md has the
arithmetic they reproduce.
"""

GATE_UP_MMA = """\
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

DOWN_MMA = """\
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

"""The CUDA text of ``zk.qmv`` and ``zk.qmv_many`` (qmv.py), in pieces other kernels reuse: the launch heads
(``ONE``, ``MANY``), one step's loads and arithmetic (``LOADS``, ``MATH``), the measured loop and the core around it
(``CORE_HEAD`` + ``LOOP`` + ``CORE_TAIL`` = ``CORE``). Every kernel built from them keeps MLX's qmv arithmetic per row.
"""

from __future__ import annotations

from ..emit import KernelSpec, Param

# One matrix: w (N, K/8) uint32 codes; s, b (N, K/QGS); x (M, K); out (M, N). A warp = R consecutive rows.
ONE = """\
  const int KW = w_shape[w_ndim - 1];
  const int N = w_shape[w_ndim - 2];
  const int row0 = (int(zm_bid) * int(zm_bdim / 32u) + int(zm_warp)) * R;
  if (row0 >= N) return;
  ZM_DEVICE const uint32_t* wq = w;
  ZM_DEVICE const T* sq = s;
  ZM_DEVICE const T* bq = b;
  ZM_DEVICE const T* biasq = bias;
  ZM_DEVICE T* outq = out;
"""
# Two or three matrices of one width (q/k/v, gate/up) in one launch: the rows of w0, then w1, then w2, one a warp
# (R = 1), each row's arithmetic the single-matrix kernel's
MANY = """\
  const int KW = w0_shape[w0_ndim - 1];
  const int N0 = w0_shape[w0_ndim - 2], N1 = w1_shape[w1_ndim - 2], N2 = NM > 2 ? w2_shape[w2_ndim - 2] : 0;
  int row0 = int(zm_bid) * int(zm_bdim / 32u) + int(zm_warp);
  if (row0 >= N0 + N1 + N2) return;
  const int which = row0 < N0 ? 0 : (row0 < N0 + N1 ? 1 : 2);
  row0 -= which == 0 ? 0 : (which == 1 ? N0 : N0 + N1);
  const int N = which == 0 ? N0 : (which == 1 ? N1 : N2);
  ZM_DEVICE const uint32_t* wq = which == 0 ? w0 : (which == 1 ? w1 : w2);
  ZM_DEVICE const T* sq = which == 0 ? s0 : (which == 1 ? s1 : s2);
  ZM_DEVICE const T* bq = which == 0 ? b0 : (which == 1 ? b1 : b2);
  ZM_DEVICE const T* biasq = which == 0 ? bias0 : (which == 1 ? bias1 : bias2);
  ZM_DEVICE T* outq = which == 0 ? out0 : (which == 1 ? out1 : out2);
"""
# One step of 16 codes a lane: the loads (x, then each row's word pair, scale and bias) ...
LOADS = """\
    const uint4 xa = zm_load16(xr + k0);
    const uint4 xb = zm_load16(xr + k0 + 8);
    uint2 wv[R];
    T sv[R], bv[R];
#pragma unroll
    for (int r = 0; r < R; ++r) {
      wv[r] = zm_load8(wq + wrow[r] + size_t(k0 / 8));
      sv[r] = sq[grow[r] + size_t(k0 / QGS)];
      bv[r] = bq[grow[r] + size_t(k0 / QGS)];
    }
"""
# ... and its arithmetic: x re-paired, each row's codes dequantised and accumulated two at a time
MATH = """\
    // x pairs (x[8j + s], x[8j + s + 4]) matching the code pairs below
    uint32_t xp[8];
    xp[0] = zm_perm(xa.x, xa.z, 0x5410u); xp[1] = zm_perm(xa.x, xa.z, 0x7632u);
    xp[2] = zm_perm(xa.y, xa.w, 0x5410u); xp[3] = zm_perm(xa.y, xa.w, 0x7632u);
    xp[4] = zm_perm(xb.x, xb.z, 0x5410u); xp[5] = zm_perm(xb.x, xb.z, 0x7632u);
    xp[6] = zm_perm(xb.y, xb.w, 0x5410u); xp[7] = zm_perm(xb.y, xb.w, 0x7632u);
#pragma unroll
    for (int r = 0; r < R; ++r) {
      const uint32_t s2 = zm_pack2(sv[r], sv[r]);
      const uint32_t b2 = zm_pack2(bv[r], bv[r]);
#pragma unroll
      for (int j = 0; j < 2; ++j) {
        const uint32_t word = j == 0 ? wv[r].x : wv[r].y;
#pragma unroll
        for (int sh = 0; sh < 4; ++sh) {
          // codes (8j + sh, 8j + sh + 4) as bf16 128 + q, then exact q: MLX's 0x4300 | q, - 128
          const uint32_t q2 = zm_bf2_sub(((word >> (4 * sh)) & 0x000F000Fu) | 0x43004300u, 0x43004300u);
          acc[r][4 * j + sh] = zm_bf2_fma(xp[4 * j + sh], zm_bf2_fma(q2, s2, b2), acc[r][4 * j + sh]);
        }
      }
    }
"""
# The loop as measured (perf-notes v9): ptxas keeps ~1-2 of its U unrolled steps' loads in flight
LOOP = """\
#pragma unroll U
  for (int k0 = lane * 16; k0 < K; k0 += 512) {  // lanes past K skip the residue step, as MLX's do
""" + LOADS + MATH + """\
  }
"""
CORE_HEAD = """\
  const int K = KW * 8;
  const int G = K / QGS;
  const int lane = int(zm_lane);
  const int m = int(zm_bid_y);
  ZM_DEVICE const T* xr = x + size_t(m) * size_t(K);
  // acc[r][4j + s]: packed bf16 accumulators of the lane's codes (8j + s, 8j + s + 4) of each step's 16
  uint32_t acc[R][8];
  size_t wrow[R], grow[R];
#pragma unroll
  for (int r = 0; r < R; ++r) {
    const int n = row0 + r < N ? row0 + r : N - 1;  // rows past the end re-read the last row, never stored
    wrow[r] = size_t(n) * size_t(KW);
    grow[r] = size_t(n) * size_t(G);
#pragma unroll
    for (int i = 0; i < 8; ++i) acc[r][i] = 0u;
  }
"""
CORE_TAIL = """#pragma unroll
  for (int r = 0; r < R; ++r) {
    float tot = 0.0f;  // the lane's 16 accumulators in code order, from +0
#pragma unroll
    for (int i = 0; i < 16; ++i) {
      const uint32_t p = acc[r][4 * (i / 8) + (i % 4)];
      tot = zm_fadd(tot, (i % 8) < 4 ? zm_bf2_lo(p) : zm_bf2_hi(p));
    }
    for (int o = 16; o > 0; o /= 2) tot = zm_fadd(tot, zm_shfl_xor(tot, o));
    if (lane == 0 && row0 + r < N) {
      T g = T(tot);
      if (HAS_BIAS) g = zm_add_rn(g, biasq[row0 + r]);
      outq[size_t(m) * size_t(N) + size_t(row0 + r)] = g;
    }
  }
"""
CORE = CORE_HEAD + LOOP + CORE_TAIL


SPEC = KernelSpec(
    name="qmv",
    inputs=(Param("x"), Param("w", "uint32_t"), Param("s"), Param("b"), Param("bias")),
    outputs=(Param("out"),),
    body=ONE + CORE,
    templates=(("T", "float"), ("QGS", 64), ("R", 2), ("U", 4), ("HAS_BIAS", False)),
)
SPEC_MANY = KernelSpec(
    name="qmv_many",
    inputs=(Param("x"), *(Param(f"{a}{i}", "uint32_t" if a == "w" else "T") for i in range(3)
                          for a in ("w", "s", "b", "bias"))),
    outputs=tuple(Param(f"out{i}") for i in range(3)),
    body=MANY + CORE,
    templates=(("T", "float"), ("QGS", 64), ("R", 1), ("U", 4), ("HAS_BIAS", False), ("NM", 3)),
)

"""Fused MoE routing kernels: scores + top-k + weights, one threadgroup (CUDA block) per token row.

Selection rule (what ``mx.argpartition`` returns in MLX 0.32.4 on both GPU backends): ArgPartition is a full
*stable ascending merge sort* (CUDA: ``gpu_merge_sort`` / ``block_sort_kernel`` in mlx/backend/cuda/sort.cu -- the
radix-select PR ml-explore/mlx#3117 is not in 0.32.4, its kernels are absent from the mlx-cuda-13 0.32.4 binary;
Metal: ``ArgPartition::eval_gpu`` -> ``gpu_merge_sort``, mlx/backend/metal/kernels/sort.h). Hence:

- ``argpartition(s, kth=-k)[..., -k:]`` ("top" form): the k largest of the order (value, index); among equal
  values the HIGHER index wins; returned in ascending (value, index) order.
- ``argpartition(-s, kth=k-1)[..., :k]`` ("neg" form): the k largest of the order (value, -index); among equal
  values the LOWER index wins; returned in descending value order, ties by ascending index.

The kernel picks the j-th best k times (a block arg-max under that total order) and writes it at position
``K-1-j`` (top form) or ``j`` (neg form). The same rule holds on CUDA and Metal, so there is no per-backend switch
for the order. The softmax over experts and the small sums are emulated per backend (template ``ONLINE``):
CUDA reproduces mlx/backend/cuda/softmax.cu (online max/normalizer, ``__expf``, cg::reduce, block dim from
``dispatch_block_dim``, ``16/sizeof(T)`` elements per thread) and the row reduce of ``mx.sum`` over k
(``row_reduce_simple``: per-thread blocked sums in the array dtype, then cg::reduce); Metal reproduces
``softmax_single_row`` (two passes, ``fast::exp``, simd_max/simd_sum, 4 elements per thread).
"""

from __future__ import annotations

import functools

import mlx.core as mx

from ..emit import Backend, KernelSpec, Param

MODES = {"softmax_topk": 0, "topk_softmax": 1, "sigmoid_topk": 2, "grouped_sigmoid_topk": 3}
MAX_EXPERTS = 512
MAX_K = 16

# Backend helpers; the body itself has no #if. Header code cannot see T, so these are templates.
_HEADER = r"""
#if defined(__CUDACC__)
#include <cooperative_groups/reduce.h>
template <typename U> struct ZmrPlus { __device__ __forceinline__ U operator()(U a, U b) const { return a + b; } };
// cg::reduce with MLX's own operators, so the summation tree is the one MLX's kernels use.
ZM_FN float zmr_warp_sumf(float x) {
  auto warp = cooperative_groups::tiled_partition<32>(cooperative_groups::this_thread_block());
  return cooperative_groups::reduce(warp, x, cooperative_groups::plus<float>());
}
template <typename U> ZM_FN U zmr_warp_sum(U x) {
  auto warp = cooperative_groups::tiled_partition<32>(cooperative_groups::this_thread_block());
  return cooperative_groups::reduce(warp, x, ZmrPlus<U>());
}
ZM_FN float zmr_warp_max(float x) {
  auto warp = cooperative_groups::tiled_partition<32>(cooperative_groups::this_thread_block());
  return cooperative_groups::reduce(warp, x, cooperative_groups::greater<float>());
}
ZM_FN float zmr_fast_exp(float x) { return __expf(x); }
#else
ZM_FN float zmr_warp_sumf(float x) { return simd_sum(x); }
template <typename U> ZM_FN U zmr_warp_sum(U x) { return U(simd_sum(float(x))); }  // not MLX's Metal order
ZM_FN float zmr_warp_max(float x) { return simd_max(x); }
ZM_FN float zmr_fast_exp(float x) { return metal::fast::exp(x); }
#endif
// Total order of the selection: larger value first; equal values by index (low_first: neg form).
ZM_FN bool zmr_better(float av, int ai, float bv, int bi, bool low_first) {
  if (ai < 0) return false;
  if (bi < 0) return true;
  if (av != bv) return av > bv;
  return low_first ? (ai < bi) : (ai > bi);
}
"""

# Softmax over the E experts of the row, MLX's layout: thread t holds experts [t*NR, t*NR+NR).
_SOFTMAX_E = r"""
    float v[NR];
    for (int i = 0; i < NR; ++i) { const int e = t * NR + i; v[i] = e < E ? float(x[e]) : -zm_finf(); }
    float maxval = -3.402823466e+38f;
    float nrm = 0.0f;
    if (ONLINE) {
      // mlx/backend/cuda/softmax.cu, one pass since TG * NR >= E.
      float prevmax = maxval;
      for (int i = 0; i < NR; ++i) maxval = (maxval < v[i]) ? v[i] : maxval;
      nrm = nrm * zmr_fast_exp(prevmax - maxval);
      for (int i = 0; i < NR; ++i) nrm = nrm + zmr_fast_exp(v[i] - maxval);
      prevmax = maxval;
      maxval = zmr_warp_max(maxval);
      nrm = nrm * zmr_fast_exp(prevmax - maxval);
      nrm = zmr_warp_sumf(nrm);
      prevmax = maxval;
      if (lane == 0) sh_m[w] = maxval;
      ZM_BARRIER();
      maxval = lane < NW ? sh_m[lane] : -zm_finf();
      maxval = zmr_warp_max(maxval);
      nrm = nrm * zmr_fast_exp(prevmax - maxval);
      if (lane == 0) sh_n[w] = nrm;
      ZM_BARRIER();
      nrm = lane < NW ? sh_n[lane] : 0.0f;
      nrm = zmr_warp_sumf(nrm);
      nrm = 1.0f / nrm;
      for (int i = 0; i < NR; ++i) v[i] = zmr_fast_exp(v[i] - maxval) * nrm;
    } else {
      // mlx/backend/metal/kernels/softmax.h softmax_single_row.
      if (w == 0) { sh_m[lane] = -zm_finf(); sh_n[lane] = 0.0f; }
      ZM_BARRIER();
      for (int i = 0; i < NR; ++i) maxval = (maxval < v[i]) ? v[i] : maxval;
      maxval = zmr_warp_max(maxval);
      if (lane == 0) sh_m[w] = maxval;
      ZM_BARRIER();
      if (w == 0) { maxval = zmr_warp_max(sh_m[lane]); if (lane == 0) sh_m[0] = maxval; }
      ZM_BARRIER();
      maxval = sh_m[0];
      for (int i = 0; i < NR; ++i) { const float ex = zmr_fast_exp(v[i] - maxval); v[i] = ex; nrm += ex; }
      nrm = zmr_warp_sumf(nrm);
      if (lane == 0) sh_n[w] = nrm;
      ZM_BARRIER();
      if (w == 0) { nrm = zmr_warp_sumf(sh_n[lane]); if (lane == 0) sh_n[0] = nrm; }
      ZM_BARRIER();
      nrm = 1.0f / sh_n[0];
      for (int i = 0; i < NR; ++i) v[i] = v[i] * nrm;
    }
    for (int i = 0; i < NR; ++i) {
      const int e = t * NR + i;
      if (e < E) { const float p = float(T(v[i])); sh_key[e] = p; sh_val[e] = p; }
    }
"""

# Softmax over the k selected values (warp 0 only; MLX runs it as a one-warp block since k <= 16).
_SOFTMAX_K = r"""
      float u[NRK];
      for (int i = 0; i < NRK; ++i) { const int p = lane * NRK + i; u[i] = p < K ? float(S(sh_w[p])) : -zm_finf(); }
      float maxval = -3.402823466e+38f;
      float nrm = 0.0f;
      if (ONLINE) {
        float prevmax = maxval;
        for (int i = 0; i < NRK; ++i) maxval = (maxval < u[i]) ? u[i] : maxval;
        nrm = nrm * zmr_fast_exp(prevmax - maxval);
        for (int i = 0; i < NRK; ++i) nrm = nrm + zmr_fast_exp(u[i] - maxval);
        prevmax = maxval;
        maxval = zmr_warp_max(maxval);
        nrm = nrm * zmr_fast_exp(prevmax - maxval);
        nrm = zmr_warp_sumf(nrm);
        prevmax = maxval;
        const float m0 = zm_shfl(maxval, 0);
        maxval = lane < 1 ? m0 : -zm_finf();
        maxval = zmr_warp_max(maxval);
        nrm = nrm * zmr_fast_exp(prevmax - maxval);
        const float n0 = zm_shfl(nrm, 0);
        nrm = lane < 1 ? n0 : 0.0f;
        nrm = zmr_warp_sumf(nrm);
        nrm = 1.0f / nrm;
        for (int i = 0; i < NRK; ++i) u[i] = zmr_fast_exp(u[i] - maxval) * nrm;
      } else {
        for (int i = 0; i < NRK; ++i) maxval = (maxval < u[i]) ? u[i] : maxval;
        maxval = zmr_warp_max(maxval);
        maxval = zmr_warp_max(lane < 1 ? zm_shfl(maxval, 0) : -zm_finf());
        for (int i = 0; i < NRK; ++i) { const float ex = zmr_fast_exp(u[i] - maxval); u[i] = ex; nrm += ex; }
        nrm = zmr_warp_sumf(nrm);
        nrm = zmr_warp_sumf(lane < 1 ? zm_shfl(nrm, 0) : 0.0f);
        nrm = 1.0f / nrm;
        for (int i = 0; i < NRK; ++i) u[i] = u[i] * nrm;
      }
      for (int i = 0; i < NRK; ++i) {
        const int p = lane * NRK + i;
        if (p < K) sh_o[p] = float(S(u[i]));
      }
"""

# Sum of the k weights in the weights' own dtype U, laid out as MLX's row_reduce_simple (NS per thread).
_SUM_K = r"""
      U acc = U(0.0f);
      for (int i = 0; i < NS; ++i) { const int p = lane * NS + i; acc = acc + (p < K ? U(sh_w[p]) : U(0.0f)); }
      const U tot = zmr_warp_sum(acc);
"""

_BODY = r"""
  constexpr int NW = TG / 32;
  int n_rows = 1;
  for (int d = 0; d + 1 < logits_ndim; ++d) n_rows *= logits_shape[d];
  const int row = int(zm_bid);
  if (row >= n_rows) return;  // uniform over the threadgroup
  const int t = int(zm_tid);
  const int lane = int(zm_lane);
  const int w = int(zm_warp);
  ZM_SHARED float sh_key[E];
  ZM_SHARED float sh_val[E];
  ZM_SHARED int sh_taken[E];
  ZM_SHARED float sh_m[32];
  ZM_SHARED float sh_n[32];
  ZM_SHARED float sh_bv[32];
  ZM_SHARED int sh_bi[32];
  ZM_SHARED int sh_sel[K];
  ZM_SHARED float sh_w[K];
  ZM_SHARED float sh_o[K];
  ZM_SHARED float sh_gs[NG];
  const auto x = logits + size_t(row) * E;
  for (int e = t; e < E; e += TG) sh_taken[e] = 0;

  // Phase A: per-expert selection key and weight source, exactly as the family's ops round them.
  if (MODE == 0) {
@SOFTMAX_E@
  } else {
    for (int e = t; e < E; e += TG) {
      const T xv = x[e];
      float key = float(xv);
      float val = key;
      if (MODE == 2) {
        val = float(zm_sigmoid(xv));  // sigmoid in the logits dtype
        key = HAS_BIAS ? val + bias[e] : val;  // bias only selects, added in float32
      } else if (MODE == 3) {
        val = zm_sigmoid(float(xv));  // sigmoid(logits.astype(float32))
        key = HAS_BIAS ? val + bias[e] : val;
      }
      sh_key[e] = key;
      sh_val[e] = val;
    }
  }
  ZM_BARRIER();

  // DeepSeek-V3 group limit: group score = sum of its top-2; zero the NG-TKG worst groups (stable order).
  if (MODE == 3 && NG > 1) {
    constexpr int GS = E / NG;
    for (int g = t; g < NG; g += TG) {
      float a = -zm_finf();
      float b = -zm_finf();
      for (int e = g * GS; e < (g + 1) * GS; ++e) {
        const float s = sh_key[e];
        if (s > a) { b = a; a = s; } else if (s > b) { b = s; }
      }
      sh_gs[g] = (0.0f + b) + a;  // mx.topk returns [second, largest]; sum starts from 0
    }
    ZM_BARRIER();
    for (int g = t; g < NG; g += TG) {
      const float s = sh_gs[g];
      int rank = 0;
      for (int h = 0; h < NG; ++h) rank += (sh_gs[h] < s || (sh_gs[h] == s && h < g)) ? 1 : 0;
      if (rank < NG - TKG) for (int e = g * GS; e < (g + 1) * GS; ++e) sh_key[e] = 0.0f;
    }
    ZM_BARRIER();
  }

  // Phase B: k rounds of block arg-max under the argpartition total order.
  for (int j = 0; j < K; ++j) {
    float bv = -zm_finf();
    int bi = -1;
    for (int e = t; e < E; e += TG) {
      if (sh_taken[e] == 0 && zmr_better(sh_key[e], e, bv, bi, NEG)) { bv = sh_key[e]; bi = e; }
    }
    for (int o = 16; o > 0; o >>= 1) {
      const float ov = zm_shfl_xor(bv, o);
      const int oi = zm_shfl_xor(bi, o);
      if (zmr_better(ov, oi, bv, bi, NEG)) { bv = ov; bi = oi; }
    }
    if (lane == 0) { sh_bv[w] = bv; sh_bi[w] = bi; }
    ZM_BARRIER();
    if (t == 0) {
      float cv = sh_bv[0];
      int ci = sh_bi[0];
      for (int q = 1; q < NW; ++q) {
        if (zmr_better(sh_bv[q], sh_bi[q], cv, ci, NEG)) { cv = sh_bv[q]; ci = sh_bi[q]; }
      }
      const int pos = NEG ? j : K - 1 - j;
      sh_sel[pos] = ci;
      sh_w[pos] = ci >= 0 ? sh_val[ci] : 0.0f;
      if (ci >= 0) sh_taken[ci] = 1;
    }
    ZM_BARRIER();
  }

  // Phase C: weights of the k picks in argpartition order (warp 0).
  if (w == 0) {
    if (MODE == 1) {
@SOFTMAX_K@
    } else if (RENORM) {
@SUM_K@
      const U den = MODE == 2 ? zm_add(tot, U(params[0])) : tot;
      if (lane < K) sh_o[lane] = float(zm_div(U(sh_w[lane]), den));
    } else if (lane < K) {
      sh_o[lane] = sh_w[lane];
    }
  }
  ZM_BARRIER();
  if (t < K) {
    float wv = sh_o[t];
    if (SCALE) wv = float(zm_mul(U(wv), U(params[1])));  // scores * routed_scaling_factor in their dtype
    inds[size_t(row) * K + t] = uint32_t(sh_sel[t]);
    weights[size_t(row) * K + t] = W(wv);
  }
"""


def _body(mode: int) -> str:
    return (
        f"  constexpr int MODE = {mode};\n"
        + _BODY.replace("@SOFTMAX_E@", _SOFTMAX_E).replace("@SOFTMAX_K@", _SOFTMAX_K).replace("@SUM_K@", _SUM_K)
    )


_EXAMPLE = (
    ("T", "float"), ("U", "float"), ("S", "float"), ("W", "float"), ("E", 128), ("K", 8), ("TG", 32), ("NR", 4),
    ("NS", 4), ("NRK", 4), ("NEG", False), ("RENORM", True), ("HAS_BIAS", False), ("SCALE", False), ("NG", 1),
    ("TKG", 1), ("ONLINE", True),
)


def _spec(variant: str) -> KernelSpec:
    return KernelSpec(
        name=f"route_{variant}",
        inputs=(Param("logits"), Param("bias", "float"), Param("params", "float")),
        outputs=(Param("inds", "uint32_t"), Param("weights", "W")),
        body=_body(MODES[variant]),
        header=_HEADER,
        templates=_EXAMPLE,
    )


SPECS: dict[str, KernelSpec] = {v: _spec(v) for v in MODES}


def _block_dim(threads: int) -> int:
    # mlx/backend/cuda/kernel_utils.cuh dispatch_block_dim
    bd = 32
    while bd < threads and bd < 1024:
        bd *= 2
    return bd


def geometry(variant: str, backend: Backend, dtype: mx.Dtype, experts: int) -> tuple[int, int]:
    """(threads per row, experts per thread): MLX's softmax launch for the E-softmax, else one warp."""
    if MODES[variant] != 0:
        return 32, 1
    if backend == "cuda":
        nr = 16 // dtype.size
        return _block_dim(-(-experts // nr)), nr
    nr = 4  # Metal SOFTMAX_N_READS; threadgroup rounded up to whole simdgroups
    needed = -(-experts // nr)
    return 32 * (-(-needed // 32)), nr


@functools.lru_cache(maxsize=256)  # per-call on the decode path: same arguments every layer and token
def template(
    variant: str, backend: Backend, *, dtype: mx.Dtype, wdtype: mx.Dtype, sum_dtype: mx.Dtype, soft_dtype: mx.Dtype,
    experts: int, k: int, neg: bool, renorm: bool, has_bias: bool, scale: bool, n_group: int, topk_group: int,
    flat: bool,
) -> tuple[tuple[tuple[str, object], ...], int]:
    tg, nr = geometry(variant, backend, dtype, experts)
    # mx.sum over k: row_reduce_simple reads 16 bytes per thread; a 1-D input is an all-reduce (8 per thread).
    ns = 8 if flat else 16 // sum_dtype.size
    nrk = 16 // soft_dtype.size if backend == "cuda" else 4
    tmpl = (
        ("T", dtype), ("U", sum_dtype), ("S", soft_dtype), ("W", wdtype), ("E", experts), ("K", k), ("TG", tg),
        ("NR", nr), ("NS", ns if backend == "cuda" else 1), ("NRK", nrk), ("NEG", neg), ("RENORM", renorm),
        ("HAS_BIAS", has_bias), ("SCALE", scale), ("NG", n_group), ("TKG", topk_group), ("ONLINE", backend == "cuda"),
    )
    return tmpl, tg

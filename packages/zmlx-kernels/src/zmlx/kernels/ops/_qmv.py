"""A kernel-body snippet: rows of an affine-quantized matrix times one activation row, in MLX's CUDA ``qmv`` numerics.

For kernels that compute a small projection themselves before using it (router.py: router logits, then routing;
qkv.py: one attention head's q/k/v rows, then norm and RoPE). The arithmetic per output row is the recipe of
docs/notes-mlx-cuda-qmv.md, also followed by moe_experts_kernels.py: lane owns EPT consecutive k per step (16 at 4
bits, 8 at 8), accumulators in ``A`` (the activations' dtype at 4 bits, float at 8), weights dequantized as one
``fma(q, scale, bias)`` in ``T``, lane total from +0 in order, butterfly 16..1, one rounding to ``T``.

The body declares, before ``QMV_ROWS``: ``qmv_w`` (uint32 rows), ``qmv_s`` / ``qmv_b`` (scales, biases), ``qmv_x``
(the activation row), ``qmv_kw`` (words per row), ``qmv_rows`` (rows to compute), ``qmv_row0`` (first row), and
template constants ``T``, ``A``, ``BITS``, ``QGS`` (group size), ``R`` (rows a warp runs at once). ``@STORE@`` is
replaced by a statement run on lane 0 for each row ``e < qmv_rows`` with its result ``T g``.
"""

QMV_ROWS = """\
  // Each warp runs R rows at once; every load of a step (x, then each row's words, scale and bias) is issued
  // before its first fma, and 4 steps are unrolled, so their loads are in flight together. Rows past the end
  // reload the last row (no branch); only rows < qmv_rows are stored.
  {
    constexpr int PER = 32 / BITS;
    constexpr int EPT = BITS == 4 ? 16 : 8;
    constexpr int WPT = EPT / PER;  // words per lane per step
    const int KD = qmv_kw * PER;
    const int G = KD / QGS;
    const int NWB = int(zm_bdim / 32u);
    const int lane_ = int(zm_lane);
    for (int e0 = int(zm_warp); e0 < qmv_rows; e0 += NWB * R) {
      A acc[R][EPT];
#pragma unroll
      for (int r = 0; r < R; ++r) {
#pragma unroll
        for (int i = 0; i < EPT; ++i) acc[r][i] = A(0.0f);
      }
#pragma unroll 4
      for (int k0 = lane_ * EPT; k0 < KD; k0 += 32 * EPT) {
        T xv[EPT];
        uint32_t wv[R][WPT];
        T sv[R], bv[R];
#pragma unroll
        for (int i = 0; i < EPT; ++i) xv[i] = qmv_x[k0 + i];
#pragma unroll
        for (int r = 0; r < R; ++r) {
          const size_t n = size_t(qmv_row0) + size_t(e0 + r * NWB < qmv_rows ? e0 + r * NWB : qmv_rows - 1);
          const size_t gi = n * size_t(G) + size_t(k0 / QGS);
#pragma unroll
          for (int j = 0; j < WPT; ++j) wv[r][j] = qmv_w[n * size_t(qmv_kw) + size_t(k0 / PER + j)];
          sv[r] = qmv_s[gi];
          bv[r] = qmv_b[gi];
        }
#pragma unroll
        for (int r = 0; r < R; ++r) {
#pragma unroll
          for (int i = 0; i < EPT; ++i) {
            const uint32_t q = (wv[r][i / PER] >> ((i % PER) * BITS)) & ((1u << BITS) - 1u);
            acc[r][i] = zm_fma(A(float(xv[i])), A(float(zm_fma(T(float(q)), sv[r], bv[r]))), acc[r][i]);
          }
        }
      }
#pragma unroll
      for (int r = 0; r < R; ++r) {
        const int e = e0 + r * NWB;
        float tot = 0.0f;
        for (int i = 0; i < EPT; ++i) tot = zm_fadd(tot, float(acc[r][i]));
        for (int o = 16; o > 0; o /= 2) tot = zm_fadd(tot, zm_shfl_xor(tot, o));
        if (lane_ == 0 && e < qmv_rows) {
          T g = T(tot);
          @STORE@
        }
      }
    }
  }
"""


def qmv_rows(store: str) -> str:
    """``QMV_ROWS`` with ``store`` (one statement using ``e`` and ``g``) as what lane 0 does with each row."""
    return QMV_ROWS.replace("@STORE@", store)


def rows_per_warp(bits: int, rows: int, warps: int) -> int:
    """R: float accumulators at 8 bits allow 8 rows a warp (8 x 8 registers), bf16 ones at 4 bits 4 (4 x 16)."""
    return max(1, min(8 if bits == 8 else 4, -(-rows // warps)))

// zmlx CUDA prelude: maps the zmlx kernel dialect onto CUDA for mx.fast.cuda_kernel.
// MLX's own device functors are included so elementwise math rounds exactly as MLX's CUDA kernels do.
#include "mlx/backend/cuda/device/unary_ops.cuh"
#include "mlx/backend/cuda/device/binary_ops.cuh"

#define ZM_FN __device__ __forceinline__
#define ZM_SHARED __shared__
#define ZM_BARRIER() __syncthreads()
#define ZM_SIMD_WIDTH 32

// Warp (simdgroup) collectives. Call them from warp-uniform control flow only.
template <typename U>
ZM_FN U zm_simd_sum(U x) {
  for (int o = 16; o > 0; o >>= 1) x += __shfl_xor_sync(0xffffffffu, x, o);
  return x;
}
template <typename U>
ZM_FN U zm_simd_max(U x) {
  for (int o = 16; o > 0; o >>= 1) { U y = __shfl_xor_sync(0xffffffffu, x, o); x = y > x ? y : x; }
  return x;
}
template <typename U>
ZM_FN U zm_shfl_xor(U x, int mask) { return __shfl_xor_sync(0xffffffffu, x, mask); }
template <typename U>
ZM_FN U zm_shfl(U x, int lane) { return __shfl_sync(0xffffffffu, x, lane); }

// Elementwise math with MLX's exact CUDA semantics (same functors as mlx/backend/cuda/device/unary_ops.cuh).
template <typename U> ZM_FN U zm_exp(U x) { return mlx::core::cu::Exp{}(x); }
template <typename U> ZM_FN U zm_sigmoid(U x) { return mlx::core::cu::Sigmoid{}(x); }
template <typename U> ZM_FN U zm_erf(U x) { return mlx::core::cu::Erf{}(x); }
template <typename U> ZM_FN U zm_tanh(U x) { return mlx::core::cu::Tanh{}(x); }
template <typename U> ZM_FN U zm_sqrt(U x) { return mlx::core::cu::Sqrt{}(x); }
template <typename U> ZM_FN U zm_rsqrt(U x) { return mlx::core::cu::Rsqrt{}(x); }
template <typename U> ZM_FN U zm_abs(U x) { return mlx::core::cu::Abs{}(x); }
template <typename U> ZM_FN U zm_min(U a, U b) { return mlx::core::cu::Minimum{}(a, b); }
template <typename U> ZM_FN U zm_add(U a, U b) { return mlx::core::cu::Add{}(a, b); }
template <typename U> ZM_FN U zm_sub(U a, U b) { return mlx::core::cu::Subtract{}(a, b); }
template <typename U> ZM_FN U zm_mul(U a, U b) { return mlx::core::cu::Multiply{}(a, b); }
template <typename U> ZM_FN U zm_div(U a, U b) { return mlx::core::cu::Divide{}(a, b); }
template <typename U> ZM_FN U zm_pow(U a, U b) { return mlx::core::cu::Power{}(a, b); }
template <typename U> ZM_FN U zm_max(U a, U b) { return mlx::core::cu::Maximum{}(a, b); }
// One rounding per op and never fused into an FMA: what two separate MLX primitives (a multiply, then a sum)
// compute. Plain zm_mul/zm_add above may be contracted, as they are inside one fused MLX kernel.
ZM_FN float zm_mul_rn(float a, float b) { return __fmul_rn(a, b); }
ZM_FN float zm_add_rn(float a, float b) { return __fadd_rn(a, b); }
ZM_FN __half zm_mul_rn(__half a, __half b) { return __hmul_rn(a, b); }
ZM_FN __half zm_add_rn(__half a, __half b) { return __hadd_rn(a, b); }
ZM_FN __nv_bfloat16 zm_mul_rn(__nv_bfloat16 a, __nv_bfloat16 b) { return __hmul_rn(a, b); }
ZM_FN __nv_bfloat16 zm_add_rn(__nv_bfloat16 a, __nv_bfloat16 b) { return __hadd_rn(a, b); }
// Explicit single-rounding float helpers (no FMA contraction), for reproducing MLX op-by-op rounding.
ZM_FN float zm_fmul(float a, float b) { return __fmul_rn(a, b); }
ZM_FN float zm_fadd(float a, float b) { return __fadd_rn(a, b); }
ZM_FN float zm_fexp(float x) { return expf(x); }
ZM_FN float zm_finf() { return __int_as_float(0x7f800000); }

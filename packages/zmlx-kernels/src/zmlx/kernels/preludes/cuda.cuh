// zmlx CUDA prelude: maps the zmlx kernel dialect onto CUDA for mx.fast.cuda_kernel.
// MLX's own device functors are included so elementwise math rounds exactly as MLX's CUDA kernels do.
#include "mlx/backend/cuda/device/unary_ops.cuh"
#include "mlx/backend/cuda/device/binary_ops.cuh"

#define ZM_FN __device__ __forceinline__
#define ZM_SHARED __shared__
#define ZM_DEVICE  // address space of a pointer into a kernel argument (Metal: device)
#define ZM_TG  // address space of a pointer into ZM_SHARED memory (Metal: threadgroup)
#define ZM_BARRIER() __syncthreads()
#define ZM_DEVICE_BARRIER() __syncthreads()  // also orders the block's writes to device memory
#define ZM_WARP_SYNC() __syncwarp()
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
// The float32 library functions MLX's rope kernels call (exp2 / cos / sin on a float: exp2f, cosf, sinf).
ZM_FN float zm_exp2f(float x) { return exp2f(x); }
ZM_FN float zm_cosf(float x) { return cosf(x); }
ZM_FN float zm_sinf(float x) { return sinf(x); }

// ---- quantized GEMV helpers -------------------------------------------------------------------------------
#define ZM_REF(type) type&
// One rounding: fma.rn in the operands' type (what MLX's qmv does with __hfma / fmaf).
ZM_FN float zm_fma(float a, float b, float c) { return __fmaf_rn(a, b, c); }
ZM_FN __half zm_fma(__half a, __half b, __half c) { return __hfma(a, b, c); }
ZM_FN __nv_bfloat16 zm_fma(__nv_bfloat16 a, __nv_bfloat16 b, __nv_bfloat16 c) { return __hfma(a, b, c); }
template <typename U> ZM_FN uint32_t zm_pack2(U lo, U hi) {
  return uint32_t(*reinterpret_cast<unsigned short*>(&lo)) | (uint32_t(*reinterpret_cast<unsigned short*>(&hi)) << 16);
}
// D += A * B on the tensor cores: mma.sync m16n8k16, bf16 in, f32 accumulate (what MLX's qmm_sm80 issues).
// a0..a3 / b0, b1 / d0..d3 follow PTX's fragment layout for lane `lane` (unused here; the Metal emulation needs it).
ZM_FN void zm_mma_bf16_16816(float& d0, float& d1, float& d2, float& d3, uint32_t a0, uint32_t a1, uint32_t a2,
                             uint32_t a3, uint32_t b0, uint32_t b1, unsigned lane) {
  asm volatile(
      "mma.sync.aligned.m16n8k16.row.col.f32.bf16.bf16.f32 {%0,%1,%2,%3}, {%4,%5,%6,%7}, {%8,%9}, {%0,%1,%2,%3};\n"
      : "+f"(d0), "+f"(d1), "+f"(d2), "+f"(d3)
      : "r"(a0), "r"(a1), "r"(a2), "r"(a3), "r"(b0), "r"(b1));
}
// 16 bytes from global memory in one load (p must be 16-byte aligned).
template <typename U> ZM_FN uint4 zm_load16(const U* p) { return *reinterpret_cast<const uint4*>(p); }
// 8 bytes from global memory in one load (p must be 8-byte aligned).
template <typename U> ZM_FN uint2 zm_load8(const U* p) { return *reinterpret_cast<const uint2*>(p); }
// 4 bytes (a bf16 pair) from global memory in one load (p must be 4-byte aligned).
template <typename U> ZM_FN uint32_t zm_load4(const U* p) { return *reinterpret_cast<const uint32_t*>(p); }
// Packed bf16 pairs in a uint32 (low half first): one HFMA2.BF16 / HSUB2 per pair, one rounding per half, as MLX's
// qmv computes them. zm_perm is PRMT (__byte_perm): bytes of (b:a) picked by the selector's nibbles.
ZM_FN uint32_t zm_bf2_fma(uint32_t a, uint32_t b, uint32_t c) {
  __nv_bfloat162 r = __hfma2(*reinterpret_cast<__nv_bfloat162*>(&a), *reinterpret_cast<__nv_bfloat162*>(&b),
                             *reinterpret_cast<__nv_bfloat162*>(&c));
  return *reinterpret_cast<uint32_t*>(&r);
}
ZM_FN uint32_t zm_bf2_sub(uint32_t a, uint32_t b) {
  __nv_bfloat162 r = __hsub2(*reinterpret_cast<__nv_bfloat162*>(&a), *reinterpret_cast<__nv_bfloat162*>(&b));
  return *reinterpret_cast<uint32_t*>(&r);
}
ZM_FN uint32_t zm_perm(uint32_t a, uint32_t b, uint32_t sel) { return __byte_perm(a, b, sel); }
ZM_FN float zm_bf2_lo(uint32_t p) { return __uint_as_float(p << 16); }
ZM_FN float zm_bf2_hi(uint32_t p) { return __uint_as_float(p & 0xffff0000u); }
// 4-bit codes (t & 0xF, (t >> 4) & 0xF) as an exact bf16 pair, low half first: 0x4300 | q is 128 + q, then
// minus 128, exact (the MMA kernels' B fragments: two adjacent k of one row)
ZM_FN uint32_t zm_q4pair(uint32_t t) {
  return zm_bf2_sub((t & 0xFu) | ((t << 12) & 0xF0000u) | 0x43004300u, 0x43004300u);
}
// RMSNorm's output for a bf16 pair of x (low half first) given the row's 1 / rms: w * T(x * inv), each half rounded
// as MLX's rms_norm does (the float product to bf16, then the bf16 multiply by the weight); zm_rms8: four pairs
ZM_FN uint32_t zm_rms2(uint32_t x2, uint32_t w2, float inv) {
  const __nv_bfloat16 lo = zm_mul(__ushort_as_bfloat16((unsigned short)(w2 & 0xffffu)),
                                  __float2bfloat16_rn(zm_bf2_lo(x2) * inv));
  const __nv_bfloat16 hi = zm_mul(__ushort_as_bfloat16((unsigned short)(w2 >> 16)),
                                  __float2bfloat16_rn(zm_bf2_hi(x2) * inv));
  return zm_pack2(lo, hi);
}
ZM_FN uint4 zm_rms8(uint4 x, uint4 w, float inv) {
  return make_uint4(zm_rms2(x.x, w.x, inv), zm_rms2(x.y, w.y, inv), zm_rms2(x.z, w.z, inv), zm_rms2(x.w, w.w, inv));
}

// zmlx Metal prelude: maps the zmlx kernel dialect onto Metal for mx.fast.metal_kernel.
// Elementwise helpers mirror mlx/backend/metal/kernels/unary_ops.h so results round as MLX's own kernels.
#define ZM_FN inline
#define ZM_SHARED threadgroup
#define ZM_TG threadgroup
#define ZM_DEVICE device  // address space of a pointer into a kernel argument (CUDA: global, no qualifier)
#define ZM_BARRIER() threadgroup_barrier(mem_flags::mem_threadgroup)
// a barrier that also orders the threadgroup's writes to device memory (a row written, then read by other threads)
#define ZM_DEVICE_BARRIER() threadgroup_barrier(mem_flags::mem_device | mem_flags::mem_threadgroup)
#define ZM_WARP_SYNC() simdgroup_barrier(mem_flags::mem_threadgroup)
#define ZM_SIMD_WIDTH 32

template <typename U> ZM_FN U zm_simd_sum(U x) { return simd_sum(x); }
template <typename U> ZM_FN U zm_simd_max(U x) { return simd_max(x); }
template <typename U> ZM_FN U zm_shfl_xor(U x, int mask) { return simd_shuffle_xor(x, ushort(mask)); }
template <typename U> ZM_FN U zm_shfl(U x, int lane) { return simd_shuffle(x, ushort(lane)); }

template <typename U> ZM_FN U zm_exp(U x) { return metal::exp(x); }
template <typename U> ZM_FN U zm_sigmoid(U x) {
  auto y = 1 / (1 + metal::exp(metal::abs(x)));
  return static_cast<U>((x < 0) ? y : 1 - y);
}
// Metal has no erf: MLX ships its own polynomial (mlx/backend/metal/kernels/erf.h); same coefficients here.
ZM_FN float zm_erf_f32(float a) {
  float r, s, t, u;
  t = metal::abs(a);
  s = a * a;
  if (t > 0.927734375f) {
    r = metal::fma(-1.72853470e-5f, t, 3.83197126e-4f);
    u = metal::fma(-3.88396438e-3f, t, 2.42546219e-2f);
    r = metal::fma(r, s, u);
    r = metal::fma(r, t, -1.06777877e-1f);
    r = metal::fma(r, t, -6.34846687e-1f);
    r = metal::fma(r, t, -1.28717512e-1f);
    r = metal::fma(r, t, -t);
    r = 1.0f - metal::exp(r);
    r = metal::copysign(r, a);
  } else {
    r = -5.96761703e-4f;
    r = metal::fma(r, s, 4.99119423e-3f);
    r = metal::fma(r, s, -2.67681349e-2f);
    r = metal::fma(r, s, 1.12819925e-1f);
    r = metal::fma(r, s, -3.76125336e-1f);
    r = metal::fma(r, s, 1.28379166e-1f);
    r = metal::fma(r, a, a);
  }
  return r;
}
template <typename U> ZM_FN U zm_erf(U x) { return static_cast<U>(zm_erf_f32(static_cast<float>(x))); }
template <typename U> ZM_FN U zm_tanh(U x) { return metal::precise::tanh(x); }
template <typename U> ZM_FN U zm_sqrt(U x) { return metal::sqrt(x); }
template <typename U> ZM_FN U zm_rsqrt(U x) { return metal::rsqrt(x); }
template <typename U> ZM_FN U zm_abs(U x) { return metal::abs(x); }
template <typename U> ZM_FN U zm_min(U a, U b) { return metal::min(a, b); }
template <typename U> ZM_FN U zm_max(U a, U b) { return metal::max(a, b); }
template <typename U> ZM_FN U zm_add(U a, U b) { return a + b; }
template <typename U> ZM_FN U zm_sub(U a, U b) { return a - b; }
template <typename U> ZM_FN U zm_mul(U a, U b) { return a * b; }
template <typename U> ZM_FN U zm_div(U a, U b) { return a / b; }
template <typename U> ZM_FN U zm_pow(U a, U b) { return static_cast<U>(metal::pow(static_cast<float>(a), static_cast<float>(b))); }
// Separate roundings as two MLX primitives compute them (no FMA contraction intended; unverified on Metal).
template <typename U> ZM_FN U zm_mul_rn(U a, U b) { return a * b; }
template <typename U> ZM_FN U zm_add_rn(U a, U b) { return a + b; }
ZM_FN float zm_fmul(float a, float b) { return a * b; }
ZM_FN float zm_fadd(float a, float b) { return a + b; }
ZM_FN float zm_fexp(float x) { return metal::exp(x); }
ZM_FN float zm_finf() { return INFINITY; }
ZM_FN float zm_exp2f(float x) { return metal::exp2(x); }
ZM_FN float zm_cosf(float x) { return metal::precise::cos(x); }
ZM_FN float zm_sinf(float x) { return metal::precise::sin(x); }

// ---- quantized GEMV helpers -------------------------------------------------------------------------------
#define ZM_REF(type) thread type&
template <typename U> ZM_FN U zm_fma(U a, U b, U c) {
  return static_cast<U>(metal::fma(static_cast<float>(a), static_cast<float>(b), static_cast<float>(c)));
}
template <typename U> ZM_FN uint32_t zm_pack2(U lo, U hi) {
  return uint32_t(as_type<ushort>(lo)) | (uint32_t(as_type<ushort>(hi)) << 16);
}
ZM_FN float zm_bf16_bits(uint32_t pair, uint k) { return as_type<float>(k % 2 ? (pair & 0xffff0000u) : (pair << 16)); }
// Metal has no mma.sync: the same m16n8k16 product with the same fragment layout, summed in float over k.
// Not bit-identical to a tensor core; gives the same function so the emitted Metal kernel computes the right thing.
ZM_FN void zm_mma_bf16_16816(thread float& d0, thread float& d1, thread float& d2, thread float& d3,
                             uint32_t a0, uint32_t a1, uint32_t a2, uint32_t a3, uint32_t b0, uint32_t b1,
                             uint lane) {
  const uint g = lane / 4, c = lane % 4;
  for (uint k = 0; k < 16; ++k) {
    const uint src = (k % 8) / 2;
    const uint alo = simd_shuffle(k < 8 ? a0 : a2, ushort(g * 4 + src));  // A[g][k]
    const uint ahi = simd_shuffle(k < 8 ? a1 : a3, ushort(g * 4 + src));  // A[g + 8][k]
    const uint bv0 = simd_shuffle(k < 8 ? b0 : b1, ushort((2 * c) * 4 + src));      // B[k][2c]
    const uint bv1 = simd_shuffle(k < 8 ? b0 : b1, ushort((2 * c + 1) * 4 + src));  // B[k][2c + 1]
    const float x0 = zm_bf16_bits(alo, k), x1 = zm_bf16_bits(ahi, k);
    const float w0 = zm_bf16_bits(bv0, k), w1 = zm_bf16_bits(bv1, k);
    d0 = metal::fma(x0, w0, d0); d1 = metal::fma(x0, w1, d1);
    d2 = metal::fma(x1, w0, d2); d3 = metal::fma(x1, w1, d3);
  }
}
template <typename U> ZM_FN uint4 zm_load16(const device U* p) { return *reinterpret_cast<const device uint4*>(p); }
template <typename U> ZM_FN uint2 zm_load8(const device U* p) { return *reinterpret_cast<const device uint2*>(p); }
template <typename U> ZM_FN uint32_t zm_load4(const device U* p) { return *reinterpret_cast<const device uint32_t*>(p); }
// Packed bf16 pairs in a uint (low half first). Metal: float math, rounded to bf16 (nearest even) per half; the
// float fma then the bf16 rounding can round twice where CUDA's HFMA2.BF16 rounds once (unverified on Metal).
ZM_FN float zm_bf2_lo(uint p) { return as_type<float>(p << 16); }
ZM_FN float zm_bf2_hi(uint p) { return as_type<float>(p & 0xffff0000u); }
ZM_FN uint zm_bf16_rne(float f) { uint u = as_type<uint>(f); return (u + 0x7fffu + ((u >> 16) & 1u)) >> 16; }
ZM_FN uint zm_bf2_fma(uint a, uint b, uint c) {
  return zm_bf16_rne(metal::fma(zm_bf2_lo(a), zm_bf2_lo(b), zm_bf2_lo(c)))
         | (zm_bf16_rne(metal::fma(zm_bf2_hi(a), zm_bf2_hi(b), zm_bf2_hi(c))) << 16);
}
ZM_FN uint zm_bf2_sub(uint a, uint b) {
  return zm_bf16_rne(zm_bf2_lo(a) - zm_bf2_lo(b)) | (zm_bf16_rne(zm_bf2_hi(a) - zm_bf2_hi(b)) << 16);
}
ZM_FN uint zm_perm(uint a, uint b, uint sel) {  // CUDA's __byte_perm: result byte i = byte (sel >> 4i) & 7 of (b:a)
  uint r = 0;
  for (uint i = 0; i < 4; ++i) {
    const uint s = (sel >> (4 * i)) & 7u;
    r |= (((s < 4 ? a : b) >> (8 * (s & 3u))) & 0xffu) << (8 * i);
  }
  return r;
}
// 4-bit codes (t & 0xF, (t >> 4) & 0xF) as an exact bf16 pair, low half first: 0x4300 | q is 128 + q, then
// minus 128, exact (the MMA kernels' B fragments: two adjacent k of one row)
ZM_FN uint32_t zm_q4pair(uint32_t t) {
  return zm_bf2_sub((t & 0xFu) | ((t << 12) & 0xF0000u) | 0x43004300u, 0x43004300u);
}
// RMSNorm's output for a bf16 pair of x given the row's 1 / rms: w * T(x * inv), each half rounded to bf16 twice
// as MLX's rms_norm does (float math: the product of two bf16 values is exact in float); zm_rms8: four pairs
ZM_FN uint32_t zm_rms2(uint32_t x2, uint32_t w2, float inv) {
  const float tl = as_type<float>(zm_bf16_rne(zm_bf2_lo(x2) * inv) << 16);
  const float th = as_type<float>(zm_bf16_rne(zm_bf2_hi(x2) * inv) << 16);
  return zm_bf16_rne(zm_bf2_lo(w2) * tl) | (zm_bf16_rne(zm_bf2_hi(w2) * th) << 16);
}
ZM_FN uint4 zm_rms8(uint4 x, uint4 w, float inv) {
  uint4 r;
  r.x = zm_rms2(x.x, w.x, inv); r.y = zm_rms2(x.y, w.y, inv); r.z = zm_rms2(x.z, w.z, inv); r.w = zm_rms2(x.w, w.w, inv);
  return r;
}

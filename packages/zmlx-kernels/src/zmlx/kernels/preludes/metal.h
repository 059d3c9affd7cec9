// zmlx Metal prelude: maps the zmlx kernel dialect onto Metal for mx.fast.metal_kernel.
// Elementwise helpers mirror mlx/backend/metal/kernels/unary_ops.h so results round as MLX's own kernels.
#define ZM_FN inline
#define ZM_SHARED threadgroup
#define ZM_BARRIER() threadgroup_barrier(mem_flags::mem_threadgroup)
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

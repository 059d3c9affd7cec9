// Just enough of the Metal Shading Language for a C++ compiler to syntax- and type-check zmlx's emitted
// Metal kernels on Linux. It checks the C++ of the body (names, types, templates, helper calls), not Metal's
// address-space rules or the GPU's behaviour: those need an Apple toolchain, which CI does not have.
#pragma once
#include <cstdint>
#include <cmath>
#define device
#define constant
#define threadgroup
#define thread
#define kernel
#ifndef INFINITY
#define INFINITY __builtin_inff()
#endif
typedef unsigned int uint;
typedef unsigned short ushort;
struct uint3 { uint x, y, z; };
struct mem_flags { enum { mem_none, mem_device, mem_threadgroup }; };
inline void threadgroup_barrier(int) {}

// 16-bit float stand-ins with the conversions MLX's bfloat16_t / half provide.
template <int Tag> struct f16like {
  float v;
  f16like() = default;
  template <typename U> f16like(U x) : v(static_cast<float>(x)) {}
  operator float() const { return v; }
};
typedef f16like<0> half;
typedef f16like<1> bfloat16_t;
// Arithmetic and comparisons go through the implicit float conversion, as MLX's types promote to float.

namespace metal {
template <typename U> U exp(U x) { return U(std::exp(float(x))); }
template <typename U> U log(U x) { return U(std::log(float(x))); }
template <typename U> U abs(U x) { return U(std::fabs(float(x))); }
template <typename U> U sqrt(U x) { return U(std::sqrt(float(x))); }
template <typename U> U rsqrt(U x) { return U(1.0f / std::sqrt(float(x))); }
template <typename U> U min(U a, U b) { return a < b ? a : b; }
template <typename U> U max(U a, U b) { return a > b ? a : b; }
template <typename U> U pow(U a, U b) { return U(std::pow(float(a), float(b))); }
template <typename U> U exp2(U x) { return U(std::exp2(float(x))); }
inline float fma(float a, float b, float c) { return std::fma(a, b, c); }
inline float copysign(float a, float b) { return std::copysign(a, b); }
template <typename U> bool isnan(U x) { return std::isnan(float(x)); }
namespace precise {
template <typename U> U exp(U x) { return U(std::exp(float(x))); }
template <typename U> U tanh(U x) { return U(std::tanh(float(x))); }
template <typename U> U cos(U x) { return U(std::cos(float(x))); }
template <typename U> U sin(U x) { return U(std::sin(float(x))); }
}  // namespace precise
namespace fast {
template <typename U> U exp(U x) { return U(std::exp(float(x))); }
}  // namespace fast
template <typename U> struct numeric_limits {
  static U infinity() { return U(__builtin_inff()); }
  static U lowest() { return U(-3.4e38f); }
  static U max() { return U(3.4e38f); }
};
}  // namespace metal
using namespace metal;

template <typename U> U simd_sum(U x) { return x; }
template <typename U> U simd_max(U x) { return x; }
template <typename U> U simd_min(U x) { return x; }
template <typename U> U simd_shuffle_xor(U x, ushort) { return x; }
template <typename U> U simd_shuffle(U x, ushort) { return x; }
template <typename U> U simd_shuffle_down(U x, ushort) { return x; }
template <typename U> U simd_broadcast(U x, ushort) { return x; }

template <typename To, typename From> To as_type(From f) {
  To t{};
  __builtin_memcpy(&t, &f, sizeof(To) < sizeof(From) ? sizeof(To) : sizeof(From));
  return t;
}
struct uint4 { uint x, y, z, w; };
struct uint2 { uint x, y; };
inline void simdgroup_barrier(int) {}

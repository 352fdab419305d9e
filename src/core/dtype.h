// Element types and their conversions. The reduced-precision formats round to nearest
// even exactly as CUDA's cuda_bf16.h / cuda_fp16.h / cuda_fp8.h host conversions do
// (tests/test_dtype.cpp checks every code and the rounding boundaries against them).
//   bf16: 1-8-7.  NaN -> 0x7FFF.            f16: 1-5-10, overflow -> inf, NaN -> 0x7FFF.
//   f8_e4m3 (OCP E4M3FN): 1-4-3, bias 7, no inf, max 448, NaN only at 0x7F/0xFF.
//   f8_e5m2: 1-5-2, bias 15, IEEE-like (inf and NaN), max 57344.
// FP8 conversions saturate to the largest finite value (CUDA's __NV_SATFINITE).
#pragma once

#include <array>
#include <bit>
#include <cmath>
#include <cstddef>
#include <cstdint>
#include <string>
#include <string_view>

namespace dsv3 {

enum class DType : uint8_t { F32, F16, BF16, F8_E4M3, F8_E5M2, I32, I64, U8, BOOL };

size_t dtype_size(DType t);
// The safetensors spelling: "F32", "BF16", "F8_E4M3", ...
std::string_view dtype_name(DType t);
// Parses the safetensors spelling; returns false for an unknown one.
bool dtype_from_name(std::string_view name, DType* out);
bool dtype_is_float(DType t);

using bf16_t = uint16_t;
using f16_t = uint16_t;
using f8_t = uint8_t;

// ---- bf16 ----
inline float bf16_to_f32(bf16_t h) {
  return std::bit_cast<float>(uint32_t(h) << 16);
}

inline bf16_t f32_to_bf16(float f) {
  uint32_t u = std::bit_cast<uint32_t>(f);
  if ((u & 0x7fffffffu) > 0x7f800000u) return 0x7fff;  // NaN
  u += 0x7fffu + ((u >> 16) & 1u);                     // round to nearest even
  return bf16_t(u >> 16);
}

namespace detail {
// Rounds |x| (finite, non-negative) to a float format with EB exponent bits and MB mantissa
// bits (IEEE-style bias, subnormals) and returns the unsigned code, which may exceed the
// largest finite code: callers decide between saturation and infinity.
template <int EB, int MB>
inline uint32_t round_to_code(float ax) {
  constexpr int bias = (1 << (EB - 1)) - 1;
  if (ax == 0.0f) return 0;
  int e;
  std::frexp(ax, &e);  // ax = f * 2^e, f in [0.5, 1): the binade exponent is e - 1
  e -= 1;
  if (e < 1 - bias) e = 1 - bias;         // subnormal range shares the smallest quantum
  if (e > 2 * bias + 1) return ~0u >> 1;  // far out of range
  // ax / quantum is exact (a power-of-two scaling, the result is small) and nearbyint
  // rounds half to even in the default rounding mode.
  const float q = std::nearbyint(std::ldexp(ax, MB - e));
  // Normal: ((e + bias) << MB) + (q - 2^MB); subnormal: q. One formula covers both and the
  // carry into the next binade when q rounds up to 2^(MB+1).
  return uint32_t((e + bias - 1) << MB) + uint32_t(q);
}

// An 8-bit float code of f by round_to_code: sign bit 0x80, NaN → 0x7F, anything past the
// largest finite code `max_code` (infinities included) saturated to it (__NV_SATFINITE).
template <int EB, int MB>
inline f8_t saturating_code(float f, uint32_t max_code) {
  const uint32_t u = std::bit_cast<uint32_t>(f);
  const uint32_t sign = (u >> 24) & 0x80u;
  if ((u & 0x7fffffffu) > 0x7f800000u) return 0x7f;  // NaN
  const float ax = std::fabs(f);
  uint32_t code = std::isinf(ax) ? max_code : round_to_code<EB, MB>(ax);
  if (code > max_code) code = max_code;
  return f8_t(sign | code);
}
}  // namespace detail

// ---- f16 ----
float f16_to_f32(f16_t h);
inline f16_t f32_to_f16(float f) {
  const uint32_t u = std::bit_cast<uint32_t>(f);
  const uint32_t sign = (u >> 16) & 0x8000u;
  if ((u & 0x7fffffffu) > 0x7f800000u) return 0x7fff;
  const float ax = std::fabs(f);
  if (std::isinf(ax)) return f16_t(sign | 0x7c00u);
  uint32_t code = detail::round_to_code<5, 10>(ax);
  if (code >= 0x7c00u) code = 0x7c00u;  // overflow rounds to infinity
  return f16_t(sign | code);
}

// ---- fp8 ----
extern const std::array<float, 256> kE4M3ToF32;
extern const std::array<float, 256> kE5M2ToF32;
inline float e4m3_to_f32(f8_t v) {
  return kE4M3ToF32[v];
}
inline float e5m2_to_f32(f8_t v) {
  return kE5M2ToF32[v];
}

inline constexpr float kE4M3Max = 448.0f;
inline constexpr float kE5M2Max = 57344.0f;

// Round to nearest even, saturating at ±448 (CUDA's __NV_SATFINITE), NaN → 0x7F; integer and
// float tricks rather than frexp / ldexp, so loops over it vectorise (tests/test_fp8.cpp checks
// it against the generic rounding on every E4M3 midpoint and its neighbours).
inline f8_t f32_to_e4m3(float f) {
  const uint32_t u = std::bit_cast<uint32_t>(f);
  const uint32_t sign = (u >> 24) & 0x80u;
  uint32_t a = u & 0x7fffffffu;
  if (a > 0x7f800000u) return 0x7f;                 // NaN
  if (a >= 0x43e00000u) return f8_t(sign | 0x7eu);  // |f| >= 448 (and inf): saturate
  if (a < 0x3c800000u) {                            // |f| < 2^-6: the subnormal quantum 2^-9
    // Adding 2^14 (ulp 2^-9) rounds |f| to a multiple of 2^-9, to nearest even; the low bits
    // of the sum count the quanta (8 quanta = 2^-6 = code 0x08, the smallest normal).
    const float r = std::bit_cast<float>(a) + 16384.0f;
    return f8_t(sign | (std::bit_cast<uint32_t>(r) - 0x46800000u));
  }
  a += 0x7ffffu + ((a >> 20) & 1u);               // round the mantissa to 3 bits, to nearest even
  return f8_t(sign | ((a >> 20) - (120u << 3)));  // rebias the exponent: 127 → 7
}

inline f8_t f32_to_e5m2(float f) {
  return detail::saturating_code<5, 2>(f, 0x7bu);  // saturates to 57344
}

// Converts n elements of a float-like dtype to f32 / from f32 (the on-the-fly paths).
void convert_to_f32(DType src_type, const void* src, float* dst, size_t n);
void convert_from_f32(DType dst_type, const float* src, void* dst, size_t n);

}  // namespace dsv3

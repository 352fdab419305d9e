// Shared by tests/test_dtype.cpp (CPU) and tests/cuda/test_dtype_gpu.cu (GPU): the four
// reduced-precision formats described from first principles, a float64 decoder and a
// round-to-nearest-even encoder written straight from those descriptions (deliberately a
// different algorithm from src/core/dtype.h and from CUDA: enumerate the representable
// values and pick the nearest), and the input sets that hit every rounding boundary.
#pragma once

#include <algorithm>
#include <bit>
#include <cmath>
#include <cstdint>
#include <limits>
#include <random>
#include <stdexcept>
#include <string>
#include <vector>

namespace dsv3::dtype_ref {

struct Format {
  const char* name;
  int exp_bits;
  int man_bits;
  // true: IEEE-like, the all-ones exponent holds inf (mantissa 0) and NaN (otherwise).
  // false: OCP E4M3FN, no inf, NaN only where exponent and mantissa are all ones.
  bool ieee_specials;
  // true: CUDA's __NV_SATFINITE, out-of-range values and inf become the largest finite value.
  // false: IEEE overflow, values >= max + half an ulp become inf.
  bool saturate;
  // The code CUDA's conversions produce for any NaN input (sign and payload dropped).
  uint32_t nan_code;
};

inline constexpr Format kBF16{"bf16", 8, 7, true, false, 0x7fff};
inline constexpr Format kF16{"f16", 5, 10, true, false, 0x7fff};
inline constexpr Format kE4M3{"e4m3", 4, 3, false, true, 0x7f};
inline constexpr Format kE5M2{"e5m2", 5, 2, true, true, 0x7f};

inline uint32_t sign_bit(const Format& f) {
  return 1u << (f.exp_bits + f.man_bits);
}
inline uint32_t num_codes(const Format& f) {
  return sign_bit(f) << 1;
}
inline int bias(const Format& f) {
  return (1 << (f.exp_bits - 1)) - 1;
}
inline uint32_t exp_all_ones(const Format& f) {
  return (1u << f.exp_bits) - 1;
}
inline uint32_t man_all_ones(const Format& f) {
  return (1u << f.man_bits) - 1;
}

// The largest finite positive code; codes 0..max_code are exactly the finite non-negative
// values in increasing order.
inline uint32_t max_code(const Format& f) {
  return f.ieee_specials ? (exp_all_ones(f) << f.man_bits) - 1 : sign_bit(f) - 2;
}

// value = (-1)^s * 2^(1-bias) * 0.m  (exponent field 0, subnormal)
//       = (-1)^s * 2^(e-bias) * 1.m  (otherwise), plus the inf/NaN rules above.
inline double decode(const Format& f, uint32_t code) {
  const bool neg = (code & sign_bit(f)) != 0;
  const uint32_t e = (code >> f.man_bits) & exp_all_ones(f);
  const uint32_t m = code & man_all_ones(f);
  double mag;
  if (f.ieee_specials && e == exp_all_ones(f)) {
    mag =
        m == 0 ? std::numeric_limits<double>::infinity() : std::numeric_limits<double>::quiet_NaN();
  } else if (!f.ieee_specials && e == exp_all_ones(f) && m == man_all_ones(f)) {
    mag = std::numeric_limits<double>::quiet_NaN();
  } else if (e == 0) {
    mag = std::ldexp(double(m), 1 - bias(f) - f.man_bits);
  } else {
    mag = std::ldexp(double((1u << f.man_bits) + m), int(e) - bias(f) - f.man_bits);
  }
  return neg ? -mag : mag;
}

// Round-to-nearest-even by search over the sorted table of representable magnitudes.
class Encoder {
 public:
  explicit Encoder(const Format& f) : f_(f) {
    for (uint32_t c = 0; c <= max_code(f); ++c) values_.push_back(decode(f, c));
    // One step past the largest finite value, as if the exponent range went on: where IEEE
    // rounding would land there, the result overflows (inf, or max under saturation).
    const double top = values_.back();
    values_.push_back(top + (top - values_[values_.size() - 2]));
  }

  uint32_t encode(float x) const {
    if (std::isnan(x)) return f_.nan_code;
    const uint32_t sign = std::signbit(x) ? sign_bit(f_) : 0;
    const double a = std::fabs(double(x));
    const uint32_t overflow = f_.saturate ? max_code(f_) : exp_all_ones(f_) << f_.man_bits;
    if (a > values_.back()) return sign | overflow;
    const auto it = std::lower_bound(values_.begin(), values_.end(), a);
    uint32_t code = uint32_t(it - values_.begin());
    if (*it != a) {  // strictly between codes code-1 and code; differences are exact
      const double below = a - values_[code - 1], above = *it - a;
      if (below < above || (below == above && (code & 1) != 0)) --code;
    }
    return sign | (code > max_code(f_) ? overflow : code);
  }

 private:
  Format f_;
  std::vector<double> values_;
};

inline float next_up(float x) {
  return std::nextafter(x, std::numeric_limits<float>::infinity());
}
inline float next_down(float x) {
  return std::nextafter(x, -std::numeric_limits<float>::infinity());
}

// The NaN encodings a float can arrive with: quiet, signalling, negative, payloads.
inline std::vector<float> nan_inputs() {
  std::vector<float> v;
  for (uint32_t b : {0x7fc00000u, 0xffc00000u, 0x7f800001u, 0xff800001u, 0x7fffffffu, 0xffffffffu,
                     0x7fa00000u, 0x7f80ffffu})
    v.push_back(std::bit_cast<float>(b));
  return v;
}

// Every exactly representable value, every midpoint between neighbours (including the one
// above the largest finite value), the floats one ulp either side of each midpoint, a sweep
// of the subnormal range, consecutive floats around the overflow threshold, and specials.
// All with both signs.
inline std::vector<float> boundary_inputs(const Format& f) {
  std::vector<float> v;
  const auto add = [&v](float x) {
    v.push_back(x);
    v.push_back(-x);
  };
  for (uint32_t c = 0; c <= max_code(f); ++c) add(float(decode(f, c)));
  for (uint32_t c = 0; c <= max_code(f); ++c) {
    const double lo = decode(f, c);
    const double hi = c < max_code(f) ? decode(f, c + 1) : 2 * lo - decode(f, c - 1);
    const double mid = (lo + hi) / 2;
    const float midf = float(mid);
    // Holds for all four formats (at most 12 significant bits, exponents within float's).
    if (double(midf) != mid) throw std::logic_error(std::string(f.name) + ": midpoint not exact");
    add(midf);
    add(next_down(midf));
    add(next_up(midf));
  }
  // Subnormal range and the first normal binade: about 2^16 evenly strided floats.
  const uint32_t sub_end = std::bit_cast<uint32_t>(float(2 * decode(f, 1u << f.man_bits)));
  const uint32_t sub_step = std::max<uint32_t>(1, sub_end >> 16);
  for (uint32_t b = 0; b <= sub_end; b += sub_step) add(std::bit_cast<float>(b));
  // 1024 consecutive floats either side of the largest value and of the overflow threshold.
  const double top = decode(f, max_code(f));
  const double threshold = top + (top - decode(f, max_code(f) - 1)) / 2;
  for (double centre : {top, threshold}) {  // both are floats, below FLT_MAX even for bf16
    const uint32_t b = std::bit_cast<uint32_t>(float(centre));
    for (uint32_t d = b - 1024; d <= b + 1024; ++d) add(std::bit_cast<float>(d));
  }
  const float inf = std::numeric_limits<float>::infinity();
  for (float x : {0.0f, inf, std::numeric_limits<float>::max(), std::numeric_limits<float>::min(),
                  std::numeric_limits<float>::denorm_min(), 1.0f, 3.0f, 0.1f})
    add(x);
  for (float x : nan_inputs()) v.push_back(x);
  return v;
}

// n random floats: half uniform over all 2^32 bit patterns, half with a uniform exponent over
// the format's range (a few binades beyond either end) and uniform mantissa and sign.
inline std::vector<float> random_inputs(const Format& f, size_t n, uint32_t seed) {
  std::mt19937 rng(seed);
  std::vector<float> v;
  v.reserve(n);
  const int emin = 1 - bias(f) - f.man_bits - 2;
  const int emax = int(exp_all_ones(f)) - bias(f) + 1;
  std::uniform_int_distribution<int> exp_dist(emin, emax);
  for (size_t i = 0; i < n; ++i) {
    const uint32_t bits = rng();
    if (i % 2 == 0) {
      v.push_back(std::bit_cast<float>(bits));
    } else {
      const float m = 1.0f + float(bits & 0x7fffffu) * 0x1p-23f;  // exact: 24 bits
      const float x = std::ldexp(m, exp_dist(rng));
      v.push_back((bits >> 31) != 0 ? -x : x);
    }
  }
  return v;
}

// Float bit patterns start, start + stride, ... below 2^32 (NaNs and infinities included).
inline std::vector<float> strided_sweep(uint32_t stride, uint32_t start = 0) {
  std::vector<float> v;
  v.reserve(size_t((uint64_t(1) << 32) / stride + 1));
  for (uint64_t b = start; b < (uint64_t(1) << 32); b += stride)
    v.push_back(std::bit_cast<float>(uint32_t(b)));
  return v;
}

}  // namespace dsv3::dtype_ref

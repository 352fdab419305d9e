#include "core/dtype.h"

#include <array>
#include <cstring>

#include "core/error.h"

namespace dsv3 {

namespace {

struct DTypeInfo {
  DType type;
  std::string_view name;
  size_t size;
  bool is_float;
};

constexpr DTypeInfo kInfo[] = {
    {DType::F32, "F32", 4, true},         {DType::F16, "F16", 2, true},
    {DType::BF16, "BF16", 2, true},       {DType::F8_E4M3, "F8_E4M3", 1, true},
    {DType::F8_E5M2, "F8_E5M2", 1, true}, {DType::I32, "I32", 4, false},
    {DType::I64, "I64", 8, false},        {DType::U8, "U8", 1, false},
    {DType::BOOL, "BOOL", 1, false},
};

const DTypeInfo& info(DType t) {
  return kInfo[static_cast<size_t>(t)];
}

// Exact decoding of an FP8 code with EB exponent and MB mantissa bits.
template <int EB, int MB>
constexpr float decode_fp8(uint8_t v, bool has_inf) {
  constexpr int bias = (1 << (EB - 1)) - 1;
  const bool neg = v & 0x80;
  const int exp = (v >> MB) & ((1 << EB) - 1);
  const int man = v & ((1 << MB) - 1);
  float r;
  if (has_inf && exp == (1 << EB) - 1) {
    r = man == 0 ? __builtin_inff() : __builtin_nanf("");
  } else if (!has_inf && exp == (1 << EB) - 1 && man == (1 << MB) - 1) {
    r = __builtin_nanf("");
  } else if (exp == 0) {
    r = float(man) / float(1 << MB);
    for (int i = 0; i < bias - 1; ++i) r *= 0.5f;
  } else {
    r = 1.0f + float(man) / float(1 << MB);
    for (int i = 0; i < exp - bias; ++i) r *= 2.0f;
    for (int i = 0; i < bias - exp; ++i) r *= 0.5f;
  }
  return neg ? -r : r;
}

template <int EB, int MB, bool kHasInf>
constexpr std::array<float, 256> make_table() {
  std::array<float, 256> t{};
  for (int i = 0; i < 256; ++i) t[i] = decode_fp8<EB, MB>(uint8_t(i), kHasInf);
  return t;
}

}  // namespace

const std::array<float, 256> kE4M3ToF32 = make_table<4, 3, false>();
const std::array<float, 256> kE5M2ToF32 = make_table<5, 2, true>();

size_t dtype_size(DType t) {
  return info(t).size;
}
std::string_view dtype_name(DType t) {
  return info(t).name;
}
bool dtype_is_float(DType t) {
  return info(t).is_float;
}

bool dtype_from_name(std::string_view name, DType* out) {
  for (const auto& i : kInfo) {
    if (i.name == name) {
      *out = i.type;
      return true;
    }
  }
  return false;
}

float f16_to_f32(f16_t h) {
  const uint32_t sign = uint32_t(h & 0x8000u) << 16;
  const uint32_t exp = (h >> 10) & 0x1fu;
  const uint32_t man = h & 0x3ffu;
  if (exp == 0x1f) return std::bit_cast<float>(sign | 0x7f800000u | (man << 13));
  if (exp == 0) {
    const float r = float(man) * 0x1p-24f;  // subnormal: exact
    return sign ? -r : r;
  }
  return std::bit_cast<float>(sign | ((exp + 112u) << 23) | (man << 13));
}

void convert_to_f32(DType t, const void* src, float* dst, size_t n) {
  switch (t) {
    case DType::F32:
      std::memcpy(dst, src, n * sizeof(float));
      return;
    case DType::BF16: {
      const auto* s = static_cast<const uint16_t*>(src);
      for (size_t i = 0; i < n; ++i) dst[i] = bf16_to_f32(s[i]);
      return;
    }
    case DType::F16: {
      const auto* s = static_cast<const uint16_t*>(src);
      for (size_t i = 0; i < n; ++i) dst[i] = f16_to_f32(s[i]);
      return;
    }
    case DType::F8_E4M3: {
      const auto* s = static_cast<const uint8_t*>(src);
      for (size_t i = 0; i < n; ++i) dst[i] = kE4M3ToF32[s[i]];
      return;
    }
    case DType::F8_E5M2: {
      const auto* s = static_cast<const uint8_t*>(src);
      for (size_t i = 0; i < n; ++i) dst[i] = kE5M2ToF32[s[i]];
      return;
    }
    default:
      fail("cannot convert {} to F32", dtype_name(t));
  }
}

void convert_from_f32(DType t, const float* src, void* dst, size_t n) {
  switch (t) {
    case DType::F32:
      std::memcpy(dst, src, n * sizeof(float));
      return;
    case DType::BF16: {
      auto* d = static_cast<uint16_t*>(dst);
      for (size_t i = 0; i < n; ++i) d[i] = f32_to_bf16(src[i]);
      return;
    }
    case DType::F16: {
      auto* d = static_cast<uint16_t*>(dst);
      for (size_t i = 0; i < n; ++i) d[i] = f32_to_f16(src[i]);
      return;
    }
    case DType::F8_E4M3: {
      auto* d = static_cast<uint8_t*>(dst);
      for (size_t i = 0; i < n; ++i) d[i] = f32_to_e4m3(src[i]);
      return;
    }
    case DType::F8_E5M2: {
      auto* d = static_cast<uint8_t*>(dst);
      for (size_t i = 0; i < n; ++i) d[i] = f32_to_e5m2(src[i]);
      return;
    }
    default:
      fail("cannot convert F32 to {}", dtype_name(t));
  }
}

}  // namespace dsv3

// Bit-exactness of the reduced-precision conversions in core/dtype.h.
//
// Two independent references: (1) float64 models written here from the format definitions
// (tests/dtype_cases.h: decode by formula, encode by nearest-value search with ties to the
// even code), and (2) when the CUDA headers are available, CUDA's own host implementations
// of __float2bfloat16, __float2half, __nv_cvt_float_to_fp8(SATFINITE) and the matching
// decoders, which is the agreement dsv3 promises. Results must be identical codes; decoded
// values identical bits, except that a NaN only has to decode to some NaN.
#include <gtest/gtest.h>

#include <algorithm>
#include <bit>
#include <cmath>
#include <cstdint>
#include <cstring>
#include <limits>
#include <string>
#include <vector>

#include "core/dtype.h"
#include "core/error.h"
#include "dtype_cases.h"

#ifdef DSV3_HAVE_CUDA_HEADERS
#include <cuda_bf16.h>
#include <cuda_fp16.h>
#include <cuda_fp8.h>
#endif

namespace dsv3 {
namespace {

using dtype_ref::Format;

// One of our conversions, seen through codes held in uint32_t.
struct Codec {
  const Format* fmt;
  DType dtype;
  uint32_t (*encode)(float);
  float (*decode)(uint32_t);
};

const Codec kOurs[] = {
    {&dtype_ref::kBF16, DType::BF16, [](float x) -> uint32_t { return f32_to_bf16(x); },
     [](uint32_t c) { return bf16_to_f32(bf16_t(c)); }},
    {&dtype_ref::kF16, DType::F16, [](float x) -> uint32_t { return f32_to_f16(x); },
     [](uint32_t c) { return f16_to_f32(f16_t(c)); }},
    {&dtype_ref::kE4M3, DType::F8_E4M3, [](float x) -> uint32_t { return f32_to_e4m3(x); },
     [](uint32_t c) { return e4m3_to_f32(f8_t(c)); }},
    {&dtype_ref::kE5M2, DType::F8_E5M2, [](float x) -> uint32_t { return f32_to_e5m2(x); },
     [](uint32_t c) { return e5m2_to_f32(f8_t(c)); }},
};

std::string describe(float x) {
  return fmt::format("{:a} (bits 0x{:08x})", x, std::bit_cast<uint32_t>(x));
}

// Encodes every input with both functions; reports the first few differences and a count.
template <class Got, class Want>
void expect_same_codes(const std::string& what, const std::vector<float>& xs, Got got, Want want) {
  size_t bad = 0;
  for (float x : xs) {
    const uint32_t g = got(x), w = want(x);
    if (g != w && ++bad <= 8)
      ADD_FAILURE() << what << ": " << describe(x) << " -> 0x" << std::hex << g << ", expected 0x"
                    << w;
  }
  EXPECT_EQ(bad, 0u) << what << ": " << bad << " of " << xs.size() << " inputs differ";
}

bool same_value(double got, double want) {
  if (std::isnan(want)) return std::isnan(got);
  return std::bit_cast<uint64_t>(got) == std::bit_cast<uint64_t>(want);  // keeps -0 apart
}

// Decodes every code of the format with both functions.
template <class Got, class Want>
void expect_same_values(const std::string& what, const Format& f, Got got, Want want) {
  size_t bad = 0;
  for (uint32_t c = 0; c < dtype_ref::num_codes(f); ++c) {
    const double g = got(c), w = want(c);
    if (!same_value(g, w) && ++bad <= 8)
      ADD_FAILURE() << what << ": code 0x" << std::hex << c << " -> " << std::hexfloat << g
                    << ", expected " << w;
  }
  EXPECT_EQ(bad, 0u) << what << ": " << bad << " codes differ";
}

// ---- the float64 reference itself, against published constants of each format ----

TEST(DTypeReference, DecodesPublishedValues) {
  using namespace dtype_ref;
  // bf16: max (2 - 2^-7) * 2^127, smallest subnormal 2^-133.
  EXPECT_EQ(decode(kBF16, 0x3f80), 1.0);
  EXPECT_EQ(decode(kBF16, 0x7f7f), 3.3895313892515355e38);
  EXPECT_EQ(decode(kBF16, 0x0001), 9.183549615799121e-41);
  EXPECT_EQ(decode(kBF16, 0xc040), -3.0);
  EXPECT_EQ(decode(kBF16, 0xff80), -std::numeric_limits<double>::infinity());
  EXPECT_TRUE(std::isnan(decode(kBF16, 0x7fc0)));
  // IEEE binary16: max 65504, smallest normal 2^-14, smallest subnormal 2^-24.
  EXPECT_EQ(decode(kF16, 0x3c00), 1.0);
  EXPECT_EQ(decode(kF16, 0x7bff), 65504.0);
  EXPECT_EQ(decode(kF16, 0x0400), 6.103515625e-05);
  EXPECT_EQ(decode(kF16, 0x0001), 5.960464477539063e-08);
  EXPECT_EQ(decode(kF16, 0x3555), 0.333251953125);
  EXPECT_EQ(decode(kF16, 0x7c00), std::numeric_limits<double>::infinity());
  EXPECT_TRUE(std::isnan(decode(kF16, 0xfe00)));
  // OCP E4M3FN: max 448, 0x78 = 256 is finite, smallest subnormal 2^-9, NaN at S.1111.111.
  EXPECT_EQ(decode(kE4M3, 0x38), 1.0);
  EXPECT_EQ(decode(kE4M3, 0x7e), 448.0);
  EXPECT_EQ(decode(kE4M3, 0x78), 256.0);
  EXPECT_EQ(decode(kE4M3, 0x08), 0.015625);
  EXPECT_EQ(decode(kE4M3, 0x01), 0.001953125);
  EXPECT_EQ(decode(kE4M3, 0xfe), -448.0);
  EXPECT_TRUE(std::isnan(decode(kE4M3, 0x7f)));
  EXPECT_TRUE(std::isnan(decode(kE4M3, 0xff)));
  // OCP E5M2: max 57344, smallest subnormal 2^-16, inf at S.11111.00.
  EXPECT_EQ(decode(kE5M2, 0x3c), 1.0);
  EXPECT_EQ(decode(kE5M2, 0x7b), 57344.0);
  EXPECT_EQ(decode(kE5M2, 0x04), 6.103515625e-05);
  EXPECT_EQ(decode(kE5M2, 0x01), 1.52587890625e-05);
  EXPECT_EQ(decode(kE5M2, 0xfc), -std::numeric_limits<double>::infinity());
  for (uint32_t c : {0x7du, 0x7eu, 0x7fu, 0xffu}) EXPECT_TRUE(std::isnan(decode(kE5M2, c)));
  // Every other code of every format is finite.
  for (const Format* f : {&kBF16, &kF16, &kE4M3, &kE5M2}) {
    int nonfinite = 0;
    for (uint32_t c = 0; c < num_codes(*f); ++c) nonfinite += !std::isfinite(decode(*f, c));
    const int expected = f->ieee_specials ? 2 * (1 << f->man_bits) : 2;
    EXPECT_EQ(nonfinite, expected) << f->name;
  }
}

TEST(DTypeReference, EncodesHandWorkedCases) {
  using namespace dtype_ref;
  const Encoder bf16(kBF16), f16(kF16), e4m3(kE4M3), e5m2(kE5M2);
  EXPECT_EQ(bf16.encode(1.0f + 0x1p-8f), 0x3f80u);      // tie, rounds to even 1.0
  EXPECT_EQ(bf16.encode(1.0f + 3 * 0x1p-8f), 0x3f82u);  // tie, rounds up to even
  EXPECT_EQ(bf16.encode(-1.0f - 0x1p-8f - 0x1p-23f), 0xbf81u);
  EXPECT_EQ(f16.encode(65519.99f), 0x7bffu);  // below max + half ulp
  EXPECT_EQ(f16.encode(65520.0f), 0x7c00u);   // tie with the step past max: inf
  EXPECT_EQ(f16.encode(0x1p-25f), 0x0000u);   // half the smallest subnormal: to even 0
  EXPECT_EQ(f16.encode(-0x1.000002p-25f), 0x8001u);
  EXPECT_EQ(e4m3.encode(464.0f), 0x7eu);  // max + half ulp, 0x7f would be NaN
  EXPECT_EQ(e4m3.encode(-1e30f), 0xfeu);
  EXPECT_EQ(e4m3.encode(0x1p-10f), 0x00u);
  EXPECT_EQ(e4m3.encode(3 * 0x1p-10f), 0x02u);
  EXPECT_EQ(e5m2.encode(61440.0f), 0x7bu);
  EXPECT_EQ(e5m2.encode(std::numeric_limits<float>::infinity()), 0x7bu);
  EXPECT_EQ(e5m2.encode(1.125f), 0x3cu);
  EXPECT_EQ(e5m2.encode(1.375f), 0x3eu);
}

// ---- decoding ----

TEST(DTypeDecode, EveryCodeMatchesFormula) {
  for (const Codec& c : kOurs)
    expect_same_values(c.fmt->name, *c.fmt, c.decode,
                       [&c](uint32_t code) { return dtype_ref::decode(*c.fmt, code); });
}

// ---- encoding ----

TEST(DTypeEncode, EveryFiniteCodeRoundTrips) {
  for (const Codec& c : kOurs) {
    size_t bad = 0;
    for (uint32_t code = 0; code < dtype_ref::num_codes(*c.fmt); ++code) {
      const float x = c.decode(code);
      if (std::isnan(x) || (std::isinf(x) && c.fmt->saturate)) continue;  // E5M2's inf saturates
      const uint32_t back = c.encode(x);
      if (back != code && ++bad <= 8)
        ADD_FAILURE() << c.fmt->name << ": code 0x" << std::hex << code << " -> " << describe(x)
                      << " -> 0x" << back;
    }
    EXPECT_EQ(bad, 0u) << c.fmt->name;
  }
}

TEST(DTypeEncode, SpecialValues) {
  const float inf = std::numeric_limits<float>::infinity();
  // Expected codes as CUDA's headers define them: NaN becomes one code without sign; f16/bf16 keep
  // inf, SATFINITE turns inf into the largest finite value.
  const uint32_t pos_inf[] = {0x7f80, 0x7c00, 0x7e, 0x7b};
  const uint32_t neg_inf[] = {0xff80, 0xfc00, 0xfe, 0xfb};
  const uint32_t nan[] = {0x7fff, 0x7fff, 0x7f, 0x7f};
  const uint32_t neg_zero[] = {0x8000, 0x8000, 0x80, 0x80};
  for (size_t i = 0; i < std::size(kOurs); ++i) {
    const Codec& c = kOurs[i];
    SCOPED_TRACE(c.fmt->name);
    EXPECT_EQ(c.encode(0.0f), 0u);
    EXPECT_EQ(c.encode(-0.0f), neg_zero[i]);
    EXPECT_EQ(c.encode(inf), pos_inf[i]);
    EXPECT_EQ(c.encode(-inf), neg_inf[i]);
    EXPECT_EQ(c.encode(std::numeric_limits<float>::max()), pos_inf[i]);
    EXPECT_EQ(c.encode(-std::numeric_limits<float>::max()), neg_inf[i]);
    EXPECT_EQ(c.encode(std::numeric_limits<float>::denorm_min()), 0u);
    EXPECT_EQ(c.encode(-std::numeric_limits<float>::denorm_min()), neg_zero[i]);
    for (float x : dtype_ref::nan_inputs()) EXPECT_EQ(c.encode(x), nan[i]) << describe(x);
  }
}

TEST(DTypeEncode, BoundariesMatchReference) {
  for (const Codec& c : kOurs) {
    const dtype_ref::Encoder ref(*c.fmt);
    expect_same_codes(c.fmt->name, dtype_ref::boundary_inputs(*c.fmt), c.encode,
                      [&ref](float x) { return ref.encode(x); });
  }
}

TEST(DTypeEncode, RandomFloatsMatchReference) {
  for (const Codec& c : kOurs) {
    const dtype_ref::Encoder ref(*c.fmt);
    expect_same_codes(c.fmt->name, dtype_ref::random_inputs(*c.fmt, 1 << 20, 20240917), c.encode,
                      [&ref](float x) { return ref.encode(x); });
  }
}

TEST(DTypeEncode, StridedSweepMatchesReference) {
  // An odd stride walks through every residue of the low mantissa bits.
  const std::vector<float> xs = dtype_ref::strided_sweep(8191, 1234);
  for (const Codec& c : kOurs) {
    const dtype_ref::Encoder ref(*c.fmt);
    expect_same_codes(c.fmt->name, xs, c.encode, [&ref](float x) { return ref.encode(x); });
  }
}

// ---- the buffer conversions ----

TEST(DTypeConvert, ToF32DecodesEveryCode) {
  for (const Codec& c : kOurs) {
    SCOPED_TRACE(c.fmt->name);
    const uint32_t n = dtype_ref::num_codes(*c.fmt);
    std::vector<uint8_t> src(n * dtype_size(c.dtype));
    for (uint32_t code = 0; code < n; ++code) {
      if (dtype_size(c.dtype) == 2) {
        const uint16_t v = uint16_t(code);
        std::memcpy(&src[2 * code], &v, 2);
      } else {
        src[code] = uint8_t(code);
      }
    }
    std::vector<float> dst(n);
    convert_to_f32(c.dtype, src.data(), dst.data(), n);
    expect_same_values(
        "convert_to_f32", *c.fmt, [&dst](uint32_t code) { return dst[code]; },
        [&c](uint32_t code) { return dtype_ref::decode(*c.fmt, code); });
  }
}

TEST(DTypeConvert, FromF32EncodesLikeReference) {
  for (const Codec& c : kOurs) {
    SCOPED_TRACE(c.fmt->name);
    const std::vector<float> xs = dtype_ref::boundary_inputs(*c.fmt);
    std::vector<uint8_t> dst(xs.size() * dtype_size(c.dtype));
    convert_from_f32(c.dtype, xs.data(), dst.data(), xs.size());
    const dtype_ref::Encoder ref(*c.fmt);
    size_t bad = 0;
    for (size_t i = 0; i < xs.size(); ++i) {
      uint32_t got = dst[i];
      if (dtype_size(c.dtype) == 2) {
        uint16_t v;
        std::memcpy(&v, &dst[2 * i], 2);
        got = v;
      }
      if (got != ref.encode(xs[i]) && ++bad <= 8) ADD_FAILURE() << describe(xs[i]);
    }
    EXPECT_EQ(bad, 0u);
  }
}

TEST(DTypeConvert, F32IsBitwiseCopy) {
  std::vector<float> xs = dtype_ref::random_inputs(dtype_ref::kBF16, 4096, 7);
  for (float x : dtype_ref::nan_inputs()) xs.push_back(x);
  std::vector<float> a(xs.size()), b(xs.size());
  convert_to_f32(DType::F32, xs.data(), a.data(), xs.size());
  convert_from_f32(DType::F32, xs.data(), b.data(), xs.size());
  EXPECT_EQ(std::memcmp(a.data(), xs.data(), xs.size() * sizeof(float)), 0);
  EXPECT_EQ(std::memcmp(b.data(), xs.data(), xs.size() * sizeof(float)), 0);
}

TEST(DTypeConvert, NonFloatDTypesAreRejected) {
  float f[2] = {1.0f, 2.0f};
  uint8_t raw[16] = {};
  for (DType t : {DType::I32, DType::I64, DType::U8, DType::BOOL}) {
    const std::string name(dtype_name(t));
    EXPECT_FALSE(dtype_is_float(t)) << name;
    try {
      convert_to_f32(t, raw, f, 2);
      ADD_FAILURE() << "convert_to_f32 accepted " << name;
    } catch (const Error& e) {
      EXPECT_NE(std::string(e.what()).find(name), std::string::npos) << e.what();
    }
    try {
      convert_from_f32(t, f, raw, 2);
      ADD_FAILURE() << "convert_from_f32 accepted " << name;
    } catch (const Error& e) {
      EXPECT_NE(std::string(e.what()).find(name), std::string::npos) << e.what();
    }
  }
}

TEST(DTypeInfo, SafetensorsNamesAndSizes) {
  // Element sizes as the safetensors format defines them.
  const std::pair<const char*, size_t> expected[] = {{"F32", 4},     {"F16", 2},     {"BF16", 2},
                                                     {"F8_E4M3", 1}, {"F8_E5M2", 1}, {"I32", 4},
                                                     {"I64", 8},     {"U8", 1},      {"BOOL", 1}};
  for (const auto& [name, size] : expected) {
    DType t;
    ASSERT_TRUE(dtype_from_name(name, &t)) << name;
    EXPECT_EQ(dtype_name(t), name);
    EXPECT_EQ(dtype_size(t), size) << name;
  }
  DType t;
  EXPECT_FALSE(dtype_from_name("F64x", &t));
  EXPECT_FALSE(dtype_from_name("bf16", &t));
}

// ---- CUDA's host implementations as the reference ----
#ifdef DSV3_HAVE_CUDA_HEADERS

const Codec kCuda[] = {
    {&dtype_ref::kBF16, DType::BF16,
     [](float x) -> uint32_t { return static_cast<__nv_bfloat16_raw>(__float2bfloat16(x)).x; },
     [](uint32_t c) {
       __nv_bfloat16_raw r;
       r.x = uint16_t(c);
       return __bfloat162float(__nv_bfloat16(r));
     }},
    {&dtype_ref::kF16, DType::F16,
     [](float x) -> uint32_t { return static_cast<__half_raw>(__float2half(x)).x; },
     [](uint32_t c) {
       __half_raw r;
       r.x = uint16_t(c);
       return __half2float(__half(r));
     }},
    {&dtype_ref::kE4M3, DType::F8_E4M3,
     [](float x) -> uint32_t { return __nv_cvt_float_to_fp8(x, __NV_SATFINITE, __NV_E4M3); },
     [](uint32_t c) {
       return __half2float(__half(__nv_cvt_fp8_to_halfraw(__nv_fp8_storage_t(c), __NV_E4M3)));
     }},
    {&dtype_ref::kE5M2, DType::F8_E5M2,
     [](float x) -> uint32_t { return __nv_cvt_float_to_fp8(x, __NV_SATFINITE, __NV_E5M2); },
     [](uint32_t c) {
       return __half2float(__half(__nv_cvt_fp8_to_halfraw(__nv_fp8_storage_t(c), __NV_E5M2)));
     }},
};

TEST(DTypeCuda, DecodeEveryCode) {
  for (size_t i = 0; i < std::size(kOurs); ++i)
    expect_same_values(kOurs[i].fmt->name, *kOurs[i].fmt, kOurs[i].decode, kCuda[i].decode);
}

TEST(DTypeCuda, EncodeBoundaries) {
  for (size_t i = 0; i < std::size(kOurs); ++i) {
    std::vector<float> xs;  // every format's boundaries, so each encoder sees them all
    for (const Codec& c : kOurs) {
      const std::vector<float> b = dtype_ref::boundary_inputs(*c.fmt);
      xs.insert(xs.end(), b.begin(), b.end());
    }
    expect_same_codes(kOurs[i].fmt->name, xs, kOurs[i].encode, kCuda[i].encode);
  }
}

TEST(DTypeCuda, EncodeRandomFloats) {
  for (size_t i = 0; i < std::size(kOurs); ++i)
    expect_same_codes(kOurs[i].fmt->name,
                      dtype_ref::random_inputs(*kOurs[i].fmt, 1 << 21, 20240918), kOurs[i].encode,
                      kCuda[i].encode);
}

// The CUDA reference also confirms the float64 model, so both references stand together.
TEST(DTypeCuda, ReferenceModelAgrees) {
  for (size_t i = 0; i < std::size(kCuda); ++i) {
    const dtype_ref::Encoder ref(*kCuda[i].fmt);
    expect_same_codes(
        kCuda[i].fmt->name, dtype_ref::boundary_inputs(*kCuda[i].fmt),
        [&ref](float x) { return ref.encode(x); }, kCuda[i].encode);
    expect_same_values(kCuda[i].fmt->name, *kCuda[i].fmt, kCuda[i].decode,
                       [&](uint32_t c) { return dtype_ref::decode(*kCuda[i].fmt, c); });
  }
}

// Every 2^32 float bit pattern at a fixed stride, without materialising the inputs.
TEST(DTypeCuda, EncodeStridedSweepOfAllFloats) {
  constexpr uint32_t kStride = 97;  // odd: the low mantissa bits take every value
  for (size_t i = 0; i < std::size(kOurs); ++i) {
    size_t bad = 0, n = 0;
    for (uint64_t b = 0; b < (uint64_t(1) << 32); b += kStride, ++n) {
      const float x = std::bit_cast<float>(uint32_t(b));
      const uint32_t g = kOurs[i].encode(x), w = kCuda[i].encode(x);
      if (g != w && ++bad <= 8)
        ADD_FAILURE() << kOurs[i].fmt->name << ": " << describe(x) << " -> 0x" << std::hex << g
                      << ", CUDA 0x" << w;
    }
    EXPECT_EQ(bad, 0u) << kOurs[i].fmt->name << ": " << bad << " of " << n << " differ";
  }
}

#endif  // DSV3_HAVE_CUDA_HEADERS

}  // namespace
}  // namespace dsv3

// exp(d) for d <= 0 in float, one definition for the CPU sampler (infer/sampler.cpp, whose
// whole-vocabulary loops it lets vectorize) and the GPU one (kernels/cuda/sample.cu), so both
// weigh tokens by the same formula. libm's expf does not vectorize without -ffast-math, and
// float->int conversions block it under the default -ftrapping-math. Cody-Waite reduction
// d = n ln2 + r, n rounded with the 1.5 * 2^23 trick, and a degree-6 polynomial for e^r
// (Cephes' expf coefficients); relative error < 1e-7 on [-87, 0]. d < -87 (including -inf)
// gives exactly 0, so removed tokens never get weight.
#pragma once

#include <algorithm>
#include <bit>
#include <cstdint>

#ifdef __CUDACC__
#define DSV3_EXP_HD __host__ __device__
#else
#define DSV3_EXP_HD
#endif

namespace dsv3 {

DSV3_EXP_HD inline uint32_t float_bits(float f) {
#ifdef __CUDA_ARCH__
  return __float_as_uint(f);
#else
  return std::bit_cast<uint32_t>(f);
#endif
}

DSV3_EXP_HD inline float bits_float(uint32_t u) {
#ifdef __CUDA_ARCH__
  return __uint_as_float(u);
#else
  return std::bit_cast<float>(u);
#endif
}

DSV3_EXP_HD inline float exp_nonpos(float d) {
  constexpr float kRound = 12582912.0f;  // 1.5 * 2^23: adding it rounds to an integer
#ifdef __CUDA_ARCH__
  const float x = fmaxf(d, -87.0f);
#else
  const float x = std::max(d, -87.0f);
#endif
  const float t = x * 1.44269504088896341f + kRound;
  const float n = t - kRound;
  float r = x - n * 0.693359375f;
  r = r - n * -2.12194440e-4f;
  float y = 1.9875691500e-4f;
  y = y * r + 1.3981999507e-3f;
  y = y * r + 8.3334519073e-3f;
  y = y * r + 4.1665795894e-2f;
  y = y * r + 1.6666665459e-1f;
  y = y * r + 5.0000001201e-1f;
  y = y * r * r + r + 1.0f;
  const uint32_t k = float_bits(t) - float_bits(kRound);  // n
  const float scale = bits_float((k + 127u) << 23);       // 2^n
  return d >= -87.0f ? y * scale : 0.0f;
}

}  // namespace dsv3

#undef DSV3_EXP_HD

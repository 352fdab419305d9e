// Device-side decoding of stored weights into f32 (exact: E4M3 and BF16 are subsets of f32),
// shared by the kernels. Loads are 16 bytes wide: 4 F32, 8 BF16/F16 or 16 E4M3 values.
#pragma once

#include <cuda_bf16.h>
#include <cuda_fp16.h>
#include <cuda_fp8.h>

#include <cstdint>

#include "kernels/cuda/kernels.h"

namespace dsv3::cuda {

template <WType T>
struct WTraits;
template <>
struct WTraits<WType::F32> {
  static constexpr int kSize = 4, kChunk = 4;
};
template <>
struct WTraits<WType::BF16> {
  static constexpr int kSize = 2, kChunk = 8;
};
template <>
struct WTraits<WType::F16> {
  static constexpr int kSize = 2, kChunk = 8;
};
template <>
struct WTraits<WType::E4M3> {
  static constexpr int kSize = 1, kChunk = 16;
};

__device__ __forceinline__ float bf16_bits_to_f32(uint32_t b) {
  return __uint_as_float(b << 16);
}

__device__ __forceinline__ float e4m3_to_f32(uint8_t b) {
  const __half_raw h = __nv_cvt_fp8_to_halfraw(__nv_fp8_storage_t(b), __NV_E4M3);
  return __half2float(__half(h));
}

// Four E4M3 codes (a word, code i in byte i) as four BF16 values (lo: codes 0, 1), exactly, in
// integer instructions and one bf16x2 multiply: no conversion instructions, which issue at a
// quarter of the integer rate (and bound a decode of 16 codes through F32). Each byte is
// sign-extended to 16 bits (prmt) and shifted so its exponent and mantissa land on BF16's low
// exponent and high mantissa bits: sign | those is the code's value · 2^-120 (a subnormal code
// gives a subnormal BF16), so times 2^120 it is the value. Not for the NaN codes (0x7f, 0xff),
// which our encoders never write (they saturate). sm_90 (mul.bf16x2).
__device__ __forceinline__ void e4m3x4_to_bf16(uint32_t x, uint32_t& lo, uint32_t& hi) {
  uint32_t a, b;
  asm("prmt.b32 %0, %1, 0, 0x9180;" : "=r"(a) : "r"(x));  // bytes 0, 1 sign-extended
  asm("prmt.b32 %0, %1, 0, 0xB3A2;" : "=r"(b) : "r"(x));  // bytes 2, 3
  a = (a << 4) & 0x87F087F0u;
  b = (b << 4) & 0x87F087F0u;
  constexpr uint32_t k2p120 = 0x7B807B80u;  // 2^120, twice
  asm("mul.rn.bf16x2 %0, %1, %2;" : "=r"(lo) : "r"(a), "r"(k2p120));
  asm("mul.rn.bf16x2 %0, %1, %2;" : "=r"(hi) : "r"(b), "r"(k2p120));
}
// Two BF16 products (bf16x2 multiply, rounded to nearest). sm_90.
__device__ __forceinline__ uint32_t bf16x2_mul(uint32_t a, uint32_t b) {
  uint32_t r;
  asm("mul.rn.bf16x2 %0, %1, %2;" : "=r"(r) : "r"(a), "r"(b));
  return r;
}

// One stored element at index i of a row (no block scale).
template <WType T>
__device__ __forceinline__ float load_one(const void* row, int64_t i) {
  if constexpr (T == WType::F32) {
    return __ldg(static_cast<const float*>(row) + i);
  } else if constexpr (T == WType::BF16) {
    return bf16_bits_to_f32(__ldg(static_cast<const unsigned short*>(row) + i));
  } else if constexpr (T == WType::F16) {
    return __half2float(__ushort_as_half(__ldg(static_cast<const unsigned short*>(row) + i)));
  } else {
    return e4m3_to_f32(__ldg(static_cast<const unsigned char*>(row) + i));
  }
}

// Values 4q .. 4q + 3 of the WTraits<T>::kChunk that 16 loaded bytes hold (q < kChunk / 4).
template <WType T>
__device__ __forceinline__ void decode_quad(const uint4 v, int q, float* out) {
  const uint32_t u[4] = {v.x, v.y, v.z, v.w};
  if constexpr (T == WType::F32) {
#pragma unroll
    for (int i = 0; i < 4; ++i) out[i] = __uint_as_float(u[i]);
  } else if constexpr (T == WType::BF16) {
#pragma unroll
    for (int i = 0; i < 2; ++i) {
      out[2 * i] = __uint_as_float(u[2 * q + i] << 16);
      out[2 * i + 1] = __uint_as_float(u[2 * q + i] & 0xffff0000u);
    }
  } else if constexpr (T == WType::F16) {
#pragma unroll
    for (int i = 0; i < 2; ++i) {
      const float2 f = __half22float2(*reinterpret_cast<const __half2*>(&u[2 * q + i]));
      out[2 * i] = f.x;
      out[2 * i + 1] = f.y;
    }
  } else {
#pragma unroll
    for (int j = 0; j < 2; ++j) {
      const __half2_raw r =
          __nv_cvt_fp8x2_to_halfraw2(__nv_fp8x2_storage_t((u[q] >> (16 * j)) & 0xffffu), __NV_E4M3);
      const float2 f = __half22float2(__half2(r));
      out[2 * j] = f.x;
      out[2 * j + 1] = f.y;
    }
  }
}

// 16 loaded bytes decoded into WTraits<T>::kChunk floats. Split from the load so a kernel can
// put several loads in flight before it decodes the first.
template <WType T>
__device__ __forceinline__ void decode_chunk(const uint4 v, float* out) {
#pragma unroll
  for (int q = 0; q < WTraits<T>::kChunk / 4; ++q) decode_quad<T>(v, q, out + 4 * q);
}

// 16 bytes at p (16-byte aligned) decoded into WTraits<T>::kChunk floats.
template <WType T>
__device__ __forceinline__ void load_chunk(const void* p, float* out) {
  decode_chunk<T>(__ldg(static_cast<const uint4*>(p)), out);
}

// The last of `groups` groups whose start (starts[g], ascending) is <= x: the group holding
// row or tile x of a grouped layout (the experts' padded rows, their tiles).
__device__ __forceinline__ int group_of(const int32_t* starts, int groups, int64_t x) {
  int lo = 0, hi = groups - 1;
  while (lo < hi) {
    const int mid = (lo + hi + 1) / 2;
    if (starts[mid] <= x)
      lo = mid;
    else
      hi = mid - 1;
  }
  return lo;
}

// cos/sin of the f32 angle pos·inv_freq, in double, as the CPU forms them.
__device__ __forceinline__ void rope_pair(float* p, float pos, float inv_freq, float factor) {
  const float angle = __fmul_rn(pos, inv_freq);
  const float c = __fmul_rn(float(cos(double(angle))), factor);
  const float s = __fmul_rn(float(sin(double(angle))), factor);
  const float a = p[0], b = p[1];
  p[0] = __fsub_rn(__fmul_rn(a, c), __fmul_rn(b, s));
  p[1] = __fadd_rn(__fmul_rn(a, s), __fmul_rn(b, c));
}

// Order-preserving key of a float: a > b iff key(a) > key(b) (for non-NaN a, b; -0 keys below
// +0, so callers that must treat them as equal add +0.0f first).
__device__ __forceinline__ uint32_t order_key(float f) {
  const uint32_t b = __float_as_uint(f);
  return (b & 0x80000000u) ? ~b : (b | 0x80000000u);
}

__device__ __forceinline__ float warp_sum(float v) {
#pragma unroll
  for (int o = 16; o > 0; o >>= 1) v += __shfl_xor_sync(0xffffffffu, v, o);
  return v;
}

__device__ __forceinline__ float warp_max(float v) {
#pragma unroll
  for (int o = 16; o > 0; o >>= 1) v = fmaxf(v, __shfl_xor_sync(0xffffffffu, v, o));
  return v;
}

__host__ __device__ inline int64_t ceil_div(int64_t a, int64_t b) {
  return (a + b - 1) / b;
}

}  // namespace dsv3::cuda

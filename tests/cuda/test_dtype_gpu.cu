// Our host conversions (core/dtype.h) against the GPU's own: the device intrinsics
// __float2bfloat16_rn, __float2half_rn and __nv_cvt_float_to_fp8(SATFINITE), which on
// sm_89+ are single cvt instructions, plus the device decoders. Kernels built for sm_90
// run the hardware instructions, so this checks the promise that a tensor converted on
// the host is bit-identical to one converted by a kernel.
#include <cuda_bf16.h>
#include <cuda_fp16.h>
#include <cuda_fp8.h>
#include <cuda_runtime.h>
#include <gtest/gtest.h>

#include <algorithm>
#include <bit>
#include <cmath>
#include <cstdint>
#include <cstdio>
#include <string>
#include <vector>

#include "../dtype_cases.h"
#include "core/dtype.h"
#include "kernels/cuda/cuda_check.h"
#include "kernels/cuda/decode.cuh"

namespace dsv3 {
namespace {

__global__ void encode_kernel(const float* in, size_t n, uint16_t* bf16, uint16_t* f16,
                              uint8_t* e4m3, uint8_t* e5m2) {
  for (size_t i = blockIdx.x * size_t(blockDim.x) + threadIdx.x; i < n;
       i += size_t(gridDim.x) * blockDim.x) {
    const float x = in[i];
    bf16[i] = __bfloat16_as_ushort(__float2bfloat16_rn(x));
    f16[i] = __half_as_ushort(__float2half_rn(x));
    e4m3[i] = __nv_cvt_float_to_fp8(x, __NV_SATFINITE, __NV_E4M3);
    e5m2[i] = __nv_cvt_float_to_fp8(x, __NV_SATFINITE, __NV_E5M2);
  }
}

// Decodes codes 0..65535 as bf16 and f16, and 0..255 as the fp8 formats.
__global__ void decode_kernel(float* bf16, float* f16, float* e4m3, float* e5m2) {
  const unsigned c = blockIdx.x * blockDim.x + threadIdx.x;
  if (c >= 65536) return;
  bf16[c] = __bfloat162float(__ushort_as_bfloat16((unsigned short)c));
  f16[c] = __half2float(__ushort_as_half((unsigned short)c));
  if (c < 256) {
    e4m3[c] = __half2float(__half(__nv_cvt_fp8_to_halfraw((__nv_fp8_storage_t)c, __NV_E4M3)));
    e5m2[c] = __half2float(__half(__nv_cvt_fp8_to_halfraw((__nv_fp8_storage_t)c, __NV_E5M2)));
  }
}

// The E4M3 codes 4c .. 4c + 3 through cuda::e4m3x4_to_bf16 (the MLA kernels' integer decode), as
// BF16 bits.
__global__ void e4m3x4_kernel(uint16_t* out) {
  const unsigned c = threadIdx.x;  // 64 words
  const uint32_t word = (4 * c) | (4 * c + 1) << 8 | (4 * c + 2) << 16 | (4 * c + 3) << 24;
  uint32_t lo, hi;
  cuda::e4m3x4_to_bf16(word, lo, hi);
  out[4 * c] = uint16_t(lo), out[4 * c + 1] = uint16_t(lo >> 16);
  out[4 * c + 2] = uint16_t(hi), out[4 * c + 3] = uint16_t(hi >> 16);
}

// Owns one device allocation; freeing happens in a destructor, where a failure can only be
// ignored (it would also surface in the next checked call).
template <class T>
class DeviceBuffer {
 public:
  explicit DeviceBuffer(size_t n) : n_(n) { DSV3_CUDA_CHECK(cudaMalloc(&p_, n * sizeof(T))); }
  ~DeviceBuffer() { (void)cudaFree(p_); }
  DeviceBuffer(const DeviceBuffer&) = delete;
  DeviceBuffer& operator=(const DeviceBuffer&) = delete;
  T* get() const { return p_; }
  std::vector<T> to_host() const {
    std::vector<T> h(n_);
    DSV3_CUDA_CHECK(cudaMemcpy(h.data(), p_, n_ * sizeof(T), cudaMemcpyDeviceToHost));
    return h;
  }

 private:
  T* p_ = nullptr;
  size_t n_;
};

// True when a GPU is present; false (the test skips) only when CUDA reports no device.
bool have_gpu() {
  int count = 0;
  const cudaError_t err = cudaGetDeviceCount(&count);
  if (err == cudaErrorNoDevice) {
    (void)cudaGetLastError();  // the runtime also keeps it as the last error: clear it
    return false;
  }
  DSV3_CUDA_CHECK(err);
  return count > 0;
}

struct DeviceCodes {
  std::vector<uint16_t> bf16, f16;
  std::vector<uint8_t> e4m3, e5m2;
};

DeviceCodes encode_on_device(const std::vector<float>& xs) {
  const size_t n = xs.size();
  DeviceBuffer<float> in(n);
  DeviceBuffer<uint16_t> bf16(n), f16(n);
  DeviceBuffer<uint8_t> e4m3(n), e5m2(n);
  DSV3_CUDA_CHECK(cudaMemcpy(in.get(), xs.data(), n * sizeof(float), cudaMemcpyHostToDevice));
  const int threads = 256;
  const int blocks = int(std::min<size_t>((n + threads - 1) / threads, 4096));
  encode_kernel<<<blocks, threads>>>(in.get(), n, bf16.get(), f16.get(), e4m3.get(), e5m2.get());
  DSV3_CUDA_CHECK_LAUNCH();
  DSV3_CUDA_CHECK(cudaDeviceSynchronize());
  return {bf16.to_host(), f16.to_host(), e4m3.to_host(), e5m2.to_host()};
}

// No fmt here: .cu files stay free of it (see kernels/cuda/cuda_check.h).
std::string describe(float x) {
  char buf[64];
  std::snprintf(buf, sizeof buf, "%a (bits 0x%08x)", double(x), std::bit_cast<uint32_t>(x));
  return buf;
}

// Compares the device's codes for xs with our host encoder; returns the number that differ.
template <class Code, class HostEncode>
size_t count_mismatches(const char* name, const std::vector<float>& xs,
                        const std::vector<Code>& device, HostEncode host) {
  size_t bad = 0;
  for (size_t i = 0; i < xs.size(); ++i) {
    const uint32_t h = host(xs[i]), d = device[i];
    if (h != d && ++bad <= 8)
      ADD_FAILURE() << name << ": " << describe(xs[i]) << " -> host 0x" << std::hex << h
                    << ", device 0x" << d;
  }
  return bad;
}

void expect_device_matches_host(const std::vector<float>& xs, const std::string& what) {
  const DeviceCodes d = encode_on_device(xs);
  EXPECT_EQ(count_mismatches("bf16", xs, d.bf16, f32_to_bf16), 0u) << what;
  EXPECT_EQ(count_mismatches("f16", xs, d.f16, f32_to_f16), 0u) << what;
  EXPECT_EQ(count_mismatches("e4m3", xs, d.e4m3, f32_to_e4m3), 0u) << what;
  EXPECT_EQ(count_mismatches("e5m2", xs, d.e5m2, f32_to_e5m2), 0u) << what;
}

TEST(DTypeGpu, EncodeBoundaries) {
  if (!have_gpu()) GTEST_SKIP() << "no CUDA device";
  std::vector<float> xs;  // every format's rounding boundaries, seen by every encoder
  for (const dtype_ref::Format* f :
       {&dtype_ref::kBF16, &dtype_ref::kF16, &dtype_ref::kE4M3, &dtype_ref::kE5M2}) {
    const std::vector<float> b = dtype_ref::boundary_inputs(*f);
    xs.insert(xs.end(), b.begin(), b.end());
    const std::vector<float> r = dtype_ref::random_inputs(*f, 1 << 20, 20240919);
    xs.insert(xs.end(), r.begin(), r.end());
  }
  expect_device_matches_host(xs, "boundaries and random floats");
}

TEST(DTypeGpu, EncodeStridedSweepOfAllFloats) {
  if (!have_gpu()) GTEST_SKIP() << "no CUDA device";
  constexpr uint32_t kStride = 61;  // odd: the low mantissa bits take every value
  constexpr uint64_t kChunk = uint64_t(1) << 24;
  std::vector<float> xs;
  for (uint64_t b = 0; b < (uint64_t(1) << 32);) {
    xs.clear();
    for (; b < (uint64_t(1) << 32) && xs.size() < kChunk; b += kStride)
      xs.push_back(std::bit_cast<float>(uint32_t(b)));
    expect_device_matches_host(xs, "sweep chunk ending below " + std::to_string(b));
    if (HasFailure()) return;  // one chunk's report is enough
  }
}

TEST(DTypeGpu, DecodeEveryCode) {
  if (!have_gpu()) GTEST_SKIP() << "no CUDA device";
  DeviceBuffer<float> bf16(65536), f16(65536), e4m3(256), e5m2(256);
  decode_kernel<<<256, 256>>>(bf16.get(), f16.get(), e4m3.get(), e5m2.get());
  DSV3_CUDA_CHECK_LAUNCH();
  DSV3_CUDA_CHECK(cudaDeviceSynchronize());
  const auto check = [](const char* name, const std::vector<float>& device, auto host) {
    size_t bad = 0;
    for (uint32_t c = 0; c < device.size(); ++c) {
      const float h = host(c), d = device[c];
      const bool same =
          std::isnan(d) ? std::isnan(h) : std::bit_cast<uint32_t>(h) == std::bit_cast<uint32_t>(d);
      if (!same && ++bad <= 8)
        ADD_FAILURE() << name << ": code 0x" << std::hex << c << " -> host " << describe(h)
                      << ", device " << describe(d);
    }
    EXPECT_EQ(bad, 0u) << name;
  };
  check("bf16", bf16.to_host(), [](uint32_t c) { return bf16_to_f32(bf16_t(c)); });
  check("f16", f16.to_host(), [](uint32_t c) { return f16_to_f32(f16_t(c)); });
  check("e4m3", e4m3.to_host(), [](uint32_t c) { return e4m3_to_f32(f8_t(c)); });
  check("e5m2", e5m2.to_host(), [](uint32_t c) { return e5m2_to_f32(f8_t(c)); });
}

// The integer E4M3 -> BF16 decode against the host's decode (exact: E4M3 is a subset of BF16),
// every code but the two NaNs, subnormals and both zeros included.
TEST(DTypeGpu, IntegerE4m3DecodeIsExact) {
  if (!have_gpu()) GTEST_SKIP() << "no CUDA device";
  DeviceBuffer<uint16_t> out(256);
  e4m3x4_kernel<<<1, 64>>>(out.get());
  DSV3_CUDA_CHECK_LAUNCH();
  DSV3_CUDA_CHECK(cudaDeviceSynchronize());
  const std::vector<uint16_t> got = out.to_host();
  size_t bad = 0;
  for (uint32_t c = 0; c < 256; ++c) {
    if ((c & 0x7f) == 0x7f) continue;  // NaN
    const float want = e4m3_to_f32(f8_t(c)), have = bf16_to_f32(bf16_t(got[c]));
    if (std::bit_cast<uint32_t>(want) != std::bit_cast<uint32_t>(have) && ++bad <= 8)
      ADD_FAILURE() << "code 0x" << std::hex << c << " -> " << describe(have) << ", want "
                    << describe(want);
  }
  EXPECT_EQ(bad, 0u);
}

}  // namespace
}  // namespace dsv3

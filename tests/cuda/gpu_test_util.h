// What the GPU tests share: a skip when no device is usable, owning device buffers, host <->
// device copies, seeded normal values, and the logits error measure.
#pragma once

#include <cuda_runtime.h>
#include <gtest/gtest.h>

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <memory>
#include <random>
#include <vector>

#include "kernels/cuda/cuda_check.h"
#include "kernels/cuda/device.h"

namespace dsv3::gpu_test {

#define SKIP_WITHOUT_GPU() \
  if (::dsv3::cuda::device_count() == 0) GTEST_SKIP() << "no CUDA device"

struct CudaFree {
  void operator()(void* p) const { (void)cudaFree(p); }
};
template <class T>
using DevPtr = std::unique_ptr<T, CudaFree>;

// n elements, every byte 0xff (NaN for floats): a test can tell what a kernel left unwritten.
template <class T>
DevPtr<T> device_buffer(size_t n) {
  void* p = nullptr;
  DSV3_CUDA_CHECK(cudaMalloc(&p, std::max<size_t>(n, 1) * sizeof(T)));
  DSV3_CUDA_CHECK(cudaMemset(p, 0xff, std::max<size_t>(n, 1) * sizeof(T)));
  return DevPtr<T>(static_cast<T*>(p));
}
template <class T>
DevPtr<T> to_device(const T* src, size_t n) {
  DevPtr<T> d = device_buffer<T>(n);
  DSV3_CUDA_CHECK(cudaMemcpy(d.get(), src, n * sizeof(T), cudaMemcpyHostToDevice));
  return d;
}
template <class T>
DevPtr<T> to_device(const std::vector<T>& v) {
  return to_device(v.data(), v.size());
}
template <class T>
std::vector<T> to_host(const T* p, size_t n) {
  std::vector<T> h(n);
  DSV3_CUDA_CHECK(cudaMemcpy(h.data(), p, n * sizeof(T), cudaMemcpyDeviceToHost));
  return h;
}
template <class T>
std::vector<T> to_host(const DevPtr<T>& p, size_t n) {
  return to_host(p.get(), n);
}

// n normal values of mean 0, fixed by the seed.
inline std::vector<float> randn(size_t n, uint64_t seed, float std = 1.0f) {
  std::mt19937_64 rng(seed);
  std::normal_distribution<float> d(0.0f, std);
  std::vector<float> v(n);
  for (float& x : v) x = d(rng);
  return v;
}

// max|a - b| / std(b) over n values (how logits are compared with a reference).
inline double err_vs_std(const float* a, const float* b, int64_t n) {
  double mean = 0, mx = 0, var = 0;
  for (int64_t i = 0; i < n; ++i) mean += b[i];
  mean /= double(n);
  for (int64_t i = 0; i < n; ++i) {
    var += (b[i] - mean) * (b[i] - mean);
    mx = std::max(mx, double(std::fabs(a[i] - b[i])));
  }
  return mx / std::sqrt(var / double(n));
}

}  // namespace dsv3::gpu_test

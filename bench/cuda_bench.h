// What the CUDA benchmarks share: the device's copy bandwidth and a kernel timer, both from
// CUDA events on the default stream, median of repeats after warm-up.
#pragma once

#include <cuda_runtime.h>

#include <algorithm>
#include <functional>
#include <vector>

#include "kernels/cuda/cuda_check.h"

namespace dsv3::bench {

// Median milliseconds of fn() (launches on the default stream) over `reps` runs after 3 more;
// `before`, when given, runs ahead of each, untimed (an L2 flush: l2_flusher below).
inline double time_ms(const std::function<void()>& fn, int reps = 10,
                      const std::function<void()>& before = {}) {
  cudaEvent_t e0, e1;
  DSV3_CUDA_CHECK(cudaEventCreate(&e0));
  DSV3_CUDA_CHECK(cudaEventCreate(&e1));
  std::vector<double> ms;
  for (int rep = 0; rep < reps + 3; ++rep) {
    if (before) before();
    DSV3_CUDA_CHECK(cudaEventRecord(e0));
    fn();
    DSV3_CUDA_CHECK(cudaEventRecord(e1));
    DSV3_CUDA_CHECK(cudaEventSynchronize(e1));
    float t = 0;
    DSV3_CUDA_CHECK(cudaEventElapsedTime(&t, e0, e1));
    if (rep >= 3) ms.push_back(double(t));
  }
  DSV3_CUDA_CHECK(cudaEventDestroy(e0));
  DSV3_CUDA_CHECK(cudaEventDestroy(e1));
  std::sort(ms.begin(), ms.end());
  return ms[ms.size() / 2];
}

// Bytes per second (read + write) of a device-to-device cudaMemcpy of 1 GiB: the HBM ceiling
// the memory-bound kernels are measured against.
inline double copy_bandwidth() {
  const size_t n = size_t(1) << 30;
  void *a = nullptr, *b = nullptr;
  DSV3_CUDA_CHECK(cudaMalloc(&a, n));
  DSV3_CUDA_CHECK(cudaMalloc(&b, n));
  DSV3_CUDA_CHECK(cudaMemset(a, 1, n));
  const double ms =
      time_ms([&] { DSV3_CUDA_CHECK(cudaMemcpy(b, a, n, cudaMemcpyDeviceToDevice)); });
  DSV3_CUDA_CHECK(cudaFree(a));
  DSV3_CUDA_CHECK(cudaFree(b));
  return 2.0 * double(n) / (ms * 1e-3);
}

// A `before` for time_ms that writes 256 MiB (several times any L2), so that inputs which would
// fit in L2 (one layer's latent cache at batch 1) are read from HBM, as in a model's step.
inline std::function<void()> l2_flusher() {
  static void* junk = [] {
    void* p = nullptr;
    DSV3_CUDA_CHECK(cudaMalloc(&p, size_t(256) << 20));
    return p;
  }();
  return [] { DSV3_CUDA_CHECK(cudaMemsetAsync(junk, 0, size_t(256) << 20)); };
}

}  // namespace dsv3::bench

// cuBLASLt for the GEMMs with many rows (prefill, large batches): BF16 inputs on the tensor
// cores, F32 accumulation and output. One plan (layouts + heuristic algorithm) per shape.
#pragma once

#include <cuda_runtime.h>

#include <cstdint>
#include <map>
#include <tuple>

namespace dsv3::cuda {

class Blas {
 public:
  Blas();
  ~Blas();
  Blas(const Blas&) = delete;
  Blas& operator=(const Blas&) = delete;

  // y [m, n] (F32, row-major) = x [m, k] · w [n, k]ᵀ with x, w BF16 row-major. False when
  // cuBLASLt has no algorithm for the shape (the caller falls back to its own kernel).
  bool matmul_bf16(int64_t m, int64_t n, int64_t k, const void* x, const void* w, float* y,
                   void* workspace, size_t workspace_bytes, cudaStream_t s);

 private:
  struct Plan;
  void* handle_ = nullptr;
  std::map<std::tuple<int64_t, int64_t, int64_t>, Plan*> plans_;
};

}  // namespace dsv3::cuda

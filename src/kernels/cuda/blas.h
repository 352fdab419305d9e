// cuBLASLt for the GEMMs with many rows (prefill, large batches) on the tensor cores, F32
// output: BF16 inputs, or FP8 E4M3 inputs with DeepSeek-V3's block scales (CUDA 12.9+ on
// Hopper). One plan (layouts + heuristic algorithm) per shape and kind.
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

  // The same with x E4M3 [m, k] in 1×128 tiles, scales x_scale [k / 128][m] (rows fastest:
  // what cuBLASLt reads, bench/bench_cuda_fp8_gemm.cpp), and w E4M3 [n, k] with 128×128 block
  // scales [ceil(n / 128)][k / 128] as checkpoints store them; k a multiple of 128. The tensor
  // cores sum products with limited precision between F32 promotions (~1e-4 relative).
  bool matmul_fp8_block(int64_t m, int64_t n, int64_t k, const void* x, const float* x_scale,
                        const void* w, const float* w_scale, float* y, void* workspace,
                        size_t workspace_bytes, cudaStream_t s);

 private:
  struct Plan;
  Plan* plan(bool fp8, int64_t m, int64_t n, int64_t k, size_t workspace_bytes,
             const float* w_scale = nullptr, const float* x_scale = nullptr);
  void* handle_ = nullptr;
  std::map<std::tuple<bool, int64_t, int64_t, int64_t>, Plan*> plans_;
};

}  // namespace dsv3::cuda

// cuBLASLt for the GEMMs with many rows (prefill, large batches): BF16 inputs, or FP8 E4M3
// inputs with DeepSeek-V3's block scales (CUDA 12.9+ on Hopper), on the tensor cores, F32
// accumulation; F32 for the router. One plan (layouts + heuristic algorithm) per shape and kind.
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
  // The general BF16 product with leading dimensions (elements, all rows 16-byte aligned):
  // y [m, n] (ldy; F32, or BF16 when y_bf16) = x [m, k] (ldx) · op(w), op(w) = wᵀ for w [n, k]
  // (ldw) when w_rows_n, else w [k, n] (ldw) as it is.
  bool gemm_bf16(bool w_rows_n, int64_t m, int64_t n, int64_t k, const void* x, int64_t ldx,
                 const void* w, int64_t ldw, void* y, int64_t ldy, bool y_bf16, void* workspace,
                 size_t workspace_bytes, cudaStream_t s);
  // y [m, n] = x [m, k] · w [n, k]ᵀ all F32, F32 arithmetic throughout (no TF32): the router,
  // whose near-ties a rounding of its inputs could flip.
  bool matmul_f32(int64_t m, int64_t n, int64_t k, const float* x, const float* w, float* y,
                  void* workspace, size_t workspace_bytes, cudaStream_t s);

  // The same with x E4M3 [m, k] in 1×128 tiles, scales x_scale [k / 128][m] (rows fastest:
  // what cuBLASLt reads, bench/bench_cuda_fp8_gemm.cpp), and w E4M3 [n, k] with 128×128 block
  // scales [ceil(n / 128)][round_up(k / 128, 4)] (the checkpoints' layout, each row padded to
  // 16 bytes); k a multiple of 128, m a multiple of 16 (cuBLASLt 13.1 on the H200 has no
  // algorithm otherwise; quantize_e4m3_tiles pads). The tensor cores sum products with limited
  // precision between F32 promotions (~1e-4 relative).
  bool matmul_fp8_block(int64_t m, int64_t n, int64_t k, const void* x, const float* x_scale,
                        const void* w, const float* w_scale, float* y, void* workspace,
                        size_t workspace_bytes, cudaStream_t s);

 private:
  struct Plan;
  // Shape and layout of one product: what a plan is made for.
  enum class In { BF16, E4M3, F32 };
  struct Key {
    In in = In::BF16;
    bool w_rows_n = true, y_bf16 = false;
    int64_t m = 0, n = 0, k = 0, ldx = 0, ldw = 0, ldy = 0;
    auto tie() const { return std::tie(in, w_rows_n, y_bf16, m, n, k, ldx, ldw, ldy); }
    bool operator<(const Key& o) const { return tie() < o.tie(); }
  };
  Plan* plan(const Key& key, size_t workspace_bytes, const float* w_scale = nullptr,
             const float* x_scale = nullptr);
  // y = x · op(w) with a plan's layouts and algorithm.
  void run(const Plan& p, const void* x, const void* w, void* y, void* workspace,
           size_t workspace_bytes, cudaStream_t s);
  void* handle_ = nullptr;
  std::map<Key, Plan*> plans_;
};

}  // namespace dsv3::cuda

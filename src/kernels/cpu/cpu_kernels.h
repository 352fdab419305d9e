// CPU kernels on raw pointers (row-major, f32 activations). ops.h is their public face.
#pragma once

#include <cstdint>
#include <vector>

#include "kernels/linear.h"

namespace dsv3::cpu {

// OpenBLAS runs single-threaded inside our pool's threads; every kernel that calls it first
// calls this.
void init_blas();

void embedding(const int32_t* ids, int64_t n, const Tensor& table, float* out);
void rmsnorm(const float* x, int64_t rows, int64_t dim, const Tensor& weight, float eps,
             float* out);
void linear(const float* x, int64_t rows, const Linear& w, float* y);
void add_inplace(float* x, const float* y, int64_t n);
void silu_mul(const float* gate, const float* up, float* out, int64_t n);
void rope_interleaved(float* x, int64_t rows, int64_t vecs_per_row, int64_t width, int64_t offset,
                      const std::vector<float>& inv_freq, float factor, const int32_t* positions);
void attention_causal(const float* q, const float* k, const float* v, int64_t T, int64_t H,
                      int64_t dqk, int64_t dv, float scale, float* out);

}  // namespace dsv3::cpu

namespace dsv3::cpu {

void mla_attention(const float* q, int64_t T, int64_t H, const float* ckv, const float* kpe,
                   int64_t L, int64_t dc, int64_t dr, int64_t start, const Linear& kv_b, int64_t dn,
                   int64_t dv, float scale, bool absorbed, float* out);

}  // namespace dsv3::cpu

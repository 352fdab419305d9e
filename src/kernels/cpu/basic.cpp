// Element-wise and row-wise CPU kernels: embedding, RMSNorm, SwiGLU, RoPE.
#include <cmath>
#include <vector>

#include "core/error.h"
#include "core/threads.h"
#include "kernels/cpu/cpu_kernels.h"

namespace dsv3::cpu {

void embedding(const int32_t* ids, int64_t n, const Tensor& table, float* out) {
  const int64_t vocab = table.dim(0), dim = table.dim(1);
  const size_t row_bytes = size_t(dim) * dtype_size(table.dtype());
  const auto* base = static_cast<const char*>(table.data());
  for (int64_t t = 0; t < n; ++t) {
    DSV3_CHECK(ids[t] >= 0 && ids[t] < vocab,
               "token id {} at position {} is outside the vocabulary [0, {})", ids[t], t, vocab);
    convert_to_f32(table.dtype(), base + size_t(ids[t]) * row_bytes, out + t * dim, size_t(dim));
  }
}

void rmsnorm(const float* x, int64_t rows, int64_t dim, const Tensor& weight, float eps,
             float* out) {
  const std::vector<float> w = weight.to_f32_vector();
  parallel_for(
      rows,
      [&](int64_t r0, int64_t r1, int) {
        for (int64_t r = r0; r < r1; ++r) {
          const float* xr = x + r * dim;
          float* o = out + r * dim;
          double ss = 0;
          for (int64_t i = 0; i < dim; ++i) ss += double(xr[i]) * xr[i];
          const float inv = float(1.0 / std::sqrt(ss / double(dim) + double(eps)));
          for (int64_t i = 0; i < dim; ++i) o[i] = w[i] * (xr[i] * inv);
        }
      },
      16);
}

void add_inplace(float* x, const float* y, int64_t n) {
  for (int64_t i = 0; i < n; ++i) x[i] += y[i];
}

void silu_mul(const float* gate, const float* up, float* out, int64_t n) {
  parallel_for(
      n,
      [&](int64_t i0, int64_t i1, int) {
        for (int64_t i = i0; i < i1; ++i) {
          const float g = gate[i];
          out[i] = g / (1.0f + std::exp(-g)) * up[i];
        }
      },
      4096);
}

void rope_interleaved(float* x, int64_t rows, int64_t vecs_per_row, int64_t width, int64_t offset,
                      const std::vector<float>& inv_freq, float factor, const int32_t* positions) {
  const int64_t half = int64_t(inv_freq.size());
  std::vector<float> cs(static_cast<size_t>(half) * 2);
  for (int64_t t = 0; t < rows; ++t) {
    const float pos = float(positions[t]);
    for (int64_t i = 0; i < half; ++i) {
      const float angle = pos * inv_freq[size_t(i)];  // f32, as the references compute it
      cs[2 * i] = float(std::cos(double(angle))) * factor;
      cs[2 * i + 1] = float(std::sin(double(angle))) * factor;
    }
    for (int64_t v = 0; v < vecs_per_row; ++v) {
      float* p = x + (t * vecs_per_row + v) * width + offset;
      for (int64_t i = 0; i < half; ++i) {
        const float a = p[2 * i], b = p[2 * i + 1], c = cs[2 * i], s = cs[2 * i + 1];
        p[2 * i] = a * c - b * s;
        p[2 * i + 1] = a * s + b * c;
      }
    }
  }
}

}  // namespace dsv3::cpu

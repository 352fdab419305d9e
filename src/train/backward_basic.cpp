// Forward and backward of the element-wise and row-wise training ops: embedding, RMSNorm,
// linear, SwiGLU, interleaved RoPE. Reductions accumulate in double for both instantiations so
// that the f32 path differs from the f64 one only by the rounding of its inputs and outputs.
#include <cblas.h>

#include <algorithm>
#include <cmath>
#include <type_traits>
#include <vector>

#include "core/error.h"
#include "core/threads.h"
#include "kernels/cpu/cpu_kernels.h"
#include "train/gemm.h"
#include "train/ops.h"

namespace dsv3::train {

// ---- embedding ----

namespace {

void check_ids(const int32_t* ids, int64_t n, int64_t vocab) {
  for (int64_t t = 0; t < n; ++t)
    DSV3_CHECK(ids[t] >= 0 && ids[t] < vocab,
               "token id {} at position {} is outside the vocabulary [0, {})", ids[t], t, vocab);
}

}  // namespace

template <typename T>
void embedding_forward(const int32_t* ids, int64_t n, const T* table, int64_t vocab, int64_t dim,
                       T* out) {
  check_ids(ids, n, vocab);
  for (int64_t t = 0; t < n; ++t)
    for (int64_t d = 0; d < dim; ++d) out[t * dim + d] = table[int64_t(ids[t]) * dim + d];
}

template <typename T>
void embedding_backward(const int32_t* ids, int64_t n, const T* dout, int64_t vocab, int64_t dim,
                        T* dtable) {
  if (!dtable) return;
  check_ids(ids, n, vocab);
  // Serial over tokens: repeated ids add into the same row, so splitting by token would race.
  for (int64_t t = 0; t < n; ++t) {
    T* row = dtable + int64_t(ids[t]) * dim;
    const T* g = dout + t * dim;
    for (int64_t d = 0; d < dim; ++d) row[d] += g[d];
  }
}

// ---- RMSNorm ----

namespace {

template <typename T>
double inv_rms(const T* x, int64_t dim, T eps) {
  double ss = 0;
  for (int64_t i = 0; i < dim; ++i) ss += double(x[i]) * double(x[i]);
  return 1.0 / std::sqrt(ss / double(dim) + double(eps));
}

}  // namespace

template <typename T>
void rmsnorm_forward(const T* x, const T* w, int64_t rows, int64_t dim, T eps, T* y) {
  parallel_for(
      rows,
      [&](int64_t r0, int64_t r1, int) {
        for (int64_t r = r0; r < r1; ++r) {
          const T* xr = x + r * dim;
          const double inv = inv_rms(xr, dim, eps);
          for (int64_t i = 0; i < dim; ++i) y[r * dim + i] = T(double(w[i]) * (xr[i] * inv));
        }
      },
      16);
}

template <typename T>
void rmsnorm_backward(const T* x, const T* w, const T* dy, int64_t rows, int64_t dim, T eps, T* dx,
                      T* dw) {
  // With x̂ = x·r, r = (mean(x²) + eps)^(-1/2) and g = dy ⊙ w (the gradient w.r.t. x̂):
  // dx = r·(g − x̂·mean(g ⊙ x̂)), since ∂r/∂x_j = −r³·x_j/dim.
  if (dx) {
    parallel_for(
        rows,
        [&](int64_t r0, int64_t r1, int) {
          for (int64_t r = r0; r < r1; ++r) {
            const T* xr = x + r * dim;
            const T* g = dy + r * dim;
            const double inv = inv_rms(xr, dim, eps);
            double dot = 0;
            for (int64_t i = 0; i < dim; ++i) dot += double(g[i]) * double(w[i]) * xr[i] * inv;
            const double m = dot / double(dim);
            for (int64_t i = 0; i < dim; ++i) {
              const double xh = xr[i] * inv;
              dx[r * dim + i] += T(inv * (double(g[i]) * double(w[i]) - xh * m));
            }
          }
        },
        16);
  }
  if (dw) {
    // Column sums over rows: serial over rows (each row's r computed once), one pass.
    std::vector<double> acc(static_cast<size_t>(dim), 0.0);
    for (int64_t r = 0; r < rows; ++r) {
      const T* xr = x + r * dim;
      const double inv = inv_rms(xr, dim, eps);
      for (int64_t i = 0; i < dim; ++i) acc[size_t(i)] += double(dy[r * dim + i]) * xr[i] * inv;
    }
    for (int64_t i = 0; i < dim; ++i) dw[i] += T(acc[size_t(i)]);
  }
}

// ---- linear ----

namespace {

// Output columns per pool task: at least 64 so BLAS runs at speed, and enough multiply-adds
// (~256k) that a task is worth waking a thread for; `per_col` is the work of one column.
int64_t col_grain(int64_t per_col) {
  return std::max<int64_t>(64, (int64_t(1) << 18) / std::max<int64_t>(1, per_col));
}

}  // namespace

template <typename T>
void linear_forward(const T* x, const T* W, int64_t rows, int64_t in, int64_t out, T* y) {
  if (rows == 0 || out == 0) return;
  if (in == 0) {
    for (int64_t i = 0; i < rows * out; ++i) y[i] = T(0);
    return;
  }
  cpu::init_blas();
  // y[:, o0:o1] = x · W[o0:o1]ᵀ
  parallel_for(
      out,
      [&](int64_t o0, int64_t o1, int) {
        gemm<T>(CblasNoTrans, CblasTrans, rows, o1 - o0, in, x, in, W + o0 * in, in, T(0), y + o0,
                out);
      },
      col_grain(rows * in));
}

template <typename T>
void linear_backward(const T* x, const T* W, const T* dy, int64_t rows, int64_t in, int64_t out,
                     T* dx, T* dW) {
  if (rows == 0 || in == 0 || out == 0) return;
  cpu::init_blas();
  if (dx) {
    // dx[:, i0:i1] += dy · W[:, i0:i1]
    parallel_for(
        in,
        [&](int64_t i0, int64_t i1, int) {
          gemm<T>(CblasNoTrans, CblasNoTrans, rows, i1 - i0, out, dy, out, W + i0, in, T(1),
                  dx + i0, in);
        },
        col_grain(rows * out));
  }
  if (dW) {
    // dW[o0:o1] += dy[:, o0:o1]ᵀ · x
    parallel_for(
        out,
        [&](int64_t o0, int64_t o1, int) {
          gemm<T>(CblasTrans, CblasNoTrans, o1 - o0, in, rows, dy + o0, out, x, in, T(1),
                  dW + o0 * in, in);
        },
        col_grain(rows * in));
  }
}

// ---- SwiGLU ----

template <typename T>
void swiglu_forward(const T* g, const T* u, int64_t n, T* out) {
  parallel_for(
      n,
      [&](int64_t i0, int64_t i1, int) {
        for (int64_t i = i0; i < i1; ++i) {
          const T sig = T(1) / (T(1) + std::exp(-g[i]));
          out[i] = g[i] * sig * u[i];
        }
      },
      4096);
}

template <typename T>
void swiglu_backward(const T* g, const T* u, const T* dout, int64_t n, T* dg, T* du) {
  // silu'(g) = σ(g)·(1 + g·(1 − σ(g)))
  parallel_for(
      n,
      [&](int64_t i0, int64_t i1, int) {
        for (int64_t i = i0; i < i1; ++i) {
          const T sig = T(1) / (T(1) + std::exp(-g[i]));
          if (dg) dg[i] += dout[i] * u[i] * sig * (T(1) + g[i] * (T(1) - sig));
          if (du) du[i] += dout[i] * g[i] * sig;
        }
      },
      4096);
}

// ---- interleaved RoPE ----

namespace {

// direction +1 rotates by +angle (forward), −1 by −angle (the transpose, for backward).
template <typename T>
void rope_apply(T* x, int64_t rows, int64_t vecs_per_row, int64_t width, int64_t offset,
                const std::vector<float>& inv_freq, float factor, const int32_t* positions,
                double direction) {
  const int64_t half = int64_t(inv_freq.size());
  DSV3_ASSERT(offset >= 0 && offset + 2 * half <= width);
  std::vector<T> cs(static_cast<size_t>(half) * 2);
  for (int64_t t = 0; t < rows; ++t) {
    const float pos = float(positions[t]);
    for (int64_t i = 0; i < half; ++i) {
      const float angle = pos * inv_freq[size_t(i)];  // f32, as the inference kernel forms it
      cs[size_t(2 * i)] = T(std::cos(double(angle))) * T(factor);
      cs[size_t(2 * i + 1)] = T(direction * std::sin(double(angle))) * T(factor);
    }
    for (int64_t v = 0; v < vecs_per_row; ++v) {
      T* p = x + (t * vecs_per_row + v) * width + offset;
      for (int64_t i = 0; i < half; ++i) {
        const T a = p[2 * i], b = p[2 * i + 1], c = cs[size_t(2 * i)], s = cs[size_t(2 * i + 1)];
        p[2 * i] = a * c - b * s;
        p[2 * i + 1] = a * s + b * c;
      }
    }
  }
}

}  // namespace

template <typename T>
void rope_forward(T* x, int64_t rows, int64_t vecs_per_row, int64_t width, int64_t offset,
                  const std::vector<float>& inv_freq, float factor, const int32_t* positions) {
  rope_apply(x, rows, vecs_per_row, width, offset, inv_freq, factor, positions, 1.0);
}

template <typename T>
void rope_backward(T* dx, int64_t rows, int64_t vecs_per_row, int64_t width, int64_t offset,
                   const std::vector<float>& inv_freq, float factor, const int32_t* positions) {
  rope_apply(dx, rows, vecs_per_row, width, offset, inv_freq, factor, positions, -1.0);
}

#define DSV3_INSTANTIATE(T)                                                                        \
  template void embedding_forward<T>(const int32_t*, int64_t, const T*, int64_t, int64_t, T*);     \
  template void embedding_backward<T>(const int32_t*, int64_t, const T*, int64_t, int64_t, T*);    \
  template void rmsnorm_forward<T>(const T*, const T*, int64_t, int64_t, T, T*);                   \
  template void rmsnorm_backward<T>(const T*, const T*, const T*, int64_t, int64_t, T, T*, T*);    \
  template void linear_forward<T>(const T*, const T*, int64_t, int64_t, int64_t, T*);              \
  template void linear_backward<T>(const T*, const T*, const T*, int64_t, int64_t, int64_t, T*,    \
                                   T*);                                                            \
  template void swiglu_forward<T>(const T*, const T*, int64_t, T*);                                \
  template void swiglu_backward<T>(const T*, const T*, const T*, int64_t, T*, T*);                 \
  template void rope_forward<T>(T*, int64_t, int64_t, int64_t, int64_t, const std::vector<float>&, \
                                float, const int32_t*);                                            \
  template void rope_backward<T>(T*, int64_t, int64_t, int64_t, int64_t,                           \
                                 const std::vector<float>&, float, const int32_t*);
DSV3_INSTANTIATE(float)
DSV3_INSTANTIATE(double)
#undef DSV3_INSTANTIATE

}  // namespace dsv3::train

// Causal multi-head attention, forward and backward, one head of one sequence per pool task:
// the [T, T] score matrix of that head lives only inside the task (backward recomputes it, as
// FlashAttention does, instead of keeping [H, T, T] from forward), and every product is a BLAS
// GEMM on the strided [T, H, d] layouts.
#include <algorithm>
#include <cmath>
#include <vector>

#include "core/threads.h"
#include "kernels/cpu/cpu_kernels.h"
#include "train/gemm.h"
#include "train/ops.h"

namespace dsv3::train {

namespace {

// P [T, T] = causal softmax(scale·Q_h·K_hᵀ) of head h; entries above the diagonal are 0.
template <typename T>
void probabilities(const T* q, const T* k, int64_t T_, int64_t h, int64_t H, int64_t dqk, T scale,
                   std::vector<T>& p) {
  p.resize(static_cast<size_t>(T_ * T_));
  gemm<T>(CblasNoTrans, CblasTrans, T_, T_, dqk, q + h * dqk, H * dqk, k + h * dqk, H * dqk, T(0),
          p.data(), T_);
  for (int64_t t = 0; t < T_; ++t) {
    T* row = p.data() + t * T_;
    T mx = -INFINITY;
    for (int64_t j = 0; j <= t; ++j) mx = std::max(mx, row[j] * scale);
    double sum = 0;
    for (int64_t j = 0; j <= t; ++j) sum += double(row[j] = std::exp(row[j] * scale - mx));
    const T inv = T(1.0 / sum);
    for (int64_t j = 0; j <= t; ++j) row[j] *= inv;
    std::fill(row + t + 1, row + T_, T(0));
  }
}

}  // namespace

template <typename T>
void attention_forward(const T* q, const T* k, const T* v, int64_t T_, int64_t H, int64_t dqk,
                       int64_t dv, T scale, T* out) {
  cpu::init_blas();
  parallel_for(
      H,
      [&](int64_t h0, int64_t h1, int) {
        thread_local std::vector<T> p;  // [T, T]: reused, a fresh 256 KB buffer is an mmap
        for (int64_t h = h0; h < h1; ++h) {
          probabilities(q, k, T_, h, H, dqk, scale, p);
          gemm<T>(CblasNoTrans, CblasNoTrans, T_, dv, T_, p.data(), T_, v + h * dv, H * dv, T(0),
                  out + h * dv, H * dv);
        }
      },
      1);
}

template <typename T>
void attention_backward(const T* q, const T* k, const T* v, const T* dout, int64_t T_, int64_t H,
                        int64_t dqk, int64_t dv, T scale, T* dq, T* dk, T* dv_) {
  // Per head, with P = softmax(S), S = scale·Q·Kᵀ (causal):
  //   dP = dO·Vᵀ,  dS = P ⊙ (dP − rowsum(P ⊙ dP)),
  //   dQ += scale·dS·K,  dK += scale·dSᵀ·Q,  dV += Pᵀ·dO.
  // Heads are independent (each writes only its own columns of dq, dk, dv), so tasks never
  // touch the same gradient entries.
  cpu::init_blas();
  parallel_for(
      H,
      [&](int64_t h0, int64_t h1, int) {
        thread_local std::vector<T> p, ds;
        ds.resize(static_cast<size_t>(T_ * T_));
        for (int64_t h = h0; h < h1; ++h) {
          probabilities(q, k, T_, h, H, dqk, scale, p);
          const T* go = dout + h * dv;
          if (dv_)
            gemm<T>(CblasTrans, CblasNoTrans, T_, dv, T_, p.data(), T_, go, H * dv, T(1),
                    dv_ + h * dv, H * dv);
          if (!dq && !dk) continue;
          gemm<T>(CblasNoTrans, CblasTrans, T_, T_, dv, go, H * dv, v + h * dv, H * dv, T(0),
                  ds.data(), T_);
          for (int64_t t = 0; t < T_; ++t) {
            const T* pr = p.data() + t * T_;
            T* dr = ds.data() + t * T_;
            double sum = 0;
            for (int64_t j = 0; j <= t; ++j) sum += double(pr[j]) * double(dr[j]);
            for (int64_t j = 0; j <= t; ++j) dr[j] = pr[j] * (dr[j] - T(sum)) * scale;
            std::fill(dr + t + 1, dr + T_, T(0));
          }
          if (dq)
            gemm<T>(CblasNoTrans, CblasNoTrans, T_, dqk, T_, ds.data(), T_, k + h * dqk, H * dqk,
                    T(1), dq + h * dqk, H * dqk);
          if (dk)
            gemm<T>(CblasTrans, CblasNoTrans, T_, dqk, T_, ds.data(), T_, q + h * dqk, H * dqk,
                    T(1), dk + h * dqk, H * dqk);
        }
      },
      1);
}

#define DSV3_INSTANTIATE(T)                                                                     \
  template void attention_forward<T>(const T*, const T*, const T*, int64_t, int64_t, int64_t,   \
                                     int64_t, T, T*);                                           \
  template void attention_backward<T>(const T*, const T*, const T*, const T*, int64_t, int64_t, \
                                      int64_t, int64_t, T, T*, T*, T*);
DSV3_INSTANTIATE(float)
DSV3_INSTANTIATE(double)
#undef DSV3_INSTANTIATE

}  // namespace dsv3::train

// Causal multi-head attention, forward and backward (FlashAttention-style recomputation of the
// probabilities, one query row at a time, instead of keeping the [H, T, T] matrix).
#include <algorithm>
#include <cmath>
#include <vector>

#include "core/threads.h"
#include "train/ops.h"

namespace dsv3::train {

namespace {

template <typename T>
T dot(const T* a, const T* b, int64_t n) {
  T s = T(0);
#pragma omp simd reduction(+ : s)
  for (int64_t i = 0; i < n; ++i) s += a[i] * b[i];
  return s;
}

// p[0..t] = softmax_j(scale·q_t·k_j) for head h.
template <typename T>
void probabilities(const T* q, const T* k, int64_t t, int64_t h, int64_t H, int64_t dqk, T scale,
                   std::vector<double>& p) {
  const T* qv = q + (t * H + h) * dqk;
  double mx = -INFINITY;
  for (int64_t j = 0; j <= t; ++j) {
    p[size_t(j)] = double(dot(qv, k + (j * H + h) * dqk, dqk) * scale);
    mx = std::max(mx, p[size_t(j)]);
  }
  double sum = 0;
  for (int64_t j = 0; j <= t; ++j) sum += p[size_t(j)] = std::exp(p[size_t(j)] - mx);
  for (int64_t j = 0; j <= t; ++j) p[size_t(j)] /= sum;
}

}  // namespace

template <typename T>
void attention_forward(const T* q, const T* k, const T* v, int64_t T_, int64_t H, int64_t dqk,
                       int64_t dv, T scale, T* out) {
  // A query row costs about T·(dqk + dv)/2 multiply-adds; tasks of ~32k are worth a thread.
  const int64_t grain =
      std::max<int64_t>(1, (int64_t(1) << 16) / std::max<int64_t>(1, T_ * (dqk + dv)));
  parallel_for(
      H * T_,
      [&](int64_t i0, int64_t i1, int) {
        std::vector<double> p(static_cast<size_t>(T_)), acc(static_cast<size_t>(dv));
        for (int64_t i = i0; i < i1; ++i) {
          const int64_t h = i / T_, t = i % T_;
          probabilities(q, k, t, h, H, dqk, scale, p);
          std::fill(acc.begin(), acc.end(), 0.0);
          for (int64_t j = 0; j <= t; ++j) {
            const T* vv = v + (j * H + h) * dv;
            for (int64_t d = 0; d < dv; ++d) acc[size_t(d)] += p[size_t(j)] * double(vv[d]);
          }
          T* o = out + (t * H + h) * dv;
          for (int64_t d = 0; d < dv; ++d) o[d] = T(acc[size_t(d)]);
        }
      },
      grain);
}

template <typename T>
void attention_backward(const T* q, const T* k, const T* v, const T* dout, int64_t T_, int64_t H,
                        int64_t dqk, int64_t dv, T scale, T* dq, T* dk, T* dv_) {
  // Per query row t of head h, with P = softmax(S), S = scale·q·kᵀ:
  //   dP_j = dout_t·v_j,  dS_j = P_j·(dP_j − Σ_m P_m·dP_m),
  //   dq_t += scale·Σ_j dS_j·k_j,  dk_j += scale·dS_j·q_t,  dv_j += P_j·dout_t.
  // Heads are independent (dk, dv of head h are written only by head h), so the pool splits by
  // head and no two threads touch the same gradient row.
  const int64_t grain =
      std::max<int64_t>(1, (int64_t(1) << 18) / std::max<int64_t>(1, T_ * T_ * (dqk + dv)));
  parallel_for(
      H,
      [&](int64_t h0, int64_t h1, int) {
        std::vector<double> p(static_cast<size_t>(T_)), dp(static_cast<size_t>(T_));
        std::vector<double> gq(static_cast<size_t>(dqk));
        for (int64_t h = h0; h < h1; ++h) {
          for (int64_t t = 0; t < T_; ++t) {
            probabilities(q, k, t, h, H, dqk, scale, p);
            const T* go = dout + (t * H + h) * dv;
            const T* qv = q + (t * H + h) * dqk;
            double sum = 0;
            for (int64_t j = 0; j <= t; ++j) {
              dp[size_t(j)] = double(dot(go, v + (j * H + h) * dv, dv));
              sum += p[size_t(j)] * dp[size_t(j)];
            }
            std::fill(gq.begin(), gq.end(), 0.0);
            for (int64_t j = 0; j <= t; ++j) {
              const double ds = p[size_t(j)] * (dp[size_t(j)] - sum) * double(scale);
              const T* kv = k + (j * H + h) * dqk;
              for (int64_t d = 0; d < dqk; ++d) gq[size_t(d)] += ds * double(kv[d]);
              if (dk) {
                T* g = dk + (j * H + h) * dqk;
                for (int64_t d = 0; d < dqk; ++d) g[d] += T(ds * double(qv[d]));
              }
              if (dv_) {
                T* g = dv_ + (j * H + h) * dv;
                const T pj = T(p[size_t(j)]);
                for (int64_t d = 0; d < dv; ++d) g[d] += pj * go[d];
              }
            }
            if (dq) {
              T* g = dq + (t * H + h) * dqk;
              for (int64_t d = 0; d < dqk; ++d) g[d] += T(gq[size_t(d)]);
            }
          }
        }
      },
      grain);
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

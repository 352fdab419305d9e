// Cross-entropy over the vocabulary, loss and d logits in one pass over each row.
#include <algorithm>
#include <cmath>
#include <vector>

#include "core/error.h"
#include "core/threads.h"
#include "train/ops.h"

namespace dsv3::train {

template <typename T>
T cross_entropy(const T* logits, const int32_t* targets, int64_t N, int64_t V, T* dlogits,
                T grad_scale) {
  int64_t count = 0;
  for (int64_t r = 0; r < N; ++r) {
    DSV3_CHECK(targets[r] < V,
               "cross-entropy: target {} in row {} is outside the vocabulary "
               "[0, {}) (use a negative target to ignore a row)",
               targets[r], r, V);
    count += targets[r] >= 0;
  }
  std::vector<double> row_loss(size_t(N), 0.0);
  const double g = count ? double(grad_scale) / double(count) : 0.0;
  parallel_for(
      N,
      [&](int64_t r0, int64_t r1, int) {
        for (int64_t r = r0; r < r1; ++r) {
          const T* l = logits + r * V;
          const int32_t tgt = targets[r];
          if (tgt < 0) {
            if (dlogits) std::fill(dlogits + r * V, dlogits + (r + 1) * V, T(0));
            continue;
          }
          // log Σ exp(l) around the row max; every value is read before dlogits (which may
          // alias the logits) is written.
          double mx = -INFINITY;
          for (int64_t i = 0; i < V; ++i) mx = std::max(mx, double(l[i]));
          double sum = 0;
          for (int64_t i = 0; i < V; ++i) sum += std::exp(double(l[i]) - mx);
          const double lse = mx + std::log(sum);
          row_loss[size_t(r)] = lse - double(l[tgt]);
          if (dlogits) {
            T* d = dlogits + r * V;
            for (int64_t i = 0; i < V; ++i)
              d[i] = T(g * (std::exp(double(l[i]) - lse) - (i == tgt ? 1.0 : 0.0)));
          }
        }
      },
      std::max<int64_t>(1, 65536 / std::max<int64_t>(1, V)));
  double total = 0;
  for (double x : row_loss) total += x;
  return count ? T(total / double(count)) : T(0);
}

template float cross_entropy<float>(const float*, const int32_t*, int64_t, int64_t, float*, float);
template double cross_entropy<double>(const double*, const int32_t*, int64_t, int64_t, double*,
                                      double);

}  // namespace dsv3::train

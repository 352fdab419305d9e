// Causal multi-head attention for one sequence (prefill / full forward), f32 throughout.
#include <algorithm>
#include <cmath>
#include <vector>

#include "core/threads.h"
#include "kernels/cpu/cpu_kernels.h"

namespace dsv3::cpu {

void attention_causal(const float* q, const float* k, const float* v, int64_t T, int64_t H,
                      int64_t dqk, int64_t dv, float scale, float* out) {
  parallel_for(H * T, [&](int64_t i0, int64_t i1, int) {
    std::vector<float> p(static_cast<size_t>(T));
    std::vector<double> acc(static_cast<size_t>(dv));
    for (int64_t i = i0; i < i1; ++i) {
      const int64_t h = i / T, t = i % T;
      const float* qv = q + (t * H + h) * dqk;
      float mx = -INFINITY;
      for (int64_t j = 0; j <= t; ++j) {
        const float* kv = k + (j * H + h) * dqk;
        float s = 0;
        for (int64_t d = 0; d < dqk; ++d) s += qv[d] * kv[d];
        p[size_t(j)] = s * scale;
        mx = std::max(mx, p[size_t(j)]);
      }
      double sum = 0;
      for (int64_t j = 0; j <= t; ++j) {
        p[size_t(j)] = std::exp(p[size_t(j)] - mx);
        sum += p[size_t(j)];
      }
      std::fill(acc.begin(), acc.end(), 0.0);
      for (int64_t j = 0; j <= t; ++j) {
        const float* vv = v + (j * H + h) * dv;
        const double pj = p[size_t(j)] / sum;
        for (int64_t d = 0; d < dv; ++d) acc[size_t(d)] += pj * vv[d];
      }
      float* o = out + (t * H + h) * dv;
      for (int64_t d = 0; d < dv; ++d) o[d] = float(acc[size_t(d)]);
    }
  });
}

}  // namespace dsv3::cpu

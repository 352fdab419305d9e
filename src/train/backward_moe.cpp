// DeepSeekMoE gate (sigmoid / noaux_tc) and the complementary sequence-wise balance loss,
// forward and backward. Selection is model/moe.h's select_experts (route_tokens uses it too); only
// the continuous part (sigmoid, normalisation over the chosen experts) is differentiated.
#include <algorithm>
#include <cmath>
#include <numeric>
#include <vector>

#include "core/error.h"
#include "core/threads.h"
#include "model/moe.h"
#include "train/ops.h"

namespace dsv3::train {

GateConfig GateConfig::from(const ModelConfig& c) {
  DSV3_CHECK(c.scoring_func == "sigmoid",
             "training supports the sigmoid MoE gate (DeepSeek-V3) only; config has "
             "scoring_func \"{}\"",
             c.scoring_func);
  DSV3_CHECK(c.topk_method == "noaux_tc" || c.n_group == 1,
             "training supports topk_method noaux_tc for grouped routing; config has \"{}\"",
             c.topk_method);
  GateConfig g;
  g.n_experts = c.n_routed_experts;
  g.k = c.num_experts_per_tok;
  g.n_group = c.n_group;
  g.topk_group = c.topk_group;
  g.norm_topk_prob = c.norm_topk_prob;
  g.routed_scaling_factor = c.routed_scaling_factor;
  return g;
}

namespace {

void check_gate(const GateConfig& c) {
  DSV3_CHECK(c.n_experts > 0 && c.k > 0 && c.k <= c.n_experts,
             "MoE gate: num_experts_per_tok {} must be in [1, n_routed_experts {}]", c.k,
             c.n_experts);
  DSV3_CHECK(c.n_group >= 1 && c.n_experts % c.n_group == 0 && c.topk_group >= 1 &&
                 c.topk_group <= c.n_group,
             "MoE gate: n_group {} must divide n_routed_experts {} and topk_group {} be in [1, "
             "n_group]",
             c.n_group, c.n_experts, c.topk_group);
  DSV3_CHECK(c.n_group == 1 ||
                 (c.n_experts / c.n_group >= 2 && c.topk_group * (c.n_experts / c.n_group) >= c.k),
             "MoE gate: groups of {} experts, {} kept, cannot supply top-{} (or hold a top-2)",
             c.n_experts / c.n_group, c.topk_group, c.k);
}

template <typename T>
T sigmoid(T x) {
  return T(1) / (T(1) + std::exp(-x));
}

}  // namespace

template <typename T>
void moe_gate_forward(const GateConfig& c, const T* logits, const T* bias, int64_t tokens,
                      int32_t* experts, T* weights) {
  check_gate(c);
  const int64_t e = c.n_experts, k = c.k;
  // The selection rule is model/moe.h's, shared with inference (noaux_tc: top-2 group sums).
  const ExpertSelection sel{e, k, c.n_group, c.topk_group, true};
  parallel_for(
      tokens,
      [&](int64_t t0, int64_t t1, int) {
        std::vector<T> score(static_cast<size_t>(e)), choice(score), group_score;
        std::vector<int32_t> idx;
        for (int64_t t = t0; t < t1; ++t) {
          const T* l = logits + t * e;
          for (int64_t i = 0; i < e; ++i) {
            score[size_t(i)] = sigmoid(l[i]);
            choice[size_t(i)] = score[size_t(i)] + (bias ? bias[i] : T(0));
          }
          int32_t* ex = experts + t * k;
          T* w = weights + t * k;
          select_experts(sel, choice.data(), ex, idx, group_score);
          T sum = 0;
          for (int64_t j = 0; j < k; ++j) sum += w[j] = score[size_t(ex[j])];
          const T scale = T(c.routed_scaling_factor);
          for (int64_t j = 0; j < k; ++j)
            w[j] = (c.norm_topk_prob ? w[j] / (sum + T(1e-20)) : w[j]) * scale;
        }
      },
      16);
}

template <typename T>
void moe_gate_backward(const GateConfig& c, const T* logits, const int32_t* experts,
                       const T* dweights, int64_t tokens, T* dlogits) {
  check_gate(c);
  if (!dlogits) return;
  const int64_t e = c.n_experts, k = c.k;
  const double scale = c.routed_scaling_factor;
  // w_j = scale·s_j/S, S = Σ_selected s (+1e-20): ∂w_j/∂s_m = scale·(δ_jm/S − s_j/S²), so
  // ds_m = scale·(dw_m − Σ_j dw_j·s_j/S)/S; then through the sigmoid, ds·s·(1 − s).
  parallel_for(
      tokens,
      [&](int64_t t0, int64_t t1, int) {
        std::vector<double> s(static_cast<size_t>(k));
        for (int64_t t = t0; t < t1; ++t) {
          const int32_t* ex = experts + t * k;
          const T* dw = dweights + t * k;
          double sum = 0, dot = 0;
          for (int64_t j = 0; j < k; ++j) {
            DSV3_ASSERT(ex[j] >= 0 && ex[j] < e);
            sum += s[size_t(j)] = 1.0 / (1.0 + std::exp(-double(logits[t * e + ex[j]])));
            dot += double(dw[j]) * s[size_t(j)];
          }
          sum += 1e-20;
          for (int64_t j = 0; j < k; ++j) {
            const double ds = c.norm_topk_prob ? scale * (double(dw[j]) - dot / sum) / sum
                                               : scale * double(dw[j]);
            dlogits[t * e + ex[j]] += T(ds * s[size_t(j)] * (1.0 - s[size_t(j)]));
          }
        }
      },
      16);
}

template <typename T>
T balance_loss(const T* logits, const int32_t* experts, int64_t tokens, int64_t n_experts,
               int64_t k, T alpha, T* dlogits) {
  if (tokens == 0) return T(0);
  const int64_t e = n_experts;
  std::vector<double> f(size_t(e), 0.0);
  for (int64_t i = 0; i < tokens * k; ++i) {
    DSV3_CHECK(experts[i] >= 0 && experts[i] < e, "balance loss: expert index {} outside [0, {})",
               experts[i], e);
    f[size_t(experts[i])] += 1.0;
  }
  for (auto& x : f) x *= double(e) / double(k * tokens);
  // L = alpha/T · Σ_t Σ_i f_i·s'_{i,t}: with g_i = alpha·f_i/T (dL/ds'_{i,t}),
  // ds_{i,t} = (g_i − Σ_j g_j·s'_{j,t}) / S_t, then through the sigmoid.
  const double g_scale = double(alpha) / double(tokens);
  double loss = 0;
  std::vector<double> s(static_cast<size_t>(e));
  for (int64_t t = 0; t < tokens; ++t) {
    const T* l = logits + t * e;
    double sum = 0;
    for (int64_t i = 0; i < e; ++i) sum += s[size_t(i)] = 1.0 / (1.0 + std::exp(-double(l[i])));
    double gs = 0;  // Σ_i g_i·s'_i
    for (int64_t i = 0; i < e; ++i) gs += g_scale * f[size_t(i)] * s[size_t(i)] / sum;
    loss += gs;
    if (dlogits) {
      for (int64_t i = 0; i < e; ++i) {
        const double ds = (g_scale * f[size_t(i)] - gs) / sum;
        dlogits[t * e + i] += T(ds * s[size_t(i)] * (1.0 - s[size_t(i)]));
      }
    }
  }
  return T(loss);
}

#define DSV3_INSTANTIATE(T)                                                                        \
  template void moe_gate_forward<T>(const GateConfig&, const T*, const T*, int64_t, int32_t*, T*); \
  template void moe_gate_backward<T>(const GateConfig&, const T*, const int32_t*, const T*,        \
                                     int64_t, T*);                                                 \
  template T balance_loss<T>(const T*, const int32_t*, int64_t, int64_t, int64_t, T, T*);
DSV3_INSTANTIATE(float)
DSV3_INSTANTIATE(double)
#undef DSV3_INSTANTIATE

}  // namespace dsv3::train

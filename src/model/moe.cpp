#include "model/moe.h"

#include <algorithm>
#include <cmath>

namespace dsv3 {

Routing route_tokens(const ModelConfig& c, const float* logits, const float* bias, int64_t tokens) {
  const int64_t e = c.n_routed_experts, k = c.num_experts_per_tok;
  const bool sigmoid = c.scoring_func == "sigmoid";
  Routing r;
  r.tokens = tokens;
  r.k = k;
  r.expert.resize(size_t(tokens * k));
  r.weight.resize(size_t(tokens * k));
  std::vector<float> score(static_cast<size_t>(e)), choice(score), group_score;
  std::vector<int32_t> idx;
  const bool grouped = c.topk_method == "noaux_tc" || c.topk_method == "group_limited_greedy";
  const ExpertSelection sel{e, k, grouped ? c.n_group : 1, grouped ? c.topk_group : 1,
                            c.topk_method == "noaux_tc"};
  for (int64_t t = 0; t < tokens; ++t) {
    const float* l = logits + t * e;
    if (sigmoid) {
      for (int64_t i = 0; i < e; ++i) score[size_t(i)] = 1.0f / (1.0f + std::exp(-l[i]));
    } else {
      const float mx = *std::max_element(l, l + e);
      double sum = 0;
      for (int64_t i = 0; i < e; ++i) sum += score[size_t(i)] = std::exp(l[i] - mx);
      for (int64_t i = 0; i < e; ++i) score[size_t(i)] = float(score[size_t(i)] / sum);
    }
    for (int64_t i = 0; i < e; ++i) choice[size_t(i)] = score[size_t(i)] + (bias ? bias[i] : 0.0f);

    int32_t* ex = r.expert.data() + t * k;
    float* w = r.weight.data() + t * k;
    select_experts(sel, choice.data(), ex, idx, group_score);
    float sum = 0;
    for (int64_t j = 0; j < k; ++j) sum += w[j] = score[size_t(ex[j])];
    // V3 (sigmoid): normalise if asked, then scale. V2 (softmax): normalise or scale.
    const bool normalise = c.norm_topk_prob && (sigmoid || k > 1);
    const float scale = sigmoid || !normalise ? float(c.routed_scaling_factor) : 1.0f;
    for (int64_t j = 0; j < k; ++j) w[j] = (normalise ? w[j] / (sum + 1e-20f) : w[j]) * scale;
  }
  return r;
}

}  // namespace dsv3

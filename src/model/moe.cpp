#include "model/moe.h"

#include <algorithm>
#include <cmath>
#include <limits>
#include <numeric>

namespace dsv3 {

namespace {

// Indices of the k largest values (ties to the lower index, like a stable sort).
void top_k(const float* v, int64_t n, int64_t k, int32_t* out) {
  std::vector<int32_t> idx(static_cast<size_t>(n));
  std::iota(idx.begin(), idx.end(), 0);
  std::partial_sort(idx.begin(), idx.begin() + k, idx.end(),
                    [&](int32_t a, int32_t b) { return v[a] > v[b] || (v[a] == v[b] && a < b); });
  std::copy(idx.begin(), idx.begin() + k, out);
}

}  // namespace

Routing route_tokens(const ModelConfig& c, const float* logits, const float* bias, int64_t tokens) {
  const int64_t e = c.n_routed_experts, k = c.num_experts_per_tok;
  const int64_t groups = c.n_group, per_group = e / groups;
  const bool sigmoid = c.scoring_func == "sigmoid";
  Routing r;
  r.tokens = tokens;
  r.k = k;
  r.expert.resize(size_t(tokens * k));
  r.weight.resize(size_t(tokens * k));
  std::vector<float> score(static_cast<size_t>(e)), choice(score),
      group_score(static_cast<size_t>(groups));
  std::vector<int32_t> kept(static_cast<size_t>(groups));
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

    const bool grouped = c.topk_method == "noaux_tc" || c.topk_method == "group_limited_greedy";
    if (grouped && groups > 1) {
      // Group score: sum of the top-2 biased scores (noaux_tc) or the max (V2); the groups
      // not kept are excluded with -inf, as DeepSeek's code does.
      for (int64_t g = 0; g < groups; ++g) {
        const float* s = choice.data() + g * per_group;
        if (c.topk_method == "noaux_tc") {
          float a = -INFINITY, b = -INFINITY;
          for (int64_t i = 0; i < per_group; ++i) {
            if (s[i] > a) {
              b = a;
              a = s[i];
            } else if (s[i] > b) {
              b = s[i];
            }
          }
          group_score[size_t(g)] = a + b;
        } else {
          group_score[size_t(g)] = *std::max_element(s, s + per_group);
        }
      }
      top_k(group_score.data(), groups, c.topk_group, kept.data());
      std::vector<bool> keep(static_cast<size_t>(groups), false);
      for (int64_t g = 0; g < c.topk_group; ++g) keep[size_t(kept[size_t(g)])] = true;
      for (int64_t i = 0; i < e; ++i)
        if (!keep[size_t(i / per_group)]) choice[size_t(i)] = -INFINITY;
    }
    int32_t* ex = r.expert.data() + t * k;
    float* w = r.weight.data() + t * k;
    top_k(choice.data(), e, k, ex);
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

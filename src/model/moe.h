// DeepSeekMoE routing (MODEL_SPEC §5): which experts each token uses and with what weight.
#pragma once

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <numeric>
#include <vector>

#include "io/config.h"

namespace dsv3 {

struct Routing {
  int64_t tokens = 0, k = 0;
  std::vector<int32_t> expert;  // [tokens, k]
  std::vector<float> weight;    // [tokens, k], final gating weights (normalised and scaled)
};

// Which experts a token uses, given its biased scores: the one selection rule shared by
// inference (route_tokens) and training (train::moe_gate_forward), for float and double.
struct ExpertSelection {
  int64_t n_experts = 0, k = 0, n_group = 1, topk_group = 1;
  bool top2_group_score = true;  // group score: sum of the top-2 (noaux_tc) or the max (V2)
};

// Indices of the k largest values of v[0, n), ties to the lower index.
template <typename T>
void top_k_indices(const T* v, int64_t n, int64_t k, int32_t* out, std::vector<int32_t>& idx) {
  idx.resize(static_cast<size_t>(n));
  std::iota(idx.begin(), idx.end(), 0);
  std::partial_sort(idx.begin(), idx.begin() + k, idx.end(),
                    [&](int32_t a, int32_t b) { return v[a] > v[b] || (v[a] == v[b] && a < b); });
  std::copy(idx.begin(), idx.begin() + k, out);
}

// Writes the k chosen experts (descending by score) to `out`. With groups, the groups not
// kept are excluded with -inf in `choice` (DeepSeek's code; HF uses 0, the same whenever all
// s + b > 0). `idx` and `group_score` are scratch.
template <typename T>
void select_experts(const ExpertSelection& s, T* choice, int32_t* out, std::vector<int32_t>& idx,
                    std::vector<T>& group_score) {
  const int64_t e = s.n_experts, groups = s.n_group, per_group = e / groups;
  if (groups > 1) {
    group_score.resize(static_cast<size_t>(groups));
    for (int64_t g = 0; g < groups; ++g) {
      const T* v = choice + g * per_group;
      T a = -INFINITY, b = -INFINITY;
      for (int64_t i = 0; i < per_group; ++i) {
        if (v[i] > a) {
          b = a;
          a = v[i];
        } else if (v[i] > b) {
          b = v[i];
        }
      }
      group_score[size_t(g)] = s.top2_group_score ? a + b : a;
    }
    std::vector<int32_t> kept(static_cast<size_t>(s.topk_group));
    top_k_indices(group_score.data(), groups, s.topk_group, kept.data(), idx);
    std::vector<bool> keep(static_cast<size_t>(groups), false);
    for (int32_t g : kept) keep[size_t(g)] = true;
    for (int64_t i = 0; i < e; ++i)
      if (!keep[size_t(i / per_group)]) choice[i] = -INFINITY;
  }
  top_k_indices(choice, e, s.k, out, idx);
}

// logits: router outputs [tokens, n_routed_experts] (f32). bias: e_score_correction_bias
// (sigmoid/noaux_tc) or null. Selection uses the biased scores, weights the unbiased ones.
Routing route_tokens(const ModelConfig& c, const float* logits, const float* bias, int64_t tokens);

}  // namespace dsv3

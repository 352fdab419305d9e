// DeepSeekMoE routing (MODEL_SPEC §5): which experts each token uses and with what weight.
#pragma once

#include <cstdint>
#include <vector>

#include "io/config.h"

namespace dsv3 {

struct Routing {
  int64_t tokens = 0, k = 0;
  std::vector<int32_t> expert;  // [tokens, k]
  std::vector<float> weight;    // [tokens, k], final gating weights (normalised and scaled)
};

// logits: router outputs [tokens, n_routed_experts] (f32). bias: e_score_correction_bias
// (sigmoid/noaux_tc) or null. Selection uses the biased scores, weights the unbiased ones.
Routing route_tokens(const ModelConfig& c, const float* logits, const float* bias, int64_t tokens);

}  // namespace dsv3

// Weight bytes a decoded token reads, shared by the CPU and CUDA decode benchmarks (both report
// achieved bandwidth = these bytes × tokens/s), and their --batch list parser.
#pragma once

#include <string>
#include <vector>

#include "model/weights.h"

namespace dsv3::bench {

inline size_t linear_bytes(const Linear& l) {
  return l.weight.nbytes() + (l.scale_inv.defined() ? l.scale_inv.nbytes() : 0);
}
inline size_t mlp_bytes(const MlpWeights& m) {
  return linear_bytes(m.gate) + linear_bytes(m.up) + linear_bytes(m.down);
}

// Weight bytes one decoded token reads: every layer's attention and norms, the dense MLP or
// the router + shared experts + k routed experts, and the output head.
inline size_t bytes_per_token(const ModelWeights& w) {
  const ModelConfig& c = w.config;
  size_t b = size_t(c.hidden_size) * dtype_size(w.embed.dtype()) + w.final_norm.nbytes() +
             w.lm_head.nbytes();
  for (const LayerWeights& L : w.layers) {
    const AttentionWeights& a = L.attn;
    b += L.input_norm.nbytes() + L.post_attention_norm.nbytes();
    b += c.has_q_lora() ? linear_bytes(a.q_a) + linear_bytes(a.q_b) + a.q_a_norm.nbytes()
                        : linear_bytes(a.q);
    b += linear_bytes(a.kv_a) + a.kv_a_norm.nbytes() + linear_bytes(a.kv_b) + linear_bytes(a.o);
    if (!L.is_moe) {
      b += mlp_bytes(L.mlp);
    } else {
      b += L.moe.gate.nbytes() + (L.moe.has_shared ? mlp_bytes(L.moe.shared) : 0);
      b += size_t(c.num_experts_per_tok) * mlp_bytes(L.moe.experts[0]);
    }
  }
  return b;
}

inline std::vector<int> parse_list(const std::string& s) {
  std::vector<int> v;
  size_t i = 0;
  while (i < s.size()) {
    size_t j = s.find(',', i);
    if (j == std::string::npos) j = s.size();
    v.push_back(std::stoi(s.substr(i, j - i)));
    i = j + 1;
  }
  return v;
}

}  // namespace dsv3::bench

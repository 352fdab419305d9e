#include "model/layout.h"

#include <fmt/format.h>

namespace dsv3 {

namespace {

void add_layer(const ModelConfig& c, int64_t i, bool mtp, std::vector<TensorSpec>& out) {
  const std::string p = fmt::format("model.layers.{}.", i);
  const int64_t h = c.hidden_size, heads = c.num_attention_heads;
  auto add = [&](const std::string& name, Shape shape, TensorRole role, int64_t expert = -1) {
    out.push_back({p + name, std::move(shape), role, i, expert, mtp});
  };
  if (mtp) {
    add("enorm.weight", {h}, TensorRole::kNorm);
    add("hnorm.weight", {h}, TensorRole::kNorm);
    add("eh_proj.weight", {h, 2 * h}, TensorRole::kProjection);
    add("shared_head.norm.weight", {h}, TensorRole::kNorm);
    add("shared_head.head.weight", {c.vocab_size, h}, TensorRole::kEmbedding);
  }
  add("input_layernorm.weight", {h}, TensorRole::kNorm);
  add("post_attention_layernorm.weight", {h}, TensorRole::kNorm);
  if (c.has_q_lora()) {
    add("self_attn.q_a_proj.weight", {c.q_lora_rank, h}, TensorRole::kProjection);
    add("self_attn.q_a_layernorm.weight", {c.q_lora_rank}, TensorRole::kNorm);
    add("self_attn.q_b_proj.weight", {heads * c.qk_head_dim(), c.q_lora_rank},
        TensorRole::kProjection);
  } else {
    add("self_attn.q_proj.weight", {heads * c.qk_head_dim(), h}, TensorRole::kProjection);
  }
  add("self_attn.kv_a_proj_with_mqa.weight", {c.kv_lora_rank + c.qk_rope_head_dim, h},
      TensorRole::kProjection);
  add("self_attn.kv_a_layernorm.weight", {c.kv_lora_rank}, TensorRole::kNorm);
  add("self_attn.kv_b_proj.weight", {heads * (c.qk_nope_head_dim + c.v_head_dim), c.kv_lora_rank},
      TensorRole::kProjection);
  add("self_attn.o_proj.weight", {h, heads * c.v_head_dim}, TensorRole::kProjection);
  auto add_mlp = [&](const std::string& q, int64_t inter, int64_t expert) {
    add(q + "gate_proj.weight", {inter, h}, TensorRole::kProjection, expert);
    add(q + "up_proj.weight", {inter, h}, TensorRole::kProjection, expert);
    add(q + "down_proj.weight", {h, inter}, TensorRole::kProjection, expert);
  };
  if (!c.is_moe_layer(i)) {
    add_mlp("mlp.", c.intermediate_size, -1);
    return;
  }
  add("mlp.gate.weight", {c.n_routed_experts, h}, TensorRole::kRouter);
  if (c.topk_method == "noaux_tc")
    add("mlp.gate.e_score_correction_bias", {c.n_routed_experts}, TensorRole::kBias);
  for (int64_t e = 0; e < c.n_routed_experts; ++e)
    add_mlp(fmt::format("mlp.experts.{}.", e), c.moe_intermediate_size, e);
  if (c.n_shared_experts > 0)
    add_mlp("mlp.shared_experts.", c.n_shared_experts * c.moe_intermediate_size, -1);
}

}  // namespace

std::vector<TensorSpec> checkpoint_layout(const ModelConfig& c) {
  std::vector<TensorSpec> out;
  out.push_back(
      {"model.embed_tokens.weight", {c.vocab_size, c.hidden_size}, TensorRole::kEmbedding});
  for (int64_t i = 0; i < c.num_hidden_layers; ++i) add_layer(c, i, false, out);
  for (int64_t k = 0; k < c.num_nextn_predict_layers; ++k)
    add_layer(c, c.num_hidden_layers + k, true, out);
  out.push_back({"model.norm.weight", {c.hidden_size}, TensorRole::kNorm});
  if (!c.tie_word_embeddings)
    out.push_back({"lm_head.weight", {c.vocab_size, c.hidden_size}, TensorRole::kEmbedding});
  return out;
}

ParamCounts count_params(const ModelConfig& c) {
  ParamCounts p;
  for (const TensorSpec& t : checkpoint_layout(c)) {
    const int64_t n = shape_numel(t.shape);
    if (t.mtp) {
      p.mtp += n;
      continue;
    }
    p.total += n;
    if (t.role == TensorRole::kEmbedding) p.embedding += n;
    // A token uses num_experts_per_tok of the n_routed_experts (all the same size); the
    // input embedding is a table lookup, not compute, and DeepSeek's counts leave it out.
    if (t.expert < c.num_experts_per_tok && t.name != "model.embed_tokens.weight") p.activated += n;
  }
  if (c.tie_word_embeddings) p.embedding += c.vocab_size * c.hidden_size;
  return p;
}

}  // namespace dsv3

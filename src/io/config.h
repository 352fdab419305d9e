// config.json of DeepSeek-V3 / V2 checkpoints (MODEL_SPEC §1), HF style. Every key the
// model uses is parsed and validated; `rope_scaling` may also appear as `rope_parameters`
// (newer HF configs).
#pragma once

#include <nlohmann/json_fwd.hpp>

#include <cstdint>
#include <string>

namespace dsv3 {

struct RopeScaling {
  std::string type = "default";  // "default" (none) or "yarn"
  double factor = 1.0;
  int64_t original_max_position_embeddings = 0;
  double beta_fast = 32.0, beta_slow = 1.0;
  // Absent keys matter (MODEL_SPEC §4): HF scales cos/sin by get_mscale(factor) when
  // mscale/mscale_all_dim are missing, and skips the softmax correction when
  // mscale_all_dim is missing or 0.
  bool has_mscale = false, has_mscale_all_dim = false;
  double mscale = 1.0, mscale_all_dim = 0.0;
  bool is_yarn() const { return type == "yarn"; }
};

struct QuantConfig {
  bool fp8 = false;  // quant_method "fp8": *_proj weights are F8_E4M3 with block scales
  std::string fmt = "e4m3";
  std::string activation_scheme = "dynamic";
  int64_t block_n = 128, block_k = 128;  // weight_block_size [out, in]
};

struct ModelConfig {
  std::string model_type = "deepseek_v3";
  int64_t vocab_size = 0;
  int64_t hidden_size = 0;
  int64_t intermediate_size = 0;
  int64_t moe_intermediate_size = 0;
  int64_t num_hidden_layers = 0;
  int64_t first_k_dense_replace = 0;
  int64_t moe_layer_freq = 1;
  int64_t num_attention_heads = 0;
  int64_t num_key_value_heads = 0;
  int64_t q_lora_rank = 0;  // 0: plain q_proj (config null)
  int64_t kv_lora_rank = 0;
  int64_t qk_nope_head_dim = 0, qk_rope_head_dim = 0, v_head_dim = 0;
  int64_t n_routed_experts = 0;  // 0: dense model
  int64_t n_shared_experts = 0;
  int64_t num_experts_per_tok = 0;
  int64_t n_group = 1, topk_group = 1;
  std::string scoring_func = "sigmoid";  // "sigmoid" (V3) or "softmax" (V2)
  std::string topk_method = "noaux_tc";  // "noaux_tc", "greedy", "group_limited_greedy"
  bool norm_topk_prob = true;
  double routed_scaling_factor = 1.0;
  std::string hidden_act = "silu";
  double rope_theta = 10000.0;
  RopeScaling rope;
  int64_t max_position_embeddings = 4096;
  double rms_norm_eps = 1e-6;
  int64_t num_nextn_predict_layers = 0;
  bool tie_word_embeddings = false;
  int64_t bos_token_id = 0, eos_token_id = 1;
  QuantConfig quant;
  std::string torch_dtype = "bfloat16";

  int64_t qk_head_dim() const { return qk_nope_head_dim + qk_rope_head_dim; }
  bool has_q_lora() const { return q_lora_rank > 0; }
  // Layer i (main layers and MTP layers alike) uses MoE rather than the dense MLP.
  bool is_moe_layer(int64_t i) const {
    return n_routed_experts > 0 && i >= first_k_dense_replace && i % moe_layer_freq == 0;
  }
  // Softmax scale of attention, with YaRN's mscale² correction (MODEL_SPEC §3).
  double softmax_scale() const;
  // Factor multiplying cos/sin of the rotary embedding (MODEL_SPEC §4).
  double rope_attention_factor() const;

  // `source` names the file in error messages.
  static ModelConfig from_json(const nlohmann::json& j, const std::string& source);
  static ModelConfig load(const std::string& path);  // a config.json or a checkpoint dir
  nlohmann::json to_json() const;
  // Checks the numbers fit together (divisibility, ranges); throws naming the key.
  void validate(const std::string& source) const;
};

}  // namespace dsv3

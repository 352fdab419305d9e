#include "io/config.h"

#include <cmath>
#include <filesystem>
#include <fstream>
#include <nlohmann/json.hpp>

#include "core/error.h"

namespace dsv3 {

namespace {

using json = nlohmann::json;

// Reads an integer key; `null` gives `null_value` (q_lora_rank, n_routed_experts may be null).
int64_t get_int(const json& j, const char* key, int64_t def, const std::string& src,
                int64_t null_value = 0) {
  auto it = j.find(key);
  if (it == j.end()) return def;
  if (it->is_null()) return null_value;
  DSV3_CHECK(it->is_number_integer() ||
                 (it->is_number_float() && std::floor(it->get<double>()) == it->get<double>()),
             "{}: '{}' must be an integer, got {}", src, key, it->dump());
  return it->is_number_integer() ? it->get<int64_t>() : int64_t(it->get<double>());
}

double get_num(const json& j, const char* key, double def, const std::string& src) {
  auto it = j.find(key);
  if (it == j.end() || it->is_null()) return def;
  DSV3_CHECK(it->is_number(), "{}: '{}' must be a number, got {}", src, key, it->dump());
  return it->get<double>();
}

bool get_bool(const json& j, const char* key, bool def, const std::string& src) {
  auto it = j.find(key);
  if (it == j.end() || it->is_null()) return def;
  DSV3_CHECK(it->is_boolean(), "{}: '{}' must be true or false, got {}", src, key, it->dump());
  return it->get<bool>();
}

std::string get_str(const json& j, const char* key, const std::string& def,
                    const std::string& src) {
  auto it = j.find(key);
  if (it == j.end() || it->is_null()) return def;
  DSV3_CHECK(it->is_string(), "{}: '{}' must be a string, got {}", src, key, it->dump());
  return it->get<std::string>();
}

double get_mscale(double scale, double m) {
  return scale <= 1.0 ? 1.0 : 0.1 * m * std::log(scale) + 1.0;
}

}  // namespace

double ModelConfig::softmax_scale() const {
  double s = 1.0 / std::sqrt(double(qk_head_dim()));
  if (rope.is_yarn() && rope.has_mscale_all_dim && rope.mscale_all_dim != 0.0) {
    const double m = get_mscale(rope.factor, rope.mscale_all_dim);
    s *= m * m;
  }
  return s;
}

double ModelConfig::rope_attention_factor() const {
  if (!rope.is_yarn()) return 1.0;
  if (rope.has_mscale && rope.mscale != 0.0 && rope.has_mscale_all_dim &&
      rope.mscale_all_dim != 0.0)
    return get_mscale(rope.factor, rope.mscale) / get_mscale(rope.factor, rope.mscale_all_dim);
  return get_mscale(rope.factor, 1.0);
}

ModelConfig ModelConfig::from_json(const json& j, const std::string& src) {
  DSV3_CHECK(j.is_object(), "{}: config must be a JSON object", src);
  ModelConfig c;
  c.model_type = get_str(j, "model_type", c.model_type, src);
  c.vocab_size = get_int(j, "vocab_size", 0, src);
  c.hidden_size = get_int(j, "hidden_size", 0, src);
  c.intermediate_size = get_int(j, "intermediate_size", 0, src);
  c.moe_intermediate_size = get_int(j, "moe_intermediate_size", 0, src);
  c.num_hidden_layers = get_int(j, "num_hidden_layers", 0, src);
  c.first_k_dense_replace = get_int(j, "first_k_dense_replace", 0, src);
  c.moe_layer_freq = get_int(j, "moe_layer_freq", 1, src, 1);
  c.num_attention_heads = get_int(j, "num_attention_heads", 0, src);
  c.num_key_value_heads =
      get_int(j, "num_key_value_heads", c.num_attention_heads, src, c.num_attention_heads);
  c.q_lora_rank = get_int(j, "q_lora_rank", 0, src);
  c.kv_lora_rank = get_int(j, "kv_lora_rank", 0, src);
  c.qk_nope_head_dim = get_int(j, "qk_nope_head_dim", 0, src);
  c.qk_rope_head_dim = get_int(j, "qk_rope_head_dim", 0, src);
  c.v_head_dim = get_int(j, "v_head_dim", 0, src);
  c.n_routed_experts = get_int(j, "n_routed_experts", 0, src);
  c.n_shared_experts = get_int(j, "n_shared_experts", 0, src);
  c.num_experts_per_tok = get_int(j, "num_experts_per_tok", 0, src);
  c.n_group = get_int(j, "n_group", 1, src, 1);
  c.topk_group = get_int(j, "topk_group", 1, src, 1);
  // V2 configs without these keys use softmax routing.
  const bool v2 = c.model_type == "deepseek_v2";
  c.scoring_func = get_str(j, "scoring_func", v2 ? "softmax" : "sigmoid", src);
  c.topk_method = get_str(j, "topk_method", v2 ? "greedy" : "noaux_tc", src);
  c.norm_topk_prob = get_bool(j, "norm_topk_prob", !v2, src);
  c.routed_scaling_factor = get_num(j, "routed_scaling_factor", 1.0, src);
  c.hidden_act = get_str(j, "hidden_act", "silu", src);
  c.max_position_embeddings = get_int(j, "max_position_embeddings", 4096, src);
  c.rms_norm_eps = get_num(j, "rms_norm_eps", 1e-6, src);
  c.num_nextn_predict_layers = get_int(j, "num_nextn_predict_layers", 0, src);
  c.tie_word_embeddings = get_bool(j, "tie_word_embeddings", false, src);
  c.bos_token_id = get_int(j, "bos_token_id", 0, src);
  c.eos_token_id = get_int(j, "eos_token_id", 1, src);
  c.torch_dtype = get_str(j, "torch_dtype", get_str(j, "dtype", "bfloat16", src), src);

  // RoPE: `rope_theta` at top level, scaling in `rope_scaling`; newer HF nests both in
  // `rope_parameters` (with rope_type "default" meaning no scaling).
  c.rope_theta = get_num(j, "rope_theta", 10000.0, src);
  const json* rs = nullptr;
  if (auto it = j.find("rope_scaling"); it != j.end() && !it->is_null()) rs = &*it;
  if (auto it = j.find("rope_parameters"); !rs && it != j.end() && !it->is_null()) rs = &*it;
  if (rs) {
    DSV3_CHECK(rs->is_object(), "{}: 'rope_scaling' must be an object", src);
    c.rope_theta = get_num(*rs, "rope_theta", c.rope_theta, src);
    std::string type = get_str(*rs, "type", "", src);
    type = get_str(*rs, "rope_type", type.empty() ? "default" : type, src);
    DSV3_CHECK(type == "default" || type == "yarn",
               "{}: rope scaling type '{}' is not supported (DeepSeek models use 'yarn')", src,
               type);
    c.rope.type = type;
    if (c.rope.is_yarn()) {
      c.rope.factor = get_num(*rs, "factor", 1.0, src);
      c.rope.original_max_position_embeddings =
          get_int(*rs, "original_max_position_embeddings", c.max_position_embeddings, src);
      c.rope.beta_fast = get_num(*rs, "beta_fast", 32.0, src);
      c.rope.beta_slow = get_num(*rs, "beta_slow", 1.0, src);
      c.rope.has_mscale = rs->contains("mscale") && !(*rs)["mscale"].is_null();
      c.rope.mscale = get_num(*rs, "mscale", 1.0, src);
      c.rope.has_mscale_all_dim =
          rs->contains("mscale_all_dim") && !(*rs)["mscale_all_dim"].is_null();
      c.rope.mscale_all_dim = get_num(*rs, "mscale_all_dim", 0.0, src);
    }
  }

  if (auto it = j.find("quantization_config"); it != j.end() && !it->is_null()) {
    const json& q = *it;
    DSV3_CHECK(q.is_object(), "{}: 'quantization_config' must be an object", src);
    const std::string method = get_str(q, "quant_method", "", src);
    DSV3_CHECK(method == "fp8", "{}: quant_method '{}' is not supported (only 'fp8')", src, method);
    c.quant.fp8 = true;
    c.quant.fmt = get_str(q, "fmt", "e4m3", src);
    DSV3_CHECK(c.quant.fmt == "e4m3", "{}: fp8 format '{}' is not supported (only e4m3)", src,
               c.quant.fmt);
    c.quant.activation_scheme = get_str(q, "activation_scheme", "dynamic", src);
    if (auto b = q.find("weight_block_size"); b != q.end()) {
      DSV3_CHECK(b->is_array() && b->size() == 2 && (*b)[0].is_number_integer() &&
                     (*b)[1].is_number_integer(),
                 "{}: weight_block_size must be [rows, cols], got {}", src, b->dump());
      c.quant.block_n = (*b)[0].get<int64_t>();
      c.quant.block_k = (*b)[1].get<int64_t>();
    }
  }
  c.validate(src);
  return c;
}

void ModelConfig::validate(const std::string& src) const {
  auto positive = [&](int64_t v, const char* key) {
    DSV3_CHECK(v > 0, "{}: '{}' must be positive, got {}", src, key, v);
  };
  positive(vocab_size, "vocab_size");
  positive(hidden_size, "hidden_size");
  positive(num_hidden_layers, "num_hidden_layers");
  positive(num_attention_heads, "num_attention_heads");
  positive(kv_lora_rank, "kv_lora_rank");
  positive(qk_nope_head_dim, "qk_nope_head_dim");
  positive(qk_rope_head_dim, "qk_rope_head_dim");
  positive(v_head_dim, "v_head_dim");
  positive(max_position_embeddings, "max_position_embeddings");
  DSV3_CHECK(q_lora_rank >= 0, "{}: 'q_lora_rank' must be null or positive", src);
  DSV3_CHECK(qk_rope_head_dim % 2 == 0, "{}: 'qk_rope_head_dim' must be even, got {}", src,
             qk_rope_head_dim);
  DSV3_CHECK(num_key_value_heads == num_attention_heads,
             "{}: MLA needs num_key_value_heads == num_attention_heads ({} vs {})", src,
             num_key_value_heads, num_attention_heads);
  DSV3_CHECK(first_k_dense_replace >= 0, "{}: 'first_k_dense_replace' must be >= 0", src);
  DSV3_CHECK(moe_layer_freq > 0, "{}: 'moe_layer_freq' must be positive", src);
  DSV3_CHECK(num_nextn_predict_layers >= 0, "{}: 'num_nextn_predict_layers' must be >= 0", src);
  DSV3_CHECK(hidden_act == "silu", "{}: hidden_act '{}' is not supported (only silu)", src,
             hidden_act);
  DSV3_CHECK(rms_norm_eps > 0, "{}: 'rms_norm_eps' must be positive", src);
  DSV3_CHECK(rope_theta > 0, "{}: 'rope_theta' must be positive", src);
  bool any_dense = first_k_dense_replace > 0 || n_routed_experts == 0 || moe_layer_freq > 1;
  if (any_dense) positive(intermediate_size, "intermediate_size");
  if (n_routed_experts > 0) {
    positive(moe_intermediate_size, "moe_intermediate_size");
    positive(num_experts_per_tok, "num_experts_per_tok");
    DSV3_CHECK(num_experts_per_tok <= n_routed_experts,
               "{}: num_experts_per_tok ({}) exceeds n_routed_experts ({})", src,
               num_experts_per_tok, n_routed_experts);
    DSV3_CHECK(n_group > 0 && n_routed_experts % n_group == 0,
               "{}: n_routed_experts ({}) must be divisible by n_group ({})", src, n_routed_experts,
               n_group);
    DSV3_CHECK(topk_group > 0 && topk_group <= n_group,
               "{}: topk_group ({}) must be between 1 and n_group ({})", src, topk_group, n_group);
    DSV3_CHECK(scoring_func == "sigmoid" || scoring_func == "softmax",
               "{}: scoring_func '{}' is not supported (sigmoid or softmax)", src, scoring_func);
    DSV3_CHECK(topk_method == "noaux_tc" || topk_method == "greedy" ||
                   topk_method == "group_limited_greedy",
               "{}: topk_method '{}' is not supported (noaux_tc, greedy, group_limited_greedy)",
               src, topk_method);
    // Group scores sum the top-2 experts of each group (MODEL_SPEC §5).
    DSV3_CHECK(topk_method != "noaux_tc" || n_routed_experts / n_group >= 2 || n_group == 1,
               "{}: noaux_tc routing needs at least 2 experts per group", src);
    DSV3_CHECK(num_experts_per_tok <= topk_group * (n_routed_experts / n_group),
               "{}: num_experts_per_tok ({}) exceeds the experts in topk_group ({}) groups", src,
               num_experts_per_tok, topk_group);
  }
  if (rope.is_yarn()) {
    DSV3_CHECK(rope.factor >= 1.0, "{}: rope_scaling.factor must be >= 1, got {}", src,
               rope.factor);
    DSV3_CHECK(rope.original_max_position_embeddings > 0,
               "{}: rope_scaling.original_max_position_embeddings must be positive", src);
  }
  if (quant.fp8)
    DSV3_CHECK(quant.block_n > 0 && quant.block_k > 0, "{}: weight_block_size must be positive",
               src);
}

ModelConfig ModelConfig::load(const std::string& path) {
  std::string file = path;
  if (std::filesystem::is_directory(path))
    file = (std::filesystem::path(path) / "config.json").string();
  std::ifstream in(file);
  DSV3_CHECK(in.good(), "cannot open {}: a checkpoint directory needs a config.json", file);
  json j;
  try {
    j = json::parse(in);
  } catch (const json::exception& e) {
    fail("{} is not valid JSON: {}", file, e.what());
  }
  return from_json(j, file);
}

json ModelConfig::to_json() const {
  json j;
  j["architectures"] = {model_type == "deepseek_v2" ? "DeepseekV2ForCausalLM"
                                                    : "DeepseekV3ForCausalLM"};
  j["model_type"] = model_type;
  j["vocab_size"] = vocab_size;
  j["hidden_size"] = hidden_size;
  j["intermediate_size"] = intermediate_size;
  j["moe_intermediate_size"] = moe_intermediate_size;
  j["num_hidden_layers"] = num_hidden_layers;
  j["first_k_dense_replace"] = first_k_dense_replace;
  j["moe_layer_freq"] = moe_layer_freq;
  j["num_attention_heads"] = num_attention_heads;
  j["num_key_value_heads"] = num_key_value_heads;
  j["q_lora_rank"] = q_lora_rank > 0 ? json(q_lora_rank) : json(nullptr);
  j["kv_lora_rank"] = kv_lora_rank;
  j["qk_nope_head_dim"] = qk_nope_head_dim;
  j["qk_rope_head_dim"] = qk_rope_head_dim;
  j["v_head_dim"] = v_head_dim;
  j["n_routed_experts"] = n_routed_experts > 0 ? json(n_routed_experts) : json(nullptr);
  j["n_shared_experts"] = n_shared_experts;
  j["num_experts_per_tok"] = num_experts_per_tok;
  j["n_group"] = n_group;
  j["topk_group"] = topk_group;
  j["scoring_func"] = scoring_func;
  j["topk_method"] = topk_method;
  j["norm_topk_prob"] = norm_topk_prob;
  j["routed_scaling_factor"] = routed_scaling_factor;
  j["hidden_act"] = hidden_act;
  j["rope_theta"] = rope_theta;
  if (rope.is_yarn()) {
    json r;
    r["type"] = "yarn";
    r["factor"] = rope.factor;
    r["original_max_position_embeddings"] = rope.original_max_position_embeddings;
    r["beta_fast"] = rope.beta_fast;
    r["beta_slow"] = rope.beta_slow;
    if (rope.has_mscale) r["mscale"] = rope.mscale;
    if (rope.has_mscale_all_dim) r["mscale_all_dim"] = rope.mscale_all_dim;
    j["rope_scaling"] = r;
  } else {
    j["rope_scaling"] = nullptr;
  }
  j["max_position_embeddings"] = max_position_embeddings;
  j["rms_norm_eps"] = rms_norm_eps;
  j["num_nextn_predict_layers"] = num_nextn_predict_layers;
  j["tie_word_embeddings"] = tie_word_embeddings;
  j["bos_token_id"] = bos_token_id;
  j["eos_token_id"] = eos_token_id;
  j["torch_dtype"] = torch_dtype;
  j["attention_bias"] = false;
  j["attention_dropout"] = 0.0;
  j["initializer_range"] = 0.02;
  j["use_cache"] = true;
  if (quant.fp8) {
    j["quantization_config"] = {{"quant_method", "fp8"},
                                {"fmt", quant.fmt},
                                {"activation_scheme", quant.activation_scheme},
                                {"weight_block_size", {quant.block_n, quant.block_k}}};
  }
  return j;
}

}  // namespace dsv3

// config.json parsing against DeepSeek's published configs and figures.
#include <gtest/gtest.h>

#include <cmath>
#include <fstream>
#include <nlohmann/json.hpp>

#include "core/error.h"
#include "io/config.h"
#include "model/layout.h"

using namespace dsv3;
using nlohmann::json;

namespace {

std::string config_path(const char* name) {
  return std::string(DSV3_SOURCE_DIR) + "/tests/fixtures/configs/" + name;
}

std::string parse_error(const json& j) {
  try {
    ModelConfig::from_json(j, "cfg.json");
  } catch (const Error& e) {
    return e.what();
  }
  return "(no error)";
}

}  // namespace

TEST(Config, DeepSeekV3) {
  const ModelConfig c = ModelConfig::load(config_path("deepseek_v3.json"));
  EXPECT_EQ(c.hidden_size, 7168);
  EXPECT_EQ(c.q_lora_rank, 1536);
  EXPECT_TRUE(c.rope.is_yarn());
  EXPECT_EQ(c.rope.factor, 40);
  EXPECT_TRUE(c.quant.fp8);
  EXPECT_EQ(c.quant.block_n, 128);
  EXPECT_TRUE(c.is_moe_layer(3));
  EXPECT_FALSE(c.is_moe_layer(2));
  // MODEL_SPEC §3: m = 0.1·ln(40) + 1 for mscale_all_dim 1; s = 192^-0.5·m².
  const double m = 0.1 * std::log(40.0) + 1.0;
  EXPECT_NEAR(c.softmax_scale(), m * m / std::sqrt(192.0), 1e-12);
  EXPECT_NEAR(c.rope_attention_factor(), 1.0, 1e-12);  // mscale == mscale_all_dim
}

TEST(Config, PublishedParameterCounts) {
  // DeepSeek-V3 report: 671B total, 37B activated per token; the MTP module adds ~14B
  // (the released checkpoint is 685B). Activated counts leave out the embedding table.
  const ParamCounts v3 = count_params(ModelConfig::load(config_path("deepseek_v3.json")));
  EXPECT_NEAR(double(v3.total) / 1e9, 671.0, 1.0);
  EXPECT_NEAR(double(v3.activated) / 1e9, 37.0, 0.5);
  EXPECT_NEAR(double(v3.total + v3.mtp) / 1e9, 685.0, 2.0);
  // DeepSeek-V2-Lite: 15.7B total, 2.4B activated.
  const ParamCounts v2 = count_params(ModelConfig::load(config_path("deepseek_v2_lite.json")));
  EXPECT_NEAR(double(v2.total) / 1e9, 15.7, 0.1);
  EXPECT_NEAR(double(v2.activated) / 1e9, 2.4, 0.1);
}

TEST(Config, DeepSeekV2LiteUsesSoftmaxRouting) {
  const ModelConfig c = ModelConfig::load(config_path("deepseek_v2_lite.json"));
  EXPECT_EQ(c.scoring_func, "softmax");
  EXPECT_EQ(c.topk_method, "greedy");
  EXPECT_FALSE(c.has_q_lora());
  EXPECT_FALSE(c.quant.fp8);
  // mscale == mscale_all_dim: cos/sin unscaled, softmax scaled by (0.0707·ln 40 + 1)².
  const double m = 0.1 * 0.707 * std::log(40.0) + 1.0;
  EXPECT_NEAR(c.softmax_scale(), m * m / std::sqrt(192.0), 1e-12);
}

TEST(Config, RopeParametersAndDefaults) {
  json j = json::parse(std::ifstream(config_path("deepseek_v3.json")));
  // Newer HF configs nest RoPE settings under rope_parameters.
  json rp = j["rope_scaling"];
  rp["rope_type"] = "yarn";
  rp.erase("type");
  rp["rope_theta"] = 50000.0;
  rp.erase("mscale");
  rp.erase("mscale_all_dim");
  j.erase("rope_scaling");
  j.erase("rope_theta");
  j["rope_parameters"] = rp;
  const ModelConfig c = ModelConfig::from_json(j, "x");
  EXPECT_EQ(c.rope_theta, 50000.0);
  // Without mscale keys HF scales cos/sin by get_mscale(factor) and leaves the softmax alone.
  EXPECT_NEAR(c.rope_attention_factor(), 0.1 * std::log(40.0) + 1.0, 1e-12);
  EXPECT_NEAR(c.softmax_scale(), 1.0 / std::sqrt(192.0), 1e-12);
}

TEST(Config, RoundTripThroughJson) {
  const ModelConfig a = ModelConfig::load(config_path("deepseek_v3.json"));
  const ModelConfig b = ModelConfig::from_json(a.to_json(), "round trip");
  EXPECT_EQ(a.to_json(), b.to_json());
}

TEST(Config, ErrorsNameTheKey) {
  const json good = json::parse(std::ifstream(config_path("deepseek_v3.json")));
  auto with = [&](const char* key, json v) {
    json j = good;
    j[key] = v;
    return parse_error(j);
  };
  EXPECT_NE(with("hidden_size", "big").find("hidden_size"), std::string::npos);
  EXPECT_NE(with("hidden_size", 0).find("hidden_size"), std::string::npos);
  EXPECT_NE(with("n_group", 7).find("n_group"), std::string::npos);
  EXPECT_NE(with("topk_group", 9).find("topk_group"), std::string::npos);
  EXPECT_NE(with("num_experts_per_tok", 300).find("num_experts_per_tok"), std::string::npos);
  EXPECT_NE(with("scoring_func", "relu").find("scoring_func"), std::string::npos);
  EXPECT_NE(with("num_key_value_heads", 8).find("num_key_value_heads"), std::string::npos);
  EXPECT_NE(with("qk_rope_head_dim", 63).find("qk_rope_head_dim"), std::string::npos);
  EXPECT_NE(with("norm_topk_prob", 3).find("norm_topk_prob"), std::string::npos);
  json q = good;
  q["quantization_config"]["quant_method"] = "gptq";
  EXPECT_NE(parse_error(q).find("gptq"), std::string::npos);
  json r = good;
  r["rope_scaling"]["type"] = "longrope";
  EXPECT_NE(parse_error(r).find("longrope"), std::string::npos);
  EXPECT_NE(parse_error(json::array()).find("object"), std::string::npos);
}

// The training loop: determinism, exact resume, checkpoint rotation, bias balancing,
// divergence handling and config parsing, on a tiny DeepSeek-V3-shaped model (MLA with
// q_lora, a dense and a MoE layer with shared + grouped routed experts, one MTP layer) and a
// synthetic token stream with learnable structure.
#include <gtest/gtest.h>

#include <atomic>
#include <cmath>
#include <filesystem>
#include <fstream>

#include "io/safetensors.h"
#include "test_util.h"
#include "train/checkpoint.h"
#include "train/data.h"
#include "train/trainer.h"

namespace dsv3::train {
namespace {

namespace fs = std::filesystem;
using json = nlohmann::json;
using test_util::error_of;

constexpr int64_t kVocab = 64;

json tiny_model() {
  return json::parse(R"({
    "model_type": "deepseek_v3", "vocab_size": 64, "hidden_size": 32,
    "intermediate_size": 64, "moe_intermediate_size": 16, "num_hidden_layers": 2,
    "first_k_dense_replace": 1, "num_attention_heads": 2, "num_key_value_heads": 2,
    "q_lora_rank": 16, "kv_lora_rank": 16, "qk_nope_head_dim": 8, "qk_rope_head_dim": 8,
    "v_head_dim": 8, "n_routed_experts": 8, "n_shared_experts": 1, "num_experts_per_tok": 2,
    "n_group": 2, "topk_group": 1, "norm_topk_prob": true, "routed_scaling_factor": 2.5,
    "scoring_func": "sigmoid", "topk_method": "noaux_tc", "max_position_embeddings": 64,
    "rms_norm_eps": 1e-6, "num_nextn_predict_layers": 1, "rope_theta": 10000.0
  })");
}

// A stream where each token mostly determines the next (a noisy cycle), in documents.
fs::path make_data(const std::string& tag) {
  const fs::path dir = fs::path(::testing::TempDir()) / ("dsv3_trainer_data_" + tag);
  fs::remove_all(dir);
  fs::create_directories(dir);
  uint64_t s = 12345;
  auto rnd = [&] {
    s = s * 6364136223846793005ull + 1442695040888963407ull;
    return uint32_t(s >> 33);
  };
  for (const char* split : {"train", "val"}) {
    std::vector<uint32_t> tokens;
    std::vector<uint64_t> starts;
    const int docs = std::string(split) == "train" ? 60 : 8;
    for (int d = 0; d < docs; ++d) {
      starts.push_back(tokens.size());
      uint32_t t = rnd() % (kVocab - 1) + 1;
      for (int i = 0; i < 80; ++i) {
        tokens.push_back(t);
        t = rnd() % 8 == 0 ? rnd() % (kVocab - 1) + 1 : (t * 7 + 3) % (kVocab - 1) + 1;
      }
      tokens.push_back(0);  // EOS
    }
    write_shard((dir / (std::string(split) + "-00000.bin")).string(), tokens, starts);
  }
  json meta = {{"vocab_size", kVocab},
               {"eos_id", 0},
               {"train", {{"shards", {"train-00000.bin"}}}},
               {"val", {{"shards", {"val-00000.bin"}}}}};
  std::ofstream(dir / "meta.json") << meta.dump();
  return dir;
}

json base_config(const fs::path& data, const fs::path& out) {
  json j;
  j["model"] = tiny_model();
  j["data"] = data.string();
  j["out"] = out.string();
  j["seq_len"] = 32;
  j["batch_size"] = 4;
  j["steps"] = 12;
  j["seed"] = 3;
  j["optimizer"] = {{"lr", 3e-3}};
  j["schedule"] = {{"warmup", 4}, {"decay_start", 6}, {"decay_steps", 100}, {"min_lr", 3e-4}};
  j["eval"] = {{"every", 5}, {"batches", 2}};
  j["checkpoint"] = {{"every", 4}, {"keep_last", 2}};
  j["log_every"] = 1;
  j["threads"] = 2;
  return j;
}

TrainSummary train(const json& j, TrainOptions o = {}) {
  o.progress = false;
  return run_training(TrainConfig::from_json(j, "test config"), o);
}

// Per-step "loss" values of a run's metrics.jsonl.
std::vector<double> losses(const fs::path& run) {
  std::vector<double> out;
  std::ifstream in(run / "metrics.jsonl");
  std::string line;
  while (std::getline(in, line)) {
    const json j = json::parse(line);
    if (j.contains("loss")) out.push_back(j["loss"].get<double>());
  }
  return out;
}

std::vector<float> weights(const std::string& ckpt) {
  const auto f = SafetensorsFile::open(ckpt + "/model.safetensors");
  std::vector<float> all;
  for (const std::string& n : f->names()) {
    const std::vector<float> v = f->get(n).to_f32_vector();
    all.insert(all.end(), v.begin(), v.end());
  }
  return all;
}

fs::path tmp(const std::string& name) {
  const fs::path p = fs::path(::testing::TempDir()) / name;
  fs::remove_all(p);
  return p;
}

TEST(Trainer, ResumeIsBitIdentical) {
  const fs::path data = make_data("resume");
  const fs::path a = tmp("dsv3_run_a"), b = tmp("dsv3_run_b");
  const TrainSummary sa = train(base_config(data, a));
  EXPECT_EQ(sa.steps, 12);
  // The same run stopped after 6 steps and resumed.
  json jb = base_config(data, b);
  jb["steps"] = 6;
  train(jb);
  jb["steps"] = 12;
  TrainOptions o;
  o.resume = true;
  const TrainSummary sb = train(jb, o);
  EXPECT_EQ(sb.first_step, 6);
  const std::vector<double> la = losses(a), lb = losses(b);
  ASSERT_EQ(la.size(), 12u);
  ASSERT_EQ(lb, la);
  EXPECT_EQ(weights(sb.checkpoint), weights(sa.checkpoint));
  EXPECT_EQ(sb.val_loss, sa.val_loss);
  // Only the last keep_last = 2 checkpoints remain, and `latest` names the final one.
  int n = 0;
  for (const auto& e : fs::directory_iterator(a / "checkpoints"))
    n += e.path().filename().string().starts_with("step-");
  EXPECT_EQ(n, 2);
  EXPECT_EQ(latest_checkpoint(a.string()), sa.checkpoint);
  EXPECT_TRUE(fs::exists(a / "loss.svg"));
}

TEST(Trainer, DeterministicAndLearns) {
  // 200 steps twice on the same seed: the same losses, and the model learns the stream's
  // structure (validation loss far below the uniform log V).
  const fs::path data = make_data("learn");
  const fs::path r1 = tmp("dsv3_run_learn1"), r2 = tmp("dsv3_run_learn2");
  json j = base_config(data, r1);
  j["steps"] = 200;
  j["eval"]["every"] = 0;
  j["checkpoint"]["every"] = 0;
  const TrainSummary s1 = train(j);
  j["out"] = r2.string();
  const TrainSummary s2 = train(j);
  EXPECT_EQ(losses(r1), losses(r2));
  EXPECT_EQ(s1.val_loss, s2.val_loss);
  EXPECT_LT(s1.val_loss, 0.5 * std::log(double(kVocab)));
}

TEST(Trainer, BiasBalancingLowersPeakLoad) {
  // The same run with γ = 0 and γ > 0 (no balance loss): with γ the busiest expert's share
  // of the routed load (max/mean, averaged over the last 20 steps) is lower.
  const fs::path data = make_data("balance");
  auto peak = [&](double gamma, const std::string& name) {
    json j = base_config(data, tmp(name));
    j["steps"] = 100;
    j["eval"]["every"] = 0;
    j["checkpoint"]["every"] = 0;
    j["loss"] = {{"balance_alpha", 0.0}};
    j["balance"] = {{"gamma", gamma}};
    train(j);
    std::ifstream in(fs::path(j["out"].get<std::string>()) / "metrics.jsonl");
    std::string line;
    std::vector<double> v;
    while (std::getline(in, line)) {
      const json r = json::parse(line);
      if (r.contains("load_max_over_mean")) v.push_back(r["load_max_over_mean"][0].get<double>());
    }
    double sum = 0;
    for (size_t i = v.size() - 20; i < v.size(); ++i) sum += v[i];
    return sum / 20;
  };
  const double without = peak(0.0, "dsv3_run_gamma0"), with = peak(0.01, "dsv3_run_gamma");
  std::printf("expert load max/mean over the last 20 steps: gamma 0: %.3f, gamma 0.01: %.3f\n",
              without, with);
  EXPECT_LT(with, without);
}

TEST(Trainer, DivergenceStopsWithClearErrorAndKeepsLastCheckpoint) {
  const fs::path data = make_data("nan");
  const fs::path run = tmp("dsv3_run_nan");
  json j = base_config(data, run);
  j["steps"] = 4;
  train(j);  // a good checkpoint at step 4
  j["steps"] = 40;
  j["optimizer"]["lr"] = 1e30;
  j["schedule"] = {{"warmup", 1}, {"decay_start", 1000}, {"decay_steps", 0}};
  TrainOptions o;
  o.resume = true;
  const std::string err = error_of([&] { train(j, o); });
  EXPECT_NE(err.find("diverged"), std::string::npos) << err;
  EXPECT_NE(err.find("step-00000004"), std::string::npos) << err;
  EXPECT_EQ(latest_checkpoint(run.string()), (run / "checkpoints" / "step-00000004").string());
}

TEST(Trainer, StopFlagWritesCheckpoint) {
  const fs::path data = make_data("stop");
  const fs::path run = tmp("dsv3_run_stop");
  std::atomic<bool> stop{true};
  TrainOptions o;
  o.stop = &stop;
  const TrainSummary s = train(base_config(data, run), o);
  EXPECT_TRUE(s.interrupted);
  EXPECT_EQ(s.steps, 0);
  EXPECT_TRUE(fs::exists(fs::path(s.checkpoint) / "trainer" / "state.json"));
}

TEST(Trainer, BadDataAndMismatchedVocab) {
  const fs::path data = make_data("bad");
  json j = base_config(data, tmp("dsv3_run_bad"));
  j["model"]["vocab_size"] = 32;  // the data holds ids up to 63
  EXPECT_NE(error_of([&] { train(j); }).find("do not match"), std::string::npos);
  j = base_config(data, tmp("dsv3_run_bad"));
  { std::ofstream(data / "train-00000.bin", std::ios::trunc) << "DSV3TOK1 truncated"; }
  EXPECT_NE(error_of([&] { train(j); }).find("train-00000.bin"), std::string::npos);
}

// `dsv3 compare`: the final whole-split figures, the relative difference from the first run,
// a run killed mid-write (its partial last line is skipped) and a corrupt record.
TEST(Trainer, CompareRunsReadsMetrics) {
  const fs::path a = tmp("dsv3_compare_a"), b = tmp("dsv3_compare_b");
  fs::create_directories(a);
  fs::create_directories(b);
  std::ofstream(a / "metrics.jsonl") << R"({"step":10,"loss_main":5.0,"tokens":100}
{"step":10,"val_loss":4.5}
{"step":20,"val_loss":4.0,"full_split":true}
)";
  std::ofstream(b / "metrics.jsonl") << R"({"step":10,"loss_main":5.1,"tokens":100}
{"step":10,"val_loss":4.6}
{"step":20,"val_loss":4.01,"full_split":true}
{"step":21,"loss_ma)";
  const RunMetrics m = read_metrics(b.string());
  EXPECT_EQ(m.steps, 20);
  EXPECT_EQ(m.tokens, 100);
  EXPECT_DOUBLE_EQ(m.final_val, 4.01);
  ASSERT_EQ(m.val.points.size(), 1u);     // the whole-split figure is not an estimate...
  const Series curve = m.val_curve("v");  // ...but it ends the plotted curve
  ASSERT_EQ(curve.points.size(), 2u);
  EXPECT_EQ(curve.points[1], std::make_pair(20.0, 4.01));
  const fs::path svg = tmp("dsv3_compare.svg");
  const std::string table = compare_runs({a.string(), b.string()}, {"bf16", "fp8"}, svg.string());
  EXPECT_NE(table.find("4.0100"), std::string::npos) << table;
  EXPECT_NE(table.find("+0.250%"), std::string::npos) << table;  // (4.01 - 4) / 4
  EXPECT_TRUE(fs::exists(svg));
  EXPECT_NE(error_of([&] {
              compare_runs({a.string()}, {"x", "y"}, "");
            }).find("one label per"),
            std::string::npos);
  std::ofstream(b / "metrics.jsonl") << R"({"step":1,"loss_main":"high"})"
                                     << "\n";
  EXPECT_NE(error_of([&] { read_metrics(b.string()); }).find("metrics.jsonl:1"), std::string::npos);
  EXPECT_NE(error_of([&] { read_metrics(tmp("dsv3_compare_none").string()); }).find("no metrics"),
            std::string::npos);
}

TEST(TrainConfig, ParsesOverridesAndRejectsTypos) {
  json j = base_config("/data", "/out");
  TrainConfig::apply_overrides(j, {"optimizer.lr=0.01", "loss.mtp_lambda=0.1", "out=\"/x\"",
                                   "balance.gamma_until=50", "data=plain-string"});
  const TrainConfig c = TrainConfig::from_json(j, "t");
  EXPECT_DOUBLE_EQ(c.schedule.peak, 0.01);
  EXPECT_DOUBLE_EQ(c.adamw.lr, 0.01);
  EXPECT_DOUBLE_EQ(c.loss.mtp_lambda, 0.1);
  EXPECT_EQ(c.out, "/x");
  EXPECT_EQ(c.data, "plain-string");
  EXPECT_DOUBLE_EQ(c.gamma_at(49), 0.001);
  EXPECT_DOUBLE_EQ(c.gamma_at(50), 0.0);
  // Round trip through to_json.
  const TrainConfig back = TrainConfig::from_json(c.to_json(), "t");
  EXPECT_EQ(back.to_json(), c.to_json());

  json typo = base_config("/data", "/out");
  typo["optimizer"]["learning_rate"] = 1;
  EXPECT_NE(error_of([&] {
              TrainConfig::from_json(typo, "cfg.json");
            }).find("unknown setting 'optimizer.learning_rate'"),
            std::string::npos);
  json wrong = base_config("/data", "/out");
  wrong["steps"] = "many";
  EXPECT_NE(error_of([&] { TrainConfig::from_json(wrong, "cfg.json"); }).find("'steps'"),
            std::string::npos);
  json tokens = base_config("/data", "/out");
  tokens["schedule"] = {{"unit", "tokens"}, {"warmup", 256}};  // 2 steps of 4 × 32 tokens
  const TrainConfig t = TrainConfig::from_json(tokens, "t");
  EXPECT_DOUBLE_EQ(t.lr_at(0, 128), t.schedule.peak * 129 / 256);
  EXPECT_DOUBLE_EQ(t.lr_at(5, 256), t.schedule.peak);  // cosine starts: its first value is peak
  tokens["schedule"]["unit"] = "days";
  EXPECT_NE(error_of([&] { TrainConfig::from_json(tokens, "t"); }).find("schedule.unit"),
            std::string::npos);

  json ramp = base_config("/data", "/out");
  ramp["ramp"] = {{"start", 1}, {"steps", 10}};
  const TrainConfig r = TrainConfig::from_json(ramp, "t");
  EXPECT_EQ(r.batch_at(0), 1);
  EXPECT_EQ(r.batch_at(5), 2);
  EXPECT_EQ(r.batch_at(10), 4);
}

TEST(TrainConfig, ReadsYaml) {
  const fs::path p = fs::path(::testing::TempDir()) / "dsv3_train.yaml";
  std::ofstream(p) << "data: /d\nout: runs/x\nsteps: 7\noptimizer:\n  lr: 2.0e-3\n"
                      "  bf16_moments: false\nmodel: configs/m.json\nname_is_string: 'yes'\n";
  const json j = TrainConfig::read_file(p.string());
  EXPECT_EQ(j["steps"], 7);
  EXPECT_DOUBLE_EQ(j["optimizer"]["lr"].get<double>(), 2e-3);
  EXPECT_EQ(j["optimizer"]["bf16_moments"], false);
  EXPECT_EQ(j["model"], "configs/m.json");
  EXPECT_EQ(j["name_is_string"], "yes");
  std::ofstream(p, std::ios::trunc) << "steps: [1, 2\n";
  EXPECT_NE(error_of([&] { TrainConfig::read_file(p.string()); }).find("not valid YAML"),
            std::string::npos);
}

}  // namespace
}  // namespace dsv3::train

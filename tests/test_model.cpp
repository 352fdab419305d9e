// The forward pass against HF transformers' DeepseekV3 (fixtures made by
// tools/reference/make_model_fixtures.py), and the loader's errors on bad checkpoints.
#include <gtest/gtest.h>

#include <cmath>
#include <filesystem>
#include <fstream>
#include <nlohmann/json.hpp>

#include "core/error.h"
#include "core/threads.h"
#include "io/safetensors.h"
#include "model/init.h"
#include "model/layout.h"
#include "model/model.h"
#include "test_util.h"

namespace fs = std::filesystem;
using namespace dsv3;
using dsv3::test_util::error_of;
const auto fixture = dsv3::test_util::model_fixture;

namespace {

// max|a - b| / std(b): the parity metric.
double rel_err(const Tensor& a, const Tensor& b) {
  EXPECT_EQ(a.shape(), b.shape());
  const auto x = a.to_f32_vector(), y = b.to_f32_vector();
  double mean = 0, var = 0, mx = 0;
  for (float v : y) mean += v;
  mean /= double(y.size());
  for (float v : y) var += (v - mean) * (v - mean);
  const double sd = std::sqrt(var / double(y.size()));
  for (size_t i = 0; i < x.size(); ++i) {
    if (!std::isfinite(x[i])) return INFINITY;
    mx = std::max(mx, double(std::fabs(x[i] - y[i])));
  }
  return mx / sd;
}

fs::path temp_dir(const std::string& tag) {
  fs::path d = fs::path(::testing::TempDir()) / ("dsv3_model_" + tag);
  fs::remove_all(d);
  fs::create_directories(d);
  return d;
}

// Copies a fixture checkpoint, letting `edit` drop or replace tensors on the way.
void copy_checkpoint(const std::string& src, const fs::path& dst,
                     const std::function<bool(const std::string&, Tensor&)>& edit) {
  const TensorStore store = TensorStore::open(src);
  SafetensorsWriter w;
  for (const std::string& name : store.names()) {
    Tensor t = store.get(name);
    if (edit(name, t)) w.add(name, t);
  }
  w.write((dst / "model.safetensors").string());
  fs::copy_file(fs::path(src) / "config.json", dst / "config.json",
                fs::copy_options::overwrite_existing);
}

}  // namespace

class ModelParity : public ::testing::TestWithParam<const char*> {};

TEST_P(ModelParity, LogitsAndMtpMatchTransformers) {
  const std::string dir = fixture(GetParam());
  const auto ref = SafetensorsFile::open(dir + "/reference.safetensors");
  const Model model(ModelWeights::load(dir));
  Tensor hidden;
  const Tensor logits = model.forward(ref->get("input_ids"), &hidden);
  const double err = rel_err(logits, ref->get("logits"));
  EXPECT_LE(err, 1e-4) << "logits vs HF transformers";
  if (!model.weights().mtp.empty()) {
    const Tensor mtp = model.forward_mtp(ref->get("input_ids"), hidden, 1);
    EXPECT_LE(rel_err(mtp, ref->get("mtp_logits")), 1e-4) << "MTP logits vs the spec's reference";
  }
  std::printf("[ %s ] max|d|/std: logits %.2e\n", GetParam(), err);
}

// v2_softmax_greedy_bf16 is checked against transformers' DeepseekV2 (softmax/greedy routing).
INSTANTIATE_TEST_SUITE_P(Fixtures, ModelParity,
                         ::testing::Values("v3_yarn_qlora_bf16", "v3_plain_f32", "v3_fp8_blocks",
                                           "v2_softmax_greedy_bf16"));

TEST(ModelParity, BatchRowsAreIndependent) {
  // Each sequence of a batch gives the logits it gives alone.
  const std::string dir = fixture("v3_yarn_qlora_bf16");
  const auto ref = SafetensorsFile::open(dir + "/reference.safetensors");
  const Model model(ModelWeights::load(dir));
  const Tensor ids = ref->get("input_ids");
  const Tensor both = model.forward(ids);
  for (int64_t b = 0; b < ids.dim(0); ++b) {
    const Tensor one = model.forward(ids.slice_rows(b, b + 1));
    // GEMM blocking depends on the row count, so equality is to rounding, not bitwise.
    EXPECT_LE(rel_err(one, both.slice_rows(b, b + 1)), 1e-5);
  }
}

TEST(ModelErrors, MissingTensorIsNamed) {
  const fs::path d = temp_dir("missing");
  copy_checkpoint(fixture("v3_plain_f32"), d, [](const std::string& n, Tensor&) {
    return n != "model.layers.1.self_attn.kv_b_proj.weight";
  });
  const std::string e = error_of([&] { ModelWeights::load(d.string()); });
  EXPECT_NE(e.find("model.layers.1.self_attn.kv_b_proj.weight"), std::string::npos) << e;
}

TEST(ModelErrors, WrongShapeIsNamed) {
  const fs::path d = temp_dir("shape");
  copy_checkpoint(fixture("v3_plain_f32"), d, [](const std::string& n, Tensor& t) {
    if (n == "model.layers.0.mlp.experts.2.up_proj.weight") t = t.slice_rows(0, t.dim(0) - 1);
    return true;
  });
  const std::string e = error_of([&] { ModelWeights::load(d.string()); });
  EXPECT_NE(e.find("model.layers.0.mlp.experts.2.up_proj.weight"), std::string::npos) << e;
  EXPECT_NE(e.find("shape"), std::string::npos) << e;
}

TEST(ModelErrors, MissingFp8ScalesAreNamed) {
  const fs::path d = temp_dir("scale");
  copy_checkpoint(fixture("v3_fp8_blocks"), d, [](const std::string& n, Tensor&) {
    return n != "model.layers.0.self_attn.o_proj.weight_scale_inv";
  });
  const std::string e = error_of([&] { ModelWeights::load(d.string()); });
  EXPECT_NE(e.find("o_proj.weight_scale_inv"), std::string::npos) << e;
}

TEST(ModelErrors, NonFloatWeightIsRejected) {
  const fs::path d = temp_dir("dtype");
  copy_checkpoint(fixture("v3_plain_f32"), d, [](const std::string& n, Tensor& t) {
    if (n == "model.norm.weight") t = Tensor::zeros(DType::I32, t.shape());
    return true;
  });
  const std::string e = error_of([&] { ModelWeights::load(d.string()); });
  EXPECT_NE(e.find("model.norm.weight"), std::string::npos) << e;
}

TEST(ModelErrors, InconsistentConfigIsRejected) {
  const fs::path d = temp_dir("config");
  copy_checkpoint(fixture("v3_plain_f32"), d, [](const std::string&, Tensor&) { return true; });
  nlohmann::json j = nlohmann::json::parse(std::ifstream(d / "config.json"));
  j["n_group"] = 4;  // 6 experts do not split into 4 groups
  std::ofstream(d / "config.json") << j.dump();
  const std::string e = error_of([&] { ModelWeights::load(d.string()); });
  EXPECT_NE(e.find("n_group"), std::string::npos) << e;
}

TEST(ModelErrors, BadTokenIdsAndLengths) {
  const Model model(ModelWeights::load(fixture("v3_plain_f32")));
  Tensor ids = Tensor::zeros(DType::I32, {1, 3});
  ids.ptr<int32_t>()[1] = int32_t(model.config().vocab_size);
  EXPECT_NE(error_of([&] { model.forward(ids); }).find("outside the vocabulary"),
            std::string::npos);
  const Tensor longer = Tensor::zeros(DType::I32, {1, model.config().max_position_embeddings + 1});
  EXPECT_NE(error_of([&] { model.forward(longer); }).find("max_position_embeddings"),
            std::string::npos);
}

TEST(ModelInit, RandomCheckpointLoadsInEveryDtype) {
  ModelConfig c = ModelConfig::load(fixture("v3_fp8_blocks"));
  for (const char* dt : {"f32", "bf16", "fp8"}) {
    const fs::path d = temp_dir(std::string("init_") + dt);
    InitOptions opt;
    opt.dtype = dt;
    opt.seed = 7;
    write_random_checkpoint(c, d.string(), opt);
    const Model m(ModelWeights::load(d.string()));
    EXPECT_EQ(m.config().quant.fp8, std::string(dt) == "fp8");
    // Every tensor of the layout is there with its shape, nothing else.
    const auto layout = checkpoint_layout(m.config());
    size_t scales = 0;
    for (const auto& n : m.weights().store.names()) scales += n.ends_with("_scale_inv");
    EXPECT_EQ(m.weights().store.names().size(), layout.size() + scales);
    for (const TensorSpec& s : layout) EXPECT_EQ(m.weights().store.get(s.name).shape(), s.shape);
    Tensor ids = Tensor::zeros(DType::I32, {1, 4});
    const Tensor logits = m.forward(ids);
    for (float v : logits.to_f32_vector()) ASSERT_TRUE(std::isfinite(v));
  }
}

// A projection's values: the same whatever the threads split (pairs of normals straddle the
// chunks), different per name and seed, and normal: mean ~0, std ~ the one asked, ~0.27% of
// them past 3 std, none past the polar method's reach.
TEST(ModelInit, RandomValuesAreNormalAndIndependentOfThreads) {
  TensorSpec spec;
  spec.name = "model.layers.0.mlp.down_proj.weight";
  spec.shape = {1000, 1001};  // odd: a chunk may start inside a pair
  spec.role = TensorRole::kProjection;
  const int64_t n = shape_numel(spec.shape);
  const int threads = num_threads();
  std::vector<float> a(static_cast<size_t>(n)), b = a, c = a;
  set_num_threads(1);
  random_tensor_values(spec, 5, 0.02, a.data());
  set_num_threads(3);
  random_tensor_values(spec, 5, 0.02, b.data());
  set_num_threads(threads);
  EXPECT_EQ(a, b);
  random_tensor_values(spec, 6, 0.02, c.data());
  EXPECT_NE(a, c);
  double sum = 0, sq = 0;
  int64_t tail = 0;
  for (float v : a) {
    sum += v;
    sq += double(v) * v;
    tail += std::fabs(v) > 3 * 0.02;
    ASSERT_LT(std::fabs(v), 10 * 0.02);
  }
  const double mean = sum / double(n), sd = std::sqrt(sq / double(n) - mean * mean);
  EXPECT_LT(std::fabs(mean), 1e-4);
  EXPECT_NEAR(sd, 0.02, 1e-4);
  EXPECT_NEAR(double(tail) / double(n), 0.0027, 0.0003);
}

TEST(ModelInit, SameSeedSameBytes) {
  const ModelConfig c = ModelConfig::load(fixture("v3_plain_f32"));
  InitOptions opt;
  opt.seed = 3;
  const fs::path a = temp_dir("seed_a"), b = temp_dir("seed_b");
  write_random_checkpoint(c, a.string(), opt);
  write_random_checkpoint(c, b.string(), opt);
  auto slurp = [](const fs::path& p) {
    std::ifstream f(p, std::ios::binary);
    return std::string(std::istreambuf_iterator<char>(f), {});
  };
  EXPECT_EQ(slurp(a / "model.safetensors"), slurp(b / "model.safetensors"));
}

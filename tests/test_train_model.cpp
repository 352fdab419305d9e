// The whole model's forward + backward (train/model.h) against PyTorch autograd through HF
// transformers' DeepseekV3 and the spec's MTP module (tools/reference/make_grad_fixtures.py),
// plus the properties the trainer relies on.
#include <gtest/gtest.h>

#include <cmath>
#include <filesystem>

#include "io/safetensors.h"
#include "model/model.h"
#include "model/weights.h"
#include "test_util.h"
#include "train/model.h"

namespace dsv3::train {
namespace {

std::string grads_fixture() {
  return std::string(DSV3_SOURCE_DIR) +
         "/tests/fixtures/train/grads_v3_yarn_qlora_bf16.safetensors";
}

struct Batch {
  int64_t B = 0, T = 0;
  std::vector<int32_t> inputs, targets;  // targets: next token, -1 after the last
};

Batch fixture_batch(const SafetensorsFile& f) {
  const Tensor ids = f.get("input_ids");
  Batch b;
  b.B = ids.dim(0);
  b.T = ids.dim(1);
  b.inputs.assign(ids.ptr<int32_t>(), ids.ptr<int32_t>() + b.B * b.T);
  b.targets.assign(size_t(b.B * b.T), -1);
  for (int64_t s = 0; s < b.B; ++s)
    for (int64_t t = 0; t + 1 < b.T; ++t)
      b.targets[size_t(s * b.T + t)] = b.inputs[size_t(s * b.T + t + 1)];
  return b;
}

// max|a − ref| / max|ref| over one tensor: the error relative to the tensor's scale (an
// element-wise ratio is meaningless for entries that are ~0).
double rel_error(const float* a, const float* ref, int64_t n) {
  double diff = 0, scale = 0;
  for (int64_t i = 0; i < n; ++i) {
    diff = std::max(diff, std::fabs(double(a[i]) - double(ref[i])));
    scale = std::max(scale, std::fabs(double(ref[i])));
  }
  return scale > 0 ? diff / scale : diff;
}

class GradientsVsPyTorch : public ::testing::TestWithParam<std::string> {};

// Both fixtures: v3_yarn_qlora_bf16 (q_lora, YaRN, grouped routing, a dense first layer, BF16
// weights) and v3_plain_f32 (plain q_proj, plain RoPE, one routing group, all layers MoE).
TEST_P(GradientsVsPyTorch, LossAndEveryParameterGradient) {
  const auto file = SafetensorsFile::open(
      std::string(DSV3_SOURCE_DIR) + "/tests/fixtures/train/grads_" + GetParam() + ".safetensors");
  const SafetensorsFile& ref = *file;
  TrainModel m = TrainModel::from_checkpoint(test_util::model_fixture(GetParam()));
  const Batch b = fixture_batch(ref);
  LossOptions opt;
  opt.mtp_lambda = ref.get("lambda").to_f32_vector()[0];
  opt.balance_alpha = 0;  // the reference has no balance loss
  m.zero_grads();
  const StepStats st = m.forward_backward(b.inputs.data(), b.targets.data(), b.B, b.T, opt);
  const double lm = ref.get("loss_main").to_f32_vector()[0];
  const double lt = ref.get("loss_mtp").to_f32_vector()[0];
  EXPECT_NEAR(st.loss_main, lm, 1e-5 * lm);
  EXPECT_NEAR(st.loss_mtp, lt, 1e-5 * lt);
  EXPECT_NEAR(st.loss, lm + opt.mtp_lambda * lt, 1e-5 * lm);

  double worst = 0;
  std::string worst_name;
  int checked = 0;
  for (const ParamInfo& p : m.params()) {
    if (!p.trainable) continue;
    const Tensor g = ref.get("grad." + p.name);
    ASSERT_EQ(g.shape(), p.shape) << p.name;
    const std::vector<float> r = g.to_f32_vector();
    const double e = rel_error(m.grads() + p.offset, r.data(), p.size);
    EXPECT_LE(e, 1e-4) << p.name;
    if (e > worst) {
      worst = e;
      worst_name = p.name;
    }
    ++checked;
  }
  EXPECT_GT(checked, 50);
  std::printf("%s: max relative gradient error %.3g (%s) over %d tensors\n", GetParam().c_str(),
              worst, worst_name.c_str(), checked);
}

INSTANTIATE_TEST_SUITE_P(TrainModel, GradientsVsPyTorch,
                         ::testing::Values("v3_yarn_qlora_bf16", "v3_plain_f32"));

TEST(TrainModel, ForwardMatchesInferenceModel) {
  // The training forward and the inference forward (itself checked against transformers) agree.
  const std::string dir = test_util::model_fixture("v3_plain_f32");
  const auto file = SafetensorsFile::open(dir + "/reference.safetensors");
  const SafetensorsFile& ref = *file;
  TrainModel m = TrainModel::from_checkpoint(dir);
  const Batch b = fixture_batch(ref);
  Model inf(ModelWeights::load(dir));
  const Tensor ids = ref.get("input_ids");
  const Tensor logits = inf.forward(ids);
  // Main CE from the inference logits, in double.
  const int64_t V = m.config().vocab_size;
  double sum = 0;
  int64_t count = 0;
  for (int64_t r = 0; r < b.B * b.T; ++r) {
    if (b.targets[size_t(r)] < 0) continue;
    const float* l = logits.ptr<float>() + r * V;
    double mx = -INFINITY, z = 0;
    for (int64_t v = 0; v < V; ++v) mx = std::max(mx, double(l[v]));
    for (int64_t v = 0; v < V; ++v) z += std::exp(double(l[v]) - mx);
    sum += std::log(z) + mx - double(l[b.targets[size_t(r)]]);
    ++count;
  }
  LossOptions opt;
  opt.balance_alpha = 0;
  const StepStats st = m.forward_backward(b.inputs.data(), b.targets.data(), b.B, b.T, opt, false);
  EXPECT_NEAR(st.loss_main, sum / double(count), 1e-5);
  EXPECT_EQ(st.tokens, count);
}

TEST(TrainModel, RecomputeGivesIdenticalGradients) {
  const auto file = SafetensorsFile::open(grads_fixture());
  const SafetensorsFile& ref = *file;
  const Batch b = fixture_batch(ref);
  LossOptions opt;  // defaults: MTP and balance loss on
  TrainModel a = TrainModel::from_checkpoint(test_util::model_fixture("v3_yarn_qlora_bf16"));
  TrainModel r = TrainModel::from_checkpoint(test_util::model_fixture("v3_yarn_qlora_bf16"));
  r.set_recompute(true);
  a.zero_grads();
  r.zero_grads();
  const StepStats sa = a.forward_backward(b.inputs.data(), b.targets.data(), b.B, b.T, opt);
  const StepStats sr = r.forward_backward(b.inputs.data(), b.targets.data(), b.B, b.T, opt);
  EXPECT_EQ(sa.loss, sr.loss);
  EXPECT_GT(sa.loss_balance, 0);
  for (int64_t i = 0; i < a.num_values(); ++i)
    ASSERT_EQ(a.grads()[i], r.grads()[i]) << "value " << i;
}

TEST(TrainModel, BalanceLossGradientMatchesFiniteDifference) {
  // Only the balance term (λ = 0, α large): its gradient reaches the router through the
  // sigmoid scores; a central difference on a few router weights in f32 agrees to 2% + 2e-4 (the
  // f32 resolution of the loss over 2h). The
  // step is small enough that no expert selection flips (the loss jumps where one does).
  const auto file = SafetensorsFile::open(grads_fixture());
  const SafetensorsFile& ref = *file;
  const Batch b = fixture_batch(ref);
  TrainModel m = TrainModel::from_checkpoint(test_util::model_fixture("v3_yarn_qlora_bf16"));
  LossOptions with, without;
  with.mtp_lambda = without.mtp_lambda = 0;
  with.balance_alpha = 1.0;
  without.balance_alpha = 0;
  m.zero_grads();
  m.forward_backward(b.inputs.data(), b.targets.data(), b.B, b.T, with);
  std::vector<float> g_with(m.grads(), m.grads() + m.num_values());
  m.zero_grads();
  m.forward_backward(b.inputs.data(), b.targets.data(), b.B, b.T, without);
  const ParamInfo& router = m.param("model.layers.1.mlp.gate.weight");
  for (int64_t i :
       {int64_t(0), router.size / 5, router.size / 3, router.size / 2, router.size - 1}) {
    const int64_t at = router.offset + i;
    const double analytic = double(g_with[size_t(at)]) - double(m.grads()[at]);
    const float saved = m.values()[at];
    const float h = 1e-3f;
    auto bal = [&](float v) {
      m.values()[at] = v;
      return m.forward_backward(b.inputs.data(), b.targets.data(), b.B, b.T, with, false)
          .loss_balance;
    };
    const double fd = (bal(saved + h) - bal(saved - h)) / (2.0 * double(h));
    m.values()[at] = saved;
    EXPECT_NEAR(analytic, fd, 2e-2 * std::fabs(fd) + 2e-4) << "router value " << i;
  }
}

// Lower-precision projections against FP32 on the same batch, at the report's init (std
// 0.006): the rounding is really applied (the results differ) and stays small. Measured:
// bf16 loss 1.3e-6 / gradients 1.4e-3, fp8 1.2e-5 / 2.4e-2 (relative; gradients as ‖Δ‖/‖g‖
// over all of them: one tensor alone moves more when a token's routing flips). With larger
// weights the gap grows (fixture weights: fp8 gradients differ by ~0.7), which is why the
// recipe is judged by training curves (docs/TRAINING.md), not single steps.
struct PrecisionCase {
  Precision p;
  double loss_tol, grad_tol;
};

class LowPrecisionVsF32 : public ::testing::TestWithParam<PrecisionCase> {};

TEST_P(LowPrecisionVsF32, LossAndGradientsStayClose) {
  const ModelConfig c = ModelConfig::load(test_util::model_fixture("v3_yarn_qlora_bf16"));
  TrainModel f(c), h(c);
  f.init_random(1, 0.006);
  h.init_random(1, 0.006);
  h.set_precision(GetParam().p);
  std::vector<int32_t> ids(64), tgt(64);
  for (int i = 0; i < 64; ++i) {
    ids[size_t(i)] = int32_t((i * 37 + 5) % c.vocab_size);
    tgt[size_t(i)] = int32_t((i * 37 + 42) % c.vocab_size);
  }
  LossOptions opt;
  f.zero_grads();
  h.zero_grads();
  const StepStats sf = f.forward_backward(ids.data(), tgt.data(), 2, 32, opt);
  const StepStats sh = h.forward_backward(ids.data(), tgt.data(), 2, 32, opt);
  double diff = 0, norm = 0;
  for (int64_t i = 0; i < f.num_values(); ++i) {
    diff += std::pow(double(h.grads()[i]) - double(f.grads()[i]), 2);
    norm += std::pow(double(f.grads()[i]), 2);
  }
  const double gerr = std::sqrt(diff / norm), lerr = std::fabs(sh.loss - sf.loss) / sf.loss;
  std::printf("%s vs f32: loss rel %.2e, gradients ‖Δ‖/‖g‖ %.2e\n", precision_name(GetParam().p),
              lerr, gerr);
  EXPECT_GT(lerr, 0);
  EXPECT_GT(gerr, 0);
  EXPECT_LE(lerr, GetParam().loss_tol);
  EXPECT_LE(gerr, GetParam().grad_tol);
}

INSTANTIATE_TEST_SUITE_P(TrainModel, LowPrecisionVsF32,
                         ::testing::Values(PrecisionCase{Precision::kBf16, 1e-4, 1e-2},
                                           PrecisionCase{Precision::kFp8, 1e-3, 6e-2}));

TEST(TrainModel, MemoryReportOrdersPrecisions) {
  const ModelConfig c = ModelConfig::load(test_util::model_fixture("v3_yarn_qlora_bf16"));
  const TrainModel m(c);
  const MemoryReport f = m.memory_report(4, 64, Precision::kF32, false);
  const MemoryReport b = m.memory_report(4, 64, Precision::kBf16, true);
  const MemoryReport e = m.memory_report(4, 64, Precision::kFp8, true);
  EXPECT_EQ(f.weights, 4 * m.num_values());
  EXPECT_EQ(f.moments, 2 * b.moments);  // FP32 vs BF16 moments, trainable parameters only
  EXPECT_LT(b.moments, 4 * m.num_values());  // the router biases have none
  EXPECT_GT(f.activations, b.activations);
  EXPECT_GT(b.activations, e.activations);
  EXPECT_GT(e.activations, f.activations / 4);
}

TEST(TrainModel, ParsePrecision) {
  EXPECT_EQ(parse_precision("bf16"), Precision::kBf16);
  EXPECT_EQ(parse_precision("fp8"), Precision::kFp8);
  EXPECT_NE(test_util::error_of([] { parse_precision("fp4"); }).find("use f32, bf16 or fp8"),
            std::string::npos);
}

TEST(TrainModel, BiasMovesTowardBalance) {
  ModelConfig c = ModelConfig::load(test_util::model_fixture("v3_yarn_qlora_bf16"));
  TrainModel m(c);
  const int64_t E = c.n_routed_experts;
  int64_t moe_layers = 0;
  for (int64_t i = 0; i < c.num_hidden_layers + c.num_nextn_predict_layers; ++i)
    moe_layers += c.is_moe_layer(i);
  std::vector<std::vector<int64_t>> load(size_t(moe_layers), std::vector<int64_t>(size_t(E), 4));
  load[0][0] = 10;  // overloaded
  load[0][1] = 0;   // underloaded
  m.update_bias(load, 0.001);
  const ParamInfo& bias = m.param("model.layers.1.mlp.gate.e_score_correction_bias");
  EXPECT_FLOAT_EQ(m.values()[bias.offset + 0], -0.001f);
  EXPECT_FLOAT_EQ(m.values()[bias.offset + 1], 0.001f);
  // Load 4 vs mean (10 + 0 + 4·(E−2))/E: above or below it moves by exactly γ.
  const double mean = (10.0 + 4.0 * double(E - 2)) / double(E);
  const float expect = 4.0 > mean ? -0.001f : (4.0 < mean ? 0.001f : 0.0f);
  EXPECT_FLOAT_EQ(m.values()[bias.offset + 2], expect);
  m.update_bias(load, 0.0);  // γ = 0: frozen
  EXPECT_FLOAT_EQ(m.values()[bias.offset + 0], -0.001f);
}

TEST(TrainModel, SaveLoadRoundTripIsExact) {
  const ModelConfig c = ModelConfig::load(test_util::model_fixture("v3_yarn_qlora_bf16"));
  TrainModel m(c);
  m.init_random(7, 0.006);
  const auto dir = std::filesystem::temp_directory_path() / "dsv3_train_model_roundtrip";
  std::filesystem::remove_all(dir);
  m.save(dir.string());
  TrainModel back = TrainModel::from_checkpoint(dir.string());
  ASSERT_EQ(back.num_values(), m.num_values());
  for (int64_t i = 0; i < m.num_values(); ++i) ASSERT_EQ(back.values()[i], m.values()[i]);
  // And the inference loader reads it (the format `dsv3 generate` uses).
  EXPECT_NO_THROW(ModelWeights::load(dir.string()));
  std::filesystem::remove_all(dir);
}

TEST(TrainModel, RejectsBadInput) {
  const ModelConfig c = ModelConfig::load(test_util::model_fixture("v3_yarn_qlora_bf16"));
  TrainModel m(c);
  std::vector<int32_t> ids(8, int32_t(c.vocab_size)), tgt(8, 0);
  LossOptions opt;
  EXPECT_NE(test_util::error_of([&] {
              m.forward_backward(ids.data(), tgt.data(), 1, 8, opt);
            }).find("outside the vocabulary"),
            std::string::npos);
  ids.assign(8, 0);
  tgt.assign(8, int32_t(c.vocab_size));
  EXPECT_NE(test_util::error_of([&] { m.forward_backward(ids.data(), tgt.data(), 1, 8, opt); }),
            "(no error)");
}

}  // namespace
}  // namespace dsv3::train

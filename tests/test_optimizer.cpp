// AdamW against torch.optim.AdamW (fixture from tools/reference/make_optimizer_fixtures.py),
// clipping, and the learning-rate schedule's phases.
#include <gtest/gtest.h>

#include <cmath>
#include <fstream>
#include <nlohmann/json.hpp>

#include "core/error.h"
#include "train/optimizer.h"

using namespace dsv3;
using namespace dsv3::train;

namespace {

nlohmann::json fixture() {
  std::ifstream f(std::string(DSV3_SOURCE_DIR) + "/tests/fixtures/train/adamw.json");
  return nlohmann::json::parse(f);
}

std::vector<float> as_f32(const nlohmann::json& a) {
  std::vector<float> v;
  for (double x : a) v.push_back(float(x));
  return v;
}

}  // namespace

TEST(AdamW, MatchesTorchWithF32Moments) {
  const auto j = fixture();
  std::vector<float> pd = as_f32(j["init"][0]), pn = as_f32(j["init"][1]);
  std::vector<float> gd(pd.size()), gn(pn.size());
  AdamWConfig cfg;
  cfg.weight_decay = j["weight_decay"];
  cfg.bf16_moments = false;
  AdamW opt(cfg, {{"decayed", pd.data(), gd.data(), int64_t(pd.size()), true},
                  {"norm", pn.data(), gn.data(), int64_t(pn.size()), false}});
  for (size_t s = 0; s < j["lrs"].size(); ++s) {
    // Fill the buffers the optimizer points at (assigning a new vector would move them).
    const auto a = as_f32(j["grads"][s][0]), b = as_f32(j["grads"][s][1]);
    std::copy(a.begin(), a.end(), gd.begin());
    std::copy(b.begin(), b.end(), gn.begin());
    opt.step(j["lrs"][s], float(j["scales"][s]));
    for (int which = 0; which < 2; ++which) {
      const auto& want = j["trajectory"][s][which];
      const std::vector<float>& got = which == 0 ? pd : pn;
      double worst = 0;
      for (size_t i = 0; i < got.size(); ++i)
        worst = std::max(worst, std::fabs(double(got[i]) - double(want[i])));
      // f32 arithmetic against torch's float64: parameters are O(1), updates O(lr).
      EXPECT_LT(worst, 2e-6) << "step " << s << (which ? " (no decay)" : " (decay)");
    }
  }
  EXPECT_EQ(opt.steps(), 6);
}

TEST(AdamW, Bf16MomentsStayClose) {
  // BF16 moments round m and v to 8 bits of mantissa each step; the update direction barely
  // moves. After 6 steps the parameters stay within a small fraction of the total update.
  const auto j = fixture();
  std::vector<float> p = as_f32(j["init"][0]), g(p.size());
  AdamWConfig cfg;
  cfg.weight_decay = j["weight_decay"];
  cfg.bf16_moments = true;
  AdamW opt(cfg, {{"w", p.data(), g.data(), int64_t(p.size()), true}});
  for (size_t s = 0; s < j["lrs"].size(); ++s) {
    const auto a = as_f32(j["grads"][s][0]);
    std::copy(a.begin(), a.end(), g.begin());
    opt.step(j["lrs"][s], float(j["scales"][s]));
  }
  double worst = 0, moved = 0;
  for (size_t i = 0; i < p.size(); ++i) {
    worst = std::max(worst, std::fabs(double(p[i]) - double(j["trajectory"][5][0][i])));
    moved = std::max(moved, std::fabs(double(j["trajectory"][5][0][i]) - double(j["init"][0][i])));
  }
  EXPECT_LT(worst, 0.02 * moved);
  EXPECT_EQ(opt.first_moments()[0].dtype(), DType::BF16);
}

TEST(AdamW, ClippingFactor) {
  std::vector<float> v = {3.0f, 4.0f}, g = {3.0f, 4.0f};
  const std::vector<ParamRef> ps = {{"p", v.data(), g.data(), 2, true}};
  EXPECT_DOUBLE_EQ(global_grad_norm(ps), 5.0);
  EXPECT_NEAR(clip_factor(5.0, 1.0), 0.2, 1e-6);
  EXPECT_EQ(clip_factor(0.5, 1.0), 1.0f);
  EXPECT_EQ(clip_factor(5.0, 0.0), 1.0f);  // 0 turns clipping off
}

TEST(LrSchedule, ReportShape) {
  LrSchedule s;
  s.peak = 2.2e-4;
  s.min_lr = 2.2e-5;
  s.final_lr = 7.3e-6;
  s.warmup = 10;
  s.decay_start = 50;
  s.decay_steps = 40;
  s.final_start = 120;
  s.validate();
  EXPECT_NEAR(s.at(0), 2.2e-5, 1e-12);  // (0 + 1) / 10 of the peak
  EXPECT_NEAR(s.at(9), 2.2e-4, 1e-12);
  EXPECT_NEAR(s.at(30), 2.2e-4, 1e-12);                            // constant
  EXPECT_NEAR(s.at(70), 2.2e-5 + 0.5 * (2.2e-4 - 2.2e-5), 1e-12);  // half-way down the cosine
  EXPECT_NEAR(s.at(95), 2.2e-5, 1e-12);
  EXPECT_NEAR(s.at(130), 7.3e-6, 1e-12);
  LrSchedule bad = s;
  bad.decay_start = 5;
  EXPECT_THROW(bad.validate(), Error);
}

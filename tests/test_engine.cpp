// The cached engine against the full forward (itself checked against HF transformers):
// every decode step's logits equal the full forward's at that position.
#include <gtest/gtest.h>

#include <cmath>

#include "core/error.h"
#include "infer/engine.h"
#include "io/safetensors.h"
#include "test_util.h"

using namespace dsv3;
using dsv3::test_util::error_of;
const auto fixture = dsv3::test_util::model_fixture;

namespace {

// max|a - b| / max|b| over one row of V logits.
double row_err(const float* a, const float* b, int64_t v) {
  double mx = 0, ref = 0;
  for (int64_t i = 0; i < v; ++i) {
    mx = std::max(mx, double(std::fabs(a[i] - b[i])));
    ref = std::max(ref, double(std::fabs(b[i])));
  }
  return mx / ref;
}

std::vector<int32_t> row_ids(const Tensor& ids, int64_t b) {
  const int32_t* p = ids.ptr<int32_t>() + b * ids.dim(1);
  return std::vector<int32_t>(p, p + ids.dim(1));
}

}  // namespace

class EngineParity : public ::testing::TestWithParam<const char*> {};
class EngineMtpParity : public ::testing::TestWithParam<const char*> {};

TEST_P(EngineParity, DecodeStepsEqualTheFullForward) {
  const Model model(ModelWeights::load(fixture(GetParam())));
  const auto ref = SafetensorsFile::open(fixture(GetParam()) + "/reference.safetensors");
  const Tensor ids = ref->get("input_ids");
  const int64_t t = ids.dim(1), v = model.config().vocab_size;
  const Tensor full = model.forward(ids.slice_rows(0, 1));
  for (bool absorbed : {true, false}) {
    const Engine engine(model, {absorbed});
    LatentCache cache = engine.new_cache(64);
    const auto seq = row_ids(ids, 0);
    // Prefill the first 5 tokens with every row's logits, then decode one token at a time.
    Tensor logits = engine.step({{&cache, {seq.begin(), seq.begin() + 5}, true}});
    for (int64_t i = 0; i < 5; ++i)
      EXPECT_LE(row_err(logits.ptr<float>() + i * v, full.ptr<float>() + i * v, v), 1e-4)
          << "prefill position " << i << (absorbed ? " absorbed" : " naive");
    for (int64_t i = 5; i < t; ++i) {
      logits = engine.step({{&cache, {seq[size_t(i)]}, false}});
      EXPECT_LE(row_err(logits.ptr<float>(), full.ptr<float>() + i * v, v), 1e-4)
          << "decode position " << i << (absorbed ? " absorbed" : " naive");
    }
    EXPECT_EQ(cache.size(), t);
  }
}

TEST_P(EngineMtpParity, MtpStepsEqualTheFullMtpForward) {
  const Model model(ModelWeights::load(fixture(GetParam())));
  const auto ref = SafetensorsFile::open(fixture(GetParam()) + "/reference.safetensors");
  const Tensor ids = ref->get("input_ids").slice_rows(0, 1);
  const int64_t t = ids.dim(1), v = model.config().vocab_size, hid = model.config().hidden_size;
  Tensor hidden;
  model.forward(ids, &hidden);
  const Tensor mtp = model.forward_mtp(ids, hidden, 1);  // [1, t - 1, v]
  const Engine engine(model);
  LatentCache cache = engine.new_mtp_cache(64);
  const auto seq = row_ids(ids, 0);
  for (int64_t i = 0; i + 1 < t; ++i) {
    const Tensor h = hidden.reshape({t, hid}).slice_rows(i, i + 1);
    const Tensor logits = engine.mtp_step({{&cache, {seq[size_t(i + 1)]}, h}});
    EXPECT_LE(row_err(logits.ptr<float>(), mtp.ptr<float>() + i * v, v), 1e-4) << "position " << i;
  }
}

INSTANTIATE_TEST_SUITE_P(Fixtures, EngineParity,
                         ::testing::Values("v3_yarn_qlora_bf16", "v3_plain_f32", "v3_fp8_blocks",
                                           "v2_softmax_greedy_bf16"));
INSTANTIATE_TEST_SUITE_P(Fixtures, EngineMtpParity,
                         ::testing::Values("v3_yarn_qlora_bf16", "v3_plain_f32", "v3_fp8_blocks"));

TEST(Engine, BatchOfDifferentLengthsEqualsOneByOne) {
  const Model model(ModelWeights::load(fixture("v3_yarn_qlora_bf16")));
  const auto ref = SafetensorsFile::open(fixture("v3_yarn_qlora_bf16") + "/reference.safetensors");
  const Tensor ids = ref->get("input_ids");
  const auto a = row_ids(ids, 0), b = row_ids(ids, 1);
  const int64_t v = model.config().vocab_size;
  const Engine engine(model);
  // Together: A's first 7 tokens and B's first 3, then one token each, three times.
  LatentCache ca = engine.new_cache(32), cb = engine.new_cache(32);
  LatentCache sa = engine.new_cache(32), sb = engine.new_cache(32);
  Tensor both = engine.step({{&ca, {a.begin(), a.begin() + 7}}, {&cb, {b.begin(), b.begin() + 3}}});
  Tensor la = engine.step({{&sa, {a.begin(), a.begin() + 7}}});
  Tensor lb = engine.step({{&sb, {b.begin(), b.begin() + 3}}});
  for (int step = 0; step < 3; ++step) {
    EXPECT_LE(row_err(both.ptr<float>(), la.ptr<float>(), v), 1e-5);
    EXPECT_LE(row_err(both.ptr<float>() + v, lb.ptr<float>(), v), 1e-5);
    both = engine.step({{&ca, {a[size_t(7 + step)]}}, {&cb, {b[size_t(3 + step)]}}});
    la = engine.step({{&sa, {a[size_t(7 + step)]}}});
    lb = engine.step({{&sb, {b[size_t(3 + step)]}}});
  }
}

TEST(Engine, TruncateForgetsRejectedTokens) {
  const Model model(ModelWeights::load(fixture("v3_plain_f32")));
  const Engine engine(model);
  LatentCache c1 = engine.new_cache(16), c2 = engine.new_cache(16);
  engine.step({{&c1, {3, 4, 5}}});
  engine.step({{&c1, {9, 9}}});  // a rejected draft
  c1.truncate(3);
  const Tensor after = engine.step({{&c1, {6}}});
  const Tensor direct = engine.step({{&c2, {3, 4, 5, 6}}});
  EXPECT_LE(row_err(after.ptr<float>(), direct.ptr<float>(), model.config().vocab_size), 1e-5);
}

TEST(Engine, ContextOverflowIsAClearError) {
  const Model model(ModelWeights::load(fixture("v3_plain_f32")));
  const Engine engine(model);
  LatentCache c = engine.new_cache(4);
  try {
    engine.step({{&c, {1, 2, 3, 4, 5}}});
    FAIL() << "no error";
  } catch (const Error& e) {
    EXPECT_NE(std::string(e.what()).find("capacity"), std::string::npos) << e.what();
  }
}

// Generation: greedy tokens are the argmax of the full forward (checked against HF), batched
// equals one-by-one, MTP speculative decoding changes nothing under greedy decoding.
#include <gtest/gtest.h>

#include <cmath>

#include "core/error.h"
#include "infer/generate.h"
#include "io/safetensors.h"
#include "test_util.h"

using namespace dsv3;
using dsv3::test_util::error_of;
const auto fixture = dsv3::test_util::model_fixture;

namespace {

std::vector<int32_t> prompt_of(const std::string& name, int64_t b, int64_t len) {
  const auto ref = SafetensorsFile::open(fixture(name) + "/reference.safetensors");
  const Tensor ids = ref->get("input_ids");
  const int32_t* p = ids.ptr<int32_t>() + b * ids.dim(1);
  return std::vector<int32_t>(p, p + len);
}

GenerationRequest greedy(std::vector<int32_t> prompt, int n) {
  GenerationRequest r;
  r.prompt = std::move(prompt);
  r.params.temperature = 0;
  r.params.max_new_tokens = n;
  return r;
}

}  // namespace

class GenerateFixture : public ::testing::TestWithParam<const char*> {};
class GenerateMtpFixture : public ::testing::TestWithParam<const char*> {};

TEST_P(GenerateFixture, GreedyIsTheArgmaxOfTheFullForward) {
  const Model model(ModelWeights::load(fixture(GetParam())));
  const Engine engine(model);
  const auto req = greedy(prompt_of(GetParam(), 0, 5), 12);
  const auto out = generate(engine, {req});
  ASSERT_EQ(out[0].tokens.size(), 12u);
  EXPECT_EQ(out[0].finish_reason, "length");
  std::vector<int32_t> all = req.prompt;
  all.insert(all.end(), out[0].tokens.begin(), out[0].tokens.end());
  Tensor ids = Tensor::zeros(DType::I32, {1, int64_t(all.size())});
  std::copy(all.begin(), all.end(), ids.ptr<int32_t>());
  const Tensor logits = model.forward(ids);
  const int64_t v = model.config().vocab_size;
  for (size_t i = 0; i < out[0].tokens.size(); ++i) {
    const float* row = logits.ptr<float>() + int64_t(req.prompt.size() + i - 1) * v;
    const int32_t best = int32_t(std::max_element(row, row + v) - row);
    EXPECT_EQ(out[0].tokens[i], best) << "step " << i;
  }
}

TEST_P(GenerateMtpFixture, SpeculativeGreedyEqualsPlainGreedy) {
  const Model model(ModelWeights::load(fixture(GetParam())));
  const Engine engine(model);
  const std::vector<GenerationRequest> reqs = {greedy(prompt_of(GetParam(), 0, 4), 15),
                                               greedy(prompt_of(GetParam(), 1, 7), 9)};
  GenerationStats plain_stats, spec_stats;
  const auto plain = generate(engine, reqs, {}, &plain_stats);
  GenerateOptions opt;
  opt.speculative = true;
  const auto spec = generate(engine, reqs, opt, &spec_stats);
  for (size_t i = 0; i < reqs.size(); ++i) EXPECT_EQ(spec[i].tokens, plain[i].tokens) << i;
  EXPECT_GT(spec_stats.drafted, 0);
  EXPECT_EQ(spec_stats.generated_tokens, plain_stats.generated_tokens);
  // Every accepted draft saves a step.
  EXPECT_EQ(plain_stats.steps - spec_stats.steps, spec_stats.accepted);
}

TEST_P(GenerateFixture, BatchedEqualsOneByOne) {
  const Model model(ModelWeights::load(fixture(GetParam())));
  const Engine engine(model);
  const std::vector<GenerationRequest> reqs = {greedy(prompt_of(GetParam(), 0, 3), 6),
                                               greedy(prompt_of(GetParam(), 1, 9), 4),
                                               greedy(prompt_of(GetParam(), 0, 11), 5)};
  const auto together = generate(engine, reqs);
  for (size_t i = 0; i < reqs.size(); ++i)
    EXPECT_EQ(generate(engine, {reqs[i]})[0].tokens, together[i].tokens) << i;
}

TEST_P(GenerateFixture, GreedyEqualsTransformersGenerate) {
  // reference.safetensors holds transformers' generate(do_sample=False) continuation of the
  // first 5 tokens of each row (tools/reference/make_model_fixtures.py).
  const Model model(ModelWeights::load(fixture(GetParam())));
  const Engine engine(model);
  const auto ref = SafetensorsFile::open(fixture(GetParam()) + "/reference.safetensors");
  const Tensor want = ref->get("greedy_tokens");
  std::vector<GenerationRequest> reqs;
  for (int64_t b = 0; b < want.dim(0); ++b)
    reqs.push_back(greedy(prompt_of(GetParam(), b, 5), int(want.dim(1))));
  const auto out = generate(engine, reqs);
  for (int64_t b = 0; b < want.dim(0); ++b) {
    const int32_t* w = want.ptr<int32_t>() + b * want.dim(1);
    EXPECT_EQ(out[size_t(b)].tokens, std::vector<int32_t>(w, w + want.dim(1))) << "row " << b;
  }
}

INSTANTIATE_TEST_SUITE_P(Fixtures, GenerateFixture,
                         ::testing::Values("v3_yarn_qlora_bf16", "v3_plain_f32", "v3_fp8_blocks",
                                           "v2_softmax_greedy_bf16"));
INSTANTIATE_TEST_SUITE_P(Fixtures, GenerateMtpFixture,
                         ::testing::Values("v3_yarn_qlora_bf16", "v3_plain_f32", "v3_fp8_blocks"));

TEST(Generate, SeededSamplingIsReproducible) {
  const Model model(ModelWeights::load(fixture("v3_plain_f32")));
  const Engine engine(model);
  GenerationRequest r;
  r.prompt = {5, 6, 7};
  r.params.temperature = 1.0f;
  r.params.top_p = 0.9f;
  r.params.max_new_tokens = 20;
  r.params.seed = 1234;
  const auto a = generate(engine, {r}), b = generate(engine, {r});
  EXPECT_EQ(a[0].tokens, b[0].tokens);
  r.params.seed = 99;
  EXPECT_NE(generate(engine, {r})[0].tokens, a[0].tokens);
}

TEST(Generate, StopTokenAndCallerStop) {
  const Model model(ModelWeights::load(fixture("v3_plain_f32")));
  const Engine engine(model);
  auto r = greedy({5, 6, 7}, 10);
  const auto base = generate(engine, {r})[0].tokens;
  r.params.stop_token_ids = {base[3]};
  const auto stopped = generate(engine, {r})[0];
  EXPECT_EQ(stopped.finish_reason, "stop");
  EXPECT_EQ(stopped.tokens.back(), base[3]);
  GenerateOptions opt;
  opt.on_token = [](size_t, int32_t) { return false; };  // the caller stops at once
  r.params.stop_token_ids.clear();
  const auto one = generate(engine, {r}, opt)[0];
  EXPECT_EQ(one.tokens.size(), 1u);
  EXPECT_EQ(one.finish_reason, "stop");
}

TEST(Generate, BadPromptsAreClearErrors) {
  const Model model(ModelWeights::load(fixture("v3_plain_f32")));
  const Engine engine(model);
  EXPECT_NE(error_of([&] { generate(engine, {greedy({}, 3)}); }).find("empty"), std::string::npos);
  EXPECT_NE(error_of([&] {
              generate(engine, {greedy({1, 100000}, 3)});
            }).find("vocabulary"),
            std::string::npos);
  std::vector<int32_t> too_long(size_t(model.config().max_position_embeddings), 1);
  EXPECT_NE(error_of([&] { generate(engine, {greedy(too_long, 3)}); }).find("context"),
            std::string::npos);
  auto r = greedy({1, 2}, 3);
  r.params.top_p = 0.0f;
  EXPECT_NE(error_of([&] { generate(engine, {r}); }).find("top_p"), std::string::npos);
}

TEST(Generate, StopsAtTheContext) {
  const Model model(ModelWeights::load(fixture("v3_plain_f32")));
  const Engine engine(model);
  const int64_t ctx = model.config().max_position_embeddings;
  auto r = greedy(std::vector<int32_t>(size_t(ctx - 3), 4), 100);
  const auto out = generate(engine, {r})[0];
  EXPECT_EQ(out.finish_reason, "length");
  EXPECT_EQ(int64_t(out.tokens.size()), 3);
}

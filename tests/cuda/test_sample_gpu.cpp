// The GPU sampler (kernels/cuda/sample.cu) against infer::Sampler. The kept set is the
// Sampler's own (Sampler::process); the draw is checked against a float64 inverse CDF over it
// for many u, token for token wherever u · total is more than 1e-6 of the total mass from a
// CDF step (the kernel's exp_nonpos and fixed-point sums put its steps within ~2e-7 of
// float64's). Greedy rows and the error codes must match exactly. Then the engine's
// step_sample(): the same tokens as step() and a Sampler on the host.
#include <gtest/gtest.h>

#include <cmath>
#include <limits>
#include <random>
#include <vector>

#include "gpu_test_util.h"
#include "infer/sampler.h"
#include "io/safetensors.h"
#include "kernels/cuda/engine.h"
#include "kernels/cuda/kernels.h"

using namespace dsv3;

namespace {

using gpu_test::randn;
using gpu_test::to_device;
using gpu_test::to_host;
constexpr float kInf = std::numeric_limits<float>::infinity();

// One token per u: the GPU sampler over `rows` copies of x (row stride 0), with its first sweep
// in one block a row and split over kSampleScanBlocks, which must give the same tokens.
std::vector<int32_t> gpu_tokens(const std::vector<float>& x, cuda::SampleParams p,
                                const std::vector<double>& us) {
  std::vector<cuda::SampleParams> ps(us.size(), p);
  for (size_t i = 0; i < us.size(); ++i) ps[i].u = us[i];
  const auto dx = to_device(x);
  const auto dp = to_device(ps);
  auto dt = gpu_test::device_buffer<int32_t>(us.size());
  cuda::sample_tokens(dx.get(), int64_t(us.size()), int64_t(x.size()), 0, dp.get(), dt.get(),
                      nullptr, nullptr);
  const std::vector<int32_t> tokens = to_host(dt, us.size());
  auto scan = gpu_test::device_buffer<uint64_t>(us.size() * cuda::kSampleScanBlocks * 2);
  auto ds = gpu_test::device_buffer<int32_t>(us.size());
  cuda::sample_tokens(dx.get(), int64_t(us.size()), int64_t(x.size()), 0, dp.get(), ds.get(),
                      scan.get(), nullptr);
  EXPECT_EQ(to_host(ds, us.size()), tokens) << "the split first sweep chose otherwise";
  return tokens;
}

infer::SamplingParams params_of(const cuda::SampleParams& p) {
  infer::SamplingParams s;
  s.temperature = p.temperature;
  s.top_k = p.top_k;
  s.top_p = p.top_p;
  s.min_p = p.min_p;
  s.seed = 1;
  return s;
}

struct Case {
  const char* name;
  std::vector<float> x;
  cuda::SampleParams p;
};

// For each u: the float64 inverse-CDF token over the Sampler's kept set, or -1 where u · total
// lies within 1e-6 · total of a step (too close to call).
std::vector<int32_t> reference(const Case& c, const std::vector<double>& us) {
  std::vector<float> x = c.x;
  infer::Sampler(params_of(c.p)).process(x);  // removed tokens are -inf
  float mx = -kInf;
  for (float v : x) mx = std::max(mx, v);
  std::vector<double> cum(x.size());
  double total = 0;
  for (size_t i = 0; i < x.size(); ++i) {
    if (x[i] > -kInf) total += std::exp(double(x[i]) - double(mx));
    cum[i] = total;
  }
  std::vector<int32_t> out;
  for (double u : us) {
    const double t = u * total;
    int32_t tok = -1;
    double prev = 0;
    for (size_t i = 0; i < x.size(); ++i) {
      if (cum[i] > prev && cum[i] > t) {
        tok = std::abs(t - prev) < 1e-6 * total || std::abs(cum[i] - t) < 1e-6 * total ? -1
                                                                                       : int32_t(i);
        break;
      }
      prev = cum[i];
    }
    out.push_back(tok);
  }
  return out;
}

TEST(SampleGpu, KeptSetsAndDrawsMatchTheSampler) {
  SKIP_WITHOUT_GPU();
  const size_t V = 129280;  // DeepSeek-V3's vocabulary
  const auto peaked = randn(V, 1, 3.0f);
  const auto flat = randn(V, 2, 0.5f);
  auto ties = randn(V, 3, 2.0f);
  for (float& v : ties) v = std::round(v * 2.0f) / 2.0f;  // many equal logits
  auto masked = randn(V, 4, 2.0f);
  for (size_t i = 0; i < V; i += 2) masked[i] = -kInf;
  const auto small = randn(1000, 5, 2.0f);  // fewer ids than threads' runs would need
  const auto tiny = randn(100, 6, 1.0f);
  const std::vector<Case> cases = {
      {"plain", peaked, {1.0f, 0, 1.0f, 0.0f, 0}},
      {"temperature 0.7, top-k 50", peaked, {0.7f, 50, 1.0f, 0.0f, 0}},
      {"top-p 0.9", peaked, {1.0f, 0, 0.9f, 0.0f, 0}},
      {"flat top-p 0.95", flat, {1.0f, 0, 0.95f, 0.0f, 0}},
      {"top-k 1000, top-p 0.5", flat, {1.0f, 1000, 0.5f, 0.0f, 0}},
      {"min-p 0.05", peaked, {1.0f, 0, 1.0f, 0.05f, 0}},
      {"T 1.3, top-p 0.6, min-p 0.01", peaked, {1.3f, 0, 0.6f, 0.01f, 0}},
      {"top-k 1", peaked, {1.0f, 1, 1.0f, 0.0f, 0}},
      {"ties, top-k 20", ties, {1.0f, 20, 1.0f, 0.0f, 0}},
      {"ties, top-p 0.3", ties, {1.0f, 0, 0.3f, 0.0f, 0}},
      {"ties, top-k 200, top-p 0.8", ties, {0.9f, 200, 0.8f, 0.0f, 0}},
      {"half masked, top-k above the finite count", masked, {1.0f, 100000, 1.0f, 0.0f, 0}},
      {"half masked, top-p 0.7", masked, {1.0f, 0, 0.7f, 0.0f, 0}},
      {"1000 ids, top-k 10, top-p 0.9", small, {1.0f, 10, 0.9f, 0.0f, 0}},
      {"100 ids", tiny, {1.0f, 0, 1.0f, 0.0f, 0}},
  };
  std::vector<double> us;
  std::mt19937_64 rng(7);
  for (int i = 0; i < 256; ++i) us.push_back(std::uniform_real_distribution<double>(0, 1)(rng));
  for (const Case& c : cases) {
    const auto got = gpu_tokens(c.x, c.p, us);
    const auto want = reference(c, us);
    int checked = 0;
    for (size_t i = 0; i < us.size(); ++i) {
      if (want[i] < 0) continue;
      ++checked;
      EXPECT_EQ(got[i], want[i]) << c.name << ", u = " << us[i];
    }
    // Near-ties with a step are rare except in flat distributions.
    EXPECT_GE(checked, int(us.size()) / 2) << c.name;
  }
}

TEST(SampleGpu, GreedyTakesTheLowestIdOfTheMax) {
  SKIP_WITHOUT_GPU();
  std::vector<float> x = randn(129280, 8, 1.0f);
  x[77777] = 9.0f;
  x[99999] = 9.0f;
  x[100] = -kInf;
  EXPECT_EQ(gpu_tokens(x, {}, {0.0}), std::vector<int32_t>{77777});
  x[5] = 9.0f;
  EXPECT_EQ(gpu_tokens(x, {}, {0.0}), std::vector<int32_t>{5});
}

TEST(SampleGpu, BadLogitsGiveTheirCodes) {
  SKIP_WITHOUT_GPU();
  std::vector<float> x(5000, 0.5f);
  x[4321] = std::numeric_limits<float>::quiet_NaN();
  EXPECT_EQ(gpu_tokens(x, {}, {0.0}), std::vector<int32_t>{cuda::kSampleNonFinite});
  x[4321] = kInf;
  EXPECT_EQ(gpu_tokens(x, {1.0f, 0, 1.0f, 0.0f, 0}, {0.5}),
            std::vector<int32_t>{cuda::kSampleNonFinite});
  std::fill(x.begin(), x.end(), -kInf);
  EXPECT_EQ(gpu_tokens(x, {1.0f, 0, 1.0f, 0.0f, 0}, {0.5}),
            std::vector<int32_t>{cuda::kSampleAllMasked});
  std::fill(x.begin(), x.end(), 3e38f);
  EXPECT_EQ(gpu_tokens(x, {1e-5f, 0, 1.0f, 0.0f, 0}, {0.5}),
            std::vector<int32_t>{cuda::kSampleOverflow});
}

std::string fixture(const std::string& name) {
  return std::string(DSV3_SOURCE_DIR) + "/tests/fixtures/models/" + name;
}

// step_sample() draws device-drawable samplers' tokens on the GPU and the others (here: one
// asking for logprobs) on the host from the logits; both must give what a host Sampler gives
// for the logits of step() over the same prompt, with the sampler's first sweep split or not.
TEST(SampleGpu, EngineStepSampleEqualsStepAndHostSampler) {
  SKIP_WITHOUT_GPU();
  const Model model(ModelWeights::load(fixture("v3_yarn_qlora_bf16")));
  const auto ref = SafetensorsFile::open(fixture("v3_yarn_qlora_bf16") + "/reference.safetensors");
  const Tensor ids = ref->get("input_ids");
  for (const bool split : {false, true}) {  // the sampler's first sweep in one block or several
    SCOPED_TRACE(split ? "split sweep" : "one block a row");
    cuda::CudaEngineOptions o;
    o.max_sequences = 8;  // three host-path and three device-path caches at once
    o.max_context = 64;
    o.max_step_tokens = 64;
    o.sample_split_scan = split;
    const cuda::CudaEngine engine(model, o);
    const int64_t v = model.config().vocab_size;
    infer::SamplingParams greedy, warm, logprobs;
    greedy.temperature = 0;
    warm.temperature = 0.8f;
    warm.top_k = 40;
    warm.top_p = 0.9f;
    warm.seed = 11;
    logprobs = warm;
    logprobs.logprobs = 2;
    const std::vector<infer::SamplingParams> ps = {greedy, warm, logprobs};
    std::vector<int32_t> prompt(ids.ptr<int32_t>(), ids.ptr<int32_t>() + 6);
    for (int s = 0; s < 4; ++s) {
      // Host: logits of step(), then a fresh Sampler per row.
      std::vector<LatentCache> hc, dc;
      std::vector<StepEngine::Input> hin, din;
      for (size_t k = 0; k < ps.size(); ++k) {
        hc.push_back(engine.new_cache());
        dc.push_back(engine.new_cache());
      }
      for (size_t k = 0; k < ps.size(); ++k) {
        hin.push_back({&hc[k], prompt, false});
        din.push_back({&dc[k], prompt, false});
      }
      Tensor logits = engine.step(hin);
      std::vector<infer::Sampler> host, dev;
      for (const auto& p : ps) {
        host.emplace_back(p, prompt);
        dev.emplace_back(p, prompt);
      }
      std::vector<infer::Sampler*> ptrs;
      for (auto& d : dev) ptrs.push_back(&d);
      const auto drawn = engine.step_sample(din, ptrs);
      ASSERT_EQ(drawn.size(), ps.size());
      for (size_t k = 0; k < ps.size(); ++k) {
        const int32_t want = host[k].sample({logits.ptr<float>() + int64_t(k) * v, size_t(v)});
        EXPECT_EQ(drawn[k].token, want) << "sampler " << k << " step " << s;
        EXPECT_EQ(dev[k].num_generated(), 1);
        EXPECT_EQ(dc[k].size(), int64_t(prompt.size()));
      }
      EXPECT_EQ(drawn[2].top.size(), 2u);  // the logprobs one ran on the host
      prompt.push_back(drawn[0].token);
    }
    // A null sampler: no token, and the cache still advances.
    LatentCache c = engine.new_cache();
    const auto none = engine.step_sample({{&c, prompt, false}}, {nullptr});
    EXPECT_EQ(none[0].token, -1);
    EXPECT_EQ(c.size(), int64_t(prompt.size()));
  }
}

}  // namespace

// The token sampler against HF transformers' logits processors (fixtures made by
// tools/reference/make_sampler_fixtures.py), its sampling distribution, seeding, penalties,
// parameter validation, stop strings and speed.
#include <gtest/gtest.h>

#include <algorithm>
#include <cmath>
#include <fstream>
#include <limits>
#include <nlohmann/json.hpp>
#include <numeric>
#include <random>
#include <string>
#include <vector>

#include "core/error.h"
#include "infer/sampler.h"

using namespace dsv3;
using namespace dsv3::infer;
using json = nlohmann::json;

namespace {

constexpr float kInf = std::numeric_limits<float>::infinity();

const json& fixtures() {
  static const json doc = [] {
    const std::string path =
        std::string(DSV3_SOURCE_DIR) + "/tests/fixtures/sampler/processed.json";
    std::ifstream f(path);
    if (!f) throw std::runtime_error("missing fixture " + path);
    return json::parse(f);
  }();
  return doc;
}

std::vector<float> case_logits(const json& c) {
  const float scale = c["scale"].get<float>();
  std::vector<float> x;
  for (int64_t r : c["raw"]) x.push_back(float(r) / scale);  // exact: |r| < 2^24, scale 2^12
  for (int32_t i : c["neg_inf"]) x[size_t(i)] = -kInf;
  return x;
}

SamplingParams case_params(const json& c) {
  const json& p = c["params"];
  SamplingParams sp;
  sp.temperature = p["temperature"].get<float>();
  sp.top_k = p["top_k"].get<int32_t>();
  sp.top_p = p["top_p"].get<float>();
  sp.min_p = p["min_p"].get<float>();
  sp.repetition_penalty = p["repetition_penalty"].get<float>();
  sp.frequency_penalty = p["frequency_penalty"].get<float>();
  sp.presence_penalty = p["presence_penalty"].get<float>();
  sp.seed = 1234;
  return sp;
}

Sampler case_sampler(const json& c, const SamplingParams& sp) {
  const auto prompt = c["prompt"].get<std::vector<int32_t>>();
  Sampler s(sp, prompt);
  for (int32_t t : c["generated"]) s.accept(t);
  return s;
}

bool has_penalties(const SamplingParams& p) {
  return p.repetition_penalty != 1.0f || p.frequency_penalty != 0.0f || p.presence_penalty != 0.0f;
}

// |a - b| <= 1e-5 * max(1, |b|): relative, absolute near zero.
bool close(double a, double b) {
  return std::fabs(a - b) <= 1e-5 * std::max(1.0, std::fabs(b));
}

// Chi-square critical value for `df` degrees of freedom at upper-tail probability ~1e-6
// (Wilson-Hilferty approximation, z = 4.75).
double chi2_critical(int df) {
  const double z = 4.75, a = 2.0 / (9.0 * df);
  return df * std::pow(1.0 - a + z * std::sqrt(a), 3.0);
}

// The top-k + top-p rules written the obvious way (full sort, float64), to check the
// windowed and heap-based selection on vocabularies too large for the fixtures. Weights are
// float exp(logit - max) summed in float64, as the sampler computes them, so that no boundary
// decision hinges on the last bit.
std::vector<int32_t> plain_top_k_top_p(std::vector<float> x, int32_t k, double p) {
  std::vector<int32_t> order(x.size());
  std::iota(order.begin(), order.end(), 0);
  std::stable_sort(order.begin(), order.end(), [&](int32_t a, int32_t b) { return x[a] > x[b]; });
  size_t n = order.size();
  if (k > 0 && size_t(k) < n) {
    const float kth = x[order[size_t(k) - 1]];
    n = 0;
    while (n < order.size() && x[order[n]] >= kth) ++n;
  }
  if (p < 1.0) {
    double z = 0;
    for (size_t j = 0; j < n; ++j) z += std::exp(x[order[j]] - x[order[0]]);
    double before = 0;
    size_t m = 0;
    while (m < n && before < p) before += std::exp(x[order[m++]] - x[order[0]]) / z;
    n = m;
  }
  std::vector<int32_t> kept(order.begin(), order.begin() + std::ptrdiff_t(n));
  std::sort(kept.begin(), kept.end());
  return kept;
}

std::vector<float> model_like_logits(size_t vocab, uint32_t seed, float sigma) {
  std::mt19937 gen(seed);
  std::normal_distribution<float> normal(0.0f, sigma);
  std::vector<float> x(vocab);
  for (float& v : x) v = normal(gen);
  for (int i = 0; i < 20; ++i) x[gen() % vocab] += 6.0f + float(i % 5);
  return x;
}

std::vector<int32_t> kept_ids(const std::vector<float>& x) {
  std::vector<int32_t> out;
  for (size_t i = 0; i < x.size(); ++i) {
    if (x[i] > -kInf) out.push_back(int32_t(i));
  }
  return out;
}

}  // namespace

// ---- parity with transformers ----------------------------------------------------------------

TEST(SamplerHfParity, ProcessedLogitsMatchTransformers) {
  int checked = 0;
  for (const json& c : fixtures()["cases"]) {
    SCOPED_TRACE(c["name"].get<std::string>());
    ASSERT_TRUE(c["robust"].get<bool>());
    ASSERT_EQ(c["rule_mismatches"].get<int>(), 0);
    const SamplingParams sp = case_params(c);
    std::vector<float> x = case_logits(c);
    Sampler s = case_sampler(c, sp);
    s.process(x);

    const auto want_ids = c["kept"].get<std::vector<int32_t>>();
    const auto want = c["processed"].get<std::vector<double>>();
    ASSERT_EQ(kept_ids(x), want_ids);
    for (size_t j = 0; j < want_ids.size(); ++j) {
      ASSERT_TRUE(close(x[size_t(want_ids[j])], want[j]))
          << "token " << want_ids[j] << ": " << x[size_t(want_ids[j])] << " vs " << want[j];
    }
    ++checked;
  }
  EXPECT_GE(checked, 35);
}

TEST(SamplerHfParity, ProcessedLogprobsAndChosenTokens) {
  for (const json& c : fixtures()["cases"]) {
    SCOPED_TRACE(c["name"].get<std::string>());
    SamplingParams sp = case_params(c);
    const auto want_ids = c["kept"].get<std::vector<int32_t>>();
    const auto want_lp = c["logsoftmax"].get<std::vector<double>>();
    sp.logprobs = int32_t(c["vocab"].get<int>());
    sp.logprobs_mode = LogprobsMode::kProcessed;
    std::vector<float> x = case_logits(c);
    Sampler s = case_sampler(c, sp);
    const SampleResult r = s.sample_with_logprobs(x);

    // Every possible token is listed, most likely first, with transformers' log-softmax.
    ASSERT_EQ(r.top.size(), want_ids.size());
    for (size_t j = 1; j < r.top.size(); ++j) {
      ASSERT_GE(r.top[j - 1].logprob, r.top[j].logprob);
    }
    for (const TokenLogprob& t : r.top) {
      const auto it = std::lower_bound(want_ids.begin(), want_ids.end(), t.token);
      ASSERT_TRUE(it != want_ids.end() && *it == t.token) << t.token;
      const double w = want_lp[size_t(it - want_ids.begin())];
      ASSERT_TRUE(close(t.logprob, w)) << "token " << t.token << ": " << t.logprob << " vs " << w;
    }
    const auto it = std::lower_bound(want_ids.begin(), want_ids.end(), r.token);
    ASSERT_TRUE(it != want_ids.end() && *it == r.token) << "sampled a removed token " << r.token;
    EXPECT_TRUE(close(r.logprob, want_lp[size_t(it - want_ids.begin())]));
    if (c.contains("argmax")) {
      EXPECT_EQ(r.token, c["argmax"].get<int32_t>());  // torch.argmax: first of the maxima
    }
    EXPECT_EQ(s.num_generated(), int32_t(c["generated"].size()) + 1);
  }
}

TEST(SamplerHfParity, GeneratorMatchesPythonImplementation) {
  for (const json& g : fixtures()["rng"]) {
    Rng a(std::stoull(g["seed"].get<std::string>()), g["stream"].get<uint64_t>());
    Rng b = a;
    for (const json& v : g["u64"]) EXPECT_EQ(a.next(), std::stoull(v.get<std::string>()));
    for (const json& u : g["uniform"]) EXPECT_EQ(b.uniform(), u.get<double>());
  }
}

// ---- the distribution actually sampled -------------------------------------------------------

// 200k draws against transformers' processed probabilities, for one case of each selection
// path: top-k (with ties), whole-vocabulary top-p, min-p alone, and temperature alone (with
// -inf entries). Chi-square over bins of expected count >= 5 at significance ~1e-6; the seed
// is fixed, so the outcome is deterministic.
TEST(SamplerDistribution, EmpiricalMatchesProcessedProbabilities) {
  using Pred = bool (*)(const SamplingParams&);
  const Pred kinds[] = {
      [](const SamplingParams& p) { return p.top_k > 0; },
      [](const SamplingParams& p) { return p.top_k == 0 && p.top_p < 1.0f; },
      [](const SamplingParams& p) { return p.top_k == 0 && p.top_p == 1.0f && p.min_p > 0.0f; },
      [](const SamplingParams& p) {
        return p.top_k == 0 && p.top_p == 1.0f && p.min_p == 0.0f && p.temperature != 1.0f;
      },
  };
  std::vector<const json*> picks;
  for (const Pred kind : kinds) {
    for (const json& c : fixtures()["cases"]) {
      const SamplingParams sp = case_params(c);
      const size_t kept = c["kept"].size();
      if (sp.greedy() || has_penalties(sp) || kept < 5 || kept > 400 || !kind(sp)) continue;
      picks.push_back(&c);
      break;
    }
  }
  ASSERT_EQ(picks.size(), 4u);
  for (const json* c : picks) {
    SCOPED_TRACE((*c)["name"].get<std::string>());
    const SamplingParams sp = case_params(*c);
    const auto ids = (*c)["kept"].get<std::vector<int32_t>>();
    const auto lp = (*c)["logsoftmax"].get<std::vector<double>>();
    const std::vector<float> logits = case_logits(*c);
    Sampler s(sp);
    const int n = 200000;
    std::vector<int> counts(logits.size(), 0);
    std::vector<float> x;
    for (int i = 0; i < n; ++i) {
      x = logits;
      ++counts[size_t(s.sample(x))];
    }
    // Bins: each token with expected count >= 5; the unlikely ones pooled, smallest first,
    // into bins of expected count >= 5 (a leftover pool joins the last one).
    std::vector<std::pair<double, double>> eo;  // (expected, observed)
    double max_err = 0;
    int outside = n;
    for (size_t j = 0; j < ids.size(); ++j) {
      const double e = n * std::exp(lp[j]), o = counts[size_t(ids[j])];
      outside -= int(o);
      max_err = std::max(max_err, std::fabs(o - e) / n);
      eo.emplace_back(e, o);
    }
    std::sort(eo.begin(), eo.end());
    std::vector<std::pair<double, double>> bins;
    std::pair<double, double> pool{0, 0};
    for (const auto& [e, o] : eo) {
      pool.first += e;
      pool.second += o;
      if (pool.first >= 5) {
        bins.push_back(pool);
        pool = {0, 0};
      }
    }
    if (pool.first > 0) {
      bins.back().first += pool.first;
      bins.back().second += pool.second;
    }
    double chi2 = 0;
    for (const auto& [e, o] : bins) chi2 += (o - e) * (o - e) / e;
    const int nbins = int(bins.size());
    EXPECT_EQ(outside, 0) << "draws outside the kept set";
    ASSERT_GE(nbins, 3);
    EXPECT_LT(chi2, chi2_critical(nbins - 1)) << "bins " << nbins << " max |freq - p| " << max_err;
    EXPECT_LT(max_err, 5.0 * std::sqrt(0.25 / n));
  }
}

TEST(SamplerDistribution, LargeVocabularySelectionMatchesPlainDefinition) {
  const size_t vocab = 129280;
  struct Case {
    int32_t k;
    float p, sigma;
  } cases[] = {
      {50, 0.9f, 2.0f}, {0, 0.9f, 2.0f}, {0, 0.999f, 0.3f}, {20000, 0.95f, 1.0f}, {0, 0.5f, 8.0f}};
  uint32_t seed = 7;
  for (const Case& c : cases) {
    SCOPED_TRACE(testing::Message() << "k=" << c.k << " p=" << c.p << " sigma=" << c.sigma);
    const std::vector<float> logits = model_like_logits(vocab, seed++, c.sigma);
    SamplingParams sp;
    sp.top_k = c.k;
    sp.top_p = c.p;
    sp.seed = 1;
    std::vector<float> x = logits;
    Sampler(sp).process(x);
    EXPECT_EQ(kept_ids(x), plain_top_k_top_p(logits, c.k, c.p));
  }
}

// ---- seeding ---------------------------------------------------------------------------------

TEST(SamplerSeed, SameSeedSameTokensDifferentSeedOrStreamDifferent) {
  const std::vector<float> logits = model_like_logits(1000, 3, 1.0f);
  const auto run = [&](std::optional<uint64_t> seed, uint64_t stream) {
    SamplingParams sp;
    sp.seed = seed;
    sp.top_p = 0.95f;
    Sampler s(sp, {}, stream);
    std::vector<int32_t> out;
    for (int i = 0; i < 64; ++i) {
      std::vector<float> x = logits;
      out.push_back(s.sample(x));
    }
    return out;
  };
  EXPECT_EQ(run(42, 0), run(42, 0));
  EXPECT_NE(run(42, 0), run(43, 0));
  EXPECT_NE(run(42, 0), run(42, 1));
  EXPECT_NE(run(std::nullopt, 0), run(std::nullopt, 0));
  // A copied sampler continues the same sequence.
  SamplingParams sp;
  sp.seed = 5;
  Sampler a(sp);
  for (int i = 0; i < 3; ++i) {
    std::vector<float> x = logits;
    a.sample(x);
  }
  Sampler b = a;
  for (int i = 0; i < 16; ++i) {
    std::vector<float> x = logits, y = logits;
    EXPECT_EQ(a.sample(x), b.sample(y));
  }
}

// ---- greedy and penalties (expected tokens worked out by hand) -------------------------------

TEST(SamplerGreedy, ArgmaxLowestIdOnTiesAndWarpersIgnored) {
  SamplingParams sp;
  sp.temperature = 0;
  sp.top_k = 1;  // accepted and ignored under greedy
  sp.top_p = 0.1f;
  Sampler s(sp);
  std::vector<float> x = {0.5f, 3.0f, -kInf, 3.0f, 2.9f};
  EXPECT_EQ(s.sample(x), 1);
  std::vector<float> bad = {0.5f, std::nanf(""), 1.0f};
  EXPECT_THROW(s.sample(bad), Error);
  std::vector<float> none = {-kInf, -kInf};
  EXPECT_THROW(s.sample(none), Error);
}

TEST(SamplerPenalties, RepetitionFrequencyPresence) {
  SamplingParams sp;
  sp.temperature = 0;
  sp.repetition_penalty = 1.1f;
  {  // positive logit divided: 2.0 / 1.1 = 1.818 < 1.9
    const std::vector<int32_t> prompt = {0, 0};
    Sampler s(sp, prompt);
    std::vector<float> x = {2.0f, 1.9f, -1.0f};
    EXPECT_EQ(s.sample(x), 1);
  }
  {  // negative logit multiplied: -1.0 * 1.1 = -1.1 < -1.05
    const std::vector<int32_t> prompt = {0};
    Sampler s(sp, prompt);
    std::vector<float> x = {-1.0f, -1.05f};
    EXPECT_EQ(s.sample(x), 1);
  }
  sp.repetition_penalty = 1.0f;
  sp.frequency_penalty = 0.3f;  // prompt tokens do not count: only generated ones
  {
    const std::vector<int32_t> prompt = {0, 0, 0, 0};
    Sampler s(sp, prompt);
    std::vector<float> x = {3.0f, 2.5f};
    EXPECT_EQ(s.sample(x), 0);  // nothing generated yet: no penalty
    x = {3.0f, 2.5f};
    EXPECT_EQ(s.sample(x), 0);  // generated {0}: 3.0 - 0.3 = 2.7 > 2.5
    x = {3.0f, 2.5f};
    EXPECT_EQ(s.sample(x), 1);  // generated {0, 0}: 3.0 - 0.6 = 2.4 < 2.5
  }
  sp.frequency_penalty = 0.0f;
  sp.presence_penalty = 0.6f;  // once, whatever the count
  {
    Sampler s(sp);
    s.accept(0);
    s.accept(0);
    std::vector<float> x = {3.0f, 2.5f};
    s.process(x);
    EXPECT_NEAR(x[0], 2.4f, 1e-6);
    EXPECT_EQ(x[1], 2.5f);
  }
  {  // history ids beyond the logits are a caller error, not a crash
    Sampler s(sp);
    s.accept(7);
    std::vector<float> x = {1.0f, 2.0f};
    EXPECT_THROW(s.process(x), Error);
  }
}

TEST(SamplerLogprobs, RawModeIsLogSoftmaxOfTheModelLogits) {
  const std::vector<float> logits = model_like_logits(5000, 11, 1.5f);
  SamplingParams sp;
  sp.seed = 9;
  sp.temperature = 0.5f;
  sp.top_k = 5;
  sp.repetition_penalty = 1.2f;
  sp.logprobs = 3;
  const std::vector<int32_t> prompt = {1, 2, 3};
  Sampler s(sp, prompt);
  std::vector<float> x = logits;
  const SampleResult r = s.sample_with_logprobs(x);
  double mx = -1e30, z = 0;
  for (float v : logits) mx = std::max(mx, double(v));
  for (float v : logits) z += std::exp(double(v) - mx);
  const double lse = mx + std::log(z);
  std::vector<int32_t> order(logits.size());
  std::iota(order.begin(), order.end(), 0);
  std::partial_sort(order.begin(), order.begin() + 3, order.end(),
                    [&](int32_t a, int32_t b) { return logits[a] > logits[b]; });
  ASSERT_EQ(r.top.size(), 3u);
  for (size_t j = 0; j < 3; ++j) {
    EXPECT_EQ(r.top[j].token, order[j]);
    EXPECT_NEAR(r.top[j].logprob, logits[order[j]] - lse, 1e-5);
  }
  EXPECT_NEAR(r.logprob, logits[size_t(r.token)] - lse, 1e-5);
  // Without `logprobs`, only the chosen token's logprob is reported.
  sp.logprobs.reset();
  Sampler t(sp, prompt);
  x = logits;
  EXPECT_TRUE(t.sample_with_logprobs(x).top.empty());
}

// ---- validation ------------------------------------------------------------------------------

TEST(SamplerValidate, RejectsOutOfRangeValues) {
  const auto bad = [](auto&& set, const std::string& field) {
    SamplingParams p;
    set(p);
    try {
      p.validate();
      ADD_FAILURE() << field << " accepted";
    } catch (const Error& e) {
      EXPECT_NE(std::string(e.what()).find(field), std::string::npos) << e.what();
    }
    EXPECT_THROW(Sampler{p}, Error);
  };
  bad([](SamplingParams& p) { p.temperature = -0.1f; }, "temperature");
  bad([](SamplingParams& p) { p.temperature = std::nanf(""); }, "temperature");
  bad([](SamplingParams& p) { p.temperature = 1e-9f; }, "temperature");
  bad([](SamplingParams& p) { p.top_k = -1; }, "top_k");
  bad([](SamplingParams& p) { p.top_p = 0.0f; }, "top_p");
  bad([](SamplingParams& p) { p.top_p = 1.5f; }, "top_p");
  bad([](SamplingParams& p) { p.min_p = 1.0f; }, "min_p");
  bad([](SamplingParams& p) { p.min_p = -0.1f; }, "min_p");
  bad([](SamplingParams& p) { p.repetition_penalty = 0.0f; }, "repetition_penalty");
  bad([](SamplingParams& p) { p.frequency_penalty = 2.5f; }, "frequency_penalty");
  bad([](SamplingParams& p) { p.presence_penalty = -3.0f; }, "presence_penalty");
  bad([](SamplingParams& p) { p.max_new_tokens = -1; }, "max_new_tokens");
  bad([](SamplingParams& p) { p.logprobs = -1; }, "logprobs");
  bad([](SamplingParams& p) { p.stop_token_ids = {-2}; }, "stop token");
  bad([](SamplingParams& p) { p.stop_strings = {"ok", ""}; }, "stop string");
  bad(
      [](SamplingParams& p) {
        p.temperature = 0;
        p.top_p = 0;
      },
      "top_p");  // even when greedy

  SamplingParams ok;  // greedy with warpers set: valid, they are ignored (as HF does)
  ok.temperature = 0;
  ok.top_k = 5;
  ok.top_p = 0.5f;
  ok.min_p = 0.2f;
  EXPECT_NO_THROW(ok.validate());
  EXPECT_NO_THROW(SamplingParams{}.validate());
  SamplingParams d;
  EXPECT_EQ(d.temperature, 1.0f);
  EXPECT_EQ(d.top_p, 1.0f);
  EXPECT_EQ(d.top_k, 0);
  d.stop_token_ids = {1, 7};
  EXPECT_TRUE(d.is_stop_token(7));
  EXPECT_FALSE(d.is_stop_token(2));
}

// ---- stop strings ----------------------------------------------------------------------------

TEST(SamplerStop, StopStringSpanningSeveralTokens) {
  StopChecker stop({"o wor"});
  std::string text;
  const char* pieces[] = {"Hel", "lo", " w", "orld", "!"};
  std::optional<size_t> cut;
  int found_at = -1;
  for (int i = 0; i < 5 && !cut; ++i) {
    text += pieces[i];
    cut = stop.find(text);
    if (cut) found_at = i;
  }
  ASSERT_TRUE(cut);
  EXPECT_EQ(found_at, 3);
  EXPECT_EQ(text.substr(0, *cut), "Hell");
}

TEST(SamplerStop, EarliestMatchWinsWhateverTheListOrder) {
  StopChecker stop({"world", "lo"});
  EXPECT_EQ(stop.find("hello world"), std::optional<size_t>(3));
  stop.reset();
  // Incrementally: "lo" completes first, at an earlier position than "world".
  std::optional<size_t> cut;
  std::string text;
  for (const char* p : {"hel", "lo wor", "ld"}) {
    text += p;
    if ((cut = stop.find(text))) break;
  }
  EXPECT_EQ(text, "hello wor");
  EXPECT_EQ(cut, std::optional<size_t>(3));
  // Two matches arriving in one step: the earlier start wins.
  StopChecker two({"cd", "bcde"});
  EXPECT_EQ(two.find("a"), std::nullopt);
  EXPECT_EQ(two.find("abcdef"), std::optional<size_t>(1));
}

TEST(SamplerStop, HoldbackAndRescan) {
  StopChecker stop({"</end>", "xyz"});
  EXPECT_EQ(stop.holdback("text </e"), 3u);
  EXPECT_EQ(stop.holdback("text xy"), 2u);
  EXPECT_EQ(stop.holdback("text"), 0u);
  EXPECT_EQ(stop.find("abc </e"), std::nullopt);
  EXPECT_EQ(stop.find("abc </end>"), std::optional<size_t>(4));
  EXPECT_EQ(stop.find("xyz"), std::optional<size_t>(0));  // shorter text: rescanned from 0
  EXPECT_TRUE(StopChecker({}).empty());
  EXPECT_EQ(StopChecker({}).holdback("abc"), 0u);
  EXPECT_THROW(StopChecker({""}), Error);
}

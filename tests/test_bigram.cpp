// The Kneser-Ney bigram baseline: probabilities worked out by hand, normalisation over the
// vocabulary, the concatenated stream, and `dsv3 data bigram`'s reading of a data directory.
#include <gtest/gtest.h>

#include <cmath>
#include <filesystem>
#include <fstream>
#include <nlohmann/json.hpp>

#include "test_util.h"
#include "train/bigram.h"
#include "train/data.h"

namespace fs = std::filesystem;
using dsv3::test_util::error_of;
using namespace dsv3::train;

namespace {

using Stream = std::vector<uint32_t>;
std::vector<std::span<const uint32_t>> one(const Stream& s) {
  return {std::span(s)};
}

// A data directory as `dsv3 data prepare` writes it, from token lists.
fs::path make_dir(const std::string& tag, const std::vector<Stream>& train,
                  const std::vector<Stream>& val, int64_t vocab_size) {
  const fs::path d = fs::path(::testing::TempDir()) / ("dsv3_bigram_" + tag);
  fs::remove_all(d);
  fs::create_directories(d);
  nlohmann::json meta = {{"format", "dsv3 token shards v1"}};
  if (vocab_size > 0) meta["vocab_size"] = vocab_size;
  for (const auto& [split, shards] : {std::pair{"train", &train}, std::pair{"val", &val}}) {
    std::vector<std::string> names;
    for (size_t i = 0; i < shards->size(); ++i) {
      names.push_back(std::string(split) + "-0000" + std::to_string(i) + ".bin");
      write_shard((d / names.back()).string(), (*shards)[i], {0});
    }
    meta[split] = {{"shards", names}};
  }
  std::ofstream(d / "meta.json") << meta.dump(2);
  return d;
}

}  // namespace

// Stream 0 1 0 2 0 1 with V = 4 and d = 0.75. Its bigrams: 01, 10, 02, 20, 01, so
//   c(0 1) = 2, c(1 0) = c(0 2) = c(2 0) = 1;  c(0 •) = 3, c(1 •) = c(2 •) = 1, c(3 •) = 0;
//   N1+(0 •) = 2, N1+(1 •) = N1+(2 •) = 1;  N1+(• 0) = 2 (after 1 and 2), N1+(• 1) = 1,
//   N1+(• 2) = 1, N1+(• 3) = 0;  N1+(• •) = 4 distinct bigrams;  W = 3 tokens ever continued.
// P_cont(w) = max(N1+(• w) - d, 0) / N1+(• •) + d W / N1+(• •) / V, with d W / N1+(• •) / V
// = 0.75 · 3 / 4 / 4 = 0.140625:
//   P_cont(0) = 1.25 / 4 + 0.140625 = 0.453125, P_cont(1) = P_cont(2) = 0.25 / 4 + 0.140625
//   = 0.203125, P_cont(3) = 0.140625 (sum 1).
// P(w | v) = max(c(v w) - d, 0) / c(v •) + d N1+(v •) / c(v •) · P_cont(w), e.g.
//   P(1 | 0) = 1.25 / 3 + 0.75 · 2 / 3 · 0.203125,  P(3 | 0) = 0.75 · 2 / 3 · 0.140625,
//   P(0 | 1) = 0.25 / 1 + 0.75 · 1 / 1 · 0.453125;  unseen context: P(w | 3) = P_cont(w).
TEST(Bigram, KneserNeyProbabilitiesByHand) {
  const Stream s = {0, 1, 0, 2, 0, 1};
  const BigramModel m(one(s), 4);
  EXPECT_EQ(m.count(0, 1), 2);
  EXPECT_EQ(m.count(2, 0), 1);
  EXPECT_EQ(m.count(1, 1), 0);
  EXPECT_EQ(m.training_bigrams(), 5);
  EXPECT_EQ(m.distinct_bigrams(), 4);
  const double u = 0.75 * 3 / 4 / 4;
  const double cont[4] = {1.25 / 4 + u, 0.25 / 4 + u, 0.25 / 4 + u, u};
  EXPECT_DOUBLE_EQ(cont[0], 0.453125);
  EXPECT_NEAR(m.prob(0, 1), 1.25 / 3 + 0.75 * 2 / 3 * cont[1], 1e-15);
  EXPECT_NEAR(m.prob(0, 2), 0.25 / 3 + 0.75 * 2 / 3 * cont[2], 1e-15);
  EXPECT_NEAR(m.prob(0, 0), 0.75 * 2 / 3 * cont[0], 1e-15);
  EXPECT_NEAR(m.prob(0, 3), 0.75 * 2 / 3 * cont[3], 1e-15);
  EXPECT_NEAR(m.prob(1, 0), 0.25 + 0.75 * cont[0], 1e-15);
  EXPECT_NEAR(m.prob(1, 3), 0.75 * cont[3], 1e-15);
  EXPECT_NEAR(m.prob(2, 0), 0.25 + 0.75 * cont[0], 1e-15);
  for (uint32_t w = 0; w < 4; ++w) EXPECT_NEAR(m.prob(3, w), cont[w], 1e-15) << w;

  // Cross-entropy: the mean of -ln P over the stream's consecutive pairs.
  const Stream val = {0, 1, 3, 3, 0};
  const double want = -(std::log(m.prob(0, 1)) + std::log(m.prob(1, 3)) + std::log(m.prob(3, 3)) +
                        std::log(m.prob(3, 0))) /
                      4;
  EXPECT_NEAR(m.cross_entropy(one(val)), want, 1e-14);
  EXPECT_TRUE(std::isfinite(m.cross_entropy(one(val))));
}

TEST(Bigram, EveryContextSumsToOne) {
  // A bigger stream with repeats, a vocabulary with unused ids, several discounts.
  Stream s;
  uint64_t x = 7;
  for (int i = 0; i < 3000; ++i) {
    x = x * 6364136223846793005ull + 1442695040888963407ull;
    s.push_back(uint32_t((x >> 33) % 23) * uint32_t((x >> 20) % 3 == 0 ? 1 : 2) % 40);
  }
  for (const double d : {0.1, 0.75, 1.0}) {
    const BigramModel m(one(s), 50, d);
    for (uint32_t v : {0u, 1u, 5u, 22u, 39u, 45u, 49u}) {  // seen and never-seen contexts
      double sum = 0;
      for (uint32_t w = 0; w < 50; ++w) {
        EXPECT_GT(m.prob(v, w), 0.0);
        sum += m.prob(v, w);
      }
      EXPECT_NEAR(sum, 1.0, 1e-12) << "context " << v << ", d " << d;
    }
  }
}

TEST(Bigram, PiecesAreOneStream) {
  // The bigram across a shard boundary counts, as in the DataLoader's concatenated stream.
  const Stream whole = {0, 1, 0, 2, 0, 1}, a = {0, 1, 0}, b = {2, 0, 1};
  const BigramModel m1(one(whole), 4);
  const BigramModel m2({std::span(a), std::span(b)}, 4);
  EXPECT_EQ(m2.count(0, 2), 1);
  for (uint32_t v = 0; v < 4; ++v)
    for (uint32_t w = 0; w < 4; ++w) EXPECT_EQ(m1.prob(v, w), m2.prob(v, w));
  EXPECT_EQ(m1.cross_entropy(one(whole)), m2.cross_entropy({std::span(a), std::span(b)}));
}

TEST(Bigram, RejectsBadInput) {
  const Stream s = {0, 5, 1};
  EXPECT_NE(error_of([&] { BigramModel(one(s), 4); }).find("token id 5"), std::string::npos);
  const Stream lone = {1};
  EXPECT_NE(error_of([&] { BigramModel(one(lone), 4); }).find("fewer than 2"), std::string::npos);
  const Stream ok = {0, 1, 2};
  EXPECT_NE(error_of([&] { BigramModel(one(ok), 4, 0.0); }).find("discount"), std::string::npos);
  const BigramModel m(one(ok), 4);
  EXPECT_NE(error_of([&] { m.cross_entropy(one(lone)); }).find("fewer than 2"), std::string::npos);
}

TEST(Bigram, BaselineOnADataDirectory) {
  const std::vector<Stream> train = {{0, 1, 0, 2}, {0, 1}}, val = {{0, 1, 3}, {3, 0}};
  const fs::path d = make_dir("dir", train, val, 4);
  const BigramResult r = bigram_baseline(d.string());
  const Stream s = {0, 1, 0, 2, 0, 1}, v = {0, 1, 3, 3, 0};
  const BigramModel m(one(s), 4);
  EXPECT_EQ(r.vocab_size, 4);
  EXPECT_EQ(r.train_tokens, 6);
  EXPECT_EQ(r.val_tokens, 5);
  EXPECT_EQ(r.distinct_bigrams, 4);
  EXPECT_NEAR(r.val_loss, m.cross_entropy(one(v)), 1e-14);
  EXPECT_NEAR(r.perplexity, std::exp(r.val_loss), 1e-12);

  // meta.json's vocab_size wins (the uniform share depends on it); without one, max id + 1.
  EXPECT_NE(bigram_baseline(make_dir("v100", train, val, 100).string()).val_loss, r.val_loss);
  EXPECT_EQ(bigram_baseline(make_dir("novocab", train, val, 0).string()).vocab_size, 4);
}

TEST(Bigram, BaselineErrorsNameTheProblem) {
  const std::string missing = error_of([] { bigram_baseline("/nonexistent/dsv3_data"); });
  EXPECT_NE(missing.find("dsv3 data prepare"), std::string::npos) << missing;
  const std::string no_val = error_of([] {
    bigram_baseline(make_dir("noval", {{0, 1, 2}}, {}, 4).string());
  });
  EXPECT_NE(no_val.find("--val-fraction"), std::string::npos) << no_val;
  const std::string too_big = error_of([] {
    bigram_baseline(make_dir("big", {{0, 1, 7}}, {{0, 1}}, 4).string());
  });
  EXPECT_NE(too_big.find("token id 7"), std::string::npos) << too_big;
}

// The cached engine against the full forward (itself checked against HF transformers):
// every decode step's logits equal the full forward's at that position.
#include <gtest/gtest.h>

#include <cmath>
#include <cstring>

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

// ---- the paged cache ----

TEST(Engine, ScatteredBlocksGiveBitIdenticalLogits) {
  const Model model(ModelWeights::load(fixture("v3_yarn_qlora_bf16")));
  const auto ref = SafetensorsFile::open(fixture("v3_yarn_qlora_bf16") + "/reference.safetensors");
  const Tensor ids = ref->get("input_ids");
  const auto a = row_ids(ids, 0), b = row_ids(ids, 1);
  const Engine engine(model);
  // Two sequences growing in turn from one pool of 3-row blocks: their tables interleave, so
  // attention reads rows gathered from scattered blocks.
  auto pool =
      std::make_shared<BlockPool>(model.config(), model.config().num_hidden_layers, 16, 3, false);
  LatentCache pa(pool, 24), pb(pool, 24);
  ASSERT_TRUE(pa.reserve_rest());
  ASSERT_TRUE(pb.reserve_rest());
  LatentCache ca = engine.new_cache(24), cb = engine.new_cache(24);
  auto same = [&](const Tensor& x, const Tensor& y) {
    ASSERT_EQ(x.numel(), y.numel());
    EXPECT_EQ(std::memcmp(x.data(), y.data(), x.nbytes()), 0);
  };
  same(engine.step({{&pa, {a.begin(), a.begin() + 4}, true}}),
       engine.step({{&ca, {a.begin(), a.begin() + 4}, true}}));
  same(engine.step({{&pb, {b.begin(), b.begin() + 2}, true}}),
       engine.step({{&cb, {b.begin(), b.begin() + 2}, true}}));
  for (size_t i = 0; i < 6; ++i) {
    same(engine.step({{&pa, {a[4 + i]}}}), engine.step({{&ca, {a[4 + i]}}}));
    same(engine.step({{&pb, {b[2 + i]}}}), engine.step({{&cb, {b[2 + i]}}}));
  }
  const auto ta = pa.block_table(), tb = pb.block_table();
  EXPECT_EQ(ta.size(), 4u);  // 10 rows in 3-row blocks
  bool scattered = false;
  for (size_t i = 1; i < ta.size(); ++i) scattered |= ta[i] != ta[i - 1] + 1;
  EXPECT_TRUE(scattered);
  EXPECT_EQ(pool->used_blocks(), int64_t(ta.size() + tb.size()));
}

TEST(BlockPool, RefcountsFreeListAndPrefixIndex) {
  const Model model(ModelWeights::load(fixture("v3_plain_f32")));
  const Engine engine(model);
  auto pool =
      std::make_shared<BlockPool>(model.config(), model.config().num_hidden_layers, 6, 2, true);
  const std::vector<int32_t> p = {5, 6, 7, 8, 9};
  {
    LatentCache first(pool, 8);
    EXPECT_EQ(first.attach_prefix(p), 0);  // nothing cached yet
    ASSERT_TRUE(first.reserve_rest());
    EXPECT_EQ(pool->reserved_blocks(), 4);
    EXPECT_EQ(pool->available_blocks(), 2);
    engine.step({{&first, p}});
    EXPECT_EQ(pool->used_blocks(), 3);
    EXPECT_EQ(pool->cached_blocks(), 2);  // [5 6] and [5 6 | 7 8]; [9] is not full
    EXPECT_EQ(pool->match(p).blocks, 2);
    EXPECT_EQ(pool->match(p).free, 0);
    EXPECT_EQ(pool->match(std::vector<int32_t>{5, 6, 7, 9, 9}).blocks, 1);
    EXPECT_EQ(pool->match(std::vector<int32_t>{6, 6, 7, 8, 9}).blocks, 0);

    LatentCache second(pool, 8);
    EXPECT_EQ(second.attach_prefix(p), 4);
    EXPECT_EQ(second.size(), 4);
    const std::vector<int32_t> ft = first.block_table();
    EXPECT_EQ(second.block_table(), std::vector<int32_t>(ft.begin(), ft.begin() + 2));
    for (int32_t b : second.block_table()) EXPECT_EQ(pool->refcount(b), 2);
    // A prompt that is exactly the cached blocks still computes its last token.
    LatentCache third(pool, 8);
    EXPECT_EQ(third.attach_prefix(std::vector<int32_t>{5, 6, 7, 8}), 2);
    EXPECT_FALSE(LatentCache(pool, 64).reserve_rest());  // more than the pool has
  }
  // All gone: every block is free, nothing promised, the full prompt blocks still findable.
  EXPECT_EQ(pool->used_blocks(), 0);
  EXPECT_EQ(pool->reserved_blocks(), 0);
  EXPECT_EQ(pool->available_blocks(), 6);
  EXPECT_EQ(pool->match(p).blocks, 2);
  EXPECT_EQ(pool->match(p).free, 2);
  // Handing out blocks takes the prefix-less ones first, and evicts cached ones last.
  ASSERT_TRUE(pool->reserve(4));
  for (int i = 0; i < 4; ++i) pool->take_reserved();
  EXPECT_EQ(pool->cached_blocks(), 2);
  ASSERT_TRUE(pool->reserve(1));
  pool->take_reserved();
  EXPECT_EQ(pool->cached_blocks(), 1);
  EXPECT_EQ(pool->match(p).blocks, 0);  // the first block of the chain went
}

TEST(BlockPool, TruncateUnpublishesOverwrittenBlocks) {
  const Model model(ModelWeights::load(fixture("v3_plain_f32")));
  const Engine engine(model);
  auto pool =
      std::make_shared<BlockPool>(model.config(), model.config().num_hidden_layers, 4, 2, true);
  LatentCache c(pool, 8);
  ASSERT_TRUE(c.reserve_rest());
  engine.step({{&c, {1, 2, 3, 4}}});
  EXPECT_EQ(pool->cached_blocks(), 2);
  c.truncate(3);  // [3 4] will be overwritten
  EXPECT_EQ(pool->cached_blocks(), 1);
  engine.step({{&c, {5}}});
  EXPECT_EQ(pool->cached_blocks(), 2);
  EXPECT_EQ(pool->match(std::vector<int32_t>{1, 2, 3, 5, 0}).blocks, 2);
  EXPECT_EQ(pool->match(std::vector<int32_t>{1, 2, 3, 4, 0}).blocks, 1);
}

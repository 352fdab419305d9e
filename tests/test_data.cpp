// Token shards and the data loader: round trip through the real tokenizer, deterministic
// shuffling, exact resume, and clear errors for corrupt shards and mismatched vocabularies.
#include <gtest/gtest.h>

#include <filesystem>
#include <fstream>

#include "core/error.h"
#include "test_util.h"
#include "tokenizer/tokenizer.h"
#include "train/data.h"

namespace fs = std::filesystem;
using namespace dsv3;
using dsv3::test_util::error_of;
const auto fixture = dsv3::test_util::model_fixture;
using namespace dsv3::train;

namespace {

const Tokenizer& tokenizer() {
  static const Tokenizer t =
      Tokenizer::load(std::string(DSV3_SOURCE_DIR) + "/.cache/tokenizer/deepseek_v3");
  return t;
}

fs::path make_data(const std::string& tag, int docs) {
  const fs::path d = fs::path(::testing::TempDir()) / ("dsv3_data_" + tag);
  fs::remove_all(d);
  fs::create_directories(d);
  std::ofstream txt(d / "a.txt");
  for (int i = 0; i < docs; ++i)
    txt << "Document number " << i << " says hello to the world, ünïcödé 你好.\n";
  txt.close();
  std::ofstream jl(d / "b.jsonl");
  jl << R"({"text": "A JSON document."})"
     << "\n"
     << R"({"text": "Another one, with\nnewlines."})"
     << "\n";
  jl.close();
  PrepareOptions opt;
  opt.lines_are_documents = true;
  opt.val_fraction = 0.2;
  opt.seed = 1;
  prepare_data(tokenizer(), {(d / "a.txt").string(), (d / "b.jsonl").string()},
               (d / "out").string(), opt);
  return d / "out";
}

}  // namespace

TEST(Data, ShardsHoldEveryDocumentOnceEndingWithEos) {
  const fs::path out = make_data("roundtrip", 50);
  std::vector<std::string> texts;
  int64_t docs = 0;
  for (const char* split : {"train", "val"}) {
    for (const auto& e : fs::directory_iterator(out)) {
      if (!e.path().filename().string().starts_with(split)) continue;
      const auto s = TokenShard::open(e.path().string());
      docs += s->docs();
      for (int64_t d = 0; d < s->docs(); ++d) {
        const int64_t a = int64_t(s->doc_starts()[d]);
        const int64_t b = d + 1 < s->docs() ? int64_t(s->doc_starts()[d + 1]) : s->size();
        EXPECT_EQ(int32_t(s->tokens()[b - 1]), tokenizer().eos_id());
        std::vector<int32_t> ids(s->tokens() + a, s->tokens() + b - 1);
        texts.push_back(tokenizer().decode(ids));
      }
    }
  }
  EXPECT_EQ(docs, 52);
  std::sort(texts.begin(), texts.end());
  EXPECT_TRUE(std::binary_search(texts.begin(), texts.end(), "Another one, with\nnewlines."));
  EXPECT_TRUE(std::binary_search(texts.begin(), texts.end(),
                                 "Document number 7 says hello to the world, ünïcödé 你好."));
}

TEST(Data, LoaderIsDeterministicAndResumesExactly) {
  const fs::path out = make_data("loader", 80);
  DataLoader a(out.string(), "train", 16, 42, 129280), b(out.string(), "train", 16, 42, 129280);
  std::vector<int32_t> first;
  for (int i = 0; i < 5; ++i) {
    const auto x = a.next(3), y = b.next(3);
    EXPECT_EQ(0, std::memcmp(x.inputs.data(), y.inputs.data(), x.inputs.nbytes()));
    // Targets are the inputs shifted by one token.
    for (int64_t r = 0; r < 3; ++r)
      for (int64_t t = 0; t + 1 < 16; ++t)
        EXPECT_EQ(x.targets.ptr<int32_t>()[r * 16 + t], x.inputs.ptr<int32_t>()[r * 16 + t + 1]);
  }
  // Resume: a fresh loader seeked to a's position continues with a's batches, across epochs.
  DataLoader c(out.string(), "train", 16, 42, 129280);
  c.seek(a.position());
  for (int i = 0; i < 3 * int(a.windows()); ++i) {
    const auto x = a.next(2), y = c.next(2);
    ASSERT_EQ(0, std::memcmp(x.inputs.data(), y.inputs.data(), x.inputs.nbytes())) << i;
  }
  EXPECT_GT(a.position().epoch, 0);
  // Another seed, another order.
  DataLoader d(out.string(), "train", 16, 43, 129280), e(out.string(), "train", 16, 42, 129280);
  const auto x = d.next(4), y = e.next(4);
  EXPECT_NE(0, std::memcmp(x.inputs.data(), y.inputs.data(), x.inputs.nbytes()));
}

TEST(Data, BadShardsAndMismatchesAreClearErrors) {
  const fs::path out = make_data("bad", 30);
  EXPECT_NE(error_of([&] { DataLoader(out.string(), "train", 8, 0, 1000); }).find("do not match"),
            std::string::npos);
  const fs::path shard = out / "train-00000.bin";
  fs::resize_file(shard, fs::file_size(shard) - 5);
  EXPECT_NE(error_of([&] { TokenShard::open(shard.string()); }).find("corrupt"), std::string::npos);
  std::ofstream(shard, std::ios::binary) << "garbage!garbage!garbage!garbage!garbage!";
  EXPECT_NE(error_of([&] { TokenShard::open(shard.string()); }).find("bad magic"),
            std::string::npos);
  EXPECT_NE(error_of([&] {
              DataLoader((out / "nowhere").string(), "train", 8, 0, 1000);
            }).find("data prepare"),
            std::string::npos);
}

// The BPE trainer: its merges are checked against a brute-force trainer written here from the
// stated rule (recount every pair from scratch after each merge), its output is loaded by our
// HF-parity Tokenizer and round-trips text, and its components match DeepSeek-V3's file.
#include <gtest/gtest.h>

#include <filesystem>
#include <fstream>
#include <map>

#include <nlohmann/json.hpp>

#include "core/error.h"
#include "tokenizer/bpe_trainer.h"
#include "tokenizer/tokenizer.h"
#include "tokenizer/unicode.h"

namespace {

namespace fs = std::filesystem;
using dsv3::Tokenizer;
using dsv3::tok::BpeTrainerOptions;
using dsv3::tok::TrainedBpe;
using dsv3::tok::WordCounter;
using nlohmann::json;

const std::string kDeepSeek = std::string(DSV3_SOURCE_DIR) + "/.cache/tokenizer/deepseek_v3";

// A deterministic corpus: Zipf-like English words, CJK runs, numbers, punctuation, emoji.
std::string make_corpus(uint64_t seed, size_t n_words) {
  static const char* kWords[] = {
      "the",     "of",        "and",   "to",       "in",       "is",       "that",  "for",
      "it",      "as",        "was",   "with",     "be",       "by",       "on",    "not",
      "he",      "this",      "are",   "or",       "his",      "from",     "at",    "which",
      "but",     "have",      "an",    "had",      "they",     "you",      "were",  "their",
      "model",   "token",     "train", "training", "tokens",   "language", "large", "expert",
      "mixture", "attention", "head",  "latent",   "compute",  "deep",     "seek",  "vocab",
      "中文",    "模型",      "训练",  "日本語",   "カタカナ", "ひらがな", "😀",     "🚀",
      "naïve",   "café",      "über",  "résumé",   "x",        "y",        "z",     "q"};
  const size_t n = std::size(kWords);
  uint64_t s = seed;
  auto next = [&] {
    s = s * 6364136223846793005ull + 1442695040888963407ull;
    return s >> 33;
  };
  std::string text;
  for (size_t i = 0; i < n_words; ++i) {
    // Zipf-ish: index = n * u^3 favours the first words.
    double u = (next() % 100000) / 100000.0;
    size_t k = static_cast<size_t>(n * u * u * u);
    if (i > 0) text += (next() % 13 == 0) ? "\n" : " ";
    if (next() % 4 == 0) {  // a pseudo-word of 1-4 syllables, so the vocabulary never runs dry
      static const char* kSyl[] = {"ka", "to",  "ri",  "mon", "sel", "va", "qu", "ex",  "lo", "dre",
                                   "ph", "ith", "ung", "ze",  "bra", "ny", "os", "tic", "ul", "we"};
      for (uint64_t n_syl = 1 + next() % 4; n_syl > 0; --n_syl) text += kSyl[next() % 20];
      continue;
    }
    text += kWords[k];
    switch (next() % 17) {
      case 0:
        text += ",";
        break;
      case 1:
        text += ".";
        break;
      case 2:
        text += " " + std::to_string(next() % 100000);
        break;
      case 3:
        text += "!\n\n";
        break;
      default:
        break;
    }
  }
  return text;
}

TrainedBpe train_text(const std::string& text, size_t vocab, int64_t min_freq = 2) {
  BpeTrainerOptions opts;
  opts.vocab_size = vocab;
  opts.min_frequency = min_freq;
  std::vector<std::string> names;
  for (const auto& t : opts.special_tokens) names.push_back(t.content);
  WordCounter counter(names);
  counter.add_text(text);
  return dsv3::tok::train_bpe(counter.counts(), opts);
}

Tokenizer load(const TrainedBpe& bpe) {
  return Tokenizer::from_json_text(dsv3::tok::tokenizer_json(bpe), "trained");
}

fs::path temp_dir(const std::string& name) {
  fs::path d = fs::temp_directory_path() / ("dsv3_bpe_trainer_" + name);
  fs::remove_all(d);
  fs::create_directories(d);
  return d;
}

void write(const fs::path& p, const std::string& s) {
  std::ofstream f(p, std::ios::binary);
  f << s;
}

const std::vector<std::string> kHeldOut = {
    "The mixture of experts model was trained on 14.8T tokens.",
    "深度求索训练了一个大模型，日本語とカタカナも。",
    "emoji: 😀🚀🧠 and 1234567890 digits, 3.14159",
    "  leading spaces\n\n\ttabs and\r\nwindows lines   ",
    "unseen words: xylophone quixotic Ω≈ç√∫",
    "<｜begin▁of▁sentence｜><｜User｜>hi<｜Assistant｜><think>ok</think><｜end▁of▁sentence｜>",
    "",
};

// --- brute force -------------------------------------------------------------------------------
// The rule, implemented as directly as possible: ids are the specials, then the 256 byte
// symbols by code point, then each new token; every round recounts every adjacent pair of
// every word (weighted by word count), takes the highest count, ties to the smallest
// (left id, right id), and merges it left to right in every word.
struct BruteMerge {
  std::string left, right;
  int64_t count;
};

std::vector<BruteMerge> brute_force(const dsv3::tok::WordCounts& counts, size_t n_specials,
                                    size_t max_merges, int64_t min_freq) {
  std::map<std::string, int> ids;
  std::vector<std::string> tokens(n_specials, "<special>");
  std::vector<uint8_t> bytes(256);
  for (int b = 0; b < 256; ++b) bytes[b] = static_cast<uint8_t>(b);
  const auto& b2u = dsv3::tok::byte_to_unicode();
  std::sort(bytes.begin(), bytes.end(), [&](uint8_t x, uint8_t y) { return b2u[x] < b2u[y]; });
  for (uint8_t b : bytes) {
    std::string t = dsv3::tok::bytes_to_byte_level(std::string(1, static_cast<char>(b)));
    ids[t] = static_cast<int>(tokens.size());
    tokens.push_back(t);
  }
  std::vector<std::pair<std::vector<int>, int64_t>> words;
  for (const auto& [w, c] : counts) {
    std::vector<int> s;
    for (unsigned char ch : w)
      s.push_back(ids.at(dsv3::tok::bytes_to_byte_level(std::string(1, ch))));
    words.emplace_back(s, c);
  }
  std::vector<BruteMerge> merges;
  while (merges.size() < max_merges) {
    std::map<std::pair<int, int>, int64_t> pc;
    for (const auto& [s, c] : words)
      for (size_t i = 0; i + 1 < s.size(); ++i) pc[{s[i], s[i + 1]}] += c;
    std::pair<int, int> best{-1, -1};
    int64_t best_count = 0;
    for (const auto& [p, c] : pc)  // map order = ascending pair, so '>' keeps the smallest
      if (c > best_count) best = p, best_count = c;
    if (best_count == 0 || best_count < min_freq) break;
    std::string tok = tokens[best.first] + tokens[best.second];
    merges.push_back({tokens[best.first], tokens[best.second], best_count});
    int id;
    if (ids.count(tok)) {
      id = ids[tok];
    } else {
      id = static_cast<int>(tokens.size());
      ids[tok] = id;
      tokens.push_back(tok);
    }
    for (auto& [s, c] : words) {
      std::vector<int> o;
      for (size_t i = 0; i < s.size();) {
        if (i + 1 < s.size() && s[i] == best.first && s[i + 1] == best.second) {
          o.push_back(id);
          i += 2;
        } else {
          o.push_back(s[i++]);
        }
      }
      s = o;
    }
  }
  return merges;
}

void expect_same_as_brute_force(const std::string& text, size_t merges, int64_t min_freq) {
  auto specials = dsv3::tok::deepseek_v3_special_tokens();
  std::vector<std::string> names;
  for (const auto& t : specials) names.push_back(t.content);
  WordCounter counter(names);
  counter.add_text(text);
  BpeTrainerOptions opts;
  opts.vocab_size = specials.size() + 256 + merges;
  opts.min_frequency = min_freq;
  TrainedBpe got = dsv3::tok::train_bpe(counter.counts(), opts);
  auto want = brute_force(counter.counts(), specials.size(), merges, min_freq);
  ASSERT_GT(want.size(), 10u);
  ASSERT_EQ(got.model.merges.size(), want.size());
  for (size_t r = 0; r < want.size(); ++r) {
    ASSERT_EQ(got.model.merges[r].first, want[r].left) << "merge " << r;
    ASSERT_EQ(got.model.merges[r].second, want[r].right) << "merge " << r;
    ASSERT_EQ(got.merge_counts[r], want[r].count) << "merge " << r;
  }
}

// --- tests -------------------------------------------------------------------------------------

TEST(BpeTrainer, MatchesBruteForceOnTinyCorpora) {
  // Runs and repeats make overlapping pairs ("aaaa") and many ties.
  expect_same_as_brute_force(
      "aaaa aaa aa a abab ababab baba aaab baaa abcabc bcab cabc\n"
      "aaaa aaa aa a abab ababab x1234 55555 ab.ab ab,ab ... !!!",
      200, 1);
  // Two paths to one token ("ab"+"c" and "a"+"bc") and min_frequency stopping early.
  expect_same_as_brute_force("abc abc bcd bcd bcd xabc abcd abcd zbc zbc zab zab", 200, 1);
  expect_same_as_brute_force(make_corpus(7, 400), 300, 2);
}

TEST(BpeTrainer, MatchesBruteForceOnLargerCorpus) {
  expect_same_as_brute_force(make_corpus(11, 3000), 150, 2);
}

TEST(BpeTrainer, RoundTripsHeldOutStrings) {
  TrainedBpe bpe = train_text(make_corpus(1, 20000), 1000);
  Tokenizer tok = load(bpe);
  for (const std::string& s : kHeldOut) {
    auto ids = tok.encode(s);
    EXPECT_EQ(tok.decode(ids), s) << s;
  }
  // Special-token text becomes the special ids.
  auto ids = tok.encode(kHeldOut[5]);
  ASSERT_GE(ids.size(), 3u);
  EXPECT_EQ(ids.front(), 0);
  EXPECT_EQ(ids.back(), 1);
  EXPECT_EQ(ids[1], tok.token_to_id("<｜User｜>"));
  // Every single byte decodes back (the whole alphabet is in the vocab).
  for (int b = 0; b < 128; ++b) {
    std::string s(1, static_cast<char>(b));
    EXPECT_EQ(tok.decode(tok.encode(s)), s);
  }
}

TEST(BpeTrainer, VocabAndMergesAreWellFormed) {
  const size_t n = 1200;
  TrainedBpe bpe = train_text(make_corpus(2, 20000), n);
  Tokenizer tok = load(bpe);
  EXPECT_EQ(tok.vocab_size(), n);
  EXPECT_EQ(bpe.model.vocab_size(), n);
  const auto& m = tok.bpe();
  ASSERT_EQ(m.id_to_token.size(), n);
  for (size_t id = 0; id < n; ++id) ASSERT_EQ(m.token_to_id.at(m.id_to_token[id]), int32_t(id));
  const size_t base = bpe.added_tokens.size() + 256;
  EXPECT_EQ(m.merges.size(), n - base);  // no two merges spell the same token here
  for (size_t r = 0; r < m.merges.size(); ++r) {
    const auto& [l, rt] = m.merges[r];
    // Rank order: a merge only uses tokens that exist before it, and makes token base + r.
    int32_t merged = m.token_to_id.at(l + rt);
    EXPECT_EQ(merged, int32_t(base + r));
    EXPECT_LT(m.token_to_id.at(l), merged);
    EXPECT_LT(m.token_to_id.at(rt), merged);
    // Greedy BPE: a merge's count never exceeds the one before it.
    if (r > 0) {
      EXPECT_LE(bpe.merge_counts[r], bpe.merge_counts[r - 1]) << r;
    }
  }
  // The file's shape: merges as [left, right] pairs, byte_fallback off, V3's components.
  json j = json::parse(dsv3::tok::tokenizer_json(bpe));
  EXPECT_EQ(j["model"]["type"], "BPE");
  EXPECT_EQ(j["model"]["byte_fallback"], false);
  EXPECT_TRUE(j["model"]["merges"][0].is_array());
  EXPECT_EQ(j["model"]["merges"][0].size(), 2u);
  EXPECT_EQ(j["model"]["vocab"].size(), n);
  EXPECT_EQ(j["decoder"]["type"], "ByteLevel");
}

TEST(BpeTrainer, SpecialTokensHaveTheLowestIds) {
  TrainedBpe bpe = train_text(make_corpus(3, 5000), 600);
  fs::path dir = temp_dir("specials");
  write(dir / "tokenizer.json", dsv3::tok::tokenizer_json(bpe));
  write(dir / "tokenizer_config.json", dsv3::tok::tokenizer_config_json(bpe, "{{ bos_token }}"));
  Tokenizer tok = Tokenizer::load(dir.string());
  EXPECT_EQ(tok.bos_id(), 0);
  EXPECT_EQ(tok.eos_id(), 1);
  EXPECT_TRUE(tok.add_bos_token());
  EXPECT_EQ(tok.id_to_token(0), "<｜begin▁of▁sentence｜>");
  EXPECT_EQ(tok.id_to_token(1), "<｜end▁of▁sentence｜>");
  EXPECT_TRUE(tok.is_special(0));
  const auto specials = dsv3::tok::deepseek_v3_special_tokens();
  for (size_t i = 0; i < specials.size(); ++i)
    EXPECT_EQ(tok.token_to_id(specials[i].content), int32_t(i)) << specials[i].content;
  // The first byte symbol follows the specials: '!' has the lowest code point of the alphabet.
  EXPECT_EQ(tok.id_to_token(int32_t(specials.size())), "!");
  fs::remove_all(dir);
}

TEST(BpeTrainer, DeterministicAcrossRunsAndFileOrder) {
  std::string a = make_corpus(4, 8000), b = make_corpus(5, 8000);
  fs::path dir = temp_dir("determinism");
  write(dir / "a.txt", a);
  write(dir / "b.txt", b);
  auto run = [&](std::vector<std::string> files) {
    BpeTrainerOptions opts;
    opts.vocab_size = 900;
    std::vector<std::string> names;
    for (const auto& t : opts.special_tokens) names.push_back(t.content);
    WordCounter counter(names);
    for (const auto& f : files) counter.add_file((dir / f).string());
    return dsv3::tok::tokenizer_json(dsv3::tok::train_bpe(counter.counts(), opts));
  };
  std::string first = run({"a.txt", "b.txt"});
  EXPECT_EQ(first, run({"a.txt", "b.txt"}));
  EXPECT_EQ(first, run({"b.txt", "a.txt"}));
  fs::remove_all(dir);
}

TEST(BpeTrainer, FrequentWordsBecomeSingleTokens) {
  Tokenizer tok = load(train_text(make_corpus(6, 20000), 1000));
  for (const char* w : {" the", " of", " and", " model", "the"}) {
    EXPECT_EQ(tok.encode(w).size(), 1u) << "'" << w << "'";
  }
  EXPECT_GE(tok.token_to_id("Ġthe"), 0);
}

TEST(BpeTrainer, CompressionImprovesWithVocabSize) {
  std::string corpus = make_corpus(8, 30000);
  std::string held_out = make_corpus(9, 3000);
  size_t prev = held_out.size() + 1;
  const size_t k = dsv3::tok::deepseek_v3_special_tokens().size();
  for (size_t extra : {0, 100, 300, 800}) {
    Tokenizer tok = load(train_text(corpus, k + 256 + extra));
    size_t n = tok.encode(held_out).size();
    if (extra == 0) {
      EXPECT_EQ(n, held_out.size());  // bytes only: one token per byte
    }
    EXPECT_LT(n, prev) << "vocab " << k + 256 + extra;
    prev = n;
  }
}

TEST(BpeTrainer, WordCounterCutsSpecialsAndReadsFilesLikeOneText) {
  WordCounter c({"<｜User｜>"});
  c.add_text("hello<｜User｜>world hello");
  EXPECT_EQ(c.counts().size(), 3u);
  EXPECT_EQ(c.counts().at("hello"), 1);
  EXPECT_EQ(c.counts().at(" hello"), 1);
  EXPECT_EQ(c.counts().at("world"), 1);

  // Over 2 MiB with blank lines, indented lines and trailing spaces, so that chunked reading
  // has to cut: the counts must equal reading the whole text at once.
  std::string text;
  for (int i = 0; text.size() < (5u << 19); ++i) {
    text += make_corpus(100 + i % 7, 50);
    text += (i % 3 == 0) ? "  \n\n   indented " : (i % 3 == 1) ? " \r\n" : "\n";
  }
  fs::path dir = temp_dir("chunks");
  write(dir / "big.txt", text);
  WordCounter whole({}), chunked({});
  whole.add_text(text);
  chunked.add_file((dir / "big.txt").string());
  EXPECT_EQ(whole.counts(), chunked.counts());
  EXPECT_EQ(whole.total_words(), chunked.total_words());

  // One line longer than the read block: no cut point, read whole.
  std::string line;
  while (line.size() < (3u << 19)) line += "one  line, 12345 词 ";
  write(dir / "line.txt", line);
  WordCounter line_whole({}), line_file({});
  line_whole.add_text(line);
  line_file.add_file((dir / "line.txt").string());
  EXPECT_EQ(line_whole.counts(), line_file.counts());

  write(dir / "docs.jsonl", "{\"text\": \"one two\"}\n\n{\"text\": \"two\", \"id\": 3}\n");
  WordCounter j({});
  j.add_file((dir / "docs.jsonl").string());
  EXPECT_EQ(j.counts().at("one"), 1);
  EXPECT_EQ(j.counts().at(" two"), 1);
  EXPECT_EQ(j.counts().at("two"), 1);
  fs::remove_all(dir);
}

TEST(BpeTrainer, ErrorsAreClear) {
  auto message = [](auto&& f) -> std::string {
    try {
      f();
    } catch (const dsv3::Error& e) {
      return e.what();
    }
    return "(no error)";
  };
  const size_t k = dsv3::tok::deepseek_v3_special_tokens().size();
  EXPECT_NE(message([&] { train_text("some text here", k + 255); }).find("too small"),
            std::string::npos);
  EXPECT_NE(message([&] { train_text("", 1000); }).find("no text"), std::string::npos);
  EXPECT_NE(message([&] {
              WordCounter({}).add_file("/nonexistent/corpus.txt");
            }).find("/nonexistent/corpus.txt"),
            std::string::npos);
  EXPECT_NE(message([&] { WordCounter({}).add_text("ok \xff", "doc"); }).find("byte offset 3"),
            std::string::npos);
  fs::path dir = temp_dir("errors");
  write(dir / "bad.jsonl", "{\"text\": \"fine\"}\n[1, 2]\n");
  EXPECT_NE(
      message([&] { WordCounter({}).add_file((dir / "bad.jsonl").string()); }).find("bad.jsonl:2"),
      std::string::npos);
  write(dir / "empty.txt", "");
  EXPECT_NE(message([&] {
              WordCounter c({});
              c.add_file((dir / "empty.txt").string());
              BpeTrainerOptions o;
              o.vocab_size = 1000;
              dsv3::tok::train_bpe(c.counts(), o);
            }).find("no text"),
            std::string::npos);
  BpeTrainerOptions dup;
  dup.vocab_size = 1000;
  dup.special_tokens.push_back(dup.special_tokens[0]);
  EXPECT_NE(message([&] {
              WordCounter c({});
              c.add_text("abc abc");
              dsv3::tok::train_bpe(c.counts(), dup);
            }).find("twice"),
            std::string::npos);
  fs::remove_all(dir);
}

TEST(BpeTrainer, ComponentsMatchDeepSeekV3File) {
  if (!fs::exists(kDeepSeek + "/tokenizer.json")) GTEST_SKIP() << "no " << kDeepSeek;
  std::ifstream f(kDeepSeek + "/tokenizer.json");
  json v3 = json::parse(f);
  EXPECT_EQ(json::parse(dsv3::tok::kDeepSeekV3PreTokenizerJson), v3["pre_tokenizer"]);
  EXPECT_EQ(json::parse(dsv3::tok::kDeepSeekV3NormalizerJson), v3["normalizer"]);
  EXPECT_EQ(json::parse(dsv3::tok::kDeepSeekV3PostProcessorJson), v3["post_processor"]);
  EXPECT_EQ(json::parse(dsv3::tok::kDeepSeekV3DecoderJson), v3["decoder"]);
  // Our specials carry V3's attributes; the ones V3's chat template uses are all there.
  std::map<std::string, json> by_content;
  for (const auto& t : v3["added_tokens"]) by_content[t["content"]] = t;
  size_t found = 0;
  for (const auto& t : dsv3::tok::deepseek_v3_special_tokens()) {
    auto it = by_content.find(t.content);
    if (it == by_content.end()) continue;  // <think>, </think> come from R1
    ++found;
    EXPECT_EQ(it->second["special"], t.special) << t.content;
    EXPECT_EQ(it->second["normalized"], t.normalized) << t.content;
  }
  EXPECT_EQ(found, dsv3::tok::deepseek_v3_special_tokens().size() - 2);
  if (fs::exists(kDeepSeek + "/tokenizer_config.json")) {
    std::ifstream c(kDeepSeek + "/tokenizer_config.json");
    std::string tpl = json::parse(c)["chat_template"];
    for (const char* marker : {"<｜User｜>", "<｜Assistant｜>", "<｜tool▁calls▁begin｜>",
                               "<｜tool▁outputs▁end｜>", "<｜tool▁sep｜>"}) {
      ASSERT_NE(tpl.find(marker), std::string::npos) << marker;
      EXPECT_TRUE(by_content.count(marker));
    }
  }
}

}  // namespace
